//! The round loop: sample, send, collect under a deadline, aggregate, evaluate, record.
//!
//! Participants come from the TCP listener and from the serial lines named in
//! the config (one task each, for the whole run); the loop treats them alike.

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
use tokio::task::JoinSet;

use crate::aggregation::Aggregator;
use crate::config::ServerConfig;
use crate::history::{FailureRecord, History, LinkKind, RoundRecord, Scores};
use crate::participant::{self, EvaluateDone, FitJob, Handle, Job, Registry, Shared, UPLOAD_SLOTS};

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
    shared
        .registry
        .wait_empty(std::time::Duration::from_secs(5))
        .await;
    for line in lines {
        line.abort();
    }
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
    let mut aggregator = Aggregator::new(
        config.strategy,
        config.server_opt,
        global.len(),
        config.trim_fraction,
    )?;
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
    let write = |history: &History| {
        history
            .write(&json, &csv)
            .with_context(|| format!("cannot write {}", json.display()))
    };
    tracing::info!(n = config.min_available_clients, "waiting for participants");
    // The previous round's aggregate is evaluated by these participants during this round.
    let mut evaluators: Vec<Handle> = Vec::new();
    for round in 1..=config.rounds {
        shared
            .registry
            .wait_for(config.min_available_clients.max(1))
            .await;
        let started = Instant::now();
        let mut record = RoundRecord::new(round);
        let chosen = sample(
            &shared.registry.snapshot(),
            config.fraction_fit,
            config.min_fit_clients,
            &mut sampler,
        );
        let snapshot = Arc::new(global.clone());
        let deadline = tokio::time::Instant::now() + config.round_timeout;
        let fused = |h: &Handle| evaluators.iter().any(|e| e.id == h.id);
        let mut fits = dispatch(&chosen, |h, reply| {
            let seed = config.seed ^ (u64::from(round) << 32) ^ u64::from(h.id);
            let evaluate_first = fused(h);
            Job::Fit {
                job: FitJob {
                    round,
                    config: config.train,
                    seed,
                    evaluate_first,
                },
                global: Arc::clone(&snapshot),
                deadline,
                reply,
            }
        })
        .await;
        // Evaluators of the previous aggregate that do not train this round evaluate on their own.
        let alone: Vec<Handle> = evaluators
            .iter()
            .filter(|e| !chosen.iter().any(|h| h.id == e.id))
            .cloned()
            .collect();
        let mut evals = dispatch(&alone, |_, reply| Job::Evaluate {
            round: round - 1,
            global: Arc::clone(&snapshot),
            deadline,
            reply,
        })
        .await;
        let mut previous = history.rounds.last_mut();
        let (mut fit_loss, mut fit_acc) = (WeightedMean::default(), WeightedMean::default());
        let (mut answered, mut agg_seconds) = (0, 0.0);
        aggregator.begin();
        // Fold each update as it arrives: that frees its upload slot for the next.
        while let Some(joined) = fits.join_next().await {
            let Ok((h, result)) = joined else { continue };
            match result {
                Ok(done) => {
                    let a = Instant::now();
                    aggregator.add(done.params, u64::from(done.res.examples))?;
                    agg_seconds += a.elapsed().as_secs_f64();
                    drop(done.slot);
                    answered += 1;
                    let r = done.res;
                    fit_loss.add(u64::from(r.examples), r.loss);
                    fit_acc.add(u64::from(r.examples), r.accuracy);
                    let p = record.participant(&h);
                    p.examples = r.examples;
                    p.fit = Some(Scores {
                        examples: r.examples,
                        loss: r.loss,
                        accuracy: r.accuracy,
                        seconds: r.seconds,
                    });
                    p.add(&done.exchange);
                    if let (Some(ev), Some(prev)) = (done.evaluation, previous.as_deref_mut()) {
                        prev.participant(&h).evaluate = Some(Scores::from(ev));
                    }
                }
                Err(reason) => {
                    if let (true, Some(prev)) = (fused(&h), previous.as_deref_mut()) {
                        prev.failures.push(failure(&h, "evaluate", reason.clone()));
                    }
                    record.failures.push(failure(&h, "fit", reason));
                }
            }
        }
        record
            .phase_seconds
            .insert("fit".into(), started.elapsed().as_secs_f64() - agg_seconds);
        if let Some(prev) = previous {
            collect_evaluations(prev, &mut evals).await;
            progress.round(prev);
        }
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
        if let Some(test) = &server_test {
            let t = Instant::now();
            let stats = evaluate_on_server(&config.model, &global, test).await?;
            record.loss_centralized = Some(stats.loss());
            record.accuracy_centralized = Some(stats.accuracy());
            record
                .phase_seconds
                .insert("server_eval".into(), t.elapsed().as_secs_f64());
        }
        record.seconds = started.elapsed().as_secs_f64();
        record.tally();
        tracing::info!(
            round,
            failures = record.failures.len(),
            seconds = record.seconds,
            "round trained"
        );
        history.rounds.push(record);
        write(&history)?;
        evaluators = sample(
            &shared.registry.snapshot(),
            config.fraction_evaluate,
            config.min_evaluate_clients,
            &mut sampler,
        );
    }
    // The last aggregate has no next round to travel with: evaluate it on its own.
    if let Some(last) = history.rounds.last_mut() {
        let t = Instant::now();
        let snapshot = Arc::new(global.clone());
        let deadline = tokio::time::Instant::now() + config.round_timeout;
        let round = last.round;
        let mut evals = dispatch(&evaluators, |_, reply| Job::Evaluate {
            round,
            global: Arc::clone(&snapshot),
            deadline,
            reply,
        })
        .await;
        collect_evaluations(last, &mut evals).await;
        last.phase_seconds
            .insert("evaluate".into(), t.elapsed().as_secs_f64());
        last.seconds += t.elapsed().as_secs_f64();
        progress.round(last);
        write(&history)?;
    }
    let model_path = config.out.join("model_final.bin");
    fedhost::model_file::save(&model_path, &config.model, &global)?;
    let mut files = vec![json, csv, model_path];
    files.extend(crate::plot::plot_run(&history, &config.out)?);
    Ok(Outcome { history, files })
}

/// Gathers standalone evaluations of `record`'s aggregate, then sets its
/// distributed loss and accuracy from every evaluation it received (fused or not).
async fn collect_evaluations(
    record: &mut RoundRecord,
    evals: &mut JoinSet<(Handle, Result<EvaluateDone, String>)>,
) {
    while let Some(joined) = evals.join_next().await {
        let Ok((h, result)) = joined else { continue };
        match result {
            Ok(done) => {
                let p = record.participant(&h);
                p.evaluate = Some(Scores::from(done.res));
                p.add(&done.exchange);
            }
            Err(reason) => record.failures.push(failure(&h, "evaluate", reason)),
        }
    }
    let evaluated = record.participants.iter().filter_map(|p| p.evaluate);
    let loss: WeightedMean = evaluated
        .clone()
        .map(|e| (u64::from(e.examples), e.loss))
        .collect();
    let acc: WeightedMean = evaluated
        .map(|e| (u64::from(e.examples), e.accuracy))
        .collect();
    record.loss_distributed = loss.mean();
    record.accuracy_distributed = acc.mean();
    record.tally();
    tracing::info!(
        round = record.round,
        accuracy = record.accuracy_distributed,
        loss = record.loss_distributed,
        "round evaluated"
    );
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
) -> JoinSet<(Handle, Result<T, String>)> {
    let mut pending = JoinSet::new();
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
