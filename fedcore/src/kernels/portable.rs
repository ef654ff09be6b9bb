//! The portable backend: plain loops over any scalar, no SIMD, allocation or
//! std. Devices run it, and it is the reference the host backend is tested
//! against.
//!
//! Its fused block computes each pooling window's four convolution outputs in
//! a few filters' worth of wide accumulators (one rounding each, as the
//! unfused product rounds), so a device training a CNN keeps neither the
//! convolution's output, nor its gradient, nor the im2col matrix: for the
//! reference CNN's block that is 28 KiB a sample.

use core::cmp::Ordering;

use super::{ConvPool, Kernels};
use crate::linalg::{Mat, MatMut};
use crate::scalar::Scalar;

/// Plain loops over any [`Scalar`]: what devices run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Portable;

/// Filters the fused block works on at once: its accumulators live on the
/// stack (10 wide values a filter in the gradient), which a device's is small.
const FILTERS: usize = 8;

/// The 4x4 pixels under pooling window `(i, j)` of a row-major image.
fn window_pixels<S: Scalar>(img: &[S], width: usize, (i, j): (usize, usize)) -> [[S; 4]; 4] {
    core::array::from_fn(|r| {
        let row = &img[(2 * i + r) * width + 2 * j..][..4];
        core::array::from_fn(|c| row[c])
    })
}

impl<S: Scalar> Kernels<S> for Portable {
    const NAME: &'static str = "portable";
    const FOLDS_STEP: bool = false;

    fn gemm(a: Mat<'_, S>, b: Mat<'_, S>, c: MatMut<'_, S>, keep: Option<S>, scale: S) {
        S::gemm(a, b, c, keep, scale)
    }

    fn conv_relu_pool(
        shape: ConvPool,
        x: &[S],
        (kernel, bias): (&[S], &[S]),
        (y, winners): (&mut [S], &mut [S]),
        batch: usize,
    ) {
        let (f, (ph, pw)) = (shape.filters, shape.pooled());
        let images = x.chunks_exact(shape.input_len()).take(batch);
        let outputs = y.chunks_exact_mut(shape.output_len());
        let words = winners.chunks_exact_mut(shape.winner_words());
        for ((img, out), words) in images.zip(outputs).zip(words) {
            for i in 0..ph {
                for j in 0..pw {
                    let px = window_pixels(img, shape.width, (i, j));
                    let at = (i * pw + j) * f;
                    let (row, shift) = shape.winner_slot(i * pw + j);
                    for f0 in (0..f).step_by(FILTERS) {
                        let n = FILTERS.min(f - f0);
                        // The window's four positions: top-left, top-right,
                        // bottom-left, bottom-right.
                        let mut sums = [[S::WIDE_ZERO; FILTERS]; 4];
                        for (p, acc) in sums.iter_mut().enumerate() {
                            let (dr, dc) = (p / 2, p % 2);
                            for t in 0..9 {
                                let v = px[dr + t / 3][dc + t % 3];
                                let taps = &kernel[t * f + f0..][..n];
                                for (a, &w) in acc.iter_mut().zip(taps) {
                                    *a = S::mac(*a, v, w);
                                }
                            }
                        }
                        for k in 0..n {
                            let at_p = |p: usize| S::narrow(sums[p][k]);
                            // The first position at the maximum wins, as the
                            // unfused pooling routes its gradient.
                            let (mut best, mut code) = (at_p(0), 0u32);
                            for p in 1..4 {
                                if at_p(p) > best {
                                    (best, code) = (at_p(p), p as u32);
                                }
                            }
                            out[at + f0 + k] = best.add(bias[f0 + k]).max(S::ZERO);
                            let word = &mut words[row + f0 + k];
                            let old = if shift == 0 { 0 } else { word.to_word() };
                            *word = S::from_word(old | (code << shift));
                        }
                    }
                }
            }
        }
    }

    fn conv_relu_pool_grads(
        shape: ConvPool,
        x: &[S],
        (y, winners): (&[S], &[S]),
        dy: &[S],
        grads: &mut [S],
        batch: usize,
    ) {
        let (f, (ph, pw), n_out) = (shape.filters, shape.pooled(), shape.output_len());
        let (gw, gb) = grads[..10 * f].split_at_mut(9 * f);
        for f0 in (0..f).step_by(FILTERS) {
            let n = FILTERS.min(f - f0);
            let mut dw = [[S::WIDE_ZERO; FILTERS]; 9];
            let mut db = [S::WIDE_ZERO; FILTERS];
            let samples = x.chunks_exact(shape.input_len()).take(batch);
            let outputs = y.chunks_exact(n_out).zip(dy.chunks_exact(n_out));
            let words = winners.chunks_exact(shape.winner_words());
            for ((img, (ys, dys)), words) in samples.zip(outputs).zip(words) {
                for i in 0..ph {
                    for j in 0..pw {
                        let px = window_pixels(img, shape.width, (i, j));
                        let at = (i * pw + j) * f + f0;
                        let (row, shift) = shape.winner_slot(i * pw + j);
                        for k in 0..n {
                            // Only where the ReLU passed.
                            if ys[at + k].partial_cmp(&S::ZERO) != Some(Ordering::Greater) {
                                continue;
                            }
                            let g = dys[at + k];
                            let code = (words[row + f0 + k].to_word() >> shift) & 3;
                            let (dr, dc) = ((code / 2) as usize, (code % 2) as usize);
                            db[k] = S::mac(db[k], g, S::ONE);
                            for (t, acc) in dw.iter_mut().enumerate() {
                                acc[k] = S::mac(acc[k], px[dr + t / 3][dc + t % 3], g);
                            }
                        }
                    }
                }
            }
            for (t, acc) in dw.iter().enumerate() {
                for (g, &a) in gw[t * f + f0..][..n].iter_mut().zip(acc) {
                    *g = S::narrow(a);
                }
            }
            for (g, &a) in gb[f0..f0 + n].iter_mut().zip(&db) {
                *g = S::narrow(a);
            }
        }
    }
}
