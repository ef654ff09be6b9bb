//! A device's side of the federation: the firmware loop, written for bare metal.
//!
//! [`Device`] is what runs on a microcontroller: it says hello over its UART,
//! receives the global model chunk by chunk straight into its parameter buffer,
//! evaluates it, trains on it in place, streams it back, and repeats. It uses
//! fedcore alone, holds every buffer in fixed-size fields or in the one arena it
//! is given at boot, and never allocates: the memory it will ever use is known
//! before the first byte moves, and [`Footprint`] lists it to the byte.
//!
//! The board provides three things: the byte link ([`Uart`]), a millisecond
//! [`Clock`], and its local data (two [`Dataset`]s, kept as bytes like flash).
//! firmware-sim is one such board, simulated on a host.
//!
//! A serial line loses and corrupts bytes, so transfers are selective-repeat:
//! the receiver of a parameter stream ticks chunks off in a [`Chunks`] bitmap
//! and asks for exactly the missing ones with a `Nack`, after a gap in the
//! offsets or [`GAP_MS`] of silence; the sender keeps what it sent (the device
//! its parameters and its last results) so it can answer. After
//! [`MAX_RETRIES`] unanswered requests in a row the link counts as stalled.

use core::fmt;

use crate::Error;
use crate::data::Dataset;
use crate::model::ModelSpec;
use crate::protocol::frame::{self, Decoder, Feed};
use crate::protocol::transfer::{Arrival, Chunks, Span};
use crate::protocol::{
    Encoding, ErrorCode, ErrorMsg, EvaluateIns, EvaluateRes, FitIns, FitRes, Hello, Message, Nack,
    PROTOCOL_VERSION, ParamChunk, ParticipantKind, Resend, Values,
};
use crate::scalar::Scalar;
use crate::train::{self, Stats, TrainConfig, Trainer};

/// How often an unjoined device says hello.
pub const HELLO_INTERVAL_MS: u64 = 1_000;
/// Silence in the middle of a transfer after which the receiver asks for what is missing.
pub const GAP_MS: u64 = 500;
/// Requests in a row that may go unanswered before the link counts as stalled.
pub const MAX_RETRIES: u32 = 8;
/// Silence from the server after which a joined device says hello again (the
/// server may have restarted and forgotten it).
pub const REJOIN_AFTER_MS: u64 = 120_000;
/// Bytes of the UART receive buffer (what a DMA ring would hold).
const RX_BUFFER: usize = 64;
/// Bitmap words for incoming chunks: 2,048 chunks, enough for 456k int8 values
/// in 256-byte frames (the device MLP has 25,450).
const CHUNK_WORDS: usize = 64;

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

/// What the firmware is built for.
#[derive(Debug, Clone, PartialEq)]
pub struct Firmware<'a> {
    /// The name it says hello with.
    pub name: &'a str,
    /// The model its memory is sized for.
    pub model: ModelSpec,
    /// The encoding it asks parameter chunks in.
    pub encoding: Encoding,
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
    /// Frame decoder, frame encoder, value encoder and the UART receive buffer.
    pub frame_buffers: usize,
    /// The chunk bitmap and the loop's own state.
    pub working_set: usize,
}

impl Footprint {
    /// The footprint of a device training `model` in `S` with frames of `F` bytes.
    pub fn of<S: Scalar, const F: usize>(model: &ModelSpec) -> Self {
        let memory = train::memory::<S>(model, &device_config(&TrainConfig::default()));
        Footprint {
            numeric: S::NAME,
            parameters: memory.parameters,
            optimizer_state: memory.gradients + memory.optimizer_state,
            activations: memory.activations,
            scratch: memory.scratch,
            frame_buffers: core::mem::size_of::<Decoder<F>>() + 2 * F + RX_BUFFER,
            working_set: core::mem::size_of::<Chunks<[u32; CHUNK_WORDS]>>()
                + core::mem::size_of::<Session>(),
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

    /// Scalars of the arena given to [`Device::boot`]: parameters and trainer together.
    pub fn arena_len<S: Scalar>(model: &ModelSpec) -> usize {
        model.param_count()
            + Trainer::<S, &mut [S]>::arena_len(model, &device_config(&TrainConfig::default()))
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

/// Why the device stopped.
#[derive(Debug)]
pub enum DeviceError<E> {
    /// The UART failed.
    Uart(E),
    /// The federation trains a model this firmware was not built for.
    ModelMismatch,
    /// Something in fedcore refused (a buffer too small, a bad setting).
    Core(Error),
}

impl<E: fmt::Display> fmt::Display for DeviceError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceError::Uart(e) => write!(f, "the serial link failed: {e}"),
            DeviceError::ModelMismatch => write!(
                f,
                "the federation trains another model than the one this firmware is built for"
            ),
            DeviceError::Core(e) => write!(f, "{e}"),
        }
    }
}

impl<E: fmt::Debug + fmt::Display> core::error::Error for DeviceError<E> {}

impl<E> From<Error> for DeviceError<E> {
    fn from(e: Error) -> Self {
        DeviceError::Core(e)
    }
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

/// The loop's own small state (counted in [`Footprint::working_set`]).
#[derive(Debug, Default)]
struct Session {
    /// Round whose trained parameters are in the buffer (what a `Nack` may ask for).
    uploaded: Option<u32>,
    last_fit: Option<FitRes>,
    last_eval: Option<EvaluateRes>,
    counters: LinkCounters,
    rx_pos: usize,
    rx_len: usize,
}

/// What the server asked for, copied out of the frame buffer.
#[derive(Debug, Clone, Copy)]
enum Instruction {
    Fit(FitIns),
    Evaluate(EvaluateIns),
}

impl Instruction {
    fn round(&self) -> u32 {
        match self {
            Instruction::Fit(f) => f.round,
            Instruction::Evaluate(e) => e.round,
        }
    }
}

/// One message from the server, copied out of the frame buffer (chunks are
/// already stored in the parameter buffer when this is seen).
#[derive(Debug, Clone, Copy)]
enum Event {
    Welcome {
        same_model: bool,
    },
    Instruction(Instruction),
    /// A chunk of the download in progress arrived (and was stored).
    Chunk(Arrival),
    /// A chunk of a round no download is open for.
    StrayChunk {
        round: u32,
    },
    Nack(Nack),
    Bye,
    /// The server reports an error (it left the device out); rejoin.
    ServerError,
    /// Anything else: ignored.
    Other,
}

/// How serving ended.
enum Ending {
    /// The server said goodbye.
    Bye,
    /// Start over with a hello.
    Rejoin,
}

/// How a download ended.
enum Download {
    /// Every chunk and the instruction are in.
    Complete(Instruction),
    /// The server moved on to another round: serve that instead.
    Superseded(Instruction),
    /// Stop this exchange.
    End(Ending),
}

/// A device: its firmware, its memory, its link and its data.
pub struct Device<'m, S, U, C, D, const F: usize> {
    firmware: Firmware<'m>,
    uart: U,
    clock: C,
    train: D,
    test: D,
    params: &'m mut [S],
    trainer: Trainer<S, &'m mut [S]>,
    decoder: Decoder<F>,
    tx: [u8; F],
    values: [u8; F],
    rx: [u8; RX_BUFFER],
    chunks: Chunks<[u32; CHUNK_WORDS]>,
    per_chunk: u32,
    /// Round of the download in progress, if any.
    downloading: Option<u32>,
    session: Session,
}

impl<'m, S, U, C, D, const F: usize> Device<'m, S, U, C, D, F>
where
    S: Scalar,
    U: Uart,
    C: Clock,
    D: Dataset,
{
    /// Boots: splits `arena` (at least [`Footprint::arena_len`] scalars) into
    /// parameters and trainer memory, and checks the model's chunks fit the bitmap.
    pub fn boot(
        firmware: Firmware<'m>,
        arena: &'m mut [S],
        uart: U,
        clock: C,
        train: D,
        test: D,
    ) -> Result<Self, Error> {
        let total = firmware.model.param_count();
        let need = Footprint::arena_len::<S>(&firmware.model);
        if arena.len() < need {
            return Err(Error::BufferLength {
                expected: need,
                got: arena.len(),
            });
        }
        let (params, rest) = arena.split_at_mut(total);
        let trainer = Trainer::with_arena(
            &firmware.model,
            &device_config(&TrainConfig::default()),
            rest,
        )?;
        let per_chunk = frame::chunk_capacity(F, firmware.encoding.value_bytes()) as u32;
        let mut chunks = Chunks::new([0u32; CHUNK_WORDS]);
        chunks.start(total as u32, per_chunk)?;
        Ok(Device {
            firmware,
            uart,
            clock,
            train,
            test,
            params,
            trainer,
            decoder: Decoder::new(),
            tx: [0; F],
            values: [0; F],
            rx: [0; RX_BUFFER],
            chunks,
            per_chunk,
            downloading: None,
            session: Session::default(),
        })
    }

    /// What the link has seen so far.
    pub fn counters(&self) -> LinkCounters {
        self.session.counters
    }

    /// The board's UART.
    pub fn uart(&self) -> &U {
        &self.uart
    }

    /// Runs until the server says goodbye (or the link or the firmware fails).
    pub fn run(&mut self) -> Result<(), DeviceError<U::Error>> {
        while self.join()? {
            if let Ending::Bye = self.serve()? {
                break;
            }
        }
        Ok(())
    }

    /// Says hello every [`HELLO_INTERVAL_MS`] until welcomed (true) or told goodbye (false).
    fn join(&mut self) -> Result<bool, DeviceError<U::Error>> {
        self.session.uploaded = None;
        self.downloading = None;
        loop {
            let hello = Message::Hello(Hello {
                version: PROTOCOL_VERSION,
                name: self.firmware.name,
                kind: ParticipantKind::Device,
                train_examples: self.train.len() as u32,
                test_examples: self.test.len() as u32,
                max_frame: F as u32,
                encoding: self.firmware.encoding,
                auth: &[],
            });
            self.send(&hello)?;
            let until = self.clock.now_ms() + HELLO_INTERVAL_MS;
            while let Some(event) = self.next_event(until)? {
                match event {
                    Event::Welcome { same_model: false } => return Err(self.refuse_model()),
                    Event::Welcome { same_model: true } => {
                        self.session.counters.joins += 1;
                        return Ok(true);
                    }
                    Event::Bye => return Ok(false),
                    _ => {}
                }
            }
        }
    }

    /// Serves instructions until goodbye, an error from the server, or a long silence.
    fn serve(&mut self) -> Result<Ending, DeviceError<U::Error>> {
        let mut next: Option<Instruction> = None;
        loop {
            let (round, instruction) = match next.take() {
                Some(i) => (i.round(), Some(i)),
                None => {
                    let until = self.clock.now_ms() + REJOIN_AFTER_MS;
                    match self.next_event(until)? {
                        None | Some(Event::ServerError) => return Ok(Ending::Rejoin),
                        Some(Event::Bye) => return Ok(Ending::Bye),
                        Some(Event::Welcome { same_model: false }) => {
                            return Err(self.refuse_model());
                        }
                        // A second welcome (the server answered a repeated hello): nothing changes.
                        Some(Event::Welcome { same_model: true }) => continue,
                        Some(Event::Nack(nack)) => {
                            self.answer_nack(nack)?;
                            continue;
                        }
                        Some(Event::Instruction(i)) => (i.round(), Some(i)),
                        // Its instruction was lost; the chunk itself will be asked for again.
                        Some(Event::StrayChunk { round }) => (round, None),
                        Some(Event::Chunk(_) | Event::Other) => continue,
                    }
                }
            };
            self.open_download(round);
            if instruction.is_none() {
                self.nack(round, Resend::Instruction)?;
            }
            match self.download(round, instruction)? {
                Download::Complete(Instruction::Fit(ins)) => self.fit(&ins)?,
                Download::Complete(Instruction::Evaluate(ins)) => self.evaluate(ins.round)?,
                Download::Superseded(i) => next = Some(i),
                Download::End(ending) => return Ok(ending),
            }
        }
    }

    fn open_download(&mut self, round: u32) {
        // The buffer is about to be overwritten: earlier uploads can no longer be resent.
        self.session.uploaded = None;
        self.downloading = Some(round);
        // The bitmap was sized for this model at boot, so this cannot fail.
        let _ = self.chunks.start(self.params.len() as u32, self.per_chunk);
    }

    /// Receives round `round`'s parameters until every chunk and the instruction are in.
    fn download(
        &mut self,
        round: u32,
        mut instruction: Option<Instruction>,
    ) -> Result<Download, DeviceError<U::Error>> {
        let mut retries = 0;
        let outcome = loop {
            if let (true, Some(i)) = (self.chunks.is_complete(), instruction) {
                break Download::Complete(i);
            }
            let until = self.clock.now_ms() + GAP_MS;
            match self.next_event(until)? {
                None => {
                    retries += 1;
                    if retries > MAX_RETRIES {
                        // The link stalled: the server will have given up on this round.
                        break Download::End(Ending::Rejoin);
                    }
                    let want = match self.chunks.first_missing() {
                        Some(Span { offset, count }) if instruction.is_some() => {
                            Resend::Values { offset, count }
                        }
                        _ => Resend::Instruction,
                    };
                    self.nack(round, want)?;
                }
                Some(Event::Chunk(arrival)) => {
                    retries = 0;
                    if let Arrival::New {
                        skipped: Some(Span { offset, count }),
                    } = arrival
                    {
                        self.nack(round, Resend::Values { offset, count })?;
                    }
                }
                Some(Event::Instruction(i)) if i.round() == round => instruction = Some(i),
                Some(Event::Instruction(i)) if i.round() > round => break Download::Superseded(i),
                Some(Event::Bye) => break Download::End(Ending::Bye),
                Some(Event::ServerError) => break Download::End(Ending::Rejoin),
                Some(Event::Nack(nack)) => self.answer_nack(nack)?,
                Some(_) => {}
            }
        };
        self.downloading = None;
        Ok(outcome)
    }

    fn fit(&mut self, ins: &FitIns) -> Result<(), DeviceError<U::Error>> {
        if ins.evaluate_first {
            self.evaluate(ins.round.saturating_sub(1))?;
        }
        if let Err(e) = self.trainer.set_config(&device_config(&ins.config)) {
            return self.report(ErrorCode::Unsupported, e);
        }
        let start = self.clock.now_ms();
        let stats = match self.trainer.fit(self.params, &self.train, ins.seed) {
            Ok(stats) => stats,
            Err(e) => return self.report(ErrorCode::Training, e),
        };
        let res = FitRes {
            round: ins.round,
            examples: self.train.len() as u32,
            loss: stats.loss(),
            accuracy: stats.accuracy(),
            seconds: self.seconds_since(start),
        };
        self.session.uploaded = Some(ins.round);
        self.session.last_fit = Some(res);
        self.upload(
            ins.round,
            Span {
                offset: 0,
                count: self.params.len() as u32,
            },
        )?;
        self.send(&Message::FitRes(res))
    }

    fn evaluate(&mut self, round: u32) -> Result<(), DeviceError<U::Error>> {
        let start = self.clock.now_ms();
        let stats: Stats = match self.trainer.evaluate(self.params, &self.test) {
            Ok(stats) => stats,
            Err(e) => return self.report(ErrorCode::Training, e),
        };
        let res = EvaluateRes {
            round,
            examples: stats.examples,
            loss: stats.loss(),
            accuracy: stats.accuracy(),
            seconds: self.seconds_since(start),
        };
        self.session.last_eval = Some(res);
        self.send(&Message::EvaluateRes(res))
    }

    /// Sends the chunks of the parameter buffer that cover `span`.
    fn upload(&mut self, round: u32, span: Span) -> Result<(), DeviceError<U::Error>> {
        let (total, per_chunk) = (self.params.len(), self.per_chunk as usize);
        let first = span.offset as usize / per_chunk * per_chunk;
        let end = (span.offset as usize + span.count as usize).min(total);
        for offset in (first..end).step_by(per_chunk) {
            let chunk = &self.params[offset..(offset + per_chunk).min(total)];
            let values = Values::encode(chunk, self.firmware.encoding, &mut self.values)?;
            let message = Message::ParamChunk(ParamChunk {
                round,
                offset: offset as u32,
                total: total as u32,
                values,
            });
            let frame = frame::encode(&message, &mut self.tx)?;
            self.uart.write(frame).map_err(DeviceError::Uart)?;
        }
        Ok(())
    }

    /// Answers the server's request to resend part of an upload or a result.
    fn answer_nack(&mut self, nack: Nack) -> Result<(), DeviceError<U::Error>> {
        let session = &self.session;
        match nack.resend {
            Resend::Values { offset, count } if session.uploaded == Some(nack.round) => {
                self.session.counters.nacks_answered += 1;
                self.upload(nack.round, Span { offset, count })
            }
            Resend::Result => {
                let fit = session.last_fit.filter(|r| r.round == nack.round);
                let eval = session.last_eval.filter(|r| r.round == nack.round);
                self.session.counters.nacks_answered += 1;
                if let Some(res) = fit {
                    self.send(&Message::FitRes(res))?;
                }
                if let Some(res) = eval {
                    self.send(&Message::EvaluateRes(res))?;
                }
                Ok(())
            }
            // Nothing to resend (the buffer has moved on): the server will time out.
            _ => Ok(()),
        }
    }

    fn nack(&mut self, round: u32, resend: Resend) -> Result<(), DeviceError<U::Error>> {
        self.session.counters.nacks_sent += 1;
        self.send(&Message::Nack(Nack { round, resend }))
    }

    /// Tells the server this round failed on the device, and carries on.
    fn report(&mut self, code: ErrorCode, e: Error) -> Result<(), DeviceError<U::Error>> {
        // The text goes through the value buffer: no formatting allocation.
        let mut text = Text {
            buf: &mut self.values,
            len: 0,
        };
        let _ = fmt::write(&mut text, format_args!("{e}"));
        let len = text.len;
        let text = core::str::from_utf8(&self.values[..len]).unwrap_or("device error");
        let message = Message::Error(ErrorMsg { code, text });
        let frame = frame::encode(&message, &mut self.tx)?;
        self.uart.write(frame).map_err(DeviceError::Uart)
    }

    /// Tells the server the model does not fit this firmware, and stops.
    fn refuse_model(&mut self) -> DeviceError<U::Error> {
        let _ = self.send(&Message::Error(ErrorMsg {
            code: ErrorCode::Unsupported,
            text: "the federation's model is not the one this firmware is built for",
        }));
        DeviceError::ModelMismatch
    }

    fn send(&mut self, message: &Message<'_>) -> Result<(), DeviceError<U::Error>> {
        let frame = frame::encode(message, &mut self.tx)?;
        self.uart.write(frame).map_err(DeviceError::Uart)
    }

    fn seconds_since(&mut self, start_ms: u64) -> f32 {
        (self.clock.now_ms().saturating_sub(start_ms)) as f32 / 1000.0
    }

    /// The next message from the server, or `None` when `until_ms` passes first.
    /// Parameter chunks of the open download are stored as they are read.
    fn next_event(&mut self, until_ms: u64) -> Result<Option<Event>, DeviceError<U::Error>> {
        loop {
            if self.session.rx_pos == self.session.rx_len {
                let now = self.clock.now_ms();
                if now >= until_ms {
                    return Ok(None);
                }
                let n = self
                    .uart
                    .read(&mut self.rx, until_ms - now)
                    .map_err(DeviceError::Uart)?;
                self.session.rx_pos = 0;
                self.session.rx_len = n;
                continue;
            }
            let input = &self.rx[self.session.rx_pos..self.session.rx_len];
            match self.decoder.feed(input) {
                Feed::Consumed => self.session.rx_pos = self.session.rx_len,
                Feed::Rejected { used, .. } => {
                    self.session.rx_pos += used;
                    self.session.counters.frames_rejected += 1;
                }
                Feed::Frame { used } => {
                    self.session.rx_pos += used;
                    return Ok(Some(self.take_message()));
                }
            }
        }
    }

    /// Turns the decoded frame into an event, storing a chunk of the open download.
    fn take_message(&mut self) -> Event {
        let Ok(message) = self.decoder.message() else {
            self.session.counters.frames_rejected += 1;
            return Event::Other;
        };
        match message {
            Message::Welcome(w) => Event::Welcome {
                same_model: w.model == self.firmware.model,
            },
            Message::FitIns(f) => Event::Instruction(Instruction::Fit(f)),
            Message::EvaluateIns(e) => Event::Instruction(Instruction::Evaluate(e)),
            Message::ParamChunk(chunk) if Some(chunk.round) == self.downloading => {
                let (offset, len) = (chunk.offset as usize, chunk.values.len());
                if chunk.total as usize != self.params.len() {
                    return Event::Other;
                }
                match self.chunks.arrive(chunk.offset, len) {
                    Ok(Arrival::Duplicate) => Event::Chunk(Arrival::Duplicate),
                    Ok(arrival) => {
                        match chunk.values.decode(&mut self.params[offset..offset + len]) {
                            Ok(()) => Event::Chunk(arrival),
                            // Undecodable values (a NaN scale): treat the chunk as damaged.
                            Err(_) => {
                                self.session.counters.frames_rejected += 1;
                                Event::Other
                            }
                        }
                    }
                    Err(_) => Event::Other,
                }
            }
            Message::ParamChunk(chunk) => Event::StrayChunk { round: chunk.round },
            Message::Nack(nack) => Event::Nack(nack),
            Message::Bye(_) => Event::Bye,
            Message::Error(_) => Event::ServerError,
            _ => Event::Other,
        }
    }
}

/// A `fmt::Write` into a fixed byte buffer, truncating what does not fit.
struct Text<'a> {
    buf: &'a mut [u8],
    len: usize,
}

impl fmt::Write for Text<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let room = self.buf.len() - self.len;
        let mut take = s.len().min(room);
        while !s.is_char_boundary(take) {
            take -= 1;
        }
        self.buf[self.len..self.len + take].copy_from_slice(&s.as_bytes()[..take]);
        self.len += take;
        Ok(())
    }
}
