//! The time split of `kt-bench decode/prefill`: per-stage and per-layer times in the JSON,
//! the routed experts' bandwidth against the DRAM probe, the `--svg` chart and `--rules`.

mod common;

use common::kt_bench;

use std::path::PathBuf;

use serde_json::Value;

const STAGES: [&str; 6] = [
    "attention",
    "router",
    "routed_experts",
    "shared_or_dense_mlp",
    "norms_other",
    "lm_head",
];

fn tiny_q4() -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures/tiny-dsv3/tiny-dsv3-q4_k_m.gguf")
        .to_str()
        .unwrap()
        .to_owned()
}

fn stage(v: &Value, name: &str) -> f64 {
    v[name]
        .as_f64()
        .unwrap_or_else(|| panic!("{name} missing in {v}"))
}

#[test]
fn json_split_covers_every_layer_and_stage() {
    let dir = tempfile::tempdir().unwrap();
    let svg = dir.path().join("split.svg");
    let args = [
        "decode",
        "--model",
        &tiny_q4(),
        "--prompt-len",
        "6",
        "--gen-len",
        "4",
        "--threads",
        "2",
        "--json",
        "--svg",
        svg.to_str().unwrap(),
    ];
    let r = kt_bench(&args);
    let stdout = String::from_utf8_lossy(&r.stdout);
    assert!(
        r.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&r.stderr)
    );
    let j: Value = serde_json::from_str(stdout.trim()).unwrap();
    let layers = j["layers"].as_u64().unwrap() as usize;
    assert_eq!(j["split"]["measured"], true);
    assert!(j["dram_gbps"].as_f64().unwrap() > 0.0);
    for (phase, tokens, calls) in [("prefill", 6, 1), ("decode", 4, 4)] {
        let p = &j["split"][phase];
        assert_eq!(p["tokens"], tokens, "{phase}");
        assert_eq!(p["calls"], calls, "{phase}");
        let per_layer = p["per_layer_s"].as_array().unwrap();
        assert_eq!(per_layer.len(), layers, "{phase}");
        let stages = &p["stages_s"];
        let mut sum = 0.0;
        for s in STAGES {
            let layer_sum: f64 =
                per_layer.iter().map(|l| stage(l, s)).sum::<f64>() + stage(&p["head_s"], s);
            assert!((layer_sum - stage(stages, s)).abs() <= 1e-9, "{phase} {s}");
            sum += stage(stages, s);
        }
        for s in ["attention", "routed_experts", "router", "lm_head"] {
            assert!(stage(stages, s) > 0.0, "{phase} {s}: {stages}");
        }
        assert!((sum - p["timed_s"].as_f64().unwrap()).abs() <= 1e-9);
        assert!(
            sum <= p["wall_s"].as_f64().unwrap() * (1.0 + 1e-9),
            "{phase}: stages exceed the wall time"
        );
        assert!(p["routed_bytes_per_token"].as_f64().unwrap() > 0.0);
        let gbps = p["routed_gbps"].as_f64().unwrap();
        let frac = p["routed_bandwidth_fraction"].as_f64().unwrap();
        assert!((frac - gbps / j["dram_gbps"].as_f64().unwrap()).abs() <= 1e-9 * frac.max(1.0));
    }
    let chart = std::fs::read_to_string(&svg).unwrap();
    assert!(chart.starts_with("<svg") && chart.trim_end().ends_with("</svg>"));
    for l in 0..layers {
        assert!(
            chart.contains(&format!(">L{l}</text>")),
            "layer {l} has no bar"
        );
    }
    assert!(chart.contains(">head</text>"));
}

#[test]
fn prefill_without_decode_has_no_decode_split() {
    let args = [
        "prefill",
        "--model",
        &tiny_q4(),
        "--prompt-len",
        "8",
        "--threads",
        "2",
        "--json",
    ];
    let r = kt_bench(&args);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let j: Value = serde_json::from_str(String::from_utf8_lossy(&r.stdout).trim()).unwrap();
    assert_eq!(j["gen_len"], 0);
    assert!(j["split"]["decode"].is_null());
    assert_eq!(j["split"]["prefill"]["tokens"], 8);
}

#[test]
fn text_report_shows_the_split_and_rules_files_are_placed_or_refused() {
    let r = kt_bench(&[
        "decode",
        "--model",
        &tiny_q4(),
        "--prompt-len",
        "3",
        "--gen-len",
        "2",
        "--rules",
        "cpu",
    ]);
    let s = String::from_utf8_lossy(&r.stdout);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    assert!(s.contains("rules cpu") && s.contains("decode split"), "{s}");
    for st in STAGES {
        assert!(s.contains(st), "{st} missing: {s}");
    }
    assert!(
        s.contains("% of the") && s.contains("DRAM read bandwidth"),
        "{s}"
    );

    // A shipped CPU rules file places every module of the (V3-shaped) tiny model on the CPU.
    let cpu_rules = concat!(env!("CARGO_MANIFEST_DIR"), "/../rules/deepseek-v3-cpu.yaml");
    let r = kt_bench(&[
        "decode",
        "--model",
        &tiny_q4(),
        "--prompt-len",
        "3",
        "--gen-len",
        "1",
        "--rules",
        cpu_rules,
    ]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    assert!(String::from_utf8_lossy(&r.stdout).contains("deepseek-v3-cpu.yaml"));

    // Attention on a GPU: refused, naming a module and the device. (The shipped hybrid files
    // ask for int4_g128, which the tiny model's 288-wide rows cannot hold: `kt-bench plan` says so.)
    let hybrid = std::env::temp_dir().join(format!("kt-hybrid-{}.yaml", std::process::id()));
    std::fs::write(
        &hybrid,
        "description: test\nmodels: [deepseek-v3]\ndevices: [cpu, \"cuda:0\"]\nrules:\n  \
         - match: {kind: attention}\n    replace: {device: \"cuda:0\", format: bf16}\n  \
         - match: {name: '.*'}\n    replace: {device: cpu, format: gguf}\n",
    )
    .unwrap();
    let r = kt_bench(&[
        "decode",
        "--model",
        &tiny_q4(),
        "--rules",
        hybrid.to_str().unwrap(),
    ]);
    let _ = std::fs::remove_file(&hybrid);
    let e = String::from_utf8_lossy(&r.stderr);
    assert!(!r.status.success());
    assert!(
        e.contains("goes to cuda:0") && e.contains("blk.0.attn"),
        "{e}"
    );

    // A missing file is an error naming it.
    let r = kt_bench(&[
        "decode",
        "--model",
        &tiny_q4(),
        "--rules",
        "/nonexistent/rules.yaml",
    ]);
    let e = String::from_utf8_lossy(&r.stderr);
    assert!(!r.status.success());
    assert!(e.contains("/nonexistent/rules.yaml"), "{e}");
}
