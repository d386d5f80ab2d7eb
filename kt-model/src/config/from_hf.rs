//! Hyper-parameters from a Hugging Face `config.json` (`model_type` deepseek_v2 or
//! deepseek_v3).
//!
//! Rope settings come either as transformers 5's `rope_parameters` (with `rope_type`
//! and `rope_theta` inside) or as the Hub's `rope_scaling` (with `type`) plus a
//! top-level `rope_theta`. The sizes must be present; routing fields the older V2
//! configs may omit get the defaults of the model's transformers class.

use std::path::Path;

use serde_json::{Map, Value as Json};

use crate::config::{DeepSeekConfig, ScoringFunc, TopkMethod, YarnScaling};
use crate::error::{ModelError, Result};

pub(crate) fn read(path: &Path, json: &str) -> Result<DeepSeekConfig> {
    let root: Json = serde_json::from_str(json).map_err(|source| ModelError::Json {
        path: path.to_owned(),
        source,
    })?;
    let Some(obj) = root.as_object() else {
        return Err(field_err(path, "(root)", "is not a JSON object".into()));
    };
    let f = Fields {
        path,
        prefix: String::new(),
        obj,
    };

    let v3 = match f.str("model_type")? {
        "deepseek_v3" => true,
        "deepseek_v2" => false,
        other => {
            return Err(f.err(
                "model_type",
                format!("{other:?} is neither deepseek_v2 nor deepseek_v3"),
            ))
        }
    };
    let moe_layer_freq = f.opt_usize("moe_layer_freq")?.unwrap_or(1);
    if moe_layer_freq != 1 {
        return Err(f.err(
            "moe_layer_freq",
            format!("{moe_layer_freq} is not supported (only 1)"),
        ));
    }
    if !obj.contains_key("q_lora_rank") {
        return Err(f.err(
            "q_lora_rank",
            "is missing (null means no query LoRA)".into(),
        ));
    }
    let qk_nope_head_dim = f.usize("qk_nope_head_dim")?;
    let qk_rope_head_dim = f.usize("qk_rope_head_dim")?;
    if let Some(qk) = f.opt_usize("qk_head_dim")? {
        if Some(qk) != qk_nope_head_dim.checked_add(qk_rope_head_dim) {
            return Err(f.err(
                "qk_head_dim",
                format!("{qk} is not qk_nope_head_dim + qk_rope_head_dim = {qk_nope_head_dim} + {qk_rope_head_dim}"),
            ));
        }
    }

    let scoring = match f.opt_str("scoring_func")? {
        None if v3 => ScoringFunc::Sigmoid,
        None => ScoringFunc::Softmax,
        Some("softmax") => ScoringFunc::Softmax,
        Some("sigmoid") => ScoringFunc::Sigmoid,
        Some(other) => {
            return Err(f.err(
                "scoring_func",
                format!("{other:?} is neither softmax nor sigmoid"),
            ))
        }
    };
    let topk_method = match f.opt_str("topk_method")? {
        None if v3 => TopkMethod::NoauxTc,
        None => TopkMethod::Greedy,
        Some(name) => TopkMethod::from_name(name).ok_or_else(|| {
            f.err(
                "topk_method",
                format!("{name:?} is not greedy, group_limited_greedy or noaux_tc"),
            )
        })?,
    };
    let (rope_theta, rope_scaling) = rope(&f)?;

    Ok(DeepSeekConfig {
        vocab_size: f.usize("vocab_size")?,
        hidden_size: f.usize("hidden_size")?,
        n_layers: f.usize("num_hidden_layers")?,
        n_heads: f.usize("num_attention_heads")?,
        q_lora_rank: f.opt_usize("q_lora_rank")?.filter(|&r| r != 0),
        kv_lora_rank: f.usize("kv_lora_rank")?,
        qk_nope_head_dim,
        qk_rope_head_dim,
        v_head_dim: f.usize("v_head_dim")?,
        intermediate_size: f.usize("intermediate_size")?,
        moe_intermediate_size: f.usize("moe_intermediate_size")?,
        n_routed_experts: f.usize("n_routed_experts")?,
        n_shared_experts: f.opt_usize("n_shared_experts")?.unwrap_or(0),
        experts_per_tok: f.usize("num_experts_per_tok")?,
        first_k_dense_replace: f.usize("first_k_dense_replace")?,
        n_group: f.opt_usize("n_group")?.unwrap_or(1),
        topk_group: f.opt_usize("topk_group")?.unwrap_or(1),
        routed_scaling_factor: f.opt_f32("routed_scaling_factor")?.unwrap_or(if v3 {
            2.5
        } else {
            1.0
        }),
        norm_topk_prob: f.opt_bool("norm_topk_prob")?.unwrap_or(v3),
        scoring,
        topk_method,
        rms_norm_eps: f.f32("rms_norm_eps")?,
        rope_theta,
        rope_scaling,
        max_position_embeddings: f.usize("max_position_embeddings")?,
        bos_token_id: f.opt_token("bos_token_id")?,
        eos_token_id: f.opt_token("eos_token_id")?,
    })
}

/// (rope_theta, YaRN parameters) from `rope_parameters` or `rope_scaling`.
fn rope(f: &Fields) -> Result<(f32, Option<YarnScaling>)> {
    let section = ["rope_parameters", "rope_scaling"]
        .into_iter()
        .find_map(|name| f.get(name).map(|v| (name, v)));
    let Some((name, value)) = section else {
        return Ok((f.opt_f32("rope_theta")?.unwrap_or(10000.0), None));
    };
    let Some(obj) = value.as_object() else {
        return Err(f.err(name, "is not a JSON object".into()));
    };
    let r = Fields {
        path: f.path,
        prefix: format!("{name}."),
        obj,
    };
    let theta = match r.opt_f32("rope_theta")? {
        Some(t) => t,
        None => f.opt_f32("rope_theta")?.unwrap_or(10000.0),
    };
    let kind = match r.opt_str("rope_type")? {
        Some(k) => k,
        None => r.opt_str("type")?.unwrap_or("default"),
    };
    match kind {
        "default" => Ok((theta, None)),
        "yarn" => Ok((
            theta,
            Some(YarnScaling {
                factor: r.f32("factor")?,
                original_max_position_embeddings: r.usize("original_max_position_embeddings")?,
                beta_fast: r.opt_f32("beta_fast")?.unwrap_or(32.0),
                beta_slow: r.opt_f32("beta_slow")?.unwrap_or(1.0),
                mscale: r.opt_f32("mscale")?.unwrap_or(1.0),
                mscale_all_dim: r.opt_f32("mscale_all_dim")?.unwrap_or(0.0),
            }),
        )),
        other => Err(r.err(
            "rope_type",
            format!("{other:?} is not supported (only yarn or default)"),
        )),
    }
}

/// Typed access to the fields of one JSON object; `null` counts as absent.
struct Fields<'a> {
    path: &'a Path,
    prefix: String,
    obj: &'a Map<String, Json>,
}

impl Fields<'_> {
    fn get(&self, name: &str) -> Option<&Json> {
        self.obj.get(name).filter(|v| !v.is_null())
    }

    fn err(&self, name: &str, reason: String) -> ModelError {
        field_err(self.path, &format!("{}{name}", self.prefix), reason)
    }

    fn required<T>(&self, name: &str, v: Result<Option<T>>) -> Result<T> {
        v?.ok_or_else(|| self.err(name, "is missing".into()))
    }

    fn opt_usize(&self, name: &str) -> Result<Option<usize>> {
        self.get(name)
            .map(|v| {
                v.as_u64()
                    .and_then(|u| usize::try_from(u).ok())
                    .ok_or_else(|| self.err(name, format!("{v} is not a non-negative integer")))
            })
            .transpose()
    }

    fn usize(&self, name: &str) -> Result<usize> {
        self.required(name, self.opt_usize(name))
    }

    fn opt_f32(&self, name: &str) -> Result<Option<f32>> {
        self.get(name)
            .map(|v| {
                v.as_f64()
                    .map(|x| x as f32)
                    .ok_or_else(|| self.err(name, format!("{v} is not a number")))
            })
            .transpose()
    }

    fn f32(&self, name: &str) -> Result<f32> {
        self.required(name, self.opt_f32(name))
    }

    fn opt_bool(&self, name: &str) -> Result<Option<bool>> {
        self.get(name)
            .map(|v| {
                v.as_bool()
                    .ok_or_else(|| self.err(name, format!("{v} is not true or false")))
            })
            .transpose()
    }

    fn opt_str(&self, name: &str) -> Result<Option<&str>> {
        self.get(name)
            .map(|v| {
                v.as_str()
                    .ok_or_else(|| self.err(name, format!("{v} is not a string")))
            })
            .transpose()
    }

    fn str(&self, name: &str) -> Result<&str> {
        self.required(name, self.opt_str(name))
    }

    /// A token id, or the first of a list of them (some configs list several EOS ids).
    fn opt_token(&self, name: &str) -> Result<Option<u32>> {
        let Some(v) = self.get(name) else {
            return Ok(None);
        };
        let first = match v.as_array() {
            Some(list) => match list.first() {
                Some(x) => x,
                None => return Ok(None),
            },
            None => v,
        };
        first
            .as_u64()
            .and_then(|u| u32::try_from(u).ok())
            .map(Some)
            .ok_or_else(|| self.err(name, format!("{v} is not a token id")))
    }
}

fn field_err(path: &Path, field: &str, reason: String) -> ModelError {
    ModelError::HfConfig {
        path: path.to_owned(),
        field: field.to_owned(),
        reason,
    }
}
