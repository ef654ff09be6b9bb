//! host-client: joins a federation over TCP as one or many participants, or
//! scores a saved model.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use fedcore::kernels::host::Host;
use fedcore::model::ModelSpec;
use fedcore::train::{TrainConfig, Trainer};
use fedhost::dataset::DEFAULT_DATA_DIR;
use fedhost::keys::Keys;
use fedhost::link::{DEFAULT_ADDRESS, WireEncoding};
use fedhost::partition::Partition;
use fedhost::share::ShareSpec;
use host_client::attack::Attack;
use host_client::flower::{self, FlowerConfig};
use host_client::local::Local;
use host_client::participant::{self, ParticipantConfig};
use host_client::slots::SlotConfig;
use host_client::supernode::{self, SupernodeConfig};
use tokio::sync::Semaphore;

/// A participant of the federation: trains on its share of a dataset when the server asks.
#[derive(Parser, Debug)]
#[command(version, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    join: JoinArgs,
}

#[derive(clap::Args, Debug)]
#[command(group(clap::ArgGroup::new("flower").args(["flower_server", "superlink"])))]
struct JoinArgs {
    /// Server address (host:port).
    #[arg(long, default_value = DEFAULT_ADDRESS)]
    server: String,
    /// Join a Flower server instead (flwr 1.0-1.42 `start_server`, the
    /// original gRPC protocol), training --model with fedcore.
    #[arg(long, value_name = "HOST:PORT", conflicts_with_all = ["server", "attack", "encoding"])]
    flower_server: Option<SocketAddr>,
    /// Join a Flower 1.42 SuperLink instead, as a SuperNode (the current
    /// protocol, plaintext as `flower-superlink --insecure`), for one run,
    /// training --model with fedcore.
    #[arg(
        long,
        value_name = "HOST:PORT",
        conflicts_with_all = ["server", "attack", "encoding", "flower_server"]
    )]
    superlink: Option<String>,
    /// The model a Flower server trains (it does not say): cnn (the reference
    /// CNN) or an MLP such as mlp:784-128-10. Our server names its own.
    #[arg(long, default_value = "cnn", requires = "flower", value_parser = fedhost::keras::parse_model_arg)]
    model: ModelSpec,
    /// This client's index among --num-clients (the first one when --clients > 1).
    #[arg(long, default_value_t = 0)]
    client_index: usize,
    /// How many clients share the dataset.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    num_clients: u32,
    /// Virtual clients to run in this process (indices client-index .. client-index + clients).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    clients: u32,
    /// How to split the data: iid, dirichlet:<alpha>, shards:<S> (label-sorted shards, S a client), classes:<C> (C classes a client), or seed (each client's own 70/30 split; leaks test samples).
    #[arg(long, default_value = "iid")]
    partition: Partition,
    /// Seed of the partition (the same for every client of a federation).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// The data: a folder of IDX files (gzip or raw, checked against its
    /// SHA256SUMS), a .npz as keras.datasets' mnist.npz (x_train, y_train,
    /// x_test, y_test; uint8 pixels or float features), or a .csv (a header,
    /// numeric features, the label column; a fixed fifth of the rows is the test split).
    #[arg(long = "data", visible_alias = "data-dir", value_name = "PATH", default_value = DEFAULT_DATA_DIR)]
    data_dir: PathBuf,
    /// A CSV's label column (default: the last column).
    #[arg(long)]
    label_column: Option<String>,
    /// Seconds to keep trying to reach the server.
    #[arg(long, default_value_t = 60)]
    connect_timeout: u64,
    /// Poison every update, for robustness experiments: scale:K sends the update
    /// scaled by K (scale:-10 flips and amplifies it), noise:SIGMA a random one.
    #[arg(long, value_name = "scale:K|noise:SIGMA")]
    attack: Option<Attack>,
    /// Parameter encoding on the wire, both ways: int8 sends a quarter of the
    /// bytes (one byte a value and a scale per chunk), at a small cost in accuracy.
    #[arg(long, value_enum, default_value_t = WireEncoding::F32)]
    encoding: WireEncoding,
    /// Name prefix shown in the server's history.
    #[arg(long, default_value = "client")]
    name: String,
    /// Prove to a server that admits by key (its --auth-key-file) that we
    /// hold our key: this file's one key, or its `name: key` line for each
    /// client's name (e.g. client-0).
    #[arg(long, value_name = "FILE")]
    auth_key_file: Option<PathBuf>,
    /// The server serves TLS: trust its certificate if it chains to this CA (PEM).
    #[arg(long, value_name = "FILE", conflicts_with = "flower")]
    tls_ca: Option<PathBuf>,
    /// Mutual TLS: present this client certificate (PEM) to the server.
    #[arg(long, value_name = "FILE", requires_all = ["tls_ca", "tls_key"])]
    tls_cert: Option<PathBuf>,
    /// The private key (PEM) of --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Check the server's certificate against this name instead of the host in --server.
    #[arg(long, value_name = "NAME", requires = "tls_ca")]
    tls_server_name: Option<String>,
    /// Take turns with the other client processes of this machine: at most N
    /// of them train at once (N = its cores keeps them from time-slicing each
    /// other). Every cooperating process names the same --slot-dir. 0: off.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u32).range(0..=1024))]
    train_slots: u32,
    /// Folder of the training slots' lock files (created if missing).
    #[arg(long, default_value_os_t = std::env::temp_dir().join("fedlearn-train-slots"))]
    slot_dir: PathBuf,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Score a saved model (host-server's model_final.bin) on a test set.
    Evaluate {
        /// The model file.
        #[arg(long)]
        model_file: PathBuf,
        /// Directory of the IDX files.
        #[arg(long, default_value = DEFAULT_DATA_DIR)]
        data_dir: PathBuf,
    },
}

fn main() -> ExitCode {
    fedhost::malloc::single_arena();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    // One thread does all the I/O (a participant mostly waits); training runs
    // on blocking threads. Every runtime worker would be one more malloc arena
    // holding freed buffers: measured on this project's 2-core EPYC, five CNN
    // clients and the server peak at 144 MB together instead of 154 (medians of
    // three, side by side), training as fast.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build();
    let result = match runtime {
        Ok(rt) => rt.block_on(async {
            match cli.command {
                Some(Command::Evaluate {
                    model_file,
                    data_dir,
                }) => evaluate(&model_file, &data_dir),
                None => join(cli.join).await,
            }
        }),
        Err(e) => Err(e.into()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("host-client: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn join(args: JoinArgs) -> anyhow::Result<()> {
    let (first, n, total) = (
        args.client_index,
        args.clients as usize,
        args.num_clients as usize,
    );
    if first + n > total {
        anyhow::bail!(
            "--client-index {first} with --clients {n} reaches past --num-clients {total}"
        );
    }
    // Shares are computed from the labels alone; then only this process's samples are loaded.
    let spec = ShareSpec {
        dir: args.data_dir,
        label_column: args.label_column,
        partition: args.partition,
        count: total,
        seed: args.seed,
    };
    let shares = spec.load(first..first + n)?;
    let cores = Arc::new(Semaphore::new(
        std::thread::available_parallelism().map_or(1, |n| n.get()),
    ));
    let slots = (args.train_slots > 0).then(|| SlotConfig {
        dir: args.slot_dir.clone(),
        count: args.train_slots as usize,
    });
    let keys = args
        .auth_key_file
        .as_deref()
        .map(|path| Keys::read(path).map(|keys| (path, keys)))
        .transpose()?;
    let tls = match &args.tls_ca {
        Some(ca) => {
            let identity = args.tls_cert.as_deref().zip(args.tls_key.as_deref());
            let server_name = args.tls_server_name.as_deref();
            Some(fedhost::tls::ClientTls::load(ca, identity, server_name)?)
        }
        None => None,
    };
    let mut tasks = tokio::task::JoinSet::new();
    for (index, share) in (first..).zip(shares) {
        let data = Arc::new(share);
        let name = format!("{}-{index}", args.name);
        let key = match &keys {
            Some((path, keys)) => Some(keys.require(path, &name)?.to_vec()),
            None => None,
        };
        let config = ParticipantConfig {
            server: args.server.clone(),
            name,
            key,
            connect_timeout: Duration::from_secs(args.connect_timeout),
            attack: args.attack,
            encoding: args.encoding.into(),
            tls: tls.clone(),
        };
        let local = Local::new(data, Arc::clone(&cores), slots.as_ref())?;
        if let Some(superlink) = &args.superlink {
            let config = SupernodeConfig {
                superlink: superlink.clone(),
                name: config.name,
                model: args.model.clone(),
                train: TrainConfig::default(),
                seed: args.seed.wrapping_add(index as u64),
                connect_timeout: config.connect_timeout,
            };
            tasks.spawn(supernode::run(config, local));
            continue;
        }
        match args.flower_server {
            Some(server) => {
                let config = FlowerConfig {
                    server,
                    name: config.name,
                    model: args.model.clone(),
                    train: TrainConfig::default(),
                    seed: args.seed.wrapping_add(index as u64),
                    connect_timeout: config.connect_timeout,
                };
                tasks.spawn(flower::run(config, local))
            }
            None => tasks.spawn(participant::run(config, local)),
        };
    }
    while let Some(done) = tasks.join_next().await {
        let reason = done.context("participant task")??;
        tracing::info!("done: {reason}");
    }
    Ok(())
}

fn evaluate(model_file: &std::path::Path, data_dir: &std::path::Path) -> anyhow::Result<()> {
    let (spec, params) = fedhost::model_file::load(model_file)?;
    let test = fedhost::dataset::load_test(data_dir)?;
    let stats = Trainer::<f32, _, Host>::new(&spec, &TrainConfig::evaluation())?
        .evaluate(&params, &test)?;
    println!(
        "model {spec}: accuracy {:.2}% ({} of {}), loss {:.4}",
        100.0 * stats.accuracy(),
        stats.correct,
        stats.examples,
        stats.loss()
    );
    Ok(())
}
