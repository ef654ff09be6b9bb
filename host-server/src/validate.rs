//! What a participant's answer must satisfy before it touches anything.
//!
//! A peer that speaks the protocol correctly can still send anything: NaN
//! parameters, a billion examples, an accuracy of 7. Every update and every
//! metric is checked here against what the participant declared when it
//! joined, before the update reaches the aggregator or a number reaches the
//! history; an answer that fails is that participant's failure for the round.
//! Optionally an update's distance from the global model is bounded too
//! ([`clip`]), which limits what one poisoned update can move the model by.

use fedcore::protocol::{EvaluateRes, FitRes};

/// What a participant declared in its hello.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Declared {
    /// Training examples it holds.
    pub train_examples: u32,
    /// Test examples it holds.
    pub test_examples: u32,
}

/// Why an answer was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Rejection {
    /// Parameters that are NaN or infinite.
    #[error(
        "its update holds {count} values that are NaN or infinite (the first at index {first})"
    )]
    NonFiniteUpdate {
        /// Index of the first.
        first: usize,
        /// How many.
        count: usize,
    },
    /// A training example count of 0 or above what it declared.
    #[error(
        "it claims {claimed} training examples; it may claim 1 to {declared} (what it declared when it joined, or --max-examples)"
    )]
    TrainExamples {
        /// What the result says.
        claimed: u32,
        /// What the hello said.
        declared: u32,
    },
    /// A test example count above what it declared.
    #[error(
        "it claims {claimed} test examples; it may claim at most {declared} (what it declared when it joined, or --max-examples)"
    )]
    TestExamples {
        /// What the result says.
        claimed: u32,
        /// What the hello said.
        declared: u32,
    },
    /// A loss, accuracy or duration that is not a finite number.
    #[error("its {what} is {value}, not a finite number")]
    NonFiniteMetric {
        /// Which number.
        what: &'static str,
        /// Its value.
        value: f32,
    },
    /// An accuracy outside [0, 1] or a negative loss or duration.
    #[error("its {what} is {value}, outside {range}")]
    OutOfRange {
        /// Which number.
        what: &'static str,
        /// Its value.
        value: f32,
        /// Where it must lie.
        range: &'static str,
    },
}

/// Checks a fit's report and its update.
pub fn fit(res: &FitRes, update: &[f32], declared: &Declared) -> Result<(), Rejection> {
    if res.examples == 0 || res.examples > declared.train_examples {
        return Err(Rejection::TrainExamples {
            claimed: res.examples,
            declared: declared.train_examples,
        });
    }
    metrics(
        ["training loss", "training accuracy"],
        res.loss,
        res.accuracy,
        res.seconds,
    )?;
    let mut bad = update.iter().enumerate().filter(|(_, v)| !v.is_finite());
    if let Some((first, _)) = bad.next() {
        return Err(Rejection::NonFiniteUpdate {
            first,
            count: 1 + bad.count(),
        });
    }
    Ok(())
}

/// Checks a fit's report, its update and the evaluation that came with it;
/// then, with a bound, clips the update to at most `max_update_norm` from `global`.
pub fn accept_fit(
    res: &FitRes,
    update: &mut [f32],
    evaluation: Option<&EvaluateRes>,
    global: &[f32],
    declared: &Declared,
    max_update_norm: Option<f32>,
) -> Result<(), Rejection> {
    fit(res, update, declared)?;
    if let Some(ev) = evaluation {
        self::evaluation(ev, declared)?;
    }
    if let Some(max) = max_update_norm {
        let norm = clip(update, global, max);
        if norm > f64::from(max) {
            tracing::info!(
                round = res.round,
                norm,
                max,
                "update clipped to the norm bound"
            );
        }
    }
    Ok(())
}

/// Checks an evaluation's report.
pub fn evaluation(res: &EvaluateRes, declared: &Declared) -> Result<(), Rejection> {
    if res.examples > declared.test_examples {
        return Err(Rejection::TestExamples {
            claimed: res.examples,
            declared: declared.test_examples,
        });
    }
    metrics(
        ["test loss", "test accuracy"],
        res.loss,
        res.accuracy,
        res.seconds,
    )
}

/// Checks a report's numbers; `names` are its loss's and its accuracy's, for the message.
fn metrics(
    [loss_name, accuracy_name]: [&'static str; 2],
    loss: f32,
    accuracy: f32,
    seconds: f32,
) -> Result<(), Rejection> {
    for (what, value) in [
        (loss_name, loss),
        (accuracy_name, accuracy),
        ("compute time", seconds),
    ] {
        if !value.is_finite() {
            return Err(Rejection::NonFiniteMetric { what, value });
        }
    }
    if !(0.0..=1.0).contains(&accuracy) {
        return Err(Rejection::OutOfRange {
            what: accuracy_name,
            value: accuracy,
            range: "[0, 1]",
        });
    }
    for (what, value) in [(loss_name, loss), ("compute time", seconds)] {
        if value < 0.0 {
            return Err(Rejection::OutOfRange {
                what,
                value,
                range: "[0, inf)",
            });
        }
    }
    Ok(())
}

/// Scales `update - global` down to an L2 norm of `max_norm` when it is longer;
/// returns the norm it had. `update` must be finite (see [`fit`]).
pub fn clip(update: &mut [f32], global: &[f32], max_norm: f32) -> f64 {
    let norm = update
        .iter()
        .zip(global)
        .map(|(u, g)| f64::from(u - g).powi(2))
        .sum::<f64>()
        .sqrt();
    if norm > f64::from(max_norm) {
        let scale = (f64::from(max_norm) / norm) as f32;
        for (u, g) in update.iter_mut().zip(global) {
            *u = g + (*u - g) * scale;
        }
    }
    norm
}

#[cfg(test)]
mod tests {
    use super::*;

    const DECLARED: Declared = Declared {
        train_examples: 100,
        test_examples: 20,
    };

    fn fit_res(examples: u32, loss: f32, accuracy: f32) -> FitRes {
        FitRes {
            round: 1,
            examples,
            loss,
            accuracy,
            seconds: 0.5,
        }
    }

    #[test]
    fn honest_answers_pass() {
        assert_eq!(
            fit(&fit_res(100, 0.3, 0.9), &[0.5, -1.0], &DECLARED),
            Ok(())
        );
        let eval = EvaluateRes {
            round: 1,
            examples: 20,
            loss: 0.2,
            accuracy: 1.0,
            seconds: 0.0,
        };
        assert_eq!(evaluation(&eval, &DECLARED), Ok(()));
    }

    #[test]
    fn lies_and_poison_are_refused_with_what_was_wrong() {
        let good = [0.0f32; 4];
        for (res, update, what) in [
            (fit_res(0, 0.3, 0.9), &good[..], "0 examples"),
            (fit_res(101, 0.3, 0.9), &good[..], "more than declared"),
            (fit_res(u32::MAX, 0.3, 0.9), &good[..], "u32::MAX"),
            (fit_res(10, f32::NAN, 0.9), &good[..], "NaN loss"),
            (fit_res(10, 0.3, 1.5), &good[..], "accuracy 1.5"),
            (fit_res(10, -1.0, 0.5), &good[..], "negative loss"),
            (
                fit_res(10, 0.3, 0.9),
                &[0.0, f32::NAN, 1.0, f32::INFINITY][..],
                "NaN update",
            ),
        ] {
            assert!(fit(&res, update, &DECLARED).is_err(), "{what}");
        }
        assert_eq!(
            fit(
                &fit_res(10, 0.3, 0.9),
                &[0.0, f32::NAN, 1.0, f32::INFINITY],
                &DECLARED
            ),
            Err(Rejection::NonFiniteUpdate { first: 1, count: 2 })
        );
        let lying = EvaluateRes {
            round: 1,
            examples: u32::MAX,
            loss: 0.0,
            accuracy: 1.0,
            seconds: 0.0,
        };
        assert!(matches!(
            evaluation(&lying, &DECLARED),
            Err(Rejection::TestExamples { .. })
        ));
    }

    #[test]
    fn a_long_update_is_clipped_to_the_bound_and_a_short_one_kept() {
        let global = [1.0f32, 1.0];
        let mut far = [4.0f32, 5.0]; // delta (3, 4): norm 5
        assert_eq!(clip(&mut far, &global, 1.0), 5.0);
        assert!((far[0] - 1.6).abs() < 1e-6 && (far[1] - 1.8).abs() < 1e-6);
        let mut near = [1.3f32, 1.4];
        clip(&mut near, &global, 1.0);
        assert_eq!(near, [1.3, 1.4]);
    }
}
