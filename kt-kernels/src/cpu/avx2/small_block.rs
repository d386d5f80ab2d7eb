//! The one microkernel of the 32-element block formats (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0
//! against Q8_0 / Q8_1 activations).
//!
//! Every block has its own f16 scale on both sides. Per block and (row, token) pair: one
//! `maddubs` (plus a sign fix or an offset correction) and one `madd` with ones give 8
//! i32 partial sums; the pairs' sums of the register tile are then reduced together into
//! the 8 pair lanes of one vector (`row * RN + token`), converted once and multiplied
//! with the pairs' `d_w * d_a` with one fma. Converting and scaling each pair's vector
//! instead costs a cvt, a mul and an fma per pair and block, all on the two ports that
//! also run `maddubs` and `madd`; the reduction's shuffles run beside them. A format only
//! says how its 32 quants unpack ([`SmallBlock`]).
//!
//! - `q - OFFSET` formats (Q4_0: 8, Q5_0: 16): `maddubs(q, a) - maddubs(OFFSET, a)`;
//!   the correction depends on the token only and is shared by the RM rows. Their sums
//!   are small enough to be reduced as i16 words, with no `madd` per pair
//!   ([`hsum8_words`]; Q5_0 is the down projection of V2-Lite's Q4_K_M experts).
//! - Q8_0 (signed weights): `maddubs(|w|, sign(a, w))`.
//! - `d * q + m` formats (Q4_1, Q5_1): `maddubs(q, a)`, and the `m * s` term of the
//!   Q8_1 activation's `s = d * sum(a)`. These follow ggml's AVX2 f32 order instead of
//!   the reduction above ([`SmallBlock::GGML_LANES`]): llama.cpp computes them with its
//!   `vec_dot` on every batch size (its tinyBLAS has no Q4_1 / Q5_1 kernel), and they
//!   are the fallback of K-quant files for rows that are no multiple of 256 (DeepSeek's
//!   `attn_k_b` in Q5_K_M files is Q5_1).

use std::arch::x86_64::*;
use std::marker::PhantomData;
use std::mem::MaybeUninit;

use super::kquant::load32;
use super::tile::{
    adjacent_lead, f16_lanes, fma_ggml_lanes, gemv_streams, hsum8_epi32, prefetch_rows_ahead,
    spread_rows, spread_tokens, store_ggml_lanes, store_pairs, Microkernel, MAX_PAIRS,
};
use crate::cpu::dispatch::GemmTile;
use crate::cpu::matmul::GEMV_MAX_TOKENS;
use crate::quant::QK;

/// How a 32-element block format unpacks for the shared microkernel. Every block starts
/// with its f16 scale `d`; formats with a minimum have the f16 `m` right after it.
pub(super) trait SmallBlock {
    const BLOCK_BYTES: usize;
    /// Weights are `q - OFFSET` with unsigned `q` (0 when not).
    const OFFSET: i8;
    /// Weights are signed bytes (Q8_0).
    const SIGNED: bool;
    /// Weights are `d * q + m`; the activations are Q8_1 (with `s`), not Q8_0.
    const HAS_MIN: bool;
    /// The f32 order of ggml's AVX2 `vec_dot` (Q4_1, Q5_1; modelled by
    /// [`crate::cpu::scalar::ggml_order`]): each pair's 8 int32 partial sums of a block
    /// are converted and FMA'd into an 8-lane f32 accumulator, `m * s` goes into one f32
    /// beside it, and `hsum_float_8` adds the lanes at the end. False: the pairs' int
    /// sums reduced exactly per block and FMA'd into one f32 with the `m * s` term.
    const GGML_LANES: bool = false;

    /// The 32 quants in element order: unsigned `q` (or signed for [`SmallBlock::SIGNED`]).
    ///
    /// # Safety
    /// `x` points to a whole block; the CPU has AVX2.
    unsafe fn quants(x: *const u8) -> __m256i;

    /// [`SmallBlock::quants_head`] returns the vector its loads left the block's `d` in
    /// (word 0), so the one-token 8-row tile ([`gemv8_prepped`]) takes the scales from
    /// registers ([`head_scales`]) instead of eight more loads.
    const HEAD: bool = false;

    /// [`SmallBlock::quants`] and, with [`SmallBlock::HEAD`], a vector whose word 0 is the
    /// block's f16 `d` (else zero).
    ///
    /// # Safety
    /// As [`SmallBlock::quants`].
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn quants_head(x: *const u8) -> (__m256i, __m256i) {
        // SAFETY: the caller's contract.
        (unsafe { Self::quants(x) }, _mm256_setzero_si256())
    }
}

/// The f16 scales `d` of 8 rows from word 0 of each row's head vector
/// ([`SmallBlock::quants_head`]), as f32 lanes: the word / dword / qword unpack tree of
/// [`row_scales`] on registers the quants' loads filled, without its eight loads (the
/// one-token GEMV issues about two vector loads per cycle on the dev VM's Zen 5, so the
/// loads, not only the ALU work, bound these kernels). The word level is taken as the rows
/// come ([`head_pair`]), so at most one head waits for its partner.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn head_scales(p: &[__m128i; 4]) -> __m256 {
    let (q0, q1) = (
        _mm_unpacklo_epi32(p[0], p[1]),
        _mm_unpacklo_epi32(p[2], p[3]),
    );
    _mm256_cvtph_ps(_mm_unpacklo_epi64(q0, q1))
}

/// Level 1 of [`head_scales`]: the `d` words of rows `2i` and `2i + 1` side by side.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn head_pair(even: __m256i, odd: __m256i) -> __m128i {
    _mm_unpacklo_epi16(_mm256_castsi256_si128(even), _mm256_castsi256_si128(odd))
}

/// The [`Microkernel`] of a 32-element block format.
pub(super) struct SmallBlockKernel<B>(PhantomData<B>);

/// Bytes of an activation block and the offset of its quants: Q8_1 (`d, s, qs`) for the
/// formats with a minimum, else Q8_0 (`d, qs`).
const fn act_layout(q8_1: bool) -> (usize, usize) {
    if q8_1 {
        (36, 4)
    } else {
        (34, 2)
    }
}

/// Unaligned f16 bits at `p`.
///
/// # Safety
/// `p .. p + 2` is readable.
#[inline]
unsafe fn f16_bits(p: *const u8) -> u16 {
    // SAFETY: the caller's contract.
    unsafe { std::ptr::read_unaligned(p as *const u16) }
}

/// The f16 scales `d` (the first two bytes of every block) of the tile's `RM` rows at `w`,
/// as f32 lanes. For 8 rows: eight 4-byte loads (`vmovd`, no ALU work) and a 3-level tree of
/// word / dword / qword unpacks, whose steps are independent of each other. The eight word
/// inserts of [`f16_lanes`] form one dependency chain, and session 9's `vpgatherdd` from
/// the rows' block starts (faster than the inserts on the Xeon) is slow on AMD's Zen: on the
/// dev VM's EPYC (Zen 5), 1 thread, Q5_0 2048x1408 cache-resident, the tree beat the gather
/// by 8% and the inserts by 5% (`BENCHMARKS.md`, session 11).
///
/// # Safety
/// Every `w[r]` points at a whole block (at least 4 bytes).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn row_scales<const RM: usize>(w: &[*const u8; RM]) -> __m256 {
    if RM != 8 {
        // SAFETY: whole blocks, d first.
        return f16_lanes::<RM>(std::array::from_fn(|r| unsafe { f16_bits(w[r]) }));
    }
    // SAFETY: 4 readable bytes at each w[r] (whole blocks); only the low word is used.
    let l = |r: usize| unsafe { _mm_loadu_si32(w[r]) };
    let p01 = _mm_unpacklo_epi16(l(0), l(1));
    let p23 = _mm_unpacklo_epi16(l(2), l(3));
    let p45 = _mm_unpacklo_epi16(l(4), l(5));
    let p67 = _mm_unpacklo_epi16(l(6), l(7));
    let (q0, q1) = (_mm_unpacklo_epi32(p01, p23), _mm_unpacklo_epi32(p45, p67));
    _mm256_cvtph_ps(_mm_unpacklo_epi64(q0, q1))
}

impl<B: SmallBlock> SmallBlockKernel<B> {
    /// The `q - OFFSET` formats with unsigned `q` (Q4_0, Q5_0): a block's i16 pair sums are
    /// reduced as i16 words ([`hsum8_words`]) instead of one `madd` per pair and an i32
    /// reduction.
    const WORD_SUMS: bool = B::OFFSET != 0 && !B::HAS_MIN && !B::SIGNED;
}

/// Level 1 of [`hsum8_words`]: the words of `a` and of `b` added pairwise, dword `i` with
/// dword `i + 2` of each 128-bit half, the results interleaved:
/// `[a.d0 + a.d2, b.d0 + b.d2, a.d1 + a.d3, b.d1 + b.d3]` (word by word).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn pair32_words(a: __m256i, b: __m256i) -> __m256i {
    _mm256_add_epi16(_mm256_unpacklo_epi32(a, b), _mm256_unpackhi_epi32(a, b))
}

/// Lane `q` of the result is the sum of the 16 i16 lanes of `v[q]` (each `maddubs(q, a)` of
/// a block), minus the same sum of the block's `OFFSET` correction when `c1` is given (its
/// level-1 form, [`pair32_words`], subtracted from every level-1 vector: the same for every
/// pair when the tile has one or two tokens), as i32.
///
/// Three transpose-and-add levels on i16 words leave, for each pair, the sum of its even and
/// of its odd lanes in one dword; one `madd` with ones widens and adds the two. i16 adds wrap,
/// so the result is exact whenever each of those two true sums fits in i16: 8 lanes of
/// `(q - OFFSET) * a` pair products, at most 16 * 16 * 127 = 32512 for Q5_0 (|q - 16| <= 16)
/// with activations in -127..=127 (what the Q8_0 quantizer makes: `round(x / (amax / 127))`),
/// 16256 for Q4_0. 22 instructions for 8 pairs where a `madd` per pair and [`hsum8_epi32`]
/// take 29 (and the per-pair correction 8 more). With `words_only` the `madd` is left out:
/// the result is the dwords of i16 [even, odd] sums (wrapped), to which a correction in the
/// same form can be applied once ([`act_terms`]).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn hsum8_words(v: &[__m256i; MAX_PAIRS], c1: Option<__m256i>, words_only: bool) -> __m256i {
    let l1 = |a: __m256i, b: __m256i| {
        let s = pair32_words(a, b);
        match c1 {
            Some(c) => _mm256_sub_epi16(s, c),
            None => s,
        }
    };
    let (s01, s23, s45, s67) = (
        l1(v[0], v[1]),
        l1(v[2], v[3]),
        l1(v[4], v[5]),
        l1(v[6], v[7]),
    );
    // Per 128-bit half: dword p = [even-lane sum, odd-lane sum] of pair p's half.
    let l2 = |a: __m256i, b: __m256i| {
        _mm256_add_epi16(_mm256_unpacklo_epi64(a, b), _mm256_unpackhi_epi64(a, b))
    };
    let (s0123, s4567) = (l2(s01, s23), l2(s45, s67));
    let words = _mm256_add_epi16(
        _mm256_permute2x128_si256::<0x20>(s0123, s4567),
        _mm256_permute2x128_si256::<0x31>(s0123, s4567),
    );
    if words_only {
        return words;
    }
    _mm256_madd_epi16(words, _mm256_set1_epi16(1))
}

/// Most blocks per row of [`SmallBlockKernel::gemv_rows`]'s per-call activation terms
/// (k up to 18432, a DeepSeek-V3 dense down projection): 576 * 36 bytes on the stack.
const PREP_BLOCKS: usize = 576;

/// What the one-token 8-row tile of the word-sum formats needs of activation block `b`,
/// computed once per call instead of once per 8 rows: the `OFFSET` correction in the form
/// [`hsum8_words`]'s result takes it (every pair's words the same), and `d` as f32.
///
/// # Safety
/// `a` points to a whole Q8_0 activation block; the CPU has AVX2, FMA and F16C.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn act_terms<B: SmallBlock>(a: *const u8) -> (__m256i, f32) {
    let (_, act_qs) = act_layout(false);
    // SAFETY: the caller's contract: 32 quants at act_qs, d first.
    let (act, d) = unsafe { (load32(a.add(act_qs)), f16_bits(a)) };
    let c = _mm256_maddubs_epi16(_mm256_set1_epi8(B::OFFSET), act);
    (
        hsum8_words(&[c; MAX_PAIRS], None, true),
        half::f16::from_bits(d).to_f32(),
    )
}

/// The one-token 8-row tile of the word-sum formats (Q4_0, Q5_0) with the activation terms
/// of [`act_terms`] precomputed: per block one subtraction of the correction where the
/// register tile forms it (a `maddubs`, two shuffles and an add) and subtracts it four
/// times, and a broadcast load of `d` where it converts the f16. Bit-identical: the same
/// integers (the correction subtracted from the reduced words instead of the level-1 ones
/// is the same sum modulo 2^16, and the result fits in i16 as [`hsum8_words`] says) and the
/// same f32 operations.
///
/// # Safety
/// As [`Microkernel::tile`] with `RM = 8`, `RN = 1`, `t0 = 0`; `corr` and `da` hold the
/// [`act_terms`] of the tile's `k / 32` activation blocks.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn gemv8_prepped<B: SmallBlock>(
    tile: &GemmTile,
    r0: usize,
    corr: &[__m256i],
    da: &[f32],
    lead: usize,
) {
    let ws = tile.w_stride;
    let (act_block, act_qs) = act_layout(false);
    let mut acc = _mm256_setzero_ps();
    let mut next_line = 0;
    for (b, (&c, &d)) in corr.iter().zip(da).enumerate() {
        if b * B::BLOCK_BYTES >= next_line {
            prefetch_rows_ahead::<8>(
                tile.w.wrapping_add(r0 * ws + b * B::BLOCK_BYTES),
                ws,
                lead,
                B::BLOCK_BYTES,
            );
            next_line = b * B::BLOCK_BYTES + 64;
        }
        // SAFETY: rows r0..r0+8 are inside the tile (the caller's contract), and block
        // b < k / 32 of each row and of the token's activation row exists.
        let w: [*const u8; 8] =
            std::array::from_fn(|r| unsafe { tile.w.add((r0 + r) * ws + b * B::BLOCK_BYTES) });
        // SAFETY: as above; 32 quants at act_qs.
        let act = unsafe { load32(tile.a.add(b * act_block + act_qs)) };
        let mut pairs = [_mm256_setzero_si256(); MAX_PAIRS];
        let mut head_pairs = [_mm_setzero_si128(); 4];
        let mut even_head = _mm256_setzero_si256();
        for r in 0..8 {
            // SAFETY: w[r] is a whole block.
            let (q, head) = unsafe { B::quants_head(w[r]) };
            if r % 2 == 0 {
                even_head = head;
            } else {
                head_pairs[r / 2] = head_pair(even_head, head);
            }
            pairs[r] = _mm256_maddubs_epi16(q, act);
        }
        let sums = hsum8_words(&pairs, None, true);
        let sums = _mm256_madd_epi16(_mm256_sub_epi16(sums, c), _mm256_set1_epi16(1));
        let dw = if B::HEAD {
            head_scales(&head_pairs)
        } else {
            // SAFETY: whole blocks, d first.
            unsafe { row_scales(&w) }
        };
        let scale = _mm256_mul_ps(dw, _mm256_set1_ps(d));
        acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sums), scale, acc);
    }
    // SAFETY: the caller's contract covers these output elements.
    unsafe { store_pairs::<8, 1>(acc, tile, r0, 0) };
}

impl<B: SmallBlock> Microkernel for SmallBlockKernel<B> {
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn gemv_rows(tile: &GemmTile) -> usize {
        let nb = tile.k / QK;
        if !Self::WORD_SUMS || tile.rows < 8 || nb > PREP_BLOCKS {
            return 0;
        }
        // Only the first nb entries are written and read (no 20 KB clear per call: a MoE
        // item is a few dozen rows).
        let mut corr = [const { MaybeUninit::<__m256i>::uninit() }; PREP_BLOCKS];
        let mut da = [const { MaybeUninit::<f32>::uninit() }; PREP_BLOCKS];
        let (act_block, _) = act_layout(false);
        for b in 0..nb {
            // SAFETY: block b of the token's activation row exists (the caller's contract).
            let (c, d) = unsafe { act_terms::<B>(tile.a.add(b * act_block)) };
            corr[b].write(c);
            da[b].write(d);
        }
        // SAFETY: entries 0..nb were written above; MaybeUninit<T> has T's layout.
        let (corr, da) = unsafe {
            (
                std::slice::from_raw_parts(corr.as_ptr().cast::<__m256i>(), nb),
                std::slice::from_raw_parts(da.as_ptr().cast::<f32>(), nb),
            )
        };
        // SAFETY: rows 0..8 of stream views of the tile, one token; the terms are those of
        // its nb blocks.
        let streamed = unsafe {
            gemv_streams(tile, 0, 8, |sub, lead| {
                gemv8_prepped::<B>(sub, 0, corr, da, lead)
            })
        };
        let rows = tile.rows / 8 * 8;
        for r0 in (streamed..rows).step_by(8) {
            // SAFETY: rows r0..r0+8 lie in the tile, one token; the terms as above.
            unsafe { gemv8_prepped::<B>(tile, r0, corr, da, adjacent_lead(8, tile.w_stride)) };
        }
        rows
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn tile<const RM: usize, const RN: usize>(
        tile: &GemmTile,
        r0: usize,
        t0: usize,
        lead: usize,
    ) {
        debug_assert!(RM * RN <= MAX_PAIRS);
        let (act_block, act_qs) = act_layout(B::HAS_MIN);
        let ones = _mm256_set1_epi16(1);
        let offset = _mm256_set1_epi8(B::OFFSET);
        // Pair lanes `row * RN + token` (with GGML_LANES: the `m * s` sums only).
        let mut acc = _mm256_setzero_ps();
        // GGML_LANES: the 8-lane f32 accumulator of each pair.
        let mut lane_acc = [_mm256_setzero_ps(); MAX_PAIRS];
        let gemv = tile.tokens <= GEMV_MAX_TOKENS;
        let ws = tile.w_stride;
        let mut next_line = 0;
        for b in 0..tile.k / QK {
            if gemv && b * B::BLOCK_BYTES >= next_line {
                prefetch_rows_ahead::<RM>(
                    tile.w.wrapping_add(r0 * ws + b * B::BLOCK_BYTES),
                    ws,
                    lead,
                    B::BLOCK_BYTES,
                );
                next_line = b * B::BLOCK_BYTES + 64;
            }
            // SAFETY: rows r0..r0+RM and tokens t0..t0+RN are inside the tile (the
            // caller's contract), and block b < k / 32 of each row exists.
            let w: [*const u8; RM] = std::array::from_fn(|r| unsafe {
                tile.w.add((r0 + r) * tile.w_stride + b * B::BLOCK_BYTES)
            });
            // SAFETY: as above.
            let a: [*const u8; RN] = std::array::from_fn(|t| unsafe {
                tile.a.add((t0 + t) * tile.a_stride + b * act_block)
            });
            // SAFETY: whole activation blocks: 32 quants at act_qs.
            let act: [__m256i; RN] = std::array::from_fn(|t| unsafe { load32(a[t].add(act_qs)) });
            let correction: [__m256i; RN] = std::array::from_fn(|t| {
                if B::OFFSET != 0 {
                    _mm256_maddubs_epi16(offset, act[t])
                } else {
                    _mm256_setzero_si256()
                }
            });
            // The integer dot of every pair, as 8 i32 partial sums.
            let mut pairs = [_mm256_setzero_si256(); MAX_PAIRS];
            for r in 0..RM {
                // SAFETY: w[r] is a whole block.
                let q = unsafe { B::quants(w[r]) };
                let uq = if B::SIGNED { _mm256_abs_epi8(q) } else { q };
                for t in 0..RN {
                    let p = if B::SIGNED {
                        _mm256_maddubs_epi16(uq, _mm256_sign_epi8(act[t], q))
                    } else {
                        _mm256_maddubs_epi16(uq, act[t])
                    };
                    if Self::WORD_SUMS {
                        // Corrected in hsum8_words's first level when it is the same for
                        // every pair (one or two tokens).
                        pairs[r * RN + t] = if RN > 2 {
                            _mm256_sub_epi16(p, correction[t])
                        } else {
                            p
                        };
                        continue;
                    }
                    let p = if B::OFFSET != 0 {
                        _mm256_sub_epi16(p, correction[t])
                    } else {
                        p
                    };
                    pairs[r * RN + t] = _mm256_madd_epi16(p, ones);
                }
            }
            // One reduction and one scaling for all pairs: the int sums are exact (at
            // most 32 * 128 * 127 < 2^24, so the conversion is too), and the block's
            // `d_w * d_a` products are formed once in the pair lanes.
            // SAFETY: whole blocks, d first.
            let dw = unsafe { row_scales(&w) };
            // SAFETY: as above.
            let da = f16_lanes::<RN>(std::array::from_fn(|t| unsafe { f16_bits(a[t]) }));
            let scale = _mm256_mul_ps(spread_rows::<RN>(dw), spread_tokens::<RN>(da));
            if B::GGML_LANES {
                fma_ggml_lanes::<RM, RN>(&mut lane_acc, &pairs, scale);
            } else {
                let sums = if Self::WORD_SUMS {
                    let c1 = (RN <= 2).then(|| pair32_words(correction[0], correction[RN - 1]));
                    hsum8_words(&pairs, c1, false)
                } else {
                    hsum8_epi32(&pairs)
                };
                acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sums), scale, acc);
            }
            if B::HAS_MIN {
                // m of each row (after d) and s of each token (after d), in pair lanes.
                // SAFETY: whole blocks, as above.
                let m = f16_lanes::<RM>(std::array::from_fn(|r| unsafe { f16_bits(w[r].add(2)) }));
                let s = f16_lanes::<RN>(std::array::from_fn(|t| unsafe { f16_bits(a[t].add(2)) }));
                acc = _mm256_fmadd_ps(spread_rows::<RN>(m), spread_tokens::<RN>(s), acc);
            }
        }
        // SAFETY (both): the caller's contract covers these output elements.
        if B::GGML_LANES {
            let mins = B::HAS_MIN.then_some(acc);
            unsafe { store_ggml_lanes::<RM, RN>(&lane_acc, mins, tile, r0, t0) };
        } else {
            unsafe { store_pairs::<RM, RN>(acc, tile, r0, t0) };
        }
    }
}
