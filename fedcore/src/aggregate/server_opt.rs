//! Server optimizers: the averaged client model as a pseudo-gradient.
//!
//! With `x` the global model and `avg` the FedAvg of the clients' models, the
//! update `Δ = avg - x` is fed to an optimizer (Reddi et al., "Adaptive
//! Federated Optimization", ICLR 2021; FedAvgM from Hsu et al., 2019):
//!
//! | optimizer | state | step |
//! | --- | --- | --- |
//! | FedAvg | none | `x = avg` |
//! | FedAvgM | `v` | `v = β v + Δ`; `x += η v` |
//! | FedAdagrad | `m, v` | `m = β1 m + (1-β1) Δ`; `v += Δ²`; `x += η m / (√v + τ)` |
//! | FedAdam | `m, v` | as Adagrad but `v = β2 v + (1-β2) Δ²` |
//! | FedYogi | `m, v` | as Adagrad but `v -= (1-β2) Δ² sign(v - Δ²)` |
//!
//! State starts at zero, as in Flower, so results can be compared with it.

use serde::{Deserialize, Serialize};

use crate::Error;
use crate::scalar::float::sqrt;

/// Which server optimizer, with its hyperparameters.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub enum ServerOpt {
    /// Replace the global model by the average.
    FedAvg,
    /// Server momentum.
    FedAvgM {
        /// Server learning rate `η`.
        lr: f32,
        /// Momentum `β`.
        momentum: f32,
    },
    /// Adaptive, with accumulated squares.
    FedAdagrad {
        /// Server learning rate `η`.
        lr: f32,
        /// First-moment decay `β1`.
        beta1: f32,
        /// Adaptivity `τ`.
        tau: f32,
    },
    /// Adaptive, with exponentially averaged squares.
    FedAdam {
        /// Server learning rate `η`.
        lr: f32,
        /// First-moment decay `β1`.
        beta1: f32,
        /// Second-moment decay `β2`.
        beta2: f32,
        /// Adaptivity `τ`.
        tau: f32,
    },
    /// Adaptive, with Yogi's additive second moment.
    FedYogi {
        /// Server learning rate `η`.
        lr: f32,
        /// First-moment decay `β1`.
        beta1: f32,
        /// Second-moment decay `β2`.
        beta2: f32,
        /// Adaptivity `τ`.
        tau: f32,
    },
}

impl ServerOpt {
    /// FedAvgM with η = 1 and β = 0.9.
    pub const FEDAVGM: ServerOpt = ServerOpt::FedAvgM {
        lr: 1.0,
        momentum: 0.9,
    };
    /// FedAdagrad with Flower's defaults (η = 0.1, β1 = 0.9, τ = 1e-9).
    pub const FEDADAGRAD: ServerOpt = ServerOpt::FedAdagrad {
        lr: 0.1,
        beta1: 0.9,
        tau: 1e-9,
    };
    /// FedAdam with Flower's defaults (η = 0.1, β1 = 0.9, β2 = 0.99, τ = 1e-9).
    pub const FEDADAM: ServerOpt = ServerOpt::FedAdam {
        lr: 0.1,
        beta1: 0.9,
        beta2: 0.99,
        tau: 1e-9,
    };
    /// FedYogi with Flower's defaults (η = 0.1, β1 = 0.9, β2 = 0.99, τ = 1e-9).
    pub const FEDYOGI: ServerOpt = ServerOpt::FedYogi {
        lr: 0.1,
        beta1: 0.9,
        beta2: 0.99,
        tau: 1e-9,
    };

    /// How many model-sized state vectors the optimizer keeps (0, 1 or 2).
    pub fn state_vectors(&self) -> usize {
        match self {
            ServerOpt::FedAvg => 0,
            ServerOpt::FedAvgM { .. } => 1,
            _ => 2,
        }
    }
}

/// A server optimizer and its state (`state` holds `state_vectors()` model-sized vectors back to back).
#[derive(Debug, Clone)]
pub struct ServerOptimizer<B> {
    opt: ServerOpt,
    state: B,
}

impl<B: AsMut<[f32]> + AsRef<[f32]>> ServerOptimizer<B> {
    /// An optimizer for a model of `params` parameters; `state` must hold
    /// `opt.state_vectors() * params` values (zeroed here).
    pub fn new(opt: ServerOpt, params: usize, mut state: B) -> Result<Self, Error> {
        let expected = opt.state_vectors() * params;
        let got = state.as_ref().len();
        if got != expected {
            return Err(Error::BufferLength { expected, got });
        }
        state.as_mut().fill(0.0);
        Ok(ServerOptimizer { opt, state })
    }

    /// The optimizer.
    pub fn opt(&self) -> ServerOpt {
        self.opt
    }

    /// Its state (moments), to save in a checkpoint.
    pub fn state(&self) -> &[f32] {
        self.state.as_ref()
    }

    /// An optimizer continuing from `saved` (what [`ServerOptimizer::state`] gave),
    /// copied into `state`; both must hold `opt.state_vectors() * params` values.
    pub fn resume(opt: ServerOpt, params: usize, state: B, saved: &[f32]) -> Result<Self, Error> {
        let mut resumed = Self::new(opt, params, state)?;
        if saved.len() != resumed.state.as_ref().len() {
            return Err(Error::BufferLength {
                expected: resumed.state.as_ref().len(),
                got: saved.len(),
            });
        }
        resumed.state.as_mut().copy_from_slice(saved);
        Ok(resumed)
    }

    /// Moves `global` using the clients' average `avg`.
    pub fn step(&mut self, global: &mut [f32], avg: &[f32]) -> Result<(), Error> {
        if avg.len() != global.len() {
            return Err(Error::BufferLength {
                expected: global.len(),
                got: avg.len(),
            });
        }
        let p = global.len();
        let expected = self.opt.state_vectors() * p;
        let state = self.state.as_mut();
        if state.len() != expected {
            return Err(Error::BufferLength {
                expected,
                got: state.len(),
            });
        }
        let (m, v) = state.split_at_mut(if self.opt.state_vectors() == 2 {
            p
        } else {
            state.len()
        });
        match self.opt {
            ServerOpt::FedAvg => global.copy_from_slice(avg),
            ServerOpt::FedAvgM { lr, momentum } => {
                for ((x, &a), m) in global.iter_mut().zip(avg).zip(m.iter_mut()) {
                    *m = momentum * *m + (a - *x);
                    *x += lr * *m;
                }
            }
            ServerOpt::FedAdagrad { lr, beta1, tau } => {
                adaptive(global, avg, m, v, lr, beta1, tau, |v, d2| v + d2);
            }
            ServerOpt::FedAdam {
                lr,
                beta1,
                beta2,
                tau,
            } => {
                adaptive(global, avg, m, v, lr, beta1, tau, |v, d2| {
                    beta2 * v + (1.0 - beta2) * d2
                });
            }
            ServerOpt::FedYogi {
                lr,
                beta1,
                beta2,
                tau,
            } => {
                adaptive(global, avg, m, v, lr, beta1, tau, |v, d2| {
                    v - (1.0 - beta2) * d2 * sign(v - d2)
                });
            }
        }
        Ok(())
    }
}

fn sign(x: f32) -> f32 {
    if x > 0.0 {
        1.0
    } else if x < 0.0 {
        -1.0
    } else {
        0.0
    }
}

/// The shared Adagrad/Adam/Yogi step; `second` updates the second moment from `(v, Δ²)`.
#[allow(clippy::too_many_arguments)]
fn adaptive(
    global: &mut [f32],
    avg: &[f32],
    m: &mut [f32],
    v: &mut [f32],
    lr: f32,
    beta1: f32,
    tau: f32,
    second: impl Fn(f32, f32) -> f32,
) {
    for (((x, &a), m), v) in global
        .iter_mut()
        .zip(avg)
        .zip(m.iter_mut())
        .zip(v.iter_mut())
    {
        let d = a - *x;
        *m = beta1 * *m + (1.0 - beta1) * d;
        *v = second(*v, d * d);
        *x += lr * *m / (sqrt(*v) + tau);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(opt: ServerOpt, rounds: usize) -> [f32; 2] {
        let mut state = std::vec![0.0f32; opt.state_vectors() * 2];
        let mut o = ServerOptimizer::new(opt, 2, &mut state[..]).unwrap();
        let mut x = [0.0f32, 0.0];
        for _ in 0..rounds {
            // Clients always pull toward (1, -2).
            let avg = [x[0] + 0.5 * (1.0 - x[0]), x[1] + 0.5 * (-2.0 - x[1])];
            o.step(&mut x, &avg).unwrap();
        }
        x
    }

    #[test]
    fn fedavg_takes_the_average() {
        assert_eq!(run(ServerOpt::FedAvg, 1), [0.5, -1.0]);
    }

    #[test]
    fn first_steps_match_the_formulas() {
        // Round 1 from x = 0 with Δ = (0.5, -1): m = 0.1Δ; v depends on the rule.
        let x = run(ServerOpt::FEDAVGM, 1);
        assert_eq!(x, [0.5, -1.0]);
        let x = run(ServerOpt::FEDADAGRAD, 1);
        // v = Δ², so x = 0.1 · 0.1Δ / |Δ| = ±0.01
        assert!(
            (x[0] - 0.01).abs() < 1e-6 && (x[1] + 0.01).abs() < 1e-6,
            "{x:?}"
        );
        let x = run(ServerOpt::FEDADAM, 1);
        // v = 0.01Δ², so x = 0.1 · 0.1Δ / (0.1|Δ|) = ±0.1
        assert!(
            (x[0] - 0.1).abs() < 1e-5 && (x[1] + 0.1).abs() < 1e-5,
            "{x:?}"
        );
        let x = run(ServerOpt::FEDYOGI, 1);
        // v = 0 - 0.01Δ²·sign(-Δ²) = 0.01Δ²: the same first step as Adam.
        assert!(
            (x[0] - 0.1).abs() < 1e-5 && (x[1] + 0.1).abs() < 1e-5,
            "{x:?}"
        );
    }

    #[test]
    fn every_optimizer_converges_to_the_clients_optimum() {
        for opt in [
            ServerOpt::FedAvg,
            ServerOpt::FEDAVGM,
            ServerOpt::FEDADAGRAD,
            ServerOpt::FEDADAM,
            ServerOpt::FEDYOGI,
        ] {
            let x = run(opt, 3000);
            assert!(
                (x[0] - 1.0).abs() < 0.05 && (x[1] + 2.0).abs() < 0.05,
                "{opt:?} ended at {x:?}"
            );
        }
    }

    #[test]
    fn state_size_is_checked() {
        assert!(ServerOptimizer::new(ServerOpt::FEDADAM, 3, std::vec![0.0f32; 5]).is_err());
        let mut o = ServerOptimizer::new(ServerOpt::FEDAVGM, 2, std::vec![0.0f32; 2]).unwrap();
        assert!(o.step(&mut [0.0; 2], &[0.0; 3]).is_err());
    }
}
