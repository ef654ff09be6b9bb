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
    /// A folder of IDX files, or a `.npz` or `.csv` data file ([`crate::table`]).
    pub dir: PathBuf,
    /// A CSV's label column (default: the last).
    pub label_column: Option<String>,
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

impl Share {
    /// This share as a shard blob ([`fedcore::data::Blob`]): what a board
    /// reads from flash or a memory region instead of files. `None` if its
    /// samples are larger than a blob's 65,535 bytes or more than 2^32, or
    /// are floats (a board keeps bytes).
    pub fn blob(&self) -> Option<Vec<u8>> {
        use fedcore::data::{Blob, Dataset};
        let sets = [&self.train, &self.test];
        let sample_len = sets
            .iter()
            .find(|s| !s.is_empty())
            .map_or(0, |s| s.sample(0).values.len());
        let mut data = Vec::new();
        for set in sets {
            data.extend((0..set.len()).map(|i| set.sample(i).label));
        }
        for set in sets {
            for i in 0..set.len() {
                data.extend_from_slice(set.sample(i).values.bytes()?);
            }
        }
        let header = Blob::header(
            u16::try_from(sample_len).ok()?,
            u32::try_from(self.train.len()).ok()?,
            u32::try_from(self.test.len()).ok()?,
            &data,
        );
        let mut blob = header.to_vec();
        blob.append(&mut data);
        Some(blob)
    }
}

/// Why shares could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ShareError {
    /// The dataset could not be read.
    #[error(transparent)]
    Dataset(#[from] DatasetError),
    /// The data file could not be read.
    #[error(transparent)]
    Table(#[from] crate::table::TableError),
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
        let table = crate::table::is_table(&self.dir)
            .then(|| crate::table::load(&self.dir, self.label_column.as_deref()))
            .transpose()?;
        let labels = match &table {
            Some(t) => dataset::Labels {
                train: t.labels[..t.train].to_vec(),
                test: t.labels[t.train..].to_vec(),
            },
            None => dataset::load_labels(&self.dir)?,
        };
        let assignments = indices
            .map(|i| self.partition.assign(&labels, i, self.count, self.seed))
            .collect::<Result<Vec<_>, _>>()?;
        let wanted = assignments
            .iter()
            .flat_map(|a| a.train.iter().chain(&a.test).copied());
        let pool = Arc::new(match &table {
            Some(t) => dataset::Pool::from_table(t, wanted),
            None => dataset::load_pool(&self.dir, &labels, wanted)?,
        });
        Ok(assignments
            .into_iter()
            .map(|a| Share {
                train: Shard::new(Arc::clone(&pool), a.train),
                test: Shard::new(Arc::clone(&pool), a.test),
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use fedcore::data::{Blob, Dataset};

    use super::*;

    #[test]
    fn a_share_written_as_a_blob_reads_back_sample_for_sample() {
        let spec = ShareSpec {
            dir: PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../data/mnist")),
            label_column: None,
            partition: Partition::Iid,
            count: 200,
            seed: 0,
        };
        let share = spec.load(3..4).unwrap().remove(0);
        let bytes = share.blob().unwrap();
        let blob = Blob::parse(&bytes).unwrap();
        for (ours, theirs) in [(&share.train, &blob.train), (&share.test, &blob.test)] {
            assert_eq!(ours.len(), theirs.len());
            assert!((0..ours.len()).all(|i| ours.sample(i) == theirs.sample(i)));
        }
        assert_eq!(bytes.len(), Blob::HEADER + 350 * (1 + 784));
    }
}
