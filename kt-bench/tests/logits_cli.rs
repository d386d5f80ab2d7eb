//! `kt-bench logits` on the tiny-dsv3 BF16 fixture against HF transformers' logits and
//! greedy tokens (`reference.json`: prompt rows, then one row per decode step), and its
//! errors on bad input.

mod common;

use common::kt_bench;

use std::path::PathBuf;

use kt_kernels::util::npy::read_npy;

fn fixture_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/tiny-dsv3")
}

fn npy_f32(name: &str) -> (Vec<usize>, Vec<f32>) {
    let a = read_npy(fixture_dir().join(name)).unwrap();
    (a.shape.clone(), a.into_f32().unwrap())
}

fn npy_ids(name: &str) -> Vec<u32> {
    let a = read_npy(fixture_dir().join(name)).unwrap();
    a.into_i64()
        .unwrap()
        .into_iter()
        .map(|v| u32::try_from(v).unwrap())
        .collect()
}

fn rel_l2(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    let (mut num, mut den) = (0.0f64, 0.0f64);
    for (&x, &y) in a.iter().zip(b) {
        assert!(x.is_finite(), "non-finite logit {x}");
        num += (x as f64 - y as f64).powi(2);
        den += (y as f64).powi(2);
    }
    (num / den).sqrt()
}

fn ids_arg(ids: &[u32]) -> String {
    ids.iter().map(u32::to_string).collect::<Vec<_>>().join(",")
}

/// HF's f32 forward of the same (bf16-exact) weights: the reference mode agrees to
/// f32 rounding (the fixture's suggested 1e-5 rel L2), and greedy decoding gives HF's 8
/// tokens and the 9th (`next_token_after_decode` = 165).
#[test]
fn reference_logits_match_hf() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("logits.npy");
    let prompt = npy_ids("prompt_ids.npy");
    let gguf = fixture_dir().join("tiny-dsv3-bf16.gguf");
    let config = fixture_dir().join("config.json");
    let r = kt_bench(&[
        "logits",
        "--gguf",
        gguf.to_str().unwrap(),
        "--config",
        config.to_str().unwrap(),
        "--ids",
        &ids_arg(&prompt),
        "--decode",
        "8",
        "--reference",
        "--out",
        out.to_str().unwrap(),
    ]);
    let stdout = String::from_utf8_lossy(&r.stdout);
    assert!(
        r.status.success(),
        "stdout: {stdout}\nstderr: {}",
        String::from_utf8_lossy(&r.stderr)
    );

    let got = read_npy(&out).unwrap();
    assert_eq!(got.shape, [24, 512]);
    let got = got.into_f32().unwrap();
    let (pre_shape, pre) = npy_f32("hf_prefill_logits.npy");
    let (dec_shape, dec) = npy_f32("hf_decode_logits.npy");
    assert_eq!(
        (pre_shape.as_slice(), dec_shape.as_slice()),
        (&[16, 512][..], &[8, 512][..])
    );
    let hf: Vec<f32> = pre.into_iter().chain(dec).collect();
    let err = rel_l2(&got, &hf);
    eprintln!("kt-bench logits vs HF: rel L2 {err:.3e}");
    assert!(err <= 1e-5, "rel L2 {err:.3e}");

    let mut want = npy_ids("hf_decode_tokens.npy");
    want.push(165);
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("tokens: "))
        .unwrap_or_else(|| panic!("no tokens line in {stdout:?}"));
    let tokens: Vec<u32> = line.split(',').map(|t| t.parse().unwrap()).collect();
    assert_eq!(tokens, want);
}

/// The fast path runs too (shape and finiteness; its accuracy is the kernels' tests').
#[test]
fn quantized_mode_writes_prompt_rows() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("q.npy");
    let gguf = fixture_dir().join("tiny-dsv3-q4_k_m.gguf");
    let r = kt_bench(&[
        "logits",
        "--gguf",
        gguf.to_str().unwrap(),
        "--ids",
        "0,267,309,477",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let a = read_npy(&out).unwrap();
    assert_eq!(a.shape, [4, 512]);
    assert!(a.into_f32().unwrap().iter().all(|v| v.is_finite()));
    let stdout = String::from_utf8_lossy(&r.stdout);
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("tokens: "))
        .unwrap();
    assert_eq!(line.split(',').count(), 1, "no decode: only the next token");
}

fn assert_fails(args: &[&str], says: &str) {
    let r = kt_bench(args);
    let stderr = String::from_utf8_lossy(&r.stderr);
    assert!(!r.status.success(), "{args:?} succeeded");
    assert!(
        stderr.contains(says),
        "{args:?}: stderr {stderr:?} lacks {says:?}"
    );
}

#[test]
fn bad_inputs_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("x.npy");
    let out = out.to_str().unwrap();
    let gguf = fixture_dir().join("tiny-dsv3-bf16.gguf");
    let gguf = gguf.to_str().unwrap();
    assert_fails(
        &[
            "logits",
            "--gguf",
            "/nonexistent/model.gguf",
            "--ids",
            "1",
            "--out",
            out,
        ],
        "/nonexistent/model.gguf",
    );
    assert_fails(
        &["logits", "--gguf", gguf, "--ids", "1,512,3", "--out", out],
        "id 512 is outside the vocabulary of 512",
    );
    assert_fails(
        &["logits", "--gguf", gguf, "--ids", "1,x", "--out", out],
        "invalid value 'x'",
    );
    let config = fixture_dir().join("../../fixtures/tiny-dsv3/missing-config.json");
    assert_fails(
        &[
            "logits",
            "--gguf",
            gguf,
            "--config",
            config.to_str().unwrap(),
            "--ids",
            "1",
            "--out",
            out,
        ],
        "missing-config.json",
    );
    assert!(
        !std::path::Path::new(out).exists(),
        "no output after a failure"
    );
}
