//! A participant's share of a dataset, loaded once: its training and test samples.
//!
//! Shares are computed from the labels alone (so every participant of a
//! federation, given the same partition, count and seed, gets a disjoint
//! share), then only the wanted images are read. Several shares loaded
//! together (a host's virtual clients) share one pool of images.

use std::ops::Range;
use std::path::PathBuf;
use std::sync::Arc;

use crate::dataset::{self, DatasetError, Shard};
use crate::partition::{BadAlpha, Partition};

/// Which shares of which dataset.
#[derive(Debug, Clone)]
pub struct ShareSpec {
    /// Directory of the IDX files.
    pub dir: PathBuf,
    /// How the data is split.
    pub partition: Partition,
    /// How many participants share the data.
    pub count: usize,
    /// The partition's seed (the same for the whole federation).
    pub seed: u64,
}

/// One participant's samples.
#[derive(Debug, Clone)]
pub struct Share {
    /// Samples to train on.
    pub train: Shard,
    /// Samples to evaluate on.
    pub test: Shard,
}

/// Why shares could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ShareError {
    /// The dataset could not be read.
    #[error(transparent)]
    Dataset(#[from] DatasetError),
    /// The partition is invalid.
    #[error(transparent)]
    Partition(#[from] BadAlpha),
    /// The shares asked for are not among the `count`.
    #[error("shares {start}..{end} reach past the {count} participants sharing the data")]
    Range {
        /// First share asked for.
        start: usize,
        /// One past the last.
        end: usize,
        /// Participants sharing the data.
        count: usize,
    },
}

impl ShareSpec {
    /// Loads shares `indices` (of [`ShareSpec::count`]) with one pool of images between them.
    pub fn load(&self, indices: Range<usize>) -> Result<Vec<Share>, ShareError> {
        if indices.end > self.count || indices.is_empty() {
            return Err(ShareError::Range {
                start: indices.start,
                end: indices.end,
                count: self.count,
            });
        }
        let labels = dataset::load_labels(&self.dir)?;
        let assignments = indices
            .map(|i| self.partition.assign(&labels, i, self.count, self.seed))
            .collect::<Result<Vec<_>, _>>()?;
        let wanted = assignments
            .iter()
            .flat_map(|a| a.train.iter().chain(&a.test).copied());
        let pool = Arc::new(dataset::load_pool(&self.dir, &labels, wanted)?);
        Ok(assignments
            .into_iter()
            .map(|a| Share {
                train: Shard::new(Arc::clone(&pool), a.train),
                test: Shard::new(Arc::clone(&pool), a.test),
            })
            .collect())
    }
}
