//! Measures the arithmetic peak the GEMM figures are quoted against: f32 FMA throughput
//! on AVX2 (what the AVX2 kernels' int8 `maddubs` path competes with) and int8 VNNI
//! (`vpdpbusd`) throughput on AVX512, with every thread of the pool.

use std::time::Instant;

use super::isa::Isa;
use super::pool::ThreadPool;
use crate::error::Result;

/// What [`measure_peak`] measured.
#[derive(Clone, Copy, Debug)]
pub struct Peak {
    /// Operations per second (one multiply-add counts as 2), in G/s.
    pub gops: f64,
    /// `"f32 FMA"` or `"int8 VNNI"`.
    pub kind: &'static str,
    pub threads: usize,
}

/// Iterations per work item (a few ms); items are handed out like the
/// kernels' (`threads * ITEMS_PER_THREAD` of them), so one pass takes 10-20 ms.
const ITERS: u64 = 1_000_000;
const ITEMS_PER_THREAD: usize = 4;
/// Timed passes after one untimed warm-up pass; the fastest counts. One pass read 6.6,
/// 7.1 and 8.1 TOP/s in three processes on one device instance (session 8): a pass that
/// runs while a thread is descheduled, or before the cores reach their vector clock,
/// reads low, and nothing makes a pass read high, so the best of several is the peak.
const PASSES: usize = 5;

/// The peak of `isa` on all threads of `pool`; an error when the CPU cannot run `isa`.
/// Scalar has no meaningful peak and reports the AVX2 one when available.
pub fn measure_peak(pool: &ThreadPool, isa: Isa) -> Result<Peak> {
    isa.check()?;
    let threads = pool.threads();
    let use_vnni = isa >= Isa::Avx512;
    #[cfg(target_arch = "x86_64")]
    {
        if isa >= Isa::Avx2 || Isa::Avx2.check().is_ok() {
            let items = threads * ITEMS_PER_THREAD;
            let pass = || {
                let t = Instant::now();
                pool.for_each(items, &|_, _| {
                    // SAFETY: the ISA was checked above (VNNI needs Avx512, FMA needs Avx2).
                    unsafe {
                        if use_vnni {
                            std::hint::black_box(x86::vnni_loop(ITERS));
                        } else {
                            std::hint::black_box(x86::fma_loop(ITERS));
                        }
                    }
                });
                t.elapsed().as_secs_f64()
            };
            pass();
            let secs = (0..PASSES).map(|_| pass()).fold(f64::INFINITY, f64::min);
            let per_iter = if use_vnni {
                x86::VNNI_OPS_PER_ITER
            } else {
                x86::FMA_OPS_PER_ITER
            };
            return Ok(Peak {
                gops: (ITERS * per_iter) as f64 * items as f64 / secs / 1e9,
                kind: if use_vnni { "int8 VNNI" } else { "f32 FMA" },
                threads,
            });
        }
    }
    Err(crate::error::KtError::IsaUnavailable {
        isa: "avx2",
        reason: "no SIMD peak to measure".into(),
    })
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    /// 10 independent 8-lane FMAs per iteration: 10 * 8 * 2 flops.
    pub const FMA_OPS_PER_ITER: u64 = 10 * 8 * 2;
    /// 10 independent 64-byte VNNI dot-accumulates per iteration: 10 * 64 * 2 ops.
    pub const VNNI_OPS_PER_ITER: u64 = 10 * 64 * 2;

    /// # Safety
    /// The CPU must support AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn fma_loop(iters: u64) -> f32 {
        let a = _mm256_set1_ps(0.999_999);
        let b = _mm256_set1_ps(1e-7);
        let mut acc = [_mm256_set1_ps(1.0); 10];
        for _ in 0..iters {
            for v in acc.iter_mut() {
                *v = _mm256_fmadd_ps(*v, a, b);
            }
        }
        let mut s = _mm256_setzero_ps();
        for v in acc {
            s = _mm256_add_ps(s, v);
        }
        _mm256_cvtss_f32(s)
    }

    /// # Safety
    /// The CPU must support AVX512F and AVX512-VNNI.
    #[target_feature(enable = "avx512f,avx512vnni")]
    pub unsafe fn vnni_loop(iters: u64) -> i32 {
        let a = _mm512_set1_epi8(3);
        let b = _mm512_set1_epi8(-2);
        let mut acc = [_mm512_setzero_si512(); 10];
        for _ in 0..iters {
            for v in acc.iter_mut() {
                *v = _mm512_dpbusd_epi32(*v, a, b);
            }
        }
        let mut s = _mm512_setzero_si512();
        for v in acc {
            s = _mm512_add_epi32(s, v);
        }
        _mm512_reduce_add_epi32(s)
    }
}
