//! Loading the repository's MNIST copy, its failure modes, and partitions.

// Integration tests: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::sync::Arc;

use fedcore::data::Dataset;
use fedhost::dataset::Shard;
use fedhost::dataset::{self, DatasetError};
use fedhost::partition::Partition;

fn mnist_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../data/mnist")
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("fedhost-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn loads_and_verifies_mnist() {
    let data = dataset::load(&mnist_dir()).unwrap();
    assert_eq!(
        (data.train.len(), data.test.len(), data.train.pixels()),
        (60_000, 10_000, 784)
    );
    assert!(data.train.sample(0).label < 10);
}

#[test]
fn missing_and_corrupt_files_are_clear_errors() {
    let empty = temp_dir("empty");
    let err = dataset::load(&empty).unwrap_err();
    assert!(matches!(err, DatasetError::Missing { .. }), "{err}");
    assert!(err.to_string().contains("train-images-idx3-ubyte"), "{err}");

    let bad = temp_dir("badsum");
    for f in std::fs::read_dir(mnist_dir()).unwrap() {
        let f = f.unwrap().path();
        std::fs::copy(&f, bad.join(f.file_name().unwrap())).unwrap();
    }
    let sums = std::fs::read_to_string(bad.join("SHA256SUMS")).unwrap();
    let tampered = sums.replacen(|c: char| c.is_ascii_hexdigit(), "0", 1);
    assert_ne!(sums, tampered);
    std::fs::write(bad.join("SHA256SUMS"), tampered).unwrap();
    let err = dataset::load(&bad).unwrap_err();
    assert!(matches!(err, DatasetError::Checksum { .. }), "{err}");
    assert!(err.to_string().contains("checksum mismatch"), "{err}");
    std::fs::remove_dir_all(&empty).unwrap();
    std::fs::remove_dir_all(&bad).unwrap();
}

#[test]
fn a_pool_holds_just_the_wanted_samples() {
    let dir = mnist_dir();
    let full = dataset::load(&dir).unwrap();
    let labels = dataset::load_labels(&dir).unwrap();
    assert_eq!((labels.train.len(), labels.test.len()), (60_000, 10_000));
    let wanted = [5u32, 59_999, 60_000, 69_999, 123];
    let pool = Arc::new(dataset::load_pool(&dir, &labels, wanted).unwrap());
    assert_eq!(pool.len(), 5);
    let shard = Shard::new(pool, wanted.to_vec());
    assert_eq!(shard.sample(0), full.train.sample(5));
    assert_eq!(shard.sample(1), full.train.sample(59_999));
    assert_eq!(shard.sample(2), full.test.sample(0));
    assert_eq!(shard.sample(3), full.test.sample(9_999));
    assert_eq!(shard.sample(4).label, labels.train[123]);
}

#[test]
fn iid_and_dirichlet_shards_are_disjoint_and_cover_everything() {
    let labels = dataset::load_labels(&mnist_dir()).unwrap();
    for partition in ["iid", "dirichlet:0.3", "shards:2", "classes:2", "classes:3"]
        .map(|p| p.parse::<Partition>().unwrap())
    {
        let mut seen = vec![0u8; 70_000];
        for client in 0..5 {
            let shard = partition.assign(&labels, client, 5, 42).unwrap();
            for &i in &shard.train {
                assert!(i < 60_000);
                seen[i as usize] += 1;
            }
            for &i in &shard.test {
                assert!(i >= 60_000);
                seen[i as usize] += 1;
            }
            if partition == Partition::Iid {
                assert_eq!((shard.train.len(), shard.test.len()), (12_000, 2_000));
            }
        }
        let missing = seen.iter().filter(|&&n| n == 0).count();
        assert!(
            seen.iter().all(|&n| n <= 1),
            "{partition}: a sample went to two clients"
        );
        // Dirichlet rounds each class's cut points down: at most a few samples per class fall out.
        assert!(
            missing
                <= if let Partition::Dirichlet(_) = partition {
                    2 * 10 * 5
                } else {
                    0
                },
            "{partition}: {missing} unassigned"
        );
    }
}

#[test]
fn dirichlet_skews_labels_and_seed_splits_seventy_thirty() {
    let labels = dataset::load_labels(&mnist_dir()).unwrap();
    let skewed = "dirichlet:0.1"
        .parse::<Partition>()
        .unwrap()
        .assign(&labels, 0, 5, 7)
        .unwrap();
    let mut counts = [0usize; 10];
    for &i in &skewed.train {
        counts[usize::from(labels.train[i as usize])] += 1;
    }
    // IID would give every class about 10%; alpha 0.1 leaves several classes nearly absent.
    let rare = counts
        .iter()
        .filter(|&&c| c * 50 < skewed.train.len())
        .count();
    assert!(rare >= 3, "alpha 0.1 should skew the labels: {counts:?}");

    // Pathological splits: a client of classes:2 sees two classes; of
    // shards:2 among 100 (McMahan et al.'s 200 shards of 300), two
    // label-sorted shards, each of one class or straddling two.
    for (partition, clients, most) in [("classes:2", 5, 2), ("shards:2", 100, 4)] {
        let partition: Partition = partition.parse().unwrap();
        for client in 0..5 {
            let share = partition.assign(&labels, client, clients, 7).unwrap();
            let mut seen = [false; 10];
            for &i in &share.train {
                seen[usize::from(labels.train[i as usize])] = true;
            }
            let classes = seen.iter().filter(|&&s| s).count();
            assert!(
                (1..=most).contains(&classes),
                "{partition} client {client}: {classes} classes"
            );
        }
    }
    for bad in ["shards:0", "classes:x", "classes:"] {
        assert!(bad.parse::<Partition>().is_err(), "{bad}");
    }

    let seed = Partition::Seed.assign(&labels, 3, 5, 7).unwrap();
    assert_eq!((seed.train.len(), seed.test.len()), (49_000, 21_000));
    assert!("dirichlet:-1".parse::<Partition>().is_err());
    assert!("shards".parse::<Partition>().is_err());
}
