//! The round loop: sample, send, collect under a deadline, aggregate, evaluate, record.
//!
//! Participants come from a [`Listener`] (TCP in the binary, in-memory pipes
//! in tests), from the serial lines named in the config (one task each, for
//! the whole run) and from Flower's stream ([`crate::flower`]); the loop
//! treats them alike. What each round did is written
//! down by [`crate::round`].

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use fedcore::kernels::host::Host;
use fedcore::model::{Plan, init_params};
use fedcore::rng::Rng;
use fedcore::train::{Stats, TrainConfig, Trainer};
use flower_bridge::superlink::{NodeHandle, SuperLink};
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio::task::JoinSet;

use crate::aggregation::Aggregator;
use crate::checkpoint::Checkpoint;
use crate::config::ServerConfig;
use crate::history::{History, Phase, RoundRecord};
use crate::job::{EvaluateDone, FitJob, Job, JobError, Reply};
use crate::participant::{self, Handle, Origin, Registry, Shared, UPLOAD_SLOTS};
use crate::round::{self, RoundBook};
use crate::strikes::Strikes;

/// How long the server waits, at the end, for every goodbye to be written.
const GOODBYE_WAIT: Duration = Duration::from_secs(5);

/// What a finished run produced.
#[derive(Debug)]
pub struct Outcome {
    /// The history.
    pub history: History,
    /// Files written.
    pub files: Vec<std::path::PathBuf>,
}

/// Reports progress after each round.
pub trait Progress {
    /// A round finished.
    fn round(&self, record: &RoundRecord);
}

/// Flower's listeners, when the run takes Flower participants.
#[derive(Default)]
pub struct FlowerListeners {
    /// The original protocol's gRPC stream (`--flower-bind`).
    pub legacy: Option<TcpListener>,
    /// The Fleet API for SuperNodes (`--superlink-bind`), its SuperLink and the nodes it activates.
    pub fleet: Option<(TcpListener, SuperLink, mpsc::Receiver<NodeHandle>)>,
}

/// A source of participant connections.
pub trait Listener: Send + 'static {
    /// One connection's byte stream.
    type Io: AsyncRead + AsyncWrite + Unpin + Send + 'static;

    /// The next connection and where it comes from; `None` when no more will come.
    fn accept(&mut self) -> impl Future<Output = Option<(Self::Io, Origin)>> + Send;
}

impl Listener for TcpListener {
    type Io = tokio::net::TcpStream;

    async fn accept(&mut self) -> Option<(Self::Io, Origin)> {
        let (socket, peer) = fedhost::link::accept(self).await;
        Some((socket, Origin::address(peer.to_string())))
    }
}

/// TLS connections (`--tls-cert`), handshakes done; with mutual TLS each
/// carries the fingerprint of the client certificate it presented.
impl Listener for fedhost::tls::Incoming {
    type Io = fedhost::tls::ServerStream;

    async fn accept(&mut self) -> Option<(Self::Io, Origin)> {
        let (stream, peer) = self.next().await?;
        let origin = Origin {
            address: peer.to_string(),
            certificate: fedhost::tls::peer_fingerprint(&stream),
        };
        Some((stream, origin))
    }
}

/// In-memory connections, for tests: each stream sent is a participant.
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Listener for mpsc::Receiver<T> {
    type Io = T;

    async fn accept(&mut self) -> Option<(T, Origin)> {
        self.recv()
            .await
            .map(|io| (io, Origin::address("in-memory".to_string())))
    }
}

/// Runs the federation on `listener` until the last round; then says goodbye,
/// saves the final model, and returns the history.
pub async fn run(
    config: ServerConfig,
    listener: impl Listener,
    flower: FlowerListeners,
    progress: &dyn Progress,
) -> anyhow::Result<Outcome> {
    std::fs::create_dir_all(&config.out)
        .with_context(|| format!("cannot create {}", config.out.display()))?;
    let shared = Arc::new(Shared {
        registry: Registry::default(),
        model: config.model.clone(),
        uploads: Arc::new(Semaphore::new(UPLOAD_SLOTS)),
        limits: config.limits,
        strikes: Strikes::new(config.limits.max_strikes, 4 * config.limits.max_clients),
        keys: config.keys.clone(),
        tls: config.tls.clone(),
    });
    let accept = tokio::spawn(accept_loop(listener, Arc::clone(&shared)));
    let legacy = flower
        .legacy
        .map(|l| tokio::spawn(crate::flower::serve(l, Arc::clone(&shared))));
    let fleet = flower.fleet.map(|(listener, superlink, nodes)| {
        tokio::spawn(crate::supernode::serve(
            listener,
            superlink,
            nodes,
            Arc::clone(&shared),
        ))
    });
    let lines: Vec<_> = config
        .serial
        .iter()
        .map(|line| {
            tokio::spawn(participant::attach_serial(
                line.clone(),
                Arc::clone(&shared),
            ))
        })
        .collect();
    let result = rounds(&config, &shared, progress).await;
    accept.abort();
    for handle in shared.registry.snapshot() {
        handle.send(Job::Bye("the federation is done".into())).await;
    }
    // Each connection task leaves the registry once its goodbye is written: wait for
    // that, so clients hear it before the process exits, instead of a dropped link.
    shared.registry.wait_empty(GOODBYE_WAIT).await;
    for line in lines.into_iter().chain(legacy).chain(fleet) {
        line.abort();
    }
    result
}

async fn accept_loop(mut listener: impl Listener, shared: Arc<Shared>) {
    while let Some((io, origin)) = listener.accept().await {
        tracing::debug!(peer = %origin.address, "connection");
        tokio::spawn(participant::serve(io, origin, Arc::clone(&shared)));
    }
}

async fn rounds(
    config: &ServerConfig,
    shared: &Shared,
    progress: &dyn Progress,
) -> anyhow::Result<Outcome> {
    let mut run = Run::new(config, shared, progress)?;
    let first = run.history.rounds.len() as u32 + 1;
    if config.resume {
        tracing::info!(round = first, "resuming from the checkpoint");
    }
    tracing::info!(n = config.min_available_clients, "waiting for participants");
    for round in first..=config.rounds {
        run.round(round).await?;
    }
    run.final_evaluation().await?;
    run.finish()
}

/// A run between rounds: the global model, the aggregator, the history so far.
struct Run<'a> {
    config: &'a ServerConfig,
    shared: &'a Shared,
    progress: &'a dyn Progress,
    global: Vec<f32>,
    aggregator: Aggregator,
    server_test: Option<Arc<fedhost::dataset::ImageData>>,
    history: History,
    json: PathBuf,
    csv: PathBuf,
    /// Who evaluates the last aggregate, during the next round (or at the end);
    /// `None` after a resume, when they are chosen among those who reconnect.
    evaluators: Option<Vec<Handle>>,
}

impl<'a> Run<'a> {
    fn new(
        config: &'a ServerConfig,
        shared: &'a Shared,
        progress: &'a dyn Progress,
    ) -> anyhow::Result<Self> {
        let global = match &config.initial_model {
            Some(path) => crate::weights::import(&config.model, path)?,
            None => {
                let plan = Plan::new(&config.model);
                let mut global = vec![0.0f32; plan.param_count()];
                init_params(&plan, &mut global, &mut Rng::new(config.seed));
                global
            }
        };
        let aggregator = Aggregator::new(
            config.strategy,
            config.server_opt,
            global.len(),
            config.trim_fraction,
            config.krum,
        )?;
        let server_test = match &config.server_eval {
            Some(dir) => Some(Arc::new(fedhost::dataset::load_test(dir)?)),
            None => None,
        };
        let (json, csv) = History::paths(&config.out, config.rounds);
        let mut run = Run {
            config,
            shared,
            progress,
            global,
            aggregator,
            server_test,
            history: History {
                config: serde_json::to_value(config)?,
                rounds: Vec::new(),
            },
            json,
            csv,
            evaluators: Some(Vec::new()),
        };
        if config.resume {
            run.resume()?;
        }
        Ok(run)
    }

    /// Continues from the checkpoint in the output directory: its model and
    /// optimizer state, and the history up to its round.
    fn resume(&mut self) -> anyhow::Result<()> {
        let checkpoint = Checkpoint::load(&self.config.out, self.config)?;
        let mut history = History::read(&self.json)?;
        let done = checkpoint.round as usize;
        if history.rounds.len() < done {
            anyhow::bail!(
                "{} has {} rounds but the checkpoint is of round {done}",
                self.json.display(),
                history.rounds.len()
            );
        }
        history.rounds.truncate(done);
        self.history = history;
        self.global = checkpoint.global;
        self.aggregator
            .restore_optimizer(&checkpoint.optimizer_state)?;
        self.evaluators = if done > 0 { None } else { Some(Vec::new()) };
        Ok(())
    }

    /// Participants a round waits for: `--min-available-clients`, less those
    /// the server dropped (they cannot come back), but never fewer than a
    /// round needs to train.
    fn needed(&self) -> usize {
        let config = self.config;
        let dropped = self.shared.strikes.dropped_count();
        let needed = config
            .min_available_clients
            .saturating_sub(dropped)
            .max(config.min_fit_clients)
            .max(1);
        if needed < config.min_available_clients {
            tracing::info!(
                needed,
                dropped,
                "waiting for fewer participants: some were dropped"
            );
        }
        needed
    }

    /// Runs round `round`: the fits (carrying the evaluations of the previous
    /// aggregate), the aggregation, the optional server evaluation, the record.
    async fn round(&mut self, round: u32) -> anyhow::Result<()> {
        let config = self.config;
        let needed = self.needed();
        let registry = &self.shared.registry;
        if tokio::time::timeout(config.wait_timeout, registry.wait_for(needed))
            .await
            .is_err()
        {
            anyhow::bail!(
                "only {} of the {needed} participants round {round} needs connected within {:?} \
                 (--wait-timeout); the history of the rounds before it is in {}",
                registry.len(),
                config.wait_timeout,
                self.json.display()
            );
        }
        let mut book = RoundBook::start(round);
        let mut rng = round_rng(config.seed, round);
        let chosen = self.sample(&mut rng, config.fraction_fit, config.min_fit_clients);
        // The participants' jobs share the model while they run, and it comes
        // back once the fits are in: no copy of it (2 MB for the CNN) at the
        // round's peak, when the updates are arriving.
        let snapshot = Arc::new(std::mem::take(&mut self.global));
        let deadline = tokio::time::Instant::now() + config.round_timeout;
        let evaluators = self.take_evaluators(&mut rng);
        let fused = |h: &Handle| evaluators.iter().any(|e| e.who.id == h.who.id);
        let mut fits = dispatch(&chosen, |h, reply| Job::Fit {
            job: FitJob {
                round,
                config: config.train,
                seed: config.seed ^ (u64::from(round) << 32) ^ name_seed(&h.who.name),
                evaluate_first: fused(h),
            },
            global: Arc::clone(&snapshot),
            deadline,
            reply,
        })
        .await;
        // Evaluators of the previous aggregate that do not train this round evaluate on their own.
        let alone: Vec<Handle> = evaluators
            .iter()
            .filter(|e| !chosen.iter().any(|h| h.who.id == e.who.id))
            .cloned()
            .collect();
        let mut evals = dispatch(&alone, |_, reply| Job::Evaluate {
            round: round - 1,
            global: Arc::clone(&snapshot),
            deadline,
            reply,
        })
        .await;
        let mut previous = self.history.rounds.last_mut();
        self.aggregator.begin();
        // Fold each update as it arrives: that frees its upload slot for the next.
        while let Some(joined) = fits.join_next().await {
            let Ok((h, result)) = joined else { continue };
            match result {
                Ok(mut done) => {
                    let a = Instant::now();
                    let examples = u64::from(done.res.examples);
                    let added = self
                        .aggregator
                        .add(std::mem::take(&mut done.params), examples);
                    book.aggregating(a.elapsed().as_secs_f64());
                    match added {
                        Ok(()) => book.trained(&h.who, &done, previous.as_deref_mut()),
                        Err(e) => {
                            let prev = previous.as_deref_mut().filter(|_| fused(&h));
                            book.fit_failed(&h.who, &JobError::Transfer(e), prev);
                        }
                    }
                }
                Err(error) => {
                    let prev = previous.as_deref_mut().filter(|_| fused(&h));
                    book.fit_failed(&h.who, &error, prev);
                }
            }
        }
        book.fits_collected();
        if let Some(prev) = previous {
            collect_evaluations(prev, &mut evals).await;
            self.progress.round(prev);
        }
        drop((fits, evals));
        // Every job has let its share go by now; should one not have, a copy.
        self.global = Arc::try_unwrap(snapshot).unwrap_or_else(|shared| shared.as_ref().clone());
        let a = Instant::now();
        let trained = book.trained_count();
        let aggregated = if trained < config.min_fit_clients.max(1) {
            tracing::warn!(
                round,
                trained,
                min = config.min_fit_clients,
                "too few participants trained; the model is unchanged"
            );
            false
        } else {
            // Validated updates cannot make this fail, but nothing a peer sent
            // may end the run: a round that cannot aggregate leaves the model as it was.
            match self.aggregator.finish(&mut self.global) {
                Ok(()) => true,
                Err(e) => {
                    tracing::warn!(
                        round,
                        "the round did not aggregate: {e}; the model is unchanged"
                    );
                    false
                }
            }
        };
        book.aggregating(a.elapsed().as_secs_f64());
        if let Some(test) = &self.server_test {
            let t = Instant::now();
            let stats = evaluate_on_server(&config.model, &self.global, test).await?;
            book.server_evaluated(stats.loss(), stats.accuracy(), t.elapsed().as_secs_f64());
        }
        self.history.rounds.push(book.finish(aggregated));
        self.write()?;
        Checkpoint::new(
            config,
            round,
            &self.global,
            self.aggregator.optimizer_state(),
        )
        .save(&config.out)
        .with_context(|| format!("cannot write the checkpoint in {}", config.out.display()))?;
        self.evaluators = Some(self.sample(
            &mut rng,
            config.fraction_evaluate,
            config.min_evaluate_clients,
        ));
        Ok(())
    }

    /// The last aggregate has no next round to travel with: it is evaluated on its own.
    async fn final_evaluation(&mut self) -> anyhow::Result<()> {
        let Some(round) = self.history.rounds.last().map(|r| r.round) else {
            return Ok(());
        };
        let config = self.config;
        let t = Instant::now();
        if self.evaluators.is_none() {
            // Resumed after the last round: wait (boundedly) for participants to reconnect.
            let registry = &self.shared.registry;
            let needed = self.needed();
            let _ = tokio::time::timeout(config.wait_timeout, registry.wait_for(needed)).await;
        }
        let mut rng = round_rng(config.seed, round);
        let evaluators = self.take_evaluators(&mut rng);
        let snapshot = Arc::new(self.global.clone());
        let deadline = tokio::time::Instant::now() + config.round_timeout;
        let mut evals = dispatch(&evaluators, |_, reply| Job::Evaluate {
            round,
            global: Arc::clone(&snapshot),
            deadline,
            reply,
        })
        .await;
        let last = self
            .history
            .rounds
            .last_mut()
            .ok_or_else(|| anyhow::anyhow!("no round to evaluate"))?;
        collect_evaluations(last, &mut evals).await;
        let seconds = t.elapsed().as_secs_f64();
        last.phase_seconds.evaluate = Some(seconds);
        last.seconds += seconds;
        self.progress.round(last);
        self.write()
    }

    /// Saves the final model and the charts.
    fn finish(self) -> anyhow::Result<Outcome> {
        let model_path = self.config.out.join("model_final.bin");
        fedhost::model_file::save(&model_path, &self.config.model, &self.global)?;
        let mut files = vec![self.json, self.csv, model_path];
        files.extend(crate::plot::plot_run(&self.history, &self.config.out)?);
        Ok(Outcome {
            history: self.history,
            files,
        })
    }

    /// Rewrites the history files.
    fn write(&self) -> anyhow::Result<()> {
        self.history
            .write(&self.json, &self.csv)
            .with_context(|| format!("cannot write {}", self.json.display()))
    }

    /// The evaluators of the last aggregate: those chosen after it, or after a
    /// resume, a sample of those who reconnected.
    fn take_evaluators(&mut self, rng: &mut StdRng) -> Vec<Handle> {
        match self.evaluators.take() {
            Some(chosen) => chosen,
            None => self.sample(
                rng,
                self.config.fraction_evaluate,
                self.config.min_evaluate_clients,
            ),
        }
    }

    /// Flower's sampling: `max(available · fraction, min)` clients, at random.
    fn sample(&self, rng: &mut StdRng, fraction: f64, min: usize) -> Vec<Handle> {
        let available = self.shared.registry.snapshot();
        let n = ServerConfig::sample_size(available.len(), fraction, min);
        let mut chosen: Vec<Handle> = available.choose_multiple(rng, n).cloned().collect();
        chosen.sort_by_key(|h| h.who.id);
        chosen
    }
}

/// The sampler of round `round`: seeded by the round, so a resumed run needs no
/// RNG state (the final evaluation draws from its last round's).
fn round_rng(seed: u64, round: u32) -> StdRng {
    StdRng::seed_from_u64(seed ^ u64::from(round).wrapping_mul(0x9e37_79b9_7f4a_7c15))
}

/// A participant's part of its shuffle seed, from its name: stable across
/// reconnects and restarts (ids are not), so a resumed run trains as an
/// uninterrupted one would. FNV-1a, written out because std's hasher may change
/// between releases.
fn name_seed(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Gathers standalone evaluations of `record`'s aggregate, then settles its
/// distributed loss and accuracy.
async fn collect_evaluations(
    record: &mut RoundRecord,
    evals: &mut JoinSet<(Handle, Result<EvaluateDone, JobError>)>,
) {
    while let Some(joined) = evals.join_next().await {
        let Ok((h, result)) = joined else { continue };
        match result {
            Ok(done) => round::evaluated(record, &h.who, &done),
            Err(error) => round::fail(record, &h.who, Phase::Evaluate, &error),
        }
    }
    round::settle_evaluations(record);
}

/// Hands each chosen participant the job `make` builds; the set yields
/// `(participant, answer)` as answers come in.
async fn dispatch<T: Send + 'static>(
    chosen: &[Handle],
    make: impl Fn(&Handle, Reply<T>) -> Job,
) -> JoinSet<(Handle, Result<T, JobError>)> {
    let mut pending = JoinSet::new();
    for h in chosen {
        let (reply, rx) = oneshot::channel();
        let delivered = h.send(make(h, reply)).await;
        let h = h.clone();
        pending.spawn(async move {
            let answer = if delivered {
                rx.await.unwrap_or(Err(JobError::Gone))
            } else {
                Err(JobError::Gone)
            };
            (h, answer)
        });
    }
    pending
}

async fn evaluate_on_server(
    spec: &fedcore::model::ModelSpec,
    global: &[f32],
    test: &Arc<fedhost::dataset::ImageData>,
) -> anyhow::Result<Stats> {
    let (spec, params, test) = (spec.clone(), global.to_vec(), Arc::clone(test));
    let stats = tokio::task::spawn_blocking(move || {
        Trainer::<f32, _, Host>::new(&spec, &TrainConfig::evaluation())?.evaluate(&params, &*test)
    })
    .await??;
    Ok(stats)
}
