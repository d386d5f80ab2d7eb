//! The repacked GEMM kernels: the scalar reference against plain dequantized dot products
//! (f64), and the AVX512 and AMX kernels against the scalar reference, for every layout,
//! odd panel counts and token counts around the 16-row AMX tile and 4-token VNNI pass.
//! AVX512/AMX cases are skipped with a message where the CPU lacks them (CI may be
//! AVX2-only). Outputs start as NaN so unwritten elements fail. INT rows are quantized
//! per group and per token (the folded INT4 AMX kernel's prefill arithmetic; its scalar
//! reference is checked against the dequantized dot products like the per-group one).

use kt_kernels::cpu::moe::repack::{
    dequantize_act_row, kernel, quantize_act_row, quantize_act_row_with, silu_mul_with, ActScales,
    Kernel, RepackFormat, RepackedStack,
};
use kt_kernels::cpu::Isa;
use kt_kernels::util::SplitMix64;

const PAD: usize = 32;

const FORMATS: [RepackFormat; 7] = [
    RepackFormat::Int8 { group: 32 },
    RepackFormat::Int8 { group: 64 },
    RepackFormat::Int8 { group: 128 },
    RepackFormat::Int4 { group: 32 },
    RepackFormat::Int4 { group: 64 },
    RepackFormat::Int4 { group: 128 },
    RepackFormat::Bf16,
];

struct Case {
    stack: RepackedStack,
    scales: ActScales,
    w: Vec<f32>,
    act: Vec<u8>,
    a: Vec<f32>,
}

fn case(
    f: RepackFormat,
    experts: usize,
    rows: usize,
    cols: usize,
    tokens: usize,
    seed: u64,
    scales: ActScales,
) -> Case {
    let mut rng = SplitMix64::new(seed);
    let mut wf = vec![0f32; experts * rows * cols];
    for (r, row) in wf.chunks_mut(cols).enumerate() {
        rng.fill_normal(row, 0.05 * [1.0, 0.3, 2.0][r % 3]);
    }
    let stack = RepackedStack::from_f32(f, &wf, experts, rows, cols).unwrap();
    let mut w = vec![0f32; wf.len()];
    for e in 0..experts {
        stack
            .dequantize_expert(e, &mut w[e * rows * cols..(e + 1) * rows * cols])
            .unwrap();
    }
    let arow = f.act_row_bytes(cols);
    let mut x = vec![0f32; tokens * cols];
    for (t, row) in x.chunks_mut(cols).enumerate() {
        rng.fill_normal(row, [1.0, 0.01, 5.0][t % 3]);
        row[rng.below(cols)] *= 10.0;
    }
    // PAD extra rows after the tokens (readable padding for whole AMX tiles).
    let mut act = vec![0u8; (tokens + PAD) * arow];
    let mut a = vec![0f32; tokens * cols];
    for t in 0..tokens {
        quantize_act_row(
            f,
            scales,
            &x[t * cols..(t + 1) * cols],
            &mut act[t * arow..(t + 1) * arow],
        );
        dequantize_act_row(
            f,
            &act[t * arow..(t + 1) * arow],
            cols,
            &mut a[t * cols..(t + 1) * cols],
        );
    }
    for (i, b) in act[tokens * arow..].iter_mut().enumerate() {
        *b = (i * 37 % 251) as u8;
    }
    Case {
        stack,
        scales,
        w,
        act,
        a,
    }
}

/// Runs `kern` on rows `r0..r1` of expert `e`; returns the outputs and, per output,
/// `sum_k |w a|` (the scale of the rounding bound).
/// With `padded`, the activation slice keeps its PAD rows after the tokens.
fn run(
    c: &Case,
    kern: Kernel,
    e: usize,
    r0: usize,
    r1: usize,
    tokens: usize,
    padded: bool,
) -> (Vec<f32>, Vec<f64>, Vec<f64>) {
    let (rows, cols) = (c.stack.rows(), c.stack.cols());
    let mut out = vec![f32::NAN; tokens * (r1 - r0)];
    let arow = c.stack.format().act_row_bytes(cols);
    let act = if padded {
        &c.act[..]
    } else {
        &c.act[..tokens * arow]
    };
    kernel::gemm(kern, &c.stack, e, r0..r1, act, c.scales, tokens, &mut out).unwrap();
    let mut exact = Vec::new();
    let mut mag = Vec::new();
    for t in 0..tokens {
        for r in r0..r1 {
            let w = &c.w[(e * rows + r) * cols..(e * rows + r + 1) * cols];
            let a = &c.a[t * cols..(t + 1) * cols];
            exact.push(
                w.iter()
                    .zip(a)
                    .map(|(&w, &a)| w as f64 * a as f64)
                    .sum::<f64>(),
            );
            mag.push(
                w.iter()
                    .zip(a)
                    .map(|(&w, &a)| (w as f64 * a as f64).abs())
                    .sum::<f64>(),
            );
        }
    }
    (out, exact, mag)
}

/// The activation scalings a format's rows take (BF16 has no scales).
fn scalings(f: RepackFormat) -> &'static [ActScales] {
    if f.group().is_some() {
        &[ActScales::PerGroup, ActScales::PerToken]
    } else {
        &[ActScales::PerGroup]
    }
}

#[test]
fn scalar_reference_matches_dequantized_dot_products() {
    for ((i, f), &sc) in FORMATS
        .into_iter()
        .enumerate()
        .flat_map(|f| scalings(f.1).iter().map(move |s| (f, s)))
    {
        let c = case(f, 2, 48, 512, 5, 10 + i as u64, sc);
        assert_eq!(
            c.stack.folded(),
            matches!(f, RepackFormat::Int4 { .. }),
            "{f:?}: INT4 stacks of this repacker always fold"
        );
        let (out, exact, mag) = run(&c, Kernel::Scalar, 1, 16, 48, 5, false);
        for (j, ((&o, &x), &m)) in out.iter().zip(&exact).zip(&mag).enumerate() {
            // Both sides are f64 sums of the same products, rounded once to f32; the
            // dequantized w and a were each rounded to f32 (2^-24 relative) first.
            let tol = 2f64.powi(-24) * (x.abs() + 2.0 * m) + 1e-30;
            assert!(
                o.is_finite() && (o as f64 - x).abs() <= tol,
                "{} {sc:?} output {j}: {o} vs {x}",
                f.name()
            );
        }
    }
}

#[test]
fn fast_kernels_match_the_scalar_reference() {
    let mut kernels = Vec::new();
    for k in [Kernel::Vnni, Kernel::Amx] {
        match k
            .check(RepackFormat::Bf16)
            .and(k.check(RepackFormat::Int8 { group: 64 }))
        {
            Ok(()) => kernels.push(k),
            Err(e) => eprintln!("skipping the {k:?} kernel: {e}"),
        }
    }
    let cols = 384;
    for ((i, f), &sc) in FORMATS
        .into_iter()
        .enumerate()
        .flat_map(|f| scalings(f.1).iter().map(move |s| (f, s)))
    {
        for tokens in [1, 2, 5, 7, 16, 17, 21, 33, 48, 70] {
            let c = case(
                f,
                3,
                144,
                cols.max(f.group().unwrap_or(0) * 3),
                tokens,
                100 + i as u64 * 17 + tokens as u64,
                sc,
            );
            let k_len = c.stack.cols();
            // Rows 16..80: 4 panels; rows 32..80: 3 (an odd count leaves a lone panel);
            // 0..80: 5 (the INT AMX kernel's blocks of 4 panels, then a lone one);
            // 48..80: 2; 0..144: 9 (the one-token VNNI kernel's four runs of two panels,
            // the two-token one's two runs of four, then a lone one).
            for (r0, r1) in [(16, 80), (32, 80), (0, 80), (48, 80), (0, 144)] {
                let (want, _, mag) = run(&c, Kernel::Scalar, 2, r0, r1, tokens, false);
                for (kern, padded) in kernels.iter().flat_map(|&k| [(k, false), (k, true)]) {
                    let (got, _, _) = run(&c, kern, 2, r0, r1, tokens, padded);
                    // The fast kernels sum in f32: per group (INT) or per product (BF16),
                    // at most `terms + 2` roundings of at most 2^-24 of sum |w a| each.
                    let terms = f.group().map_or(k_len, |g| k_len / g) as f64;
                    for (j, ((&g, &w), &m)) in got.iter().zip(&want).zip(&mag).enumerate() {
                        let tol = (terms + 2.0) * 2f64.powi(-24) * m + 1e-30;
                        assert!(
                            g.is_finite() && (g as f64 - w as f64).abs() <= tol,
                            "{kern:?} (padded {padded}) {} {sc:?} T={tokens} rows {r0}..{r1} output {j} (token {}, row {}): {g} vs {w} +- {tol:e}",
                            f.name(),
                            j / (r1 - r0),
                            r0 + j % (r1 - r0)
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn fast_activation_quantizer_gives_the_reference_bytes() {
    let mut rng = SplitMix64::new(77);
    for isa in Isa::available() {
        for f in FORMATS {
            let cols = 768;
            let mut x = vec![0f32; cols];
            rng.fill_normal(&mut x, 2.0);
            // Ties: values that land exactly on .5 steps of their group's scale.
            x[5] = 0.0;
            x[40..48]
                .iter_mut()
                .enumerate()
                .for_each(|(i, v)| *v = i as f32 * 0.5 - 2.0);
            for &sc in scalings(f) {
                let mut want = vec![0u8; f.act_row_bytes(cols)];
                let mut got = vec![0xAAu8; f.act_row_bytes(cols)];
                quantize_act_row(f, sc, &x, &mut want);
                quantize_act_row_with(isa, f, sc, &x, &mut got);
                assert_eq!(got, want, "{isa} {} {sc:?}", f.name());
            }
        }
    }
}

#[test]
fn fast_silu_is_within_a_few_ulp_of_the_scalar_formula() {
    let mut rng = SplitMix64::new(5);
    let mut g: Vec<f32> = (0..4000).map(|_| rng.normal() * 4.0).collect();
    g.extend([
        0.0,
        -0.0,
        1e-30,
        -1e-30,
        20.0,
        -20.0,
        87.0,
        -87.0,
        -88.5,
        -89.0,
        -95.0,
        -104.0,
        -200.0,
        104.0,
        200.0,
        f32::MAX,
        -f32::MAX,
    ]);
    let u: Vec<f32> = (0..g.len()).map(|i| [1.0, -0.5, 3.0][i % 3]).collect();
    let mut want = vec![f32::NAN; g.len()];
    silu_mul_with(Isa::Scalar, &g, &u, &mut want);
    for isa in Isa::available() {
        let mut got = vec![f32::NAN; g.len()];
        silu_mul_with(isa, &g, &u, &mut got);
        for i in 0..g.len() {
            // exp's polynomial (~1 ulp), the scalar expf (~0.5), the product and the
            // quotient (0.5 each): 8 ulp of the result leaves room.
            let tol = 8.0 * f32::EPSILON / 2.0 * want[i].abs() + 1e-37;
            assert!(
                (got[i] - want[i]).abs() <= tol,
                "{isa} g={} u={}: {} vs {}",
                g[i],
                u[i],
                got[i],
                want[i]
            );
        }
    }
}

#[test]
fn unavailable_or_bad_calls_are_errors() {
    let c = case(
        RepackFormat::Int4 { group: 64 },
        1,
        32,
        128,
        2,
        5,
        ActScales::PerGroup,
    );
    let mut out = vec![0f32; 2 * 32];
    assert!(kernel::gemm(
        Kernel::Scalar,
        &c.stack,
        1,
        0..32,
        &c.act,
        c.scales,
        2,
        &mut out
    )
    .is_err());
    assert!(kernel::gemm(
        Kernel::Scalar,
        &c.stack,
        0,
        8..32,
        &c.act,
        c.scales,
        2,
        &mut out
    )
    .is_err());
    assert!(kernel::gemm(
        Kernel::Scalar,
        &c.stack,
        0,
        0..32,
        &c.act[1..],
        c.scales,
        2,
        &mut out
    )
    .is_err());
    assert!(kernel::gemm(
        Kernel::Scalar,
        &c.stack,
        0,
        0..32,
        &c.act[..c.act.len() / 34],
        c.scales,
        2,
        &mut out
    )
    .is_err());
    // Per-group rows declared per token are refused (the folded kernel would read one
    // scale of each).
    assert!(kernel::gemm(
        Kernel::Scalar,
        &c.stack,
        0,
        0..32,
        &c.act,
        ActScales::PerToken,
        2,
        &mut out
    )
    .is_err());
    if let Err(e) = Kernel::Amx.check(RepackFormat::Int8 { group: 64 }) {
        let msg = e.to_string();
        assert!(msg.contains("amx"), "{msg}");
        assert!(kernel::gemm(
            Kernel::Amx,
            &c.stack,
            0,
            0..32,
            &c.act,
            c.scales,
            2,
            &mut out
        )
        .is_err());
    }
}
