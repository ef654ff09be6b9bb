//! Flower's own Python clients in our federations, through the real binaries:
//! flwr 1.42 from the venv `flower/venv.sh` builds (flwr and numpy only).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use host_server::history::{History, LinkKind};
use support::{
    Proc, flower_python, start_clients, start_python, start_server_announcing, temp_dir, wait,
};

#[test]
fn a_flower_numpy_client_trains_beside_two_of_ours() {
    let Some(python) = flower_python() else {
        return;
    };
    let out = temp_dir("flower-legacy");
    let data = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../data/mnist");
    let mut args = vec!["--rounds", "3", "--model", "mlp:784-32-10"];
    for min in [
        "--min-available-clients",
        "--min-fit-clients",
        "--min-evaluate-clients",
    ] {
        args.extend([min, "3"]);
    }
    args.extend(["--flower-bind", "127.0.0.1:0"]);
    let (mut server, lines) = start_server_announcing(&out, &args, 2);
    let addr = lines[0].strip_prefix("listening on ").unwrap();
    let flower = lines[1].strip_prefix("flower listening on ").unwrap();
    // Ours: two of three shares of the full training set; the Flower client the
    // reference lab's shape (one epoch, SGD 0.01 momentum 0.9, batch 32) on 6,000.
    let mut ours = start_clients(addr, &data, 0, 2, 3);
    let python_args = [
        "--server",
        flower,
        "--model",
        "mlp:784-32-10",
        "--examples",
        "6000",
        "--test-examples",
        "1000",
    ];
    let mut theirs: Proc = start_python(
        &python,
        "numpy_client.py",
        &python_args,
        &out.join("flower-client.log"),
    );
    assert!(
        wait(&mut server, Duration::from_secs(300)),
        "the server failed"
    );
    assert!(
        wait(&mut ours, Duration::from_secs(20)),
        "our clients failed"
    );
    let log = || std::fs::read_to_string(out.join("flower-client.log")).unwrap_or_default();
    assert!(
        wait(&mut theirs, Duration::from_secs(20)),
        "the Flower client failed:\n{}",
        log()
    );
    // It shut down on Flower's own goodbye.
    assert!(log().contains("Disconnect and shut down"), "{}", log());

    let history = History::read(&out.join("history_3.json")).unwrap();
    assert_eq!(history.rounds.len(), 3);
    for r in &history.rounds {
        assert!(
            r.aggregated && r.failures.is_empty(),
            "round {}: {:?}",
            r.round,
            r.failures
        );
        let mut kinds: Vec<(LinkKind, u32)> = r
            .participants
            .iter()
            .map(|p| (p.kind, p.examples))
            .collect();
        kinds.sort_by_key(|&(k, n)| (k.name(), n));
        assert_eq!(
            kinds,
            [
                (LinkKind::FlowerLegacy, 6000),
                (LinkKind::Tcp, 20000),
                (LinkKind::Tcp, 20000)
            ],
            "round {}",
            r.round
        );
        // The distributed accuracy is the example-weighted mean of all three,
        // recomputed from what each reported.
        let (n, sum) =
            r.participants
                .iter()
                .map(|p| p.evaluate.unwrap())
                .fold((0u64, 0.0f64), |(n, s), e| {
                    let w = u64::from(e.examples);
                    (n + w, s + w as f64 * f64::from(e.accuracy))
                });
        let flower_tests = r
            .participants
            .iter()
            .find(|p| p.kind == LinkKind::FlowerLegacy)
            .and_then(|p| p.evaluate)
            .unwrap()
            .examples;
        assert_eq!(flower_tests, 1000);
        let reported = f64::from(r.accuracy_distributed.unwrap());
        assert!(
            (sum / n as f64 - reported).abs() < 1e-6,
            "round {}",
            r.round
        );
    }
    let accuracy: Vec<f32> = history
        .rounds
        .iter()
        .map(|r| r.accuracy_distributed.unwrap())
        .collect();
    assert!(
        accuracy[2] > accuracy[0] && accuracy[2] > 0.9,
        "accuracy by round {accuracy:?}"
    );
    std::fs::remove_dir_all(&out).unwrap();
}
