//! Every byte of RAM a device needs, known before it boots.
//!
//! A device trains in place (batch 1, no momentum: no gradient or velocity
//! buffer), so its memory is the parameters, one sample's activations and a
//! little scratch, plus its frame buffers and the loop's own state, whose
//! types are here so that their sizes are the footprint's rows.

use core::fmt;

use crate::Error;
use crate::kernels::Portable;
use crate::model::ModelSpec;
use crate::protocol::frame::FrameReader;
use crate::protocol::transfer::{Chunking, Receiver, RetryPolicy};
use crate::protocol::{EvaluateRes, FitRes};
use crate::scalar::Scalar;
use crate::train::{self, TrainConfig, Trainer};

use super::board::LinkCounters;

/// Bytes of the UART receive buffer (what a DMA ring would hold).
pub(super) const RX_BUFFER: usize = 64;
/// Bitmap words for incoming chunks: 2,048 chunks, enough for 456k int8 values
/// in 256-byte frames (the device MLP has 25,450).
pub(super) const CHUNK_WORDS: usize = 64;

/// The frame buffers (counted in [`Footprint::frame_buffers`]).
#[derive(Debug)]
pub(super) struct FrameBuffers<const F: usize> {
    pub(super) reader: FrameReader<[u8; RX_BUFFER], F>,
    pub(super) tx: [u8; F],
    pub(super) values: [u8; F],
}

/// The transfer engine's state and the loop's own (counted in [`Footprint::working_set`]).
#[derive(Debug)]
pub(super) struct WorkingSet {
    pub(super) receiver: Receiver<[u32; CHUNK_WORDS]>,
    pub(super) chunking: Chunking,
    pub(super) retry: RetryPolicy,
    /// Round whose trained parameters are in the buffer (what a `Nack` may ask for).
    pub(super) uploaded: Option<u32>,
    pub(super) last_fit: Option<FitRes>,
    pub(super) last_eval: Option<EvaluateRes>,
    pub(super) counters: LinkCounters,
}

/// Every byte of RAM a device needs, by purpose.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Footprint {
    /// Scalar type the device trains in.
    pub numeric: &'static str,
    /// The model's parameters.
    pub parameters: usize,
    /// Gradients and optimizer state (zero: training runs in place, without momentum).
    pub optimizer_state: usize,
    /// Activations of one sample, kept for backward.
    pub activations: usize,
    /// Backward deltas and the in-place gradient row.
    pub scratch: usize,
    /// Frame reader (decoder and UART receive buffer), frame encoder and value encoder.
    pub frame_buffers: usize,
    /// The chunk bitmap and the loop's own state.
    pub working_set: usize,
}

impl Footprint {
    /// The footprint of a device training `model` in `S` with frames of `F` bytes.
    pub fn of<S: Scalar, const F: usize>(model: &ModelSpec) -> Self {
        let memory = train::memory::<S, Portable>(model, &device_config(&TrainConfig::default()));
        Footprint {
            numeric: S::NAME,
            parameters: memory.parameters,
            optimizer_state: memory.gradients + memory.optimizer_state,
            activations: memory.activations,
            scratch: memory.scratch,
            frame_buffers: core::mem::size_of::<FrameBuffers<F>>(),
            working_set: core::mem::size_of::<WorkingSet>(),
        }
    }

    /// Everything together.
    pub fn total(&self) -> usize {
        self.parameters
            + self.optimizer_state
            + self.activations
            + self.scratch
            + self.frame_buffers
            + self.working_set
    }

    /// Scalars of the arena given to [`super::Device::boot`]: parameters and trainer together.
    pub fn arena_len<S: Scalar>(model: &ModelSpec) -> usize {
        model.param_count()
            + Trainer::<S, &mut [S], Portable>::arena_len(
                model,
                &device_config(&TrainConfig::default()),
            )
    }

    /// Checks the footprint fits in `budget` bytes of RAM.
    pub fn check(&self, budget: usize) -> Result<(), Error> {
        if self.total() > budget {
            return Err(Error::OverBudget {
                needed: self.total(),
                budget,
            });
        }
        Ok(())
    }
}

impl fmt::Display for Footprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let rows = [
            ("parameters", self.parameters),
            ("optimizer state", self.optimizer_state),
            ("activations", self.activations),
            ("scratch", self.scratch),
            ("frame buffers", self.frame_buffers),
            ("working set", self.working_set),
        ];
        writeln!(f, "RAM footprint ({}):", self.numeric)?;
        for (what, bytes) in rows {
            writeln!(f, "  {what:<16} {bytes:>9} bytes")?;
        }
        write!(f, "  {:<16} {:>9} bytes", "total", self.total())
    }
}

/// The training settings a device uses for a round's `config`: in place (batch 1,
/// no momentum), since it has no room for a gradient or velocity buffer.
pub fn device_config(config: &TrainConfig) -> TrainConfig {
    TrainConfig {
        batch_size: 1,
        momentum: 0.0,
        ..*config
    }
}
