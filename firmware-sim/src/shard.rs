//! Which share of the data a device holds: the options firmware-sim and
//! firmware-qemu take alike, and loading that share.

use std::path::PathBuf;

use anyhow::Context as _;
use fedhost::dataset::DEFAULT_DATA_DIR;
use fedhost::partition::Partition;
use fedhost::share::{Share, ShareSpec};

/// A device's share of the data, as its command line names it.
#[derive(clap::Args, Debug, Clone)]
pub struct ShardArgs {
    /// Directory of the IDX files (gzip or raw), checked against its SHA256SUMS.
    #[arg(long, default_value = DEFAULT_DATA_DIR)]
    pub data_dir: PathBuf,
    /// This device's share of the data: index/count, e.g. 4/6.
    #[arg(long, value_parser = parse_shard, default_value = "0/1")]
    pub shard: (usize, usize),
    /// How to split the data: iid, dirichlet:<alpha>, shards:<S>, classes:<C>, or seed.
    #[arg(long, default_value = "iid")]
    pub partition: Partition,
    /// Seed of the partition (the same for every participant of a federation;
    /// firmware-sim also seeds its line noise with it).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

impl ShardArgs {
    /// This device's index among the shares.
    pub fn index(&self) -> usize {
        self.shard.0
    }

    /// Loads the share.
    pub fn load(&self) -> anyhow::Result<Share> {
        let (index, count) = self.shard;
        let spec = ShareSpec {
            dir: self.data_dir.clone(),
            label_column: None,
            partition: self.partition,
            count,
            seed: self.seed,
        };
        let mut shares = spec.load(index..index + 1)?;
        shares.pop().context("the share came back empty")
    }
}

/// The blob of `data` written to `path`, for a board to read in place.
pub fn write_blob(data: &Share, path: &std::path::Path) -> anyhow::Result<usize> {
    let blob = data.blob().context(
        "this shard does not fit a blob (float features, samples over 65,535 bytes or over 2^32 of them): a board keeps byte samples",
    )?;
    std::fs::write(path, &blob).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(blob.len())
}

fn parse_shard(s: &str) -> Result<(usize, usize), String> {
    let bad = || format!("expected index/count with index < count, e.g. 4/6, got {s:?}");
    let (i, n) = s.split_once('/').ok_or_else(bad)?;
    let (i, n) = (
        i.trim().parse::<usize>().map_err(|_| bad())?,
        n.trim().parse::<usize>().map_err(|_| bad())?,
    );
    if i >= n {
        return Err(bad());
    }
    Ok((i, n))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shard_is_an_index_below_its_count() {
        assert_eq!(parse_shard("4/6"), Ok((4, 6)));
        for bad in ["6/6", "4", "a/6", "-1/6", "4/"] {
            assert!(parse_shard(bad).is_err(), "{bad}");
        }
    }
}
