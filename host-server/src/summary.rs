//! The end-of-run tables: the run in one row, then one row per participant.
//!
//! Markdown tables, so a terminal shows them aligned enough and a README or
//! an issue takes them as they are.

use std::fmt::Write as _;
use std::time::Duration;

use crate::config::ServerConfig;
use crate::federation::Outcome;

/// The summary of a finished run that took `wall` in all.
pub fn render(config: &ServerConfig, outcome: &Outcome, wall: Duration) -> String {
    let rounds = &outcome.history.rounds;
    let n = rounds.len().max(1) as f64;
    let percent = |a: Option<f32>| a.map_or("-".into(), |a| format!("{:.2}%", 100.0 * a));
    let acc = percent(rounds.last().and_then(|r| r.accuracy_distributed));
    let bytes: u64 = rounds.iter().map(|r| r.bytes).sum();
    let failures: usize = rounds.iter().map(|r| r.failures.len()).sum();
    let mut out = String::new();
    // Writing to a String cannot fail.
    let _ = writeln!(
        out,
        "| rounds | model | strategy | final accuracy | wall time | s/round | bytes/round | failures |"
    );
    let _ = writeln!(out, "| --- | --- | --- | --- | --- | --- | --- | --- |");
    let _ = writeln!(
        out,
        "| {} | {} | {:?} | {acc} | {:.1} s | {:.2} | {:.1} MB | {failures} |",
        rounds.len(),
        config.model,
        config.strategy,
        wall.as_secs_f64(),
        rounds.iter().map(|r| r.seconds).sum::<f64>() / n,
        bytes as f64 / n / 1e6,
    );
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "| participant | kind | rounds trained | examples | bytes/round | s/round | link s/round | resends | failures | last accuracy |"
    );
    let _ = writeln!(
        out,
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
    );
    for p in outcome.history.participants() {
        let kind = p.kind.name();
        let _ = writeln!(
            out,
            "| {} | {kind} | {}/{} | {} | {:.1} KB | {:.2} | {:.2} | {} | {} | {} |",
            p.name,
            p.rounds_trained,
            rounds.len(),
            p.examples,
            p.bytes_per_round / 1e3,
            p.seconds_per_round,
            p.link_seconds_per_round,
            p.resends,
            p.failures,
            percent(p.last_accuracy),
        );
    }
    let _ = writeln!(out);
    for f in &outcome.files {
        let _ = writeln!(out, "wrote {}", f.display());
    }
    out
}
