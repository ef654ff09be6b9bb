//! A model's tensor list, as Flower moves it, to and from fedcore's flat
//! parameter buffer.
//!
//! Keras' `get_weights()` returns, layer by layer, each kernel and then its
//! bias: a convolution's kernel is HWIO `(3, 3, channels, filters)`, a dense
//! layer's `(inputs, units)`, a bias `(units,)`. fedcore's buffer holds the
//! same tensors in the same order, flattened, so the mapping is a walk over
//! the model's layers with a shape check per tensor.

use fedcore::model::{Layer, ModelSpec, Plan};
use thiserror::Error;

use crate::npy::{Npy, NpyError, write_f32};

/// Why a tensor list is not this model's parameters.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum TensorError {
    /// Another number of tensors than the model has.
    #[error(
        "{got} tensors, but model {model} has {expected} (a kernel and a bias per layer with weights)"
    )]
    Count {
        /// The model, as its spec string.
        model: String,
        /// Tensors the model has.
        expected: usize,
        /// Tensors that came.
        got: usize,
    },
    /// A tensor that does not parse.
    #[error("tensor {index}: {source}")]
    Npy {
        /// Its position in the list.
        index: usize,
        /// What is wrong with it.
        source: NpyError,
    },
    /// A tensor of another shape than the model's.
    #[error("tensor {index} has shape {got:?}, but the model's {what} is {expected:?}")]
    Shape {
        /// Its position in the list.
        index: usize,
        /// Which tensor the model has there, e.g. "layer 4 (dense 100) kernel".
        what: String,
        /// The model's shape.
        expected: Vec<usize>,
        /// The tensor's shape.
        got: Vec<usize>,
    },
}

/// One tensor of a model: where it sits in the flat buffer and its shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorSlot {
    /// Offset in the flat parameter buffer.
    pub offset: usize,
    /// Its dimensions, as Keras reports them.
    pub shape: Vec<usize>,
    /// What it is, for messages: "layer 0 (conv:32x3) kernel".
    pub what: String,
    /// The index of its layer in the spec.
    pub layer: usize,
    /// "kernel" or "bias".
    pub part: &'static str,
}

impl TensorSlot {
    /// Values it holds.
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }

    /// True for a tensor of no values (no layer has one).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The tensors of `spec`, in `get_weights()` order.
pub fn slots(spec: &ModelSpec) -> Vec<TensorSlot> {
    let plan = Plan::new(spec);
    let mut slots = Vec::new();
    for (i, st) in plan.stages().iter().enumerate() {
        let kernel = match st.layer {
            Layer::Conv2d {
                filters, kernel, ..
            } => {
                let k = usize::from(kernel);
                vec![k, k, st.input.channels as usize, filters as usize]
            }
            Layer::Dense { units, .. } => vec![st.input.len(), units as usize],
            _ => continue,
        };
        let name = &st.layer;
        let units = st.bias_count();
        slots.push(TensorSlot {
            offset: st.params,
            shape: kernel,
            what: format!("layer {i} ({name}) kernel"),
            layer: i,
            part: "kernel",
        });
        slots.push(TensorSlot {
            offset: st.params + st.weight_count(),
            shape: vec![units],
            what: format!("layer {i} ({name}) bias"),
            layer: i,
            part: "bias",
        });
    }
    slots
}

/// Reads `tensors` (each `.npy` bytes) into `params` (the flat buffer of
/// `spec`). Every tensor is parsed and shape-checked before any value is
/// written, so on an error `params` is as it was.
pub fn decode(spec: &ModelSpec, tensors: &[&[u8]], params: &mut [f32]) -> Result<(), TensorError> {
    let slots = slots(spec);
    if tensors.len() != slots.len() {
        return Err(TensorError::Count {
            model: spec.to_string(),
            expected: slots.len(),
            got: tensors.len(),
        });
    }
    let mut parsed = Vec::with_capacity(tensors.len());
    for (index, (bytes, slot)) in tensors.iter().zip(&slots).enumerate() {
        let npy = Npy::parse(bytes).map_err(|source| TensorError::Npy { index, source })?;
        if npy.shape() != slot.shape.as_slice() {
            return Err(TensorError::Shape {
                index,
                what: slot.what.clone(),
                expected: slot.shape.clone(),
                got: npy.shape().to_vec(),
            });
        }
        parsed.push(npy);
    }
    for (npy, slot) in parsed.iter().zip(&slots) {
        // Shapes matched, and the slots tile the buffer the plan sized.
        let _ = npy.read_into(&mut params[slot.offset..slot.offset + slot.len()]);
    }
    Ok(())
}

/// Writes `params` (the flat buffer of `spec`) as its tensor list, each as
/// float32 `.npy` bytes.
pub fn encode(spec: &ModelSpec, params: &[f32]) -> Vec<Vec<u8>> {
    slots(spec)
        .iter()
        .map(|slot| {
            let mut bytes = Vec::new();
            write_f32(
                &slot.shape,
                &params[slot.offset..slot.offset + slot.len()],
                &mut bytes,
            );
            bytes
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reference_cnn_is_keras_get_weights_list() {
        let spec = ModelSpec::reference_cnn();
        let shapes: Vec<Vec<usize>> = slots(&spec).into_iter().map(|s| s.shape).collect();
        assert_eq!(
            shapes,
            [
                vec![3, 3, 1, 32],
                vec![32],
                vec![5408, 100],
                vec![100],
                vec![100, 10],
                vec![10]
            ]
        );
        let total: usize = slots(&spec).iter().map(TensorSlot::len).sum();
        assert_eq!(total, spec.param_count());
    }

    #[test]
    fn parameters_round_trip_through_tensors() {
        let spec = ModelSpec::mlp(&[6, 4, 3]).unwrap();
        let params: Vec<f32> = (0..spec.param_count()).map(|i| i as f32 * 0.25).collect();
        let tensors = encode(&spec, &params);
        let views: Vec<&[u8]> = tensors.iter().map(Vec::as_slice).collect();
        let mut back = vec![0.0; params.len()];
        decode(&spec, &views, &mut back).unwrap();
        assert_eq!(back, params);
    }

    #[test]
    fn another_models_tensors_change_nothing_and_say_which_tensor() {
        let ours = ModelSpec::mlp(&[6, 4, 3]).unwrap();
        let theirs = ModelSpec::mlp(&[6, 5, 3]).unwrap();
        let tensors = encode(&theirs, &vec![1.0; theirs.param_count()]);
        let views: Vec<&[u8]> = tensors.iter().map(Vec::as_slice).collect();
        let mut params = vec![0.5; ours.param_count()];
        let err = decode(&ours, &views, &mut params).unwrap_err();
        assert_eq!(
            err.to_string(),
            "tensor 0 has shape [6, 5], but the model's layer 0 (dense:4) kernel is [6, 4]"
        );
        assert!(params.iter().all(|&p| p == 0.5));
        // A garbage tensor late in the list also leaves the first ones unwritten.
        let mut mixed = encode(&ours, &vec![1.0; ours.param_count()]);
        mixed[3] = b"garbage".to_vec();
        let views: Vec<&[u8]> = mixed.iter().map(Vec::as_slice).collect();
        assert_eq!(
            decode(&ours, &views, &mut params),
            Err(TensorError::Npy {
                index: 3,
                source: NpyError::NotNpy
            })
        );
        assert!(params.iter().all(|&p| p == 0.5));
        assert!(matches!(
            decode(&ours, &views[..2], &mut params),
            Err(TensorError::Count { .. })
        ));
    }
}
