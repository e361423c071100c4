//! The memory plan: every intermediate tensor of a compiled graph lives in one arena, at an
//! offset chosen so that tensors whose lifetimes overlap never share bytes. Lifetimes are step
//! indices (a buffer is live from the step that writes it to the last step that reads it); an
//! in-place element-wise step simply reuses its input's buffer, which the caller expresses by
//! giving both values one buffer.
//!
//! Placement is the greedy best-fit of TFLite's arena planner: largest buffers first, each at the
//! lowest offset that does not collide with a placed buffer live at the same time. Every buffer
//! is 64-byte aligned and followed by [`SLACK`] readable bytes, so vector kernels may read past
//! a row's end (the values read there are never used).

/// Bytes after each buffer that kernels may read (but never write).
pub const SLACK: usize = 64;
const ALIGN: usize = 64;

/// One buffer to place: its size in bytes and its live range `[first, last]` in steps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Buffer {
    pub bytes: usize,
    pub first: usize,
    pub last: usize,
}

/// Offsets of the buffers (in the order given) and the arena's size.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ArenaPlan {
    pub offsets: Vec<usize>,
    /// Bytes of the arena (the peak of the plan, with alignment and slack).
    pub arena_bytes: usize,
    /// The sum of all buffer sizes: what the graph would take with no reuse.
    pub total_bytes: usize,
}

fn round_up(x: usize, a: usize) -> usize {
    x.div_ceil(a) * a
}

/// Places `buffers` in one arena.
pub fn plan(buffers: &[Buffer]) -> ArenaPlan {
    let mut order: Vec<usize> = (0..buffers.len()).collect();
    order.sort_by(|&a, &b| buffers[b].bytes.cmp(&buffers[a].bytes).then(a.cmp(&b)));
    let mut offsets = vec![0usize; buffers.len()];
    let mut placed: Vec<(usize, usize, usize)> = Vec::new(); // (offset, end, buffer index)
    let mut arena = 0;
    for &i in &order {
        let b = buffers[i];
        let need = round_up(b.bytes + SLACK, ALIGN);
        let mut live: Vec<(usize, usize)> = placed
            .iter()
            .filter(|&&(_, _, j)| buffers[j].first <= b.last && b.first <= buffers[j].last)
            .map(|&(o, e, _)| (o, e))
            .collect();
        live.sort_unstable();
        // The lowest gap that fits.
        let mut at = 0;
        for &(o, e) in &live {
            if o >= at + need {
                break;
            }
            at = at.max(e);
        }
        offsets[i] = at;
        placed.push((at, at + need, i));
        arena = arena.max(at + need);
    }
    ArenaPlan { offsets, arena_bytes: arena, total_bytes: buffers.iter().map(|b| b.bytes).sum() }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn overlap(p: &ArenaPlan, bs: &[Buffer]) -> bool {
        for i in 0..bs.len() {
            for j in 0..i {
                let live = bs[i].first <= bs[j].last && bs[j].first <= bs[i].last;
                let (a0, a1) = (p.offsets[i], p.offsets[i] + bs[i].bytes + SLACK);
                let (b0, b1) = (p.offsets[j], p.offsets[j] + bs[j].bytes + SLACK);
                if live && a0 < b1 && b0 < a1 {
                    return true;
                }
            }
        }
        false
    }

    #[test]
    fn a_chain_reuses_two_buffers() {
        // x0 -> x1 -> x2 -> x3: each buffer lives for two steps.
        let bs: Vec<Buffer> = (0..4).map(|i| Buffer { bytes: 1000, first: i, last: i + 1 }).collect();
        let p = plan(&bs);
        assert!(!overlap(&p, &bs));
        assert_eq!(p.arena_bytes, 2 * round_up(1000 + SLACK, ALIGN));
        assert_eq!(p.total_bytes, 4000);
    }

    #[test]
    fn random_plans_never_overlap_live_buffers() {
        let mut s = 0x1234_5678_9abc_def0u64;
        let mut rnd = |n: usize| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s % n as u64) as usize
        };
        for _ in 0..200 {
            let n = 1 + rnd(30);
            let bs: Vec<Buffer> = (0..n)
                .map(|_| {
                    let first = rnd(20);
                    Buffer { bytes: 1 + rnd(5000), first, last: first + rnd(6) }
                })
                .collect();
            let p = plan(&bs);
            assert!(!overlap(&p, &bs));
            assert!(p.offsets.iter().all(|o| o % ALIGN == 0));
        }
    }
}
