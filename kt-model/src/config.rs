//! DeepSeek V2/V3 hyper-parameters: everything the forward pass needs, read from a
//! GGUF file's `deepseek2.*` metadata, from a Hugging Face `config.json`, or from both
//! (then compared field by field).

mod compare;
mod from_gguf;
mod from_hf;

use std::path::Path;

use crate::error::{ModelError, Result};
use crate::gguf::Gguf;

/// How router logits become expert scores, and how experts are picked: the router's own
/// types from kt-kernels (`ScoringFunc` keeps the HF field's name).
pub use kt_kernels::ops::gating::{Scoring as ScoringFunc, TopkMethod};

/// YaRN rope scaling (the only scaling DeepSeek uses).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct YarnScaling {
    pub factor: f32,
    pub original_max_position_embeddings: usize,
    pub beta_fast: f32,
    pub beta_slow: f32,
    /// Scales the rotary cos/sin (relative to `mscale_all_dim`).
    pub mscale: f32,
    /// Scales the attention softmax (squared).
    pub mscale_all_dim: f32,
}

/// DeepSeek V2/V3 hyper-parameters. Sizes follow Hugging Face's names.
#[derive(Debug, Clone, PartialEq)]
pub struct DeepSeekConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub n_layers: usize,
    pub n_heads: usize,
    /// `None`: queries are a single projection `attn_q` (V2-Lite).
    pub q_lora_rank: Option<usize>,
    pub kv_lora_rank: usize,
    pub qk_nope_head_dim: usize,
    pub qk_rope_head_dim: usize,
    pub v_head_dim: usize,
    /// FFN width of the dense layers.
    pub intermediate_size: usize,
    /// FFN width of one routed expert (a shared expert block is this times
    /// `n_shared_experts`).
    pub moe_intermediate_size: usize,
    pub n_routed_experts: usize,
    pub n_shared_experts: usize,
    pub experts_per_tok: usize,
    /// Layers `0..first_k_dense_replace` are dense, the rest MoE.
    pub first_k_dense_replace: usize,
    pub n_group: usize,
    pub topk_group: usize,
    pub routed_scaling_factor: f32,
    pub norm_topk_prob: bool,
    pub scoring: ScoringFunc,
    pub topk_method: TopkMethod,
    pub rms_norm_eps: f32,
    pub rope_theta: f32,
    pub rope_scaling: Option<YarnScaling>,
    pub max_position_embeddings: usize,
    pub bos_token_id: Option<u32>,
    pub eos_token_id: Option<u32>,
}

impl DeepSeekConfig {
    /// From a GGUF file's `deepseek2.*` (and tokenizer) metadata.
    pub fn from_gguf(gguf: &Gguf) -> Result<Self> {
        let from = from_gguf::read(gguf)?;
        from.config.validate(&gguf.path().display().to_string())?;
        Ok(from.config)
    }

    /// From a Hugging Face `config.json` (DeepseekV2Config / DeepseekV3Config).
    pub fn from_hf_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| ModelError::Io {
            path: path.to_owned(),
            source,
        })?;
        Self::from_hf_str(path, &text)
    }

    /// From the text of a `config.json`; `path` names it in errors.
    pub fn from_hf_str(path: impl AsRef<Path>, json: &str) -> Result<Self> {
        let path = path.as_ref();
        let config = from_hf::read(path, json)?;
        config.validate(&path.display().to_string())?;
        Ok(config)
    }

    /// From both: every field the GGUF states must agree with `config.json` (a
    /// disagreement is an error naming the field and both values). Fields the GGUF
    /// leaves to defaults or that its format cannot express (e.g. `topk_method`,
    /// `mscale`) are taken from `config.json`.
    pub fn from_gguf_and_hf(gguf: &Gguf, hf_config: impl AsRef<Path>) -> Result<Self> {
        let from = from_gguf::read(gguf)?;
        let hf = Self::from_hf_file(hf_config)?;
        compare::reconcile(from, hf)
    }

    /// `qk_nope_head_dim + qk_rope_head_dim`: the per-head query/key width.
    pub fn qk_head_dim(&self) -> usize {
        self.qk_nope_head_dim + self.qk_rope_head_dim
    }

    fn qk_head_dim_checked(&self) -> Option<usize> {
        self.qk_nope_head_dim.checked_add(self.qk_rope_head_dim)
    }

    /// True for MoE layers (`layer >= first_k_dense_replace`, when there are experts).
    pub fn is_moe_layer(&self, layer: usize) -> bool {
        self.n_routed_experts > 0 && layer >= self.first_k_dense_replace
    }

    /// FFN width of the shared-expert block of a MoE layer.
    pub fn shared_intermediate_size(&self) -> usize {
        self.moe_intermediate_size * self.n_shared_experts
    }

    /// Checks what the forward pass relies on (non-zero sizes, routing that can pick
    /// its experts, even rope width, ...); `origin` names the source in errors.
    pub fn validate(&self, origin: &str) -> Result<()> {
        let bad = |field: &'static str, reason: String| {
            Err(ModelError::InvalidConfig {
                origin: origin.to_owned(),
                field,
                reason,
            })
        };
        let positive = [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("n_layers", self.n_layers),
            ("n_heads", self.n_heads),
            ("kv_lora_rank", self.kv_lora_rank),
            ("qk_nope_head_dim", self.qk_nope_head_dim),
            ("qk_rope_head_dim", self.qk_rope_head_dim),
            ("v_head_dim", self.v_head_dim),
            ("max_position_embeddings", self.max_position_embeddings),
        ];
        for (field, v) in positive {
            if v == 0 {
                return bad(field, "is 0".into());
            }
        }
        // Shapes are products of these sizes; they must not overflow anywhere.
        let shape_sizes = [
            self.qk_head_dim_checked()
                .and_then(|d| d.checked_mul(self.n_heads)),
            self.qk_nope_head_dim
                .checked_add(self.v_head_dim)
                .and_then(|d| d.checked_mul(self.n_heads)),
            self.kv_lora_rank.checked_add(self.qk_rope_head_dim),
            self.moe_intermediate_size
                .checked_mul(self.n_shared_experts),
        ];
        if shape_sizes.contains(&None) {
            return bad(
                "n_heads",
                "tensor sizes computed from the head dims overflow".into(),
            );
        }
        if self.q_lora_rank == Some(0) {
            return bad("q_lora_rank", "is 0 (use None for no query LoRA)".into());
        }
        if !self.qk_rope_head_dim.is_multiple_of(2) {
            return bad(
                "qk_rope_head_dim",
                format!("{} is odd; rope rotates pairs", self.qk_rope_head_dim),
            );
        }
        if self.first_k_dense_replace > self.n_layers {
            return bad(
                "first_k_dense_replace",
                format!(
                    "{} exceeds the {} layers",
                    self.first_k_dense_replace, self.n_layers
                ),
            );
        }
        let has_dense = self.first_k_dense_replace > 0 || self.n_routed_experts == 0;
        if has_dense && self.intermediate_size == 0 {
            return bad(
                "intermediate_size",
                "is 0 but there are dense layers".into(),
            );
        }
        if self.n_routed_experts > 0 {
            self.validate_routing(&bad)?;
        }
        for (field, v) in [
            ("rms_norm_eps", self.rms_norm_eps),
            ("rope_theta", self.rope_theta),
        ] {
            if !(v.is_finite() && v > 0.0) {
                return bad(field, format!("{v} is not a positive number"));
            }
        }
        if !self.routed_scaling_factor.is_finite() {
            return bad(
                "routed_scaling_factor",
                format!("{} is not finite", self.routed_scaling_factor),
            );
        }
        if let Some(y) = &self.rope_scaling {
            if !(y.factor.is_finite() && y.factor > 0.0) {
                return bad(
                    "rope_scaling.factor",
                    format!("{} is not a positive number", y.factor),
                );
            }
            if y.original_max_position_embeddings == 0 {
                return bad(
                    "rope_scaling.original_max_position_embeddings",
                    "is 0".into(),
                );
            }
            let finite = [y.beta_fast, y.beta_slow, y.mscale, y.mscale_all_dim];
            if finite.iter().any(|v| !v.is_finite()) {
                return bad("rope_scaling", format!("non-finite parameter in {y:?}"));
            }
        }
        Ok(())
    }

    fn validate_routing(&self, bad: &dyn Fn(&'static str, String) -> Result<()>) -> Result<()> {
        if self.moe_intermediate_size == 0 {
            return bad(
                "moe_intermediate_size",
                "is 0 but there are routed experts".into(),
            );
        }
        if self.experts_per_tok == 0 || self.experts_per_tok > self.n_routed_experts {
            return bad(
                "experts_per_tok",
                format!(
                    "{} is not in 1..={}",
                    self.experts_per_tok, self.n_routed_experts
                ),
            );
        }
        if self.n_group == 0 || !self.n_routed_experts.is_multiple_of(self.n_group) {
            return bad(
                "n_group",
                format!(
                    "{} does not divide the {} routed experts",
                    self.n_group, self.n_routed_experts
                ),
            );
        }
        if self.topk_group == 0 || self.topk_group > self.n_group {
            return bad(
                "topk_group",
                format!("{} is not in 1..={}", self.topk_group, self.n_group),
            );
        }
        let grouped = matches!(
            self.topk_method,
            TopkMethod::GroupLimitedGreedy | TopkMethod::NoauxTc
        );
        let reachable = self.topk_group * (self.n_routed_experts / self.n_group);
        if grouped && self.experts_per_tok > reachable {
            return bad(
                "experts_per_tok",
                format!(
                    "{} exceeds the {reachable} experts of the {} kept groups",
                    self.experts_per_tok, self.topk_group
                ),
            );
        }
        Ok(())
    }
}
