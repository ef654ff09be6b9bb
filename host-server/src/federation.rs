//! The round loop: sample, send, collect under a deadline, aggregate, evaluate, record.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use fedcore::aggregate::WeightedMean;
use fedcore::model::{Plan, init_params};
use fedcore::rng::Rng;
use fedcore::train::{Stats, TrainConfig, Trainer};
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, oneshot};

use crate::aggregation::Aggregator;
use crate::config::ServerConfig;
use crate::history::{FailureRecord, History, LinkKind, ParticipantRecord, RoundRecord, Scores};
use crate::participant::{self, Handle, Job, Registry, Shared, UPLOAD_SLOTS};

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

/// Runs the federation on `listener` until the last round; then says goodbye,
/// saves the final model, and returns the history.
pub async fn run(
    config: ServerConfig,
    listener: TcpListener,
    progress: &dyn Progress,
) -> anyhow::Result<Outcome> {
    std::fs::create_dir_all(&config.out)
        .with_context(|| format!("cannot create {}", config.out.display()))?;
    let shared = Arc::new(Shared {
        registry: Registry::default(),
        model: config.model.clone(),
        uploads: Arc::new(Semaphore::new(UPLOAD_SLOTS)),
    });
    let accept = tokio::spawn(accept_loop(listener, Arc::clone(&shared)));
    let result = rounds(&config, &shared, progress).await;
    for handle in shared.registry.snapshot() {
        handle.send(Job::Bye("the federation is done".into())).await;
    }
    accept.abort();
    result
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        match listener.accept().await {
            Ok((socket, peer)) => {
                tracing::debug!(%peer, "connection");
                let _ = socket.set_nodelay(true);
                tokio::spawn(participant::serve(
                    socket,
                    LinkKind::Tcp,
                    Arc::clone(&shared),
                ));
            }
            Err(e) => {
                tracing::warn!("accept failed: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}

async fn rounds(
    config: &ServerConfig,
    shared: &Shared,
    progress: &dyn Progress,
) -> anyhow::Result<Outcome> {
    let plan = Plan::new(&config.model);
    let mut global = vec![0.0f32; plan.param_count()];
    init_params(&plan, &mut global, &mut Rng::new(config.seed));
    let mut aggregator = Aggregator::new(config.strategy, global.len(), config.trim_fraction)?;
    let server_test = match &config.server_eval {
        Some(dir) => Some(Arc::new(fedhost::dataset::load_test(dir)?)),
        None => None,
    };
    let mut sampler = StdRng::seed_from_u64(config.seed);
    let (json, csv) = History::paths(&config.out, config.rounds);
    let mut history = History {
        config: serde_json::to_value(config)?,
        rounds: Vec::new(),
    };
    if config.min_available_clients > 0 {
        tracing::info!(n = config.min_available_clients, "waiting for participants");
    }
    for round in 1..=config.rounds {
        shared
            .registry
            .wait_for(config.min_available_clients.max(1))
            .await;
        let started = Instant::now();
        let mut record = RoundRecord {
            round,
            loss_distributed: None,
            accuracy_distributed: None,
            fit_metrics: BTreeMap::new(),
            loss_centralized: None,
            accuracy_centralized: None,
            aggregated: false,
            participants: Vec::new(),
            failures: Vec::new(),
            seconds: 0.0,
            bytes: 0,
            phase_seconds: BTreeMap::new(),
        };
        let mut people: BTreeMap<u32, ParticipantRecord> = BTreeMap::new();

        // Fit.
        let t = Instant::now();
        let available = shared.registry.snapshot();
        let chosen = sample(
            &available,
            config.fraction_fit,
            config.min_fit_clients,
            &mut sampler,
        );
        let snapshot = Arc::new(global.clone());
        let deadline = tokio::time::Instant::now() + config.round_timeout;
        let mut pending = dispatch(&chosen, |h, reply| {
            let seed = config.seed ^ (u64::from(round) << 32) ^ u64::from(h.id);
            Job::Fit {
                round,
                config: config.train,
                seed,
                global: Arc::clone(&snapshot),
                deadline,
                reply,
            }
        })
        .await;
        let (mut fit_loss, mut fit_acc) = (WeightedMean::default(), WeightedMean::default());
        let mut answered = 0;
        let mut agg_seconds = 0.0;
        aggregator.begin();
        // Fold each update as it arrives: that frees its upload slot for the next.
        while let Some(joined) = pending.join_next().await {
            let Ok((h, result)) = joined else { continue };
            match result {
                Ok(done) => {
                    let a = Instant::now();
                    aggregator.add(done.params, u64::from(done.res.examples))?;
                    agg_seconds += a.elapsed().as_secs_f64();
                    drop(done.slot);
                    answered += 1;
                    fit_loss.add(u64::from(done.res.examples), done.res.loss);
                    fit_acc.add(u64::from(done.res.examples), done.res.accuracy);
                    let p = people.entry(h.id).or_insert_with(|| blank(&h));
                    p.examples = done.res.examples;
                    p.fit = Some(Scores {
                        examples: done.res.examples,
                        loss: done.res.loss,
                        accuracy: done.res.accuracy,
                    });
                    add_exchange(p, &done.exchange);
                }
                Err(reason) => record.failures.push(failure(&h, "fit", reason)),
            }
        }
        record
            .phase_seconds
            .insert("fit".into(), t.elapsed().as_secs_f64() - agg_seconds);
        let a = Instant::now();
        if answered >= config.min_fit_clients.max(1) {
            aggregator.finish(&mut global)?;
            record.aggregated = true;
        } else {
            tracing::warn!(
                round,
                answered,
                min = config.min_fit_clients,
                "too few participants trained; the model is unchanged"
            );
        }
        record
            .phase_seconds
            .insert("aggregate".into(), agg_seconds + a.elapsed().as_secs_f64());
        if let (Some(l), Some(acc)) = (fit_loss.mean(), fit_acc.mean()) {
            record.fit_metrics.insert("train_loss".into(), l);
            record.fit_metrics.insert("train_accuracy".into(), acc);
        }

        // Evaluate.
        let t = Instant::now();
        let available = shared.registry.snapshot();
        let chosen = sample(
            &available,
            config.fraction_evaluate,
            config.min_evaluate_clients,
            &mut sampler,
        );
        let snapshot = Arc::new(global.clone());
        let deadline = tokio::time::Instant::now() + config.round_timeout;
        let mut pending = dispatch(&chosen, |_, reply| Job::Evaluate {
            round,
            global: Arc::clone(&snapshot),
            deadline,
            reply,
        })
        .await;
        let (mut loss, mut acc) = (WeightedMean::default(), WeightedMean::default());
        while let Some(joined) = pending.join_next().await {
            let Ok((h, result)) = joined else { continue };
            match result {
                Ok(done) => {
                    loss.add(u64::from(done.res.examples), done.res.loss);
                    acc.add(u64::from(done.res.examples), done.res.accuracy);
                    let p = people.entry(h.id).or_insert_with(|| blank(&h));
                    p.evaluate = Some(Scores {
                        examples: done.res.examples,
                        loss: done.res.loss,
                        accuracy: done.res.accuracy,
                    });
                    add_exchange(p, &done.exchange);
                }
                Err(reason) => record.failures.push(failure(&h, "evaluate", reason)),
            }
        }
        record.loss_distributed = loss.mean();
        record.accuracy_distributed = acc.mean();
        record
            .phase_seconds
            .insert("evaluate".into(), t.elapsed().as_secs_f64());

        // Centralised evaluation.
        if let Some(test) = &server_test {
            let t = Instant::now();
            let stats = evaluate_on_server(&config.model, &global, test).await?;
            record.loss_centralized = Some(stats.loss());
            record.accuracy_centralized = Some(stats.accuracy());
            record
                .phase_seconds
                .insert("server_eval".into(), t.elapsed().as_secs_f64());
        }

        record.participants = people.into_values().collect();
        record.bytes = record
            .participants
            .iter()
            .map(|p| p.bytes_sent + p.bytes_received)
            .sum();
        record.seconds = started.elapsed().as_secs_f64();
        tracing::info!(
            round,
            accuracy = record.accuracy_distributed,
            loss = record.loss_distributed,
            failures = record.failures.len(),
            seconds = record.seconds,
            "round done"
        );
        progress.round(&record);
        history.rounds.push(record);
        history
            .write(&json, &csv)
            .with_context(|| format!("cannot write {}", json.display()))?;
    }
    let model_path = config.out.join("model_final.bin");
    fedhost::model_file::save(&model_path, &config.model, &global)?;
    let mut files = vec![json, csv, model_path];
    files.extend(crate::plot::plot_run(&history, &config.out)?);
    Ok(Outcome { history, files })
}

/// Flower's sampling: `max(available · fraction, min)` clients, at random.
fn sample(available: &[Handle], fraction: f64, min: usize, rng: &mut StdRng) -> Vec<Handle> {
    let n = ServerConfig::sample_size(available.len(), fraction, min);
    let mut chosen: Vec<Handle> = available.choose_multiple(rng, n).cloned().collect();
    chosen.sort_by_key(|h| h.id);
    chosen
}

/// Hands each chosen participant the job `make` builds; the set yields
/// `(participant, answer)` as answers come in.
async fn dispatch<T: Send + 'static>(
    chosen: &[Handle],
    make: impl Fn(&Handle, oneshot::Sender<Result<T, String>>) -> Job,
) -> tokio::task::JoinSet<(Handle, Result<T, String>)> {
    let mut pending = tokio::task::JoinSet::new();
    for h in chosen {
        let (reply, rx) = oneshot::channel();
        let delivered = h.send(make(h, reply)).await;
        let h = h.clone();
        pending.spawn(async move {
            let lost = || Err("connection lost".to_string());
            let answer = if delivered {
                rx.await.unwrap_or_else(|_| lost())
            } else {
                lost()
            };
            (h, answer)
        });
    }
    pending
}

fn blank(h: &Handle) -> ParticipantRecord {
    ParticipantRecord {
        id: h.id,
        name: h.name.clone(),
        kind: h.kind,
        examples: 0,
        bytes_sent: 0,
        bytes_received: 0,
        seconds: 0.0,
        fit: None,
        evaluate: None,
    }
}

fn add_exchange(p: &mut ParticipantRecord, e: &participant::Exchange) {
    p.bytes_sent += e.bytes_sent;
    p.bytes_received += e.bytes_received;
    p.seconds += e.seconds;
}

fn failure(h: &Handle, phase: &str, reason: String) -> FailureRecord {
    tracing::warn!(id = h.id, name = %h.name, phase, "participant failed: {reason}");
    FailureRecord {
        id: h.id,
        name: h.name.clone(),
        phase: phase.into(),
        reason,
    }
}

async fn evaluate_on_server(
    spec: &fedcore::model::ModelSpec,
    global: &[f32],
    test: &Arc<fedhost::dataset::ImageData>,
) -> anyhow::Result<Stats> {
    let (spec, params, test) = (spec.clone(), global.to_vec(), Arc::clone(test));
    let stats = tokio::task::spawn_blocking(move || {
        let cfg = TrainConfig {
            batch_size: 64,
            momentum: 0.0,
            ..TrainConfig::default()
        };
        Trainer::<f32, _>::new(&spec, &cfg)?.evaluate(&params, &*test)
    })
    .await??;
    Ok(stats)
}
