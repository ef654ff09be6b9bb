//! The host's SIMD kernels for the fused block (a one-channel 3x3 convolution
//! with its ReLU and 2x2 max pooling), forward and weight gradients, in f32.
//!
//! The portable path runs that block as im2col, a product with K = 9, a bias
//! pass, a ReLU pass and a pooling pass, and backward as four more passes over
//! the convolution's full output (26x26x32 values a sample in the reference CNN)
//! before its product. Here each pooling window's four convolution outputs are
//! computed in registers and only the pooled, rectified value is stored, with
//! two bits saying which of the four won; the backward pass reads those bits and
//! accumulates the weight gradient straight from the pooled gradient. The
//! convolution's output, its gradient and the im2col matrix never exist.
//! (Backward used to recompute each window to find its winner: the bits cost
//! 1.4 KB a sample in the reference CNN and made its training 7% faster;
//! selecting each lane's winning pixel, rather than multiplying all four
//! positions' pixels by a gradient that is zero at three, 2-3% more.)
//!
//! No GEMM library fuses a K = 9 product with what follows it, so this is
//! written here, on `pulp` (the SIMD layer of the gemm crate the dense
//! products use): the same code runs on AVX-512, AVX2+FMA or NEON, picked at run
//! time, without unsafe code. Compiler auto-vectorisation of the plain loops was
//! measured first and gave 128-bit code that made the block slower than
//! im2col + GEMM.

use pulp::{Arch, Simd, WithSimd};

use crate::kernels::ConvPool;

/// Filter vectors the forward pass computes together (`V` in what follows):
/// two with 32 vector registers (32 filters a block with AVX-512), one with 16,
/// where two spill the nine taps (measured on an AVX2 EPYC: CNN training 7.2k
/// -> 8.3k samples/s).
fn filter_vectors<S: Simd>() -> usize {
    if S::REGISTER_COUNT >= 32 { 2 } else { 1 }
}

/// Forward: `y` (pooled outputs, `batch` samples HWC) from `x` (`batch`
/// images), and into `winners` ([`ConvPool::winner_words`] a sample) which
/// position of each window held its maximum, for [`conv_relu_pool_grads`].
pub(crate) fn conv_relu_pool(
    shape: ConvPool,
    x: &[f32],
    (kernel, bias): (&[f32], &[f32]),
    (y, winners): (&mut [f32], &mut [u32]),
    batch: usize,
) {
    Arch::new().dispatch(Forward {
        shape,
        x: &x[..batch * shape.input_len()],
        kernel,
        bias,
        y: &mut y[..batch * shape.output_len()],
        winners: &mut winners[..batch * shape.winner_words()],
    });
}

/// Weight gradients: writes the summed kernel gradient (`9 x filters`) and bias
/// gradient (`filters`) into `grads`, from the inputs `x`, the forward outputs
/// `y` and `winners`, and the outputs' gradients `dy`.
pub(crate) fn conv_relu_pool_grads(
    shape: ConvPool,
    x: &[f32],
    (y, winners): (&[f32], &[u32]),
    dy: &[f32],
    grads: &mut [f32],
    batch: usize,
) {
    let n = batch * shape.output_len();
    Arch::new().dispatch(Grads {
        shape,
        x: &x[..batch * shape.input_len()],
        y: &y[..n],
        winners: &winners[..batch * shape.winner_words()],
        dy: &dy[..n],
        grads: &mut grads[..10 * shape.filters],
    });
}

/// The lanes `[f0, f0 + V·lanes)` of `row` (one value per filter), as
/// vectors; zero past the row's end.
#[inline(always)]
fn load<S: Simd, const V: usize>(simd: S, row: &[f32], f0: usize) -> [S::f32s; V] {
    core::array::from_fn(|v| simd.partial_load_f32s(lanes::<S, _>(row, f0, v)))
}

/// [`load`] for `u32` rows (the winners' words).
#[inline(always)]
fn load_words<S: Simd, const V: usize>(simd: S, row: &[u32], f0: usize) -> [S::u32s; V] {
    core::array::from_fn(|v| simd.partial_load_u32s(lanes::<S, _>(row, f0, v)))
}

/// Stores `values` into the same lanes of `row` that [`load`] reads.
#[inline(always)]
fn store<S: Simd, const V: usize>(simd: S, row: &mut [f32], f0: usize, values: [S::f32s; V]) {
    for (v, value) in values.into_iter().enumerate() {
        simd.partial_store_f32s(lanes_mut::<S, _>(row, f0, v), value);
    }
}

/// [`store`] for `u32` rows (the winners' words).
#[inline(always)]
fn store_words<S: Simd, const V: usize>(simd: S, row: &mut [u32], f0: usize, values: [S::u32s; V]) {
    for (v, value) in values.into_iter().enumerate() {
        simd.partial_store_u32s(lanes_mut::<S, _>(row, f0, v), value);
    }
}

/// Where the `v`-th vector of the block at `f0` falls in a row of `len`
/// values, cut at the row's end (f32 and u32 vectors have as many lanes).
fn span<S: Simd>(len: usize, f0: usize, v: usize) -> core::ops::Range<usize> {
    let start = (f0 + v * S::F32_LANES).min(len);
    start..(start + S::F32_LANES).min(len)
}

fn lanes<S: Simd, T>(row: &[T], f0: usize, v: usize) -> &[T] {
    &row[span::<S>(row.len(), f0, v)]
}

fn lanes_mut<S: Simd, T>(row: &mut [T], f0: usize, v: usize) -> &mut [T] {
    let span = span::<S>(row.len(), f0, v);
    &mut row[span]
}

/// The kernel's nine taps for the filters of the block at `f0`.
#[inline(always)]
fn taps<S: Simd, const V: usize>(
    simd: S,
    kernel: &[f32],
    filters: usize,
    f0: usize,
) -> [[S::f32s; V]; 9] {
    core::array::from_fn(|t| load(simd, &kernel[t * filters..(t + 1) * filters], f0))
}

/// The four convolution outputs (without bias) of pooling window `(i, j)`, in
/// the order top-left, top-right, bottom-left, bottom-right.
#[inline(always)]
fn window<S: Simd, const V: usize>(
    simd: S,
    img: &[f32],
    width: usize,
    (i, j): (usize, usize),
    taps: &[[S::f32s; V]; 9],
) -> [[S::f32s; V]; 4] {
    let rows: [&[f32]; 4] = core::array::from_fn(|r| &img[(2 * i + r) * width + 2 * j..][..4]);
    let mut out = [[simd.splat_f32s(0.0); V]; 4];
    for (at, acc) in out.iter_mut().enumerate() {
        let (dr, dc) = (at / 2, at % 2);
        for (t, tap) in taps.iter().enumerate() {
            let x = simd.splat_f32s(rows[dr + t / 3][dc + t % 3]);
            for v in 0..V {
                acc[v] = simd.mul_add_f32s(x, tap[v], acc[v]);
            }
        }
    }
    out
}

#[inline(always)]
fn max4<S: Simd, const V: usize>(simd: S, w: &[[S::f32s; V]; 4]) -> [S::f32s; V] {
    core::array::from_fn(|v| {
        simd.max_f32s(
            simd.max_f32s(w[0][v], w[1][v]),
            simd.max_f32s(w[2][v], w[3][v]),
        )
    })
}

struct Forward<'a> {
    shape: ConvPool,
    x: &'a [f32],
    kernel: &'a [f32],
    bias: &'a [f32],
    y: &'a mut [f32],
    winners: &'a mut [u32],
}

impl WithSimd for Forward<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: Simd>(self, simd: S) {
        if filter_vectors::<S>() == 2 {
            self.run::<S, 2>(simd);
        } else {
            self.run::<S, 1>(simd);
        }
    }
}

impl Forward<'_> {
    #[inline(always)]
    fn run<S: Simd, const V: usize>(self, simd: S) {
        let Forward {
            shape,
            x,
            kernel,
            bias,
            y,
            winners,
        } = self;
        let (f, (ph, pw)) = (shape.filters, shape.pooled());
        let zero = simd.splat_f32s(0.0);
        let positions: [S::u32s; 3] = core::array::from_fn(|at| simd.splat_u32s(at as u32));
        for f0 in (0..f).step_by(V * S::F32_LANES) {
            let taps = taps::<S, V>(simd, kernel, f, f0);
            let b = load::<S, V>(simd, &bias[..f], f0);
            let images = x.chunks_exact(shape.input_len());
            let outputs = y.chunks_exact_mut(shape.output_len());
            let words = winners.chunks_exact_mut(shape.winner_words());
            for ((img, out), words) in images.zip(outputs).zip(words) {
                for i in 0..ph {
                    for j in 0..pw {
                        let win = window(simd, img, shape.width, (i, j), &taps);
                        let best = max4(simd, &win);
                        let pooled: [S::f32s; V] = core::array::from_fn(|v| {
                            simd.max_f32s(simd.add_f32s(best[v], b[v]), zero)
                        });
                        let at = (i * pw + j) * f;
                        store(simd, &mut out[at..at + f], f0, pooled);
                        // The first position at the maximum wins (as the
                        // portable pooling routes the gradient); 3 if none
                        // before it did.
                        let (row, shift) = shape.winner_slot(i * pw + j);
                        let row = &mut words[row..row + f];
                        let fresh = shift == 0;
                        let old = if fresh {
                            [simd.splat_u32s(0); V]
                        } else {
                            load_words(simd, row, f0)
                        };
                        let shift = simd.splat_u32s(shift);
                        let packed: [S::u32s; V] = core::array::from_fn(|v| {
                            let mut code = simd.splat_u32s(3);
                            for at in (0..3).rev() {
                                let hit = simd.equal_f32s(win[at][v], best[v]);
                                code = simd.select_u32s(hit, positions[at], code);
                            }
                            simd.or_u32s(old[v], simd.wrapping_dyn_shl_u32s(code, shift))
                        });
                        store_words(simd, row, f0, packed);
                    }
                }
            }
        }
    }
}

/// Each pooled gradient goes to the window position forward recorded as the
/// winner, and only where the ReLU passed (`y > 0`).
struct Grads<'a> {
    shape: ConvPool,
    x: &'a [f32],
    y: &'a [f32],
    winners: &'a [u32],
    dy: &'a [f32],
    grads: &'a mut [f32],
}

impl WithSimd for Grads<'_> {
    type Output = ();

    /// One filter vector at a time, whatever the register count: two need 18
    /// gradient accumulators beside the winners' codes and the pooled
    /// gradients, and spilled accumulators to the stack every window (CNN
    /// training on a Zen 4 EPYC, four alternations: 13.9-16.7k samples/s with
    /// two, 16.8-17.8k with one).
    #[inline(always)]
    fn with_simd<S: Simd>(self, simd: S) {
        self.run::<S, 1>(simd);
    }
}

impl Grads<'_> {
    #[inline(always)]
    fn run<S: Simd, const V: usize>(self, simd: S) {
        let Grads {
            shape,
            x,
            y,
            winners,
            dy,
            grads,
        } = self;
        let (f, (ph, pw), n) = (shape.filters, shape.pooled(), shape.output_len());
        let zero = simd.splat_f32s(0.0);
        let two_bits = simd.splat_u32s(3);
        // Positions 1 to 3 (top-right, bottom-left, bottom-right); 0 is the rest.
        let others: [S::u32s; 3] = core::array::from_fn(|k| simd.splat_u32s(k as u32 + 1));
        for f0 in (0..f).step_by(V * S::F32_LANES) {
            let mut dw = [[zero; V]; 9];
            let mut db = [zero; V];
            let samples = x.chunks_exact(shape.input_len());
            let outputs = y.chunks_exact(n).zip(dy.chunks_exact(n));
            let words = winners.chunks_exact(shape.winner_words());
            for ((img, (ys, dys)), words) in samples.zip(outputs).zip(words) {
                for i in 0..ph {
                    for j in 0..pw {
                        let at = (i * pw + j) * f;
                        let (yv, g): ([S::f32s; V], [S::f32s; V]) = (
                            load(simd, &ys[at..at + f], f0),
                            load(simd, &dys[at..at + f], f0),
                        );
                        let passed: [S::f32s; V] = core::array::from_fn(|v| {
                            simd.select_f32s(simd.greater_than_f32s(yv[v], zero), g[v], zero)
                        });
                        for v in 0..V {
                            db[v] = simd.add_f32s(db[v], passed[v]);
                        }
                        let (row, shift) = shape.winner_slot(i * pw + j);
                        let shift = simd.splat_u32s(shift);
                        let packed = load_words::<S, V>(simd, &words[row..row + f], f0);
                        let code = packed
                            .map(|w| simd.and_u32s(simd.wrapping_dyn_shr_u32s(w, shift), two_bits));
                        // The window's 4x4 input pixels; each lane takes, under
                        // each tap, the pixel at its own winning position (a
                        // select, not four multiply-adds of which three add 0).
                        let px: [[S::f32s; 4]; 4] = core::array::from_fn(|r| {
                            let row = &img[(2 * i + r) * shape.width + 2 * j..][..4];
                            core::array::from_fn(|c| simd.splat_f32s(row[c]))
                        });
                        let won: [[S::m32s; V]; 3] = core::array::from_fn(|k| {
                            core::array::from_fn(|v| simd.equal_u32s(code[v], others[k]))
                        });
                        for (t, row) in dw.iter_mut().enumerate() {
                            let (r, c) = (t / 3, t % 3);
                            for v in 0..V {
                                let mut xv = px[r][c];
                                xv = simd.select_f32s(won[0][v], px[r][c + 1], xv);
                                xv = simd.select_f32s(won[1][v], px[r + 1][c], xv);
                                xv = simd.select_f32s(won[2][v], px[r + 1][c + 1], xv);
                                row[v] = simd.mul_add_f32s(xv, passed[v], row[v]);
                            }
                        }
                    }
                }
            }
            let (gw, gb) = grads.split_at_mut(9 * f);
            for (t, row) in dw.into_iter().enumerate() {
                store(simd, &mut gw[t * f..(t + 1) * f], f0, row);
            }
            store(simd, &mut gb[..f], f0, db);
        }
    }
}
