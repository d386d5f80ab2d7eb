//! The Q4_K step kernel with one C tile per sub-block (see [`super::q4_k`] for the
//! pipeline and the choice between the two step kernels): `tdpbusd` with K = 32 on the
//! plain quants (A = the unpacked nibbles, unsigned; B = the activations, signed) gives
//! each sub-block's `I_j` for 16 weight rows x 16 tokens; the f32 epilogue applies
//! `d * sc_j`, the minimum term and `da`.
//!
//! The minimum term's integer part `M[n, t] = sum_j m_j[n] * S_j[t]` is one more tile
//! product, `tdpbf16ps` with K = 16: A row `n` holds each `m_j` (0..64) twice, B holds per
//! token and sub-block the pair `(S_j - r, r)` with `r = S_j & 31`, so `m_j * (S_j - r) +
//! m_j * r = m_j * S_j`. Every operand is an integer with at most 7 significant bits
//! (`S_j - r` is a multiple of 32 in -4096..=4064, `r` below 32), so it is exact in bf16,
//! and every product and partial sum is an integer below 2^24 in magnitude (at most
//! 8 * 63 * 4127), so exact in f32 whatever the summation order. The epilogue then
//! takes `dmin * M` with one FMA per row instead of eight (one per sub-block's
//! `dmin * m_j * S_j`), the dearest part of the step kernel's vector work after the
//! products' own conversions.
//!
//! Unpacking the nibbles to bytes is two masks and a shift.
//!
//! Tiles: 0..4 the C tiles of four sub-blocks, 4 and 5 the A tiles, 6 and 7 the B tiles;
//! the minimum product borrows tiles 0, 4 and 6 before the sub-blocks' products (tile 4's
//! `nr` x 32 bytes and tile 6's 8 x 64 bytes are its operands' shapes). The nine C tiles
//! of one step are stored, then scaled in the next step.

use std::arch::x86_64::*;

use super::blocks::transpose16;
use super::kquant::{prefetch_block, StepKernel, QK_K, TG, TR};
use super::q4_k::{sub_offset, SUBS};
use super::tiles::{tile_dp_bf16, tile_dp_u8i8, tile_load, tile_store, tile_zero, TileConfig};
use crate::cpu::avx512::q4_k::scales_mins_of;

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

    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")]
    unsafe fn transpose_acts(a: *const u8, stride: usize, n: usize, dst: *mut ActBlock) {
        // SAFETY: the trait's contract is this function's.
        unsafe { transpose_acts(a, stride, n, dst) }
    }

    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,f16c")]
    unsafe fn unpack(w: *const u8, stride: usize, nr: usize, dst: *mut WeightBlock) {
        // SAFETY: the trait's contract is this function's.
        unsafe { unpack_weights(w, stride, nr, dst, std::ptr::null(), 0) }
    }

    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,f16c")]
    unsafe fn unpack_prefetching(
        w: *const u8,
        stride: usize,
        nr: usize,
        dst: *mut WeightBlock,
        ahead: *const u8,
        ahead_nr: usize,
    ) {
        // SAFETY: the trait's contract is this function's.
        unsafe { unpack_weights(w, stride, nr, dst, ahead, ahead_nr) }
    }

    #[inline]
    unsafe fn products(wb: *const WeightBlock, ab: *const ActBlock, c: *mut CTiles) {
        // SAFETY: the trait's contract is this function's.
        unsafe { products(wb, ab, c) }
    }

    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq")]
    unsafe fn scale(
        c: *const CTiles,
        wb: *const WeightBlock,
        ab: *const ActBlock,
        nr: usize,
        acc: &mut [__m512; TR],
    ) {
        // SAFETY: the trait's contract is this function's.
        unsafe { scale(c, wb, ab, nr, acc) }
    }
}

/// One token group's activations of one super-block, ready for the B tiles.
#[repr(C, align(64))]
pub(super) struct ActBlock {
    /// Line `q`: dword `q` (elements `4q..4q + 4`) of each of the 16 tokens.
    q: [[i32; TG]; QK_K / 4],
    /// Line `j` (the minimum product's B row of sub-block `j`): per token the bf16 pair
    /// `S_j - r`, `r` (`r = S_j & 31`), one in each half of the dword.
    sums: [[u32; TG]; SUBS],
    /// `da` per token (0 for the group's missing tokens).
    d: [f32; TG],
}

/// One row block's super-block, unpacked for the A tiles.
#[repr(C, align(64))]
pub(super) struct WeightBlock {
    /// Row `n`: the quants as bytes, sub-block `j` at [`sub_offset`]`(j)`.
    q: [[u8; QK_K]; TR],
    /// Row `n` of the minimum product's A tile: `m_j` as bf16, twice, for each `j`.
    mins: [[u32; SUBS]; TR],
    /// `d * sc_j` per row.
    scale: [[f32; SUBS]; TR],
    /// `dmin` per row.
    dmin: [f32; TR],
}

/// The int32 C tiles of one step (sub-block `j`, weight row `n` at `[j][n]`) and the
/// minimum product's f32 tile (`M[n, t]` at `min[n][t]`).
#[repr(C, align(64))]
pub(super) struct CTiles {
    subs: [[[i32; TG]; TR]; SUBS],
    min: [[f32; TG]; TR],
}

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
                _mm512_store_si512(
                    (*dst).sums[2 * quarter + half].as_mut_ptr().cast(),
                    bf16_split(sum),
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

/// The bf16 pairs `(s - r, r)`, `r = s & 31`, of 16 sums `s` (int32, |s| <= 4096): both
/// are integers with at most 7 significant bits, so their f32 forms end in 16 zero bits
/// and the upper halves are the exact bf16 values; `s - r` goes to the upper half of the
/// dword, `r` to the lower (the A operand's pair holds `m_j` twice, so either order works).
#[inline]
#[target_feature(enable = "avx512f,avx512bw")]
fn bf16_split(s: __m512i) -> __m512i {
    let r = _mm512_and_si512(s, _mm512_set1_epi32(31));
    let high = _mm512_castps_si512(_mm512_cvtepi32_ps(_mm512_sub_epi32(s, r)));
    let low = _mm512_castps_si512(_mm512_cvtepi32_ps(r));
    _mm512_or_si512(
        _mm512_and_si512(high, _mm512_set1_epi32(0xFFFF_0000u32 as i32)),
        _mm512_srli_epi32::<16>(low),
    )
}

/// Unpacks `nr` weight rows' Q4_K block (`w`, rows `stride` bytes apart) into `dst`,
/// prefetching row `n` of the `ahead_nr` rows' block at `ahead` with row `n`. Rows go in
/// pairs: one 512-bit pass decodes both rows' scales and minimums (`scales_mins_of` takes
/// two rows' scale bytes, one per 256-bit half) and converts and stores them, where one
/// row per pass left half of each vector empty.
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
    let upper = _mm512_set1_epi32(0xFFFF_0000u32 as i32);
    // Lanes 0..8 from lane 0 (the first row's d), lanes 8..16 from lane 2 (the second's).
    let d_lanes = _mm512_set_epi32(2, 2, 2, 2, 2, 2, 2, 2, 0, 0, 0, 0, 0, 0, 0, 0);
    for n in nr..ahead_nr {
        // SAFETY: block n of `ahead` is inside the weights (caller).
        unsafe { prefetch_block(ahead.add(n * stride), PerSub::W_BLOCK) };
    }
    for n in (0..nr).step_by(2) {
        // The pair's second row, or the first again for an odd last row (its results
        // then go to the vectors' upper halves, which are not stored).
        let pair = n + 1 < nr;
        let n1 = if pair { n + 1 } else { n };
        for r in [n, n1]
            .into_iter()
            .filter(|&r| r < ahead_nr)
            .take(1 + usize::from(pair))
        {
            // SAFETY: as above.
            unsafe { prefetch_block(ahead.add(r * stride), PerSub::W_BLOCK) };
        }
        // SAFETY: blocks n and n1 are readable (caller): d, dmin at 0..4, scales at 4..16
        // (and 4 quant bytes past them are read with them), quants at 16..144; rows n and
        // n1 of `dst`, and for a pair the 64 bytes of `scale` and `mins` from row n (n is
        // even, so they are 64-byte aligned).
        unsafe {
            let (b0, b1) = (w.add(n * stride), w.add(n1 * stride));
            let dd = _mm_cvtph_ps(_mm_set_epi32(
                0,
                0,
                b1.cast::<i32>().read_unaligned(),
                b0.cast::<i32>().read_unaligned(),
            ));
            let d = _mm512_permutexvar_ps(d_lanes, _mm512_castps128_ps512(dd));
            let dd: [f32; 4] = std::mem::transmute(dd);
            let bytes = _mm512_inserti64x4::<1>(
                _mm512_castsi256_si512(_mm256_broadcastsi128_si256(_mm_loadu_si128(
                    b0.add(4).cast(),
                ))),
                _mm256_broadcastsi128_si256(_mm_loadu_si128(b1.add(4).cast())),
            );
            let (sc, m) = scales_mins_of(bytes);
            let scale = _mm512_mul_ps(_mm512_cvtepi32_ps(sc), d);
            // m_j < 64: its f32 form's upper half is its exact bf16; twice per dword.
            let m = _mm512_castps_si512(_mm512_cvtepi32_ps(m));
            let mins = _mm512_or_si512(_mm512_and_si512(m, upper), _mm512_srli_epi32::<16>(m));
            (*dst).dmin[n] = dd[1];
            if pair {
                _mm512_store_ps((*dst).scale[n].as_mut_ptr(), scale);
                _mm512_store_si512((*dst).mins[n].as_mut_ptr().cast(), mins);
                (*dst).dmin[n1] = dd[3];
            } else {
                _mm256_store_ps((*dst).scale[n].as_mut_ptr(), _mm512_castps512_ps256(scale));
                _mm256_store_si256(
                    (*dst).mins[n].as_mut_ptr().cast(),
                    _mm512_castsi512_si256(mins),
                );
            }
            for (r, b) in [(n, b0), (n1, b1)].into_iter().take(1 + usize::from(pair)) {
                let q = (*dst).q[r].as_mut_ptr();
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
}

/// The eight sub-blocks' int32 products and the minimum product of one row block and
/// token group into `c`.
///
/// # Safety
/// The tile configuration of [`gemm_amx`] is loaded (A and C rows = the rows unpacked
/// in `wb`); `wb`, `ab` are initialised and `c` writable.
#[inline]
unsafe fn products(wb: *const WeightBlock, ab: *const ActBlock, c: *mut CTiles) {
    // SAFETY (whole body): every address is inside `wb` (A rows of 256 bytes, 32 read
    // from sub_offset(j) <= 224; the minimum A rows of 32 bytes), `ab` (8 lines of 64
    // bytes from line 8j; the 8 minimum B lines) or `c` (one 16 x 64-byte tile per
    // sub-block and the minimum's); AMX state is configured (caller): tile 4 is nr rows
    // of 32 bytes (16 bf16, K = 16), tile 6 8 lines of 64 bytes (8 bf16 pairs of 16
    // tokens), tile 0 nr rows of 16 f32.
    unsafe {
        tile_zero!(0);
        tile_load!(4, (*wb).mins.as_ptr().cast::<u8>(), 32usize);
        tile_load!(6, (*ab).sums.as_ptr().cast::<u8>(), 64usize);
        tile_dp_bf16!(0, 4, 6);
        tile_store!(0, (*c).min.as_mut_ptr().cast::<u8>(), 64usize);
        let a = (*wb).q.as_ptr().cast::<u8>();
        let b = (*ab).q.as_ptr().cast::<u8>();
        let c = (*c).subs.as_mut_ptr().cast::<u8>();
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
/// `acc[n] += da * (sum_j d sc_j[n] I_j[n] - dmin[n] M[n])`.
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
        for (n, acc) in acc.iter_mut().enumerate().take(nr) {
            // Two independent sums (even and odd sub-blocks): a row's dependency chain is
            // 4 FMAs and an add instead of 8 FMAs, so less of the epilogue waits on
            // latency while the AMX products of the next step hold the reorder window.
            let mut ps = [_mm512_setzero_ps(); 2];
            for j in 0..SUBS {
                let ci = _mm512_load_si512((*c).subs[j][n].as_ptr().cast());
                ps[j % 2] = _mm512_fmadd_ps(
                    _mm512_cvtepi32_ps(ci),
                    _mm512_set1_ps((*wb).scale[n][j]),
                    ps[j % 2],
                );
            }
            let v = _mm512_fnmadd_ps(
                _mm512_load_ps((*c).min[n].as_ptr()),
                _mm512_set1_ps((*wb).dmin[n]),
                _mm512_add_ps(ps[0], ps[1]),
            );
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
    use crate::quant::{self, QType};
    use crate::util::SplitMix64;

    /// Half `h` of a dword as the f32 value of its bf16.
    fn bf16(v: u32, h: usize) -> f32 {
        f32::from_bits((v >> (16 * h)) << 16)
    }

    /// What `products` computes, in scalar code: `tdpbusd` per sub-block and the
    /// `tdpbf16ps` minimum product, for rows `..nr`. Also checks that the minimum
    /// product's f32 sum is the exact integer `sum_j m_j * S_j`.
    fn products_scalar(wb: &WeightBlock, ab: &ActBlock, nr: usize, c: &mut CTiles) {
        for n in 0..nr {
            for t in 0..TG {
                for j in 0..SUBS {
                    c.subs[j][n][t] = (0..32)
                        .map(|i| {
                            let a = (ab.q[8 * j + i / 4][t] >> (8 * (i % 4))) as u8 as i8;
                            wb.q[n][sub_offset(j) + i] as i32 * a as i32
                        })
                        .sum();
                }
                let (mut f, mut exact) = (0f32, 0i64);
                for j in 0..SUBS {
                    for h in 0..2 {
                        let (x, y) = (bf16(wb.mins[n][j], h), bf16(ab.sums[j][t], h));
                        f += x * y;
                        exact += x as i64 * y as i64;
                    }
                }
                assert_eq!(f as i64, exact, "minimum product of row {n} token {t}");
                c.min[n][t] = f;
            }
        }
    }

    #[test]
    fn vector_stages_match_the_reference_dot() {
        if !(std::arch::is_x86_feature_detected!("avx512vnni")
            && std::arch::is_x86_feature_detected!("avx512bw")
            && std::arch::is_x86_feature_detected!("avx512dq")
            && std::arch::is_x86_feature_detected!("avx512vl")
            && std::arch::is_x86_feature_detected!("f16c"))
        {
            eprintln!("skipped: no AVX512-VNNI");
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
            let mut af = vec![0f32; TG * QK_K];
            rng.fill_normal(&mut af, 1.0);
            // One token at the Q8_K extremes (a quant of -128 in every sub-block).
            af[..QK_K].iter_mut().for_each(|v| *v = -(v.abs() + 1.0));
            let mut a = vec![0u8; TG * arow];
            quant::quantize(QType::Q8_K, &af, &mut a).unwrap();
            // SAFETY: plain integer and float arrays: all-zero bytes are valid values.
            let (mut wb, mut ab, mut c) = unsafe {
                (
                    Box::<WeightBlock>::new(std::mem::zeroed()),
                    Box::<ActBlock>::new(std::mem::zeroed()),
                    Box::<CTiles>::new(std::mem::zeroed()),
                )
            };
            c.min.iter_mut().for_each(|r| r.fill(f32::NAN));
            // SAFETY: AVX512F was detected.
            let mut acc = unsafe { [_mm512_set1_ps(f32::NAN); TR] };
            // SAFETY: as above.
            acc[..nr].fill(unsafe { _mm512_setzero_ps() });
            // SAFETY: AVX512-VNNI and F16C were detected; `nr` weight rows and `n_tok`
            // activation rows of one block each are readable; the buffers are writable.
            unsafe {
                transpose_acts(a.as_ptr(), arow, n_tok, &mut *ab);
                unpack_weights(w.as_ptr(), wrow, nr, &mut *wb, std::ptr::null(), 0);
                products_scalar(&wb, &ab, nr, &mut c);
                scale(&*c, &*wb, &*ab, nr, &mut acc);
            }
            let mut deq_w = vec![0f32; QK_K];
            let mut deq_a = vec![0f32; QK_K];
            for n in 0..TR {
                // SAFETY: an __m512 is 16 f32.
                let got: [f32; TG] = unsafe { std::mem::transmute(acc[n]) };
                if n >= nr {
                    assert!(got.iter().all(|v| v.is_nan()), "row {n} past nr written");
                    continue;
                }
                let wn = &w[n * wrow..(n + 1) * wrow];
                quant::dequantize(QType::Q4_K, wn, &mut deq_w).unwrap();
                for (t, &g) in got.iter().enumerate() {
                    if t >= n_tok {
                        assert_eq!(g, 0.0, "missing token {t} of row {n}");
                        continue;
                    }
                    let at = &a[t * arow..(t + 1) * arow];
                    let want = quant::vec_dot(QType::Q4_K, QK_K, wn, at).unwrap();
                    quant::dequantize(QType::Q8_K, at, &mut deq_a).unwrap();
                    // f32 rounding of sums whose terms reach sum |w a|.
                    let mag: f32 = deq_w.iter().zip(&deq_a).map(|(x, y)| (x * y).abs()).sum();
                    assert!(
                        (g - want).abs() <= 1e-5 * mag,
                        "rows {nr} tokens {n_tok}: row {n} token {t}: {g} vs {want} (|w a| {mag})"
                    );
                }
            }
        }
    }
}
