//! Op names and attributes in both directions: what the printer writes for each op and how the
//! parser rebuilds the op from its name and attributes. Kept side by side so they stay in step.

use super::lexer::Pos;
use crate::{
    AspectPolicy, BinaryOp, ConvAttrs, ConvTransposeAttrs, CoordMode, DType, DimExpr, Epilogue, GridPadding, IrError,
    NearestMode, Op, PadMode, PoolAttrs, ResizeAttrs, ResizeMode, ResizeTarget, ScatterReduction, UnaryOp,
};

type Result<T> = std::result::Result<T, IrError>;

// ---------------------------------------------------------------- printing

fn usizes(v: &[usize]) -> String {
    let items: Vec<String> = v.iter().map(|x| x.to_string()).collect();
    format!("[{}]", items.join(","))
}

fn i64s(v: &[i64]) -> String {
    let items: Vec<String> = v.iter().map(|x| x.to_string()).collect();
    format!("[{}]", items.join(","))
}

/// A size: `16`, or `d(K,I,A,...)` for `K` times dim `A` of input `I` times ..., with a derived
/// factor last as a string (`d(1,"($0.2+3)/4")`).
fn dim_expr(e: &DimExpr) -> String {
    if e.of.is_empty() && e.expr.is_none() {
        return e.k.to_string();
    }
    let mut args = vec![e.k.to_string()];
    args.extend(e.of.iter().map(|(i, a)| format!("{i},{a}")));
    if let Some(x) = &e.expr {
        args.push(super::quote(&x.to_string()));
    }
    format!("d({})", args.join(","))
}

fn dim_exprs(v: &[DimExpr]) -> String {
    let items: Vec<String> = v.iter().map(dim_expr).collect();
    format!("[{}]", items.join(","))
}

fn f32s(x: f32) -> String {
    format!("{x:?}")
}

fn f32_list(v: &[f32]) -> String {
    let items: Vec<String> = v.iter().map(|x| f32s(*x)).collect();
    format!("[{}]", items.join(","))
}

/// The text names of enum-valued attributes, one table per enum (printer and parser share them).
const RESIZE_MODES: &[(&str, ResizeMode)] =
    &[("nearest", ResizeMode::Nearest), ("linear", ResizeMode::Linear), ("cubic", ResizeMode::Cubic)];
const COORD_MODES: &[(&str, CoordMode)] = &[
    ("half_pixel", CoordMode::HalfPixel),
    ("half_pixel_symmetric", CoordMode::HalfPixelSymmetric),
    ("pytorch_half_pixel", CoordMode::PytorchHalfPixel),
    ("align_corners", CoordMode::AlignCorners),
    ("asymmetric", CoordMode::Asymmetric),
    ("tf_crop_and_resize", CoordMode::TfCropAndResize),
];
const NEAREST_MODES: &[(&str, NearestMode)] = &[
    ("round_prefer_floor", NearestMode::RoundPreferFloor),
    ("round_prefer_ceil", NearestMode::RoundPreferCeil),
    ("floor", NearestMode::Floor),
    ("ceil", NearestMode::Ceil),
];
const ASPECT_POLICIES: &[(&str, AspectPolicy)] = &[
    ("stretch", AspectPolicy::Stretch),
    ("not_larger", AspectPolicy::NotLarger),
    ("not_smaller", AspectPolicy::NotSmaller),
];
const SCATTER_REDUCTIONS: &[(&str, ScatterReduction)] = &[
    ("none", ScatterReduction::None),
    ("add", ScatterReduction::Add),
    ("mul", ScatterReduction::Mul),
    ("max", ScatterReduction::Max),
    ("min", ScatterReduction::Min),
];
const GRID_PADDINGS: &[(&str, GridPadding)] =
    &[("zeros", GridPadding::Zeros), ("border", GridPadding::Border), ("reflection", GridPadding::Reflection)];
const PAD_MODES: &[(&str, PadMode)] =
    &[("constant", PadMode::Constant), ("reflect", PadMode::Reflect), ("edge", PadMode::Edge), ("wrap", PadMode::Wrap)];

/// The text name of an enum value (every value is in its table).
fn name_of<T: PartialEq + Copy>(table: &[(&'static str, T)], v: T) -> &'static str {
    table.iter().find(|(_, t)| *t == v).map_or("?", |(n, _)| n)
}

/// An epilogue list as the text form writes it: `[bias, requant, clamp(0,255)]`.
pub fn epilogue(ep: &[Epilogue]) -> String {
    let items: Vec<String> = ep
        .iter()
        .map(|e| match e {
            Epilogue::Bias => "bias".to_string(),
            Epilogue::Requant => "requant".to_string(),
            Epilogue::Dequant => "dequant".to_string(),
            Epilogue::Clamp { lo, hi } => format!("clamp({lo},{hi})"),
        })
        .collect();
    format!("[{}]", items.join(", "))
}

fn conv(c: &ConvAttrs) -> Vec<(&'static str, String)> {
    vec![
        ("kernel", usizes(&c.kernel)),
        ("strides", usizes(&c.strides)),
        ("pads", usizes(&c.pads)),
        ("dilations", usizes(&c.dilations)),
        ("group", c.group.to_string()),
    ]
}

fn pool(p: &PoolAttrs) -> Vec<(&'static str, String)> {
    vec![
        ("kernel", usizes(&p.kernel)),
        ("strides", usizes(&p.strides)),
        ("pads", usizes(&p.pads)),
        ("dilations", usizes(&p.dilations)),
        ("ceil_mode", p.ceil_mode.to_string()),
        ("count_include_pad", p.count_include_pad.to_string()),
    ]
}

/// Every attribute of `op`, in the order of the op's fields (empty for ops without attributes).
pub(super) fn print_attrs(op: &Op) -> Vec<(&'static str, String)> {
    match op {
        Op::Input | Op::Const(_) => vec![],
        Op::Conv(c) | Op::ConvInteger(c) => conv(c),
        Op::BatchNorm { epsilon } => vec![("epsilon", f32s(*epsilon))],
        Op::Unary(_) => vec![],
        Op::LeakyRelu { alpha } => vec![("alpha", f32s(*alpha))],
        Op::Clip { min, max } | Op::ClipGrad { min, max } => vec![("min", f32s(*min)), ("max", f32s(*max))],
        Op::HardSigmoid { alpha, beta } => vec![("alpha", f32s(*alpha)), ("beta", f32s(*beta))],
        Op::Binary(_) => vec![],
        Op::Where | Op::MatMul => vec![],
        Op::Gemm { alpha, beta, trans_a, trans_b } => vec![
            ("alpha", f32s(*alpha)),
            ("beta", f32s(*beta)),
            ("trans_a", trans_a.to_string()),
            ("trans_b", trans_b.to_string()),
        ],
        Op::MaxPool(p) | Op::AveragePool(p) | Op::QAveragePool(p) => pool(p),
        Op::MaxPoolGrad(p) | Op::AveragePoolGrad(p) => pool(p),
        Op::ConvWeightGrad(c) => conv(c),
        Op::FakeQuantize { qmin, qmax } | Op::FakeQuantizeGrad { qmin, qmax } => {
            vec![("qmin", qmin.to_string()), ("qmax", qmax.to_string())]
        }
        Op::MaxPoolIndices { pool: p, column_major } => {
            let mut v = pool(p);
            v.push(("column_major", column_major.to_string()));
            v
        }
        Op::GlobalAveragePool | Op::GlobalMaxPool => vec![],
        Op::ConvTranspose(c) => vec![
            ("kernel", usizes(&c.kernel)),
            ("strides", usizes(&c.strides)),
            ("pads", i64s(&c.pads)),
            ("dilations", usizes(&c.dilations)),
            ("group", c.group.to_string()),
            ("output_padding", usizes(&c.output_padding)),
        ],
        Op::Resize(r) => {
            let mut v = vec![
                ("mode", name_of(RESIZE_MODES, r.mode).to_string()),
                ("coord", name_of(COORD_MODES, r.coord).to_string()),
                ("nearest", name_of(NEAREST_MODES, r.nearest).to_string()),
                ("cubic_a", f32s(r.cubic_a)),
                ("exclude_outside", r.exclude_outside.to_string()),
                ("extrapolation", f32s(r.extrapolation)),
                ("antialias", r.antialias.to_string()),
                ("roi", f32_list(&r.roi)),
            ];
            match &r.target {
                ResizeTarget::Scales(s) => v.push(("scales", f32_list(s))),
                ResizeTarget::Sizes { axes, sizes, policy } => {
                    v.push(("axes", usizes(axes)));
                    v.push(("sizes", usizes(sizes)));
                    v.push(("policy", name_of(ASPECT_POLICIES, *policy).to_string()));
                }
                ResizeTarget::DimSizes { axes, sizes } => {
                    v.push(("axes", usizes(axes)));
                    v.push(("dim_sizes", dim_exprs(sizes)));
                }
            }
            v
        }
        Op::GroupNorm { groups, epsilon } => vec![("groups", groups.to_string()), ("epsilon", f32s(*epsilon))],
        Op::ArgMax { axis, keepdims, select_last } | Op::ArgMin { axis, keepdims, select_last } => vec![
            ("axis", axis.to_string()),
            ("keepdims", keepdims.to_string()),
            ("select_last", select_last.to_string()),
        ],
        Op::Pad { mode, pads, computed, value } => {
            let mut v = vec![("mode", name_of(PAD_MODES, *mode).to_string()), ("pads", i64s(pads))];
            // computed pads (`at(INDEX, SIZE)`) print only when there are any
            if !computed.is_empty() {
                let items: Vec<String> = computed.iter().map(|(i, e)| format!("at({i},{})", dim_expr(e))).collect();
                v.push(("computed", format!("[{}]", items.join(","))));
            }
            v.push(("value", format!("{value:?}")));
            v
        }
        Op::Tile { repeats } => vec![("repeats", usizes(repeats))],
        Op::Lrn { size, alpha, beta, bias } => {
            vec![("size", size.to_string()), ("alpha", f32s(*alpha)), ("beta", f32s(*beta)), ("bias", f32s(*bias))]
        }
        Op::Softmax { axis } | Op::LogSoftmax { axis } => vec![("axis", axis.to_string())],
        Op::LayerNorm { axis, epsilon } => {
            vec![("axis", axis.to_string()), ("epsilon", f32s(*epsilon))]
        }
        Op::ReduceMean { axes, keepdims }
        | Op::ReduceSum { axes, keepdims }
        | Op::ReduceMax { axes, keepdims }
        | Op::ReduceProd { axes, keepdims } => {
            vec![("axes", i64s(axes)), ("keepdims", keepdims.to_string())]
        }
        Op::Reshape { shape } | Op::Expand { shape } => vec![("shape", i64s(shape))],
        Op::Flatten { axis } | Op::Concat { axis } | Op::Gather { axis } | Op::QConcat { axis } => {
            vec![("axis", axis.to_string())]
        }
        Op::Transpose { perm } => vec![("perm", usizes(perm))],
        Op::Slice { starts, ends, axes, steps } => {
            vec![("starts", i64s(starts)), ("ends", i64s(ends)), ("axes", i64s(axes)), ("steps", i64s(steps))]
        }
        Op::Unsqueeze { axes } | Op::Squeeze { axes } => vec![("axes", i64s(axes))],
        Op::Split { axis, sizes } => vec![("axis", axis.to_string()), ("sizes", usizes(sizes))],
        Op::Cast { to } => vec![("to", to.name().to_string())],
        Op::Identity => vec![],
        Op::Shape { start, end } => vec![("start", start.to_string()), ("end", end.to_string())],
        Op::Range { start, limit, delta, dtype } => vec![
            ("start", dim_expr(start)),
            ("limit", dim_expr(limit)),
            ("delta", delta.to_string()),
            ("dtype", dtype.name().to_string()),
        ],
        Op::ReshapeDyn { shape } | Op::ExpandDyn { shape } => vec![("shape", dim_exprs(shape))],
        Op::GatherElements { axis } => vec![("axis", axis.to_string())],
        Op::GatherND { batch_dims } => vec![("batch_dims", batch_dims.to_string())],
        Op::ScatterElements { axis, reduction } => {
            vec![("axis", axis.to_string()), ("reduction", name_of(SCATTER_REDUCTIONS, *reduction).to_string())]
        }
        Op::ScatterND { reduction } => vec![("reduction", name_of(SCATTER_REDUCTIONS, *reduction).to_string())],
        Op::TopK { axis, k, largest } => {
            vec![("axis", axis.to_string()), ("k", k.to_string()), ("largest", largest.to_string())]
        }
        Op::CumSum { axis, exclusive, reverse } | Op::CumProd { axis, exclusive, reverse } => {
            vec![("axis", axis.to_string()), ("exclusive", exclusive.to_string()), ("reverse", reverse.to_string())]
        }
        Op::Det => vec![],
        Op::NonZero { count } => vec![("count", count.clone())],
        Op::NonMaxSuppression { center_point_box, count } => {
            vec![("center_point_box", center_point_box.to_string()), ("count", count.clone())]
        }
        Op::GridSample { mode, padding, align_corners } => vec![
            ("mode", name_of(RESIZE_MODES, *mode).to_string()),
            ("padding", name_of(GRID_PADDINGS, *padding).to_string()),
            ("align_corners", align_corners.to_string()),
        ],
        Op::Quantize | Op::Dequantize | Op::Requantize | Op::DynamicQuantize => vec![],
        Op::MatMulInteger => vec![],
        Op::QConv { conv: c, epilogue: ep } => {
            let mut v = conv(c);
            v.push(("epilogue", epilogue(ep)));
            v
        }
        Op::QMatMul { epilogue: ep } => vec![("epilogue", epilogue(ep))],
        Op::QGemm { alpha, trans_a, trans_b, epilogue: ep } => vec![
            ("alpha", f32s(*alpha)),
            ("trans_a", trans_a.to_string()),
            ("trans_b", trans_b.to_string()),
            ("epilogue", epilogue(ep)),
        ],
        Op::QAdd | Op::QMul | Op::QGlobalAveragePool => vec![],
    }
}

// ---------------------------------------------------------------- parsing

/// A parsed attribute value, before it is given a type by the op that reads it.
#[derive(Clone, Debug, PartialEq)]
pub(super) enum AttrVal<'a> {
    /// A number literal as written (including `-inf`).
    Num(&'a str),
    /// An identifier (`true`, `f16`, `bias`, `inf`, `NaN`).
    Ident(&'a str),
    /// `[v, ...]`.
    List(Vec<(AttrVal<'a>, Pos)>),
    /// `name(v, ...)`, e.g. `clamp(0,255)`.
    Call(&'a str, Vec<(AttrVal<'a>, Pos)>),
    /// A quoted string (a derived size in a [`DimExpr`]).
    Str(String),
}

/// The attributes written on one node, consumed by [`build_op`].
pub(super) struct Attrs<'a> {
    op: &'a str,
    /// Where missing attributes are reported (the `{`, or the op name).
    pos: Pos,
    items: Vec<(&'a str, Pos, AttrVal<'a>, Pos)>,
}

impl<'a> Attrs<'a> {
    pub fn new(op: &'a str, pos: Pos, items: Vec<(&'a str, Pos, AttrVal<'a>, Pos)>) -> Self {
        Attrs { op, pos, items }
    }

    fn take(&mut self, key: &str) -> Result<(AttrVal<'a>, Pos)> {
        match self.items.iter().position(|(k, ..)| *k == key) {
            Some(i) => {
                let (_, _, v, p) = self.items.remove(i);
                Ok((v, p))
            }
            None => Err(self.pos.err(format!("`{}` needs the attribute `{key}`", self.op))),
        }
    }

    fn bad(&self, key: &str, pos: Pos, want: &str) -> IrError {
        pos.err(format!("attribute `{key}` of `{}` must be {want}", self.op))
    }

    fn usize(&mut self, key: &str) -> Result<usize> {
        let (v, p) = self.take(key)?;
        as_usize(&v).ok_or_else(|| self.bad(key, p, "a non-negative integer"))
    }

    fn i64(&mut self, key: &str) -> Result<i64> {
        let (v, p) = self.take(key)?;
        as_i64(&v).ok_or_else(|| self.bad(key, p, "an integer"))
    }

    fn i32(&mut self, key: &str) -> Result<i32> {
        let (v, p) = self.take(key)?;
        as_i64(&v).and_then(|v| i32::try_from(v).ok()).ok_or_else(|| self.bad(key, p, "a 32-bit integer"))
    }

    fn has(&self, key: &str) -> bool {
        self.items.iter().any(|(k, ..)| *k == key)
    }

    fn f64(&mut self, key: &str) -> Result<f64> {
        let (v, p) = self.take(key)?;
        as_f64(&v).ok_or_else(|| self.bad(key, p, "a number"))
    }

    fn f32s(&mut self, key: &str) -> Result<Vec<f32>> {
        self.list(key, "number", as_f32)
    }

    /// An enum value by its text name in `table`.
    fn named<T: Copy>(&mut self, key: &str, table: &[(&str, T)]) -> Result<T> {
        let (v, p) = self.take(key)?;
        let found = match v {
            AttrVal::Ident(s) => table.iter().find(|(n, _)| *n == s).map(|(_, t)| *t),
            _ => None,
        };
        found.ok_or_else(|| {
            let names: Vec<String> = table.iter().map(|(n, _)| format!("`{n}`")).collect();
            self.bad(key, p, &format!("one of {}", names.join(", ")))
        })
    }

    /// A dim symbol's name (`count=K0`).
    fn symbol(&mut self, key: &str) -> Result<String> {
        let (v, p) = self.take(key)?;
        match v {
            AttrVal::Ident(s) if !s.contains(['.', '*']) => Ok(s.to_string()),
            _ => Err(self.bad(key, p, "a dim symbol's name")),
        }
    }

    fn f32(&mut self, key: &str) -> Result<f32> {
        let (v, p) = self.take(key)?;
        as_f32(&v).ok_or_else(|| self.bad(key, p, "a number"))
    }

    fn bool(&mut self, key: &str) -> Result<bool> {
        let (v, p) = self.take(key)?;
        match v {
            AttrVal::Ident("true") => Ok(true),
            AttrVal::Ident("false") => Ok(false),
            _ => Err(self.bad(key, p, "`true` or `false`")),
        }
    }

    fn list<T>(&mut self, key: &str, want: &str, f: impl Fn(&AttrVal) -> Option<T>) -> Result<Vec<T>> {
        let (v, p) = self.take(key)?;
        let AttrVal::List(items) = v else {
            return Err(self.bad(key, p, &format!("a list of {want}s")));
        };
        items.iter().map(|(v, p)| f(v).ok_or_else(|| self.bad(key, *p, &format!("a list of {want}s")))).collect()
    }

    fn usizes(&mut self, key: &str) -> Result<Vec<usize>> {
        self.list(key, "non-negative integer", as_usize)
    }

    fn i64s(&mut self, key: &str) -> Result<Vec<i64>> {
        self.list(key, "integer", as_i64)
    }

    fn dim_expr(&mut self, key: &str) -> Result<DimExpr> {
        let (v, p) = self.take(key)?;
        as_dim_expr(&v).ok_or_else(|| self.bad(key, p, "a size (`16` or `d(K,INPUT,AXIS,...)`)"))
    }

    fn dim_exprs(&mut self, key: &str) -> Result<Vec<DimExpr>> {
        self.list(key, "size (`16` or `d(K,INPUT,AXIS,...)`)", as_dim_expr)
    }

    fn dtype(&mut self, key: &str) -> Result<DType> {
        let (v, p) = self.take(key)?;
        match v {
            AttrVal::Ident(s) => s.parse::<DType>().map_err(|e| p.err(e.to_string())),
            _ => Err(self.bad(key, p, "a dtype name")),
        }
    }

    fn epilogue(&mut self, key: &str) -> Result<Vec<Epilogue>> {
        let (v, p) = self.take(key)?;
        let want = "a list of `bias`, `requant`, `dequant` and `clamp(LO,HI)`";
        let AttrVal::List(items) = v else {
            return Err(self.bad(key, p, want));
        };
        let mut out = vec![];
        for (v, p) in &items {
            out.push(match v {
                AttrVal::Ident("bias") => Epilogue::Bias,
                AttrVal::Ident("requant") => Epilogue::Requant,
                AttrVal::Ident("dequant") => Epilogue::Dequant,
                AttrVal::Call("clamp", args) => match args.as_slice() {
                    [(lo, lp), (hi, hp)] => Epilogue::Clamp {
                        lo: as_i64(lo).ok_or_else(|| lp.err("clamp bounds must be integers"))?,
                        hi: as_i64(hi).ok_or_else(|| hp.err("clamp bounds must be integers"))?,
                    },
                    _ => return Err(p.err("`clamp` takes two integer bounds: `clamp(LO,HI)`")),
                },
                _ => return Err(self.bad(key, *p, want)),
            });
        }
        Ok(out)
    }

    fn conv(&mut self) -> Result<ConvAttrs> {
        Ok(ConvAttrs {
            kernel: self.usizes("kernel")?,
            strides: self.usizes("strides")?,
            pads: self.usizes("pads")?,
            dilations: self.usizes("dilations")?,
            group: self.usize("group")?,
        })
    }

    fn pool(&mut self) -> Result<PoolAttrs> {
        Ok(PoolAttrs {
            kernel: self.usizes("kernel")?,
            strides: self.usizes("strides")?,
            pads: self.usizes("pads")?,
            dilations: self.usizes("dilations")?,
            ceil_mode: self.bool("ceil_mode")?,
            count_include_pad: self.bool("count_include_pad")?,
        })
    }

    /// Errors on attributes no field consumed.
    fn finish(self) -> Result<()> {
        match self.items.first() {
            Some((k, p, ..)) => Err(p.err(format!("`{}` has no attribute `{k}`", self.op))),
            None => Ok(()),
        }
    }
}

fn as_usize(v: &AttrVal) -> Option<usize> {
    match v {
        AttrVal::Num(s) if s.bytes().all(|b| b.is_ascii_digit()) => s.parse().ok(),
        _ => None,
    }
}

fn as_i64(v: &AttrVal) -> Option<i64> {
    match v {
        AttrVal::Num(s) if s.bytes().all(|b| b.is_ascii_digit() || b == b'-') => s.parse().ok(),
        _ => None,
    }
}

fn as_dim_expr(v: &AttrVal) -> Option<DimExpr> {
    match v {
        AttrVal::Num(_) => Some(DimExpr::fixed(as_i64(v)?)),
        AttrVal::Call("d", args) => {
            let (expr, args) = match args.split_last() {
                Some(((AttrVal::Str(x), _), rest)) => (Some(crate::Dim::Sym(x.clone())), rest),
                _ => (None, &args[..]),
            };
            if args.is_empty() || args.len() % 2 == 0 || (expr.is_none() && args.len() < 3) {
                return None;
            }
            let k = as_i64(&args[0].0)?;
            let of = args[1..]
                .chunks(2)
                .map(|c| Some((as_usize(&c[0].0)?, as_usize(&c[1].0)?)))
                .collect::<Option<Vec<_>>>()?;
            Some(DimExpr { k, of, expr })
        }
        _ => None,
    }
}

/// A computed pad, `at(INDEX, SIZE)`.
fn as_computed_pad(v: &AttrVal) -> Option<(usize, DimExpr)> {
    match v {
        AttrVal::Call("at", args) if args.len() == 2 => Some((as_usize(&args[0].0)?, as_dim_expr(&args[1].0)?)),
        _ => None,
    }
}

/// Parses a float literal (`1`, `-2.5e-3`, `inf`, `-inf`, `NaN`) exactly as `f32`.
pub(super) fn parse_f32(s: &str) -> Option<f32> {
    let numeric = s.bytes().next().is_some_and(|b| b.is_ascii_digit() || b == b'-');
    if !(numeric || s == "inf" || s == "NaN") {
        return None;
    }
    // A finite literal too large for f32 is an error, not infinity.
    s.parse::<f32>().ok().filter(|x| x.is_finite() || s.ends_with("inf") || s == "NaN")
}

/// Parses a float literal exactly as `f64` (the same forms as [`parse_f32`]).
pub(super) fn parse_f64(s: &str) -> Option<f64> {
    let numeric = s.bytes().next().is_some_and(|b| b.is_ascii_digit() || b == b'-');
    if !(numeric || s == "inf" || s == "NaN") {
        return None;
    }
    s.parse::<f64>().ok().filter(|x| x.is_finite() || s.ends_with("inf") || s == "NaN")
}

fn as_f64(v: &AttrVal) -> Option<f64> {
    match v {
        AttrVal::Num(s) | AttrVal::Ident(s) => parse_f64(s),
        _ => None,
    }
}

fn as_f32(v: &AttrVal) -> Option<f32> {
    match v {
        AttrVal::Num(s) | AttrVal::Ident(s) => parse_f32(s),
        _ => None,
    }
}

fn unary(name: &str) -> Option<UnaryOp> {
    Op::UNARY.into_iter().find(|u| Op::Unary(*u).name() == name)
}

fn binary(name: &str) -> Option<BinaryOp> {
    Op::BINARY.into_iter().find(|b| Op::Binary(*b).name() == name)
}

/// Whether `name` is the text name of an op of a node line (not `input` or `const`).
pub(super) fn is_op_name(name: &str) -> bool {
    let pos = Pos { line: 0, col: 0 };
    // Only an unknown name makes `build_op` answer `Ok(None)`; a known one fails on the missing
    // attributes or succeeds.
    !matches!(build_op(name, Attrs::new(name, pos, vec![])), Ok(None))
}

/// Rebuilds an op from its text name and attributes. `Ok(None)` when no op has that name.
/// `input` and `const` are not ops of a node line and are rejected by the caller.
pub(super) fn build_op(name: &str, mut a: Attrs) -> Result<Option<Op>> {
    let op = match name {
        "conv" => Op::Conv(a.conv()?),
        "batch_norm" => Op::BatchNorm { epsilon: a.f32("epsilon")? },
        "leaky_relu" => Op::LeakyRelu { alpha: a.f32("alpha")? },
        "clip" => Op::Clip { min: a.f32("min")?, max: a.f32("max")? },
        "clip_grad" => Op::ClipGrad { min: a.f32("min")?, max: a.f32("max")? },
        "hard_sigmoid" => Op::HardSigmoid { alpha: a.f32("alpha")?, beta: a.f32("beta")? },
        "where" => Op::Where,
        "matmul" => Op::MatMul,
        "gemm" => Op::Gemm {
            alpha: a.f32("alpha")?,
            beta: a.f32("beta")?,
            trans_a: a.bool("trans_a")?,
            trans_b: a.bool("trans_b")?,
        },
        "max_pool" => Op::MaxPool(a.pool()?),
        "max_pool_indices" => Op::MaxPoolIndices { pool: a.pool()?, column_major: a.bool("column_major")? },
        "average_pool" => Op::AveragePool(a.pool()?),
        "global_average_pool" => Op::GlobalAveragePool,
        "global_max_pool" => Op::GlobalMaxPool,
        "conv_weight_grad" => Op::ConvWeightGrad(a.conv()?),
        "max_pool_grad" => Op::MaxPoolGrad(a.pool()?),
        "average_pool_grad" => Op::AveragePoolGrad(a.pool()?),
        "fake_quantize" => Op::FakeQuantize { qmin: a.i32("qmin")?, qmax: a.i32("qmax")? },
        "fake_quantize_grad" => Op::FakeQuantizeGrad { qmin: a.i32("qmin")?, qmax: a.i32("qmax")? },
        "conv_transpose" => Op::ConvTranspose(ConvTransposeAttrs {
            kernel: a.usizes("kernel")?,
            strides: a.usizes("strides")?,
            pads: a.i64s("pads")?,
            dilations: a.usizes("dilations")?,
            group: a.usize("group")?,
            output_padding: a.usizes("output_padding")?,
        }),
        "resize" => {
            let mode = a.named("mode", RESIZE_MODES)?;
            let coord = a.named("coord", COORD_MODES)?;
            let nearest = a.named("nearest", NEAREST_MODES)?;
            let cubic_a = a.f32("cubic_a")?;
            let exclude_outside = a.bool("exclude_outside")?;
            let extrapolation = a.f32("extrapolation")?;
            let antialias = a.bool("antialias")?;
            let roi = a.f32s("roi")?;
            let target = if a.has("scales") {
                ResizeTarget::Scales(a.f32s("scales")?)
            } else if a.has("dim_sizes") {
                ResizeTarget::DimSizes { axes: a.usizes("axes")?, sizes: a.dim_exprs("dim_sizes")? }
            } else {
                ResizeTarget::Sizes {
                    axes: a.usizes("axes")?,
                    sizes: a.usizes("sizes")?,
                    policy: a.named("policy", ASPECT_POLICIES)?,
                }
            };
            Op::Resize(ResizeAttrs {
                mode,
                coord,
                nearest,
                cubic_a,
                exclude_outside,
                extrapolation,
                antialias,
                roi,
                target,
            })
        }
        "group_norm" => Op::GroupNorm { groups: a.usize("groups")?, epsilon: a.f32("epsilon")? },
        "arg_max" => {
            Op::ArgMax { axis: a.i64("axis")?, keepdims: a.bool("keepdims")?, select_last: a.bool("select_last")? }
        }
        "arg_min" => {
            Op::ArgMin { axis: a.i64("axis")?, keepdims: a.bool("keepdims")?, select_last: a.bool("select_last")? }
        }
        "pad" => Op::Pad {
            mode: a.named("mode", PAD_MODES)?,
            pads: a.i64s("pads")?,
            computed: if a.has("computed") {
                a.list("computed", "computed pad (`at(INDEX,SIZE)`)", as_computed_pad)?
            } else {
                vec![]
            },
            value: a.f64("value")?,
        },
        "tile" => Op::Tile { repeats: a.usizes("repeats")? },
        "lrn" => Op::Lrn { size: a.usize("size")?, alpha: a.f32("alpha")?, beta: a.f32("beta")?, bias: a.f32("bias")? },
        "softmax" => Op::Softmax { axis: a.i64("axis")? },
        "log_softmax" => Op::LogSoftmax { axis: a.i64("axis")? },
        "layer_norm" => Op::LayerNorm { axis: a.i64("axis")?, epsilon: a.f32("epsilon")? },
        "reduce_mean" => Op::ReduceMean { axes: a.i64s("axes")?, keepdims: a.bool("keepdims")? },
        "reduce_sum" => Op::ReduceSum { axes: a.i64s("axes")?, keepdims: a.bool("keepdims")? },
        "reduce_max" => Op::ReduceMax { axes: a.i64s("axes")?, keepdims: a.bool("keepdims")? },
        "reduce_prod" => Op::ReduceProd { axes: a.i64s("axes")?, keepdims: a.bool("keepdims")? },
        "reshape" => Op::Reshape { shape: a.i64s("shape")? },
        "flatten" => Op::Flatten { axis: a.i64("axis")? },
        "transpose" => Op::Transpose { perm: a.usizes("perm")? },
        "concat" => Op::Concat { axis: a.i64("axis")? },
        "slice" => Op::Slice {
            starts: a.i64s("starts")?,
            ends: a.i64s("ends")?,
            axes: a.i64s("axes")?,
            steps: a.i64s("steps")?,
        },
        "gather" => Op::Gather { axis: a.i64("axis")? },
        "unsqueeze" => Op::Unsqueeze { axes: a.i64s("axes")? },
        "squeeze" => Op::Squeeze { axes: a.i64s("axes")? },
        "split" => Op::Split { axis: a.i64("axis")?, sizes: a.usizes("sizes")? },
        "expand" => Op::Expand { shape: a.i64s("shape")? },
        "cast" => Op::Cast { to: a.dtype("to")? },
        "identity" => Op::Identity,
        "shape" => Op::Shape { start: a.usize("start")?, end: a.usize("end")? },
        "range" => Op::Range {
            start: a.dim_expr("start")?,
            limit: a.dim_expr("limit")?,
            delta: a.i64("delta")?,
            dtype: a.dtype("dtype")?,
        },
        "reshape_dyn" => Op::ReshapeDyn { shape: a.dim_exprs("shape")? },
        "expand_dyn" => Op::ExpandDyn { shape: a.dim_exprs("shape")? },
        "gather_elements" => Op::GatherElements { axis: a.i64("axis")? },
        "gather_nd" => Op::GatherND { batch_dims: a.usize("batch_dims")? },
        "scatter_elements" => {
            Op::ScatterElements { axis: a.i64("axis")?, reduction: a.named("reduction", SCATTER_REDUCTIONS)? }
        }
        "scatter_nd" => Op::ScatterND { reduction: a.named("reduction", SCATTER_REDUCTIONS)? },
        "top_k" => Op::TopK { axis: a.i64("axis")?, k: a.usize("k")?, largest: a.bool("largest")? },
        "cumsum" => Op::CumSum { axis: a.i64("axis")?, exclusive: a.bool("exclusive")?, reverse: a.bool("reverse")? },
        "cumprod" => Op::CumProd { axis: a.i64("axis")?, exclusive: a.bool("exclusive")?, reverse: a.bool("reverse")? },
        "det" => Op::Det,
        "non_zero" => Op::NonZero { count: a.symbol("count")? },
        "non_max_suppression" => {
            Op::NonMaxSuppression { center_point_box: a.bool("center_point_box")?, count: a.symbol("count")? }
        }
        "grid_sample" => Op::GridSample {
            mode: a.named("mode", RESIZE_MODES)?,
            padding: a.named("padding", GRID_PADDINGS)?,
            align_corners: a.bool("align_corners")?,
        },
        "quantize" => Op::Quantize,
        "dequantize" => Op::Dequantize,
        "requantize" => Op::Requantize,
        "dynamic_quantize" => Op::DynamicQuantize,
        "conv_integer" => Op::ConvInteger(a.conv()?),
        "matmul_integer" => Op::MatMulInteger,
        "qconv" => Op::QConv { conv: a.conv()?, epilogue: a.epilogue("epilogue")? },
        "qmatmul" => Op::QMatMul { epilogue: a.epilogue("epilogue")? },
        "qgemm" => Op::QGemm {
            alpha: a.f32("alpha")?,
            trans_a: a.bool("trans_a")?,
            trans_b: a.bool("trans_b")?,
            epilogue: a.epilogue("epilogue")?,
        },
        "qadd" => Op::QAdd,
        "qmul" => Op::QMul,
        "qglobal_average_pool" => Op::QGlobalAveragePool,
        "qaverage_pool" => Op::QAveragePool(a.pool()?),
        "qconcat" => Op::QConcat { axis: a.i64("axis")? },
        _ => match (unary(name), binary(name)) {
            (Some(u), _) => Op::Unary(u),
            (_, Some(b)) => Op::Binary(b),
            _ => return Ok(None),
        },
    };
    a.finish()?;
    Ok(Some(op))
}
