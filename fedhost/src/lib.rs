//! What the std hosts (host-server, host-client, firmware-sim) share, written once:
//!
//! - [`dataset`]: IDX datasets from a directory, checksums verified;
//! - [`table`]: data sets from a `.npz` (Keras' mnist.npz layout) or a `.csv` of features;
//! - [`partition`]: splitting them among clients (IID, Dirichlet, the reference's per-client split);
//! - [`share`]: loading one participant's share (or several sharing one pool);
//! - [`link`]: fedcore frames over any async byte stream, with chunked parameter transfer;
//! - [`model_file`]: saved models (spec and parameters);
//! - [`keras`]: Keras models in (a Sequential model's JSON), and `--model` arguments;
//! - [`output`]: writing result files whole or not at all;
//! - [`keys`]: key files for admission by key (one shared key, or one per name);
//! - [`tls`]: TLS for TCP links (rustls), and [`certificates`], a federation's own small CA;
//! - [`subnormal`]: subnormal floats flushed to zero on training threads (Intel's slow path);
//! - [`malloc`]: one malloc arena per process (less memory held by idle threads).

pub mod certificates;
pub mod dataset;
pub mod keras;
pub mod keys;
pub mod link;
pub mod malloc;
pub mod model_file;
pub mod output;
pub mod partition;
pub mod share;
pub mod subnormal;
pub mod table;
pub mod tls;
