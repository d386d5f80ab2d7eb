//! The synthetic DeepSeek-V2-Lite at its real shapes, cut to 2 layers (one dense, one
//! MoE): built in memory, read back by our GGUF reader, config and tensor lookup, and
//! run by the forward pass with finite logits and routing that varies per token.

use std::collections::HashSet;
use std::io::Write;
use std::sync::OnceLock;
use std::time::Instant;

use kt_kernels::quant::{self, QType};
use kt_model::config::DeepSeekConfig;
use kt_model::deepseek::{generate, DeepSeekModel, ForwardTrace, LogitRows, MatmulMode, Sampler};
use kt_model::gguf::Gguf;
use kt_model::synthetic::{Preset, SyntheticModel, SyntheticOptions};
use kt_model::tensors::ModelTensors;

fn opts(seed: u64) -> SyntheticOptions {
    SyntheticOptions {
        layers: Some(2),
        seed,
        ..SyntheticOptions::default()
    }
}

/// The 2-layer model and its GGUF, built once for the tests of this file.
fn model() -> &'static (SyntheticModel, Gguf) {
    static MODEL: OnceLock<(SyntheticModel, Gguf)> = OnceLock::new();
    MODEL.get_or_init(|| {
        let t = Instant::now();
        let m = SyntheticModel::new(Preset::DeepSeekV2Lite, &opts(1)).unwrap();
        let pools = t.elapsed();
        let g = m.to_gguf(&mut |_| {}).unwrap();
        eprintln!(
            "V2-Lite 2 layers: pools {:.2} s, {:.2} GB in memory after {:.2} s",
            pools.as_secs_f64(),
            m.file_bytes().unwrap() as f64 / 1e9,
            t.elapsed().as_secs_f64()
        );
        (m, g)
    })
}

#[test]
fn config_reads_back_as_the_preset_cut_to_two_layers() {
    let (m, g) = model();
    let mut want = Preset::DeepSeekV2Lite.config();
    want.n_layers = 2;
    assert_eq!(m.config(), &want);
    let mut got = DeepSeekConfig::from_gguf(g).unwrap();
    // mscale travels as llama.cpp's yarn_log_multiplier = 0.1 * mscale_all_dim in f32
    let (y, w) = (got.rope_scaling.unwrap(), want.rope_scaling.unwrap());
    for (a, b) in [(y.mscale, w.mscale), (y.mscale_all_dim, w.mscale_all_dim)] {
        assert!((a - b).abs() <= 1e-6 * b, "mscale {a} vs {b}");
    }
    got.rope_scaling = want.rope_scaling;
    assert_eq!(got, want);
    assert_eq!(g.n_tensors(), m.n_tensors());
    assert_eq!(g.files()[0].len() as u64, m.file_bytes().unwrap());
}

/// Q4_K_M's formats with llama.cpp's fallbacks for rows that are no whole K-quant block.
#[test]
fn tensor_formats_are_the_q4_k_m_mix() {
    let (_, g) = model();
    let ty = |name: &str| g.tensor_info(name).unwrap().qtype();
    assert_eq!(ty("token_embd.weight"), QType::Q4_K);
    assert_eq!(ty("output.weight"), QType::Q6_K);
    assert_eq!(ty("output_norm.weight"), QType::F32);
    assert_eq!(ty("blk.0.attn_q.weight"), QType::Q4_K);
    assert_eq!(ty("blk.0.attn_k_b.weight"), QType::Q5_0, "128-wide rows");
    assert_eq!(ty("blk.0.attn_v_b.weight"), QType::Q4_K);
    // layer 0 of 2 gets no extra bits: Q4_K, 10944-wide rows fall back to Q5_0
    assert_eq!(ty("blk.0.ffn_down.weight"), QType::Q5_0);
    assert_eq!(ty("blk.1.ffn_gate_inp.weight"), QType::F32);
    assert_eq!(ty("blk.1.ffn_gate_exps.weight"), QType::Q4_K);
    // the last layer gets Q6_K, 1408-wide rows fall back to Q8_0
    assert_eq!(ty("blk.1.ffn_down_exps.weight"), QType::Q8_0);
    assert_eq!(
        ty("blk.1.ffn_down_shexp.weight"),
        QType::Q6_K,
        "2816 = 11 * 256"
    );
    assert!(
        g.tensor_info("blk.1.exp_probs_b.bias").is_none(),
        "softmax routing"
    );
}

/// Every tensor holds finite, non-zero values of a sensible size (first, middle and
/// last rows checked).
#[test]
fn every_tensor_is_finite_and_nonzero() {
    let (_, g) = model();
    for t in g.tensors() {
        let row_len = t.dims[0];
        let n_rows: usize = t.dims[1..].iter().product();
        let row_bytes = t.data.len() / n_rows;
        for r in [0, n_rows / 2, n_rows - 1] {
            let mut f = vec![f32::NAN; row_len];
            quant::dequantize(t.qtype, &t.data[r * row_bytes..(r + 1) * row_bytes], &mut f)
                .unwrap();
            let rms = (f.iter().map(|v| v * v).sum::<f32>() / row_len as f32).sqrt();
            assert!(
                rms.is_finite() && rms > 1e-3 && rms < 2.0,
                "{} row {r}: rms {rms}",
                t.name
            );
        }
    }
}

#[test]
fn forward_gives_finite_logits_and_varied_routing() {
    let (m, g) = model();
    let config = m.config();
    ModelTensors::from_gguf(g, config).unwrap();
    let model = DeepSeekModel::from_gguf(g, MatmulMode::quantized_selected().unwrap()).unwrap();
    let tokens = [100_000u32, 17, 4242, 99, 65_000, 3];
    let mut cache = model.new_cache(tokens.len() + 1).unwrap();
    let mut trace = ForwardTrace::default();
    let logits = model
        .forward(&tokens, &mut cache, LogitRows::All, Some(&mut trace))
        .unwrap();
    assert_eq!(logits.len(), tokens.len() * config.vocab_size);
    assert!(logits.iter().all(|v| v.is_finite()));
    for (t, row) in logits.chunks_exact(config.vocab_size).enumerate() {
        let mean = row.iter().sum::<f32>() / row.len() as f32;
        let sd = (row.iter().map(|v| (v - mean).powi(2)).sum::<f32>() / row.len() as f32).sqrt();
        // unit-RMS normed hidden state times 1/sqrt(hidden) weights: logits ~ N(0, 1)
        assert!(sd > 0.1 && sd < 10.0, "token {t}: logits sd {sd}");
    }
    for (l, x) in trace.layer_outputs.iter().enumerate() {
        let rms = (x.iter().map(|v| v * v).sum::<f32>() / x.len() as f32).sqrt();
        eprintln!("layer {l}: residual rms {rms:.3}");
        assert!(
            rms.is_finite() && rms < 50.0,
            "layer {l}: residual rms {rms}"
        );
    }

    assert_eq!(trace.routing.len(), 1, "layer 1 is the only MoE layer");
    let (layer, r) = &trace.routing[0];
    assert_eq!(*layer, 1);
    let k = config.experts_per_tok;
    let distinct: HashSet<u32> = r.ids.iter().copied().collect();
    assert!(
        distinct.len() >= 2 * k,
        "only {} distinct experts",
        distinct.len()
    );
    let sets: HashSet<Vec<u32>> = r
        .ids
        .chunks_exact(k)
        .map(|ids| {
            let mut s = ids.to_vec();
            s.sort_unstable();
            s
        })
        .collect();
    assert_eq!(
        sets.len(),
        tokens.len(),
        "every token picks its own expert set"
    );
    // softmax weights of the top 6 of 64 experts: positive, below 1, not all equal
    assert!(r.weights.iter().all(|&w| w > 0.0 && w < 1.0));
    let (lo, hi) = r
        .weights
        .iter()
        .fold((f32::MAX, f32::MIN), |(a, b), &w| (a.min(w), b.max(w)));
    assert!(hi > 1.5 * lo, "router weights {lo}..{hi} are flat");
    eprintln!(
        "{} distinct experts over {} tokens, weights {lo:.3}..{hi:.3}",
        distinct.len(),
        tokens.len()
    );

    // a decode step continues from the cache
    let next = model
        .forward(&[5], &mut cache, LogitRows::Last, None)
        .unwrap();
    assert!(next.iter().all(|v| v.is_finite()));
}

/// Hashes what is written (FNV-1a over 8-byte words), so whole files compare without
/// holding two copies.
struct Hasher(u64, Vec<u8>);

impl Write for Hasher {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.1.extend_from_slice(buf);
        let whole = self.1.len() / 8 * 8;
        for c in self.1[..whole].chunks_exact(8) {
            self.0 = (self.0 ^ u64::from_le_bytes(c.try_into().unwrap()))
                .wrapping_mul(0x0000_0100_0000_01B3);
        }
        self.1.drain(..whole);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn file_hash(seed: u64) -> u64 {
    let m = SyntheticModel::new(Preset::DeepSeekV2Lite, &opts(seed)).unwrap();
    let h = m
        .write(Hasher(0xCBF2_9CE4_8422_2325, Vec::new()), &mut |_| {})
        .unwrap();
    assert!(h.1.len() < 8);
    h.0
}

#[test]
fn the_seed_decides_every_byte() {
    assert_eq!(file_hash(7), file_hash(7));
    assert_ne!(file_hash(7), file_hash(8));
}

#[test]
fn layer_counts_outside_the_model_are_errors() {
    for layers in [0, 28] {
        let o = SyntheticOptions {
            layers: Some(layers),
            ..SyntheticOptions::default()
        };
        let e = SyntheticModel::new(Preset::DeepSeekV2Lite, &o).unwrap_err();
        assert!(e.to_string().contains("n_layers"), "{e}");
    }
}

/// `generate` with the greedy sampler (or a vanishing top-p) is `generate_greedy`; a
/// seeded temperature sampler repeats with its seed.
#[test]
fn generation_with_samplers() {
    let (_, g) = model();
    let model = DeepSeekModel::from_gguf(g, MatmulMode::quantized_selected().unwrap()).unwrap();
    let prompt = [100_000u32, 500, 12_345, 7];
    let run = |sampler: &mut Sampler| {
        let mut cache = model.new_cache(prompt.len() + 6).unwrap();
        generate(&model, &prompt, 6, &mut cache, sampler).unwrap()
    };
    let mut cache = model.new_cache(prompt.len() + 6).unwrap();
    let greedy = model.generate_greedy(&prompt, 6, &mut cache).unwrap();
    assert_eq!(run(&mut Sampler::greedy()), greedy);
    assert_eq!(run(&mut Sampler::top_p(0.7, 1e-9, 1).unwrap()), greedy);
    let hot = |seed| run(&mut Sampler::top_p(3.0, 0.95, seed).unwrap());
    let a = hot(5);
    assert_eq!(a, hot(5));
    assert!(a.iter().all(|&t| (t as usize) < 102_400));
    assert_ne!(
        a, greedy,
        "temperature 3 over 102400 tokens follows greedy 6 times"
    );
}
