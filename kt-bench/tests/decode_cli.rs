//! `kt-bench decode` / `prefill` (and a bare `kt-bench`) with tiny settings: the JSON
//! report's fields, determinism of greedy and seeded sampling, GGUF files as models,
//! and errors.

mod common;

use common::kt_bench;

use std::path::PathBuf;
use std::time::Instant;

use serde_json::Value;

fn ok_json(args: &[&str]) -> Value {
    let r = kt_bench(args);
    let stdout = String::from_utf8_lossy(&r.stdout);
    assert!(
        r.status.success(),
        "{args:?}\nstdout: {stdout}\nstderr: {}",
        String::from_utf8_lossy(&r.stderr)
    );
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{e}: {stdout:?}"))
}

fn tiny_q4() -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures/tiny-dsv3/tiny-dsv3-q4_k_m.gguf")
        .to_str()
        .unwrap()
        .to_owned()
}

fn tokens(j: &Value) -> Vec<u64> {
    j["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_u64().unwrap())
        .collect()
}

#[test]
fn decode_on_synthetic_v2_lite_reports_json() {
    let j = ok_json(&[
        "decode",
        "--model",
        "deepseek-v2-lite",
        "--layers",
        "2",
        "--prompt-len",
        "4",
        "--gen-len",
        "3",
        "--threads",
        "2",
        "--repetitions",
        "3",
        "--json",
    ]);
    assert_eq!(j["mode"], "decode");
    assert_eq!(j["rules"], "cpu");
    assert_eq!(j["prompt_len"], 4);
    assert_eq!(j["gen_len"], 3);
    assert_eq!(j["threads"], 2);
    assert_eq!(j["layers"], 2);
    assert_eq!(j["matmul"], "quantized");
    let tps = j["tokens_per_s"].as_f64().unwrap();
    assert!(tps > 0.0 && tps.is_finite());
    assert_eq!(j["tokens_per_s"], j["decode_tokens_per_s"]);
    // the rate is the mean of the three repetitions', each of them a real rate
    let reps = &j["decode_repetitions"];
    let samples: Vec<f64> = reps["samples"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    assert_eq!(samples.len(), 3);
    assert!(samples.iter().all(|r| *r > 0.0 && r.is_finite()));
    let mean = samples.iter().sum::<f64>() / 3.0;
    assert!((reps["mean"].as_f64().unwrap() - mean).abs() <= 1e-9 * mean);
    assert_eq!(reps["mean"], j["decode_tokens_per_s"]);
    assert!(reps["sd"].as_f64().unwrap() >= 0.0);
    assert!(j["decode_timed_tokens_per_s"].as_f64().unwrap() > 0.0);
    assert!(j["prefill_tokens_per_s"].as_f64().unwrap() > 0.0);
    assert!(j["split"]["total_s"].as_f64().unwrap() > 0.0);
    let t = tokens(&j);
    assert_eq!(t.len(), 3);
    assert!(t.iter().all(|&id| id < 102_400));
}

#[test]
fn prefill_reports_the_prompt_rate() {
    let j = ok_json(&[
        "prefill",
        "--model",
        &tiny_q4(),
        "--prompt-len",
        "12",
        "--json",
    ]);
    assert_eq!(j["mode"], "prefill");
    assert_eq!(j["gen_len"], 0);
    assert_eq!(j["tokens_per_s"], j["prefill_tokens_per_s"]);
    assert!(j["decode_tokens_per_s"].is_null());
    assert!(j["decode_repetitions"].is_null());
    assert!(tokens(&j).is_empty());
}

/// Greedy runs repeat exactly, in both matmul modes; a seeded sampler repeats with its
/// seed and wanders off greedy at a high temperature.
#[test]
fn runs_are_deterministic() {
    let m = tiny_q4();
    let base = [
        "decode",
        "--model",
        m.as_str(),
        "--prompt-len",
        "6",
        "--gen-len",
        "12",
        "--json",
    ];
    let run = |extra: &[&str]| {
        let args: Vec<&str> = base.iter().chain(extra).copied().collect();
        tokens(&ok_json(&args))
    };
    let greedy = run(&[]);
    assert_eq!(greedy, run(&[]));
    let reference = run(&["--reference"]);
    assert_eq!(reference, run(&["--reference"]));
    let hot = ["--temperature", "5", "--top-p", "1", "--seed", "3"];
    let sampled = run(&hot);
    assert_eq!(sampled, run(&hot));
    assert_ne!(
        sampled, greedy,
        "temperature 5 over 512 tokens follows greedy 12 times"
    );
}

#[test]
fn text_report_names_the_rates() {
    let r = kt_bench(&[
        "decode",
        "--model",
        &tiny_q4(),
        "--prompt-len",
        "5",
        "--gen-len",
        "2",
    ]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let s = String::from_utf8_lossy(&r.stdout);
    assert!(s.contains("prefill: 5 tokens"), "{s}");
    assert!(s.contains("decode:  2 tokens"), "{s}");
}

#[test]
fn bad_arguments_are_errors() {
    for (args, says) in [
        (vec!["decode", "--model", "deepseek-v9"], "neither a preset"),
        (
            vec!["decode", "--model", "deepseek-v2-lite", "--layers", "0"],
            "n_layers",
        ),
        (
            vec!["decode", "--model", "/nonexistent.gguf"],
            "/nonexistent.gguf",
        ),
        (
            vec!["decode", "--model", "deepseek-v2-lite", "--gen-len", "0"],
            "--gen-len",
        ),
        (
            vec!["decode", "--model", "deepseek-v2-lite", "--temperature=-1"],
            "temperature",
        ),
        (
            vec![
                "decode",
                "--model",
                "deepseek-v2-lite",
                "--repetitions",
                "0",
            ],
            "--repetitions",
        ),
        (
            vec![
                "decode",
                "--model",
                "deepseek-v2-lite",
                "--layers",
                "2",
                "--defer-experts",
                "2",
            ],
            "--defer-experts needs hybrid rules",
        ),
        (
            vec![
                "decode",
                "--model",
                "deepseek-v2-lite",
                "--layers",
                "2",
                "--decode-resident",
                "on",
            ],
            "--decode-resident on need",
        ),
    ] {
        let r = kt_bench(&args);
        let stderr = String::from_utf8_lossy(&r.stderr);
        assert!(!r.status.success(), "{args:?} succeeded");
        assert!(stderr.contains(says), "{args:?}: {stderr:?} lacks {says:?}");
    }
}

/// A bare `kt-bench` decodes on a few synthetic V2-Lite layers, in well under a minute
/// on 2 cores (seconds on the machines measured; the bound only catches a runaway).
#[test]
fn bare_kt_bench_runs_a_short_decode() {
    let t = Instant::now();
    let r = kt_bench(&[]);
    let secs = t.elapsed().as_secs_f64();
    let s = String::from_utf8_lossy(&r.stdout);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    eprintln!("bare kt-bench: {secs:.1} s\n{s}");
    assert!(s.contains("deepseek-v2-lite (synthetic"), "{s}");
    assert!(s.contains("decode:  16 tokens"), "{s}");
    assert!(secs < 120.0, "bare kt-bench took {secs:.0} s");
}
