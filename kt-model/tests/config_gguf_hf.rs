//! Hyper-parameters from GGUF metadata and from config.json, for both fixture models
//! (which must agree), for the Hub's and transformers 5's rope formats, for llama.cpp's
//! older key layout, and with deliberately wrong inputs (errors name the field).

mod gguf_common;

use std::path::{Path, PathBuf};

use gguf_common::*;
use kt_model::config::{DeepSeekConfig, ScoringFunc, TopkMethod, YarnScaling};
use kt_model::gguf::{Gguf, Value};
use kt_model::ModelError;
use serde_json::Value as Json;

/// What tiny-dsv3/config.json says, written out by hand.
fn dsv3_expected() -> DeepSeekConfig {
    DeepSeekConfig {
        vocab_size: 512,
        hidden_size: 256,
        n_layers: 3,
        n_heads: 4,
        q_lora_rank: Some(256),
        kv_lora_rank: 256,
        qk_nope_head_dim: 64,
        qk_rope_head_dim: 32,
        v_head_dim: 64,
        intermediate_size: 512,
        moe_intermediate_size: 256,
        n_routed_experts: 16,
        n_shared_experts: 1,
        experts_per_tok: 4,
        first_k_dense_replace: 1,
        n_group: 4,
        topk_group: 2,
        routed_scaling_factor: 2.5,
        norm_topk_prob: true,
        scoring: ScoringFunc::Sigmoid,
        topk_method: TopkMethod::NoauxTc,
        rms_norm_eps: 1e-6,
        rope_theta: 10000.0,
        rope_scaling: Some(YarnScaling {
            factor: 4.0,
            original_max_position_embeddings: 4096,
            beta_fast: 32.0,
            beta_slow: 1.0,
            mscale: 1.0,
            mscale_all_dim: 1.0,
        }),
        max_position_embeddings: 16384,
        bos_token_id: Some(0),
        eos_token_id: Some(1),
    }
}

/// What tiny-dsv2/config.json says (V2-Lite style: no query LoRA, softmax, greedy).
fn dsv2_expected() -> DeepSeekConfig {
    DeepSeekConfig {
        q_lora_rank: None,
        n_shared_experts: 2,
        experts_per_tok: 6,
        n_group: 1,
        topk_group: 1,
        routed_scaling_factor: 1.0,
        norm_topk_prob: false,
        scoring: ScoringFunc::Softmax,
        topk_method: TopkMethod::Greedy,
        rope_scaling: Some(YarnScaling {
            factor: 40.0,
            original_max_position_embeddings: 4096,
            beta_fast: 32.0,
            beta_slow: 1.0,
            mscale: 0.707,
            mscale_all_dim: 0.707,
        }),
        max_position_embeddings: 163840,
        ..dsv3_expected()
    }
}

/// Equal, except mscale / mscale_all_dim within a relative 1e-6 (the GGUF keeps
/// 0.1 * mscale_all_dim as f32; dividing by 0.1 is a few ulps off).
fn assert_same(a: &DeepSeekConfig, b: &DeepSeekConfig) {
    let (ya, yb) = (a.rope_scaling.unwrap(), b.rope_scaling.unwrap());
    for (x, y) in [
        (ya.mscale, yb.mscale),
        (ya.mscale_all_dim, yb.mscale_all_dim),
    ] {
        assert!((x - y).abs() <= 1e-6 * y.abs(), "mscale {x} vs {y}");
    }
    let strip = |c: &DeepSeekConfig| {
        let mut c = c.clone();
        let y = c.rope_scaling.as_mut().unwrap();
        (y.mscale, y.mscale_all_dim) = (0.0, 0.0);
        c
    };
    assert_eq!(strip(a), strip(b));
}

fn dsv3_q4() -> PathBuf {
    dsv3_dir().join("tiny-dsv3-q4_k_m.gguf")
}

fn dsv2_q4() -> PathBuf {
    dsv2_dir().join("tiny-dsv2-q4_k_m.gguf")
}

#[test]
fn hf_configs_of_both_fixtures() {
    assert_eq!(
        DeepSeekConfig::from_hf_file(dsv3_dir().join("config.json")).unwrap(),
        dsv3_expected()
    );
    assert_eq!(
        DeepSeekConfig::from_hf_file(dsv2_dir().join("config.json")).unwrap(),
        dsv2_expected()
    );
}

#[test]
fn gguf_configs_of_both_fixtures() {
    for f in ["tiny-dsv3-q4_k_m.gguf", "tiny-dsv3-bf16.gguf"] {
        assert_same(
            &DeepSeekConfig::from_gguf(&open(&dsv3_dir().join(f))).unwrap(),
            &dsv3_expected(),
        );
    }
    let dsv2_bf16 = gguf_common::dsv2_bf16("gguf_configs_of_both_fixtures (its BF16 part)");
    for path in std::iter::once(dsv2_q4()).chain(dsv2_bf16) {
        assert_same(
            &DeepSeekConfig::from_gguf(&open(&path)).unwrap(),
            &dsv2_expected(),
        );
    }
}

#[test]
fn gguf_and_hf_agree_for_both_fixtures() {
    for (gguf, dir) in [(dsv3_q4(), dsv3_dir()), (dsv2_q4(), dsv2_dir())] {
        let both = DeepSeekConfig::from_gguf_and_hf(&open(&gguf), dir.join("config.json")).unwrap();
        let hf = DeepSeekConfig::from_hf_file(dir.join("config.json")).unwrap();
        assert_same(&both, &hf);
    }
}

fn edited_json(dir: &Path, src: &Path, edit: impl FnOnce(&mut Json)) -> PathBuf {
    let mut j: Json = serde_json::from_str(&std::fs::read_to_string(src).unwrap()).unwrap();
    edit(&mut j);
    let path = dir.join("config.json");
    std::fs::write(&path, serde_json::to_string_pretty(&j).unwrap()).unwrap();
    path
}

#[test]
fn an_edited_config_names_the_field_that_disagrees() {
    let tmp = tempfile::tempdir().unwrap();
    let g = open(&dsv3_q4());
    let src = dsv3_dir().join("config.json");
    type Edit = Box<dyn FnOnce(&mut Json)>;
    let cases: Vec<(&str, Edit, &str)> = vec![
        (
            "n_routed_experts",
            Box::new(|j| j["n_routed_experts"] = 32.into()),
            "GGUF has 16, config.json has 32",
        ),
        (
            "hidden_size",
            Box::new(|j| j["hidden_size"] = 512.into()),
            "GGUF has 256, config.json has 512",
        ),
        (
            "q_lora_rank",
            Box::new(|j| j["q_lora_rank"] = Json::Null),
            "GGUF has Some(256), config.json has None",
        ),
        (
            "qk_nope_head_dim",
            Box::new(|j| {
                j["qk_nope_head_dim"] = 32.into();
                j["qk_head_dim"] = 64.into();
            }),
            "GGUF has 64, config.json has 32",
        ),
        (
            "rms_norm_eps",
            Box::new(|j| j["rms_norm_eps"] = 1e-5.into()),
            "GGUF has 1e-6, config.json has 1e-5",
        ),
        (
            "rope_scaling.factor",
            Box::new(|j| j["rope_parameters"]["factor"] = 8.0.into()),
            "GGUF has 4.0, config.json has 8.0",
        ),
        (
            "rope_scaling.mscale_all_dim",
            Box::new(|j| j["rope_parameters"]["mscale_all_dim"] = 0.5.into()),
            "GGUF has 1.0, config.json has 0.5",
        ),
        (
            "norm_topk_prob",
            Box::new(|j| j["norm_topk_prob"] = false.into()),
            "GGUF has true, config.json has false",
        ),
        (
            "scoring",
            Box::new(|j| j["scoring_func"] = "softmax".into()),
            "GGUF has Sigmoid, config.json has Softmax",
        ),
        (
            "n_group",
            Box::new(|j| j["n_group"] = 8.into()),
            "GGUF has 4, config.json has 8",
        ),
        (
            "eos_token_id",
            Box::new(|j| j["eos_token_id"] = 7.into()),
            "GGUF has Some(1), config.json has Some(7)",
        ),
        (
            "rope_scaling",
            Box::new(|j| {
                j["rope_parameters"] =
                    serde_json::json!({"rope_type": "default", "rope_theta": 10000.0})
            }),
            "config.json has None",
        ),
    ];
    for (field, edit, values) in cases {
        let path = edited_json(tmp.path(), &src, edit);
        let e = DeepSeekConfig::from_gguf_and_hf(&g, &path).unwrap_err();
        assert!(
            matches!(e, ModelError::ConfigMismatch { field: f, .. } if f == field),
            "{field}: {e}"
        );
        let text = e.to_string();
        assert!(
            text.starts_with(&format!("hyper-parameter {field} disagrees: "))
                && text.contains(values),
            "{text}"
        );
    }
}

#[test]
fn hub_rope_scaling_reads_like_transformers_5_rope_parameters() {
    let mut j: Json =
        serde_json::from_str(&std::fs::read_to_string(dsv2_dir().join("config.json")).unwrap())
            .unwrap();
    let mut rope = j["rope_parameters"].take();
    let obj = j.as_object_mut().unwrap();
    obj.remove("rope_parameters");
    let rope_obj = rope.as_object_mut().unwrap();
    obj.insert("rope_theta".into(), rope_obj.remove("rope_theta").unwrap());
    let kind = rope_obj.remove("rope_type").unwrap();
    rope_obj.insert("type".into(), kind);
    obj.insert("rope_scaling".into(), rope);
    let hub = DeepSeekConfig::from_hf_str("hub.json", &j.to_string()).unwrap();
    assert_eq!(hub, dsv2_expected());

    // No rope section at all: no scaling, rope_theta from the top level.
    let obj = j.as_object_mut().unwrap();
    obj.remove("rope_scaling");
    obj.insert("rope_theta".into(), 50000.0.into());
    let plain = DeepSeekConfig::from_hf_str("plain.json", &j.to_string()).unwrap();
    assert_eq!((plain.rope_theta, plain.rope_scaling), (50000.0, None));
}

#[test]
fn v2_routing_defaults_when_the_config_omits_them() {
    let mut j: Json =
        serde_json::from_str(&std::fs::read_to_string(dsv2_dir().join("config.json")).unwrap())
            .unwrap();
    for k in [
        "topk_method",
        "scoring_func",
        "n_group",
        "topk_group",
        "norm_topk_prob",
        "routed_scaling_factor",
    ] {
        j.as_object_mut().unwrap().remove(k);
    }
    assert_eq!(
        DeepSeekConfig::from_hf_str("v2.json", &j.to_string()).unwrap(),
        dsv2_expected()
    );
    j["topk_method"] = "group_limited_greedy".into();
    j["n_group"] = 4.into();
    j["topk_group"] = 2.into();
    let c = DeepSeekConfig::from_hf_str("v2.json", &j.to_string()).unwrap();
    assert_eq!(
        (c.topk_method, c.n_group, c.topk_group),
        (TopkMethod::GroupLimitedGreedy, 4, 2)
    );
}

#[test]
fn bad_hf_configs_name_the_field() {
    let base: Json =
        serde_json::from_str(&std::fs::read_to_string(dsv3_dir().join("config.json")).unwrap())
            .unwrap();
    type Edit = Box<dyn Fn(&mut Json)>;
    let cases: Vec<(Edit, &str)> = vec![
        (
            Box::new(|j| {
                j.as_object_mut().unwrap().remove("kv_lora_rank");
            }),
            "field 'kv_lora_rank': is missing",
        ),
        (
            Box::new(|j| j["hidden_size"] = "256".into()),
            "field 'hidden_size': \"256\" is not a non-negative integer",
        ),
        (
            Box::new(|j| j["hidden_size"] = (-1).into()),
            "field 'hidden_size': -1 is not a non-negative integer",
        ),
        (
            Box::new(|j| j["model_type"] = "llama".into()),
            "field 'model_type': \"llama\" is neither",
        ),
        (
            Box::new(|j| j["qk_head_dim"] = 100.into()),
            "field 'qk_head_dim': 100 is not qk_nope_head_dim + qk_rope_head_dim",
        ),
        (
            Box::new(|j| j["rope_parameters"]["rope_type"] = "linear".into()),
            "field 'rope_parameters.rope_type': \"linear\" is not supported",
        ),
        (
            Box::new(|j| {
                j["rope_parameters"]
                    .as_object_mut()
                    .unwrap()
                    .remove("factor");
            }),
            "field 'rope_parameters.factor': is missing",
        ),
        (
            Box::new(|j| j["topk_method"] = "best".into()),
            "field 'topk_method': \"best\" is not greedy",
        ),
        (
            Box::new(|j| j["moe_layer_freq"] = 2.into()),
            "field 'moe_layer_freq': 2 is not supported",
        ),
        (
            Box::new(|j| {
                j.as_object_mut().unwrap().remove("q_lora_rank");
            }),
            "field 'q_lora_rank': is missing",
        ),
        (
            Box::new(|j| j["num_experts_per_tok"] = 17.into()),
            "hyper-parameter experts_per_tok: 17 is not in 1..=16",
        ),
        (
            Box::new(|j| j["n_group"] = 3.into()),
            "hyper-parameter n_group: 3 does not divide the 16 routed experts",
        ),
        (
            Box::new(|j| j["num_experts_per_tok"] = 9.into()),
            "hyper-parameter experts_per_tok: 9 exceeds the 8 experts of the 2 kept groups",
        ),
        (
            Box::new(|j| j["qk_rope_head_dim"] = 31.into()),
            "hyper-parameter qk_rope_head_dim: 31 is odd",
        ),
    ];
    for (edit, expected) in cases {
        let mut j = base.clone();
        if j.get("qk_head_dim").is_some() && !expected.contains("qk_head_dim") {
            j.as_object_mut().unwrap().remove("qk_head_dim");
        }
        edit(&mut j);
        let e = DeepSeekConfig::from_hf_str("bad.json", &j.to_string())
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("bad.json: ") && e.contains(expected),
            "expected {expected:?}, got {e}"
        );
    }
    let e = DeepSeekConfig::from_hf_str("broken.json", "{ not json")
        .unwrap_err()
        .to_string();
    assert!(e.starts_with("broken.json: "), "{e}");
}

/// The fixture's metadata (no tensors), edited and read back.
fn edited_gguf(src: &Path, edit: impl FnOnce(&mut Vec<(String, Value)>)) -> Gguf {
    let (mut meta, _) = contents(&open(src));
    edit(&mut meta);
    Gguf::from_bytes("edited.gguf", write_gguf(&meta, &[])).unwrap()
}

#[test]
fn older_gguf_key_layout_gives_the_same_config() {
    // Before llama.cpp split attn_kv_b, key_length / value_length were the per-head
    // sizes and the _mla keys did not exist.
    for (src, expected) in [(dsv3_q4(), dsv3_expected()), (dsv2_q4(), dsv2_expected())] {
        let g = edited_gguf(&src, |m| {
            remove_meta(m, "deepseek2.attention.key_length_mla");
            remove_meta(m, "deepseek2.attention.value_length_mla");
            set_meta(m, "deepseek2.attention.key_length", 96u32);
            set_meta(m, "deepseek2.attention.value_length", 64u32);
            set_meta(m, "deepseek2.attention.head_count_kv", 4u32);
        });
        assert_same(&DeepSeekConfig::from_gguf(&g).unwrap(), &expected);
    }
}

#[test]
fn missing_optional_gguf_keys_default_and_defer_to_config_json() {
    let g = edited_gguf(&dsv3_q4(), |m| {
        for k in [
            "deepseek2.expert_group_count",
            "deepseek2.expert_group_used_count",
            "deepseek2.expert_weights_norm",
            "deepseek2.rope.scaling.yarn_log_multiplier",
            "deepseek2.vocab_size",
        ] {
            remove_meta(m, k);
        }
    });
    let alone = DeepSeekConfig::from_gguf(&g).unwrap();
    let y = alone.rope_scaling.unwrap();
    assert_eq!(
        (alone.n_group, alone.topk_group, alone.norm_topk_prob),
        (1, 1, false)
    );
    assert_eq!((y.mscale, y.mscale_all_dim), (0.0, 0.0));
    assert_eq!(alone.vocab_size, 512, "from the token list");
    // With config.json the defaults are not disagreements: config.json decides.
    let both = DeepSeekConfig::from_gguf_and_hf(&g, dsv3_dir().join("config.json")).unwrap();
    assert_eq!(both, dsv3_expected());
}

#[test]
fn bad_gguf_metadata_names_the_key() {
    type Edit = Box<dyn FnOnce(&mut Vec<(String, Value)>)>;
    let cases: Vec<(Edit, &str)> = vec![
        (
            Box::new(|m| set_meta(m, "general.architecture", "llama")),
            "metadata key 'general.architecture': is \"llama\", expected \"deepseek2\"",
        ),
        (
            Box::new(|m| set_meta(m, "deepseek2.expert_gating_func", 3u32)),
            "metadata key 'deepseek2.expert_gating_func': 3 is neither 1 (softmax) nor 2 (sigmoid)",
        ),
        (
            Box::new(|m| set_meta(m, "deepseek2.attention.key_length", 300u32)),
            "metadata key 'deepseek2.attention.key_length': 300 is not kv_lora_rank + rope",
        ),
        (
            Box::new(|m| set_meta(m, "deepseek2.attention.value_length", 64u32)),
            "metadata key 'deepseek2.attention.value_length': 64 is not kv_lora_rank",
        ),
        (
            Box::new(|m| set_meta(m, "deepseek2.attention.key_length_mla", 32u32)),
            "metadata key 'deepseek2.attention.key_length_mla': 32 leaves no room",
        ),
        (
            Box::new(|m| remove_meta(m, "deepseek2.expert_count")),
            "metadata key 'deepseek2.expert_count' is missing",
        ),
        (
            Box::new(|m| set_meta(m, "deepseek2.block_count", "three")),
            "metadata key 'deepseek2.block_count' holds string \"three\", expected usize",
        ),
        (
            Box::new(|m| set_meta(m, "deepseek2.rope.scaling.type", "linear")),
            "metadata key 'deepseek2.rope.scaling.type': \"linear\" is not supported",
        ),
        (
            Box::new(|m| set_meta(m, "deepseek2.expert_used_count", 0u32)),
            "hyper-parameter experts_per_tok: 0 is not in 1..=16",
        ),
        (
            Box::new(|m| set_meta(m, "deepseek2.leading_dense_block_count", 4u32)),
            "hyper-parameter first_k_dense_replace: 4 exceeds the 3 layers",
        ),
        (
            Box::new(|m| set_meta(m, "deepseek2.attention.head_count", u64::MAX)),
            "hyper-parameter n_heads: tensor sizes computed from the head dims overflow",
        ),
    ];
    for (edit, expected) in cases {
        let g = edited_gguf(&dsv3_q4(), edit);
        let e = DeepSeekConfig::from_gguf(&g).unwrap_err().to_string();
        assert!(
            e.starts_with("edited.gguf: ") && e.contains(expected),
            "expected {expected:?}, got {e}"
        );
    }
}

#[test]
fn derived_sizes() {
    let c = dsv3_expected();
    assert_eq!(c.qk_head_dim(), 96);
    assert_eq!(
        (c.is_moe_layer(0), c.is_moe_layer(1), c.is_moe_layer(2)),
        (false, true, true)
    );
    assert_eq!(dsv2_expected().shared_intermediate_size(), 512);
}
