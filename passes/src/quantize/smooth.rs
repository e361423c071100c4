//! SmoothQuant-style scale migration (Xiao et al., 2023): move the outlier channels of an
//! activation into the weights of the matmuls it feeds, before static quantization, so that the
//! activation's per-tensor scale is no longer set by a few channels.
//!
//! # The law
//! A layer norm's result is `X = γ ⊙ n + β` per channel `j` of the last axis (`n` normalized). For
//! any positive vector `s`, `X W = (X diag(s)⁻¹) (diag(s) W)`, and `X diag(s)⁻¹ = (γ / s) ⊙ n + β / s`
//! is the same layer norm with gain `γ / s` and bias `β / s`. So dividing the gain and bias by `s`
//! and multiplying row `j` of every consumer's weight by `s_j` leaves the function unchanged (up
//! to float rounding), divides `max|X_j|` by `s_j` and multiplies `max_n |W_jn|` by `s_j`. With
//!
//! ```text
//! s_j = max|X_j|^α / max_n |W_jn|^(1-α)
//! ```
//!
//! (`α` = 0.5 by default, the migration strength; `max|X_j|` from calibration, [`super::calibrate::channel_absmax`])
//! the two maxima become `max|X_j|^(1-α) max|W_j|^(1-α)` and `max|X_j|^α max|W_j|^α`: at `α` = 0.5
//! activation and weight channels meet at the geometric mean. When one layer norm feeds several
//! such matmuls (Q, K and V), they share one `s`: `max_n |W_jn|` is the maximum over all their
//! weights' row `j`. A channel whose activation or weight maximum is zero keeps `s_j = 1`.
//!
//! # Where it applies
//! A [`SmoothSite`] is a layer norm over the last axis only (gain and optional bias constant
//! vectors) whose result is not a graph output and is read only as the activation (input 0) of
//! matmuls and gemms (`transA = 0`) with a constant rank-2 f32 weight (`[K, N]`, or `[N, K]` for
//! a gemm with `transB`). The gain and bias are exact places to absorb `1/s`; other per-channel
//! affine producers are not handled yet.
//!
//! # Idempotence
//! [`NormStats`] records the layer norm's gain and bias when the maxima were observed; a later run
//! rescales the maxima by the gain's change (exact: the result's channel `j` is scaled by
//! `γ_j / γ0_j`). After one run the law gives `s_j = 1` for every channel (`max|X_j| / s_j` and
//! `s_j max|W_j|` put into the formula), so a second run computes `s ≈ 1` (within rounding);
//! factors within 1e-3 of 1 are taken as 1 and a site with nothing to move is left alone.

use super::calibrate::ChannelMaxima;
use crate::pass::{Pass, PassContext, PassError, PassReport};
use qforge_ir::{DType, Graph, NodeId, Op, Tensor, Value};
use std::collections::BTreeMap;
use std::sync::Arc;

/// How a consumer's weight is laid out against the activation's channels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// `[K, N]`: channel `j` is row `j`.
    Rows,
    /// `[N, K]` (gemm with `transB`): channel `j` is column `j`.
    Cols,
}

/// A layer norm whose result feeds only weight matmuls (see the module documentation).
#[derive(Clone, Debug, PartialEq)]
pub struct SmoothSite {
    pub norm: NodeId,
    /// Channels (the last axis).
    pub channels: usize,
    /// The matmuls and gemms reading the result, with their weight's layout.
    pub consumers: Vec<(NodeId, Layout)>,
}

impl SmoothSite {
    /// The layer norm's result, whose channel maxima the site needs.
    pub fn value(&self) -> Value {
        Value::new(self.norm, 0)
    }
}

/// A constant f32 vector of `k` elements at `slot` of `node`.
fn const_vec(g: &Graph, node: NodeId, slot: usize, k: usize) -> Option<Vec<f32>> {
    let v = g.node(node).inputs().get(slot).copied().flatten()?;
    let Op::Const(t) = &g.node(v.node).op else { return None };
    (t.dtype() == DType::F32 && t.shape() == [k]).then(|| t.as_f32().map(<[f32]>::to_vec)).flatten()
}

/// The constant f32 rank-2 weight at slot 1 of `node`, with its shape.
fn weight(g: &Graph, node: NodeId) -> Option<(Vec<f32>, [usize; 2])> {
    let v = g.node(node).inputs().get(1).copied().flatten()?;
    let Op::Const(t) = &g.node(v.node).op else { return None };
    if t.dtype() != DType::F32 || t.rank() != 2 || g.value_type(v).quant.is_some() {
        return None;
    }
    Some((t.as_f32()?.to_vec(), [t.shape()[0], t.shape()[1]]))
}

/// Every layer norm SmoothQuant can migrate scales out of, in node order.
pub fn smooth_sites(g: &Graph) -> Vec<SmoothSite> {
    let mut out = vec![];
    for id in g.node_ids() {
        let node = g.node(id);
        let Op::LayerNorm { axis, .. } = node.op else { continue };
        let Some(ty) = node.outputs.first() else { continue };
        let rank = ty.rank() as i64;
        if ty.dtype != DType::F32 || !(axis == -1 || axis == rank - 1) {
            continue;
        }
        let Some(gain_len) = node.inputs().get(1).copied().flatten().and_then(|v| match &g.node(v.node).op {
            Op::Const(t) if t.rank() == 1 => Some(t.shape()[0]),
            _ => None,
        }) else {
            continue;
        };
        let k = gain_len;
        if const_vec(g, id, 1, k).is_none() {
            continue;
        }
        if node.inputs().get(2).copied().flatten().is_some() && const_vec(g, id, 2, k).is_none() {
            continue;
        }
        let v = Value::new(id, 0);
        let users = g.value_users(v);
        if users.is_empty() || g.is_output(v) {
            continue;
        }
        let mut consumers = vec![];
        for (u, slot) in users {
            let layout = match (&g.node(u).op, slot) {
                (Op::MatMul, 0) => Some(Layout::Rows),
                (Op::Gemm { trans_a: false, trans_b, .. }, 0) => {
                    Some(if *trans_b { Layout::Cols } else { Layout::Rows })
                }
                _ => None,
            };
            let fits = layout.zip(weight(g, u)).is_some_and(|(l, (_, [r, c]))| match l {
                Layout::Rows => r == k,
                Layout::Cols => c == k,
            });
            match layout {
                Some(l) if fits => {
                    if !consumers.iter().any(|(c, _)| *c == u) {
                        consumers.push((u, l));
                    }
                }
                _ => {
                    consumers.clear();
                    break;
                }
            }
        }
        if !consumers.is_empty() {
            out.push(SmoothSite { norm: id, channels: k, consumers });
        }
    }
    out
}

/// One layer norm's observed channel maxima, with its gain and bias at the time.
#[derive(Clone, Debug, PartialEq)]
pub struct NormStats {
    pub absmax: Vec<f32>,
    pub gain: Vec<f32>,
    pub bias: Option<Vec<f32>>,
}

/// Why observed channel maxima do not fit a smoothing site.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum SmoothError {
    #[error("layer norm `{norm}`: no channel maxima were observed")]
    NoMaxima { norm: String },
    #[error("layer norm `{norm}`: {found} channel maxima for {channels} channels")]
    Channels { norm: String, found: usize, channels: usize },
    #[error("layer norm `{norm}`: no constant gain")]
    NoGain { norm: String },
}

/// Channel statistics of the smoothing sites, by the layer norm's name.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ChannelStats {
    pub norms: BTreeMap<String, NormStats>,
}

impl ChannelStats {
    /// Pairs observed maxima ([`super::calibrate::channel_absmax`] of each site's
    /// [`SmoothSite::value`]) with each layer norm's current gain and bias.
    pub fn new(g: &Graph, sites: &[SmoothSite], maxima: &ChannelMaxima) -> Result<ChannelStats, SmoothError> {
        let mut norms = BTreeMap::new();
        for s in sites {
            let name = g.node(s.norm).name.clone();
            let absmax = maxima.get(&(name.clone(), 0)).ok_or_else(|| SmoothError::NoMaxima { norm: name.clone() })?;
            if absmax.len() != s.channels {
                return Err(SmoothError::Channels { norm: name, found: absmax.len(), channels: s.channels });
            }
            let gain = const_vec(g, s.norm, 1, s.channels).ok_or_else(|| SmoothError::NoGain { norm: name.clone() })?;
            let bias = const_vec(g, s.norm, 2, s.channels);
            norms.insert(name, NormStats { absmax: absmax.clone(), gain, bias });
        }
        Ok(ChannelStats { norms })
    }
}

/// The SmoothQuant pass (see the module documentation).
#[derive(Clone, Debug)]
pub struct SmoothQuant {
    /// Migration strength in `[0, 1]`.
    pub alpha: f64,
    pub stats: ChannelStats,
}

/// Factors this close to 1 are taken as 1 (what is left after a first run, by rounding).
const UNIT_TOLERANCE: f64 = 1e-3;

/// Sets the constant input `slot` of `user` to `t`: in place when `user` is its only reader,
/// else as a new constant (`NAME_smoothed`).
fn set_const(g: &mut Graph, user: NodeId, slot: usize, t: Tensor) -> Result<(), String> {
    let v = g.node(user).inputs().get(slot).copied().flatten().ok_or("constant input is missing")?;
    if g.value_users(v).len() == 1 && !g.is_output(v) {
        g.node_mut(v.node).op = Op::Const(Arc::new(t));
    } else {
        let name = format!("{}_smoothed", g.node(v.node).name);
        let c = g.add_const(name, t);
        g.set_input(user, slot, Some(c));
    }
    Ok(())
}

impl SmoothQuant {
    /// The factors `s` of one site (`None`: nothing to move).
    fn factors(&self, g: &Graph, site: &SmoothSite, st: &NormStats) -> Result<Option<Vec<f64>>, String> {
        let k = site.channels;
        let gain = const_vec(g, site.norm, 1, k).ok_or("no constant gain")?;
        let bias = const_vec(g, site.norm, 2, k);
        if st.absmax.len() != k || st.gain.len() != k {
            return Err(format!("channel statistics for {} channels, the layer norm has {k}", st.absmax.len()));
        }
        // the weights' row maxima over every consumer
        let mut wmax = vec![0f64; k];
        for &(c, layout) in &site.consumers {
            let (w, [r, cols]) = weight(g, c).ok_or("a consumer's weight is not a constant f32 matrix")?;
            for (i, &x) in w.iter().enumerate() {
                let j = match layout {
                    Layout::Rows => i / cols,
                    Layout::Cols => i % cols,
                };
                debug_assert!(j < k && (layout == Layout::Cols || r == k));
                wmax[j] = wmax[j].max(x.abs() as f64);
            }
        }
        let mut s = vec![1f64; k];
        for j in 0..k {
            // the channel's maximum now: the observed one, scaled as the gain (or bias) was since
            let ratio = if st.gain[j] != 0.0 {
                gain[j] as f64 / st.gain[j] as f64
            } else {
                match (&bias, &st.bias) {
                    (Some(b), Some(b0)) if b0[j] != 0.0 => b[j] as f64 / b0[j] as f64,
                    _ => 1.0,
                }
            };
            let xmax = st.absmax[j] as f64 * ratio.abs();
            if !(xmax > 0.0 && wmax[j] > 0.0) {
                continue;
            }
            let f = xmax.powf(self.alpha) / wmax[j].powf(1.0 - self.alpha);
            if f.is_normal() && (f as f32).is_normal() && (f - 1.0).abs() > UNIT_TOLERANCE {
                s[j] = f;
            }
        }
        Ok(s.iter().any(|&f| f != 1.0).then_some(s))
    }
}

impl Pass for SmoothQuant {
    fn name(&self) -> &'static str {
        "smooth-quant"
    }

    fn run(&self, g: &mut Graph, _cx: &PassContext) -> Result<PassReport, PassError> {
        let mut report = PassReport::new(self.name());
        if !(0.0..=1.0).contains(&self.alpha) {
            return Err(PassError::Failed {
                pass: self.name().into(),
                msg: format!("alpha {} is not in [0, 1]", self.alpha),
            });
        }
        for site in smooth_sites(g) {
            let name = g.node(site.norm).name.clone();
            let err =
                |m: String| PassError::Failed { pass: "smooth-quant".into(), msg: format!("layer norm `{name}`: {m}") };
            let Some(st) = self.stats.norms.get(&name) else {
                report.notes.push(format!("layer norm `{name}`: no channel statistics, not smoothed"));
                continue;
            };
            let Some(s) = self.factors(g, &site, st).map_err(err)? else { continue };
            let k = site.channels;
            let scale = |v: Vec<f32>| -> Tensor {
                Tensor::from_f32(vec![k], v.iter().zip(&s).map(|(&x, &f)| (x as f64 / f) as f32).collect())
            };
            let gain = const_vec(g, site.norm, 1, k).ok_or_else(|| err("no constant gain".into()))?;
            set_const(g, site.norm, 1, scale(gain)).map_err(err)?;
            if let Some(b) = const_vec(g, site.norm, 2, k) {
                set_const(g, site.norm, 2, scale(b)).map_err(err)?;
            }
            for &(c, layout) in &site.consumers {
                let (mut w, [r, cols]) =
                    weight(g, c).ok_or_else(|| err("a consumer's weight is not a constant f32 matrix".into()))?;
                for (i, x) in w.iter_mut().enumerate() {
                    let j = match layout {
                        Layout::Rows => i / cols,
                        Layout::Cols => i % cols,
                    };
                    *x = (*x as f64 * s[j]) as f32;
                }
                set_const(g, c, 1, Tensor::from_f32(vec![r, cols], w)).map_err(err)?;
            }
            let moved = s.iter().filter(|&&f| f != 1.0).count();
            let (lo, hi) = s.iter().fold((f64::INFINITY, 0f64), |(a, b), &f| (a.min(f), b.max(f)));
            report.notes.push(format!(
                "layer norm `{name}`: {moved} of {k} channels rescaled (s in [{lo:.3e}, {hi:.3e}]) into {} matmul(s)",
                site.consumers.len()
            ));
            report.count("layer norms smoothed", 1);
            report.count("channels rescaled", moved as u64);
            report.count("weights rescaled", site.consumers.len() as u64);
        }
        if report.changed {
            report.count("dead nodes removed", g.remove_dead() as u64);
        }
        Ok(report)
    }
}
