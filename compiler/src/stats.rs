//! Order statistics the measurements share: the median and percentiles of timings.

/// The `p`-quantile (0..=1) of `sorted` by nearest rank; `NaN` for an empty slice.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((p * (sorted.len() - 1) as f64).round() as usize).min(sorted.len() - 1)]
}

/// The median of `v` (sorted in place): the upper middle element for an even count, as
/// [`percentile`] with `p = 0.5` rounds.
pub fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    percentile(v, 0.5)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_by_nearest_rank() {
        let cases: &[(&[f64], f64, f64)] = &[
            (&[3.0, 1.0, 2.0], 0.5, 2.0),
            (&[4.0, 1.0, 3.0, 2.0], 0.5, 3.0),
            (&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0], 0.99, 10.0),
            (&[5.0], 0.99, 5.0),
        ];
        for (v, p, want) in cases {
            let mut v = v.to_vec();
            v.sort_by(|a, b| a.total_cmp(b));
            assert_eq!(percentile(&v, *p), *want, "{v:?} at {p}");
        }
        assert_eq!(median(&mut [4.0, 1.0, 3.0, 2.0]), 3.0);
        assert!(percentile(&[], 0.5).is_nan());
    }
}
