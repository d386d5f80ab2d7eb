//! The reader on a hand-assembled GGUF (every value type, nested arrays, three tensor
//! types), and on that file truncated at every byte and with each count, length,
//! type and offset field corrupted: always a typed error naming the field, never a
//! panic or an allocation the file could not back.

mod gguf_common;

use gguf_common::*;
use kt_kernels::quant::QType;
use kt_model::gguf::{Array, Gguf, Value};
use kt_model::ModelError;

fn read(bytes: Vec<u8>) -> Result<Gguf, ModelError> {
    Gguf::from_bytes("tiny.gguf", bytes)
}

#[test]
fn reads_every_value_type_and_tensor() {
    let raw = raw_gguf();
    let g = read(raw.bytes.clone()).unwrap();
    let m = g.metadata();
    for (key, v) in raw_scalars() {
        assert_eq!(m.get(key), Some(&v), "{key}");
    }
    assert_eq!(
        m.get("test.strings"),
        Some(&Value::Array(Array::String(vec![
            "a".into(),
            "bc".into(),
            "d\u{e9}f".into()
        ])))
    );
    assert_eq!(
        m.get("test.nested"),
        Some(&Value::Array(Array::Array(vec![
            Array::U32(vec![1, 2]),
            Array::String(vec!["x".into()])
        ])))
    );
    assert_eq!(g.alignment(), 32);
    assert_eq!(
        g.files()[0].data_offset() as usize,
        raw.sections.iter().find(|s| s.0 == "data start").unwrap().1
    );
    assert_eq!(g.n_tensors(), raw.tensors.len());
    for ((name, qtype, dims, data), t) in raw.tensors.iter().zip(g.tensors()) {
        assert_eq!(
            (t.name, t.qtype, t.dims),
            (name.as_str(), *qtype, &dims[..])
        );
        assert_eq!(t.data, &data[..], "{name}");
    }
    let q8 = g.tensor("w.q8_0").unwrap();
    assert_eq!((q8.row_len(), q8.n_rows(), q8.row_bytes()), (32, 4, 34));
}

#[test]
fn integer_getters_convert_where_the_value_fits() {
    let g = read(raw_gguf().bytes).unwrap();
    let m = g.metadata();
    assert_eq!(m.get_u64("test.u8").unwrap(), 200);
    assert_eq!(m.get_i32("test.u16").unwrap(), 60000);
    assert_eq!(m.get_u64("test.u32").unwrap(), 4_000_000_000);
    assert_eq!(m.get_i64("test.i32").unwrap(), -2_000_000_000);
    assert_eq!(
        m.get_u32("test.u64")
            .map_err(|e| e.to_string())
            .unwrap_err(),
        "tiny.gguf: metadata key 'test.u64' = u64 1099511627776 does not fit in u32"
    );
    assert!(matches!(
        m.get_u32("test.i8"),
        Err(ModelError::OutOfRange { .. })
    ));
    assert!(matches!(
        m.get_u32("test.i32"),
        Err(ModelError::OutOfRange { .. })
    ));
    assert_eq!(m.get_f64("test.f32").unwrap(), f64::from(1.5e-6f32));
    assert!(matches!(
        m.get_bool("test.u8"),
        Err(ModelError::WrongType { .. })
    ));
}

#[test]
fn truncated_at_every_byte() {
    let raw = raw_gguf();
    for len in 0..raw.bytes.len() {
        let result = read(raw.bytes[..len].to_vec());
        if len >= raw.data_end() {
            // Only trailing padding is gone: the file is complete.
            let g = result.unwrap_or_else(|e| panic!("cut at {len}: {e}"));
            assert_eq!(g.n_tensors(), 3);
            continue;
        }
        match result {
            Err(ModelError::Truncated { path, .. })
            | Err(ModelError::CountTooLarge { path, .. })
            | Err(ModelError::TensorPastEnd { path, .. }) => {
                assert_eq!(path.to_str(), Some("tiny.gguf"))
            }
            Err(e) => panic!("cut at {len}: unexpected error {e}"),
            Ok(_) => panic!("cut at {len} of {} bytes was accepted", raw.bytes.len()),
        }
    }
}

#[test]
fn truncated_at_each_section_boundary_names_the_section() {
    let raw = raw_gguf();
    let cut = |name: &str| {
        let at = raw.sections.iter().find(|s| s.0 == name).unwrap().1;
        read(raw.bytes[..at].to_vec()).unwrap_err().to_string()
    };
    assert_eq!(
        read(Vec::new()).unwrap_err().to_string(),
        "tiny.gguf: header: magic: needs bytes [0..4) but the file has 0 bytes"
    );
    let e = cut("header end");
    assert!(
        e.contains("header: metadata count: count 15 cannot fit"),
        "{e}"
    );
    let e = cut("metadata end");
    assert!(
        e.contains("header: tensor count: count 3 cannot fit"),
        "{e}"
    );
    let e = cut("tensor infos end");
    assert!(
        e.contains("tensor 'blk.0.attn_q_a.weight': data [") && e.contains("past end of file"),
        "{e}"
    );
    let e = cut("data start");
    assert!(e.contains("tensor 'blk.0.attn_q_a.weight': data ["), "{e}");
}

#[test]
fn data_past_the_end_is_reported_like_llama_cpp_names_it() {
    let raw = raw_gguf();
    let data_start = raw.sections.iter().find(|s| s.0 == "data start").unwrap().1;
    let len = data_start + 50;
    let e = read(raw.bytes[..len].to_vec()).unwrap_err().to_string();
    assert_eq!(
        e,
        format!(
            "tiny.gguf: tensor 'blk.0.attn_q_a.weight': data [{data_start}..{}) past end of file ({len} bytes)",
            data_start + 96
        )
    );
}

#[test]
fn bad_magic_and_versions() {
    let raw = raw_gguf();
    let mut b = raw.bytes.clone();
    b[0] = b'X';
    assert!(matches!(read(b), Err(ModelError::BadMagic { found, .. }) if &found == b"XGUF"));
    for v in [0u32, 1, 4, 0xffff_ffff] {
        assert!(
            matches!(read(raw.with_u32("version", v)), Err(ModelError::UnsupportedVersion { version, .. }) if version == v)
        );
    }
    assert!(
        read(raw.with_u32("version", 2)).is_ok(),
        "v2 has the v3 layout"
    );
    assert!(matches!(
        read(raw.with_u32("version", 3u32.swap_bytes())),
        Err(ModelError::BigEndian { version: 3, .. })
    ));
}

/// A count that cannot fit the file is refused before anything is allocated.
#[test]
fn huge_counts_are_refused_before_allocating() {
    let raw = raw_gguf();
    for field in [
        "n_kv",
        "n_tensors",
        "strings.len",
        "nested.len",
        "nested0.len",
        "nested1.len",
    ] {
        for v in [
            1u64 << 60,
            u64::MAX,
            u64::MAX / 8 + 1,
            raw.bytes.len() as u64,
        ] {
            match read(raw.with_u64(field, v)) {
                Err(ModelError::CountTooLarge { count, .. }) => assert_eq!(count, v, "{field}"),
                other => panic!("{field} = {v}: {other:?}"),
            }
        }
    }
}

#[test]
fn string_lengths_past_the_end() {
    let raw = raw_gguf();
    let len_fields: Vec<String> = raw
        .field_names()
        .filter(|f| f.ends_with("_len"))
        .map(String::from)
        .collect();
    assert!(len_fields.len() > 15);
    for field in &len_fields {
        for v in [u64::MAX, 1 << 60, raw.bytes.len() as u64] {
            match read(raw.with_u64(field, v)) {
                Err(ModelError::Truncated { what, end, .. }) => {
                    assert!(what.contains("string of"), "{field}: {what}");
                    assert!(end > raw.bytes.len() as u64);
                }
                other => panic!("{field} = {v}: {other:?}"),
            }
        }
    }
}

#[test]
fn every_count_and_offset_field_corrupted() {
    // Off-by-one and extreme values in every header field: the reader answers without
    // panicking, and whatever it accepts has every tensor's data inside the file.
    let raw = raw_gguf();
    let names: Vec<String> = raw.field_names().map(String::from).collect();
    for field in &names {
        let width = if field.ends_with("type")
            || field.ends_with("n_dims")
            || field == "version"
            || field == "alignment"
        {
            4
        } else {
            8
        };
        let old = if width == 8 {
            raw.read_u64(field)
        } else {
            u64::from(u32::from_le_bytes(
                raw.bytes[raw.field(field)..][..4].try_into().unwrap(),
            ))
        };
        for v in [
            0,
            1,
            old.wrapping_add(1),
            old.wrapping_sub(1),
            old.wrapping_add(32),
            u64::MAX,
            1 << 31,
            1 << 62,
        ] {
            if v == old {
                continue;
            }
            let bytes = if width == 8 {
                raw.with_u64(field, v)
            } else {
                raw.with_u32(field, v as u32)
            };
            if let Ok(g) = read(bytes) {
                // Touch every tensor: all data must be inside the file.
                let sum: u64 = g
                    .tensors()
                    .map(|t| t.data.iter().map(|&b| u64::from(b)).sum::<u64>())
                    .sum();
                std::hint::black_box(sum);
            }
        }
    }
}

#[test]
fn bad_value_types() {
    let raw = raw_gguf();
    for (field, id) in [
        ("kv1.type", 13),
        ("kv1.type", u32::MAX),
        ("strings.elem_type", 99),
        ("nested0.elem_type", 13),
    ] {
        match read(raw.with_u32(field, id)) {
            Err(ModelError::UnknownValueType { id: got, what, .. }) => {
                assert_eq!(got, id);
                assert!(what.starts_with("metadata '"), "{what}");
            }
            other => panic!("{field} = {id}: {other:?}"),
        }
    }
    let mut b = raw.bytes.clone();
    b[raw.field("bool.byte")] = 2;
    assert_eq!(
        read(b).unwrap_err().to_string(),
        "tiny.gguf: metadata 'test.bool': bool byte is 2, expected 0 or 1"
    );
}

#[test]
fn invalid_utf8_key_is_named() {
    let raw = raw_gguf();
    let mut b = raw.bytes.clone();
    let p = raw.field("kv1.key_len") + 8; // first byte of "test.u8"
    b[p] = 0xff;
    assert_eq!(
        read(b).unwrap_err().to_string(),
        "tiny.gguf: metadata entry #1: key: not valid UTF-8"
    );
}

#[test]
fn bad_tensor_dims() {
    let raw = raw_gguf();
    for n in [0u32, 5, u32::MAX] {
        match read(raw.with_u32("t1.n_dims", n)) {
            Err(ModelError::TensorDims { tensor, n_dims, .. }) => {
                assert_eq!((tensor.as_str(), n_dims), ("w.q4_k", n))
            }
            other => panic!("n_dims {n}: {other:?}"),
        }
    }
    for v in [0u64, 1 << 63, u64::MAX] {
        match read(raw.with_u64("t2.ne1", v)) {
            Err(ModelError::TensorDim {
                tensor,
                index: 1,
                value,
                ..
            }) => assert_eq!((tensor.as_str(), value), ("w.q8_0", v)),
            other => panic!("ne1 {v}: {other:?}"),
        }
    }
    // Each dim is fine alone, the product is not.
    let b = raw.with_u64("t0.ne0", 1 << 40);
    let mut b2 = b.clone();
    let p = raw.field("t0.ne1");
    b2[p..p + 8].copy_from_slice(&(1u64 << 40).to_le_bytes());
    assert!(
        matches!(read(b2), Err(ModelError::TensorSizeOverflow { tensor, .. }) if tensor == "blk.0.attn_q_a.weight")
    );
    // Fits i64 in elements but not in bytes (f32: 4 bytes each).
    let b3 = raw.with_u64("t0.ne0", 1 << 62);
    assert!(
        matches!(read(b3), Err(ModelError::TensorSizeOverflow { tensor, .. }) if tensor == "blk.0.attn_q_a.weight")
    );
    // Fits i64 in elements but is far past the end of the file.
    assert!(
        matches!(read(b), Err(ModelError::TensorPastEnd { tensor, .. }) if tensor == "blk.0.attn_q_a.weight")
    );
}

#[test]
fn bad_tensor_types_and_row_lengths() {
    let raw = raw_gguf();
    for id in [4u32, 5, 16, 29, 31, 99, u32::MAX] {
        match read(raw.with_u32("t0.type", id)) {
            Err(ModelError::UnknownTensorType {
                tensor, id: got, ..
            }) => assert_eq!((tensor.as_str(), got), ("blk.0.attn_q_a.weight", id)),
            other => panic!("type {id}: {other:?}"),
        }
    }
    // q4_K rows are whole 256-element blocks: 8 elements is not one.
    let e = read(raw.with_u32("t0.type", QType::Q4_K.ggml_id()))
        .unwrap_err()
        .to_string();
    assert_eq!(e, "tiny.gguf: tensor 'blk.0.attn_q_a.weight': row length ne[0] = 8 is not a multiple of the q4_K block of 256 elements");
}

#[test]
fn bad_tensor_offsets() {
    let raw = raw_gguf();
    let e = read(raw.with_u64("t1.offset", 97)).unwrap_err().to_string();
    assert_eq!(
        e,
        "tiny.gguf: tensor 'w.q4_k': offset 97 is not a multiple of the alignment 32"
    );
    for v in [1u64 << 62, u64::MAX - 31, raw.bytes.len() as u64] {
        assert!(
            matches!(read(raw.with_u64("t2.offset", v)), Err(ModelError::TensorPastEnd { tensor, .. }) if tensor == "w.q8_0"),
            "{v}"
        );
    }
    // Overlapping tensors are allowed: point w.q8_0 at w.q4_k's data.
    let q4_offset = raw.read_u64("t1.offset");
    let g = read(raw.with_u64("t2.offset", q4_offset)).unwrap();
    assert_eq!(g.tensor("w.q8_0").unwrap().data, &raw.tensors[1].3[..136]);
}

#[test]
fn duplicate_names_and_keys() {
    let raw = raw_gguf();
    // Rename "w.q8_0" to "w.q4_k" (same length).
    let mut b = raw.bytes.clone();
    let p = raw.field("t2.name_len") + 8;
    b[p..p + 6].copy_from_slice(b"w.q4_k");
    assert_eq!(
        read(b).unwrap_err().to_string(),
        "tiny.gguf: tensor 'w.q4_k' appears twice"
    );
    // Rename key "test.i8" to "test.u8".
    let mut b = raw.bytes.clone();
    let p = raw.field("kv2.key_len") + 8;
    b[p..p + 7].copy_from_slice(b"test.u8");
    assert_eq!(
        read(b).unwrap_err().to_string(),
        "tiny.gguf: metadata key 'test.u8' appears twice"
    );
}

#[test]
fn alignment_must_be_a_power_of_two() {
    let raw = raw_gguf();
    for a in [0u32, 3, 48, u32::MAX] {
        assert!(
            matches!(
                read(raw.with_u32("alignment", a)),
                Err(ModelError::BadAlignment { .. })
            ),
            "{a}"
        );
    }
    // 16: offsets (multiples of 32) stay aligned and the data section starts at the
    // next multiple of 16 after the tensor infos.
    let infos_end = raw
        .sections
        .iter()
        .find(|s| s.0 == "tensor infos end")
        .unwrap()
        .1 as u64;
    let g = read(raw.with_u32("alignment", 16)).unwrap();
    assert_eq!(
        (g.alignment(), g.files()[0].data_offset()),
        (16, infos_end.next_multiple_of(16))
    );
    // 64: tensor 1's offset (96) is misaligned.
    assert!(matches!(
        read(raw.with_u32("alignment", 64)),
        Err(ModelError::TensorMisaligned { alignment: 64, .. })
    ));
    // Not an integer.
    let b = raw.with_u32("kv14.type", 6); // general.alignment as f32
    assert!(
        matches!(read(b), Err(ModelError::WrongType { key, .. }) if key == "general.alignment")
    );
}

#[test]
fn arrays_nested_too_deep_are_refused() {
    // general.architecture, then an array nested 10 deep around one u8.
    let mut b = Vec::new();
    b.extend_from_slice(b"GGUF");
    b.extend_from_slice(&3u32.to_le_bytes());
    b.extend_from_slice(&0u64.to_le_bytes());
    b.extend_from_slice(&1u64.to_le_bytes());
    b.extend_from_slice(&(4u64).to_le_bytes());
    b.extend_from_slice(b"deep");
    b.extend_from_slice(&9u32.to_le_bytes());
    for _ in 0..10 {
        b.extend_from_slice(&9u32.to_le_bytes());
        b.extend_from_slice(&1u64.to_le_bytes());
    }
    b.extend_from_slice(&0u32.to_le_bytes());
    b.extend_from_slice(&1u64.to_le_bytes());
    b.push(7);
    assert!(matches!(
        read(b),
        Err(ModelError::NestingTooDeep { max_depth: 8, .. })
    ));
}

#[test]
fn a_file_with_no_tensors_may_end_after_its_metadata() {
    let mut b = Vec::new();
    b.extend_from_slice(b"GGUF");
    b.extend_from_slice(&3u32.to_le_bytes());
    b.extend_from_slice(&0u64.to_le_bytes());
    b.extend_from_slice(&0u64.to_le_bytes());
    let g = read(b).unwrap();
    assert_eq!((g.n_tensors(), g.metadata().len()), (0, 0));
}
