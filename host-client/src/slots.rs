//! Machine-wide training slots: at most N trainers, of any processes on this
//! machine, run at once.
//!
//! The reference runs five client processes; on a two-core machine the kernel
//! then time-slices five trainers on two cores every few milliseconds, and each
//! slice starts with caches the others have emptied: measured on a 2-core EPYC
//! (AVX-512), five CNN clients trained 21k samples/s together where two managed
//! 27.5k (`bench/federation.sh --rounds 5 --clients 5|2`). A slot
//! is a lock file in a folder that every cooperating process names
//! (`--train-slots N --slot-dir DIR`); a trainer holds one (an exclusive
//! `flock`, which the kernel drops if the process dies) for a turn of a few
//! thousand samples, then passes it on, so N cores run N trainers for turns
//! long enough to keep their caches, and the others wait. Same machine, five
//! CNN clients, fit phase per round, medians of three runs side by side: 2.40 s
//! without slots, 2.21 s with two. Turns of 2048 samples gave 2.6 s, whole fits
//! as one turn 2.4 s (cores idle while the last client trains alone), 4096 the
//! least there. On a 2-core Zen 4 EPYC (AVX-512), 10-round runs alternated:
//! 6000 samples (half a reference client's 12,000, so ten turns share two
//! slots evenly) 1.87-2.07 s a round, 4096 1.97-2.19 s (medians of five, 1.95
//! and 2.04 s), whole fits 2.16-2.23 s.
//!
//! Turns pay only where sharing a core costs a trainer its cache: a trainer
//! whose working set (parameters, momentum, a batch's activations and scratch,
//! [`fedcore::train::memory`]) is under 4 MiB trains without them.
//! Measured on a 2-core AMD EPYC (Zen 5, AVX-512, 1 MiB L2 a core, 32 MiB L3),
//! five clients, per-fit thread CPU time and round medians: the MLP 784-128-10
//! (0.9 MiB) spent the same CPU on a fit with or without turns (40-48 ms),
//! so turns only added waiting (rounds 0.144-0.171 s with two slots, 0.123-0.140 s
//! without); the reference CNN (6.2 MiB) spent 20% less CPU with them.
//!
//! Waiting polls every millisecond (cheap next to a turn of ~100 ms) and is
//! bounded: after [`PATIENCE`] without a free slot a trainer runs anyway, so a
//! stuck process holding slots can slow the others down but never stop them.

use std::fs::{File, OpenOptions, TryLockError};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How long a trainer waits for a slot before it runs without one.
pub const PATIENCE: Duration = Duration::from_secs(10);
/// Samples a trainer trains before it passes its slot on (about 0.3 s of the
/// reference CNN on one core).
pub const TURN_SAMPLES: usize = 6000;
/// Working sets below this train without turns: five such trainers keep
/// their data in the cache they share (see the module's figures).
const TURN_MIN_BYTES: usize = 4 << 20;
/// How often a waiting trainer looks for a free slot.
const POLL: Duration = Duration::from_millis(1);

/// Where the slots are and how many there are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotConfig {
    /// The folder holding the lock files (created if missing).
    pub dir: PathBuf,
    /// Trainers that may run at once (usually the machine's cores).
    pub count: usize,
}

/// One participant's handles on the machine's slots (its own open files, so
/// that participants sharing a process also exclude each other).
#[derive(Debug)]
pub struct Slots {
    files: Vec<File>,
    patience: Duration,
}

impl Slots {
    /// Opens (creating if needed) the lock files `slot-0.lock` .. in `config.dir`.
    pub fn open(config: &SlotConfig) -> std::io::Result<Self> {
        std::fs::create_dir_all(&config.dir)?;
        let files = (0..config.count.max(1))
            .map(|k| lock_file(&config.dir, k))
            .collect::<std::io::Result<_>>()?;
        Ok(Slots {
            files,
            patience: PATIENCE,
        })
    }

    /// The same slots, waited for at most `patience` (tests wait less).
    #[cfg(test)]
    fn with_patience(self, patience: Duration) -> Self {
        Slots { patience, ..self }
    }

    /// Takes a free slot, waiting up to [`PATIENCE`]; the turn holds it until
    /// it is dropped or passed on.
    pub fn take(&self) -> Turn<'_> {
        let mut turn = Turn {
            slots: self,
            held: None,
            since: 0,
        };
        turn.wait();
        turn
    }

    /// A turn for a trainer whose working set is `working_set` bytes, taken as
    /// [`Slots::take`] does; none under 4 MiB, where turns do not pay.
    pub fn turn_for(&self, working_set: usize) -> Option<Turn<'_>> {
        (working_set >= TURN_MIN_BYTES).then(|| self.take())
    }

    fn try_take(&self) -> Option<usize> {
        self.files.iter().position(|f| match f.try_lock() {
            Ok(()) => true,
            Err(TryLockError::WouldBlock) => false,
            Err(TryLockError::Error(e)) => {
                tracing::debug!("training slot lock failed: {e}");
                false
            }
        })
    }
}

fn lock_file(dir: &Path, k: usize) -> std::io::Result<File> {
    OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join(format!("slot-{k}.lock")))
}

/// A trainer's hold on a slot (or, after waiting in vain, on none).
#[derive(Debug)]
pub struct Turn<'a> {
    slots: &'a Slots,
    held: Option<usize>,
    since: usize,
}

impl Turn<'_> {
    /// Whether a slot is held (false after waiting [`PATIENCE`] in vain).
    pub fn holds_slot(&self) -> bool {
        self.held.is_some()
    }

    /// Called between batches with the samples trained so far: passes the slot
    /// on once this turn has trained [`TURN_SAMPLES`], and waits for the next.
    pub fn between(&mut self, trained: usize) {
        if trained.saturating_sub(self.since) < TURN_SAMPLES {
            return;
        }
        self.since = trained;
        self.release();
        // Give a waiting trainer (polling every millisecond) the time to take it.
        std::thread::sleep(2 * POLL);
        self.wait();
    }

    fn wait(&mut self) {
        let patience = self.slots.patience;
        let deadline = Instant::now() + patience;
        loop {
            if let Some(k) = self.slots.try_take() {
                self.held = Some(k);
                return;
            }
            if Instant::now() >= deadline {
                tracing::warn!(
                    "no training slot came free within {patience:?}: training without one"
                );
                return;
            }
            std::thread::sleep(POLL);
        }
    }

    fn release(&mut self) {
        if let Some(k) = self.held.take() {
            let _ = self.slots.files[k].unlock();
        }
    }
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        self.release();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};

    fn slots(dir: &Path, count: usize) -> Slots {
        let config = SlotConfig {
            dir: dir.to_path_buf(),
            count,
        };
        Slots::open(&config)
            .unwrap()
            .with_patience(Duration::from_millis(50))
    }

    #[test]
    fn no_more_turns_hold_slots_than_there_are_slots() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b, c) = (
            slots(dir.path(), 2),
            slots(dir.path(), 2),
            slots(dir.path(), 2),
        );
        let (first, second) = (a.take(), b.take());
        assert!(first.holds_slot() && second.holds_slot());
        // The third waits its patience out and runs without one.
        assert!(!c.take().holds_slot());
        drop(first);
        assert!(c.take().holds_slot());
    }

    #[test]
    fn a_turn_passes_its_slot_to_a_waiting_trainer() {
        let dir = tempfile::tempdir().unwrap();
        let (mine, theirs) = (
            slots(dir.path(), 1),
            slots(dir.path(), 1).with_patience(PATIENCE),
        );
        let had_a_turn = AtomicBool::new(false);
        let mut turn = mine.take();
        assert!(turn.holds_slot());
        std::thread::scope(|s| {
            s.spawn(|| {
                let t = theirs.take();
                had_a_turn.store(t.holds_slot(), Ordering::SeqCst);
            });
            // Every pass gives the waiting trainer its chance; a busy machine
            // may need a few.
            let mut trained = 0;
            for _ in 0..1000 {
                if had_a_turn.load(Ordering::SeqCst) {
                    break;
                }
                trained += TURN_SAMPLES;
                turn.between(trained);
            }
        });
        assert!(
            had_a_turn.load(Ordering::SeqCst),
            "the slot was never passed on"
        );
        assert!(turn.holds_slot(), "and came back");
    }

    #[test]
    fn the_reference_cnn_takes_turns_and_the_mlp_does_not() {
        let cfg = fedcore::train::TrainConfig::default();
        let bytes = |model: &str| {
            fedcore::train::memory::<f32, fedcore::kernels::host::Host>(
                &model.parse().unwrap(),
                &cfg,
            )
            .total()
        };
        let (cnn, mlp) = (bytes("cnn"), bytes("mlp:784-128-10"));
        assert!(cnn >= TURN_MIN_BYTES, "cnn {cnn} B");
        assert!(mlp < TURN_MIN_BYTES, "mlp {mlp} B");
    }

    #[test]
    fn a_turn_keeps_its_slot_until_it_has_trained_a_turns_samples() {
        let dir = tempfile::tempdir().unwrap();
        let (mine, theirs) = (slots(dir.path(), 1), slots(dir.path(), 1));
        let mut turn = mine.take();
        turn.between(TURN_SAMPLES - 1);
        assert!(!theirs.take().holds_slot(), "passed on too early");
    }
}
