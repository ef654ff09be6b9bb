//! Devices in a federation, through the real binaries: firmware-sim on a
//! pseudo-terminal, host-server attaching it with `--serial`, a host-client
//! over TCP beside it, on a small MNIST subset. The binaries are found beside
//! the test executable: `cargo test --workspace` builds them all first.

// Integration tests: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../../host-server/tests/support/mod.rs"]
mod support;

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use host_server::history::{History, LinkKind, Phase};
use support::*;

/// A running firmware-sim: its process, the line it serves, and the rest of its output.
struct Device {
    proc: Proc,
    path: String,
    stdout: BufReader<ChildStdout>,
}

impl Device {
    fn start(data: &Path, args: &[&str]) -> Device {
        let mut child = Command::new(bin("firmware-sim"))
            .arg("--data-dir")
            .arg(data)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut path = String::new();
        stdout.read_line(&mut path).unwrap();
        assert!(
            !path.trim().is_empty(),
            "firmware-sim prints its line first"
        );
        Device {
            proc: Proc(child),
            path: path.trim().to_string(),
            stdout,
        }
    }

    /// Waits for it to exit (bounded); returns its success and everything it printed.
    fn finish(mut self) -> (bool, String) {
        let ok = wait(&mut self.proc, Duration::from_secs(30));
        let mut rest = String::new();
        self.stdout.read_to_string(&mut rest).unwrap();
        (ok, rest)
    }
}

const MODEL: &str = "mlp:784-32-10";

/// A server for one host client and one device on `line`.
fn server_with_device(out: &Path, rounds: u32, line: &str) -> (Proc, String) {
    start_federation(
        out,
        rounds,
        MODEL,
        2,
        &["--round-timeout", "60", "--serial", line],
    )
}

fn device_rounds(history: &History) -> Vec<u32> {
    history
        .rounds
        .iter()
        .filter(|r| {
            r.participants
                .iter()
                .any(|p| p.kind == LinkKind::Serial && p.fit.is_some())
        })
        .map(|r| r.round)
        .collect()
}

#[test]
fn a_device_on_a_pty_trains_beside_a_host_client() {
    let (out, data) = (temp_dir("dev-run-out"), temp_dir("dev-run-data"));
    mnist_subset(&data, 6000, 600);
    let device = Device::start(&data, &["--pty", "--baud", "0", "--shard", "1/2"]);
    let (mut server, addr) = server_with_device(&out, 3, &device.path);
    let mut client = start_clients(&addr, &data, 0, 1, 2);
    assert!(wait(&mut server, Duration::from_secs(120)));
    assert!(wait(&mut client, Duration::from_secs(10)));
    let (ok, printed) = device.finish();
    assert!(ok, "the device heard goodbye and exited cleanly: {printed}");
    assert!(printed.contains("parameters") && printed.contains("the server said goodbye"));

    let history = History::read(&out.join("history_3.json")).unwrap();
    for r in &history.rounds {
        assert!(r.aggregated && r.failures.is_empty(), "{:?}", r.failures);
        let device = r
            .participants
            .iter()
            .find(|p| p.kind == LinkKind::Serial)
            .expect("the device took part");
        assert_eq!(device.examples, 3000, "weighted by its own examples");
        assert!(device.fit.is_some() && device.evaluate.is_some());
        // int8 both ways: 25,450 parameters in about 28 KB, where f32 would take over 100 KB.
        assert!(
            (25_450..32_000).contains(&device.bytes_received),
            "{}",
            device.bytes_received
        );
        assert!(device.bytes_sent >= 25_450);
    }
    let last = history.rounds.last().unwrap();
    assert!(last.accuracy_distributed.unwrap() > 0.85, "{last:?}");
    let device_accuracy = last
        .participants
        .iter()
        .find(|p| p.kind == LinkKind::Serial)
        .and_then(|p| p.evaluate)
        .unwrap()
        .accuracy;
    assert!(device_accuracy > 0.85, "{device_accuracy}");
}

#[test]
fn bit_errors_on_the_line_are_repaired() {
    let (out, data) = (temp_dir("dev-ber-out"), temp_dir("dev-ber-data"));
    mnist_subset(&data, 4000, 400);
    // 1e-4 damages about one 256-byte frame in five.
    let device = Device::start(
        &data,
        &[
            "--pty",
            "--baud",
            "0",
            "--shard",
            "1/2",
            "--link-ber",
            "1e-4",
            "--seed",
            "3",
        ],
    );
    let (mut server, addr) = server_with_device(&out, 2, &device.path);
    let mut client = start_clients(&addr, &data, 0, 1, 2);
    assert!(wait(&mut server, Duration::from_secs(180)));
    assert!(wait(&mut client, Duration::from_secs(10)));
    let (ok, printed) = device.finish();
    assert!(ok, "{printed}");

    let history = History::read(&out.join("history_2.json")).unwrap();
    assert_eq!(device_rounds(&history), [1, 2]);
    let resends: u32 = history
        .rounds
        .iter()
        .flat_map(|r| &r.participants)
        .map(|p| p.resends)
        .sum();
    assert!(resends > 0, "damaged frames were asked for again");
    assert!(history.rounds.iter().all(|r| r.failures.is_empty()));
    assert!(history.rounds[1].accuracy_distributed.unwrap() > 0.8);
}

#[test]
fn a_device_that_vanishes_is_left_out_and_rejoins_later() {
    let (out, data) = (temp_dir("dev-gone-out"), temp_dir("dev-gone-data"));
    mnist_subset(&data, 4000, 400);
    let link = out.join("device0");
    let link_arg = link.to_str().unwrap();
    // At 115200 baud each round keeps the device's link busy for about 5 s.
    let args = ["--pty", "--pty-link", link_arg, "--shard", "1/2"];
    let first = Device::start(&data, &args);
    let (mut server, addr) = server_with_device(&out, 4, link_arg);
    let mut client = start_clients(&addr, &data, 0, 1, 2);

    // Unplug it in the middle of round 2's transfer.
    let history_file = out.join("history_4.json");
    let start = Instant::now();
    while History::read(&history_file).map_or(true, |h| h.rounds.is_empty()) {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "round 1 never ended"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_secs(1));
    drop(first);
    // Plug it back in: a new simulator takes over the stable link.
    std::thread::sleep(Duration::from_secs(1));
    let second = Device::start(&data, &args);

    assert!(wait(&mut server, Duration::from_secs(180)));
    assert!(wait(&mut client, Duration::from_secs(10)));
    let (ok, printed) = second.finish();
    assert!(ok, "{printed}");

    let history = History::read(&history_file).unwrap();
    assert_eq!(history.rounds.len(), 4);
    let lost = history
        .rounds
        .iter()
        .find(|r| {
            r.failures
                .iter()
                .any(|f| f.name == "device" && f.phase == Phase::Fit && f.kind.is_some())
        })
        .expect("the round the device vanished in records it as failed");
    assert_eq!(lost.round, 2);
    let rounds = device_rounds(&history);
    assert!(rounds.contains(&1) && !rounds.contains(&2), "{rounds:?}");
    assert!(
        rounds.iter().any(|&r| r > lost.round),
        "the device rejoined a later round: {rounds:?}"
    );
}

#[test]
fn a_budget_too_small_is_refused_at_boot_with_the_breakdown() {
    let out = Command::new(bin("firmware-sim"))
        .args(["--pty", "--ram-kb", "64", "--data-dir", "/nonexistent"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(out.stdout.is_empty(), "no line is opened");
    let err = String::from_utf8(out.stderr).unwrap();
    for part in [
        "parameters",
        "101800",
        "activations",
        "frame buffers",
        "boot refused",
        "65536",
    ] {
        assert!(err.contains(part), "{part:?} missing from: {err}");
    }
}
