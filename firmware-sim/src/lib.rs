//! firmware-sim: a microcontroller-class participant, simulated on a host.
//!
//! The device itself is [`fedcore::device`]: the firmware loop, no_std, with all
//! of its memory sized at boot. This crate is the board around it:
//! - [`line`]: the serial line, a pseudo-terminal pair or a real serial port;
//! - [`uart`]: the UART on that line, paced to the real byte rate of a baud
//!   rate and optionally flipping bits, and the board's clock;
//! - [`board`]: boot: the RAM budget check, the local data shard, and running
//!   the device on the line.

pub mod board;
pub mod line;
pub mod qemu;
pub mod shard;
pub mod uart;
