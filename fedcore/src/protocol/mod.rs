//! The wire protocol, one for TCP and serial alike.
//!
//! - [`message`]: the messages (hello, welcome, fit and evaluate instructions,
//!   parameter chunks, results, nack, error, bye), serde types encoded with postcard;
//! - [`frame`]: framing (postcard + CRC32, COBS, 0x00 delimiter) and the
//!   fixed-buffer [`Decoder`].
//!
//! # A round, as bytes see it
//! ```text
//! participant                                   server
//!   Hello{version, name, kind, examples, max_frame, encoding}  ->
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
//! The aggregate of round r is evaluated by the participants as the first step
//! of round r+1, so the global model crosses each link once per round.
//! Frames never exceed the receiver's declared max frame: parameters travel in
//! chunks sized by [`frame::chunk_capacity`], so no side needs a model-sized
//! receive buffer. A receiver that rejects a chunk frame asks for it again with
//! a `Nack`.
//!
//! The bytes are the spec; this doctest pins an `EvaluateIns` for round 3:
//! ```
//! use fedcore::protocol::{EvaluateIns, Message, frame};
//! let mut out = [0u8; 32];
//! let bytes = frame::encode(&Message::EvaluateIns(EvaluateIns { round: 3 }), &mut out).unwrap();
//! // COBS(tag 3, round 3, CRC32 LE), then the delimiter; the CRC is zlib.crc32(b"\x03\x03").
//! assert_eq!(bytes, &[0x07, 0x03, 0x03, 0x86, 0x10, 0xfd, 0xf3, 0x00]);
//! ```

pub mod frame;
pub mod message;
pub mod transfer;

pub use frame::{Decoder, Feed, FrameError};
pub use message::{
    Encoding, ErrorCode, ErrorMsg, EvaluateIns, EvaluateRes, FitIns, FitRes, Hello, Message, Nack,
    PROTOCOL_VERSION, ParamChunk, ParticipantKind, Resend, Values, Welcome,
};
