use super::print::type_str;
use super::*;
use crate::{
    AspectPolicy, BinaryOp, ConvAttrs, ConvTransposeAttrs, CoordMode, DType, Dim, DimExpr, Epilogue, GridPadding,
    NearestMode, Op, PadMode, PoolAttrs, QuantParams, ResizeAttrs, ResizeMode, ResizeTarget, ScatterReduction, Shape,
    Tensor, TensorData, TensorType, UnaryOp, Value,
};

/// A small graph around one node line, for error tests: `%x: f32[2,3]` in, `y: f32[2,3]` out.
fn around(body: &str) -> String {
    format!("graph g(%x: f32[2,3]) -> (y: f32[2,3]) {{\n{body}\n  return %0\n}}\n")
}

/// The parse error's line, column and message; panics if parsing succeeded or failed otherwise.
fn parse_err(text: &str) -> (usize, usize, String) {
    match parse(text) {
        Err(IrError::Parse { line, col, msg }) => (line, col, msg),
        other => panic!("expected a parse error, got {other:?}"),
    }
}

fn assert_err(text: &str, line: usize, col: usize, needle: &str) {
    let (l, c, msg) = parse_err(text);
    assert!(msg.contains(needle), "message {msg:?} does not contain {needle:?}");
    assert_eq!((l, c), (line, col), "position of {msg:?}");
}

const SMALL: &str = "\
graph g(%x: f32[2,3]) -> (y: f32[2,3]) {
  %0 = relu %x : f32[2,3]  # \"r\"
  return %0
}
";

#[test]
fn a_small_graph_round_trips() {
    let g = parse(SMALL).unwrap();
    assert_eq!(print(&g, ConstMode::Full).unwrap(), SMALL);
    assert_eq!(print_default(&g).unwrap(), SMALL);
}

#[test]
fn leading_comments_are_ignored_later_ones_are_errors() {
    let g = parse(&format!("// a fixture\n  // indented\n\n{SMALL}")).unwrap();
    assert_eq!(print(&g, ConstMode::Full).unwrap(), SMALL);
    let text = SMALL.replace("  return", "  // no\n  return");
    assert_err(&text, 3, 3, "only allowed before `graph`");
}

// ---------------------------------------------------------------- errors, located

#[test]
fn unknown_op() {
    assert_err(&around("  %0 = frobnicate %x : f32[2,3]  # \"a\""), 2, 8, "unknown op `frobnicate`");
}

#[test]
fn input_and_const_are_not_ops_of_node_lines() {
    assert_err(&around("  %0 = input : f32[2,3]  # \"a\""), 2, 8, "signature");
}

#[test]
fn unknown_value() {
    assert_err(&around("  %0 = relu %7 : f32[2,3]  # \"a\""), 2, 13, "unknown value %7");
    assert_err(&around("  %0 = relu %\"q r\" : f32[2,3]  # \"a\""), 2, 13, "unknown value %\"q r\"");
}

#[test]
fn use_before_definition() {
    let body = "  %1 = relu %0 : f32[2,3]  # \"a\"\n  %0 = relu %x : f32[2,3]  # \"b\"";
    assert_err(&around(body), 2, 13, "defined before they are used");
}

#[test]
fn duplicate_definitions() {
    let body = "  %0 = relu %x : f32[2,3]  # \"a\"\n  %0 = relu %x : f32[2,3]  # \"b\"";
    assert_err(&around(body), 3, 3, "%0 is defined twice");
    assert_err(&around("  %x = relu %x : f32[2,3]  # \"a\""), 2, 3, "%x is defined twice");
    let text = "graph g(%x: f32[1], %x: f32[1]) -> (y: f32[1]) {\n  return %x\n}";
    assert_err(text, 1, 21, "declared twice");
    let text = "graph g(%x: f32[1]) -> (y: f32[1], y: f32[1]) {\n  return %x, %x\n}";
    assert_err(text, 1, 36, "declared twice");
    let text = "graph g(%x: f32[1]) -> (y: f32[1]) {\n  %0, %0 = split %x {axis=0, sizes=[1]} : f32[1]  # \"s\"\n  return %0\n}";
    assert_err(text, 2, 7, "%0 is defined twice");
}

#[test]
fn numbered_graph_inputs_are_rejected() {
    assert_err("graph g(%0: f32[1]) -> () {\n  return\n}", 1, 9, "graph inputs are named");
}

#[test]
fn bad_types() {
    assert_err(&around("  %0 = relu %x : f31[2,3]  # \"a\""), 2, 18, "unknown dtype `f31`");
    assert_err(&around("  %0 = relu %x : f32[2,3  # \"a\""), 2, 27, "expected `,` or `]`");
    assert_err(&around("  %0 = relu %x : f32[2,-3]  # \"a\""), 2, 24, "expected a dimension");
    assert_err(&around("  %0 = relu %x : f32<0.1>[2,3]  # \"a\""), 2, 25, "`:` between scale and zero point");
    assert_err(&around("  %0 = relu %x : u8<0.1:99999999999>[2,3]  # \"a\""), 2, 25, "out of range for an i32");
    assert_err(&around("  %0 = relu %x : f32[99999999999999999999999]  # \"a\""), 2, 22, "too large");
    assert_err(&around("  %0 = relu %x : f32[a.b]  # \"a\""), 2, 22, "expected a dimension");
}

#[test]
fn type_problems_are_reported_at_the_node() {
    // The declared result type does not follow from the inputs.
    assert_err(
        &around("  %0 = relu %x : f32[2,4]  # \"a\""),
        2,
        16,
        "result type is f32[2,4], but the inputs give f32[2,3]",
    );
    // The op rejects its input.
    let text = "graph g(%x: i32[2,3]) -> (y: f32[2,3]) {\n  %0 = relu %x : f32[2,3]  # \"a\"\n  return %0\n}";
    assert_err(text, 2, 8, "x must be a float tensor");
    // Wrong arity.
    assert_err(&around("  %0 = add %x : f32[2,3]  # \"a\""), 2, 8, "takes 2 operands, got 1");
    // Wrong number of results.
    assert_err(&around("  %0, %1 = relu %x : f32[2,3], f32[2,3]  # \"a\""), 2, 12, "has 1 results, the text names 2");
    assert_err(&around("  %0 = relu %x : f32[2,3], f32[2,3]  # \"a\""), 2, 16, "1 results but 2 types");
    // Invalid quantization parameters.
    let text =
        "graph g(%x: f32[2,3]) -> (y: u8<0.1:0>[2,3]) {\n  %0 = quantize %x : u8<-0.1:0>[2,3]  # \"q\"\n  return %0\n}";
    assert_err(text, 2, 22, "not a finite positive number");
    // A quantize without quantization parameters.
    let text = "graph g(%x: f32[2,3]) -> (y: u8[2,3]) {\n  %0 = quantize %x : u8[2,3]  # \"q\"\n  return %0\n}";
    assert_err(text, 2, 8, "has no quantization parameters");
}

#[test]
fn attribute_problems() {
    let conv = |attrs: &str| {
        format!(
            "graph g(%x: f32[1,1,3,3], %w: f32[1,1,1,1]) -> (y: f32[1,1,3,3]) {{\n  %0 = conv %x, %w {attrs} : f32[1,1,3,3]  # \"c\"\n  return %0\n}}"
        )
    };
    let ok = "{kernel=[1,1], strides=[1,1], pads=[0,0,0,0], dilations=[1,1], group=1}";
    parse(&conv(ok)).unwrap();
    // Attributes in another order are accepted (and print back in field order).
    let shuffled = "{group=1, dilations=[1,1], pads=[0,0,0,0], strides=[1,1], kernel=[1,1]}";
    let g = parse(&conv(shuffled)).unwrap();
    assert_eq!(print(&g, ConstMode::Full).unwrap(), conv(ok) + "\n");

    assert_err(
        &conv("{kernel=[1,1], strides=[1,1], pads=[0,0,0,0], dilations=[1,1]}"),
        2,
        20,
        "needs the attribute `group`",
    );
    assert_err(&conv(""), 2, 8, "needs the attribute `kernel`");
    assert_err(&conv(&ok.replace("group=1", "group=1, bogus=2")), 2, 92, "`conv` has no attribute `bogus`");
    assert_err(&conv(&ok.replace("group=1", "group=1, group=1")), 2, 92, "`group` is given twice");
    assert_err(&conv(&ok.replace("group=1", "group=true")), 2, 89, "must be a non-negative integer");
    assert_err(&conv(&ok.replace("group=1", "group=-1")), 2, 89, "must be a non-negative integer");
    assert_err(&conv(&ok.replace("strides=[1,1]", "strides=[1,x]")), 2, 46, "a list of non-negative integers");
    assert_err(&conv(&ok.replace("strides=[1,1]", "strides=1")), 2, 43, "a list of non-negative integers");
    assert_err(&conv(&ok.replace("group=1", "group=")), 2, 89, "expected an attribute value");
    // Attributes the op's inference rejects.
    assert_err(&conv(&ok.replace("kernel=[1,1]", "kernel=[2,2]")), 2, 8, "does not match weight shape");
    // An op without attributes given some.
    assert_err(&around("  %0 = relu %x {alpha=1.0} : f32[2,3]  # \"a\""), 2, 17, "`relu` has no attribute `alpha`");
    // Typed values.
    assert_err(&around("  %0 = cast %x {to=f128} : f32[2,3]  # \"a\""), 2, 20, "unknown dtype `f128`");
    assert_err(&around("  %0 = clip %x {min=zero, max=1.0} : f32[2,3]  # \"a\""), 2, 21, "must be a number");
    assert_err(&around("  %0 = softmax %x {axis=1.5} : f32[2,3]  # \"a\""), 2, 25, "must be an integer");
    assert_err(&around("  %0 = reduce_sum %x {axes=[1], keepdims=1} : f32[2,1]  # \"a\""), 2, 42, "`true` or `false`");
}

#[test]
fn epilogue_syntax() {
    let parse_ep = |s: &str| parse::parse_op_for_test("qmatmul", &format!("{{epilogue={s}}}"));
    assert_eq!(
        parse_ep("[bias, requant, clamp(-128,127)]").unwrap(),
        Op::QMatMul { epilogue: vec![Epilogue::Bias, Epilogue::Requant, Epilogue::Clamp { lo: -128, hi: 127 }] }
    );
    assert_eq!(parse_ep("[]").unwrap(), Op::QMatMul { epilogue: vec![] });
    for bad in ["[bias, relu]", "[clamp(1)]", "[clamp(0.5,1)]", "bias", "[clamp(0,1,2)]", "[[bias]]"] {
        assert!(matches!(parse_ep(bad), Err(IrError::Parse { .. })), "{bad} parsed");
    }
    // Nesting is bounded: deep garbage is an error, not a stack overflow.
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let (_, _, msg) = match parse_ep(&deep) {
        Err(IrError::Parse { line, col, msg }) => (line, col, msg),
        other => panic!("{other:?}"),
    };
    assert!(msg.contains("nest too deeply"), "{msg}");
}

#[test]
fn constant_problems() {
    let c = |decl: &str| around(&format!("  %9 = const {decl}  # \"k\"\n  %0 = relu %x : f32[2,3]  # \"a\""));
    parse(&c("f32[2] = [1, -2.5e3]")).unwrap();
    assert_err(&c("f32[3] = [1, 2]"), 2, 23, "has 2 values, but its type f32[3] holds 3");
    assert_err(&c("u8[2] = [1, 300]"), 2, 26, "300 is out of range for u8");
    assert_err(&c("i8[1] = [1.5]"), 2, 23, "expected an integer");
    assert_err(&c("bool[1] = [1]"), 2, 25, "`true` or `false`");
    assert_err(&c("f32[N] = [1]"), 2, 14, "fixed shape");
    assert_err(&c("f32[2] = [1, nan]"), 2, 27, "expected a number");
    assert_err(
        &c("f32[2] #0a1b2c3d [1.0, 2.0]"),
        2,
        21,
        "constant %9 is printed in summary form and cannot be parsed; print with full constants",
    );
    assert_err(&around("  %0, %1 = const f32[1] = [1]  # \"k\""), 2, 12, "exactly one result");
    assert_err(&c("i8<axis=0: 0.1:0>[2] = [1, 2]"), 2, 14, "1 per-axis scales for axis 0 of size 2");
    assert_err(&c("i8<axis=1: 0.1:0>[1] = [1]"), 2, 14, "axis 1 is out of range");
    let text = "graph g(%x: u8<axis=0: 0.1:0, 0.2:0>[N]) -> (y: u8<axis=0: 0.1:0, 0.2:0>[N]) {\n  return %x\n}";
    assert_err(text, 1, 13, "graph input %x: 2 per-axis scales for axis 0 of size N");
}

/// An input the graph was specialized on prints in the signature, at its place, with its value;
/// it is not a graph input and parses back as the same record.
#[test]
fn specialized_inputs() {
    let text = "\
graph g(%a: f32[2,3], %k: i64[2] = [3, 2], %x: f32[2,3]) -> (y: f32[2,3]) {
  %0 = add %a, %x : f32[2,3]  # \"s\"
  return %0
}
";
    let g = parse(text).unwrap();
    assert_eq!(g.inputs().len(), 2);
    let [k] = g.specialized() else { panic!("one specialized input: {:?}", g.specialized()) };
    assert_eq!((k.name.as_str(), k.position, k.value.to_i64_vec()), ("k", 1, Some(vec![3, 2])));
    assert_eq!(print(&g, ConstMode::Full).unwrap(), text);
    let big = text.replace("i64[2] = [3, 2]", "i64[20] = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9]");
    let summary = print_default(&parse(&big).unwrap()).unwrap();
    assert!(summary.starts_with("graph g(%a: f32[2,3], %k: i64[20] #"), "{summary}");
    let line = summary.lines().next().unwrap().to_string();
    assert_err(&format!("{line}\n  return %a\n}}\n"), 1, 35, "specialized input %k is printed in summary form");
    let sig = |decl: &str| format!("graph g(%a: f32[2], {decl}) -> (y: f32[2]) {{\n  return %a\n}}\n");
    assert_err(&sig("%k: i64[3] = [1, 2]"), 1, 34, "specialized input %k has 2 values, but its type i64[3] holds 3");
    assert_err(&sig("%k: i64[N] = [1]"), 1, 25, "fixed shape");
    assert_err(&sig("%a: i64[1] = [1]"), 1, 21, "graph input %a is declared twice");
    assert!(parse(&sig("%k: u8<0.5:0>[1] = [1]")).is_err());
}

/// A graph input's wire type (the element type the source model declares, see `crate::wire`)
/// prints after its type and parses back; it must be held in its IR type.
#[test]
fn wire_types() {
    let text = "\
graph g(%a: f16[2] wire f8e4m3fn, %b: i8[2] wire i4, %k: u8[1] wire u2 = [3], %c: f32[2]) -> (y: f32[2], z: i8[2]) {
  %0 = cast %a {to=f32} : f32[2]  # \"c\"
  %1 = add %0, %c : f32[2]  # \"s\"
  return %1, %b
}
";
    let g = parse(text).unwrap();
    assert_eq!(
        (g.wire("a"), g.wire("b"), g.wire("k"), g.wire("c")),
        (Some(crate::WireType::F8E4M3FN), Some(crate::WireType::I4), Some(crate::WireType::U2), None)
    );
    assert_eq!(print(&g, ConstMode::Full).unwrap(), text);
    let sig = |decl: &str| format!("graph g({decl}) -> (y: f32[2]) {{\n  return %a\n}}\n");
    assert_err(
        &sig("%a: f32[2] wire f8e4m3fn"),
        1,
        25,
        "graph input %a is declared f8e4m3fn, which the IR holds as f16, not f32",
    );
    assert_err(&sig("%a: f16[2] wire f9"), 1, 25, "unknown wire type `f9`");
}

#[test]
fn node_names_and_origins() {
    assert_err(&around("  %0 = relu %x : f32[2,3]"), 3, 3, "expected `# \"name\"`");
    assert_err(&around("  %0 = relu %x : f32[2,3]  # r"), 2, 30, "quoted string");
    assert_err(&around("  %0 = relu %x : f32[2,3]  # \"r\" from [\"a\", ]"), 2, 45, "quoted string");
    let g = parse(&around("  %0 = relu %x : f32[2,3]  # \"r\" from [\"a\", \"b\\\"c\"]")).unwrap();
    let id = g.outputs()[0].value.node;
    assert_eq!(g.node(id).from, vec!["a".to_string(), "b\"c".to_string()]);
    // `from []` is accepted and prints as nothing.
    let g = parse(&around("  %0 = relu %x : f32[2,3]  # \"r\" from []")).unwrap();
    assert_eq!(print(&g, ConstMode::Full).unwrap(), SMALL);
}

#[test]
fn returns_are_checked() {
    let text = "graph g(%x: f32[2,3]) -> (y: f32[2,3]) {\n  return %x, %x\n}";
    assert_err(text, 2, 3, "declares 1 outputs but returns 2 values");
    let text = "graph g(%x: f32[2,3]) -> (y: f32[3,2]) {\n  return %x\n}";
    assert_err(text, 2, 10, "%x is f32[2,3] but output y is declared f32[3,2]");
    let text = "graph g(%x: f32[2,3]) -> (y: f32[2,3]) {\n  return _\n}";
    assert_err(text, 2, 10, "expected a returned value");
}

#[test]
fn verifier_errors_pass_through() {
    // No outputs: not a syntax problem, the verifier's.
    let err = parse("graph g(%x: f32[1]) -> () {\n  return\n}").unwrap_err();
    assert_eq!(err, IrError::Graph("the graph has no outputs".into()));
}

#[test]
fn lexical_errors() {
    assert_err(&around("  %0 = relu %x : f32[2,3]  # \"r"), 2, 30, "unterminated string");
    assert_err(&around("  %0 = relu %x : f32[2,3]  # \"r\\q\""), 2, 32, "invalid escape `\\q`");
    assert_err(&around("  %0 = relu %x : f32[2,3]  # \"\\ud800\""), 2, 31, "unpaired surrogate");
    assert_err(&around("  %0 = relu %x : f32[2,3]  # \"\\u12\""), 2, 31, "4 hex digits");
    assert_err(&around("  %0 = relu %x ; f32[2,3]  # \"r\""), 2, 16, "unexpected character ';'");
    assert_err(&around("  %0 = relu % : f32[2,3]  # \"r\""), 2, 13, "after `%`");
    assert_err(&around("  %0 = relu %x - f32[2,3]  # \"r\""), 2, 16, "after `-`");
    assert_err(&around("  %99999999999999999999999 = relu %x : f32[2,3]  # \"r\""), 2, 3, "invalid value number");
    // Columns count characters, not bytes.
    assert_err(&around("  %0 = relu %x : f32[2,3]  # \"é\" é"), 2, 34, "unexpected character 'é'");
}

#[test]
fn string_escapes_round_trip() {
    let names = ["plain", "a b", "quote\"back\\slash", "tab\tnl\ncr\r", "\u{1}\u{1f}\u{7f}", "ünï 😀", ""];
    for name in names {
        let q = quote(name);
        let text = around(&format!("  %0 = relu %x : f32[2,3]  # {q}"));
        let g = parse(&text).unwrap();
        assert_eq!(g.node(g.outputs()[0].value.node).name, name);
        assert_eq!(print(&g, ConstMode::Full).unwrap(), text);
    }
    // JSON escapes the printer does not use are read too.
    let text = around("  %0 = relu %x : f32[2,3]  # \"\\/\\b\\f\\u00e9\\ud83d\\ude00\"");
    let g = parse(&text).unwrap();
    assert_eq!(g.node(g.outputs()[0].value.node).name, "/\u{8}\u{c}é😀");
}

#[test]
fn garbage_and_truncated_inputs_are_errors() {
    let inputs = [
        "",
        "   \n\n",
        "// only a comment",
        "}",
        "graph",
        "graph g",
        "graph g(",
        "graph g(%x",
        "graph g(%x: f32[1]) -> (y: f32[1]) {",
        "graph g(%x: f32[1]) -> (y: f32[1]) { return %x",
        "graph g(%x: f32[1]) -> (y: f32[1]) { return %x } trailing",
        "graph g(%x: f32[1]) -> (y: f32[1]) { return %x }}",
        "\u{0}\u{1}\u{2}",
        "graph 3(%x: f32[1]) -> (y: f32[1]) { return %x }",
        "graph a*b(%x: f32[1]) -> (y: f32[1]) { return %x }",
        "graph g(%x: f32[1]) -> (y: f32[1]) { %0 = }",
        "graph g(%x: f32[1]) -> (y: f32[1]) { %0 = relu }",
        "graph g(%x: f32[1]) -> (y: f32[1]) { %0 = relu %x, }",
        "graph g(%x: f32[1]) -> (y: f32[1]) { %0 = relu %x : }",
        "graph g(%x: f32[1]) -> (y: f32[1]) { %0 = relu %x : f32[1] # }",
        "graph g(%x: f32<[1]) -> (y: f32[1]) { return %x }",
        "graph g(%x: f32<axis=>[1]) -> (y: f32[1]) { return %x }",
        "graph g(%x: f32<axis=0:>[1]) -> (y: f32[1]) { return %x }",
        "graph g(%x: f32[1]) -> (y: f32[1]) { %0 = const f32[1] = [1 # \"k\" return %x }",
        "graph g(%x: f32[1]) -> (y: f32[1]) { %0 = const f32[1] #",
        "graph g(%x: f32[1]) -> (y: f32[1]) { %0 = const f32[18446744073709551615,18446744073709551615] = [] # \"k\" return %x }",
        "graph g(%x: f32[1]) -> (y: f32[1]) { %0 = const f32[] = [] # \"k\" return %x }",
        "graph g(%x: f32[1]) -> (y: f32[1]) { %0 = const f32[1] = [1e999999] # \"k\" return %x }",
        "graph g(%x: f32[1]) -> (y: f32[1]) { %0 = conv %x {kernel=[1,1] strides=[1]} : f32[1] # \"c\" return %x }",
        "-",
        "->",
        "%",
        "#",
        "\"",
        "graph g(%x: f32[1]) -> (y: f32[1]) { return %x } // late comment",
    ];
    for text in inputs {
        assert!(parse(text).is_err(), "{text:?} parsed");
    }
}

#[test]
fn every_prefix_of_a_graph_is_an_error() {
    let g = sample_graph();
    let text = print(&g, ConstMode::Full).unwrap();
    let body = text.trim_end();
    for (i, _) in body.char_indices() {
        assert!(parse(&body[..i]).is_err(), "prefix {:?} parsed", &body[..i]);
    }
}

/// Deterministic mutations of printed text (characters dropped, duplicated or replaced by
/// characters that matter to the grammar): any outcome but a panic is fine.
#[test]
fn mutated_text_never_panics() {
    let text = print(&sample_graph(), ConstMode::Full).unwrap();
    let chars: Vec<char> = text.chars().collect();
    let interesting: Vec<char> = "%#[](){}<>,:=-_\"\\ \n0123456789eNaxif.*".chars().collect();
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = |n: usize| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state % n as u64) as usize
    };
    for _ in 0..3000 {
        let mut m = chars.clone();
        for _ in 0..1 + next(3) {
            let at = next(m.len());
            match next(3) {
                0 => {
                    m.remove(at);
                }
                1 => m.insert(at, interesting[next(interesting.len())]),
                _ => m[at] = interesting[next(interesting.len())],
            }
        }
        let s: String = m.into_iter().collect();
        if let Ok(g) = parse(&s) {
            // Whatever parses prints, and prints stably.
            let p = print(&g, ConstMode::Full).unwrap();
            assert_eq!(print(&parse(&p).unwrap(), ConstMode::Full).unwrap(), p);
        }
    }
}

// ---------------------------------------------------------------- printing

/// A graph built through the API, with nodes created out of schedule order, a dead node and every
/// kind of operand.
fn sample_graph() -> Graph {
    let mut g = Graph::new("sample");
    let x = g.add_input("x", TensorType::new(DType::F32, Shape(vec![Dim::Sym("N".into()), Dim::Fixed(4)])));
    let w = g.add_const("w", Tensor::from_f32(vec![3, 4], (0..12).map(|i| i as f32 * 0.25 - 1.0).collect()));
    g.add_const("dead", Tensor::scalar_f32(1.0));
    let b = g.add_const("b", Tensor::from_f32(vec![3], vec![0.5, -0.5, 1.5]));
    let gemm = Op::Gemm { alpha: 1.0, beta: 1.0, trans_a: false, trans_b: true };
    let y = g.add_node(gemm, vec![Some(x), Some(w), Some(b)], None, "fc").unwrap();
    let q = g
        .add_node(
            Op::Quantize,
            vec![Some(y)],
            Some(vec![TensorType::quantized(
                DType::U8,
                Shape(vec![Dim::Sym("N".into()), Dim::Fixed(3)]),
                QuantParams::per_tensor(0.05, 128),
            )]),
            "q",
        )
        .unwrap();
    let dq = g.add_node(Op::Dequantize, vec![Some(q)], None, "dq").unwrap();
    g.node_mut(dq.node).from = vec!["a".into(), "b".into()];
    let r = g.add_node(Op::Clip { min: f32::NEG_INFINITY, max: 6.0 }, vec![Some(dq)], None, "clip").unwrap();
    g.add_output("out", r);
    g.add_output("raw", y);
    g
}

#[test]
fn printing_follows_the_schedule_and_renumbers() {
    let g = sample_graph();
    let text = print(&g, ConstMode::Full).unwrap();
    let want = "\
graph sample(%x: f32[N,4]) -> (out: f32[N,3], raw: f32[N,3]) {
  %0 = const f32[3,4] = [-1.0, -0.75, -0.5, -0.25, 0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 1.75]  # \"w\"
  %1 = const f32[3] = [0.5, -0.5, 1.5]  # \"b\"
  %2 = gemm %x, %0, %1 {alpha=1.0, beta=1.0, trans_a=false, trans_b=true} : f32[N,3]  # \"fc\"
  %3 = quantize %2 : u8<0.05:128>[N,3]  # \"q\"
  %4 = dequantize %3 : f32[N,3]  # \"dq\" from [\"a\", \"b\"]
  %5 = clip %4 {min=-inf, max=6.0} : f32[N,3]  # \"clip\"
  return %5, %2
}
";
    assert_eq!(text, want);
    let g2 = parse(&text).unwrap();
    assert_eq!(print(&g2, ConstMode::Full).unwrap(), want);
    assert_eq!(g2.node_count(), 7);
}

fn short_digest(g: &Graph, v: Value) -> String {
    let Op::Const(t) = &g.node(v.node).op else { panic!("not a constant") };
    let d = t.digest();
    format!("{:08x}", (d as u32) ^ ((d >> 32) as u32))
}

#[test]
fn summary_constants() {
    let mut g = Graph::new("s");
    let big = g.add_const("big", Tensor::from_f32(vec![4, 5], (0..20).map(|i| i as f32 - 3.5).collect()));
    let nan = g.add_const("nan", Tensor::from_f32(vec![21], vec![f32::NAN; 21]));
    let small = g.add_const("small", Tensor::from_f32(vec![2], vec![1.0, 2.0]));
    let empty = g.add_const("empty", Tensor::from_f32(vec![0, 3], vec![]));
    for (name, v) in [("a", big), ("b", nan), ("c", small), ("d", empty)] {
        g.add_output(name, v);
    }
    let text = print_default(&g).unwrap();
    let want = format!(
        "graph s() -> (a: f32[4,5], b: f32[21], c: f32[2], d: f32[0,3]) {{
  %0 = const f32[4,5] #{} [-3.5, 15.5]  # \"big\"
  %1 = const f32[21] #{} []  # \"nan\"
  %2 = const f32[2] = [1.0, 2.0]  # \"small\"
  %3 = const f32[0,3] = []  # \"empty\"
  return %0, %1, %2, %3
}}
",
        short_digest(&g, big),
        short_digest(&g, nan)
    );
    assert_eq!(text, want);
    assert_err(&text, 2, 23, "constant %0 is printed in summary form");
    // A larger limit inlines more; full mode parses back and summarizes the same way.
    let inline = print(&g, ConstMode::Summary { inline_limit: 20 }).unwrap();
    assert!(inline.contains("%0 = const f32[4,5] = [-3.5, -2.5, "), "{inline}");
    assert!(inline.contains("%1 = const f32[21] #"), "{inline}");
    let full = print(&g, ConstMode::Full).unwrap();
    assert_eq!(print_default(&parse(&full).unwrap()).unwrap(), text);
}

#[test]
fn quantized_constants_print_their_declared_type() {
    let mut g = Graph::new("q");
    let ty = TensorType::quantized(
        DType::I8,
        Shape::fixed(&[2, 1]),
        QuantParams::PerAxis { axis: 0, scales: vec![0.5, 0.25], zero_points: vec![0, -1] },
    );
    let t = Tensor::new(vec![2, 1], TensorData::I8(vec![-128, 127])).unwrap();
    let v = g.add_const_typed("w", t, ty);
    g.add_output("w", v);
    let text = print(&g, ConstMode::Full).unwrap();
    assert!(text.contains("%0 = const i8<axis=0: 0.5:0, 0.25:-1>[2,1] = [-128, 127]  # \"w\""), "{text}");
    assert_eq!(print(&parse(&text).unwrap(), ConstMode::Full).unwrap(), text);
}

#[test]
fn types_print_as_their_display_form() {
    let types = [
        TensorType::new(DType::F32, Shape(vec![])),
        TensorType::new(DType::BF16, Shape(vec![Dim::Sym("N*3".into()), Dim::Fixed(0)])),
        TensorType::quantized(DType::U8, Shape::fixed(&[1, 2]), QuantParams::per_tensor(1.0 / 255.0, 0)),
        TensorType::quantized(
            DType::I8,
            Shape::fixed(&[2, 1, 3, 3]),
            QuantParams::PerAxis { axis: 0, scales: vec![0.01, 1e-7], zero_points: vec![0, -3] },
        ),
    ];
    for t in types {
        assert_eq!(type_str(&t), t.to_string());
    }
    // Symbols that are not plain are quoted (Display does not).
    let t = TensorType::new(DType::F32, Shape(vec![Dim::Sym("batch size".into()), Dim::Sym("".into())]));
    assert_eq!(type_str(&t), "f32[\"batch size\",\"\"]");
}

#[test]
fn names_are_quoted_when_needed() {
    assert!(is_plain_name("conv1.weight") && is_plain_name("_x9") && !is_plain_name("9x"));
    assert!(!is_plain_name("") && !is_plain_name("a/b") && !is_plain_name("a*b") && !is_plain_name("é"));
    assert!(is_plain_dim("N*3") && !is_plain_dim("a.b") && !is_plain_dim("3"));
    let mut g = Graph::new("my graph");
    let x = g.add_input("gpu_0/data_0", TensorType::new(DType::F32, Shape::fixed(&[1])));
    let y = g.add_input("0", TensorType::new(DType::F32, Shape::fixed(&[1])));
    let s = g.add_node(Op::Binary(BinaryOp::Add), vec![Some(x), Some(y)], None, "add").unwrap();
    g.add_output("gpu_0/softmax_1", s);
    g.add_output("0", y);
    let text = print(&g, ConstMode::Full).unwrap();
    let want = "\
graph \"my graph\"(%\"gpu_0/data_0\": f32[1], %\"0\": f32[1]) -> (\"gpu_0/softmax_1\": f32[1], \"0\": f32[1]) {
  %0 = add %\"gpu_0/data_0\", %\"0\" : f32[1]  # \"add\"
  return %0, %\"0\"
}
";
    assert_eq!(text, want);
    assert_eq!(print(&parse(&text).unwrap(), ConstMode::Full).unwrap(), want);
}

#[test]
fn printing_a_broken_graph_errors_or_prints_but_never_panics() {
    // A cycle.
    let mut g = Graph::new("cyc");
    let x = g.add_input("x", TensorType::new(DType::F32, Shape::fixed(&[1])));
    let ty = vec![TensorType::new(DType::F32, Shape::fixed(&[1]))];
    let a = g.add_node_unchecked(Op::Unary(UnaryOp::Relu), vec![Some(x)], ty.clone(), "a".into());
    let b = g.add_node_unchecked(Op::Unary(UnaryOp::Relu), vec![Some(Value::new(a, 0))], ty.clone(), "b".into());
    g.set_input(a, 0, Some(Value::new(b, 0)));
    g.add_output("y", Value::new(b, 0));
    assert!(matches!(print(&g, ConstMode::Full), Err(IrError::Cycle(_))));

    // An output that names a missing port.
    let mut g = Graph::new("bad");
    let x = g.add_input("x", TensorType::new(DType::F32, Shape::fixed(&[1])));
    g.add_output("y", Value::new(x.node, 3));
    assert!(print(&g, ConstMode::Full).is_err());

    // An input node that is not a graph input.
    let mut g = Graph::new("stray");
    let s = g.add_node_unchecked(Op::Input, vec![], ty.clone(), "s".into());
    let r = g.add_node_unchecked(Op::Unary(UnaryOp::Relu), vec![Some(Value::new(s, 0))], ty.clone(), "r".into());
    g.add_output("y", Value::new(r, 0));
    assert!(print(&g, ConstMode::Full).is_err());

    // Wrong types and arity still print (the text then fails to parse, with a location).
    let mut g = Graph::new("wrong");
    let x = g.add_input("x", TensorType::new(DType::F32, Shape::fixed(&[1])));
    let r = g.add_node_unchecked(
        Op::Binary(BinaryOp::Add),
        vec![Some(x)],
        vec![TensorType::new(DType::I8, Shape::fixed(&[7]))],
        "r".into(),
    );
    g.add_output("y", Value::new(r, 0));
    let text = print(&g, ConstMode::Full).unwrap();
    assert_eq!(text.lines().nth(1).unwrap(), "  %0 = add %x : i8[7]  # \"r\"");
    assert!(matches!(parse(&text), Err(IrError::Parse { line: 2, .. })));
    // A constant whose tensor does not match its type.
    let mut g = Graph::new("c");
    let v = g.add_const_typed("k", Tensor::scalar_f32(1.0), TensorType::new(DType::I8, Shape::fixed(&[2])));
    g.add_output("k", v);
    assert_eq!(print(&g, ConstMode::Full).unwrap().lines().nth(1).unwrap(), "  %0 = const i8[2] = [1.0]  # \"k\"");
}

// ---------------------------------------------------------------- every op, both directions

/// One sample of every op (with attributes that are not defaults), and a check that the samples
/// cover every variant: adding an op without extending the text form fails to compile here.
fn every_op() -> Vec<Op> {
    let conv =
        ConvAttrs { kernel: vec![3, 1], strides: vec![2, 1], pads: vec![1, 0, 1, 0], dilations: vec![1, 2], group: 4 };
    let pool = PoolAttrs {
        kernel: vec![2, 2],
        strides: vec![2, 1],
        pads: vec![0, 1, 0, 1],
        dilations: vec![1, 1],
        ceil_mode: true,
        count_include_pad: false,
    };
    let ep = vec![Epilogue::Bias, Epilogue::Requant, Epilogue::Clamp { lo: -128, hi: 127 }];
    let mut ops = vec![
        Op::Conv(conv.clone()),
        Op::BatchNorm { epsilon: 1e-5 },
        Op::LeakyRelu { alpha: 0.01 },
        Op::Clip { min: f32::NEG_INFINITY, max: f32::INFINITY },
        Op::HardSigmoid { alpha: 0.2, beta: 0.5 },
        Op::Where,
        Op::MatMul,
        Op::Gemm { alpha: 0.5, beta: 2.0, trans_a: true, trans_b: false },
        Op::MaxPool(pool.clone()),
        Op::AveragePool(pool.clone()),
        Op::GlobalAveragePool,
        Op::GlobalMaxPool,
        Op::Lrn { size: 5, alpha: 1e-4, beta: 0.75, bias: 1.0 },
        Op::Softmax { axis: -1 },
        Op::LogSoftmax { axis: 1 },
        Op::LayerNorm { axis: -2, epsilon: 1e-6 },
        Op::ReduceMean { axes: vec![-1, 2], keepdims: true },
        Op::ReduceSum { axes: vec![], keepdims: false },
        Op::ReduceMax { axes: vec![0], keepdims: false },
        Op::Reshape { shape: vec![0, -1, 3] },
        Op::Flatten { axis: 0 },
        Op::Transpose { perm: vec![0, 3, 1, 2] },
        Op::Concat { axis: -3 },
        Op::Slice { starts: vec![0, -1], ends: vec![i64::MAX, i64::MIN], axes: vec![1, 2], steps: vec![1, -1] },
        Op::Gather { axis: 2 },
        Op::Unsqueeze { axes: vec![0, 3] },
        Op::Squeeze { axes: vec![] },
        Op::Split { axis: 1, sizes: vec![2, 3, 1] },
        Op::Expand { shape: vec![4, 1, 5] },
        Op::Cast { to: DType::BF16 },
        Op::Identity,
        Op::Quantize,
        Op::Dequantize,
        Op::Requantize,
        Op::DynamicQuantize,
        Op::ConvInteger(conv.clone()),
        Op::MatMulInteger,
        Op::QConv { conv, epilogue: ep.clone() },
        Op::QMatMul { epilogue: vec![Epilogue::Dequant] },
        Op::QGemm { alpha: 0.25, trans_a: false, trans_b: true, epilogue: ep },
        Op::QAdd,
        Op::QMul,
        Op::QGlobalAveragePool,
        Op::QAveragePool(pool),
        Op::QConcat { axis: 1 },
        Op::Shape { start: 1, end: 3 },
        Op::Range { start: DimExpr::fixed(0), limit: DimExpr::product(1, vec![(0, 1)]), delta: 1, dtype: DType::I64 },
        Op::ReshapeDyn { shape: vec![DimExpr::product(2, vec![(1, 0), (2, 1)]), DimExpr::fixed(-1)] },
        Op::ExpandDyn { shape: vec![DimExpr::product(1, vec![(1, 0)]), DimExpr::fixed(1)] },
        Op::GatherElements { axis: -1 },
        Op::ConvTranspose(ConvTransposeAttrs {
            kernel: vec![3, 2],
            strides: vec![2, 1],
            pads: vec![1, 0, -1, 2],
            dilations: vec![1, 2],
            group: 2,
            output_padding: vec![1, 0],
        }),
        Op::Resize(ResizeAttrs {
            mode: ResizeMode::Cubic,
            coord: CoordMode::TfCropAndResize,
            nearest: NearestMode::Ceil,
            cubic_a: -0.5,
            exclude_outside: true,
            extrapolation: -2.5,
            antialias: true,
            roi: vec![0.0, 0.1, 1.0, 0.9],
            target: ResizeTarget::Sizes { axes: vec![1], sizes: vec![7], policy: AspectPolicy::NotSmaller },
        }),
        Op::GroupNorm { groups: 4, epsilon: 1e-6 },
        Op::ArgMax { axis: -1, keepdims: true, select_last: false },
        Op::ArgMin { axis: 0, keepdims: false, select_last: true },
        Op::Pad { mode: PadMode::Wrap, pads: vec![1, -2, 0, 3], computed: vec![], value: -1e300 },
        Op::Tile { repeats: vec![1, 0, 3] },
        Op::GatherND { batch_dims: 1 },
        Op::ScatterElements { axis: -1, reduction: ScatterReduction::Mul },
        Op::ScatterND { reduction: ScatterReduction::None },
        Op::TopK { axis: -1, k: 3, largest: false },
        Op::CumSum { axis: 1, exclusive: true, reverse: false },
        Op::CumProd { axis: -1, exclusive: false, reverse: true },
        Op::Det,
        Op::GridSample { mode: ResizeMode::Cubic, padding: GridPadding::Reflection, align_corners: true },
        Op::ReduceProd { axes: vec![-1], keepdims: true },
        Op::NonZero { count: "nonzero_count".into() },
        Op::NonMaxSuppression { center_point_box: true, count: "K0".into() },
        Op::MaxPoolIndices {
            pool: PoolAttrs {
                kernel: vec![2, 2],
                strides: vec![1, 2],
                pads: vec![0, 1, 0, 1],
                dilations: vec![1, 1],
                ceil_mode: true,
                count_include_pad: false,
            },
            column_major: true,
        },
        Op::ConvWeightGrad(ConvAttrs {
            kernel: vec![3],
            strides: vec![2],
            pads: vec![1, 0],
            dilations: vec![1],
            group: 2,
        }),
        Op::MaxPoolGrad(PoolAttrs {
            kernel: vec![3, 3],
            strides: vec![2, 2],
            pads: vec![1, 1, 1, 1],
            dilations: vec![1, 1],
            ceil_mode: false,
            count_include_pad: false,
        }),
        Op::AveragePoolGrad(PoolAttrs {
            kernel: vec![2],
            strides: vec![1],
            pads: vec![1, 0],
            dilations: vec![1],
            ceil_mode: true,
            count_include_pad: true,
        }),
        Op::FakeQuantize { qmin: -128, qmax: 127 },
        Op::FakeQuantizeGrad { qmin: 0, qmax: 255 },
        Op::ClipGrad { min: 0.0, max: 6.0 },
    ];
    ops.extend(Op::UNARY.iter().map(|&u| Op::Unary(u)));
    ops.extend(Op::BINARY.iter().map(|&b| Op::Binary(b)));
    ops
}

/// The number of the last variant in [`variant`].
const LAST_VARIANT: usize = 78;

fn variant(op: &Op) -> usize {
    match op {
        Op::Input => 0,
        Op::Const(_) => 1,
        Op::Conv(_) => 2,
        Op::BatchNorm { .. } => 3,
        Op::Unary(_) => 4,
        Op::LeakyRelu { .. } => 5,
        Op::Clip { .. } => 6,
        Op::HardSigmoid { .. } => 7,
        Op::Binary(_) => 8,
        Op::Where => 9,
        Op::MatMul => 10,
        Op::Gemm { .. } => 11,
        Op::MaxPool(_) => 12,
        Op::AveragePool(_) => 13,
        Op::GlobalAveragePool => 14,
        Op::GlobalMaxPool => 15,
        Op::Lrn { .. } => 16,
        Op::Softmax { .. } => 17,
        Op::LogSoftmax { .. } => 18,
        Op::LayerNorm { .. } => 19,
        Op::ReduceMean { .. } => 20,
        Op::ReduceSum { .. } => 21,
        Op::ReduceMax { .. } => 22,
        Op::Reshape { .. } => 23,
        Op::Flatten { .. } => 24,
        Op::Transpose { .. } => 25,
        Op::Concat { .. } => 26,
        Op::Slice { .. } => 27,
        Op::Gather { .. } => 28,
        Op::Unsqueeze { .. } => 29,
        Op::Squeeze { .. } => 30,
        Op::Split { .. } => 31,
        Op::Expand { .. } => 32,
        Op::Cast { .. } => 33,
        Op::Identity => 34,
        Op::Quantize => 35,
        Op::Dequantize => 36,
        Op::Requantize => 37,
        Op::DynamicQuantize => 38,
        Op::ConvInteger(_) => 39,
        Op::MatMulInteger => 40,
        Op::QConv { .. } => 41,
        Op::QMatMul { .. } => 42,
        Op::QGemm { .. } => 43,
        Op::QAdd => 44,
        Op::QMul => 45,
        Op::QGlobalAveragePool => 46,
        Op::QAveragePool(_) => 47,
        Op::QConcat { .. } => 48,
        Op::Shape { .. } => 49,
        Op::Range { .. } => 50,
        Op::ReshapeDyn { .. } => 51,
        Op::ExpandDyn { .. } => 52,
        Op::GatherElements { .. } => 53,
        Op::ConvTranspose(_) => 54,
        Op::Resize(_) => 55,
        Op::GroupNorm { .. } => 56,
        Op::Pad { .. } => 57,
        Op::Tile { .. } => 58,
        Op::ArgMax { .. } => 59,
        Op::ArgMin { .. } => 60,
        Op::GatherND { .. } => 61,
        Op::ScatterElements { .. } => 62,
        Op::ScatterND { .. } => 63,
        Op::TopK { .. } => 64,
        Op::CumSum { .. } => 65,
        Op::CumProd { .. } => 66,
        Op::Det => 67,
        Op::GridSample { .. } => 68,
        Op::ReduceProd { .. } => 69,
        Op::NonZero { .. } => 70,
        Op::NonMaxSuppression { .. } => 71,
        Op::MaxPoolIndices { .. } => 72,
        Op::ConvWeightGrad(_) => 73,
        Op::MaxPoolGrad(_) => 74,
        Op::AveragePoolGrad(_) => 75,
        Op::FakeQuantize { .. } => 76,
        Op::FakeQuantizeGrad { .. } => 77,
        Op::ClipGrad { .. } => 78,
    }
}

#[test]
fn every_op_prints_and_parses_back() {
    let ops = every_op();
    let mut covered: Vec<usize> = ops.iter().map(variant).collect();
    covered.sort_unstable();
    covered.dedup();
    assert_eq!(covered, (2..=LAST_VARIANT).collect::<Vec<_>>(), "every op but input and const has a sample");
    let mut names = std::collections::HashSet::new();
    for op in ops {
        assert!(names.insert(op.name()), "op name {} is used twice", op.name());
        assert!(ops::is_op_name(op.name()), "{}", op.name());
        let attrs = ops::print_attrs(&op);
        let text = if attrs.is_empty() {
            String::new()
        } else {
            let items: Vec<String> = attrs.iter().map(|(k, v)| format!("{k}={v}")).collect();
            format!("{{{}}}", items.join(", "))
        };
        let back = parse::parse_op_for_test(op.name(), &text).unwrap_or_else(|e| panic!("{}: {e}", op.name()));
        assert_eq!(back, op, "{} {text}", op.name());
    }
    assert!(!ops::is_op_name("input") && !ops::is_op_name("const") && !ops::is_op_name("nope"));
}
