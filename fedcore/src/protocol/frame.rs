//! Frames: a postcard-encoded message and its CRC32, COBS-encoded, ended by 0x00.
//!
//! ```text
//! frame = COBS( postcard(message) ++ crc32_le(postcard(message)) ) ++ 0x00
//! ```
//!
//! COBS removes every zero byte from the body, so 0x00 marks frame ends and a
//! receiver that joins mid-stream, or loses bytes, resynchronises at the next
//! one. The CRC (CRC-32/ISO-HDLC, as in Ethernet and zlib) catches corruption
//! that COBS alone would let through. Encoding is postcard's own flavors chained
//! (CRC, then COBS, then a slice); decoding is [`Decoder`], a fixed buffer fed
//! arbitrary bytes, whose every outcome is a value: it neither allocates nor panics.

use crc::{CRC_32_ISO_HDLC, Crc};
use postcard::ser_flavors::{Cobs, Slice, crc::CrcModifier};

use crate::Error;
use crate::protocol::Message;

/// The frame checksum.
pub const CRC: Crc<u32> = Crc::<u32>::new(&CRC_32_ISO_HDLC);

/// Bytes a [`crate::protocol::ParamChunk`] frame spends on everything but its values, at most:
/// message and values tags, three u32 varints, an f32 scale, the bytes' length varint, the CRC.
const CHUNK_OVERHEAD: usize = 1 + 3 * 5 + 1 + 4 + 5 + 4;

/// Encodes `message` as one frame into `out`; returns the frame (delimiter included).
pub fn encode<'o>(message: &Message<'_>, out: &'o mut [u8]) -> Result<&'o mut [u8], Error> {
    let cobs = Cobs::try_new(Slice::new(out)).map_err(|_| Error::FrameTooLarge)?;
    let flavor = CrcModifier::new(cobs, CRC.digest());
    postcard::serialize_with_flavor(message, flavor).map_err(|e| match e {
        postcard::Error::SerializeBufferFull => Error::FrameTooLarge,
        _ => Error::Encode,
    })
}

/// The most encoded bytes a body of `n` bytes can take as a frame (COBS adds one
/// byte per 254 and one more; then the delimiter).
pub const fn max_frame_len(body: usize) -> usize {
    body + body.div_ceil(254) + 1 + 1
}

/// How many values of `value_bytes` each fit in one parameter-chunk frame of at most `max_frame` bytes.
pub fn chunk_capacity(max_frame: usize, value_bytes: usize) -> usize {
    // Largest body whose worst-case frame fits, then what is left for values.
    let mut body = max_frame.saturating_sub(2);
    while body > 0 && max_frame_len(body) > max_frame {
        body -= 1;
    }
    body.saturating_sub(CHUNK_OVERHEAD) / value_bytes.max(1)
}

/// Why a frame was rejected (the decoder has already moved past it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum FrameError {
    /// The frame was longer than the decoder's buffer (the peer ignored the max frame size).
    TooLong,
    /// The bytes between two delimiters are not valid COBS.
    Cobs,
    /// The checksum does not match: the frame was corrupted on the way.
    Crc,
    /// The checksum matches but the body is not a message of this protocol version.
    Message,
    /// `message()` was called when the last `feed` completed no frame.
    NoFrame,
}

impl core::fmt::Display for FrameError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            FrameError::TooLong => {
                "frame longer than the receive buffer: the peer ignored the max frame size"
            }
            FrameError::Cobs => "frame is not valid COBS: bytes were lost or inserted on the link",
            FrameError::Crc => "frame checksum mismatch: the frame was corrupted on the link",
            FrameError::Message => "frame holds no message of this protocol version",
            FrameError::NoFrame => "no complete frame to read: feed more bytes first",
        })
    }
}

impl core::error::Error for FrameError {}

/// What one call to [`Decoder::feed`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Feed {
    /// Every input byte was taken and no frame is complete yet.
    Consumed,
    /// A frame arrived whole with a good checksum: read it with [`Decoder::message`]
    /// before feeding again. `used` input bytes were taken.
    Frame {
        /// Input bytes taken, the frame's delimiter included.
        used: usize,
    },
    /// A frame was rejected and skipped; `used` input bytes were taken.
    Rejected {
        /// Why.
        error: FrameError,
        /// Input bytes taken, the frame's delimiter included.
        used: usize,
    },
}

/// Accumulates bytes into frames in a fixed buffer of `N` bytes (a frame's encoded
/// length without its delimiter must fit).
///
/// Feeding and reading are two steps so that a caller's read loop holds no
/// borrow of the decoder while it waits for more bytes: `feed` until it says
/// `Frame`, then `message()` borrows the frame until the next `feed`.
#[derive(Debug, Clone)]
pub struct Decoder<const N: usize> {
    buf: [u8; N],
    len: usize,
    frame: usize,
    overflowed: bool,
    /// The overflowing frame was reported before its delimiter came.
    reported: bool,
}

impl<const N: usize> Default for Decoder<N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const N: usize> Decoder<N> {
    /// An empty decoder.
    pub const fn new() -> Self {
        Decoder {
            buf: [0; N],
            len: 0,
            frame: 0,
            overflowed: false,
            reported: false,
        }
    }

    /// Takes bytes until a frame ends (or the input does). Empty frames (a lone
    /// 0x00, which senders may use to flush a line) are skipped silently.
    ///
    /// A frame longer than the buffer is reported (`TooLong`) as soon as it
    /// overflows, not at its delimiter, which may never come: a stream without
    /// one is refused after `N` bytes. The rest of that frame is then skipped
    /// silently, up to and including its delimiter.
    pub fn feed(&mut self, input: &[u8]) -> Feed {
        self.frame = 0;
        let mut used = 0;
        loop {
            let rest = &input[used..];
            let Some(end) = rest.iter().position(|&b| b == 0) else {
                self.push(rest);
                if self.overflowed && !self.reported {
                    self.reported = true;
                    return Feed::Rejected {
                        error: FrameError::TooLong,
                        used: input.len(),
                    };
                }
                return Feed::Consumed;
            };
            self.push(&rest[..end]);
            used += end + 1;
            let (len, overflowed, reported) = (self.len, self.overflowed, self.reported);
            self.len = 0;
            self.overflowed = false;
            self.reported = false;
            if overflowed && reported {
                continue;
            }
            if overflowed {
                return Feed::Rejected {
                    error: FrameError::TooLong,
                    used,
                };
            }
            if len == 0 {
                continue;
            }
            let Ok(n) = cobs::decode_in_place(&mut self.buf[..len]) else {
                return Feed::Rejected {
                    error: FrameError::Cobs,
                    used,
                };
            };
            let Some(body) = n.checked_sub(4) else {
                return Feed::Rejected {
                    error: FrameError::Crc,
                    used,
                };
            };
            let crc = u32::from_le_bytes([
                self.buf[body],
                self.buf[body + 1],
                self.buf[body + 2],
                self.buf[body + 3],
            ]);
            if CRC.checksum(&self.buf[..body]) != crc {
                return Feed::Rejected {
                    error: FrameError::Crc,
                    used,
                };
            }
            self.frame = body;
            return Feed::Frame { used };
        }
    }

    /// The message of the frame the last `feed` returned, or why it is not one.
    pub fn message(&self) -> Result<Message<'_>, FrameError> {
        if self.frame == 0 {
            return Err(FrameError::NoFrame);
        }
        postcard::from_bytes(&self.buf[..self.frame]).map_err(|_| FrameError::Message)
    }

    fn push(&mut self, bytes: &[u8]) {
        match self.buf.get_mut(self.len..self.len + bytes.len()) {
            Some(slot) if !self.overflowed => {
                slot.copy_from_slice(bytes);
                self.len += bytes.len();
            }
            _ => self.overflowed = true,
        }
    }
}

/// Frames out of a byte stream: a [`Decoder`] and the caller's receive buffer.
///
/// The one read loop of every driver, without the reading: when
/// [`FrameReader::next_frame`] says it needs bytes, the driver reads what has
/// arrived into [`FrameReader::spare`] (a UART with a timeout, an async socket)
/// and reports how many with [`FrameReader::filled`].
#[derive(Debug, Clone)]
pub struct FrameReader<B, const N: usize> {
    decoder: Decoder<N>,
    buf: B,
    pos: usize,
    len: usize,
}

impl<B: AsRef<[u8]> + AsMut<[u8]>, const N: usize> FrameReader<B, N> {
    /// A reader that receives into `buf` (any size; a frame may span many reads).
    pub const fn new(buf: B) -> Self {
        FrameReader {
            decoder: Decoder::new(),
            buf,
            pos: 0,
            len: 0,
        }
    }

    /// Decodes what is buffered up to the next frame: `Some(Ok(()))` when one
    /// arrived whole (read it with [`FrameReader::message`]), `Some(Err(_))`
    /// when one was rejected and skipped, `None` when every buffered byte is
    /// taken and more must be read.
    pub fn next_frame(&mut self) -> Option<Result<(), FrameError>> {
        while self.pos < self.len {
            let input = &self.buf.as_ref()[self.pos..self.len];
            match self.decoder.feed(input) {
                Feed::Consumed => self.pos = self.len,
                Feed::Frame { used } => {
                    self.pos += used;
                    return Some(Ok(()));
                }
                Feed::Rejected { error, used } => {
                    self.pos += used;
                    return Some(Err(error));
                }
            }
        }
        None
    }

    /// Where to read the next bytes (call after `next_frame` returned `None`).
    pub fn spare(&mut self) -> &mut [u8] {
        self.buf.as_mut()
    }

    /// `n` bytes were read into [`FrameReader::spare`].
    pub fn filled(&mut self, n: usize) {
        self.pos = 0;
        self.len = n.min(self.buf.as_ref().len());
    }

    /// The message of the frame `next_frame` last returned, valid until the next call.
    pub fn message(&self) -> Result<Message<'_>, FrameError> {
        self.decoder.message()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ModelSpec;
    use crate::protocol::*;
    use crate::scalar::Scalar;
    use crate::train::TrainConfig;
    use proptest::prelude::*;
    use std::vec::Vec;

    fn samples(bytes: &[u8]) -> Vec<Message<'_>> {
        Vec::from([
            Message::Hello(Hello {
                version: PROTOCOL_VERSION,
                name: "dev-1",
                kind: ParticipantKind::Device,
                train_examples: 10_000,
                test_examples: 1_666,
                max_frame: 256,
                encoding: Encoding::Int8,
                data: DataShape {
                    values: 784,
                    labels: 10,
                },
            }),
            Message::Welcome(Welcome {
                client_id: 7,
                model: ModelSpec::reference_cnn(),
            }),
            Message::FitIns(FitIns {
                round: 40,
                config: TrainConfig::default(),
                seed: u64::MAX,
                evaluate_first: true,
            }),
            Message::EvaluateIns(EvaluateIns { round: 1 }),
            Message::ParamChunk(ParamChunk {
                round: 2,
                offset: 100,
                total: 542_230,
                values: Values::F32(bytes),
            }),
            Message::ParamChunk(ParamChunk {
                round: 2,
                offset: 0,
                total: 10,
                values: Values::Int8 {
                    scale: 0.5,
                    values: bytes,
                },
            }),
            Message::ParamChunk(ParamChunk {
                round: 3,
                offset: 4,
                total: 8,
                values: Values::Q16(bytes),
            }),
            Message::FitRes(FitRes {
                round: 5,
                examples: 12_000,
                loss: 0.25,
                accuracy: 0.93,
                seconds: 1.5,
            }),
            Message::EvaluateRes(EvaluateRes {
                round: 5,
                examples: 2_000,
                loss: 0.3,
                accuracy: 0.9,
                seconds: 0.25,
            }),
            Message::Nack(Nack {
                round: 5,
                resend: Resend::Values {
                    offset: 224,
                    count: 223,
                },
            }),
            Message::Nack(Nack {
                round: 4,
                resend: Resend::Result,
            }),
            Message::Error(ErrorMsg {
                code: ErrorCode::Unsupported,
                text: "model does not fit in 128 KiB",
            }),
            Message::Bye("done"),
            Message::Ping(7),
            Message::Pong(7),
        ])
    }

    fn frames(messages: &[Message<'_>]) -> Vec<u8> {
        let mut stream = Vec::new();
        for m in messages {
            let mut out = [0u8; 512];
            stream.extend_from_slice(encode(m, &mut out).unwrap());
        }
        stream
    }

    /// Feeds `stream` in pieces split at `cuts`, collecting messages (re-encoded
    /// to bytes to outlive the decoder's borrow) and rejections.
    fn decode_all<const N: usize>(
        stream: &[u8],
        cuts: &[usize],
    ) -> (Vec<Vec<u8>>, Vec<FrameError>) {
        let mut dec = Decoder::<N>::new();
        let (mut msgs, mut errs) = (Vec::new(), Vec::new());
        let mut start = 0;
        for &end in cuts.iter().chain([stream.len()].iter()) {
            let mut piece = &stream[start..end.max(start)];
            start = end.max(start);
            loop {
                match dec.feed(piece) {
                    Feed::Consumed => break,
                    Feed::Frame { used } => {
                        match dec.message() {
                            Ok(message) => msgs.push(postcard::to_allocvec(&message).unwrap()),
                            Err(e) => errs.push(e),
                        }
                        piece = &piece[used..];
                    }
                    Feed::Rejected { error, used } => {
                        errs.push(error);
                        piece = &piece[used..];
                    }
                }
            }
        }
        (msgs, errs)
    }

    #[test]
    fn every_message_round_trips() {
        let payload: Vec<u8> = (0..40u8).collect();
        for m in samples(&payload) {
            let mut out = [0u8; 512];
            let frame = encode(&m, &mut out).unwrap();
            assert_eq!(frame.last(), Some(&0));
            assert!(!frame[..frame.len() - 1].contains(&0));
            let mut dec = Decoder::<512>::new();
            assert_eq!(dec.feed(frame), Feed::Frame { used: frame.len() });
            assert_eq!(dec.message(), Ok(m));
            assert_eq!(dec.feed(&[]), Feed::Consumed);
            assert_eq!(dec.message(), Err(FrameError::NoFrame));
        }
    }

    #[test]
    fn a_stream_split_at_every_position_decodes_the_same() {
        let payload: Vec<u8> = (0..40u8).collect();
        let msgs = samples(&payload);
        let stream = frames(&msgs);
        let expected: Vec<Vec<u8>> = msgs
            .iter()
            .map(|m| postcard::to_allocvec(m).unwrap())
            .collect();
        for cut in 0..=stream.len() {
            let (got, errs) = decode_all::<512>(&stream, &[cut]);
            assert_eq!(got, expected, "split at {cut}");
            assert!(errs.is_empty());
        }
        // Byte by byte.
        let cuts: Vec<usize> = (0..stream.len()).collect();
        assert_eq!(decode_all::<512>(&stream, &cuts).0, expected);
    }

    #[test]
    fn a_frame_reader_reassembles_frames_across_reads_of_any_size() {
        let payload: Vec<u8> = (0..40u8).collect();
        let msgs = samples(&payload);
        let mut stream = vec![0x55, 0x66, 0x00]; // garbage before the first frame
        stream.extend(frames(&msgs));
        let expected: Vec<Vec<u8>> = msgs
            .iter()
            .map(|m| postcard::to_allocvec(m).unwrap())
            .collect();
        for read_size in [1usize, 3, 7, 64, 4096] {
            let mut reader = FrameReader::<_, 512>::new(vec![0u8; read_size]);
            let (mut input, mut got, mut rejected) = (&stream[..], Vec::new(), 0);
            loop {
                match reader.next_frame() {
                    Some(Ok(())) => {
                        got.push(postcard::to_allocvec(&reader.message().unwrap()).unwrap())
                    }
                    Some(Err(_)) => rejected += 1,
                    None if input.is_empty() => break,
                    None => {
                        let n = input.len().min(reader.spare().len());
                        reader.spare()[..n].copy_from_slice(&input[..n]);
                        reader.filled(n);
                        input = &input[n..];
                    }
                }
            }
            assert_eq!(got, expected, "reads of {read_size} bytes");
            assert_eq!(rejected, 1, "the garbage is one rejected frame");
        }
    }

    #[test]
    fn corruption_is_rejected_and_the_next_frame_decodes() {
        let payload = [1u8, 2, 3, 4, 5, 6, 7, 8];
        let msgs = samples(&payload);
        let stream = frames(&msgs[..3]);
        let first_end = stream.iter().position(|&b| b == 0).unwrap();
        for i in 0..first_end {
            for bit in 0..8 {
                let mut bad = stream.clone();
                bad[i] ^= 1 << bit;
                let (got, errs) = decode_all::<512>(&bad, &[]);
                // A flipped bit may create a delimiter and split the frame in two,
                // but never passes as a message, and the frames after it survive.
                let tail: Vec<Vec<u8>> = msgs[1..3]
                    .iter()
                    .map(|m| postcard::to_allocvec(m).unwrap())
                    .collect();
                assert_eq!(got, tail, "byte {i} bit {bit}");
                assert!(!errs.is_empty());
            }
        }
    }

    #[test]
    fn an_oversized_frame_is_reported_and_skipped() {
        let big = [7u8; 300];
        let msgs = [
            Message::ParamChunk(ParamChunk {
                round: 1,
                offset: 0,
                total: 300,
                values: Values::F32(&big),
            }),
            Message::EvaluateIns(EvaluateIns { round: 9 }),
        ];
        let (got, errs) = decode_all::<64>(&frames(&msgs), &[]);
        assert_eq!(errs, [FrameError::TooLong]);
        assert_eq!(got, [postcard::to_allocvec(&msgs[1]).unwrap()]);
    }

    #[test]
    fn a_stream_without_a_delimiter_is_refused_once_as_soon_as_it_overflows() {
        let mut decoder = Decoder::<64>::new();
        let mut reported_at = std::vec::Vec::new();
        for piece in 0..1000 {
            match decoder.feed(&[0x55; 16]) {
                Feed::Consumed => {}
                Feed::Rejected {
                    error: FrameError::TooLong,
                    used: 16,
                } => reported_at.push(piece),
                other => panic!("{other:?}"),
            }
        }
        // The fifth piece takes it past 64 bytes: reported then, and only then.
        assert_eq!(reported_at, [4]);
        // Its delimiter ends it silently; the next frame decodes.
        let mut rest = std::vec![0u8];
        rest.extend(frames(&[Message::Ping(3)]));
        assert!(matches!(decoder.feed(&rest), Feed::Frame { .. }));
        assert_eq!(decoder.message(), Ok(Message::Ping(3)));
    }

    #[test]
    fn encoding_refuses_a_too_small_buffer() {
        let mut out = [0u8; 8];
        let m = Message::Bye("a reason longer than eight bytes");
        assert_eq!(encode(&m, &mut out).map(|_| ()), Err(Error::FrameTooLarge));
    }

    #[test]
    fn chunks_fill_but_never_exceed_the_max_frame() {
        for max_frame in [64usize, 256, 1024, 65_536] {
            for enc in [Encoding::F32, Encoding::Int8, Encoding::Q16] {
                let n = chunk_capacity(max_frame, enc.value_bytes());
                assert!(n > 0);
                let vals = std::vec![-1.234e30f32; n];
                let mut buf = std::vec![0u8; n * 4];
                let values = Values::encode(&vals, enc, &mut buf).unwrap();
                let m = Message::ParamChunk(ParamChunk {
                    round: u32::MAX,
                    offset: u32::MAX,
                    total: u32::MAX,
                    values,
                });
                let mut out = std::vec![0u8; max_frame];
                let len = encode(&m, &mut out).unwrap().len();
                assert!(
                    len <= max_frame && len + 16 * enc.value_bytes() > max_frame / 2,
                    "{max_frame} {enc:?}: {len}"
                );
            }
        }
        // A 256-byte device frame carries 223 int8 values.
        assert_eq!(chunk_capacity(256, 1), 223);
    }

    #[test]
    fn values_decode_into_every_scalar() {
        let src = [0.5f32, -1.25, 3.0];
        for enc in [Encoding::F32, Encoding::Int8, Encoding::Q16] {
            let mut buf = [0u8; 12];
            let values = Values::encode(&src, enc, &mut buf).unwrap();
            let mut as_f32 = [0.0f32; 3];
            values.decode(&mut as_f32).unwrap();
            let mut fx = [crate::scalar::Fixed::ZERO; 3];
            values.decode(&mut fx).unwrap();
            for ((a, b), c) in src.iter().zip(&as_f32).zip(&fx) {
                assert!(
                    (a - b).abs() < 0.02 && (a - c.to_f32()).abs() < 0.02,
                    "{enc:?}: {a} {b} {c}"
                );
            }
            assert!(values.decode(&mut [0.0f32; 2]).is_err());
        }
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..2048), cut in 0usize..2048) {
            let cut = cut.min(bytes.len());
            let _ = decode_all::<128>(&bytes, &[cut]);
            let _ = decode_all::<1024>(&bytes, &[]);
        }

        #[test]
        fn garbage_before_a_frame_costs_only_that_frame(garbage in prop::collection::vec(any::<u8>(), 0..300)) {
            let msgs = [Message::Nack(Nack { round: 1, resend: Resend::Instruction })];
            let mut stream = garbage.clone();
            stream.push(0);
            stream.extend(frames(&msgs));
            let (got, _) = decode_all::<512>(&stream, &[]);
            prop_assert_eq!(got.last(), Some(&postcard::to_allocvec(&msgs[0]).unwrap()));
        }
    }
}
