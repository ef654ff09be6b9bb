//! The crate's one error type.
//!
//! Every fallible operation in fedcore returns [`Error`]: a flat enum whose
//! variants say what went wrong in words a user can act on. Nothing in the crate
//! panics on outside data (model specs, byte streams, datasets); those problems
//! come back as values of this type.

use core::fmt;

/// What went wrong in fedcore.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Error {
    /// The model spec has no layers, or more than a model holds.
    LayerCount {
        /// Layers the spec has.
        layers: usize,
        /// Most layers a model holds (`model::MAX_LAYERS`).
        max: usize,
    },
    /// A Dense layer was given a non-flat input; put a Flatten before it.
    DenseNeedsFlatInput {
        /// Index of the offending layer.
        layer: usize,
    },
    /// A layer's output would be empty (e.g. a 3x3 convolution on an input smaller than 3x3).
    EmptyOutput {
        /// Index of the offending layer.
        layer: usize,
    },
    /// A layer was given zero units or filters.
    ZeroWidth {
        /// Index of the offending layer.
        layer: usize,
    },
    /// The last layer must produce a flat vector of class scores.
    OutputNotFlat,
    /// A model is larger than fedcore sizes buffers for.
    ModelTooLarge {
        /// What is too large.
        what: &'static str,
        /// The bound ([`crate::model::MAX_PARAMS`]).
        max: u64,
    },
    /// A model spec string could not be parsed: `word` (counted from 1; 0 for
    /// the whole string) is not what `what` says it should be.
    BadModelSpec {
        /// The word at fault, from 1 (0: the string as a whole).
        word: usize,
        /// What is wrong with it.
        what: &'static str,
    },
    /// A layer's settings are out of range (kernel size, stride, rate, ...).
    BadLayer {
        /// Index of the offending layer.
        layer: usize,
        /// What is wrong.
        what: &'static str,
    },
    /// A model has more classes than labels can name (labels are bytes).
    TooManyClasses {
        /// Classes the model's last layer outputs.
        classes: usize,
    },
    /// A buffer has the wrong length for the model it is used with.
    BufferLength {
        /// Length the model needs.
        expected: usize,
        /// Length that was given.
        got: usize,
    },
    /// A sample's pixel count does not match the model's input size.
    SampleShape {
        /// Pixels the model expects.
        expected: usize,
        /// Pixels the sample has.
        got: usize,
    },
    /// A label is not smaller than the model's number of classes.
    LabelOutOfRange {
        /// The label found.
        label: u8,
        /// The model's number of classes.
        classes: usize,
    },
    /// The dataset has no samples.
    EmptyDataset,
    /// A training setting is out of range (batch size 0, negative learning rate, ...).
    BadConfig(&'static str),
    /// A parameter chunk is not one of the transfer's chunks: misaligned, of the
    /// wrong length, or reaching past the end of the model.
    ChunkOutOfRange {
        /// First parameter index of the chunk.
        offset: usize,
        /// Number of values in the chunk.
        len: usize,
        /// Parameters in the model.
        total: usize,
    },
    /// A parameter chunk belongs to another round than the transfer in progress
    /// (a stale resend, or one whose instruction was lost).
    ChunkRound {
        /// Round of the transfer in progress, if one is open.
        expected: Option<u32>,
        /// Round the chunk names.
        got: u32,
    },
    /// A parameter chunk is of a model of another size than the one being transferred.
    ChunkTotal {
        /// Parameters being transferred.
        expected: u32,
        /// Parameters the chunk's model has.
        got: u32,
    },
    /// A lossy transfer made no progress through the retry policy's requests in a row.
    Stalled {
        /// Requests that went unanswered.
        requests: u32,
    },
    /// An aggregation was finished with no contribution, or with zero total weight.
    NothingToAggregate,
    /// Client vectors given to a robust aggregator differ in length.
    RaggedVectors,
    /// Krum was given too few updates for the malicious ones it must tolerate.
    TooFewForKrum {
        /// Updates in the round.
        clients: usize,
        /// Malicious updates to tolerate.
        f: usize,
    },
    /// A trimmed mean asked to trim had too few updates to cut one from each end and keep one.
    TooFewToTrim {
        /// Updates in the round.
        clients: usize,
    },
    /// Values to quantise or a scale received contain NaN or infinity (a diverged model).
    NonFinite,
    /// The IDX data is malformed (bad magic number, truncated, or mismatched counts).
    BadIdx(&'static str),
    /// A shard blob is malformed (bad magic, another version, truncated).
    BadShard(&'static str),
    /// A board's provisioning record is missing, malformed or damaged.
    BadProvision(&'static str),
    /// A shard blob's data does not match its checksum: it was damaged or cut.
    ShardChecksum {
        /// The checksum its header holds.
        stored: u32,
        /// The checksum of the data that is there.
        computed: u32,
    },
    /// A message does not fit in the frame buffer; raise the peer's max frame or send smaller chunks.
    FrameTooLarge,
    /// A message could not be encoded with postcard.
    Encode,
    /// A parameter chunk's payload is not a whole number of values.
    PartialValue {
        /// Its length in bytes.
        bytes: usize,
        /// Bytes per value of its encoding.
        value_bytes: usize,
    },
    /// A device's memory does not fit its RAM budget.
    OverBudget {
        /// Bytes the device needs.
        needed: usize,
        /// Bytes of RAM it has.
        budget: usize,
    },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Error::LayerCount { layers, max } => write!(
                f,
                "a model needs between 1 and {max} layers, this one has {layers}"
            ),
            Error::DenseNeedsFlatInput { layer } => write!(
                f,
                "layer {layer} is Dense but its input is not flat: add a Flatten layer before it"
            ),
            Error::EmptyOutput { layer } => {
                write!(
                    f,
                    "layer {layer} would produce an empty output: its input is too small"
                )
            }
            Error::ZeroWidth { layer } => write!(f, "layer {layer} has zero units or filters"),
            Error::OutputNotFlat => {
                write!(
                    f,
                    "the last layer must output a flat vector of class scores"
                )
            }
            Error::ModelTooLarge { what, max } => write!(
                f,
                "the model has more {what} than the {max} fedcore accepts: pick a smaller model"
            ),
            Error::BadModelSpec { word: 0, what } => write!(f, "bad model spec: {what}"),
            Error::BadModelSpec { word, what } => {
                write!(f, "bad model spec, word {word}: {what}")
            }
            Error::BadLayer { layer, what } => write!(f, "layer {layer}: {what}"),
            Error::TooManyClasses { classes } => write!(
                f,
                "the model outputs {classes} classes but labels are bytes: at most 256 classes"
            ),
            Error::BufferLength { expected, got } => write!(
                f,
                "buffer holds {got} values but the model needs {expected}"
            ),
            Error::SampleShape { expected, got } => write!(
                f,
                "a sample has {got} pixels but the model's input takes {expected}"
            ),
            Error::LabelOutOfRange { label, classes } => write!(
                f,
                "label {label} is out of range for a model with {classes} classes"
            ),
            Error::EmptyDataset => write!(f, "the dataset has no samples"),
            Error::BadConfig(what) => write!(f, "bad training setting: {what}"),
            Error::ChunkOutOfRange { offset, len, total } => write!(
                f,
                "parameter chunk [{offset}, {}) does not fit the model's {total} parameters (past the end, misaligned, or of the wrong length)",
                offset + len
            ),
            Error::ChunkRound {
                expected: Some(expected),
                got,
            } => write!(
                f,
                "parameter chunk of round {got} during the transfer of round {expected}"
            ),
            Error::ChunkRound {
                expected: None,
                got,
            } => write!(
                f,
                "parameter chunk of round {got} while no transfer is open"
            ),
            Error::ChunkTotal { expected, got } => write!(
                f,
                "parameter chunk of a {got}-parameter model during a transfer of {expected} parameters"
            ),
            Error::Stalled { requests } => write!(
                f,
                "the link stalled: {requests} requests to resend went unanswered"
            ),
            Error::NothingToAggregate => {
                write!(
                    f,
                    "nothing to aggregate: no client contributed a positive example count"
                )
            }
            Error::RaggedVectors => write!(f, "client parameter vectors differ in length"),
            Error::TooFewForKrum {
                clients,
                f: malicious,
            } => write!(
                f,
                "Krum tolerating {malicious} malicious updates needs at least {} updates; this round has {clients}",
                2 * malicious + 3
            ),
            Error::TooFewToTrim { clients } => write!(
                f,
                "a trimmed mean cuts at least one update from each end and needs at least 3; this round has {clients}"
            ),
            Error::NonFinite => write!(
                f,
                "parameters contain NaN or infinity: training diverged (try a lower learning rate)"
            ),
            Error::BadIdx(what) => write!(f, "malformed IDX data: {what}"),
            Error::BadShard(what) => write!(f, "malformed shard blob: {what}"),
            Error::BadProvision(what) => write!(f, "bad provisioning record: {what}"),
            Error::ShardChecksum { stored, computed } => write!(
                f,
                "the shard blob is damaged: its checksum is {stored:#010x}, its data's {computed:#010x} (write it again)"
            ),
            Error::FrameTooLarge => write!(
                f,
                "message does not fit in the frame buffer: send smaller chunks or raise the max frame"
            ),
            Error::Encode => write!(f, "message could not be encoded"),
            Error::PartialValue { bytes, value_bytes } => write!(
                f,
                "a parameter chunk of {bytes} bytes is not a whole number of {value_bytes}-byte values"
            ),
            Error::OverBudget { needed, budget } => write!(
                f,
                "the device needs {needed} bytes of RAM but its budget is {budget} bytes ({} short): raise the RAM budget or pick a smaller model",
                needed - budget
            ),
        }
    }
}

impl core::error::Error for Error {}
