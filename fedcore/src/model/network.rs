//! Forward and backward passes over a [`Plan`], generic over [`Scalar`].
//!
//! # Shapes
//! Activations are batch-major, each sample HWC. A Dense layer is `Y = X·W + b`
//! with `X: (batch, in)`, `W: (in, units)`; a convolution is the same product over
//! the im2col matrix `(batch·Ho·Wo, 9·C)` whose column order `(ky, kx, c)` matches
//! the HWIO kernel flattened to `(9·C, filters)`. Backward reuses those products
//! with transposed views: `dW = Xᵀ·dY`, `dX = dY·Wᵀ`.
//!
//! Parameter gradients go to a `GradSink`: stored into a full gradient buffer
//! (mini-batch SGD), or applied to the weights row by row as they are produced
//! (the in-place batch-1 trainer, which owns no gradient buffer). In both cases a
//! layer's input gradient is computed before its weights can change.

#[cfg(feature = "std")]
use super::fused;
use crate::linalg::{Mat, MatMut};
use crate::model::{Fusion, Layer, Plan, Stage};
use crate::scalar::Scalar;
#[cfg(feature = "std")]
use core::ops::Range;

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
    /// Into an SGD step folded into each weight-gradient product (host kernels).
    #[cfg(feature = "std")]
    Fold(Fold<'a, S>),
}

/// The state of an SGD step taken layer by layer as backward reaches it.
#[cfg(feature = "std")]
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
pub(crate) fn forward<S: Scalar>(
    plan: &Plan,
    params: &[S],
    acts: &mut [S],
    cols: &mut [S],
    batch: usize,
) {
    let cap = acts.len() / plan.acts_len().max(1);
    for st in plan.stages() {
        if st.fusion == Fusion::Absorbed {
            continue;
        }
        let (n_in, n_out) = (st.input.len() * batch, st.written_len() * batch);
        if st.act_in == st.act_out {
            if st.layer == Layer::Relu {
                for v in &mut acts[st.act_in * cap..st.act_in * cap + n_out] {
                    *v = v.max(S::ZERO);
                }
            }
            continue;
        }
        let (lo, hi) = acts.split_at_mut(st.act_out * cap);
        let x = &lo[st.act_in * cap..st.act_in * cap + n_in];
        #[cfg(feature = "std")]
        if st.fusion == Fusion::ConvReluPool {
            let (outputs, winners) = fused_slots(st, cap, batch);
            let (y, rest) = hi.split_at_mut(winners.start - outputs.start);
            let winners = &mut rest[..winners.len()];
            fused::forward(
                st,
                x,
                weights(st, params),
                (&mut y[..n_out], winners),
                batch,
            );
            continue;
        }
        let y = &mut hi[..n_out];
        let (w, b) = weights(st, params);
        match st.layer {
            Layer::Dense { .. } | Layer::Conv2d { .. } => {
                let (rows, k, units) = st.product_shape(batch);
                let a = if st.cols_len() > 0 {
                    im2col(st, x, &mut cols[..rows * k], batch);
                    &cols[..rows * k]
                } else {
                    x
                };
                S::gemm(
                    Mat::new(a, rows, k),
                    Mat::new(w, k, units),
                    MatMut::new(y, rows, units),
                    false,
                );
                add_bias(y, b);
            }
            Layer::MaxPool2d => maxpool(st, x, y, batch),
            Layer::Relu | Layer::Flatten => {}
        }
    }
}

/// Backpropagates `delta` (the loss gradient of the logits, `(batch, classes)`,
/// in `deltas.0`) through the net, sending parameter gradients to `sink`.
pub(crate) fn backward<S: Scalar>(
    plan: &Plan,
    params: &mut [S],
    acts: &[S],
    cols: &mut [S],
    deltas: (&mut [S], &mut [S]),
    batch: usize,
    mut sink: GradSink<'_, S>,
) {
    let cap = acts.len() / plan.acts_len().max(1);
    let (mut cur, mut next) = deltas;
    for st in plan.stages().iter().rev() {
        if st.fusion == Fusion::Absorbed {
            continue;
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
            Layer::Flatten => continue,
            Layer::MaxPool2d => {
                let y = &acts[st.act_out * cap..st.act_out * cap + n_out];
                maxpool_backward(st, x, y, &cur[..n_out], &mut next[..n_in], batch);
            }
            #[cfg(feature = "std")]
            Layer::Conv2d { .. } if st.fusion == Fusion::ConvReluPool => {
                let (y, winners) = fused_slots(st, cap, batch);
                let kept = (&acts[y], &acts[winners]);
                fused_param_grads(st, params, x, (kept, &cur[..n_out]), &mut sink, batch);
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
                        S::gemm(dy, wt, MatMut::new(&mut cols[..rows * k], rows, k), false);
                        col2im(st, &cols[..rows * k], &mut next[..n_in], batch);
                    } else {
                        S::gemm(dy, wt, MatMut::new(&mut next[..n_in], rows, k), false);
                    }
                }
                // dW = Aᵀ·dY. The forward pass's im2col matrix is still in the scratch
                // when no later convolution and no dX above overwrote it.
                let a = if conv {
                    if st.needs_input_grad || !plan.is_last_conv(st) {
                        im2col(st, x, &mut cols[..rows * k], batch);
                    }
                    &cols[..rows * k]
                } else {
                    x
                };
                param_grads(st, params, Mat::new(a, rows, k).t(), dy, &mut sink);
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

/// How Keras initialises a layer's kernel (biases start at zero either way).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Initializer {
    /// Uniform in ±sqrt(6 / (fan_in + fan_out)): Keras' default.
    GlorotUniform,
    /// Uniform in ±sqrt(6 / fan_in).
    HeUniform,
}

impl Initializer {
    /// What the model's Keras code initialises `stage` with: the reference CNN
    /// ([`ModelSpec::reference_cnn`](crate::model::ModelSpec::reference_cnn))
    /// asks for he_uniform on its convolution and first dense layer; every other
    /// layer, and every layer of any other model, keeps Keras' default.
    pub fn keras(plan: &Plan, stage: &Stage) -> Self {
        let reference = *plan.spec() == crate::model::ModelSpec::reference_cnn();
        let first_dense = plan
            .stages()
            .iter()
            .find(|s| matches!(s.layer, Layer::Dense { .. }));
        let asks_for_he = matches!(stage.layer, Layer::Conv2d { .. }) || Some(stage) == first_dense;
        if reference && asks_for_he {
            Initializer::HeUniform
        } else {
            Initializer::GlorotUniform
        }
    }

    /// The bound of the uniform draw for a layer with these fans.
    fn limit(self, fan_in: usize, fan_out: usize) -> f32 {
        let fan = match self {
            Initializer::GlorotUniform => fan_in + fan_out,
            Initializer::HeUniform => fan_in,
        };
        crate::scalar::float::sqrt(6.0 / fan.max(1) as f32)
    }
}

/// Initialises `params` as Keras initialises the model (see
/// [`Initializer::keras`]): kernels uniform within their initializer's bound,
/// biases zero; drawn in f32 and converted, so every scalar type starts from
/// the same model.
pub fn init_params<S: Scalar>(plan: &Plan, params: &mut [S], rng: &mut crate::rng::Rng) {
    for st in plan.stages() {
        let (nw, nb) = (st.weight_count(), st.bias_count());
        if nw == 0 {
            continue;
        }
        // Keras' fans: a kernel's inputs and outputs per unit, times the
        // receptive field (3x3) for a convolution.
        let fan_in = nw / nb;
        let fan_out = match st.layer {
            Layer::Conv2d { .. } => 9 * nb,
            _ => nb,
        };
        let limit = Initializer::keras(plan, st).limit(fan_in, fan_out);
        let (w, b) = params[st.params..st.params + nw + nb].split_at_mut(nw);
        for v in w {
            *v = S::from_f32((2.0 * rng.uniform() - 1.0) * limit);
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
fn param_grads<S: Scalar>(
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
            S::gemm(a, dy, MatMut::new(gw, a.rows, nb), false);
            column_sums(dy.data, nb, gb);
        }
        GradSink::Apply { row, rule } => {
            let row = &mut row[..nb];
            for r in 0..a.rows {
                let a_row = Mat {
                    data: &a.data[r * a.row_stride..],
                    rows: 1,
                    ..a
                };
                S::gemm(a_row, dy, MatMut::new(row, 1, nb), false);
                let start = st.params + r * nb;
                rule(&mut params[start..start + nb], start, row);
            }
            column_sums(dy.data, nb, row);
            let start = st.params + nw;
            rule(&mut params[start..start + nb], start, row);
        }
        #[cfg(feature = "std")]
        GradSink::Fold(fold) => {
            let span = st.params..st.params + nw + nb;
            fused::update(
                (a, dy),
                &mut params[span.clone()],
                fold.velocity.get_mut(span.clone()).unwrap_or(&mut []),
                fold.anchor.get(span).unwrap_or(&[]),
                fold.coeffs,
            );
        }
    }
}

/// Where a fused stage's `batch` pooled outputs and their windows' winners lie
/// in an activation arena of `cap` samples: the winners follow the output
/// slot's `cap` samples.
#[cfg(feature = "std")]
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
#[cfg(feature = "std")]
fn fused_param_grads<S: Scalar>(
    st: &Stage,
    params: &mut [S],
    x: &[S],
    (kept, dy): ((&[S], &[S]), &[S]),
    sink: &mut GradSink<'_, S>,
    batch: usize,
) {
    let span = st.params..st.params + st.weight_count() + st.bias_count();
    match sink {
        GradSink::Store(grads) => {
            fused::param_grads(st, x, kept, dy, &mut grads[span], batch);
        }
        GradSink::Apply { row, rule } => {
            let g = &mut row[..span.len()];
            fused::param_grads(st, x, kept, dy, g, batch);
            rule(&mut params[span.clone()], span.start, g);
        }
        GradSink::Fold(fold) => {
            let g = &mut fold.scratch[..span.len()];
            fused::param_grads(st, x, kept, dy, g, batch);
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

/// Sums the rows of a row-major matrix `m` with `cols` columns into `out`.
fn column_sums<S: Scalar>(m: &[S], cols: usize, out: &mut [S]) {
    out.fill(S::ZERO);
    for row in m.chunks_exact(cols) {
        for (o, &v) in out.iter_mut().zip(row) {
            *o = o.add(v);
        }
    }
}

fn add_bias<S: Scalar>(y: &mut [S], b: &[S]) {
    for row in y.chunks_exact_mut(b.len()) {
        for (v, &bias) in row.iter_mut().zip(b) {
            *v = v.add(bias);
        }
    }
}

/// Calls `f(col_index, x_index, len)` for every contiguous run copied between
/// image and im2col matrix: in HWC the three pixels of one patch row, all
/// channels, are adjacent, so a run is `3·channels` values.
fn for_each_patch_row(st: &Stage, batch: usize, mut f: impl FnMut(usize, usize, usize)) {
    let (h, w, c) = (
        st.input.height as usize,
        st.input.width as usize,
        st.input.channels as usize,
    );
    let (ho, wo) = (st.output.height as usize, st.output.width as usize);
    let run = 3 * c;
    let mut col = 0;
    for b in 0..batch {
        for i in 0..ho {
            for j in 0..wo {
                for ky in 0..3 {
                    f(col, ((b * h + i + ky) * w + j) * c, run);
                    col += run;
                }
            }
        }
    }
}

// Element loops rather than copy_from_slice: runs are a few values long, and a
// memmove call per run cost more than the copy (measured: 14% of a CNN step).
fn im2col<S: Scalar>(st: &Stage, x: &[S], cols: &mut [S], batch: usize) {
    if st.input.channels == 1 {
        // Runs of exactly three values: fixed-size copies the compiler unrolls.
        for_each_patch_row(st, batch, |col, xi, _| {
            if let (Some(d), Some(s)) = (cols.get_mut(col..col + 3), x.get(xi..xi + 3)) {
                d[0] = s[0];
                d[1] = s[1];
                d[2] = s[2];
            }
        });
        return;
    }
    for_each_patch_row(st, batch, |col, xi, n| {
        for (d, &v) in cols[col..col + n].iter_mut().zip(&x[xi..xi + n]) {
            *d = v;
        }
    });
}

fn col2im<S: Scalar>(st: &Stage, cols: &[S], dx: &mut [S], batch: usize) {
    dx.fill(S::ZERO);
    for_each_patch_row(st, batch, |col, xi, n| {
        for (d, &v) in dx[xi..xi + n].iter_mut().zip(&cols[col..col + n]) {
            *d = d.add(v);
        }
    });
}

/// Calls `f(top, bottom, out)` for each output row of a 2x2 pooling: the offsets
/// of the two input rows it pools and of the output row (`wo·channels` values).
fn for_each_pool_row(st: &Stage, batch: usize, mut f: impl FnMut(usize, usize, usize)) {
    let (h, w, c) = (
        st.input.height as usize,
        st.input.width as usize,
        st.input.channels as usize,
    );
    let (ho, wo) = (st.output.height as usize, st.output.width as usize);
    for b in 0..batch {
        for i in 0..ho {
            let top = (b * h + 2 * i) * w * c;
            f(top, top + w * c, (b * ho + i) * wo * c);
        }
    }
}

fn maxpool<S: Scalar>(st: &Stage, x: &[S], y: &mut [S], batch: usize) {
    let (c, wo) = (st.input.channels as usize, st.output.width as usize);
    for_each_pool_row(st, batch, |top, bottom, out| {
        let (t, b) = (&x[top..top + 2 * wo * c], &x[bottom..bottom + 2 * wo * c]);
        for (j, yj) in y[out..out + wo * c].chunks_exact_mut(c).enumerate() {
            let (t0, t1) = (&t[2 * j * c..][..c], &t[(2 * j + 1) * c..][..c]);
            let (b0, b1) = (&b[2 * j * c..][..c], &b[(2 * j + 1) * c..][..c]);
            for k in 0..c {
                yj[k] = t0[k].max(t1[k]).max(b0[k].max(b1[k]));
            }
        }
    });
}

/// Routes each output gradient to the first maximum of its window (top-left,
/// top-right, bottom-left, bottom-right) and zero to the other three. The
/// winner is found by comparing with the forward output `y`, without branches:
/// window values are random, and a mispredicted branch per comparison once made
/// this a fifth of a CNN training step.
fn maxpool_backward<S: Scalar>(st: &Stage, x: &[S], y: &[S], dy: &[S], dx: &mut [S], batch: usize) {
    let (c, wo) = (st.input.channels as usize, st.output.width as usize);
    // Odd edges (dropped by the pooling) get no gradient.
    if st.input.height % 2 == 1 || st.input.width % 2 == 1 {
        dx.fill(S::ZERO);
    }
    for_each_pool_row(st, batch, |top, bottom, out| {
        let n = 2 * wo * c;
        let (xt, xb) = (&x[top..top + n], &x[bottom..bottom + n]);
        let (dxt, dxb) = dx[top..bottom + n].split_at_mut(bottom - top);
        let (dxt, dxb) = (&mut dxt[..n], &mut dxb[..n]);
        let (ys, dys) = (&y[out..out + wo * c], &dy[out..out + wo * c]);
        for j in 0..wo {
            let (l, r) = (2 * j * c, (2 * j + 1) * c);
            for k in 0..c {
                let (m, g) = (ys[j * c + k], dys[j * c + k]);
                let e0 = xt[l + k] == m;
                let e1 = !e0 & (xt[r + k] == m);
                let e2 = !e0 & !e1 & (xb[l + k] == m);
                let e3 = !(e0 | e1 | e2);
                dxt[l + k] = if e0 { g } else { S::ZERO };
                dxt[r + k] = if e1 { g } else { S::ZERO };
                dxb[l + k] = if e2 { g } else { S::ZERO };
                dxb[r + k] = if e3 { g } else { S::ZERO };
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{ModelSpec, Shape};
    use crate::rng::Rng;
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

    /// Small nets that between them exercise every layer, and every input gradient.
    fn nets() -> Vec<ModelSpec> {
        use Layer::*;
        Vec::from([
            ModelSpec::mlp(&[12, 5, 4, 3]).unwrap(),
            ModelSpec::new(
                Shape::image(7, 7, 2),
                &[
                    Conv2d { filters: 3 },
                    Relu,
                    MaxPool2d,
                    Flatten,
                    Dense { units: 4 },
                    Relu,
                    Dense { units: 3 },
                ],
            )
            .unwrap(),
            ModelSpec::new(
                Shape::image(8, 8, 1),
                &[
                    Conv2d { filters: 2 },
                    Relu,
                    Conv2d { filters: 3 },
                    MaxPool2d,
                    Flatten,
                    Dense { units: 3 },
                ],
            )
            .unwrap(),
        ])
    }

    struct Case {
        plan: Plan,
        params: Vec<f32>,
        pixels: Vec<u8>,
        labels: Vec<u8>,
    }

    fn case(spec: &ModelSpec, seed: u64) -> Case {
        let plan = Plan::new(spec);
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

    /// Summed loss (f64) and parameter gradients of the batch.
    fn loss_and_grads<S: Scalar>(c: &Case, params: &[S]) -> (f64, Vec<S>) {
        let plan = &c.plan;
        let mut acts = std::vec![S::ZERO; BATCH * plan.acts_len()];
        let mut cols = std::vec![S::ZERO; BATCH * plan.cols_len()];
        let mut d0 = std::vec![S::ZERO; BATCH * plan.delta_len()];
        let mut d1 = d0.clone();
        for (a, &p) in acts.iter_mut().zip(&c.pixels) {
            *a = S::from_pixel(p);
        }
        forward(plan, params, &mut acts, &mut cols, BATCH);
        let logits = &acts[plan.logits_slot() * BATCH..][..BATCH * plan.classes()];
        let (loss, _) = softmax_xent(logits, |k| c.labels[k], plan.classes(), &mut d0);
        let mut grads = std::vec![S::ZERO; plan.param_count()];
        let mut params = params.to_vec();
        backward(
            plan,
            &mut params,
            &acts,
            &mut cols,
            (&mut d0, &mut d1),
            BATCH,
            GradSink::Store(&mut grads),
        );
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
        forward(plan, params, &mut acts, &mut cols, BATCH);
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

    /// Keras' definitions written out: conv kernel HWIO, dense kernel (in, out),
    /// Flatten over HWC. Our forward pass must agree, so weights interchange.
    #[test]
    fn forward_matches_keras_layout() {
        use Layer::*;
        let (h, w, c, f, units) = (6usize, 5usize, 2usize, 3usize, 4usize);
        let spec = ModelSpec::new(
            Shape::image(h as u32, w as u32, c as u32),
            &[
                Conv2d { filters: f as u32 },
                Flatten,
                Dense {
                    units: units as u32,
                },
            ],
        )
        .unwrap();
        let plan = Plan::new(&spec);
        let mut rng = Rng::new(3);
        let params: Vec<f32> = (0..plan.param_count())
            .map(|_| rng.uniform() - 0.5)
            .collect();
        let pixels: Vec<u8> = (0..h * w * c)
            .map(|_| (rng.next_u32() % 256) as u8)
            .collect();
        let x = |i: usize, j: usize, ch: usize| f32::from_pixel(pixels[(i * w + j) * c + ch]);
        let (ho, wo) = (h - 2, w - 2);
        let kernel =
            |ky: usize, kx: usize, ch: usize, o: usize| params[((ky * 3 + kx) * c + ch) * f + o];
        let conv_bias = 9 * c * f;
        let mut conv = std::vec![0.0f32; ho * wo * f];
        for i in 0..ho {
            for j in 0..wo {
                for o in 0..f {
                    let mut s = params[conv_bias + o];
                    for ky in 0..3 {
                        for kx in 0..3 {
                            for ch in 0..c {
                                s += x(i + ky, j + kx, ch) * kernel(ky, kx, ch, o);
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
        forward(&plan, &params, &mut acts, &mut cols, 1);
        let got = &acts[plan.logits_slot()..][..units];
        for (g, e) in got.iter().zip(&expected) {
            assert!((g - e).abs() < 1e-4, "{got:?} vs {expected:?}");
        }
    }

    #[test]
    fn f32_gradients_match_finite_differences() {
        for (n, spec) in nets().iter().enumerate() {
            let c = case(spec, n as u64);
            let (_, grads) = loss_and_grads(&c, &c.params);
            for (i, &g) in grads.iter().enumerate() {
                let num = numerical(&c, i);
                let tol = 2e-3 + 2e-2 * num.abs();
                assert!(
                    (f64::from(g) - num).abs() < tol,
                    "net {n} param {i}: analytic {g}, numerical {num}"
                );
            }
        }
    }

    #[test]
    fn fixed_gradients_match_finite_differences() {
        for (n, spec) in nets().iter().enumerate() {
            let c = case(spec, 10 + n as u64);
            let fixed: Vec<Fixed> = c.params.iter().map(|&p| Fixed::from_f32(p)).collect();
            let (loss_fx, grads) = loss_and_grads(&c, &fixed);
            let (loss_f32, _) = loss_and_grads(&c, &c.params);
            assert!(
                (loss_fx - loss_f32).abs() < 1e-3 * BATCH as f64,
                "net {n}: loss {loss_fx} vs {loss_f32}"
            );
            for (i, &g) in grads.iter().enumerate() {
                let num = numerical(&c, i);
                let tol = 5e-3 + 3e-2 * num.abs();
                let g = f64::from(g.to_f32());
                assert!(
                    (g - num).abs() < tol,
                    "net {n} param {i}: fixed {g}, numerical {num}"
                );
            }
        }
    }

    #[test]
    fn in_place_sink_applies_the_same_gradients() {
        // Applying `w -= g` row by row must equal storing g and subtracting afterwards.
        for (n, spec) in nets().iter().enumerate() {
            let c = case(spec, 20 + n as u64);
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
            forward(plan, &params, &mut acts, &mut cols, BATCH);
            let logits = &acts[plan.logits_slot() * BATCH..][..BATCH * plan.classes()];
            softmax_xent(logits, |k| c.labels[k], plan.classes(), &mut d0);
            let mut row = std::vec![0.0f32; plan.widest_row()];
            let mut rule = |w: &mut [f32], _at: usize, g: &[f32]| {
                for (w, g) in w.iter_mut().zip(g) {
                    *w -= g;
                }
            };
            let sink = GradSink::Apply {
                row: &mut row,
                rule: &mut rule,
            };
            backward(
                plan,
                &mut params,
                &acts,
                &mut cols,
                (&mut d0, &mut d1),
                BATCH,
                sink,
            );
            for (i, ((after, before), g)) in params.iter().zip(&c.params).zip(&grads).enumerate() {
                assert!((after - (before - g)).abs() < 1e-5, "net {n} param {i}");
            }
        }
    }
}
