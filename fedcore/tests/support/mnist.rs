//! MNIST from the repository's data/mnist, for fedcore's tests, benches and
//! examples (the hosts have their own loader with checksum verification).

// A test fixture: missing or corrupt data should stop the test loudly.
#![allow(dead_code, clippy::expect_used, clippy::panic)]

use std::io::Read;
use std::path::PathBuf;

use fedcore::data::{Idx, LabelledImages};

/// The four MNIST files, decompressed.
pub struct Mnist {
    files: [Vec<u8>; 4],
}

fn read_gz(name: &str) -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../data/mnist")
        .join(name);
    let file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(file)
        .read_to_end(&mut out)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    out
}

impl Mnist {
    /// Reads and decompresses all four files.
    pub fn load() -> Self {
        Mnist {
            files: [
                "train-images-idx3-ubyte.gz",
                "train-labels-idx1-ubyte.gz",
                "t10k-images-idx3-ubyte.gz",
                "t10k-labels-idx1-ubyte.gz",
            ]
            .map(read_gz),
        }
    }

    fn pair(&self, i: usize) -> LabelledImages<'_> {
        let images = Idx::parse(&self.files[i]).expect("images IDX");
        let labels = Idx::parse(&self.files[i + 1]).expect("labels IDX");
        LabelledImages::new(images, labels).expect("matching IDX pair")
    }

    /// The 60,000 training samples.
    pub fn train(&self) -> LabelledImages<'_> {
        self.pair(0)
    }

    /// The 10,000 test samples.
    pub fn test(&self) -> LabelledImages<'_> {
        self.pair(2)
    }
}
