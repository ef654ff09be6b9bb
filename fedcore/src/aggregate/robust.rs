//! Robust aggregators: coordinate-wise median, trimmed mean, and (multi-)Krum.
//!
//! Unlike FedAvg these cannot stream: each coordinate's result depends on the
//! order statistics of all clients' values (median, trimmed mean), or each
//! update's score on its distances to all the others (Krum), so every client
//! vector must be held at once (memory O(clients × model), the documented
//! exception to the server's O(model) rule; Krum adds O(clients) scratch and
//! O(clients² × model) time). All are unweighted, as in Flower's FedMedian and
//! FedTrimmedAvg: a client cannot buy influence by claiming many examples.

use crate::Error;

/// Checks the inputs and runs `f(sorted_values)` for each coordinate.
fn per_coordinate(
    clients: &[&[f32]],
    scratch: &mut [f32],
    out: &mut [f32],
    f: impl Fn(&[f32]) -> f32,
) -> Result<(), Error> {
    if clients.is_empty() {
        return Err(Error::NothingToAggregate);
    }
    if clients.iter().any(|c| c.len() != out.len()) {
        return Err(Error::RaggedVectors);
    }
    let got = scratch.len();
    let column = scratch
        .get_mut(..clients.len())
        .ok_or(Error::BufferLength {
            expected: clients.len(),
            got,
        })?;
    for (j, o) in out.iter_mut().enumerate() {
        for (c, v) in clients.iter().zip(column.iter_mut()) {
            *v = c[j];
        }
        column.sort_unstable_by(f32::total_cmp);
        *o = f(column);
    }
    Ok(())
}

/// Coordinate-wise median of `clients` (mean of the middle two for an even count).
/// `scratch` must hold at least one value per client.
pub fn coordinate_median(
    clients: &[&[f32]],
    scratch: &mut [f32],
    out: &mut [f32],
) -> Result<(), Error> {
    per_coordinate(clients, scratch, out, |s| {
        let n = s.len();
        if n % 2 == 1 {
            s[n / 2]
        } else {
            0.5 * (s[n / 2 - 1] + s[n / 2])
        }
    })
}

/// Coordinate-wise mean after dropping the `beta` fraction (0 <= beta < 0.5) of
/// the smallest and of the largest values, and at least one of each whenever
/// `beta > 0` (so that one outlier, NaN included, is always cut: `floor(0.2 · 3)`
/// alone would cut nothing). `scratch` holds one value per client.
pub fn trimmed_mean(
    clients: &[&[f32]],
    beta: f32,
    scratch: &mut [f32],
    out: &mut [f32],
) -> Result<(), Error> {
    if !(0.0..0.5).contains(&beta) {
        return Err(Error::BadConfig("trim fraction must be in [0, 0.5)"));
    }
    let n = clients.len();
    let cut = match (beta * n as f32) as usize {
        0 if beta > 0.0 => 1,
        cut => cut,
    };
    if n > 0 && 2 * cut >= n {
        return Err(Error::TooFewToTrim { clients: n });
    }
    per_coordinate(clients, scratch, out, |s| {
        let kept = &s[cut..s.len() - cut];
        kept.iter().sum::<f32>() / kept.len() as f32
    })
}

/// Multi-Krum (Blanchard et al., 2017): each update is scored by the summed
/// squared distances to its `n - f - 2` nearest others, where `f` is how many
/// of the `n` may be malicious; the `keep` lowest-scored are averaged (`keep = 1`
/// is Krum, which picks one). Needs `n >= 2f + 3` and `1 <= keep <= n - f`.
/// `distances` and `scores` hold at least `n` values each.
pub fn multi_krum(
    clients: &[&[f32]],
    f: usize,
    keep: usize,
    distances: &mut [f64],
    scores: &mut [f64],
    out: &mut [f32],
) -> Result<(), Error> {
    let n = clients.len();
    if n == 0 {
        return Err(Error::NothingToAggregate);
    }
    if n < 2 * f + 3 {
        return Err(Error::TooFewForKrum { clients: n, f });
    }
    if keep == 0 || keep > n - f {
        return Err(Error::BadConfig("Krum keeps between 1 and n - f updates"));
    }
    if clients.iter().any(|c| c.len() != out.len()) {
        return Err(Error::RaggedVectors);
    }
    let (got_d, got_s) = (distances.len(), scores.len());
    let distances = distances.get_mut(..n).ok_or(Error::BufferLength {
        expected: n,
        got: got_d,
    })?;
    let scores = scores.get_mut(..n).ok_or(Error::BufferLength {
        expected: n,
        got: got_s,
    })?;
    let neighbours = n - f - 2;
    for (i, a) in clients.iter().enumerate() {
        for (d, b) in distances.iter_mut().zip(clients) {
            *d = a
                .iter()
                .zip(*b)
                .map(|(x, y)| {
                    let d = f64::from(x - y);
                    d * d
                })
                .sum();
        }
        // Its own distance (0) sorts first among the non-negative distances: skip it.
        distances[i] = f64::INFINITY;
        distances.sort_unstable_by(f64::total_cmp);
        scores[i] = distances[..neighbours].iter().sum();
    }
    out.fill(0.0);
    for _ in 0..keep {
        let (best, _) = scores
            .iter()
            .enumerate()
            .min_by(|a, b| a.1.total_cmp(b.1))
            .ok_or(Error::NothingToAggregate)?;
        scores[best] = f64::INFINITY;
        for (o, v) in out.iter_mut().zip(clients[best]) {
            *o += v / keep as f32;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_ignores_an_outlier() {
        let a = [1.0f32, 10.0];
        let b = [2.0f32, 20.0];
        let evil = [1e9f32, -1e9];
        let mut out = [0.0f32; 2];
        coordinate_median(&[&a, &b, &evil], &mut [0.0; 3], &mut out).unwrap();
        assert_eq!(out, [2.0, 10.0]);
        coordinate_median(&[&a, &b], &mut [0.0; 2], &mut out).unwrap();
        assert_eq!(out, [1.5, 15.0]);
    }

    #[test]
    fn trimmed_mean_cuts_both_ends() {
        let vs: [[f32; 1]; 5] = [[-100.0], [1.0], [2.0], [3.0], [100.0]];
        let refs: [&[f32]; 5] = vs.each_ref().map(|v| &v[..]);
        let mut out = [0.0f32];
        trimmed_mean(&refs, 0.2, &mut [0.0; 5], &mut out).unwrap();
        assert_eq!(out, [2.0]);
        trimmed_mean(&refs, 0.0, &mut [0.0; 5], &mut out).unwrap();
        assert_eq!(out, [1.2]);
        assert!(trimmed_mean(&refs, 0.5, &mut [0.0; 5], &mut out).is_err());
    }

    #[test]
    fn trimmed_mean_cuts_at_least_one_from_each_end_when_asked_to_trim() {
        // floor(0.2 x 3) = 0: one NaN would poison the mean; at least one is cut.
        let vs: [[f32; 1]; 3] = [[1.0], [f32::NAN], [3.0]];
        let refs: [&[f32]; 3] = vs.each_ref().map(|v| &v[..]);
        let mut out = [0.0f32];
        trimmed_mean(&refs, 0.2, &mut [0.0; 3], &mut out).unwrap();
        assert_eq!(out, [3.0], "NaN sorts last and is cut with the smallest");
        let huge: [[f32; 1]; 3] = [[1.0], [1e30], [2.0]];
        let refs: [&[f32]; 3] = huge.each_ref().map(|v| &v[..]);
        trimmed_mean(&refs, 0.2, &mut [0.0; 3], &mut out).unwrap();
        assert_eq!(out, [2.0]);
        // Two updates cannot lose one from each end and keep any.
        assert_eq!(
            trimmed_mean(&refs[..2], 0.2, &mut [0.0; 3], &mut out),
            Err(Error::TooFewToTrim { clients: 2 })
        );
    }

    #[test]
    fn krum_picks_an_honest_update_and_multi_krum_averages_the_honest_ones() {
        let honest: [[f32; 2]; 4] = [[1.0, 1.0], [1.1, 0.9], [0.9, 1.1], [1.0, 1.2]];
        let evil = [-50.0f32, 80.0];
        let mut all: std::vec::Vec<&[f32]> = honest.iter().map(|v| &v[..]).collect();
        all.insert(2, &evil);
        let (mut d, mut s, mut out) = ([0.0f64; 5], [0.0f64; 5], [0.0f32; 2]);
        multi_krum(&all, 1, 1, &mut d, &mut s, &mut out).unwrap();
        assert!(honest.iter().any(|h| h == &out), "Krum picked {out:?}");
        multi_krum(&all, 1, 4, &mut d, &mut s, &mut out).unwrap();
        assert!(
            (out[0] - 1.0).abs() < 1e-6 && (out[1] - 1.05).abs() < 1e-6,
            "{out:?}"
        );
        // n = 4 cannot tolerate f = 1 (it needs 2f + 3 = 5).
        assert_eq!(
            multi_krum(&all[..4], 1, 1, &mut d, &mut s, &mut out),
            Err(Error::TooFewForKrum { clients: 4, f: 1 })
        );
        assert!(multi_krum(&all, 1, 5, &mut d, &mut s, &mut out).is_err());
    }

    #[test]
    fn bad_inputs_are_errors() {
        let mut out = [0.0f32; 2];
        assert_eq!(
            coordinate_median(&[], &mut [], &mut out),
            Err(Error::NothingToAggregate)
        );
        assert_eq!(
            coordinate_median(&[&[1.0]], &mut [0.0], &mut out),
            Err(Error::RaggedVectors)
        );
        assert!(coordinate_median(&[&[1.0, 2.0], &[1.0, 2.0]], &mut [0.0], &mut out).is_err());
    }
}
