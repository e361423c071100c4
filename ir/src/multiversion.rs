//! `multiversion!`: a function compiled three times, for AVX-512, for AVX2 + FMA and for the
//! baseline target, the best version the CPU has chosen when it is called.
//!
//! The crates are built for the baseline x86-64 target (SSE2), where the compiler's vectorized
//! loops are 128 bits wide. Loops that run over whole tensors outside the JIT's generated code
//! (the calibration observers' range and bias correction's per-channel sums in the passes, the
//! JIT's exp and sigmoid rows) dispatch at run time as the JIT's microkernels do. The body is
//! plain Rust, written so the compiler vectorizes it (independent lanes, no reassociated float
//! sums): the versions compute the same values bit for bit, only with wider vectors.
//!
//! Invariants: the body never uses an intrinsic; a version runs only where
//! `is_x86_feature_detected!` found its features.

/// Defines `fn NAME(ARGS) -> RET { BODY }` as three compilations of `BODY` (AVX-512F/BW/DQ/VL,
/// AVX2 + FMA, baseline) and a run-time choice among them; `BASELINE`, named in the leading
/// `baseline = BASELINE;`, is the baseline compilation on its own, for the tests that check the
/// versions agree bit for bit.
#[macro_export]
macro_rules! multiversion {
    (
        baseline = $base:ident;
        $(#[$meta:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) -> $ret:ty $body:block
    ) => {
        /// The baseline compilation of the function of the same name without `_baseline`.
        #[inline(always)]
        #[cfg_attr(not(test), allow(dead_code))]
        $vis fn $base($($arg: $ty),*) -> $ret $body

        $(#[$meta])*
        $vis fn $name($($arg: $ty),*) -> $ret {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl")]
                fn avx512($($arg: $ty),*) -> $ret {
                    $base($($arg),*)
                }
                #[target_feature(enable = "avx2,fma")]
                fn avx2($($arg: $ty),*) -> $ret {
                    $base($($arg),*)
                }
                if std::is_x86_feature_detected!("avx512f")
                    && std::is_x86_feature_detected!("avx512bw")
                    && std::is_x86_feature_detected!("avx512dq")
                    && std::is_x86_feature_detected!("avx512vl")
                {
                    // SAFETY: the CPU has the features `avx512` is compiled for
                    return unsafe { avx512($($arg),*) };
                }
                if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
                    // SAFETY: the CPU has the features `avx2` is compiled for
                    return unsafe { avx2($($arg),*) };
                }
            }
            $base($($arg),*)
        }
    };
}
