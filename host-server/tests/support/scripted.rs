//! Scripted participants speaking the real protocol over any byte stream (an
//! in-memory pipe or a TCP socket): honest ones whose updates are known
//! exactly, and hostile ones (poisoned updates, lying counts and reports).
//! Included by the tests that need them (`#[path]`), not by every test crate;
//! each uses only some of it.
#![allow(dead_code)]

use fedcore::model::ModelSpec;
use fedcore::protocol::transfer::Chunking;
use fedcore::protocol::{
    Encoding, EvaluateRes, FitRes, Hello, Message, PROTOCOL_VERSION, ParticipantKind,
};
use fedhost::link::{HOST_MAX_FRAME, Link, chunking};
use tokio::io::{AsyncRead, AsyncWrite};

/// Says hello as `name` holding `examples` training examples; the federation's
/// model if welcomed.
pub async fn hello<T: AsyncRead + AsyncWrite + Unpin>(
    link: &mut Link<T>,
    name: &str,
    examples: u32,
) -> Option<ModelSpec> {
    link.send(&Message::Hello(Hello {
        version: PROTOCOL_VERSION,
        name,
        kind: ParticipantKind::Host,
        train_examples: examples,
        test_examples: TEST_EXAMPLES,
        max_frame: HOST_MAX_FRAME as u32,
        encoding: Encoding::F32,
        auth: &[],
    }))
    .await
    .ok()?;
    match link.recv().await {
        Ok(Message::Welcome(w)) => Some(w.model),
        _ => None,
    }
}

/// Test examples every scripted participant declares.
pub const TEST_EXAMPLES: u32 = 1000;

/// What a scripted participant does with each instruction.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Behaviour {
    /// Adds `delta` to every parameter, weighs its examples, scores `accuracy`.
    Honest { delta: f32, accuracy: f32 },
    /// Uploads NaN.
    NanUpdate,
    /// Uploads the model unchanged and claims 0 examples.
    ZeroExamples,
    /// Uploads zeros and claims u32::MAX examples.
    MaxExamples,
    /// Trains honestly but reports an accuracy of 1.0 over u32::MAX test examples.
    LyingEvaluation,
    /// Uploads the model scaled by 1e6.
    Scaled,
}

/// A participant on `io` that behaves as `behaviour` until goodbye or a closed link;
/// true if it was told goodbye.
pub async fn participant<T: AsyncRead + AsyncWrite + Unpin>(
    io: T,
    name: &str,
    examples: u32,
    behaviour: Behaviour,
) -> bool {
    let mut link = Link::new(io);
    let Some(model) = hello(&mut link, name, examples).await else {
        return false;
    };
    let c: Chunking = chunking(model.param_count(), HOST_MAX_FRAME, Encoding::F32).unwrap();
    let mut params = vec![0.0f32; model.param_count()];
    let eval = |round| match behaviour {
        Behaviour::Honest { accuracy, .. } => EvaluateRes {
            round,
            examples,
            loss: 1.0 - accuracy,
            accuracy,
            seconds: 0.0,
        },
        Behaviour::LyingEvaluation => EvaluateRes {
            round,
            examples: u32::MAX,
            loss: 0.0,
            accuracy: 1.0,
            seconds: 0.0,
        },
        // The others evaluate over no examples: no weight, whatever they say.
        _ => EvaluateRes {
            round,
            examples: 0,
            loss: 0.0,
            accuracy: 0.0,
            seconds: 0.0,
        },
    };
    loop {
        let Ok(message) = link.recv().await else {
            return false;
        };
        match message {
            Message::FitIns(ins) => {
                if link.recv_params(ins.round, &mut params, &c).await.is_err() {
                    return false;
                }
                if ins.evaluate_first {
                    let _ = link.send(&Message::EvaluateRes(eval(ins.round - 1))).await;
                }
                let claimed = match behaviour {
                    Behaviour::Honest { delta, .. } => {
                        params.iter_mut().for_each(|p| *p += delta);
                        examples
                    }
                    Behaviour::NanUpdate => {
                        params.fill(f32::NAN);
                        examples
                    }
                    Behaviour::ZeroExamples => 0,
                    Behaviour::MaxExamples => {
                        params.fill(0.0);
                        u32::MAX
                    }
                    Behaviour::LyingEvaluation => examples,
                    Behaviour::Scaled => {
                        params.iter_mut().for_each(|p| *p *= 1e6);
                        examples
                    }
                };
                let _ = link.send_params(ins.round, &params, &c).await;
                let res = FitRes {
                    round: ins.round,
                    examples: claimed,
                    loss: 0.1,
                    accuracy: 0.5,
                    seconds: 0.0,
                };
                let _ = link.send(&Message::FitRes(res)).await;
            }
            Message::EvaluateIns(ins) => {
                if link.recv_params(ins.round, &mut params, &c).await.is_err() {
                    return false;
                }
                let _ = link.send(&Message::EvaluateRes(eval(ins.round))).await;
            }
            Message::Bye(_) => return true,
            _ => return false,
        }
    }
}
