//! ONNX operators: one converter per ONNX op (or small group of ops), turning an ONNX node into
//! IR nodes. Converters are grouped by op family, as tract-onnx groups its own (`onnx/src/ops/`):
//!
//! * [`nn`]: convolution, pooling, batch normalization, LRN, activations, Dropout.
//! * [`math`]: element-wise arithmetic and unary math, MatMul and Gemm, reductions.
//! * [`logic`]: comparisons, boolean ops, Where.
//! * [`array`]: data movement and shape changes (Reshape, Flatten, Transpose, Concat, Slice,
//!   Gather, GatherElements, Split, Squeeze, Unsqueeze, Expand), Cast, Identity.
//! * [`constant`]: values made from attributes or shapes: Constant, ConstantOfShape, Shape, Range.
//! * [`norm`]: Softmax, LogSoftmax, Hardmax, LayerNormalization and the other normalizations,
//!   NegativeLogLikelihoodLoss, SoftmaxCrossEntropyLoss.
//! * [`transformer`]: Attention, RotaryEmbedding, composed from IR ops.
//! * [`select`]: NonZero and NonMaxSuppression, whose result size depends on the data.
//! * [`signal`]: the window functions, folded to constants.
//! * [`affine`]: AffineGrid, composed from IR ops.
//! * [`quant`]: QuantizeLinear, DequantizeLinear, DynamicQuantizeLinear, QLinearConv,
//!   QLinearMatMul, ConvInteger, MatMulInteger and ONNX Runtime's `com.microsoft` quantized ops.
//!
//! Each family lists its ops in a table of [`OpDef`]s (domain, op type, the op's schema versions
//! from ONNX's operator changelog, converter); [`import_node`] finds a node's converter in the
//! registry made from those tables and the schema version the node follows at the model's opset
//! ([`Cx::version`]): converters implement each version's semantics (attributes that became
//! inputs, changed defaults, new attributes), and refuse, naming them, the types and attribute
//! values the IR cannot carry. This module also holds [`Cx`], what every converter receives (the
//! importer, the ONNX node and its IR name), with the plumbing converters share: inputs, constant
//! inputs, attributes, adding nodes, errors that name the node.
//!
//! Every converter returns the IR values of the node's outputs in ONNX order (`None` for an
//! optional output qforge does not compute, such as Dropout's mask). Attributes are read through
//! [`Attrs`]; inputs that the IR keeps as attributes (shapes, axes, clip bounds, quantization
//! parameters) must be constants, and the error says so.

mod affine;
mod array;
mod constant;
mod logic;
mod math;
mod nn;
mod norm;
mod quant;
mod select;
mod signal;
mod transformer;

use super::attrs::{Attrs, NodeRef};
use super::import::Importer;
use super::proto::NodeProto;
use super::symbolic::{self, Mono, SymVal};
use super::ImportError;
use qforge_ir::{DimExpr, Op, Tensor, TensorType, UnaryOp, Value};
use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

type R<T> = Result<T, ImportError>;
type Outs = Vec<Option<Value>>;

/// Largest value accepted for kernel sizes, strides, pads and dilations, and for each dim of a
/// constant target shape: far beyond any real model, small enough that shape arithmetic cannot
/// overflow.
const MAX_ATTR_DIM: usize = 1 << 24;

/// A converter: imports the node of `cx` and returns its outputs' values in ONNX order.
type Convert = fn(&mut Cx) -> R<Outs>;

/// The operator domains the importer knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Domain {
    /// The default ONNX domain (`""` or `"ai.onnx"`).
    Onnx,
    /// ONNX Runtime's contrib ops (`"com.microsoft"`).
    Microsoft,
}

impl Domain {
    fn of(name: &str) -> Option<Domain> {
        match name {
            "" | "ai.onnx" => Some(Domain::Onnx),
            "com.microsoft" => Some(Domain::Microsoft),
            _ => None,
        }
    }
}

/// One registered op: which node it handles, the versions of its ONNX schema, and the converter
/// that imports it.
struct OpDef {
    domain: Domain,
    op: &'static str,
    /// The op's schema versions in its domain (the `since_version` of each entry in ONNX's
    /// operator changelog, `docs/Changelog.md`), oldest first, up to [`super::MAX_OPSET`]. A node
    /// at opset `o` follows the newest version at or below `o`; the converter reads
    /// [`Cx::version`] where the semantics changed. The first entry is the first opset the
    /// converter handles (older nodes are unsupported).
    versions: &'static [i64],
    /// The newest opset the converter was checked against: a node of a model whose opset lies
    /// beyond it may follow a version of the op qforge does not know, and is refused
    /// ([`ImportError::OpVersion`]).
    until: i64,
    convert: Convert,
}

impl OpDef {
    /// A default-domain op with the schema versions `versions` (see [`OpDef::versions`]),
    /// checked up to [`super::MAX_OPSET`].
    const fn onnx(op: &'static str, versions: &'static [i64], convert: Convert) -> OpDef {
        OpDef { domain: Domain::Onnx, op, versions, until: super::MAX_OPSET, convert }
    }

    /// A `com.microsoft` op (ONNX Runtime's contrib ops are all version 1).
    const fn microsoft(op: &'static str, convert: Convert) -> OpDef {
        OpDef { domain: Domain::Microsoft, op, versions: &[1], until: 1, convert }
    }

    /// The schema version a node at `opset` follows, if the converter handles that opset.
    fn version_at(&self, opset: i64) -> Option<i64> {
        self.versions.iter().rev().copied().find(|&v| v <= opset)
    }
}

/// The op tables of every family.
const FAMILIES: &[&[OpDef]] = &[
    nn::OPS,
    math::OPS,
    logic::OPS,
    array::OPS,
    constant::OPS,
    norm::OPS,
    quant::OPS,
    transformer::OPS,
    select::OPS,
    signal::OPS,
    affine::OPS,
];

/// Converters by domain and op type, built once from [`FAMILIES`].
fn registry() -> &'static HashMap<Domain, HashMap<&'static str, &'static OpDef>> {
    static REGISTRY: OnceLock<HashMap<Domain, HashMap<&'static str, &'static OpDef>>> = OnceLock::new();
    REGISTRY.get_or_init(|| {
        let mut r: HashMap<Domain, HashMap<&'static str, &'static OpDef>> = HashMap::new();
        for def in FAMILIES.iter().flat_map(|f| f.iter()) {
            r.entry(def.domain).or_default().insert(def.op, def);
        }
        r
    })
}

/// Every default-domain op qforge imports, with its schema versions and the newest opset its
/// converter was checked against (for documentation and tests).
pub fn default_domain_ops() -> Vec<(&'static str, &'static [i64], i64)> {
    let mut v: Vec<_> = FAMILIES
        .iter()
        .flat_map(|f| f.iter())
        .filter(|d| d.domain == Domain::Onnx)
        .map(|d| (d.op, d.versions, d.until))
        .collect();
    v.sort_by_key(|d| d.0);
    v
}

/// Imports one node through the converter registered for its domain and op type (see the
/// module docs). A node no converter handles (an unknown domain or op, or an opset older than
/// the op's first version) is [`ImportError::Unsupported`]; one at an opset newer than the
/// converter knows is [`ImportError::OpVersion`].
pub fn import_node(im: &mut Importer, node: &NodeProto, at: &NodeRef) -> R<Outs> {
    let def = Domain::of(&node.domain)
        .and_then(|d| registry().get(&d))
        .and_then(|ops| ops.get(node.op_type.as_str()))
        .ok_or_else(|| at.unsupported())?;
    let version = def.version_at(at.opset).ok_or_else(|| at.unsupported())?;
    // A model older than MIN_OPSET: a node is imported only when its op's schema is the one it
    // is at MIN_OPSET (And, Or, Xor, Not at opset 7 are And-7, ...); an older schema (a
    // BatchNormalization-7, an Upsample-7) is refused naming the op and the version.
    if def.domain == Domain::Onnx && at.opset < super::MIN_OPSET {
        let current = def.version_at(super::MIN_OPSET);
        if current != Some(version) {
            let since = current.map_or(String::new(), |c| format!(" (qforge implements {}-{c})", at.op));
            return Err(at.err(format!(
                "opset {} resolves {}-{version}, a schema older than qforge implements{since}; convert the model \
                 to opset {} or newer with onnx.version_converter",
                at.opset,
                at.op,
                super::MIN_OPSET
            )));
        }
    }
    if at.opset > def.until {
        return Err(ImportError::OpVersion {
            op: at.op.clone(),
            domain: at.domain_name(),
            opset: at.opset,
            version,
            until: def.until,
            node: at.name.clone(),
        });
    }
    (def.convert)(&mut Cx { im, node, at, version })
}

fn one(v: Value) -> R<Outs> {
    Ok(vec![Some(v)])
}

/// What a converter works with: the importer, the ONNX node, and the node's IR name, op and
/// opset (for errors and opset-dependent semantics).
struct Cx<'a> {
    im: &'a mut Importer,
    node: &'a NodeProto,
    at: &'a NodeRef,
    /// The schema version of the op the node follows (see [`OpDef::versions`]).
    version: i64,
}

impl<'a> Cx<'a> {
    fn attrs(&self) -> Attrs<'a> {
        Attrs::new(self.node, self.at)
    }

    fn err(&self, msg: impl std::fmt::Display) -> ImportError {
        self.at.err(msg)
    }

    /// The name of input `i`, or `None` when it is absent (missing or empty).
    fn input_name(&self, i: usize) -> Option<&'a str> {
        self.node.input.get(i).map(String::as_str).filter(|s| !s.is_empty())
    }

    fn value(&mut self, name: &str) -> R<Value> {
        if self.im.bound(name).is_none() && self.im.sym.contains_key(name) {
            let v = symbolic::materialize(self.im, name).map_err(|m| self.err(format!("input `{name}`: {m}")))?;
            self.im.bind_value(name, v);
            return Ok(v);
        }
        if let Some(v) = self.im.lookup(name) {
            return Ok(v);
        }
        Err(match self.im.dropped(name) {
            Some(d) => self.err(format!("input `{name}` is the {d}, which qforge does not compute")),
            None => {
                self.err(format!("input `{name}` is not defined by an earlier node, an initializer or a graph input"))
            }
        })
    }

    fn input(&mut self, i: usize) -> R<Value> {
        let name = self.input_name(i).ok_or_else(|| self.err(format!("required input {i} is missing")))?;
        self.value(name)
    }

    fn opt_input(&mut self, i: usize) -> R<Option<Value>> {
        match self.input_name(i) {
            None => Ok(None),
            Some(n) => self.value(n).map(Some),
        }
    }

    /// Inputs `0..min` (required) and `min..max` (optional), as IR input slots; trailing absent
    /// inputs are dropped.
    fn inputs_upto(&mut self, min: usize, max: usize) -> R<Vec<Option<Value>>> {
        if self.node.input.len() > max {
            return Err(self.err(format!("has {} inputs; at most {max} are allowed", self.node.input.len())));
        }
        let mut v = vec![];
        for i in 0..min {
            v.push(Some(self.input(i)?));
        }
        for i in min..max {
            v.push(self.opt_input(i)?);
        }
        while v.len() > min && v.last() == Some(&None) {
            v.pop();
        }
        Ok(v)
    }

    fn ty(&self, v: Value) -> TensorType {
        self.im.g.value_type(v).clone()
    }

    /// Adds the node that produces this ONNX node's result (it takes the ONNX node's name).
    fn add(&mut self, op: Op, inputs: Vec<Option<Value>>, declared: Option<Vec<TensorType>>) -> R<Value> {
        self.im.add(self.at, op, inputs, declared, self.at.name.clone())
    }

    /// Adds the node of an op of several results (named after the ONNX node): its results in
    /// order, each a constant when the node folds.
    fn add_multi(&mut self, op: Op, inputs: Vec<Option<Value>>) -> R<Vec<Value>> {
        self.im.add_multi(self.at, op, inputs, None, self.at.name.clone())
    }

    /// Adds an intermediate node of a multi-node expansion, named `{node}/{tag}`.
    fn add_helper(&mut self, tag: &str, op: Op, inputs: Vec<Option<Value>>) -> R<Value> {
        let name = self.im.fresh_name(&format!("{}/{tag}", self.at.name));
        self.im.add(self.at, op, inputs, None, name)
    }

    /// A node of exactly `n` inputs that maps to one IR op.
    fn simple(&mut self, op: Op, n: usize) -> R<Outs> {
        let ins = self.inputs_upto(n, n)?;
        one(self.add(op, ins, None)?)
    }

    /// A one-input element-wise op.
    fn unary(&mut self, u: UnaryOp) -> R<Outs> {
        self.simple(Op::Unary(u), 1)
    }

    /// The symbolic content of input `i` when it is a tracked shape value with symbolic elements.
    fn sym_input(&self, i: usize) -> Option<SymVal> {
        self.im.sym.get(self.input_name(i)?).cloned()
    }

    /// Sizes for an op taking `x` then reference inputs: the monomials as [`DimExpr`]s reading
    /// their symbols from the graph inputs, which are appended to `ins`.
    fn dim_exprs(&self, monos: &[Mono], ins: &mut Vec<Option<Value>>) -> R<Vec<DimExpr>> {
        let base = ins.len();
        let mut refs = vec![];
        let out = monos
            .iter()
            .map(|m| symbolic::dim_expr(self.im, m, &mut refs, base).map_err(|e| self.err(e)))
            .collect::<R<Vec<_>>>()?;
        ins.extend(refs.into_iter().map(Some));
        Ok(out)
    }

    /// A scalar input as a monomial: a constant or a tracked shape value.
    fn scalar_mono(&self, i: usize, what: &str) -> R<Mono> {
        let name = self.input_name(i).ok_or_else(|| self.err(format!("input {i} ({what}) is missing")))?;
        let s = symbolic::sym_of(self.im, name);
        match s.as_ref().map(|s| s.elems.as_slice()) {
            Some([m]) => Ok(m.clone()),
            _ => Err(self.err(format!(
                "input `{name}` ({what}) must be a constant or computed from input shapes: qforge does not \
                 support a {what} computed from tensor data"
            ))),
        }
    }

    /// The constant tensor of input `i`, which must be present.
    fn const_input(&self, i: usize, what: &str) -> R<Arc<Tensor>> {
        self.opt_const_input(i, what)?.ok_or_else(|| self.err(format!("input {i} ({what}) is missing")))
    }

    /// The constant tensor of input `i`, or `None` when the input is absent. Whatever the model
    /// computes from constants is one by now (the importer folds it); a present input that is
    /// still not a constant is computed at run time, and is an error naming the graph inputs it
    /// comes from.
    fn opt_const_input(&self, i: usize, what: &str) -> R<Option<Arc<Tensor>>> {
        let Some(name) = self.input_name(i) else { return Ok(None) };
        if let Some(t) = self.im.const_by_name(name) {
            return Ok(Some(t));
        }
        Err(self.not_constant(name, what))
    }

    /// The error for input `name` (`what`) that qforge needs at import but the model computes at
    /// run time ([`ImportError::NotConstant`], naming the graph inputs it comes from), or does
    /// not define.
    fn not_constant(&self, name: &str, what: &str) -> ImportError {
        if !self.im.knows(name) {
            return self.err(format!(
                "input `{name}` ({what}) is not defined by an earlier node, an initializer or a graph input"
            ));
        }
        let sources = match self.im.bound(name) {
            Some(v) => self.im.run_time_sources(v),
            None => vec![],
        };
        ImportError::NotConstant {
            node: self.at.name.clone(),
            op: self.at.op.clone(),
            input: name.to_string(),
            what: what.to_string(),
            sources: sources.into(),
        }
    }

    fn opt_ints_input(&self, i: usize, what: &str) -> R<Option<Vec<i64>>> {
        let Some(t) = self.opt_const_input(i, what)? else { return Ok(None) };
        if t.rank() > 1 {
            return Err(self.err(format!("input {i} ({what}) must be a scalar or 1-D, got shape {:?}", t.shape())));
        }
        t.to_i64_vec()
            .map(Some)
            .ok_or_else(|| self.err(format!("input {i} ({what}) must be an integer tensor, got {}", t.dtype())))
    }

    fn ints_input(&self, i: usize, what: &str) -> R<Vec<i64>> {
        self.opt_ints_input(i, what)?.ok_or_else(|| self.err(format!("input {i} ({what}) is missing")))
    }

    /// A constant scalar input as f32 (Clip bounds).
    fn opt_scalar_f32(&self, i: usize, what: &str) -> R<Option<f32>> {
        let Some(t) = self.opt_const_input(i, what)? else { return Ok(None) };
        match t.to_f32_vec().as_slice() {
            [x] => Ok(Some(*x)),
            _ => Err(self.err(format!("input {i} ({what}) must hold one value, got shape {:?}", t.shape()))),
        }
    }

    /// Checks a list of spatial sizes from the file against [`MAX_ATTR_DIM`].
    fn bounded(&self, what: &str, v: Vec<usize>) -> R<Vec<usize>> {
        match v.iter().find(|&&x| x > MAX_ATTR_DIM) {
            Some(x) => Err(self.err(format!("`{what}` entry {x} is out of range"))),
            None => Ok(v),
        }
    }

    /// A constant target shape (Reshape, Expand): entries from -1 up, bounded.
    fn target_shape(&self, shape: Vec<i64>, what: &str) -> R<Vec<i64>> {
        if let Some(d) = shape.iter().find(|&&d| d < -1 || d > MAX_ATTR_DIM as i64) {
            return Err(self.err(format!("{what} {shape:?} has an invalid entry {d}")));
        }
        let mut n: u128 = 1;
        for &d in shape.iter().filter(|&&d| d > 0) {
            n = n.saturating_mul(d as u128);
        }
        if n > 1 << 48 {
            return Err(self.err(format!("{what} {shape:?} has too many elements")));
        }
        Ok(shape)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    /// A (domain, op) pair registered twice would silently shadow one converter.
    #[test]
    fn every_op_is_registered_once() {
        let mut seen = HashSet::new();
        for def in FAMILIES.iter().flat_map(|f| f.iter()) {
            assert!(seen.insert((def.domain, def.op)), "{:?} {} is registered twice", def.domain, def.op);
        }
        assert_eq!(registry().values().map(HashMap::len).sum::<usize>(), seen.len());
    }

    /// Version lists are strictly increasing and within the opsets the importer accepts, and a
    /// node follows the newest version at or below its opset.
    #[test]
    fn versions_are_ordered_and_resolve() {
        for def in FAMILIES.iter().flat_map(|f| f.iter()) {
            assert!(!def.versions.is_empty(), "{}", def.op);
            assert!(def.versions.windows(2).all(|w| w[0] < w[1]), "{}: {:?}", def.op, def.versions);
            assert!(def.versions.iter().all(|&v| v >= 1 && v <= def.until), "{}: {:?}", def.op, def.versions);
        }
        let cast = registry()[&Domain::Onnx]["Cast"];
        let at = |o| cast.version_at(o);
        assert_eq!(
            (at(9), at(12), at(13), at(18), at(19), at(22), at(28)),
            (Some(9), Some(9), Some(13), Some(13), Some(19), Some(21), Some(28))
        );
        assert_eq!(registry()[&Domain::Onnx]["LayerNormalization"].version_at(16), None);
    }
}
