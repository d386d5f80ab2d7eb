//! The fast path (activations quantized to each weight format's `vec_dot_type` as ggml does)
//! against llama.cpp's native runs of the six tiny GGUFs: tiny-dsv2 BF16 and Q4_K_M, tiny-dsv3
//! BF16, Q4_K_M, Q5_K_M and Q2_K (`llamacpp_<q>_logits.npy`, made by llama.cpp 0.6.0-dev on
//! AVX2 with REPACK, 2 threads, F32 KV cache, flash attention off; docs/parity.md).
//!
//! Why the comparison is not one tolerance: the activation quantizers round to a grid (Q8_K,
//! Q8_0 codes; bf16 mantissas). Two engines that compute the same f32 function in a different
//! order (a different summation order in a matmul or the attention, another `exp`) produce
//! values one ulp apart; now and then such a value sits on a rounding boundary and one code
//! flips. That moves its row by ~1e-3 (bf16) to ~1e-2 (K-quants) and, through the KV cache,
//! every later row; a flipped router near-tie moves a row by ~0.3. llama.cpp does this to
//! itself: with flash attention on (same math, another attention order) it is 2.6e-2 to 1.1e-1
//! away from its own fixture on the quantized files, with greedy tokens changed
//! (docs/parity.md). So the tests check what the fast path owes: every row that routes like
//! llama.cpp is within the activation-quantization effect of llama.cpp's row; routing differs
//! only where llama.cpp's decision is a near-tie at the scale that quantization moves router
//! scores; kt's quantization noise is llama.cpp's; and on the scalar backend, whose quantizer
//! inputs are llama.cpp's to a few ulps (ggml's f32 order everywhere but inside the quantized dot
//! products, docs/parity.md) and so round to the same codes until the first flip, the rows before
//! that flip agree to f32 summation order. With `KT_KQUANT_ORDER=ggml`, which these tests set,
//! the quantized dot products follow llama.cpp's x86 order too on every backend (REPACK for
//! Q4_K, ggml's AVX2 vec_dot for Q5_K, Q6_K, Q4_1, Q5_1; AVX2 does so always), and the issue's
//! own figure is asserted: within 1e-2 and the same greedy tokens.

mod forward_common;
mod gguf_common;

use std::path::{Path, PathBuf};

use forward_common::*;
use gguf_common::{dsv2_dir, dsv3_dir, open};
use kt_kernels::cpu::{kquant_order, Isa, KquantOrder};
use kt_model::deepseek::linear::dequantize_vector;
use kt_model::deepseek::{DeepSeekModel, MatmulMode};
use kt_model::gguf::Gguf;

const VOCAB: usize = 512;
const ROWS: usize = 24;

/// One GGUF of the fixtures and what is known about llama.cpp's run of it.
struct Case {
    /// The fixture folder with llama.cpp's arrays.
    dir: PathBuf,
    /// The GGUF (in `dir` but for tiny-dsv2's BF16 file, from the shared fixtures).
    gguf: PathBuf,
    /// `llamacpp_<q>` of the fixture names.
    q: &'static str,
    /// llama.cpp's run of the same weights in f32 (no activation quantization).
    f32_run: &'static str,
    /// Rows where the scalar backend's quantizer inputs are llama.cpp's bits: before the first
    /// flipped code (found by dumping both engines' matmul inputs, docs/parity.md).
    scalar_exact: fn(usize) -> bool,
}

/// Per-row `||a - b|| / ||b||` of `[ROWS, VOCAB]` logits.
fn row_errors(a: &[f32], b: &[f32]) -> Vec<f64> {
    a.chunks_exact(VOCAB)
        .zip(b.chunks_exact(VOCAB))
        .map(|(x, y)| rel_l2_and_max_abs(x, y).0)
        .collect()
}

/// The scores a router ranks experts by, per row `[ROWS, n_experts]`: `sigmoid(l) + bias`
/// for noaux_tc (V3), the logits themselves for softmax greedy routing (V2; softmax keeps
/// their order).
fn selection_scores(logits: &[f32], bias: Option<&[f32]>) -> Vec<f64> {
    match bias {
        Some(b) => logits
            .chunks_exact(b.len())
            .flat_map(|row| {
                row.iter()
                    .zip(b)
                    .map(|(&l, &bb)| kt_kernels::ops::sigmoid(l) as f64 + bb as f64)
            })
            .collect(),
        None => logits.iter().map(|&l| l as f64).collect(),
    }
}

/// How far a row's routing decision is from changing: the gap between the last chosen and
/// the first rejected group score (group score: the sum of a group's two best experts, as
/// noaux_tc ranks groups), and between the last chosen and the first rejected expert among
/// the chosen groups; the smaller of the two.
fn decision_margin(scores: &[f64], n_group: usize, topk_group: usize, k: usize) -> f64 {
    let desc = |v: &mut Vec<f64>| v.sort_by(|a, b| b.total_cmp(a));
    let per_group = scores.len() / n_group;
    let mut margin = f64::INFINITY;
    let mut allowed: Vec<usize> = (0..n_group).collect();
    if n_group > 1 {
        let group_score = |g: usize| {
            let mut s = scores[g * per_group..(g + 1) * per_group].to_vec();
            desc(&mut s);
            s[0] + s[1]
        };
        allowed.sort_by(|&a, &b| group_score(b).total_cmp(&group_score(a)));
        margin = group_score(allowed[topk_group - 1]) - group_score(allowed[topk_group]);
        allowed.truncate(topk_group);
    }
    let mut s: Vec<f64> = allowed
        .iter()
        .flat_map(|&g| scores[g * per_group..(g + 1) * per_group].iter().copied())
        .collect();
    desc(&mut s);
    margin.min(s[k - 1] - s[k])
}

fn moe_bias(g: &Gguf, layer: usize) -> Option<Vec<f32>> {
    g.tensor(&format!("blk.{layer}.exp_probs_b.bias"))
        .map(|t| dequantize_vector(&t).unwrap())
}

fn check(case: &Case) {
    // llama.cpp's f32 order in the AVX512 K-quant kernels too (kt-kernels' `cpu::order`; the
    // AVX2 kernels follow it always). Read once per process: every test sets it first.
    std::env::set_var("KT_KQUANT_ORDER", "ggml");
    assert_eq!(kquant_order().unwrap(), KquantOrder::Ggml);
    let dir: &Path = &case.dir;
    let g = open(&case.gguf);
    let (prompt, decode) = prompt_and_decode(dir);
    let (_, native) = npy_f32(dir, &format!("llamacpp_{}_logits.npy", case.q));
    let (_, f32_run) = npy_f32(dir, case.f32_run);
    let (_, native_ids) = npy_ids(dir, &format!("llamacpp_{}_router_topk_idx.npy", case.q));
    // the size of the activation-quantization effect on each row: llama.cpp native vs f32
    let quant_effect = row_errors(&native, &f32_run);

    let reference = DeepSeekModel::from_gguf(&g, MatmulMode::Reference).unwrap();
    let c = reference.config().clone();
    let (k, first_moe) = (c.experts_per_tok, c.first_k_dense_replace);
    let exact_ref = run_teacher_forced(&reference, &prompt, &decode);

    for isa in Isa::available() {
        let m = DeepSeekModel::from_gguf(&g, MatmulMode::Quantized(isa)).unwrap();
        let run = run_teacher_forced(&m, &prompt, &decode);
        let name = case.gguf.file_name().unwrap_or_default().to_string_lossy();
        let what = format!("{name} {isa:?}");

        // 1. routing: a row may choose other experts than llama.cpp only where the decision
        // is closer than twice the change quantization makes to its scores (both engines
        // move them by up to that much, in their own directions).
        let mut flipped = Vec::new();
        for (j, ids) in run.router_ids.iter().enumerate() {
            let theirs = &native_ids[j * ROWS * k..(j + 1) * ROWS * k];
            let bias = moe_bias(&g, first_moe + j);
            let fast = selection_scores(&run.router_logits[j], bias.as_deref());
            let exact = selection_scores(&exact_ref.router_logits[j], bias.as_deref());
            let n_e = c.n_routed_experts;
            for row in router_mismatches(ids, theirs, k) {
                let span = row * n_e..(row + 1) * n_e;
                let moved = fast[span.clone()]
                    .iter()
                    .zip(&exact[span.clone()])
                    .map(|(a, b)| (a - b).abs())
                    .fold(0.0, f64::max);
                let margin = decision_margin(&fast[span], c.n_group, c.topk_group, k);
                assert!(
                    margin < 2.0 * moved,
                    "{what}: MoE layer {j} row {row} routes unlike llama.cpp with margin \
                     {margin:.3e} (quantization moves its scores by {moved:.3e})"
                );
                flipped.push(row);
            }
        }

        // 2. every row that routes like llama.cpp: within the quantization effect of llama.cpp's
        // row. Both runs are the f32 function plus an activation-quantization error of that
        // size; where their codes differ the errors are independent, so the rows differ by up
        // to twice it.
        let err = row_errors(&run.logits, &native);
        let kept: Vec<usize> = (0..ROWS).filter(|r| !flipped.contains(r)).collect();
        for &row in &kept {
            assert!(
                err[row] <= 2.0 * quant_effect[row],
                "{what} row {row}: rel L2 {:.3e} vs llama.cpp native, quantization effect {:.3e}",
                err[row],
                quant_effect[row]
            );
        }

        // 3. kt's quantization noise is llama.cpp's: over the same rows, the fast path's
        // distance to kt's own f32 function matches llama.cpp native's distance to its f32
        // run. Same quantizers on activations of one distribution, over thousands of logits,
        // give totals within a few percent (measured 0.99-1.03); a quantizer that were off
        // (another block size, truncation instead of rounding, none at all) moves the ratio
        // by 2x or more.
        let pick = |a: &[f32]| rows_except(a, VOCAB, &flipped);
        let own = rel_l2_and_max_abs(&pick(&run.logits), &pick(&exact_ref.logits)).0;
        let theirs = rel_l2_and_max_abs(&pick(&native), &pick(&f32_run)).0;
        assert!(
            (0.8..=1.25).contains(&(own / theirs)),
            "{what}: quantization noise {own:.3e}, llama.cpp's {theirs:.3e}"
        );

        // 4. the scalar backend's codes are llama.cpp's until the first flip: those rows differ
        // by f32 summation order only.
        if isa == Isa::Scalar {
            for row in (0..ROWS).filter(|&r| (case.scalar_exact)(r)) {
                assert!(
                    err[row] <= 1e-5,
                    "{what} row {row}: rel L2 {:.3e} vs llama.cpp native (limit 1e-5)",
                    err[row]
                );
            }
        }

        // the figures
        let total = rel_l2_and_max_abs(&run.logits, &native).0;
        let ours = argmax_rows(&run.logits, VOCAB);
        let agree = ours
            .iter()
            .zip(argmax_rows(&native, VOCAB))
            .filter(|(a, b)| **a == *b)
            .count();
        let worst = kept
            .iter()
            .map(|&r| err[r] / quant_effect[r])
            .fold(0.0, f64::max);
        // 5. the issue's own figure on every backend, whose quantized dot products follow
        // llama.cpp's f32 order on x86 with `KT_KQUANT_ORDER=ggml` (kt-kernels'
        // `scalar::ggml_order` models them; the scalar backend runs those models): within
        // 1e-2 of llama.cpp's logits and the same greedy tokens.
        assert!(
            total <= 1e-2 && agree == ROWS,
            "{what}: total rel L2 {total:.3e} (limit 1e-2), argmax {agree}/{ROWS}"
        );

        eprintln!(
            "{what}: total rel L2 {total:.3e}, max row {:.3e}, argmax {agree}/{ROWS}, \
             router flips at rows {flipped:?}, worst row / quantization effect {worst:.2}, \
             noise ratio {:.3}",
            err.iter().cloned().fold(0.0, f64::max),
            own / theirs
        );
    }
}

#[test]
fn dsv2_bf16() {
    let Some(gguf) = gguf_common::dsv2_bf16("dsv2_bf16") else {
        return;
    };
    check(&Case {
        dir: dsv2_dir(),
        gguf,
        q: "bf16",
        f32_run: "llamacpp_f32_logits.npy",
        // the first flip is in row 0 (layer 0's SwiGLU output, a bf16 rounding)
        scalar_exact: |_| false,
    });
}

#[test]
fn dsv2_q4_k_m() {
    check(&Case {
        dir: dsv2_dir(),
        gguf: dsv2_dir().join("tiny-dsv2-q4_k_m.gguf"),
        q: "q4_k_m",
        f32_run: "llamacpp_q4_k_m_dequant_f32_logits.npy",
        // row 4: one Q8_K code inside layer 2's routed experts (llama.cpp's SwiGLU output there
        // is 6.5e-5 of a code step from a rounding boundary); layer 2 is the last, so no later
        // row sees it
        scalar_exact: |row| row != 4,
    });
}

#[test]
fn dsv3_bf16() {
    check(&Case {
        dir: dsv3_dir(),
        gguf: dsv3_dir().join("tiny-dsv3-bf16.gguf"),
        q: "bf16",
        f32_run: "llamacpp_f32_logits.npy",
        // row 13's layer-0 attention output rounds one bf16 element the other way
        scalar_exact: |row| row < 14,
    });
}

#[test]
fn dsv3_q4_k_m() {
    check(&Case {
        dir: dsv3_dir(),
        gguf: dsv3_dir().join("tiny-dsv3-q4_k_m.gguf"),
        q: "q4_k_m",
        f32_run: "llamacpp_q4_k_m_dequant_f32_logits.npy",
        scalar_exact: |_| true,
    });
}

#[test]
fn dsv3_q5_k_m() {
    check(&Case {
        dir: dsv3_dir(),
        gguf: dsv3_dir().join("tiny-dsv3-q5_k_m.gguf"),
        q: "q5_k_m",
        f32_run: "llamacpp_q5_k_m_dequant_f32_logits.npy",
        // rows 5 and 6: layer 0's attention output (attn_v_b's Q8_K input) flips one code each
        scalar_exact: |row| row < 5,
    });
}

#[test]
fn dsv3_q2_k() {
    check(&Case {
        dir: dsv3_dir(),
        gguf: dsv3_dir().join("tiny-dsv3-q2_k.gguf"),
        q: "q2_k",
        f32_run: "llamacpp_q2_k_dequant_f32_logits.npy",
        // no flip: row 11's layer-2 attention output code (flipped while kt's attention summed in
        // f64) is llama.cpp's since the attention follows ggml's f32 order
        scalar_exact: |_| true,
    });
}
