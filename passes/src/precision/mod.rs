//! Mixed precision: FP16/BF16 assignment under the AMP policy, hardware profiles, and
//! channel alignment padding.
//!
//! * [`profile`]: hardware profiles as TOML data (`passes/profiles/*.toml`, embedded), the
//!   [`Profile`] the optimizer's cost model reads (dtypes, features, layout, alignment, batch,
//!   cost table, export conventions).
//! * [`conventions`]: a target toolchain's export conventions (the profile's `[export]` table).
//! * [`policy`]: the three op classes (always f32, low precision, follow), the user's override
//!   table (TOML) and the node-name patterns forced to f32.
//! * [`amp`]: the [`AssignPrecision`] pass: per-node decisions with the rule that made each,
//!   casts only at precision boundaries, constants converted offline, inputs and outputs keeping
//!   their types, and the fp16 overflow guard fed by calibration [`Ranges`].
//! * batch norm is folded into the conv before it ahead of the assignment ([`crate::batchnorm`]).
//! * [`search`]: the accuracy guard, which finds the shortest f32 prefix reaching an SQNR target
//!   on calibration inputs.
//! * [`pad`]: the [`AlignChannels`] pass.
//!
//! Numerics are the interpreter's ([`qforge_ir::numerics`]): an f16/bf16 op widens its inputs to
//! f32, computes (accumulating in f32) and rounds its result once.

pub mod amp;
pub mod conventions;
pub mod pad;
pub mod policy;
pub mod profile;
pub mod search;

pub use amp::{AssignPrecision, Decision, F32Prefix, PrecisionConfig, Ranges, Rule};
pub use conventions::{ExportConventions, ExportFamily};
pub use pad::AlignChannels;
pub use policy::{OpClass, OverrideError, PrecisionPolicy, SqnrTargetError};
pub use profile::{CostClass, Layout, NumType, Profile, ProfileError};
pub use search::{f32_prefix_for, GuardOutcome};

use qforge_ir::{DType, Graph, Tensor};

pub use crate::evaluator::{EvalError, Evaluator, Interpreter};

/// Why a precision configuration could not be made, or the accuracy guard could not run.
#[derive(Debug, thiserror::Error)]
pub enum PrecisionError {
    #[error("unknown precision `{name}` (expected fp32, fp16, bf16 or amp)")]
    UnknownPrecision { name: String },
    /// The hardware profile lacks the low-precision type asked for.
    #[error("--precision {precision}: hardware profile `{profile}` has no {low} (its float types: {have})")]
    Unsupported { precision: String, profile: String, low: DType, have: String },
    /// Running the graph on the calibration inputs failed.
    #[error(transparent)]
    Eval(#[from] EvalError),
    /// Assigning precision to a candidate failed.
    #[error(transparent)]
    Pass(#[from] crate::pass::PassError),
}

/// The largest magnitude of every float result, per node name (graph inputs by name), over the
/// given batches (each one tensor per graph input). NaN is ignored.
pub fn observe_ranges(g: &Graph, batches: &[Vec<Tensor>], ev: &dyn Evaluator) -> Result<Ranges, EvalError> {
    let mut r = Ranges::new();
    let note = |r: &mut Ranges, name: &str, t: &Tensor| {
        if !t.dtype().is_float() {
            return;
        }
        let m = t.range().map(|(lo, hi)| lo.abs().max(hi.abs())).unwrap_or(0.0);
        let e = r.entry(name.to_string()).or_insert(0.0);
        *e = e.max(m);
    };
    for b in batches {
        for (&id, t) in g.inputs().iter().zip(b) {
            note(&mut r, &g.node(id).name, t);
        }
        ev.run_observed(g, b, &mut |id, ts| {
            for t in ts {
                note(&mut r, &g.node(id).name, t);
            }
        })?;
    }
    Ok(r)
}

/// `--precision` as a pass configuration, checked against the profile: `fp16`/`bf16` need the
/// profile to have that type; `amp` uses the profile's `[amp] low`.
pub fn config_for(precision: &str, profile: &Profile) -> Result<PrecisionConfig, PrecisionError> {
    let (low, amp) = match precision {
        "fp16" => (DType::F16, false),
        "bf16" => (DType::BF16, false),
        "amp" => (profile.amp_low, true),
        other => return Err(PrecisionError::UnknownPrecision { name: other.to_string() }),
    };
    if !profile.supports(low) {
        let have: Vec<String> = profile.float_types().iter().map(|d| d.to_string()).collect();
        return Err(PrecisionError::Unsupported {
            precision: precision.to_string(),
            profile: profile.name.clone(),
            low,
            have: have.join(", "),
        });
    }
    Ok(PrecisionConfig::new(low, amp))
}
