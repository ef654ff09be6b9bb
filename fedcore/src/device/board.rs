//! What a board gives the device loop (a byte link and a clock that may count
//! cycles), and what the loop reports back to it (its link counters).
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

/// The board's clock, and its cycle counter where it has one.
pub trait Clock {
    /// Milliseconds since some fixed point (boot, say).
    fn now_ms(&mut self) -> u64;

    /// The device starts `work` on round `round`'s parameters. A board that
    /// counts cycles or instructions notes its counter; by default nothing happens.
    fn begin(&mut self, _work: Work, _round: u32) {}

    /// The device has finished `work` on round `round`'s parameters (what a
    /// board that counts reports). By default nothing happens.
    fn end(&mut self, _work: Work, _round: u32) {}
}

/// What the device spends its cycles on between [`Clock::begin`] and [`Clock::end`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Work {
    /// An epoch of local training.
    Training,
    /// Scoring parameters on the local test data.
    Evaluating,
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
