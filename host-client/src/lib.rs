//! host-client: a host participant of the federation.
//!
//! Each [`participant`] connects to the server (retrying with backoff until it
//! is up), introduces itself, and then does what the server asks: train on its
//! shard from the global model it is sent, or evaluate that model on its test
//! shard. Many virtual clients can share one process and one copy of the data;
//! their training runs on blocking threads, at most one per core, and with
//! `--train-slots` at most one per core of the machine across processes.
//!
//! - [`attack`]: poisoned updates, for robustness experiments (`--attack`);
//! - [`slots`]: machine-wide training slots, so client processes take turns;
//! - [`local`]: a participant's data, model, and training on this machine's cores;
//! - [`participant`]: one participant's conversation with the server;
//! - [`flower`]: one participant's conversation with a Flower server;
//! - [`supernode`]: one participant as a Flower SuperNode of a SuperLink.

pub mod attack;
pub mod flower;
pub mod local;
pub mod participant;
pub mod slots;
pub mod supernode;
