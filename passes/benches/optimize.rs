//! `cargo bench -p qforge-passes --bench optimize`: the equality-saturation optimizer on a
//! ResNet-50-shaped graph (the structure of `light/light_resnet50.onnx`: 53 conv + batch norm,
//! 49 relu, 16 residual adds, global pooling, gemm, softmax; 25.5 M weights, ~440 nodes with
//! constants), built here so the bench needs no ONNX import. Prints the median, min and max of
//! ten runs and the pass's counters. (`qforge compile MODEL --report` times the real model.)

use qforge_ir::{BinaryOp, ConvAttrs, DType, Graph, Op, Shape, Tensor, TensorType, UnaryOp, Value};
use qforge_passes::egraph::Optimize;
use std::time::Instant;

struct B {
    g: Graph,
    n: usize,
}

impl B {
    fn konst(&mut self, shape: &[usize], v: f32) -> Value {
        self.n += 1;
        let len = shape.iter().product();
        self.g.add_const(format!("c{}", self.n), Tensor::from_f32(shape.to_vec(), vec![v; len]))
    }
    fn op(&mut self, op: Op, ins: Vec<Value>) -> Value {
        self.n += 1;
        self.g.add_node(op, ins.into_iter().map(Some).collect(), None, format!("n{}", self.n)).expect("well-typed")
    }
    fn conv_bn(&mut self, x: Value, cin: usize, cout: usize, k: usize, s: usize, relu: bool) -> Value {
        let w = self.konst(&[cout, cin, k, k], 0.02);
        let p = k / 2;
        let a =
            ConvAttrs { kernel: vec![k, k], strides: vec![s, s], pads: vec![p; 4], dilations: vec![1, 1], group: 1 };
        let y = self.op(Op::Conv(a), vec![x, w]);
        let (g, b, m, v) =
            (self.konst(&[cout], 1.0), self.konst(&[cout], 0.0), self.konst(&[cout], 0.1), self.konst(&[cout], 2.0));
        let y = self.op(Op::BatchNorm { epsilon: 1e-5 }, vec![y, g, b, m, v]);
        if relu {
            self.op(Op::Unary(UnaryOp::Relu), vec![y])
        } else {
            y
        }
    }
}

fn resnet50() -> Graph {
    let mut b = B { g: Graph::new("resnet50_like"), n: 0 };
    let x = b.g.add_input("data", TensorType::new(DType::F32, Shape::fixed(&[1, 3, 224, 224])));
    let mut y = b.conv_bn(x, 3, 64, 7, 2, true);
    let pool = qforge_ir::PoolAttrs {
        kernel: vec![3, 3],
        strides: vec![2, 2],
        pads: vec![1; 4],
        dilations: vec![1, 1],
        ceil_mode: false,
        count_include_pad: false,
    };
    y = b.op(Op::MaxPool(pool), vec![y]);
    let mut cin = 64;
    for (stage, (blocks, w)) in [(3, 64), (4, 128), (6, 256), (3, 512)].into_iter().enumerate() {
        for i in 0..blocks {
            let s = if i == 0 && stage > 0 { 2 } else { 1 };
            let a = b.conv_bn(y, cin, w, 1, 1, true);
            let a = b.conv_bn(a, w, w, 3, s, true);
            let a = b.conv_bn(a, w, 4 * w, 1, 1, false);
            let short = if i == 0 { b.conv_bn(y, cin, 4 * w, 1, s, false) } else { y };
            let sum = b.op(Op::Binary(BinaryOp::Add), vec![a, short]);
            y = b.op(Op::Unary(UnaryOp::Relu), vec![sum]);
            cin = 4 * w;
        }
    }
    y = b.op(Op::GlobalAveragePool, vec![y]);
    y = b.op(Op::Flatten { axis: 1 }, vec![y]);
    let w = b.konst(&[1000, 2048], 0.02);
    let c = b.konst(&[1000], 0.0);
    y = b.op(Op::Gemm { alpha: 1.0, beta: 1.0, trans_a: false, trans_b: true }, vec![y, w, c]);
    y = b.op(Op::Softmax { axis: 1 }, vec![y]);
    b.g.add_output("prob", y);
    b.g
}

fn main() {
    let g = resnet50();
    let mut times = vec![];
    let mut last = None;
    for _ in 0..10 {
        let mut h = g.clone();
        let t = Instant::now();
        let o = Optimize::default().optimize(&mut h).expect("optimizes");
        times.push(t.elapsed().as_secs_f64() * 1e3);
        last = Some(o);
    }
    times.sort_by(f64::total_cmp);
    let o = last.expect("ran");
    println!(
        "optimize resnet50-like ({} -> {} nodes): median {:.1} ms, min {:.1} ms, max {:.1} ms",
        o.nodes_before,
        o.nodes_after,
        times[times.len() / 2],
        times[0],
        times[times.len() - 1]
    );
    println!(
        "  stop: {}, {} iterations, e-graph {} nodes / {} classes, applied {:?}",
        o.stop_reason, o.iterations, o.egraph_nodes, o.egraph_classes, o.applied
    );
}
