//! Whole rounds in one process: the real round loop over in-memory pipes, in
//! paused time, with scripted participants (two honest, and silent or hostile ones).
//! The deadline passes in virtual time, so three rounds with a 60-second
//! deadline take milliseconds.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

#[path = "support/scripted.rs"]
mod scripted;

/// What the scripted peers say their data is: what [`model`] takes.
const DECLARED: fedcore::protocol::DataShape = fedcore::protocol::DataShape {
    values: 4,
    labels: 2,
};

use fedcore::aggregate::ServerOpt;
use fedcore::model::{ModelSpec, Plan, init_params};
use fedcore::rng::Rng;
use fedcore::train::TrainConfig;
use host_server::config::{Krum, Limits, ServerConfig, Strategy};
use host_server::federation::{self, Progress};
use host_server::history::{FailureKind, Phase, RoundRecord};
use tokio::sync::mpsc;

use scripted::{Behaviour, Ending, participant, rejoining};

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

fn config(out: &std::path::Path, participants: usize) -> ServerConfig {
    ServerConfig {
        bind: "127.0.0.1:0".parse().unwrap(),
        rounds: ROUNDS,
        strategy: Strategy::Fedavg,
        model: model(),
        fraction_fit: 1.0,
        fraction_evaluate: 1.0,
        min_fit_clients: 2,
        min_evaluate_clients: 2,
        min_available_clients: participants,
        train: TrainConfig::default(),
        trim_fraction: 0.2,
        krum: Krum::default(),
        server_opt: ServerOpt::FedAvg,
        round_timeout: DEADLINE,
        wait_timeout: Duration::from_secs(600),
        out: out.to_path_buf(),
        seed: 5,
        initial_model: None,
        serial: Vec::new(),
        flower_bind: None,
        superlink_bind: None,
        fab: None,
        flower_node_keys: None,
        keys: None,
        tls: None,
        server_eval: None,
        limits: Limits::default(),
        resume: false,
    }
}

/// What a federation in one process left.
struct Federated {
    outcome: federation::Outcome,
    /// The virtual time it took.
    virtual_time: Duration,
    /// The initial model.
    first: Vec<f32>,
    /// How each of the others' sessions ended, by name.
    endings: Vec<(&'static str, Vec<Ending>)>,
}

/// Runs `config` with the two honest participants (+1 on 100 examples scoring
/// 0.5, -1 on 300 scoring 0.8), who must be told goodbye, and the `others`.
async fn federate(config: ServerConfig, others: &[(&'static str, Behaviour)]) -> Federated {
    federate_with(config, others, federation::FlowerListeners::default()).await
}

/// [`federate`], also taking Flower clients on `flower`.
async fn federate_with(
    config: ServerConfig,
    others: &[(&'static str, Behaviour)],
    flower: federation::FlowerListeners,
) -> Federated {
    let (connect, listener) = mpsc::channel(16);
    let mut participants = tokio::task::JoinSet::new();
    // The others join first (they get the lowest ids, so jobs reach them first).
    for &(name, behaviour) in others {
        let connect = connect.clone();
        let pipe = move || {
            let connect = connect.clone();
            async move {
                let (ours, theirs) = tokio::io::duplex(1 << 16);
                connect.send(theirs).await.ok().map(|()| ours)
            }
        };
        participants.spawn(async move { (name, rejoining(pipe, name, 100, behaviour).await) });
    }
    tokio::task::yield_now().await;
    for (name, delta, examples, accuracy) in [("a", 1.0, 100, 0.5), ("b", -1.0, 300, 0.8)] {
        let (ours, theirs) = tokio::io::duplex(1 << 16);
        connect.send(theirs).await.unwrap();
        participants.spawn(async move {
            let honest = Behaviour::Honest { delta, accuracy };
            (name, vec![participant(ours, name, examples, honest).await])
        });
    }
    drop(connect);
    let started = tokio::time::Instant::now();
    let progress = Count::default();
    let seed = config.seed;
    let outcome = federation::run(config, listener, flower, &progress)
        .await
        .unwrap();
    let virtual_time = started.elapsed();
    let (honest, endings): (Vec<_>, Vec<_>) = participants
        .join_all()
        .await
        .into_iter()
        .partition(|(name, _)| ["a", "b"].contains(name));
    for (name, ending) in honest {
        assert_eq!(ending, [Ending::Bye], "{name}");
    }
    assert_eq!(progress.0.load(Ordering::Relaxed), ROUNDS as usize);
    let spec = model();
    let mut first = vec![0.0f32; spec.param_count()];
    init_params(&Plan::new(&spec), &mut first, &mut Rng::new(seed));
    Federated {
        outcome,
        virtual_time,
        first,
        endings,
    }
}

fn final_model(out: &std::path::Path) -> Vec<f32> {
    let (spec, last) = fedhost::model_file::load(&out.join("model_final.bin")).unwrap();
    assert_eq!(spec, model());
    last
}

/// Checks every round aggregated the honest pair alone: FedAvg of +1 (weight
/// 100) and -1 (weight 300) moves every parameter by -0.5 a round, and the
/// distributed accuracy is (100 x 0.5 + 300 x 0.8) / 400.
fn assert_honest_rounds(outcome: &federation::Outcome, out: &std::path::Path, first: &[f32]) {
    let history = &outcome.history;
    assert_eq!(history.rounds.len(), ROUNDS as usize);
    for r in &history.rounds {
        assert!(r.aggregated, "round {}", r.round);
        let trained: Vec<&str> = r
            .participants
            .iter()
            .filter(|p| p.fit.is_some())
            .map(|p| p.name.as_str())
            .collect();
        assert_eq!(trained, ["a", "b"], "round {}", r.round);
        let accuracy = r.accuracy_distributed.unwrap();
        assert!(
            (accuracy - 0.725).abs() < 1e-6,
            "round {}: {accuracy}",
            r.round
        );
        assert_eq!(r.fit_metrics.train_accuracy, Some(0.5));
    }
    for (l, f) in final_model(out).iter().zip(first) {
        assert!((l - (f - 0.5 * ROUNDS as f32)).abs() < 1e-5, "{l} vs {f}");
    }
}

#[tokio::test(start_paused = true)]
async fn rounds_aggregate_the_honest_and_record_the_silent_as_missing_the_deadline() {
    let out = tempfile::tempdir().unwrap();
    let Federated {
        outcome,
        virtual_time,
        first,
        ..
    } = federate(config(out.path(), 3), &[("silent", Behaviour::Silent)]).await;
    assert_honest_rounds(&outcome, out.path(), &first);
    for r in &outcome.history.rounds {
        let missed = r
            .failures
            .iter()
            .find(|f| f.name == "silent" && f.phase == Phase::Fit)
            .unwrap_or_else(|| panic!("round {}: {:?}", r.round, r.failures));
        assert_eq!(missed.kind, Some(FailureKind::Deadline));
        assert_eq!(missed.reason, "missed the round deadline");
    }
    // Each round the deadline ran out on the silent participant.
    assert!(virtual_time >= DEADLINE * ROUNDS, "{virtual_time:?}");
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

#[tokio::test(start_paused = true)]
async fn poisoned_updates_and_lying_example_counts_are_refused_and_never_touch_the_model() {
    let out = tempfile::tempdir().unwrap();
    let hostile = [
        ("nan", Behaviour::NanUpdate),
        ("zero", Behaviour::ZeroExamples),
        ("max", Behaviour::MaxExamples),
    ];
    let Federated { outcome, first, .. } = federate(config(out.path(), 5), &hostile).await;
    // The run ends, the model is the honest pair's alone, the accuracy tells the truth.
    assert_honest_rounds(&outcome, out.path(), &first);
    for r in &outcome.history.rounds {
        for (name, _) in &hostile {
            let refused = r
                .failures
                .iter()
                .find(|f| f.name == *name && f.phase == Phase::Fit)
                .unwrap_or_else(|| panic!("round {}: {name}: {:?}", r.round, r.failures));
            assert_eq!(refused.kind, Some(FailureKind::Rejected), "{refused:?}");
            assert!(
                refused.reason.starts_with("its answer was refused"),
                "{refused:?}"
            );
        }
    }
}

#[tokio::test(start_paused = true)]
async fn a_lying_evaluation_is_refused_and_never_counted() {
    let out = tempfile::tempdir().unwrap();
    let liar = [("liar", Behaviour::LyingEvaluation)];
    let Federated { outcome, .. } = federate(config(out.path(), 3), &liar).await;
    let rounds = &outcome.history.rounds;
    assert!(rounds.iter().all(|r| r.aggregated));
    // Its round-1 update was fine; round 1's aggregate it scored with a lie
    // (1.0 over u32::MAX examples) during round 2, and that job was refused.
    let refused = rounds[0]
        .failures
        .iter()
        .find(|f| f.name == "liar" && f.phase == Phase::Evaluate)
        .unwrap_or_else(|| panic!("{:?}", rounds[0].failures));
    assert_eq!(refused.kind, Some(FailureKind::Rejected));
    assert!(
        refused.reason.contains("test examples"),
        "{}",
        refused.reason
    );
    // No evaluation of its is in the history: every accuracy is the honest pair's.
    for r in rounds {
        assert!(
            r.participants
                .iter()
                .all(|p| p.name != "liar" || p.evaluate.is_none())
        );
        let accuracy = r.accuracy_distributed.unwrap();
        assert!(
            (accuracy - 0.725).abs() < 1e-6,
            "round {}: {accuracy}",
            r.round
        );
    }
}

#[tokio::test(start_paused = true)]
async fn a_norm_bound_limits_what_a_scaled_update_can_do() {
    let scaled = [("scaled", Behaviour::Scaled)];
    // Without a bound, one participant scaling its update by 1e6 wrecks the model.
    let out = tempfile::tempdir().unwrap();
    let Federated { first, .. } = federate(config(out.path(), 3), &scaled).await;
    let drift = |last: &[f32]| {
        last.iter()
            .zip(&first)
            .map(|(l, f)| (l - f).abs())
            .fold(0.0f32, f32::max)
    };
    let wrecked = drift(&final_model(out.path()));
    assert!(wrecked > 1e4, "unbounded: drift {wrecked}");
    // With --max-update-norm 10 (the honest updates are sqrt(23) ~ 4.8 long) it
    // moves each parameter by at most 10 x 100/500 a round beyond the honest pull.
    let out = tempfile::tempdir().unwrap();
    let mut bounded = config(out.path(), 3);
    bounded.limits.max_update_norm = Some(10.0);
    let Federated {
        outcome,
        first: first_again,
        ..
    } = federate(bounded, &scaled).await;
    assert_eq!(first, first_again);
    assert!(outcome.history.rounds.iter().all(|r| r.aggregated));
    let held = drift(&final_model(out.path()));
    let bound = ROUNDS as f32 * (200.0 / 500.0 + 10.0 * 100.0 / 500.0);
    assert!(held <= bound, "bounded: drift {held} above {bound}");
}

#[tokio::test(start_paused = true)]
async fn silent_peers_that_joined_first_do_not_hold_the_upload_slots() {
    // More silent peers than the server has upload slots (8): before slots were
    // taken only when an update starts, they held them all while the honest
    // pair trained, and the honest pair missed the deadline.
    const SILENT: [&str; 12] = [
        "s0", "s1", "s2", "s3", "s4", "s5", "s6", "s7", "s8", "s9", "s10", "s11",
    ];
    let silent: Vec<(&'static str, Behaviour)> =
        SILENT.iter().map(|&n| (n, Behaviour::Silent)).collect();
    let out = tempfile::tempdir().unwrap();
    let Federated { outcome, first, .. } = federate(config(out.path(), 14), &silent).await;
    assert_honest_rounds(&outcome, out.path(), &first);
    for r in &outcome.history.rounds {
        let missed = r
            .failures
            .iter()
            .filter(|f| f.phase == Phase::Fit && f.kind == Some(FailureKind::Deadline))
            .count();
        assert_eq!(missed, SILENT.len(), "round {}", r.round);
    }
}

#[tokio::test(start_paused = true)]
async fn a_participant_that_fails_the_same_way_is_told_why_and_dropped_and_the_run_goes_on() {
    let out = tempfile::tempdir().unwrap();
    let mut strict = config(out.path(), 4);
    strict.limits.max_strikes = 2;
    let others = [("nan", Behaviour::NanUpdate), ("silent", Behaviour::Silent)];
    let Federated {
        outcome,
        virtual_time,
        first,
        endings,
    } = federate(strict, &others).await;
    // Dropped after round 2, the round loop no longer waits for them (4 were
    // required): round 3 runs with the honest pair and nobody fails.
    assert_honest_rounds(&outcome, out.path(), &first);
    let rounds = &outcome.history.rounds;
    for r in &rounds[..2] {
        let kinds: Vec<_> = r
            .failures
            .iter()
            .map(|f| (f.name.as_str(), f.kind))
            .collect();
        assert!(
            kinds.contains(&("nan", Some(FailureKind::Rejected))),
            "{kinds:?}"
        );
        assert!(
            kinds.contains(&("silent", Some(FailureKind::Deadline))),
            "{kinds:?}"
        );
    }
    assert!(rounds[2].failures.is_empty(), "{:?}", rounds[2].failures);
    assert!(virtual_time < DEADLINE * 3, "{virtual_time:?}");
    // Each was told why, and refused when it tried to come back.
    for (name, kind) in [("nan", "(rejected)"), ("silent", "(deadline)")] {
        let (_, ended) = endings.iter().find(|(n, _)| *n == name).unwrap();
        let [.., Ending::Told(verdict), Ending::Told(refusal)] = ended.as_slice() else {
            panic!("{name}: {ended:?}");
        };
        assert!(
            verdict.starts_with("dropped from the federation: 2 failures in a row")
                && verdict.contains(kind),
            "{name}: {verdict}"
        );
        assert_eq!(refusal, verdict, "{name}");
    }
}

/// What a scripted Flower client (original protocol) does with a fit.
#[derive(Debug, Clone, Copy, PartialEq)]
enum FlowerBehaviour {
    /// Adds 1 to every parameter on 400 examples, reports no training
    /// metrics (as the reference lab's client), and scores 0.9 on 400.
    Honest,
    /// Answers with another model's tensors.
    WrongShapes,
    /// Answers with bytes that are not `.npy`.
    Garbage,
    /// Leaves `num_examples` out (0 on the wire).
    NoExamples,
}

/// A Flower client on the original stream to `addr`, which rejoins after
/// each refusal (a hostile one would) until the server says goodbye; what
/// ended each of its streams.
async fn flower_client(addr: std::net::SocketAddr, behaviour: FlowerBehaviour) -> Vec<String> {
    use flower_bridge::proto::{client_message, server_message};
    use flower_bridge::{legacy, proto};
    let spec = model();
    let mut endings = Vec::new();
    while let Ok(mut stream) = flower_bridge::join::connect(addr).await {
        let reason = loop {
            let msg = match stream.recv().await {
                Ok(msg) => msg,
                Err(e) => break e.to_string(),
            };
            let answer = match msg.msg {
                Some(server_message::Msg::FitIns(ins)) => {
                    let mut params = vec![0.0; spec.param_count()];
                    legacy::read_parameters(&spec, &ins.parameters.unwrap(), &mut params).unwrap();
                    params.iter_mut().for_each(|p| *p += 1.0);
                    let mut res = client_message::FitRes {
                        status: None,
                        parameters: Some(legacy::parameters(&spec, &params)),
                        num_examples: 400,
                        metrics: Default::default(),
                    };
                    match behaviour {
                        FlowerBehaviour::Honest => {}
                        FlowerBehaviour::WrongShapes => {
                            let other = ModelSpec::mlp(&[4, 4, 2]).unwrap();
                            let wrong = vec![0.0; other.param_count()];
                            res.parameters = Some(legacy::parameters(&other, &wrong));
                        }
                        FlowerBehaviour::Garbage => {
                            res.parameters = Some(proto::Parameters {
                                tensors: vec![b"garbage".to_vec(); 4],
                                tensor_type: legacy::TENSOR_TYPE.into(),
                            });
                        }
                        FlowerBehaviour::NoExamples => res.num_examples = 0,
                    }
                    proto::ClientMessage {
                        msg: Some(client_message::Msg::FitRes(res)),
                    }
                }
                // The hostile ones evaluate over no examples: no weight.
                Some(server_message::Msg::EvaluateIns(_)) => match behaviour {
                    FlowerBehaviour::Honest => legacy::evaluate_res(400, 0.1, 0.9),
                    _ => legacy::evaluate_res(0, 1.0, 0.0),
                },
                Some(server_message::Msg::ReconnectIns(_)) => {
                    stream.send(legacy::disconnect_res()).await.unwrap();
                    endings.push("goodbye".to_string());
                    return endings;
                }
                other => panic!("{other:?}"),
            };
            if let Err(e) = stream.send(answer).await {
                break e.to_string();
            }
        };
        endings.push(reason);
    }
    endings
}

#[tokio::test]
async fn flower_clients_train_beside_ours_and_their_bad_answers_never_touch_the_model() {
    let flower = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = flower.local_addr().unwrap();
    let behaviours = [
        FlowerBehaviour::Honest,
        FlowerBehaviour::WrongShapes,
        FlowerBehaviour::Garbage,
        FlowerBehaviour::NoExamples,
    ];
    let clients: Vec<_> = behaviours
        .iter()
        .map(|&b| tokio::spawn(flower_client(addr, b)))
        .collect();
    let out = tempfile::tempdir().unwrap();
    let Federated { outcome, first, .. } = federate_with(
        config(out.path(), 6),
        &[],
        federation::FlowerListeners {
            legacy: Some(flower),
            fleet: None,
        },
    )
    .await;
    let rounds = &outcome.history.rounds;
    assert_eq!(rounds.len(), ROUNDS as usize);
    for r in rounds {
        assert!(r.aggregated, "round {}", r.round);
        // The honest Flower client weighs 400 beside 100 and 300 of ours...
        let mut weights: Vec<(&str, u32)> = r
            .participants
            .iter()
            .filter(|p| p.examples > 0)
            .map(|p| (p.kind.name(), p.examples))
            .collect();
        weights.sort();
        assert_eq!(
            weights,
            [("flower-legacy", 400), ("tcp", 100), ("tcp", 300)],
            "round {}",
            r.round
        );
        // ...its accuracy enters the weighted mean: (400 x 0.9 + 100 x 0.5 + 300 x 0.8) / 800...
        let accuracy = r.accuracy_distributed.unwrap();
        assert!(
            (accuracy - 0.8125).abs() < 1e-6,
            "round {}: {accuracy}",
            r.round
        );
        // ...and, reporting no training metrics, it leaves the training mean to ours.
        assert_eq!(r.fit_metrics.train_accuracy, Some(0.5));
        // Each hostile one was refused, saying why.
        let mut refused: Vec<&str> = r
            .failures
            .iter()
            .filter(|f| f.phase == Phase::Fit)
            .map(|f| {
                assert_eq!(f.kind, Some(FailureKind::Rejected), "{f:?}");
                f.reason.as_str()
            })
            .collect();
        refused.sort();
        assert_eq!(refused.len(), 3, "round {}: {refused:?}", r.round);
        for (reason, want) in refused.iter().zip([
            "tensor 0 has shape [4, 4]",
            "tensor 0: not a .npy",
            "claims 0 training examples",
        ]) {
            assert!(reason.contains(want), "{reason:?} lacks {want:?}");
        }
    }
    // FedAvg of +1 (400), +1 (100) and -1 (300): +0.25 a round, exactly; the
    // refused answers moved nothing.
    for (l, f) in final_model(out.path()).iter().zip(&first) {
        assert!((l - (f + 0.25 * ROUNDS as f32)).abs() < 1e-5, "{l} vs {f}");
    }
    // Every Flower client heard Flower's goodbye; the hostile ones first heard,
    // each round, why they were refused.
    for (client, behaviour) in clients.into_iter().zip(behaviours) {
        let endings = client.await.unwrap();
        assert_eq!(
            endings.last().map(String::as_str),
            Some("goodbye"),
            "{behaviour:?}"
        );
        let refusals = endings.len() - 1;
        match behaviour {
            FlowerBehaviour::Honest => assert_eq!(refusals, 0, "{endings:?}"),
            _ => {
                assert_eq!(refusals, ROUNDS as usize, "{behaviour:?}: {endings:?}");
                assert!(endings[0].contains("refused"), "{endings:?}");
            }
        }
    }
}
