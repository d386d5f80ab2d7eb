//! `kt-bench gen-gguf`: writes a synthetic DeepSeek model (real shapes, Q4_K_M format
//! mix, deterministic random weights; see `kt_model::synthetic`) to a GGUF file,
//! streaming the tensors so that files larger than memory can be made.

use std::fs::File;
use std::io::BufWriter;
use std::path::PathBuf;
use std::time::Instant;

use indicatif::{ProgressBar, ProgressStyle};
use kt_model::synthetic::{Preset, SyntheticModel, SyntheticOptions};

#[derive(clap::Args)]
pub struct Args {
    /// deepseek-v2-lite or deepseek-v3.
    #[arg(long, value_parser = parse_preset)]
    pub preset: Preset,
    /// Keep only the first N layers (the leading dense layers first).
    #[arg(long)]
    pub layers: Option<usize>,
    /// Seed of the weights.
    #[arg(long, default_value_t = SyntheticOptions::default().seed)]
    pub seed: u64,
    /// Output GGUF file.
    #[arg(long)]
    pub out: PathBuf,
    /// Threads quantizing the row pools (default: all cores, or KT_THREADS).
    #[arg(long)]
    pub threads: Option<usize>,
}

pub fn run(a: Args) -> Result<(), Box<dyn std::error::Error>> {
    crate::machine::pool(a.threads)?;
    let start = Instant::now();
    let opts = SyntheticOptions {
        layers: a.layers,
        seed: a.seed,
        ..SyntheticOptions::default()
    };
    let model = SyntheticModel::new(a.preset, &opts)?;
    let size = model.file_bytes()?;
    let file = File::create(&a.out).map_err(|e| format!("{}: {e}", a.out.display()))?;
    let bar = bytes_bar(model.data_bytes(), "writing tensors");
    let w = model.write(BufWriter::with_capacity(8 << 20, file), &mut |done| {
        bar.set_position(done)
    })?;
    w.into_inner()
        .map_err(|e| format!("{}: {}", a.out.display(), e.error()))?
        .sync_all()
        .map_err(|e| format!("{}: {e}", a.out.display()))?;
    bar.finish_and_clear();
    println!(
        "wrote {}: {} ({} layers, {} tensors, {:.2} GB) in {:.1} s",
        a.out.display(),
        a.preset,
        model.config().n_layers,
        model.n_tensors(),
        size as f64 / 1e9,
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

/// A preset by its command-line name.
pub fn parse_preset(name: &str) -> Result<Preset, String> {
    Preset::from_name(name).ok_or_else(|| {
        let names: Vec<&str> = Preset::ALL.iter().map(|p| p.name()).collect();
        format!("unknown preset {name:?} (one of: {})", names.join(", "))
    })
}

/// A progress bar over `total` bytes on stderr (hidden when stderr is not a terminal).
pub fn bytes_bar(total: u64, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(total);
    let style = ProgressStyle::with_template(
        "{msg} [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
    )
    .expect("a valid template")
    .progress_chars("=> ");
    bar.set_style(style);
    bar.set_message(what.to_owned());
    bar
}
