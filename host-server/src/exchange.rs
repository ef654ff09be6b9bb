//! One job's conversation with a participant: the instruction and the global
//! model go out, results (and for a fit, the update) come back.
//!
//! Over TCP the conversation is strict: bytes arrive intact and in order, so a
//! damaged frame or a message out of turn ends it. A serial line loses and
//! corrupts bytes, so there the server keeps going: it ticks the update's
//! chunks off as they come (in any order), skips damaged frames, asks with a
//! `Nack` for exactly what is missing after a gap in the offsets or
//! [`GAP`] of silence, resends whatever the device asks for, and ignores stale
//! messages of earlier rounds. [`MAX_RETRIES`] unanswered requests in a row
//! mean the link has stalled, and the job fails cleanly.

use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use fedcore::protocol::transfer::{Arrival, Chunks, Span};
use fedcore::protocol::{
    Encoding, EvaluateIns, EvaluateRes, FitIns, FitRes, Message, Nack, Resend,
};
use fedcore::train::TrainConfig;
use fedhost::link::{Link, LinkError, values_per_chunk};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use crate::history::LinkKind;

/// Silence in the middle of a transfer after which the server asks for what is missing.
pub const GAP: Duration = Duration::from_secs(1);
/// Resend requests in a row that may go unanswered before the link counts as stalled.
pub const MAX_RETRIES: u32 = 8;
/// Longest wait between two requests for an evaluation result that has not come.
const RESULT_BACKOFF_CAP: Duration = Duration::from_secs(8);

/// What the server knows of a participant's link.
#[derive(Debug, Clone, Copy)]
pub struct Peer {
    /// TCP or serial.
    pub kind: LinkKind,
    /// The encoding it asked for.
    pub encoding: Encoding,
    /// Largest frame it takes (and sends).
    pub max_frame: usize,
}

impl Peer {
    /// Values in each parameter chunk, both ways.
    pub fn per_chunk(&self) -> usize {
        values_per_chunk(self.max_frame, self.encoding)
    }

    fn lossy(&self) -> bool {
        self.kind == LinkKind::Serial
    }
}

/// Bytes, time and repairs of one exchange.
#[derive(Debug, Clone, Copy, Default)]
pub struct Exchange {
    /// Bytes the server sent.
    pub bytes_sent: u64,
    /// Bytes the server received.
    pub bytes_received: u64,
    /// Seconds from instruction to answer.
    pub seconds: f64,
    /// Of those, seconds the link was busy or waited on (all but the
    /// participant's own reported compute time).
    pub link_seconds: f64,
    /// Resend requests, both ways.
    pub resends: u32,
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

/// What one received frame amounted to (copied out of the link's buffer).
enum Heard {
    Chunk(Arrival),
    FitRes(FitRes),
    EvaluateRes(EvaluateRes),
    Nack(Nack),
    /// Nothing came for a while.
    Silence,
    /// On a lossy link: a damaged frame, a message of an earlier round, or one out of turn.
    Ignored,
}

/// The update coming back, in an upload slot.
struct Upload {
    params: Vec<f32>,
    chunks: Chunks<Vec<u32>>,
    started: bool,
    slot: OwnedSemaphorePermit,
}

/// One conversation: the instruction, the model sent, and the running tallies.
struct Conversation<'a, T> {
    link: &'a mut Link<T>,
    peer: Peer,
    round: u32,
    instruction: Message<'static>,
    global: &'a [f32],
    start: Instant,
    sent: u64,
    received: u64,
    resends: u32,
    retries: u32,
}

/// Runs a fit: instruction and model out; evaluation (if asked), update and report back.
pub async fn fit<T: AsyncRead + AsyncWrite + Unpin>(
    link: &mut Link<T>,
    uploads: &Arc<Semaphore>,
    job: FitJob,
    global: &[f32],
    peer: Peer,
) -> Result<FitDone, String> {
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
    let slot = Arc::clone(uploads)
        .acquire_owned()
        .await
        .map_err(|e| e.to_string())?;
    let total = global.len() as u32;
    let per_chunk = peer.per_chunk() as u32;
    let mut chunks = Chunks::new(vec![0u32; Chunks::<Vec<u32>>::words(total, per_chunk)]);
    chunks.start(total, per_chunk).map_err(|e| e.to_string())?;
    let mut upload = Upload {
        params: vec![0.0; global.len()],
        chunks,
        started: false,
        slot,
    };
    let (mut res, mut evaluation) = (None, None);
    let previous = round.saturating_sub(1);
    loop {
        let missing = upload.chunks.first_missing();
        if missing.is_none() && res.is_some() && (evaluation.is_some() || !evaluate_first) {
            break;
        }
        // Until the update starts, the participant is training: only the deadline limits that.
        let wait = (peer.lossy() && (upload.started || res.is_some())).then_some(GAP);
        match talk.hear(wait, Some(&mut upload)).await? {
            Heard::Chunk(Arrival::New {
                skipped: Some(Span { offset, count }),
            }) => talk.nack(Resend::Values { offset, count }).await?,
            Heard::Chunk(_) => talk.retries = 0,
            Heard::FitRes(r) if r.round == round => {
                res = Some(r);
                if let Some(Span { offset, count }) = upload.chunks.first_missing() {
                    if !peer.lossy() {
                        return Err(format!(
                            "the update ended with {count} of its {total} values missing"
                        ));
                    }
                    talk.nack(Resend::Values { offset, count }).await?;
                }
            }
            Heard::EvaluateRes(r) if evaluate_first && r.round == previous => evaluation = Some(r),
            Heard::Nack(nack) => talk.answer(nack).await?,
            Heard::Silence => {
                let want = match missing {
                    Some(Span { offset, count }) => (round, Resend::Values { offset, count }),
                    None if res.is_none() => (round, Resend::Result),
                    None => (previous, Resend::Result),
                };
                talk.retry(want.0, want.1).await?;
            }
            Heard::FitRes(_) | Heard::EvaluateRes(_) | Heard::Ignored => {}
        }
    }
    let res = res.ok_or("no training report")?;
    let compute = f64::from(res.seconds) + evaluation.map_or(0.0, |e| f64::from(e.seconds));
    Ok(FitDone {
        params: upload.params,
        res,
        evaluation,
        exchange: talk.exchange(compute),
        slot: upload.slot,
    })
}

/// Runs an evaluation: instruction and model out, report back.
pub async fn evaluate<T: AsyncRead + AsyncWrite + Unpin>(
    link: &mut Link<T>,
    round: u32,
    global: &[f32],
    peer: Peer,
) -> Result<EvaluateDone, String> {
    let instruction = Message::EvaluateIns(EvaluateIns { round });
    let mut talk = Conversation::open(link, peer, round, instruction, global).await?;
    let mut backoff = GAP;
    let res = loop {
        let wait = peer.lossy().then_some(backoff);
        match talk.hear(wait, None).await? {
            Heard::EvaluateRes(r) if r.round == round => break r,
            Heard::Nack(nack) => talk.answer(nack).await?,
            Heard::Silence => {
                // The report may have been lost, or the device is still computing:
                // ask again, less and less often (the round deadline bounds this).
                talk.nack(Resend::Result).await?;
                backoff = (backoff * 2).min(RESULT_BACKOFF_CAP);
            }
            _ => {}
        }
    };
    Ok(EvaluateDone {
        exchange: talk.exchange(f64::from(res.seconds)),
        res,
    })
}

impl<'a, T: AsyncRead + AsyncWrite + Unpin> Conversation<'a, T> {
    /// Sends round `round`'s instruction and the global model.
    async fn open(
        link: &'a mut Link<T>,
        peer: Peer,
        round: u32,
        instruction: Message<'static>,
        global: &'a [f32],
    ) -> Result<Self, String> {
        let (sent, received) = (link.bytes_sent(), link.bytes_received());
        let mut talk = Conversation {
            link,
            peer,
            round,
            instruction,
            global,
            start: Instant::now(),
            sent,
            received,
            resends: 0,
            retries: 0,
        };
        talk.link
            .send(&talk.instruction)
            .await
            .map_err(|e| e.to_string())?;
        talk.send_values(0..global.len()).await?;
        Ok(talk)
    }

    async fn send_values(&mut self, range: Range<usize>) -> Result<(), String> {
        self.link
            .send_chunks(
                self.round,
                self.global,
                range,
                self.peer.encoding,
                self.peer.per_chunk(),
            )
            .await
            .map_err(|e| e.to_string())
    }

    /// Receives the next frame (waiting at most `wait`, when given) and makes
    /// sense of it; chunks of this round's update go straight into `upload`.
    async fn hear(
        &mut self,
        wait: Option<Duration>,
        upload: Option<&mut Upload>,
    ) -> Result<Heard, String> {
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
            Err(e) => return Err(e.to_string()),
        };
        let unexpected = |what: &Message<'_>| -> Result<Heard, String> {
            if lossy {
                Ok(Heard::Ignored)
            } else {
                Err(format!("unexpected {} from the participant", what.name()))
            }
        };
        Ok(match message {
            Message::ParamChunk(chunk) if chunk.round == self.round => {
                let Some(upload) = upload else {
                    return unexpected(&message);
                };
                let (offset, len) = (chunk.offset as usize, chunk.values.len());
                if chunk.total as usize != upload.params.len() {
                    return Err(format!(
                        "the update has {} parameters, the model {}",
                        chunk.total,
                        upload.params.len()
                    ));
                }
                let arrival = upload
                    .chunks
                    .arrive(chunk.offset, len)
                    .map_err(|e| e.to_string())?;
                if arrival != Arrival::Duplicate {
                    chunk
                        .values
                        .decode(&mut upload.params[offset..offset + len])
                        .map_err(|e| e.to_string())?;
                }
                upload.started = true;
                Heard::Chunk(arrival)
            }
            Message::FitRes(r) => Heard::FitRes(r),
            Message::EvaluateRes(r) => Heard::EvaluateRes(r),
            Message::Nack(n) if lossy => Heard::Nack(n),
            Message::Error(e) => return Err(format!("participant error: {}", e.text)),
            Message::Hello(_) => return Err("the participant restarted".into()),
            other => return unexpected(&other),
        })
    }

    /// Resends what the participant asked for.
    async fn answer(&mut self, nack: Nack) -> Result<(), String> {
        if nack.round != self.round {
            return Ok(());
        }
        self.resends += 1;
        match nack.resend {
            Resend::Values { offset, count } => {
                let end = (offset as usize).saturating_add(count as usize);
                self.send_values(offset as usize..end.min(self.global.len()))
                    .await
            }
            Resend::Instruction => self
                .link
                .send(&self.instruction)
                .await
                .map_err(|e| e.to_string()),
            Resend::Result => Ok(()),
        }
    }

    /// Asks for `resend` of `round` after a silence; fails once the link has stalled.
    async fn retry(&mut self, round: u32, resend: Resend) -> Result<(), String> {
        self.retries += 1;
        if self.retries > MAX_RETRIES {
            return Err(format!(
                "the link stalled: {MAX_RETRIES} requests to resend went unanswered"
            ));
        }
        self.nack_round(round, resend).await
    }

    async fn nack(&mut self, resend: Resend) -> Result<(), String> {
        self.nack_round(self.round, resend).await
    }

    async fn nack_round(&mut self, round: u32, resend: Resend) -> Result<(), String> {
        self.resends += 1;
        self.link
            .send(&Message::Nack(Nack { round, resend }))
            .await
            .map_err(|e| e.to_string())
    }

    /// The exchange's bytes and time; `compute` is what the participant reported computing.
    fn exchange(&self, compute: f64) -> Exchange {
        let seconds = self.start.elapsed().as_secs_f64();
        Exchange {
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
    use crate::config::Strategy;
    use fedcore::aggregate::ServerOpt;
    use fedcore::protocol::{ParamChunk, Values};
    use fedcore::scalar::{Fixed, Scalar};

    const PER_CHUNK_FRAME: usize = 256;

    /// A scripted fixed-point device on the far end of a pipe: it takes the
    /// model, "trains" (adds `delta`), and sends its Q16.16 parameters back as
    /// int8 chunks, leaving chunk `lose` out until the server asks for it.
    async fn device(
        io: tokio::io::DuplexStream,
        delta: f32,
        lose: usize,
        examples: u32,
    ) -> Vec<Fixed> {
        let mut link = Link::new(io);
        let Message::FitIns(ins) = link.recv().await.unwrap() else {
            panic!("expected FitIns")
        };
        let mut global = vec![0.0f32; 1000];
        link.recv_params(ins.round, &mut global).await.unwrap();
        let trained: Vec<Fixed> = global
            .iter()
            .enumerate()
            .map(|(i, g)| Fixed::from_f32(g + delta * (i % 7) as f32))
            .collect();
        let peer = Peer {
            kind: LinkKind::Serial,
            encoding: Encoding::Int8,
            max_frame: PER_CHUNK_FRAME,
        };
        let per_chunk = peer.per_chunk();
        let mut buf = vec![0u8; per_chunk];
        let mut sent = Vec::new();
        for (i, chunk) in trained.chunks(per_chunk).enumerate() {
            if i == lose {
                continue;
            }
            let values = Values::encode(chunk, Encoding::Int8, &mut buf).unwrap();
            let message = Message::ParamChunk(ParamChunk {
                round: ins.round,
                offset: (i * per_chunk) as u32,
                total: 1000,
                values,
            });
            link.send(&message).await.unwrap();
            sent.push(i);
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
            assert_eq!(
                (offset as usize, count as usize),
                (lose * per_chunk, per_chunk)
            );
            let chunk = &trained[offset as usize..(offset + count) as usize];
            let values = Values::encode(chunk, Encoding::Int8, &mut buf).unwrap();
            let message = Message::ParamChunk(ParamChunk {
                round: ins.round,
                offset,
                total: 1000,
                values,
            });
            link.send(&message).await.unwrap();
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
        let peer = Peer {
            kind: LinkKind::Serial,
            encoding: Encoding::Int8,
            max_frame: PER_CHUNK_FRAME,
        };
        let job = FitJob {
            round: 1,
            config: TrainConfig::default(),
            seed: 0,
            evaluate_first: false,
        };
        let done = fit(&mut link, &uploads, job, &global, peer).await.unwrap();
        drop(link);
        let device_params = far.await.unwrap();
        assert!(done.exchange.resends >= 1, "the lost chunk was asked for");
        assert_eq!(done.res.examples, 300);

        // A host's f32 update, weighted 700 to the device's 300.
        let host: Vec<f32> = global.iter().map(|g| g - 0.02).collect();
        let mut aggregator =
            Aggregator::new(Strategy::Fedavg, ServerOpt::FedAvg, 1000, 0.0).unwrap();
        aggregator.begin();
        aggregator.add(done.params, 300).unwrap();
        aggregator.add(host.clone(), 700).unwrap();
        let mut aggregate = global.clone();
        aggregator.finish(&mut aggregate).unwrap();

        let per_chunk = peer.per_chunk();
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
