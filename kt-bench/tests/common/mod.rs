//! What the kt-bench CLI test binaries share (each `tests/*.rs` is its own crate and
//! includes this module).

use std::process::{Command, Output};

/// Runs the built `kt-bench` with `args` on two threads (the CI machine's cores) and
/// returns what it printed and its exit status.
pub fn kt_bench(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kt-bench"))
        .args(args)
        .env("KT_THREADS", "2")
        .output()
        .expect("kt-bench runs")
}
