//! Admission by key through the real binaries: a server with
//! `--auth-key-file` refuses clients without the key or with a wrong one
//! before it sends them anything of the model, admits the one holding it,
//! admits a device on a pty that proves it holds its own key, and refuses a
//! captured answer replayed on another connection.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use host_server::history::{History, LinkKind};
use support::*;

const KEY: &str = "6b65792d6f662d7468652d66656465726174696f6e2d33322d62797465732121";
const WRONG: &str = "77726f6e672d6b65792d6f662d33322d62797465732d2d2d2d2d2d2d2d2d2d21";

fn key_file(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

#[test]
fn only_holders_of_the_key_are_admitted_and_the_others_learn_nothing() {
    let (out, data) = (temp_dir("auth-out"), temp_dir("auth-data"));
    mnist_subset(&data, 2000, 200);
    let keys = key_file(
        &out,
        "server.keys",
        &format!("# the federation's key\n{KEY}\n"),
    );
    let wrong = key_file(&out, "wrong.keys", WRONG);
    let (mut server, addr) = start_federation(
        &out,
        2,
        "mlp:784-16-10",
        2,
        &["--auth-key-file", &keys, "--round-timeout", "60"],
    );

    let (ok, said) = run_client(&addr, &data, &["--name", "nokey"]);
    assert!(
        !ok && said.contains("admits only holders of a key"),
        "{said}"
    );
    let (ok, said) = run_client(
        &addr,
        &data,
        &["--name", "wrong", "--auth-key-file", &wrong],
    );
    assert!(
        !ok && said.contains("refused") && said.contains("prove"),
        "{said}"
    );

    // A device holding the key on a pty, and a client holding it over TCP.
    let mut device = Command::new(bin("firmware-sim"))
        .args([
            "--pty",
            "--baud",
            "0",
            "--shard",
            "1/2",
            "--model",
            "mlp:784-16-10",
        ])
        .args(["--name", "device", "--auth-key-file", &keys, "--data-dir"])
        .arg(&data)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(device.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let mut device = Proc(device);
    // The server attaches serial lines at start only: a second server for the device.
    std::fs::create_dir_all(out.join("device")).unwrap();
    let (mut with_device, device_addr) = start_federation(
        &out.join("device"),
        2,
        "mlp:784-16-10",
        2,
        &["--auth-key-file", &keys, "--serial", line.trim()],
    );
    let mut honest_device_peer =
        start_clients_with(&device_addr, &data, 0, 1, 2, &["--auth-key-file", &keys]);
    let mut honest = start_clients_with(&addr, &data, 0, 1, 2, &["--auth-key-file", &keys]);
    let (ok, said) = run_client(
        &addr,
        &data,
        &["--name", "second", "--auth-key-file", &keys],
    );
    assert!(ok, "{said}");
    assert!(wait(&mut server, Duration::from_secs(120)));
    assert!(wait(&mut honest, Duration::from_secs(10)));
    assert!(wait(&mut with_device, Duration::from_secs(120)));
    assert!(wait(&mut honest_device_peer, Duration::from_secs(10)));
    assert!(wait(&mut device, Duration::from_secs(30)));

    let history = History::read(&out.join("history_2.json")).unwrap();
    for r in &history.rounds {
        let mut names: Vec<&str> = r.participants.iter().map(|p| p.name.as_str()).collect();
        names.sort();
        assert_eq!(
            names,
            ["client-0", "second-0"],
            "only key holders took part"
        );
    }
    let history = History::read(&out.join("device").join("history_2.json")).unwrap();
    for r in &history.rounds {
        assert!(r.aggregated);
        assert!(
            r.participants
                .iter()
                .any(|p| p.kind == LinkKind::Serial && p.fit.is_some()),
            "the device proved its key over the pty and trained"
        );
    }
}

/// Says hello as `name` on a new connection to `addr`; the link and the challenge.
async fn challenged(
    addr: &str,
    name: &str,
) -> (
    fedhost::link::Link<tokio::net::TcpStream>,
    fedcore::protocol::auth::Challenge,
) {
    use fedcore::protocol::{Encoding, Hello, Message, PROTOCOL_VERSION, ParticipantKind};
    let socket = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut link = fedhost::link::Link::new(socket);
    let hello = Hello {
        version: PROTOCOL_VERSION,
        name,
        kind: ParticipantKind::Host,
        train_examples: 10,
        test_examples: 10,
        max_frame: fedhost::link::HOST_MAX_FRAME as u32,
        encoding: Encoding::F32,
        data: fedcore::protocol::DataShape {
            values: 784,
            labels: 10,
        },
    };
    link.send(&Message::Hello(hello)).await.unwrap();
    match link.recv().await.unwrap() {
        Message::Challenge(challenge) => (link, challenge),
        other => panic!("expected a challenge, got {other:?}"),
    }
}

#[test]
fn a_replayed_answer_is_refused_by_the_server_binary_and_nothing_of_the_model_follows() {
    use fedcore::protocol::{ErrorCode, Message, PROTOCOL_VERSION, auth};
    let out = temp_dir("replay-out");
    let keys = key_file(&out, "server.keys", KEY);
    let (_server, addr) =
        start_federation(&out, 1, "mlp:784-16-10", 2, &["--auth-key-file", &keys]);
    let key: Vec<u8> = (0..KEY.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&KEY[i..i + 2], 16).unwrap())
        .collect();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        // An honest participant's answer, as an eavesdropper would capture it.
        let (mut honest, first) = challenged(&addr, "client-0").await;
        let captured = auth::prove(&key, &first, PROTOCOL_VERSION, "client-0");
        honest.send(&Message::Proof(captured)).await.unwrap();
        assert!(matches!(honest.recv().await.unwrap(), Message::Welcome(_)));
        drop(honest);
        // Replayed on a connection of the eavesdropper's own: another challenge, refused.
        let (mut replay, second) = challenged(&addr, "client-0").await;
        assert_ne!(first.nonce, second.nonce);
        replay.send(&Message::Proof(captured)).await.unwrap();
        match replay.recv().await.unwrap() {
            Message::Error(e) => assert_eq!(e.code, ErrorCode::Auth, "{}", e.text),
            other => panic!("expected the refusal, got {other:?}"),
        }
        // Then the connection closes: no welcome, no parameters.
        assert!(replay.recv().await.is_err());
    });
    let log = std::fs::read_to_string(out.join("server.log")).unwrap();
    assert!(
        log.contains("did not prove") && log.contains("peer=127.0.0.1:"),
        "the refusal is logged with the peer's address:\n{log}"
    );
}
