//! What the pair formats share: lane constants, the rearranged Q8_K super-block, and the
//! loads that put two rows' scale fields in the two halves of a vector.

use std::arch::x86_64::*;
use std::ptr::addr_of_mut;

use super::super::tile::v32;

/// Bytes of one Q8_K block (f32 d, 256 int8, 16 int16 block sums) and its fields.
pub(super) const Q8K_BLOCK: usize = 292;
const Q8K_QS: usize = 4;
const Q8K_BSUMS: usize = 260;

/// Lane `h * 8 + j` = `a[j] + h * stride`: a permute index reading row `h`'s source (the
/// second source of a two-source permute starts at 16), or a per-row constant.
pub(super) const fn two_rows(a: [i32; 8], stride: i32) -> __m512i {
    let mut l = [0i32; 16];
    let mut i = 0;
    while i < 16 {
        l[i] = a[i % 8] + (i / 8) as i32 * stride;
        i += 1;
    }
    v32(l)
}

/// One Q8_K super-block rearranged for a pair format: the 8 chunk vectors (lane `j` of
/// vector `v` is the activation dword the format's weight lane `j` of vector `v` meets;
/// loaded with a 256-bit broadcast, so both rows see it) and three vectors of side data
/// whose meaning is the format's (scales, block sums).
#[repr(C, align(64))]
pub(in crate::cpu::avx512) struct KAct {
    pub q: [[u8; 32]; 8],
    pub side: [[u32; 16]; 3],
}

/// Permute indices of [`repack_chunks`]: zmm `i` of the output holds vectors `2i` and
/// `2i + 1`, taken from dwords `idx & 31` of the first (`mask` bit clear: dwords 0..32)
/// or the second half of the 64 quant dwords.
pub(super) struct ChunkTable {
    idx: [__m512i; 4],
    mask: [u16; 4],
}

/// The [`ChunkTable`] of `dword(v, j)`: the quant dword (0..64) of lane `j` of vector `v`.
pub(super) const fn chunk_table(dword: [[i32; 8]; 8]) -> ChunkTable {
    let mut idx = [[0i32; 16]; 4];
    let mut mask = [0u16; 4];
    let mut i = 0;
    while i < 4 {
        let mut l = 0;
        while l < 16 {
            let d = dword[2 * i + l / 8][l % 8];
            idx[i][l] = d & 31;
            if d >= 32 {
                mask[i] |= 1 << l;
            }
            l += 1;
        }
        i += 1;
    }
    ChunkTable {
        idx: [v32(idx[0]), v32(idx[1]), v32(idx[2]), v32(idx[3])],
        mask,
    }
}

/// Writes the 8 chunk vectors of the Q8_K block at `blk` into `out.q`.
///
/// # Safety
/// `blk` is a whole Q8_K block; `out` is valid for writes; AVX512+VNNI.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")]
pub(super) unsafe fn repack_chunks(blk: *const u8, t: &ChunkTable, out: *mut KAct) {
    // SAFETY: 256 quant bytes at blk + 4 (the caller's contract); the stores are the 256
    // bytes of out.q, 64-byte aligned.
    unsafe {
        let qs = blk.add(Q8K_QS);
        let q = [
            _mm512_loadu_si512(qs.cast()),
            _mm512_loadu_si512(qs.add(64).cast()),
            _mm512_loadu_si512(qs.add(128).cast()),
            _mm512_loadu_si512(qs.add(192).cast()),
        ];
        let dst = addr_of_mut!((*out).q).cast::<u8>();
        for i in 0..4 {
            let lo = _mm512_permutex2var_epi32(q[0], t.idx[i], q[1]);
            let hi = _mm512_permutex2var_epi32(q[2], t.idx[i], q[3]);
            let v = _mm512_mask_blend_epi32(t.mask[i], lo, hi);
            _mm512_store_si512(dst.add(64 * i).cast(), v);
        }
    }
}

/// The Q8_K block's scale `d` and its 16 block sums as int32 lanes.
///
/// # Safety
/// As [`repack_chunks`].
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")]
pub(super) unsafe fn d_and_bsums(blk: *const u8) -> (__m512, __m512i) {
    // SAFETY: the f32 d at 0 and the 16 int16 sums at 260 of the block.
    unsafe {
        (
            _mm512_set1_ps(blk.cast::<f32>().read_unaligned()),
            _mm512_cvtepi16_epi32(_mm256_loadu_si256(blk.add(Q8K_BSUMS).cast())),
        )
    }
}

/// Stores side vector `i` of `out`.
///
/// # Safety
/// `out` is valid for writes; AVX512F.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")]
pub(super) unsafe fn set_side(out: *mut KAct, i: usize, v: __m512i) {
    // SAFETY: side[i] (i < 3) is 64 bytes inside *out, 64-byte aligned.
    unsafe { _mm512_store_si512(addr_of_mut!((*out).side[i]).cast(), v) };
}

/// Side vector `i` of `act`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")]
pub(super) fn side(act: &KAct, i: usize) -> __m512i {
    // SAFETY: side[i] is 64 readable bytes, 64-byte aligned.
    unsafe { _mm512_load_si512(act.side[i].as_ptr().cast()) }
}

/// Chunk vector `v` of `act` in both halves.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")]
pub(super) fn chunk(act: &KAct, v: usize) -> __m512i {
    // SAFETY: q[v] is 32 readable bytes, 32-byte aligned.
    unsafe { _mm512_broadcast_i64x4(_mm256_load_si256(act.q[v].as_ptr().cast())) }
}

/// The 16 bytes at `p0` in 128-bit lanes 0 and 1, those at `p1` in lanes 2 and 3: a
/// per-lane byte shuffle then reaches row `h`'s bytes from lanes `h * 8 + j`.
///
/// # Safety
/// 16 bytes are readable at each pointer; AVX512+VNNI.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")]
pub(super) unsafe fn row_bytes16(p0: *const u8, p1: *const u8) -> __m512i {
    // SAFETY: the caller's contract.
    unsafe {
        let r0 = _mm256_broadcastsi128_si256(_mm_loadu_si128(p0.cast()));
        let r1 = _mm256_broadcastsi128_si256(_mm_loadu_si128(p1.cast()));
        _mm512_inserti64x4::<1>(_mm512_castsi256_si512(r0), r1)
    }
}

/// Lane `h * 8 + j` = lane `2h` (first) or `2h + 1` (second) of `[d0, dmin0, d1, dmin1]`.
const FIRST_OF_ROW: __m512i = two_rows([0; 8], 2);
const SECOND_OF_ROW: __m512i = two_rows([1; 8], 2);

/// The two f16 at `p0` (row 0) and `p1` (row 1) as f32: the first of each in lanes
/// `h * 8 + j` of the first vector, the second in the second vector.
///
/// # Safety
/// 4 bytes are readable at each pointer; AVX512+VNNI.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")]
pub(super) unsafe fn f16_pairs(p0: *const u8, p1: *const u8) -> (__m512, __m512) {
    // SAFETY: the caller's contract.
    let (b0, b1) = unsafe {
        (
            p0.cast::<i32>().read_unaligned(),
            p1.cast::<i32>().read_unaligned(),
        )
    };
    let f = _mm512_castps128_ps512(_mm_cvtph_ps(_mm_set_epi32(0, 0, b1, b0)));
    (
        _mm512_permutexvar_ps(FIRST_OF_ROW, f),
        _mm512_permutexvar_ps(SECOND_OF_ROW, f),
    )
}

/// The f16 at `p0` (row 0) and `p1` (row 1) as f32 in lanes `h * 8 + j`.
///
/// # Safety
/// 2 bytes are readable at each pointer; AVX512+VNNI.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")]
pub(super) unsafe fn f16_rows(p0: *const u8, p1: *const u8) -> __m512 {
    // SAFETY: the caller's contract.
    let bits = unsafe {
        p0.cast::<u16>().read_unaligned() as u32 | (p1.cast::<u16>().read_unaligned() as u32) << 16
    };
    let f = _mm512_castps128_ps512(_mm_cvtph_ps(_mm_cvtsi32_si128(bits as i32)));
    _mm512_permutexvar_ps(two_rows([0; 8], 1), f)
}
