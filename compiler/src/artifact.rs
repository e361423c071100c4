//! Compiled artifacts (`.qfa`): the optimized graph with every constant, written once by
//! `qforge compile MODEL -o OUT.qfa` and run as is by `run`, `eval`, `bench` and `inspect`.
//!
//! ## Format (version 1)
//!
//! All integers little-endian.
//!
//! | bytes | what |
//! |---|---|
//! | 4 | magic `QFA\0` |
//! | 4 | u32 format version ([`FORMAT_VERSION`]) |
//! | 8 | u64 header length `H` |
//! | `H` | header: one JSON object ([`Header`]): format and qforge versions, the source model's name and FNV-1a 64 digest, the pipeline options, the hardware profile, the payload's length |
//! | `P` | payload (below), `P` = the header's `payload_bytes` |
//! | 8 | u64 FNV-1a 64 checksum of every byte before it |
//!
//! The payload is the graph in two parts: u64 text length, then the IR text form
//! ([`qforge_ir::text`], `ConstMode::Full`) of the graph with every constant replaced by an extra
//! graph input `%__qfa_const_K` (after the model's own inputs, `K` counting from 0 in schedule
//! order; the inputs the model was specialized on (`--specialize`) stay in the signature with
//! their values, `%shape: i64[2] = [3, 2]`, which `run` checks a value given for them against); then, for each constant `K` in order, its record: u32-length-prefixed name, u32 count
//! of u32-length-prefixed `from` names, u8 dtype code ([`dtype_code`]), u32 rank, one u64 per dim,
//! u64 byte length, and the raw little-endian element bytes (bool: one byte, 0 or 1). The text
//! carries the structure, attributes and every type (quantization parameters live in types and
//! print in Rust's shortest round-trip float form, so they parse back bit-exactly); the weights
//! are raw bytes, so they are bit-exact (NaN payloads included) and load at memory speed. This
//! was chosen over the text form with full constants by measurement (ResNet-18: the full text is
//! about 2.7x larger and printing plus parsing it is an order of magnitude slower; see the
//! `timings` test in `compiler/tests/artifact.rs`).
//!
//! ## Invariants
//! * Written atomically: a temporary file in the destination's directory, fsynced, then renamed
//!   over the destination; on any error the temporary file is removed and the destination is
//!   untouched. `QFORGE_FAULT=artifact-midway` makes the writer fail after writing half of the
//!   temporary file (for tests of exactly that).
//! * Reading checks, in order: the magic (not an artifact), the format version (newer than this
//!   qforge reads), the length and the checksum (truncated, corrupted), then parses the header and
//!   the payload (unparsable) and verifies the graph. Every failure is an error value with one
//!   line of text, never a panic, and no allocation is sized by an unchecked length.
//! * The stored graph is the pipeline's output: loading never runs the pipeline again. Options
//!   that would change the graph are rejected when they differ from the artifact's own
//!   ([`check_options`]); engine, threads, kernels and `--max-tensor-bytes` apply as given.

pub mod diff;

use crate::compiler::{Compiler, Executable};
use crate::options::PipelineOptions;
use anyhow::{bail, Context, Result};
use qforge_ir::{DType, Dim, Graph, Op, Tensor, TensorData, TensorType, Value};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;

/// The first four bytes of every artifact.
pub const MAGIC: [u8; 4] = *b"QFA\0";
/// The format version this qforge writes, and the newest it reads.
pub const FORMAT_VERSION: u32 = 1;
/// The file extension `run`, `eval`, `bench` and `inspect` recognize artifacts by.
pub const EXTENSION: &str = "qfa";
/// The environment variable of the writer's fault hook, and its value.
pub use crate::files::{FAULT_MIDWAY, FAULT_VAR};

/// Magic, version and header length.
const PREAMBLE: usize = 16;
/// The names the stored text gives constants, as extra graph inputs.
const CONST_PREFIX: &str = "__qfa_const_";

/// The pipeline options that change the graph (serialized key, command-line flag); the others
/// (engine, threads, kernels, max-tensor-bytes) only change how it runs.
const GRAPH_OPTIONS: [(&str, &str); 15] = [
    ("quantize", "--quantize"),
    ("calib", "--calib"),
    ("calib_method", "--calib-method"),
    ("calib_batch", "--calib-batch"),
    ("per_channel", "--per-channel"),
    ("per_tensor", "--per-tensor"),
    ("symmetric", "--symmetric"),
    ("asymmetric", "--asymmetric"),
    ("precision", "--precision"),
    ("profile", "--profile"),
    ("precision_config", "--precision-config"),
    ("qconfig", "--qconfig"),
    ("smooth", "--smooth"),
    ("min_sqnr", "--min-sqnr"),
    ("opt_level", "--opt-level"),
];

/// The artifact's header (the JSON object after the preamble).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Header {
    pub format_version: u32,
    /// The version of the qforge that wrote it (`CARGO_PKG_VERSION`).
    pub qforge_version: String,
    /// The source model's file name.
    pub model: String,
    /// FNV-1a 64 of the source model's bytes, `fnv1a64:` and 16 hex digits.
    pub model_digest: String,
    /// The pipeline options it was compiled with ([`PipelineOptions`] as JSON).
    pub pipeline: serde_json::Value,
    /// The hardware profile's name.
    pub profile: String,
    /// How many of the stored text's graph inputs are the model's own (the rest are constants).
    pub graph_inputs: usize,
    pub constants: usize,
    /// Bytes of constant data.
    pub constant_bytes: u64,
    /// Length of the payload that follows the header.
    pub payload_bytes: u64,
}

/// An optimized graph and where it came from.
#[derive(Clone, Debug)]
pub struct Artifact {
    pub header: Header,
    pub graph: Graph,
}

/// FNV-1a, 64 bits: the model digest and the artifact checksum.
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for &b in bytes {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// Whether `path` names an artifact (by its `.qfa` extension).
pub fn is_artifact(path: &Path) -> bool {
    path.extension().and_then(|e| e.to_str()).is_some_and(|e| e.eq_ignore_ascii_case(EXTENSION))
}

/// The one-byte code of each dtype in a constant record.
pub fn dtype_code(d: DType) -> u8 {
    match d {
        DType::F32 => 0,
        DType::F16 => 1,
        DType::BF16 => 2,
        DType::I8 => 3,
        DType::U8 => 4,
        DType::I32 => 5,
        DType::I64 => 6,
        DType::Bool => 7,
        DType::F64 => 8,
        DType::I16 => 9,
        DType::U16 => 10,
        DType::U32 => 11,
        DType::U64 => 12,
    }
}

impl Artifact {
    /// The artifact of `graph`, the output of `compiler`'s pipeline on the model file `model`.
    pub fn new(graph: Graph, model: &Path, compiler: &Compiler) -> Result<Artifact> {
        let bytes = std::fs::read(model).with_context(|| format!("cannot read `{}`", model.display()))?;
        let header = Header {
            format_version: FORMAT_VERSION,
            qforge_version: env!("CARGO_PKG_VERSION").to_string(),
            model: model.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
            model_digest: format!("fnv1a64:{:016x}", fnv1a64(&bytes)),
            pipeline: serde_json::to_value(compiler.options())?,
            profile: compiler.profile().name.clone(),
            graph_inputs: graph.inputs().len(),
            constants: 0,
            constant_bytes: 0,
            payload_bytes: 0,
        };
        Ok(Artifact { header, graph })
    }

    /// The artifact's bytes (the header's counts are filled in from the graph).
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let (text, consts) = skeleton(&self.graph)?;
        let mut payload = Vec::with_capacity(8 + text.len() + consts.iter().map(|c| c.len() * 8 + 64).sum::<usize>());
        payload.extend_from_slice(&(text.len() as u64).to_le_bytes());
        payload.extend_from_slice(text.as_bytes());
        let mut constant_bytes = 0u64;
        for c in &consts {
            constant_bytes += write_const(&mut payload, c)?;
        }
        let header = Header {
            format_version: FORMAT_VERSION,
            graph_inputs: self.graph.inputs().len(),
            constants: consts.len(),
            constant_bytes,
            payload_bytes: payload.len() as u64,
            ..self.header.clone()
        };
        let header = serde_json::to_vec(&header)?;
        let mut out = Vec::with_capacity(PREAMBLE + header.len() + payload.len() + 8);
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        out.extend_from_slice(&(header.len() as u64).to_le_bytes());
        out.extend_from_slice(&header);
        out.extend_from_slice(&payload);
        let sum = fnv1a64(&out);
        out.extend_from_slice(&sum.to_le_bytes());
        Ok(out)
    }

    /// Reads an artifact from its bytes; every malformation is an error (see the module docs).
    pub fn from_bytes(bytes: &[u8]) -> Result<Artifact> {
        let n = bytes.len();
        if n < MAGIC.len() {
            if MAGIC.starts_with(bytes) {
                bail!("the artifact is truncated ({n} bytes)");
            }
            bail!("not a qforge artifact (it does not start with the `QFA\\0` magic)");
        }
        if bytes[..4] != MAGIC {
            bail!("not a qforge artifact (it does not start with the `QFA\\0` magic)");
        }
        if n < PREAMBLE {
            bail!("the artifact is truncated ({n} bytes, shorter than its {PREAMBLE}-byte preamble)");
        }
        let version = u32::from_le_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]);
        if version > FORMAT_VERSION {
            bail!(
                "the artifact has format version {version}, newer than the version {FORMAT_VERSION} this qforge {} \
                 reads; use a newer qforge",
                env!("CARGO_PKG_VERSION")
            );
        }
        if version == 0 {
            bail!("the artifact is corrupted (format version 0 does not exist)");
        }
        let header_len = u64_at(bytes, 8);
        let header_end = (PREAMBLE as u64).checked_add(header_len);
        let Some(body_end) = n.checked_sub(8) else {
            bail!("the artifact is truncated ({n} bytes, with no room for its checksum)");
        };
        let stored = u64_at(bytes, body_end);
        let computed = fnv1a64(&bytes[..body_end]);
        if stored != computed {
            // a shorter file than its header declares was cut off; anything else was altered
            let declared = header_end.filter(|&e| e <= body_end as u64).and_then(|e| {
                let h: Header = serde_json::from_slice(&bytes[PREAMBLE..e as usize]).ok()?;
                e.checked_add(h.payload_bytes)?.checked_add(8)
            });
            match declared {
                Some(total) if total > n as u64 => {
                    bail!("the artifact is truncated ({n} bytes of the {total} its header declares)")
                }
                None if header_end.is_none_or(|e| e > body_end as u64) => {
                    bail!("the artifact is truncated ({n} bytes; its header alone declares {header_len})")
                }
                _ => bail!(
                    "the artifact is corrupted (checksum mismatch: stored {stored:016x}, computed {computed:016x})"
                ),
            }
        }
        let header_end = match header_end {
            Some(e) if e <= body_end as u64 => e as usize,
            _ => bail!("the artifact's payload does not parse: the header length {header_len} overruns the file"),
        };
        let header: Header = serde_json::from_slice(&bytes[PREAMBLE..header_end])
            .map_err(|e| anyhow::anyhow!("the artifact's header does not parse: {e}"))?;
        if header.payload_bytes != (body_end - header_end) as u64 {
            bail!(
                "the artifact's payload does not parse: the header declares {} payload bytes, the file holds {}",
                header.payload_bytes,
                body_end - header_end
            );
        }
        let graph = read_payload(&bytes[header_end..body_end], &header)
            .map_err(|e| anyhow::anyhow!("the artifact's payload does not parse: {e:#}"))?;
        Ok(Artifact { header, graph })
    }

    /// Writes the artifact atomically (see the module docs).
    pub fn save(&self, path: &Path) -> Result<()> {
        let t = std::time::Instant::now();
        let bytes = self.to_bytes()?;
        crate::files::write_atomic(path, &bytes)?;
        tracing::info!(
            "saved artifact `{}`: {} nodes, {} bytes in {:.1} ms",
            path.display(),
            self.graph.node_count(),
            bytes.len(),
            t.elapsed().as_secs_f64() * 1e3
        );
        Ok(())
    }

    /// Reads an artifact file; errors name the file.
    pub fn load(path: &Path) -> Result<Artifact> {
        let t = std::time::Instant::now();
        let bytes = std::fs::read(path).with_context(|| format!("cannot read `{}`", path.display()))?;
        let a = Artifact::from_bytes(&bytes).with_context(|| format!("`{}`", path.display()))?;
        tracing::info!(
            "loaded artifact `{}`: {} nodes, {} bytes in {:.1} ms",
            path.display(),
            a.graph.node_count(),
            bytes.len(),
            t.elapsed().as_secs_f64() * 1e3
        );
        Ok(a)
    }
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

/// A constant taken out of the text: its node's name, origins and tensor.
struct ConstRecord {
    name: String,
    from: Vec<String>,
    tensor: Arc<Tensor>,
}

impl ConstRecord {
    fn len(&self) -> usize {
        self.tensor.len()
    }
}

/// The stored text (every constant an extra graph input) and the constants in order.
fn skeleton(g: &Graph) -> Result<(String, Vec<ConstRecord>)> {
    let mut s = Graph::new(g.name.clone());
    let mut map: HashMap<Value, Value> = HashMap::new();
    for &id in g.inputs() {
        let n = g.node(id);
        if n.name.starts_with(CONST_PREFIX) {
            bail!("graph input `{}`: names starting with `{CONST_PREFIX}` are reserved in artifacts", n.name);
        }
        let ty = n.outputs.first().with_context(|| format!("graph input `{}` has no type", n.name))?;
        map.insert(Value::new(id, 0), s.add_input(n.name.clone(), ty.clone()));
    }
    // specialized inputs print in the signature with their values, at their places among the
    // model's inputs (the constants' stand-ins all come after)
    s.set_specialized(g.specialized().to_vec());
    s.set_wire_types(g.wire_types().clone());
    let mut consts = vec![];
    for id in g.schedule()? {
        let n = g.node(id);
        if let Op::Const(t) = &n.op {
            let [ty] = n.outputs.as_slice() else { bail!("constant `{}` does not have exactly one result", n.name) };
            let v = s.add_input(format!("{CONST_PREFIX}{}", consts.len()), ty.clone());
            consts.push(ConstRecord { name: n.name.clone(), from: n.from.clone(), tensor: t.clone() });
            map.insert(Value::new(id, 0), v);
            continue;
        }
        copy_node(&mut s, n, id, &mut map)?;
    }
    for o in g.outputs() {
        let v = *map.get(&o.value).with_context(|| format!("output `{}` reads a value outside the graph", o.name))?;
        s.add_output(o.name.clone(), v);
    }
    Ok((qforge_ir::text::print(&s, qforge_ir::text::ConstMode::Full)?, consts))
}

/// Adds a copy of node `n` (id `id` in its graph) to `to`, its inputs mapped through `map`.
fn copy_node(
    to: &mut Graph,
    n: &qforge_ir::Node,
    id: qforge_ir::NodeId,
    map: &mut HashMap<Value, Value>,
) -> Result<()> {
    let inputs = n
        .inputs()
        .iter()
        .map(|v| {
            v.map(|v| {
                map.get(&v).copied().with_context(|| format!("node `{}` reads a value not scheduled before it", n.name))
            })
            .transpose()
        })
        .collect::<Result<Vec<_>>>()?;
    let nid = to.add_node_unchecked(n.op.clone(), inputs, n.outputs.clone(), n.name.clone());
    to.node_mut(nid).from = n.from.clone();
    for port in 0..n.outputs.len() {
        map.insert(Value::new(id, port), Value::new(nid, port));
    }
    Ok(())
}

fn put_str(out: &mut Vec<u8>, s: &str) -> Result<()> {
    let len = u32::try_from(s.len()).context("a name longer than 4 GiB")?;
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(s.as_bytes());
    Ok(())
}

/// Appends a constant record; returns the bytes of its data.
fn write_const(out: &mut Vec<u8>, c: &ConstRecord) -> Result<u64> {
    put_str(out, &c.name)?;
    out.extend_from_slice(&u32::try_from(c.from.len()).context("too many origins")?.to_le_bytes());
    for f in &c.from {
        put_str(out, f)?;
    }
    let t = &c.tensor;
    out.push(dtype_code(t.dtype()));
    out.extend_from_slice(&u32::try_from(t.rank()).context("rank too large")?.to_le_bytes());
    for &d in t.shape() {
        out.extend_from_slice(&(d as u64).to_le_bytes());
    }
    let bytes = (t.len() * t.dtype().size_bytes()) as u64;
    out.extend_from_slice(&bytes.to_le_bytes());
    let start = out.len();
    match t.data() {
        TensorData::F32(v) => v.iter().for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
        TensorData::F16(v) => v.iter().for_each(|x| out.extend_from_slice(&x.to_bits().to_le_bytes())),
        TensorData::BF16(v) => v.iter().for_each(|x| out.extend_from_slice(&x.to_bits().to_le_bytes())),
        TensorData::I8(v) => v.iter().for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
        TensorData::U8(v) => out.extend_from_slice(v),
        TensorData::I32(v) => v.iter().for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
        TensorData::I64(v) => v.iter().for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
        TensorData::Bool(v) => v.iter().for_each(|&x| out.push(x as u8)),
        TensorData::F64(v) => v.iter().for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
        TensorData::I16(v) => v.iter().for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
        TensorData::U16(v) => v.iter().for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
        TensorData::U32(v) => v.iter().for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
        TensorData::U64(v) => v.iter().for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
    }
    if (out.len() - start) as u64 != bytes {
        bail!("constant `{}`: {} data bytes written, {bytes} expected", c.name, out.len() - start);
    }
    Ok(bytes)
}

/// Reads the payload: every length checked against what is left before it is used.
struct Cursor<'a> {
    b: &'a [u8],
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: u64, what: &str) -> Result<&'a [u8]> {
        if n > self.b.len() as u64 {
            bail!("{what}: {n} bytes declared, {} left", self.b.len());
        }
        let (head, rest) = self.b.split_at(n as usize);
        self.b = rest;
        Ok(head)
    }
    fn u8(&mut self, what: &str) -> Result<u8> {
        Ok(self.take(1, what)?[0])
    }
    fn u32(&mut self, what: &str) -> Result<u32> {
        let b = self.take(4, what)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self, what: &str) -> Result<u64> {
        Ok(u64_at(self.take(8, what)?, 0))
    }
    fn string(&mut self, what: &str) -> Result<String> {
        let n = self.u32(what)?;
        let b = self.take(n as u64, what)?;
        Ok(std::str::from_utf8(b).with_context(|| format!("{what} is not UTF-8"))?.to_string())
    }
}

fn read_const(c: &mut Cursor, k: usize) -> Result<ConstRecord> {
    let what = format!("constant {k}");
    let name = c.string(&what)?;
    let n_from = c.u32(&what)?;
    let mut from = vec![];
    for _ in 0..n_from {
        from.push(c.string(&what)?);
    }
    let code = c.u8(&what)?;
    let dtype = DType::ALL
        .into_iter()
        .find(|&d| dtype_code(d) == code)
        .with_context(|| format!("constant `{name}`: unknown dtype code {code}"))?;
    let rank = c.u32(&what)?;
    let mut shape = vec![];
    let mut elems = 1u64;
    for _ in 0..rank {
        let d = c.u64(&what)?;
        elems = elems.checked_mul(d).with_context(|| format!("constant `{name}`: its element count overflows"))?;
        shape.push(usize::try_from(d)?);
    }
    let nbytes = c.u64(&what)?;
    if elems.checked_mul(dtype.size_bytes() as u64) != Some(nbytes) {
        bail!("constant `{name}`: {nbytes} data bytes for {elems} {} elements", dtype.name());
    }
    let b = c.take(nbytes, &format!("constant `{name}`"))?;
    fn le<const W: usize, T>(b: &[u8], f: impl Fn([u8; W]) -> T) -> Vec<T> {
        b.chunks_exact(W)
            .map(|ch| {
                let mut a = [0u8; W];
                a.copy_from_slice(ch);
                f(a)
            })
            .collect()
    }
    let data = match dtype {
        DType::F32 => TensorData::F32(le(b, f32::from_le_bytes)),
        DType::F16 => TensorData::F16(le(b, |a| half::f16::from_bits(u16::from_le_bytes(a)))),
        DType::BF16 => TensorData::BF16(le(b, |a| half::bf16::from_bits(u16::from_le_bytes(a)))),
        DType::I8 => TensorData::I8(le(b, i8::from_le_bytes)),
        DType::U8 => TensorData::U8(b.to_vec()),
        DType::I32 => TensorData::I32(le(b, i32::from_le_bytes)),
        DType::I64 => TensorData::I64(le(b, i64::from_le_bytes)),
        DType::F64 => TensorData::F64(le(b, f64::from_le_bytes)),
        DType::I16 => TensorData::I16(le(b, i16::from_le_bytes)),
        DType::U16 => TensorData::U16(le(b, u16::from_le_bytes)),
        DType::U32 => TensorData::U32(le(b, u32::from_le_bytes)),
        DType::U64 => TensorData::U64(le(b, u64::from_le_bytes)),
        DType::Bool => {
            if let Some(x) = b.iter().find(|&&x| x > 1) {
                bail!("constant `{name}`: bool byte {x} is neither 0 nor 1");
            }
            TensorData::Bool(b.iter().map(|&x| x == 1).collect())
        }
    };
    let tensor = Tensor::new(shape, data).with_context(|| format!("constant `{name}`: shape and data disagree"))?;
    Ok(ConstRecord { name, from, tensor: Arc::new(tensor) })
}

/// Rebuilds the graph from the payload: parses the text, then puts each constant back in place
/// of its stand-in input.
fn read_payload(payload: &[u8], header: &Header) -> Result<Graph> {
    let mut c = Cursor { b: payload };
    let text_len = c.u64("the IR text")?;
    let text = std::str::from_utf8(c.take(text_len, "the IR text")?).context("the IR text is not UTF-8")?;
    let s = qforge_ir::text::parse(text)?;
    let n_inputs = s.inputs().len();
    if header.graph_inputs.checked_add(header.constants) != Some(n_inputs) {
        bail!(
            "the IR text has {n_inputs} graph inputs, the header declares {} inputs and {} constants",
            header.graph_inputs,
            header.constants
        );
    }
    let mut consts = vec![];
    for k in 0..header.constants {
        consts.push(Some(read_const(&mut c, k)?));
    }
    if !c.b.is_empty() {
        bail!("{} bytes after the last constant", c.b.len());
    }
    let mut g = Graph::new(s.name.clone());
    g.set_specialized(s.specialized().to_vec());
    g.set_wire_types(s.wire_types().clone());
    let mut map: HashMap<Value, Value> = HashMap::new();
    for (i, &id) in s.inputs().iter().enumerate() {
        let n = s.node(id);
        let ty = n.outputs.first().with_context(|| format!("graph input `{}` has no type", n.name))?;
        let v = if i < header.graph_inputs {
            g.add_input(n.name.clone(), ty.clone())
        } else {
            let k = i - header.graph_inputs;
            if n.name != format!("{CONST_PREFIX}{k}") {
                bail!("graph input {i} is `{}`, expected the constant `{CONST_PREFIX}{k}`", n.name);
            }
            let Some(rec) = consts.get_mut(k).and_then(Option::take) else { bail!("constant {k} is missing") };
            check_const_type(&rec, ty)?;
            let v = g.add_const_typed(rec.name, Arc::unwrap_or_clone(rec.tensor), ty.clone());
            g.node_mut(v.node).from = rec.from;
            v
        };
        map.insert(Value::new(id, 0), v);
    }
    for id in s.schedule()? {
        copy_node(&mut g, s.node(id), id, &mut map)?;
    }
    for o in s.outputs() {
        let v = *map.get(&o.value).with_context(|| format!("output `{}` reads a value outside the graph", o.name))?;
        g.add_output(o.name.clone(), v);
    }
    qforge_ir::verify::verify(&g).context("the stored graph does not verify")?;
    Ok(g)
}

fn check_const_type(rec: &ConstRecord, ty: &TensorType) -> Result<()> {
    let fixed: Option<Vec<usize>> =
        ty.shape.0.iter().map(|d| if let Dim::Fixed(n) = d { Some(*n) } else { None }).collect();
    if ty.dtype != rec.tensor.dtype() || fixed.as_deref() != Some(rec.tensor.shape()) {
        bail!(
            "constant `{}`: stored as {}{:?}, typed {ty} in the text",
            rec.name,
            rec.tensor.dtype().name(),
            rec.tensor.shape()
        );
    }
    Ok(())
}

/// Rejects command-line options that would change the graph when they differ from the ones the
/// artifact was compiled with. An option at its default counts as not given.
pub fn check_options(given: &PipelineOptions, header: &Header) -> Result<()> {
    let given = serde_json::to_value(given)?;
    let default = serde_json::to_value(PipelineOptions::default())?;
    for (key, flag) in GRAPH_OPTIONS {
        let (g, d, stored) = (&given[key], &default[key], &header.pipeline[key]);
        if g != d && g != stored {
            bail!(
                "{flag} {} conflicts with the artifact, compiled with {key} = {}: an artifact runs its stored \
                 graph; recompile from the source model to change it",
                show(key, g),
                show(key, stored)
            );
        }
    }
    Ok(())
}

/// An option's value as the user would write it; an unset option is named as its default.
fn show(key: &str, v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Null if key == "calib_method" => {
            format!("{} (the default)", qforge_passes::quantize::CalibMethod::default().name())
        }
        serde_json::Value::Null => "unset (the default)".to_string(),
        v => v.to_string(),
    }
}

/// The options an artifact runs with: the runtime ones from the command line, no pipeline.
fn runtime_options(opts: &PipelineOptions) -> PipelineOptions {
    PipelineOptions {
        engine: opts.engine,
        threads: opts.threads,
        kernels: opts.kernels,
        max_tensor_bytes: opts.max_tensor_bytes,
        ..PipelineOptions::default()
    }
}

/// Loads an artifact for a command given `opts` on its command line (checked by [`check_options`]).
pub fn load_for(path: &Path, opts: &PipelineOptions) -> Result<Artifact> {
    let a = Artifact::load(path)?;
    check_options(opts, &a.header).with_context(|| format!("`{}`", path.display()))?;
    Ok(a)
}

/// MODEL as `run`, `eval` and `bench` take it: an artifact (loaded, its options checked) or a
/// model to compile (imported).
pub enum Source {
    Artifact(Artifact),
    Model(Graph),
}

impl Source {
    /// MODEL at `path`: an artifact by its extension, any other model imported (specialized on
    /// the `--specialize` values of `opts`).
    pub fn open(path: &Path, opts: &PipelineOptions) -> Result<Source> {
        Source::open_specialized(path, opts, &BTreeMap::new())
    }

    /// [`Source::open`], a model also specialized on the values of `more` (those `run` was given
    /// for inputs the model needs as constants). An artifact's specialized inputs are checked
    /// against the `--specialize` values given ([`check_specialized`]). An import error is the
    /// [`crate::onnx::ImportError`] itself.
    pub fn open_specialized(
        path: &Path,
        opts: &PipelineOptions,
        more: &BTreeMap<String, Arc<Tensor>>,
    ) -> Result<Source> {
        let mut values = opts.specialize_values()?;
        if is_artifact(path) {
            let a = load_for(path, opts)?;
            for (name, t) in &values {
                check_specialized(&a.graph, name, t, "--specialize")
                    .with_context(|| format!("`{}`", path.display()))?;
            }
            return Ok(Source::Artifact(a));
        }
        values.extend(more.iter().map(|(k, v)| (k.clone(), v.clone())));
        Ok(Source::Model(crate::compiler::load_model_specialized(path, opts.max_tensor_bytes, &values)?))
    }

    /// The graph inputs are checked against: the artifact's, or the imported model's (the
    /// pipeline keeps a model's inputs as they are).
    pub fn graph(&self) -> &Graph {
        match self {
            Source::Artifact(a) => &a.graph,
            Source::Model(g) => g,
        }
    }

    /// Ready to run: an artifact's stored graph straight to [`Compiler::executable`] (with the
    /// runtime options of `opts`), a model through the pipeline of `opts`. `make` builds the
    /// compiler (commands add progress bars).
    pub fn prepare(self, opts: PipelineOptions, make: fn(PipelineOptions) -> Result<Compiler>) -> Result<Prepared> {
        match self {
            Source::Artifact(a) => {
                let compiler = make(runtime_options(&opts))?;
                let exe = compiler.executable(a.graph);
                Ok(Prepared { compiler, exe, artifact: Some(a.header) })
            }
            Source::Model(g) => {
                let compiler = make(opts)?;
                let exe = compiler.compile(g)?;
                Ok(Prepared { compiler, exe, artifact: None })
            }
        }
    }
}

/// A value given (by `flag`) for input `name` of a graph specialized on it must be the value it
/// was compiled for: the graph reads that constant, so any other value would be ignored.
pub fn check_specialized(g: &Graph, name: &str, t: &Tensor, flag: &str) -> Result<()> {
    let Some(s) = g.specialized().iter().find(|s| s.name == name) else {
        let known: Vec<String> = g.specialized().iter().map(|s| format!("`{}`", s.name)).collect();
        bail!(
            "{flag} gives input `{name}`, but the artifact is not specialized on it ({})",
            if known.is_empty() {
                "it is specialized on no input".to_string()
            } else {
                format!("only on {}", known.join(", "))
            }
        );
    };
    let same = *s.value == *t
        || (s.value.dtype() == t.dtype() && s.value.shape() == t.shape() && s.value.digest() == t.digest());
    if !same {
        bail!(
            "{flag} gives input `{name}` a value other than the one the model was compiled for (specialized on {}); \
             recompile with --specialize {name}=... to run it on another",
            value_text(&s.value)
        );
    }
    Ok(())
}

/// A tensor as messages show it: its type and, for a few elements, its values.
fn value_text(t: &Tensor) -> String {
    let dims: Vec<String> = t.shape().iter().map(|d| d.to_string()).collect();
    let ty = format!("{}[{}]", t.dtype(), dims.join(","));
    if t.len() > 8 {
        return format!("a {ty}");
    }
    match t.to_i64_vec() {
        Some(v) => format!("{ty} {v:?}"),
        None => format!("{ty} {:?}", t.to_f32_vec()),
    }
}

/// What `run`, `eval` and `bench` execute.
pub struct Prepared {
    pub compiler: Compiler,
    pub exe: Executable,
    /// The artifact's header when MODEL is an artifact.
    pub artifact: Option<Header>,
}

/// MODEL ready to run ([`Source::open`], then [`Source::prepare`] with [`Compiler::new`]).
pub fn prepare(model: &Path, opts: PipelineOptions) -> Result<Prepared> {
    Source::open(model, &opts)?.prepare(opts, Compiler::new)
}

impl Header {
    /// The lines `inspect` prints about an artifact.
    pub fn to_text(&self) -> String {
        let mut opts = vec![];
        let default = serde_json::to_value(PipelineOptions::default()).unwrap_or_default();
        for (key, flag) in GRAPH_OPTIONS {
            let v = &self.pipeline[key];
            if v != &default[key] {
                opts.push(match v {
                    serde_json::Value::Bool(true) => flag.to_string(),
                    v => format!("{flag} {}", show(key, v)),
                });
            }
        }
        format!(
            "artifact format {} (qforge {}), from `{}` ({}), profile {}, pipeline: {}\n",
            self.format_version,
            self.qforge_version,
            self.model,
            self.model_digest,
            self.profile,
            if opts.is_empty() { "defaults".to_string() } else { opts.join(" ") }
        )
    }
}
