//! A round's aggregation, by strategy.
//!
//! Mean strategies fold each update into one streaming FedAvg accumulator as
//! soon as it arrives (the server holds one model-sized sum, not one model per
//! client), then apply the server optimizer. Median, trimmed mean and Krum need
//! every vector at once and keep them for the round: the documented exception.

use fedcore::aggregate::{
    FedAvg, ServerOpt, ServerOptimizer, coordinate_median, multi_krum, trimmed_mean,
};

use crate::config::{Krum, Strategy};

/// The aggregation state of a run.
pub enum Aggregator {
    /// FedAvg, then a server optimizer.
    Mean {
        /// Sum of the round's weighted updates.
        sum: FedAvg<Vec<f64>>,
        /// Server optimizer and its state.
        opt: ServerOptimizer<Vec<f32>>,
        /// Scratch for the round's average.
        avg: Vec<f32>,
    },
    /// Every vector of the round, for an order statistic.
    Robust {
        /// Median, trimmed mean or Krum.
        strategy: Strategy,
        /// Trim fraction of the trimmed mean.
        trim: f32,
        /// Krum's settings.
        krum: Krum,
        /// The round's vectors.
        vectors: Vec<Vec<f32>>,
    },
}

impl Aggregator {
    /// An aggregator for a model of `params` parameters.
    pub fn new(
        strategy: Strategy,
        opt: ServerOpt,
        params: usize,
        trim: f32,
        krum: Krum,
    ) -> Result<Self, fedcore::Error> {
        Ok(match strategy {
            Strategy::Median | Strategy::TrimmedMean | Strategy::Krum => Aggregator::Robust {
                strategy,
                trim,
                krum,
                vectors: Vec::new(),
            },
            _ => Aggregator::Mean {
                sum: FedAvg::new(vec![0.0; params]),
                opt: ServerOptimizer::new(opt, params, vec![0.0; opt.state_vectors() * params])?,
                avg: vec![0.0; params],
            },
        })
    }

    /// The server optimizer's state (empty for the robust strategies), for a checkpoint.
    pub fn optimizer_state(&self) -> &[f32] {
        match self {
            Aggregator::Mean { opt, .. } => opt.state(),
            Aggregator::Robust { .. } => &[],
        }
    }

    /// Continues from a checkpoint's optimizer state.
    pub fn restore_optimizer(&mut self, saved: &[f32]) -> Result<(), fedcore::Error> {
        match self {
            Aggregator::Mean { opt, avg, .. } => {
                let state = vec![0.0; opt.state().len()];
                *opt = ServerOptimizer::resume(opt.opt(), avg.len(), state, saved)?;
                Ok(())
            }
            Aggregator::Robust { .. } if saved.is_empty() => Ok(()),
            Aggregator::Robust { .. } => Err(fedcore::Error::BufferLength {
                expected: 0,
                got: saved.len(),
            }),
        }
    }

    /// Starts a round.
    pub fn begin(&mut self) {
        match self {
            Aggregator::Mean { sum, .. } => sum.reset(),
            Aggregator::Robust { vectors, .. } => vectors.clear(),
        }
    }

    /// Adds one participant's whole update, trained on `examples` samples.
    pub fn add(&mut self, params: Vec<f32>, examples: u64) -> Result<(), fedcore::Error> {
        match self {
            Aggregator::Mean { sum, .. } => {
                sum.fold(0, params.iter().copied(), examples)?;
                sum.commit(examples);
            }
            Aggregator::Robust { vectors, .. } => vectors.push(params),
        }
        Ok(())
    }

    /// Moves `global` to the round's aggregate.
    pub fn finish(&mut self, global: &mut [f32]) -> Result<(), fedcore::Error> {
        match self {
            Aggregator::Mean { sum, opt, avg } => {
                sum.finish(avg)?;
                opt.step(global, avg)
            }
            Aggregator::Robust {
                strategy,
                trim,
                krum,
                vectors,
            } => {
                let refs: Vec<&[f32]> = vectors.iter().map(Vec::as_slice).collect();
                let n = refs.len();
                match strategy {
                    Strategy::Median => coordinate_median(&refs, &mut vec![0.0; n], global),
                    Strategy::Krum => {
                        let (mut distances, mut scores) = (vec![0.0; n], vec![0.0; n]);
                        // Fewer updates than the round was planned for (some
                        // failed): keep no more than the honest ones.
                        let keep = krum.keep.min(n.saturating_sub(krum.malicious)).max(1);
                        // It checks everything before it writes `global`.
                        multi_krum(
                            &refs,
                            krum.malicious,
                            keep,
                            &mut distances,
                            &mut scores,
                            global,
                        )
                    }
                    _ => trimmed_mean(&refs, *trim, &mut vec![0.0; n], global),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mean_is_weighted_and_robust_is_not() {
        let mut g = [0.0f32; 2];
        let mut avg =
            Aggregator::new(Strategy::Fedavg, ServerOpt::FedAvg, 2, 0.2, Krum::default()).unwrap();
        avg.begin();
        avg.add(vec![1.0, 1.0], 3).unwrap();
        avg.add(vec![5.0, 9.0], 1).unwrap();
        avg.finish(&mut g).unwrap();
        assert_eq!(g, [2.0, 3.0]);
        let mut med =
            Aggregator::new(Strategy::Median, ServerOpt::FedAvg, 2, 0.2, Krum::default()).unwrap();
        med.begin();
        for v in [[1.0, 1.0], [5.0, 9.0], [2.0, -4.0]] {
            med.add(v.to_vec(), 1000).unwrap();
        }
        med.finish(&mut g).unwrap();
        assert_eq!(g, [2.0, 1.0]);
        med.begin();
        assert!(
            med.finish(&mut g).is_err(),
            "an empty round has nothing to aggregate"
        );
    }
}
