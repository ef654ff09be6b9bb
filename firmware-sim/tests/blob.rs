//! `firmware-sim --write-blob`: a device's shard as the blob a board reads in place.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use fedcore::data::{Blob, Dataset};

#[test]
fn the_written_blob_is_the_devices_shard_and_checks_out() {
    let exe = std::env::current_exe().unwrap();
    let bin = exe.parent().unwrap().parent().unwrap().join("firmware-sim");
    let out = std::env::temp_dir().join(format!("fedtest-blob-{}.bin", std::process::id()));
    let data = concat!(env!("CARGO_MANIFEST_DIR"), "/../data/mnist");
    let written = std::process::Command::new(&bin)
        .args(["--shard", "4/100", "--data-dir", data, "--write-blob"])
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        written.status.success(),
        "{}",
        String::from_utf8_lossy(&written.stderr)
    );
    let said = String::from_utf8_lossy(&written.stdout);
    assert!(said.contains("600 training and 100 test samples"), "{said}");
    let bytes = std::fs::read(&out).unwrap();
    let blob = Blob::parse(&bytes).unwrap();
    assert_eq!((blob.train.len(), blob.test.len()), (600, 100));
    assert!(
        (0..600)
            .all(|i| blob.train.sample(i).values.len() == 784 && blob.train.sample(i).label < 10)
    );
    std::fs::remove_file(&out).unwrap();
}
