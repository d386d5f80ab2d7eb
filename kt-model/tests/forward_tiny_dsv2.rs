//! The forward pass on tiny-dsv2 (V2-Lite style: no query LoRA, softmax greedy routing over
//! 16 experts with 2 shared, YaRN factor 40 with mscale 0.707) against HF transformers and
//! llama.cpp. The files are the repository's copy (`tests/fixtures/tiny-dsv2`) but for the
//! BF16 GGUF, read from the shared fixtures when they are present (`gguf_common::dsv2_bf16`).
//! Tolerances as in forward_tiny_dsv3.

mod forward_common;
mod gguf_common;

use forward_common::*;
use gguf_common::{dsv2_bf16, dsv2_dir, open};
use kt_model::config::DeepSeekConfig;
use kt_model::deepseek::{DeepSeekModel, MatmulMode};

const K: usize = 6;

#[test]
fn bf16_reference_matches_hf_and_llamacpp_f32() {
    let Some(bf16) = dsv2_bf16("bf16_reference_matches_hf_and_llamacpp_f32") else {
        return;
    };
    let dir = dsv2_dir();
    let g = open(&bf16);
    // the GGUF and config.json must agree; the reconciled config is what HF ran
    let config = DeepSeekConfig::from_gguf_and_hf(&g, dir.join("config.json")).unwrap();
    assert_eq!(config.q_lora_rank, None);
    let m = DeepSeekModel::new(&g, config, MatmulMode::Reference).unwrap();
    let (prompt, decode) = prompt_and_decode(&dir);
    let run = run_teacher_forced(&m, &prompt, &decode);

    let (_, pre) = npy_f32(&dir, "hf_prefill_logits.npy");
    let (_, dec) = npy_f32(&dir, "hf_decode_logits.npy");
    let hf: Vec<f32> = pre.iter().chain(&dec).copied().collect();
    assert_close("V2 24 logits rows vs HF", &run.logits, &hf, 1e-5, 1e-4);
    let (_, lc) = npy_f32(&dir, "llamacpp_f32_logits.npy");
    assert_close(
        "V2 24 logits rows vs llama.cpp F32",
        &run.logits,
        &lc,
        1e-5,
        1e-4,
    );

    let (shape, layers) = npy_f32(&dir, "hf_layer_outputs.npy");
    let per_layer = shape[1] * shape[2];
    for (l, ours) in run.prompt_layer_outputs.iter().enumerate() {
        let theirs = &layers[l * per_layer..(l + 1) * per_layer];
        assert_close(
            &format!("V2 layer {l} output vs HF"),
            ours,
            theirs,
            1e-5,
            1e-4,
        );
    }

    let (_, ids) = npy_ids(&dir, "hf_router_topk_idx.npy");
    let (_, weights) = npy_f32(&dir, "hf_router_topk_weight.npy");
    for j in 0..2 {
        let span = j * 24 * K..(j + 1) * 24 * K;
        assert_eq!(
            run.router_ids[j],
            ids[span.clone()],
            "V2 MoE layer {j}: expert ids"
        );
        // softmax probabilities, no normalization, scale 1: f32 rounding only
        assert_close(
            &format!("V2 MoE layer {j}: weights"),
            &run.router_weights[j],
            &weights[span],
            1e-5,
            1e-6,
        );
    }
}

#[test]
fn bf16_reference_greedy_tokens_match_hf() {
    let Some(bf16) = dsv2_bf16("bf16_reference_greedy_tokens_match_hf") else {
        return;
    };
    let dir = dsv2_dir();
    let g = open(&bf16);
    let m = DeepSeekModel::from_gguf(&g, MatmulMode::Reference).unwrap();
    let (prompt, decode) = prompt_and_decode(&dir);
    let mut cache = m.new_cache(24).unwrap();
    let tokens = m
        .generate_greedy(&prompt, decode.len(), &mut cache)
        .unwrap();
    assert_eq!(tokens, decode);
}

#[test]
fn q4_k_m_reference_matches_llamacpp_dequantized() {
    let dir = dsv2_dir();
    let g = open(&dir.join("tiny-dsv2-q4_k_m.gguf"));
    let m = DeepSeekModel::from_gguf(&g, MatmulMode::Reference).unwrap();
    let (prompt, decode) = prompt_and_decode(&dir);
    let run = run_teacher_forced(&m, &prompt, &decode);
    let (_, ids) = npy_ids(&dir, "llamacpp_q4_k_m_dequant_f32_router_topk_idx.npy");
    for j in 0..2 {
        let theirs = &ids[j * 24 * K..(j + 1) * 24 * K];
        assert_eq!(
            router_mismatches(&run.router_ids[j], theirs, K),
            Vec::<usize>::new(),
            "MoE layer {j}"
        );
    }
    let (_, lc) = npy_f32(&dir, "llamacpp_q4_k_m_dequant_f32_logits.npy");
    assert_close(
        "V2 Q4_K_M f32-activation logits vs llama.cpp dequantized",
        &run.logits,
        &lc,
        1e-5,
        1e-4,
    );
}

// The quantized mode against llama.cpp's native runs: forward_llamacpp_native.rs.
