//! Stage timers and the fused MoE operator's batch pieces, on tiny-dsv2 (Q4_K_M, one dense
//! layer then two MoE layers of 16 experts, top-6) from the shared fixtures.
//!
//! - `forward_timed` computes exactly what `forward` does (bit for bit) and fills one
//!   split per layer: attention in every layer, router and routed experts only in MoE
//!   layers, and the routed bytes of the experts the routing actually chose.
//! - A fused-MoE context sized for fewer tokens than the prompt runs the routed experts in
//!   pieces; each token's rows are independent, so the routing agrees exactly and the
//!   logits up to the kernels' rounding (see the test for how far that goes).

mod forward_common;
mod gguf_common;

use forward_common::*;
use gguf_common::{dsv2_dir, open};
use kt_model::deepseek::{DeepSeekModel, ForwardTrace, LogitRows, MatmulMode, Stage, StageTimes};

/// Bytes of one routed expert of layer `l` (gate + up + down), from the GGUF itself.
fn expert_bytes(g: &kt_model::gguf::Gguf, l: usize, n_experts: usize) -> u64 {
    ["gate", "up", "down"]
        .iter()
        .map(|m| {
            let t = g
                .require_tensor(&format!("blk.{l}.ffn_{m}_exps.weight"))
                .unwrap();
            assert_eq!(t.dims[2], n_experts);
            (t.data.len() / n_experts) as u64
        })
        .sum()
}

#[test]
fn timed_forward_is_the_same_function_and_splits_every_layer() {
    let dir = dsv2_dir();
    let g = open(&dir.join("tiny-dsv2-q4_k_m.gguf"));
    let (prompt, decode) = prompt_and_decode(&dir);
    for mode in [
        MatmulMode::Reference,
        MatmulMode::quantized_selected().unwrap(),
    ] {
        let m = DeepSeekModel::from_gguf(&g, mode).unwrap();
        let c = m.config().clone();
        let mut plain_cache = m.new_cache(prompt.len() + 2).unwrap();
        let mut timed_cache = m.new_cache(prompt.len() + 2).unwrap();
        let mut times = StageTimes::default();
        let mut expected_bytes = vec![0u64; c.n_layers];
        for batch in [&prompt[..], &decode[..1], &decode[1..2]] {
            let plain = m
                .forward(batch, &mut plain_cache, LogitRows::All, None)
                .unwrap();
            let mut trace = ForwardTrace::default();
            let timed = m
                .forward_timed(
                    batch,
                    &mut timed_cache,
                    LogitRows::All,
                    Some(&mut trace),
                    Some(&mut times),
                )
                .unwrap();
            assert_eq!(
                plain.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                timed.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                "{mode:?}: timing changed the logits"
            );
            for (l, r) in &trace.routing {
                let mut ids = r.ids.clone();
                ids.sort_unstable();
                ids.dedup();
                expected_bytes[*l] += ids.len() as u64 * expert_bytes(&g, *l, c.n_routed_experts);
            }
        }
        assert_eq!(times.calls, 3);
        assert_eq!(times.tokens as usize, prompt.len() + 2);
        assert_eq!(times.layers.len(), c.n_layers);
        assert_eq!(times.routed_bytes, expected_bytes, "{mode:?}");
        for (l, split) in times.layers.iter().enumerate() {
            let moe = l >= c.first_k_dense_replace;
            assert!(
                split.get(Stage::Attention) > 0.0,
                "{mode:?} layer {l}: {split:?}"
            );
            assert!(split.get(Stage::Mlp) > 0.0, "{mode:?} layer {l}: {split:?}");
            assert!(
                split.get(Stage::Other) > 0.0,
                "{mode:?} layer {l}: {split:?}"
            );
            assert_eq!(split.get(Stage::LmHead), 0.0, "{mode:?} layer {l}");
            assert_eq!(
                split.get(Stage::Router) > 0.0,
                moe,
                "{mode:?} layer {l}: {split:?}"
            );
            assert_eq!(
                split.get(Stage::RoutedExperts) > 0.0,
                moe,
                "{mode:?} layer {l}: {split:?}"
            );
            assert_eq!(expected_bytes[l] > 0, moe, "layer {l}");
        }
        assert!(times.head.get(Stage::LmHead) > 0.0);
        assert_eq!(times.head.get(Stage::Attention), 0.0);
        let sum: f64 = times.layers.iter().map(|s| s.total()).sum::<f64>() + times.head.total();
        assert!((times.total().total() - sum).abs() <= 1e-12 * sum.max(1.0));
    }
}

#[test]
fn fused_moe_in_pieces_matches_one_call() {
    let dir = dsv2_dir();
    let g = open(&dir.join("tiny-dsv2-q4_k_m.gguf"));
    let (prompt, _) = prompt_and_decode(&dir);
    let mode = MatmulMode::quantized_selected().unwrap();
    let whole = DeepSeekModel::from_gguf(&g, mode).unwrap();
    let mut pieces = DeepSeekModel::from_gguf(&g, mode).unwrap();
    // 16 prompt tokens in pieces of 5, 5, 5 and 1.
    pieces.set_max_batch(5).unwrap();
    assert!(pieces.set_max_batch(0).is_err());

    let run = |m: &DeepSeekModel| {
        let mut cache = m.new_cache(prompt.len()).unwrap();
        let mut trace = ForwardTrace::default();
        let logits = m
            .forward(&prompt, &mut cache, LogitRows::All, Some(&mut trace))
            .unwrap();
        (logits, trace.routing)
    };
    let (a, ra) = run(&whole);
    let (b, rb) = run(&pieces);
    assert!(a.iter().all(|v| v.is_finite()));
    for ((la, x), (lb, y)) in ra.iter().zip(&rb) {
        assert_eq!(la, lb);
        assert_eq!(x.ids, y.ids, "layer {la}: routing changed");
    }
    // The expert kernels depend on a tile's token count (AVX512: one token or 2-3 on the
    // row pairs, more on the column layout; AMX from 10), and their f32 orders differ by
    // ~1e-7 of an output. The operator re-quantizes its intermediate to Q8_K, where such a
    // difference can move an element across a rounding boundary: one quant step, 4.1e-4
    // of the logits' L2 here. With session 18's kernels pieces of 1 or 3 tokens read
    // exactly that (4.084e-4), pieces of 2, 4, 5 and 7 below 1e-5. A few such steps stay
    // far below what a wrong piece would do (a token's rows mixed or lost: O(1)).
    let (rel, _) = rel_l2_and_max_abs(&a, &b);
    assert!(rel <= 2e-3, "rel L2 {rel:.3e} between one call and pieces");
}
