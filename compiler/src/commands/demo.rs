//! `qforge demo`: the whole pipeline on the bundled digits model, printed as a table.

use anyhow::Result;

pub fn run() -> Result<()> {
    let d = crate::demo::run()?;
    let s = &d.imported;
    println!("qforge demo: digits CNN (8x8 handwritten digits, bundled with qforge)\n");
    println!("  {:<22} {} (as imported; after the pipeline in the table below)", "nodes", s.nodes.len());
    println!("  {:<22} {}", "parameters", s.params);
    let ops: Vec<String> = s.ops.iter().map(|(k, v)| format!("{k} x{v}")).collect();
    println!("  {:<22} {} (as imported)", "ops", ops.join(", "));
    println!("  {:<22} {:.1} ms", "import", d.import_ms);
    println!("  {:<22} {} samples, calibration {} images", "data", d.samples, d.calib_samples);
    println!();
    println!(
        "  {:<6} {:>8} {:>13} {:>14} {:>12} {:>6} {:>13} {:>11}",
        "", "top-1", "batch 1 (us)", "us/sample@64", "weights KiB", "nodes", "fused kernels", "host ops"
    );
    for r in &d.rows {
        println!(
            "  {:<6} {:>7.2}% {:>13.1} {:>14.2} {:>12.1} {:>6} {:>13} {:>11}",
            r.name,
            r.top1 * 100.0,
            r.batch1_us,
            r.per_sample_us,
            r.weight_kib,
            r.nodes,
            r.fused,
            r.host_ops
        );
    }
    println!(
        "\n  JIT engine, 1 thread; nodes are counted after the pipeline (batch norm folded, kernels fused, as \
         `qforge inspect` counts them); host ops are ops the JIT hands to the reference interpreter."
    );
    println!(
        "\nNext, on your own model:\n  qforge inspect model.onnx\n  qforge eval model.onnx --input x.npy --labels y.npy --quantize int8 --calib calib.npy\n  qforge bench model.onnx --quantize int8 --calib calib.npy --profile-kernels"
    );
    Ok(())
}
