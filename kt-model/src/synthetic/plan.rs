//! Which tensors a synthetic model has (llama.cpp's `deepseek2` names, the newer split
//! `attn_k_b` / `attn_v_b` layout), in which format, and how their values are drawn.
//!
//! Formats follow llama.cpp's Q4_K_M recipe as it applies to DeepSeek: Q4_K by default;
//! `output` in Q6_K; `ffn_down*` in Q6_K on the layers llama.cpp gives more bits (the
//! first and last eighth of the layers and every third one between), else Q4_K; norms,
//! the router and the score bias in F32. A row length that is not a whole number of
//! 256-element K-quant blocks falls back as llama.cpp does: Q4_K to Q5_0, Q6_K to Q8_0
//! (`attn_k_b`'s 128-wide rows, V2-Lite's 1408-wide expert and 10944-wide dense down
//! rows).
//!
//! Values are normal with a standard deviation of `gain / sqrt(fan_in)` so that every
//! projection of a unit-RMS activation gives unit-RMS outputs: pre-norm blocks then add
//! O(1) terms to the residual stream, attention scores stay O(1) after the softmax
//! scale, and router logits are O(1) so that top-k routing varies from token to token.
//! Norm weights are uniform in [0.8, 1.2] (never all ones, never zero).

use kt_kernels::quant::QType;

use crate::config::{DeepSeekConfig, TopkMethod};

/// How a tensor's values are drawn.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Init {
    /// `std * N(0, 1)`, quantized rows copied from a pool (see `pool.rs`).
    Normal { std: f32 },
    /// Uniform in [lo, hi), written directly as F32 (norm weights, score biases).
    Uniform { lo: f32, hi: f32 },
    /// `std * N(0, 1)` written directly as F32 (the router).
    NormalF32 { std: f32 },
}

/// One tensor of the file: name, format, ggml dims (`dims[0]` = row length), values.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct TensorPlan {
    pub name: String,
    pub qtype: QType,
    pub dims: Vec<usize>,
    pub init: Init,
}

impl TensorPlan {
    pub fn row_len(&self) -> usize {
        self.dims[0]
    }

    pub fn n_rows(&self) -> usize {
        self.dims[1..].iter().product()
    }
}

/// llama.cpp's `use_more_bits`: the layers whose `ffn_down` gets Q6_K in Q4_K_M.
fn more_bits(layer: usize, n_layers: usize) -> bool {
    let eighth = n_layers / 8;
    layer < eighth || layer >= 7 * n_layers / 8 || (layer - eighth) % 3 == 2
}

/// `want`, or its llama.cpp fallback when `row_len` is no whole number of its blocks.
pub(crate) fn with_fallback(want: QType, row_len: usize) -> QType {
    if row_len.is_multiple_of(want.block_elems()) {
        return want;
    }
    match want {
        QType::Q6_K | QType::Q5_K => QType::Q8_0,
        _ => QType::Q5_0,
    }
}

/// Every tensor of `c`, in file order: `token_embd`, the layers, `output_norm`, `output`.
pub(crate) fn plan(c: &DeepSeekConfig) -> Vec<TensorPlan> {
    let mut p = Planner(Vec::new());
    let h = c.hidden_size;
    p.quant("token_embd.weight", QType::Q4_K, &[h, c.vocab_size], 1.0);
    for i in 0..c.n_layers {
        layer(&mut p, c, i);
    }
    p.uniform("output_norm.weight", &[h]);
    p.quant(
        "output.weight",
        QType::Q6_K,
        &[h, c.vocab_size],
        inv_sqrt(h),
    );
    p.0
}

fn layer(p: &mut Planner, c: &DeepSeekConfig, i: usize) {
    let n = |t: &str| format!("blk.{i}.{t}");
    let (h, heads) = (c.hidden_size, c.n_heads);
    let (nope, rope, v, kv) = (
        c.qk_nope_head_dim,
        c.qk_rope_head_dim,
        c.v_head_dim,
        c.kv_lora_rank,
    );
    let q_out = heads * (nope + rope);
    let down = if more_bits(i, c.n_layers) {
        QType::Q6_K
    } else {
        QType::Q4_K
    };

    p.uniform(&n("attn_norm.weight"), &[h]);
    match c.q_lora_rank {
        None => p.quant(&n("attn_q.weight"), QType::Q4_K, &[h, q_out], inv_sqrt(h)),
        Some(r) => {
            p.quant(&n("attn_q_a.weight"), QType::Q4_K, &[h, r], inv_sqrt(h));
            p.uniform(&n("attn_q_a_norm.weight"), &[r]);
            p.quant(&n("attn_q_b.weight"), QType::Q4_K, &[r, q_out], inv_sqrt(r));
        }
    }
    p.quant(
        &n("attn_kv_a_mqa.weight"),
        QType::Q4_K,
        &[h, kv + rope],
        inv_sqrt(h),
    );
    p.uniform(&n("attn_kv_a_norm.weight"), &[kv]);
    // Per head, kv rows of `nope`: the key is this matrix transposed times the latent,
    // so its fan-in is kv_lora_rank, not the row length.
    p.quant(
        &n("attn_k_b.weight"),
        QType::Q4_K,
        &[nope, kv, heads],
        inv_sqrt(kv),
    );
    p.quant(
        &n("attn_v_b.weight"),
        QType::Q4_K,
        &[kv, v, heads],
        inv_sqrt(kv),
    );
    p.quant(
        &n("attn_output.weight"),
        QType::Q4_K,
        &[heads * v, h],
        inv_sqrt(heads * v),
    );
    p.uniform(&n("ffn_norm.weight"), &[h]);

    if !c.is_moe_layer(i) {
        let ff = c.intermediate_size;
        p.quant(&n("ffn_gate.weight"), QType::Q4_K, &[h, ff], inv_sqrt(h));
        p.quant(&n("ffn_up.weight"), QType::Q4_K, &[h, ff], inv_sqrt(h));
        p.quant(&n("ffn_down.weight"), down, &[ff, h], inv_sqrt(ff));
        return;
    }
    let (e, m) = (c.n_routed_experts, c.moe_intermediate_size);
    p.normal_f32(&n("ffn_gate_inp.weight"), &[h, e], inv_sqrt(h));
    if c.topk_method == TopkMethod::NoauxTc {
        // Small next to sigmoid scores in (0, 1): it nudges the choice, as trained ones do.
        p.push(
            &n("exp_probs_b.bias"),
            QType::F32,
            &[e],
            Init::Uniform {
                lo: -0.05,
                hi: 0.05,
            },
        );
    }
    p.quant(
        &n("ffn_gate_exps.weight"),
        QType::Q4_K,
        &[h, m, e],
        inv_sqrt(h),
    );
    p.quant(
        &n("ffn_up_exps.weight"),
        QType::Q4_K,
        &[h, m, e],
        inv_sqrt(h),
    );
    p.quant(&n("ffn_down_exps.weight"), down, &[m, h, e], inv_sqrt(m));
    if c.n_shared_experts > 0 {
        let s = c.shared_intermediate_size();
        p.quant(
            &n("ffn_gate_shexp.weight"),
            QType::Q4_K,
            &[h, s],
            inv_sqrt(h),
        );
        p.quant(&n("ffn_up_shexp.weight"), QType::Q4_K, &[h, s], inv_sqrt(h));
        p.quant(&n("ffn_down_shexp.weight"), down, &[s, h], inv_sqrt(s));
    }
}

fn inv_sqrt(n: usize) -> f32 {
    (1.0 / (n as f64).sqrt()) as f32
}

struct Planner(Vec<TensorPlan>);

impl Planner {
    fn push(&mut self, name: &str, qtype: QType, dims: &[usize], init: Init) {
        self.0.push(TensorPlan {
            name: name.to_owned(),
            qtype,
            dims: dims.to_vec(),
            init,
        });
    }

    /// A quantized weight (with the block-size fallback applied).
    fn quant(&mut self, name: &str, want: QType, dims: &[usize], std: f32) {
        let q = with_fallback(want, dims[0]);
        self.push(name, q, dims, Init::Normal { std });
    }

    fn uniform(&mut self, name: &str, dims: &[usize]) {
        self.push(name, QType::F32, dims, Init::Uniform { lo: 0.8, hi: 1.2 });
    }

    fn normal_f32(&mut self, name: &str, dims: &[usize], std: f32) {
        self.push(name, QType::F32, dims, Init::NormalF32 { std });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn more_bits_matches_llama_cpp_rule_on_27_layers() {
        // n/8 = 3, 7n/8 = 23: layers 0..3, 23..27, and 3 + 2, 3 + 5, ...
        let got: Vec<usize> = (0..27).filter(|&l| more_bits(l, 27)).collect();
        assert_eq!(got, [0, 1, 2, 5, 8, 11, 14, 17, 20, 23, 24, 25, 26]);
    }

    #[test]
    fn fallbacks_follow_block_sizes() {
        assert_eq!(with_fallback(QType::Q4_K, 2048), QType::Q4_K);
        assert_eq!(with_fallback(QType::Q4_K, 1408), QType::Q5_0);
        assert_eq!(with_fallback(QType::Q6_K, 1408), QType::Q8_0);
        assert_eq!(with_fallback(QType::Q4_K, 128), QType::Q5_0);
    }
}
