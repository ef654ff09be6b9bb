//! The client's errors: one clear line and a non-zero exit.

// Integration tests: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::Command;

fn client() -> Command {
    Command::new(env!("CARGO_BIN_EXE_host-client"))
}

fn one_line_error(out: &std::process::Output) -> String {
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    err
}

#[test]
fn bad_flags_are_refused() {
    let out = client().args(["--partition", "bogus"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).starts_with("error: invalid value 'bogus'"));
    let out = client()
        .args(["--client-index", "4", "--num-clients", "2"])
        .output()
        .unwrap();
    assert!(one_line_error(&out).contains("reaches past --num-clients"));
}

#[test]
fn a_missing_data_dir_is_named() {
    let out = client()
        .args(["--data-dir", "/nonexistent/mnist"])
        .output()
        .unwrap();
    let err = one_line_error(&out);
    assert!(
        err.contains("/nonexistent/mnist/train-labels-idx1-ubyte not found"),
        "{err}"
    );
}

#[test]
fn a_bad_checksum_is_named() {
    let dir = std::env::temp_dir().join(format!("fedclient-sum-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../data/mnist");
    for f in std::fs::read_dir(&src).unwrap() {
        let f = f.unwrap().path();
        std::fs::copy(&f, dir.join(f.file_name().unwrap())).unwrap();
    }
    let mut labels = std::fs::read(dir.join("t10k-labels-idx1-ubyte.gz")).unwrap();
    let last = labels.len() - 1;
    labels[last] ^= 0xff;
    std::fs::write(dir.join("t10k-labels-idx1-ubyte.gz"), labels).unwrap();
    let out = client().arg("--data-dir").arg(&dir).output().unwrap();
    let err = one_line_error(&out);
    assert!(
        err.contains("checksum mismatch for") && err.contains("t10k-labels-idx1-ubyte.gz"),
        "{err}"
    );
    let out = client()
        .args(["evaluate", "--model-file", "/nonexistent.bin"])
        .output()
        .unwrap();
    assert!(one_line_error(&out).contains("/nonexistent.bin"));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn an_unreachable_server_times_out_clearly() {
    // Port 9 (discard) on loopback has no listener here; one second of retries.
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("../data/mnist");
    let out = client()
        .args([
            "--server",
            "127.0.0.1:9",
            "--connect-timeout",
            "1",
            "--data-dir",
        ])
        .arg(data)
        .output()
        .unwrap();
    assert!(one_line_error(&out).contains("cannot reach the server at 127.0.0.1:9"));
}
