//! The layers' own loops, forward and backward, over batch-major HWC
//! activations: what is not a matrix product. Every backend runs these; the
//! products go to the backend ([`crate::kernels::Kernels::gemm`]).
//!
//! - convolutions become products over the im2col matrix ([`im2col`]), one
//!   row a window with columns `(ky, kx, c)` (the HWIO kernel flattened), the
//!   zeros of padding written in; backward scatters back ([`col2im`]);
//! - max pooling routes each gradient to the first maximum of its window
//!   (rows first), found again from the input, so a layer working in place on
//!   the pooled output later cannot mislead it;
//! - average and global average pooling spread each gradient evenly;
//! - dropout draws its mask from a seed, forward and again backward, so the
//!   mask is never stored.

use crate::model::spec::MAX_WINDOW;
use crate::model::{Layer, RATE_UNIT, Stage};
use crate::rng::Rng;
use crate::scalar::Scalar;

/// A window layer's geometry over one sample.
#[derive(Debug, Clone, Copy)]
struct Windows {
    /// Input rows, columns, channels.
    h: usize,
    w: usize,
    c: usize,
    /// Output rows and columns.
    ho: usize,
    wo: usize,
    /// Window side and stride.
    k: usize,
    s: usize,
    /// Zeros before the first row and column.
    top: usize,
    left: usize,
}

impl Windows {
    fn of(st: &Stage) -> Windows {
        let (rows, cols, k, s) = st.layer.windows(st.input).map_or(
            (Default::default(), Default::default(), 0, 1),
            |(r, c, k, s)| ((r.out, r.before), (c.out, c.before), k, s),
        );
        Windows {
            h: st.input.height as usize,
            w: st.input.width as usize,
            c: st.input.channels as usize,
            ho: rows.0,
            wo: cols.0,
            k,
            s,
            top: rows.1,
            left: cols.1,
        }
    }

    /// The input row under output row `oy`'s window row `ky`, if not padding.
    fn row(&self, oy: usize, ky: usize) -> Option<usize> {
        (oy * self.s + ky)
            .checked_sub(self.top)
            .filter(|&y| y < self.h)
    }

    /// The window columns `[lo, hi)` of output column `ox` that fall inside the
    /// input, and the input column of `lo`.
    fn columns(&self, ox: usize) -> (usize, usize, usize) {
        let start = ox * self.s;
        let lo = self.left.saturating_sub(start).min(self.k);
        let hi = (self.w + self.left)
            .saturating_sub(start)
            .min(self.k)
            .max(lo);
        (lo, hi, (start + lo).saturating_sub(self.left))
    }

    /// Calls `f(col, x)` for every run of a window row in the im2col matrix
    /// (`col`, `k·c` values from there) with the input it copies (`x`: the
    /// offset of the first of `(hi - lo)·c` values, which land at `lo·c`), or
    /// `None` for a row of padding.
    fn for_each_row(&self, batch: usize, mut f: impl FnMut(usize, Option<(usize, usize, usize)>)) {
        let row_len = self.k * self.k * self.c;
        for b in 0..batch {
            for oy in 0..self.ho {
                for ox in 0..self.wo {
                    let at = ((b * self.ho + oy) * self.wo + ox) * row_len;
                    let (lo, hi, x0) = self.columns(ox);
                    for ky in 0..self.k {
                        let col = at + ky * self.k * self.c;
                        let run = self
                            .row(oy, ky)
                            .map(|y| (lo, hi, ((b * self.h + y) * self.w + x0) * self.c));
                        f(col, run);
                    }
                }
            }
        }
    }
}

/// Writes the im2col matrix of `batch` samples of a convolution's input `x`.
pub(crate) fn im2col<S: Scalar>(st: &Stage, x: &[S], cols: &mut [S], batch: usize) {
    let g = Windows::of(st);
    let run_len = g.k * g.c;
    g.for_each_row(batch, |col, run| {
        let dst = &mut cols[col..col + run_len];
        match run {
            None => dst.fill(S::ZERO),
            Some((lo, hi, xi)) => {
                dst[..lo * g.c].fill(S::ZERO);
                dst[hi * g.c..].fill(S::ZERO);
                dst[lo * g.c..hi * g.c].copy_from_slice(&x[xi..xi + (hi - lo) * g.c]);
            }
        }
    });
}

/// Adds the im2col-shaped gradient `cols` back into the input gradient `dx`.
pub(crate) fn col2im<S: Scalar>(st: &Stage, cols: &[S], dx: &mut [S], batch: usize) {
    let g = Windows::of(st);
    dx.fill(S::ZERO);
    g.for_each_row(batch, |col, run| {
        if let Some((lo, hi, xi)) = run {
            let src = &cols[col + lo * g.c..col + hi * g.c];
            for (d, &v) in dx[xi..xi + src.len()].iter_mut().zip(src) {
                *d = d.add(v);
            }
        }
    });
}

/// Calls `f(out, inputs)` for each output pixel of a pooling layer: the offset
/// of its `c` values, and an iterator over the offsets of the input pixels in
/// its window, rows first.
fn for_each_window(
    st: &Stage,
    batch: usize,
    mut f: impl FnMut(usize, &mut dyn Iterator<Item = usize>),
) {
    let g = Windows::of(st);
    for b in 0..batch {
        for oy in 0..g.ho {
            for ox in 0..g.wo {
                let out = ((b * g.ho + oy) * g.wo + ox) * g.c;
                let mut inputs = (0..g.k).flat_map(|ky| {
                    let y = oy * g.s + ky;
                    (0..g.k).map(move |kx| ((b * g.h + y) * g.w + ox * g.s + kx) * g.c)
                });
                f(out, &mut inputs);
            }
        }
    }
}

/// Max pooling forward.
pub(crate) fn maxpool<S: Scalar>(st: &Stage, x: &[S], y: &mut [S], batch: usize) {
    let c = st.input.channels as usize;
    for_each_window(st, batch, |out, inputs| {
        let y = &mut y[out..out + c];
        if let Some(first) = inputs.next() {
            y.copy_from_slice(&x[first..first + c]);
        }
        for at in inputs {
            for (m, &v) in y.iter_mut().zip(&x[at..at + c]) {
                *m = m.max(v);
            }
        }
    });
}

/// Most positions a pooling window holds.
const WINDOW_AREA: usize = MAX_WINDOW as usize * MAX_WINDOW as usize;

/// Max pooling backward: each output gradient goes to the first maximum of
/// its window.
pub(crate) fn maxpool_backward<S: Scalar>(
    st: &Stage,
    x: &[S],
    dy: &[S],
    dx: &mut [S],
    batch: usize,
) {
    let c = st.input.channels as usize;
    dx.fill(S::ZERO);
    let mut best = [(S::ZERO, 0usize); 64];
    for_each_window(st, batch, |out, inputs| {
        let Some(first) = inputs.next() else {
            return;
        };
        // Channels in groups, the window's running maximum and where it was.
        let mut positions = [0usize; WINDOW_AREA];
        positions[0] = first;
        let mut n = 1;
        for at in inputs.take(WINDOW_AREA - 1) {
            positions[n] = at;
            n += 1;
        }
        for c0 in (0..c).step_by(best.len()) {
            let m = best.len().min(c - c0);
            for (ch, b) in best[..m].iter_mut().enumerate() {
                *b = (x[first + c0 + ch], first);
            }
            for &at in &positions[1..n] {
                for (ch, b) in best[..m].iter_mut().enumerate() {
                    let v = x[at + c0 + ch];
                    if v > b.0 {
                        *b = (v, at);
                    }
                }
            }
            for (ch, &(_, at)) in best[..m].iter().enumerate() {
                let d = &mut dx[at + c0 + ch];
                *d = d.add(dy[out + c0 + ch]);
            }
        }
    });
}

/// Average pooling forward.
pub(crate) fn avgpool<S: Scalar>(st: &Stage, x: &[S], y: &mut [S], batch: usize) {
    let c = st.input.channels as usize;
    let area = S::from_count(window_area(st));
    for_each_window(st, batch, |out, inputs| {
        let y = &mut y[out..out + c];
        y.fill(S::ZERO);
        for at in inputs {
            for (s, &v) in y.iter_mut().zip(&x[at..at + c]) {
                *s = s.add(v);
            }
        }
        for s in y.iter_mut() {
            *s = s.div(area);
        }
    });
}

/// Average pooling backward: each window's gradient shared by its inputs.
pub(crate) fn avgpool_backward<S: Scalar>(st: &Stage, dy: &[S], dx: &mut [S], batch: usize) {
    let c = st.input.channels as usize;
    let area = S::from_count(window_area(st));
    dx.fill(S::ZERO);
    for_each_window(st, batch, |out, inputs| {
        for at in inputs {
            for (d, &g) in dx[at..at + c].iter_mut().zip(&dy[out..out + c]) {
                *d = d.add(g.div(area));
            }
        }
    });
}

fn window_area(st: &Stage) -> u32 {
    let k = match st.layer {
        Layer::MaxPool2d { size, .. } | Layer::AvgPool2d { size, .. } => u32::from(size),
        _ => 1,
    };
    k * k
}

/// Global average pooling forward: each channel's mean over the image.
pub(crate) fn global_avgpool<S: Scalar>(st: &Stage, x: &[S], y: &mut [S], batch: usize) {
    let (pixels, c) = (st.input.len() / st.output.len(), st.output.len());
    let area = S::from_count(pixels as u32);
    for (img, y) in x
        .chunks_exact(pixels * c)
        .zip(y.chunks_exact_mut(c))
        .take(batch)
    {
        y.fill(S::ZERO);
        for px in img.chunks_exact(c) {
            for (s, &v) in y.iter_mut().zip(px) {
                *s = s.add(v);
            }
        }
        for s in y.iter_mut() {
            *s = s.div(area);
        }
    }
}

/// Global average pooling backward.
pub(crate) fn global_avgpool_backward<S: Scalar>(st: &Stage, dy: &[S], dx: &mut [S], batch: usize) {
    let (pixels, c) = (st.input.len() / st.output.len(), st.output.len());
    let area = S::from_count(pixels as u32);
    for (img, g) in dx
        .chunks_exact_mut(pixels * c)
        .zip(dy.chunks_exact(c))
        .take(batch)
    {
        for px in img.chunks_exact_mut(c) {
            for (d, &g) in px.iter_mut().zip(g) {
                *d = g.div(area);
            }
        }
    }
}

/// Inverted dropout in place: each value kept with probability `1 - rate`
/// and scaled by `1 / (1 - rate)`, or zeroed; the same `seed` gives the same
/// mask, so backward applies to the gradient exactly what forward applied.
pub(crate) fn dropout<S: Scalar>(values: &mut [S], rate: u16, seed: u64) {
    if rate == 0 {
        return;
    }
    let mut rng = Rng::new(seed);
    // Dropped when a uniform word falls below rate / RATE_UNIT of the range.
    let threshold = ((u64::from(rate) << 32) / u64::from(RATE_UNIT)) as u32;
    let scale = S::from_count(u32::from(RATE_UNIT)).div(S::from_count(u32::from(RATE_UNIT - rate)));
    for v in values {
        *v = if rng.next_u32() < threshold {
            S::ZERO
        } else {
            v.mul(scale)
        };
    }
}

/// Adds `b` to every row of `y`.
pub(crate) fn add_bias<S: Scalar>(y: &mut [S], b: &[S]) {
    for row in y.chunks_exact_mut(b.len()) {
        for (v, &bias) in row.iter_mut().zip(b) {
            *v = v.add(bias);
        }
    }
}

/// Sums the rows of a row-major matrix `m` with `cols` columns into `out`.
pub(crate) fn column_sums<S: Scalar>(m: &[S], cols: usize, out: &mut [S]) {
    out.fill(S::ZERO);
    for row in m.chunks_exact(cols) {
        for (o, &v) in out.iter_mut().zip(row) {
            *o = o.add(v);
        }
    }
}
