//! Booting a simulated device: the RAM budget, the local data, and the run.
//!
//! Boot follows what firmware would do: size every buffer for the model it is
//! built for, refuse to start if they do not fit in RAM, then allocate them
//! once (the parameter-and-trainer arena is the only heap allocation; frame
//! buffers live inside the device value) and hand them to the device loop.

use std::io::Write;

use fedcore::device::{Device, DeviceError, Firmware, Footprint, LinkCounters};
use fedcore::model::ModelSpec;
use fedcore::protocol::Encoding;
use fedcore::scalar::{Fixed, Scalar};
use fedhost::share::Share;

use crate::uart::{BoardClock, SimUart, UartCounters};

/// The number type the device trains in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Numeric {
    /// Q16.16 fixed point, integer arithmetic only (no FPU needed).
    Fixed,
    /// IEEE f32 (a device with an FPU).
    F32,
}

/// Why a device could not boot or run.
#[derive(Debug, thiserror::Error)]
pub enum BoardError {
    /// The firmware's memory does not fit its RAM.
    #[error("{footprint}\nboot refused: {error}")]
    OverBudget {
        /// What it needs.
        footprint: Footprint,
        /// The refusal.
        error: fedcore::Error,
    },
    /// The max frame is not one the firmware is built with.
    #[error("max frame {0} is not supported: pick one of 256, 512, 1024")]
    FrameSize(usize),
    /// The device loop stopped with an error.
    #[error("device: {0}")]
    Device(#[from] DeviceError<std::io::Error>),
    /// fedcore refused at boot.
    #[error("boot: {0}")]
    Boot(#[from] fedcore::Error),
}

/// What the firmware is built as.
#[derive(Debug, Clone)]
pub struct Build {
    /// Name in the hello.
    pub name: String,
    /// The model its memory is sized for.
    pub model: ModelSpec,
    /// Its number type.
    pub numeric: Numeric,
    /// Encoding of parameter chunks on the wire.
    pub encoding: Encoding,
    /// Largest frame it receives.
    pub max_frame: usize,
    /// RAM in bytes.
    pub ram: usize,
    /// Its UART's baud rate, `None` when the line is not paced.
    pub baud: Option<u32>,
    /// The key it proves it holds to a server that admits by key.
    pub key: Option<Vec<u8>>,
}

impl Build {
    /// Every byte the firmware needs, checked against its RAM.
    pub fn footprint(&self) -> Result<Footprint, BoardError> {
        let footprint = match (self.numeric, self.max_frame) {
            (Numeric::Fixed, 256) => Footprint::of::<Fixed, 256>(&self.model),
            (Numeric::Fixed, 512) => Footprint::of::<Fixed, 512>(&self.model),
            (Numeric::Fixed, 1024) => Footprint::of::<Fixed, 1024>(&self.model),
            (Numeric::F32, 256) => Footprint::of::<f32, 256>(&self.model),
            (Numeric::F32, 512) => Footprint::of::<f32, 512>(&self.model),
            (Numeric::F32, 1024) => Footprint::of::<f32, 1024>(&self.model),
            (_, other) => return Err(BoardError::FrameSize(other)),
        };
        footprint
            .check(self.ram)
            .map_err(|error| BoardError::OverBudget { footprint, error })?;
        Ok(footprint)
    }
}

/// What the link saw by the time the device stopped.
#[derive(Debug, Clone, Copy)]
pub struct Report {
    /// The device loop's counters.
    pub link: LinkCounters,
    /// The UART's byte counts.
    pub uart: UartCounters,
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "joined {} time(s); {} bytes sent, {} received, {} dropped (no listener); \
             {} damaged frames dropped, {} resends asked, {} answered",
            self.link.joins,
            self.uart.sent,
            self.uart.received,
            self.uart.dropped,
            self.link.frames_rejected,
            self.link.nacks_sent,
            self.link.nacks_answered
        )
    }
}

/// Boots the firmware on `uart` with `data` and runs it until the server says goodbye.
pub fn run(build: &Build, data: &Share, uart: SimUart) -> Result<Report, BoardError> {
    build.footprint()?;
    match (build.numeric, build.max_frame) {
        (Numeric::Fixed, 256) => run_as::<Fixed, 256>(build, data, uart),
        (Numeric::Fixed, 512) => run_as::<Fixed, 512>(build, data, uart),
        (Numeric::Fixed, 1024) => run_as::<Fixed, 1024>(build, data, uart),
        (Numeric::F32, 256) => run_as::<f32, 256>(build, data, uart),
        (Numeric::F32, 512) => run_as::<f32, 512>(build, data, uart),
        (Numeric::F32, 1024) => run_as::<f32, 1024>(build, data, uart),
        (_, other) => Err(BoardError::FrameSize(other)),
    }
}

fn run_as<S: Scalar, const F: usize>(
    build: &Build,
    data: &Share,
    uart: SimUart,
) -> Result<Report, BoardError> {
    // The one allocation: parameters and trainer memory, sized at boot.
    let mut arena = vec![S::ZERO; Footprint::arena_len::<S>(&build.model)];
    let firmware = Firmware {
        name: &build.name,
        kind: fedcore::protocol::ParticipantKind::Device,
        key: build.key.as_deref(),
        model: build.model.clone(),
        encoding: build.encoding,
        baud: build.baud,
    };
    let mut device: Device<'_, S, _, _, _, F> = Device::boot(
        firmware,
        &mut arena,
        uart,
        BoardClock::start(),
        &data.train,
        &data.test,
    )?;
    let outcome = device.run();
    let report = Report {
        link: device.counters(),
        uart: device.uart().counters(),
    };
    outcome?;
    Ok(report)
}

/// Prints a line on stdout at once (the first line is read by scripts).
pub fn say(line: impl std::fmt::Display) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}
