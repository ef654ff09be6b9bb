//! host-server: the federation server.
//!
//! - [`config`]: settings and strategies;
//! - [`participant`]: connections, their handshake, and the jobs they carry out;
//! - [`federation`]: the round loop (sample, send, collect, aggregate, evaluate, record);
//! - [`aggregation`]: a round's aggregation by strategy;
//! - [`history`]: the history files;
//! - [`plot`]: charts of one run or several.

pub mod aggregation;
pub mod config;
pub mod exchange;
pub mod federation;
pub mod history;
pub mod participant;
pub mod plot;
