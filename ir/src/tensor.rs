//! Concrete tensors: a fixed shape and row-major data of one [`DType`].

use crate::numerics;
use crate::{DType, Shape};
use half::{bf16, f16};

/// Row-major element storage, one variant per [`DType`].
#[derive(Clone, Debug, PartialEq)]
pub enum TensorData {
    F32(Vec<f32>),
    F16(Vec<f16>),
    BF16(Vec<bf16>),
    I8(Vec<i8>),
    U8(Vec<u8>),
    I32(Vec<i32>),
    I64(Vec<i64>),
    Bool(Vec<bool>),
    F64(Vec<f64>),
    I16(Vec<i16>),
    U16(Vec<u16>),
    U32(Vec<u32>),
    U64(Vec<u64>),
}

/// Applies `$body` to the vector inside any variant.
#[macro_export]
macro_rules! with_data {
    ($data:expr, $v:ident => $body:expr) => {
        match $data {
            $crate::TensorData::F32($v) => $body,
            $crate::TensorData::F16($v) => $body,
            $crate::TensorData::BF16($v) => $body,
            $crate::TensorData::I8($v) => $body,
            $crate::TensorData::U8($v) => $body,
            $crate::TensorData::I32($v) => $body,
            $crate::TensorData::I64($v) => $body,
            $crate::TensorData::Bool($v) => $body,
            $crate::TensorData::F64($v) => $body,
            $crate::TensorData::I16($v) => $body,
            $crate::TensorData::U16($v) => $body,
            $crate::TensorData::U32($v) => $body,
            $crate::TensorData::U64($v) => $body,
        }
    };
}

/// Rebuilds [`TensorData`] from a vector of any element type.
pub trait IntoData {
    fn into_data(self) -> TensorData;
}
macro_rules! into_data {
    ($t:ty, $v:ident) => {
        impl IntoData for Vec<$t> {
            fn into_data(self) -> TensorData {
                TensorData::$v(self)
            }
        }
    };
}
into_data!(f32, F32);
into_data!(half::f16, F16);
into_data!(half::bf16, BF16);
into_data!(i8, I8);
into_data!(u8, U8);
into_data!(i32, I32);
into_data!(i64, I64);
into_data!(bool, Bool);
into_data!(f64, F64);
into_data!(i16, I16);
into_data!(u16, U16);
into_data!(u32, U32);
into_data!(u64, U64);

impl TensorData {
    pub fn dtype(&self) -> DType {
        match self {
            TensorData::F32(_) => DType::F32,
            TensorData::F16(_) => DType::F16,
            TensorData::BF16(_) => DType::BF16,
            TensorData::I8(_) => DType::I8,
            TensorData::U8(_) => DType::U8,
            TensorData::I32(_) => DType::I32,
            TensorData::I64(_) => DType::I64,
            TensorData::Bool(_) => DType::Bool,
            TensorData::F64(_) => DType::F64,
            TensorData::I16(_) => DType::I16,
            TensorData::U16(_) => DType::U16,
            TensorData::U32(_) => DType::U32,
            TensorData::U64(_) => DType::U64,
        }
    }
    pub fn len(&self) -> usize {
        with_data!(self, v => v.len())
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A tensor with a concrete shape.
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    shape: Vec<usize>,
    data: TensorData,
}

impl Tensor {
    /// Builds a tensor; `None` when the element count does not match the shape.
    pub fn new(shape: Vec<usize>, data: TensorData) -> Option<Tensor> {
        let n = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d))?;
        (n == data.len()).then_some(Tensor { shape, data })
    }
    pub fn from_f32(shape: Vec<usize>, v: Vec<f32>) -> Tensor {
        assert_eq!(shape.iter().product::<usize>(), v.len(), "shape/data mismatch");
        Tensor { shape, data: TensorData::F32(v) }
    }
    pub fn from_i64(shape: Vec<usize>, v: Vec<i64>) -> Tensor {
        assert_eq!(shape.iter().product::<usize>(), v.len(), "shape/data mismatch");
        Tensor { shape, data: TensorData::I64(v) }
    }
    pub fn scalar_f32(x: f32) -> Tensor {
        Tensor { shape: vec![], data: TensorData::F32(vec![x]) }
    }
    /// A tensor of zeros.
    pub fn zeros(dtype: DType, shape: Vec<usize>) -> Tensor {
        let n: usize = shape.iter().product();
        Tensor::from_f64_iter(dtype, shape, std::iter::repeat_n(0.0, n))
    }

    /// Converts real values into `dtype`: floats round to nearest even, integers round half to
    /// even and saturate (the storage conversion of [`numerics`]).
    pub fn from_f64_iter(dtype: DType, shape: Vec<usize>, it: impl Iterator<Item = f64>) -> Tensor {
        let sat = move |x: f64| numerics::saturate_f64_wide(x, dtype);
        let data = match dtype {
            DType::F32 => TensorData::F32(it.map(|x| x as f32).collect()),
            DType::F16 => TensorData::F16(it.map(f16::from_f64).collect()),
            DType::BF16 => TensorData::BF16(it.map(bf16::from_f64).collect()),
            DType::F64 => TensorData::F64(it.collect()),
            DType::I8 => TensorData::I8(it.map(|x| sat(x) as i8).collect()),
            DType::U8 => TensorData::U8(it.map(|x| sat(x) as u8).collect()),
            DType::I16 => TensorData::I16(it.map(|x| sat(x) as i16).collect()),
            DType::U16 => TensorData::U16(it.map(|x| sat(x) as u16).collect()),
            DType::I32 => TensorData::I32(it.map(|x| sat(x) as i32).collect()),
            DType::U32 => TensorData::U32(it.map(|x| sat(x) as u32).collect()),
            DType::I64 => TensorData::I64(it.map(|x| sat(x) as i64).collect()),
            DType::U64 => TensorData::U64(it.map(|x| sat(x) as u64).collect()),
            DType::Bool => TensorData::Bool(it.map(|x| x != 0.0).collect()),
        };
        let t = Tensor { shape, data };
        debug_assert_eq!(t.shape.iter().product::<usize>(), t.data.len());
        t
    }

    /// Converts f32 values into `dtype` (as [`Tensor::from_f64_iter`]; f32 -> f16 rounds once).
    pub fn from_f32_slice(dtype: DType, shape: Vec<usize>, v: &[f32]) -> Tensor {
        match dtype {
            DType::F32 => Tensor::from_f32(shape, v.to_vec()),
            DType::F16 => Tensor { shape, data: TensorData::F16(v.iter().map(|&x| f16::from_f32(x)).collect()) },
            DType::BF16 => Tensor { shape, data: TensorData::BF16(v.iter().map(|&x| bf16::from_f32(x)).collect()) },
            _ => Tensor::from_f64_iter(dtype, shape, v.iter().map(|&x| x as f64)),
        }
    }

    pub fn shape(&self) -> &[usize] {
        &self.shape
    }
    pub fn data(&self) -> &TensorData {
        &self.data
    }
    pub fn into_data(self) -> TensorData {
        self.data
    }
    pub fn dtype(&self) -> DType {
        self.data.dtype()
    }
    pub fn len(&self) -> usize {
        self.data.len()
    }
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }
    pub fn rank(&self) -> usize {
        self.shape.len()
    }
    pub fn ir_shape(&self) -> Shape {
        Shape::fixed(&self.shape)
    }
    /// The same data under another shape with the same element count.
    pub fn reshaped(mut self, shape: Vec<usize>) -> Option<Tensor> {
        (shape.iter().product::<usize>() == self.len()).then(|| {
            self.shape = shape;
            self
        })
    }
    /// Samples `start..end` along axis 0 (a copy), or `None` for a scalar or a range outside
    /// the leading dimension.
    pub fn rows(&self, start: usize, end: usize) -> Option<Tensor> {
        let &n = self.shape.first()?;
        if start > end || end > n {
            return None;
        }
        let row: usize = self.shape[1..].iter().product();
        let mut shape = self.shape.clone();
        shape[0] = end - start;
        let data = with_data!(&self.data, v => v[start * row..end * row].to_vec().into_data());
        Tensor::new(shape, data)
    }

    /// Joins tensors of one dtype and equal trailing shape along axis 0 (the rows of a
    /// batch computed in slices); the error says which condition failed.
    pub fn concat_rows(parts: &[Tensor]) -> Result<Tensor, crate::IrError> {
        let Some(first) = parts.first() else { return Err(crate::IrError::Join("nothing to join".into())) };
        let mut out = first.clone();
        for p in &parts[1..] {
            out.append_rows(p)?;
        }
        if out.shape.is_empty() {
            return Err(crate::IrError::Join("scalars have no axis 0".into()));
        }
        Ok(out)
    }

    /// Appends the rows (axis 0) of `more`, of this tensor's dtype and trailing shape.
    pub fn append_rows(&mut self, more: &Tensor) -> Result<(), crate::IrError> {
        if self.shape.is_empty() || more.shape.is_empty() {
            return Err(crate::IrError::Join("scalars have no axis 0".into()));
        }
        if more.dtype() != self.dtype() || more.shape[1..] != self.shape[1..] {
            return Err(crate::IrError::Join(format!(
                "{} {:?} and {} {:?} differ",
                self.dtype().name(),
                self.shape,
                more.dtype().name(),
                more.shape
            )));
        }
        match (&mut self.data, &more.data) {
            (TensorData::F32(a), TensorData::F32(b)) => a.extend_from_slice(b),
            (TensorData::F16(a), TensorData::F16(b)) => a.extend_from_slice(b),
            (TensorData::BF16(a), TensorData::BF16(b)) => a.extend_from_slice(b),
            (TensorData::I8(a), TensorData::I8(b)) => a.extend_from_slice(b),
            (TensorData::U8(a), TensorData::U8(b)) => a.extend_from_slice(b),
            (TensorData::I32(a), TensorData::I32(b)) => a.extend_from_slice(b),
            (TensorData::I64(a), TensorData::I64(b)) => a.extend_from_slice(b),
            (TensorData::Bool(a), TensorData::Bool(b)) => a.extend_from_slice(b),
            (TensorData::F64(a), TensorData::F64(b)) => a.extend_from_slice(b),
            (TensorData::I16(a), TensorData::I16(b)) => a.extend_from_slice(b),
            (TensorData::U16(a), TensorData::U16(b)) => a.extend_from_slice(b),
            (TensorData::U32(a), TensorData::U32(b)) => a.extend_from_slice(b),
            (TensorData::U64(a), TensorData::U64(b)) => a.extend_from_slice(b),
            _ => return Err(crate::IrError::Join("the elements differ in type".into())),
        }
        self.shape[0] += more.shape[0];
        Ok(())
    }

    pub fn as_f32(&self) -> Option<&[f32]> {
        match &self.data {
            TensorData::F32(v) => Some(v),
            _ => None,
        }
    }

    /// Every element widened to f32 (exact for f16/bf16/i8/u8/i16/u16; wider integers and f64
    /// round to nearest).
    pub fn to_f32_vec(&self) -> Vec<f32> {
        match &self.data {
            TensorData::F32(v) => v.clone(),
            TensorData::F16(v) => v.iter().map(|x| x.to_f32()).collect(),
            TensorData::BF16(v) => v.iter().map(|x| x.to_f32()).collect(),
            TensorData::F64(v) => v.iter().map(|&x| x as f32).collect(),
            TensorData::I8(v) => v.iter().map(|&x| x as f32).collect(),
            TensorData::U8(v) => v.iter().map(|&x| x as f32).collect(),
            TensorData::I16(v) => v.iter().map(|&x| x as f32).collect(),
            TensorData::U16(v) => v.iter().map(|&x| x as f32).collect(),
            TensorData::I32(v) => v.iter().map(|&x| x as f32).collect(),
            TensorData::U32(v) => v.iter().map(|&x| x as f32).collect(),
            TensorData::I64(v) => v.iter().map(|&x| x as f32).collect(),
            TensorData::U64(v) => v.iter().map(|&x| x as f32).collect(),
            TensorData::Bool(v) => v.iter().map(|&x| x as u8 as f32).collect(),
        }
    }

    /// Every element as f64 (exact for every dtype but i64/u64 beyond 2^53).
    pub fn to_f64_vec(&self) -> Vec<f64> {
        match &self.data {
            TensorData::F32(v) => v.iter().map(|&x| x as f64).collect(),
            TensorData::F16(v) => v.iter().map(|x| x.to_f64()).collect(),
            TensorData::BF16(v) => v.iter().map(|x| x.to_f64()).collect(),
            TensorData::F64(v) => v.clone(),
            TensorData::I8(v) => v.iter().map(|&x| x as f64).collect(),
            TensorData::U8(v) => v.iter().map(|&x| x as f64).collect(),
            TensorData::I16(v) => v.iter().map(|&x| x as f64).collect(),
            TensorData::U16(v) => v.iter().map(|&x| x as f64).collect(),
            TensorData::I32(v) => v.iter().map(|&x| x as f64).collect(),
            TensorData::U32(v) => v.iter().map(|&x| x as f64).collect(),
            TensorData::I64(v) => v.iter().map(|&x| x as f64).collect(),
            TensorData::U64(v) => v.iter().map(|&x| x as f64).collect(),
            TensorData::Bool(v) => v.iter().map(|&x| x as u8 as f64).collect(),
        }
    }

    /// Integer (and bool) elements as i64; `None` for float tensors, and for u64 ones, whose
    /// values may exceed i64 (see [`Tensor::to_i64_bits`]).
    pub fn to_i64_vec(&self) -> Option<Vec<i64>> {
        match &self.data {
            TensorData::U64(_) => None,
            _ => self.to_i64_bits(),
        }
    }

    /// Integer (and bool) elements as i64 bits: exact values for every integer type but u64,
    /// whose elements are reinterpreted (two's complement, as `u64 as i64`), so that wrapping
    /// arithmetic on the bits and [`Tensor::from_i64_wrapping`] back give the u64 result; `None`
    /// for float tensors.
    pub fn to_i64_bits(&self) -> Option<Vec<i64>> {
        Some(match &self.data {
            TensorData::I8(v) => v.iter().map(|&x| x as i64).collect(),
            TensorData::U8(v) => v.iter().map(|&x| x as i64).collect(),
            TensorData::I16(v) => v.iter().map(|&x| x as i64).collect(),
            TensorData::U16(v) => v.iter().map(|&x| x as i64).collect(),
            TensorData::I32(v) => v.iter().map(|&x| x as i64).collect(),
            TensorData::U32(v) => v.iter().map(|&x| x as i64).collect(),
            TensorData::I64(v) => v.clone(),
            TensorData::U64(v) => v.iter().map(|&x| x as i64).collect(),
            TensorData::Bool(v) => v.iter().map(|&x| x as i64).collect(),
            TensorData::F32(_) | TensorData::F16(_) | TensorData::BF16(_) | TensorData::F64(_) => return None,
        })
    }

    /// Integer elements (as i64 bits, see [`Tensor::to_i64_bits`]) into `dtype`, wrapping as a
    /// two's-complement cast does (ONNX Cast between integers); into a float type they convert
    /// as signed values, rounding to nearest even.
    pub fn from_i64_wrapping(dtype: DType, shape: Vec<usize>, v: &[i64]) -> Tensor {
        let data = match dtype {
            DType::I8 => TensorData::I8(v.iter().map(|&x| x as i8).collect()),
            DType::U8 => TensorData::U8(v.iter().map(|&x| x as u8).collect()),
            DType::I16 => TensorData::I16(v.iter().map(|&x| x as i16).collect()),
            DType::U16 => TensorData::U16(v.iter().map(|&x| x as u16).collect()),
            DType::I32 => TensorData::I32(v.iter().map(|&x| x as i32).collect()),
            DType::U32 => TensorData::U32(v.iter().map(|&x| x as u32).collect()),
            DType::I64 => TensorData::I64(v.to_vec()),
            DType::U64 => TensorData::U64(v.iter().map(|&x| x as u64).collect()),
            DType::Bool => TensorData::Bool(v.iter().map(|&x| x != 0).collect()),
            DType::F32 => TensorData::F32(v.iter().map(|&x| x as f32).collect()),
            DType::F64 => TensorData::F64(v.iter().map(|&x| x as f64).collect()),
            DType::F16 => TensorData::F16(v.iter().map(|&x| f16::from_f64(x as f64)).collect()),
            DType::BF16 => TensorData::BF16(v.iter().map(|&x| bf16::from_f64(x as f64)).collect()),
        };
        Tensor { shape, data }
    }

    /// A short content digest (FNV-1a over dtype, shape and bytes), stable across runs and hosts.
    pub fn digest(&self) -> u64 {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        let mut eat = |b: u8| {
            h ^= b as u64;
            h = h.wrapping_mul(0x0100_0000_01b3);
        };
        for b in self.dtype().name().bytes() {
            eat(b);
        }
        for &d in &self.shape {
            for b in (d as u64).to_le_bytes() {
                eat(b);
            }
        }
        match &self.data {
            TensorData::F32(v) => v.iter().flat_map(|x| x.to_bits().to_le_bytes()).for_each(&mut eat),
            TensorData::F16(v) => v.iter().flat_map(|x| x.to_bits().to_le_bytes()).for_each(&mut eat),
            TensorData::BF16(v) => v.iter().flat_map(|x| x.to_bits().to_le_bytes()).for_each(&mut eat),
            TensorData::I8(v) => v.iter().for_each(|&x| eat(x as u8)),
            TensorData::U8(v) => v.iter().for_each(|&x| eat(x)),
            TensorData::I32(v) => v.iter().flat_map(|x| x.to_le_bytes()).for_each(&mut eat),
            TensorData::I64(v) => v.iter().flat_map(|x| x.to_le_bytes()).for_each(&mut eat),
            TensorData::Bool(v) => v.iter().for_each(|&x| eat(x as u8)),
            TensorData::F64(v) => v.iter().flat_map(|x| x.to_bits().to_le_bytes()).for_each(&mut eat),
            TensorData::I16(v) => v.iter().flat_map(|x| x.to_le_bytes()).for_each(&mut eat),
            TensorData::U16(v) => v.iter().flat_map(|x| x.to_le_bytes()).for_each(&mut eat),
            TensorData::U32(v) => v.iter().flat_map(|x| x.to_le_bytes()).for_each(&mut eat),
            TensorData::U64(v) => v.iter().flat_map(|x| x.to_le_bytes()).for_each(&mut eat),
        }
        h
    }

    /// Smallest and largest element as f64, ignoring NaN; `None` when empty or all NaN.
    pub fn range(&self) -> Option<(f64, f64)> {
        let mut r: Option<(f64, f64)> = None;
        for x in self.to_f64_vec() {
            if x.is_nan() {
                continue;
            }
            r = Some(match r {
                None => (x, x),
                Some((lo, hi)) => (lo.min(x), hi.max(x)),
            });
        }
        r
    }
}
