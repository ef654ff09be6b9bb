//! Forward and backward passes over a [`Plan`], generic over the [`Scalar`]
//! and the backend ([`Kernels`]) they run on.
//!
//! # Shapes
//! Activations are batch-major, each sample HWC. A Dense layer is `Y = X·W + b`
//! with `X: (batch, in)`, `W: (in, units)`; a convolution is the same product over
//! the im2col matrix `(batch·Ho·Wo, K·K·C)` whose column order `(ky, kx, c)` matches
//! the HWIO kernel flattened to `(K·K·C, filters)`. Backward reuses those products
//! with transposed views: `dW = Xᵀ·dY`, `dX = dY·Wᵀ`. The other layers' loops
//! are in [`super::layers`].
//!
//! Parameter gradients go to a `GradSink`: stored into a full gradient buffer
//! (mini-batch SGD), applied to the weights row by row as they are produced
//! (the in-place batch-1 trainer, which owns no gradient buffer), or folded
//! into the product that computes them (backends whose
//! [`Kernels::FOLDS_STEP`] says so). In every case a layer's input gradient is
//! computed before its weights can change.

use core::ops::Range;

use super::layers;
use crate::kernels::Kernels;
use crate::linalg::{Mat, MatMut};
use crate::model::{Fusion, Initializer, Layer, Plan, Stage};
use crate::rng::Rng;
use crate::scalar::Scalar;

/// Applies a row of gradients `g` to the parameters `w` that start at index `at`.
pub(crate) type UpdateRule<'a, S> = dyn FnMut(&mut [S], usize, &[S]) + 'a;

/// Where parameter gradients go.
pub(crate) enum GradSink<'a, S> {
    /// Into a gradient buffer as long as the parameters.
    Store(&'a mut [S]),
    /// Straight into the parameters, one row at a time through `row` scratch
    /// (as long as the widest parameter row, or a fused stage's parameters).
    Apply {
        /// The scratch.
        row: &'a mut [S],
        /// The update rule.
        rule: &'a mut UpdateRule<'a, S>,
    },
    /// Into an SGD step folded into each weight-gradient product.
    Fold(Fold<'a, S>),
}

/// The state of an SGD step taken layer by layer as backward reaches it.
pub(crate) struct Fold<'a, S> {
    /// Momentum velocity, as long as the parameters (empty without momentum).
    pub velocity: &'a mut [S],
    /// FedProx anchor, as long as the parameters (empty without FedProx).
    pub anchor: &'a [S],
    /// `[step, momentum, prox]`, as [`sgd_step`] takes them.
    pub coeffs: [S; 3],
    /// Where a fused stage's gradients wait for their step (its parameter count).
    pub scratch: &'a mut [S],
}

/// Whether a pass trains (dropout on, its masks drawn from `seed`) or evaluates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Pass {
    /// Training: each dropout layer's mask comes from this seed and its index.
    Train {
        /// The batch's seed.
        seed: u64,
    },
    /// Evaluation: dropout passes everything.
    Evaluate,
}

impl Pass {
    /// The seed of stage `index`'s dropout mask, when training.
    fn dropout_seed(self, index: usize) -> Option<u64> {
        match self {
            Pass::Train { seed } => Some(seed ^ (index as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15)),
            Pass::Evaluate => None,
        }
    }
}

/// One SGD step over `params` (all of them, or one weight row when training in
/// place), from summed gradients `grads`: `velocity` and `anchor` are empty when
/// momentum and FedProx are off. Each case is its
/// own loop so that the common ones vectorise.
pub(crate) fn sgd_step<S: Scalar>(
    params: &mut [S],
    grads: &[S],
    velocity: &mut [S],
    anchor: &[S],
    [step, momentum, prox]: [S; 3],
    dither: &mut impl FnMut() -> u32,
) {
    let mut update = |w: S, g: S, a: Option<S>| {
        let upd = step.mul_dither(g, dither());
        match a {
            Some(a) => upd.add(prox.mul(w.sub(a))),
            None => upd,
        }
    };
    match (velocity.is_empty(), anchor.is_empty()) {
        (true, true) => {
            for (w, &g) in params.iter_mut().zip(grads) {
                *w = w.sub(update(*w, g, None));
            }
        }
        (false, true) => {
            for ((w, &g), v) in params.iter_mut().zip(grads).zip(velocity.iter_mut()) {
                *v = momentum.mul(*v).sub(update(*w, g, None));
                *w = w.add(*v);
            }
        }
        (true, false) => {
            for ((w, &g), &a) in params.iter_mut().zip(grads).zip(anchor) {
                *w = w.sub(update(*w, g, Some(a)));
            }
        }
        (false, false) => {
            for (((w, &g), v), &a) in params
                .iter_mut()
                .zip(grads)
                .zip(velocity.iter_mut())
                .zip(anchor)
            {
                *v = momentum.mul(*v).sub(update(*w, g, Some(a)));
                *w = w.add(*v);
            }
        }
    }
}

/// Runs the net on `batch` samples already in the input slot of `acts`.
pub(crate) fn forward<S: Scalar, K: Kernels<S>>(
    plan: &Plan,
    params: &[S],
    acts: &mut [S],
    cols: &mut [S],
    batch: usize,
    pass: Pass,
) {
    let cap = acts.len() / plan.acts_len().max(1);
    for (index, st) in plan.stages().iter().enumerate() {
        if st.fusion == Fusion::Absorbed {
            continue;
        }
        let (n_in, n_out) = (st.input.len() * batch, st.written_len() * batch);
        if st.act_in == st.act_out {
            let y = &mut acts[st.act_in * cap..st.act_in * cap + n_out];
            match st.layer {
                Layer::Relu => y.iter_mut().for_each(|v| *v = v.max(S::ZERO)),
                Layer::Dropout { rate } => {
                    if let Some(seed) = pass.dropout_seed(index) {
                        layers::dropout(y, rate, seed);
                    }
                }
                _ => {}
            }
            continue;
        }
        let (lo, hi) = acts.split_at_mut(st.act_out * cap);
        let x = &lo[st.act_in * cap..st.act_in * cap + n_in];
        if st.fusion == Fusion::ConvReluPool {
            let (outputs, winners) = fused_slots(st, cap, batch);
            let (y, rest) = hi.split_at_mut(winners.start - outputs.start);
            let winners = &mut rest[..winners.len()];
            K::conv_relu_pool(
                st.conv_pool(),
                x,
                weights(st, params),
                (&mut y[..n_out], winners),
                batch,
            );
            continue;
        }
        let y = &mut hi[..n_out];
        match st.layer {
            Layer::Dense { .. } | Layer::Conv2d { .. } => {
                let (w, b) = weights(st, params);
                let (rows, k, units) = st.product_shape(batch);
                let a = if st.cols_len() > 0 {
                    layers::im2col(st, x, &mut cols[..rows * k], batch);
                    &cols[..rows * k]
                } else {
                    x
                };
                K::gemm(
                    Mat::new(a, rows, k),
                    Mat::new(w, k, units),
                    MatMut::new(y, rows, units),
                    None,
                    S::ONE,
                );
                layers::add_bias(y, b);
            }
            Layer::MaxPool2d { .. } => layers::maxpool(st, x, y, batch),
            Layer::AvgPool2d { .. } => layers::avgpool(st, x, y, batch),
            Layer::GlobalAvgPool2d => layers::global_avgpool(st, x, y, batch),
            Layer::Relu | Layer::Flatten | Layer::Dropout { .. } => {}
        }
    }
}

/// Backpropagates `delta` (the loss gradient of the logits, `(batch, classes)`,
/// in `deltas.0`) through the net, sending parameter gradients to `sink`.
/// `pass` must be the forward pass's (dropout draws the same masks again).
#[allow(clippy::too_many_arguments)]
pub(crate) fn backward<S: Scalar, K: Kernels<S>>(
    plan: &Plan,
    params: &mut [S],
    acts: &[S],
    cols: &mut [S],
    deltas: (&mut [S], &mut [S]),
    batch: usize,
    pass: Pass,
    mut sink: GradSink<'_, S>,
) {
    let cap = acts.len() / plan.acts_len().max(1);
    let (mut cur, mut next) = deltas;
    for (index, st) in plan.stages().iter().enumerate().rev() {
        if st.fusion == Fusion::Absorbed {
            continue;
        }
        let has_params = st.weight_count() > 0;
        if !has_params && !st.needs_input_grad {
            // Nothing below this layer learns.
            break;
        }
        let (n_in, n_out) = (st.input.len() * batch, st.written_len() * batch);
        let x = &acts[st.act_in * cap..st.act_in * cap + n_in];
        match st.layer {
            Layer::Relu => {
                // A select, not a branch: the signs are random.
                for (d, y) in cur[..n_out].iter_mut().zip(x) {
                    *d = if *y > S::ZERO { *d } else { S::ZERO };
                }
                continue;
            }
            Layer::Dropout { rate } => {
                if let Some(seed) = pass.dropout_seed(index) {
                    layers::dropout(&mut cur[..n_out], rate, seed);
                }
                continue;
            }
            Layer::Flatten => continue,
            Layer::MaxPool2d { .. } => {
                layers::maxpool_backward(st, x, &cur[..n_out], &mut next[..n_in], batch);
            }
            Layer::AvgPool2d { .. } => {
                layers::avgpool_backward(st, &cur[..n_out], &mut next[..n_in], batch);
            }
            Layer::GlobalAvgPool2d => {
                layers::global_avgpool_backward(st, &cur[..n_out], &mut next[..n_in], batch);
            }
            Layer::Conv2d { .. } if st.fusion == Fusion::ConvReluPool => {
                let (y, winners) = fused_slots(st, cap, batch);
                let kept = (&acts[y], &acts[winners]);
                fused_param_grads::<S, K>(st, params, x, (kept, &cur[..n_out]), &mut sink, batch);
            }
            Layer::Dense { .. } | Layer::Conv2d { .. } => {
                let (rows, k, units) = st.product_shape(batch);
                let conv = st.cols_len() > 0;
                let dy = Mat::new(&cur[..n_out], rows, units);
                if st.needs_input_grad {
                    // dX = dY·Wᵀ, through the im2col matrix for a convolution.
                    let (w, _) = weights(st, params);
                    let wt = Mat::new(w, k, units).t();
                    if conv {
                        let dcols = MatMut::new(&mut cols[..rows * k], rows, k);
                        K::gemm(dy, wt, dcols, None, S::ONE);
                        layers::col2im(st, &cols[..rows * k], &mut next[..n_in], batch);
                    } else {
                        K::gemm(
                            dy,
                            wt,
                            MatMut::new(&mut next[..n_in], rows, k),
                            None,
                            S::ONE,
                        );
                    }
                }
                // dW = Aᵀ·dY. The forward pass's im2col matrix is still in the scratch
                // when no later convolution and no dX above overwrote it.
                let a = if conv {
                    if st.needs_input_grad || !plan.is_last_conv(st) {
                        layers::im2col(st, x, &mut cols[..rows * k], batch);
                    }
                    &cols[..rows * k]
                } else {
                    x
                };
                param_grads::<S, K>(st, params, Mat::new(a, rows, k).t(), dy, &mut sink);
            }
        }
        core::mem::swap(&mut cur, &mut next);
    }
}
/// Softmax + cross-entropy of `logits` `(batch, classes)`: writes `p - onehot`
/// into `delta` and returns the summed loss (Q16 integer, see [`Scalar::to_q16`]) and
/// the number of correct argmax predictions.
pub(crate) fn softmax_xent<S: Scalar>(
    logits: &[S],
    label: impl Fn(usize) -> u8,
    classes: usize,
    delta: &mut [S],
) -> (i64, u32) {
    let mut loss = 0i64;
    let mut correct = 0;
    for (i, (z, d)) in logits
        .chunks_exact(classes)
        .zip(delta.chunks_exact_mut(classes))
        .enumerate()
    {
        let y = usize::from(label(i));
        let (mut best, mut arg) = (z[0], 0);
        for (j, &v) in z.iter().enumerate() {
            if v > best {
                (best, arg) = (v, j);
            }
        }
        correct += u32::from(arg == y);
        let mut sum = S::ZERO;
        for (dj, &zj) in d.iter_mut().zip(z) {
            *dj = zj.sub(best).exp_nonpos();
            sum = sum.add(*dj);
        }
        // -ln softmax_y = ln(sum) - (z_y - max); sum >= 1 since the max term is e^0.
        loss += sum.ln_ge1().sub(z[y].sub(best)).to_q16();
        for dj in d.iter_mut() {
            *dj = dj.div(sum);
        }
        d[y] = d[y].sub(S::ONE);
    }
    (loss, correct)
}

impl Initializer {
    /// The uniform bound, or the normal's deviation, for a layer with these fans.
    fn scale(self, fan_in: usize, fan_out: usize) -> f32 {
        let (fan, numerator) = match self {
            Initializer::GlorotUniform => (fan_in + fan_out, 6.0),
            Initializer::HeUniform => (fan_in, 6.0),
            Initializer::LecunUniform => (fan_in, 3.0),
            Initializer::GlorotNormal => (fan_in + fan_out, 2.0),
            Initializer::HeNormal => (fan_in, 2.0),
            Initializer::LecunNormal => (fan_in, 1.0),
        };
        crate::scalar::float::sqrt(numerator / fan.max(1) as f32)
    }
}

/// The deviation of a standard normal truncated at ±2.
const TRUNCATED_DEVIATION: f32 = 0.879_625_7;

/// A standard normal draw truncated at ±2 (redrawn beyond), as Keras'
/// truncated normal draws.
fn truncated_normal(rng: &mut Rng) -> f32 {
    loop {
        let z = standard_normal(rng);
        if z.abs() <= 2.0 {
            return z;
        }
    }
}

/// A standard normal draw (Box-Muller).
fn standard_normal(rng: &mut Rng) -> f32 {
    use crate::scalar::float::{cos, ln, sqrt};
    let u = 1.0 - rng.uniform(); // (0, 1]: ln stays finite
    let v = rng.uniform();
    sqrt(-2.0 * ln(u)) * cos(core::f32::consts::TAU * v)
}

/// Initialises `params` as Keras initialises the model: each kernel by its
/// layer's [`Initializer`], biases zero; drawn in f32 and converted, so every
/// scalar type starts from the same model.
pub fn init_params<S: Scalar>(plan: &Plan, params: &mut [S], rng: &mut Rng) {
    for st in plan.stages() {
        let (nw, nb) = (st.weight_count(), st.bias_count());
        let Some(init) = st.layer.initializer().filter(|_| nw > 0) else {
            continue;
        };
        // Keras' fans: a kernel's inputs and outputs per unit, times the
        // receptive field (K x K) for a convolution.
        let fan_in = nw / nb;
        let taps = st.layer.kernel_side().pow(2).max(1);
        let fan_out = taps * nb;
        let scale = init.scale(fan_in, fan_out);
        let (w, b) = params[st.params..st.params + nw + nb].split_at_mut(nw);
        match init {
            Initializer::GlorotUniform | Initializer::HeUniform | Initializer::LecunUniform => {
                for v in w {
                    *v = S::from_f32((2.0 * rng.uniform() - 1.0) * scale);
                }
            }
            // The deviation raised so that the truncated draw keeps `scale`.
            _ => {
                for v in w {
                    *v = S::from_f32(truncated_normal(rng) * scale / TRUNCATED_DEVIATION);
                }
            }
        }
        b.fill(S::ZERO);
    }
}

fn weights<'p, S>(st: &Stage, params: &'p [S]) -> (&'p [S], &'p [S]) {
    let (nw, nb) = (st.weight_count(), st.bias_count());
    params[st.params..st.params + nw + nb].split_at(nw)
}

/// Gradients of a layer's weights (`a·dy`, with `a` the transposed input or
/// im2col matrix) and bias (column sums of `dy`), sent to `sink`.
fn param_grads<S: Scalar, K: Kernels<S>>(
    st: &Stage,
    params: &mut [S],
    a: Mat<'_, S>,
    dy: Mat<'_, S>,
    sink: &mut GradSink<'_, S>,
) {
    let (nw, nb) = (st.weight_count(), st.bias_count());
    match sink {
        GradSink::Store(grads) => {
            let (gw, gb) = grads[st.params..st.params + nw + nb].split_at_mut(nw);
            K::gemm(a, dy, MatMut::new(gw, a.rows, nb), None, S::ONE);
            layers::column_sums(dy.data, nb, gb);
        }
        GradSink::Apply { row, rule } => {
            let row = &mut row[..nb];
            for r in 0..a.rows {
                let a_row = Mat {
                    data: &a.data[r * a.row_stride..],
                    rows: 1,
                    ..a
                };
                K::gemm(a_row, dy, MatMut::new(row, 1, nb), None, S::ONE);
                let start = st.params + r * nb;
                rule(&mut params[start..start + nb], start, row);
            }
            layers::column_sums(dy.data, nb, row);
            let start = st.params + nw;
            rule(&mut params[start..start + nb], start, row);
        }
        GradSink::Fold(fold) => {
            let span = st.params..st.params + nw + nb;
            folded_step::<S, K>(
                (a, dy),
                &mut params[span.clone()],
                fold.velocity.get_mut(span.clone()).unwrap_or(&mut []),
                fold.anchor.get(span).unwrap_or(&[]),
                fold.coeffs,
            );
        }
    }
}

/// One SGD step of a layer whose weight gradient is the product `a·dy` (`a`
/// the transposed input or im2col matrix) and bias gradient the column sums of
/// `dy`, without storing either: with momentum the product lands in the
/// velocity (`v = momentum·v - step·a·dy`), without it in the weights. `layer`,
/// `velocity` and `anchor` are the layer's slices (weights then bias); the
/// last two are empty when momentum and FedProx are off. `[step, momentum,
/// prox]` are as [`sgd_step`] takes them.
fn folded_step<S: Scalar, K: Kernels<S>>(
    (a, dy): (Mat<'_, S>, Mat<'_, S>),
    layer: &mut [S],
    velocity: &mut [S],
    anchor: &[S],
    [step, momentum, prox]: [S; 3],
) {
    let units = dy.cols;
    let nw = a.rows * units;
    let rows = || dy.data.chunks_exact(units).take(dy.rows);
    let minus_step = S::ZERO.sub(step);
    if velocity.is_empty() {
        // The proximal pull uses the weights before this step, so it goes first.
        for (w, &a) in layer.iter_mut().zip(anchor) {
            *w = w.sub(prox.mul(w.sub(a)));
        }
        let (w, b) = layer.split_at_mut(nw);
        K::gemm(
            a,
            dy,
            MatMut::new(w, a.rows, units),
            Some(S::ONE),
            minus_step,
        );
        for row in rows() {
            for (b, &g) in b.iter_mut().zip(row) {
                *b = b.sub(step.mul(g));
            }
        }
        return;
    }
    let (v, vb) = velocity.split_at_mut(nw);
    K::gemm(
        a,
        dy,
        MatMut::new(v, a.rows, units),
        Some(momentum),
        minus_step,
    );
    vb.iter_mut().for_each(|v| *v = v.mul(momentum));
    for row in rows() {
        for (v, &g) in vb.iter_mut().zip(row) {
            *v = v.sub(step.mul(g));
        }
    }
    if anchor.is_empty() {
        for (w, &v) in layer.iter_mut().zip(velocity.iter()) {
            *w = w.add(v);
        }
    } else {
        for ((w, v), &a) in layer.iter_mut().zip(velocity.iter_mut()).zip(anchor) {
            *v = v.sub(prox.mul(w.sub(a)));
            *w = w.add(*v);
        }
    }
}

/// Where a fused stage's `batch` pooled outputs and their windows' winners lie
/// in an activation arena of `cap` samples: the winners follow the output
/// slot's `cap` samples.
fn fused_slots(st: &Stage, cap: usize, batch: usize) -> (Range<usize>, Range<usize>) {
    let (outputs, winners) = (st.act_out * cap, (st.act_out + st.written_len()) * cap);
    (
        outputs..outputs + st.written_len() * batch,
        winners..winners + st.winners_len() * batch,
    )
}

/// A fused stage's gradients, sent to `sink`: computed where the sink keeps
/// them, or into scratch and from there through the update. `kept` is what
/// forward kept (the outputs and their windows' winners), `dy` the outputs'
/// gradient.
fn fused_param_grads<S: Scalar, K: Kernels<S>>(
    st: &Stage,
    params: &mut [S],
    x: &[S],
    (kept, dy): ((&[S], &[S]), &[S]),
    sink: &mut GradSink<'_, S>,
    batch: usize,
) {
    let span = st.params..st.params + st.weight_count() + st.bias_count();
    let shape = st.conv_pool();
    match sink {
        GradSink::Store(grads) => {
            K::conv_relu_pool_grads(shape, x, kept, dy, &mut grads[span], batch);
        }
        GradSink::Apply { row, rule } => {
            let g = &mut row[..span.len()];
            K::conv_relu_pool_grads(shape, x, kept, dy, g, batch);
            rule(&mut params[span.clone()], span.start, g);
        }
        GradSink::Fold(fold) => {
            let g = &mut fold.scratch[..span.len()];
            K::conv_relu_pool_grads(shape, x, kept, dy, g, batch);
            sgd_step(
                &mut params[span.clone()],
                g,
                fold.velocity.get_mut(span.clone()).unwrap_or(&mut []),
                fold.anchor.get(span).unwrap_or(&[]),
                fold.coeffs,
                &mut || 1 << 31,
            );
        }
    }
}

/// One training pass of `batch` samples of `pixels` for the tests: forward,
/// the loss against `label`, backward into a gradient buffer, dropout drawn
/// from `seed`. Returns the summed loss (Q16), every activation and every
/// parameter gradient.
#[cfg(test)]
pub(crate) fn training_pass<S: Scalar, K: Kernels<S>>(
    plan: &Plan,
    params: &[S],
    pixels: &[u8],
    label: impl Fn(usize) -> u8,
    batch: usize,
    seed: u64,
) -> (i64, std::vec::Vec<S>, std::vec::Vec<S>) {
    let mut acts = std::vec![S::ZERO; batch * plan.acts_len()];
    let mut cols = std::vec![S::ZERO; batch * plan.cols_len()];
    let mut d0 = std::vec![S::ZERO; batch * plan.delta_len()];
    let mut d1 = d0.clone();
    for (a, &p) in acts.iter_mut().zip(pixels) {
        *a = S::from_pixel(p);
    }
    let pass = Pass::Train { seed };
    forward::<S, K>(plan, params, &mut acts, &mut cols, batch, pass);
    let logits = &acts[plan.logits_slot() * batch..][..batch * plan.classes()];
    let (loss, _) = softmax_xent(logits, label, plan.classes(), &mut d0);
    let mut grads = std::vec![S::ZERO; plan.param_count()];
    let mut params = params.to_vec();
    let sink = GradSink::Store(&mut grads);
    backward::<S, K>(
        plan,
        &mut params,
        &acts,
        &mut cols,
        (&mut d0, &mut d1),
        batch,
        pass,
        sink,
    );
    (loss, acts, grads)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::Portable;
    use crate::model::ModelSpec;
    use crate::scalar::Fixed;
    use std::vec::Vec;

    const BATCH: usize = 3;

    /// The largest absolute kernel value and bias of each parameter layer.
    fn init_bounds(spec: &ModelSpec) -> Vec<(f32, f32)> {
        let plan = Plan::new(spec);
        let mut params = std::vec![0.0f32; plan.param_count()];
        init_params(&plan, &mut params, &mut Rng::new(9));
        plan.stages()
            .iter()
            .filter(|s| s.weight_count() > 0)
            .map(|s| {
                let (w, b) = weights(s, &params);
                let max = |v: &[f32]| v.iter().fold(0.0f32, |m, x| m.max(x.abs()));
                (max(w), max(b))
            })
            .collect()
    }

    #[test]
    fn models_start_as_keras_initialises_them() {
        // The reference CNN: he_uniform on the convolution (fan_in 9) and the first
        // dense layer (5408), glorot_uniform on the output layer (100 + 10).
        let cnn = init_bounds(&ModelSpec::reference_cnn());
        let bounds = [
            (6.0f32 / 9.0).sqrt(),
            (6.0f32 / 5408.0).sqrt(),
            (6.0f32 / 110.0).sqrt(),
        ];
        for ((w, b), bound) in cnn.iter().zip(bounds) {
            assert_eq!(*b, 0.0);
            assert!(*w <= bound && *w > 0.9 * bound, "{w} vs {bound}");
        }
        // Any other model keeps Keras' default everywhere: glorot_uniform.
        let mlp = init_bounds(&ModelSpec::mlp(&[784, 128, 10]).unwrap());
        let bounds = [(6.0f32 / 912.0).sqrt(), (6.0f32 / 138.0).sqrt()];
        for ((w, _), bound) in mlp.iter().zip(bounds) {
            assert!(*w <= bound && *w > 0.9 * bound, "{w} vs {bound}");
        }
    }

    /// Small nets that between them exercise every layer (every kernel
    /// side's path, strides, both paddings, every pooling, dropout), and every
    /// input gradient; each is checked with its fused plan and unfused.
    fn nets() -> Vec<ModelSpec> {
        [
            "12 dense:5 relu dense:4 relu dense:3",
            "7x7x2 conv:3x3 relu maxpool:2 flatten dense:4 relu dense:3",
            "8x8x1 conv:2x3 relu conv:3x3 maxpool:2 flatten dense:3",
            "9x9x1 conv:2x3 relu maxpool:2 flatten dense:3",
            "9x8x2 conv:3x5:s2:same:he_uniform relu conv:2x1 avgpool:2:s1 flatten dense:3",
            "8x8x2 conv:3x3:p1 relu maxpool:3:s2 conv:2x2:s2:he_normal gap dense:3",
            "6x6x1 conv:2x7:same relu avgpool:3 flatten dropout:0.5 dense:4 relu dropout:0.25 dense:3",
            "10 dropout:0.3 dense:4:lecun_uniform relu dense:3:glorot_normal",
        ]
        .iter()
        .map(|s| s.parse().unwrap_or_else(|e| panic!("{s}: {e}")))
        .collect()
    }

    struct Case {
        plan: Plan,
        params: Vec<f32>,
        pixels: Vec<u8>,
        labels: Vec<u8>,
    }

    fn case(plan: Plan, seed: u64) -> Case {
        let mut rng = Rng::new(seed);
        let mut params = std::vec![0.0f32; plan.param_count()];
        init_params(&plan, &mut params, &mut rng);
        // Non-zero biases so that ReLU kinks are not all at the same place.
        for p in params.iter_mut() {
            *p += 0.05 * (rng.uniform() - 0.5);
        }
        let pixels = (0..BATCH * plan.input_len())
            .map(|_| (rng.next_u32() % 256) as u8)
            .collect();
        let labels = (0..BATCH)
            .map(|_| (rng.next_u32() % plan.classes() as u32) as u8)
            .collect();
        Case {
            plan,
            params,
            pixels,
            labels,
        }
    }

    /// Every net, fused and unfused.
    fn plans() -> Vec<(std::string::String, Plan)> {
        nets()
            .iter()
            .flat_map(|spec| {
                let name = std::format!("{spec}");
                [
                    (std::format!("{name} (fused)"), Plan::new(spec)),
                    (name, Plan::unfused(spec)),
                ]
            })
            .collect()
    }

    /// Summed loss (f64) and parameter gradients of the batch.
    fn loss_and_grads<S: Scalar>(c: &Case, params: &[S]) -> (f64, Vec<S>) {
        let (loss, _, grads) =
            training_pass::<S, Portable>(&c.plan, params, &c.pixels, |k| c.labels[k], BATCH, 5);
        (loss as f64 / 65536.0, grads)
    }

    /// Summed loss of the batch, the log-softmax taken in f64.
    fn loss_f64(c: &Case, params: &[f32]) -> f64 {
        let plan = &c.plan;
        let mut acts = std::vec![0.0f32; BATCH * plan.acts_len()];
        let mut cols = std::vec![0.0f32; BATCH * plan.cols_len()];
        for (a, &p) in acts.iter_mut().zip(&c.pixels) {
            *a = f32::from_pixel(p);
        }
        forward::<f32, Portable>(
            plan,
            params,
            &mut acts,
            &mut cols,
            BATCH,
            Pass::Train { seed: 5 },
        );
        let logits = &acts[plan.logits_slot() * BATCH..][..BATCH * plan.classes()];
        let mut loss = 0.0;
        for (z, &y) in logits.chunks_exact(plan.classes()).zip(&c.labels) {
            let sum: f64 = z.iter().map(|&v| f64::from(v).exp()).sum();
            loss += sum.ln() - f64::from(z[usize::from(y)]);
        }
        loss
    }

    fn numerical(c: &Case, i: usize) -> f64 {
        // Small enough that a perturbation rarely crosses a ReLU kink or flips a
        // max-pool winner, large enough for f32 rounding of the loss.
        let eps = 2e-4f32;
        let mut p = c.params.clone();
        let (hi, lo) = (c.params[i] + eps, c.params[i] - eps);
        p[i] = hi;
        let up = loss_f64(c, &p);
        p[i] = lo;
        let down = loss_f64(c, &p);
        (up - down) / f64::from(hi - lo)
    }

    /// Keras' definitions written out: conv kernel HWIO, `same` padding
    /// with the odd zero after, dense kernel (in, out), Flatten over HWC. Our
    /// forward pass must agree, so weights interchange.
    #[test]
    fn forward_matches_keras_layout() {
        let (h, w, c, f, units, k, stride) =
            (6usize, 5usize, 2usize, 3usize, 4usize, 3usize, 2usize);
        let spec: ModelSpec = "6x5x2 conv:3x3:s2:same flatten dense:4".parse().unwrap();
        let plan = Plan::new(&spec);
        let mut rng = Rng::new(3);
        let params: Vec<f32> = (0..plan.param_count())
            .map(|_| rng.uniform() - 0.5)
            .collect();
        let pixels: Vec<u8> = (0..h * w * c)
            .map(|_| (rng.next_u32() % 256) as u8)
            .collect();
        // Keras' same: 3 x 3 outputs; rows padded 0 before (1 after), columns 1 and 1.
        let (ho, wo, top, left) = (3, 3, 0, 1);
        let x = |i: isize, j: isize, ch: usize| {
            if i < 0 || j < 0 || i >= h as isize || j >= w as isize {
                0.0
            } else {
                f32::from_pixel(pixels[(i as usize * w + j as usize) * c + ch])
            }
        };
        let kernel =
            |ky: usize, kx: usize, ch: usize, o: usize| params[((ky * k + kx) * c + ch) * f + o];
        let conv_bias = k * k * c * f;
        let mut conv = std::vec![0.0f32; ho * wo * f];
        for i in 0..ho {
            for j in 0..wo {
                for o in 0..f {
                    let mut s = params[conv_bias + o];
                    for ky in 0..k {
                        for kx in 0..k {
                            for ch in 0..c {
                                let (yi, xj) = (
                                    (i * stride + ky) as isize - top,
                                    (j * stride + kx) as isize - left,
                                );
                                s += x(yi, xj, ch) * kernel(ky, kx, ch, o);
                            }
                        }
                    }
                    conv[(i * wo + j) * f + o] = s;
                }
            }
        }
        let dense = conv_bias + f;
        let inputs = ho * wo * f;
        let expected: Vec<f32> = (0..units)
            .map(|o| {
                let bias = params[dense + inputs * units + o];
                bias + (0..inputs)
                    .map(|i| conv[i] * params[dense + i * units + o])
                    .sum::<f32>()
            })
            .collect();
        let mut acts = std::vec![0.0f32; plan.acts_len()];
        let mut cols = std::vec![0.0f32; plan.cols_len()];
        for (a, &p) in acts.iter_mut().zip(&pixels) {
            *a = f32::from_pixel(p);
        }
        forward::<f32, Portable>(&plan, &params, &mut acts, &mut cols, 1, Pass::Evaluate);
        let got = &acts[plan.logits_slot()..][..units];
        for (g, e) in got.iter().zip(&expected) {
            assert!((g - e).abs() < 1e-4, "{got:?} vs {expected:?}");
        }
    }

    /// Dropout drops about its rate, scales what it keeps, draws the same mask
    /// from the same seed, and passes everything in evaluation.
    #[test]
    fn dropout_is_inverted_and_seeded() {
        let mut v = std::vec![1.0f32; 10_000];
        layers::dropout(&mut v, 2_500, 7);
        let kept = v.iter().filter(|&&x| x != 0.0).count();
        assert!((7_300..7_700).contains(&kept), "{kept} kept");
        assert!(v.iter().all(|&x| x == 0.0 || (x - 1.0 / 0.75).abs() < 1e-6));
        let mut again = std::vec![1.0f32; 10_000];
        layers::dropout(&mut again, 2_500, 7);
        assert_eq!(v, again);
        let mut fixed = std::vec![Fixed::ONE; 10_000];
        layers::dropout(&mut fixed, 2_500, 7);
        let same_mask = fixed
            .iter()
            .zip(&v)
            .all(|(a, b)| (*a == Fixed::ZERO) == (*b == 0.0));
        assert!(same_mask, "fixed point draws the same mask");
    }

    #[test]
    fn f32_gradients_match_finite_differences() {
        for (n, (name, plan)) in plans().into_iter().enumerate() {
            let c = case(plan, n as u64);
            let (_, grads) = loss_and_grads(&c, &c.params);
            for (i, &g) in grads.iter().enumerate() {
                let num = numerical(&c, i);
                let tol = 2e-3 + 2e-2 * num.abs();
                assert!(
                    (f64::from(g) - num).abs() < tol,
                    "{name}: param {i}: analytic {g}, numerical {num}"
                );
            }
        }
    }

    #[test]
    fn fixed_gradients_match_finite_differences() {
        for (n, (name, plan)) in plans().into_iter().enumerate() {
            let c = case(plan, 10 + n as u64);
            let fixed: Vec<Fixed> = c.params.iter().map(|&p| Fixed::from_f32(p)).collect();
            let (loss_fx, grads) = loss_and_grads(&c, &fixed);
            let (loss_f32, _) = loss_and_grads(&c, &c.params);
            assert!(
                (loss_fx - loss_f32).abs() < 1e-3 * BATCH as f64,
                "{name}: loss {loss_fx} vs {loss_f32}"
            );
            for (i, &g) in grads.iter().enumerate() {
                let num = numerical(&c, i);
                let tol = 5e-3 + 3e-2 * num.abs();
                let g = f64::from(g.to_f32());
                assert!(
                    (g - num).abs() < tol,
                    "{name}: param {i}: fixed {g}, numerical {num}"
                );
            }
        }
    }

    #[test]
    fn in_place_sink_applies_the_same_gradients() {
        // Applying `w -= g` row by row must equal storing g and subtracting afterwards.
        for (n, (name, plan)) in plans().into_iter().enumerate() {
            let c = case(plan, 20 + n as u64);
            let (_, grads) = loss_and_grads(&c, &c.params);
            let plan = &c.plan;
            let mut acts = std::vec![0.0f32; BATCH * plan.acts_len()];
            let mut cols = std::vec![0.0f32; BATCH * plan.cols_len()];
            let mut d0 = std::vec![0.0f32; BATCH * plan.delta_len()];
            let mut d1 = d0.clone();
            for (a, &p) in acts.iter_mut().zip(&c.pixels) {
                *a = f32::from_pixel(p);
            }
            let mut params = c.params.clone();
            forward::<f32, Portable>(
                plan,
                &params,
                &mut acts,
                &mut cols,
                BATCH,
                Pass::Train { seed: 5 },
            );
            let logits = &acts[plan.logits_slot() * BATCH..][..BATCH * plan.classes()];
            softmax_xent(logits, |k| c.labels[k], plan.classes(), &mut d0);
            let mut row = std::vec![0.0f32; plan.widest_row().max(plan.fused_params())];
            let mut rule = |w: &mut [f32], _at: usize, g: &[f32]| {
                for (w, g) in w.iter_mut().zip(g) {
                    *w -= g;
                }
            };
            let sink = GradSink::Apply {
                row: &mut row,
                rule: &mut rule,
            };
            backward::<f32, Portable>(
                plan,
                &mut params,
                &acts,
                &mut cols,
                (&mut d0, &mut d1),
                BATCH,
                Pass::Train { seed: 5 },
                sink,
            );
            for (i, ((after, before), g)) in params.iter().zip(&c.params).zip(&grads).enumerate() {
                assert!((after - (before - g)).abs() < 1e-5, "{name}: param {i}");
            }
        }
    }
}
