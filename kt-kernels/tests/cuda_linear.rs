//! The hybrid forward pass's GPU pieces (`kt_kernels::cuda::linear`) against scalar
//! references: the batched NT GEMM as a plain linear and as MLA's per-head absorption on
//! strided rows, the f32-weight RMSNorm, the latent cache write, strided copies, the
//! residual add and casts; odd token counts, NaN-poisoned outputs.
//! Skips (with a message) on machines without a GPU unless KT_REQUIRE_GPU is set.
#![cfg(feature = "cuda")]

mod cuda_common;

use cuda_common::{assert_close, gpu_or_skip, nan_buf, random};
use half::bf16;
use kt_kernels::cuda::linear::{GemmNt, Strides};
use kt_kernels::cuda::{GpuFloat, GpuStream};
use kt_kernels::ops;
use kt_kernels::util::SplitMix64;

const TOKENS: [usize; 4] = [1, 3, 17, 129];
const F32_U: f64 = 5.960464477539063e-8;

fn f32s<T: GpuFloat>(v: &[T]) -> Vec<f32> {
    v.iter().map(|x| x.to_f32()).collect()
}

/// Runs `g` on the GPU over random A and B (of types A, B) into a NaN-poisoned `out` of
/// `out_len` elements and checks every element: covered ones against the f64 reference
/// within one rounding to O plus the f32 accumulation's error (k roundings of partial sums
/// bounded by sum |a b|), the rest still NaN.
fn gemm_case<A: GpuFloat, B: GpuFloat, O: GpuFloat>(
    s: &GpuStream,
    what: &str,
    g: &GemmNt,
    out_len: usize,
    seed: u64,
) {
    let mut rng = SplitMix64::new(seed);
    let (a_len, b_len, o_need) = g.lens();
    assert!(out_len >= o_need);
    let a: Vec<A> = random(&mut rng, a_len, 1.0);
    let w: Vec<B> = random(&mut rng, b_len, 0.5);
    let (af, wf) = (f32s(&a), f32s(&w));
    let mut want = vec![f32::NAN; out_len];
    g.reference(&af, &wf, &mut want).unwrap();
    // sum |a b| per element, for the accumulation bound
    let abs_a: Vec<f32> = af.iter().map(|v| v.abs()).collect();
    let abs_w: Vec<f32> = wf.iter().map(|v| v.abs()).collect();
    let mut mag = vec![f32::NAN; out_len];
    g.reference(&abs_a, &abs_w, &mut mag).unwrap();

    let (ad, wd) = (s.upload(&a).unwrap(), s.upload(&w).unwrap());
    let mut out = nan_buf::<O>(s, out_len);
    s.gemm_nt(g, &ad, &wd, &mut out).unwrap();
    let got = s.download(&out).unwrap();
    for (i, (&gv, &wv)) in got.iter().zip(&want).enumerate() {
        if wv.is_nan() {
            assert!(
                gv.to_f32().is_nan(),
                "{what}: element {i} is outside the product but was written ({})",
                gv.to_f32()
            );
        }
    }
    let want64: Vec<f64> = want.iter().map(|&v| v as f64).collect();
    let covered: Vec<usize> = (0..out_len).filter(|&i| !want[i].is_nan()).collect();
    let got_c: Vec<O> = covered.iter().map(|&i| got[i]).collect();
    let want_c: Vec<f64> = covered.iter().map(|&i| want64[i]).collect();
    let k = g.k as f64;
    assert_close(what, &got_c, &want_c, |j, r| {
        let m = mag[covered[j]] as f64;
        O::UNIT_ROUNDOFF * r.abs() + (k + 2.0) * F32_U * m + 0.5 * O::MIN_SUBNORMAL
    });
}

#[test]
fn gemm_linear_matches_reference() {
    let Some(gpu) = gpu_or_skip("gemm_linear_matches_reference") else {
        return;
    };
    let s = gpu.stream();
    for (i, &t) in TOKENS.iter().enumerate() {
        for &(n, k) in &[(200usize, 77usize), (64, 512), (129, 2048)] {
            let g = GemmNt::linear(t, n, k);
            let len = t * n;
            let seed = 100 + i as u64 * 7 + n as u64;
            gemm_case::<bf16, bf16, bf16>(s, &format!("linear bf16 t{t} n{n} k{k}"), &g, len, seed);
            gemm_case::<bf16, bf16, f32>(
                s,
                &format!("linear bf16->f32 t{t} n{n} k{k}"),
                &g,
                len,
                seed + 1,
            );
            gemm_case::<f32, f32, f32>(s, &format!("linear f32 t{t} n{n} k{k}"), &g, len, seed + 2);
        }
    }
}

/// MLA's absorption on the hybrid path's layouts: the query `[T, H, nope + rope]`, each
/// head's `W_uk^T` `[rank, nope]`, output rows `[T, H, rank + rope]` (the rope columns stay
/// untouched), then the expansion `o_lat [T, H, rank]` by `W_uv` `[v, rank]` into
/// `[T, H * v]`.
#[test]
fn gemm_absorption_layouts_match_reference() {
    let Some(gpu) = gpu_or_skip("gemm_absorption_layouts_match_reference") else {
        return;
    };
    let s = gpu.stream();
    let (heads, nope, rope, rank, v) = (3usize, 40usize, 8usize, 72usize, 24usize);
    for (i, &t) in TOKENS.iter().enumerate() {
        let absorb = GemmNt {
            batch: heads,
            m: t,
            n: rank,
            k: nope,
            a: Strides {
                offset: 0,
                batch: nope + rope,
                row: heads * (nope + rope),
            },
            b_batch: rank * nope,
            b_row: nope,
            out: Strides {
                offset: 0,
                batch: rank + rope,
                row: heads * (rank + rope),
            },
        };
        let len = t * heads * (rank + rope);
        gemm_case::<bf16, bf16, bf16>(s, &format!("absorb t{t}"), &absorb, len, 300 + i as u64);
        let expand = GemmNt {
            batch: heads,
            m: t,
            n: v,
            k: rank,
            a: Strides {
                offset: 0,
                batch: rank,
                row: heads * rank,
            },
            b_batch: v * rank,
            b_row: rank,
            out: Strides {
                offset: 0,
                batch: v,
                row: heads * v,
            },
        };
        gemm_case::<bf16, bf16, bf16>(
            s,
            &format!("expand t{t}"),
            &expand,
            t * heads * v,
            400 + i as u64,
        );
    }
}

#[test]
fn gemm_refuses_short_buffers() {
    let Some(gpu) = gpu_or_skip("gemm_refuses_short_buffers") else {
        return;
    };
    let s = gpu.stream();
    let g = GemmNt::linear(3, 64, 128);
    let a = s.alloc_zeroed::<bf16>(3 * 128 - 1).unwrap();
    let w = s.alloc_zeroed::<bf16>(64 * 128).unwrap();
    let mut o = s.alloc_zeroed::<bf16>(3 * 64).unwrap();
    let err = s.gemm_nt(&g, &a, &w, &mut o).unwrap_err().to_string();
    assert!(err.contains("gemm_nt"), "{err}");
}

#[test]
fn rmsnorm_w32_matches_reference() {
    let Some(gpu) = gpu_or_skip("rmsnorm_w32_matches_reference") else {
        return;
    };
    let s = gpu.stream();
    let eps = 1e-6f32;
    // rows of one or two elements a thread, and V3's hidden size and a bit (28-29: four
    // chunks of loads, the last one part past the row)
    for &(n, x_row) in &[(300usize, 333usize), (7173, 7206)] {
        for (i, &t) in TOKENS.iter().enumerate() {
            let mut rng = SplitMix64::new(500 + i as u64 + n as u64);
            let x: Vec<f32> = random(&mut rng, t * x_row, 2.0);
            let w: Vec<f32> = (0..n).map(|_| 1.0 + 0.3 * rng.normal()).collect();
            let mut want = vec![0.0f32; t * n];
            for r in 0..t {
                ops::rmsnorm(
                    &x[r * x_row..r * x_row + n],
                    &w,
                    eps,
                    &mut want[r * n..(r + 1) * n],
                )
                .unwrap();
            }
            let want64: Vec<f64> = want.iter().map(|&v| v as f64).collect();
            let (xd, wd) = (s.upload(&x).unwrap(), s.upload(&w).unwrap());
            let mut out = nan_buf::<bf16>(s, t * n);
            let mut out32 = nan_buf::<f32>(s, t * n);
            s.rmsnorm_w32(&xd, x_row, t, &wd, &mut out, Some(&mut out32), eps)
                .unwrap();
            // f32 work: a block sum of n squares and a few roundings (as cuda_small_ops' rmsnorm)
            let work = 4e-6;
            assert_close(
                &format!("rmsnorm_w32 n{n} f32 t{t}"),
                &s.download(&out32).unwrap(),
                &want64,
                |_, r| work * r.abs() + 1e-30,
            );
            assert_close(
                &format!("rmsnorm_w32 n{n} bf16 t{t}"),
                &s.download(&out).unwrap(),
                &want64,
                |_, r| (bf16::UNIT_ROUNDOFF + work) * r.abs() + 1e-30,
            );
            // bf16 input, no f32 copy
            let xb: Vec<bf16> = x.iter().map(|&v| bf16::from_f32(v)).collect();
            let xbf = f32s(&xb);
            let mut want_b = vec![0.0f32; t * n];
            for r in 0..t {
                ops::rmsnorm(
                    &xbf[r * x_row..r * x_row + n],
                    &w,
                    eps,
                    &mut want_b[r * n..(r + 1) * n],
                )
                .unwrap();
            }
            let want_b64: Vec<f64> = want_b.iter().map(|&v| v as f64).collect();
            let xbd = s.upload(&xb).unwrap();
            let mut outb = nan_buf::<bf16>(s, t * n);
            s.rmsnorm_w32(&xbd, x_row, t, &wd, &mut outb, None, eps)
                .unwrap();
            assert_close(
                &format!("rmsnorm_w32 n{n} bf16-in t{t}"),
                &s.download(&outb).unwrap(),
                &want_b64,
                |_, r| (bf16::UNIT_ROUNDOFF + work) * r.abs() + 1e-30,
            );
        }
    }
}

#[test]
fn mla_cache_write_matches_reference() {
    let Some(gpu) = gpu_or_skip("mla_cache_write_matches_reference") else {
        return;
    };
    let s = gpu.stream();
    let (rank, rope, eps, first) = (512usize, 64usize, 1e-6f32, 5usize);
    let width = rank + rope;
    for (i, &t) in TOKENS.iter().enumerate() {
        let mut rng = SplitMix64::new(600 + i as u64);
        let kv: Vec<bf16> = random(&mut rng, t * width, 1.5);
        let w: Vec<f32> = (0..rank).map(|_| 1.0 + 0.2 * rng.normal()).collect();
        let rows = first + t + 2;
        // contiguous rows from `first`, and rows read on the device: the tokens scattered
        // backwards from the cache's end (mla_cache_write_rows)
        let scattered: Vec<u32> = (0..t).map(|r| (rows - 1 - r) as u32).collect();
        for on_device in [false, true] {
            let row_of = |r: usize| {
                if on_device {
                    scattered[r] as usize
                } else {
                    first + r
                }
            };
            let kvf = f32s(&kv);
            let mut want = vec![f64::NAN; rows * width];
            for r in 0..t {
                let mut c = vec![0.0f32; rank];
                ops::rmsnorm(&kvf[r * width..r * width + rank], &w, eps, &mut c).unwrap();
                let at = row_of(r) * width;
                for (j, &v) in c.iter().enumerate() {
                    want[at + j] = v as f64;
                }
                for j in 0..rope {
                    want[at + rank + j] = kvf[r * width + rank + j] as f64;
                }
            }
            let (kvd, wd) = (s.upload(&kv).unwrap(), s.upload(&w).unwrap());
            let mut cache = nan_buf::<bf16>(s, rows * width);
            if on_device {
                let at = s.upload(&scattered).unwrap();
                s.mla_cache_write_rows(&kvd, &wd, &mut cache, &at, rope, eps)
                    .unwrap();
            } else {
                s.mla_cache_write(&kvd, t, &wd, &mut cache, first, rope, eps)
                    .unwrap();
            }
            let got = s.download(&cache).unwrap();
            let what = format!("mla_cache_write t{t} rows on the device {on_device}");
            for (j, (g, w)) in got.iter().zip(&want).enumerate() {
                if w.is_nan() {
                    assert!(g.to_f32().is_nan(), "{what}: row element {j} written");
                }
            }
            let idx: Vec<usize> = (0..want.len()).filter(|&j| !want[j].is_nan()).collect();
            let g: Vec<bf16> = idx.iter().map(|&j| got[j]).collect();
            let wv: Vec<f64> = idx.iter().map(|&j| want[j]).collect();
            assert_close(&what, &g, &wv, |_, r| {
                (bf16::UNIT_ROUNDOFF + 4e-6) * r.abs() + 1e-30
            });
        }
    }
    // contiguous rows past the cache are a shape error
    let kvd = s.upload(&vec![bf16::ONE; width]).unwrap();
    let wd = s.upload(&vec![1.0f32; rank]).unwrap();
    let mut cache = nan_buf::<bf16>(s, 2 * width);
    assert!(matches!(
        s.mla_cache_write(&kvd, 1, &wd, &mut cache, 2, rope, eps),
        Err(kt_kernels::cuda::CudaError::Shape { .. })
    ));
}

/// The fused MLA step (cache rows with the key's rope, the queries' rope into the absorbed
/// query rows, one launch) against the unfused chain it replaces (`rope_inplace` on copies,
/// `mla_cache_write_rows`, `copy_cols_bf16`), each of which the tests above and `cuda_mla`
/// hold to the CPU references. Both round the same f32 values to bf16 once; a contraction of
/// the rotation's products into an FMA in one of them may move a value across a rounding
/// boundary, so they agree within one bf16 ulp (2^-7 relative). Outputs start as NaN: the
/// latent slots of the query rows and the cache rows not at a position must stay NaN.
#[test]
fn mla_rope_cache_write_matches_the_unfused_chain() {
    let Some(gpu) = gpu_or_skip("mla_rope_cache_write_matches_the_unfused_chain") else {
        return;
    };
    let s = gpu.stream();
    let (rank, rope_dim, nope, heads, eps) = (512usize, 64usize, 128usize, 16usize, 1e-6f32);
    let (width, qd) = (rank + rope_dim, nope + rope_dim);
    let scaling = kt_kernels::ops::YarnScaling {
        factor: 40.0,
        original_max_pos: 4096,
        beta_fast: 32.0,
        beta_slow: 1.0,
        mscale: 1.0,
        mscale_all_dim: 1.0,
    };
    let yarn = kt_kernels::ops::RopeYarn::new(rope_dim, 10_000.0, Some(scaling)).unwrap();
    // 16 heads (V2-Lite: one block of query pairs per token), 40 and 128 (V3: 2 and 4)
    for heads in [16usize, 40, 128] {
        for (i, &t) in TOKENS.iter().enumerate() {
            let mut rng = SplitMix64::new(900 + i as u64 + heads as u64);
            let rows = 2 * t + 70;
            let tables = s.upload_rope_tables(&yarn, rows).unwrap();
            let q: Vec<bf16> = random(&mut rng, t * heads * qd, 1.5);
            let kv: Vec<bf16> = random(&mut rng, t * width, 1.5);
            let w: Vec<f32> = (0..rank).map(|_| 1.0 + 0.2 * rng.normal()).collect();
            // distinct positions, not in order, spread over the cache
            let pos: Vec<u32> = (0..t).map(|r| (rows - 1 - 2 * r) as u32).collect();
            let (qd_buf, kvd, wd, pd) = (
                s.upload(&q).unwrap(),
                s.upload(&kv).unwrap(),
                s.upload(&w).unwrap(),
                s.upload(&pos).unwrap(),
            );
            let mut q_lat = nan_buf::<bf16>(s, t * heads * width);
            let mut cache = nan_buf::<bf16>(s, rows * width);
            s.mla_rope_cache_write(
                &qd_buf, heads, nope, &mut q_lat, &kvd, &wd, &mut cache, &pd, &tables, eps,
            )
            .unwrap();
            let (got_q, got_c) = (s.download(&q_lat).unwrap(), s.download(&cache).unwrap());

            let mut q2 = s.upload(&q).unwrap();
            let mut kv2 = s.upload(&kv).unwrap();
            s.rope_inplace(&mut q2, &pd, &tables, heads, qd, nope)
                .unwrap();
            s.rope_inplace(&mut kv2, &pd, &tables, 1, width, rank)
                .unwrap();
            let mut want_q = nan_buf::<bf16>(s, t * heads * width);
            let mut want_c = nan_buf::<bf16>(s, rows * width);
            s.mla_cache_write_rows(&kv2, &wd, &mut want_c, &pd, rope_dim, eps)
                .unwrap();
            s.copy_cols_bf16(&q2, nope, qd, &mut want_q, rank, width, t * heads, rope_dim)
                .unwrap();
            let (want_q, want_c) = (s.download(&want_q).unwrap(), s.download(&want_c).unwrap());
            for (what, got, want) in [("q_lat", &got_q, &want_q), ("cache", &got_c, &want_c)] {
                for (j, (g, w)) in got.iter().zip(want.iter()).enumerate() {
                    let (g, w) = (g.to_f32(), w.to_f32());
                    if w.is_nan() {
                        assert!(
                            g.is_nan(),
                            "h{heads} t{t} {what}: element {j} written ({g})"
                        );
                        continue;
                    }
                    assert!(
                        (g - w).abs() <= 2f32.powi(-7) * w.abs(),
                        "h{heads} t{t} {what}: element {j}: fused {g}, unfused {w}"
                    );
                }
            }
            let written = got_q.iter().filter(|v| !v.to_f32().is_nan()).count();
            assert_eq!(
                written,
                t * heads * rope_dim,
                "h{heads} t{t}: query rope slots written"
            );
        }
    }
    let tables = s.upload_rope_tables(&yarn, 4).unwrap();
    let one = |n: usize| s.upload(&vec![bf16::ONE; n]).unwrap();
    let (q, kv, wd, pd) = (
        one(heads * qd),
        one(width),
        s.upload(&vec![1.0f32; rank]).unwrap(),
        s.upload(&[0u32]).unwrap(),
    );
    let mut short = nan_buf::<bf16>(s, heads * width - 1);
    let mut cache = nan_buf::<bf16>(s, 4 * width);
    assert!(matches!(
        s.mla_rope_cache_write(
            &q, heads, nope, &mut short, &kv, &wd, &mut cache, &pd, &tables, eps
        ),
        Err(kt_kernels::cuda::CudaError::Shape { .. })
    ));
}

/// A position past the rope tables (but inside the cache) rotates to NaN, as the rope's own
/// kernels do, in every query head's rope slot and in its cache row's rope part, while the
/// tokens inside the tables get numbers (128 heads: each thread's query pairs in one chunk).
#[test]
fn mla_rope_cache_write_past_the_tables_is_nan() {
    let Some(gpu) = gpu_or_skip("mla_rope_cache_write_past_the_tables_is_nan") else {
        return;
    };
    let s = gpu.stream();
    let (rank, rope_dim, nope, heads, eps) = (512usize, 64usize, 128usize, 128usize, 1e-6f32);
    let (width, qd) = (rank + rope_dim, nope + rope_dim);
    let yarn = kt_kernels::ops::RopeYarn::new(rope_dim, 10_000.0, None).unwrap();
    let (table_rows, cache_rows) = (4usize, 8usize);
    let tables = s.upload_rope_tables(&yarn, table_rows).unwrap();
    let mut rng = SplitMix64::new(1600);
    let q: Vec<bf16> = random(&mut rng, 2 * heads * qd, 1.5);
    let kv: Vec<bf16> = random(&mut rng, 2 * width, 1.5);
    let w: Vec<f32> = (0..rank).map(|_| 1.0 + 0.2 * rng.normal()).collect();
    // token 0 at row 3 (the tables' last), token 1 at row 6 (past them)
    let pos = [3u32, 6];
    let mut q_lat = nan_buf::<bf16>(s, 2 * heads * width);
    let mut cache = nan_buf::<bf16>(s, cache_rows * width);
    s.mla_rope_cache_write(
        &s.upload(&q).unwrap(),
        heads,
        nope,
        &mut q_lat,
        &s.upload(&kv).unwrap(),
        &s.upload(&w).unwrap(),
        &mut cache,
        &s.upload(&pos).unwrap(),
        &tables,
        eps,
    )
    .unwrap();
    let (q_lat, cache) = (s.download(&q_lat).unwrap(), s.download(&cache).unwrap());
    for t in 0..2 {
        for h in 0..heads {
            let slot = &q_lat[(t * heads + h) * width + rank..(t * heads + h + 1) * width];
            let nan = slot.iter().filter(|v| v.to_f32().is_nan()).count();
            let want = if t == 0 { 0 } else { rope_dim };
            assert_eq!(nan, want, "token {t} head {h}: {nan} NaN in the rope slot");
        }
    }
    for (t, &p) in pos.iter().enumerate() {
        let row = &cache[p as usize * width..(p as usize + 1) * width];
        assert!(
            row[..rank].iter().all(|v| !v.to_f32().is_nan()),
            "token {t}: latent"
        );
        let nan = row[rank..].iter().filter(|v| v.to_f32().is_nan()).count();
        assert_eq!(
            nan,
            if t == 0 { 0 } else { rope_dim },
            "token {t}: rope part"
        );
    }
}

/// The stacked layouts (q_proj and kv_a as one GEMV, each token's row `[q | kv]`; a query
/// LoRA's q_a and kv_a as one, rows `[q_a | kv]`) write the same q_lat and cache bits as the
/// separate buffers (checked against the unfused chain above); outputs start as NaN, so a
/// slot one layout leaves unwritten differs in bits.
#[test]
fn mla_rope_cache_write_stacked_matches_separate_bit_for_bit() {
    let Some(gpu) = gpu_or_skip("mla_rope_cache_write_stacked_matches_separate_bit_for_bit") else {
        return;
    };
    let s = gpu.stream();
    let (rank, rope_dim, nope, heads, eps) = (512usize, 64usize, 128usize, 16usize, 1e-6f32);
    let (width, qd) = (rank + rope_dim, nope + rope_dim);
    let yarn = kt_kernels::ops::RopeYarn::new(rope_dim, 10_000.0, None).unwrap();
    let q_width = heads * qd;
    for (i, &t) in TOKENS.iter().enumerate() {
        let mut rng = SplitMix64::new(1300 + i as u64);
        let rows = 2 * t + 9;
        let tables = s.upload_rope_tables(&yarn, rows).unwrap();
        let q: Vec<bf16> = random(&mut rng, t * q_width, 1.5);
        let kv: Vec<bf16> = random(&mut rng, t * width, 1.5);
        let qkv: Vec<bf16> = (0..t)
            .flat_map(|r| {
                let (qr, kr) = (
                    &q[r * q_width..(r + 1) * q_width],
                    &kv[r * width..(r + 1) * width],
                );
                qr.iter().chain(kr).copied().collect::<Vec<_>>()
            })
            .collect();
        let w: Vec<f32> = (0..rank).map(|_| 1.0 + 0.2 * rng.normal()).collect();
        let pos: Vec<u32> = (0..t).map(|r| (2 * r + 1) as u32).collect();
        let (qb, kvb, qkvb, wd, pd) = (
            s.upload(&q).unwrap(),
            s.upload(&kv).unwrap(),
            s.upload(&qkv).unwrap(),
            s.upload(&w).unwrap(),
            s.upload(&pos).unwrap(),
        );
        let mut want_q = nan_buf::<bf16>(s, t * heads * width);
        let mut want_c = nan_buf::<bf16>(s, rows * width);
        s.mla_rope_cache_write(
            &qb,
            heads,
            nope,
            &mut want_q,
            &kvb,
            &wd,
            &mut want_c,
            &pd,
            &tables,
            eps,
        )
        .unwrap();
        let mut got_q = nan_buf::<bf16>(s, t * heads * width);
        let mut got_c = nan_buf::<bf16>(s, rows * width);
        s.mla_rope_cache_write_stacked(
            &qkvb, heads, nope, &mut got_q, &wd, &mut got_c, &pd, &tables, eps,
        )
        .unwrap();
        // the kv rows behind a query LoRA's q_a columns ([q_a | kv] rows of a stacked GEMV)
        let a_rank = 96;
        let akv: Vec<bf16> = (0..t)
            .flat_map(|r| {
                let qa: Vec<bf16> = random(&mut rng, a_rank, 3.0);
                qa.into_iter()
                    .chain(kv[r * width..(r + 1) * width].iter().copied())
                    .collect::<Vec<_>>()
            })
            .collect();
        let akvb = s.upload(&akv).unwrap();
        let mut in_q = nan_buf::<bf16>(s, t * heads * width);
        let mut in_c = nan_buf::<bf16>(s, rows * width);
        s.mla_rope_cache_write_kv_in(
            &qb, heads, nope, &mut in_q, &akvb, a_rank, &wd, &mut in_c, &pd, &tables, eps,
        )
        .unwrap();
        for (what, got, want) in [
            ("q_lat", &got_q, &want_q),
            ("cache", &got_c, &want_c),
            ("q_lat, kv in [q_a | kv]", &in_q, &want_q),
            ("cache, kv in [q_a | kv]", &in_c, &want_c),
        ] {
            let (got, want) = (s.download(got).unwrap(), s.download(want).unwrap());
            let bits = |v: &[bf16]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&got), bits(&want), "t{t} {what}");
            assert!(
                want.iter().any(|v| !v.to_f32().is_nan()),
                "t{t} {what}: nothing written"
            );
        }
    }
    let tables = s.upload_rope_tables(&yarn, 4).unwrap();
    let wd = s.upload(&vec![1.0f32; rank]).unwrap();
    let pd = s.upload(&[0u32]).unwrap();
    let short = s.upload(&vec![bf16::ONE; q_width + width - 1]).unwrap();
    let mut q_lat = nan_buf::<bf16>(s, heads * width);
    let mut cache = nan_buf::<bf16>(s, 4 * width);
    assert!(matches!(
        s.mla_rope_cache_write_stacked(
            &short, heads, nope, &mut q_lat, &wd, &mut cache, &pd, &tables, eps
        ),
        Err(kt_kernels::cuda::CudaError::Shape { .. })
    ));
    // a [q_a | kv] row one element short of the kv part
    let q = s.upload(&vec![bf16::ONE; q_width]).unwrap();
    let short = s.upload(&vec![bf16::ONE; 96 + width - 1]).unwrap();
    assert!(matches!(
        s.mla_rope_cache_write_kv_in(
            &q, heads, nope, &mut q_lat, &short, 96, &wd, &mut cache, &pd, &tables, eps
        ),
        Err(kt_kernels::cuda::CudaError::Shape { .. })
    ));
}

/// The L2 prefetch asks for at most the buffer's bytes, says how many, and changes no value
/// of the buffer (nor of one beside it).
#[test]
fn l2_prefetch_counts_its_bytes_and_changes_nothing() {
    let Some(gpu) = gpu_or_skip("l2_prefetch_counts_its_bytes_and_changes_nothing") else {
        return;
    };
    let s = gpu.stream();
    assert!(gpu.info().l2_bytes > 0, "the device reports no L2");
    let mut rng = SplitMix64::new(1500);
    let a: Vec<bf16> = random(&mut rng, 300_001, 2.0);
    let b: Vec<f32> = (0..4097).map(|_| rng.normal()).collect();
    let (ad, bd) = (s.upload(&a).unwrap(), s.upload(&b).unwrap());
    assert_eq!(s.prefetch_l2(&ad, usize::MAX).unwrap(), 2 * a.len());
    assert_eq!(s.prefetch_l2(&ad, 1000).unwrap(), 1000);
    assert_eq!(s.prefetch_l2(&bd, 0).unwrap(), 0);
    assert_eq!(
        s.prefetch_l2(&bd, 4 * b.len() - 3).unwrap(),
        4 * b.len() - 3
    );
    let bits = |v: &[bf16]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(&s.download(&ad).unwrap()), bits(&a));
    let got = s.download(&bd).unwrap();
    assert!(got.iter().zip(&b).all(|(g, w)| g.to_bits() == w.to_bits()));
}

#[test]
fn copies_adds_and_casts_are_exact() {
    let Some(gpu) = gpu_or_skip("copies_adds_and_casts_are_exact") else {
        return;
    };
    let s = gpu.stream();
    for (i, &t) in TOKENS.iter().enumerate() {
        let mut rng = SplitMix64::new(700 + i as u64);
        // the q_pe columns of [t * 3, 48] rows into [t * 3, 80] rows at column 72
        let rows = t * 3;
        let src: Vec<bf16> = random(&mut rng, rows * 48, 1.0);
        let srcd = s.upload(&src).unwrap();
        let mut dst = nan_buf::<bf16>(s, rows * 80);
        s.copy_cols_bf16(&srcd, 40, 48, &mut dst, 72, 80, rows, 8)
            .unwrap();
        let got = s.download(&dst).unwrap();
        for r in 0..rows {
            for c in 0..80 {
                let g = got[r * 80 + c];
                if c >= 72 {
                    assert_eq!(
                        g.to_bits(),
                        src[r * 48 + 40 + c - 72].to_bits(),
                        "copy r{r} c{c}"
                    );
                } else {
                    assert!(g.to_f32().is_nan(), "copy r{r} c{c} written");
                }
            }
        }

        let n = t * 77;
        let acc: Vec<f32> = random(&mut rng, n, 3.0);
        let xb: Vec<bf16> = random(&mut rng, n, 1.0);
        let mut accd = s.upload(&acc).unwrap();
        s.add_f32(&mut accd, &s.upload(&xb).unwrap()).unwrap();
        let got = s.download(&accd).unwrap();
        for j in 0..n {
            assert_eq!(got[j], acc[j] + xb[j].to_f32(), "add_f32 bf16 {j}");
        }
        let xf: Vec<f32> = random(&mut rng, n, 1.0);
        s.add_f32(&mut accd, &s.upload(&xf).unwrap()).unwrap();
        let got2 = s.download(&accd).unwrap();
        for j in 0..n {
            assert_eq!(got2[j], got[j] + xf[j], "add_f32 f32 {j}");
        }

        let mut yb = nan_buf::<bf16>(s, n);
        s.cast(&s.upload(&xf).unwrap(), &mut yb).unwrap();
        let yb = s.download(&yb).unwrap();
        for j in 0..n {
            assert_eq!(
                yb[j].to_bits(),
                bf16::from_f32(xf[j]).to_bits(),
                "cast f32->bf16 {j}"
            );
        }
        let mut yf = nan_buf::<f32>(s, n);
        s.cast(&s.upload(&xb).unwrap(), &mut yf).unwrap();
        let yf = s.download(&yf).unwrap();
        for j in 0..n {
            assert_eq!(yf[j], xb[j].to_f32(), "cast bf16->f32 {j}");
        }
    }
}

/// The warp-per-column path (m <= GEMV_MAX_M; rows of at most 16 vectors 4 columns per warp)
/// and its neighbour: 16-byte loads (k and every
/// stride a multiple of the vector) and scalar loads (odd k, an A offset off the vector
/// grid), a batch of strided products, output rows wider than n (the gaps stay NaN), and
/// m = GEMV_MAX_M + 1 on the tiled kernel.
#[test]
fn gemm_small_m_paths_match_reference() {
    let Some(gpu) = gpu_or_skip("gemm_small_m_paths_match_reference") else {
        return;
    };
    let s = gpu.stream();
    let max = kt_kernels::cuda::linear::GEMV_MAX_M;
    for m in [1usize, 2, 5, max, max + 1] {
        // k 40 and 128 (MLA's absorption: 16 vectors of bf16) take the short 4-columns-per-warp
        // kernel in bf16, 136 and 512 (the expansion: 64 vectors) the mid one, 520 the next
        // size up the warp-per-column one (f32: 128 and 136 mid, 1024 one column per warp);
        // 7176 (V3's router width and a vector): lanes of 28 and 29 vectors in chunks of 4, the
        // last chunk part past the row
        for &(n, k) in &[
            (37usize, 40usize),
            (37, 41),
            (37, 128),
            (37, 136),
            (37, 512),
            (37, 520),
            (257, 1024),
            (19, 7176),
            (9, 3),
        ] {
            let seed = 900 + (m * 31 + n + k) as u64;
            let g = GemmNt {
                out: Strides {
                    offset: 2,
                    batch: 0,
                    row: n + 3,
                },
                ..GemmNt::linear(m, n, k)
            };
            let len = 2 + (m - 1) * (n + 3) + n + 1;
            let what = format!("small m{m} n{n} k{k}");
            gemm_case::<bf16, bf16, bf16>(s, &format!("{what} bf16"), &g, len, seed);
            gemm_case::<bf16, bf16, f32>(s, &format!("{what} bf16->f32"), &g, len, seed + 1);
            gemm_case::<f32, f32, f32>(s, &format!("{what} f32"), &g, len, seed + 2);
        }
        // batched, A starting off the vector grid (scalar loads), B rows padded
        let (batch, n, k) = (5usize, 19usize, 64usize);
        let g = GemmNt {
            batch,
            m,
            n,
            k,
            a: Strides {
                offset: 3,
                batch: k + 5,
                row: batch * (k + 5),
            },
            b_batch: n * (k + 8),
            b_row: k + 8,
            out: Strides {
                offset: 0,
                batch: n + 1,
                row: batch * (n + 1),
            },
        };
        let len = m * batch * (n + 1);
        gemm_case::<bf16, bf16, bf16>(s, &format!("small batched m{m}"), &g, len, 990 + m as u64);
        // the same with aligned strides (16-byte loads)
        let g = GemmNt {
            a: Strides {
                offset: 8,
                batch: k + 8,
                row: batch * (k + 8),
            },
            ..g
        };
        gemm_case::<bf16, bf16, bf16>(
            s,
            &format!("small batched vec m{m}"),
            &g,
            len,
            995 + m as u64,
        );
    }
}

/// The fused residual add + RMSNorm: bit for bit `add_f32` then `rmsnorm_w32` (what the
/// forward pass ran before), and within the f32 work of the scalar reference on `x + d`.
#[test]
fn add_rmsnorm_w32_matches_add_then_norm() {
    let Some(gpu) = gpu_or_skip("add_rmsnorm_w32_matches_add_then_norm") else {
        return;
    };
    let s = gpu.stream();
    let (n, eps) = (2048usize + 13, 1e-6f32);
    for (i, &t) in TOKENS.iter().enumerate() {
        let mut rng = SplitMix64::new(1100 + i as u64);
        let x: Vec<f32> = random(&mut rng, t * n, 2.0);
        let db: Vec<bf16> = random(&mut rng, t * n, 1.0);
        let df: Vec<f32> = random(&mut rng, t * n, 1.0);
        let w: Vec<f32> = (0..n).map(|_| 1.0 + 0.3 * rng.normal()).collect();
        let wd = s.upload(&w).unwrap();
        // bf16 d with the f32 copy, f32 d without
        for with32 in [true, false] {
            let (mut x1, mut x2) = (s.upload(&x).unwrap(), s.upload(&x).unwrap());
            let (mut o1, mut o2) = (nan_buf::<bf16>(s, t * n), nan_buf::<bf16>(s, t * n));
            let (mut f1, mut f2) = (nan_buf::<f32>(s, t * n), nan_buf::<f32>(s, t * n));
            let sum: Vec<f32> = if with32 {
                let dd = s.upload(&db).unwrap();
                s.add_rmsnorm_w32(&mut x1, &dd, t, &wd, &mut o1, Some(&mut f1), eps)
                    .unwrap();
                s.add_f32(&mut x2, &dd).unwrap();
                s.rmsnorm_w32(&x2, n, t, &wd, &mut o2, Some(&mut f2), eps)
                    .unwrap();
                x.iter().zip(&db).map(|(a, b)| a + b.to_f32()).collect()
            } else {
                let dd = s.upload(&df).unwrap();
                s.add_rmsnorm_w32(&mut x1, &dd, t, &wd, &mut o1, None, eps)
                    .unwrap();
                s.add_f32(&mut x2, &dd).unwrap();
                s.rmsnorm_w32(&x2, n, t, &wd, &mut o2, None, eps).unwrap();
                x.iter().zip(&df).map(|(a, b)| a + b).collect()
            };
            let what = format!("add_rmsnorm t{t} f32 copy {with32}");
            let (gx, go) = (s.download(&x1).unwrap(), s.download(&o1).unwrap());
            assert_eq!(gx, sum, "{what}: residual");
            assert_eq!(gx, s.download(&x2).unwrap(), "{what}: residual vs add_f32");
            let bits = |v: &[bf16]| v.iter().map(|b| b.to_bits()).collect::<Vec<_>>();
            assert_eq!(
                bits(&go),
                bits(&s.download(&o2).unwrap()),
                "{what}: bf16 out"
            );
            let g32 = s.download(&f1).unwrap();
            if with32 {
                assert_eq!(
                    g32.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                    s.download(&f2)
                        .unwrap()
                        .iter()
                        .map(|v| v.to_bits())
                        .collect::<Vec<_>>(),
                    "{what}: f32 out"
                );
            } else {
                assert!(g32.iter().all(|v| v.is_nan()), "{what}: f32 copy written");
            }
            let mut want = vec![0.0f32; t * n];
            for r in 0..t {
                let row = r * n..(r + 1) * n;
                ops::rmsnorm(&sum[row.clone()], &w, eps, &mut want[row]).unwrap();
            }
            let want64: Vec<f64> = want.iter().map(|&v| v as f64).collect();
            assert_close(&what, &go, &want64, |_, r| {
                (bf16::UNIT_ROUNDOFF + 4e-6) * r.abs() + 1e-30
            });
        }
    }
    // shapes are checked
    let mut x = s.alloc_zeroed::<f32>(10).unwrap();
    let d = s.alloc_zeroed::<f32>(9).unwrap();
    let w = s.alloc_zeroed::<f32>(5).unwrap();
    let mut o = s.alloc_zeroed::<bf16>(10).unwrap();
    let err = s
        .add_rmsnorm_w32(&mut x, &d, 2, &w, &mut o, None, eps)
        .unwrap_err()
        .to_string();
    assert!(err.contains("add_rmsnorm_w32"), "{err}");
}

/// Two residual adds in one launch, rounded as two single adds.
#[test]
fn add2_f32_is_two_adds() {
    let Some(gpu) = gpu_or_skip("add2_f32_is_two_adds") else {
        return;
    };
    let s = gpu.stream();
    for (i, &t) in TOKENS.iter().enumerate() {
        let mut rng = SplitMix64::new(1200 + i as u64);
        let n = t * 2053;
        let acc: Vec<f32> = random(&mut rng, n, 3.0);
        let x: Vec<f32> = random(&mut rng, n, 1.0);
        let y: Vec<bf16> = random(&mut rng, n, 1.0);
        let mut accd = s.upload(&acc).unwrap();
        s.add2_f32(&mut accd, &s.upload(&x).unwrap(), &s.upload(&y).unwrap())
            .unwrap();
        let got = s.download(&accd).unwrap();
        for j in 0..n {
            assert_eq!(got[j], (acc[j] + x[j]) + y[j].to_f32(), "add2 t{t} {j}");
        }
        let short = s.alloc_zeroed::<bf16>(n - 1).unwrap();
        let err = s
            .add2_f32(&mut accd, &s.upload(&x).unwrap(), &short)
            .unwrap_err()
            .to_string();
        assert!(err.contains("add2_f32"), "{err}");
    }
}
