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
            images.extend_from_slice(s.values.bytes().unwrap());
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
    let (server, mut lines) =
        start_federation_announcing(out, rounds, model, participants, extra, 1);
    let addr = lines.remove(0);
    let addr = addr
        .strip_prefix("listening on ")
        .expect("the server announces its address");
    (server, addr.to_string())
}

/// [`start_federation`], returning the first `lines` lines the server prints
/// (its addresses: ours, then Flower's listeners').
pub fn start_federation_announcing(
    out: &Path,
    rounds: u32,
    model: &str,
    participants: usize,
    extra: &[&str],
    lines: usize,
) -> (Proc, Vec<String>) {
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
    start_server_announcing(out, &args, lines)
}

/// Starts the server on an ephemeral port; returns it and its address.
pub fn start_server(out: &Path, args: &[&str]) -> (Proc, String) {
    let (server, mut lines) = start_server_announcing(out, args, 1);
    let addr = lines
        .remove(0)
        .strip_prefix("listening on ")
        .expect("the server announces its address")
        .to_string();
    (server, addr)
}

/// Starts the server on an ephemeral port; returns it and the first `lines`
/// lines it prints (its addresses: ours, then Flower's with --flower-bind).
pub fn start_server_announcing(out: &Path, args: &[&str], lines: usize) -> (Proc, Vec<String>) {
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
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let announced = (0..lines)
        .map(|_| {
            let mut line = String::new();
            stdout.read_line(&mut line).unwrap();
            line.trim().to_string()
        })
        .collect();
    // The rest (the summary) is read and dropped, so the server never blocks on a full pipe.
    std::thread::spawn(move || std::io::copy(&mut stdout, &mut std::io::sink()));
    (Proc(child), announced)
}

/// The Python of the Flower venv, which `flower/venv.sh` builds once (flwr and
/// numpy from PyPI). Without Python or PyPI this fails, saying so, unless
/// `FLOWER_TESTS=skip`: then `None`, and the caller says it skipped.
pub fn flower_python() -> Option<PathBuf> {
    if std::env::var("FLOWER_TESTS").as_deref() == Ok("skip") {
        eprintln!("FLOWER_TESTS=skip: the Flower test is skipped");
        return None;
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../flower/venv.sh");
    let made = Command::new("bash")
        .arg(&script)
        .stderr(Stdio::inherit())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
    assert!(
        made.status.success(),
        "{} could not build the Flower venv (Python 3 and PyPI are needed; \
         FLOWER_TESTS=skip skips the Flower tests)",
        script.display()
    );
    Some(PathBuf::from(
        String::from_utf8(made.stdout).unwrap().trim(),
    ))
}

/// Starts `flower/<script>` on the Flower venv's `python` with `args`, its
/// output to `log`, telemetry off.
pub fn start_python(python: &Path, script: &str, args: &[&str], log: &Path) -> Proc {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let log = std::fs::File::create(log).unwrap();
    let child = Command::new(python)
        .arg(root.join("flower").join(script))
        .args(args)
        .current_dir(&root)
        .env("FLWR_TELEMETRY_ENABLED", "0")
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    Proc(child)
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

/// Runs one host client to its end; its success and what it wrote on stderr.
pub fn run_client(addr: &str, data: &Path, extra: &[&str]) -> (bool, String) {
    let out = Command::new(bin("host-client"))
        .args([
            "--server",
            addr,
            "--num-clients",
            "2",
            "--client-index",
            "0",
        ])
        .args(["--connect-timeout", "20", "--data-dir"])
        .arg(data)
        .args(extra)
        .stdout(Stdio::null())
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
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
