//! Block-format weights dequantized to bf16 on the fly, times the activations converted
//! to bf16, on AMX-BF16 (`tdpbf16ps`): the table's [`Bf16GemmFn`], with the format's
//! [`DequantBf16Fn`] as a parameter.
//!
//! Why: the integer kernels (`q4_k.rs`) multiply each 32-element sub-block in its own C
//! tile and scale it in f32 afterwards, because every sub-block has its own scale; that
//! epilogue costs about as much as the products. Folding the scales into bf16 weights
//! lets one C tile accumulate the whole K and be stored once, at one rounding per weight
//! (2^-9 relative, well below a 4-bit format's own error) and per activation element.
//!
//! Operand orientation: the weights are the A operand (16 rows x 32 bf16, as dequantized:
//! row-major, no transpose), the activations the B operand, which AMX wants in VNNI form
//! (line `p` = elements `2p, 2p + 1` of each of 16 tokens): converted and transposed once
//! per token block and K chunk and shared by every weight row. C is then
//! `[weight row][token]`, kept in a per-call accumulator across K chunks and transposed
//! into the output at the end.
//!
//! Order: blocks of 32 tokens (two B tiles); groups of up to 128 rows (the accumulator);
//! K chunks of [`CHUNK_STEPS`] steps (the activation panel, 128 KiB, in L2); pairs of 16-row
//! A tiles; units of up to 256 elements, each eight 32-element steps of up to four
//! products, with the unit after next dequantized in slices of rows between the steps
//! (three buffers). Tiles: 0..4 C (row half `i`, token half `j` at `2i + j`), 4 and 5 A,
//! 6 and 7 B; with one token half the second half's tiles take the odd K steps
//! ([`Shape`]).
//!
//! Measured on the dev VM (BENCHMARKS.md, session 5): the AVX512 dequantization and the
//! `tdpbf16ps` do not overlap (a unit costs their sum), and the dequantization alone
//! (~0.07 ns per weight) costs as much as the integer kernel at 8 tokens, so this path is
//! level with `q4_k.rs` at best and off by default ([`crate::cpu::dispatch::bf16_gemm_enabled`]).
//!
//! Activation type: Q8_K (the K-quants'), `d * q` in f32 rounded to the nearest-even bf16.

use std::arch::x86_64::*;
use std::mem::MaybeUninit;

use super::blocks::{halves, transpose16, TILE};
use super::tiles::{tile_dp_bf16, tile_load, tile_store, tile_zero, TileConfig};
use crate::cpu::dispatch::{DequantBf16Fn, GemmTile};
use crate::quant::QType;

/// Elements of K per `tdpbf16ps` (one 64-byte tile row of bf16).
const STEP: usize = 32;
/// Elements of K dequantized at a time (one K-quant super-block: 32 rows x 256 bf16 =
/// 16 KiB, two of them in L1).
const UNIT: usize = 256;
/// K steps per activation panel: 2 token halves x 64 steps x 1 KiB = 128 KiB.
const CHUNK_STEPS: usize = 64;
/// Tokens per token block and rows per accumulator group.
const TOKENS: usize = 2 * TILE;
const GROUP_ROWS: usize = 128;
/// Rows per pass (two A tiles).
const PAIR: usize = 2 * TILE;
/// Weight prefetch distance, in units (into L2): the weights stream from DRAM once per
/// call and must be requested before the dequantization reads them.
const PREFETCH: usize = 2;

/// One B tile: line `p`, dword `n` = elements `2p, 2p + 1` of token `n`.
#[repr(C, align(64))]
#[derive(Clone, Copy)]
struct BTile([[u32; TILE]; TILE]);

/// Units of dequantized rows in flight: the one being multiplied, the next one (complete),
/// and the one after, being dequantized in slices meanwhile.
const BUFS: usize = 3;
#[repr(C, align(64))]
struct WeightBuf([[[u16; UNIT]; PAIR]; BUFS]);

/// The C tiles of one row group and token block: `[row][token]` f32.
#[repr(C, align(64))]
struct Acc([[f32; TOKENS]; GROUP_ROWS]);

/// Whether [`gemm`] can run `t`: K whole 32-element steps and Q8_K activations (the table
/// registers it only for formats where that always holds).
fn supports(t: &GemmTile) -> bool {
    t.k > 0 && t.k.is_multiple_of(STEP) && t.qtype.vec_dot_type() == QType::Q8_K
}

/// # Safety
/// As [`crate::cpu::dispatch::Bf16GemmFn`]: valid tile extents, exclusive output,
/// `Isa::Amx.check()` passed and AVX512-BF16 present (the table registers this kernel
/// only then), `dequant` the table's function of `t.qtype`, and [`supports`]`(t)`.
pub(crate) unsafe fn gemm(t: &GemmTile, dequant: DequantBf16Fn) {
    debug_assert!(supports(t));
    // SAFETY: forwarded.
    unsafe { gemm_amx(t, dequant) };
}

/// The tiles of one row pair (`nr` rows per half) and token block (`nt` tokens per half).
///
/// With one token half (`split`), the C tiles and B tile of the missing half take the odd
/// K steps instead: four independent accumulators rather than two, so consecutive
/// `tdpbf16ps` do not wait on each other's result (their latency is several times their
/// issue interval); the odd sums are added to the even ones when the pair's C tiles are
/// stored.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Shape {
    nr: [usize; 2],
    nt: [usize; 2],
}

impl Shape {
    fn split(self) -> bool {
        self.nt[1] == 0
    }

    /// Tokens of the C and B tiles of column `j` (the odd steps' when split).
    fn cols(self, j: usize) -> usize {
        if self.split() {
            self.nt[0]
        } else {
            self.nt[j]
        }
    }

    fn config(self) -> TileConfig {
        let mut c = TileConfig::new();
        for i in 0..2 {
            for j in 0..2 {
                if self.nr[i] > 0 {
                    c.set(2 * i + j, self.nr[i], 4 * self.cols(j));
                }
            }
            if self.nr[i] > 0 {
                c.set(4 + i, self.nr[i], 2 * STEP);
            }
            c.set(6 + i, STEP / 2, 4 * self.cols(i));
        }
        c
    }
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512bf16")]
unsafe fn gemm_amx(t: &GemmTile, dequant: DequantBf16Fn) {
    let steps = t.k / STEP;
    let mut panel = MaybeUninit::<[[BTile; CHUNK_STEPS]; 2]>::uninit();
    let panel = panel.as_mut_ptr().cast::<BTile>();
    let mut wbuf = MaybeUninit::<WeightBuf>::uninit();
    let wbuf = wbuf.as_mut_ptr().cast::<u16>();
    // Zeroed once: rows and tokens a partial tile leaves out are read (and dropped) by the
    // transposition at the end, never uninitialised memory.
    let mut acc = Acc([[0.0; TOKENS]; GROUP_ROWS]);
    let acc = acc.0.as_mut_ptr().cast::<f32>();
    let mut loaded: Option<Shape> = None;
    // The odd steps' sums of a split pair, added to the accumulator at its end.
    let mut odd = [[0f32; TILE]; PAIR];
    let wb = |buf: usize| wbuf.wrapping_add(buf * PAIR * UNIT);
    for t0 in (0..t.tokens).step_by(TOKENS) {
        let nt = halves(t.tokens - t0);
        for g0 in (0..t.rows).step_by(GROUP_ROWS) {
            let g_rows = GROUP_ROWS.min(t.rows - g0);
            let pairs = g_rows.div_ceil(PAIR);
            for s0 in (0..steps).step_by(CHUNK_STEPS) {
                let sn = CHUNK_STEPS.min(steps - s0);
                let (c0, clen) = (s0 * STEP, sn * STEP);
                for (j, &n) in nt.iter().enumerate() {
                    if n > 0 {
                        // SAFETY: tokens t0 + 16 j .. + n are activation rows of the
                        // tile; elements c0..c0 + clen lie in them; the panel holds
                        // CHUNK_STEPS tiles per half.
                        unsafe {
                            convert_acts(t, t0 + TILE * j, n, c0, sn, panel.add(j * CHUNK_STEPS))
                        };
                    }
                }
                let units = clen.div_ceil(UNIT);
                let unit_len = |u: usize| UNIT.min(clen - u * UNIT);
                let pair_rows = |rp: usize| PAIR.min(g_rows - rp * PAIR);
                // Unit `l` of the chunk, counted over row pairs: (pair, unit).
                let at = |l: usize| (l / units, l % units);
                let w_of = |rp: usize, u: usize| {
                    let k0 = c0 + u * UNIT;
                    t.w.wrapping_add(
                        (g0 + rp * PAIR) * t.w_stride
                            + k0 / t.qtype.block_elems() * t.qtype.block_bytes(),
                    )
                };
                // Rows r0..r1 of unit l into buffer l % BUFS.
                let fill = |l: usize, r0: usize, r1: usize| {
                    let (rp, u) = at(l);
                    // SAFETY: rows r0..r1 <= PAIR of pair rp and unit u's elements lie in
                    // the tile's weights; buffer l % BUFS holds PAIR rows of UNIT elements.
                    unsafe {
                        dequant(
                            w_of(rp, u).wrapping_add(r0 * t.w_stride),
                            t.w_stride,
                            r1 - r0,
                            0,
                            unit_len(u),
                            wb(l % BUFS).wrapping_add(r0 * UNIT),
                            UNIT,
                        )
                    }
                };
                let prefetch = |l: usize| {
                    let (rp, u) = at(l);
                    let bytes = unit_len(u) / t.qtype.block_elems() * t.qtype.block_bytes();
                    // SAFETY: the rows' byte ranges lie in the tile's weights.
                    unsafe { prefetch_rows(w_of(rp, u), t.w_stride, pair_rows(rp), bytes) };
                };
                let total = pairs * units;
                for l in 0..PREFETCH.min(total) {
                    prefetch(l);
                }
                for l in 0..2.min(total) {
                    fill(l, 0, pair_rows(at(l).0));
                }
                for rp in 0..pairs {
                    let shape = Shape {
                        nr: halves(pair_rows(rp)),
                        nt,
                    };
                    if loaded != Some(shape) {
                        // SAFETY: AMX usable (the caller); a valid palette-1
                        // configuration. Loading it zeroes the tiles: the previous pair
                        // stored its C tiles.
                        unsafe { shape.config().load() };
                        loaded = Some(shape);
                    }
                    let c = acc.wrapping_add(rp * PAIR * TOKENS);
                    // SAFETY: the configured C tiles; the accumulator rows of this pair.
                    unsafe { c_tiles_in(shape, c, s0 > 0) };
                    for u in 0..units {
                        let l = rp * units + u;
                        if l + PREFETCH < total {
                            prefetch(l + PREFETCH);
                        }
                        let a = wb(l % BUFS).cast::<u8>();
                        let steps_u = unit_len(u) / STEP;
                        // The unit after next is dequantized into the free buffer in
                        // slices of rows between these products, so both overlap.
                        let next = (l + 2 < total).then(|| (l + 2, pair_rows(at(l + 2).0)));
                        let slice = next.map_or(0, |(_, n)| n.div_ceil(steps_u));
                        for st in 0..steps_u {
                            let step = u * UNIT / STEP + st;
                            let b = panel.wrapping_add(step);
                            // SAFETY: buffer l % BUFS holds this unit (dequantized during
                            // the unit before last: its stores precede these loads in
                            // program order); step st of it and panel step `step` < sn are
                            // initialised.
                            unsafe {
                                products(
                                    shape,
                                    step % 2 == 1,
                                    a.add(st * 2 * STEP),
                                    b,
                                    b.wrapping_add(CHUNK_STEPS),
                                )
                            };
                            if let Some((n, rows)) = next {
                                let r0 = (st * slice).min(rows);
                                fill(n, r0, ((st + 1) * slice).min(rows));
                            }
                        }
                    }
                    // SAFETY: as c_tiles_in; `odd` is this call's.
                    unsafe { c_tiles_out(shape, c, odd.as_mut_ptr()) };
                }
            }
            // SAFETY: rows g0.. of the group and tokens t0.. of the block are the tile's.
            unsafe { write_out(t, acc, g0, g_rows, t0, nt[0] + nt[1]) };
        }
    }
    // SAFETY: AMX is enabled (the caller); ends this call's use of the tiles.
    unsafe { super::tiles::release() };
}

/// Up to four `tdpbf16ps` of one K step: A rows at `a` (row halves 16 rows apart, rows
/// `2 * UNIT` bytes apart), B tiles at `b0`, `b1` (token halves). Split (one token half):
/// an `odd` step goes to C tiles 1 and 3 with its B tile (`b0`) in tile 7.
///
/// # Safety
/// The configuration of `shape` is loaded; the A rows and B tiles used are readable.
#[inline(always)]
unsafe fn products(shape: Shape, odd: bool, a: *const u8, b0: *const BTile, b1: *const BTile) {
    let sa = 2 * UNIT;
    let two_r = shape.nr[1] > 0;
    // SAFETY: the caller's contract; only configured tiles are used.
    unsafe {
        if shape.split() {
            tile_load!(4, a, sa);
            if odd {
                tile_load!(7, b0, 64usize);
                tile_dp_bf16!(1, 4, 7);
                if two_r {
                    tile_load!(5, a.add(TILE * sa), sa);
                    tile_dp_bf16!(3, 5, 7);
                }
            } else {
                tile_load!(6, b0, 64usize);
                tile_dp_bf16!(0, 4, 6);
                if two_r {
                    tile_load!(5, a.add(TILE * sa), sa);
                    tile_dp_bf16!(2, 5, 6);
                }
            }
            return;
        }
        tile_load!(4, a, sa);
        tile_load!(6, b0, 64usize);
        tile_dp_bf16!(0, 4, 6);
        tile_load!(7, b1, 64usize);
        tile_dp_bf16!(1, 4, 7);
        if two_r {
            tile_load!(5, a.add(TILE * sa), sa);
            tile_dp_bf16!(2, 5, 6);
            tile_dp_bf16!(3, 5, 7);
        }
    }
}

/// Zeroes (`load` false) or loads the C tiles of a row pair from the accumulator rows at
/// `c` (C tile `(i, j)` at row `16 i`, token `16 j`); split, the odd tiles start at zero.
///
/// # Safety
/// The configuration of `shape` is loaded; `c` has 32 rows of [`TOKENS`] floats.
unsafe fn c_tiles_in(shape: Shape, c: *mut f32, load: bool) {
    let stride = 4 * TOKENS;
    let at = |i: usize, j: usize| c.wrapping_add(TILE * i * TOKENS + TILE * j).cast_const();
    let two_r = shape.nr[1] > 0;
    // SAFETY: the caller's contract.
    unsafe {
        if load {
            tile_load!(0, at(0, 0), stride);
        } else {
            tile_zero!(0);
        }
        if load && !shape.split() {
            tile_load!(1, at(0, 1), stride);
        } else {
            tile_zero!(1);
        }
        if two_r {
            if load {
                tile_load!(2, at(1, 0), stride);
            } else {
                tile_zero!(2);
            }
            if load && !shape.split() {
                tile_load!(3, at(1, 1), stride);
            } else {
                tile_zero!(3);
            }
        }
    }
}

/// Stores the C tiles of a row pair (the layout of [`c_tiles_in`]); split, the odd tiles
/// go through `odd` (32 rows of 16 floats) and are added to the even ones.
///
/// # Safety
/// As [`c_tiles_in`]; `odd` is writable for 32 rows.
#[target_feature(enable = "avx512f")]
unsafe fn c_tiles_out(shape: Shape, c: *mut f32, odd: *mut [f32; TILE]) {
    let stride = 4 * TOKENS;
    let at = |i: usize, j: usize| c.wrapping_add(TILE * i * TOKENS + TILE * j);
    let two_r = shape.nr[1] > 0;
    // SAFETY: the caller's contract.
    unsafe {
        tile_store!(0, at(0, 0), stride);
        if two_r {
            tile_store!(2, at(1, 0), stride);
        }
        if !shape.split() {
            tile_store!(1, at(0, 1), stride);
            if two_r {
                tile_store!(3, at(1, 1), stride);
            }
            return;
        }
        let so = 4 * TILE;
        tile_store!(1, odd, so);
        if two_r {
            tile_store!(3, odd.add(TILE), so);
        }
        for r in 0..shape.nr[0] + shape.nr[1] {
            let e = c.add(r * TOKENS);
            let v = _mm512_add_ps(_mm512_loadu_ps(e), _mm512_loadu_ps((*odd.add(r)).as_ptr()));
            _mm512_storeu_ps(e, v);
        }
    }
}

/// `out[t0 + tok][g0 + r] = acc[r][tok]` for `r < rows`, `tok < tokens`, by 16 x 16
/// transposes.
///
/// # Safety
/// Those output elements are the caller's; `acc` is the (initialised) accumulator.
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn write_out(
    t: &GemmTile,
    acc: *const f32,
    g0: usize,
    rows: usize,
    t0: usize,
    tokens: usize,
) {
    for r in (0..rows).step_by(TILE) {
        let nr = TILE.min(rows - r);
        let mask: __mmask16 = if nr == TILE { !0 } else { (1 << nr) - 1 };
        for j in (0..tokens).step_by(TILE) {
            let n = TILE.min(tokens - j);
            // SAFETY: accumulator rows r..r + 16 <= GROUP_ROWS (initialised), tokens
            // j..j + 16 <= TOKENS.
            let lines: [__m512i; TILE] = std::array::from_fn(|i| unsafe {
                _mm512_loadu_si512(acc.add((r + i) * TOKENS + j).cast())
            });
            let cols = transpose16(&lines);
            for (tok, v) in cols.iter().enumerate().take(n) {
                // SAFETY: token t0 + j + tok < tokens of the tile, rows g0 + r .. + nr
                // inside its rows (masked).
                unsafe {
                    _mm512_mask_storeu_epi32(
                        t.out.add((t0 + j + tok) * t.ldo + g0 + r).cast(),
                        mask,
                        *v,
                    )
                };
            }
        }
    }
}

/// Prefetches `bytes` bytes of `nr` rows (`stride` apart) into L2.
///
/// # Safety
/// The ranges lie inside the weights.
#[inline]
#[target_feature(enable = "sse")]
unsafe fn prefetch_rows(w: *const u8, stride: usize, nr: usize, bytes: usize) {
    for n in 0..nr {
        // SAFETY: inside row n's range (the caller).
        unsafe {
            let row = w.add(n * stride);
            for off in (0..bytes).step_by(64) {
                _mm_prefetch::<_MM_HINT_T1>(row.add(off).cast());
            }
            _mm_prefetch::<_MM_HINT_T1>(row.add(bytes - 1).cast());
        }
    }
}

/// Converts `n` (1..=16) tokens' activations (rows `first..first + n` of the tile,
/// elements `c0..c0 + 32 sn`) to bf16 B tiles `dst[0..sn]`; missing tokens are zero.
///
/// # Safety
/// Those rows and elements are readable (whole Q8_K blocks); `dst` is
/// writable for `sn` tiles.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512bf16")]
unsafe fn convert_acts(
    t: &GemmTile,
    first: usize,
    n: usize,
    c0: usize,
    sn: usize,
    dst: *mut BTile,
) {
    let act = QType::Q8_K;
    let (be, bb) = (act.block_elems(), act.block_bytes());
    for s in 0..sn {
        let e0 = c0 + s * STEP;
        let (blk, off) = (e0 / be, e0 % be);
        let mut rows = [_mm512_setzero_si512(); TILE];
        for (tok, row) in rows.iter_mut().enumerate().take(n) {
            // SAFETY: block `blk` of token first + tok is readable (the caller): its f32
            // scale at 0, its 256 int8 at 4; a step of 32 lies inside the block.
            unsafe {
                let b = t.a.add((first + tok) * t.a_stride + blk * bb);
                let q = b.add(4 + off);
                let d = _mm512_set1_ps(b.cast::<f32>().read_unaligned());
                let lo = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(q.cast())));
                let hi =
                    _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(q.add(16).cast())));
                *row = std::mem::transmute::<__m512bh, __m512i>(_mm512_cvtne2ps_pbh(
                    _mm512_mul_ps(hi, d),
                    _mm512_mul_ps(lo, d),
                ));
            }
        }
        let cols = transpose16(&rows);
        // SAFETY: dst[s] is inside dst (s < sn) and 64-byte aligned.
        let line = unsafe { dst.add(s).cast::<__m512i>() };
        for (p, c) in cols.iter().enumerate() {
            // SAFETY: line p of the B tile dst[s].
            unsafe { _mm512_store_si512(line.add(p), *c) };
        }
    }
}
