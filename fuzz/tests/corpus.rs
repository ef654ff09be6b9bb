//! Every seed, every input kept in `fuzz/corpus/<target>/` (what the fuzz
//! campaigns of `bench/fuzz.sh` found interesting) and every input that once
//! crashed a target, kept in `fuzz/regressions/<target>/` (the corpus is
//! minimised by coverage, which would drop them), replayed through its target
//! on every `cargo test`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

#[test]
fn every_seed_and_corpus_input_passes_its_target() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let replay = |dir: &Path, target: fedfuzz::Target| {
        let mut replayed = 0;
        if let Ok(entries) = std::fs::read_dir(dir) {
            for entry in entries {
                target(&std::fs::read(entry.unwrap().path()).unwrap());
                replayed += 1;
            }
        }
        replayed
    };
    for &(name, target) in fedfuzz::TARGETS {
        let seeds = fedfuzz::seeds(name);
        assert!(!seeds.is_empty(), "{name} has no seeds");
        for seed in &seeds {
            target(seed);
        }
        let corpus = root.join("corpus").join(name);
        assert!(
            replay(&corpus, target) > 0,
            "{} is empty: run bench/fuzz.sh",
            corpus.display()
        );
        replay(&root.join("regressions").join(name), target);
    }
}

#[test]
fn the_seeds_reach_past_the_first_checks() {
    // A seed that failed to parse would only test the refusal path: each
    // target's seeds must be accepted by what they feed.
    use fedcore::protocol::Message;
    for seed in fedfuzz::seeds("message") {
        assert!(postcard::from_bytes::<Message<'_>>(&seed).is_ok());
    }
    let idx = &fedfuzz::seeds("idx")[0];
    let split = usize::from(u16::from_le_bytes([idx[0], idx[1]]));
    let (images, labels) = idx[2..].split_at(split);
    assert!(fedhost::dataset::ImageData::new(images.to_vec(), labels.to_vec()).is_ok());
}
