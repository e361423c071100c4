//! Shape arithmetic evaluated symbolically at import (tract-style).
//!
//! Exported transformers compute their reshape targets, expand shapes, ranges and slice bounds
//! from `Shape` of values whose batch `N` or sequence length `S` is dynamic. The importer follows
//! those small integer "shape values" through `Shape`, `Size`, `Gather`, `Slice`, `Concat`,
//! `Unsqueeze`, `Squeeze`, `Reshape`, `Cast`, `CastLike`, `Identity`, `Neg`, `Add`, `Sub`, `Mul`,
//! `Div`, `Mod`, `Equal` and `Where`, holding each element as a [`Mono`]: a constant times symbols
//! (`17*N`). Nothing of this enters the graph: a fully constant result becomes a constant; a
//! symbolic one is kept by its ONNX name. Its consumers then either express it in the IR's own
//! terms (a reshape with `0` and `-1`, [`qforge_ir::DimExpr`] sizes read from the dims of graph
//! inputs), or, when it is used as data, it is computed at run time from `shape` ops
//! ([`materialize`]). So one imported graph runs at every batch size and sequence length.
//!
//! A symbolic dim is assumed to be at least 1 (an `Equal` of a dim with 0 or a negative number is
//! false); anything the evaluator cannot express exactly is left to the ordinary import path.

use super::import::Importer;
use super::proto::NodeProto;
use qforge_ir::{DType, Dim, DimExpr, Op, Tensor, Value};

/// Largest shape value followed symbolically (elements).
const MAX_ELEMS: usize = 64;

/// Why a shape value cannot be expressed in the graph.
#[derive(Debug, thiserror::Error)]
pub enum SymbolicError {
    /// The value uses a dimension symbol that no graph input carries, so nothing in the graph
    /// can read that size at run time.
    #[error("no graph input has the dimension `{0}`")]
    NoInputDim(String),
    /// An importer invariant does not hold: a qforge bug, reported instead of a panic.
    #[error("internal: {0}")]
    Internal(String),
    /// Adding the nodes that compute the value failed.
    #[error(transparent)]
    Ir(#[from] qforge_ir::IrError),
}

/// `k` times the product of `syms` (sorted, with repetition).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mono {
    pub k: i64,
    pub syms: Vec<String>,
}

impl Mono {
    pub fn c(k: i64) -> Mono {
        Mono { k, syms: vec![] }
    }
    pub fn konst(&self) -> Option<i64> {
        self.syms.is_empty().then_some(self.k)
    }
    /// The monomial of an IR dim (`N*16` is `16*N`).
    pub fn of_dim(d: &Dim) -> Option<Mono> {
        let (k, syms) = d.factors()?;
        Some(Mono { k: i64::try_from(k).ok()?, syms })
    }
    pub fn mul(&self, o: &Mono) -> Option<Mono> {
        let mut syms = [self.syms.clone(), o.syms.clone()].concat();
        syms.sort();
        Some(Mono { k: self.k.checked_mul(o.k)?, syms })
    }
    /// Exact division, when `o`'s symbols are among ours and the factor divides.
    pub fn div(&self, o: &Mono) -> Option<Mono> {
        if o.k == 0 {
            return None;
        }
        if self.syms.is_empty() && o.syms.is_empty() {
            // ONNX integer Div truncates toward zero.
            return Some(Mono::c(self.k.checked_div(o.k)?));
        }
        let mut syms = self.syms.clone();
        for s in &o.syms {
            let p = syms.iter().position(|x| x == s)?;
            syms.remove(p);
        }
        (self.k % o.k == 0).then(|| Mono { k: self.k / o.k, syms })
    }
    fn add(&self, o: &Mono, sign: i64) -> Option<Mono> {
        let k = self.k.checked_add(o.k.checked_mul(sign)?)?;
        if self.syms == o.syms {
            return Some(if k == 0 { Mono::c(0) } else { Mono { k, syms: self.syms.clone() } });
        }
        self.add_sizes(o, sign).or_else(|| self.add_linear(o, sign))
    }

    /// `self - o`, where it has a form ([`Mono::add`]).
    pub fn sub(&self, o: &Mono) -> Option<Mono> {
        self.add(o, -1)
    }

    /// A difference with a size, or a sum with a negated one: the sum with a negative term
    /// (`4 - x mod 4`, on the way to a window padding; its value is checked where it is used as
    /// a size).
    fn add_linear(&self, o: &Mono, sign: i64) -> Option<Mono> {
        let (mut terms, mut b) = (vec![], 0i64);
        for (m, s) in [(self, 1), (o, sign)] {
            match m.konst() {
                Some(q) => b = b.checked_add(q.checked_mul(s)?)?,
                None => {
                    let k = usize::try_from(m.k.unsigned_abs()).ok()?;
                    terms.push((if m.k < 0 { -s } else { s }, Dim::from_factors(k, m.syms.clone())));
                }
            }
        }
        Mono::of_dim(&Dim::linear(&terms, b)?)
    }

    fn add_sizes(&self, o: &Mono, sign: i64) -> Option<Mono> {
        match (self.konst(), o.konst()) {
            // x + 0 and 0 + x
            (_, Some(0)) => Some(self.clone()),
            (Some(0), _) if sign == 1 => Some(o.clone()),
            // a size plus or less a constant: the derived size `(B+b)`, when it cannot be negative
            (None, Some(q)) => self.affine(1, q.checked_mul(sign)?, 1),
            (Some(q), None) if sign == 1 => o.affine(1, q, 1),
            // two sizes: their sum
            (None, None) if sign == 1 => Mono::of_dim(&Dim::sum(&[self.to_dim()?, o.to_dim()?])?),
            _ => None,
        }
    }

    /// `self mod c` of a size by a positive constant ([`Dim::rem`]).
    fn rem(&self, c: u64) -> Option<Mono> {
        Mono::of_dim(&self.to_dim()?.rem(c)?)
    }

    /// `floor(self / c)` of a size by a positive constant: the derived size [`Dim::affine`]
    /// writes, or, for a difference that holds a remainder, [`Dim::floor_div`].
    fn floor_div(&self, c: u64) -> Option<Mono> {
        let d = self.to_dim()?;
        if d.may_be_zero() {
            return Mono::of_dim(&d.floor_div(c)?);
        }
        self.affine(1, 0, c)
    }

    /// The monomial as an IR dim, when it is a size (a positive factor).
    fn to_dim(&self) -> Option<Dim> {
        let k = usize::try_from(self.k).ok().filter(|&k| k > 0)?;
        Some(Dim::from_factors(k, self.syms.clone()))
    }

    /// `floor((a * self + b) / c)` as the derived size [`Dim::affine`] writes, when the numerator
    /// is provably not negative (every symbol is at least 1), so that floor and ONNX's integer
    /// division (which truncates toward zero) agree.
    fn affine(&self, a: u64, b: i64, c: u64) -> Option<Mono> {
        let d = self.to_dim()?;
        let low = i128::from(a).checked_mul(d.lower_bound() as i128)?.checked_add(i128::from(b))?;
        if low < 0 {
            return None;
        }
        Mono::of_dim(&d.affine(a, b, c)?)
    }
}

/// A shape value: rank 0 or 1, an integer or bool dtype, one monomial per element.
#[derive(Clone, Debug, PartialEq)]
pub struct SymVal {
    pub shape: Vec<usize>,
    pub dtype: DType,
    pub elems: Vec<Mono>,
}

impl SymVal {
    pub fn is_const(&self) -> bool {
        self.elems.iter().all(|m| m.syms.is_empty())
    }
    fn to_tensor(&self) -> Option<Tensor> {
        let v: Vec<i64> = self.elems.iter().map(Mono::konst).collect::<Option<_>>()?;
        Some(Tensor::from_i64_wrapping(self.dtype, self.shape.clone(), &v))
    }
}

/// The symbolic content of an ONNX value: a tracked shape value, or a small integer constant.
pub fn sym_of(im: &Importer, name: &str) -> Option<SymVal> {
    if let Some(s) = im.sym.get(name) {
        return Some(s.clone());
    }
    let t = im.const_by_name(name)?;
    if t.rank() > 1 || t.len() > MAX_ELEMS || !matches!(t.dtype(), DType::I64 | DType::I32 | DType::Bool) {
        return None;
    }
    let v = t.to_i64_vec()?;
    Some(SymVal { shape: t.shape().to_vec(), dtype: t.dtype(), elems: v.into_iter().map(Mono::c).collect() })
}

/// Evaluates `node` symbolically when it is shape arithmetic on at least one tracked shape value
/// (or `Shape` of a value with symbolic dims). Returns the result, or `None` to import the node
/// the ordinary way.
pub fn eval(im: &Importer, node: &NodeProto, opset: i64) -> Option<SymVal> {
    if !matches!(node.domain.as_str(), "" | "ai.onnx") || node.output.len() != 1 {
        return None;
    }
    let op = node.op_type.as_str();
    let input = |i: usize| node.input.get(i).map(String::as_str).filter(|s| !s.is_empty());
    if op == "Shape" {
        let v = im.bound(input(0)?)?;
        let ty = im.g.value_type(v);
        let r = ty.rank() as i64;
        let (mut start, mut end) = (0, r);
        if opset >= 15 {
            for a in &node.attribute {
                match a.name.as_str() {
                    "start" => start = a.i,
                    "end" => end = a.i,
                    _ => {}
                }
            }
        }
        let clamp = |v: i64| (if v < 0 { v.saturating_add(r) } else { v }).clamp(0, r) as usize;
        let (s, e) = (clamp(start), clamp(end));
        let dims = &ty.shape.0[s..e.max(s)];
        if dims.iter().all(|d| d.fixed().is_some()) {
            return None;
        }
        let elems: Vec<Mono> = dims.iter().map(Mono::of_dim).collect::<Option<_>>()?;
        return Some(SymVal { shape: vec![elems.len()], dtype: DType::I64, elems });
    }
    if op == "Size" {
        // The element count: the product of the dims, a monomial when some are symbolic.
        let ty = im.g.value_type(im.bound(input(0)?)?);
        if ty.shape.0.iter().all(|d| d.fixed().is_some()) {
            return None;
        }
        let n = ty.shape.0.iter().try_fold(Mono::c(1), |a, d| a.mul(&Mono::of_dim(d)?))?;
        return Some(SymVal { shape: vec![], dtype: DType::I64, elems: vec![n] });
    }
    let tracked = node.input.iter().any(|n| im.sym.contains_key(n));
    if !tracked {
        return None;
    }
    // CastLike's second input only gives a type: it need not be a shape value.
    let data_inputs = if op == "CastLike" { node.input.get(..1).unwrap_or_default() } else { &node.input[..] };
    let ins: Vec<SymVal> =
        data_inputs.iter().filter(|n| !n.is_empty()).map(|n| sym_of(im, n)).collect::<Option<_>>()?;
    let attr_i = |name: &str| node.attribute.iter().find(|a| a.name == name).map(|a| a.i);
    let attr_ints = |name: &str| node.attribute.iter().find(|a| a.name == name).map(|a| a.ints.clone());
    let consts = |s: &SymVal| s.elems.iter().map(Mono::konst).collect::<Option<Vec<i64>>>();
    let fmod = attr_i("fmod").unwrap_or(0);
    let x = ins.first()?;
    let out = match op {
        "Identity" => x.clone(),
        "Neg" => {
            let elems = x.elems.iter().map(|m| Some(Mono { k: m.k.checked_neg()?, syms: m.syms.clone() }));
            SymVal { elems: elems.collect::<Option<_>>()?, ..x.clone() }
        }
        "Cast" | "CastLike" => {
            let to = if op == "Cast" {
                super::tensors::dtype_from_onnx(i32::try_from(attr_i("to")?).ok()?).ok()?
            } else {
                let like = input(1)?;
                match (im.bound(like), im.const_by_name(like)) {
                    (Some(v), _) => im.g.value_type(v).dtype,
                    (None, Some(t)) => t.dtype(),
                    (None, None) => im.sym.get(like)?.dtype,
                }
            };
            match to {
                DType::I64 | DType::I32 => SymVal { dtype: to, ..x.clone() },
                _ => return None,
            }
        }
        "Gather" => {
            if x.shape.len() != 1 || attr_i("axis").unwrap_or(0) != 0 {
                return None;
            }
            let idx = ins.get(1)?;
            let n = x.elems.len() as i64;
            let elems = consts(idx)?
                .into_iter()
                .map(|i| {
                    let j = if i < 0 { i + n } else { i };
                    (0..n).contains(&j).then(|| x.elems[j as usize].clone())
                })
                .collect::<Option<Vec<_>>>()?;
            SymVal { shape: idx.shape.clone(), dtype: x.dtype, elems }
        }
        "Slice" => {
            // any rank (TorchScript reverses its pads as a 2-D `[-1, 2]` view, sliced backwards)
            if opset < 10 || x.shape.is_empty() {
                return None;
            }
            let list = |i: usize| -> Option<Option<Vec<i64>>> {
                match ins.get(i) {
                    None => Some(None),
                    Some(s) => Some(Some(consts(s)?)),
                }
            };
            let (starts, ends) = (list(1)??, list(2)??);
            let rank = x.shape.len();
            let axes = list(3)?.unwrap_or_else(|| (0..starts.len() as i64).collect());
            let steps = list(4)?.unwrap_or_else(|| vec![1; starts.len()]);
            if ends.len() != starts.len() || axes.len() != starts.len() || steps.len() != starts.len() {
                return None;
            }
            // the kept indices of every axis
            let mut keep: Vec<Vec<usize>> = x.shape.iter().map(|&n| (0..n).collect()).collect();
            for (((&st, &en), &ax), &step) in starts.iter().zip(&ends).zip(&axes).zip(&steps) {
                let a = qforge_ir::infer::norm_axis(ax, rank).ok()?;
                let n = x.shape[a];
                let (s0, _) = qforge_ir::infer::slice_bounds(n, st, en, step).ok()?;
                let len = qforge_ir::infer::slice_len(n, st, en, step).ok()?;
                keep[a] = (0..len as i64).map(|i| usize::try_from(s0 + i * step).ok()).collect::<Option<_>>()?;
            }
            let shape: Vec<usize> = keep.iter().map(Vec::len).collect();
            let elems = gather_nd(x, &keep)?;
            SymVal { shape, dtype: x.dtype, elems }
        }
        "Transpose" => {
            let rank = x.shape.len();
            let perm: Vec<usize> = match attr_ints("perm") {
                Some(p) => p.iter().map(|&a| usize::try_from(a).ok()).collect::<Option<_>>()?,
                None => (0..rank).rev().collect(),
            };
            if perm.len() != rank || (0..rank).any(|a| !perm.contains(&a)) {
                return None;
            }
            let shape: Vec<usize> = perm.iter().map(|&a| x.shape[a]).collect();
            let n = x.elems.len();
            let mut elems = Vec::with_capacity(n);
            for flat in 0..n {
                // the output index, then the input element it reads
                let (mut rest, mut idx) = (flat, vec![0usize; rank]);
                for a in (0..rank).rev() {
                    idx[a] = rest % shape[a];
                    rest /= shape[a];
                }
                let mut src = 0usize;
                for a in 0..rank {
                    let d = perm.iter().position(|&p| p == a)?;
                    src = src * x.shape[a] + idx[d];
                }
                elems.push(x.elems.get(src)?.clone());
            }
            SymVal { shape, dtype: x.dtype, elems }
        }
        "Concat" => {
            let mut elems = vec![];
            for s in &ins {
                if s.shape.len() != 1 || s.dtype != x.dtype {
                    return None;
                }
                elems.extend(s.elems.iter().cloned());
            }
            SymVal { shape: vec![elems.len()], dtype: x.dtype, elems }
        }
        "Unsqueeze" | "Squeeze" | "Reshape" | "Flatten" => {
            let n = x.elems.len();
            let rank = match op {
                "Unsqueeze" => {
                    let axes = if opset >= 13 { consts(ins.get(1)?)? } else { attr_ints("axes")? };
                    x.shape.len() + axes.len()
                }
                "Squeeze" => {
                    if n != 1 {
                        return None;
                    }
                    0
                }
                "Flatten" => return None,
                _ => {
                    let t = consts(ins.get(1)?)?;
                    match t.as_slice() {
                        [] => 0,
                        [d] if *d == -1 || *d == n as i64 => 1,
                        // a reshape to more dims (a view of pads as `[-1, 2]`)
                        _ => {
                            if attr_i("allowzero").unwrap_or(0) != 0 && t.contains(&0) {
                                return None;
                            }
                            let shape = qforge_ir::infer::reshape_shape(&qforge_ir::Shape::fixed(&x.shape), &t)
                                .ok()?
                                .as_fixed()?;
                            return Some(SymVal { shape, ..x.clone() });
                        }
                    }
                }
            };
            match rank {
                0 if n == 1 => SymVal { shape: vec![], ..x.clone() },
                1 if op != "Unsqueeze" || x.shape.is_empty() => SymVal { shape: vec![n], ..x.clone() },
                _ => return None,
            }
        }
        "Add" | "Sub" | "Mul" | "Div" | "Mod" | "Equal" => {
            let y = ins.get(1)?;
            if x.dtype != y.dtype {
                return None;
            }
            let (shape, pairs) = zip(x, y)?;
            let elems = pairs
                .into_iter()
                .map(|(a, b)| match op {
                    "Add" => a.add(b, 1),
                    "Sub" => a.add(b, -1),
                    "Mul" => a.mul(b),
                    // a size over a positive constant: the derived size `(B)/c` (floor, which
                    // is ONNX's truncation on a size)
                    "Div" => a.div(b).or_else(|| a.floor_div(u64::try_from(b.konst()?).ok().filter(|&c| c > 0)?)),
                    "Mod" => match (a.konst(), b.konst()) {
                        // a constant below a size that is at least that (every factor of a
                        // size is at least 1, as `equal` assumes): itself (the dynamo export's
                        // roll, `shift % size`)
                        (Some(p), None)
                            if (0..b.k).contains(&p) && !b.syms.iter().any(|f| Dim::Sym(f.clone()).may_be_zero()) =>
                        {
                            Some(Mono::c(p))
                        }
                        // and a negative one above minus that size: the size less it (the
                        // reverse roll, `-shift % size`)
                        (Some(p), None)
                            if (-b.k..0).contains(&p) && !b.syms.iter().any(|f| Dim::Sym(f.clone()).may_be_zero()) =>
                        {
                            Mono::of_dim(&Dim::linear(&[(1, b.to_dim()?)], p)?)
                        }
                        (_, None) => None,
                        // integer Mod (fmod=0): the sign of the divisor
                        (Some(p), Some(q)) => {
                            let r = p.checked_rem(q)?;
                            Some(Mono::c(if r != 0 && (r < 0) != (q < 0) { r + q } else { r }))
                        }
                        // a size modulo a positive constant (Swin's `H % 4`), never negative
                        (None, Some(q)) if fmod == 0 => a.rem(u64::try_from(q).ok().filter(|&c| c > 0)?),
                        _ => None,
                    },
                    _ => equal(a, b).map(|e| Mono::c(e as i64)),
                })
                .collect::<Option<Vec<_>>>()?;
            let dtype = if op == "Equal" { DType::Bool } else { x.dtype };
            SymVal { shape, dtype, elems }
        }
        "Where" => {
            let (a, b) = (ins.get(1)?, ins.get(2)?);
            if x.dtype != DType::Bool || a.dtype != b.dtype {
                return None;
            }
            let (shape, ab) = zip(a, b)?;
            let cond = SymVal { shape: shape.clone(), dtype: DType::Bool, elems: vec![Mono::c(0); ab.len()] };
            let (_, cpairs) = zip(x, &cond)?;
            let elems = cpairs
                .iter()
                .zip(ab)
                .map(|((c, _), (p, q))| Some(if c.konst()? != 0 { p.clone() } else { q.clone() }))
                .collect::<Option<Vec<_>>>()?;
            if x.shape.len() > shape.len() {
                return None;
            }
            SymVal { shape, dtype: a.dtype, elems }
        }
        _ => return None,
    };
    Some(out)
}

/// The elements of `x` at the kept indices of every axis (row-major).
fn gather_nd(x: &SymVal, keep: &[Vec<usize>]) -> Option<Vec<Mono>> {
    let mut out = vec![];
    let total: usize = keep.iter().map(Vec::len).product();
    for flat in 0..total {
        let (mut rest, mut src, mut stride) = (flat, 0usize, 1usize);
        for a in (0..keep.len()).rev() {
            let i = keep[a][rest % keep[a].len()];
            rest /= keep[a].len();
            src += i * stride;
            stride *= x.shape[a];
        }
        out.push(x.elems.get(src)?.clone());
    }
    Some(out)
}

/// Two elements combined by a binary op.
type Pair<'a> = (&'a Mono, &'a Mono);

/// Element pairs of two shape values under broadcasting (a scalar or a 1-element vector against
/// anything; otherwise equal lengths).
fn zip<'a>(x: &'a SymVal, y: &'a SymVal) -> Option<(Vec<usize>, Vec<Pair<'a>>)> {
    let shape = if x.shape.len() >= y.shape.len() { x.shape.clone() } else { y.shape.clone() };
    let n = shape.iter().product::<usize>();
    let pick = |s: &'a SymVal, i: usize| -> Option<&'a Mono> {
        match s.elems.len() {
            1 => s.elems.first(),
            m if m == n => s.elems.get(i),
            _ => None,
        }
    };
    let pairs = (0..n).map(|i| Some((pick(x, i)?, pick(y, i)?))).collect::<Option<Vec<_>>>()?;
    Some((shape, pairs))
}

/// Whether two monomials are equal, when that is decidable (dims are at least 1).
fn equal(a: &Mono, b: &Mono) -> Option<bool> {
    if a == b {
        return Some(true);
    }
    // a remainder may be 0 (or anything below its modulus): nothing is decided
    if [a, b].iter().any(|m| m.syms.iter().any(|f| Dim::Sym(f.clone()).may_be_zero())) {
        return None;
    }
    match (a.konst(), b.konst()) {
        (Some(p), Some(q)) => Some(p == q),
        // a positive multiple of dims (each at least 1) is at least k
        (None, Some(c)) if a.k > 0 && c < a.k => Some(false),
        (Some(c), None) if b.k > 0 && c < b.k => Some(false),
        _ => None,
    }
}

/// Records the result of [`eval`] for `name`: a constant node when every element is known, a
/// tracked shape value otherwise.
pub fn bind(im: &mut Importer, name: &str, node_name: &str, s: SymVal) -> Result<(), SymbolicError> {
    if s.is_const() {
        let t =
            s.to_tensor().ok_or_else(|| SymbolicError::Internal(format!("shape value `{name}` is not constant")))?;
        let v = im.g.add_const(node_name.to_string(), t);
        im.bind_value(name, v);
    } else {
        im.sym.insert(name.to_string(), s);
    }
    Ok(())
}

/// A [`DimExpr`] for a monomial: its symbols read from the graph inputs that carry them, added
/// to `refs` (the op's inputs from index `base` on).
///
/// A derived size no value carries (`(H+12)/16`, the windows of a feature map padded to a
/// multiple of 4; or a remainder) is the [`DimExpr`]'s derived factor: its names replaced by
/// placeholders of the dims that carry them ([`Dim::input_dim`]).
pub fn dim_expr(im: &Importer, m: &Mono, refs: &mut Vec<Value>, base: usize) -> Result<DimExpr, SymbolicError> {
    let mut of = vec![];
    let mut derived = vec![];
    let reference = |v: Value, refs: &mut Vec<Value>| match refs.iter().position(|r| *r == v) {
        Some(i) => i,
        None => {
            refs.push(v);
            refs.len() - 1
        }
    };
    for s in &m.syms {
        if let Some(&(v, axis)) = im.sym_src.get(s) {
            of.push((base + reference(v, refs), axis));
            continue;
        }
        if Dim::derived_parts(s).is_none() {
            return Err(SymbolicError::NoInputDim(s.clone()));
        }
        derived.push(s.clone());
    }
    let expr = if derived.is_empty() {
        None
    } else {
        let mut fail = None;
        let mut bound: Vec<(String, Value, usize)> = vec![];
        for s in &derived {
            collect_names(s, &mut |name| match im.sym_src.get(name) {
                Some(&(v, axis)) => bound.push((name.to_string(), v, axis)),
                None => fail = Some(name.to_string()),
            });
        }
        if let Some(name) = fail {
            return Err(SymbolicError::NoInputDim(name));
        }
        let mut names = std::collections::HashMap::new();
        for (name, v, axis) in bound {
            let i = base + reference(v, refs);
            names.insert(name, Dim::input_dim(i, axis));
        }
        let dims: Vec<Dim> = derived
            .iter()
            .map(|s| Dim::Sym(s.clone()).subst(&|n| names.get(n).cloned()))
            .collect::<Option<_>>()
            .ok_or_else(|| SymbolicError::Internal(format!("the size `{}` does not rewrite", derived.join("*"))))?;
        Some(Dim::product(&dims).ok_or_else(|| SymbolicError::Internal("a size overflows".into()))?)
    };
    Ok(DimExpr { k: m.k, of, expr })
}

/// Calls `f` on every name in a derived factor (recursively through its terms).
fn collect_names(f: &str, each: &mut dyn FnMut(&str)) {
    let Some((_, syms)) = Dim::Sym(f.to_string()).factors() else { return };
    for s in syms {
        match Dim::derived_parts(&s) {
            Some((terms, _, _)) => {
                for (_, prod) in terms {
                    collect_names(&prod, each);
                }
            }
            None => each(&s),
        }
    }
}

/// Computes a tracked shape value at run time: `shape` ops on the graph inputs that carry its
/// symbols, multiplied by the constant factors, concatenated.
pub fn materialize(im: &mut Importer, name: &str) -> Result<Value, SymbolicError> {
    let s =
        im.sym.get(name).cloned().ok_or_else(|| SymbolicError::Internal(format!("`{name}` is not a shape value")))?;
    let base = format!("{name}/value");
    let mut parts = vec![];
    for m in &s.elems {
        let v = product_value(im, m.k, &m.syms, &base)?;
        parts.push(Some(v));
    }
    let mut v = if parts.len() == 1 {
        parts[0].ok_or_else(|| SymbolicError::Internal(format!("shape value `{name}` has an empty part")))?
    } else {
        let nn = im.fresh_name(&format!("{base}/concat"));
        im.g.add_node(Op::Concat { axis: 0 }, parts, None, nn)?
    };
    if s.shape.is_empty() {
        let nn = im.fresh_name(&format!("{base}/scalar"));
        v = im.g.add_node(Op::Reshape { shape: vec![] }, vec![Some(v)], None, nn)?;
    }
    if s.dtype != DType::I64 {
        let nn = im.fresh_name(&format!("{base}/cast"));
        v = im.g.add_node(Op::Cast { to: s.dtype }, vec![Some(v)], None, nn)?;
    }
    Ok(v)
}

/// `k` times the product of `syms` at run time, as a 1-element i64 tensor.
fn product_value(im: &mut Importer, k: i64, syms: &[String], base: &str) -> Result<Value, SymbolicError> {
    let mut acc: Option<Value> = None;
    for sym in syms {
        let d = symbol_value(im, sym, base)?;
        acc = Some(match acc {
            None => d,
            Some(a) => binary(im, qforge_ir::BinaryOp::Mul, a, d, base)?,
        });
    }
    match acc {
        None => Ok(konst(im, k, base)),
        Some(a) if k == 1 => Ok(a),
        Some(a) => {
            let kv = konst(im, k, base);
            binary(im, qforge_ir::BinaryOp::Mul, a, kv, base)
        }
    }
}

/// One symbol at run time (a 1-element i64 tensor): read from the dims of the value that carries
/// it, or, for a derived size no value carries (`(H+15)/16` computed by the model's own shape
/// arithmetic, a sum of sizes), computed from its parts as [`Dim::eval`] does: the terms summed,
/// the constant added, then divided by `c` (integer division truncates, which is the floor on a
/// size's numerator, never negative).
fn symbol_value(im: &mut Importer, sym: &str, base: &str) -> Result<Value, SymbolicError> {
    if let Some(&(v, axis)) = im.sym_src.get(sym) {
        let nn = im.fresh_name(&format!("{base}/shape"));
        return Ok(im.g.add_node(Op::Shape { start: axis, end: axis + 1 }, vec![Some(v)], None, nn)?);
    }
    let (terms, b, c) = Dim::derived_parts(sym).ok_or_else(|| SymbolicError::NoInputDim(sym.to_string()))?;
    // a remainder's negative terms: floor division by truncation would differ
    if c > 1 && terms.iter().any(|(k, _)| *k < 0) {
        return Err(SymbolicError::NoInputDim(sym.to_string()));
    }
    let mut acc: Option<Value> = None;
    for (k, prod) in terms {
        let (pk, syms) = Dim::Sym(prod.clone()).factors().ok_or_else(|| SymbolicError::NoInputDim(sym.to_string()))?;
        let k = i64::try_from(pk)
            .ok()
            .and_then(|b| k.checked_mul(b))
            .ok_or_else(|| SymbolicError::Internal(format!("the size `{sym}` overflows")))?;
        let t = product_value(im, k, &syms, base)?;
        acc = Some(match acc {
            None => t,
            Some(a) => binary(im, qforge_ir::BinaryOp::Add, a, t, base)?,
        });
    }
    let mut v = acc.ok_or_else(|| SymbolicError::NoInputDim(sym.to_string()))?;
    if b != 0 {
        let bv = konst(im, b, base);
        v = binary(im, qforge_ir::BinaryOp::Add, v, bv, base)?;
    }
    if c > 1 {
        let c = i64::try_from(c).map_err(|_| SymbolicError::Internal(format!("the size `{sym}` overflows")))?;
        let cv = konst(im, c, base);
        v = binary(im, qforge_ir::BinaryOp::Div, v, cv, base)?;
    }
    Ok(v)
}

fn konst(im: &mut Importer, k: i64, base: &str) -> Value {
    let nn = im.fresh_name(&format!("{base}/k"));
    im.g.add_const(nn, Tensor::from_i64(vec![1], vec![k]))
}

fn binary(im: &mut Importer, op: qforge_ir::BinaryOp, a: Value, b: Value, base: &str) -> Result<Value, SymbolicError> {
    let nn = im.fresh_name(&format!("{base}/{}", Op::Binary(op).name()));
    Ok(im.g.add_node(Op::Binary(op), vec![Some(a), Some(b)], None, nn)?)
}
