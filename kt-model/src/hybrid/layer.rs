//! One decoder layer's GPU weights, loaded from the GGUF tensors in the placement's formats: norms
//! (f32), the query path and `kv_a` (one stacked matrix where they can), the per-head absorbed
//! key/value up-projections (bf16, laid out for the batched GEMM), the output projection, and the
//! dense MLP or the router (f32 or bf16 weights, f32 logits), its score bias and the shared
//! experts.

use half::bf16;
use kt_kernels::cuda::{DeviceBuf, GpuStream};
use kt_kernels::quant::QType;

use super::error::{HybridError, HybridResult};
use super::weights::{dequantize_rows, Formats, GpuLinear};
use crate::config::DeepSeekConfig;
use crate::deepseek::linear::{dequantize_vector, Linear};
use crate::gguf::Tensor;
use crate::placement::WeightFormat;
use crate::tensors::{Attention, DenseFfn, Ffn, KvUp, LayerTensors, QueryProj};

pub(crate) enum GpuQuery {
    Direct(GpuLinear),
    LoRA {
        a: GpuLinear,
        a_norm: DeviceBuf<f32>,
        b: GpuLinear,
    },
}

/// The projections of the normalized hidden state: the queries and the compressed kv.
#[allow(clippy::large_enum_variant)] // one per layer: its size does not matter
pub(crate) enum GpuQkv {
    /// q_proj and kv_a_mqa (same input, same format, no query LoRA) stacked into one GEMV:
    /// each token's output row is `[q | kv]`.
    Stacked(GpuLinear),
    /// The query LoRA's `q_a` and `kv_a_mqa` (same input, same format) stacked into one
    /// GEMV, each token's output row `[q_a | kv]` (`a_norm.len()` + rank + rope wide); then
    /// the norm of the `q_a` part and `b`. One kernel boundary less on decode's chain.
    StackedLoRA {
        a_kv: GpuLinear,
        a_norm: DeviceBuf<f32>,
        b: GpuLinear,
    },
    Separate {
        q: GpuQuery,
        kv_a: GpuLinear,
    },
}

pub(crate) struct GpuAttention {
    pub qkv: GpuQkv,
    pub kv_a_norm: DeviceBuf<f32>,
    /// Per head `W_uk^T` `[rank, nope]` (what `attn_k_b` stores), heads one after the other.
    pub k_b: DeviceBuf<bf16>,
    /// Per head `W_uv` `[v, rank]`, heads one after the other.
    pub v_b: DeviceBuf<bf16>,
    pub output: GpuLinear,
}

/// A SwiGLU MLP: gate and up stacked into one matrix (gate rows first), then down.
pub(crate) struct GpuMlp {
    pub gate_up: GpuLinear,
    pub down: GpuLinear,
}

impl GpuMlp {
    pub fn width(&self) -> usize {
        self.down.k()
    }
}

/// The router's weights `[n_experts, hidden]`: f32 (multiplied with the f32 normalized
/// hidden state) or bf16 (with the bf16 one); logits are f32 either way.
pub(crate) enum GpuRouter {
    F32(DeviceBuf<f32>),
    Bf16(DeviceBuf<bf16>),
}

pub(crate) enum GpuFfn {
    Dense(GpuMlp),
    Moe {
        router: GpuRouter,
        bias: Option<DeviceBuf<f32>>,
        shared: Option<GpuMlp>,
    },
}

pub(crate) struct GpuLayer {
    pub attn_norm: DeviceBuf<f32>,
    pub attn: GpuAttention,
    pub ffn_norm: DeviceBuf<f32>,
    pub ffn: GpuFfn,
}

fn vector(s: &GpuStream, t: &Tensor<'_>) -> HybridResult<DeviceBuf<f32>> {
    Ok(s.upload(&dequantize_vector(t)?)?)
}

fn linear(s: &GpuStream, f: &Formats<'_>, t: &Tensor<'_>) -> HybridResult<GpuLinear> {
    GpuLinear::load(s, &[Linear::from_2d(t)?], f.of_tensor(t.name)?, t.name)
}

fn mlp(s: &GpuStream, f: &Formats<'_>, t: &DenseFfn<'_>) -> HybridResult<GpuMlp> {
    let parts = [Linear::from_2d(&t.gate)?, Linear::from_2d(&t.up)?];
    let (fg, fu) = (f.of_tensor(t.gate.name)?, f.of_tensor(t.up.name)?);
    if fg != fu {
        return Err(HybridError::Unsupported(format!(
            "{} ({fg}) and {} ({fu}) run as one stacked GEMM and need one format",
            t.gate.name, t.up.name
        )));
    }
    Ok(GpuMlp {
        gate_up: GpuLinear::load(s, &parts, fg, t.gate.name)?,
        down: linear(s, f, &t.down)?,
    })
}

fn bf16_of(w: &[f32]) -> Vec<bf16> {
    w.iter().map(|&v| bf16::from_f32(v)).collect()
}

fn require_bf16(f: &Formats<'_>, t: &Tensor<'_>) -> HybridResult<()> {
    match f.of_tensor(t.name)? {
        WeightFormat::Ggml(QType::BF16) => Ok(()),
        other => Err(HybridError::Unsupported(format!(
            "{}: format {other}; the absorbed MLA up-projections run in bf16 only",
            t.name
        ))),
    }
}

/// `W_uk^T` per head `[rank, nope]` and `W_uv` per head `[v, rank]`, bf16, from either GGUF
/// layout (split `attn_k_b` / `attn_v_b`, or the fused `attn_kv_b` transposed here).
fn kv_up(
    s: &GpuStream,
    f: &Formats<'_>,
    kv: &KvUp<'_>,
    c: &DeepSeekConfig,
) -> HybridResult<(DeviceBuf<bf16>, DeviceBuf<bf16>)> {
    let (h, nope, rank, v) = (c.n_heads, c.qk_nope_head_dim, c.kv_lora_rank, c.v_head_dim);
    let whole = |t: &Tensor<'_>, rows: usize, cols: usize| -> HybridResult<Vec<f32>> {
        let lin = Linear {
            name: t.name,
            qtype: t.qtype,
            rows,
            cols,
            data: t.data,
        };
        dequantize_rows(&[lin])
    };
    match kv {
        KvUp::Split { k_b, v_b } => {
            require_bf16(f, k_b)?;
            require_bf16(f, v_b)?;
            let kb = whole(k_b, h * rank, nope)?;
            let vb = whole(v_b, h * v, rank)?;
            Ok((s.upload(&bf16_of(&kb))?, s.upload(&bf16_of(&vb))?))
        }
        KvUp::Fused { kv_b } => {
            require_bf16(f, kv_b)?;
            // per head: nope rows of W_uk [nope, rank], then v rows of W_uv [v, rank]
            let w = whole(kv_b, h * (nope + v), rank)?;
            let mut kb = vec![0.0f32; h * rank * nope];
            let mut vb = Vec::with_capacity(h * v * rank);
            for hd in 0..h {
                let base = hd * (nope + v) * rank;
                for i in 0..nope {
                    for r in 0..rank {
                        kb[(hd * rank + r) * nope + i] = w[base + i * rank + r];
                    }
                }
                vb.extend_from_slice(&w[base + nope * rank..base + (nope + v) * rank]);
            }
            Ok((s.upload(&bf16_of(&kb))?, s.upload(&bf16_of(&vb))?))
        }
    }
}

fn attention(
    s: &GpuStream,
    f: &Formats<'_>,
    t: &Attention<'_>,
    c: &DeepSeekConfig,
) -> HybridResult<GpuAttention> {
    let kv_a = &t.kv_a_mqa;
    let qkv = match &t.q {
        // one GEMV instead of two on decode's chain (the rows and their int4 groups are
        // those of the separate matrices)
        QueryProj::Direct { q } if f.of_tensor(q.name)? == f.of_tensor(kv_a.name)? => {
            let parts = [Linear::from_2d(q)?, Linear::from_2d(kv_a)?];
            GpuQkv::Stacked(GpuLinear::load(s, &parts, f.of_tensor(q.name)?, q.name)?)
        }
        QueryProj::Direct { q } => GpuQkv::Separate {
            q: GpuQuery::Direct(linear(s, f, q)?),
            kv_a: linear(s, f, kv_a)?,
        },
        QueryProj::LoRA { a, a_norm, b } if f.of_tensor(a.name)? == f.of_tensor(kv_a.name)? => {
            let parts = [Linear::from_2d(a)?, Linear::from_2d(kv_a)?];
            GpuQkv::StackedLoRA {
                a_kv: GpuLinear::load(s, &parts, f.of_tensor(a.name)?, a.name)?,
                a_norm: vector(s, a_norm)?,
                b: linear(s, f, b)?,
            }
        }
        QueryProj::LoRA { a, a_norm, b } => GpuQkv::Separate {
            q: GpuQuery::LoRA {
                a: linear(s, f, a)?,
                a_norm: vector(s, a_norm)?,
                b: linear(s, f, b)?,
            },
            kv_a: linear(s, f, kv_a)?,
        },
    };
    let (k_b, v_b) = kv_up(s, f, &t.kv_b, c)?;
    Ok(GpuAttention {
        qkv,
        kv_a_norm: vector(s, &t.kv_a_norm)?,
        k_b,
        v_b,
        output: linear(s, f, &t.output)?,
    })
}

impl GpuLayer {
    /// Layer `li` of the model, in the formats `f` gives.
    pub fn load(
        s: &GpuStream,
        f: &Formats<'_>,
        t: &LayerTensors<'_>,
        c: &DeepSeekConfig,
        li: usize,
    ) -> HybridResult<GpuLayer> {
        let ffn = match &t.ffn {
            Ffn::Dense(d) => GpuFfn::Dense(mlp(s, f, d)?),
            Ffn::Moe(m) => {
                let w = dequantize_rows(&[Linear::from_2d(&m.gate_inp)?])?;
                let router = match f.of(&format!("blk.{li}.ffn_gate_inp"))? {
                    WeightFormat::Ggml(QType::F32) => GpuRouter::F32(s.upload(&w)?),
                    WeightFormat::Ggml(QType::BF16) => GpuRouter::Bf16(s.upload(&bf16_of(&w))?),
                    other => {
                        return Err(HybridError::Unsupported(format!(
                            "blk.{li}.ffn_gate_inp: router format {other} (f32 or bf16 on the GPU)"
                        )))
                    }
                };
                // The bias only steers noaux_tc's selection (as the CPU path).
                let bias = match (&m.exp_probs_b, c.topk_method) {
                    (Some(b), crate::config::TopkMethod::NoauxTc) => Some(vector(s, b)?),
                    _ => None,
                };
                GpuFfn::Moe {
                    router,
                    bias,
                    shared: m.shared.as_ref().map(|d| mlp(s, f, d)).transpose()?,
                }
            }
        };
        Ok(GpuLayer {
            attn_norm: vector(s, &t.attn_norm)?,
            attn: attention(s, f, &t.attn, c)?,
            ffn_norm: vector(s, &t.ffn_norm)?,
            ffn,
        })
    }
}
