//! Sequential nets over one flat parameter buffer.
//!
//! - [`spec`]: the serialisable [`ModelSpec`] (layers and input shape) and its validation;
//! - [`plan`]: the spec resolved into parameter and activation offsets;
//! - `fused` (`std` only): the fused stages of a [`Plan::fused`] plan, run on
//!   the host kernels;
//! - [`network`]: forward and backward passes, generic over the scalar type.
//!
//! Parameters are one `&[S]`, laid out tensor by tensor as Keras' `get_weights()`
//! returns them (conv kernels HWIO, dense kernels `(in, out)`, each followed by
//! its bias; Flatten in HWC order), so weights move between a Keras model and
//! ours as they are. Layers are views into that buffer, never owners.

#[cfg(feature = "std")]
mod fused;
pub mod network;
pub mod plan;
pub mod spec;

pub use network::{Initializer, init_params};
pub use plan::{Fusion, Plan, Stage};
pub use spec::{Layer, MAX_LAYERS, ModelSpec, Shape};
