//! Cranelift-only GEMM microkernels (u8 x i8 -> i32 and f32), emitted as CLIF.
//!
//! This is the portable fallback for the Rust-intrinsic microkernels: the same
//! packed layouts and the same C ABI, generated as Cranelift IR with 128-bit
//! vectors. Cranelift neither auto-vectorizes nor unrolls, so the code is
//! register-blocked by hand:
//!
//! * columns: groups of 16 ([`COL_BLOCK`], four 128-bit vectors of i32/f32),
//!   looping up to `nr` (whole groups: columns up to `round_up_16(nr)` are written);
//! * rows: blocks of [`U8I8_ROW_BLOCKS`] = 3, 2, 1 (12 accumulators) for u8i8
//!   and [`F32_ROW_BLOCKS`] = 2, 1 (8 accumulators) for f32, each size looping
//!   while that many rows remain;
//! * k: a header-tested loop; one step reads 4 bytes of each A row, i.e. 4 k
//!   (one `vpdpbusd` per accumulator on VNNI hosts) for u8i8, 1 k for f32.
//!   The f32 loop does two steps per iteration plus an odd trailing step.
//!
//! Emission details that matter for the x64 code (checked in the disassembly):
//! * every A/B load is `readonly notrap can_move`, i.e. pure for the e-graph, so
//!   elaboration places each B load right before its first use. Updates are
//!   emitted "column quad outer, row inner", so the u8i8 loop keeps
//!   12 accumulators + 3 A splats + 1 B vector = 16 XMM registers, no spills;
//! * the A splat loads the 4 bytes as an `f32` and splats `F32X4`
//!   (`vmovss` + `vbroadcastss`, no GPR round trip), then `bitcast`s
//!   (little-endian lane order) to `I8X16` for u8i8;
//! * new accumulators flow only along the loop back edge (never also to the
//!   exit), so the loop body has single-use values (a value used twice makes
//!   all its pure operands "multiple use", which blocks x64 load sinking);
//! * x64 `fma` is destructive on a multiplicand (`vfmadd213`, no 231 form), so
//!   the f32 kernel emits `fma(b, a_splat, acc)` (B gets the copy) and uses
//!   2 rows to stay within 16 XMM registers. `b * a` rounds exactly like `a * b`;
//!   the chain over t is in increasing t order, as in the Rust kernels.
//!
//! ## u8i8 dot tree
//! For `w: i8x16` (4 columns x 4 k of B) and `x: i8x16` (4 activation bytes of
//! one A row, splatted to all four i32 lanes and reinterpreted as bytes):
//! ```text
//! lo = imul(swiden_low(w), uwiden_low(x)); hi = imul(swiden_high(w), uwiden_high(x))
//! acc' = iadd(iadd_pairwise(iadd_pairwise(swiden_low(lo), swiden_high(lo)),
//!                           iadd_pairwise(swiden_low(hi), swiden_high(hi))), acc)
//! ```
//! The x64 backend folds this exact tree into one `vpdpbusd` (AVX-VNNI or
//! AVX512-VNNI+VL). Elsewhere it lowers to exact widening i16 multiplies
//! (|w*x| <= 128*255 fits in i16), so results are exact i32 on every host.
//!
//! ## Invariants (caller's responsibility)
//! * u8i8 B panel: width `W = round_up_16(nr)`; for k-group `g` in `0..kp/4`,
//!   `W` columns x 4 bytes, byte `(g, j, t)` at `g*4W + 4j + t` = `w[j][4g+t]`,
//!   padding (k beyond the real k, columns beyond the real n) zero.
//! * `kp` is a multiple of 4 (a remainder is ignored) and every A row has `kp` readable bytes;
//!   u8i8 `nr` is clamped to 64 (one panel), like the Rust kernels.
//! * f32 B panel: width `W = round_up_16(nr)`; for each `t` in `0..k`, `W`
//!   floats (`b[t*W + j]`).
//! * C has room for `round_up_16(nr)` columns per row: the kernels store whole
//!   16-column groups (the padding columns receive values computed from the
//!   zero-padded panel). C is overwritten, not accumulated into.
//! * A, B and C do not alias, and A/B are not modified during the call.
//! * f32 results are bit-identical to the Rust kernels (`acc = fma(a, w, acc)` from 0 in t order).
//! * `m <= 0` or `nr <= 0` is a no-op; `kp == 0` / `k == 0` stores zeros.

use crate::JitError;
use cranelift_codegen::ir::{
    types, AbiParam, BlockArg, Endianness, Function, InstBuilder, MemFlagsData, Signature, UserFuncName, Value,
};
use cranelift_codegen::isa::{CallConv, OwnedTargetIsa, TargetFrontendConfig};
use cranelift_codegen::settings::{self, Configurable};
use cranelift_codegen::Context;
use cranelift_frontend::{FunctionBuilder, FunctionBuilderContext};
use cranelift_module::{FuncId, Linkage, Module, ModuleResult};

/// Row-block sizes of the u8i8 kernel, tried in order (each loops while that many rows remain).
pub const U8I8_ROW_BLOCKS: &[usize] = &[3, 2, 1];
/// Row-block sizes of the f32 kernel, tried in order.
pub const F32_ROW_BLOCKS: &[usize] = &[2, 1];
/// Whether u8i8 re-loads+broadcasts A for every use (see `emit_k_step`); measured slower.
const U8I8_SPLAT_PER_USE: bool = false;
/// Whether f32 re-loads+broadcasts A for every use (see `emit_k_step`); measured equal or slower.
const F32_SPLAT_PER_USE: bool = false;
/// k steps per loop iteration of the u8i8 kernel (1 or 2; 2 would spill XMM registers).
const U8I8_UNROLL: usize = 1;
/// k steps per loop iteration of the f32 kernel (1 or 2).
const F32_UNROLL: usize = 2;
/// Largest `nr` of the u8i8 kernel (one int8 weight panel); larger values are clamped.
const U8I8_MAX_NR: i64 = 64;
/// Columns per register block (four 128-bit vectors of 32-bit lanes).
pub const COL_BLOCK: i64 = 16;

/// Which microkernel to emit.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    /// u8 activations x i8 weights -> i32, 4 k per step.
    U8I8,
    /// f32 x f32 -> f32 with `fma`, 1 k per step.
    F32,
}

/// Flags for the A/B loads: pure to the e-graph (no aliasing stores, no traps).
fn load_flags() -> MemFlagsData {
    MemFlagsData::new().with_notrap().with_readonly().with_can_move()
}

/// Flags for the C stores.
fn store_flags() -> MemFlagsData {
    MemFlagsData::new().with_notrap()
}

/// Converts values to block-call arguments.
fn bargs(vals: &[Value]) -> Vec<BlockArg> {
    vals.iter().map(|&v| BlockArg::from(v)).collect()
}

/// The common C-ABI signature `(i64 x 8) -> ()` of both kernels.
fn kernel_signature(call_conv: CallConv) -> Signature {
    let mut sig = Signature::new(call_conv);
    for _ in 0..8 {
        sig.params.push(AbiParam::new(types::I64));
    }
    sig
}

/// Emits `acc + dot4(w, x)` per i32 lane as the tree x64 folds into `vpdpbusd`.
fn emit_dot_u8i8(fb: &mut FunctionBuilder, acc: Value, w: Value, x: Value) -> Value {
    let wl = fb.ins().swiden_low(w);
    let xl = fb.ins().uwiden_low(x);
    let lo = fb.ins().imul(wl, xl);
    let wh = fb.ins().swiden_high(w);
    let xh = fb.ins().uwiden_high(x);
    let hi = fb.ins().imul(wh, xh);
    let lol = fb.ins().swiden_low(lo);
    let loh = fb.ins().swiden_high(lo);
    let p0 = fb.ins().iadd_pairwise(lol, loh);
    let hil = fb.ins().swiden_low(hi);
    let hih = fb.ins().swiden_high(hi);
    let p1 = fb.ins().iadd_pairwise(hil, hih);
    let s = fb.ins().iadd_pairwise(p0, p1);
    fb.ins().iadd(s, acc)
}

/// Emits one k step for `rows` rows x 16 columns and returns the new accumulators.
///
/// `ap`: byte address of A row 0 at this loop iteration, `a_off[r]`: byte
/// offset of row r (None for row 0), `a_disp`: extra byte displacement of this
/// step within the iteration; `bp`: byte address of this step's 16 B columns;
/// `accs[q * rows + r]`: accumulator of row r, column quad q.
#[allow(clippy::too_many_arguments)]
fn emit_k_step(
    fb: &mut FunctionBuilder,
    kind: Kind,
    rows: usize,
    ap: Value,
    a_off: &[Option<Value>],
    a_disp: i32,
    bp: Value,
    accs: &[Value],
) -> Vec<Value> {
    let lf = load_flags();
    let a_addr: Vec<Value> = a_off
        .iter()
        .take(rows)
        .map(|off| match off {
            None => ap,
            Some(o) => fb.ins().iadd(ap, *o),
        })
        .collect();
    // Splat of A row `r` for column quad `q`. With `splat_per_use` every use
    // gets its own load+splat (made distinct for GVN by a dummy +/-64q address
    // bias that x64 address-mode folding cancels), so each load is single-use
    // and sinks into a memory-operand broadcast, and the (dead-after-use) splat
    // register is the one x64's destructive `vfmadd213` overwrites.
    let splat_per_use = match kind {
        Kind::U8I8 => U8I8_SPLAT_PER_USE,
        Kind::F32 => F32_SPLAT_PER_USE,
    };
    let mut shared: Vec<Option<Value>> = vec![None; rows];
    let mut a_splat = |fb: &mut FunctionBuilder, r: usize, q: usize| -> Value {
        if !splat_per_use {
            if let Some(v) = shared[r] {
                return v;
            }
        }
        let (addr, off) = if splat_per_use && q > 0 {
            (fb.ins().iadd_imm_s(a_addr[r], 64 * q as i64), a_disp - 64 * q as i32)
        } else {
            (a_addr[r], a_disp)
        };
        // u8i8: the 4 A bytes are loaded as an f32 bit pattern and splatted as
        // F32X4 (x64: `vmovss` + `vbroadcastss`, no GPR round trip), then
        // reinterpreted as bytes; lane order is little-endian either way.
        let s = fb.ins().load(types::F32, lf, addr, off);
        let v = fb.ins().splat(types::F32X4, s);
        let v = match kind {
            Kind::U8I8 => fb.ins().bitcast(types::I8X16, MemFlagsData::new().with_endianness(Endianness::Little), v),
            Kind::F32 => v,
        };
        shared[r] = Some(v);
        v
    };
    let bty = match kind {
        Kind::U8I8 => types::I8X16,
        Kind::F32 => types::F32X4,
    };
    let mut new_accs = Vec::with_capacity(accs.len());
    for q in 0..4 {
        let bv = fb.ins().load(bty, lf, bp, (16 * q) as i32);
        for r in 0..rows {
            let acc = accs[q * rows + r];
            let av = a_splat(fb, r, q);
            let nv = match kind {
                Kind::U8I8 => emit_dot_u8i8(fb, acc, bv, av),
                Kind::F32 => {
                    if F32_SPLAT_PER_USE {
                        fb.ins().fma(av, bv, acc)
                    } else {
                        fb.ins().fma(bv, av, acc)
                    }
                }
            };
            new_accs.push(nv);
        }
    }
    new_accs
}

/// Emits the k loop and stores for one block of `rows` rows x 16 columns.
///
/// `arow`: byte address of A row 0 at k=0; `lda_b`: A row stride in bytes;
/// `bcol`: byte address of the column group in k-step 0; `bstep`: bytes per
/// k-step of B; `steps`: number of k steps (>= 0); `crow`: byte address of
/// C row 0 column group; `ldc_b`: C row stride in bytes. On return the builder
/// is positioned in a fresh (unterminated) block after the stores.
///
/// Loop shape: `header(ap, bp, cnt, accs) -> body | tail/store`, with the body
/// jumping back to the header. The new accumulators are passed on exactly one
/// edge (the back edge), which keeps every value in the body single-use for
/// x64 load sinking (a value used twice marks all its pure operands
/// "multiple use", which blocks folding loads into memory operands). With
/// `unroll == 2` an odd trailing step runs once after the loop.
#[allow(clippy::too_many_arguments)]
fn emit_row_block(
    fb: &mut FunctionBuilder,
    kind: Kind,
    rows: usize,
    arow: Value,
    lda_b: Value,
    bcol: Value,
    bstep: Value,
    steps: Value,
    crow: Value,
    ldc_b: Value,
) {
    let vty = match kind {
        Kind::U8I8 => types::I32X4,
        Kind::F32 => types::F32X4,
    };
    let unroll = match kind {
        Kind::U8I8 => U8I8_UNROLL,
        Kind::F32 => F32_UNROLL,
    };
    let nacc = rows * 4;
    let header = fb.create_block();
    let body = fb.create_block();
    let store = fb.create_block();
    let after = fb.create_block();

    // Row offsets in A and C (loop invariant).
    let mut a_off = vec![None];
    let mut c_off = vec![None];
    // Power-of-two row multiples are emitted as shifts so x64 folds them into
    // the address mode (`base + index*scale`) instead of keeping them live in GPRs.
    for r in 1..rows {
        let (ao, co) = if r.is_power_of_two() {
            let sh = r.trailing_zeros() as i64;
            if sh == 0 {
                (lda_b, ldc_b)
            } else {
                (fb.ins().ishl_imm_s(lda_b, sh), fb.ins().ishl_imm_s(ldc_b, sh))
            }
        } else {
            (fb.ins().imul_imm_s(lda_b, r as i64), fb.ins().imul_imm_s(ldc_b, r as i64))
        };
        a_off.push(Some(ao));
        c_off.push(Some(co));
    }

    // Entry: zero accumulators and enter the loop header.
    let zero = match kind {
        Kind::U8I8 => {
            let z = fb.ins().iconst(types::I32, 0);
            fb.ins().splat(vty, z)
        }
        Kind::F32 => {
            let z = fb.ins().f32const(0.0);
            fb.ins().splat(vty, z)
        }
    };
    let iters = if unroll == 2 { fb.ins().sshr_imm_s(steps, 1) } else { steps };
    let mut init = vec![arow, bcol, iters];
    init.resize(3 + nacc, zero);
    fb.ins().jump(header, &bargs(&init));

    // Loop header: params (ap, bp, cnt, acc[q][r] ...).
    let ap = fb.append_block_param(header, types::I64);
    let bp = fb.append_block_param(header, types::I64);
    let cnt = fb.append_block_param(header, types::I64);
    let accs: Vec<Value> = (0..nacc).map(|_| fb.append_block_param(header, vty)).collect();
    fb.switch_to_block(header);
    let tail = fb.create_block();
    if unroll == 2 {
        let tail_check = fb.create_block();
        fb.ins().brif(cnt, body, &[], tail_check, &[]);
        fb.switch_to_block(tail_check);
        fb.seal_block(tail_check);
        let odd = fb.ins().band_imm_s(steps, 1);
        fb.ins().brif(odd, tail, &[], store, &bargs(&accs));
    } else {
        fb.ins().brif(cnt, body, &[], store, &bargs(&accs));
    }

    // Loop body: `unroll` k steps for all rows x 16 columns.
    fb.switch_to_block(body);
    fb.seal_block(body);
    let mut cur = emit_k_step(fb, kind, rows, ap, &a_off, 0, bp, &accs);
    let mut bstep_total = bstep;
    if unroll == 2 {
        let bp1 = fb.ins().iadd(bp, bstep);
        cur = emit_k_step(fb, kind, rows, ap, &a_off, 4, bp1, &cur);
        bstep_total = fb.ins().ishl_imm_s(bstep, 1);
    }
    let ap2 = fb.ins().iadd_imm_s(ap, 4 * unroll as i64);
    let bp2 = fb.ins().iadd(bp, bstep_total);
    let cnt2 = fb.ins().iadd_imm_s(cnt, -1);
    let mut next = vec![ap2, bp2, cnt2];
    next.extend_from_slice(&cur);
    fb.ins().jump(header, &bargs(&next));
    fb.seal_block(header);

    // Odd trailing step (unroll == 2 only; otherwise `tail` stays unused and empty).
    if unroll == 2 {
        fb.switch_to_block(tail);
        fb.seal_block(tail);
        let last = emit_k_step(fb, kind, rows, ap, &a_off, 0, bp, &accs);
        fb.ins().jump(store, &bargs(&last));
    }

    // Store block: acc[q][r] to C row r, quad q at crow + r*ldc_b + 16q.
    let saccs: Vec<Value> = (0..nacc).map(|_| fb.append_block_param(store, vty)).collect();
    fb.switch_to_block(store);
    fb.seal_block(store);
    let sf = store_flags();
    for r in 0..rows {
        let base = match c_off[r] {
            None => crow,
            Some(o) => fb.ins().iadd(crow, o),
        };
        for q in 0..4 {
            fb.ins().store(sf, saccs[q * rows + r], base, (16 * q) as i32);
        }
    }
    fb.ins().jump(after, &[]);
    fb.switch_to_block(after);
    fb.seal_block(after);
}

/// Builds the whole kernel body (column groups x row blocks x k loop) into `func`.
fn build_kernel(func: &mut Function, kind: Kind, frontend: TargetFrontendConfig) {
    let mut fctx = FunctionBuilderContext::new();
    let mut fb = FunctionBuilder::new(func, &mut fctx);
    let entry = fb.create_block();
    fb.append_block_params_for_function_params(entry);
    fb.switch_to_block(entry);
    fb.seal_block(entry);
    let p = fb.block_params(entry).to_vec();
    let (a, lda, m, b, kdim, c, ldc, nr) = (p[0], p[1], p[2], p[3], p[4], p[5], p[6], p[7]);

    // The u8i8 contract clamps nr to one 64-column panel (as the Rust kernels do).
    let nr = match kind {
        Kind::U8I8 => {
            let max = fb.ins().iconst(types::I64, U8I8_MAX_NR);
            fb.ins().smin(nr, max)
        }
        Kind::F32 => nr,
    };
    // Per-kind scalars: k steps, A row stride in bytes, B bytes per k step.
    let w = {
        let t = fb.ins().iadd_imm_s(nr, COL_BLOCK - 1);
        fb.ins().band_imm_s(t, !(COL_BLOCK - 1))
    };
    let bstep = fb.ins().ishl_imm_s(w, 2); // W columns x 4 bytes (u8i8) or W floats (f32)
    let (steps, lda_b) = match kind {
        Kind::U8I8 => (fb.ins().sshr_imm_s(kdim, 2), lda),
        Kind::F32 => (kdim, fb.ins().ishl_imm_s(lda, 2)),
    };
    let steps = {
        // Clamp negative counts to zero.
        let z = fb.ins().iconst(types::I64, 0);
        fb.ins().smax(steps, z)
    };
    let ldc_b = fb.ins().ishl_imm_s(ldc, 2);

    let exit = fb.create_block();
    let col_head = fb.create_block();
    let j0 = fb.append_block_param(col_head, types::I64);
    let nr_pos = fb.ins().icmp_imm_s(cranelift_codegen::ir::condcodes::IntCC::SignedGreaterThan, nr, 0);
    let m_pos = fb.ins().icmp_imm_s(cranelift_codegen::ir::condcodes::IntCC::SignedGreaterThan, m, 0);
    let go = fb.ins().band(nr_pos, m_pos);
    let zero64 = fb.ins().iconst(types::I64, 0);
    fb.ins().brif(go, col_head, &bargs(&[zero64]), exit, &[]);

    // Column group j0: bcol = b + 4*j0, ccol = c + 4*j0 (both layouts: 4 bytes/column).
    fb.switch_to_block(col_head);
    let j0x4 = fb.ins().ishl_imm_s(j0, 2);
    let bcol = fb.ins().iadd(b, j0x4);
    let ccol = fb.ins().iadd(c, j0x4);
    let mut r_start = fb.ins().iconst(types::I64, 0);

    let row_blocks: &[usize] = match kind {
        Kind::U8I8 => U8I8_ROW_BLOCKS,
        Kind::F32 => F32_ROW_BLOCKS,
    };
    for &rows in row_blocks.iter() {
        // head(r0): if r0 + rows <= m -> body(r0) else done(r0)
        let head = fb.create_block();
        let r0 = fb.append_block_param(head, types::I64);
        let rbody = fb.create_block();
        let done = fb.create_block();
        let r_done = fb.append_block_param(done, types::I64);
        fb.ins().jump(head, &bargs(&[r_start]));

        fb.switch_to_block(head);
        let r_end = fb.ins().iadd_imm_s(r0, rows as i64);
        let fits = fb.ins().icmp(cranelift_codegen::ir::condcodes::IntCC::SignedLessThanOrEqual, r_end, m);
        fb.ins().brif(fits, rbody, &[], done, &bargs(&[r0]));

        fb.switch_to_block(rbody);
        fb.seal_block(rbody);
        let aoff = fb.ins().imul(r0, lda_b);
        let arow = fb.ins().iadd(a, aoff);
        let coff = fb.ins().imul(r0, ldc_b);
        let crow = fb.ins().iadd(ccol, coff);
        emit_row_block(&mut fb, kind, rows, arow, lda_b, bcol, bstep, steps, crow, ldc_b);
        fb.ins().jump(head, &bargs(&[r_end]));
        fb.seal_block(head);

        fb.switch_to_block(done);
        fb.seal_block(done);
        r_start = r_done;
    }
    let _ = r_start;
    // Next column group.
    let j1 = fb.ins().iadd_imm_s(j0, COL_BLOCK);
    let more = fb.ins().icmp(cranelift_codegen::ir::condcodes::IntCC::SignedLessThan, j1, nr);
    fb.ins().brif(more, col_head, &bargs(&[j1]), exit, &[]);
    fb.seal_block(col_head);

    fb.switch_to_block(exit);
    fb.seal_block(exit);
    fb.ins().return_(&[]);
    fb.finalize(frontend);
}

/// Declares `name` (exported) and defines it with the given kernel body.
#[allow(clippy::result_large_err)] // signature fixed by the caller: ModuleResult
fn define_kernel<M: Module>(module: &mut M, name: &str, kind: Kind) -> ModuleResult<FuncId> {
    let sig = kernel_signature(module.target_config().default_call_conv);
    let id = module.declare_function(name, Linkage::Export, &sig)?;
    let mut ctx = module.make_context();
    ctx.func.signature = sig;
    ctx.func.name = UserFuncName::user(0, id.as_u32());
    build_kernel(&mut ctx.func, kind, module.target_config());
    module.define_function(id, &mut ctx)?;
    module.clear_context(&mut ctx);
    Ok(id)
}

/// Defines (declares + defines) in `module` a function with the C ABI signature
/// (a: i64 ptr u8, lda: i64, m: i64, b: i64 ptr i8 panel, kp: i64, c: i64 ptr i32, ldc: i64, nr: i64) -> ()
/// computing c[r*ldc + j] = sum_{t<kp} a[r*lda+t] * b(t,j) (exact i32) for r<m, j<nr; may write columns up to round_up_16(nr).
#[allow(clippy::result_large_err)] // signature fixed by the caller: ModuleResult
pub fn define_gemm_u8i8<M: Module>(module: &mut M, name: &str) -> ModuleResult<FuncId> {
    define_kernel(module, name, Kind::U8I8)
}

/// Same for f32: (a: f32 ptr, lda (in elements), m, b: f32 panel ptr, k, c: f32 ptr, ldc (elements), nr); FMA (`fma` CLIF op) in t order.
#[allow(clippy::result_large_err)] // signature fixed by the caller: ModuleResult
pub fn define_gemm_f32<M: Module>(module: &mut M, name: &str) -> ModuleResult<FuncId> {
    define_kernel(module, name, Kind::F32)
}

/// Builds the host ISA (`cranelift_native`) with `opt_level=speed`.
fn host_isa() -> Result<OwnedTargetIsa, JitError> {
    let mut flags = settings::builder();
    flags.set("opt_level", "speed").map_err(|e| JitError::Codegen(format!("setting opt_level=speed: {e}")))?;
    let isa_builder = cranelift_native::builder().map_err(|e| JitError::Codegen(format!("host ISA: {e}")))?;
    isa_builder.finish(settings::Flags::new(flags)).map_err(|e| JitError::Codegen(format!("host ISA: {e}")))
}

/// The disassembly of the u8i8 kernel compiled for the host ISA (Context::set_disasm(true), compiled_code().vcode), for a snapshot test.
pub fn gemm_u8i8_disassembly() -> Result<String, JitError> {
    kernel_disassembly(Kind::U8I8)
}

/// The disassembly of the f32 kernel compiled for the host ISA (as [`gemm_u8i8_disassembly`]).
pub fn gemm_f32_disassembly() -> Result<String, JitError> {
    kernel_disassembly(Kind::F32)
}

/// Compiles one kernel for the host ISA with disassembly enabled and returns the VCode text.
fn kernel_disassembly(kind: Kind) -> Result<String, JitError> {
    let isa = host_isa()?;
    let sig = kernel_signature(isa.default_call_conv());
    let mut func = Function::with_name_signature(UserFuncName::user(0, 0), sig);
    build_kernel(&mut func, kind, isa.frontend_config());
    let mut ctx = Context::for_function(func);
    ctx.set_disasm(true);
    ctx.compile(&*isa, &mut Default::default())
        .map_err(|e| JitError::Codegen(format!("compiling the {kind:?} kernel: {:?}", e.inner)))?;
    ctx.compiled_code()
        .and_then(|cc| cc.vcode.clone())
        .ok_or_else(|| JitError::Codegen(format!("the {kind:?} kernel: no disassembly produced")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use cranelift_jit::{JITBuilder, JITModule};

    type KU8 = unsafe extern "C" fn(*const u8, i64, i64, *const i8, i64, *mut i32, i64, i64);
    type KF32 = unsafe extern "C" fn(*const f32, i64, i64, *const f32, i64, *mut f32, i64, i64);

    /// Tiny xorshift64 generator.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            let mut x = self.0;
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            self.0 = x;
            x
        }
    }

    /// JIT-compiles both kernels and returns (module, u8i8 ptr, f32 ptr).
    fn jit() -> (JITModule, KU8, KF32) {
        let isa = host_isa().unwrap();
        let builder = JITBuilder::with_isa(isa, cranelift_module::default_libcall_names());
        let mut module = JITModule::new(builder);
        let id8 = define_gemm_u8i8(&mut module, "gemm_u8i8").unwrap();
        let idf = define_gemm_f32(&mut module, "gemm_f32").unwrap();
        module.finalize_definitions().unwrap();
        // SAFETY: `id8` was defined with the `KU8` signature (`define_gemm_u8i8`) and the module is
        // finalized, so the address is that function's code; `module` is returned with the pointers and
        // outlives them.
        let k8: KU8 = unsafe { std::mem::transmute(module.get_finalized_function(id8)) };
        // SAFETY: as above, for `define_gemm_f32` and the `KF32` signature.
        let kf: KF32 = unsafe { std::mem::transmute(module.get_finalized_function(idf)) };
        (module, k8, kf)
    }

    const NRS: [usize; 7] = [1, 5, 16, 17, 32, 48, 64];

    /// Packs `w[j][t]` (n x k) into the int8 panel layout of width round_up_16(n).
    fn pack_i8(w: &[i8], n: usize, k: usize, kp: usize) -> Vec<i8> {
        let wp = n.div_ceil(16) * 16;
        let mut out = vec![0i8; wp * kp];
        for g in 0..kp / 4 {
            for j in 0..n {
                for t in 0..4 {
                    let kk = 4 * g + t;
                    if kk < k {
                        out[g * wp * 4 + j * 4 + t] = w[j * k + kk];
                    }
                }
            }
        }
        out
    }

    fn check_u8i8(k8: KU8, rng: &mut Rng, m: usize, k: usize, n: usize, mode: u32) {
        let kp = k.div_ceil(4) * 4;
        let lda = kp + (rng.next() % 3) as usize * 4;
        let wp = n.div_ceil(16) * 16;
        let ldc = wp + (rng.next() % 2) as usize * 16;
        let mut a = vec![0u8; m * lda];
        for r in 0..m {
            for t in 0..k {
                a[r * lda + t] = match mode {
                    0 => rng.next() as u8,
                    1 => 255,
                    _ => {
                        if rng.next() & 1 == 0 {
                            255
                        } else {
                            0
                        }
                    }
                };
            }
        }
        let w: Vec<i8> = (0..n * k)
            .map(|_| match mode {
                0 => rng.next() as i8,
                1 => -128,
                _ => {
                    if rng.next() & 1 == 0 {
                        -128
                    } else {
                        127
                    }
                }
            })
            .collect();
        let bp = pack_i8(&w, n, k, kp);
        let sentinel = 0x5a5a_5a5a_i32;
        let mut c = vec![sentinel; m * ldc + 16];
        // SAFETY: `a` has `m` rows of `lda >= kp` bytes, `bp` one panel of `round_up_16(n) * kp` bytes, `c`
        // `m * ldc + 16` i32 with `ldc >= round_up_16(n)`; the generated kernel honours that contract (module
        // docs).
        unsafe { k8(a.as_ptr(), lda as i64, m as i64, bp.as_ptr(), kp as i64, c.as_mut_ptr(), ldc as i64, n as i64) };
        for r in 0..m {
            for j in 0..n {
                let mut s = 0i32;
                for t in 0..k {
                    s += a[r * lda + t] as i32 * w[j * k + t] as i32;
                }
                assert_eq!(c[r * ldc + j], s, "u8i8 m={m} k={k} n={n} mode={mode} r={r} j={j}");
            }
            for j in wp..ldc {
                assert_eq!(c[r * ldc + j], sentinel, "u8i8 wrote past round_up_16(nr)");
            }
        }
        assert!(c[m * ldc..].iter().all(|&x| x == sentinel), "u8i8 wrote past last row");
    }

    #[test]
    fn u8i8_matches_reference() {
        let (_module, k8, _) = jit();
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for m in 1..10 {
            for &n in NRS.iter() {
                for &k in [0usize, 1, 3, 4, 5, 17, 64, 129, 600].iter() {
                    check_u8i8(k8, &mut rng, m, k, n, 0);
                }
                check_u8i8(k8, &mut rng, m, 600, n, 1);
                check_u8i8(k8, &mut rng, m, 597, n, 2);
            }
        }
    }

    #[test]
    fn u8i8_clamps_nr_to_64() {
        let (_module, k8, _) = jit();
        let mut rng = Rng(0x5555_aaaa_1234_9876);
        let (m, kp, ldc) = (5usize, 40usize, 96usize);
        let a: Vec<u8> = (0..m * kp).map(|_| rng.next() as u8).collect();
        let b: Vec<i8> = (0..64 * kp).map(|_| rng.next() as i8).collect();
        let mut c64 = vec![7i32; m * ldc];
        let mut c100 = vec![7i32; m * ldc];
        // SAFETY: `a` has `m` rows of `kp` bytes, `b` a 64-column panel of `kp` rows, `c64` and `c100` `m`
        // rows of `ldc = 96 >= 64` i32; `nr = 100` is clamped to 64 by the kernel.
        unsafe {
            k8(a.as_ptr(), kp as i64, m as i64, b.as_ptr(), kp as i64, c64.as_mut_ptr(), ldc as i64, 64);
            k8(a.as_ptr(), kp as i64, m as i64, b.as_ptr(), kp as i64, c100.as_mut_ptr(), ldc as i64, 100);
        }
        assert_eq!(c64, c100);
        assert!((0..m).all(|r| c100[r * ldc + 64..(r + 1) * ldc].iter().all(|&x| x == 7)));
    }

    #[test]
    fn f32_matches_reference() {
        let (_module, _, kf) = jit();
        let mut rng = Rng(0x1234_5678_9abc_def1);
        let f = |rng: &mut Rng| (rng.next() >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0;
        for m in 1..10 {
            for &n in NRS.iter() {
                for &k in [0usize, 1, 2, 7, 64, 333, 600].iter() {
                    let wp = n.div_ceil(16) * 16;
                    let lda = k + (rng.next() % 3) as usize;
                    let ldc = wp + (rng.next() % 2) as usize * 16;
                    let a: Vec<f32> = (0..m * lda).map(|_| f(&mut rng)).collect();
                    let w: Vec<f32> = (0..n * k).map(|_| f(&mut rng)).collect();
                    let mut bp = vec![0f32; wp * k];
                    for t in 0..k {
                        for j in 0..n {
                            bp[t * wp + j] = w[j * k + t];
                        }
                    }
                    let mut c = vec![f32::NAN; m * ldc];
                    // SAFETY: `a` has `m` rows of `lda >= k` floats, `bp` a panel of `k` rows of
                    // `round_up_16(n)` floats, `c` `m` rows of `ldc >= round_up_16(n)` floats.
                    unsafe {
                        kf(
                            a.as_ptr(),
                            lda as i64,
                            m as i64,
                            bp.as_ptr(),
                            k as i64,
                            c.as_mut_ptr(),
                            ldc as i64,
                            n as i64,
                        )
                    };
                    for r in 0..m {
                        for j in 0..n {
                            let mut s = 0f64;
                            let mut mag = 0f64;
                            for t in 0..k {
                                let p = a[r * lda + t] as f64 * w[j * k + t] as f64;
                                s += p;
                                mag += p.abs();
                            }
                            let got = c[r * ldc + j] as f64;
                            let tol = 1e-5 * s.abs().max(mag).max(1e-30);
                            assert!((got - s).abs() <= tol, "f32 m={m} k={k} n={n} r={r} j={j}: got {got} want {s}");
                            // Same FMA chain in t order as the Rust kernels: bit-identical.
                            let mut acc = 0f32;
                            for t in 0..k {
                                acc = a[r * lda + t].mul_add(w[j * k + t], acc);
                            }
                            assert_eq!(c[r * ldc + j].to_bits(), acc.to_bits(), "f32 not bit-exact m={m} k={k} n={n}");
                        }
                        for j in wp..ldc {
                            assert!(c[r * ldc + j].is_nan(), "f32 wrote past round_up_16(nr)");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn disassembly_uses_vpdpbusd_on_vnni_hosts() {
        let text = gemm_u8i8_disassembly().unwrap();
        assert!(!text.is_empty());
        #[cfg(target_arch = "x86_64")]
        {
            if is_x86_feature_detected!("avx512vnni") || is_x86_feature_detected!("avxvnni") {
                assert!(text.contains("vpdpbusd"), "no vpdpbusd in:\n{text}");
            }
        }
    }
}
