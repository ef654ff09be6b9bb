//! Helpers for tests that run the real binaries: processes that stop when
//! dropped, temporary directories, an MNIST subset, starting a server and clients.
//! Shared by host-server's and firmware-sim's tests (the latter include this
//! file by path), so each uses only some of it.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fedcore::data::Dataset;

/// A child process that is killed when dropped, so no test leaves one behind.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A workspace binary, found beside the test executable's directory
/// (`cargo test --workspace` builds every binary before running any test).
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let path = exe.parent().unwrap().parent().unwrap().join(name);
    assert!(
        path.exists(),
        "{} is missing: run `cargo test --workspace`, which builds it",
        path.display()
    );
    path
}

pub fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("fedtest-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Writes the first `train` and `test` MNIST samples as raw IDX files into `dir`.
pub fn mnist_subset(dir: &Path, train: usize, test: usize) {
    let full = fedhost::dataset::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../data/mnist"))
        .unwrap();
    for (set, n, prefix) in [(&full.train, train, "train"), (&full.test, test, "t10k")] {
        let mut images = vec![0, 0, 8, 3];
        for d in [n as u32, 28, 28] {
            images.extend_from_slice(&d.to_be_bytes());
        }
        let mut labels = vec![0, 0, 8, 1];
        labels.extend_from_slice(&(n as u32).to_be_bytes());
        for i in 0..n {
            let s = set.sample(i);
            images.extend_from_slice(s.pixels);
            labels.push(s.label);
        }
        std::fs::write(dir.join(format!("{prefix}-images-idx3-ubyte")), images).unwrap();
        std::fs::write(dir.join(format!("{prefix}-labels-idx1-ubyte")), labels).unwrap();
    }
}

/// Starts a server for `rounds` rounds of `model` that waits for, and asks,
/// all of its `participants` every round; `extra` are further flags.
pub fn start_federation(
    out: &Path,
    rounds: u32,
    model: &str,
    participants: usize,
    extra: &[&str],
) -> (Proc, String) {
    let (rounds, n) = (rounds.to_string(), participants.to_string());
    let mut args = vec!["--rounds", &rounds, "--model", model];
    for min in [
        "--min-available-clients",
        "--min-fit-clients",
        "--min-evaluate-clients",
    ] {
        args.extend([min, &n]);
    }
    args.extend_from_slice(extra);
    start_server(out, &args)
}

/// Starts the server on an ephemeral port; returns it and its address.
pub fn start_server(out: &Path, args: &[&str]) -> (Proc, String) {
    let mut child = Command::new(bin("host-server"))
        .args(["--bind", "127.0.0.1:0", "--out"])
        .arg(out)
        .arg("--log-file")
        .arg(out.join("server.log"))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .trim()
        .strip_prefix("listening on ")
        .expect("the server announces its address")
        .to_string();
    (Proc(child), addr)
}

/// Starts a client process running `here` virtual clients from `index` on, of `clients`.
pub fn start_clients(addr: &str, data: &Path, index: usize, here: usize, clients: usize) -> Proc {
    start_clients_with(addr, data, index, here, clients, &[])
}

/// [`start_clients`] with further flags.
pub fn start_clients_with(
    addr: &str,
    data: &Path,
    index: usize,
    here: usize,
    clients: usize,
    extra: &[&str],
) -> Proc {
    let child = Command::new(bin("host-client"))
        .args(["--clients", &here.to_string()])
        .args([
            "--server",
            addr,
            "--num-clients",
            &clients.to_string(),
            "--client-index",
            &index.to_string(),
        ])
        .args(["--connect-timeout", "20", "--data-dir"])
        .arg(data)
        .args(extra)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    Proc(child)
}

/// Waits for a process to exit by itself (bounded), returning its success.
pub fn wait(server: &mut Proc, limit: Duration) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if let Some(status) = server.0.try_wait().unwrap() {
            return status.success();
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("the server did not finish within {limit:?}");
}
