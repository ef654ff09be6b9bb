//! Flower's original protocol: the bidirectional gRPC stream
//! `flwr.proto.FlowerService/Join` that `start_numpy_client` and
//! `start_server` speak (flwr 1.0 to 1.42). Its messages and service are
//! generated from `proto/flower_legacy.proto`; this module adds what both our
//! server and our client need around them: a round's instructions as Flower
//! messages, Flower's answers read into our buffer and our numbers (every
//! tensor, count and metric checked first), and a round's settings as a config
//! map and back.

use std::collections::HashMap;

use fedcore::model::ModelSpec;
use fedcore::train::TrainConfig;
use thiserror::Error;

use crate::tensors::{self, TensorError};

use crate::proto::{
    self, ClientMessage, Parameters, Scalar, ServerMessage, client_message, scalar, server_message,
};

/// What Flower names a tensor list of `numpy.save` bytes.
pub const TENSOR_TYPE: &str = "numpy.ndarray";

/// Flower's default gRPC message limit is 512 MiB; tonic's is 4 MiB, too small
/// for most models, so both directions are raised to this.
pub const MAX_MESSAGE: usize = 512 * 1024 * 1024;

/// Why a Flower peer's message cannot be used.
#[derive(Debug, Error, PartialEq)]
pub enum LegacyError {
    /// It reported a failure of its own.
    #[error("it reported status {code}: {message}")]
    Status {
        /// Flower's status code name, e.g. `FIT_NOT_IMPLEMENTED`.
        code: String,
        /// Its message.
        message: String,
    },
    /// Its answer carried no parameters.
    #[error("its answer carries no parameters")]
    NoParameters,
    /// Parameters of a serialisation we do not read.
    #[error("its parameters are of type {0:?}; only {TENSOR_TYPE:?} (numpy.save bytes) is read")]
    TensorType(String),
    /// Parameters that are not this model's.
    #[error("its parameters are not this model's: {0}")]
    Tensors(#[from] TensorError),
    /// A negative example count, or one too large to weigh.
    #[error("it reports {0} examples")]
    Examples(i64),
    /// A metric that must be there is not.
    #[error("its metrics have no {0:?} (a number)")]
    MissingMetric(&'static str),
    /// A config value of the wrong type or out of range.
    #[error("config {key:?}: {problem}")]
    Config {
        /// The key.
        key: &'static str,
        /// What is wrong with its value.
        problem: String,
    },
}

/// `params` (the flat buffer of `spec`) as Flower's `Parameters`.
pub fn parameters(spec: &ModelSpec, params: &[f32]) -> Parameters {
    Parameters {
        tensors: tensors::encode(spec, params),
        tensor_type: TENSOR_TYPE.into(),
    }
}

/// Reads Flower's `Parameters` into `params` (the flat buffer of `spec`);
/// nothing is written unless every tensor has the model's shape.
pub fn read_parameters(
    spec: &ModelSpec,
    from: &Parameters,
    params: &mut [f32],
) -> Result<(), LegacyError> {
    if from.tensor_type != TENSOR_TYPE {
        return Err(LegacyError::TensorType(from.tensor_type.clone()));
    }
    let views: Vec<&[u8]> = from.tensors.iter().map(Vec::as_slice).collect();
    Ok(tensors::decode(spec, &views, params)?)
}

/// A float as a Scalar.
pub fn double(v: f64) -> Scalar {
    Scalar {
        scalar: Some(scalar::Scalar::Double(v)),
    }
}

/// An integer as a Scalar (`sint64`, what Python ints become).
pub fn int(v: i64) -> Scalar {
    Scalar {
        scalar: Some(scalar::Scalar::Sint64(v)),
    }
}

/// The config a round's fit instruction carries to a Flower client: the round
/// (`server_round`, as Flower's own strategies send it) and our local
/// settings under their Keras names, for a client that wants to follow them.
pub fn fit_config(round: u32, train: &TrainConfig) -> HashMap<String, Scalar> {
    HashMap::from([
        ("server_round".into(), int(i64::from(round))),
        ("local_epochs".into(), int(i64::from(train.epochs))),
        ("batch_size".into(), int(i64::from(train.batch_size))),
        ("learning_rate".into(), double(f64::from(train.lr))),
        ("momentum".into(), double(f64::from(train.momentum))),
    ])
}

/// Most local epochs a Flower server may ask of our client in one round.
pub const MAX_EPOCHS: u32 = 1000;

/// A round's settings from a Flower server's fit config: `defaults`, with
/// each of [`fit_config`]'s keys that is present taking its place (a stock
/// Flower strategy sends none of them). Values of the wrong type or out of
/// range are refused by name.
pub fn train_config(
    config: &HashMap<String, Scalar>,
    defaults: TrainConfig,
) -> Result<TrainConfig, LegacyError> {
    let mut train = defaults;
    let count = |key: &'static str, max: u32| -> Result<Option<u32>, LegacyError> {
        let problem = |p: String| LegacyError::Config { key, problem: p };
        match config.get(key).and_then(|s| s.scalar.as_ref()) {
            None => Ok(None),
            Some(scalar::Scalar::Sint64(v)) => match u32::try_from(*v) {
                Ok(n) if (1..=max).contains(&n) => Ok(Some(n)),
                _ => Err(problem(format!("{v} is not from 1 to {max}"))),
            },
            Some(other) => Err(problem(format!("{other:?} is not an integer"))),
        }
    };
    let real = |key: &'static str| -> Result<Option<f32>, LegacyError> {
        match config.get(key).map(|_| number(config, key)) {
            None => Ok(None),
            Some(Some(v)) => Ok(Some(v as f32)),
            Some(None) => Err(LegacyError::Config {
                key,
                problem: "not a number".into(),
            }),
        }
    };
    if let Some(epochs) = count("local_epochs", MAX_EPOCHS)? {
        train.epochs = epochs;
    }
    if let Some(batch) = count("batch_size", 1 << 16)? {
        train.batch_size = batch;
    }
    if let Some(lr) = real("learning_rate")? {
        train.lr = lr;
    }
    if let Some(momentum) = real("momentum")? {
        train.momentum = momentum;
    }
    train.validate().map_err(|e| LegacyError::Config {
        key: "learning_rate/momentum",
        problem: e.to_string(),
    })?;
    Ok(train)
}

/// The number under `key` in a metrics map (a double or an integer), if any.
pub fn number(map: &HashMap<String, Scalar>, key: &str) -> Option<f64> {
    match map.get(key)?.scalar.as_ref()? {
        scalar::Scalar::Double(v) => Some(*v),
        scalar::Scalar::Sint64(v) => Some(*v as f64),
        scalar::Scalar::Uint64(v) => Some(*v as f64),
        _ => None,
    }
}

/// Round `round`'s fit instruction: the global model and the round's config.
pub fn fit_ins(spec: &ModelSpec, global: &[f32], round: u32, train: &TrainConfig) -> ServerMessage {
    ServerMessage {
        msg: Some(server_message::Msg::FitIns(server_message::FitIns {
            parameters: Some(parameters(spec, global)),
            config: fit_config(round, train),
        })),
    }
}

/// An instruction to evaluate `global` as round `round`'s aggregate.
pub fn evaluate_ins(spec: &ModelSpec, global: &[f32], round: u32) -> ServerMessage {
    ServerMessage {
        msg: Some(server_message::Msg::EvaluateIns(
            server_message::EvaluateIns {
                parameters: Some(parameters(spec, global)),
                config: HashMap::from([("server_round".into(), int(i64::from(round)))]),
            },
        )),
    }
}

/// "Disconnect and shut down": what Flower's own server sends at the end of a
/// run (a reconnect after 0 seconds means never).
pub fn goodbye() -> ServerMessage {
    ServerMessage {
        msg: Some(server_message::Msg::ReconnectIns(
            server_message::ReconnectIns { seconds: 0 },
        )),
    }
}

/// What a Flower client reported of its training, in our terms.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FitReport {
    /// Examples it trained on (its weight).
    pub examples: u32,
    /// Its training loss and accuracy, when its metrics carry both
    /// (`loss` and `accuracy`; a Flower client need not report them).
    pub scores: Option<(f32, f32)>,
}

/// What a Flower client reported of an evaluation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EvaluateReport {
    /// Examples it evaluated on (its weight).
    pub examples: u32,
    /// Its loss.
    pub loss: f32,
    /// Its accuracy (metric `accuracy`).
    pub accuracy: f32,
}

fn status(status: Option<&proto::Status>) -> Result<(), LegacyError> {
    match status {
        Some(s) if s.code != proto::Code::Ok as i32 => Err(LegacyError::Status {
            code: proto::Code::try_from(s.code)
                .map_or_else(|_| s.code.to_string(), |c| c.as_str_name().to_string()),
            message: s.message.clone(),
        }),
        _ => Ok(()),
    }
}

fn examples(n: i64) -> Result<u32, LegacyError> {
    u32::try_from(n).map_err(|_| LegacyError::Examples(n))
}

/// Reads a Flower client's training answer: its parameters into `params`
/// (the flat buffer of `spec`, untouched unless every tensor fits) and its
/// report. Whether the numbers are plausible is the caller's to judge.
pub fn read_fit_res(
    spec: &ModelSpec,
    res: &client_message::FitRes,
    params: &mut [f32],
) -> Result<FitReport, LegacyError> {
    status(res.status.as_ref())?;
    let examples = examples(res.num_examples)?;
    let given = res.parameters.as_ref().ok_or(LegacyError::NoParameters)?;
    read_parameters(spec, given, params)?;
    let scores = number(&res.metrics, "loss")
        .zip(number(&res.metrics, "accuracy"))
        .map(|(loss, accuracy)| (loss as f32, accuracy as f32));
    Ok(FitReport { examples, scores })
}

/// Reads a Flower client's evaluation answer; its metrics must hold `accuracy`.
pub fn read_evaluate_res(res: &client_message::EvaluateRes) -> Result<EvaluateReport, LegacyError> {
    status(res.status.as_ref())?;
    Ok(EvaluateReport {
        examples: examples(res.num_examples)?,
        loss: res.loss,
        accuracy: number(&res.metrics, "accuracy").ok_or(LegacyError::MissingMetric("accuracy"))?
            as f32,
    })
}

fn ok() -> Option<proto::Status> {
    Some(proto::Status {
        code: proto::Code::Ok as i32,
        message: "Success".into(),
    })
}

fn answer(msg: client_message::Msg) -> ClientMessage {
    ClientMessage { msg: Some(msg) }
}

/// Our client's answer to a fit: its trained parameters, examples and scores.
pub fn fit_res(
    spec: &ModelSpec,
    params: &[f32],
    examples: u32,
    loss: f32,
    accuracy: f32,
) -> ClientMessage {
    answer(client_message::Msg::FitRes(client_message::FitRes {
        status: ok(),
        parameters: Some(parameters(spec, params)),
        num_examples: i64::from(examples),
        metrics: HashMap::from([
            ("loss".into(), double(f64::from(loss))),
            ("accuracy".into(), double(f64::from(accuracy))),
        ]),
    }))
}

/// Our client's answer to an evaluation.
pub fn evaluate_res(examples: u32, loss: f32, accuracy: f32) -> ClientMessage {
    answer(client_message::Msg::EvaluateRes(
        client_message::EvaluateRes {
            status: ok(),
            loss,
            num_examples: i64::from(examples),
            metrics: HashMap::from([("accuracy".into(), double(f64::from(accuracy)))]),
        },
    ))
}

/// Our client's answer when a Flower server asks for its parameters (FedAvg
/// without initial parameters asks one client for them).
pub fn parameters_res(spec: &ModelSpec, params: &[f32]) -> ClientMessage {
    answer(client_message::Msg::GetParametersRes(
        client_message::GetParametersRes {
            status: ok(),
            parameters: Some(parameters(spec, params)),
        },
    ))
}

/// Our client's answer when asked for its properties: it has none to tell.
pub fn properties_res() -> ClientMessage {
    answer(client_message::Msg::GetPropertiesRes(
        client_message::GetPropertiesRes {
            status: ok(),
            properties: HashMap::new(),
        },
    ))
}

/// Our client's acknowledgement of a reconnect instruction, before it leaves.
pub fn disconnect_res() -> ClientMessage {
    answer(client_message::Msg::DisconnectRes(
        client_message::DisconnectRes {
            reason: proto::Reason::Ack as i32,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    #[test]
    fn a_fit_instruction_survives_the_wire_and_carries_the_model() {
        let spec = ModelSpec::mlp(&[5, 3, 2]).unwrap();
        let params: Vec<f32> = (0..spec.param_count()).map(|i| i as f32 - 4.0).collect();
        let msg = ServerMessage {
            msg: Some(server_message::Msg::FitIns(server_message::FitIns {
                parameters: Some(parameters(&spec, &params)),
                config: fit_config(3, &TrainConfig::default()),
            })),
        };
        let back = ServerMessage::decode(msg.encode_to_vec().as_slice()).unwrap();
        let Some(server_message::Msg::FitIns(ins)) = back.msg else {
            panic!("not a FitIns: {back:?}");
        };
        assert_eq!(number(&ins.config, "server_round"), Some(3.0));
        assert_eq!(number(&ins.config, "batch_size"), Some(32.0));
        let p = ins.parameters.unwrap();
        assert_eq!((p.tensor_type.as_str(), p.tensors.len()), (TENSOR_TYPE, 4));
        let mut got = vec![0.0; params.len()];
        read_parameters(&spec, &p, &mut got).unwrap();
        assert_eq!(got, params);
    }

    #[test]
    fn metrics_are_read_as_numbers_whatever_their_type() {
        let metrics = HashMap::from([
            ("accuracy".to_string(), double(0.97)),
            ("seen".to_string(), int(12_000)),
            (
                "name".to_string(),
                Scalar {
                    scalar: Some(scalar::Scalar::String("keras".into())),
                },
            ),
        ]);
        let res = ClientMessage {
            msg: Some(client_message::Msg::EvaluateRes(
                client_message::EvaluateRes {
                    status: None,
                    loss: 0.08,
                    num_examples: 2000,
                    metrics,
                },
            )),
        };
        let Some(client_message::Msg::EvaluateRes(res)) =
            ClientMessage::decode(res.encode_to_vec().as_slice())
                .unwrap()
                .msg
        else {
            panic!("not an EvaluateRes");
        };
        assert_eq!(number(&res.metrics, "accuracy"), Some(0.97));
        assert_eq!(number(&res.metrics, "seen"), Some(12_000.0));
        assert_eq!(number(&res.metrics, "name"), None);
        assert_eq!(number(&res.metrics, "missing"), None);
    }

    fn decoded(msg: &ClientMessage) -> client_message::Msg {
        ClientMessage::decode(msg.encode_to_vec().as_slice())
            .unwrap()
            .msg
            .unwrap()
    }

    #[test]
    fn our_fit_answer_reads_back_as_the_model_and_its_report() {
        let spec = ModelSpec::mlp(&[5, 3, 2]).unwrap();
        let params: Vec<f32> = (0..spec.param_count()).map(|i| 0.5 * i as f32).collect();
        let client_message::Msg::FitRes(res) = decoded(&fit_res(&spec, &params, 600, 0.25, 0.9))
        else {
            panic!("not a FitRes");
        };
        let mut got = vec![0.0; params.len()];
        let report = read_fit_res(&spec, &res, &mut got).unwrap();
        assert_eq!(got, params);
        assert_eq!(
            report,
            FitReport {
                examples: 600,
                scores: Some((0.25, 0.9))
            }
        );
        let client_message::Msg::EvaluateRes(res) = decoded(&evaluate_res(100, 0.5, 0.75)) else {
            panic!("not an EvaluateRes");
        };
        let report = read_evaluate_res(&res).unwrap();
        assert_eq!(
            report,
            EvaluateReport {
                examples: 100,
                loss: 0.5,
                accuracy: 0.75
            }
        );
    }

    #[test]
    fn a_bad_fit_answer_is_refused_by_name_and_leaves_the_buffer_alone() {
        let spec = ModelSpec::mlp(&[5, 3, 2]).unwrap();
        let other = ModelSpec::mlp(&[5, 4, 2]).unwrap();
        let good = client_message::FitRes {
            status: None,
            parameters: Some(parameters(&spec, &vec![1.0; spec.param_count()])),
            num_examples: 10,
            metrics: HashMap::new(),
        };
        let mut buffer = vec![7.0; spec.param_count()];
        let cases = [
            client_message::FitRes {
                parameters: Some(parameters(&other, &vec![1.0; other.param_count()])),
                ..good.clone()
            },
            client_message::FitRes {
                num_examples: -3,
                ..good.clone()
            },
            client_message::FitRes {
                parameters: None,
                ..good.clone()
            },
            client_message::FitRes {
                parameters: Some(Parameters {
                    tensor_type: "torch".into(),
                    ..parameters(&spec, &vec![1.0; spec.param_count()])
                }),
                ..good.clone()
            },
            client_message::FitRes {
                status: Some(proto::Status {
                    code: proto::Code::FitNotImplemented as i32,
                    message: "no".into(),
                }),
                ..good.clone()
            },
            client_message::FitRes {
                parameters: Some(Parameters {
                    tensors: vec![b"garbage".to_vec(); 4],
                    tensor_type: TENSOR_TYPE.into(),
                }),
                ..good.clone()
            },
        ];
        let expected = [
            "tensor 0 has shape [5, 4]",
            "reports -3 examples",
            "no parameters",
            "of type \"torch\"",
            "status FIT_NOT_IMPLEMENTED: no",
            "tensor 0:",
        ];
        for (res, want) in cases.iter().zip(expected) {
            let e = read_fit_res(&spec, res, &mut buffer)
                .unwrap_err()
                .to_string();
            assert!(e.contains(want), "{e:?} lacks {want:?}");
            assert!(buffer.iter().all(|&v| v == 7.0));
        }
        // Without loss and accuracy in its metrics, a fit still counts, unscored.
        let report = read_fit_res(&spec, &good, &mut buffer).unwrap();
        assert_eq!(
            report,
            FitReport {
                examples: 10,
                scores: None
            }
        );
        let no_accuracy = client_message::EvaluateRes {
            status: None,
            loss: 0.1,
            num_examples: 5,
            metrics: HashMap::new(),
        };
        let e = read_evaluate_res(&no_accuracy).unwrap_err();
        assert_eq!(e, LegacyError::MissingMetric("accuracy"));
    }

    #[test]
    fn a_servers_config_overrides_only_what_it_names_and_is_checked() {
        let defaults = TrainConfig::default();
        assert_eq!(train_config(&HashMap::new(), defaults).unwrap(), defaults);
        let ours = TrainConfig {
            epochs: 3,
            batch_size: 64,
            lr: 0.05,
            momentum: 0.5,
            ..defaults
        };
        assert_eq!(train_config(&fit_config(2, &ours), defaults).unwrap(), ours);
        for (key, value, want) in [
            ("local_epochs", int(0), "0 is not from 1 to 1000"),
            ("batch_size", double(32.0), "is not an integer"),
            ("learning_rate", int(-1), "learning rate"),
            (
                "momentum",
                Scalar {
                    scalar: Some(scalar::Scalar::Bool(true)),
                },
                "not a number",
            ),
        ] {
            let map = HashMap::from([(key.to_string(), value)]);
            let e = train_config(&map, defaults).unwrap_err().to_string();
            assert!(e.contains(want), "{key}: {e:?} lacks {want:?}");
        }
    }
}
