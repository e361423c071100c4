//! Code for a fused kernel's epilogue list ([`crate::spec::Step`]) over an accumulator tile:
//! each row of the tile is processed 16 columns at a time as four 128-bit vectors (i32x4 or
//! f32x4), then column by column for the remainder, with the same steps on scalars. The steps
//! are emitted in the order of the list; nothing else is done to the values.
//!
//! Rounding and saturation follow [`qforge_ir::numerics`]: `nearest` rounds half to even (as
//! `roundps`), `fcvt_to_sint_sat` saturates to i32, then the value is clamped to `[lo - zp,
//! hi - zp]` and `zp` is added, which equals `saturate(round_half_even(x) + zp)` clamped to the
//! folded activation range. Narrowing to u8/i8 happens after the clamp, so it is exact.

use super::{flags, Emitter};
use crate::spec::{Acc, Step, Store};
use crate::JitError;
use cranelift_codegen::ir::{types, InstBuilder, Type, Value};

/// Where the tile is and where its results go. All pointers address the tile's first row at
/// column `n0`.
pub struct Tile {
    /// The accumulator tile (i32 or f32), `ldc` elements per row.
    pub tile: Value,
    pub ldc: i64,
    /// Rows in this tile (runtime).
    pub rows: Value,
    /// The tile's first column in the output (runtime), and how many columns it has.
    pub n0: Value,
    pub nr: Value,
    /// The output element at (first row, n0), and the output row stride in bytes.
    pub out: Value,
    pub out_stride: i64,
    /// The residual element at (first row, n0) (the output's type and layout), if any.
    pub residual: Option<Value>,
}

/// Emits the epilogue `steps` of a kernel whose accumulator is `acc`, storing as `store`.
/// `params[i]` is the address of step `i`'s per-channel array (padded to a multiple of 16 past
/// the last column), or 0 for steps without one.
pub fn emit(
    em: &mut Emitter<'_, '_>,
    acc: Acc,
    steps: &[Step],
    params: &[i64],
    store: Store,
    t: &Tile,
) -> Result<(), JitError> {
    let zero = em.iconst(0);
    em.for_range(zero, t.rows, 1, |em, r| {
        let tile_r = em.index(t.tile, r, t.ldc * 4);
        let out_r = em.index(t.out, r, t.out_stride);
        let res_r = t.residual.map(|p| em.index(p, r, t.out_stride));
        let row = Row { tile: tile_r, out: out_r, res: res_r, n0: t.n0 };
        let vend = em.b.ins().band_imm_s(t.nr, !15i64);
        let zero = em.iconst(0);
        em.for_range(zero, vend, 16, |em, j| chunk(em, acc, steps, params, store, &row, j, true))?;
        em.for_range(vend, t.nr, 1, |em, j| chunk(em, acc, steps, params, store, &row, j, false))
    })
}

struct Row {
    tile: Value,
    out: Value,
    res: Option<Value>,
    n0: Value,
}

/// A value being carried through the steps: i32 or f32 lanes.
#[derive(Clone, Copy)]
enum Lanes {
    I(Value),
    F(Value),
}

#[allow(clippy::too_many_arguments)]
fn chunk(
    em: &mut Emitter<'_, '_>,
    acc: Acc,
    steps: &[Step],
    params: &[i64],
    store: Store,
    row: &Row,
    j: Value,
    vector: bool,
) -> Result<(), JitError> {
    let groups = if vector { 4 } else { 1 };
    let (ity, fty) = if vector { (types::I32X4, types::F32X4) } else { (types::I32, types::F32) };
    let fl = flags();
    let tile_j = em.index(row.tile, j, 4);
    let mut vals: Vec<Lanes> = (0..groups)
        .map(|g| match acc {
            Acc::I32 => Lanes::I(em.b.ins().load(ity, fl, tile_j, 16 * g)),
            Acc::F32 => Lanes::F(em.b.ins().load(fty, fl, tile_j, 16 * g)),
        })
        .collect();
    let col = em.b.ins().iadd(row.n0, j);
    for (i, step) in steps.iter().enumerate() {
        let param = if params.get(i).copied().unwrap_or(0) != 0 {
            let base = em.iconst(params[i]);
            // a table step indexes its table itself (by byte, and by column for per-channel ones)
            Some(if matches!(step, Step::Lut8 { .. }) { base } else { em.index(base, col, 4) })
        } else {
            None
        };
        for (g, v) in vals.iter_mut().enumerate() {
            let off = (16 * g) as i32;
            *v = apply(em, step, *v, param, off, row, j, ity, fty)?;
        }
    }
    let out_j = em.index(row.out, j, store.bytes() as i64);
    match store {
        Store::F32 => {
            for (g, v) in vals.iter().enumerate() {
                let Lanes::F(v) = *v else { return Err(JitError::Codegen("an f32 store of integers".into())) };
                em.b.ins().store(fl, v, out_j, (16 * g) as i32);
            }
        }
        Store::Bf16 => {
            let mut bits = vec![];
            for v in &vals {
                let Lanes::F(v) = *v else { return Err(JitError::Codegen("a bf16 store of integers".into())) };
                bits.push(bf16_bits(em, v, ity));
            }
            if vector {
                // i32 lanes in 0..=0xffff: the signed-to-unsigned saturating narrow is exact
                let lo = em.b.ins().unarrow(bits[0], bits[1]);
                let hi = em.b.ins().unarrow(bits[2], bits[3]);
                em.b.ins().store(fl, lo, out_j, 0);
                em.b.ins().store(fl, hi, out_j, 16);
            } else {
                em.b.ins().istore16(fl, bits[0], out_j, 0);
            }
        }
        Store::U8 | Store::I8 => {
            let ints: Vec<Value> = vals
                .iter()
                .map(|v| match v {
                    Lanes::I(v) => Ok(*v),
                    Lanes::F(_) => Err(JitError::Codegen("an integer store of floats".into())),
                })
                .collect::<Result<_, _>>()?;
            if vector {
                let a = em.b.ins().snarrow(ints[0], ints[1]);
                let c = em.b.ins().snarrow(ints[2], ints[3]);
                let q = if store == Store::U8 { em.b.ins().unarrow(a, c) } else { em.b.ins().snarrow(a, c) };
                em.b.ins().store(fl, q, out_j, 0);
            } else {
                em.b.ins().istore8(fl, ints[0], out_j, 0);
            }
        }
    }
    Ok(())
}

/// The bf16 bits (in the low half of i32 lanes) of f32 lanes `x`, rounded to nearest even with
/// NaN kept as a quiet NaN: `(b + 0x7fff + ((b >> 16) & 1)) >> 16` for `b` the f32 bits, or
/// `(b >> 16) | 0x40` for NaN, which is `half::bf16::from_f32` (the interpreter's rounding).
fn bf16_bits(em: &mut Emitter<'_, '_>, x: Value, ity: Type) -> Value {
    use cranelift_codegen::ir::condcodes::FloatCC;
    let b = em.b.ins().bitcast(ity, le(), x);
    let hi = em.b.ins().ushr_imm_u(b, 16);
    let one = splat_i(em, ity, 1);
    let lsb = em.b.ins().band(hi, one);
    let bias = splat_i(em, ity, 0x7fff);
    let r = em.b.ins().iadd(b, bias);
    let r = em.b.ins().iadd(r, lsb);
    let r = em.b.ins().ushr_imm_u(r, 16);
    let quiet = splat_i(em, ity, 0x40);
    let nan_bits = em.b.ins().bor(hi, quiet);
    let nan = em.b.ins().fcmp(FloatCC::Unordered, x, x);
    if ity.is_vector() {
        em.b.ins().bitselect(nan, nan_bits, r)
    } else {
        em.b.ins().select(nan, nan_bits, r)
    }
}

/// `x` rounded to f16 and widened back to f32, as `vcvtps2ph` (nearest even) and `vcvtph2ps` do
/// and the `half` crate computes, in f32 and i32 lanes: the magnitude's bits rounded to 10
/// fraction bits (`+ 0xfff + lsb`, then the 13 low bits cleared) in f16's normal range; below
/// 2^-14 (f16 subnormals, a fixed step of 2^-24) `(|x| + 0.5) - 0.5`, whose f32 sum has exactly
/// that step and rounds to nearest even; from 65520 (half-way past the largest f16, 65504, to an
/// even neighbour outside the range) infinity; a NaN quieted with its low 13 bits cleared; the
/// sign put back.
fn round_f16(em: &mut Emitter<'_, '_>, x: Value, ity: Type, fty: Type) -> Value {
    use cranelift_codegen::ir::condcodes::IntCC;
    let b = em.b.ins().bitcast(ity, le(), x);
    let sign_mask = splat_i(em, ity, i32::MIN);
    let sign = em.b.ins().band(b, sign_mask);
    let abs_mask = splat_i(em, ity, i32::MAX);
    let a = em.b.ins().band(b, abs_mask);
    // normal f16 range
    let kept = em.b.ins().ushr_imm_u(a, 13);
    let one = splat_i(em, ity, 1);
    let lsb = em.b.ins().band(kept, one);
    let bias = splat_i(em, ity, 0xfff);
    let n = em.b.ins().iadd(a, bias);
    let n = em.b.ins().iadd(n, lsb);
    let low = splat_i(em, ity, 0xffff_e000_u32 as i32);
    let n = em.b.ins().band(n, low);
    // subnormal f16 range
    let ax = em.b.ins().bitcast(fty, le(), a);
    let half = splat_f(em, fty, 0.5);
    let s = em.b.ins().fadd(ax, half);
    let s = em.b.ins().fsub(s, half);
    let sb = em.b.ins().bitcast(ity, le(), s);
    // NaN
    let quiet = splat_i(em, ity, 0x0040_0000);
    let nan = em.b.ins().bor(a, quiet);
    let nan = em.b.ins().band(nan, low);
    let inf = splat_i(em, ity, 0x7f80_0000);
    let min_normal = splat_i(em, ity, 0x3880_0000);
    let overflow = splat_i(em, ity, 0x477f_f000);
    let is_sub = em.b.ins().icmp(IntCC::SignedLessThan, a, min_normal);
    let is_big = em.b.ins().icmp(IntCC::SignedGreaterThanOrEqual, a, overflow);
    let is_nan = em.b.ins().icmp(IntCC::SignedGreaterThan, a, inf);
    let r = if ity.is_vector() {
        let r = em.b.ins().bitselect(is_sub, sb, n);
        let r = em.b.ins().bitselect(is_big, inf, r);
        em.b.ins().bitselect(is_nan, nan, r)
    } else {
        let r = em.b.ins().select(is_sub, sb, n);
        let r = em.b.ins().select(is_big, inf, r);
        em.b.ins().select(is_nan, nan, r)
    };
    let r = em.b.ins().bor(r, sign);
    em.b.ins().bitcast(fty, le(), r)
}

/// Flags of a lane-preserving bitcast.
fn le() -> cranelift_codegen::ir::MemFlagsData {
    cranelift_codegen::ir::MemFlagsData::new().with_endianness(cranelift_codegen::ir::Endianness::Little)
}

pub(crate) fn splat_f(em: &mut Emitter<'_, '_>, ty: Type, x: f32) -> Value {
    let c = em.b.ins().f32const(x);
    if ty.is_vector() {
        em.b.ins().splat(ty, c)
    } else {
        c
    }
}

pub(crate) fn splat_i(em: &mut Emitter<'_, '_>, ty: Type, x: i32) -> Value {
    let c = em.b.ins().iconst(types::I32, x as i64);
    if ty.is_vector() {
        em.b.ins().splat(ty, c)
    } else {
        c
    }
}

/// `x * clamp(x + 3, 0, 6) / 6` of one f32 in f64, rounded to f32 once (the interpreter's
/// hard-swish, [`crate::spec::hard_swish`]): `fmax`/`fmin` propagate NaN as the clamp does, and
/// `x + 3` is never `-0.0`, so their ordering of signed zeros does not arise.
fn hard_swish_f64(em: &mut Emitter<'_, '_>, x: Value) -> Value {
    let v = em.b.ins().fpromote(types::F64, x);
    let three = em.b.ins().f64const(3.0);
    let zero = em.b.ins().f64const(0.0);
    let six = em.b.ins().f64const(6.0);
    let t = em.b.ins().fadd(v, three);
    let t = em.b.ins().fmax(t, zero);
    let t = em.b.ins().fmin(t, six);
    let p = em.b.ins().fmul(v, t);
    let q = em.b.ins().fdiv(p, six);
    em.b.ins().fdemote(types::F32, q)
}

fn to_f(em: &mut Emitter<'_, '_>, v: Lanes, fty: Type) -> Value {
    match v {
        Lanes::F(v) => v,
        Lanes::I(v) => em.b.ins().fcvt_from_sint(fty, v),
    }
}

#[allow(clippy::too_many_arguments)]
fn apply(
    em: &mut Emitter<'_, '_>,
    step: &Step,
    v: Lanes,
    param: Option<Value>,
    off: i32,
    row: &Row,
    j: Value,
    ity: Type,
    fty: Type,
) -> Result<Lanes, JitError> {
    let fl = flags();
    let need = |p: Option<Value>| p.ok_or_else(|| JitError::Codegen("a per-channel step without its array".into()));
    Ok(match step {
        Step::AddChannelI32(_) => {
            let Lanes::I(x) = v else { return Err(JitError::Codegen("an integer add on floats".into())) };
            let p = em.b.ins().load(ity, fl, need(param)?, off);
            Lanes::I(em.b.ins().iadd(x, p))
        }
        Step::ScaleToF32(_) => {
            let x = to_f(em, v, fty);
            let p = em.b.ins().load(fty, fl, need(param)?, off);
            Lanes::F(em.b.ins().fmul(x, p))
        }
        Step::DivF32(d) => {
            let x = to_f(em, v, fty);
            let d = splat_f(em, fty, *d);
            Lanes::F(em.b.ins().fdiv(x, d))
        }
        Step::AddChannelF32(_) => {
            let x = to_f(em, v, fty);
            let p = em.b.ins().load(fty, fl, need(param)?, off);
            Lanes::F(em.b.ins().fadd(x, p))
        }
        Step::AddResidualF32 => {
            let x = to_f(em, v, fty);
            let res = row.res.ok_or_else(|| JitError::Codegen("a residual step without a residual".into()))?;
            let at = em.index(res, j, 4);
            let p = em.b.ins().load(fty, fl, at, off);
            Lanes::F(em.b.ins().fadd(x, p))
        }
        Step::RoundBf16 => {
            let x = to_f(em, v, fty);
            let bits = bf16_bits(em, x, ity);
            let wide = em.b.ins().ishl_imm_u(bits, 16);
            Lanes::F(em.b.ins().bitcast(fty, le(), wide))
        }
        Step::RoundF16 => {
            let x = to_f(em, v, fty);
            Lanes::F(round_f16(em, x, ity, fty))
        }
        Step::AddResidualBf16 => {
            let x = to_f(em, v, fty);
            let res = row.res.ok_or_else(|| JitError::Codegen("a residual step without a residual".into()))?;
            let at = em.index(res, j, 2);
            // `off` counts bytes of f32 lanes: 16 per group of four, 8 bytes of bf16
            let bits = if ity.is_vector() {
                em.b.ins().uload16x4(fl, at, off / 2)
            } else {
                em.b.ins().uload16(types::I32, fl, at, off / 2)
            };
            let wide = em.b.ins().ishl_imm_u(bits, 16);
            let r = em.b.ins().bitcast(fty, le(), wide);
            Lanes::F(em.b.ins().fadd(x, r))
        }
        Step::MaxF32(c) => {
            let x = to_f(em, v, fty);
            let c = splat_f(em, fty, *c);
            Lanes::F(em.b.ins().fmax(x, c))
        }
        Step::MinF32(c) => {
            let x = to_f(em, v, fty);
            let c = splat_f(em, fty, *c);
            Lanes::F(em.b.ins().fmin(x, c))
        }
        Step::MulChannelF32(_) => {
            let x = to_f(em, v, fty);
            let p = em.b.ins().load(fty, fl, need(param)?, off);
            Lanes::F(em.b.ins().fmul(x, p))
        }
        Step::HardSwish => {
            let x = to_f(em, v, fty);
            if fty.is_vector() {
                // lane by lane in f64 (this is the portable epilogue; the 512-bit one has f64 lanes)
                let mut r = x;
                for lane in 0..fty.lane_count() as u8 {
                    let e = em.b.ins().extractlane(x, lane);
                    let h = hard_swish_f64(em, e);
                    r = em.b.ins().insertlane(r, h, lane);
                }
                Lanes::F(r)
            } else {
                Lanes::F(hard_swish_f64(em, x))
            }
        }
        Step::Silu => {
            // the interpreter's sigmoid is not Cranelift code: the lanes go through a stack slot
            // to `spec::silu_in_place` and back
            use cranelift_codegen::ir::{StackSlotData, StackSlotKind};
            let x = to_f(em, v, fty);
            let lanes = fty.lane_count();
            let slot = em.b.create_sized_stack_slot(StackSlotData::new(StackSlotKind::ExplicitSlot, 4 * lanes, 4));
            let ptr = em.ptr;
            em.b.ins().stack_store(ptr, x, slot, 0);
            let addr = em.b.ins().stack_addr(ptr, slot, 0);
            let n = em.iconst(lanes as i64);
            em.call("qf_silu", &[addr, n])?;
            Lanes::F(em.b.ins().stack_load(ptr, fty, slot, 0))
        }
        Step::Lut8 { per_channel, signed, .. } => {
            let Lanes::I(x) = v else { return Err(JitError::Codegen("a table step on floats".into())) };
            let base = need(param)?;
            // lane by lane: the low byte indexes the table (of this lane's column when per channel)
            let lookup = |em: &mut Emitter<'_, '_>, q: Value, lane: i64| -> Value {
                let byte = em.b.ins().band_imm_u(q, 0xff);
                let byte = em.b.ins().uextend(types::I64, byte);
                let mut at = em.b.ins().iadd(base, byte);
                if *per_channel {
                    let c = em.b.ins().iadd(row.n0, j);
                    let c = em.b.ins().iadd_imm_u(c, (off / 4) as i64 + lane);
                    let c = em.b.ins().imul_imm_u(c, 256);
                    at = em.b.ins().iadd(at, c);
                }
                // the store narrows with signed saturation for i8: the byte read as i8
                if *signed {
                    em.b.ins().sload8(types::I32, fl, at, 0)
                } else {
                    em.b.ins().uload8(types::I32, fl, at, 0)
                }
            };
            if ity.is_vector() {
                let mut r = x;
                for lane in 0..ity.lane_count() as u8 {
                    let e = em.b.ins().extractlane(x, lane);
                    let t = lookup(em, e, lane as i64);
                    r = em.b.ins().insertlane(r, t, lane);
                }
                Lanes::I(r)
            } else {
                Lanes::I(lookup(em, x, 0))
            }
        }
        Step::RoundToInt { zp, lo, hi, bounded } => {
            let i = match v {
                Lanes::I(i) => i,
                Lanes::F(x) => {
                    let r = em.b.ins().nearest(x);
                    if *bounded && ity == types::I32X4 && cfg!(target_arch = "x86_64") {
                        // |r| < 2^30 was proved at lowering: the plain conversion is exact.
                        em.b.ins().x86_cvtt2dq(ity, r)
                    } else {
                        em.b.ins().fcvt_to_sint_sat(ity, r)
                    }
                }
            };
            let lo = splat_i(em, ity, lo.saturating_sub(*zp));
            let hi = splat_i(em, ity, hi.saturating_sub(*zp));
            let i = em.b.ins().smax(i, lo);
            let i = em.b.ins().smin(i, hi);
            let z = splat_i(em, ity, *zp);
            Lanes::I(em.b.ins().iadd(i, z))
        }
    })
}
