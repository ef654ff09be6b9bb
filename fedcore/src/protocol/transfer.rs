//! The lossy-transfer engine: chunked parameter transfers with selective repeat, sans I/O.
//!
//! Every parameter stream in the federation goes through here, whichever side
//! sends it and whatever the line: the device's download and upload, a host's
//! strict TCP transfers, and the server's serial conversations. The drivers own
//! the bytes and the clock; this module decides what they mean.
//!
//! - [`Chunking`]: how a vector of `total` values is cut into chunks that fit a
//!   peer's frames, which chunks cover a span (the whole vector, or what a
//!   `Nack` asked for), and one chunk encoded as one frame: the sender's half.
//! - [`Receiver`]: the receiver's half. It takes each chunk, in any order,
//!   straight into the destination vector, ticks it off in a bitmap kept in the
//!   caller's buffer (a device's fixed array, a host's `Vec`), and says what is
//!   still missing so the driver can ask for exactly that again. A chunk is
//!   marked only once its values decoded, so a damaged one is asked for again.
//! - [`RetryPolicy`] and [`Retries`]: how long a silence may last before the
//!   receiver asks again, scaled by the line's byte rate (a slow line is not
//!   declared stalled too early, a fast one recovers quickly), and how many
//!   unanswered requests in a row mean the link has stalled.
//!
//! A strict driver (TCP, where nothing is lost) uses the same receiver and
//! treats a skipped or repeated chunk as a protocol error.

use crate::Error;
use crate::protocol::frame::{self, chunk_capacity};
use crate::protocol::{Encoding, Message, ParamChunk, Values};
use crate::scalar::Scalar;

/// A run of values: `offset .. offset + count`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    /// First value.
    pub offset: u32,
    /// Number of values.
    pub count: u32,
}

impl Span {
    /// The whole of a vector of `total` values.
    pub const fn all(total: u32) -> Self {
        Span {
            offset: 0,
            count: total,
        }
    }
}

/// How a vector is cut into chunks for a peer, and the sender's half of a transfer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Chunking {
    total: u32,
    per_chunk: u32,
    encoding: Encoding,
}

impl Chunking {
    /// Chunks of `total` values in `encoding`, as many values each as fit in a
    /// parameter-chunk frame of at most `max_frame` bytes.
    pub fn new(total: usize, max_frame: usize, encoding: Encoding) -> Result<Self, Error> {
        let per_chunk = chunk_capacity(max_frame, encoding.value_bytes());
        if per_chunk == 0 {
            return Err(Error::BadConfig(
                "the max frame is too small for a parameter chunk of one value",
            ));
        }
        let total = u32::try_from(total).map_err(|_| Error::BadConfig("model too large"))?;
        Ok(Chunking {
            total,
            per_chunk: u32::try_from(per_chunk).unwrap_or(u32::MAX),
            encoding,
        })
    }

    /// Values in the whole vector.
    pub fn total(&self) -> u32 {
        self.total
    }

    /// Values in each chunk (the last one may hold fewer).
    pub fn per_chunk(&self) -> u32 {
        self.per_chunk
    }

    /// Bytes of the value buffer [`Chunking::encode`] needs.
    pub fn value_buffer_len(&self) -> usize {
        self.per_chunk as usize * self.encoding.value_bytes()
    }

    /// Offsets of the chunks that hold any value of `span`, in order (none past the end).
    pub fn offsets(&self, span: Span) -> impl Iterator<Item = u32> + use<> {
        let per_chunk = self.per_chunk;
        let first = span.offset / per_chunk * per_chunk;
        let end = span.offset.saturating_add(span.count).min(self.total);
        (first..end).step_by(per_chunk as usize)
    }

    /// Encodes the chunk at `offset` of `params` (round `round`) as one frame in
    /// `frame_buf`, through `value_buf` (at least [`Chunking::value_buffer_len`]).
    pub fn encode<'f, S: Scalar>(
        &self,
        round: u32,
        params: &[S],
        offset: u32,
        value_buf: &mut [u8],
        frame_buf: &'f mut [u8],
    ) -> Result<&'f mut [u8], Error> {
        if params.len() != self.total as usize {
            return Err(Error::BufferLength {
                expected: self.total as usize,
                got: params.len(),
            });
        }
        let start = offset as usize;
        let end = (start + self.per_chunk as usize).min(params.len());
        let chunk = params.get(start..end).ok_or(Error::ChunkOutOfRange {
            offset: start,
            len: self.per_chunk as usize,
            total: params.len(),
        })?;
        let values = Values::encode(chunk, self.encoding, value_buf)?;
        let message = Message::ParamChunk(ParamChunk {
            round,
            offset,
            total: self.total,
            values,
        });
        frame::encode(&message, frame_buf)
    }
}

/// What [`Receiver::accept`] made of a chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arrival {
    /// A chunk not seen before, now stored. `skipped` is set when it lies past
    /// values that have not come yet: the chunks in between were lost or
    /// damaged on the way, and can be asked for at once.
    New {
        /// The values skipped over, to ask for again.
        skipped: Option<Span>,
    },
    /// A chunk that had already arrived (a resend the receiver no longer needed).
    Duplicate,
}

/// The receiver's half of a transfer: chunks into the destination, and what is missing.
#[derive(Debug, Clone)]
pub struct Receiver<B> {
    seen: B,
    /// Round of the open transfer, if one is open.
    round: Option<u32>,
    total: u32,
    per_chunk: u32,
    missing: u32,
    next: u32,
}

impl<B: AsRef<[u32]> + AsMut<[u32]>> Receiver<B> {
    /// Bitmap words needed for a transfer of `total` values in chunks of `per_chunk`.
    pub const fn words(total: u32, per_chunk: u32) -> usize {
        if per_chunk == 0 {
            return 0;
        }
        total.div_ceil(per_chunk).div_ceil(32) as usize
    }

    /// A receiver keeping its bitmap in `seen`; no transfer is open until [`Receiver::start`].
    pub fn new(seen: B) -> Self {
        Receiver {
            seen,
            round: None,
            total: 0,
            per_chunk: 1,
            missing: 0,
            next: 0,
        }
    }

    /// Opens the transfer of round `round`, cut as `chunking` says, none arrived yet.
    pub fn start(&mut self, round: u32, chunking: &Chunking) -> Result<(), Error> {
        let (total, per_chunk) = (chunking.total, chunking.per_chunk);
        let words = Self::words(total, per_chunk);
        let got = self.seen.as_ref().len();
        let seen = self
            .seen
            .as_mut()
            .get_mut(..words)
            .ok_or(Error::BufferLength {
                expected: words,
                got,
            })?;
        seen.fill(0);
        self.round = Some(round);
        self.total = total;
        self.per_chunk = per_chunk;
        self.missing = total.div_ceil(per_chunk);
        self.next = 0;
        Ok(())
    }

    /// Closes the transfer: chunks that come later are of no open round.
    pub fn close(&mut self) {
        self.round = None;
    }

    /// Takes `chunk` into `dest` (the whole vector being received) and ticks it off.
    ///
    /// Refused, with nothing stored or marked: a chunk of another round
    /// ([`Error::ChunkRound`]), of a model of another size ([`Error::ChunkTotal`]),
    /// one that is not exactly one of the transfer's chunks
    /// ([`Error::ChunkOutOfRange`]), and one whose values do not decode (a NaN
    /// scale: [`Error::NonFinite`]).
    pub fn accept<S: Scalar>(
        &mut self,
        chunk: &ParamChunk<'_>,
        dest: &mut [S],
    ) -> Result<Arrival, Error> {
        if self.round != Some(chunk.round) {
            return Err(Error::ChunkRound {
                expected: self.round,
                got: chunk.round,
            });
        }
        if chunk.total != self.total {
            return Err(Error::ChunkTotal {
                expected: self.total,
                got: chunk.total,
            });
        }
        if dest.len() != self.total as usize {
            return Err(Error::BufferLength {
                expected: self.total as usize,
                got: dest.len(),
            });
        }
        let (offset, len) = (chunk.offset, chunk.values.len());
        let expected_len = self.total.saturating_sub(offset).min(self.per_chunk);
        if !offset.is_multiple_of(self.per_chunk)
            || offset >= self.total
            || len != expected_len as usize
        {
            return Err(Error::ChunkOutOfRange {
                offset: offset as usize,
                len,
                total: self.total as usize,
            });
        }
        let index = (offset / self.per_chunk) as usize;
        let (word, bit) = (index / 32, 1u32 << (index % 32));
        if self.seen.as_ref()[word] & bit != 0 {
            return Ok(Arrival::Duplicate);
        }
        let start = offset as usize;
        chunk.values.decode(&mut dest[start..start + len])?;
        self.seen.as_mut()[word] |= bit;
        self.missing -= 1;
        let skipped = (offset > self.next).then(|| Span {
            offset: self.next,
            count: offset - self.next,
        });
        self.next = self.next.max(offset + expected_len);
        Ok(Arrival::New { skipped })
    }

    /// True when every chunk has arrived.
    pub fn is_complete(&self) -> bool {
        self.missing == 0
    }

    /// The first run of chunks that have not arrived, if any.
    pub fn missing(&self) -> Option<Span> {
        if self.is_complete() {
            return None;
        }
        let chunks = self.total.div_ceil(self.per_chunk);
        let seen = self.seen.as_ref();
        let arrived = |i: u32| seen[(i / 32) as usize] & (1 << (i % 32)) != 0;
        let first = (0..chunks).find(|&i| !arrived(i))?;
        let end = (first..chunks).find(|&i| arrived(i)).unwrap_or(chunks);
        let offset = first * self.per_chunk;
        Some(Span {
            offset,
            count: (end * self.per_chunk).min(self.total) - offset,
        })
    }
}

/// When a receiver asks again, and when it gives up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Silence in the middle of a transfer after which the receiver asks for what is missing.
    pub gap_ms: u64,
    /// Requests in a row that may go unanswered before the link counts as stalled.
    pub max_retries: u32,
}

impl RetryPolicy {
    /// Requests in a row that may go unanswered.
    pub const MAX_RETRIES: u32 = 8;
    /// The part of a gap that does not scale with the line: the peer's reaction
    /// time on a loaded host, and the line's latency.
    const FLOOR_MS: u64 = 100;
    /// Frame times of silence a gap allows on top of the floor: a request and
    /// its answer crossing, with room for a frame already in flight.
    const FRAMES: u64 = 4;
    /// Longest wait between two requests for a result that has not come (the
    /// peer may still be computing it).
    pub const BACKOFF_CAP_MS: u64 = 8_000;

    /// The policy for a line moving `baud` bits a second (10 bits a byte; `None`
    /// for a line with no pacing, such as a pty) with frames of at most `max_frame` bytes.
    pub const fn for_line(baud: Option<u32>, max_frame: usize) -> Self {
        let frame_ms = match baud {
            Some(baud) if baud > 0 => (max_frame as u64 * 10 * 1000).div_ceil(baud as u64),
            _ => 0,
        };
        RetryPolicy {
            gap_ms: Self::FLOOR_MS + Self::FRAMES * frame_ms,
            max_retries: Self::MAX_RETRIES,
        }
    }

    /// The wait before asking again for a result after waiting `wait_ms` in vain:
    /// doubled, up to [`RetryPolicy::BACKOFF_CAP_MS`].
    pub fn backoff(&self, wait_ms: u64) -> u64 {
        wait_ms.saturating_mul(2).min(Self::BACKOFF_CAP_MS)
    }
}

/// Unanswered requests in a row, under a [`RetryPolicy`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retries {
    policy: RetryPolicy,
    unanswered: u32,
}

impl Retries {
    /// None yet.
    pub fn new(policy: RetryPolicy) -> Self {
        Retries {
            policy,
            unanswered: 0,
        }
    }

    /// The policy's gap.
    pub fn gap_ms(&self) -> u64 {
        self.policy.gap_ms
    }

    /// The peer was heard from: the count starts over.
    pub fn progress(&mut self) {
        self.unanswered = 0;
    }

    /// A gap passed in silence: the driver may ask again, unless the link has stalled.
    pub fn silence(&mut self) -> Result<(), Error> {
        self.unanswered += 1;
        if self.unanswered > self.policy.max_retries {
            return Err(Error::Stalled {
                requests: self.policy.max_retries,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{Decoder, Feed};
    use crate::scalar::Fixed;
    use proptest::prelude::*;
    use std::vec;
    use std::vec::Vec;

    fn receiver(round: u32, c: &Chunking) -> Receiver<Vec<u32>> {
        let mut r = Receiver::new(vec![0; Receiver::<Vec<u32>>::words(c.total, c.per_chunk)]);
        r.start(round, c).unwrap();
        r
    }

    /// A chunking of `total` values `per_chunk` at a time (f32, so the frame is sized for it).
    fn chunking(total: usize, per_chunk: usize) -> Chunking {
        let c = Chunking {
            total: total as u32,
            per_chunk: per_chunk as u32,
            encoding: Encoding::F32,
        };
        assert!(per_chunk <= chunk_capacity(4096, 4));
        c
    }

    /// The chunk at `offset` of `params`, as the receiver would decode it from a frame.
    fn arrive(r: &mut Receiver<Vec<u32>>, c: &Chunking, params: &[f32], offset: u32) -> Arrival {
        let mut dest = vec![0.0f32; params.len()];
        let (mut values, mut frame) = (vec![0u8; c.value_buffer_len()], vec![0u8; 4096]);
        let bytes = c
            .encode(1, params, offset, &mut values, &mut frame)
            .unwrap();
        let mut d = Decoder::<4096>::new();
        assert!(matches!(d.feed(bytes), Feed::Frame { .. }));
        let Ok(Message::ParamChunk(chunk)) = d.message() else {
            panic!("not a chunk")
        };
        r.accept(&chunk, &mut dest).unwrap()
    }

    #[test]
    fn in_order_chunks_complete_the_transfer() {
        let (c, params) = (chunking(10, 4), [1.0f32; 10]);
        let mut r = receiver(1, &c);
        assert_eq!(c.offsets(Span::all(10)).collect::<Vec<_>>(), [0, 4, 8]);
        for offset in c.offsets(Span::all(10)) {
            assert_eq!(
                arrive(&mut r, &c, &params, offset),
                Arrival::New { skipped: None }
            );
        }
        assert!(r.is_complete());
        assert_eq!(r.missing(), None);
    }

    #[test]
    fn a_lost_chunk_shows_as_skipped_and_missing_until_resent() {
        let (c, params) = (chunking(100, 10), [0.5f32; 100]);
        let mut r = receiver(1, &c);
        arrive(&mut r, &c, &params, 0);
        assert_eq!(
            arrive(&mut r, &c, &params, 30),
            Arrival::New {
                skipped: Some(Span {
                    offset: 10,
                    count: 20
                })
            }
        );
        for offset in (40..100).step_by(10) {
            arrive(&mut r, &c, &params, offset);
        }
        let missing = r.missing().unwrap();
        assert_eq!(
            missing,
            Span {
                offset: 10,
                count: 20
            }
        );
        assert_eq!(c.offsets(missing).collect::<Vec<_>>(), [10, 20]);
        assert_eq!(
            arrive(&mut r, &c, &params, 20),
            Arrival::New { skipped: None }
        );
        assert_eq!(arrive(&mut r, &c, &params, 20), Arrival::Duplicate);
        assert_eq!(
            r.missing(),
            Some(Span {
                offset: 10,
                count: 10
            })
        );
        arrive(&mut r, &c, &params, 10);
        assert!(r.is_complete());
    }

    #[test]
    fn a_missing_tail_is_reported_short_and_spans_cover_whole_chunks() {
        let (c, params) = (chunking(25, 10), [0.0f32; 25]);
        let mut r = receiver(1, &c);
        arrive(&mut r, &c, &params, 0);
        assert_eq!(
            r.missing(),
            Some(Span {
                offset: 10,
                count: 15
            })
        );
        // A span inside a chunk names that chunk; one past the end names nothing.
        let inside = Span {
            offset: 12,
            count: 1,
        };
        assert_eq!(c.offsets(inside).collect::<Vec<_>>(), [10]);
        let past = Span {
            offset: 30,
            count: u32::MAX,
        };
        assert_eq!(c.offsets(past).count(), 0);
    }

    fn chunk_of(round: u32, offset: u32, total: u32, bytes: &[u8]) -> ParamChunk<'_> {
        ParamChunk {
            round,
            offset,
            total,
            values: Values::F32(bytes),
        }
    }

    #[test]
    fn chunks_that_are_not_the_transfers_are_refused_and_not_marked() {
        let c = chunking(25, 10);
        let mut r = receiver(3, &c);
        let mut dest = [0.0f32; 25];
        let ten = [0u8; 40];
        let five = [0u8; 20];
        for (chunk, why) in [
            (chunk_of(3, 5, 25, &ten), "misaligned"),
            (chunk_of(3, 20, 25, &ten), "too long"),
            (chunk_of(3, 30, 25, &ten), "past the end"),
            (chunk_of(3, 10, 25, &ten[..36]), "too short"),
        ] {
            assert!(
                matches!(
                    r.accept(&chunk, &mut dest),
                    Err(Error::ChunkOutOfRange { .. })
                ),
                "{why}"
            );
        }
        assert_eq!(
            r.accept(&chunk_of(2, 0, 25, &ten), &mut dest),
            Err(Error::ChunkRound {
                expected: Some(3),
                got: 2
            })
        );
        assert_eq!(
            r.accept(&chunk_of(3, 0, 26, &ten), &mut dest),
            Err(Error::ChunkTotal {
                expected: 25,
                got: 26
            })
        );
        let nan = ParamChunk {
            round: 3,
            offset: 0,
            total: 25,
            values: Values::Int8 {
                scale: f32::NAN,
                values: &[1; 10],
            },
        };
        assert_eq!(r.accept(&nan, &mut dest), Err(Error::NonFinite));
        assert_eq!(
            r.missing(),
            Some(Span::all(25)),
            "nothing refused was marked"
        );
        assert_eq!(
            r.accept(&chunk_of(3, 20, 25, &five), &mut dest),
            Ok(Arrival::New {
                skipped: Some(Span {
                    offset: 0,
                    count: 20
                })
            })
        );
        r.close();
        assert_eq!(
            r.accept(&chunk_of(3, 0, 25, &ten), &mut dest),
            Err(Error::ChunkRound {
                expected: None,
                got: 3
            })
        );
    }

    #[test]
    fn a_bitmap_too_small_or_a_frame_too_small_is_an_error_not_a_panic() {
        let mut r = Receiver::new([0u32; 1]);
        assert!(r.start(1, &chunking(33 * 10, 10)).is_err());
        assert!(r.start(1, &chunking(32 * 10, 10)).is_ok());
        assert!(Chunking::new(100, 20, Encoding::F32).is_err());
        assert!(Chunking::new(100, 256, Encoding::Int8).is_ok());
    }

    #[test]
    fn the_gap_scales_with_the_lines_byte_rate() {
        let slow = RetryPolicy::for_line(Some(9_600), 256);
        let uart = RetryPolicy::for_line(Some(115_200), 256);
        let fast = RetryPolicy::for_line(Some(1_000_000), 256);
        let pty = RetryPolicy::for_line(None, 256);
        // 256 bytes take 267 ms at 9600 baud, 23 ms at 115200, 3 ms at 1 Mbaud.
        assert_eq!(slow.gap_ms, 100 + 4 * 267);
        assert_eq!(uart.gap_ms, 100 + 4 * 23);
        assert_eq!(fast.gap_ms, 100 + 4 * 3);
        assert_eq!(pty.gap_ms, 100);
        assert_eq!(uart.backoff(uart.gap_ms), 2 * uart.gap_ms);
        assert_eq!(uart.backoff(6_000), RetryPolicy::BACKOFF_CAP_MS);

        let mut retries = Retries::new(uart);
        for _ in 0..RetryPolicy::MAX_RETRIES {
            retries.silence().unwrap();
        }
        retries.progress();
        for _ in 0..RetryPolicy::MAX_RETRIES {
            retries.silence().unwrap();
        }
        assert_eq!(
            retries.silence(),
            Err(Error::Stalled {
                requests: RetryPolicy::MAX_RETRIES
            })
        );
    }

    /// What the simulated channel did to one frame.
    #[derive(Debug, Clone, Copy)]
    enum Fate {
        Deliver,
        Drop,
        Duplicate,
        /// Held back and delivered after the next frame.
        Reorder,
        /// One bit flipped.
        Corrupt,
    }

    /// A seeded lossy channel of frames.
    struct Channel {
        state: u64,
        loss: u32,
        held: Option<Vec<u8>>,
    }

    impl Channel {
        fn fate(&mut self) -> Fate {
            if self.loss >= 100 {
                return Fate::Drop;
            }
            // xorshift64*: a seeded, dependency-free stream for the test.
            self.state ^= self.state >> 12;
            self.state ^= self.state << 25;
            self.state ^= self.state >> 27;
            let r = self.state.wrapping_mul(0x2545_f491_4f6c_dd1d);
            if (r >> 32) as u32 % 100 >= self.loss {
                return Fate::Deliver;
            }
            match r % 4 {
                0 => Fate::Drop,
                1 => Fate::Duplicate,
                2 => Fate::Reorder,
                _ => Fate::Corrupt,
            }
        }

        /// The frames that come out when `frame` goes in.
        fn pass(&mut self, frame: &[u8]) -> Vec<Vec<u8>> {
            let mut out = Vec::new();
            match self.fate() {
                Fate::Deliver => out.push(frame.to_vec()),
                Fate::Drop => {}
                Fate::Duplicate => {
                    out.push(frame.to_vec());
                    out.push(frame.to_vec());
                }
                Fate::Reorder => {
                    if let Some(earlier) = self.held.replace(frame.to_vec()) {
                        out.push(earlier);
                    }
                    return out;
                }
                Fate::Corrupt => {
                    let mut f = frame.to_vec();
                    let at = (self.state as usize) % (f.len() - 1);
                    f[at] ^= 1 << (self.state % 8);
                    out.push(f);
                }
            }
            out.extend(self.held.take());
            out
        }
    }

    /// Sends `params` to a receiver over a lossy channel with the engine's
    /// selective repeat, in fixed point on the far side; returns what arrived,
    /// or the stall.
    fn transfer(
        params: &[f32],
        max_frame: usize,
        encoding: Encoding,
        seed: u64,
        loss: u32,
    ) -> Result<Vec<Fixed>, Error> {
        let c = Chunking::new(params.len(), max_frame, encoding)?;
        let mut r = Receiver::new(vec![
            0u32;
            Receiver::<Vec<u32>>::words(c.total, c.per_chunk)
        ]);
        r.start(7, &c)?;
        let mut got = vec![Fixed::ZERO; params.len()];
        let mut channel = Channel {
            state: seed | 1,
            loss,
            held: None,
        };
        let mut retries = Retries::new(RetryPolicy::for_line(Some(115_200), max_frame));
        let (mut values, mut frame) = (vec![0u8; c.value_buffer_len()], vec![0u8; max_frame]);
        let mut decoder = Decoder::<1024>::new();
        let mut want = Some(Span::all(c.total));
        while let Some(span) = want {
            let mut heard = false;
            for offset in c.offsets(span) {
                let sent = c.encode(7, params, offset, &mut values, &mut frame)?;
                for delivered in channel.pass(sent) {
                    let Feed::Frame { .. } = decoder.feed(&delivered) else {
                        continue; // damaged: the CRC caught it
                    };
                    let Ok(Message::ParamChunk(chunk)) = decoder.message() else {
                        continue;
                    };
                    heard = true;
                    // Every frame that passes the CRC is one of this transfer's
                    // chunks: a refusal here would be the engine's bug. (A
                    // skipped span would be Nacked at once; the loop below asks
                    // for the first missing span anyway.)
                    r.accept(&chunk, &mut got)?;
                }
            }
            if heard {
                retries.progress();
            } else {
                retries.silence()?;
            }
            want = r.missing();
        }
        Ok(got)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn a_lossy_channel_delivers_every_value_or_reports_a_stall(
            seed in any::<u64>(),
            loss in 0u32..60,
            len in 1usize..3000,
            int8 in any::<bool>(),
        ) {
            let params: Vec<f32> = (0..len).map(|i| ((i as f32) * 0.37).sin() * 3.0).collect();
            let encoding = if int8 { Encoding::Int8 } else { Encoding::F32 };
            match transfer(&params, 256, encoding, seed, loss) {
                Ok(got) => {
                    let c = Chunking::new(len, 256, encoding).unwrap();
                    for (i, (g, p)) in got.iter().zip(&params).enumerate() {
                        // Exact up to the encoding: int8 within a step of its chunk's max.
                        let chunk = i / c.per_chunk as usize * c.per_chunk as usize;
                        let end = (chunk + c.per_chunk as usize).min(len);
                        let max = params[chunk..end].iter().fold(0.0f32, |m, v| m.max(v.abs()));
                        // One Q16.16 step (2^-16) of the receiver's type on top.
                        let bound = if int8 { max / 254.0 } else { 0.0 } + 2.0 / 65536.0;
                        prop_assert!((g.to_f32() - p).abs() <= bound, "value {} is {} not {}", i, g.to_f32(), p);
                    }
                }
                // Nine losses in a row of one chunk are all but impossible below 30%.
                Err(Error::Stalled { .. }) => prop_assert!(loss >= 30, "stalled at {}% loss", loss),
                Err(e) => prop_assert!(false, "unexpected error {}", e),
            }
        }
    }

    #[test]
    fn a_dead_channel_stalls_after_the_policys_retries() {
        let params = [1.0f32; 500];
        assert_eq!(
            transfer(&params, 256, Encoding::Int8, 1, 100).map(|_| ()),
            Err(Error::Stalled {
                requests: RetryPolicy::MAX_RETRIES
            })
        );
    }
}
