//! Scripted participants speaking the real protocol over any byte stream (an
//! in-memory pipe or a TCP socket): honest ones whose updates are known
//! exactly, and hostile ones (poisoned updates, lying counts and reports).
//! Included by the tests that need them (`#[path]`), not by every test crate;
//! each uses only some of it.
#![allow(dead_code)]

use fedcore::model::ModelSpec;
use fedcore::protocol::transfer::Chunking;
use fedcore::protocol::{
    Encoding, ErrorCode, ErrorMsg, EvaluateRes, FitRes, Hello, Message, PROTOCOL_VERSION,
    ParticipantKind,
};
use fedhost::link::{HOST_MAX_FRAME, Link, chunking};
use tokio::io::{AsyncRead, AsyncWrite};

/// How a scripted participant's session ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Ending {
    /// The server said goodbye.
    Bye,
    /// The link closed or failed.
    Lost,
    /// The server sent an error (a refusal, or the verdict that dropped it).
    Told(String),
}

/// Says hello as `name` holding `examples` training examples; the federation's
/// model if welcomed.
pub async fn hello<T: AsyncRead + AsyncWrite + Unpin>(
    link: &mut Link<T>,
    name: &str,
    examples: u32,
) -> Result<ModelSpec, Ending> {
    link.send(&Message::Hello(Hello {
        version: PROTOCOL_VERSION,
        name,
        kind: ParticipantKind::Host,
        train_examples: examples,
        test_examples: TEST_EXAMPLES,
        max_frame: HOST_MAX_FRAME as u32,
        encoding: Encoding::F32,
        // What the including test's federation trains on.
        data: super::DECLARED,
    }))
    .await
    .map_err(|_| Ending::Lost)?;
    match link.recv().await {
        Ok(Message::Welcome(w)) => Ok(w.model),
        Ok(Message::Error(e)) => Err(Ending::Told(e.text.to_string())),
        _ => Err(Ending::Lost),
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
    /// Answers with a training error of its own (as a client whose data is bad).
    TrainingError,
    /// Uploads the model unchanged and reports a NaN training loss.
    NanMetrics,
    /// Joins, then never answers anything, not even a ping.
    Silent,
}

/// A participant on `io` that behaves as `behaviour` (answering pings) until
/// goodbye, an error from the server, or a closed link.
pub async fn participant<T: AsyncRead + AsyncWrite + Unpin>(
    io: T,
    name: &str,
    examples: u32,
    behaviour: Behaviour,
) -> Ending {
    let mut link = Link::new(io);
    let model = match hello(&mut link, name, examples).await {
        Ok(model) => model,
        Err(ending) => return ending,
    };
    if behaviour == Behaviour::Silent {
        // Read (and ignore) until the server closes the link or says goodbye.
        return loop {
            match link.recv().await {
                Ok(Message::Bye(_)) => break Ending::Bye,
                Ok(Message::Error(e)) => break Ending::Told(e.text.to_string()),
                Ok(_) => {}
                Err(_) => break Ending::Lost,
            }
        };
    }
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
            return Ending::Lost;
        };
        match message {
            Message::FitIns(ins) => {
                if link.recv_params(ins.round, &mut params, &c).await.is_err() {
                    return Ending::Lost;
                }
                if ins.evaluate_first {
                    let _ = link.send(&Message::EvaluateRes(eval(ins.round - 1))).await;
                }
                if behaviour == Behaviour::TrainingError {
                    let error = ErrorMsg {
                        code: ErrorCode::Training,
                        text: "label 11 is out of range for 10 classes",
                    };
                    let _ = link.send(&Message::Error(error)).await;
                    continue;
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
                    Behaviour::LyingEvaluation
                    | Behaviour::TrainingError
                    | Behaviour::NanMetrics
                    | Behaviour::Silent => examples,
                    Behaviour::Scaled => {
                        params.iter_mut().for_each(|p| *p *= 1e6);
                        examples
                    }
                };
                let _ = link.send_params(ins.round, &params, &c).await;
                let res = FitRes {
                    round: ins.round,
                    examples: claimed,
                    loss: if behaviour == Behaviour::NanMetrics {
                        f32::NAN
                    } else {
                        0.1
                    },
                    accuracy: 0.5,
                    seconds: 0.0,
                };
                let _ = link.send(&Message::FitRes(res)).await;
            }
            Message::EvaluateIns(ins) => {
                if link.recv_params(ins.round, &mut params, &c).await.is_err() {
                    return Ending::Lost;
                }
                let _ = link.send(&Message::EvaluateRes(eval(ins.round))).await;
            }
            Message::Ping(nonce) => {
                let _ = link.send(&Message::Pong(nonce)).await;
            }
            Message::Bye(_) => return Ending::Bye,
            Message::Error(e) => return Ending::Told(e.text.to_string()),
            _ => return Ending::Lost,
        }
    }
}

/// A participant that joins again each time the server drops it, behaving as
/// `behaviour`, until it is told goodbye or refused twice in a row, or
/// `connect` finds no server; how each session ended.
pub async fn rejoining<T, C>(
    mut connect: impl FnMut() -> C,
    name: &str,
    examples: u32,
    behaviour: Behaviour,
) -> Vec<Ending>
where
    T: AsyncRead + AsyncWrite + Unpin,
    C: Future<Output = Option<T>>,
{
    let mut endings = Vec::new();
    while let Some(io) = connect().await {
        let ending = participant(io, name, examples, behaviour).await;
        let refused_again = matches!(
            (endings.last(), &ending),
            (Some(Ending::Told(_)), Ending::Told(_))
        );
        let bye = ending == Ending::Bye;
        endings.push(ending);
        if bye || refused_again {
            break;
        }
    }
    endings
}
