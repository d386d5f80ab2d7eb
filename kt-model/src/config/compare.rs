//! Field-by-field agreement of the GGUF's hyper-parameters with `config.json`.
//!
//! Floats agree within a relative 1e-6: the GGUF holds the f32 rounding of the same
//! decimal the JSON holds (so most compare exactly once both are f32), and
//! `mscale_all_dim` is recovered from `0.1 * mscale_all_dim` rounded to f32, a few f32
//! ulps (~1e-7 each) away at most.

use std::fmt::Debug;

use super::from_gguf::FromGguf;
use crate::config::{DeepSeekConfig, YarnScaling};
use crate::error::{ModelError, Result};

const FLOAT_REL_TOL: f32 = 1e-6;

pub(crate) fn reconcile(from: FromGguf, hf: DeepSeekConfig) -> Result<DeepSeekConfig> {
    let g = &from.config;
    let stated = |field: &str| !from.defaulted.contains(&field);
    let mut out = g.clone();

    macro_rules! exact {
        ($($field:ident),* $(,)?) => {$(
            if stated(stringify!($field)) {
                agree(stringify!($field), &g.$field, &hf.$field, g.$field == hf.$field)?;
            } else {
                out.$field = hf.$field.clone();
            }
        )*};
    }
    macro_rules! float {
        ($($field:ident),* $(,)?) => {$(
            if stated(stringify!($field)) {
                agree(stringify!($field), &g.$field, &hf.$field, close(g.$field, hf.$field))?;
            } else {
                out.$field = hf.$field;
            }
        )*};
    }
    exact!(
        vocab_size,
        hidden_size,
        n_layers,
        n_heads,
        q_lora_rank,
        kv_lora_rank,
        qk_nope_head_dim,
        qk_rope_head_dim,
        v_head_dim,
        intermediate_size,
        moe_intermediate_size,
        n_routed_experts,
        n_shared_experts,
        experts_per_tok,
        first_k_dense_replace,
        n_group,
        topk_group,
        norm_topk_prob,
        scoring,
        topk_method,
        max_position_embeddings,
        bos_token_id,
        eos_token_id,
    );
    float!(routed_scaling_factor, rms_norm_eps, rope_theta);

    out.rope_scaling = match (&g.rope_scaling, &hf.rope_scaling) {
        (None, None) => None,
        (Some(a), Some(b)) => Some(yarn(a, b, &stated)?),
        (a, b) => {
            agree("rope_scaling", a, b, false)?;
            None
        }
    };
    out.validate("GGUF + config.json")?;
    Ok(out)
}

fn yarn(g: &YarnScaling, hf: &YarnScaling, stated: &dyn Fn(&str) -> bool) -> Result<YarnScaling> {
    let mut out = *g;
    if g.original_max_position_embeddings != hf.original_max_position_embeddings {
        agree(
            "rope_scaling.original_max_position_embeddings",
            &g.original_max_position_embeddings,
            &hf.original_max_position_embeddings,
            false,
        )?;
    }
    let fields: [(&'static str, f32, f32, &mut f32); 5] = [
        ("rope_scaling.factor", g.factor, hf.factor, &mut out.factor),
        (
            "rope_scaling.beta_fast",
            g.beta_fast,
            hf.beta_fast,
            &mut out.beta_fast,
        ),
        (
            "rope_scaling.beta_slow",
            g.beta_slow,
            hf.beta_slow,
            &mut out.beta_slow,
        ),
        ("rope_scaling.mscale", g.mscale, hf.mscale, &mut out.mscale),
        (
            "rope_scaling.mscale_all_dim",
            g.mscale_all_dim,
            hf.mscale_all_dim,
            &mut out.mscale_all_dim,
        ),
    ];
    for (name, a, b, slot) in fields {
        if stated(name) {
            agree(name, &a, &b, close(a, b))?;
        } else {
            *slot = b;
        }
    }
    Ok(out)
}

fn close(a: f32, b: f32) -> bool {
    a == b || (a - b).abs() <= FLOAT_REL_TOL * a.abs().max(b.abs())
}

fn agree<T: Debug>(field: &'static str, gguf: &T, hf: &T, equal: bool) -> Result<()> {
    if equal {
        return Ok(());
    }
    Err(ModelError::ConfigMismatch {
        field,
        gguf: format!("{gguf:?}"),
        hf: format!("{hf:?}"),
    })
}
