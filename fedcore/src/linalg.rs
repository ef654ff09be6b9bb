//! Strided matrix views and matrix multiplication.
//!
//! Layers express their heavy work as `C = keep·C + scale·A·B` over strided
//! views of flat buffers, so a transposed operand is just a view with swapped
//! strides and no copy. This module holds the views; the portable loop nest
//! is each scalar type's ([`crate::scalar::Scalar::gemm`]), the host's SGEMM
//! one of the backends' ([`crate::kernels`]).

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

    pub(crate) fn at(&self, i: usize, j: usize) -> S {
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
