//! Q4_K rows dequantized to bf16 (the table's [`DequantBf16Fn`] of Q4_K), for the AMX-BF16
//! GEMM of [`super::dequant_gemm`].
//!
//! Sub-block `j` (32 weights) of a block is `w = d * sc_j * q - dmin * m_j` with `q` in
//! 0..16: only 16 distinct values. So per pair of sub-blocks (the 32 quant bytes whose low
//! nibbles are sub-block `2p` and high nibbles `2p + 1`) the two 16-entry tables are built
//! in f32 (`d * sc_j * q - dmin * m_j` over `q` in `0..16`), rounded to bf16 together (one `vcvtne2ps2bf16`: a
//! 32-word table, sub-block `2p + 1` in words 0..16 and `2p` in words 16..32), and each
//! sub-block's 32 weights are one `vpermw` of it: the high nibble indexes words 0..16
//! directly, the low nibble with bit 4 set (one `vpternlogd`) words 16..32.
//!
//! Rounding: the table entries are the scalar dequantizer's f32 values bit for bit (the
//! same products and difference, `(d * sc_j) * q - dmin * m_j`, not fused), then rounded
//! to the nearest-even bf16 (relative error <= 2^-9): the weights are exactly the bf16
//! rounding of the reference dequantization, which the tests check.

use std::arch::x86_64::*;

use crate::cpu::avx512::q4_k::scales_mins;

/// Elements and bytes of a Q4_K block.
const QK_K: usize = 256;
const BLOCK: usize = 144;

/// # Safety
/// As [`crate::cpu::dispatch::DequantBf16Fn`]: `k0` and `kn` are multiples of 256, the
/// blocks of elements `k0..k0 + kn` of `rows` rows are readable at `w`, `dst` writable;
/// the CPU has AVX512 F/BW/VL/DQ/VNNI and AVX512-BF16.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx512bf16,f16c")]
pub(crate) unsafe fn dequant(
    w: *const u8,
    w_stride: usize,
    rows: usize,
    k0: usize,
    kn: usize,
    dst: *mut u16,
    dst_stride: usize,
) {
    debug_assert!(k0.is_multiple_of(QK_K) && kn.is_multiple_of(QK_K));
    let iota = _mm512_setr_ps(
        0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0, 11.0, 12.0, 13.0, 14.0, 15.0,
    );
    let nib = _mm512_set1_epi16(0x0F);
    let bit4 = _mm512_set1_epi16(0x10);
    let (b0, nb) = (k0 / QK_K, kn / QK_K);
    let mut scale = [0f32; 16];
    let mut neg_min = [0f32; 16];
    for r in 0..rows {
        for b in 0..nb {
            // SAFETY (whole block): block b0 + b of row r is readable (the caller): d and
            // dmin at 0..4, the scales at 4..16 (scales_mins reads 16 bytes from 4), the
            // quants at 16..144; the 256 elements of row r from b * 256 are writable.
            unsafe {
                let blk = w.add(r * w_stride + (b0 + b) * BLOCK);
                let out = dst.add(r * dst_stride + b * QK_K);
                let dd = _mm_cvtph_ps(_mm_cvtsi32_si128(blk.cast::<i32>().read_unaligned()));
                let d = _mm512_broadcastss_ps(dd);
                let neg_dmin =
                    _mm512_broadcastss_ps(_mm_sub_ps(_mm_setzero_ps(), _mm_movehdup_ps(dd)));
                let (sc, m) = scales_mins(blk.add(4));
                _mm512_storeu_ps(scale.as_mut_ptr(), _mm512_mul_ps(_mm512_cvtepi32_ps(sc), d));
                _mm512_storeu_ps(
                    neg_min.as_mut_ptr(),
                    _mm512_mul_ps(_mm512_cvtepi32_ps(m), neg_dmin),
                );
                // Read back through memory: the per-sub-block broadcasts then come from
                // loads (no shuffle port) rather than from registers.
                let (scale, neg_min) =
                    (std::hint::black_box(&scale), std::hint::black_box(&neg_min));
                for p in 0..4 {
                    let (lo, hi) = (2 * p, 2 * p + 1);
                    let t_lo = _mm512_add_ps(
                        _mm512_mul_ps(iota, _mm512_set1_ps(scale[lo])),
                        _mm512_set1_ps(neg_min[lo]),
                    );
                    let t_hi = _mm512_add_ps(
                        _mm512_mul_ps(iota, _mm512_set1_ps(scale[hi])),
                        _mm512_set1_ps(neg_min[hi]),
                    );
                    // Words 0..16: sub-block 2p + 1; 16..32: sub-block 2p.
                    let table: __m512i = std::mem::transmute(_mm512_cvtne2ps_pbh(t_lo, t_hi));
                    let q = _mm512_cvtepu8_epi16(_mm256_loadu_si256(blk.add(16 + 32 * p).cast()));
                    // (q & 0x0F) | 0x10.
                    let lo_idx = _mm512_ternarylogic_epi32::<0xEA>(q, nib, bit4);
                    let hi_idx = _mm512_srli_epi16::<4>(q);
                    _mm512_storeu_si512(
                        out.add(64 * p).cast(),
                        _mm512_permutexvar_epi16(lo_idx, table),
                    );
                    _mm512_storeu_si512(
                        out.add(64 * p + 32).cast(),
                        _mm512_permutexvar_epi16(hi_idx, table),
                    );
                }
            }
        }
    }
}
