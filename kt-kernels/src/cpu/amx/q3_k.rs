//! Q3_K weights as stored in the GGUF, many tokens, on AMX `tdpbssd` (a step kernel of
//! the [`kquant`](super::kquant) pipeline).
//!
//! A Q3_K block (110 bytes: 32 bytes `hmask`, 64 bytes `qs`, 12 bytes of packed 6-bit
//! scales, f16 `d`) is `w = d * s_g * q` for the 16-element group `g`, with `q = u - 4`
//! (`u` in 0..8: two bits from `qs` as Q2_K stores them, the third from `hmask`) and the
//! signed scale `s_g` in -32..32. `(4 - u) * s_g` lies in -128..=124, so the negated
//! products fold into one signed byte per weight with no split, and one C tile
//! accumulates the super-block's `-sum_g s_g * I_g` exactly (four `tdpbssd`, K = 64): the
//! epilogue is one conversion and two multiplies a row, by `-d` and `da`. The unpacking
//! looks the folded bytes up per group (`vpshufb` on a 16-byte table per 128-bit lane:
//! a lane holds one group).
//!
//! Element `128n + 32j + e` has its two low bits at bits `2j` of `qs[32n + e]` and its
//! third bit at bit `4n + j` of `hmask[e]`: the unpacked row keeps the natural element
//! order, as do the activation lines ([`super::q8_k_lines`]).
//!
//! Tiles: 0 the C tile, 2 and 3 the A tiles and 6 and 7 the B tiles (alternating by K
//! step).

use std::arch::x86_64::*;

use super::kquant::{
    folded_config, forward_stages, single_step_entry_points, StepKernel, QK_K, TG, TR,
};
use super::q8_k_lines::{
    crumb_plane_shifts, group_scale_picks, one_tile_products, transpose_lines, Lines,
};
use super::tiles::TileConfig;
use crate::cpu::avx2::q3_k::unpack_scales;

/// Below this many tokens the AVX512 kernel is used. 5, not Q2_K's 12: device (16 threads,
/// session 17 call J, `kt-bench moe --format q3_k`, the thresholds taking turns call by call
/// in one process, two processes for V3), ms for AMX from 12 / 8 / 5 / 2 tokens: V3 512
/// tokens 138.2 / 125.4 / 122.7 / 121.3 and 127.4 / 119.0 / 119.4 / 124.4, V3 128 tokens
/// 76.2 / 72.7 / 67.8 / 69.1 and 86.6 / 84.0 / 77.2 / 76.5, V2-Lite 64 tokens 5.50 / 5.28 /
/// 4.96 / 4.90: one C tile of four products costs little even with most of its 16 token
/// columns empty.
pub(crate) const AMX_MIN_TOKENS: usize = 5;

single_step_entry_points!(Q3K, AMX_MIN_TOKENS);

pub(super) struct Q3K;

/// One token group's activations of one super-block.
#[repr(C, align(64))]
pub(super) struct ActBlock {
    lines: Lines,
}

/// One row block's super-block, unpacked for the A tiles.
#[repr(C, align(64))]
pub(super) struct WeightBlock {
    /// Row `n`: `(4 - u) * s_g` per element, in element order.
    q: [[i8; QK_K]; TR],
    /// `-d` per row.
    neg_d: [f32; TR],
}

/// The int32 C tile of one step: weight row `n` at `[n]`.
#[repr(C, align(64))]
pub(super) struct CTile([[i32; TG]; TR]);

// SAFETY: each stage touches only the records and rows it is given (see the
// functions' contracts); `products` uses tiles 0, 2, 3, 6 and 7 as `config` sets them up.
unsafe impl StepKernel for Q3K {
    type Acts = ActBlock;
    type Weights = WeightBlock;
    type Products = CTile;
    const W_BLOCK: usize = 110;

    fn config(nr: usize) -> TileConfig {
        folded_config(&[0, 2, 3], nr)
    }

    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")]
    unsafe fn transpose_acts(a: *const u8, stride: usize, n: usize, dst: *mut ActBlock) {
        // SAFETY: the trait's contract is this function's; the record is in `dst`.
        unsafe { transpose_lines(a, stride, n, &raw mut (*dst).lines) }
    }

    #[inline]
    unsafe fn products(wb: *const WeightBlock, ab: *const ActBlock, c: *mut CTile) {
        // SAFETY: the configuration of `config` is loaded (caller); `wb` holds 16 rows of
        // 256 bytes, `ab` 64 lines, `c` one 16 x 64-byte tile.
        unsafe {
            one_tile_products::<true>(
                (*wb).q.as_ptr().cast(),
                (*ab).lines.q.as_ptr().cast(),
                (*c).0.as_mut_ptr().cast(),
            )
        }
    }

    forward_stages!(unpack: unpack_weights, scale: scale);
}

/// Unpacks `nr` weight rows' Q3_K block (`w`, rows `stride` bytes apart) into `dst`.
///
/// # Safety
/// `nr` (<= 16) blocks are readable at `w`; `dst` is writable.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,f16c")]
unsafe fn unpack_weights(w: *const u8, stride: usize, nr: usize, dst: *mut WeightBlock) {
    let three = _mm512_set1_epi8(3);
    let four = _mm512_set1_epi8(4);
    // Plane `m = 2n + jp` holds elements 64m..64m + 64: bytes 0..32 are element `e` of
    // `j = 2jp`, bytes 32..64 of `j = 2jp + 1`. The two low bits sit at bit 2j of the `qs`
    // half `n`, the third at bit 4n + j of `hmask`, both broadcast to the two 256-bit
    // halves; 16-bit shifts bring them down (a bit never leaves its byte once masked).
    let shifts =
        |lo: i16| _mm512_inserti64x4::<1>(_mm512_set1_epi16(lo), _mm256_set1_epi16(lo + 1));
    let low_shift = crumb_plane_shifts();
    // Bit 4n + 2jp (+1 in the high half) of each hmask byte brought to bit 2.
    let high_shift: [__m512i; 4] = std::array::from_fn(|m| shifts(2 * m as i16 - 2));
    // Plane `m`'s 128-bit lane `i` is group 4m + i.
    let pick = group_scale_picks();
    // Word `u` (0..8) of every lane: the factor `4 - u` of the table entry `u`.
    let factor = {
        let mut f = [0i16; 32];
        for (k, x) in f.iter_mut().enumerate() {
            *x = 4 - (k % 8) as i16;
        }
        // SAFETY: a 64-byte read of a local array.
        unsafe { _mm512_loadu_si512(f.as_ptr().cast()) }
    };
    for n in 0..nr {
        // SAFETY: block n is readable (caller): hmask at 0..32, qs at 32..96, the packed
        // scales at 96..108, d at 108..110; row n of `dst`.
        unsafe {
            let b = w.add(n * stride);
            let d = _mm_cvtph_ps(_mm_cvtsi32_si128(
                b.add(108).cast::<u16>().read_unaligned() as i32
            ));
            (*dst).neg_d[n] = -_mm_cvtss_f32(d);
            let sc = _mm512_castsi256_si512(_mm256_cvtepi8_epi16(unpack_scales(b.add(96))));
            let hm = _mm512_broadcast_i64x4(_mm256_loadu_si256(b.cast()));
            let q = (*dst).q[n].as_mut_ptr();
            for half in 0..2 {
                let v = _mm512_broadcast_i64x4(_mm256_loadu_si256(b.add(32 + 32 * half).cast()));
                for (jp, shift) in low_shift.iter().enumerate() {
                    let m = 2 * half + jp;
                    let low = _mm512_and_si512(_mm512_srlv_epi16(v, *shift), three);
                    let high = shift_bits(hm, high_shift[m]);
                    // u = low | (high & 4)
                    let u = _mm512_ternarylogic_epi32::<0xF8>(low, high, four);
                    // Lane i's table: (4 - u) * s for u < 8, as bytes (no saturation:
                    // |4 s| <= 128 with s >= -32, and 4 * 31 = 124).
                    let s = _mm512_permutexvar_epi16(pick[m], sc);
                    let words = _mm512_mullo_epi16(s, factor);
                    let table = _mm512_packs_epi16(words, words);
                    _mm512_store_si512(q.add(64 * m).cast(), _mm512_shuffle_epi8(table, u));
                }
            }
        }
    }
}

/// `v` with each 16-bit word shifted by its count: right for counts >= 0, left by the
/// magnitude for negative ones (`_mm512_srlv_epi16` takes no negative counts).
#[inline]
#[target_feature(enable = "avx512f,avx512bw")]
fn shift_bits(v: __m512i, counts: __m512i) -> __m512i {
    let left = _mm512_movepi16_mask(counts);
    let right = _mm512_srlv_epi16(v, counts);
    _mm512_mask_sllv_epi16(
        right,
        left,
        v,
        _mm512_sub_epi16(_mm512_setzero_si512(), counts),
    )
}

/// Adds one step's scaled products to the accumulators of its token group:
/// `acc[n] += da * (-d[n]) * C[n]`.
///
/// # Safety
/// `c` holds the step's products for `nr` rows, `wb` and `ab` its unpacked weights and
/// activations.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")]
unsafe fn scale(
    c: *const CTile,
    wb: *const WeightBlock,
    ab: *const ActBlock,
    nr: usize,
    acc: &mut [__m512; TR],
) {
    // SAFETY (whole body): rows n < nr of the initialised buffers (caller).
    unsafe {
        let da = _mm512_load_ps((*ab).lines.d.as_ptr());
        for (n, acc) in acc.iter_mut().enumerate().take(nr) {
            let dot = _mm512_load_si512((*c).0[n].as_ptr().cast());
            let v = _mm512_mul_ps(_mm512_cvtepi32_ps(dot), _mm512_set1_ps((*wb).neg_d[n]));
            *acc = _mm512_fmadd_ps(v, da, *acc);
        }
    }
}

#[cfg(test)]
mod tests {
    //! The step kernel's vector stages (activation transpose, unpack, epilogue) against
    //! the scalar reference dot, with the tile products done in scalar code from the same
    //! buffers: runs on any AVX512 machine, AMX or not (the AMX products themselves are
    //! covered by `tests/cpu_amx_gemm.rs` on AMX machines).
    use super::*;
    use crate::cpu::amx::stage_check;
    use crate::util::SplitMix64;

    /// What `products` computes with `tdpbssd`, in scalar code, for rows `..nr`.
    fn products_scalar(wb: &WeightBlock, ab: &ActBlock, nr: usize, c: &mut CTile) {
        for n in 0..nr {
            for t in 0..TG {
                c.0[n][t] = (0..QK_K)
                    .map(|e| {
                        let a = (ab.lines.q[e / 4][t] >> (8 * (e % 4))) as u8 as i8;
                        wb.q[n][e] as i32 * a as i32
                    })
                    .sum();
            }
        }
    }

    /// Q3_K rows of random quant bytes (every bit pattern); the packed scale bytes all 0
    /// in row 0 (every scale -32: the folded byte -128 where `u` is 0), all 0xFF in row 1
    /// (31), cycling in the others; `d` of varied size.
    fn blocks(rng: &mut SplitMix64) -> Vec<u8> {
        let mut w = Vec::with_capacity(TR * 110);
        for r in 0..TR {
            w.extend((0..96).map(|_| rng.next_u64() as u8));
            w.extend((0..12).map(|i| match r {
                0 => 0,
                1 => 0xFF,
                _ => ((r * 12 + i) * 37 % 256) as u8,
            }));
            let d = [1e-3f32, 0.02, 3.0][r % 3] * rng.uniform(0.1, 1.0);
            w.extend(half::f16::from_f32(d).to_le_bytes());
        }
        w
    }

    #[test]
    fn vector_stages_match_the_reference_dot() {
        if !stage_check::can_run() {
            return;
        }
        let mut rng = SplitMix64::new(31);
        let arow = crate::quant::QType::Q8_K.row_bytes(QK_K).unwrap();
        for (nr, n_tok) in [(16, 16), (13, 11), (1, 1), (16, 5)] {
            let w = blocks(&mut rng);
            let a = stage_check::q8k_rows(&mut rng);
            // SAFETY: the kernel's records are plain integer and float arrays.
            let (mut wb, mut ab, mut c) = unsafe { stage_check::zeroed_records::<Q3K>() };
            let mut acc = stage_check::poisoned_acc(nr);
            // SAFETY: AVX512-VNNI and F16C were detected; `nr` weight rows and `n_tok`
            // activation rows of one block each are readable; the buffers are writable.
            unsafe {
                Q3K::transpose_acts(a.as_ptr(), arow, n_tok, &mut *ab);
                unpack_weights(w.as_ptr(), 110, nr, &mut *wb);
                products_scalar(&wb, &ab, nr, &mut c);
                scale(&*c, &*wb, &*ab, nr, &mut acc);
            }
            stage_check::check_step(
                crate::quant::QType::Q3_K,
                &acc,
                nr,
                n_tok,
                &w,
                &a,
                &format!("rows {nr} tokens {n_tok}"),
            );
        }
    }
}
