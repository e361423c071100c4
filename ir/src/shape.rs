//! Shapes with symbolic dimensions, and tensor types.

use crate::{DType, QuantParams};
use std::fmt;

/// One dimension: a known size, or a named symbol (the dynamic batch `N`, a sequence length).
#[derive(Clone, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum Dim {
    Fixed(usize),
    Sym(String),
}

impl Dim {
    pub fn fixed(&self) -> Option<usize> {
        match self {
            Dim::Fixed(n) => Some(*n),
            Dim::Sym(_) => None,
        }
    }

    /// The dim as a constant factor and its symbols (sorted, with repetition): `N*S*16` is
    /// `(16, [N, S])`. A symbol is a product of names and numbers joined by `*`.
    pub fn factors(&self) -> Option<(usize, Vec<String>)> {
        match self {
            Dim::Fixed(n) => Some((*n, vec![])),
            Dim::Sym(s) => {
                let (mut k, mut syms) = (1usize, vec![]);
                for f in s.split('*') {
                    if f.is_empty() {
                        return None;
                    }
                    match f.parse::<usize>() {
                        Ok(n) => k = k.checked_mul(n)?,
                        Err(_) => syms.push(f.to_string()),
                    }
                }
                syms.sort();
                Some((k, syms))
            }
        }
    }

    /// The product of dims in canonical form: the symbols sorted, then the constant factor
    /// (`N*16`, `N*S`); `None` on overflow.
    pub fn product(dims: &[Dim]) -> Option<Dim> {
        let (mut k, mut syms) = (1usize, vec![]);
        for d in dims {
            let (dk, ds) = d.factors()?;
            k = k.checked_mul(dk)?;
            syms.extend(ds);
        }
        Some(Dim::from_factors(k, syms))
    }

    /// `k` times the symbols, in canonical form (a zero factor makes the fixed dim 0).
    pub fn from_factors(k: usize, mut syms: Vec<String>) -> Dim {
        if syms.is_empty() || k == 0 {
            return Dim::Fixed(k);
        }
        syms.sort();
        let mut s = syms.join("*");
        if k != 1 {
            s.push_str(&format!("*{k}"));
        }
        Dim::Sym(s)
    }
}

impl fmt::Display for Dim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Dim::Fixed(n) => write!(f, "{n}"),
            Dim::Sym(s) => f.write_str(s),
        }
    }
}

impl From<usize> for Dim {
    fn from(n: usize) -> Self {
        Dim::Fixed(n)
    }
}

/// A shape; a rank-0 shape is a scalar.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize)]
pub struct Shape(pub Vec<Dim>);

impl Shape {
    pub fn fixed(dims: &[usize]) -> Self {
        Shape(dims.iter().map(|&d| Dim::Fixed(d)).collect())
    }
    pub fn rank(&self) -> usize {
        self.0.len()
    }
    pub fn dims(&self) -> &[Dim] {
        &self.0
    }
    /// All dimensions, if none is symbolic.
    pub fn as_fixed(&self) -> Option<Vec<usize>> {
        self.0.iter().map(Dim::fixed).collect()
    }
    pub fn is_fixed(&self) -> bool {
        self.0.iter().all(|d| d.fixed().is_some())
    }
    /// Number of elements, if the shape is fixed.
    pub fn numel(&self) -> Option<usize> {
        self.as_fixed().map(|d| d.iter().product())
    }
    /// Replaces symbols by the sizes in `bind`; unknown symbols stay symbolic.
    pub fn bind(&self, bind: &dyn Fn(&str) -> Option<usize>) -> Shape {
        Shape(
            self.0
                .iter()
                .map(|d| match d {
                    Dim::Sym(s) => bind(s).map(Dim::Fixed).unwrap_or_else(|| d.clone()),
                    d => d.clone(),
                })
                .collect(),
        )
    }
}

impl fmt::Display for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[")?;
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{d}")?;
        }
        f.write_str("]")
    }
}

/// The type of an SSA value: element type, shape and, for quantized values, the scale and zero
/// point that give the stored integers their meaning.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TensorType {
    pub dtype: DType,
    pub shape: Shape,
    pub quant: Option<QuantParams>,
}

impl TensorType {
    pub fn new(dtype: DType, shape: Shape) -> Self {
        TensorType { dtype, shape, quant: None }
    }
    pub fn quantized(dtype: DType, shape: Shape, quant: QuantParams) -> Self {
        TensorType { dtype, shape, quant: Some(quant) }
    }
    pub fn with_shape(&self, shape: Shape) -> Self {
        TensorType { shape, ..self.clone() }
    }
    pub fn rank(&self) -> usize {
        self.shape.rank()
    }
}

impl fmt::Display for TensorType {
    /// `f32[N,3,224,224]`, `u8<0.0039215689:0>[N,16,8,8]`, `i8<axis=0: 0.01:0, ...>[16,1,3,3]`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.dtype)?;
        if let Some(q) = &self.quant {
            write!(f, "{q}")?;
        }
        write!(f, "{}", self.shape)
    }
}
