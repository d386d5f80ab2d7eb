//! Q6_K weights as stored in the GGUF, many tokens, on AMX `tdpbssd` (a step kernel of
//! the [`kquant`](super::kquant) pipeline).
//!
//! A Q6_K block (210 bytes: 128 `ql`, 64 `qh`, 16 int8 scales, f16 `d`) is
//! `w = d * sc_g * q` for the 16-element group `g`, `q` in -32..32. The unpacking
//! computes each element's `v = sc_g * q` (-4064..=4096) as an int16 and splits it into
//! its bytes, `v = lo + 256 hi` with `lo` unsigned (0..=255) and `hi` signed (-16..=16):
//! two A operands, two C tiles (four `tdpbusd` into `C0`, four `tdpbssd` into `C1`, K =
//! 64 each), and `C0 + 256 C1 = sum_g sc_g * I_g` exactly (at most 256 * 4096 * 128 <
//! 2^31). No minimum term. Two products a K step are the fewest: one int8 operand cannot
//! carry a product of 13 significant bits, and a per-group offset would need the group
//! sums on the vector side (16 x 16 x 16 products a step). Until session 12 the split was
//! of the scale into three base-8 digits (`q * c` in int8): three products a K step.
//!
//! Element `128n + 32s + e` has its low 4 bits in `ql[64n + 32(s & 1) + e]` (low nibble
//! for `s < 2`, high otherwise) and its top 2 bits at bits `2s..2s + 2` of `qh[32n + e]`,
//! stored as `q + 32`: the unpacked rows keep the natural element order, as do the
//! activation lines ([`super::q8_k_lines`]).
//!
//! Tiles: 0 and 1 the C tiles, 2..6 the A tiles (low and high bytes, alternating by K step
//! so that a load need not wait for the product before), 6 and 7 the B tiles.

use std::arch::x86_64::*;

use super::kquant::{
    folded_config, forward_stages, single_step_entry_points, StepKernel, QK_K, TG, TR,
};
use super::q8_k_lines::{transpose_lines, Lines};
use super::tiles::{tile_dp_i8, tile_dp_u8i8, tile_load, tile_store, tile_zero, TileConfig};

/// Below this many tokens the AVX512 kernel is used: with few tokens a 16-token group is
/// mostly padding. Device (16 threads, session 12, one process each), ms, AMX (this
/// kernel) / AVX512 at 16, 32, 48 tokens: 7168x2048 0.224 / 0.332, 0.335 / 0.781, 0.409 /
/// 0.708; 2048x7168 0.223 / 0.328, 0.329 / 0.574, 0.535 / 0.808; 1408x2048 0.055 / 0.099,
/// 0.085 / 0.138, 0.114 / 0.185 (session 7, the three-digit kernel: 0.94-1.26x AVX512's
/// time at 16-64 tokens, hence a threshold of 64 until session 12). A partial group costs
/// AMX a whole one: AMX / AVX512 time (second call, means of two processes) at 12 and 14
/// tokens 0.63-0.87 on the three shapes, at 9 and 10 tokens 0.84-1.10 (AVX512 ahead on
/// 7168x2048), so AVX512 keeps the tiles below 12 tokens, as for Q4_K and Q2_K.
pub(crate) const AMX_MIN_TOKENS: usize = 12;

single_step_entry_points!(Q6K, AMX_MIN_TOKENS);

/// The operands (bytes of `sc * q`) of each element.
const PARTS: usize = 2;

/// Bytes whose lanes the blends below take from their second operand: the odd ones.
const ODD_BYTES: u64 = 0xAAAA_AAAA_AAAA_AAAA;

pub(super) struct Q6K;

/// One row block's super-block, unpacked for the A tiles.
#[repr(C, align(64))]
pub(super) struct WeightBlock {
    /// Row `n`'s `v = sc * q` of each element in element order: `[0]` its low byte
    /// (unsigned, the `tdpbusd` operand), `[1]` its high byte (signed, -16..=16).
    a: [[[u8; QK_K]; TR]; PARTS],
    /// `d` per row.
    d: [f32; TR],
}

/// The two int32 C tiles of one step: part `k`, weight row `n` at `[k][n]`.
#[repr(C, align(64))]
pub(super) struct CTiles([[[i32; TG]; TR]; PARTS]);

// SAFETY: each stage touches only the records and rows it is given (see the
// functions' contracts); `products` uses tiles 0..8 as `config` sets them up.
unsafe impl StepKernel for Q6K {
    type Acts = Lines;
    type Weights = WeightBlock;
    type Products = CTiles;
    const W_BLOCK: usize = 210;

    fn config(nr: usize) -> TileConfig {
        folded_config(&[0, 1, 2, 3, 4, 5], nr)
    }

    #[inline]
    unsafe fn products(wb: *const WeightBlock, ab: *const Lines, c: *mut CTiles) {
        // SAFETY (whole body): every address is inside `wb` (A rows of 256 bytes, 64 read
        // from 64 * step <= 192), `ab` (16 lines of 64 bytes from line 16 * step) or `c`
        // (two 16 x 64-byte tiles); AMX state is configured (caller).
        unsafe {
            let lo = (*wb).a[0].as_ptr().cast::<u8>();
            let hi = (*wb).a[1].as_ptr().cast::<u8>();
            let b = (*ab).q.as_ptr().cast::<u8>();
            let c = (*c).0.as_mut_ptr().cast::<u8>();
            let (sa, sb, sc) = (QK_K, 64usize, 64usize);
            tile_zero!(0);
            tile_zero!(1);
            for step in [0usize, 2] {
                tile_load!(6, b.add(1024 * step), sb);
                tile_load!(2, lo.add(64 * step), sa);
                tile_dp_u8i8!(0, 2, 6);
                tile_load!(3, hi.add(64 * step), sa);
                tile_dp_i8!(1, 3, 6);
                tile_load!(7, b.add(1024 * step + 1024), sb);
                tile_load!(4, lo.add(64 * step + 64), sa);
                tile_dp_u8i8!(0, 4, 7);
                tile_load!(5, hi.add(64 * step + 64), sa);
                tile_dp_i8!(1, 5, 7);
            }
            tile_store!(0, c, sc);
            tile_store!(1, c.add(1024), sc);
        }
    }

    forward_stages!(
        transpose_acts: transpose_lines,
        unpack: unpack_weights,
        scale: scale,
    );
}

/// Unpacks `nr` weight rows' Q6_K block (`w`, rows `stride` bytes apart) into `dst`.
///
/// # Safety
/// `nr` (<= 16) blocks are readable at `w`; `dst` is writable.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,f16c")]
unsafe fn unpack_weights(w: *const u8, stride: usize, nr: usize, dst: *mut WeightBlock) {
    let nib = _mm512_set1_epi8(0x0F);
    let top_bits = _mm512_set1_epi8(0x30);
    let offset = _mm512_set1_epi8(32);
    // Plane `m = 2n + h` (elements 128n + 64h..128n + 64h + 64): bytes 0..32 take `qh`
    // bits 2s.. with s = 2h, bytes 32..64 bits 2s + 2..; rotating each dword left by
    // 4 - 2s (mod 32) brings them to bits 4 and 5 of each byte.
    let rotate: [__m512i; 2] = std::array::from_fn(|h| {
        let s = 2 * h as i32;
        _mm512_inserti64x4::<1>(
            _mm512_set1_epi32((4 - 2 * s).rem_euclid(32)),
            _mm256_set1_epi32((2 - 2 * s).rem_euclid(32)),
        )
    });
    // Word `i` of plane `m` takes the scale of group 4m + i / 8.
    let pick: [__m512i; 4] = std::array::from_fn(|m| {
        let mut idx = [0i16; 32];
        for (i, x) in idx.iter_mut().enumerate() {
            *x = (4 * m + i / 8) as i16;
        }
        // SAFETY: a 64-byte read of a local array.
        unsafe { _mm512_loadu_si512(idx.as_ptr().cast()) }
    });
    for n in 0..nr {
        // SAFETY: block n is readable (caller): ql at 0..128, qh at 128..192, scales at
        // 192..208, d at 208..210; row n of `dst`.
        unsafe {
            let b = w.add(n * stride);
            let d = _mm_cvtph_ps(_mm_cvtsi32_si128(i32::from(
                b.add(208).cast::<u16>().read_unaligned(),
            )));
            (*dst).d[n] = _mm_cvtss_f32(d);
            let sc =
                _mm512_castsi256_si512(_mm256_cvtepi8_epi16(_mm_loadu_si128(b.add(192).cast())));
            for half in 0..2 {
                let ql = _mm512_loadu_si512(b.add(64 * half).cast());
                let qh = _mm512_broadcast_i64x4(_mm256_loadu_si256(b.add(128 + 32 * half).cast()));
                for (h, rotate) in rotate.iter().enumerate() {
                    let plane = 2 * half + h;
                    let low = if h == 0 {
                        ql
                    } else {
                        _mm512_srli_epi16::<4>(ql)
                    };
                    let top = _mm512_rolv_epi32(qh, *rotate);
                    // (low & 0x0F) | (top & 0x30), less the offset 32.
                    let u = _mm512_or_si512(
                        _mm512_and_si512(low, nib),
                        _mm512_and_si512(top, top_bits),
                    );
                    let q = _mm512_sub_epi8(u, offset);
                    // The even and the odd elements as int16 words, times their scales:
                    // exact (|v| <= 4096).
                    let even = _mm512_srai_epi16::<8>(_mm512_slli_epi16::<8>(q));
                    let odd = _mm512_srai_epi16::<8>(q);
                    let x = _mm512_permutexvar_epi16(pick[plane], sc);
                    let ve = _mm512_mullo_epi16(even, x);
                    let vo = _mm512_mullo_epi16(odd, x);
                    // Each element's low byte, then its high byte, back in element order.
                    let lo = _mm512_mask_blend_epi8(ODD_BYTES, ve, _mm512_slli_epi16::<8>(vo));
                    let hi = _mm512_mask_blend_epi8(ODD_BYTES, _mm512_srli_epi16::<8>(ve), vo);
                    _mm512_store_si512((*dst).a[0][n].as_mut_ptr().add(64 * plane).cast(), lo);
                    _mm512_store_si512((*dst).a[1][n].as_mut_ptr().add(64 * plane).cast(), hi);
                }
            }
        }
    }
}

/// Adds one step's scaled products to the accumulators of its token group:
/// `acc[n] += da * d[n] * (C0[n] + 256 C1[n])`.
///
/// # Safety
/// `c` holds the step's products for `nr` rows, `wb` and `ab` its unpacked weights and
/// activations.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq")]
unsafe fn scale(
    c: *const CTiles,
    wb: *const WeightBlock,
    ab: *const Lines,
    nr: usize,
    acc: &mut [__m512; TR],
) {
    // SAFETY (whole body): rows n < nr of the initialised buffers (caller).
    unsafe {
        let da = _mm512_load_ps((*ab).d.as_ptr());
        for (n, acc) in acc.iter_mut().enumerate().take(nr) {
            let [c0, c1] = [0, 1].map(|k| _mm512_load_si512((*c).0[k][n].as_ptr().cast()));
            let dot = _mm512_add_epi32(c0, _mm512_slli_epi32::<8>(c1));
            let v = _mm512_mul_ps(_mm512_cvtepi32_ps(dot), _mm512_set1_ps((*wb).d[n]));
            *acc = _mm512_fmadd_ps(v, da, *acc);
        }
    }
}

#[cfg(test)]
mod tests {
    //! The step kernel's vector stages (activation transpose, unpack, epilogue) against
    //! the scalar reference, with the tile products done in scalar code from the same
    //! buffers: runs on any AVX512 machine, AMX or not (the AMX products themselves are
    //! covered by `tests/cpu_amx_gemm.rs` on AMX machines).
    use super::*;
    use crate::cpu::amx::stage_check;
    use crate::quant::{self, QType};
    use crate::util::SplitMix64;

    /// What `products` computes (`tdpbusd` on the low bytes, `tdpbssd` on the high ones),
    /// in scalar code, for rows `..nr`.
    fn products_scalar(wb: &WeightBlock, ab: &Lines, nr: usize, c: &mut CTiles) {
        for n in 0..nr {
            for t in 0..TG {
                let a = |e: usize| i32::from((ab.q[e / 4][t] >> (8 * (e % 4))) as u8 as i8);
                c.0[0][n][t] = (0..QK_K).map(|e| i32::from(wb.a[0][n][e]) * a(e)).sum();
                c.0[1][n][t] = (0..QK_K)
                    .map(|e| i32::from(wb.a[1][n][e] as i8) * a(e))
                    .sum();
            }
        }
    }

    /// Sixteen Q6_K blocks of random quants whose scales, over the 16 rows, take each of
    /// the 256 int8 values once; every third row's quants all -32 or all 31 (`sc * q` at
    /// its extremes 4096, -4064, -3968, 3937).
    fn cycled_blocks(rng: &mut SplitMix64) -> Vec<u8> {
        let mut w = Vec::with_capacity(TR * 210);
        for n in 0..TR {
            let bits = match n % 3 {
                0 => rng.next_u64() as u8,
                1 => 0x00,
                _ => 0xFF,
            };
            w.extend((0..192).map(|_| {
                if n % 3 == 0 {
                    rng.next_u64() as u8
                } else {
                    bits
                }
            }));
            w.extend((0..16).map(|g| (16 * n + g) as u8));
            w.extend(half::f16::from_f32(rng.uniform(0.001, 0.002)).to_le_bytes());
        }
        w
    }

    #[test]
    fn vector_stages_match_the_reference_dot() {
        if !stage_check::can_run() {
            return;
        }
        let mut rng = SplitMix64::new(12);
        let wrow = QType::Q6_K.row_bytes(QK_K).unwrap();
        let arow = QType::Q8_K.row_bytes(QK_K).unwrap();
        for (case, (nr, n_tok, spread)) in [
            (16, 16, 1.0),
            (13, 11, 0.02),
            (1, 1, 30.0),
            (16, 5, 1.0),
            (16, 16, 0.0),
        ]
        .into_iter()
        .enumerate()
        {
            // The last case: the scale-cycling blocks instead of quantized floats.
            let w = if case == 4 {
                cycled_blocks(&mut rng)
            } else {
                let mut wf = vec![0f32; TR * QK_K];
                rng.fill_normal(&mut wf, spread);
                let mut w = vec![0u8; TR * wrow];
                quant::quantize(QType::Q6_K, &wf, &mut w).unwrap();
                w
            };
            let a = stage_check::q8k_rows(&mut rng);
            // SAFETY: the kernel's records are plain integer and float arrays.
            let (mut wb, mut ab, mut c) = unsafe { stage_check::zeroed_records::<Q6K>() };
            let mut acc = stage_check::poisoned_acc(nr);
            // SAFETY: AVX512-VNNI and F16C were detected; `nr` weight rows and `n_tok`
            // activation rows of one block each are readable; the buffers are writable.
            unsafe {
                transpose_lines(a.as_ptr(), arow, n_tok, &mut *ab);
                unpack_weights(w.as_ptr(), wrow, nr, &mut *wb);
                products_scalar(&wb, &ab, nr, &mut c);
                scale(&*c, &*wb, &*ab, nr, &mut acc);
            }
            stage_check::check_step(
                QType::Q6_K,
                &acc,
                nr,
                n_tok,
                &w,
                &a,
                &format!("case {case}"),
            );
        }
    }

    /// The unpacked bytes are exactly `sc * q`, split: low byte unsigned, high signed.
    #[test]
    fn unpacked_bytes_recompose_sc_times_q() {
        if !stage_check::can_run() {
            return;
        }
        let mut rng = SplitMix64::new(13);
        let w = cycled_blocks(&mut rng);
        // SAFETY: plain integer and float arrays: all-zero bytes are valid values.
        let mut wb = unsafe { Box::<WeightBlock>::new(std::mem::zeroed()) };
        // SAFETY: the features were detected; 16 blocks are readable; `wb` is writable.
        unsafe { unpack_weights(w.as_ptr(), 210, TR, &mut *wb) };
        let mut deq = vec![0f32; QK_K];
        for n in 0..TR {
            let b = &w[n * 210..(n + 1) * 210];
            quant::dequantize(QType::Q6_K, b, &mut deq).unwrap();
            let d = half::f16::from_le_bytes([b[208], b[209]]).to_f32();
            for (e, (&lo, &hi)) in wb.a[0][n].iter().zip(&wb.a[1][n]).enumerate() {
                let v = i32::from(lo) + 256 * i32::from(hi as i8);
                // d * v is the dequantized weight, bit for bit: `(d sc) q` and `d (sc q)` are
                // exact in f32 (at most 11 + 8 + 5 significant bits).
                assert_eq!(d * v as f32, deq[e], "row {n} element {e}: v {v}");
            }
        }
    }
}
