//! The Flower bridge: what Flower's clients and servers send, in our terms.
//!
//! Flower moves a model as a list of tensors, each the bytes of
//! `numpy.save(allow_pickle=False)`, in the order Keras' `get_weights()`
//! returns them; fedcore holds one flat buffer in that same order. This crate
//! turns one into the other, checking every tensor's shape against the model
//! before a value is written, so a Flower client with another model gets a
//! clear error and changes nothing.
//!
//! - [`proto`]: the messages of Flower's two protocols, generated;
//! - [`npy`]: NumPy's `.npy` format, read straight into a caller's buffer;
//! - [`tensors`]: a model's tensor list to and from its flat parameters;
//! - [`legacy`]: Flower's original gRPC protocol (`start_numpy_client`,
//!   `start_server`): its messages, and models, configs and metrics in them;
//! - [`objects`]: the content-addressed objects the current protocol (the
//!   Fleet API) moves a message's content as, to and from our model;
//! - [`superlink`]: the Fleet API served to Flower's SuperNodes;
//! - [`supernode`]: the Fleet API's requests, made of a Flower SuperLink;
//! - [`join`]: the original protocol's stream, served to Flower clients or opened to a
//!   Flower server;
//! - [`tls`]: both listeners over TLS.

pub mod join;
pub mod legacy;
pub mod npy;
pub mod objects;
pub mod proto;
pub mod superlink;
pub mod supernode;
pub mod tensors;
pub mod tls;
