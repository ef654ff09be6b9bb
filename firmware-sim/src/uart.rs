//! The simulated UART and clock: what the device loop sees of the board.
//!
//! [`SimUart`] moves bytes over a [`crate::line::Line`] no faster than a real
//! UART at the configured baud rate would (10 bits a byte: start, 8 data,
//! stop), so link times are realistic, and can flip bits at a given bit error
//! rate in both directions. Like a real UART it never blocks the firmware for
//! long: bytes nobody takes within [`DRAIN_TIMEOUT`] are dropped, as bits on a
//! wire with no listener would be. Nothing here allocates after construction.

use std::fs::File;
use std::io::{self, Read, Write};
use std::time::{Duration, Instant};

use fedcore::device::{Clock, Uart};
use rand::SeedableRng;
use rand::rngs::SmallRng;
use rand_distr::{Distribution, Geometric};
use rustix::event::{PollFd, PollFlags, Timespec};

/// How long a write waits for the other end to take bytes before dropping them.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(1);
/// Bytes moved between two pacing pauses.
const BLOCK: usize = 32;
/// Lateness the pacing schedule forgives (sleeps overshoot; this lets it catch up).
const SLACK: Duration = Duration::from_millis(2);

/// Bit errors at a fixed rate, drawn as geometric gaps between flipped bits.
#[derive(Debug)]
struct Noise {
    rng: SmallRng,
    gaps: Geometric,
    /// Bits to let through before the next flip.
    gap: u64,
}

impl Noise {
    fn new(ber: f64, seed: u64) -> Option<Self> {
        if ber <= 0.0 {
            return None;
        }
        let gaps = Geometric::new(ber.min(1.0)).ok()?;
        let mut rng = SmallRng::seed_from_u64(seed);
        let gap = gaps.sample(&mut rng);
        Some(Noise { rng, gaps, gap })
    }

    fn corrupt(&mut self, bytes: &mut [u8]) {
        let bits = bytes.len() as u64 * 8;
        let mut at = 0u64;
        while at + self.gap < bits {
            at += self.gap;
            bytes[(at / 8) as usize] ^= 1 << (at % 8);
            at += 1;
            self.gap = self.gaps.sample(&mut self.rng);
        }
        self.gap -= bits - at;
    }
}

/// A pacing schedule: when the line is free for the next byte.
#[derive(Debug)]
struct Pace {
    byte_time: Option<Duration>,
    free_at: Instant,
}

impl Pace {
    fn new(baud: Option<u32>) -> Self {
        Pace {
            byte_time: baud.map(|b| Duration::from_secs_f64(10.0 / f64::from(b.max(1)))),
            free_at: Instant::now(),
        }
    }

    /// Waits until `n` more bytes could have crossed the line.
    fn wait(&mut self, n: usize) {
        let Some(byte_time) = self.byte_time else {
            return;
        };
        let now = Instant::now();
        if now > self.free_at + SLACK {
            self.free_at = now;
        }
        self.free_at += byte_time * n as u32;
        if let Some(rest) = self.free_at.checked_duration_since(now) {
            std::thread::sleep(rest);
        }
    }
}

/// Bytes and errors the UART saw.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UartCounters {
    /// Bytes the other end took.
    pub sent: u64,
    /// Bytes read.
    pub received: u64,
    /// Bytes written that nobody took (no server attached).
    pub dropped: u64,
}

/// The device's UART on a line.
#[derive(Debug)]
pub struct SimUart {
    port: File,
    rx_pace: Pace,
    tx_pace: Pace,
    noise: Option<Noise>,
    counters: UartCounters,
}

impl SimUart {
    /// A UART on `port` (non-blocking), paced to `baud` when given, flipping
    /// bits at rate `ber` (0 for a clean line) from a generator seeded with `seed`.
    pub fn new(port: File, baud: Option<u32>, ber: f64, seed: u64) -> Self {
        SimUart {
            port,
            rx_pace: Pace::new(baud),
            tx_pace: Pace::new(baud),
            noise: Noise::new(ber, seed),
            counters: UartCounters::default(),
        }
    }

    /// What it has moved so far.
    pub fn counters(&self) -> UartCounters {
        self.counters
    }

    fn poll(&self, flags: PollFlags, timeout: Duration) -> io::Result<bool> {
        let timeout = Timespec {
            tv_sec: timeout.as_secs() as i64,
            tv_nsec: i64::from(timeout.subsec_nanos()),
        };
        let mut fds = [PollFd::new(&self.port, flags)];
        loop {
            match rustix::event::poll(&mut fds, Some(&timeout)) {
                Ok(n) => return Ok(n > 0),
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }
}

impl Uart for SimUart {
    type Error = io::Error;

    fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        let mut block = [0u8; BLOCK];
        for chunk in bytes.chunks(BLOCK) {
            let block = &mut block[..chunk.len()];
            block.copy_from_slice(chunk);
            if let Some(noise) = &mut self.noise {
                noise.corrupt(block);
            }
            self.tx_pace.wait(block.len());
            let mut rest: &[u8] = block;
            while !rest.is_empty() {
                match self.port.write(rest) {
                    Ok(n) => {
                        rest = &rest[n..];
                        self.counters.sent += n as u64;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        if !self.poll(PollFlags::OUT, DRAIN_TIMEOUT)? {
                            self.counters.dropped += rest.len() as u64;
                            break;
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(())
    }

    fn read(&mut self, buf: &mut [u8], timeout_ms: u64) -> io::Result<usize> {
        if !self.poll(PollFlags::IN, Duration::from_millis(timeout_ms))? {
            return Ok(0);
        }
        let limit = buf.len().min(BLOCK);
        let n = match self.port.read(&mut buf[..limit]) {
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                ) =>
            {
                0
            }
            Err(e) => return Err(e),
        };
        if let Some(noise) = &mut self.noise {
            noise.corrupt(&mut buf[..n]);
        }
        self.rx_pace.wait(n);
        self.counters.received += n as u64;
        Ok(n)
    }
}

/// The board's clock: milliseconds since boot.
#[derive(Debug, Clone, Copy)]
pub struct BoardClock(Instant);

impl BoardClock {
    /// A clock starting now.
    pub fn start() -> Self {
        BoardClock(Instant::now())
    }
}

impl Clock for BoardClock {
    fn now_ms(&mut self) -> u64 {
        self.0.elapsed().as_millis() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn noise_flips_bits_at_about_the_rate_asked() {
        let mut noise = Noise::new(1e-3, 7).unwrap();
        let mut flipped = 0u32;
        for _ in 0..1000 {
            let mut bytes = [0u8; 125];
            noise.corrupt(&mut bytes);
            flipped += bytes.iter().map(|b| b.count_ones()).sum::<u32>();
        }
        // 1e6 bits at 1e-3: 1000 expected, 3 sigma is about 95.
        assert!((900..1100).contains(&flipped), "{flipped}");
    }

    #[test]
    fn a_clean_line_has_no_noise_and_a_certain_error_flips_every_bit() {
        assert!(Noise::new(0.0, 1).is_none());
        let mut noise = Noise::new(1.0, 1).unwrap();
        let mut bytes = [0u8; 4];
        noise.corrupt(&mut bytes);
        assert_eq!(bytes, [0xff; 4]);
    }
}
