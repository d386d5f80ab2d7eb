//! Repacked layouts against the weights they came from: the relative Frobenius error of
//! each layout (printed: `cargo test --test moe_repacked_layouts -- --nocapture`) within
//! bounds that follow from the rounding, and the repack from GGUF stacks.

use std::sync::atomic::{AtomicUsize, Ordering};

use kt_kernels::cpu::moe::repack::{relative_error, repack_error, RepackFormat, RepackedStack};
use kt_kernels::cpu::moe::ExpertStack;
use kt_kernels::quant::{self, QType};
use kt_kernels::util::SplitMix64;

/// Gaussian rows of varying scale with an outlier every 7th row (never zero).
fn weights(experts: usize, rows: usize, cols: usize, seed: u64) -> Vec<f32> {
    let mut rng = SplitMix64::new(seed);
    let mut f = vec![0f32; experts * rows * cols];
    for (r, row) in f.chunks_mut(cols).enumerate() {
        rng.fill_normal(row, 0.02 * [1.0, 0.4, 1.7, 0.8][r % 4]);
        if r % 7 == 3 {
            row[rng.below(cols)] *= 8.0;
        }
    }
    f
}

fn roundtrip(
    format: RepackFormat,
    w: &[f32],
    experts: usize,
    rows: usize,
    cols: usize,
) -> Vec<f32> {
    let s = RepackedStack::from_f32(format, w, experts, rows, cols).unwrap();
    let mut out = vec![f32::NAN; w.len()];
    for e in 0..experts {
        s.dequantize_expert(e, &mut out[e * rows * cols..(e + 1) * rows * cols])
            .unwrap();
    }
    out
}

#[test]
fn per_element_errors_stay_within_the_rounding_bounds() {
    let (e, rows, cols) = (2, 48, 512);
    let w = weights(e, rows, cols, 1);
    // BF16 (8 significant bits): round to nearest even, at most half an ulp = 2^-8 relative.
    let b = roundtrip(RepackFormat::Bf16, &w, e, rows, cols);
    for (&a, &q) in w.iter().zip(&b) {
        assert!((a - q).abs() <= a.abs() * 2f32.powi(-8), "bf16 {a} -> {q}");
    }
    for g in [32, 64, 128] {
        let q8 = roundtrip(RepackFormat::Int8 { group: g }, &w, e, rows, cols);
        let q4 = roundtrip(RepackFormat::Int4 { group: g }, &w, e, rows, cols);
        let s4 =
            RepackedStack::from_f32(RepackFormat::Int4 { group: g }, &w, e, rows, cols).unwrap();
        for (grp, ((a, b8), b4)) in w.chunks(g).zip(q8.chunks(g)).zip(q4.chunks(g)).enumerate() {
            let amax = a.iter().fold(0f32, |m, v| m.max(v.abs()));
            // INT8: half a step of amax/127, plus the f16 rounding of the step (2^-11
            // relative) times |q| <= 127: 0.5 + 127 * 2^-11 < 0.57 steps.
            let step8 = amax / 127.0;
            // INT4, folded scales `d_n * m` (`fold.rs`): the multiplier search keeps |m|
            // within [floor(amax / 8 d_n), ceil(amax / 6.5 d_n)] (at least 1, at most
            // 16): the step is at most amax/6.5 + d_n (half of it per element) and at
            // least amax/8 - d_n, so +amax clamped at +7 steps is off by at most
            // amax/8 + 7 d_n (16 d_n, the top, is above amax/8 up to the f16 rounding).
            let r = grp * g / cols;
            let dn = s4.row_scale(r / rows, r % rows).expect("INT4 stacks fold");
            let bound4 = (amax / 8.0 + 8.0 * dn).max(amax / 13.0 + dn / 2.0) * 1.001;
            for ((&x, &y8), &y4) in a.iter().zip(b8).zip(b4) {
                assert!(
                    (x - y8).abs() <= 0.57 * step8,
                    "int8 g{g} group {grp}: {x} -> {y8}"
                );
                assert!(
                    (x - y4).abs() <= bound4,
                    "int4 g{g} group {grp}: {x} -> {y4}"
                );
            }
            // INT4 scales are folded (`d_n * m`, m integer): per group the multiplier
            // search covers both integers around amax / (7 d_n), so the result is never
            // worse than the plain symmetric quantizer (+amax/7) on that grid.
            let plain = [(amax / (7.0 * dn)).floor(), (amax / (7.0 * dn)).ceil()]
                .into_iter()
                .map(|m| m.clamp(1.0, 16.0) * dn)
                .map(|d| {
                    a.iter()
                        .map(|&x| (x - d * (x / d).round().clamp(-8.0, 7.0)).powi(2))
                        .sum::<f32>()
                })
                .fold(f32::INFINITY, f32::min);
            let ours: f32 = a.iter().zip(b4).map(|(&x, &y)| (x - y).powi(2)).sum();
            assert!(
                ours <= plain * 1.0001 + 1e-12,
                "int4 g{g} group {grp}: {ours} > plain {plain}"
            );
        }
    }
}

#[test]
fn layout_errors_against_f32_and_gguf_originals() {
    let (e, rows, cols) = (4, 64, 1024);
    let w = weights(e, rows, cols, 2);
    let mut report = Vec::new();
    for f in [
        RepackFormat::Bf16,
        RepackFormat::Int8 { group: 32 },
        RepackFormat::Int8 { group: 64 },
        RepackFormat::Int8 { group: 128 },
        RepackFormat::Int4 { group: 32 },
        RepackFormat::Int4 { group: 64 },
        RepackFormat::Int4 { group: 128 },
    ] {
        let err = relative_error(&w, &roundtrip(f, &w, e, rows, cols));
        report.push((f, err));
        println!(
            "{:>10} ({:5.2} bits/weight): relative Frobenius error {:.5} vs f32",
            f.name(),
            f.bits_per_weight(),
            err
        );
    }
    // Larger groups can only coarsen the scales: errors grow with G for each family.
    assert!(
        report[1].1 < report[2].1 && report[2].1 < report[3].1,
        "{report:?}"
    );
    assert!(
        report[4].1 < report[5].1 && report[5].1 < report[6].1,
        "{report:?}"
    );
    // The same from GGUF stacks: the error is against each stack's own dequantization.
    for q in [QType::Q4_K, QType::Q8_0, QType::Q5_0] {
        let mut bytes = vec![0u8; e * rows * q.row_bytes(cols).unwrap()];
        quant::quantize(q, &w, &mut bytes).unwrap();
        let stack = ExpertStack::from_vec(q, bytes, e, rows, cols).unwrap();
        let mut deq = vec![0f32; w.len()];
        quant::dequantize(q, stack.bytes(), &mut deq).unwrap();
        for (f, err_f32) in &report {
            // Every expert reported done once.
            let done = AtomicUsize::new(0);
            let r = RepackedStack::from_stack_reporting(&stack, *f, &|| {
                done.fetch_add(1, Ordering::Relaxed);
            })
            .unwrap();
            assert_eq!(done.load(Ordering::Relaxed), e, "{q} -> {}", f.name());
            let err = repack_error(&stack, &r).unwrap();
            // Requantizing the GGUF values is the same operation on slightly different
            // weights: the error is the layout's own, within 10% of the f32 case.
            let direct = relative_error(&deq, &roundtrip(*f, &deq, e, rows, cols));
            assert!(
                (err - direct).abs() <= 1e-9 + 1e-6 * direct,
                "{q} -> {}: {err} vs {direct}",
                f.name()
            );
            assert!(
                err <= err_f32 * 1.1 + 1e-6,
                "{q} -> {}: {err} vs {err_f32} from f32",
                f.name()
            );
            println!(
                "{q:>5} -> {:>10}: relative Frobenius error {err:.5} vs the {q} weights",
                f.name()
            );
        }
    }
}

#[test]
fn bad_shapes_are_errors() {
    let w = weights(1, 32, 256, 3);
    assert!(RepackedStack::from_f32(RepackFormat::Int4 { group: 64 }, &w, 1, 32, 255).is_err());
    assert!(
        RepackedStack::from_f32(RepackFormat::Int4 { group: 64 }, &w[1..], 1, 32, 256).is_err()
    );
    assert!(RepackedStack::from_f32(RepackFormat::Int8 { group: 96 }, &w, 1, 32, 256).is_err());
    let s = RepackedStack::from_f32(RepackFormat::Int8 { group: 64 }, &w, 1, 32, 256).unwrap();
    assert!(s.dequantize_expert(1, &mut vec![0f32; 32 * 256]).is_err());
    assert!(s.dequantize_expert(0, &mut vec![0f32; 31 * 256]).is_err());
}
