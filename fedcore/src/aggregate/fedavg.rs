//! Streaming FedAvg: `sum_i n_i x_i / sum_i n_i`, folded chunk by chunk.
//!
//! The accumulator holds one f64 per parameter. Chunks of a client's update are
//! folded in as they arrive (`sums[offset..] += n_i · values`), in any order and
//! from any number of clients, and the client is counted by [`FedAvg::commit`]
//! once its upload is whole. A host that must be able to drop a half-received
//! upload keeps that client's chunks aside until they are complete and folds
//! them then; the accumulator itself never needs more than the model's size.
//!
//! f64 sums of f32 values times integer counts are exact for each product and
//! accurate to about 1e-16 relative in the sum, so the result does not depend
//! on the order clients or chunks arrive in, to f32 precision.

use crate::Error;

/// The example-weighted mean of client parameter vectors, accumulated in place.
#[derive(Debug, Clone)]
pub struct FedAvg<B> {
    sums: B,
    examples: u64,
    clients: u32,
}

impl<B: AsMut<[f64]> + AsRef<[f64]>> FedAvg<B> {
    /// An empty accumulator over `sums` (one f64 per parameter; zeroed here).
    pub fn new(mut sums: B) -> Self {
        sums.as_mut().fill(0.0);
        FedAvg {
            sums,
            examples: 0,
            clients: 0,
        }
    }

    /// Adds `examples · values` at parameter `offset`.
    pub fn fold(
        &mut self,
        offset: usize,
        values: impl ExactSizeIterator<Item = f32>,
        examples: u64,
    ) -> Result<(), Error> {
        let total = self.sums.as_ref().len();
        let len = values.len();
        let slot = offset
            .checked_add(len)
            .and_then(|end| self.sums.as_mut().get_mut(offset..end))
            .ok_or(Error::ChunkOutOfRange { offset, len, total })?;
        let n = examples as f64;
        for (s, v) in slot.iter_mut().zip(values) {
            *s += n * f64::from(v);
        }
        Ok(())
    }

    /// Counts a client whose whole update has been folded with `examples`.
    pub fn commit(&mut self, examples: u64) {
        self.examples += examples;
        self.clients += 1;
    }

    /// Clients committed so far.
    pub fn clients(&self) -> u32 {
        self.clients
    }

    /// Examples committed so far.
    pub fn examples(&self) -> u64 {
        self.examples
    }

    /// Writes the weighted mean into `out`.
    pub fn finish(&self, out: &mut [f32]) -> Result<(), Error> {
        let sums = self.sums.as_ref();
        if out.len() != sums.len() {
            return Err(Error::BufferLength {
                expected: sums.len(),
                got: out.len(),
            });
        }
        if self.examples == 0 {
            return Err(Error::NothingToAggregate);
        }
        let total = self.examples as f64;
        for (o, s) in out.iter_mut().zip(sums) {
            *o = (s / total) as f32;
        }
        Ok(())
    }

    /// Empties the accumulator for the next round.
    pub fn reset(&mut self) {
        self.sums.as_mut().fill(0.0);
        self.examples = 0;
        self.clients = 0;
    }
}

/// The example-weighted average of a metric: `sum(n_i · m_i) / sum(n_i)`
/// (the reference lab's `weighted_average`).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct WeightedMean {
    sum: f64,
    weight: u64,
}

impl WeightedMean {
    /// Adds one client's metric over `examples` samples.
    pub fn add(&mut self, examples: u64, value: f32) {
        self.sum += examples as f64 * f64::from(value);
        self.weight += examples;
    }

    /// The weighted mean, or `None` when nothing (or only zero-example clients) was added.
    pub fn mean(&self) -> Option<f32> {
        (self.weight > 0).then(|| (self.sum / self.weight as f64) as f32)
    }

    /// Total examples added.
    pub fn weight(&self) -> u64 {
        self.weight
    }
}

impl FromIterator<(u64, f32)> for WeightedMean {
    fn from_iter<I: IntoIterator<Item = (u64, f32)>>(iter: I) -> Self {
        let mut m = WeightedMean::default();
        for (n, v) in iter {
            m.add(n, v);
        }
        m
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::vec::Vec;

    fn clients() -> impl Strategy<Value = Vec<(u64, Vec<f32>)>> {
        (1usize..40).prop_flat_map(|p| {
            prop::collection::vec(
                (1u64..100_000, prop::collection::vec(-100.0f32..100.0, p)),
                1..8,
            )
        })
    }

    fn aggregate(clients: &[(u64, Vec<f32>)], chunk: usize) -> Vec<f32> {
        let p = clients[0].1.len();
        let mut agg = FedAvg::new(std::vec![0.0f64; p]);
        for (n, x) in clients {
            for (i, c) in x.chunks(chunk).enumerate() {
                agg.fold(i * chunk, c.iter().copied(), *n).unwrap();
            }
            agg.commit(*n);
        }
        let mut out = std::vec![0.0f32; p];
        agg.finish(&mut out).unwrap();
        out
    }

    proptest! {
        #[test]
        fn equals_exact_weighted_mean(clients in clients(), chunk in 1usize..16) {
            let got = aggregate(&clients, chunk);
            let total: u64 = clients.iter().map(|c| c.0).sum();
            for (j, g) in got.iter().enumerate() {
                let exact: f64 = clients.iter().map(|(n, x)| *n as f64 * f64::from(x[j])).sum::<f64>() / total as f64;
                prop_assert!((f64::from(*g) - exact).abs() <= 1e-6 * exact.abs().max(1.0), "{} vs {}", g, exact);
            }
        }

        #[test]
        fn order_and_chunking_do_not_matter(mut clients in clients(), chunk in 1usize..16) {
            let a = aggregate(&clients, chunk);
            clients.reverse();
            let b = aggregate(&clients, 1 + chunk / 2);
            for (x, y) in a.iter().zip(&b) {
                // Identical up to the last bit of f32, barring a rounding-boundary tie.
                prop_assert!((x - y).abs() <= f32::EPSILON * x.abs().max(1e-30), "{} vs {}", x, y);
            }
        }
    }

    #[test]
    fn rejects_out_of_range_and_empty() {
        let mut agg = FedAvg::new([0.0f64; 4]);
        assert_eq!(
            agg.fold(3, [1.0f32, 2.0].into_iter(), 1),
            Err(Error::ChunkOutOfRange {
                offset: 3,
                len: 2,
                total: 4
            })
        );
        assert!(agg.fold(usize::MAX, [1.0f32].into_iter(), 1).is_err());
        assert_eq!(agg.finish(&mut [0.0; 4]), Err(Error::NothingToAggregate));
        agg.fold(0, [1.0f32; 4].into_iter(), 2).unwrap();
        agg.commit(2);
        assert_eq!(
            agg.finish(&mut [0.0; 3]),
            Err(Error::BufferLength {
                expected: 4,
                got: 3
            })
        );
        agg.reset();
        assert_eq!((agg.clients(), agg.examples()), (0, 0));
    }

    #[test]
    fn weighted_average_matches_reference_formula() {
        // The reference lab: sum(n_i * acc_i) / sum(n_i).
        let m: WeightedMean = [(100, 0.9f32), (300, 0.5)].into_iter().collect();
        assert!((m.mean().unwrap() - 0.6).abs() < 1e-7);
        assert_eq!(WeightedMean::default().mean(), None);
        assert_eq!(
            [(0u64, 1.0f32)]
                .into_iter()
                .collect::<WeightedMean>()
                .mean(),
            None
        );
    }
}
