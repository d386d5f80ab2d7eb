//! The AVX512 backend against ggml's fixtures and against the scalar backend.
//!
//! Every test skips (saying so) when this CPU cannot run `Isa::Avx512`.

mod common;

use std::sync::OnceLock;

use common::*;
use half::{bf16, f16};
use kt_kernels::cpu::{self, Isa, ThreadPool};
use kt_kernels::quant::{self, QType};
use kt_kernels::util::SplitMix64;
use proptest::prelude::*;

/// The weight formats the AVX512 backend registers.
const FORMATS: [QType; 11] = [
    QType::Q2_K,
    QType::Q3_K,
    QType::Q4_K,
    QType::Q5_K,
    QType::Q6_K,
    QType::Q8_0,
    QType::Q4_0,
    QType::Q5_0,
    QType::Q4_1,
    QType::Q5_1,
    QType::BF16,
];

fn avx512() -> bool {
    match Isa::Avx512.check() {
        Ok(()) => true,
        Err(e) => {
            eprintln!("skipped: {e}");
            false
        }
    }
}

fn pool() -> &'static ThreadPool {
    static POOL: OnceLock<ThreadPool> = OnceLock::new();
    POOL.get_or_init(|| ThreadPool::new(2).expect("2-thread pool"))
}

/// Activations quantized by `isa` for weights of `qtype`.
fn quantize_acts(isa: Isa, qtype: QType, x: &[f32], cols: usize) -> Vec<u8> {
    let tokens = x.len() / cols;
    let mut xq = vec![0u8; tokens * cpu::act_row_bytes(qtype, cols).unwrap()];
    cpu::quantize_activations_with(isa, pool(), qtype, x, cols, tokens, &mut xq).unwrap();
    xq
}

/// Dequantizes one activation row written in `act` format (decoded here from the block
/// layouts, so the check does not lean on the code under test).
fn dequant_act(act: QType, row: &[u8]) -> Vec<f32> {
    match act {
        QType::Q8_K => row
            .chunks_exact(292)
            .flat_map(|b| {
                let d = f32::from_le_bytes(b[..4].try_into().unwrap());
                b[4..260].iter().map(move |&q| d * q as i8 as f32)
            })
            .collect(),
        // Q8_1: Q8_0 with the f16 `s` after `d`.
        QType::Q8_0 | QType::Q8_1 => row
            .chunks_exact(act.block_bytes())
            .flat_map(|b| {
                let d = f16::from_le_bytes([b[0], b[1]]).to_f32();
                b[b.len() - 32..].iter().map(move |&q| d * q as i8 as f32)
            })
            .collect(),
        QType::BF16 => row
            .chunks_exact(2)
            .map(|b| bf16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        other => panic!("{other} is not an activation type here"),
    }
}

/// The scale the 1e-5 tolerance is relative to, for every (token, row) of weights `w`
/// (`rows` rows of `q`) against quantized activations `xq`: `sum |w| * |a|` over the
/// dequantized values, plus, for Q8_1 activations (Q4_1, Q5_1), `sum |m| * |s|` over the
/// blocks: their products add the weights' minimum `m` times the activations' stored sum
/// `s`, which the dequantized activations do not carry (a token whose `d` rounds to 0 in
/// f16 can keep a nonzero `s`).
fn bound(q: QType, w: &[u8], xq: &[u8], rows: usize, cols: usize) -> Vec<f64> {
    let mut wf = vec![0f32; rows * cols];
    quant::dequantize(q, w, &mut wf).unwrap();
    let act = q.vec_dot_type();
    let act_row = cpu::act_row_bytes(q, cols).unwrap();
    let a: Vec<f32> = xq
        .chunks(act_row)
        .flat_map(|r| dequant_act(act, r))
        .collect();
    let mins = q8_1_min_terms(q, w, xq, rows, cols);
    let mag = magnitudes(&wf, &a, rows, cols);
    mag.iter().zip(mins).map(|(m, e)| m + e).collect()
}

/// `sum |w| * |a|` for every (token, row).
fn magnitudes(w: &[f32], a: &[f32], rows: usize, cols: usize) -> Vec<f64> {
    let tokens = a.len() / cols;
    let mut m = vec![0f64; rows * tokens];
    for t in 0..tokens {
        for r in 0..rows {
            let (wr, at) = (&w[r * cols..(r + 1) * cols], &a[t * cols..(t + 1) * cols]);
            m[t * rows + r] = wr
                .iter()
                .zip(at)
                .map(|(x, y)| (x.abs() * y.abs()) as f64)
                .sum();
        }
    }
    m
}

fn assert_close(what: &str, got: &[f32], want: &[f32], mag: &[f64], rows: usize) {
    for (i, ((&g, &w), &m)) in got.iter().zip(want).zip(mag).enumerate() {
        let tol = 1e-5 * m + 1e-30;
        assert!(
            g.is_finite() && ((g - w).abs() as f64) <= tol,
            "{what}: token {} row {}: got {g}, want {w} (|diff| {}, tol {tol})",
            i / rows,
            i % rows,
            (g - w).abs()
        );
    }
}

#[test]
fn q8_k_quantizer_matches_ggml_bytes() {
    if !avx512() {
        return;
    }
    // q8_K.quant is ggml's Q8_K of weights.f32 (zero, tiny and spiky rows included).
    let got = quantize_acts(Isa::Avx512, QType::Q4_K, &weights(), COLS);
    let want = ggml_quant(QType::Q8_K);
    assert_eq!(got.len(), want.len());
    for (b, (g, w)) in got.chunks(292).zip(want.chunks(292)).enumerate() {
        let what = format!("block {b} (row kind {})", b / 4 % 8);
        assert_eq!(g[..260], w[..260], "{what}: d or quants differ");
        if w[..4] == [0; 4] {
            // ggml leaves the sums of an all-zero block unwritten; ours are zero.
            assert_eq!(g[260..], [0; 32], "{what}");
        } else {
            assert_eq!(g[260..], w[260..], "{what}: block sums differ");
        }
    }
}

/// Against ggml's file quantizer (`_ref`), which rounds ties away from zero where the
/// activation quantizer rounds them to even: the fixture weights hold no ties, so the
/// bytes agree; ties are checked against the reference in `special_rows_*` below.
#[test]
fn q8_0_quantizer_matches_ggml_bytes() {
    if !avx512() {
        return;
    }
    let got = quantize_acts(Isa::Avx512, QType::Q8_0, &weights(), COLS);
    for (r, (g, w)) in got
        .chunks(1088)
        .zip(ggml_quant(QType::Q8_0).chunks(1088))
        .enumerate()
    {
        assert_eq!(g, w, "row {r} (kind {})", r % 8);
    }
}

/// The AVX512 product of ggml's weight rows of `q` with the fixture activations equals
/// ggml's own dots.
fn check_against_ggml(q: QType) {
    if !avx512() {
        return;
    }
    let x = activations();
    let mut out = poisoned(ACT_ROWS * ROWS);
    cpu::matmul_with(
        Isa::Avx512,
        pool(),
        q,
        &ggml_quant(q),
        ROWS,
        COLS,
        &x,
        ACT_ROWS,
        &mut out,
    )
    .unwrap();
    // ggml's dots are [rows, activation rows]; ours [tokens, rows].
    let dots = ggml_dot(q);
    let want: Vec<f32> = (0..ACT_ROWS * ROWS)
        .map(|i| dots[(i % ROWS) * ACT_ROWS + i / ROWS])
        .collect();
    let xq = quantize_acts(Isa::Avx512, q, &x, COLS);
    let mag = bound(q, &ggml_quant(q), &xq, ROWS, COLS);
    assert_close(q.name(), &out, &want, &mag, ROWS);
}

#[test]
fn q2_k_matches_ggml_dots() {
    check_against_ggml(QType::Q2_K);
}
#[test]
fn q3_k_matches_ggml_dots() {
    check_against_ggml(QType::Q3_K);
}
#[test]
fn q4_k_matches_ggml_dots() {
    check_against_ggml(QType::Q4_K);
}
#[test]
fn q5_k_matches_ggml_dots() {
    check_against_ggml(QType::Q5_K);
}
#[test]
fn q6_k_matches_ggml_dots() {
    check_against_ggml(QType::Q6_K);
}
#[test]
fn q8_0_matches_ggml_dots() {
    check_against_ggml(QType::Q8_0);
}
#[test]
fn q4_0_matches_ggml_dots() {
    check_against_ggml(QType::Q4_0);
}
#[test]
fn q5_0_matches_ggml_dots() {
    check_against_ggml(QType::Q5_0);
}
#[test]
fn q4_1_matches_ggml_dots() {
    check_against_ggml(QType::Q4_1);
}
#[test]
fn q5_1_matches_ggml_dots() {
    check_against_ggml(QType::Q5_1);
}
#[test]
fn bf16_matches_ggml_dots() {
    check_against_ggml(QType::BF16);
}

/// Random weight rows of `q`: random quant bytes (every bit pattern), with the f16/bf16
/// scale fields set to finite values of varied size.
fn random_weights(q: QType, rows: usize, cols: usize, rng: &mut SplitMix64) -> Vec<u8> {
    if q == QType::BF16 {
        return (0..rows * cols)
            .flat_map(|_| bf16::from_f32(rng.normal()).to_le_bytes())
            .collect();
    }
    let mut w: Vec<u8> = (0..rows * q.row_bytes(cols).unwrap())
        .map(|_| rng.next_u64() as u8)
        .collect();
    // Offsets of the f16 scale fields in a block.
    let fields: &[usize] = match q {
        QType::Q2_K => &[80, 82],
        QType::Q4_K | QType::Q5_K => &[0, 2],
        QType::Q6_K => &[208],
        QType::Q3_K => &[108],
        QType::Q8_0 | QType::Q4_0 | QType::Q5_0 => &[0],
        QType::Q4_1 | QType::Q5_1 => &[0, 2],
        other => panic!("no generator for {other}"),
    };
    for block in w.chunks_exact_mut(q.block_bytes()) {
        for &f in fields {
            let v = rng.uniform(0.0, 1.0) * [1e-3f32, 1e-2, 0.1][rng.below(3)];
            block[f..f + 2].copy_from_slice(&f16::from_f32(v).to_le_bytes());
        }
    }
    w
}

/// Random activations: normal rows at varied scales, with an all-zero row and a tiny
/// row when there are enough tokens.
fn random_acts(tokens: usize, cols: usize, rng: &mut SplitMix64) -> Vec<f32> {
    let mut x = Vec::with_capacity(tokens * cols);
    for t in 0..tokens {
        let scale = match t % 7 {
            3 if tokens > 3 => 0.0,
            5 => 1e-6,
            _ => [0.1f32, 1.0, 30.0][rng.below(3)],
        };
        x.extend((0..cols).map(|_| scale * rng.normal()));
    }
    x
}

/// AVX512 against the scalar backend on the same weights and activations.
fn check_against_scalar(q: QType, rows: usize, cols: usize, tokens: usize, seed: u64) {
    let mut rng = SplitMix64::new(seed);
    let w = random_weights(q, rows, cols, &mut rng);
    let x = random_acts(tokens, cols, &mut rng);
    let mut fast = poisoned(tokens * rows);
    let mut slow = poisoned(tokens * rows);
    cpu::matmul_with(
        Isa::Avx512,
        pool(),
        q,
        &w,
        rows,
        cols,
        &x,
        tokens,
        &mut fast,
    )
    .unwrap();
    cpu::matmul_with(
        Isa::Scalar,
        pool(),
        q,
        &w,
        rows,
        cols,
        &x,
        tokens,
        &mut slow,
    )
    .unwrap();
    let xq = quantize_acts(Isa::Scalar, q, &x, cols);
    let what = format!("{q} rows {rows} cols {cols} tokens {tokens}");
    assert_close(&what, &fast, &slow, &bound(q, &w, &xq, rows, cols), rows);
}

fn k_for(q: QType, pick: usize) -> usize {
    if q.is_k_quant() {
        [256, 512, 7 * 256, 28 * 256][pick % 4]
    } else {
        [32, 64, 96, 1408][pick % 4]
    }
}

/// Tiles of 2-4 tokens (the K-quants' row pairs share their weights across the tokens;
/// Q8_0 and Q4_K at 4 take the column layout), odd and even row counts,
/// one to three K slices of the row-pair kernels (33 super-blocks: past the 32, 21 and 16
/// a slice holds at 2, 3 and 4 tokens).
#[test]
fn few_token_tiles_match_scalar() {
    if !avx512() {
        return;
    }
    let formats = [
        QType::Q2_K,
        QType::Q3_K,
        QType::Q4_K,
        QType::Q5_K,
        QType::Q6_K,
        QType::Q8_0,
    ];
    for (i, q) in formats.into_iter().enumerate() {
        for tokens in 2..=4 {
            for rows in [1, 2, 3, 7, 16, 33] {
                for blocks in [1, 7, 33] {
                    let seed = (i * 1000 + tokens * 100 + rows * 10 + blocks) as u64;
                    check_against_scalar(q, rows, blocks * 256, tokens, seed);
                }
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn kernels_match_scalar(f in 0usize..FORMATS.len(), kp in 0usize..4, rows in 1usize..=70,
                            tokens in 1usize..=70, seed in any::<u64>()) {
        if avx512() {
            let q = FORMATS[f];
            check_against_scalar(q, rows, k_for(q, kp), tokens, seed);
        }
    }

    #[test]
    fn activation_quantizers_match_scalar_bytes(act in 0usize..2, blocks in 1usize..12, seed in any::<u64>()) {
        if avx512() {
            // Q4_K's activations are Q8_K, Q8_0's are Q8_0.
            let q = [QType::Q4_K, QType::Q8_0][act];
            let cols = blocks * 256;
            let mut rng = SplitMix64::new(seed);
            let x = random_acts(8, cols, &mut rng);
            prop_assert_eq!(quantize_acts(Isa::Avx512, q, &x, cols), quantize_acts(Isa::Scalar, q, &x, cols));
        }
    }
}

/// Rows that stress the quantizers' corner cases, 256 elements each: all zero, tiny,
/// subnormal (the inverse scale overflows to infinity), exact .5 ties after scaling, a
/// lone negative spike, equal magnitudes of both signs (the first one decides the sign of
/// the scale), NaNs, an infinity.
fn special_rows() -> Vec<f32> {
    let mut rows = vec![0f32; 256];
    rows.extend((0..256).map(|i| 1e-30 * (i as f32 - 100.0)));
    rows.extend(
        (0..256).map(|i| f32::from_bits(1 + i as u32) * if i % 3 == 0 { -1.0 } else { 1.0 }),
    );
    // With amax 127 both inverse scales are 1 (Q8_0) or -1 (Q8_K): x.5 values are ties.
    rows.extend((0..256).map(|i| {
        if i % 32 == 0 {
            127.0
        } else {
            (i % 9) as f32 - 4.5
        }
    }));
    rows.extend((0..256).map(|i| if i == 77 { -50.0 } else { 0.001 * i as f32 }));
    rows.extend((0..256).map(|i| if i % 2 == 0 { -3.0 } else { 3.0 }));
    rows.extend((0..256).map(|i| if i % 2 == 0 { 3.0 } else { -3.0 }));
    rows.extend((0..256).map(|i| [f32::NAN, 2.0, -1.0, 0.5][i % 4]));
    rows.extend((0..256).map(|i| {
        if i == 5 {
            f32::INFINITY
        } else {
            i as f32 - 128.0
        }
    }));
    rows
}

#[test]
fn special_rows_quantize_to_the_reference_bytes() {
    if !avx512() {
        return;
    }
    let x = special_rows();
    for q in [QType::Q4_K, QType::Q8_0] {
        let (fast, slow) = (
            quantize_acts(Isa::Avx512, q, &x, 256),
            quantize_acts(Isa::Scalar, q, &x, 256),
        );
        let row = cpu::act_row_bytes(q, 256).unwrap();
        for (r, (f, s)) in fast.chunks(row).zip(slow.chunks(row)).enumerate() {
            assert_eq!(f, s, "{} activations of special row {r}", q.vec_dot_type());
        }
    }
}

/// Tile edges of every format deterministically (the proptest above samples the rest):
/// odd and even token counts, GEMV and GEMM, register-tile remainders, K long enough
/// that the activations are repacked in several K slices (16 tokens hold 8 groups per
/// slice; 3104 = 97 Q8_0 blocks also ends in a partial group), and several row passes.
#[test]
fn every_tile_edge_matches_scalar() {
    if !avx512() {
        return;
    }
    for q in FORMATS {
        let k = k_for(q, 1);
        for (rows, tokens) in [
            (1, 1),
            (3, 2),
            (5, 3),
            (17, 7),
            (16, 8),
            (33, 9),
            (70, 17),
            (64, 64),
            (65, 70),
            (2, 33),
        ] {
            check_against_scalar(q, rows, k, tokens, (rows * 131 + tokens) as u64);
        }
        let long = if q.is_k_quant() { 28 * 256 } else { 3104 };
        for (rows, tokens) in [(5, 17), (3, 1), (9, 40)] {
            check_against_scalar(q, rows, long, tokens, (rows * 7 + tokens) as u64);
        }
        // GEMV work items of >128 rows at 8 tokens: several row passes over the
        // partial-sum buffer, each repacking K in two slices.
        check_against_scalar(q, 2100, 17 * 256, 8, 5);
    }
}

/// The GEMM path's blocking edges, by calling the table's `gemm` on one tile directly
/// (the matmul driver never hands out tiles this large): more rows than one unpacked
/// row block (128) and not a multiple of the register tiles, an odd token count over
/// several token groups, K over several activation slices (Q8_0: ending in a partial
/// group), and the tile inside a larger NaN-poisoned output (`ldo` > rows, an offset)
/// whose other elements must stay untouched.
#[test]
fn one_large_gemm_tile_matches_scalar() {
    if !avx512() {
        return;
    }
    let (rows, tokens, ldo, off) = (203, 37, 211, 3);
    for q in FORMATS {
        let k = if q.is_k_quant() {
            28 * 256
        } else if !q.is_k_quant() && q != QType::BF16 {
            3104
        } else {
            1000
        };
        let mut rng = SplitMix64::new(k as u64 + q.ggml_id() as u64);
        let w = random_weights(q, rows, k, &mut rng);
        let x = random_acts(tokens, k, &mut rng);
        let xq = quantize_acts(Isa::Avx512, q, &x, k);
        let act_row = cpu::act_row_bytes(q, k).unwrap();
        let fast = strided_gemm_tile(
            Isa::Avx512,
            q,
            &w,
            rows,
            k,
            &xq,
            act_row,
            tokens,
            (off, ldo),
        );
        let mut slow = poisoned(tokens * rows);
        cpu::matmul_with(Isa::Scalar, pool(), q, &w, rows, k, &x, tokens, &mut slow).unwrap();
        assert_close(
            &format!("{q} one tile {rows}x{tokens} k {k}"),
            &fast,
            &slow,
            &bound(q, &w, &xq, rows, k),
            rows,
        );
    }
}

/// Token counts past one GEMM work item (128 tokens) and row counts past one row block
/// (128 rows), so the driver's blocks and the kernel's remainders meet.
#[test]
fn gemm_work_items_match_scalar() {
    if !avx512() {
        return;
    }
    for q in FORMATS {
        let k = if q.is_k_quant() { 512 } else { 96 };
        for (rows, tokens) in [(131, 300), (257, 19)] {
            check_against_scalar(q, rows, k, tokens, (rows * 3 + tokens) as u64);
        }
    }
}

/// One-token products (the row-pair GEMV kernels of the integer formats): every row
/// remainder of the 4-row register tile, items long enough for the four row streams (37,
/// 66: the pool's items of 16 rows and more) with rows left for adjacent tiles, K from one
/// block to past one activation slice (32 super-blocks; Q8_0's 257 blocks end the second
/// slice in a one-block group).
#[test]
fn one_token_rows_and_slices_match_scalar() {
    if !avx512() {
        return;
    }
    for q in FORMATS {
        let ks: &[usize] = if q.is_k_quant() {
            &[256, 7 * 256, 33 * 256]
        } else {
            &[32, 288, 1408, 257 * 32]
        };
        for &k in ks {
            for rows in [1, 2, 3, 4, 5, 6, 7, 9, 13, 37, 66] {
                check_against_scalar(q, rows, k, 1, (rows * 1009 + k) as u64);
            }
        }
    }
}

/// One one-token tile called directly, inside a larger NaN-poisoned output: the row
/// outputs land at the tile's offset and nothing else is written.
#[test]
fn one_token_tile_writes_only_its_rows() {
    use kt_kernels::cpu::dispatch::{self, GemmTile};
    if !avx512() {
        return;
    }
    let (rows, off) = (11, 5);
    for q in FORMATS {
        let k = if q.is_k_quant() { 3 * 256 } else { 288 };
        let mut rng = SplitMix64::new(q.ggml_id() as u64 + 77);
        let w = random_weights(q, rows, k, &mut rng);
        let x = random_acts(1, k, &mut rng);
        let xq = quantize_acts(Isa::Avx512, q, &x, k);
        let mut big = poisoned(off + rows + 7);
        let tile = GemmTile {
            qtype: q,
            k,
            w: w.as_ptr(),
            w_stride: q.row_bytes(k).unwrap(),
            rows,
            a: xq.as_ptr(),
            a_stride: xq.len(),
            tokens: 1,
            out: big[off..].as_mut_ptr(),
            ldo: rows,
        };
        let kernels = dispatch::table(Isa::Avx512).unwrap().get(q).unwrap();
        // SAFETY: the tile describes the weights (rows x row_bytes), one quantized
        // activation row and `rows` output elements inside `big`; the table only holds
        // kernels this CPU runs (checked above).
        unsafe { (kernels.gemm)(&tile) };
        let mut slow = poisoned(rows);
        cpu::matmul_with(Isa::Scalar, pool(), q, &w, rows, k, &x, 1, &mut slow).unwrap();
        for (i, v) in big.iter().enumerate() {
            if !(off..off + rows).contains(&i) {
                assert!(v.is_nan(), "{q}: element {i} outside the tile was written");
            }
        }
        assert_close(
            &format!("{q} one-token tile"),
            &big[off..off + rows],
            &slow,
            &bound(q, &w, &xq, rows, k),
            rows,
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// The one-token kernels on random shapes (the general proptest rarely draws 1 token).
    #[test]
    fn one_token_kernels_match_scalar(f in 0usize..FORMATS.len(), kp in 0usize..4,
                                      rows in 1usize..=70, seed in any::<u64>()) {
        if avx512() {
            let q = FORMATS[f];
            check_against_scalar(q, rows, k_for(q, kp), 1, seed);
        }
    }
}
