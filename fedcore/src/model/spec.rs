//! Model specs: the serialisable description of a sequential net.
//!
//! A [`ModelSpec`] is small (it fits in one protocol frame), validated when it is
//! built *and* when it is deserialised, so a spec that came off the wire is as
//! trustworthy as one built in code.
//!
//! Layers are Keras' sequential layers, with Keras' semantics: convolutions
//! and pooling over HWC images (channels last), `valid` or `same` padding (or
//! PyTorch's symmetric zero padding, for models that come through ONNX),
//! inverted dropout, and per-layer kernel initialisers. Softmax is not a layer:
//! the last layer's outputs are the logits of the softmax + cross-entropy loss.
//!
//! # The compact form
//! Specs parse from, and print as, one line of words (`FromStr`, `Display`):
//! the input shape (`28x28x1`, or `784` for a flat vector), then one word a
//! layer:
//!
//! | word | layer |
//! | --- | --- |
//! | `conv:32x3` | Conv2D, 32 filters of 3x3; options `:s2` (stride), `:same` or `:p1` (padding), an initialiser |
//! | `dense:100` | Dense, 100 units; option: an initialiser |
//! | `maxpool:2`, `avgpool:3:s2` | pooling, size then `:sN` stride (default: the size) |
//! | `gap` | GlobalAveragePooling2D |
//! | `relu`, `flatten` | as named |
//! | `dropout:0.25` | Dropout at that rate |
//!
//! Initialisers: `glorot_uniform` (the default), `he_uniform`, `lecun_uniform`,
//! `glorot_normal`, `he_normal`, `lecun_normal`. `cnn` (the reference lab's
//! net) and `mlp:784-128-10` (Dense layers with ReLU between) are names too.

use core::fmt;
use core::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::Error;

/// The most layers a spec may hold.
pub const MAX_LAYERS: usize = 24;
/// Most parameters a model may have, and most values one layer's output (or
/// a convolution's im2col matrix) may hold for a sample (64 Mi: 256 MiB of
/// f32). A spec beyond it is refused before anything is sized by it, whether
/// it comes from a command line or from a peer.
pub const MAX_PARAMS: u64 = 1 << 26;
/// Largest convolution kernel and pooling window side.
pub const MAX_WINDOW: u8 = 7;
/// Dropout rates are kept in units of 1/[`RATE_UNIT`] (so specs stay `Eq` and
/// devices never parse a float).
pub const RATE_UNIT: u16 = 10_000;

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

/// How a convolution pads its input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Padding {
    /// No padding: windows lie inside the input (Keras' `valid`).
    Valid,
    /// Keras' `same`: `ceil(size / stride)` outputs, the zeros split with the
    /// extra one after (bottom, right).
    Same,
    /// This many zeros on every side (PyTorch's `padding=p`).
    Zeros(u8),
}

/// How a layer's kernel starts (biases start at zero), as Keras defines each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum Initializer {
    /// Uniform in ±sqrt(6 / (fan_in + fan_out)): Keras' default.
    #[default]
    GlorotUniform,
    /// Uniform in ±sqrt(6 / fan_in).
    HeUniform,
    /// Uniform in ±sqrt(3 / fan_in).
    LecunUniform,
    /// Truncated normal (cut at two deviations) of deviation sqrt(2 / (fan_in + fan_out)).
    GlorotNormal,
    /// Truncated normal of deviation sqrt(2 / fan_in).
    HeNormal,
    /// Truncated normal of deviation sqrt(1 / fan_in).
    LecunNormal,
}

impl Initializer {
    /// Every initialiser with its Keras name.
    pub const NAMED: [(Initializer, &'static str); 6] = [
        (Initializer::GlorotUniform, "glorot_uniform"),
        (Initializer::HeUniform, "he_uniform"),
        (Initializer::LecunUniform, "lecun_uniform"),
        (Initializer::GlorotNormal, "glorot_normal"),
        (Initializer::HeNormal, "he_normal"),
        (Initializer::LecunNormal, "lecun_normal"),
    ];

    /// The initialiser Keras calls `name` (`he_uniform`), if fedcore has it.
    pub fn from_keras(name: &str) -> Option<Self> {
        Self::NAMED
            .iter()
            .find(|(_, n)| *n == name)
            .map(|(init, _)| *init)
    }

    /// Keras' name for it.
    pub fn keras_name(self) -> &'static str {
        Self::NAMED
            .iter()
            .find(|(init, _)| *init == self)
            .map_or("glorot_uniform", |(_, n)| n)
    }
}

/// One layer of a sequential net.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Layer {
    /// Fully connected: kernel `(in, units)` then bias `(units)`, as Keras stores them.
    Dense {
        /// Output width.
        units: u32,
        /// How the kernel starts.
        init: Initializer,
    },
    /// Rectified linear unit.
    Relu,
    /// Reshape HWC to a flat vector (no copy of meaning: the layout is already HWC).
    Flatten,
    /// 2-D convolution: kernel HWIO `(kernel, kernel, in, filters)` then bias.
    Conv2d {
        /// Output channels.
        filters: u32,
        /// Side of the square kernel, 1 to [`MAX_WINDOW`].
        kernel: u8,
        /// Step between windows, 1 to the kernel side.
        stride: u8,
        /// Zeros around the input.
        padding: Padding,
        /// How the kernel starts.
        init: Initializer,
    },
    /// Max pooling over `size` x `size` windows `stride` apart (edges that
    /// fill no window are dropped, like Keras' valid pooling).
    MaxPool2d {
        /// Window side, 1 to [`MAX_WINDOW`].
        size: u8,
        /// Step between windows, 1 to [`MAX_WINDOW`].
        stride: u8,
    },
    /// Average pooling, windows as [`Layer::MaxPool2d`]'s.
    AvgPool2d {
        /// Window side, 1 to [`MAX_WINDOW`].
        size: u8,
        /// Step between windows, 1 to [`MAX_WINDOW`].
        stride: u8,
    },
    /// The mean of each channel over the image: HWC to a flat `C`.
    GlobalAvgPool2d,
    /// Inverted dropout while training (kept values scaled by `1 / (1 - rate)`),
    /// nothing in evaluation.
    Dropout {
        /// Fraction dropped, in units of 1/[`RATE_UNIT`], below [`RATE_UNIT`].
        rate: u16,
    },
}

/// Where a window layer's windows lie along one axis.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    /// Outputs along the axis.
    pub out: usize,
    /// Zeros before the first input (the first window starts at `-before`).
    pub before: usize,
}

impl Span {
    /// The windows of side `size`, `stride` apart, over `input` values padded by `padding`.
    pub fn new(input: u32, size: u8, stride: u8, padding: Padding) -> Option<Span> {
        let (input, size, stride) = (input as usize, usize::from(size), usize::from(stride));
        match padding {
            Padding::Valid => (input >= size).then(|| Span {
                out: (input - size) / stride + 1,
                before: 0,
            }),
            Padding::Same => {
                let out = input.div_ceil(stride);
                let total = ((out.max(1) - 1) * stride + size).saturating_sub(input);
                (out > 0).then_some(Span {
                    out,
                    before: total / 2,
                })
            }
            Padding::Zeros(p) => {
                let padded = input + 2 * usize::from(p);
                (padded >= size).then(|| Span {
                    out: (padded - size) / stride + 1,
                    before: usize::from(p),
                })
            }
        }
    }
}

/// Checks a window side or stride.
fn window_side(v: u8, layer: usize, what: &'static str) -> Result<(), Error> {
    if (1..=MAX_WINDOW).contains(&v) {
        Ok(())
    } else {
        Err(Error::BadLayer { layer, what })
    }
}

impl Layer {
    /// A Dense layer with Keras' default initialiser.
    pub const fn dense(units: u32) -> Self {
        Layer::Dense {
            units,
            init: Initializer::GlorotUniform,
        }
    }

    /// A valid, stride-1 convolution with Keras' default initialiser.
    pub const fn conv(filters: u32, kernel: u8) -> Self {
        Layer::Conv2d {
            filters,
            kernel,
            stride: 1,
            padding: Padding::Valid,
            init: Initializer::GlorotUniform,
        }
    }

    /// Max pooling with windows `size` apart.
    pub const fn maxpool(size: u8) -> Self {
        Layer::MaxPool2d { size, stride: size }
    }

    /// The windows of a convolution or pooling layer over `input`, rows then
    /// columns, with the window side and stride (`None` for other layers or
    /// when no window fits).
    pub fn windows(&self, input: Shape) -> Option<(Span, Span, usize, usize)> {
        let (size, stride, padding) = match *self {
            Layer::Conv2d {
                kernel,
                stride,
                padding,
                ..
            } => (kernel, stride, padding),
            Layer::MaxPool2d { size, stride } | Layer::AvgPool2d { size, stride } => {
                (size, stride, Padding::Valid)
            }
            _ => return None,
        };
        Some((
            Span::new(input.height, size, stride, padding)?,
            Span::new(input.width, size, stride, padding)?,
            usize::from(size),
            usize::from(stride),
        ))
    }

    /// The output shape for `input`, or why this layer cannot take it.
    pub fn output_shape(&self, input: Shape, index: usize) -> Result<Shape, Error> {
        let out = match *self {
            Layer::Dense { units, .. } => {
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
            Layer::Conv2d {
                filters,
                kernel,
                stride,
                padding,
                ..
            } => {
                if filters == 0 {
                    return Err(Error::ZeroWidth { layer: index });
                }
                window_side(kernel, index, "the kernel side must be 1 to 7")?;
                if !(1..=kernel.max(2)).contains(&stride) {
                    return Err(Error::BadLayer {
                        layer: index,
                        what: "the stride must be 1 to the kernel side (or 2 for a 1x1 kernel)",
                    });
                }
                if let Padding::Zeros(p) = padding
                    && p >= kernel
                {
                    return Err(Error::BadLayer {
                        layer: index,
                        what: "padding must be smaller than the kernel",
                    });
                }
                self.windows_of(input, index, filters)?
            }
            Layer::MaxPool2d { size, stride } | Layer::AvgPool2d { size, stride } => {
                window_side(size, index, "the pool size must be 1 to 7")?;
                window_side(stride, index, "the pool stride must be 1 to 7")?;
                self.windows_of(input, index, input.channels)?
            }
            Layer::GlobalAvgPool2d => Shape::flat(input.channels),
            Layer::Dropout { rate } => {
                if rate >= RATE_UNIT {
                    return Err(Error::BadLayer {
                        layer: index,
                        what: "the dropout rate must be in [0, 1)",
                    });
                }
                input
            }
        };
        if out.is_empty() {
            return Err(Error::EmptyOutput { layer: index });
        }
        Ok(out)
    }

    /// The output of a window layer with `channels` channels.
    fn windows_of(&self, input: Shape, index: usize, channels: u32) -> Result<Shape, Error> {
        let (rows, cols, ..) = self
            .windows(input)
            .ok_or(Error::EmptyOutput { layer: index })?;
        Ok(Shape::image(rows.out as u32, cols.out as u32, channels))
    }

    /// Side of the convolution kernel (0 for other layers).
    pub fn kernel_side(&self) -> usize {
        match *self {
            Layer::Conv2d { kernel, .. } => usize::from(kernel),
            _ => 0,
        }
    }

    /// How the layer's kernel starts (`None` for layers without parameters).
    pub fn initializer(&self) -> Option<Initializer> {
        match *self {
            Layer::Dense { init, .. } | Layer::Conv2d { init, .. } => Some(init),
            _ => None,
        }
    }

    /// Parameters this layer owns for `input`, counted without overflow, after
    /// checking `input` itself is within [`MAX_PARAMS`] values.
    fn checked_params(&self, input: Shape, index: usize) -> Result<u64, Error> {
        let len = size_of(input, index)?;
        Ok(match *self {
            Layer::Dense { units, .. } => (len + 1).saturating_mul(u64::from(units)),
            Layer::Conv2d {
                filters, kernel, ..
            } => {
                let taps = u64::from(kernel) * u64::from(kernel);
                (taps * u64::from(input.channels) + 1).saturating_mul(u64::from(filters))
            }
            _ => 0,
        })
    }

    /// Number of parameters (weights then bias) this layer owns for `input`.
    pub fn param_count(&self, input: Shape) -> usize {
        match *self {
            Layer::Dense { units, .. } => (input.len() + 1) * units as usize,
            Layer::Conv2d {
                filters, kernel, ..
            } => {
                let taps = usize::from(kernel) * usize::from(kernel);
                (taps * input.channels as usize + 1) * filters as usize
            }
            _ => 0,
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
            let out = layer.output_shape(shape, i)?;
            // A convolution's im2col matrix: a row of taps a window.
            let taps = (layer.kernel_side() * layer.kernel_side()) as u32;
            size_of(
                Shape::image(out.height, out.width, taps.saturating_mul(shape.channels)),
                i + 1,
            )?;
            shape = out;
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
        if shape.channels > 256 {
            return Err(Error::TooManyClasses {
                classes: shape.channels as usize,
            });
        }
        Ok(spec)
    }

    /// A multilayer perceptron with ReLU between Dense layers: `widths` = [input, hidden.., classes].
    pub fn mlp(widths: &[u32]) -> Result<Self, Error> {
        let (&input, rest) = widths.split_first().ok_or(Error::BadModelSpec {
            word: 0,
            what: "an MLP needs an input width and at least one layer",
        })?;
        if rest.is_empty() {
            return Err(Error::BadModelSpec {
                word: 0,
                what: "an MLP needs an input width and at least one layer",
            });
        }
        let too_many = Error::LayerCount {
            layers: 2 * rest.len() - 1,
            max: MAX_LAYERS,
        };
        let mut layers: heapless::Vec<Layer, MAX_LAYERS> = heapless::Vec::new();
        for (i, &units) in rest.iter().enumerate() {
            if i > 0 {
                layers.push(Layer::Relu).map_err(|_| too_many)?;
            }
            layers.push(Layer::dense(units)).map_err(|_| too_many)?;
        }
        ModelSpec::new(Shape::flat(input), &layers)
    }

    /// The reference lab's CNN for 28x28x1 images: Conv2d(32, 3x3, he_uniform)
    /// -> ReLU -> MaxPool2d(2) -> Flatten -> Dense(100, he_uniform) -> ReLU ->
    /// Dense(10); 542,230 parameters.
    pub fn reference_cnn() -> Self {
        ModelSpec {
            input: Shape::image(28, 28, 1),
            layers: heapless::Vec::from_iter([
                Layer::Conv2d {
                    filters: 32,
                    kernel: 3,
                    stride: 1,
                    padding: Padding::Valid,
                    init: Initializer::HeUniform,
                },
                Layer::Relu,
                Layer::maxpool(2),
                Layer::Flatten,
                Layer::Dense {
                    units: 100,
                    init: Initializer::HeUniform,
                },
                Layer::Relu,
                Layer::dense(10),
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

    /// Whether the net is an MLP as `mlp:...` names them (Dense layers with
    /// ReLU between, Keras' default initialiser).
    fn is_mlp(&self) -> bool {
        self.input.is_flat()
            && self.layers.len() % 2 == 1
            && self.layers.iter().enumerate().all(|(i, l)| {
                matches!(
                    (i % 2, l),
                    (
                        0,
                        Layer::Dense {
                            init: Initializer::GlorotUniform,
                            ..
                        }
                    ) | (1, Layer::Relu)
                )
            })
    }
}

/// The error for word `word` of a compact spec.
fn bad(word: usize, what: &'static str) -> Error {
    Error::BadModelSpec { word, what }
}

/// A whole number in `word`'s `text`, within `max`.
fn number<T: FromStr + TryFrom<u32>>(
    text: &str,
    word: usize,
    what: &'static str,
) -> Result<T, Error> {
    text.parse::<T>().map_err(|_| bad(word, what))
}

/// Parses the input word: `HxWxC` or a flat width.
fn parse_input(text: &str, word: usize) -> Result<Shape, Error> {
    const WHAT: &str = "the input is HxWxC (e.g. 28x28x1) or a width (e.g. 784)";
    let mut dims = text.split('x');
    let mut next =
        || -> Result<Option<u32>, Error> { dims.next().map(|d| number(d, word, WHAT)).transpose() };
    match (next()?, next()?, next()?, next()?) {
        (Some(n), None, None, None) => Ok(Shape::flat(n)),
        (Some(h), Some(w), Some(c), None) => Ok(Shape::image(h, w, c)),
        _ => Err(bad(word, WHAT)),
    }
}

/// Parses one layer word (see the module's table).
fn parse_layer(text: &str, word: usize) -> Result<Layer, Error> {
    let mut parts = text.split(':');
    let name = parts.next().unwrap_or_default();
    let arg = parts.next();
    let options = parts;
    let no_arg = |layer: Layer| match arg {
        None => Ok(layer),
        Some(_) => Err(bad(word, "this layer takes no settings")),
    };
    match name {
        "relu" => no_arg(Layer::Relu),
        "flatten" => no_arg(Layer::Flatten),
        "gap" => no_arg(Layer::GlobalAvgPool2d),
        "dense" => {
            let units = number(
                arg.ok_or(bad(word, "dense needs its units, e.g. dense:100"))?,
                word,
                "dense:UNITS takes a whole number of units",
            )?;
            let mut init = Initializer::GlorotUniform;
            for option in options {
                init = Initializer::from_keras(option).ok_or(bad(
                    word,
                    "dense's option is an initialiser (e.g. he_uniform)",
                ))?;
            }
            Ok(Layer::Dense { units, init })
        }
        "conv" => {
            const WHAT: &str = "conv:FxK takes filters and kernel side, e.g. conv:32x3";
            let (filters, kernel) = arg.and_then(|a| a.split_once('x')).ok_or(bad(word, WHAT))?;
            let (filters, kernel) = (number(filters, word, WHAT)?, number(kernel, word, WHAT)?);
            let mut layer = Layer::conv(filters, kernel);
            if let Layer::Conv2d {
                stride,
                padding,
                init,
                ..
            } = &mut layer
            {
                for option in options {
                    if option == "same" {
                        *padding = Padding::Same;
                    } else if option == "valid" {
                        *padding = Padding::Valid;
                    } else if let Some(s) = option.strip_prefix('s') {
                        *stride = number(s, word, "a stride is sN, e.g. s2")?;
                    } else if let Some(p) = option.strip_prefix('p') {
                        *padding = Padding::Zeros(number(p, word, "zero padding is pN, e.g. p1")?);
                    } else {
                        *init = Initializer::from_keras(option).ok_or(bad(
                            word,
                            "conv's options are sN, same, valid, pN or an initialiser",
                        ))?;
                    }
                }
            }
            Ok(layer)
        }
        "maxpool" | "avgpool" => {
            const WHAT: &str = "pooling takes its size, e.g. maxpool:2 or avgpool:3:s2";
            let size = number(arg.ok_or(bad(word, WHAT))?, word, WHAT)?;
            let mut stride = size;
            for option in options {
                let s = option.strip_prefix('s').ok_or(bad(word, WHAT))?;
                stride = number(s, word, "a stride is sN, e.g. s2")?;
            }
            Ok(if name == "maxpool" {
                Layer::MaxPool2d { size, stride }
            } else {
                Layer::AvgPool2d { size, stride }
            })
        }
        "dropout" => {
            const WHAT: &str = "dropout takes a rate in [0, 1), e.g. dropout:0.25";
            let rate: f32 = arg
                .ok_or(bad(word, WHAT))?
                .parse()
                .map_err(|_| bad(word, WHAT))?;
            if !(0.0..1.0).contains(&rate) || options.count() > 0 {
                return Err(bad(word, WHAT));
            }
            Ok(Layer::Dropout {
                rate: (rate * f32::from(RATE_UNIT) + 0.5) as u16,
            })
        }
        _ => Err(bad(
            word,
            "unknown layer: conv, dense, maxpool, avgpool, gap, relu, flatten or dropout",
        )),
    }
}

impl FromStr for ModelSpec {
    type Err = Error;

    /// Parses `cnn` (the reference CNN), `mlp:784-128-10`, or the compact form
    /// (see the module documentation).
    fn from_str(s: &str) -> Result<Self, Error> {
        let s = s.trim();
        if s == "cnn" {
            return Ok(ModelSpec::reference_cnn());
        }
        if let Some(widths) = s.strip_prefix("mlp:") {
            let mut parsed: heapless::Vec<u32, MAX_LAYERS> = heapless::Vec::new();
            for w in widths.split('-') {
                let w = number(w, 0, "mlp: takes widths joined by '-', e.g. mlp:784-128-10")?;
                parsed.push(w).map_err(|_| Error::LayerCount {
                    layers: MAX_LAYERS + 1,
                    max: MAX_LAYERS,
                })?;
            }
            return ModelSpec::mlp(&parsed);
        }
        let mut words = s.split_whitespace();
        let input = parse_input(
            words.next().ok_or(bad(
                0,
                "expected cnn, mlp:784-128-10, or an input shape and layers, e.g. \"28x28x1 conv:32x3 relu maxpool:2 flatten dense:10\"",
            ))?,
            1,
        )?;
        let mut layers: heapless::Vec<Layer, MAX_LAYERS> = heapless::Vec::new();
        for (i, word) in words.enumerate() {
            layers
                .push(parse_layer(word, i + 2)?)
                .map_err(|_| Error::LayerCount {
                    layers: MAX_LAYERS + 1,
                    max: MAX_LAYERS,
                })?;
        }
        ModelSpec::new(input, &layers)
    }
}

impl fmt::Display for Layer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let init = |f: &mut fmt::Formatter<'_>, init: Initializer| match init {
            Initializer::GlorotUniform => Ok(()),
            other => write!(f, ":{}", other.keras_name()),
        };
        match *self {
            Layer::Dense { units, init: i } => {
                write!(f, "dense:{units}")?;
                init(f, i)
            }
            Layer::Relu => write!(f, "relu"),
            Layer::Flatten => write!(f, "flatten"),
            Layer::GlobalAvgPool2d => write!(f, "gap"),
            Layer::Conv2d {
                filters,
                kernel,
                stride,
                padding,
                init: i,
            } => {
                write!(f, "conv:{filters}x{kernel}")?;
                if stride != 1 {
                    write!(f, ":s{stride}")?;
                }
                match padding {
                    Padding::Valid => {}
                    Padding::Same => write!(f, ":same")?,
                    Padding::Zeros(p) => write!(f, ":p{p}")?,
                }
                init(f, i)
            }
            Layer::MaxPool2d { size, stride } | Layer::AvgPool2d { size, stride } => {
                let name = if matches!(self, Layer::MaxPool2d { .. }) {
                    "maxpool"
                } else {
                    "avgpool"
                };
                write!(f, "{name}:{size}")?;
                if stride != size {
                    write!(f, ":s{stride}")?;
                }
                Ok(())
            }
            Layer::Dropout { rate } => {
                // Ten-thousandths as a decimal without trailing zeros.
                let (whole, mut frac, mut digits) = (rate / RATE_UNIT, rate % RATE_UNIT, 4);
                while frac > 0 && frac % 10 == 0 {
                    frac /= 10;
                    digits -= 1;
                }
                if frac == 0 {
                    write!(f, "dropout:{whole}")
                } else {
                    write!(f, "dropout:{whole}.{frac:0digits$}")
                }
            }
        }
    }
}

impl fmt::Display for ModelSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if *self == ModelSpec::reference_cnn() {
            return write!(f, "cnn");
        }
        if self.is_mlp() {
            write!(f, "mlp:{}", self.input.len())?;
            for layer in &self.layers {
                if let Layer::Dense { units, .. } = layer {
                    write!(f, "-{units}")?;
                }
            }
            return Ok(());
        }
        let Shape {
            height,
            width,
            channels,
        } = self.input;
        if self.input.is_flat() {
            write!(f, "{channels}")?;
        } else {
            write!(f, "{height}x{width}x{channels}")?;
        }
        for layer in &self.layers {
            write!(f, " {layer}")?;
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
        for s in [
            "cnn",
            "mlp:784-128-10",
            "mlp:784-32-10",
            "mlp:784-10",
            "28x28x1 conv:32x3 relu maxpool:2 flatten dense:100 relu dense:10",
            "28x28x1 conv:16x3:same:he_uniform relu maxpool:2 conv:32x5:s2:p2 relu avgpool:3:s1 dropout:0.25 gap dense:10:lecun_normal",
            "16x16x3 conv:8x1:s2 maxpool:3:s2 flatten dropout:0.5 dense:4",
            "64 dense:32 relu dropout:0.125 dense:10",
        ] {
            let spec: ModelSpec = s.parse().unwrap_or_else(|e| panic!("{s}: {e}"));
            assert_eq!(spec.to_string(), s);
        }
        // The reference net spelt out is the reference net.
        let spelt = "28x28x1 conv:32x3:he_uniform relu maxpool:2 flatten dense:100:he_uniform relu dense:10";
        assert_eq!(spelt.parse(), Ok(ModelSpec::reference_cnn()));
    }

    #[test]
    fn parse_errors_name_the_word() {
        for (s, word) in [
            ("mlp:784", 0),
            ("mlp:784-x-10", 0),
            ("resnet", 1),
            ("28x28x1 conv:32x3 relu maxpool flatten dense:10", 4),
            ("28x28x1 conv:32 flatten dense:10", 2),
            ("28x28x1 conv:32x3:s2:wide flatten dense:10", 2),
            ("784 dense:10 softmax", 3),
            ("784 dropout:1.5 dense:10", 2),
            ("784 relu:3 dense:10", 2),
        ] {
            match s.parse::<ModelSpec>() {
                Err(Error::BadModelSpec { word: got, .. }) => assert_eq!(got, word, "{s}"),
                other => panic!("{s}: {other:?}"),
            }
        }
        assert_eq!(
            "mlp:784-0-10".parse::<ModelSpec>(),
            Err(Error::ZeroWidth { layer: 0 })
        );
        assert!(matches!(
            "28x28x1 conv:4x9 flatten dense:10".parse::<ModelSpec>(),
            Err(Error::BadLayer { layer: 0, .. })
        ));
    }

    #[test]
    fn windows_follow_keras_and_pytorch() {
        // Keras same: ceil(n / stride) outputs, the odd zero after.
        assert_eq!(
            Span::new(28, 3, 2, Padding::Same),
            Some(Span { out: 14, before: 0 })
        );
        assert_eq!(
            Span::new(28, 3, 1, Padding::Same),
            Some(Span { out: 28, before: 1 })
        );
        assert_eq!(
            Span::new(16, 5, 2, Padding::Same),
            Some(Span { out: 8, before: 1 })
        );
        // PyTorch padding=1 with stride 2: floor((28 + 2 - 3) / 2) + 1.
        assert_eq!(
            Span::new(28, 3, 2, Padding::Zeros(1)),
            Some(Span { out: 14, before: 1 })
        );
        assert_eq!(
            Span::new(7, 3, 2, Padding::Valid),
            Some(Span { out: 3, before: 0 })
        );
        assert_eq!(Span::new(2, 3, 1, Padding::Valid), None);
        let spec: ModelSpec =
            "16x16x3 conv:8x5:s2:same relu avgpool:2:s1 maxpool:3:s2 conv:12x3 gap dense:5"
                .parse()
                .unwrap();
        let outs: std::vec::Vec<Shape> = spec.shapes().map(|(_, _, o)| o).collect();
        assert_eq!(outs[0], Shape::image(8, 8, 8));
        assert_eq!(outs[2], Shape::image(7, 7, 8));
        assert_eq!(outs[3], Shape::image(3, 3, 8));
        assert_eq!(outs[4], Shape::image(1, 1, 12));
        assert_eq!(outs[5], Shape::flat(12));
        assert_eq!(
            spec.param_count(),
            (25 * 3 + 1) * 8 + (9 * 8 + 1) * 12 + 13 * 5
        );
    }

    #[test]
    fn invalid_stacks_are_refused() {
        let img = Shape::image(28, 28, 1);
        assert_eq!(
            ModelSpec::new(img, &[Layer::dense(10)]),
            Err(Error::DenseNeedsFlatInput { layer: 0 })
        );
        assert_eq!(
            ModelSpec::new(Shape::image(2, 2, 1), &[Layer::conv(4, 3)]),
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
        assert_eq!(
            ModelSpec::new(Shape::flat(4), &[Layer::dense(300)]),
            Err(Error::TooManyClasses { classes: 300 })
        );
        assert!(matches!(
            ModelSpec::new(
                img,
                &[
                    Layer::Dropout { rate: RATE_UNIT },
                    Layer::Flatten,
                    Layer::dense(2)
                ]
            ),
            Err(Error::BadLayer { layer: 0, .. })
        ));
    }

    #[test]
    fn a_model_too_large_to_size_is_refused_before_anything_is_allocated() {
        for too_large in [
            "mlp:784-99999999-10",
            "mlp:4294967295-4294967295-10",
            "mlp:784-65536-1024-10",
            // A 7x7 convolution's im2col matrix over a big image.
            "4096x4096x3 conv:2x7 gap dense:2",
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
            ModelSpec::new(huge_image, &[Layer::Flatten, Layer::dense(10)]),
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
        let mut buf = [0u8; 256];
        let bytes = postcard::to_slice(&bad, &mut buf).unwrap();
        assert!(postcard::from_bytes::<ModelSpec>(bytes).is_err());
        let good = ModelSpec::reference_cnn();
        let bytes = postcard::to_slice(&good, &mut buf).unwrap();
        assert_eq!(postcard::from_bytes::<ModelSpec>(bytes).unwrap(), good);
        let deep: ModelSpec = "28x28x1 conv:16x3:same relu maxpool:2 conv:32x3 relu maxpool:2 dropout:0.25 flatten dense:64 relu dropout:0.5 dense:10".parse().unwrap();
        let bytes = postcard::to_slice(&deep, &mut buf).unwrap();
        assert!(bytes.len() < 128, "{} bytes", bytes.len());
        assert_eq!(postcard::from_bytes::<ModelSpec>(bytes).unwrap(), deep);
    }
}
