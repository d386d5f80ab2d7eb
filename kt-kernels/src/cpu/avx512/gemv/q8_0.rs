//! Q8_0 two rows at a time, a group of up to 8 blocks per step. Vector `j` is block `j`
//! of both rows (a 256-bit load each), made unsigned by adding 128; its integer sum
//! starts at `-128` times the activations' 4-element sums, so each lane ends with the
//! exact dot of its 4 elements, and gets its block's scale in f32 at once (one permute
//! spreads the two rows' scales of block `j` over their halves). The last group of a
//! row may hold fewer than 8 blocks.

use std::arch::x86_64::*;
use std::ptr::addr_of_mut;

use super::lanes::two_rows;
use super::PairFormat;
use crate::cpu::avx512::act::{block_scales, q8_0_scales};
use crate::cpu::avx512::tile::COLS;

/// Bytes of a Q8_0 block: f16 d, 32 int8.
const Q80_BLOCK: usize = 34;

/// A group of up to 8 Q8_0 activation blocks (the activations of Q8_0 and of Q5_0).
#[repr(C, align(64))]
pub(in crate::cpu::avx512) struct Q80Act {
    /// Block `j`'s quants.
    q: [[u8; 32]; 8],
    /// Block `j`'s `offset * sum` of each 4 quants (the start of its integer sum: the
    /// weights' bias, 128 for Q8_0 and 16 for Q5_0, taken back).
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

pub(in crate::cpu::avx512) struct Q8_0;

// SAFETY: pair reads the `valid` blocks of the group of each row.
unsafe impl PairFormat for Q8_0 {
    const BLOCK: usize = COLS * Q80_BLOCK;
    type Act = Q80Act;

    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")]
    unsafe fn repack(a: *const u8, g: usize, valid: usize, out: *mut Q80Act) {
        // SAFETY: forwarded contract.
        unsafe { repack_group(a, g, valid, -128, out) }
    }

    /// One token in practice (`MAX_TOKENS` is 1: the weights need no rearranging to share).
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")]
    unsafe fn pair_n<const N: usize>(
        w0: *const u8,
        w1: *const u8,
        acts: [&Q80Act; N],
        valid: usize,
        acc: [__m512; N],
    ) -> [__m512; N] {
        let offset = _mm512_set1_epi8(-128);
        // SAFETY: the `valid` blocks of the group of each row (the caller's contract);
        // block j's quants are the 32 bytes after its scale.
        let weights = |j: usize| unsafe {
            let at = j * Q80_BLOCK + 2;
            let w = _mm512_inserti64x4::<1>(
                _mm512_castsi256_si512(_mm256_loadu_si256(w0.add(at).cast())),
                _mm256_loadu_si256(w1.add(at).cast()),
            );
            _mm512_xor_si512(w, offset)
        };
        // SAFETY: as above; `weights` reads only those blocks.
        unsafe { block_pairs(w0, w1, Q80_BLOCK, acts, valid, acc, weights) }
    }
}

/// `acc[t]` plus the products of the `valid` blocks of rows `w0` and `w1` (blocks of
/// `block_bytes`, each starting with its f16 scale) with token `t`'s `acts[t]`:
/// `weights(j)` is block `j` of both rows as unsigned bytes (row 0 in the low half), biased
/// by the offset [`repack_group`] took back from the activations' sums. The weights and
/// their scales are read once for all `N` tokens.
///
/// # Safety
/// The `valid` blocks of each row are readable and `weights` reads only those;
/// AVX512+VNNI.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")]
pub(super) unsafe fn block_pairs<const N: usize>(
    w0: *const u8,
    w1: *const u8,
    block_bytes: usize,
    acts: [&Q80Act; N],
    valid: usize,
    acc: [__m512; N],
    weights: impl Fn(usize) -> __m512i,
) -> [__m512; N] {
    // SAFETY: the blocks' scales are readable (the caller's contract); the records'
    // fields are aligned.
    unsafe {
        let dw = _mm512_insertf32x8::<1>(
            _mm512_castps256_ps512(block_scales(w0, block_bytes, valid)),
            block_scales(w1, block_bytes, valid),
        );
        let scales = acts.map(|act| _mm512_mul_ps(dw, _mm512_load_ps(act.da.as_ptr())));
        let mut acc = acc;
        for (j, &spread) in BLOCK_SCALE.iter().enumerate().take(valid) {
            let w = weights(j);
            for ((acc, act), scales) in acc.iter_mut().zip(acts).zip(scales) {
                let start = _mm512_broadcast_i64x4(_mm256_load_si256(act.off[j].as_ptr().cast()));
                let a = _mm512_broadcast_i64x4(_mm256_load_si256(act.q[j].as_ptr().cast()));
                let s = _mm512_dpbusd_epi32(start, w, a);
                let scale = _mm512_permutexvar_ps(spread, scales);
                *acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s), scale, *acc);
            }
        }
        acc
    }
}

/// Rearranges group `g` (up to 8 blocks, `valid` of them present) of the Q8_0 activation
/// row `a` into `out`, each block's integer sum starting at `offset` times its 4-element
/// sums.
///
/// # Safety
/// Blocks `g * 8 + j` (`j < valid`) of the row exist; `out` is valid for writes;
/// AVX512+VNNI.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")]
pub(super) unsafe fn repack_group(
    a: *const u8,
    g: usize,
    valid: usize,
    offset: i32,
    out: *mut Q80Act,
) {
    let ones = _mm256_set1_epi8(1);
    // SAFETY: blocks g * 8 + j (j < valid) of the row exist (the caller's contract); the
    // stores are inside *out and aligned (32-byte rows of a 64-byte aligned record).
    unsafe {
        let row = a.add(g * COLS * Q80_BLOCK);
        for j in 0..COLS {
            let (q, off) = if j < valid {
                let q = _mm256_loadu_si256(row.add(j * Q80_BLOCK + 2).cast());
                let sums = _mm256_dpbusd_epi32(_mm256_setzero_si256(), ones, q);
                (q, _mm256_mullo_epi32(sums, _mm256_set1_epi32(offset)))
            } else {
                (_mm256_setzero_si256(), _mm256_setzero_si256())
            };
            _mm256_store_si256(addr_of_mut!((*out).q[j]).cast(), q);
            _mm256_store_si256(addr_of_mut!((*out).off[j]).cast(), off);
        }
        let d = q8_0_scales(row, valid);
        let d2 = _mm512_insertf32x8::<1>(_mm512_castps256_ps512(d), d);
        _mm512_store_ps(addr_of_mut!((*out).da).cast(), d2);
    }
}
