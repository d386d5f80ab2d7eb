//! The repacked MoE operator ([`RepackedMoe`]) against
//! - [`reference_exact`] (the repacked weights and activation quantization exactly,
//!   scalar kernel, f64 sums): tight;
//! - [`moe::reference`] over the ORIGINAL GGUF weights (f32 activations): within the
//!   layout's measured weight error plus the activation quantization (see `loose_tol`).
//!
//! On every ISA this machine has (AMX items only on AMX machines, VNNI on AVX512; other
//! ISAs use the scalar kernel). T in {1, 2, 7, 64, 513}, k in {6, 8}, uniform routing
//! with an unused expert, skewed routing (a few experts get most tokens: multi-block
//! AMX items) and repeated experts within a token. Outputs start as NaN. Every case also
//! runs through `submit` + `sync` (bit-identical to `forward`). Both ways of quantizing
//! the intermediate run: by the gate/up items themselves (busy experts' 128-row items;
//! every item for int8-g32 and bf16) and by the separate pass (light experts' 32-row items
//! with groups of 64 and 128: T=1, 2, 7 and the skewed calls' light experts).

mod moe_support;

use std::sync::Arc;

use kt_kernels::cpu::moe::repack::{
    reference_exact, repack_error, Prefetch, RepackFormat, RepackedLayer, RepackedMoe,
};
use kt_kernels::cpu::moe::{self};
use kt_kernels::cpu::{Isa, ThreadPool};
use kt_kernels::quant::QType;
use moe_support::{Routing, Spec};

/// Tight bound, relative L2 per token, against `reference_exact`. Both sides quantize
/// the same activations and multiply the same integers; they differ by f32 vs f64
/// summation (~1e-6 relative) in gate/up and the AVX512 silu (a few ulp), which moves an
/// intermediate element across a quantization boundary with probability ~1e-5..1e-4
/// (bf16: its step is 2^-8 relative, ~1e-3); such a flip changes that element by one
/// step (1/127 of its group's max; bf16 2^-8). The max of `silu(g) * u` over a group is
/// ~6 of its standard deviations, so a step is ~5% of an element's typical size and
/// ~0.3% of a 256-element row's norm; weighted by its slot (up to ~0.35 here) a flip moves
/// a token's output by up to ~2e-3 relative (measured: one flip at T=1 in int4-g128,
/// 1.9e-3). 5e-3 leaves room for two; a wrong expert, slot, row or group scale moves
/// it by tens of percent.
const TIGHT: f64 = 5e-3;

/// Loose bound against the original weights: each projection's output carries its
/// weight error (relative Frobenius `eps`, uncorrelated with the activations, passes
/// through unchanged on average), gate and up feed the output through `silu(g) * u`
/// (~one each), down once; int8 activations add ~1.1% per stage (x before gate/up, the
/// intermediate before down: amax/127 steps, see moe_correctness.rs), bf16 activations
/// 2^-8/sqrt(3) = 0.23%. Twice the sum leaves room for a token's outputs to fluctuate
/// around the average.
fn loose_tol(eps: [f64; 3], f: RepackFormat) -> f64 {
    let act = if f == RepackFormat::Bf16 {
        0.0023
    } else {
        0.011
    };
    2.0 * (eps[0] + eps[1] + eps[2] + 3.0 * act)
}

fn check(label: &str, got: &[f32], want: &[f32], h: usize, tol: f64) {
    for (i, v) in got.iter().enumerate() {
        assert!(v.is_finite(), "{label}: output {i} is {v} (unwritten?)");
    }
    let rel = moe_support::max_token_rel_l2(got, want, h);
    assert!(rel <= tol, "{label}: relative L2 error {rel:.5} > {tol:.5}");
}

fn run_format(f: RepackFormat, down_q: QType) {
    let spec = Spec {
        hidden: 256,
        inter: 256,
        experts: 16,
        gate: QType::Q4_K,
        up: QType::Q4_K,
        down: down_q,
    };
    let b = moe_support::build(spec, 7);
    let layer = RepackedLayer::from_layer(&b.layer, f, f).unwrap();
    let eps = [
        repack_error(b.layer.gate(), layer.gate()).unwrap(),
        repack_error(b.layer.up(), layer.up()).unwrap(),
        repack_error(b.layer.down(), layer.down()).unwrap(),
    ];
    let loose = loose_tol(eps, f);
    let h = spec.hidden;
    let pool = Arc::new(ThreadPool::new(2).unwrap());
    // AVX2 runs the scalar kernel as Scalar does: one of them is enough.
    let isas = Isa::available().into_iter().filter(|&i| i != Isa::Avx2);
    let runners: Vec<RepackedMoe> = isas
        .map(|isa| RepackedMoe::new(pool.clone(), isa, 513, 8, &[&layer]).unwrap())
        .collect();
    if !Isa::available().contains(&Isa::Amx) {
        eprintln!(
            "AMX absent or refused: the AMX items are not tested here ({:?})",
            Isa::Amx.check().err()
        );
    }
    for (tokens, k, mode) in [
        (1, 6, Routing::Uniform),
        (2, 8, Routing::Duplicates),
        (7, 6, Routing::Skewed),
        (64, 8, Routing::Uniform),
        (64, 6, Routing::Skewed),
        (513, 8, Routing::Duplicates),
        (513, 6, Routing::Skewed),
    ] {
        let x = moe_support::activations(tokens, h, tokens as u64);
        let (ids, w) = moe_support::routing(mode, tokens, k, spec.experts, tokens as u64 + 3);
        // The exact reference quantizes activations as the operator on its ISA does:
        // per token for AMX calls with busy folded INT4 experts, else per group (the
        // choice depends only on whether the ISA has AMX).
        let exact_for = |isa: Isa| {
            let mut exact = moe_support::poisoned(tokens * h);
            reference_exact(&layer, isa, &x, &ids, &w, &mut exact).unwrap();
            exact
        };
        let exact_plain = exact_for(Isa::Scalar);
        let exact_amx = Isa::available()
            .contains(&Isa::Amx)
            .then(|| exact_for(Isa::Amx));
        let mut orig = moe_support::poisoned(tokens * h);
        moe::reference(&b.layer, &x, &ids, &w, &mut orig).unwrap();
        // The scalar kernel at 513 tokens only repeats what T=64 showed, slowly.
        for r in runners
            .iter()
            .filter(|r| tokens < 513 || r.isa() > Isa::Avx2)
        {
            let label = format!("{} on {} T={tokens} k={k} {mode:?}", f.name(), r.isa());
            let mut out = moe_support::poisoned(tokens * h);
            r.forward(&layer, &x, &ids, &w, &mut out).unwrap();
            let exact = match (&exact_amx, r.isa() >= Isa::Amx) {
                (Some(e), true) => e,
                _ => &exact_plain,
            };
            check(&format!("{label} vs exact"), &out, exact, h, TIGHT);
            check(
                &format!("{label} vs original (weight errors {eps:.4?})"),
                &out,
                &orig,
                h,
                loose,
            );
            // The asynchronous call runs the same items with the same kernels.
            let mut async_out = moe_support::poisoned(tokens * h);
            r.submit(&layer, &x, &ids, &w)
                .unwrap()
                .sync(&mut async_out)
                .unwrap();
            assert!(
                async_out
                    .iter()
                    .zip(&out)
                    .all(|(a, b)| a.to_bits() == b.to_bits()),
                "{label}: submit/sync differs from forward"
            );
        }
    }
}

#[test]
fn int4_g64() {
    run_format(RepackFormat::Int4 { group: 64 }, QType::Q6_K);
}

#[test]
fn int4_g128() {
    run_format(RepackFormat::Int4 { group: 128 }, QType::Q4_K);
}

#[test]
fn int8_g32() {
    run_format(RepackFormat::Int8 { group: 32 }, QType::Q5_0);
}

#[test]
fn int8_g128() {
    run_format(RepackFormat::Int8 { group: 128 }, QType::Q4_K);
}

#[test]
fn bf16() {
    run_format(RepackFormat::Bf16, QType::Q8_0);
}

#[test]
fn bad_calls_are_errors() {
    let spec = Spec {
        hidden: 256,
        inter: 128,
        experts: 4,
        gate: QType::Q8_0,
        up: QType::Q8_0,
        down: QType::Q8_0,
    };
    let b = moe_support::build(spec, 3);
    let layer = RepackedLayer::from_layer(
        &b.layer,
        RepackFormat::Int8 { group: 64 },
        RepackFormat::Int8 { group: 64 },
    )
    .unwrap();
    let pool = Arc::new(ThreadPool::new(1).unwrap());
    let r = RepackedMoe::new(pool, Isa::Scalar, 4, 2, &[&layer]).unwrap();
    let x = vec![0.5f32; 2 * 256];
    let mut out = vec![0f32; 2 * 256];
    assert!(
        r.forward(&layer, &x, &[0, 4, 1, 2], &[0.5; 4], &mut out)
            .is_err(),
        "expert id out of range"
    );
    assert!(
        r.forward(&layer, &x, &[0, 1, 2, 3, 0, 1], &[0.5; 6], &mut out)
            .is_err(),
        "k above max_top_k"
    );
    assert!(
        r.forward(&layer, &x, &[0, 1, 2], &[0.5; 3], &mut out)
            .is_err(),
        "ids not tokens x k"
    );
    assert!(
        r.forward(&layer, &x[1..], &[0, 1], &[0.5; 2], &mut out)
            .is_err(),
        "x not whole rows"
    );
    let other = RepackedLayer::from_layer(
        &moe_support::build(
            Spec {
                hidden: 512,
                ..spec
            },
            4,
        )
        .layer,
        RepackFormat::Bf16,
        RepackFormat::Bf16,
    )
    .unwrap();
    let x2 = vec![0.5f32; 512];
    assert!(
        r.forward(&other, &x2, &[0, 1], &[0.5; 2], &mut vec![0f32; 512])
            .is_err(),
        "layer not reserved"
    );
}

/// `tokens` tokens routed `mode` through `layer` (hidden 256) on pools of 1, 2 and 3
/// threads; every output bit the same. One thread runs the phases; at most 8 positions an
/// expert (decode), more threads run the fused job, so decode cases also check the fused
/// job against the phases.
fn same_on_every_thread_count(layer: &RepackedLayer, tokens: usize, mode: Routing, label: &str) {
    let (k, e) = (6, layer.experts());
    let x = moe_support::activations(tokens, 256, 1);
    let (ids, w) = moe_support::routing(mode, tokens, k, e, 2);
    let isa = Isa::best();
    let outs: Vec<Vec<f32>> = [1, 2, 3]
        .iter()
        .map(|&n| {
            let pool = Arc::new(ThreadPool::new(n).unwrap());
            let r = RepackedMoe::new(pool, isa, tokens, k, &[layer]).unwrap();
            let mut out = moe_support::poisoned(tokens * 256);
            r.forward(layer, &x, &ids, &w, &mut out).unwrap();
            out
        })
        .collect();
    assert!(outs[0].iter().all(|v| v.is_finite()), "{label}: unwritten");
    for o in &outs[1..] {
        assert!(
            o.iter()
                .zip(&outs[0])
                .all(|(a, b)| a.to_bits() == b.to_bits()),
            "{isa} {label}: outputs differ between thread counts"
        );
    }
}

#[test]
fn results_do_not_depend_on_the_thread_count_or_the_prefetch() {
    let spec = |inter| Spec {
        hidden: 256,
        inter,
        experts: 16,
        gate: QType::Q4_K,
        up: QType::Q4_K,
        down: QType::Q4_K,
    };
    let repack = |b: &moe_support::Built| {
        RepackedLayer::from_layer(
            &b.layer,
            RepackFormat::Int4 { group: 64 },
            RepackFormat::Int8 { group: 64 },
        )
        .unwrap()
    };
    let b = moe_support::build(spec(256), 11);
    let layer = repack(&b);
    same_on_every_thread_count(&layer, 200, Routing::Skewed, "busy experts");
    // Decode with 32-row gate/up items (below the down format's group of 64: the fused
    // job's last item of an expert quantizes its rows), and with 64-row ones (each item
    // quantizes its own block), a duplicate expert within a token, 8 tokens.
    same_on_every_thread_count(&layer, 1, Routing::Uniform, "T=1, 32-row items");
    same_on_every_thread_count(&layer, 3, Routing::Duplicates, "T=3, duplicates");
    same_on_every_thread_count(&layer, 8, Routing::Uniform, "T=8");
    let wide = repack(&moe_support::build(spec(1024), 12));
    same_on_every_thread_count(&wide, 1, Routing::Uniform, "T=1, 64-row items");
    same_on_every_thread_count(&wide, 2, Routing::Duplicates, "T=2, duplicates");

    let (tokens, k) = (200, 6);
    let x = moe_support::activations(tokens, 256, 1);
    let (ids, w) = moe_support::routing(Routing::Skewed, tokens, k, 16, 2);
    let isa = Isa::best();
    let outs = [{
        let pool = Arc::new(ThreadPool::new(1).unwrap());
        let r = RepackedMoe::new(pool, isa, tokens, k, &[&layer]).unwrap();
        let mut out = moe_support::poisoned(tokens * 256);
        r.forward(&layer, &x, &ids, &w, &mut out).unwrap();
        out
    }];
    // The weight prefetch policy changes no result either.
    let r = RepackedMoe::new(
        Arc::new(ThreadPool::new(2).unwrap()),
        isa,
        tokens,
        k,
        &[&layer],
    )
    .unwrap();
    for p in ["none", "1:l1", "4:l2", "16:l1"] {
        r.set_prefetch(Prefetch::parse(p).unwrap()).unwrap();
        let mut out = moe_support::poisoned(tokens * 256);
        r.forward(&layer, &x, &ids, &w, &mut out).unwrap();
        assert!(
            out.iter()
                .zip(&outs[0])
                .all(|(a, b)| a.to_bits() == b.to_bits()),
            "{isa}: prefetch {p} changes the output"
        );
    }
    for bad in ["", "2", "0:l1", "17:l2", "2:l3", "x:l1"] {
        assert!(Prefetch::parse(bad).is_err(), "prefetch {bad:?} accepted");
    }
}

#[test]
fn submit_copies_its_inputs_and_keeps_the_protocol() {
    let spec = Spec {
        hidden: 256,
        inter: 128,
        experts: 8,
        gate: QType::Q4_K,
        up: QType::Q4_K,
        down: QType::Q8_0,
    };
    let b = moe_support::build(spec, 5);
    let f = RepackFormat::Int4 { group: 64 };
    let layer = RepackedLayer::from_layer(&b.layer, f, RepackFormat::Int8 { group: 64 }).unwrap();
    let r = RepackedMoe::new(
        Arc::new(ThreadPool::new(2).unwrap()),
        Isa::best(),
        70,
        6,
        &[&layer],
    )
    .unwrap();
    let (tokens, k) = (70, 6);
    let x = moe_support::activations(tokens, 256, 9);
    let (ids, w) = moe_support::routing(Routing::Skewed, tokens, k, 8, 10);
    let mut want = moe_support::poisoned(tokens * 256);
    reference_exact(&layer, Isa::best(), &x, &ids, &w, &mut want).unwrap();

    // The inputs are copied at submit: overwriting them afterwards changes nothing.
    let (mut x2, mut ids2) = (x.clone(), ids.clone());
    let handle = r.submit(&layer, &x2, &ids2, &w).unwrap();
    x2.fill(f32::NAN);
    ids2.fill(0);
    // This thread holds an unsynced handle: another call from it is an error, not a
    // deadlock.
    let mut other = moe_support::poisoned(tokens * 256);
    assert!(
        r.forward(&layer, &x, &ids, &w, &mut other).is_err(),
        "forward with an unsynced handle"
    );
    assert!(
        r.submit(&layer, &x, &ids, &w).is_err(),
        "second submit with an unsynced handle"
    );
    let mut out = moe_support::poisoned(tokens * 256);
    handle.sync(&mut out).unwrap();
    check("submit/sync vs exact", &out, &want, 256, TIGHT);

    // A wrong output length is an error; the call is still claimed afterwards.
    let handle = r.submit(&layer, &x, &ids, &w).unwrap();
    assert!(
        handle.sync(&mut [0f32; 5]).is_err(),
        "sync into a wrong-sized output"
    );
    // A dropped handle releases the call; the next one runs.
    drop(r.submit(&layer, &x, &ids, &w).unwrap());
    let mut again = moe_support::poisoned(tokens * 256);
    let h = r.submit(&layer, &x, &ids, &w).unwrap();
    while !h.is_done() {
        std::thread::yield_now();
    }
    h.sync(&mut again).unwrap();
    assert!(
        again
            .iter()
            .zip(&out)
            .all(|(a, b)| a.to_bits() == b.to_bits()),
        "a later call differs"
    );

    // An unreserved layer and a bad shape are refused at submit.
    let big = RepackedLayer::from_layer(
        &moe_support::build(
            Spec {
                hidden: 512,
                ..spec
            },
            6,
        )
        .layer,
        f,
        f,
    )
    .unwrap();
    assert!(
        r.submit(&big, &vec![0.5f32; 512], &[0, 1], &[0.5; 2])
            .is_err(),
        "layer not reserved"
    );
    assert!(
        r.submit(&layer, &x[1..], &ids, &w).is_err(),
        "x not whole rows"
    );
    // Other threads' calls wait for the handle of this one and then run.
    let h = r.submit(&layer, &x, &ids, &w).unwrap();
    std::thread::scope(|s| {
        let t = s.spawn(|| {
            let mut o = moe_support::poisoned(tokens * 256);
            r.forward(&layer, &x, &ids, &w, &mut o).unwrap();
            o
        });
        let mut mine = moe_support::poisoned(tokens * 256);
        h.sync(&mut mine).unwrap();
        let theirs = t.join().unwrap();
        assert!(
            mine.iter()
                .zip(&theirs)
                .all(|(a, b)| a.to_bits() == b.to_bits()),
            "calls from two threads differ"
        );
    });
}

/// The prefetch of a predicted decode call on the repacked layout, as the GGUF
/// operator's: `prefetch_rounds` gate+up items per thread (whole panels), stopped when
/// asked, an error for a bad id or rounds, and no effect on the results.
#[test]
fn prefetch_issues_the_first_items_and_changes_nothing() {
    let spec = Spec {
        hidden: 256,
        inter: 96,
        experts: 16,
        gate: QType::Q4_K,
        up: QType::Q4_K,
        down: QType::Q8_0,
    };
    let b = moe_support::build(spec, 21);
    let f = RepackFormat::Int4 { group: 64 };
    let layer = RepackedLayer::from_layer(&b.layer, f, RepackFormat::Int8 { group: 32 }).unwrap();
    let pool = Arc::new(ThreadPool::new(3).unwrap());
    let r = RepackedMoe::new(pool, Isa::best(), 1, 6, &[&layer]).unwrap();
    assert_eq!(r.prefetch_rounds(), 2);
    let x = moe_support::activations(1, 256, 3);
    let (ids, w) = moe_support::routing(Routing::Uniform, 1, 6, 16, 4);
    let run = || {
        let mut out = moe_support::poisoned(256);
        r.forward(&layer, &x, &ids, &w, &mut out).unwrap();
        out
    };
    let before = run();
    // 3 distinct experts of 96 rows: 32-row items (two panels), 3 per expert; 3 threads
    // take the first 2 x 3, gate and up panels of each
    let item = 2 * 2 * f.panel_bytes(256);
    let never = || false;
    assert_eq!(r.prefetch(&layer, &[5, 2, 5, 9], &never).unwrap(), 6 * item);
    assert_eq!(r.prefetch(&layer, &[7], &never).unwrap(), 3 * item);
    r.set_prefetch_rounds(5).unwrap();
    assert_eq!(r.prefetch(&layer, &[5, 2, 9], &never).unwrap(), 9 * item);
    for bad in [0, 65] {
        let err = r.set_prefetch_rounds(bad).unwrap_err().to_string();
        assert!(err.contains(&format!("prefetch rounds {bad}")), "{err}");
    }
    // the call after a prefetch hands its first 5 rounds of items to fixed threads
    let five = run();
    let now = || true;
    assert_eq!(r.prefetch(&layer, &[5, 2, 9], &now).unwrap(), 0);
    let err = r
        .prefetch(&layer, &[1, 16], &never)
        .unwrap_err()
        .to_string();
    assert!(err.contains("expert id 16"), "{err}");
    let after = run();
    // a prediction that misses the call's smallest expert and names one it does not
    // choose: the call takes the prediction's order of the experts (as the GGUF
    // operator's test)
    let predicted = moe_support::reordering_prediction(&ids, 16);
    r.prefetch(&layer, &predicted, &never).unwrap();
    let reordered = run();
    moe_support::assert_unchanged(
        &before,
        &[
            ("a prefetch", &after),
            ("the own rounds", &five),
            ("the prediction's order", &reordered),
        ],
    );
}
