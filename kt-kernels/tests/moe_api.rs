//! The MoE operator's interface: typed errors for bad shapes and ids, the asynchronous
//! submit/sync protocol, results independent of the thread count, several layers on
//! one context, and the NUMA-style intermediate slices.

mod moe_support;

use std::sync::Arc;

use kt_kernels::cpu::moe::{ExpertStack, MoeContext, MoeLayer};
use kt_kernels::cpu::{Isa, ThreadPool};
use kt_kernels::quant::QType;
use kt_kernels::KtError;
use moe_support::{Built, Routing, Spec};

fn small(gate: QType, down: QType, inter: usize, seed: u64) -> Built {
    moe_support::build(
        Spec {
            hidden: 256,
            inter,
            experts: 12,
            gate,
            up: gate,
            down,
        },
        seed,
    )
}

fn pool(threads: usize) -> Arc<ThreadPool> {
    Arc::new(ThreadPool::new(threads).unwrap())
}

fn run(ctx: &MoeContext, b: &Built, tokens: usize, k: usize, seed: u64) -> Vec<f32> {
    let x = moe_support::activations(tokens, b.spec.hidden, seed);
    let (ids, w) = moe_support::routing(Routing::Uniform, tokens, k, b.spec.experts, seed);
    let mut out = moe_support::poisoned(tokens * b.spec.hidden);
    ctx.forward(&b.layer, &x, &ids, &w, &mut out).unwrap();
    out
}

fn shape_err<T>(r: Result<T, KtError>, needle: &str) {
    match r {
        Err(KtError::Shape { detail, .. }) => assert!(
            detail.contains(needle),
            "{detail:?} does not mention {needle:?}"
        ),
        Err(e) => panic!("expected a shape error mentioning {needle:?}, got {e}"),
        Ok(_) => panic!("expected a shape error mentioning {needle:?}, got Ok"),
    }
}

#[test]
fn bad_weights_are_typed_errors() {
    let q = QType::Q4_K;
    let rb = q.row_bytes(256).unwrap();
    // Storage too short for 4 experts of 32 rows.
    let short: kt_kernels::cpu::moe::Storage = Arc::new(vec![1u8; 4 * 32 * rb - 1]);
    assert!(matches!(
        ExpertStack::new(q, short, 0, 4, 32, 256),
        Err(KtError::Length { .. })
    ));
    // Hidden size not a whole number of Q4_K blocks.
    assert!(matches!(
        ExpertStack::from_vec(q, vec![1; 100], 1, 1, 100),
        Err(KtError::NotBlockMultiple { .. })
    ));
    // An activation-only format is not a weight format.
    assert!(matches!(
        ExpertStack::from_vec(QType::Q8_K, vec![], 0, 0, 256),
        Err(KtError::Unsupported { .. })
    ));
    // Down's shape must be experts x hidden x intermediate.
    let b = small(QType::Q4_K, QType::Q8_0, 64, 1);
    let down_wrong = ExpertStack::from_vec(
        QType::Q8_0,
        vec![1; 12 * 64 * QType::Q8_0.row_bytes(256).unwrap()],
        12,
        64,
        256,
    )
    .unwrap();
    shape_err(
        MoeLayer::new(b.layer.gate().clone(), b.layer.up().clone(), down_wrong),
        "down is 12x64x256",
    );
    // Slices must be non-empty and block-aligned.
    shape_err(
        b.layer.with_intermediate_slice(16..64),
        "not a multiple of 32",
    );
    shape_err(b.layer.with_intermediate_slice(32..32), "non-empty");
    shape_err(b.layer.with_intermediate_slice(0..96), "non-empty");
}

#[test]
fn bad_calls_are_typed_errors_and_leave_the_context_usable() {
    let b = small(QType::Q4_K, QType::Q8_0, 64, 2);
    let ctx = MoeContext::new(pool(2), Isa::best(), 4, 6, &[&b.layer]).unwrap();
    let h = b.spec.hidden;
    let x = moe_support::activations(2, h, 3);
    let (ids, w) = moe_support::routing(Routing::Uniform, 2, 6, 12, 3);
    let mut out = vec![0f32; 2 * h];
    shape_err(
        ctx.forward(&b.layer, &x[..h + 1], &ids, &w, &mut out),
        "whole number of rows",
    );
    shape_err(
        ctx.forward(
            &b.layer,
            &moe_support::activations(5, h, 3),
            &ids,
            &w,
            &mut out,
        ),
        "at most 4",
    );
    shape_err(
        ctx.forward(&b.layer, &x, &ids[..11], &w[..11], &mut out),
        "not tokens x k",
    );
    shape_err(
        ctx.forward(&b.layer, &x, &ids, &w[..11], &mut out),
        "11 routing weights",
    );
    let (ids8, w8) = moe_support::routing(Routing::Uniform, 2, 7, 12, 3);
    shape_err(ctx.forward(&b.layer, &x, &ids8, &w8, &mut out), "at most 6");
    let mut bad_ids = ids.clone();
    bad_ids[7] = 12;
    shape_err(
        ctx.forward(&b.layer, &x, &bad_ids, &w, &mut out),
        "token 1 slot 1: expert id 12",
    );
    shape_err(
        ctx.forward(&b.layer, &x, &ids, &w, &mut out[..h]),
        "output has 256",
    );
    shape_err(
        ctx.submit(&b.layer, &x, &ids, &w)
            .unwrap()
            .sync(&mut out[..h]),
        "output has 256",
    );
    // A layer the scratch was not sized for.
    let big = small(QType::Q4_K, QType::Q8_0, 128, 4);
    shape_err(ctx.forward(&big.layer, &x, &ids, &w, &mut out), "reserve");
    ctx.reserve(&big.layer).unwrap();
    ctx.forward(&big.layer, &x, &ids, &w, &mut out).unwrap();
    // Still usable, and an empty batch is a no-op.
    ctx.forward(&b.layer, &x, &ids, &w, &mut out).unwrap();
    assert!(out.iter().all(|v| v.is_finite()));
    ctx.forward(&b.layer, &[], &[], &[], &mut []).unwrap();
}

#[test]
fn results_do_not_depend_on_the_thread_count() {
    let b = small(QType::Q4_K, QType::Q5_0, 96, 5);
    for isa in Isa::available() {
        for (tokens, k) in [(1, 6), (5, 8), (100, 6)] {
            let outs: Vec<Vec<f32>> = [1, 2, 3]
                .into_iter()
                .map(|threads| {
                    let ctx = MoeContext::new(pool(threads), isa, tokens, k, &[&b.layer]).unwrap();
                    run(&ctx, &b, tokens, k, 6)
                })
                .collect();
            for o in &outs[1..] {
                assert!(
                    o.iter()
                        .zip(&outs[0])
                        .all(|(a, b)| a.to_bits() == b.to_bits()),
                    "{isa} T={tokens}: outputs differ between thread counts"
                );
            }
        }
    }
}

#[test]
fn submit_returns_before_the_work_and_sync_waits() {
    let b = small(QType::Q4_K, QType::Q8_0, 256, 7);
    let ctx = MoeContext::new(pool(2), Isa::best(), 64, 8, &[&b.layer]).unwrap();
    let want = run(&ctx, &b, 64, 8, 8);
    let x = moe_support::activations(64, b.spec.hidden, 8);
    let (ids, w) = moe_support::routing(Routing::Uniform, 64, 8, b.spec.experts, 8);
    let handle = ctx.submit(&b.layer, &x, &ids, &w).unwrap();
    // Overlapped work on the caller's thread while the driver runs the call.
    let mut busy = 0u64;
    while !handle.is_done() {
        busy = busy.wrapping_add(1);
        std::hint::black_box(busy);
    }
    let mut out = moe_support::poisoned(want.len());
    handle.sync(&mut out).unwrap();
    assert_eq!(out, want);

    // A second call on the thread that holds an unsynced handle is an error, not a hang.
    let pending = ctx.submit(&b.layer, &x, &ids, &w).unwrap();
    shape_err(ctx.submit(&b.layer, &x, &ids, &w), "unsynced");
    shape_err(ctx.forward(&b.layer, &x, &ids, &w, &mut out), "unsynced");
    pending.sync(&mut out).unwrap();
    assert_eq!(out, want);

    // A handle dropped without sync discards its output; the next call runs normally.
    drop(ctx.submit(&b.layer, &x, &ids, &w).unwrap());
    assert_eq!(run(&ctx, &b, 64, 8, 8), want);

    // Calls submitted from several threads at once are serialised, each gets its own.
    let seeds = [10u64, 11, 12, 13];
    let expected: Vec<Vec<f32>> = seeds.iter().map(|&s| run(&ctx, &b, 9, 8, s)).collect();
    std::thread::scope(|sc| {
        for (s, want) in seeds.iter().zip(&expected) {
            let (ctx, b) = (&ctx, &b);
            sc.spawn(move || {
                for _ in 0..3 {
                    assert_eq!(&run(ctx, b, 9, 8, *s), want);
                }
            });
        }
    });
}

#[test]
fn layers_of_different_shapes_share_one_context() {
    let a = small(QType::Q4_K, QType::Q5_0, 96, 20);
    let c = moe_support::build(
        Spec {
            hidden: 512,
            inter: 256,
            experts: 12,
            gate: QType::Q6_K,
            up: QType::Q2_K,
            down: QType::Q4_K,
        },
        21,
    );
    let ctx = MoeContext::new(pool(2), Isa::best(), 16, 8, &[&a.layer, &c.layer]).unwrap();
    for (tokens, seed) in [(1, 30), (16, 31), (3, 32)] {
        for built in [&a, &c] {
            let x = moe_support::activations(tokens, built.spec.hidden, seed);
            let (ids, w) =
                moe_support::routing(Routing::Uniform, tokens, 8, built.spec.experts, seed);
            let (y, tol, _) = moe_support::expected(built, 0..built.spec.inter, &x, &ids, &w);
            let mut out = moe_support::poisoned(tokens * built.spec.hidden);
            ctx.forward(&built.layer, &x, &ids, &w, &mut out).unwrap();
            moe_support::check(&format!("{:?} T={tokens}", built.spec), &out, &y, &tol);
        }
    }
}

#[test]
fn intermediate_slices_add_up_to_the_full_layer() {
    // Two "NUMA nodes", each with a block-aligned share of the intermediate dimension.
    for (gate, down, inter, cut) in [
        (QType::Q4_K, QType::Q5_0, 352, 160),
        (QType::Q5_K, QType::Q6_K, 768, 512),
    ] {
        let b = moe_support::build(
            Spec {
                hidden: 256,
                inter,
                experts: 8,
                gate,
                up: gate,
                down,
            },
            40,
        );
        let parts = [
            b.layer.with_intermediate_slice(0..cut).unwrap(),
            b.layer.with_intermediate_slice(cut..inter).unwrap(),
        ];
        let ctx = MoeContext::new(
            pool(2),
            Isa::best(),
            70,
            6,
            &[&b.layer, &parts[0], &parts[1]],
        )
        .unwrap();
        for tokens in [1, 70] {
            let x = moe_support::activations(tokens, 256, 41);
            let (ids, w) = moe_support::routing(Routing::Uniform, tokens, 6, 8, 41);
            let mut full = moe_support::poisoned(tokens * 256);
            ctx.forward(&b.layer, &x, &ids, &w, &mut full).unwrap();
            let mut sum = vec![0f32; full.len()];
            for (n, part) in parts.iter().enumerate() {
                let mut out = moe_support::poisoned(full.len());
                ctx.forward(part, &x, &ids, &w, &mut out).unwrap();
                let (y, tol, _) =
                    moe_support::expected(&b, part.intermediate_slice(), &x, &ids, &w);
                moe_support::check(
                    &format!("{gate}/{down} slice {n} T={tokens}"),
                    &out,
                    &y,
                    &tol,
                );
                sum.iter_mut().zip(&out).for_each(|(s, o)| *s += o);
            }
            // Same quantized intermediate blocks, dots split in two: f32 rounding only.
            let rel = moe_support::max_token_rel_l2(&sum, &full, 256);
            assert!(
                rel < 1e-5,
                "{gate}/{down} T={tokens}: slices sum to the full output within {rel:e}"
            );
        }
    }
}

/// The prefetch of a predicted decode call: `prefetch_rounds` gate+up items per thread (the
/// items a call of those experts hands to fixed threads first), stopped when asked, an
/// error for a bad id or rounds, and no effect on the results.
#[test]
fn prefetch_issues_the_first_items_and_changes_nothing() {
    let b = small(QType::Q4_K, QType::Q5_0, 96, 11);
    let isa = Isa::available().last().copied().unwrap();
    let ctx = MoeContext::new(pool(3), isa, 1, 6, &[&b.layer]).unwrap();
    assert_eq!(ctx.prefetch_rounds(), 2);
    let before = run(&ctx, &b, 1, 6, 12);
    // 3 distinct experts of 96 rows: 32-row items (fewer than 64 items at any larger
    // size), 3 per expert; 3 threads take the first 2 x 3, gate and up rows of each
    let item = 32 * QType::Q4_K.row_bytes(256).unwrap() * 2;
    let never = || false;
    assert_eq!(
        ctx.prefetch(&b.layer, &[5, 2, 5, 9], &never).unwrap(),
        6 * item
    );
    // one expert: its 3 items
    assert_eq!(ctx.prefetch(&b.layer, &[7], &never).unwrap(), 3 * item);
    // one round: one item per thread; more rounds than items: all 9
    ctx.set_prefetch_rounds(1).unwrap();
    assert_eq!(
        ctx.prefetch(&b.layer, &[5, 2, 9], &never).unwrap(),
        3 * item
    );
    ctx.set_prefetch_rounds(5).unwrap();
    assert_eq!(
        ctx.prefetch(&b.layer, &[5, 2, 9], &never).unwrap(),
        9 * item
    );
    shape_err(ctx.set_prefetch_rounds(0), "prefetch rounds 0");
    shape_err(ctx.set_prefetch_rounds(65), "prefetch rounds 65");
    assert_eq!(ctx.prefetch_rounds(), 5);
    // the call after a prefetch hands its first 5 rounds of items to fixed threads
    let five = run(&ctx, &b, 1, 6, 12);
    ctx.set_prefetch_rounds(2).unwrap();
    // stopped at once: only the part before the first poll, which counts nothing
    let now = || true;
    assert_eq!(ctx.prefetch(&b.layer, &[5, 2, 9], &now).unwrap(), 0);
    assert_eq!(ctx.prefetch(&b.layer, &[], &never).unwrap(), 0);
    shape_err(ctx.prefetch(&b.layer, &[1, 12], &never), "expert id 12");
    let after = run(&ctx, &b, 1, 6, 12);
    // a prediction that misses the call's smallest expert and names one it does not
    // choose: the call lays its experts out in the prediction's order (the missed one
    // last), which changes which thread runs what, not a bit of the result
    let (call_ids, _) = moe_support::routing(Routing::Uniform, 1, 6, b.spec.experts, 12);
    let predicted = moe_support::reordering_prediction(&call_ids, b.spec.experts);
    ctx.prefetch(&b.layer, &predicted, &never).unwrap();
    let reordered = run(&ctx, &b, 1, 6, 12);
    moe_support::assert_unchanged(
        &before,
        &[
            ("a prefetch", &after),
            ("the own rounds of the hand-out", &five),
            ("the prediction's order of the experts", &reordered),
        ],
    );
}
