//! # qforge-ir: the typed dataflow IR
//!
//! Everything the other stages share: element types ([`DType`]), quantization parameters carried
//! in types ([`QuantParams`], [`TensorType`]), shapes with symbolic dimensions ([`Shape`]), the op
//! set ([`Op`]), the [`Graph`] of SSA values, type and shape inference ([`infer`]), the verifier
//! ([`verify`]), the text form ([`text`]), concrete [`Tensor`]s and the reference interpreter
//! ([`interp`]), the semantic oracle every other engine is tested against.
//!
//! ## Invariants
//! * This crate knows nothing of ONNX, egg or Cranelift, and never touches files: the text form
//!   goes to and from strings.
//! * A graph that passed [`verify::verify`] has a type for every value that [`infer`] agrees with,
//!   no cycle, and inputs of the arity and types its ops require.
//! * Quantization parameters live in types, never in op attributes.
//! * Numerics (rounding, saturation, requantization) are defined once, in [`numerics`]; the
//!   interpreter follows them and so must every other engine.
//! * Nothing here panics on user input: parse errors, malformed graphs and bad interpreter inputs
//!   are [`IrError`] values.
//! * One tensor-size limit ([`limits`], default [`DEFAULT_MAX_TENSOR_BYTES`]) holds for every
//!   constant, result and temporary; an oversized one is [`IrError::TooLarge`], with the same
//!   message whichever engine finds it.

pub mod dtype;
pub mod error;
pub mod graph;
pub mod infer;
pub mod interp;
pub mod limits;
mod multiversion;
pub mod numerics;
pub mod op;
pub mod quant;
pub mod shape;
pub mod tensor;
pub mod text;
pub mod verify;
pub mod wire;

pub use dtype::{DType, ParseDTypeError};
pub use error::{IrError, Result};
pub use graph::{Graph, GraphOutput, Node, NodeId, SignatureEntry, Specialized, Value};
pub use infer::InferError;
pub use limits::{Allocation, DEFAULT_MAX_TENSOR_BYTES};
pub use op::{
    AspectPolicy, BinaryOp, ConvAttrs, ConvTransposeAttrs, CoordMode, DimExpr, Epilogue, GridPadding, NearestMode, Op,
    PadMode, PoolAttrs, ResizeAttrs, ResizeMode, ResizeTarget, ScatterReduction, UnaryOp,
};
pub use quant::{QuantError, QuantParams};
pub use shape::{Affine, Dim, Shape, TensorType};
pub use tensor::{IntoData, Tensor, TensorData};
pub use wire::{ParseWireTypeError, WireType};
