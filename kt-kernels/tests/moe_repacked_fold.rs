//! INT4 with folded scales (row scale `d_n` x integer group multiplier `m`) and
//! per-token activation rows: the AMX kernel's unpack of `m * q` and its whole-row int32
//! accumulation, and the scalar prefill reference, against an independent expectation
//! `d_n * d_a * sum(m * q * a)` computed here from the generated `m`, nibbles and
//! activations (exact integers, f64 scaling). Every multiplier in
//! `MIN_MULT..=MAX_MULT` (0: an all-zero group) and every nibble appear in the
//! deterministic case; the proptest varies groups, K (around the kernel's 32/64/128
//! chunks), panels (around its blocks of 2 and 4) and token counts (around 16-row tiles
//! and 64-token super-blocks; the AMX kernel spreads a super-block's tokens evenly over
//! its row blocks), with and without readable rows after the tokens. Outputs start as
//! NaN. AMX/VNNI cases are skipped with a message where the CPU lacks them.

use half::f16;
use kt_kernels::cpu::moe::repack::{
    kernel, quantize_act_row, ActScales, Kernel, RepackFormat, RepackedStack, MAX_MULT, MIN_MULT,
    PANEL,
};
use kt_kernels::util::SplitMix64;
use proptest::prelude::*;

/// Readable rows after the tokens (whole AMX tiles).
const PAD: usize = 32;

struct Case {
    stack: RepackedStack,
    /// `[row][group]` multipliers and `[row]` row scales as generated.
    m: Vec<i32>,
    d: Vec<f32>,
    /// Signed weights `q` (`[row][k]`), quantized activation rows, their int8 values and
    /// scales.
    q: Vec<i32>,
    act: Vec<u8>,
    a: Vec<i32>,
    da: Vec<f32>,
}

/// One expert of `rows x cols` with multipliers `mult(row, group)` (each row must hold
/// a 16 so its factorization is the generated one), row scales `(64 + r % 64) * 2^-12`
/// (7 significant bits), data bytes from `byte(i)`, and `tokens` per-token rows.
fn build(
    group: usize,
    rows: usize,
    cols: usize,
    tokens: usize,
    mult: impl Fn(usize, usize) -> i32,
    byte: impl Fn(usize) -> u8,
    seed: u64,
) -> Case {
    let f = RepackFormat::Int4 { group };
    let groups = cols / group;
    let d: Vec<f32> = (0..rows).map(|r| (64 + r % 64) as f32 / 4096.0).collect();
    let m: Vec<i32> = (0..rows * groups)
        .map(|i| mult(i / groups, i % groups))
        .collect();
    let panels = rows / PANEL;
    let mut scales = vec![f16::NAN; panels * groups * PANEL];
    for r in 0..rows {
        for g in 0..groups {
            let s = d[r] * m[r * groups + g] as f32;
            assert_eq!(f16::from_f32(s).to_f32(), s, "test scale not exact in f16");
            scales[((r / PANEL) * groups + g) * PANEL + r % PANEL] = f16::from_f32(s);
        }
    }
    let data: Vec<u8> = (0..panels * f.panel_bytes(cols)).map(byte).collect();
    let stack = RepackedStack::from_parts(f, 1, rows, cols, &data, scales).unwrap();
    // The weights back through the stack's own dequantization: w = s * q, s = d * m.
    let mut w = vec![0f32; rows * cols];
    stack.dequantize_expert(0, &mut w).unwrap();
    let q: Vec<i32> = (0..rows * cols)
        .map(|i| {
            let (r, k) = (i / cols, i % cols);
            let s = d[r] * m[r * groups + k / group] as f32;
            if s == 0.0 {
                // An all-zero group: the nibble's q is multiplied by 0 either way.
                0
            } else {
                let v = w[i] / s;
                assert!(v == v.round() && (-8.0..=7.0).contains(&v));
                v as i32
            }
        })
        .collect();
    let arow = f.act_row_bytes(cols);
    let mut act = vec![0u8; (tokens + PAD) * arow];
    let mut rng = SplitMix64::new(seed);
    let mut x = vec![0f32; cols];
    for t in 0..tokens + PAD {
        rng.fill_normal(&mut x, [1.0, 0.02, 7.0][t % 3]);
        x[rng.below(cols)] *= 9.0;
        quantize_act_row(
            f,
            ActScales::PerToken,
            &x,
            &mut act[t * arow..(t + 1) * arow],
        );
    }
    let a = (0..tokens * cols)
        .map(|i| act[(i / cols) * arow + i % cols] as i8 as i32)
        .collect();
    let da = (0..tokens)
        .map(|t| {
            let o = t * arow + cols;
            f32::from_le_bytes(act[o..o + 4].try_into().unwrap())
        })
        .collect();
    Case {
        stack,
        m,
        d,
        q,
        act,
        a,
        da,
    }
}

/// Checks every available kernel against `d_n * d_a * sum(m * q * a)`: the folded
/// arithmetic is one int32 sum and three f32 roundings (the int32 to f32 conversion,
/// `d_n * d_a`, the product): within 4 * 2^-24 of `sum |w a|`; the VNNI kernel sums per
/// group in f32 (`groups + 2` roundings).
fn check(c: &Case, tokens: usize, label: &str) -> Result<(), TestCaseError> {
    let (rows, cols) = (c.stack.rows(), c.stack.cols());
    let group = c.stack.format().group().unwrap();
    let groups = cols / group;
    prop_assert!(c.stack.folded(), "{label}: the stack did not fold");
    // With padding rows after the tokens (AMX loads whole row blocks) and without (the
    // last row block configured for the rows left).
    let exact = tokens * c.stack.format().act_row_bytes(cols);
    let kernels = [Kernel::Scalar, Kernel::Vnni, Kernel::Amx];
    for (kern, act) in kernels
        .into_iter()
        .flat_map(|k| [(k, &c.act[..]), (k, &c.act[..exact])])
    {
        if let Err(e) = kern.check(c.stack.format()) {
            eprintln!("{label}: skipping {kern:?}: {e}");
            continue;
        }
        let mut out = vec![f32::NAN; tokens * rows];
        kernel::gemm(
            kern,
            &c.stack,
            0,
            0..rows,
            act,
            ActScales::PerToken,
            tokens,
            &mut out,
        )
        .unwrap();
        let roundings = if kern == Kernel::Vnni {
            groups as f64 + 2.0
        } else {
            4.0
        };
        for t in 0..tokens {
            for r in 0..rows {
                let (mut dot, mut mag) = (0i64, 0i64);
                for k in 0..cols {
                    let v = (c.m[r * groups + k / group] * c.q[r * cols + k] * c.a[t * cols + k])
                        as i64;
                    dot += v;
                    mag += v.abs();
                }
                let s = c.d[r] as f64 * c.da[t] as f64;
                let (want, tol) = (dot as f64 * s, roundings * 2f64.powi(-24) * mag as f64 * s);
                let got = out[t * rows + r];
                prop_assert!(
                    got.is_finite() && (got as f64 - want).abs() <= tol + 1e-30,
                    "{label} {kern:?} token {t} row {r}: {got} vs {want} +- {tol:e}"
                );
            }
        }
    }
    Ok(())
}

#[test]
fn every_multiplier_and_nibble() {
    // 32 groups of 32 per row: group g of row r gets the ((r + g) % 32)-th multiplier of
    // MIN_MULT..=MAX_MULT (32 values, 0 among them: an all-zero group), so every row
    // holds each once (and a 16, which pins its factorization to these multipliers).
    let values: Vec<i32> = (MIN_MULT..=MAX_MULT).collect();
    assert_eq!(values.len(), 32);
    let (group, rows, cols) = (32, 80, 32 * 32);
    let mult = |r: usize, g: usize| values[(r + g) % values.len()];
    for tokens in [1, 16, 17, 48, 70] {
        let c = build(
            group,
            rows,
            cols,
            tokens,
            mult,
            |i| (i * 37 + i / 64) as u8,
            tokens as u64,
        );
        // Every multiplier, and every nibble under each multiplier, occurs.
        let groups = cols / group;
        for &v in &values {
            let mut seen = [false; 16];
            for (i, &q) in c.q.iter().enumerate() {
                if c.m[(i / cols) * groups + (i % cols) / group] == v {
                    seen[(q + 8) as usize] = true;
                }
            }
            assert!(
                v == 0 || seen.iter().all(|&s| s),
                "m = {v}: nibbles {seen:?}"
            );
            assert!(c.m.contains(&v), "m = {v} missing");
        }
        check(&c, tokens, &format!("all m, T={tokens}")).unwrap();
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn folded_kernels_match_the_integer_expectation(
        group in prop::sample::select(vec![32usize, 64, 128]),
        per_row in 1usize..=4,
        panels in 1usize..=6,
        tokens in prop::sample::select(vec![1usize, 5, 6, 15, 16, 17, 31, 32, 33, 47, 63, 64, 65, 80]),
        seed in any::<u64>(),
    ) {
        // K = 32, 64, 96 (chunks of 32), 128, 192 (64), 256, ...: every chunk size.
        let cols = group * per_row;
        let groups = per_row;
        let rows = panels * PANEL;
        let mut rng = SplitMix64::new(seed);
        let ms: Vec<i32> = (0..rows * groups)
            .map(|i| {
                if i % groups == 0 {
                    MAX_MULT
                } else {
                    MIN_MULT + rng.below((MAX_MULT - MIN_MULT + 1) as usize) as i32
                }
            })
            .collect();
        let bytes: Vec<u8> = (0..rows * cols / 2).map(|_| rng.below(256) as u8).collect();
        let c = build(
            group,
            rows,
            cols,
            tokens,
            |r, g| ms[r * groups + g],
            |i| bytes[i],
            seed ^ 1,
        );
        check(&c, tokens, &format!("g{group} K={cols} panels {panels} T={tokens}"))?;
    }
}
