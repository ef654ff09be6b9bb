//! Bookkeeping for one chunked parameter transfer over a lossy link.
//!
//! A sender streams a model as chunks of `per_chunk` values (the last one
//! shorter) without waiting for acknowledgements. The receiver writes each
//! chunk where its offset says and ticks it off here; [`Chunks`] tells it which
//! values are still missing, so it can ask for exactly those again with a
//! `Nack` (selective repeat). The set is a bitmap in the caller's buffer: a
//! device keeps it in a fixed array, a host in a `Vec`, and neither needs a
//! model-sized receive buffer.

use crate::Error;

/// A run of missing values: ask for `offset .. offset + count` again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    /// First missing value.
    pub offset: u32,
    /// Number of missing values.
    pub count: u32,
}

/// What [`Chunks::arrive`] made of a chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arrival {
    /// A chunk not seen before. `skipped` is set when it lies past values that
    /// have not come yet: the chunks in between were lost or damaged on the way.
    New {
        /// The values skipped over, to ask for again.
        skipped: Option<Span>,
    },
    /// A chunk that had already arrived (a resend the receiver no longer needed).
    Duplicate,
}

/// Which chunks of a transfer of `total` values have arrived.
#[derive(Debug, Clone)]
pub struct Chunks<B> {
    seen: B,
    total: u32,
    per_chunk: u32,
    missing: u32,
    next: u32,
}

impl<B: AsRef<[u32]> + AsMut<[u32]>> Chunks<B> {
    /// Bitmap words needed for a transfer of `total` values in chunks of `per_chunk`.
    pub const fn words(total: u32, per_chunk: u32) -> usize {
        if per_chunk == 0 {
            return 0;
        }
        total.div_ceil(per_chunk).div_ceil(32) as usize
    }

    /// A tracker keeping its bitmap in `seen`; nothing is expected until [`Chunks::start`].
    pub fn new(seen: B) -> Self {
        Chunks {
            seen,
            total: 0,
            per_chunk: 1,
            missing: 0,
            next: 0,
        }
    }

    /// Expects a new transfer of `total` values in chunks of `per_chunk`, none arrived yet.
    pub fn start(&mut self, total: u32, per_chunk: u32) -> Result<(), Error> {
        if per_chunk == 0 {
            return Err(Error::BadConfig("a chunk must hold at least one value"));
        }
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
        self.total = total;
        self.per_chunk = per_chunk;
        self.missing = total.div_ceil(per_chunk);
        self.next = 0;
        Ok(())
    }

    /// Ticks off the chunk of `len` values at `offset`; it must be one of the
    /// transfer's chunks exactly (aligned to `per_chunk`, the right length).
    pub fn arrive(&mut self, offset: u32, len: usize) -> Result<Arrival, Error> {
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
        let seen = &mut self.seen.as_mut()[word];
        if *seen & bit != 0 {
            return Ok(Arrival::Duplicate);
        }
        *seen |= bit;
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
    pub fn first_missing(&self) -> Option<Span> {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn tracker(total: u32, per_chunk: u32) -> Chunks<Vec<u32>> {
        let mut c = Chunks::new(vec![0; Chunks::<Vec<u32>>::words(total, per_chunk)]);
        c.start(total, per_chunk).unwrap();
        c
    }

    #[test]
    fn in_order_chunks_complete_the_transfer() {
        let mut c = tracker(10, 4);
        for (offset, len) in [(0, 4), (4, 4), (8, 2)] {
            assert_eq!(
                c.arrive(offset, len).unwrap(),
                Arrival::New { skipped: None }
            );
        }
        assert!(c.is_complete());
        assert_eq!(c.first_missing(), None);
    }

    #[test]
    fn a_lost_chunk_shows_as_skipped_and_missing_until_resent() {
        let mut c = tracker(100, 10);
        c.arrive(0, 10).unwrap();
        assert_eq!(
            c.arrive(30, 10).unwrap(),
            Arrival::New {
                skipped: Some(Span {
                    offset: 10,
                    count: 20
                })
            }
        );
        for offset in (40..100).step_by(10) {
            c.arrive(offset, 10).unwrap();
        }
        assert_eq!(
            c.first_missing(),
            Some(Span {
                offset: 10,
                count: 20
            })
        );
        assert_eq!(c.arrive(20, 10).unwrap(), Arrival::New { skipped: None });
        assert_eq!(c.arrive(20, 10).unwrap(), Arrival::Duplicate);
        assert_eq!(
            c.first_missing(),
            Some(Span {
                offset: 10,
                count: 10
            })
        );
        c.arrive(10, 10).unwrap();
        assert!(c.is_complete());
    }

    #[test]
    fn a_missing_tail_is_reported_short() {
        let mut c = tracker(25, 10);
        c.arrive(0, 10).unwrap();
        assert_eq!(
            c.first_missing(),
            Some(Span {
                offset: 10,
                count: 15
            })
        );
    }

    #[test]
    fn misaligned_or_wrong_length_chunks_are_refused() {
        let mut c = tracker(25, 10);
        assert!(c.arrive(5, 10).is_err());
        assert!(c.arrive(20, 10).is_err());
        assert!(c.arrive(30, 10).is_err());
        assert!(c.arrive(10, 9).is_err());
        assert!(c.arrive(20, 5).is_ok());
    }

    #[test]
    fn a_bitmap_too_small_is_an_error_not_a_panic() {
        let mut c = Chunks::new([0u32; 1]);
        assert!(c.start(33 * 10, 10).is_err());
        assert!(c.start(32 * 10, 10).is_ok());
        assert!(c.start(10, 0).is_err());
    }

    #[test]
    fn restarting_forgets_the_previous_transfer() {
        let mut c = tracker(20, 10);
        c.arrive(0, 10).unwrap();
        c.start(20, 10).unwrap();
        assert_eq!(c.arrive(0, 10).unwrap(), Arrival::New { skipped: None });
        assert!(!c.is_complete());
    }
}
