//! Strided matrix views and matrix multiplication.
//!
//! Layers express their heavy work as `C = A·B` (optionally `C += A·B`) over
//! strided views of flat buffers, so a transposed operand is just a view with
//! swapped strides and no copy. Under the `std` feature the f32 product runs on
//! the `gemm` crate (of the faer project), which picks the widest vector unit at
//! run time (AVX-512, AVX2+FMA, SSE, NEON); measured on our shapes it beat
//! matrixmultiply, which stops at AVX2 (`bench/ratio.sh`). Without `std`, and
//! for fixed point, a plain loop nest with a wide accumulator is used:
//! bare-metal targets have no SIMD worth a blocked kernel, and fixed point needs
//! its own 64-bit accumulation anyway. Tests hold the two f32 paths to each
//! other.

/// A read-only strided matrix view over a flat slice.
#[derive(Debug, Clone, Copy)]
pub struct Mat<'a, S> {
    /// Backing storage.
    pub data: &'a [S],
    /// Number of rows.
    pub rows: usize,
    /// Number of columns.
    pub cols: usize,
    /// Distance between consecutive rows.
    pub row_stride: usize,
    /// Distance between consecutive columns.
    pub col_stride: usize,
}

impl<'a, S: Copy> Mat<'a, S> {
    /// Whether every element the view reaches lies in its slice (an empty view always does).
    pub fn in_bounds(&self) -> bool {
        if self.rows == 0 || self.cols == 0 {
            return true;
        }
        (self.rows - 1)
            .checked_mul(self.row_stride)
            .zip((self.cols - 1).checked_mul(self.col_stride))
            .and_then(|(r, c)| r.checked_add(c))
            .is_some_and(|last| last < self.data.len())
    }

    /// A row-major `rows x cols` view.
    pub fn new(data: &'a [S], rows: usize, cols: usize) -> Self {
        Mat {
            data,
            rows,
            cols,
            row_stride: cols,
            col_stride: 1,
        }
    }

    /// The transposed view (no copy).
    pub fn t(self) -> Self {
        Mat {
            data: self.data,
            rows: self.cols,
            cols: self.rows,
            row_stride: self.col_stride,
            col_stride: self.row_stride,
        }
    }

    fn at(&self, i: usize, j: usize) -> S {
        self.data[i * self.row_stride + j * self.col_stride]
    }
}

/// A mutable row-major matrix view over a flat slice.
#[derive(Debug)]
pub struct MatMut<'a, S> {
    /// Backing storage.
    pub data: &'a mut [S],
    /// Number of rows.
    pub rows: usize,
    /// Number of columns.
    pub cols: usize,
}

impl<'a, S> MatMut<'a, S> {
    /// A row-major `rows x cols` view.
    pub fn new(data: &'a mut [S], rows: usize, cols: usize) -> Self {
        MatMut { data, rows, cols }
    }
}

/// `C = A·B`, or `C += A·B` when `accumulate`, by a plain loop nest.
///
/// `mac` multiplies two entries into the accumulator type `Acc` and adds them;
/// `finish` turns an accumulator into an entry, adding the entry already in `C`
/// when there is one to add to. f32 accumulates in f32, fixed point in i64 with
/// a single rounding per output.
pub(crate) fn gemm_loops<S: Copy, Acc: Copy>(
    a: Mat<'_, S>,
    b: Mat<'_, S>,
    c: MatMut<'_, S>,
    accumulate: bool,
    zero: Acc,
    mac: impl Fn(Acc, S, S) -> Acc,
    finish: impl Fn(Acc, Option<S>) -> S,
) {
    debug_assert_eq!(a.cols, b.rows);
    debug_assert_eq!((a.rows, b.cols), (c.rows, c.cols));
    for i in 0..c.rows {
        let row = &mut c.data[i * c.cols..(i + 1) * c.cols];
        for (j, out) in row.iter_mut().enumerate() {
            let acc = (0..a.cols).fold(zero, |acc, p| mac(acc, a.at(i, p), b.at(p, j)));
            *out = finish(acc, accumulate.then_some(*out));
        }
    }
}

/// f32 `C = A·B` (or `C += A·B`).
pub(crate) fn gemm_f32(a: Mat<'_, f32>, b: Mat<'_, f32>, c: MatMut<'_, f32>, accumulate: bool) {
    sgemm(a, b, c, accumulate.then_some(1.0), 1.0)
}

/// f32 `C = keep·C + scale·A·B`, or `C = scale·A·B` when `keep` is `None`: the
/// `gemm` crate's kernels when `std` is on. The scaled form folds an update
/// into the product that computes it (`v = momentum·v - lr·Xᵀ·dY`).
#[cfg(feature = "std")]
pub(crate) fn sgemm(
    a: Mat<'_, f32>,
    b: Mat<'_, f32>,
    c: MatMut<'_, f32>,
    keep: Option<f32>,
    scale: f32,
) {
    // Below this many multiply-adds packing costs more than it saves (the
    // in-place trainer multiplies one weight row at a time). A single row (one
    // sample) is a vector-matrix product, where packing gains nothing either;
    // the loops also keep batch-1 training free of heap allocation, which
    // devices rely on.
    const SGEMM_MIN_MACS: usize = 4096;
    let shapes_agree = a.cols == b.rows && c.rows == a.rows && c.cols == b.cols;
    if a.rows == 1 || a.rows * a.cols * b.cols < SGEMM_MIN_MACS || !shapes_agree {
        return sgemm_loops(a, b, c, keep, scale);
    }
    // Every element a stride reaches must lie in its slice; the layers' memory
    // plan ensures it, and this check is what makes the call below sound.
    if !a.in_bounds() || !b.in_bounds() || c.data.len() < c.rows * c.cols {
        return sgemm_loops(a, b, c, keep, scale);
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
        return sgemm_loops(a, b, c, keep, scale);
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

/// f32 `C = keep·C + scale·A·B` without std: the plain loop nest.
#[cfg(not(feature = "std"))]
pub(crate) fn sgemm(
    a: Mat<'_, f32>,
    b: Mat<'_, f32>,
    c: MatMut<'_, f32>,
    keep: Option<f32>,
    scale: f32,
) {
    sgemm_loops(a, b, c, keep, scale)
}

fn sgemm_loops(
    a: Mat<'_, f32>,
    b: Mat<'_, f32>,
    c: MatMut<'_, f32>,
    keep: Option<f32>,
    scale: f32,
) {
    if a.rows == 1 && b.col_stride == 1 {
        // One sample through a row-major weight matrix: sweep B's rows and add
        // each, scaled, into C's one row (contiguous, so it vectorises).
        let out = &mut c.data[..c.cols];
        match keep {
            Some(1.0) => {}
            Some(k) => out.iter_mut().for_each(|o| *o *= k),
            None => out.fill(0.0),
        }
        for p in 0..a.cols {
            let x = scale * a.at(0, p);
            let row = &b.data[p * b.row_stride..p * b.row_stride + b.cols];
            for (o, w) in out.iter_mut().zip(row) {
                *o += x * w;
            }
        }
        return;
    }
    gemm_loops(
        a,
        b,
        c,
        keep.is_some(),
        0.0f32,
        |acc, x, y| acc + x * y,
        |acc, prev| prev.map_or(0.0, |p| keep.unwrap_or(0.0) * p) + scale * acc,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gemm_f32_loops(a: Mat<'_, f32>, b: Mat<'_, f32>, c: MatMut<'_, f32>, accumulate: bool) {
        sgemm_loops(a, b, c, accumulate.then_some(1.0), 1.0)
    }

    #[test]
    fn gemm_matches_definition_with_transposes() {
        // A: 2x3, B: 3x2 given as the transpose of a 2x3 row-major buffer.
        let a = [1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0];
        let bt = [7.0f32, 9.0, 11.0, 8.0, 10.0, 12.0];
        let mut c = [1.0f32; 4];
        gemm_f32(
            Mat::new(&a, 2, 3),
            Mat::new(&bt, 2, 3).t(),
            MatMut::new(&mut c, 2, 2),
            false,
        );
        assert_eq!(c, [58.0, 64.0, 139.0, 154.0]);
        gemm_f32(
            Mat::new(&a, 2, 3),
            Mat::new(&bt, 2, 3).t(),
            MatMut::new(&mut c, 2, 2),
            true,
        );
        assert_eq!(c, [116.0, 128.0, 278.0, 308.0]);
        let mut d = [0.0f32; 4];
        gemm_f32_loops(
            Mat::new(&a, 2, 3),
            Mat::new(&bt, 2, 3).t(),
            MatMut::new(&mut d, 2, 2),
            false,
        );
        assert_eq!(d, [58.0, 64.0, 139.0, 154.0]);
    }

    #[test]
    fn a_single_row_product_matches_the_loop_nest_with_and_without_accumulation() {
        let x = [0.5f32, -1.0, 2.0];
        let w = [
            1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0, 11.0, 12.0,
        ];
        let mut fast = [1.0f32; 4];
        gemm_f32_loops(
            Mat::new(&x, 1, 3),
            Mat::new(&w, 3, 4),
            MatMut::new(&mut fast, 1, 4),
            false,
        );
        let mut slow = [1.0f32; 4];
        gemm_loops(
            Mat::new(&x, 1, 3),
            Mat::new(&w, 3, 4),
            MatMut::new(&mut slow, 1, 4),
            false,
            0.0f32,
            |acc, a, b| acc + a * b,
            |acc, prev| prev.unwrap_or(0.0) + acc,
        );
        assert_eq!(fast, slow);
        assert_eq!(fast, [13.5, 15.0, 16.5, 18.0]);
        gemm_f32_loops(
            Mat::new(&x, 1, 3),
            Mat::new(&w, 3, 4),
            MatMut::new(&mut fast, 1, 4),
            true,
        );
        assert_eq!(fast, [27.0, 30.0, 33.0, 36.0]);
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(48))]
        /// The std path (the gemm crate's kernels) and the portable loops the
        /// devices run give the same products, for the shapes training uses
        /// (tall, wide, K of 9 to 600), either operand transposed, overwriting,
        /// accumulating or scaling what was there (the momentum update).
        #[test]
        fn the_sgemm_path_and_the_portable_loops_agree(
            m in 2usize..96, k in 9usize..600, n in 2usize..130,
            a_t: bool, b_t: bool, keep in proptest::option::of(-1.0f32..1.0), scale in -2.0f32..2.0, seed: u64,
        ) {
            let mut rng = crate::rng::Rng::new(seed);
            let mut fill = |len: usize| -> std::vec::Vec<f32> {
                (0..len).map(|_| rng.uniform() * 2.0 - 1.0).collect()
            };
            let (a, b, c0) = (fill(m * k), fill(k * n), fill(m * n));
            // A transposed operand is stored the other way round and viewed through `t()`.
            let a_view = if a_t { Mat::new(&a, k, m).t() } else { Mat::new(&a, m, k) };
            let b_view = if b_t { Mat::new(&b, n, k).t() } else { Mat::new(&b, k, n) };
            let (mut fast, mut slow) = (c0.clone(), c0);
            sgemm(a_view, b_view, MatMut::new(&mut fast, m, n), keep, scale);
            sgemm_loops(a_view, b_view, MatMut::new(&mut slow, m, n), keep, scale);
            for (f, s) in fast.iter().zip(&slow) {
                // Sums of k products of values in [-1, 1]: allow for rounding in another order.
                proptest::prop_assert!((f - s).abs() <= 2e-5 * k as f32 + 1e-5, "{f} vs {s}");
            }
        }
    }
}
