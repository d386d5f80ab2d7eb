//! `kt-bench gen-gguf`: the streamed file is byte for byte the in-memory synthetic model,
//! reads back as the preset, and runs as a `--model` file.

mod common;

use common::kt_bench;

use kt_model::config::DeepSeekConfig;
use kt_model::gguf::Gguf;
use kt_model::synthetic::{Preset, SyntheticModel, SyntheticOptions};

#[test]
fn streamed_file_equals_the_in_memory_model_and_runs() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v2lite-1.gguf");
    let p = path.to_str().unwrap();
    let r = kt_bench(&[
        "gen-gguf",
        "--preset",
        "deepseek-v2-lite",
        "--layers",
        "1",
        "--seed",
        "11",
        "--out",
        p,
    ]);
    let stdout = String::from_utf8_lossy(&r.stdout);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    assert!(stdout.contains("1 layers"), "{stdout}");

    let opts = SyntheticOptions {
        layers: Some(1),
        seed: 11,
        ..SyntheticOptions::default()
    };
    let m = SyntheticModel::new(Preset::DeepSeekV2Lite, &opts).unwrap();
    let in_memory = m.to_bytes(&mut |_| {}).unwrap();
    let on_disk = std::fs::read(&path).unwrap();
    assert_eq!(on_disk.len(), in_memory.len());
    assert!(on_disk == in_memory, "streamed and in-memory bytes differ");
    drop((on_disk, in_memory));

    let g = Gguf::open(&path).unwrap();
    let c = DeepSeekConfig::from_gguf(&g).unwrap();
    assert_eq!((c.n_layers, c.first_k_dense_replace), (1, 1));
    assert_eq!(c.vocab_size, 102_400);

    let r = kt_bench(&[
        "decode",
        "--model",
        p,
        "--prompt-len",
        "3",
        "--gen-len",
        "2",
        "--json",
    ]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let j: serde_json::Value = serde_json::from_slice(&r.stdout).unwrap();
    assert_eq!(j["layers"], 1);
}

#[test]
fn unknown_preset_is_an_error() {
    let r = kt_bench(&["gen-gguf", "--preset", "llama", "--out", "/tmp/never.gguf"]);
    assert!(!r.status.success());
    let stderr = String::from_utf8_lossy(&r.stderr);
    assert!(stderr.contains("unknown preset \"llama\""), "{stderr}");
    assert!(!std::path::Path::new("/tmp/never.gguf").exists());
}
