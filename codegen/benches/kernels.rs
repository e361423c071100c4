//! `cargo bench -p qforge-codegen --bench kernels`: GMAC/s of the generated conv and matmul
//! kernels by shape (ResNet-18 and MobileNetV2 layers), int8, f32 and bf16 (the bf16 GEMM where
//! the CPU has AVX512-BF16, else bf16 widened to the f32 kernels), with the native
//! microkernels and with the Cranelift-only GEMMs. Each case is a one-node graph compiled by the
//! JIT; the time is the kernel step's own (im2col, microkernel calls and epilogue included,
//! layout conversions of the graph's input and output excluded), the median of the timed runs.
//!
//! `QFORGE_BENCH_FILTER=substring` runs only the matching cases.
//!
//! First it prints the peak multiply-add rate of one core for each dot-product instruction the
//! CPU has (`peak` lines: twelve independent accumulator chains of one instruction in a loop, the
//! best of three runs), the ceiling each kernel's GMAC/s is read against.

use qforge_codegen::{JitExecutable, JitOptions, Microkernels};
use qforge_ir::{ConvAttrs, DType, Epilogue, Graph, Op, QuantParams, Shape, Tensor, TensorData, TensorType};
use std::time::Duration;

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

#[derive(Clone, Copy)]
struct Conv {
    name: &'static str,
    cin: usize,
    hw: usize,
    cout: usize,
    k: usize,
    stride: usize,
    depthwise: bool,
}

fn conv_graph(c: &Conv, ty: DType, rng: &mut Rng) -> Graph {
    let int8 = ty == DType::U8;
    let mut g = Graph::new(c.name);
    let group = if c.depthwise { c.cin } else { 1 };
    let cin_g = c.cin / group;
    let wshape = vec![c.cout, cin_g, c.k, c.k];
    let nw: usize = wshape.iter().product();
    let attrs = ConvAttrs {
        kernel: vec![c.k, c.k],
        strides: vec![c.stride, c.stride],
        pads: vec![c.k / 2; 4],
        dilations: vec![1, 1],
        group,
    };
    let oh = (c.hw + 2 * (c.k / 2) - c.k) / c.stride + 1;
    let xshape = Shape::fixed(&[1, c.cin, c.hw, c.hw]);
    if int8 {
        let x = g.add_input("x", TensorType::quantized(DType::U8, xshape, QuantParams::per_tensor(0.02, 128)));
        let w: Vec<i8> = (0..nw).map(|_| (rng.next() >> 56) as i8).collect();
        let wq = QuantParams::PerAxis { axis: 0, scales: vec![0.01; c.cout], zero_points: vec![0; c.cout] };
        let w = Tensor::new(wshape.clone(), TensorData::I8(w)).expect("weight");
        let w = g.add_const_typed("w", w, TensorType::quantized(DType::I8, Shape::fixed(&wshape), wq));
        let b = Tensor::new(vec![c.cout], TensorData::I32((0..c.cout as i32).collect())).expect("bias");
        let b = g.add_const("b", b);
        let out =
            TensorType::quantized(DType::U8, Shape::fixed(&[1, c.cout, oh, oh]), QuantParams::per_tensor(0.05, 0));
        let op = Op::QConv {
            conv: attrs,
            epilogue: vec![Epilogue::Bias, Epilogue::Requant, Epilogue::Clamp { lo: 0, hi: 255 }],
        };
        let y = g.add_node(op, vec![Some(x), Some(w), Some(b)], Some(vec![out]), "conv").expect("qconv");
        g.add_output("y", y);
    } else {
        let x = g.add_input("x", TensorType::new(ty, xshape));
        let w: Vec<f64> = (0..nw).map(|_| (rng.next() >> 40) as f64 / (1u64 << 24) as f64 - 0.5).collect();
        let w = g.add_const("w", Tensor::from_f64_iter(ty, wshape, w.into_iter()));
        let b = g.add_const("b", Tensor::from_f64_iter(ty, vec![c.cout], std::iter::repeat_n(0.1, c.cout)));
        let y = g.add_node(Op::Conv(attrs), vec![Some(x), Some(w), Some(b)], None, "conv").expect("conv");
        g.add_output("y", y);
    }
    g
}

fn matmul_graph(m: usize, k: usize, n: usize, ty: DType, rng: &mut Rng) -> Graph {
    let int8 = ty == DType::U8;
    let mut g = Graph::new("matmul");
    if int8 {
        let a = g.add_input(
            "a",
            TensorType::quantized(DType::U8, Shape::fixed(&[m, k]), QuantParams::per_tensor(0.02, 128)),
        );
        let w: Vec<i8> = (0..n * k).map(|_| (rng.next() >> 56) as i8).collect();
        let w = Tensor::new(vec![n, k], TensorData::I8(w)).expect("weight");
        let w = g.add_const_typed(
            "w",
            w,
            TensorType::quantized(DType::I8, Shape::fixed(&[n, k]), QuantParams::per_tensor(0.01, 0)),
        );
        let out = TensorType::quantized(DType::U8, Shape::fixed(&[m, n]), QuantParams::per_tensor(0.05, 128));
        let op = Op::QGemm { alpha: 1.0, trans_a: false, trans_b: true, epilogue: vec![Epilogue::Requant] };
        let y = g.add_node(op, vec![Some(a), Some(w)], Some(vec![out]), "gemm").expect("qgemm");
        g.add_output("y", y);
    } else {
        let a = g.add_input("a", TensorType::new(ty, Shape::fixed(&[m, k])));
        let w: Vec<f64> = (0..n * k).map(|_| (rng.next() >> 40) as f64 / (1u64 << 24) as f64 - 0.5).collect();
        let w = g.add_const("w", Tensor::from_f64_iter(ty, vec![n, k], w.into_iter()));
        let op = Op::Gemm { alpha: 1.0, beta: 1.0, trans_a: false, trans_b: true };
        let y = g.add_node(op, vec![Some(a), Some(w)], None, "gemm").expect("gemm");
        g.add_output("y", y);
    }
    g
}

fn input_for(g: &Graph, rng: &mut Rng) -> Tensor {
    let ty = &g.node(g.inputs()[0]).outputs[0];
    let shape = ty.shape.as_fixed().expect("fixed");
    let n: usize = shape.iter().product();
    match ty.dtype {
        DType::U8 => {
            Tensor::new(shape, TensorData::U8((0..n).map(|_| (rng.next() >> 56) as u8).collect())).expect("u8")
        }
        dt => Tensor::from_f64_iter(dt, shape, (0..n).map(|_| (rng.next() >> 40) as f64 / (1u64 << 24) as f64 - 0.5)),
    }
}

/// Median kernel-step time and MACs of one graph.
fn measure(g: &Graph, mk: Microkernels, rng: &mut Rng) -> Option<(Duration, u64, String)> {
    let exe = JitExecutable::new(g.clone(), JitOptions { microkernels: mk, threads: 1, ..JitOptions::default() });
    let x = vec![input_for(g, rng)];
    let p = exe.program(&x).ok()?;
    let k = p.report.steps.iter().position(|s| s.kind == "kernel")?;
    let macs = p.report.steps[k].macs;
    let what = p.report.steps[k].what.clone();
    let target = Duration::from_millis(300);
    let mut samples = Vec::new();
    let mut spent = Duration::ZERO;
    for i in 0..200 {
        let mut t = Vec::new();
        p.run(&x, Some(&mut t)).ok()?;
        if i >= 3 {
            samples.push(t[k]);
            spent += t[k];
        }
        if spent > target && samples.len() >= 10 {
            break;
        }
    }
    samples.sort();
    Some((samples[samples.len() / 2], macs, what))
}

/// One instruction's peak: `$insn zmm_acc, zmm30, zmm31` on twelve accumulators, `iters` times;
/// (instructions per second, multiply-adds per second).
#[cfg(target_arch = "x86_64")]
macro_rules! peak_loop {
    ($insn:literal, $reg:literal) => {{
        let iters: u64 = 20_000_000;
        let t = std::time::Instant::now();
        // SAFETY: the loop reads and writes only the listed vector registers and the counter; the
        // caller checked that the CPU has the instruction.
        unsafe {
            std::arch::asm!(
                concat!("vpxord ", $reg, "0, ", $reg, "0, ", $reg, "0"),
                concat!("vmovdqa64 ", $reg, "1, ", $reg, "0"), concat!("vmovdqa64 ", $reg, "2, ", $reg, "0"),
                concat!("vmovdqa64 ", $reg, "3, ", $reg, "0"), concat!("vmovdqa64 ", $reg, "4, ", $reg, "0"),
                concat!("vmovdqa64 ", $reg, "5, ", $reg, "0"), concat!("vmovdqa64 ", $reg, "6, ", $reg, "0"),
                concat!("vmovdqa64 ", $reg, "7, ", $reg, "0"), concat!("vmovdqa64 ", $reg, "8, ", $reg, "0"),
                concat!("vmovdqa64 ", $reg, "9, ", $reg, "0"), concat!("vmovdqa64 ", $reg, "10, ", $reg, "0"),
                concat!("vmovdqa64 ", $reg, "11, ", $reg, "0"), concat!("vmovdqa64 ", $reg, "30, ", $reg, "0"),
                concat!("vmovdqa64 ", $reg, "31, ", $reg, "0"),
                "2:",
                concat!($insn, " ", $reg, "0, ", $reg, "30, ", $reg, "31"),
                concat!($insn, " ", $reg, "1, ", $reg, "30, ", $reg, "31"),
                concat!($insn, " ", $reg, "2, ", $reg, "30, ", $reg, "31"),
                concat!($insn, " ", $reg, "3, ", $reg, "30, ", $reg, "31"),
                concat!($insn, " ", $reg, "4, ", $reg, "30, ", $reg, "31"),
                concat!($insn, " ", $reg, "5, ", $reg, "30, ", $reg, "31"),
                concat!($insn, " ", $reg, "6, ", $reg, "30, ", $reg, "31"),
                concat!($insn, " ", $reg, "7, ", $reg, "30, ", $reg, "31"),
                concat!($insn, " ", $reg, "8, ", $reg, "30, ", $reg, "31"),
                concat!($insn, " ", $reg, "9, ", $reg, "30, ", $reg, "31"),
                concat!($insn, " ", $reg, "10, ", $reg, "30, ", $reg, "31"),
                concat!($insn, " ", $reg, "11, ", $reg, "30, ", $reg, "31"),
                "dec {n}",
                "jnz 2b",
                n = inout(reg) iters => _,
                out("zmm0") _, out("zmm1") _, out("zmm2") _, out("zmm3") _, out("zmm4") _, out("zmm5") _,
                out("zmm6") _, out("zmm7") _, out("zmm8") _, out("zmm9") _, out("zmm10") _, out("zmm11") _,
                out("zmm30") _, out("zmm31") _,
                options(nomem, nostack),
            );
        }
        (iters as f64 * 12.0) / t.elapsed().as_secs_f64()
    }};
}

/// [`peak_loop!`] for a 256-bit (AVX2) instruction: `$insn ymm_acc, ymm14, ymm15` on twelve
/// accumulators (AVX2 has 16 vector registers, so the zmm form's registers 30 and 31 are not
/// there).
#[cfg(target_arch = "x86_64")]
macro_rules! peak_loop_ymm {
    ($insn:literal) => {{
        let iters: u64 = 20_000_000;
        let t = std::time::Instant::now();
        // SAFETY: the loop reads and writes only the listed vector registers and the counter; the
        // caller checked that the CPU has the instruction.
        unsafe {
            std::arch::asm!(
                "vpxor ymm0, ymm0, ymm0",
                "vmovdqa ymm1, ymm0", "vmovdqa ymm2, ymm0", "vmovdqa ymm3, ymm0", "vmovdqa ymm4, ymm0",
                "vmovdqa ymm5, ymm0", "vmovdqa ymm6, ymm0", "vmovdqa ymm7, ymm0", "vmovdqa ymm8, ymm0",
                "vmovdqa ymm9, ymm0", "vmovdqa ymm10, ymm0", "vmovdqa ymm11, ymm0", "vmovdqa ymm14, ymm0",
                "vmovdqa ymm15, ymm0",
                "2:",
                concat!($insn, " ymm0, ymm14, ymm15"),
                concat!($insn, " ymm1, ymm14, ymm15"),
                concat!($insn, " ymm2, ymm14, ymm15"),
                concat!($insn, " ymm3, ymm14, ymm15"),
                concat!($insn, " ymm4, ymm14, ymm15"),
                concat!($insn, " ymm5, ymm14, ymm15"),
                concat!($insn, " ymm6, ymm14, ymm15"),
                concat!($insn, " ymm7, ymm14, ymm15"),
                concat!($insn, " ymm8, ymm14, ymm15"),
                concat!($insn, " ymm9, ymm14, ymm15"),
                concat!($insn, " ymm10, ymm14, ymm15"),
                concat!($insn, " ymm11, ymm14, ymm15"),
                "dec {n}",
                "jnz 2b",
                n = inout(reg) iters => _,
                out("ymm0") _, out("ymm1") _, out("ymm2") _, out("ymm3") _, out("ymm4") _, out("ymm5") _,
                out("ymm6") _, out("ymm7") _, out("ymm8") _, out("ymm9") _, out("ymm10") _, out("ymm11") _,
                out("ymm14") _, out("ymm15") _,
                options(nomem, nostack),
            );
        }
        (iters as f64 * 12.0) / t.elapsed().as_secs_f64()
    }};
}

/// The `peak` lines (see the module docs): instruction, the CPU feature it needs, multiply-adds
/// per instruction.
fn peaks() {
    #[cfg(target_arch = "x86_64")]
    {
        type Probe = fn() -> f64;
        let avx2 = std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma");
        let probes: [(&str, bool, f64, Probe); 7] = [
            // the AVX2 rung: f32 FMA, and the exact u8 x i8 product as i16 pairs (`vpmaddwd`,
            // 16 multiply-adds; the accumulating add is a separate instruction)
            ("vfmadd231ps ymm (f32)", avx2, 8.0, || peak_loop_ymm!("vfmadd231ps")),
            ("vpmaddwd ymm (i16 x i16 pairs)", avx2, 16.0, || peak_loop_ymm!("vpmaddwd")),
            ("vfmadd231ps zmm (f32)", std::is_x86_feature_detected!("avx512f"), 16.0, || {
                peak_loop!("vfmadd231ps", "zmm")
            }),
            ("vdpbf16ps zmm (bf16, f32 sums)", std::is_x86_feature_detected!("avx512bf16"), 32.0, || {
                peak_loop!("vdpbf16ps", "zmm")
            }),
            ("vfmadd231ph zmm (f16 sums)", std::is_x86_feature_detected!("avx512fp16"), 32.0, || {
                peak_loop!("vfmadd231ph", "zmm")
            }),
            ("vpdpbusd zmm (u8 x i8)", std::is_x86_feature_detected!("avx512vnni"), 64.0, || {
                peak_loop!("vpdpbusd", "zmm")
            }),
            ("vpdpwssd zmm (i16 x i16)", std::is_x86_feature_detected!("avx512vnni"), 32.0, || {
                peak_loop!("vpdpwssd", "zmm")
            }),
        ];
        for (name, has, macs, probe) in probes {
            if !has {
                println!("peak {name:<32} (not on this CPU)");
                continue;
            }
            let best = (0..3).map(|_| probe()).fold(0.0, f64::max);
            println!("peak {name:<32} {:>8.2} G instr/s {:>8.1} GMAC/s", best / 1e9, best * macs / 1e9);
        }
    }
}

fn main() {
    peaks();
    let filter = std::env::var("QFORGE_BENCH_FILTER").unwrap_or_default();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let convs = [
        Conv { name: "resnet18.conv1 7x7/2", cin: 3, hw: 224, cout: 64, k: 7, stride: 2, depthwise: false },
        Conv { name: "resnet18.layer1 3x3", cin: 64, hw: 56, cout: 64, k: 3, stride: 1, depthwise: false },
        Conv { name: "resnet18.layer2 3x3", cin: 128, hw: 28, cout: 128, k: 3, stride: 1, depthwise: false },
        Conv { name: "resnet18.layer3 3x3", cin: 256, hw: 14, cout: 256, k: 3, stride: 1, depthwise: false },
        Conv { name: "resnet18.layer4 3x3", cin: 512, hw: 7, cout: 512, k: 3, stride: 1, depthwise: false },
        Conv { name: "mobilenet.stem 3x3/2", cin: 3, hw: 224, cout: 32, k: 3, stride: 2, depthwise: false },
        Conv { name: "mobilenet.expand 1x1", cin: 24, hw: 56, cout: 144, k: 1, stride: 1, depthwise: false },
        Conv { name: "mobilenet.project 1x1", cin: 144, hw: 56, cout: 24, k: 1, stride: 1, depthwise: false },
        Conv { name: "mobilenet.project 1x1 112", cin: 32, hw: 112, cout: 16, k: 1, stride: 1, depthwise: false },
        Conv { name: "mobilenet.dw 3x3 112", cin: 32, hw: 112, cout: 32, k: 3, stride: 1, depthwise: true },
        Conv { name: "mobilenet.dw 3x3/2 112", cin: 96, hw: 112, cout: 96, k: 3, stride: 2, depthwise: true },
        Conv { name: "mobilenet.dw 3x3 14", cin: 384, hw: 14, cout: 384, k: 3, stride: 1, depthwise: true },
    ];
    println!("{:<28} {:<6} {:<10} {:>10} {:>10}  kernel", "shape", "type", "gemm", "ms", "GMAC/s");
    for (dt, ty) in [(DType::U8, "int8"), (DType::F32, "f32"), (DType::BF16, "bf16")] {
        let mut cases: Vec<(String, Graph)> =
            convs.iter().map(|c| (c.name.to_string(), conv_graph(c, dt, &mut rng))).collect();
        for (m, k, n) in [(1, 512, 1000), (64, 768, 768), (196, 768, 3072)] {
            cases.push((format!("matmul {m}x{k}x{n}"), matmul_graph(m, k, n, dt, &mut rng)));
        }
        for (name, g) in &cases {
            if !name.contains(&filter) {
                continue;
            }
            for mk in [Microkernels::Native, Microkernels::Cranelift] {
                let label = if mk == Microkernels::Native { "native" } else { "cranelift" };
                match measure(g, mk, &mut rng) {
                    Some((t, macs, what)) => println!(
                        "{name:<28} {ty:<6} {label:<10} {:>10.3} {:>10.1}  {what}",
                        t.as_secs_f64() * 1e3,
                        macs as f64 / t.as_secs_f64() / 1e9
                    ),
                    None => println!("{name:<28} {ty:<6} {label:<10} (no kernel)"),
                }
            }
        }
    }
}
