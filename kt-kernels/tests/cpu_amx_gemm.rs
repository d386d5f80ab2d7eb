//! The AMX GEMMs of the GGUF formats without a repack, BF16 (`cpu/amx/bf16.rs`,
//! `tdpbf16ps`), Q8_0, Q4_0, Q5_0, Q4_1, Q5_1 (`cpu/amx/small_block.rs`, `tdpbssd` per
//! block, in steps of 128 elements: other K take the AVX512 kernel) and the K-quants Q4_K,
//! Q5_K, Q2_K, Q3_K, Q6_K (`cpu/amx/kquant.rs`, the pipeline of all but BF16, and a step
//! kernel per format, with the scales folded into the unpacked weights), against the scalar
//! backend: token counts on both sides of their threshold and past one 32- or 64-token
//! block, rows around the 16-row tiles, K around the 32-element steps (BF16 with odd K:
//! the zero-padded last step) and past one transposed K chunk (partial sums added into
//! the output). Q4_K and Q5_K weights cycle their 6-bit scales and mins through every
//! value (0 and 63, every `8 * hi + lo` split), Q2_K its scale bytes through all 256
//! (scale, min) pairs, Q3_K its 6-bit scales through all 64, Q6_K its int8 scales through
//! all 256 values (every high byte of `sc * q`).
//!
//! Every test skips (saying so) when this CPU has no AMX.

mod common;

use std::sync::OnceLock;

use common::{poisoned, q8_1_min_terms, strided_gemm_tile};
use half::{bf16, f16};
use kt_kernels::cpu::dispatch;
use kt_kernels::cpu::{self, Isa, ThreadPool};
use kt_kernels::quant::reference::common::{get_scale_min_k4, put_q3_k_scales};
use kt_kernels::quant::{self, QType};
use kt_kernels::util::SplitMix64;
use proptest::prelude::*;

fn amx_here(test: &str) -> bool {
    let here = Isa::available().contains(&Isa::Amx);
    if !here {
        eprintln!("{test}: skipped, this CPU has no AMX");
    }
    here
}

fn pool() -> &'static ThreadPool {
    static POOL: OnceLock<ThreadPool> = OnceLock::new();
    POOL.get_or_init(|| ThreadPool::new(2).expect("2-thread pool"))
}

/// Random weight rows of `q` at varied scales (no row all zero): BF16 values, Q8_0, Q4_0, Q5_0
/// blocks of random quants (every byte, -128 included) with finite f16 scales, or
/// K-quant blocks of random quants whose scales (and mins) run through every value.
fn weights(q: QType, rows: usize, k: usize, rng: &mut SplitMix64) -> Vec<u8> {
    let mut w = Vec::with_capacity(rows * q.row_bytes(k).unwrap());
    // Where the K-quant scales' cycle starts (so different calls see different pairings).
    let phase = rng.below(256);
    let f16_of = |x: f32| f16::from_f32(x).to_le_bytes();
    for r in 0..rows {
        let scale = [1.0f32, 0.01, 40.0][r % 3];
        match q {
            QType::BF16 => {
                for _ in 0..k {
                    w.extend(bf16::from_f32(scale * rng.normal()).to_le_bytes());
                }
            }
            QType::Q8_0 | QType::Q4_0 | QType::Q5_0 | QType::Q4_1 | QType::Q5_1 => {
                // Q4_0: the 16 nibble bytes; Q5_0: 4 bytes of fifth bits, then those; Q4_1,
                // Q5_1: first the f16 minimum, of either sign.
                let min = matches!(q, QType::Q4_1 | QType::Q5_1);
                let quant_bytes = q.block_bytes() - if min { 4 } else { 2 };
                for _ in 0..k / 32 {
                    let d = scale * 1e-2 * rng.uniform(0.1, 1.0);
                    w.extend(f16::from_f32(d).to_le_bytes());
                    if min {
                        w.extend(f16::from_f32(scale * 0.1 * rng.uniform(-1.0, 1.0)).to_le_bytes());
                    }
                    w.extend((0..quant_bytes).map(|_| rng.next_u64() as u8));
                }
            }
            QType::Q4_K | QType::Q5_K => {
                for b in 0..k / 256 {
                    let n = phase + 8 * (r * (k / 256) + b);
                    let sc: [u8; 8] = std::array::from_fn(|j| ((n + j) % 64) as u8);
                    let m: [u8; 8] = std::array::from_fn(|j| ((n + 5 * j + 17) % 64) as u8);
                    for _ in 0..2 {
                        w.extend(f16_of(scale * 1e-3 * rng.uniform(0.1, 1.0)));
                    }
                    w.extend(q4_k_scales(&sc, &m));
                    // Q5_K: the 32 high-bit bytes, then the nibbles as Q4_K.
                    let quant_bytes = if q == QType::Q5_K { 160 } else { 128 };
                    w.extend((0..quant_bytes).map(|_| rng.next_u64() as u8));
                }
            }
            QType::Q2_K => {
                for b in 0..k / 256 {
                    let n = phase + 16 * (r * (k / 256) + b);
                    w.extend((0..16).map(|g| ((n + g) % 256) as u8));
                    w.extend((0..64).map(|_| rng.next_u64() as u8));
                    for _ in 0..2 {
                        w.extend(f16_of(scale * 1e-2 * rng.uniform(0.1, 1.0)));
                    }
                }
            }
            QType::Q3_K => {
                for b in 0..k / 256 {
                    let n = phase + 16 * (r * (k / 256) + b);
                    // hmask and qs, then the 16 biased 6-bit scales cycling through 0..64.
                    w.extend((0..96).map(|_| rng.next_u64() as u8));
                    let biased: [u8; 16] = std::array::from_fn(|g| ((n + g) % 64) as u8);
                    w.extend(put_q3_k_scales(&biased));
                    w.extend(f16_of(scale * 1e-3 * rng.uniform(0.1, 1.0)));
                }
            }
            QType::Q6_K => {
                for b in 0..k / 256 {
                    let n = phase + 16 * (r * (k / 256) + b);
                    w.extend((0..192).map(|_| rng.next_u64() as u8));
                    w.extend((0..16).map(|g| ((n + g) % 256) as u8));
                    w.extend(f16_of(scale * 1e-3 * rng.uniform(0.1, 1.0)));
                }
            }
            other => panic!("no generator for {other}"),
        }
    }
    w
}

/// The 12 scale bytes of a Q4_K block with 6-bit scales `sc` and mins `m` (the inverse
/// of `get_scale_min_k4`): sub-blocks 0..4 in the low 6 bits of bytes 0..8, 4..8 split
/// into a low nibble in bytes 8..12 and the top 2 bits in bytes 0..8.
fn q4_k_scales(sc: &[u8; 8], m: &[u8; 8]) -> [u8; 12] {
    let mut s = [0u8; 12];
    for j in 0..4 {
        s[j] = sc[j] | (sc[j + 4] >> 4) << 6;
        s[j + 4] = m[j] | (m[j + 4] >> 4) << 6;
        s[j + 8] = (sc[j + 4] & 15) | (m[j + 4] & 15) << 4;
    }
    for j in 0..8 {
        assert_eq!(get_scale_min_k4(j, &s), (sc[j], m[j]), "scale encoding");
    }
    s
}

/// Per weight, the magnitude its rounding is relative to: `|w|`, and for the K-quants
/// with minimums the sum of its two terms' magnitudes `|d sc q| + |dmin m|` (both kernels
/// round the two sums of a block before subtracting them): the dequantization with `dmin`
/// negated (every generator writes `d, dmin >= 0`).
fn magnitudes(q: QType, w: &[u8], k: usize) -> Vec<f32> {
    let dmin_sign_byte = match q {
        QType::Q4_K | QType::Q5_K => Some(3),
        QType::Q2_K => Some(83),
        _ => None,
    };
    let mut w = w.to_vec();
    if let Some(at) = dmin_sign_byte {
        for b in w.chunks_exact_mut(q.block_bytes()) {
            assert_eq!(b[at] & 0x80, 0, "{q}: dmin must be >= 0");
            b[at] |= 0x80;
        }
    }
    if matches!(q, QType::Q4_1 | QType::Q5_1) {
        // Their minimum meets the activations' stored sums apart: `q8_1_min_terms` bounds it.
        for b in w.chunks_exact_mut(q.block_bytes()) {
            b[2..4].fill(0);
        }
    }
    dequantized(q, &w, k).iter().map(|v| v.abs()).collect()
}

/// Random activations at varied scales, with an all-zero and a tiny token.
fn activations(tokens: usize, k: usize, rng: &mut SplitMix64) -> Vec<f32> {
    let mut x = Vec::with_capacity(tokens * k);
    for t in 0..tokens {
        let scale = match t % 7 {
            3 => 0.0,
            5 => 1e-6,
            _ => [0.1f32, 1.0, 30.0][rng.below(3)],
        };
        x.extend((0..k).map(|_| scale * rng.normal()));
    }
    x
}

/// Dequantized rows of `q` (weights, or activations in their format).
fn dequantized(q: QType, bytes: &[u8], k: usize) -> Vec<f32> {
    let mut f = vec![0f32; bytes.len() / q.row_bytes(k).unwrap() * k];
    quant::dequantize(q, bytes, &mut f).unwrap();
    f
}

/// Bound on the rounding of one output, in units of 2^-24 (half an f32 ulp) times
/// `sum |w| |a|`. BF16: `tdpbf16ps` adds the K products (each exact in f32) one after the
/// other into an f32, each addition rounding by at most that much of a partial sum, and
/// the scalar backend sums in f64. Q8_0: per block both sides round the scale product,
/// the scaled block sum and its addition (the kernel adds K chunks into the output: one
/// more), so each is within (blocks + 3) units. Q4_K: per super-block the scalar
/// backend rounds the two scale products, the integer sum's conversion, the two
/// products, their difference and its addition; the AMX kernel the conversion, the two
/// (fused) scalings by the weight's `d` and `dmin`, the fused scaling by `da` with its
/// addition, and the K chunks' addition: each within (blocks + 5) units. Q5_K and Q2_K
/// round as Q4_K; Q6_K (no minimum term) in fewer steps, inside the same bound.
fn rounding_units(q: QType, k: usize) -> f64 {
    match q {
        QType::BF16 => k as f64 + 1.0,
        QType::Q8_0 | QType::Q4_0 | QType::Q5_0 => 2.0 * (k / 32) as f64 + 6.0,
        // Two terms a block (the scaled dot and the minimum's), each rounded as Q8_0's.
        QType::Q4_1 | QType::Q5_1 => 4.0 * (k / 32) as f64 + 6.0,
        QType::Q4_K | QType::Q5_K | QType::Q2_K | QType::Q3_K | QType::Q6_K => {
            2.0 * (k / 256) as f64 + 10.0
        }
        other => panic!("no bound for {other}"),
    }
}

/// `got` (tokens x rows) against the scalar backend on the same quantized activations.
fn assert_matches_scalar(
    what: &str,
    q: QType,
    w: &[u8],
    x: &[f32],
    rows: usize,
    k: usize,
    got: &[f32],
) {
    let tokens = x.len() / k;
    let mut want = poisoned(tokens * rows);
    cpu::matmul_with(Isa::Scalar, pool(), q, w, rows, k, x, tokens, &mut want).unwrap();
    let mut xq = vec![0u8; tokens * cpu::act_row_bytes(q, k).unwrap()];
    cpu::quantize_activations_with(Isa::Scalar, pool(), q, x, k, tokens, &mut xq).unwrap();
    let (wf, af) = (magnitudes(q, w, k), dequantized(q.vec_dot_type(), &xq, k));
    let mins = q8_1_min_terms(q, w, &xq, rows, k);
    let unit = f64::from(f32::EPSILON) / 2.0 * rounding_units(q, k);
    for t in 0..tokens {
        for r in 0..rows {
            let (g, s) = (got[t * rows + r], want[t * rows + r]);
            let mag: f64 = (0..k)
                .map(|i| (wf[r * k + i].abs() * af[t * k + i].abs()) as f64)
                .sum::<f64>()
                + mins[t * rows + r];
            let tol = unit * mag + 1e-30;
            assert!(
                g.is_finite() && ((g - s).abs() as f64) <= tol,
                "{what}: token {t} row {r}: got {g}, want {s} (|diff| {}, tol {tol})",
                (g - s).abs()
            );
        }
    }
}

fn check(q: QType, rows: usize, k: usize, tokens: usize, seed: u64) {
    let mut rng = SplitMix64::new(seed);
    let w = weights(q, rows, k, &mut rng);
    let x = activations(tokens, k, &mut rng);
    let mut got = poisoned(tokens * rows);
    cpu::matmul_with(Isa::Amx, pool(), q, &w, rows, k, &x, tokens, &mut got).unwrap();
    let what = format!("{q} amx rows {rows} k {k} tokens {tokens}");
    assert_matches_scalar(&what, q, &w, &x, rows, k, &got);
}

const FORMATS: [QType; 11] = [
    QType::BF16,
    QType::Q8_0,
    QType::Q4_0,
    QType::Q5_0,
    QType::Q4_1,
    QType::Q5_1,
    QType::Q4_K,
    QType::Q5_K,
    QType::Q2_K,
    QType::Q3_K,
    QType::Q6_K,
];
const KQUANTS: [QType; 5] = [
    QType::Q4_K,
    QType::Q5_K,
    QType::Q2_K,
    QType::Q3_K,
    QType::Q6_K,
];

/// K lengths of `q` around the 32-element steps and the 2048-element chunks (small-block
/// formats: whole blocks only, multiples of their 128-element steps or not; K-quants: whole
/// super-blocks, around their chunks of 8 (eight token groups) and 64 (one group)
/// super-blocks, cut evenly).
fn ks(q: QType) -> [usize; 12] {
    match q {
        QType::BF16 => [1, 2, 31, 32, 33, 64, 97, 1000, 2047, 2048, 2049, 4133],
        QType::Q4_K | QType::Q5_K | QType::Q2_K | QType::Q3_K | QType::Q6_K => [
            256, 512, 768, 1792, 2048, 2304, 4096, 7168, 8192, 8448, 2560, 16640,
        ],
        _ => [
            32, 64, 96, 128, 480, 1024, 1408, 2016, 2048, 2080, 4096, 4128,
        ],
    }
}

#[test]
fn the_amx_table_runs_bf16_the_small_blocks_and_the_k_quants_on_amx() {
    if !amx_here("the_amx_table_runs_bf16_the_small_blocks_and_the_k_quants_on_amx") {
        return;
    }
    for q in FORMATS {
        let k = dispatch::table(Isa::Amx).unwrap().get(q).unwrap();
        assert_eq!(k.gemm_isa, Isa::Amx, "{q}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 36, ..ProptestConfig::default() })]

    #[test]
    fn gemm_matches_scalar(f in 0usize..FORMATS.len(), kp in 0usize..12, rows in 1usize..=70,
                           tp in 1usize..=20, seed in any::<u64>()) {
        if amx_here("gemm_matches_scalar") {
            // 1..=17 tokens (the AVX512 kernel below 9, for Q4_K below 10, Q2_K and Q6_K
            // below 12, Q3_K below 5, Q5_K below 32; AMX from there), 32, 64 or 513.
            let tokens = match tp {
                18 => 513,
                19 => 32,
                20 => 64,
                t => t,
            };
            let q = FORMATS[f];
            check(q, rows, ks(q)[kp], tokens, seed);
        }
    }
}

/// Every block edge deterministically: token halves (9, 16, 17, 31, 32, 33, 513), row
/// halves (1, 15, 16, 17, 32, 33) and K steps and chunks.
#[test]
fn every_block_edge_matches_scalar() {
    if !amx_here("every_block_edge_matches_scalar") {
        return;
    }
    for q in FORMATS {
        let ks = ks(q);
        for (rows, kp, tokens) in [
            (1, 3, 9),
            (15, 4, 16),
            (16, 2, 17),
            (17, 5, 31),
            (32, 0, 32),
            (33, 10, 33),
            (47, 11, 40),
            (130, 7, 513),
        ] {
            check(
                q,
                rows,
                ks[kp],
                tokens,
                (rows * 1009 + kp * 7 + tokens) as u64,
            );
        }
    }
}

/// One tile through the table's `gemm` directly, inside a larger NaN-poisoned output
/// (`ldo` > rows, an offset): more rows and tokens than the driver's items, K over
/// several chunks ending in a partial step; elements outside the tile stay untouched.
#[test]
fn one_large_tile_leaves_the_rest_of_the_output_alone() {
    if !amx_here("one_large_tile_leaves_the_rest_of_the_output_alone") {
        return;
    }
    for q in FORMATS {
        one_large_tile(q);
    }
}

fn one_large_tile(q: QType) {
    let (rows, tokens, ldo, off) = (203, 37, 211, 3);
    let k = ks(q)[11];
    let mut rng = SplitMix64::new(77);
    let w = weights(q, rows, k, &mut rng);
    let x = activations(tokens, k, &mut rng);
    let act_row = cpu::act_row_bytes(q, k).unwrap();
    let mut xq = vec![0u8; tokens * act_row];
    cpu::quantize_activations_with(Isa::Amx, pool(), q, &x, k, tokens, &mut xq).unwrap();
    let got = strided_gemm_tile(Isa::Amx, q, &w, rows, k, &xq, act_row, tokens, (off, ldo));
    assert_matches_scalar(&format!("{q} amx one tile"), q, &w, &x, rows, k, &got);
}

/// The K-quants at the token counts around their AMX thresholds (Q3_K 5, Q4_K 10, Q2_K and
/// Q6_K 12, Q5_K 32), the 16-token groups, Q4_K's switch from the per-sub-block to the
/// folded step kernel (above 64) and the 128-token blocks, on rows around the 16-row tiles
/// and K past both chunk sizes.
#[test]
fn k_quant_token_counts_match_scalar() {
    if !amx_here("k_quant_token_counts_match_scalar") {
        return;
    }
    for q in KQUANTS {
        for (i, tokens) in [
            1, 4, 5, 7, 9, 10, 11, 12, 16, 17, 31, 32, 33, 63, 64, 65, 513,
        ]
        .into_iter()
        .enumerate()
        {
            for (rows, k) in [(33, 2304), (16, 8448)] {
                check(q, rows, k, tokens, 900 + i as u64);
            }
        }
    }
}

/// The driver's two entries over the pipeline's shared activation records (K-quants,
/// the small-block formats): f32 activations (quantized in the records pass, several Q8_0 blocks per
/// record) and activations quantized beforehand (transposed by a records pass of their
/// own) give the same bits, and match scalar. Both passes cut each 16-token group into
/// runs of super-blocks: K of 9 and 17 super-blocks splits them unevenly.
#[test]
fn records_quantized_entry_matches_the_f32_entry() {
    if !amx_here("records_quantized_entry_matches_the_f32_entry") {
        return;
    }
    for q in KQUANTS.into_iter().chain([
        QType::Q8_0,
        QType::Q4_0,
        QType::Q5_0,
        QType::Q4_1,
        QType::Q5_1,
    ]) {
        for (i, (rows, k, tokens)) in [(70, 2304, 40), (33, 4352, 130), (16, 7168, 65)]
            .into_iter()
            .enumerate()
        {
            let mut rng = SplitMix64::new(1300 + i as u64);
            let w = weights(q, rows, k, &mut rng);
            let x = activations(tokens, k, &mut rng);
            // First a product over other activations, so that records a call failed to
            // write would hold other values.
            let other = activations(tokens, k, &mut rng);
            let mut from_f32 = poisoned(tokens * rows);
            cpu::matmul_with(
                Isa::Amx,
                pool(),
                q,
                &w,
                rows,
                k,
                &other,
                tokens,
                &mut from_f32,
            )
            .unwrap();
            let mut xq = vec![0u8; tokens * cpu::act_row_bytes(q, k).unwrap()];
            cpu::quantize_activations_with(Isa::Amx, pool(), q, &x, k, tokens, &mut xq).unwrap();
            let mut got = poisoned(tokens * rows);
            cpu::matmul_quantized_with(Isa::Amx, pool(), q, &w, rows, k, &xq, tokens, &mut got)
                .unwrap();
            let mut from_f32 = poisoned(tokens * rows);
            cpu::matmul_with(Isa::Amx, pool(), q, &w, rows, k, &x, tokens, &mut from_f32).unwrap();
            let what = format!("{q} quantized entry rows {rows} k {k} tokens {tokens}");
            assert_matches_scalar(&what, q, &w, &x, rows, k, &got);
            for (j, (a, b)) in got.iter().zip(&from_f32).enumerate() {
                assert_eq!(a.to_bits(), b.to_bits(), "{what}: element {j}: {a} vs {b}");
            }
        }
    }
}

/// K-quant blocks at the edges of the integer arithmetic (the largest A bytes and
/// super-block sums), against activations of one sign (every quantized byte near 127) and
/// mixed signs, on both sides of Q4_K's switch to the folded kernel:
/// - Q4_K: every quant 15 with scale 63 (`q * hi` = `q * lo` = 105; a sum near
///   256 * 945 * 127) or 0, mins 63 or 0, split scales (7, 56);
/// - Q5_K: the same with the fifth bit set (quants 31: `q * hi` = 217) or clear;
/// - Q2_K: every quant 3 with scale and min bytes 0xFF (`q * sc` = 45), 0x0F, 0xF0, 0;
/// - Q3_K: every quant -4 or 3 with scales -32 and 31 (the folded bytes -128 and 124, -93
///   and 96), and mixed quants with scales -31 and 30;
/// - Q6_K: every quant -32 or 31 with int8 scales -128, 127, 36 and -27, and 0 (`sc * q`
///   at its extremes 4096 and -3968, high bytes 16 and -16; 3937, -4064).
#[test]
fn k_quant_extreme_scales_match_scalar() {
    if !amx_here("k_quant_extreme_scales_match_scalar") {
        return;
    }
    for q in KQUANTS {
        extremes(q);
    }
}

/// Block `i` of the extreme cases of `q` (cycling), with f16 factors from `rng`.
fn extreme_block(q: QType, i: usize, rng: &mut SplitMix64) -> Vec<u8> {
    let mut f16_of = |lo: f32, hi: f32| f16::from_f32(rng.uniform(lo, hi)).to_le_bytes();
    let mut b = Vec::with_capacity(q.block_bytes());
    match q {
        QType::Q4_K | QType::Q5_K => {
            let cases: [(u8, u8, u8, u8); 7] = [
                (0xFF, 0xFF, 63, 0),
                (0xFF, 0xFF, 63, 63),
                (0xFF, 0x00, 0, 63),
                (0x00, 0xFF, 63, 63),
                (0xF0, 0xAA, 7, 56),
                (0x0F, 0x55, 56, 7),
                (0xFF, 0x00, 63, 0),
            ];
            let (qs, qh, sc, m) = cases[i % cases.len()];
            b.extend(f16_of(0.01, 0.02));
            b.extend(f16_of(0.01, 0.02));
            b.extend(q4_k_scales(&[sc; 8], &[m; 8]));
            if q == QType::Q5_K {
                b.extend([qh; 32]);
            }
            b.extend([qs; 128]);
        }
        QType::Q2_K => {
            let cases: [(u8, u8); 5] = [
                (0xFF, 0xFF),
                (0xFF, 0x0F),
                (0xFF, 0xF0),
                (0x00, 0xFF),
                (0xAA, 0x00),
            ];
            let (qs, sc) = cases[i % cases.len()];
            b.extend([sc; 16]);
            b.extend([qs; 64]);
            b.extend(f16_of(0.01, 0.02));
            b.extend(f16_of(0.01, 0.02));
        }
        QType::Q6_K => {
            // (ql, qh) bytes 0 give every quant -32, 0xFF every quant 31.
            let cases: [(u8, i8); 7] = [
                (0x00, -128),
                (0xFF, 127),
                (0x00, 36),
                (0xFF, 36),
                (0x00, -27),
                (0xFF, -128),
                (0x00, 0),
            ];
            let (bits, sc) = cases[i % cases.len()];
            b.extend([bits; 192]);
            b.extend([sc as u8; 16]);
            b.extend(f16_of(0.001, 0.002));
        }
        QType::Q3_K => {
            // (qs, hmask) bytes 0 give every quant -4, 0xFF every quant 3; biased scales
            // 0 (-32: with -4 the folded byte -128), 63 (31) and mixed.
            let cases: [(u8, u8, u8); 6] = [
                (0x00, 0x00, 0),
                (0xFF, 0xFF, 63),
                (0x00, 0x00, 63),
                (0xFF, 0xFF, 0),
                (0xAA, 0x0F, 1),
                (0x55, 0xF0, 62),
            ];
            let (qs, hm, sc) = cases[i % cases.len()];
            b.extend([hm; 32]);
            b.extend([qs; 64]);
            b.extend(put_q3_k_scales(&[sc; 16]));
            b.extend(f16_of(0.01, 0.02));
        }
        other => panic!("no extreme blocks for {other}"),
    }
    assert_eq!(b.len(), q.block_bytes());
    b
}

fn extremes(q: QType) {
    let (rows, k) = (19, 2304);
    let mut rng = SplitMix64::new(31);
    let mut w = Vec::new();
    for r in 0..rows {
        for b in 0..k / 256 {
            w.extend(extreme_block(q, r + b, &mut rng));
        }
    }
    for tokens in [16, 65] {
        let mut x = Vec::with_capacity(tokens * k);
        for t in 0..tokens {
            let sign = if t % 2 == 0 { 1.0 } else { -1.0 };
            x.extend((0..k).map(|i| {
                let v = 1.0 + 0.001 * (i % 7) as f32;
                if t % 3 == 2 && i % 5 == 0 {
                    -v
                } else {
                    sign * v
                }
            }));
        }
        let mut got = poisoned(tokens * rows);
        cpu::matmul_with(Isa::Amx, pool(), q, &w, rows, k, &x, tokens, &mut got).unwrap();
        let what = format!("{q} extremes tokens {tokens}");
        assert_matches_scalar(&what, q, &w, &x, rows, k, &got);
    }
}
