//! The server's settings: what the CLI gives, their validation, and what the history records.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use fedcore::aggregate::ServerOpt;
use fedcore::model::ModelSpec;
use fedcore::train::TrainConfig;
use fedhost::link::DEFAULT_BAUD;
use serde::{Deserialize, Serialize};

/// Why a configuration cannot run.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A fraction flag outside [0, 1].
    #[error("{flag} must be between 0 and 1, got {value}")]
    Fraction {
        /// The flag.
        flag: &'static str,
        /// What it was given.
        value: f64,
    },
    /// The trim fraction outside [0, 0.5).
    #[error("--trim-fraction must be in [0, 0.5), got {0}")]
    TrimFraction(f32),
    /// A server-optimizer override that is negative or not a number.
    #[error("--server-lr, --server-momentum and --tau must be finite numbers >= 0")]
    ServerTuning,
    /// The local training settings.
    #[error("{0}")]
    Train(#[from] fedcore::Error),
    /// A deadline of zero: no participant could ever answer.
    #[error("--round-timeout must be at least 1 second")]
    RoundTimeout,
    /// A minimum that the round's start does not guarantee.
    #[error(
        "{flag} {value} is above --min-available-clients {available}: rounds would start with too few to {what}; raise --min-available-clients"
    )]
    Minimum {
        /// The flag.
        flag: &'static str,
        /// Its value.
        value: usize,
        /// --min-available-clients.
        available: usize,
        /// What the round could not do.
        what: &'static str,
    },
    /// More participants needed than may connect.
    #[error(
        "--min-available-clients {needed} is above --max-clients {max}: the federation could never start"
    )]
    TooFewAllowed {
        /// --min-available-clients.
        needed: usize,
        /// --max-clients.
        max: usize,
    },
    /// A trimmed mean that could not trim.
    #[error(
        "trimmed-mean cuts at least one update from each end, so --min-fit-clients must be at least 3 (got {0})"
    )]
    TrimNeedsThree(usize),
    /// Krum with fewer participants than it needs.
    #[error(
        "krum tolerating {malicious} malicious updates (--krum-malicious) needs --min-fit-clients of at least {needed}, got {got}"
    )]
    KrumNeeds {
        /// 2f + 3.
        needed: usize,
        /// f.
        malicious: usize,
        /// --min-fit-clients.
        got: usize,
    },
    /// Krum keeping none, or more than the honest ones.
    #[error(
        "--krum-keep must be between 1 and --min-fit-clients minus --krum-malicious ({most}), got {keep}"
    )]
    KrumKeep {
        /// --krum-keep.
        keep: usize,
        /// n - f.
        most: usize,
    },
    /// A norm bound that is not a positive number.
    #[error("--max-update-norm must be a positive number, got {0}")]
    UpdateNorm(f32),
    /// Clients could not hold the trainer this configuration asks for.
    #[error(
        "training {model} at batch {batch} needs {bytes} bytes of memory in each client (at most {max}): lower --batch-size"
    )]
    TrainerTooLarge {
        /// The model.
        model: String,
        /// The batch size.
        batch: u32,
        /// Bytes a client's trainer would need.
        bytes: u64,
        /// The bound.
        max: u64,
    },
}

/// How client updates become the next global model.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Strategy {
    /// Example-weighted mean.
    Fedavg,
    /// FedAvg with server momentum.
    Fedavgm,
    /// FedAvg, with clients adding a proximal term (mu) to their loss.
    Fedprox,
    /// Adaptive server optimizer, Adam.
    Fedadam,
    /// Adaptive server optimizer, Yogi.
    Fedyogi,
    /// Adaptive server optimizer, Adagrad.
    Fedadagrad,
    /// Coordinate-wise median (unweighted).
    Median,
    /// Coordinate-wise trimmed mean (unweighted).
    TrimmedMean,
    /// (Multi-)Krum: the average of the updates closest to their neighbours (unweighted).
    Krum,
}

impl Strategy {
    /// The proximal coefficient clients train with: `mu` for FedProx, 0 otherwise.
    pub fn local_mu(&self, mu: f32) -> f32 {
        if *self == Strategy::Fedprox { mu } else { 0.0 }
    }

    /// The server optimizer applied after averaging (FedAvg for the plain
    /// strategies), with Flower's defaults where `tuning` leaves a value unset.
    pub fn server_opt(&self, tuning: &ServerTuning) -> ServerOpt {
        let pick = |v: Option<f32>, default: f32| v.unwrap_or(default);
        let adaptive = |d: ServerOpt| match d {
            ServerOpt::FedAdagrad { lr, beta1, tau } => ServerOpt::FedAdagrad {
                lr: pick(tuning.lr, lr),
                beta1,
                tau: pick(tuning.tau, tau),
            },
            ServerOpt::FedAdam {
                lr,
                beta1,
                beta2,
                tau,
            } => ServerOpt::FedAdam {
                lr: pick(tuning.lr, lr),
                beta1,
                beta2,
                tau: pick(tuning.tau, tau),
            },
            ServerOpt::FedYogi {
                lr,
                beta1,
                beta2,
                tau,
            } => ServerOpt::FedYogi {
                lr: pick(tuning.lr, lr),
                beta1,
                beta2,
                tau: pick(tuning.tau, tau),
            },
            other => other,
        };
        match self {
            Strategy::Fedavgm => match ServerOpt::FEDAVGM {
                ServerOpt::FedAvgM { lr, momentum } => ServerOpt::FedAvgM {
                    lr: pick(tuning.lr, lr),
                    momentum: pick(tuning.momentum, momentum),
                },
                other => other,
            },
            Strategy::Fedadam => adaptive(ServerOpt::FEDADAM),
            Strategy::Fedyogi => adaptive(ServerOpt::FEDYOGI),
            Strategy::Fedadagrad => adaptive(ServerOpt::FEDADAGRAD),
            Strategy::Fedavg
            | Strategy::Fedprox
            | Strategy::Median
            | Strategy::TrimmedMean
            | Strategy::Krum => ServerOpt::FedAvg,
        }
    }
}

/// Overrides of the server optimizer's hyperparameters (None: the default).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ServerTuning {
    /// Server learning rate (FedAvgM: 1.0; adaptive: 0.1).
    pub lr: Option<f32>,
    /// Server momentum of FedAvgM (0.9).
    pub momentum: Option<f32>,
    /// Adaptivity of FedAdagrad/FedAdam/FedYogi (1e-9).
    pub tau: Option<f32>,
}

impl ServerTuning {
    /// Checks every override given is a finite number >= 0.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |v: f32| !(v >= 0.0 && v.is_finite());
        if [self.lr, self.momentum, self.tau]
            .into_iter()
            .flatten()
            .any(bad)
        {
            return Err(ConfigError::ServerTuning);
        }
        Ok(())
    }
}

/// Everything a run needs.
#[derive(Debug, Clone, Serialize)]
pub struct ServerConfig {
    /// Address to listen on.
    pub bind: SocketAddr,
    /// Rounds to run.
    pub rounds: u32,
    /// Aggregation strategy.
    pub strategy: Strategy,
    /// Model, as a spec string.
    #[serde(serialize_with = "as_display")]
    pub model: ModelSpec,
    /// Fraction of connected clients asked to train each round.
    pub fraction_fit: f64,
    /// Fraction of connected clients asked to evaluate each round.
    pub fraction_evaluate: f64,
    /// Least clients asked to train; a round with fewer answers fails.
    pub min_fit_clients: usize,
    /// Least clients asked to evaluate.
    pub min_evaluate_clients: usize,
    /// Clients that must be connected before a round starts.
    pub min_available_clients: usize,
    /// Local training settings sent with every fit.
    pub train: TrainConfig,
    /// Trim fraction of the trimmed mean.
    pub trim_fraction: f32,
    /// Krum's settings.
    pub krum: Krum,
    /// The server optimizer in use, resolved from the strategy and its overrides.
    pub server_opt: ServerOpt,
    /// Deadline of each fit and evaluate phase.
    #[serde(serialize_with = "as_seconds")]
    pub round_timeout: Duration,
    /// Longest wait for the participants a round needs to connect.
    #[serde(serialize_with = "as_seconds")]
    pub wait_timeout: Duration,
    /// Directory of a test set for centralised evaluation.
    pub server_eval: Option<PathBuf>,
    /// Output directory.
    pub out: PathBuf,
    /// Seed of client sampling and initialisation.
    pub seed: u64,
    /// Weights the run starts from instead of an initialisation (.npz or .safetensors).
    pub initial_model: Option<PathBuf>,
    /// Serial lines with a device on them.
    pub serial: Vec<SerialLine>,
    /// Address Flower clients of the original protocol join on, if any.
    pub flower_bind: Option<SocketAddr>,
    /// Address of the Fleet API for Flower SuperNodes, if any.
    pub superlink_bind: Option<SocketAddr>,
    /// The FAB whose ClientApp the SuperNodes run.
    pub fab: Option<PathBuf>,
    /// Public keys (PEM) of the only SuperNodes admitted, if any.
    pub flower_node_keys: Option<PathBuf>,
    /// The keys participants must prove they hold, if admission is by key
    /// (the history records only how: "shared key" or "a key per name").
    #[serde(rename = "admission", serialize_with = "admission")]
    pub keys: Option<fedhost::keys::Keys>,
    /// TLS on our TCP listener (`--tls-cert`, `--tls-key`, `--tls-client-ca`),
    /// if any (the history records "plaintext", "tls" or "mutual tls").
    #[serde(rename = "transport", serialize_with = "transport")]
    pub tls: Option<fedhost::tls::ServerTls>,
    /// What participants may claim, and how many may join.
    pub limits: Limits,
    /// Continue the run whose checkpoint is in `out` instead of starting anew.
    pub resume: bool,
}

/// Krum's settings: how many updates may be malicious, how many to average.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Krum {
    /// Malicious updates to tolerate (`f`): a round needs at least `2f + 3`.
    pub malicious: usize,
    /// Updates averaged (1: Krum; more: multi-Krum), at most `n - f`.
    pub keep: usize,
}

impl Default for Krum {
    fn default() -> Self {
        Krum {
            malicious: 1,
            keep: 1,
        }
    }
}

/// Bounds on participants: how many, what they may declare, how far an update may move.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Limits {
    /// Participants connected at once; beyond it a hello is refused.
    pub max_clients: usize,
    /// Training or test examples a participant may declare in its hello.
    pub max_examples: u32,
    /// Longest L2 distance from the global model an update may have; longer ones are clipped to it.
    pub max_update_norm: Option<f32>,
    /// How long an idle participant may go unheard before it is pinged, and
    /// then how long it has to answer (`None`: never pinged).
    pub heartbeat: Option<Duration>,
    /// Failures of one kind in a row that drop a participant for the rest of the run (0: never).
    pub max_strikes: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_clients: Limits::MAX_CLIENTS,
            max_examples: Limits::MAX_EXAMPLES,
            max_update_norm: None,
            heartbeat: Some(Limits::HEARTBEAT),
            max_strikes: Limits::MAX_STRIKES,
        }
    }
}

impl Limits {
    /// Default `--max-clients`.
    pub const MAX_CLIENTS: usize = 1024;
    /// Default `--max-examples`: more than any dataset the hosts load.
    pub const MAX_EXAMPLES: u32 = 10_000_000;
    /// Default `--heartbeat`.
    pub const HEARTBEAT: Duration = Duration::from_secs(10);
    /// Default `--max-strikes`.
    pub const MAX_STRIKES: u32 = 3;
}

/// A serial line to attach a device on: `PATH` or `PATH@BAUD`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SerialLine {
    /// The port (a tty, a pty's slave side, or a stable link to one).
    pub path: PathBuf,
    /// Its speed.
    pub baud: u32,
}

impl FromStr for SerialLine {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (path, baud) = match s.rsplit_once('@') {
            Some((path, baud)) => {
                let baud = baud.parse::<u32>().ok().filter(|b| *b > 0).ok_or_else(|| {
                    format!("bad baud rate {baud:?} in {s:?}: expected PATH or PATH@BAUD, e.g. /dev/ttyACM0@115200")
                })?;
                (path, baud)
            }
            None => (s, DEFAULT_BAUD),
        };
        if path.is_empty() {
            return Err(format!("no path in {s:?}: expected PATH or PATH@BAUD"));
        }
        Ok(SerialLine {
            path: PathBuf::from(path),
            baud,
        })
    }
}

impl fmt::Display for SerialLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.path.display(), self.baud)
    }
}

fn as_display<S: serde::Serializer>(v: &ModelSpec, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(v)
}

fn admission<S: serde::Serializer>(
    keys: &Option<fedhost::keys::Keys>,
    s: S,
) -> Result<S::Ok, S::Error> {
    s.serialize_str(match keys {
        None => "anyone",
        Some(fedhost::keys::Keys::Shared(_)) => "shared key",
        Some(fedhost::keys::Keys::PerName(_)) => "a key per name",
    })
}

fn transport<S: serde::Serializer>(
    tls: &Option<fedhost::tls::ServerTls>,
    s: S,
) -> Result<S::Ok, S::Error> {
    s.serialize_str(match tls {
        None => "plaintext",
        Some(tls) if tls.mutual() => "mutual tls",
        Some(_) => "tls",
    })
}

fn as_seconds<S: serde::Serializer>(v: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(v.as_secs_f64())
}

impl ServerConfig {
    /// Most memory a client's trainer may need for the configured model and batch.
    pub const MAX_TRAINER_BYTES: u64 = 4 << 30;

    /// What a user should know about who can join and who can read: one
    /// warning per listener that other machines can reach and that admits
    /// anyone (no key, no mutual TLS) or carries the model in the clear.
    pub fn exposure(&self) -> Vec<String> {
        let mut warnings = Vec::new();
        let mutual = self.tls.as_ref().is_some_and(|tls| tls.mutual());
        if !self.bind.ip().is_loopback() {
            if self.keys.is_none() && !mutual {
                warnings.push(format!(
                    "{} is reachable from other machines and admits anyone: whoever connects \
                     can join and receive the global model (give --auth-key-file, or \
                     --tls-client-ca for mutual TLS)",
                    self.bind
                ));
            }
            if self.tls.is_none() {
                warnings.push(format!(
                    "{} speaks plaintext: anyone on the path can read the global model and \
                     every update (give --tls-cert and --tls-key)",
                    self.bind
                ));
            }
        }
        let flower = [
            ("--flower-bind", self.flower_bind),
            ("--superlink-bind", self.superlink_bind),
        ];
        for (flag, addr) in flower {
            if let Some(addr) = addr.filter(|a| !a.ip().is_loopback()) {
                let admitted = flag == "--superlink-bind" && self.flower_node_keys.is_some();
                if !admitted {
                    warnings.push(format!(
                        "{flag} {addr} is reachable from other machines and admits any Flower \
                         client (--auth-key-file does not cover Flower's protocols{})",
                        if flag == "--superlink-bind" {
                            "; --flower-node-keys does"
                        } else {
                            ""
                        }
                    ));
                }
            }
        }
        warnings
    }

    /// Checks the settings that the CLI's types alone do not bound, and refuses
    /// those that could only produce an untrained model.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.train.validate()?;
        let bytes =
            fedcore::train::memory::<f32, fedcore::kernels::host::Host>(&self.model, &self.train)
                .total() as u64;
        if bytes > Self::MAX_TRAINER_BYTES {
            return Err(ConfigError::TrainerTooLarge {
                model: self.model.to_string(),
                batch: self.train.batch_size,
                bytes,
                max: Self::MAX_TRAINER_BYTES,
            });
        }
        if self.round_timeout.is_zero() {
            return Err(ConfigError::RoundTimeout);
        }
        let available = self.min_available_clients;
        for (flag, value, what) in [
            ("--min-fit-clients", self.min_fit_clients, "aggregate"),
            (
                "--min-evaluate-clients",
                self.min_evaluate_clients,
                "evaluate",
            ),
        ] {
            if value > available {
                return Err(ConfigError::Minimum {
                    flag,
                    value,
                    available,
                    what,
                });
            }
        }
        if available > self.limits.max_clients {
            return Err(ConfigError::TooFewAllowed {
                needed: available,
                max: self.limits.max_clients,
            });
        }
        if self.strategy == Strategy::TrimmedMean
            && self.trim_fraction > 0.0
            && self.min_fit_clients < 3
        {
            return Err(ConfigError::TrimNeedsThree(self.min_fit_clients));
        }
        if self.strategy == Strategy::Krum {
            let Krum { malicious, keep } = self.krum;
            if self.min_fit_clients < 2 * malicious + 3 {
                return Err(ConfigError::KrumNeeds {
                    needed: 2 * malicious + 3,
                    malicious,
                    got: self.min_fit_clients,
                });
            }
            if keep == 0 || keep > self.min_fit_clients - malicious {
                return Err(ConfigError::KrumKeep {
                    keep,
                    most: self.min_fit_clients - malicious,
                });
            }
        }
        if let Some(norm) = self.limits.max_update_norm
            && !(norm > 0.0 && norm.is_finite())
        {
            return Err(ConfigError::UpdateNorm(norm));
        }
        for (flag, value) in [
            ("--fraction-fit", self.fraction_fit),
            ("--fraction-evaluate", self.fraction_evaluate),
        ] {
            if !(0.0..=1.0).contains(&value) {
                return Err(ConfigError::Fraction { flag, value });
            }
        }
        if !(0.0..0.5).contains(&self.trim_fraction) {
            return Err(ConfigError::TrimFraction(self.trim_fraction));
        }
        Ok(())
    }

    /// How many of `available` clients to sample, given a fraction and a minimum (as Flower does).
    pub fn sample_size(available: usize, fraction: f64, min: usize) -> usize {
        ((available as f64 * fraction) as usize)
            .max(min)
            .min(available)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::path::Path;

    use super::*;

    /// A valid config of a short fedavgm run writing to `dir`, resuming.
    pub(crate) fn example(dir: &Path) -> ServerConfig {
        ServerConfig {
            bind: "127.0.0.1:0".parse().unwrap(),
            rounds: 5,
            strategy: Strategy::Fedavgm,
            model: "mlp:4-3-2".parse().unwrap(),
            fraction_fit: 1.0,
            fraction_evaluate: 1.0,
            min_fit_clients: 2,
            min_evaluate_clients: 2,
            min_available_clients: 2,
            train: TrainConfig::default(),
            trim_fraction: 0.2,
            krum: Krum::default(),
            server_opt: ServerOpt::FEDAVGM,
            round_timeout: Duration::from_secs(1),
            wait_timeout: Duration::from_secs(1),
            server_eval: None,
            out: dir.to_path_buf(),
            seed: 3,
            initial_model: None,
            serial: Vec::new(),
            flower_bind: None,
            superlink_bind: None,
            fab: None,
            flower_node_keys: None,
            keys: None,
            tls: None,
            limits: Limits::default(),
            resume: true,
        }
    }

    #[test]
    fn listening_beyond_loopback_warns_unless_keys_or_mutual_tls_admit_and_tls_hides() {
        let dir = Path::new("unused");
        let issued = tempfile::tempdir().unwrap();
        let certs =
            fedhost::certificates::issue(issued.path(), &["127.0.0.1".into()], &[]).unwrap();
        let (cert, key) = &certs.server;
        let tls = fedhost::tls::ServerTls::load(cert, key, None).unwrap();
        let mutual = fedhost::tls::ServerTls::load(cert, key, Some(&certs.ca)).unwrap();
        let keys = fedhost::keys::Keys::Shared(vec![7; 32]);
        let warnings = |bind: &str,
                        keys: Option<&fedhost::keys::Keys>,
                        tls: Option<&fedhost::tls::ServerTls>| {
            let config = ServerConfig {
                bind: bind.parse().unwrap(),
                keys: keys.cloned(),
                tls: tls.cloned(),
                ..example(dir)
            };
            config.exposure()
        };
        assert!(warnings("127.0.0.1:8000", None, None).is_empty());
        let open = warnings("0.0.0.0:8000", None, None);
        assert_eq!(open.len(), 2, "{open:?}");
        assert!(open[0].contains("admits anyone") && open[1].contains("plaintext"));
        let keyed = warnings("0.0.0.0:8000", Some(&keys), None);
        assert!(
            keyed.len() == 1 && keyed[0].contains("plaintext"),
            "{keyed:?}"
        );
        let tls_only = warnings("0.0.0.0:8000", None, Some(&tls));
        assert!(
            tls_only.len() == 1 && tls_only[0].contains("admits anyone"),
            "{tls_only:?}"
        );
        assert!(warnings("0.0.0.0:8000", None, Some(&mutual)).is_empty());
        assert!(warnings("0.0.0.0:8000", Some(&keys), Some(&tls)).is_empty());
        let flower = ServerConfig {
            flower_bind: Some("0.0.0.0:8080".parse().unwrap()),
            ..example(dir)
        };
        let said = flower.exposure();
        assert!(
            said.len() == 1 && said[0].starts_with("--flower-bind"),
            "{said:?}"
        );
    }

    #[test]
    fn serial_lines_parse_with_or_without_a_baud_rate() {
        let line: SerialLine = "/dev/pts/7".parse().unwrap();
        assert_eq!(line.path, PathBuf::from("/dev/pts/7"));
        assert_eq!(line.baud, DEFAULT_BAUD);
        let line: SerialLine = "/dev/ttyACM0@1000000".parse().unwrap();
        assert_eq!(
            (line.path.to_str(), line.baud),
            (Some("/dev/ttyACM0"), 1_000_000)
        );
        assert!("/dev/ttyACM0@fast".parse::<SerialLine>().is_err());
        assert!("/dev/ttyACM0@0".parse::<SerialLine>().is_err());
        assert!("@9600".parse::<SerialLine>().is_err());
    }

    #[test]
    fn strategies_parse_and_sampling_follows_flower() {
        use clap::ValueEnum;
        assert_eq!(
            Strategy::from_str("trimmed-mean", false),
            Ok(Strategy::TrimmedMean)
        );
        assert!(Strategy::from_str("fedsgd", false).is_err());
        assert_eq!(Strategy::Fedprox.local_mu(0.5), 0.5);
        assert_eq!(Strategy::Fedavg.local_mu(0.5), 0.0);
        assert_eq!(ServerConfig::sample_size(10, 0.5, 2), 5);
        assert_eq!(ServerConfig::sample_size(10, 0.1, 2), 2);
        assert_eq!(ServerConfig::sample_size(3, 1.0, 5), 3);
    }

    #[test]
    fn server_optimizer_defaults_and_overrides() {
        let none = ServerTuning::default();
        assert_eq!(Strategy::Fedadam.server_opt(&none), ServerOpt::FEDADAM);
        assert_eq!(Strategy::Fedprox.server_opt(&none), ServerOpt::FedAvg);
        let tuned = ServerTuning {
            lr: Some(0.01),
            momentum: Some(0.5),
            tau: Some(1e-3),
        };
        assert_eq!(
            Strategy::Fedadam.server_opt(&tuned),
            ServerOpt::FedAdam {
                lr: 0.01,
                beta1: 0.9,
                beta2: 0.99,
                tau: 1e-3
            }
        );
        assert_eq!(
            Strategy::Fedavgm.server_opt(&tuned),
            ServerOpt::FedAvgM {
                lr: 0.01,
                momentum: 0.5
            }
        );
        assert_eq!(Strategy::Median.server_opt(&tuned), ServerOpt::FedAvg);
        assert!(tuned.validate().is_ok());
        let negative = ServerTuning {
            lr: Some(-1.0),
            ..ServerTuning::default()
        };
        assert!(negative.validate().is_err());
        let nan = ServerTuning {
            tau: Some(f32::NAN),
            ..ServerTuning::default()
        };
        assert!(nan.validate().is_err());
    }
}
