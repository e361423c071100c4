//! `qforge pipeline` on the three-stage fixture (`fixtures/pipeline/`, made by
//! `scripts/gen_pipeline_fixtures.py`): the cascaded-error table as a golden snapshot, pipelined
//! and sequential runs giving the same outputs bit for bit, and the checks of a pipeline file,
//! each a one-line error naming the file and the stage (snapshot of every message).

use qforge::pipeline::{cascade, Keep, Pipeline};
use qforge::PipelineOptions;
use std::path::{Path, PathBuf};

fn fixture() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/pipeline"))
}

fn load(path: &Path) -> anyhow::Result<Pipeline> {
    Pipeline::load(path, &PipelineOptions::default(), &|o| qforge::Compiler::new(o))
}

/// The stages in order with their sources, then the cascaded-error table on the sample frames,
/// on the reference interpreter: the JIT's float kernels differ by CPU (the order of their sums,
/// Winograd or not), which moved a max error in the table's third digit between an AVX-512 and
/// an AVX2 machine, and a snapshot must not depend on the machine.
#[test]
fn cascade_table() {
    let opts = PipelineOptions { engine: qforge::options::Engine::Interp, ..PipelineOptions::default() };
    let p = Pipeline::load(&fixture().join("pipeline.toml"), &opts, &|o| qforge::Compiler::new(o))
        .expect("the fixture loads");
    let fp32 = p.fp32_stages(&|o| qforge::Compiler::new(o)).expect("fp32 stages");
    let c = cascade(&p, &fp32).expect("cascade");
    let mut text = String::new();
    for &s in &p.plan.order {
        let st = &p.config.stages[s];
        text.push_str(&format!(
            "{} ({}): {}\n",
            st.name,
            st.precision.name(),
            qforge::pipeline::report::sources(&p, s)
        ));
    }
    text.push('\n');
    text.push_str(&c.table());
    insta::with_settings!({ snapshot_path => "../../snapshots", prepend_module_to_snapshot => false }, {
        insta::assert_snapshot!("pipeline__cascade", text);
    });
}

/// Each stage runs the same compiled program on the same inputs in both modes, so every frame's
/// outputs agree bit for bit (two passes over the sample frames).
#[test]
fn pipelined_equals_sequential() {
    let p = load(&fixture().join("pipeline.toml")).expect("the fixture loads");
    let frames = 2 * p.sample_frames();
    let seq = p.run_sequential(p.stages(), frames, Keep::Sinks).expect("sequential");
    let pip = p.run_pipelined(frames, None, Keep::Sinks).expect("pipelined");
    assert_eq!(seq.outputs.len(), frames);
    assert_eq!(pip.outputs.len(), frames);
    let mut compared = 0;
    for (f, (a, b)) in seq.outputs.iter().zip(&pip.outputs).enumerate() {
        for (s, (x, y)) in a.iter().zip(b).enumerate() {
            assert_eq!(x.is_some(), y.is_some(), "frame {f} stage {s}");
            if let (Some(x), Some(y)) = (x, y) {
                for (tx, ty) in x.iter().zip(y.iter()) {
                    let bits = |t: &qforge_ir::Tensor| t.to_f32_vec().iter().map(|v| v.to_bits()).collect::<Vec<_>>();
                    assert_eq!(tx.shape(), ty.shape());
                    assert!(bits(tx) == bits(ty), "frame {f}: stage {s}'s output differs between the modes");
                    compared += 1;
                }
            }
        }
    }
    // one sink (control) with one output per frame
    assert_eq!(compared, frames);
    // every frame went through every stage, in both modes
    for r in [&seq, &pip] {
        assert!(r.stage_ms.iter().all(|t| t.len() == frames));
        assert_eq!(r.end_to_end_ms.len(), frames);
    }
}

/// A pipeline file that cannot be used: each case's one-line message (the scratch directory
/// written as `<dir>`).
#[test]
fn pipeline_file_errors() {
    let dir = std::env::temp_dir().join(format!("qforge-pipeline-errors-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let fx = fixture();
    let f = |name: &str| fx.join(name).display().to_string();
    // frames of another dtype than the detector takes
    let x = qforge::npy::read(&fx.join("frames.npy")).unwrap();
    let x64 = qforge_ir::Tensor::from_f64_iter(qforge_ir::DType::F64, x.shape().to_vec(), x.to_f64_vec().into_iter());
    qforge::npy::write(&dir.join("frames_f64.npy"), &x64).unwrap();
    let head = format!("[input.camera]\nframes = \"{}\"\n", f("frames.npy"));
    let stage = |name: &str, model: &str, extra: &str, from: &str| {
        format!("\n[[stage]]\nname = \"{name}\"\nmodel = \"{}\"\n{extra}from = {from}\n", f(model))
    };
    let det = stage("detector", "detector.onnx", "", "\"camera\"");
    let plan = stage("planner", "planner.onnx", "", "\"detector.features\"");
    let ctl = stage("control", "control.onnx", "", "{ tokens = \"planner.tokens\", boxes = \"detector.boxes\" }");
    let cases: Vec<(&str, String)> = vec![
        ("not toml", "[[stage]\n".into()),
        ("unknown key", format!("{head}{det}colour = 3\n")),
        ("no stages", head.clone()),
        (
            "unknown precision",
            format!("{head}{}", stage("detector", "detector.onnx", "precision = \"int4\"\n", "\"camera\"")),
        ),
        (
            "int8 without calib",
            format!("{head}{}", stage("detector", "detector.onnx", "precision = \"int8\"\n", "\"camera\"")),
        ),
        (
            "negative budget",
            format!("{head}{}", stage("detector", "detector.onnx", "budget_ms = -1.0\n", "\"camera\"")),
        ),
        ("duplicate stage", format!("{head}{det}{det}")),
        ("unknown source", format!("{head}{}", stage("detector", "detector.onnx", "", "\"lidar\""))),
        ("unknown output", format!("{head}{det}{}", stage("planner", "planner.onnx", "", "\"detector.lanes\""))),
        ("ambiguous output", format!("{head}{det}{}", stage("planner", "planner.onnx", "", "\"detector\""))),
        (
            "too few sources",
            format!("{head}{det}{plan}{}", stage("control", "control.onnx", "", "[\"planner.tokens\"]")),
        ),
        (
            "unknown model input",
            format!(
                "{head}{det}{plan}{}",
                stage("control", "control.onnx", "", "{ tokens = \"planner.tokens\", lanes = \"detector.boxes\" }")
            ),
        ),
        (
            "shape mismatch",
            format!(
                "{head}{det}{plan}{}",
                stage("control", "control.onnx", "", "{ tokens = \"detector.features\", boxes = \"detector.boxes\" }")
            ),
        ),
        ("dtype mismatch", format!("[input.camera]\nframes = \"{}\"\n{det}", dir.join("frames_f64.npy").display())),
        (
            "cycle",
            format!(
                "{head}{det}{}{}",
                stage("planner", "planner.onnx", "", "\"control.control\""),
                stage("control", "control.onnx", "", "{ tokens = \"planner.tokens\", boxes = \"detector.boxes\" }")
            ),
        ),
    ];
    let mut text = String::new();
    for (name, toml) in &cases {
        let path = dir.join(format!("{}.toml", name.replace(' ', "_")));
        std::fs::write(&path, toml).unwrap();
        let err = match load(&path) {
            Ok(_) => panic!("case `{name}` loaded"),
            Err(e) => format!("{e:#}"),
        };
        assert!(!err.contains('\n'), "case `{name}`: more than one line: {err}");
        assert!(err.contains(&path.display().to_string()), "case `{name}` does not name the file: {err}");
        let err = err.replace(&dir.display().to_string(), "<dir>").replace(&fx.display().to_string(), "<fixtures>");
        text.push_str(&format!("{name}: {err}\n"));
    }
    // the last valid form of each: the fixture's own stages load
    let ok = dir.join("ok.toml");
    std::fs::write(&ok, format!("{head}{det}{plan}{ctl}")).unwrap();
    load(&ok).expect("the three stages load");
    std::fs::remove_dir_all(&dir).ok();
    insta::with_settings!({ snapshot_path => "../../snapshots", prepend_module_to_snapshot => false }, {
        insta::assert_snapshot!("pipeline__file_errors", text);
    });
}
