//! Datasets as the trainer sees them, and a zero-copy IDX parser.
//!
//! Training reads samples through the [`Dataset`] trait: raw `u8` pixels (HWC)
//! and a label, normalised to `[0, 1]` only inside the trainer. Pixels stay
//! bytes everywhere else, which is what a device keeps in flash and what keeps
//! a host's copy of MNIST at 55 MB instead of 220 MB.
//!
//! [`Idx`] parses IDX files (MNIST's format) from bytes already in memory: the
//! shells do the file I/O and gzip, this module only checks and views.

use crate::Error;

/// One training or test example.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sample<'a> {
    /// Pixels, HWC, 0..=255.
    pub pixels: &'a [u8],
    /// Class label.
    pub label: u8,
}

/// Indexed access to labelled samples.
pub trait Dataset {
    /// Number of samples.
    fn len(&self) -> usize;

    /// The sample at `index` (`index < len()`).
    fn sample(&self, index: usize) -> Sample<'_>;

    /// True when there are no samples.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A borrowed dataset is a dataset (a device borrows its data from the board).
impl<T: Dataset + ?Sized> Dataset for &T {
    fn len(&self) -> usize {
        (**self).len()
    }

    fn sample(&self, index: usize) -> Sample<'_> {
        (**self).sample(index)
    }
}

/// A parsed IDX file: its dimensions and its unsigned-byte payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Idx<'a> {
    dims: [u32; 3],
    rank: usize,
    data: &'a [u8],
}

impl<'a> Idx<'a> {
    /// Parses an uncompressed IDX file of unsigned bytes (type code 0x08), rank 1 to 3.
    pub fn parse(bytes: &'a [u8]) -> Result<Self, Error> {
        let header = bytes
            .get(..4)
            .ok_or(Error::BadIdx("shorter than its header"))?;
        if header[0] != 0 || header[1] != 0 {
            return Err(Error::BadIdx(
                "bad magic number (is the file still gzipped?)",
            ));
        }
        if header[2] != 0x08 {
            return Err(Error::BadIdx("values are not unsigned bytes"));
        }
        let rank = usize::from(header[3]);
        if !(1..=3).contains(&rank) {
            return Err(Error::BadIdx("rank must be 1, 2 or 3"));
        }
        let mut dims = [1u32; 3];
        for (i, d) in dims.iter_mut().take(rank).enumerate() {
            let b = bytes
                .get(4 + 4 * i..8 + 4 * i)
                .ok_or(Error::BadIdx("truncated header"))?;
            *d = u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
        }
        let len = dims
            .iter()
            .try_fold(1usize, |acc, &d| acc.checked_mul(d as usize));
        let start = 4 + 4 * rank;
        let data = len
            .and_then(|len| bytes.get(start..start.checked_add(len)?))
            .ok_or(Error::BadIdx("file is shorter than its dimensions say"))?;
        Ok(Idx { dims, rank, data })
    }

    /// Number of items (the first dimension).
    pub fn count(&self) -> usize {
        self.dims[0] as usize
    }

    /// Values per item (product of the other dimensions).
    pub fn item_len(&self) -> usize {
        self.dims[1..self.rank.max(1)]
            .iter()
            .map(|&d| d as usize)
            .product()
    }

    /// The dimensions.
    pub fn dims(&self) -> &[u32] {
        &self.dims[..self.rank]
    }

    /// The payload.
    pub fn data(&self) -> &'a [u8] {
        self.data
    }
}

/// Images and labels from a pair of IDX files, as a [`Dataset`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LabelledImages<'a> {
    images: &'a [u8],
    labels: &'a [u8],
    pixels: usize,
}

impl<'a> LabelledImages<'a> {
    /// Pairs an images file (rank 3) with a labels file (rank 1) of the same count.
    pub fn new(images: Idx<'a>, labels: Idx<'a>) -> Result<Self, Error> {
        if images.dims().len() != 3 || labels.dims().len() != 1 {
            return Err(Error::BadIdx(
                "expected an images file of rank 3 and a labels file of rank 1",
            ));
        }
        if images.count() != labels.count() {
            return Err(Error::BadIdx("images and labels differ in count"));
        }
        Ok(LabelledImages {
            images: images.data(),
            labels: labels.data(),
            pixels: images.item_len(),
        })
    }

    /// Pixels per image.
    pub fn pixels(&self) -> usize {
        self.pixels
    }

    /// The samples in `range` (clamped to those that exist).
    pub fn slice(&self, range: core::ops::Range<usize>) -> Self {
        let end = range.end.min(self.labels.len());
        let start = range.start.min(end);
        LabelledImages {
            images: &self.images[start * self.pixels..end * self.pixels],
            labels: &self.labels[start..end],
            pixels: self.pixels,
        }
    }
}

impl Dataset for LabelledImages<'_> {
    fn len(&self) -> usize {
        self.labels.len()
    }

    fn sample(&self, index: usize) -> Sample<'_> {
        Sample {
            pixels: &self.images[index * self.pixels..(index + 1) * self.pixels],
            label: self.labels[index],
        }
    }
}

/// Tiny in-memory datasets for unit tests: `(pixels, label)` pairs.
#[cfg(test)]
pub(crate) struct Samples<const P: usize>(pub std::vec::Vec<([u8; P], u8)>);

#[cfg(test)]
impl<const P: usize> Dataset for Samples<P> {
    fn len(&self) -> usize {
        self.0.len()
    }
    fn sample(&self, i: usize) -> Sample<'_> {
        Sample {
            pixels: &self.0[i].0,
            label: self.0[i].1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn idx(dims: &[u32], fill: u8) -> std::vec::Vec<u8> {
        let mut v = std::vec![0, 0, 8, dims.len() as u8];
        for d in dims {
            v.extend_from_slice(&d.to_be_bytes());
        }
        v.extend(core::iter::repeat_n(
            fill,
            dims.iter().product::<u32>() as usize,
        ));
        v
    }

    #[test]
    fn parses_images_and_labels() {
        let images = idx(&[3, 2, 2], 7);
        let labels = idx(&[3], 1);
        let set = LabelledImages::new(Idx::parse(&images).unwrap(), Idx::parse(&labels).unwrap())
            .unwrap();
        assert_eq!((set.len(), set.pixels()), (3, 4));
        assert_eq!(
            set.sample(2),
            Sample {
                pixels: &[7, 7, 7, 7],
                label: 1
            }
        );
        assert_eq!(set.slice(1..9).len(), 2);
        assert_eq!(set.slice(1..9).sample(0), set.sample(1));
        assert!(set.slice(5..9).is_empty());
    }

    #[test]
    fn refuses_malformed_files() {
        assert!(Idx::parse(&[0x1f, 0x8b, 8, 0]).is_err(), "gzip magic");
        assert!(
            Idx::parse(&[0, 0, 0x0d, 1, 0, 0, 0, 0]).is_err(),
            "float type"
        );
        let mut short = idx(&[3, 2, 2], 0);
        short.pop();
        assert_eq!(
            Idx::parse(&short),
            Err(Error::BadIdx("file is shorter than its dimensions say"))
        );
        assert!(
            Idx::parse(&[
                0, 0, 8, 3, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255
            ])
            .is_err()
        );
        let (images, labels) = (idx(&[3, 2, 2], 0), idx(&[2], 0));
        assert!(
            LabelledImages::new(Idx::parse(&images).unwrap(), Idx::parse(&labels).unwrap())
                .is_err()
        );
    }
}
