//! Q6_K two rows at a time. Element `128n + 32s + e` (`n` < 2, `s` < 4, `e` < 32) has
//! its low 4 bits in nibble `s / 2` of `ql[64n + 32(s & 1) + e]`, its top 2 bits at bits
//! `2s` of `qh[32n + e]`, and the int8 scale `8n + 2s + e / 16`. Vector `v = 4n + m`
//! (`m` < 4) takes in lane `j = 4k + s` of row `h` the elements `e = 4(m + 4k) ..+ 4`: one
//! two-source permute of both rows' `ql` half `n` and one of both rows' `qh`, a shift,
//! a rotate and a merge. Lane `j` of accumulator `n` therefore only sums scale group
//! `8n + 2s + k`. Quants are stored as `q + 32`: the accumulators start at `-32` times
//! the activations' group sums.

use std::arch::x86_64::*;

use super::lanes::{
    chunk, chunk_table, d_and_bsums, f16_rows, repack_chunks, row_bytes16, set_side, side,
    two_rows, ChunkTable, KAct, Q8K_BLOCK,
};
use super::PairFormat;
use crate::cpu::avx512::tile::per_column;

/// Bytes of a Q6_K block: 128 ql, 64 qh, 16 int8 scales, f16 d.
const BLOCK: usize = 210;

/// Permute index of `ql` for vector `4n + m` (the same for both `n`): lane `h * 8 + j`
/// = row `h`'s dword `8(s & 1) + m + 4k` of its `ql` half `n`.
const QL_DWORD: [__m512i; 4] = {
    let mut out = [two_rows([0; 8], 16); 4];
    let mut m = 0;
    while m < 4 {
        let mut a = [0i32; 8];
        let mut j = 0;
        while j < 8 {
            let (k, s) = ((j / 4) as i32, (j % 4) as i32);
            a[j] = 8 * (s & 1) + m as i32 + 4 * k;
            j += 1;
        }
        out[m] = two_rows(a, 16);
        m += 1;
    }
    out
};
/// Permute index of `qh` for vector `4n + m`: row `h`'s dword `8n + m + 4k` (also Q3_K's
/// `qs`, [`super::q3_k`]).
pub(super) const QH_DWORD: [__m512i; 8] = {
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
/// Activation dword of lane `j` of vector `4n + m`: element `128n + 32s + 4(m + 4k)`.
pub(super) const ACT: ChunkTable = {
    let mut d = [[0i32; 8]; 8];
    let mut v = 0;
    while v < 8 {
        let (n, m) = ((v / 4) as i32, (v % 4) as i32);
        let mut j = 0;
        while j < 8 {
            let (k, s) = ((j / 4) as i32, (j % 4) as i32);
            d[v][j] = 32 * n + 8 * s + m + 4 * k;
            j += 1;
        }
        v += 1;
    }
    chunk_table(d)
};
/// Lane `h * 8 + j` of accumulator `n` (the same in both halves): scale group
/// `8n + 2s + k`, as an index into the 16 block sums.
pub(super) const GROUP: [__m512i; 2] = [group_lanes(0, None), group_lanes(1, None)];
/// A byte shuffle of `row_bytes16` (row `h`'s 16 scale bytes in 128-bit lanes `2h + k`)
/// putting group `8n + 2s + k`'s byte in the top byte of lane `h * 8 + j`, the others 0.
const SCALE_SHUFFLE: [__m512i; 2] = [group_lanes(0, Some(3)), group_lanes(1, Some(3))];

/// Lane `h * 8 + j` = the scale group of accumulator `n`'s lane `j`, or with `byte`, a
/// byte shuffle control placing that group's byte at byte `byte` of the lane.
pub(super) const fn group_lanes(n: i32, byte: Option<i32>) -> __m512i {
    let mut a = [0i32; 8];
    let mut j = 0;
    while j < 8 {
        let (k, s) = ((j / 4) as i32, (j % 4) as i32);
        let g = 8 * n + 2 * s + k;
        a[j] = match byte {
            // 0x80: a zero byte.
            Some(b) => (0x8080_8080_u32 as i32 & !(0xFF << (8 * b))) | g << (8 * b),
            None => g,
        };
        j += 1;
    }
    per_column(a)
}
/// Shift bringing nibble `s / 2` down.
const NIBBLE_SHIFT: __m512i = per_column([0, 0, 4, 4, 0, 0, 4, 4]);
/// Rotation bringing bits `2s, 2s + 1` of each byte to bits 4, 5: `(4 - 2s) mod 32`.
const TOP_ROTATE: __m512i = per_column([4, 2, 0, 30, 4, 2, 0, 30]);

pub(in crate::cpu::avx512) struct Q6K;

// SAFETY: pair reads bytes 0..210 of each block.
unsafe impl PairFormat for Q6K {
    const BLOCK: usize = BLOCK;
    const MAX_TOKENS: usize = 4;
    /// Side 0: `da`; side 1 and 2: the integer start of accumulators 0 and 1.
    type Act = KAct;

    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")]
    unsafe fn repack(a: *const u8, g: usize, _valid: usize, out: *mut KAct) {
        // SAFETY: forwarded contract.
        unsafe { repack_with_offset(a, g, 32, out) }
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
        // SAFETY: ql at 0..128, qh at 128..192 of each block.
        let (ql, qh) = unsafe {
            (
                [
                    _mm512_loadu_si512(w0.cast()),
                    _mm512_loadu_si512(w1.cast()),
                    _mm512_loadu_si512(w0.add(64).cast()),
                    _mm512_loadu_si512(w1.add(64).cast()),
                ],
                [
                    _mm512_loadu_si512(w0.add(128).cast()),
                    _mm512_loadu_si512(w1.add(128).cast()),
                ],
            )
        };
        let (low4, top2) = (_mm512_set1_epi8(0x0F), _mm512_set1_epi8(0x30));
        let mut sums = acts.map(|act| [side(act, 1), side(act, 2)]);
        for n in 0..2 {
            for (m, &idx) in QL_DWORD.iter().enumerate() {
                let low = _mm512_permutex2var_epi32(ql[2 * n], idx, ql[2 * n + 1]);
                let low = _mm512_and_si512(_mm512_srlv_epi32(low, NIBBLE_SHIFT), low4);
                let top = _mm512_permutex2var_epi32(qh[0], QH_DWORD[4 * n + m], qh[1]);
                let top = _mm512_rolv_epi32(top, TOP_ROTATE);
                // low | (top & 0x30)
                let w = _mm512_ternarylogic_epi32::<0xF8>(low, top, top2);
                for (s, act) in sums.iter_mut().zip(acts) {
                    s[n] = _mm512_dpbusd_epi32(s[n], w, chunk(act, 4 * n + m));
                }
            }
        }
        // SAFETY: the scales at 192..208 and d at 208..210 of each block.
        let (bytes, d) = unsafe {
            (
                row_bytes16(w0.add(192), w1.add(192)),
                f16_rows(w0.add(208), w1.add(208)),
            )
        };
        epilogue_n(bytes, d, acts, sums, acc)
    }
}

/// The activations' repack of Q6_K and Q3_K, whose quants are stored as `q + offset`:
/// side 0 = `da`, sides 1 and 2 = `-offset` times accumulator 0's and 1's group sums (the
/// integer start of the accumulators).
///
/// # Safety
/// As [`PairFormat::repack`].
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")]
pub(super) unsafe fn repack_with_offset(a: *const u8, g: usize, offset: i32, out: *mut KAct) {
    // SAFETY: block g of the row (the caller's contract); out is writable.
    unsafe {
        let blk = a.add(g * Q8K_BLOCK);
        repack_chunks(blk, &ACT, out);
        let (da, bsums) = d_and_bsums(blk);
        set_side(out, 0, _mm512_castps_si512(da));
        for (n, &group) in GROUP.iter().enumerate() {
            let sums = _mm512_permutexvar_epi32(group, bsums);
            set_side(
                out,
                1 + n,
                _mm512_mullo_epi32(sums, _mm512_set1_epi32(-offset)),
            );
        }
    }
}

/// `acc[t]` plus token `t`'s integer sums of both accumulators times their groups' int8
/// scales (`bytes`: each row's 16 scales as [`row_bytes16`] lays them out, decoded once
/// for all the tokens), `d` and the token's `da`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")]
pub(super) fn epilogue_n<const N: usize>(
    bytes: __m512i,
    d: __m512,
    acts: [&KAct; N],
    sums: [[__m512i; 2]; N],
    acc: [__m512; N],
) -> [__m512; N] {
    // The scale byte in the lane's top byte, sign-extended down.
    let sc = SCALE_SHUFFLE.map(|shuffle| {
        _mm512_cvtepi32_ps(_mm512_srai_epi32::<24>(_mm512_shuffle_epi8(bytes, shuffle)))
    });
    std::array::from_fn(|t| {
        let dd = _mm512_mul_ps(d, _mm512_castsi512_ps(side(acts[t], 0)));
        let mut acc = acc[t];
        for (&sc, &s) in sc.iter().zip(&sums[t]) {
            let scale = _mm512_mul_ps(sc, dd);
            acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s), scale, acc);
        }
        acc
    })
}
