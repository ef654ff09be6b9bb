//! firmware-sim: a microcontroller-class participant over a pty or a serial port.
//!
//! Boots like firmware (checks its memory against `--ram-kb` and prints the
//! breakdown), loads its data shard, opens its line (printing the path a
//! server should open as the first line on stdout), and runs fedcore's device
//! loop until the server says goodbye.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use fedcore::model::ModelSpec;
use fedhost::keys::Keys;
use fedhost::link::{DEFAULT_BAUD, WireEncoding};
use firmware_sim::board::{self, Build, Numeric};
use firmware_sim::line::{Line, LineChoice};
use firmware_sim::shard::{self, ShardArgs};
use firmware_sim::uart::SimUart;

/// A simulated microcontroller that joins a federation over a serial line.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    /// Create a pseudo-terminal pair and serve on it (its path is the first line printed).
    #[arg(long, conflicts_with = "port", required_unless_present_any = ["port", "write_blob"])]
    pty: bool,
    /// With --pty: also make this symlink to the pty's path (a stable name across restarts).
    #[arg(long, requires = "pty")]
    pty_link: Option<PathBuf>,
    /// Serve on this serial port instead (e.g. /dev/ttyUSB0).
    #[arg(long)]
    port: Option<PathBuf>,
    /// Instead of serving, write this device's shard (--shard, --partition,
    /// --seed, --data-dir) as a shard blob, the form a board reads from flash
    /// or a loaded memory region (fedcore::data::Blob), to FILE, and exit.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["port", "pty"])]
    write_blob: Option<PathBuf>,
    /// Line speed: the link moves bytes no faster than this baud rate allows (10 bits a byte).
    /// 0 means unthrottled (only with --pty).
    #[arg(long, default_value_t = DEFAULT_BAUD)]
    baud: u32,
    /// RAM budget in KiB: boot is refused if the firmware's memory does not fit.
    #[arg(long, default_value_t = 128)]
    ram_kb: usize,
    /// The model the firmware is built for.
    #[arg(long, default_value = "mlp:784-32-10", value_parser = fedhost::keras::parse_model_arg)]
    model: ModelSpec,
    /// Number type of training.
    #[arg(long, value_enum, default_value_t = Numeric::Fixed)]
    numeric: Numeric,
    /// Parameter encoding on the wire.
    #[arg(long, value_enum, default_value_t = WireEncoding::Int8)]
    encoding: WireEncoding,
    /// Largest frame the device receives, in bytes: 256, 512 or 1024.
    #[arg(long, default_value_t = 256)]
    max_frame: usize,
    #[command(flatten)]
    data: ShardArgs,
    /// Bit error rate injected on the line, both ways (e.g. 1e-5).
    #[arg(long, default_value_t = 0.0)]
    link_ber: f64,
    /// Name in the server's history.
    #[arg(long, default_value = "device")]
    name: String,
    /// Prove to a server that admits by key that this device holds its key:
    /// the file's one key, or its `name: key` line for --name.
    #[arg(long, value_name = "FILE")]
    auth_key_file: Option<PathBuf>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("firmware-sim: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    if !(0.0..=1.0).contains(&cli.link_ber) {
        anyhow::bail!(
            "--link-ber must be a probability in [0, 1], got {}",
            cli.link_ber
        );
    }
    let key = cli
        .auth_key_file
        .as_deref()
        .map(|path| Keys::own(path, &cli.name))
        .transpose()?;
    let build = Build {
        key,
        name: cli.name,
        model: cli.model,
        numeric: cli.numeric,
        encoding: cli.encoding.into(),
        max_frame: cli.max_frame,
        ram: cli.ram_kb * 1024,
        baud: (cli.baud > 0).then_some(cli.baud),
    };
    let footprint = build.footprint()?;
    let data = cli.data.load()?;
    if let Some(path) = cli.write_blob {
        let len = shard::write_blob(&data, &path)?;
        println!(
            "wrote {} ({len} bytes: {} training and {} test samples)",
            path.display(),
            data.train.indices().len(),
            data.test.indices().len()
        );
        return Ok(());
    }
    let choice = match cli.port {
        Some(path) => LineChoice::Port {
            path,
            baud: cli.baud,
        },
        None => LineChoice::Pty { link: cli.pty_link },
    };
    let line = Line::open(&choice)?;
    board::say(line.name().display());
    board::say(footprint);
    board::say(format_args!(
        "  {:<16} {:>9} bytes ({} KiB)",
        "budget", build.ram, cli.ram_kb
    ));
    board::say(format_args!(
        "data: {} training and {} test samples (flash, not RAM)",
        data.train.indices().len(),
        data.test.indices().len()
    ));
    let port = line.device.try_clone()?;
    let noise_seed = cli.data.seed ^ cli.data.index() as u64;
    let uart = SimUart::new(port, build.baud, cli.link_ber, noise_seed);
    let report = board::run(&build, &data, uart)?;
    board::say(format_args!("the server said goodbye; {report}"));
    drop(line);
    Ok(())
}
