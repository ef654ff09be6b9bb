//! Flower clients of the original protocol as participants (`--flower-bind`).
//!
//! Each stream a Flower client opens (`start_numpy_client`, `start_client`,
//! flwr 1.0 to 1.42) is a participant like a TCP or serial one: entered in the
//! [`crate::participant::Registry`] under the name `flower@<ip:port>` and kind
//! `flower-legacy`, counted for minimums and fractions, given the round
//! loop's jobs, and failing as any other would. A fit becomes Flower's
//! `FitIns` (the model as numpy tensors, the round's settings as its config),
//! an evaluation `EvaluateIns`; the answer is read by flower-bridge (status,
//! tensor shapes against the model, example count, `accuracy` for an
//! evaluation) and then validated like ours, so nothing a Flower client sends
//! reaches the model unchecked. Flower clients declare nothing when they join:
//! their counts are bounded by `--max-examples`.
//!
//! A failed job ends the stream with its reason as the gRPC status, which
//! Flower's client raises as its error (a Flower client that fails exits; it
//! does not rejoin by itself). At the end of the run each gets Flower's own
//! goodbye, a reconnect after 0 seconds, and shuts down as it does under
//! Flower's server.

use std::sync::Arc;
use std::time::Duration;

use fedcore::model::ModelSpec;
use fedcore::protocol::{EvaluateRes, FitRes};
use flower_bridge::join::{self, ClientStream};
use flower_bridge::legacy;
use flower_bridge::proto::client_message;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::history::{Credentials, LinkKind, Traffic};
use crate::job::{EvaluateDone, FitDone, FitJob, Job, JobError, answer_by};
use crate::participant::{self, Shared};
use crate::validate::{self, Declared};

/// How long a Flower client has to acknowledge the goodbye.
const GOODBYE_ACK: Duration = Duration::from_secs(2);

/// Serves Flower's stream on `listener` for the whole run: every client that
/// joins gets a session. Pings idle connections every `--heartbeat`.
pub async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    let (joined, streams) = mpsc::channel(8);
    let server = join::serve(
        listener,
        shared.tls.clone(),
        shared.limits.heartbeat,
        joined,
    );
    let what = "the Flower listener";
    participant::sessions(what, server, streams, |s| session(s, Arc::clone(&shared))).await;
}

/// One Flower client, from its join to its goodbye or its first failure.
async fn session(mut stream: ClientStream, shared: Arc<Shared>) {
    let name = format!("flower@{}", stream.peer());
    let (handle, mut jobs) = match participant::enter(
        &shared,
        name.clone(),
        LinkKind::FlowerLegacy,
        Credentials::default(),
    ) {
        Ok(entered) => entered,
        Err((_, refusal)) => {
            tracing::warn!(%name, "a Flower client was not admitted: {refusal}");
            stream.refuse(&refusal.to_string()).await;
            return;
        }
    };
    let id = handle.who.id;
    tracing::info!(id, %name, "Flower client joined");
    let most = shared.limits.max_examples;
    let declared = Declared {
        train_examples: most,
        test_examples: most,
    };
    let refusal = loop {
        let job = tokio::select! {
            job = jobs.recv() => job,
            () = handle.replaced() => {
                tracing::warn!(id, "a newer connection under this name took its place");
                break Some(format!("another connection under the name {name} took its place"));
            }
            heard = stream.recv() => {
                match heard {
                    Ok(_) => tracing::warn!(id, "a Flower client spoke out of turn; closing"),
                    Err(e) => tracing::info!(id, "Flower client left between jobs: {e}"),
                }
                break None;
            }
        };
        let Some(job) = job else {
            break None;
        };
        let outcome = match job {
            Job::Fit {
                job,
                global,
                deadline,
                reply,
            } => {
                let work = fit(&mut stream, &shared, job, &global, declared);
                answer_by(deadline, work, reply).await
            }
            Job::Evaluate {
                round,
                global,
                deadline,
                reply,
            } => {
                let work = evaluate(&mut stream, &shared.model, round, &global, declared);
                answer_by(deadline, work, reply).await
            }
            Job::Bye(_) => {
                if stream.send(legacy::goodbye()).await.is_ok() {
                    // Its DisconnectRes, or its closing the stream.
                    let _ = tokio::time::timeout(GOODBYE_ACK, stream.recv()).await;
                }
                break None;
            }
        };
        if let Some(verdict) = shared.strikes.record(&name, &outcome) {
            tracing::warn!(id, %name, "{verdict}");
            break Some(verdict);
        }
        if let Err(failed) = outcome {
            break Some(failed.reason);
        }
    };
    shared.registry.remove(id);
    if let Some(reason) = refusal {
        stream.refuse(&reason).await;
    }
    tracing::info!(id, "Flower client left");
}

/// The stream's next message, which must be the answer `want` picks out.
async fn answer<T>(
    stream: &mut ClientStream,
    what: &str,
    want: impl FnOnce(client_message::Msg) -> Option<T>,
) -> Result<T, JobError> {
    let msg = stream
        .recv()
        .await
        .map_err(|e| JobError::Protocol(format!("no {what}: {e}")))?;
    // `recv` never returns a message without content.
    msg.msg
        .and_then(want)
        .ok_or_else(|| JobError::Protocol(format!("it answered with something other than {what}")))
}

/// Asks for an evaluation of `global` as round `round`'s aggregate; its report, checked.
async fn evaluation(
    stream: &mut ClientStream,
    model: &ModelSpec,
    round: u32,
    global: &[f32],
    declared: Declared,
) -> Result<EvaluateRes, JobError> {
    let start = Instant::now();
    send(stream, legacy::evaluate_ins(model, global, round)).await?;
    let res = answer(stream, "an EvaluateRes", |m| match m {
        client_message::Msg::EvaluateRes(r) => Some(r),
        _ => None,
    })
    .await?;
    let report = legacy::read_evaluate_res(&res)?;
    let res = EvaluateRes {
        round,
        examples: report.examples,
        loss: report.loss,
        accuracy: report.accuracy,
        seconds: start.elapsed().as_secs_f32(),
    };
    validate::evaluation(&res, &declared)?;
    Ok(res)
}

async fn send(
    stream: &mut ClientStream,
    msg: flower_bridge::proto::ServerMessage,
) -> Result<(), JobError> {
    stream
        .send(msg)
        .await
        .map_err(|e| JobError::Protocol(format!("the Flower stream ended: {e}")))
}

async fn evaluate(
    stream: &mut ClientStream,
    model: &ModelSpec,
    round: u32,
    global: &[f32],
    declared: Declared,
) -> Result<EvaluateDone, JobError> {
    let before = stream.bytes();
    let start = Instant::now();
    let res = evaluation(stream, model, round, global, declared).await?;
    Ok(EvaluateDone {
        res,
        traffic: traffic(stream, before, start),
    })
}

async fn fit(
    stream: &mut ClientStream,
    shared: &Shared,
    job: FitJob,
    global: &[f32],
    declared: Declared,
) -> Result<FitDone, JobError> {
    let before = stream.bytes();
    let start = Instant::now();
    let evaluation = match job.evaluate_first {
        true => {
            let previous = job.round.saturating_sub(1);
            Some(evaluation(stream, &shared.model, previous, global, declared).await?)
        }
        false => None,
    };
    let trained = Instant::now();
    send(
        stream,
        legacy::fit_ins(&shared.model, global, job.round, &job.config),
    )
    .await?;
    let res = answer(stream, "a FitRes", |m| match m {
        client_message::Msg::FitRes(r) => Some(r),
        _ => None,
    })
    .await?;
    let seconds = trained.elapsed().as_secs_f32();
    let mut done = checked_fit(
        shared,
        &job,
        global,
        declared,
        evaluation,
        seconds,
        |params| Ok(legacy::read_fit_res(&shared.model, &res, params)?),
    )
    .await?;
    done.traffic = traffic(stream, before, start);
    Ok(done)
}

/// Finishes a Flower participant's fit that took `seconds`: takes an upload
/// slot, has `read` put its update in a fresh buffer and give its report, and
/// validates both like our participants' (with the fused `evaluation`). The
/// traffic is the caller's to fill in.
pub(crate) async fn checked_fit(
    shared: &Shared,
    job: &FitJob,
    global: &[f32],
    declared: Declared,
    evaluation: Option<EvaluateRes>,
    seconds: f32,
    read: impl FnOnce(&mut [f32]) -> Result<legacy::FitReport, JobError>,
) -> Result<FitDone, JobError> {
    // The semaphore is never closed while connection tasks run.
    let slot = Arc::clone(&shared.uploads)
        .acquire_owned()
        .await
        .map_err(|_| JobError::Gone)?;
    let mut params = vec![0.0; global.len()];
    let report = read(&mut params)?;
    let (loss, accuracy) = report.scores.unwrap_or((0.0, 0.0));
    let res = FitRes {
        round: job.round,
        examples: report.examples,
        loss,
        accuracy,
        seconds,
    };
    validate::accept_fit(
        &res,
        &mut params,
        evaluation.as_ref(),
        global,
        &declared,
        shared.limits.max_update_norm,
    )?;
    Ok(FitDone {
        params,
        res,
        scored: report.scores.is_some(),
        evaluation,
        traffic: Traffic::default(),
        slot,
    })
}

/// What the exchanges since `before` and `start` moved. The stream hides the
/// client's compute time inside the wait for its answer, so it all counts as
/// the exchange's, none as the link's.
fn traffic(stream: &ClientStream, before: join::Bytes, start: Instant) -> Traffic {
    let now = stream.bytes();
    Traffic {
        bytes_sent: now.sent - before.sent,
        bytes_received: now.received - before.received,
        seconds: start.elapsed().as_secs_f64(),
        link_seconds: 0.0,
        resends: 0,
    }
}
