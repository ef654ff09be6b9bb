//! Flower's original protocol: the bidirectional gRPC stream
//! `flwr.proto.FlowerService/Join` that `start_numpy_client` and
//! `start_server` speak (flwr 1.0 to 1.42). Its messages and service are
//! generated from `proto/flower_legacy.proto`; this module adds what both our
//! server and our client need around them: a model as `Parameters`, a round's
//! settings as a config map, and numbers read out of a metrics map.

use std::collections::HashMap;

use fedcore::model::ModelSpec;
use fedcore::train::TrainConfig;

use crate::tensors::{self, TensorError};

/// The generated messages and service.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod proto {
    tonic::include_proto!("flwr.proto");
}

use proto::{Parameters, Scalar, scalar};

/// What Flower names a tensor list of `numpy.save` bytes.
pub const TENSOR_TYPE: &str = "numpy.ndarray";

/// Flower's default gRPC message limit is 512 MiB; tonic's is 4 MiB, too small
/// for most models, so both directions are raised to this.
pub const MAX_MESSAGE: usize = 512 * 1024 * 1024;

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
) -> Result<(), TensorError> {
    let views: Vec<&[u8]> = from.tensors.iter().map(Vec::as_slice).collect();
    tensors::decode(spec, &views, params)
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

/// The number under `key` in a metrics map (a double or an integer), if any.
pub fn number(map: &HashMap<String, Scalar>, key: &str) -> Option<f64> {
    match map.get(key)?.scalar.as_ref()? {
        scalar::Scalar::Double(v) => Some(*v),
        scalar::Scalar::Sint64(v) => Some(*v as f64),
        scalar::Scalar::Uint64(v) => Some(*v as f64),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;
    use proto::{ClientMessage, ServerMessage, client_message, server_message};

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
}
