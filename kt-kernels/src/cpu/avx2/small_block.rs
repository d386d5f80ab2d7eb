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
//!   the correction depends on the token only and is shared by the RM rows.
//! - Q8_0 (signed weights): `maddubs(|w|, sign(a, w))`.
//! - `d * q + m` formats (Q4_1, Q5_1): `maddubs(q, a)`, and the `m * s` term of the
//!   Q8_1 activation's `s = d * sum(a)`. These follow ggml's AVX2 f32 order instead of
//!   the reduction above ([`SmallBlock::GGML_LANES`]): llama.cpp computes them with its
//!   `vec_dot` on every batch size (its tinyBLAS has no Q4_1 / Q5_1 kernel), and they
//!   are the fallback of K-quant files for rows that are no multiple of 256 (DeepSeek's
//!   `attn_k_b` in Q5_K_M files is Q5_1).

use std::arch::x86_64::*;
use std::marker::PhantomData;

use super::kquant::load32;
use super::tile::{
    f16_lanes, fma_ggml_lanes, hsum8_epi32, prefetch_next_rows, spread_rows, spread_tokens,
    store_ggml_lanes, store_pairs, Microkernel, MAX_PAIRS,
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

/// The byte offsets of 8 rows `w_stride` apart, for [`row_scales`]'s gather: `None` for
/// other tile heights, or when the last offset does not fit a gather's i32 index.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn row_offsets<const RM: usize>(w_stride: usize) -> Option<__m256i> {
    let last = i32::try_from(w_stride.checked_mul(7)?).ok()?;
    let ws = last / 7;
    (RM == 8).then(|| _mm256_setr_epi32(0, ws, 2 * ws, 3 * ws, 4 * ws, 5 * ws, 6 * ws, last))
}

/// The f16 scales `d` (the first two bytes of every block) of the tile's `RM` rows at `w`,
/// as f32 lanes. With `offsets` (8 rows, `w[r] = w[0] + offsets[r]`) one dword gather from
/// the block starts and one byte shuffle bring them together: the eight word inserts of
/// [`f16_lanes`] and their unpacks run on the port that the quants' shuffles and the
/// pair reduction already keep busy (the 8-row GEMV tile spends most of its time there,
/// `perf`, Q5_0 2048x1408).
///
/// # Safety
/// Every `w[r]` points at a whole block (at least 4 bytes); with `offsets`, `w[r] = w[0] +
/// offsets[r]`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn row_scales<const RM: usize>(w: &[*const u8; RM], offsets: Option<__m256i>) -> __m256 {
    match offsets {
        Some(offsets) if RM == 8 => {
            // SAFETY: 4 bytes at each w[r] = w[0] + offsets[r] (whole blocks, the caller).
            let dwords = unsafe { _mm256_i32gather_epi32::<1>(w[0].cast::<i32>(), offsets) };
            // The low word of each dword to the low 8 bytes of each 128-bit lane, then the
            // two lanes' low halves together.
            let words = _mm256_shuffle_epi8(
                dwords,
                _mm256_setr_epi8(
                    0, 1, 4, 5, 8, 9, 12, 13, -1, -1, -1, -1, -1, -1, -1, -1, 0, 1, 4, 5, 8, 9, 12,
                    13, -1, -1, -1, -1, -1, -1, -1, -1,
                ),
            );
            let packed = _mm256_permute4x64_epi64::<0b1000>(words);
            _mm256_cvtph_ps(_mm256_castsi256_si128(packed))
        }
        // SAFETY: whole blocks, d first.
        _ => f16_lanes::<RM>(std::array::from_fn(|r| unsafe { f16_bits(w[r]) })),
    }
}

impl<B: SmallBlock> Microkernel for SmallBlockKernel<B> {
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn tile<const RM: usize, const RN: usize>(tile: &GemmTile, r0: usize, t0: usize) {
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
        let gather = row_offsets::<RM>(ws);
        let mut next_line = 0;
        for b in 0..tile.k / QK {
            if gemv && b * B::BLOCK_BYTES >= next_line {
                prefetch_next_rows::<RM>(
                    tile.w.wrapping_add(r0 * ws + b * B::BLOCK_BYTES),
                    ws,
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
            // SAFETY: whole blocks, d first; the offsets are those of rows w[0]..w[RM].
            let dw = unsafe { row_scales(&w, gather) };
            // SAFETY: as above.
            let da = f16_lanes::<RN>(std::array::from_fn(|t| unsafe { f16_bits(a[t]) }));
            let scale = _mm256_mul_ps(spread_rows::<RN>(dw), spread_tokens::<RN>(da));
            if B::GGML_LANES {
                fma_ggml_lanes::<RM, RN>(&mut lane_acc, &pairs, scale);
            } else {
                acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(hsum8_epi32(&pairs)), scale, acc);
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
