//! What a new user meets first, each with the exact line qforge prints: mistakes reported before
//! any long work, one-line summaries of what was written, one rule for counts, data a model
//! cannot represent, leftovers of interrupted writes, and the small wording fixes.
//!
//! The table is the test: every case runs `qforge` once and is checked by [`check`]. In expected
//! lines, `{dir}` stands for the case's scratch directory, `{asset}` for `compiler/assets` and
//! `{size}` for a file size as qforge prints it (`208 B`, `35.9 KiB`).

mod common;
use common::{asset, qforge, scratch};
use std::path::{Path, PathBuf};

/// What a case must print.
#[derive(Default)]
struct Expect {
    /// The exit status.
    code: i32,
    /// With a non-zero status: the last line of stderr, the only `error:` line.
    error: Option<&'static str>,
    /// Lines that must appear on stdout, whole.
    stdout: &'static [&'static str],
    /// Lines that must appear on stderr, whole (logs and warnings).
    stderr: &'static [&'static str],
    /// Text that must not appear on stderr (work that should not have started).
    absent: &'static [&'static str],
}

struct Case {
    name: &'static str,
    args: Vec<String>,
    expect: Expect,
    /// Checked after the run, with the scratch directory.
    after: Option<fn(&Path)>,
}

/// `expected` (with `{dir}`, `{asset}` and `{size}`) as an anchored regex.
fn pattern(expected: &str, dir: &Path) -> regex::Regex {
    let assets = asset("x").parent().expect("assets").display().to_string();
    let mut re = String::from("^");
    for (i, part) in expected.split("{size}").enumerate() {
        if i > 0 {
            re.push_str(r"[0-9]+(\.[0-9])? (B|KiB|MiB)");
        }
        let part = part.replace("{dir}", &dir.display().to_string()).replace("{asset}", &assets);
        re.push_str(&regex::escape(&part));
    }
    re.push('$');
    regex::Regex::new(&re).expect("pattern")
}

fn has_line(text: &str, expected: &str, dir: &Path) -> bool {
    let re = pattern(expected, dir);
    text.lines().any(|l| re.is_match(l))
}

/// The one check every case goes through.
fn check(case: &Case, dir: &Path) {
    let args: Vec<&str> = case.args.iter().map(String::as_str).collect();
    let o = qforge(&args);
    let name = case.name;
    let e = &case.expect;
    assert_eq!(o.code, Some(e.code), "{name}: qforge {args:?} exited with {:?}:\n{}", o.code, o.stderr);
    assert!(!o.stderr.contains("panicked") && !o.stderr.contains("internal error"), "{name}: {}", o.stderr);
    if let Some(want) = e.error {
        let errors: Vec<&str> = o.stderr.lines().filter(|l| l.starts_with("error:")).collect();
        assert_eq!(errors.len(), 1, "{name}: one error line expected:\n{}", o.stderr);
        let last = o.stderr.lines().last().unwrap_or_default();
        assert!(pattern(want, dir).is_match(last), "{name}:\n  got  {last}\n  want {want}");
    }
    for want in e.stdout {
        assert!(has_line(&o.stdout, want, dir), "{name}: no stdout line\n  {want}\nin:\n{}", o.stdout);
    }
    for want in e.stderr {
        assert!(has_line(&o.stderr, want, dir), "{name}: no stderr line\n  {want}\nin:\n{}", o.stderr);
    }
    for not in e.absent {
        assert!(!o.stderr.contains(not), "{name}: `{not}` should not have happened:\n{}", o.stderr);
    }
    if let Some(f) = case.after {
        f(dir);
    }
}

fn s(p: &Path) -> String {
    p.display().to_string()
}

fn strs(v: &[&str]) -> Vec<String> {
    v.iter().map(|x| x.to_string()).collect()
}

/// The inputs the cases share, written into `dir`.
struct Files {
    model: String,
    calib: String,
    samples: String,
    labels: String,
    wrong_shape: String,
    non_finite: String,
    qconfig_typo: String,
    qconfig_regex_typo: String,
    artifact: String,
    /// `data: f32[2,3]` reshaped to the graph input `shape: i64[2]` (ONNX), its inputs (`shape`
    /// [3, 2], another value, one of the wrong type and one of the wrong size), and its artifact
    /// compiled with `--specialize shape=` [3, 2].
    reshape: String,
    data: String,
    shape: String,
    shape_other: String,
    shape_f32: String,
    shape_3: String,
    reshape_artifact: String,
}

fn files(dir: &Path) -> Files {
    let write_npy = |name: &str, t: &qforge_ir::Tensor| -> String {
        let f = dir.join(name);
        qforge::npy::write(&f, t).expect("npy");
        s(&f)
    };
    let wrong = qforge_ir::Tensor::from_f32(vec![2, 3], vec![0.0; 6]);
    let mut v = vec![0.5f32; 2 * 64];
    v[0] = f32::NAN;
    v[64 + 9] = f32::INFINITY;
    let non_finite = qforge_ir::Tensor::from_f32(vec![2, 1, 8, 8], v);
    let typo = dir.join("typo.toml");
    std::fs::write(&typo, "[[node]]\nmatch = \"/conv9/Conv\"\nskip = true\n").expect("qconfig");
    let regex_typo = dir.join("regex.toml");
    std::fs::write(
        &regex_typo,
        "[default]\nobserver = \"minmax\"\n\n[[node]]\nregex = \"^/head/\"\nprecision = \"fp32\"\n",
    )
    .expect("qconfig");
    let artifact = dir.join("m.qfa");
    let reshape = dir.join("reshape.onnx");
    {
        use qforge::onnx::builder::{model, node, vi};
        use qforge_ir::Dim;
        let inputs = vec![vi("data", 1, &[Dim::Fixed(2), Dim::Fixed(3)]), vi("shape", 7, &[Dim::Fixed(2)])];
        let bytes = model(17, inputs, vec![], vec![node("Reshape", &["data", "shape"], &["y"], vec![])], &["y"]);
        std::fs::write(&reshape, bytes).expect("reshape model");
    }
    let i64s = |v: Vec<i64>| qforge_ir::Tensor::new(vec![v.len()], qforge_ir::TensorData::I64(v)).expect("i64");
    let f = Files {
        model: s(&asset("digits_cnn.onnx")),
        calib: s(&asset("digits_calib_x.npy")),
        samples: s(&asset("digits_samples_x.npy")),
        labels: s(&asset("digits_samples_y.npy")),
        wrong_shape: write_npy("wrong.npy", &wrong),
        non_finite: write_npy("nonfinite.npy", &non_finite),
        qconfig_typo: s(&typo),
        qconfig_regex_typo: s(&regex_typo),
        artifact: s(&artifact),
        reshape: s(&reshape),
        data: write_npy("data.npy", &qforge_ir::Tensor::from_f32(vec![2, 3], vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0])),
        shape: write_npy("shape.npy", &i64s(vec![3, 2])),
        shape_other: write_npy("shape_other.npy", &i64s(vec![6, 1])),
        shape_f32: write_npy("shape_f32.npy", &qforge_ir::Tensor::from_f32(vec![2], vec![3.0, 2.0])),
        shape_3: write_npy("shape_3.npy", &i64s(vec![3, 2, 1])),
        reshape_artifact: s(&dir.join("reshape.qfa")),
    };
    let o = qforge(&["compile", &f.reshape, "--specialize", &format!("shape={}", f.shape), "-o", &f.reshape_artifact]);
    assert_eq!(o.code, Some(0), "the specialized artifact for the cases: {}", o.stderr);
    let o = qforge(&["compile", &f.model, "--quantize", "int8", "--calib", &f.calib, "-o", &f.artifact]);
    assert_eq!(o.code, Some(0), "the artifact for the cases: {}", o.stderr);
    // a temporary file left by a compile that was killed (no process has this id)
    std::fs::write(dir.join(".m2.qfa.4194303.tmp"), b"half an artifact").expect("stale temporary");
    f
}

fn cases(d: &Path, f: &Files) -> Vec<Case> {
    let out = |name: &str| s(&d.join(name));
    let int8 = |cmd: &str| strs(&[cmd, &f.model, "--quantize", "int8", "--calib", &f.calib]);
    let with = |mut a: Vec<String>, more: &[&str]| {
        a.extend(strs(more));
        a
    };
    let missing_dir = s(&d.join("missing/m.qfa"));
    let data = format!("data={}", f.data);
    let shape = |file: &str| format!("shape={file}");
    vec![
        // an input the IR needs as a constant, fed as a graph input: `run` compiles the model for
        // the value given, on either engine, and says so; other commands take --specialize
        Case {
            name: "run specializes on an input the model needs as a constant (JIT)",
            args: strs(&["run", &f.reshape, "--input", &data, "--input", &shape(&f.shape), "--output", &out("r.npy")]),
            expect: Expect {
                stdout: &["wrote `{dir}/r.npy` (f32[3, 2], {size})"],
                stderr: &["note: input `shape` is specialized: the model is compiled for its value"],
                ..Expect::default()
            },
            after: Some(|d| {
                let y = qforge::npy::read(&d.join("r.npy")).expect("r.npy");
                assert_eq!((y.shape(), y.to_f32_vec()), (&[3usize, 2][..], vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]));
            }),
        },
        Case {
            name: "run specializes on an input the model needs as a constant (interpreter, positional)",
            args: strs(&[
                "run",
                &f.reshape,
                "--input",
                &f.data,
                "--input",
                &f.shape_other,
                "--output",
                &out("r2.npy"),
                "--engine",
                "interp",
            ]),
            expect: Expect {
                stdout: &["wrote `{dir}/r2.npy` (f32[6, 1], {size})"],
                stderr: &["note: input `shape` is specialized: the model is compiled for its value"],
                ..Expect::default()
            },
            after: None,
        },
        Case {
            name: "an input needed as a constant and not given names --specialize",
            args: strs(&["compile", &f.reshape, "--report"]),
            expect: Expect {
                code: 1,
                error: Some(
                    "error: node `Reshape_0` (Reshape): input `shape` (shape) must be a constant (or computed from \
                     constants or input shapes), but it is computed at run time: it is a graph input (to compile the \
                     model for one value of it, give that value: --specialize shape=FILE.npy)",
                ),
                ..Expect::default()
            },
            after: None,
        },
        Case {
            name: "an artifact specialized by --specialize runs with the value it was compiled for",
            args: strs(&[
                "run",
                &f.reshape_artifact,
                "--input",
                &data,
                "--input",
                &shape(&f.shape),
                "--output",
                &out("a1.npy"),
            ]),
            expect: Expect { stdout: &["wrote `{dir}/a1.npy` (f32[3, 2], {size})"], ..Expect::default() },
            after: None,
        },
        Case {
            name: "an artifact specialized by --specialize runs without the specialized input",
            args: strs(&["run", &f.reshape_artifact, "--input", &f.data, "--output", &out("a2.npy")]),
            expect: Expect { stdout: &["wrote `{dir}/a2.npy` (f32[3, 2], {size})"], ..Expect::default() },
            after: None,
        },
        Case {
            name: "an artifact specialized by --specialize refuses another value",
            args: strs(&[
                "run",
                &f.reshape_artifact,
                "--input",
                &data,
                "--input",
                &shape(&f.shape_other),
                "--output",
                &out("a3.npy"),
            ]),
            expect: Expect {
                code: 1,
                error: Some(
                    "error: --input gives input `shape` a value other than the one the model was compiled for \
                     (specialized on i64[2] [3, 2]); recompile with --specialize shape=... to run it on another",
                ),
                ..Expect::default()
            },
            after: None,
        },
        Case {
            name: "a specialized value of the wrong type",
            args: strs(&["compile", &f.reshape, "--specialize", &shape(&f.shape_f32), "--report"]),
            expect: Expect {
                code: 1,
                error: Some(
                    "error: cannot specialize input `shape`: the model declares it i64[2], the value given is f32[2]",
                ),
                ..Expect::default()
            },
            after: None,
        },
        Case {
            name: "a specialized value of the wrong shape",
            args: strs(&["graph", &f.reshape, "--specialize", &shape(&f.shape_3), "-o", &out("g.dot")]),
            expect: Expect {
                code: 1,
                error: Some(
                    "error: cannot specialize input `shape`: the model declares it i64[2], the value given is i64[3]",
                ),
                ..Expect::default()
            },
            after: None,
        },
        Case {
            name: "--specialize naming no input",
            args: strs(&["compile", &f.reshape, "--specialize", &format!("shap={}", f.shape), "--report"]),
            expect: Expect {
                code: 1,
                error: Some(
                    "error: cannot specialize input `shap`: the model has no such input (inputs: `data`, `shape`)",
                ),
                ..Expect::default()
            },
            after: None,
        },
        // a qconfig rule that names no node is an error naming the rule and the closest names
        Case {
            name: "qconfig glob rule names no node",
            args: with(int8("compile"), &["--qconfig", &f.qconfig_typo, "-o", &out("q.qfa"), "-v"]),
            expect: Expect {
                code: 1,
                error: Some(
                    "error: qconfig `{dir}/typo.toml` line 1: the [[node]] rule match = \"/conv9/Conv\" names no node \
                     of the model (closest: `/conv1/Conv`, `/conv2/Conv`, `/conv3/Conv`)",
                ),
                absent: &["calibrating"],
                ..Expect::default()
            },
            after: None,
        },
        Case {
            name: "qconfig regex rule names no node",
            args: with(int8("inspect"), &["--qconfig", &f.qconfig_regex_typo]),
            expect: Expect {
                code: 1,
                error: Some(
                    "error: qconfig `{dir}/regex.toml` line 4: the [[node]] rule regex = \"^/head/\" names no node of \
                     the model (closest: `/fc/Gemm`, `/relu1/Relu`, `/relu2/Relu`)",
                ),
                ..Expect::default()
            },
            after: None,
        },
        // output paths and input shapes are checked before calibration starts
        Case {
            name: "missing output directory, before calibrating",
            args: with(int8("compile"), &["-o", &missing_dir, "-v"]),
            expect: Expect {
                code: 1,
                error: Some(
                    "error: cannot write -o `{dir}/missing/m.qfa`: the directory `{dir}/missing` does not exist",
                ),
                absent: &["calibrating", "imported"],
                ..Expect::default()
            },
            after: None,
        },
        #[cfg(target_os = "linux")]
        Case {
            name: "output directory not writable",
            args: strs(&["quantize", &f.model, "--calib", &f.calib, "-o", "/sys/q.onnx"]),
            expect: Expect {
                code: 1,
                error: Some(
                    "error: cannot write -o `/sys/q.onnx`: the directory `/sys` is not writable (Permission denied \
                     (os error 13))",
                ),
                ..Expect::default()
            },
            after: None,
        },
        Case {
            name: "input of the wrong shape, before calibrating",
            args: with(int8("run"), &["--input", &f.wrong_shape, "--output", &out("y.npy"), "-v"]),
            expect: Expect {
                code: 1,
                error: Some("error: input `input`: expected f32[N,1,8,8], got f32[2,3]"),
                absent: &["calibrating"],
                ..Expect::default()
            },
            after: None,
        },
        // one size limit, one message, whichever engine runs the graph
        Case {
            name: "a result over --max-tensor-bytes on the interpreter",
            args: strs(&[
                "run",
                &f.model,
                "--input",
                &f.samples,
                "--output",
                &out("y.npy"),
                "--engine",
                "interp",
                "--max-tensor-bytes",
                "100000",
            ]),
            expect: Expect {
                code: 1,
                error: Some(
                    "error: node `/conv1/Conv`: the result needs 819200 bytes, more than the limit of 100000 bytes \
                     (--max-tensor-bytes)",
                ),
                ..Expect::default()
            },
            after: None,
        },
        Case {
            name: "a result over --max-tensor-bytes on the JIT",
            args: strs(&[
                "run",
                &f.model,
                "--input",
                &f.samples,
                "--output",
                &out("y.npy"),
                "--engine",
                "jit",
                "--max-tensor-bytes",
                "100000",
            ]),
            expect: Expect {
                code: 1,
                error: Some(
                    "error: node `/conv1/Conv`: the result needs 819200 bytes, more than the limit of 100000 bytes \
                     (--max-tensor-bytes)",
                ),
                ..Expect::default()
            },
            after: None,
        },
        // commands that write say what they wrote
        Case {
            name: "run says what it wrote",
            args: with(int8("run"), &["--input", &f.samples, "--output", &out("y.npy")]),
            expect: Expect { stdout: &["wrote `{dir}/y.npy` (f32[200, 10], {size})"], ..Expect::default() },
            after: None,
        },
        Case {
            name: "compile -o says what it wrote",
            args: with(int8("compile"), &["-o", &out("c.qfa")]),
            expect: Expect {
                stdout: &["wrote `{dir}/c.qfa` ({size}): 8 nodes after 6 passes, {size} of weights"],
                ..Expect::default()
            },
            after: None,
        },
        Case {
            name: "quantize says what it wrote",
            args: strs(&["quantize", &f.model, "--calib", &f.calib, "-o", &out("q.onnx")]),
            expect: Expect {
                stdout: &["wrote `{dir}/q.onnx` ({size}): static INT8 QDQ ONNX, 4 weight tensor(s) quantized"],
                ..Expect::default()
            },
            after: None,
        },
        Case {
            name: "report says what it wrote",
            args: strs(&[
                "report",
                &f.model,
                "--calib",
                &f.calib,
                "--input",
                &f.samples,
                "--labels",
                &f.labels,
                "--sensitivity-samples",
                "20",
                "--latency-iters",
                "1",
                "-o",
                &out("r.html"),
            ]),
            expect: Expect {
                stdout: &[
                    "wrote `{dir}/r.html` ({size}): top-1 99.50% (fp32 99.50%), output SQNR 41.35 dB against fp32 on \
                     200 sample(s)",
                ],
                ..Expect::default()
            },
            after: None,
        },
        // one rule for every count
        Case {
            name: "eval --batch 0",
            args: strs(&["eval", &f.model, "--input", &f.samples, "--labels", &f.labels, "--batch", "0"]),
            expect: Expect {
                code: 2,
                error: Some("error: invalid value '0' for '--batch <BATCH>': must be at least 1"),
                ..Expect::default()
            },
            after: None,
        },
        Case {
            name: "--calib-batch 0",
            args: with(int8("compile"), &["--calib-batch", "0", "--report"]),
            expect: Expect {
                code: 2,
                error: Some("error: invalid value '0' for '--calib-batch <N>': must be at least 1"),
                ..Expect::default()
            },
            after: None,
        },
        Case {
            name: "bench --batch 0",
            args: strs(&["bench", &f.model, "--batch", "1,0"]),
            expect: Expect {
                code: 2,
                error: Some("error: invalid value '0' for '--batch <BATCH>': must be at least 1"),
                ..Expect::default()
            },
            after: None,
        },
        // data a quantized model cannot represent is never passed over silently
        Case {
            name: "NaN and infinity in --input warn",
            args: with(int8("run"), &["--input", &f.non_finite, "--output", &out("nf.npy")]),
            expect: Expect {
                stdout: &["wrote `{dir}/nf.npy` (f32[2, 10], {size})"],
                stderr: &[
                    " WARN qforge::data: --input holds 1 NaN and 1 infinite value(s) of 128: a float model propagates \
                     them, a quantized one turns them into finite values",
                ],
                ..Expect::default()
            },
            after: None,
        },
        Case {
            name: "NaN and infinity in --input under --strict",
            args: with(int8("run"), &["--input", &f.non_finite, "--output", &out("nf.npy"), "--strict"]),
            expect: Expect {
                code: 1,
                error: Some(
                    "error: --input holds 1 NaN and 1 infinite value(s) of 128: a float model propagates them, a \
                     quantized one turns them into finite values (refused by --strict)",
                ),
                ..Expect::default()
            },
            after: None,
        },
        Case {
            name: "NaN and infinity in the calibration set",
            args: strs(&["compile", &f.model, "--quantize", "int8", "--calib", &f.non_finite, "--report"]),
            expect: Expect {
                code: 1,
                error: Some(
                    "error: calibration set `{dir}/nonfinite.npy` holds 1 NaN and 1 infinite value(s) of 128: a float \
                     model propagates them, a quantized one turns them into finite values (calibration needs finite \
                     data)",
                ),
                ..Expect::default()
            },
            after: None,
        },
        // what a killed compile left behind is removed by the next one
        Case {
            name: "stale temporary of a killed compile",
            args: with(int8("compile"), &["-o", &out("m2.qfa"), "-v"]),
            expect: Expect {
                stderr: &[
                    " INFO qforge::files: removed `{dir}/.m2.qfa.4194303.tmp`, left by an interrupted write (process \
                     4194303)",
                ],
                ..Expect::default()
            },
            after: Some(|d| {
                assert!(!d.join(".m2.qfa.4194303.tmp").exists(), "the stale temporary file is still there");
                assert!(d.join("m2.qfa").exists());
            }),
        },
        // the small ones
        Case {
            name: "an OS error is printed once (model)",
            args: strs(&["inspect", "/nonexistent/model.onnx"]),
            expect: Expect {
                code: 1,
                error: Some("error: cannot read `/nonexistent/model.onnx`: No such file or directory (os error 2)"),
                ..Expect::default()
            },
            after: None,
        },
        Case {
            name: "an OS error is printed once (data)",
            args: strs(&["run", &f.model, "--input", "/nonexistent/x.npy", "--output", &out("o.npy")]),
            expect: Expect {
                code: 1,
                error: Some("error: cannot read `/nonexistent/x.npy`: No such file or directory (os error 2)"),
                ..Expect::default()
            },
            after: None,
        },
        Case {
            name: "a directory as MODEL",
            args: strs(&["inspect", &s(d)]),
            expect: Expect {
                code: 1,
                error: Some("error: `{dir}` is a directory; give a model file (.onnx, .qir or .qfa)"),
                ..Expect::default()
            },
            after: None,
        },
        Case {
            name: "an option unset at compile time conflicts by its default",
            args: strs(&[
                "run",
                &f.artifact,
                "--calib-method",
                "entropy",
                "--input",
                &f.samples,
                "--output",
                &out("a.npy"),
            ]),
            expect: Expect {
                code: 1,
                error: Some(
                    "error: `{dir}/m.qfa`: --calib-method entropy conflicts with the artifact, compiled with \
                     calib_method = minmax (the default): an artifact runs its stored graph; recompile from the source \
                     model to change it",
                ),
                ..Expect::default()
            },
            after: None,
        },
        Case {
            name: "the calibration log names where the observer came from",
            args: with(int8("compile"), &["--calib-method", "entropy", "--report", "-v"]),
            expect: Expect {
                stderr: &[
                    " INFO qforge::stages: calibrating on `{asset}/digits_calib_x.npy`: 2 batches of at most 50, 7 \
                     tensors observed, observer entropy (--calib-method)",
                ],
                ..Expect::default()
            },
            after: None,
        },
        Case {
            name: "a calibrated range far worse than min-max's is warned about, naming the tensor",
            args: strs(&[
                "compile",
                &fixture("exact_int8.qir"),
                "--quantize",
                "int8",
                "--calib",
                &fixture("outliers_x.npy"),
                "--calib-method",
                "entropy",
                // the conv's result is the graph output: calibrated only when outputs are rounded
                "--quantize-outputs",
                "on",
                "--report",
            ]),
            expect: Expect {
                stderr: &[
                    " WARN qforge::stages: calibration of `/conv/Conv` (conv) result 0: entropy range [-1.0085e2, \
                     4.9386e1] clips 0.40% of the calibration values, SQNR 9.3 dB; min-max [-1.9399e2, 9.5215e1] would \
                     clip 0.00%, SQNR 28.6 dB",
                ],
                ..Expect::default()
            },
            after: None,
        },
        Case {
            name: "sensitivity --json says what an infinite SQNR is",
            args: strs(&["sensitivity", &fixture("exact_int8.qir"), "--calib", &fixture("exact_int8_x.npy"), "--json"]),
            expect: Expect {
                stdout: &["  \"all_int8_sqnr_db\": \"inf\",", "      \"sqnr_db\": \"inf\","],
                ..Expect::default()
            },
            after: None,
        },
    ]
}

/// A fixture of these tests (`compiler/tests/fixtures/`).
fn fixture(name: &str) -> String {
    s(&Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name))
}

#[test]
fn first_use_frictions_have_their_exact_messages() {
    let dir = scratch("frictions");
    let f = files(&dir);
    for case in cases(&dir, &f) {
        check(&case, &dir);
    }
}

/// `demo` says which node count is which: as imported above the table, after the pipeline in it.
#[test]
fn demo_counts_nodes_as_imported_and_after_the_pipeline() {
    let o = qforge(&["demo"]);
    assert_eq!(o.code, Some(0), "{}", o.stderr);
    let dir = PathBuf::from("/");
    assert!(has_line(
        &o.stdout,
        "  nodes                  13 (as imported; after the pipeline in the table below)",
        &dir
    ));
    assert!(o.stdout.contains("nodes are counted after the pipeline"), "{}", o.stdout);
}
