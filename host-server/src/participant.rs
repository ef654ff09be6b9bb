//! Participants as the server sees them: one task per connection.
//!
//! A connection says hello, gets a client id and the model, and is entered in
//! the [`Registry`]. From then on its task owns the link and carries out the
//! [`Job`]s the round loop sends it (fit, evaluate, goodbye), each under a
//! deadline. Any failure (a broken link, a missed deadline, an error from the
//! participant) is reported to the round loop and ends the connection; the
//! participant may connect again and rejoin later rounds.
//!
//! Uploads are staged whole before they are folded into the aggregator, so a
//! participant that drops mid-upload leaves no trace in the model. Staging is
//! bounded by a semaphore: at most [`UPLOAD_SLOTS`] updates are held at once,
//! whatever the number of participants, so the server's memory stays O(model).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fedcore::model::ModelSpec;
use fedcore::protocol::{
    Encoding, ErrorCode, ErrorMsg, EvaluateIns, EvaluateRes, FitIns, FitRes, Message,
    PROTOCOL_VERSION, Welcome,
};
use fedcore::train::TrainConfig;
use fedhost::link::{HOST_MAX_FRAME, Link, LinkError};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tokio::time::Instant;

use crate::history::LinkKind;

/// Updates held in memory at once, at most.
pub const UPLOAD_SLOTS: usize = 8;

/// How long a new connection has to say hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// What the round loop can ask of a participant.
pub enum Job {
    /// Train from `global`.
    Fit {
        /// Round number.
        round: u32,
        /// Local training settings.
        config: TrainConfig,
        /// Seed for the participant's sample order.
        seed: u64,
        /// Score `global` (the previous round's aggregate) before training on it.
        evaluate_first: bool,
        /// The global model.
        global: Arc<Vec<f32>>,
        /// When the answer must be in.
        deadline: Instant,
        /// Where the answer goes.
        reply: oneshot::Sender<Result<FitDone, String>>,
    },
    /// Evaluate `global`.
    Evaluate {
        /// Round number.
        round: u32,
        /// The global model.
        global: Arc<Vec<f32>>,
        /// When the answer must be in.
        deadline: Instant,
        /// Where the answer goes.
        reply: oneshot::Sender<Result<EvaluateDone, String>>,
    },
    /// Say goodbye and close.
    Bye(String),
}

/// Bytes and time of one exchange.
#[derive(Debug, Clone, Copy, Default)]
pub struct Exchange {
    /// Bytes the server sent.
    pub bytes_sent: u64,
    /// Bytes the server received.
    pub bytes_received: u64,
    /// Seconds from instruction to answer.
    pub seconds: f64,
}

/// A finished fit: the participant's parameters, staged in an upload slot.
pub struct FitDone {
    /// The trained parameters.
    pub params: Vec<f32>,
    /// Its report.
    pub res: FitRes,
    /// Its evaluation of the previous aggregate, when asked for.
    pub evaluation: Option<EvaluateRes>,
    /// Bytes and time.
    pub exchange: Exchange,
    /// The upload slot, freed when this is dropped (after folding).
    pub slot: OwnedSemaphorePermit,
}

/// A finished evaluation.
pub struct EvaluateDone {
    /// Its report.
    pub res: EvaluateRes,
    /// Bytes and time.
    pub exchange: Exchange,
}

/// A connected participant, as the round loop addresses it.
#[derive(Debug, Clone)]
pub struct Handle {
    /// Server-given id.
    pub id: u32,
    /// Name it gave.
    pub name: String,
    /// Link kind.
    pub kind: LinkKind,
    jobs: mpsc::Sender<Job>,
}

impl Handle {
    /// Hands a job over; false if the participant is gone.
    pub async fn send(&self, job: Job) -> bool {
        self.jobs.send(job).await.is_ok()
    }
}

/// The participants connected now.
#[derive(Debug, Default)]
pub struct Registry {
    participants: Mutex<BTreeMap<u32, Handle>>,
    next_id: AtomicU32,
    changed: Notify,
}

impl Registry {
    /// Everyone connected, by id.
    pub fn snapshot(&self) -> Vec<Handle> {
        self.lock().values().cloned().collect()
    }

    /// Waits until at least `n` participants are connected.
    pub async fn wait_for(&self, n: usize) {
        loop {
            let notified = self.changed.notified();
            if self.lock().len() >= n {
                return;
            }
            notified.await;
        }
    }

    /// Waits until every participant has left, for at most `limit`.
    pub async fn wait_empty(&self, limit: Duration) {
        let all_gone = async {
            loop {
                let notified = self.changed.notified();
                if self.lock().is_empty() {
                    return;
                }
                notified.await;
            }
        };
        let _ = tokio::time::timeout(limit, all_gone).await;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u32, Handle>> {
        // A panic while holding this lock cannot leave the map half-updated
        // (insert and remove are single calls), so a poisoned lock is still sound.
        self.participants
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn insert(&self, handle: Handle) {
        self.lock().insert(handle.id, handle);
        self.changed.notify_waiters();
    }

    fn remove(&self, id: u32) {
        self.lock().remove(&id);
        self.changed.notify_waiters();
    }
}

/// What every connection task shares.
#[derive(Debug)]
pub struct Shared {
    /// Who is connected.
    pub registry: Registry,
    /// The federation's model.
    pub model: ModelSpec,
    /// Upload staging slots.
    pub uploads: Arc<Semaphore>,
}

/// Serves one connection until it fails or is told goodbye.
pub async fn serve<T: AsyncRead + AsyncWrite + Unpin>(io: T, kind: LinkKind, shared: Arc<Shared>) {
    let mut link = Link::new(io);
    let (handle, mut jobs, encoding, max_frame) = match handshake(&mut link, kind, &shared).await {
        Ok(joined) => joined,
        Err(e) => {
            tracing::warn!("a connection failed its hello: {e}");
            return;
        }
    };
    let id = handle.id;
    tracing::info!(id, name = %handle.name, "participant joined");
    shared.registry.insert(handle);
    while let Some(job) = jobs.recv().await {
        let outcome = match job {
            Job::Fit {
                round,
                config,
                seed,
                evaluate_first,
                global,
                deadline,
                reply,
            } => {
                let job = FitJob {
                    round,
                    config,
                    seed,
                    evaluate_first,
                };
                let work = fit(&mut link, &shared, job, &global, encoding, max_frame);
                answer_by(deadline, work, reply).await
            }
            Job::Evaluate {
                round,
                global,
                deadline,
                reply,
            } => {
                let work = evaluate(&mut link, round, &global, encoding, max_frame);
                answer_by(deadline, work, reply).await
            }
            Job::Bye(reason) => {
                let _ = link.send(&Message::Bye(&reason)).await;
                Connection::Close
            }
        };
        if outcome == Connection::Close {
            break;
        }
    }
    shared.registry.remove(id);
    tracing::info!(id, "participant left");
}

/// What to do with a connection after a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Connection {
    /// Wait for the next job.
    Keep,
    /// Close it: the job failed (leaving the link in an unknown state) or said goodbye.
    Close,
}

/// Runs `work` until `deadline` and sends its outcome to `reply`.
async fn answer_by<T>(
    deadline: Instant,
    work: impl Future<Output = Result<T, String>>,
    reply: oneshot::Sender<Result<T, String>>,
) -> Connection {
    let outcome = tokio::time::timeout_at(deadline, work)
        .await
        .unwrap_or_else(|_| Err("missed the round deadline".into()));
    let failed = outcome.is_err();
    let _ = reply.send(outcome);
    if failed {
        Connection::Close
    } else {
        Connection::Keep
    }
}

async fn handshake<T: AsyncRead + AsyncWrite + Unpin>(
    link: &mut Link<T>,
    kind: LinkKind,
    shared: &Shared,
) -> Result<(Handle, mpsc::Receiver<Job>, Encoding, usize), String> {
    let hello = tokio::time::timeout(HELLO_TIMEOUT, link.recv())
        .await
        .map_err(|_| "no hello in time".to_string())?;
    let hello = match hello.map_err(|e| e.to_string())? {
        Message::Hello(h) => h,
        other => return Err(format!("expected Hello, got {}", other.name())),
    };
    if hello.version != PROTOCOL_VERSION {
        let text = format!(
            "protocol version {} is not {PROTOCOL_VERSION}",
            hello.version
        );
        let _ = link
            .send(&Message::Error(ErrorMsg {
                code: ErrorCode::Version,
                text: &text,
            }))
            .await;
        return Err(text);
    }
    let (name, encoding) = (hello.name.to_string(), hello.encoding);
    let max_frame = (hello.max_frame as usize).min(HOST_MAX_FRAME);
    let id = shared.registry.next_id.fetch_add(1, Ordering::Relaxed);
    link.send(&Message::Welcome(Welcome {
        client_id: id,
        model: shared.model.clone(),
    }))
    .await
    .map_err(|e| e.to_string())?;
    let (tx, rx) = mpsc::channel(4);
    Ok((
        Handle {
            id,
            name,
            kind,
            jobs: tx,
        },
        rx,
        encoding,
        max_frame,
    ))
}

/// The instruction part of a fit job.
struct FitJob {
    round: u32,
    config: TrainConfig,
    seed: u64,
    evaluate_first: bool,
}

async fn fit<T: AsyncRead + AsyncWrite + Unpin>(
    link: &mut Link<T>,
    shared: &Shared,
    job: FitJob,
    global: &[f32],
    encoding: Encoding,
    max_frame: usize,
) -> Result<FitDone, String> {
    let FitJob {
        round,
        config,
        seed,
        evaluate_first,
    } = job;
    let (start, sent, received) = (Instant::now(), link.bytes_sent(), link.bytes_received());
    let failed = |e: LinkError| e.to_string();
    link.send(&Message::FitIns(FitIns {
        round,
        config,
        seed,
        evaluate_first,
    }))
    .await
    .map_err(failed)?;
    link.send_params(round, global, encoding, max_frame)
        .await
        .map_err(failed)?;
    let evaluation = if evaluate_first {
        let previous = round - 1;
        let pick = |m: &Message<'_>| match m {
            Message::EvaluateRes(r) if r.round == previous => Some(*r),
            _ => None,
        };
        Some(answer(link, &format!("EvaluateRes for round {previous}"), pick).await?)
    } else {
        None
    };
    let slot = Arc::clone(&shared.uploads)
        .acquire_owned()
        .await
        .map_err(|e| e.to_string())?;
    let mut params = vec![0.0f32; global.len()];
    link.recv_params(round, &mut params).await.map_err(failed)?;
    let pick = |m: &Message<'_>| match m {
        Message::FitRes(r) if r.round == round => Some(*r),
        _ => None,
    };
    let res = answer(link, &format!("FitRes for round {round}"), pick).await?;
    let exchange = exchange(link, start, sent, received);
    Ok(FitDone {
        params,
        res,
        evaluation,
        exchange,
        slot,
    })
}

async fn evaluate<T: AsyncRead + AsyncWrite + Unpin>(
    link: &mut Link<T>,
    round: u32,
    global: &[f32],
    encoding: Encoding,
    max_frame: usize,
) -> Result<EvaluateDone, String> {
    let (start, sent, received) = (Instant::now(), link.bytes_sent(), link.bytes_received());
    let failed = |e: LinkError| e.to_string();
    link.send(&Message::EvaluateIns(EvaluateIns { round }))
        .await
        .map_err(failed)?;
    link.send_params(round, global, encoding, max_frame)
        .await
        .map_err(failed)?;
    let pick = |m: &Message<'_>| match m {
        Message::EvaluateRes(r) if r.round == round => Some(*r),
        _ => None,
    };
    let res = answer(link, &format!("EvaluateRes for round {round}"), pick).await?;
    Ok(EvaluateDone {
        res,
        exchange: exchange(link, start, sent, received),
    })
}

/// Receives the participant's next message and picks the expected answer out
/// of it; anything else (its error report, or a message out of turn) is the reason it failed.
async fn answer<T: AsyncRead + AsyncWrite + Unpin, R>(
    link: &mut Link<T>,
    expected: &str,
    pick: impl FnOnce(&Message<'_>) -> Option<R>,
) -> Result<R, String> {
    let message = link.recv().await.map_err(|e| e.to_string())?;
    if let Some(r) = pick(&message) {
        return Ok(r);
    }
    Err(match message {
        Message::Error(e) => format!("participant error: {}", e.text),
        other => format!("expected {expected}, got {}", other.name()),
    })
}

fn exchange<T: AsyncRead + AsyncWrite + Unpin>(
    link: &Link<T>,
    start: Instant,
    sent: u64,
    received: u64,
) -> Exchange {
    Exchange {
        bytes_sent: link.bytes_sent() - sent,
        bytes_received: link.bytes_received() - received,
        seconds: start.elapsed().as_secs_f64(),
    }
}
