//! `kt-bench logits`: runs a GGUF model on given token ids and writes its logits as a
//! `.npy` array, for comparison with other engines (HF transformers, llama.cpp).
//!
//! Rows: one per prompt position (the prompt as one batch), then one per greedy decode
//! step (the argmax of the previous row fed back, the lowest id on a tie). Prints the
//! greedy tokens: the `--decode` fed ones and the one after the last row.

use std::path::PathBuf;

use kt_kernels::util::npy::write_npy_f32;
use kt_model::config::DeepSeekConfig;
use kt_model::deepseek::{argmax, DeepSeekModel, LogitRows, MatmulMode};
use kt_model::gguf::Gguf;

#[derive(clap::Args)]
pub struct Args {
    /// The model (first part of a split set for split files).
    #[arg(long)]
    pub gguf: PathBuf,
    /// A Hugging Face config.json that must agree with the GGUF's metadata (and
    /// supplies what a GGUF cannot state, such as V2's topk_method).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Prompt token ids, comma-separated.
    #[arg(long, value_delimiter = ',', required = true, num_args = 1..)]
    pub ids: Vec<u32>,
    /// Greedy decode steps after the prompt (one logits row each).
    #[arg(long, default_value_t = 0)]
    pub decode: usize,
    /// Weights dequantized to f32 and f32 activations (the model's exact function),
    /// instead of the fast quantized-activation kernels.
    #[arg(long)]
    pub reference: bool,
    /// Output .npy file: float32 [prompt + decode, vocab].
    #[arg(long)]
    pub out: PathBuf,
    /// Threads (default: all cores, or KT_THREADS).
    #[arg(long)]
    pub threads: Option<usize>,
}

pub fn run(a: Args) -> Result<(), Box<dyn std::error::Error>> {
    crate::machine::pool(a.threads)?;
    let gguf = Gguf::open(&a.gguf)?;
    let config = match &a.config {
        Some(hf) => DeepSeekConfig::from_gguf_and_hf(&gguf, hf)?,
        None => DeepSeekConfig::from_gguf(&gguf)?,
    };
    let mode = if a.reference {
        MatmulMode::Reference
    } else {
        MatmulMode::quantized_selected()?
    };
    let vocab = config.vocab_size;
    let model = DeepSeekModel::new(&gguf, config, mode)?;

    let mut cache = model.new_cache(a.ids.len() + a.decode)?;
    let mut rows = model.forward(&a.ids, &mut cache, LogitRows::All, None)?;
    let mut tokens = Vec::with_capacity(a.decode + 1);
    for _ in 0..a.decode {
        let next = argmax(&rows[rows.len() - vocab..]);
        tokens.push(next);
        let row = model.forward(&[next], &mut cache, LogitRows::Last, None)?;
        rows.extend_from_slice(&row);
    }
    tokens.push(argmax(&rows[rows.len() - vocab..]));

    let n_rows = rows.len() / vocab;
    write_npy_f32(&a.out, &[n_rows, vocab], &rows)?;
    let list: Vec<String> = tokens.iter().map(u32::to_string).collect();
    println!("tokens: {}", list.join(","));
    eprintln!(
        "wrote {} ({n_rows} x {vocab} float32 logits, {} mode)",
        a.out.display(),
        if a.reference {
            "reference"
        } else {
            "quantized"
        }
    );
    Ok(())
}
