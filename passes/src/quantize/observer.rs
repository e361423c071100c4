//! Calibration observers: they watch the values a tensor takes on the calibration set, batch by
//! batch, and propose the range `[min, max]` a [`super::scheme`] turns into a scale and zero point.
//!
//! Every observer streams with bounded memory: a few numbers ([`MinMax`], [`Ema`]) or a histogram
//! of a fixed number of bins ([`super::histogram`]: percentile, entropy, MSE). No observer keeps
//! the values themselves.
//!
//! NaN or infinity in calibration data is an error ([`ObserveError::NonFinite`]) and leaves the
//! observer as it was; the caller adds the node's name.

use super::histogram::{EntropyObserver, MseObserver, PercentileObserver};
use qforge_ir::multiversion;
use std::fmt;
use std::str::FromStr;

/// Something an observer could not accept.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum ObserveError {
    /// The batch holds NaN or an infinity: the model overflowed on a calibration sample, or the
    /// sample itself is broken.
    #[error(
        "calibration data contains {what} (element {index} of a batch of {len}; {count} non-finite values in the batch)"
    )]
    NonFinite { what: &'static str, index: usize, count: usize, len: usize },
    /// The batch does not fit the shape the observer expects (per-channel observers).
    #[error("calibration batch does not fit: {0}")]
    Shape(String),
    /// The observer's settings are invalid.
    #[error("invalid observer setting: {0}")]
    Config(String),
}

/// A calibration observer.
pub trait Observer: Send + fmt::Debug {
    /// Takes one batch of values (any shape, flattened). On error the observer is unchanged.
    fn observe(&mut self, values: &[f32]) -> Result<(), ObserveError>;

    /// Takes part of batch `batch` (a calibration run's share of it; the parts of one batch come
    /// one after another, batches in increasing order). Observers that accumulate values treat a
    /// part as more values; one that updates once per batch ([`Ema`]) merges the parts first.
    /// An observer with a histogram ([`Observer::histogram_mut`]) takes each batch whole
    /// ([`super::histogram::Histogram::observe_in_batch`]).
    fn observe_in_batch(&mut self, values: &[f32], batch: usize) -> Result<(), ObserveError> {
        match self.histogram_mut() {
            Some(h) => h.observe_in_batch(values, batch),
            None => self.observe(values),
        }
    }

    /// Ends observation: a batch still held in parts is taken. Calibration calls it once, after
    /// the last batch and before [`Observer::range`].
    fn finish(&mut self) -> Result<(), ObserveError> {
        match self.histogram_mut() {
            Some(h) => h.finish(),
            None => Ok(()),
        }
    }

    /// The proposed range, `None` before any value was observed. The range is not yet widened to
    /// contain zero: the scheme does that.
    fn range(&self) -> Option<(f32, f32)>;

    /// The histogram of the values seen, for observers that keep one (percentile, entropy, MSE).
    fn histogram(&self) -> Option<&super::histogram::Histogram> {
        None
    }

    /// The same histogram, to observe into.
    fn histogram_mut(&mut self) -> Option<&mut super::histogram::Histogram> {
        None
    }
}

multiversion! {
    baseline = range_and_finite_baseline;
    /// The running `(min, max)` of `values` and whether every value is finite, in sixteen
    /// independent lanes (one AVX-512 vector) folded at the end: the same min and max as one
    /// running pair, in a loop the compiler vectorizes.
    fn range_and_finite(values: &[f32]) -> (f32, f32, bool) {
        const LANES: usize = 16;
        let mut lanes_lo = [f32::INFINITY; LANES];
        let mut lanes_hi = [f32::NEG_INFINITY; LANES];
        let mut lanes_finite = [true; LANES];
        let chunks = values.chunks_exact(LANES);
        let rest = chunks.remainder();
        // written as compares and selects (`x < lo`, `|x| <= MAX`: false for NaN and
        // infinities) rather than `f32::min` and `is_finite`, which do not map onto vector
        // min/compare instructions; a NaN never replaces an extreme and is caught by `finite`,
        // so the result is the same
        for c in chunks {
            let lanes = lanes_lo.iter_mut().zip(&mut lanes_hi).zip(&mut lanes_finite);
            for (((lo, hi), finite), &x) in lanes.zip(c) {
                *finite &= x.abs() <= f32::MAX;
                *lo = if x < *lo { x } else { *lo };
                *hi = if x > *hi { x } else { *hi };
            }
        }
        let mut finite = lanes_finite.iter().all(|&f| f);
        let mut lo = lanes_lo.iter().fold(f32::INFINITY, |a, &b| a.min(b));
        let mut hi = lanes_hi.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
        for &x in rest {
            finite &= x.is_finite();
            lo = lo.min(x);
            hi = hi.max(x);
        }
        (lo, hi, finite)
    }
}

/// The batch's `(min, max)` (`None` for an empty batch), or the error for its first NaN or
/// infinity. One pass over the data.
pub(crate) fn batch_range(values: &[f32]) -> Result<Option<(f32, f32)>, ObserveError> {
    let (lo, hi, finite) = range_and_finite(values);
    if !finite {
        let index = values.iter().position(|x| !x.is_finite()).unwrap_or(0);
        let x = values[index];
        let what = if x.is_nan() {
            "NaN"
        } else if x > 0.0 {
            "+inf"
        } else {
            "-inf"
        };
        let count = values.iter().filter(|x| !x.is_finite()).count();
        return Err(ObserveError::NonFinite { what, index, count, len: values.len() });
    }
    Ok((!values.is_empty()).then_some((lo, hi)))
}

/// The smallest and largest value seen (ONNX Runtime's `MinMaxCalibrater`, PyTorch's
/// `MinMaxObserver`).
#[derive(Clone, Debug, Default)]
pub struct MinMax {
    range: Option<(f32, f32)>,
}

impl MinMax {
    pub fn new() -> MinMax {
        MinMax::default()
    }
}

impl Observer for MinMax {
    fn observe(&mut self, values: &[f32]) -> Result<(), ObserveError> {
        if let Some((lo, hi)) = batch_range(values)? {
            self.range = Some(match self.range {
                None => (lo, hi),
                Some((a, b)) => (a.min(lo), b.max(hi)),
            });
        }
        Ok(())
    }

    fn range(&self) -> Option<(f32, f32)> {
        self.range
    }
}

/// The parts of the batch being observed, kept until the batch ends, for an observer whose
/// state depends on how values are grouped (a histogram's grid follows the range of the first
/// batch it sees and widens by whole bins afterwards): it takes each batch whole, so the result
/// does not depend on how calibration split the batch into runs. Holds one batch of one tensor.
#[derive(Clone, Debug, Default)]
pub struct BatchParts {
    part: Option<(usize, Vec<f32>)>,
}

impl BatchParts {
    /// Adds a part of `batch` (its values checked finite first); returns the previous batch,
    /// complete, when this part starts a new one.
    pub fn push(&mut self, values: &[f32], batch: usize) -> Result<Option<Vec<f32>>, ObserveError> {
        batch_range(values)?;
        match &mut self.part {
            Some((b, v)) if *b == batch => {
                v.extend_from_slice(values);
                Ok(None)
            }
            _ => Ok(self.part.replace((batch, values.to_vec())).map(|(_, v)| v)),
        }
    }

    /// The batch held, if any.
    pub fn take(&mut self) -> Option<Vec<f32>> {
        self.part.take().map(|(_, v)| v)
    }
}

/// Moving-average min and max, PyTorch's `MovingAverageMinMaxObserver`: the first batch sets
/// the range; each later batch moves it by `c = 1 - momentum` toward the batch's own extremes,
/// `min += c * (batch_min - min)` (the same for max), in f32 as PyTorch computes it. ONNX
/// Runtime's `MinMaxCalibrater(moving_average=True)` is the same rule with
/// `averaging_constant = c`. Empty batches are skipped.
#[derive(Clone, Debug)]
pub struct Ema {
    averaging_constant: f32,
    range: Option<(f32, f32)>,
    /// The batch being observed in parts ([`Observer::observe_in_batch`]) and its range so far,
    /// folded into `range` when the next batch starts (and by [`Observer::range`]).
    part: Option<(usize, (f32, f32))>,
}

impl Ema {
    /// Default momentum 0.99 (averaging constant 0.01, PyTorch's and ORT's default).
    pub const DEFAULT_MOMENTUM: f64 = 0.99;

    /// `momentum` in `[0, 1)`: the weight of the running range (0 keeps only the last batch).
    pub fn new(momentum: f64) -> Result<Ema, ObserveError> {
        if !(0.0..1.0).contains(&momentum) {
            return Err(ObserveError::Config(format!("EMA momentum {momentum} is not in [0, 1)")));
        }
        Ok(Ema { averaging_constant: (1.0 - momentum) as f32, range: None, part: None })
    }

    /// `1 - momentum`.
    pub fn averaging_constant(&self) -> f32 {
        self.averaging_constant
    }
}

impl Ema {
    /// The running range moved toward one batch's `(lo, hi)`.
    fn moved(&self, range: Option<(f32, f32)>, (lo, hi): (f32, f32)) -> (f32, f32) {
        let c = self.averaging_constant;
        match range {
            None => (lo, hi),
            Some((a, b)) => (a + c * (lo - a), b + c * (hi - b)),
        }
    }
}

impl Observer for Ema {
    fn observe(&mut self, values: &[f32]) -> Result<(), ObserveError> {
        if let Some(r) = batch_range(values)? {
            let folded = self.range();
            self.part = None;
            self.range = Some(self.moved(folded, r));
        }
        Ok(())
    }

    fn observe_in_batch(&mut self, values: &[f32], batch: usize) -> Result<(), ObserveError> {
        let Some((lo, hi)) = batch_range(values)? else { return Ok(()) };
        match &mut self.part {
            Some((b, (a, z))) if *b == batch => {
                *a = a.min(lo);
                *z = z.max(hi);
            }
            _ => {
                self.range = self.range();
                self.part = Some((batch, (lo, hi)));
            }
        }
        Ok(())
    }

    fn range(&self) -> Option<(f32, f32)> {
        match self.part {
            Some((_, r)) => Some(self.moved(self.range, r)),
            None => self.range,
        }
    }
}

/// Per-channel min and max along one axis, for weights (and per-channel activations): PyTorch's
/// `PerChannelMinMaxObserver`. Batches must have the same shape at `axis`.
#[derive(Clone, Debug)]
pub struct PerChannelMinMax {
    axis: usize,
    ranges: Vec<(f32, f32)>,
    seen: bool,
}

impl PerChannelMinMax {
    pub fn new(axis: usize) -> PerChannelMinMax {
        PerChannelMinMax { axis, ranges: vec![], seen: false }
    }

    pub fn axis(&self) -> usize {
        self.axis
    }

    /// Takes one row-major batch of `shape`. On error the observer is unchanged.
    pub fn observe(&mut self, values: &[f32], shape: &[usize]) -> Result<(), ObserveError> {
        let n: usize = shape.iter().product();
        if n != values.len() {
            return Err(ObserveError::Shape(format!("{} values do not fit shape {shape:?}", values.len())));
        }
        if self.axis >= shape.len() {
            return Err(ObserveError::Shape(format!("axis {} is out of range for shape {shape:?}", self.axis)));
        }
        let channels = shape[self.axis];
        if self.seen && channels != self.ranges.len() {
            return Err(ObserveError::Shape(format!(
                "{channels} channels along axis {}, earlier batches had {}",
                self.axis,
                self.ranges.len()
            )));
        }
        batch_range(values)?;
        if !self.seen {
            self.ranges = vec![(f32::INFINITY, f32::NEG_INFINITY); channels];
            self.seen = true;
        }
        let inner: usize = shape[self.axis + 1..].iter().product();
        if inner == 0 {
            return Ok(());
        }
        for (i, chunk) in values.chunks(inner).enumerate() {
            let r = &mut self.ranges[i % channels];
            for &x in chunk {
                r.0 = r.0.min(x);
                r.1 = r.1.max(x);
            }
        }
        Ok(())
    }

    /// One `(min, max)` per channel (`(0, 0)` for a channel that never held a value), `None`
    /// before the first batch.
    pub fn ranges(&self) -> Option<Vec<(f32, f32)>> {
        self.seen.then(|| self.ranges.iter().map(|&(a, b)| if a > b { (0.0, 0.0) } else { (a, b) }).collect())
    }
}

/// The calibration methods of `--calib-method`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum CalibMethod {
    #[default]
    MinMax,
    Ema,
    Percentile,
    Entropy,
    Mse,
}

impl CalibMethod {
    pub const ALL: [CalibMethod; 5] =
        [CalibMethod::MinMax, CalibMethod::Ema, CalibMethod::Percentile, CalibMethod::Entropy, CalibMethod::Mse];

    /// The name on the command line and in qconfig files.
    pub fn name(self) -> &'static str {
        match self {
            CalibMethod::MinMax => "minmax",
            CalibMethod::Ema => "ema",
            CalibMethod::Percentile => "percentile",
            CalibMethod::Entropy => "entropy",
            CalibMethod::Mse => "mse",
        }
    }
}

impl fmt::Display for CalibMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A calibration method name that is not one of [`CalibMethod::ALL`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown calibration method `{name}` (expected minmax, ema, percentile, entropy or mse)")]
pub struct ParseCalibMethodError {
    pub name: String,
}

impl FromStr for CalibMethod {
    type Err = ParseCalibMethodError;
    fn from_str(s: &str) -> Result<Self, ParseCalibMethodError> {
        CalibMethod::ALL
            .into_iter()
            .find(|m| m.name() == s)
            .ok_or_else(|| ParseCalibMethodError { name: s.to_string() })
    }
}

/// Everything needed to build an observer; [`Default`] gives the documented defaults.
#[derive(Clone, Debug, PartialEq)]
pub struct ObserverConfig {
    pub method: CalibMethod,
    /// Whether the tensor will get a symmetric scheme: histogram methods then work on `|x|`
    /// (TensorRT's entropy calibration, ORT's symmetric percentile).
    pub symmetric: bool,
    /// Bit width of the target type (8 or 4): sets the levels entropy and MSE simulate.
    pub bits: u32,
    /// EMA momentum (0.99).
    pub momentum: f64,
    /// Percentile kept (99.99): `100 - p` percent of the values are clipped (split evenly between
    /// the two tails for asymmetric schemes).
    pub percentile: f64,
    /// Histogram bins (2048).
    pub bins: usize,
}

impl Default for ObserverConfig {
    fn default() -> Self {
        ObserverConfig {
            method: CalibMethod::MinMax,
            symmetric: false,
            bits: 8,
            momentum: Ema::DEFAULT_MOMENTUM,
            percentile: PercentileObserver::DEFAULT_PERCENTILE,
            bins: super::histogram::DEFAULT_BINS,
        }
    }
}

impl ObserverConfig {
    /// The defaults for `method`.
    pub fn new(method: CalibMethod) -> ObserverConfig {
        ObserverConfig { method, ..ObserverConfig::default() }
    }

    /// Builds the observer, after checking the settings.
    pub fn build(&self) -> Result<Box<dyn Observer>, ObserveError> {
        if self.bits != 8 && self.bits != 4 {
            return Err(ObserveError::Config(format!("{} bits (expected 8 or 4)", self.bits)));
        }
        if self.bins < 16 {
            return Err(ObserveError::Config(format!("{} histogram bins (at least 16)", self.bins)));
        }
        Ok(match self.method {
            CalibMethod::MinMax => Box::new(MinMax::new()),
            CalibMethod::Ema => Box::new(Ema::new(self.momentum)?),
            CalibMethod::Percentile => Box::new(PercentileObserver::new(self.percentile, self.symmetric, self.bins)?),
            CalibMethod::Entropy => Box::new(EntropyObserver::new(self.symmetric, self.bits, self.bins)),
            CalibMethod::Mse => Box::new(MseObserver::new(self.symmetric, self.bits, self.bins)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The run-time choice of `range_and_finite` (AVX-512 or AVX2 where the CPU has them) gives
    /// the baseline compilation's extremes bit for bit, on lengths around the 16-lane chunks,
    /// with signed zeros, NaN and infinities among the values.
    #[test]
    fn range_versions_agree() {
        let mut seed = 7u32;
        let specials = [0.0, -0.0, f32::NAN, f32::INFINITY, f32::NEG_INFINITY, f32::MAX, -f32::MAX];
        for len in (0..70).chain([255, 256, 257, 1000]) {
            for with_special in [false, true] {
                let v: Vec<f32> = (0..len)
                    .map(|i| {
                        seed ^= seed << 13;
                        seed ^= seed >> 17;
                        seed ^= seed << 5;
                        if with_special && seed.is_multiple_of(13) {
                            specials[i % specials.len()]
                        } else {
                            (seed % 20001) as f32 / 1000.0 - 10.0
                        }
                    })
                    .collect();
                let (a, b) = (range_and_finite(&v), range_and_finite_baseline(&v));
                assert_eq!((a.0.to_bits(), a.1.to_bits(), a.2), (b.0.to_bits(), b.1.to_bits(), b.2), "{len}");
            }
        }
    }

    #[test]
    fn minmax_tracks_extremes() {
        let mut o = MinMax::new();
        assert_eq!(o.range(), None);
        o.observe(&[]).unwrap();
        assert_eq!(o.range(), None);
        o.observe(&[1.0, 2.0, 0.5]).unwrap();
        assert_eq!(o.range(), Some((0.5, 2.0)));
        o.observe(&[-3.0, 1.0]).unwrap();
        o.observe(&[]).unwrap();
        assert_eq!(o.range(), Some((-3.0, 2.0)));
    }

    #[test]
    fn ema_moves_once_per_batch_whatever_its_parts() {
        let batches: [&[f32]; 3] = [&[-1.0, 2.0, 0.5, 0.0], &[-3.0, 4.0, 1.0, -0.5], &[0.5, 1.0, 0.25, 0.75]];
        let mut whole = Ema::new(0.9).unwrap();
        let mut parts = Ema::new(0.9).unwrap();
        for (b, x) in batches.iter().enumerate() {
            whole.observe(x).unwrap();
            for part in x.chunks(3) {
                parts.observe_in_batch(part, b).unwrap();
            }
            assert_eq!(parts.range(), whole.range(), "after batch {b}");
        }
    }

    /// Every method gives the same range whether calibration hands it each batch whole or in
    /// runs of a few values (the histogram's grid follows the first batch's range).
    #[test]
    fn every_method_sees_a_batch_split_into_runs_as_the_whole_batch() {
        let batches: Vec<Vec<f32>> =
            (0..4).map(|b| (0..64).map(|i| ((i * 37 + b * 11) % 64) as f32 * 0.1 - 2.0 + b as f32).collect()).collect();
        for method in CalibMethod::ALL {
            let mut whole = ObserverConfig::new(method).build().unwrap();
            let mut parts = ObserverConfig::new(method).build().unwrap();
            for (b, x) in batches.iter().enumerate() {
                whole.observe_in_batch(x, b).unwrap();
                for part in x.chunks(5) {
                    parts.observe_in_batch(part, b).unwrap();
                }
            }
            whole.finish().unwrap();
            parts.finish().unwrap();
            assert_eq!(parts.range(), whole.range(), "{method}");
        }
    }

    #[test]
    fn ema_follows_the_momentum_formula() {
        let mut o = Ema::new(0.99).unwrap();
        assert_eq!(o.averaging_constant(), 0.01);
        o.observe(&[-1.0, 2.0]).unwrap();
        // the first batch initializes
        assert_eq!(o.range(), Some((-1.0, 2.0)));
        o.observe(&[-3.0, 4.0, 0.0]).unwrap();
        let c = 0.01f32;
        let (mut lo, mut hi) = (-1.0f32 + c * (-3.0 - -1.0), 2.0f32 + c * (4.0 - 2.0));
        assert_eq!(o.range(), Some((lo, hi)));
        assert!((lo - (-0.99 - 0.03)).abs() < 1e-6);
        assert!((hi - (0.99 * 2.0 + 0.01 * 4.0)).abs() < 1e-6);
        o.observe(&[0.5, 1.0]).unwrap();
        lo += c * (0.5 - lo);
        hi += c * (1.0 - hi);
        assert_eq!(o.range(), Some((lo, hi)));
        assert!((lo - (0.99 * -1.02 + 0.01 * 0.5)).abs() < 1e-6, "{lo}");
        assert!((hi - (2.02 * 0.99 + 0.01)).abs() < 1e-6, "{hi}");
        // empty batches change nothing
        o.observe(&[]).unwrap();
        assert_eq!(o.range(), Some((lo, hi)));
        // momentum 0 keeps only the last batch
        let mut o = Ema::new(0.0).unwrap();
        o.observe(&[-5.0, 5.0]).unwrap();
        o.observe(&[-1.0, 2.0]).unwrap();
        assert_eq!(o.range(), Some((-1.0, 2.0)));
        assert!(Ema::new(1.0).is_err());
        assert!(Ema::new(-0.1).is_err());
        assert!(Ema::new(f64::NAN).is_err());
    }

    #[test]
    fn non_finite_values_are_clear_errors_and_change_nothing() {
        for method in CalibMethod::ALL {
            let mut o = ObserverConfig::new(method).build().unwrap();
            o.observe(&[-1.0, 1.0]).unwrap();
            let before = o.range();
            let e = o.observe(&[0.0, 1.0, f32::NAN, 2.0, f32::INFINITY]).unwrap_err();
            assert_eq!(e, ObserveError::NonFinite { what: "NaN", index: 2, count: 2, len: 5 }, "{method}");
            assert_eq!(
                e.to_string(),
                "calibration data contains NaN (element 2 of a batch of 5; 2 non-finite values in the batch)"
            );
            let e = o.observe(&[f32::NEG_INFINITY]).unwrap_err();
            assert!(matches!(e, ObserveError::NonFinite { what: "-inf", index: 0, count: 1, .. }), "{e:?}");
            let e = o.observe(&[3.0, f32::INFINITY]).unwrap_err();
            assert!(e.to_string().contains("+inf"), "{e}");
            assert_eq!(o.range(), before, "{method}");
        }
        let mut pc = PerChannelMinMax::new(0);
        assert!(matches!(pc.observe(&[1.0, f32::NAN], &[2, 1]), Err(ObserveError::NonFinite { .. })));
        assert_eq!(pc.ranges(), None);
    }

    #[test]
    fn per_channel_minmax() {
        let mut o = PerChannelMinMax::new(1);
        assert_eq!(o.ranges(), None);
        // shape [2, 3, 2]: channel c holds elements where (i / 2) % 3 == c
        let x: Vec<f32> = (0..12).map(|i| i as f32 - 5.0).collect();
        o.observe(&x, &[2, 3, 2]).unwrap();
        assert_eq!(o.ranges().unwrap(), vec![(-5.0, 2.0), (-3.0, 4.0), (-1.0, 6.0)]);
        o.observe(&[10.0, 0.0, 0.0, 0.0, 0.0, -10.0], &[1, 3, 2]).unwrap();
        assert_eq!(o.ranges().unwrap(), vec![(-5.0, 10.0), (-3.0, 4.0), (-10.0, 6.0)]);
        assert!(matches!(o.observe(&[0.0; 4], &[2, 2]), Err(ObserveError::Shape(_))));
        assert!(matches!(o.observe(&[0.0; 3], &[2, 2]), Err(ObserveError::Shape(_))));
        assert!(matches!(PerChannelMinMax::new(3).observe(&[0.0; 4], &[2, 2]), Err(ObserveError::Shape(_))));
        // weights: axis 0
        let mut w = PerChannelMinMax::new(0);
        w.observe(&[1.0, -1.0, 0.0, 0.0, 3.0, 2.0], &[3, 2]).unwrap();
        assert_eq!(w.ranges().unwrap(), vec![(-1.0, 1.0), (0.0, 0.0), (2.0, 3.0)]);
    }

    #[test]
    fn factory_and_method_names() {
        for m in CalibMethod::ALL {
            assert_eq!(m.name().parse::<CalibMethod>().unwrap(), m);
            assert_eq!(m.to_string(), m.name());
            let mut o = ObserverConfig::new(m).build().unwrap();
            assert_eq!(o.range(), None, "{m}");
            o.observe(&[-1.0, 0.0, 1.0]).unwrap();
            let (lo, hi) = o.range().unwrap();
            assert!(lo <= 0.0 && hi >= 0.0 && lo >= -1.0 && hi <= 1.0, "{m}: {lo} {hi}");
        }
        assert!("kl".parse::<CalibMethod>().unwrap_err().to_string().contains("unknown calibration method `kl`"));
        let d = ObserverConfig::default();
        assert_eq!((d.method, d.momentum, d.percentile, d.bins, d.bits), (CalibMethod::MinMax, 0.99, 99.99, 2048, 8));
        let bad = |c: ObserverConfig| c.build().unwrap_err();
        assert!(matches!(bad(ObserverConfig { bits: 3, ..d.clone() }), ObserveError::Config(_)));
        assert!(matches!(bad(ObserverConfig { bins: 2, ..d.clone() }), ObserveError::Config(_)));
        let p = ObserverConfig { method: CalibMethod::Percentile, percentile: 0.0, ..d.clone() };
        assert!(matches!(bad(p), ObserveError::Config(_)));
        let p = ObserverConfig { method: CalibMethod::Percentile, percentile: 100.5, ..d.clone() };
        assert!(matches!(bad(p), ObserveError::Config(_)));
        let e = ObserverConfig { method: CalibMethod::Ema, momentum: 1.5, ..d };
        assert!(matches!(bad(e), ObserveError::Config(_)));
    }

    #[test]
    fn all_zero_data_gives_a_zero_range() {
        for m in CalibMethod::ALL {
            for symmetric in [false, true] {
                let mut o = ObserverConfig { method: m, symmetric, ..ObserverConfig::default() }.build().unwrap();
                o.observe(&[0.0; 100]).unwrap();
                o.observe(&[0.0; 10]).unwrap();
                assert_eq!(o.range(), Some((0.0, 0.0)), "{m} symmetric={symmetric}");
            }
        }
    }

    #[test]
    fn constant_data() {
        for m in CalibMethod::ALL {
            let mut o = ObserverConfig::new(m).build().unwrap();
            o.observe(&[5.0; 64]).unwrap();
            let (lo, hi) = o.range().unwrap();
            assert!(lo <= 5.0 && hi == 5.0, "{m}: ({lo}, {hi})");
        }
    }
}
