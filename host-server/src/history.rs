//! The run's history: per round, losses, accuracies, timings, bytes and participants.
//!
//! Written after every round as `history_<rounds>.json` and `history_<rounds>.csv`
//! (each through a temporary file and a rename, so a crash never leaves half a
//! file), readable from any language. The JSON has the config and every round;
//! the CSV has one line of headline numbers per round.
//!
//! This module is a leaf: it knows ids, names and link kinds, never
//! connections, so anything that reads or writes a history (the round loop, the
//! summary, the plots, a test) can use it alone.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use fedcore::protocol::{Board, ParticipantKind};
use fedhost::output::write_atomic;
use serde::{Deserialize, Serialize};

/// How a participant is connected (and, for the firmware image on a serial
/// line, on which board it runs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LinkKind {
    /// TCP.
    Tcp,
    /// A serial line (a simulated device, or a board of unknown kind).
    Serial,
    /// The firmware image on QEMU's mps2-an386 (Cortex-M4F), over its UART.
    #[serde(rename = "qemu-m4")]
    QemuM4,
    /// The firmware image on QEMU's mps2-an385 (Cortex-M3), over its UART.
    #[serde(rename = "qemu-m3")]
    QemuM3,
    /// A Flower client on Flower's original gRPC stream (`start_numpy_client`).
    #[serde(rename = "flower-legacy")]
    FlowerLegacy,
    /// A Flower SuperNode on the Fleet API (`flower-supernode`).
    Supernode,
}

impl LinkKind {
    /// The name the history and the summary give it.
    pub fn name(self) -> &'static str {
        match self {
            LinkKind::Tcp => "tcp",
            LinkKind::Serial => "serial",
            LinkKind::QemuM4 => Board::Mps2An386.name(),
            LinkKind::QemuM3 => Board::Mps2An385.name(),
            LinkKind::FlowerLegacy => "flower-legacy",
            LinkKind::Supernode => "supernode",
        }
    }

    /// What the records call a participant on `link` that says it is `kind`:
    /// a firmware image on a serial line by its board, anything else by its link.
    pub fn recorded(link: LinkKind, kind: ParticipantKind) -> LinkKind {
        match (link, kind) {
            (LinkKind::Serial, ParticipantKind::Board(Board::Mps2An386)) => LinkKind::QemuM4,
            (LinkKind::Serial, ParticipantKind::Board(Board::Mps2An385)) => LinkKind::QemuM3,
            _ => link,
        }
    }
}

/// Who a record is about: the server-given id, the name it gave, its link,
/// and what it proved when it joined.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// Server-given id (a participant that rejoins gets a new one).
    pub id: u32,
    /// Name it gave.
    pub name: String,
    /// Link kind.
    pub kind: LinkKind,
    /// What it proved.
    pub credentials: Credentials,
}

/// What a participant proved when it joined: the identity its updates come from.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Credentials {
    /// Which key it proved holding.
    pub key: KeyProof,
    /// SHA-256 (hex) of the TLS client certificate it presented (mutual TLS).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate: Option<String>,
}

/// Which key a participant proved holding (`--auth-key-file`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyProof {
    /// None: admission is open to anyone (or the participant speaks Flower's protocols).
    #[default]
    None,
    /// The federation's one key: it is one of the key holders, its name unproved.
    Shared,
    /// The key its name has in the key file: its name is proved.
    Own,
}

/// Bytes, time and repairs of one or more exchanges with a participant.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Traffic {
    /// Bytes the server sent.
    pub bytes_sent: u64,
    /// Bytes the server received.
    pub bytes_received: u64,
    /// Seconds from instruction to answer.
    pub seconds: f64,
    /// Of those, seconds the link was busy or waited on (all but the
    /// participant's own reported compute time).
    pub link_seconds: f64,
    /// Resend requests, both ways.
    pub resends: u32,
}

/// Examples, loss and accuracy a participant reported.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Scores {
    /// Examples the numbers are over.
    pub examples: u32,
    /// Mean loss.
    pub loss: f32,
    /// Accuracy.
    pub accuracy: f32,
    /// Seconds the participant computed (training or evaluating).
    pub seconds: f32,
}

impl From<fedcore::protocol::EvaluateRes> for Scores {
    fn from(r: fedcore::protocol::EvaluateRes) -> Self {
        Scores {
            examples: r.examples,
            loss: r.loss,
            accuracy: r.accuracy,
            seconds: r.seconds,
        }
    }
}

impl From<fedcore::protocol::FitRes> for Scores {
    fn from(r: fedcore::protocol::FitRes) -> Self {
        Scores {
            examples: r.examples,
            loss: r.loss,
            accuracy: r.accuracy,
            seconds: r.seconds,
        }
    }
}

/// One participant's part in a round.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ParticipantRecord {
    /// Server-given id.
    pub id: u32,
    /// Name it gave.
    pub name: String,
    /// Link kind.
    pub kind: LinkKind,
    /// What it proved when it joined (histories before it have none).
    #[serde(default)]
    pub credentials: Credentials,
    /// Training examples it contributed (its FedAvg weight; 0 when it did not train).
    pub examples: u32,
    /// Bytes the server sent it this round.
    pub bytes_sent: u64,
    /// Bytes the server received from it this round.
    pub bytes_received: u64,
    /// Seconds its exchanges took this round, from instruction to answer.
    pub seconds: f64,
    /// Of those, seconds not spent computing: the link moving the model both
    /// ways, and waiting on it (what a serial line costs).
    #[serde(default)]
    pub link_seconds: f64,
    /// Resend requests this round, both ways (a lossy line's repairs).
    #[serde(default)]
    pub resends: u32,
    /// Its training report (none when it did not train, or trained without
    /// reporting its training loss and accuracy, as a Flower client may).
    pub fit: Option<Scores>,
    /// Its evaluation report.
    pub evaluate: Option<Scores>,
}

/// The two things a participant is asked to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// Train on the global model.
    Fit,
    /// Score the global model.
    Evaluate,
}

/// How a participant's job failed, for a program to tell apart (the
/// failure's `reason` says it in words).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FailureKind {
    /// It did not answer before the round's deadline.
    Deadline,
    /// A lossy link stopped answering resend requests.
    Stalled,
    /// The connection broke, or a frame arrived damaged over TCP.
    Link,
    /// The participant reported an error of its own.
    Participant,
    /// It sent something the conversation does not allow.
    Protocol,
    /// Its update or metrics failed validation (NaN, lies about its examples, out of range).
    Rejected,
    /// It said hello again in the middle of a job (it restarted).
    Restarted,
    /// It was gone before the job reached it, or its connection task ended.
    Gone,
}

impl FailureKind {
    /// Its name, as the history spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            FailureKind::Deadline => "deadline",
            FailureKind::Stalled => "stalled",
            FailureKind::Link => "link",
            FailureKind::Participant => "participant",
            FailureKind::Protocol => "protocol",
            FailureKind::Rejected => "rejected",
            FailureKind::Restarted => "restarted",
            FailureKind::Gone => "gone",
        }
    }
}

/// A participant that failed a phase.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FailureRecord {
    /// Server-given id.
    pub id: u32,
    /// Name it gave.
    pub name: String,
    /// What it was asked to do.
    pub phase: Phase,
    /// How it failed (absent in histories written before it was recorded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<FailureKind>,
    /// What happened, for a human.
    pub reason: String,
}

/// Example-weighted means of the training participants' own metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct FitMetrics {
    /// Mean training loss of their last local epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub train_loss: Option<f32>,
    /// Training accuracy of their last local epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub train_accuracy: Option<f32>,
}

/// Where a round's wall time went, in seconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct PhaseSeconds {
    /// Sending the model, local training and collecting the updates (and the
    /// previous aggregate's evaluations that travel with them).
    pub fit: f64,
    /// Folding the updates and applying the server optimizer.
    pub aggregate: f64,
    /// The final standalone evaluation (last round only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evaluate: Option<f64>,
    /// Scoring the global model on the server's own test set (with --server-eval).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_eval: Option<f64>,
}

/// One round.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RoundRecord {
    /// Round number, from 1.
    pub round: u32,
    /// Example-weighted mean of the evaluating clients' losses.
    pub loss_distributed: Option<f32>,
    /// Example-weighted mean of the evaluating clients' accuracies.
    pub accuracy_distributed: Option<f32>,
    /// Example-weighted means of the training clients' metrics.
    pub fit_metrics: FitMetrics,
    /// Loss of the global model on the server's test set.
    pub loss_centralized: Option<f32>,
    /// Accuracy of the global model on the server's test set.
    pub accuracy_centralized: Option<f32>,
    /// Whether enough clients trained for the model to be updated.
    pub aggregated: bool,
    /// Everyone who took part.
    pub participants: Vec<ParticipantRecord>,
    /// Everyone who was asked and did not answer well.
    pub failures: Vec<FailureRecord>,
    /// Wall time of the round.
    pub seconds: f64,
    /// Bytes moved in the round, both ways.
    pub bytes: u64,
    /// Where the round's time went.
    pub phase_seconds: PhaseSeconds,
}

impl ParticipantRecord {
    /// Adds an exchange's bytes and time.
    pub fn add(&mut self, e: &Traffic) {
        self.bytes_sent += e.bytes_sent;
        self.bytes_received += e.bytes_received;
        self.seconds += e.seconds;
        self.link_seconds += e.link_seconds;
        self.resends += e.resends;
    }
}

impl RoundRecord {
    /// An empty record for `round`.
    pub fn new(round: u32) -> Self {
        RoundRecord {
            round,
            loss_distributed: None,
            accuracy_distributed: None,
            fit_metrics: FitMetrics::default(),
            loss_centralized: None,
            accuracy_centralized: None,
            aggregated: false,
            participants: Vec::new(),
            failures: Vec::new(),
            seconds: 0.0,
            bytes: 0,
            phase_seconds: PhaseSeconds::default(),
        }
    }

    /// The record of participant `who`, added if new (kept in id order).
    pub fn participant(&mut self, who: &Identity) -> &mut ParticipantRecord {
        let at = match self.participants.binary_search_by_key(&who.id, |p| p.id) {
            Ok(at) => at,
            Err(at) => {
                let blank = ParticipantRecord {
                    id: who.id,
                    name: who.name.clone(),
                    kind: who.kind,
                    credentials: who.credentials.clone(),
                    examples: 0,
                    bytes_sent: 0,
                    bytes_received: 0,
                    seconds: 0.0,
                    link_seconds: 0.0,
                    resends: 0,
                    fit: None,
                    evaluate: None,
                };
                self.participants.insert(at, blank);
                at
            }
        };
        &mut self.participants[at]
    }

    /// Recomputes the round's byte count from its participants.
    pub fn tally(&mut self) {
        self.bytes = self
            .participants
            .iter()
            .map(|p| p.bytes_sent + p.bytes_received)
            .sum();
    }
}

/// A run's history.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct History {
    /// The run's settings.
    pub config: serde_json::Value,
    /// The rounds so far.
    pub rounds: Vec<RoundRecord>,
}

/// One participant over a whole run (by name and link kind: a participant
/// that rejoins gets a new id but keeps its name).
#[derive(Debug, Clone, PartialEq)]
pub struct ParticipantSummary {
    /// Name it gave.
    pub name: String,
    /// Link kind.
    pub kind: LinkKind,
    /// Rounds it trained in.
    pub rounds_trained: u32,
    /// Rounds it appears in (trained or evaluated).
    pub rounds_present: u32,
    /// Its training examples (its weight).
    pub examples: u32,
    /// Bytes both ways, per round present.
    pub bytes_per_round: f64,
    /// Exchange seconds per round present.
    pub seconds_per_round: f64,
    /// Link seconds per round present.
    pub link_seconds_per_round: f64,
    /// Resend requests over the run.
    pub resends: u32,
    /// Rounds it failed a phase in.
    pub failures: u32,
    /// Its last evaluation accuracy.
    pub last_accuracy: Option<f32>,
}

impl History {
    /// Every participant's part in the run, in order of first appearance.
    pub fn participants(&self) -> Vec<ParticipantSummary> {
        let mut all: Vec<ParticipantSummary> = Vec::new();
        let mut find = |name: &str, kind: LinkKind| -> usize {
            match all.iter().position(|s| s.name == name && s.kind == kind) {
                Some(at) => at,
                None => {
                    all.push(ParticipantSummary {
                        name: name.to_string(),
                        kind,
                        rounds_trained: 0,
                        rounds_present: 0,
                        examples: 0,
                        bytes_per_round: 0.0,
                        seconds_per_round: 0.0,
                        link_seconds_per_round: 0.0,
                        resends: 0,
                        failures: 0,
                        last_accuracy: None,
                    });
                    all.len() - 1
                }
            }
        };
        let mut at = Vec::new();
        for r in &self.rounds {
            for p in &r.participants {
                at.push((find(&p.name, p.kind), p));
            }
        }
        // Failures name no link kind: count them against the participant of that name.
        let failures: Vec<&str> = self
            .rounds
            .iter()
            .flat_map(|r| &r.failures)
            .map(|f| f.name.as_str())
            .collect();
        for (i, p) in at {
            let s = &mut all[i];
            s.rounds_present += 1;
            s.rounds_trained += u32::from(p.examples > 0);
            s.examples = s.examples.max(p.examples);
            s.bytes_per_round += (p.bytes_sent + p.bytes_received) as f64;
            s.seconds_per_round += p.seconds;
            s.link_seconds_per_round += p.link_seconds;
            s.resends += p.resends;
            if let Some(e) = p.evaluate {
                s.last_accuracy = Some(e.accuracy);
            }
        }
        for s in &mut all {
            let n = f64::from(s.rounds_present.max(1));
            s.bytes_per_round /= n;
            s.seconds_per_round /= n;
            s.link_seconds_per_round /= n;
            s.failures = failures.iter().filter(|&&f| f == s.name).count() as u32;
        }
        all
    }

    /// Paths of the JSON and CSV files for a run of `rounds` rounds in `out`.
    pub fn paths(out: &Path, rounds: u32) -> (PathBuf, PathBuf) {
        (
            out.join(format!("history_{rounds}.json")),
            out.join(format!("history_{rounds}.csv")),
        )
    }

    /// Writes both files.
    pub fn write(&self, json: &Path, csv: &Path) -> std::io::Result<()> {
        let text = serde_json::to_string_pretty(self).map_err(std::io::Error::other)?;
        write_atomic(json, text.as_bytes())?;
        write_atomic(csv, self.csv().as_bytes())
    }

    /// Reads a JSON history.
    pub fn read(path: &Path) -> anyhow::Result<History> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        serde_json::from_str(&text)
            .map_err(|e| anyhow::anyhow!("{} is not a history file: {e}", path.display()))
    }

    fn csv(&self) -> String {
        let mut out = String::from(
            "round,loss_distributed,accuracy_distributed,train_loss,train_accuracy,loss_centralized,accuracy_centralized,aggregated,participants,failures,seconds,bytes\n",
        );
        let opt = |v: Option<f32>| v.map(|v| v.to_string()).unwrap_or_default();
        for r in &self.rounds {
            let _ = writeln!(
                out,
                "{},{},{},{},{},{},{},{},{},{},{:.3},{}",
                r.round,
                opt(r.loss_distributed),
                opt(r.accuracy_distributed),
                opt(r.fit_metrics.train_loss),
                opt(r.fit_metrics.train_accuracy),
                opt(r.loss_centralized),
                opt(r.accuracy_centralized),
                r.aggregated,
                r.participants.len(),
                r.failures.len(),
                r.seconds,
                r.bytes
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_link_kinds_name_is_the_one_the_history_writes() {
        for kind in [
            LinkKind::Tcp,
            LinkKind::Serial,
            LinkKind::QemuM4,
            LinkKind::QemuM3,
            LinkKind::FlowerLegacy,
            LinkKind::Supernode,
        ] {
            let written = serde_json::to_value(kind).unwrap();
            assert_eq!(written.as_str(), Some(kind.name()));
        }
    }

    #[test]
    fn a_board_is_recorded_by_its_board_only_on_a_serial_line() {
        let m3 = ParticipantKind::Board(Board::Mps2An385);
        let m4 = ParticipantKind::Board(Board::Mps2An386);
        assert_eq!(LinkKind::recorded(LinkKind::Serial, m3), LinkKind::QemuM3);
        assert_eq!(LinkKind::recorded(LinkKind::Serial, m4), LinkKind::QemuM4);
        let device = ParticipantKind::Device;
        assert_eq!(
            LinkKind::recorded(LinkKind::Serial, device),
            LinkKind::Serial
        );
        // A TCP peer cannot make itself look like a board.
        assert_eq!(LinkKind::recorded(LinkKind::Tcp, m3), LinkKind::Tcp);
    }

    #[test]
    fn a_failure_kinds_name_is_the_one_the_history_writes() {
        for kind in [
            FailureKind::Deadline,
            FailureKind::Stalled,
            FailureKind::Link,
            FailureKind::Participant,
            FailureKind::Protocol,
            FailureKind::Rejected,
            FailureKind::Restarted,
            FailureKind::Gone,
        ] {
            let written = serde_json::to_value(kind).unwrap();
            assert_eq!(written.as_str(), Some(kind.as_str()));
        }
    }
}
