//! kt-bench: kt's main program. Each subcommand lives in its own file and only parses
//! arguments, runs the library and prints a report (a table, or JSON with `--json`).

mod machine;
mod matmul;
mod moe;
mod pool_bench;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "kt-bench", version, about = "Benchmarks of kt, the CPU/GPU MoE engine for DeepSeek V2/V3")]
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
    /// The machine's memory read bandwidth and arithmetic peak, as kt measures them.
    Machine(machine::Args),
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Some(Command::Matmul(a)) => matmul::run(a),
        Some(Command::Moe(a)) => moe::run(a),
        Some(Command::Pool(a)) => pool_bench::run(a),
        Some(Command::Machine(a)) => machine::run(a),
        None => matmul::run(matmul::Args::default_quick()),
    };
    if let Err(e) = result {
        eprintln!("kt-bench: error: {e}");
        std::process::exit(1);
    }
}
