//! The forward pass on tiny-dsv3 (V3: query LoRA, sigmoid noaux_tc routing with groups,
//! YaRN) against HF transformers and llama.cpp.

mod forward_common;
mod gguf_common;

use forward_common::*;
use gguf_common::{dsv3_dir, open};
use kt_model::deepseek::{DeepSeekModel, ForwardTrace, LogitRows, MatmulMode};

#[test]
fn bf16_reference_prefill_matches_hf() {
    let dir = dsv3_dir();
    let g = open(&dir.join("tiny-dsv3-bf16.gguf"));
    let m = DeepSeekModel::from_gguf(&g, MatmulMode::Reference).unwrap();
    let (prompt, _) = prompt_and_decode(&dir);
    let mut cache = m.new_cache(32).unwrap();
    let mut trace = ForwardTrace::default();
    let logits = m.forward(&prompt, &mut cache, LogitRows::All, Some(&mut trace)).unwrap();
    let (_, hf) = npy_f32(&dir, "hf_prefill_logits.npy");
    assert_close("prefill logits vs HF", &logits, &hf, 1e-5, 1e-4);
}
