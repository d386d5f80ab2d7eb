//! llama.cpp's DeepSeek2 tensors as typed handles: both fixture models (split
//! `attn_k_b`/`attn_v_b`), the older fused `attn_kv_b` layout in a file made here from
//! the BF16 fixture, and missing or misshapen tensors (errors name them).

mod gguf_common;

use std::path::PathBuf;

use gguf_common::*;
use kt_kernels::quant::QType;
use kt_model::config::DeepSeekConfig;
use kt_model::gguf::{Gguf, Tensor, Value};
use kt_model::tensors::{Ffn, KvUp, ModelTensors, QueryProj};
use kt_model::ModelError;

fn dsv3(name: &str) -> PathBuf {
    dsv3_dir().join(name)
}

/// The handle is the file's tensor: same name, type, dims and bytes (same memory).
fn assert_is(g: &Gguf, t: &Tensor, name: &str, dims: &[usize]) {
    let in_file = g
        .tensor(name)
        .unwrap_or_else(|| panic!("{name} not in file"));
    assert_eq!((t.name, t.dims), (name, dims));
    assert_eq!(t.qtype, in_file.qtype);
    assert_eq!(t.data.as_ptr(), in_file.data.as_ptr(), "{name}");
    assert_eq!(t.data.len(), in_file.data.len(), "{name}");
}

#[test]
fn dsv3_tensors_load_with_their_shapes() {
    for file in ["tiny-dsv3-q4_k_m.gguf", "tiny-dsv3-bf16.gguf"] {
        let g = open(&dsv3(file));
        let c = DeepSeekConfig::from_gguf(&g).unwrap();
        let m = ModelTensors::from_gguf(&g, &c).unwrap();
        assert_is(&g, &m.token_embd, "token_embd.weight", &[256, 512]);
        assert_is(&g, &m.output_norm, "output_norm.weight", &[256]);
        assert_is(&g, &m.output, "output.weight", &[256, 512]);
        assert_eq!(m.layers.len(), 3);
        for (i, l) in m.layers.iter().enumerate() {
            let n = |s: &str| format!("blk.{i}.{s}");
            assert_is(&g, &l.attn_norm, &n("attn_norm.weight"), &[256]);
            assert_is(&g, &l.ffn_norm, &n("ffn_norm.weight"), &[256]);
            let QueryProj::LoRA { a, a_norm, b } = &l.attn.q else {
                panic!("{file} layer {i}: not LoRA")
            };
            assert_is(&g, a, &n("attn_q_a.weight"), &[256, 256]);
            assert_is(&g, a_norm, &n("attn_q_a_norm.weight"), &[256]);
            assert_is(&g, b, &n("attn_q_b.weight"), &[256, 4 * 96]);
            assert_is(
                &g,
                &l.attn.kv_a_mqa,
                &n("attn_kv_a_mqa.weight"),
                &[256, 256 + 32],
            );
            assert_is(&g, &l.attn.kv_a_norm, &n("attn_kv_a_norm.weight"), &[256]);
            let KvUp::Split { k_b, v_b } = &l.attn.kv_b else {
                panic!("{file} layer {i}: not split kv_b")
            };
            assert_is(&g, k_b, &n("attn_k_b.weight"), &[64, 256, 4]);
            assert_is(&g, v_b, &n("attn_v_b.weight"), &[256, 64, 4]);
            assert_is(&g, &l.attn.output, &n("attn_output.weight"), &[4 * 64, 256]);
            match (&l.ffn, i) {
                (Ffn::Dense(d), 0) => {
                    assert_is(&g, &d.gate, &n("ffn_gate.weight"), &[256, 512]);
                    assert_is(&g, &d.up, &n("ffn_up.weight"), &[256, 512]);
                    assert_is(&g, &d.down, &n("ffn_down.weight"), &[512, 256]);
                }
                (Ffn::Moe(e), 1 | 2) => {
                    assert_is(&g, &e.gate_inp, &n("ffn_gate_inp.weight"), &[256, 16]);
                    assert_is(
                        &g,
                        e.exp_probs_b.as_ref().unwrap(),
                        &n("exp_probs_b.bias"),
                        &[16],
                    );
                    assert_is(
                        &g,
                        &e.gate_exps,
                        &n("ffn_gate_exps.weight"),
                        &[256, 256, 16],
                    );
                    assert_is(&g, &e.up_exps, &n("ffn_up_exps.weight"), &[256, 256, 16]);
                    assert_is(
                        &g,
                        &e.down_exps,
                        &n("ffn_down_exps.weight"),
                        &[256, 256, 16],
                    );
                    let s = e.shared.as_ref().unwrap();
                    assert_is(&g, &s.gate, &n("ffn_gate_shexp.weight"), &[256, 256]);
                    assert_is(&g, &s.up, &n("ffn_up_shexp.weight"), &[256, 256]);
                    assert_is(&g, &s.down, &n("ffn_down_shexp.weight"), &[256, 256]);
                }
                _ => panic!("{file}: layer {i} has the wrong FFN kind"),
            }
        }
    }
}

#[test]
fn dsv2_tensors_have_a_direct_query_and_two_shared_experts() {
    let g = open(&dsv2_dir().join("tiny-dsv2-q4_k_m.gguf"));
    let c = DeepSeekConfig::from_gguf(&g).unwrap();
    let m = ModelTensors::from_gguf(&g, &c).unwrap();
    for (i, l) in m.layers.iter().enumerate() {
        let QueryProj::Direct { q } = &l.attn.q else {
            panic!("layer {i}: LoRA")
        };
        assert_is(&g, q, &format!("blk.{i}.attn_q.weight"), &[256, 384]);
        if let Ffn::Moe(e) = &l.ffn {
            assert!(e.exp_probs_b.is_none());
            let s = e.shared.as_ref().unwrap();
            assert_is(
                &g,
                &s.down,
                &format!("blk.{i}.ffn_down_shexp.weight"),
                &[512, 256],
            );
        }
    }
    assert!(matches!(m.layers[0].ffn, Ffn::Dense(_)) && matches!(m.layers[2].ffn, Ffn::Moe(_)));
}

fn bf16_at(t: &[u8], i: usize) -> [u8; 2] {
    [t[2 * i], t[2 * i + 1]]
}

/// The BF16 fixture rewritten as llama.cpp wrote DeepSeek files before MLA: one
/// `attn_kv_b` [c, H*(n+v)] per layer (head h: n key rows, then v value rows) built
/// from `attn_k_b` [n, c, H] (transposed) and `attn_v_b` [c, v, H], and per-head
/// key/value lengths in the metadata.
fn fused_kv_b_file() -> Vec<u8> {
    let src = open(&dsv3("tiny-dsv3-bf16.gguf"));
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
        assert_eq!(qtype, QType::BF16);
        let k_b = src.tensor(&name).unwrap().data;
        let v_b = src
            .tensor(&format!("{layer}.attn_v_b.weight"))
            .unwrap()
            .data;
        let mut kv_b = Vec::with_capacity(heads * (n + v) * c * 2);
        for h in 0..heads {
            for j in 0..n {
                for col in 0..c {
                    // k_b[h] has c rows of n: element (row col, column j).
                    kv_b.extend_from_slice(&bf16_at(k_b, (h * c + col) * n + j));
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

#[test]
fn the_older_fused_kv_b_layout_loads() {
    let g = Gguf::from_bytes("fused.gguf", fused_kv_b_file()).unwrap();
    let split = open(&dsv3("tiny-dsv3-bf16.gguf"));
    let c = DeepSeekConfig::from_gguf(&g).unwrap();
    assert_eq!(
        c,
        DeepSeekConfig::from_gguf(&split).unwrap(),
        "same hyper-parameters from either key layout"
    );
    let m = ModelTensors::from_gguf(&g, &c).unwrap();
    for (i, l) in m.layers.iter().enumerate() {
        let KvUp::Fused { kv_b } = &l.attn.kv_b else {
            panic!("layer {i}: not fused")
        };
        assert_is(&g, kv_b, &format!("blk.{i}.attn_kv_b.weight"), &[256, 512]);
        // Spot-check the handle's bytes against the split tensors: key row j of head h
        // is column j of k_b[h]; value rows are v_b[h]'s rows.
        let k_b = split
            .tensor(&format!("blk.{i}.attn_k_b.weight"))
            .unwrap()
            .data;
        let v_b = split
            .tensor(&format!("blk.{i}.attn_v_b.weight"))
            .unwrap()
            .data;
        for (h, j, col) in [(0, 0, 0), (1, 5, 200), (3, 63, 255), (2, 17, 1)] {
            let row = h * 128 + j;
            assert_eq!(
                bf16_at(kv_b.data, row * 256 + col),
                bf16_at(k_b, (h * 256 + col) * 64 + j)
            );
            let vrow = h * 128 + 64 + j;
            assert_eq!(
                bf16_at(kv_b.data, vrow * 256 + col),
                bf16_at(v_b, (h * 64 + j) * 256 + col)
            );
        }
    }
}

/// The q4_k_m fixture with its tensors edited.
fn edited(edit: impl FnOnce(&mut Vec<TensorSpec>)) -> Gguf {
    let (meta, mut tensors) = contents(&open(&dsv3("tiny-dsv3-q4_k_m.gguf")));
    edit(&mut tensors);
    Gguf::from_bytes("edited.gguf", write_gguf(&meta, &tensors)).unwrap()
}

fn load_err(g: &Gguf) -> ModelError {
    let c = DeepSeekConfig::from_gguf(g).unwrap();
    ModelTensors::from_gguf(g, &c).unwrap_err()
}

#[test]
fn a_missing_tensor_is_named() {
    for name in [
        "blk.2.ffn_up_exps.weight",
        "output.weight",
        "blk.0.attn_q_a_norm.weight",
        "blk.1.ffn_down_shexp.weight",
    ] {
        let g = edited(|t| t.retain(|x| x.0 != name));
        assert_eq!(
            load_err(&g).to_string(),
            format!("edited.gguf: tensor '{name}' is missing")
        );
    }
    let g = edited(|t| t.retain(|x| x.0 != "blk.1.exp_probs_b.bias"));
    assert!(load_err(&g)
        .to_string()
        .contains("'blk.1.exp_probs_b.bias (noaux_tc routing needs the score bias)' is missing"));
}

#[test]
fn a_misshapen_tensor_is_named() {
    let g = edited(|t| {
        let x = t
            .iter_mut()
            .find(|x| x.0 == "blk.1.ffn_gate_exps.weight")
            .unwrap();
        // The same bytes seen as 8 experts of 512 rows.
        x.2 = vec![256, 512, 8];
    });
    assert_eq!(
        load_err(&g).to_string(),
        "edited.gguf: tensor 'blk.1.ffn_gate_exps.weight': shape [256, 512, 8], expected [256, 256, 16] (ggml order, ne[0] first)"
    );
    let g = edited(|t| {
        let x = t
            .iter_mut()
            .find(|x| x.0 == "blk.2.attn_k_b.weight")
            .unwrap();
        x.2 = vec![64, 4, 256];
    });
    assert!(
        matches!(load_err(&g), ModelError::TensorShape { tensor, found, .. } if tensor == "blk.2.attn_k_b.weight" && found == [64, 4, 256])
    );
}

#[test]
fn half_of_the_split_kv_b_is_an_error() {
    let g = edited(|t| t.retain(|x| x.0 != "blk.1.attn_v_b.weight"));
    assert_eq!(
        load_err(&g).to_string(),
        "edited.gguf: layer 1: 'blk.1.attn_k_b.weight' is present but 'blk.1.attn_v_b.weight' is missing"
    );
    let g = edited(|t| t.retain(|x| !x.0.contains("attn_k_b") && !x.0.contains("attn_v_b")));
    assert_eq!(
        load_err(&g).to_string(),
        "edited.gguf: tensor 'blk.0.attn_kv_b.weight' is missing"
    );
}

#[test]
fn the_bias_may_have_the_bare_name() {
    let g = edited(|t| {
        for x in t.iter_mut().filter(|x| x.0.ends_with("exp_probs_b.bias")) {
            x.0 = x.0.trim_end_matches(".bias").to_owned();
        }
    });
    let c = DeepSeekConfig::from_gguf(&g).unwrap();
    let m = ModelTensors::from_gguf(&g, &c).unwrap();
    let Ffn::Moe(e) = &m.layers[2].ffn else {
        panic!()
    };
    assert_eq!(e.exp_probs_b.as_ref().unwrap().name, "blk.2.exp_probs_b");
}
