//! Q5_K two rows at a time: Q4_K's vectors and activation layout ([`super::q4_k`]) plus
//! the fifth bit. Bit `s` of `qh[e]` is the high bit of element `e` of sub-block `s`;
//! lane `j = 4k + 2p + n` of vector `4 part + c` holds elements `4(c + 4k) ..+ 4` of
//! sub-block `s = 4 part + j % 4`, so it needs `qh` dword `c + 4k` of its row (one
//! permute of both rows' `qh`, shared by the two parts) with bit `s` of each byte
//! rotated to bit 4. The nibbles are shifted down (a quant is up to 31).

use std::arch::x86_64::*;

use super::lanes::{chunk, two_rows, KAct};
use super::q4_k::{epilogue_n, repack_with, QS_DWORD};
use super::PairFormat;
use crate::cpu::avx512::tile::per_column;

/// Bytes of a Q5_K block: d, dmin, 12 scale bytes, 32 high-bit bytes, 128 nibble bytes.
const BLOCK: usize = 176;

/// Lane `h * 8 + j` of chunk `c`: row `h`'s `qh` dword `c + 4k` (rows 8 dwords apart).
const QH_DWORD: [__m512i; 4] = {
    let mut out = [two_rows([0; 8], 8); 4];
    let mut c = 0;
    while c < 4 {
        let mut a = [0i32; 8];
        let mut j = 0;
        while j < 8 {
            a[j] = c as i32 + 4 * (j / 4) as i32;
            j += 1;
        }
        out[c] = two_rows(a, 8);
        c += 1;
    }
    out
};
/// Shift bringing nibble `n = j % 2` down.
const NIBBLE_SHIFT: __m512i = per_column([0, 4, 0, 4, 0, 4, 0, 4]);
/// Rotation bringing bit `s = 4 part + j % 4` of each byte to bit 4: `(4 - s) mod 32`.
const HIGH_BIT_ROTATE: [__m512i; 2] = [
    per_column([4, 3, 2, 1, 4, 3, 2, 1]),
    per_column([0, 31, 30, 29, 0, 31, 30, 29]),
];

pub(in crate::cpu::avx512) struct Q5K;

// SAFETY: pair reads bytes 0..176 of each block.
unsafe impl PairFormat for Q5K {
    const BLOCK: usize = BLOCK;
    const MAX_TOKENS: usize = 4;
    type Act = KAct;

    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")]
    unsafe fn repack(a: *const u8, g: usize, _valid: usize, out: *mut KAct) {
        // SAFETY: forwarded contract.
        unsafe { repack_with(a, g, _mm512_set1_ps(1.0), out) }
    }

    /// The weight vectors are rearranged once and meet each token's activations.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")]
    unsafe fn pair_n<const N: usize>(
        w0: *const u8,
        w1: *const u8,
        acts: [&KAct; N],
        _valid: usize,
        acc: [__m512; N],
    ) -> [__m512; N] {
        // SAFETY: qh at 16..48, the nibbles at 48..176 of each block.
        let (q, qh) = unsafe {
            (
                [
                    _mm512_loadu_si512(w0.add(48).cast()),
                    _mm512_loadu_si512(w1.add(48).cast()),
                    _mm512_loadu_si512(w0.add(112).cast()),
                    _mm512_loadu_si512(w1.add(112).cast()),
                ],
                _mm512_inserti64x4::<1>(
                    _mm512_castsi256_si512(_mm256_loadu_si256(w0.add(16).cast())),
                    _mm256_loadu_si256(w1.add(16).cast()),
                ),
            )
        };
        let (low4, bit4) = (_mm512_set1_epi8(0x0F), _mm512_set1_epi8(0x10));
        let mut sums = [[_mm512_setzero_si512(); 2]; N];
        for (c, &idx) in QS_DWORD.iter().enumerate() {
            let qhc = _mm512_permutexvar_epi32(QH_DWORD[c], qh);
            for part in 0..2 {
                let nib = _mm512_permutex2var_epi32(q[2 * part], idx, q[2 * part + 1]);
                let nib = _mm512_and_si512(_mm512_srlv_epi32(nib, NIBBLE_SHIFT), low4);
                let high = _mm512_rolv_epi32(qhc, HIGH_BIT_ROTATE[part]);
                // nib | (high & 0x10)
                let w = _mm512_ternarylogic_epi32::<0xF8>(nib, high, bit4);
                for (s, act) in sums.iter_mut().zip(acts) {
                    s[part] = _mm512_dpbusd_epi32(s[part], w, chunk(act, 4 * part + c));
                }
            }
        }
        // SAFETY: forwarded contract (whole blocks).
        unsafe { epilogue_n(w0, w1, acts, sums, acc) }
    }
}
