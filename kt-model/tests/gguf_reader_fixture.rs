//! The reader against GGUF files written by llama.cpp's converter and quantizer,
//! checked against the independent dumps beside them (`*.gguf.json`: every metadata
//! value, and per tensor its type, ne[], byte count and SHA-256 as gguf-py read it).

mod gguf_common;

use std::path::Path;

use gguf_common::*;
use kt_kernels::quant::QType;
use kt_model::gguf::{Array, Gguf, Value};
use serde_json::Value as Json;

fn check_against_dump(gguf_path: &Path) {
    let dump_path = gguf_path.with_extension("gguf.json");
    let dump: Json = serde_json::from_str(&std::fs::read_to_string(&dump_path).unwrap()).unwrap();
    let g = open(gguf_path);
    assert_eq!(g.files()[0].len() as u64, dump["bytes"].as_u64().unwrap());
    assert_eq!(g.version(), 3);
    assert_eq!(g.alignment(), 32);

    let meta = dump["metadata"].as_object().unwrap();
    assert_eq!(g.metadata().len(), meta.len(), "metadata key count");
    for (key, expected) in meta {
        let got = g
            .metadata()
            .get(key)
            .unwrap_or_else(|| panic!("key {key} missing"));
        assert!(
            value_matches(got, expected),
            "{key}: read {got:?}, dump says {expected}"
        );
    }

    let tensors = dump["tensors"].as_array().unwrap();
    assert_eq!(g.n_tensors(), tensors.len());
    for (t, d) in g.tensors().zip(tensors) {
        assert_eq!(t.name, d["name"].as_str().unwrap());
        assert_eq!(
            Some(t.qtype),
            QType::from_name(d["type"].as_str().unwrap()),
            "{}",
            t.name
        );
        let ne: Vec<usize> = d["ne"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as usize)
            .collect();
        assert_eq!(t.dims, &ne[..], "{}", t.name);
        assert_eq!(
            t.data.len() as u64,
            d["bytes"].as_u64().unwrap(),
            "{}",
            t.name
        );
        assert_eq!(
            sha256_hex(t.data),
            d["sha256"].as_str().unwrap(),
            "{} data",
            t.name
        );
        // The same view by name.
        let by_name = g.tensor(t.name).unwrap();
        assert_eq!(by_name.data.as_ptr(), t.data.as_ptr());
    }
}

fn value_matches(v: &Value, j: &Json) -> bool {
    match v {
        Value::String(s) => j.as_str() == Some(s),
        Value::Bool(b) => j.as_bool() == Some(*b),
        // The dump widens f32 to a double exactly.
        Value::F32(x) => j.as_f64() == Some(f64::from(*x)),
        Value::F64(x) => j.as_f64() == Some(*x),
        Value::Array(a) => j["array_len"].as_u64() == Some(a.len() as u64),
        v => v
            .as_int()
            .is_some_and(|i| j.as_i64().map(i128::from) == Some(i)),
    }
}

#[test]
fn dsv3_q4_k_m_matches_dump() {
    check_against_dump(&dsv3_dir().join("tiny-dsv3-q4_k_m.gguf"));
}

#[test]
fn other_fixtures_match_dumps() {
    check_against_dump(&dsv2_dir().join("tiny-dsv2-q4_k_m.gguf"));
    for f in ["tiny-dsv3-q2_k.gguf", "tiny-dsv3-q5_k_m.gguf"] {
        check_against_dump(&dsv3_dir().join(f));
    }
}

#[test]
fn dsv3_bf16_has_the_same_tensors_in_bf16_and_f32() {
    let q = open(&dsv3_dir().join("tiny-dsv3-q4_k_m.gguf"));
    let b = open(&dsv3_dir().join("tiny-dsv3-bf16.gguf"));
    assert_eq!(q.n_tensors(), b.n_tensors());
    for t in b.tensors() {
        let other = q
            .tensor_info(t.name)
            .unwrap_or_else(|| panic!("{} not in q4_k_m", t.name));
        assert_eq!(t.dims, other.dims(), "{}", t.name);
        let elem = match t.qtype {
            QType::BF16 => 2,
            QType::F32 => 4,
            other => panic!("{}: unexpected {other}", t.name),
        };
        assert_eq!(t.data.len(), t.n_elements() * elem);
        assert!(t.data.iter().any(|&x| x != 0), "{} is all zeros", t.name);
    }
    // Metadata agrees except the file type.
    for (k, v) in b
        .metadata()
        .iter()
        .filter(|(k, _)| *k != "general.file_type")
    {
        assert_eq!(Some(v), q.metadata().get(k), "{k}");
    }
}

#[test]
fn token_list_and_typed_getters() {
    let g = open(&dsv3_dir().join("tiny-dsv3-q4_k_m.gguf"));
    let m = g.metadata();
    let tokens = m.get_str_array("tokenizer.ggml.tokens").unwrap();
    assert_eq!(tokens.len(), 512);
    assert!(tokens.iter().all(|t| !t.is_empty()));
    assert!(
        matches!(m.get_array("tokenizer.ggml.token_type").unwrap(), Array::I32(v) if v.len() == 512)
    );
    assert_eq!(m.get_u32("deepseek2.block_count").unwrap(), 3);
    // u32 values read through the other integer getters.
    assert_eq!(m.get_u64("deepseek2.block_count").unwrap(), 3);
    assert_eq!(m.get_i32("deepseek2.block_count").unwrap(), 3);
    assert_eq!(m.get_usize("deepseek2.expert_count").unwrap(), 16);
    assert_eq!(m.get_f32("deepseek2.expert_weights_scale").unwrap(), 2.5);
    assert!(m.get_bool("deepseek2.expert_weights_norm").unwrap());
    assert_eq!(m.get_str("general.architecture").unwrap(), "deepseek2");
    assert_eq!(m.opt_u32("no.such.key").unwrap(), None);

    let e = m.get_u32("no.such.key").unwrap_err().to_string();
    assert!(
        e.contains("tiny-dsv3-q4_k_m.gguf") && e.contains("'no.such.key' is missing"),
        "{e}"
    );
    let e = m.get_u32("general.architecture").unwrap_err().to_string();
    assert!(
        e.contains("'general.architecture'")
            && e.contains("string \"deepseek2\"")
            && e.contains("u32"),
        "{e}"
    );
    let e = m.get_f32("deepseek2.block_count").unwrap_err().to_string();
    assert!(e.contains("u32 3") && e.contains("expected f32"), "{e}");
    let e = m
        .get_str_array("tokenizer.ggml.token_type")
        .unwrap_err()
        .to_string();
    assert!(e.contains("array of i32"), "{e}");
}

#[test]
fn tensor_views_are_memory_mapped_not_copied() {
    let path = dsv3_dir().join("tiny-dsv3-q4_k_m.gguf");
    let g = open(&path);
    let file = &g.files()[0];
    let first = g.tensors().next().unwrap();
    // Every view points into one contiguous mapping of the file, at its data offset.
    let base = first.data.as_ptr() as usize
        - (file.data_offset() as usize + g.tensor_infos()[0].offset() as usize);
    for (t, info) in g.tensors().zip(g.tensor_infos()) {
        let start = t.data.as_ptr() as usize - base;
        assert_eq!(
            start as u64,
            file.data_offset() + info.offset(),
            "{}",
            t.name
        );
        assert_eq!(start % 32, 0, "{} is not aligned", t.name);
    }
    let on_disk = std::fs::read(&path).unwrap();
    for t in g.tensors() {
        let start = t.data.as_ptr() as usize - base;
        assert_eq!(&on_disk[start..start + t.data.len()], t.data, "{}", t.name);
    }
}

#[test]
fn reading_from_bytes_equals_reading_the_file() {
    let path = dsv3_dir().join("tiny-dsv3-q4_k_m.gguf");
    let mapped = open(&path);
    let owned = Gguf::from_bytes("copy.gguf", std::fs::read(&path).unwrap()).unwrap();
    assert_eq!(mapped.metadata(), owned.metadata());
    assert_eq!(mapped.tensor_infos(), owned.tensor_infos());
    for (a, b) in mapped.tensors().zip(owned.tensors()) {
        assert_eq!(a.data, b.data, "{}", a.name);
    }
}

#[test]
fn a_missing_file_names_its_path() {
    let e = Gguf::open("/nonexistent/dir/model.gguf")
        .unwrap_err()
        .to_string();
    assert!(e.starts_with("/nonexistent/dir/model.gguf: "), "{e}");
}
