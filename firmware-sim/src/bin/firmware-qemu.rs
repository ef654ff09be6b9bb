//! firmware-qemu: the firmware image on an emulated Cortex-M board, joined to
//! a federation over its UART.
//!
//! Builds (or finds, already built) the image of `firmware/` for the board,
//! the model and the RAM budget; writes the board's shard blob and its
//! provisioning record; starts `qemu-system-arm` with the link UART on a pty
//! and prints that pty's path as its first line, so `host-server --serial
//! PATH` attaches the board as it would firmware-sim. Then it relays the
//! board's console (boot, per-round instruction counts, stack high-water
//! mark) until the image stops, and stops QEMU on exit or on a signal.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use fedcore::model::ModelSpec;
use fedhost::keys::Keys;
use firmware_sim::board::{self, Numeric};
use firmware_sim::qemu::{self, Core, Image, Launch, Qemu};
use firmware_sim::shard::{self, ShardArgs};

/// The firmware image on QEMU's mps2-an386 (Cortex-M4F) or mps2-an385 (Cortex-M3).
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    /// The board: m4 (mps2-an386, with FPU) or m3 (mps2-an385, no FPU).
    #[arg(long, value_enum, default_value_t = Core::M3)]
    board: Core,
    /// Number type of training (f32 only on the m4).
    #[arg(long, value_enum, default_value_t = Numeric::Fixed)]
    numeric: Numeric,
    /// The model the image is built for (the federation's).
    #[arg(long, default_value = "mlp:784-32-10", value_parser = fedhost::keras::parse_model_arg)]
    model: ModelSpec,
    /// RAM budget in KiB, set by the image's linker script: a model whose
    /// memory does not fit fails to link.
    #[arg(long, default_value_t = 128)]
    ram_kb: usize,
    /// Name in the server's history (the board's provisioning record).
    #[arg(long, default_value = "board")]
    name: String,
    /// Provision the board with its key for a server that admits by key:
    /// the file's one key, or its `name: key` line for --name.
    #[arg(long, value_name = "FILE")]
    auth_key_file: Option<PathBuf>,
    #[command(flatten)]
    data: ShardArgs,
    /// Keep at most this many of the shard's training samples (a board's flash holds fewer).
    #[arg(long)]
    train_samples: Option<usize>,
    /// Keep at most this many of the shard's test samples.
    #[arg(long)]
    test_samples: Option<usize>,
    /// Use this image instead of building one.
    #[arg(long)]
    image: Option<PathBuf>,
    /// The qemu-system-arm to run (default: firmware/qemu.sh's copy, else PATH).
    #[arg(long)]
    qemu: Option<PathBuf>,
    /// Run without instruction counting (the board's clock then follows the
    /// host's, and tick counts are not instruction counts).
    #[arg(long)]
    no_icount: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("firmware-qemu: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGHUP,
    ] {
        signal_hook::flag::register(signal, Arc::clone(&stop))
            .context("cannot watch for signals")?;
    }
    let image = match cli.image {
        Some(path) => path,
        None => {
            eprintln!(
                "firmware-qemu: building the {} image for {} in {} KiB...",
                cli.board.machine(),
                cli.model,
                cli.ram_kb
            );
            let (path, sizes) = Image {
                core: cli.board,
                f32: cli.numeric == Numeric::F32,
                model: cli.model.to_string(),
                ram_kb: cli.ram_kb,
                overflow_probe: false,
            }
            .build()?;
            eprintln!("firmware-qemu: {}: {sizes}", path.display());
            path
        }
    };
    let qemu = Qemu::find(cli.qemu.as_deref())?;

    let mut data = cli.data.load()?;
    if let Some(n) = cli.train_samples {
        data.train.truncate(n);
    }
    if let Some(n) = cli.test_samples {
        data.test.truncate(n);
    }
    let files = tempfile::Builder::new()
        .prefix("firmware-qemu-")
        .tempdir()
        .context("cannot make a folder for the board's files")?;
    let shard_path = files.path().join("shard.bin");
    let provision_path = files.path().join("provision.bin");
    shard::write_blob(&data, &shard_path)?;
    let key = cli
        .auth_key_file
        .as_deref()
        .map(|path| Keys::own(path, &cli.name))
        .transpose()?;
    qemu::write_provision(&cli.name, key.as_deref(), &provision_path)?;

    let mut board = Launch {
        qemu: &qemu,
        core: cli.board,
        image: &image,
        shard: &shard_path,
        provision: &provision_path,
        icount: !cli.no_icount,
    }
    .start()?;
    board::say(board.pty.display());
    let status = loop {
        while let Ok(line) = board.console.try_recv() {
            board::say(if cli.no_icount {
                line
            } else {
                qemu::with_instructions(&line)
            });
        }
        if let Some(status) = board.exited() {
            break Some(status);
        }
        if stop.load(Ordering::Relaxed) {
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    board.stop();
    // What the console said last, after QEMU ended.
    while let Ok(line) = board.console.recv_timeout(Duration::from_millis(200)) {
        board::say(line);
    }
    Ok(match status {
        Some(s) if s.success() => ExitCode::SUCCESS,
        Some(s) => {
            eprintln!("firmware-qemu: the board stopped with {s}");
            ExitCode::FAILURE
        }
        None => {
            eprintln!("firmware-qemu: stopped by a signal");
            ExitCode::from(130)
        }
    })
}
