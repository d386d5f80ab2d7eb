//! Helpers of the forward-pass tests: fixture arrays, the fixture prompt and decode tokens,
//! and the comparison metrics the fixtures' `tolerances_suggested` are stated in.
#![allow(dead_code)]

use std::path::Path;

use kt_kernels::util::npy::read_npy;

/// An f32 array of a fixture folder, with its shape.
pub fn npy_f32(dir: &Path, name: &str) -> (Vec<usize>, Vec<f32>) {
    let path = dir.join(name);
    let a = read_npy(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let shape = a.shape.clone();
    (shape, a.into_f32().unwrap())
}

/// An integer array (i32 or i64) of a fixture folder as u32 ids.
pub fn npy_ids(dir: &Path, name: &str) -> (Vec<usize>, Vec<u32>) {
    let path = dir.join(name);
    let a = read_npy(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let shape = a.shape.clone();
    let ids = a
        .into_i64()
        .unwrap()
        .into_iter()
        .map(|v| u32::try_from(v).expect("id fits u32"))
        .collect();
    (shape, ids)
}

/// The 16 prompt ids and the 8 decode tokens HF generated after them.
pub fn prompt_and_decode(dir: &Path) -> (Vec<u32>, Vec<u32>) {
    (
        npy_ids(dir, "prompt_ids.npy").1,
        npy_ids(dir, "hf_decode_tokens.npy").1,
    )
}

/// `||a - b|| / ||b||` and `max |a - b|`.
pub fn rel_l2_and_max_abs(a: &[f32], b: &[f32]) -> (f64, f64) {
    assert_eq!(a.len(), b.len(), "lengths");
    let (mut num, mut den, mut max) = (0.0f64, 0.0f64, 0.0f64);
    for (&x, &y) in a.iter().zip(b) {
        assert!(x.is_finite(), "non-finite output {x}");
        let d = (x as f64 - y as f64).abs();
        num += d * d;
        den += y as f64 * y as f64;
        max = max.max(d);
    }
    ((num / den).sqrt(), max)
}

/// Asserts `rel_l2 <= rel` and `max_abs <= abs`, printing both (for the report).
pub fn assert_close(what: &str, a: &[f32], b: &[f32], rel: f64, abs: f64) {
    let (r, m) = rel_l2_and_max_abs(a, b);
    eprintln!("{what}: rel L2 {r:.3e}, max abs {m:.3e}");
    assert!(r <= rel && m <= abs, "{what}: rel L2 {r:.3e} (limit {rel:.0e}), max abs {m:.3e} (limit {abs:.0e})");
}

/// Row-wise argmax, lowest index on ties.
pub fn argmax_rows(logits: &[f32], vocab: usize) -> Vec<u32> {
    logits.chunks_exact(vocab).map(kt_model::deepseek::argmax).collect()
}
