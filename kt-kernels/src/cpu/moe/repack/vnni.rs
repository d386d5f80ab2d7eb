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

use half::f16;

use super::format::{RepackFormat, PANEL};
use super::kernel::Tile;
use crate::cpu::cache_hint;

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

/// Bytes each INT weight stream is prefetched ahead of the line it reads, into L2. A
/// panel's lines are one contiguous run and the panels of a tile follow each other, so
/// without a software prefetch a thread reads one sequential stream and waits on the
/// hardware prefetchers. Session 25, device, 16 threads, `kt-bench moe --format int4
/// --group 128` (the MoE layer), the variants taking turns call by call in one process,
/// two processes: V2-Lite one token 0.356 -> 0.262 ms, four tokens 1.127 -> 0.813, V3 one
/// token 2.368 -> 1.728, int8 g128 V2-Lite one token 0.597 -> 0.459 (none -> 4 KiB into
/// L2, one stream); 1, 2 and 4 KiB into L1 read 0.300 / 0.274 / 0.262 at V2-Lite's one
/// token, 8 KiB into L2 about as 4 KiB. The BF16 kernel (twice the bytes a weight, the
/// same instructions a line) read level with it (0.815 / 0.884 against 0.817 / 0.879 ms)
/// and has none.
const LEAD: usize = 4096;

/// Weight streams (panels read side by side) by tokens in a pass: one panel at a time
/// holds 3 accumulators a token, so only the decode's one and two tokens leave registers
/// for more. Four streams against one, both with the prefetch (session 25, device, in
/// one process, two processes): int4 g128 V3 one token 1.445 / 1.476 -> 1.309 / 1.339 ms,
/// V2-Lite one token 0.235 / 0.244 -> 0.217 / 0.226, two tokens (two streams where an
/// expert has both) 0.424 / 0.440 -> 0.389 / 0.400, int8 g128 V2-Lite one token 0.407 /
/// 0.475 -> 0.372 / 0.428: 7-10% faster, 33-38% against no prefetch and one stream. (On
/// the 2-core AMD dev VM, two threads, four streams read 5-7% slower than one; not chased:
/// the device is the machine this path is for.)
fn streams(tokens: usize) -> usize {
    match tokens {
        1 => 4,
        2 => 2,
        _ => 1,
    }
}

#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx512vl,f16c")]
unsafe fn gemm_int<const INT4: bool>(t: &Tile, group: usize) {
    let k = t.k;
    let groups = k / group;
    let mut asum = [[0i32; MAX_GROUPS]; TOKENS];
    for t0 in (0..t.tokens).step_by(TOKENS) {
        let nt = TOKENS.min(t.tokens - t0);
        if INT4 {
            for (j, sums) in asum.iter_mut().enumerate().take(nt) {
                // SAFETY: activation row t0 + j lies in the extents the caller guarantees.
                let row = unsafe { t.a.add((t0 + j) * t.a_stride) } as *const i8;
                for (g, sum) in sums.iter_mut().enumerate().take(groups) {
                    // SAFETY: as above: the row's k int8 values.
                    let a = unsafe { std::slice::from_raw_parts(row.add(g * group), group) };
                    *sum = a.iter().map(|&v| v as i32).sum();
                }
            }
        }
        let pass = Pass {
            t,
            group,
            t0,
            nt,
            asum: &asum,
        };
        // SAFETY (each arm): forwarded; the panels lie in the tile.
        unsafe {
            match streams(nt) {
                4 => pass.panels_in_runs::<INT4, 4>(),
                2 => pass.panels_in_runs::<INT4, 2>(),
                _ => pass.panels_in_runs::<INT4, 1>(),
            }
        }
    }
}

/// One pass of up to [`TOKENS`] tokens (`t0..t0 + nt`) over a tile's panels.
struct Pass<'a> {
    t: &'a Tile,
    group: usize,
    t0: usize,
    nt: usize,
    /// INT4: each token's activation sum per group (the first [`MAX_GROUPS`] groups).
    asum: &'a [[i32; MAX_GROUPS]; TOKENS],
}

impl Pass<'_> {
    /// Every panel of the tile, `S` at a time: the panels are cut into `S` runs of
    /// consecutive panels and each step takes the next panel of every run, so a thread
    /// reads `S` weight streams side by side (the panels past `S` whole runs one by
    /// one). Each panel's arithmetic is the same whatever `S`.
    ///
    /// # Safety
    /// As `Kernel::run`; AVX512 F/BW/VNNI.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx512vl,f16c")]
    unsafe fn panels_in_runs<const INT4: bool, const S: usize>(&self) {
        let run = self.t.panels / S;
        for i in 0..run {
            // SAFETY: panels s * run + i < panels (the caller's tile).
            unsafe { self.panels::<INT4, S>(std::array::from_fn(|s| s * run + i)) };
        }
        for p in S * run..self.t.panels {
            // SAFETY: as above.
            unsafe { self.panels::<INT4, 1>([p]) };
        }
    }

    /// Panels `ps` of the tile against the pass's tokens, into their outputs.
    ///
    /// # Safety
    /// As `Kernel::run` (panels `ps` lie in the tile); AVX512 F/BW/VNNI.
    // Tokens index several per-token arrays at once: index loops read clearer here.
    #[allow(clippy::needless_range_loop)]
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx512vl,f16c")]
    unsafe fn panels<const INT4: bool, const S: usize>(&self, ps: [usize; S]) {
        let (t, group, t0, nt) = (self.t, self.group, self.t0, self.nt);
        let k = t.k;
        let groups = k / group;
        let f = t.format;
        let (pb, psc) = (f.panel_bytes(k), f.panel_scales(k));
        let nib = _mm512_set1_epi8(0x0F);
        let w: [*const u8; S] = std::array::from_fn(|s| t.w.wrapping_add(ps[s] * pb));
        let sc: [*const f16; S] = std::array::from_fn(|s| t.scales.wrapping_add(ps[s] * psc));
        // SAFETY (whole block): activation rows t0..t0+nt, the panels' weights and
        // scales and their outputs lie in the extents the caller guarantees.
        unsafe {
            let arow = |j: usize| t.a.add((t0 + j) * t.a_stride);
            let ascale =
                |j: usize, g: usize| (arow(j).add(k + 4 * g) as *const f32).read_unaligned();
            let abc = |j: usize, k4: usize| {
                _mm512_set1_epi32((arow(j).add(4 * k4) as *const i32).read_unaligned())
            };
            let mut acc = [[_mm512_setzero_ps(); TOKENS]; S];
            for g in 0..groups {
                // Two integer accumulators per token (even/odd lines) halve the
                // dependency chain.
                let mut ia = [[[_mm512_setzero_si512(); 2]; TOKENS]; S];
                if INT4 {
                    for i in g * group / 8..(g + 1) * group / 8 {
                        let mut a = [[_mm512_setzero_si512(); 2]; TOKENS];
                        for j in 0..nt {
                            a[j] = [abc(j, 2 * i), abc(j, 2 * i + 1)];
                        }
                        for s in 0..S {
                            cache_hint::line_l2_at(w[s].wrapping_add(i * 64 + LEAD));
                            let line = _mm512_loadu_si512(w[s].add(i * 64) as *const _);
                            let lo = _mm512_and_si512(line, nib);
                            let hi = _mm512_and_si512(_mm512_srli_epi16::<4>(line), nib);
                            for j in 0..nt {
                                ia[s][j][0] = _mm512_dpbusd_epi32(ia[s][j][0], lo, a[j][0]);
                                ia[s][j][1] = _mm512_dpbusd_epi32(ia[s][j][1], hi, a[j][1]);
                            }
                        }
                    }
                } else {
                    for k4 in g * group / 4..(g + 1) * group / 4 {
                        let mut a = [_mm512_setzero_si512(); TOKENS];
                        for j in 0..nt {
                            a[j] = abc(j, k4);
                        }
                        for s in 0..S {
                            cache_hint::line_l2_at(w[s].wrapping_add(k4 * 64 + LEAD));
                            let wv = _mm512_loadu_si512(w[s].add(k4 * 64) as *const _);
                            for j in 0..nt {
                                let neg = _mm512_movepi8_mask(a[j]);
                                let ws = _mm512_mask_sub_epi8(wv, neg, _mm512_setzero_si512(), wv);
                                ia[s][j][k4 % 2] = _mm512_dpbusd_epi32(
                                    ia[s][j][k4 % 2],
                                    _mm512_abs_epi8(a[j]),
                                    ws,
                                );
                            }
                        }
                    }
                }
                for s in 0..S {
                    let wsc =
                        _mm512_cvtph_ps(_mm256_loadu_si256(sc[s].add(g * PANEL) as *const __m256i));
                    for j in 0..nt {
                        let mut iv = _mm512_add_epi32(ia[s][j][0], ia[s][j][1]);
                        if INT4 {
                            let sum = if g < MAX_GROUPS {
                                self.asum[j][g]
                            } else {
                                let a = std::slice::from_raw_parts(
                                    arow(j).add(g * group) as *const i8,
                                    group,
                                );
                                a.iter().map(|&v| v as i32).sum()
                            };
                            iv = _mm512_sub_epi32(iv, _mm512_set1_epi32(8 * sum));
                        }
                        let scale = _mm512_mul_ps(wsc, _mm512_set1_ps(ascale(j, g)));
                        acc[s][j] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(iv), scale, acc[s][j]);
                    }
                }
            }
            for s in 0..S {
                for j in 0..nt {
                    _mm512_storeu_ps(t.out.add((t0 + j) * t.ldo + ps[s] * PANEL), acc[s][j]);
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
