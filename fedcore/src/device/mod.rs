//! A device's side of the federation: the firmware loop, written for bare metal.
//!
//! [`Device`] is what runs on a microcontroller: it says hello over its UART,
//! receives the global model chunk by chunk straight into its parameter buffer,
//! evaluates it, trains on it in place, streams it back, and repeats. It uses
//! fedcore alone, holds every buffer in fixed-size fields or in the one arena it
//! is given at boot, and never allocates: the memory it will ever use is known
//! before the first byte moves, and [`Footprint`] lists it to the byte.
//!
//! - [`board`]: what the board provides: the byte link ([`Uart`]), a millisecond
//!   [`Clock`], and (through [`crate::data::Dataset`]) its local data, kept as
//!   bytes like flash. firmware-sim is one such board, simulated on a host.
//! - [`provision`]: a board's provisioning record (its name), read at boot.
//! - [`footprint`]: every byte of RAM the device needs, by purpose, and the
//!   in-place training settings that keep it small.
//! - [`firmware`]: the loop itself, a thin driver of the protocol's
//!   lossy-transfer engine ([`crate::protocol::transfer`]): the receiver of a
//!   parameter stream ticks chunks off and asks for exactly the missing ones
//!   with a `Nack`, after a gap in the offsets or a silence of the line's
//!   [`RetryPolicy`](crate::protocol::transfer::RetryPolicy) gap; the device
//!   keeps what it sent (its parameters and its last results) so it can answer
//!   the server's requests.

pub mod board;
pub mod firmware;
pub mod footprint;
pub mod provision;

pub use board::{Clock, LinkCounters, Uart, Work};
pub use firmware::{Device, DeviceError, Firmware, HELLO_INTERVAL_MS, REJOIN_AFTER_MS};
pub use footprint::{Footprint, device_config};
pub use provision::Provision;

#[cfg(test)]
mod tests;
