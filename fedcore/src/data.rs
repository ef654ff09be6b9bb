//! Datasets as the trainer sees them, and a zero-copy IDX parser.
//!
//! Training reads samples through the [`Dataset`] trait: a sample's values
//! (HWC) and a label. Values are raw bytes (pixels, normalised to `[0, 1]`
//! only inside the trainer: bytes are what a device keeps in flash, and what
//! keeps a host's copy of MNIST at 55 MB instead of 220 MB) or floats (a
//! table's features, taken as they are).
//!
//! [`Idx`] parses IDX files (MNIST's format) from bytes already in memory: the
//! shells do the file I/O and gzip, this module only checks and views.
//! [`Blob`] is a board's whole shard (training and test samples) as one byte
//! string with a checksum, the form firmware reads from flash or from a
//! memory region a loader filled.

use crate::Error;

/// A sample's values.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Values<'a> {
    /// Pixels, 0..=255, trained on as `p / 255`.
    Bytes(&'a [u8]),
    /// Features, trained on as they are.
    Floats(&'a [f32]),
}

impl<'a> Values<'a> {
    /// Number of values.
    pub fn len(&self) -> usize {
        match self {
            Values::Bytes(v) => v.len(),
            Values::Floats(v) => v.len(),
        }
    }

    /// True when there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The bytes, for byte samples.
    pub fn bytes(&self) -> Option<&'a [u8]> {
        match *self {
            Values::Bytes(v) => Some(v),
            Values::Floats(_) => None,
        }
    }
}

/// One training or test example.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample<'a> {
    /// Its values, HWC.
    pub values: Values<'a>,
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
            values: Values::Bytes(&self.images[index * self.pixels..(index + 1) * self.pixels]),
            label: self.labels[index],
        }
    }
}

/// Bytes of a [`Blob`]'s header.
pub const BLOB_HEADER: usize = 24;

/// A shard blob: a board's training and test samples as one byte string,
/// which a host tool writes and firmware reads in place (from flash, or a
/// memory region a loader filled) and checks at boot.
///
/// Layout, little-endian: the magic `FEDSHARD`; version (u16, 1); bytes per
/// sample (u16, e.g. 784); training samples (u32); test samples (u32); the
/// CRC-32 (ISO-HDLC, as the frames use) of everything after the header
/// (u32); then every label (u8), training first, then every sample's
/// pixels in the same order. Bytes after the data are ignored (a memory
/// region may be larger than the blob).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Blob<'a> {
    /// The training samples.
    pub train: LabelledImages<'a>,
    /// The test samples.
    pub test: LabelledImages<'a>,
}

impl<'a> Blob<'a> {
    /// Bytes of the header.
    pub const HEADER: usize = BLOB_HEADER;
    const MAGIC: &'static [u8; 8] = b"FEDSHARD";
    const VERSION: u16 = 1;
    const CRC: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISO_HDLC);

    /// The header of a blob of `train` and `test` samples of `sample_len`
    /// bytes whose data (labels, then pixels) is `data`.
    pub fn header(sample_len: u16, train: u32, test: u32, data: &[u8]) -> [u8; BLOB_HEADER] {
        let mut h = [0u8; BLOB_HEADER];
        h[..8].copy_from_slice(Self::MAGIC);
        h[8..10].copy_from_slice(&Self::VERSION.to_le_bytes());
        h[10..12].copy_from_slice(&sample_len.to_le_bytes());
        h[12..16].copy_from_slice(&train.to_le_bytes());
        h[16..20].copy_from_slice(&test.to_le_bytes());
        h[20..24].copy_from_slice(&Self::CRC.checksum(data).to_le_bytes());
        h
    }

    /// Views a blob, checking its header, its length and its checksum.
    pub fn parse(bytes: &'a [u8]) -> Result<Self, Error> {
        let header = bytes
            .get(..Self::HEADER)
            .ok_or(Error::BadShard("shorter than its header"))?;
        if &header[..8] != Self::MAGIC {
            return Err(Error::BadShard("no FEDSHARD magic: not a shard blob"));
        }
        let u16_at = |i: usize| u16::from_le_bytes([header[i], header[i + 1]]);
        let u32_at =
            |i: usize| u32::from_le_bytes([header[i], header[i + 1], header[i + 2], header[i + 3]]);
        if u16_at(8) != Self::VERSION {
            return Err(Error::BadShard("a version this firmware does not read"));
        }
        let sample_len = usize::from(u16_at(10));
        let (train, test) = (u32_at(12) as usize, u32_at(16) as usize);
        if sample_len == 0 {
            return Err(Error::BadShard("samples of 0 bytes"));
        }
        let samples = train
            .checked_add(test)
            .ok_or(Error::BadShard("more samples than a blob can hold"))?;
        let pixels = samples
            .checked_mul(sample_len)
            .ok_or(Error::BadShard("more samples than a blob can hold"))?;
        let data = samples
            .checked_add(pixels)
            .and_then(|len| bytes.get(Self::HEADER..Self::HEADER + len))
            .ok_or(Error::BadShard("shorter than its header says"))?;
        let computed = Self::CRC.checksum(data);
        let stored = u32_at(20);
        if computed != stored {
            return Err(Error::ShardChecksum { stored, computed });
        }
        let (labels, images) = data.split_at(samples);
        let view = |range: core::ops::Range<usize>| LabelledImages {
            images: &images[range.start * sample_len..range.end * sample_len],
            labels: &labels[range],
            pixels: sample_len,
        };
        Ok(Blob {
            train: view(0..train),
            test: view(train..samples),
        })
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
            values: Values::Bytes(&self.0[i].0),
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
                values: Values::Bytes(&[7, 7, 7, 7]),
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

    /// A blob of `train` and `test` two-byte samples: sample i is [i, 2i] with label i % 10.
    fn blob(train: u32, test: u32) -> std::vec::Vec<u8> {
        let n = (train + test) as usize;
        let mut data: std::vec::Vec<u8> = (0..n).map(|i| (i % 10) as u8).collect();
        for i in 0..n {
            data.extend_from_slice(&[i as u8, (2 * i) as u8]);
        }
        let mut bytes = Blob::header(2, train, test, &data).to_vec();
        bytes.extend_from_slice(&data);
        bytes
    }

    #[test]
    fn a_shard_blob_reads_back_as_its_training_and_test_samples() {
        let mut bytes = blob(3, 2);
        // A memory region larger than the blob: what follows is ignored.
        bytes.extend_from_slice(&[0xAA; 7]);
        let b = Blob::parse(&bytes).unwrap();
        assert_eq!((b.train.len(), b.test.len()), (3, 2));
        assert_eq!(
            b.train.sample(2),
            Sample {
                values: Values::Bytes(&[2, 4]),
                label: 2
            }
        );
        assert_eq!(
            b.test.sample(1),
            Sample {
                values: Values::Bytes(&[4, 8]),
                label: 4
            }
        );
    }

    #[test]
    fn a_damaged_or_cut_shard_blob_is_refused_before_any_sample_is_read() {
        let good = blob(3, 2);
        let mut flipped = good.clone();
        *flipped.last_mut().unwrap() ^= 1;
        assert!(matches!(
            Blob::parse(&flipped),
            Err(Error::ShardChecksum { .. })
        ));
        assert!(
            Blob::parse(&good[..good.len() - 1])
                .unwrap_err()
                .to_string()
                .contains("shorter than its header says")
        );
        let mut other = good.clone();
        other[0] = b'X';
        assert_eq!(
            Blob::parse(&other),
            Err(Error::BadShard("no FEDSHARD magic: not a shard blob"))
        );
        // Counts whose product overflows are refused, not multiplied.
        let mut huge = good.clone();
        huge[12..20].copy_from_slice(&[0xFF; 8]);
        assert!(Blob::parse(&huge).is_err());
        assert!(Blob::parse(&good[..10]).is_err());
    }
}
