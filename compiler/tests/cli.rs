//! The command line's contract: errors are one line on stderr and a non-zero exit, never a panic
//! or a backtrace; `--json` output has the documented keys.

mod common;
use common::{asset, corpus, expect_error, expect_ok, p, qforge, scratch};

#[test]
fn missing_model_file() {
    expect_error(&["inspect", "/nonexistent/model.onnx"], "cannot read `/nonexistent/model.onnx`");
}

#[test]
fn truncated_onnx() {
    let d = scratch("truncated");
    let bytes = std::fs::read(asset("digits_cnn.onnx")).unwrap();
    let f = d.join("half.onnx");
    std::fs::write(&f, &bytes[..bytes.len() / 2]).unwrap();
    expect_error(&["inspect", p(&f)], "is not a valid ONNX model");
}

#[test]
fn non_onnx_file() {
    let d = scratch("nononnx");
    let f = d.join("notes.onnx");
    std::fs::write(&f, "this is not a protobuf, just some text\n").unwrap();
    expect_error(&["inspect", p(&f)], "is not a valid ONNX model");
}

#[test]
fn unknown_model_extension() {
    expect_error(&["inspect", p(&asset("digits_samples_x.npy"))], "unknown model format");
}

#[test]
fn input_of_wrong_shape() {
    let d = scratch("shape");
    let x = qforge_ir::Tensor::from_f32(vec![2, 3], vec![0.0; 6]);
    let f = d.join("x.npy");
    qforge::npy::write(&f, &x).unwrap();
    let out = d.join("y.npy");
    expect_error(&["run", p(&asset("digits_cnn.onnx")), "--input", p(&f), "--output", p(&out)], "input `input`");
}

#[test]
fn input_of_wrong_dtype() {
    let d = scratch("dtype");
    let x = qforge_ir::Tensor::from_i64(vec![1, 1, 8, 8], vec![0; 64]);
    let f = d.join("x.npy");
    qforge::npy::write(&f, &x).unwrap();
    let out = d.join("y.npy");
    expect_error(&["run", p(&asset("digits_cnn.onnx")), "--input", p(&f), "--output", p(&out)], "i64");
}

/// A model without graph inputs (all constants) runs with no `--input`; a model with inputs
/// still needs them.
#[test]
fn run_without_inputs() {
    use qforge::onnx::builder::{int, model, node};
    let d = scratch("noinputs");
    let nodes = vec![
        node("Constant", &[], &["c"], vec![qforge::onnx::builder::ints("value_ints", &[1, 2, 3])]),
        node("Cast", &["c"], &["f"], vec![int("to", 1)]),
        node("Add", &["f", "f"], &["y"], vec![]),
    ];
    let m = d.join("constant.onnx");
    std::fs::write(&m, model(21, vec![], vec![], nodes, &["y"])).unwrap();
    let out = d.join("y.npy");
    expect_ok(&["run", p(&m), "--output", p(&out)]);
    assert_eq!(qforge::npy::read(&out).unwrap().to_f32_vec(), vec![2.0, 4.0, 6.0]);
    expect_error(&["run", p(&asset("digits_cnn.onnx")), "--output", p(&out)], "no --input for the model's input");
}

/// A model fed f64 and u16 arrays runs end to end on both engines: the .npy inputs and outputs
/// keep their types, f64 arithmetic is computed in f64, u16 multiplication wraps, Cast converts
/// between them; an op that does not compute on f64 is refused, naming the node and the way out.
#[test]
fn f64_and_u16_models_run_on_both_engines() {
    use qforge::onnx::builder::{int, model, node, vi};
    use qforge_ir::{Dim, Tensor, TensorData};
    // ONNX element types DOUBLE = 11, UINT16 = 4
    let d = scratch("dtypes");
    let nodes = vec![
        node("Cast", &["u"], &["c"], vec![int("to", 11)]),
        node("Mul", &["x", "c"], &["y"], vec![]),
        node("Mul", &["u", "u"], &["z"], vec![]),
    ];
    let inputs = vec![vi("x", 11, &[Dim::Fixed(4)]), vi("u", 4, &[Dim::Fixed(4)])];
    let m = d.join("dtypes.onnx");
    std::fs::write(&m, model(21, inputs, vec![], nodes, &["y", "z"])).unwrap();
    let x = [0.1f64, -2.5, 1e300, 3.0];
    let u = [2u16, 300, 65535, 7];
    let (xf, uf) = (d.join("x.npy"), d.join("u.npy"));
    qforge::npy::write(&xf, &Tensor::new(vec![4], TensorData::F64(x.to_vec())).unwrap()).unwrap();
    qforge::npy::write(&uf, &Tensor::new(vec![4], TensorData::U16(u.to_vec())).unwrap()).unwrap();
    let want_y: Vec<f64> = x.iter().zip(&u).map(|(&a, &b)| a * b as f64).collect();
    let want_z: Vec<u16> = u.iter().map(|&b| b.wrapping_mul(b)).collect();
    for engine in ["jit", "interp"] {
        let (yf, zf) = (d.join(format!("y_{engine}.npy")), d.join(format!("z_{engine}.npy")));
        let (x_arg, u_arg) = (format!("x={}", p(&xf)), format!("u={}", p(&uf)));
        let args = ["run", p(&m), "--input", &x_arg, "--input", &u_arg, "--output", p(&yf), "--output", p(&zf)];
        expect_ok(&[&args[..], &["--engine", engine]].concat());
        assert_eq!(qforge::npy::read(&yf).unwrap().data(), &TensorData::F64(want_y.clone()), "{engine}");
        assert_eq!(qforge::npy::read(&zf).unwrap().data(), &TensorData::U16(want_z.clone()), "{engine}");
    }
    let nodes = vec![node("Softmax", &["x"], &["y"], vec![])];
    std::fs::write(&m, model(21, vec![vi("x", 11, &[Dim::Fixed(4)])], vec![], nodes, &["y"])).unwrap();
    expect_error(&["inspect", p(&m)], "does not compute on f64");
}

#[test]
fn missing_input_npy() {
    let d = scratch("missingnpy");
    expect_error(
        &["run", p(&asset("digits_cnn.onnx")), "--input", "/nonexistent/x.npy", "--output", p(&d.join("y.npy"))],
        "/nonexistent/x.npy",
    );
}

#[test]
fn unsupported_op() {
    let d = scratch("unsupported");
    let f = d.join("einsum.onnx");
    std::fs::write(&f, qforge::onnx::builder::single_node_model("Col2Im", "")).unwrap();
    expect_error(&["inspect", p(&f)], "unsupported op `Col2Im`");
}

#[test]
fn bench_json_has_the_documented_keys_and_sweeps_batches() {
    let o = qforge(&[
        "bench",
        p(&asset("digits_cnn.onnx")),
        "--batch",
        "1,4",
        "--iters",
        "3",
        "--warmup",
        "1",
        "--profile-kernels",
        "--json",
    ]);
    assert_eq!(o.code, Some(0), "{}", o.stderr);
    let v: serde_json::Value = serde_json::from_str(o.stdout.trim()).expect("one JSON object");
    for key in ["median_ms", "p99_ms", "batch", "threads", "throughput", "sweep", "best_batch", "profile"] {
        assert!(v.get(key).is_some(), "bench --json lacks `{key}`: {v}");
    }
    assert_eq!(v["batch"], 1);
    assert_eq!(v["sweep"].as_array().map(|a| a.len()), Some(2));
    assert!(v["profile"].as_array().is_some_and(|a| !a.is_empty()), "no kernel breakdown: {v}");
}

/// A model with two integer inputs and a symbolic sequence length (the BERT fixture): bench
/// takes both by name, and refuses to invent token ids.
#[test]
fn bench_takes_several_named_inputs() {
    let t = std::path::PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/transformers"));
    let (model, ids, mask) = (t.join("bert.onnx"), t.join("bert_test_ids.npy"), t.join("bert_test_mask.npy"));
    let (ids_arg, mask_arg) = (format!("input_ids={}", p(&ids)), format!("attention_mask={}", p(&mask)));
    let base = ["bench", p(&model), "--iters", "2", "--warmup", "0", "--batch", "1,4"];
    let o = qforge(&[&base[..], &["--input", &mask_arg, "--input", &ids_arg, "--json"]].concat());
    assert_eq!(o.code, Some(0), "{}", o.stderr);
    let v: serde_json::Value = serde_json::from_str(o.stdout.trim()).expect("one JSON object");
    assert_eq!(v["sweep"].as_array().map(|a| a.len()), Some(2), "{v}");
    assert_eq!(v["host_ops"].as_array().map(|a| a.len()), Some(0), "{v}");
    expect_error(&[&base[..], &["--input", &ids_arg]].concat(), "input `attention_mask` is i64");
    expect_error(
        &[&base[..], &["--input", &ids_arg, "--input", &mask_arg, "--batch", "8"]].concat(),
        "fewer than the batch of 8",
    );
}

#[test]
fn bench_fails_a_missed_latency_budget() {
    expect_error(
        &["bench", p(&asset("digits_cnn.onnx")), "--iters", "2", "--warmup", "0", "--max-latency-ms", "0.000001"],
        "latency budget missed",
    );
}

#[test]
fn quantize_int8_needs_calibration_data() {
    expect_error(
        &["inspect", p(&asset("digits_cnn.onnx")), "--quantize", "int8"],
        "needs calibration data: add --calib",
    );
}

#[test]
fn bad_qconfig_names_the_line() {
    let d = scratch("qconfig");
    let f = d.join("bad.toml");
    std::fs::write(&f, "[default]\nobserver = \"kl\"\n").unwrap();
    expect_error(
        &["inspect", p(&asset("digits_cnn.onnx")), "--quantize", "dynamic", "--qconfig", p(&f)],
        "line 2: unknown calibration method `kl`",
    );
}

#[test]
fn labels_count_mismatch() {
    let d = scratch("labels");
    let y = qforge_ir::Tensor::from_i64(vec![3], vec![1, 2, 3]);
    let f = d.join("y.npy");
    qforge::npy::write(&f, &y).unwrap();
    expect_error(
        &["eval", p(&asset("digits_cnn.onnx")), "--input", p(&asset("digits_samples_x.npy")), "--labels", p(&f)],
        "200 inputs but 3 labels",
    );
}

#[test]
fn inspect_json_has_the_documented_keys() {
    let o = qforge(&["inspect", p(&asset("digits_cnn.onnx")), "--json"]);
    assert_eq!(o.code, Some(0), "{}", o.stderr);
    let v: serde_json::Value = serde_json::from_str(&o.stdout).expect("one JSON object");
    for key in ["inputs", "outputs", "ops", "params", "weight_bytes", "nodes"] {
        assert!(v.get(key).is_some(), "missing key {key}");
    }
    assert_eq!(v["inputs"][0]["name"], "input");
    assert_eq!(v["inputs"][0]["shape"], serde_json::json!(["N", 1, 8, 8]));
    assert_eq!(v["ops"]["conv"], 3);
    let node = &v["nodes"][0];
    for key in ["name", "op", "dtype", "quant", "from"] {
        assert!(node.get(key).is_some(), "node lacks {key}");
    }
}

#[test]
fn eval_json_and_run_roundtrip() {
    let o = qforge(&[
        "eval",
        p(&asset("digits_cnn.onnx")),
        "--input",
        p(&asset("digits_samples_x.npy")),
        "--labels",
        p(&asset("digits_samples_y.npy")),
        "--json",
    ]);
    assert_eq!(o.code, Some(0), "{}", o.stderr);
    let v: serde_json::Value = serde_json::from_str(&o.stdout).expect("one JSON object");
    assert_eq!(v["samples"], 200);
    let top1 = v["top1"].as_f64().expect("top1");
    assert!(top1 > 0.97, "top-1 {top1}");

    let d = scratch("run");
    let out = d.join("logits.npy");
    let o = qforge(&[
        "run",
        p(&asset("digits_cnn.onnx")),
        "--input",
        p(&asset("digits_samples_x.npy")),
        "--output",
        p(&out),
    ]);
    assert_eq!(o.code, Some(0), "{}", o.stderr);
    let y = qforge::npy::read(&out).unwrap();
    assert_eq!(y.shape(), &[200, 10]);
}

#[test]
fn qop_model_runs_from_the_cli() {
    let o = qforge(&[
        "eval",
        p(&corpus("digits_cnn_int8_qop.onnx")),
        "--input",
        p(&corpus("digits_test_x.npy")),
        "--labels",
        p(&corpus("digits_test_y.npy")),
        "--json",
    ]);
    assert_eq!(o.code, Some(0), "{}", o.stderr);
    let v: serde_json::Value = serde_json::from_str(&o.stdout).unwrap();
    // ORT's figure for this model (models README): 99.33 %.
    assert!((v["top1"].as_f64().unwrap() - 0.9933).abs() < 0.002, "{v}");
}

#[test]
fn demo_prints_its_table() {
    let o = qforge(&["demo"]);
    assert_eq!(o.code, Some(0), "{}", o.stderr);
    assert!(o.stdout.contains("top-1"), "{}", o.stdout);
    assert!(o.stdout.contains("qforge inspect"), "{}", o.stdout);
}

#[test]
fn verbose_logs_the_stages_on_stderr_and_the_default_is_quiet() {
    let model = asset("digits_cnn.onnx");
    let model = p(&model);
    let quiet = qforge(&["inspect", model]);
    assert_eq!(quiet.code, Some(0), "{}", quiet.stderr);
    assert!(quiet.stderr.is_empty(), "nothing on stderr by default: {}", quiet.stderr);

    let info = qforge(&["-v", "inspect", model]);
    assert_eq!(info.code, Some(0), "{}", info.stderr);
    assert_eq!(info.stdout, quiet.stdout, "-v changes stderr only");
    for needle in ["INFO", "imported", "34 nodes", "pass canonicalize", "pass optimize"] {
        assert!(info.stderr.contains(needle), "-v: no `{needle}` in:\n{}", info.stderr);
    }
    assert!(!info.stderr.contains("DEBUG"), "-v is info, not debug:\n{}", info.stderr);
    // the global flag works after the subcommand too, and counts
    let debug = qforge(&["inspect", model, "-vv"]);
    assert!(debug.stderr.contains("DEBUG") && debug.stderr.contains("pipeline options"), "{}", debug.stderr);

    // RUST_LOG overrides -v either way
    let env = common::qforge_env(&["inspect", model], &[("RUST_LOG", "debug")]);
    assert!(env.stderr.contains("DEBUG"), "RUST_LOG=debug without -v:\n{}", env.stderr);
    let env = common::qforge_env(&["-vv", "inspect", model], &[("RUST_LOG", "warn")]);
    assert!(env.stderr.is_empty(), "RUST_LOG=warn over -vv:\n{}", env.stderr);
    // a RUST_LOG that does not parse is a warning, and the command still runs
    let bad = common::qforge_env(&["inspect", model], &[("RUST_LOG", "qforge=loud")]);
    assert_eq!(bad.code, Some(0), "{}", bad.stderr);
    assert!(bad.stderr.contains("RUST_LOG `qforge=loud` ignored"), "{}", bad.stderr);
}

#[test]
fn verbose_counts_up_to_trace() {
    use clap::Parser;
    for (args, level) in [
        (&["qforge", "demo"][..], "warn"),
        (&["qforge", "-v", "demo"], "info"),
        (&["qforge", "demo", "-vv"], "debug"),
        (&["qforge", "demo", "-v", "--verbose", "-v"], "trace"),
        (&["qforge", "-vvvv", "demo"], "trace"),
    ] {
        let cli = qforge::commands::Cli::try_parse_from(args).expect("parses");
        assert_eq!(cli.log_level(), level, "{args:?}");
    }
}

#[test]
fn verbose_logs_calibration_jit_and_artifacts() {
    let d = scratch("verbose");
    let qfa = d.join("m.qfa");
    let (model, calib) = (asset("digits_cnn.onnx"), asset("digits_samples_x.npy"));
    let o = qforge(&["compile", "-v", p(&model), "--quantize", "int8", "--calib", p(&calib), "-o", p(&qfa)]);
    assert_eq!(o.code, Some(0), "{}", o.stderr);
    for needle in
        ["calibrating on", "observer minmax (the default)", "calibrated", "pass quantize-static", "saved artifact"]
    {
        assert!(o.stderr.contains(needle), "compile -v: no `{needle}` in:\n{}", o.stderr);
    }
    let o = qforge(&["bench", "-v", p(&qfa), "--iters", "2", "--warmup", "1", "--json"]);
    assert_eq!(o.code, Some(0), "{}", o.stderr);
    serde_json::from_str::<serde_json::Value>(o.stdout.trim()).expect("logs stay off stdout");
    for needle in ["loaded artifact", "JIT compiled", "bench batch 1: 1 warm-up and 2 timed runs"] {
        assert!(o.stderr.contains(needle), "bench -v: no `{needle}` in:\n{}", o.stderr);
    }
}

#[test]
fn errors_stay_one_line_after_the_logs() {
    let o = qforge(&["-v", "inspect", "/nonexistent/model.onnx"]);
    assert_eq!(o.code, Some(1), "{}", o.stderr);
    let errors: Vec<&str> = o.stderr.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "{}", o.stderr);
    assert_eq!(o.stderr.lines().last(), Some(errors[0]), "the error comes last: {}", o.stderr);
    assert!(errors[0].contains("cannot read `/nonexistent/model.onnx`"), "{}", errors[0]);
}

/// The README's `## Command line` section: the fenced usage block and the prose after it.
fn readme_command_line() -> (String, String) {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md");
    let text = std::fs::read_to_string(path).expect("README.md");
    let start = text.find("\n## Command line\n").expect("README has a `## Command line` section");
    let section = &text[start + 1..];
    let section = &section[..section[3..].find("\n## ").map_or(section.len(), |e| e + 3)];
    let open = section.find("```\n").expect("a fenced usage block") + 4;
    let close = open + section[open..].find("```").expect("the usage block closes");
    (section[open..close].to_string(), format!("{}{}", &section[..open], &section[close..]))
}

/// The options a text mentions: `--long` names, and short `-x` ones standing alone.
fn options_in(text: &str) -> std::collections::BTreeSet<String> {
    text.split(|c: char| c.is_whitespace() || "[]|`(),".contains(c))
        .filter_map(|t| {
            let name = t.strip_prefix("--").map(|n| ("--", n)).or_else(|| t.strip_prefix('-').map(|n| ("-", n)))?;
            let body: String = name.1.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '-').collect();
            let body = body.trim_end_matches('-');
            let short_ok = name.0 == "-" && body.len() == 1 && body.chars().all(|c| c.is_ascii_alphabetic());
            ((name.0 == "--" && !body.is_empty()) || short_ok).then(|| format!("{}{body}", name.0))
        })
        .collect()
}

/// The subcommands `qforge help` lists (without `help` itself).
fn subcommands() -> Vec<String> {
    let o = qforge(&["help"]);
    assert_eq!(o.code, Some(0), "{}", o.stderr);
    let commands = o.stdout.split("Commands:\n").nth(1).expect("`qforge help` lists the commands");
    commands
        .lines()
        .take_while(|l| !l.trim().is_empty())
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| *c != "help")
        .map(str::to_string)
        .collect()
}

/// The options `qforge help SUB` defines: each as its long name and, when it has one, its short
/// name (`("--output", Some("-o"))`). Definition lines are the ones indented by at most six
/// spaces that start with a dash; descriptions and value lists are indented further.
fn help_options(sub: &str) -> Vec<(String, Option<String>)> {
    let o = qforge(&["help", sub]);
    assert_eq!(o.code, Some(0), "qforge help {sub}: {}", o.stderr);
    let mut out = vec![];
    for line in o.stdout.lines() {
        let indent = line.len() - line.trim_start().len();
        let t = line.trim_start();
        if indent == 0 || indent > 6 || !t.starts_with('-') {
            continue;
        }
        let (short, rest) = match t.split_once(", ") {
            Some((s, r)) if s.len() == 2 && !s.starts_with("--") => (Some(s.to_string()), r),
            _ => (None, t),
        };
        let long: String = rest.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '-').collect();
        assert!(long.starts_with("--") && long.len() > 2, "qforge help {sub}: unexpected option line `{line}`");
        out.push((long, short));
    }
    assert!(!out.is_empty(), "qforge help {sub} shows no options:\n{}", o.stdout);
    out
}

/// The README's command-line reference and `--help` cannot drift apart: the same subcommands;
/// every option clap defines is in the section (in the subcommand's usage line, by its long or
/// short name, or in the prose that lists the PIPELINE and global options); every option a usage
/// line names exists for that subcommand, and every option the section names exists somewhere.
#[test]
fn readme_command_line_matches_help() {
    let (block, prose) = readme_command_line();
    // usage lines: `qforge SUB ...` and the indented lines continuing it
    let mut usage: std::collections::BTreeMap<String, String> = Default::default();
    let mut current = None;
    for line in block.lines() {
        if let Some(rest) = line.strip_prefix("qforge ") {
            let sub = rest.split_whitespace().next().unwrap_or_default().to_string();
            usage.entry(sub.clone()).or_default().push_str(rest);
            current = Some(sub);
        } else if line.starts_with(' ') {
            let sub = current.clone().unwrap_or_else(|| panic!("README usage block: `{line}` continues nothing"));
            usage.entry(sub).or_default().push_str(&format!(" {line}"));
        } else if !line.trim().is_empty() {
            panic!("README usage block: `{line}` is not a `qforge COMMAND` line");
        }
    }
    let subs = subcommands();
    let listed: Vec<&String> = usage.keys().collect();
    let mut sorted = subs.clone();
    sorted.sort();
    assert_eq!(listed, sorted.iter().collect::<Vec<_>>(), "README usage block against `qforge help`'s commands");

    let prose_opts = options_in(&prose);
    let section_opts: std::collections::BTreeSet<String> = options_in(&block).union(&prose_opts).cloned().collect();
    let mut defined = std::collections::BTreeSet::new();
    for sub in &subs {
        let opts = help_options(sub);
        let line_opts = options_in(&usage[sub]);
        for (long, short) in &opts {
            let in_line = line_opts.contains(long) || short.as_ref().is_some_and(|s| line_opts.contains(s));
            assert!(
                in_line || prose_opts.contains(long),
                "`qforge {sub}` has {long} but README's usage line for {sub} and the prose after it do not mention it"
            );
            assert!(section_opts.contains(long), "README's Command line section never names {long} (qforge {sub})");
            defined.insert(long.clone());
            defined.extend(short.clone());
        }
        for o in &line_opts {
            assert!(
                opts.iter().any(|(l, s)| l == o || s.as_ref() == Some(o)),
                "README's usage line for {sub} names {o}, which `qforge help {sub}` does not have"
            );
        }
    }
    for o in &section_opts {
        assert!(defined.contains(o), "README's Command line section names {o}, which no `qforge help` shows");
    }
}

/// `sensitivity --min-sqnr DB -o QCONFIG.toml` needs no labels and writes a qconfig that loads
/// (here on the transformer block with LayerNorm outliers, `--smooth` adds `[smoothquant]`);
/// `--smooth` outside static INT8 is a one-line error.
#[test]
fn sensitivity_min_sqnr_writes_a_qconfig() {
    let d = scratch("minsqnr");
    let model =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/quant/transformer_block_outliers.qir");
    let x =
        qforge_ir::Tensor::from_f32(vec![40, 4, 8], (0..1280).map(|i| ((i * 37 % 101) as f32 / 25.0) - 2.0).collect());
    let calib = d.join("calib.npy");
    qforge::npy::write(&calib, &x).unwrap();
    for (extra, skips) in [(None, true), (Some("0.5"), false)] {
        let out = d.join("q.toml");
        let mut args = vec!["sensitivity", p(&model), "--calib", p(&calib), "--min-sqnr", "30", "-o", p(&out)];
        args.extend(["--engine", "interp"]);
        if let Some(a) = extra {
            args.extend(["--smooth", a]);
        }
        let o = qforge(&args);
        assert_eq!(o.code, Some(0), "{}", o.stderr);
        assert!(o.stdout.contains("kept float:"), "{}", o.stdout);
        let text = std::fs::read_to_string(&out).unwrap();
        assert_eq!(text.contains("skip = true"), skips, "{text}");
        assert_eq!(text.contains("[smoothquant]"), extra.is_some(), "{text}");
        let cfg = qforge::qconfig::load(&out).unwrap().config;
        assert_eq!(cfg.smooth.is_some(), extra.is_some());
    }
    expect_error(
        &["run", p(&model), "--input", p(&calib), "--output", p(&d.join("y.npy")), "--smooth", "0.5"],
        "--smooth needs --quantize int8",
    );
}

/// One `compile --quantize int8 --calib X` reads the calibration file once and builds one
/// evaluator, with the user's engine options, however many stages run the graph (calibration and
/// the `--min-sqnr` fallback's sensitivity study here).
#[test]
fn one_compile_reads_the_calibration_set_once_and_builds_one_evaluator() {
    let (model, calib) = (asset("digits_cnn.onnx"), asset("digits_calib_x.npy"));
    let o = qforge(&[
        "compile",
        p(&model),
        "--quantize",
        "int8",
        "--calib",
        p(&calib),
        "--min-sqnr",
        "60",
        "--threads",
        "2",
        "--kernels",
        "cranelift",
        "--report",
        "-v",
    ]);
    assert_eq!(o.code, Some(0), "{}", o.stderr);
    let count = |needle: &str| o.stderr.lines().filter(|l| l.contains(needle)).count();
    assert_eq!(count("calibration set `"), 1, "the calibration file is read once:\n{}", o.stderr);
    assert_eq!(count("qforge::evaluator: evaluator:"), 1, "one evaluator:\n{}", o.stderr);
    assert_eq!(count("evaluator: jit, 2 thread(s), cranelift kernels"), 1, "{}", o.stderr);
    // both stages that read it ran
    assert_eq!(count("calibrated "), 1, "{}", o.stderr);
    assert_eq!(count("sensitivity: quantizing one layer at a time"), 1, "{}", o.stderr);
}

#[test]
fn quantize_for_a_profile_reports_its_conventions_and_refuses_their_breaches() {
    let d = scratch("quantize-profile");
    let (model, calib) = (asset("digits_cnn.onnx"), asset("digits_calib_x.npy"));
    let out = d.join("nv.onnx");
    let base = ["quantize", p(&model), "--calib", p(&calib), "--profile", "nvidia-xavier", "-o", p(&out)];
    let o = expect_ok(&base);
    for want in [
        "conventions of `nvidia-xavier`: nvidia (TensorRT explicit quantization): activations i8-symmetric",
        "i8 with zero point 0",
        "channels padded to a multiple of 8: /fc/Gemm: 10 output channels padded to 16",
        "biases: 4 written as float",
    ] {
        assert!(o.stdout.contains(want), "`{want}` in:\n{}", o.stdout);
    }
    expect_error(
        &[&base[..], &["--asymmetric"]].concat(),
        "--asymmetric: activations u8-asymmetric: the `nvidia-xavier`",
    );
    expect_error(&[&base[..], &["--weight-bits", "4"]].concat(), "takes i8-symmetric weights");
}

/// `finetune --prune` prints the MACs and parameters before and after with the reduction, for both
/// methods; the settings of one method given to the other, and an amount outside [0, 1], are
/// one-line errors.
#[test]
fn finetune_prunes_and_refuses_the_other_methods_settings() {
    let d = scratch("finetune-flags");
    let (model, calib, labels) = (asset("digits_cnn.onnx"), asset("digits_calib_x.npy"), asset("digits_samples_y.npy"));
    let out = d.join("ft.onnx");
    let base = ["finetune", p(&model), "--calib", p(&calib), "-o", p(&out)];
    let macs = "MACs per sample 599680 -> 288738 (-51.9%), parameters 24170 -> 11881 (-50.8%)";
    let o = expect_ok(&[&base[..], &["--prune", "0.3", "--epochs", "1"]].concat());
    assert!(o.stdout.contains(macs), "{}", o.stdout);
    assert!(o.stdout.contains("KD from the unpruned FP32 model"), "{}", o.stdout);
    std::fs::remove_file(&out).unwrap();
    let o = expect_ok(&[&base[..], &["--prune", "0.3", "--method", "adaround", "--iterations", "5"]].concat());
    assert!(o.stdout.contains(macs), "{}", o.stdout);
    assert!(o.stdout.contains("INT8 post-training with AdaRound (4 layers, 5 steps each"), "{}", o.stdout);
    std::fs::remove_file(&out).unwrap();
    let adaround = [&base[..], &["--method", "adaround"]].concat();
    for (flag, value) in [
        ("--epochs", "3"),
        ("--optimizer", "sgd"),
        ("--kd-temperature", "2"),
        ("--precision", "fp16"),
        ("--loss-scale", "dynamic"),
        ("--labels", p(&labels)),
        ("--report", "r.html"),
    ] {
        expect_error(&[&adaround[..], &[flag, value]].concat(), &format!("{flag} is a QAT setting: --method adaround"));
    }
    expect_error(&[&base[..], &["--iterations", "5"]].concat(), "--iterations is AdaRound's steps per layer");
    let o = qforge(&[&base[..], &["--prune", "1.5"]].concat());
    assert_eq!(o.code, Some(2), "{}", o.stderr);
    assert!(o.stderr.contains("1.5 is not a fraction in [0, 1]"), "{}", o.stderr);
    assert!(!out.exists());
}

/// `finetune --method adaround` is `quantize --rounding adaround` (the same stages, the same
/// policy): the same QDQ ONNX bytes, at 8- and at 4-bit weights, for the same `[adaround]` fit.
#[test]
fn finetune_adaround_writes_what_quantize_rounding_adaround_writes() {
    let d = scratch("finetune-adaround");
    let (model, calib) = (asset("digits_cnn.onnx"), asset("digits_calib_x.npy"));
    let qconfig = d.join("q.toml");
    std::fs::write(&qconfig, "[adaround]\niterations = 20\nseed = 3\n").unwrap();
    for (bits, quantize) in [("8", "int8"), ("4", "int4")] {
        let (a, b) = (d.join(format!("f{bits}.onnx")), d.join(format!("q{bits}.onnx")));
        let f = ["finetune", p(&model), "--calib", p(&calib), "--method", "adaround", "--quantize", quantize];
        expect_ok(&[&f[..], &["--iterations", "20", "--seed", "3", "-o", p(&a)]].concat());
        let q = ["quantize", p(&model), "--calib", p(&calib), "--rounding", "adaround", "--weight-bits", bits];
        expect_ok(&[&q[..], &["--qconfig", p(&qconfig), "-o", p(&b)]].concat());
        assert!(std::fs::read(&a).unwrap() == std::fs::read(&b).unwrap(), "W{bits}A8: the exports differ");
    }
}
