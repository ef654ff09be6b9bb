//! What the round loop asks of a participant, what comes back, and every way it can fail.
//!
//! The round loop hands a [`Job`] to a participant's connection task, which
//! carries it out through [`crate::exchange`] under the job's deadline and
//! answers with a [`FitDone`], an [`EvaluateDone`] or a [`JobError`].

use std::sync::Arc;

use fedcore::protocol::{EvaluateRes, FitRes};
use fedcore::train::TrainConfig;
use fedhost::link::LinkError;
use flower_bridge::legacy::LegacyError;
use flower_bridge::objects::ObjectError;
use flower_bridge::superlink::NodeError;
use tokio::sync::{OwnedSemaphorePermit, oneshot};
use tokio::time::Instant;

use crate::history::{FailureKind, Traffic};
use crate::validate::Rejection;

/// The instruction part of a fit job.
#[derive(Debug, Clone, Copy)]
pub struct FitJob {
    /// Round number.
    pub round: u32,
    /// Local training settings.
    pub config: TrainConfig,
    /// Seed for the participant's sample order.
    pub seed: u64,
    /// Score the global model before training on it.
    pub evaluate_first: bool,
}

/// A finished fit: the participant's parameters, staged in an upload slot.
pub struct FitDone {
    /// The trained parameters.
    pub params: Vec<f32>,
    /// Its report.
    pub res: FitRes,
    /// Whether the report's training loss and accuracy are the participant's
    /// (a Flower client need not report them: then they are 0 and recorded nowhere).
    pub scored: bool,
    /// Its evaluation of the previous aggregate, when asked for.
    pub evaluation: Option<EvaluateRes>,
    /// Bytes and time.
    pub traffic: Traffic,
    /// The upload slot, freed when this is dropped (after folding).
    pub slot: OwnedSemaphorePermit,
}

/// A finished evaluation.
pub struct EvaluateDone {
    /// Its report.
    pub res: EvaluateRes,
    /// Bytes and time.
    pub traffic: Traffic,
}

/// Why a participant's job failed.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// It did not answer before the deadline.
    #[error("missed the round deadline")]
    Deadline,
    /// A lossy link stopped answering resend requests.
    #[error("the link stalled: {requests} requests to resend went unanswered")]
    Stalled {
        /// Requests that went unanswered.
        requests: u32,
    },
    /// The connection failed.
    #[error("{0}")]
    Link(#[from] LinkError),
    /// The participant reported an error.
    #[error("participant error: {0}")]
    Participant(String),
    /// It sent something the conversation does not allow.
    #[error("{0}")]
    Protocol(String),
    /// Its parameters were refused by the transfer engine (a chunk of another
    /// model, misaligned, or undecodable).
    #[error("its parameters were refused: {0}")]
    Transfer(fedcore::Error),
    /// Its answer failed validation: it never touched the model or the metrics.
    #[error("its answer was refused: {0}")]
    Rejected(#[from] Rejection),
    /// A Flower client's answer could not be read (another model's tensors,
    /// no example count, a missing metric) or reported its own failure.
    #[error("its Flower answer was refused: {0}")]
    Flower(#[from] LegacyError),
    /// A SuperNode left, or its reply broke the Fleet API.
    #[error("{0}")]
    Supernode(#[from] NodeError),
    /// A SuperNode's reply could not be read (missing or altered objects,
    /// another model's arrays, no `num-examples`) or carried its own error.
    #[error("its reply was refused: {0}")]
    Reply(#[from] ObjectError),
    /// It held an upload slot without sending anything for too long.
    #[error("it sent nothing for {0:?} in the middle of its update")]
    NoProgress(std::time::Duration),
    /// It said hello in the middle of a job.
    #[error("the participant restarted")]
    Restarted,
    /// The job never reached it, or its connection task ended without an answer.
    #[error("connection lost")]
    Gone,
}

impl JobError {
    /// The kind the history records beside the reason.
    pub fn kind(&self) -> FailureKind {
        match self {
            JobError::Deadline => FailureKind::Deadline,
            JobError::Stalled { .. } | JobError::NoProgress(_) => FailureKind::Stalled,
            JobError::Rejected(_) => FailureKind::Rejected,
            JobError::Flower(LegacyError::Status { .. }) => FailureKind::Participant,
            JobError::Flower(_) => FailureKind::Rejected,
            JobError::Supernode(NodeError::Gone(_)) => FailureKind::Gone,
            JobError::Supernode(NodeError::Protocol(_)) => FailureKind::Protocol,
            JobError::Reply(ObjectError::Reported { .. }) => FailureKind::Participant,
            JobError::Reply(_) => FailureKind::Rejected,
            JobError::Link(_) => FailureKind::Link,
            JobError::Participant(_) => FailureKind::Participant,
            JobError::Protocol(_) | JobError::Transfer(_) => FailureKind::Protocol,
            JobError::Restarted => FailureKind::Restarted,
            JobError::Gone => FailureKind::Gone,
        }
    }
}

/// Where a job's answer goes.
pub type Reply<T> = oneshot::Sender<Result<T, JobError>>;

/// What the round loop can ask of a participant.
pub enum Job {
    /// Train from `global`.
    Fit {
        /// The instruction.
        job: FitJob,
        /// The global model.
        global: Arc<Vec<f32>>,
        /// When the answer must be in.
        deadline: Instant,
        /// Where the answer goes.
        reply: Reply<FitDone>,
    },
    /// Evaluate `global` as round `round`'s aggregate.
    Evaluate {
        /// Round number.
        round: u32,
        /// The global model.
        global: Arc<Vec<f32>>,
        /// When the answer must be in.
        deadline: Instant,
        /// Where the answer goes.
        reply: Reply<EvaluateDone>,
    },
    /// Say goodbye and close.
    Bye(String),
}

/// How a job failed, as its participant's task keeps it after the error itself went to the round loop.
#[derive(Debug, Clone, PartialEq)]
pub struct Failed {
    /// The failure's kind.
    pub kind: FailureKind,
    /// Its reason.
    pub reason: String,
}

/// Runs `work` until `deadline` and sends its outcome to `reply`.
pub async fn answer_by<T>(
    deadline: Instant,
    work: impl Future<Output = Result<T, JobError>>,
    reply: Reply<T>,
) -> Result<(), Failed> {
    let outcome = tokio::time::timeout_at(deadline, work)
        .await
        .unwrap_or(Err(JobError::Deadline));
    let failed = outcome.as_ref().err().map(|e| Failed {
        kind: e.kind(),
        reason: e.to_string(),
    });
    let _ = reply.send(outcome);
    failed.map_or(Ok(()), Err)
}
