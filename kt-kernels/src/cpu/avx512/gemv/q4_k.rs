//! Q4_K two rows at a time (the vector and activation layout Q5_K shares).
//!
//! A row's 128 quant bytes are two zmm, `part` 0 and 1 (sub-blocks `4 part .. 4 part +
//! 4`). Vector `v = 4 part + c` (`c` < 4) takes, in lane `j = 4k + 2p + n` of row `h`,
//! quant dword `8p + c + 4k` of the row's `part` zmm (one two-source permute over both
//! rows) and keeps nibble `n`: elements `4(c + 4k) ..+ 4` of sub-block `4 part + 2p + n`.
//! So lane `j` of accumulator `part` only ever sums sub-block `4 part + j % 4`, and the
//! scales are applied per super-block. The high nibble stays in place (the quant times
//! 16, exactly undone in the f32 scale). `w = d * sc * q - dmin * m`: the minimums meet
//! the activations' sub-block sums in f32.

use std::arch::x86_64::*;

use super::lanes::{
    chunk, chunk_table, d_and_bsums, f16_pairs, repack_chunks, row_bytes16, set_side, side,
    two_rows, ChunkTable, KAct, Q8K_BLOCK,
};
use super::PairFormat;
use crate::cpu::avx512::q4_k::scales_mins_of;
use crate::cpu::avx512::tile::{per_column, vps, EVEN_LANES, ODD_LANES};

/// Bytes of a Q4_K block: f16 d, f16 dmin, 12 scale bytes, 128 quant bytes.
const BLOCK: usize = 144;

/// The lane's position: `(k, p, n)` of `j = 4k + 2p + n`.
const fn kpn(j: usize) -> (i32, i32, i32) {
    ((j / 4) as i32, (j / 2 % 2) as i32, (j % 2) as i32)
}

/// Permute index of vector `4 part + c`: lane `h * 8 + j` = row `h`'s dword `8p + c + 4k`.
pub(super) const QS_DWORD: [__m512i; 4] = {
    let mut out = [two_rows([0; 8], 16); 4];
    let mut c = 0;
    while c < 4 {
        let mut a = [0i32; 8];
        let mut j = 0;
        while j < 8 {
            let (k, p, _) = kpn(j);
            a[j] = 8 * p + c as i32 + 4 * k;
            j += 1;
        }
        out[c] = two_rows(a, 16);
        c += 1;
    }
    out
};

/// Activation dword of lane `j` of vector `4 part + c`: element `4(c + 4k)` of sub-block
/// `4 part + 2p + n`.
pub(super) const ACT: ChunkTable = {
    let mut d = [[0i32; 8]; 8];
    let mut v = 0;
    while v < 8 {
        let (part, c) = ((v / 4) as i32, (v % 4) as i32);
        let mut j = 0;
        while j < 8 {
            let (k, p, n) = kpn(j);
            d[v][j] = 8 * (4 * part + 2 * p + n) + c + 4 * k;
            j += 1;
        }
        v += 1;
    }
    chunk_table(d)
};

const LO: i32 = 0x0F0F_0F0F;
const HI: i32 = 0xF0F0_F0F0_u32 as i32;
/// Nibble `n` of each byte, in place.
const NIBBLE: __m512i = per_column([LO, HI, LO, HI, LO, HI, LO, HI]);
/// Undoes the high nibbles' factor 16.
const NIBBLE_SCALE: __m512 = {
    let (a, b) = (1.0, 1.0 / 16.0);
    vps([a, b, a, b, a, b, a, b, a, b, a, b, a, b, a, b])
};

/// Lane `h * 8 + j` of accumulator `part` = lane `h * 8 + 4 part + j % 4` of the per-row
/// sub-block scales.
const SCALE_OF_LANE: [__m512i; 2] = [
    two_rows([0, 1, 2, 3, 0, 1, 2, 3], 8),
    two_rows([4, 5, 6, 7, 4, 5, 6, 7], 8),
];

/// Writes the chunks and the side data the Q4_K/Q5_K epilogue reads: side 0 = `da`
/// times `lane_factor`, side 1 = lane `h * 8 + j`: `da` times the sum of sub-block `j`.
///
/// # Safety
/// As [`PairFormat::repack`].
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")]
pub(super) unsafe fn repack_with(a: *const u8, g: usize, lane_factor: __m512, out: *mut KAct) {
    // SAFETY: block g of the row (the caller's contract); out is writable.
    unsafe {
        let blk = a.add(g * Q8K_BLOCK);
        repack_chunks(blk, &ACT, out);
        let (da, bsums) = d_and_bsums(blk);
        let sums = _mm512_add_epi32(
            _mm512_permutexvar_epi32(EVEN_LANES, bsums),
            _mm512_permutexvar_epi32(ODD_LANES, bsums),
        );
        set_side(out, 0, _mm512_castps_si512(_mm512_mul_ps(da, lane_factor)));
        set_side(
            out,
            1,
            _mm512_castps_si512(_mm512_mul_ps(_mm512_cvtepi32_ps(sums), da)),
        );
    }
}

/// The f32 step of Q4_K/Q5_K for `N` tokens: `acc[t] + sum over parts of sums[t][part]
/// * d * sc * side 0 - dmin * m * side 1` (token `t`'s side data), with the scales of the
/// blocks at `w0`, `w1`, decoded once for all the tokens.
///
/// # Safety
/// `w0`, `w1` are whole Q4_K or Q5_K blocks (the same header); AVX512+VNNI.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")]
pub(super) unsafe fn epilogue_n<const N: usize>(
    w0: *const u8,
    w1: *const u8,
    acts: [&KAct; N],
    sums: [[__m512i; 2]; N],
    acc: [__m512; N],
) -> [__m512; N] {
    // SAFETY: d, dmin at 0..4 and the scales at 4..16 (+4 bytes) of each block.
    let ((d, dmin), (sc, m)) = unsafe {
        (
            f16_pairs(w0, w1),
            scales_mins_of(row_bytes16(w0.add(4), w1.add(4))),
        )
    };
    let scf = _mm512_cvtepi32_ps(sc);
    let lane_scf = SCALE_OF_LANE.map(|idx| _mm512_permutexvar_ps(idx, scf));
    let mins = _mm512_mul_ps(_mm512_cvtepi32_ps(m), dmin);
    std::array::from_fn(|t| {
        let dd = _mm512_mul_ps(d, _mm512_castsi512_ps(side(acts[t], 0)));
        let mut a = acc[t];
        for (part, &s) in sums[t].iter().enumerate() {
            let scale = _mm512_mul_ps(lane_scf[part], dd);
            a = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s), scale, a);
        }
        _mm512_fnmadd_ps(mins, _mm512_castsi512_ps(side(acts[t], 1)), a)
    })
}

pub(in crate::cpu::avx512) struct Q4K;

// SAFETY: pair reads bytes 0..144 of each block.
unsafe impl PairFormat for Q4K {
    const BLOCK: usize = BLOCK;
    /// 3, not 4: at 4 tokens the row pairs (with the K slices of `tokens::slice_len`)
    /// read 6-12% faster than the column layout in GEMMs alone (device, 16 threads, in one
    /// process: 2048x7168 0.167 -> 0.157 ms, 7168x2048 0.154 -> 0.137), but the V3 Q4_K
    /// MoE at 512 tokens, whose 4-position tails find their weights in the caches, read
    /// 1-4% slower in all four in-process rounds (session 20, calls B and C).
    const MAX_TOKENS: usize = 3;
    type Act = KAct;

    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")]
    unsafe fn repack(a: *const u8, g: usize, _valid: usize, out: *mut KAct) {
        // SAFETY: forwarded contract.
        unsafe { repack_with(a, g, NIBBLE_SCALE, out) }
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
        // SAFETY: the quants at 16..144 of each block.
        let q = unsafe {
            [
                _mm512_loadu_si512(w0.add(16).cast()),
                _mm512_loadu_si512(w1.add(16).cast()),
                _mm512_loadu_si512(w0.add(80).cast()),
                _mm512_loadu_si512(w1.add(80).cast()),
            ]
        };
        let mut sums = [[_mm512_setzero_si512(); 2]; N];
        for part in 0..2 {
            for (c, &idx) in QS_DWORD.iter().enumerate() {
                let w = _mm512_and_si512(
                    _mm512_permutex2var_epi32(q[2 * part], idx, q[2 * part + 1]),
                    NIBBLE,
                );
                for (s, act) in sums.iter_mut().zip(acts) {
                    s[part] = _mm512_dpbusd_epi32(s[part], w, chunk(act, 4 * part + c));
                }
            }
        }
        // SAFETY: forwarded contract (whole blocks).
        unsafe { epilogue_n(w0, w1, acts, sums, acc) }
    }
}
