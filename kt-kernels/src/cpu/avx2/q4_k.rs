//! Q4_K on AVX2: 4-bit quants, a 6-bit scale and a 6-bit minimum per 32-weight
//! sub-block. Chunk `J` is sub-block `J`: the low nibbles of `qs[32 * (J / 2)..]` for
//! even `J`, the high nibbles for odd `J`.

use std::arch::x86_64::*;

use super::kquant::{load32, read_u32, KQuant, Order, ACT_BSUMS};

/// Byte offsets in the 144-byte block: `d, dmin: f16`, 12 bytes of packed scales, 128
/// bytes of nibbles.
const SCALES: usize = 4;
const QS: usize = 16;

pub(crate) struct Q4K;

/// Unpacks the 12 bytes of 6-bit scales and minimums of Q4_K / Q5_K into
/// `[scale 0..8, min 0..8]` (one byte each).
///
/// Layout, by 4-byte words: word 0 holds the low 6 bits of scales 0..3 (its top 2
/// bits: the high bits of scales 4..7), word 1 the same for the minimums, and word 2
/// the low 4 bits of scales 4..7 (low nibbles) and of minimums 4..7 (high nibbles).
///
/// # Safety
/// `p .. p + 16` is readable (the 12 bytes and 4 bytes after them, which are ignored).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn unpack_scales_mins(p: *const u8) -> __m128i {
    // SAFETY: the caller's contract; loadu has no alignment requirement.
    let v = unsafe { _mm_loadu_si128(p as *const __m128i) };
    // Low parts, by output word: [w0 & 63, w2 & 15, w1 & 63, (w2 >> 4) & 15].
    let low = _mm_and_si128(
        _mm_srlv_epi32(
            _mm_shuffle_epi32::<0b10_01_10_00>(v),
            _mm_setr_epi32(0, 0, 0, 4),
        ),
        _mm_setr_epi32(0x3f3f_3f3f, 0x0f0f_0f0f, 0x3f3f_3f3f, 0x0f0f_0f0f),
    );
    // High 2 bits of scales / minimums 4..7: bits 6..7 of words 0 / 1 moved to bits
    // 4..5 (the shift drags bits of the next byte into bits 6..7; the mask drops them).
    let high = _mm_and_si128(
        _mm_srli_epi32::<2>(_mm_shuffle_epi32::<0b01_00_00_00>(v)),
        _mm_setr_epi32(0, 0x3030_3030, 0, 0x3030_3030),
    );
    _mm_or_si128(low, high)
}

/// [`unpack_scales_mins`] of two blocks' 16 bytes, one per 128-bit half of `v` (the same
/// steps, in-lane).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn unpack_scales_mins_x2(v: __m256i) -> __m256i {
    let low = _mm256_and_si256(
        _mm256_srlv_epi32(
            _mm256_shuffle_epi32::<0b10_01_10_00>(v),
            _mm256_setr_epi32(0, 0, 0, 4, 0, 0, 0, 4),
        ),
        _mm256_setr_epi32(
            0x3f3f_3f3f,
            0x0f0f_0f0f,
            0x3f3f_3f3f,
            0x0f0f_0f0f,
            0x3f3f_3f3f,
            0x0f0f_0f0f,
            0x3f3f_3f3f,
            0x0f0f_0f0f,
        ),
    );
    let high = _mm256_and_si256(
        _mm256_srli_epi32::<2>(_mm256_shuffle_epi32::<0b01_00_00_00>(v)),
        _mm256_setr_epi32(
            0,
            0x3030_3030,
            0,
            0x3030_3030,
            0,
            0x3030_3030,
            0,
            0x3030_3030,
        ),
    );
    _mm256_or_si256(low, high)
}

/// [`KQuant::decode8`] of Q4_K: the scale pairs of [`scale_pairs_32`] and the minimums'
/// `bsums` term of the 8 rows, without a per-row `madd` and reduction.
///
/// Rows `r` and `r + 4` share a vector through [`unpack_scales_mins_x2`]. The minimums
/// (bytes 8..16 of each half), widened to words, are transposed by dword: `m[k]` holds in
/// dword `r` the minimums `2k` and `2k + 1` of row `r`, so `madd(m[k], b_k)`, with `b_k`
/// the broadcast pair of the activation's 32-element sums `bsums[4k] + bsums[4k + 1]`,
/// `bsums[4k + 2] + bsums[4k + 3]` (each at most 32 * 128, an i16), puts sub-blocks `2k`
/// and `2k + 1` of every row in its lane; four of them add up to the row's term, the same
/// integers as the per-row path. On the dev VM's EPYC (1 thread, Q4_K 1408x2048 at one
/// token, cache-resident) it and chunk 0's plain assignment take the 8-row step from ~498
/// to ~390 vector instructions per super-block (`BENCHMARKS.md`, session 11). Q5_K, whose
/// scales are packed the same way, measured 10-25% slower with it (its ggml-order tile
/// keeps 8 f32 lane accumulators more) and keeps the per-row path.
///
/// # Safety
/// Every `w[r]` points to a whole block; `a` points to a whole Q8_K block.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn decode8_scales_mins(w: &[*const u8; 8], a: *const u8) -> ([[u32; 8]; 8], __m256i) {
    let zero = _mm256_setzero_si256();
    let mut out = [[0u32; 8]; 8];
    let mut mins = [zero; 4];
    for r in 0..4 {
        // SAFETY: whole blocks: 12 scale bytes at SCALES and the nibbles after them.
        let v = unsafe {
            _mm256_inserti128_si256::<1>(
                _mm256_castsi128_si256(_mm_loadu_si128(w[r].add(SCALES).cast())),
                _mm_loadu_si128(w[r + 4].add(SCALES).cast()),
            )
        };
        let sm = unpack_scales_mins_x2(v);
        let sc = _mm256_unpacklo_epi8(sm, zero);
        let (lo, hi) = (_mm256_unpacklo_epi16(sc, sc), _mm256_unpackhi_epi16(sc, sc));
        // SAFETY: out[r] and out[r + 4] are 32 writable bytes each; storeu has no
        // alignment requirement.
        unsafe {
            let (p, q) = (
                out[r].as_mut_ptr().cast::<__m128i>(),
                out[r + 4].as_mut_ptr().cast::<__m128i>(),
            );
            _mm_storeu_si128(p, _mm256_castsi256_si128(lo));
            _mm_storeu_si128(p.add(1), _mm256_castsi256_si128(hi));
            _mm_storeu_si128(q, _mm256_extracti128_si256::<1>(lo));
            _mm_storeu_si128(q.add(1), _mm256_extracti128_si256::<1>(hi));
        }
        mins[r] = _mm256_unpackhi_epi8(sm, zero);
    }
    let (t0, t1) = (
        _mm256_unpacklo_epi32(mins[0], mins[1]),
        _mm256_unpackhi_epi32(mins[0], mins[1]),
    );
    let (t2, t3) = (
        _mm256_unpacklo_epi32(mins[2], mins[3]),
        _mm256_unpackhi_epi32(mins[2], mins[3]),
    );
    let m = [
        _mm256_unpacklo_epi64(t0, t2),
        _mm256_unpackhi_epi64(t0, t2),
        _mm256_unpacklo_epi64(t1, t3),
        _mm256_unpackhi_epi64(t1, t3),
    ];
    // SAFETY: the activation block holds 16 i16 bsums at ACT_BSUMS.
    let bsums = unsafe { load32(a.add(ACT_BSUMS)) };
    // Per 128-bit half: the four sub-block sums as words, twice (dwords 0, 1 and 4, 5 hold
    // sub-blocks 0..4 and 4..8).
    let sub = _mm256_madd_epi16(bsums, _mm256_set1_epi16(1));
    let words = _mm256_packs_epi32(sub, sub);
    let b = |i: i32| _mm256_permutevar8x32_epi32(words, _mm256_set1_epi32(i));
    let s01 = _mm256_add_epi32(_mm256_madd_epi16(m[0], b(0)), _mm256_madd_epi16(m[1], b(1)));
    let s23 = _mm256_add_epi32(_mm256_madd_epi16(m[2], b(4)), _mm256_madd_epi16(m[3], b(5)));
    (out, _mm256_add_epi32(s01, s23))
}

/// 8 sub-block scales (bytes 0..8 of `sm`), each as the u32 `scale | scale << 16`:
/// broadcast, it is the 16 i16 lanes `madd` multiplies a 32-weight chunk's pair sums
/// with. Kept in memory so the broadcast is a load (`vpbroadcastd m32`), not a shuffle.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn scale_pairs_32(sm: __m128i) -> [u32; 8] {
    let sc = _mm_cvtepu8_epi16(sm);
    let mut out = [0u32; 8];
    // SAFETY: `out` is 32 writable bytes; storeu has no alignment requirement.
    unsafe {
        _mm_storeu_si128(out.as_mut_ptr() as *mut __m128i, _mm_unpacklo_epi16(sc, sc));
        _mm_storeu_si128(
            out.as_mut_ptr().add(4) as *mut __m128i,
            _mm_unpackhi_epi16(sc, sc),
        );
    }
    out
}

/// The 16 i16 `bsums` multipliers of 8 minimums (bytes 8..16 of `sm`) of 32-weight
/// sub-blocks: each minimum covers two 16-element groups.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn mins_32(sm: __m128i) -> __m256i {
    _mm256_cvtepu8_epi16(_mm_unpackhi_epi8(sm, sm))
}

impl KQuant for Q4K {
    const BLOCK_BYTES: usize = 144;
    const OFFSET_BY_D: bool = false;
    const ORDER: Order = Order::Repack;
    type Scales = [u32; 8];

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn decode(x: *const u8) -> [u32; 8] {
        // SAFETY: the block holds 12 scale bytes at SCALES and 128 bytes after them.
        scale_pairs_32(unsafe { unpack_scales_mins(x.add(SCALES)) })
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn bsums_multipliers(x: *const u8) -> __m256i {
        // SAFETY: the block holds 12 scale bytes at SCALES and 128 bytes after them.
        mins_32(unsafe { unpack_scales_mins(x.add(SCALES)) })
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn chunk<const J: usize>(x: *const u8, sc: &[u32; 8]) -> (__m256i, __m256i) {
        // SAFETY: 128 nibble bytes at QS; J / 2 < 4.
        let raw = unsafe { load32(x.add(QS + 32 * (J / 2))) };
        let nib = _mm256_set1_epi8(0x0f);
        let q = if J.is_multiple_of(2) {
            _mm256_and_si256(raw, nib)
        } else {
            _mm256_and_si256(_mm256_srli_epi16::<4>(raw), nib)
        };
        (q, _mm256_set1_epi32(sc[J] as i32))
    }

    const JOINT8: bool = true;

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn decode8(w: &[*const u8; 8], a: *const u8) -> ([[u32; 8]; 8], __m256i) {
        // SAFETY: whole blocks, the caller's contract.
        unsafe { decode8_scales_mins(w, a) }
    }

    #[inline]
    unsafe fn d_dmin_bits(x: *const u8) -> u32 {
        // SAFETY: d and dmin are the block's first 4 bytes.
        unsafe { read_u32(x) }
    }
}
