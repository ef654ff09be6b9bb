//! The firmware image on QEMU's Cortex-M boards, through the real binaries:
//! the images link inside their RAM budgets (and one too big does not), a
//! board refuses a damaged shard at boot, and an M3 board trains in a
//! federation beside a host client and a simulated device, all three proving
//! they hold the federation's key.
//!
//! These need QEMU (`firmware/qemu.sh` unpacks it) and the thumbv7 targets.
//! `.ci/run` installs both and sets `FIRMWARE_TESTS=require`, so there a
//! missing piece fails the tests; elsewhere they say they are skipped, and why.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../../host-server/tests/support/mod.rs"]
mod support;

use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use firmware_sim::qemu::{self, Core, Image, Launch, Qemu, QemuError};
use host_server::history::{History, LinkKind};
use support::*;

const MODEL: &str = "mlp:784-32-10";

/// Whether QEMU and the targets are here; panics if they must be and are not.
fn ready(test: &str) -> bool {
    let missing = missing();
    match missing {
        None => true,
        Some(why) if std::env::var("FIRMWARE_TESTS").as_deref() == Ok("require") => {
            panic!("{test}: FIRMWARE_TESTS=require, but {why}")
        }
        Some(why) => {
            eprintln!("SKIPPED {test}: {why} (firmware/qemu.sh and rustup target add fix it)");
            false
        }
    }
}

fn missing() -> Option<String> {
    if let Err(e) = Qemu::find(None) {
        return Some(e.to_string());
    }
    let sysroot = Command::new(std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into()))
        .args(["--print", "sysroot"])
        .output()
        .ok()?;
    let sysroot = PathBuf::from(String::from_utf8_lossy(&sysroot.stdout).trim());
    [Core::M3, Core::M4]
        .into_iter()
        .map(Core::target)
        .find(|t| !sysroot.join("lib/rustlib").join(t).is_dir())
        .map(|t| format!("the Rust target {t} is not installed"))
}

fn image(core: Core, f32: bool, model: &str, ram_kb: usize) -> Image {
    Image {
        core,
        f32,
        model: model.into(),
        ram_kb,
        overflow_probe: false,
    }
}

/// Boots `image` on `core` with a small shard (damaged if `damage`) and
/// returns its exit status and console once it stops by itself (bounded).
fn boot_until_it_stops(
    test: &str,
    core: Core,
    image: &std::path::Path,
    damage: bool,
) -> (std::process::ExitStatus, Vec<String>) {
    let (dir, data) = (temp_dir(test), temp_dir(&format!("{test}-data")));
    mnist_subset(&data, 600, 100);
    let shard = dir.join("shard.bin");
    let written = Command::new(bin("firmware-sim"))
        .args(["--shard", "0/2", "--data-dir"])
        .arg(&data)
        .arg("--write-blob")
        .arg(&shard)
        .output()
        .unwrap();
    assert!(written.status.success());
    if damage {
        let mut blob = std::fs::read(&shard).unwrap();
        let last = blob.len() - 1;
        blob[last] ^= 0x40;
        std::fs::write(&shard, &blob).unwrap();
    }
    let provision = dir.join("provision.bin");
    qemu::write_provision("probe", None, &provision).unwrap();
    let qemu = Qemu::find(None).unwrap();
    let mut board = Launch {
        qemu: &qemu,
        core,
        image,
        shard: &shard,
        provision: &provision,
        icount: true,
    }
    .start()
    .unwrap();
    let start = Instant::now();
    let status = loop {
        if let Some(status) = board.exited() {
            break status;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the board did not stop"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let console =
        std::iter::from_fn(|| board.console.recv_timeout(Duration::from_millis(500)).ok())
            .collect();
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_dir_all(&data);
    (status, console)
}

#[test]
fn images_fit_their_ram_budgets_and_a_model_too_big_does_not_link() {
    if !ready("images_fit_their_ram_budgets") {
        return;
    }
    for (core, f32, model, params, ram_kb) in [
        (Core::M3, false, MODEL, 25_450, 128),
        (Core::M4, true, MODEL, 25_450, 128),
        (Core::M3, false, "mlp:784-16-10", 12_730, 64),
        (Core::M4, true, "mlp:784-16-10", 12_730, 64),
    ] {
        let build = image(core, f32, model, ram_kb);
        let (path, sizes) = build.build().unwrap();
        assert!(path.is_file(), "{}", path.display());
        // The parameters live in the image's static memory: the linker counted them.
        assert!(sizes.bss > params * 4, "{}: {sizes}", build.variant());
        // And the stack reserve (8 KiB) and its guard stayed free.
        assert!(sizes.stack() >= 9 * 1024, "{}: {sizes}", build.variant());
        eprintln!("{}: {sizes}", build.variant());
    }
    let too_big = image(Core::M3, false, "mlp:784-128-10", 128).build();
    match too_big {
        Err(e @ QemuError::Build { .. }) => {
            assert!(e.to_string().contains("overflowed"), "{e}")
        }
        other => panic!("a 400 KB model linked into 128 KiB: {other:?}"),
    }
}

#[test]
fn a_board_refuses_a_damaged_shard_at_boot() {
    if !ready("a_board_refuses_a_damaged_shard_at_boot") {
        return;
    }
    let (path, _) = image(Core::M3, false, MODEL, 128).build().unwrap();
    let (status, console) = boot_until_it_stops("qemu-damaged", Core::M3, &path, true);
    assert!(!status.success(), "the image stopped with a failure");
    assert!(
        console
            .iter()
            .any(|l| l.contains("boot refused") && l.contains("damaged")),
        "{console:?}"
    );
    assert!(!console.iter().any(|l| l.contains("saying hello")));
}

#[test]
fn a_stack_overflow_is_caught_by_the_guard_not_written_over_the_parameters() {
    if !ready("a_stack_overflow_is_caught_by_the_guard") {
        return;
    }
    let probe = Image {
        overflow_probe: true,
        ..image(Core::M4, true, MODEL, 128)
    };
    let (path, _) = probe.build().unwrap();
    let (status, console) = boot_until_it_stops("qemu-overflow", Core::M4, &path, false);
    assert!(!status.success(), "{console:?}");
    assert!(
        console.iter().any(|l| l.contains("probe: recursing"))
            && console
                .iter()
                .any(|l| l.contains("stack overflow") && l.contains("guard")),
        "{console:?}"
    );
}

#[test]
fn an_m3_board_trains_beside_a_host_client_and_a_simulated_device() {
    if !ready("an_m3_board_trains_beside_a_host_client_and_a_simulated_device") {
        return;
    }
    let (out, data) = (temp_dir("qemu-run-out"), temp_dir("qemu-run-data"));
    mnist_subset(&data, 6000, 600);
    // Admission by key, proved by all three; the board's key is provisioned.
    let keys = out.join("federation.key");
    let key = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
    std::fs::write(&keys, format!("{key}\n")).unwrap();
    let keys = keys.display().to_string();
    let mut lines = Vec::new();
    let mut procs = Vec::new();
    for (program, args) in [
        (
            "firmware-sim",
            &["--pty", "--baud", "0", "--shard", "1/3"][..],
        ),
        (
            "firmware-qemu",
            &[
                "--board", "m3", "--model", MODEL, "--shard", "2/3", "--name", "m3",
            ][..],
        ),
    ] {
        let mut child = Command::new(bin(program))
            .args(args)
            .args(["--auth-key-file", &keys])
            .arg("--data-dir")
            .arg(&data)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        assert!(
            line.starts_with("/dev/"),
            "{program} prints its line first: {line:?}"
        );
        lines.push(line.trim().to_string());
        procs.push((Proc(child), stdout));
    }
    let (mut server, addr) = start_federation(
        &out,
        3,
        MODEL,
        3,
        &[
            "--round-timeout",
            "120",
            "--auth-key-file",
            &keys,
            "--serial",
            &lines[0],
            "--serial",
            &lines[1],
        ],
    );
    let mut client = start_clients_with(&addr, &data, 0, 1, 3, &["--auth-key-file", &keys]);
    assert!(wait(&mut server, Duration::from_secs(400)));
    assert!(wait(&mut client, Duration::from_secs(10)));
    let (mut board, mut console) = procs.pop().unwrap();
    assert!(
        wait(&mut board, Duration::from_secs(30)),
        "the board exits cleanly after goodbye"
    );
    let mut said = String::new();
    console.read_to_string(&mut said).unwrap();
    assert!(said.contains("the server said goodbye"), "{said}");
    assert!(
        said.contains("round 3: train") && said.contains("instructions"),
        "{said}"
    );

    let history = History::read(&out.join("history_3.json")).unwrap();
    for r in &history.rounds {
        assert!(r.aggregated && r.failures.is_empty(), "{:?}", r.failures);
        let mut kinds: Vec<LinkKind> = r.participants.iter().map(|p| p.kind).collect();
        kinds.sort_by_key(|k| k.name());
        assert_eq!(kinds, [LinkKind::QemuM3, LinkKind::Serial, LinkKind::Tcp]);
        for p in &r.participants {
            assert_eq!(p.examples, 2000, "{} weighted by its own examples", p.name);
            assert!(p.fit.is_some() && p.evaluate.is_some(), "{p:?}");
        }
    }
    let last = history.rounds.last().unwrap();
    assert!(last.accuracy_distributed.unwrap() > 0.8, "{last:?}");
    let _ = std::fs::remove_dir_all(&out);
    let _ = std::fs::remove_dir_all(&data);
}
