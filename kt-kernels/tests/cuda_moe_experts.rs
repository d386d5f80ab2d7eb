//! The GPU prefill experts' pieces (`kt_kernels::cuda::moe_experts`) against a scalar f64
//! reference: a layer of int4 experts staged from pinned memory through a second stream,
//! the token rows gathered in expert order, gate+up and down W4A16 GEMMs per expert on
//! their runs of rows, SiLU-and-multiply, and the weighted combine. 37 tokens (no multiple
//! of any tile), top 3 of 6 experts with one expert nobody chose and runs of rows both at
//! most 16 (small-m kernel) and past it (tiled kernel); outputs poisoned with NaN.
//!
//! The reference multiplies the bf16 inputs with the weights each kernel uses
//! (`Int4Weights::kernel_weights` past 16 rows, the exact `dequantize` up to 16), in f64,
//! and rounds to bf16 where the GPU stores bf16 (gate+up, the activation, the expert
//! outputs). A bf16 rounding is 2^-9 relative; the bound per element is 2^-7 of the
//! element's magnitude plus 2^-7 of the row's RMS (rounding of the stored intermediates
//! that feed it, a few ulps at most, and f32 sums of 256-long products).
#![cfg(feature = "cuda")]

mod cuda_common;

use cuda_common::{gpu_or_skip, nan_buf, random};
use half::bf16;
use kt_kernels::cuda::gating::packed_len;
use kt_kernels::cuda::moe_experts::{HostExpertSlab, PackedWords, ResidentStage, SlabShape};
use kt_kernels::cuda::w4a16::{GemmWorkspace, GemvPlan, Int4Weights};
use kt_kernels::util::SplitMix64;

const TOKENS: usize = 37;
const TOP_K: usize = 3;
const EXPERTS: usize = 6;
const HIDDEN: usize = 256;
const WIDTH: usize = 128;

fn silu(x: f64) -> f64 {
    x / (1.0 + (-x).exp())
}

fn round_bf16(x: f64) -> f64 {
    bf16::from_f64(x).to_f64()
}

/// Router choices: expert 4 never chosen, expert 0 by nearly every token (a run past 16
/// rows), the others by few (runs of at most 16).
fn choices(rng: &mut SplitMix64) -> Vec<u32> {
    let mut ids = Vec::with_capacity(TOKENS * TOP_K);
    for t in 0..TOKENS {
        let mut picked: Vec<u32> = Vec::new();
        if t % 5 != 0 {
            picked.push(0);
        }
        while picked.len() < TOP_K {
            let e = [1u32, 2, 3, 5][rng.below(4)];
            if !picked.contains(&e) {
                picked.push(e);
            }
        }
        ids.extend(picked);
    }
    ids
}

/// The weights the kernel for a run of `m` rows multiplies with.
fn used(w: &Int4Weights<bf16>, m: usize) -> Vec<f32> {
    if m <= GemvPlan::MAX_ROWS {
        w.dequantize()
    } else {
        w.kernel_weights()
    }
}

#[test]
fn gathered_expert_gemms_and_combine_match_the_reference() {
    check_experts_on_gpu(0, EXPERTS);
}

/// A split prefill: only the first 3 experts' weights staged (over a slot holding other
/// weights), GEMMs for those, and the other experts' pairs given a negative slot, which
/// the combine skips (their expert outputs stay NaN: reading one would show).
#[test]
fn head_of_the_experts_on_the_gpu_and_the_rest_skipped() {
    check_experts_on_gpu(0, 3);
}

/// Resident experts: the first 2 in a slab of their own (copied once), experts 2..5
/// staged into the same places of the full slot over other weights, expert 5 skipped.
#[test]
fn resident_experts_from_their_own_slab_and_the_rest_staged() {
    check_experts_on_gpu(2, 5);
}

/// Experts `0..head` on the GPU against the reference summing only their pairs: experts
/// `0..resident` from a slab of `resident` experts, `resident..head` from the full slot.
fn check_experts_on_gpu(resident: usize, head: usize) {
    let Some(gpu) = gpu_or_skip("moe experts") else {
        return;
    };
    let s = gpu.stream();
    let mut rng = SplitMix64::new(0x6d6f_6578);
    let ids = choices(&mut rng);
    let weights: Vec<f32> = (0..TOKENS * TOP_K)
        .map(|_| 0.1 + rng.below(100) as f32 / 100.0)
        .collect();
    let x: Vec<bf16> = random(&mut rng, TOKENS * HIDDEN, 1.0);
    let gate_up_shape = SlabShape::new(EXPERTS, 2 * WIDTH, HIDDEN).unwrap();
    let down_shape = SlabShape::new(EXPERTS, HIDDEN, WIDTH).unwrap();
    let mut quant = |n: usize, k: usize, scale: f32| {
        let w: Vec<f32> = (0..n * k).map(|_| rng.normal() * scale).collect();
        Int4Weights::<bf16>::quantize(&w, n, k).unwrap().0
    };
    let gate_up: Vec<_> = (0..EXPERTS)
        .map(|_| quant(2 * WIDTH, HIDDEN, 0.1))
        .collect();
    let down: Vec<_> = (0..EXPERTS).map(|_| quant(HIDDEN, WIDTH, 0.1)).collect();
    let mut host_gu = HostExpertSlab::new(&gpu, gate_up_shape).unwrap();
    let mut host_down = HostExpertSlab::new(&gpu, down_shape).unwrap();
    for (mut p, w) in host_gu.parts_mut().unwrap().into_iter().zip(&gate_up) {
        p.set(w).unwrap();
    }
    for (mut p, w) in host_down.parts_mut().unwrap().into_iter().zip(&down) {
        p.set(w).unwrap();
    }
    // A wrong-shaped expert is refused.
    let mut parts = host_down.parts_mut().unwrap();
    assert!(parts[0].set(&gate_up[0]).is_err());
    drop(parts);

    // Stage through a second stream, ordered by an event; with a head, over a slot that
    // holds other experts' weights (the down slab's values in the wrong places).
    let mut dev_gu = s.alloc_expert_slab::<bf16>(gate_up_shape).unwrap();
    let mut dev_down = s.alloc_expert_slab::<bf16>(down_shape).unwrap();
    let mut resident_slabs = (resident > 0).then(|| {
        let shape = |full: SlabShape| SlabShape::new(resident, full.n, full.k).unwrap();
        (
            s.alloc_expert_slab::<bf16>(shape(gate_up_shape)).unwrap(),
            s.alloc_expert_slab::<bf16>(shape(down_shape)).unwrap(),
        )
    });
    s.synchronize().unwrap();
    let copy = s.new_untracked_stream().unwrap();
    if resident > 0 || head < EXPERTS {
        let mut other_gu = HostExpertSlab::new(&gpu, gate_up_shape).unwrap();
        let mut other_down = HostExpertSlab::new(&gpu, down_shape).unwrap();
        for (mut p, w) in other_gu
            .parts_mut()
            .unwrap()
            .into_iter()
            .zip(gate_up.iter().rev())
        {
            p.set(w).unwrap();
        }
        for (mut p, w) in other_down
            .parts_mut()
            .unwrap()
            .into_iter()
            .zip(down.iter().rev())
        {
            p.set(w).unwrap();
        }
        copy.copy_expert_slab(&other_gu, &mut dev_gu).unwrap();
        copy.copy_expert_slab(&other_down, &mut dev_down).unwrap();
        copy.synchronize().unwrap();
        drop((other_gu, other_down));
    }
    if let Some((gu, d)) = resident_slabs.as_mut() {
        copy.copy_experts(&host_gu, 0, gu, 0, resident).unwrap();
        copy.copy_experts(&host_down, 0, d, 0, resident).unwrap();
        // one past the resident slab's end is refused
        assert!(copy.copy_experts(&host_gu, 0, gu, 1, resident).is_err());
    }
    let staged_count = head - resident;
    copy.copy_experts(&host_gu, resident, &mut dev_gu, resident, staged_count)
        .unwrap();
    copy.copy_experts(&host_down, resident, &mut dev_down, resident, staged_count)
        .unwrap();
    assert!(copy.copy_expert_slab(&host_gu, &mut dev_down).is_err());
    assert!(copy
        .copy_experts(&host_gu, 1, &mut dev_gu, 0, EXPERTS)
        .is_err());
    assert!(copy.copy_experts(&host_gu, 0, &mut dev_down, 0, 1).is_err());
    let staged = copy.record_event().unwrap();
    s.wait_event(&staged).unwrap();

    // Group by expert (token order inside each), as kt_model's GPU prefill does.
    let pairs = TOKENS * TOP_K;
    let mut order: Vec<usize> = (0..pairs).collect();
    order.sort_by_key(|&p| (ids[p], p));
    let rows: Vec<i32> = order.iter().map(|&p| (p / TOP_K) as i32).collect();
    let mut slot = vec![0i32; pairs];
    for (i, &p) in order.iter().enumerate() {
        slot[p] = i as i32;
    }
    let mut ranges = Vec::new();
    let mut start = 0;
    for e in 0..EXPERTS as u32 {
        let n = ids.iter().filter(|&&i| i == e).count();
        ranges.push(start..start + n);
        start += n;
    }
    assert!(ranges[4].is_empty() && ranges[0].len() > 16);
    assert!(ranges.iter().any(|r| (1..=16).contains(&r.len())));

    let dx = s.upload(&x).unwrap();
    let d_rows = s.upload(&rows).unwrap();
    // the pairs of experts past the head are computed elsewhere: no slot
    let gpu_slot: Vec<i32> = slot
        .iter()
        .zip(&ids)
        .map(|(&sl, &e)| if (e as usize) < head { sl } else { -1 })
        .collect();
    let d_slot = s.upload(&gpu_slot).unwrap();
    let d_w = s.upload(&weights).unwrap();
    let mut xg = nan_buf::<bf16>(s, pairs * HIDDEN);
    let mut gu = nan_buf::<bf16>(s, pairs * 2 * WIDTH);
    let mut act = nan_buf::<bf16>(s, pairs * WIDTH);
    let mut y = nan_buf::<bf16>(s, pairs * HIDDEN);
    let mut out = nan_buf::<f32>(s, TOKENS * HIDDEN);
    let mut ws = GemmWorkspace::default();
    s.moe_gather(&dx, &d_rows, &mut xg, HIDDEN).unwrap();
    // (the slot's first `resident` experts hold other weights: the wrong slab would show)
    let gate_up_of = |e: usize| match &resident_slabs {
        Some((g, _)) if e < resident => g,
        _ => &dev_gu,
    };
    let down_of = |e: usize| match &resident_slabs {
        Some((_, d)) if e < resident => d,
        _ => &dev_down,
    };
    for (e, r) in ranges.iter().enumerate().take(head) {
        if !r.is_empty() {
            s.w4a16_gemm_expert(gate_up_of(e), e, &xg, r.clone(), &mut gu, &mut ws)
                .unwrap();
        }
    }
    s.silu_mul(&gu, &mut act, pairs, WIDTH).unwrap();
    for (e, r) in ranges.iter().enumerate().take(head) {
        if !r.is_empty() {
            s.w4a16_gemm_expert(down_of(e), e, &act, r.clone(), &mut y, &mut ws)
                .unwrap();
        }
    }
    s.moe_combine(&y, &d_slot, &d_w, TOP_K, &mut out, HIDDEN)
        .unwrap();
    let got = s.download(&out).unwrap();
    let got_xg = s.download(&xg).unwrap();
    // Bad shapes are refused before any launch.
    assert!(s
        .w4a16_gemm_expert(&dev_gu, EXPERTS, &xg, 0..1, &mut gu, &mut ws)
        .is_err());
    assert!(s
        .w4a16_gemm_expert(&dev_gu, 0, &xg, 0..pairs + 1, &mut gu, &mut ws)
        .is_err());
    assert!(s
        .moe_combine(&y, &d_slot, &d_w, 2, &mut out, HIDDEN)
        .is_err());

    // the gather is a copy
    for (i, &r) in rows.iter().enumerate() {
        let r = r as usize;
        assert_eq!(
            &got_xg[i * HIDDEN..(i + 1) * HIDDEN],
            &x[r * HIDDEN..(r + 1) * HIDDEN],
            "gathered row {i}"
        );
    }

    // reference, per pair
    let mut y_ref = vec![0.0f64; pairs * HIDDEN];
    for (e, r) in ranges.iter().enumerate().take(head) {
        if r.is_empty() {
            continue;
        }
        let wgu = used(&gate_up[e], r.len());
        let wd = used(&down[e], r.len());
        for i in r.clone() {
            let t = rows[i] as usize;
            let xr = &x[t * HIDDEN..(t + 1) * HIDDEN];
            let h: Vec<f64> = (0..2 * WIDTH)
                .map(|c| {
                    let s: f64 = (0..HIDDEN)
                        .map(|k| xr[k].to_f64() * wgu[c * HIDDEN + k] as f64)
                        .sum();
                    round_bf16(s)
                })
                .collect();
            let a: Vec<f64> = (0..WIDTH)
                .map(|c| round_bf16(silu(h[c]) * h[WIDTH + c]))
                .collect();
            for c in 0..HIDDEN {
                let s: f64 = (0..WIDTH).map(|k| a[k] * wd[c * WIDTH + k] as f64).sum();
                y_ref[i * HIDDEN + c] = round_bf16(s);
            }
        }
    }
    let mut want = vec![0.0f64; TOKENS * HIDDEN];
    for t in 0..TOKENS {
        for j in 0..TOP_K {
            if ids[t * TOP_K + j] as usize >= head {
                continue;
            }
            let (p, w) = (slot[t * TOP_K + j] as usize, weights[t * TOP_K + j] as f64);
            for c in 0..HIDDEN {
                want[t * HIDDEN + c] += w * y_ref[p * HIDDEN + c];
            }
        }
    }
    for t in 0..TOKENS {
        let row = &want[t * HIDDEN..(t + 1) * HIDDEN];
        let rms = (row.iter().map(|v| v * v).sum::<f64>() / HIDDEN as f64).sqrt();
        assert!(rms > 0.0, "token {t}: all-zero reference row");
        for c in 0..HIDDEN {
            let (g, w) = (got[t * HIDDEN + c] as f64, row[c]);
            let tol = (w.abs() + rms) / 128.0;
            assert!(
                (g - w).abs() <= tol,
                "token {t}, column {c}: got {g}, want {w} (tol {tol:e})"
            );
        }
    }
}

/// A single-token step's choices among resident experts, staged by the device
/// (`moe_stage_resident`): the slots and weights it writes are the expected ones, and the
/// GEMMs on the staged places plus the combine give bit for bit what the same kernels give
/// on the resident slabs themselves, for packed words in device memory and in page-locked
/// host memory. Every place is first filled by a step whose choices were all resident, so
/// a non-resident choice's place holds another expert's weights: summing it would show.
#[test]
fn resident_choices_of_one_token_staged_by_the_device() {
    let Some(gpu) = gpu_or_skip("resident choices staged") else {
        return;
    };
    const RESIDENT: usize = 4;
    let s = gpu.stream();
    let mut rng = SplitMix64::new(0x7265_7369);
    let shapes = |experts| {
        (
            SlabShape::new(experts, 2 * WIDTH, HIDDEN).unwrap(),
            SlabShape::new(experts, HIDDEN, WIDTH).unwrap(),
        )
    };
    let (gu_shape, down_shape) = shapes(RESIDENT);
    let mut host_gu = HostExpertSlab::new(&gpu, gu_shape).unwrap();
    let mut host_down = HostExpertSlab::new(&gpu, down_shape).unwrap();
    let mut quant = |n: usize, k: usize| {
        let w: Vec<f32> = (0..n * k).map(|_| rng.normal() * 0.1).collect();
        Int4Weights::<bf16>::quantize(&w, n, k).unwrap().0
    };
    for mut p in host_gu.parts_mut().unwrap() {
        p.set(&quant(2 * WIDTH, HIDDEN)).unwrap();
    }
    for mut p in host_down.parts_mut().unwrap() {
        p.set(&quant(HIDDEN, WIDTH)).unwrap();
    }
    let mut res_gu = s.alloc_expert_slab::<bf16>(gu_shape).unwrap();
    let mut res_down = s.alloc_expert_slab::<bf16>(down_shape).unwrap();
    s.copy_expert_slab(&host_gu, &mut res_gu).unwrap();
    s.copy_expert_slab(&host_down, &mut res_down).unwrap();
    let (st_gu_shape, st_down_shape) = shapes(TOP_K);
    let mut st_gu = s.alloc_expert_slab::<bf16>(st_gu_shape).unwrap();
    let mut st_down = s.alloc_expert_slab::<bf16>(st_down_shape).unwrap();

    let x: Vec<bf16> = random(&mut rng, HIDDEN, 1.0);
    let dx = s.upload(&x).unwrap();
    let mut xg = nan_buf::<bf16>(s, TOP_K * HIDDEN);
    s.moe_gather(&dx, &s.upload(&[0i32; TOP_K]).unwrap(), &mut xg, HIDDEN)
        .unwrap();
    let mut ws = GemmWorkspace::default();
    // gate+up, SiLU-and-multiply, down for places 0..TOP_K of (gate+up, down) slabs with
    // `expert_of(j)`'s weights at place j, then the combine
    let mut run = |slabs: &dyn Fn(usize) -> (usize, bool),
                   slot: &kt_kernels::cuda::DeviceBuf<i32>,
                   w: &kt_kernels::cuda::DeviceBuf<f32>,
                   staged: (
        &kt_kernels::cuda::moe_experts::ExpertSlab<bf16>,
        &kt_kernels::cuda::moe_experts::ExpertSlab<bf16>,
    )|
     -> Vec<f32> {
        let mut gu = nan_buf::<bf16>(s, TOP_K * 2 * WIDTH);
        let mut act = nan_buf::<bf16>(s, TOP_K * WIDTH);
        let mut y = nan_buf::<bf16>(s, TOP_K * HIDDEN);
        let mut out = nan_buf::<f32>(s, HIDDEN);
        for j in 0..TOP_K {
            let (e, from_staging) = slabs(j);
            let g = if from_staging { staged.0 } else { &res_gu };
            s.w4a16_gemm_expert(g, e, &xg, j..j + 1, &mut gu, &mut ws)
                .unwrap();
        }
        s.silu_mul(&gu, &mut act, TOP_K, WIDTH).unwrap();
        for j in 0..TOP_K {
            let (e, from_staging) = slabs(j);
            let d = if from_staging { staged.1 } else { &res_down };
            s.w4a16_gemm_expert(d, e, &act, j..j + 1, &mut y, &mut ws)
                .unwrap();
        }
        s.moe_combine(&y, slot, w, TOP_K, &mut out, HIDDEN).unwrap();
        s.download(&out).unwrap()
    };
    let words_of = |ids: &[u32], weights: &[f32]| {
        let mut words: Vec<u32> = x.iter().map(|v| v.to_f32().to_bits()).collect();
        words.extend_from_slice(ids);
        words.extend(weights.iter().map(|w| w.to_bits()));
        assert_eq!(words.len(), packed_len(1, HIDDEN, TOP_K));
        words
    };
    let mut pinned = gpu
        .alloc_pinned::<u32>(packed_len(1, HIDDEN, TOP_K))
        .unwrap();
    // (ids, weights): all resident first (fills every place), then choices past the
    // resident experts at the first, the middle and every place but one
    let steps: [([u32; TOP_K], [f32; TOP_K]); 4] = [
        ([3, 1, 2], [0.5, 0.3, 0.2]),
        ([5, 0, 3], [0.6, 0.25, 0.15]),
        ([2, 4, 1], [0.4, 0.35, 0.25]),
        ([4, 0, 5], [0.7, 0.2, 0.1]),
    ];
    for on_host in [false, true] {
        for (ids, weights) in steps {
            let words = words_of(&ids, &weights);
            let dwords = s.upload(&words).unwrap();
            let source = if on_host {
                s.synchronize().unwrap();
                pinned.as_mut_slice().unwrap().copy_from_slice(&words);
                PackedWords::Pinned(&pinned)
            } else {
                PackedWords::Device(&dwords)
            };
            let mut chosen = s.upload(&[i32::MIN; TOP_K]).unwrap();
            let mut slot = s.upload(&[i32::MIN; TOP_K]).unwrap();
            let mut w = nan_buf::<f32>(s, TOP_K);
            let stage = ResidentStage {
                gate_up: &res_gu,
                down: &res_down,
                staged_gate_up: &mut st_gu,
                staged_down: &mut st_down,
            };
            s.moe_stage_resident(source, HIDDEN, TOP_K, stage, &mut chosen, &mut slot, &mut w)
                .unwrap();
            let want_slot: Vec<i32> = ids
                .iter()
                .enumerate()
                .map(|(j, &e)| {
                    if (e as usize) < RESIDENT {
                        j as i32
                    } else {
                        -1
                    }
                })
                .collect();
            let what = format!("ids {ids:?}, words on the host {on_host}");
            let want_chosen: Vec<i32> = ids.iter().map(|&e| e as i32).collect();
            assert_eq!(s.download(&chosen).unwrap(), want_chosen, "{what}: chosen");
            assert_eq!(s.download(&slot).unwrap(), want_slot, "{what}: slots");
            assert_eq!(s.download(&w).unwrap(), weights, "{what}: weights");
            let staged = run(&|j| (j, true), &slot, &w, (&st_gu, &st_down));
            // the same kernels on the resident slabs (a non-resident choice's place
            // computes expert 0, which the combine skips as it does the stale place)
            let direct = run(
                &|j| {
                    (
                        (ids[j] as usize).min(RESIDENT - 1) * usize::from(want_slot[j] >= 0),
                        false,
                    )
                },
                &slot,
                &w,
                (&st_gu, &st_down),
            );
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&staged), bits(&direct), "{what}: output");
            assert!(
                staged.iter().all(|v| v.is_finite()),
                "{what}: output not finite"
            );
            if want_slot.iter().all(|&sl| sl < 0) {
                assert!(staged.iter().all(|&v| v == 0.0), "{what}: nothing resident");
            } else {
                assert!(staged.iter().any(|&v| v != 0.0), "{what}: all zero");
            }
        }
    }
    // Bad shapes are refused before any launch.
    let dwords = s
        .upload(&vec![0u32; packed_len(1, HIDDEN, TOP_K) - 1])
        .unwrap();
    let mut chosen = s.upload(&[0i32; TOP_K]).unwrap();
    let mut slot = s.upload(&[0i32; TOP_K]).unwrap();
    let mut w = nan_buf::<f32>(s, TOP_K);
    let stage = ResidentStage {
        gate_up: &res_gu,
        down: &res_down,
        staged_gate_up: &mut st_gu,
        staged_down: &mut st_down,
    };
    let err = s
        .moe_stage_resident(
            PackedWords::Device(&dwords),
            HIDDEN,
            TOP_K,
            stage,
            &mut chosen,
            &mut slot,
            &mut w,
        )
        .unwrap_err()
        .to_string();
    assert!(err.contains("moe_stage_resident"), "{err}");
    let mut small = s.alloc_expert_slab::<bf16>(shapes(TOP_K - 1).0).unwrap();
    let stage = ResidentStage {
        gate_up: &res_gu,
        down: &res_down,
        staged_gate_up: &mut small,
        staged_down: &mut st_down,
    };
    let dwords = s.upload(&vec![0u32; packed_len(1, HIDDEN, TOP_K)]).unwrap();
    assert!(s
        .moe_stage_resident(
            PackedWords::Device(&dwords),
            HIDDEN,
            TOP_K,
            stage,
            &mut chosen,
            &mut slot,
            &mut w
        )
        .is_err());
}
