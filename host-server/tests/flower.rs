//! Flower's own Python programs and ours in one federation, through the real
//! binaries, both ways: Flower's clients under our server, our clients under
//! Flower's server. flwr 1.42 from the venv `flower/venv.sh` builds (flwr and
//! numpy only).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::os::unix::process::CommandExt as _;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use host_server::history::{History, LinkKind};
use support::{
    Proc, bin, flower_python, start_clients, start_clients_with, start_federation_announcing,
    start_python, temp_dir, wait,
};

/// Checks every round's distributed accuracy is the example-weighted mean of
/// what each participant reported, and that the last round beats the first
/// and reaches `last_at_least`.
fn assert_weighted_and_rising(history: &History, last_at_least: f32) {
    for r in &history.rounds {
        let (n, sum) =
            r.participants
                .iter()
                .map(|p| p.evaluate.unwrap())
                .fold((0u64, 0.0f64), |(n, s), e| {
                    let w = u64::from(e.examples);
                    (n + w, s + w as f64 * f64::from(e.accuracy))
                });
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
    let (first, last) = (accuracy[0], accuracy[accuracy.len() - 1]);
    assert!(
        last > first && last > last_at_least,
        "accuracy by round {accuracy:?}"
    );
}

#[test]
fn a_flower_numpy_client_trains_beside_two_of_ours() {
    let Some(python) = flower_python() else {
        return;
    };
    let out = temp_dir("flower-legacy");
    let data = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../data/mnist");
    let (mut server, addr, flower) = start_flower_listener(&out, 3, 3);
    // Ours: two of three shares of the full training set; the Flower client the
    // reference lab's shape (one epoch, SGD 0.01 momentum 0.9, batch 32) on 6,000.
    let mut ours = start_clients(&addr, &data, 0, 2, 3);
    let python_args = [
        "--server",
        &flower,
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
        let flower_tests = r
            .participants
            .iter()
            .find(|p| p.kind == LinkKind::FlowerLegacy)
            .and_then(|p| p.evaluate)
            .unwrap()
            .examples;
        assert_eq!(flower_tests, 1000);
    }
    assert_weighted_and_rising(&history, 0.9);
    std::fs::remove_dir_all(&out).unwrap();
}

#[test]
fn two_of_our_clients_train_under_flowers_own_server() {
    let Some(python) = flower_python() else {
        return;
    };
    let out = temp_dir("flower-server");
    // Flower's server takes a port, not port 0: one the system just gave out.
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let record = out.join("flower-history.json");
    let server_args = [
        "--address",
        &addr,
        "--rounds",
        "3",
        "--clients",
        "2",
        "--out",
        record.to_str().unwrap(),
    ];
    let mut server = start_python(&python, "server.py", &server_args, &out.join("server.log"));
    // Two participants in one process, on two of three shares.
    let mut ours = start_flower_clients(
        "--flower-server",
        &addr,
        "mlp:784-32-10",
        2,
        &out.join("clients.log"),
    );
    let log = |name: &str| std::fs::read_to_string(out.join(name)).unwrap_or_default();
    assert!(
        wait(&mut ours, Duration::from_secs(300)),
        "our clients failed:\n{}",
        log("clients.log")
    );
    assert!(
        wait(&mut server, Duration::from_secs(30)),
        "Flower's server failed:\n{}",
        log("server.log")
    );
    let record: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&record).unwrap()).unwrap();
    let rounds = record["rounds"].as_array().unwrap();
    assert_eq!(rounds.len(), 3);
    let mut accuracy = Vec::new();
    for r in rounds {
        let round = &r["round"];
        assert_eq!(
            (r["fit_failures"].as_u64(), r["evaluate_failures"].as_u64()),
            (Some(0), Some(0))
        );
        // Both trained on their 20,000 examples and reported fedcore's metrics.
        let fits = r["fit"].as_array().unwrap();
        assert_eq!(fits.len(), 2, "round {round}");
        for fit in fits {
            assert_eq!(fit["examples"], 20000, "round {round}");
            let train_accuracy = fit["metrics"]["accuracy"].as_f64().unwrap();
            assert!((0.0..=1.0).contains(&train_accuracy), "round {round}");
        }
        // Flower's aggregate is the example-weighted mean of what ours reported.
        let evaluations = r["evaluate"].as_array().unwrap();
        assert_eq!(evaluations.len(), 2, "round {round}");
        let (n, sum) = evaluations.iter().fold((0.0, 0.0), |(n, s), e| {
            let w = e["examples"].as_f64().unwrap();
            (n + w, s + w * e["accuracy"].as_f64().unwrap())
        });
        let aggregated = r["accuracy"].as_f64().unwrap();
        assert!((sum / n - aggregated).abs() < 1e-9, "round {round}");
        accuracy.push(aggregated);
    }
    assert!(
        accuracy[2] > accuracy[0] && accuracy[2] > 0.9,
        "accuracy by round {accuracy:?}"
    );
    assert!(log("clients.log").contains("the Flower server ended the run"));
    std::fs::remove_dir_all(&out).unwrap();
}

/// Starts `clients` of our participants in one process joining the Flower
/// server at `addr` (`flag`: `--flower-server`, or `--superlink` as
/// SuperNodes), holding `model`; their log goes to `log`.
fn start_flower_clients(
    flag: &str,
    addr: &str,
    model: &str,
    clients: usize,
    log: &std::path::Path,
) -> Proc {
    let data = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../data/mnist");
    Proc(
        std::process::Command::new(bin("host-client"))
            .args([flag, addr, "--model", model])
            .args(["--clients", &clients.to_string(), "--num-clients", "3"])
            .args(["--connect-timeout", "60", "--data-dir"])
            .arg(&data)
            .stderr(std::fs::File::create(log).unwrap())
            .spawn()
            .unwrap(),
    )
}

/// `program` of the Flower venv, with the venv first on its PATH (a
/// SuperNode starts `flower-superexec` by name), telemetry off, and its
/// Flower home `home` when given.
fn flower_command(python: &Path, program: &str, home: Option<&Path>) -> Command {
    let bin = python.parent().unwrap();
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut command = Command::new(bin.join(program));
    command.env("FLWR_TELEMETRY_ENABLED", "0").env("PATH", path);
    if let Some(home) = home {
        command.env("FLWR_HOME", home);
    }
    command
}

/// Starts our server for `rounds` rounds of mlp:784-32-10 with Flower's
/// listener, waiting for and asking `participants` each round; it, its own
/// address and the Flower listener's.
fn start_flower_listener(
    out: &std::path::Path,
    rounds: u32,
    participants: usize,
) -> (Proc, String, String) {
    let flower = ["--flower-bind", "127.0.0.1:0"];
    let (server, lines) =
        start_federation_announcing(out, rounds, "mlp:784-32-10", participants, &flower, 2);
    let ours = lines[0].strip_prefix("listening on ").unwrap();
    let flower = lines[1].strip_prefix("flower listening on ").unwrap();
    (server, ours.to_string(), flower.to_string())
}

#[test]
fn our_flower_client_and_our_flower_listener_speak_flowers_protocol_and_refuse_another_model() {
    // One that holds another model fails at the first model it is sent, naming the tensor.
    let out = temp_dir("flower-other");
    let (mut server, _, flower) = start_flower_listener(&out, 1, 1);
    let mut other = start_flower_clients(
        "--flower-server",
        &flower,
        "mlp:784-16-10",
        1,
        &out.join("other.log"),
    );
    assert!(!wait(&mut other, Duration::from_secs(60)));
    let said = std::fs::read_to_string(out.join("other.log")).unwrap();
    assert!(
        said.contains("the Flower server's model is not mlp:784-16-10")
            && said.contains("tensor 0 has shape [784, 32]"),
        "{said}"
    );
    // The round is recorded, and a run that aggregated nothing fails.
    assert!(!wait(&mut server, Duration::from_secs(60)));
    let history = History::read(&out.join("history_1.json")).unwrap();
    assert!(!history.rounds[0].aggregated);
    std::fs::remove_dir_all(&out).unwrap();

    // Two that hold the model train in Flower's protocol, start to end.
    let out = temp_dir("flower-ours");
    let (mut server, _, flower) = start_flower_listener(&out, 2, 2);
    let mut ours = start_flower_clients(
        "--flower-server",
        &flower,
        "mlp:784-32-10",
        2,
        &out.join("clients.log"),
    );
    assert!(
        wait(&mut server, Duration::from_secs(120)),
        "the server failed"
    );
    assert!(
        wait(&mut ours, Duration::from_secs(20)),
        "our clients failed"
    );
    let history = History::read(&out.join("history_2.json")).unwrap();
    for r in &history.rounds {
        assert!(r.aggregated, "round {}", r.round);
        let trained: Vec<_> = r
            .participants
            .iter()
            .filter(|p| p.examples == 20000)
            .map(|p| p.kind)
            .collect();
        assert_eq!(trained, [LinkKind::FlowerLegacy; 2], "round {}", r.round);
        // Our client reports its training loss and accuracy in Flower's metrics.
        assert!(r.fit_metrics.train_accuracy.is_some(), "round {}", r.round);
    }
    assert!(history.rounds[1].accuracy_distributed.unwrap() > 0.85);
    std::fs::remove_dir_all(&out).unwrap();
}

/// A process and all it starts (a SuperNode starts SuperExecs and ClientApps
/// that outlive it): its own process group, killed as a whole when dropped.
struct Group(Child);

impl Drop for Group {
    fn drop(&mut self) {
        let group = format!("-{}", self.0.id());
        let _ = Command::new("kill").args(["-KILL", "--", &group]).status();
        let _ = self.0.wait();
    }
}

/// A port the system just gave out and took back.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Builds flower/app into a FAB in `dir` with the venv's `flwr build`.
fn build_fab(python: &Path, dir: &Path) -> std::path::PathBuf {
    let app = Path::new(env!("CARGO_MANIFEST_DIR")).join("../flower/app");
    let built = flower_command(python, "flwr", None)
        .args(["build", "--app"])
        .arg(&app)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        built.status.success(),
        "{}",
        String::from_utf8_lossy(&built.stderr)
    );
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|x| x == "fab"))
        .expect("flwr build wrote a .fab")
}

/// Starts an unchanged `flower-supernode` on `superlink` holding shard
/// `partition` of 2 (3,000 training and 500 test examples), in its own home.
fn start_supernode(python: &Path, superlink: &str, partition: u32, out: &Path) -> Group {
    start_supernode_trusting(python, superlink, partition, out, None)
}

/// [`start_supernode`] over TLS when given the CA (PEM) to trust the SuperLink by.
fn start_supernode_trusting(
    python: &Path,
    superlink: &str,
    partition: u32,
    out: &Path,
    ca: Option<&str>,
) -> Group {
    let home = out.join(format!("supernode-{partition}"));
    std::fs::create_dir_all(&home).unwrap();
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("../data/mnist");
    let config = format!(
        "partition-id={partition} num-partitions=2 data-dir=\"{}\" examples=3000 test-examples=500",
        data.display()
    );
    let log = std::fs::File::create(out.join(format!("supernode-{partition}.log"))).unwrap();
    let transport = match ca {
        Some(ca) => vec!["--root-certificates", ca],
        None => vec!["--insecure"],
    };
    let child = flower_command(python, "flower-supernode", Some(&home))
        .args(transport)
        .args(["--superlink", superlink, "--node-config", &config])
        .args(["--port", &free_port().to_string()])
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .stdin(Stdio::null())
        .process_group(0)
        .spawn()
        .unwrap();
    Group(child)
}

#[test]
fn two_unchanged_flower_supernodes_run_a_fab_beside_one_of_ours() {
    let Some(python) = flower_python() else {
        return;
    };
    let out = temp_dir("supernodes");
    let fab = build_fab(&python, &out);
    let fleet = [
        "--superlink-bind",
        "127.0.0.1:0",
        "--fab",
        fab.to_str().unwrap(),
    ];
    let (mut server, lines) = start_federation_announcing(&out, 3, "mlp:784-32-10", 3, &fleet, 2);
    let addr = lines[0].strip_prefix("listening on ").unwrap();
    let superlink = lines[1].strip_prefix("superlink listening on ").unwrap();
    let mut nodes = [
        start_supernode(&python, superlink, 0, &out),
        start_supernode(&python, superlink, 1, &out),
    ];
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("../data/mnist");
    let mut ours = start_clients(addr, &data, 0, 1, 3);
    let log = |name: &str| std::fs::read_to_string(out.join(name)).unwrap_or_default();
    assert!(
        wait(&mut server, Duration::from_secs(400)),
        "the server failed:\n{}",
        log("server.log")
    );
    assert!(
        wait(&mut ours, Duration::from_secs(20)),
        "our client failed"
    );
    // The Fleet API has no goodbye: the SuperNodes are still up, waiting for
    // another run (they are stopped, with all they started, on drop).
    for (i, node) in nodes.iter_mut().enumerate() {
        assert!(
            node.0.try_wait().unwrap().is_none(),
            "SuperNode {i} died:\n{}",
            log(&format!("supernode-{i}.log"))
        );
    }
    let history = History::read(&out.join("history_3.json")).unwrap();
    assert_eq!(history.rounds.len(), 3);
    for r in &history.rounds {
        assert!(
            r.aggregated && r.failures.is_empty(),
            "round {}: {:?}",
            r.round,
            r.failures
        );
        let mut kinds: Vec<(&str, u32)> = r
            .participants
            .iter()
            .map(|p| (p.kind.name(), p.examples))
            .collect();
        kinds.sort();
        assert_eq!(
            kinds,
            [("supernode", 3000), ("supernode", 3000), ("tcp", 20000)],
            "round {}",
            r.round
        );
        // Their training loss and accuracy enter the mean beside ours.
        for p in r
            .participants
            .iter()
            .filter(|p| p.kind == LinkKind::Supernode)
        {
            let fit = p.fit.unwrap();
            assert!(
                fit.accuracy > 0.5 && fit.loss > 0.0,
                "round {}: {fit:?}",
                r.round
            );
            assert_eq!(p.evaluate.unwrap().examples, 500);
        }
    }
    assert_weighted_and_rising(&history, 0.85);
    drop(nodes);
    std::fs::remove_dir_all(&out).unwrap();
}

#[test]
fn two_of_our_clients_join_a_flower_superlink_and_train_in_flwr_run() {
    let Some(python) = flower_python() else {
        return;
    };
    let out = temp_dir("superlink");
    let port = free_port();
    let home = out.join("home");
    std::fs::create_dir_all(&home).unwrap();
    std::fs::write(
        home.join("config.toml"),
        format!(
            "[superlink]\ndefault = \"test\"\n\n[superlink.test]\naddress = \"127.0.0.1:{port}\"\ninsecure = true\n"
        ),
    )
    .unwrap();
    let log = std::fs::File::create(out.join("superlink.log")).unwrap();
    let _superlink = Group(
        flower_command(&python, "flower-superlink", Some(&home))
            .args(["--insecure", "--port", &port.to_string()])
            // flwr 1.42 keeps its state in SQLite files named after this
            // "in-memory" name in the working directory: keep them in the test's.
            .args(["--database", ":flwr-in-memory-state:"])
            .current_dir(&out)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .stdin(Stdio::null())
            .process_group(0)
            .spawn()
            .unwrap(),
    );
    // Ours, two SuperNodes in one process, retry until the SuperLink is up.
    let superlink = format!("127.0.0.1:{port}");
    let mut ours = start_flower_clients(
        "--superlink",
        &superlink,
        "mlp:784-32-10",
        2,
        &out.join("clients.log"),
    );
    // Flower's own `flwr run` of flower/app, whose ServerApp runs FedAvg for 3 rounds.
    let app = Path::new(env!("CARGO_MANIFEST_DIR")).join("../flower/app");
    let listening = (0..100).any(|_| {
        let up = std::net::TcpStream::connect(&superlink).is_ok();
        if !up {
            std::thread::sleep(Duration::from_millis(200));
        }
        up
    });
    assert!(listening, "the SuperLink never listened");
    let run = flower_command(&python, "flwr", Some(&home))
        .args(["run"])
        .arg(&app)
        .args(["test", "--stream"])
        .output()
        .unwrap();
    let printed = String::from_utf8_lossy(&run.stdout).into_owned();
    let clients = || std::fs::read_to_string(out.join("clients.log")).unwrap_or_default();
    assert!(
        run.status.success(),
        "flwr run failed:\n{printed}\n{}",
        clients()
    );
    // Ours end by themselves once the run is over.
    assert!(
        wait(&mut ours, Duration::from_secs(60)),
        "our clients failed:\n{}",
        clients()
    );
    let record = printed
        .lines()
        .find_map(|l| l.split_once("record: ").map(|(_, json)| json.to_string()))
        .unwrap_or_else(|| panic!("no record in:\n{printed}"));
    let rounds: serde_json::Value = serde_json::from_str(&record).unwrap();
    let rounds = rounds.as_array().unwrap();
    assert_eq!(rounds.len(), 3);
    let mut accuracy = Vec::new();
    for r in rounds {
        // Both of ours trained on their 20,000 and evaluated on their 3,333.
        for (phase, examples) in [("train", 20000.0), ("evaluate", 3333.0)] {
            let replies = r[phase].as_array().unwrap();
            assert_eq!(replies.len(), 2, "round {}: {phase}", r["round"]);
            for reply in replies {
                assert_eq!(reply["num-examples"].as_f64(), Some(examples), "{reply}");
            }
        }
        // Flower's aggregate is the example-weighted mean of what ours reported.
        let (n, sum) = r["evaluate"]
            .as_array()
            .unwrap()
            .iter()
            .fold((0.0, 0.0), |(n, s), e| {
                let w = e["num-examples"].as_f64().unwrap();
                (n + w, s + w * e["accuracy"].as_f64().unwrap())
            });
        let aggregated = r["accuracy"].as_f64().unwrap();
        assert!((sum / n - aggregated).abs() < 1e-6, "round {}", r["round"]);
        accuracy.push(aggregated);
    }
    assert!(
        accuracy[2] > accuracy[0] && accuracy[2] > 0.9,
        "accuracy by round {accuracy:?}"
    );
    std::fs::remove_dir_all(&out).unwrap();
}

#[test]
fn flower_clients_of_both_protocols_join_over_tls() {
    let Some(python) = flower_python() else {
        return;
    };
    let out = temp_dir("flower-tls");
    let certs = out.join("certs");
    let made = Command::new(bin("host-server"))
        .args(["certificates", "--out"])
        .arg(&certs)
        .output()
        .unwrap();
    assert!(made.status.success());
    let path = |file: &str| certs.join(file).display().to_string();
    let (ca, cert, key) = (path("ca.pem"), path("server.pem"), path("server.key"));
    let fab = build_fab(&python, &out);
    let listeners = [
        "--tls-cert",
        &cert,
        "--tls-key",
        &key,
        "--flower-bind",
        "127.0.0.1:0",
        "--superlink-bind",
        "127.0.0.1:0",
        "--fab",
        fab.to_str().unwrap(),
    ];
    let (mut server, lines) =
        start_federation_announcing(&out, 2, "mlp:784-32-10", 3, &listeners, 3);
    let addr = lines[0].strip_prefix("listening on ").unwrap();
    let flower = lines[1].strip_prefix("flower listening on ").unwrap();
    let superlink = lines[2].strip_prefix("superlink listening on ").unwrap();
    let node = start_supernode_trusting(&python, superlink, 0, &out, Some(&ca));
    let python_args = [
        "--server",
        flower,
        "--examples",
        "3000",
        "--test-examples",
        "500",
        "--root-certificates",
        &ca,
    ];
    let log = out.join("flower-client.log");
    let mut legacy = start_python(&python, "numpy_client.py", &python_args, &log);
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("../data/mnist");
    let mut ours = start_clients_with(addr, &data, 0, 1, 3, &["--tls-ca", &ca]);
    let read = |name: &str| std::fs::read_to_string(out.join(name)).unwrap_or_default();
    assert!(
        wait(&mut server, Duration::from_secs(300)),
        "the server failed:\n{}",
        read("server.log")
    );
    assert!(wait(&mut ours, Duration::from_secs(20)));
    assert!(
        wait(&mut legacy, Duration::from_secs(20)),
        "{}",
        read("flower-client.log")
    );
    drop(node);
    let history = History::read(&out.join("history_2.json")).unwrap();
    assert_eq!(history.config["transport"], "tls");
    for r in &history.rounds {
        assert!(r.aggregated && r.failures.is_empty(), "{:?}", r.failures);
        let mut kinds: Vec<&str> = r.participants.iter().map(|p| p.kind.name()).collect();
        kinds.sort();
        assert_eq!(
            kinds,
            ["flower-legacy", "supernode", "tcp"],
            "round {}",
            r.round
        );
    }
    std::fs::remove_dir_all(&out).unwrap();
}
