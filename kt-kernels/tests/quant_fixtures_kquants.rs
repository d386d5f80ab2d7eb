//! The K-quants' scalar references (Q2_K..Q6_K, Q8_K) against ggml's outputs in
//! `tests/fixtures/quant` (see its manifest.json): dequantization bit for bit, the
//! quantizers' round-trip error per row kind and their byte matches, the dots with Q8_K
//! activations, and the Q8_K quantizer byte for byte.

mod common;

use common::*;
use kt_kernels::quant::{self, QType};
use kt_kernels::util::SplitMix64;
use kt_kernels::KtError;

const KQUANTS: [QType; 5] = [
    QType::Q2_K,
    QType::Q3_K,
    QType::Q4_K,
    QType::Q5_K,
    QType::Q6_K,
];

const KIND_NAMES: [&str; 8] = [
    "normal", "small", "outliers", "zeros", "constant", "uniform", "tiny", "spikes",
];

fn row_bytes(t: QType) -> usize {
    t.row_bytes(COLS).unwrap()
}

/// Our quantization of every weights.f32 row.
fn our_quant(t: QType) -> Vec<u8> {
    let w = weights();
    let mut q = vec![0u8; ROWS * row_bytes(t)];
    quant::quantize(t, &w, &mut q).unwrap();
    q
}

fn dequant(t: QType, q: &[u8]) -> Vec<f32> {
    let mut y = poisoned(q.len() / t.block_bytes() * t.block_elems());
    quant::dequantize(t, q, &mut y).unwrap();
    y
}

/// Rows of `a` and `b` (ROWS x row_len each) that are byte-identical.
fn matching_rows(a: &[u8], b: &[u8], row_len: usize) -> Vec<usize> {
    (0..ROWS)
        .filter(|&r| a[r * row_len..(r + 1) * row_len] == b[r * row_len..(r + 1) * row_len])
        .collect()
}

/// Asserts two f32 slices are bit-identical, naming the first difference.
fn assert_bits_eq(what: &str, ours: &[f32], theirs: &[f32]) {
    assert_eq!(ours.len(), theirs.len(), "{what}: length");
    for (i, (&a, &b)) in ours.iter().zip(theirs).enumerate() {
        assert!(
            a.to_bits() == b.to_bits(),
            "{what}: element {i} (row {}, col {}): ours {a:e} ggml {b:e}",
            i / COLS,
            i % COLS
        );
    }
}

#[test]
fn dequantize_is_bit_exact_with_ggml() {
    for t in KQUANTS.into_iter().chain([QType::Q8_K]) {
        let ours = dequant(t, &ggml_quant(t));
        assert_bits_eq(t.name(), &ours, &ggml_dequant(t));
        // The load path's vectorized dequantization too.
        let q = ggml_quant(t);
        let mut fast = poisoned(ours.len());
        kt_kernels::cpu::dequantize(t, &q, &mut fast).unwrap();
        assert_bits_eq(&format!("{t} (cpu::dequantize)"), &fast, &ggml_dequant(t));
    }
}

/// Q8_K block bytes: `d` (4), `qs` (256), then `bsums` (32).
const Q8K_BSUMS_AT: usize = 4 + 256;

/// Whether two Q8_K rows agree on every byte ggml defines. For an all-zero block ggml
/// writes `d = 0` and zero quants but leaves `bsums` unwritten (the fixture holds
/// whatever was in its buffer there); ours must hold the sums of its quants, zeros.
fn q8k_rows_agree(ours: &[u8], ggml: &[u8]) -> Result<(), String> {
    let bb = QType::Q8_K.block_bytes();
    for (b, (o, g)) in ours.chunks_exact(bb).zip(ggml.chunks_exact(bb)).enumerate() {
        let d_zero = g[..4] == [0; 4];
        let defined = if d_zero { Q8K_BSUMS_AT } else { bb };
        if let Some(k) = (0..defined).find(|&k| o[k] != g[k]) {
            return Err(format!("block {b} byte {k}: ours {} ggml {}", o[k], g[k]));
        }
        if d_zero && o[Q8K_BSUMS_AT..].iter().any(|&v| v != 0) {
            return Err(format!("block {b}: all-zero block with non-zero bsums"));
        }
    }
    Ok(())
}

#[test]
fn q8_k_quantize_is_byte_exact_with_ggml() {
    let ours = our_quant(QType::Q8_K);
    let theirs = ggml_quant(QType::Q8_K);
    let rb = row_bytes(QType::Q8_K);
    let mut zero_blocks = 0;
    for r in 0..ROWS {
        let (a, b) = (&ours[r * rb..(r + 1) * rb], &theirs[r * rb..(r + 1) * rb]);
        if let Err(e) = q8k_rows_agree(a, b) {
            panic!("q8_K row {r} (kind {}): {e}", KIND_NAMES[r % 8]);
        }
        zero_blocks += b
            .chunks_exact(QType::Q8_K.block_bytes())
            .filter(|blk| blk[..4] == [0; 4])
            .count();
    }
    // Only the zeros rows (kind 3) have all-zero blocks: 4 rows of 4 blocks.
    assert_eq!(zero_blocks, 16);
}

/// Round-trip RMSE of each row kind (the 4 rows of that kind together): ours must be no
/// worse than ggml's by more than 1%.
#[test]
fn quantize_rmse_per_row_kind_is_no_worse_than_ggml() {
    let w = weights();
    let mut failures = Vec::new();
    let mut table = Vec::new();
    for t in KQUANTS {
        let ours = dequant(t, &our_quant(t));
        let mut ratios = Vec::new();
        let theirs = ggml_dequant(t);
        for (kind, kind_name) in KIND_NAMES.iter().enumerate() {
            let rows: Vec<usize> = (kind..ROWS).step_by(8).collect();
            let gather = |v: &[f32]| -> Vec<f32> {
                rows.iter()
                    .flat_map(|&r| v[r * COLS..(r + 1) * COLS].iter().copied())
                    .collect()
            };
            let x = gather(&w);
            let (ours_rmse, ggml_rmse) = (rmse(&gather(&ours), &x), rmse(&gather(&theirs), &x));
            assert!(ours_rmse.is_finite(), "{t} kind {kind}: RMSE {ours_rmse}");
            ratios.push(if ggml_rmse > 0.0 {
                format!("{:.4}", ours_rmse / ggml_rmse)
            } else {
                format!("{ours_rmse:e}/0")
            });
            if ours_rmse > ggml_rmse * 1.01 {
                failures.push(format!(
                    "{t} kind {kind} ({}): ours {ours_rmse:e} ggml {ggml_rmse:e} ratio {:.4}",
                    kind_name,
                    ours_rmse / ggml_rmse
                ));
            }
        }
        table.push(format!(
            "{t} ours/ggml RMSE per kind {KIND_NAMES:?}: {ratios:?}"
        ));
    }
    eprintln!("{}", table.join("\n"));
    assert!(
        failures.is_empty(),
        "RMSE worse than ggml:\n{}",
        failures.join("\n")
    );
}

/// How many fixture rows our quantizers reproduce byte for byte. The references follow
/// ggml's algorithms operation for operation, so every row must match.
#[test]
fn quantize_bytes_match_ggml_rows() {
    let mut report = Vec::new();
    let mut all = true;
    for t in KQUANTS {
        let rows = matching_rows(&our_quant(t), &ggml_quant(t), row_bytes(t));
        let missing: Vec<usize> = (0..ROWS).filter(|r| !rows.contains(r)).collect();
        all &= missing.is_empty();
        report.push(format!(
            "{t}: {}/{ROWS} rows byte-exact; differing rows {missing:?}",
            rows.len()
        ));
    }
    // Q8_K: all bytes, and the bytes ggml defines (see q8k_rows_agree).
    let (ours, theirs) = (our_quant(QType::Q8_K), ggml_quant(QType::Q8_K));
    let rb = row_bytes(QType::Q8_K);
    let raw = matching_rows(&ours, &theirs, rb).len();
    let defined = (0..ROWS)
        .filter(|&r| {
            q8k_rows_agree(&ours[r * rb..(r + 1) * rb], &theirs[r * rb..(r + 1) * rb]).is_ok()
        })
        .count();
    all &= defined == ROWS;
    report.push(format!(
        "q8_K: {raw}/{ROWS} rows byte-exact, {defined}/{ROWS} on the bytes ggml defines"
    ));
    eprintln!("{}", report.join("\n"));
    assert!(all, "rows differ from ggml:\n{}", report.join("\n"));
}

/// Our Q8_K quantization of activations.f32, one row per activation row.
fn q8k_activations() -> Vec<Vec<u8>> {
    let a = activations();
    let rb = row_bytes(QType::Q8_K);
    a.chunks_exact(COLS)
        .map(|row| {
            let mut q = vec![0u8; rb];
            quant::quantize(QType::Q8_K, row, &mut q).unwrap();
            q
        })
        .collect()
}

/// Per-element scale part and min part of a dequantized weight row, `w = s - m`
/// (`m = 0` for the symmetric formats), from the row's own block fields.
fn mins_per_element(t: QType, row: &[u8]) -> Vec<f32> {
    use kt_kernels::quant::blocks::{read_block, BlockQ2K, BlockQ4K, BlockQ5K};
    use kt_kernels::quant::reference::common::get_scale_min_k4;
    let nb = row.len() / t.block_bytes();
    (0..nb * 256)
        .map(|e| {
            let (b, k) = (e / 256, e % 256);
            match t {
                QType::Q2_K => {
                    let blk: BlockQ2K = read_block(row, b);
                    blk.dmin.to_f32() * (blk.scales[k / 16] >> 4) as f32
                }
                QType::Q4_K => {
                    let blk: BlockQ4K = read_block(row, b);
                    blk.dmin.to_f32() * get_scale_min_k4(k / 32, &blk.scales).1 as f32
                }
                QType::Q5_K => {
                    let blk: BlockQ5K = read_block(row, b);
                    blk.dmin.to_f32() * get_scale_min_k4(k / 32, &blk.scales).1 as f32
                }
                _ => 0.0,
            }
        })
        .collect()
}

/// The magnitude the dot's float arithmetic works at: the sum over elements of
/// |scale part * act| + |min part * act|. Every partial sum any implementation forms
/// (ours per block, ggml's per SIMD lane) is bounded by it, so each f32 rounding on
/// the way costs at most 2^-24 of it, however much the terms cancel.
fn dot_magnitude(t: QType, w: &[u8], act: &[u8]) -> f64 {
    let x = dequant(t, w);
    let m = mins_per_element(t, w);
    let a = dequant(QType::Q8_K, act);
    (0..x.len())
        .map(|e| ((x[e] + m[e]) as f64 * a[e] as f64).abs() + (m[e] as f64 * a[e] as f64).abs())
        .sum()
}

/// Allowed |ours - other| for a dot whose float terms sum to `magnitude` in absolute
/// value: 1e-5 relative, or, where the terms cancel, the f32 roundings of both sides
/// (each side rounds at most ~8 partial sums per block chain: 2 * 8 * 2^-24 < 1e-6).
fn dot_tolerance(value: f32, magnitude: f64) -> f64 {
    (1e-5 * value.abs() as f64).max(1e-6 * magnitude)
}

#[test]
fn vec_dot_matches_ggml() {
    let acts = q8k_activations();
    let mut worst = (0f64, String::new());
    let mut worst_of_magnitude = 0f64;
    let mut cancelling = Vec::new();
    for t in KQUANTS {
        let w = ggml_quant(t);
        let expected = ggml_dot(t);
        let rb = row_bytes(t);
        for r in 0..ROWS {
            let row = &w[r * rb..(r + 1) * rb];
            for (a, act) in acts.iter().enumerate() {
                let got = quant::vec_dot(t, COLS, row, act).unwrap();
                let want = expected[r * ACT_ROWS + a];
                let what = format!(
                    "{t} row {r} ({}) act {a}: ours {got:e} ggml {want:e}",
                    KIND_NAMES[r % 8]
                );
                if r % 8 == 3 {
                    assert!(
                        got == 0.0 && want == 0.0,
                        "zero row must give exactly 0: {what}"
                    );
                    continue;
                }
                let mag = dot_magnitude(t, row, act);
                let diff = (got as f64 - want as f64).abs();
                assert!(
                    diff <= dot_tolerance(want, mag),
                    "{what}: |diff| {diff:e}, term magnitude {mag:e}"
                );
                worst_of_magnitude = worst_of_magnitude.max(diff / mag);
                let rel = diff / want.abs() as f64;
                if rel > 1e-5 {
                    cancelling.push(format!(
                        "{what} rel {rel:.2e} (terms {:.1e}x the result)",
                        mag / want.abs() as f64
                    ));
                }
                if rel > worst.0 {
                    worst = (rel, what);
                }
            }
        }
    }
    eprintln!(
        "max relative dot error vs ggml: {:e} at {}",
        worst.0, worst.1
    );
    eprintln!("max |ours - ggml| / term magnitude: {worst_of_magnitude:e}");
    eprintln!(
        "beyond 1e-5 relative (cancelling sums):\n{}",
        cancelling.join("\n")
    );
}

/// The integer formulation of the dot agrees with the f64 dot of the two dequantized
/// rows up to f32 rounding, on random data of several blocks.
#[test]
fn vec_dot_agrees_with_dequantized_rows() {
    let mut rng = SplitMix64::new(42);
    let n = 4 * 256;
    let mut x = vec![0f32; n];
    let mut y = vec![0f32; n];
    for trial in 0..8 {
        rng.fill_normal(&mut x, 0.5 + trial as f32);
        rng.fill_normal(&mut y, 2.0);
        // Shift some weights so the mins of the asymmetric formats are exercised.
        for v in x.iter_mut().step_by(3) {
            *v += 1.0;
        }
        let mut act = vec![0u8; QType::Q8_K.row_bytes(n).unwrap()];
        quant::quantize(QType::Q8_K, &y, &mut act).unwrap();
        let ya = dequant(QType::Q8_K, &act);
        for t in KQUANTS {
            let mut w = vec![0u8; t.row_bytes(n).unwrap()];
            quant::quantize(t, &x, &mut w).unwrap();
            let xw = dequant(t, &w);
            let exact: f64 = xw.iter().zip(&ya).map(|(&a, &b)| a as f64 * b as f64).sum();
            let got = quant::vec_dot(t, n, &w, &act).unwrap() as f64;
            // Our roundings plus those of the dequantized values, each 2^-24 of the
            // term magnitude at most.
            let mag = dot_magnitude(t, &w, &act);
            assert!(
                (got - exact).abs() <= 1e-6 * mag,
                "{t} trial {trial}: {got} vs {exact} (terms {mag})"
            );
        }
    }
}

#[test]
fn checked_api_refuses_partial_blocks() {
    for t in KQUANTS.into_iter().chain([QType::Q8_K]) {
        let x = vec![1.0f32; 300];
        let mut q = vec![0u8; 2 * t.block_bytes()];
        match quant::quantize(t, &x, &mut q) {
            Err(KtError::NotBlockMultiple {
                qtype,
                len: 300,
                block: 256,
            }) => assert_eq!(qtype, t),
            other => panic!("{t}: quantize of 300 elements gave {other:?}"),
        }
        let mut y = vec![0f32; 300];
        assert!(
            quant::dequantize(t, &q, &mut y).is_err(),
            "{t}: dequantize of 300 elements"
        );
        // Whole blocks but a destination of the wrong size.
        let x = vec![1.0f32; 512];
        let mut short = vec![0u8; 2 * t.block_bytes() - 1];
        assert!(
            matches!(
                quant::quantize(t, &x, &mut short),
                Err(KtError::Length { .. })
            ),
            "{t}"
        );
    }
}
