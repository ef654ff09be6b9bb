//! One job's conversation with a participant: the instruction and the global
//! model go out, results (and for a fit, the update) come back.
//!
//! A thin driver of fedcore's transfer engine ([`fedcore::protocol::transfer`]).
//! Over TCP the conversation is strict: bytes arrive intact and in order, so a
//! damaged frame or a message out of turn ends it. A serial line loses and
//! corrupts bytes, so there the server keeps going: its [`Receiver`] ticks the
//! update's chunks off as they come (in any order), damaged frames are skipped,
//! exactly what is missing is asked for with a `Nack` after a gap in the
//! offsets or a silence of the line's [`RetryPolicy`] gap, whatever the device
//! asks for is resent, and stale messages of earlier rounds are ignored. A run
//! of unanswered requests means the link has stalled, and the job fails cleanly.

use std::sync::Arc;
use std::time::Duration;

use fedcore::protocol::transfer::{Arrival, Chunking, Receiver, Retries, RetryPolicy, Span};
use fedcore::protocol::{Encoding, EvaluateIns, FitIns, Message, Nack, Resend};
use fedhost::link::{Link, LinkError, chunking};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use crate::history::{LinkKind, Traffic};
use crate::job::{EvaluateDone, FitDone, FitJob, JobError};
use crate::validate::{self, Declared};

/// Longest silence over TCP in the middle of an update, while it holds an upload slot.
const UPLOAD_STALL: Duration = Duration::from_secs(10);

/// What the server knows of a participant's link.
#[derive(Debug, Clone, Copy)]
pub struct Peer {
    /// TCP or serial.
    pub kind: LinkKind,
    /// The encoding it asked for.
    pub encoding: Encoding,
    /// Largest frame it takes (and sends).
    pub max_frame: usize,
    /// On a lossy line, when to ask again and when to give up; `None` over TCP.
    pub retry: Option<RetryPolicy>,
    /// What it declared when it joined: its answers are checked against it.
    pub declared: Declared,
    /// Longest distance from the global model its update may have (longer is clipped).
    pub max_update_norm: Option<f32>,
}

impl Peer {
    /// How a vector of `total` values is cut for this peer, both ways.
    pub fn chunking(&self, total: usize) -> Result<Chunking, JobError> {
        chunking(total, self.max_frame, self.encoding).map_err(JobError::Transfer)
    }

    fn lossy(&self) -> bool {
        self.retry.is_some()
    }
}

/// What one received frame amounted to (copied out of the link's buffer).
enum Heard {
    Chunk(Arrival),
    FitRes(fedcore::protocol::FitRes),
    EvaluateRes(fedcore::protocol::EvaluateRes),
    Nack(Nack),
    /// Nothing came for a while.
    Silence,
    /// On a lossy link: a damaged frame, a message of an earlier round, or one out of turn.
    Ignored,
}

/// The update coming back, staged in an upload slot taken when its first chunk arrives.
struct Upload {
    params: Vec<f32>,
    receiver: Receiver<Vec<u32>>,
    slot: OwnedSemaphorePermit,
}

/// Where a fit's update goes: nothing until it starts, then an [`Upload`].
struct Staging<'a> {
    slots: &'a Arc<Semaphore>,
    round: u32,
    chunking: Chunking,
    upload: Option<Upload>,
}

impl Staging<'_> {
    /// The upload, opened (slot taken, buffer allocated) on first use.
    async fn open(&mut self) -> Result<&mut Upload, JobError> {
        let upload = match self.upload.take() {
            Some(upload) => upload,
            None => {
                // The semaphore is never closed while connection tasks run.
                let slot = Arc::clone(self.slots)
                    .acquire_owned()
                    .await
                    .map_err(|_| JobError::Gone)?;
                let (total, per_chunk) = (self.chunking.total(), self.chunking.per_chunk());
                let mut receiver =
                    Receiver::new(vec![0u32; Receiver::<Vec<u32>>::words(total, per_chunk)]);
                receiver
                    .start(self.round, &self.chunking)
                    .map_err(JobError::Transfer)?;
                Upload {
                    params: vec![0.0; total as usize],
                    receiver,
                    slot,
                }
            }
        };
        Ok(self.upload.insert(upload))
    }

    fn missing(&self) -> Option<Span> {
        match &self.upload {
            Some(upload) => upload.receiver.missing(),
            None => Some(Span::all(self.chunking.total())),
        }
    }

    fn has_started(&self) -> bool {
        self.upload.is_some()
    }
}

/// One conversation: the instruction, the model sent, and the running tallies.
struct Conversation<'a, T> {
    link: &'a mut Link<T>,
    peer: Peer,
    round: u32,
    instruction: Message<'static>,
    global: &'a [f32],
    chunking: Chunking,
    /// On a lossy link, the unanswered requests so far.
    retries: Option<Retries>,
    start: Instant,
    sent: u64,
    received: u64,
    resends: u32,
}

/// Runs a fit: instruction and model out; evaluation (if asked), update and report back.
pub async fn fit<T: AsyncRead + AsyncWrite + Unpin>(
    link: &mut Link<T>,
    uploads: &Arc<Semaphore>,
    job: FitJob,
    global: &[f32],
    peer: Peer,
) -> Result<FitDone, JobError> {
    let FitJob {
        round,
        config,
        seed,
        evaluate_first,
    } = job;
    let instruction = Message::FitIns(FitIns {
        round,
        config,
        seed,
        evaluate_first,
    });
    let mut talk = Conversation::open(link, peer, round, instruction, global).await?;
    let mut staging = Staging {
        slots: uploads,
        round,
        chunking: talk.chunking,
        upload: None,
    };
    let (mut res, mut evaluation) = (None, None);
    let previous = round.saturating_sub(1);
    loop {
        let missing = staging.missing();
        if missing.is_none() && res.is_some() && (evaluation.is_some() || !evaluate_first) {
            break;
        }
        // Until the update starts, the participant is training: only the deadline
        // limits that. Once it holds a slot it must keep sending.
        let waiting = staging.has_started() || res.is_some();
        let wait = match talk.gap() {
            Some(gap) => waiting.then_some(gap),
            None => staging.has_started().then_some(UPLOAD_STALL),
        };
        match talk.hear(wait, Some(&mut staging)).await? {
            Heard::Chunk(Arrival::New {
                skipped: Some(Span { offset, count }),
            }) => talk.nack(round, Resend::Values { offset, count }).await?,
            Heard::Chunk(_) => talk.progress(),
            Heard::FitRes(r) if r.round == round => {
                res = Some(r);
                if let Some(Span { offset, count }) = staging.missing() {
                    if !peer.lossy() {
                        return Err(JobError::Protocol(format!(
                            "the update ended with {count} of its {} values missing",
                            global.len()
                        )));
                    }
                    talk.nack(round, Resend::Values { offset, count }).await?;
                }
            }
            Heard::EvaluateRes(r) if evaluate_first && r.round == previous => evaluation = Some(r),
            Heard::Nack(nack) => talk.answer(nack).await?,
            Heard::Silence if !peer.lossy() => return Err(JobError::NoProgress(UPLOAD_STALL)),
            Heard::Silence => {
                talk.silence()?;
                let (round, want) = match missing {
                    Some(Span { offset, count }) => (round, Resend::Values { offset, count }),
                    None if res.is_none() => (round, Resend::Result),
                    None => (previous, Resend::Result),
                };
                talk.nack(round, want).await?;
            }
            Heard::FitRes(_) | Heard::EvaluateRes(_) | Heard::Ignored => {}
        }
    }
    let res = res.ok_or_else(|| JobError::Protocol("no training report".into()))?;
    let Upload {
        mut params, slot, ..
    } = staging
        .upload
        .ok_or_else(|| JobError::Protocol("no update".into()))?;
    // Nothing the participant sent touches anything before it passes.
    validate::accept_fit(
        &res,
        &mut params,
        evaluation.as_ref(),
        global,
        &peer.declared,
        peer.max_update_norm,
    )?;
    let compute = f64::from(res.seconds) + evaluation.map_or(0.0, |e| f64::from(e.seconds));
    Ok(FitDone {
        params,
        res,
        scored: true,
        evaluation,
        traffic: talk.traffic(compute),
        slot,
    })
}

/// Runs an evaluation: instruction and model out, report back.
pub async fn evaluate<T: AsyncRead + AsyncWrite + Unpin>(
    link: &mut Link<T>,
    round: u32,
    global: &[f32],
    peer: Peer,
) -> Result<EvaluateDone, JobError> {
    let instruction = Message::EvaluateIns(EvaluateIns { round });
    let mut talk = Conversation::open(link, peer, round, instruction, global).await?;
    let mut backoff = talk.gap();
    let res = loop {
        match talk.hear(backoff, None).await? {
            Heard::EvaluateRes(r) if r.round == round => {
                validate::evaluation(&r, &peer.declared)?;
                break r;
            }
            Heard::Nack(nack) => talk.answer(nack).await?,
            Heard::Silence => {
                // The report may have been lost, or the device is still computing:
                // ask again, less and less often (the round deadline bounds this).
                talk.nack(round, Resend::Result).await?;
                backoff = peer
                    .retry
                    .zip(backoff)
                    .map(|(policy, wait)| ms(policy.backoff(wait.as_millis() as u64)));
            }
            _ => {}
        }
    };
    Ok(EvaluateDone {
        traffic: talk.traffic(f64::from(res.seconds)),
        res,
    })
}

fn ms(ms: u64) -> Duration {
    Duration::from_millis(ms)
}

impl<'a, T: AsyncRead + AsyncWrite + Unpin> Conversation<'a, T> {
    /// Sends round `round`'s instruction and the global model.
    async fn open(
        link: &'a mut Link<T>,
        peer: Peer,
        round: u32,
        instruction: Message<'static>,
        global: &'a [f32],
    ) -> Result<Self, JobError> {
        let (sent, received) = (link.bytes_sent(), link.bytes_received());
        let chunking = peer.chunking(global.len())?;
        let mut talk = Conversation {
            link,
            peer,
            round,
            instruction,
            global,
            chunking,
            retries: peer.retry.map(Retries::new),
            start: Instant::now(),
            sent,
            received,
            resends: 0,
        };
        talk.link.send(&talk.instruction).await?;
        talk.send_values(Span::all(talk.chunking.total())).await?;
        Ok(talk)
    }

    /// The silence after which to ask again, on a lossy link.
    fn gap(&self) -> Option<Duration> {
        self.retries.map(|r| ms(r.gap_ms()))
    }

    /// The participant was heard from: the count of unanswered requests starts over.
    fn progress(&mut self) {
        if let Some(retries) = &mut self.retries {
            retries.progress();
        }
    }

    async fn send_values(&mut self, span: Span) -> Result<(), JobError> {
        Ok(self
            .link
            .send_chunks(self.round, self.global, span, &self.chunking)
            .await?)
    }

    /// Receives the next frame (waiting at most `wait`, when given) and makes
    /// sense of it; chunks of this round's update go straight into `upload`.
    async fn hear(
        &mut self,
        wait: Option<Duration>,
        staging: Option<&mut Staging<'_>>,
    ) -> Result<Heard, JobError> {
        let lossy = self.peer.lossy();
        let received = match wait {
            Some(wait) => match tokio::time::timeout(wait, self.link.recv()).await {
                Ok(received) => received,
                Err(_) => return Ok(Heard::Silence),
            },
            None => self.link.recv().await,
        };
        let message = match received {
            Ok(message) => message,
            Err(LinkError::Frame(_)) if lossy => return Ok(Heard::Ignored),
            Err(e) => return Err(e.into()),
        };
        let unexpected = |what: &Message<'_>| -> Result<Heard, JobError> {
            if lossy {
                Ok(Heard::Ignored)
            } else {
                Err(JobError::Protocol(format!(
                    "unexpected {} from the participant",
                    what.name()
                )))
            }
        };
        Ok(match message {
            Message::ParamChunk(chunk) => {
                let Some(staging) = staging else {
                    return unexpected(&message);
                };
                if chunk.round != self.round && lossy {
                    // A stale resend of an earlier round: it takes no slot.
                    return Ok(Heard::Ignored);
                }
                let upload = staging.open().await?;
                match upload.receiver.accept(&chunk, &mut upload.params) {
                    Ok(arrival) => Heard::Chunk(arrival),
                    Err(e) => return Err(JobError::Transfer(e)),
                }
            }
            Message::FitRes(r) => Heard::FitRes(r),
            Message::EvaluateRes(r) => Heard::EvaluateRes(r),
            Message::Nack(n) if lossy => Heard::Nack(n),
            // A late answer to a ping sent just before this job.
            Message::Pong(_) => Heard::Ignored,
            Message::Error(e) => return Err(JobError::Participant(e.text.to_string())),
            Message::Hello(_) => return Err(JobError::Restarted),
            other => return unexpected(&other),
        })
    }

    /// Resends what the participant asked for.
    async fn answer(&mut self, nack: Nack) -> Result<(), JobError> {
        if nack.round != self.round {
            return Ok(());
        }
        self.resends += 1;
        match nack.resend {
            Resend::Values { offset, count } => self.send_values(Span { offset, count }).await,
            Resend::Instruction => Ok(self.link.send(&self.instruction).await?),
            Resend::Result => Ok(()),
        }
    }

    /// Counts a silence; fails once the link has stalled.
    fn silence(&mut self) -> Result<(), JobError> {
        match &mut self.retries {
            Some(retries) => retries.silence().map_err(|e| match e {
                fedcore::Error::Stalled { requests } => JobError::Stalled { requests },
                other => JobError::Transfer(other),
            }),
            None => Ok(()),
        }
    }

    async fn nack(&mut self, round: u32, resend: Resend) -> Result<(), JobError> {
        self.resends += 1;
        Ok(self
            .link
            .send(&Message::Nack(Nack { round, resend }))
            .await?)
    }

    /// The exchange's bytes and time; `compute` is what the participant reported computing.
    fn traffic(&self, compute: f64) -> Traffic {
        let seconds = self.start.elapsed().as_secs_f64();
        Traffic {
            bytes_sent: self.link.bytes_sent() - self.sent,
            bytes_received: self.link.bytes_received() - self.received,
            seconds,
            link_seconds: (seconds - compute).max(0.0),
            resends: self.resends,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aggregation::Aggregator;
    use crate::config::{Krum, Strategy};
    use fedcore::aggregate::ServerOpt;
    use fedcore::protocol::FitRes;
    use fedcore::scalar::{Fixed, Scalar};
    use fedcore::train::TrainConfig;

    fn serial_peer() -> Peer {
        Peer {
            kind: LinkKind::Serial,
            encoding: Encoding::Int8,
            max_frame: 256,
            retry: Some(RetryPolicy::for_line(Some(115_200), 256)),
            declared: Declared {
                train_examples: 300,
                test_examples: 0,
            },
            max_update_norm: None,
        }
    }

    /// A scripted fixed-point device on the far end of a pipe: it takes the
    /// model, "trains" (adds `delta`), and sends its Q16.16 parameters back as
    /// int8 chunks, leaving chunk `lose` out until the server asks for it.
    async fn device(
        io: tokio::io::DuplexStream,
        delta: f32,
        lose: u32,
        examples: u32,
    ) -> Vec<Fixed> {
        let mut link = Link::new(io);
        let Message::FitIns(ins) = link.recv().await.unwrap() else {
            panic!("expected FitIns")
        };
        let chunking = serial_peer().chunking(1000).unwrap();
        let mut global = vec![0.0f32; 1000];
        link.recv_params(ins.round, &mut global, &chunking)
            .await
            .unwrap();
        let trained: Vec<Fixed> = global
            .iter()
            .enumerate()
            .map(|(i, g)| Fixed::from_f32(g + delta * (i % 7) as f32))
            .collect();
        let lost = lose * chunking.per_chunk();
        for offset in chunking.offsets(Span::all(1000)) {
            if offset != lost {
                let one = Span { offset, count: 1 };
                link.send_chunks(ins.round, &trained, one, &chunking)
                    .await
                    .unwrap();
            }
        }
        let res = FitRes {
            round: ins.round,
            examples,
            loss: 0.5,
            accuracy: 0.9,
            seconds: 0.1,
        };
        link.send(&Message::FitRes(res)).await.unwrap();
        // Answer resend requests until the server is done with the pipe.
        while let Ok(message) = link.recv().await {
            let Message::Nack(Nack {
                resend: Resend::Values { offset, count },
                ..
            }) = message
            else {
                continue;
            };
            assert_eq!((offset, count), (lost, chunking.per_chunk()));
            link.send_chunks(ins.round, &trained, Span { offset, count }, &chunking)
                .await
                .unwrap();
        }
        trained
    }

    #[tokio::test]
    async fn a_fixed_point_device_update_with_a_lost_chunk_aggregates_with_an_f32_host_update() {
        let global: Vec<f32> = (0..1000).map(|i| ((i as f32) * 0.37).sin()).collect();
        let (server_end, device_end) = tokio::io::duplex(1 << 16);
        let far = tokio::spawn(device(device_end, 0.01, 3, 300));
        let mut link = Link::new(server_end);
        let uploads = Arc::new(Semaphore::new(1));
        let job = FitJob {
            round: 1,
            config: TrainConfig::default(),
            seed: 0,
            evaluate_first: false,
        };
        let done = fit(&mut link, &uploads, job, &global, serial_peer())
            .await
            .unwrap();
        drop(link);
        let device_params = far.await.unwrap();
        assert!(done.traffic.resends >= 1, "the lost chunk was asked for");
        assert_eq!(done.res.examples, 300);

        // A host's f32 update, weighted 700 to the device's 300.
        let host: Vec<f32> = global.iter().map(|g| g - 0.02).collect();
        let mut aggregator = Aggregator::new(
            Strategy::Fedavg,
            ServerOpt::FedAvg,
            1000,
            0.0,
            Krum::default(),
        )
        .unwrap();
        aggregator.begin();
        aggregator.add(done.params, 300).unwrap();
        aggregator.add(host.clone(), 700).unwrap();
        let mut aggregate = global.clone();
        aggregator.finish(&mut aggregate).unwrap();

        let per_chunk = serial_peer().chunking(1000).unwrap().per_chunk() as usize;
        for (i, got) in aggregate.iter().enumerate() {
            let dev = f64::from(device_params[i].to_f32());
            let exact = (300.0 * dev + 700.0 * f64::from(host[i])) / 1000.0;
            // int8 error of the device's chunk (max |x| / 254), at its weight, plus f32 rounding.
            let chunk = i / per_chunk * per_chunk;
            let max = device_params[chunk..(chunk + per_chunk).min(1000)]
                .iter()
                .map(|v| v.to_f32().abs())
                .fold(0.0f32, f32::max);
            let bound = 0.3 * f64::from(max) / 254.0 + 1e-5;
            assert!(
                (f64::from(*got) - exact).abs() <= bound,
                "parameter {i}: {got} vs {exact} (bound {bound})"
            );
        }
    }
}
