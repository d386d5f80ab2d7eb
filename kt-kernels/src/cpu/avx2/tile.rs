//! The register-tile driver shared by every AVX2 format (the llamafile tinyBLAS idea): a
//! format writes one microkernel generic over const RM rows x RN tokens, and [`gemm`]
//! covers a [`GemmTile`] with the largest register tile that fits what remains, then
//! smaller ones at the edges.
//!
//! Register budget: AVX2 has 16 ymm registers. A microkernel keeps RM x RN accumulators
//! live plus the unpacked weights of one row and the activations of RN tokens, so the
//! shapes used hold at most 8 (row, token) pairs: 8x1, 4x2, 2x3, 2x4 and their halves.
//!
//! Loop order: for a GEMV tile (few tokens) rows are the outer loop in chunks of 8, so a
//! chunk's weights are read from memory once and stay in L1 while every token group
//! passes over them. For a GEMM tile token groups are the outer loop: the RN activation
//! rows stay in L1 while the tile's weight rows (sized by the driver for L2) stream past.

use std::arch::x86_64::*;

use crate::cpu::dispatch::GemmTile;
use crate::cpu::matmul::GEMV_MAX_TOKENS;
use crate::cpu::scalar::ggml_order::hsum_float_8;

/// Most tokens of one register tile.
pub(super) const MAX_RN: usize = 4;
/// Most (row, token) pairs of one register tile: the pair sums of one super-block are
/// reduced into the 8 lanes of one ymm.
pub(super) const MAX_PAIRS: usize = 8;

/// A format's microkernel: computes `out[(t0 + t) * ldo + r0 + r]` for `r < RM`,
/// `t < RN` over the whole `k` of the tile.
pub(super) trait Microkernel {
    /// The kernel has `1 x RN` register tiles for `RN` up to [`MAX_PAIRS`] tokens (its
    /// activations are loaded where they are used, not held in registers). A GEMV of 5 to
    /// 8 tokens (a MoE expert's share of a 64-token batch) then unpacks each weight block
    /// once for all of its tokens instead of once per group of [`MAX_RN`].
    const WIDE_TOKEN_TILE: bool = false;

    /// Rows of the one-token register tile (1 x RN tiles with RN = 1): 8, or 4 or 2 where
    /// the format's 8-row tile holds more than the 16 ymm registers and spills (the tile's
    /// shape does not change any row's sums or their order).
    const GEMV_ROWS: usize = 8;

    /// The `RM x RN` register tile at row `r0`, token `t0`. A GEMV tile prefetches, for each
    /// of its rows, the block `lead` bytes after it ([`prefetch_rows_ahead`]).
    ///
    /// # Safety
    /// `r0 + RM <= tile.rows`, `t0 + RN <= tile.tokens`, the tile's pointers are valid
    /// as [`GemmTile`] documents, and the CPU has AVX2, FMA and F16C.
    unsafe fn tile<const RM: usize, const RN: usize>(
        tile: &GemmTile,
        r0: usize,
        t0: usize,
        lead: usize,
    );

    /// A one-token tile's rows the format covers by itself, before the register tiles take
    /// the rest: rows `0..n` for the returned `n` (a format that prepares per-call work from
    /// the activations, shared by every row). The default covers none.
    ///
    /// # Safety
    /// As [`gemm`], with `tile.tokens == 1`.
    #[inline]
    unsafe fn gemv_rows(_tile: &GemmTile) -> usize {
        0
    }
}

/// The largest row count used with `rn` tokens: the largest power of two with at most
/// [`MAX_PAIRS`] pairs (powers of two, so the edge rows are covered by halving).
fn max_rm(rn: usize) -> usize {
    match rn {
        1 => 8,
        2 => 4,
        _ => 2,
    }
}

/// The [`GemmFn`](crate::cpu::dispatch::GemmFn) of a format: covers the tile with
/// register tiles of `M`.
///
/// # Safety
/// As [`GemmFn`](crate::cpu::dispatch::GemmFn); the CPU has AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn gemm<M: Microkernel>(tile: &GemmTile) {
    let chunk = if tile.tokens <= GEMV_MAX_TOKENS {
        max_rm(1)
    } else {
        tile.rows
    };
    let mut r0 = if tile.tokens == 1 {
        // SAFETY: the caller's contract, with one token; the stream tiles are register
        // tiles of GEMV_ROWS rows and one token, as `gemv_streams` requires.
        unsafe {
            let r = M::gemv_rows(tile);
            let rm = M::GEMV_ROWS;
            r + gemv_streams(tile, r, rm, |sub, lead| run::<M>(rm, 1, sub, 0, 0, lead))
        }
    } else {
        0
    };
    while r0 < tile.rows {
        let chunk_end = (r0 + chunk).min(tile.rows);
        let wide = M::WIDE_TOKEN_TILE
            && tile.tokens > MAX_RN
            && tile.tokens <= MAX_PAIRS.min(GEMV_MAX_TOKENS);
        let mut t0 = 0;
        while t0 < tile.tokens {
            let (rn, rm_max) = if wide {
                (tile.tokens, 1)
            } else {
                let rn = (tile.tokens - t0).min(MAX_RN);
                (rn, if rn == 1 { M::GEMV_ROWS } else { max_rm(rn) })
            };
            let mut r = r0;
            while r < chunk_end {
                let left = chunk_end - r;
                let rm = if left >= rm_max {
                    rm_max
                } else {
                    1 << left.ilog2()
                };
                // SAFETY: r + rm <= chunk_end <= tile.rows and t0 + rn <= tile.tokens;
                // the rest is the caller's contract.
                unsafe { run::<M>(rm, rn, tile, r, t0, adjacent_lead(rm, tile.w_stride)) };
                r += rm;
            }
            t0 += rn;
        }
        r0 = chunk_end;
    }
}

/// Calls the monomorphised microkernel of an `rm` x `rn` register tile.
///
/// # Safety
/// As [`Microkernel::tile`] with `RM = rm`, `RN = rn`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn run<M: Microkernel>(
    rm: usize,
    rn: usize,
    tile: &GemmTile,
    r0: usize,
    t0: usize,
    lead: usize,
) {
    // SAFETY (every arm): forwarded contract of this function.
    unsafe {
        match (rm, rn) {
            (8, 1) => M::tile::<8, 1>(tile, r0, t0, lead),
            (4, 1) => M::tile::<4, 1>(tile, r0, t0, lead),
            (2, 1) => M::tile::<2, 1>(tile, r0, t0, lead),
            (1, 1) => M::tile::<1, 1>(tile, r0, t0, lead),
            (4, 2) => M::tile::<4, 2>(tile, r0, t0, lead),
            (2, 2) => M::tile::<2, 2>(tile, r0, t0, lead),
            (1, 2) => M::tile::<1, 2>(tile, r0, t0, lead),
            (2, 3) => M::tile::<2, 3>(tile, r0, t0, lead),
            (1, 3) => M::tile::<1, 3>(tile, r0, t0, lead),
            (2, 4) => M::tile::<2, 4>(tile, r0, t0, lead),
            (1, 4) => M::tile::<1, 4>(tile, r0, t0, lead),
            (1, 5) => M::tile::<1, 5>(tile, r0, t0, lead),
            (1, 6) => M::tile::<1, 6>(tile, r0, t0, lead),
            (1, 7) => M::tile::<1, 7>(tile, r0, t0, lead),
            (1, 8) => M::tile::<1, 8>(tile, r0, t0, lead),
            _ => unreachable!("register tile {rm}x{rn} is not in the shape menu"),
        }
    }
}

/// Sums the lanes of each of up to 8 vectors: lane `q` of the result is the sum of the
/// 8 i32 lanes of `v[q]` (missing vectors count as zero).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) fn hsum8_epi32<const N: usize>(v: &[__m256i; N]) -> __m256i {
    let z = _mm256_setzero_si256();
    let g = |q: usize| if q < N { v[q] } else { z };
    // Transpose-and-add in three steps: pairs of 32-bit lanes, pairs of 64-bit lanes,
    // then the two 128-bit halves.
    let pair32 = |a: __m256i, b: __m256i| {
        _mm256_add_epi32(_mm256_unpacklo_epi32(a, b), _mm256_unpackhi_epi32(a, b))
    };
    let s01 = pair32(g(0), g(1)); // per 128 lane: [0a 1a 0b 1b]
    let s23 = pair32(g(2), g(3));
    let s45 = pair32(g(4), g(5));
    let s67 = pair32(g(6), g(7));
    let pair64 = |a: __m256i, b: __m256i| {
        _mm256_add_epi32(_mm256_unpacklo_epi64(a, b), _mm256_unpackhi_epi64(a, b))
    };
    let s0123 = pair64(s01, s23); // per 128 lane: [0 1 2 3]
    let s4567 = pair64(s45, s67);
    _mm256_add_epi32(
        _mm256_permute2x128_si256::<0x20>(s0123, s4567),
        _mm256_permute2x128_si256::<0x31>(s0123, s4567),
    )
}

/// [`hsum8_epi32`] for f32: lane `q` of the result is the sum of the 8 lanes of `v[q]`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn hsum8_ps<const N: usize>(v: &[__m256; N]) -> __m256 {
    let z = _mm256_setzero_ps();
    let g = |q: usize| if q < N { v[q] } else { z };
    let pair32 =
        |a: __m256, b: __m256| _mm256_add_ps(_mm256_unpacklo_ps(a, b), _mm256_unpackhi_ps(a, b));
    let (s01, s23, s45, s67) = (
        pair32(g(0), g(1)),
        pair32(g(2), g(3)),
        pair32(g(4), g(5)),
        pair32(g(6), g(7)),
    );
    let pair64 = |a: __m256, b: __m256| {
        let (a, b) = (_mm256_castps_pd(a), _mm256_castps_pd(b));
        _mm256_add_ps(
            _mm256_castpd_ps(_mm256_unpacklo_pd(a, b)),
            _mm256_castpd_ps(_mm256_unpackhi_pd(a, b)),
        )
    };
    let (s0123, s4567) = (pair64(s01, s23), pair64(s45, s67));
    _mm256_add_ps(
        _mm256_permute2f128_ps::<0x20>(s0123, s4567),
        _mm256_permute2f128_ps::<0x31>(s0123, s4567),
    )
}

/// Up to 8 f16 values (missing ones 0) as f32 lanes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn f16_lanes<const N: usize>(bits: [u16; N]) -> __m256 {
    let b = |i: usize| if i < N { bits[i] as i16 } else { 0 };
    _mm256_cvtph_ps(_mm_setr_epi16(
        b(0),
        b(1),
        b(2),
        b(3),
        b(4),
        b(5),
        b(6),
        b(7),
    ))
}

/// Lane `q` of the result is lane `q / RN` of `rows`: per-row values spread over the
/// pair lanes `q = row * RN + token`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn spread_rows<const RN: usize>(rows: __m256) -> __m256 {
    if RN == 1 {
        return rows;
    }
    let i = |q: i32| q / RN as i32;
    _mm256_permutevar8x32_ps(
        rows,
        _mm256_setr_epi32(i(0), i(1), i(2), i(3), i(4), i(5), i(6), i(7)),
    )
}

/// Lane `q` of the result is lane `q % RN` of `tokens`: per-token values spread over the
/// pair lanes `q = row * RN + token`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn spread_tokens<const RN: usize>(tokens: __m256) -> __m256 {
    if RN == 1 {
        return _mm256_permutevar8x32_ps(tokens, _mm256_setzero_si256());
    }
    let i = |q: i32| q % RN as i32;
    _mm256_permutevar8x32_ps(
        tokens,
        _mm256_setr_epi32(i(0), i(1), i(2), i(3), i(4), i(5), i(6), i(7)),
    )
}

/// Writes the pair lanes of `acc` (lane `row * RN + token`) to the output tile.
///
/// # Safety
/// `out + (t0 + t) * ldo + r0 + r` is valid and exclusively ours for `r < RM`, `t < RN`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn store_pairs<const RM: usize, const RN: usize>(
    acc: __m256,
    tile: &GemmTile,
    r0: usize,
    t0: usize,
) {
    let mut lanes = [0f32; 8];
    // SAFETY: `lanes` is 8 f32 = 32 bytes; storeu has no alignment requirement.
    unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), acc) };
    for r in 0..RM {
        for t in 0..RN {
            // SAFETY: the caller's contract.
            unsafe { *tile.out.add((t0 + t) * tile.ldo + r0 + r) = lanes[r * RN + t] };
        }
    }
}

/// ggml's per-block step of each pair of a register tile: `lanes[p] += pairs[p] * scale[p]`
/// lane by lane, one FMA (`pairs[p]`: the pair's 8 exact int32 partial sums of the block,
/// `scale`: the pairs' `d_w * d_a` in pair lanes `p = row * RN + token`).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn fma_ggml_lanes<const RM: usize, const RN: usize>(
    lanes: &mut [__m256; MAX_PAIRS],
    pairs: &[__m256i; MAX_PAIRS],
    scale: __m256,
) {
    for p in 0..RM * RN {
        let d = _mm256_permutevar8x32_ps(scale, _mm256_set1_epi32(p as i32));
        lanes[p] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(pairs[p]), d, lanes[p]);
    }
}

/// Writes ggml's result of each pair: `hsum_float_8` of its 8-lane accumulator
/// `lanes[row * RN + token]`, plus the pair's lane of `extra` (a sum ggml keeps beside
/// the lanes: the minimums' term) when there is one.
///
/// # Safety
/// As [`store_pairs`].
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn store_ggml_lanes<const RM: usize, const RN: usize>(
    lanes: &[__m256; MAX_PAIRS],
    extra: Option<__m256>,
    tile: &GemmTile,
    r0: usize,
    t0: usize,
) {
    let mut beside = [0f32; 8];
    if let Some(e) = extra {
        // SAFETY: `beside` is 8 f32 = 32 bytes; storeu has no alignment requirement.
        unsafe { _mm256_storeu_ps(beside.as_mut_ptr(), e) };
    }
    for r in 0..RM {
        for t in 0..RN {
            let mut l = [0f32; 8];
            // SAFETY: as above.
            unsafe { _mm256_storeu_ps(l.as_mut_ptr(), lanes[r * RN + t]) };
            let sum = hsum_float_8(l);
            let v = if extra.is_some() {
                sum + beside[r * RN + t]
            } else {
                sum
            };
            // SAFETY: the caller's contract.
            unsafe { *tile.out.add((t0 + t) * tile.ldo + r0 + r) = v };
        }
    }
}

/// Prefetches, into L2, the `block_bytes` block at `block0` in the rows `lead` bytes after
/// the `RM` rows of the current register tile (rows `w_stride` bytes apart). Shared by
/// every AVX2 kernel's GEMV: a GEMV streams its weights from DRAM once, in rows shorter
/// than a page for the DeepSeek expert matrices, so the hardware prefetcher has to find
/// every new row's stream anew. The lead is set by the caller: two tiles on for register
/// tiles of adjacent rows ([`adjacent_lead`]), [`LEAD_ROWS`] rows on in the runs of
/// [`gemv_streams`]. Measured on the dev Xeon (2026-11-21,
/// `KT_ISA=avx2 kt-bench matmul --threads 1 --tokens 1`, GB/s of weights from DRAM,
/// without -> with the next tile's rows into L1): Q4_K 1408x2048 5.5-5.8 -> 10.2-11.2,
/// 2048x7168 8.2-8.3 -> 12.3-14.0; Q2_K 1408x2048 3.6-4.6 -> 7.9-8.8, 2048x7168
/// 4.8-5.7 -> 9.1-9.8. Two tiles ahead into L2 rather than one into L1 (session 4, same
/// command, best of 4 interleaved, ms): Q4_K 7168x2048 0.755 -> 0.748, 1408x2048 0.156
/// -> 0.147, 2048x7168 0.636 -> 0.613; Q5_0 2048x1408 0.210 -> 0.204, 7168x2048 1.172
/// -> 1.146: a longer lead with more lines in flight, which an L1 prefetch's fill buffer
/// would hold until the line arrives. The small-block and float formats call it once per
/// 64 bytes of row (every block would ask for the same line).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn prefetch_rows_ahead<const RM: usize>(
    block0: *const u8,
    w_stride: usize,
    lead: usize,
    block_bytes: usize,
) {
    for r in 0..RM {
        let p = block0.wrapping_add(r * w_stride + lead);
        let mut off = 0;
        while off < block_bytes + 63 {
            // A prefetch never faults, whatever the address; wrapping_add keeps the
            // pointer arithmetic defined past the end of the weights.
            _mm_prefetch::<_MM_HINT_T1>(p.wrapping_add(off).cast());
            off += 64;
        }
    }
}

/// The prefetch lead of register tiles of `rm` adjacent rows (`w_stride` bytes apart): the
/// same rows two tiles on.
pub(super) fn adjacent_lead(rm: usize, w_stride: usize) -> usize {
    2 * rm * w_stride
}

/// Rows in each of the runs a one-token tile's register tiles take their rows from, at
/// the least: a shorter tile keeps its register tiles on adjacent rows.
const MIN_STREAM_ROWS: usize = 4;
/// How many rows on in its runs a stream register tile prefetches (the next tile's rows).
/// One row, not two (session 23, 2-core AMD EPYC dev VM, `KT_ISA=avx2`, 2 threads, the
/// two taking turns call by call in one process): the V2-Lite MoE at one token read
/// 0.768-0.808 against 0.806-0.845 ms in four processes, and the one-token GEMVs were
/// faster on 17 of 20 format/shape pairs (Q4_K 1408x2048 0.0379 against 0.0395 ms). The
/// device, 16 threads, the same way: the MoE 2.6-3.8% faster (V3 Q4_K 1.570-1.574 against
/// 1.622-1.637 ms, V2-Lite 0.260-0.262 against 0.267-0.269) and all 9 GEMVs measured
/// faster, by up to 13% (Q5_0 2048x7168 0.1191 against 0.1363). Dev Xeon, one thread
/// (session 22, before the runs' heads were prefetched): one row 1-3% faster than two;
/// three, four and six rows ahead slower.
const LEAD_ROWS: usize = 1;

/// The one-token rows `r0..r0 + rm * q` (`q` = the rows left over `rm`, at least
/// [`MIN_STREAM_ROWS`]) as `q` register tiles of `rm` rows, tile `i` taking rows `i, i + q,
/// ..., i + (rm - 1) q` from `r0`: `body(sub, lead)` computes the register tile of the
/// view `sub` (its rows 0..rm, `q` rows apart, one token, into `sub.out[0..rm]`) with the
/// prefetch lead of [`LEAD_ROWS`] tiles on. Returns the rows covered (0 when too few).
///
/// Why: a register tile on adjacent rows reads one short run of memory per tile (8 rows
/// of a 2048-wide Q4_K matrix are 9 KiB), so the prefetch and the hardware restart every
/// few microseconds; here each of the `rm` rows of a tile continues a long sequential run
/// (`q` rows), as the AVX512 GEMV's row streams do. Dev Xeon, `KT_ISA=avx2 kt-bench
/// matmul --threads 1 --tokens 1` from DRAM, adjacent -> streams, ms: Q4_K 1408x2048
/// 0.134 -> 0.100, Q5_0 1408x2048 0.201 -> 0.125, Q6_K 7168x2048 0.927 -> 0.712, Q4_K
/// 2048x7168 0.571 -> 0.553 (`BENCHMARKS.md`, session 22). Every row's sum is computed as
/// before: bit-identical.
///
/// # Safety
/// `body` is safe to call with a view of `rm` (at most 8) rows of `tile`, one token;
/// `r0 <= tile.rows`, `tile.tokens == 1`, and the tile is valid as [`GemmTile`] documents.
pub(super) unsafe fn gemv_streams(
    tile: &GemmTile,
    r0: usize,
    rm: usize,
    body: impl Fn(&GemmTile, usize),
) -> usize {
    // The register tiles write `rm` sums into `sums` below: a hard check, not a debug one.
    assert!(rm <= 8, "a stream register tile of {rm} rows");
    debug_assert_eq!(tile.tokens, 1);
    let q = (tile.rows - r0) / rm;
    if q < MIN_STREAM_ROWS {
        return 0;
    }
    let ws = tile.w_stride;
    // Each register tile prefetches the rows LEAD_ROWS on in its runs, so the runs' first
    // LEAD_ROWS rows are prefetched here, whole, before the first tile (dev Xeon, one
    // thread, measured with a lead of two rows: Q4_K 256x2048 0.0257 -> 0.0224 ms, Q5_0
    // 0.0333 -> 0.0283; the V2-Lite MoE at one token, whose items are 128 rows, 2.416 ->
    // 2.230 ms).
    for i in 0..LEAD_ROWS {
        for j in 0..rm {
            let row = tile.w.wrapping_add((r0 + i + j * q) * ws);
            for off in (0..ws).step_by(64) {
                // A prefetch never faults; the rows exist (q >= MIN_STREAM_ROWS > i).
                _mm_prefetch::<_MM_HINT_T1>(row.wrapping_add(off).cast());
            }
        }
    }
    let mut sums = [f32::NAN; 8];
    for i in 0..q {
        // NaN until this register tile writes it: a row it skipped would show.
        sums.fill(f32::NAN);
        let sub = GemmTile {
            // SAFETY: row r0 + i < tile.rows lies in the weights.
            w: unsafe { tile.w.add((r0 + i) * ws) },
            w_stride: q * ws,
            rows: rm,
            out: sums.as_mut_ptr(),
            ldo: rm,
            ..*tile
        };
        body(&sub, LEAD_ROWS * ws);
        for (j, &s) in sums[..rm].iter().enumerate() {
            // SAFETY: row r0 + i + j q < r0 + rm q <= tile.rows: the tile's output.
            unsafe { *tile.out.add(r0 + i + j * q) = s };
        }
    }
    rm * q
}
