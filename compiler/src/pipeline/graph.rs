//! The stages as a graph: each stage input bound to a pipeline input or to another stage's output,
//! checked (every source exists, no cycle, what a producer gives fits what its consumer takes),
//! and ordered so that producers come before their consumers.

use super::config::{Config, Mismatch, PipelineError, Sources};
use qforge_ir::{Dim, Graph, TensorType};

/// Where one model input of a stage comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// A pipeline input (its index in [`Config::inputs`]).
    Input(usize),
    /// Output `output` of stage `stage`.
    Stage { stage: usize, output: usize },
}

/// A named, typed port: a model input or output.
#[derive(Clone, Debug)]
pub struct Port {
    pub name: String,
    pub ty: TensorType,
}

/// The model inputs of `g`, in order.
pub fn input_ports(g: &Graph) -> Vec<Port> {
    g.inputs()
        .iter()
        .map(|&id| {
            let n = g.node(id);
            Port { name: n.name.clone(), ty: n.outputs[0].clone() }
        })
        .collect()
}

/// The model outputs of `g`, in order.
pub fn output_ports(g: &Graph) -> Vec<Port> {
    g.outputs().iter().map(|o| Port { name: o.name.clone(), ty: g.value_type(o.value).clone() }).collect()
}

/// The checked graph of stages.
#[derive(Clone, Debug)]
pub struct Plan {
    /// Stage indices, every producer before its consumers (ties in file order).
    pub order: Vec<usize>,
    /// Per stage, the source of each model input, in the model's input order.
    pub bindings: Vec<Vec<Source>>,
    /// Per stage, the stages that read one of its outputs (each once, in file order).
    pub consumers: Vec<Vec<usize>>,
    /// Per stage, the stages it reads from (each once, in file order).
    pub producers: Vec<Vec<usize>>,
    /// Per stage, whether it reads a pipeline input.
    pub reads_input: Vec<bool>,
    /// Per stage, its output names.
    pub outputs: Vec<Vec<String>>,
}

impl Plan {
    /// The stages no stage reads from: their outputs are the pipeline's results.
    pub fn sinks(&self) -> Vec<usize> {
        (0..self.consumers.len()).filter(|&s| self.consumers[s].is_empty()).collect()
    }

    /// Whether each stage is `s` or reads (directly or not) from `s`.
    pub fn downstream_of(&self, s: usize) -> Vec<bool> {
        let mut down = vec![false; self.consumers.len()];
        let mut todo = vec![s];
        while let Some(k) = todo.pop() {
            if !std::mem::replace(&mut down[k], true) {
                todo.extend(&self.consumers[k]);
            }
        }
        down
    }
}

/// Whether a value of type `got` can feed an input declared `want`: the same dtype and rank, and
/// equal sizes wherever both are fixed (a symbolic size, such as the batch `N`, takes any).
fn fits(want: &TensorType, got: &TensorType) -> bool {
    let (w, g) = (want.shape.dims(), got.shape.dims());
    want.dtype == got.dtype
        && w.len() == g.len()
        && w.iter().zip(g).all(|(a, b)| match (a, b) {
            (Dim::Fixed(x), Dim::Fixed(y)) => x == y,
            _ => true,
        })
}

/// Checks `cfg` against its stages' models (`inputs[s]`, `outputs[s]`: stage `s`'s model ports)
/// and the pipeline inputs' frame types (`frames[i]`: one frame of input `i`), and orders it.
pub fn plan(
    cfg: &Config,
    inputs: &[Vec<Port>],
    outputs: &[Vec<Port>],
    frames: &[TensorType],
) -> Result<Plan, PipelineError> {
    let file = cfg.file.clone();
    let n = cfg.stages.len();
    let mut bindings = Vec::with_capacity(n);
    for (s, st) in cfg.stages.iter().enumerate() {
        let ins = &inputs[s];
        let bad = |msg: String| PipelineError::Inputs { file: file.clone(), stage: st.name.clone(), msg };
        let names: Vec<String> = ins.iter().map(|p| format!("`{}`", p.name)).collect();
        let sources: Vec<&str> = match &st.from {
            Sources::Ordered(v) => {
                if v.len() != ins.len() {
                    return Err(bad(format!(
                        "`from` gives {} source(s) for the model's {} input(s) ({})",
                        v.len(),
                        ins.len(),
                        names.join(", ")
                    )));
                }
                v.iter().map(String::as_str).collect()
            }
            Sources::Named(m) => {
                if let Some(k) = m.keys().find(|k| !ins.iter().any(|p| &p.name == *k)) {
                    return Err(bad(format!("`from` names `{k}`, which is not a model input ({})", names.join(", "))));
                }
                ins.iter()
                    .map(|p| {
                        m.get(&p.name)
                            .map(String::as_str)
                            .ok_or_else(|| bad(format!("`from` gives no source for model input `{}`", p.name)))
                    })
                    .collect::<Result<_, _>>()?
            }
        };
        let mut b = Vec::with_capacity(ins.len());
        for src in sources {
            b.push((resolve(cfg, outputs, s, src)?, src.to_string()));
        }
        bindings.push(b);
    }
    let mut producers = vec![vec![]; n];
    let mut consumers = vec![vec![]; n];
    let mut reads_input = vec![false; n];
    for (s, b) in bindings.iter().enumerate() {
        for (src, _) in b {
            match *src {
                Source::Input(_) => reads_input[s] = true,
                Source::Stage { stage, .. } => {
                    if !producers[s].contains(&stage) {
                        producers[s].push(stage);
                    }
                    if !consumers[stage].contains(&s) {
                        consumers[stage].push(s);
                    }
                }
            }
        }
    }
    for p in &mut producers {
        p.sort_unstable();
    }
    for c in &mut consumers {
        c.sort_unstable();
    }
    if let Some(cycle) = find_cycle(&producers) {
        let names: Vec<&str> = cycle.iter().map(|&s| cfg.stages[s].name.as_str()).collect();
        return Err(PipelineError::Cycle { file, stage: names[0].to_string(), cycle: names.join(" <- ") });
    }
    // what each input is given fits what its model takes (checked once the graph is known to be
    // acyclic, so a cycle is reported as one)
    for (s, b) in bindings.iter().enumerate() {
        for (port, (source, src)) in inputs[s].iter().zip(b) {
            let got = match *source {
                Source::Input(i) => &frames[i],
                Source::Stage { stage, output } => &outputs[stage][output].ty,
            };
            if !fits(&port.ty, got) {
                return Err(PipelineError::Mismatch {
                    file: file.clone(),
                    stage: cfg.stages[s].name.clone(),
                    types: Box::new(Mismatch {
                        input: port.name.clone(),
                        source_name: src.clone(),
                        want: port.ty.to_string(),
                        got: got.to_string(),
                    }),
                });
            }
        }
    }
    let bindings: Vec<Vec<Source>> = bindings.into_iter().map(|b| b.into_iter().map(|(x, _)| x).collect()).collect();
    // Kahn's order, taking the first ready stage in file order each time
    let mut pending: Vec<usize> = producers.iter().map(Vec::len).collect();
    let mut done = vec![false; n];
    let mut order = Vec::with_capacity(n);
    while let Some(s) = (0..n).find(|&s| !done[s] && pending[s] == 0) {
        done[s] = true;
        order.push(s);
        for &c in &consumers[s] {
            pending[c] -= 1;
        }
    }
    let outputs = outputs.iter().map(|o| o.iter().map(|p| p.name.clone()).collect()).collect();
    Ok(Plan { order, bindings, consumers, producers, reads_input, outputs })
}

/// The source a stage input names: a pipeline input, `stage.output` (an output name or `outK`),
/// or a stage with one output.
fn resolve(cfg: &Config, outputs: &[Vec<Port>], s: usize, src: &str) -> Result<Source, PipelineError> {
    if let Some(i) = cfg.inputs.iter().position(|i| i.name == src) {
        return Ok(Source::Input(i));
    }
    let (producer, output) = match src.split_once('.') {
        Some((p, o)) => (p, Some(o)),
        None => (src, None),
    };
    let Some(p) = cfg.stages.iter().position(|st| st.name == producer) else {
        let list = |v: Vec<&str>| v.iter().map(|n| format!("`{n}`")).collect::<Vec<_>>().join(", ");
        return Err(PipelineError::UnknownSource {
            file: cfg.file.clone(),
            stage: cfg.stages[s].name.clone(),
            source_name: src.to_string(),
            inputs: list(cfg.inputs.iter().map(|i| i.name.as_str()).collect()),
            stages: list(cfg.stages.iter().map(|st| st.name.as_str()).collect()),
        });
    };
    let outs = &outputs[p];
    let found = match output {
        None if outs.len() == 1 => Some(0),
        None => None,
        Some(o) => outs
            .iter()
            .position(|port| port.name == o)
            .or_else(|| o.strip_prefix("out").and_then(|k| k.parse::<usize>().ok()).filter(|&k| k < outs.len())),
    };
    found.map(|output| Source::Stage { stage: p, output }).ok_or_else(|| PipelineError::UnknownOutput {
        file: cfg.file.clone(),
        stage: cfg.stages[s].name.clone(),
        producer: producer.to_string(),
        output: output.map_or_else(|| format!("{producer}.OUTPUT"), |o| format!("{producer}.{o}")),
        outputs: outs
            .iter()
            .enumerate()
            .map(|(k, port)| format!("`{}` (out{k})", port.name))
            .collect::<Vec<_>>()
            .join(", "),
    })
}

/// A cycle among the stages (`producers[s]`: what stage `s` reads), as the stages along it,
/// first stage repeated at the end; `None` when there is none.
fn find_cycle(producers: &[Vec<usize>]) -> Option<Vec<usize>> {
    // 0: not seen, 1: on the current path, 2: done
    let mut state = vec![0u8; producers.len()];
    let mut path = Vec::new();
    fn visit(s: usize, producers: &[Vec<usize>], state: &mut [u8], path: &mut Vec<usize>) -> Option<Vec<usize>> {
        state[s] = 1;
        path.push(s);
        for &p in &producers[s] {
            if state[p] == 1 {
                let from = path.iter().position(|&x| x == p).unwrap_or(0);
                let mut cycle = path[from..].to_vec();
                cycle.push(p);
                return Some(cycle);
            }
            if state[p] == 0 {
                if let Some(c) = visit(p, producers, state, path) {
                    return Some(c);
                }
            }
        }
        path.pop();
        state[s] = 2;
        None
    }
    (0..producers.len()).find_map(|s| if state[s] == 0 { visit(s, producers, &mut state, &mut path) } else { None })
}
