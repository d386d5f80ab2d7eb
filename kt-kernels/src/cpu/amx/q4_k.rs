//! Q4_K weights as stored in the GGUF (no repack), many tokens, on AMX `tdpbusd`: the
//! pipeline shared by two step kernels that differ in where the sub-block scales go.
//!
//! A Q4_K row block (256 weights) is `w = d * sc_j * q - dmin * m_j` for sub-block `j`
//! (32 weights, `q` in 0..16, `sc_j` and `m_j` in 0..64); a Q8_K activation block is
//! `a = da * s` (`s` int8) with the sums of its 16-element groups. So one block's dot is
//! `da * (d * sum_j sc_j * I_j - dmin * sum_j m_j * S_j)` with `I_j` the int8 dot of
//! sub-block `j` and `S_j` the activations' sum over it.
//!
//! - [`q4_k_per_sub`](super::q4_k_per_sub): one C tile per sub-block (`tdpbusd` with
//!   K = 32 on the plain quants), the scales applied in the f32 epilogue: eight C tiles
//!   stored and scaled per step, but a cheap unpacking.
//! - [`q4_k_folded`](super::q4_k_folded): the scales folded into the unpacked weights
//!   (`q * hi_j`, `q * lo_j` with `sc_j = 8 hi_j + lo_j`), two C tiles accumulating the
//!   whole super-block in int32: a quarter of the C stores and a lighter epilogue, for
//!   twice the unpacking (two A operands, one multiply each).
//!
//! The unpacking is per row block and super-block, shared by the token groups of a token
//! block, the epilogue per token group: with one or two groups (the ~16 tokens per expert
//! of V3 prefill) the folded kernel's dearer unpacking outweighs its lighter epilogue, with
//! three or more it wins (dev VM, 1 thread, one 2048x7168 tile, weights resident: 16 / 32
//! / 64 / 512 tokens 1.32 / 2.20 / 3.78 / 31.8 ms folded, 1.20 / 2.13 / 4.31 / 48.8 per
//! sub-block; `bench-results/2026-11-22-s6-kqamx`). So calls of more than
//! [`FOLD_MIN_TOKENS`] tokens take the folded kernel (a threshold set on the device).
//!
//! Operand orientation: the weights are the A operand (one 16-row tile per row block,
//! rows in their natural layout), the activations the B operand, which AMX wants in VNNI
//! form (one 64-byte line = dword `q` of each of 16 tokens). That transposition is done
//! once per token group and K chunk and shared by every row block of the call;
//! transposing the weights instead would cost it per weight, used by only ~16 tokens at
//! V3 prefill.
//!
//! The C tiles of one (row block, super-block, token group) step are stored to a double
//! buffer and scaled while the next step's `tdpbusd`s run.

use std::arch::x86_64::*;
use std::mem::MaybeUninit;
use std::sync::OnceLock;

use super::q4_k_folded::Folded;
use super::q4_k_per_sub::PerSub;
use super::tiles::TileConfig;
use crate::cpu::dispatch::{GemmFn, GemmTile};

/// Elements per super-block, bytes of a Q4_K and of a Q8_K block.
pub(super) const QK_K: usize = 256;
const W_BLOCK: usize = 144;
const A_BLOCK: usize = 292;
/// Sub-blocks per super-block.
pub(super) const SUBS: usize = 8;
/// Weight rows per tile and tokens per group (the C tile is 16 x 16).
pub(super) const TR: usize = 16;
pub(super) const TG: usize = 16;
/// Token groups per token block, and the transposed activation records (one per token
/// group and super-block, ~4.5 KiB each) of one token block and K chunk: 147 KiB, in L2
/// while every row block passes over them. A chunk holds `RECORDS / groups`
/// super-blocks: the whole of a 7168-long row for one token group (V3 prefill), so each
/// row block streams its rows from start to end.
const GROUPS: usize = 4;
const RECORDS: usize = 32;
/// Weight prefetch distance, in super-blocks of the row block (16 rows x 144 bytes), into
/// L2: the weights stream from DRAM once per call, so they must be requested before the
/// unpacking reads them (one super-block step is ~0.4 µs of work). L2 rather than L1: a
/// step's 16 rows are ~50 lines, more than the L1 miss buffers hold. Dev VM, 1 thread,
/// `kt-bench matmul --formats q4_k --tokens 16` (from DRAM), 2048x7168 / 7168x2048:
/// L1 at 4 steps 1.50 / 1.59 ms, L2 at 4: 1.46 / 1.52, L2 at 2: 1.42 / 1.47 (best of 3).
/// Near a row block's end it continues with the next one.
const PREFETCH: usize = 2;

/// How many super-blocks ahead of the products the weights are unpacked, and the weight
/// buffers: the one read by the products, the one of the step being scaled and those
/// unpacked ahead. Two ahead cost both step kernels 3-10% (dev VM, 1 thread, 7168x2048
/// per sub-block at 16 tokens, folded at 64).
const UNPACK_AHEAD: usize = 1;
const WBUFS: usize = UNPACK_AHEAD + 2;

/// Below this many tokens the AVX512 kernel is used: a C tile's 16 token columns would
/// be mostly empty.
pub(crate) const AMX_MIN_TOKENS: usize = 12;

/// Above this many tokens the folded step kernel is used (see the module comment). 64, not
/// the dev VM's crossover of 32: on the device (16 threads, two calls, session 6) the MoE
/// prefill, whose calls carry at most 64 tokens per expert, ran V3 Q4_K at 512 tokens
/// 10-14% slower with folded calls above 32 tokens (191-241 ms vs 174-213 per sub-block
/// only) and V2-Lite no faster, while one 512-token GEMM gained 4-6%
/// (`bench-results/2026-11-22-s6-final`). So the MoE keeps the per-sub-block kernel.
pub(crate) const FOLD_MIN_TOKENS: usize = 64;

/// The kernel of the level below (AVX512), for small token counts.
static LOWER: OnceLock<GemmFn> = OnceLock::new();

/// Records `lower` as the kernel for tiles with few tokens; returns the AMX kernel.
pub(crate) fn install(lower: GemmFn) -> GemmFn {
    let _ = LOWER.set(lower);
    gemm
}

/// What the pipeline of [`gemm_amx`] needs of a step kernel: its scratch records and the
/// four stages of a step.
///
/// # Safety
/// Implementations read and write only the records and rows they are given, and
/// `products` issues tile instructions valid under the configuration of `config`.
pub(super) unsafe trait StepKernel {
    /// One token group's activations of one super-block, ready for the B tiles.
    type Acts;
    /// One row block's super-block, unpacked for the A tiles.
    type Weights;
    /// The int32 C tiles of one step.
    type Products;

    /// The tile configuration for row blocks of `nr` rows.
    fn config(nr: usize) -> TileConfig;

    /// Transposes one super-block of `n` (1..=16) tokens' Q8_K rows (`a`, `stride` bytes
    /// apart) into `dst`; missing tokens read as zero.
    ///
    /// # Safety
    /// `n` rows of a whole Q8_K block are readable at `a`; `dst` is writable.
    unsafe fn transpose_acts(a: *const u8, stride: usize, n: usize, dst: *mut Self::Acts);

    /// Unpacks `nr` (<= 16) weight rows' Q4_K block (`w`, rows `stride` bytes apart).
    ///
    /// # Safety
    /// `nr` blocks are readable at `w`; `dst` is writable.
    unsafe fn unpack(w: *const u8, stride: usize, nr: usize, dst: *mut Self::Weights);

    /// The step's tile products into `c`.
    ///
    /// # Safety
    /// `config` of the rows unpacked in `wb` is loaded; `wb`, `ab` are initialised and
    /// `c` writable.
    unsafe fn products(wb: *const Self::Weights, ab: *const Self::Acts, c: *mut Self::Products);

    /// Adds the step's scaled products to the token group's accumulators (`acc[n]`: row
    /// `n`, 16 tokens).
    ///
    /// # Safety
    /// `c` holds the step's products for `nr` rows, `wb` and `ab` its weights and
    /// activations.
    unsafe fn scale(
        c: *const Self::Products,
        wb: *const Self::Weights,
        ab: *const Self::Acts,
        nr: usize,
        acc: &mut [__m512; TR],
    );
}

/// Where sub-block `j` sits in an unpacked row: quant byte `i` of pair `p = j / 2` holds
/// element `i` of sub-block `2p` (low nibble) and `2p + 1` (high nibble); each 64 bytes
/// of quants unpack to their 64 low nibbles, then their 64 high nibbles.
pub(super) const fn sub_offset(j: usize) -> usize {
    let p = j / 2;
    (p / 2) * 128 + (j % 2) * 64 + (p % 2) * 32
}

/// One step whose C tiles wait to be scaled.
#[derive(Clone, Copy)]
struct Pending {
    cbuf: usize,
    wbuf: usize,
    act: usize,
    group: usize,
    /// Its row block, and whether it is that block's last step in the K chunk.
    block: usize,
    last: bool,
}

/// # Safety
/// As [`GemmFn`]: valid tile extents, exclusive output, `Isa::Amx.check()` passed.
pub(crate) unsafe fn gemm(t: &GemmTile) {
    if t.tokens < AMX_MIN_TOKENS || !t.k.is_multiple_of(QK_K) {
        let lower = LOWER.get().expect("installed with the AMX table");
        // SAFETY: forwarded contract; the lower kernel is the AVX512 table's.
        unsafe { lower(t) };
        return;
    }
    // SAFETY: forwarded.
    unsafe {
        if t.tokens > FOLD_MIN_TOKENS {
            gemm_amx::<Folded>(t)
        } else {
            gemm_amx::<PerSub>(t)
        }
    };
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,f16c")]
unsafe fn gemm_amx<K: StepKernel>(t: &GemmTile) {
    let nsb = t.k / QK_K;
    let mut acts = MaybeUninit::<[K::Acts; RECORDS]>::uninit();
    let acts = acts.as_mut_ptr().cast::<K::Acts>();
    let mut wbuf = MaybeUninit::<[K::Weights; WBUFS]>::uninit();
    let wbuf = wbuf.as_mut_ptr().cast::<K::Weights>();
    let mut cbuf = MaybeUninit::<[K::Products; 2]>::uninit();
    let cbuf = cbuf.as_mut_ptr().cast::<K::Products>();
    // Accumulators of the row blocks in flight (by parity): group g, row n at
    // [g][n] (16 tokens each).
    let mut acc = [[[_mm512_setzero_ps(); TR]; GROUPS]; 2];
    let mut loaded_rows = 0;
    for t0 in (0..t.tokens).step_by(GROUPS * TG) {
        let ntb = (GROUPS * TG).min(t.tokens - t0);
        let ng = ntb.div_ceil(TG);
        let chunk = RECORDS / ng;
        for c0 in (0..nsb).step_by(chunk) {
            let kc = chunk.min(nsb - c0);
            for g in 0..ng {
                let first = t0 + g * TG;
                let n = TG.min(t.tokens - first);
                for s in 0..kc {
                    // SAFETY: tokens first..first + n are readable activation rows of
                    // the tile, super-block c0 + s < nsb of each; the record is inside
                    // `acts` (g * chunk + s < ng * chunk <= RECORDS).
                    unsafe {
                        K::transpose_acts(
                            t.a.add(first * t.a_stride + (c0 + s) * A_BLOCK),
                            t.a_stride,
                            n,
                            acts.add(g * chunk + s),
                        )
                    };
                }
            }
            // One pipeline over every (row block, super-block, token group) step of
            // the chunk, so neither the first unpacking nor the last scaling of a row
            // block waits: step i's products overlap step i - 1's scaling, and
            // super-block L (counted over row blocks) is unpacked UNPACK_AHEAD
            // super-blocks ahead into weight buffer L % WBUFS. Accumulators alternate by
            // row block parity.
            let steps_rb = kc * ng;
            let nrb = t.rows.div_ceil(TR);
            let rows_of = |rb: usize| TR.min(t.rows - rb * TR);
            let wblock = |l: usize| {
                let (rb, s) = (l / kc, l % kc);
                // SAFETY (for callers): rb < nrb, s < kc: inside the tile's weights.
                t.w.wrapping_add(rb * TR * t.w_stride + (c0 + s) * W_BLOCK)
            };
            for l in 0..UNPACK_AHEAD.min(nrb * kc) {
                // SAFETY: super-block l of the chunk (counted over row blocks) is inside
                // the weights; buffer l is inside `wbuf`.
                unsafe { K::unpack(wblock(l), t.w_stride, rows_of(l / kc), wbuf.add(l)) };
            }
            let mut pending: Option<Pending> = None;
            for step in 0..nrb * steps_rb {
                let (rb, i) = (step / steps_rb, step % steps_rb);
                let (s, g) = (i / ng, i % ng);
                let l = rb * kc + s;
                let nr = rows_of(rb);
                if i == 0 {
                    acc[rb & 1][..ng]
                        .iter_mut()
                        .for_each(|a| *a = [_mm512_setzero_ps(); TR]);
                    if loaded_rows != nr {
                        // SAFETY: AMX usable (caller); a valid palette-1 configuration
                        // (loading it zeroes the tiles: the previous step stored its C).
                        unsafe { K::config(nr).load() };
                        loaded_rows = nr;
                    }
                }
                // SAFETY (whole block): every weight block named is inside the tile
                // (row block < nrb, super-block < c0 + kc); scratch indices are in
                // bounds (% WBUFS, & 1; g * chunk + s < RECORDS). Products read weight
                // buffer l % WBUFS, super-block l + UNPACK_AHEAD goes to its buffer, and
                // the step scaled here (step - 1: super-block l or l - 1) reads neither
                // that nor the C buffer written now.
                unsafe {
                    K::products(
                        wbuf.add(l % WBUFS),
                        acts.add(g * chunk + s),
                        cbuf.add(step & 1),
                    );
                    if g == 0 {
                        let ahead = l + PREFETCH;
                        if ahead < nrb * kc {
                            prefetch_rows(wblock(ahead), t.w_stride, rows_of(ahead / kc));
                        }
                        let next = l + UNPACK_AHEAD;
                        if next < nrb * kc {
                            K::unpack(
                                wblock(next),
                                t.w_stride,
                                rows_of(next / kc),
                                wbuf.add(next % WBUFS),
                            );
                        }
                    }
                    let now = Pending {
                        cbuf: step & 1,
                        wbuf: l % WBUFS,
                        act: g * chunk + s,
                        group: g,
                        block: rb,
                        last: i + 1 == steps_rb,
                    };
                    if let Some(p) = pending.replace(now) {
                        finish_step::<K>(t, p, cbuf, wbuf, acts, &mut acc, t0, ng, c0 == 0);
                    }
                }
            }
            if let Some(p) = pending {
                // SAFETY: as above.
                unsafe { finish_step::<K>(t, p, cbuf, wbuf, acts, &mut acc, t0, ng, c0 == 0) };
            }
        }
    }
    // SAFETY: AMX is enabled (caller); ends this call's use of the tiles.
    unsafe { super::tiles::release() };
}

/// Scales step `p` into its row block's accumulators; after the block's last step, adds
/// them to the output (stores them for the first K chunk).
///
/// # Safety
/// As the steps of [`gemm_amx`]: `p` names initialised scratch, and the output rows of
/// its row block and tokens `t0..t0 + 16 * ng` are the caller's.
#[allow(clippy::too_many_arguments)]
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq")]
unsafe fn finish_step<K: StepKernel>(
    t: &GemmTile,
    p: Pending,
    cbuf: *const K::Products,
    wbuf: *const K::Weights,
    acts: *const K::Acts,
    acc: &mut [[[__m512; TR]; GROUPS]; 2],
    t0: usize,
    ng: usize,
    first_chunk: bool,
) {
    let r0 = p.block * TR;
    let nr = TR.min(t.rows - r0);
    let acc = &mut acc[p.block & 1];
    // SAFETY: the caller's contract.
    unsafe {
        K::scale(
            cbuf.add(p.cbuf),
            wbuf.add(p.wbuf),
            acts.add(p.act),
            nr,
            &mut acc[p.group],
        )
    };
    if !p.last {
        return;
    }
    for (g, a) in acc.iter().enumerate().take(ng) {
        let first = t0 + g * TG;
        let n_tok = TG.min(t.tokens - first);
        let mut lanes = [[0f32; TG]; TR];
        for (n, v) in a.iter().enumerate().take(nr) {
            // SAFETY: a 64-byte store into a local array row.
            unsafe { _mm512_storeu_ps(lanes[n].as_mut_ptr(), *v) };
        }
        for tok in 0..n_tok {
            for (n, row) in lanes.iter().enumerate().take(nr) {
                // SAFETY: token first + tok < tokens, row r0 + n < rows: inside the
                // caller's output tile.
                unsafe {
                    let o = t.out.add((first + tok) * t.ldo + r0 + n);
                    *o = if first_chunk { row[tok] } else { *o + row[tok] };
                }
            }
        }
    }
}

/// Prefetches one Q4_K block of `nr` rows (`stride` bytes apart) into L2.
///
/// # Safety
/// The blocks lie inside the weights (a prefetch never faults, but the address
/// arithmetic must stay inside the allocation).
#[inline]
#[target_feature(enable = "sse")]
unsafe fn prefetch_rows(w: *const u8, stride: usize, nr: usize) {
    for n in 0..nr {
        // SAFETY: bytes 0..W_BLOCK of block n are inside the weights (caller).
        unsafe {
            let b = w.add(n * stride);
            _mm_prefetch::<_MM_HINT_T1>(b.cast());
            _mm_prefetch::<_MM_HINT_T1>(b.add(64).cast());
            _mm_prefetch::<_MM_HINT_T1>(b.add(128).cast());
            _mm_prefetch::<_MM_HINT_T1>(b.add(W_BLOCK - 1).cast());
        }
    }
}
