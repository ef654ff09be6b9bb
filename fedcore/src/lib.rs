#![cfg_attr(not(any(test, feature = "std")), no_std)]
// No unsafe code, but one call: the host backend's into the gemm crate (std only).
#![deny(unsafe_code)]
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]
#![doc = include_str!("../README.md")]

#[cfg(feature = "alloc")]
extern crate alloc;

pub mod aggregate;
pub mod compress;
pub mod data;
pub mod device;
mod error;
pub mod kernels;
pub mod linalg;
pub mod model;
pub mod protocol;
pub mod rng;
pub mod scalar;
pub mod train;

pub use error::Error;
/// The `fixed` crate, whose `FixedI32` is the fixed-point scalar.
pub use fixed;
