//! Q8_0 weights times Q8_0 activations with many tokens: AMX `tdpbssd` per 32-element
//! block, scaled in f32 with AVX512.
//!
//! A block's dot is `dw * da * I` with `I` the int8 dot of its 32 quants; each weight
//! row and each token has its own f16 scale per block. So K advances one block at a time
//! (`tdpbssd` with K = 32), each block's C tiles start from zero, and the f32 epilogue
//! adds `dw * da * I` into partial sums.
//!
//! Operand orientation as in [`super::bf16`]: the activations are the A operand, read
//! straight from the Q8_0 activation rows (the 32 quants after each block's scale); the
//! weights the B operand, transposed once per (32-row block, K chunk) into a stack
//! panel together with their scales as f32; C is `[token][row]`, so the epilogue of
//! one C row is one token against 16 rows: `acc += cvt(C) * (dw[16 rows] * da)`.
//!
//! The C tiles of a block are stored to a ring of buffers and scaled [`LAG`] blocks
//! later, while later blocks' `tdpbssd`s run (AVX512 loads right behind the tile stores
//! would wait for them: with a lag of 1, 1408x2048 ran 25% slower). The partial sums of a 32 x 32 block stay in a 4 KiB buffer in L1 and reach the
//! output at the end of each K chunk.

use std::arch::x86_64::*;
use std::mem::MaybeUninit;
use std::sync::OnceLock;

use super::blocks::{halves, transpose16, Shape, TILE};
use super::tiles::{tile_dp_i8, tile_load, tile_store, tile_zero};
use crate::cpu::dispatch::{GemmFn, GemmTile};
use crate::cpu::GEMV_MAX_TOKENS;

/// Elements and bytes of a Q8_0 block (f16 scale, 32 int8).
const QK: usize = 32;
const BLOCK: usize = 34;
/// Blocks transposed at a time: two row halves x 64 blocks x 576 bytes = 72 KiB of
/// stack, in L2 while every token pair of the tile passes over them.
const CHUNK: usize = 64;

/// Blocks between the `tdpbssd`s of a block and its epilogue: the epilogue's loads
/// would otherwise wait for the tile stores, and those for the products.
const LAG: usize = 3;

/// From this many tokens on the AMX kernel runs (fewer are a GEMV: the AVX512 kernel).
pub(crate) const AMX_MIN_TOKENS: usize = GEMV_MAX_TOKENS + 1;

/// The kernel of the level below (AVX512), for small token counts.
static LOWER: OnceLock<GemmFn> = OnceLock::new();

/// Records `lower` as the kernel for tiles with few tokens; returns the AMX kernel.
pub(crate) fn install(lower: GemmFn) -> GemmFn {
    let _ = LOWER.set(lower);
    gemm
}

/// One block of 16 weight rows: the B tile (line `q`, dword `n` = quants `4q..4q + 4`
/// of row `n`) and the rows' scales (0 for missing rows).
#[repr(C, align(64))]
struct WeightTile {
    q: [[u32; TILE]; QK / 4],
    d: [f32; TILE],
}

/// The four C tiles of one block (`[2i + j][token][row]`).
#[repr(C, align(64))]
struct CTiles([[[i32; TILE]; TILE]; 4]);

/// # Safety
/// As [`GemmFn`]: valid tile extents, exclusive output, `Isa::Amx.check()` passed.
pub(crate) unsafe fn gemm(t: &GemmTile) {
    if t.tokens < AMX_MIN_TOKENS || t.k < QK {
        let lower = LOWER.get().expect("installed with the AMX table");
        // SAFETY: forwarded contract; the lower kernel is the AVX512 table's.
        unsafe { lower(t) };
        return;
    }
    // SAFETY: forwarded contract; AMX implies AVX512 (F, BW, F16C).
    unsafe { gemm_amx(t) };
}

/// Transposes blocks `b0..b0 + n` of `nr` (<= 16) weight rows into `dst[0..n]`.
///
/// # Safety
/// The `nr` rows at `w` (`w_stride` bytes apart) hold at least `b0 + n` blocks; `dst`
/// is valid for `n` writes; AVX512 F/BW/VL, F16C.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,f16c")]
unsafe fn transpose_weights(
    w: *const u8,
    w_stride: usize,
    nr: usize,
    b0: usize,
    n: usize,
    dst: *mut WeightTile,
) {
    // Two blocks per transpose: row r's zmm holds the quants of both.
    for p in (0..n).step_by(2) {
        let both = p + 1 < n;
        let mut rows = [_mm512_setzero_si512(); 16];
        let mut d = [[0u16; TILE]; 2];
        for r in 0..nr {
            // SAFETY: blocks b0 + p (and b0 + p + 1 when `both`) of row r < nr exist.
            unsafe {
                let blk = w.add(r * w_stride + (b0 + p) * BLOCK);
                let lo = _mm256_loadu_si256(blk.add(2).cast());
                d[0][r] = blk.cast::<u16>().read_unaligned();
                rows[r] = if both {
                    d[1][r] = blk.add(BLOCK).cast::<u16>().read_unaligned();
                    let hi = _mm256_loadu_si256(blk.add(BLOCK + 2).cast());
                    _mm512_inserti64x4::<1>(_mm512_castsi256_si512(lo), hi)
                } else {
                    _mm512_castsi256_si512(lo)
                };
            }
        }
        let cols = transpose16(&rows);
        for h in 0..1 + both as usize {
            // SAFETY: dst[p + h] is inside dst (p + h < n) and 64-byte aligned.
            unsafe {
                let tile = dst.add(p + h);
                let lines = std::ptr::addr_of_mut!((*tile).q).cast::<__m512i>();
                for (q, c) in cols[8 * h..8 * h + 8].iter().enumerate() {
                    _mm512_store_si512(lines.add(q), *c);
                }
                let dh = _mm512_cvtph_ps(_mm256_loadu_si256(d[h].as_ptr().cast()));
                _mm512_store_ps(std::ptr::addr_of_mut!((*tile).d).cast(), dh);
            }
        }
    }
}

/// The products of one block: A tiles at `a` (rows `a_stride` apart, the second token
/// half `TILE` rows on), B tiles `b[0]`, `b[1]`, into zeroed C tiles stored to `c`.
///
/// # Safety
/// AMX with `shape`'s configuration loaded; the A rows and B tiles of the halves used
/// are readable, `c` is writable.
#[inline(always)]
unsafe fn products(
    shape: Shape,
    a: *const u8,
    a_stride: usize,
    b: [*const WeightTile; 2],
    c: *mut CTiles,
) {
    let (two_t, two_r) = (shape.two_token_halves(), shape.two_row_halves());
    let ct = |i: usize| c.cast::<[[i32; TILE]; TILE]>().wrapping_add(i);
    // SAFETY: the caller's contract; each tile used is configured by `shape`; a C tile
    // stores nt rows of nr dwords, 64 bytes apart, inside its 1 KiB of `c`.
    unsafe {
        tile_zero!(0);
        tile_load!(4, a, a_stride);
        tile_load!(6, b[0], 64usize);
        tile_dp_i8!(0, 4, 6);
        tile_store!(0, ct(0), 64usize);
        if two_r {
            tile_zero!(1);
            tile_load!(7, b[1], 64usize);
            tile_dp_i8!(1, 4, 7);
            tile_store!(1, ct(1), 64usize);
        }
        if two_t {
            tile_zero!(2);
            tile_load!(5, a.add(TILE * a_stride), a_stride);
            tile_dp_i8!(2, 5, 6);
            tile_store!(2, ct(2), 64usize);
            if two_r {
                tile_zero!(3);
                tile_dp_i8!(3, 5, 7);
                tile_store!(3, ct(3), 64usize);
            }
        }
    }
}

/// The f16 scales of `n` (<= [`CHUNK`]) consecutive Q8_0 blocks at `a`, as f32.
///
/// # Safety
/// `n` blocks are readable at `a`; AVX512 F, F16C.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,f16c")]
unsafe fn token_scales(a: *const u8, n: usize, out: &mut [f32; CHUNK]) {
    let step = _mm512_set1_epi32((TILE * BLOCK) as i32);
    let mut idx = _mm512_mullo_epi32(
        _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
        _mm512_set1_epi32(BLOCK as i32),
    );
    for s in (0..n).step_by(TILE) {
        let left = n - s;
        let mask = if left >= TILE {
            0xFFFF
        } else {
            ((1u32 << left) - 1) as __mmask16
        };
        // SAFETY: the unmasked lanes read the first 4 bytes of blocks s.. < n (a block is
        // 34 bytes); masked lanes read nothing.
        let bits = unsafe {
            _mm512_mask_i32gather_epi32::<1>(_mm512_setzero_si512(), mask, idx, a.cast())
        };
        let d = _mm512_cvtph_ps(_mm512_cvtepi32_epi16(bits));
        // SAFETY: out has CHUNK >= s + 16 elements (CHUNK is a multiple of 16).
        unsafe { _mm512_storeu_ps(out.as_mut_ptr().add(s), d) };
        idx = _mm512_add_epi32(idx, step);
    }
}

/// Adds one block's scaled products into the partial sums: `acc[token][j]` (16 rows of
/// row half `j`) += `C[2i + j][token]` * `dw[j]` * `da[token]`.
///
/// # Safety
/// `c` holds the C tiles of `shape` (rows past a half's `nr` are finite: the buffer is
/// zeroed once and only ever holds int32 products), `da[token][s]` the token scales of
/// the chunk's block `s`; AVX512 F.
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn scale_into(
    shape: Shape,
    c: *const CTiles,
    dw: [*const WeightTile; 2],
    da: &[[f32; CHUNK]; 2 * TILE],
    s: usize,
    acc: &mut [[__m512; 2]; 2 * TILE],
) {
    for j in 0..1 + shape.two_row_halves() as usize {
        // SAFETY: dw[j] was written by the transpose (j is a used half).
        let d = unsafe { _mm512_load_ps((*dw[j]).d.as_ptr()) };
        for i in 0..2 {
            for tt in 0..shape.nt[i] {
                let tok = TILE * i + tt;
                // SAFETY: C tile 2i + j, row tt, inside `c`.
                let v = unsafe { _mm512_load_si512((*c).0[2 * i + j][tt].as_ptr().cast()) };
                let s = _mm512_mul_ps(d, _mm512_set1_ps(da[tok][s]));
                acc[tok][j] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(v), s, acc[tok][j]);
            }
        }
    }
}

/// Order: blocks of 32 rows; within one, K chunks of [`CHUNK`] blocks, transposed once;
/// within one, blocks of 32 tokens, over the chunk's blocks, their partial sums added
/// to the output (stored by the first chunk).
///
/// # Safety
/// As [`gemm`], with `t.k >= 32` (a whole number of blocks).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,f16c")]
unsafe fn gemm_amx(t: &GemmTile) {
    let blocks = t.k / QK;
    let mut panel = MaybeUninit::<[WeightTile; 2 * CHUNK]>::uninit();
    let panel = panel.as_mut_ptr().cast::<WeightTile>();
    // Zeroed once: the epilogue reads whole C rows, of which a partial row half's tile
    // stores only the first columns.
    // SAFETY: CTiles is plain integers; all zero is a valid value.
    let mut cbuf: [CTiles; LAG + 1] = unsafe { std::mem::zeroed() };
    let cbuf = cbuf.as_mut_ptr();
    let mut loaded: Option<Shape> = None;
    for r0 in (0..t.rows).step_by(2 * TILE) {
        let nr = halves(t.rows - r0);
        for b0 in (0..blocks).step_by(CHUNK) {
            let n = CHUNK.min(blocks - b0);
            for (j, &rows) in nr.iter().enumerate() {
                if rows > 0 {
                    // SAFETY: rows r0 + 16 j .. + rows and blocks b0..b0 + n are inside
                    // the tile's weights; half j of the panel holds CHUNK tiles.
                    unsafe {
                        transpose_weights(
                            t.w.add((r0 + TILE * j) * t.w_stride),
                            t.w_stride,
                            rows,
                            b0,
                            n,
                            panel.add(j * CHUNK),
                        )
                    };
                }
            }
            for t0 in (0..t.tokens).step_by(2 * TILE) {
                let shape = Shape::at(t0, t.tokens, r0, t.rows);
                if loaded != Some(shape) {
                    // SAFETY: AMX usable (the caller); a valid palette-1 configuration.
                    unsafe { shape.config(QK).load() };
                    loaded = Some(shape);
                }
                let nt = shape.nt[0] + shape.nt[1];
                let a = t.a.wrapping_add(t0 * t.a_stride);
                let mut acc = [[_mm512_setzero_ps(); 2]; 2 * TILE];
                let mut da = [[0f32; CHUNK]; 2 * TILE];
                for (tok, d) in da.iter_mut().enumerate().take(nt) {
                    // SAFETY: token t0 + tok < tokens holds blocks b0..b0 + n.
                    unsafe { token_scales(a.add(tok * t.a_stride + b0 * BLOCK), n, d) };
                }
                let wt = |s: usize| -> [*const WeightTile; 2] {
                    [panel.wrapping_add(s), panel.wrapping_add(CHUNK + s)]
                };
                let cb = |s: usize| cbuf.wrapping_add(s % (LAG + 1));
                for s in 0..n + LAG {
                    // SAFETY: the shape's tokens and block b0 + s < blocks are inside
                    // the activations (the quants 2 bytes into the block); the panel's
                    // tiles s were transposed above; block s - LAG's C buffer is not
                    // the one written now, and was stored by `products` LAG blocks ago.
                    unsafe {
                        if s < n {
                            let a = a.add((b0 + s) * BLOCK + 2);
                            products(shape, a, t.a_stride, wt(s), cb(s));
                        }
                        if s >= LAG {
                            let p = s - LAG;
                            scale_into(shape, cb(p), wt(p), &da, p, &mut acc);
                        }
                    }
                }
                for (tok, sums) in acc.iter().enumerate().take(nt) {
                    for (j, &rows) in nr.iter().enumerate() {
                        if rows == 0 {
                            continue;
                        }
                        let mask = ((1u32 << rows) - 1) as __mmask16;
                        // SAFETY: token t0 + tok and rows r0 + 16 j .. + rows are inside
                        // the output tile; the mask keeps to those rows.
                        unsafe {
                            let o = t.out.add((t0 + tok) * t.ldo + r0 + TILE * j);
                            let v = if b0 == 0 {
                                sums[j]
                            } else {
                                _mm512_add_ps(_mm512_maskz_loadu_ps(mask, o), sums[j])
                            };
                            _mm512_mask_storeu_ps(o, mask, v);
                        }
                    }
                }
            }
        }
    }
    // SAFETY: AMX is enabled (the caller); ends this call's use of the tiles.
    unsafe { super::tiles::release() };
}
