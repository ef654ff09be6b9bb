//! What a [`Plan::fused`](super::Plan::fused) plan runs beyond the portable
//! layers (`std` only): its fused convolution stages on the host kernels, and
//! the SGD update folded into the product that computes each weight gradient.
//!
//! These take the generic scalar slices the network holds and run on their f32
//! view ([`Scalar::as_f32`]). A trainer builds fused plans and folded updates
//! only for f32 (see [`crate::train::Kernels`]); for any other type these
//! functions have no f32 view and leave their outputs as they are.

use super::plan::Stage;
use crate::kernels::{ConvPool, conv_relu_pool, conv_relu_pool_grads};
use crate::linalg::{Mat, MatMut, sgemm};
use crate::scalar::Scalar;

fn conv_pool(st: &Stage) -> ConvPool {
    ConvPool {
        height: st.input.height as usize,
        width: st.input.width as usize,
        filters: st.bias_count(),
    }
}

/// Forward through a fused stage: pooled, rectified outputs `y` from images
/// `x`, and each window's winner into `winners` (the stage's
/// [`Stage::winners_len`] values a sample, read back as bits).
pub(crate) fn forward<S: Scalar>(
    st: &Stage,
    x: &[S],
    (w, b): (&[S], &[S]),
    (y, winners): (&mut [S], &mut [S]),
    batch: usize,
) {
    let winners = S::as_f32_mut(winners).and_then(|w| bytemuck::try_cast_slice_mut(w).ok());
    if let (Some(x), Some(w), Some(b), Some(y), Some(winners)) = (
        S::as_f32(x),
        S::as_f32(w),
        S::as_f32(b),
        S::as_f32_mut(y),
        winners,
    ) {
        conv_relu_pool(conv_pool(st), x, (w, b), (y, winners), batch);
    }
}

/// A fused stage's summed weight and bias gradients into `grads` (as long as
/// its parameters), from its inputs `x`, its outputs `y` and `winners` as
/// [`forward`] wrote them, and the outputs' gradients `dy`.
pub(crate) fn param_grads<S: Scalar>(
    st: &Stage,
    x: &[S],
    (y, winners): (&[S], &[S]),
    dy: &[S],
    grads: &mut [S],
    batch: usize,
) {
    let winners = S::as_f32(winners).and_then(|w| bytemuck::try_cast_slice(w).ok());
    if let (Some(x), Some(y), Some(winners), Some(dy), Some(grads)) = (
        S::as_f32(x),
        S::as_f32(y),
        winners,
        S::as_f32(dy),
        S::as_f32_mut(grads),
    ) {
        conv_relu_pool_grads(conv_pool(st), x, (y, winners), dy, grads, batch);
    }
}

fn mat<'a, S: Scalar>(m: Mat<'a, S>) -> Option<Mat<'a, f32>> {
    Some(Mat {
        data: S::as_f32(m.data)?,
        rows: m.rows,
        cols: m.cols,
        row_stride: m.row_stride,
        col_stride: m.col_stride,
    })
}

/// One SGD step of a layer whose weight gradient is the product `a·dy` (`a`
/// the transposed input or im2col matrix) and bias gradient the column sums of
/// `dy`, without storing either: with momentum the product lands in the
/// velocity (`v = momentum·v - step·a·dy`), without it in the weights. `layer`,
/// `velocity` and `anchor` are the layer's slices (weights then bias); the
/// last two are empty when momentum and FedProx are off. `[step, momentum,
/// prox]` are as in the portable step: lr over the batch, momentum, lr·mu.
pub(crate) fn update<S: Scalar>(
    (a, dy): (Mat<'_, S>, Mat<'_, S>),
    layer: &mut [S],
    velocity: &mut [S],
    anchor: &[S],
    [step, momentum, prox]: [S; 3],
) {
    let (Some(a), Some(dy), Some(layer), Some(velocity), Some(anchor)) = (
        mat(a),
        mat(dy),
        S::as_f32_mut(layer),
        S::as_f32_mut(velocity),
        S::as_f32(anchor),
    ) else {
        return;
    };
    let (step, momentum, prox) = (step.to_f32(), momentum.to_f32(), prox.to_f32());
    let units = dy.cols;
    let nw = a.rows * units;
    let rows = || dy.data.chunks_exact(units).take(dy.rows);
    if velocity.is_empty() {
        // The proximal pull uses the weights before this step, so it goes first.
        for (w, &a) in layer.iter_mut().zip(anchor) {
            *w -= prox * (*w - a);
        }
        let (w, b) = layer.split_at_mut(nw);
        sgemm(a, dy, MatMut::new(w, a.rows, units), Some(1.0), -step);
        for row in rows() {
            for (b, &g) in b.iter_mut().zip(row) {
                *b -= step * g;
            }
        }
        return;
    }
    let (v, vb) = velocity.split_at_mut(nw);
    sgemm(a, dy, MatMut::new(v, a.rows, units), Some(momentum), -step);
    vb.iter_mut().for_each(|v| *v *= momentum);
    for row in rows() {
        for (v, &g) in vb.iter_mut().zip(row) {
            *v -= step * g;
        }
    }
    if anchor.is_empty() {
        for (w, &v) in layer.iter_mut().zip(velocity.iter()) {
            *w += v;
        }
    } else {
        for ((w, v), &a) in layer.iter_mut().zip(velocity.iter_mut()).zip(anchor) {
            *v -= prox * (*w - a);
            *w += *v;
        }
    }
}
