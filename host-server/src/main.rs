//! host-server: runs a federation over TCP and serial lines, or overlays the histories of several runs.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Parser, Subcommand};
use fedcore::model::ModelSpec;
use fedcore::train::{MomentumState, Rounding, TrainConfig};
use fedhost::link::DEFAULT_ADDRESS;
use flower_bridge::superlink::{self, Fab, SuperLink};
use host_server::config::{Krum, Limits, SerialLine, ServerConfig, ServerTuning, Strategy};
use host_server::federation::{self, FlowerListeners, Progress};
use host_server::history::{History, RoundRecord};
use indicatif::{ProgressBar, ProgressStyle};

/// The federation server: coordinates rounds of federated training and records them.
#[derive(Parser, Debug)]
#[command(version, args_conflicts_with_subcommands = true, after_long_help = PROTECTED)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
}

/// What `--help` says is and is not protected.
const PROTECTED: &str = "\
What is protected:
  --auth-key-file      only holders of a key join (HMAC-SHA256 over a fresh challenge;
                       the key never crosses the wire, a captured answer fails on
                       another connection); with `name: key` lines no one can claim
                       another's name, and a second connection under a name replaces
                       the first only after its own proof.
  --tls-cert/--tls-key TCP runs over TLS (rustls): no one on the path reads the model
                       or the updates, and clients check the server's certificate
                       (--tls-ca). Flower's listeners serve the same certificate.
  --tls-client-ca      mutual TLS: only clients with a certificate from this CA connect;
                       the history records each one's certificate fingerprint.
What is not:
  an admitted participant receives the global model; the server sees every update
  (no secure aggregation); serial lines are not encrypted (a device proves its key,
  then speaks in the clear); Flower's clients are not admitted by key (SuperNodes
  by --flower-node-keys). The server binds 127.0.0.1 unless told otherwise, and warns
  when it listens beyond loopback open to anyone or in plaintext (--insecure silences it).";

#[derive(Subcommand, Debug)]
enum Command {
    /// Overlay the accuracy of several runs on one chart.
    Plot {
        /// History files (history_<rounds>.json).
        #[arg(required = true)]
        histories: Vec<PathBuf>,
        /// Output chart, .png or .svg.
        #[arg(short, long, default_value = "compare.png")]
        output: PathBuf,
    },
    /// Write a saved model's weights (model_final.bin) for Keras, NumPy or
    /// PyTorch: .npz holds Keras' get_weights() as arr_0, arr_1, ... (so
    /// model.set_weights([f[k] for k in f.files]) loads it); .safetensors
    /// holds layer<i>.kernel and layer<i>.bias.
    Export {
        /// The model file host-server wrote.
        model: PathBuf,
        /// The weights file to write (its format by its extension unless --format says).
        #[arg(short, long)]
        output: PathBuf,
        /// The format (default: the output's extension).
        #[arg(long, value_enum)]
        format: Option<host_server::weights::Format>,
    },
    /// Make a federation's own small CA, a server certificate and client
    /// certificates (PEM), for --tls-cert/--tls-key/--tls-client-ca here and
    /// --tls-ca (and, for mutual TLS, --tls-cert/--tls-key) on host-client.
    Certificates {
        /// Folder to write them to (it must not hold a CA yet).
        #[arg(long, default_value = "certificates")]
        out: PathBuf,
        /// A DNS name or IP address clients reach the server by (repeatable).
        #[arg(long = "host", default_values_t = ["127.0.0.1".to_string(), "localhost".to_string()])]
        hosts: Vec<String>,
        /// A client certificate for this name, for mutual TLS (repeatable).
        #[arg(long = "client", value_name = "NAME")]
        clients: Vec<String>,
    },
}

/// `--momentum-state`: fedcore's [`MomentumState`] on the command line.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum MomentumArg {
    /// Momentum restarts from zero every round.
    Round,
    /// Momentum carries over from one round to the next.
    Persist,
}

#[derive(clap::Args, Debug)]
struct RunArgs {
    /// Address to listen on.
    #[arg(long, default_value = DEFAULT_ADDRESS)]
    bind: SocketAddr,
    /// Rounds of training.
    #[arg(long, default_value_t = 40, value_parser = clap::value_parser!(u32).range(1..))]
    rounds: u32,
    /// How updates become the next global model.
    #[arg(long, value_enum, default_value_t = Strategy::Fedavg)]
    strategy: Strategy,
    /// The model: cnn (the reference CNN), an MLP such as mlp:784-128-10, or
    /// layers in one line, e.g. "28x28x1 conv:32x3 relu maxpool:2 flatten dense:10"
    /// (conv:FxK[:sN][:same|:pN][:init], dense:N[:init], maxpool:N[:sN],
    /// avgpool:N[:sN], gap, relu, flatten, dropout:R).
    #[arg(long, default_value = "cnn", value_parser = fedhost::keras::parse_model_arg)]
    model: ModelSpec,
    /// A Keras model to train instead of --model: the JSON that
    /// `model.to_json()` writes for a Sequential model (Keras 2 or 3).
    #[arg(long, value_name = "PATH", conflicts_with = "model")]
    model_file: Option<PathBuf>,
    /// Start from these weights instead of a fresh initialisation: an .npz
    /// (Keras' get_weights() as numpy.savez writes it, or `host-server
    /// export`'s) or a .safetensors file, every tensor's shape checked.
    #[arg(long, value_name = "FILE")]
    initial_model: Option<PathBuf>,
    /// Fraction of connected clients asked to train each round.
    #[arg(long, default_value_t = 1.0)]
    fraction_fit: f64,
    /// Fraction of connected clients asked to evaluate each round.
    #[arg(long, default_value_t = 1.0)]
    fraction_evaluate: f64,
    /// Least clients asked to train; a round with fewer answers leaves the model unchanged.
    #[arg(long, default_value_t = 2)]
    min_fit_clients: usize,
    /// Least clients asked to evaluate.
    #[arg(long, default_value_t = 2)]
    min_evaluate_clients: usize,
    /// Clients that must be connected before a round starts.
    #[arg(long, default_value_t = 2)]
    min_available_clients: usize,
    /// Local epochs per round.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    local_epochs: u32,
    /// Local batch size.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..))]
    batch_size: u32,
    /// Local learning rate.
    #[arg(long, default_value_t = 0.01)]
    lr: f32,
    /// Local momentum.
    #[arg(long, default_value_t = 0.9)]
    momentum: f32,
    /// Whether local momentum carries over between rounds: persist (a client
    /// keeps its velocity while its weights are reset to the global model, as
    /// the reference's Keras clients do) or round (it restarts from zero every
    /// round). Three seeds each, 40 rounds: as accurate either way.
    #[arg(long, value_enum, default_value_t = MomentumArg::Persist)]
    momentum_state: MomentumArg,
    /// FedProx proximal coefficient (with --strategy fedprox).
    #[arg(long, default_value_t = 0.01)]
    proximal_mu: f32,
    /// Server learning rate of fedavgm (default 1.0) or fedadam/fedyogi/fedadagrad (default 0.1).
    #[arg(long)]
    server_lr: Option<f32>,
    /// Server momentum of fedavgm (default 0.9).
    #[arg(long)]
    server_momentum: Option<f32>,
    /// Adaptivity tau of fedadam/fedyogi/fedadagrad (default 1e-9, as Flower; Reddi et al. suggest 1e-3).
    #[arg(long)]
    tau: Option<f32>,
    /// Fraction cut from each end by --strategy trimmed-mean.
    #[arg(long, default_value_t = 0.2)]
    trim_fraction: f32,
    /// Malicious updates --strategy krum tolerates (f; a round needs at least 2f + 3).
    #[arg(long, default_value_t = 1)]
    krum_malicious: usize,
    /// Updates --strategy krum averages: 1 is Krum, more is multi-Krum (at most n - f).
    #[arg(long, default_value_t = 1)]
    krum_keep: usize,
    /// Seconds each fit and each evaluate phase may take; late clients are left out.
    #[arg(long, default_value_t = 120)]
    round_timeout: u64,
    /// Seconds to wait for --min-available-clients to connect before a round; then the run stops with the history so far.
    #[arg(long, default_value_t = 600)]
    wait_timeout: u64,
    /// Participants connected at once; beyond it a hello is refused.
    #[arg(long, default_value_t = Limits::MAX_CLIENTS)]
    max_clients: usize,
    /// Training or test examples a participant may declare when it joins; its results may claim no more.
    #[arg(long, default_value_t = Limits::MAX_EXAMPLES)]
    max_examples: u32,
    /// Seconds an idle participant may go unheard before it is pinged, and then has to answer; one that does not is no longer counted as available (0: never ping).
    #[arg(long, default_value_t = Limits::HEARTBEAT.as_secs_f64(), value_parser = seconds)]
    heartbeat: f64,
    /// Failures of one kind in a row (refused answers, its own errors, missed deadlines) after which a participant is told why and dropped for the rest of the run (0: never).
    #[arg(long, default_value_t = Limits::MAX_STRIKES)]
    max_strikes: u32,
    /// Clip each update to at most this L2 distance from the global model (limits what one poisoned update can do).
    #[arg(long)]
    max_update_norm: Option<f32>,
    /// Also evaluate the global model centrally on the test set in this directory.
    #[arg(long)]
    server_eval: Option<PathBuf>,
    /// Output directory (history, plots, final model, checkpoint).
    #[arg(long, default_value = "results")]
    out: PathBuf,
    /// Continue the run killed in this output directory from its last completed
    /// round (give the flags of the run it continues; model, strategy, rounds and seed must match).
    #[arg(long, value_name = "DIR", conflicts_with = "out")]
    resume: Option<PathBuf>,
    /// Seed of initialisation and client sampling.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Attach a device on this serial line: PATH or PATH@BAUD (repeatable; a
    /// firmware-sim prints its pty path). Devices count as clients.
    #[arg(long = "serial", value_name = "PATH[@BAUD]")]
    serial: Vec<SerialLine>,
    /// Also take Flower clients of the original protocol (flwr 1.0-1.42
    /// `start_numpy_client` / `start_client`, gRPC) on this address; they
    /// train and evaluate beside ours, on the same model (their tensors must
    /// have its shapes), as kind flower-legacy.
    #[arg(long, value_name = "HOST:PORT")]
    flower_bind: Option<SocketAddr>,
    /// Also serve Flower's Fleet API (flwr 1.42, the current protocol) on this
    /// address: unchanged `flower-supernode --insecure --superlink HOST:PORT`s
    /// join, run the ClientApp of --fab, and train beside ours as kind supernode.
    #[arg(long, value_name = "HOST:PORT", requires = "fab")]
    superlink_bind: Option<SocketAddr>,
    /// The Flower App Bundle (`flwr build`) whose ClientApp SuperNodes run.
    #[arg(long, value_name = "FILE", requires = "superlink_bind")]
    fab: Option<PathBuf>,
    /// Admit only SuperNodes whose public keys (PEM, as `flower-supernode
    /// --auth-supernode-private-key` signs with) are in this file.
    #[arg(long, value_name = "FILE", requires = "superlink_bind")]
    flower_node_keys: Option<PathBuf>,
    /// Admit only participants that prove they hold a key of this file
    /// (HMAC-SHA256 over a fresh challenge; the key never crosses the wire):
    /// one hex key for all, or `name: key` lines so that no participant can
    /// claim another's name. Over TCP, without TLS, what follows admission
    /// still travels in the clear.
    #[arg(long, value_name = "FILE")]
    auth_key_file: Option<PathBuf>,
    /// Serve TLS with this certificate chain (PEM, leaf first; `host-server
    /// certificates` makes one): participants then need --tls-ca.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The private key (PEM) of --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Mutual TLS: admit only participants whose client certificate chains
    /// to this CA (PEM); the history records each one's certificate fingerprint.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_client_ca: Option<PathBuf>,
    /// Listening beyond loopback with admission open to anyone (no
    /// --auth-key-file, no mutual TLS) or in plaintext prints a warning at
    /// start: this says you mean it and silences it.
    #[arg(long)]
    insecure: bool,
    /// Write logs to this file instead of standard error.
    #[arg(long)]
    log_file: Option<PathBuf>,
}

impl RunArgs {
    fn config(self) -> anyhow::Result<ServerConfig> {
        let tuning = ServerTuning {
            lr: self.server_lr,
            momentum: self.server_momentum,
            tau: self.tau,
        };
        tuning.validate()?;
        let keys = self
            .auth_key_file
            .as_deref()
            .map(fedhost::keys::Keys::read)
            .transpose()?;
        let tls = match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => Some(fedhost::tls::ServerTls::load(
                cert,
                key,
                self.tls_client_ca.as_deref(),
            )?),
            _ => None,
        };
        let config = ServerConfig {
            bind: self.bind,
            rounds: self.rounds,
            strategy: self.strategy,
            model: match &self.model_file {
                Some(path) => fedhost::keras::load(path)?,
                None => self.model,
            },
            fraction_fit: self.fraction_fit,
            fraction_evaluate: self.fraction_evaluate,
            min_fit_clients: self.min_fit_clients,
            min_evaluate_clients: self.min_evaluate_clients,
            min_available_clients: self.min_available_clients,
            train: TrainConfig {
                epochs: self.local_epochs,
                batch_size: self.batch_size,
                lr: self.lr,
                momentum: self.momentum,
                proximal_mu: self.strategy.local_mu(self.proximal_mu),
                rounding: Rounding::Stochastic,
                momentum_state: match self.momentum_state {
                    MomentumArg::Round => MomentumState::Round,
                    MomentumArg::Persist => MomentumState::Persist,
                },
            },
            trim_fraction: self.trim_fraction,
            krum: Krum {
                malicious: self.krum_malicious,
                keep: self.krum_keep,
            },
            server_opt: self.strategy.server_opt(&tuning),
            round_timeout: Duration::from_secs(self.round_timeout),
            wait_timeout: Duration::from_secs(self.wait_timeout),
            server_eval: self.server_eval,
            resume: self.resume.is_some(),
            out: self.resume.unwrap_or(self.out),
            seed: self.seed,
            initial_model: self.initial_model,
            serial: self.serial,
            flower_bind: self.flower_bind,
            superlink_bind: self.superlink_bind,
            fab: self.fab,
            flower_node_keys: self.flower_node_keys,
            keys,
            tls,
            limits: Limits {
                max_clients: self.max_clients,
                max_examples: self.max_examples,
                max_update_norm: self.max_update_norm,
                heartbeat: (self.heartbeat > 0.0).then(|| Duration::from_secs_f64(self.heartbeat)),
                max_strikes: self.max_strikes,
            },
        };
        config.validate()?;
        Ok(config)
    }
}

/// A number of seconds from 0 to a day, with a fraction.
fn seconds(text: &str) -> Result<f64, String> {
    let secs: f64 = text.parse().map_err(|e| format!("{e}"))?;
    if (0.0..=86_400.0).contains(&secs) {
        Ok(secs)
    } else {
        Err(format!("{text} is not a number of seconds from 0 to 86400"))
    }
}

/// A progress bar over rounds showing the latest accuracy (drawn only on a terminal).
struct Bar(ProgressBar);

impl Progress for Bar {
    fn round(&self, r: &RoundRecord) {
        let acc = r
            .accuracy_distributed
            .map_or("-".into(), |a| format!("{:.2}%", 100.0 * a));
        self.0.set_message(format!(
            "accuracy {acc}, {:.2} s/round, {} failures",
            r.seconds,
            r.failures.len()
        ));
        self.0.inc(1);
    }
}

fn main() -> ExitCode {
    fedhost::malloc::single_arena();
    let cli = Cli::parse();
    let result = match cli.command {
        Some(Command::Plot { histories, output }) => plot(&histories, &output),
        Some(Command::Export {
            model,
            output,
            format,
        }) => export(&model, &output, format),
        Some(Command::Certificates {
            out,
            hosts,
            clients,
        }) => certificates(&out, &hosts, &clients),
        None => run(cli.run),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("host-server: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: RunArgs) -> anyhow::Result<()> {
    let log_file = args.log_file.clone();
    let insecure = args.insecure;
    let config = args.config()?;
    init_logging(log_file.as_deref())?;
    if !insecure {
        for warning in config.exposure() {
            eprintln!("host-server: warning: {warning}; --insecure silences this");
        }
    }
    // One thread serves every connection: a round's CPU work (decoding and
    // folding updates, writing the history and checkpoint between rounds) is a
    // few milliseconds at a time, and server-side evaluation runs on a blocking
    // thread. Each runtime worker was one more malloc arena keeping a round's
    // freed parameter buffers: on the default run the server peaked at 29 MB
    // with them and at 21 MB without, as fast.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let started = Instant::now();
        let listener = tokio::net::TcpListener::bind(config.bind)
            .await
            .with_context(|| format!("cannot listen on {}", config.bind))?;
        // Tests bind port 0 and read the real port from this line.
        println!("listening on {}", listener.local_addr()?);
        if let Some(tls) = &config.tls {
            let mutual = if tls.mutual() {
                ", client certificates required"
            } else {
                ""
            };
            tracing::info!("serving TLS{mutual}");
        }
        let bar = ProgressBar::new(u64::from(config.rounds)).with_style(
            ProgressStyle::with_template("{bar:30} round {pos}/{len} {msg} [{elapsed}]")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        let progress = Bar(bar);
        let flower = flower_listeners(&config).await?;
        let outcome = match config.tls.clone() {
            Some(tls) => {
                let listener = fedhost::tls::Incoming::new(listener, tls)?;
                federation::run(config.clone(), listener, flower, &progress).await?
            }
            None => federation::run(config.clone(), listener, flower, &progress).await?,
        };
        progress.0.finish();
        println!();
        print!(
            "{}",
            host_server::summary::render(&config, &outcome, started.elapsed())
        );
        if !outcome.history.rounds.iter().any(|r| r.aggregated) {
            anyhow::bail!(
                "no round aggregated an update: every participant failed or was refused (the log says why), so the model saved is the untrained one"
            );
        }
        Ok(())
    })
}

/// Binds Flower's listeners the config asks for, and reads the FAB and keys
/// they need; each bound address is printed, as ours is.
async fn flower_listeners(config: &ServerConfig) -> anyhow::Result<FlowerListeners> {
    let mut flower = FlowerListeners::default();
    if let Some(addr) = config.flower_bind {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen for Flower clients on {addr}"))?;
        println!("flower listening on {}", listener.local_addr()?);
        flower.legacy = Some(listener);
    }
    if let (Some(addr), Some(fab)) = (config.superlink_bind, &config.fab) {
        let bytes = std::fs::read(fab).with_context(|| format!("cannot read {}", fab.display()))?;
        let fab_read = Fab::new(bytes).with_context(|| format!("--fab {}", fab.display()))?;
        let keys = match &config.flower_node_keys {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("cannot read {}", path.display()))?;
                let keys = superlink::read_keys(&text)
                    .map_err(|e| anyhow::anyhow!("--flower-node-keys {}: {e}", path.display()))?;
                Some(keys)
            }
            None => None,
        };
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen for Flower SuperNodes on {addr}"))?;
        println!("superlink listening on {}", listener.local_addr()?);
        // Nodes that registered but are not connected count too: twice the
        // participants the federation takes.
        let max_nodes = config.limits.max_clients.saturating_mul(2);
        let (link, nodes) = SuperLink::new(fab_read, keys, max_nodes);
        flower.fleet = Some((listener, link, nodes));
    }
    Ok(flower)
}

fn init_logging(file: Option<&std::path::Path>) -> anyhow::Result<()> {
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match file {
        Some(path) => {
            let f = std::fs::File::create(path)
                .with_context(|| format!("cannot create {}", path.display()))?;
            builder
                .with_ansi(false)
                .with_writer(std::sync::Mutex::new(f))
                .init();
        }
        None => builder.with_writer(std::io::stderr).init(),
    }
    Ok(())
}

fn certificates(out: &std::path::Path, hosts: &[String], clients: &[String]) -> anyhow::Result<()> {
    let issued = fedhost::certificates::issue(out, hosts, clients)?;
    let (cert, key) = &issued.server;
    println!(
        "server:  --tls-cert {} --tls-key {} [--tls-client-ca {}]",
        cert.display(),
        key.display(),
        issued.ca.display()
    );
    println!("clients: --tls-ca {}", issued.ca.display());
    for (name, cert, key) in &issued.clients {
        println!(
            "{name}: --tls-ca {} --tls-cert {} --tls-key {}",
            issued.ca.display(),
            cert.display(),
            key.display()
        );
    }
    println!(
        "valid for {} days for {}; keep the .key files private",
        fedhost::certificates::DAYS,
        hosts.join(", ")
    );
    Ok(())
}

/// `host-server export`: a saved model's weights as .npz or .safetensors.
fn export(
    model: &std::path::Path,
    output: &std::path::Path,
    format: Option<host_server::weights::Format>,
) -> anyhow::Result<()> {
    use host_server::weights::{Format, export};
    let (spec, params) = fedhost::model_file::load(model)?;
    let format = match format {
        Some(format) => format,
        None => Format::of(output)?,
    };
    export(&spec, &params, format, output)?;
    println!("wrote {} (model {spec})", output.display());
    Ok(())
}

fn plot(histories: &[PathBuf], output: &std::path::Path) -> anyhow::Result<()> {
    let runs = histories
        .iter()
        .map(|p| {
            let name = p.file_stem().map_or_else(
                || p.display().to_string(),
                |s| s.to_string_lossy().into_owned(),
            );
            History::read(p).map(|h| (name, h))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    host_server::plot::compare(&runs, output)?;
    println!("wrote {}", output.display());
    Ok(())
}
