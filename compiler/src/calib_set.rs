//! Calibration sets (`--calib`): one tensor per graph input, samples along axis 0.
//!
//! A model with one input takes a `.npy` file. A model with several (a BERT-style encoder's
//! `input_ids` and `attention_mask`) takes a `.npz` archive, as `numpy.savez` (or
//! `savez_compressed`) writes it, holding one array per graph input, named after the input. Every
//! array must have the same number of samples; an array that names no input, or an input without
//! an array, is an error that lists both sides.

use crate::data;
use anyhow::{bail, Context, Result};
use qforge_ir::{Graph, Tensor};
use qforge_passes::quantize::calibrate::CalibBatch;
use std::io::Read;
use std::path::{Path, PathBuf};

/// One pass over calibration data: batches of the graph's inputs, each read when asked for.
pub type CalibStream<'a> = Box<dyn Iterator<Item = Result<Vec<Tensor>>> + 'a>;

/// One pass over calibration data for calibration itself: batches whose samples are read a run
/// at a time ([`CalibBatch`]), so a source that keeps a batch outside Rust never converts all of
/// it at once.
pub type CalibBatches<'a> = Box<dyn Iterator<Item = Result<Box<dyn CalibBatch + 'a>>> + 'a>;

/// Where calibration data comes from: a file (`--calib`, [`CalibFile`]), or batches a library
/// user streams in (the Python package's iterables). Stages that need one pass (calibration)
/// stream it; stages that run the set many times (the sensitivity study, the guards) collect it.
pub trait CalibSource: Send + Sync {
    /// For logs: the file and its arrays, or what the batches come from.
    fn describe(&self) -> String;
    /// A fresh pass over the data as `g`'s inputs (one tensor per graph input, in order), in
    /// batches of at most `batch` samples (a source that yields its own batches may ignore it).
    fn stream<'a>(&'a self, g: &Graph, batch: usize) -> Result<CalibStream<'a>>;
    /// The same pass as [`CalibSource::stream`], each batch read a run of samples at a time when
    /// calibration asks for it. This one reads each batch whole first; a source that can read
    /// part of a batch overrides it.
    fn batches<'a>(&'a self, g: &Graph, batch: usize) -> Result<CalibBatches<'a>> {
        Ok(Box::new(self.stream(g, batch)?.map(|b| b.map(|b| Box::new(b) as Box<dyn CalibBatch + 'a>))))
    }
    /// How many batches one pass yields, when known in advance (progress bars).
    fn batch_count(&self, g: &Graph, batch: usize) -> Option<usize>;
    /// Checks the data against `g` before any stage runs, where that is possible without
    /// consuming it (a file: its arrays bind to the inputs, their shapes fit, every value is
    /// finite).
    fn check(&self, g: &Graph) -> Result<()>;
    /// Whether the source serves one pass only (a Python generator): the stages that need
    /// another pass say so, or, where they are on by default (bias correction, when it must
    /// measure a layer's error in a pass of its own), are skipped with a warning.
    fn single_pass(&self) -> bool {
        false
    }
}

/// The calibration file of `--calib`, read the first time a stage needs it and kept.
pub struct LazyFile {
    path: PathBuf,
    file: std::sync::OnceLock<CalibFile>,
}

impl LazyFile {
    pub fn new(path: &Path) -> LazyFile {
        LazyFile { path: path.to_path_buf(), file: std::sync::OnceLock::new() }
    }

    /// The file, read now if it is the first time.
    pub fn get(&self) -> Result<&CalibFile> {
        if let Some(f) = self.file.get() {
            return Ok(f);
        }
        let f = CalibFile::read(&self.path)?;
        Ok(self.file.get_or_init(|| f))
    }
}

impl CalibSource for LazyFile {
    fn describe(&self) -> String {
        format!("`{}`", self.path.display())
    }

    fn stream<'a>(&'a self, g: &Graph, batch: usize) -> Result<CalibStream<'a>> {
        let set = self.get()?.bind(g)?;
        let (batch, n) = batching(g, &set, batch);
        Ok(Box::new((0..n.div_ceil(batch)).map(move |i| {
            let (start, end) = (i * batch, ((i + 1) * batch).min(n));
            set.inputs.iter().map(|t| data::slice_batch(t, start, end)).collect()
        })))
    }

    fn batch_count(&self, g: &Graph, batch: usize) -> Option<usize> {
        let set = self.get().ok()?.bind(g).ok()?;
        let (batch, n) = batching(g, &set, batch);
        Some(n.div_ceil(batch))
    }

    fn check(&self, g: &Graph) -> Result<()> {
        let set = self.get()?.bind(g)?;
        let path = self.path.display();
        let first = match fixed_batch(g) {
            Some(b) if set.samples < b => bail!(
                "calibration set `{path}` has {} sample(s); the model's batch is fixed at {b}, so calibration needs \
                 at least {b}",
                set.samples
            ),
            Some(b) => set.inputs.iter().map(|t| data::slice_batch(t, 0, b)).collect::<Result<Vec<_>>>()?,
            None => set.first_sample()?,
        };
        qforge_ir::interp::check_inputs(g, &first)
            .with_context(|| format!("calibration set `{path}` does not fit the model"))?;
        data::check_finite(
            &set.inputs,
            &format!("calibration set `{path}`"),
            data::NonFinite::Refuse("calibration needs finite data"),
        )
    }
}

/// The batch a graph fixes: the common fixed size of its inputs' first dim, when every input has
/// one (a model exported at batch 4 takes exactly 4 samples per run), else `None` (a symbolic
/// batch runs any number).
pub fn fixed_batch(g: &Graph) -> Option<usize> {
    let mut batch = None;
    for &i in g.inputs() {
        let b = g.node(i).outputs[0].shape.dims().first()?.fixed()?;
        if batch.is_some_and(|prev| prev != b) {
            return None;
        }
        batch = Some(b);
    }
    batch
}

/// The batch size and the number of samples used for calibrating `g` from `set` in batches of
/// `batch` (`--calib-batch`): a fixed-batch model calibrates in batches of its own size, and the
/// samples that do not fill a last batch are left out (logged).
fn batching(g: &Graph, set: &CalibSet, batch: usize) -> (usize, usize) {
    match fixed_batch(g) {
        Some(b) if b > 0 => {
            let used = set.samples - set.samples % b;
            if used < set.samples {
                tracing::warn!(
                    "the model's batch is fixed at {b}: calibration uses {used} of the {} samples",
                    set.samples
                );
            }
            (b, used)
        }
        _ => (batch.max(1), set.samples),
    }
}

/// A calibration file as read: one unnamed array (`.npy`) or named arrays (`.npz`). The
/// pipeline reads it once ([`crate::Compiler`] keeps it) and binds it to a graph's inputs with
/// [`CalibFile::bind`].
#[derive(Clone, Debug)]
pub struct CalibFile {
    pub path: PathBuf,
    arrays: Arrays,
}

#[derive(Clone, Debug)]
enum Arrays {
    Npy(Tensor),
    Npz(Vec<(String, Tensor)>),
}

/// Calibration inputs for a graph, in the order of its inputs.
#[derive(Clone, Debug)]
pub struct CalibSet {
    pub inputs: Vec<Tensor>,
    /// Samples (the common length of axis 0).
    pub samples: usize,
}

/// Reads `path` (`.npy` or `.npz`) as calibration inputs of `g`.
pub fn load(path: &Path, g: &Graph) -> Result<CalibSet> {
    CalibFile::read(path)?.bind(g)
}

impl CalibFile {
    /// Reads every array of `path` (`.npy`, or `.npz` by its extension).
    pub fn read(path: &Path) -> Result<CalibFile> {
        let is_npz = path.extension().is_some_and(|e| e.eq_ignore_ascii_case("npz"));
        let arrays = if is_npz { Arrays::Npz(read_npz(path)?) } else { Arrays::Npy(crate::npy::read(path)?) };
        let f = CalibFile { path: path.to_path_buf(), arrays };
        tracing::info!("calibration set `{}` read: {}", path.display(), f.describe());
        Ok(f)
    }

    /// `200 samples of f32[200,1,8,8]` or, for a `.npz`, each array's name and type.
    pub fn describe(&self) -> String {
        let ty = |t: &Tensor| format!("{}{:?}", t.dtype(), t.shape());
        match &self.arrays {
            Arrays::Npy(t) => ty(t),
            Arrays::Npz(a) => a.iter().map(|(n, t)| format!("{n} {}", ty(t))).collect::<Vec<_>>().join(", "),
        }
    }

    /// The arrays as the inputs of `g`, in its input order, checked: one per input (by name for a
    /// `.npz`), the same number of samples in each.
    pub fn bind(&self, g: &Graph) -> Result<CalibSet> {
        let path = &self.path;
        let names: Vec<String> = g.inputs().iter().map(|&i| g.node(i).name.clone()).collect();
        let inputs = match &self.arrays {
            Arrays::Npy(t) => {
                if names.len() != 1 {
                    bail!(
                        "`{}`: the model has {} inputs ({}); give the calibration set as a .npz with one array per input",
                        path.display(),
                        names.len(),
                        names.join(", ")
                    );
                }
                vec![t.clone()]
            }
            Arrays::Npz(arrays) => {
                let listed = || arrays.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>().join(", ");
                if let Some((extra, _)) = arrays.iter().find(|(a, _)| !names.contains(a)) {
                    bail!(
                        "`{}`: array `{extra}` names no model input (inputs: {}; arrays: {})",
                        path.display(),
                        names.join(", "),
                        listed()
                    );
                }
                let mut out = Vec::with_capacity(names.len());
                for name in &names {
                    let Some((_, t)) = arrays.iter().find(|(a, _)| a == name) else {
                        bail!(
                            "`{}` has no array for the model's input `{name}` (arrays: {})",
                            path.display(),
                            listed()
                        );
                    };
                    out.push(t.clone());
                }
                out
            }
        };
        let mut samples = None;
        for (t, name) in inputs.iter().zip(&names) {
            let n = *t.shape().first().with_context(|| {
                format!("`{}`: calibration data for `{name}` has no batch dimension", path.display())
            })?;
            match samples {
                None => samples = Some(n),
                Some(m) if m != n => {
                    bail!("`{}`: `{name}` has {n} samples but the first input has {m}", path.display())
                }
                Some(_) => {}
            }
        }
        let samples = samples.unwrap_or(0);
        if samples == 0 {
            bail!("`{}`: the calibration set is empty", path.display());
        }
        Ok(CalibSet { inputs, samples })
    }
}

/// The arrays of a `.npz` archive with their names (the entry names without `.npy`).
fn read_npz(path: &Path) -> Result<Vec<(String, Tensor)>> {
    let file = std::fs::File::open(path).with_context(|| format!("cannot read `{}`", path.display()))?;
    let mut zip =
        zip::ZipArchive::new(file).with_context(|| format!("`{}` is not a .npz (zip) archive", path.display()))?;
    let mut out = vec![];
    for i in 0..zip.len() {
        let mut entry = zip.by_index(i).with_context(|| format!("`{}`: cannot read entry {i}", path.display()))?;
        let Some(name) = entry.enclosed_name().and_then(|n| n.to_str().map(str::to_string)) else {
            bail!("`{}`: an entry name is not valid", path.display());
        };
        let name = name.strip_suffix(".npy").unwrap_or(&name).to_string();
        let mut bytes = Vec::with_capacity(entry.size().min(1 << 30) as usize);
        entry.read_to_end(&mut bytes).with_context(|| format!("`{}`: cannot read array `{name}`", path.display()))?;
        let t = crate::npy::read_bytes(&bytes).with_context(|| format!("`{}`: array `{name}`", path.display()))?;
        out.push((name, t));
    }
    Ok(out)
}

impl CalibSet {
    /// Consecutive batches of `batch` samples (the last one shorter), each one tensor per input.
    pub fn batches(&self, batch: usize) -> Result<Vec<Vec<Tensor>>> {
        let batch = batch.max(1);
        (0..self.samples.div_ceil(batch))
            .map(|i| {
                let (start, end) = (i * batch, ((i + 1) * batch).min(self.samples));
                self.inputs.iter().map(|t| data::slice_batch(t, start, end)).collect()
            })
            .collect()
    }

    /// The first sample of every input: what the graph's input types are checked against before
    /// any expensive work.
    pub fn first_sample(&self) -> Result<Vec<Tensor>> {
        self.inputs.iter().map(|t| data::slice_batch(t, 0, 1)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    const TWO_INPUTS: &str = "graph two(%a: f32[N,4], %b: f32[N,4]) -> (y: f32[N,4]) {\n  %0 = add %a, %b : f32[N,4]  # \"add\"\n  %1 = relu %0 : f32[N,4]  # \"relu\"\n  return %1\n}\n";

    fn npz(path: &Path, arrays: &[(&str, Tensor)]) {
        let mut w = zip::ZipWriter::new(std::fs::File::create(path).expect("create"));
        let o = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
        for (name, t) in arrays {
            w.start_file(format!("{name}.npy"), o).expect("entry");
            w.write_all(&crate::npy::write_bytes(t).expect("npy")).expect("write");
        }
        w.finish().expect("finish");
    }

    fn rows(n: usize) -> Tensor {
        Tensor::from_f32(vec![n, 4], (0..n * 4).map(|i| i as f32 * 0.25 - 1.0).collect())
    }

    /// A model exported at a fixed batch calibrates in batches of exactly that size, whatever
    /// `--calib-batch` says; samples that do not fill a last batch are left out, and a set
    /// smaller than one batch is an error saying so.
    #[test]
    fn fixed_batch_models_calibrate_in_their_own_batch() {
        let g = qforge_ir::text::parse(
            "graph fixed(%a: f32[2,4]) -> (y: f32[2,4]) {\n  %0 = relu %a : f32[2,4]  # \"relu\"\n  return %0\n}\n",
        )
        .expect("parses");
        assert_eq!(fixed_batch(&g), Some(2));
        let dir = std::env::temp_dir().join(format!("qforge-calib-fixed-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let five = dir.join("five.npy");
        crate::npy::write(&five, &rows(5)).expect("npy");
        let src = LazyFile::new(&five);
        src.check(&g).expect("five samples fit a batch of two");
        let shapes: Vec<Vec<usize>> =
            src.stream(&g, 50).expect("stream").map(|b| b.expect("batch")[0].shape().to_vec()).collect();
        assert_eq!(shapes, vec![vec![2, 4], vec![2, 4]]);
        assert_eq!(src.batch_count(&g, 50), Some(2));
        let one = dir.join("one.npy");
        crate::npy::write(&one, &rows(1)).expect("npy");
        let e = LazyFile::new(&one).check(&g).expect_err("one sample for a batch of two");
        assert!(format!("{e:#}").contains("the model's batch is fixed at 2, so calibration needs at least 2"), "{e:#}");
        std::fs::remove_dir_all(&dir).ok();
    }

    /// A two-input model calibrates from a `.npz`; wrong archives are errors naming what is wrong.
    #[test]
    fn npz_sets_bind_by_input_name() {
        let g = qforge_ir::text::parse(TWO_INPUTS).expect("parses");
        let dir = std::env::temp_dir().join(format!("qforge-calib-set-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        // (archive name, its arrays, the error it must give)
        type Case<'a> = (&'a str, Vec<(&'a str, Tensor)>, Option<&'a str>);
        let cases: Vec<Case> = vec![
            ("ok", vec![("b", rows(3)), ("a", rows(3))], None),
            ("missing", vec![("a", rows(3))], Some("no array for the model's input `b`")),
            ("extra", vec![("a", rows(3)), ("b", rows(3)), ("c", rows(3))], Some("array `c` names no model input")),
            ("ragged", vec![("a", rows(3)), ("b", rows(2))], Some("`b` has 2 samples but the first input has 3")),
        ];
        for (name, arrays, err) in cases {
            let p = dir.join(format!("{name}.npz"));
            npz(&p, &arrays);
            match (load(&p, &g), err) {
                (Ok(set), None) => {
                    assert_eq!(set.samples, 3);
                    let b = set.batches(2).expect("batches");
                    assert_eq!(b.len(), 2);
                    assert_eq!((b[0].len(), b[0][0].shape(), b[1][1].shape()), (2, &[2usize, 4][..], &[1usize, 4][..]));
                }
                (Err(e), Some(want)) => assert!(format!("{e:#}").contains(want), "{name}: {e:#}"),
                (r, want) => panic!("{name}: got {r:?}, wanted error {want:?}"),
            }
        }
        let npy = dir.join("one.npy");
        crate::npy::write(&npy, &rows(3)).expect("npy");
        let e = load(&npy, &g).expect_err("a .npy for two inputs");
        assert!(format!("{e:#}").contains("give the calibration set as a .npz"), "{e:#}");
        std::fs::remove_dir_all(&dir).ok();
    }
}
