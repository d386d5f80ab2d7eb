//! Q3_K two rows at a time. Element `128n + 32s + e` (`n` < 2, `s` < 4, `e` < 32) has its
//! two low bits at bits `2s` of `qs[32n + e]` (as Q6_K's top bits sit in `qh`), its third
//! bit at bit `4n + s` of `hmask[e]`, and the signed scale of group `8n + 2s + e / 16`:
//! Q6_K's element order, so its activation layout, lane groups and epilogue serve
//! ([`super::q6_k`]). Vector `v = 4n + m` takes in lane `j = 4k + s` of row `h` the
//! elements `e = 4(m + 4k) ..+ 4`: one two-source permute of both rows' `qs`, a shift and
//! a mask for the low bits, one permute of both rows' `hmask` and a rotate bringing bit
//! `4n + s` of each byte to bit 2, and a merge. Quants are stored as `q + 4`: the
//! accumulators start at `-4` times the activations' group sums.

use std::arch::x86_64::*;

use super::lanes::{chunk, f16_rows, side, two_rows, KAct};
use super::q6_k::{epilogue_n, repack_with_offset, QH_DWORD};
use super::PairFormat;
use crate::cpu::avx2::q3_k::unpack_scales;
use crate::cpu::avx512::tile::per_column;

/// Bytes of a Q3_K block: 32 hmask, 64 qs, 12 packed scales, f16 d.
const BLOCK: usize = 110;

/// Permute index of `hmask` (row 0 in dwords 0..8, row 1 in 8..16) for vector `4n + m`
/// (the same for both `n`): lane `h * 8 + j` = row `h`'s dword `m + 4k`.
const HM_DWORD: [__m512i; 4] = {
    let mut out = [two_rows([0; 8], 8); 4];
    let mut m = 0;
    while m < 4 {
        let mut a = [0i32; 8];
        let mut j = 0;
        while j < 8 {
            a[j] = m as i32 + 4 * (j / 4) as i32;
            j += 1;
        }
        out[m] = two_rows(a, 8);
        m += 1;
    }
    out
};
/// Shift bringing bits `2s, 2s + 1` of each byte down.
const CRUMB_SHIFT: __m512i = per_column([0, 2, 4, 6, 0, 2, 4, 6]);
/// Rotations (right) bringing bit `4n + s` of each byte to bit 2: `(4n + s - 2) mod 32`.
const HIGH_ROTATE: [__m512i; 2] = [
    per_column([30, 31, 0, 1, 30, 31, 0, 1]),
    per_column([2, 3, 4, 5, 2, 3, 4, 5]),
];

pub(in crate::cpu::avx512) struct Q3K;

// SAFETY: pair reads bytes 0..110 of each block.
unsafe impl PairFormat for Q3K {
    const BLOCK: usize = BLOCK;
    const MAX_TOKENS: usize = 4;
    /// Side 0: `da`; side 1 and 2: the integer start of accumulators 0 and 1.
    type Act = KAct;

    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")]
    unsafe fn repack(a: *const u8, g: usize, _valid: usize, out: *mut KAct) {
        // SAFETY: forwarded contract.
        unsafe { repack_with_offset(a, g, 4, out) }
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
        // SAFETY: hmask at 0..32, qs at 32..96 of each block.
        let (qs, hm) = unsafe {
            (
                [
                    _mm512_loadu_si512(w0.add(32).cast()),
                    _mm512_loadu_si512(w1.add(32).cast()),
                ],
                _mm512_inserti64x4::<1>(
                    _mm512_castsi256_si512(_mm256_loadu_si256(w0.cast())),
                    _mm256_loadu_si256(w1.cast()),
                ),
            )
        };
        let (crumb, third) = (_mm512_set1_epi8(3), _mm512_set1_epi8(4));
        let mut sums = acts.map(|act| [side(act, 1), side(act, 2)]);
        for n in 0..2 {
            for (m, &hidx) in HM_DWORD.iter().enumerate() {
                let v = 4 * n + m;
                let low = _mm512_permutex2var_epi32(qs[0], QH_DWORD[v], qs[1]);
                let low = _mm512_and_si512(_mm512_srlv_epi32(low, CRUMB_SHIFT), crumb);
                let high = _mm512_rorv_epi32(_mm512_permutexvar_epi32(hidx, hm), HIGH_ROTATE[n]);
                // low | (high & 4)
                let w = _mm512_ternarylogic_epi32::<0xF8>(low, high, third);
                for (s, act) in sums.iter_mut().zip(acts) {
                    s[n] = _mm512_dpbusd_epi32(s[n], w, chunk(act, v));
                }
            }
        }
        // SAFETY: the packed scales at 96..108 and d at 108..110 of each block.
        let (bytes, d) = unsafe {
            let (s0, s1) = (unpack_scales(w0.add(96)), unpack_scales(w1.add(96)));
            (
                _mm512_mask_broadcast_i32x4(_mm512_broadcast_i32x4(s0), 0xFF00, s1),
                f16_rows(w0.add(108), w1.add(108)),
            )
        };
        epilogue_n(bytes, d, acts, sums, acc)
    }
}
