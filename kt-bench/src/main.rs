//! kt-bench: kt's main program. Each subcommand lives in its own file and only parses
//! arguments, runs the library and prints a report (a table, or JSON with `--json`).

mod decode;
#[cfg(feature = "cuda")]
mod decode_hybrid;
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
mod dram_readings;
mod gemv_probe;
mod gen_gguf;
mod logits;
mod machine;
mod matmul;
mod moe;
mod moe_routing;
mod plan;
mod pool_bench;
#[cfg(any(feature = "cuda", test))]
mod prefetch_env;
mod probe_rounds;
mod read_ceiling;
mod reps;
mod split;
mod stats;
mod svg;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "kt-bench",
    version,
    about = "Benchmarks of kt, the CPU/GPU MoE engine for DeepSeek V2/V3"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Quantized matmul (GEMV and GEMM) throughput against the measured memory bandwidth and arithmetic peak.
    Matmul(matmul::Args),
    /// One DeepSeek MoE layer's routed experts through the fused operator: time per call, weight GB/s, TFLOP/s.
    Moe(moe::Args),
    /// Dispatch overhead of kt's pinned pool against rayon at decode granularity.
    Pool(pool_bench::Args),
    /// Where a small GEMV's time goes on many threads: quantize, hand-out, kernel, join (TSC stamps).
    GemvProbe(gemv_probe::Args),
    /// The machine's memory read bandwidth and arithmetic peak, as kt measures them.
    Machine(machine::Args),
    /// Logits of a GGUF model on given token ids (prompt rows, then greedy decode rows), as .npy.
    Logits(logits::Args),
    /// Writes a synthetic DeepSeek-V2-Lite / V3 GGUF (real shapes, Q4_K_M mix, random weights).
    GenGguf(gen_gguf::Args),
    /// Decode tokens/s of a DeepSeek model on the CPU (synthetic preset or GGUF).
    Decode(decode::Args),
    /// Prefill tokens/s of a DeepSeek model on the CPU (synthetic preset or GGUF).
    Prefill(decode::Args),
    /// Where placement rules put every module of a model, its format and each device's memory.
    Plan(plan::Args),
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Some(Command::Matmul(a)) => matmul::run(a),
        Some(Command::Moe(a)) => moe::run(a),
        Some(Command::Pool(a)) => pool_bench::run(a),
        Some(Command::GemvProbe(a)) => gemv_probe::run(a),
        Some(Command::Machine(a)) => machine::run(a),
        Some(Command::Logits(a)) => logits::run(a),
        Some(Command::GenGguf(a)) => gen_gguf::run(a),
        Some(Command::Decode(a)) => decode::run(a, decode::Mode::Decode),
        Some(Command::Prefill(a)) => decode::run(a, decode::Mode::Prefill),
        Some(Command::Plan(a)) => plan::run(a),
        None => decode::run(decode::Args::default_quick(), decode::Mode::Decode),
    };
    if let Err(e) = result {
        eprintln!("kt-bench: error: {e}");
        std::process::exit(1);
    }
}
