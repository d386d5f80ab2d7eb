//! The hyper-parameters of the real DeepSeek models the synthetic ones copy, as their
//! Hugging Face `config.json` states them.

use std::fmt;

use kt_kernels::quant::QType;

use crate::config::{DeepSeekConfig, ScoringFunc, TopkMethod, YarnScaling};

/// A real model whose shapes and routing a synthetic model copies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Preset {
    /// DeepSeek-V2-Lite: 27 layers, 64 routed experts (top-6, softmax), no query LoRA.
    DeepSeekV2Lite,
    /// DeepSeek-V2 (236B): 60 layers, 160 routed experts (top-6 of 3 of 8 groups, softmax),
    /// query LoRA.
    DeepSeekV2,
    /// DeepSeek-V3 (and R1): 61 layers, 256 routed experts (top-8 of 4 of 8 groups,
    /// sigmoid with a score bias).
    DeepSeekV3,
}

impl Preset {
    pub const ALL: [Preset; 3] = [
        Preset::DeepSeekV2Lite,
        Preset::DeepSeekV2,
        Preset::DeepSeekV3,
    ];

    /// The name used on the command line (`deepseek-v2-lite`, `deepseek-v2`, `deepseek-v3`).
    pub fn name(self) -> &'static str {
        match self {
            Preset::DeepSeekV2Lite => "deepseek-v2-lite",
            Preset::DeepSeekV2 => "deepseek-v2",
            Preset::DeepSeekV3 => "deepseek-v3",
        }
    }

    pub fn from_name(name: &str) -> Option<Preset> {
        Preset::ALL
            .into_iter()
            .find(|p| p.name().eq_ignore_ascii_case(name))
    }

    /// The full model's hyper-parameters.
    pub fn config(self) -> DeepSeekConfig {
        match self {
            Preset::DeepSeekV2Lite => DeepSeekConfig {
                vocab_size: 102_400,
                hidden_size: 2048,
                n_layers: 27,
                n_heads: 16,
                q_lora_rank: None,
                kv_lora_rank: 512,
                qk_nope_head_dim: 128,
                qk_rope_head_dim: 64,
                v_head_dim: 128,
                intermediate_size: 10_944,
                moe_intermediate_size: 1408,
                n_routed_experts: 64,
                n_shared_experts: 2,
                experts_per_tok: 6,
                first_k_dense_replace: 1,
                n_group: 1,
                topk_group: 1,
                routed_scaling_factor: 1.0,
                norm_topk_prob: false,
                scoring: ScoringFunc::Softmax,
                topk_method: TopkMethod::Greedy,
                rms_norm_eps: 1e-6,
                rope_theta: 10_000.0,
                rope_scaling: Some(YarnScaling {
                    factor: 40.0,
                    original_max_position_embeddings: 4096,
                    beta_fast: 32.0,
                    beta_slow: 1.0,
                    mscale: 0.707,
                    mscale_all_dim: 0.707,
                }),
                max_position_embeddings: 163_840,
                bos_token_id: Some(100_000),
                eos_token_id: Some(100_001),
            },
            Preset::DeepSeekV2 => DeepSeekConfig {
                vocab_size: 102_400,
                hidden_size: 5120,
                n_layers: 60,
                n_heads: 128,
                q_lora_rank: Some(1536),
                kv_lora_rank: 512,
                qk_nope_head_dim: 128,
                qk_rope_head_dim: 64,
                v_head_dim: 128,
                intermediate_size: 12_288,
                moe_intermediate_size: 1536,
                n_routed_experts: 160,
                n_shared_experts: 2,
                experts_per_tok: 6,
                first_k_dense_replace: 1,
                n_group: 8,
                topk_group: 3,
                routed_scaling_factor: 16.0,
                norm_topk_prob: false,
                scoring: ScoringFunc::Softmax,
                topk_method: TopkMethod::GroupLimitedGreedy,
                rms_norm_eps: 1e-6,
                rope_theta: 10_000.0,
                rope_scaling: Some(YarnScaling {
                    factor: 40.0,
                    original_max_position_embeddings: 4096,
                    beta_fast: 32.0,
                    beta_slow: 1.0,
                    mscale: 0.707,
                    mscale_all_dim: 0.707,
                }),
                max_position_embeddings: 163_840,
                bos_token_id: Some(100_000),
                eos_token_id: Some(100_001),
            },
            Preset::DeepSeekV3 => DeepSeekConfig {
                vocab_size: 129_280,
                hidden_size: 7168,
                n_layers: 61,
                n_heads: 128,
                q_lora_rank: Some(1536),
                kv_lora_rank: 512,
                qk_nope_head_dim: 128,
                qk_rope_head_dim: 64,
                v_head_dim: 128,
                intermediate_size: 18_432,
                moe_intermediate_size: 2048,
                n_routed_experts: 256,
                n_shared_experts: 1,
                experts_per_tok: 8,
                first_k_dense_replace: 3,
                n_group: 8,
                topk_group: 4,
                routed_scaling_factor: 2.5,
                norm_topk_prob: true,
                scoring: ScoringFunc::Sigmoid,
                topk_method: TopkMethod::NoauxTc,
                rms_norm_eps: 1e-6,
                rope_theta: 10_000.0,
                rope_scaling: Some(YarnScaling {
                    factor: 40.0,
                    original_max_position_embeddings: 4096,
                    beta_fast: 32.0,
                    beta_slow: 1.0,
                    mscale: 1.0,
                    mscale_all_dim: 1.0,
                }),
                max_position_embeddings: 163_840,
                bos_token_id: Some(0),
                eos_token_id: Some(1),
            },
        }
    }
}

impl Preset {
    /// Name, format and ggml dims of every tensor of a synthetic model of `config` (any
    /// preset's, shortened or not): llama.cpp's Q4_K_M mix (`plan.rs`). Planning reads it
    /// when no GGUF file is given, without building any weights.
    pub fn q4_k_m_tensors(config: &DeepSeekConfig) -> Vec<(String, QType, Vec<usize>)> {
        super::plan::plan(config)
            .into_iter()
            .map(|t| (t.name, t.qtype, t.dims))
            .collect()
    }
}

impl fmt::Display for Preset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}
