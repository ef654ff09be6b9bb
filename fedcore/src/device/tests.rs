//! Whole device rounds against an in-memory line and a manual clock.
//!
//! The far end of the line is a scripted server written with the same
//! transfer engine, reacting to each frame the device writes; a read with
//! nothing to deliver advances the clock by its whole timeout. So every test
//! is deterministic and instant: no pty, no thread, no sleep.

use std::cell::Cell;
use std::collections::VecDeque;
use std::rc::Rc;
use std::vec;
use std::vec::Vec;

use super::*;
use crate::data::Samples;
use crate::model::ModelSpec;
use crate::protocol::frame::{self, Decoder};
use crate::protocol::transfer::{Chunking, Receiver, RetryPolicy, Span};
use crate::protocol::{
    Encoding, ErrorCode, EvaluateRes, Feed, FitIns, FitRes, Message, Nack, ParticipantKind, Resend,
    Welcome,
};
use crate::scalar::{Fixed, Scalar};
use crate::train::TrainConfig;

const FRAME: usize = 256;

/// Sixteen-pixel samples whose label is the brightest quarter of the image.
fn quarters(n: usize) -> Samples<16> {
    Samples(
        (0..n)
            .map(|i| {
                let label = (i % 4) as u8;
                let mut pixels = [20u8; 16];
                for p in &mut pixels[usize::from(label) * 4..usize::from(label) * 4 + 4] {
                    *p = 230;
                }
                (pixels, label)
            })
            .collect(),
    )
}

fn model() -> ModelSpec {
    ModelSpec::mlp(&[16, 8, 4]).unwrap()
}

/// What the scripted server does and has seen.
#[derive(Debug, Clone, Default)]
struct Script {
    /// Welcome with this model instead of the device's.
    other_model: bool,
    /// Send the instruction but never a chunk, and answer no request.
    silent: bool,
    /// Downlink frames to drop the first time: chunk indices, and the instruction.
    drop_down_chunks: Vec<u32>,
    drop_instruction: bool,
    /// Uplink chunk indices to drop the first time.
    drop_up_chunks: Vec<u32>,
    /// Ping the idle device after the welcome and instruct it only once it answers.
    ping_first: bool,
    // What it saw:
    pongs: Vec<u32>,
    hellos: u32,
    nacks: Vec<Resend>,
    evaluation: Option<EvaluateRes>,
    fit: Option<FitRes>,
    errors: Vec<ErrorCode>,
}

/// The server's end of the line.
struct Server {
    script: Script,
    global: Vec<f32>,
    chunking: Chunking,
    upload: Vec<f32>,
    receiver: Receiver<Vec<u32>>,
    decoder: Decoder<FRAME>,
    instruction: FitIns,
}

impl Server {
    fn new(script: Script) -> Self {
        let global: Vec<f32> = (0..model().param_count())
            .map(|i| ((i as f32) * 0.61).sin() * 0.3)
            .collect();
        let chunking = Chunking::new(global.len(), FRAME, Encoding::Q16).unwrap();
        let words = Receiver::<Vec<u32>>::words(chunking.total(), chunking.per_chunk());
        let mut receiver = Receiver::new(vec![0; words]);
        receiver.start(1, &chunking).unwrap();
        Server {
            upload: vec![0.0; global.len()],
            script,
            global,
            chunking,
            receiver,
            decoder: Decoder::new(),
            instruction: FitIns {
                round: 1,
                config: TrainConfig {
                    lr: 0.05,
                    ..TrainConfig::default()
                },
                seed: 7,
                evaluate_first: true,
            },
        }
    }

    fn send(&self, out: &mut VecDeque<u8>, message: &Message<'_>) {
        let mut buf = [0u8; FRAME];
        out.extend(frame::encode(message, &mut buf).unwrap().iter());
    }

    fn send_chunks(&mut self, out: &mut VecDeque<u8>, span: Span) {
        let (mut values, mut buf) = ([0u8; FRAME], [0u8; FRAME]);
        for offset in self.chunking.offsets(span) {
            let index = offset / self.chunking.per_chunk();
            if let Some(at) = self
                .script
                .drop_down_chunks
                .iter()
                .position(|&c| c == index)
            {
                self.script.drop_down_chunks.remove(at);
                continue;
            }
            let frame = self
                .chunking
                .encode(1, &self.global, offset, &mut values, &mut buf)
                .unwrap();
            out.extend(frame.iter());
        }
    }

    fn send_instruction(&mut self, out: &mut VecDeque<u8>) {
        if std::mem::take(&mut self.script.drop_instruction) {
            return;
        }
        let ins = self.instruction;
        self.send(out, &Message::FitIns(ins));
    }

    fn start_round(&mut self, out: &mut VecDeque<u8>) {
        self.send_instruction(out);
        if !self.script.silent {
            self.send_chunks(out, Span::all(self.chunking.total()));
        }
    }

    /// Reacts to the bytes the device wrote.
    fn hear(&mut self, bytes: &[u8], out: &mut VecDeque<u8>) {
        let mut rest = bytes;
        while !rest.is_empty() {
            let used = match self.decoder.feed(rest) {
                Feed::Consumed => return,
                Feed::Rejected { used, .. } => {
                    rest = &rest[used..];
                    continue;
                }
                Feed::Frame { used } => used,
            };
            rest = &rest[used..];
            let message = self.decoder.message().unwrap();
            match message {
                Message::Hello(h) => {
                    assert_eq!(h.max_frame as usize, FRAME);
                    self.script.hellos += 1;
                    if self.script.hellos > 1 {
                        self.send(out, &Message::Bye("done"));
                        continue;
                    }
                    let model = if self.script.other_model {
                        ModelSpec::mlp(&[16, 9, 4]).unwrap()
                    } else {
                        model()
                    };
                    self.send(
                        out,
                        &Message::Welcome(Welcome {
                            client_id: 1,
                            model,
                        }),
                    );
                    if self.script.other_model {
                        continue;
                    }
                    if self.script.ping_first {
                        self.send(out, &Message::Ping(42));
                        continue;
                    }
                    self.start_round(out);
                }
                Message::Pong(nonce) => {
                    self.script.pongs.push(nonce);
                    self.start_round(out);
                }
                Message::Nack(Nack { round: 1, resend }) => {
                    self.script.nacks.push(resend);
                    if self.script.silent {
                        continue;
                    }
                    match resend {
                        Resend::Values { offset, count } => {
                            self.send_chunks(out, Span { offset, count })
                        }
                        Resend::Instruction => self.send_instruction(out),
                        Resend::Result => {}
                    }
                }
                Message::EvaluateRes(r) => self.script.evaluation = Some(r),
                Message::ParamChunk(chunk) => {
                    let index = chunk.offset / self.chunking.per_chunk();
                    if let Some(at) = self.script.drop_up_chunks.iter().position(|&c| c == index) {
                        self.script.drop_up_chunks.remove(at);
                        continue;
                    }
                    self.receiver.accept(&chunk, &mut self.upload).unwrap();
                }
                Message::FitRes(r) => self.script.fit = Some(r),
                Message::Error(e) => self.script.errors.push(e.code),
                other => panic!("unexpected {}", other.name()),
            }
            if self.script.fit.is_some() {
                match self.receiver.missing() {
                    Some(Span { offset, count }) => self.send(
                        out,
                        &Message::Nack(Nack {
                            round: 1,
                            resend: Resend::Values { offset, count },
                        }),
                    ),
                    None => self.send(out, &Message::Bye("the federation is done")),
                }
            }
        }
    }
}

/// An in-memory UART with the scripted server on its far end.
struct Line {
    to_device: VecDeque<u8>,
    server: Server,
    now: Rc<Cell<u64>>,
}

impl Uart for Line {
    type Error = core::convert::Infallible;

    fn write(&mut self, bytes: &[u8]) -> Result<(), Self::Error> {
        self.server.hear(bytes, &mut self.to_device);
        Ok(())
    }

    fn read(&mut self, buf: &mut [u8], timeout_ms: u64) -> Result<usize, Self::Error> {
        if self.to_device.is_empty() {
            self.now.set(self.now.get() + timeout_ms);
            return Ok(0);
        }
        let n = buf.len().min(self.to_device.len());
        for (b, byte) in buf.iter_mut().zip(self.to_device.drain(..n)) {
            *b = byte;
        }
        Ok(n)
    }
}

struct ManualClock(Rc<Cell<u64>>);

impl Clock for ManualClock {
    fn now_ms(&mut self) -> u64 {
        self.0.get()
    }
}

/// What a run left behind.
struct Outcome {
    result: Result<(), DeviceError<core::convert::Infallible>>,
    script: Script,
    upload: Vec<f32>,
    global: Vec<f32>,
    device_params: Vec<f32>,
    counters: LinkCounters,
    elapsed_ms: u64,
}

fn run(script: Script) -> Outcome {
    let now = Rc::new(Cell::new(0));
    let line = Line {
        to_device: VecDeque::new(),
        server: Server::new(script),
        now: Rc::clone(&now),
    };
    let (train, test) = (quarters(40), quarters(12));
    let mut arena = vec![Fixed::ZERO; Footprint::arena_len::<Fixed>(&model())];
    let firmware = Firmware {
        name: "dev-test",
        kind: ParticipantKind::Device,
        key: None,
        model: model(),
        encoding: Encoding::Q16,
        baud: Some(115_200),
    };
    let mut device: Device<'_, Fixed, _, _, _, FRAME> = Device::boot(
        firmware,
        &mut arena,
        line,
        ManualClock(Rc::clone(&now)),
        &train,
        &test,
    )
    .unwrap();
    let result = device.run();
    let device_params = device.params().iter().map(|p| p.to_f32()).collect();
    let counters = device.counters();
    let server = &device.uart().server;
    Outcome {
        result,
        script: server.script.clone(),
        upload: server.upload.clone(),
        global: server.global.clone(),
        device_params,
        counters,
        elapsed_ms: now.get(),
    }
}

fn gap_ms() -> u64 {
    RetryPolicy::for_line(Some(115_200), FRAME).gap_ms
}

#[test]
fn a_whole_round_over_a_clean_line() {
    let out = run(Script::default());
    assert!(out.result.is_ok());
    assert_eq!(out.script.hellos, 1);
    assert!(out.script.nacks.is_empty());
    assert_eq!(out.counters.joins, 1);
    assert_eq!(out.counters.nacks_sent, 0);
    // It scored the model it was sent (round 0's aggregate), then trained.
    let eval = out.script.evaluation.unwrap();
    assert_eq!((eval.round, eval.examples), (0, 12));
    let fit = out.script.fit.unwrap();
    assert_eq!((fit.round, fit.examples), (1, 40));
    // The update is what the device holds, to the bit (Q16 on the wire), and it moved.
    assert_eq!(out.upload, out.device_params);
    assert_ne!(out.upload, out.global);
    assert_eq!(out.elapsed_ms, 0, "nothing waited");
}

#[test]
fn an_idle_device_answers_a_ping_with_its_nonce() {
    let out = run(Script {
        ping_first: true,
        ..Script::default()
    });
    assert!(out.result.is_ok());
    assert_eq!(out.script.pongs, [42]);
    // The round the pong unlocked ran to the end.
    assert_eq!(out.script.fit.unwrap().round, 1);
    assert_eq!(out.upload, out.device_params);
}

#[test]
fn lost_chunks_both_ways_are_asked_for_and_resent() {
    let last = Chunking::new(model().param_count(), FRAME, Encoding::Q16)
        .unwrap()
        .offsets(Span::all(u32::MAX))
        .count() as u32
        - 1;
    let out = run(Script {
        // A gap in the middle (seen at the next chunk) and a lost tail (seen only as silence).
        drop_down_chunks: vec![1, last],
        drop_up_chunks: vec![0],
        ..Script::default()
    });
    assert!(out.result.is_ok());
    assert!(
        out.script
            .nacks
            .iter()
            .all(|n| matches!(n, Resend::Values { .. })),
        "{:?}",
        out.script.nacks
    );
    assert_eq!(
        out.counters.nacks_sent, 2,
        "one for the gap, one for the tail"
    );
    assert_eq!(out.counters.nacks_answered, 1, "the lost upload chunk");
    assert_eq!(out.elapsed_ms, gap_ms(), "the tail cost one gap of silence");
    assert_eq!(out.upload, out.device_params);
}

#[test]
fn a_lost_instruction_is_asked_for_when_its_chunks_come_alone() {
    let out = run(Script {
        drop_instruction: true,
        ..Script::default()
    });
    assert!(out.result.is_ok());
    assert_eq!(out.script.nacks.first(), Some(&Resend::Instruction));
    assert_eq!(out.script.fit.map(|f| f.round), Some(1));
    assert_eq!(out.upload, out.device_params);
}

#[test]
fn a_silent_server_stalls_the_download_and_the_device_says_hello_again() {
    let out = run(Script {
        silent: true,
        ..Script::default()
    });
    assert!(out.result.is_ok(), "the second hello was told goodbye");
    assert_eq!(out.script.hellos, 2);
    let requests = RetryPolicy::MAX_RETRIES as usize;
    assert_eq!(out.script.nacks.len(), requests);
    assert_eq!(out.elapsed_ms, (requests as u64 + 1) * gap_ms());
    assert!(out.script.fit.is_none());
}

#[test]
fn a_model_it_was_not_built_for_is_refused() {
    let out = run(Script {
        other_model: true,
        ..Script::default()
    });
    assert!(matches!(out.result, Err(DeviceError::ModelMismatch)));
    assert_eq!(out.script.errors, [ErrorCode::Unsupported]);
}
