//! Flower SuperNodes (the current protocol) as participants (`--superlink-bind`).
//!
//! flower-bridge serves the Fleet API ([`flower_bridge::superlink`]); every
//! SuperNode that activates becomes a participant named `supernode-<node id>`
//! of kind `supernode`, running the ClientApp of the FAB given with `--fab`.
//! A fit is a `train` message carrying the global model as `arrays` and the
//! round as `config` `server-round`; the reply must carry `arrays` of the
//! model's shapes and `metrics` with `num-examples` (its weight), and may
//! carry `loss` and `accuracy`; an evaluation is an `evaluate` message whose
//! reply's `metrics` hold `num-examples` and `accuracy` (or `eval_acc`) and
//! `loss` (or `eval_loss`). Everything is checked by flower-bridge and then
//! validated like our participants' answers. A SuperNode that deactivates or
//! stops heartbeating leaves; a failed job is a failure like any other, but
//! the node stays (it keeps polling) unless its strikes drop it. The Fleet
//! API has no goodbye: at the end of the run the nodes simply get no more
//! messages, and wait for the next run.

use std::sync::Arc;

use fedcore::protocol::EvaluateRes;
use flower_bridge::legacy::FitReport;
use flower_bridge::objects::{self, Metrics, ObjectError};
use flower_bridge::superlink::{Ask, NodeHandle, Reply, SuperLink};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::flower::checked_fit;
use crate::history::{Credentials, LinkKind, Traffic};
use crate::job::{EvaluateDone, FitDone, FitJob, Job, JobError, answer_by};
use crate::participant::{self, Shared};
use crate::validate::{self, Declared};

/// Serves the Fleet API on `listener` for the whole run; every node that
/// activates gets a session.
pub async fn serve(
    listener: TcpListener,
    superlink: SuperLink,
    nodes: mpsc::Receiver<NodeHandle>,
    shared: Arc<Shared>,
) {
    let server = superlink.serve(listener, shared.tls.clone());
    let what = "the Fleet API listener";
    participant::sessions(what, server, nodes, |n| session(n, Arc::clone(&shared))).await;
}

async fn session(mut node: NodeHandle, shared: Arc<Shared>) {
    let name = format!("supernode-{}", node.node_id);
    let (handle, mut jobs) = match participant::enter(
        &shared,
        name.clone(),
        LinkKind::Supernode,
        Credentials::default(),
    ) {
        Ok(entered) => entered,
        Err((_, refusal)) => {
            // The Fleet API cannot refuse a node that activated: it gets no messages.
            tracing::warn!(%name, "a SuperNode was not admitted: {refusal}");
            return;
        }
    };
    let id = handle.who.id;
    tracing::info!(id, %name, "SuperNode joined");
    let most = shared.limits.max_examples;
    let declared = Declared {
        train_examples: most,
        test_examples: most,
    };
    loop {
        let job = tokio::select! {
            job = jobs.recv() => job,
            () = handle.replaced() => {
                tracing::warn!(id, "a newer connection under this name took its place");
                break;
            }
            why = node.gone() => {
                tracing::info!(id, "SuperNode left: {why}");
                break;
            }
        };
        let outcome = match job {
            Some(Job::Fit {
                job,
                global,
                deadline,
                reply,
            }) => {
                let work = fit(&mut node, &shared, job, &global, declared, deadline);
                answer_by(deadline, work, reply).await
            }
            Some(Job::Evaluate {
                round,
                global,
                deadline,
                reply,
            }) => {
                let work = evaluate(&mut node, &shared, round, &global, declared, deadline);
                answer_by(deadline, work, reply).await
            }
            Some(Job::Bye(_)) | None => break,
        };
        if let Some(verdict) = shared.strikes.record(&name, &outcome) {
            tracing::warn!(id, %name, "{verdict}");
            break;
        }
    }
    shared.registry.remove(id);
}

/// A number of the reply's metrics under any of `keys`.
fn metric(metrics: &Metrics, keys: &[&str]) -> Option<f32> {
    keys.iter().find_map(|k| metrics.get(k)).map(|v| v as f32)
}

/// The reply's example count, which it must report.
fn examples(metrics: &Metrics) -> Result<u32, JobError> {
    let n = metrics
        .get("num-examples")
        .ok_or(ObjectError::NoMetric("num-examples"))?;
    if !(n >= 0.0 && n <= f64::from(u32::MAX) && n.fract() == 0.0) {
        return Err(JobError::Protocol(format!("it reports {n} examples")));
    }
    Ok(n as u32)
}

/// Asks for an evaluation of `global` as round `round`'s aggregate.
async fn evaluation(
    node: &mut NodeHandle,
    shared: &Shared,
    round: u32,
    global: &[f32],
    declared: Declared,
    deadline: Instant,
    traffic: &mut Traffic,
) -> Result<EvaluateRes, JobError> {
    let start = Instant::now();
    let ttl = deadline.saturating_duration_since(start);
    let reply = ask(node, Ask::Evaluate, shared, global, round, ttl, traffic).await?;
    let metrics = objects::read_reply(&reply.objects, &reply.message_id, &shared.model, None)?;
    let res = EvaluateRes {
        round,
        examples: examples(&metrics)?,
        loss: metric(&metrics, &["loss", "eval_loss"]).ok_or(ObjectError::NoMetric("loss"))?,
        accuracy: metric(&metrics, &["accuracy", "eval_acc"])
            .ok_or(ObjectError::NoMetric("accuracy"))?,
        seconds: start.elapsed().as_secs_f32(),
    };
    validate::evaluation(&res, &declared)?;
    Ok(res)
}

async fn evaluate(
    node: &mut NodeHandle,
    shared: &Shared,
    round: u32,
    global: &[f32],
    declared: Declared,
    deadline: Instant,
) -> Result<EvaluateDone, JobError> {
    let start = Instant::now();
    let mut traffic = Traffic::default();
    let res = evaluation(
        node,
        shared,
        round,
        global,
        declared,
        deadline,
        &mut traffic,
    )
    .await?;
    traffic.seconds = start.elapsed().as_secs_f64();
    Ok(EvaluateDone { res, traffic })
}

async fn fit(
    node: &mut NodeHandle,
    shared: &Shared,
    job: FitJob,
    global: &[f32],
    declared: Declared,
    deadline: Instant,
) -> Result<FitDone, JobError> {
    let start = Instant::now();
    let mut traffic = Traffic::default();
    let evaluation = match job.evaluate_first {
        true => {
            let previous = job.round.saturating_sub(1);
            let res = evaluation(
                node,
                shared,
                previous,
                global,
                declared,
                deadline,
                &mut traffic,
            );
            Some(res.await?)
        }
        false => None,
    };
    let trained = Instant::now();
    let ttl = deadline.saturating_duration_since(trained);
    let reply = ask(
        node,
        Ask::Train,
        shared,
        global,
        job.round,
        ttl,
        &mut traffic,
    )
    .await?;
    let seconds = trained.elapsed().as_secs_f32();
    let mut done = checked_fit(
        shared,
        &job,
        global,
        declared,
        evaluation,
        seconds,
        |params| {
            let metrics = objects::read_reply(
                &reply.objects,
                &reply.message_id,
                &shared.model,
                Some(params),
            )?;
            let scores =
                metric(&metrics, &["loss", "train_loss"]).zip(metric(&metrics, &["accuracy"]));
            Ok(FitReport {
                examples: examples(&metrics)?,
                scores,
            })
        },
    )
    .await?;
    traffic.seconds = start.elapsed().as_secs_f64();
    done.traffic = traffic;
    Ok(done)
}

/// Sends the node `global` for `round` as `ask` and waits for the reply,
/// counting what both moved in `traffic`.
async fn ask(
    node: &mut NodeHandle,
    ask: Ask,
    shared: &Shared,
    global: &[f32],
    round: u32,
    ttl: std::time::Duration,
    traffic: &mut Traffic,
) -> Result<Reply, JobError> {
    let pulled = node.bytes_pulled();
    let reply = node.ask(ask, &shared.model, global, round, ttl).await?;
    traffic.bytes_sent += node.bytes_pulled() - pulled;
    traffic.bytes_received += reply.bytes;
    Ok(reply)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metrics(pairs: &[(&str, f64)]) -> Metrics {
        Metrics(pairs.iter().map(|&(k, v)| (k.to_string(), v)).collect())
    }

    #[test]
    fn a_reply_without_a_whole_example_count_is_refused_by_name() {
        let e = examples(&metrics(&[("accuracy", 0.9)])).unwrap_err();
        assert_eq!(
            e.to_string(),
            "its reply was refused: the reply's metrics have no \"num-examples\" (a number)"
        );
        assert_eq!(e.kind(), crate::history::FailureKind::Rejected);
        for bad in [-1.0, 2.5, 1e12, f64::NAN] {
            let e = examples(&metrics(&[("num-examples", bad)])).unwrap_err();
            assert!(e.to_string().contains("examples"), "{bad}: {e}");
        }
        assert_eq!(examples(&metrics(&[("num-examples", 600.0)])).unwrap(), 600);
        // Current Flower apps name evaluation metrics either way.
        let m = metrics(&[("eval_acc", 0.5)]);
        assert_eq!(metric(&m, &["accuracy", "eval_acc"]), Some(0.5));
    }
}
