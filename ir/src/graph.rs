//! The dataflow graph: SSA values produced by nodes, stored in a petgraph `StableDiGraph`.
//!
//! A node owns its op, its original names and the types of its results; its inputs are an ordered
//! list of values (absent optional inputs are `None`). The petgraph edges mirror those inputs
//! (producer -> consumer, weighted by the consumer's input slot) so graph algorithms see the true
//! data flow; only the methods here change inputs, which keeps the two in step.

use crate::error::{IrError, Result};
use crate::{Op, Tensor, TensorType, WireType};
use petgraph::stable_graph::{NodeIndex, StableDiGraph};
use petgraph::visit::EdgeRef;
use petgraph::Direction;
use std::collections::BTreeMap;
use std::sync::Arc;

/// A node's identity; stable across removals of other nodes.
pub type NodeId = NodeIndex<u32>;

/// An SSA value: result `port` of `node`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Value {
    pub node: NodeId,
    pub port: usize,
}

impl Value {
    pub fn new(node: NodeId, port: usize) -> Value {
        Value { node, port }
    }
}

/// One operation with its results.
#[derive(Clone, Debug)]
pub struct Node {
    pub op: Op,
    /// The node's name (the ONNX node name for imported nodes, the input name for inputs).
    pub name: String,
    /// Names of the original nodes this node absorbed (fusion, folding), for reports.
    pub from: Vec<String>,
    /// Types of the results, one per output port.
    pub outputs: Vec<TensorType>,
    inputs: Vec<Option<Value>>,
}

impl Node {
    pub fn inputs(&self) -> &[Option<Value>] {
        &self.inputs
    }
}

/// A named graph output.
#[derive(Clone, Debug, PartialEq)]
pub struct GraphOutput {
    pub name: String,
    pub value: Value,
}

/// An input of the source model that the graph was compiled for one value of ("specialized"):
/// a model input that the IR needs as a constant (a Reshape's target shape, a Slice's bounds, a
/// quantization scale) was given a value at import, so the graph reads it as a constant and it
/// is not among [`Graph::inputs`]: it is not fed at run time. The value is kept so that whoever
/// runs the graph can check a value given for that input against it.
#[derive(Clone, Debug, PartialEq)]
pub struct Specialized {
    /// The input's name in the source model.
    pub name: String,
    /// The value the graph was compiled for (its type is the tensor's own).
    pub value: Arc<Tensor>,
    /// Its place among the model's declared inputs: the graph's inputs and the specialized ones
    /// together, in the source model's order (positional inputs are bound in that order).
    pub position: usize,
}

/// One entry of a graph's signature in declared order (see [`Graph::signature`]).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum SignatureEntry<'a> {
    /// A graph input, fed at run time.
    Input(NodeId),
    /// An input the graph was specialized on.
    Specialized(&'a Specialized),
}

/// A dataflow graph with named inputs and outputs.
#[derive(Clone, Debug, Default)]
pub struct Graph {
    pub name: String,
    g: StableDiGraph<Node, usize>,
    inputs: Vec<NodeId>,
    outputs: Vec<GraphOutput>,
    /// Inputs of the source model fixed to a value (see [`Specialized`]), by position.
    specialized: Vec<Specialized>,
    /// The element type the source model declares for a graph input whose values the IR holds
    /// in another type (see [`crate::wire`]), by input name.
    wire: BTreeMap<String, WireType>,
}

impl Graph {
    pub fn new(name: impl Into<String>) -> Graph {
        Graph { name: name.into(), ..Graph::default() }
    }

    /// Adds a graph input.
    pub fn add_input(&mut self, name: impl Into<String>, ty: TensorType) -> Value {
        let id = self.add_node_unchecked(Op::Input, vec![], vec![ty], name.into());
        self.inputs.push(id);
        Value::new(id, 0)
    }

    /// Records that the source model's next declared input, `name`, is specialized on `value`
    /// (see [`Specialized`]): it takes the next place in the signature, after the inputs and
    /// specialized inputs added so far. Its uses read a constant the caller adds.
    pub fn add_specialized(&mut self, name: impl Into<String>, value: Arc<Tensor>) {
        let position = self.inputs.len() + self.specialized.len();
        self.specialized.push(Specialized { name: name.into(), value, position });
    }

    /// The inputs the graph was specialized on, in declared order.
    pub fn specialized(&self) -> &[Specialized] {
        &self.specialized
    }

    /// Replaces the specialized inputs (a pass rebuilding a graph keeps those of the original,
    /// whose inputs it copies in order). The verifier checks their positions.
    pub fn set_specialized(&mut self, s: Vec<Specialized>) {
        self.specialized = s;
    }

    /// Records that graph input `name` is declared of wire type `w` in the source model (its IR
    /// type is `w.dtype()`; the verifier checks it): raw bytes fed for it are decoded by
    /// [`WireType::decode_bytes`].
    pub fn set_wire(&mut self, name: impl Into<String>, w: WireType) {
        self.wire.insert(name.into(), w);
    }

    /// The wire type the source model declares for graph input `name`, if it has one.
    pub fn wire(&self, name: &str) -> Option<WireType> {
        self.wire.get(name).copied()
    }

    /// Every graph input's wire type, by input name.
    pub fn wire_types(&self) -> &BTreeMap<String, WireType> {
        &self.wire
    }

    /// Replaces the wire types (a pass rebuilding a graph keeps those of the original, as it keeps
    /// the specialized inputs).
    pub fn set_wire_types(&mut self, w: BTreeMap<String, WireType>) {
        self.wire = w;
    }

    /// The declared inputs in order: the graph's inputs with the specialized ones at their
    /// positions. A position beyond the end (only in a graph that fails verification) comes last.
    pub fn signature(&self) -> Vec<SignatureEntry<'_>> {
        let mut out = Vec::with_capacity(self.inputs.len() + self.specialized.len());
        let mut spec = self.specialized.iter().peekable();
        for &id in &self.inputs {
            while let Some(s) = spec.next_if(|s| s.position <= out.len()) {
                out.push(SignatureEntry::Specialized(s));
            }
            out.push(SignatureEntry::Input(id));
        }
        out.extend(spec.map(SignatureEntry::Specialized));
        out
    }

    /// Adds a constant whose type is the tensor's own (not quantized).
    pub fn add_const(&mut self, name: impl Into<String>, t: Tensor) -> Value {
        let ty = TensorType::new(t.dtype(), t.ir_shape());
        self.add_const_typed(name, t, ty)
    }

    /// Adds a constant with a given type (a quantized weight carries its parameters in `ty`).
    pub fn add_const_typed(&mut self, name: impl Into<String>, t: Tensor, ty: TensorType) -> Value {
        let id = self.add_node_unchecked(Op::Const(Arc::new(t)), vec![], vec![ty], name.into());
        Value::new(id, 0)
    }

    /// Adds a node with the given result types, without checking them (see
    /// [`Graph::add_node`] for the inferring form). Inputs must be values of this graph.
    pub fn add_node_unchecked(
        &mut self,
        op: Op,
        inputs: Vec<Option<Value>>,
        outputs: Vec<TensorType>,
        name: String,
    ) -> NodeId {
        let id = self.g.add_node(Node { op, name, from: vec![], outputs, inputs: vec![] });
        for (slot, v) in inputs.into_iter().enumerate() {
            self.push_input(id, slot, v);
        }
        id
    }

    /// Adds a node, inferring its result types. `declared` gives the result types of ops whose
    /// output dtype or quantization parameters are chosen rather than derived (quantize,
    /// requantize, the fused integer ops, cast); it is checked against the inputs.
    pub fn add_node(
        &mut self,
        op: Op,
        inputs: Vec<Option<Value>>,
        declared: Option<Vec<TensorType>>,
        name: impl Into<String>,
    ) -> Result<Value> {
        let name = name.into();
        for v in inputs.iter().flatten() {
            if !self.contains_value(*v) {
                return Err(IrError::node(&name, op.name(), "input value is not in the graph"));
            }
        }
        let in_types: Vec<Option<&TensorType>> = inputs.iter().map(|v| v.map(|v| self.value_type(v))).collect();
        let outputs = crate::infer::infer(&op, &in_types, declared.as_deref())
            .map_err(|msg| IrError::node(&name, op.name(), msg))?;
        let id = self.add_node_unchecked(op, inputs, outputs, name);
        Ok(Value::new(id, 0))
    }

    fn push_input(&mut self, id: NodeId, slot: usize, v: Option<Value>) {
        if let Some(v) = v {
            self.g.add_edge(v.node, id, slot);
        }
        self.g[id].inputs.push(v);
    }

    /// Marks `value` as the graph output `name`.
    pub fn add_output(&mut self, name: impl Into<String>, value: Value) {
        self.outputs.push(GraphOutput { name: name.into(), value });
    }

    /// Points output `i` at another value.
    pub fn set_output_value(&mut self, i: usize, value: Value) {
        self.outputs[i].value = value;
    }

    /// The size of each symbolic dimension of the graph inputs' declared shapes, read from
    /// `inputs` (tensors for the graph inputs, in order); the first tensor to size a symbol
    /// wins.
    pub fn input_dim_sizes(&self, inputs: &[Tensor]) -> std::collections::HashMap<String, usize> {
        let mut bind = std::collections::HashMap::new();
        for (&id, t) in self.inputs.iter().zip(inputs) {
            for (d, &n) in self.node(id).outputs[0].shape.dims().iter().zip(t.shape()) {
                if let crate::Dim::Sym(s) = d {
                    bind.entry(s.clone()).or_insert(n);
                }
            }
        }
        bind
    }

    pub fn inputs(&self) -> &[NodeId] {
        &self.inputs
    }

    pub fn outputs(&self) -> &[GraphOutput] {
        &self.outputs
    }

    pub fn contains_node(&self, id: NodeId) -> bool {
        self.g.contains_node(id)
    }

    pub fn contains_value(&self, v: Value) -> bool {
        self.g.node_weight(v.node).is_some_and(|n| v.port < n.outputs.len())
    }

    /// The node; panics if `id` was removed (ids come from this graph).
    pub fn node(&self, id: NodeId) -> &Node {
        &self.g[id]
    }

    /// Mutable access to op, name, origin and result types (inputs change through
    /// [`Graph::set_input`]).
    pub fn node_mut(&mut self, id: NodeId) -> &mut Node {
        &mut self.g[id]
    }

    pub fn value_type(&self, v: Value) -> &TensorType {
        &self.g[v.node].outputs[v.port]
    }

    /// Node ids in index order (not a schedule: see [`Graph::schedule`]).
    pub fn node_ids(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.g.node_indices()
    }

    pub fn node_count(&self) -> usize {
        self.g.node_count()
    }

    /// The underlying petgraph store, for read-only graph algorithms.
    pub fn petgraph(&self) -> &StableDiGraph<Node, usize> {
        &self.g
    }

    /// Sets input `slot` of `id` (extending the input list with `None`s when needed).
    pub fn set_input(&mut self, id: NodeId, slot: usize, v: Option<Value>) {
        let old: Vec<_> =
            self.g.edges_directed(id, Direction::Incoming).filter(|e| *e.weight() == slot).map(|e| e.id()).collect();
        for e in old {
            self.g.remove_edge(e);
        }
        while self.g[id].inputs.len() <= slot {
            self.g[id].inputs.push(None);
        }
        self.g[id].inputs[slot] = v;
        if let Some(v) = v {
            self.g.add_edge(v.node, id, slot);
        }
    }

    /// Consumers of any result of `id`, as (consumer, input slot), sorted.
    pub fn users(&self, id: NodeId) -> Vec<(NodeId, usize)> {
        let mut u: Vec<_> = self.g.edges_directed(id, Direction::Outgoing).map(|e| (e.target(), *e.weight())).collect();
        u.sort();
        u.dedup();
        u
    }

    /// Consumers of one value, as (consumer, input slot), sorted.
    pub fn value_users(&self, v: Value) -> Vec<(NodeId, usize)> {
        self.users(v.node).into_iter().filter(|&(n, s)| self.g[n].inputs[s] == Some(v)).collect()
    }

    /// Whether a graph output reads `v`.
    pub fn is_output(&self, v: Value) -> bool {
        self.outputs.iter().any(|o| o.value == v)
    }

    /// Makes every consumer of `old` (and every output naming it) read `new` instead.
    pub fn replace_all_uses(&mut self, old: Value, new: Value) {
        for (n, s) in self.value_users(old) {
            self.set_input(n, s, Some(new));
        }
        for o in &mut self.outputs {
            if o.value == old {
                o.value = new;
            }
        }
    }

    /// Removes a node that nothing uses. Errors if it is used or is a graph input.
    pub fn remove_node(&mut self, id: NodeId) -> Result<Node> {
        let node = self.g.node_weight(id).ok_or_else(|| IrError::Graph("removing a node twice".into()))?;
        if !self.users(id).is_empty() || self.outputs.iter().any(|o| o.value.node == id) {
            return Err(IrError::node(&node.name, node.op.name(), "cannot remove a node that is still used"));
        }
        if self.inputs.contains(&id) {
            return Err(IrError::node(&node.name, node.op.name(), "cannot remove a graph input"));
        }
        Ok(self.g.remove_node(id).expect("checked above"))
    }

    /// Removes every node that no output depends on (graph inputs stay). Returns how many.
    pub fn remove_dead(&mut self) -> usize {
        let live: std::collections::HashSet<NodeId> = self.live_nodes().into_iter().collect();
        let dead: Vec<NodeId> =
            self.g.node_indices().filter(|n| !live.contains(n) && !self.inputs.contains(n)).collect();
        for &n in &dead {
            self.g.remove_node(n);
        }
        dead.len()
    }

    fn live_nodes(&self) -> Vec<NodeId> {
        let mut seen = std::collections::HashSet::new();
        let mut stack: Vec<NodeId> = self.outputs.iter().map(|o| o.value.node).collect();
        let mut out = vec![];
        while let Some(n) = stack.pop() {
            if seen.insert(n) {
                out.push(n);
                stack.extend(self.g[n].inputs.iter().flatten().map(|v| v.node));
            }
        }
        out
    }

    /// The canonical schedule: every node an output depends on, in the post-order of a depth-first
    /// walk from the outputs (in order) through each node's inputs (in slot order), graph inputs
    /// excluded. It depends only on the graph's structure, never on node indices, so printing is
    /// deterministic. Iterative, so deep graphs cannot overflow the stack. Errors on a cycle.
    pub fn schedule(&self) -> Result<Vec<NodeId>> {
        #[derive(Clone, Copy, PartialEq)]
        enum Mark {
            Open,
            Done,
        }
        let mut mark: std::collections::HashMap<NodeId, Mark> = Default::default();
        let mut order = vec![];
        for o in &self.outputs {
            if !self.g.contains_node(o.value.node) {
                return Err(IrError::Graph(format!("output `{}` reads a removed node", o.name)));
            }
            // (node, next input slot to visit)
            let mut stack: Vec<(NodeId, usize)> = vec![];
            if let std::collections::hash_map::Entry::Vacant(e) = mark.entry(o.value.node) {
                e.insert(Mark::Open);
                stack.push((o.value.node, 0));
            }
            while let Some(top) = stack.last_mut() {
                let (n, slot) = *top;
                let inputs = &self.g[n].inputs;
                if slot < inputs.len() {
                    top.1 += 1;
                    if let Some(v) = inputs[slot] {
                        match mark.get(&v.node) {
                            None => {
                                mark.insert(v.node, Mark::Open);
                                stack.push((v.node, 0));
                            }
                            Some(Mark::Open) => return Err(IrError::Cycle(self.g[v.node].name.clone())),
                            Some(Mark::Done) => {}
                        }
                    }
                } else {
                    mark.insert(n, Mark::Done);
                    stack.pop();
                    if !matches!(self.g[n].op, Op::Input) {
                        order.push(n);
                    }
                }
            }
        }
        Ok(order)
    }
}
