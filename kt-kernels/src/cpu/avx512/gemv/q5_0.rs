//! Q5_0 two rows at a time, a group of up to 8 blocks per step, against Q8_0 activations.
//! A block (22 bytes: f16 `d`, 32 high bits `qh`, 16 bytes of nibbles) holds element `i <
//! 16` in the low nibble of byte `i` and element `i + 16` in its high nibble, the fifth
//! bit in bit `i` of `qh`; a weight is `d * (q - 16)` with `q` in 0..32.
//!
//! Vector `j` is block `j` of both rows: the 16 nibble bytes of each row loaded twice
//! into a 128-bit lane pair (low nibbles, then high ones), the fifth bits added from one
//! 64-bit mask of the two `qh`. Its integer sum starts at `-16` times the activations'
//! 4-element sums, so each lane ends with the exact dot of its 4 elements, and gets its
//! block's scale in f32 at once, as [`super::q8_0`] does.

use std::arch::x86_64::*;
use std::ptr::addr_of_mut;

use super::lanes::two_rows;
use super::PairFormat;
use crate::cpu::avx512::tile::COLS;

/// Bytes of a Q5_0 block and of a Q8_0 (activation) block.
const Q50_BLOCK: usize = 22;
const Q80_BLOCK: usize = 34;

/// A group of up to 8 Q8_0 activation blocks.
#[repr(C, align(64))]
pub(in crate::cpu::avx512) struct Q50Act {
    /// Block `j`'s quants.
    q: [[u8; 32]; 8],
    /// Block `j`'s `-16 * sum` of each 4 quants (the start of its integer sum).
    off: [[i32; 8]; 8],
    /// Lane `h * 8 + j`: block `j`'s scale.
    da: [f32; 16],
}

/// Lane `h * 8 + i` = lane `h * 8 + j`: block `j`'s scale of each row.
const BLOCK_SCALE: [__m512i; 8] = {
    let mut out = [two_rows([0; 8], 8); 8];
    let mut j = 0;
    while j < 8 {
        out[j] = two_rows([j as i32; 8], 8);
        j += 1;
    }
    out
};

/// The f16 scales of the first `valid` (<= 8) blocks at `row`, blocks `stride` bytes
/// apart, as f32 (0 past `valid`).
///
/// # Safety
/// The first two bytes of each of the `valid` blocks are readable; AVX512F, F16C.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")]
unsafe fn scales(row: *const u8, stride: usize, valid: usize) -> __m256 {
    let mut d = [0u16; 8];
    for (j, dj) in d.iter_mut().enumerate().take(valid) {
        // SAFETY: block j < valid is readable; its first two bytes are the f16 scale.
        *dj = unsafe { row.add(j * stride).cast::<u16>().read_unaligned() };
    }
    // SAFETY: d is a live local of 16 bytes.
    _mm256_cvtph_ps(unsafe { _mm_loadu_si128(d.as_ptr().cast()) })
}

pub(in crate::cpu::avx512) struct Q5_0;

// SAFETY: pair reads the `valid` blocks of the group of each row.
unsafe impl PairFormat for Q5_0 {
    const BLOCK: usize = COLS * Q50_BLOCK;
    type Act = Q50Act;

    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")]
    unsafe fn repack(a: *const u8, g: usize, valid: usize, out: *mut Q50Act) {
        let ones = _mm256_set1_epi8(1);
        // SAFETY: activation blocks g * 8 + j (j < valid) of the row exist (the caller's
        // contract: the Q8_0 row holds the super-block's columns); the stores are inside
        // *out and aligned (32-byte rows of a 64-byte aligned record).
        unsafe {
            let row = a.add(g * COLS * Q80_BLOCK);
            for j in 0..COLS {
                let (q, off) = if j < valid {
                    let q = _mm256_loadu_si256(row.add(j * Q80_BLOCK + 2).cast());
                    let sums = _mm256_dpbusd_epi32(_mm256_setzero_si256(), ones, q);
                    (q, _mm256_mullo_epi32(sums, _mm256_set1_epi32(-16)))
                } else {
                    (_mm256_setzero_si256(), _mm256_setzero_si256())
                };
                _mm256_store_si256(addr_of_mut!((*out).q[j]).cast(), q);
                _mm256_store_si256(addr_of_mut!((*out).off[j]).cast(), off);
            }
            let d = scales(row, Q80_BLOCK, valid);
            let d2 = _mm512_insertf32x8::<1>(_mm512_castps256_ps512(d), d);
            _mm512_store_ps(addr_of_mut!((*out).da).cast(), d2);
        }
    }

    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")]
    unsafe fn pair(
        w0: *const u8,
        w1: *const u8,
        act: &Q50Act,
        valid: usize,
        acc: __m512,
    ) -> __m512 {
        // SAFETY: the `valid` blocks of the group of each row (the caller's contract);
        // the record's fields are aligned.
        unsafe {
            let dw = _mm512_insertf32x8::<1>(
                _mm512_castps256_ps512(scales(w0, Q50_BLOCK, valid)),
                scales(w1, Q50_BLOCK, valid),
            );
            let scales = _mm512_mul_ps(dw, _mm512_load_ps(act.da.as_ptr()));
            let low = _mm512_set1_epi8(0x0f);
            let fifth = _mm512_set1_epi8(0x10);
            // 16-bit shift counts: 0 in 128-bit lanes 0 and 2, 4 in lanes 1 and 3.
            let shift = _mm512_setr_epi64(
                0,
                0,
                0x0004_0004_0004_0004,
                0x0004_0004_0004_0004,
                0,
                0,
                0x0004_0004_0004_0004,
                0x0004_0004_0004_0004,
            );
            let mut acc = acc;
            for (j, &spread) in BLOCK_SCALE.iter().enumerate().take(valid) {
                let at = j * Q50_BLOCK;
                // 128-bit lanes: row 0's nibble bytes twice, then row 1's twice; lanes 0
                // and 2 keep the low nibbles (elements 0..16), 1 and 3 the high ones
                // (16..32), shifted down by a per-lane count.
                let both = _mm512_mask_broadcast_i32x4(
                    _mm512_broadcast_i32x4(_mm_loadu_si128(w0.add(at + 6).cast())),
                    0xff00,
                    _mm_loadu_si128(w1.add(at + 6).cast()),
                );
                let nib = _mm512_and_si512(_mm512_srlv_epi16(both, shift), low);
                let qh0 = w0.add(at + 2).cast::<u32>().read_unaligned() as u64;
                let qh1 = w1.add(at + 2).cast::<u32>().read_unaligned() as u64;
                let w = _mm512_mask_add_epi8(nib, _cvtu64_mask64(qh0 | qh1 << 32), nib, fifth);
                let start = _mm512_broadcast_i64x4(_mm256_load_si256(act.off[j].as_ptr().cast()));
                let a = _mm512_broadcast_i64x4(_mm256_load_si256(act.q[j].as_ptr().cast()));
                let s = _mm512_dpbusd_epi32(start, w, a);
                let scale = _mm512_permutexvar_ps(spread, scales);
                acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s), scale, acc);
            }
            acc
        }
    }
}
