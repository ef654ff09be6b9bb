//! Whole rounds in one process: the real round loop over in-memory pipes, in
//! paused time, with scripted participants (two honest, one that never answers).
//! The deadline passes in virtual time, so three rounds with a 60-second
//! deadline take milliseconds.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use fedcore::aggregate::ServerOpt;
use fedcore::model::{ModelSpec, Plan, init_params};
use fedcore::protocol::transfer::Chunking;
use fedcore::protocol::{
    Encoding, EvaluateRes, FitRes, Hello, Message, PROTOCOL_VERSION, ParticipantKind,
};
use fedcore::rng::Rng;
use fedcore::train::TrainConfig;
use fedhost::link::{HOST_MAX_FRAME, Link, chunking};
use host_server::config::{ServerConfig, Strategy};
use host_server::federation::{self, Progress};
use host_server::history::{FailureKind, Phase, RoundRecord};
use tokio::io::DuplexStream;
use tokio::sync::mpsc;

const ROUNDS: u32 = 3;
const DEADLINE: Duration = Duration::from_secs(60);

fn model() -> ModelSpec {
    ModelSpec::mlp(&[4, 3, 2]).unwrap()
}

/// Counts the rounds reported.
#[derive(Default)]
struct Count(AtomicUsize);

impl Progress for Count {
    fn round(&self, _: &RoundRecord) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}

async fn hello(link: &mut Link<DuplexStream>, name: &str) {
    link.send(&Message::Hello(Hello {
        version: PROTOCOL_VERSION,
        name,
        kind: ParticipantKind::Host,
        train_examples: 0,
        test_examples: 0,
        max_frame: HOST_MAX_FRAME as u32,
        encoding: Encoding::F32,
        auth: &[],
    }))
    .await
    .unwrap();
    assert!(matches!(link.recv().await.unwrap(), Message::Welcome(_)));
}

/// A participant that "trains" by adding `delta` to every parameter, weighs
/// `examples`, and always scores `accuracy`.
async fn honest(io: DuplexStream, name: &str, delta: f32, examples: u32, accuracy: f32) {
    let mut link = Link::new(io);
    hello(&mut link, name).await;
    let c: Chunking = chunking(model().param_count(), HOST_MAX_FRAME, Encoding::F32).unwrap();
    let mut params = vec![0.0f32; model().param_count()];
    let eval = |round| EvaluateRes {
        round,
        examples,
        loss: 1.0 - accuracy,
        accuracy,
        seconds: 0.0,
    };
    loop {
        match link.recv().await.unwrap() {
            Message::FitIns(ins) => {
                link.recv_params(ins.round, &mut params, &c).await.unwrap();
                if ins.evaluate_first {
                    link.send(&Message::EvaluateRes(eval(ins.round - 1)))
                        .await
                        .unwrap();
                }
                params.iter_mut().for_each(|p| *p += delta);
                link.send_params(ins.round, &params, &c).await.unwrap();
                let res = FitRes {
                    round: ins.round,
                    examples,
                    loss: 0.1,
                    accuracy,
                    seconds: 0.0,
                };
                link.send(&Message::FitRes(res)).await.unwrap();
            }
            Message::EvaluateIns(ins) => {
                link.recv_params(ins.round, &mut params, &c).await.unwrap();
                link.send(&Message::EvaluateRes(eval(ins.round)))
                    .await
                    .unwrap();
            }
            Message::Bye(_) => return,
            other => panic!("unexpected {}", other.name()),
        }
    }
}

/// A participant that joins, never answers, and joins again each time the server drops it.
async fn silent(connect: mpsc::Sender<DuplexStream>) {
    loop {
        let (ours, theirs) = tokio::io::duplex(1 << 16);
        if connect.send(theirs).await.is_err() {
            return;
        }
        let mut link = Link::new(ours);
        hello(&mut link, "silent").await;
        // Read (and ignore) until the server closes the link or says goodbye.
        loop {
            match link.recv().await {
                Ok(Message::Bye(_)) => return,
                Ok(_) => {}
                Err(_) => break,
            }
        }
    }
}

#[tokio::test(start_paused = true)]
async fn rounds_aggregate_the_honest_and_record_the_silent_as_missing_the_deadline() {
    let out = tempfile::tempdir().unwrap();
    let config = ServerConfig {
        bind: "127.0.0.1:0".parse().unwrap(),
        rounds: ROUNDS,
        strategy: Strategy::Fedavg,
        model: model(),
        fraction_fit: 1.0,
        fraction_evaluate: 1.0,
        min_fit_clients: 2,
        min_evaluate_clients: 2,
        min_available_clients: 3,
        train: TrainConfig::default(),
        trim_fraction: 0.2,
        server_opt: ServerOpt::FedAvg,
        round_timeout: DEADLINE,
        server_eval: None,
        out: out.path().to_path_buf(),
        seed: 5,
        serial: Vec::new(),
    };
    let (connect, listener) = mpsc::channel(8);
    let mut participants = tokio::task::JoinSet::new();
    for (name, delta, examples, accuracy) in [("a", 1.0, 100, 0.5), ("b", -1.0, 300, 0.8)] {
        let (ours, theirs) = tokio::io::duplex(1 << 16);
        connect.send(theirs).await.unwrap();
        participants.spawn(honest(ours, name, delta, examples, accuracy));
    }
    participants.spawn(silent(connect));

    let started = tokio::time::Instant::now();
    let progress = Count::default();
    let outcome = federation::run(config, listener, &progress).await.unwrap();
    let virtual_time = started.elapsed();
    participants.join_all().await;

    let history = outcome.history;
    assert_eq!(history.rounds.len(), ROUNDS as usize);
    assert_eq!(progress.0.load(Ordering::Relaxed), ROUNDS as usize);
    for r in &history.rounds {
        assert!(r.aggregated, "round {}", r.round);
        let trained: Vec<&str> = r
            .participants
            .iter()
            .filter(|p| p.fit.is_some())
            .map(|p| p.name.as_str())
            .collect();
        assert_eq!(trained, ["a", "b"], "round {}", r.round);
        let missed = r
            .failures
            .iter()
            .find(|f| f.name == "silent" && f.phase == Phase::Fit)
            .unwrap_or_else(|| panic!("round {}: {:?}", r.round, r.failures));
        assert_eq!(missed.kind, Some(FailureKind::Deadline));
        assert_eq!(missed.reason, "missed the round deadline");
        // (100 × 0.5 + 300 × 0.8) / 400 from the honest evaluations.
        let accuracy = r.accuracy_distributed.unwrap();
        assert!(
            (accuracy - 0.725).abs() < 1e-6,
            "round {}: {accuracy}",
            r.round
        );
        assert_eq!(r.fit_metrics.train_accuracy, Some(0.725));
    }
    // Each round the deadline ran out on the silent participant.
    assert!(virtual_time >= DEADLINE * ROUNDS, "{virtual_time:?}");

    // FedAvg of +1 (weight 100) and -1 (weight 300): -0.5 a round.
    let (spec, last) = fedhost::model_file::load(&out.path().join("model_final.bin")).unwrap();
    assert_eq!(spec, model());
    let mut first = vec![0.0f32; spec.param_count()];
    init_params(&Plan::new(&spec), &mut first, &mut Rng::new(5));
    for (l, f) in last.iter().zip(&first) {
        assert!((l - (f - 0.5 * ROUNDS as f32)).abs() < 1e-5, "{l} vs {f}");
    }
    let json = std::fs::read_to_string(out.path().join("history_3.json")).unwrap();
    for key in [
        "\"train_accuracy\"",
        "\"phase\": \"fit\"",
        "\"kind\": \"deadline\"",
        "\"aggregate\"",
    ] {
        assert!(json.contains(key), "{key} missing from the history");
    }
}
