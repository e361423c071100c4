//! The ops whose result size depends on the data ([`crate::Op::data_dependent`]): NonZero and
//! NonMaxSuppression. Their results are built first and their shapes taken from what was
//! selected; the runner binds the op's count symbol to that size.
//!
//! * NonZero (ONNX spec, `onnx.reference`'s `np.nonzero`): the indices of the elements that are
//!   not zero (not `false`; NaN counts as non-zero), in row-major order, one row per axis.
//! * NonMaxSuppression-11, following `onnx/reference/ops/op_non_max_suppression.py` step for
//!   step in f32: for each batch, then each class, the candidates are the boxes whose score is
//!   above `score_threshold` (every box when that input is absent), taken by descending score
//!   (equal scores by ascending box index); a candidate is kept unless its IoU with a box kept
//!   before in the same batch and class is above `iou_threshold`, until
//!   `max_output_boxes_per_class` are kept (an absent bound keeps none, the spec's default 0).
//!   The IoU follows the reference: boxes that do not overlap, or any area that is not positive,
//!   never suppress.

use super::{floats, int_tensor, Cx, R};
use crate::DType;
use std::cmp::Ordering;

/// NonZero: `[rank, count]` i64 indices of the non-zero elements.
pub(crate) fn non_zero(cx: &Cx) -> R<crate::Tensor> {
    let x = cx.x(0)?;
    let shape = x.shape().to_vec();
    let nonzero: Vec<bool> = if x.dtype().is_float() {
        x.to_f64_vec().iter().map(|&v| v != 0.0).collect()
    } else {
        x.to_i64_bits().ok_or("non_zero needs a numeric or bool tensor")?.iter().map(|&v| v != 0).collect()
    };
    let count = nonzero.iter().filter(|&&b| b).count();
    let rank = shape.len();
    let mut out = vec![0i64; rank.checked_mul(count).ok_or("result too large")?];
    let mut idx = vec![0usize; rank];
    let mut k = 0;
    for &nz in &nonzero {
        if nz {
            for (a, &i) in idx.iter().enumerate() {
                out[a * count + k] = i as i64;
            }
            k += 1;
        }
        // the next row-major index
        for a in (0..rank).rev() {
            idx[a] += 1;
            if idx[a] < shape[a] {
                break;
            }
            idx[a] = 0;
        }
    }
    int_tensor(DType::I64, vec![rank, count], &out)
}

/// One scalar input, if present (an empty tensor counts as absent, as in the reference).
fn scalar<T: Copy>(cx: &Cx, i: usize, read: impl Fn(&crate::Tensor) -> Vec<T>) -> Option<T> {
    cx.opt(i).and_then(|t| read(t).first().copied())
}

/// `(min, max)` of two coordinates (the reference's `max_min`).
fn min_max(a: f32, b: f32) -> (f32, f32) {
    if a >= b {
        (b, a)
    } else {
        (a, b)
    }
}

/// The reference's `suppress_by_iou`: whether box `a` suppresses box `b` (boxes as 4 values).
fn suppresses(a: &[f32], b: &[f32], center: bool, iou_threshold: f32) -> bool {
    let ((ax0, ax1), (ay0, ay1), (bx0, bx1), (by0, by1)) = if center {
        let (aw, ah, bw, bh) = (a[2] / 2.0, a[3] / 2.0, b[2] / 2.0, b[3] / 2.0);
        ((a[0] - aw, a[0] + aw), (a[1] - ah, a[1] + ah), (b[0] - bw, b[0] + bw), (b[1] - bh, b[1] + bh))
    } else {
        (min_max(a[1], a[3]), min_max(a[0], a[2]), min_max(b[1], b[3]), min_max(b[0], b[2]))
    };
    let (ix0, ix1) = (ax0.max(bx0), ax1.min(bx1));
    if ix1 <= ix0 {
        return false;
    }
    let (iy0, iy1) = (ay0.max(by0), ay1.min(by1));
    if iy1 <= iy0 {
        return false;
    }
    let inter = (ix1 - ix0) * (iy1 - iy0);
    if inter <= 0.0 {
        return false;
    }
    let area_a = (ax1 - ax0) * (ay1 - ay0);
    let area_b = (bx1 - bx0) * (by1 - by0);
    let union = area_a + area_b - inter;
    if area_a <= 0.0 || area_b <= 0.0 || union <= 0.0 {
        return false;
    }
    inter / union > iou_threshold
}

/// NonMaxSuppression: `[count, 3]` i64 `(batch, class, box)` triples in selection order.
pub(crate) fn non_max_suppression(cx: &Cx, center: bool) -> R<crate::Tensor> {
    let (boxes, scores) = (cx.x(0)?, cx.x(1)?);
    let (bs, ss) = (boxes.shape(), scores.shape());
    if bs.len() != 3 || ss.len() != 3 || bs[2] != 4 || bs[0] != ss[0] || bs[1] != ss[2] {
        return Err(format!("boxes {bs:?} and scores {ss:?} do not fit [batch, boxes, 4] and [batch, classes, boxes]"));
    }
    let (batches, classes, n) = (ss[0], ss[1], ss[2]);
    let max_out = scalar(cx, 2, |t| t.to_i64_vec().unwrap_or_default()).unwrap_or(0).max(0);
    let max_out = usize::try_from(max_out).unwrap_or(usize::MAX);
    let iou_threshold = scalar(cx, 3, |t| floats(t).into_owned()).unwrap_or(0.0);
    let score_threshold = scalar(cx, 4, |t| floats(t).into_owned());
    let (bv, sv) = (floats(boxes), floats(scores));
    let mut out = vec![];
    for b in 0..batches {
        let batch_boxes = &bv[b * n * 4..(b + 1) * n * 4];
        for c in 0..classes {
            let class_scores = &sv[(b * classes + c) * n..(b * classes + c + 1) * n];
            let mut candidates: Vec<usize> =
                (0..n).filter(|&i| score_threshold.is_none_or(|t| class_scores[i] > t)).collect();
            // descending score, equal scores by ascending index (the reference pops the largest
            // `BoxInfo` of an ascending sort)
            candidates.sort_by(|&i, &j| {
                class_scores[j].partial_cmp(&class_scores[i]).unwrap_or(Ordering::Equal).then(i.cmp(&j))
            });
            let mut kept: Vec<usize> = vec![];
            for i in candidates {
                if kept.len() >= max_out {
                    break;
                }
                let bx = &batch_boxes[i * 4..i * 4 + 4];
                if kept.iter().all(|&k| !suppresses(bx, &batch_boxes[k * 4..k * 4 + 4], center, iou_threshold)) {
                    kept.push(i);
                    out.extend([b as i64, c as i64, i as i64]);
                }
            }
        }
    }
    let count = out.len() / 3;
    int_tensor(DType::I64, vec![count, 3], &out)
}
