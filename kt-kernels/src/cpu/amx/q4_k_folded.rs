//! The Q4_K and Q5_K step kernel with the sub-block scales folded into the unpacked
//! weights (see [`super::q4_k`] for the choice between Q4_K's two step kernels). The two
//! formats differ only in their quants ([`FoldedQuants`]: Q4_K's 4 bits, Q5_K's 5), with
//! the same scales, minimums and sub-block order.
//!
//! `q * sc_j` (up to 945, Q5_K 1953) does not fit `tdpbusd`'s unsigned byte operand, but
//! with `sc_j = 8 * hi_j + lo_j` (both in 0..8) `q * hi_j` and `q * lo_j` (up to 105, Q5_K
//! 217) do. Two C tiles accumulate `C_hi = sum q * hi * s` and `C_lo = sum q * lo * s` over
//! the super-block's K = 256 (four `tdpbusd` each, K = 64), and `8 * C_hi + C_lo` is
//! `sum_j sc_j * I_j` exactly (at most 256 * 1953 * 128 < 2^31). The minimum term
//! `sum_j m_j * S_j` (at most 8 * 63 * 4096) is four `vpdpwssd` per row in the epilogue:
//! the `S_j` as int16 pairs per token, the `m_j` pairs broadcast. The epilogue thus runs
//! once per super-block, on two C tiles.
//!
//! Unpacking: masks, shifts and one `vpmullw` per 64 bytes and factor (each word is
//! `q0 + 256 q1`: a quant below 32 times a factor below 8 is below 256, so the low byte's
//! product does not carry into the high byte). Both operands keep the unpacked order of the sub-blocks ([`sub_offset`]):
//! the activation lines are placed to match.
//!
//! Tiles: 0 and 1 the C tiles (hi, lo), 2..6 the A tiles (two hi/lo pairs, alternating
//! by K step), 6 and 7 the B tiles (alternating).

use std::arch::x86_64::*;
use std::marker::PhantomData;

use super::blocks::transpose16;
use super::kquant::{folded_config, forward_stages, prefetch_block, StepKernel, QK_K, TG, TR};
use super::q4_k::{sub_offset, SUBS};
use super::tiles::{tile_dp_u8i8, tile_load, tile_store, tile_zero, TileConfig};
use crate::cpu::avx512::q4_k::scales_mins;

/// The quants of a format with Q4_K's scales: `d`, `dmin` (f16) at bytes 0..4 of a block,
/// the 12 bytes of 6-bit scales and minimums at 4..16, quants after them.
///
/// # Safety
/// `planes` reads only the block at `b`.
pub(super) unsafe trait FoldedQuants {
    /// Bytes of one block.
    const W_BLOCK: usize;

    /// The quants (each below 32) of half `h` (0 or 1) of the block at `b`, in two 64-byte
    /// planes: plane `p` holds element `e` of sub-block `4h + p` at byte `e` and of
    /// sub-block `4h + 2 + p` at byte `32 + e` (the layout of Q4_K's nibbles).
    ///
    /// # Safety
    /// The whole block is readable at `b`.
    unsafe fn planes(b: *const u8, h: usize) -> [__m512i; 2];
}

/// Q4_K: the low and high nibbles of quant bytes `64h..64h + 64`.
pub(super) struct Q4K;

// SAFETY: reads bytes 16..144 of the block.
unsafe impl FoldedQuants for Q4K {
    const W_BLOCK: usize = 144;

    #[inline]
    #[target_feature(enable = "avx512f,avx512bw")]
    unsafe fn planes(b: *const u8, h: usize) -> [__m512i; 2] {
        let nib = _mm512_set1_epi8(0x0F);
        // SAFETY: quant bytes 16 + 64h..80 + 64h of the block (h < 2).
        let v = unsafe { _mm512_loadu_si512(b.add(16 + 64 * h).cast()) };
        [
            _mm512_and_si512(v, nib),
            _mm512_and_si512(_mm512_srli_epi16::<4>(v), nib),
        ]
    }
}

/// The folded step kernel of the quants `F`.
pub(super) struct Folded<F>(PhantomData<F>);

// SAFETY: each stage touches only the records and rows it is given (see the
// functions' contracts); `products` uses tiles 0..8 as `config` sets them up.
unsafe impl<F: FoldedQuants> StepKernel for Folded<F> {
    type Acts = ActBlock;
    type Weights = WeightBlock;
    type Products = CTiles;
    const W_BLOCK: usize = F::W_BLOCK;

    fn config(nr: usize) -> TileConfig {
        folded_config(&[0, 1, 2, 3, 4, 5], nr)
    }

    forward_stages!(
        transpose_acts: transpose_acts,
        unpack_prefetching: unpack_weights::<F>,
        products: products,
        scale: scale,
    );
}

/// One token group's activations of one super-block, ready for the B tiles.
#[repr(C, align(64))]
pub(super) struct ActBlock {
    /// Line `l`: 4 elements of each of the 16 tokens; sub-block `j`'s elements
    /// `4i..4i + 4` on line `sub_offset(j) / 4 + i`, matching the unpacked weights.
    q: [[i32; TG]; QK_K / 4],
    /// Per token: `S_2p` in the low and `S_2p+1` in the high int16 of dword `p`.
    sums: [[i32; TG]; SUBS / 2],
    /// `da` per token (0 for the group's missing tokens).
    d: [f32; TG],
}

/// One row block's super-block, unpacked for the A tiles.
#[repr(C, align(64))]
pub(super) struct WeightBlock {
    /// Row `n`: `q * hi_j` and `q * lo_j` as bytes, sub-block `j` at [`sub_offset`]`(j)`.
    hi: [[u8; QK_K]; TR],
    lo: [[u8; QK_K]; TR],
    /// `d` and `dmin` per row.
    d: [f32; TR],
    dmin: [f32; TR],
    /// Per row: `m_2p` in the low and `m_2p+1` in the high int16 of dword `p`.
    mins: [[i32; SUBS / 2]; TR],
}

/// The two int32 C tiles of one step: hi at `[0]`, lo at `[1]`, weight row `n` at `[.][n]`.
#[repr(C, align(64))]
pub(super) struct CTiles([[[i32; TG]; TR]; 2]);

/// Transposes one super-block of `n` (1..=16) tokens' Q8_K rows (`a`, `stride` bytes
/// apart) into `dst`; missing tokens read as zero. The sub-block sums come from the
/// transposed lines (one `vpdpbusd` with ones per line sums each token's 4 bytes).
///
/// # Safety
/// `n` rows of a whole Q8_K block are readable at `a`; `dst` is writable.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")]
unsafe fn transpose_acts(a: *const u8, stride: usize, n: usize, dst: *mut ActBlock) {
    let ones = _mm512_set1_epi8(1);
    let low_half = _mm512_set1_epi32(0xFFFF);
    // SAFETY (whole body): rows tok < n of the block are readable (caller); `dst` is a
    // valid, 64-byte aligned ActBlock; line sub_offset(j) / 4 + 8 <= 64.
    unsafe {
        for quarter in 0..4 {
            let mut r = [_mm512_setzero_si512(); TG];
            for (tok, v) in r.iter_mut().enumerate().take(n) {
                *v = _mm512_loadu_si512(a.add(tok * stride + 4 + 64 * quarter).cast());
            }
            let r = transpose16(&r);
            // Lines 0..8 of the quarter are sub-block 2 * quarter, 8..16 the next.
            let mut sums = [_mm512_setzero_si512(); 2];
            for (half, lines) in r.chunks_exact(8).enumerate() {
                let j = 2 * quarter + half;
                let q = (*dst).q.as_mut_ptr().add(sub_offset(j) / 4);
                for (i, v) in lines.iter().enumerate() {
                    _mm512_store_si512(q.add(i).cast(), *v);
                }
                sums[half] = lines.iter().fold(_mm512_setzero_si512(), |acc, &l| {
                    _mm512_dpbusd_epi32(acc, ones, l)
                });
            }
            // |S_j| <= 32 * 128: an int16 each.
            let pair = _mm512_or_si512(
                _mm512_and_si512(sums[0], low_half),
                _mm512_slli_epi32::<16>(sums[1]),
            );
            _mm512_store_si512((*dst).sums[quarter].as_mut_ptr().cast(), pair);
        }
        let d = &mut (*dst).d;
        for (tok, d) in d.iter_mut().enumerate() {
            *d = if tok < n {
                a.add(tok * stride).cast::<f32>().read_unaligned()
            } else {
                0.0
            };
        }
    }
}

/// `vpermw` indices putting word `2 * a` (int32 lane `a`'s low word) in words 0..16 and
/// word `2 * b` in words 16..32.
#[inline]
#[target_feature(enable = "avx512f,avx512bw")]
fn two_lanes(a: usize, b: usize) -> __m512i {
    _mm512_mask_blend_epi16(
        0xFFFF_0000,
        _mm512_set1_epi16(2 * a as i16),
        _mm512_set1_epi16(2 * b as i16),
    )
}

/// Unpacks `nr` weight rows' block (`w`, rows `stride` bytes apart) into `dst`,
/// prefetching row `n` of the `ahead_nr` rows' block at `ahead` with row `n`.
///
/// # Safety
/// `nr` (<= 16) blocks are readable at `w`; `dst` is writable; the `ahead_nr` blocks at
/// `ahead` lie inside the weights.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,f16c")]
unsafe fn unpack_weights<F: FoldedQuants>(
    w: *const u8,
    stride: usize,
    nr: usize,
    dst: *mut WeightBlock,
    ahead: *const u8,
    ahead_nr: usize,
) {
    let seven = _mm512_set1_epi16(7);
    // Nibble plane `nib` of quant half `h` holds sub-blocks 4h + nib (bytes 0..32) and
    // 4h + 2 + nib (bytes 32..64): its multiplier words come from those scale lanes.
    let pick = [
        [two_lanes(0, 2), two_lanes(1, 3)],
        [two_lanes(4, 6), two_lanes(5, 7)],
    ];
    // Words 0..8: the mins' int32 lanes 0..8, packed in pairs.
    let pack = _mm512_set_epi64(
        0,
        0,
        0,
        0,
        0,
        0,
        0x000E_000C_000A_0008,
        0x0006_0004_0002_0000,
    );
    for n in nr..ahead_nr {
        // SAFETY: block n of `ahead` is inside the weights (caller).
        unsafe { prefetch_block(ahead.add(n * stride), F::W_BLOCK) };
    }
    for n in 0..nr {
        if n < ahead_nr {
            // SAFETY: as above.
            unsafe { prefetch_block(ahead.add(n * stride), F::W_BLOCK) };
        }
        // SAFETY: block n is readable (caller): d, dmin at 0..4, scales at 4..16 (and
        // scales_mins reads 4 bytes past them), quants after; row n of `dst`.
        unsafe {
            let b = w.add(n * stride);
            let dd = _mm_cvtph_ps(_mm_cvtsi32_si128(b.cast::<i32>().read_unaligned()));
            (*dst).d[n] = _mm_cvtss_f32(dd);
            (*dst).dmin[n] = _mm_cvtss_f32(_mm_movehdup_ps(dd));
            let (sc, m) = scales_mins(b.add(4));
            _mm_storeu_si128(
                (*dst).mins[n].as_mut_ptr().cast(),
                _mm512_castsi512_si128(_mm512_permutexvar_epi16(pack, m)),
            );
            let (hi, lo) = ((*dst).hi[n].as_mut_ptr(), (*dst).lo[n].as_mut_ptr());
            for (half, pick) in pick.iter().enumerate() {
                let planes = F::planes(b, half);
                for (plane, (&q, &idx)) in planes.iter().zip(pick).enumerate() {
                    // Each word is q0 + 256 q1 with q < 32: times a multiplier < 8 the
                    // low byte's product stays below 256, so the bytes are q0 * x, q1 * x.
                    let x = _mm512_permutexvar_epi16(idx, sc);
                    let at = 128 * half + 64 * plane;
                    _mm512_store_si512(
                        hi.add(at).cast(),
                        _mm512_mullo_epi16(q, _mm512_srli_epi16::<3>(x)),
                    );
                    _mm512_store_si512(
                        lo.add(at).cast(),
                        _mm512_mullo_epi16(q, _mm512_and_si512(x, seven)),
                    );
                }
            }
        }
    }
}

/// One row block and token group's super-block products into `c`: `C_hi` and `C_lo`.
///
/// # Safety
/// The tile configuration of [`gemm_amx`] is loaded (A and C rows = the rows unpacked
/// in `wb`); `wb`, `ab` are initialised and `c` writable.
#[inline]
unsafe fn products(wb: *const WeightBlock, ab: *const ActBlock, c: *mut CTiles) {
    // SAFETY (whole body): every address is inside `wb` (A rows of 256 bytes, 64 read
    // from 64 * step <= 192), `ab` (16 lines of 64 bytes from line 16 * step) or `c`
    // (two 16 x 64-byte tiles); AMX state is configured (caller).
    unsafe {
        let hi = (*wb).hi.as_ptr().cast::<u8>();
        let lo = (*wb).lo.as_ptr().cast::<u8>();
        let b = (*ab).q.as_ptr().cast::<u8>();
        let c = (*c).0.as_mut_ptr().cast::<u8>();
        let (sa, sb, sc) = (QK_K, 64usize, 64usize);
        tile_zero!(0);
        tile_zero!(1);
        // K steps alternate between two sets of A and B tiles, so a step's loads need
        // not wait for the previous step's products to release their tiles.
        for step in [0usize, 2] {
            tile_load!(2, hi.add(64 * step), sa);
            tile_load!(3, lo.add(64 * step), sa);
            tile_load!(6, b.add(1024 * step), sb);
            tile_dp_u8i8!(0, 2, 6);
            tile_dp_u8i8!(1, 3, 6);
            tile_load!(4, hi.add(64 * step + 64), sa);
            tile_load!(5, lo.add(64 * step + 64), sa);
            tile_load!(7, b.add(1024 * step + 1024), sb);
            tile_dp_u8i8!(0, 4, 7);
            tile_dp_u8i8!(1, 5, 7);
        }
        tile_store!(0, c, sc);
        tile_store!(1, c.add(1024), sc);
    }
}

/// Adds one step's scaled products to the accumulators of its token group:
/// `acc[n] += da * (d[n] * (8 C_hi[n] + C_lo[n]) - dmin[n] * sum_j m_j[n] S_j)`.
///
/// # Safety
/// `c` holds the step's products for `nr` rows, `wb` and `ab` its unpacked weights and
/// activations.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")]
unsafe fn scale(
    c: *const CTiles,
    wb: *const WeightBlock,
    ab: *const ActBlock,
    nr: usize,
    acc: &mut [__m512; TR],
) {
    // SAFETY (whole body): rows n < nr of the initialised buffers (caller).
    unsafe {
        let da = _mm512_load_ps((*ab).d.as_ptr());
        let sums: [__m512i; SUBS / 2] =
            std::array::from_fn(|p| _mm512_load_si512((*ab).sums[p].as_ptr().cast()));
        for (n, acc) in acc.iter_mut().enumerate().take(nr) {
            let hi = _mm512_load_si512((*c).0[0][n].as_ptr().cast());
            let lo = _mm512_load_si512((*c).0[1][n].as_ptr().cast());
            let dot = _mm512_add_epi32(_mm512_slli_epi32::<3>(hi), lo);
            let m = &(*wb).mins[n];
            // Two chains of two, so a row waits on fewer dependent `vpdpwssd`s.
            let zero = _mm512_setzero_si512();
            let even = _mm512_dpwssd_epi32(zero, sums[0], _mm512_set1_epi32(m[0]));
            let even = _mm512_dpwssd_epi32(even, sums[2], _mm512_set1_epi32(m[2]));
            let odd = _mm512_dpwssd_epi32(zero, sums[1], _mm512_set1_epi32(m[1]));
            let odd = _mm512_dpwssd_epi32(odd, sums[3], _mm512_set1_epi32(m[3]));
            let mins = _mm512_add_epi32(even, odd);
            let v = _mm512_mul_ps(_mm512_cvtepi32_ps(dot), _mm512_set1_ps((*wb).d[n]));
            let v = _mm512_fnmadd_ps(_mm512_cvtepi32_ps(mins), _mm512_set1_ps((*wb).dmin[n]), v);
            *acc = _mm512_fmadd_ps(v, da, *acc);
        }
    }
}

#[cfg(test)]
mod tests {
    //! The step kernel's vector stages (activation transpose, unpack with the folded
    //! scales, epilogue) against the scalar reference, with the tile products done in
    //! scalar code from the same buffers: runs on any AVX512 machine, AMX or not (the AMX
    //! products themselves are covered by `tests/cpu_amx_gemm.rs` and
    //! `tests/moe_q4k_amx.rs` on AMX machines).
    use super::*;
    use crate::cpu::amx::q5_k::Q5K;
    use crate::cpu::amx::stage_check;
    use crate::quant::{self, QType};
    use crate::util::SplitMix64;

    /// What `products` computes with `tdpbusd`, in scalar code, for rows `..nr`: C_hi and
    /// C_lo over the whole super-block (A row bytes `e`, B line `e / 4` byte `e % 4`).
    fn products_scalar(wb: &WeightBlock, ab: &ActBlock, nr: usize, c: &mut CTiles) {
        for n in 0..nr {
            for t in 0..TG {
                let dot = |a: &[u8; QK_K]| -> i32 {
                    (0..QK_K)
                        .map(|e| a[e] as i32 * (ab.q[e / 4][t] >> (8 * (e % 4))) as u8 as i8 as i32)
                        .sum()
                };
                c.0[0][n][t] = dot(&wb.hi[n]);
                c.0[1][n][t] = dot(&wb.lo[n]);
            }
        }
    }

    fn stages_match<F: FoldedQuants>(q: QType) {
        let mut rng = SplitMix64::new(12);
        let wrow = q.row_bytes(QK_K).unwrap();
        let arow = QType::Q8_K.row_bytes(QK_K).unwrap();
        for (nr, n_tok, spread) in [(16, 16, 1.0), (13, 11, 0.02), (1, 1, 30.0), (16, 5, 1.0)] {
            let mut wf = vec![0f32; TR * QK_K];
            rng.fill_normal(&mut wf, spread);
            // A positive offset on some rows: the minimums then carry weight; one row of
            // a single large weight per sub-block (scales at 63 beside small ones).
            for (r, row) in wf.chunks_mut(QK_K).enumerate() {
                row.iter_mut()
                    .for_each(|v| *v += 0.3 * spread * (r % 3) as f32);
                if r == 4 {
                    row.iter_mut().step_by(37).for_each(|v| *v = 40.0 * spread);
                }
            }
            let mut w = vec![0u8; TR * wrow];
            quant::quantize(q, &wf, &mut w).unwrap();
            let a = stage_check::q8k_rows(&mut rng);
            // SAFETY: the kernel's records are plain integer and float arrays.
            let (mut wb, mut ab, mut c) = unsafe { stage_check::zeroed_records::<Folded<F>>() };
            let mut acc = stage_check::poisoned_acc(nr);
            // SAFETY: AVX512-VNNI and F16C were detected; `nr` weight rows and `n_tok`
            // activation rows of one block each are readable; the buffers are writable.
            unsafe {
                transpose_acts(a.as_ptr(), arow, n_tok, &mut *ab);
                unpack_weights::<F>(w.as_ptr(), wrow, nr, &mut *wb, std::ptr::null(), 0);
                products_scalar(&wb, &ab, nr, &mut c);
                scale(&*c, &*wb, &*ab, nr, &mut acc);
            }
            stage_check::check_step(
                q,
                &acc,
                nr,
                n_tok,
                &w,
                &a,
                &format!("{q:?} rows {nr} tokens {n_tok}"),
            );
        }
    }

    #[test]
    fn vector_stages_match_the_reference_dot() {
        if !stage_check::can_run() {
            return;
        }
        stages_match::<Q4K>(QType::Q4_K);
        stages_match::<Q5K>(QType::Q5_K);
    }
}
