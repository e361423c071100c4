//! The ONNX ops the importer composes from IR ops (Attention, RotaryEmbedding, RMSNormalization,
//! the losses, Hardmax, LpPool, ReduceMin, ...) against the ONNX reference: every case under
//! `fixtures/composed/` (ONNX's data-set layout, `model.onnx`, `input_<j>.pb`, `output_<k>.pb`,
//! written by `scripts/gen_composed_fixtures.py` from ONNX's backend node tests) imports, verifies,
//! runs on the interpreter within the suite's tolerance of the expected outputs (the ONNX
//! backend runner's `rtol=1e-3`, and `atol=1e-5`), and the JIT agrees with the interpreter.

use anyhow::{bail, Context, Result};
use prost::Message;
use qforge::onnx::proto::TensorProto;
use qforge_ir::Tensor;
use qforge_tests::check_jit;
use std::path::{Path, PathBuf};

const RTOL: f64 = 1e-3;
const ATOL: f64 = 1e-5;

fn fixtures() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/composed"))
}

/// The tensors `<prefix>_0.pb`, `<prefix>_1.pb`, ... of a case directory.
fn tensors(dir: &Path, prefix: &str) -> Result<Vec<Tensor>> {
    let mut out = vec![];
    loop {
        let p = dir.join(format!("{prefix}_{}.pb", out.len()));
        if !p.exists() {
            return Ok(out);
        }
        let bytes = std::fs::read(&p).with_context(|| format!("{}", p.display()))?;
        let proto = TensorProto::decode(bytes.as_slice()).with_context(|| format!("{}", p.display()))?;
        out.push(qforge::onnx::tensors::tensor_from_proto(&proto).with_context(|| format!("{}", p.display()))?);
    }
}

/// Output `got` against `want`: same dtype and shape, and every element within the tolerance
/// (NaN where the reference has NaN).
fn close(got: &Tensor, want: &Tensor) -> Result<()> {
    if got.dtype() != want.dtype() || got.shape() != want.shape() {
        bail!("{} {:?}, expected {} {:?}", got.dtype(), got.shape(), want.dtype(), want.shape());
    }
    for (i, (g, w)) in got.to_f64_vec().into_iter().zip(want.to_f64_vec()).enumerate() {
        let ok = (g.is_nan() && w.is_nan()) || g == w || (g - w).abs() <= ATOL + RTOL * w.abs();
        if !ok {
            bail!("element {i}: {g}, expected {w}");
        }
    }
    Ok(())
}

fn run_case(dir: &Path) -> Result<()> {
    let g = qforge::load_model(&dir.join("model.onnx"))?;
    qforge_ir::verify::verify(&g).context("imported graph does not verify")?;
    let (inputs, want) = (tensors(dir, "input")?, tensors(dir, "output")?);
    let got = qforge_ir::interp::run(&g, &inputs)?;
    if got.len() != want.len() {
        bail!("{} outputs, expected {}", got.len(), want.len());
    }
    for (k, (o, w)) in got.iter().zip(&want).enumerate() {
        close(o, w).with_context(|| format!("interpreter output {k}"))?;
    }
    check_jit(&g, &inputs, &got).context("the JIT disagrees with the interpreter")
}

#[test]
fn composed_ops_match_the_onnx_reference() {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(fixtures())
        .expect("fixtures/composed exists")
        .map(|e| e.expect("a directory entry").path())
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    assert!(dirs.len() >= 30, "only {} cases under fixtures/composed", dirs.len());
    let failures: Vec<String> = dirs
        .iter()
        .filter_map(|d| {
            run_case(d).err().map(|e| format!("{}: {e:#}", d.file_name().unwrap_or_default().to_string_lossy()))
        })
        .collect();
    assert!(failures.is_empty(), "{} of {} cases failed:\n{}", failures.len(), dirs.len(), failures.join("\n"));
}
