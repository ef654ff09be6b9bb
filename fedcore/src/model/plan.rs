//! The resolved form of a spec: where each layer's parameters and activations live.
//!
//! A [`Plan`] turns a [`ModelSpec`] into offsets: each layer's slice of the flat
//! parameter buffer (laid out tensor by tensor exactly like Keras'
//! `get_weights()`), and each layer's slot in the activation arena, per sample.
//! ReLU and Flatten work in place and share their input's slot. From the plan
//! the exact memory a trainer needs follows (see [`crate::train::memory`]).
//!
//! A plan also marks each first one-channel 3x3 convolution followed by ReLU
//! and 2x2 pooling as one fused stage (which every backend runs, see
//! [`crate::kernels`]): its output slot is the pooled one, and the memory the
//! unfused block needed (the convolution's output, its delta and the im2col
//! matrix) is not planned at all. [`Plan::unfused`] runs every layer alone:
//! the reference the fused stage is tested against.

use crate::kernels::ConvPool;
use crate::model::{Layer, MAX_LAYERS, ModelSpec, Padding, Shape};

/// One layer, resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stage {
    /// The layer.
    pub layer: Layer,
    /// Shape it reads.
    pub input: Shape,
    /// Shape it writes.
    pub output: Shape,
    /// Offset of its weights in the parameter buffer (its bias follows them).
    pub params: usize,
    /// Offset of its input slot in the activation arena, per sample.
    pub act_in: usize,
    /// Offset of its output slot in the activation arena, per sample.
    pub act_out: usize,
    /// Whether backward must produce the gradient of its input (some earlier layer has parameters).
    pub needs_input_grad: bool,
    /// How the stage runs: alone, or fused with its neighbours.
    pub fusion: Fusion,
}

/// How a stage runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fusion {
    /// On its own.
    Alone,
    /// A one-channel 3x3 convolution (valid, stride 1) that also applies the
    /// ReLU and the 2x2 pooling after it; its `act_out` is the pooled output's slot.
    ConvReluPool,
    /// Computed by the fused stage before it (that ReLU and that pooling).
    Absorbed,
}

impl Stage {
    /// Number of weights (without the bias).
    pub fn weight_count(&self) -> usize {
        self.layer
            .param_count(self.input)
            .saturating_sub(self.bias_count())
    }

    /// Number of biases.
    pub fn bias_count(&self) -> usize {
        match self.layer {
            Layer::Dense { units, .. } => units as usize,
            Layer::Conv2d { filters, .. } => filters as usize,
            _ => 0,
        }
    }

    /// The fused block's shape (meaningful for a [`Fusion::ConvReluPool`] stage).
    pub fn conv_pool(&self) -> ConvPool {
        ConvPool {
            height: self.input.height as usize,
            width: self.input.width as usize,
            filters: self.bias_count(),
        }
    }

    /// `(rows, k, units)` of the product `Y = A·W` a Dense or Conv2d layer computes
    /// for `batch` samples: `A` is the input `(batch, in)` for Dense, the im2col
    /// matrix `(batch·Ho·Wo, K·K·C)` for Conv2d. Zero for layers without weights.
    pub fn product_shape(&self, batch: usize) -> (usize, usize, usize) {
        let units = self.bias_count();
        let taps = self.layer.kernel_side() * self.layer.kernel_side();
        match self.layer {
            Layer::Dense { .. } => (batch, self.input.len(), units),
            Layer::Conv2d { .. } => (
                batch * self.output.height as usize * self.output.width as usize,
                taps * self.input.channels as usize,
                units,
            ),
            _ => (0, 0, 0),
        }
    }

    /// Values per sample the stage writes to its output slot: its output, or
    /// for a fused stage the pooled output.
    pub fn written_len(&self) -> usize {
        match self.fusion {
            Fusion::ConvReluPool => {
                (self.output.height / 2) as usize
                    * (self.output.width / 2) as usize
                    * self.output.channels as usize
            }
            Fusion::Alone | Fusion::Absorbed => self.output.len(),
        }
    }

    /// Values per sample a fused stage keeps after its output for backward:
    /// which position of each pooling window won, packed (zero for others).
    pub fn winners_len(&self) -> usize {
        match self.fusion {
            Fusion::ConvReluPool => self.conv_pool().winner_words(),
            _ => 0,
        }
    }

    /// Values per sample in the im2col matrix of a convolution, zero otherwise.
    pub fn cols_len(&self) -> usize {
        let taps = self.layer.kernel_side() * self.layer.kernel_side();
        self.output.height as usize
            * self.output.width as usize
            * taps
            * self.input.channels as usize
    }
}

/// A spec resolved into parameter and activation offsets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    spec: ModelSpec,
    stages: heapless::Vec<Stage, MAX_LAYERS>,
    params: usize,
    acts: usize,
    delta: usize,
    cols: usize,
    widest: usize,
}

impl Plan {
    /// Resolves `spec`: each one-channel 3x3 convolution that needs no input
    /// gradient and is followed by ReLU and 2x2 max pooling becomes one fused
    /// stage.
    pub fn new(spec: &ModelSpec) -> Self {
        Self::build(spec, true)
    }

    /// Resolves `spec` with every layer on its own.
    pub fn unfused(spec: &ModelSpec) -> Self {
        Self::build(spec, false)
    }

    fn build(spec: &ModelSpec, fuse: bool) -> Self {
        let layers: heapless::Vec<(Layer, Shape, Shape), MAX_LAYERS> = spec.shapes().collect();
        let mut stages = heapless::Vec::new();
        let (mut params, mut acts) = (0, spec.input().len());
        let (mut slot, mut delta, mut cols, mut widest) = (0, 0, 0, 0);
        let mut seen_params = false;
        let mut absorb = 0;
        for (i, &(layer, input, output)) in layers.iter().enumerate() {
            let fusion = if absorb > 0 {
                absorb -= 1;
                Fusion::Absorbed
            } else if fuse && !seen_params && fusable(&layers[i..]) {
                absorb = 2;
                Fusion::ConvReluPool
            } else {
                Fusion::Alone
            };
            let in_place = matches!(layer, Layer::Relu | Layer::Flatten | Layer::Dropout { .. })
                || fusion == Fusion::Absorbed;
            let act_out = if in_place { slot } else { acts };
            let stage = Stage {
                layer,
                input,
                output,
                params,
                act_in: slot,
                act_out,
                needs_input_grad: seen_params,
                fusion,
            };
            match fusion {
                Fusion::ConvReluPool => acts += stage.written_len() + stage.winners_len(),
                Fusion::Absorbed => {}
                Fusion::Alone => {
                    if !in_place {
                        acts += output.len();
                    }
                    cols = cols.max(stage.cols_len());
                }
            }
            // Backward keeps a delta of every output but those computed inside a
            // fused stage; the pooled output's delta is what the fused stage reads.
            let inside = fusion == Fusion::ConvReluPool
                || (fusion == Fusion::Absorbed && layer == Layer::Relu);
            if !inside {
                delta = delta.max(output.len());
            }
            slot = act_out;
            params += layer.param_count(input);
            seen_params |= layer.param_count(input) > 0;
            widest = widest.max(stage.bias_count());
            // A spec holds at most MAX_LAYERS layers, so this push always fits.
            let _ = stages.push(stage);
        }
        Plan {
            spec: spec.clone(),
            stages,
            params,
            acts,
            delta,
            cols,
            widest,
        }
    }

    /// The spec this plan resolves.
    pub fn spec(&self) -> &ModelSpec {
        &self.spec
    }

    /// The resolved layers.
    pub fn stages(&self) -> &[Stage] {
        &self.stages
    }

    /// Total parameters.
    pub fn param_count(&self) -> usize {
        self.params
    }

    /// Values per sample of the model's input.
    pub fn input_len(&self) -> usize {
        self.spec.input().len()
    }

    /// Number of classes.
    pub fn classes(&self) -> usize {
        self.stages.last().map_or(0, |s| s.output.len())
    }

    /// Activation arena values per sample (input and every non-in-place output).
    pub fn acts_len(&self) -> usize {
        self.acts
    }

    /// Values per sample of one backward delta buffer (the widest layer output).
    pub fn delta_len(&self) -> usize {
        self.delta
    }

    /// Values per sample of the im2col scratch (largest convolution, zero without one).
    pub fn cols_len(&self) -> usize {
        self.cols
    }

    /// Widest output row of a parameter layer: the in-place trainer's gradient row.
    pub fn widest_row(&self) -> usize {
        self.widest
    }

    /// Whether `stage` is the last convolution in forward order (whose im2col
    /// matrix is still in the scratch when backward reaches it).
    pub fn is_last_conv(&self, stage: &Stage) -> bool {
        self.stages
            .iter()
            .rev()
            .find(|s| s.cols_len() > 0 && s.fusion == Fusion::Alone)
            == Some(stage)
    }

    /// Parameters of the largest fused stage: the scratch its gradients go
    /// through on their way to the update (zero without fused stages).
    pub fn fused_params(&self) -> usize {
        self.stages
            .iter()
            .filter(|s| s.fusion == Fusion::ConvReluPool)
            .map(|s| s.weight_count() + s.bias_count())
            .max()
            .unwrap_or(0)
    }

    /// Offset of the logits slot, per sample.
    pub fn logits_slot(&self) -> usize {
        self.stages.last().map_or(0, |s| s.act_out)
    }
}

/// Whether `layers` starts with the block the kernels fuse: a 3x3 valid
/// stride-1 convolution over one channel, then ReLU, then 2x2 max pooling.
fn fusable(layers: &[(Layer, Shape, Shape)]) -> bool {
    matches!(
        layers,
        [
            (Layer::Conv2d { kernel: 3, stride: 1, padding: Padding::Valid, .. }, input, _),
            (Layer::Relu, ..),
            (Layer::MaxPool2d { size: 2, stride: 2 }, ..),
            ..
        ] if input.channels == 1
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cnn_offsets_follow_keras_order() {
        let plan = Plan::unfused(&ModelSpec::reference_cnn());
        let s = plan.stages();
        // conv kernel 3x3x1x32 = 288, bias 32, dense kernel 5408x100, bias 100, dense 100x10, bias 10
        assert_eq!(
            (s[0].params, s[0].weight_count(), s[0].bias_count()),
            (0, 288, 32)
        );
        assert_eq!((s[4].params, s[4].weight_count()), (320, 540_800));
        assert_eq!(s[6].params, 320 + 540_900);
        assert_eq!(plan.param_count(), 542_230);
        assert!(!s[0].needs_input_grad && s[4].needs_input_grad);
        // input 784 + conv 21632 + pool 5408 + dense 100 + dense 10
        assert_eq!(plan.acts_len(), 784 + 21_632 + 5408 + 100 + 10);
        assert_eq!(plan.cols_len(), 26 * 26 * 9);
        assert_eq!(plan.delta_len(), 21_632);
        assert_eq!(plan.classes(), 10);
        // ReLU and Flatten work in place on their input's slot.
        assert_eq!(s[1].act_in, s[1].act_out);
        assert_eq!(s[3].act_out, s[2].act_out);
    }

    #[test]
    fn a_fused_cnn_plans_only_the_pooled_output() {
        let plan = Plan::new(&ModelSpec::reference_cnn());
        let s = plan.stages();
        assert_eq!(s[0].fusion, Fusion::ConvReluPool);
        assert_eq!(
            (s[1].fusion, s[2].fusion),
            (Fusion::Absorbed, Fusion::Absorbed)
        );
        assert!(s[3..].iter().all(|s| s.fusion == Fusion::Alone));
        // The fused stage writes the pooled slot, which Flatten and Dense read.
        assert_eq!(s[0].act_out, 784);
        assert_eq!((s[2].act_out, s[3].act_in, s[4].act_in), (784, 784, 784));
        // input 784 + pooled 5408 and its 169 windows' winners (two bits each,
        // 16 windows a word, 11 words a filter) + dense 100 + dense 10; no
        // im2col matrix; the widest delta is the pooled output's.
        assert_eq!(s[0].winners_len(), 11 * 32);
        assert_eq!(s[4].act_out, 784 + 5408 + 11 * 32);
        assert_eq!(plan.acts_len(), 784 + 5408 + 11 * 32 + 100 + 10);
        assert_eq!((plan.cols_len(), plan.delta_len()), (0, 5408));
        assert_eq!(plan.fused_params(), 320);
        // Parameters are laid out as in the portable plan.
        let unfused = Plan::unfused(&ModelSpec::reference_cnn());
        for (f, p) in s.iter().zip(unfused.stages()) {
            assert_eq!(f.params, p.params);
        }
        assert_eq!(unfused.fused_params(), 0);
    }

    #[test]
    fn only_a_first_one_channel_convolution_is_fused() {
        use Layer::*;
        // A second convolution needs its input gradient; a three-channel one,
        // a 5x5 one, a strided or padded one, or a pooling other than 2x2 is
        // not the kernel's shape.
        let later = [
            Layer::conv(2, 3),
            Relu,
            Layer::conv(3, 3),
            Relu,
            Layer::maxpool(2),
        ];
        let three = [Layer::conv(2, 3), Relu, Layer::maxpool(2)];
        let wide = [Layer::conv(2, 5), Relu, Layer::maxpool(2)];
        let conv = |stride, padding| Conv2d {
            filters: 2,
            kernel: 3,
            stride,
            padding,
            init: crate::model::Initializer::GlorotUniform,
        };
        let strided = [conv(2, Padding::Valid), Relu, Layer::maxpool(2)];
        let same = [conv(1, Padding::Same), Relu, Layer::maxpool(2)];
        let pool3 = [Layer::conv(2, 3), Relu, Layer::maxpool(3)];
        for (input, layers) in [
            (Shape::image(12, 12, 1), &later[..]),
            (Shape::image(8, 8, 3), &three[..]),
            (Shape::image(12, 12, 1), &wide[..]),
            (Shape::image(12, 12, 1), &strided[..]),
            (Shape::image(12, 12, 1), &same[..]),
            (Shape::image(12, 12, 1), &pool3[..]),
        ] {
            let mut all = heapless::Vec::<Layer, 8>::new();
            all.extend_from_slice(layers).unwrap();
            all.extend_from_slice(&[Flatten, Layer::dense(3)]).unwrap();
            let spec = ModelSpec::new(input, &all).unwrap();
            assert!(
                Plan::new(&spec)
                    .stages()
                    .iter()
                    .all(|s| s.fusion == Fusion::Alone)
            );
        }
    }
}
