//! `qforge tune` through the library on the digits model: every candidate of the first rounds
//! compiled the search's way (resumed from its observer's shared calibration) is the graph its
//! qconfig gives through the whole pipeline from scratch, with the same figures; and the front
//! table in the deterministic latency mode (the stored kernel cost table, the Cranelift-only
//! kernels and a fixed host profile, so the same on every x86-64 CPU) as a golden snapshot.

use qforge::options::Kernels;
use qforge::tune::latency::Source;
use qforge::tune::search::{self, Space};
use qforge::tune::{front, Context, Setup};
use qforge_ir::text::{print, ConstMode};
use std::path::PathBuf;
use std::time::{Duration, Instant};

fn corpus(f: &str) -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/models")).join(f)
}

fn setup() -> Setup {
    Setup {
        model: corpus("digits_cnn.onnx"),
        calib: corpus("digits_calib_x.npy"),
        calib_batch: 50,
        input: Some(corpus("digits_test_x.npy")),
        labels: Some(corpus("digits_test_y.npy")),
        // a fixed host and the Cranelift-only kernels: the seeds follow the profile and the
        // priced steps follow the kernels, neither may follow this machine's CPU
        profile: Some(
            concat!(env!("CARGO_MANIFEST_DIR"), "/../compiler/tests/fixtures/tune/avx512-bf16-host.toml").to_string(),
        ),
        kernels: Kernels::Cranelift,
        latency: Source::Table {
            path: PathBuf::from(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../compiler/tests/fixtures/tune/digits_kernels.json"
            )),
        },
        warmup: 0,
        iters: 1,
    }
}

#[test]
fn cached_compiles_are_the_fresh_ones_and_the_front_is_golden() {
    let mut ctx = Context::new(setup()).unwrap();
    let space = Space::study(&mut ctx).unwrap();
    let out =
        search::run(&mut ctx, &space, Some(3), Duration::from_secs(3600), Instant::now(), &mut |_, _| {}).unwrap();
    assert!(out.evaluated.len() >= 10, "{} candidates", out.evaluated.len());
    for e in out.evaluated.iter().filter(|e| e.candidate.round < 2) {
        let p = &e.candidate.policy;
        let cached = print(&ctx.compile_cached(p).unwrap(), ConstMode::Full).unwrap();
        let fresh = print(&ctx.compile_fresh(p).unwrap(), ConstMode::Full).unwrap();
        assert!(cached == fresh, "`{}`: the search's graph differs from its qconfig's", e.candidate.label);
        assert_eq!(ctx.evaluate_fresh(&e.candidate).unwrap(), *e, "`{}`", e.candidate.label);
    }
    let rows = front::front(&out.evaluated);
    let chosen = front::choose(&out.evaluated, 0.008, front::Constraint::None, ctx.fp32_top1).unwrap();
    let table = front::table(&rows, Some(&chosen.key), &ctx.setup);
    // the table names the table file by its absolute path: keep its name only
    let table = table.replace(concat!(env!("CARGO_MANIFEST_DIR"), "/../compiler/tests/fixtures/tune/"), "");
    insta::with_settings!({ snapshot_path => "../../snapshots", prepend_module_to_snapshot => false }, {
        insta::assert_snapshot!("tune__digits_front", table);
    });
}
