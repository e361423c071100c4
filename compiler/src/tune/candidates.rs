//! A candidate of the search: a per-layer precision policy ([`Policy`]), written as the qconfig
//! `compile --qconfig` reads ([`Policy::toml`]; `--quantize int8 --calib X` with it reproduces
//! the candidate) and as the [`QConfig`] that text parses to ([`Policy::qconfig`]).
//!
//! A policy is a default choice for every quantizable layer (int8, int4 weights, fp16, bf16 or
//! fp32), the weight granularity and the calibration observer of its int8 layers, and per-layer
//! exceptions by node name. Its canonical text lists the exceptions sorted by name and writes
//! every field of each, so two equal policies have the same text: the text is the cache key.

use anyhow::{bail, Result};
use qforge_passes::quantize::observer::CalibMethod;
use qforge_passes::quantize::QConfig;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// What one layer runs at.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Choice {
    /// Static INT8 (8-bit weights and activations).
    Int8,
    /// 4-bit weights, 8-bit activations.
    Int4,
    Bf16,
    Fp16,
    Fp32,
}

impl Choice {
    pub fn name(self) -> &'static str {
        match self {
            Choice::Int8 => "int8",
            Choice::Int4 => "int4",
            Choice::Bf16 => "bf16",
            Choice::Fp16 => "fp16",
            Choice::Fp32 => "fp32",
        }
    }

    /// Whether the layer is quantized to integers.
    pub fn is_int(self) -> bool {
        matches!(self, Choice::Int8 | Choice::Int4)
    }

    /// The qconfig fields of a rule that sets this choice: `precision`, and `bits` for the
    /// integer ones (written always, so a rule never inherits the bits of a rule before it).
    fn fields(self) -> String {
        match self {
            Choice::Int8 => "precision = \"int8\"\nbits = 8\n".to_string(),
            Choice::Int4 => "precision = \"int8\"\nbits = 4\n".to_string(),
            c => format!("precision = \"{}\"\n", c.name()),
        }
    }
}

/// Weight granularity of the int8 layers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Granularity {
    PerChannel,
    PerTensor,
}

impl Granularity {
    pub fn name(self) -> &'static str {
        match self {
            Granularity::PerChannel => "per-channel",
            Granularity::PerTensor => "per-tensor",
        }
    }
}

/// A per-layer precision policy.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Policy {
    /// The calibration observer (a [`CalibMethod`] name).
    pub observer: String,
    pub granularity: Granularity,
    /// What every layer without an exception runs at.
    pub default: Choice,
    /// Exceptions by node name (never equal to `default`).
    pub layers: BTreeMap<String, Choice>,
}

impl Policy {
    /// Every layer at `choice`.
    pub fn uniform(choice: Choice, granularity: Granularity, observer: CalibMethod) -> Policy {
        Policy { observer: observer.name().to_string(), granularity, default: choice, layers: BTreeMap::new() }
    }

    /// The observer as a [`CalibMethod`].
    pub fn method(&self) -> Result<CalibMethod> {
        self.observer.parse::<CalibMethod>().map_err(anyhow::Error::from)
    }

    /// This policy with `layer` at `choice` (the exception dropped when it equals the default).
    pub fn with(&self, layer: &str, choice: Choice) -> Policy {
        let mut p = self.clone();
        if choice == p.default {
            p.layers.remove(layer);
        } else {
            p.layers.insert(layer.to_string(), choice);
        }
        p
    }

    /// What `layer` runs at.
    pub fn choice(&self, layer: &str) -> Choice {
        self.layers.get(layer).copied().unwrap_or(self.default)
    }

    /// The canonical qconfig text (no comments): `[default]`, then one `[[node]]` rule per
    /// exception, sorted by name.
    pub fn toml(&self) -> String {
        let mut t = format!(
            "[default]\n{}granularity = \"{}\"\nobserver = \"{}\"\n",
            self.default.fields(),
            self.granularity.name(),
            self.observer
        );
        for (name, c) in &self.layers {
            // a name with glob characters is matched exactly through an anchored, escaped regex
            let (key, pat) = if name.contains(['*', '?']) {
                ("regex", format!("^{}$", regex::escape(name)))
            } else {
                ("match", name.clone())
            };
            t.push_str(&format!("\n[[node]]\n{key} = {}\n{}", toml::Value::String(pat), c.fields()));
        }
        t
    }

    /// The policy as the pipeline reads it: [`Policy::toml`] parsed by [`crate::qconfig::parse`],
    /// the one reader, so the search and `compile --qconfig` see the same configuration.
    pub fn qconfig(&self) -> Result<QConfig> {
        Ok(crate::qconfig::parse(&self.toml())?)
    }

    /// A one-line summary: the default and its settings, and how many layers are at each other
    /// choice (`int8 per-channel minmax; 3 fp32, 1 bf16`).
    pub fn summary(&self) -> String {
        let mut s = self.default.name().to_string();
        if self.default.is_int() || self.layers.values().any(|c| c.is_int()) {
            s.push_str(&format!(" {} {}", self.granularity.name(), self.observer));
        }
        let mut counts: BTreeMap<Choice, usize> = BTreeMap::new();
        for c in self.layers.values() {
            *counts.entry(*c).or_default() += 1;
        }
        if !counts.is_empty() {
            let parts: Vec<String> = counts.iter().rev().map(|(c, n)| format!("{n} {}", c.name())).collect();
            s.push_str(&format!("; {}", parts.join(", ")));
        }
        s
    }

    /// The cache key: a 64-bit hash of the canonical text, as 16 hex digits (also the name of a
    /// job's result file).
    pub fn key(&self) -> String {
        format!("{:016x}", crate::artifact::fnv1a64(self.toml().as_bytes()))
    }
}

/// A policy to evaluate, with the search round that proposed it and why.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Candidate {
    pub policy: Policy,
    /// The search round (0: the uniform seeds).
    pub round: usize,
    /// How the search made it (`uniform int8`, `3 most sensitive fp32`, `+fp32 /conv2/Conv`).
    pub label: String,
}

/// The layer choices a target offers besides int8: fp32 always; bf16 and fp16 where it computes
/// in them; int4 weights where the profile lists int4.
pub fn float_choices(profile: &qforge_passes::precision::Profile) -> Vec<Choice> {
    let mut v = vec![Choice::Fp32];
    if profile.dtypes.bf16 && profile.features.bf16_compute {
        v.push(Choice::Bf16);
    }
    if profile.dtypes.fp16 && profile.features.fp16_compute {
        v.push(Choice::Fp16);
    }
    v
}

/// Reads a policy back from a job or result file, checking that its text is what the file says.
pub fn check_text(policy: &Policy, text: &str) -> Result<()> {
    if policy.toml() != text {
        bail!("the candidate's qconfig text does not match its policy (the file was edited?)");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use qforge_passes::quantize::{Pattern, Precision};

    #[test]
    fn canonical_text_parses_to_the_policy() {
        let p = Policy::uniform(Choice::Int8, Granularity::PerTensor, CalibMethod::Entropy)
            .with("/conv2/Conv", Choice::Fp32)
            .with("/a*b", Choice::Bf16)
            .with("/fc/Gemm", Choice::Int4);
        let q = p.qconfig().unwrap();
        assert_eq!(q.default.precision, Some(Precision::Int8));
        assert_eq!(q.default.observer, Some(CalibMethod::Entropy));
        assert_eq!(q.nodes.len(), 3);
        // sorted by name: the glob-looking name is an anchored regex
        assert_eq!(q.nodes[0].pattern, Pattern::regex("^/a\\*b$").unwrap());
        assert_eq!(q.nodes[0].rule.precision, Some(Precision::Bf16));
        assert_eq!(q.nodes[2].rule.precision, Some(Precision::Int8));
        assert_eq!(p.summary(), "int8 per-tensor entropy; 1 fp32, 1 bf16, 1 int4");
        // an exception equal to the default is dropped: the same text, the same key
        assert_eq!(p.with("/x", Choice::Int8).key(), p.key());
        assert_eq!(p.with("/conv2/Conv", Choice::Int8).layers.len(), 2);
    }
}
