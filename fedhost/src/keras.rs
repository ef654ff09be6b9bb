//! Keras models in: the JSON that `model.to_json()` writes for a Sequential
//! model, in the layouts of Keras 2 (TensorFlow 2.12, the reference lab's) and
//! Keras 3, read into a [`ModelSpec`].
//!
//! What is taken: the input shape (an `InputLayer`'s `batch_input_shape` or
//! `batch_shape`, a first layer's `batch_input_shape`, or the model's
//! `build_input_shape`), and the layers Conv2D, MaxPooling2D,
//! AveragePooling2D, GlobalAveragePooling2D, Flatten, Dense, Dropout,
//! Activation and ReLU, with the `activation` of Conv2D and Dense (relu,
//! linear, and softmax on the last layer, which the loss applies). Keras'
//! `get_weights()` order is fedcore's parameter order, so weights move between
//! the two as they are.
//!
//! Everything else is refused, with one line naming the layer and what is
//! unsupported: another model class (a functional model), another layer,
//! dilation, groups, a regulariser or constraint, a bias-free layer, an
//! initialiser fedcore does not draw, channels-first data, or padded pooling.
//! Nothing is guessed: a model trained here is the model the JSON describes.

use std::path::Path;

use fedcore::model::{Initializer, Layer, ModelSpec, Padding, RATE_UNIT, Shape};
use serde_json::Value;

/// Parses a `--model` argument (`cnn`, `mlp:...` or the compact form of
/// [`fedcore::model::spec`]), its error quoting the word at fault.
pub fn parse_model_arg(arg: &str) -> Result<ModelSpec, String> {
    arg.parse().map_err(|e| match e {
        fedcore::Error::BadModelSpec { word, what } if word > 0 => {
            let text = arg.split_whitespace().nth(word - 1).unwrap_or_default();
            format!("word {word} '{text}': {what}")
        }
        other => other.to_string(),
    })
}

/// Why a Keras model could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0}")]
pub struct KerasError(String);

/// Reads the Keras model JSON at `path`.
pub fn load(path: &Path) -> Result<ModelSpec, KerasError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| KerasError(format!("{}: {e}", path.display())))?;
    parse(&text).map_err(|e| KerasError(format!("{}: {e}", path.display())))
}

/// Parses a Keras model JSON (`model.to_json()`).
pub fn parse(text: &str) -> Result<ModelSpec, KerasError> {
    let model: Value = serde_json::from_str(text)
        .map_err(|e| KerasError(format!("not JSON as model.to_json() writes it: {e}")))?;
    let class = model["class_name"].as_str().unwrap_or("(none)");
    if class != "Sequential" {
        return Err(KerasError(format!(
            "a {class} model: only Sequential models are supported (keras.Sequential([...]))"
        )));
    }
    let config = &model["config"];
    let entries = config["layers"]
        .as_array()
        .ok_or_else(|| KerasError("the model's config has no list of layers".into()))?;
    let mut input = shape_of(&config["build_input_shape"])?;
    let mut layers = Vec::new();
    let last = entries
        .iter()
        .rposition(|e| e["class_name"] != "InputLayer")
        .unwrap_or(0);
    for (i, entry) in entries.iter().enumerate() {
        let layer = Entry::new(i, entry);
        for key in ["batch_input_shape", "batch_shape"] {
            if let Some(shape) = shape_of(&layer.config[key])? {
                input.get_or_insert(shape);
            }
        }
        layer.push(i == last, &mut layers)?;
    }
    let input = input.ok_or_else(|| {
        KerasError(
            "the model does not say its input shape: give the first layer input_shape=, or start with keras.Input(shape=...)".into(),
        )
    })?;
    ModelSpec::new(input, &layers)
        .map_err(|e| KerasError(format!("the model is not one fedcore can train: {e}")))
}

/// `[null, H, W, C]`, `[null, H, W]` (one channel) or `[null, F]`.
fn shape_of(value: &Value) -> Result<Option<Shape>, KerasError> {
    let Some(dims) = value.as_array() else {
        return Ok(None);
    };
    let dims: Option<Vec<u32>> = dims
        .iter()
        .skip(1)
        .map(|d| d.as_u64().and_then(|d| u32::try_from(d).ok()))
        .collect();
    match dims.as_deref() {
        Some(&[f]) => Ok(Some(Shape::flat(f))),
        Some(&[h, w]) => Ok(Some(Shape::image(h, w, 1))),
        Some(&[h, w, c]) => Ok(Some(Shape::image(h, w, c))),
        _ => Err(KerasError(format!(
            "input shape {value} is not (features,), (height, width) or (height, width, channels)"
        ))),
    }
}

/// One entry of the model's layer list.
struct Entry<'a> {
    index: usize,
    class: &'a str,
    name: &'a str,
    config: &'a Value,
}

impl<'a> Entry<'a> {
    fn new(index: usize, entry: &'a Value) -> Self {
        let config = &entry["config"];
        Entry {
            index,
            class: entry["class_name"].as_str().unwrap_or("(no class_name)"),
            name: config["name"].as_str().unwrap_or("unnamed"),
            config,
        }
    }

    /// The error for this layer.
    fn refuse(&self, what: impl std::fmt::Display) -> KerasError {
        KerasError(format!(
            "layer {} '{}' ({}): {what}",
            self.index, self.name, self.class
        ))
    }

    fn field(&self, key: &str) -> &Value {
        &self.config[key]
    }

    /// A whole number field.
    fn number(&self, key: &str) -> Result<u32, KerasError> {
        self.field(key)
            .as_u64()
            .and_then(|v| u32::try_from(v).ok())
            .ok_or_else(|| self.refuse(format!("{key} is not a whole number")))
    }

    /// A square window field (`[k, k]` or `k`) within `1..=max`.
    fn square(&self, key: &str, max: u8) -> Result<u8, KerasError> {
        let value = self.field(key);
        let sides: Vec<u64> = match value {
            Value::Array(v) => v.iter().filter_map(Value::as_u64).collect(),
            Value::Number(n) => n.as_u64().into_iter().collect(),
            _ => Vec::new(),
        };
        match sides.as_slice() {
            [a] | [a, _] if sides.iter().all(|s| s == a) && (1..=u64::from(max)).contains(a) => {
                Ok(*a as u8)
            }
            [a, b] if a != b => {
                Err(self.refuse(format!("{key} {value}: only square windows are supported")))
            }
            _ => Err(self.refuse(format!("{key} {value}: must be 1 to {max}"))),
        }
    }

    /// Fields that must be absent, null or as given for fedcore to train what Keras would.
    fn require(&self, key: &str, allowed: &[Value], why: &str) -> Result<(), KerasError> {
        let value = self.field(key);
        if value.is_null() || allowed.contains(value) {
            Ok(())
        } else {
            Err(self.refuse(format!("{key} {value}: {why}")))
        }
    }

    fn channels_last(&self) -> Result<(), KerasError> {
        self.require(
            "data_format",
            &["channels_last".into()],
            "only channels_last data is supported",
        )
    }

    /// Checks the fields every weighted layer shares and returns its kernel initialiser.
    fn weighted(&self) -> Result<Initializer, KerasError> {
        for key in [
            "kernel_regularizer",
            "bias_regularizer",
            "activity_regularizer",
            "kernel_constraint",
            "bias_constraint",
        ] {
            self.require(key, &[], "regularisers and constraints are not supported")?;
        }
        self.require(
            "use_bias",
            &[true.into()],
            "layers without a bias are not supported",
        )?;
        let bias = initializer_name(self.field("bias_initializer"));
        if !matches!(bias.as_deref(), None | Some("zeros")) {
            return Err(self.refuse(format!(
                "bias_initializer {}: only zeros is supported",
                self.field("bias_initializer")
            )));
        }
        match initializer_name(self.field("kernel_initializer")) {
            None => Ok(Initializer::GlorotUniform),
            Some(name) => Initializer::from_keras(&name).ok_or_else(|| {
                let known: Vec<&str> = Initializer::NAMED.iter().map(|(_, n)| *n).collect();
                self.refuse(format!(
                    "kernel_initializer {name} is not supported ({})",
                    known.join(", ")
                ))
            }),
        }
    }

    /// Appends the activation `activation` names (relu, linear; softmax only last).
    fn activation(&self, last: bool, layers: &mut Vec<Layer>) -> Result<(), KerasError> {
        match self.field("activation").as_str().unwrap_or("linear") {
            "linear" => Ok(()),
            "relu" => {
                layers.push(Layer::Relu);
                Ok(())
            }
            "softmax" if last => Ok(()),
            "softmax" => {
                Err(self
                    .refuse("softmax is supported on the last layer only (the loss applies it)"))
            }
            other => Err(self.refuse(format!(
                "activation {other} is not supported (relu, linear; softmax on the last layer)"
            ))),
        }
    }

    /// Appends what this entry is in fedcore's layers.
    fn push(&self, last: bool, layers: &mut Vec<Layer>) -> Result<(), KerasError> {
        match self.class {
            "InputLayer" => {}
            "Conv2D" => {
                let init = self.weighted()?;
                self.channels_last()?;
                self.require(
                    "dilation_rate",
                    &[serde_json::json!([1, 1]), 1.into()],
                    "dilation is not supported",
                )?;
                self.require(
                    "groups",
                    &[1.into()],
                    "grouped convolutions are not supported",
                )?;
                let padding = match self.field("padding").as_str() {
                    Some("valid") | None => Padding::Valid,
                    Some("same") => Padding::Same,
                    Some(other) => {
                        return Err(
                            self.refuse(format!("padding {other} is not supported (valid, same)"))
                        );
                    }
                };
                layers.push(Layer::Conv2d {
                    filters: self.number("filters")?,
                    kernel: self.square("kernel_size", fedcore::model::spec::MAX_WINDOW)?,
                    stride: self.square("strides", fedcore::model::spec::MAX_WINDOW)?,
                    padding,
                    init,
                });
                self.activation(last, layers)?;
            }
            "Dense" => {
                let init = self.weighted()?;
                layers.push(Layer::Dense {
                    units: self.number("units")?,
                    init,
                });
                self.activation(last, layers)?;
            }
            "MaxPooling2D" | "AveragePooling2D" => {
                self.channels_last()?;
                self.require(
                    "padding",
                    &["valid".into()],
                    "only valid pooling is supported",
                )?;
                let size = self.square("pool_size", fedcore::model::spec::MAX_WINDOW)?;
                let stride = if self.field("strides").is_null() {
                    size
                } else {
                    self.square("strides", fedcore::model::spec::MAX_WINDOW)?
                };
                layers.push(if self.class == "MaxPooling2D" {
                    Layer::MaxPool2d { size, stride }
                } else {
                    Layer::AvgPool2d { size, stride }
                });
            }
            "GlobalAveragePooling2D" => {
                self.channels_last()?;
                layers.push(Layer::GlobalAvgPool2d);
            }
            "Flatten" => {
                self.channels_last()?;
                layers.push(Layer::Flatten);
            }
            "Dropout" => {
                self.require("noise_shape", &[], "a noise_shape is not supported")?;
                let rate = self
                    .field("rate")
                    .as_f64()
                    .filter(|r| (0.0..1.0).contains(r))
                    .ok_or_else(|| self.refuse("rate must be a number in [0, 1)"))?;
                layers.push(Layer::Dropout {
                    rate: (rate * f64::from(RATE_UNIT)).round() as u16,
                });
            }
            "Activation" => self.activation(last, layers)?,
            "ReLU" => {
                self.require("max_value", &[], "a capped ReLU is not supported")?;
                for key in ["negative_slope", "threshold"] {
                    self.require(
                        key,
                        &[0.into(), 0.0.into()],
                        "only the plain ReLU is supported",
                    )?;
                }
                layers.push(Layer::Relu);
            }
            other => {
                return Err(self.refuse(format!(
                    "{other} is not supported (Conv2D, MaxPooling2D, AveragePooling2D, GlobalAveragePooling2D, Flatten, Dense, Dropout, Activation, ReLU)"
                )));
            }
        }
        Ok(())
    }
}

/// An initialiser's name in snake case (`HeUniform` and `he_uniform` alike),
/// or `None` when there is none.
fn initializer_name(value: &Value) -> Option<String> {
    let class = match value {
        Value::String(s) => s.as_str(),
        Value::Object(_) => value["class_name"].as_str()?,
        _ => return None,
    };
    let mut name = String::new();
    for (i, c) in class.chars().enumerate() {
        if c.is_ascii_uppercase() {
            if i > 0 && !name.ends_with('_') {
                name.push('_');
            }
            name.push(c.to_ascii_lowercase());
        } else {
            name.push(c);
        }
    }
    Some(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> String {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/data/keras")
            .join(name);
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    #[test]
    fn a_bad_model_argument_quotes_its_word() {
        assert_eq!(
            parse_model_arg("28x28x1 conv:32x3 relu maxpool flatten dense:10").unwrap_err(),
            "word 4 'maxpool': pooling takes its size, e.g. maxpool:2 or avgpool:3:s2"
        );
        assert!(parse_model_arg("cnn").is_ok());
    }

    #[test]
    fn both_layouts_read_alike() {
        for (name, expected) in [
            ("reference_cnn", "cnn"),
            (
                "fashion_cnn",
                "28x28x1 conv:16x3:same relu maxpool:2 conv:32x3 relu maxpool:2 dropout:0.25 flatten dense:64 relu dropout:0.5 dense:10",
            ),
            (
                "all_layers",
                "16x16x3 conv:8x5:s2:same relu conv:8x1 relu avgpool:2:s1 maxpool:3:s2 conv:12x3 relu gap dense:5:lecun_uniform",
            ),
            ("mlp", "64 dense:32 relu dropout:0.2 dense:10"),
            ("inputlayer_mlp", "28x28x1 flatten dense:10"),
            ("deferred_mlp", "64 dense:32 relu dropout:0.2 dense:10"),
        ] {
            for major in [2, 3] {
                let file = format!("{name}.keras{major}.json");
                let spec = parse(&fixture(&file)).unwrap_or_else(|e| panic!("{file}: {e}"));
                assert_eq!(spec.to_string(), expected, "{file}");
            }
        }
    }

    #[test]
    fn what_fedcore_cannot_train_is_refused_with_the_reason() {
        for (name, says) in [
            ("functional", "a Functional model: only Sequential"),
            ("dilated", "dilation is not supported"),
            (
                "regularised",
                "regularisers and constraints are not supported",
            ),
            (
                "batchnorm",
                "(BatchNormalization): BatchNormalization is not supported",
            ),
            ("sigmoid_hidden", "activation sigmoid is not supported"),
        ] {
            for major in [2, 3] {
                let file = format!("{name}.keras{major}.json");
                let err = parse(&fixture(&file)).unwrap_err().to_string();
                assert!(err.contains(says), "{file}: {err}");
                assert!(!err.contains('\n'), "{file}: one line: {err}");
            }
        }
        for (json, says) in [
            ("{", "not JSON"),
            (
                r#"{"class_name": "Sequential", "config": {}}"#,
                "no list of layers",
            ),
            (
                r#"{"class_name": "Sequential", "config": {"layers": [{"class_name": "Dense", "config": {"units": 3}}]}}"#,
                "does not say its input shape",
            ),
            (
                r#"{"class_name": "Sequential", "config": {"layers": [{"class_name": "Dense", "config": {"name": "d", "units": 3, "activation": "softmax", "batch_input_shape": [null, 4]}}, {"class_name": "Dense", "config": {"units": 2}}]}}"#,
                "layer 0 'd' (Dense): softmax is supported on the last layer only",
            ),
            (
                r#"{"class_name": "Sequential", "config": {"layers": [{"class_name": "Conv2D", "config": {"filters": 2, "kernel_size": [3, 5], "batch_input_shape": [null, 8, 8, 1]}}]}}"#,
                "only square windows",
            ),
            (
                r#"{"class_name": "Sequential", "config": {"layers": [{"class_name": "Dense", "config": {"units": 3, "batch_input_shape": [null, 8, 8, 1]}}]}}"#,
                "add a Flatten layer before it",
            ),
        ] {
            let err = parse(json).unwrap_err().to_string();
            assert!(err.contains(says), "{json}: {err}");
        }
    }
}
