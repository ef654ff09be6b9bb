//! host-server: the federation server.
//!
//! Modules, each importing only those above it:
//! - [`history`]: the history files (a leaf: ids, names and link kinds, never connections);
//! - [`config`]: settings, strategies and their validation;
//! - [`weights`]: parameters out and in as `.npz` (Keras' `get_weights()` order) or `.safetensors`;
//! - [`aggregation`]: a round's aggregation by strategy;
//! - [`validate`]: what a participant's update and metrics must satisfy before they touch anything;
//! - [`job`]: what the round loop asks of a participant, and every way it can fail;
//! - [`exchange`]: one job's conversation over a link, a driver of fedcore's transfer engine;
//! - [`strikes`]: participants that fail the same way again and again, and the dropped;
//! - [`participant`]: connections, their handshake, heartbeats, and the jobs they carry out;
//! - [`flower`]: Flower clients of the original protocol as participants;
//! - [`supernode`]: Flower SuperNodes (the current protocol) as participants;
//! - [`round`]: one round's bookkeeping;
//! - [`checkpoint`]: what a killed run needs to resume after its last completed round;
//! - [`federation`]: the round loop (sample, send, collect, aggregate, evaluate, record), and
//!   the [`federation::Listener`]s it takes participants from;
//! - [`plot`]: charts of one run or several;
//! - [`summary`]: the end-of-run tables.

pub mod aggregation;
pub mod checkpoint;
pub mod config;
pub mod exchange;
pub mod federation;
pub mod flower;
pub mod history;
pub mod job;
pub mod participant;
pub mod plot;
pub mod round;
pub mod strikes;
pub mod summary;
pub mod supernode;
pub mod validate;
pub mod weights;
