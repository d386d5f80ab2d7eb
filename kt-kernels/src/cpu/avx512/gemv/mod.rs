//! One-token products (GEMV) of the AVX512 integer formats: two weight rows per vector.
//!
//! The column layout of [`super::tile`] puts a token pair in the two 256-bit halves of
//! every vector, so at one token half of each `vpdpbusd` and of the weight rearranging
//! is wasted. Here the halves hold two weight *rows* instead: lane `h * 8 + j` belongs to
//! row `h` of a row pair, and each `vpdpbusd` multiplies 32 weights of each row with the
//! same 32 activations (a 256-bit broadcast load).
//!
//! Per super-block (256 elements; for Q8_0 a group of up to 8 blocks) a format
//! rearranges each row pair's weights into 8 vectors with one cross-lane permute each
//! (the two rows are the permute's two sources), chosen so that every lane of an
//! integer accumulator always sees the same scale group (a sub-block, or one 16-element
//! half of one). The integer sums of a super-block then get their scales in one f32
//! multiply-add per accumulator. The activations are rearranged to match once per call
//! ([`PairFormat::repack`]), with their scales and the block sums the minimums or
//! offsets are corrected with, so the per-row work is the weights' alone.
//!
//! The driver walks two row pairs at a time (their chains of `vpdpbusd` interleave) and
//! prefetches into L1 ahead of the rows it reads: a GEMV streams its weights from DRAM
//! once, and the rows of an expert matrix are too short for the hardware prefetcher to
//! pick each one up in time. A tile of 16 rows or more is cut into four runs of
//! consecutive rows, and each register tile takes one row of each run (rows `i`, `i + q`,
//! `i + 2q`, `i + 3q`), so a thread reads four separate streams, each prefetched
//! [`STREAM_LEAD`] bytes (at most a row) ahead, rather than one stream four rows wide; the
//! rows past `4q` go in adjacent tiles, which prefetch the next register tile's rows.
//! Session 16, device, 16 threads, `kt-bench moe --tokens 1`, the layouts taking turns
//! call by call in one process, two processes: V3 Q4_K 1.768 / 1.664 ms (adjacent) ->
//! 1.698 / 1.609 (four streams), V2-Lite Q4_K_M 0.304 / 0.301 -> 0.289 / 0.287; eight
//! streams read 1.692 / 1.637 and 0.300 / 0.300, sixteen 1.809 / 1.745 and 0.335 / 0.334
//! (runs of 8 rows in a 128-row decode item are too short).
//!
//! A second prefetch, of the tile after the next into L2, paid before the streams (session
//! 15) but not with them: each stream's next row is already a whole register tile ahead.
//! Session 23, device, the two taking turns call by call in one process: the MoE at one
//! token level without it and with it in six processes each (V3 Q4_K 1.698-1.832 against
//! 1.707-1.835 ms, V2-Lite 0.287-0.313 against 0.288-0.313), and the GEMVs without it
//! faster in 17 of 20 format/shape pairs at 16 threads and 8 of 9 at 8 threads (by up to
//! 7%: Q6_K 2048x7168 0.1364 against 0.1464 ms), since every prefetch also costs an
//! issue slot (one thread with the weights in cache: Q4_K 2048x7168 0.511 against 0.582
//! ms). On the device one stream per core read 90-114 GB/s, eight side by side with a
//! 1 KiB software prefetch 140-173.

mod lanes;
mod nibbles;
mod q2_k;
mod q3_k;
mod q4_k;
mod q5_k;
mod q6_k;
mod q8_0;
mod tokens;

pub(super) use nibbles::Nibbles;
pub(super) use q2_k::Q2K;
pub(super) use q3_k::Q3K;
pub(super) use q4_k::Q4K;
pub(super) use q5_k::Q5K;
pub(super) use q6_k::Q6K;
pub(super) use q8_0::Q8_0;
pub(super) use tokens::gemv_tokens;

use std::arch::x86_64::*;
use std::mem::MaybeUninit;

use super::tile::{hsum_halves, prefetch_group, COLS};
use crate::cpu::dispatch::GemmTile;

/// Super-blocks whose rearranged activations are kept at a time (at most 18 KiB of stack,
/// in L1 while every row pair passes over them). A longer K is done in slices whose
/// sums are added into the output: 8192 elements, so the DeepSeek expert and attention
/// shapes are one slice.
const SLICE: usize = 32;

/// A weight format computed two rows at a time.
///
/// # Safety
/// [`PairFormat::pair_n`] may read only the `BLOCK` bytes of the super-block of each row it
/// is given (fewer for a partial Q8_0 group: `valid` whole blocks).
pub(super) unsafe trait PairFormat {
    /// Weight bytes of a whole super-block (Q8_0: a group of 8 blocks).
    const BLOCK: usize;
    /// The most tokens [`pair_n`](Self::pair_n) shares its weight rearrangement across
    /// (at most 4); at 1, tiles of more than one token take the column layout instead
    /// ([`tokens`]).
    const MAX_TOKENS: usize = 1;
    /// One super-block of the activations, rearranged to match the weights' vectors.
    type Act;

    /// Rearranges super-block `g` of the activation row `a` (in the format's activation
    /// type; `valid` 32-element columns of the super-block exist) into `out`.
    ///
    /// # Safety
    /// The row holds super-block `g` (its `valid` columns); `out` is valid for writes;
    /// AVX512+VNNI.
    unsafe fn repack(a: *const u8, g: usize, valid: usize, out: *mut Self::Act);

    /// `acc[t]` plus the products of one super-block of rows `w0` (lanes 0..8) and `w1`
    /// (lanes 8..16) with token `t`'s `acts[t]`: the lanes of each half sum to the row's
    /// dot product. A format with `MAX_TOKENS` above 1 rearranges the weights once for all
    /// `N` tokens; the others run only `N` = 1.
    ///
    /// # Safety
    /// `w0` and `w1` point at the super-block (`valid` columns of it) of weight rows;
    /// AVX512+VNNI.
    unsafe fn pair_n<const N: usize>(
        w0: *const u8,
        w1: *const u8,
        acts: [&Self::Act; N],
        valid: usize,
        acc: [__m512; N],
    ) -> [__m512; N];

    /// [`pair_n`](Self::pair_n) for one token.
    ///
    /// # Safety
    /// As [`pair_n`](Self::pair_n).
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")]
    unsafe fn pair(
        w0: *const u8,
        w1: *const u8,
        act: &Self::Act,
        valid: usize,
        acc: __m512,
    ) -> __m512 {
        // SAFETY: forwarded contract.
        unsafe { Self::pair_n(w0, w1, [act], valid, [acc])[0] }
    }
}

/// Row streams of a one-token tile: its four-row register tiles take one row from each of
/// `STREAMS` runs of consecutive rows, when each run has at least [`MIN_STREAM_ROWS`]
/// (see the module docs; [`super::bf16`] streams the same way).
pub(super) const STREAMS: usize = 4;
const MIN_STREAM_ROWS: usize = 4;

/// How far ahead in its stream each row is prefetched: the same super-block of the
/// stream's next row while rows are shorter, else this many bytes. The next row's
/// super-block is 4 KB ahead in a 7168-column Q4_K row, and 1.5 KiB ahead read faster:
/// session 24, device, 16 threads, the leads taking turns call by call in one process, two
/// processes: 2048x7168 GEMVs 2.6-6.4% faster in all five formats measured (Q4_K 0.0812 /
/// 0.0780 -> 0.0790 / 0.0749 ms, Q5_K -6.4 / -5.6%), 18432x7168 -2.1 to +1.8% (Q4_K +0.1 /
/// -1.1%), the V3 MoE at one token 1.593 / 1.557 -> 1.587 / 1.537 ms; leads of 1 and 2 KiB
/// read about the same. Rows of 2048 columns (1152 B in Q4_K) keep the next-row lead: a
/// lead past the next row was up to 4-6% slower there (Q2_K's 672 B rows).
pub(super) const STREAM_LEAD: usize = 1536;

/// Rows per stream of a one-token tile of `rows` rows, or 0 where it is too short for the
/// streams (its rows then go in adjacent register tiles).
pub(super) fn stream_rows(rows: usize) -> usize {
    Some(rows / STREAMS)
        .filter(|&q| q >= MIN_STREAM_ROWS)
        .unwrap_or(0)
}

/// One register tile: `2 * NP` rows (the first at `w`, each `pitch` bytes after the one
/// before) over `groups` super-blocks; each step prefetches `next` bytes after the
/// super-block it reads in each row (the next register tile's rows, or ahead in a stream).
struct Rows<A> {
    w: *const u8,
    pitch: usize,
    next: usize,
    acts: *const A,
    groups: usize,
    valid_last: usize,
}

/// The dot products of the tile's rows with the activations (row `2p + h` at `[p][h]`).
/// With `single`, the tile is one row (`NP` = 1): it is fed as both rows of the pair and
/// only `[0][0]` is meaningful.
///
/// # Safety
/// `args` describes `2 * NP` readable weight rows (1 when `single`) of `groups`
/// super-blocks and `groups` written activation records; AVX512+VNNI.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")]
unsafe fn rows<F: PairFormat, const NP: usize>(
    args: &Rows<F::Act>,
    single: bool,
) -> [[f32; 2]; NP] {
    let mut acc = [_mm512_setzero_ps(); NP];
    let ws = args.pitch;
    for g in 0..args.groups {
        let valid = if g + 1 == args.groups {
            args.valid_last
        } else {
            COLS
        };
        let wg = args.w.wrapping_add(g * F::BLOCK);
        // A row's windows of successive super-blocks are contiguous, so the lines from each
        // window's start on (3 for a Q4_K block) reach every line: the one its end spills
        // into is the next window's first. Session 16 (device, in-process A/B, two
        // processes) against one line more a window: V2-Lite MoE T=1 -2.3 / -1.8%, V3
        // -0.1 / -0.3%.
        for r in 0..2 * NP {
            // `next` ahead of each row's super-block (see the module docs and
            // [`STREAM_LEAD`] for how far).
            prefetch_group(wg.wrapping_add(args.next + r * ws), F::BLOCK);
        }
        // SAFETY: super-block g of the tile's rows and record g exist (the caller's
        // contract); with `single` only row 0 is read.
        unsafe {
            let act = &*args.acts.add(g);
            for (p, a) in acc.iter_mut().enumerate() {
                let w0 = wg.add(2 * p * ws);
                let w1 = if single { w0 } else { wg.add((2 * p + 1) * ws) };
                *a = F::pair(w0, w1, act, valid, *a);
            }
        }
    }
    acc.map(|a| {
        let (s0, s1) = hsum_halves(a);
        [s0, s1]
    })
}

/// Writes (first K slice) or adds (later slices) `sums` to outputs `r0`, `r0 + step`, ...
///
/// # Safety
/// Those outputs are the caller's elements.
#[inline]
unsafe fn store(out: *mut f32, r0: usize, step: usize, sums: &[f32], first: bool) {
    for (i, &s) in sums.iter().enumerate() {
        // SAFETY: the caller's contract.
        unsafe {
            let o = out.add(r0 + i * step);
            *o = if first { s } else { *o + s };
        }
    }
}

/// The table's `gemm` entry of a pair format for a one-token tile.
///
/// # Safety
/// See [`crate::cpu::dispatch::GemmFn`]; `tile.tokens == 1` and `tile.qtype` is the format
/// `F` implements.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")]
pub(super) unsafe fn gemv<F: PairFormat>(tile: &GemmTile) {
    debug_assert_eq!(tile.tokens, 1);
    let total_cols = tile.k / 32;
    let groups = total_cols.div_ceil(COLS);
    let out = tile.out;
    if groups == 0 {
        for r in 0..tile.rows {
            // SAFETY: the tile's output elements.
            unsafe { *out.add(r) = 0.0 };
        }
        return;
    }
    let valid_last = total_cols - (groups - 1) * COLS;
    // The first super-blocks of the first register tile's rows start loading while the
    // activations are rearranged (the row loop prefetches each next tile's rows itself;
    // a few, so the prefetches do not fill the line-fill buffers the repack loads need).
    let stream = stream_rows(tile.rows);
    let (first_rows, pitch) = if stream > 0 {
        (STREAMS, stream)
    } else {
        (tile.rows.min(4), 1)
    };
    for j in 0..first_rows {
        let bytes = groups.min(4) * F::BLOCK;
        prefetch_group(tile.w.wrapping_add(j * pitch * tile.w_stride), bytes + 63);
    }
    let mut acts = [const { MaybeUninit::<F::Act>::uninit() }; SLICE];
    let mut g0 = 0;
    while g0 < groups {
        let gn = SLICE.min(groups - g0);
        for (i, rec) in acts.iter_mut().take(gn).enumerate() {
            let g = g0 + i;
            let valid = if g + 1 == groups { valid_last } else { COLS };
            // SAFETY: super-block g of the tile's one activation row exists.
            unsafe { F::repack(tile.a, g, valid, rec.as_mut_ptr()) };
        }
        let first = g0 == 0;
        let ws = tile.w_stride;
        let tile_at = |r: usize, pitch: usize, next: usize| Rows {
            w: tile.w.wrapping_add(r * ws + g0 * F::BLOCK),
            pitch,
            next,
            acts: acts.as_ptr().cast::<F::Act>(),
            groups: gn,
            valid_last: if g0 + gn == groups { valid_last } else { COLS },
        };
        let mut r = 0;
        if stream > 0 {
            // Register tile i: rows i, i + stream, i + 2 stream, i + 3 stream.
            for i in 0..stream {
                // SAFETY: those four rows exist (the tile has STREAMS * stream rows or
                // more), records 0..gn were written, and the four outputs belong to the
                // tile.
                unsafe {
                    let s = rows::<F, 2>(&tile_at(i, stream * ws, ws.min(STREAM_LEAD)), false);
                    let sums = [s[0][0], s[0][1], s[1][0], s[1][1]];
                    store(out, i, stream, &sums, first);
                }
            }
            r = STREAMS * stream;
        }
        // Adjacent rows: a tile too short for the streams, or the rows they leave.
        while r < tile.rows {
            let left = tile.rows - r;
            // SAFETY: the rows r.. the tile shape reads exist (at least as many as it
            // names are left), records 0..gn were written, and the outputs of rows
            // r..r + n belong to the tile.
            unsafe {
                let n = if left >= 4 {
                    let s = rows::<F, 2>(&tile_at(r, ws, 4 * ws), false);
                    store(out, r, 1, &[s[0][0], s[0][1], s[1][0], s[1][1]], first);
                    4
                } else if left >= 2 {
                    let s = rows::<F, 1>(&tile_at(r, ws, 2 * ws), false);
                    store(out, r, 1, &s[0], first);
                    2
                } else {
                    let s = rows::<F, 1>(&tile_at(r, ws, 2 * ws), true);
                    store(out, r, 1, &s[0][..1], first);
                    1
                };
                r += n;
            }
        }
        g0 += gn;
    }
}
