//! Cranelift code generation. Every JIT-compiled step is one function with the signature
//! `extern "C" fn(arena: *mut u8, scratch: *mut u8, begin: usize, end: usize)` that computes the
//! units (rows, pixels rows, elements) `begin..end` of its step, so the executor can split a step
//! across threads. Buffer offsets, weights and per-channel parameters are constants baked into
//! the code; the arena and the per-thread scratch are arguments.
//!
//! * [`epilogue`]: the epilogue list of a [`crate::spec::KernelSpec`] over an accumulator tile;
//! * [`kernel`]: the loops around a fused kernel's main op (GEMM, depthwise, global sum);
//! * [`elementwise`]: quantize, dequantize, quantized add, float add/relu/clip, max pooling loops;
//! * [`gemm_clif`]: the Cranelift-only 128-bit GEMM microkernels (the `vpdpbusd` tree).
//!
//! Rust microkernels ([`crate::micro`]) are registered as JIT symbols by name; generated code
//! calls them like any imported function. The emitters never read tensor data: what they
//! generate depends on the kernel description and the shapes only.

pub mod elementwise;
pub mod epilogue;
pub mod gemm_clif;
pub mod kernel;

use crate::micro;
use crate::JitError;
use cranelift_codegen::ir::{types, AbiParam, InstBuilder, MemFlagsData, Signature, Type, Value};
use cranelift_codegen::settings::{self, Configurable};
use cranelift_codegen::{ir, Context};
use cranelift_frontend::{FunctionBuilder, FunctionBuilderContext};
use cranelift_jit::{JITBuilder, JITModule};
use cranelift_module::{FuncId, Linkage, Module};
use std::collections::HashMap;

/// Which GEMM microkernels generated code calls.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Microkernels {
    /// The fastest Rust intrinsics kernels this CPU supports (AVX-512 VNNI / FMA, AVX2, scalar).
    #[default]
    Native,
    /// The GEMMs emitted by Cranelift with 128-bit vectors ([`gemm_clif`]).
    Cranelift,
}

/// The report's name for bf16 ops computed by the f32 kernels: `f32 (storage only)` without
/// AVX512-BF16; with it, the measured rate of `vdpbf16ps` that made f32 the faster choice (or
/// that `--bf16-kernels f32` chose it).
fn bf16_as_f32() -> &'static str {
    static NAME: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    NAME.get_or_init(|| {
        if micro::bf16::native_available() {
            format!("f32 fma (vdpbf16ps at {:.2}x the f32 fma rate)", micro::bf16::dot_rate())
        } else {
            "f32 (storage only)".to_string()
        }
    })
}

/// Memory flags for arena and parameter accesses: never trapping, alignment not assumed.
pub fn flags() -> MemFlagsData {
    MemFlagsData::new().with_notrap()
}

/// A symbol a generated function may call, with its C signature (all pointer-sized integers,
/// except the ones listed in `i32_params`).
struct Import {
    name: &'static str,
    ptr: *const u8,
    params: usize,
    i32_params: &'static [usize],
}

/// The JIT module plus the imported microkernels.
pub struct Jit {
    pub(crate) module: JITModule,
    imports: HashMap<&'static str, FuncId>,
    ptr: Type,
    ctx: Context,
    fctx: FunctionBuilderContext,
    /// Names of the microkernels chosen for this CPU, for reports.
    pub(crate) kernel_names: Vec<(&'static str, &'static str)>,
    count: usize,
}

/// The signature of every step function.
pub fn step_signature(ptr: Type, cc: cranelift_codegen::isa::CallConv) -> Signature {
    let mut sig = Signature::new(cc);
    for _ in 0..4 {
        sig.params.push(AbiParam::new(ptr));
    }
    sig
}

impl Jit {
    /// The module with the microkernels `microkernels` selects; `bf16_compute` says whether bf16
    /// ops run as bf16 kernels ([`crate::JitOptions::bf16_compute`]), for the report.
    pub fn new(microkernels: Microkernels, bf16_compute: bool) -> Result<Jit, JitError> {
        let mut flag_builder = settings::builder();
        let set = |fb: &mut settings::Builder, k: &str, v: &str| {
            fb.set(k, v).map_err(|e| JitError::Codegen(format!("setting {k}={v}: {e}")))
        };
        set(&mut flag_builder, "opt_level", "speed")?;
        set(&mut flag_builder, "use_colocated_libcalls", "false")?;
        set(&mut flag_builder, "is_pic", "false")?;
        let isa_builder = cranelift_native::builder().map_err(|e| JitError::Codegen(format!("host ISA: {e}")))?;
        let isa = isa_builder
            .finish(settings::Flags::new(flag_builder))
            .map_err(|e| JitError::Codegen(format!("host ISA: {e}")))?;
        let mut jb = JITBuilder::with_isa(isa, cranelift_module::default_libcall_names());
        let (gemm_i8, gemm_i8_name) = micro::int8::gemm_u8i8_best();
        let (dw_i8, dw_i8_name) = micro::int8::depthwise_u8i8_best();
        let (gemm_f32, gemm_f32_name) = micro::float::gemm_f32_best();
        let (gemm_f32_narrow, gemm_f32_narrow_name) = micro::float::gemm_f32_narrow_best();
        let (dw_f32, dw_f32_name) = micro::float::depthwise_f32_best();
        let (gemm_bf16, gemm_bf16_name) = micro::bf16::gemm_bf16_best();
        let (dw_bf16, dw_bf16_name) = micro::bf16::depthwise_bf16_best();
        let imports = [
            Import { name: "qf_gemm_u8i8", ptr: gemm_i8 as *const u8, params: 8, i32_params: &[] },
            Import { name: "qf_gemm_f32", ptr: gemm_f32 as *const u8, params: 8, i32_params: &[] },
            Import { name: "qf_gemm_f32_narrow", ptr: gemm_f32_narrow as *const u8, params: 8, i32_params: &[] },
            Import { name: "qf_im2col_u8", ptr: micro::int8::im2col_u8 as *const u8, params: 8, i32_params: &[6, 7] },
            Import { name: "qf_im2col_f32", ptr: micro::float::im2col_f32 as *const u8, params: 6, i32_params: &[] },
            Import {
                name: "qf_conv_f32_direct",
                ptr: micro::float::conv_f32_direct as *const u8,
                params: 9,
                i32_params: &[],
            },
            Import { name: "qf_gemm_bf16", ptr: gemm_bf16 as *const u8, params: 8, i32_params: &[] },
            Import { name: "qf_im2col_bf16", ptr: micro::bf16::im2col_bf16 as *const u8, params: 6, i32_params: &[] },
            Import { name: "qf_depthwise_u8i8", ptr: dw_i8 as *const u8, params: 7, i32_params: &[2] },
            Import { name: "qf_depthwise_f32", ptr: dw_f32 as *const u8, params: 6, i32_params: &[] },
            Import { name: "qf_depthwise_bf16", ptr: dw_bf16 as *const u8, params: 6, i32_params: &[] },
            Import {
                name: "qf_global_sum_u8",
                ptr: micro::pool::global_sum_u8 as *const u8,
                params: 5,
                i32_params: &[],
            },
            Import {
                name: "qf_global_sum_i8",
                ptr: micro::pool::global_sum_i8 as *const u8,
                params: 5,
                i32_params: &[],
            },
            Import {
                name: "qf_global_sum_f32",
                ptr: micro::pool::global_sum_f32 as *const u8,
                params: 5,
                i32_params: &[],
            },
            Import { name: "qf_max_pool_u8", ptr: micro::pool::max_pool_u8 as *const u8, params: 4, i32_params: &[] },
            Import { name: "qf_max_pool_i8", ptr: micro::pool::max_pool_i8 as *const u8, params: 4, i32_params: &[] },
            Import { name: "qf_max_pool_f32", ptr: micro::pool::max_pool_f32 as *const u8, params: 4, i32_params: &[] },
            Import { name: "qf_row_op", ptr: micro::rowops::row_op as *const u8, params: 4, i32_params: &[] },
            Import { name: "qf_requant", ptr: micro::requant::requant_tile as *const u8, params: 8, i32_params: &[] },
            Import {
                name: "qf_epi_f32",
                ptr: micro::fepilogue::epilogue_f32_any as *const u8,
                params: 9,
                i32_params: &[],
            },
            Import {
                name: "qf_depthwise_f32_epi",
                ptr: micro::float::depthwise_f32_epi as *const u8,
                params: 8,
                i32_params: &[],
            },
            Import {
                name: "qf_gemm_f32_epi",
                ptr: micro::float::gemm_f32_epi as *const u8,
                params: 13,
                i32_params: &[],
            },
            Import { name: "qf_qadd", ptr: micro::requant::qadd as *const u8, params: 6, i32_params: &[] },
            Import { name: "qf_quantize", ptr: micro::requant::quantize as *const u8, params: 5, i32_params: &[] },
            Import { name: "qf_silu", ptr: crate::spec::silu_in_place as *const u8, params: 2, i32_params: &[] },
            Import { name: "qf_copy_blocks", ptr: micro::pool::copy_blocks as *const u8, params: 6, i32_params: &[] },
            Import {
                name: "qf_winograd_f32",
                ptr: micro::winograd::winograd_f32 as *const u8,
                params: 7,
                i32_params: &[],
            },
            Import { name: "qf_avg_pool_f32", ptr: micro::pool::avg_pool_f32 as *const u8, params: 4, i32_params: &[] },
        ];
        for imp in &imports {
            jb.symbol(imp.name, imp.ptr);
        }
        let mut module = JITModule::new(jb);
        let ptr = module.target_config().pointer_type();
        let cc = module.target_config().default_call_conv;
        let mut ids = HashMap::new();
        for imp in &imports {
            let mut sig = Signature::new(cc);
            for i in 0..imp.params {
                let t = if imp.i32_params.contains(&i) { types::I32 } else { ptr };
                sig.params.push(AbiParam::new(t));
            }
            let id = module
                .declare_function(imp.name, Linkage::Import, &sig)
                .map_err(|e| JitError::Codegen(format!("declaring {}: {e}", imp.name)))?;
            ids.insert(imp.name, id);
        }
        if microkernels == Microkernels::Cranelift {
            let id = gemm_clif::define_gemm_u8i8(&mut module, "qf_clif_gemm_u8i8")
                .map_err(|e| JitError::Codegen(format!("the Cranelift u8i8 GEMM: {e}")))?;
            ids.insert("qf_gemm_u8i8", id);
            let id = gemm_clif::define_gemm_f32(&mut module, "qf_clif_gemm_f32")
                .map_err(|e| JitError::Codegen(format!("the Cranelift f32 GEMM: {e}")))?;
            ids.insert("qf_gemm_f32", id);
            ids.insert("qf_gemm_f32_narrow", id);
        }
        let kernel_names = match microkernels {
            Microkernels::Native => vec![
                ("gemm_u8i8", gemm_i8_name),
                ("gemm_f32", gemm_f32_name),
                ("gemm_f32_narrow", gemm_f32_narrow_name),
                (
                    "conv_f32_direct",
                    if micro::float::direct_conv_available() { "avx512f" } else { "im2col + gemm_f32" },
                ),
                // without the instruction, or where it is slower than f32 FMA, bf16 GEMMs are
                // widened to f32
                ("gemm_bf16", if bf16_compute { gemm_bf16_name } else { bf16_as_f32() }),
                ("depthwise_u8i8", dw_i8_name),
                ("depthwise_f32", dw_f32_name),
                ("depthwise_bf16", if bf16_compute { dw_bf16_name } else { bf16_as_f32() }),
            ],
            Microkernels::Cranelift => vec![
                ("gemm_u8i8", "cranelift-128"),
                ("gemm_f32", "cranelift-128"),
                ("gemm_f32_narrow", "cranelift-128"),
                ("conv_f32_direct", "im2col + cranelift-128"),
                ("gemm_bf16", "f32 (storage only)"),
                ("depthwise_u8i8", dw_i8_name),
                ("depthwise_f32", dw_f32_name),
                ("depthwise_bf16", "f32 (storage only)"),
            ],
        };
        let ctx = module.make_context();
        Ok(Jit { module, imports: ids, ptr, ctx, fctx: FunctionBuilderContext::new(), kernel_names, count: 0 })
    }

    pub fn ptr(&self) -> Type {
        self.ptr
    }

    /// Defines one step function whose body `body` emits, given the four parameters
    /// `(arena, scratch, begin, end)`; the body must leave the builder in a block it may return from.
    pub fn define_step(
        &mut self,
        name: &str,
        body: impl FnOnce(&mut Emitter<'_, '_>, [Value; 4]) -> Result<(), JitError>,
    ) -> Result<FuncId, JitError> {
        self.count += 1;
        let sym = format!("qf_step{}_{}", self.count, sanitize(name));
        let fe_config = self.module.target_config();
        let cc = fe_config.default_call_conv;
        let sig = step_signature(self.ptr, cc);
        let id = self
            .module
            .declare_function(&sym, Linkage::Local, &sig)
            .map_err(|e| JitError::Codegen(format!("{name}: {e}")))?;
        self.ctx.clear();
        self.ctx.func.signature = sig;
        self.ctx.func.name = ir::UserFuncName::user(0, id.as_u32());
        {
            let mut b = FunctionBuilder::new(&mut self.ctx.func, &mut self.fctx);
            let entry = b.create_block();
            b.append_block_params_for_function_params(entry);
            b.switch_to_block(entry);
            b.seal_block(entry);
            let p = b.block_params(entry);
            let params = [p[0], p[1], p[2], p[3]];
            let mut em =
                Emitter { b, module: &mut self.module, imports: &self.imports, ptr: self.ptr, refs: HashMap::new() };
            body(&mut em, params)?;
            em.b.ins().return_(&[]);
            em.b.seal_all_blocks();
            em.b.finalize(fe_config);
        }
        self.module.define_function(id, &mut self.ctx).map_err(|e| JitError::Codegen(format!("{name}: {e:?}")))?;
        self.module.clear_context(&mut self.ctx);
        Ok(id)
    }

    /// Finalizes every defined function; afterwards [`Jit::address`] gives their code.
    pub fn finalize(&mut self) -> Result<(), JitError> {
        self.module.finalize_definitions().map_err(|e| JitError::Codegen(format!("finalizing: {e}")))
    }

    pub fn address(&self, id: FuncId) -> *const u8 {
        self.module.get_finalized_function(id)
    }
}

fn sanitize(s: &str) -> String {
    s.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }).take(40).collect()
}

/// A function under construction: the builder plus helpers for loops, constants and calls.
pub struct Emitter<'a, 'b> {
    pub b: FunctionBuilder<'a>,
    module: &'b mut JITModule,
    imports: &'b HashMap<&'static str, FuncId>,
    pub ptr: Type,
    refs: HashMap<&'static str, ir::FuncRef>,
}

impl Emitter<'_, '_> {
    /// A pointer-sized constant.
    pub fn iconst(&mut self, v: i64) -> Value {
        self.b.ins().iconst(self.ptr, v)
    }

    /// The address of `data` as a constant (the caller keeps `data` alive as long as the code).
    pub fn addr<T>(&mut self, data: *const T) -> Value {
        self.iconst(data as i64)
    }

    /// `base + off` with a constant offset.
    pub fn offset(&mut self, base: Value, off: i64) -> Value {
        if off == 0 {
            base
        } else {
            self.b.ins().iadd_imm_s(base, off)
        }
    }

    /// `base + idx * scale`.
    pub fn index(&mut self, base: Value, idx: Value, scale: i64) -> Value {
        let s = if scale == 1 { idx } else { self.b.ins().imul_imm_s(idx, scale) };
        self.b.ins().iadd(base, s)
    }

    /// Calls the imported microkernel `name`.
    pub fn call(&mut self, name: &'static str, args: &[Value]) -> Result<(), JitError> {
        let fref = match self.refs.get(name) {
            Some(r) => *r,
            None => {
                let id = *self.imports.get(name).ok_or_else(|| JitError::Codegen(format!("no symbol {name}")))?;
                let r = self.module.declare_func_in_func(id, self.b.func);
                self.refs.insert(name, r);
                r
            }
        };
        self.b.ins().call(fref, args);
        Ok(())
    }

    /// `for i in (start..end).step_by(step)`; `body` gets the induction variable. `start` and
    /// `end` are pointer-sized values; the loop runs while `i < end` (signed).
    pub fn for_range(
        &mut self,
        start: Value,
        end: Value,
        step: i64,
        body: impl FnOnce(&mut Self, Value) -> Result<(), JitError>,
    ) -> Result<(), JitError> {
        let header = self.b.create_block();
        let body_block = self.b.create_block();
        let exit = self.b.create_block();
        self.b.append_block_param(header, self.ptr);
        self.b.ins().jump(header, &[start.into()]);
        self.b.switch_to_block(header);
        let i = self.b.block_params(header)[0];
        let c = self.b.ins().icmp(ir::condcodes::IntCC::SignedLessThan, i, end);
        self.b.ins().brif(c, body_block, &[], exit, &[]);
        self.b.switch_to_block(body_block);
        body(self, i)?;
        let next = self.b.ins().iadd_imm_s(i, step);
        self.b.ins().jump(header, &[next.into()]);
        self.b.switch_to_block(exit);
        Ok(())
    }

    /// `min(a, b)` of pointer-sized signed values.
    pub fn min(&mut self, a: Value, b: Value) -> Value {
        self.b.ins().smin(a, b)
    }
}
