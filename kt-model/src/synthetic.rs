//! Synthetic DeepSeek models: the real shapes, routing and quantization mix of
//! DeepSeek-V2-Lite and DeepSeek-V3 with deterministic random weights, as GGUF bytes
//! that our reader and llama.cpp both load. For benchmarks and tests that need a
//! full-size model without downloading hundreds of GB.
//!
//! - [`Preset`]: the real model's hyper-parameters; `layers` shortens it (the leading
//!   dense layers are kept first).
//! - Tensors: llama.cpp's `deepseek2` names and shapes (split `attn_k_b`/`attn_v_b`),
//!   formats of a Q4_K_M file (`plan.rs` says which and why), values scaled so that
//!   activations stay O(1) through every layer and routing varies per token.
//! - Speed: each (format, row length, scale) gets a pool of distinct rows quantized by
//!   the reference quantizer in parallel on the kernel pool; tensors are filled by
//!   copying pool rows under a per-tensor pseudo-random row mapping (`pool.rs`). Building
//!   is then bound by memory bandwidth.
//! - Output: a stream through [`GgufWriter`] ([`SyntheticModel::write`], one tensor
//!   row at a time, for files larger than memory) or bytes in memory
//!   ([`SyntheticModel::to_gguf`]), with llama.cpp's metadata keys and a synthetic
//!   byte-level BPE tokenizer (`tokenizer.rs`).
//!
//! Consequence of the pools: a tensor has at most `pool_rows` distinct rows, so the
//! output head gives each logit value to ~vocab / pool_rows tokens (greedy ties go to
//! the lowest id). Fine for speed and for checking that values stay sane; not a model
//! whose outputs mean anything.
//!
//! llama.cpp (the version the fixtures were made with) loads a full 27-layer synthetic
//! V2-Lite and generates from it. One caveat: it recognises V2-Lite's layout (no query
//! LoRA) by a layer count of 27 (or 26), so a shortened V2-Lite loads in our reader but
//! not in llama.cpp; V3 needs no such guess.

mod plan;
mod pool;
mod preset;
mod tokenizer;

use std::io::Write;
use std::path::PathBuf;

use kt_kernels::cpu::ThreadPool;
use kt_kernels::quant::QType;
use kt_kernels::util::SplitMix64;

use crate::config::{DeepSeekConfig, ScoringFunc};
use crate::error::{ModelError, Result};
use crate::gguf::{Gguf, GgufWriter, Value, DEFAULT_ALIGNMENT};
use plan::{Init, TensorPlan};
use pool::{PoolKey, RowPool};
pub use preset::Preset;

/// Distinct quantized rows per pool unless asked otherwise.
pub const DEFAULT_POOL_ROWS: usize = 256;

/// llama.cpp's `general.file_type` for "mostly Q4_K_M".
const FILE_TYPE_Q4_K_M: u32 = 15;

/// Bytes between two progress reports while tensor data is written.
const PROGRESS_STEP: u64 = 32 << 20;

/// What to build.
#[derive(Debug, Clone)]
pub struct SyntheticOptions {
    /// Keep only the first `layers` layers (`None`: all of the preset's).
    pub layers: Option<usize>,
    /// Every weight is a function of this seed.
    pub seed: u64,
    /// Distinct quantized rows per (format, row length, scale).
    pub pool_rows: usize,
}

impl Default for SyntheticOptions {
    fn default() -> Self {
        SyntheticOptions {
            layers: None,
            seed: 0x5EED,
            pool_rows: DEFAULT_POOL_ROWS,
        }
    }
}

/// A synthetic model ready to be written: its config, its tensor plan and the row
/// pools (a few MB); the tensors themselves exist only while being written.
#[derive(Debug, Clone)]
pub struct SyntheticModel {
    preset: Preset,
    config: DeepSeekConfig,
    seed: u64,
    tensors: Vec<TensorPlan>,
    /// Per tensor, the pool its rows come from (quantized tensors only).
    tensor_pool: Vec<Option<usize>>,
    pools: Vec<RowPool>,
}

impl SyntheticModel {
    /// Plans the model and quantizes its row pools on the global kernel pool.
    pub fn new(preset: Preset, opts: &SyntheticOptions) -> Result<Self> {
        Self::with_threads(preset, opts, kt_kernels::cpu::pool::global())
    }

    /// As [`SyntheticModel::new`], quantizing on `threads`.
    pub fn with_threads(
        preset: Preset,
        opts: &SyntheticOptions,
        threads: &ThreadPool,
    ) -> Result<Self> {
        let config = shortened(preset, opts.layers)?;
        if opts.pool_rows == 0 {
            return Err(invalid(preset, "pool_rows", "is 0".into()));
        }
        let tensors = plan::plan(&config);
        let mut keys: Vec<PoolKey> = Vec::new();
        let tensor_pool = tensors
            .iter()
            .map(|t| match t.init {
                Init::Normal { std } => {
                    let key = PoolKey {
                        qtype: t.qtype,
                        row_len: t.row_len(),
                        std,
                    };
                    Some(keys.iter().position(|k| *k == key).unwrap_or_else(|| {
                        keys.push(key);
                        keys.len() - 1
                    }))
                }
                Init::Uniform { .. } | Init::NormalF32 { .. } => None,
            })
            .collect();
        let pools = pool::build(&keys, opts.pool_rows, opts.seed, threads)?;
        Ok(SyntheticModel {
            preset,
            config,
            seed: opts.seed,
            tensors,
            tensor_pool,
            pools,
        })
    }

    pub fn preset(&self) -> Preset {
        self.preset
    }

    /// The hyper-parameters, as [`DeepSeekConfig::from_gguf`] reads them back.
    pub fn config(&self) -> &DeepSeekConfig {
        &self.config
    }

    pub fn n_tensors(&self) -> usize {
        self.tensors.len()
    }

    /// Name and format of every tensor, in file order.
    pub fn tensor_types(&self) -> impl Iterator<Item = (&str, QType)> {
        self.tensors.iter().map(|t| (t.name.as_str(), t.qtype))
    }

    /// Bytes of the data section (tensor data with its alignment padding).
    pub fn data_bytes(&self) -> u64 {
        self.tensors.iter().map(|t| padded(tensor_bytes(t))).sum()
    }

    /// Bytes of the whole GGUF file.
    pub fn file_bytes(&self) -> Result<u64> {
        let mut counter = ByteCounter(0);
        self.header()?.write_header(&mut counter)?;
        Ok(counter.0 + self.data_bytes())
    }

    /// Writes the GGUF file to `w`, tensor data row by row; `progress` gets the bytes of
    /// tensor data written so far (every 32 MiB and at the end). Returns `w`.
    pub fn write<W: Write>(&self, w: W, progress: &mut dyn FnMut(u64)) -> Result<W> {
        let mut data = self.header()?.write_header(w)?;
        let mut done = 0u64;
        let mut reported = 0u64;
        let mut buf = Vec::new();
        for (t, pool) in self.tensors.iter().zip(&self.tensor_pool) {
            let mut sink = data.begin_tensor(&t.name)?;
            let seed = self.tensor_seed(&t.name);
            match (pool, t.init) {
                (Some(p), _) => {
                    let pool = &self.pools[*p];
                    for r in 0..t.n_rows() {
                        let row = pool.pick(seed, r);
                        sink.write_all(row)?;
                        done += row.len() as u64;
                        if done - reported >= PROGRESS_STEP {
                            progress(done);
                            reported = done;
                        }
                    }
                }
                (None, init) => {
                    f32_values(init, seed, t.dims.iter().product(), &mut buf);
                    sink.write_all(&buf)?;
                    done += buf.len() as u64;
                }
            }
            sink.finish()?;
            done = done.next_multiple_of(DEFAULT_ALIGNMENT);
        }
        progress(done);
        data.finish()
    }

    /// The whole file in memory (one allocation of [`SyntheticModel::file_bytes`]).
    pub fn to_bytes(&self, progress: &mut dyn FnMut(u64)) -> Result<Vec<u8>> {
        let size = self.file_bytes()?;
        let size = usize::try_from(size).map_err(|_| {
            invalid(
                self.preset,
                "n_layers",
                format!("a {size}-byte file does not fit in memory"),
            )
        })?;
        let mut bytes = Vec::with_capacity(size);
        self.write(&mut bytes, progress)?;
        debug_assert_eq!(bytes.len(), size);
        Ok(bytes)
    }

    /// The model as a [`Gguf`] read from memory, named `synthetic-<preset>.gguf`.
    pub fn to_gguf(&self, progress: &mut dyn FnMut(u64)) -> Result<Gguf> {
        let bytes = self.to_bytes(progress)?;
        let label = PathBuf::from(format!(
            "synthetic-{}-{}L.gguf",
            self.preset.name(),
            self.config.n_layers
        ));
        Gguf::from_bytes(label, bytes)
    }

    fn tensor_seed(&self, name: &str) -> u64 {
        // FNV-1a of the name, mixed with the model seed.
        let h = name.bytes().fold(0xCBF2_9CE4_8422_2325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01B3)
        });
        SplitMix64::new(h ^ self.seed).next_u64()
    }

    /// Metadata and tensor infos of the file.
    fn header(&self) -> Result<GgufWriter> {
        let mut w = GgufWriter::new();
        self.add_metadata(&mut w)?;
        for t in &self.tensors {
            w.add_tensor_info(&t.name, t.qtype, &t.dims)?;
        }
        Ok(w)
    }

    /// llama.cpp's metadata keys for a `deepseek2` Q4_K_M file.
    fn add_metadata(&self, w: &mut GgufWriter) -> Result<()> {
        let c = &self.config;
        let k = |name: &str| format!("deepseek2.{name}");
        w.add("general.architecture", "deepseek2")?;
        w.add("general.type", "model")?;
        w.add(
            "general.name",
            format!(
                "kt synthetic {} ({} layers)",
                self.preset.name(),
                c.n_layers
            )
            .as_str(),
        )?;
        let u = |v: usize| Value::U32(v as u32);
        w.add(k("block_count"), u(c.n_layers))?;
        w.add(k("context_length"), u(c.max_position_embeddings))?;
        w.add(k("embedding_length"), u(c.hidden_size))?;
        w.add(k("feed_forward_length"), u(c.intermediate_size))?;
        w.add(k("attention.head_count"), u(c.n_heads))?;
        // MLA layout: one latent "kv head", absorbed key/value lengths.
        w.add(k("attention.head_count_kv"), u(1))?;
        if let Some(y) = &c.rope_scaling {
            w.add(k("rope.scaling.type"), "yarn")?;
            w.add(k("rope.scaling.factor"), y.factor)?;
            w.add(
                k("rope.scaling.original_context_length"),
                u(y.original_max_position_embeddings),
            )?;
            w.add(k("rope.scaling.yarn_beta_fast"), y.beta_fast)?;
            w.add(k("rope.scaling.yarn_beta_slow"), y.beta_slow)?;
            // llama.cpp keeps only mscale_all_dim, as 0.1 * mscale_all_dim.
            w.add(
                k("rope.scaling.yarn_log_multiplier"),
                (0.1 * f64::from(y.mscale_all_dim)) as f32,
            )?;
        }
        w.add(k("rope.freq_base"), c.rope_theta)?;
        w.add(k("attention.layer_norm_rms_epsilon"), c.rms_norm_eps)?;
        w.add(k("expert_count"), u(c.n_routed_experts))?;
        w.add(k("expert_used_count"), u(c.experts_per_tok))?;
        w.add(k("expert_group_count"), u(c.n_group))?;
        w.add(k("expert_group_used_count"), u(c.topk_group))?;
        let gating = match c.scoring {
            ScoringFunc::Softmax => 1u32,
            ScoringFunc::Sigmoid => 2,
        };
        w.add(k("expert_gating_func"), gating)?;
        w.add(
            k("attention.key_length"),
            u(c.kv_lora_rank + c.qk_rope_head_dim),
        )?;
        w.add(k("attention.value_length"), u(c.kv_lora_rank))?;
        w.add(k("leading_dense_block_count"), u(c.first_k_dense_replace))?;
        w.add(k("vocab_size"), u(c.vocab_size))?;
        if let Some(r) = c.q_lora_rank {
            w.add(k("attention.q_lora_rank"), u(r))?;
        }
        w.add(k("attention.kv_lora_rank"), u(c.kv_lora_rank))?;
        w.add(k("attention.key_length_mla"), u(c.qk_head_dim()))?;
        w.add(k("attention.value_length_mla"), u(c.v_head_dim))?;
        w.add(k("expert_feed_forward_length"), u(c.moe_intermediate_size))?;
        w.add(k("expert_shared_count"), u(c.n_shared_experts))?;
        w.add(k("expert_weights_scale"), c.routed_scaling_factor)?;
        w.add(k("expert_weights_norm"), c.norm_topk_prob)?;
        w.add(k("rope.dimension_count"), u(c.qk_rope_head_dim))?;

        let (bos, eos) = (
            c.bos_token_id.expect("presets name BOS"),
            c.eos_token_id.expect("presets name EOS"),
        );
        let vocab = tokenizer::build(c.vocab_size, bos, eos)?;
        w.add("tokenizer.ggml.model", "gpt2")?;
        w.add("tokenizer.ggml.pre", "gpt-2")?;
        w.add("tokenizer.ggml.tokens", vocab.tokens)?;
        w.add("tokenizer.ggml.scores", vocab.scores)?;
        w.add("tokenizer.ggml.token_type", vocab.token_types)?;
        w.add("tokenizer.ggml.merges", vocab.merges)?;
        w.add("tokenizer.ggml.bos_token_id", bos)?;
        w.add("tokenizer.ggml.eos_token_id", eos)?;
        w.add("tokenizer.ggml.add_bos_token", true)?;
        w.add("tokenizer.ggml.add_eos_token", false)?;
        w.add("general.quantization_version", 2u32)?;
        w.add("general.file_type", FILE_TYPE_Q4_K_M)?;
        Ok(())
    }
}

/// The preset's config cut to `layers` (keeping up to that many dense first layers).
fn shortened(preset: Preset, layers: Option<usize>) -> Result<DeepSeekConfig> {
    let mut c = preset.config();
    if let Some(n) = layers {
        if n == 0 || n > c.n_layers {
            return Err(invalid(
                preset,
                "n_layers",
                format!("{n} is not in 1..={}", c.n_layers),
            ));
        }
        c.n_layers = n;
        c.first_k_dense_replace = c.first_k_dense_replace.min(n);
    }
    c.validate(&format!("synthetic {preset}"))?;
    Ok(c)
}

fn invalid(preset: Preset, field: &'static str, reason: String) -> ModelError {
    ModelError::InvalidConfig {
        origin: format!("synthetic {preset}"),
        field,
        reason,
    }
}

fn tensor_bytes(t: &TensorPlan) -> u64 {
    // The planner only emits row lengths that are whole blocks (fallbacks applied).
    let row = t
        .qtype
        .row_bytes(t.row_len())
        .expect("planned rows are whole blocks");
    (row * t.n_rows()) as u64
}

fn padded(n: u64) -> u64 {
    n.next_multiple_of(DEFAULT_ALIGNMENT)
}

/// The little-endian F32 bytes of a directly drawn tensor.
fn f32_values(init: Init, seed: u64, n: usize, out: &mut Vec<u8>) {
    let mut rng = SplitMix64::new(seed);
    out.clear();
    out.reserve(n * 4);
    for _ in 0..n {
        let v = match init {
            Init::Uniform { lo, hi } => rng.uniform(lo, hi),
            Init::NormalF32 { std } | Init::Normal { std } => std * rng.normal(),
        };
        out.extend_from_slice(&v.to_le_bytes());
    }
}

/// Counts what is written (the header's size without keeping it).
struct ByteCounter(u64);

impl Write for ByteCounter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 += buf.len() as u64;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The metadata alone (a GGUF without tensors) reads back as the full preset's
    /// config, for both presets at their real size.
    #[test]
    fn metadata_reads_back_as_the_preset() {
        for preset in Preset::ALL {
            let opts = SyntheticOptions {
                pool_rows: 1,
                ..SyntheticOptions::default()
            };
            let m = SyntheticModel::new(preset, &opts).unwrap();
            let mut w = GgufWriter::new();
            m.add_metadata(&mut w).unwrap();
            let bytes = w.write_header(Vec::new()).unwrap().finish().unwrap();
            let g = Gguf::from_bytes("metadata.gguf", bytes).unwrap();
            let mut got = DeepSeekConfig::from_gguf(&g).unwrap();
            let want = preset.config();
            let (y, wy) = (got.rope_scaling.unwrap(), want.rope_scaling.unwrap());
            // yarn_log_multiplier = 0.1 * mscale_all_dim rounds to f32 on the way
            assert!((y.mscale_all_dim - wy.mscale_all_dim).abs() <= 1e-6 * wy.mscale_all_dim);
            assert!((y.mscale - wy.mscale).abs() <= 1e-6 * wy.mscale);
            got.rope_scaling = want.rope_scaling;
            assert_eq!(got, want, "{preset}");
            let md = g.metadata();
            assert_eq!(md.get_str("tokenizer.ggml.model").unwrap(), "gpt2");
            for key in ["tokens", "scores", "token_type"] {
                let n = md
                    .get_array(&format!("tokenizer.ggml.{key}"))
                    .unwrap()
                    .len();
                assert_eq!(n, want.vocab_size, "{key}");
            }
            let merges = md.get_array("tokenizer.ggml.merges").unwrap().len();
            assert_eq!(merges, want.vocab_size - 258);
        }
    }

    #[test]
    fn v3_plan_has_every_tensor_the_reader_needs() {
        let opts = SyntheticOptions {
            pool_rows: 1,
            ..SyntheticOptions::default()
        };
        let m = SyntheticModel::new(Preset::DeepSeekV3, &opts).unwrap();
        let types: std::collections::HashMap<&str, QType> = m.tensor_types().collect();
        // 3 dense layers, then MoE with the score bias; 61 layers in all
        assert_eq!(types["blk.2.ffn_down.weight"], QType::Q6_K, "first eighth");
        assert_eq!(types["blk.10.ffn_down_exps.weight"], QType::Q4_K);
        assert_eq!(
            types["blk.12.ffn_down_exps.weight"],
            QType::Q6_K,
            "(12 - 7) % 3 == 2"
        );
        assert_eq!(
            types["blk.53.ffn_down_exps.weight"],
            QType::Q6_K,
            "last eighth"
        );
        assert_eq!(types["blk.3.exp_probs_b.bias"], QType::F32);
        assert_eq!(types["blk.60.attn_q_b.weight"], QType::Q4_K);
        assert_eq!(types["blk.60.attn_k_b.weight"], QType::Q5_0);
        assert!(!types.contains_key("blk.2.ffn_gate_inp.weight"));
        assert!(
            !types.contains_key("blk.0.attn_q.weight"),
            "V3 has query LoRA"
        );
        // ~404 GB like a real V3 Q4_K_M
        let gb = m.file_bytes().unwrap() as f64 / 1e9;
        assert!((380.0..420.0).contains(&gb), "{gb} GB");
    }
}
