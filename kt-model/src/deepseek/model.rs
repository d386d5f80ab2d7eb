//! The whole model: embeddings, the decoder layers (pre-norm MLA attention and a dense or
//! MoE feed-forward, each added to the residual stream), the final norm and the output
//! head, run over a batch of new tokens that continue the sequence in a [`KvCache`].

use kt_kernels::ops::{RopeYarn, YarnScaling as OpsYarn};

use super::attention::{AttentionWeights, MlaShape};
use super::cache::KvCache;
use super::ffn::{Mlp, Moe, Routing};
use super::fused_moe::{FusedMoe, RepackProgress, DEFAULT_MAX_BATCH};
use super::linear::{dequantize_vector, Linear, MatmulMode};
use super::norm::rms_norm;
use super::timing::{Place, Stage, StageClock, StageTimes};
use crate::config::DeepSeekConfig;
use crate::error::{ModelError, Result};
use crate::gguf::Gguf;
use crate::tensors::{Ffn, ModelTensors};
use kt_kernels::cpu::moe::repack::RepackFormat;

/// Which positions of the batch get logits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogitRows {
    /// Every new token (`[T, vocab]`): scoring a prompt, teacher forcing.
    All,
    /// Only the last one (`[1, vocab]`): generation.
    Last,
}

/// Intermediate results of a forward call, for tests and debugging.
#[derive(Debug, Clone, Default)]
pub struct ForwardTrace {
    /// The residual stream after each layer, `[n_layers][T * hidden]`.
    pub layer_outputs: Vec<Vec<f32>>,
    /// The residual stream after each layer's attention (its FFN's input before the norm),
    /// `[n_layers][T * hidden]`.
    pub ffn_inputs: Vec<Vec<f32>>,
    /// `(layer, routing)` of every MoE layer, in layer order.
    pub routing: Vec<(usize, Routing)>,
}

enum FfnWeights<'a> {
    Dense(Mlp<'a>),
    Moe(Box<Moe<'a>>),
}

struct Layer<'a> {
    attn_norm: Vec<f32>,
    attn: AttentionWeights<'a>,
    ffn_norm: Vec<f32>,
    ffn: FfnWeights<'a>,
}

/// A DeepSeek V2/V3 model over the tensors of a GGUF file (borrowed, not copied).
pub struct DeepSeekModel<'a> {
    config: DeepSeekConfig,
    mode: MatmulMode,
    rope: RopeYarn,
    shape: MlaShape,
    token_embd: Linear<'a>,
    layers: Vec<Layer<'a>>,
    output_norm: Vec<f32>,
    output: Linear<'a>,
    /// The routed experts on the fused operator (`Quantized` mode with MoE layers).
    fused: Option<FusedMoe>,
}

impl<'a> DeepSeekModel<'a> {
    /// The model of `gguf` with the hyper-parameters its metadata states.
    pub fn from_gguf(gguf: &'a Gguf, mode: MatmulMode) -> Result<Self> {
        Self::new(gguf, DeepSeekConfig::from_gguf(gguf)?, mode)
    }

    /// The model of `gguf` with `config` (e.g. reconciled with a `config.json`, which
    /// states what the GGUF cannot, like V2's `topk_method`).
    pub fn new(gguf: &'a Gguf, config: DeepSeekConfig, mode: MatmulMode) -> Result<Self> {
        Self::build(gguf, config, mode, None)
    }

    /// [`DeepSeekModel::new`] with every routed expert repacked at load to `format` (the
    /// layouts of `kt_kernels::cpu::moe::repack`: int4 / int8 with group scales for AMX
    /// and AVX512-VNNI, or bf16), the rest as stored; `repacked(done, total)` counts the
    /// expert matrices as the repack goes. `Quantized` mode only (the reference mode runs
    /// the weights as stored).
    pub fn with_repacked_experts(
        gguf: &'a Gguf,
        config: DeepSeekConfig,
        mode: MatmulMode,
        format: RepackFormat,
        repacked: RepackProgress<'_>,
    ) -> Result<Self> {
        if mode == MatmulMode::Reference {
            return Err(ModelError::Forward {
                reason: format!(
                    "routed experts repacked to {}: the reference mode runs weights as stored",
                    format.name()
                ),
            });
        }
        Self::build(gguf, config, mode, Some((format, repacked)))
    }

    fn build(
        gguf: &'a Gguf,
        config: DeepSeekConfig,
        mode: MatmulMode,
        repack: Option<(RepackFormat, RepackProgress<'_>)>,
    ) -> Result<Self> {
        let tensors = ModelTensors::from_gguf(gguf, &config)?;
        let rope = rope_of(&config)?;
        let shape = MlaShape::new(&config, &rope);
        let layers = tensors
            .layers
            .iter()
            .map(|l| {
                Ok(Layer {
                    attn_norm: dequantize_vector(&l.attn_norm)?,
                    attn: AttentionWeights::new(&l.attn)?,
                    ffn_norm: dequantize_vector(&l.ffn_norm)?,
                    ffn: match &l.ffn {
                        Ffn::Dense(d) => FfnWeights::Dense(Mlp::new(d)?),
                        Ffn::Moe(m) => FfnWeights::Moe(Box::new(Moe::new(m, &config)?)),
                    },
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let fused = match mode {
            MatmulMode::Reference => None,
            MatmulMode::Quantized(isa) => FusedMoe::new(
                gguf,
                &tensors,
                isa,
                config.experts_per_tok,
                DEFAULT_MAX_BATCH,
                repack,
            )?,
        };
        Ok(DeepSeekModel {
            fused,
            token_embd: Linear::from_2d(&tensors.token_embd)?,
            output_norm: dequantize_vector(&tensors.output_norm)?,
            output: Linear::from_2d(&tensors.output)?,
            config,
            mode,
            rope,
            shape,
            layers,
        })
    }

    pub fn config(&self) -> &DeepSeekConfig {
        &self.config
    }

    pub fn mode(&self) -> MatmulMode {
        self.mode
    }

    /// Sizes the fused MoE operator's scratch for batches of up to `max_batch` tokens
    /// (default [`DEFAULT_MAX_BATCH`]); larger batches run their routed experts in pieces
    /// of that many tokens. Allocates: call it at setup. No effect in `Reference` mode.
    pub fn set_max_batch(&mut self, max_batch: usize) -> Result<()> {
        if max_batch == 0 {
            return Err(ModelError::Forward {
                reason: "the largest batch must be at least 1 token".into(),
            });
        }
        if let Some(f) = self.fused.as_ref().filter(|f| f.max_batch() != max_batch) {
            let resized = f.resized(max_batch)?;
            self.fused = Some(resized);
        }
        Ok(())
    }

    /// An empty cache for `capacity` positions of this model.
    pub fn new_cache(&self, capacity: usize) -> Result<KvCache> {
        KvCache::new(&self.config, capacity)
    }

    /// Runs `tokens` at the positions that follow what `cache` holds, appends them to the
    /// cache and returns the logits of the rows `rows` asks for (`[rows, vocab]`). With
    /// `trace`, also records each layer's output and each MoE layer's routing.
    pub fn forward(
        &self,
        tokens: &[u32],
        cache: &mut KvCache,
        rows: LogitRows,
        trace: Option<&mut ForwardTrace>,
    ) -> Result<Vec<f32>> {
        self.forward_timed(tokens, cache, rows, trace, None)
    }

    /// [`DeepSeekModel::forward`], adding where the time went to `times` when given
    /// (per layer and stage, see [`StageTimes`]; without it nothing is timed).
    pub fn forward_timed(
        &self,
        tokens: &[u32],
        cache: &mut KvCache,
        rows: LogitRows,
        mut trace: Option<&mut ForwardTrace>,
        times: Option<&mut StageTimes>,
    ) -> Result<Vec<f32>> {
        let c = &self.config;
        let (t_n, hidden) = (tokens.len(), c.hidden_size);
        if t_n == 0 {
            return Err(ModelError::Forward {
                reason: "no input tokens".into(),
            });
        }
        cache.check_room(c, t_n)?;
        let start = cache.len();
        let mut clock = StageClock::start(times, self.layers.len(), t_n);

        let mut x = vec![0.0f32; t_n * hidden];
        for (i, (&tok, row)) in tokens.iter().zip(x.chunks_exact_mut(hidden)).enumerate() {
            if tok as usize >= c.vocab_size {
                return Err(ModelError::TokenOutOfRange {
                    index: i,
                    token: tok,
                    vocab: c.vocab_size,
                });
            }
            self.token_embd.dequantize_row(tok as usize, row)?;
        }

        let mut xn = vec![0.0f32; t_n * hidden];
        let mut delta = vec![0.0f32; t_n * hidden];
        clock.lap(Place::Head, Stage::Other);
        for (li, layer) in self.layers.iter().enumerate() {
            let here = Place::Layer(li);
            rms_norm(self.mode, &x, &layer.attn_norm, c.rms_norm_eps, &mut xn)?;
            clock.lap(here, Stage::Other);
            let lc = cache.layer_mut(li);
            layer.attn.forward(
                &self.shape,
                self.mode,
                &self.rope,
                &xn,
                t_n,
                start,
                lc,
                &mut delta,
            )?;
            clock.lap(here, Stage::Attention);
            add_into(&mut x, &delta);
            if let Some(tr) = trace.as_deref_mut() {
                tr.ffn_inputs.push(x.clone());
            }

            rms_norm(self.mode, &x, &layer.ffn_norm, c.rms_norm_eps, &mut xn)?;
            clock.lap(here, Stage::Other);
            match &layer.ffn {
                FfnWeights::Dense(mlp) => {
                    mlp.forward(self.mode, &xn, t_n, &mut delta)?;
                    clock.lap(here, Stage::Mlp);
                }
                FfnWeights::Moe(moe) => {
                    let fused = self.fused.as_ref();
                    let routing =
                        moe.forward(self.mode, fused, li, &xn, t_n, &mut delta, &mut clock)?;
                    if let Some(tr) = trace.as_deref_mut() {
                        tr.routing.push((li, routing));
                    }
                }
            }
            add_into(&mut x, &delta);
            if let Some(tr) = trace.as_deref_mut() {
                tr.layer_outputs.push(x.clone());
            }
            clock.lap(here, Stage::Other);
        }
        cache.advance(t_n);

        let first = match rows {
            LogitRows::All => 0,
            LogitRows::Last => t_n - 1,
        };
        let n_rows = t_n - first;
        let mut last = vec![0.0f32; n_rows * hidden];
        rms_norm(
            self.mode,
            &x[first * hidden..],
            &self.output_norm,
            c.rms_norm_eps,
            &mut last,
        )?;
        clock.lap(Place::Head, Stage::Other);
        let mut logits = vec![0.0f32; n_rows * c.vocab_size];
        self.output.apply(self.mode, &last, n_rows, &mut logits)?;
        clock.lap(Place::Head, Stage::LmHead);
        Ok(logits)
    }

    /// Feeds `prompt`, then `n_new` tokens, each the argmax of the previous logits (the
    /// lowest id on a tie); returns the new tokens. The cache must have room for
    /// `prompt.len() + n_new - 1` more positions (the last token is not fed).
    pub fn generate_greedy(
        &self,
        prompt: &[u32],
        n_new: usize,
        cache: &mut KvCache,
    ) -> Result<Vec<u32>> {
        let mut out = Vec::with_capacity(n_new);
        if n_new == 0 {
            return Ok(out);
        }
        let mut logits = self.forward(prompt, cache, LogitRows::Last, None)?;
        loop {
            let next = argmax(&logits);
            out.push(next);
            if out.len() == n_new {
                return Ok(out);
            }
            logits = self.forward(&[next], cache, LogitRows::Last, None)?;
        }
    }
}

/// The rotary embedding of `config` (YaRN when it states a scaling).
pub(crate) fn rope_of(config: &DeepSeekConfig) -> Result<RopeYarn> {
    Ok(RopeYarn::new(
        config.qk_rope_head_dim,
        config.rope_theta as f64,
        config.rope_scaling.map(|y| OpsYarn {
            factor: y.factor as f64,
            original_max_pos: y.original_max_position_embeddings,
            beta_fast: y.beta_fast as f64,
            beta_slow: y.beta_slow as f64,
            mscale: y.mscale as f64,
            mscale_all_dim: y.mscale_all_dim as f64,
        }),
    )?)
}

/// Index of the largest value, the lowest index on ties (NaN never wins).
pub fn argmax(v: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &x) in v.iter().enumerate() {
        if x > v[best] || v[best].is_nan() {
            best = i;
        }
    }
    best as u32
}

fn add_into(x: &mut [f32], d: &[f32]) {
    x.iter_mut().zip(d).for_each(|(a, &b)| *a += b);
}
