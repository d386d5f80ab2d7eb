//! llama.cpp's DeepSeek2 tensor names mapped to typed per-layer handles, each checked
//! against the hyper-parameters. A handle is a [`Tensor`]: name, type, dims in ggml
//! order (`dims[0]` is the row length) and the memory-mapped bytes.
//!
//! Shapes (ggml order), with h = hidden, H = heads, r = rope dims, n = no-rope dims,
//! v = value dims, c = kv_lora_rank, q = q_lora_rank, E = routed experts, m = expert
//! width, s = shared-expert width (m * shared experts):
//!
//! | tensor | shape |
//! | --- | --- |
//! | `token_embd`, `output` | [h, vocab] |
//! | `attn_q` (no query LoRA) | [h, H*(n+r)] |
//! | `attn_q_a`, `attn_q_a_norm`, `attn_q_b` | [h, q], [q], [q, H*(n+r)] |
//! | `attn_kv_a_mqa`, `attn_kv_a_norm` | [h, c+r], [c] |
//! | `attn_kv_b` (older files) | [c, H*(n+v)] |
//! | `attn_k_b`, `attn_v_b` (newer files) | [n, c, H], [c, v, H] |
//! | `attn_output` | [H*v, h] |
//! | `ffn_gate`, `ffn_up`, `ffn_down` (dense) | [h, ff], [h, ff], [ff, h] |
//! | `ffn_gate_inp`, `exp_probs_b` | [h, E], [E] |
//! | `ffn_{gate,up}_exps`, `ffn_down_exps` | [h, m, E], [m, h, E] |
//! | `ffn_{gate,up}_shexp`, `ffn_down_shexp` | [h, s], [s, h] |

use crate::config::{DeepSeekConfig, TopkMethod};
use crate::error::{ModelError, Result};
use crate::gguf::{Gguf, Tensor};

/// All weights of a DeepSeek V2/V3 model.
#[derive(Debug, Clone)]
pub struct ModelTensors<'a> {
    pub token_embd: Tensor<'a>,
    pub output_norm: Tensor<'a>,
    pub output: Tensor<'a>,
    pub layers: Vec<LayerTensors<'a>>,
}

#[derive(Debug, Clone)]
pub struct LayerTensors<'a> {
    pub attn_norm: Tensor<'a>,
    pub attn: Attention<'a>,
    pub ffn_norm: Tensor<'a>,
    pub ffn: Ffn<'a>,
}

/// Multi-head latent attention.
#[derive(Debug, Clone)]
pub struct Attention<'a> {
    pub q: QueryProj<'a>,
    /// Hidden → compressed kv (c) and the shared rope key (r).
    pub kv_a_mqa: Tensor<'a>,
    pub kv_a_norm: Tensor<'a>,
    pub kv_b: KvUp<'a>,
    pub output: Tensor<'a>,
}

#[derive(Debug, Clone)]
pub enum QueryProj<'a> {
    /// One projection (`attn_q`, V2-Lite).
    Direct { q: Tensor<'a> },
    /// Low-rank: `attn_q_a`, its norm `attn_q_a_norm`, then `attn_q_b`.
    LoRA {
        a: Tensor<'a>,
        a_norm: Tensor<'a>,
        b: Tensor<'a>,
    },
}

/// The up-projection of the compressed kv to per-head keys (no-rope part) and values.
#[derive(Debug, Clone)]
pub enum KvUp<'a> {
    /// Older files: `attn_kv_b` [c, H*(n+v)]; head h's rows are its n key rows then
    /// its v value rows.
    Fused { kv_b: Tensor<'a> },
    /// Newer files: `attn_k_b` [n, c, H] (per head, the key rows transposed: c rows
    /// of n) and `attn_v_b` [c, v, H] (per head, v rows of c).
    Split { k_b: Tensor<'a>, v_b: Tensor<'a> },
}

// One per layer: the size difference of the variants does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
pub enum Ffn<'a> {
    Dense(DenseFfn<'a>),
    Moe(MoeFfn<'a>),
}

/// A SwiGLU feed-forward block: `down(silu(gate x) * up x)`.
#[derive(Debug, Clone)]
pub struct DenseFfn<'a> {
    pub gate: Tensor<'a>,
    pub up: Tensor<'a>,
    pub down: Tensor<'a>,
}

#[derive(Debug, Clone)]
pub struct MoeFfn<'a> {
    /// Router weights [h, E].
    pub gate_inp: Tensor<'a>,
    /// V3's score-correction bias [E] (present for `noaux_tc`).
    pub exp_probs_b: Option<Tensor<'a>>,
    /// Stacked experts, expert index in the last dim.
    pub gate_exps: Tensor<'a>,
    pub up_exps: Tensor<'a>,
    pub down_exps: Tensor<'a>,
    /// The shared experts as one dense block (`None` when there are none).
    pub shared: Option<DenseFfn<'a>>,
}

impl<'a> ModelTensors<'a> {
    /// Looks up every tensor the config calls for and checks its shape; a missing
    /// tensor or a wrong shape is an error naming it.
    pub fn from_gguf(gguf: &'a Gguf, config: &DeepSeekConfig) -> Result<Self> {
        // The shapes below are products of config sizes: validation rules out overflow.
        config.validate("config given for the tensors")?;
        let l = Lookup { gguf };
        let h = config.hidden_size;
        let layers = (0..config.n_layers)
            .map(|i| layer(&l, config, i))
            .collect::<Result<Vec<_>>>()?;
        Ok(ModelTensors {
            token_embd: l.get("token_embd.weight", &[h, config.vocab_size])?,
            output_norm: l.get("output_norm.weight", &[h])?,
            output: l.get("output.weight", &[h, config.vocab_size])?,
            layers,
        })
    }
}

fn layer<'a>(l: &Lookup<'a>, c: &DeepSeekConfig, i: usize) -> Result<LayerTensors<'a>> {
    let h = c.hidden_size;
    let name = |t: &str| format!("blk.{i}.{t}");
    Ok(LayerTensors {
        attn_norm: l.get(&name("attn_norm.weight"), &[h])?,
        attn: attention(l, c, i)?,
        ffn_norm: l.get(&name("ffn_norm.weight"), &[h])?,
        ffn: if c.is_moe_layer(i) {
            Ffn::Moe(moe(l, c, i)?)
        } else {
            Ffn::Dense(dense(l, i, "", h, c.intermediate_size)?)
        },
    })
}

fn attention<'a>(l: &Lookup<'a>, c: &DeepSeekConfig, i: usize) -> Result<Attention<'a>> {
    let name = |t: &str| format!("blk.{i}.{t}.weight");
    let (h, heads) = (c.hidden_size, c.n_heads);
    let (nope, rope, v, kv) = (
        c.qk_nope_head_dim,
        c.qk_rope_head_dim,
        c.v_head_dim,
        c.kv_lora_rank,
    );
    let q_out = heads * (nope + rope);
    let q = match c.q_lora_rank {
        None => QueryProj::Direct {
            q: l.get(&name("attn_q"), &[h, q_out])?,
        },
        Some(r) => QueryProj::LoRA {
            a: l.get(&name("attn_q_a"), &[h, r])?,
            a_norm: l.get(&name("attn_q_a_norm"), &[r])?,
            b: l.get(&name("attn_q_b"), &[r, q_out])?,
        },
    };
    let (k_b, v_b) = (name("attn_k_b"), name("attn_v_b"));
    let kv_b = match (l.has(&k_b), l.has(&v_b)) {
        (true, true) => KvUp::Split {
            k_b: l.get(&k_b, &[nope, kv, heads])?,
            v_b: l.get(&v_b, &[kv, v, heads])?,
        },
        (false, false) => KvUp::Fused {
            kv_b: l.get(&name("attn_kv_b"), &[kv, heads * (nope + v)])?,
        },
        (has_k, _) => {
            let (have, missing) = if has_k { (k_b, v_b) } else { (v_b, k_b) };
            return Err(ModelError::TensorLayout {
                path: l.gguf.path().to_owned(),
                layer: i,
                reason: format!("'{have}' is present but '{missing}' is missing"),
            });
        }
    };
    Ok(Attention {
        q,
        kv_a_mqa: l.get(&name("attn_kv_a_mqa"), &[h, kv + rope])?,
        kv_a_norm: l.get(&name("attn_kv_a_norm"), &[kv])?,
        kv_b,
        output: l.get(&name("attn_output"), &[heads * v, h])?,
    })
}

/// `ffn_{gate,up,down}{suffix}` of layer `i` with width `ff`.
fn dense<'a>(l: &Lookup<'a>, i: usize, suffix: &str, h: usize, ff: usize) -> Result<DenseFfn<'a>> {
    let name = |t: &str| format!("blk.{i}.ffn_{t}{suffix}.weight");
    Ok(DenseFfn {
        gate: l.get(&name("gate"), &[h, ff])?,
        up: l.get(&name("up"), &[h, ff])?,
        down: l.get(&name("down"), &[ff, h])?,
    })
}

fn moe<'a>(l: &Lookup<'a>, c: &DeepSeekConfig, i: usize) -> Result<MoeFfn<'a>> {
    let (h, e, m) = (c.hidden_size, c.n_routed_experts, c.moe_intermediate_size);
    let name = |t: &str| format!("blk.{i}.{t}");
    // The bias is `exp_probs_b.bias` in llama.cpp's converter output; accept the bare
    // name too.
    let bias_names = [name("exp_probs_b.bias"), name("exp_probs_b")];
    let exp_probs_b = match bias_names.iter().find(|n| l.has(n)) {
        Some(n) => Some(l.get(n, &[e])?),
        None if c.topk_method == TopkMethod::NoauxTc => {
            return Err(ModelError::MissingTensor {
                path: l.gguf.path().to_owned(),
                tensor: format!("{} (noaux_tc routing needs the score bias)", bias_names[0]),
            })
        }
        None => None,
    };
    let shared = if c.n_shared_experts > 0 {
        Some(dense(l, i, "_shexp", h, c.shared_intermediate_size())?)
    } else {
        None
    };
    Ok(MoeFfn {
        gate_inp: l.get(&name("ffn_gate_inp.weight"), &[h, e])?,
        exp_probs_b,
        gate_exps: l.get(&name("ffn_gate_exps.weight"), &[h, m, e])?,
        up_exps: l.get(&name("ffn_up_exps.weight"), &[h, m, e])?,
        down_exps: l.get(&name("ffn_down_exps.weight"), &[m, h, e])?,
        shared,
    })
}

struct Lookup<'a> {
    gguf: &'a Gguf,
}

impl<'a> Lookup<'a> {
    fn has(&self, name: &str) -> bool {
        self.gguf.tensor_info(name).is_some()
    }

    /// The tensor, checked to have exactly `expected` dims (ggml order).
    fn get(&self, name: &str, expected: &[usize]) -> Result<Tensor<'a>> {
        let t = self.gguf.require_tensor(name)?;
        if t.dims != expected {
            return Err(ModelError::TensorShape {
                path: self.gguf.path().to_owned(),
                tensor: name.to_owned(),
                found: t.dims.to_vec(),
                expected: expected.to_vec(),
            });
        }
        Ok(t)
    }
}
