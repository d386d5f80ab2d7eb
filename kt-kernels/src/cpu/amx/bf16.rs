//! BF16 weights times BF16 activations with many tokens: AMX `tdpbf16ps`.
//!
//! BF16 has no block scales, so unlike the integer formats the whole K sum stays in the
//! f32 C tiles and one C tile is stored straight into the output when K is done.
//!
//! Operand orientation: the activations are the A operand (16 tokens x 32 elements,
//! loaded straight from the activation rows), the weights the B operand, which AMX
//! wants in VNNI form: line `p` of a B tile holds elements `2p, 2p + 1` of each of 16
//! weight rows, a 16 x 16 dword transpose of the rows. The weights are transposed once
//! per (32-row block, K chunk) into a stack panel and reused by every token of the tile;
//! C = A . B is then `out[token][row]` in the output's own layout.
//!
//! Blocks of 32 tokens x 32 rows ([`super::blocks`]): a K step is four `tdpbf16ps` over
//! four tile loads; the last, partial 32-element step of K reads zero-padded copies.

use std::arch::x86_64::*;
use std::mem::MaybeUninit;
use std::sync::OnceLock;

use super::blocks::{halves, transpose16, Shape, TILE};
use super::tiles::{tile_dp_bf16, tile_load, tile_store, tile_zero};
use crate::cpu::dispatch::{GemmFn, GemmTile};
use crate::cpu::GEMV_MAX_TOKENS;

/// Elements of K per `tdpbf16ps` (one 64-byte tile row of bf16).
const STEP: usize = 32;
/// K steps transposed at a time: two row halves x 64 steps x 1 KiB = 128 KiB of stack,
/// in L2 while every token pair of the tile passes over them (with the 32 tokens'
/// activations of the same K range, another 128 KiB).
const CHUNK_STEPS: usize = 64;

/// From this many tokens on the AMX kernel runs; fewer are a GEMV (every weight used
/// by at most 8 tokens), where transposing the weights costs more than it saves.
pub(crate) const AMX_MIN_TOKENS: usize = GEMV_MAX_TOKENS + 1;

/// The kernel of the level below (AVX512), for small token counts.
static LOWER: OnceLock<GemmFn> = OnceLock::new();

/// Records `lower` as the kernel for tiles with few tokens; returns the AMX kernel.
pub(crate) fn install(lower: GemmFn) -> GemmFn {
    let _ = LOWER.set(lower);
    gemm
}

/// One B tile: line `p`, dword `n` = elements `2p, 2p + 1` of weight row `n`.
#[repr(C, align(64))]
#[derive(Clone, Copy)]
struct BTile([[u32; TILE]; TILE]);

/// The activations of the last, partial K step of 32 tokens, zero-padded to 32
/// elements (the A tiles must not read past the end of a row: the next row, or the end
/// of the buffer for the last token).
#[repr(C, align(64))]
struct ATail([[u16; STEP]; 2 * TILE]);

/// # Safety
/// As [`GemmFn`]: valid tile extents, exclusive output, `Isa::Amx.check()` passed.
pub(crate) unsafe fn gemm(t: &GemmTile) {
    if t.tokens < AMX_MIN_TOKENS || t.k == 0 {
        let lower = LOWER.get().expect("installed with the AMX table");
        // SAFETY: forwarded contract; the lower kernel is the AVX512 table's.
        unsafe { lower(t) };
        return;
    }
    // SAFETY: forwarded contract; AMX implies AVX512 (F, BW).
    unsafe { gemm_amx(t) };
}

/// Mask of the first `n` (<= 32) 16-bit lanes.
fn lanes(n: usize) -> __mmask32 {
    if n >= 32 {
        u32::MAX
    } else {
        (1u32 << n) - 1
    }
}

/// Transposes `nr` (<= 16) weight rows of K steps `s0..s0 + sn` into B tiles
/// (`dst[s]`), reading only elements below `k`; missing rows and elements are zero.
///
/// # Safety
/// The `nr` rows at `w` (`w_stride` bytes apart) hold `k` bf16 each; `dst` is valid for
/// `sn` writes; AVX512 F/BW.
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn transpose_weights(
    w: *const u8,
    w_stride: usize,
    nr: usize,
    k: usize,
    s0: usize,
    sn: usize,
    dst: *mut BTile,
) {
    for s in 0..sn {
        let e0 = (s0 + s) * STEP;
        let mask = lanes(k - e0);
        let mut rows = [_mm512_setzero_si512(); 16];
        for (r, row) in rows.iter_mut().enumerate().take(nr) {
            // SAFETY: row r < nr is a weight row; the mask keeps the load inside its k
            // elements (masked-off lanes do not fault).
            *row = unsafe { _mm512_maskz_loadu_epi16(mask, w.add(r * w_stride + 2 * e0).cast()) };
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

/// The products of one K step: A tiles at `a` (token halves `a_half` bytes apart,
/// rows `a_stride` apart), B tiles `b[0]`, `b[1]`.
///
/// # Safety
/// AMX usable with `shape`'s configuration loaded; the A rows and B tiles of the halves
/// `shape` uses are readable.
#[inline(always)]
unsafe fn step(shape: Shape, a: *const u8, a_half: usize, a_stride: usize, b: [*const BTile; 2]) {
    let (two_t, two_r) = (shape.two_token_halves(), shape.two_row_halves());
    // SAFETY: the caller's contract; each tile used is configured by `shape`.
    unsafe {
        tile_load!(4, a, a_stride);
        tile_load!(6, b[0], 64usize);
        tile_dp_bf16!(0, 4, 6);
        if two_r {
            tile_load!(7, b[1], 64usize);
            tile_dp_bf16!(1, 4, 7);
        }
        if two_t {
            tile_load!(5, a.add(a_half), a_stride);
            tile_dp_bf16!(2, 5, 6);
            if two_r {
                tile_dp_bf16!(3, 5, 7);
            }
        }
    }
}

/// Loads (`load`) or zeroes the C tiles of `shape`, C tile `(i, j)` at
/// `out + (16 i) * ldo + 16 j`.
///
/// # Safety
/// AMX with `shape` loaded; when `load`, those output elements are written.
unsafe fn c_tiles_in(shape: Shape, out: *mut f32, ldo: usize, load: bool) {
    let stride = 4 * ldo;
    let at = |i: usize, j: usize| out.wrapping_add(TILE * i * ldo + TILE * j) as *const f32;
    let (two_t, two_r) = (shape.two_token_halves(), shape.two_row_halves());
    // SAFETY: the caller's contract; only the configured tiles are touched.
    unsafe {
        if load {
            tile_load!(0, at(0, 0), stride);
            if two_r {
                tile_load!(1, at(0, 1), stride);
            }
            if two_t {
                tile_load!(2, at(1, 0), stride);
                if two_r {
                    tile_load!(3, at(1, 1), stride);
                }
            }
        } else {
            tile_zero!(0);
            if two_r {
                tile_zero!(1);
            }
            if two_t {
                tile_zero!(2);
                if two_r {
                    tile_zero!(3);
                }
            }
        }
    }
}

/// Stores the C tiles of `shape` (the layout of [`c_tiles_in`]).
///
/// # Safety
/// AMX with `shape` loaded; the output elements of the shape belong to the caller.
unsafe fn c_tiles_out(shape: Shape, out: *mut f32, ldo: usize) {
    let stride = 4 * ldo;
    let at = |i: usize, j: usize| out.wrapping_add(TILE * i * ldo + TILE * j);
    let (two_t, two_r) = (shape.two_token_halves(), shape.two_row_halves());
    // SAFETY: the caller's contract; each store writes nt[i] rows of nr[j] floats.
    unsafe {
        tile_store!(0, at(0, 0), stride);
        if two_r {
            tile_store!(1, at(0, 1), stride);
        }
        if two_t {
            tile_store!(2, at(1, 0), stride);
            if two_r {
                tile_store!(3, at(1, 1), stride);
            }
        }
    }
}

/// Order: blocks of 32 rows; within one, K chunks of [`CHUNK_STEPS`] steps, transposed
/// once; within one, blocks of 32 tokens, whose C tiles are zeroed (first chunk) or
/// reloaded from the output, run over the chunk and stored.
///
/// # Safety
/// As [`gemm`], with `t.k > 0`.
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn gemm_amx(t: &GemmTile) {
    let steps = t.k.div_ceil(STEP);
    // Elements of the last step (1..=32); a partial one reads zero-padded activations.
    let last_len = t.k - (steps - 1) * STEP;
    let mut panel = MaybeUninit::<[BTile; 2 * CHUNK_STEPS]>::uninit();
    let panel = panel.as_mut_ptr().cast::<BTile>();
    let mut tail = MaybeUninit::<ATail>::uninit();
    let tail = tail.as_mut_ptr().cast::<u16>();
    let mut loaded: Option<Shape> = None;
    for r0 in (0..t.rows).step_by(2 * TILE) {
        let nr = halves(t.rows - r0);
        for s0 in (0..steps).step_by(CHUNK_STEPS) {
            let sn = CHUNK_STEPS.min(steps - s0);
            for (j, &n) in nr.iter().enumerate() {
                // SAFETY: rows r0 + 16 j .. + n are inside the tile's weights; the
                // panel holds 2 * CHUNK_STEPS B tiles, half j from j * CHUNK_STEPS.
                unsafe {
                    transpose_weights(
                        t.w.add((r0 + TILE * j) * t.w_stride),
                        t.w_stride,
                        n,
                        t.k,
                        s0,
                        sn,
                        panel.add(j * CHUNK_STEPS),
                    )
                };
            }
            // Full steps read the activation rows; a partial last one the padded copy.
            let partial = s0 + sn == steps && last_len < STEP;
            let full = sn - partial as usize;
            for t0 in (0..t.tokens).step_by(2 * TILE) {
                let shape = Shape::at(t0, t.tokens, r0, t.rows);
                if loaded != Some(shape) {
                    // SAFETY: AMX usable (the caller); a valid palette-1 configuration
                    // (rows <= 16, colsb <= 64). Loading it zeroes the tiles, whose
                    // contents were stored already.
                    unsafe { shape.config(2 * STEP).load() };
                    loaded = Some(shape);
                }
                let out = t.out.wrapping_add(t0 * t.ldo + r0);
                let a = t.a.wrapping_add(t0 * t.a_stride);
                let b = |s: usize| -> [*const BTile; 2] {
                    [panel.wrapping_add(s), panel.wrapping_add(CHUNK_STEPS + s)]
                };
                // SAFETY (whole block): the shape's tokens t0.. and rows r0.. are inside
                // the tile, so every A row (token < tokens, K steps below `full` are
                // whole), B tile (transposed above) and output element touched is
                // valid; the tiles used are the configured ones.
                unsafe {
                    c_tiles_in(shape, out, t.ldo, s0 > 0);
                    for s in 0..full {
                        let e0 = (s0 + s) * STEP;
                        step(shape, a.add(2 * e0), TILE * t.a_stride, t.a_stride, b(s));
                    }
                    if partial {
                        let e0 = (steps - 1) * STEP;
                        let mask = lanes(last_len);
                        for i in 0..shape.nt[0] + shape.nt[1] {
                            let v = _mm512_maskz_loadu_epi16(
                                mask,
                                a.add(i * t.a_stride + 2 * e0).cast(),
                            );
                            _mm512_store_si512(tail.add(i * STEP).cast(), v);
                        }
                        step(shape, tail.cast(), TILE * 2 * STEP, 2 * STEP, b(sn - 1));
                    }
                    c_tiles_out(shape, out, t.ldo);
                }
            }
        }
    }
    // SAFETY: AMX is enabled (the caller); ends this call's use of the tiles.
    unsafe { super::tiles::release() };
}
