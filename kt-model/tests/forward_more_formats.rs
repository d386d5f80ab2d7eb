//! The reference mode on tiny-dsv3's Q2_K (Q2_K, Q3_K, Q4_0, Q6_K tensors) and Q5_K_M (Q5_K,
//! Q5_1, Q6_K) files (the repository's copy), against llama.cpp's runs of the same files
//! dequantized to F32: the same function, so rel L2 <= 1e-5 with identical routing.

mod forward_common;
mod gguf_common;

use forward_common::*;
use gguf_common::{dsv3_dir, open};
use kt_model::deepseek::{DeepSeekModel, MatmulMode};

const K: usize = 4;

fn check(variant: &str) {
    let dir = dsv3_dir();
    let g = open(&dir.join(format!("tiny-dsv3-{variant}.gguf")));
    let m = DeepSeekModel::from_gguf(&g, MatmulMode::Reference).unwrap();
    let (prompt, decode) = prompt_and_decode(&dir);
    let run = run_teacher_forced(&m, &prompt, &decode);
    let (_, ids) = npy_ids(
        &dir,
        &format!("llamacpp_{variant}_dequant_f32_router_topk_idx.npy"),
    );
    for j in 0..2 {
        let theirs = &ids[j * 24 * K..(j + 1) * 24 * K];
        assert_eq!(
            router_mismatches(&run.router_ids[j], theirs, K),
            Vec::<usize>::new(),
            "{variant} MoE layer {j}"
        );
    }
    let (_, lc) = npy_f32(&dir, &format!("llamacpp_{variant}_dequant_f32_logits.npy"));
    assert_close(
        &format!("{variant} vs llama.cpp dequantized"),
        &run.logits,
        &lc,
        1e-5,
        1e-4,
    );
}

#[test]
fn q2_k_reference_matches_llamacpp_dequantized() {
    check("q2_k");
}

#[test]
fn q5_k_m_reference_matches_llamacpp_dequantized() {
    check("q5_k_m");
}
