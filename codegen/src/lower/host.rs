//! Host steps: a node no kernel covers runs on the reference interpreter, on plain tensors read
//! from and written back to the arena. Each is counted in [`super::Lowered::host_ops`] and
//! carries the reason no kernel took it, so a report never hides one.

use super::{HostArg, Layout, Lowerer, StepKind};
use crate::JitError;
use qforge_ir::{NodeId, Op, Value};

impl Lowerer<'_> {
    /// Node `id` as a host step (its inputs in plain order, constants passed as they are). The
    /// interpreter's temporaries for it are held to the size limit now, as the interpreter
    /// would at run time.
    pub(super) fn lower_host(&mut self, id: NodeId, reason: String) -> Result<(), JitError> {
        self.check_temporaries(id)?;
        let node = self.g.node(id);
        let mut args = Vec::new();
        for v in node.inputs() {
            args.push(match v {
                None => HostArg::Missing,
                Some(v) => match self.const_of(Some(*v)) {
                    Some(t) => HostArg::Const(t, self.types[v].clone()),
                    None => {
                        let b = self.plain(*v, &node.name)?;
                        HostArg::Buffer(b, self.types[v].clone())
                    }
                },
            });
        }
        let mut outs = Vec::new();
        for p in 0..node.outputs.len() {
            let v = Value::new(id, p);
            let b = self.define(v, Layout::Plain);
            outs.push((b, self.types[&v].clone()));
        }
        *self.host.entry(node.op.name().to_string()).or_default() += 1;
        self.push(&node.name, StepKind::Host { op: node.op.clone(), inputs: args, outputs: outs, reason });
        Ok(())
    }

    /// A graph output that is a constant: copied into the arena once per run (an identity host
    /// step, not counted as a host op).
    pub(super) fn const_output(&mut self, v: Value, name: &str) {
        if let Some(t) = self.const_of(Some(v)) {
            let ty = self.types[&v].clone();
            let b = self.define(v, Layout::Plain);
            self.push(
                name,
                StepKind::Host {
                    op: Op::Identity,
                    inputs: vec![HostArg::Const(t, ty.clone())],
                    outputs: vec![(b, ty)],
                    reason: "a constant graph output".into(),
                },
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_util::{check_family, Case};

    const CASES: &[Case] = &[
        Case {
            name: "tile and a gather at indices from the input run on the host; a constant output is copied in",
            shapes: &[&[2, 6], &[2]],
            qir: r#"graph h(%x: f32[N,6], %i: i64[N]) -> (a: f32[N,12], c: f32[3], d: f32[N]) {
  %1 = tile %x {repeats=[1,2]} : f32[N,12]  # "tile"
  %3 = const f32[3] = [1.0, 2.0, 3.0]  # "constant_out"
  %4 = flatten %x {axis=0} : f32[1,N*6]  # "flat"
  %5 = reshape %4 {shape=[-1]} : f32[N*6]  # "row"
  %6 = gather %5, %i {axis=0} : f32[N]  # "gather_activation_indices"
  return %1, %3, %6
}"#,
        },
        Case {
            name: "a host step between kernels reads and writes plain buffers",
            shapes: &[&[1, 2, 4, 4]],
            qir: r#"graph h(%x: f32[N,2,4,4]) -> (y: f32[N,2,2,1]) {
  %0 = max_pool %x {kernel=[2,2], strides=[2,2], pads=[0,0,0,0], dilations=[1,1], ceil_mode=false, count_include_pad=false} : f32[N,2,2,2]  # "pool"
  %1 = reduce_prod %0 {axes=[3], keepdims=true} : f32[N,2,2,1]  # "reduce"
  %2 = relu %1 : f32[N,2,2,1]  # "relu"
  return %2
}"#,
        },
        Case {
            name: "pooling or convolving a constant runs on the host",
            shapes: &[&[1, 1, 2, 2]],
            qir: r#"graph h(%x: u8<0.1:0>[N,1,2,2]) -> (y: u8<0.1:0>[1,1,1,1], z: u8<0.1:0>[1,1,2,2], s: u8<0.1:0>[N,1,2,2]) {
  %0 = const u8<0.1:0>[1,1,2,2] = [1, 2, 3, 4]  # "image"
  %1 = max_pool %0 {kernel=[2,2], strides=[2,2], pads=[0,0,0,0], dilations=[1,1], ceil_mode=false, count_include_pad=false} : u8<0.1:0>[1,1,1,1]  # "pool_const"
  %2 = const i8<0.5:0>[1,1,1,1] = [2]  # "w"
  %3 = qconv %0, %2 {kernel=[1,1], strides=[1,1], pads=[0,0,0,0], dilations=[1,1], group=1, epilogue=[requant]} : u8<0.1:0>[1,1,2,2]  # "qconv_const"
  %4 = qconv %x, %2 {kernel=[1,1], strides=[1,1], pads=[0,0,0,0], dilations=[1,1], group=1, epilogue=[requant]} : u8<0.1:0>[N,1,2,2]  # "qconv"
  return %1, %3, %4
}"#,
        },
    ];

    #[test]
    fn host_family_lowering() {
        check_family("host", CASES);
    }
}
