//! GPU small ops against the scalar references (`kt_kernels::ops` for RMSNorm and
//! SiLU-and-multiply, plain sums, copies and scans for the rest), for f32, f16 and bf16, at
//! odd token counts.
//! Skips (with a message) on machines without a GPU unless KT_REQUIRE_GPU is set.
#![cfg(feature = "cuda")]

mod cuda_common;

use cuda_common::{assert_close, gpu_or_skip, nan_buf, random, to_f64};
use half::{bf16, f16};
use kt_kernels::cuda::{GpuFloat, GpuStream};
use kt_kernels::ops;
use kt_kernels::util::SplitMix64;

const TOKENS: [usize; 4] = [1, 3, 17, 129];
/// Relative error of the kernels' f32 arithmetic before the final rounding (a block sum of
/// up to ~7k squares, then a handful of roundings), plus the reference's own rounding to f32.
const F32_WORK: f64 = 4e-6;

fn rmsnorm_case<T: GpuFloat>(s: &GpuStream, tokens: usize, dim: usize, seed: u64) {
    let mut rng = SplitMix64::new(seed);
    let x: Vec<T> = random(&mut rng, tokens * dim, 1.5);
    let w: Vec<T> = (0..dim)
        .map(|_| T::from_f32(1.0 + 0.3 * rng.normal()))
        .collect();
    let eps = 1e-6f32;
    // Reference: kt_kernels::ops::rmsnorm (f64 inside, one rounding to f32).
    let (xf, wf): (Vec<f32>, Vec<f32>) = (
        x.iter().map(|v| v.to_f32()).collect(),
        w.iter().map(|v| v.to_f32()).collect(),
    );
    let mut want32 = vec![0.0f32; tokens * dim];
    ops::rmsnorm(&xf, &wf, eps, &mut want32).unwrap();
    let want: Vec<f64> = want32.iter().map(|&v| v as f64).collect();
    let (xd, wd) = (s.upload(&x).unwrap(), s.upload(&w).unwrap());
    let mut out = nan_buf::<T>(s, tokens * dim);
    s.rmsnorm(&xd, &wd, &mut out, tokens, eps).unwrap();
    let got = s.download(&out).unwrap();
    let u = T::UNIT_ROUNDOFF;
    assert_close(
        &format!("rmsnorm {} t{tokens} d{dim}", T::SUFFIX),
        &got,
        &want,
        |_, r| (u + F32_WORK) * r.abs() + 0.5 * T::MIN_SUBNORMAL,
    );
}

fn silu_mul_case<T: GpuFloat>(s: &GpuStream, tokens: usize, d: usize, seed: u64) {
    let mut rng = SplitMix64::new(seed);
    let gu: Vec<T> = random(&mut rng, tokens * 2 * d, 3.0);
    // Reference: kt_kernels::ops::silu_mul per token (f64 inside, one rounding to f32).
    let f: Vec<f32> = gu.iter().map(|v| v.to_f32()).collect();
    let mut want32 = vec![0.0f32; tokens * d];
    for t in 0..tokens {
        let row = &f[t * 2 * d..(t + 1) * 2 * d];
        ops::silu_mul(&row[..d], &row[d..], &mut want32[t * d..(t + 1) * d]).unwrap();
    }
    let want: Vec<f64> = want32.iter().map(|&v| v as f64).collect();
    let gud = s.upload(&gu).unwrap();
    let mut out = nan_buf::<T>(s, tokens * d);
    s.silu_mul(&gud, &mut out, tokens, d).unwrap();
    let got = s.download(&out).unwrap();
    let u = T::UNIT_ROUNDOFF;
    // expf is within 2 ulp; with the division and products about 6 f32 roundings, plus the
    // reference's rounding to f32.
    assert_close(
        &format!("silu_mul {} t{tokens} d{d}", T::SUFFIX),
        &got,
        &want,
        |_, r| (u + 1e-6) * r.abs() + 0.5 * T::MIN_SUBNORMAL,
    );
}

fn add_case<T: GpuFloat>(s: &GpuStream, n: usize, seed: u64) {
    let mut rng = SplitMix64::new(seed);
    let a: Vec<T> = random(&mut rng, n, 2.0);
    let b: Vec<T> = random(&mut rng, n, 2.0);
    let want: Vec<f64> = to_f64(&a)
        .iter()
        .zip(to_f64(&b))
        .map(|(x, y)| x + y)
        .collect();
    let mut acc = s.upload(&a).unwrap();
    let bd = s.upload(&b).unwrap();
    s.add_inplace(&mut acc, &bd).unwrap();
    let got = s.download(&acc).unwrap();
    let u = T::UNIT_ROUNDOFF;
    // One f32 rounding of the exact sum, then one rounding to T.
    assert_close(&format!("add {} n{n}", T::SUFFIX), &got, &want, |_, r| {
        (u + 6e-8) * r.abs() + 0.5 * T::MIN_SUBNORMAL
    });
}

fn embedding_case<T: GpuFloat>(s: &GpuStream, tokens: usize, seed: u64) {
    let (vocab, dim) = (1000, 72);
    let mut rng = SplitMix64::new(seed);
    let table: Vec<T> = random(&mut rng, vocab * dim, 1.0);
    let mut ids: Vec<u32> = (0..tokens).map(|_| rng.below(vocab) as u32).collect();
    ids[tokens - 1] = (vocab - 1) as u32; // the last row of the table
    if tokens > 2 {
        ids[1] = vocab as u32 + 5; // out of range: a NaN row
    }
    let td = s.upload(&table).unwrap();
    let idd = s.upload(&ids).unwrap();
    let mut out = nan_buf::<T>(s, tokens * dim);
    s.embedding(&td, vocab, &idd, &mut out).unwrap();
    let got = s.download(&out).unwrap();
    for (t, &id) in ids.iter().enumerate() {
        for i in 0..dim {
            let g = got[t * dim + i].to_f32();
            if (id as usize) < vocab {
                let w = table[id as usize * dim + i].to_f32();
                assert!(
                    g.to_bits() == w.to_bits(),
                    "embedding {}: token {t} id {id} elem {i}: {g} vs {w}",
                    T::SUFFIX
                );
            } else {
                assert!(
                    g.is_nan(),
                    "embedding {}: bad id {id} must give NaN, got {g}",
                    T::SUFFIX
                );
            }
        }
    }
}

/// Reference arg-max: first index of the largest non-NaN value; 0 for an all-NaN row.
fn argmax_ref(row: &[f32]) -> u32 {
    let mut best: Option<(usize, f32)> = None;
    for (i, &v) in row.iter().enumerate() {
        if v.is_nan() {
            continue;
        }
        if best.is_none_or(|(_, b)| v > b) {
            best = Some((i, v));
        }
    }
    best.map_or(0, |(i, _)| i as u32)
}

fn argmax_case<T: GpuFloat>(s: &GpuStream, rows: usize, n: usize, seed: u64) {
    let mut rng = SplitMix64::new(seed);
    let mut x: Vec<T> = random(&mut rng, rows * n, 4.0);
    for r in 0..rows {
        let row = &mut x[r * n..(r + 1) * n];
        match r % 4 {
            // A tie for the maximum: the lower index must win.
            1 => {
                let (a, b) = (rng.below(n / 2), n / 2 + rng.below(n / 2));
                row[a] = T::from_f32(100.0);
                row[b] = T::from_f32(100.0);
            }
            // NaNs sprinkled in, one of them at the front: never chosen.
            2 => {
                for _ in 0..5 {
                    row[rng.below(n)] = T::from_f32(f32::NAN);
                }
                row[0] = T::from_f32(f32::NAN);
            }
            // The maximum in the very last slot.
            3 => row[n - 1] = T::from_f32(1000.0),
            _ => {}
        }
    }
    if rows > 3 {
        for v in &mut x[2 * n..3 * n] {
            *v = T::from_f32(f32::NAN); // an all-NaN row
        }
    }
    let want: Vec<u32> = (0..rows)
        .map(|r| {
            argmax_ref(
                &x[r * n..(r + 1) * n]
                    .iter()
                    .map(|v| v.to_f32())
                    .collect::<Vec<_>>(),
            )
        })
        .collect();
    let xd = s.upload(&x).unwrap();
    let mut out = s.upload(&vec![u32::MAX; rows]).unwrap();
    s.argmax(&xd, rows, &mut out).unwrap();
    assert_eq!(
        s.download(&out).unwrap(),
        want,
        "argmax {} rows {rows} n {n}",
        T::SUFFIX
    );
}

fn all_cases<T: GpuFloat>(s: &GpuStream) {
    for (i, &t) in TOKENS.iter().enumerate() {
        let seed = 1000 + i as u64;
        for dim in [64, 1001, 7168] {
            rmsnorm_case::<T>(s, t, dim, seed + dim as u64);
        }
        silu_mul_case::<T>(s, t, 1408, seed);
        silu_mul_case::<T>(s, t, 17, seed + 1);
        add_case::<T>(s, t * 2048 + 1, seed);
        embedding_case::<T>(s, t, seed);
        argmax_case::<T>(s, t.max(4), 129_280, seed);
        argmax_case::<T>(s, t, 33, seed + 7);
    }
}

#[test]
fn small_ops_f32() {
    let Some(gpu) = gpu_or_skip("small_ops_f32") else {
        return;
    };
    all_cases::<f32>(gpu.stream());
}

#[test]
fn small_ops_f16() {
    let Some(gpu) = gpu_or_skip("small_ops_f16") else {
        return;
    };
    all_cases::<f16>(gpu.stream());
}

#[test]
fn small_ops_bf16() {
    let Some(gpu) = gpu_or_skip("small_ops_bf16") else {
        return;
    };
    all_cases::<bf16>(gpu.stream());
}

#[test]
fn shapes_are_checked_before_launch() {
    let Some(gpu) = gpu_or_skip("shapes_are_checked_before_launch") else {
        return;
    };
    let s = gpu.stream();
    let x = s.upload(&[1.0f32; 10]).unwrap();
    let w = s.upload(&[1.0f32; 4]).unwrap();
    let mut out = s.upload(&[0.0f32; 10]).unwrap();
    let e = s.rmsnorm(&x, &w, &mut out, 3, 1e-6).unwrap_err();
    assert!(e.to_string().contains("rmsnorm"), "{e}");
    let mut ids = s.upload(&[0u32; 3]).unwrap();
    assert!(s.argmax(&x, 3, &mut ids).is_err()); // 10 is not 3 rows
    let mut short = s.upload(&[0.0f32; 9]).unwrap();
    assert!(s.add_inplace(&mut short, &x).is_err());
}

/// Runs GPU top-p over `rows` rows of `logits` and returns the picks (outputs poisoned first).
fn top_p_gpu(
    s: &GpuStream,
    logits: &[f32],
    rows: usize,
    uniforms: &[f32],
    t: f32,
    p: f32,
) -> Vec<u32> {
    let x = s.upload(logits).unwrap();
    let u = s.upload(uniforms).unwrap();
    let mut out = s.upload(&vec![0xdead_beefu32; rows]).unwrap();
    s.top_p_sample(&x, rows, &u, t, p, &mut out).unwrap();
    s.download(&out).unwrap()
}

/// Every row's GPU pick against `ops::top_p_sample` (the same definition in f64; the two
/// differ only if a cumulative weight lands within rounding of a cut, about 1e-13 relative,
/// which these draws do not hit).
fn top_p_case(s: &GpuStream, logits: &[f32], n: usize, t: f32, p: f32, seed: u64) {
    let rows = logits.len() / n;
    let mut rng = SplitMix64::new(seed);
    let uniforms: Vec<f32> = (0..rows)
        .map(|_| (rng.next_u64() >> 40) as f32 / (1u64 << 24) as f32)
        .collect();
    let got = top_p_gpu(s, logits, rows, &uniforms, t, p);
    for r in 0..rows {
        let want = ops::top_p_sample(&logits[r * n..(r + 1) * n], t, p, uniforms[r]).unwrap();
        assert_eq!(
            got[r] as usize, want,
            "top-p n {n} T {t} p {p} row {r} u {}",
            uniforms[r]
        );
    }
}

#[test]
fn top_p_matches_the_reference() {
    let Some(gpu) = gpu_or_skip("top-p sampling") else {
        return;
    };
    let s = gpu.stream();
    let mut rng = SplitMix64::new(77);
    for (n, rows) in [(1usize, 3usize), (33, 40), (4099, 24), (129_280, 6)] {
        let spread: Vec<f32> = (0..rows * n).map(|_| 3.0 * rng.normal()).collect();
        // Logits on a grid of halves: most tokens tie with many others.
        let tied: Vec<f32> = spread.iter().map(|v| (v * 2.0).round() / 2.0).collect();
        for (t, p) in [
            (1.0, 0.9),
            (0.7, 1.0),
            (1.3, 0.5),
            (1.0, 1e-6),
            (1e-3, 0.95),
            (0.0, 0.9),
        ] {
            top_p_case(s, &spread, n, t, p, n as u64);
            top_p_case(s, &tied, n, t, p, n as u64 + 1);
        }
    }
}

#[test]
fn top_p_edge_rows() {
    let Some(gpu) = gpu_or_skip("top-p edge rows") else {
        return;
    };
    let s = gpu.stream();
    let ninf = f32::NEG_INFINITY;
    // Hand-checked rows (see ops::sampling's tests): ties ranked by index, -0.0 == 0.0,
    // -inf never drawn, and rows the kernel refuses.
    let rows: [(&[f32], f32, f32, f32, u32); 9] = [
        (&[0.0, 2.0, 2.0, 1.0, 2.0], 1.0, 1.0, 0.4, 2),
        (&[0.0, 2.0, 2.0, 1.0, 2.0], 1.0, 1.0, 0.9, 3),
        (&[0.0, 2.0, 2.0, 1.0, 2.0], 1.0, 0.5, 0.99, 2),
        (&[-0.0, 0.0, -0.0, 0.0, 0.0], 1.0, 1.0, 0.5, 2),
        (&[ninf, 1.0, ninf, 0.5, ninf], 1.0, 1.0, 0.99, 3),
        (&[1.0, 4.0, 4.0, 0.0, 4.0], 0.0, 1.0, 0.99, 1),
        (&[1.0, f32::NAN, 4.0, 0.0, 4.0], 1.0, 1.0, 0.5, u32::MAX),
        (
            &[1.0, f32::INFINITY, 4.0, 0.0, 4.0],
            1.0,
            1.0,
            0.5,
            u32::MAX,
        ),
        (&[ninf; 5], 1.0, 1.0, 0.5, u32::MAX),
    ];
    for (i, (l, t, p, u, want)) in rows.iter().enumerate() {
        let got = top_p_gpu(s, l, 1, &[*u], *t, *p)[0];
        assert_eq!(got, *want, "edge row {i}: {l:?} T {t} p {p} u {u}");
        if *want != u32::MAX {
            assert_eq!(
                ops::top_p_sample(l, *t, *p, *u).unwrap(),
                *want as usize,
                "reference, row {i}"
            );
        }
    }
    // Settings out of range and mismatched lengths are errors before any launch.
    let x = s.upload(&[1.0f32; 8]).unwrap();
    let u = s.upload(&[0.5f32; 2]).unwrap();
    let mut out = s.upload(&[0u32; 2]).unwrap();
    assert!(s.top_p_sample(&x, 2, &u, -1.0, 0.9, &mut out).is_err());
    assert!(s.top_p_sample(&x, 2, &u, 1.0, 0.0, &mut out).is_err());
    assert!(s.top_p_sample(&x, 2, &u, 1.0, 1.1, &mut out).is_err());
    assert!(s.top_p_sample(&x, 3, &u, 1.0, 0.9, &mut out).is_err());
    assert!(s.top_p_sample(&x, 4, &u, 1.0, 0.9, &mut out).is_err());
}
