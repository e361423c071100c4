//! Rows to lanes: up to [`LANES`] rows of `n` floats copied into a column-major block, so that
//! lane `l` of every [`LANES`]-float vector holds row `l`. The row kernels that must add each
//! row's values in order (layer norm's statistics, softmax's sums: the numerics contract's
//! in-order f32 accumulation) add many rows side by side from such a block, each lane still in
//! its own row's order.
//!
//! Written one float at a time, the block is `n * LANES` scattered stores, each to a different
//! cache line for a row of 16 or more; with AVX-512 the copy runs as 16 by 16 tiles transposed in
//! registers (the unpack / shuffle network of Intel's optimization manual, 64 shuffles a tile)
//! and stored as whole vectors. A pure copy: the values are the same either way.
//!
//! Invariants: reads only `x[..rows * n]`, writes only `out[..n * LANES]`; never allocates.

/// Rows per block: one AVX-512 vector of f32.
pub const LANES: usize = 16;

/// `out[k * LANES + l] = x[l * n + k]` for the `rows = x.len() / n` (at most [`LANES`]) rows of
/// `x`, and `0.0` in the lanes `rows..LANES`.
///
/// # Panics
/// If `x` holds more than [`LANES`] rows or `out` is shorter than `n * LANES` (a caller's bug,
/// not input data).
pub fn rows_to_lanes(x: &[f32], n: usize, out: &mut [f32]) {
    if n == 0 {
        return;
    }
    let rows = x.len() / n;
    assert!(rows <= LANES && out.len() >= n * LANES, "rows_to_lanes: {rows} rows of {n} into {}", out.len());
    let mut k0 = 0;
    #[cfg(target_arch = "x86_64")]
    if n >= LANES && std::arch::is_x86_feature_detected!("avx512f") {
        // SAFETY: the CPU has AVX-512F; the bounds are checked above.
        k0 = unsafe { x86::tiles(x, n, rows, out) };
    }
    for k in k0..n {
        let col = &mut out[k * LANES..(k + 1) * LANES];
        for (l, o) in col.iter_mut().enumerate() {
            *o = if l < rows { x[l * n + k] } else { 0.0 };
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::LANES;
    use std::arch::x86_64::*;

    /// The 16 by 16 tile `r` (row `i` in `r[i]`) transposed: column `c` in the result's `c`.
    #[target_feature(enable = "avx512f")]
    #[inline]
    fn transpose16(r: &[__m512; 16]) -> [__m512; 16] {
        // (plain loops, not `array::from_fn`: a closure would not inherit the target feature)
        // stage 1: rows (2g, 2g+1) interleaved within each 128-bit lane
        let mut t = [_mm512_setzero_ps(); 16];
        for g in 0..8 {
            t[2 * g] = _mm512_unpacklo_ps(r[2 * g], r[2 * g + 1]);
            t[2 * g + 1] = _mm512_unpackhi_ps(r[2 * g], r[2 * g + 1]);
        }
        // stage 2: u[4g + c]'s 128-bit lane L is column 4L + c of rows 4g..4g+3
        let mut u = [_mm512_setzero_ps(); 16];
        for g in 0..4 {
            for h in 0..2 {
                let a = _mm512_castps_pd(t[4 * g + h]);
                let b = _mm512_castps_pd(t[4 * g + 2 + h]);
                u[4 * g + 2 * h] = _mm512_castpd_ps(_mm512_unpacklo_pd(a, b));
                u[4 * g + 2 * h + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a, b));
            }
        }
        // stages 3 and 4: 128-bit lanes gathered across the four row groups
        let mut col = [_mm512_setzero_ps(); 16];
        for c in 0..4 {
            let a88 = _mm512_shuffle_f32x4::<0x88>(u[c], u[4 + c]);
            let add = _mm512_shuffle_f32x4::<0xdd>(u[c], u[4 + c]);
            let b88 = _mm512_shuffle_f32x4::<0x88>(u[8 + c], u[12 + c]);
            let bdd = _mm512_shuffle_f32x4::<0xdd>(u[8 + c], u[12 + c]);
            col[c] = _mm512_shuffle_f32x4::<0x88>(a88, b88);
            col[8 + c] = _mm512_shuffle_f32x4::<0xdd>(a88, b88);
            col[4 + c] = _mm512_shuffle_f32x4::<0x88>(add, bdd);
            col[12 + c] = _mm512_shuffle_f32x4::<0xdd>(add, bdd);
        }
        col
    }

    /// [`super::rows_to_lanes`] for the columns `0..n / 16 * 16`, a tile at a time; returns how
    /// many columns it did.
    ///
    /// # Safety
    /// The CPU has AVX-512F; `x` holds `rows <= 16` rows of `n` and `out` at least `n * 16` floats.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn tiles(x: &[f32], n: usize, rows: usize, out: &mut [f32]) -> usize {
        let full = n / LANES * LANES;
        let mut k = 0;
        while k < full {
            // SAFETY: row `i < rows` has its columns `k..k + 16` inside `x` (`k + 16 <= n`);
            // the stores are `out[(k + c) * 16..][..16]`, inside `n * 16`.
            unsafe {
                let mut r = [_mm512_setzero_ps(); 16];
                for (i, v) in r.iter_mut().enumerate().take(rows) {
                    *v = _mm512_loadu_ps(x.as_ptr().add(i * n + k));
                }
                let col = transpose16(&r);
                for (c, v) in col.iter().enumerate() {
                    _mm512_storeu_ps(out.as_mut_ptr().add((k + c) * LANES), *v);
                }
            }
            k += LANES;
        }
        full
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lanes_hold_the_rows_and_zeros_past_them() {
        for &(rows, n) in &[(16usize, 16usize), (16, 384), (5, 32), (1, 17), (16, 7), (13, 50), (0, 3)] {
            let x: Vec<f32> = (0..rows * n).map(|i| i as f32 * 0.5 - 7.0).collect();
            let mut out = vec![f32::NAN; n * LANES];
            rows_to_lanes(&x, n, &mut out);
            for k in 0..n {
                for l in 0..LANES {
                    let want = if l < rows { x[l * n + k] } else { 0.0 };
                    assert_eq!(out[k * LANES + l].to_bits(), want.to_bits(), "rows={rows} n={n} k={k} l={l}");
                }
            }
        }
    }
}
