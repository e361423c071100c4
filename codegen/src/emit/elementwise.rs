//! Element-wise steps and pooling loops. An element-wise step's units are elements: the code
//! handles `begin..end` sixteen at a time with four 128-bit vectors, then one at a time. Integer
//! formulas are [`qforge_ir::numerics`]'s: the quantized add is ONNX Runtime's fused
//! multiply-add form ([`qforge_ir::numerics::QAddParams`]), quantize divides (never multiplies
//! by a reciprocal), and every float-to-integer conversion rounds half to even and saturates.

use super::epilogue::{splat_f, splat_i};
use super::{flags, Emitter};
use crate::JitError;
use cranelift_codegen::ir::{types, InstBuilder, Type, Value};
use qforge_ir::numerics::QAddParams;

/// An integer storage type of an element-wise operand.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IntTy {
    U8,
    I8,
}

impl IntTy {
    /// The storage range, `(lo, hi)`.
    pub fn range(self) -> (i32, i32) {
        match self {
            IntTy::U8 => (0, 255),
            IntTy::I8 => (-128, 127),
        }
    }
}

/// What an element-wise step computes.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Elementwise {
    /// `c = sat(round(fma(a, ra, fma(b, rb, fixed))))`, all operands of one shape and layout.
    QAdd { p: QAddParams, a: IntTy, b: IntTy, out: IntTy },
    /// `q = sat(round_half_even(x / scale) + zp)`.
    Quantize { scale: f32, zp: i32, out: IntTy },
    /// `x = (q - zp) as f32 * scale`.
    Dequantize { scale: f32, zp: i32, input: IntTy },
    /// `c = a + b` (then `max(c, 0)` if `relu`).
    AddF32 { relu: bool },
    /// `y = min(max(x, lo), hi)` (ReLU is `lo = 0, hi = inf`).
    ClampF32 { lo: f32, hi: f32 },
}

impl Elementwise {
    pub fn name(&self) -> &'static str {
        match self {
            Elementwise::QAdd { .. } => "qadd",
            Elementwise::Quantize { .. } => "quantize",
            Elementwise::Dequantize { .. } => "dequantize",
            Elementwise::AddF32 { relu: false } => "add_f32",
            Elementwise::AddF32 { relu: true } => "add_relu_f32",
            Elementwise::ClampF32 { .. } => "clamp_f32",
        }
    }
}

/// Emits the body of an element-wise step reading `inputs` (arena offsets) and writing `output`.
pub fn emit(
    em: &mut Emitter<'_, '_>,
    op: Elementwise,
    inputs: &[i64],
    output: i64,
    [arena, _scratch, begin, end]: [Value; 4],
) -> Result<(), JitError> {
    let ins: Vec<Value> = inputs.iter().map(|&o| em.offset(arena, o)).collect();
    let out = em.offset(arena, output);
    let len = em.b.ins().isub(end, begin);
    let vlen = em.b.ins().band_imm_s(len, !15i64);
    let vend = em.b.ins().iadd(begin, vlen);
    em.for_range(begin, vend, 16, |em, i| body(em, op, &ins, out, i, true))?;
    em.for_range(vend, end, 1, |em, i| body(em, op, &ins, out, i, false))
}

/// Loads `groups` lanes of i32 from integer storage at element `i`.
fn load_ints(em: &mut Emitter<'_, '_>, base: Value, i: Value, t: IntTy, vector: bool) -> Vec<Value> {
    let at = em.index(base, i, 1);
    let fl = flags();
    if !vector {
        return vec![match t {
            IntTy::U8 => em.b.ins().uload8(types::I32, fl, at, 0),
            IntTy::I8 => em.b.ins().sload8(types::I32, fl, at, 0),
        }];
    }
    let v = em.b.ins().load(types::I8X16, fl, at, 0);
    let (lo, hi) = match t {
        IntTy::U8 => (em.b.ins().uwiden_low(v), em.b.ins().uwiden_high(v)),
        IntTy::I8 => (em.b.ins().swiden_low(v), em.b.ins().swiden_high(v)),
    };
    let mut out = Vec::with_capacity(4);
    for h in [lo, hi] {
        match t {
            IntTy::U8 => {
                out.push(em.b.ins().uwiden_low(h));
                out.push(em.b.ins().uwiden_high(h));
            }
            IntTy::I8 => {
                out.push(em.b.ins().swiden_low(h));
                out.push(em.b.ins().swiden_high(h));
            }
        }
    }
    out
}

/// Rounds, saturates into `t`'s range and stores the lanes at element `i`.
fn store_ints(em: &mut Emitter<'_, '_>, base: Value, i: Value, t: IntTy, vals: &[Value], zp: i32, vector: bool) {
    let ity = if vector { types::I32X4 } else { types::I32 };
    let (lo, hi) = t.range();
    let ints: Vec<Value> = vals
        .iter()
        .map(|&f| {
            let r = em.b.ins().nearest(f);
            let q = em.b.ins().fcvt_to_sint_sat(ity, r);
            let l = splat_i(em, ity, lo - zp);
            let h = splat_i(em, ity, hi - zp);
            let q = em.b.ins().smax(q, l);
            let q = em.b.ins().smin(q, h);
            if zp == 0 {
                q
            } else {
                let z = splat_i(em, ity, zp);
                em.b.ins().iadd(q, z)
            }
        })
        .collect();
    let at = em.index(base, i, 1);
    if vector {
        let a = em.b.ins().snarrow(ints[0], ints[1]);
        let c = em.b.ins().snarrow(ints[2], ints[3]);
        let q = match t {
            IntTy::U8 => em.b.ins().unarrow(a, c),
            IntTy::I8 => em.b.ins().snarrow(a, c),
        };
        em.b.ins().store(flags(), q, at, 0);
    } else {
        em.b.ins().istore8(flags(), ints[0], at, 0);
    }
}

fn load_f32(em: &mut Emitter<'_, '_>, base: Value, i: Value, vector: bool) -> Vec<Value> {
    let at = em.index(base, i, 4);
    if vector {
        (0..4).map(|g| em.b.ins().load(types::F32X4, flags(), at, 16 * g)).collect()
    } else {
        vec![em.b.ins().load(types::F32, flags(), at, 0)]
    }
}

fn store_f32(em: &mut Emitter<'_, '_>, base: Value, i: Value, vals: &[Value]) {
    let at = em.index(base, i, 4);
    for (g, &v) in vals.iter().enumerate() {
        em.b.ins().store(flags(), v, at, 16 * g as i32);
    }
}

fn body(
    em: &mut Emitter<'_, '_>,
    op: Elementwise,
    ins: &[Value],
    out: Value,
    i: Value,
    vector: bool,
) -> Result<(), JitError> {
    let fty: Type = if vector { types::F32X4 } else { types::F32 };
    let need =
        |k: usize| ins.get(k).copied().ok_or_else(|| JitError::Codegen(format!("{} needs input {k}", op.name())));
    match op {
        Elementwise::QAdd { p, a, b, out: ot } => {
            let av = load_ints(em, need(0)?, i, a, vector);
            let bv = load_ints(em, need(1)?, i, b, vector);
            let ra = splat_f(em, fty, p.ra);
            let rb = splat_f(em, fty, p.rb);
            let fixed = splat_f(em, fty, p.fixed);
            let vals: Vec<Value> = av
                .iter()
                .zip(&bv)
                .map(|(&x, &y)| {
                    let fx = em.b.ins().fcvt_from_sint(fty, x);
                    let fy = em.b.ins().fcvt_from_sint(fty, y);
                    let t = em.b.ins().fma(fy, rb, fixed);
                    em.b.ins().fma(fx, ra, t)
                })
                .collect();
            store_ints(em, out, i, ot, &vals, 0, vector);
        }
        Elementwise::Quantize { scale, zp, out: ot } => {
            let xs = load_f32(em, need(0)?, i, vector);
            let s = splat_f(em, fty, scale);
            let vals: Vec<Value> = xs.iter().map(|&x| em.b.ins().fdiv(x, s)).collect();
            store_ints(em, out, i, ot, &vals, zp, vector);
        }
        Elementwise::Dequantize { scale, zp, input } => {
            let qs = load_ints(em, need(0)?, i, input, vector);
            let ity = if vector { types::I32X4 } else { types::I32 };
            let z = splat_i(em, ity, zp);
            let s = splat_f(em, fty, scale);
            let vals: Vec<Value> = qs
                .iter()
                .map(|&q| {
                    let d = em.b.ins().isub(q, z);
                    let f = em.b.ins().fcvt_from_sint(fty, d);
                    em.b.ins().fmul(f, s)
                })
                .collect();
            store_f32(em, out, i, &vals);
        }
        Elementwise::AddF32 { relu } => {
            let a = load_f32(em, need(0)?, i, vector);
            let b = load_f32(em, need(1)?, i, vector);
            let zero = splat_f(em, fty, 0.0);
            let vals: Vec<Value> = a
                .iter()
                .zip(&b)
                .map(|(&x, &y)| {
                    let s = em.b.ins().fadd(x, y);
                    if relu {
                        em.b.ins().fmax(s, zero)
                    } else {
                        s
                    }
                })
                .collect();
            store_f32(em, out, i, &vals);
        }
        Elementwise::ClampF32 { lo, hi } => {
            let xs = load_f32(em, need(0)?, i, vector);
            let l = splat_f(em, fty, lo);
            let h = splat_f(em, fty, hi);
            let vals: Vec<Value> = xs
                .iter()
                .map(|&x| {
                    let y = em.b.ins().fmax(x, l);
                    em.b.ins().fmin(y, h)
                })
                .collect();
            store_f32(em, out, i, &vals);
        }
    }
    Ok(())
}

/// Max pooling over NHWC: one microkernel call per output image row (`begin..end` are rows).
pub fn emit_max_pool(
    em: &mut Emitter<'_, '_>,
    f: &'static str,
    geom: i64,
    row_bytes: i64,
    input: i64,
    output: i64,
    [arena, _scratch, begin, end]: [Value; 4],
) -> Result<(), JitError> {
    let x = em.offset(arena, input);
    let out = em.offset(arena, output);
    em.for_range(begin, end, 1, |em, row| {
        let g = em.iconst(geom);
        let o = em.index(out, row, row_bytes);
        em.call(f, &[g, x, row, o])
    })
}

/// A row step: one call of the registered row-operation kernel for the units `begin..end`.
pub fn emit_row_op(
    em: &mut Emitter<'_, '_>,
    op: i64,
    [arena, _scratch, begin, end]: [Value; 4],
) -> Result<(), JitError> {
    // one call for the whole range: a kind's per-call work (a dynamic step's input scale, a
    // view's odometer set-up) is paid once per range, not once per unit
    let p = em.iconst(op);
    em.call("qf_row_op", &[p, arena, begin, end])
}

/// An element-wise step as one call of a registered 512-bit kernel `kernel` over the units
/// `begin..end`: `kernel(consts, input pointers.., output pointer, begin, end)` (`consts`
/// addresses its constants: [`crate::micro::requant::QAddConsts`] for `qf_qadd`,
/// [`crate::micro::requant::QuantizeConsts`] for `qf_quantize`).
pub fn emit_native(
    em: &mut Emitter<'_, '_>,
    kernel: &'static str,
    consts: i64,
    inputs: &[i64],
    output: i64,
    [arena, _scratch, begin, end]: [Value; 4],
) -> Result<(), JitError> {
    let mut args = vec![em.iconst(consts)];
    for &x in inputs {
        args.push(em.offset(arena, x));
    }
    args.push(em.offset(arena, output));
    args.extend([begin, end]);
    em.call(kernel, &args)
}

/// Concatenation: for each input, one call of the registered block copy over the blocks
/// `begin..end` into its slice of the output blocks.
pub fn emit_concat(
    em: &mut Emitter<'_, '_>,
    parts: &[(i64, i64)],
    output: i64,
    stride: i64,
    [arena, _scratch, begin, end]: [Value; 4],
) -> Result<(), JitError> {
    let mut at = 0;
    for &(input, chunk) in parts {
        let src = em.offset(arena, input);
        let dst = em.offset(arena, output + at);
        let c = em.iconst(chunk);
        let st = em.iconst(stride);
        em.call("qf_copy_blocks", &[src, dst, begin, end, c, st])?;
        at += chunk;
    }
    Ok(())
}
