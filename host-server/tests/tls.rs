//! TLS through the real binaries: certificates made at test time by
//! `host-server certificates` (rcgen); a TLS federation and a mutual-TLS one
//! (with admission by key inside) train; plaintext peers on either side get a
//! clear error; and a recording relay between a client and the server shows
//! the model's bytes in the clear without TLS and none of them with it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use host_server::history::{History, KeyProof};
use support::*;

const MODEL: &str = "mlp:784-16-10";
const KEY: &str = "6b65792d6f662d7468652d66656465726174696f6e2d33322d62797465732121";

/// The files `host-server certificates` wrote into `dir`, for the clients named.
fn certificates(dir: &Path, clients: &[&str]) -> PathBuf {
    let mut command = Command::new(bin("host-server"));
    command.args(["certificates", "--out"]).arg(dir);
    for client in clients {
        command.args(["--client", client]);
    }
    let made = command.output().unwrap();
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    dir.to_path_buf()
}

fn path(dir: &Path, file: &str) -> String {
    dir.join(file).display().to_string()
}

#[test]
fn tls_and_mutual_tls_federations_train_and_plaintext_peers_are_told_why_not() {
    let (out, data) = (temp_dir("tls-out"), temp_dir("tls-data"));
    mnist_subset(&data, 2000, 200);
    let certs = certificates(&out.join("certs"), &["alice", "bob"]);
    let (ca, cert, key) = (
        path(&certs, "ca.pem"),
        path(&certs, "server.pem"),
        path(&certs, "server.key"),
    );

    // TLS: two clients trusting the CA train; a plaintext one is told to give --tls-ca.
    let tls_out = out.join("tls");
    std::fs::create_dir_all(&tls_out).unwrap();
    let server_tls = ["--tls-cert", &cert, "--tls-key", &key];
    let (mut server, addr) = start_federation(&tls_out, 2, MODEL, 2, &server_tls);
    let (ok, said) = run_client(&addr, &data, &["--name", "plain"]);
    assert!(!ok && said.contains("--tls-ca"), "{said}");
    let mut clients = start_clients_with(&addr, &data, 0, 2, 2, &["--tls-ca", &ca]);
    assert!(wait(&mut server, Duration::from_secs(120)));
    assert!(wait(&mut clients, Duration::from_secs(10)));
    let history = History::read(&tls_out.join("history_2.json")).unwrap();
    assert_eq!(history.config["transport"], "tls");
    assert!(
        history
            .rounds
            .iter()
            .all(|r| r.aggregated && r.participants.len() == 2)
    );

    // Against a plaintext server, a TLS client says its handshake failed.
    let plain_out = out.join("plain");
    std::fs::create_dir_all(&plain_out).unwrap();
    let (_plain, plain_addr) = start_federation(&plain_out, 1, MODEL, 2, &[]);
    let (ok, said) = run_client(&plain_addr, &data, &["--tls-ca", &ca]);
    assert!(!ok && said.contains("TLS handshake"), "{said}");

    // Mutual TLS with admission by key inside: certificate holders train and
    // are recorded by their certificate; one without a certificate is refused.
    let mutual_out = out.join("mutual");
    std::fs::create_dir_all(&mutual_out).unwrap();
    let keys = mutual_out.join("keys");
    std::fs::write(&keys, KEY).unwrap();
    let keys = keys.display().to_string();
    let mut server_args = server_tls.to_vec();
    server_args.extend(["--tls-client-ca", &ca, "--auth-key-file", &keys]);
    let (mut server, addr) = start_federation(&mutual_out, 2, MODEL, 2, &server_args);
    let (ok, said) = run_client(&addr, &data, &["--tls-ca", &ca, "--auth-key-file", &keys]);
    assert!(!ok, "a client without a certificate was admitted: {said}");
    let mut holders = ["alice", "bob"].map(|name| {
        let (cert, key) = (
            path(&certs, &format!("{name}.pem")),
            path(&certs, &format!("{name}.key")),
        );
        let index = if name == "alice" { 0 } else { 1 };
        start_clients_with(
            &addr,
            &data,
            index,
            1,
            2,
            &[
                "--tls-ca",
                &ca,
                "--tls-cert",
                &cert,
                "--tls-key",
                &key,
                "--auth-key-file",
                &keys,
            ],
        )
    });
    assert!(wait(&mut server, Duration::from_secs(120)));
    for holder in &mut holders {
        assert!(wait(holder, Duration::from_secs(10)));
    }
    let history = History::read(&mutual_out.join("history_2.json")).unwrap();
    assert_eq!(history.config["transport"], "mutual tls");
    let mut seen: Vec<String> = Vec::new();
    for r in &history.rounds {
        assert!(r.aggregated);
        for p in &r.participants {
            assert_eq!(p.credentials.key, KeyProof::Shared);
            let fingerprint = p.credentials.certificate.clone().expect("a certificate");
            assert_eq!(fingerprint.len(), 64, "{fingerprint}");
            seen.push(fingerprint);
        }
    }
    seen.sort();
    seen.dedup();
    assert_eq!(
        seen.len(),
        2,
        "each client is recorded by its own certificate"
    );
}

/// A TCP relay on loopback to `server` that keeps every byte it carries, both ways.
struct Recorder {
    address: String,
    bytes: Arc<Mutex<Vec<u8>>>,
    stop: Arc<AtomicBool>,
}

impl Recorder {
    fn start(server: &str) -> Recorder {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let (bytes, stop) = (
            Arc::new(Mutex::new(Vec::new())),
            Arc::new(AtomicBool::new(false)),
        );
        let (server, kept, stopping) = (server.to_string(), Arc::clone(&bytes), Arc::clone(&stop));
        std::thread::spawn(move || {
            while !stopping.load(Ordering::Relaxed) {
                let Ok((client, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                };
                client.set_nonblocking(false).unwrap();
                let upstream = TcpStream::connect(&server).unwrap();
                for (mut from, mut to) in [
                    (client.try_clone().unwrap(), upstream.try_clone().unwrap()),
                    (upstream, client),
                ] {
                    let kept = Arc::clone(&kept);
                    std::thread::spawn(move || {
                        let mut buf = [0u8; 16 * 1024];
                        while let Ok(n @ 1..) = from.read(&mut buf) {
                            kept.lock().unwrap().extend_from_slice(&buf[..n]);
                            if to.write_all(&buf[..n]).is_err() {
                                break;
                            }
                        }
                        let _ = to.shutdown(std::net::Shutdown::Both);
                    });
                }
            }
        });
        Recorder {
            address,
            bytes,
            stop,
        }
    }

    fn captured(&self) -> Vec<u8> {
        self.bytes.lock().unwrap().clone()
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// How many of 200 16-byte runs of the final model's f32 parameters (as the
/// wire carries them, little-endian) appear in `captured`.
fn model_runs_seen(model_file: &Path, captured: &[u8]) -> usize {
    let (_, params) = fedhost::model_file::load(model_file).unwrap();
    let bytes: Vec<u8> = params.iter().flat_map(|v| v.to_le_bytes()).collect();
    let step = bytes.len() / 200 / 4 * 4;
    (0..200)
        .map(|i| &bytes[i * step..i * step + 16])
        .filter(|run| captured.windows(16).any(|w| w == *run))
        .count()
}

#[test]
fn a_captured_tls_session_shows_none_of_the_model_and_a_plaintext_one_shows_it() {
    let (out, data) = (temp_dir("capture-out"), temp_dir("capture-data"));
    mnist_subset(&data, 1000, 100);
    let certs = certificates(&out.join("certs"), &[]);
    let ca = path(&certs, "ca.pem");
    let mut seen = Vec::new();
    for tls in [false, true] {
        let run = out.join(if tls { "tls" } else { "plain" });
        std::fs::create_dir_all(&run).unwrap();
        let (cert, key) = (path(&certs, "server.pem"), path(&certs, "server.key"));
        let tls_args = ["--tls-cert", &cert, "--tls-key", &key];
        let args: &[&str] = if tls { &tls_args } else { &[] };
        let (mut server, addr) = start_federation(&run, 1, MODEL, 2, args);
        let recorder = Recorder::start(&addr);
        let mut flags = vec!["--encoding", "f32"];
        if tls {
            flags.extend(["--tls-ca", &ca]);
        }
        let mut direct = start_clients_with(&addr, &data, 0, 1, 2, &flags);
        let mut recorded = start_clients_with(&recorder.address, &data, 1, 1, 2, &flags);
        assert!(wait(&mut server, Duration::from_secs(120)));
        assert!(wait(&mut direct, Duration::from_secs(10)));
        assert!(wait(&mut recorded, Duration::from_secs(10)));
        let captured = recorder.captured();
        assert!(
            captured.len() > 4 * 12_730,
            "the relay carried the model: {} bytes",
            captured.len()
        );
        seen.push(model_runs_seen(&run.join("model_final.bin"), &captured));
    }
    eprintln!(
        "model runs seen in the capture: plaintext {}/200, TLS {}/200",
        seen[0], seen[1]
    );
    // The plaintext control shows the check can see the model on the wire.
    assert!(seen[0] >= 150, "plaintext: {} of 200 runs seen", seen[0]);
    assert_eq!(
        seen[1], 0,
        "TLS: {} of 200 runs of the model seen in the clear",
        seen[1]
    );
}
