//! Histogram observers: percentile, entropy (KL divergence) and MSE.
//!
//! All three collect the same [`Histogram`]: a fixed number of bins (2048 by default) over a range
//! that always contains zero and grows when a batch falls outside it. Growth merges old bins by
//! an integer factor `k` into the wider grid (`k` old bins become one new bin, with the grid
//! aligned to the old edges), so no count is split between bins and memory never grows: the
//! fixed-size re-binning of PyTorch's `HistogramObserver`, without its interpolation. (ONNX
//! Runtime's `HistogramCollector` instead adds bins as the range grows.)
//!
//! For a symmetric scheme the histogram holds `|x|` over `[0, max|x|]` (TensorRT's entropy
//! calibration, ORT's symmetric percentile); for an asymmetric one it holds `x` over
//! `[min(x, 0), max(x, 0)]`. Every method proposes a clipping range and clamps it into the
//! observed `[min, max]`; constant data (`min == max`) gives `(min, max)` unchanged.
//!
//! # Methods
//! * **percentile** (99.99): the value below which `p` percent of `|x|` lies (symmetric), or the
//!   `(100 - p)/2` and `100 - (100 - p)/2` percentiles of `x` (asymmetric, ORT's split), each
//!   rounded outward to the edge of its bin (ORT takes the lower edge of both bins).
//! * **entropy**: TensorRT's calibration ("8-bit inference with TensorRT", GTC 2017), as ORT's
//!   `HistogramCollector.get_entropy_threshold` implements it. For each candidate window of `i`
//!   bins (`i` from the number of levels up to all the bins holding data), the reference
//!   distribution `p` is the window with the counts outside it added to its two end bins; the
//!   candidate `q` merges the window (without those outliers) into `L` levels (128 for symmetric
//!   8-bit, 255 for asymmetric 8-bit; 8 and 15 at 4 bits), the last level taking the remainder
//!   bins, and spreads each level's count evenly over the bins where `p` is non-zero (zero
//!   elsewhere, as TensorRT and MXNet do). The window with the least `KL(p || q)` wins. Windows
//!   keep zero at its relative position in the observed data: centred for data symmetric around
//!   zero (ORT's windows), `[0, i)` for `|x|` or non-negative data. Differences from ORT, all
//!   numerical: `q` is kept in floating point (ORT stores it in an int64 array, truncating); the
//!   share is written only where `p` is non-zero and into every bin of the last level (ORT writes
//!   it into every bin of a level but leaves the remainder bins at zero). Both are smoothed as
//!   ORT's `smooth_distribution` does (`calibrate.py`, from MXNet): `1e-4` into every empty bin,
//!   the same total taken evenly from the non-empty ones, so bins empty in both cost nothing.
//!   (qforge used to smooth `q` alone, scaling it by `1 - 1e-4 * zeros`: every empty bin of a
//!   window added to its divergence, which pulled windows in on sparse histograms; on data of six
//!   integer values it clipped half of them.) Spikes of one value are lowered before the search
//!   to the count of their larger nearest non-empty neighbour: the bin holding zero (NVIDIA
//!   pytorch-quantization's `bins[0] = bins[1]` for `|x|`, here wherever zero lies) and any bin
//!   holding more than half of all values (a saturated clip, a constant). Such a spike says
//!   nothing about where to clip and, merged into its level, dominated the divergence: ReLU
//!   outputs were clipped hard (digits_cnn lost 0.5 points to it), and data that is 99% one
//!   value lost over a third of the rest.
//! * **MSE**: the window (same candidates) whose range, quantized with the scheme, gives the least
//!   squared error on the observed values, as [`Histogram::quality`] prices it: a bin within one
//!   step of the grid exactly from its sum and sum of squares, a wider one as values spread evenly
//!   over it (the error model of PyTorch's `HistogramObserver._compute_quantization_error`). (The
//!   former model, `step^2 / 12` for every value inside the window, is wrong for values bunched at
//!   a grid point, such as the bulk of a heavy-tailed tensor at zero: on Cauchy data it chose a
//!   range 17 dB worse than min-max.)
//!
//! [`Histogram::quality`] also prices any range for the calibration warnings
//! ([`super::calibrate::assess`]); the histogram keeps each bin's sum and sum of squares and the
//! count of exact zeros for it.

use super::observer::{batch_range, BatchParts, ObserveError, Observer};
use super::scheme::{params_for_range, QType, Scheme};

/// The default number of histogram bins.
pub const DEFAULT_BINS: usize = 2048;

/// A streaming histogram with a fixed number of bins over a growing range that contains zero.
#[derive(Clone, Debug)]
pub struct Histogram {
    counts: Vec<u64>,
    /// Per bin, the sum and the sum of squares of its values (of `|x|` for an `|x|` histogram):
    /// with them [`Histogram::quality`] prices the error of a bin that lies within one step of the
    /// grid exactly, however the values spread inside it.
    moments: Vec<(f64, f64)>,
    /// Lower edge and bin width; `None` while every value seen was zero.
    grid: Option<(f64, f64)>,
    /// Zeros seen before the grid existed.
    pending_zeros: u64,
    /// Whether the histogram holds `|x|`.
    abs: bool,
    /// The signed extremes of all data.
    seen: Option<(f32, f32)>,
    total: u64,
    /// Values exactly zero (ReLU's floor, padding): zero is always representable, so they cost
    /// no quantization error ([`Histogram::quality`]).
    exact_zeros: u64,
    /// The batch being taken in parts ([`Histogram::observe_in_batch`]).
    parts: BatchParts,
}

impl Histogram {
    /// An empty histogram of `bins` bins over `x` (or `|x|` when `abs`).
    pub fn new(bins: usize, abs: bool) -> Histogram {
        Histogram {
            counts: vec![0; bins.max(1)],
            moments: vec![(0.0, 0.0); bins.max(1)],
            grid: None,
            pending_zeros: 0,
            abs,
            seen: None,
            total: 0,
            exact_zeros: 0,
            parts: BatchParts::default(),
        }
    }

    /// Takes part of batch `batch`; the batch is added whole once it is complete (the grid
    /// follows the first batch's range and widens by whole bins, so the result would otherwise
    /// depend on how the batch was split).
    pub fn observe_in_batch(&mut self, values: &[f32], batch: usize) -> Result<(), ObserveError> {
        match self.parts.push(values, batch)? {
            Some(done) => self.observe(&done),
            None => Ok(()),
        }
    }

    /// Adds the batch still held in parts, if any.
    pub fn finish(&mut self) -> Result<(), ObserveError> {
        match self.parts.take() {
            Some(done) => self.observe(&done),
            None => Ok(()),
        }
    }

    /// Adds a batch. On NaN or infinity nothing changes.
    pub fn observe(&mut self, values: &[f32]) -> Result<(), ObserveError> {
        let Some((bmin, bmax)) = batch_range(values)? else { return Ok(()) };
        self.seen = Some(match self.seen {
            None => (bmin, bmax),
            Some((a, b)) => (a.min(bmin), b.max(bmax)),
        });
        self.total += values.len() as u64;
        let (need_lo, need_hi) = if self.abs {
            (0.0, bmin.abs().max(bmax.abs()) as f64)
        } else {
            (bmin.min(0.0) as f64, bmax.max(0.0) as f64)
        };
        if need_hi - need_lo <= 0.0 {
            // an all-zero batch
            self.exact_zeros += values.len() as u64;
            match self.grid {
                None => self.pending_zeros += values.len() as u64,
                Some(_) => {
                    let i = self.index(0.0);
                    self.counts[i] += values.len() as u64;
                }
            }
            return Ok(());
        }
        match self.grid {
            None => {
                self.grid = Some((need_lo, (need_hi - need_lo) / self.counts.len() as f64));
                let i = self.index(0.0);
                self.counts[i] += std::mem::take(&mut self.pending_zeros);
            }
            Some((lo, w)) => {
                if need_lo < lo || need_hi > lo + w * self.counts.len() as f64 {
                    self.grow(need_lo, need_hi);
                }
            }
        }
        // zeros (half of a ReLU's output) are counted and go to zero's bin at once: they add
        // nothing to its moments, and one at a time they would chain every update through the
        // same bin
        let mut zeros = 0u64;
        for &x in values {
            if x == 0.0 {
                zeros += 1;
                continue;
            }
            let v = if self.abs { x.abs() } else { x };
            let i = self.index(v as f64);
            self.counts[i] += 1;
            let (v, m) = (v as f64, &mut self.moments[i]);
            m.0 += v;
            m.1 += v * v;
        }
        self.exact_zeros += zeros;
        let z = self.index(0.0);
        self.counts[z] += zeros;
        Ok(())
    }

    fn index(&self, v: f64) -> usize {
        let (lo, w) = self.grid.expect("index needs a grid");
        // the bin is floor((v - lo) / w) clamped to the grid; for a positive quotient `as`
        // truncates to the same integer, so no floor (a libm call on baseline x86-64) is needed
        let q = (v - lo) / w;
        if q <= 0.0 {
            0
        } else {
            (q as usize).min(self.counts.len() - 1)
        }
    }

    /// Widens the grid to cover `[need_lo, need_hi]` by merging `k` old bins into each new bin.
    fn grow(&mut self, need_lo: f64, need_hi: f64) {
        let (lo, w) = self.grid.expect("grow needs a grid");
        let b = self.counts.len() as f64;
        let hi = lo + w * b;
        let below = if need_lo < lo { ((lo - need_lo) / w).ceil() } else { 0.0 };
        let above = if need_hi > hi { ((need_hi - hi) / w).ceil() } else { 0.0 };
        let units = b + below + above;
        let k = (units / b).ceil().max(1.0);
        if k <= 1.0 {
            return;
        }
        // Spare old-bin widths: split between both sides when the data has a negative side,
        // else all above (so a histogram of non-negative values keeps its lower edge at zero).
        let slack = k * b - units;
        let j = below + if lo < 0.0 { (slack / 2.0).floor() } else { 0.0 };
        let old = std::mem::replace(&mut self.counts, vec![0; b as usize]);
        let old_moments = std::mem::replace(&mut self.moments, vec![(0.0, 0.0); b as usize]);
        let last = self.counts.len() - 1;
        for (i, (c, (m1, m2))) in old.into_iter().zip(old_moments).enumerate() {
            if c > 0 {
                let n = ((i as f64 + j) / k).floor();
                let t = (n.max(0.0) as usize).min(last);
                self.counts[t] += c;
                self.moments[t].0 += m1;
                self.moments[t].1 += m2;
            }
        }
        self.grid = Some((lo - j * w, w * k));
    }

    /// The bin counts.
    pub fn counts(&self) -> &[u64] {
        &self.counts
    }

    /// `(lower edge, bin width)`; `None` while every value seen was zero.
    pub fn grid(&self) -> Option<(f64, f64)> {
        self.grid
    }

    /// Number of values observed.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// The signed `(min, max)` of all values observed.
    pub fn seen(&self) -> Option<(f32, f32)> {
        self.seen
    }

    pub fn is_abs(&self) -> bool {
        self.abs
    }

    /// The bin edge at which a fraction `q` of the histogram's mass is reached, rounded outward:
    /// the lower edge of the bin holding the quantile when `upper` is false, its upper edge
    /// when true (so the range between two such edges keeps at least the mass between the two
    /// quantiles). `None` when empty.
    pub fn quantile_edge(&self, q: f64, upper: bool) -> Option<f64> {
        if self.total == 0 {
            return None;
        }
        let Some((lo, w)) = self.grid else { return Some(0.0) };
        let target = q.clamp(0.0, 1.0) * self.total as f64;
        let mut cum = 0.0;
        let mut last = 0;
        for (i, &c) in self.counts.iter().enumerate() {
            if c == 0 {
                continue;
            }
            last = i;
            cum += c as f64;
            if cum >= target {
                break;
            }
        }
        Some(lo + (last + upper as usize) as f64 * w)
    }

    /// The bins `[first, end)` that hold data (zero included), and the position of zero in bins
    /// from `first`.
    fn data_bins(&self) -> (usize, usize, f64) {
        let (lo, w) = self.grid.expect("data_bins needs a grid");
        let (smin, smax) = self.seen.expect("data_bins needs data");
        let (a, b) = if self.abs {
            (0.0, smin.abs().max(smax.abs()) as f64)
        } else {
            (smin.min(0.0) as f64, smax.max(0.0) as f64)
        };
        let (first, end) = (self.index(a), self.index(b) + 1);
        (first, end, (-lo / w - first as f64).max(0.0))
    }

    /// The candidate window of `i` bins inside the data bins `[first, end)`: zero keeps its
    /// relative position (`z` bins from `first`).
    fn window(i: usize, first: usize, end: usize, z: f64) -> (usize, usize) {
        let n = end - first;
        let start = (z * (1.0 - i as f64 / n as f64)).round().max(0.0) as usize;
        let start = first + start.min(n - i);
        (start, start + i)
    }

    /// Converts a window of bins to a range, clamped into the observed values (for `|x|`
    /// histograms the window `[0, T]` means `[-T, T]`).
    fn window_range(&self, start: usize, end: usize) -> (f32, f32) {
        let (lo, w) = self.grid.expect("window_range needs a grid");
        let (a, b) = (lo + start as f64 * w, lo + end as f64 * w);
        let (a, b) = if self.abs { (-b, b) } else { (a, b) };
        self.clamp_to_seen(a, b)
    }

    fn clamp_to_seen(&self, a: f64, b: f64) -> (f32, f32) {
        let (smin, smax) = self.seen.expect("clamp needs data");
        let (a, b) = (a.min(b), a.max(b));
        ((a as f32).clamp(smin, smax), (b as f32).clamp(smin, smax))
    }

    /// The range every method returns when there is nothing to choose: no data, all zeros, or a
    /// constant.
    fn trivial_range(&self) -> Option<Option<(f32, f32)>> {
        match self.seen {
            None => Some(None),
            Some((a, b)) if a == b || self.grid.is_none() => Some(Some((a, b))),
            Some(_) => None,
        }
    }

    /// What quantizing the observed values on the grid of `scale` and `zero_point` over the codes
    /// `[qmin, qmax]` does to them, from the histogram. A value within half a step of the grid
    /// costs its squared distance to the nearest grid point (the grid is `scale * k` whatever the
    /// zero point); one beyond is saturated (clipped) and costs its squared distance to the nearest
    /// end of the grid. A bin whose values all round to one grid point, or all saturate, is priced
    /// exactly from its sum and sum of squares; a bin across grid cells as if its values spread
    /// evenly over it (clamped to the observed extremes; exact zeros are exact, zero being a code),
    /// the rounding error integrated over it (`scale^2 / 12` per whole step). The signal is the
    /// exact sum of squares. For a histogram of `|x|` (symmetric schemes) the grid is taken as
    /// symmetric, ending at `(qmax - zero_point) * scale`. `None` before any value was observed.
    pub fn quality(&self, scale: f32, zero_point: i32, qmin: i32, qmax: i32) -> Option<RangeQuality> {
        let (smin, smax) = self.seen?;
        let s = scale as f64;
        let top = (qmax - zero_point) as f64 * s;
        let bottom = if self.abs { -top } else { (qmin - zero_point) as f64 * s };
        // Half a step beyond the grid is rounding (the zero point's own rounding moves the grid by
        // up to that much); 1% of a step more absorbs float error in the scale.
        let (lo_edge, hi_edge) = (bottom - 0.51 * s, top + 0.51 * s);
        let (dmin, dmax) = if self.abs { (0.0, smin.abs().max(smax.abs()) as f64) } else { (smin as f64, smax as f64) };
        let (mut noise, mut clipped) = (0f64, 0f64);
        // sum of (x - e)^2 over a bin's values, from its moments
        let sq_dist = |c: f64, (m1, m2): (f64, f64), e: f64| (m2 - 2.0 * e * m1 + c * e * e).max(0.0);
        if let Some((lo, w)) = self.grid {
            let zero_bin = self.index(0.0);
            for (i, (&n, &m)) in self.counts.iter().zip(&self.moments).enumerate() {
                if n == 0 {
                    continue;
                }
                let c = n as f64;
                let (a, b) = ((lo + i as f64 * w).clamp(dmin, dmax), (lo + (i + 1) as f64 * w).clamp(dmin, dmax));
                if a > hi_edge {
                    // saturated at the top of the grid
                    noise += sq_dist(c, m, top);
                    clipped += c;
                } else if b < lo_edge {
                    noise += sq_dist(c, m, bottom);
                    clipped += c;
                } else if a >= lo_edge && b <= hi_edge && (a / s).round() == (b / s).round() {
                    // every value rounds to the same grid point
                    noise += sq_dist(c, m, s * (a / s).round());
                } else {
                    // across grid cells or an end of the grid: the values (exact zeros aside, which
                    // round to zero exactly) spread evenly over the bin
                    let c = if i == zero_bin { c - self.exact_zeros.min(n) as f64 } else { c };
                    let len = b - a;
                    if len <= 0.0 {
                        let r = a.clamp(bottom, top);
                        let r = a - s * (r / s).round();
                        noise += c * r * r;
                        continue;
                    }
                    let (u, v) = (a.max(lo_edge), b.min(hi_edge));
                    if v > u {
                        noise += c / len * (rounding_integral(v, s) - rounding_integral(u, s));
                    }
                    // beyond an end `e`: the mean of (x - e)^2 over [u, v] is ((v-e)^3 - (u-e)^3) / 3 / len
                    let beyond = |u: f64, v: f64, e: f64| ((v - e).powi(3) - (u - e).powi(3)) / 3.0;
                    if b > hi_edge {
                        let u = a.max(hi_edge);
                        noise += c / len * beyond(u, b, top);
                        clipped += c * (b - u) / len;
                    }
                    if a < lo_edge {
                        let v = b.min(lo_edge);
                        noise += c / len * beyond(a, v, bottom).abs();
                        clipped += c * (v - a) / len;
                    }
                }
            }
        }
        let n = self.total as f64;
        let signal: f64 = self.moments.iter().map(|m| m.1).sum();
        let sqnr_db = if noise <= 0.0 { f64::INFINITY } else { 10.0 * (signal / noise).log10() };
        Some(RangeQuality { clipped: if n > 0.0 { clipped / n } else { 0.0 }, sqnr_db, error: noise })
    }

    /// TensorRT's entropy window with `levels` quantized levels (see the module docs).
    pub fn entropy_window(&self, levels: usize) -> (usize, usize) {
        let b = self.counts.len();
        let (first, data_end, z) = self.data_bins();
        let n = data_end - first;
        let levels = levels.max(1);
        // A spike of one value says nothing about where to clip (any window holds it within half
        // a step, zero exactly) and, merged into its level, dominates the divergence, pulling the
        // window in around it (TensorRT's algorithm assumes a smooth histogram). So the bin
        // holding zero (ReLU's floor, padding) and any bin holding more than half of all values (a
        // saturated clip, a constant channel) are lowered to the count of their larger nearest
        // non-empty neighbour: NVIDIA pytorch-quantization's entropy calibrator does this for the
        // zero bin of `|x|` (`bins[0] = bins[1]`); nearest non-empty bins, so that discrete data
        // such as 8-bit pixels, with empty bins between values, keeps its spikes.
        let mut counts = self.counts.clone();
        let zero_bin = first + z.floor() as usize;
        let majority = (first..data_end).find(|&i| counts[i] > self.total / 2);
        for spike in std::iter::once(zero_bin).chain(majority) {
            if spike >= data_end {
                continue;
            }
            let left = counts[first..spike].iter().rev().find(|&&c| c > 0).copied();
            let right = counts[spike + 1..data_end].iter().find(|&&c| c > 0).copied();
            if let Some(c) = left.max(right) {
                counts[spike] = counts[spike].min(c);
            }
        }
        let mut prefix = Vec::with_capacity(b + 1);
        prefix.push(0u64);
        for &c in &counts {
            prefix.push(prefix.last().unwrap() + c);
        }
        let mut p = vec![0.0f64; b];
        let mut q = vec![0.0f64; b];
        let mut best = (f64::INFINITY, (first, data_end));
        for i in levels.min(n)..=n {
            let levels = levels.min(i);
            let (start, end) = Self::window(i, first, data_end, z);
            let slice = &counts[start..end];
            let p = &mut p[..i];
            let q = &mut q[..i];
            for (pj, &c) in p.iter_mut().zip(slice) {
                *pj = c as f64;
            }
            p[0] += prefix[start] as f64;
            p[i - 1] += (prefix[b] - prefix[end]) as f64;
            let merged = i / levels;
            for g in 0..levels {
                let gs = g * merged;
                let ge = if g == levels - 1 { i } else { gs + merged };
                let sum = (prefix[start + ge] - prefix[start + gs]) as f64;
                let nonzero = p[gs..ge].iter().filter(|&&v| v != 0.0).count();
                for j in gs..ge {
                    q[j] = if p[j] != 0.0 && nonzero > 0 { sum / nonzero as f64 } else { 0.0 };
                }
            }
            let kl = kl_divergence(p, q);
            if kl < best.0 {
                best = (kl, (start, end));
            }
        }
        best.1
    }

    /// The window whose range, quantized with `scheme`, gives the least squared error on the
    /// observed values, as [`Histogram::quality`] prices it (see the module docs). Window sizes are
    /// searched at a stride of 1/256 of the data bins, then bin by bin around the best.
    pub fn mse_window(&self, scheme: Scheme) -> (usize, usize) {
        let (first, data_end, zero) = self.data_bins();
        let n = data_end - first;
        let (qmin, qmax) = scheme.qtype.range();
        let error = |i: usize| -> f64 {
            let (start, end) = Self::window(i, first, data_end, zero);
            let (a, b) = self.window_range(start, end);
            params_for_range(a, b, scheme)
                .ok()
                .and_then(|p| self.quality(p.scale, p.zero_point, qmin, qmax))
                .map_or(f64::INFINITY, |q| q.error)
        };
        let stride = (n / 256).max(1);
        let mut best = (f64::INFINITY, n);
        for i in (stride..=n).step_by(stride).chain(std::iter::once(n)) {
            let e = error(i);
            if e < best.0 {
                best = (e, i);
            }
        }
        let around = best.1;
        for i in around.saturating_sub(stride - 1).max(1)..=(around + stride - 1).min(n) {
            let e = error(i);
            if e < best.0 || (e == best.0 && i < best.1) {
                best = (e, i);
            }
        }
        Self::window(best.1, first, data_end, zero)
    }
}

/// `integral of e(t)^2 dt` from `-s/2` to `x`, where `e(t) = t - s * round(t / s)` is the error of
/// rounding `t` to the grid `s * k`: `s^3 / 12` per whole step, and `(r^3 + s^3 / 8) / 3` over the
/// last partial step `[-s/2, r]`.
fn rounding_integral(x: f64, s: f64) -> f64 {
    let k = ((x + s / 2.0) / s).floor();
    let r = x - k * s;
    k * s * s * s / 12.0 + (r * r * r + s * s * s / 8.0) / 3.0
}

/// What a quantization grid does to a tensor's calibration values ([`Histogram::quality`]).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RangeQuality {
    /// Share of the values saturated: more than half a step outside the grid.
    pub clipped: f64,
    /// The tensor's own SQNR under the grid, `10 log10(sum x^2 / sum err^2)` (infinite when the
    /// error is zero).
    pub sqnr_db: f64,
    /// `sum err^2` over the values.
    pub error: f64,
}

/// `KL(p || q)` of two unnormalised distributions over the same bins, each smoothed first as
/// ONNX Runtime's `smooth_distribution` (`onnxruntime/python/tools/quantization/calibrate.py`,
/// from MXNet's `_smooth_distribution`) does it on the counts: every empty bin gets `eps = 1e-4`
/// and every non-empty one gives up `eps * zeros / nonzeros`, so the total is kept. Where both
/// are empty the bin then contributes (almost) nothing, and where `p` has mass that `q` lacks the
/// divergence is large. Infinite when either is all zero.
fn kl_divergence(p: &[f64], q: &[f64]) -> f64 {
    const EPS: f64 = 1e-4;
    // (eps1, sum) of a distribution's smoothing; `None` when it is all zero
    let smoothing = |v: &[f64]| -> Option<(f64, f64)> {
        let nonzero = v.iter().filter(|&&x| x > 0.0).count();
        if nonzero == 0 {
            return None;
        }
        let zeros = (v.len() - nonzero) as f64;
        Some((EPS * zeros / nonzero as f64, v.iter().sum()))
    };
    let (Some((e1p, sp)), Some((e1q, sq))) = (smoothing(p), smoothing(q)) else { return f64::INFINITY };
    // a non-empty bin never drops below `EPS` (ORT asserts it stays positive; counts of a
    // histogram are at least 1, but q's even shares can be smaller)
    let smooth = |x: f64, e1: f64| if x > 0.0 { (x - e1).max(EPS) } else { EPS };
    let mut kl = 0.0;
    for (&pi, &qi) in p.iter().zip(q) {
        let pp = smooth(pi, e1p) / sp;
        let qq = smooth(qi, e1q) / sq;
        kl += pp * (pp / qq).ln();
    }
    kl
}

/// Histogram observer keeping a percentile of the values (ORT's `PercentileCalibrater`).
#[derive(Clone, Debug)]
pub struct PercentileObserver {
    hist: Histogram,
    percentile: f64,
}

impl PercentileObserver {
    pub const DEFAULT_PERCENTILE: f64 = 99.99;

    /// `percentile` in `(0, 100]`; `symmetric` works on `|x|`.
    pub fn new(percentile: f64, symmetric: bool, bins: usize) -> Result<PercentileObserver, ObserveError> {
        if !(percentile > 0.0 && percentile <= 100.0) {
            return Err(ObserveError::Config(format!("percentile {percentile} is not in (0, 100]")));
        }
        Ok(PercentileObserver { hist: Histogram::new(bins, symmetric), percentile })
    }

    pub fn histogram(&self) -> &Histogram {
        &self.hist
    }
}

impl Observer for PercentileObserver {
    fn observe(&mut self, values: &[f32]) -> Result<(), ObserveError> {
        self.hist.observe(values)
    }

    fn histogram(&self) -> Option<&Histogram> {
        Some(&self.hist)
    }

    fn histogram_mut(&mut self) -> Option<&mut Histogram> {
        Some(&mut self.hist)
    }

    fn range(&self) -> Option<(f32, f32)> {
        if let Some(r) = self.hist.trivial_range() {
            return r;
        }
        let h = &self.hist;
        let (a, b) = if h.abs {
            let t = h.quantile_edge(self.percentile / 100.0, true)?;
            (-t, t)
        } else {
            let cut = (100.0 - self.percentile) / 200.0;
            (h.quantile_edge(cut, false)?, h.quantile_edge(1.0 - cut, true)?)
        };
        Some(h.clamp_to_seen(a, b))
    }
}

/// Histogram observer choosing the range of least KL divergence (TensorRT's entropy
/// calibration).
#[derive(Clone, Debug)]
pub struct EntropyObserver {
    hist: Histogram,
    levels: usize,
}

impl EntropyObserver {
    /// `symmetric` works on `|x|` with `2^(bits-1)` levels (128 at 8 bits); otherwise on `x`
    /// with `2^bits - 1` levels (255).
    pub fn new(symmetric: bool, bits: u32, bins: usize) -> EntropyObserver {
        let levels = if symmetric { 1usize << (bits - 1) } else { (1usize << bits) - 1 };
        EntropyObserver { hist: Histogram::new(bins, symmetric), levels }
    }

    pub fn histogram(&self) -> &Histogram {
        &self.hist
    }
}

impl Observer for EntropyObserver {
    fn observe(&mut self, values: &[f32]) -> Result<(), ObserveError> {
        self.hist.observe(values)
    }

    fn histogram(&self) -> Option<&Histogram> {
        Some(&self.hist)
    }

    fn histogram_mut(&mut self) -> Option<&mut Histogram> {
        Some(&mut self.hist)
    }

    fn range(&self) -> Option<(f32, f32)> {
        if let Some(r) = self.hist.trivial_range() {
            return r;
        }
        let (s, e) = self.hist.entropy_window(self.levels);
        Some(self.hist.window_range(s, e))
    }
}

/// Histogram observer choosing the clipping range of least quantization MSE.
#[derive(Clone, Debug)]
pub struct MseObserver {
    hist: Histogram,
    scheme: Scheme,
}

impl MseObserver {
    /// `symmetric` works on `|x|` and prices windows with the signed symmetric scheme of `bits`
    /// (i8, i4); otherwise on `x` with the unsigned asymmetric one (u8, u4).
    pub fn new(symmetric: bool, bits: u32, bins: usize) -> MseObserver {
        let scheme = match (symmetric, bits) {
            (true, 4) => Scheme::symmetric(QType::I4),
            (true, _) => Scheme::symmetric(QType::I8),
            (false, 4) => Scheme::asymmetric(QType::U4),
            (false, _) => Scheme::asymmetric(QType::U8),
        };
        MseObserver { hist: Histogram::new(bins, symmetric), scheme }
    }

    pub fn histogram(&self) -> &Histogram {
        &self.hist
    }
}

impl Observer for MseObserver {
    fn observe(&mut self, values: &[f32]) -> Result<(), ObserveError> {
        self.hist.observe(values)
    }

    fn histogram(&self) -> Option<&Histogram> {
        Some(&self.hist)
    }

    fn histogram_mut(&mut self) -> Option<&mut Histogram> {
        Some(&mut self.hist)
    }

    fn range(&self) -> Option<(f32, f32)> {
        if let Some(r) = self.hist.trivial_range() {
            return r;
        }
        let (s, e) = self.hist.mse_window(self.scheme);
        Some(self.hist.window_range(s, e))
    }
}

#[cfg(test)]
mod tests {
    use super::super::observer::{CalibMethod, ObserverConfig};
    use super::*;

    /// A deterministic standard normal sample (xorshift64* and Box-Muller).
    fn gaussian(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed.max(1);
        let mut uniform = move || {
            s ^= s >> 12;
            s ^= s << 25;
            s ^= s >> 27;
            ((s.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 + 0.5) / (1u64 << 53) as f64
        };
        (0..n)
            .map(|_| {
                let (u, v) = (uniform(), uniform());
                ((-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()) as f32
            })
            .collect()
    }

    fn observe_all(o: &mut dyn Observer, data: &[f32], batch: usize) {
        for b in data.chunks(batch) {
            o.observe(b).unwrap();
        }
    }

    /// 200k N(0, 1) samples plus three outliers at +40 and one at -30, in batches of 1000.
    fn gaussian_with_outliers() -> Vec<f32> {
        let mut x = gaussian(200_000, 7);
        x[1234] = 40.0;
        x[99_999] = 40.0;
        x[150_000] = 40.0;
        x[170_001] = -30.0;
        x
    }

    #[test]
    fn clipping_methods_ignore_outliers_minmax_does_not() {
        let data = gaussian_with_outliers();
        for symmetric in [true, false] {
            let cfg = |m| ObserverConfig { method: m, symmetric, ..ObserverConfig::default() };
            let mut mm = cfg(CalibMethod::MinMax).build().unwrap();
            observe_all(mm.as_mut(), &data, 1000);
            assert_eq!(mm.range(), Some((-30.0, 40.0)));
            for m in [CalibMethod::Percentile, CalibMethod::Entropy, CalibMethod::Mse] {
                let mut o = cfg(m).build().unwrap();
                observe_all(o.as_mut(), &data, 1000);
                let (lo, hi) = o.range().unwrap();
                assert!(hi > 2.0 && lo < -2.0, "{m} symmetric={symmetric}: ({lo}, {hi})");
                if m == CalibMethod::Mse {
                    // MSE trades the outliers' clipping error against a finer step: with three
                    // outliers in 200k values it clips, but far less (see `mse_optimum`)
                    assert!(hi < 39.0 && lo >= -30.0, "{m} symmetric={symmetric}: ({lo}, {hi})");
                } else if m == CalibMethod::Entropy {
                    // below half the nearest outlier's magnitude, yet keeping most of the Gaussian
                    // (with ONNX Runtime's smoothing the window reaches about 10: the former
                    // smoothing, which penalised every empty bin of q, pulled it under 10)
                    assert!(hi < 15.0 && lo > -15.0, "{m} symmetric={symmetric}: ({lo}, {hi})");
                } else {
                    // well inside the outliers, yet keeping most of the Gaussian
                    assert!(hi < 10.0 && lo > -10.0, "{m} symmetric={symmetric}: ({lo}, {hi})");
                }
                if symmetric {
                    assert_eq!(lo, -hi, "{m}");
                }
            }
        }
    }

    #[test]
    fn percentile_matches_the_sample_quantile() {
        let data = gaussian(100_000, 11);
        let mut sorted = data.clone();
        sorted.sort_by(f32::total_cmp);
        for (p, symmetric) in [(99.0, false), (99.9, false), (99.0, true)] {
            let mut o = PercentileObserver::new(p, symmetric, DEFAULT_BINS).unwrap();
            observe_all(&mut o, &data, 4096);
            let (lo, hi) = o.range().unwrap();
            let bin = o.histogram().grid().unwrap().1 as f32;
            if symmetric {
                let mut abs: Vec<f32> = data.iter().map(|x| x.abs()).collect();
                abs.sort_by(f32::total_cmp);
                let t = abs[(abs.len() as f64 * p / 100.0) as usize];
                assert!((hi - t).abs() <= 2.0 * bin, "p={p}: {hi} vs {t}");
                assert_eq!(lo, -hi);
            } else {
                let cut = (100.0 - p) / 200.0;
                let a = sorted[(sorted.len() as f64 * cut) as usize];
                let b = sorted[(sorted.len() as f64 * (1.0 - cut)) as usize];
                assert!(
                    (lo - a).abs() <= 2.0 * bin && (hi - b).abs() <= 2.0 * bin,
                    "p={p}: ({lo}, {hi}) vs ({a}, {b})"
                );
            }
        }
        // 100 keeps everything
        let mut o = PercentileObserver::new(100.0, false, DEFAULT_BINS).unwrap();
        o.observe(&data).unwrap();
        assert_eq!(o.range(), Some((sorted[0], sorted[sorted.len() - 1])));
    }

    #[test]
    fn entropy_keeps_the_whole_range_of_uniform_data() {
        // no outliers: the divergence is smallest with (nearly) no clipping
        let data: Vec<f32> = (0..100_000).map(|i| (i as f32 / 99_999.0) * 2.0 - 1.0).collect();
        for symmetric in [true, false] {
            let mut o = EntropyObserver::new(symmetric, 8, DEFAULT_BINS);
            observe_all(&mut o, &data, 1000);
            let (lo, hi) = o.range().unwrap();
            assert!(hi > 0.9 && lo < -0.9, "symmetric={symmetric}: ({lo}, {hi})");
        }
    }

    #[test]
    fn entropy_ignores_the_spike_of_relu_zeros() {
        // half exact zeros (ReLU's floor), half uniform on (0, 1]: nothing to clip, and the spike
        // at zero must not pull the window in (it did before the zero bin was flattened)
        let data: Vec<f32> =
            (0..100_000).map(|i| if i % 2 == 0 { 0.0 } else { (i as f32 + 1.0) / 100_000.0 }).collect();
        for symmetric in [true, false] {
            let mut o = EntropyObserver::new(symmetric, 8, DEFAULT_BINS);
            observe_all(&mut o, &data, 1000);
            let (_, hi) = o.range().unwrap();
            assert!(hi > 0.9, "symmetric={symmetric}: {hi}");
        }
        // discrete data with empty bins between values (8-bit pixels / 16 levels) keeps its range
        let pixels: Vec<f32> = (0..10_000).map(|i| ((i * 7) % 17) as f32 / 16.0).collect();
        let mut o = EntropyObserver::new(true, 8, DEFAULT_BINS);
        observe_all(&mut o, &pixels, 1000);
        assert!(o.range().unwrap().1 > 0.9, "{:?}", o.range());
    }

    #[test]
    fn entropy_and_mse_on_relu_outputs() {
        // non-negative data (ReLU): the window starts at zero
        let data: Vec<f32> = gaussian_with_outliers().into_iter().map(|x| x.max(0.0)).collect();
        for m in [CalibMethod::Entropy, CalibMethod::Mse, CalibMethod::Percentile] {
            let mut o = ObserverConfig::new(m).build().unwrap();
            observe_all(o.as_mut(), &data, 1000);
            let (lo, hi) = o.range().unwrap();
            assert_eq!(lo, 0.0, "{m}");
            // entropy: below half the outlier at 40 (see `clipping_methods_ignore_outliers_...`)
            let limit = match m {
                CalibMethod::Mse => 39.0,
                CalibMethod::Entropy => 15.0,
                _ => 10.0,
            };
            assert!(hi > 2.0 && hi < limit, "{m}: {hi}");
        }
    }

    #[test]
    fn mse_optimum() {
        // Symmetric 8-bit: the expected error of clipping at T is about N * (T/127)^2 / 12 for the
        // bulk plus (M - T)^2 for one outlier at M. With N = 12 * 127^2 this is T^2 + (M - T)^2,
        // least near T = M / 2. The observer must find the threshold whose actual squared error
        // (quantize-dequantize of the data) is least: found here by scanning T.
        let n = 12 * 127 * 127;
        let mut data: Vec<f32> = (0..n).map(|i| (i as f32 / n as f32) - 0.5).collect();
        data.push(40.0);
        let error = |t: f32| -> f64 {
            let p = super::params_for_range(-t, t, Scheme::symmetric(QType::I8)).unwrap();
            data.iter()
                .map(|&x| {
                    let q = qforge_ir::numerics::quantize(x, p.scale, p.zero_point, qforge_ir::DType::I8);
                    (x as f64 - qforge_ir::numerics::dequantize(q, p.scale, p.zero_point) as f64).powi(2)
                })
                .sum()
        };
        let best = (1800..2200).map(|k| k as f32 / 100.0).min_by(|&a, &b| error(a).total_cmp(&error(b))).unwrap();
        let mut o = MseObserver::new(true, 8, DEFAULT_BINS);
        observe_all(&mut o, &data, 10_000);
        let (lo, hi) = o.range().unwrap();
        assert!((hi - best).abs() < 0.1, "{hi} vs the scanned optimum {best}");
        assert!(error(hi) <= error(20.0), "{hi}: {} vs {}", error(hi), error(20.0));
        assert_eq!(lo, -0.5);
    }

    #[test]
    fn mse_prefers_less_clipping_with_more_bits() {
        let data = gaussian(50_000, 3);
        let range = |bits| {
            let mut o = MseObserver::new(true, bits, DEFAULT_BINS);
            o.observe(&data).unwrap();
            o.range().unwrap().1
        };
        let (r4, r8) = (range(4), range(8));
        assert!(r4 < r8, "4-bit {r4} vs 8-bit {r8}");
        assert!(r4 > 1.0 && r8 > 2.5, "{r4} {r8}");
    }

    #[test]
    fn histogram_memory_is_bounded() {
        let mut h = Histogram::new(DEFAULT_BINS, false);
        let mut n = 0u64;
        for k in 0..500 {
            // ranges that keep growing on both sides, and shrinking batches
            let scale = 1.0 + k as f32 * 0.37;
            let batch: Vec<f32> = gaussian(257, k + 1).into_iter().map(|x| x * scale).collect();
            h.observe(&batch).unwrap();
            n += batch.len() as u64;
            assert_eq!(h.counts().len(), DEFAULT_BINS);
        }
        assert_eq!(h.total(), n);
        assert_eq!(h.counts().iter().sum::<u64>(), n);
        let (lo, w) = h.grid().unwrap();
        let (smin, smax) = h.seen().unwrap();
        assert!(lo <= smin as f64 && lo + w * DEFAULT_BINS as f64 >= smax as f64);
        assert!(lo <= 0.0);
    }

    #[test]
    fn growth_merges_bins_exactly() {
        let mut h = Histogram::new(8, false);
        h.observe(&[0.0, 0.5, 1.5, 3.9, 4.0]).unwrap(); // [0, 4], width 0.5
        assert_eq!(h.grid(), Some((0.0, 0.5)));
        assert_eq!(h.counts(), &[1, 1, 0, 1, 0, 0, 0, 2]);
        // 6.0 needs 4 more bins: k = 2, grid [0, 8] of width 1, bins merged pairwise
        h.observe(&[6.0]).unwrap();
        assert_eq!(h.grid(), Some((0.0, 1.0)));
        assert_eq!(h.counts(), &[2, 1, 0, 2, 0, 0, 1, 0]);
        // a negative value: slack split on both sides once the data has a negative side
        h.observe(&[-1.0]).unwrap();
        let (lo, w) = h.grid().unwrap();
        assert_eq!(w, 2.0);
        assert!(lo <= -1.0);
        assert_eq!(h.counts().iter().sum::<u64>(), 7);
        // zeros before any other value are kept
        let mut h = Histogram::new(4, true);
        h.observe(&[0.0, 0.0]).unwrap();
        assert_eq!(h.grid(), None);
        assert_eq!(h.quantile_edge(0.5, true), Some(0.0));
        h.observe(&[-2.0]).unwrap();
        assert_eq!(h.grid(), Some((0.0, 0.5)));
        assert_eq!(h.counts(), &[2, 0, 0, 1]);
        assert!(h.is_abs());
    }

    #[test]
    fn kl_divergence_basics() {
        assert_eq!(kl_divergence(&[1.0, 2.0], &[2.0, 4.0]), 0.0);
        assert!(kl_divergence(&[1.0, 1.0], &[0.0, 0.0]).is_infinite());
        let d = kl_divergence(&[1.0, 1.0], &[1.0, 0.0]);
        assert!(d.is_finite() && d > 1.0, "{d}");
        assert!(kl_divergence(&[1.0, 3.0], &[3.0, 1.0]) > kl_divergence(&[1.0, 3.0], &[2.0, 2.0]));
    }

    #[test]
    fn symmetric_ranges_are_clamped_to_the_data() {
        // mostly positive data with a small negative tail: the symmetric threshold is clamped
        // to the observed minimum on the negative side
        let data: Vec<f32> = gaussian(20_000, 5).into_iter().map(|x| x.abs() - 0.1).collect();
        for m in [CalibMethod::Percentile, CalibMethod::Entropy, CalibMethod::Mse] {
            let mut o = ObserverConfig { method: m, symmetric: true, ..ObserverConfig::default() }.build().unwrap();
            o.observe(&data).unwrap();
            let (lo, hi) = o.range().unwrap();
            assert!(lo >= -0.1 - 1e-6, "{m}: {lo}");
            assert!(hi > 1.0, "{m}: {hi}");
        }
    }
}
