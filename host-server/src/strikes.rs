//! Participants that fail the same way again and again, and the ones dropped for it.
//!
//! Each failure a participant's job ends with is a strike against its name
//! (names outlive connections: a TCP participant that failed reconnects with a
//! new id). Strikes of one kind in a row, `--max-strikes` of them, drop it: it is
//! told why, its connection is closed, and its hellos are refused for the rest
//! of the run. A success clears its strikes; a failure of another kind starts a
//! new count. Only failures that are the participant's own count: refused
//! answers, its own errors, protocol violations and missed deadlines; a broken
//! or stalled link, a restart, or a job that never reached it do not (those are
//! the line's or the server's, and a participant that rejoins is welcome).
//!
//! The record is bounded: it holds only names that are failing now or were
//! dropped, at most the capacity it was made with.

use std::collections::HashMap;
use std::sync::Mutex;

use crate::history::FailureKind;
use crate::job::Failed;

/// Strikes against names, and the dropped.
#[derive(Debug)]
pub struct Strikes {
    /// Strikes in a row that drop a participant (0: never drop).
    max: u32,
    capacity: usize,
    names: Mutex<HashMap<String, Record>>,
}

#[derive(Debug)]
struct Record {
    kind: FailureKind,
    count: u32,
    /// Why it was dropped, once it was.
    dropped: Option<String>,
}

impl Strikes {
    /// Drops after `max` strikes of one kind in a row (0: never); remembers at
    /// most `capacity` names.
    pub fn new(max: u32, capacity: usize) -> Self {
        Strikes {
            max,
            capacity,
            names: Mutex::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Record>> {
        // Every update is a single insert or field write: a poisoned lock is still sound.
        self.names.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether a failure of this kind is the participant's own doing.
    fn counts(kind: FailureKind) -> bool {
        matches!(
            kind,
            FailureKind::Rejected
                | FailureKind::Participant
                | FailureKind::Protocol
                | FailureKind::Deadline
        )
    }

    /// Records how `name`'s job ended; the verdict if this failure drops it.
    pub fn record(&self, name: &str, outcome: &Result<(), Failed>) -> Option<String> {
        match outcome {
            Ok(()) => {
                self.succeeded(name);
                None
            }
            Err(failed) => self.failed(name, failed.kind, &failed.reason),
        }
    }

    /// `name` carried out a job: its strikes are cleared.
    pub fn succeeded(&self, name: &str) {
        let mut names = self.lock();
        if names.get(name).is_some_and(|r| r.dropped.is_none()) {
            names.remove(name);
        }
    }

    /// `name` failed a job; the verdict if this failure drops it.
    pub fn failed(&self, name: &str, kind: FailureKind, reason: &str) -> Option<String> {
        if self.max == 0 || !Strikes::counts(kind) {
            return None;
        }
        let mut names = self.lock();
        if !names.contains_key(name) && names.len() >= self.capacity {
            // Forget the ones that are only failing: the dropped stay dropped.
            names.retain(|_, r| r.dropped.is_some());
            if names.len() >= self.capacity {
                return None;
            }
        }
        let record = names.entry(name.to_string()).or_insert(Record {
            kind,
            count: 0,
            dropped: None,
        });
        if record.dropped.is_some() {
            return None;
        }
        if record.kind == kind {
            record.count += 1;
        } else {
            *record = Record {
                kind,
                count: 1,
                dropped: None,
            };
        }
        if record.count < self.max {
            return None;
        }
        let verdict = format!(
            "dropped from the federation: {} failures in a row ({}), the last: {reason}",
            record.count,
            kind.as_str()
        );
        record.dropped = Some(verdict.clone());
        Some(verdict)
    }

    /// Why `name` was dropped, if it was.
    pub fn dropped(&self, name: &str) -> Option<String> {
        self.lock().get(name).and_then(|r| r.dropped.clone())
    }

    /// How many participants were dropped.
    pub fn dropped_count(&self) -> usize {
        self.lock().values().filter(|r| r.dropped.is_some()).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_failure_max_times_in_a_row_drops_and_says_why() {
        let strikes = Strikes::new(3, 16);
        assert_eq!(strikes.failed("a", FailureKind::Rejected, "NaN"), None);
        assert_eq!(strikes.failed("a", FailureKind::Rejected, "NaN"), None);
        let verdict = strikes.failed("a", FailureKind::Rejected, "NaN").unwrap();
        assert!(
            verdict.contains("3 failures in a row (rejected)"),
            "{verdict}"
        );
        assert!(verdict.ends_with("NaN"), "{verdict}");
        assert_eq!(strikes.dropped("a"), Some(verdict));
        assert_eq!(strikes.dropped_count(), 1);
        // Dropped stays dropped, whatever follows.
        strikes.succeeded("a");
        assert!(strikes.dropped("a").is_some());
        assert_eq!(strikes.dropped("b"), None);
    }

    #[test]
    fn a_success_or_another_kind_starts_the_count_again() {
        let strikes = Strikes::new(2, 16);
        assert_eq!(strikes.failed("a", FailureKind::Deadline, "late"), None);
        strikes.succeeded("a");
        assert_eq!(strikes.failed("a", FailureKind::Deadline, "late"), None);
        assert_eq!(
            strikes.failed("a", FailureKind::Participant, "bad label"),
            None
        );
        assert!(
            strikes
                .failed("a", FailureKind::Participant, "bad label")
                .is_some()
        );
    }

    #[test]
    fn failures_of_the_line_never_count_and_zero_never_drops() {
        let strikes = Strikes::new(1, 16);
        for kind in [
            FailureKind::Link,
            FailureKind::Stalled,
            FailureKind::Restarted,
            FailureKind::Gone,
        ] {
            assert_eq!(strikes.failed("a", kind, "line"), None);
        }
        let never = Strikes::new(0, 16);
        for _ in 0..10 {
            assert_eq!(never.failed("a", FailureKind::Rejected, "NaN"), None);
        }
        assert_eq!(never.dropped_count(), 0);
    }

    #[test]
    fn the_record_holds_at_most_its_capacity_and_keeps_the_dropped() {
        let strikes = Strikes::new(2, 4);
        strikes.failed("bad", FailureKind::Rejected, "x");
        assert!(strikes.failed("bad", FailureKind::Rejected, "x").is_some());
        for i in 0..100 {
            strikes.failed(&format!("n{i}"), FailureKind::Rejected, "x");
            assert!(strikes.lock().len() <= strikes.capacity);
        }
        assert!(strikes.dropped("bad").is_some());
    }
}
