//! The node builder the gradient rules emit through: every node it adds is named
//! `grad.<forward node>.<what>` (made unique with a `.N` suffix when the name is taken), so the
//! backward graph reads next to the forward one and prints the same way every time; results are
//! inferred by [`Graph::add_node`], and a node that does not type-check is an
//! [`AutodiffError::Build`] naming the forward node it was built for.
//!
//! Constants are made in the dtype of the value they combine with (a gradient has its value's
//! dtype), so an f16 forward gets an f16 backward. Shapes that may be symbolic (a dynamic batch)
//! are written with `reshape_dyn`/`expand_dyn` reading the dims of the forward value; fixed ones
//! with the plain `reshape`/`expand`.

use super::AutodiffError;
use qforge_ir::{BinaryOp, DType, Dim, DimExpr, Graph, Op, Tensor, TensorType, UnaryOp, Value};
use std::collections::HashSet;

/// Emits the backward nodes of one forward node at a time into the result graph.
pub(crate) struct Builder<'a> {
    pub g: &'a mut Graph,
    names: HashSet<String>,
    /// The forward node whose gradient is being built, and its op's name (for names and errors).
    node: String,
    op: &'static str,
}

impl<'a> Builder<'a> {
    pub fn new(g: &'a mut Graph) -> Builder<'a> {
        let names = g.node_ids().map(|n| g.node(n).name.clone()).collect();
        Builder { g, names, node: String::new(), op: "" }
    }

    /// Starts the nodes of forward node `name` (op `op`).
    pub fn at(&mut self, name: &str, op: &'static str) {
        self.node = name.to_string();
        self.op = op;
    }

    /// The forward node the builder is at.
    pub fn node_name(&self) -> &str {
        &self.node
    }

    /// An error for the forward node the builder is at: its gradient cannot be written here.
    pub fn unsupported(&self, msg: impl Into<String>) -> AutodiffError {
        AutodiffError::Unsupported { node: self.node.clone(), op: self.op, msg: msg.into() }
    }

    /// A fresh node name: `grad.<node>.<what>`, or `grad.<node>` when `what` is empty.
    fn name(&mut self, what: &str) -> String {
        let base = if what.is_empty() { format!("grad.{}", self.node) } else { format!("grad.{}.{what}", self.node) };
        let mut name = base.clone();
        let mut k = 1;
        while self.names.contains(&name) {
            name = format!("{base}.{k}");
            k += 1;
        }
        self.names.insert(name.clone());
        name
    }

    pub fn ty(&self, v: Value) -> &TensorType {
        self.g.value_type(v)
    }

    pub fn dtype(&self, v: Value) -> DType {
        self.ty(v).dtype
    }

    pub fn dims(&self, v: Value) -> Vec<Dim> {
        self.ty(v).shape.0.clone()
    }

    pub fn rank(&self, v: Value) -> usize {
        self.ty(v).rank()
    }

    /// The fixed dims of `v`, or an error naming what needs them.
    pub fn fixed_dims(&self, v: Value, what: &str) -> Result<Vec<usize>, AutodiffError> {
        self.ty(v)
            .shape
            .as_fixed()
            .ok_or_else(|| self.unsupported(format!("{what} needs fixed dims, got {}", self.ty(v).shape)))
    }

    /// Adds `op` on `inputs` (absent optional inputs as `None`), its result inferred.
    pub fn op_opt(&mut self, what: &str, op: Op, inputs: Vec<Option<Value>>) -> Result<Value, AutodiffError> {
        let name = self.name(what);
        self.g.add_node(op, inputs, None, name).map_err(|source| AutodiffError::Build {
            node: self.node.clone(),
            op: self.op,
            source,
        })
    }

    pub fn op(&mut self, what: &str, op: Op, inputs: &[Value]) -> Result<Value, AutodiffError> {
        self.op_opt(what, op, inputs.iter().map(|&v| Some(v)).collect())
    }

    /// A constant of `dtype` and shape `dims` from f64 values (rounded once to the dtype).
    pub fn constant(&mut self, what: &str, dtype: DType, dims: Vec<usize>, v: Vec<f64>) -> Value {
        let name = self.name(what);
        self.g.add_const(name, Tensor::from_f64_iter(dtype, dims, v.into_iter()))
    }

    /// A constant tensor.
    pub fn tensor(&mut self, what: &str, t: Tensor) -> Value {
        let name = self.name(what);
        self.g.add_const(name, t)
    }

    /// A scalar constant (shape `[]`) of `dtype`.
    pub fn scalar(&mut self, what: &str, dtype: DType, v: f64) -> Value {
        self.constant(what, dtype, vec![], vec![v])
    }

    /// A scalar constant of `like`'s dtype.
    pub fn scalar_like(&mut self, what: &str, like: Value, v: f64) -> Value {
        let d = self.dtype(like);
        self.scalar(what, d, v)
    }

    pub fn binary(&mut self, what: &str, b: BinaryOp, x: Value, y: Value) -> Result<Value, AutodiffError> {
        self.op(what, Op::Binary(b), &[x, y])
    }

    pub fn add(&mut self, what: &str, x: Value, y: Value) -> Result<Value, AutodiffError> {
        self.binary(what, BinaryOp::Add, x, y)
    }

    pub fn sub(&mut self, what: &str, x: Value, y: Value) -> Result<Value, AutodiffError> {
        self.binary(what, BinaryOp::Sub, x, y)
    }

    pub fn mul(&mut self, what: &str, x: Value, y: Value) -> Result<Value, AutodiffError> {
        self.binary(what, BinaryOp::Mul, x, y)
    }

    pub fn div(&mut self, what: &str, x: Value, y: Value) -> Result<Value, AutodiffError> {
        self.binary(what, BinaryOp::Div, x, y)
    }

    pub fn unary(&mut self, what: &str, u: UnaryOp, x: Value) -> Result<Value, AutodiffError> {
        self.op(what, Op::Unary(u), &[x])
    }

    /// `x * c` for a scalar `c` in `x`'s dtype.
    pub fn scale(&mut self, what: &str, x: Value, c: f64) -> Result<Value, AutodiffError> {
        let k = self.scalar_like(&part(what, "k"), x, c);
        self.mul(what, x, k)
    }

    /// `cond ? a : 0` (the result has the broadcast shape of `cond` and `a`).
    pub fn mask(&mut self, what: &str, cond: Value, a: Value) -> Result<Value, AutodiffError> {
        let zero = self.scalar_like(&part(what, "zero"), a, 0.0);
        self.op(what, Op::Where, &[cond, a, zero])
    }

    /// `x <cmp> c` for a scalar `c` in `x`'s dtype (a bool mask).
    pub fn compare(&mut self, what: &str, b: BinaryOp, x: Value, c: f64) -> Result<Value, AutodiffError> {
        let k = self.scalar_like(&part(what, "k"), x, c);
        self.binary(what, b, x, k)
    }

    /// Zeros of `like`'s type: a constant when its dims are fixed, else a zero scalar expanded
    /// to its dims (read from `like` at run time).
    pub fn zeros_like(&mut self, what: &str, like: Value) -> Result<Value, AutodiffError> {
        let d = self.dtype(like);
        match self.ty(like).shape.as_fixed() {
            Some(dims) => {
                let n = dims.iter().product();
                Ok(self.constant(what, d, dims, vec![0.0; n]))
            }
            None => {
                let z = self.scalar(&part(what, "scalar"), d, 0.0);
                self.expand_like(what, z, like)
            }
        }
    }

    /// Each dim of `like` as a size: fixed ones as numbers, symbolic ones read from dim `i` of
    /// the op's input 1 (`like`).
    fn dim_exprs(&self, like: Value) -> Vec<DimExpr> {
        self.dims(like)
            .iter()
            .enumerate()
            .map(|(i, d)| match d.fixed() {
                Some(n) => DimExpr::fixed(n as i64),
                None => DimExpr::product(1, vec![(1, i)]),
            })
            .collect()
    }

    /// `x` reshaped to the shape of `like` (same element count).
    pub fn reshape_like(&mut self, what: &str, x: Value, like: Value) -> Result<Value, AutodiffError> {
        if self.ty(x).shape == self.ty(like).shape {
            return Ok(x);
        }
        match self.ty(like).shape.as_fixed() {
            Some(dims) => self.op(what, Op::Reshape { shape: dims.iter().map(|&d| d as i64).collect() }, &[x]),
            None => {
                let shape = self.dim_exprs(like);
                self.op(what, Op::ReshapeDyn { shape }, &[x, like])
            }
        }
    }

    /// `x` broadcast to the shape of `like`.
    pub fn expand_like(&mut self, what: &str, x: Value, like: Value) -> Result<Value, AutodiffError> {
        if self.ty(x).shape == self.ty(like).shape {
            return Ok(x);
        }
        match self.ty(like).shape.as_fixed() {
            Some(dims) => self.op(what, Op::Expand { shape: dims.iter().map(|&d| d as i64).collect() }, &[x]),
            None => {
                let shape = self.dim_exprs(like);
                self.op(what, Op::ExpandDyn { shape }, &[x, like])
            }
        }
    }

    /// `reduce_sum` over `axes` (never empty: an empty list would reduce every axis).
    pub fn reduce_sum(&mut self, what: &str, x: Value, axes: &[usize], keepdims: bool) -> Result<Value, AutodiffError> {
        debug_assert!(!axes.is_empty());
        self.op(what, Op::ReduceSum { axes: axes.iter().map(|&a| a as i64).collect(), keepdims }, &[x])
    }

    /// The gradient `dy` of a broadcast result summed back to the shape of the operand `to`
    /// (numpy broadcasting: `to` is right-aligned; its missing leading axes and its size-1 axes
    /// that the result widened are summed over).
    pub fn unbroadcast(&mut self, what: &str, dy: Value, to: Value) -> Result<Value, AutodiffError> {
        let (yd, td) = (self.dims(dy), self.dims(to));
        if yd == td {
            return Ok(dy);
        }
        if td.len() > yd.len() {
            return Err(self.unsupported(format!(
                "internal: a gradient of shape {} cannot sum to {}",
                self.ty(dy).shape,
                self.ty(to).shape
            )));
        }
        let lead = yd.len() - td.len();
        let inner: Vec<usize> = (0..td.len())
            .filter(|&i| td[i] == Dim::Fixed(1) && yd[lead + i] != Dim::Fixed(1))
            .map(|i| lead + i)
            .collect();
        let mut v = dy;
        if !inner.is_empty() {
            v = self.reduce_sum(&part(what, "sum"), v, &inner, true)?;
        }
        if lead > 0 {
            let axes: Vec<usize> = (0..lead).collect();
            v = self.reduce_sum(&part(what, "sum_lead"), v, &axes, false)?;
        }
        // a broadcast that met a symbol with another spelling of the same size leaves `v` of
        // another (equal) shape: reshape it to the operand's own
        if self.ty(v).shape != self.ty(to).shape {
            v = self.reshape_like(what, v, to)?;
        }
        Ok(v)
    }

    /// `x` divided by the number of elements of `of` over `axes` (a mean's divisor): a constant
    /// factor when those dims are fixed, else the count read from `of`'s shape at run time
    /// (`shape`, `gather`, `reduce_prod`, cast to `x`'s dtype).
    pub fn div_by_count(&mut self, what: &str, x: Value, of: Value, axes: &[usize]) -> Result<Value, AutodiffError> {
        let dims = self.dims(of);
        let fixed: Option<Vec<usize>> = axes.iter().map(|&a| dims[a].fixed()).collect();
        if let Some(f) = fixed {
            let n: usize = f.iter().product();
            return self.scale(what, x, 1.0 / n as f64);
        }
        let r = dims.len();
        let shape = self.op(&part(what, "shape"), Op::Shape { start: 0, end: r }, &[of])?;
        let idx = self
            .tensor(&part(what, "axes"), Tensor::from_i64(vec![axes.len()], axes.iter().map(|&a| a as i64).collect()));
        let picked = self.op(&part(what, "dims"), Op::Gather { axis: 0 }, &[shape, idx])?;
        let n = self.op(&part(what, "count.i64"), Op::ReduceProd { axes: vec![0], keepdims: false }, &[picked])?;
        let to = self.dtype(x);
        let n = self.op(&part(what, "count"), Op::Cast { to }, &[n])?;
        self.div(what, x, n)
    }

    /// The transpose of the last two axes.
    pub fn transpose_last2(&mut self, what: &str, x: Value) -> Result<Value, AutodiffError> {
        let r = self.rank(x);
        let mut perm: Vec<usize> = (0..r).collect();
        perm.swap(r - 2, r - 1);
        self.op(what, Op::Transpose { perm }, &[x])
    }

    /// The sum of several gradient contributions (left to right), or the one.
    pub fn sum(&mut self, what: &str, parts: &[Value]) -> Result<Value, AutodiffError> {
        let mut it = parts.iter().copied();
        let Some(mut acc) = it.next() else {
            return Err(self.unsupported("internal: a sum of no gradients"));
        };
        for p in it {
            acc = self.add(what, acc, p)?;
        }
        Ok(acc)
    }
}

/// The name of a node that is part of `what`: `what.s`, or `s` when `what` is the node's own
/// (empty) name.
pub(crate) fn part(what: &str, s: &str) -> String {
    if what.is_empty() {
        s.to_string()
    } else {
        format!("{what}.{s}")
    }
}
