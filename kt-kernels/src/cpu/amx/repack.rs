//! AMX GEMM over the repacked expert layouts (prefill: many tokens per expert).
//!
//! BF16: blocks of 32 tokens x 32 outputs: tiles 0..4 are the C blocks `C[mi][ni]`
//! (`2 * mi + ni`), tiles 4, 5 the activation rows (A, 16 tokens each), tiles 6, 7 the
//! weight panels (B, already in VNNI form in memory: one 64-byte line per tile row);
//! `tdpbf16ps` accumulates all of K in C and C is stored straight to the output.
//!
//! INT8/INT4: blocks of 16 tokens x 64 outputs (tiles 0..4: four panels' C tiles, 4, 5:
//! the group's A K-steps, 6, 7: B; see `gemm_int`). Per group of G reduction elements,
//! `tdpbssd` accumulates the group's integer dot in C (G/64 K-steps of 64, or one of 32
//! for G=32), the C tiles are stored and scaled in f32 by `d_w[n] * d_a[t]` into an f32
//! accumulator block; INT4 panels are first unpacked to int8 (`q + 8` nibbles minus 8)
//! into an on-stack B buffer.
//! INT4 with folded scales (`moe::repack::fold`) and per-token activation rows: the
//! unpack writes `m[n, g] * q` (int8) instead of `q`, so C accumulates a row's integer
//! dot across groups; it makes a round trip through an int32 block per K chunk of 128
//! (tile load, `tdpbssd`s, tile store: no vector work) and is scaled once at the end by
//! `d_n * d_a[t]` (see `gemm_int4_folded`); its row blocks share a super-block's tokens
//! evenly (`ceil(T / blocks)` rows each), since `tdpbssd` time follows the configured rows.
//! Rows past the last token are never loaded or stored: the A and C tiles of the last
//! block are configured with the rows that remain.
//!
//! The weights stream from DRAM once per item (at prefill each expert's tokens fit one
//! item's token block): the kernel prefetches the stream `Tile::prefetch` groups ahead,
//! continuing into the next panels near their end and starting at the item's
//! first groups, so no group of the item is left to demand misses.

use std::arch::x86_64::*;
use std::mem::MaybeUninit;

use super::tiles::{tile_dp_bf16, tile_dp_i8, tile_load, tile_store, tile_zero, TileConfig};
use crate::cpu::moe::repack::{ActScales, PrefetchLevel, RepackFormat, Tile, PANEL};

/// One K-step of the INT kernels over up to four panels: each panel's B lines (`$b[i]`,
/// offset `$kb`) into tile 6 or 7, alternating so a load never waits on the multiply just
/// issued, times the A tile `$a`, into C tile `i`. Expands inside the kernels' unsafe
/// blocks (the tile macros' safety conditions are theirs).
macro_rules! panel_kstep {
    ($b:expr, $nt:expr, $a:literal, $kb:expr) => {
        tile_load!(6, $b[0].add($kb), 64usize);
        tile_dp_i8!(0, $a, 6);
        if $nt > 1 {
            tile_load!(7, $b[1].add($kb), 64usize);
            tile_dp_i8!(1, $a, 7);
        }
        if $nt > 2 {
            tile_load!(6, $b[2].add($kb), 64usize);
            tile_dp_i8!(2, $a, 6);
        }
        if $nt > 3 {
            tile_load!(7, $b[3].add($kb), 64usize);
            tile_dp_i8!(3, $a, 7);
        }
    };
}

/// Tokens and panels per BF16 block.
const MB: usize = 32;
const NB: usize = 2;
/// Prefetches group `g` of panels `p..p + n` (those inside the tile) to the tile's
/// prefetch level.
///
/// # Safety
/// As `gemm`: the tile's panels are valid memory (a prefetch never faults, but the
/// address arithmetic must stay inside the allocation).
#[target_feature(enable = "sse")]
unsafe fn prefetch_group(t: &Tile, p: usize, n: usize, g: usize, group: usize) {
    let (pb, gb) = (t.format.panel_bytes(t.k), t.format.panel_bytes(group));
    for ni in p..(p + n).min(t.panels) {
        // SAFETY: panel ni < panels and group g < k / group lie inside the tile's data.
        let base = unsafe { t.w.add(ni * pb + g * gb) };
        for l in (0..gb).step_by(64) {
            // SAFETY: as above (l < gb).
            unsafe {
                match t.prefetch.level {
                    PrefetchLevel::L1 => _mm_prefetch::<_MM_HINT_T0>(base.add(l) as *const i8),
                    PrefetchLevel::L2 => _mm_prefetch::<_MM_HINT_T1>(base.add(l) as *const i8),
                }
            };
        }
    }
}

/// Prefetches unit `ahead` (a group or fold chunk of `unit` reduction elements, `units`
/// per row) of the weight stream of panels `q0..q0 + nq` in super-block `s0`: past these
/// panels' last unit the stream goes on in the next panels or, after the last panels, in
/// the next super-block's first. `pf == 0` leaves it to the hardware prefetchers.
///
/// # Safety
/// As [`prefetch_group`].
#[inline(always)]
unsafe fn prefetch_ahead(
    t: &Tile,
    (q0, nq): (usize, usize),
    s0: usize,
    pf: usize,
    ahead: usize,
    (units, unit): (usize, usize),
) {
    // SAFETY: every branch names panels and units inside the tile (caller).
    unsafe {
        if pf == 0 {
        } else if ahead < units {
            prefetch_group(t, q0, nq, ahead, unit);
        } else if q0 + nq < t.panels {
            prefetch_group(t, q0 + nq, nq, ahead - units, unit);
        } else if s0 + SB < t.tokens {
            prefetch_group(t, 0, nq, ahead - units, unit);
        }
    }
}

/// Loads the A tiles of the INT kernels: tile 4 with token rows `m0..m0 + m` at reduction
/// offset `k0` and, for a two-step unit, tile 5 with the next `kstep` bytes, in row blocks
/// of `rb` (<= 16) rows (see [`config_rows`]).
///
/// # Safety
/// AMX enabled; rows `m0..m0 + m` and bytes `k0..k0 + kstep * (1 + two_k)` of the
/// activations lie inside `t.a` (`t.a_rows` rows of `t.a_stride` bytes).
#[inline(always)]
unsafe fn load_a_tiles(
    t: &Tile,
    (m0, m): (usize, usize),
    k0: usize,
    (rb, kstep, two_k): (usize, usize, bool),
    loaded: &mut Option<usize>,
) {
    // SAFETY: AMX is enabled and the rows and bytes lie inside the activations (caller).
    unsafe {
        config_rows(t, (m0, m), (rb, kstep), loaded);
        let a = t.a.add(m0 * t.a_stride + k0);
        tile_load!(4, a, t.a_stride);
        if two_k {
            tile_load!(5, a.add(kstep), t.a_stride);
        }
    }
}

/// Loads the INT kernels' tile configuration for the row block at `m0` (`m` tokens of a
/// kernel whose row blocks hold `rb` rows) unless `loaded` (the configured row count)
/// says it is in place: `rb` rows when that many are readable from `m0` on (the extra
/// rows' results are never used), else exactly the `m` rows left. A new configuration
/// zeroes every tile, so the folded kernel calls this before it fills its C tiles.
///
/// # Safety
/// AMX enabled.
#[inline(always)]
unsafe fn config_rows(
    t: &Tile,
    (m0, m): (usize, usize),
    (rb, kstep): (usize, usize),
    loaded: &mut Option<usize>,
) {
    let want = if t.a_rows - m0 >= rb { rb } else { m };
    if *loaded != Some(want) {
        // SAFETY: AMX is enabled (caller).
        unsafe { config_int(want, kstep).load() };
        *loaded = Some(want);
    }
}

#[repr(C, align(64))]
struct Block<T: Copy, const N: usize>([T; N]);

/// # Safety
/// As `Kernel::run`: valid tile extents, exclusive output, and `Isa::Amx.check()` passed.
pub(crate) unsafe fn gemm(t: &Tile) {
    // SAFETY: forwarded.
    unsafe {
        match t.format {
            RepackFormat::Bf16 => gemm_bf16(t),
            RepackFormat::Int4 { group } => match t.fold {
                Some(fold) if t.act == ActScales::PerToken => gemm_int4_folded(t, group, fold),
                _ => gemm_int::<true>(t, group),
            },
            RepackFormat::Int8 { group } => gemm_int::<false>(t, group),
        }
    }
}

/// The BF16 configuration of one 32-token block with `m` (1..=32) tokens: A/C rows follow
/// the tokens; `kb` bytes per A row and `kb / 4` B rows per K-step.
fn config(m: usize, kb: usize, brows: usize) -> TileConfig {
    let mut c = TileConfig::new();
    let (r0, r1) = (m.min(16), m.saturating_sub(16));
    for (mi, rows) in [(0, r0), (1, r1)] {
        if rows > 0 {
            c.set(4 + mi, rows, kb);
            c.set(2 * mi, rows, 64);
            c.set(2 * mi + 1, rows, 64);
        }
    }
    c.set(6, brows, 64);
    c.set(7, brows, 64);
    c
}

/// Panels per INT block (at most): tiles 0..4 are their C tiles for one 16-token row
/// block.
const NQ: usize = 4;
/// Panels per INT block for a tile of `tokens` tokens: 4 from two 16-token row blocks
/// on, else 2. Measured on one core of the dev VM, INT4 g128 (best of 20): with 16 or
/// 24 tokens 4 panels were 10-20% slower than 2 on 7168 x 2048 (weights streamed from
/// L3/DRAM: four panels' groups are unpacked and prefetched at once) and 10% slower on
/// 1408 x 2048; with 32 tokens level on 7168 x 2048 and 11% faster on 1408 x 2048; with
/// 48 tokens 6% and 11% faster.
fn panels_per_block(tokens: usize) -> usize {
    if tokens >= 32 {
        NQ
    } else {
        2
    }
}

/// Tokens per INT super-block: each group of a block of panels is unpacked once for all
/// of them. 64 rather than 32 (unpacking twice as often costs ~20%); a larger span of
/// panels per pass (8: 32 KiB of accumulators) was ~25% slower on the dev VM, the
/// accumulators then crowding the A and B lines out of L1.
const SB: usize = 64;
/// Row stride (floats) of the INT accumulators and of one stored C block.
const LDC: usize = NQ * PANEL;

/// The INT kernel's tile configuration for `rows` (1..=16) token rows: C tiles 0..4
/// (`rows` x 16 i32), A tiles 4, 5 (`rows` x `kb` bytes: the group's first and second
/// K-step), B tiles 6, 7 (`kb / 4` lines of 64 bytes).
fn config_int(rows: usize, kb: usize) -> TileConfig {
    let mut c = TileConfig::new();
    for t in 0..4 {
        c.set(t, rows, 64);
    }
    c.set(4, rows, kb);
    c.set(5, rows, kb);
    c.set(6, kb / 4, 64);
    c.set(7, kb / 4, 64);
    c
}

/// One stored C block (a group's integer dots of up to 16 tokens x `nt` panels) in
/// `cbuf[buf]`, waiting to be scaled into the accumulators: scaling runs while the next
/// block's `tdpbssd`s execute, and its vector loads come a block after the tile store.
#[derive(Clone, Copy)]
struct Pending {
    buf: usize,
    /// First token (relative to the super-block), token count, group, panel count.
    m0: usize,
    m: usize,
    g: usize,
    nt: usize,
}

/// INT8/INT4 GEMM over blocks of 16 tokens x 4 panels (1 x 4 C tiles; 2 panels for
/// fewer than 32 tokens, see [`panels_per_block`]). Per group and row block the A tiles
/// (the group's one or two K-steps) are loaded once and the four panels' B lines stream
/// through tiles 6 and 7: an A tile is loaded once per 4 (or 8) `tdpbssd`s rather than
/// once per 2 as with 2 x 2 blocks of 32 tokens x 2 panels, and the four C tiles still
/// give four independent accumulation chains. Measured on one
/// core of the dev VM (1408 x 2048, 48 tokens, INT4 g128): ~12% faster than the 2 x 2
/// blocking, which spent about a third of its time in A tile loads (activation rows
/// streamed from L2 once per panel pair).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,f16c")]
unsafe fn gemm_int<const INT4: bool>(t: &Tile, group: usize) {
    let (f, k) = (t.format, t.k);
    let groups = k / group;
    let kstep = group.min(64);
    let two_k = group / kstep == 2;
    let (pb, ps) = (f.panel_bytes(k), f.panel_scales(k));
    // Left uninitialised (zeroing these 40 KiB cost ~2% of a V2-Lite prefill call, one
    // memset per item): every element is written before it is read. `acc` rows are
    // cleared per panel block, C blocks stored by the tiles before they are scaled, and
    // INT4 groups unpacked before their B tiles load them.
    let mut cbuf = MaybeUninit::<Block<i32, { 2 * 16 * LDC }>>::uninit();
    let cbuf = cbuf.as_mut_ptr().cast::<i32>();
    let mut acc = MaybeUninit::<Block<f32, { SB * LDC }>>::uninit();
    let acc = acc.as_mut_ptr().cast::<f32>();
    let mut unpacked = MaybeUninit::<Block<u8, { 2 * NQ * 128 * PANEL }>>::uninit();
    let unpacked = unpacked.as_mut_ptr().cast::<u8>();
    // Token rows of the loaded configuration.
    let mut loaded: Option<usize> = None;
    let pf = t.prefetch.groups;
    let nq = panels_per_block(t.tokens);
    // SAFETY (whole body): the tile's extents (caller) cover every pointer formed here:
    // activation rows (A tiles load at most the rows the caller says are readable),
    // panels q0..q0+nt and their scales, and outputs; AMX is enabled (caller). The
    // buffers are locals of the sizes their indices need (NQ panels, SB tokens, 16-row
    // C blocks, groups of at most 128).
    unsafe {
        // Scales a stored C block (`cbuf[p.buf]`) of panels q0.. into the accumulators.
        let scale = |s0: usize, q0: usize, p: Pending| {
            let wsc = [0, 1, 2, 3].map(|ni| {
                _mm512_cvtph_ps(_mm256_loadu_si256(
                    t.scales.add((q0 + ni.min(p.nt - 1)) * ps + p.g * PANEL) as *const __m256i,
                ))
            });
            for r in 0..p.m {
                let row = s0 + p.m0 + r;
                let ascale = _mm512_set1_ps(
                    (t.a.add(row * t.a_stride + k + 4 * p.g) as *const f32).read_unaligned(),
                );
                for (ni, w) in wsc.iter().enumerate().take(p.nt) {
                    let ci = _mm512_load_si512(
                        cbuf.add(p.buf * 16 * LDC + r * LDC + ni * PANEL) as *const _
                    );
                    let ap = acc.add((p.m0 + r) * LDC + ni * PANEL);
                    _mm512_store_ps(
                        ap,
                        _mm512_fmadd_ps(
                            _mm512_cvtepi32_ps(ci),
                            _mm512_mul_ps(*w, ascale),
                            _mm512_load_ps(ap),
                        ),
                    );
                }
            }
        };
        for g in 0..pf.min(groups) {
            prefetch_group(t, 0, nq, g, group);
        }
        for s0 in (0..t.tokens).step_by(SB) {
            let sm = SB.min(t.tokens - s0);
            for q0 in (0..t.panels).step_by(nq) {
                let nt = nq.min(t.panels - q0);
                std::ptr::write_bytes(acc, 0, sm * LDC);
                let mut pending: Option<Pending> = None;
                let mut next_buf = 0;
                if INT4 {
                    unpack_group(t, q0, nt, 0, group, unpacked);
                }
                for g in 0..groups {
                    // Prefetch `pf` groups ahead in the weight stream.
                    prefetch_ahead(t, (q0, nq), s0, pf, g + pf, (groups, group));
                    // B lines of each panel for this group: the packed lines (INT8) or
                    // the unpacked buffer (INT4), 64 bytes per K-step row. INT4 groups
                    // are unpacked one group ahead into the other half of a double
                    // buffer: a tile load right after the vector stores that wrote its
                    // bytes waits for them to reach L1, a group later they are there.
                    // Panels past `nt` repeat the last one (never multiplied).
                    let b = [0, 1, 2, 3].map(|ni| {
                        let ni = ni.min(nt - 1);
                        if INT4 {
                            unpacked
                                .add(((g & 1) * NQ + ni) * group * PANEL)
                                .cast_const()
                        } else {
                            t.w.add((q0 + ni) * pb + g * group * PANEL)
                        }
                    });
                    for m0 in (s0..s0 + sm).step_by(16) {
                        let m = 16.min(s0 + sm - m0);
                        load_a_tiles(t, (m0, m), g * group, (16, kstep, two_k), &mut loaded);
                        tile_zero!(0);
                        tile_zero!(1);
                        tile_zero!(2);
                        tile_zero!(3);
                        panel_kstep!(b, nt, 4, 0);
                        if two_k {
                            panel_kstep!(b, nt, 5, kstep * PANEL);
                        }
                        let c = cbuf.add(next_buf * 16 * LDC) as *mut u8;
                        let ldc_b = LDC * 4;
                        tile_store!(0, c, ldc_b);
                        if nt > 1 {
                            tile_store!(1, c.add(64), ldc_b);
                        }
                        if nt > 2 {
                            tile_store!(2, c.add(128), ldc_b);
                        }
                        if nt > 3 {
                            tile_store!(3, c.add(192), ldc_b);
                        }
                        // The previous block's scaling overlaps this block's tile work.
                        if let Some(p) = pending.replace(Pending {
                            buf: next_buf,
                            m0: m0 - s0,
                            m,
                            g,
                            nt,
                        }) {
                            scale(s0, q0, p);
                        }
                        next_buf ^= 1;
                    }
                    if INT4 && g + 1 < groups {
                        let dst = unpacked.add(((g + 1) & 1) * NQ * group * PANEL);
                        unpack_group(t, q0, nt, g + 1, group, dst);
                    }
                }
                if let Some(p) = pending.take() {
                    scale(s0, q0, p);
                }
                for r in 0..sm {
                    for ni in 0..nt {
                        let v = _mm512_load_ps(acc.add(r * LDC + ni * PANEL));
                        _mm512_storeu_ps(t.out.add((s0 + r) * t.ldo + (q0 + ni) * PANEL), v);
                    }
                }
            }
        }
        // Ends this item's use of the tiles.
        super::tiles::release();
    }
}

/// Unpacks group `g` of panels `p0..p0 + nt` (INT4, `q + 8` nibbles) to int8 at `dst`:
/// panel `ni`'s group at `dst + ni * group * PANEL`, 64 bytes per K-step row.
///
/// # Safety
/// The panels lie inside the tile's weights and `dst` holds `nt * group * PANEL` bytes,
/// 64-byte aligned.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
unsafe fn unpack_group(t: &Tile, p0: usize, nt: usize, g: usize, group: usize, dst: *mut u8) {
    let pb = t.format.panel_bytes(t.k);
    let nib = _mm512_set1_epi8(0x0F);
    let eight = _mm512_set1_epi8(8);
    for ni in 0..nt {
        // SAFETY: panel p0 + ni's group g (group / 8 lines of 64 bytes) is inside the
        // weights, its unpacked bytes inside `dst` (caller).
        unsafe {
            let panel = t.w.add((p0 + ni) * pb);
            let out = dst.add(ni * group * PANEL);
            for i in 0..group / 8 {
                let line = _mm512_loadu_si512(panel.add((g * group / 8 + i) * 64) as *const _);
                let lo = _mm512_sub_epi8(_mm512_and_si512(line, nib), eight);
                let hi =
                    _mm512_sub_epi8(_mm512_and_si512(_mm512_srli_epi16::<4>(line), nib), eight);
                _mm512_store_si512(out.add(128 * i) as *mut _, lo);
                _mm512_store_si512(out.add(128 * i + 64) as *mut _, hi);
            }
        }
    }
}

/// Reduction elements per C round trip of the folded kernel: 128 (two K-steps) where K
/// allows, else 64 or 32. A multiple of the group (all are powers of two dividing K).
fn fold_chunk(k: usize) -> usize {
    if k.is_multiple_of(128) {
        128
    } else if k.is_multiple_of(64) {
        64
    } else {
        32
    }
}

/// INT4 over folded scales with per-token activations: the blocking of `gemm_int` (16
/// tokens x 4 panels per tile pass, super-blocks of 64 tokens, chunks unpacked once for
/// all row blocks into a double buffer), but the C tiles are never scaled per group:
/// per chunk of K they are loaded from an int32 block (zeroed at the first), take the
/// chunk's `tdpbssd`s and are stored back; after the last chunk each int32 dot is
/// scaled by `d_n * d_a[t]` into the output. `sum m * q * a` over K fits i32 (at most
/// 128 * 128 * K, K < 2^17).
///
/// # Safety
/// As `gemm`; `fold` points at the tile's first panel's row scales and multipliers.
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
unsafe fn gemm_int4_folded(t: &Tile, group: usize, (row_scales, mults): (*const f32, *const i8)) {
    let k = t.k;
    let chunk = fold_chunk(k);
    let chunks = k / chunk;
    let kstep = chunk.min(64);
    let two_k = chunk / kstep == 2;
    // Uninitialised as in gemm_int: each row block's int32 dots are written (zeroed C
    // tiles stored) at the first chunk before any load, chunks unpacked before use.
    let mut acc = MaybeUninit::<Block<i32, { SB * LDC }>>::uninit();
    let acc = acc.as_mut_ptr().cast::<i32>();
    let mut unpacked = MaybeUninit::<Block<u8, { 2 * NQ * 128 * PANEL }>>::uninit();
    let unpacked = unpacked.as_mut_ptr().cast::<u8>();
    let mut loaded: Option<usize> = None;
    let pf = t.prefetch.groups;
    let nq = panels_per_block(t.tokens);
    let ldc_b = LDC * 4;
    // SAFETY (whole body): as in gemm_int; the row scales and multipliers of panels
    // q0..q0+nt lie behind `row_scales` / `mults` (caller).
    unsafe {
        for c in 0..pf.min(chunks) {
            prefetch_group(t, 0, nq, c, chunk);
        }
        for s0 in (0..t.tokens).step_by(SB) {
            let sm = SB.min(t.tokens - s0);
            // Rows per row block: the super-block's tokens spread evenly over the fewest
            // 16-row blocks (50 tokens: 4 x 13 rows, not 16 + 16 + 16 + 2). `tdpbssd`
            // takes time by the rows configured, so a short last block no longer costs a
            // full one, and one configuration serves every block.
            let rb = sm.div_ceil(sm.div_ceil(16));
            for q0 in (0..t.panels).step_by(nq) {
                let nt = nq.min(t.panels - q0);
                unpack_folded(t, mults, (q0, nt), 0, chunk, group, unpacked);
                for c in 0..chunks {
                    prefetch_ahead(t, (q0, nq), s0, pf, c + pf, (chunks, chunk));
                    let b = [0, 1, 2, 3].map(|ni| {
                        unpacked
                            .add(((c & 1) * NQ + ni.min(nt - 1)) * chunk * PANEL)
                            .cast_const()
                    });
                    for m0 in (s0..s0 + sm).step_by(rb) {
                        let m = rb.min(s0 + sm - m0);
                        load_a_tiles(t, (m0, m), c * chunk, (rb, kstep, two_k), &mut loaded);
                        // This row block's int32 dots (rows m0 - s0.., at most SB: the
                        // blocks' rows add up to at most 4 x 16).
                        let cp = acc.add((m0 - s0) * LDC) as *mut u8;
                        if c == 0 {
                            tile_zero!(0);
                            tile_zero!(1);
                            tile_zero!(2);
                            tile_zero!(3);
                        } else {
                            tile_load!(0, cp, ldc_b);
                            if nt > 1 {
                                tile_load!(1, cp.add(64), ldc_b);
                            }
                            if nt > 2 {
                                tile_load!(2, cp.add(128), ldc_b);
                            }
                            if nt > 3 {
                                tile_load!(3, cp.add(192), ldc_b);
                            }
                        }
                        panel_kstep!(b, nt, 4, 0);
                        if two_k {
                            panel_kstep!(b, nt, 5, kstep * PANEL);
                        }
                        tile_store!(0, cp, ldc_b);
                        if nt > 1 {
                            tile_store!(1, cp.add(64), ldc_b);
                        }
                        if nt > 2 {
                            tile_store!(2, cp.add(128), ldc_b);
                        }
                        if nt > 3 {
                            tile_store!(3, cp.add(192), ldc_b);
                        }
                    }
                    if c + 1 < chunks {
                        let dst = unpacked.add(((c + 1) & 1) * NQ * chunk * PANEL);
                        unpack_folded(t, mults, (q0, nt), c + 1, chunk, group, dst);
                    }
                }
                let d = [0, 1, 2, 3]
                    .map(|ni| _mm512_loadu_ps(row_scales.add((q0 + ni.min(nt - 1)) * PANEL)));
                for r in 0..sm {
                    // The row's one scale (every group slot holds it).
                    let ascale = _mm512_set1_ps(
                        (t.a.add((s0 + r) * t.a_stride + k) as *const f32).read_unaligned(),
                    );
                    for (ni, dn) in d.iter().enumerate().take(nt) {
                        let ci = _mm512_load_si512(acc.add(r * LDC + ni * PANEL) as *const _);
                        _mm512_storeu_ps(
                            t.out.add((s0 + r) * t.ldo + (q0 + ni) * PANEL),
                            _mm512_mul_ps(_mm512_cvtepi32_ps(ci), _mm512_mul_ps(*dn, ascale)),
                        );
                    }
                }
            }
        }
        super::tiles::release();
    }
}

/// Unpacks chunk `c` (`chunk` elements of K) of panels `p0..p0 + nt` of folded INT4 to
/// int8 `m * q` at `dst` (panel `ni` at `dst + ni * chunk * PANEL`, 64 bytes per K-step
/// row). Per group, the 16 rows' multipliers as words `|m|` (one per 2 bytes of a
/// row's 4-byte unit) and bytes `8 |m|`: `|m| * (q + 8)` is below 256 in each byte of a
/// `vpmullw` word (no carry), `- 8 |m|` makes `|m| * q`, negated in the rows whose `m`
/// is negative.
///
/// # Safety
/// As `unpack_group`; `mults` covers the panels' multipliers.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
unsafe fn unpack_folded(
    t: &Tile,
    mults: *const i8,
    (p0, nt): (usize, usize),
    c: usize,
    chunk: usize,
    group: usize,
    dst: *mut u8,
) {
    let (pb, ps) = (t.format.panel_bytes(t.k), t.format.panel_scales(t.k));
    let nib = _mm512_set1_epi8(0x0F);
    let bytes = _mm512_set1_epi32(0x0101_0101);
    let zero = _mm512_setzero_si512();
    for ni in 0..nt {
        // SAFETY: panel p0 + ni's chunk c and its groups' multipliers are inside the
        // weights and `mults`, its unpacked bytes inside `dst` (caller).
        unsafe {
            let panel = t.w.add((p0 + ni) * pb);
            let out = dst.add(ni * chunk * PANEL);
            for g in c * chunk / group..(c + 1) * chunk / group {
                let m = _mm512_cvtepi8_epi32(_mm_loadu_si128(
                    mults.add((p0 + ni) * ps + g * PANEL) as *const __m128i,
                ));
                let ma = _mm512_abs_epi32(m);
                let mw = _mm512_or_si512(ma, _mm512_slli_epi32::<16>(ma));
                let off = _mm512_mullo_epi32(_mm512_slli_epi32::<3>(ma), bytes);
                let neg = _mm512_movepi8_mask(m);
                let fold = |u: __m512i| {
                    let p = _mm512_sub_epi8(_mm512_mullo_epi16(u, mw), off);
                    _mm512_mask_sub_epi8(p, neg, zero, p)
                };
                for i in g * group / 8..(g + 1) * group / 8 {
                    let line = _mm512_loadu_si512(panel.add(i * 64) as *const _);
                    let lo = _mm512_and_si512(line, nib);
                    let hi = _mm512_and_si512(_mm512_srli_epi16::<4>(line), nib);
                    let o = out.add(128 * (i - c * chunk / 8));
                    _mm512_store_si512(o as *mut _, fold(lo));
                    _mm512_store_si512(o.add(64) as *mut _, fold(hi));
                }
            }
        }
    }
}

unsafe fn gemm_bf16(t: &Tile) {
    let pb = t.format.panel_bytes(t.k);
    let ldo_b = t.ldo * 4;
    for m0 in (0..t.tokens).step_by(MB) {
        let m = MB.min(t.tokens - m0);
        let two_m = m > 16;
        // SAFETY (whole block): as in gemm_int; C tiles are stored straight into the
        // output rows m0..m0+m (configured rows) and columns of panels p0..p0+nt.
        unsafe {
            config(m, 64, 16).load();
            let a0 = t.a.add(m0 * t.a_stride);
            let a1 = a0.wrapping_add(16 * t.a_stride);
            for p0 in (0..t.panels).step_by(NB) {
                let two_n = p0 + 1 < t.panels;
                let (b0, b1) = (t.w.add(p0 * pb), t.w.wrapping_add((p0 + 1) * pb));
                tile_zero!(0);
                tile_zero!(1);
                if two_m {
                    tile_zero!(2);
                    tile_zero!(3);
                }
                // One K-step: 32 reduction elements = 64 bytes of A, 16 lines of B.
                for s in 0..t.k / 32 {
                    tile_load!(4, a0.add(64 * s), t.a_stride);
                    tile_load!(6, b0.add(1024 * s), 64usize);
                    tile_dp_bf16!(0, 4, 6);
                    if two_n {
                        tile_load!(7, b1.add(1024 * s), 64usize);
                        tile_dp_bf16!(1, 4, 7);
                    }
                    if two_m {
                        tile_load!(5, a1.add(64 * s), t.a_stride);
                        tile_dp_bf16!(2, 5, 6);
                        if two_n {
                            tile_dp_bf16!(3, 5, 7);
                        }
                    }
                }
                let o = t.out.add(m0 * t.ldo + p0 * PANEL) as *mut u8;
                tile_store!(0, o, ldo_b);
                if two_n {
                    tile_store!(1, o.add(64), ldo_b);
                }
                if two_m {
                    tile_store!(2, o.add(16 * ldo_b), ldo_b);
                    if two_n {
                        tile_store!(3, o.add(16 * ldo_b + 64), ldo_b);
                    }
                }
            }
            super::tiles::release();
        }
    }
}
