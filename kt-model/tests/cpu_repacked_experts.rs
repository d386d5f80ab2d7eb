//! The CPU engine with its routed experts repacked at load (`DeepSeekModel::
//! with_repacked_experts`, what an all-CPU rules file with `int4_amx` / `int8_amx` experts
//! asks for) against the exact function of the stored weights (the `Reference` mode), on a
//! synthetic DeepSeek-V2-Lite cut to 2 layers (one dense, one MoE), a 17-token prompt, every
//! logits row.
//!
//! The MoE layer is the last one, so the router sees the same hidden states in every mode
//! and picks the same experts; only the experts' products differ. Bounds, per row
//! (relative L2 against the reference):
//! - as stored, the quantized path rounds each product's activations to Q8_K (0.64% RMS
//!   per element) and lands about 2% from the reference (`hybrid_forward.rs`);
//! - int8 with one f16 scale per 128 weights rounds each expert weight by about the same
//!   0.64% of the weights' RMS (`moe_repacked_layouts`: 0.0064 relative) in the expert
//!   products only, and the repacked operator's int8 activations round as Q8_K does: at
//!   most twice the as-stored distance, bound `INT8_TOL` = 5%;
//! - int4 with one scale per 128 weights rounds each weight by 10.7% of the weights' RMS,
//!   the bound of the hybrid tests' int4 products (`INT4_TOL`, 45%, `hybrid_forward.rs`).
//!
//! And the repacked experts must be the ones that ran: int4's weights, rounded 17 times as
//! coarsely as int8's, move the logits from the as-stored ones more than int8's do (by
//! `INT4_OVER_INT8`; measured: 1.44% against 0.49%), and int8's move them at all.

mod hybrid_common;

use hybrid_common::{rel_l2, v2_lite_two_layers as model};
use kt_kernels::cpu::moe::repack::RepackFormat;
use kt_kernels::cpu::{self, Isa};
use kt_model::deepseek::{DeepSeekModel, LogitRows, MatmulMode};

const INT8_TOL: f64 = 0.05;
const INT4_TOL: f64 = 0.45;
const INT4_OVER_INT8: f64 = 1.5;
const PROMPT: usize = 17;

/// All logits rows of the prompt through `m`.
fn logits(m: &DeepSeekModel) -> Vec<f32> {
    let vocab = m.config().vocab_size;
    let prompt: Vec<u32> = (0..PROMPT)
        .map(|i| ((i * 7919 + 13) % vocab) as u32)
        .collect();
    let mut cache = m.new_cache(PROMPT).unwrap();
    m.forward(&prompt, &mut cache, LogitRows::All, None)
        .unwrap()
}

/// The worst row's relative L2 distance of `got` from `want`.
fn worst_row(got: &[f32], want: &[f32], vocab: usize) -> f64 {
    got.chunks(vocab)
        .zip(want.chunks(vocab))
        .map(|(g, w)| rel_l2(g, w))
        .fold(0.0, f64::max)
}

#[test]
fn repacked_experts_match_the_reference_within_their_rounding() {
    let (m, g) = model();
    let config = m.config().clone();
    let vocab = config.vocab_size;
    let isa = cpu::isa::selected().unwrap_or(Isa::Scalar);
    let quantized = MatmulMode::Quantized(isa);
    let reference = logits(&DeepSeekModel::new(g, config.clone(), MatmulMode::Reference).unwrap());
    let stored = logits(&DeepSeekModel::new(g, config.clone(), quantized).unwrap());
    let repacked = |f: RepackFormat| {
        let done = std::sync::atomic::AtomicUsize::new(0);
        let model =
            DeepSeekModel::with_repacked_experts(g, config.clone(), quantized, f, &|d, t| {
                assert!(d <= t, "{d} of {t}");
                done.fetch_max(d, std::sync::atomic::Ordering::Relaxed);
            })
            .unwrap();
        // One MoE layer: its three projections of every expert, each reported.
        assert_eq!(
            done.into_inner(),
            3 * config.n_routed_experts,
            "{}",
            f.name()
        );
        logits(&model)
    };
    let int8 = repacked(RepackFormat::Int8 { group: 128 });
    let int4 = repacked(RepackFormat::Int4 { group: 128 });
    let (e_stored, e8, e4) = (
        worst_row(&stored, &reference, vocab),
        worst_row(&int8, &reference, vocab),
        worst_row(&int4, &reference, vocab),
    );
    eprintln!("worst rows from the reference: as stored {e_stored:.5}, int8 {e8:.5}, int4 {e4:.5}");
    assert!(e8 <= INT8_TOL, "int8 experts: {e8} > {INT8_TOL}");
    assert!(e4 <= INT4_TOL, "int4 experts: {e4} > {INT4_TOL}");
    let (moved4, moved8) = (rel_l2(&int4, &stored), rel_l2(&int8, &stored));
    eprintln!("from the as-stored logits: int4 {moved4:.5}, int8 {moved8:.5}");
    assert!(moved8 > 0.0, "int8 experts left the logits as they were");
    assert!(
        moved4 > INT4_OVER_INT8 * moved8,
        "int4 experts moved the logits {moved4}, int8 {moved8}"
    );
}

#[test]
fn the_reference_mode_refuses_repacked_experts() {
    let (m, g) = model();
    let err = DeepSeekModel::with_repacked_experts(
        g,
        m.config().clone(),
        MatmulMode::Reference,
        RepackFormat::Int4 { group: 128 },
        &|_, _| {},
    );
    assert!(err.is_err());
}
