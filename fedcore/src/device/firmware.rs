//! The firmware loop: join, then serve the server's instructions until goodbye.
//!
//! Each round the device downloads the global model into its parameter buffer
//! (a [`Receiver`] ticking chunks off, asking again for what is missing),
//! evaluates it when asked, trains on it in place, and uploads it (a
//! [`Chunking`] cutting it into frames), keeping it there so any chunk can be
//! sent again until the next download overwrites it.

use core::fmt;

use crate::Error;
use crate::data::Dataset;
use crate::kernels::Portable;
use crate::model::ModelSpec;
use crate::protocol::auth::{self, Challenge};
use crate::protocol::frame::{self, FrameReader};
use crate::protocol::transfer::{Arrival, Chunking, Receiver, Retries, RetryPolicy, Span};
use crate::protocol::{
    DataShape, Encoding, ErrorCode, ErrorMsg, EvaluateIns, EvaluateRes, FitIns, FitRes, Hello,
    Message, Nack, PROTOCOL_VERSION, ParticipantKind, Resend,
};
use crate::scalar::Scalar;
use crate::train::{Stats, TrainConfig, Trainer};

use super::board::{Clock, LinkCounters, Uart, Work};
use super::footprint::{
    CHUNK_WORDS, Footprint, FrameBuffers, RX_BUFFER, WorkingSet, device_config,
};

/// How often an unjoined device says hello.
pub const HELLO_INTERVAL_MS: u64 = 1_000;
/// Silence from the server after which a joined device says hello again (the
/// server may have restarted and forgotten it).
pub const REJOIN_AFTER_MS: u64 = 120_000;
/// What the firmware is built for.
#[derive(Debug, Clone, PartialEq)]
pub struct Firmware<'a> {
    /// The name it says hello with.
    pub name: &'a str,
    /// What it says it is: a simulated device, or the image on a board.
    pub kind: ParticipantKind,
    /// The key it proves it holds when the server admits by key
    /// ([`crate::protocol::auth`]); `None` if it was given none.
    pub key: Option<&'a [u8]>,
    /// The model its memory is sized for.
    pub model: ModelSpec,
    /// The encoding it asks parameter chunks in.
    pub encoding: Encoding,
    /// Its UART's baud rate (`None` for a line with no pacing): scales the
    /// silence after which it asks for what is missing.
    pub baud: Option<u32>,
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
    /// The server admits by key: prove it.
    Challenge(Challenge),
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
    /// The server asks whether the device is still there (answered when idle).
    Ping(u32),
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
    trainer: Trainer<S, &'m mut [S], Portable>,
    buffers: FrameBuffers<F>,
    state: WorkingSet,
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
        let chunking = Chunking::new(total, F, firmware.encoding)?;
        let mut receiver = Receiver::new([0u32; CHUNK_WORDS]);
        // Sized for this model once: every later start of the same transfer succeeds.
        receiver.start(0, &chunking)?;
        receiver.close();
        let retry = RetryPolicy::for_line(firmware.baud, F);
        Ok(Device {
            firmware,
            uart,
            clock,
            train,
            test,
            params,
            trainer,
            buffers: FrameBuffers {
                reader: FrameReader::new([0; RX_BUFFER]),
                tx: [0; F],
                values: [0; F],
            },
            state: WorkingSet {
                receiver,
                chunking,
                retry,
                uploaded: None,
                last_fit: None,
                last_eval: None,
                counters: LinkCounters::default(),
            },
        })
    }

    /// What the link has seen so far.
    pub fn counters(&self) -> LinkCounters {
        self.state.counters
    }

    /// The board's UART.
    pub fn uart(&self) -> &U {
        &self.uart
    }

    /// The parameters the device holds (its last download, trained once it has fitted).
    pub fn params(&self) -> &[S] {
        self.params
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
        self.state.uploaded = None;
        self.state.receiver.close();
        let data = DataShape::of(&self.train, &self.test);
        loop {
            let hello = Message::Hello(Hello {
                version: PROTOCOL_VERSION,
                name: self.firmware.name,
                kind: self.firmware.kind,
                train_examples: self.train.len() as u32,
                test_examples: self.test.len() as u32,
                max_frame: F as u32,
                encoding: self.firmware.encoding,
                data,
            });
            self.send(&hello)?;
            let until = self.clock.now_ms() + HELLO_INTERVAL_MS;
            while let Some(event) = self.next_event(until)? {
                match event {
                    Event::Challenge(challenge) => self.prove(&challenge)?,
                    Event::Welcome { same_model: false } => return Err(self.refuse_model()),
                    Event::Welcome { same_model: true } => {
                        self.state.counters.joins += 1;
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
                        Some(Event::Ping(nonce)) => {
                            self.send(&Message::Pong(nonce))?;
                            continue;
                        }
                        Some(Event::Instruction(i)) => (i.round(), Some(i)),
                        // Its instruction was lost; the chunk itself will be asked for again.
                        Some(Event::StrayChunk { round }) => (round, None),
                        Some(Event::Chunk(_) | Event::Challenge(_) | Event::Other) => continue,
                    }
                }
            };
            self.open_download(round)?;
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

    fn open_download(&mut self, round: u32) -> Result<(), Error> {
        // The buffer is about to be overwritten: earlier uploads can no longer be resent.
        self.state.uploaded = None;
        let state = &mut self.state;
        state.receiver.start(round, &state.chunking)
    }

    /// Receives round `round`'s parameters until every chunk and the instruction are in.
    fn download(
        &mut self,
        round: u32,
        mut instruction: Option<Instruction>,
    ) -> Result<Download, DeviceError<U::Error>> {
        let mut retries = Retries::new(self.state.retry);
        let outcome = loop {
            if let (true, Some(i)) = (self.state.receiver.is_complete(), instruction) {
                break Download::Complete(i);
            }
            let until = self.clock.now_ms() + retries.gap_ms();
            match self.next_event(until)? {
                None => {
                    if retries.silence().is_err() {
                        // The link stalled: the server will have given up on this round.
                        break Download::End(Ending::Rejoin);
                    }
                    let want = match self.state.receiver.missing() {
                        Some(Span { offset, count }) if instruction.is_some() => {
                            Resend::Values { offset, count }
                        }
                        _ => Resend::Instruction,
                    };
                    self.nack(round, want)?;
                }
                Some(Event::Chunk(arrival)) => {
                    retries.progress();
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
        self.state.receiver.close();
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
        self.clock.begin(Work::Training, ins.round);
        let fitted = self.trainer.fit(self.params, &self.train, ins.seed);
        self.clock.end(Work::Training, ins.round);
        let stats = match fitted {
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
        self.state.uploaded = Some(ins.round);
        self.state.last_fit = Some(res);
        self.upload(ins.round, Span::all(self.state.chunking.total()))?;
        self.send(&Message::FitRes(res))
    }

    fn evaluate(&mut self, round: u32) -> Result<(), DeviceError<U::Error>> {
        let start = self.clock.now_ms();
        self.clock.begin(Work::Evaluating, round);
        let evaluated = self.trainer.evaluate(self.params, &self.test);
        self.clock.end(Work::Evaluating, round);
        let stats: Stats = match evaluated {
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
        self.state.last_eval = Some(res);
        self.send(&Message::EvaluateRes(res))
    }

    /// Sends the chunks of the parameter buffer that cover `span`.
    fn upload(&mut self, round: u32, span: Span) -> Result<(), DeviceError<U::Error>> {
        let chunking = self.state.chunking;
        let FrameBuffers { tx, values, .. } = &mut self.buffers;
        for offset in chunking.offsets(span) {
            let frame = chunking.encode(round, self.params, offset, values, tx)?;
            self.uart.write(frame).map_err(DeviceError::Uart)?;
        }
        Ok(())
    }

    /// Answers the server's request to resend part of an upload or a result.
    fn answer_nack(&mut self, nack: Nack) -> Result<(), DeviceError<U::Error>> {
        let state = &self.state;
        match nack.resend {
            Resend::Values { offset, count } if state.uploaded == Some(nack.round) => {
                self.state.counters.nacks_answered += 1;
                self.upload(nack.round, Span { offset, count })
            }
            Resend::Result => {
                let fit = state.last_fit.filter(|r| r.round == nack.round);
                let eval = state.last_eval.filter(|r| r.round == nack.round);
                self.state.counters.nacks_answered += 1;
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
        self.state.counters.nacks_sent += 1;
        self.send(&Message::Nack(Nack { round, resend }))
    }

    /// Tells the server this round failed on the device, and carries on.
    fn report(&mut self, code: ErrorCode, e: Error) -> Result<(), DeviceError<U::Error>> {
        let FrameBuffers { tx, values, .. } = &mut self.buffers;
        // The text goes through the value buffer: no formatting allocation.
        let mut text = Text {
            buf: values,
            len: 0,
        };
        let _ = fmt::write(&mut text, format_args!("{e}"));
        let len = text.len;
        let text = core::str::from_utf8(&values[..len]).unwrap_or("device error");
        let frame = frame::encode(&Message::Error(ErrorMsg { code, text }), tx)?;
        self.uart.write(frame).map_err(DeviceError::Uart)
    }

    /// Answers the server's key challenge (a device without a key says so;
    /// the server refuses it and it keeps saying hello).
    fn prove(&mut self, challenge: &Challenge) -> Result<(), DeviceError<U::Error>> {
        match self.firmware.key {
            Some(key) => {
                let proof = auth::prove(key, challenge, PROTOCOL_VERSION, self.firmware.name);
                self.send(&Message::Proof(proof))
            }
            None => self.send(&Message::Error(ErrorMsg {
                code: ErrorCode::Auth,
                text: "this device holds no key: the server admits only holders of one",
            })),
        }
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
        let frame = frame::encode(message, &mut self.buffers.tx)?;
        self.uart.write(frame).map_err(DeviceError::Uart)
    }

    fn seconds_since(&mut self, start_ms: u64) -> f32 {
        (self.clock.now_ms().saturating_sub(start_ms)) as f32 / 1000.0
    }

    /// The next message from the server, or `None` when `until_ms` passes first.
    /// Parameter chunks of the open download are stored as they are read.
    fn next_event(&mut self, until_ms: u64) -> Result<Option<Event>, DeviceError<U::Error>> {
        loop {
            match self.buffers.reader.next_frame() {
                Some(Ok(())) => return Ok(Some(self.take_message())),
                Some(Err(_)) => self.state.counters.frames_rejected += 1,
                None => {
                    let now = self.clock.now_ms();
                    if now >= until_ms {
                        return Ok(None);
                    }
                    let reader = &mut self.buffers.reader;
                    let n = self
                        .uart
                        .read(reader.spare(), until_ms - now)
                        .map_err(DeviceError::Uart)?;
                    reader.filled(n);
                }
            }
        }
    }

    /// Turns the decoded frame into an event, storing a chunk of the open download.
    fn take_message(&mut self) -> Event {
        let Ok(message) = self.buffers.reader.message() else {
            self.state.counters.frames_rejected += 1;
            return Event::Other;
        };
        match message {
            Message::Welcome(w) => Event::Welcome {
                same_model: w.model == self.firmware.model,
            },
            Message::FitIns(f) => Event::Instruction(Instruction::Fit(f)),
            Message::EvaluateIns(e) => Event::Instruction(Instruction::Evaluate(e)),
            Message::ParamChunk(chunk) => match self.state.receiver.accept(&chunk, self.params) {
                Ok(arrival) => Event::Chunk(arrival),
                Err(Error::ChunkRound { got, .. }) => Event::StrayChunk { round: got },
                // Of another model, misaligned, or undecodable (a NaN scale):
                // treat it as damaged; what is missing is asked for again.
                Err(_) => {
                    self.state.counters.frames_rejected += 1;
                    Event::Other
                }
            },
            Message::Nack(nack) => Event::Nack(nack),
            Message::Bye(_) => Event::Bye,
            Message::Error(_) => Event::ServerError,
            Message::Ping(nonce) => Event::Ping(nonce),
            Message::Challenge(challenge) => Event::Challenge(challenge),
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
