//! Mixed-precision training: dynamic loss scaling and the FP16/BF16 rewrite of a training graph.
//!
//! [`GradScaler`] has PyTorch's `torch.amp.GradScaler` semantics (its documentation and
//! `_amp_update_scale_`): the loss is multiplied by the scale before the backward pass (initial
//! `2^16`); the gradients are divided by it in f32 ("unscaled", before any gradient clipping);
//! when any gradient is infinite or NaN the optimizer step is skipped and the scale multiplied by
//! `0.5`; after `2000` consecutive steps without one it is multiplied by `2`. (The seed's section
//! 6.2.3 `ManualGradScaling` sketches the same machine.)
//!
//! [`round_to_storage`] makes a graph compute as FP16 or BF16 storage does: every f32 value
//! (inputs, constants, each op's results, forward and backward alike) is rounded to the storage
//! type and widened again (`cast` to f16/bf16 then back to f32): the interpreter's and the JIT's
//! own rule for half-precision ops (compute in f32, round each result to the storage type).
//! Master weights stay f32 in the trainer. A gradient below FP16's smallest subnormal (`2^-24`,
//! about `6e-8`) becomes 0 there (the seed's exercise 6.3); BF16 keeps f32's exponent range.
//! The loss scale stays f32, as under PyTorch's autocast (the scaler multiplies the f32 loss): the
//! graph inputs named in `keep_f32` (the trainer names [`super::objective::LOSS_SCALE`]) and every
//! value computed directly from them (the scaled loss, the backward pass's seed times the scale)
//! are not rounded, so a scale of `2^16`, beyond FP16's
//! largest finite value, reaches the half-precision ops only as the gradients it multiplies.
//!
//! Invariants: pure; the rewritten graph has the same inputs and outputs (names, f32 types).

use super::TrainError;
use qforge_ir::{DType, Graph, Op, Value};

/// Dynamic loss scaling (see the module documentation).
#[derive(Clone, Debug, PartialEq)]
pub struct GradScaler {
    pub scale: f32,
    pub growth_factor: f32,
    pub backoff_factor: f32,
    pub growth_interval: u32,
    /// Consecutive steps without an overflow since the last change.
    pub growth_tracker: u32,
    /// Steps skipped so far.
    pub skipped: u64,
}

impl Default for GradScaler {
    /// PyTorch's defaults: `init_scale = 2^16`, `growth_factor = 2`, `backoff_factor = 0.5`,
    /// `growth_interval = 2000`.
    fn default() -> Self {
        GradScaler {
            scale: 65536.0,
            growth_factor: 2.0,
            backoff_factor: 0.5,
            growth_interval: 2000,
            growth_tracker: 0,
            skipped: 0,
        }
    }
}

impl GradScaler {
    /// Divides `grads` by the scale in place (f32, as `unscale_` multiplies by the f32 inverse of
    /// the scale) and says whether any is infinite or NaN.
    pub fn unscale(&self, grads: &mut [&mut [f32]]) -> bool {
        let inv = 1.0f64 / f64::from(self.scale);
        let inv = inv as f32;
        let mut found_inf = false;
        for g in grads.iter_mut() {
            for x in g.iter_mut() {
                *x *= inv;
                found_inf |= !x.is_finite();
            }
        }
        found_inf
    }

    /// Updates the scale after a step; `found_inf` says the step was skipped.
    pub fn update(&mut self, found_inf: bool) {
        if found_inf {
            self.scale *= self.backoff_factor;
            self.growth_tracker = 0;
            self.skipped += 1;
        } else {
            self.growth_tracker += 1;
            if self.growth_tracker == self.growth_interval {
                self.scale *= self.growth_factor;
                self.growth_tracker = 0;
            }
        }
    }
}

/// The precision training computes in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum TrainPrecision {
    #[default]
    Fp32,
    Fp16,
    Bf16,
}

impl TrainPrecision {
    pub fn storage(self) -> Option<DType> {
        match self {
            TrainPrecision::Fp32 => None,
            TrainPrecision::Fp16 => Some(DType::F16),
            TrainPrecision::Bf16 => Some(DType::BF16),
        }
    }
}

/// `g` with every f32 value rounded to `storage` (f16 or bf16) and widened back, but the inputs
/// named in `keep_f32` and the values computed directly from them (see the module documentation).
pub fn round_to_storage(g: &Graph, storage: DType, keep_f32: &[&str]) -> Result<Graph, TrainError> {
    if !matches!(storage, DType::F16 | DType::BF16) {
        return Err(TrainError::Data(format!("{storage:?} is not a half-precision storage type")));
    }
    let mut g = g.clone();
    let order = g.schedule().map_err(|e| TrainError::ir("scheduling", e))?;
    let ids: Vec<_> = g.inputs().iter().copied().chain(order).collect();
    let tag = if storage == DType::F16 { "f16" } else { "bf16" };
    let kept: Vec<_> = g.inputs().iter().copied().filter(|&i| keep_f32.contains(&g.node(i).name.as_str())).collect();
    for id in ids {
        let node = g.node(id);
        if matches!(node.op, Op::Cast { .. }) && node.name.ends_with("/widen") {
            continue;
        }
        // the kept inputs and what is computed straight from them stay f32 (see the module docs)
        if kept.iter().any(|&k| id == k || node.inputs().iter().flatten().any(|v| v.node == k)) {
            continue;
        }
        let name = node.name.clone();
        for port in 0..node.outputs.len() {
            let v = Value::new(id, port);
            let t = g.value_type(v);
            if t.dtype != DType::F32 || t.quant.is_some() {
                continue;
            }
            let users = g.value_users(v);
            let outs: Vec<usize> =
                g.outputs().iter().enumerate().filter(|(_, o)| o.value == v).map(|(i, _)| i).collect();
            if users.is_empty() && outs.is_empty() {
                continue;
            }
            let ir = |e| TrainError::ir(&format!("rounding `{name}` to {tag}"), e);
            let r = g
                .add_node(Op::Cast { to: storage }, vec![Some(v)], None, format!("{name}:{port}/{tag}"))
                .map_err(ir)?;
            let w = g
                .add_node(Op::Cast { to: DType::F32 }, vec![Some(r)], None, format!("{name}:{port}/widen"))
                .map_err(ir)?;
            for (n, s) in users {
                g.set_input(n, s, Some(w));
            }
            for i in outs {
                g.set_output_value(i, w);
            }
        }
    }
    qforge_ir::verify::verify(&g).map_err(|e| TrainError::ir("the rounded graph", e))?;
    Ok(g)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scaler_state_machine() {
        let mut s = GradScaler { growth_interval: 3, ..GradScaler::default() };
        assert_eq!(s.scale, 65536.0);
        // overflow: halve, skip, reset the tracker
        s.update(true);
        assert_eq!((s.scale, s.growth_tracker, s.skipped), (32768.0, 0, 1));
        // two good steps: no change yet
        s.update(false);
        s.update(false);
        assert_eq!((s.scale, s.growth_tracker), (32768.0, 2));
        // an overflow resets the count
        s.update(true);
        assert_eq!((s.scale, s.growth_tracker, s.skipped), (16384.0, 0, 2));
        // three good steps: double
        for _ in 0..3 {
            s.update(false);
        }
        assert_eq!((s.scale, s.growth_tracker), (32768.0, 0));
        // PyTorch's default interval
        let mut s = GradScaler::default();
        for _ in 0..1999 {
            s.update(false);
        }
        assert_eq!(s.scale, 65536.0);
        s.update(false);
        assert_eq!(s.scale, 131072.0);
    }

    #[test]
    fn unscale_finds_overflow() {
        let s = GradScaler { scale: 4.0, ..GradScaler::default() };
        let mut a = vec![8.0f32, -2.0];
        let mut b = vec![1.0f32];
        assert!(!s.unscale(&mut [&mut a, &mut b]));
        assert_eq!((a, b), (vec![2.0, -0.5], vec![0.25]));
        let mut c = vec![f32::INFINITY, 1.0];
        assert!(s.unscale(&mut [&mut c]));
        let mut d = vec![f32::NAN];
        assert!(s.unscale(&mut [&mut d]));
    }
}
