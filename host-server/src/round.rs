//! One round's bookkeeping: who trained and evaluated, who failed and how,
//! what the updates weighed, and where the round's time went.
//!
//! The round loop reports outcomes here as they arrive; this module fills the
//! round's [`RoundRecord`] (and the previous round's, for the evaluations that
//! travel with this round's fits), so the loop itself only schedules.

use std::time::Instant;

use fedcore::aggregate::WeightedMean;

use crate::history::{FailureRecord, FitMetrics, Identity, Phase, RoundRecord, Scores};
use crate::job::{EvaluateDone, FitDone, JobError};

/// A round being recorded.
pub struct RoundBook {
    record: RoundRecord,
    started: Instant,
    train_loss: WeightedMean,
    train_accuracy: WeightedMean,
    trained: usize,
    aggregate_seconds: f64,
}

impl RoundBook {
    /// Starts recording round `round` now.
    pub fn start(round: u32) -> Self {
        RoundBook {
            record: RoundRecord::new(round),
            started: Instant::now(),
            train_loss: WeightedMean::default(),
            train_accuracy: WeightedMean::default(),
            trained: 0,
            aggregate_seconds: 0.0,
        }
    }

    /// Records `who`'s finished fit; its fused evaluation goes to `previous`, if any.
    pub fn trained(&mut self, who: &Identity, done: &FitDone, previous: Option<&mut RoundRecord>) {
        let r = done.res;
        self.trained += 1;
        let p = self.record.participant(who);
        p.examples = r.examples;
        if done.scored {
            self.train_loss.add(u64::from(r.examples), r.loss);
            self.train_accuracy.add(u64::from(r.examples), r.accuracy);
            p.fit = Some(Scores::from(r));
        }
        p.add(&done.traffic);
        if let (Some(ev), Some(prev)) = (done.evaluation, previous) {
            prev.participant(who).evaluate = Some(Scores::from(ev));
        }
    }

    /// Records `who`'s failed fit; if it was also to evaluate `previous`'s aggregate, that failed too.
    pub fn fit_failed(
        &mut self,
        who: &Identity,
        error: &JobError,
        previous: Option<&mut RoundRecord>,
    ) {
        if let Some(prev) = previous {
            fail(prev, who, Phase::Evaluate, error);
        }
        fail(&mut self.record, who, Phase::Fit, error);
    }

    /// Participants whose fit succeeded so far.
    pub fn trained_count(&self) -> usize {
        self.trained
    }

    /// Adds time spent folding updates or applying the server optimizer.
    pub fn aggregating(&mut self, seconds: f64) {
        self.aggregate_seconds += seconds;
    }

    /// The fit phase is over: what was not aggregation was fitting.
    pub fn fits_collected(&mut self) {
        self.record.phase_seconds.fit =
            self.started.elapsed().as_secs_f64() - self.aggregate_seconds;
    }

    /// Records the centralised evaluation of the new aggregate.
    pub fn server_evaluated(&mut self, loss: f32, accuracy: f32, seconds: f64) {
        self.record.loss_centralized = Some(loss);
        self.record.accuracy_centralized = Some(accuracy);
        self.record.phase_seconds.server_eval = Some(seconds);
    }

    /// The finished record (`aggregated`: whether the model was updated).
    pub fn finish(mut self, aggregated: bool) -> RoundRecord {
        let r = &mut self.record;
        r.aggregated = aggregated;
        r.phase_seconds.aggregate = self.aggregate_seconds;
        r.fit_metrics = FitMetrics {
            train_loss: self.train_loss.mean(),
            train_accuracy: self.train_accuracy.mean(),
        };
        r.seconds = self.started.elapsed().as_secs_f64();
        r.tally();
        tracing::info!(
            round = r.round,
            failures = r.failures.len(),
            seconds = r.seconds,
            "round trained"
        );
        self.record
    }
}

/// Records `who`'s standalone evaluation of `record`'s aggregate.
pub fn evaluated(record: &mut RoundRecord, who: &Identity, done: &EvaluateDone) {
    let p = record.participant(who);
    p.evaluate = Some(Scores::from(done.res));
    p.add(&done.traffic);
}

/// Records that `who` failed `phase` of `record`'s round.
pub fn fail(record: &mut RoundRecord, who: &Identity, phase: Phase, error: &JobError) {
    tracing::warn!(id = who.id, name = %who.name, ?phase, "participant failed: {error}");
    record.failures.push(FailureRecord {
        id: who.id,
        name: who.name.clone(),
        phase,
        kind: Some(error.kind()),
        reason: error.to_string(),
    });
}

/// Sets `record`'s distributed loss and accuracy from every evaluation it
/// received (fused or standalone): the example-weighted means.
pub fn settle_evaluations(record: &mut RoundRecord) {
    let evaluated = record.participants.iter().filter_map(|p| p.evaluate);
    let loss: WeightedMean = evaluated
        .clone()
        .map(|e| (u64::from(e.examples), e.loss))
        .collect();
    let acc: WeightedMean = evaluated
        .map(|e| (u64::from(e.examples), e.accuracy))
        .collect();
    record.loss_distributed = loss.mean();
    record.accuracy_distributed = acc.mean();
    record.tally();
    tracing::info!(
        round = record.round,
        accuracy = record.accuracy_distributed,
        loss = record.loss_distributed,
        "round evaluated"
    );
}
