//! Where a candidate's latency comes from, and the per-kernel cost table.
//!
//! * **Measured** (the default, profile `host`): the candidate's JIT program at batch 1 on one
//!   thread, warm-up runs, then timed runs of one inference each; the median, as `qforge bench`
//!   measures.
//! * **Predicted from a kernel cost table** (`--latency-table FILE`): the sum over the program's
//!   steps of `ns_per_step + ns_per_mac * macs` for the step's kernel ([`KernelTable`]). The table
//!   is built from measured kernels (`--save-latency-table FILE` fits one from the per-step times
//!   of every candidate a measured search ran); given the same table, the figure is the same on
//!   every run and every machine that generates the same kernels, which is what a distributed
//!   search (`--emit-jobs`/`--merge`) and the tests need.
//! * **Predicted for a hardware profile** other than `host` (`--profile P`): each step's time
//!   measured here, scaled by how much cheaper or dearer the profile says that kernel's op class
//!   and type is than this host does, both relative to their own f32 convolution:
//!   `t * (cost_P(class, type) / cost_P(conv, f32)) / (cost_host(class, type) / cost_host(conv,
//!   f32))`. The profiles give relative costs only, so the absolute scale stays this host's f32.

use anyhow::{Context, Result};
use qforge_codegen::StepInfo;
use qforge_passes::precision::profile::{CostClass, NumType};
use qforge_passes::precision::Profile;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// How latency is obtained (part of a job's setup).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Source {
    /// Measured on this host's JIT.
    Measured,
    /// Predicted from a stored kernel cost table.
    Table { path: PathBuf },
    /// Measured per step here, scaled by the hardware profile's relative costs.
    Profile,
}

impl Source {
    pub fn predicted(&self) -> bool {
        !matches!(self, Source::Measured)
    }
}

/// The kernel family of a JIT step, the key of the cost table: the first word of its
/// description (`gemm_u8i8`, `depthwise_f32`, `max_pool`, `WidenBf16`), with the element type
/// when the description ends with one the name does not carry (`max_pool:u8`).
pub fn kernel_key(step: &StepInfo) -> String {
    let first = step.what.split(['(', ' ']).next().unwrap_or("").to_string();
    let last = step.what.rsplit(' ').next().unwrap_or("");
    let first = if first.is_empty() { step.kind.to_string() } else { first };
    if ["u8", "i8", "f32", "f16", "bf16", "i32", "i64"].contains(&last) && !first.contains(last) {
        format!("{first}:{last}")
    } else {
        first
    }
}

/// One kernel family's cost.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct KernelCost {
    /// Fixed time per step (ns).
    pub ns_per_step: f64,
    /// Time per multiply-accumulate (ns); 0 for steps without MACs.
    pub ns_per_mac: f64,
}

impl KernelCost {
    fn predict(&self, macs: u64) -> f64 {
        self.ns_per_step + self.ns_per_mac * macs as f64
    }
}

/// A per-kernel cost table: what each kernel family costs on the machine it was measured on.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct KernelTable {
    /// Where the figures come from (a CPU, a date, a command).
    pub description: String,
    pub kernels: BTreeMap<String, KernelCost>,
    /// For a kernel family the table does not list.
    pub default: KernelCost,
}

impl KernelTable {
    /// Reads a table (JSON).
    pub fn load(path: &Path) -> Result<KernelTable> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the latency table `{}`", path.display()))?;
        serde_json::from_str(&text).with_context(|| format!("the latency table `{}`", path.display()))
    }

    /// The predicted time of a program's steps, in ms.
    pub fn predict_ms(&self, steps: &[StepInfo]) -> f64 {
        let ns: f64 =
            steps.iter().map(|s| self.kernels.get(&kernel_key(s)).unwrap_or(&self.default).predict(s.macs)).sum();
        ns / 1e6
    }

    /// Fits a table to measured steps `(step, ns)`: per kernel family a least-squares line of
    /// time against MACs (slope and intercept kept non-negative: through the origin when the
    /// intercept would be negative, a mean per step when the family has no MACs); the default is
    /// the mean over all steps of their time per step and of the MAC kernels' time per MAC.
    pub fn fit(description: &str, samples: &[(StepInfo, f64)]) -> KernelTable {
        let mut by: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
        for (s, ns) in samples {
            by.entry(kernel_key(s)).or_default().push((s.macs as f64, *ns));
        }
        let kernels: BTreeMap<String, KernelCost> = by.iter().map(|(k, pts)| (k.clone(), fit_line(pts))).collect();
        let n = samples.len().max(1) as f64;
        let no_mac: Vec<f64> = samples.iter().filter(|(s, _)| s.macs == 0).map(|(_, t)| *t).collect();
        let (mac_ns, macs): (f64, f64) =
            samples.iter().filter(|(s, _)| s.macs > 0).fold((0.0, 0.0), |(a, b), (s, t)| (a + t, b + s.macs as f64));
        let default = KernelCost {
            ns_per_step: if no_mac.is_empty() {
                samples.iter().map(|(_, t)| t).sum::<f64>() / n
            } else {
                no_mac.iter().sum::<f64>() / no_mac.len() as f64
            },
            ns_per_mac: if macs > 0.0 { mac_ns / macs } else { 0.0 },
        };
        KernelTable { description: description.to_string(), kernels, default }
    }
}

fn fit_line(pts: &[(f64, f64)]) -> KernelCost {
    let n = pts.len() as f64;
    let (sx, sy) = pts.iter().fold((0.0, 0.0), |(a, b), (x, y)| (a + x, b + y));
    if sx == 0.0 {
        return KernelCost { ns_per_step: sy / n, ns_per_mac: 0.0 };
    }
    let (mx, my) = (sx / n, sy / n);
    let (sxx, sxy) = pts.iter().fold((0.0, 0.0), |(a, b), (x, y)| (a + (x - mx) * (x - mx), b + (x - mx) * (y - my)));
    let slope = if sxx > 0.0 { sxy / sxx } else { 0.0 };
    let intercept = my - slope * mx;
    if slope >= 0.0 && intercept >= 0.0 {
        return KernelCost { ns_per_step: intercept, ns_per_mac: slope };
    }
    // through the origin
    let sxx0: f64 = pts.iter().map(|(x, _)| x * x).sum();
    let sxy0: f64 = pts.iter().map(|(x, y)| x * y).sum();
    KernelCost { ns_per_step: 0.0, ns_per_mac: (sxy0 / sxx0).max(0.0) }
}

/// The op class and number type a kernel family computes in, for the profile's cost table.
pub fn kernel_class(key: &str) -> (CostClass, NumType) {
    let k = key.to_ascii_lowercase();
    let class = if k.starts_with("depthwise") {
        CostClass::DepthwiseConv
    } else if k.starts_with("gemm") || k.starts_with("winograd") {
        CostClass::Conv
    } else if k.contains("pool") || k.starts_with("global_sum") {
        CostClass::Pooling
    } else if k.contains("quantize") || k.contains("requant") || k.starts_with("widen") || k.starts_with("round") {
        CostClass::Convert
    } else if k.contains("softmax") || k.contains("norm") {
        CostClass::Normalization
    } else if k.contains("layout") || k.contains("transpose") || k.contains("concat") || k.contains("nchw") {
        CostClass::Movement
    } else {
        CostClass::Elementwise
    };
    let t = if k.contains("u8i8") || k.contains("int") || k.ends_with(":u8") || k.ends_with(":i8") || k == "qadd" {
        NumType::I8
    } else if k.contains("bf16") {
        NumType::Bf16
    } else if k.contains("f16") {
        NumType::F16
    } else {
        NumType::F32
    };
    (class, t)
}

/// A profile's cost of `(class, t)` relative to its own f32 convolution (f32's cost where it
/// lists none for `t`).
fn relative(p: &Profile, class: CostClass, t: NumType) -> f64 {
    let f32_conv = p.cost(CostClass::Conv, NumType::F32).filter(|c| *c > 0.0).unwrap_or(1.0);
    let c = p.cost(class, t).or_else(|| p.cost(class, NumType::F32)).unwrap_or(f32_conv);
    c / f32_conv
}

/// How much longer (above 1) or shorter a kernel family takes on `target` than on `host`.
pub fn profile_scale(key: &str, target: &Profile, host: &Profile) -> f64 {
    let (class, t) = kernel_class(key);
    let h = relative(host, class, t);
    if h <= 0.0 {
        return 1.0;
    }
    relative(target, class, t) / h
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(what: &str, macs: u64) -> StepInfo {
        StepInfo { name: "n".into(), kind: "kernel", what: what.into(), macs }
    }

    #[test]
    fn keys_classes_and_fit() {
        assert_eq!(kernel_key(&step("gemm_u8i8(im2col 3x3 s1) 64x32 k=144 [add_i32] -> u8", 1)), "gemm_u8i8");
        assert_eq!(kernel_key(&step("max_pool 2x2 s2 u8", 0)), "max_pool:u8");
        assert_eq!(kernel_key(&step("WidenBf16", 0)), "WidenBf16");
        assert_eq!(kernel_class("gemm_u8i8"), (CostClass::Conv, NumType::I8));
        assert_eq!(kernel_class("depthwise_bf16"), (CostClass::DepthwiseConv, NumType::Bf16));
        assert_eq!(kernel_class("max_pool:f32"), (CostClass::Pooling, NumType::F32));
        let s = [(step("gemm_f32(direct)", 100), 150.0), (step("gemm_f32(direct)", 300), 350.0)];
        let t = KernelTable::fit("t", &s);
        let k = t.kernels["gemm_f32"];
        assert!((k.ns_per_mac - 1.0).abs() < 1e-12 && (k.ns_per_step - 50.0).abs() < 1e-9);
        assert!((t.predict_ms(&[step("gemm_f32(x)", 200)]) - 250e-6).abs() < 1e-15);
    }
}
