//! Repacking of quantized activations (Q8_K rows, Q8_0 rows) into the column layout of
//! [`super::tile`]: per token pair and group, the 8 chunks plus the f32 scales and
//! scaled column sums the kernels multiply with. Done once per tile and K slice, so its
//! cost is shared by every weight row of the tile.

use std::arch::x86_64::*;
use std::ptr::addr_of_mut;

use super::tile::{v32, COLS};
use crate::quant::QType;

/// Bytes of one Q8_K block (f32 d, 256 int8, 16 int16 block sums).
const Q8K_BLOCK: usize = 292;
/// Bytes of one Q8_0 block (f16 d, 32 int8).
const Q80_BLOCK: usize = 34;

/// The activations of one token pair for one group.
#[repr(C, align(64))]
pub(super) struct PairGroup {
    /// Chunk `c`: lane `h * 8 + j` = bytes `4c..4c + 4` of column `j` of token `h`.
    pub chunks: [[u8; 64]; 8],
    /// Lane `h * 8 + j`: the activation scale of column `j` of token `h`.
    pub da: [f32; 16],
    /// `da` times the sum of the column's 32 quants.
    pub fa: [f32; 16],
    /// `da` times the sum of the column's first 16 quants (Q8_K only).
    pub flo: [f32; 16],
    /// `da` times the sum of the column's last 16 quants (Q8_K only).
    pub fhi: [f32; 16],
    /// `-offset` times the sum of the column's first 16 quants (Q8_K) or of all 32
    /// (Q8_0), for weights stored with an unsigned offset (see
    /// [`super::tile::ColumnFormat::OFFSET`]): the GEMM path starts its integer sums here.
    pub off_lo: [i32; 16],
    /// `-offset` times the sum of the column's last 16 quants (Q8_K; 0 for Q8_0).
    pub off_hi: [i32; 16],
}

/// Stage 1 of the 8x8 dword transpose: lane `4c' + j` = dword `cb + c'` of row `j`
/// (`j < 4`), rows 0,1 in the first source and 2,3 in the second.
const fn stage1(cb: i32) -> __m512i {
    let mut a = [0i32; 16];
    let mut l = 0;
    while l < 16 {
        let (c, j) = ((l / 4) as i32, (l % 4) as i32);
        a[l] = if j < 2 {
            8 * j + cb + c
        } else {
            16 + 8 * (j - 2) + cb + c
        };
        l += 1;
    }
    v32(a)
}

/// Stage 2: lane `h * 8 + j` = row `j`'s dword of local chunk `2s + h`, rows 0..4 from
/// the first source and 4..8 from the second.
const fn stage2(s: i32) -> __m512i {
    let mut a = [0i32; 16];
    let mut l = 0;
    while l < 16 {
        let (h, j) = ((l / 8) as i32, (l % 8) as i32);
        let cl = 2 * s + h;
        a[l] = if j < 4 {
            4 * cl + j
        } else {
            16 + 4 * cl + (j - 4)
        };
        l += 1;
    }
    v32(a)
}

const T1_LO: __m512i = stage1(0);
const T1_HI: __m512i = stage1(4);
const T2_EVEN: __m512i = stage2(0);
const T2_ODD: __m512i = stage2(1);
/// Block sums `[b0, b2, .., b14, b1, b3, .., b15]`.
const EVEN_THEN_ODD: __m512i = v32([0, 2, 4, 6, 8, 10, 12, 14, 1, 3, 5, 7, 9, 11, 13, 15]);

/// Transposes 8 rows of 8 dwords (`x[k]` = rows `2k` and `2k + 1`) into chunk pairs:
/// `m[i]` = `[chunk 2i | chunk 2i + 1]`, where chunk `c` lane `j` = dword `c` of row `j`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")]
pub(super) fn transpose_8x8(x: [__m512i; 4]) -> [__m512i; 4] {
    let u0 = _mm512_permutex2var_epi32(x[0], T1_LO, x[1]);
    let u1 = _mm512_permutex2var_epi32(x[0], T1_HI, x[1]);
    let v0 = _mm512_permutex2var_epi32(x[2], T1_LO, x[3]);
    let v1 = _mm512_permutex2var_epi32(x[2], T1_HI, x[3]);
    [
        _mm512_permutex2var_epi32(u0, T2_EVEN, v0),
        _mm512_permutex2var_epi32(u0, T2_ODD, v0),
        _mm512_permutex2var_epi32(u1, T2_EVEN, v1),
        _mm512_permutex2var_epi32(u1, T2_ODD, v1),
    ]
}

/// The f32 side data of one token's half of a record.
struct HalfScales {
    da: __m256,
    fa: __m256,
    flo: __m256,
    fhi: __m256,
    off_lo: __m256i,
    off_hi: __m256i,
}

/// Writes token `h`'s half of `rec`.
///
/// # Safety
/// `rec` is valid for writes of one `PairGroup`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")]
unsafe fn write_half(rec: *mut PairGroup, h: usize, m: &[__m512i; 4], s: &HalfScales) {
    // SAFETY: every address is inside *rec (chunk 2i + e < 8, half h < 2), 32-byte
    // aligned (the record is 64-byte aligned), and written through raw pointers only.
    unsafe {
        let chunks = addr_of_mut!((*rec).chunks).cast::<u8>();
        for (i, &mi) in m.iter().enumerate() {
            _mm256_store_si256(
                chunks.add(2 * i * 64 + 32 * h).cast(),
                _mm512_castsi512_si256(mi),
            );
            _mm256_store_si256(
                chunks.add((2 * i + 1) * 64 + 32 * h).cast(),
                _mm512_extracti64x4_epi64::<1>(mi),
            );
        }
        _mm256_store_ps(addr_of_mut!((*rec).da).cast::<f32>().add(8 * h), s.da);
        _mm256_store_ps(addr_of_mut!((*rec).fa).cast::<f32>().add(8 * h), s.fa);
        _mm256_store_ps(addr_of_mut!((*rec).flo).cast::<f32>().add(8 * h), s.flo);
        _mm256_store_ps(addr_of_mut!((*rec).fhi).cast::<f32>().add(8 * h), s.fhi);
        _mm256_store_si256(
            addr_of_mut!((*rec).off_lo).cast::<i32>().add(8 * h).cast(),
            s.off_lo,
        );
        _mm256_store_si256(
            addr_of_mut!((*rec).off_hi).cast::<i32>().add(8 * h).cast(),
            s.off_hi,
        );
    }
}

/// Writes a zero half (the missing second token of an odd token count): it adds 0.
///
/// # Safety
/// As [`write_half`].
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")]
unsafe fn write_zero_half(rec: *mut PairGroup, h: usize) {
    let z = _mm256_setzero_ps();
    let zi = _mm256_setzero_si256();
    let zs = HalfScales {
        da: z,
        fa: z,
        flo: z,
        fhi: z,
        off_lo: zi,
        off_hi: zi,
    };
    // SAFETY: forwarded contract.
    unsafe { write_half(rec, h, &[_mm512_setzero_si512(); 4], &zs) };
}

/// Repacks groups `g0..g0 + gn` of `tokens` Q8_K rows (`a`, rows `a_stride` bytes
/// apart) into `recs`: record `gi * pairs + p` for pair `p` of group `g0 + gi`;
/// `offset` is the weights' unsigned offset (for `off_lo`, `off_hi`).
///
/// # Safety
/// The rows hold at least `g0 + gn` Q8_K blocks; `recs` is valid for writes of
/// `gn * tokens.div_ceil(2)` records; AVX512+VNNI.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")]
pub(super) unsafe fn repack_q8_k(
    a: *const u8,
    a_stride: usize,
    tokens: usize,
    g0: usize,
    gn: usize,
    offset: i32,
    recs: *mut PairGroup,
) {
    let pairs = tokens.div_ceil(2);
    let neg_offset = _mm512_set1_epi32(-offset);
    // Token-major, so each token's blocks are read in address order.
    for t in 0..2 * pairs {
        for gi in 0..gn {
            // SAFETY: record gi * pairs + t / 2 < gn * pairs; block g0 + gi of row t
            // (t < tokens) is inside the activations (the caller's contract).
            unsafe {
                let rec = recs.add(gi * pairs + t / 2);
                if t >= tokens {
                    write_zero_half(rec, 1);
                    continue;
                }
                let blk = a.add(t * a_stride + (g0 + gi) * Q8K_BLOCK);
                let qs = blk.add(4);
                let m = transpose_8x8([
                    _mm512_loadu_si512(qs.cast()),
                    _mm512_loadu_si512(qs.add(64).cast()),
                    _mm512_loadu_si512(qs.add(128).cast()),
                    _mm512_loadu_si512(qs.add(192).cast()),
                ]);
                let da = _mm256_set1_ps(blk.cast::<f32>().read_unaligned());
                let bsums = _mm256_loadu_si256(blk.add(260).cast());
                let eo_i = _mm512_permutexvar_epi32(EVEN_THEN_ODD, _mm512_cvtepi16_epi32(bsums));
                let eo = _mm512_cvtepi32_ps(eo_i);
                let (lo, hi) = (_mm512_castps512_ps256(eo), _mm512_extractf32x8_ps::<1>(eo));
                let off = _mm512_mullo_epi32(eo_i, neg_offset);
                let s = HalfScales {
                    da,
                    fa: _mm256_mul_ps(_mm256_add_ps(lo, hi), da),
                    flo: _mm256_mul_ps(lo, da),
                    fhi: _mm256_mul_ps(hi, da),
                    off_lo: _mm512_castsi512_si256(off),
                    off_hi: _mm512_extracti64x4_epi64::<1>(off),
                };
                write_half(rec, t % 2, &m, &s);
            }
        }
    }
}

/// Repacks groups `g0..g0 + gn` of `tokens` activation rows in `act` (`total_cols`
/// 32-element columns) into `recs`: [`repack_q8_k`] or [`repack_small`].
///
/// # Safety
/// As the function called; `act` is Q8_K, Q8_0 or Q8_1.
#[allow(clippy::too_many_arguments)]
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")]
pub(super) unsafe fn repack(
    act: QType,
    a: *const u8,
    a_stride: usize,
    tokens: usize,
    g0: usize,
    gn: usize,
    total_cols: usize,
    offset: i32,
    recs: *mut PairGroup,
) {
    // SAFETY: forwarded contract.
    unsafe {
        match act {
            QType::Q8_K => repack_q8_k(a, a_stride, tokens, g0, gn, offset, recs),
            QType::Q8_0 | QType::Q8_1 => {
                repack_small(a, a_stride, tokens, g0, gn, total_cols, offset, act, recs)
            }
            other => unreachable!("{other} activations have no column layout"),
        }
    }
}

/// Repacks groups `g0..g0 + gn` of `tokens` rows of `total_cols` blocks of `act` (Q8_0,
/// or Q8_1: a second f16 `s = d * sum(q)` before the quants) into `recs` (layout and
/// `offset` as [`repack_q8_k`]); columns past the row's end are zero. `fa` is Q8_1's
/// stored `s` (what ggml's Q4_1 / Q5_1 products use), Q8_0's `da` times the quant sum.
///
/// # Safety
/// The rows hold `total_cols` blocks of `act` and `g0 + gn` groups cover at most
/// `total_cols.div_ceil(8)`; `recs` as in [`repack_q8_k`]; AVX512+VNNI.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")]
pub(super) unsafe fn repack_small(
    a: *const u8,
    a_stride: usize,
    tokens: usize,
    g0: usize,
    gn: usize,
    total_cols: usize,
    offset: i32,
    act: QType,
    recs: *mut PairGroup,
) {
    debug_assert!(matches!(act, QType::Q8_0 | QType::Q8_1));
    let (block, quants) = (act.block_bytes(), act.block_bytes() - 32);
    let pairs = tokens.div_ceil(2);
    let neg_offset = _mm256_set1_epi32(-offset);
    let ones = _mm512_set1_epi8(1);
    // Token-major, as in repack_q8_k.
    for t in 0..2 * pairs {
        for gi in 0..gn {
            let g = g0 + gi;
            let valid = COLS.min(total_cols - g * COLS);
            // SAFETY: as in repack_q8_k; blocks g * 8 + j, j < valid, are inside row t.
            unsafe {
                let rec = recs.add(gi * pairs + t / 2);
                if t >= tokens {
                    write_zero_half(rec, 1);
                    continue;
                }
                let row = a.add(t * a_stride + g * COLS * block);
                let m = block_chunks(|j| {
                    if j < valid {
                        _mm256_loadu_si256(row.add(j * block + quants).cast())
                    } else {
                        _mm256_setzero_si256()
                    }
                });
                let da = block_scales(row, block, valid);
                let mut sums = _mm512_setzero_si512();
                for &mi in &m {
                    sums = _mm512_dpbusd_epi32(sums, ones, mi);
                }
                let sums = _mm256_add_epi32(
                    _mm512_castsi512_si256(sums),
                    _mm512_extracti64x4_epi64::<1>(sums),
                );
                let z = _mm256_setzero_ps();
                let fa = if act == QType::Q8_1 {
                    block_scales(row.add(2), block, valid)
                } else {
                    _mm256_mul_ps(_mm256_cvtepi32_ps(sums), da)
                };
                let s = HalfScales {
                    da,
                    fa,
                    flo: z,
                    fhi: z,
                    off_lo: _mm256_mullo_epi32(sums, neg_offset),
                    off_hi: _mm256_setzero_si256(),
                };
                write_half(rec, t % 2, &m, &s);
            }
        }
    }
}

/// The `valid` Q8_0 blocks at `row` (34 bytes apart) as transposed chunk pairs (see
/// [`transpose_8x8`]; missing blocks are zero). Shared by the activation repack and the
/// Q8_0 weights.
///
/// # Safety
/// `valid` blocks are readable at `row`; AVX512+VNNI.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")]
pub(super) unsafe fn q8_0_chunks(row: *const u8, valid: usize) -> [__m512i; 4] {
    // SAFETY: forwarded contract.
    block_chunks(|j| unsafe { q8_0_quants(row, j, valid) })
}

/// Eight blocks of 32 byte quants (`quants(j)`: block `j`'s, zero past the valid ones)
/// as transposed chunk pairs (see [`transpose_8x8`]).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")]
pub(super) fn block_chunks(quants: impl Fn(usize) -> __m256i) -> [__m512i; 4] {
    let mut x = [_mm512_setzero_si512(); 4];
    for (k, xk) in x.iter_mut().enumerate() {
        let (lo, hi) = (quants(2 * k), quants(2 * k + 1));
        *xk = _mm512_inserti64x4::<1>(_mm512_castsi256_si512(lo), hi);
    }
    transpose_8x8(x)
}

/// The f32 scales of the `valid` Q8_0 blocks at `row` (0 for missing blocks).
///
/// # Safety
/// As [`q8_0_chunks`].
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")]
pub(super) unsafe fn q8_0_scales(row: *const u8, valid: usize) -> __m256 {
    // SAFETY: forwarded.
    unsafe { block_scales(row, Q80_BLOCK, valid) }
}

/// The f32 scales of the first `valid` (<= 8) blocks at `row`, `stride` bytes apart,
/// each starting with its f16 scale (Q8_0, Q5_0; with `row` 2 bytes in, the second f16 of
/// Q4_1, Q5_1, Q8_1); 0 for missing blocks.
///
/// # Safety
/// The first two bytes of each of the `valid` blocks are readable; AVX512F, F16C.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")]
pub(super) unsafe fn block_scales(row: *const u8, stride: usize, valid: usize) -> __m256 {
    let mut d = [0u16; 8];
    for (j, dj) in d.iter_mut().enumerate().take(valid) {
        // SAFETY: block j < valid is readable; its first two bytes are the f16 scale.
        *dj = unsafe { row.add(j * stride).cast::<u16>().read_unaligned() };
    }
    // SAFETY: d is a live local of 16 bytes.
    _mm256_cvtph_ps(unsafe { _mm_loadu_si128(d.as_ptr().cast()) })
}

/// The 32 quants of block `j` at `row`, or zeros when `j >= valid`.
///
/// # Safety
/// As [`q8_0_chunks`].
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")]
unsafe fn q8_0_quants(row: *const u8, j: usize, valid: usize) -> __m256i {
    if j < valid {
        // SAFETY: block j < valid is readable (the caller's contract).
        unsafe { _mm256_loadu_si256(row.add(j * Q80_BLOCK + 2).cast()) }
    } else {
        _mm256_setzero_si256()
    }
}
