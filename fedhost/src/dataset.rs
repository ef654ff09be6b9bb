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

use fedcore::data::{Dataset, Idx, LabelledImages, Sample};
use sha2::{Digest, Sha256};

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
}

impl ImageData {
    /// Pairs two IDX files, checking that they are images and labels of one count.
    pub fn new(images: Vec<u8>, labels: Vec<u8>) -> Result<Self, fedcore::Error> {
        let (img, lab) = (Idx::parse(&images)?, Idx::parse(&labels)?);
        let pixels = LabelledImages::new(img, lab)?.pixels();
        let header = |idx: &Idx<'_>| 4 + 4 * idx.dims().len();
        let (image_start, label_start) = (header(&img), header(&lab));
        Ok(ImageData {
            images,
            labels,
            image_start,
            label_start,
            pixels,
        })
    }

    /// Pixels per image.
    pub fn pixels(&self) -> usize {
        self.pixels
    }
}

impl Dataset for ImageData {
    fn len(&self) -> usize {
        self.labels.len() - self.label_start
    }

    fn sample(&self, index: usize) -> Sample<'_> {
        let start = self.image_start + index * self.pixels;
        Sample {
            pixels: &self.images[start..start + self.pixels],
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
    let read = |name: &'static str| read_file(dir, name, &sums);
    let pair = |images: &'static str, labels: &'static str| -> Result<ImageData, DatasetError> {
        let (img, lab) = (read(images)?, read(labels)?);
        ImageData::new(img, lab).map_err(|source| DatasetError::Idx {
            path: dir.join(images),
            source,
        })
    };
    Ok(Splits {
        train: pair("train-images-idx3-ubyte", "train-labels-idx1-ubyte")?,
        test: pair("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")?,
    })
}

/// Loads only the test split (for evaluating a saved model, or server-side evaluation).
pub fn load_test(dir: &Path) -> Result<ImageData, DatasetError> {
    let sums = read_sums(dir)?;
    let (img, lab) = (
        read_file(dir, "t10k-images-idx3-ubyte", &sums)?,
        read_file(dir, "t10k-labels-idx1-ubyte", &sums)?,
    );
    ImageData::new(img, lab).map_err(|source| DatasetError::Idx {
        path: dir.join("t10k-images-idx3-ubyte"),
        source,
    })
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

fn read_file(
    dir: &Path,
    name: &'static str,
    sums: &[(String, String)],
) -> Result<Vec<u8>, DatasetError> {
    let gz = dir.join(format!("{name}.gz"));
    let raw = dir.join(name);
    let (path, compressed) = if gz.is_file() {
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
    let io = |source| DatasetError::Io {
        path: path.clone(),
        source,
    };
    let bytes = std::fs::read(&path).map_err(io)?;
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
    if !compressed {
        return Ok(bytes);
    }
    let mut out = Vec::with_capacity(bytes.len() * 4);
    flate2::read::GzDecoder::new(&bytes[..])
        .read_to_end(&mut out)
        .map_err(io)?;
    Ok(out)
}

/// A client's view of a dataset: a list of sample indices into the pool of a
/// dataset's train samples followed by its test samples.
#[derive(Debug, Clone)]
pub struct Shard {
    data: std::sync::Arc<Splits>,
    indices: Vec<u32>,
}

impl Shard {
    /// A shard of `indices` into the pool (train samples first, then test).
    pub fn new(data: std::sync::Arc<Splits>, indices: Vec<u32>) -> Self {
        Shard { data, indices }
    }

    /// The pool indices of the shard's samples.
    pub fn indices(&self) -> &[u32] {
        &self.indices
    }
}

impl Dataset for Shard {
    fn len(&self) -> usize {
        self.indices.len()
    }

    fn sample(&self, index: usize) -> Sample<'_> {
        let i = self.indices[index] as usize;
        match i.checked_sub(self.data.train.len()) {
            None => self.data.train.sample(i),
            Some(j) => self.data.test.sample(j),
        }
    }
}
