//! Few-token products (2 to [`PairFormat::MAX_TOKENS`] tokens) of the pair formats whose
//! [`PairFormat::pair_n`] rearranges each row pair's weights once for all the tokens.
//!
//! The column layout of [`super::super::tile`] puts a token pair in the halves of every
//! vector and rearranges the weights once per register tile; at 2-4 tokens that is one
//! or two pairs, and it costs 1.7-2.5x one token's row-pair GEMV (dev VM, Q4_K
//! 2048x7168, one thread, resident weights: 0.158 ms at 1 token, 0.273 / 0.393 / 0.383
//! at 2 / 3 / 4). Here a row pair's weight vectors meet each token's activations in
//! turn, so a token adds only its `vpdpbusd`s and its f32 epilogue (the K-quants, 2 to 4
//! tokens; Q4_K 2 and 3). Device (session 19 call L, the two taking turns call by call in one
//! process), Q4_K at 2 / 3 tokens, ms: 16 threads 2048x7168 0.108 -> 0.097 / 0.142 ->
//! 0.119, 7168x2048 0.106 -> 0.089 / 0.103 -> 0.083; one thread 14-24% faster. These
//! tiles are the MoE's few-position items (busy experts' tails, small experts): V3 Q4_K
//! at 128 tokens 77.4 -> 74.2 and 64.1 -> 62.5 ms, at 512 level. Session 20 gave Q2_K,
//! Q3_K, Q5_K and Q6_K the same at 2-4 tokens (device, in one process against the column
//! layout: at 2 and 3 tokens on 2048x7168, 7168x2048 and 1408x2048 10-34% faster at 16
//! threads and 20-36% at one; at 4 tokens 7-22% and 6-25%), with K cut into shorter
//! slices as tokens are added ([`slice_len`]). Q8_0 and the nibble formats stay on the
//! column layout: their weights need little rearranging, and the row pairs read Q8_0 at 2
//! tokens 1.5x slower (dev VM).

use std::arch::x86_64::*;
use std::mem::MaybeUninit;

use super::super::tile::{hsum_halves, prefetch_group, prefetch_group_l2, COLS};
use super::{store, PairFormat, SLICE};
use crate::cpu::dispatch::GemmTile;

/// The table's `gemm` entry of a pair format for a tile of 2 to `F::MAX_TOKENS` tokens.
///
/// # Safety
/// See [`crate::cpu::dispatch::GemmFn`]; `2 <= tile.tokens <= F::MAX_TOKENS <= 4` and
/// `tile.qtype` is the format `F` implements.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")]
pub(in crate::cpu::avx512) unsafe fn gemv_tokens<F: PairFormat>(tile: &GemmTile) {
    // A format claiming more tokens than the arms below would reach `unreachable!`.
    const { assert!(F::MAX_TOKENS <= 4, "PairFormat::MAX_TOKENS is at most 4") };
    debug_assert!((2..=F::MAX_TOKENS).contains(&tile.tokens));
    // SAFETY (every arm): forwarded contract.
    unsafe {
        match tile.tokens {
            2 => tokens::<F, 2>(tile),
            3 => tokens::<F, 3>(tile),
            4 => tokens::<F, 4>(tile),
            n => unreachable!("{n} tokens is not a few-token tile"),
        }
    }
}

/// Super-blocks per K slice of an `N`-token product of `groups` super-blocks: at most
/// `2 * SLICE / N` (32, 21, 16 for 2, 3, 4 tokens), so the `N` tokens' records of a slice
/// (Q4_K: 448 bytes each) stay under ~29 KB and share the 48 KiB L1 with the weight
/// stream, and the slices of a row are of even length. Dev VM (Zen 5), one thread,
/// resident, in one process, 2048x7168 (28 super-blocks) at 3 / 4 tokens, ms: Q6_K 0.503
/// / 0.644 with one 28-block slice -> 0.353 / 0.429 with two of 14, Q5_K 0.417 / 0.579 ->
/// 0.364 / 0.440, Q4_K 0.308 / 0.474 -> 0.295 / 0.361; at 2048 columns (8 super-blocks)
/// nothing changes.
fn slice_len(groups: usize, n: usize) -> usize {
    let most = (2 * SLICE / n).min(SLICE);
    groups.div_ceil(groups.div_ceil(most))
}

/// The product of `N` tokens: row pairs outer (one weight stream), super-blocks inner.
///
/// # Safety
/// As [`gemv_tokens`], with `tile.tokens == N`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")]
unsafe fn tokens<F: PairFormat, const N: usize>(tile: &GemmTile) {
    let total_cols = tile.k / 32;
    let groups = total_cols.div_ceil(COLS);
    let out = tile.out;
    if groups == 0 {
        for t in 0..N {
            for r in 0..tile.rows {
                // SAFETY: the tile's output elements.
                unsafe { *out.add(t * tile.ldo + r) = 0.0 };
            }
        }
        return;
    }
    let valid_last = total_cols - (groups - 1) * COLS;
    let ws = tile.w_stride;
    // Super-block g's records of the N tokens side by side.
    let mut acts = [const { [const { MaybeUninit::<F::Act>::uninit() }; N] }; SLICE];
    let slice = slice_len(groups, N);
    let mut g0 = 0;
    while g0 < groups {
        let gn = slice.min(groups - g0);
        for (i, recs) in acts.iter_mut().take(gn).enumerate() {
            let g = g0 + i;
            let valid = if g + 1 == groups { valid_last } else { COLS };
            for (t, rec) in recs.iter_mut().enumerate() {
                // SAFETY: super-block g of token t's activation row exists.
                unsafe { F::repack(tile.a.add(t * tile.a_stride), g, valid, rec.as_mut_ptr()) };
            }
        }
        let first = g0 == 0;
        let mut r = 0;
        while r < tile.rows {
            let single = r + 1 == tile.rows;
            let w0 = tile.w.wrapping_add(r * ws + g0 * F::BLOCK);
            let w1 = if single { w0 } else { w0.wrapping_add(ws) };
            let mut acc = [_mm512_setzero_ps(); N];
            for (g, recs) in acts.iter().take(gn).enumerate() {
                let valid = if g0 + g + 1 == groups {
                    valid_last
                } else {
                    COLS
                };
                let off = g * F::BLOCK;
                // The same super-block of the next row pair into L1, of the pair after it
                // into L2. The one-token GEMV dropped its L2 prefetch with its row streams
                // (a stream's next row is a register tile ahead); these row pairs are one
                // adjacent stream, and the L2 one pays: without it, dev AMD VM, 2 threads,
                // in one process, 2 and 3 tokens were slower in all 24 cases (Q4_K, Q5_K,
                // Q6_K, Q2_K on three shapes; up to 22%, session 23).
                for h in 0..2 {
                    prefetch_group(w0.wrapping_add(off + (2 + h) * ws), F::BLOCK);
                    prefetch_group_l2(w0.wrapping_add(off + (4 + h) * ws), F::BLOCK);
                }
                // SAFETY: super-block g0 + g of rows r, r + 1 (r alone when `single`) and
                // record g of every token exist (written above).
                unsafe {
                    let recs: [&F::Act; N] = std::array::from_fn(|t| recs[t].assume_init_ref());
                    acc = F::pair_n(w0.add(off), w1.add(off), recs, valid, acc);
                }
            }
            for (t, &a) in acc.iter().enumerate() {
                let (s0, s1) = hsum_halves(a);
                let sums = [s0, s1];
                let n = if single { 1 } else { 2 };
                // SAFETY: token t < N and rows r..r + n < rows: the tile's output elements.
                unsafe { store(out.add(t * tile.ldo), r, 1, &sums[..n], first) };
            }
            r += 2;
        }
        g0 += gn;
    }
}
