//! Q2_K two rows at a time. Element `128n + 32s + e` has its 2-bit quant at bits `2s` of
//! `qs[32n + e]` and the 4-bit scale and minimum of group `8n + 2s + e / 16`: the element
//! order of Q6_K, so Q6_K's activation layout and lane groups are reused
//! ([`super::q6_k`]). Vector `4n + m` is one two-source permute of both rows' 64 quant
//! bytes (lane `j = 4k + s`: dword `8n + m + 4k`) and a mask keeping bits `2s, 2s + 1`
//! in place: the quant times `4^s`, at most 192, undone on the integer sums by an exact
//! shift. `w = d * sc * q - dmin * m`: the sums, then 16-bit, meet the scales and the
//! minimums meet the activations' group sums in one `vpdpwssd` each for both
//! accumulators (two words a lane), so per super-block and row pair only two integer
//! vectors are converted to f32 and scaled.
//!
//! Why Q2_K lags the other K-quants per byte: a super-block is 256 weights in 84 bytes
//! (Q4_K: 144), the unpack and `vpdpbusd` work per weight is the same as Q4_K's, and its
//! 16 scales and 16 minimums per super-block cost more f32 work than Q4_K's 8 + 8: so per
//! byte of weights it does ~1.7x Q4_K's work (one core, cache-resident, 2048x7168 on the
//! dev Xeon: 16.2 GB/s against Q4_K's 25.6).

use std::arch::x86_64::*;

use super::lanes::{
    chunk, d_and_bsums, f16_pairs, repack_chunks, row_bytes16, set_side, side, two_rows, KAct,
    Q8K_BLOCK,
};
use super::q6_k::{ACT, GROUP};
use super::PairFormat;
use crate::cpu::avx512::tile::{per_column, v32};

/// Bytes of a Q2_K block: 16 scale/min bytes, 64 quant bytes, f16 d, f16 dmin.
const BLOCK: usize = 84;

/// Permute index of vector `4n + m`: lane `h * 8 + j` = row `h`'s dword `8n + m + 4k`.
const QS_DWORD: [__m512i; 8] = {
    let mut out = [two_rows([0; 8], 16); 8];
    let mut v = 0;
    while v < 8 {
        let (n, m) = ((v / 4) as i32, (v % 4) as i32);
        let mut a = [0i32; 8];
        let mut j = 0;
        while j < 8 {
            a[j] = 8 * n + m + 4 * (j / 4) as i32;
            j += 1;
        }
        out[v] = two_rows(a, 16);
        v += 1;
    }
    out
};
/// Bits `2s, 2s + 1` of every byte.
const CRUMB: __m512i = per_column([
    0x0303_0303,
    0x0C0C_0C0C,
    0x3030_3030,
    0xC0C0_C0C0_u32 as i32,
    0x0303_0303,
    0x0C0C_0C0C,
    0x3030_3030,
    0xC0C0_C0C0_u32 as i32,
]);
/// Undoes the factor `4^s` of the quants left in place: every product in lane `j = 4k + s`
/// carries it, so an arithmetic shift of the lane's sum by `2s` is exact.
const CRUMB_SHIFT: __m512i = per_column([0, 2, 4, 6, 0, 2, 4, 6]);
/// A byte shuffle giving, for `vpackssdw(sums0, sums1)` (128-bit lane `2h + k`: words
/// `0..4` = accumulator 0's lanes `h * 8 + 4k + s`, words `4..8` = accumulator 1's), the
/// scale of each word's group `8n + 2s + k` zero-extended to 16 bits.
const PACKED_SCALES: __m512i = {
    let mut a = [0i32; 16];
    let mut l = 0;
    while l < 16 {
        let k = (l / 4 % 2) as i32;
        let mut word = [0i32; 2];
        let mut h = 0;
        while h < 2 {
            let w = (2 * (l % 4) + h) as i32;
            let (n, s) = (w / 4, w % 4);
            word[h] = (8 * n + 2 * s + k) | 0x80 << 8;
            h += 1;
        }
        a[l] = word[0] | word[1] << 16;
        l += 1;
    }
    v32(a)
};
/// A byte shuffle putting in lane `h * 8 + j` the byte of group `2s + k` (accumulator 0's
/// group of the lane) in its low word and that of group `8 + 2s + k` (accumulator 1's) in
/// its high word, zero-extended.
const PACKED_SHUFFLE: __m512i = {
    let mut a = [0i32; 8];
    let mut j = 0;
    while j < 8 {
        let (k, s) = ((j / 4) as i32, (j % 4) as i32);
        let g = 2 * s + k;
        a[j] = g | 0x80 << 8 | (8 + g) << 16 | (0x80u32 << 24) as i32;
        j += 1;
    }
    per_column(a)
};

pub(in crate::cpu::avx512) struct Q2K;

// SAFETY: pair reads bytes 0..84 of each block.
unsafe impl PairFormat for Q2K {
    const BLOCK: usize = BLOCK;
    const MAX_TOKENS: usize = 4;
    /// Side 0: `da`; side 1: the group sums of accumulator 0's lane (low word) and
    /// accumulator 1's (high word).
    type Act = KAct;

    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")]
    unsafe fn repack(a: *const u8, g: usize, _valid: usize, out: *mut KAct) {
        // SAFETY: block g of the row (the caller's contract); out is writable.
        unsafe {
            let blk = a.add(g * Q8K_BLOCK);
            repack_chunks(blk, &ACT, out);
            let (da, bsums) = d_and_bsums(blk);
            set_side(out, 0, _mm512_castps_si512(da));
            let lo = _mm512_permutexvar_epi32(GROUP[0], bsums);
            let hi = _mm512_permutexvar_epi32(GROUP[1], bsums);
            let packed = _mm512_or_si512(
                _mm512_and_si512(lo, _mm512_set1_epi32(0xFFFF)),
                _mm512_slli_epi32::<16>(hi),
            );
            set_side(out, 1, packed);
        }
    }

    /// The weight vectors and the scales are unpacked once and meet each token's
    /// activations.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")]
    unsafe fn pair_n<const N: usize>(
        w0: *const u8,
        w1: *const u8,
        acts: [&KAct; N],
        _valid: usize,
        acc: [__m512; N],
    ) -> [__m512; N] {
        // SAFETY: the quants at 16..80 of each block.
        let q = unsafe {
            [
                _mm512_loadu_si512(w0.add(16).cast()),
                _mm512_loadu_si512(w1.add(16).cast()),
            ]
        };
        let mut sums = [[_mm512_setzero_si512(); 2]; N];
        for n in 0..2 {
            for m in 0..4 {
                let v = 4 * n + m;
                let w = _mm512_and_si512(_mm512_permutex2var_epi32(q[0], QS_DWORD[v], q[1]), CRUMB);
                for (s, act) in sums.iter_mut().zip(acts) {
                    s[n] = _mm512_dpbusd_epi32(s[n], w, chunk(act, v));
                }
            }
        }
        // SAFETY: the scales at 0..16, d and dmin at 80..84 of each block.
        let (bytes, (d, dmin)) =
            unsafe { (row_bytes16(w0, w1), f16_pairs(w0.add(80), w1.add(80))) };
        let nib = _mm512_set1_epi8(15);
        let scales = _mm512_and_si512(bytes, nib);
        let mins = _mm512_and_si512(_mm512_srli_epi16::<4>(bytes), nib);
        let sc = _mm512_shuffle_epi8(scales, PACKED_SCALES);
        let m = _mm512_shuffle_epi8(mins, PACKED_SHUFFLE);
        std::array::from_fn(|t| {
            // The integer sums without the factor 4^s fit 16 bits (16 products of at most
            // 3 * 128): both accumulators' in one vector, then scale times sum summed over
            // the groups in one step; the same for minimum times group sum.
            let exact = |v: __m512i| _mm512_srav_epi32(v, CRUMB_SHIFT);
            let words = _mm512_packs_epi32(exact(sums[t][0]), exact(sums[t][1]));
            let si = _mm512_dpwssd_epi32(_mm512_setzero_si512(), words, sc);
            let mi = _mm512_dpwssd_epi32(_mm512_setzero_si512(), m, side(acts[t], 1));
            let da = _mm512_castsi512_ps(side(acts[t], 0));
            let acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(si), _mm512_mul_ps(d, da), acc[t]);
            _mm512_fnmadd_ps(_mm512_cvtepi32_ps(mi), _mm512_mul_ps(dmin, da), acc)
        })
    }
}
