//! Sequential nets over one flat parameter buffer.
//!
//! - [`spec`]: the serialisable [`ModelSpec`] (layers and input shape) and its validation;
//! - [`plan`]: the spec resolved into parameter and activation offsets;
//! - [`network`]: forward and backward passes, generic over the scalar type
//!   and the backend ([`crate::kernels`]);
//! - `layers`: the loops of the layers that are not matrix products.
//!
//! Parameters are one `&[S]`, laid out tensor by tensor as Keras' `get_weights()`
//! returns them (conv kernels HWIO, dense kernels `(in, out)`, each followed by
//! its bias; Flatten in HWC order), so weights move between a Keras model and
//! ours as they are. Layers are views into that buffer, never owners.

mod layers;
pub mod network;
pub mod plan;
pub mod spec;

#[cfg(test)]
mod backends;

pub use network::init_params;
pub use plan::{Fusion, Plan, Stage};
pub use spec::{Initializer, Layer, MAX_LAYERS, ModelSpec, Padding, RATE_UNIT, Shape, Span};
