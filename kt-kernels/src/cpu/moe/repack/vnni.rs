//! AVX512 kernels for the repacked layouts: the decode path (few tokens) and the prefill
//! fallback where AMX is absent. Tokens are taken four at a time; each 64-byte weight
//! line is loaded once per four tokens and multiplied by each token's broadcast 4 bytes.
//!
//! `vpdpbusd` multiplies u8 by s8. INT4 weights are stored as `q + 8` (u8), so they are
//! the u8 side as they are and the s8 activations the other; the `+ 8` adds `8 * sum(a)`
//! per group, subtracted with the group's activation sums (computed once per 4 tokens).
//! INT8 weights are s8: the activation goes in as `|a|` and its sign moves to the
//! weight (masked negate; weights are never -128, activations never -128).

use std::arch::x86_64::*;

use super::format::{RepackFormat, PANEL};
use super::kernel::Tile;

/// Tokens per pass.
const TOKENS: usize = 4;
/// The most groups a row may have for the on-stack activation sums (K <= 32768 at G=128,
/// 8192 at G=32); groups beyond it sum their activations per panel instead.
const MAX_GROUPS: usize = 256;

/// # Safety
/// As `Kernel::run`; the CPU has AVX512 F/BW/VNNI (and AVX512-BF16 for BF16 tiles).
pub(crate) unsafe fn gemm(t: &Tile) {
    // SAFETY: forwarded.
    unsafe {
        match t.format {
            RepackFormat::Bf16 => gemm_bf16(t),
            RepackFormat::Int4 { group } => gemm_int::<true>(t, group),
            RepackFormat::Int8 { group } => gemm_int::<false>(t, group),
        }
    }
}

// Tokens index several per-token arrays at once: index loops read clearer here.
#[allow(clippy::needless_range_loop)]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx512vl,f16c")]
unsafe fn gemm_int<const INT4: bool>(t: &Tile, group: usize) {
    let f = t.format;
    let k = t.k;
    let groups = k / group;
    let (pb, ps) = (f.panel_bytes(k), f.panel_scales(k));
    let nib = _mm512_set1_epi8(0x0F);
    let mut asum = [[0i32; MAX_GROUPS]; TOKENS];
    for t0 in (0..t.tokens).step_by(TOKENS) {
        let nt = TOKENS.min(t.tokens - t0);
        // SAFETY (whole block): activation rows t0..t0+nt, weight panels, scales and
        // outputs lie in the extents the caller guarantees.
        unsafe {
            let arow = |j: usize| t.a.add((t0 + j) * t.a_stride);
            let ascale =
                |j: usize, g: usize| (arow(j).add(k + 4 * g) as *const f32).read_unaligned();
            let abc = |j: usize, k4: usize| {
                _mm512_set1_epi32((arow(j).add(4 * k4) as *const i32).read_unaligned())
            };
            if INT4 {
                for j in 0..nt {
                    for g in 0..groups.min(MAX_GROUPS) {
                        let a =
                            std::slice::from_raw_parts(arow(j).add(g * group) as *const i8, group);
                        asum[j][g] = a.iter().map(|&v| v as i32).sum();
                    }
                }
            }
            for p in 0..t.panels {
                let w = t.w.add(p * pb);
                let sc = t.scales.add(p * ps);
                let mut acc = [_mm512_setzero_ps(); TOKENS];
                for g in 0..groups {
                    // Two integer accumulators per token (even/odd lines) halve the
                    // dependency chain.
                    let mut ia = [[_mm512_setzero_si512(); 2]; TOKENS];
                    if INT4 {
                        for i in g * group / 8..(g + 1) * group / 8 {
                            let line = _mm512_loadu_si512(w.add(i * 64) as *const _);
                            let lo = _mm512_and_si512(line, nib);
                            let hi = _mm512_and_si512(_mm512_srli_epi16::<4>(line), nib);
                            for j in 0..nt {
                                ia[j][0] = _mm512_dpbusd_epi32(ia[j][0], lo, abc(j, 2 * i));
                                ia[j][1] = _mm512_dpbusd_epi32(ia[j][1], hi, abc(j, 2 * i + 1));
                            }
                        }
                    } else {
                        for k4 in g * group / 4..(g + 1) * group / 4 {
                            let wv = _mm512_loadu_si512(w.add(k4 * 64) as *const _);
                            for j in 0..nt {
                                let a = abc(j, k4);
                                let neg = _mm512_movepi8_mask(a);
                                let ws = _mm512_mask_sub_epi8(wv, neg, _mm512_setzero_si512(), wv);
                                ia[j][k4 % 2] =
                                    _mm512_dpbusd_epi32(ia[j][k4 % 2], _mm512_abs_epi8(a), ws);
                            }
                        }
                    }
                    let wsc =
                        _mm512_cvtph_ps(_mm256_loadu_si256(sc.add(g * PANEL) as *const __m256i));
                    for j in 0..nt {
                        let mut iv = _mm512_add_epi32(ia[j][0], ia[j][1]);
                        if INT4 {
                            let s = if g < MAX_GROUPS {
                                asum[j][g]
                            } else {
                                let a = std::slice::from_raw_parts(
                                    arow(j).add(g * group) as *const i8,
                                    group,
                                );
                                a.iter().map(|&v| v as i32).sum()
                            };
                            iv = _mm512_sub_epi32(iv, _mm512_set1_epi32(8 * s));
                        }
                        let scale = _mm512_mul_ps(wsc, _mm512_set1_ps(ascale(j, g)));
                        acc[j] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(iv), scale, acc[j]);
                    }
                }
                for (j, a) in acc.iter().enumerate().take(nt) {
                    _mm512_storeu_ps(t.out.add((t0 + j) * t.ldo + p * PANEL), *a);
                }
            }
        }
    }
}

#[allow(clippy::needless_range_loop)]
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
unsafe fn gemm_bf16(t: &Tile) {
    let pb = t.format.panel_bytes(t.k);
    for t0 in (0..t.tokens).step_by(TOKENS) {
        let nt = TOKENS.min(t.tokens - t0);
        // SAFETY (whole block): as in gemm_int.
        unsafe {
            let arow = |j: usize| t.a.add((t0 + j) * t.a_stride);
            for p in 0..t.panels {
                let w = t.w.add(p * pb);
                let mut acc = [[_mm512_setzero_ps(); 2]; TOKENS];
                for k2 in 0..t.k / 2 {
                    let wv: __m512bh =
                        std::mem::transmute(_mm512_loadu_si512(w.add(k2 * 64) as *const _));
                    for j in 0..nt {
                        let a: __m512bh = std::mem::transmute(_mm512_set1_epi32(
                            (arow(j).add(4 * k2) as *const i32).read_unaligned(),
                        ));
                        acc[j][k2 % 2] = _mm512_dpbf16_ps(acc[j][k2 % 2], wv, a);
                    }
                }
                for (j, a) in acc.iter().enumerate().take(nt) {
                    _mm512_storeu_ps(
                        t.out.add((t0 + j) * t.ldo + p * PANEL),
                        _mm512_add_ps(a[0], a[1]),
                    );
                }
            }
        }
    }
}
