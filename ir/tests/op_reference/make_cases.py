#!/usr/bin/env python3
"""Writes cases.rs, the table `op_reference.rs` runs: each case is one IR op in the text form on
small inputs, with the outputs the ONNX reference implementation (onnx.reference.ReferenceEvaluator,
onnx 1.23) computes for the equivalent ONNX node. The committed cases.rs is what the test reads;
this script only regenerates it (python3 make_cases.py > cases.rs).

The ONNX reference's grouped ConvTranspose mis-slices the weight when the input and output channel
counts differ, and numpy's pad cannot crop: those cases take ONNX Runtime's outputs instead.

A case: (name, ONNX op, ONNX attributes, ONNX inputs [(name, array, is_graph_input)], IR op text
with its attributes, opset). Graph inputs become the IR graph's inputs in order; the other ONNX
inputs (scales, pads, k, ...) are the attributes the IR op carries. Each new op is covered at the
dtypes and attribute values qforge imports (ties, NaN, negative indices, out-of-range shifts).
"""
import sys
import warnings

import numpy as np
import onnx
from onnx import helper, numpy_helper
from onnx.reference import ReferenceEvaluator

warnings.filterwarnings("ignore")
rng = np.random.default_rng(7)

DT = {np.dtype("float32"): "f32", np.dtype("float16"): "f16", np.dtype("int8"): "i8", np.dtype("uint8"): "u8",
      np.dtype("int32"): "i32", np.dtype("int64"): "i64", np.dtype("bool"): "bool", np.dtype("float64"): "f64",
      np.dtype("int16"): "i16", np.dtype("uint16"): "u16", np.dtype("uint32"): "u32", np.dtype("uint64"): "u64"}


def f(shape, lo=-3.0, hi=3.0, dtype=np.float32):
    return rng.uniform(lo, hi, size=shape).round(3).astype(dtype)


def ints(shape, lo, hi, dtype):
    return rng.integers(lo, hi, size=shape).astype(dtype)


def ir_type(a):
    return f"{DT[a.dtype]}[{','.join(str(d) for d in a.shape)}]"


def lit(v):
    v = float(v)
    if np.isnan(v):
        return "f64::NAN"
    if np.isinf(v):
        return "f64::INFINITY" if v > 0 else "f64::NEG_INFINITY"
    r = repr(v)
    return r if ("." in r or "e" in r) else r + ".0"


def arr(a):
    vals = ", ".join(lit(x) for x in np.asarray(a).astype(np.float64).ravel())
    return f'("{DT[a.dtype]}", &[{", ".join(str(d) for d in a.shape)}], &[{vals}])'


def run(op, attrs, inputs, n_out, opset, domain=""):
    names = [n for n, _, _ in inputs]
    node = helper.make_node(op, names, [f"out{k}" for k in range(n_out)], domain=domain, **attrs)
    graph_inputs = [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(a.dtype), a.shape)
                    for n, a, g in inputs if g]
    inits = [numpy_helper.from_array(a, n) for n, a, g in inputs if not g]
    outs = [helper.make_tensor_value_info(f"out{k}", onnx.TensorProto.UNDEFINED, None) for k in range(n_out)]
    g = helper.make_graph([node], "g", graph_inputs, outs, inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid(domain, opset)])
    sess = ReferenceEvaluator(m)
    return sess.run(None, {n: a for n, a, g in inputs if g})


CASES = []


def case(name, op, attrs, inputs, ir, opset=21, n_out=1, tol=1e-6, ort=False, ir_types=None, pick=None):
    """`ir`: the IR op and its attributes, e.g. `resize {mode=...}` (the operands are added).
    `ir_types`: the IR result types when they are not the outputs' own (a data-dependent dim is
    the op's count symbol)."""
    if ort:
        import onnxruntime as rt
        names = [n for n, _, _ in inputs]
        node = helper.make_node(op, names, [f"out{k}" for k in range(n_out)], **attrs)
        gi = [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(a.dtype), a.shape)
              for n, a, g in inputs if g]
        inits = [numpy_helper.from_array(a, n) for n, a, g in inputs if not g]
        et = helper.np_dtype_to_tensor_dtype(inputs[0][1].dtype)
        outs = [helper.make_tensor_value_info(f"out{k}", et, None) for k in range(n_out)]
        m = helper.make_model(helper.make_graph([node], "g", gi, outs, inits),
                              opset_imports=[helper.make_opsetid("", opset)])
        m.ir_version = 10
        got = rt.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(
            None, {n: a for n, a, g in inputs if g})
    else:
        got = run(op, attrs, inputs, n_out, opset)
    got = [np.asarray(o) for o in got]
    if pick is not None:  # the IR op computes only this output of the ONNX node
        got = [got[pick]]
    gins = [(n, a) for n, a, g in inputs if g]
    sig = ", ".join(f"%{n}: {ir_type(a)}" for n, a in gins)
    outs = ", ".join(f"y{k}: {ir_type(o)}" for k, o in enumerate(got))
    res = ", ".join(f"%{k}" for k in range(len(got)))
    types = ", ".join(ir_types or [ir_type(o) for o in got])
    if ir_types:
        outs = ", ".join(f"y{k}: {t}" for k, t in enumerate(ir_types))
    opname, _, attr = ir.partition(" ")
    operands = ", ".join(f"%{n}" for n, _ in gins)
    line = f"{opname} {operands}" + (f" {attr}" if attr else "")
    text = (f"graph g({sig}) -> ({outs}) {{\n  {res} = {line} : {types}  # \"n\"\n  return {res}\n}}\n")
    CASES.append((name, text, [a for _, a in gins], got, tol))


# ------------------------------------------------------------------------------------------- resize
def resize(name, x, ir, scales=None, sizes=None, roi=None, tol=1e-6, **attrs):
    ins = [("x", x, True), ("roi", np.array(roi if roi is not None else [], np.float32), False)]
    ins.append(("scales", np.array(scales if scales is not None else [], np.float32), False))
    if sizes is not None:
        ins.append(("sizes", np.array(sizes, np.int64), False))
    case(name, "Resize", attrs, ins, ir, tol=tol)


R = "resize {{mode={m}, coord={c}, nearest={n}, cubic_a={a}, exclude_outside={e}, extrapolation={x}, " \
    "antialias={aa}, roi=[{roi}], {tgt}}}"


def rz(m="nearest", c="half_pixel", n="round_prefer_floor", a="-0.75", e="false", x="0.0", aa="false", roi="",
       tgt=""):
    return R.format(m=m, c=c, n=n, a=a, e=e, x=x, aa=aa, roi=roi, tgt=tgt)


x22 = np.array([[[[1, 2], [3, 4]]]], np.float32)
x44 = f((1, 1, 4, 4))
resize("resize_nearest_half_pixel_up", x22, rz(tgt="scales=[1.0,1.0,2.0,3.0]"), scales=[1, 1, 2, 3], mode="nearest")
resize("resize_nearest_asymmetric_floor_down", x44, rz(c="asymmetric", n="floor", tgt="scales=[1.0,1.0,0.6,0.6]"),
       scales=[1, 1, 0.6, 0.6], mode="nearest", coordinate_transformation_mode="asymmetric", nearest_mode="floor")
resize("resize_nearest_align_corners_prefer_ceil", x22,
       rz(c="align_corners", n="round_prefer_ceil", tgt="axes=[0,1,2,3], sizes=[1,1,3,5], policy=stretch"),
       sizes=[1, 1, 3, 5], mode="nearest", coordinate_transformation_mode="align_corners",
       nearest_mode="round_prefer_ceil")
resize("resize_nearest_pytorch_ceil_axes", x44,
       rz(c="pytorch_half_pixel", n="ceil", tgt="axes=[2,3], sizes=[3,1], policy=stretch"),
       sizes=[3, 1], axes=[2, 3], mode="nearest", coordinate_transformation_mode="pytorch_half_pixel",
       nearest_mode="ceil")
resize("resize_linear_half_pixel_up", x22, rz(m="linear", tgt="scales=[1.0,1.0,2.0,2.0]"), scales=[1, 1, 2, 2],
       mode="linear")
resize("resize_linear_align_corners_down", f((1, 1, 2, 4)), rz(m="linear", c="align_corners",
       tgt="scales=[1.0,1.0,0.6,0.6]"), scales=[1, 1, 0.6, 0.6], mode="linear",
       coordinate_transformation_mode="align_corners")
resize("resize_linear_pytorch_width_1", x44, rz(m="linear", c="pytorch_half_pixel",
       tgt="axes=[0,1,2,3], sizes=[1,1,3,1], policy=stretch"), sizes=[1, 1, 3, 1], mode="linear",
       coordinate_transformation_mode="pytorch_half_pixel")
resize("resize_linear_tf_crop_extrapolate", x44, rz(m="linear", c="tf_crop_and_resize", x="10.0",
       roi="0.0,0.0,0.4,0.6,1.0,1.0,1.2,1.7", tgt="axes=[0,1,2,3], sizes=[1,1,3,3], policy=stretch"),
       sizes=[1, 1, 3, 3], roi=[0, 0, 0.4, 0.6, 1, 1, 1.2, 1.7], mode="linear",
       coordinate_transformation_mode="tf_crop_and_resize", extrapolation_value=10.0)
resize("resize_cubic_half_pixel_up", f((1, 1, 3, 3)), rz(m="cubic", a="-0.5", tgt="scales=[1.0,1.0,2.0,1.5]"),
       scales=[1, 1, 2, 1.5], mode="cubic", cubic_coeff_a=-0.5)
resize("resize_cubic_exclude_outside_down", x44, rz(m="cubic", a="-0.5", e="true",
       tgt="scales=[1.0,1.0,0.8,0.8]"), scales=[1, 1, 0.8, 0.8], mode="cubic", cubic_coeff_a=-0.5,
       exclude_outside=1)
resize("resize_cubic_asymmetric", x44, rz(m="cubic", c="asymmetric", tgt="scales=[1.0,1.0,1.25,0.75]"),
       scales=[1, 1, 1.25, 0.75], mode="cubic", coordinate_transformation_mode="asymmetric")
resize("resize_linear_antialias_down", f((1, 1, 5, 6)), rz(m="linear", aa="true", tgt="scales=[1.0,1.0,0.6,0.5]"),
       scales=[1, 1, 0.6, 0.5], mode="linear", antialias=1)
resize("resize_cubic_antialias_down", f((1, 1, 5, 6)), rz(m="cubic", aa="true", tgt="scales=[1.0,1.0,0.6,0.5]"),
       scales=[1, 1, 0.6, 0.5], mode="cubic", antialias=1)
resize("resize_linear_not_larger_symmetric", x44, rz(m="linear", c="half_pixel_symmetric",
       tgt="axes=[2,3], sizes=[7,8], policy=not_larger"), sizes=[7, 8], axes=[2, 3], mode="linear",
       coordinate_transformation_mode="half_pixel_symmetric", keep_aspect_ratio_policy="not_larger")
resize("resize_nearest_not_smaller", x44, rz(tgt="axes=[2,3], sizes=[3,2], policy=not_smaller"), sizes=[3, 2],
       axes=[2, 3], mode="nearest", keep_aspect_ratio_policy="not_smaller")
resize("resize_linear_u8_rounds", ints((1, 1, 3, 3), 0, 255, np.uint8), rz(m="linear", c="asymmetric",
       tgt="scales=[1.0,1.0,2.0,2.0]"), scales=[1, 1, 2, 2], mode="linear", coordinate_transformation_mode="asymmetric")
resize("resize_nearest_i64_rank3", ints((1, 2, 3), -50, 50, np.int64), rz(tgt="scales=[1.0,1.0,1.5]"),
       scales=[1, 1, 1.5], mode="nearest")
resize("resize_linear_f16", f((1, 1, 2, 3), dtype=np.float16), rz(m="linear", tgt="scales=[1.0,1.0,2.0,2.0]"),
       scales=[1, 1, 2, 2], mode="linear", tol=1e-3)

# ------------------------------------------------------------------------------------ conv transpose
CT = "conv_transpose {{kernel=[{k}], strides=[{s}], pads=[{p}], dilations=[{d}], group={g}, output_padding=[{o}]}}"


def ct(name, x, w, ir, b=None, ort=False, **attrs):
    ins = [("x", x, True), ("w", w, True)] + ([("b", b, True)] if b is not None else [])
    case(name, "ConvTranspose", attrs, ins, ir, tol=1e-5, ort=ort)


ct("conv_transpose_default", f((1, 1, 3, 3)), f((1, 2, 3, 3)), CT.format(k="3,3", s="1,1", p="0,0,0,0", d="1,1",
   g=1, o="0,0"))
ct("conv_transpose_strides_pads_output_padding", f((1, 2, 3, 2)), f((2, 3, 2, 3)),
   CT.format(k="2,3", s="3,2", p="1,0,1,2", d="1,1", g=1, o="1,1"), b=f((3,)), strides=[3, 2], pads=[1, 0, 1, 2],
   output_padding=[1, 1])
ct("conv_transpose_group_dilation_1d", f((2, 4, 5)), f((4, 1, 3)), CT.format(k="3", s="2", p="1,0", d="2", g=2,
   o="0"), b=f((2,)), ort=True, group=2, dilations=[2], strides=[2], pads=[1, 0])
ct("conv_transpose_output_shape_extends", f((1, 1, 3, 3)), f((1, 2, 3, 3)),
   CT.format(k="3,3", s="3,2", p="0,0,-1,-1", d="1,1", g=1, o="0,0"), strides=[3, 2], output_shape=[10, 8])
ct("conv_transpose_same_upper", f((1, 1, 3, 3)), f((1, 2, 3, 3)),
   CT.format(k="3,3", s="2,2", p="0,0,1,1", d="1,1", g=1, o="0,0"), strides=[2, 2], auto_pad="SAME_UPPER")

# ------------------------------------------------------------------------------------------------ pad
def pad(name, x, pads, ir, mode="constant", value=None, axes=None, ort=False):
    ins = [("x", x, True), ("pads", np.array(pads, np.int64), False)]
    if value is not None or axes is not None:
        ins.append(("value", np.array(value if value is not None else 0, x.dtype), False))
    if axes is not None:
        ins.append(("axes", np.array(axes, np.int64), False))
    case(name, "Pad", {"mode": mode}, ins, ir, ort=ort)


x34 = f((3, 4))
pad("pad_constant_value", x34, [1, 2, 0, 3], "pad {mode=constant, pads=[1,2,0,3], value=1.5}", value=1.5)
pad("pad_reflect", x34, [2, 1, 1, 3], "pad {mode=reflect, pads=[2,1,1,3], value=0.0}", mode="reflect")
pad("pad_reflect_longer_than_axis", f((2, 3)), [3, 0, 4, 5], "pad {mode=reflect, pads=[3,0,4,5], value=0.0}",
    mode="reflect")
pad("pad_edge", x34, [1, 0, 2, 2], "pad {mode=edge, pads=[1,0,2,2], value=0.0}", mode="edge")
pad("pad_wrap", x34, [5, 1, 0, 6], "pad {mode=wrap, pads=[5,1,0,6], value=0.0}", mode="wrap")
pad("pad_axes_i64", ints((2, 3, 2), -9, 9, np.int64), [1, 2], "pad {mode=constant, pads=[0,0,1,0,0,2], value=-7.0}",
    value=-7, axes=[-1])
pad("pad_negative_crops", f((3, 5)), [-1, 2, 0, -2], "pad {mode=constant, pads=[-1,2,0,-2], value=0.0}", ort=True)

# ----------------------------------------------------------------------------------------------- tile
case("tile_f32", "Tile", {}, [("x", f((2, 3)), True), ("r", np.array([2, 3], np.int64), False)],
     "tile {repeats=[2,3]}")
case("tile_i32_zero", "Tile", {}, [("x", ints((2, 1, 2), -5, 5, np.int32), True),
     ("r", np.array([1, 2, 0], np.int64), False)], "tile {repeats=[1,2,0]}")

# ------------------------------------------------------------------------------------ normalizations
case("group_norm", "GroupNormalization", {"num_groups": 2, "epsilon": 1e-5},
     [("x", f((2, 4, 3)), True), ("s", f((4,)), True), ("b", f((4,)), True)], "group_norm {groups=2, epsilon=1e-5}",
     tol=1e-5)


# ------------------------------------------------------------------------------------ arg max / min
xa = np.array([[1, 3, 3, 0], [2, 2, -1, 2], [np.nan, 5, np.nan, 1]], np.float32)
case("arg_max_first", "ArgMax", {"axis": 1, "keepdims": 0}, [("x", xa, True)],
     "arg_max {axis=1, keepdims=false, select_last=false}", opset=13)
case("arg_max_last_keepdims", "ArgMax", {"axis": -1, "select_last_index": 1}, [("x", xa, True)],
     "arg_max {axis=-1, keepdims=true, select_last=true}", opset=13)
case("arg_min_axis0", "ArgMin", {"axis": 0}, [("x", xa, True)], "arg_min {axis=0, keepdims=true, select_last=false}",
     opset=13)
case("arg_min_i32_last", "ArgMin", {"axis": 1, "keepdims": 0, "select_last_index": 1},
     [("x", np.array([[4, -2, 7, -2], [0, 0, 0, 1]], np.int32), True)],
     "arg_min {axis=1, keepdims=false, select_last=true}", opset=13)


# ------------------------------------------------------------------------------- unary math (float)
xu = np.array([[-2.5, -1.0, -0.25, 0.0], [0.3, 1.0, 1.7, 3.0]], np.float32)
x11 = np.array([[-0.99, -0.5, -0.1, 0.0], [0.2, 0.5, 0.75, 0.99]], np.float32)
for op, name, x in [("Sin", "sin", xu), ("Cos", "cos", xu), ("Tan", "tan", xu), ("Asin", "asin", x11),
                    ("Acos", "acos", x11), ("Atan", "atan", xu), ("Sinh", "sinh", xu), ("Cosh", "cosh", xu),
                    ("Asinh", "asinh", xu), ("Acosh", "acosh", np.abs(xu) + np.float32(1.0)),
                    ("Atanh", "atanh", x11)]:
    case(name, op, {}, [("x", x, True)], name, opset=22)
case("sign", "Sign", {}, [("x", np.array([-2.0, -0.0, 0.0, 3.5, np.nan, -np.inf], np.float32), True)], "sign",
     opset=13)
case("round_half_to_even", "Round", {},
     [("x", np.array([0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 2.4, -2.6, 7.0], np.float32), True)], "round", opset=22)
case("round_f16", "Round", {}, [("x", np.array([0.5, 1.5, 2.5, -3.5, 1000.5], np.float16), True)], "round",
     opset=22, tol=0.0)

# ------------------------------------------------------------------------------ bitwise and shifts
ai = np.array([[5, -7, 0x7f, -1], [12, 3, -128, 64]], np.int32)
bi = np.array([3, -2, 0x55, 9], np.int32)
au = ints((2, 3, 4), 0, 256, np.uint8)
bu = ints((3, 4), 0, 256, np.uint8)
case("bit_and_i32_broadcast", "BitwiseAnd", {}, [("a", ai, True), ("b", bi, True)], "bit_and", opset=18)
case("bit_or_u8_broadcast", "BitwiseOr", {}, [("a", au, True), ("b", bu, True)], "bit_or", opset=18)
case("bit_xor_i8", "BitwiseXor", {}, [("a", ints((3, 4), -128, 128, np.int8), True),
     ("b", ints((3, 4), -128, 128, np.int8), True)], "bit_xor", opset=18)
case("shift_left_u8", "BitShift", {"direction": "LEFT"}, [("a", np.array([1, 255, 16, 3, 200], np.uint8), True),
     ("b", np.array([1, 1, 4, 7, 8], np.uint8), True)], "shift_left", opset=28)
case("shift_right_u8", "BitShift", {"direction": "RIGHT"},
     [("a", np.array([1, 255, 16, 200, 200], np.uint8), True), ("b", np.array([1, 1, 4, 7, 9], np.uint8), True)],
     "shift_right", opset=28)
case("shift_left_i8_overflow_and_range", "BitShift", {"direction": "LEFT"},
     [("a", np.array([64, -64, 1, -1, 5, 3], np.int8), True), ("b", np.array([1, 1, 7, 8, -1, 2], np.int8), True)],
     "shift_left", opset=28)
case("shift_right_i32_arithmetic", "BitShift", {"direction": "RIGHT"},
     [("a", np.array([-100, 100, -1, -7, 7, -2**31], np.int32), True),
      ("b", np.array([2, 2, 31, 32, 40, -1], np.int32), True)], "shift_right", opset=28)
case("shift_left_i64", "BitShift", {"direction": "LEFT"},
     [("a", np.array([1, -3, 5], np.int64), True), ("b", np.array([62, 63, 64], np.int64), True)], "shift_left",
     opset=28)

# ---------------------------------------------------------------------------- gathers and scatters
case("gather_nd_batch_dims", "GatherND", {"batch_dims": 1},
     [("d", f((2, 3, 4)), True), ("i", np.array([[[2, 1], [0, -1]], [[1, 3], [-3, 0]]], np.int64), True)],
     "gather_nd {batch_dims=1}", opset=13)
case("gather_nd_slices_i32", "GatherND", {}, [("d", ints((3, 2, 2), -9, 9, np.int32), True),
     ("i", np.array([[2], [0], [-1]], np.int64), True)], "gather_nd {batch_dims=0}", opset=13)
for red in ["none", "add", "mul", "max", "min"]:
    case(f"scatter_elements_{red}", "ScatterElements", {"axis": 1, "reduction": red},
         [("d", f((3, 4)), True), ("i", np.array([[1, 1], [0, -1], [3, 3]], np.int64), True), ("u", f((3, 2)), True)],
         f"scatter_elements {{axis=1, reduction={red}}}", opset=18)
case("scatter_elements_i64_axis0", "ScatterElements", {"axis": -2},
     [("d", ints((3, 2), -9, 9, np.int64), True), ("i", np.array([[2, 0]], np.int32), True),
      ("u", np.array([[100, -100]], np.int64), True)], "scatter_elements {axis=-2, reduction=none}", opset=18)
for red in ["none", "add", "mul", "max", "min"]:
    case(f"scatter_nd_{red}", "ScatterND", {"reduction": red},
         [("d", f((4, 2, 3)), True), ("i", np.array([[1], [-1], [1]], np.int64), True), ("u", f((3, 2, 3)), True)],
         f"scatter_nd {{reduction={red}}}", opset=18)
case("scatter_nd_elements", "ScatterND", {}, [("d", ints((3, 3), 0, 9, np.int32), True),
     ("i", np.array([[0, 2], [2, -3]], np.int64), True), ("u", np.array([70, 80], np.int32), True)],
     "scatter_nd {reduction=none}", opset=18)

# ---------------------------------------------------------------------------------- top k, cumsum
xt = np.array([[3, 1, 3, np.nan, -2, 0], [5, 5, 5, 1, 9, -1]], np.float32)
case("top_k_largest_ties_nan", "TopK", {"axis": 1}, [("x", xt, True), ("k", np.array([4], np.int64), False)],
     "top_k {axis=1, k=4, largest=true}", opset=11, n_out=2)
case("top_k_smallest_axis0", "TopK", {"axis": -2, "largest": 0}, [("x", xt, True),
     ("k", np.array([1], np.int64), False)], "top_k {axis=-2, k=1, largest=false}", opset=11, n_out=2)
case("top_k_i64_zero", "TopK", {"axis": 0}, [("x", np.array([4, -1, 4, 7], np.int64), True),
     ("k", np.array([0], np.int64), False)], "top_k {axis=0, k=0, largest=true}", opset=11, n_out=2)
case("top_k_i32_all", "TopK", {"axis": 0, "largest": 0}, [("x", np.array([4, -1, 4, 7], np.int32), True),
     ("k", np.array([4], np.int64), False)], "top_k {axis=0, k=4, largest=false}", opset=11, n_out=2)
xc = f((2, 3, 2))
case("cumsum_axis1", "CumSum", {}, [("x", xc, True), ("a", np.array(1, np.int64), False)],
     "cumsum {axis=1, exclusive=false, reverse=false}", opset=14, tol=1e-5)
case("cumsum_exclusive_reverse_i32", "CumSum", {"exclusive": 1, "reverse": 1},
     [("x", ints((2, 4), -9, 9, np.int32), True), ("a", np.array(-1, np.int32), False)],
     "cumsum {axis=-1, exclusive=true, reverse=true}", opset=14)
case("cumprod_reverse", "CumProd", {"reverse": 1}, [("x", xc, True), ("a", np.array(2, np.int64), False)],
     "cumprod {axis=2, exclusive=false, reverse=true}", opset=26, tol=1e-5)
case("cumprod_exclusive_i64", "CumProd", {"exclusive": 1}, [("x", ints((3, 2), -5, 5, np.int64), True),
     ("a", np.array(0, np.int64), False)], "cumprod {axis=0, exclusive=true, reverse=false}", opset=26)

# ------------------------------------------------------------------------------------ det, sampling
case("det_batched", "Det", {}, [("x", f((2, 3, 3)), True)], "det", opset=22, tol=1e-5)
case("det_singular", "Det", {}, [("x", np.array([[1, 2], [2, 4]], np.float32), True)], "det", opset=22, tol=1e-6)
xg = f((1, 2, 3, 4))
grid = f((1, 2, 5, 2), -1.3, 1.3)
for mode, pad, ac in [("linear", "zeros", 0), ("nearest", "border", 0), ("cubic", "reflection", 1),
                      ("linear", "reflection", 0), ("nearest", "zeros", 1), ("cubic", "border", 0)]:
    case(f"grid_sample_{mode}_{pad}_{ac}", "GridSample", {"mode": mode, "padding_mode": pad, "align_corners": ac},
         [("x", xg, True), ("g", grid, True)],
         f"grid_sample {{mode={mode}, padding={pad}, align_corners={'true' if ac else 'false'}}}", opset=22, tol=1e-5)
case("grid_sample_3d_linear_border", "GridSample", {"mode": "linear", "padding_mode": "border"},
     [("x", f((1, 1, 2, 3, 2)), True), ("g", f((1, 2, 2, 2, 3), -1.2, 1.2), True)],
     "grid_sample {mode=linear, padding=border, align_corners=false}", opset=22, tol=1e-5)

# ------------------------------------------------------------------------------------------ dtypes
# Cast between the element types (values the reference defines: integers wrap, floats truncate
# toward zero within the target's range, and round to nearest even into a narrower float), and
# element-wise arithmetic on f64 and on the 16-, 32- and 64-bit integer types (wrap-around,
# division truncating toward zero, Mod with the divisor's sign, Fmod with the dividend's, unsigned
# order for u64). Array values travel as f64, so integers stay within 2^53.
NP = {"f32": np.float32, "f16": np.float16, "f64": np.float64, "i8": np.int8, "u8": np.uint8,
      "i16": np.int16, "u16": np.uint16, "i32": np.int32, "u32": np.uint32, "i64": np.int64,
      "u64": np.uint64, "bool": np.bool_}
SRC = {
    "f64": np.array([0.1, -2.75, 3.9999999999, 1e10 + 0.5, -0.0, 65519.0, 1.0 / 3.0], np.float64),
    "f32": np.array([0.1, -2.75, 3.9999, 16777217.0, -0.0, 65520.0, 1.0 / 3.0], np.float32),
    "f16": np.array([0.1, -2.75, 3.999, 2049.0, -0.0, 65504.0, 1.0 / 3.0], np.float16),
    "i16": np.array([-32768, -129, -1, 0, 255, 256, 32767], np.int16),
    "u16": np.array([0, 1, 127, 128, 255, 65535, 40000], np.uint16),
    "u32": np.array([0, 1, 65536, 65537, 2147483648, 4294967295, 123456789], np.uint32),
    "u64": np.array([0, 1, 4294967301, 2 ** 53, 65535, 70000, 2 ** 63 + 4096], np.uint64),
    "i64": np.array([-(2 ** 40) - 3, -1, 0, 70000, 2 ** 33 + 7, -65536, 300], np.int64),
    "i32": np.array([-70000, -1, 0, 65535, 2 ** 31 - 1, -(2 ** 31), 300], np.int32),
    "u8": np.array([0, 1, 127, 128, 200, 255, 7], np.uint8),
    "bool": np.array([True, False, True, True, False, False, True]),
}
# The float values each target holds (a float outside an integer target's range is undefined in
# the spec and in NumPy), by target.
FLOAT_FOR_INT = np.array([0.1, -2.75, 3.9999, 127.5, -0.0, -128.9, 1.0 / 3.0])
FLOAT_FOR_UINT = np.array([0.1, 2.75, 3.9999, 255.5, -0.0, 127.9, 1.0 / 3.0])


def cast(frm, to):
    x = SRC[frm]
    if x.dtype.kind == "f" and NP[to] != np.bool_ and np.dtype(NP[to]).kind in "iu":
        x = (FLOAT_FOR_UINT if np.dtype(NP[to]).kind == "u" else FLOAT_FOR_INT).astype(x.dtype)
    code = helper.np_dtype_to_tensor_dtype(np.dtype(NP[to]))
    case(f"cast_{frm}_to_{to}", "Cast", {"to": code}, [("x", x, True)], f"cast {{to={to}}}", tol=0.0)


for frm, tos in [("f64", ["f32", "f16", "i32", "u16", "i64", "u64", "bool"]),
                 ("f32", ["f64", "i16", "u32", "u8"]), ("f16", ["f64", "u64"]),
                 ("i16", ["f64", "u16", "i8", "u64", "f16"]), ("u16", ["i16", "f32", "u32", "i8"]),
                 ("u32", ["i32", "u16", "f64", "i64"]), ("u64", ["i64", "u32", "f64", "i16", "bool"]),
                 ("i64", ["u64", "u32", "i16", "f64"]), ("i32", ["u16", "u64", "f64"]),
                 ("u8", ["i16", "u64"]), ("bool", ["f64", "u16"])]:
    for to in tos:
        cast(frm, to)


def binary(name, op, a, b, ir, opset=14, **attrs):
    case(name, op, attrs, [("a", a, True), ("b", b, True)], ir, opset=opset, tol=0.0)


i16a, i16b = np.array([32767, -32768, -7, 7, 300, -3], np.int16), np.array([1, -1, 2, -2, 300, 5], np.int16)
u16a, u16b = np.array([65535, 0, 7, 40000, 300, 9], np.uint16), np.array([1, 1, 2, 40000, 300, 4], np.uint16)
u32a, u32b = np.array([4294967295, 0, 7, 3000000000, 65536, 9], np.uint32), np.array([1, 1, 2, 2, 65536, 4], np.uint32)
# above i64's range: u64 orders and divides as unsigned (every result here is exact in f64)
u64a = np.array([2 ** 53, 0, 7, 2 ** 52 + 1, 2 ** 63 + 4096, 2 ** 63], np.uint64)
u64b = np.array([3, 1, 2, 2 ** 52, 2 ** 63, 2 ** 62], np.uint64)
f64a = np.array([0.1, -4.3, 7.2, 1e300, -0.0, 2.0], np.float64)
f64b = np.array([0.2, 2.1, -3.4, 1e10, 3.0, 0.25], np.float64)
for t, (a, b) in {"i16": (i16a, i16b), "u16": (u16a, u16b), "u32": (u32a, u32b), "u64": (u64a, u64b)}.items():
    for op, ir in [("Add", "add"), ("Sub", "sub"), ("Mul", "mul"), ("Div", "div"), ("Max", "max"), ("Min", "min"),
                   ("Less", "less"), ("Greater", "greater"), ("Equal", "equal")]:
        binary(f"{ir}_{t}", op, a, b, ir)
    binary(f"mod_{t}", "Mod", a, b, "mod", opset=13)
    binary(f"fmod_{t}", "Mod", a, b, "fmod", opset=13, fmod=1)
for op, ir in [("Add", "add"), ("Sub", "sub"), ("Mul", "mul"), ("Div", "div"), ("Max", "max"), ("Min", "min"),
               ("Pow", "pow"), ("Less", "less"), ("GreaterOrEqual", "greater_or_equal")]:
    binary(f"{ir}_f64", op, f64a, f64b, ir)
binary("fmod_f64", "Mod", f64a, f64b, "fmod", opset=13, fmod=1)
case("where_u64", "Where", {}, [("c", np.array([True, False, True]), True), ("a", u64a[:3], True),
     ("b", u64b[:3], True)], "where", tol=0.0)
# exp: Rust's and NumPy's libm may differ in the last bit of an f64 result (one ulp, 2.2e-16).
for u, ir, tol in [("Exp", "exp", 1e-15), ("Sqrt", "sqrt", 0.0), ("Neg", "neg", 0.0), ("Abs", "abs", 0.0),
                   ("Floor", "floor", 0.0)]:
    case(f"{ir}_f64", u, {}, [("x", np.array([0.64, 2.25, 1e-3, 3.7, 10.0], np.float64), True)], ir, tol=tol)
case("reduce_sum_f64", "ReduceSum", {"keepdims": 0}, [("x", np.array([[0.1, 0.2, 1e16], [1.0, -1e16, 3.0]]), True),
     ("axes", np.array([1], np.int64), False)], "reduce_sum {axes=[1], keepdims=false}", opset=13, tol=0.0)
case("reduce_max_f64", "ReduceMax", {"keepdims": 1, "axes": [0]},
     [("x", np.array([[0.1, 0.2, 1e16], [1.0, -1e16, 3.0]]), True)], "reduce_max {axes=[0], keepdims=true}",
     opset=13, tol=0.0)
case("arg_max_u64", "ArgMax", {"axis": 0, "keepdims": 0}, [("x", np.array([3, 2 ** 53, 7], np.uint64), True)],
     "arg_max {axis=0, keepdims=false, select_last=false}", opset=13, tol=0.0)

# ------------------------------------------------------------- ReduceProd, NonZero, NonMaxSuppression
xp = f((2, 3, 4), -1.5, 1.5)
case("reduce_prod_axes_keepdims", "ReduceProd", {"keepdims": 1}, [("x", xp, True),
     ("axes", np.array([0, -1], np.int64), False)], "reduce_prod {axes=[0,-1], keepdims=true}", opset=18, tol=1e-6)
case("reduce_prod_all", "ReduceProd", {"keepdims": 0}, [("x", xp[:, :2, :2], True)],
     "reduce_prod {axes=[], keepdims=false}", opset=18, tol=1e-6)
case("reduce_prod_i32_wraps", "ReduceProd", {"keepdims": 0, "axes": [1]},
     [("x", np.array([[70000, 70000, 3], [-5, 7, 0]], np.int32), True)], "reduce_prod {axes=[1], keepdims=false}",
     opset=13, tol=0.0)
case("reduce_prod_empty_is_one", "ReduceProd", {"keepdims": 1}, [("x", np.zeros((2, 0, 3), np.float32), True),
     ("axes", np.array([1], np.int64), False)], "reduce_prod {axes=[1], keepdims=true}", opset=18, tol=0.0)
case("non_zero_f32_nan_negzero", "NonZero", {},
     [("x", np.array([[0.0, -0.0, 2.5], [np.nan, 0.0, -1.0]], np.float32), True)], "non_zero {count=K}", opset=13,
     tol=0.0, ir_types=["i64[2,K]"])
case("non_zero_i32_3d", "NonZero", {}, [("x", ints((2, 3, 2), -1, 2, np.int32), True)], "non_zero {count=K}",
     opset=13, tol=0.0, ir_types=["i64[3,K]"])
case("non_zero_bool_none", "NonZero", {}, [("x", np.zeros((4,), bool), True)], "non_zero {count=K}", opset=13,
     tol=0.0, ir_types=["i64[1,K]"])


def nms(name, boxes, scores, ins, center=0):
    """NonMaxSuppression on `boxes`, `scores` and the optional inputs `ins` (name, array)."""
    inputs = [("boxes", boxes, True), ("scores", scores, True)] + [(n, a, True) for n, a in ins]
    case(name, "NonMaxSuppression", {"center_point_box": center}, inputs,
         f"non_max_suppression {{center_point_box={'true' if center else 'false'}, count=K}}", opset=11, tol=0.0,
         ir_types=["i64[K,3]"])


# corners in either order, overlapping clusters, equal scores (ties in index order)
nb = np.array([[[0.0, 0.0, 1.0, 1.0], [1.0, 1.1, 0.0, 0.1], [0.0, -0.1, 1.0, 0.9], [0.0, 10.0, 1.0, 11.0],
                [0.0, 10.1, 1.0, 11.1], [0.0, 100.0, 1.0, 101.0]]], np.float32)
ns = np.array([[[0.9, 0.75, 0.6, 0.95, 0.5, 0.3], [0.5, 0.5, 0.5, 0.1, 0.9, 0.5]]], np.float32)
mx, iou, sc = np.array([3], np.int64), np.array([0.5], np.float32), np.array([0.4], np.float32)
nms("nms_two_classes_ties", nb, ns, [("m", mx), ("iou", iou), ("score", sc)])
nms("nms_no_score_threshold", nb, ns, [("m", np.array([10], np.int64)), ("iou", np.array([0.0], np.float32))])
nms("nms_zero_boxes_per_class", nb, ns, [("m", np.array([0], np.int64)), ("iou", iou)])
rb = np.concatenate([rng.uniform(0, 4, (2, 8, 2)), rng.uniform(0.5, 3, (2, 8, 2))], axis=2).astype(np.float32)
nms("nms_center_point_two_batches", rb, f((2, 3, 8), 0.0, 1.0), [("m", np.array([4], np.int64)),
    ("iou", np.array([0.3], np.float32)), ("score", np.array([0.2], np.float32))], center=1)

# MaxPool's Indices output: ties take the first element, padded windows, both storage orders
xm = np.array([[[[1, 5, 5, 2], [3, 0, 5, 7], [7, 1, 1, 2]], [[-1, -2, -3, -4], [0, 0, 0, 0], [9, 8, 9, 8]]]],
              np.float32)
for so in (0, 1):
    case(f"max_pool_indices_storage_order_{so}", "MaxPool",
         {"kernel_shape": [2, 2], "strides": [1, 2], "pads": [1, 0, 0, 1], "storage_order": so},
         [("x", xm, True)],
         "max_pool_indices {kernel=[2,2], strides=[1,2], pads=[1,0,0,1], dilations=[1,1], ceil_mode=false, "
         f"count_include_pad=false, column_major={'true' if so else 'false'}}}", opset=12, n_out=2, tol=0.0, pick=1)
case("max_pool_indices_1d_dilated_i32", "MaxPool", {"kernel_shape": [2], "dilations": [2]},
     [("x", ints((2, 1, 6), -5, 5, np.int32), True)],
     "max_pool_indices {kernel=[2], strides=[1], pads=[0,0], dilations=[2], ceil_mode=false, "
     "count_include_pad=false, column_major=false}", opset=12, n_out=2, tol=0.0, pick=1)


def main():
    out = sys.stdout
    out.write("// Generated by make_cases.py from onnx.reference (onnx " + onnx.__version__ + "); do not edit.\n")
    out.write("&[\n")
    for name, text, ins, outs, tol in CASES:
        out.write("    Case {\n")
        out.write(f'        name: "{name}",\n')
        out.write(f"        text: {rust_str(text)},\n")
        out.write("        inputs: &[" + ", ".join(arr(a) for a in ins) + "],\n")
        out.write("        outputs: &[" + ", ".join(arr(a) for a in outs) + "],\n")
        out.write(f"        tol: {lit(tol)},\n")
        out.write("    },\n")
    out.write("]\n")


def rust_str(s):
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


if __name__ == "__main__":
    main()
