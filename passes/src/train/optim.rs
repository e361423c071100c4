//! Optimizers and the learning-rate schedule, with PyTorch's update formulas (the algorithms as
//! the `torch.optim.SGD` and `torch.optim.Adam` documentation pages write them, in the order of
//! their single-tensor implementations), on f32 master values.
//!
//! * SGD with momentum `mu`, dampening `d`, optional Nesterov and weight decay `wd`:
//!   `g = grad + wd * p`; `b = g` at the first step, else `b = mu * b + (1 - d) * g`;
//!   `g = g + mu * b` (Nesterov) or `g = b`; `p = p - lr * g`.
//! * Adam (Kingma & Ba 2015) with L2 weight decay (`g = grad + wd * p`) or, as AdamW (Loshchilov &
//!   Hutter 2019), decoupled decay (`p = p * (1 - lr * wd)` first):
//!   `m = m + (1 - b1) * (g - m)` (`lerp`), `v = b2 * v + (1 - b2) * g * g`,
//!   `p = p - (lr / (1 - b1^t)) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)`; the bias corrections in
//!   f64 (Python floats) and rounded to f32.
//! * Cosine annealing (`torch.optim.lr_scheduler.CosineAnnealingLR`'s closed form, Loshchilov &
//!   Hutter 2017): `lr_t = lr_min + (lr_0 - lr_min) * (1 + cos(pi * t / T)) / 2`.
//!
//! Invariants: deterministic (plain loops in element order, no threads); never allocates per step
//! beyond the first.

/// Which optimizer, with its hyperparameters.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum OptimizerKind {
    Sgd { momentum: f32, dampening: f32, nesterov: bool },
    Adam { beta1: f32, beta2: f32, eps: f32, decoupled: bool },
}

impl OptimizerKind {
    /// PyTorch's Adam defaults: `betas = (0.9, 0.999)`, `eps = 1e-8`, L2 decay.
    pub fn adam() -> OptimizerKind {
        OptimizerKind::Adam { beta1: 0.9, beta2: 0.999, eps: 1e-8, decoupled: false }
    }

    /// SGD with momentum 0.9 (no dampening, no Nesterov).
    pub fn sgd_momentum() -> OptimizerKind {
        OptimizerKind::Sgd { momentum: 0.9, dampening: 0.0, nesterov: false }
    }
}

/// An optimizer's state for a list of parameters (each a flat f32 slice).
#[derive(Clone, Debug)]
pub struct Optimizer {
    pub kind: OptimizerKind,
    /// Per parameter: momentum buffer / first moment, second moment (Adam).
    m: Vec<Vec<f32>>,
    v: Vec<Vec<f32>>,
    /// Steps taken per parameter (Adam's `t`; SGD's first-step test).
    steps: Vec<u64>,
}

impl Optimizer {
    pub fn new(kind: OptimizerKind, sizes: &[usize]) -> Optimizer {
        Optimizer {
            kind,
            m: sizes.iter().map(|&n| vec![0.0; n]).collect(),
            v: match kind {
                OptimizerKind::Adam { .. } => sizes.iter().map(|&n| vec![0.0; n]).collect(),
                OptimizerKind::Sgd { .. } => vec![vec![]; sizes.len()],
            },
            steps: vec![0; sizes.len()],
        }
    }

    /// One update of parameter `i` (values `p`, gradient `grad`, same length) at `lr` with weight
    /// decay `wd`.
    pub fn step(&mut self, i: usize, p: &mut [f32], grad: &[f32], lr: f32, wd: f32) {
        self.steps[i] += 1;
        let t = self.steps[i];
        let m = &mut self.m[i];
        match self.kind {
            OptimizerKind::Sgd { momentum, dampening, nesterov } => {
                for ((p, &g0), b) in p.iter_mut().zip(grad).zip(m.iter_mut()) {
                    let mut g = if wd != 0.0 { g0 + wd * *p } else { g0 };
                    if momentum != 0.0 {
                        *b = if t == 1 { g } else { momentum * *b + (1.0 - dampening) * g };
                        g = if nesterov { g + momentum * *b } else { *b };
                    }
                    *p -= lr * g;
                }
            }
            OptimizerKind::Adam { beta1, beta2, eps, decoupled } => {
                let v = &mut self.v[i];
                let bc1 = 1.0 - f64::from(beta1).powi(t as i32);
                let bc2 = 1.0 - f64::from(beta2).powi(t as i32);
                let step_size = (f64::from(lr) / bc1) as f32;
                let bc2_sqrt = bc2.sqrt() as f32;
                for (((p, &g0), m), v) in p.iter_mut().zip(grad).zip(m.iter_mut()).zip(v.iter_mut()) {
                    let g = if decoupled {
                        *p *= 1.0 - lr * wd;
                        g0
                    } else if wd != 0.0 {
                        g0 + wd * *p
                    } else {
                        g0
                    };
                    *m += (1.0 - beta1) * (g - *m);
                    *v = beta2 * *v + (1.0 - beta2) * g * g;
                    let denom = v.sqrt() / bc2_sqrt + eps;
                    *p -= step_size * (*m / denom);
                }
            }
        }
    }
}

/// Cosine annealing from `lr` to `lr_min` over `total` steps (see the module documentation).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CosineSchedule {
    pub lr: f32,
    pub lr_min: f32,
    pub total: usize,
}

impl CosineSchedule {
    /// The learning rate of step `t` (0-based).
    pub fn at(&self, t: usize) -> f32 {
        if self.total == 0 {
            return self.lr;
        }
        let x = std::f64::consts::PI * t.min(self.total) as f64 / self.total as f64;
        (f64::from(self.lr_min) + f64::from(self.lr - self.lr_min) * (1.0 + x.cos()) / 2.0) as f32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// SGD with momentum 0.9, lr 0.1, weight decay 0.01 on p = 1 with gradients 0.5 then -0.2:
    /// by hand (torch.optim.SGD's algorithm):
    /// step 1: g = 0.5 + 0.01 = 0.51, b = 0.51, p = 1 - 0.051 = 0.949;
    /// step 2: g = -0.2 + 0.00949 = -0.19051, b = 0.9 * 0.51 - 0.19051 = 0.26849,
    ///         p = 0.949 - 0.026849 = 0.922151.
    #[test]
    fn sgd_momentum_matches_hand_worked_values() {
        let mut o = Optimizer::new(OptimizerKind::sgd_momentum(), &[1]);
        let mut p = [1.0f32];
        o.step(0, &mut p, &[0.5], 0.1, 0.01);
        assert!((p[0] - 0.949).abs() < 1e-6, "{}", p[0]);
        o.step(0, &mut p, &[-0.2], 0.1, 0.01);
        assert!((p[0] - 0.922151).abs() < 1e-6, "{}", p[0]);
        // Nesterov: step 1 g = 0.5 + 0.9 * 0.5 = 0.95, p = 1 - 0.095
        let mut o = Optimizer::new(OptimizerKind::Sgd { momentum: 0.9, dampening: 0.0, nesterov: true }, &[1]);
        let mut p = [1.0f32];
        o.step(0, &mut p, &[0.5], 0.1, 0.0);
        assert!((p[0] - 0.905).abs() < 1e-6, "{}", p[0]);
    }

    /// Adam (lr 0.01, betas 0.9/0.999, eps 1e-8) on p = 1, gradients 0.5 then -0.2:
    /// step 1: m = 0.05, v = 0.00025, mhat = 0.5, vhat = 0.25, p = 1 - 0.01 * 0.5 / (0.5 + 1e-8)
    ///         = 0.99000000002;
    /// step 2: m = 0.045 - 0.02 = 0.025, v = 0.00024975 + 0.00004 = 0.00028975,
    ///         mhat = 0.025 / 0.19 = 0.131578947, vhat = 0.00028975 / 0.001999 = 0.144947474,
    ///         sqrt = 0.380719679, p = 0.99 - 0.01 * 0.131578947 / 0.380719679 = 0.986543939.
    #[test]
    fn adam_matches_hand_worked_values() {
        let mut o = Optimizer::new(OptimizerKind::adam(), &[1]);
        let mut p = [1.0f32];
        o.step(0, &mut p, &[0.5], 0.01, 0.0);
        assert!((p[0] - 0.99).abs() < 1e-6, "{}", p[0]);
        o.step(0, &mut p, &[-0.2], 0.01, 0.0);
        assert!((p[0] - 0.986_543_94).abs() < 2e-6, "{}", p[0]);
        // AdamW: decay first, p = 1 * (1 - 0.01 * 0.1) = 0.999, then the same step: 0.989
        let mut o = Optimizer::new(OptimizerKind::Adam { beta1: 0.9, beta2: 0.999, eps: 1e-8, decoupled: true }, &[1]);
        let mut p = [1.0f32];
        o.step(0, &mut p, &[0.5], 0.01, 0.1);
        assert!((p[0] - 0.989).abs() < 1e-6, "{}", p[0]);
        // parameters keep separate step counts
        let mut o = Optimizer::new(OptimizerKind::adam(), &[1, 2]);
        let mut q = [0.0f32, 0.0];
        o.step(1, &mut q, &[-1.0, 2.0], 0.1, 0.0);
        assert!((q[0] - 0.1).abs() < 1e-6 && (q[1] + 0.1).abs() < 1e-6, "{q:?}");
    }

    #[test]
    fn cosine_schedule_ends() {
        let s = CosineSchedule { lr: 0.1, lr_min: 0.0, total: 100 };
        assert_eq!(s.at(0), 0.1);
        assert!((s.at(50) - 0.05).abs() < 1e-7);
        assert!(s.at(100).abs() < 1e-9);
        assert!(s.at(150).abs() < 1e-9);
        assert!(s.at(25) > s.at(26));
    }
}
