//! What a board gives the device loop (a byte link and a clock), and what the
//! loop reports back to it (its link counters).
//!
//! Both are traits so the same loop runs on a real UART and timer, on a pty in
//! firmware-sim, and on an in-memory line with a manual clock in tests.

use core::fmt;

/// The board's byte link: a UART, or a pty in simulation.
pub trait Uart {
    /// Why the link failed (the line is gone, not merely noisy).
    type Error: fmt::Display;

    /// Sends every byte of `bytes`.
    fn write(&mut self, bytes: &[u8]) -> Result<(), Self::Error>;

    /// Reads what has arrived into `buf`, waiting at most `timeout_ms` for the
    /// first byte; returns 0 when nothing came in that time.
    fn read(&mut self, buf: &mut [u8], timeout_ms: u64) -> Result<usize, Self::Error>;
}

/// The board's clock.
pub trait Clock {
    /// Milliseconds since some fixed point (boot, say).
    fn now_ms(&mut self) -> u64;
}

/// Link events the device counted, for the board to report.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LinkCounters {
    /// Frames that arrived damaged and were dropped.
    pub frames_rejected: u32,
    /// Resend requests the device sent.
    pub nacks_sent: u32,
    /// Resend requests the device answered.
    pub nacks_answered: u32,
    /// Times the device (re)joined the federation.
    pub joins: u32,
}
