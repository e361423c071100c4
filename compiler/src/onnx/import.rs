//! Graph building: opsets, initializers, graph inputs with symbolic dimensions, the map from ONNX
//! value names to IR values, node naming, constant folding, graph outputs and verification.

use super::attrs::NodeRef;
use super::proto::{tensor_shape_proto::dimension, type_proto, GraphProto, ModelProto, ValueInfoProto};
use super::tensors::{dtype_from_onnx, four_bit, tensor_from_proto_limited, wire_from_onnx, TensorError};
use super::{ops, symbolic, ImportError, ImportOptions};
use qforge_ir::{infer, interp, Dim, Graph, Op, Shape, Tensor, TensorType, Value, WireType};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

/// The ONNX default-domain opsets the importer understands: every opset from `MIN_OPSET` to
/// `MAX_OPSET`; an older model only where each of its nodes follows the schema version it would
/// follow at `MIN_OPSET` (checked per node, [`super::ops::import_node`]).
pub const MIN_OPSET: i64 = 9;
pub const MAX_OPSET: i64 = 28;

/// Largest element count of the fixed dims of a graph input (keeps shape arithmetic far from
/// overflow).
const MAX_INPUT_ELEMENTS: u128 = 1 << 48;

/// Constant folding through the interpreter is limited to results (and inputs) of at most this
/// many elements: it is meant for shape arithmetic and small parameter tensors, not weights.
const FOLD_MAX_ELEMENTS: usize = 1 << 16;

/// Import state: the graph being built and what ONNX names refer to.
pub struct Importer {
    pub g: Graph,
    /// Default-domain opset.
    pub opset: i64,
    /// `com.microsoft` opset (1 when the model does not declare it).
    pub ms_opset: i64,
    /// ONNX value name -> IR value.
    values: HashMap<String, Value>,
    /// Initializers not yet added to the graph (added on first use, so unused ones and weights
    /// consumed only as quantized constants never appear as plain constants).
    inits: HashMap<String, Arc<Tensor>>,
    /// Optional ONNX outputs the importer does not produce (Dropout's mask, MaxPool's indices):
    /// value name -> description, for a clear error if something consumes one.
    dropped: HashMap<String, String>,
    /// Node names in use.
    names: HashSet<String>,
    /// Quantized constants already made from an initializer, by (name, dtype and parameters).
    quant_consts: HashMap<(String, String), Value>,
    /// Shape values with symbolic elements, by ONNX name (see [`symbolic`]); computed at run time
    /// only if something uses them as data.
    pub(super) sym: HashMap<String, symbolic::SymVal>,
    /// Where each dimension symbol can be read: a graph input and its axis.
    pub(super) sym_src: HashMap<String, (Value, usize)>,
    /// Bytes of constants the importer has made from shapes (`ConstantOfShape`, `Range`): a small
    /// model can ask for many large ones, so their total is bounded too (see [`Importer::charge`]).
    materialized: u128,
    /// ONNX names of constants stored as INT4 or UINT4 (read into i8 or u8): quantizing to a
    /// 4-bit zero point's type would saturate to the 4-bit range, which the IR cannot express.
    four_bit: HashSet<String>,
    /// ONNX names of graph inputs and initializers declared of a wire type (float8, float4,
    /// 4- and 2-bit integers; see [`qforge_ir::wire`]), decoded into the IR type that holds them.
    wire: HashMap<String, WireType>,
    /// The largest tensor the importer materializes, and the bound on `materialized`
    /// ([`ImportOptions::max_tensor_bytes`]).
    pub max_tensor_bytes: u128,
}

impl Importer {
    /// A name not used by any node yet, based on `base`.
    pub fn fresh_name(&mut self, base: &str) -> String {
        if self.names.insert(base.to_string()) {
            return base.to_string();
        }
        let mut k = 1usize;
        loop {
            let name = format!("{base}_{k}");
            if self.names.insert(name.clone()) {
                return name;
            }
            k += 1;
        }
    }

    /// Binds an ONNX name to a value.
    pub(super) fn bind_value(&mut self, name: &str, v: Value) {
        self.values.insert(name.to_string(), v);
    }

    /// Counts `bytes` of a constant the importer is about to make from a shape; the total over
    /// the model may not exceed [`Importer::max_tensor_bytes`], the limit of one tensor.
    pub fn charge(&mut self, bytes: u128) -> Result<(), TensorError> {
        self.materialized = self.materialized.saturating_add(bytes);
        if self.materialized > self.max_tensor_bytes {
            return Err(TensorError::TotalTooLarge { total: self.materialized, limit: self.max_tensor_bytes });
        }
        Ok(())
    }

    /// The value an ONNX name refers to, adding an initializer to the graph on first use and
    /// computing a symbolic shape value (see [`symbolic::materialize`]) on first use as data.
    pub fn lookup(&mut self, name: &str) -> Option<Value> {
        if let Some(v) = self.values.get(name) {
            return Some(*v);
        }
        if self.sym.contains_key(name) {
            let v = symbolic::materialize(self, name).ok()?;
            self.values.insert(name.to_string(), v);
            return Some(v);
        }
        // Taken out of the map so that, when nothing else holds it, the tensor moves into the
        // graph instead of being copied (a large weight would exist twice during import).
        let t = self.inits.remove(name)?;
        let node_name = self.fresh_name(name);
        let t = Arc::try_unwrap(t).unwrap_or_else(|t| (*t).clone());
        let v = self.g.add_const(node_name, t);
        // Keep the tensor reachable by name without a second copy.
        if let Op::Const(t) = &self.g.node(v.node).op {
            self.inits.insert(name.to_string(), t.clone());
        }
        self.values.insert(name.to_string(), v);
        Some(v)
    }

    /// Records that the constant named `name` was stored as INT4 or UINT4.
    pub(super) fn mark_four_bit(&mut self, name: &str) {
        self.four_bit.insert(name.to_string());
    }

    /// Whether the constant named `name` was stored as INT4 or UINT4.
    pub fn is_four_bit(&self, name: &str) -> bool {
        self.four_bit.contains(name)
    }

    /// The wire type a graph input or initializer named `name` is declared of, if any.
    pub fn wire_of(&self, name: &str) -> Option<WireType> {
        self.wire.get(name).copied()
    }

    /// Whether the name refers to anything (a value, an initializer, a shape value).
    pub fn knows(&self, name: &str) -> bool {
        self.values.contains_key(name) || self.inits.contains_key(name) || self.sym.contains_key(name)
    }

    /// If the name is a dropped optional output, what it was.
    pub fn dropped(&self, name: &str) -> Option<&str> {
        self.dropped.get(name).map(String::as_str)
    }

    /// The value bound to a name, without materializing initializers.
    pub fn bound(&self, name: &str) -> Option<Value> {
        self.values.get(name).copied()
    }

    /// The constant tensor behind an ONNX name (an initializer or a constant node), if any.
    pub fn const_by_name(&self, name: &str) -> Option<Arc<Tensor>> {
        match self.values.get(name) {
            Some(v) => self.const_of(*v),
            None => self.inits.get(name).cloned(),
        }
    }

    /// The tensor of a constant value.
    pub fn const_of(&self, v: Value) -> Option<Arc<Tensor>> {
        match &self.g.node(v.node).op {
            Op::Const(t) => Some(t.clone()),
            _ => None,
        }
    }

    /// A constant of a quantized type made from the constant tensor named `name` (one per
    /// distinct type).
    pub fn quant_const(&mut self, name: &str, t: &Tensor, ty: TensorType) -> Value {
        let key = (name.to_string(), format!("{ty:?}"));
        if let Some(v) = self.quant_consts.get(&key) {
            return *v;
        }
        let node_name = self.fresh_name(name);
        let v = self.g.add_const_typed(node_name, t.clone(), ty);
        self.quant_consts.insert(key, v);
        v
    }

    /// Adds a node, folding it into a constant when every input is constant (see
    /// [`Importer::try_fold`]). IR errors become node errors of `at`. For an op of several
    /// results use [`Importer::add_multi`].
    pub fn add(
        &mut self,
        at: &NodeRef,
        op: Op,
        inputs: Vec<Option<Value>>,
        declared: Option<Vec<TensorType>>,
        name: String,
    ) -> Result<Value, ImportError> {
        let outs = self.add_multi(at, op, inputs, declared, name)?;
        outs.first().copied().ok_or_else(|| at.err("internal: an op without results"))
    }

    /// Adds a node and returns its results in order: the node's outputs, or one constant per
    /// result when the node folds (see [`Importer::try_fold`]).
    pub fn add_multi(
        &mut self,
        at: &NodeRef,
        op: Op,
        inputs: Vec<Option<Value>>,
        declared: Option<Vec<TensorType>>,
        name: String,
    ) -> Result<Vec<Value>, ImportError> {
        if let Some(vs) = self.try_fold(&op, &inputs, declared.as_deref(), &name, at) {
            return Ok(vs);
        }
        let n = op.num_outputs();
        let helper = name != at.name;
        let v = self.g.add_node(op, inputs, declared, name).map_err(|e| match e {
            qforge_ir::IrError::Node { node, msg, .. } if helper => at.err(format!("in `{node}`: {msg}")),
            qforge_ir::IrError::Node { msg, .. } => at.err(msg),
            e => ImportError::Ir(e),
        })?;
        if helper {
            self.g.node_mut(v.node).from = vec![at.name.clone()];
        }
        let outs: Vec<Value> = (0..n).map(|p| Value::new(v.node, p)).collect();
        // A derived size (a symbolic conv or pool output, `(H+1)/2`) can be read at run time
        // from the first value that carries it, as graph inputs' symbols are.
        for &o in &outs {
            for (axis, d) in self.g.value_type(o).shape.0.iter().enumerate() {
                if let Some((1, [f])) = d.factors().as_ref().map(|(k, s)| (*k, s.as_slice())) {
                    if !self.sym_src.contains_key(f) {
                        self.sym_src.insert(f.clone(), (o, axis));
                    }
                }
            }
        }
        Ok(outs)
    }

    /// Folds `op` on constant inputs into constants (one per result), so that whatever a model
    /// computes from constants (axes, shapes, bounds, pads, parameters) is a constant for the
    /// converters that need one. Ops that only change the shape are folded at any size; every
    /// other op is evaluated by the reference interpreter's `eval_op` when its inputs and
    /// results have at most [`FOLD_MAX_ELEMENTS`] elements each. Never folded: quantization and
    /// integer kernels and anything of a quantized type (quantized weights stay quantized, as
    /// the canonicalizer keeps them), and the compute-heavy ops (convolution, matrix products,
    /// pooling, LRN), which never compute shapes or parameters and whose cost grows with their
    /// weights. Anything that cannot be folded returns `None` and stays a node.
    fn try_fold(
        &mut self,
        op: &Op,
        inputs: &[Option<Value>],
        declared: Option<&[TensorType]>,
        name: &str,
        at: &NodeRef,
    ) -> Option<Vec<Value>> {
        if inputs.is_empty() {
            return None;
        }
        let reshape_only = matches!(
            op,
            Op::Reshape { .. } | Op::Flatten { .. } | Op::Unsqueeze { .. } | Op::Squeeze { .. } | Op::Identity
        );
        let excluded = matches!(
            op,
            Op::Input
                | Op::Const(_)
                | Op::Quantize
                | Op::Dequantize
                | Op::Requantize
                | Op::DynamicQuantize
                | Op::Conv(_)
                | Op::MatMul
                | Op::Gemm { .. }
                | Op::MaxPool(_)
                | Op::AveragePool(_)
                | Op::GlobalAveragePool
                | Op::GlobalMaxPool
                | Op::Lrn { .. }
        ) || op.is_integer_kernel();
        if excluded {
            return None;
        }
        let consts: Vec<Arc<Tensor>> =
            inputs.iter().map(|v| v.and_then(|v| self.const_of(v))).collect::<Option<_>>()?;
        let vals: Vec<Value> = inputs.iter().map(|v| v.ok_or(())).collect::<Result<_, _>>().ok()?;
        let in_types: Vec<Option<&TensorType>> = vals.iter().map(|v| Some(self.g.value_type(*v))).collect();
        if in_types.iter().flatten().any(|t| t.quant.is_some()) {
            return None;
        }
        let out_types = infer::infer(op, &in_types, declared).ok()?;
        let mut shapes = vec![];
        for t in &out_types {
            if t.quant.is_some() {
                return None;
            }
            let shape = t.shape.as_fixed()?;
            // Never fold into a constant over the size limit: a small `--max-tensor-bytes` leaves
            // the node to be computed at run time instead.
            let bytes = shape.iter().fold(t.dtype.size_bytes() as u128, |b, &d| b.saturating_mul(d as u128));
            if bytes > self.max_tensor_bytes {
                return None;
            }
            shapes.push(shape);
        }
        let folded: Vec<Tensor> = if reshape_only {
            let t: &Tensor = consts.first()?;
            vec![t.clone().reshaped(shapes.first()?.clone())?]
        } else {
            let small = |n: usize| n <= FOLD_MAX_ELEMENTS;
            if !shapes.iter().all(|s| small(s.iter().product())) || !consts.iter().all(|t| small(t.len())) {
                return None;
            }
            let refs: Vec<Option<&Tensor>> = consts.iter().map(|t| Some(&**t)).collect();
            let r = interp::eval_op(op, &in_types, &out_types, &refs).ok()?;
            let fits = r.len() == out_types.len()
                && r.iter().zip(&out_types).zip(&shapes).all(|((t, ty), s)| t.dtype() == ty.dtype && t.shape() == s);
            fits.then_some(r)?
        };
        let mut outs = vec![];
        for (t, ty) in folded.into_iter().zip(out_types) {
            let node_name = self.fresh_name(name);
            let v = self.g.add_const_typed(node_name, t, ty);
            self.g.node_mut(v.node).from = vec![at.name.clone()];
            outs.push(v);
        }
        Some(outs)
    }

    /// The graph inputs a value is computed from (every one, in the order found), for errors
    /// about inputs that qforge needs at import but the model computes at run time: a caller
    /// holding their values can specialize the model on them.
    pub fn run_time_sources(&self, v: Value) -> Vec<String> {
        let mut seen = HashSet::new();
        let mut stack = vec![v.node];
        let mut found = vec![];
        while let Some(n) = stack.pop() {
            if !seen.insert(n) {
                continue;
            }
            let node = self.g.node(n);
            if matches!(node.op, Op::Input) {
                found.push(node.name.clone());
            }
            stack.extend(node.inputs().iter().flatten().map(|i| i.node));
        }
        found
    }
}

/// Imports a decoded model with the default [`ImportOptions`].
pub fn import_model(model: &ModelProto, origin: &str) -> Result<Graph, ImportError> {
    import_model_with(model, origin, &ImportOptions::default())
}

/// Imports a decoded model; `origin` names it in errors.
pub fn import_model_with(model: &ModelProto, origin: &str, opts: &ImportOptions) -> Result<Graph, ImportError> {
    let graph = model.graph.as_ref().ok_or_else(|| ImportError::Model(format!("`{origin}` has no graph")))?;
    let (mut opset, mut ms_opset) = (None, 1);
    for o in &model.opset_import {
        match o.domain.as_str() {
            "" | "ai.onnx" => opset = Some(o.version),
            "com.microsoft" => ms_opset = o.version,
            _ => {}
        }
    }
    let opset = opset.ok_or_else(|| {
        ImportError::Model(format!("`{origin}` does not import the default ONNX domain (no opset_import for \"\")"))
    })?;
    // Below MIN_OPSET a model is imported node by node where each node's op follows the schema it
    // follows at MIN_OPSET ([`super::ops::import_node`]); the rest are refused there.
    if !(1..=MAX_OPSET).contains(&opset) {
        return Err(ImportError::Model(format!(
            "`{origin}` uses opset {opset} of the default domain; qforge imports opsets {MIN_OPSET} to {MAX_OPSET} \
             (convert it with onnx.version_converter)"
        )));
    }
    let name = if graph.name.is_empty() { "model".to_string() } else { graph.name.clone() };
    let mut im = Importer {
        g: Graph::new(name),
        opset,
        ms_opset,
        values: HashMap::new(),
        inits: HashMap::new(),
        dropped: HashMap::new(),
        names: HashSet::new(),
        quant_consts: HashMap::new(),
        materialized: 0,
        four_bit: HashSet::new(),
        wire: HashMap::new(),
        max_tensor_bytes: u128::from(opts.max_tensor_bytes),
        sym: HashMap::new(),
        sym_src: HashMap::new(),
    };
    for o in &graph.output {
        check_output_wire(o)?;
    }
    add_initializers(&mut im, graph)?;
    add_inputs(&mut im, graph, &opts.specialize)?;
    for (index, node) in graph.node.iter().enumerate() {
        let base = if node.name.is_empty() { format!("{}_{index}", node.op_type) } else { node.name.clone() };
        let name = im.fresh_name(&base);
        let node_opset = match node.domain.as_str() {
            "" | "ai.onnx" => im.opset,
            "com.microsoft" => im.ms_opset,
            d => model.opset_import.iter().find(|o| o.domain == d).map_or(0, |o| o.version),
        };
        let at = NodeRef { name, op: node.op_type.clone(), domain: node.domain.clone(), opset: node_opset };
        if let Some(s) = symbolic::eval(&im, node, node_opset) {
            let out = node.output.first().map(String::as_str).unwrap_or("");
            if out.is_empty() || im.knows(out) {
                return Err(at.err(format!("output `{out}` is empty or already defined")));
            }
            symbolic::bind(&mut im, out, &at.name, s).map_err(|m| at.err(m))?;
            continue;
        }
        let outs = ops::import_node(&mut im, node, &at)?;
        for (i, out) in node.output.iter().enumerate() {
            if out.is_empty() {
                continue;
            }
            if im.knows(out) {
                return Err(at.err(format!("output `{out}` is already defined (ONNX graphs are SSA)")));
            }
            match outs.get(i).copied().flatten() {
                Some(v) => {
                    im.values.insert(out.clone(), v);
                }
                None => {
                    im.dropped.insert(out.clone(), format!("optional output {i} of {} node `{}`", at.op, at.name));
                }
            }
        }
    }
    for o in &graph.output {
        if im.bound(&o.name).is_none() && im.sym.contains_key(&o.name) {
            let v = symbolic::materialize(&mut im, &o.name)
                .map_err(|m| ImportError::Model(format!("graph output `{}`: {m}", o.name)))?;
            im.bind_value(&o.name, v);
        }
        let v = im.lookup(&o.name).ok_or_else(|| match im.dropped(&o.name) {
            Some(d) => {
                ImportError::Model(format!("graph output `{}` is the {d}, which qforge does not compute", o.name))
            }
            None => ImportError::Model(format!("graph output `{}` is not produced by any node", o.name)),
        })?;
        check_output_type(&im.g, o, v)?;
        im.g.add_output(o.name.clone(), v);
    }
    im.g.remove_dead();
    qforge_ir::verify::verify(&im.g)?;
    Ok(im.g)
}

fn add_initializers(im: &mut Importer, graph: &GraphProto) -> Result<(), ImportError> {
    if let Some(s) = graph.sparse_initializer.first() {
        let name = s.values.as_ref().map_or("", |v| v.name.as_str());
        return Err(ImportError::Model(format!("sparse initializer `{name}` is not supported")));
    }
    for t in &graph.initializer {
        if t.name.is_empty() {
            return Err(ImportError::Model("an initializer has no name".into()));
        }
        let tensor = tensor_from_proto_limited(t, im.max_tensor_bytes)
            .map_err(|error| ImportError::Initializer { name: t.name.clone(), error })?;
        if four_bit(t.data_type).is_some() {
            im.four_bit.insert(t.name.clone());
        }
        if let Some(w) = wire_from_onnx(t.data_type) {
            im.wire.insert(t.name.clone(), w);
        }
        if im.inits.insert(t.name.clone(), Arc::new(tensor)).is_some() {
            return Err(ImportError::Model(format!("initializer `{}` is defined twice", t.name)));
        }
    }
    Ok(())
}

/// Graph inputs that are not initializers (IR 3 models list every initializer as an input too;
/// from IR 4 on an initializer that is also an input is a default the caller may override,
/// which qforge treats as a constant). An input with a value in `specialize` becomes that
/// constant, recorded in the graph as specialized (see [`ImportOptions::specialize`]).
fn add_inputs(
    im: &mut Importer,
    graph: &GraphProto,
    specialize: &std::collections::BTreeMap<String, Arc<Tensor>>,
) -> Result<(), ImportError> {
    for name in specialize.keys() {
        let err = |msg: String| ImportError::Specialize { name: name.clone(), msg };
        if im.inits.contains_key(name) {
            return Err(err("it has an initializer, so qforge already compiles the model for that value".into()));
        }
        if !graph.input.iter().any(|vi| vi.name == *name) {
            let names: Vec<String> = graph
                .input
                .iter()
                .filter(|vi| !im.inits.contains_key(&vi.name))
                .map(|vi| format!("`{}`", vi.name))
                .collect();
            return Err(err(format!(
                "the model has no such input (inputs: {})",
                if names.is_empty() { "none".to_string() } else { names.join(", ") }
            )));
        }
    }
    for vi in &graph.input {
        if im.inits.contains_key(&vi.name) {
            continue;
        }
        if vi.name.is_empty() {
            return Err(ImportError::Model("a graph input has no name".into()));
        }
        if im.values.contains_key(&vi.name) {
            return Err(ImportError::Model(format!("graph input `{}` is listed twice", vi.name)));
        }
        let (ty, wire) = input_type(vi)?;
        im.names.insert(vi.name.clone());
        if let Some(w) = wire {
            im.wire.insert(vi.name.clone(), w);
        }
        if let Some(t) = specialize.get(&vi.name) {
            check_specialized(&vi.name, &ty, t)?;
            // The constant takes the input's name: its uses read the value the model is compiled for.
            let c = im.g.add_const(vi.name.clone(), (**t).clone());
            im.g.add_specialized(vi.name.clone(), t.clone());
            if let Some(w) = wire {
                im.g.set_wire(vi.name.clone(), w);
            }
            im.values.insert(vi.name.clone(), c);
            continue;
        }
        let syms: Vec<(usize, String)> = ty
            .shape
            .0
            .iter()
            .enumerate()
            .filter_map(|(a, d)| match d {
                Dim::Sym(s) => Some((a, s.clone())),
                Dim::Fixed(_) => None,
            })
            .collect();
        let empty = ty.shape.as_fixed().filter(|s| s.contains(&0));
        let dtype = ty.dtype;
        let v = im.g.add_input(vi.name.clone(), ty);
        if let Some(w) = wire {
            im.g.set_wire(vi.name.clone(), w);
        }
        im.values.insert(vi.name.clone(), v);
        if let Some(shape) = empty {
            // A tensor with no elements has one possible value: the input stays in the graph's
            // signature, and its consumers see the constant it must be (an empty `axes` input
            // then reads as "no axes", as ONNX's expanded functions pass it).
            let name = im.fresh_name(&format!("{}/empty", vi.name));
            let c = im.g.add_const(name, Tensor::zeros(dtype, shape));
            im.values.insert(vi.name.clone(), c);
        }
        for (a, s) in syms {
            im.sym_src.entry(s).or_insert((v, a));
        }
    }
    Ok(())
}

/// A value given for a graph input of declared type `ty` must have its element type and rank,
/// and its size on every fixed dim (a symbolic dim takes any size).
fn check_specialized(name: &str, ty: &TensorType, t: &Tensor) -> Result<(), ImportError> {
    let fits = t.dtype() == ty.dtype
        && t.rank() == ty.shape.0.len()
        && ty.shape.0.iter().zip(t.shape()).all(|(d, &n)| d.fixed().is_none_or(|f| f == n));
    if fits {
        return Ok(());
    }
    let dims: Vec<String> = t.shape().iter().map(|d| d.to_string()).collect();
    Err(ImportError::Specialize {
        name: name.to_string(),
        msg: format!("the model declares it {ty}, the value given is {}[{}]", t.dtype(), dims.join(",")),
    })
}

/// The type of a graph input, and its wire type if the model declares one the IR holds in
/// another type (the input then has that type, see [`qforge_ir::wire`]). A dimension with a
/// `dim_param` becomes that symbol; a first dimension with neither size nor name becomes the
/// batch symbol `N`; any other unknown dimension is an error.
fn input_type(vi: &ValueInfoProto) -> Result<(TensorType, Option<WireType>), ImportError> {
    let err = |m: &str| ImportError::Model(format!("graph input `{}` {m}", vi.name));
    let tt = match vi.r#type.as_ref().and_then(|t| t.value.as_ref()) {
        Some(type_proto::Value::TensorType(tt)) => tt,
        _ => return Err(err("is not a tensor")),
    };
    let wire = wire_from_onnx(tt.elem_type);
    let dtype = match wire {
        Some(w) => w.dtype(),
        None => dtype_from_onnx(tt.elem_type).map_err(|m| err(&format!("has an unsupported type: {m}")))?,
    };
    let shape = tt.shape.as_ref().ok_or_else(|| err("has no shape (qforge needs its rank and dimensions)"))?;
    let mut dims = vec![];
    let mut numel: u128 = 1;
    for (i, d) in shape.dim.iter().enumerate() {
        dims.push(match &d.value {
            // A negative size (Paddle2ONNX writes -1) is unknown: a symbol as below.
            Some(dimension::Value::DimValue(v)) if *v < 0 => anonymous_dim(&vi.name, i),
            Some(dimension::Value::DimValue(v)) => {
                let n = usize::try_from(*v).map_err(|_| err(&format!("has a negative dimension {v}")))?;
                numel = numel.saturating_mul(n as u128);
                if numel > MAX_INPUT_ELEMENTS {
                    return Err(err(&format!("has more than {MAX_INPUT_ELEMENTS} elements")));
                }
                Dim::Fixed(n)
            }
            Some(dimension::Value::DimParam(p)) if !p.is_empty() => Dim::Sym(symbol_name(p)),
            _ => anonymous_dim(&vi.name, i),
        });
    }
    Ok((TensorType::new(dtype, Shape(dims)), wire))
}

/// The symbol of an unknown input dim with no name: the batch `N` for the first dim, else
/// `<input>_d<axis>` (each such dim its own size).
fn anonymous_dim(input: &str, axis: usize) -> Dim {
    if axis == 0 {
        Dim::Sym("N".into())
    } else {
        Dim::Sym(symbol_name(&format!("{input}_d{axis}")))
    }
}

/// A name usable as one symbol factor: characters other than ASCII letters, digits, `_` and `.`
/// become `_` (a `*`, `+` or parenthesis would read as symbol arithmetic, see [`Dim`]), and a
/// name that does not start with a letter or `_` gets a leading `_` (a number is a size).
fn symbol_name(s: &str) -> String {
    let mut out: String =
        s.chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' || c == '.' { c } else { '_' }).collect();
    if !out.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_') {
        out.insert(0, '_');
    }
    out
}

/// A graph output may not be declared of a wire type: qforge decodes those at the inputs only,
/// computes in the IR's types and hands outputs over in them (a `.npy` file cannot carry float8
/// or 4-bit values as such: NumPy has no type for them).
fn check_output_wire(o: &ValueInfoProto) -> Result<(), ImportError> {
    let Some(type_proto::Value::TensorType(tt)) = o.r#type.as_ref().and_then(|t| t.value.as_ref()) else {
        return Ok(());
    };
    match wire_from_onnx(tt.elem_type) {
        Some(w) => Err(ImportError::Model(format!(
            "graph output `{}` is {}, which qforge does not produce: it reads {w} values at the graph's inputs \
             and computes and writes outputs in its own types (f32, f16, bf16, f64, integers, bool)",
            o.name,
            onnx_type_name(tt.elem_type)
        ))),
        None => Ok(()),
    }
}

/// The ONNX name of an element type code (`FLOAT8E4M3FN`).
pub fn onnx_type_name(code: i32) -> &'static str {
    super::proto::tensor_proto::DataType::try_from(code).map_or("an unknown type", |d| d.as_str_name())
}

/// The element type a graph output declares must be the one the graph computes.
fn check_output_type(g: &Graph, o: &ValueInfoProto, v: Value) -> Result<(), ImportError> {
    let Some(type_proto::Value::TensorType(tt)) = o.r#type.as_ref().and_then(|t| t.value.as_ref()) else {
        return Ok(());
    };
    if tt.elem_type == 0 {
        return Ok(());
    }
    let have = g.value_type(v);
    match dtype_from_onnx(tt.elem_type) {
        Ok(d) if d == have.dtype => Ok(()),
        Ok(d) => Err(ImportError::Model(format!("graph output `{}` is declared {d} but computes {have}", o.name))),
        Err(m) => Err(ImportError::Model(format!("graph output `{}`: {m}", o.name))),
    }
}
