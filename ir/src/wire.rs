//! Wire types: ONNX element types that the IR does not compute in but that a model may declare
//! for its graph inputs and constants (float8, float4, 4- and 2-bit integers). Each is decoded
//! once, at the graph's edge, into the IR type that holds every one of its values exactly
//! ([`WireType::dtype`]); the graph records the declared wire type of each such input
//! ([`crate::Graph::wire`]) so that whoever feeds it raw bytes (a `.npy` file of NumPy's raw
//! `V1` type, as `ml_dtypes` arrays are saved) decodes them here and nowhere else.
//!
//! The formats (the ONNX spec, `docs/docs/Float8.md`, `docs/docs/Float4.md` and the int4/int2
//! sections of `docs/IR.md`; the same tables as `ml_dtypes` and `onnx.numpy_helper`):
//!
//! | type | layout | bias | special values | largest finite |
//! |---|---|---|---|---|
//! | FLOAT8E4M3FN | s eeee mmm | 7 | NaN `s.1111.111`; no infinity | 448 |
//! | FLOAT8E4M3FNUZ | s eeee mmm | 8 | NaN `0x80` only (no -0); no infinity | 240 |
//! | FLOAT8E5M2 | s eeeee mm | 15 | IEEE: ±inf `s.11111.00`, NaN `s.11111.{01,10,11}` | 57344 |
//! | FLOAT8E5M2FNUZ | s eeeee mm | 16 | NaN `0x80` only (no -0); no infinity | 57344 |
//! | FLOAT8E8M0 | eeeeeeee | 127 | `2^(e-127)`; NaN `0xFF`; no sign, no zero | 2^127 |
//! | FLOAT4E2M1 | s ee m | 1 | none: ±{0, 0.5, 1, 1.5, 2, 3, 4, 6} | 6 |
//! | INT4 / UINT4 | 4-bit two's complement / unsigned | | | 7 / 15 |
//! | INT2 / UINT2 | 2-bit two's complement / unsigned | | | 1 / 3 |
//!
//! A zero exponent field is subnormal (`m * 2^(1 - bias - mbits)`), as in IEEE 754. Every value of
//! the 8- and 4-bit float formats but E8M0's is exact in f16 (E5M2's smallest subnormal is 2^-16,
//! f16's 2^-24; its largest 57344 < 65504); E8M0's range needs f32.
//!
//! In memory (NumPy, `ml_dtypes`) each value takes one byte: float formats their bits in the low
//! bits, the integer formats their value, sign-extended or not; decoding reads only the low bits
//! of the format's width (and sign-extends them for INT4/INT2), so both forms give the same value.
//! In an ONNX `TensorProto` the 4- and 2-bit formats are packed, two or four to a byte, the first
//! in the lowest bits ([`WireType::bits`]).

use crate::{DType, Tensor, TensorData};
use std::fmt;
use std::str::FromStr;

/// An ONNX element type carried in another IR type (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub enum WireType {
    F8E4M3FN,
    F8E4M3FNUZ,
    F8E5M2,
    F8E5M2FNUZ,
    F8E8M0,
    F4E2M1,
    I4,
    U4,
    I2,
    U2,
}

impl WireType {
    pub const ALL: [WireType; 10] = [
        WireType::F8E4M3FN,
        WireType::F8E4M3FNUZ,
        WireType::F8E5M2,
        WireType::F8E5M2FNUZ,
        WireType::F8E8M0,
        WireType::F4E2M1,
        WireType::I4,
        WireType::U4,
        WireType::I2,
        WireType::U2,
    ];

    /// The name in the text form and in messages.
    pub fn name(self) -> &'static str {
        match self {
            WireType::F8E4M3FN => "f8e4m3fn",
            WireType::F8E4M3FNUZ => "f8e4m3fnuz",
            WireType::F8E5M2 => "f8e5m2",
            WireType::F8E5M2FNUZ => "f8e5m2fnuz",
            WireType::F8E8M0 => "f8e8m0",
            WireType::F4E2M1 => "f4e2m1",
            WireType::I4 => "i4",
            WireType::U4 => "u4",
            WireType::I2 => "i2",
            WireType::U2 => "u2",
        }
    }

    /// The IR type its values are decoded into, which holds every one of them exactly: f16 for
    /// the 8- and 4-bit floats, f32 for E8M0, i8 and u8 for the integers.
    pub fn dtype(self) -> DType {
        match self {
            WireType::F8E4M3FN | WireType::F8E4M3FNUZ | WireType::F8E5M2 | WireType::F8E5M2FNUZ | WireType::F4E2M1 => {
                DType::F16
            }
            WireType::F8E8M0 => DType::F32,
            WireType::I4 | WireType::I2 => DType::I8,
            WireType::U4 | WireType::U2 => DType::U8,
        }
    }

    /// Bits per value in an ONNX `TensorProto` (values narrower than a byte are packed, the first
    /// in the lowest bits).
    pub fn bits(self) -> u32 {
        match self {
            WireType::F4E2M1 | WireType::I4 | WireType::U4 => 4,
            WireType::I2 | WireType::U2 => 2,
            _ => 8,
        }
    }

    /// Whether it is a floating-point format.
    pub fn is_float(self) -> bool {
        self.dtype().is_float()
    }

    /// The value of one encoded element (its low [`WireType::bits`] bits; see the module docs).
    pub fn decode(self, byte: u8) -> f64 {
        match self {
            WireType::F8E4M3FN => {
                if byte & 0x7F == 0x7F {
                    return f64::NAN;
                }
                minifloat(byte, 4, 3, 7)
            }
            WireType::F8E4M3FNUZ => {
                if byte == 0x80 {
                    return f64::NAN;
                }
                minifloat(byte, 4, 3, 8)
            }
            WireType::F8E5M2 => match byte & 0x7F {
                0x7C => {
                    if byte & 0x80 != 0 {
                        f64::NEG_INFINITY
                    } else {
                        f64::INFINITY
                    }
                }
                0x7D..=0x7F => f64::NAN,
                _ => minifloat(byte, 5, 2, 15),
            },
            WireType::F8E5M2FNUZ => {
                if byte == 0x80 {
                    return f64::NAN;
                }
                minifloat(byte, 5, 2, 16)
            }
            WireType::F8E8M0 => {
                if byte == 0xFF {
                    return f64::NAN;
                }
                (2f64).powi(i32::from(byte) - 127)
            }
            WireType::F4E2M1 => minifloat(byte & 0xF, 2, 1, 1),
            WireType::I4 => f64::from(((byte << 4) as i8) >> 4),
            WireType::U4 => f64::from(byte & 0xF),
            WireType::I2 => f64::from(((byte << 6) as i8) >> 6),
            WireType::U2 => f64::from(byte & 0x3),
        }
    }

    /// A tensor of [`WireType::dtype`] from one encoded element per byte (NumPy's in-memory
    /// form). `None` if the byte count does not match the shape.
    pub fn decode_bytes(self, shape: Vec<usize>, bytes: &[u8]) -> Option<Tensor> {
        let data = match self.dtype() {
            DType::F16 => TensorData::F16(bytes.iter().map(|&b| half::f16::from_f64(self.decode(b))).collect()),
            DType::F32 => TensorData::F32(bytes.iter().map(|&b| self.decode(b) as f32).collect()),
            DType::I8 => TensorData::I8(bytes.iter().map(|&b| self.decode(b) as i8).collect()),
            _ => TensorData::U8(bytes.iter().map(|&b| self.decode(b) as u8).collect()),
        };
        Tensor::new(shape, data)
    }

    /// A tensor of [`WireType::dtype`] from `n` elements packed [`WireType::bits`] to a byte, the
    /// first in the lowest bits (ONNX `TensorProto.raw_data`). `None` if `packed` has not exactly
    /// the bytes `n` values need or the count does not match the shape.
    pub fn decode_packed(self, shape: Vec<usize>, n: usize, packed: &[u8]) -> Option<Tensor> {
        let bits = self.bits() as usize;
        let per_byte = 8 / bits;
        if packed.len() != n.div_ceil(per_byte) {
            return None;
        }
        let mask = ((1u16 << bits) - 1) as u8;
        let one: Vec<u8> = (0..n).map(|i| (packed[i / per_byte] >> (bits * (i % per_byte))) & mask).collect();
        self.decode_bytes(shape, &one)
    }
}

/// The value of a sign/exponent/mantissa float of `ebits` exponent bits, `mbits` mantissa bits
/// and exponent bias `bias` with no special values (callers handle NaN and infinity first); a
/// zero exponent field is subnormal.
fn minifloat(bits: u8, ebits: u32, mbits: u32, bias: i32) -> f64 {
    let sign = if (bits >> (ebits + mbits)) & 1 == 1 { -1.0 } else { 1.0 };
    let e = i32::from((bits >> mbits) & ((1u8 << ebits) - 1));
    let m = f64::from(bits & ((1u8 << mbits) - 1));
    let scale = f64::from(1u32 << mbits);
    let mag = if e == 0 { m / scale * (2f64).powi(1 - bias) } else { (1.0 + m / scale) * (2f64).powi(e - bias) };
    sign * mag
}

impl fmt::Display for WireType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A wire type name that is not one of qforge's.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown wire type `{name}` (expected one of f8e4m3fn, f8e4m3fnuz, f8e5m2, f8e5m2fnuz, f8e8m0, f4e2m1, i4, u4, i2, u2)")]
pub struct ParseWireTypeError {
    pub name: String,
}

impl FromStr for WireType {
    type Err = ParseWireTypeError;
    fn from_str(s: &str) -> Result<Self, ParseWireTypeError> {
        WireType::ALL.into_iter().find(|w| w.name() == s).ok_or_else(|| ParseWireTypeError { name: s.to_string() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every code of every format against `ml_dtypes` (the table the ONNX reference uses), as
    /// written by `python3 -c "import ml_dtypes, numpy as np; ..."`: a few codes per format that
    /// cover zero, subnormals, the largest finite value and the special values.
    #[test]
    fn decodes_the_reference_values() {
        let cases: &[(WireType, u8, f64)] = &[
            (WireType::F8E4M3FN, 0x00, 0.0),
            (WireType::F8E4M3FN, 0x01, 0.001953125),
            (WireType::F8E4M3FN, 0x38, 1.0),
            (WireType::F8E4M3FN, 0x7E, 448.0),
            (WireType::F8E4M3FN, 0xFE, -448.0),
            (WireType::F8E4M3FN, 0x7F, f64::NAN),
            (WireType::F8E4M3FN, 0xFF, f64::NAN),
            (WireType::F8E4M3FNUZ, 0x01, 0.0009765625),
            (WireType::F8E4M3FNUZ, 0x40, 1.0),
            (WireType::F8E4M3FNUZ, 0x7F, 240.0),
            (WireType::F8E4M3FNUZ, 0xFF, -240.0),
            (WireType::F8E4M3FNUZ, 0x80, f64::NAN),
            (WireType::F8E5M2, 0x01, 1.52587890625e-05),
            (WireType::F8E5M2, 0x3C, 1.0),
            (WireType::F8E5M2, 0x7B, 57344.0),
            (WireType::F8E5M2, 0x7C, f64::INFINITY),
            (WireType::F8E5M2, 0xFC, f64::NEG_INFINITY),
            (WireType::F8E5M2, 0x7E, f64::NAN),
            (WireType::F8E5M2FNUZ, 0x01, 7.62939453125e-06),
            (WireType::F8E5M2FNUZ, 0x40, 1.0),
            (WireType::F8E5M2FNUZ, 0x7F, 57344.0),
            (WireType::F8E5M2FNUZ, 0x80, f64::NAN),
            (WireType::F8E8M0, 0x00, 5.877471754111438e-39),
            (WireType::F8E8M0, 0x7F, 1.0),
            (WireType::F8E8M0, 0xFE, 1.7014118346046923e38),
            (WireType::F8E8M0, 0xFF, f64::NAN),
            (WireType::F4E2M1, 0x1, 0.5),
            (WireType::F4E2M1, 0x7, 6.0),
            (WireType::F4E2M1, 0xF, -6.0),
            (WireType::F4E2M1, 0x8, -0.0),
            (WireType::I4, 0x0F, -1.0),
            (WireType::I4, 0xFF, -1.0),
            (WireType::I4, 0x08, -8.0),
            (WireType::I4, 0x07, 7.0),
            (WireType::U4, 0x0F, 15.0),
            (WireType::I2, 0x02, -2.0),
            (WireType::I2, 0xFE, -2.0),
            (WireType::I2, 0x01, 1.0),
            (WireType::U2, 0x03, 3.0),
        ];
        for &(w, b, want) in cases {
            let got = w.decode(b);
            assert!(got == want || (got.is_nan() && want.is_nan()), "{w} {b:#04x}: {got} != {want}");
        }
    }

    #[test]
    fn decodes_into_exact_ir_types() {
        for w in WireType::ALL {
            let n = 1usize << w.bits();
            for b in 0..n as u8 {
                let t = w.decode_bytes(vec![1], &[b]).unwrap();
                let v = t.to_f64_vec()[0];
                let want = w.decode(b);
                assert!(v == want || (v.is_nan() && want.is_nan()), "{w} {b:#04x}: {v} != {want}");
                assert_eq!(w.name().parse::<WireType>().unwrap(), w);
            }
        }
        // [-8, 7, -1, 0, 3] packed two to a byte, the first in the low nibble.
        let t = WireType::I4.decode_packed(vec![5], 5, &[0x78, 0x0f, 0x03]).unwrap();
        assert_eq!(t.to_i64_vec().unwrap(), vec![-8, 7, -1, 0, 3]);
        let t = WireType::U2.decode_packed(vec![5], 5, &[0b1110_0100, 0b11]).unwrap();
        assert_eq!(t.to_i64_vec().unwrap(), vec![0, 1, 2, 3, 3]);
        assert!(WireType::U2.decode_packed(vec![5], 5, &[0]).is_none());
    }
}
