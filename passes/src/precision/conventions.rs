//! Export conventions: how a target's own toolchain wants a QDQ ONNX model quantized, as data (a
//! profile's optional `[export]` table; see [`super::profile`]). `qforge quantize --profile P`
//! reads them to set the quantization policy's defaults, to refuse the choices the toolchain does
//! not take, and to say in its report which conventions the export follows.
//!
//! ```toml
//! [export]
//! family = "nvidia"                     # nvidia | qualcomm | intel | onnxruntime
//! toolchain = "TensorRT explicit quantization"
//! activations = ["i8-symmetric"]        # the activation schemes it takes; the first is the default
//! weights = ["i8-symmetric"]            # the weight schemes it takes (4-bit ones for --weight-bits 4)
//! granularity = ["per-channel", "per-tensor"]   # weight granularities; the first is the default
//! float_ops = ["add"]                   # quantizable ops it wants left float (it fuses them itself)
//! pad_channels = true                   # pad conv/gemm output channels to [layout] channel_align
//! int32_bias = false                    # biases as int32 Q/DQ (false: float, dequantized offline)
//! ```
//!
//! Per-channel weights are always on the op's output-channel axis (axis 0 of a conv weight), the
//! one axis every toolchain here takes. A profile without `[export]` follows ONNX Runtime's QDQ
//! conventions ([`ExportConventions::onnxruntime`]).

use crate::quantize::scheme::Scheme;
use crate::quantize::WeightGranularity;
use serde::Deserialize;
use std::fmt;

/// Whose toolchain an export is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ExportFamily {
    /// TensorRT (explicit quantization).
    Nvidia,
    /// Qualcomm AI Engine Direct (QNN).
    Qualcomm,
    /// OpenVINO (its low-precision transformations).
    Intel,
    /// ONNX Runtime's QDQ form (its CPU execution provider).
    Onnxruntime,
}

impl ExportFamily {
    pub fn name(self) -> &'static str {
        match self {
            ExportFamily::Nvidia => "nvidia",
            ExportFamily::Qualcomm => "qualcomm",
            ExportFamily::Intel => "intel",
            ExportFamily::Onnxruntime => "onnxruntime",
        }
    }
}

impl fmt::Display for ExportFamily {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The `[export]` table as written.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConventions {
    family: ExportFamily,
    toolchain: String,
    activations: Vec<String>,
    weights: Vec<String>,
    granularity: Vec<String>,
    float_ops: Vec<String>,
    pad_channels: bool,
    int32_bias: bool,
}

/// A target toolchain's export conventions.
#[derive(Clone, Debug, PartialEq)]
pub struct ExportConventions {
    pub family: ExportFamily,
    /// The toolchain, for reports ("TensorRT explicit quantization").
    pub toolchain: String,
    /// The activation schemes the toolchain takes; the first is the default.
    pub activations: Vec<Scheme>,
    /// The weight schemes it takes (8- and 4-bit); the first is the default.
    pub weights: Vec<Scheme>,
    /// The weight granularities it takes (per channel on the output-channel axis, per tensor);
    /// the first is the default.
    pub granularity: Vec<WeightGranularity>,
    /// Ops (as the IR names them: `add`, `concat`, ...) the quantizer would quantize that the
    /// toolchain wants left float, because it fuses them into the integer op before them.
    pub float_ops: Vec<String>,
    /// Whether conv and gemm output channels are padded to the profile's `channel_align`.
    pub pad_channels: bool,
    /// Whether biases stay int32 Q/DQ (at the input scale times the weight scale); `false`: they
    /// are written as the float values those dequantize to (a toolchain whose DequantizeLinear
    /// takes 8-bit inputs only).
    pub int32_bias: bool,
}

/// A granularity's name in profile files.
pub fn granularity_name(g: WeightGranularity) -> String {
    match g {
        WeightGranularity::PerChannel => "per-channel".into(),
        WeightGranularity::PerTensor => "per-tensor".into(),
        WeightGranularity::PerGroup(n) => format!("per-group:{n}"),
    }
}

impl ExportConventions {
    /// ONNX Runtime's QDQ conventions (`quantize_static`'s defaults, which qforge's quantizer
    /// follows): u8 asymmetric activations, i8 symmetric per-channel weights, every op the
    /// quantizer quantizes with its Q/DQ.
    pub fn onnxruntime() -> ExportConventions {
        use crate::quantize::scheme::QType;
        ExportConventions {
            family: ExportFamily::Onnxruntime,
            toolchain: "ONNX Runtime QDQ".into(),
            activations: vec![Scheme::asymmetric(QType::U8), Scheme::symmetric(QType::I8)],
            weights: vec![Scheme::symmetric(QType::I8), Scheme::symmetric(QType::I4)],
            granularity: vec![WeightGranularity::PerChannel, WeightGranularity::PerTensor],
            float_ops: vec![],
            pad_channels: false,
            int32_bias: true,
        }
    }

    /// Checks and converts the table as written; errors say which key is wrong.
    pub(super) fn from_raw(r: RawConventions) -> Result<ExportConventions, String> {
        let schemes = |key: &str, v: &[String], weights: bool| -> Result<Vec<Scheme>, String> {
            if v.is_empty() {
                return Err(format!("[export] {key} lists no scheme"));
            }
            v.iter()
                .map(|s| {
                    let sc = Scheme::parse(s)
                        .ok_or_else(|| format!("[export] {key}: unknown scheme `{s}` (e.g. i8-symmetric)"))?;
                    if !weights && sc.qtype.bits() != 8 {
                        return Err(format!("[export] {key}: activations must be 8-bit, got `{s}`"));
                    }
                    Ok(sc)
                })
                .collect()
        };
        let activations = schemes("activations", &r.activations, false)?;
        let weights = schemes("weights", &r.weights, true)?;
        if weights[0].qtype.bits() != 8 {
            return Err("[export] weights: the first (default) scheme must be 8-bit".into());
        }
        if r.granularity.is_empty() {
            return Err("[export] granularity lists nothing".into());
        }
        let granularity = r
            .granularity
            .iter()
            .map(|g| match g.as_str() {
                "per-channel" => Ok(WeightGranularity::PerChannel),
                "per-tensor" => Ok(WeightGranularity::PerTensor),
                other => Err(format!("[export] granularity: `{other}` (expected per-channel or per-tensor)")),
            })
            .collect::<Result<Vec<_>, _>>()?;
        if r.toolchain.is_empty() {
            return Err("[export] toolchain is empty".into());
        }
        Ok(ExportConventions {
            family: r.family,
            toolchain: r.toolchain,
            activations,
            weights,
            granularity,
            float_ops: r.float_ops,
            pad_channels: r.pad_channels,
            int32_bias: r.int32_bias,
        })
    }

    /// The default activation scheme.
    pub fn activation_default(&self) -> Scheme {
        self.activations[0]
    }

    /// The default weight scheme at `bits` (8, or 4 where the toolchain takes 4-bit weights).
    pub fn weight_scheme(&self, bits: u32) -> Option<Scheme> {
        self.weights.iter().copied().find(|s| s.qtype.bits() == bits)
    }

    /// One line for reports: family, toolchain, the schemes and granularity in force (the
    /// conventions' defaults, or what the user chose within them) and what stays float.
    pub fn describe(&self, activations: Scheme, weights: Scheme, granularity: WeightGranularity) -> String {
        let axis = match granularity {
            WeightGranularity::PerChannel => " on the output-channel axis",
            _ => "",
        };
        let mut s = format!(
            "{} ({}): activations {} per tensor, weights {} {}{axis}",
            self.family,
            self.toolchain,
            activations.name(),
            weights.name(),
            granularity_name(granularity),
        );
        if !self.int32_bias {
            s.push_str(", float biases");
        }
        if !self.float_ops.is_empty() {
            s.push_str(&format!(", Q/DQ left out around {} (fused in float)", self.float_ops.join(", ")));
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::precision::Profile;
    use crate::quantize::scheme::QType;

    #[test]
    fn shipped_profiles_carry_their_vendors_conventions() {
        let x = Profile::shipped("nvidia-xavier").unwrap().export;
        assert_eq!(x.family, ExportFamily::Nvidia);
        assert_eq!(x.activations, vec![Scheme::symmetric(QType::I8)]);
        assert_eq!(x.weights, vec![Scheme::symmetric(QType::I8)]);
        assert!(x.pad_channels && x.float_ops == ["add"]);
        let q = Profile::shipped("qualcomm-snapdragon").unwrap().export;
        assert_eq!(q.activation_default(), Scheme::asymmetric(QType::U8));
        assert_eq!(q.weight_scheme(4), Some(Scheme::symmetric(QType::I4)));
        let i = Profile::shipped("intel-movidius").unwrap().export;
        assert_eq!(
            (i.family, i.activation_default(), i.weights[0]),
            (ExportFamily::Intel, Scheme::asymmetric(QType::U8), Scheme::symmetric(QType::I8))
        );
        assert_eq!(i.weight_scheme(4), None);
        assert_eq!(Profile::host_base().export, ExportConventions::onnxruntime());
    }

    #[test]
    fn bad_tables_are_refused_with_the_key() {
        let base = crate::precision::profile::SHIPPED[1].1;
        for (from, to, want) in [
            ("activations = [\"i8-symmetric\"]", "activations = [\"i4-symmetric\"]", "8-bit"),
            ("weights = [\"i8-symmetric\"]", "weights = [\"i8-sym\"]", "unknown scheme"),
            ("family = \"nvidia\"", "family = \"nvidea\"", "nvidea"),
            ("pad_channels = true", "pad_channels = true\npadding = 8", "padding"),
        ] {
            assert!(base.contains(from), "{from}");
            let e = Profile::parse(&base.replace(from, to), "p.toml").unwrap_err().to_string();
            assert!(e.contains(want) && e.contains("p.toml"), "{e}");
        }
    }
}
