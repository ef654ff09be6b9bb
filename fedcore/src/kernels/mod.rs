//! The seam between the model's passes and the arithmetic they run on.
//!
//! Forward and backward ([`crate::model::network`]) are written once; what
//! they hand to a backend is the heavy arithmetic: matrix products, and the
//! fused convolution block (a one-channel 3x3 convolution with its ReLU and
//! 2x2 max pooling, computed window by window so that the convolution's output
//! never exists). A backend is a type implementing [`Kernels`]:
//!
//! - [`Portable`]: plain loops over any [`Scalar`], f32 or fixed point, with no
//!   SIMD, allocation or std: what devices run, and the reference every other
//!   backend is tested against, operation by operation;
//! - `Host` (in [`host`], the crate's only std-only module): f32 on the `gemm`
//!   crate's SGEMM and SIMD fused kernels on `pulp`, with each SGD step folded
//!   into the product that computes its gradient.
//!
//! A trainer is generic over its backend (`Trainer<S, B, K>`), so which
//! kernels run is a type, chosen by the caller, never a feature flag.

#[cfg(feature = "std")]
pub mod host;
mod portable;

pub use portable::Portable;

use crate::linalg::{Mat, MatMut};
use crate::scalar::Scalar;

/// The arithmetic a backend provides for scalar type `S`.
pub trait Kernels<S: Scalar>: Copy + core::fmt::Debug + Default + Send + Sync + 'static {
    /// Short name for reports.
    const NAME: &'static str;
    /// Whether backward folds each layer's SGD step into the product that
    /// computes its weight gradient, so that no gradient buffer exists. The
    /// portable backend keeps gradients instead: fixed point rounds each
    /// step's products stochastically, which a folded product cannot.
    const FOLDS_STEP: bool;

    /// `C = keep·C + scale·A·B`, or `C = scale·A·B` when `keep` is `None`.
    fn gemm(a: Mat<'_, S>, b: Mat<'_, S>, c: MatMut<'_, S>, keep: Option<S>, scale: S);

    /// Forward through a fused block: pooled, rectified outputs `y` (`batch`
    /// samples, HWC) from one-channel images `x`, and into `winners`
    /// ([`ConvPool::winner_words`] words a sample, stored through
    /// [`Scalar::from_word`]) which position of each window held its maximum.
    fn conv_relu_pool(
        shape: ConvPool,
        x: &[S],
        kernel_bias: (&[S], &[S]),
        y_winners: (&mut [S], &mut [S]),
        batch: usize,
    );

    /// A fused block's summed weight gradients (`9 x filters`, then `filters`
    /// for the bias) into `grads`, from its inputs `x`, what forward kept (`y`
    /// and `winners`), and the outputs' gradients `dy`.
    fn conv_relu_pool_grads(
        shape: ConvPool,
        x: &[S],
        y_winners: (&[S], &[S]),
        dy: &[S],
        grads: &mut [S],
        batch: usize,
    );
}

/// A 3x3 convolution (valid, stride 1) over a one-channel image, then ReLU,
/// then 2x2 max pooling (odd edges dropped). Images are row-major; outputs HWC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvPool {
    /// Input rows.
    pub height: usize,
    /// Input columns.
    pub width: usize,
    /// Filters (output channels).
    pub filters: usize,
}

/// Pooling windows whose two-bit winners share a word.
pub const WINDOWS_PER_WORD: usize = 16;

impl ConvPool {
    /// Pooled output rows and columns.
    pub fn pooled(&self) -> (usize, usize) {
        (
            self.height.saturating_sub(2) / 2,
            self.width.saturating_sub(2) / 2,
        )
    }

    /// Pooled values a sample.
    pub fn output_len(&self) -> usize {
        let (ph, pw) = self.pooled();
        ph * pw * self.filters
    }

    /// Pixels a sample.
    pub fn input_len(&self) -> usize {
        self.height * self.width
    }

    /// Words a sample's winners take: two bits a pooled value, the windows of
    /// each filter packed [`WINDOWS_PER_WORD`] to a word, words filter-major
    /// within each group of windows (so a vector of filters is one load).
    pub fn winner_words(&self) -> usize {
        let (ph, pw) = self.pooled();
        (ph * pw).div_ceil(WINDOWS_PER_WORD) * self.filters
    }

    /// Where window `w`'s winners sit: the first word of its row (one word a
    /// filter follows) and the bit shift.
    pub fn winner_slot(&self, w: usize) -> (usize, u32) {
        (
            (w / WINDOWS_PER_WORD) * self.filters,
            2 * (w % WINDOWS_PER_WORD) as u32,
        )
    }
}
