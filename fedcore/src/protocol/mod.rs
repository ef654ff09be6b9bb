//! The wire protocol, one for TCP and serial alike.
//!
//! - [`auth`]: admission by key: the server's challenge and the
//!   participant's HMAC-SHA256 proof;
//! - [`message`]: the messages (hello, welcome, fit and evaluate instructions,
//!   parameter chunks, results, nack, error, bye, ping and pong), serde types
//!   encoded with postcard;
//! - [`frame`]: framing (postcard + CRC32, COBS, 0x00 delimiter) and the
//!   fixed-buffer [`Decoder`];
//! - [`transfer`]: the lossy-transfer engine: chunking a vector for a peer's
//!   frames, receiving chunks in any order into the destination, what to ask
//!   for again, and the retry policy scaled by the line's byte rate.
//!
//! # A round, as bytes see it
//! ```text
//! participant                                   server
//!   Hello{version, name, kind, examples, max_frame, encoding}  ->
//!                                   <-  Challenge{nonce}  (with a key file)
//!   Proof{mac}  ->
//!                                   <-  Welcome{client_id, model}
//!                                   <-  FitIns{round r, config, seed, evaluate_first}
//!                                   <-  ParamChunk{round, offset, total, values} ...
//!   EvaluateRes{round r-1, ...}  (only with evaluate_first)  ->
//!   ParamChunk{round, offset, total, values} ...  ->
//!   FitRes{round r, examples, loss, accuracy, seconds}  ->
//!   ... next rounds; after the last one, a standalone evaluation:
//!                                   <-  EvaluateIns{round}, ParamChunk ...
//!   EvaluateRes{round, examples, loss, accuracy, seconds}  ->
//!                                   <-  Bye
//! ```
//! Between jobs the server pings an idle participant (`Ping(nonce)`, answered
//! by `Pong(nonce)`), so one that hangs without closing its link is not
//! counted as available.
//! The aggregate of round r is evaluated by the participants as the first step
//! of round r+1, so the global model crosses each link once per round.
//! Frames never exceed the participant's declared max frame: parameters travel
//! both ways in chunks of [`frame::chunk_capacity`]`(max_frame, value bytes)`
//! values, so no side needs a model-sized receive buffer.
//!
//! Over TCP nothing is lost. On a serial line frames are lost or damaged (the
//! CRC catches it), so the receiver of a parameter stream ticks chunks off with a
//! [`transfer::Receiver`], in any order, and asks for what is missing with
//! `Nack{round, resend}`: `Values{offset, count}` after a gap in the offsets or
//! a silence, `Instruction` when chunks came without their `FitIns`/`EvaluateIns`,
//! `Result` when a `FitRes`/`EvaluateRes` never came. Senders keep what they
//! sent until the next round (the device its parameter buffer and last
//! results), so any of it can be sent again; stale messages of earlier rounds
//! are ignored, and a run of unanswered requests means the link has stalled
//! ([`transfer::RetryPolicy`]).
//!
//! The bytes are the spec; this doctest pins an `EvaluateIns` for round 3:
//! ```
//! use fedcore::protocol::{EvaluateIns, Message, frame};
//! let mut out = [0u8; 32];
//! let bytes = frame::encode(&Message::EvaluateIns(EvaluateIns { round: 3 }), &mut out).unwrap();
//! // COBS(tag 3, round 3, CRC32 LE), then the delimiter; the CRC is zlib.crc32(b"\x03\x03").
//! assert_eq!(bytes, &[0x07, 0x03, 0x03, 0x86, 0x10, 0xfd, 0xf3, 0x00]);
//! ```

pub mod auth;
pub mod frame;
pub mod message;
pub mod transfer;

pub use frame::{Decoder, Feed, FrameError, FrameReader};
pub use message::{
    Board, DataMismatch, DataShape, Encoding, ErrorCode, ErrorMsg, EvaluateIns, EvaluateRes,
    FitIns, FitRes, Hello, Message, Nack, PROTOCOL_VERSION, ParamChunk, ParticipantKind, Resend,
    Values, Welcome,
};
