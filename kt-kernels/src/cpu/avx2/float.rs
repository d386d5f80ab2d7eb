//! F32, F16 and BF16 weights on AVX2 (activations in the same format): both sides are
//! widened to f32 (exactly: F16C for f16, a 16-bit shift for bf16) and multiplied with
//! FMA into one 8-lane f32 accumulator per (row, token) pair, summed at the end. Each
//! row's 8 widened weights are reused by the RN tokens, each token's by the RM rows.
//! `k` need not be a multiple of 8: the last partial group is zero-padded. A GEMV
//! prefetches a later register tile's rows line by line, as the quantized kernels do.

use std::arch::x86_64::*;
use std::marker::PhantomData;

use super::tile::{hsum8_ps, prefetch_rows_ahead, store_pairs, Microkernel, MAX_PAIRS};
use crate::cpu::dispatch::GemmTile;
use crate::cpu::matmul::GEMV_MAX_TOKENS;

/// A float element format.
pub(super) trait Float {
    const BYTES: usize;

    /// 8 consecutive elements at `p`, widened to f32.
    ///
    /// # Safety
    /// `p .. p + 8 * BYTES` is readable; the CPU has AVX2 and F16C.
    unsafe fn load8(p: *const u8) -> __m256;
}

pub(super) struct F32;
pub(super) struct F16;
pub(super) struct Bf16;

impl Float for F32 {
    const BYTES: usize = 4;

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn load8(p: *const u8) -> __m256 {
        // SAFETY: the caller's contract; loadu has no alignment requirement.
        unsafe { _mm256_loadu_ps(p as *const f32) }
    }
}

impl Float for F16 {
    const BYTES: usize = 2;

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn load8(p: *const u8) -> __m256 {
        // SAFETY: the caller's contract.
        _mm256_cvtph_ps(unsafe { _mm_loadu_si128(p as *const __m128i) })
    }
}

impl Float for Bf16 {
    const BYTES: usize = 2;

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn load8(p: *const u8) -> __m256 {
        // A bf16 is the high half of an f32.
        // SAFETY: the caller's contract.
        let h = unsafe { _mm_loadu_si128(p as *const __m128i) };
        _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(h)))
    }
}

/// The [`Microkernel`] of a float format.
pub(super) struct FloatKernel<F>(PhantomData<F>);

/// The last `n < 8` elements at `p` followed by zeros.
///
/// # Safety
/// `p .. p + n * F::BYTES` is readable; the CPU has AVX2 and F16C.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn load_partial<F: Float>(p: *const u8, n: usize) -> __m256 {
    let mut buf = [0u8; 32];
    // SAFETY: n * BYTES <= 7 * 4 < 32 bytes are readable at p (the caller's contract)
    // and writable in buf; buf then holds 8 whole elements.
    unsafe {
        std::ptr::copy_nonoverlapping(p, buf.as_mut_ptr(), n * F::BYTES);
        F::load8(buf.as_ptr())
    }
}

/// One group of 8 elements: `load(row or token base)` gives its f32 values.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn step<L: Fn(*const u8) -> __m256, const RM: usize, const RN: usize>(
    acc: &mut [[__m256; RN]; RM],
    w: &[*const u8; RM],
    a: &[*const u8; RN],
    load: L,
) {
    let x: [__m256; RN] = std::array::from_fn(|t| load(a[t]));
    for r in 0..RM {
        let wv = load(w[r]);
        for t in 0..RN {
            acc[r][t] = _mm256_fmadd_ps(wv, x[t], acc[r][t]);
        }
    }
}

impl<F: Float> Microkernel for FloatKernel<F> {
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn tile<const RM: usize, const RN: usize>(
        tile: &GemmTile,
        r0: usize,
        t0: usize,
        lead: usize,
    ) {
        debug_assert!(RM * RN <= MAX_PAIRS);
        // SAFETY: rows r0..r0+RM and tokens t0..t0+RN are inside the tile (the
        // caller's contract); each row holds k elements.
        let w: [*const u8; RM] =
            std::array::from_fn(|r| unsafe { tile.w.add((r0 + r) * tile.w_stride) });
        // SAFETY: as above.
        let a: [*const u8; RN] =
            std::array::from_fn(|t| unsafe { tile.a.add((t0 + t) * tile.a_stride) });
        let mut acc = [[_mm256_setzero_ps(); RN]; RM];
        let full = tile.k / 8;
        let gemv = tile.tokens <= GEMV_MAX_TOKENS;
        // Groups of 8 elements per 64-byte line of a row.
        let per_line = 64 / (8 * F::BYTES);
        for i in 0..full {
            let off = 8 * i * F::BYTES;
            if gemv && i.is_multiple_of(per_line) {
                // A later register tile's rows, one line each (see prefetch_rows_ahead).
                prefetch_rows_ahead::<RM>(w[0].wrapping_add(off), tile.w_stride, lead, 1);
            }
            // SAFETY: elements 8i..8i+8 < k of each row.
            step(&mut acc, &w, &a, |p: *const u8| unsafe {
                F::load8(p.add(off))
            });
        }
        let rest = tile.k % 8;
        if rest > 0 {
            let off = 8 * full * F::BYTES;
            // SAFETY: elements 8 * full .. k of each row.
            step(&mut acc, &w, &a, |p: *const u8| unsafe {
                load_partial::<F>(p.add(off), rest)
            });
        }
        let mut pairs = [_mm256_setzero_ps(); MAX_PAIRS];
        for r in 0..RM {
            for t in 0..RN {
                pairs[r * RN + t] = acc[r][t];
            }
        }
        // SAFETY: the caller's contract covers these output elements.
        unsafe { store_pairs::<RM, RN>(hsum8_ps(&pairs), tile, r0, t0) };
    }
}
