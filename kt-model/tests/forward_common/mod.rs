//! Helpers of the forward-pass tests: fixture arrays, the fixture prompt and decode tokens,
//! and the comparison metrics the fixtures' `tolerances_suggested` are stated in.
#![allow(dead_code)]

use std::path::Path;

use kt_kernels::util::npy::read_npy;
use kt_model::deepseek::{DeepSeekModel, ForwardTrace, LogitRows};

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
    assert!(
        r <= rel && m <= abs,
        "{what}: rel L2 {r:.3e} (limit {rel:.0e}), max abs {m:.3e} (limit {abs:.0e})"
    );
}

/// Row-wise argmax, lowest index on ties.
pub fn argmax_rows(logits: &[f32], vocab: usize) -> Vec<u32> {
    logits
        .chunks_exact(vocab)
        .map(kt_model::deepseek::argmax)
        .collect()
}

/// Logits and routing of the fixtures' 24 rows: the prompt as one batch (all rows), then
/// each decode token alone (teacher forcing).
pub struct Run {
    /// `[24, vocab]`
    pub logits: Vec<f32>,
    /// Per MoE layer, ids `[24, k]` sorted ascending per row, and the matching weights.
    pub router_ids: Vec<Vec<u32>>,
    pub router_weights: Vec<Vec<f32>>,
    pub router_logits: Vec<Vec<f32>>,
    /// The residual stream after each layer for the prompt rows, `[layers][16 * hidden]`.
    pub prompt_layer_outputs: Vec<Vec<f32>>,
}

pub fn run_teacher_forced(m: &DeepSeekModel, prompt: &[u32], decode: &[u32]) -> Run {
    let mut cache = m.new_cache(prompt.len() + decode.len()).unwrap();
    let mut run = Run {
        logits: Vec::new(),
        router_ids: Vec::new(),
        router_weights: Vec::new(),
        router_logits: Vec::new(),
        prompt_layer_outputs: Vec::new(),
    };
    let batches = std::iter::once(prompt).chain(decode.chunks(1));
    for (i, batch) in batches.enumerate() {
        let mut trace = ForwardTrace::default();
        let logits = m
            .forward(batch, &mut cache, LogitRows::All, Some(&mut trace))
            .unwrap();
        run.logits.extend_from_slice(&logits);
        if i == 0 {
            run.prompt_layer_outputs = trace.layer_outputs;
            let n = trace.routing.len();
            run.router_ids = vec![Vec::new(); n];
            run.router_weights = vec![Vec::new(); n];
            run.router_logits = vec![Vec::new(); n];
        }
        let k = m.config().experts_per_tok;
        for (j, (_, r)) in trace.routing.into_iter().enumerate() {
            let (mut ids, mut w) = (r.ids, r.weights);
            kt_kernels::ops::sort_topk_by_expert(&mut ids, &mut w, k).unwrap();
            run.router_ids[j].extend(ids);
            run.router_weights[j].extend(w);
            run.router_logits[j].extend(r.logits);
        }
    }
    run
}

/// Positions (of `n_pos`) where the sorted expert sets of `a` and `b` (`[n_pos, k]`) differ.
pub fn router_mismatches(a: &[u32], b: &[u32], k: usize) -> Vec<usize> {
    a.chunks_exact(k)
        .zip(b.chunks_exact(k))
        .enumerate()
        .filter(|(_, (x, y))| x != y)
        .map(|(p, _)| p)
        .collect()
}

/// `a[rows]` of `[n, width]` arrays, keeping only rows not in `skip`.
pub fn rows_except(a: &[f32], width: usize, skip: &[usize]) -> Vec<f32> {
    a.chunks_exact(width)
        .enumerate()
        .filter(|(p, _)| !skip.contains(p))
        .flat_map(|(_, r)| r.iter().copied())
        .collect()
}
