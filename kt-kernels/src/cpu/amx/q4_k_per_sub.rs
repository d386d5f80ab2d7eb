//! The Q4_K step kernel with one C tile per sub-block (see [`super::q4_k`] for the
//! pipeline and the choice between the two step kernels): `tdpbusd` with K = 32 on the
//! plain quants (A = the unpacked nibbles, unsigned; B = the activations, signed) gives
//! each sub-block's `I_j` for 16 weight rows x 16 tokens; the f32 epilogue applies
//! `d * sc_j`, the minimum term and `da`.
//!
//! Unpacking the nibbles to bytes is two masks and a shift.
//!
//! Tiles: 0..4 the C tiles of four sub-blocks, 4 and 5 the A tiles, 6 and 7 the B tiles.
//! The eight C tiles of one step are stored, then scaled in the next step.

use std::arch::x86_64::*;

use super::blocks::transpose16;
use super::kquant::{forward_stages, prefetch_block, StepKernel, QK_K, TG, TR};
use super::q4_k::{sub_offset, SUBS};
use super::tiles::{tile_dp_u8i8, tile_load, tile_store, tile_zero, TileConfig};
use crate::cpu::avx512::q4_k::scales_mins;

pub(super) struct PerSub;

// SAFETY: each stage touches only the records and rows it is given (see the
// functions' contracts); `products` uses tiles 0..8 as `config` sets them up.
unsafe impl StepKernel for PerSub {
    type Acts = ActBlock;
    type Weights = WeightBlock;
    type Products = CTiles;
    const W_BLOCK: usize = 144;

    fn config(nr: usize) -> TileConfig {
        let mut c = TileConfig::new();
        for tile in 0..4 {
            c.set(tile, nr, 64);
        }
        c.set(4, nr, 32);
        c.set(5, nr, 32);
        c.set(6, 8, 64);
        c.set(7, 8, 64);
        c
    }

    forward_stages!(
        transpose_acts: transpose_acts,
        unpack_prefetching: unpack_weights,
        products: products,
        scale: scale,
    );
}

/// One token group's activations of one super-block, ready for the B tiles.
#[repr(C, align(64))]
pub(super) struct ActBlock {
    /// Line `q`: dword `q` (elements `4q..4q + 4`) of each of the 16 tokens.
    q: [[i32; TG]; QK_K / 4],
    /// `S_j` per token, as f32.
    sums: [[f32; TG]; SUBS],
    /// `da` per token (0 for the group's missing tokens).
    d: [f32; TG],
}

/// One row block's super-block, unpacked for the A tiles.
#[repr(C, align(64))]
pub(super) struct WeightBlock {
    /// Row `n`: the quants as bytes, sub-block `j` at [`sub_offset`]`(j)`.
    q: [[u8; QK_K]; TR],
    /// `d * sc_j` and `dmin * m_j` per row.
    scale: [[f32; SUBS]; TR],
    min: [[f32; SUBS]; TR],
}

/// The eight int32 C tiles of one step: sub-block `j`, weight row `n` at `[j][n]`.
#[repr(C, align(64))]
pub(super) struct CTiles([[[i32; TG]; TR]; SUBS]);

/// Transposes one super-block of `n` (1..=16) tokens' Q8_K rows (`a`, `stride` bytes
/// apart) into `dst`; missing tokens read as zero. The sub-block sums come from the
/// transposed lines (one `vpdpbusd` with ones per line sums each token's 4 bytes).
///
/// # Safety
/// `n` rows of a whole Q8_K block are readable at `a`; `dst` is writable.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")]
unsafe fn transpose_acts(a: *const u8, stride: usize, n: usize, dst: *mut ActBlock) {
    let ones = _mm512_set1_epi8(1);
    // SAFETY (whole body): rows tok < n of the block are readable (caller); `dst` is a
    // valid, 64-byte aligned ActBlock.
    unsafe {
        for quarter in 0..4 {
            let mut r = [_mm512_setzero_si512(); TG];
            for (tok, v) in r.iter_mut().enumerate().take(n) {
                *v = _mm512_loadu_si512(a.add(tok * stride + 4 + 64 * quarter).cast());
            }
            let r = transpose16(&r);
            let q = (*dst).q.as_mut_ptr().add(16 * quarter);
            for (i, v) in r.iter().enumerate() {
                _mm512_store_si512(q.add(i).cast(), *v);
            }
            // Lines 0..8 of the quarter are sub-block 2 * quarter, 8..16 the next.
            for (half, lines) in r.chunks_exact(8).enumerate() {
                let sum = lines.iter().fold(_mm512_setzero_si512(), |acc, &l| {
                    _mm512_dpbusd_epi32(acc, ones, l)
                });
                _mm512_store_ps(
                    (*dst).sums[2 * quarter + half].as_mut_ptr(),
                    _mm512_cvtepi32_ps(sum),
                );
            }
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

/// Unpacks `nr` weight rows' Q4_K block (`w`, rows `stride` bytes apart) into `dst`,
/// prefetching row `n` of the `ahead_nr` rows' block at `ahead` with row `n`.
///
/// # Safety
/// `nr` (<= 16) blocks are readable at `w`; `dst` is writable; the `ahead_nr` blocks at
/// `ahead` lie inside the weights.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,f16c")]
unsafe fn unpack_weights(
    w: *const u8,
    stride: usize,
    nr: usize,
    dst: *mut WeightBlock,
    ahead: *const u8,
    ahead_nr: usize,
) {
    let nib = _mm512_set1_epi8(0x0F);
    for n in nr..ahead_nr {
        // SAFETY: block n of `ahead` is inside the weights (caller).
        unsafe { prefetch_block(ahead.add(n * stride), PerSub::W_BLOCK) };
    }
    for n in 0..nr {
        if n < ahead_nr {
            // SAFETY: as above.
            unsafe { prefetch_block(ahead.add(n * stride), PerSub::W_BLOCK) };
        }
        // SAFETY: block n is readable (caller): d, dmin at 0..4, scales at 4..16 (and
        // scales_mins reads 4 quant bytes past them), quants at 16..144; row n of `dst`.
        unsafe {
            let b = w.add(n * stride);
            let dd = _mm_cvtph_ps(_mm_cvtsi32_si128(b.cast::<i32>().read_unaligned()));
            let (d, dmin) = (
                _mm256_broadcastss_ps(dd),
                _mm256_broadcastss_ps(_mm_movehdup_ps(dd)),
            );
            let (sc, m) = scales_mins(b.add(4));
            let sc = _mm256_cvtepi32_ps(_mm512_castsi512_si256(sc));
            let m = _mm256_cvtepi32_ps(_mm512_castsi512_si256(m));
            _mm256_store_ps((*dst).scale[n].as_mut_ptr(), _mm256_mul_ps(sc, d));
            _mm256_store_ps((*dst).min[n].as_mut_ptr(), _mm256_mul_ps(m, dmin));
            let q = (*dst).q[n].as_mut_ptr();
            for half in 0..2 {
                let v = _mm512_loadu_si512(b.add(16 + 64 * half).cast());
                _mm512_store_si512(q.add(128 * half).cast(), _mm512_and_si512(v, nib));
                _mm512_store_si512(
                    q.add(128 * half + 64).cast(),
                    _mm512_and_si512(_mm512_srli_epi16::<4>(v), nib),
                );
            }
        }
    }
}

/// The eight sub-blocks' int32 products of one row block and token group into `c`.
///
/// # Safety
/// The tile configuration of [`gemm_amx`] is loaded (A and C rows = the rows unpacked
/// in `wb`); `wb`, `ab` are initialised and `c` writable.
#[inline]
unsafe fn products(wb: *const WeightBlock, ab: *const ActBlock, c: *mut CTiles) {
    // SAFETY (whole body): every address is inside `wb` (A rows of 256 bytes, 32 read
    // from sub_offset(j) <= 224), `ab` (8 lines of 64 bytes from line 8j) or `c` (one
    // 16 x 64-byte tile per sub-block); AMX state is configured (caller).
    unsafe {
        let a = (*wb).q.as_ptr().cast::<u8>();
        let b = (*ab).q.as_ptr().cast::<u8>();
        let c = (*c).0.as_mut_ptr().cast::<u8>();
        let (sa, sb, sc) = (QK_K, 64usize, 64usize);
        let bl = |j: usize| b.add(512 * j);
        let al = |j: usize| a.add(sub_offset(j));
        let cl = |j: usize| c.add(1024 * j);
        for round in 0..2 {
            let j = 4 * round;
            tile_zero!(0);
            tile_zero!(1);
            tile_zero!(2);
            tile_zero!(3);
            tile_load!(4, al(j), sa);
            tile_load!(6, bl(j), sb);
            tile_dp_u8i8!(0, 4, 6);
            tile_load!(5, al(j + 1), sa);
            tile_load!(7, bl(j + 1), sb);
            tile_dp_u8i8!(1, 5, 7);
            tile_load!(4, al(j + 2), sa);
            tile_load!(6, bl(j + 2), sb);
            tile_dp_u8i8!(2, 4, 6);
            tile_load!(5, al(j + 3), sa);
            tile_load!(7, bl(j + 3), sb);
            tile_dp_u8i8!(3, 5, 7);
            tile_store!(0, cl(j), sc);
            tile_store!(1, cl(j + 1), sc);
            tile_store!(2, cl(j + 2), sc);
            tile_store!(3, cl(j + 3), sc);
        }
    }
}

/// Adds one step's scaled products to the accumulators of its token group:
/// `acc[n] += da * (sum_j d sc_j[n] I_j[n] - sum_j dmin m_j[n] S_j)`.
///
/// # Safety
/// `c` holds the step's products for `nr` rows, `wb` and `ab` its unpacked weights and
/// activations.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq")]
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
        let sums: [__m512; SUBS] = std::array::from_fn(|j| _mm512_load_ps((*ab).sums[j].as_ptr()));
        for (n, acc) in acc.iter_mut().enumerate().take(nr) {
            // Four independent sums (products and minimums of even and odd sub-blocks):
            // a row's dependency chain is 4 FMAs and 2 adds instead of 16 FMAs, so less
            // of the epilogue waits on latency while the AMX products of the next step
            // hold the reorder window.
            let (mut ps, mut ms) = ([_mm512_setzero_ps(); 2], [_mm512_setzero_ps(); 2]);
            for (j, s) in sums.iter().enumerate() {
                let ci = _mm512_load_si512((*c).0[j][n].as_ptr().cast());
                let (p, m) = (&mut ps[j % 2], &mut ms[j % 2]);
                *p = _mm512_fmadd_ps(
                    _mm512_cvtepi32_ps(ci),
                    _mm512_set1_ps((*wb).scale[n][j]),
                    *p,
                );
                *m = _mm512_fmadd_ps(*s, _mm512_set1_ps((*wb).min[n][j]), *m);
            }
            let v = _mm512_sub_ps(_mm512_add_ps(ps[0], ps[1]), _mm512_add_ps(ms[0], ms[1]));
            *acc = _mm512_fmadd_ps(v, da, *acc);
        }
    }
}

#[cfg(test)]
mod tests {
    //! The step kernel's vector stages (activation transpose, unpack, epilogue) against
    //! the scalar reference, with the tile products done in scalar code from the same
    //! buffers: runs on any AVX512 machine, AMX or not (the AMX products themselves are
    //! covered by `tests/cpu_amx_gemm.rs` and `tests/moe_q4k_amx.rs` on AMX machines).
    use super::*;
    use crate::cpu::amx::stage_check;
    use crate::quant::{self, QType};
    use crate::util::SplitMix64;

    /// What `products` computes with `tdpbusd`, in scalar code, for rows `..nr`.
    fn products_scalar(wb: &WeightBlock, ab: &ActBlock, nr: usize, c: &mut CTiles) {
        for n in 0..nr {
            for t in 0..TG {
                for j in 0..SUBS {
                    c.0[j][n][t] = (0..32)
                        .map(|i| {
                            let a = (ab.q[8 * j + i / 4][t] >> (8 * (i % 4))) as u8 as i8;
                            wb.q[n][sub_offset(j) + i] as i32 * a as i32
                        })
                        .sum();
                }
            }
        }
    }

    #[test]
    fn vector_stages_match_the_reference_dot() {
        if !stage_check::can_run() {
            return;
        }
        let mut rng = SplitMix64::new(11);
        let wrow = QType::Q4_K.row_bytes(QK_K).unwrap();
        let arow = QType::Q8_K.row_bytes(QK_K).unwrap();
        for (nr, n_tok, spread) in [(16, 16, 1.0), (13, 11, 0.02), (1, 1, 30.0), (16, 5, 1.0)] {
            let mut wf = vec![0f32; TR * QK_K];
            rng.fill_normal(&mut wf, spread);
            // A positive offset on some rows: Q4_K's minimums then carry weight.
            for (r, row) in wf.chunks_mut(QK_K).enumerate() {
                row.iter_mut()
                    .for_each(|v| *v += 0.3 * spread * (r % 3) as f32);
            }
            let mut w = vec![0u8; TR * wrow];
            quant::quantize(QType::Q4_K, &wf, &mut w).unwrap();
            let a = stage_check::q8k_rows(&mut rng);
            // SAFETY: the kernel's records are plain integer and float arrays.
            let (mut wb, mut ab, mut c) = unsafe { stage_check::zeroed_records::<PerSub>() };
            let mut acc = stage_check::poisoned_acc(nr);
            // SAFETY: AVX512-VNNI and F16C were detected; `nr` weight rows and `n_tok`
            // activation rows of one block each are readable; the buffers are writable.
            unsafe {
                transpose_acts(a.as_ptr(), arow, n_tok, &mut *ab);
                unpack_weights(w.as_ptr(), wrow, nr, &mut *wb, std::ptr::null(), 0);
                products_scalar(&wb, &ab, nr, &mut c);
                scale(&*c, &*wb, &*ab, nr, &mut acc);
            }
            stage_check::check_step(
                QType::Q4_K,
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
