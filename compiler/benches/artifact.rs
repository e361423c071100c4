//! `cargo bench -p qforge --bench artifact`: size, save and load time of compiled artifacts for
//! ResNet-18 and MobileNetV2, against the alternative payload (the IR text form with every
//! constant written out), and whether constants survive the text form bit for bit.

use qforge::artifact::Artifact;
use qforge::{load_model, Compiler, PipelineOptions};
use std::path::PathBuf;
use std::time::Instant;

fn main() -> anyhow::Result<()> {
    let corpus = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/models"));
    let dir = std::env::temp_dir().join(format!("qforge-artifact-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    for name in ["resnet18.onnx", "mobilenet_v2.onnx"] {
        let model = corpus.join(name);
        let compiler = Compiler::new(PipelineOptions::default())?;
        let g = compiler.optimize(load_model(&model)?)?;
        let path = dir.join("m.qfa");
        let a = Artifact::new(g.clone(), &model, &compiler)?;
        let t = Instant::now();
        let encoded = a.to_bytes()?;
        let encode = t.elapsed();
        drop(encoded);
        let t = Instant::now();
        a.save(&path)?;
        let save = t.elapsed();
        let t = Instant::now();
        let b = Artifact::load(&path)?;
        let load = t.elapsed();
        let size = std::fs::metadata(&path)?.len();
        let t = Instant::now();
        let text = qforge_ir::text::print(&g, qforge_ir::text::ConstMode::Full)?;
        let print = t.elapsed();
        let t = Instant::now();
        let back = qforge_ir::text::parse(&text)?;
        let parse = t.elapsed();
        let original = qforge_ir::text::print_default(&g)?;
        anyhow::ensure!(
            qforge_ir::text::print_default(&b.graph)? == original,
            "{name}: the artifact changed the graph"
        );
        let exact = qforge_ir::text::print_default(&back)? == original;
        println!(
            "{name}: artifact {:.1} MB, save {:.0} ms (encoding {:.0} ms), load {:.0} ms; full text {:.1} MB, \
             print {:.0} ms, parse {:.0} ms, constants bit-exact through text: {exact}",
            size as f64 / 1e6,
            save.as_secs_f64() * 1e3,
            encode.as_secs_f64() * 1e3,
            load.as_secs_f64() * 1e3,
            text.len() as f64 / 1e6,
            print.as_secs_f64() * 1e3,
            parse.as_secs_f64() * 1e3
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
