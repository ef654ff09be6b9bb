//! Poisoned updates, for robustness experiments: what a malicious participant sends.
//!
//! A federation's defences (the server's validation, `--max-update-norm`, the
//! robust strategies) are only as good as the attacks they were tried against.
//! `host-client --attack` makes a participant poison every update it sends, so
//! a course or a study can watch FedAvg degrade and median, trimmed mean or
//! Krum hold. An honest deployment never sets it.

use std::str::FromStr;

use rand::SeedableRng;
use rand::rngs::StdRng;
use rand_distr::{Distribution, Normal};

/// How a participant poisons its update.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Attack {
    /// Sends `global + k · (trained - global)`: its real update scaled (k = -10 flips and amplifies it).
    Scale(f32),
    /// Sends `global + N(0, sigma²)` per parameter: a random update.
    Noise(f32),
}

impl FromStr for Attack {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad =
            || format!("expected scale:K or noise:SIGMA (e.g. scale:-10, noise:0.5), got {s:?}");
        let (kind, value) = s.split_once(':').ok_or_else(bad)?;
        let value: f32 = value
            .parse()
            .ok()
            .filter(|v: &f32| v.is_finite())
            .ok_or_else(bad)?;
        match kind {
            "scale" => Ok(Attack::Scale(value)),
            "noise" if value > 0.0 => Ok(Attack::Noise(value)),
            _ => Err(bad()),
        }
    }
}

impl Attack {
    /// Turns the trained `params` into the poisoned update, from the `global`
    /// model it was trained from; `seed` draws the noise.
    pub fn apply(&self, params: &mut [f32], global: &[f32], seed: u64) {
        match *self {
            Attack::Scale(k) => {
                for (p, g) in params.iter_mut().zip(global) {
                    *p = g + k * (*p - g);
                }
            }
            Attack::Noise(sigma) => {
                let mut rng = StdRng::seed_from_u64(seed);
                // sigma > 0 and finite, checked when parsed.
                let Ok(normal) = Normal::new(0.0f32, sigma) else {
                    return;
                };
                for (p, g) in params.iter_mut().zip(global) {
                    *p = g + normal.sample(&mut rng);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attacks_parse_and_poison() {
        assert_eq!("scale:-10".parse(), Ok(Attack::Scale(-10.0)));
        assert_eq!("noise:0.5".parse(), Ok(Attack::Noise(0.5)));
        for bad in [
            "scale",
            "scale:x",
            "noise:0",
            "noise:-1",
            "flip:1",
            "scale:NaN",
        ] {
            assert!(bad.parse::<Attack>().is_err(), "{bad}");
        }
        let global = [1.0f32, 2.0];
        let mut p = [1.5f32, 1.0];
        Attack::Scale(-10.0).apply(&mut p, &global, 0);
        assert_eq!(p, [-4.0, 12.0]);
        let mut n = [0.0f32; 2];
        Attack::Noise(0.5).apply(&mut n, &global, 7);
        assert!(
            n.iter()
                .zip(&global)
                .all(|(a, g)| (a - g).abs() < 5.0 && a != g)
        );
    }
}
