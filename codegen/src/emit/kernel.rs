//! The loops around a fused kernel's main op. A GEMM step walks its rows in equal blocks of at
//! most [`ROW_BLOCK`] (gathering them with im2col when the rows are not the input itself) and its
//! columns in weight panels, calling the GEMM microkernel into a scratch tile and the epilogue
//! from the tile to the output; a depthwise step (int8, f32 or bf16) does one output image row per microkernel call,
//! a global-sum step one image.

use super::epilogue::{self, Tile};
use super::Emitter;
use crate::micro::{bf16, float, int8, ConvGeom};
use crate::spec::{KernelSpec, MainOp, Rows};
use crate::JitError;
use cranelift_codegen::ir::{types, InstBuilder, Value};

/// The most rows of a GEMM gathered and computed per block: a step's rows are split into equal
/// blocks of at most this many. Each block streams all the weights, so ResNet-18's 49-row layer4
/// convolutions, in blocks of 48 and 1, read their weights twice: INT8 0.52-0.55 ms each against
/// 0.40-0.44 in one block of 49 on a Sapphire Rapids core (the whole model 7.3 -> 6.8 ms; bf16
/// 3.5-3.6 -> 3.2-3.3 ms each; blocks of at most 128 were no faster).
pub const ROW_BLOCK: usize = 72;
/// Columns of an int8 weight panel.
pub const PANEL_I8: usize = 64;

/// Arena offsets of a step's operands.
#[derive(Clone, Copy, Debug)]
pub struct Bindings {
    pub input: i64,
    pub output: i64,
    pub residual: Option<i64>,
    /// Where the kernel's columns go in the output rows: the first column and the row length
    /// (a grouped convolution writes one slice of channels per group).
    pub out_col: i64,
    pub ld_out: i64,
}

/// Addresses of what the generated code reads besides the arena (kept alive by the caller).
pub struct Consts {
    /// Per epilogue step: its per-channel array, or 0.
    pub params: Vec<i64>,
    /// The packed weights.
    pub weights: i64,
    /// The [`ConvGeom`] of im2col, depthwise and pooling steps, or 0.
    pub geom: i64,
    /// The [`crate::micro::requant::RequantParams`] when the epilogue runs as the 512-bit
    /// requantization microkernel instead of generated CLIF, or 0.
    pub requant: i64,
    /// The [`crate::micro::fepilogue::FloatEpilogue`] when the f32 epilogue runs as the 512-bit
    /// microkernel instead of generated CLIF, or 0.
    pub float_epi: i64,
    /// Whether the float epilogue is one the f32 GEMM applies to its accumulators in registers
    /// ([`crate::micro::fepilogue::FloatEpilogue::in_registers`]).
    pub float_epi_in_regs: bool,
    /// An f32 convolution over im2col rows computed by the direct convolution microkernel
    /// ([`float::conv_f32_direct`]) instead of im2col and the GEMM.
    pub direct: bool,
}

/// Whether the f32 kernel of `spec` applies its float epilogue to the accumulators in registers
/// and stores the output itself (`qf_gemm_f32_epi`, `qf_depthwise_f32_epi`): a GEMM over weights
/// the panel kernel takes (not the narrow GEMM's, not the direct convolution) or an f32
/// depthwise convolution, with a list it applies.
pub fn epilogue_in_kernel(spec: &KernelSpec, consts: &Consts) -> bool {
    let fits = match &spec.main {
        MainOp::GemmF32 { weights, rows } => {
            let direct = consts.direct && matches!(rows, Rows::Im2col { .. });
            !direct && !float::narrow_fits(weights.n, weights.k)
        }
        MainOp::DepthwiseF32 { .. } => true,
        _ => false,
    };
    fits && consts.float_epi != 0 && consts.float_epi_in_regs
}

/// The epilogue of one tile: a call of the registered requantization or float epilogue kernel
/// when `consts` selects one, else the CLIF the epilogue list describes.
fn tile_epilogue(em: &mut Emitter<'_, '_>, spec: &KernelSpec, consts: &Consts, t: &Tile) -> Result<(), JitError> {
    if consts.requant != 0 {
        let p = em.iconst(consts.requant);
        let ldc = em.iconst(t.ldc);
        let stride = em.iconst(t.out_stride);
        return em.call("qf_requant", &[p, t.tile, ldc, t.rows, t.n0, t.nr, t.out, stride]);
    }
    if consts.float_epi != 0 {
        let p = em.iconst(consts.float_epi);
        let ldc = em.iconst(t.ldc);
        let stride = em.iconst(t.out_stride);
        let res = match t.residual {
            Some(r) => r,
            None => em.iconst(0),
        };
        return em.call("qf_epi_f32", &[p, t.tile, ldc, t.rows, t.n0, t.nr, t.out, stride, res]);
    }
    epilogue::emit(em, spec.main.acc(), &spec.epilogue, &consts.params, spec.store, t)
}

fn round_up(x: usize, a: usize) -> usize {
    x.div_ceil(a) * a
}

/// How a GEMM step's work is cut into the units its function is called over: row blocks of at
/// most a maximum height times groups of weight panels, column group major (unit `u` is row block
/// `u % blocks` of panel group `u / blocks`).
///
/// One thread takes blocks of the maximum height (or of equal heights below it) and all panels
/// (one group). With more threads, a GEMM with fewer than four row blocks per thread
/// (ResNet-18's last stage: 49 rows, one block) would leave threads idle, so its rows are cut into
/// blocks of equal size and its panels into groups until there are enough units; each unit
/// gathers its own rows (im2col), so a row block's gather is repeated once per panel group,
/// which is why panels are split only when rows alone do not give the threads enough work.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GemmSplit {
    /// Rows of the GEMM.
    pub rows: usize,
    /// Rows per block (the last block may be shorter).
    pub block: usize,
    /// Row blocks.
    pub blocks: usize,
    /// Weight panels per group (the last group may have fewer).
    pub panels_per_group: usize,
    /// Panel groups.
    pub groups: usize,
}

impl GemmSplit {
    /// The split of a GEMM of `rows` rows and `panels` weight panels for `threads` threads, in
    /// row blocks of at most `max_block` rows (of equal height when `equal`), with at least four
    /// units per thread where the panels allow.
    pub fn new(rows: usize, panels: usize, threads: usize, max_block: usize, equal: bool) -> GemmSplit {
        let max_block = max_block.max(1);
        let blocks = rows.div_ceil(max_block).max(1);
        let panels = panels.max(1);
        let target = 4 * threads.max(1);
        let few = threads > 1 && blocks < target;
        // equal row blocks (49 rows: 25 + 24 rather than 48 + 1)
        let block = if equal || few { rows.div_ceil(blocks).max(1) } else { max_block };
        if !few {
            return GemmSplit { rows, block, blocks, panels_per_group: panels, groups: 1 };
        }
        // then enough panel groups
        let want = target.div_ceil(blocks).min(panels);
        let panels_per_group = panels.div_ceil(want);
        let groups = panels.div_ceil(panels_per_group);
        GemmSplit { rows, block, blocks, panels_per_group, groups }
    }

    /// The units of the step function.
    pub fn units(&self) -> usize {
        if self.rows == 0 {
            0
        } else {
            self.blocks * self.groups
        }
    }
}

/// Weight panels of a GEMM main op.
fn gemm_panels(spec: &KernelSpec) -> usize {
    let panel = match &spec.main {
        MainOp::GemmU8I8 { .. } => PANEL_I8,
        MainOp::GemmBf16 { .. } => bf16::PANEL,
        _ => float::PANEL,
    };
    spec.cols.div_ceil(panel)
}

/// The [`GemmSplit`] of a GEMM step for `threads` threads (equal blocks of at most [`ROW_BLOCK`]
/// rows), `None` for other main ops.
pub fn gemm_split(spec: &KernelSpec, threads: usize) -> Option<GemmSplit> {
    let (max_block, equal) = match &spec.main {
        MainOp::GemmF32 { .. } | MainOp::GemmU8I8 { .. } | MainOp::GemmBf16 { .. } => (ROW_BLOCK, true),
        _ => return None,
    };
    Some(GemmSplit::new(spec.rows, gemm_panels(spec), threads, max_block, equal))
}

/// The units a step's function is called over for `threads` threads (GEMM row blocks times
/// panel groups, image rows, images).
pub fn units(spec: &KernelSpec, threads: usize) -> usize {
    match &spec.main {
        MainOp::GemmU8I8 { .. } | MainOp::GemmF32 { .. } | MainOp::GemmBf16 { .. } => {
            gemm_split(spec, threads).map_or(0, |s| s.units())
        }
        MainOp::DepthwiseU8I8 { geom, .. } | MainOp::DepthwiseF32 { geom, .. } | MainOp::DepthwiseBf16 { geom, .. } => {
            spec.rows / geom.ow.max(1)
        }
        MainOp::GlobalSumU8 { .. } | MainOp::GlobalSumF32 { .. } => spec.rows,
        MainOp::WinogradF32 { plan } => winograd_split(spec.rows, plan, threads).units(),
    }
}

/// The units of a Winograd step of `rows` output pixels: each image's blocks of tile rows (as a
/// [`GemmSplit`]'s one-row blocks) times groups of weight panels, the panels split only when the
/// blocks alone leave threads short (a unit then transforms its input tiles again for its own
/// output channels, but streams only its share of the transformed weights).
pub fn winograd_split(rows: usize, plan: &crate::micro::winograd::WinogradF32, threads: usize) -> GemmSplit {
    let blocks = rows / (plan.geom.oh * plan.geom.ow).max(1) * plan.blocks();
    GemmSplit::new(blocks, plan.panels(), threads, 1, false)
}

/// Leading dimension of the im2col buffer.
fn im2col_ld(geom: &ConvGeom) -> usize {
    round_up(geom.k().max(1), 16)
}

/// Scratch bytes one thread needs for `spec`.
pub fn scratch_bytes(spec: &KernelSpec) -> usize {
    match &spec.main {
        MainOp::GemmU8I8 { rows, .. } => {
            let a = match rows {
                Rows::Direct { .. } => 0,
                Rows::Im2col { geom, .. } => ROW_BLOCK * int8::im2col_ld_u8(geom),
            };
            ROW_BLOCK * PANEL_I8 * 4 + a + 64
        }
        MainOp::GemmF32 { rows, .. } | MainOp::GemmBf16 { rows, .. } => {
            let (elem, blk) = (if matches!(spec.main, MainOp::GemmBf16 { .. }) { 2 } else { 4 }, ROW_BLOCK);
            let a = match (rows, &spec.main) {
                (Rows::Direct { .. }, _) => 0,
                (Rows::Im2col { geom, .. }, MainOp::GemmF32 { .. }) => blk * float::im2col_ld_f32(geom) * elem,
                (Rows::Im2col { geom, .. }, _) => blk * im2col_ld(geom) * elem,
            };
            blk * float::PANEL * 4 + a + 64
        }
        MainOp::DepthwiseU8I8 { geom, .. } | MainOp::DepthwiseF32 { geom, .. } | MainOp::DepthwiseBf16 { geom, .. } => {
            geom.ow * round_up(geom.c, 16) * 4 + 64
        }
        MainOp::GlobalSumU8 { .. } | MainOp::GlobalSumF32 { .. } => round_up(spec.cols, 16) * 4 + 64,
        MainOp::WinogradF32 { plan } => plan.scratch_floats() * 4 + 64,
    }
}

/// Emits the body of `spec`'s step function, whose units are those of [`units`] for `threads`
/// threads.
pub fn emit(
    em: &mut Emitter<'_, '_>,
    spec: &KernelSpec,
    bind: Bindings,
    consts: &Consts,
    threads: usize,
    [arena, scratch, begin, end]: [Value; 4],
) -> Result<(), JitError> {
    let x = em.offset(arena, bind.input);
    let es = spec.store.bytes() as i64;
    let out = em.offset(arena, bind.output + bind.out_col * es);
    // a residual has the output's element type and layout
    let res = bind.residual.map(|r| em.offset(arena, r + bind.out_col * es));
    let n = spec.cols as i64;
    let ldo_out = bind.ld_out;
    match &spec.main {
        MainOp::GemmU8I8 { rows, .. } | MainOp::GemmF32 { rows, .. } | MainOp::GemmBf16 { rows, .. } => {
            let kind = match &spec.main {
                MainOp::GemmU8I8 { weights, .. } => GemmKind::U8I8 { kp: weights.kp as i64 },
                MainOp::GemmF32 { weights, .. } => {
                    GemmKind::F32 { k: weights.k as i64, narrow: float::narrow_fits(weights.n, weights.k) }
                }
                MainOp::GemmBf16 { weights, .. } => GemmKind::Bf16 { k: weights.k as i64 },
                _ => return Err(JitError::Codegen("not a GEMM".into())),
            };
            let split = gemm_split(spec, threads).ok_or_else(|| JitError::Codegen("not a GEMM".into()))?;
            let direct = consts.direct && matches!(kind, GemmKind::F32 { .. }) && matches!(rows, Rows::Im2col { .. });
            let kind = if direct { GemmKind::DirectF32 } else { kind };
            let kind = match kind {
                GemmKind::F32 { k, narrow: false } if epilogue_in_kernel(spec, consts) => GemmKind::F32Epi { k },
                kind => kind,
            };
            gemm_loops(em, x, out, res, scratch, begin, end, es, n, ldo_out, rows, kind, split, consts, |em, t| {
                tile_epilogue(em, spec, consts, t)
            })
        }
        MainOp::DepthwiseU8I8 { geom, .. } | MainOp::DepthwiseF32 { geom, .. } | MainOp::DepthwiseBf16 { geom, .. } => {
            let ow = geom.ow as i64;
            let ldo = round_up(geom.c, 16) as i64;
            let zx = match &spec.main {
                MainOp::DepthwiseU8I8 { zx, .. } => Some(*zx),
                _ => None,
            };
            let float_kernel = if matches!(spec.main, MainOp::DepthwiseBf16 { .. }) {
                "qf_depthwise_bf16"
            } else {
                "qf_depthwise_f32"
            };
            let in_regs = epilogue_in_kernel(spec, consts);
            em.for_range(begin, end, 1, |em, row| {
                let g = em.iconst(consts.geom);
                let w = em.iconst(consts.weights);
                let ldo_v = em.iconst(ldo);
                if in_regs {
                    // the kernel stores the output row through the epilogue itself
                    let first = em.b.ins().imul_imm_s(row, ow);
                    let t = tile_at(em, scratch, ldo, ow, 0, n, out, res, first, ldo_out, es)?;
                    let p = em.iconst(consts.float_epi);
                    let stride = em.iconst(t.out_stride);
                    let r = match t.residual {
                        Some(r) => r,
                        None => em.iconst(0),
                    };
                    return em.call("qf_depthwise_f32_epi", &[g, x, w, row, t.out, stride, p, r]);
                }
                match zx {
                    Some(z) => {
                        let z = em.b.ins().iconst(types::I32, z as i64);
                        em.call("qf_depthwise_u8i8", &[g, x, z, w, row, scratch, ldo_v])?;
                    }
                    None => em.call(float_kernel, &[g, x, w, row, scratch, ldo_v])?,
                }
                let first = em.b.ins().imul_imm_s(row, ow);
                let t = tile_at(em, scratch, ldo, ow, 0, n, out, res, first, ldo_out, es)?;
                tile_epilogue(em, spec, consts, &t)
            })
        }
        MainOp::GlobalSumU8 { hw, .. } | MainOp::GlobalSumF32 { hw } => {
            let f = match &spec.main {
                MainOp::GlobalSumF32 { .. } => "qf_global_sum_f32",
                MainOp::GlobalSumU8 { signed: true, .. } => "qf_global_sum_i8",
                _ => "qf_global_sum_u8",
            };
            em.for_range(begin, end, 1, |em, img| {
                let hw = em.iconst(*hw as i64);
                let c = em.iconst(n);
                em.call(f, &[x, hw, c, img, scratch])?;
                let t = tile_at(em, scratch, round_up(n as usize, 16) as i64, 1, 0, n, out, res, img, ldo_out, es)?;
                tile_epilogue(em, spec, consts, &t)
            })
        }
        MainOp::WinogradF32 { plan } => {
            // unit u: block u % blocks (of image block / blocks per image) of panel group
            // u / blocks; its result is the run of output pixel rows from `2 * rpu * block`, left
            // in the scratch as one tile of the group's columns
            let split = winograd_split(spec.rows, plan, threads);
            let (per_img, oh, ow) = (plan.blocks() as i64, plan.geom.oh as i64, plan.geom.ow as i64);
            let rows_max = plan.rows_per_unit() as i64;
            let ldc = plan.tile_ld() as i64;
            let (nblocks, ppg, panels) = (split.blocks as i64, split.panels_per_group as i64, plan.panels() as i64);
            em.for_range(begin, end, 1, |em, u| {
                let nblocks_v = em.iconst(nblocks);
                let (rb, pg) = (em.b.ins().urem(u, nblocks_v), em.b.ins().udiv(u, nblocks_v));
                let per_img_v = em.iconst(per_img);
                let (blk, img) = (em.b.ins().urem(rb, per_img_v), em.b.ins().udiv(rb, per_img_v));
                let p0 = em.b.ins().imul_imm_s(pg, ppg);
                let p1 = em.b.ins().iadd_imm_s(p0, ppg);
                let panels_v = em.iconst(panels);
                let p1 = em.min(p1, panels_v);
                let p = em.iconst(consts.weights);
                em.call("qf_winograd_f32", &[p, x, img, blk, p0, p1, scratch])?;
                let oy0 = em.b.ins().imul_imm_s(blk, rows_max);
                let oh_v = em.iconst(oh);
                let left = em.b.ins().isub(oh_v, oy0);
                let rmax = em.iconst(rows_max);
                let prow = em.min(left, rmax);
                let rows = em.b.ins().imul_imm_s(prow, ow);
                let first = em.b.ins().imul_imm_s(img, oh);
                let first = em.b.ins().iadd(first, oy0);
                let first = em.b.ins().imul_imm_s(first, ow);
                let n0 = em.b.ins().imul_imm_s(p0, float::PANEL as i64);
                let n1 = em.b.ins().imul_imm_s(p1, float::PANEL as i64);
                let nv = em.iconst(n);
                let n1 = em.min(n1, nv);
                let nr = em.b.ins().isub(n1, n0);
                let elem = em.b.ins().imul_imm_s(first, ldo_out);
                let elem = em.b.ins().iadd(elem, n0);
                let out_p = em.index(out, elem, es);
                let res_p = res.map(|r| em.index(r, elem, es));
                let tile = em.index(scratch, n0, 4);
                let t = Tile { tile, ldc, rows, n0, nr, out: out_p, out_stride: ldo_out * es, residual: res_p };
                tile_epilogue(em, spec, consts, &t)
            })
        }
    }
}

/// A tile of `rows` x `nr` results whose first output row is `first` (runtime) at column `n0`.
#[allow(clippy::too_many_arguments)]
fn tile_at(
    em: &mut Emitter<'_, '_>,
    tile: Value,
    ldc: i64,
    rows: i64,
    n0: i64,
    nr: i64,
    out: Value,
    res: Option<Value>,
    first: Value,
    n: i64,
    es: i64,
) -> Result<Tile, JitError> {
    let elem = em.b.ins().imul_imm_s(first, n);
    let elem = em.b.ins().iadd_imm_s(elem, n0);
    let out_p = em.index(out, elem, es);
    let res_p = res.map(|r| em.index(r, elem, es));
    let rows = em.iconst(rows);
    let n0 = em.iconst(n0);
    let nr = em.iconst(nr);
    Ok(Tile { tile, ldc, rows, n0, nr, out: out_p, out_stride: n * es, residual: res_p })
}

#[derive(Clone, Copy)]
enum GemmKind {
    U8I8 {
        kp: i64,
    },
    /// `narrow`: weights the narrow GEMM takes ([`float::narrow_fits`]).
    F32 {
        k: i64,
        narrow: bool,
    },
    /// The f32 panel GEMM applying the float epilogue in registers ([`epilogue_in_kernel`]).
    F32Epi {
        k: i64,
    },
    Bf16 {
        k: i64,
    },
    /// An f32 convolution of at most [`float::DIRECT_MAX_N`] columns by
    /// [`float::conv_f32_direct`] from the input itself (no im2col rows, one panel).
    DirectF32,
}

#[allow(clippy::too_many_arguments)]
fn gemm_loops(
    em: &mut Emitter<'_, '_>,
    x: Value,
    out: Value,
    res: Option<Value>,
    scratch: Value,
    begin: Value,
    end: Value,
    es: i64,
    n: i64,
    ld_out: i64,
    rows: &Rows,
    kind: GemmKind,
    split: GemmSplit,
    consts: &Consts,
    epi: impl Fn(&mut Emitter<'_, '_>, &Tile) -> Result<(), JitError>,
) -> Result<(), JitError> {
    // Panel width, bytes per element of `a` and of the packed weights, the reduction length the
    // kernel takes, and the packed values per panel column.
    let (panel, ab, kred, kpacked) = match kind {
        GemmKind::U8I8 { kp } => (PANEL_I8 as i64, 1i64, kp, kp),
        GemmKind::F32 { k, .. } | GemmKind::F32Epi { k } => (float::PANEL as i64, 4i64, k, k),
        GemmKind::Bf16 { k } => (bf16::PANEL as i64, 2i64, k, 2 * bf16::pairs(k as usize) as i64),
        GemmKind::DirectF32 => (float::PANEL as i64, 4i64, 0, 0),
    };
    let ldc = panel;
    let tile = scratch;
    // the tile holds a whole row block (see `scratch_bytes`), the gathered rows follow it
    let tile_rows = ROW_BLOCK;
    let abuf = em.offset(scratch, tile_rows as i64 * panel * 4);
    let npanels = (n + panel - 1) / panel;
    let (block, ppg) = (split.block as i64, split.panels_per_group as i64);
    // One unit: a row block of `split` (the rows in equal blocks of at most `ROW_BLOCK`, so a
    // 49-row layer is one block, not 48 + 1, whose short last block would stream every weight
    // panel again for a few rows) times a group of weight panels.
    let block_fn = |em: &mut Emitter<'_, '_>, m0: Value, mb: Value, pg: Value| -> Result<(), JitError> {
        if let GemmKind::DirectF32 = kind {
            // the whole (single-panel) tile from the input; the im2col buffer's room holds the
            // kernel's `cin` zeros
            let g = em.iconst(consts.geom);
            let w = em.iconst(consts.weights);
            let (ldc_v, nv) = (em.iconst(ldc), em.iconst(n));
            em.call("qf_conv_f32_direct", &[g, x, m0, mb, w, tile, ldc_v, abuf, nv])?;
            let elem = em.b.ins().imul_imm_s(m0, ld_out);
            let out_p = em.index(out, elem, es);
            let res_p = res.map(|r| em.index(r, elem, es));
            let n0 = em.iconst(0);
            let t = Tile { tile, ldc, rows: mb, n0, nr: nv, out: out_p, out_stride: ld_out * es, residual: res_p };
            return epi(em, &t);
        }
        let (a, lda) = match rows {
            Rows::Direct { lda } => {
                let a = em.index(x, m0, *lda as i64 * ab);
                (a, *lda as i64)
            }
            Rows::Im2col { geom, pad, xor } => {
                // u8 and f32 rows leave room for im2col's whole-vector stores of narrow kernel rows
                let ld = match kind {
                    GemmKind::U8I8 { .. } => int8::im2col_ld_u8(geom),
                    GemmKind::F32 { .. } | GemmKind::F32Epi { .. } => float::im2col_ld_f32(geom),
                    _ => im2col_ld(geom),
                } as i64;
                let g = em.iconst(consts.geom);
                let ldv = em.iconst(ld);
                match kind {
                    GemmKind::U8I8 { .. } => {
                        let pad = em.b.ins().iconst(types::I32, *pad as i64);
                        let xor = em.b.ins().iconst(types::I32, *xor as i64);
                        em.call("qf_im2col_u8", &[g, x, m0, mb, abuf, ldv, pad, xor])?;
                    }
                    GemmKind::F32 { .. } | GemmKind::F32Epi { .. } => {
                        em.call("qf_im2col_f32", &[g, x, m0, mb, abuf, ldv])?
                    }
                    GemmKind::Bf16 { .. } => em.call("qf_im2col_bf16", &[g, x, m0, mb, abuf, ldv])?,
                    GemmKind::DirectF32 => {
                        return Err(JitError::Codegen("the direct convolution has no im2col".into()))
                    }
                }
                (abuf, ld)
            }
        };
        let lda_v = em.iconst(lda);
        let first = em.b.ins().imul_imm_s(pg, ppg);
        let last = em.b.ins().iadd_imm_s(first, ppg);
        let np = em.iconst(npanels);
        let last = em.min(last, np);
        em.for_range(first, last, 1, |em, p| {
            let n0 = em.b.ins().imul_imm_s(p, panel);
            let nv = em.iconst(n);
            let rest = em.b.ins().isub(nv, n0);
            let pv = em.iconst(panel);
            let nr = em.min(rest, pv);
            let wbase = em.iconst(consts.weights);
            let b = em.index(wbase, p, panel * kpacked * ab);
            let kv = em.iconst(kred);
            let ldc_v = em.iconst(ldc);
            let elem = em.b.ins().imul_imm_s(m0, ld_out);
            let elem = em.b.ins().iadd(elem, n0);
            let out_p = em.index(out, elem, es);
            let res_p = res.map(|r| em.index(r, elem, es));
            let f = match kind {
                GemmKind::U8I8 { .. } => "qf_gemm_u8i8",
                GemmKind::F32 { narrow: true, .. } => "qf_gemm_f32_narrow",
                GemmKind::F32 { .. } => "qf_gemm_f32",
                GemmKind::Bf16 { .. } => "qf_gemm_bf16",
                GemmKind::F32Epi { .. } => {
                    // the GEMM stores the output through the epilogue itself
                    let p = em.iconst(consts.float_epi);
                    let stride = em.iconst(ld_out * es);
                    let res = match res_p {
                        Some(r) => r,
                        None => em.iconst(0),
                    };
                    return em
                        .call("qf_gemm_f32_epi", &[a, lda_v, mb, b, kv, tile, ldc_v, nr, p, n0, out_p, stride, res]);
                }
                GemmKind::DirectF32 => {
                    return Err(JitError::Codegen("the direct convolution is not a GEMM call".into()))
                }
            };
            em.call(f, &[a, lda_v, mb, b, kv, tile, ldc_v, nr])?;
            epi(em, &Tile { tile, ldc, rows: mb, n0, nr, out: out_p, out_stride: ld_out * es, residual: res_p })
        })
    };
    // unit u: row block u % blocks of panel group u / blocks
    em.for_range(begin, end, 1, |em, u| {
        let (rb, pg) = if split.groups == 1 {
            (u, em.iconst(0))
        } else {
            let blocks_v = em.iconst(split.blocks as i64);
            (em.b.ins().urem(u, blocks_v), em.b.ins().udiv(u, blocks_v))
        };
        let m0 = em.b.ins().imul_imm_s(rb, block);
        let rows_v = em.iconst(split.rows as i64);
        let left = em.b.ins().isub(rows_v, m0);
        let blk = em.iconst(block);
        let mb = em.min(left, blk);
        block_fn(em, m0, mb, pg)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every (row, panel) of a GEMM belongs to exactly one unit of its split and no unit is empty,
    /// for every thread count and both row blockings, with the units the generated loop derives
    /// (row block `u % blocks`, panel group `u / blocks`); one thread keeps all panels in one
    /// group (and blocks of the full height where they need not be equal).
    #[test]
    fn gemm_splits_cover_every_row_and_panel_once() {
        for rows in [0, 1, 5, 47, 48, 49, 96, 196, 784, 3136] {
            for panels in [1, 2, 3, 8, 16] {
                for threads in [1, 2, 3, 4, 8] {
                    for (max_block, equal) in [(48, false), (ROW_BLOCK, true)] {
                        let s = GemmSplit::new(rows, panels, threads, max_block, equal);
                        if threads == 1 {
                            assert_eq!(s.groups, 1, "{s:?}");
                            assert!(equal || s.block == max_block, "{s:?}");
                        }
                        assert!(s.block <= max_block, "{s:?}");
                        let mut seen = vec![0u8; rows * panels];
                        for u in 0..s.units() {
                            let (rb, pg) = (u % s.blocks, u / s.blocks);
                            let (m0, p0) = (rb * s.block, pg * s.panels_per_group);
                            assert!(m0 < rows && p0 < panels, "an empty unit {u}: {s:?}");
                            for r in m0..(m0 + s.block).min(rows) {
                                for p in p0..(p0 + s.panels_per_group).min(panels) {
                                    seen[r * panels + p] += 1;
                                }
                            }
                        }
                        assert!(seen.iter().all(|&c| c == 1), "rows {rows} panels {panels} threads {threads}: {s:?}");
                    }
                }
            }
        }
    }
}
