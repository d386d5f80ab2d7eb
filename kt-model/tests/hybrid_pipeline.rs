//! The pipelined hybrid layers (the host queues the next layer's GPU work behind a host flag
//! before it runs the current layer's routed experts) against the same model run layer
//! after layer: the same kernels in the same order, so the logits must agree bit for bit,
//! over a prefill (tiled GEMM path), a 5-token chunk and single-token decode steps (the
//! small-m path), on a synthetic DeepSeek-V2-Lite cut to 4 layers (one dense, three MoE: a
//! MoE layer in the middle of the pipeline and one at its end).
//! Needs a GPU: skips with a message without one, unless KT_REQUIRE_GPU is set.
#![cfg(feature = "cuda")]

#[path = "../../kt-kernels/tests/cuda_common/mod.rs"]
mod cuda_common;
mod hybrid_common;

use kt_kernels::cpu;
use kt_kernels::util::SplitMix64;
use kt_model::deepseek::{argmax, LogitRows};
use kt_model::hybrid::{HybridCache, HybridModel, HybridTimes};

const PROMPT: usize = 13;
const CHUNK: usize = 5;
const DECODE: usize = 4;

/// Logits of every call: the prompt (all rows), the chunk (all rows), then greedy decode
/// steps (last row) from the chunk's last row; `timed` runs every call through
/// `forward_timed` with a time split (always layer after layer).
fn run(model: &mut HybridModel<'_>, cache: &mut HybridCache, timed: bool) -> Vec<Vec<f32>> {
    let vocab = model.config().vocab_size;
    let mut rng = SplitMix64::new(0x7069_7065);
    let prompt: Vec<u32> = (0..PROMPT).map(|_| rng.below(vocab) as u32).collect();
    let chunk: Vec<u32> = (0..CHUNK).map(|_| rng.below(vocab) as u32).collect();
    let mut times = HybridTimes::new(model.config().n_layers);
    let mut call = |m: &mut HybridModel<'_>, ids: &[u32], rows: LogitRows| {
        if timed {
            m.forward_timed(ids, cache, rows, None, Some(&mut times))
                .unwrap()
        } else {
            m.forward(ids, cache, rows).unwrap()
        }
    };
    let mut out = vec![
        call(model, &prompt, LogitRows::All),
        call(model, &chunk, LogitRows::All),
    ];
    let mut next = argmax(&out[1][(CHUNK - 1) * vocab..]);
    for _ in 0..DECODE {
        let l = call(model, &[next], LogitRows::Last);
        next = argmax(&l);
        out.push(l);
    }
    out
}

#[test]
fn pipelined_layers_match_sequential_bit_for_bit() {
    let Some(gpu) = cuda_common::gpu_or_skip("pipelined_layers_match_sequential_bit_for_bit")
    else {
        return;
    };
    let (m, g) = hybrid_common::v2_lite(4, 23);
    let c = m.config().clone();
    let placement = hybrid_common::v2_lite_hybrid_placement(&c);
    let isa = cpu::isa::selected().unwrap();
    let mut model = HybridModel::new(gpu, &g, c.clone(), &placement, isa).unwrap();
    // eager steps only: the decode graph has its own test (hybrid_graph)
    model.set_graphed(false);
    let cap = PROMPT + CHUNK + DECODE;

    let mut cache = model.new_cache(cap).unwrap();
    let pipelined = run(&mut model, &mut cache, false);
    assert!(
        model.pipelines(),
        "the device refused the host-flag wait: nothing was pipelined"
    );
    model.set_pipelined(false);
    assert!(!model.pipelines());
    let mut cache = model.new_cache(cap).unwrap();
    let sequential = run(&mut model, &mut cache, false);
    model.set_pipelined(true);
    let mut cache = model.new_cache(cap).unwrap();
    let timed = run(&mut model, &mut cache, true);

    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    for (i, ((p, s), t)) in pipelined.iter().zip(&sequential).zip(&timed).enumerate() {
        assert!(
            p.iter().all(|v| v.is_finite()),
            "call {i}: non-finite logits"
        );
        assert!(
            p.iter().any(|&v| v != p[0]),
            "call {i}: constant logits (nothing computed?)"
        );
        assert_eq!(bits(p), bits(s), "call {i}: pipelined vs layer after layer");
        assert_eq!(bits(s), bits(t), "call {i}: untimed vs timed");
    }
    eprintln!(
        "{} calls agree bit for bit ({} logits)",
        pipelined.len(),
        pipelined.iter().map(Vec::len).sum::<usize>()
    );
}
