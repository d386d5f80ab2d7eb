//! Q4_K, Q5_K and Q6_K on AVX512 in llama.cpp's f32 order (REPACK for Q4_K, ggml's AVX2
//! `vec_dot` for Q5_K / Q6_K: [`Order`]): the integer arithmetic of the AVX2 K-quant
//! microkernel ([`crate::cpu::avx2::kquant`], whose unpacking it reuses) with two weight
//! rows in the two 256-bit halves of every vector.
//!
//! Per 32-weight chunk and row pair: the two rows' unpacked chunks and scales are joined
//! into one vector each, and every token of the register tile adds
//! `madd(maddubs(q, a), s)` (one `vpdpwssd`) with its 32 activations broadcast to both
//! halves. Each half then holds exactly the AVX2 kernel's 8 int32 lanes of its row, so
//! the f32 steps can be ggml's: for [`Order::GgmlLanes`] each half is converted and
//! FMA'd into 8 f32 lanes, for the other orders the halves' exact sums go to one f32
//! per (row, token) as in AVX2.
//!
//! A register tile is `RP` row pairs x `RN` tokens (at most 8 pair vectors: 16 (row,
//! token) sums, the "slots" `s = 2 (p * RN + t) + half`). An odd last row is paired with
//! itself and its second half dropped.
//!
//! With more tokens than a GEMV has, unpacking every chunk again for each group of 4
//! tokens would cost as much as the products: there a row pair's chunks are unpacked once
//! per block of [`TOKEN_BLOCK`] tokens into a stack scratch ([`Unpacked`], up to
//! [`SCRATCH_BLOCKS`] super-blocks of K), and 1 x 8 register tiles read them from there.

use std::arch::x86_64::*;
use std::mem::MaybeUninit;

use crate::cpu::avx2::kquant::{KQuant, Order, ACT_BLOCK, ACT_BSUMS, ACT_QS};
use crate::cpu::avx2::tile::hsum8_epi32;
use crate::cpu::dispatch::GemmTile;
use crate::cpu::matmul::GEMV_MAX_TOKENS;
use crate::cpu::scalar::ggml_order::hsum_float_8;
use crate::quant::QK_K;

/// Most (row pair, token) vectors of a register tile.
const MAX_VECS: usize = 8;
/// Most (row, token) slots: two per vector.
const MAX_SLOTS: usize = 2 * MAX_VECS;

/// Most tokens of a register tile that unpacks its own chunks.
const MAX_RN: usize = 4;
/// Tokens of a register tile that reads unpacked chunks.
const SCRATCH_RN: usize = 8;
/// Super-blocks of K whose unpacked chunks the scratch holds (32 KiB: one row pair's
/// 8192 elements, in L1 while a token block passes over them).
const SCRATCH_BLOCKS: usize = 32;
/// Tokens per pass over the unpacked chunks: their activations (about 9 KiB each at
/// K = 8192) stay in L2 while every row pair of the tile passes.
const TOKEN_BLOCK: usize = 64;

/// One row pair's unpacked 32-weight chunk: both rows' quants and their scales, joined.
#[derive(Clone, Copy)]
struct Unpacked {
    q: __m512i,
    s: __m512i,
}

/// The largest row-pair count used with `rn` tokens (a power of two).
fn max_rp(rn: usize) -> usize {
    match rn {
        1 => 8,
        2 => 4,
        _ => 2,
    }
}

/// The `gemm` of a K-quant with llama.cpp's order on AVX512.
///
/// # Safety
/// As [`crate::cpu::dispatch::GemmFn`]; `K` is `tile.qtype`'s unpacking.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")]
pub(super) unsafe fn gemm<K: KQuant>(tile: &GemmTile) {
    if tile.tokens > GEMV_MAX_TOKENS && tile.k / QK_K <= SCRATCH_BLOCKS {
        // SAFETY: forwarded contract.
        return unsafe { gemm_unpacked::<K>(tile) };
    }
    // GEMV: rows outer in chunks of one full tile, so a chunk's weights stay in L1
    // while every token group passes; GEMM: token groups outer.
    let chunk = if tile.tokens <= GEMV_MAX_TOKENS {
        2 * max_rp(1)
    } else {
        tile.rows
    };
    let mut r0 = 0;
    while r0 < tile.rows {
        let chunk_end = (r0 + chunk).min(tile.rows);
        let mut t0 = 0;
        while t0 < tile.tokens {
            let rn = (tile.tokens - t0).min(MAX_RN);
            let mut r = r0;
            while r < chunk_end {
                let pairs_left = (chunk_end - r).div_ceil(2);
                let rp = max_rp(rn).min(1 << pairs_left.ilog2());
                let rows = (2 * rp).min(chunk_end - r);
                // SAFETY: rows r..r + rows and tokens t0..t0 + rn are inside the tile; the
                // rest is the caller's contract.
                unsafe { run::<K>(rp, rn, tile, r, rows, t0, std::ptr::null()) };
                r += rows;
            }
            t0 += rn;
        }
        r0 = chunk_end;
    }
}

/// Calls the monomorphised register tile of `rp` row pairs x `rn` tokens.
///
/// # Safety
/// As [`tile`].
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")]
unsafe fn run<K: KQuant>(
    rp: usize,
    rn: usize,
    t: &GemmTile,
    r0: usize,
    rows: usize,
    t0: usize,
    u: *const Unpacked,
) {
    // SAFETY (every arm): forwarded contract.
    unsafe {
        match (rp, rn) {
            (8, 1) => tile::<K, 8, 1>(t, r0, rows, t0, u),
            (4, 1) => tile::<K, 4, 1>(t, r0, rows, t0, u),
            (2, 1) => tile::<K, 2, 1>(t, r0, rows, t0, u),
            (1, 1) => tile::<K, 1, 1>(t, r0, rows, t0, u),
            (4, 2) => tile::<K, 4, 2>(t, r0, rows, t0, u),
            (2, 2) => tile::<K, 2, 2>(t, r0, rows, t0, u),
            (1, 2) => tile::<K, 1, 2>(t, r0, rows, t0, u),
            (2, 3) => tile::<K, 2, 3>(t, r0, rows, t0, u),
            (1, 3) => tile::<K, 1, 3>(t, r0, rows, t0, u),
            (2, 4) => tile::<K, 2, 4>(t, r0, rows, t0, u),
            (1, 4) => tile::<K, 1, 4>(t, r0, rows, t0, u),
            (1, 5) => tile::<K, 1, 5>(t, r0, rows, t0, u),
            (1, 6) => tile::<K, 1, 6>(t, r0, rows, t0, u),
            (1, 7) => tile::<K, 1, 7>(t, r0, rows, t0, u),
            (1, 8) => tile::<K, 1, 8>(t, r0, rows, t0, u),
            _ => unreachable!("register tile {rp}x{rn} is not in the shape menu"),
        }
    }
}

/// The GEMM of [`gemm`] with unpacked chunks: token blocks outer, then row pairs (each
/// unpacked once per token block), then 1 x [`SCRATCH_RN`] register tiles.
///
/// # Safety
/// As [`gemm`]; `tile.k / 256 <= SCRATCH_BLOCKS`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")]
unsafe fn gemm_unpacked<K: KQuant>(tile: &GemmTile) {
    let nb = tile.k / QK_K;
    debug_assert!(nb <= SCRATCH_BLOCKS);
    let mut scratch = [const { MaybeUninit::<Unpacked>::uninit() }; 8 * SCRATCH_BLOCKS];
    let mut tb0 = 0;
    while tb0 < tile.tokens {
        let tb_end = (tb0 + TOKEN_BLOCK).min(tile.tokens);
        let mut r = 0;
        while r < tile.rows {
            let rows = (tile.rows - r).min(2);
            // SAFETY: rows r..r + rows exist; the scratch holds 8 * nb records.
            unsafe { unpack_pair::<K>(tile, r, rows, nb, scratch.as_mut_ptr().cast()) };
            let mut t0 = tb0;
            while t0 < tb_end {
                let rn = (tb_end - t0).min(SCRATCH_RN);
                // SAFETY: rows r..r + rows and tokens t0..t0 + rn are inside the tile;
                // records 0..8 nb were written by unpack_pair.
                unsafe { run::<K>(1, rn, tile, r, rows, t0, scratch.as_ptr().cast()) };
                t0 += rn;
            }
            r += rows;
        }
        tb0 = tb_end;
    }
}

/// Unpacks every chunk of rows `r0, r0 + 1` (`rows` = 1: row `r0` twice) into
/// `out[8 b + J]`.
///
/// # Safety
/// The rows exist in the tile; `out` is valid for `8 * nb` writes.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")]
unsafe fn unpack_pair<K: KQuant>(
    tile: &GemmTile,
    r0: usize,
    rows: usize,
    nb: usize,
    out: *mut Unpacked,
) {
    for b in 0..nb {
        // SAFETY: block b of both rows exists (the caller's contract).
        let w: [*const u8; 2] = std::array::from_fn(|h| unsafe {
            tile.w
                .add((r0 + h.min(rows - 1)) * tile.w_stride + b * K::BLOCK_BYTES)
        });
        // SAFETY: whole blocks.
        let sc: [K::Scales; 2] = std::array::from_fn(|h| unsafe { K::decode(w[h]) });
        // SAFETY: whole blocks and their scales; out + 8b + J < out + 8 nb.
        unsafe {
            let o = out.add(8 * b);
            o.write(unpack::<K, 0>(&w, &sc));
            o.add(1).write(unpack::<K, 1>(&w, &sc));
            o.add(2).write(unpack::<K, 2>(&w, &sc));
            o.add(3).write(unpack::<K, 3>(&w, &sc));
            o.add(4).write(unpack::<K, 4>(&w, &sc));
            o.add(5).write(unpack::<K, 5>(&w, &sc));
            o.add(6).write(unpack::<K, 6>(&w, &sc));
            o.add(7).write(unpack::<K, 7>(&w, &sc));
        }
    }
}

/// Chunk `J` of a row pair's blocks `w` (decoded scales `sc`), joined.
///
/// # Safety
/// `w[h]` are whole blocks; AVX512 BW/VL.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")]
unsafe fn unpack<K: KQuant, const J: usize>(w: &[*const u8; 2], sc: &[K::Scales; 2]) -> Unpacked {
    // SAFETY: forwarded contract.
    let ((q0, s0), (q1, s1)) =
        unsafe { (K::chunk::<J>(w[0], &sc[0]), K::chunk::<J>(w[1], &sc[1])) };
    Unpacked {
        q: join(q0, q1),
        s: join(s0, s1),
    }
}

/// Two 256-bit halves as one vector.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")]
fn join(lo: __m256i, hi: __m256i) -> __m512i {
    _mm512_inserti64x4::<1>(_mm512_castsi256_si512(lo), hi)
}

/// The exact int sums of the 8 lanes of each half of `v[0..RP * RN]`, in slot lanes:
/// result `i` holds slots `8i .. 8i + 8`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")]
fn slot_sums<const RP: usize, const RN: usize>(v: &[__m512i; MAX_VECS]) -> [__m256i; 2] {
    let halves: [__m256i; MAX_SLOTS] = std::array::from_fn(|s| {
        let x = v[s / 2];
        if s % 2 == 0 {
            _mm512_castsi512_si256(x)
        } else {
            _mm512_extracti64x4_epi64::<1>(x)
        }
    });
    let lo: [__m256i; 8] = std::array::from_fn(|i| halves[i]);
    let hi: [__m256i; 8] = std::array::from_fn(|i| halves[8 + i]);
    if 2 * RP * RN > 8 {
        [hsum8_epi32(&lo), hsum8_epi32(&hi)]
    } else {
        [hsum8_epi32(&lo), _mm256_setzero_si256()]
    }
}

/// `(d * da, dmin * da)` of every slot, in slot lanes (as [`slot_sums`]).
///
/// # Safety
/// `w[p][h]` / `a[t]` point to whole blocks.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")]
unsafe fn slot_scales<K: KQuant, const RP: usize, const RN: usize>(
    w: &[[*const u8; 2]; RP],
    a: &[*const u8; RN],
) -> (__m512, __m512) {
    // d and dmin (f16 bits) of row 2p + h at 2p + h.
    let (mut d, mut dmin) = ([0u16; 16], [0u16; 16]);
    for (p, rows) in w.iter().enumerate() {
        for (h, &row) in rows.iter().enumerate() {
            // SAFETY: a whole block (the caller's contract).
            let bits = unsafe { K::d_dmin_bits(row) };
            (d[2 * p + h], dmin[2 * p + h]) = (bits as u16, (bits >> 16) as u16);
        }
    }
    let mut da = [0f32; 16];
    for (t, &at) in a.iter().enumerate() {
        // SAFETY: the Q8_K block starts with its f32 d.
        da[t] = unsafe { std::ptr::read_unaligned(at as *const f32) };
    }
    // Slot s = 2 (p RN + t) + h is row 2p + h, token t.
    let row: [i32; 16] = std::array::from_fn(|s| (2 * (s / 2 / RN) + s % 2).min(15) as i32);
    let tok: [i32; 16] = std::array::from_fn(|s| ((s / 2) % RN) as i32);
    // SAFETY: every array read is 16 elements of 2 or 4 bytes.
    unsafe {
        let by_row = _mm512_loadu_si512(row.as_ptr().cast());
        let da = _mm512_permutexvar_ps(
            _mm512_loadu_si512(tok.as_ptr().cast()),
            _mm512_loadu_ps(da.as_ptr()),
        );
        let f = |h: &[u16; 16]| _mm512_cvtph_ps(_mm256_loadu_si256(h.as_ptr().cast()));
        (
            _mm512_mul_ps(_mm512_permutexvar_ps(by_row, f(&d)), da),
            _mm512_mul_ps(_mm512_permutexvar_ps(by_row, f(&dmin)), da),
        )
    }
}

/// One register tile: rows `r0 .. r0 + rows` (`rows` is `2 RP` or `2 RP - 1`) x tokens
/// `t0 .. t0 + RN` over the whole `k`. `unpacked`: null, or (with `RP` = 1) the row
/// pair's chunks unpacked by [`unpack_pair`].
///
/// # Safety
/// The rows and tokens are inside the tile, whose pointers are valid as [`GemmTile`]
/// documents; a non-null `unpacked` holds the pair's `8 * k / 256` chunks; the CPU has
/// AVX512 BW/VL/DQ and VNNI.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")]
unsafe fn tile<K: KQuant, const RP: usize, const RN: usize>(
    tile: &GemmTile,
    r0: usize,
    rows: usize,
    t0: usize,
    unpacked: *const Unpacked,
) {
    const { assert!(RP * RN <= MAX_VECS && RN <= SCRATCH_RN) };
    const { assert!(!matches!(K::ORDER, Order::GgmlLanes) || K::SUM_SHIFT == 0) };
    let ws = tile.w_stride;
    let gemv = tile.tokens <= GEMV_MAX_TOKENS;
    // Row 2p + h, the odd last row standing in for its missing partner.
    let row_of = |p: usize, h: usize| r0 + (2 * p + h).min(rows - 1);
    // Slot lanes: the f32 sums (GgmlLanes: the minimums') and Repack's minimum sums.
    let mut acc = _mm512_setzero_ps();
    let mut acc_min = _mm512_setzero_ps();
    // GgmlLanes: the two rows' 8-lane f32 accumulators of each vector.
    let mut lane_acc = [_mm512_setzero_ps(); MAX_VECS];
    for b in 0..tile.k / QK_K {
        if gemv {
            // The same block of the rows two tiles ahead, into L2.
            for r in 2 * rows..3 * rows {
                let p = tile.w.wrapping_add((r0 + r) * ws + b * K::BLOCK_BYTES);
                let mut off = 0;
                while off < K::BLOCK_BYTES + 63 {
                    // A prefetch never faults, whatever the address.
                    _mm_prefetch::<_MM_HINT_T1>(p.wrapping_add(off).cast());
                    off += 64;
                }
            }
        }
        // SAFETY: the rows and tokens are inside the tile and block b < k / 256 exists.
        let w: [[*const u8; 2]; RP] = std::array::from_fn(|p| {
            std::array::from_fn(|h| unsafe { tile.w.add(row_of(p, h) * ws + b * K::BLOCK_BYTES) })
        });
        // SAFETY: as above.
        let a: [*const u8; RN] = std::array::from_fn(|t| unsafe {
            tile.a.add((t0 + t) * tile.a_stride + b * ACT_BLOCK)
        });
        let mut sumi = [_mm512_setzero_si512(); MAX_VECS];
        if unpacked.is_null() {
            // SAFETY: whole blocks.
            let scales: [[K::Scales; 2]; RP] =
                std::array::from_fn(|p| std::array::from_fn(|h| unsafe { K::decode(w[p][h]) }));
            // SAFETY: whole blocks, as above.
            unsafe {
                chunk::<K, 0, RP, RN>(&w, &scales, &a, &mut sumi);
                chunk::<K, 1, RP, RN>(&w, &scales, &a, &mut sumi);
                chunk::<K, 2, RP, RN>(&w, &scales, &a, &mut sumi);
                chunk::<K, 3, RP, RN>(&w, &scales, &a, &mut sumi);
                chunk::<K, 4, RP, RN>(&w, &scales, &a, &mut sumi);
                chunk::<K, 5, RP, RN>(&w, &scales, &a, &mut sumi);
                chunk::<K, 6, RP, RN>(&w, &scales, &a, &mut sumi);
                chunk::<K, 7, RP, RN>(&w, &scales, &a, &mut sumi);
            }
        } else {
            debug_assert_eq!(RP, 1);
            for j in 0..8 {
                // SAFETY: record 8b + j was written (the caller's contract).
                let u = unsafe { *unpacked.add(8 * b + j) };
                // SAFETY: whole activation blocks.
                unsafe { products::<RN>(0, &u, &a, j, &mut sumi) };
            }
        }
        // The bsums term of each (row, token): in its half's 8 lanes, as in AVX2.
        let mut mins = [_mm512_setzero_si512(); MAX_VECS];
        for (p, wp) in w.iter().enumerate().take(RP) {
            // SAFETY: whole blocks.
            let m16 = unsafe { join(K::bsums_multipliers(wp[0]), K::bsums_multipliers(wp[1])) };
            for (t, at) in a.iter().enumerate().take(RN) {
                // SAFETY: the activation block holds 16 i16 bsums at ACT_BSUMS.
                let bs =
                    unsafe { _mm512_broadcast_i64x4(_mm256_loadu_si256(at.add(ACT_BSUMS).cast())) };
                let m = _mm512_madd_epi16(m16, bs);
                let v = p * RN + t;
                if K::OFFSET_BY_D {
                    sumi[v] = _mm512_sub_epi32(sumi[v], m);
                } else {
                    mins[v] = m;
                }
            }
        }
        // SAFETY: whole blocks.
        let (dd, ddmin) = unsafe { slot_scales::<K, RP, RN>(&w, &a) };
        if matches!(K::ORDER, Order::GgmlLanes) {
            for (v, lanes) in lane_acc.iter_mut().enumerate().take(RP * RN) {
                // [d * da of the first row x 8 | of the second x 8]: slots 2v, 2v + 1.
                let pick = _mm512_add_epi32(
                    _mm512_set1_epi32(2 * v as i32),
                    _mm512_inserti64x4::<1>(_mm512_setzero_si512(), _mm256_set1_epi32(1)),
                );
                let d = _mm512_permutexvar_ps(pick, dd);
                *lanes = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sumi[v]), d, *lanes);
            }
        } else {
            let [lo, hi] = slot_sums::<RP, RN>(&sumi);
            let sums = join(lo, hi);
            let sums = if K::SUM_SHIFT > 0 {
                _mm512_sra_epi32(sums, _mm_cvtsi32_si128(K::SUM_SHIFT))
            } else {
                sums
            };
            acc = _mm512_fmadd_ps(dd, _mm512_cvtepi32_ps(sums), acc);
        }
        if !K::OFFSET_BY_D {
            let [lo, hi] = slot_sums::<RP, RN>(&mins);
            let m = _mm512_cvtepi32_ps(join(lo, hi));
            if matches!(K::ORDER, Order::Repack) {
                acc_min = _mm512_fmadd_ps(ddmin, m, acc_min);
            } else {
                acc = _mm512_fnmadd_ps(ddmin, m, acc);
            }
        }
    }
    if matches!(K::ORDER, Order::Repack) {
        acc = _mm512_sub_ps(acc, acc_min);
    }
    let mut slots = [0f32; 16];
    // SAFETY: `slots` is 16 f32.
    unsafe { _mm512_storeu_ps(slots.as_mut_ptr(), acc) };
    for p in 0..RP {
        for h in 0..2 {
            if 2 * p + h >= rows {
                continue;
            }
            for t in 0..RN {
                let s = 2 * (p * RN + t) + h;
                let v = if matches!(K::ORDER, Order::GgmlLanes) {
                    let mut l = [0f32; 16];
                    // SAFETY: `l` is 16 f32.
                    unsafe { _mm512_storeu_ps(l.as_mut_ptr(), lane_acc[p * RN + t]) };
                    let sum = hsum_float_8(std::array::from_fn(|i| l[8 * h + i]));
                    if K::OFFSET_BY_D {
                        sum
                    } else {
                        sum + slots[s]
                    }
                } else {
                    slots[s]
                };
                // SAFETY: row r0 + 2p + h < r0 + rows and token t0 + t are the tile's.
                unsafe { *tile.out.add((t0 + t) * tile.ldo + r0 + 2 * p + h) = v };
            }
        }
    }
}

/// Adds the products of chunk `J` of every row pair with the same chunk of every token.
///
/// # Safety
/// `w[p][h]` / `a[t]` point to whole blocks; AVX512 BW/VL/VNNI.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")]
unsafe fn chunk<K: KQuant, const J: usize, const RP: usize, const RN: usize>(
    w: &[[*const u8; 2]; RP],
    scales: &[[K::Scales; 2]; RP],
    a: &[*const u8; RN],
    sumi: &mut [__m512i; MAX_VECS],
) {
    for p in 0..RP {
        // SAFETY: whole blocks and their decoded scales.
        let u = unsafe { unpack::<K, J>(&w[p], &scales[p]) };
        // SAFETY: whole activation blocks.
        unsafe { products::<RN>(p * RN, &u, a, J, sumi) };
    }
}

/// `sumi[v0 + t] += madd(maddubs(q, a_t), s)` for chunk `j` of every token `t`, its 32
/// activations in both halves.
///
/// # Safety
/// `a[t]` point to whole activation blocks; `j < 8`; AVX512 BW/VL/VNNI.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")]
unsafe fn products<const RN: usize>(
    v0: usize,
    u: &Unpacked,
    a: &[*const u8; RN],
    j: usize,
    sumi: &mut [__m512i; MAX_VECS],
) {
    for (t, &at) in a.iter().enumerate() {
        // SAFETY: the activation block holds 256 quants from ACT_QS; j < 8.
        let x =
            unsafe { _mm512_broadcast_i64x4(_mm256_loadu_si256(at.add(ACT_QS + 32 * j).cast())) };
        sumi[v0 + t] = _mm512_dpwssd_epi32(sumi[v0 + t], _mm512_maddubs_epi16(u.q, x), u.s);
    }
}
