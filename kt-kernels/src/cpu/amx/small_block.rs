//! The step kernel of the small-block formats (32 elements a block, an f16 scale first:
//! Q8_0, Q4_0, Q5_0 against Q8_0 activations; Q4_1, Q5_1, with an f16 minimum, against
//! Q8_1) in the [`kquant`](super::kquant) pipeline: a step is [`BLOCKS`] blocks (128
//! elements, so V2-Lite's 1408-long rows are 11 steps).
//!
//! A block's dot is `dw * da * I` with `I` the int8 dot of its 32 quants (plus `m * s`, the
//! weights' minimum times the activations' stored `d * sum(q)`, for Q4_1 / Q5_1), and each
//! weight row and each token has its own scale per block, so each block gets its own C
//! tile (`tdpbssd` with K = 32, weights signed as unpacked, activations signed) and the f32
//! epilogue adds `cvt(I) * (dw * da)` (and `m * s`) into the token group's accumulators,
//! which stay in registers for the whole row block (the pipeline's `acc[n]`: row `n`, 16
//! tokens).
//!
//! Operands as in the K-quant kernels: the weights are the A operand, unpacked once per
//! row block and step into 16 rows of 128 signed bytes (shared by the token groups of a
//! token block); the activations the B operand, transposed once per token group and step
//! (by the matmul driver once per call). Before this kernel Q8_0 took its own loop with the
//! weights transposed into B tiles per 32-row block and 64 accumulators spilled to the
//! stack each block; Q4_0 and Q5_0 had no AMX kernel.
//!
//! Tiles: 0..4 the C tiles of the four blocks, 4 and 5 the A tiles, 6 and 7 the B tiles.

use std::arch::x86_64::*;
use std::marker::PhantomData;

use super::blocks::transpose16;
use super::kquant::{forward_stages, prefetch_block, StepKernel, TG, TR};
use super::tiles::{tile_dp_i8, tile_load, tile_store, tile_zero, TileConfig};

/// Elements of a block.
const QK: usize = 32;
/// Blocks per step.
pub(super) const BLOCKS: usize = 4;

/// Bytes of an activation block: Q8_0 (f16 `d`, 32 int8), or with `min` Q8_1 (`d`, `s`).
const fn act_block(min: bool) -> usize {
    if min {
        36
    } else {
        34
    }
}

/// A weight format of 32-element blocks that start with their f16 scale `d`, a weight
/// being `d * q` with `q` a small signed integer, or with [`MIN`](Self::MIN) `d * q + m`
/// (`m` the block's second f16).
///
/// # Safety
/// `quants` reads only the block it is given.
pub(super) unsafe trait BlockFormat {
    /// Bytes of a block.
    const BLOCK: usize;
    /// Whether blocks carry the minimum `m` (against Q8_1 activations, not Q8_0).
    const MIN: bool = false;

    /// The block's 32 quants `q` as signed bytes, in element order.
    ///
    /// # Safety
    /// A whole block is readable at `b`; AVX512 F/BW/VL.
    unsafe fn quants(b: *const u8) -> __m256i;
}

/// The step kernel of block format `F`.
pub(super) struct SmallBlock<F>(PhantomData<F>);

/// One token group's activations of one step, ready for the B tiles.
#[repr(C, align(64))]
pub(super) struct ActBlock {
    /// Line `8j + q`: dword `q` (elements `4q..4q + 4`) of block `j` of each of the 16
    /// tokens.
    q: [[i32; TG]; BLOCKS * QK / 4],
    /// `da` of block `j` per token (0 for the group's missing tokens).
    d: [[f32; TG]; BLOCKS],
    /// Q8_1's `s` of block `j` per token (0 for missing tokens; not written for Q8_0).
    s: [[f32; TG]; BLOCKS],
}

/// One row block's step, unpacked for the A tiles.
#[repr(C, align(64))]
pub(super) struct WeightBlock {
    /// Row `n`: the quants of the step's blocks, block `j` at `32j`.
    q: [[i8; BLOCKS * QK]; TR],
    /// `dw` of block `j` per row.
    d: [[f32; BLOCKS]; TR],
    /// The minimum `m` of block `j` per row (formats with [`BlockFormat::MIN`] only).
    m: [[f32; BLOCKS]; TR],
}

/// The four int32 C tiles of one step: block `j`, weight row `n` at `[j][n]`.
#[repr(C, align(64))]
pub(super) struct CTiles([[[i32; TG]; TR]; BLOCKS]);

// SAFETY: each stage touches only the records and rows it is given (see the functions'
// contracts); `products` uses tiles 0..8 as `config` sets them up.
unsafe impl<F: BlockFormat> StepKernel for SmallBlock<F> {
    type Acts = ActBlock;
    type Weights = WeightBlock;
    type Products = CTiles;
    const W_BLOCK: usize = BLOCKS * F::BLOCK;
    const ELEMS: usize = BLOCKS * QK;
    const A_BYTES: usize = BLOCKS * act_block(F::MIN);

    fn config(nr: usize) -> TileConfig {
        let mut c = TileConfig::new();
        for tile in 0..4 {
            c.set(tile, nr, 64);
        }
        c.set(4, nr, QK);
        c.set(5, nr, QK);
        c.set(6, QK / 4, 64);
        c.set(7, QK / 4, 64);
        c
    }

    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,f16c")]
    unsafe fn transpose_acts(a: *const u8, stride: usize, n: usize, dst: *mut ActBlock) {
        // SAFETY: the trait's contract is this function's.
        unsafe { transpose_acts(a, stride, n, F::MIN, dst) }
    }

    forward_stages!(
        unpack_prefetching: unpack_weights::<F>,
        products: products,
        scale: scale::<F>,
    );
}

/// Transposes one step of `n` (1..=16) tokens' Q8_0 rows, or Q8_1 rows with `min` (`a`:
/// the step's first block, rows `stride` bytes apart), into `dst`; missing tokens read as
/// zero.
///
/// # Safety
/// `n` rows of [`BLOCKS`] whole blocks are readable at `a`; `dst` is writable; AVX512
/// F/BW, F16C.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,f16c")]
unsafe fn transpose_acts(a: *const u8, stride: usize, n: usize, min: bool, dst: *mut ActBlock) {
    let block = act_block(min);
    // The f16 at byte `at` of each token's row, as f32 into the 16 floats at `out`.
    let f16_line = |at: usize, out: *mut f32| {
        let mut h = [0u16; TG];
        for (tok, h) in h.iter_mut().enumerate().take(n) {
            // SAFETY: bytes at..at + 2 of a block of row tok < n (the calls below).
            *h = unsafe { a.add(tok * stride + at).cast::<u16>().read_unaligned() };
        }
        let v = _mm512_cvtph_ps(_mm256_loadu_si256(h.as_ptr().cast()));
        // SAFETY: `out` is 16 writable, 64-byte aligned f32 (the calls below).
        unsafe { _mm512_store_ps(out, v) };
    };
    // SAFETY (whole body): blocks j < BLOCKS of rows tok < n are readable (caller): `d` at
    // `block * j`, Q8_1's `s` 2 bytes on, the quants in the block's last 32 bytes; `dst` is
    // a valid, 64-byte aligned ActBlock.
    unsafe {
        for pair in 0..BLOCKS / 2 {
            let mut r = [_mm512_setzero_si512(); TG];
            for (tok, v) in r.iter_mut().enumerate().take(n) {
                let b = a.add(tok * stride + (2 * pair + 1) * block - QK);
                let lo = _mm256_loadu_si256(b.cast());
                let hi = _mm256_loadu_si256(b.add(block).cast());
                *v = _mm512_inserti64x4::<1>(_mm512_castsi256_si512(lo), hi);
            }
            let r = transpose16(&r);
            let q = (*dst).q.as_mut_ptr().add(16 * pair);
            for (i, v) in r.iter().enumerate() {
                _mm512_store_si512(q.add(i).cast(), *v);
            }
        }
        for j in 0..BLOCKS {
            f16_line(j * block, (*dst).d[j].as_mut_ptr());
            if min {
                f16_line(j * block + 2, (*dst).s[j].as_mut_ptr());
            }
        }
    }
}

/// Unpacks `nr` weight rows' step (`w`, rows `stride` bytes apart) into `dst`,
/// prefetching row `n` of the `ahead_nr` rows' step at `ahead` with row `n`.
///
/// # Safety
/// `nr` (<= 16) rows of [`BLOCKS`] blocks are readable at `w`; `dst` is writable; the
/// `ahead_nr` rows' blocks at `ahead` lie inside the weights.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,f16c")]
unsafe fn unpack_weights<F: BlockFormat>(
    w: *const u8,
    stride: usize,
    nr: usize,
    dst: *mut WeightBlock,
    ahead: *const u8,
    ahead_nr: usize,
) {
    let step = BLOCKS * F::BLOCK;
    for n in nr..ahead_nr {
        // SAFETY: row n's step at `ahead` is inside the weights (caller).
        unsafe { prefetch_block(ahead.add(n * stride), step) };
    }
    for n in 0..nr {
        // SAFETY (whole loop body): as above for `ahead`; blocks j < BLOCKS of row n are
        // readable (caller); row n of `dst` is writable, its quants 64-byte aligned.
        unsafe {
            if n < ahead_nr {
                prefetch_block(ahead.add(n * stride), step);
            }
            let b = w.add(n * stride);
            let q = (*dst).q[n].as_mut_ptr();
            // d of the four blocks in words 0..4, m (formats with minimums) in 4..8.
            let mut h = [0u16; 2 * BLOCKS];
            for j in 0..BLOCKS {
                let blk = b.add(j * F::BLOCK);
                _mm256_store_si256(q.add(QK * j).cast(), F::quants(blk));
                h[j] = blk.cast::<u16>().read_unaligned();
                if F::MIN {
                    h[BLOCKS + j] = blk.add(2).cast::<u16>().read_unaligned();
                }
            }
            let dm = _mm256_cvtph_ps(_mm_loadu_si128(h.as_ptr().cast()));
            _mm_store_ps((*dst).d[n].as_mut_ptr(), _mm256_castps256_ps128(dm));
            if F::MIN {
                _mm_store_ps((*dst).m[n].as_mut_ptr(), _mm256_extractf128_ps::<1>(dm));
            }
        }
    }
}

/// The four blocks' int32 products of one row block and token group into `c`.
///
/// # Safety
/// The tile configuration of `config` is loaded (A and C rows = the rows unpacked in
/// `wb`); `wb`, `ab` are initialised and `c` writable.
#[inline]
unsafe fn products(wb: *const WeightBlock, ab: *const ActBlock, c: *mut CTiles) {
    // SAFETY (whole body): every address is inside `wb` (A rows of 128 bytes, 32 read from
    // 32j), `ab` (8 lines of 64 bytes from line 8j) or `c` (one 16 x 64-byte tile per
    // block); AMX state is configured (caller).
    unsafe {
        let a = (*wb).q.as_ptr().cast::<u8>();
        let b = (*ab).q.as_ptr().cast::<u8>();
        let c = (*c).0.as_mut_ptr().cast::<u8>();
        let (sa, sb, sc) = (BLOCKS * QK, 64usize, 64usize);
        let al = |j: usize| a.add(QK * j);
        let bl = |j: usize| b.add(512 * j);
        let cl = |j: usize| c.add(1024 * j);
        tile_zero!(0);
        tile_zero!(1);
        tile_zero!(2);
        tile_zero!(3);
        tile_load!(4, al(0), sa);
        tile_load!(6, bl(0), sb);
        tile_dp_i8!(0, 4, 6);
        tile_load!(5, al(1), sa);
        tile_load!(7, bl(1), sb);
        tile_dp_i8!(1, 5, 7);
        tile_load!(4, al(2), sa);
        tile_load!(6, bl(2), sb);
        tile_dp_i8!(2, 4, 6);
        tile_load!(5, al(3), sa);
        tile_load!(7, bl(3), sb);
        tile_dp_i8!(3, 5, 7);
        tile_store!(0, cl(0), sc);
        tile_store!(1, cl(1), sc);
        tile_store!(2, cl(2), sc);
        tile_store!(3, cl(3), sc);
    }
}

/// Adds one step's scaled products to the accumulators of its token group:
/// `acc[n] += sum_j cvt(I_j[n]) * (dw_j[n] * da_j)` (`+ m_j[n] * s_j` with minimums).
///
/// # Safety
/// `c` holds the step's products for `nr` rows, `wb` and `ab` its unpacked weights and
/// activations.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq")]
unsafe fn scale<F: BlockFormat>(
    c: *const CTiles,
    wb: *const WeightBlock,
    ab: *const ActBlock,
    nr: usize,
    acc: &mut [__m512; TR],
) {
    // SAFETY (whole body): rows n < nr of the initialised buffers (caller).
    unsafe {
        let da: [__m512; BLOCKS] = std::array::from_fn(|j| _mm512_load_ps((*ab).d[j].as_ptr()));
        // Written by the transpose only for formats with a minimum.
        let sa: [__m512; BLOCKS] = std::array::from_fn(|j| {
            if F::MIN {
                _mm512_load_ps((*ab).s[j].as_ptr())
            } else {
                _mm512_setzero_ps()
            }
        });
        for (n, acc) in acc.iter_mut().enumerate().take(nr) {
            // Two chains (even and odd blocks), so a row waits on two FMAs, not four.
            let mut part = [*acc, _mm512_setzero_ps()];
            for (j, &da) in da.iter().enumerate() {
                let ci = _mm512_load_si512((*c).0[j][n].as_ptr().cast());
                let s = _mm512_mul_ps(da, _mm512_set1_ps((*wb).d[n][j]));
                let p = &mut part[j % 2];
                *p = _mm512_fmadd_ps(_mm512_cvtepi32_ps(ci), s, *p);
                if F::MIN {
                    *p = _mm512_fmadd_ps(sa[j], _mm512_set1_ps((*wb).m[n][j]), *p);
                }
            }
            *acc = _mm512_add_ps(part[0], part[1]);
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
    use crate::cpu::amx::nibbles::Signed;
    use crate::cpu::amx::stage_check;
    use crate::cpu::avx512::nibbles::{Q4_0, Q4_1, Q5_0, Q5_1};
    use crate::quant::{self, QType};
    use crate::util::SplitMix64;

    const K: usize = BLOCKS * QK;

    /// What `products` computes with `tdpbssd`, in scalar code, for rows `..nr`.
    fn products_scalar(wb: &WeightBlock, ab: &ActBlock, nr: usize, c: &mut CTiles) {
        for n in 0..nr {
            for t in 0..TG {
                for j in 0..BLOCKS {
                    c.0[j][n][t] = (0..QK)
                        .map(|i| {
                            let a = (ab.q[8 * j + i / 4][t] >> (8 * (i % 4))) as u8 as i8;
                            wb.q[n][QK * j + i] as i32 * a as i32
                        })
                        .sum();
                }
            }
        }
    }

    fn check<F: BlockFormat>(qtype: QType) {
        let mut rng = SplitMix64::new(23);
        let act = qtype.vec_dot_type();
        let (wrow, arow) = (qtype.row_bytes(K).unwrap(), act.row_bytes(K).unwrap());
        for (nr, n_tok, spread) in [(16, 16, 1.0), (13, 11, 0.02), (1, 1, 30.0), (16, 5, 1.0)] {
            let mut wf = vec![0f32; TR * K];
            rng.fill_normal(&mut wf, spread);
            let mut w = vec![0u8; TR * wrow];
            quant::quantize(qtype, &wf, &mut w).unwrap();
            let mut af = vec![0f32; TG * K];
            rng.fill_normal(&mut af, 1.0);
            // Row 0 at the extremes: -127 / 127 quants in every block.
            af[..K]
                .iter_mut()
                .for_each(|v| *v = v.signum() * (v.abs() + 1.0));
            let mut a = vec![0u8; TG * arow];
            quant::quantize(act, &af, &mut a).unwrap();
            // SAFETY: the kernel's records are plain integer and float arrays.
            let (mut wb, mut ab, mut c) = unsafe { stage_check::zeroed_records::<SmallBlock<F>>() };
            let mut acc = stage_check::poisoned_acc(nr);
            // SAFETY: AVX512-VNNI and F16C were detected; `nr` weight rows and `n_tok`
            // activation rows of one step each are readable; the buffers are writable.
            unsafe {
                transpose_acts(a.as_ptr(), arow, n_tok, F::MIN, &mut *ab);
                unpack_weights::<F>(w.as_ptr(), wrow, nr, &mut *wb, std::ptr::null(), 0);
                products_scalar(&wb, &ab, nr, &mut c);
                scale::<F>(&*c, &*wb, &*ab, nr, &mut acc);
            }
            stage_check::check_rows(
                qtype,
                act,
                K,
                &acc,
                nr,
                n_tok,
                &w,
                &a,
                &format!("{qtype} rows {nr} tokens {n_tok}"),
            );
        }
    }

    #[test]
    fn q8_0_vector_stages_match_the_reference_dot() {
        if stage_check::can_run() {
            check::<crate::cpu::amx::q8_0::Q8>(QType::Q8_0);
        }
    }

    #[test]
    fn nibble_vector_stages_match_the_reference_dot() {
        if stage_check::can_run() {
            check::<Signed<Q4_0>>(QType::Q4_0);
            check::<Signed<Q5_0>>(QType::Q5_0);
            check::<Signed<Q4_1>>(QType::Q4_1);
            check::<Signed<Q5_1>>(QType::Q5_1);
        }
    }
}
