//! The tensor-size limit (`--max-tensor-bytes`) on both engines: a table of oversized graphs
//! that the reference interpreter and the JIT must refuse with the same message, and a child
//! process whose peak memory must stay near the limit while both engines refuse graphs whose
//! tensors would exceed it by far.

use qforge_codegen::{JitExecutable, JitOptions};
use qforge_ir::interp::{self, RunOptions};
use qforge_ir::{ConvAttrs, DType, Graph, Op, QuantParams, Shape, Tensor, TensorData, TensorType, Value};

const MIB: usize = 1 << 20;

fn ty(dtype: DType, dims: &[usize]) -> TensorType {
    TensorType::new(dtype, Shape::fixed(dims))
}

fn node(g: &mut Graph, op: Op, inputs: &[Value], name: &str) -> Value {
    g.add_node(op, inputs.iter().map(|&v| Some(v)).collect(), None, name).expect("a valid node")
}

fn conv1x1() -> ConvAttrs {
    ConvAttrs { kernel: vec![1, 1], strides: vec![1, 1], pads: vec![0, 0, 0, 0], dilations: vec![1, 1], group: 1 }
}

/// `Cast` of a u8 constant of `n` bytes to f32 (the result is four times the constant).
fn cast_of_constant(n: usize) -> (Graph, Vec<Tensor>) {
    let mut g = Graph::new("cast_of_constant");
    let c = g.add_const("big_u8", Tensor::new(vec![n], TensorData::U8(vec![7; n])).expect("u8 tensor"));
    let y = node(&mut g, Op::Cast { to: DType::F32 }, &[c], "cast_big");
    g.add_output("y", y);
    (g, vec![])
}

/// `Expand` of a one-element u8 input to `rows x cols`, then a cast to f32.
fn expand_then_cast(rows: usize, cols: usize) -> (Graph, Vec<Tensor>) {
    let mut g = Graph::new("expand_then_cast");
    let x = g.add_input("x", ty(DType::U8, &[1, 1]));
    let e = node(&mut g, Op::Expand { shape: vec![rows as i64, cols as i64] }, &[x], "expand_big");
    let y = node(&mut g, Op::Cast { to: DType::F32 }, &[e], "cast");
    g.add_output("y", y);
    (g, vec![Tensor::new(vec![1, 1], TensorData::U8(vec![3])).expect("u8 tensor")])
}

/// A 1x1 convolution of a one-channel f32 image of `side x side` pixels to `cout` channels.
fn wide_conv(side: usize, cout: usize) -> (Graph, Vec<Tensor>) {
    let mut g = Graph::new("wide_conv");
    let x = g.add_input("x", ty(DType::F32, &[1, 1, side, side]));
    let w = g.add_const("w", Tensor::from_f32(vec![cout, 1, 1, 1], vec![0.5; cout]));
    let y = node(&mut g, Op::Conv(conv1x1()), &[x, w], "conv");
    g.add_output("y", y);
    (g, vec![Tensor::from_f32(vec![1, 1, side, side], vec![1.0; side * side])])
}

/// A sigmoid of an f16 input of `n` elements (the JIT computes it in f32 between a widening and
/// a rounding cast).
fn sigmoid_f16(n: usize) -> (Graph, Vec<Tensor>) {
    let mut g = Graph::new("sigmoid_f16");
    let x = g.add_input("x", ty(DType::F16, &[n]));
    let y = node(&mut g, Op::Unary(qforge_ir::UnaryOp::Sigmoid), &[x], "sig");
    g.add_output("y", y);
    (g, vec![Tensor::from_f32_slice(DType::F16, vec![n], &vec![0.5; n])])
}

type Build = fn() -> (Graph, Vec<Tensor>);

/// One oversized graph: what each engine must say under a 1 MiB limit (`None`: it runs).
struct Case {
    name: &'static str,
    build: Build,
    interp: Option<&'static str>,
    jit: Option<&'static str>,
}

/// Both engines refuse with `msg`.
const fn both(name: &'static str, build: Build, msg: &'static str) -> Case {
    Case { name, build, interp: Some(msg), jit: Some(msg) }
}

const CASES: &[Case] = &[
    both(
        "a cast of a constant (a host step) whose result is four times the constant",
        || cast_of_constant(600_000),
        "node `cast_big`: the result needs 2400000 bytes, more than the limit of 1048576 bytes (--max-tensor-bytes)",
    ),
    both(
        "a concat (a JIT kernel) of two inputs within the limit",
        || {
            let mut g = Graph::new("concat");
            let x = g.add_input("x", ty(DType::F32, &[200, 1000]));
            let y = node(&mut g, Op::Concat { axis: 0 }, &[x, x], "cat");
            g.add_output("y", y);
            (g, vec![Tensor::from_f32(vec![200, 1000], vec![1.0; 200_000])])
        },
        "node `cat`: the result needs 1600000 bytes, more than the limit of 1048576 bytes (--max-tensor-bytes)",
    ),
    both(
        "an expand (a host step) of one element",
        || expand_then_cast(2000, 1000),
        "node `expand_big`: the result needs 2000000 bytes, more than the limit of 1048576 bytes (--max-tensor-bytes)",
    ),
    both(
        "a gather (a host step) picking rows many times",
        || {
            let mut g = Graph::new("gather");
            let x = g.add_input("x", ty(DType::F32, &[10, 1000]));
            let idx = g.add_const("idx", Tensor::from_i64(vec![300], (0..300).map(|i| i % 10).collect()));
            let y = node(&mut g, Op::Gather { axis: 0 }, &[x, idx], "gather");
            g.add_output("y", y);
            (g, vec![Tensor::from_f32(vec![10, 1000], vec![2.0; 10_000])])
        },
        "node `gather`: the result needs 1200000 bytes, more than the limit of 1048576 bytes (--max-tensor-bytes)",
    ),
    both(
        "a big constant feeding a conv",
        || {
            let mut g = Graph::new("big_weights");
            let x = g.add_input("x", ty(DType::F32, &[1, 300, 2, 2]));
            let w = g.add_const("w", Tensor::from_f32(vec![300, 300, 3, 3], vec![0.01; 810_000]));
            let conv = ConvAttrs { kernel: vec![3, 3], pads: vec![1, 1, 1, 1], ..conv1x1() };
            let y = node(&mut g, Op::Conv(conv), &[x, w], "conv");
            g.add_output("y", y);
            (g, vec![Tensor::from_f32(vec![1, 300, 2, 2], vec![1.0; 1200])])
        },
        "node `w`: the constant needs 3240000 bytes, more than the limit of 1048576 bytes (--max-tensor-bytes)",
    ),
    both(
        "a conv (a JIT kernel) whose result outgrows its input",
        || wide_conv(256, 8),
        "node `conv`: the result needs 2097152 bytes, more than the limit of 1048576 bytes (--max-tensor-bytes)",
    ),
    both(
        "a dequantize (a JIT kernel) of u8 to f32",
        || {
            let mut g = Graph::new("dequantize");
            let q = TensorType::quantized(DType::U8, Shape::fixed(&[1, 300_000]), QuantParams::per_tensor(0.1, 3));
            let x = g.add_input("x", q);
            let y = node(&mut g, Op::Dequantize, &[x], "dq");
            g.add_output("y", y);
            (g, vec![Tensor::new(vec![1, 300_000], TensorData::U8(vec![5; 300_000])).expect("u8 tensor")])
        },
        "node `dq`: the result needs 1200000 bytes, more than the limit of 1048576 bytes (--max-tensor-bytes)",
    ),
    both(
        "a u8 add (a host step) whose interpreter widens both operands to i64",
        || {
            let mut g = Graph::new("add_u8");
            let x = g.add_input("x", ty(DType::U8, &[200_000]));
            let y = node(&mut g, Op::Binary(qforge_ir::BinaryOp::Add), &[x, x], "add_u8");
            g.add_output("y", y);
            (g, vec![Tensor::new(vec![200_000], TensorData::U8(vec![1; 200_000])).expect("u8 tensor")])
        },
        "node `add_u8`: a temporary needs 1600000 bytes, more than the limit of 1048576 bytes (--max-tensor-bytes)",
    ),
    both(
        "an f16 sigmoid: the JIT checks the graph as given before widening it to f32",
        || sigmoid_f16(600_000),
        "node `sig`: the result needs 1200000 bytes, more than the limit of 1048576 bytes (--max-tensor-bytes)",
    ),
    both(
        "an f16 sigmoid within the limit whose f32 copies (the interpreter's and the JIT's) are not",
        || sigmoid_f16(300_000),
        "node `sig`: a temporary needs 1200000 bytes, more than the limit of 1048576 bytes (--max-tensor-bytes)",
    ),
    Case {
        name: "a matmul with one output column: the JIT's packed copy pads it to 16 columns and keeps the narrow \
               GEMM's 4 rows",
        build: || {
            let mut g = Graph::new("matmul_one_column");
            let x = g.add_input("x", ty(DType::F32, &[2, 20_000]));
            let w = g.add_const("w", Tensor::from_f32(vec![20_000, 1], vec![0.25; 20_000]));
            let y = node(&mut g, Op::MatMul, &[x, w], "mm");
            g.add_output("y", y);
            (g, vec![Tensor::from_f32(vec![2, 20_000], vec![1.0; 40_000])])
        },
        interp: None,
        jit: Some(
            "node `mm`: the packed weight copy needs 1600000 bytes, more than the limit of 1048576 bytes \
             (--max-tensor-bytes)",
        ),
    },
];

/// The error text of each engine on `g` under `limit` (`None`: it ran).
fn run_both(g: &Graph, inputs: &[Tensor], limit: usize) -> (Option<String>, Option<String>) {
    let opts = RunOptions { max_tensor_bytes: limit as u128 };
    let interp = interp::run_observed(g, inputs, &opts, &mut |_, _| {}).err().map(|e| e.to_string());
    let jit_opts = JitOptions { check_guards: true, max_tensor_bytes: limit as u64, ..JitOptions::default() };
    let jit = JitExecutable::new(g.clone(), jit_opts).run(inputs).err().map(|e| e.to_string());
    (interp, jit)
}

#[test]
fn both_engines_refuse_oversized_graphs_with_the_same_message() {
    let mut failures = Vec::new();
    for case in CASES {
        let (g, inputs) = (case.build)();
        qforge_ir::verify::verify(&g).unwrap_or_else(|e| panic!("{}: {e}", case.name));
        let (interp, jit) = run_both(&g, &inputs, MIB);
        let want = (case.interp.map(str::to_string), case.jit.map(str::to_string));
        if (&interp, &jit) != (&want.0, &want.1) {
            failures.push(format!(
                "{}:\n  interpreter: {interp:?}\n  want:        {:?}\n  JIT:         {jit:?}\n  want:        {:?}",
                case.name, want.0, want.1
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn the_same_graphs_run_under_a_larger_limit() {
    for case in CASES {
        let (g, inputs) = (case.build)();
        let (interp, jit) = run_both(&g, &inputs, 8 * MIB);
        assert_eq!((interp, jit), (None, None), "{}", case.name);
    }
}

/// Peak resident memory of this process (`VmHWM`), in bytes.
#[cfg(target_os = "linux")]
fn peak_rss() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let kb = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<usize>().ok())
        .expect("a VmHWM line");
    kb * 1024
}

/// The limit of the memory test, and how far over the baseline plus the limit its peak may go
/// (the code, the JIT's arena of in-limit buffers, the interpreter's copies of in-limit tensors).
#[cfg(target_os = "linux")]
const RSS_LIMIT: usize = 64 * MIB;
#[cfg(target_os = "linux")]
const RSS_SLACK: usize = 200 * MIB;

/// Run by `peak_memory_stays_near_the_limit` in a child process (a no-op in the test run
/// itself): both engines on graphs whose tensors would take gigabytes, and a cast within the
/// limit whose old interpreter kernel made an 8-byte-per-element copy; prints the baseline and
/// the peak resident memory.
#[cfg(target_os = "linux")]
#[test]
fn rss_child() {
    if std::env::var_os("QFORGE_RSS_CHILD").is_none() {
        return;
    }
    let baseline = peak_rss();
    let cases: [(&str, Build, bool); 4] = [
        // 4 GiB of u8, then 16 GiB of f32
        ("expand", || expand_then_cast(1 << 16, 1 << 16), false),
        // a 4 GiB conv result from a 4 MiB image
        ("conv", || wide_conv(1024, 1024), false),
        // a 32 MiB constant cast to 128 MiB of f32
        ("cast", || cast_of_constant(32 * MIB), false),
        // a 48 MiB u8 constant cast to i8: within the limit, and no i64 copy of it (384 MiB)
        (
            "cast within the limit",
            || {
                let mut g = Graph::new("cast_u8_i8");
                let c = g.add_const("c", Tensor::new(vec![48 * MIB], TensorData::U8(vec![200; 48 * MIB])).expect("u8"));
                let y = node(&mut g, Op::Cast { to: DType::I8 }, &[c], "cast_i8");
                g.add_output("y", y);
                (g, vec![])
            },
            true,
        ),
    ];
    for (name, build, runs) in cases {
        let (g, inputs) = build();
        let (interp, jit) = run_both(&g, &inputs, RSS_LIMIT);
        assert_eq!(interp.is_none(), runs, "{name} (interpreter): {interp:?}");
        assert_eq!(jit.is_none(), runs, "{name} (JIT): {jit:?}");
        if !runs {
            assert_eq!(interp, jit, "{name}: the engines' messages differ");
        }
    }
    println!("rss-report baseline={baseline} peak={}", peak_rss());
}

#[cfg(target_os = "linux")]
#[test]
fn peak_memory_stays_near_the_limit() {
    let exe = std::env::current_exe().expect("the test binary");
    let out = std::process::Command::new(exe)
        .args(["--exact", "rss_child", "--nocapture", "--test-threads", "1"])
        .env("QFORGE_RSS_CHILD", "1")
        .output()
        .expect("the child runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "child failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    // The report may share a line with the harness's "test rss_child ... ".
    let report = stdout.split("rss-report ").nth(1).and_then(|r| r.lines().next()).expect("the child's report");
    let field = |k: &str| -> usize {
        report.split_whitespace().find_map(|kv| kv.strip_prefix(k)).and_then(|v| v.parse().ok()).expect("a number")
    };
    let (baseline, peak) = (field("baseline="), field("peak="));
    println!("peak RSS {} MiB over a baseline of {} MiB", (peak - baseline) / MIB, baseline / MIB);
    assert!(
        peak < baseline + RSS_LIMIT + RSS_SLACK,
        "peak RSS {peak} bytes is more than the limit ({RSS_LIMIT}) plus {RSS_SLACK} over the baseline {baseline}"
    );
}
