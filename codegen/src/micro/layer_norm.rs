//! Layer normalization of many rows at once, for the JIT's layer-norm row steps.
//!
//! The numerics contract ([`qforge_ir::interp::norm::layer_norm_row`]) accumulates each row's
//! sum and its sum of squared deviations in f32, one value after the other. One row at a time,
//! that is a chain of dependent additions the CPU cannot overlap (a transformer's row of 384
//! values waits about 1,500 cycles on it). Here blocks of [`LANES`] rows are transposed into
//! scratch ([`rows_to_lanes`]) so that lane `l` of every vector holds row `l`: each lane still adds its own row's
//! values in order, so every row gets the interpreter's statistics bit for bit, while the
//! [`LANES`] rows' additions run side by side. The normalization itself is element-wise, row by
//! row, with the interpreter's formula `(v - mean) / denom * scale[k] + bias[k]` (no fused
//! multiply-add: Rust never contracts), so it vectorizes along the row.

use super::transpose::{rows_to_lanes, LANES};
use qforge_ir::interp::norm::layer_norm_row;
use qforge_ir::multiversion;

multiversion! {
    baseline = layer_norm_rows_baseline;
    /// Layer normalization of the rows of `n` values of `x` into `y` (same length, a whole
    /// number of rows) with `scale` and `bias` (`n` each): blocks of [`LANES`] rows through
    /// `scratch` (resized to `n * LANES`), a last partial block with zero rows in its free lanes
    /// when there are more than [`LANES`] rows; fewer rows go one by one.
    pub fn layer_norm_rows(
        x: &[f32],
        n: usize,
        scale: &[f32],
        bias: &[f32],
        eps: f32,
        y: &mut [f32],
        scratch: &mut Vec<f32>,
    ) -> () {
        if n == 0 {
            return;
        }
        let rows = x.len() / n;
        let nf = n as f32;
        let mut r0 = 0;
        if rows >= LANES {
            scratch.resize(n * LANES, 0.0);
        }
        while r0 + LANES <= rows || (rows > LANES && r0 < rows) {
            // a last partial block takes the lanes it has; the other lanes hold zeros, whose
            // statistics are computed and never stored
            let live = LANES.min(rows - r0);
            let block = &x[r0 * n..(r0 + live) * n];
            // scratch[k * LANES + l] = row l's value k
            rows_to_lanes(block, n, scratch);
            let mut sum = [0f32; LANES];
            for col in scratch.chunks_exact(LANES) {
                for (s, &v) in sum.iter_mut().zip(col) {
                    *s += v;
                }
            }
            let mean = sum.map(|s| s / nf);
            let mut sq = [0f32; LANES];
            for col in scratch.chunks_exact(LANES) {
                for ((q, &v), &m) in sq.iter_mut().zip(col).zip(&mean) {
                    *q += (v - m) * (v - m);
                }
            }
            let denom = sq.map(|q| (q / nf + eps).sqrt());
            let out = &mut y[r0 * n..(r0 + live) * n];
            for (l, (row, orow)) in block.chunks_exact(n).zip(out.chunks_exact_mut(n)).enumerate() {
                let (m, d) = (mean[l], denom[l]);
                for (((o, &v), &s), &b) in orow.iter_mut().zip(row).zip(scale).zip(bias) {
                    *o = (v - m) / d * s + b;
                }
            }
            r0 += live;
        }
        for (row, orow) in x[r0 * n..].chunks_exact(n).zip(y[r0 * n..].chunks_exact_mut(n)) {
            layer_norm_row(row, scale, bias, eps, orow);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Rows whose sums lose low bits in f32 (a large offset, mixed magnitudes), so a different
    /// summation order would show; every block size and a remainder of rows.
    #[test]
    fn blocks_of_rows_equal_the_interpreters_rows_bit_for_bit() {
        for &(n, rows) in &[(1usize, 17usize), (7, 16), (16, 40), (384, 35), (64, 136), (5, 9)] {
            let mut state = 0x9e37_79b9_7f4a_7c15u64 ^ (n as u64);
            let mut next = || {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state >> 40) as f32 / (1u64 << 24) as f32 - 0.5
            };
            let x: Vec<f32> =
                (0..n * rows).map(|i| 1000.0 * (i % 3) as f32 + next() * 10f32.powi((i % 5) as i32)).collect();
            let scale: Vec<f32> = (0..n).map(|_| next() * 4.0).collect();
            let bias: Vec<f32> = (0..n).map(|_| next()).collect();
            let mut want = vec![0f32; x.len()];
            for (row, out) in x.chunks(n).zip(want.chunks_mut(n)) {
                layer_norm_row(row, &scale, &bias, 1e-5, out);
            }
            for (name, f) in [
                ("dispatched", layer_norm_rows as fn(&[f32], usize, &[f32], &[f32], f32, &mut [f32], &mut Vec<f32>)),
                ("baseline", layer_norm_rows_baseline),
            ] {
                let mut got = vec![f32::NAN; x.len()];
                f(&x, n, &scale, &bias, 1e-5, &mut got, &mut Vec::new());
                let same = got.iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits());
                assert!(same, "{name}: n={n} rows={rows} differs from layer_norm_row");
            }
        }
    }
}
