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
            if x.shape.len() != 1 || opset < 10 {
                return None;
            }
            let one = |i: usize| -> Option<Option<i64>> {
                match ins.get(i) {
                    None => Some(None),
                    Some(s) => match consts(s)?.as_slice() {
                        [v] => Some(Some(*v)),
                        _ => None,
                    },
                }
            };
            let (start, end) = (one(1)??, one(2)??);
            if one(3)?.is_some_and(|a| a != 0 && a != -1) {
                return None;
            }
            let step = one(4)?.unwrap_or(1);
            let n = x.elems.len();
            let (s, e) = qforge_ir::infer::slice_bounds(n, start, end, step).ok()?;
            let len = qforge_ir::infer::slice_len(n, start, end, step).ok()?;
            let _ = e;
            let elems: Vec<Mono> =
                (0..len as i64).map(|i| x.elems.get((s + i * step) as usize).cloned()).collect::<Option<_>>()?;
            SymVal { shape: vec![elems.len()], dtype: x.dtype, elems }
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
                        _ => return None,
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
                    "Div" => a.div(b).or_else(|| a.affine(1, 0, u64::try_from(b.konst()?).ok().filter(|&c| c > 0)?)),
                    "Mod" => {
                        // integer Mod (fmod=0): the sign of the divisor
                        let (p, q) = (a.konst()?, b.konst()?);
                        let r = p.checked_rem(q)?;
                        Some(Mono::c(if r != 0 && (r < 0) != (q < 0) { r + q } else { r }))
                    }
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
pub fn dim_expr(im: &Importer, m: &Mono, refs: &mut Vec<Value>, base: usize) -> Result<DimExpr, SymbolicError> {
    let mut of = vec![];
    for s in &m.syms {
        let (v, axis) = *im.sym_src.get(s).ok_or_else(|| SymbolicError::NoInputDim(s.clone()))?;
        let i = match refs.iter().position(|r| *r == v) {
            Some(i) => i,
            None => {
                refs.push(v);
                refs.len() - 1
            }
        };
        of.push((base + i, axis));
    }
    Ok(DimExpr { k: m.k, of })
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
    let mut acc: Option<Value> = None;
    for (k, prod) in terms {
        let (pk, syms) = Dim::Sym(prod.clone()).factors().ok_or_else(|| SymbolicError::NoInputDim(sym.to_string()))?;
        let k = i64::try_from(k)
            .ok()
            .zip(i64::try_from(pk).ok())
            .and_then(|(a, b)| a.checked_mul(b))
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
