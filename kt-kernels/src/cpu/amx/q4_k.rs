//! Q4_K weights as stored in the GGUF (no repack), many tokens: AMX `tdpbusd` over a
//! whole super-block in int32, one f32 epilogue per super-block.
//!
//! A Q4_K row block (256 weights) is `w = d * sc_j * q - dmin * m_j` for sub-block `j`
//! (32 weights, `q` in 0..16, `sc_j` and `m_j` in 0..64); a Q8_K activation block is
//! `a = da * s` (`s` int8). So one block's dot is
//! `da * (d * sum_j sc_j * I_j - dmin * sum_j m_j * S_j)` with `I_j` the int dot of
//! sub-block `j` and `S_j` the activations' sum over it.
//!
//! The sub-block scales are folded into the unpacked weights, so the first sum is one
//! integer dot over the whole super-block: `q * sc_j` (up to 945) does not fit
//! `tdpbusd`'s unsigned byte operand, but with `sc_j = 8 * hi_j + lo_j` (both in 0..8)
//! `q * hi_j` and `q * lo_j` (up to 105) do. Two C tiles accumulate
//! `C_hi = sum q * hi * s` and `C_lo = sum q * lo * s` over the super-block's K = 256 (four
//! `tdpbusd` each, K = 64), and `8 * C_hi + C_lo` is `sum_j sc_j * I_j` exactly (at most
//! 256 * 945 * 128 < 2^31). The minimum term `sum_j m_j * S_j` (at most 8 * 63 * 4096)
//! is four `vpdpwssd` per row in the epilogue: the `S_j` as int16 pairs per token, the
//! `m_j` pairs broadcast. The epilogue thus runs once per super-block, on two C tiles
//! instead of eight (the previous kernel's per-sub-block tiles, whose f32 scaling bounded
//! it).
//!
//! Operand orientation: the weights are the A operand (one 16-row tile per row block,
//! rows in their natural layout: unpacking is masks, shifts and one `vpmullw` per 64
//! bytes and factor, the low byte's product never carrying into the high byte), the
//! activations the B operand, which AMX wants in VNNI form (one 64-byte
//! line = dword `q` of each of 16 tokens). That transposition is done once per token
//! group and K chunk and shared by every row block of the call; transposing the weights
//! instead would cost it per weight, used by only ~16 tokens at V3 prefill. Both operands
//! keep the unpacked order of the sub-blocks ([`sub_offset`]): the activation lines are
//! placed to match.
//!
//! Tiles: 0 and 1 the C tiles (hi, lo), 2..6 the A tiles (two hi/lo pairs, alternating
//! by K step), 6 and 7 the B tiles (alternating). The two C tiles of one (row block,
//! super-block, token group) step are stored to a double buffer and scaled while the
//! next step's `tdpbusd`s run.

use std::arch::x86_64::*;
use std::mem::MaybeUninit;
use std::sync::OnceLock;

use super::blocks::transpose16;
use super::tiles::{tile_dp_u8i8, tile_load, tile_store, tile_zero, TileConfig};
use crate::cpu::avx512::q4_k::scales_mins;
use crate::cpu::dispatch::{GemmFn, GemmTile};

/// Elements per super-block, bytes of a Q4_K and of a Q8_K block.
const QK_K: usize = 256;
const W_BLOCK: usize = 144;
const A_BLOCK: usize = 292;
/// Sub-blocks per super-block.
const SUBS: usize = 8;
/// Weight rows per tile and tokens per group (the C tile is 16 x 16).
const TR: usize = 16;
const TG: usize = 16;
/// Token groups per token block, and the transposed activation records (one per token
/// group and super-block, 4.6 KiB each) of one token block and K chunk: 147 KiB, in L2
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

/// How many super-blocks ahead of the products the weights are unpacked: the tile loads
/// stall on the unpacking's 8 KiB of stores when these have not yet left the store
/// buffer, which one step (with a single token group: one epilogue) does not cover.
/// The weight buffers: the one read by the products, the one of the step being scaled
/// and those unpacked ahead.
const UNPACK_AHEAD: usize = 2;
const WBUFS: usize = UNPACK_AHEAD + 2;

/// Below this many tokens the AVX512 kernel is used: a C tile's 16 token columns would
/// be mostly empty.
pub(crate) const AMX_MIN_TOKENS: usize = 12;

/// The kernel of the level below (AVX512), for small token counts.
static LOWER: OnceLock<GemmFn> = OnceLock::new();

/// Records `lower` as the kernel for tiles with few tokens; returns the AMX kernel.
pub(crate) fn install(lower: GemmFn) -> GemmFn {
    let _ = LOWER.set(lower);
    gemm
}

/// One token group's activations of one super-block, ready for the B tiles.
#[repr(C, align(64))]
struct ActBlock {
    /// Line `l`: 4 elements of each of the 16 tokens; sub-block `j`'s elements
    /// `4i..4i + 4` on line `sub_offset(j) / 4 + i`, matching the unpacked weights.
    q: [[i32; TG]; QK_K / 4],
    /// Per token: `S_2p` in the low and `S_2p+1` in the high int16 of dword `p`.
    sums: [[i32; TG]; SUBS / 2],
    /// `da` per token (0 for the group's missing tokens).
    d: [f32; TG],
}

/// One row block's super-block, unpacked for the A tiles.
#[repr(C, align(64))]
struct WeightBlock {
    /// Row `n`: `q * hi_j` and `q * lo_j` as bytes, sub-block `j` at [`sub_offset`]`(j)`.
    hi: [[u8; QK_K]; TR],
    lo: [[u8; QK_K]; TR],
    /// `d` and `dmin` per row.
    d: [f32; TR],
    dmin: [f32; TR],
    /// Per row: `m_2p` in the low and `m_2p+1` in the high int16 of dword `p`.
    mins: [[i32; SUBS / 2]; TR],
}

/// Where sub-block `j` sits in an unpacked row: quant byte `i` of pair `p = j / 2` holds
/// element `i` of sub-block `2p` (low nibble) and `2p + 1` (high nibble); each 64 bytes
/// of quants unpack to their 64 low nibbles, then their 64 high nibbles.
const fn sub_offset(j: usize) -> usize {
    let p = j / 2;
    (p / 2) * 128 + (j % 2) * 64 + (p % 2) * 32
}

/// The two int32 C tiles of one step: hi at `[0]`, lo at `[1]`, weight row `n` at `[.][n]`.
#[repr(C, align(64))]
struct CTiles([[[i32; TG]; TR]; 2]);

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
    unsafe { gemm_amx(t) };
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,f16c")]
unsafe fn gemm_amx(t: &GemmTile) {
    let nsb = t.k / QK_K;
    let mut acts = MaybeUninit::<[ActBlock; RECORDS]>::uninit();
    let acts = acts.as_mut_ptr().cast::<ActBlock>();
    let mut wbuf = MaybeUninit::<[WeightBlock; WBUFS]>::uninit();
    let wbuf = wbuf.as_mut_ptr().cast::<WeightBlock>();
    let mut cbuf = MaybeUninit::<[CTiles; 2]>::uninit();
    let cbuf = cbuf.as_mut_ptr().cast::<CTiles>();
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
                        transpose_acts(
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
                unsafe { unpack_weights(wblock(l), t.w_stride, rows_of(l / kc), wbuf.add(l)) };
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
                        let mut c = TileConfig::new();
                        for tile in 0..6 {
                            c.set(tile, nr, 64);
                        }
                        c.set(6, 16, 64);
                        c.set(7, 16, 64);
                        // SAFETY: AMX usable (caller); a valid palette-1 configuration
                        // (loading it zeroes the tiles: the previous step stored its C).
                        unsafe { c.load() };
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
                    products(
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
                            unpack_weights(
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
                        finish_step(t, p, cbuf, wbuf, acts, &mut acc, t0, ng, c0 == 0);
                    }
                }
            }
            if let Some(p) = pending {
                // SAFETY: as above.
                unsafe { finish_step(t, p, cbuf, wbuf, acts, &mut acc, t0, ng, c0 == 0) };
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
unsafe fn finish_step(
    t: &GemmTile,
    p: Pending,
    cbuf: *const CTiles,
    wbuf: *const WeightBlock,
    acts: *const ActBlock,
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
        scale(
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

/// Transposes one super-block of `n` (1..=16) tokens' Q8_K rows (`a`, `stride` bytes
/// apart) into `dst`; missing tokens read as zero. The sub-block sums come from the
/// transposed lines (one `vpdpbusd` with ones per line sums each token's 4 bytes).
///
/// # Safety
/// `n` rows of a whole Q8_K block are readable at `a`; `dst` is writable.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")]
unsafe fn transpose_acts(a: *const u8, stride: usize, n: usize, dst: *mut ActBlock) {
    let ones = _mm512_set1_epi8(1);
    let low_half = _mm512_set1_epi32(0xFFFF);
    // SAFETY (whole body): rows tok < n of the block are readable (caller); `dst` is a
    // valid, 64-byte aligned ActBlock; line sub_offset(j) / 4 + 8 <= 64.
    unsafe {
        for quarter in 0..4 {
            let mut r = [_mm512_setzero_si512(); TG];
            for (tok, v) in r.iter_mut().enumerate().take(n) {
                *v = _mm512_loadu_si512(a.add(tok * stride + 4 + 64 * quarter).cast());
            }
            let r = transpose16(&r);
            // Lines 0..8 of the quarter are sub-block 2 * quarter, 8..16 the next.
            let mut sums = [_mm512_setzero_si512(); 2];
            for (half, lines) in r.chunks_exact(8).enumerate() {
                let j = 2 * quarter + half;
                let q = (*dst).q.as_mut_ptr().add(sub_offset(j) / 4);
                for (i, v) in lines.iter().enumerate() {
                    _mm512_store_si512(q.add(i).cast(), *v);
                }
                sums[half] = lines.iter().fold(_mm512_setzero_si512(), |acc, &l| {
                    _mm512_dpbusd_epi32(acc, ones, l)
                });
            }
            // |S_j| <= 32 * 128: an int16 each.
            let pair = _mm512_or_si512(
                _mm512_and_si512(sums[0], low_half),
                _mm512_slli_epi32::<16>(sums[1]),
            );
            _mm512_store_si512((*dst).sums[quarter].as_mut_ptr().cast(), pair);
        }
        let d = &mut (*dst).d;
        for (tok, d) in d.iter_mut().enumerate() {
            *d = if tok < n {
                a.add(tok * stride).cast::<f32>().read_unaligned()
            } else {
                0.0
            };
        }
    }
}

/// `vpermw` indices putting word `2 * a` (int32 lane `a`'s low word) in words 0..16 and
/// word `2 * b` in words 16..32.
#[inline]
#[target_feature(enable = "avx512f,avx512bw")]
fn two_lanes(a: usize, b: usize) -> __m512i {
    _mm512_mask_blend_epi16(
        0xFFFF_0000,
        _mm512_set1_epi16(2 * a as i16),
        _mm512_set1_epi16(2 * b as i16),
    )
}

/// Unpacks `nr` weight rows' Q4_K block (`w`, rows `stride` bytes apart) into `dst`.
///
/// # Safety
/// `nr` (<= 16) blocks are readable at `w`; `dst` is writable.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,f16c")]
unsafe fn unpack_weights(w: *const u8, stride: usize, nr: usize, dst: *mut WeightBlock) {
    let nib = _mm512_set1_epi8(0x0F);
    let seven = _mm512_set1_epi16(7);
    // Nibble plane `nib` of quant half `h` holds sub-blocks 4h + nib (bytes 0..32) and
    // 4h + 2 + nib (bytes 32..64): its multiplier words come from those scale lanes.
    let pick = [
        [two_lanes(0, 2), two_lanes(1, 3)],
        [two_lanes(4, 6), two_lanes(5, 7)],
    ];
    // Words 0..8: the mins' int32 lanes 0..8, packed in pairs.
    let pack = _mm512_set_epi64(
        0,
        0,
        0,
        0,
        0,
        0,
        0x000E_000C_000A_0008,
        0x0006_0004_0002_0000,
    );
    for n in 0..nr {
        // SAFETY: block n is readable (caller): d, dmin at 0..4, scales at 4..16 (and
        // scales_mins reads 4 quant bytes past them), quants at 16..144; row n of `dst`.
        unsafe {
            let b = w.add(n * stride);
            let dd = _mm_cvtph_ps(_mm_cvtsi32_si128(b.cast::<i32>().read_unaligned()));
            (*dst).d[n] = _mm_cvtss_f32(dd);
            (*dst).dmin[n] = _mm_cvtss_f32(_mm_movehdup_ps(dd));
            let (sc, m) = scales_mins(b.add(4));
            _mm_storeu_si128(
                (*dst).mins[n].as_mut_ptr().cast(),
                _mm512_castsi512_si128(_mm512_permutexvar_epi16(pack, m)),
            );
            let (hi, lo) = ((*dst).hi[n].as_mut_ptr(), (*dst).lo[n].as_mut_ptr());
            for (half, pick) in pick.iter().enumerate() {
                let v = _mm512_loadu_si512(b.add(16 + 64 * half).cast());
                let planes = [
                    _mm512_and_si512(v, nib),
                    _mm512_and_si512(_mm512_srli_epi16::<4>(v), nib),
                ];
                for (plane, (&q, &idx)) in planes.iter().zip(pick).enumerate() {
                    // Each word is q0 + 256 q1 with q < 16: times a multiplier < 8 the
                    // low byte's product stays below 256, so the bytes are q0 * x, q1 * x.
                    let x = _mm512_permutexvar_epi16(idx, sc);
                    let at = 128 * half + 64 * plane;
                    _mm512_store_si512(
                        hi.add(at).cast(),
                        _mm512_mullo_epi16(q, _mm512_srli_epi16::<3>(x)),
                    );
                    _mm512_store_si512(
                        lo.add(at).cast(),
                        _mm512_mullo_epi16(q, _mm512_and_si512(x, seven)),
                    );
                }
            }
        }
    }
}

/// One row block and token group's super-block products into `c`: `C_hi` and `C_lo`.
///
/// # Safety
/// The tile configuration of [`gemm_amx`] is loaded (A and C rows = the rows unpacked
/// in `wb`); `wb`, `ab` are initialised and `c` writable.
#[inline]
unsafe fn products(wb: *const WeightBlock, ab: *const ActBlock, c: *mut CTiles) {
    // SAFETY (whole body): every address is inside `wb` (A rows of 256 bytes, 64 read
    // from 64 * step <= 192), `ab` (16 lines of 64 bytes from line 16 * step) or `c`
    // (two 16 x 64-byte tiles); AMX state is configured (caller).
    unsafe {
        let hi = (*wb).hi.as_ptr().cast::<u8>();
        let lo = (*wb).lo.as_ptr().cast::<u8>();
        let b = (*ab).q.as_ptr().cast::<u8>();
        let c = (*c).0.as_mut_ptr().cast::<u8>();
        let (sa, sb, sc) = (QK_K, 64usize, 64usize);
        tile_zero!(0);
        tile_zero!(1);
        // K steps alternate between two sets of A and B tiles, so a step's loads need
        // not wait for the previous step's products to release their tiles.
        for step in [0usize, 2] {
            tile_load!(2, hi.add(64 * step), sa);
            tile_load!(3, lo.add(64 * step), sa);
            tile_load!(6, b.add(1024 * step), sb);
            tile_dp_u8i8!(0, 2, 6);
            tile_dp_u8i8!(1, 3, 6);
            tile_load!(4, hi.add(64 * step + 64), sa);
            tile_load!(5, lo.add(64 * step + 64), sa);
            tile_load!(7, b.add(1024 * step + 1024), sb);
            tile_dp_u8i8!(0, 4, 7);
            tile_dp_u8i8!(1, 5, 7);
        }
        tile_store!(0, c, sc);
        tile_store!(1, c.add(1024), sc);
    }
}

/// Adds one step's scaled products to the accumulators of its token group:
/// `acc[n] += da * (d[n] * (8 C_hi[n] + C_lo[n]) - dmin[n] * sum_j m_j[n] S_j)`.
///
/// # Safety
/// `c` holds the step's products for `nr` rows, `wb` and `ab` its unpacked weights and
/// activations.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")]
unsafe fn scale(
    c: *const CTiles,
    wb: *const WeightBlock,
    ab: *const ActBlock,
    nr: usize,
    acc: &mut [__m512; TR],
) {
    // SAFETY (whole body): rows n < nr of the initialised buffers (caller).
    unsafe {
        let da = _mm512_load_ps((*ab).d.as_ptr());
        let sums: [__m512i; SUBS / 2] =
            std::array::from_fn(|p| _mm512_load_si512((*ab).sums[p].as_ptr().cast()));
        for (n, acc) in acc.iter_mut().enumerate().take(nr) {
            let hi = _mm512_load_si512((*c).0[0][n].as_ptr().cast());
            let lo = _mm512_load_si512((*c).0[1][n].as_ptr().cast());
            let dot = _mm512_add_epi32(_mm512_slli_epi32::<3>(hi), lo);
            let m = &(*wb).mins[n];
            // Two chains of two, so a row waits on fewer dependent `vpdpwssd`s.
            let zero = _mm512_setzero_si512();
            let even = _mm512_dpwssd_epi32(zero, sums[0], _mm512_set1_epi32(m[0]));
            let even = _mm512_dpwssd_epi32(even, sums[2], _mm512_set1_epi32(m[2]));
            let odd = _mm512_dpwssd_epi32(zero, sums[1], _mm512_set1_epi32(m[1]));
            let odd = _mm512_dpwssd_epi32(odd, sums[3], _mm512_set1_epi32(m[3]));
            let mins = _mm512_add_epi32(even, odd);
            let v = _mm512_mul_ps(_mm512_cvtepi32_ps(dot), _mm512_set1_ps((*wb).d[n]));
            let v = _mm512_fnmadd_ps(_mm512_cvtepi32_ps(mins), _mm512_set1_ps((*wb).dmin[n]), v);
            *acc = _mm512_fmadd_ps(v, da, *acc);
        }
    }
}
