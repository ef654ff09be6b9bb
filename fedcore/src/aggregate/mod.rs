//! Turning client updates into the next global model.
//!
//! - [`fedavg`]: the streaming example-weighted mean (one accumulator, whatever
//!   the number of clients) and the weighted average of metrics;
//! - [`server_opt`]: server optimizers that treat the averaged update as a
//!   pseudo-gradient (FedAvgM, FedAdagrad, FedAdam, FedYogi);
//! - [`robust`]: coordinate-wise median, trimmed mean and (multi-)Krum, which
//!   need every client's vector at once (memory O(clients × model): the stated exception).
//!
//! Everything here works on parameter slices only; it knows nothing of layers.

pub mod fedavg;
pub mod robust;
pub mod server_opt;

pub use fedavg::{FedAvg, WeightedMean};
pub use robust::{coordinate_median, multi_krum, trimmed_mean};
pub use server_opt::{ServerOpt, ServerOptimizer};
