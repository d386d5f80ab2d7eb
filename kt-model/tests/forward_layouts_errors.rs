//! The forward pass on the older fused `attn_kv_b` layout (a GGUF rewritten here from the
//! BF16 fixture) and its typed errors on bad input.

mod forward_common;
mod gguf_common;

use forward_common::*;
use gguf_common::{contents, dsv3_dir, open, remove_meta, set_meta, write_gguf};
use kt_kernels::quant::QType;
use kt_model::deepseek::{DeepSeekModel, KvCache, LogitRows, MatmulMode};
use kt_model::gguf::{Gguf, Value};
use kt_model::ModelError;

/// The BF16 fixture with each layer's `attn_k_b` `[n, c, H]` (per head `W_uk^T`, c rows of
/// n) and `attn_v_b` `[c, v, H]` merged into llama.cpp's older `attn_kv_b` `[c, H*(n+v)]`
/// (per head: n rows of `W_uk`, then v rows of `W_uv`). Moving bf16 values is lossless.
fn fused_file() -> Vec<u8> {
    let src = open(&dsv3_dir().join("tiny-dsv3-bf16.gguf"));
    let (mut meta, tensors) = contents(&src);
    remove_meta(&mut meta, "deepseek2.attention.key_length_mla");
    remove_meta(&mut meta, "deepseek2.attention.value_length_mla");
    set_meta(&mut meta, "deepseek2.attention.key_length", Value::U32(96));
    set_meta(
        &mut meta,
        "deepseek2.attention.value_length",
        Value::U32(64),
    );
    set_meta(
        &mut meta,
        "deepseek2.attention.head_count_kv",
        Value::U32(4),
    );
    let (heads, n, v, c) = (4usize, 64usize, 64usize, 256usize);
    let mut out = Vec::new();
    for (name, qtype, dims, data) in tensors {
        if name.ends_with("attn_v_b.weight") {
            continue;
        }
        let Some(layer) = name.strip_suffix(".attn_k_b.weight") else {
            out.push((name, qtype, dims, data));
            continue;
        };
        assert_eq!((qtype, dims.as_slice()), (QType::BF16, &[n, c, heads][..]));
        let v_b = src
            .tensor(&format!("{layer}.attn_v_b.weight"))
            .unwrap()
            .data;
        let mut kv_b = Vec::with_capacity(heads * (n + v) * c * 2);
        for h in 0..heads {
            for i in 0..n {
                for r in 0..c {
                    let at = ((h * c + r) * n + i) * 2; // k_b[h][r][i] = W_uk[h][i][r]
                    kv_b.extend_from_slice(&data[at..at + 2]);
                }
            }
            kv_b.extend_from_slice(&v_b[h * v * c * 2..(h + 1) * v * c * 2]);
        }
        out.push((
            format!("{layer}.attn_kv_b.weight"),
            QType::BF16,
            vec![c, heads * (n + v)],
            kv_b,
        ));
    }
    write_gguf(&meta, &out)
}

/// Same weights in either layout: in the reference mode the absorbed query is the same f64
/// sum over the same products in the same order (the kernel's row dot for `attn_k_b`, the
/// transposed product over dequantized `attn_kv_b` rows), so the logits are bit-identical,
/// and both match HF.
#[test]
fn fused_kv_b_layout_gives_the_same_logits() {
    let dir = dsv3_dir();
    let fused = Gguf::from_bytes("fused.gguf", fused_file()).unwrap();
    let split = open(&dir.join("tiny-dsv3-bf16.gguf"));
    let (prompt, decode) = prompt_and_decode(&dir);
    let a = run_teacher_forced(
        &DeepSeekModel::from_gguf(&fused, MatmulMode::Reference).unwrap(),
        &prompt,
        &decode,
    );
    let b = run_teacher_forced(
        &DeepSeekModel::from_gguf(&split, MatmulMode::Reference).unwrap(),
        &prompt,
        &decode,
    );
    assert_eq!(a.logits, b.logits);
    let (_, pre) = npy_f32(&dir, "hf_prefill_logits.npy");
    let (_, dec) = npy_f32(&dir, "hf_decode_logits.npy");
    let hf: Vec<f32> = pre.iter().chain(&dec).copied().collect();
    assert_close("fused layout vs HF", &a.logits, &hf, 1e-5, 1e-4);

    // the quantized mode runs the fused layout too (BF16 activations where a kernel is used)
    let q = DeepSeekModel::from_gguf(&fused, MatmulMode::quantized_selected().unwrap()).unwrap();
    let run = run_teacher_forced(&q, &prompt, &decode);
    // one bf16 rounding of the activations: ~5e-3 per row (see forward_tiny_dsv3)
    assert_close(
        "fused layout, quantized mode vs HF",
        &run.logits,
        &hf,
        1e-2,
        5e-2,
    );
}

fn model_and_cache(g: &Gguf) -> (DeepSeekModel<'_>, KvCache) {
    let m = DeepSeekModel::from_gguf(g, MatmulMode::Reference).unwrap();
    let c = m.new_cache(8).unwrap();
    (m, c)
}

#[test]
fn bad_inputs_are_typed_errors() {
    let g = open(&dsv3_dir().join("tiny-dsv3-q4_k_m.gguf"));
    let (m, mut cache) = model_and_cache(&g);

    let e = m
        .forward(&[], &mut cache, LogitRows::All, None)
        .unwrap_err();
    assert!(matches!(e, ModelError::Forward { .. }), "{e}");

    let e = m
        .forward(&[3, 512], &mut cache, LogitRows::All, None)
        .unwrap_err();
    assert!(
        matches!(
            e,
            ModelError::TokenOutOfRange {
                index: 1,
                token: 512,
                vocab: 512
            }
        ),
        "{e}"
    );
    assert_eq!(cache.len(), 0, "a failed call caches nothing");

    m.forward(&[1, 2, 3, 4, 5], &mut cache, LogitRows::Last, None)
        .unwrap();
    let e = m
        .forward(&[6, 7, 8, 9], &mut cache, LogitRows::Last, None)
        .unwrap_err();
    assert!(
        matches!(
            e,
            ModelError::CacheFull {
                cached: 5,
                new: 4,
                capacity: 8
            }
        ),
        "{e}"
    );
    assert_eq!(cache.len(), 5);
    assert!(e.to_string().contains("capacity of 8"), "{e}");

    // a cache made for another geometry
    let mut other = m.config().clone();
    other.kv_lora_rank = 128;
    let mut wrong = KvCache::new(&other, 8).unwrap();
    let e = m
        .forward(&[1], &mut wrong, LogitRows::Last, None)
        .unwrap_err();
    assert!(matches!(e, ModelError::CacheMismatch { .. }), "{e}");
}

/// Truncating the cache and feeding the same tokens again gives the same logits (the rows
/// past `len` are overwritten, never read stale).
#[test]
fn truncate_and_refeed() {
    let g = open(&dsv3_dir().join("tiny-dsv3-q4_k_m.gguf"));
    let (m, mut cache) = model_and_cache(&g);
    let first = m
        .forward(&[10, 20, 30, 40], &mut cache, LogitRows::All, None)
        .unwrap();
    cache.truncate(2);
    assert_eq!(cache.len(), 2);
    let again = m
        .forward(&[30, 40], &mut cache, LogitRows::All, None)
        .unwrap();
    assert_eq!(again, first[2 * 512..]);
    // a different suffix changes the last row
    cache.truncate(2);
    let other = m
        .forward(&[31, 40], &mut cache, LogitRows::All, None)
        .unwrap();
    assert_ne!(other[512..], first[3 * 512..]);
    cache.clear();
    assert!(cache.is_empty());
    let fresh = m
        .forward(&[10, 20, 30, 40], &mut cache, LogitRows::All, None)
        .unwrap();
    assert_eq!(fresh, first);
}
