//! The one tensor-size limit every engine enforces (`--max-tensor-bytes`): the reference
//! interpreter checks every constant, result and widening temporary of a node before it
//! allocates it, and the JIT checks the same values (plus its packed weight copies) while it
//! lowers the graph, before any buffer exists. Both report an oversized tensor with
//! [`IrError::TooLarge`], so the two engines refuse a model with the same message.

use crate::{DType, IrError};
use std::fmt;

/// The default limit on one tensor, in bytes: 2 GiB, the most the ONNX importer accepts for one
/// constant (protobuf messages are capped at 2 GiB).
pub const DEFAULT_MAX_TENSOR_BYTES: u64 = 1 << 31;

/// What a size-limited allocation holds, as [`IrError::TooLarge`] names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Allocation {
    /// A node's result.
    Result,
    /// A constant of the graph.
    Constant,
    /// A copy the interpreter makes while computing a node (an input widened to f32 or i64).
    Temporary,
    /// The JIT's reordered copy of a kernel's constant weights.
    PackedWeights,
}

impl fmt::Display for Allocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Allocation::Result => "the result",
            Allocation::Constant => "the constant",
            Allocation::Temporary => "a temporary",
            Allocation::PackedWeights => "the packed weight copy",
        })
    }
}

/// Bytes of a tensor of `dtype` and `shape`, saturating (so an absurd shape is simply too large).
pub fn tensor_bytes(dtype: DType, shape: &[usize]) -> u128 {
    shape.iter().fold(dtype.size_bytes() as u128, |a, &d| a.saturating_mul(d as u128))
}

/// `Err(TooLarge)` if `bytes` of `what` at node `node` exceed `limit`.
pub fn check(node: &str, what: Allocation, bytes: u128, limit: u128) -> Result<(), IrError> {
    if bytes > limit {
        return Err(IrError::TooLarge { node: node.to_string(), what, bytes, limit });
    }
    Ok(())
}

/// An empty vector with room for `n` elements, allocated fallibly: the size comes from the
/// model, so a failed allocation is an error message, not an abort.
pub(crate) fn try_vec<T>(n: usize) -> Result<Vec<T>, String> {
    let mut v = Vec::new();
    v.try_reserve_exact(n)
        .map_err(|_| format!("could not allocate {} bytes", (n as u128).saturating_mul(size_of::<T>() as u128)))?;
    Ok(v)
}

/// A copy of `s`, allocated fallibly (see [`try_vec`]).
pub(crate) fn try_copy<T: Clone>(s: &[T]) -> Result<Vec<T>, String> {
    let mut v = try_vec(s.len())?;
    v.extend_from_slice(s);
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_message_names_the_node_what_and_both_sizes() {
        let e = check("cast_big", Allocation::Result, 4_000_000_000, DEFAULT_MAX_TENSOR_BYTES as u128).unwrap_err();
        assert_eq!(
            e.to_string(),
            "node `cast_big`: the result needs 4000000000 bytes, more than the limit of 2147483648 bytes \
             (--max-tensor-bytes)"
        );
        assert!(check("x", Allocation::Constant, 10, 10).is_ok());
        assert_eq!(tensor_bytes(DType::F32, &[usize::MAX, 4]), usize::MAX as u128 * 16);
    }

    #[test]
    fn an_impossible_allocation_is_an_error() {
        let e = try_vec::<u64>(usize::MAX / 4).unwrap_err();
        assert!(e.starts_with("could not allocate "), "{e}");
        assert_eq!(try_copy(&[1, 2, 3]).unwrap(), vec![1, 2, 3]);
    }
}
