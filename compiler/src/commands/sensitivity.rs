//! `qforge sensitivity MODEL --calib X [--input X --labels Y] [--max-accuracy-drop D | --min-sqnr DB
//! -o Q.toml] [--json] [PIPELINE]`: each quantizable layer quantized alone, ranked by output SQNR;
//! with a budget or target, the qconfig that keeps the most sensitive layers float.

use crate::compiler::Stage;
use crate::data;
use crate::files;
use crate::options::{parse_count, PipelineOptions, QuantizeMode};
use crate::sensitivity::{self, KeptFloat};
use anyhow::{bail, Context, Result};
use std::path::PathBuf;

#[derive(Debug, clap::Args)]
pub struct Args {
    model: PathBuf,
    /// Evaluation inputs (default: the calibration set).
    #[arg(long, value_name = "X.npy")]
    input: Option<PathBuf>,
    /// Labels of the evaluation inputs: adds each layer's top-1 accuracy.
    #[arg(long, value_name = "Y.npy")]
    labels: Option<PathBuf>,
    /// Keep the most sensitive layers in float until the top-1 drop is at most D (a fraction,
    /// 0.005 = half a point) and write the resulting qconfig to --output.
    #[arg(long, value_name = "D", requires_all = ["labels", "output"])]
    max_accuracy_drop: Option<f64>,
    /// Where --max-accuracy-drop (or --min-sqnr, which needs no labels) writes its qconfig.
    #[arg(short, long, value_name = "QCONFIG.toml")]
    output: Option<PathBuf>,
    /// Samples per run.
    #[arg(long, default_value_t = 64, value_parser = parse_count)]
    batch: usize,
    /// Print one JSON object instead of text (an SQNR with no error at all is the string "inf").
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    pipeline: PipelineOptions,
}

/// An SQNR for JSON: a number, or `"inf"` when the output matched exactly (JSON has no infinity).
fn json_db(x: f64) -> serde_json::Value {
    if x.is_finite() {
        serde_json::json!(x)
    } else if x > 0.0 {
        serde_json::json!("inf")
    } else {
        serde_json::json!(x.to_string())
    }
}

pub fn run(mut a: Args) -> Result<()> {
    if a.pipeline.calib.is_none() {
        bail!("sensitivity needs calibration data: add --calib X.npy");
    }
    if a.max_accuracy_drop.is_some() && a.pipeline.min_sqnr.is_some() {
        bail!("give --max-accuracy-drop or --min-sqnr, not both");
    }
    match a.pipeline.quantize {
        QuantizeMode::None => a.pipeline.quantize = QuantizeMode::Int8,
        QuantizeMode::Int8 => {}
        QuantizeMode::Dynamic => bail!("sensitivity studies static INT8: drop --quantize dynamic"),
    }
    if let Some(o) = &a.output {
        files::check_output(o, "-o")?;
    }
    let labels = match &a.labels {
        Some(p) => Some(data::labels(&crate::npy::read(p)?).with_context(|| format!("`{}`", p.display()))?),
        None => None,
    };
    let min_sqnr = a.pipeline.min_sqnr;
    let base = a.pipeline.qconfig.clone();
    let c = super::compiler(a.pipeline)?;
    let g = c.load(&a.model)?;
    let eval_set = match &a.input {
        Some(p) => {
            let set = crate::calib_set::load(p, &g)?;
            qforge_ir::interp::check_inputs(&g, &set.first_sample()?)
                .with_context(|| format!("`{}` does not fit the model", p.display()))?;
            data::check_finite(
                &set.inputs,
                &format!("--input `{}`", p.display()),
                crate::data::NonFinite::strict(c.options().strict),
            )?;
            Some(set)
        }
        None => None,
    };
    let st = c.run_until(g, Stage::Calibrate, &mut |_, _| {})?;
    let batches = match eval_set {
        Some(s) => s.batches(a.batch)?,
        None => c.calib_batches_of(&st.graph, a.batch)?,
    };
    let samples: usize = batches.iter().map(|b| b.first().map_or(0, |t| t.shape().first().copied().unwrap_or(0))).sum();
    if let Some(l) = &labels {
        if l.len() != samples {
            bail!("{samples} evaluation samples but {} labels", l.len());
        }
    }
    let study = sensitivity::prepare(&c, &st, &batches, labels.as_deref())?;
    let ranked = study.rank()?;
    let mut kept: Option<(KeptFloat, &str)> = None;
    if let (Some(d), Some(out)) = (a.max_accuracy_drop, &a.output) {
        let k = study.keep_float_for_accuracy(&ranked, d)?;
        let header = format!(
            "# written by `qforge sensitivity --max-accuracy-drop {d}`: the {} most sensitive layers stay float\n\
             # fp32 top-1 {:.4}, int8 top-1 with these layers float {:.4}\n",
            k.layers.len(),
            ranked.fp32_top1.unwrap_or(f64::NAN),
            k.reached
        );
        files::write(
            out,
            crate::qconfig::skip_rules_text(&header, &k.layers, c.qconfig(), base.as_deref()).as_bytes(),
        )?;
        kept = Some((k, "top1_with_kept_float"));
    }
    if let Some(db) = min_sqnr {
        let k = study.keep_float_for_sqnr(&ranked, db)?;
        if let Some(out) = &a.output {
            let header = format!(
                "# written by `qforge sensitivity --min-sqnr {db}`: the {} most sensitive layers stay float\n\
                 # output SQNR against fp32 with these layers float: {:.2} dB{}\n",
                k.layers.len(),
                k.reached,
                if k.reached >= db { "" } else { " (the target was not reached)" }
            );
            let text = crate::qconfig::skip_rules_text(&header, &k.layers, c.qconfig(), base.as_deref());
            files::write(out, text.as_bytes())?;
        }
        kept = Some((k, "sqnr_db_with_kept_float"));
    }
    if a.json {
        let layers: Vec<_> = ranked
            .layers
            .iter()
            .map(|l| {
                serde_json::json!({"node": l.node, "op": l.op, "from": l.from, "sqnr_db": json_db(l.sqnr_db), "top1": l.top1})
            })
            .collect();
        let mut v = serde_json::json!({
            "layers": layers, "all_int8_sqnr_db": json_db(ranked.all_sqnr_db), "all_int8_top1": ranked.all_top1,
            "fp32_top1": ranked.fp32_top1,
        });
        if let Some((k, key)) = &kept {
            v["kept_float"] = serde_json::json!(k.layers);
            v[*key] = if *key == "sqnr_db_with_kept_float" { json_db(k.reached) } else { serde_json::json!(k.reached) };
        }
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    let w = ranked.layers.iter().map(|l| l.node.len()).max().unwrap_or(4).max(4);
    println!("{:<w$}  {:<20} {:>9}  {:>7}  from", "node", "op", "SQNR dB", "top-1");
    for l in &ranked.layers {
        let t = l.top1.map_or("-".to_string(), |t| format!("{:.2}%", t * 100.0));
        println!("{:<w$}  {:<20} {:>9.2}  {:>7}  {}", l.node, l.op, l.sqnr_db, t, l.from.join(", "));
    }
    let t = |x: Option<f64>| x.map_or("-".to_string(), |t| format!("{:.2}%", t * 100.0));
    println!(
        "all layers int8: SQNR {:.2} dB, top-1 {} (fp32 {})",
        ranked.all_sqnr_db,
        t(ranked.all_top1),
        t(ranked.fp32_top1)
    );
    let written = a.output.as_ref().map_or(String::new(), |o| format!("; qconfig written to `{}`", o.display()));
    match &kept {
        Some((k, "top1_with_kept_float")) => {
            println!("kept float: {} layer(s) {:?}, top-1 {:.2}%{written}", k.layers.len(), k.layers, k.reached * 100.0)
        }
        Some((k, _)) => {
            println!("kept float: {} layer(s) {:?}, output SQNR {:.2} dB{written}", k.layers.len(), k.layers, k.reached)
        }
        None => {}
    }
    Ok(())
}
