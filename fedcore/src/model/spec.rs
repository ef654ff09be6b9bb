//! Model specs: the serialisable description of a sequential net.
//!
//! A [`ModelSpec`] is small (it fits in one protocol frame), validated when it is
//! built *and* when it is deserialised, so a spec that came off the wire is as
//! trustworthy as one built in code.

use core::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::Error;

/// The most layers a spec may hold.
pub const MAX_LAYERS: usize = 16;
/// Most parameters a model may have, and most values one layer's output may
/// hold (64 Mi: 256 MiB of f32). A spec beyond it is refused before anything is
/// sized by it, whether it comes from a command line or from a peer.
pub const MAX_PARAMS: u64 = 1 << 26;

/// Height, width and channels of an activation, laid out HWC (channels last, like Keras).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shape {
    /// Rows.
    pub height: u32,
    /// Columns.
    pub width: u32,
    /// Channels.
    pub channels: u32,
}

impl Shape {
    /// A flat vector of `n` values.
    pub const fn flat(n: u32) -> Self {
        Shape {
            height: 1,
            width: 1,
            channels: n,
        }
    }

    /// An image.
    pub const fn image(height: u32, width: u32, channels: u32) -> Self {
        Shape {
            height,
            width,
            channels,
        }
    }

    /// Number of values.
    pub const fn len(&self) -> usize {
        // Saturating: a spec from a peer may name any size; `ModelSpec::new` refuses the huge.
        (self.height as usize)
            .saturating_mul(self.width as usize)
            .saturating_mul(self.channels as usize)
    }

    /// True when the shape holds no values.
    pub const fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// True for a flat vector (height and width 1).
    pub const fn is_flat(&self) -> bool {
        self.height == 1 && self.width == 1
    }
}

/// One layer of a sequential net.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Layer {
    /// Fully connected: kernel `(in, units)` then bias `(units)`, as Keras stores them.
    Dense {
        /// Output width.
        units: u32,
    },
    /// Rectified linear unit.
    Relu,
    /// Reshape HWC to a flat vector (no copy of meaning: the layout is already HWC).
    Flatten,
    /// 3x3 convolution, stride 1, valid padding: kernel HWIO `(3, 3, in, filters)` then bias.
    Conv2d {
        /// Output channels.
        filters: u32,
    },
    /// 2x2 max pooling, stride 2 (odd edges dropped, like Keras' valid pooling).
    MaxPool2d,
}

impl Layer {
    /// The output shape for `input`, or why this layer cannot take it.
    pub fn output_shape(&self, input: Shape, index: usize) -> Result<Shape, Error> {
        let out = match *self {
            Layer::Dense { units } => {
                if !input.is_flat() {
                    return Err(Error::DenseNeedsFlatInput { layer: index });
                }
                if units == 0 {
                    return Err(Error::ZeroWidth { layer: index });
                }
                Shape::flat(units)
            }
            Layer::Relu => input,
            Layer::Flatten => Shape::flat(input.len() as u32),
            Layer::Conv2d { filters } => {
                if filters == 0 {
                    return Err(Error::ZeroWidth { layer: index });
                }
                Shape::image(
                    input.height.saturating_sub(2),
                    input.width.saturating_sub(2),
                    filters,
                )
            }
            Layer::MaxPool2d => Shape::image(input.height / 2, input.width / 2, input.channels),
        };
        if out.is_empty() {
            return Err(Error::EmptyOutput { layer: index });
        }
        Ok(out)
    }

    /// Parameters this layer owns for `input`, counted without overflow, after
    /// checking `input` itself is within [`MAX_PARAMS`] values.
    fn checked_params(&self, input: Shape, index: usize) -> Result<u64, Error> {
        let len = size_of(input, index)?;
        Ok(match *self {
            Layer::Dense { units } => (len + 1).saturating_mul(u64::from(units)),
            Layer::Conv2d { filters } => {
                (9 * u64::from(input.channels) + 1).saturating_mul(u64::from(filters))
            }
            Layer::Relu | Layer::Flatten | Layer::MaxPool2d => 0,
        })
    }

    /// Number of parameters (weights then bias) this layer owns for `input`.
    pub fn param_count(&self, input: Shape) -> usize {
        match *self {
            Layer::Dense { units } => (input.len() + 1) * units as usize,
            Layer::Conv2d { filters } => (9 * input.channels as usize + 1) * filters as usize,
            Layer::Relu | Layer::Flatten | Layer::MaxPool2d => 0,
        }
    }
}

/// The values of `shape`, refused past [`MAX_PARAMS`] (the input of layer `index`).
fn size_of(shape: Shape, index: usize) -> Result<u64, Error> {
    let len = u64::from(shape.height)
        .checked_mul(u64::from(shape.width))
        .and_then(|n| n.checked_mul(u64::from(shape.channels)));
    match len {
        Some(len) if len <= MAX_PARAMS => Ok(len),
        _ => Err(Error::ModelTooLarge {
            what: if index == 0 {
                "input values"
            } else {
                "values in a layer's output"
            },
            max: MAX_PARAMS,
        }),
    }
}

/// A validated sequential net: an input shape and a stack of layers whose last
/// output is the vector of class scores (softmax + cross-entropy is the loss).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "UncheckedSpec")]
pub struct ModelSpec {
    input: Shape,
    layers: heapless::Vec<Layer, MAX_LAYERS>,
}

/// The wire form of a spec, checked by `TryFrom` before it becomes a [`ModelSpec`].
#[derive(Deserialize)]
struct UncheckedSpec {
    input: Shape,
    layers: heapless::Vec<Layer, MAX_LAYERS>,
}

impl TryFrom<UncheckedSpec> for ModelSpec {
    type Error = Error;
    fn try_from(raw: UncheckedSpec) -> Result<Self, Error> {
        ModelSpec::new(raw.input, &raw.layers)
    }
}

impl ModelSpec {
    /// A spec from an input shape and layers, after checking that every shape fits.
    pub fn new(input: Shape, layers: &[Layer]) -> Result<Self, Error> {
        let layers = heapless::Vec::from_slice(layers).map_err(|_| Error::LayerCount {
            layers: layers.len(),
            max: MAX_LAYERS,
        })?;
        if layers.is_empty() {
            return Err(Error::LayerCount {
                layers: 0,
                max: MAX_LAYERS,
            });
        }
        if input.is_empty() {
            return Err(Error::EmptyOutput { layer: 0 });
        }
        let spec = ModelSpec { input, layers };
        let mut shape = input;
        let mut params = 0u64;
        for (i, layer) in spec.layers.iter().enumerate() {
            params = params.saturating_add(layer.checked_params(shape, i)?);
            shape = layer.output_shape(shape, i)?;
        }
        size_of(shape, spec.layers.len())?;
        if params > MAX_PARAMS {
            return Err(Error::ModelTooLarge {
                what: "parameters",
                max: MAX_PARAMS,
            });
        }
        if !shape.is_flat() || shape.channels < 2 {
            return Err(Error::OutputNotFlat);
        }
        Ok(spec)
    }

    /// A multilayer perceptron with ReLU between Dense layers: `widths` = [input, hidden.., classes].
    pub fn mlp(widths: &[u32]) -> Result<Self, Error> {
        let (&input, rest) = widths.split_first().ok_or(Error::BadModelSpec)?;
        if rest.is_empty() {
            return Err(Error::BadModelSpec);
        }
        let mut layers: heapless::Vec<Layer, MAX_LAYERS> = heapless::Vec::new();
        for (i, &units) in rest.iter().enumerate() {
            if i > 0 {
                layers.push(Layer::Relu).map_err(|_| Error::LayerCount {
                    layers: 2 * rest.len() - 1,
                    max: MAX_LAYERS,
                })?;
            }
            layers
                .push(Layer::Dense { units })
                .map_err(|_| Error::LayerCount {
                    layers: 2 * rest.len() - 1,
                    max: MAX_LAYERS,
                })?;
        }
        ModelSpec::new(Shape::flat(input), &layers)
    }

    /// The reference lab's CNN for 28x28x1 images: Conv2d(32, 3x3) -> ReLU -> MaxPool2d
    /// -> Flatten -> Dense(100) -> ReLU -> Dense(10); 542,230 parameters.
    pub fn reference_cnn() -> Self {
        ModelSpec {
            input: Shape::image(28, 28, 1),
            layers: heapless::Vec::from_iter([
                Layer::Conv2d { filters: 32 },
                Layer::Relu,
                Layer::MaxPool2d,
                Layer::Flatten,
                Layer::Dense { units: 100 },
                Layer::Relu,
                Layer::Dense { units: 10 },
            ]),
        }
    }

    /// The input shape.
    pub fn input(&self) -> Shape {
        self.input
    }

    /// The layers, first to last.
    pub fn layers(&self) -> &[Layer] {
        &self.layers
    }

    /// Each layer with its input and output shapes.
    pub fn shapes(&self) -> impl Iterator<Item = (Layer, Shape, Shape)> + '_ {
        // Validated at construction, so every output_shape succeeds; an error would
        // end the iteration early rather than panic.
        let mut shape = self.input;
        self.layers.iter().enumerate().map_while(move |(i, layer)| {
            let input = shape;
            shape = layer.output_shape(input, i).ok()?;
            Some((*layer, input, shape))
        })
    }

    /// Number of classes (width of the last layer's output).
    pub fn classes(&self) -> usize {
        self.shapes().last().map_or(0, |(_, _, out)| out.len())
    }

    /// Total number of parameters.
    pub fn param_count(&self) -> usize {
        self.shapes()
            .map(|(layer, input, _)| layer.param_count(input))
            .sum()
    }
}

impl FromStr for ModelSpec {
    type Err = Error;

    /// Parses `cnn` (the reference CNN) or `mlp:784-128-10`.
    fn from_str(s: &str) -> Result<Self, Error> {
        if s == "cnn" {
            return Ok(ModelSpec::reference_cnn());
        }
        let widths = s.strip_prefix("mlp:").ok_or(Error::BadModelSpec)?;
        let mut parsed: heapless::Vec<u32, MAX_LAYERS> = heapless::Vec::new();
        for w in widths.split('-') {
            let w = w.parse().map_err(|_| Error::BadModelSpec)?;
            parsed.push(w).map_err(|_| Error::LayerCount {
                layers: MAX_LAYERS + 1,
                max: MAX_LAYERS,
            })?;
        }
        ModelSpec::mlp(&parsed)
    }
}

impl core::fmt::Display for ModelSpec {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        if *self == ModelSpec::reference_cnn() {
            return write!(f, "cnn");
        }
        let is_mlp =
            self.input.is_flat()
                && self.layers.iter().enumerate().all(|(i, l)| {
                    matches!((i % 2, l), (0, Layer::Dense { .. }) | (1, Layer::Relu))
                });
        if is_mlp {
            write!(f, "mlp:{}", self.input.len())?;
            for layer in &self.layers {
                if let Layer::Dense { units } = layer {
                    write!(f, "-{units}")?;
                }
            }
            return Ok(());
        }
        write!(
            f,
            "{}x{}x{}",
            self.input.height, self.input.width, self.input.channels
        )?;
        for layer in &self.layers {
            match layer {
                Layer::Dense { units } => write!(f, " dense{units}")?,
                Layer::Relu => write!(f, " relu")?,
                Layer::Flatten => write!(f, " flatten")?,
                Layer::Conv2d { filters } => write!(f, " conv{filters}")?,
                Layer::MaxPool2d => write!(f, " maxpool")?,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::string::ToString;

    #[test]
    fn reference_sizes() {
        assert_eq!(ModelSpec::reference_cnn().param_count(), 542_230);
        assert_eq!(
            ModelSpec::mlp(&[784, 32, 10]).map(|s| s.param_count()),
            Ok(25_450)
        );
        assert_eq!(
            ModelSpec::mlp(&[784, 128, 10]).map(|s| s.param_count()),
            Ok(101_770)
        );
        assert!(
            ModelSpec::new(
                ModelSpec::reference_cnn().input,
                ModelSpec::reference_cnn().layers()
            )
            .is_ok()
        );
    }

    #[test]
    fn parse_and_display_round_trip() {
        for s in ["cnn", "mlp:784-128-10", "mlp:784-32-10", "mlp:784-10"] {
            let spec: ModelSpec = s.parse().unwrap();
            assert_eq!(spec.to_string(), s);
        }
        assert_eq!("mlp:784".parse::<ModelSpec>(), Err(Error::BadModelSpec));
        assert_eq!(
            "mlp:784-x-10".parse::<ModelSpec>(),
            Err(Error::BadModelSpec)
        );
        assert_eq!("resnet".parse::<ModelSpec>(), Err(Error::BadModelSpec));
        assert_eq!(
            "mlp:784-0-10".parse::<ModelSpec>(),
            Err(Error::ZeroWidth { layer: 0 })
        );
    }

    #[test]
    fn invalid_stacks_are_refused() {
        let img = Shape::image(28, 28, 1);
        assert_eq!(
            ModelSpec::new(img, &[Layer::Dense { units: 10 }]),
            Err(Error::DenseNeedsFlatInput { layer: 0 })
        );
        assert_eq!(
            ModelSpec::new(Shape::image(2, 2, 1), &[Layer::Conv2d { filters: 4 }]),
            Err(Error::EmptyOutput { layer: 0 })
        );
        assert_eq!(
            ModelSpec::new(img, &[Layer::Relu]),
            Err(Error::OutputNotFlat)
        );
        assert_eq!(
            ModelSpec::new(img, &[]),
            Err(Error::LayerCount {
                layers: 0,
                max: MAX_LAYERS,
            })
        );
    }

    #[test]
    fn a_model_too_large_to_size_is_refused_before_anything_is_allocated() {
        for too_large in [
            "mlp:784-99999999-10",
            "mlp:4294967295-4294967295-10",
            "mlp:784-65536-1024-10",
        ] {
            assert!(
                matches!(
                    too_large.parse::<ModelSpec>(),
                    Err(Error::ModelTooLarge { .. })
                ),
                "{too_large}"
            );
        }
        let huge_image = Shape::image(u32::MAX, u32::MAX, 3);
        assert!(matches!(
            ModelSpec::new(huge_image, &[Layer::Flatten, Layer::Dense { units: 10 }]),
            Err(Error::ModelTooLarge { .. })
        ));
        // A big model that fits the bound is fine.
        assert!("mlp:784-4096-4096-10".parse::<ModelSpec>().is_ok());
    }

    #[test]
    fn deserialising_validates() {
        let bad = ModelSpec {
            input: Shape::image(28, 28, 1),
            layers: heapless::Vec::from_iter([Layer::Relu]),
        };
        let mut buf = [0u8; 64];
        let bytes = postcard::to_slice(&bad, &mut buf).unwrap();
        assert!(postcard::from_bytes::<ModelSpec>(bytes).is_err());
        let good = ModelSpec::reference_cnn();
        let bytes = postcard::to_slice(&good, &mut buf).unwrap();
        assert_eq!(postcard::from_bytes::<ModelSpec>(bytes).unwrap(), good);
    }
}
