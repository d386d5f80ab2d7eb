//! Hyper-parameters from llama.cpp's `deepseek2.*` GGUF metadata.
//!
//! llama.cpp's MLA layout shows up in the key/value lengths: files with the split
//! `attn_k_b`/`attn_v_b` tensors store the absorbed sizes in `attention.key_length`
//! (`kv_lora_rank + rope`) and `attention.value_length` (`kv_lora_rank`) and the
//! per-head sizes in `attention.key_length_mla` (`nope + rope`) and
//! `value_length_mla`; older files store the per-head sizes in `key_length` /
//! `value_length` and have no `_mla` keys.
//!
//! Some values have no key, or only in newer files; they get llama.cpp's defaults and
//! are recorded as defaulted, so that a `config.json` given too decides them:
//! `topk_method` (inferred: sigmoid gating means V3's `noaux_tc`, more than one group
//! `group_limited_greedy`, else `greedy`) and `mscale` (llama.cpp keeps only
//! `mscale_all_dim`, as `yarn_log_multiplier = 0.1 * mscale_all_dim`, and treats
//! `mscale` as equal to it).

use crate::config::{DeepSeekConfig, ScoringFunc, TopkMethod, YarnScaling};
use crate::error::{ModelError, Result};
use crate::gguf::{Gguf, Metadata};

pub const ARCH: &str = "deepseek2";

/// The config and the fields the file did not state (see the module docs).
pub(crate) struct FromGguf {
    pub config: DeepSeekConfig,
    pub defaulted: Vec<&'static str>,
}

pub(crate) fn read(gguf: &Gguf) -> Result<FromGguf> {
    let m = gguf.metadata();
    let arch = m.get_str("general.architecture")?;
    if arch != ARCH {
        return Err(bad(
            m,
            "general.architecture",
            format!("is {arch:?}, expected {ARCH:?}"),
        ));
    }
    let k = |name: &str| format!("{ARCH}.{name}");
    let mut d = Defaulted(Vec::new());

    let n_heads = m.get_usize(&k("attention.head_count"))?;
    let kv_lora_rank = m.get_usize(&k("attention.kv_lora_rank"))?;
    let rope = m.get_usize(&k("rope.dimension_count"))?;
    let (qk_nope_head_dim, v_head_dim) = mla_head_dims(m, kv_lora_rank, rope)?;
    let q_lora_rank = m
        .opt_usize(&k("attention.q_lora_rank"))?
        .filter(|&r| r != 0);

    let n_routed_experts = m.get_usize(&k("expert_count"))?;
    let scoring = match m.opt_u32(&k("expert_gating_func"))? {
        None => d.or(None, ScoringFunc::Softmax, "scoring"),
        Some(1) => ScoringFunc::Softmax,
        Some(2) => ScoringFunc::Sigmoid,
        Some(v) => {
            return Err(bad(
                m,
                &k("expert_gating_func"),
                format!("{v} is neither 1 (softmax) nor 2 (sigmoid)"),
            ))
        }
    };
    let n_group = d.or(m.opt_usize(&k("expert_group_count"))?, 1, "n_group");
    let topk_group = d.or(m.opt_usize(&k("expert_group_used_count"))?, 1, "topk_group");
    d.0.push("topk_method");
    let topk_method = match scoring {
        ScoringFunc::Sigmoid => TopkMethod::NoauxTc,
        ScoringFunc::Softmax if n_group > 1 => TopkMethod::GroupLimitedGreedy,
        ScoringFunc::Softmax => TopkMethod::Greedy,
    };
    let routed_scaling_factor = d.or(
        m.opt_f32(&k("expert_weights_scale"))?,
        1.0,
        "routed_scaling_factor",
    );
    let norm_topk_prob = d.or(
        m.opt_bool(&k("expert_weights_norm"))?,
        false,
        "norm_topk_prob",
    );
    let rope_theta = d.or(m.opt_f32(&k("rope.freq_base"))?, 10000.0, "rope_theta");
    let rope_scaling = yarn(m, &mut d)?;
    let bos_token_id = m.opt_u32("tokenizer.ggml.bos_token_id")?;
    let eos_token_id = m.opt_u32("tokenizer.ggml.eos_token_id")?;
    if bos_token_id.is_none() {
        d.0.push("bos_token_id");
    }
    if eos_token_id.is_none() {
        d.0.push("eos_token_id");
    }

    let config = DeepSeekConfig {
        vocab_size: vocab_size(gguf)?,
        hidden_size: m.get_usize(&k("embedding_length"))?,
        n_layers: m.get_usize(&k("block_count"))?,
        n_heads,
        q_lora_rank,
        kv_lora_rank,
        qk_nope_head_dim,
        qk_rope_head_dim: rope,
        v_head_dim,
        intermediate_size: m.get_usize(&k("feed_forward_length"))?,
        moe_intermediate_size: m.get_usize(&k("expert_feed_forward_length"))?,
        n_routed_experts,
        n_shared_experts: m.get_usize(&k("expert_shared_count"))?,
        experts_per_tok: m.get_usize(&k("expert_used_count"))?,
        first_k_dense_replace: m.get_usize(&k("leading_dense_block_count"))?,
        n_group,
        topk_group,
        routed_scaling_factor,
        norm_topk_prob,
        scoring,
        topk_method,
        rms_norm_eps: m.get_f32(&k("attention.layer_norm_rms_epsilon"))?,
        rope_theta,
        rope_scaling,
        max_position_embeddings: m.get_usize(&k("context_length"))?,
        bos_token_id,
        eos_token_id,
    };
    Ok(FromGguf {
        config,
        defaulted: d.0,
    })
}

/// Names of the fields that got a default.
struct Defaulted(Vec<&'static str>);

impl Defaulted {
    fn or<T>(&mut self, v: Option<T>, default: T, field: &'static str) -> T {
        v.unwrap_or_else(|| {
            self.0.push(field);
            default
        })
    }
}

/// (qk_nope_head_dim, v_head_dim) from either key layout (see the module docs).
fn mla_head_dims(m: &Metadata, kv_lora_rank: usize, rope: usize) -> Result<(usize, usize)> {
    let key_length_key = format!("{ARCH}.attention.key_length");
    let value_length_key = format!("{ARCH}.attention.value_length");
    let key_length = m.get_usize(&key_length_key)?;
    let value_length = m.get_usize(&value_length_key)?;
    let key_mla_key = format!("{ARCH}.attention.key_length_mla");
    let (qk_key, qk_head, v_head) = match m.opt_usize(&key_mla_key)? {
        Some(key_mla) => {
            let v_head = m.get_usize(&format!("{ARCH}.attention.value_length_mla"))?;
            // The absorbed sizes must be those of the latent cache.
            if Some(key_length) != kv_lora_rank.checked_add(rope) {
                return Err(bad(
                    m,
                    &key_length_key,
                    format!("{key_length} is not kv_lora_rank + rope = {kv_lora_rank} + {rope} (MLA layout)"),
                ));
            }
            if value_length != kv_lora_rank {
                return Err(bad(
                    m,
                    &value_length_key,
                    format!("{value_length} is not kv_lora_rank = {kv_lora_rank} (MLA layout)"),
                ));
            }
            (key_mla_key, key_mla, v_head)
        }
        None => (key_length_key, key_length, value_length),
    };
    if qk_head <= rope {
        return Err(bad(
            m,
            &qk_key,
            format!("{qk_head} leaves no room for a no-rope part beside the {rope} rope dims"),
        ));
    }
    Ok((qk_head - rope, v_head))
}

/// YaRN parameters when `rope.scaling.type` is "yarn"; `None` for no scaling.
fn yarn(m: &Metadata, d: &mut Defaulted) -> Result<Option<YarnScaling>> {
    let k = |name: &str| format!("{ARCH}.rope.scaling.{name}");
    match m.opt_str(&k("type"))? {
        None | Some("none") => return Ok(None),
        Some("yarn") => {}
        Some(other) => {
            return Err(bad(
                m,
                &k("type"),
                format!("{other:?} is not supported (only yarn or none)"),
            ))
        }
    }
    let beta_fast = d.or(
        m.opt_f32(&k("yarn_beta_fast"))?,
        32.0,
        "rope_scaling.beta_fast",
    );
    let beta_slow = d.or(
        m.opt_f32(&k("yarn_beta_slow"))?,
        1.0,
        "rope_scaling.beta_slow",
    );
    // yarn_log_multiplier = 0.1 * mscale_all_dim; absent means 0 (no attention scaling).
    let log_mul = d.or(
        m.opt_f32(&k("yarn_log_multiplier"))?,
        0.0,
        "rope_scaling.mscale_all_dim",
    );
    let mscale_all_dim = (f64::from(log_mul) / 0.1) as f32;
    d.0.push("rope_scaling.mscale");
    Ok(Some(YarnScaling {
        factor: m.get_f32(&k("factor"))?,
        original_max_position_embeddings: m.get_usize(&k("original_context_length"))?,
        beta_fast,
        beta_slow,
        mscale: mscale_all_dim,
        mscale_all_dim,
    }))
}

/// `deepseek2.vocab_size`, else the token list's length, else `token_embd`'s rows.
fn vocab_size(gguf: &Gguf) -> Result<usize> {
    let m = gguf.metadata();
    if let Some(v) = m.opt_usize(&format!("{ARCH}.vocab_size"))? {
        return Ok(v);
    }
    if let Some(tokens) = m.opt_array("tokenizer.ggml.tokens")? {
        return Ok(tokens.len());
    }
    match gguf.tensor_info("token_embd.weight") {
        Some(t) if t.dims().len() == 2 => Ok(t.dims()[1]),
        _ => Err(ModelError::MissingKey {
            path: m.path().to_owned(),
            key: format!("{ARCH}.vocab_size"),
        }),
    }
}

fn bad(m: &Metadata, key: &str, reason: String) -> ModelError {
    ModelError::BadValue {
        path: m.path().to_owned(),
        key: key.to_owned(),
        reason,
    }
}
