//! IDX datasets from a directory: MNIST, or anything of the same shape.
//!
//! Reads `train-images-idx3-ubyte`, `train-labels-idx1-ubyte`,
//! `t10k-images-idx3-ubyte` and `t10k-labels-idx1-ubyte`, each gzipped (`.gz`)
//! or raw, and checks every file listed in the directory's `SHA256SUMS`
//! against its checksum before using it. Pixels stay bytes; one [`ImageData`]
//! is shared (behind an `Arc`) by every virtual client of a process.

use std::fmt::Write as _;
use std::io::Read;
use std::path::{Path, PathBuf};

use fedcore::data::{Dataset, Idx, LabelledImages, Sample, Values};

use crate::table::{Store, Table};
use sha2::{Digest, Sha256};

/// Where a fresh clone keeps MNIST, relative to the workspace root.
pub const DEFAULT_DATA_DIR: &str = "data/mnist";

/// Why a dataset could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum DatasetError {
    /// A file is missing.
    #[error("{} not found (expected {name}[.gz] in {}: the MNIST IDX files)", path.display(), dir.display())]
    Missing {
        /// The file looked for (without .gz).
        path: PathBuf,
        /// Its directory.
        dir: PathBuf,
        /// Its base name.
        name: &'static str,
    },
    /// A file could not be read or decompressed.
    #[error("cannot read {}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A file does not match its SHA256SUMS entry.
    #[error("checksum mismatch for {}: SHA256SUMS says {expected}, the file hashes to {actual}; the file is corrupt or was replaced", path.display())]
    Checksum {
        /// The file.
        path: PathBuf,
        /// The listed hash.
        expected: String,
        /// The file's hash.
        actual: String,
    },
    /// A file is not valid IDX, or images and labels do not match.
    #[error("{}: {source}", path.display())]
    Idx {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: fedcore::Error,
    },
}

/// One split (train or test): the images and labels IDX files, decompressed.
#[derive(Debug, Clone)]
pub struct ImageData {
    images: Vec<u8>,
    labels: Vec<u8>,
    /// Where pixels and labels start (after the IDX headers).
    image_start: usize,
    label_start: usize,
    pixels: usize,
    /// Samples, as the headers say (a file may run on past its data).
    count: usize,
}

impl ImageData {
    /// Pairs two IDX files, checking that they are images and labels of one count.
    pub fn new(images: Vec<u8>, labels: Vec<u8>) -> Result<Self, fedcore::Error> {
        let (img, lab) = (Idx::parse(&images)?, Idx::parse(&labels)?);
        let pixels = LabelledImages::new(img, lab)?.pixels();
        let header = |idx: &Idx<'_>| 4 + 4 * idx.dims().len();
        let (image_start, label_start) = (header(&img), header(&lab));
        let count = lab.count();
        Ok(ImageData {
            images,
            labels,
            image_start,
            label_start,
            pixels,
            count,
        })
    }

    /// Pixels per image.
    pub fn pixels(&self) -> usize {
        self.pixels
    }
}

impl Dataset for ImageData {
    fn len(&self) -> usize {
        self.count
    }

    fn sample(&self, index: usize) -> Sample<'_> {
        let start = self.image_start + index * self.pixels;
        Sample {
            values: Values::Bytes(&self.images[start..start + self.pixels]),
            label: self.labels[self.label_start + index],
        }
    }
}

/// A dataset's train and test splits.
#[derive(Debug, Clone)]
pub struct Splits {
    /// The training split.
    pub train: ImageData,
    /// The test split.
    pub test: ImageData,
}

/// Loads the four IDX files from `dir`, verifying SHA256SUMS where present.
pub fn load(dir: &Path) -> Result<Splits, DatasetError> {
    let sums = read_sums(dir)?;
    Ok(Splits {
        train: load_pair(dir, &sums, TRAIN_IMAGES, TRAIN_LABELS)?,
        test: load_pair(dir, &sums, TEST_IMAGES, TEST_LABELS)?,
    })
}

/// Loads only the test split (for evaluating a saved model, or server-side evaluation).
pub fn load_test(dir: &Path) -> Result<ImageData, DatasetError> {
    load_pair(dir, &read_sums(dir)?, TEST_IMAGES, TEST_LABELS)
}

fn load_pair(
    dir: &Path,
    sums: &[(String, String)],
    images: &'static str,
    labels: &'static str,
) -> Result<ImageData, DatasetError> {
    let (img, lab) = (
        decompress(dir, images, sums)?,
        decompress(dir, labels, sums)?,
    );
    ImageData::new(img, lab).map_err(|source| DatasetError::Idx {
        path: dir.join(images),
        source,
    })
}

const TRAIN_IMAGES: &str = "train-images-idx3-ubyte";
const TRAIN_LABELS: &str = "train-labels-idx1-ubyte";
const TEST_IMAGES: &str = "t10k-images-idx3-ubyte";
const TEST_LABELS: &str = "t10k-labels-idx1-ubyte";

/// The labels of every sample: what partitions are computed from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Labels {
    /// Training labels, by training index.
    pub train: Vec<u8>,
    /// Test labels, by test index.
    pub test: Vec<u8>,
}

impl Labels {
    /// Pool size: training samples, then test samples.
    pub fn pool_len(&self) -> usize {
        self.train.len() + self.test.len()
    }
}

/// Loads just the two label files (70 KB for MNIST).
pub fn load_labels(dir: &Path) -> Result<Labels, DatasetError> {
    let sums = read_sums(dir)?;
    let labels = |name: &'static str| -> Result<Vec<u8>, DatasetError> {
        let bytes = decompress(dir, name, &sums)?;
        let idx = Idx::parse(&bytes).map_err(|source| DatasetError::Idx {
            path: dir.join(name),
            source,
        })?;
        Ok(idx.data().to_vec())
    };
    Ok(Labels {
        train: labels(TRAIN_LABELS)?,
        test: labels(TEST_LABELS)?,
    })
}

/// The samples one process needs, addressed by pool index (training samples
/// first, then test samples), loaded without ever holding the whole dataset:
/// images are decompressed as a stream and only wanted ones are kept. A client
/// with an IID fifth of MNIST keeps 11 MB instead of 55 MB.
#[derive(Debug, Clone)]
pub struct Pool {
    /// Values a sample.
    pixels: usize,
    values: Store,
    labels: Vec<u8>,
    /// Pool index -> position in `values`/`labels`, `u32::MAX` when not loaded.
    slot: Vec<u32>,
}

impl Pool {
    /// The loaded sample at pool index `index` (which must have been wanted).
    pub fn sample(&self, index: u32) -> Sample<'_> {
        let k = self.slot[index as usize] as usize;
        let span = k * self.pixels..(k + 1) * self.pixels;
        Sample {
            values: match &self.values {
                Store::Bytes(b) => Values::Bytes(&b[span]),
                Store::Floats(f) => Values::Floats(&f[span]),
            },
            label: self.labels[k],
        }
    }

    /// The samples of `wanted` pool indices of a table (training samples
    /// first, then test samples, as [`Table::labels`] orders them).
    pub fn from_table(table: &Table, wanted: impl IntoIterator<Item = u32>) -> Self {
        let mut slot = vec![u32::MAX; table.labels.len()];
        let w = table.width;
        let mut pool = Pool {
            pixels: w,
            values: match table.values {
                Store::Bytes(_) => Store::Bytes(Vec::new()),
                Store::Floats(_) => Store::Floats(Vec::new()),
            },
            labels: Vec::new(),
            slot: Vec::new(),
        };
        for i in wanted {
            let Some(s) = slot.get_mut(i as usize).filter(|s| **s == u32::MAX) else {
                continue;
            };
            *s = pool.labels.len() as u32;
            let i = i as usize;
            pool.labels.push(table.labels[i]);
            match (&mut pool.values, &table.values) {
                (Store::Bytes(to), Store::Bytes(from)) => {
                    to.extend_from_slice(&from[i * w..(i + 1) * w])
                }
                (Store::Floats(to), Store::Floats(from)) => {
                    to.extend_from_slice(&from[i * w..(i + 1) * w])
                }
                _ => {}
            }
        }
        pool.slot = slot;
        pool
    }

    /// Number of samples held.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// True when no sample is held.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }
}

/// Loads the samples of `wanted` pool indices from `dir`.
pub fn load_pool(
    dir: &Path,
    labels: &Labels,
    wanted: impl IntoIterator<Item = u32>,
) -> Result<Pool, DatasetError> {
    let sums = read_sums(dir)?;
    let mut slot = vec![u32::MAX; labels.pool_len()];
    for i in wanted {
        if let Some(s) = slot.get_mut(i as usize) {
            *s = 0;
        }
    }
    let mut pool = Pool {
        pixels: 0,
        values: Store::Bytes(Vec::new()),
        labels: Vec::new(),
        slot,
    };
    let mut images = Vec::new();
    let n_train = labels.train.len();
    for (name, offset, set_labels) in [
        (TRAIN_IMAGES, 0, &labels.train),
        (TEST_IMAGES, n_train, &labels.test),
    ] {
        let path = dir.join(name);
        let compressed = read_checked(dir, name, &sums)?;
        let mut reader = open_stream(&compressed);
        let io = |source| DatasetError::Io {
            path: path.clone(),
            source,
        };
        let mut header = [0u8; 16];
        reader.read_exact(&mut header).map_err(io)?;
        let count = u32::from_be_bytes([header[4], header[5], header[6], header[7]]) as usize;
        if header[..4] != [0, 0, 8, 3] || count != set_labels.len() {
            let source =
                fedcore::Error::BadIdx("images file is not rank-3 bytes matching its labels");
            return Err(DatasetError::Idx { path, source });
        }
        let dim = |k: usize| {
            u32::from_be_bytes([header[k], header[k + 1], header[k + 2], header[k + 3]]) as usize
        };
        pool.pixels = dim(8) * dim(12);
        let mut image = vec![0u8; pool.pixels];
        for (i, &label) in set_labels.iter().enumerate() {
            reader.read_exact(&mut image).map_err(io)?;
            let s = &mut pool.slot[offset + i];
            if *s != u32::MAX {
                *s = pool.labels.len() as u32;
                images.extend_from_slice(&image);
                pool.labels.push(label);
            }
        }
    }
    pool.values = Store::Bytes(images);
    Ok(pool)
}

/// `(hash, file name)` pairs from `dir/SHA256SUMS`, empty when there is none.
fn read_sums(dir: &Path) -> Result<Vec<(String, String)>, DatasetError> {
    let path = dir.join("SHA256SUMS");
    match std::fs::read_to_string(&path) {
        Ok(text) => Ok(text
            .lines()
            .filter_map(|line| {
                let (hash, name) = line.split_once(char::is_whitespace)?;
                Some((
                    hash.to_ascii_lowercase(),
                    name.trim().trim_start_matches('*').to_string(),
                ))
            })
            .collect()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(source) => Err(DatasetError::Io { path, source }),
    }
}

/// A file as stored (gzipped or raw), checked against SHA256SUMS.
struct Stored {
    path: PathBuf,
    bytes: Vec<u8>,
    gzipped: bool,
}

fn read_checked(
    dir: &Path,
    name: &'static str,
    sums: &[(String, String)],
) -> Result<Stored, DatasetError> {
    let gz = dir.join(format!("{name}.gz"));
    let raw = dir.join(name);
    let (path, gzipped) = if gz.is_file() {
        (gz, true)
    } else if raw.is_file() {
        (raw, false)
    } else {
        return Err(DatasetError::Missing {
            path: raw,
            dir: dir.to_path_buf(),
            name,
        });
    };
    let bytes = std::fs::read(&path).map_err(|source| DatasetError::Io {
        path: path.clone(),
        source,
    })?;
    let file_name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default();
    if let Some((expected, _)) = sums.iter().find(|(_, n)| n == file_name) {
        let actual = Sha256::digest(&bytes)
            .iter()
            .fold(String::new(), |mut s, b| {
                let _ = write!(s, "{b:02x}");
                s
            });
        if &actual != expected {
            return Err(DatasetError::Checksum {
                path,
                expected: expected.clone(),
                actual,
            });
        }
    }
    Ok(Stored {
        path,
        bytes,
        gzipped,
    })
}

fn open_stream(stored: &Stored) -> Box<dyn Read + '_> {
    if stored.gzipped {
        Box::new(flate2::read::GzDecoder::new(&stored.bytes[..]))
    } else {
        Box::new(&stored.bytes[..])
    }
}

/// A whole file, checked and decompressed.
fn decompress(
    dir: &Path,
    name: &'static str,
    sums: &[(String, String)],
) -> Result<Vec<u8>, DatasetError> {
    let stored = read_checked(dir, name, sums)?;
    if !stored.gzipped {
        return Ok(stored.bytes);
    }
    let mut out = Vec::with_capacity(stored.bytes.len() * 4);
    open_stream(&stored)
        .read_to_end(&mut out)
        .map_err(|source| DatasetError::Io {
            path: stored.path.clone(),
            source,
        })?;
    Ok(out)
}

/// A client's view of its samples: pool indices into a [`Pool`].
#[derive(Debug, Clone)]
pub struct Shard {
    pool: std::sync::Arc<Pool>,
    indices: Vec<u32>,
}

impl Shard {
    /// A shard of `indices` (pool indices, all loaded in `pool`).
    pub fn new(pool: std::sync::Arc<Pool>, indices: Vec<u32>) -> Self {
        Shard { pool, indices }
    }

    /// The pool indices of the shard's samples.
    pub fn indices(&self) -> &[u32] {
        &self.indices
    }

    /// Keeps only the first `count` samples (a board whose flash holds fewer).
    pub fn truncate(&mut self, count: usize) {
        self.indices.truncate(count);
    }
}

impl Dataset for Shard {
    fn len(&self) -> usize {
        self.indices.len()
    }

    fn sample(&self, index: usize) -> Sample<'_> {
        self.pool.sample(self.indices[index])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An IDX file of unsigned bytes: magic, dimensions, data.
    fn idx(dims: &[u32], data: &[u8]) -> Vec<u8> {
        let mut file = vec![0, 0, 0x08, dims.len() as u8];
        for d in dims {
            file.extend(d.to_be_bytes());
        }
        file.extend_from_slice(data);
        file
    }

    #[test]
    fn a_file_that_runs_past_its_data_has_the_count_its_header_says() {
        // Found by fuzzing (fuzz/corpus/idx): zero images, and a labels file
        // with three bytes past its header; the length came from the file's
        // size, so sample(0) indexed pixels that did not exist and panicked.
        let images = idx(&[0, 0x0003_0209, 0x0909_0909], &[]);
        let labels = idx(&[0], &[0, 8, 0]);
        let data = ImageData::new(images, labels).unwrap();
        assert_eq!(data.len(), 0);
        // And with samples, every one is readable.
        let images = idx(&[2, 2, 2], &[1, 2, 3, 4, 5, 6, 7, 8, 99, 99]);
        let labels = idx(&[2], &[3, 4, 9, 9, 9]);
        let data = ImageData::new(images, labels).unwrap();
        assert_eq!(data.len(), 2);
        assert_eq!(data.sample(1).values, Values::Bytes(&[5, 6, 7, 8]));
        assert_eq!(data.sample(1).label, 4);
    }
}
