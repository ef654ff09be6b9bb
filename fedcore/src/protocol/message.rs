//! The federation's messages.
//!
//! Messages borrow their variable-length parts (names, texts, parameter bytes)
//! from the frame buffer they were decoded from, so decoding allocates nothing.
//! Parameter values travel as raw little-endian bytes inside [`Values`], in the
//! encoding the client asked for: f32, int8 with a per-chunk scale, or Q16.16.

use serde::{Deserialize, Serialize};

use crate::Error;
use crate::compress::{dequantize, quantize};
use crate::model::ModelSpec;
use crate::scalar::Scalar;
use crate::train::TrainConfig;

use super::auth::{Challenge, Proof};

/// Version of this protocol; a server refuses a hello with another.
pub const PROTOCOL_VERSION: u16 = 6;

/// What kind of participant says hello.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ParticipantKind {
    /// A host process over TCP, training in f32.
    Host,
    /// A microcontroller-class device over a serial line, training in fixed
    /// point, simulated on a host (firmware-sim).
    Device,
    /// The firmware image itself, running bare metal on a board's core.
    Board(Board),
}

/// The boards the firmware image is built for (the `firmware/` crate).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Board {
    /// QEMU's `mps2-an386`: a Cortex-M4 with FPU.
    Mps2An386,
    /// QEMU's `mps2-an385`: a Cortex-M3, no FPU.
    Mps2An385,
}

impl Board {
    /// The name a server's records give it.
    pub const fn name(self) -> &'static str {
        match self {
            Board::Mps2An386 => "qemu-m4",
            Board::Mps2An385 => "qemu-m3",
        }
    }
}

/// How parameter values are encoded in a chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Encoding {
    /// 4 bytes a value, IEEE f32 little-endian.
    F32,
    /// 1 byte a value plus one f32 scale per chunk (see [`crate::compress`]).
    Int8,
    /// 4 bytes a value, Q16.16 little-endian.
    Q16,
}

impl Encoding {
    /// Bytes per value.
    pub const fn value_bytes(self) -> usize {
        match self {
            Encoding::F32 | Encoding::Q16 => 4,
            Encoding::Int8 => 1,
        }
    }
}

/// A participant introduces itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hello<'a> {
    /// [`PROTOCOL_VERSION`] of the sender.
    pub version: u16,
    /// A human-readable name.
    pub name: &'a str,
    /// Host or device.
    pub kind: ParticipantKind,
    /// Local training examples.
    pub train_examples: u32,
    /// Local test examples.
    pub test_examples: u32,
    /// Largest frame the participant can receive, in encoded bytes including the delimiter.
    pub max_frame: u32,
    /// The encoding it wants parameter chunks in (both directions).
    pub encoding: Encoding,
    /// What its samples are, so that a model they do not fit is refused at
    /// admission rather than at the first batch.
    pub data: DataShape,
}

/// A participant's data as a model sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataShape {
    /// Values in each sample (the model's input must take as many).
    pub values: u32,
    /// One more than its largest label (the model needs at least as many classes).
    pub labels: u16,
}

impl DataShape {
    /// The shape of a participant's training and test data: the first
    /// sample's values, and every label's bound.
    pub fn of(train: &impl crate::data::Dataset, test: &impl crate::data::Dataset) -> Self {
        let first = (!train.is_empty())
            .then(|| train.sample(0))
            .or_else(|| (!test.is_empty()).then(|| test.sample(0)));
        let labels =
            |d: &dyn Fn(usize) -> u8, n: usize| (0..n).map(d).max().map_or(0, |l| u16::from(l) + 1);
        DataShape {
            values: first.map_or(0, |s| s.values.len() as u32),
            labels: labels(&|i| train.sample(i).label, train.len())
                .max(labels(&|i| test.sample(i).label, test.len())),
        }
    }

    /// Why `model` cannot train on data of this shape, if it cannot.
    pub fn mismatch(&self, model: &crate::model::ModelSpec) -> Option<DataMismatch> {
        let (input, classes) = (model.input().len(), model.classes());
        if self.values as usize != input {
            Some(DataMismatch::Values {
                data: self.values,
                model: input,
            })
        } else if usize::from(self.labels) > classes {
            Some(DataMismatch::Labels {
                labels: self.labels,
                classes,
            })
        } else {
            None
        }
    }
}

/// How a participant's data and the federation's model disagree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataMismatch {
    /// Its samples have another number of values than the model's input.
    Values {
        /// Values in each of its samples.
        data: u32,
        /// Values the model's input takes.
        model: usize,
    },
    /// Its labels go beyond the model's classes.
    Labels {
        /// One more than its largest label.
        labels: u16,
        /// The model's classes.
        classes: usize,
    },
}

impl core::fmt::Display for DataMismatch {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match *self {
            DataMismatch::Values { data, model } => write!(
                f,
                "its samples have {data} values but the model's input takes {model}: pick a model for this data (--model)"
            ),
            DataMismatch::Labels { labels, classes } => write!(
                f,
                "its labels go up to {} but the model has {classes} classes: give the last layer at least {labels} outputs",
                labels - 1
            ),
        }
    }
}

/// The server accepts a participant.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Welcome {
    /// The id the server gave the participant.
    pub client_id: u32,
    /// The model the federation trains.
    pub model: ModelSpec,
}

/// Train on the global model that follows in chunks.
///
/// With `evaluate_first`, the participant first scores those parameters (the
/// aggregate of round `round - 1`) on its test data and answers with an
/// `EvaluateRes` for `round - 1`, then trains: the global model crosses the link
/// once per round instead of twice.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct FitIns {
    /// Round number, from 1.
    pub round: u32,
    /// Local training settings.
    pub config: TrainConfig,
    /// Seed for this round's sample order and rounding.
    pub seed: u64,
    /// Evaluate the received parameters before training on them.
    pub evaluate_first: bool,
}

/// Evaluate the global model that follows in chunks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct EvaluateIns {
    /// Round number.
    pub round: u32,
}

/// Encoded parameter values, borrowed from a frame or an encoding buffer.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub enum Values<'a> {
    /// f32 little-endian.
    F32(&'a [u8]),
    /// int8 with the chunk's scale.
    Int8 {
        /// Step between consecutive integer levels.
        scale: f32,
        /// One signed byte a value.
        #[serde(borrow)]
        values: &'a [u8],
    },
    /// Q16.16 little-endian.
    Q16(&'a [u8]),
}

impl<'a> Values<'a> {
    /// Encodes `src` as `encoding` into `buf` (at least `src.len() * value_bytes` long).
    pub fn encode<S: Scalar>(
        src: &[S],
        encoding: Encoding,
        buf: &'a mut [u8],
    ) -> Result<Self, Error> {
        let need = src.len() * encoding.value_bytes();
        let got = buf.len();
        let buf = buf.get_mut(..need).ok_or(Error::BufferLength {
            expected: need,
            got,
        })?;
        Ok(match encoding {
            Encoding::F32 => {
                for (b, v) in buf.chunks_exact_mut(4).zip(src) {
                    b.copy_from_slice(&v.to_f32().to_le_bytes());
                }
                Values::F32(buf)
            }
            Encoding::Q16 => {
                for (b, v) in buf.chunks_exact_mut(4).zip(src) {
                    let q = v.to_q16().clamp(i64::from(i32::MIN), i64::from(i32::MAX)) as i32;
                    b.copy_from_slice(&q.to_le_bytes());
                }
                Values::Q16(buf)
            }
            Encoding::Int8 => {
                let scale = quantize(src, bytemuck::cast_slice_mut(buf))?;
                Values::Int8 { scale, values: buf }
            }
        })
    }

    /// Number of values.
    pub fn len(&self) -> usize {
        match self {
            Values::F32(b) | Values::Q16(b) => b.len() / 4,
            Values::Int8 { values, .. } => values.len(),
        }
    }

    /// True when the chunk holds no values.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Decodes into `out` (exactly `len()` long) in the receiver's scalar type.
    pub fn decode<S: Scalar>(&self, out: &mut [S]) -> Result<(), Error> {
        if let Values::F32(b) | Values::Q16(b) = *self
            && b.len() % 4 != 0
        {
            // Found by fuzzing: the stray bytes were silently dropped.
            return Err(Error::PartialValue {
                bytes: b.len(),
                value_bytes: 4,
            });
        }
        if out.len() != self.len() {
            return Err(Error::BufferLength {
                expected: self.len(),
                got: out.len(),
            });
        }
        match *self {
            Values::F32(b) => {
                for (o, c) in out.iter_mut().zip(b.chunks_exact(4)) {
                    *o = S::from_f32(f32::from_le_bytes([c[0], c[1], c[2], c[3]]));
                }
            }
            Values::Q16(b) => {
                for (o, c) in out.iter_mut().zip(b.chunks_exact(4)) {
                    *o = S::from_q16(i64::from(i32::from_le_bytes([c[0], c[1], c[2], c[3]])));
                }
            }
            Values::Int8 { scale, values } => dequantize(bytemuck::cast_slice(values), scale, out)?,
        }
        Ok(())
    }
}

/// A chunk of parameters, from `offset` on, of a model with `total` parameters.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ParamChunk<'a> {
    /// Round the parameters belong to.
    pub round: u32,
    /// Index of the first value in the flat parameter buffer.
    pub offset: u32,
    /// Parameters in the whole model.
    pub total: u32,
    /// The values.
    #[serde(borrow)]
    pub values: Values<'a>,
}

/// A participant finished training.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct FitRes {
    /// Round number.
    pub round: u32,
    /// Training examples used (the FedAvg weight).
    pub examples: u32,
    /// Mean training loss of the last epoch.
    pub loss: f32,
    /// Training accuracy of the last epoch.
    pub accuracy: f32,
    /// Seconds the participant spent training.
    pub seconds: f32,
}

/// A participant evaluated the global model.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct EvaluateRes {
    /// Round number.
    pub round: u32,
    /// Test examples (the metric weight).
    pub examples: u32,
    /// Mean test loss.
    pub loss: f32,
    /// Test accuracy.
    pub accuracy: f32,
    /// Seconds the participant spent evaluating.
    pub seconds: f32,
}

/// What a [`Nack`] asks the peer to send again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Resend {
    /// The round's parameter values `offset .. offset + count` (whole chunks):
    /// they arrived damaged or not at all.
    Values {
        /// First value wanted.
        offset: u32,
        /// Number of values wanted.
        count: u32,
    },
    /// The round's instruction (`FitIns` or `EvaluateIns`): its chunks came without it.
    Instruction,
    /// The round's result (`FitRes` or `EvaluateRes`), which never arrived.
    Result,
}

/// Please send part of a round's exchange again: it arrived damaged or not at all.
///
/// Only lossy links (serial lines) use it; over TCP a damaged frame is a broken connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Nack {
    /// Round number.
    pub round: u32,
    /// What to send again.
    pub resend: Resend,
}

/// Why a peer reports an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ErrorCode {
    /// The protocol versions differ.
    Version,
    /// The authentication token was refused.
    Auth,
    /// The peer cannot work with the model or encoding (e.g. it does not fit in its memory).
    Unsupported,
    /// A message arrived that does not fit the conversation.
    Unexpected,
    /// Local training or evaluation failed.
    Training,
    /// The participant failed the same way too often: it may not rejoin this run.
    Dropped,
}

/// A peer reports an error; the text is for a human.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorMsg<'a> {
    /// What kind of error.
    pub code: ErrorCode,
    /// What happened, for a human.
    pub text: &'a str,
}

/// Every message of the protocol.
// Welcome holds the model spec inline (up to MAX_LAYERS layers, about 300
// bytes): without alloc there is no box to put it in, and a message lives on
// the stack only while it is handled.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Message<'a> {
    /// Participant → server: who I am.
    #[serde(borrow)]
    Hello(Hello<'a>),
    /// Server → participant: you are in; this is the model.
    Welcome(Welcome),
    /// Server → participant: train (global parameters follow).
    FitIns(FitIns),
    /// Server → participant: evaluate (global parameters follow).
    EvaluateIns(EvaluateIns),
    /// Either way: a chunk of parameters.
    #[serde(borrow)]
    ParamChunk(ParamChunk<'a>),
    /// Participant → server: training done (its parameters were sent as chunks before this).
    FitRes(FitRes),
    /// Participant → server: evaluation done.
    EvaluateRes(EvaluateRes),
    /// Either way: send part of an exchange again.
    Nack(Nack),
    /// Either way: something went wrong.
    #[serde(borrow)]
    Error(ErrorMsg<'a>),
    /// Either way: the conversation ends, with a reason for a human.
    Bye(&'a str),
    /// Server → idle participant: are you still there? (a nonce to echo)
    Ping(u32),
    /// Participant → server: yes (the ping's nonce).
    Pong(u32),
    /// Server → participant, after its hello: prove you hold the key.
    Challenge(Challenge),
    /// Participant → server: the proof ([`super::auth`]).
    Proof(Proof),
}

impl Message<'_> {
    /// The message's name, for error texts and logs.
    pub fn name(&self) -> &'static str {
        match self {
            Message::Hello(_) => "Hello",
            Message::Welcome(_) => "Welcome",
            Message::FitIns(_) => "FitIns",
            Message::EvaluateIns(_) => "EvaluateIns",
            Message::ParamChunk(_) => "ParamChunk",
            Message::FitRes(_) => "FitRes",
            Message::EvaluateRes(_) => "EvaluateRes",
            Message::Nack(_) => "Nack",
            Message::Error(_) => "Error",
            Message::Bye(_) => "Bye",
            Message::Ping(_) => "Ping",
            Message::Pong(_) => "Pong",
            Message::Challenge(_) => "Challenge",
            Message::Proof(_) => "Proof",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_payload_that_is_not_a_whole_number_of_values_is_refused() {
        // Found by fuzzing (fuzz/corpus/message): one stray byte made a chunk
        // of "0 values" that decoded fine, the byte silently dropped.
        let mut out = [0.0f32; 1];
        let stray = [0u8, 0, 128, 63, 7];
        for values in [Values::F32(&stray), Values::Q16(&stray)] {
            assert_eq!(
                values.decode(&mut out),
                Err(Error::PartialValue {
                    bytes: 5,
                    value_bytes: 4
                })
            );
        }
        Values::F32(&stray[..4]).decode(&mut out).unwrap();
        assert_eq!(out, [1.0]);
    }
}
