//! The search both accuracy guards share: how many of a ranked list of layers (mixed precision's
//! f32 prefix, the INT8 fallback's most sensitive layers) to keep in higher precision for an
//! output SQNR target, by bisection over the count.

/// What [`count_reaching`] found.
#[derive(Clone, Debug, PartialEq)]
pub struct Reaching {
    /// The count chosen: 0 when the target is met with none kept, `n` when even all miss it.
    pub count: usize,
    /// The score measured at `count`.
    pub score: f64,
    /// Every count measured, with its score, in the order measured (0 first).
    pub probes: Vec<(usize, f64)>,
}

/// A count `k` in `0..=n` whose score (`score(k)`, with `at_zero` measured already) reaches
/// `target` while `k - 1` misses it, found by bisection: about log2(n) + 1 more measurements.
/// When the score misses the target at `n` too, `n`. Bisection assumes that keeping more does
/// not lose accuracy; where that fails locally, the count returned still reaches the target
/// (every accepted count was measured) but a smaller one may reach it too.
pub fn count_reaching<E>(
    n: usize,
    target: f64,
    at_zero: f64,
    mut score: impl FnMut(usize) -> Result<f64, E>,
) -> Result<Reaching, E> {
    let mut probes = vec![(0, at_zero)];
    if at_zero >= target || n == 0 {
        return Ok(Reaching { count: 0, score: at_zero, probes });
    }
    // invariant: `lo` misses the target; `hi` reaches it (or is `n`, when nothing does)
    let (mut lo, mut hi) = (0usize, n);
    let mut hi_score = score(hi)?;
    probes.push((hi, hi_score));
    if hi_score >= target {
        while hi - lo > 1 {
            let mid = lo + (hi - lo) / 2;
            let s = score(mid)?;
            probes.push((mid, s));
            if s >= target {
                (hi, hi_score) = (mid, s);
            } else {
                lo = mid;
            }
        }
    }
    Ok(Reaching { count: hi, score: hi_score, probes })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// On a monotone score the smallest count; on one that dips across the target, a count
    /// that reaches it after one that misses; at either end, 0 or `n`; measurements counted.
    #[test]
    fn counts_by_bisection() {
        let run = |scores: &[f64], target: f64| {
            let r = count_reaching(scores.len() - 1, target, scores[0], |k| Ok::<_, ()>(scores[k])).unwrap();
            (r.count, r.probes.len())
        };
        let rising: Vec<f64> = (0..=64).map(|k| 10.0 + k as f64 * 0.5).collect();
        assert_eq!(run(&rising, 29.9), (40, 8));
        assert_eq!(run(&rising, 5.0), (0, 1));
        assert_eq!(run(&rising, 100.0), (64, 2));
        // a dip: 20 reaches, 21 misses, 22 reaches; a linear scan would say 20
        let mut dipping = rising.clone();
        dipping[20] = 30.0;
        assert_eq!(run(&dipping, 29.9), (40, 8));
        let r = count_reaching(64, 29.9, dipping[0], |k| Ok::<_, ()>(dipping[k])).unwrap();
        let measured: std::collections::HashMap<usize, f64> = r.probes.into_iter().collect();
        assert!(measured[&r.count] >= 29.9 && measured[&(r.count - 1)] < 29.9);
    }
}
