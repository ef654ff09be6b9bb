//! One scalar abstraction for every numeric path: `f32` and fixed point.
//!
//! Layers, training and the loss are written once, generic over [`Scalar`]. The
//! f32 implementation is the host path (and a device's with an FPU); `exp`,
//! `ln` and `sqrt` come from `libm` on every target. The fixed-point implementation is for devices without an FPU:
//! every operation in the training loop is integer arithmetic on the raw bits,
//! saturating instead of overflowing, so a diverging model clamps rather than
//! panics. Conversions from f32 (learning rates at configuration time) go through
//! `fixed`'s `from_num`, which works on the float's bit pattern with integer
//! instructions only.
//!
//! # The fixed-point format
//! [`Fixed`] is Q16.16 (`FixedI32<U16>`: range ±32768, resolution 1.5e-5),
//! with stochastic rounding of the weight update as the default. Measured on
//! full MNIST with the 784-32-10 MLP, same initialisation and sample order
//! (`cargo run --release -p fedcore --example fixed_vs_f32 -- 5`), test accuracy
//! after 5 epochs:
//!
//! | training | f32 | Q16.16 nearest | Q16.16 stochastic | Q12.20 stoch. | Q8.24 stoch. |
//! | --- | --- | --- | --- | --- | --- |
//! | in place, batch 1, lr 0.01 | 96.08% | 96.14% | 96.39% | 96.33% | 96.51% |
//! | batch 32, lr 0.01, momentum 0.9 | 96.15% | 96.17% | 96.30% | 96.02% | 96.10% |
//!
//! Every format trains to within 0.4 points of f32, so the choice rests on
//! range and cost: Q16.16 has the most integer headroom (logits and sums of
//! products saturate last) and is the wire's fixed-point encoding. Stochastic
//! rounding keeps updates smaller than one unit in the last place unbiased; it
//! gave the lowest test loss in place (0.129 against 0.131 for nearest) for
//! about 30% more training time, and [`crate::train::Rounding::Nearest`] is there
//! for devices that would rather save the random numbers. Q12.20 and Q8.24
//! are implemented too, for that comparison and for users who want them.

use core::fmt::Debug;

use fixed::FixedI32;
use fixed::types::extra::{U16, U20, U24};

use crate::linalg::{Mat, MatMut};

/// The fixed-point type devices train in: Q16.16.
pub type Fixed = FixedI32<U16>;

/// The numeric operations layers and training need.
///
/// Arithmetic is spelled as methods (not operator traits) so that the fixed-point
/// implementation can saturate instead of panicking on overflow in debug builds.
pub trait Scalar: Copy + Default + PartialOrd + Debug + Send + Sync + 'static {
    /// Additive identity.
    const ZERO: Self;
    /// Multiplicative identity.
    const ONE: Self;
    /// Short name for reports ("f32", "Q16.16").
    const NAME: &'static str;
    /// Whether products lose precision that stochastic rounding can keep (fixed point).
    const NEEDS_DITHER: bool;

    /// Converts from f32 (saturating; NaN becomes zero).
    fn from_f32(x: f32) -> Self;
    /// Converts to f32.
    fn to_f32(self) -> f32;
    /// A pixel `p` normalised to `p / 255`.
    fn from_pixel(p: u8) -> Self;
    /// A small integer count.
    fn from_count(n: u32) -> Self;
    /// `self + rhs`.
    fn add(self, rhs: Self) -> Self;
    /// `self - rhs`.
    fn sub(self, rhs: Self) -> Self;
    /// `self * rhs`, rounded to nearest.
    fn mul(self, rhs: Self) -> Self;
    /// `self * rhs`, rounded by a random `dither`: uniform dither gives stochastic
    /// rounding, `1 << 31` gives round-to-nearest. Exact types ignore it.
    fn mul_dither(self, rhs: Self, dither: u32) -> Self;
    /// `self / rhs` (saturating; division by zero saturates).
    fn div(self, rhs: Self) -> Self;
    /// `round(self · k / den)` half away from zero, computed exactly enough that
    /// the rounding is right (quantisation); `den` must be positive.
    fn scaled_ratio(self, k: i32, den: Self) -> i32;
    /// `e^self` for `self <= 0` (positive inputs give 1): softmax after subtracting the max.
    fn exp_nonpos(self) -> Self;
    /// Natural logarithm for `self >= 1`: the log-sum-exp of the loss.
    fn ln_ge1(self) -> Self;
    /// The value times 2^16 as an integer: exact enough to sum losses in any
    /// format, and the wire's fixed-point representation.
    fn to_q16(self) -> i64;
    /// The value of `q / 2^16` (saturating).
    fn from_q16(q: i64) -> Self;
    /// The portable product `C = keep·C + scale·A·B` (`C = scale·A·B` when
    /// `keep` is `None`): plain loops, accumulating each entry in [`Scalar::Wide`].
    fn gemm(
        a: Mat<'_, Self>,
        b: Mat<'_, Self>,
        c: MatMut<'_, Self>,
        keep: Option<Self>,
        scale: Self,
    );

    /// What sums of products accumulate in before one rounding: f32 itself;
    /// for fixed point the raw products in an `i64`.
    type Wide: Copy;
    /// The empty sum.
    const WIDE_ZERO: Self::Wide;
    /// `acc + a·b`, unrounded.
    fn mac(acc: Self::Wide, a: Self, b: Self) -> Self::Wide;
    /// The sum rounded (and saturated) to a value.
    fn narrow(acc: Self::Wide) -> Self;

    /// A 32-bit word kept in a value's place (what the fused kernels record
    /// beside their outputs), bit for bit.
    fn from_word(word: u32) -> Self;
    /// The word [`Scalar::from_word`] stored.
    fn to_word(self) -> u32;

    /// The larger of two values.
    fn max(self, rhs: Self) -> Self {
        if rhs > self { rhs } else { self }
    }
}

impl Scalar for f32 {
    const ZERO: Self = 0.0;
    const ONE: Self = 1.0;
    const NAME: &'static str = "f32";
    const NEEDS_DITHER: bool = false;

    fn from_f32(x: f32) -> Self {
        x
    }
    fn to_f32(self) -> f32 {
        self
    }
    fn from_pixel(p: u8) -> Self {
        f32::from(p) * (1.0 / 255.0)
    }
    fn from_count(n: u32) -> Self {
        n as f32
    }
    fn add(self, rhs: Self) -> Self {
        self + rhs
    }
    fn sub(self, rhs: Self) -> Self {
        self - rhs
    }
    fn mul(self, rhs: Self) -> Self {
        self * rhs
    }
    fn mul_dither(self, rhs: Self, _dither: u32) -> Self {
        self * rhs
    }
    fn div(self, rhs: Self) -> Self {
        self / rhs
    }
    fn scaled_ratio(self, k: i32, den: Self) -> i32 {
        let r = self * k as f32 / den;
        (if r < 0.0 { r - 0.5 } else { r + 0.5 }) as i32
    }
    fn exp_nonpos(self) -> Self {
        float::exp(self.min(0.0))
    }
    fn ln_ge1(self) -> Self {
        float::ln(self)
    }
    fn to_q16(self) -> i64 {
        (self * 65536.0) as i64
    }
    fn from_q16(q: i64) -> Self {
        q as f32 * (1.0 / 65536.0)
    }
    fn gemm(
        a: Mat<'_, Self>,
        b: Mat<'_, Self>,
        c: MatMut<'_, Self>,
        keep: Option<Self>,
        scale: Self,
    ) {
        sgemm_loops(a, b, c, keep, scale)
    }
    type Wide = f32;
    const WIDE_ZERO: f32 = 0.0;
    fn mac(acc: f32, a: f32, b: f32) -> f32 {
        acc + a * b
    }
    fn narrow(acc: f32) -> f32 {
        acc
    }
    fn from_word(word: u32) -> Self {
        f32::from_bits(word)
    }
    fn to_word(self) -> u32 {
        self.to_bits()
    }
}

/// The f32 functions core lacks, from the `libm` crate on every target:
/// hosts and devices compute the same loss, and the choice does not change
/// with a feature (micromath's approximations, used before, erred by about
/// 1e-3 and only where std was not linked).
pub(crate) mod float {
    pub(crate) use libm::{cosf as cos, expf as exp, logf as ln, sqrtf as sqrt};
}

/// ln 2 in Q2.30.
const LN2_Q30: i64 = 744_261_118;
const ONE_Q30: i64 = 1 << 30;

fn saturate(x: i64) -> i32 {
    x.clamp(i64::from(i32::MIN), i64::from(i32::MAX)) as i32
}

/// Rounds a value with `shift` extra fraction bits to nearest.
fn round_shift(x: i64, shift: u32) -> i64 {
    if shift == 0 {
        x
    } else {
        (x + (1 << (shift - 1))) >> shift
    }
}

/// `e^x` for raw `x <= 0` with `frac` fraction bits, by range reduction
/// (`x = r - k ln 2`, `r` in `(-ln 2, 0]`) and an 8th-order Taylor series in Q30.
///
/// Written by hand because neither `fixed` nor micromath offers an integer-only exp.
fn exp_nonpos_raw(x: i32, frac: u32) -> i32 {
    if x >= 0 {
        return 1 << frac;
    }
    let x30 = i64::from(x) << (30 - frac);
    let k = (-x30) / LN2_Q30;
    if k > i64::from(frac) + 1 {
        return 0;
    }
    let r = x30 + k * LN2_Q30;
    let mut t = ONE_Q30;
    for d in (1..=8).rev() {
        t = ONE_Q30 + ((r * t) >> 30) / d;
    }
    round_shift(t, 30 - frac + k as u32) as i32
}

/// `ln x` for raw `x >= 1` with `frac` fraction bits: `x = m 2^e` with `m` in
/// `[1, 2)`, `ln m = 2 atanh((m-1)/(m+1))` by its odd series in Q30.
///
/// Written by hand because neither `fixed` nor micromath offers an integer-only ln.
fn ln_raw(x: i32, frac: u32) -> i32 {
    let x = x.max(1);
    let msb = 31 - x.leading_zeros();
    let m30 = i64::from(x) << (30 - msb);
    let e = i64::from(msb) - i64::from(frac);
    let s = ((m30 - ONE_Q30) << 30) / (m30 + ONE_Q30);
    let s2 = (s * s) >> 30;
    let mut term = s;
    let mut sum = 0;
    for d in [1, 3, 5, 7, 9, 11, 13] {
        sum += term / d;
        term = (term * s2) >> 30;
    }
    saturate(round_shift(2 * sum + e * LN2_Q30, 30 - frac))
}

macro_rules! impl_fixed_scalar {
    ($frac:ty, $name:literal) => {
        impl Scalar for FixedI32<$frac> {
            const ZERO: Self = Self::ZERO;
            const ONE: Self = Self::ONE;
            const NAME: &'static str = $name;
            const NEEDS_DITHER: bool = true;

            fn from_f32(x: f32) -> Self {
                // NaN test on the bit pattern: no float instruction.
                if x.to_bits() & 0x7fff_ffff > 0x7f80_0000 {
                    Self::ZERO
                } else {
                    Self::saturating_from_num(x)
                }
            }
            fn to_f32(self) -> f32 {
                self.to_num()
            }
            fn from_pixel(p: u8) -> Self {
                Self::from_bits((((i64::from(p) << Self::FRAC_NBITS) + 127) / 255) as i32)
            }
            fn from_count(n: u32) -> Self {
                Self::saturating_from_num(n)
            }
            fn add(self, rhs: Self) -> Self {
                self.saturating_add(rhs)
            }
            fn sub(self, rhs: Self) -> Self {
                self.saturating_sub(rhs)
            }
            fn mul(self, rhs: Self) -> Self {
                self.mul_dither(rhs, 1 << 31)
            }
            fn mul_dither(self, rhs: Self, dither: u32) -> Self {
                let p = i64::from(self.to_bits()) * i64::from(rhs.to_bits());
                let d = i64::from(dither >> (32 - Self::FRAC_NBITS));
                Self::from_bits(saturate((p + d) >> Self::FRAC_NBITS))
            }
            fn div(self, rhs: Self) -> Self {
                let (n, d) = (i64::from(self.to_bits()), i64::from(rhs.to_bits()));
                match d {
                    0 if n >= 0 => Self::MAX,
                    0 => Self::MIN,
                    _ => Self::from_bits(saturate((n << Self::FRAC_NBITS) / d)),
                }
            }
            fn scaled_ratio(self, k: i32, den: Self) -> i32 {
                let n = i64::from(self.to_bits()) * i64::from(k);
                let d = i64::from(den.to_bits()).max(1);
                let q = (n.abs() + d / 2) / d;
                saturate(if n < 0 { -q } else { q })
            }
            fn exp_nonpos(self) -> Self {
                Self::from_bits(exp_nonpos_raw(self.to_bits(), Self::FRAC_NBITS))
            }
            fn ln_ge1(self) -> Self {
                Self::from_bits(ln_raw(self.to_bits(), Self::FRAC_NBITS))
            }
            fn to_q16(self) -> i64 {
                let bits = i64::from(self.to_bits());
                match Self::FRAC_NBITS {
                    f if f >= 16 => bits >> (f - 16),
                    f => bits << (16 - f),
                }
            }
            fn from_q16(q: i64) -> Self {
                let bits = match Self::FRAC_NBITS {
                    f if f >= 16 => q.saturating_mul(1 << (f - 16)),
                    f => q >> (16 - f),
                };
                Self::from_bits(saturate(bits))
            }
            fn gemm(
                a: Mat<'_, Self>,
                b: Mat<'_, Self>,
                c: MatMut<'_, Self>,
                keep: Option<Self>,
                scale: Self,
            ) {
                gemm_loops(a, b, c, keep, scale)
            }
            type Wide = i64;
            const WIDE_ZERO: i64 = 0;
            fn mac(acc: i64, a: Self, b: Self) -> i64 {
                acc.saturating_add(i64::from(a.to_bits()) * i64::from(b.to_bits()))
            }
            fn narrow(acc: i64) -> Self {
                Self::from_bits(saturate(round_shift(acc, Self::FRAC_NBITS)))
            }
            fn from_word(word: u32) -> Self {
                Self::from_bits(word as i32)
            }
            fn to_word(self) -> u32 {
                self.to_bits() as u32
            }
        }
    };
}

impl_fixed_scalar!(U16, "Q16.16");
impl_fixed_scalar!(U20, "Q12.20");
impl_fixed_scalar!(U24, "Q8.24");

/// `C = keep·C + scale·A·B` (`C = scale·A·B` when `keep` is `None`) by a
/// plain loop nest, each entry summed in [`Scalar::Wide`] and rounded once.
fn gemm_loops<S: Scalar>(
    a: Mat<'_, S>,
    b: Mat<'_, S>,
    c: MatMut<'_, S>,
    keep: Option<S>,
    scale: S,
) {
    debug_assert_eq!(a.cols, b.rows);
    debug_assert_eq!((a.rows, b.cols), (c.rows, c.cols));
    for i in 0..c.rows {
        let row = &mut c.data[i * c.cols..(i + 1) * c.cols];
        for (j, out) in row.iter_mut().enumerate() {
            let acc = (0..a.cols).fold(S::WIDE_ZERO, |acc, p| S::mac(acc, a.at(i, p), b.at(p, j)));
            let mut v = S::narrow(acc);
            if scale != S::ONE {
                v = scale.mul(v);
            }
            *out = match keep {
                None => v,
                Some(k) if k == S::ONE => out.add(v),
                Some(k) => k.mul(*out).add(v),
            };
        }
    }
}

/// f32's portable product: [`gemm_loops`], and for one row through a
/// row-major matrix (a sample through a weight matrix) a sweep of the
/// matrix's rows, contiguous, so that it vectorises.
fn sgemm_loops(
    a: Mat<'_, f32>,
    b: Mat<'_, f32>,
    c: MatMut<'_, f32>,
    keep: Option<f32>,
    scale: f32,
) {
    if a.rows == 1 && b.col_stride == 1 {
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
    gemm_loops(a, b, c, keep, scale)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f32, b: f32, tol: f32) -> bool {
        (a - b).abs() <= tol
    }

    #[test]
    fn fixed_exp_matches_float() {
        for i in 0..2000 {
            let x = -(i as f32) * 0.01;
            let got = Fixed::from_f32(x).exp_nonpos().to_f32();
            assert!(
                close(got, x.exp(), 4e-5),
                "exp({x}) = {got}, want {}",
                x.exp()
            );
            let got24 = FixedI32::<U24>::from_f32(x).exp_nonpos().to_f32();
            assert!(close(got24, x.exp(), 1e-6), "Q8.24 exp({x}) = {got24}");
        }
        assert_eq!(Fixed::from_f32(3.0).exp_nonpos(), Fixed::ONE);
        assert_eq!(Fixed::MIN.exp_nonpos(), Fixed::ZERO);
    }

    #[test]
    fn fixed_ln_matches_float() {
        for i in 0..3000 {
            let x = 1.0 + i as f32 * 0.37;
            let got = Fixed::from_f32(x).ln_ge1().to_f32();
            assert!(close(got, x.ln(), 4e-5), "ln({x}) = {got}, want {}", x.ln());
        }
        assert_eq!(Fixed::ONE.ln_ge1(), Fixed::ZERO);
    }

    #[test]
    fn fixed_saturates_instead_of_overflowing() {
        let big = Fixed::from_f32(30000.0);
        assert_eq!(big.add(big), Fixed::MAX);
        assert_eq!(big.mul(big), Fixed::MAX);
        assert_eq!(big.neg_sat().sub(big), Fixed::MIN);
        assert_eq!(Fixed::ONE.div(Fixed::ZERO), Fixed::MAX);
        assert_eq!(Fixed::from_f32(f32::NAN), Fixed::ZERO);
        assert_eq!(Fixed::from_f32(f32::INFINITY), Fixed::MAX);
    }

    trait NegSat {
        fn neg_sat(self) -> Self;
    }
    impl NegSat for Fixed {
        fn neg_sat(self) -> Self {
            Fixed::ZERO.sub(self)
        }
    }

    #[test]
    fn stochastic_rounding_is_unbiased() {
        // 0.3 LSB per product: nearest rounding loses it, dithering keeps it on average.
        let lsb = Fixed::from_bits(1);
        let a = Fixed::from_f32(0.3);
        assert_eq!(a.mul(lsb), Fixed::ZERO);
        let mut state = 0x1234_5678u32;
        let mut sum = 0i64;
        for _ in 0..100_000 {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            sum += i64::from(a.mul_dither(lsb, state).to_bits());
        }
        let mean = sum as f64 / 100_000.0;
        assert!((mean - 0.3).abs() < 0.01, "mean {mean}");
    }

    #[test]
    fn pixels_normalise_to_unit_interval() {
        assert_eq!(Fixed::from_pixel(0), Fixed::ZERO);
        assert_eq!(Fixed::from_pixel(255), Fixed::ONE);
        assert!(close(Fixed::from_pixel(128).to_f32(), 128.0 / 255.0, 2e-5));
        assert_eq!(f32::from_pixel(255), 1.0);
    }

    #[test]
    fn fixed_gemm_rounds_once() {
        let a = [Fixed::from_f32(0.5), Fixed::from_f32(-1.25)];
        let b = [Fixed::from_f32(2.0), Fixed::from_f32(4.0)];
        let mut c = [Fixed::ZERO];
        Fixed::gemm(
            Mat::new(&a, 1, 2),
            Mat::new(&b, 2, 1),
            MatMut::new(&mut c, 1, 1),
            None,
            Fixed::ONE,
        );
        assert_eq!(c[0].to_f32(), -4.0);
    }

    fn gemm_f32(a: Mat<'_, f32>, b: Mat<'_, f32>, c: MatMut<'_, f32>, accumulate: bool) {
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
        gemm_f32(
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
        gemm_f32(
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
            None,
            1.0,
        );
        assert_eq!(fast, slow);
        assert_eq!(fast, [13.5, 15.0, 16.5, 18.0]);
        gemm_f32(
            Mat::new(&x, 1, 3),
            Mat::new(&w, 3, 4),
            MatMut::new(&mut fast, 1, 4),
            true,
        );
        assert_eq!(fast, [27.0, 30.0, 33.0, 36.0]);
    }
}
