//! Scalar models of the f32 order of ggml's AVX2 dot products (`vec_dot` of a weight row
//! with an activation row: Q5_K and Q6_K with Q8_K, Q4_1 and Q5_1 with Q8_1) and of its
//! REPACK Q4_K kernels, the orders llama.cpp's fixtures were made in.
//!
//! The references of [`crate::quant::reference`] compute each super-block's integer sum
//! exactly and add `d * sum` to one f32; ggml's AVX2 kernels instead keep per super-block
//! 8 exact int32 lanes, convert each lane to f32 and FMA it into an 8-lane f32
//! accumulator (`acc[m] = fma(d, lane[m], acc[m])`), and add the 8 lanes at the end
//! (`hsum_float_8`). Which products land in which lane then decides the rounding. In
//! both kernels modelled here, `maddubs` + `madd` put the products of elements
//! `32J + 4m .. 32J + 4m + 4` of every 32-element chunk `J` in lane `m`. The terms
//! taken from Q8_K's `bsums` (sums of 16 activations) go elsewhere: Q5_K's minimums into
//! one f32 beside the lanes, Q6_K's offset of 32 into lane `m` for the bsums groups
//! `2m, 2m + 1`.
//!
//! These are models, written to be read, and the bit-for-bit target of the SIMD
//! kernels that follow ggml's order; they are tested against ggml's own dot outputs.

use crate::quant::blocks::{
    read_block, BlockQ4K, BlockQ4_1, BlockQ5K, BlockQ5_1, BlockQ6K, BlockQ8K, BlockQ8_1,
};
use crate::quant::reference::common::get_scale_min_k4;
use crate::quant::{QK, QK_K};

/// ggml's `hsum_float_8`: the high half added to the low half, then lanes `0 + 2` and
/// `1 + 3`, then those two.
pub fn hsum_float_8(x: [f32; 8]) -> f32 {
    let r: [f32; 4] = std::array::from_fn(|i| x[i + 4] + x[i]);
    (r[0] + r[2]) + (r[1] + r[3])
}

/// The 8 int32 lanes of one super-block: lane `m` sums `scale(e) * q(e) * a(e)` over the
/// elements `e = 32J + 4m + i` (`J < 8`, `i < 4`), `q` the unsigned stored quant.
fn lanes(q: impl Fn(usize) -> i32, scale: impl Fn(usize) -> i32, a: &BlockQ8K) -> [i32; 8] {
    std::array::from_fn(|m| {
        (0..8)
            .flat_map(|j| (0..4).map(move |i| 32 * j + 4 * m + i))
            .map(|e| scale(e) * q(e) * a.qs[e] as i32)
            .sum()
    })
}

/// ggml's AVX2 `ggml_vec_dot_q5_K_q8_K` in its f32 order: per super-block
/// `acc[m] = fma(d, lane[m], acc[m])` with `d = a.d * x.d`, and the minimums'
/// `summs = fma(dmin, mins, summs)` with `dmin = -a.d * x.dmin` (ggml's
/// `summs += dmin * mins`, contracted to an FMA by GCC's default `-ffp-contract=fast`);
/// the result is `hsum_float_8(acc) + summs`.
///
/// # Panics
/// If `n` is not a multiple of 256 or `w` / `act` hold fewer than `n / 256` blocks.
pub fn vec_dot_q5_k_q8_k_ggml_order(n: usize, w: &[u8], act: &[u8]) -> f32 {
    assert_eq!(n % QK_K, 0, "n = {n} is not a multiple of {QK_K}");
    let mut acc = [0f32; 8];
    let mut summs = 0f32;
    for i in 0..n / QK_K {
        let b: BlockQ5K = read_block(w, i);
        let a: BlockQ8K = read_block(act, i);
        // Chunk J = e / 32: nibble J % 2 of qs[32 (J / 2) + e % 32], fifth bit J of
        // qh[e % 32].
        let q = |e: usize| {
            let (j, l) = (e / 32, e % 32);
            let byte = b.qs[32 * (j / 2) + l];
            let nibble = if j % 2 == 0 { byte & 0x0F } else { byte >> 4 };
            (nibble | (((b.qh[l] >> j) & 1) << 4)) as i32
        };
        let scale = |e: usize| get_scale_min_k4(e / 32, &b.scales).0 as i32;
        let mins: i32 = (0..8)
            .map(|j| {
                let m = get_scale_min_k4(j, &b.scales).1 as i32;
                m * (a.bsums[2 * j] as i32 + a.bsums[2 * j + 1] as i32)
            })
            .sum();
        let d = a.d * b.d.to_f32();
        let dmin = -a.d * b.dmin.to_f32();
        summs = dmin.mul_add(mins as f32, summs);
        for (acc, lane) in acc.iter_mut().zip(lanes(q, scale, &a)) {
            *acc = d.mul_add(lane as f32, *acc);
        }
    }
    hsum_float_8(acc) + summs
}

/// ggml's AVX2 `ggml_vec_dot_q6_K_q8_K` in its f32 order: lane `m` of a super-block is
/// `sum scale * q * a` over its elements (`q` the stored `value + 32`) minus
/// `32 * (scale[2m] * bsums[2m] + scale[2m + 1] * bsums[2m + 1])`; then
/// `acc[m] = fma(d, lane[m], acc[m])` with `d = a.d * x.d`, and `hsum_float_8(acc)`.
///
/// # Panics
/// If `n` is not a multiple of 256 or `w` / `act` hold fewer than `n / 256` blocks.
pub fn vec_dot_q6_k_q8_k_ggml_order(n: usize, w: &[u8], act: &[u8]) -> f32 {
    assert_eq!(n % QK_K, 0, "n = {n} is not a multiple of {QK_K}");
    let mut acc = [0f32; 8];
    for i in 0..n / QK_K {
        let b: BlockQ6K = read_block(w, i);
        let a: BlockQ8K = read_block(act, i);
        // Half h = e / 128, chunk c = (e % 128) / 32: low bits from nibble c / 2 of
        // ql[64h + 32 (c % 2) + e % 32], high bits 2c, 2c + 1 of qh[32h + e % 32].
        let q = |e: usize| {
            let (h, c, l) = (e / 128, (e % 128) / 32, e % 32);
            let byte = b.ql[64 * h + 32 * (c % 2) + l];
            let low = if c < 2 { byte & 0x0F } else { byte >> 4 };
            (low | (((b.qh[32 * h + l] >> (2 * c)) & 3) << 4)) as i32
        };
        let scale = |e: usize| b.scales[e / 16] as i32;
        let lanes = lanes(q, scale, &a);
        let d = a.d * b.d.to_f32();
        for (m, acc) in acc.iter_mut().enumerate() {
            let offset: i32 = (2 * m..2 * m + 2)
                .map(|g| b.scales[g] as i32 * a.bsums[g] as i32)
                .sum();
            *acc = d.mul_add((lanes[m] - 32 * offset) as f32, *acc);
        }
    }
    hsum_float_8(acc)
}

/// ggml's AVX2 dot of a `d * q + m` format (Q4_1, Q5_1) with Q8_1: per 32-element block
/// lane `m` is `sum q * a` over elements `4m .. 4m + 4` (exact), and
/// `acc[m] = fma(lane[m], x.d * y.d, acc[m])`; `summs = fma(x.m, y.s, summs)` (ggml's
/// `summs += m * s`, contracted); the result is `hsum_float_8(acc) + summs`. `block`
/// gives a weight block's `(d, m, quants in element order)`.
fn dot_with_min_q8_1(n: usize, act: &[u8], block: impl Fn(usize) -> (f32, f32, [i32; QK])) -> f32 {
    assert_eq!(n % QK, 0, "n = {n} is not a multiple of {QK}");
    let mut acc = [0f32; 8];
    let mut summs = 0f32;
    for i in 0..n / QK {
        let (d, m, q) = block(i);
        let a: BlockQ8_1 = read_block(act, i);
        summs = m.mul_add(a.s.to_f32(), summs);
        let dd = d * a.d.to_f32();
        for (l, acc) in acc.iter_mut().enumerate() {
            let lane: i32 = (4 * l..4 * l + 4).map(|e| q[e] * a.qs[e] as i32).sum();
            *acc = (lane as f32).mul_add(dd, *acc);
        }
    }
    hsum_float_8(acc) + summs
}

/// ggml's AVX2 `ggml_vec_dot_q4_1_q8_1` in its f32 order ([`dot_with_min_q8_1`]).
///
/// # Panics
/// If `n` is not a multiple of 32 or `w` / `act` hold fewer than `n / 32` blocks.
pub fn vec_dot_q4_1_q8_1_ggml_order(n: usize, w: &[u8], act: &[u8]) -> f32 {
    dot_with_min_q8_1(n, act, |i| {
        let b: BlockQ4_1 = read_block(w, i);
        // Element e: the low nibble of qs[e] for e < 16, the high one of qs[e - 16].
        let q = std::array::from_fn(|e| (b.qs[e % 16] >> (4 * (e / 16)) & 0x0F) as i32);
        (b.d.to_f32(), b.m.to_f32(), q)
    })
}

/// ggml's AVX2 `ggml_vec_dot_q5_1_q8_1` in its f32 order ([`dot_with_min_q8_1`]).
///
/// # Panics
/// If `n` is not a multiple of 32 or `w` / `act` hold fewer than `n / 32` blocks.
pub fn vec_dot_q5_1_q8_1_ggml_order(n: usize, w: &[u8], act: &[u8]) -> f32 {
    dot_with_min_q8_1(n, act, |i| {
        let b: BlockQ5_1 = read_block(w, i);
        let qh = u32::from_le_bytes(b.qh);
        // Element e: Q4_1's nibble plus bit e of qh as bit 4.
        let q = std::array::from_fn(|e| {
            ((b.qs[e % 16] >> (4 * (e / 16)) & 0x0F) as u32 | ((qh >> e) & 1) << 4) as i32
        });
        (b.d.to_f32(), b.m.to_f32(), q)
    })
}

/// ggml's REPACK Q4_K kernels (`ggml_gemv_q4_K_8x8_q8_K`, `ggml_gemm_q4_K_8x8_q8_K`: what
/// llama.cpp runs for Q4_K weights of 8 | rows on x86) in their f32 order, per (weight
/// row, token): each super-block's exact int sums `sum scale * q * a` and
/// `sum min * bsums` FMA'd with `x.d * a.d` and `x.dmin * a.d` into two f32, the second
/// subtracted from the first at the end.
///
/// # Panics
/// If `n` is not a multiple of 256 or `w` / `act` hold fewer than `n / 256` blocks.
pub fn vec_dot_q4_k_q8_k_repack_order(n: usize, w: &[u8], act: &[u8]) -> f32 {
    assert_eq!(n % QK_K, 0, "n = {n} is not a multiple of {QK_K}");
    let (mut acc, mut acc_min) = (0f32, 0f32);
    for i in 0..n / QK_K {
        let b: BlockQ4K = read_block(w, i);
        let a: BlockQ8K = read_block(act, i);
        let (mut sum, mut mins) = (0i32, 0i32);
        for j in 0..8 {
            let (sc, m) = get_scale_min_k4(j, &b.scales);
            // Sub-block j: nibble j % 2 of qs[32 (j / 2) ..].
            let sub: i32 = (0..32)
                .map(|l| {
                    let q = (b.qs[32 * (j / 2) + l] >> (4 * (j % 2))) & 0x0F;
                    q as i32 * a.qs[32 * j + l] as i32
                })
                .sum();
            sum += sc as i32 * sub;
            mins += m as i32 * (a.bsums[2 * j] as i32 + a.bsums[2 * j + 1] as i32);
        }
        acc = (sum as f32).mul_add(b.d.to_f32() * a.d, acc);
        acc_min = (mins as f32).mul_add(b.dmin.to_f32() * a.d, acc_min);
    }
    acc - acc_min
}
