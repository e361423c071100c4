//! The int8 microkernels against naive references: every variant (AVX-512 VNNI, AVX2, scalar)
//! over many shapes and extreme values, im2col geometries and depthwise convolutions.

use qforge_codegen::micro::int8::*;
use qforge_codegen::micro::ConvGeom;

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
    fn u8(&mut self) -> u8 {
        (self.next() >> 24) as u8
    }
    fn i8(&mut self) -> i8 {
        (self.next() >> 24) as u8 as i8
    }
}

fn variants() -> Vec<(GemmU8I8, &'static str)> {
    let mut v: Vec<(GemmU8I8, &'static str)> = vec![(gemm_u8i8_scalar, "scalar")];
    if is_x86_feature_detected!("avx2") {
        v.push((gemm_u8i8_avx2, "avx2"));
    }
    if is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("avx512bw")
        && is_x86_feature_detected!("avx512vl")
        && is_x86_feature_detected!("avx512vnni")
    {
        v.push((gemm_u8i8_avx512vnni, "avx512vnni"));
    }
    v
}

/// Full GEMM through every panel; checks results, the untouched guard area and padded columns.
fn check_gemm(m: usize, k: usize, n: usize, mode: u32, rng: &mut Rng) {
    let w: Vec<i8> = (0..n * k)
        .map(|_| match mode {
            1 => -128,
            2 => 127,
            _ => rng.i8(),
        })
        .collect();
    let packed = pack_weights_i8(&w, n, k).unwrap();
    assert_eq!(packed.kp % 4, 0);
    for j in 0..n {
        let s: i32 = (0..k).map(|t| w[j * k + t] as i32).sum();
        assert_eq!(packed.col_sums[j], s);
    }
    let kp = packed.kp;
    let lda = kp + 3; // odd stride, junk bytes in k..kp
    let a: Vec<u8> = (0..m * lda + 1).map(|_| if mode != 0 { 255 } else { rng.u8() }).collect();
    let mut want = vec![0i32; m * n];
    for r in 0..m {
        for j in 0..n {
            let mut s = 0i64;
            for t in 0..k {
                s += a[r * lda + t] as i64 * w[j * k + t] as i64;
            }
            want[r * n + j] = s as i32;
        }
    }
    for (f, name) in variants() {
        for p in 0..n.div_ceil(64) {
            let nr = (n - 64 * p).min(64);
            let width = panel_width(n, p);
            assert_eq!(width, nr.div_ceil(16) * 16);
            let ldc = width + 5;
            let guard = 0x5a5a5a5a;
            let mut c = vec![guard; m * ldc + 8];
            // SAFETY: `a` has `m` rows of `lda >= kp` bytes, panel `p` starts at `panel_offset(p, kp)` inside
            // `packed.data` with `width * kp` bytes, `c` has `m` rows of `ldc = width + 5 >= round_up_16(nr)`
            // i32; `variants()` lists only kernels this CPU supports.
            unsafe {
                f(a.as_ptr(), lda, m, packed.data.as_ptr().add(panel_offset(p, kp)), kp, c.as_mut_ptr(), ldc, nr)
            };
            for r in 0..m {
                for j in 0..ldc {
                    let got = c[r * ldc + j];
                    if j < nr {
                        assert_eq!(got, want[r * n + 64 * p + j], "{name} m={m} k={k} n={n} r={r} j={j}");
                    } else if j < width {
                        assert!(got == 0 || got == guard, "{name} pad col");
                    } else {
                        assert_eq!(got, guard, "{name} wrote beyond width m={m} k={k} n={n}");
                    }
                }
            }
            assert!(c[m * ldc..].iter().all(|&v| v == guard), "{name} overrun");
        }
    }
}

#[test]
fn gemm_random_shapes() {
    let mut rng = Rng(0x9e3779b97f4a7c15);
    for &k in &[1usize, 3, 4, 27, 147, 576] {
        for &n in &[1usize, 5, 8, 16, 17, 24, 32, 40, 48, 56, 63, 64, 65, 100, 130] {
            for m in 1..=20 {
                check_gemm(m, k, n, 0, &mut rng);
            }
        }
    }
}

#[test]
fn gemm_big_k_and_tall() {
    let mut rng = Rng(12345);
    for &n in &[1usize, 16, 24, 48, 64] {
        for &m in &[1usize, 7, 13, 49, 50] {
            check_gemm(m, 4608, n, 0, &mut rng);
        }
    }
    for &n in &[16usize, 32, 48, 64, 160] {
        check_gemm(101, 148, n, 0, &mut rng);
    }
}

#[test]
fn gemm_extremes() {
    let mut rng = Rng(7);
    for &mode in &[1u32, 2] {
        for &k in &[1usize, 4, 27, 576, 4608] {
            for &n in &[5usize, 16, 33, 64] {
                for &m in &[1usize, 6, 17] {
                    check_gemm(m, k, n, mode, &mut rng);
                }
            }
        }
    }
}

#[test]
fn dispatch_names() {
    let (_, g) = gemm_u8i8_best();
    let (_, d) = depthwise_u8i8_best();
    assert!(["avx512vnni", "avx2", "scalar"].contains(&g));
    assert!(["avx512", "avx2", "scalar"].contains(&d));
}

#[test]
fn packing_layout() {
    let (n, k) = (70usize, 5usize);
    let w: Vec<i8> = (0..n * k).map(|i| (i % 251) as u8 as i8).collect();
    let p = pack_weights_i8(&w, n, k).unwrap();
    assert_eq!(p.kp, 8);
    assert_eq!(panel_width(n, 0), 64);
    assert_eq!(panel_width(n, 1), 16);
    assert_eq!(panel_width(n, 2), 0);
    assert_eq!(p.data.len(), 64 * 8 + 16 * 8);
    for pp in 0..2 {
        let width = panel_width(n, pp);
        for g in 0..2 {
            for j in 0..width {
                for t in 0..4 {
                    let col = 64 * pp + j;
                    let kk = 4 * g + t;
                    let want = if col < n && kk < k { w[col * k + kk] } else { 0 };
                    assert_eq!(p.data[panel_offset(pp, 8) + (g * width + j) * 4 + t], want);
                }
            }
        }
    }
}

#[test]
fn row_sums() {
    let mut rng = Rng(99);
    for &k in &[0usize, 1, 3, 63, 64, 65, 147, 576, 4608] {
        let m = 9;
        let lda = k + 7;
        let a: Vec<u8> = (0..m * lda).map(|_| rng.u8()).collect();
        for f in [row_sums_u8 as unsafe extern "C" fn(*const u8, usize, usize, usize, *mut i32), row_sums_u8_scalar] {
            let mut out = vec![0x11; m + 1];
            // SAFETY: `a` has `m` rows of `lda >= k` bytes and `out` has `m + 1` i32; the dispatching
            // `row_sums_u8` checks the CPU itself.
            unsafe { f(a.as_ptr(), lda, m, k, out.as_mut_ptr()) };
            for r in 0..m {
                let s: i32 = a[r * lda..r * lda + k].iter().map(|&v| v as i32).sum();
                assert_eq!(out[r], s);
            }
            assert_eq!(out[m], 0x11);
        }
    }
}

fn ref_im2col(g: &ConvGeom, x: &[u8], m0: usize, rows: usize, ld: usize, pad: u8, xor: u8) -> Vec<u8> {
    let mut out = vec![0xeeu8; rows * ld];
    for r in 0..rows {
        let mi = m0 + r;
        let img = mi / (g.oh * g.ow);
        let oy = (mi % (g.oh * g.ow)) / g.ow;
        let ox = mi % g.ow;
        for ky in 0..g.kh {
            for kx in 0..g.kw {
                for ci in 0..g.cin {
                    let iy = (oy * g.sh + ky * g.dh) as isize - g.ph as isize;
                    let ix = (ox * g.sw + kx * g.dw) as isize - g.pw as isize;
                    let v = if iy < 0 || ix < 0 || iy >= g.h as isize || ix >= g.w as isize {
                        pad
                    } else {
                        x[((img * g.h + iy as usize) * g.w + ix as usize) * g.c + g.cin_offset + ci] ^ xor
                    };
                    out[r * ld + (ky * g.kw + kx) * g.cin + ci] = v;
                }
            }
        }
    }
    out
}

#[allow(clippy::too_many_arguments)]
fn geom(
    h: usize,
    w: usize,
    c: usize,
    k: usize,
    s: usize,
    p: usize,
    d: usize,
    cin: usize,
    cin_offset: usize,
) -> ConvGeom {
    let eff = d * (k - 1) + 1;
    let oh = (h + 2 * p - eff) / s + 1;
    let ow = (w + 2 * p - eff) / s + 1;
    ConvGeom { h, w, c, oh, ow, kh: k, kw: k, sh: s, sw: s, ph: p, pw: p, dh: d, dw: d, cin, cin_offset }
}

#[test]
fn im2col() {
    let mut rng = Rng(4242);
    let mut cases = vec![];
    for &(h, w) in &[(7usize, 7usize), (5, 9), (1, 1), (8, 3)] {
        for &k in &[1usize, 3, 5, 7] {
            for &s in &[1usize, 2] {
                for &p in &[0usize, 1, 3] {
                    for &d in &[1usize, 2] {
                        for &(c, cin, off) in &[
                            (3usize, 3usize, 0usize),
                            (64, 64, 0),
                            (16, 8, 8),
                            (12, 4, 4),
                            (20, 7, 2),
                            (160, 80, 80),
                            (100, 100, 0),
                        ] {
                            let eff = d * (k - 1) + 1;
                            if h + 2 * p < eff || w + 2 * p < eff {
                                continue;
                            }
                            cases.push(geom(h, w, c, k, s, p, d, cin, off));
                        }
                    }
                }
            }
        }
    }
    // the 3-channel stems: ResNet's 7x7/2 and MobileNet's 3x3/2 over a 224 x 224 image
    cases.push(geom(224, 224, 3, 7, 2, 3, 1, 3, 0));
    cases.push(geom(224, 224, 3, 3, 2, 1, 1, 3, 0));
    let mut n = 0;
    for g in cases {
        let imgs = 2;
        let x: Vec<u8> = (0..imgs * g.h * g.w * g.c).map(|_| rng.u8()).collect();
        let mtot = imgs * g.oh * g.ow;
        // a tight stride, and the one the JIT uses (room for whole-vector stores of narrow rows)
        for ld in [g.k() + 5, im2col_ld_u8(&g)] {
            for &(pad, xor) in &[(0u8, 0u8), (0x80, 0x80), (7, 0)] {
                for &(m0, rows) in &[(0usize, mtot), (mtot / 3, mtot - mtot / 3), (mtot - 1, 1)] {
                    let want = ref_im2col(&g, &x, m0, rows, ld, pad, xor);
                    for f in [
                        im2col_u8
                            as unsafe extern "C" fn(*const ConvGeom, *const u8, usize, usize, *mut u8, usize, u8, u8),
                        im2col_u8_scalar,
                    ] {
                        // 64 guard bytes after the last row
                        let mut out = vec![0xeeu8; rows * ld + 64];
                        // SAFETY: `g` is valid, `x` holds every image of `g`, `out` has `rows` rows of `ld >=
                        // g.k()` bytes; `im2col_u8` checks the CPU before using AVX-512.
                        unsafe { f(&g, x.as_ptr(), m0, rows, out.as_mut_ptr(), ld, pad, xor) };
                        // bytes `k..ld` of a row may hold other input bytes (the contract); the first `k` are
                        // the reference's, and nothing past the rows is written
                        for r in 0..rows {
                            let (got, exp) = (&out[r * ld..r * ld + g.k()], &want[r * ld..r * ld + g.k()]);
                            assert_eq!(got, exp, "{g:?} ld={ld} m0={m0} row {r} of {rows} pad={pad} xor={xor}");
                        }
                        assert!(out[rows * ld..].iter().all(|&b| b == 0xee), "{g:?} ld={ld}: wrote past the rows");
                        n += 1;
                    }
                }
            }
        }
    }
    assert!(n > 1000);
}

fn ref_dw(g: &ConvGeom, x: &[u8], zx: i32, w: &[i8], row: usize) -> Vec<i32> {
    let img = row / g.oh;
    let oy = row % g.oh;
    let mut out = vec![0i32; g.ow * g.c];
    for ox in 0..g.ow {
        for ch in 0..g.c {
            let mut s = 0i64;
            for ky in 0..g.kh {
                for kx in 0..g.kw {
                    let iy = (oy * g.sh + ky * g.dh) as isize - g.ph as isize;
                    let ix = (ox * g.sw + kx * g.dw) as isize - g.pw as isize;
                    if iy < 0 || ix < 0 || iy >= g.h as isize || ix >= g.w as isize {
                        continue;
                    }
                    let xv = x[((img * g.h + iy as usize) * g.w + ix as usize) * g.c + ch] as i64;
                    s += (xv - zx as i64) * w[ch * g.kh * g.kw + ky * g.kw + kx] as i64;
                }
            }
            out[ox * g.c + ch] = s as i32;
        }
    }
    out
}

#[test]
fn depthwise() {
    let mut rng = Rng(31337);
    let mut variants: Vec<(DepthwiseU8I8, &str)> = vec![(depthwise_u8i8_scalar, "scalar")];
    if is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("avx512bw")
        && is_x86_feature_detected!("avx512vl")
        && is_x86_feature_detected!("avx512vnni")
    {
        variants.push((depthwise_u8i8_avx512, "avx512"));
    }
    if is_x86_feature_detected!("avx2") {
        variants.push((depthwise_u8i8_blocks, "avx2"));
    }
    for &c in &[1usize, 8, 17, 32, 96, 144, 960] {
        for &(k, p) in &[(3usize, 1usize), (5, 2), (3, 0), (5, 1)] {
            for &s in &[1usize, 2] {
                for &(h, w) in &[(7usize, 7usize), (6, 9), (3, 3), (4, 21), (3, 40)] {
                    for &extreme in &[false, true] {
                        if h + 2 * p < k || w + 2 * p < k {
                            continue;
                        }
                        let g = geom(h, w, c, k, s, p, 1, 1, 0);
                        let imgs = 2;
                        let x: Vec<u8> = (0..imgs * h * w * c).map(|_| if extreme { 255 } else { rng.u8() }).collect();
                        let wt: Vec<i8> = (0..c * k * k).map(|_| if extreme { -128 } else { rng.i8() }).collect();
                        let zx = if extreme { 0 } else { (rng.next() % 256) as i32 };
                        let packed = pack_depthwise_i8(&wt, c, k, k).unwrap();
                        assert_eq!(packed.data.len(), k * k * c.div_ceil(64) * 64);
                        let ldo = c + 3;
                        for row in [0, g.oh / 2, imgs * g.oh - 1] {
                            let want = ref_dw(&g, &x, zx, &wt, row);
                            for (f, name) in &variants {
                                let mut out = vec![0x77i32; g.ow * ldo];
                                // SAFETY: `x` holds `imgs` images of `g`, `packed.data` the packed weights
                                // for `g`, `out` `ow` rows of `ldo = c + 3 >= c` i32, and `row < imgs * oh`;
                                // `variants` lists only kernels this CPU supports.
                                unsafe { f(&g, x.as_ptr(), zx, packed.data.as_ptr(), row, out.as_mut_ptr(), ldo) };
                                for ox in 0..g.ow {
                                    for ch in 0..ldo {
                                        let got = out[ox * ldo + ch];
                                        if ch < c {
                                            assert_eq!(
                                                got,
                                                want[ox * c + ch],
                                                "{name} {g:?} row={row} ox={ox} ch={ch}"
                                            );
                                        } else {
                                            assert_eq!(got, 0x77, "{name} wrote past c");
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn depthwise_odd_geometries() {
    let mut rng = Rng(777);
    let mut variants: Vec<(DepthwiseU8I8, &str)> = vec![(depthwise_u8i8_scalar, "scalar")];
    let (best, name) = depthwise_u8i8_best();
    variants.push((best, name));
    // (h, w, c, k, s, p, d): many edge pixels, > 64 taps, dilation, stride 3, big zx.
    let cases = [
        (4usize, 40usize, 20usize, 5usize, 1usize, 20usize, 10usize),
        (3, 20, 33, 9, 1, 4, 1),
        (6, 30, 48, 3, 1, 2, 2),
        (5, 25, 17, 3, 3, 1, 1),
        (5, 25, 64, 7, 2, 3, 1),
        (2, 50, 16, 1, 1, 0, 1),
    ];
    for &(h, w, c, k, s, p, d) in &cases {
        let g = geom(h, w, c, k, s, p, d, 1, 0);
        let x: Vec<u8> = (0..2 * h * w * c).map(|_| rng.u8()).collect();
        let wt: Vec<i8> = (0..c * k * k).map(|_| rng.i8()).collect();
        let packed = pack_depthwise_i8(&wt, c, k, k).unwrap();
        for &zx in &[0i32, 128, 255, -70000, 1 << 20] {
            for row in 0..2 * g.oh {
                let want = ref_dw(&g, &x, zx, &wt, row);
                for (f, name) in &variants {
                    let ldo = c + 1;
                    let mut out = vec![0x77i32; g.ow * ldo];
                    // SAFETY: as above: `row < 2 * oh` images of `x`, `out` `ow` rows of `ldo = c + 1` i32,
                    // kernels this CPU supports.
                    unsafe { f(&g, x.as_ptr(), zx, packed.data.as_ptr(), row, out.as_mut_ptr(), ldo) };
                    for ox in 0..g.ow {
                        for ch in 0..ldo {
                            let got = out[ox * ldo + ch];
                            if ch < c {
                                assert_eq!(got, want[ox * c + ch], "{name} {g:?} zx={zx} row={row} ox={ox} ch={ch}");
                            } else {
                                assert_eq!(got, 0x77);
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Byte max pooling (u8 and i8) against a naive reference: channel counts below, at and past one
/// 64-byte vector, padding, strides, dilation and windows that lie wholly in the padding (the
/// lowest value).
#[test]
fn max_pool_bytes() {
    use qforge_codegen::micro::pool::{max_pool_i8, max_pool_u8};
    let mut rng = Rng(777);
    let mut n = 0;
    for &(h, w) in &[(7usize, 7usize), (9, 5), (2, 2)] {
        for &c in &[3usize, 64, 70, 130] {
            for &(k, s, p, d) in
                &[(3usize, 2usize, 1usize, 1usize), (3, 1, 1, 1), (2, 2, 0, 1), (3, 1, 2, 2), (3, 2, 4, 1)]
            {
                let eff = d * (k - 1) + 1;
                if h + 2 * p < eff || w + 2 * p < eff {
                    continue;
                }
                let mut g = geom(h, w, c, k, s, p, d, c, 0);
                g.oh = (h + 2 * p - eff) / s + 1;
                g.ow = (w + 2 * p - eff) / s + 1;
                let imgs = 2;
                let x: Vec<u8> = (0..imgs * h * w * c).map(|_| rng.u8()).collect();
                for signed in [false, true] {
                    for row in 0..imgs * g.oh {
                        let (img, oy) = (row / g.oh, row % g.oh);
                        let mut want = vec![0u8; g.ow * c];
                        for ox in 0..g.ow {
                            for ch in 0..c {
                                let mut best: Option<u8> = None;
                                for ky in 0..k {
                                    for kx in 0..k {
                                        let iy = (oy * s + ky * d) as isize - p as isize;
                                        let ix = (ox * s + kx * d) as isize - p as isize;
                                        if iy < 0 || ix < 0 || iy >= h as isize || ix >= w as isize {
                                            continue;
                                        }
                                        let v = x[((img * h + iy as usize) * w + ix as usize) * c + ch];
                                        let key = |b: u8| if signed { b as i8 as i16 } else { b as i16 };
                                        if best.is_none_or(|b| key(v) > key(b)) {
                                            best = Some(v);
                                        }
                                    }
                                }
                                want[ox * c + ch] = best.unwrap_or(if signed { 0x80 } else { 0 });
                            }
                        }
                        let mut got = vec![0xeeu8; g.ow * c + 64];
                        // SAFETY: `g` describes `x` (two images), `got` has `ow * c` writable bytes (and 64 guard
                        // bytes); the kernels check the CPU before using AVX-512.
                        unsafe {
                            if signed {
                                max_pool_i8(&g, x.as_ptr().cast(), row, got.as_mut_ptr().cast())
                            } else {
                                max_pool_u8(&g, x.as_ptr(), row, got.as_mut_ptr())
                            }
                        };
                        assert_eq!(&got[..g.ow * c], &want[..], "{g:?} row {row} signed {signed}");
                        assert!(got[g.ow * c..].iter().all(|&b| b == 0xee), "{g:?}: wrote past the row");
                        n += 1;
                    }
                }
            }
        }
    }
    assert!(n > 200);
}

/// The row kernels of the integer product of two activations and of the broadcast quantized
/// add: each dispatched version equals its baseline compilation, and the requantizing epilogue
/// equals the epilogue's scalar definition (`spec::apply_scalar`), on random accumulators and
/// the extremes of i32.
#[test]
fn activation_product_kernels_match_their_references() {
    use qforge_codegen::spec::{apply_scalar, Lane, Step};
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let (rows, k, n) = (5, 13, 37);
    let a: Vec<i32> = (0..rows * k).map(|_| rng.u8() as i32 - 128).collect();
    let b: Vec<i32> = (0..k * n).map(|_| rng.i8() as i32 - 3).collect();
    let (mut got, mut want) = (vec![7i32; rows * n], vec![-7i32; rows * n]);
    accumulate_products(&mut got, &a, &b, rows, k, n);
    accumulate_products_baseline(&mut want, &a, &b, rows, k, n);
    assert_eq!(got, want, "accumulate_products against its baseline");
    for r in 0..rows {
        for j in 0..n {
            let s: i32 = (0..k).map(|t| a[r * k + t] * b[t * n + j]).sum();
            assert_eq!(got[r * n + j], s, "row {r} column {j}");
        }
    }
    let mut acc: Vec<i32> = (0..rows * n).map(|_| (rng.next() >> 40) as i32 - (1 << 23)).collect();
    acc[..4].copy_from_slice(&[i32::MIN, i32::MAX, 0, -1]);
    let bias: Vec<i32> = (0..n).map(|_| (rng.next() >> 48) as i32 - 30_000).collect();
    let mul: Vec<f32> = (0..n).map(|j| 1e-4 * (j as f32 + 0.5)).collect();
    for (zp, lo, hi) in [(120, 125, 250), (0, 0, 255), (-3, -128, 127)] {
        let r = Requant { bias: &bias, mul: &mul, zp, lo, hi, n };
        let (mut q, mut qb) = (vec![0u8; acc.len()], vec![1u8; acc.len()]);
        requantize_products(&acc, &mut q, &r);
        requantize_products_baseline(&acc, &mut qb, &r);
        assert_eq!(q, qb, "requantize_products against its baseline");
        let steps = [
            Step::AddChannelI32(bias.clone()),
            Step::ScaleToF32(mul.clone()),
            Step::RoundToInt { zp, lo, hi, bounded: false },
        ];
        for (t, (&v, &got)) in acc.iter().zip(&q).enumerate() {
            let Some(Lane::I(w)) = apply_scalar(&steps, v, t % n) else { panic!("an integer lane") };
            assert_eq!(got, w as u8, "accumulator {v} column {} (zp {zp})", t % n);
        }
    }
    let p = qforge_ir::numerics::QAddParams::new(0.02, 128, 0.05, 3, 0.04, 100);
    let xa: Vec<u8> = (0..300).map(|_| rng.u8()).collect();
    let xb: Vec<u8> = (0..300).map(|_| rng.u8()).collect();
    for (swap, signed, scalar) in [(false, false, false), (true, false, true), (false, true, false), (true, true, true)]
    {
        let out = if signed { qforge_ir::DType::I8 } else { qforge_ir::DType::U8 };
        let kq = QAddRun { p, swap, a_signed: signed, b_signed: !signed, out, b_scalar: scalar };
        let (mut y, mut yb) = (vec![0u8; 300], vec![1u8; 300]);
        qadd_run(&xa, &xb, &mut y, &kq);
        qadd_run_baseline(&xa, &xb, &mut yb, &kq);
        assert_eq!(y, yb, "qadd_run against its baseline (swap {swap}, signed {signed}, scalar {scalar})");
        let int = |v: u8, s: bool| if s { v as i8 as i64 } else { v as i64 };
        for t in 0..300 {
            let (x, z) = (int(xa[t], signed), int(if scalar { xb[0] } else { xb[t] }, !signed));
            let w = if swap { p.apply(z, x, out) } else { p.apply(x, z, out) };
            assert_eq!(y[t], w as u8);
        }
    }
}
