//! The host backend (`std` only, and the crate's only std-only module): f32
//! products on the `gemm` crate (of the faer project), which picks the widest
//! vector unit at run time (AVX-512, AVX2+FMA, SSE, NEON) and beat
//! matrixmultiply on our shapes (`bench/ratio.sh`); the fused block on
//! `pulp`'s SIMD ([`simd`]); and each SGD step folded into the product that
//! computes its gradient ([`Kernels::FOLDS_STEP`]).

mod simd;

use super::{ConvPool, Kernels};
use crate::linalg::{Mat, MatMut};
use crate::scalar::Scalar;

/// f32 on the host's SIMD units.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Host;

impl Kernels<f32> for Host {
    const NAME: &'static str = "host";
    const FOLDS_STEP: bool = true;

    fn gemm(a: Mat<'_, f32>, b: Mat<'_, f32>, c: MatMut<'_, f32>, keep: Option<f32>, scale: f32) {
        sgemm(a, b, c, keep, scale)
    }

    fn conv_relu_pool(
        shape: ConvPool,
        x: &[f32],
        kernel_bias: (&[f32], &[f32]),
        (y, winners): (&mut [f32], &mut [f32]),
        batch: usize,
    ) {
        // The winners are words kept in f32 slots, read back as they were
        // written (bytemuck casts, never float arithmetic).
        let winners: &mut [u32] = bytemuck::must_cast_slice_mut(winners);
        simd::conv_relu_pool(shape, x, kernel_bias, (y, winners), batch);
    }

    fn conv_relu_pool_grads(
        shape: ConvPool,
        x: &[f32],
        (y, winners): (&[f32], &[f32]),
        dy: &[f32],
        grads: &mut [f32],
        batch: usize,
    ) {
        let winners: &[u32] = bytemuck::must_cast_slice(winners);
        simd::conv_relu_pool_grads(shape, x, (y, winners), dy, grads, batch);
    }
}

/// f32 `C = keep·C + scale·A·B`, or `C = scale·A·B` when `keep` is `None`, on
/// the `gemm` crate's kernels.
fn sgemm(a: Mat<'_, f32>, b: Mat<'_, f32>, c: MatMut<'_, f32>, keep: Option<f32>, scale: f32) {
    // Below this many multiply-adds packing costs more than it saves (the
    // in-place trainer multiplies one weight row at a time). A single row (one
    // sample) is a vector-matrix product, where packing gains nothing either.
    const SGEMM_MIN_MACS: usize = 4096;
    let shapes_agree = a.cols == b.rows && c.rows == a.rows && c.cols == b.cols;
    if a.rows == 1 || a.rows * a.cols * b.cols < SGEMM_MIN_MACS || !shapes_agree {
        return f32::gemm(a, b, c, keep, scale);
    }
    // Every element a stride reaches must lie in its slice; the layers' memory
    // plan ensures it, and this check is what makes the call below sound.
    if !a.in_bounds() || !b.in_bounds() || c.data.len() < c.rows * c.cols {
        return f32::gemm(a, b, c, keep, scale);
    }
    let (m, n, k) = (c.rows, c.cols, a.cols);
    let stride = |s: usize| isize::try_from(s).ok();
    let (Some(a_rs), Some(a_cs), Some(b_rs), Some(b_cs), Some(c_rs)) = (
        stride(a.row_stride),
        stride(a.col_stride),
        stride(b.row_stride),
        stride(b.col_stride),
        stride(n),
    ) else {
        return f32::gemm(a, b, c, keep, scale);
    };
    // `gemm` offers only this raw-pointer entry point (its kernels take
    // strided pointers); no safe crate serves these shapes with AVX-512.
    // SAFETY: the pointers come from live slices; every element the shapes and
    // strides reach lies inside them (checked above); `c` is a unique borrow, so
    // it aliases neither `a` nor `b`; nothing else runs while the call does
    // (Parallelism::None).
    #[allow(unsafe_code)]
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.data.as_mut_ptr(),
            1,
            c_rs,
            keep.is_some(),
            a.data.as_ptr(),
            a_cs,
            a_rs,
            b.data.as_ptr(),
            b_cs,
            b_rs,
            keep.unwrap_or(0.0),
            scale,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::Portable;
    use crate::rng::Rng;
    use std::vec::Vec;

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(48))]
        /// The host's SGEMM and the portable loops give the same products for
        /// the shapes training uses (tall, wide, K of 9 to 600), either operand
        /// transposed, overwriting, accumulating or scaling what was there (the
        /// momentum update).
        #[test]
        fn host_and_portable_products_agree(
            m in 2usize..96, k in 9usize..600, n in 2usize..130,
            a_t: bool, b_t: bool, keep in proptest::option::of(-1.0f32..1.0), scale in -2.0f32..2.0, seed: u64,
        ) {
            let mut rng = Rng::new(seed);
            let mut fill = |len: usize| -> Vec<f32> {
                (0..len).map(|_| rng.uniform() * 2.0 - 1.0).collect()
            };
            let (a, b, c0) = (fill(m * k), fill(k * n), fill(m * n));
            // A transposed operand is stored the other way round and viewed through `t()`.
            let a_view = if a_t { Mat::new(&a, k, m).t() } else { Mat::new(&a, m, k) };
            let b_view = if b_t { Mat::new(&b, n, k).t() } else { Mat::new(&b, k, n) };
            let (mut fast, mut slow) = (c0.clone(), c0);
            Host::gemm(a_view, b_view, MatMut::new(&mut fast, m, n), keep, scale);
            <Portable as Kernels<f32>>::gemm(a_view, b_view, MatMut::new(&mut slow, m, n), keep, scale);
            for (f, s) in fast.iter().zip(&slow) {
                // Sums of k products of values in [-1, 1]: allow for rounding in another order.
                proptest::prop_assert!((f - s).abs() <= 2e-5 * k as f32 + 1e-5, "{f} vs {s}");
            }
        }
    }
}
