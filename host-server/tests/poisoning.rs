//! One poisoned participant of five, through the real binaries: FedAvg falls
//! apart, the robust strategies and the norm bound hold (`host-client --attack`
//! plays the attacker). Runs are reproducible: sampling is seeded by round and
//! local shuffles by participant name.

// Integration tests: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use host_server::history::History;
use support::*;

const ROUNDS: u32 = 10;

/// The final weighted accuracy of five clients (the fifth attacking with
/// `attack`, if any) under the server flags `args`.
fn accuracy(name: &str, data: &Path, attack: Option<&str>, args: &[&str]) -> f32 {
    let out = temp_dir(name);
    let (mut server, addr) = start_federation(&out, ROUNDS, "mlp:784-32-10", 5, args);
    let mut honest = start_clients(&addr, data, 0, 4, 5);
    let mut evil = Command::new(bin("host-client"));
    evil.args([
        "--server",
        &addr,
        "--client-index",
        "4",
        "--num-clients",
        "5",
    ])
    .args(["--name", "evil", "--data-dir"])
    .arg(data)
    .stderr(Stdio::null());
    if let Some(attack) = attack {
        evil.args(["--attack", attack]);
    }
    let mut evil = Proc(evil.spawn().unwrap());
    assert!(wait(&mut server, Duration::from_secs(120)), "{name}");
    assert!(wait(&mut honest, Duration::from_secs(10)));
    assert!(wait(&mut evil, Duration::from_secs(10)));
    let h = History::read(&out.join(format!("history_{ROUNDS}.json"))).unwrap();
    assert!(h.rounds.iter().all(|r| r.aggregated), "{name}");
    std::fs::remove_dir_all(&out).unwrap();
    h.rounds.last().unwrap().accuracy_distributed.unwrap()
}

#[test]
fn one_poisoned_client_of_five_wrecks_fedavg_but_not_the_robust_strategies() {
    // All of MNIST: 12,000 training samples a client (the figures of bench/poison.sh).
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("../data/mnist");
    let clean = accuracy("poison-clean", &data, None, &[]);
    let flipped = Some("scale:-10");
    let fedavg = accuracy("poison-fedavg", &data, flipped, &[]);
    assert!(
        fedavg < clean - 0.2,
        "FedAvg {fedavg} against {clean} clean"
    );
    for (name, args, within) in [
        ("poison-median", &["--strategy", "median"][..], 0.01),
        ("poison-trimmed", &["--strategy", "trimmed-mean"], 0.01),
        // Krum keeps one update of five a round, so it trails FedAvg by about a
        // point with no attacker at all (94.3-94.6% against 95.7%, measured
        // with bench/poison.sh's runs under both --momentum-state values).
        ("poison-krum", &["--strategy", "krum"], 0.015),
        (
            "poison-multi-krum",
            &["--strategy", "krum", "--krum-keep", "3"],
            0.01,
        ),
        ("poison-norm", &["--max-update-norm", "2"], 0.02),
    ] {
        let poisoned = accuracy(name, &data, flipped, args);
        assert!(
            poisoned >= clean - within,
            "{name}: {poisoned} against {clean} clean (FedAvg: {fedavg})"
        );
    }
    // Random updates: the norm bound and Krum hold too.
    let noise = Some("noise:0.5");
    for (name, args) in [
        ("noise-krum", &["--strategy", "krum"][..]),
        ("noise-norm", &["--max-update-norm", "2"]),
    ] {
        let poisoned = accuracy(name, &data, noise, args);
        assert!(
            poisoned >= clean - 0.02,
            "{name}: {poisoned} against {clean}"
        );
    }
}
