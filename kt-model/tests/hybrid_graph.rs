//! The decode step replayed as one CUDA graph (the CPU's routed experts ordered by host
//! flags) against the same calls run eagerly: the same kernels in the same order, with the
//! per-token inputs (position, cache row, rope row, MLA kv length and split count) read from
//! device buffers, so the logits must agree bit for bit. The calls: a prompt of 188 tokens,
//! 5 decode steps (crossing the cache page boundary at position 192, where the wgmma MLA
//! kernel also goes from one key split to two), a 3-token chunk (eager; the graph stays unless
//! the chunk grew the workspaces it names, then the next step recaptures), then 5 more decode
//! steps; on a synthetic DeepSeek-V2-Lite cut to 3 layers (one dense, two MoE), with the
//! shipped hybrid rules (int4 linears), all-bf16 ones and the hybrid rules with int4 CPU
//! experts (`rules/cpu-int4/`, the repacked operator). A cache cleared for a new sequence
//! keeps its graph: the new sequence's decode steps all replay it, again bit for bit.
//! The graph predicts the second MoE layer's experts and the CPU prefetches them (on by
//! default): that changes no value, and the predictions must be far better than chance.
//! The two tests run in parallel (the harness's default threads): two models decoding on two
//! threads of one process, whose forward calls take turns (`device_exclusive`, `hybrid/mod.rs`);
//! without that the pair deadlocked at times on the device, the GPU idle.
//! A third test runs the DeepSeek-V3 shape (5 layers, ~16 GB of synthetic GGUF in memory) the
//! same way with its shipped rules: its query LoRA and 128 heads take kernel paths the V2-Lite
//! shape does not.
//! Needs a GPU: skips with a message without one, unless KT_REQUIRE_GPU is set.
#![cfg(feature = "cuda")]

#[path = "../../kt-kernels/tests/cuda_common/mod.rs"]
mod cuda_common;
mod hybrid_common;

use kt_kernels::cpu;
use kt_kernels::util::SplitMix64;
use kt_model::deepseek::{argmax, LogitRows};
use kt_model::hybrid::{HybridCache, HybridModel};
use kt_model::placement::RuleSet;

const PROMPT: usize = 188;
const DECODE: usize = 5;
const CHUNK: usize = 3;
/// Decode steps per run: each replays the graph or, where there is none for the cache (or
/// it went stale), runs eagerly and captures one.
const STEPS: u64 = 2 * DECODE as u64;

fn decode(model: &mut HybridModel<'_>, cache: &mut HybridCache, first: u32) -> Vec<Vec<f32>> {
    let mut next = first;
    (0..DECODE)
        .map(|_| {
            let l = model.forward(&[next], cache, LogitRows::Last).unwrap();
            next = argmax(&l);
            l
        })
        .collect()
}

/// Logits of every call, in order.
fn run(model: &mut HybridModel<'_>) -> Vec<Vec<f32>> {
    let vocab = model.config().vocab_size;
    let mut cache = model.new_cache(PROMPT + 2 * DECODE + CHUNK).unwrap();
    let mut rng = SplitMix64::new(0x6772_6170);
    let prompt: Vec<u32> = (0..PROMPT).map(|_| rng.below(vocab) as u32).collect();
    let chunk: Vec<u32> = (0..CHUNK).map(|_| rng.below(vocab) as u32).collect();
    let mut out = vec![model.forward(&prompt, &mut cache, LogitRows::Last).unwrap()];
    out.extend(decode(model, &mut cache, argmax(&out[0])));
    out.push(model.forward(&chunk, &mut cache, LogitRows::All).unwrap());
    let last = argmax(&out.last().unwrap()[(CHUNK - 1) * vocab..]);
    out.extend(decode(model, &mut cache, last));
    out
}

/// Every call's logits finite, not constant, and the same bits in both runs (`name` says which).
fn assert_same_bits(name: &str, graphed: &[Vec<f32>], eager: &[Vec<f32>]) {
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert_eq!(graphed.len(), eager.len());
    for (i, (gr, ea)) in graphed.iter().zip(eager).enumerate() {
        assert!(
            gr.iter().all(|v| v.is_finite()),
            "{name} call {i}: non-finite logits"
        );
        assert!(
            gr.iter().any(|&v| v != gr[0]),
            "{name} call {i}: constant logits (nothing computed?)"
        );
        assert_eq!(
            bits(gr),
            bits(ea),
            "{name} call {i}: the two runs' bits differ"
        );
    }
}

#[test]
fn graph_decode_matches_eager_bit_for_bit() {
    let Some(gpu) = cuda_common::gpu_or_skip("graph_decode_matches_eager_bit_for_bit") else {
        return;
    };
    let (m, g) = hybrid_common::v2_lite(3, 29);
    let c = m.config().clone();
    let isa = cpu::isa::selected().unwrap();
    let hybrid =
        RuleSet::from_file(hybrid_common::rules_file("deepseek-v2-lite-hybrid.yaml")).unwrap();
    let bf16 = RuleSet::from_yaml_str(hybrid_common::ALL_BF16, "test").unwrap();
    let int4 = RuleSet::from_file(hybrid_common::rules_file(
        "cpu-int4/deepseek-v2-lite-hybrid.yaml",
    ))
    .unwrap();
    let mut gpu = Some(gpu);
    for (name, rules) in [
        ("hybrid rules", hybrid),
        ("all bf16", bf16),
        ("int4 CPU experts", int4),
    ] {
        let placement = rules.place(&c).unwrap();
        let dev = match gpu.take() {
            Some(d) => d,
            None => kt_kernels::cuda::Gpu::new(0).unwrap(),
        };
        let mut model = HybridModel::new(dev, &g, c.clone(), &placement, isa).unwrap();
        let graphed = run(&mut model);
        assert_eq!(
            model.graph_error(),
            None,
            "{name}: the decode graph was not captured"
        );
        let (launches, captures) = (model.graph_launches(), model.graph_captures());
        assert!(
            (1..=2).contains(&captures) && launches + captures == STEPS,
            "{name}: {launches} replays and {captures} captures for {STEPS} decode steps"
        );
        // the host timeline of the last graph: every replay when the chunk kept the graph,
        // the second decode run's replays when it was recaptured
        let tl = model.graph_timeline().expect("the last decode run's graph");
        let last_graph = if captures == 1 {
            launches
        } else {
            DECODE as u64 - 1
        };
        assert_eq!(tl.launches, last_graph, "{name}: timeline launches");
        assert_eq!(tl.experts_s.len(), 2, "{name}: one entry per MoE layer");
        assert_eq!(tl.gpu_before_s.len(), 2, "{name}: one entry per MoE layer");
        assert!(
            tl.experts_s
                .iter()
                .chain(&tl.gpu_before_s)
                .all(|&s| s > 0.0)
                && tl.setup_s > 0.0
                && tl.tail_s > 0.0,
            "{name}: every stretch of the timeline was timed: {tl:?}"
        );
        // the second MoE layer's experts are predicted during the first's (the prefetch is
        // on by default): once per replay, naming well over chance's share of the actual
        // top-6 of 64 (9%; the synthetic model's ~70%), which a wrong router, norm or
        // residual would not
        assert_eq!(tl.prefetches, last_graph, "{name}: prefetches");
        assert_eq!(
            tl.predicted_slots,
            6 * tl.prefetches,
            "{name}: predicted slots"
        );
        assert!(
            tl.predicted_hits * 4 >= tl.predicted_slots && tl.prefetch_bytes > 0,
            "{name}: predictions name {} of {} actual experts, prefetch {} bytes",
            tl.predicted_hits,
            tl.predicted_slots,
            tl.prefetch_bytes
        );
        model.set_graphed(false);
        let eager = run(&mut model);
        assert_eq!(
            model.graph_launches(),
            launches,
            "{name}: replays while off"
        );

        assert_same_bits(&format!("{name}: graph vs eager"), &graphed, &eager);
        eprintln!(
            "{name}: {} calls agree bit for bit, {} of them graph replays",
            graphed.len(),
            model.graph_launches()
        );
    }
}

/// A second sequence on the same cache, cleared: every decode step replays the graph the
/// first sequence captured (the same prompt length, so no call grows the workspaces), and its
/// logits equal the eager calls' bit for bit; a sequence on another cache captures its own.
#[test]
fn a_cleared_cache_keeps_its_graph() {
    let Some(gpu) = cuda_common::gpu_or_skip("a_cleared_cache_keeps_its_graph") else {
        return;
    };
    let (m, g) = hybrid_common::v2_lite(3, 31);
    let c = m.config().clone();
    let placement = hybrid_common::v2_lite_hybrid_placement(&c);
    let isa = cpu::isa::selected().unwrap();
    let mut model = HybridModel::new(gpu, &g, c.clone(), &placement, isa).unwrap();
    let mut rng = SplitMix64::new(0x636c_6561);
    let mut prompt = || {
        (0..PROMPT)
            .map(|_| rng.below(c.vocab_size) as u32)
            .collect::<Vec<u32>>()
    };
    let (first, second) = (prompt(), prompt());
    let sequence = |model: &mut HybridModel<'_>, cache: &mut HybridCache, p: &[u32]| {
        cache.clear();
        let mut out = vec![model.forward(p, cache, LogitRows::Last).unwrap()];
        out.extend(decode(model, cache, argmax(&out[0])));
        out
    };
    let steps = DECODE as u64;
    let mut cache = model.new_cache(PROMPT + DECODE).unwrap();
    sequence(&mut model, &mut cache, &first);
    assert_eq!(
        model.graph_error(),
        None,
        "the decode graph was not captured"
    );
    assert_eq!(
        (model.graph_captures(), model.graph_launches()),
        (1, steps - 1),
        "first sequence: one capture, then replays"
    );
    let graphed = sequence(&mut model, &mut cache, &second);
    assert_eq!(
        (model.graph_captures(), model.graph_launches()),
        (1, 2 * steps - 1),
        "the second sequence replays from its first decode step"
    );
    let tl = model.graph_timeline().expect("the graph");
    assert_eq!(
        tl.launches,
        2 * steps - 1,
        "one timeline over both sequences"
    );

    model.set_graphed(false);
    let eager = sequence(&mut model, &mut cache, &second);
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert_eq!(graphed.len(), eager.len());
    for (i, (gr, ea)) in graphed.iter().zip(&eager).enumerate() {
        assert!(
            gr.iter().all(|v| v.is_finite()) && gr.iter().any(|&v| v != gr[0]),
            "call {i}: non-finite or constant logits"
        );
        assert_eq!(bits(gr), bits(ea), "call {i}: graph vs eager");
    }

    // another cache: its first decode step runs eagerly and captures a graph of its own
    model.set_graphed(true);
    let mut other = model.new_cache(PROMPT + DECODE).unwrap();
    sequence(&mut model, &mut other, &first);
    assert_eq!(
        (model.graph_captures(), model.graph_launches()),
        (2, 3 * steps - 2),
        "a new cache captures once, then replays"
    );
}

/// Memory the V3-shape test needs: its ~16 GB synthetic GGUF and the model built over it.
const V3_TEST_GIB: f64 = 24.0;

/// The DeepSeek-V3 shape (hidden 7168, 128 heads over a 1536-rank query LoRA, 256 experts in 8
/// groups with sigmoid scores, top 8) cut to 5 layers (3 dense, 2 MoE), with the shipped V3
/// hybrid rules: its own kernels' sizes (the query LoRA's chain of programmatic launches, the
/// rope over 4 blocks of query pairs, the return staging a 7168-wide row, the FFN entry's
/// router rows longer than its registers) give the same logits in the graph as eagerly, bit
/// for bit, and the same again in a second eager run (no race between the programmatic
/// launches); the second MoE layer's experts predicted far above chance (8 of 256, 3%).
/// About 16 GB of synthetic GGUF in memory: a GPU machine's test.
#[test]
fn v3_shape_graph_matches_eager_bit_for_bit() {
    let Some(gpu) = cuda_common::gpu_or_skip("v3_shape_graph_matches_eager_bit_for_bit") else {
        return;
    };
    if !hybrid_common::memory_for("v3_shape_graph_matches_eager_bit_for_bit", V3_TEST_GIB) {
        return;
    }
    let (m, g) = hybrid_common::v3(5, 37);
    let c = m.config().clone();
    let isa = cpu::isa::selected().unwrap();
    let placement = RuleSet::from_file(hybrid_common::rules_file("deepseek-v3-hybrid.yaml"))
        .unwrap()
        .place(&c)
        .unwrap();
    let mut model = HybridModel::new(gpu, &g, c.clone(), &placement, isa).unwrap();
    let graphed = run(&mut model);
    assert_eq!(
        model.graph_error(),
        None,
        "the decode graph was not captured"
    );
    let tl = model.graph_timeline().expect("the last decode run's graph");
    assert_eq!(tl.experts_s.len(), 2, "one entry per MoE layer");
    assert!(
        tl.prefetches > 0 && tl.predicted_hits * 8 >= tl.predicted_slots,
        "predictions name {} of {} actual experts over {} prefetches",
        tl.predicted_hits,
        tl.predicted_slots,
        tl.prefetches
    );
    model.set_graphed(false);
    let eager = run(&mut model);
    assert_same_bits("V3: graph vs eager", &graphed, &eager);
    let again = run(&mut model);
    assert_same_bits("V3: eager vs eager again", &eager, &again);
}

/// Decode on the resident experts (`decode_resident`): a single-token step's choices among
/// the layer's first 16 experts run on the GPU in int4 beside the shared experts, the others
/// on the CPU. The graph and the eager steps agree bit for bit (the same staging, GEMMs,
/// combine and add order); the replays' timeline counts the resident choices (more than none,
/// fewer than all: 16 of 64 experts, ~25% at uniform routing); the prompt (a GPU prefill
/// chunk) is unchanged; the decode steps differ from the all-CPU run only by the resident
/// choices' int4 weights (both runs pick the same tokens): not equal (the GPU path ran) but
/// within 2 sqrt(2) e of the logits' RMS per call, e the int4 weights' relative RMS error
/// (the bound `hybrid_prefill.rs` derives for routed experts computed from those weights; a
/// wrong staged expert, place or weight moves the logits by about their own size).
#[test]
fn decode_on_resident_experts_matches_eager_bit_for_bit() {
    let Some(gpu) =
        cuda_common::gpu_or_skip("decode_on_resident_experts_matches_eager_bit_for_bit")
    else {
        return;
    };
    let (m, g) = hybrid_common::v2_lite(3, 31);
    let c = m.config().clone();
    let isa = cpu::isa::selected().unwrap();
    let text = std::fs::read_to_string(hybrid_common::rules_file(
        "gpu-prefill/deepseek-v2-lite-hybrid.yaml",
    ))
    .unwrap();
    let on = text.replace(
        "prefill_threshold: 48}",
        "prefill_threshold: 48, prefill_resident: 16, decode_resident: true}",
    );
    assert_ne!(
        on, text,
        "the shipped rule's options changed: update this test"
    );
    let placement = RuleSet::from_yaml_str(&on, "test")
        .unwrap()
        .place(&c)
        .unwrap();
    let mut model = HybridModel::new(gpu, &g, c.clone(), &placement, isa).unwrap();
    assert_eq!(model.decode_resident(), Some(true));
    assert_eq!(model.gpu_prefill_resident(), Some(16));
    let graphed = run(&mut model);
    assert_eq!(
        model.graph_error(),
        None,
        "the decode graph was not captured"
    );
    let tl = model.graph_timeline().expect("a graph");
    assert_eq!(
        tl.choice_slots,
        2 * 6 * tl.launches,
        "choices seen by the host"
    );
    assert!(
        tl.resident_hits > 0 && tl.resident_hits < tl.choice_slots,
        "{} of {} choices on resident experts",
        tl.resident_hits,
        tl.choice_slots
    );
    model.set_graphed(false);
    let eager = run(&mut model);
    assert_same_bits("decode_resident: graph vs eager", &graphed, &eager);

    model.set_decode_resident(false).unwrap();
    assert_eq!(model.decode_resident(), Some(false));
    model.set_graphed(true);
    let cpu_only = run(&mut model);
    assert_eq!(model.graph_timeline().map(|t| t.resident_hits), Some(0));
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(&graphed[0]), bits(&cpu_only[0]), "the prompt changed");
    let e = model
        .gpu_prefill_load()
        .expect("GPU prefill experts")
        .relative_rms;
    let bound = 2.0 * std::f64::consts::SQRT_2 * e;
    let mut differ = 0;
    for (i, (a, b)) in graphed.iter().zip(&cpu_only).enumerate().skip(1) {
        // the same tokens: each run decodes its own argmax (the chunk's from its last row)
        let last = |v: &[f32]| argmax(&v[v.len() - c.vocab_size..]);
        assert_eq!(last(a), last(b), "call {i}: the runs chose other tokens");
        let rms = |v: &mut dyn Iterator<Item = f64>, n: usize| (v.sum::<f64>() / n as f64).sqrt();
        let scale = rms(&mut b.iter().map(|&v| (v as f64).powi(2)), b.len());
        let diff = rms(
            &mut a
                .iter()
                .zip(b)
                .map(|(&x, &y)| (x as f64 - y as f64).powi(2)),
            b.len(),
        );
        eprintln!(
            "call {i}: logits' RMS difference {:.4} of their RMS (bound {bound:.4})",
            diff / scale
        );
        assert!(
            diff <= bound * scale,
            "call {i}: {diff} against logits of RMS {scale} (bound {bound} of it)"
        );
        differ += usize::from(bits(a) != bits(b));
    }
    assert!(
        differ > 0,
        "no decode step changed: the GPU's choices never ran"
    );
}

/// Expert deferral (`defer_experts: 2`): in a decode step the first MoE layer hands its two
/// lowest-weighted choices to the second, whose output adds them, while the CPU computes
/// them beside the GPU's next layer. The graph replays, the pipelined eager steps and the
/// sequential eager steps run the same CPU calls in the same order, so all three agree bit
/// for bit; the replays' timeline counts deferred work on the first MoE layer only (the
/// last keeps its choices). The prompt (a multi-token call) never defers: bit for bit the
/// run without deferral, whose decode steps the deferral must change (it approximates the
/// model). A deferral that leaves a layer no choice of its own is refused.
#[test]
fn deferred_experts_graph_matches_eager_bit_for_bit() {
    let Some(gpu) = cuda_common::gpu_or_skip("deferred_experts_graph_matches_eager_bit_for_bit")
    else {
        return;
    };
    let (m, g) = hybrid_common::v2_lite(3, 37);
    let c = m.config().clone();
    let isa = cpu::isa::selected().unwrap();
    let rules =
        RuleSet::from_file(hybrid_common::rules_file("deepseek-v2-lite-hybrid.yaml")).unwrap();
    let placement = rules.place(&c).unwrap();
    let mut model = HybridModel::new(gpu, &g, c.clone(), &placement, isa).unwrap();
    assert_eq!(model.defer_experts(), 0);
    assert!(model.set_defer_experts(c.experts_per_tok).is_err());
    model.set_defer_experts(2).unwrap();
    let graphed = run(&mut model);
    assert_eq!(
        model.graph_error(),
        None,
        "the decode graph was not captured"
    );
    let tl = model.graph_timeline().expect("a graph");
    assert_eq!(tl.deferred_s.len(), 2);
    assert!(
        tl.deferred_s[0] > 0.0 && tl.deferred_s[1] == 0.0,
        "deferred seconds per MoE layer: {:?}",
        tl.deferred_s
    );
    model.set_graphed(false);
    let pipelined = run(&mut model);
    assert_same_bits("defer_experts: graph vs pipelined", &graphed, &pipelined);
    model.set_pipelined(false);
    let sequential = run(&mut model);
    assert_same_bits("defer_experts: graph vs sequential", &graphed, &sequential);

    model.set_pipelined(true);
    model.set_graphed(true);
    model.set_defer_experts(0).unwrap();
    let exact = run(&mut model);
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(&graphed[0]), bits(&exact[0]), "the prompt changed");
    let mut differ = 0;
    for (i, (a, b)) in graphed.iter().zip(&exact).enumerate().skip(1) {
        let rms = |v: &mut dyn Iterator<Item = f64>| (v.sum::<f64>() / b.len() as f64).sqrt();
        let scale = rms(&mut b.iter().map(|&v| (v as f64).powi(2)));
        let diff = rms(&mut a
            .iter()
            .zip(b)
            .map(|(&x, &y)| (x as f64 - y as f64).powi(2)));
        eprintln!(
            "call {i}: deferral moved the logits by {:.4} of their RMS",
            diff / scale
        );
        differ += usize::from(bits(a) != bits(b));
    }
    assert!(differ > 0, "no decode step changed: nothing was deferred");
}
