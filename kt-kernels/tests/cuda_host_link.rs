//! The hybrid decode graph's zero-copy hand-offs between the GPU and the CPU experts: the
//! gating kernel that writes the routed experts' inputs straight into pinned host memory and
//! raises a host flag itself, and the return kernel that waits for a host flag, adds the
//! routed sum read from pinned memory and computes the next RMSNorm. Each against the unfused
//! kernels it replaces (themselves checked against scalar references in `cuda_gating` and
//! `cuda_linear`), bit for bit, on outputs poisoned with NaN.
#![cfg(feature = "cuda")]

mod cuda_common;

use std::time::Duration;

use cuda_common::{gpu_or_skip, nan_buf, random};
use half::bf16;
use kt_kernels::cuda::gating::packed_len;
use kt_kernels::cuda::linear::GemmNt;
use kt_kernels::ops::{RouterConfig, Scoring, TopkMethod};
use kt_kernels::util::SplitMix64;

const WAIT: Duration = Duration::from_secs(10);

fn router(
    n_experts: usize,
    groups: (usize, usize),
    scoring: Scoring,
    method: TopkMethod,
) -> RouterConfig {
    RouterConfig {
        n_experts,
        top_k: if n_experts == 256 { 8 } else { 6 },
        n_group: groups.0,
        topk_group: groups.1,
        scoring,
        method,
        norm_topk_prob: method == TopkMethod::NoauxTc,
        routed_scaling_factor: if method == TopkMethod::NoauxTc {
            2.5
        } else {
            1.0
        },
    }
}

/// The words of moe_gating_packed_signal's host pack equal moe_gating_packed's device pack,
/// and the flag reaches the value the launch names (the host sees it raised by the kernel).
#[test]
fn signal_gating_matches_packed_and_raises_the_flag() {
    let Some(gpu) = gpu_or_skip("signal_gating_matches_packed_and_raises_the_flag") else {
        return;
    };
    let s = gpu.stream();
    let flag = gpu.host_flag().unwrap();
    let hidden = 2048 + 40; // a row tail past the warp
    let configs = [
        (
            "v2-lite greedy",
            router(64, (1, 1), Scoring::Softmax, TopkMethod::Greedy),
            false,
        ),
        (
            "v3 noaux_tc g8/4",
            router(256, (8, 4), Scoring::Sigmoid, TopkMethod::NoauxTc),
            true,
        ),
    ];
    let mut value = 0u32;
    for (ci, (name, cfg, with_bias)) in configs.iter().enumerate() {
        // 1 token (decode), and more tokens than the block's warps (its token loop)
        for tokens in [1usize, 6] {
            let mut rng = SplitMix64::new(4200 + ci as u64 * 10 + tokens as u64);
            let logits: Vec<f32> = (0..tokens * cfg.n_experts)
                .map(|_| rng.normal() * 2.0)
                .collect();
            let bias: Vec<f32> = (0..cfg.n_experts).map(|_| rng.normal() * 0.1).collect();
            let x: Vec<f32> = (0..tokens * hidden).map(|_| rng.normal()).collect();
            let ld = s.upload(&logits).unwrap();
            let bd = with_bias.then(|| s.upload(&bias).unwrap());
            let xd = s.upload(&x).unwrap();
            let len = packed_len(tokens, hidden, cfg.top_k);
            let mut want = s.upload(&vec![f32::NAN.to_bits(); len]).unwrap();
            s.moe_gating_packed(cfg, &ld, bd.as_ref(), tokens, &xd, &mut want)
                .unwrap();
            let want = s.download(&want).unwrap();

            let mut host = gpu.alloc_pinned::<u32>(len).unwrap();
            host.as_mut_slice().unwrap().fill(f32::NAN.to_bits());
            value = value.wrapping_add(3);
            // SAFETY: the host does not touch `host` until the flag reaches `value`; both
            // live past the synchronize below.
            unsafe {
                s.moe_gating_packed_signal(
                    cfg,
                    &ld,
                    bd.as_ref(),
                    tokens,
                    &xd,
                    &mut host,
                    &flag,
                    value,
                )
                .unwrap()
            };
            flag.wait_at_least(value, WAIT).unwrap();
            // SAFETY: the kernel raised the flag after its fenced writes; nothing else writes.
            let got = unsafe { host.as_slice_unsynced() }.to_vec();
            s.synchronize().unwrap();
            assert_eq!(flag.value(), value, "{name}, {tokens} tokens: flag");
            assert_eq!(got, want, "{name}, {tokens} tokens: pack");
        }
    }
}

/// wait_add2_rmsnorm_w32 waits for its flag (the routed sum is written after the launch, over
/// NaN), then matches add2_f32 (or add_f32 without shared), add_f32 of the extra addend when
/// given, and rmsnorm_w32 bit for bit.
#[test]
fn wait_return_matches_add_then_norm_after_the_flag() {
    let Some(gpu) = gpu_or_skip("wait_return_matches_add_then_norm_after_the_flag") else {
        return;
    };
    let s = gpu.stream();
    let flag = gpu.host_flag().unwrap();
    let eps = 1e-6f32;
    let mut value = 0u32;
    // 7168: V3's rows, four chunks of staged loads a thread, the last part past the row; 8200:
    // past the 32 x 256 elements a thread stages before the flag (the rest is read after);
    // 202: rows of a length that is not a multiple of 4 (row 1 starts off 16-byte alignment)
    for (ci, &(rows, n)) in [
        (1usize, 2048usize),
        (3, 200),
        (1, 7168),
        (2, 8200),
        (2, 202),
    ]
    .iter()
    .enumerate()
    {
        for (with_shared, with_extra) in
            [(true, false), (false, false), (true, true), (false, true)]
        {
            let seed = 5100 + ci as u64 * 4 + with_shared as u64 + 2 * with_extra as u64;
            let mut rng = SplitMix64::new(seed);
            let x: Vec<f32> = random(&mut rng, rows * n, 2.0);
            let routed: Vec<f32> = random(&mut rng, rows * n, 1.0);
            let shared: Vec<bf16> = random(&mut rng, rows * n, 1.0);
            let extra: Vec<f32> = random(&mut rng, rows * n, 0.5);
            let w: Vec<f32> = (0..n).map(|_| 1.0 + 0.3 * rng.normal()).collect();
            let wd = s.upload(&w).unwrap();
            let sd = s.upload(&shared).unwrap();
            let rd = s.upload(&routed).unwrap();
            let ed = s.upload(&extra).unwrap();
            // the unfused chain
            let mut x1 = s.upload(&x).unwrap();
            let mut o1 = nan_buf::<bf16>(s, rows * n);
            if with_shared {
                s.add2_f32(&mut x1, &rd, &sd).unwrap();
            } else {
                s.add_f32(&mut x1, &rd).unwrap();
            }
            if with_extra {
                s.add_f32(&mut x1, &ed).unwrap();
            }
            s.rmsnorm_w32(&x1, n, rows, &wd, &mut o1, None, eps)
                .unwrap();
            let (want_x, want_o) = (s.download(&x1).unwrap(), s.download(&o1).unwrap());

            let mut x2 = s.upload(&x).unwrap();
            let mut o2 = nan_buf::<bf16>(s, rows * n);
            let mut host = gpu.alloc_pinned::<f32>(rows * n).unwrap();
            host.as_mut_slice().unwrap().fill(f32::NAN);
            value = value.wrapping_add(5);
            // SAFETY: the host writes `host` only before raising the flag and reads nothing
            // until the synchronize below; the flag is raised on every path of this test
            // before the synchronize (an unwrap failing first aborts the test process's
            // stream anyway).
            unsafe {
                s.wait_add2_rmsnorm_w32(
                    &flag,
                    value,
                    &mut x2,
                    &host,
                    with_shared.then_some(&sd),
                    with_extra.then_some(&ed),
                    &wd,
                    &mut o2,
                    eps,
                )
                .unwrap()
            };
            // the kernel is (very likely) spinning by now: a kernel that did not wait reads NaN
            std::thread::sleep(Duration::from_millis(5));
            // SAFETY: the kernel reads `host` only after the flag below.
            unsafe { host.as_mut_slice_unsynced() }.copy_from_slice(&routed);
            flag.raise(value);
            s.synchronize().unwrap();
            let what = format!("{rows} rows of {n}, shared {with_shared}, extra {with_extra}");
            let bits32 = |v: &[f32]| v.iter().map(|b| b.to_bits()).collect::<Vec<_>>();
            let bits16 = |v: &[bf16]| v.iter().map(|b| b.to_bits()).collect::<Vec<_>>();
            assert_eq!(
                bits32(&s.download(&x2).unwrap()),
                bits32(&want_x),
                "{what}: residual"
            );
            assert_eq!(
                bits16(&s.download(&o2).unwrap()),
                bits16(&want_o),
                "{what}: norm"
            );
        }
    }
}

/// add_norm_route_signal (the fused FFN entry) writes what add_rmsnorm_w32, the router's
/// gemm_nt and the packed gating write, bit for bit: the residual, both norms, the logits and
/// the pack; it raises the flag, and leaves its block counter at 0 (two launches in a row, the
/// second on the first's residual, as consecutive layers do).
#[test]
fn fused_ffn_entry_matches_norm_router_gating() {
    let Some(gpu) = gpu_or_skip("fused_ffn_entry_matches_norm_router_gating") else {
        return;
    };
    let s = gpu.stream();
    let flag = gpu.host_flag().unwrap();
    let eps = 1e-6f32;
    let configs = [
        // V2-Lite: 64 experts over 32 blocks; V3: 256 experts, groups, bias, 7168-wide rows
        // (router rows past the registers' prefetch); 61 experts: a last block with one
        // expert (its other router warp idle)
        (
            "v2-lite greedy",
            router(64, (1, 1), Scoring::Softmax, TopkMethod::Greedy),
            false,
            2048,
        ),
        (
            "v3 noaux_tc g8/4",
            router(256, (8, 4), Scoring::Sigmoid, TopkMethod::NoauxTc),
            true,
            7168,
        ),
        (
            "61 experts greedy",
            router(61, (1, 1), Scoring::Softmax, TopkMethod::Greedy),
            false,
            516,
        ),
    ];
    let mut value = 100u32;
    for (ci, (name, cfg, with_bias, n)) in configs.iter().enumerate() {
        let (n, e, k) = (*n, cfg.n_experts, cfg.top_k);
        let mut rng = SplitMix64::new(6100 + ci as u64);
        let x: Vec<f32> = random(&mut rng, n, 2.0);
        let norm: Vec<f32> = (0..n).map(|_| 1.0 + 0.3 * rng.normal()).collect();
        let rw: Vec<f32> = random(&mut rng, e * n, 0.05);
        let bias: Vec<f32> = (0..e).map(|_| rng.normal() * 0.1).collect();
        let (nd, rwd) = (s.upload(&norm).unwrap(), s.upload(&rw).unwrap());
        let bd = with_bias.then(|| s.upload(&bias).unwrap());
        let (mut x1, mut x2) = (s.upload(&x).unwrap(), s.upload(&x).unwrap());
        let mut counter = s.alloc_zeroed::<u32>(1).unwrap();
        for step in 0..2 {
            let d: Vec<bf16> = random(&mut rng, n, 1.0);
            let dd = s.upload(&d).unwrap();
            // the unfused chain
            let mut xn1 = nan_buf::<bf16>(s, n);
            let mut f1 = nan_buf::<f32>(s, n);
            let mut l1 = nan_buf::<f32>(s, e);
            s.add_rmsnorm_w32(&mut x1, &dd, 1, &nd, &mut xn1, Some(&mut f1), eps)
                .unwrap();
            s.gemm_nt(&GemmNt::linear(1, e, n), &f1, &rwd, &mut l1)
                .unwrap();
            let mut p1 = s
                .upload(&vec![f32::NAN.to_bits(); packed_len(1, n, k)])
                .unwrap();
            s.moe_gating_packed(cfg, &l1, bd.as_ref(), 1, &f1, &mut p1)
                .unwrap();
            // the fused launch
            let mut xn2 = nan_buf::<bf16>(s, n);
            let mut f2 = nan_buf::<f32>(s, n);
            let mut l2 = nan_buf::<f32>(s, e);
            let mut host = gpu.alloc_pinned::<u32>(packed_len(1, n, k)).unwrap();
            host.as_mut_slice().unwrap().fill(f32::NAN.to_bits());
            value += 1;
            // SAFETY: the host reads `host` only after the flag; all buffers outlive the
            // synchronize below.
            unsafe {
                s.add_norm_route_signal(
                    cfg,
                    &mut x2,
                    &dd,
                    &nd,
                    eps,
                    &mut xn2,
                    &mut f2,
                    &rwd,
                    &mut l2,
                    &mut counter,
                    bd.as_ref(),
                    &mut host,
                    &flag,
                    value,
                )
                .unwrap()
            };
            flag.wait_at_least(value, WAIT).unwrap();
            // SAFETY: the kernel raised the flag after its fenced writes; nothing else writes.
            let got = unsafe { host.as_slice_unsynced() }.to_vec();
            s.synchronize().unwrap();
            let what = format!("{name}, launch {step}");
            let bits32 = |v: &[f32]| v.iter().map(|b| b.to_bits()).collect::<Vec<_>>();
            let bits16 = |v: &[bf16]| v.iter().map(|b| b.to_bits()).collect::<Vec<_>>();
            let dl = |b: &kt_kernels::cuda::DeviceBuf<f32>| bits32(&s.download(b).unwrap());
            assert_eq!(dl(&x2), dl(&x1), "{what}: residual");
            assert_eq!(
                bits16(&s.download(&xn2).unwrap()),
                bits16(&s.download(&xn1).unwrap()),
                "{what}: bf16 norm"
            );
            assert_eq!(dl(&f2), dl(&f1), "{what}: f32 norm");
            assert_eq!(dl(&l2), dl(&l1), "{what}: logits");
            assert_eq!(got, s.download(&p1).unwrap(), "{what}: pack");
            assert_eq!(s.download(&counter).unwrap(), vec![0], "{what}: counter");
        }
    }
}

/// Bad lengths are refused before any launch, naming the operation.
#[test]
fn host_link_ops_reject_bad_lengths() {
    let Some(gpu) = gpu_or_skip("host_link_ops_reject_bad_lengths") else {
        return;
    };
    let s = gpu.stream();
    let flag = gpu.host_flag().unwrap();
    let cfg = router(64, (1, 1), Scoring::Softmax, TopkMethod::Greedy);
    let logits = s.upload(&vec![0.5f32; 2 * 64]).unwrap();
    let x = s.upload(&[1.0f32; 2 * 16]).unwrap();
    let mut short = gpu.alloc_pinned::<u32>(packed_len(2, 16, 6) - 1).unwrap();
    // SAFETY: refused before any launch.
    let err =
        unsafe { s.moe_gating_packed_signal(&cfg, &logits, None, 2, &x, &mut short, &flag, 1) }
            .unwrap_err()
            .to_string();
    assert!(err.contains("moe_gating_packed_signal"), "{err}");

    let w = s.upload(&[1.0f32; 16]).unwrap();
    let mut xr = s.upload(&[1.0f32; 32]).unwrap();
    let routed = gpu.alloc_pinned::<f32>(31).unwrap();
    let mut out = nan_buf::<bf16>(s, 32);
    // SAFETY: refused before any launch.
    let err = unsafe {
        s.wait_add2_rmsnorm_w32(&flag, 1, &mut xr, &routed, None, None, &w, &mut out, 1e-6)
    }
    .unwrap_err()
    .to_string();
    assert!(err.contains("wait_add2_rmsnorm_w32"), "{err}");
    let mut counter = s.alloc_zeroed::<u32>(1).unwrap();
    let (mut xn, mut f) = (nan_buf::<bf16>(s, 16), nan_buf::<f32>(s, 16));
    let mut logits64 = nan_buf::<f32>(s, 64);
    let router_w = s.upload(&vec![0.1f32; 64 * 15]).unwrap(); // one row short
    let mut x16 = s.upload(&[1.0f32; 16]).unwrap();
    let d = nan_buf::<bf16>(s, 16);
    let mut pack = gpu.alloc_pinned::<u32>(packed_len(1, 16, 6)).unwrap();
    // SAFETY: refused before any launch.
    let err = unsafe {
        s.add_norm_route_signal(
            &cfg,
            &mut x16,
            &d,
            &w,
            1e-6,
            &mut xn,
            &mut f,
            &router_w,
            &mut logits64,
            &mut counter,
            None,
            &mut pack,
            &flag,
            1,
        )
    }
    .unwrap_err()
    .to_string();
    assert!(err.contains("add_norm_route_signal"), "{err}");
    assert_eq!(flag.value(), 0, "nothing ran");
}
