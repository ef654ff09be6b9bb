//! A Keras model in, trained, and its weights out: the Keras JSON of a
//! two-convolution CNN (Keras 2 and Keras 3 layouts, written by Keras) trains
//! three rounds through the real binaries, `host-server export` writes its
//! weights as an .npz, and a NumPy forward pass of the JSON's model with
//! those weights (Keras' layer definitions written out, `keras_forward.py`)
//! scores the test set as our evaluation does.

// Integration tests: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use support::*;

fn fixture(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fedhost/tests/data/keras")
        .join(name)
}

#[test]
fn a_keras_cnn_trains_and_its_exported_weights_score_alike_in_numpy() {
    let Some(python) = flower_python() else {
        return;
    };
    let data = temp_dir("keras-data");
    mnist_subset(&data, 1200, 500);
    for major in [2, 3] {
        let json = fixture(&format!("fashion_cnn.keras{major}.json"));
        let out = temp_dir(&format!("keras-out-{major}"));
        let (mut server, addr) = start_server(
            &out,
            &[
                "--rounds",
                "3",
                "--model-file",
                json.to_str().unwrap(),
                "--min-available-clients",
                "2",
            ],
        );
        let mut clients = start_clients(&addr, &data, 0, 2, 2);
        assert!(
            wait(&mut server, Duration::from_secs(180)),
            "Keras {major}: the run"
        );
        assert!(wait(&mut clients, Duration::from_secs(20)));
        let model = out.join("model_final.bin");
        let ours = Command::new(bin("host-client"))
            .args(["evaluate", "--model-file"])
            .arg(&model)
            .arg("--data-dir")
            .arg(&data)
            .output()
            .unwrap();
        assert!(ours.status.success());
        // "model ...: accuracy 87.40% (437 of 500), loss ..."
        let said = String::from_utf8_lossy(&ours.stdout);
        let ours: f64 = said
            .split("accuracy ")
            .nth(1)
            .and_then(|s| s.split('%').next())
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no accuracy in {said}"));
        let weights = out.join("weights.npz");
        let exported = Command::new(bin("host-server"))
            .arg("export")
            .arg(&model)
            .arg("-o")
            .arg(&weights)
            .output()
            .unwrap();
        assert!(exported.status.success(), "{exported:?}");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/keras_forward.py");
        let numpy = Command::new(&python)
            .arg(script)
            .arg(&json)
            .arg(&weights)
            .arg(data.join("t10k-images-idx3-ubyte"))
            .arg(data.join("t10k-labels-idx1-ubyte"))
            .output()
            .unwrap();
        assert!(
            numpy.status.success(),
            "{}",
            String::from_utf8_lossy(&numpy.stderr)
        );
        let numpy: f64 = String::from_utf8_lossy(&numpy.stdout)
            .trim()
            .parse()
            .unwrap();
        eprintln!("Keras {major}: ours {ours}%, NumPy {}%", 100.0 * numpy);
        assert!(ours > 50.0, "Keras {major}: trained to {ours}%");
        assert!(
            (ours - 100.0 * numpy).abs() <= 0.1,
            "Keras {major}: ours {ours}%, NumPy {}%",
            100.0 * numpy
        );
        std::fs::remove_dir_all(&out).unwrap();
    }
    std::fs::remove_dir_all(&data).unwrap();
}
