//! The one microkernel of the K-quants (Q2_K ... Q6_K against Q8_K activations).
//!
//! Every K-quant super-block is 8 chunks of 32 weights that, once unpacked, are unsigned
//! bytes `q` with a signed 16-bit scale per pair of products, and a weight is
//! `d * scale * q - dmin * min` (Q2_K, Q4_K, Q5_K) or `d * scale * (q - offset)`
//! (Q3_K, Q6_K). So one super-block of a (row, token) pair costs, per 32 weights, one
//! `maddubs` (u8 x i8 pair sums), one `madd` with the scales (i16 -> i32) and one add,
//! and the `min` / `offset` term comes from Q8_K's `bsums` (sums of 16 activations) with
//! one `madd` per super-block. Per super-block the int sums of all pairs of the register
//! tile are reduced into the 8 lanes of one vector and scaled with one cvt + fma. A format
//! may decode the 8 rows of the one-token tile together, its `bsums` term included
//! ([`KQuant::decode8`]; Q4_K).
//!
//! A format only says how to unpack ([`KQuant`]); the register tiling is here, once.

use std::arch::x86_64::*;
use std::marker::PhantomData;

use super::tile::{
    fma_ggml_lanes, hsum8_epi32, prefetch_rows_ahead, spread_rows, spread_tokens, store_ggml_lanes,
    store_pairs, Microkernel, MAX_PAIRS,
};
use crate::cpu::dispatch::GemmTile;
use crate::cpu::matmul::GEMV_MAX_TOKENS;
use crate::quant::QK_K;

/// Bytes of a Q8_K activation block and the offsets of its fields
/// (`d: f32, qs: [i8; 256], bsums: [i16; 16]`).
pub(crate) const ACT_BLOCK: usize = 292;
pub(crate) const ACT_QS: usize = 4;
pub(crate) const ACT_BSUMS: usize = 260;

/// The f32 order of a K-quant's dot products: which roundings happen where. The int sums
/// of a super-block are exact in every order; llama.cpp's results depend on the rest.
pub(crate) enum Order {
    /// kt's own: one exact int sum per (row, token) pair and super-block, FMA'd with
    /// `d * da` into one f32, the minimum term FNMADD'd into the same f32 (Q2_K, Q3_K).
    OneSum,
    /// ggml's REPACK Q4_K kernels (`ggml_gemv/gemm_q4_K_8x8_q8_K`, llama.cpp's Q4_K on
    /// x86): the block's int sum FMA'd with `d * da` into one f32 and the minimum term's
    /// int sum with `dmin * da` into another; the second is subtracted at the end.
    Repack,
    /// ggml's AVX2 `vec_dot` (Q5_K, Q6_K; modelled by [`crate::cpu::scalar::ggml_order`]):
    /// every pair keeps its block's int sums in 8 lanes, each converted and FMA'd into an
    /// 8-lane f32 accumulator, the lanes added by `hsum_float_8` at the end; a minimum
    /// term goes into one f32 of its own (`fma(-dmin * da, mins, summs)`).
    GgmlLanes,
}

/// How a K-quant super-block unpacks for the shared microkernel.
pub(crate) trait KQuant {
    const BLOCK_BYTES: usize;
    /// True when the term taken from `bsums` is an offset of the quants scaled by `d`
    /// (Q3_K, Q6_K): it is then subtracted from the int sums directly. False when it is
    /// a minimum with its own scale `dmin` (Q2_K, Q4_K, Q5_K).
    const OFFSET_BY_D: bool;
    /// The integer sums of [`KQuant::chunk`]'s products are `2^SUM_SHIFT` times the true
    /// ones (quants left where they lie in their byte, the scales widened to one common
    /// factor: fewer unpacking shifts). Every product carries the factor, so an
    /// arithmetic shift of a super-block's sum removes it exactly. Only with
    /// `OFFSET_BY_D` false (the `bsums` term is not scaled).
    const SUM_SHIFT: i32 = 0;
    /// The f32 order the super-block sums are scaled and added in.
    const ORDER: Order = Order::OneSum;
    /// A super-block's decoded sub-block scales, in whatever form [`KQuant::chunk`] wants.
    type Scales: Copy;

    /// Decodes the sub-block scales of the super-block at `x`.
    ///
    /// # Safety
    /// `x` points to a whole block; the CPU has AVX2.
    unsafe fn decode(x: *const u8) -> Self::Scales;

    /// The 16 i16 multipliers of the 16 `bsums` of the super-block at `x`: the minimum,
    /// or the offset times the scale, of the 16-element group each `bsums` entry covers.
    ///
    /// # Safety
    /// As [`KQuant::decode`].
    unsafe fn bsums_multipliers(x: *const u8) -> __m256i;

    /// Chunk `J` (elements `32J .. 32J + 32`): the 32 unsigned quants (the first,
    /// unsigned operand of `maddubs`) and the 16 i16 scales of the 16 pair sums
    /// `maddubs` makes of them.
    ///
    /// # Safety
    /// As [`KQuant::decode`]; `J < 8`.
    unsafe fn chunk<const J: usize>(x: *const u8, s: &Self::Scales) -> (__m256i, __m256i);

    /// `d` (low 16 bits) and `dmin` (high 16 bits, 0 when [`KQuant::OFFSET_BY_D`]) of
    /// the block as f16 bits.
    ///
    /// # Safety
    /// As [`KQuant::decode`].
    unsafe fn d_dmin_bits(x: *const u8) -> u32;

    /// [`Microkernel::GEMV_ROWS`] of the format.
    const GEMV_ROWS: usize = 8;

    /// Tiles of up to 4 rows leave the decoded scales to the optimiser instead of reloading
    /// them per chunk through `opaque` ([`chunk_products`]): with 4 rows there are registers
    /// for them beside the 4 sums (Q2_K, Q6_K; Q5_K's scales, broadcast from memory, measured
    /// 10-16% slower so).
    const SCALES_IN_REGISTERS: bool = false;

    /// [`KQuant::decode8`] is the format's own: the one-token GEMV tile (8 rows) decodes its
    /// rows together. Only with `OFFSET_BY_D` false.
    const JOINT8: bool = false;

    /// The decoded scales of the 8 rows at `w`, and each row's `bsums` term against the
    /// activation block at `a` (the sum of [`KQuant::bsums_multipliers`] times the block's
    /// `bsums`) in i32 lane `r` for row `r`. The default is the per-row path.
    ///
    /// # Safety
    /// As [`KQuant::decode`] for every `w[r]`; `a` points to a whole Q8_K block.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn decode8(w: &[*const u8; 8], a: *const u8) -> ([Self::Scales; 8], __m256i) {
        // SAFETY: the caller's contract; the activation block holds 16 i16 bsums at ACT_BSUMS.
        unsafe {
            let bsums = load32(a.add(ACT_BSUMS));
            let m: [__m256i; 8] =
                std::array::from_fn(|r| _mm256_madd_epi16(Self::bsums_multipliers(w[r]), bsums));
            (std::array::from_fn(|r| Self::decode(w[r])), hsum8_epi32(&m))
        }
    }
}

/// Scales of 16-element sub-blocks (Q2_K, Q3_K, Q6_K) prepared for [`scale_16`]: the
/// 16 scales as i16, `[s0..s8 | s0..s8]` and `[s8..s16 | s8..s16]` (a shuffle cannot
/// cross the 128-bit halves, so each half holds the whole group).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn scales_16(sc: __m128i, signed: bool) -> [__m256i; 2] {
    let (lo, hi) = (_mm_unpacklo_epi64(sc, sc), _mm_unpackhi_epi64(sc, sc));
    if signed {
        [_mm256_cvtepi8_epi16(lo), _mm256_cvtepi8_epi16(hi)]
    } else {
        [_mm256_cvtepu8_epi16(lo), _mm256_cvtepu8_epi16(hi)]
    }
}

/// `vpshufb` controls of [`scale_16`]: chunk `J` takes word `2J % 8` into the low half
/// and word `(2J + 1) % 8` into the high half.
static SCALE_16_PICK: [[u8; 32]; 8] = {
    let mut t = [[0u8; 32]; 8];
    let mut j = 0;
    while j < 8 {
        let (w0, w1) = ((2 * j % 8) as u8, ((2 * j + 1) % 8) as u8);
        let mut b = 0;
        while b < 16 {
            t[j][b] = 2 * w0 + (b % 2) as u8;
            t[j][16 + b] = 2 * w1 + (b % 2) as u8;
            b += 1;
        }
        j += 1;
    }
    t
};

/// The scale vector of chunk `J` of a 16-element-sub-block format: the chunk covers
/// sub-blocks `2J` and `2J + 1`, whose products are the low and high 8 pair sums of
/// `maddubs`, so the result is `[s(2J) x 8 | s(2J + 1) x 8]`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn scale_16<const J: usize>(src: &[__m256i; 2]) -> __m256i {
    // SAFETY: SCALE_16_PICK[J] is 32 readable bytes (J < 8).
    let pick = unsafe { load32(SCALE_16_PICK[J].as_ptr()) };
    _mm256_shuffle_epi8(src[J / 4], pick)
}

/// The [`Microkernel`] of a K-quant.
pub(super) struct KQuantKernel<K>(PhantomData<K>);

/// Unaligned 32-byte load.
///
/// # Safety
/// `p .. p + 32` is readable.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn load32(p: *const u8) -> __m256i {
    // SAFETY: the caller's contract; loadu has no alignment requirement.
    unsafe { _mm256_loadu_si256(p as *const __m256i) }
}

/// Unaligned u32 read.
///
/// # Safety
/// `p .. p + 4` is readable.
#[inline]
pub(super) unsafe fn read_u32(p: *const u8) -> u32 {
    // SAFETY: the caller's contract.
    unsafe { std::ptr::read_unaligned(p as *const u32) }
}

/// `acc + p` (i32 lanes) as one `vpaddd` the optimiser cannot reassociate. With a plain
/// add LLVM regroups the 8-chunk chain of adds into a tree, which keeps several chunks'
/// products alive at once and spills the accumulators of the register tile.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn accumulate(mut acc: __m256i, p: __m256i) -> __m256i {
    // SAFETY: a register-only AVX2 add (the CPU has AVX2 by this function's contract):
    // no memory, no stack, no flags.
    unsafe {
        std::arch::asm!(
            "vpaddd {acc}, {acc}, {p}",
            acc = inout(ymm_reg) acc,
            p = in(ymm_reg) p,
            options(pure, nomem, nostack, preserves_flags)
        )
    };
    acc
}

/// `p`, through an empty asm statement the optimiser cannot see through: loads from
/// the result are neither hoisted above it nor merged with loads from another call's
/// result. Costs no instruction.
#[inline]
pub(super) fn opaque<T>(mut p: *const T) -> *const T {
    // SAFETY: the template is empty: the pointer passes through a register unchanged
    // and nothing is read or written. Declared `readonly` (it could read through `p`)
    // so stores to the pointee stay before it, and not `pure`, so two calls are never
    // merged.
    unsafe {
        std::arch::asm!("/* {p} */", p = inout(reg) p, options(readonly, nostack, preserves_flags))
    };
    p
}

/// Adds the products of chunk `J` of every row with the same chunk of every token. The
/// RN activation vectors are loaded once and reused by the RM rows; a row's unpacked
/// chunk is reused by the RN tokens.
///
/// # Safety
/// Row `r`'s block is at `w0 + r * w_stride`, `a[t]` points to a whole activation
/// block; the CPU has AVX2.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn chunk_products<K: KQuant, const J: usize, const RM: usize, const RN: usize>(
    w0: *const u8,
    w_stride: usize,
    scales: &[K::Scales; RM],
    a: &[*const u8; RN],
    sumi: &mut [[__m256i; RN]; RM],
) {
    // SAFETY: the activation block holds 256 quants from ACT_QS; chunk J < 8.
    let load_act = |t: usize| unsafe { load32(a[t].add(ACT_QS + 32 * J)) };
    // Several rows share each token's vector: load it once. A single row (the 1 x RN
    // tiles, up to 8 tokens) uses each once: it is loaded at its use below, so it need
    // not occupy a register next to the 8 accumulators.
    let act: [__m256i; RN] = if RM > 1 {
        std::array::from_fn(load_act)
    } else {
        [_mm256_setzero_si256(); RN]
    };
    // Opaque to the optimiser: without this LLVM hoists every row's unpacked bytes and
    // scales out of the 8 chunks and merges the loads chunks share, keeps all of those
    // live in registers and spills the accumulators instead; with it, chunk J's weights
    // and scales are loaded right where they are used (from L1).
    let scales = scales as *const [K::Scales; RM];
    let (w0, scales) = (
        opaque(w0),
        if K::SCALES_IN_REGISTERS && RM <= 4 {
            scales
        } else {
            opaque(scales)
        },
    );
    for (r, row_sums) in sumi.iter_mut().enumerate() {
        // SAFETY: row r's block and decoded scales (the caller's contract).
        let (q, s) = unsafe { K::chunk::<J>(w0.add(r * w_stride), &(*scales)[r]) };
        for (t, sum) in row_sums.iter_mut().enumerate() {
            let x = if RM > 1 { act[t] } else { load_act(t) };
            let p = _mm256_madd_epi16(_mm256_maddubs_epi16(q, x), s);
            // Chunk 0 starts the sum (an add to the zeroed accumulator would stay: the
            // asm of `accumulate` hides the zero).
            *sum = if J == 0 { p } else { accumulate(*sum, p) };
        }
    }
}

/// `d * da` and `dmin * da` of every (row, token) pair of the register tile, in the
/// pair lanes `row * RN + token`.
///
/// # Safety
/// `w[r]` / `a[t]` point to whole blocks; the CPU has AVX2 and F16C.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn pair_scales<K: KQuant, const RM: usize, const RN: usize>(
    w: &[*const u8; RM],
    a: &[*const u8; RN],
) -> (__m256, __m256) {
    // SAFETY: every block starts with / holds its d (and dmin) as f16, the Q8_K block
    // starts with its f32 d.
    let bits = |r: usize| {
        if r < RM {
            unsafe { K::d_dmin_bits(w[r]) as i32 }
        } else {
            0
        }
    };
    let da = |t: usize| unsafe { std::ptr::read_unaligned(a[t.min(RN - 1)] as *const f32) };
    // [d0 dmin0 d1 dmin1 d2 dmin2 d3 dmin3] of rows 0..4 (and 4..8).
    let lo = _mm256_cvtph_ps(_mm_setr_epi32(bits(0), bits(1), bits(2), bits(3)));
    let (d, dmin) = if RM <= 4 {
        let i = |q: i32| 2 * (q / RN as i32);
        let idx = _mm256_setr_epi32(i(0), i(1), i(2), i(3), i(4), i(5), i(6), i(7));
        let one = _mm256_set1_epi32(1);
        (
            _mm256_permutevar8x32_ps(lo, idx),
            _mm256_permutevar8x32_ps(lo, _mm256_add_epi32(idx, one)),
        )
    } else {
        // 8 rows, one token: rows 0..4 from `lo`, 4..8 from `hi`.
        let hi = _mm256_cvtph_ps(_mm_setr_epi32(bits(4), bits(5), bits(6), bits(7)));
        let even = _mm256_setr_epi32(0, 2, 4, 6, 0, 2, 4, 6);
        let odd = _mm256_setr_epi32(1, 3, 5, 7, 1, 3, 5, 7);
        let pick = |idx| {
            _mm256_blend_ps::<0xF0>(
                _mm256_permutevar8x32_ps(lo, idx),
                _mm256_permutevar8x32_ps(hi, idx),
            )
        };
        (spread_rows::<RN>(pick(even)), spread_rows::<RN>(pick(odd)))
    };
    let da = if RN <= 4 {
        spread_tokens::<RN>(_mm256_castps128_ps256(_mm_setr_ps(
            da(0),
            da(1),
            da(2),
            da(3),
        )))
    } else {
        // A 1 x RN tile: the pair lane is the token.
        _mm256_setr_ps(da(0), da(1), da(2), da(3), da(4), da(5), da(6), da(7))
    };
    (_mm256_mul_ps(d, da), _mm256_mul_ps(dmin, da))
}

impl<K: KQuant> Microkernel for KQuantKernel<K> {
    // `chunk_products` loads each token's activations where a row's product uses them,
    // so a 1 x 8 tile holds only the 8 accumulators and one row's chunk in registers.
    const WIDE_TOKEN_TILE: bool = true;
    const GEMV_ROWS: usize = K::GEMV_ROWS;

    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn tile<const RM: usize, const RN: usize>(
        tile: &GemmTile,
        r0: usize,
        t0: usize,
        lead: usize,
    ) {
        debug_assert!(RM * RN <= MAX_PAIRS);
        let nb = tile.k / QK_K;
        let ws = tile.w_stride;
        let gemv = tile.tokens <= GEMV_MAX_TOKENS;
        const { assert!(!matches!(K::ORDER, Order::GgmlLanes) || K::SUM_SHIFT == 0) };
        // Pair lanes (`row * RN + token`): the f32 sums (GgmlLanes: the minimums' sums).
        let mut acc = _mm256_setzero_ps();
        // Repack: the minimum terms' sums, in pair lanes.
        let mut acc_min = _mm256_setzero_ps();
        // GgmlLanes: the 8-lane f32 accumulator of each pair.
        let mut lane_acc = [_mm256_setzero_ps(); MAX_PAIRS];
        for b in 0..nb {
            if gemv {
                prefetch_rows_ahead::<RM>(
                    tile.w.wrapping_add(r0 * ws + b * K::BLOCK_BYTES),
                    ws,
                    lead,
                    K::BLOCK_BYTES,
                );
            }
            // SAFETY: rows r0..r0+RM and tokens t0..t0+RN are inside the tile (the
            // caller's contract), and block b < k / 256 of each row exists.
            let w: [*const u8; RM] = std::array::from_fn(|r| unsafe {
                tile.w.add((r0 + r) * tile.w_stride + b * K::BLOCK_BYTES)
            });
            // SAFETY: as above.
            let a: [*const u8; RN] = std::array::from_fn(|t| unsafe {
                tile.a.add((t0 + t) * tile.a_stride + b * ACT_BLOCK)
            });
            // The one-token 8-row tile decodes its rows together, their minimums' term
            // included (`joint_mins`, in row lanes).
            let joint = RM == 8 && RN == 1 && K::JOINT8 && !K::OFFSET_BY_D;
            let mut joint_mins = _mm256_setzero_si256();
            // SAFETY: w[r] is a whole block (both arms); a[0] a whole activation block.
            let scales: [K::Scales; RM] = match w.first_chunk::<8>() {
                Some(w8) if joint => {
                    let (s8, m) = unsafe { K::decode8(w8, a[0]) };
                    joint_mins = m;
                    std::array::from_fn(|r| s8[r % 8])
                }
                _ => std::array::from_fn(|r| unsafe { K::decode(w[r]) }),
            };
            let mut sumi = [[_mm256_setzero_si256(); RN]; RM];
            // SAFETY: whole blocks, as above.
            unsafe {
                chunk_products::<K, 0, RM, RN>(w[0], ws, &scales, &a, &mut sumi);
                chunk_products::<K, 1, RM, RN>(w[0], ws, &scales, &a, &mut sumi);
                chunk_products::<K, 2, RM, RN>(w[0], ws, &scales, &a, &mut sumi);
                chunk_products::<K, 3, RM, RN>(w[0], ws, &scales, &a, &mut sumi);
                chunk_products::<K, 4, RM, RN>(w[0], ws, &scales, &a, &mut sumi);
                chunk_products::<K, 5, RM, RN>(w[0], ws, &scales, &a, &mut sumi);
                chunk_products::<K, 6, RM, RN>(w[0], ws, &scales, &a, &mut sumi);
                chunk_products::<K, 7, RM, RN>(w[0], ws, &scales, &a, &mut sumi);
            }
            // The bsums term of each pair: sum over the 16 groups of multiplier * bsum.
            let mut pairs = [_mm256_setzero_si256(); MAX_PAIRS];
            let mut mins = [_mm256_setzero_si256(); MAX_PAIRS];
            for r in 0..RM {
                if joint {
                    pairs[r] = sumi[r][0];
                    continue;
                }
                // SAFETY: w[r] is a whole block.
                let m16 = unsafe { K::bsums_multipliers(w[r]) };
                for t in 0..RN {
                    // SAFETY: the activation block holds 16 i16 bsums at ACT_BSUMS.
                    let m = _mm256_madd_epi16(m16, unsafe { load32(a[t].add(ACT_BSUMS)) });
                    if K::OFFSET_BY_D {
                        pairs[r * RN + t] = _mm256_sub_epi32(sumi[r][t], m);
                    } else {
                        pairs[r * RN + t] = sumi[r][t];
                        mins[r * RN + t] = m;
                    }
                }
            }
            // SAFETY: whole blocks, as above.
            let (dd, ddmin) = unsafe { pair_scales::<K, RM, RN>(&w, &a) };
            const { assert!(!K::OFFSET_BY_D || K::SUM_SHIFT == 0) };
            if matches!(K::ORDER, Order::GgmlLanes) {
                fma_ggml_lanes::<RM, RN>(&mut lane_acc, &pairs, dd);
            } else {
                let sums = hsum8_epi32(&pairs);
                let sums = if K::SUM_SHIFT > 0 {
                    _mm256_sra_epi32(sums, _mm_cvtsi32_si128(K::SUM_SHIFT))
                } else {
                    sums
                };
                acc = _mm256_fmadd_ps(dd, _mm256_cvtepi32_ps(sums), acc);
            }
            if !K::OFFSET_BY_D {
                let m = _mm256_cvtepi32_ps(if joint {
                    joint_mins
                } else {
                    hsum8_epi32(&mins)
                });
                if matches!(K::ORDER, Order::Repack) {
                    acc_min = _mm256_fmadd_ps(ddmin, m, acc_min);
                } else {
                    // OneSum: into the sums' f32; GgmlLanes: ggml's own f32 for them,
                    // `summs += (-da * dmin) * mins` (one FMA).
                    acc = _mm256_fnmadd_ps(ddmin, m, acc);
                }
            }
        }
        // SAFETY (both): the caller's contract covers these output elements.
        if matches!(K::ORDER, Order::GgmlLanes) {
            let minimums = (!K::OFFSET_BY_D).then_some(acc);
            unsafe { store_ggml_lanes::<RM, RN>(&lane_acc, minimums, tile, r0, t0) };
        } else {
            if matches!(K::ORDER, Order::Repack) {
                acc = _mm256_sub_ps(acc, acc_min);
            }
            unsafe { store_pairs::<RM, RN>(acc, tile, r0, t0) };
        }
    }
}
