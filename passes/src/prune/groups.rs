//! Channel groups: the output channels of a convolution and every place they travel to, so
//! that removing a channel removes it everywhere at once.
//!
//! A group is found by a walk over *members*: values that carry the group's channels along axis 1,
//! each with the position of group channel `c` there: elements `(offset + c) * inner + j` for
//! `j < inner` (`inner` is 1 for an `[N, C, H, W]` value and `H * W` after a flatten). From a
//! member, the walk visits its producer and its consumers, and each visited node tells what it
//! does with the channels:
//!
//! * element-wise ops (every unary op, leaky relu, clip, hard sigmoid, identity) and pools (max,
//!   average, global) pass them through; squeeze and unsqueeze of axes after the channel axis, a
//!   pad, a resize and a mean, max or sum over the spatial axes too;
//! * a batch norm passes them through, its four parameters sliced per channel;
//! * a binary element-wise op passes them through: a constant operand whose channel dim is the
//!   value's (a per-channel scale or shift) is sliced, one broadcast over the channels (a scalar)
//!   is left alone, and an operand computed in the graph that carries the same channels (a
//!   residual add, a squeeze-and-excitation gate) becomes a member too, so its producers join the
//!   group;
//! * a depthwise convolution (group = input channels = output channels) passes them through, its
//!   weight rows, bias and group count following the channels;
//! * a concatenation along the channels shifts them by the channels of the inputs before (read
//!   from the output, the group must lie inside one input);
//! * a flatten from axis 1 (or a reshape to `[N, C*H*W]`) of a value with a known spatial size
//!   spreads each channel over `H * W` columns;
//! * a convolution of one group reading them is a *consumer*: its weight's input channels (axis 1)
//!   are sliced; so are a GEMM's input rows (`trans_a` = 0) and a matrix product's (a constant
//!   2-D right operand) after a flatten;
//! * a convolution whose output is a member is a *producer*: its weight rows and bias are sliced.
//!   A residual add makes several producers share one group: they must drop the same channels.
//!
//! Anything else makes the group unprunable, with the reason: a graph output, a graph input
//! joining through a residual add, a grouped convolution that is not depthwise, a reshape,
//! transpose or matmul that mixes the channels with other axes, a concatenation on another axis,
//! a non-constant or quantized weight, a constant shared with a node outside the group's cuts.

use qforge_ir::{CoordMode, Dim, Graph, NodeId, Op, ResizeTarget, Value};
use std::collections::{BTreeMap, BTreeSet, VecDeque};

/// Where a group's channels sit in a value or a constant (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Place {
    pub offset: usize,
    pub inner: usize,
}

/// What a slice of a constant is to the group.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    /// A producer conv's weight rows or bias.
    Producer,
    /// A parameter that follows the channels: batch norm, depthwise conv, per-channel constant.
    Follower,
    /// A consumer's input channels (conv weight axis 1, GEMM or matmul input rows).
    Consumer,
}

/// One constant input to slice: positions `(place.offset + c) * place.inner + j` along `axis`
/// of input `slot` of `node`, for every removed group channel `c`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Edit {
    pub node: NodeId,
    pub slot: usize,
    pub axis: usize,
    pub place: Place,
    pub role: Role,
}

impl Edit {
    /// The positions along the constant's axis that the group channels `removed` occupy.
    pub fn positions(&self, removed: &[usize]) -> Vec<usize> {
        let Place { offset, inner } = self.place;
        removed.iter().flat_map(|&c| (offset + c) * inner..(offset + c + 1) * inner).collect()
    }
}

/// A group of channels that must be pruned together.
#[derive(Clone, Debug, Default)]
pub struct Group {
    /// The convs whose output channels are the group's (schedule order).
    pub producers: Vec<NodeId>,
    /// Channels in the group (each producer's output channel count).
    pub channels: usize,
    /// Depthwise convs whose channels follow the group's.
    pub depthwise: Vec<NodeId>,
    /// Reshapes that flatten the channels (their target shape is recomputed).
    pub reshapes: Vec<NodeId>,
    /// Every constant slice to remove.
    pub edits: Vec<Edit>,
}

/// A group that cannot be pruned: the producers found so far and why.
#[derive(Clone, Debug)]
pub struct Refusal {
    pub producers: Vec<NodeId>,
    pub reason: String,
}

/// Whether `id` is a depthwise conv whose output channels follow its input's one to one: group
/// = input channels = output channels, a weight of shape `[C, 1, k...]`.
pub fn is_depthwise(g: &Graph, id: NodeId) -> bool {
    let n = g.node(id);
    let Op::Conv(c) = &n.op else { return false };
    let Some(w) = n.inputs().get(1).copied().flatten() else { return false };
    let ws = g.value_type(w).shape.dims().to_vec();
    c.group > 1 && ws.first().and_then(Dim::fixed) == Some(c.group) && ws.get(1).and_then(Dim::fixed) == Some(1)
}

fn input(g: &Graph, id: NodeId, slot: usize) -> Option<Value> {
    g.node(id).inputs().get(slot).copied().flatten()
}

/// A plain (unquantized) constant input's shape.
fn const_shape(g: &Graph, v: Option<Value>) -> Option<Vec<usize>> {
    let v = v?;
    match &g.node(v.node).op {
        Op::Const(t) if g.value_type(v).quant.is_none() => Some(t.shape().to_vec()),
        _ => None,
    }
}

/// Fixed dim `axis` of value `v`.
fn dim(g: &Graph, v: Value, axis: usize) -> Option<usize> {
    g.value_type(v).shape.dims().get(axis)?.fixed()
}

fn describe(g: &Graph, id: NodeId) -> String {
    let n = g.node(id);
    format!("{} `{}`", n.op.name(), n.name)
}

/// The walk of one group (see the module docs).
struct Walk<'a> {
    g: &'a Graph,
    members: BTreeMap<Value, Place>,
    visited: BTreeSet<(NodeId, Value)>,
    queue: VecDeque<Value>,
    group: Group,
}

type R = Result<(), String>;

impl<'a> Walk<'a> {
    fn member(&mut self, v: Value, p: Place) -> R {
        match self.members.get(&v) {
            Some(q) if *q == p => Ok(()),
            Some(_) => Err(format!("the channels reach `{}` at two different positions", self.g.node(v.node).name)),
            None => {
                if let Some(o) = self.g.outputs().iter().find(|o| o.value == v) {
                    return Err(format!("the channels reach the graph output `{}`", o.name));
                }
                self.members.insert(v, p);
                self.queue.push_back(v);
                Ok(())
            }
        }
    }

    fn edit(&mut self, node: NodeId, slot: usize, axis: usize, place: Place, role: Role) -> R {
        if const_shape(self.g, input(self.g, node, slot)).is_none() {
            return Err(format!("input {slot} of {} is not a plain constant", describe(self.g, node)));
        }
        let e = Edit { node, slot, axis, place, role };
        if !self.group.edits.contains(&e) {
            self.group.edits.push(e);
        }
        Ok(())
    }

    fn run(&mut self) -> R {
        while let Some(v) = self.queue.pop_front() {
            // (node, reached from its result)
            let mut nodes = vec![v.node];
            nodes.extend(self.g.value_users(v).into_iter().map(|(u, _)| u));
            for u in nodes {
                // each node once per member it is reached from: a conv's input and output channels
                // are separate spaces (a block conv whose input and result are both in a residual
                // group consumes and produces it), and a concatenation may be reached from two of
                // its inputs; edits are recorded once however often a node is visited
                if self.visited.insert((u, v)) {
                    self.visit(u, v)?;
                }
            }
        }
        Ok(())
    }

    /// Derives every channel-carrying input and output of `u` from the member `from` it was
    /// reached through (its result, which makes a conv a producer, or one of its inputs).
    fn visit(&mut self, u: NodeId, from: Value) -> R {
        let g = self.g;
        let n = g.node(u);
        let out = Value::new(u, 0);
        let what = describe(g, u);
        let place = *self.members.get(&from).ok_or_else(|| format!("{what} was reached without a member"))?;
        let from_out = from.node == u;
        // the input slots that read `from` (none when reached from the result)
        let from_slots: Vec<usize> = if from_out {
            vec![]
        } else {
            n.inputs().iter().enumerate().filter(|(_, v)| **v == Some(from)).map(|(s, _)| s).collect()
        };
        // an op whose input 0 and result carry the channels at the same place
        let pass_through = |w: &mut Self, p: Place| -> R {
            if from_out {
                w.member(input(g, u, 0).ok_or(format!("{what} has no input"))?, p)
            } else {
                w.member(out, p)
            }
        };
        if let Some(s) = from_slots.iter().find(|&&s| s != 0) {
            if !matches!(n.op, Op::Binary(_) | Op::Concat { .. }) {
                return Err(format!("{what} reads the channels as its input {s}"));
            }
        }
        match &n.op {
            Op::Input => Err(format!("the channels come from the graph input `{}`", n.name)),
            Op::Conv(c) => {
                let w = input(g, u, 1);
                let has_bias = input(g, u, 2).is_some();
                if is_depthwise(g, u) {
                    if place.inner != 1 {
                        return Err(format!("{what} reads flattened channels"));
                    }
                    self.edit(u, 1, 0, place, Role::Follower)?;
                    if has_bias {
                        self.edit(u, 2, 0, place, Role::Follower)?;
                    }
                    if !self.group.depthwise.contains(&u) {
                        self.group.depthwise.push(u);
                    }
                    return pass_through(self, place);
                }
                if from_out {
                    // a producer: it must make exactly the group's channels
                    if c.group != 1 {
                        return Err(format!("{what} is grouped (group {}) and not depthwise", c.group));
                    }
                    let m = w.and_then(|w| dim(g, w, 0)).ok_or(format!("{what} has no weight of known shape"))?;
                    if place != (Place { offset: 0, inner: 1 })
                        || (self.group.channels != 0 && m != self.group.channels)
                    {
                        return Err(format!(
                            "{what} joins the channels with {m} channels of its own at other positions"
                        ));
                    }
                    if w.is_none_or(|w| !matches!(&g.node(w.node).op, Op::Const(t) if t.dtype().is_float())) {
                        return Err(format!("the weight of {what} is not a float constant"));
                    }
                    self.group.channels = m;
                    if !self.group.producers.contains(&u) {
                        self.group.producers.push(u);
                    }
                    self.edit(u, 1, 0, place, Role::Producer)?;
                    if has_bias {
                        self.edit(u, 2, 0, place, Role::Producer)?;
                    }
                    Ok(())
                } else {
                    if c.group != 1 {
                        return Err(format!(
                            "{what} reads the channels and is grouped (group {}), not depthwise",
                            c.group
                        ));
                    }
                    if place.inner != 1 {
                        return Err(format!("{what} reads flattened channels"));
                    }
                    self.edit(u, 1, 1, place, Role::Consumer)
                }
            }
            Op::BatchNorm { .. } => {
                if place.inner != 1 {
                    return Err(format!("{what} reads flattened channels"));
                }
                for slot in 1..5 {
                    self.edit(u, slot, 0, place, Role::Follower)?;
                }
                pass_through(self, place)
            }
            Op::Unary(_) | Op::LeakyRelu { .. } | Op::Clip { .. } | Op::HardSigmoid { .. } | Op::Identity => {
                pass_through(self, place)
            }
            Op::MaxPool(_) | Op::AveragePool(_) | Op::GlobalAveragePool | Op::GlobalMaxPool => {
                if place.inner != 1 {
                    return Err(format!("{what} pools flattened channels"));
                }
                pass_through(self, place)
            }
            Op::Squeeze { axes } | Op::Unsqueeze { axes } => {
                // negative axes count from the end of the input (squeeze) or the result (unsqueeze)
                let rank = match n.op {
                    Op::Squeeze { .. } => input(g, u, 0).map_or(0, |x| g.value_type(x).rank()),
                    _ => g.value_type(out).rank(),
                } as i64;
                if axes.iter().any(|&a| (if a < 0 { a + rank } else { a }) < 2) {
                    return Err(format!("{what} moves the channel axis"));
                }
                pass_through(self, place)
            }
            Op::Pad { pads, computed, .. } => {
                // padding of the spatial axes only: per channel
                let r = pads.len() / 2;
                let batch_or_channel = |i: usize| i % r.max(1) < 2;
                if place.inner != 1
                    || pads.iter().enumerate().any(|(i, &p)| batch_or_channel(i) && p != 0)
                    || computed.iter().any(|(i, _)| batch_or_channel(*i))
                {
                    return Err(format!("{what} pads the channels"));
                }
                pass_through(self, place)
            }
            Op::Resize(a) => {
                // a resize of the spatial axes only: per channel
                let spatial = match &a.target {
                    ResizeTarget::Scales(s) => s.iter().take(2).all(|&x| x == 1.0),
                    ResizeTarget::Sizes { axes, .. } | ResizeTarget::DimSizes { axes, .. } => {
                        axes.iter().all(|&x| x >= 2)
                    }
                };
                if place.inner != 1 || !spatial || a.coord == CoordMode::TfCropAndResize {
                    return Err(format!("{what} resizes the channel axis"));
                }
                pass_through(self, place)
            }
            Op::ReduceMean { axes, .. } | Op::ReduceMax { axes, .. } | Op::ReduceSum { axes, .. } => {
                // a reduction over spatial axes only (a global pool written as a mean): per channel
                let rank = input(g, u, 0).map_or(0, |x| g.value_type(x).rank()) as i64;
                if place.inner != 1 || axes.is_empty() || axes.iter().any(|&a| (if a < 0 { a + rank } else { a }) < 2) {
                    return Err(format!("{what} reduces over the channels"));
                }
                pass_through(self, place)
            }
            Op::Binary(_) => self.binary(u, place),
            Op::Concat { axis } => {
                let rank = g.value_type(out).rank() as i64;
                if (if *axis < 0 { axis + rank } else { *axis }) != 1 || place.inner != 1 {
                    return Err(format!("{what} concatenates along another axis than the channels"));
                }
                let ins = n.inputs().to_vec();
                let mut starts = vec![];
                let mut at = 0;
                for v in &ins {
                    let v = v.ok_or(format!("{what} has a missing input"))?;
                    starts.push(at);
                    at += dim(g, v, 1).ok_or(format!("{what} has an input with a symbolic channel count"))?;
                }
                if from_out {
                    let p = place;
                    let k = (0..ins.len())
                        .find(|&k| {
                            let end = starts.get(k + 1).copied().unwrap_or(at);
                            starts[k] <= p.offset && p.offset + self.group.channels.max(1) <= end
                        })
                        .ok_or(format!("the channels span several inputs of {what}"))?;
                    let v = ins[k].ok_or("missing input")?;
                    self.member(v, Place { offset: p.offset - starts[k], inner: 1 })
                } else {
                    for &s in &from_slots {
                        self.member(out, Place { offset: starts[s] + place.offset, inner: 1 })?;
                    }
                    Ok(())
                }
            }
            Op::Flatten { .. } | Op::Reshape { .. } => self.flatten(u, place, from_out),
            Op::Gemm { trans_a, trans_b, .. } => {
                if from_out {
                    return Err(format!("{what} makes values added to the channels"));
                }
                if *trans_a {
                    return Err(format!("{what} reads the channels transposed (trans_a)"));
                }
                self.edit(u, 1, if *trans_b { 1 } else { 0 }, place, Role::Consumer)
            }
            Op::MatMul => {
                let w = const_shape(g, input(g, u, 1));
                let rank = g.value_type(input(g, u, 0).ok_or("no input")?).rank();
                if from_out {
                    return Err(format!("{what} makes values added to the channels"));
                }
                if rank != 2 {
                    return Err(format!("{what} multiplies over another axis than the channels"));
                }
                if w.is_none_or(|w| w.len() != 2) {
                    return Err(format!("{what} has no constant 2-D right operand"));
                }
                self.edit(u, 1, 0, place, Role::Consumer)
            }
            _ => Err(format!("{what} reads the channels")),
        }
    }

    /// A binary element-wise op: constants sliced or broadcast, computed operands with the same
    /// channel dim joined.
    fn binary(&mut self, u: NodeId, place: Place) -> R {
        let g = self.g;
        let out = Value::new(u, 0);
        let what = describe(g, u);
        let r = g.value_type(out).rank();
        let c_out = dim(g, out, 1).ok_or(format!("{what} has a symbolic channel count"))?;
        for slot in 0..g.node(u).inputs().len() {
            let v = input(g, u, slot).ok_or(format!("{what} has a missing input"))?;
            let rank = g.value_type(v).rank();
            // the operand's axis aligned with axis 1 of the result (numpy broadcasting)
            let Some(axis) = (1 + rank).checked_sub(r) else { continue };
            let d = dim(g, v, axis);
            if d == Some(1) {
                continue;
            }
            if d != Some(c_out) {
                return Err(format!("{what} broadcasts an operand of unknown channel count"));
            }
            if const_shape(g, Some(v)).is_some() {
                self.edit(u, slot, axis, place, Role::Follower)?;
            } else if axis == 1 {
                self.member(v, place)?;
            } else {
                return Err(format!("{what} reads an operand of lower rank with the channels"));
            }
        }
        self.member(out, place)
    }

    /// A flatten from axis 1 (or a reshape that is one): each channel spreads over the spatial
    /// size; backward, the spread is undone.
    fn flatten(&mut self, u: NodeId, place: Place, backward: bool) -> R {
        let g = self.g;
        let what = describe(g, u);
        let x = input(g, u, 0).ok_or(format!("{what} has no input"))?;
        let out = Value::new(u, 0);
        let (xs, os) = (g.value_type(x).shape.dims().to_vec(), g.value_type(out).shape.dims().to_vec());
        let ok = match &g.node(u).op {
            Op::Flatten { axis } => *axis == 1 || (*axis == 1 - xs.len() as i64),
            Op::Reshape { .. } => os.len() == 2 && xs.len() >= 2 && xs[0] == os[0],
            _ => false,
        };
        let spatial: Option<usize> = xs.get(2..).and_then(|s| s.iter().map(Dim::fixed).product());
        if !ok {
            return Err(format!("{what} mixes the channels with other axes"));
        }
        let Some(hw) = spatial else {
            return Err(format!("{what} flattens a map of unknown spatial size"));
        };
        if matches!(g.node(u).op, Op::Reshape { .. }) && !self.group.reshapes.contains(&u) {
            self.group.reshapes.push(u);
        }
        if backward {
            if !place.inner.is_multiple_of(hw) {
                return Err(format!("{what} splits a channel"));
            }
            self.member(x, Place { offset: place.offset, inner: place.inner / hw })
        } else {
            self.member(out, Place { offset: place.offset, inner: place.inner * hw })
        }
    }
}

/// A constant the group cuts that another node reads without the same cut (a weight shared by
/// the heads of a detector's levels, each level its own group): cutting a copy would unshare it,
/// so the group is refused. Nodes of the group that read one constant with the same cuts keep
/// sharing it ([`super::rewrite`] makes one new constant for them).
fn shared_constant(g: &Graph, group: &Group) -> Result<(), String> {
    for e in &group.edits {
        let Some(v) = input(g, e.node, e.slot) else { continue };
        for (n2, s2) in g.value_users(v) {
            let same = |f: &Edit| (f.node, f.slot, f.axis, f.place) == (n2, s2, e.axis, e.place);
            if (n2, s2) != (e.node, e.slot) && !group.edits.iter().any(same) {
                return Err(format!(
                    "the constant `{}` of {} is shared with {}",
                    g.node(v.node).name,
                    describe(g, e.node),
                    describe(g, n2)
                ));
            }
        }
    }
    Ok(())
}

/// The group of the output channels of conv `seed`, or why it cannot be pruned; `order` is each
/// node's place in the schedule (producers and depthwise convs are listed in it).
pub fn group_of(g: &Graph, seed: NodeId, order: &BTreeMap<NodeId, usize>) -> Result<Group, Refusal> {
    let mut w =
        Walk { g, members: BTreeMap::new(), visited: BTreeSet::new(), queue: VecDeque::new(), group: Group::default() };
    let r = w.member(Value::new(seed, 0), Place { offset: 0, inner: 1 }).and_then(|_| w.run());
    let mut group = w.group;
    let rank = |id: &NodeId| order.get(id).copied().unwrap_or(usize::MAX);
    group.producers.sort_by_key(rank);
    group.depthwise.sort_by_key(rank);
    if !group.producers.contains(&seed) {
        group.producers.insert(0, seed);
    }
    let r = r.and_then(|_| shared_constant(g, &group));
    match r {
        Ok(()) if group.edits.iter().any(|e| e.role == Role::Consumer) => Ok(group),
        Ok(()) => Err(Refusal { producers: group.producers, reason: "nothing reads the channels".into() }),
        Err(reason) => Err(Refusal { producers: group.producers, reason }),
    }
}
