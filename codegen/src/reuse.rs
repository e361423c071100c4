//! What programs compiled one after another on one thread may share while
//! [`between_programs`] runs: the arena of a dropped program, and weights reordered and packed
//! for a kernel. For callers that compile and drop many programs of one model (the sensitivity
//! study's probes, the `--min-sqnr` searches, the accuracy guard): a fresh arena of tens of
//! megabytes costs a page fault per 4 KiB page on its first run and an unmap when dropped
//! (about a fifth of a MobileNetV2 probe's time), and packing the same float weights again for
//! every probe about a tenth.
//!
//! Nothing a program computes changes: a reused arena starts zeroed, as a fresh one does, and
//! packed weights are shared only for the same weight tensor (the same allocation, which the
//! cache holds on to, so it cannot be freed and its address reused) packed the same way.
//! Outside [`between_programs`] nothing is kept.

use crate::program::Line;
use qforge_ir::Tensor;
use std::any::Any;
use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::Arc;

/// How many dropped arenas [`between_programs`] keeps.
const SPARE_ARENAS: usize = 1;

/// The most bytes of packed weights [`between_programs`] keeps: about a ResNet-18's (its 3x3
/// layers' Winograd transforms are 16/9 of their weights). A larger model's packings past it
/// are made again by each program, as outside the scope.
const PACKED_BYTES: u128 = 192 << 20;

/// Packed weights: the weight tensor's address, what packing, its parameters.
type PackKey = (usize, &'static str, Vec<usize>);

/// A kept packing: the tensor it was made from (held, so its address is not reused), the
/// packing, its size in bytes.
struct Packing {
    source: Arc<Tensor>,
    packed: Arc<dyn Any + Send + Sync>,
    bytes: u128,
}

/// What [`between_programs`] keeps on this thread.
#[derive(Default)]
struct Kept {
    /// Arenas of dropped programs, the largest first.
    arenas: Vec<Vec<Line>>,
    /// Packed weights with the tensor they were packed from and their size in bytes.
    packed: HashMap<PackKey, Packing>,
}

thread_local! {
    /// `None` outside [`between_programs`].
    static KEPT: RefCell<Option<Kept>> = const { RefCell::new(None) };
}

/// Runs `f` with dropped programs' arenas and packed weights kept on this thread for the
/// programs compiled after them, and freed when `f` returns (the outermost call's).
pub fn between_programs<R>(f: impl FnOnce() -> R) -> R {
    struct Scope(bool);
    impl Drop for Scope {
        fn drop(&mut self) {
            if self.0 {
                KEPT.with(|k| k.borrow_mut().take());
            }
        }
    }
    let outermost = KEPT.with(|k| {
        let mut k = k.borrow_mut();
        k.is_none().then(|| *k = Some(Kept::default())).is_some()
    });
    let _scope = Scope(outermost);
    f()
}

/// A kept arena of at least `n` lines (the smallest such), inside [`between_programs`]. When
/// none is that large, the kept ones are freed before the caller allocates: the larger arena
/// replaces them when its program is dropped, and they are not held beside it meanwhile.
pub(crate) fn take_arena(n: usize) -> Option<Vec<Line>> {
    KEPT.with(|k| {
        let mut k = k.borrow_mut();
        let spare = &mut k.as_mut()?.arenas;
        match (0..spare.len()).filter(|&i| spare[i].len() >= n).min_by_key(|&i| spare[i].len()) {
            Some(i) => Some(spare.swap_remove(i)),
            None => {
                spare.clear();
                None
            }
        }
    })
}

/// Keeps a dropped program's arena inside [`between_programs`] (at most [`SPARE_ARENAS`], the
/// largest); outside it, frees it.
pub(crate) fn give_arena(lines: Vec<Line>) {
    if lines.is_empty() {
        return;
    }
    KEPT.with(|k| {
        if let Some(k) = k.borrow_mut().as_mut() {
            k.arenas.push(lines);
            k.arenas.sort_by_key(|v| std::cmp::Reverse(v.len()));
            k.arenas.truncate(SPARE_ARENAS);
        }
    });
}

/// `w` packed by `make` (packing `kind` with `params`, `bytes` long): inside
/// [`between_programs`], the packing an earlier program made of the same tensor the same way,
/// if there is one. Packings whose tensor only the cache still holds (its graph is gone) are
/// dropped as new ones come; a new one is kept if its tensor is shared with another graph (the
/// probes' copies share the float graph's weights) and while the kept ones take at most
/// [`PACKED_BYTES`].
pub(crate) fn packed<T: Any + Send + Sync, E>(
    w: &Arc<Tensor>,
    kind: &'static str,
    params: &[usize],
    bytes: u128,
    make: impl FnOnce() -> Result<T, E>,
) -> Result<Arc<T>, E> {
    let key: PackKey = (Arc::as_ptr(w) as usize, kind, params.to_vec());
    let hit = KEPT.with(|k| {
        let k = k.borrow();
        k.as_ref()?.packed.get(&key)?.packed.clone().downcast::<T>().ok()
    });
    if let Some(p) = hit {
        return Ok(p);
    }
    let p = Arc::new(make()?);
    KEPT.with(|k| {
        if let Some(k) = k.borrow_mut().as_mut() {
            k.packed.retain(|_, kept| Arc::strong_count(&kept.source) > 1);
            let kept: u128 = k.packed.values().map(|p| p.bytes).sum();
            // a tensor only the graph being compiled holds (besides the caller's handle) was
            // made for it (a dequantized weight folded by the JIT): no later program packs it
            if Arc::strong_count(w) > 2 && kept.saturating_add(bytes) <= PACKED_BYTES {
                k.packed.insert(key, Packing { source: w.clone(), packed: p.clone(), bytes });
            }
        }
    });
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packings_are_shared_inside_the_scope_only() {
        // a weight two graphs hold (the float graph and a probe's copy), as lowering sees it
        let w = Arc::new(Tensor::from_f32(vec![2], vec![1.0, 2.0]));
        let (_graph, _copy) = (w.clone(), w.clone());
        let mut made = 0;
        let mut pack = |w: &Arc<Tensor>, params: &[usize]| {
            packed(w, "test", params, 8, || -> Result<Vec<f32>, ()> {
                made += 1;
                Ok(w.to_f32_vec())
            })
            .unwrap()
        };
        let (a, b) = (pack(&w, &[1]), pack(&w, &[1]));
        assert!(!Arc::ptr_eq(&a, &b), "outside the scope nothing is kept");
        between_programs(|| {
            let (a, b, c) = (pack(&w, &[1]), pack(&w, &[1]), pack(&w, &[2]));
            assert!(Arc::ptr_eq(&a, &b) && !Arc::ptr_eq(&a, &c));
            // the same contents in another tensor are another key
            let v = Arc::new(Tensor::from_f32(vec![2], vec![1.0, 2.0]));
            let (_graph, _copy) = (v.clone(), v.clone());
            assert!(!Arc::ptr_eq(&a, &pack(&v, &[1])));
            // a tensor only its own graph holds is not kept
            let u = Arc::new(Tensor::from_f32(vec![2], vec![1.0, 2.0]));
            let _graph = u.clone();
            assert!(!Arc::ptr_eq(&pack(&u, &[1]), &pack(&u, &[1])));
        });
        assert_eq!(made, 7);
    }
}
