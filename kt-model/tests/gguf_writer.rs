//! The writer: round trips through the reader, byte-identical rewrites of files
//! written by llama.cpp and of the hand-assembled file, streaming, and its errors.

mod gguf_common;

use std::io::{BufWriter, Write};

use gguf_common::*;
use kt_kernels::quant::QType;
use kt_kernels::util::SplitMix64;
use kt_model::gguf::{Array, Gguf, GgufWriter, Value};
use kt_model::ModelError;

fn all_value_types() -> Vec<(String, Value)> {
    let mut m: Vec<(String, Value)> = raw_scalars()
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
    let arrays: Vec<(&str, Value)> = vec![
        ("a.u8", vec![0u8, 1, 255].into()),
        ("a.i8", vec![-128i8, 0, 127].into()),
        ("a.u16", vec![0u16, 65535].into()),
        ("a.i16", vec![-32768i16, 32767].into()),
        ("a.u32", vec![7u32, u32::MAX].into()),
        ("a.i32", vec![i32::MIN, -1, 5].into()),
        ("a.u64", vec![u64::MAX, 0].into()),
        ("a.i64", vec![i64::MIN, i64::MAX].into()),
        ("a.f32", vec![0.1f32, -0.0, f32::INFINITY, 3.4e38].into()),
        ("a.f64", vec![0.1f64, -1e-300].into()),
        ("a.bool", vec![true, false, true].into()),
        (
            "a.str",
            vec!["".to_owned(), "Ġthe".to_owned(), "日本".to_owned()].into(),
        ),
        ("a.empty", Value::Array(Array::F32(vec![]))),
        (
            "a.nested",
            vec![
                Array::String(vec!["x".into(), "yz".into()]),
                Array::U8(vec![1, 2, 3]),
                Array::Array(vec![Array::Bool(vec![true])]),
            ]
            .into(),
        ),
    ];
    m.extend(arrays.into_iter().map(|(k, v)| (k.to_owned(), v)));
    m
}

fn sample_tensors() -> Vec<TensorSpec> {
    let mut out = Vec::new();
    for (i, (qtype, dims)) in [
        (QType::F32, vec![7usize]),
        (QType::F16, vec![3, 5]),
        (QType::BF16, vec![2, 3, 4]),
        (QType::Q4_0, vec![64, 3]),
        (QType::Q5_1, vec![32, 1, 1, 2]),
        (QType::Q2_K, vec![256, 2]),
        (QType::Q6_K, vec![512, 1, 3]),
    ]
    .into_iter()
    .enumerate()
    {
        let n = qtype.row_bytes(dims[0]).unwrap() * dims[1..].iter().product::<usize>();
        out.push((
            format!("blk.{i}.{}", qtype.name()),
            qtype,
            dims,
            random_bytes(n, 100 + i as u64),
        ));
    }
    out
}

fn write_with_alignment(
    alignment: Option<u32>,
    meta: &[(String, Value)],
    tensors: &[TensorSpec],
) -> Vec<u8> {
    let mut w = GgufWriter::new();
    if let Some(a) = alignment {
        w.add("general.alignment", a).unwrap();
    }
    for (k, v) in meta {
        w.add(k.clone(), v.clone()).unwrap();
    }
    for (name, qtype, dims, _) in tensors {
        w.add_tensor_info(name.clone(), *qtype, dims).unwrap();
    }
    let mut data = w.write_header(Vec::new()).unwrap();
    for (name, _, _, bytes) in tensors {
        data.write_tensor(name, bytes).unwrap();
    }
    data.finish().unwrap()
}

#[test]
fn round_trip_all_value_types_and_tensor_types() {
    let meta = all_value_types();
    let tensors = sample_tensors();
    for alignment in [None, Some(1), Some(8), Some(64), Some(4096)] {
        let bytes = write_with_alignment(alignment, &meta, &tensors);
        let a = u64::from(alignment.unwrap_or(32));
        assert_eq!(bytes.len() as u64 % a, 0, "the file ends padded");
        let g = Gguf::from_bytes("rt.gguf", bytes).unwrap();
        assert_eq!((g.version(), g.alignment()), (3, a));
        let read: Vec<(String, Value)> = g
            .metadata()
            .iter()
            .filter(|(k, _)| *k != "general.alignment")
            .map(|(k, v)| (k.to_owned(), v.clone()))
            .collect();
        assert_eq!(read, meta, "alignment {a}");
        assert_eq!(g.n_tensors(), tensors.len());
        for ((name, qtype, dims, data), (t, info)) in
            tensors.iter().zip(g.tensors().zip(g.tensor_infos()))
        {
            assert_eq!(
                (t.name, t.qtype, t.dims, t.data),
                (name.as_str(), *qtype, &dims[..], &data[..])
            );
            assert_eq!(info.offset() % a, 0, "{name}");
        }
    }
}

#[test]
fn writer_reproduces_the_hand_assembled_file_byte_for_byte() {
    let raw = raw_gguf();
    let g = Gguf::from_bytes("raw.gguf", raw.bytes.clone()).unwrap();
    let (meta, tensors) = contents(&g);
    assert_eq!(write_gguf(&meta, &tensors), raw.bytes);
}

/// Re-writing llama.cpp's files tensor by tensor gives the same bytes: same header,
/// metadata and padding rules as llama.cpp's writer.
#[test]
fn rewriting_llama_cpp_files_gives_identical_bytes() {
    for name in ["tiny-dsv3-q4_k_m.gguf", "tiny-dsv3-bf16.gguf"] {
        let path = dsv3_dir().join(name);
        let original = open(&path);
        let (meta, tensors) = contents(&original);
        let rewritten = write_gguf(&meta, &tensors);
        let again = Gguf::from_bytes("rewritten.gguf", rewritten.clone()).unwrap();
        assert_eq!(again.metadata(), original.metadata(), "{name}");
        assert_eq!(again.tensor_infos(), original.tensor_infos(), "{name}");
        for (a, b) in again.tensors().zip(original.tensors()) {
            assert_eq!(a.data, b.data, "{name}: {}", a.name);
        }
        assert!(
            rewritten == std::fs::read(&path).unwrap(),
            "{name}: bytes differ from llama.cpp's"
        );
    }
}

#[test]
fn streaming_in_pieces_equals_writing_whole() {
    let tensors = sample_tensors();
    let whole = write_gguf(&all_value_types(), &tensors);
    let mut w = GgufWriter::new();
    for (k, v) in all_value_types() {
        w.add(k, v).unwrap();
    }
    for (name, qtype, dims, _) in &tensors {
        w.add_tensor_info(name.as_str(), *qtype, dims).unwrap();
    }
    let mut data = w.write_header(Vec::new()).unwrap();
    for (name, _, _, bytes) in &tensors {
        let mut sink = data.begin_tensor(name).unwrap();
        assert_eq!(sink.expected(), bytes.len());
        for piece in bytes.chunks(5) {
            sink.write_all(piece).unwrap();
        }
        sink.finish().unwrap();
    }
    assert_eq!(data.finish().unwrap(), whole);
}

/// A model larger than what is held in memory at once: 64 MiB of q8_0 experts
/// generated and written 1 MiB at a time, then read back through the memory map.
#[test]
fn streams_a_large_tensor_to_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big.gguf");
    let (row, rows, experts) = (4096usize, 1024usize, 16usize);
    let n_bytes = QType::Q8_0.row_bytes(row).unwrap() * rows * experts;
    let mut w = GgufWriter::new();
    w.add("general.architecture", "test").unwrap();
    w.add_tensor_info("small", QType::F32, &[3]).unwrap();
    w.add_tensor_info("experts", QType::Q8_0, &[row, rows, experts])
        .unwrap();
    let file = BufWriter::new(std::fs::File::create(&path).unwrap());
    let mut data = w.write_header(file).unwrap();
    data.write_tensor("small", &[0, 0, 128, 63, 0, 0, 0, 64, 0, 0, 64, 64])
        .unwrap();
    let chunk = 1 << 20;
    let mut rng = SplitMix64::new(7);
    let mut sink = data.begin_tensor("experts").unwrap();
    let mut buf = vec![0u8; chunk];
    let mut checksum = 0u64;
    for _ in 0..n_bytes / chunk {
        buf.iter_mut().for_each(|b| *b = rng.below(256) as u8);
        checksum = buf.iter().fold(checksum, |s, &b| {
            s.wrapping_mul(31).wrapping_add(u64::from(b))
        });
        sink.write_all(&buf).unwrap();
    }
    sink.finish().unwrap();
    drop(data.finish().unwrap());

    let g = open(&path);
    assert_eq!(
        g.tensor("small").unwrap().data,
        &[0, 0, 128, 63, 0, 0, 0, 64, 0, 0, 64, 64]
    );
    let t = g.tensor("experts").unwrap();
    assert_eq!((t.data.len(), t.dims), (n_bytes, &[row, rows, experts][..]));
    let read_sum = t
        .data
        .iter()
        .fold(0u64, |s, &b| s.wrapping_mul(31).wrapping_add(u64::from(b)));
    assert_eq!(read_sum, checksum);
}

fn err_text<T: std::fmt::Debug>(r: Result<T, ModelError>) -> String {
    r.unwrap_err().to_string()
}

#[test]
fn writer_refuses_bad_metadata() {
    let mut w = GgufWriter::new();
    w.add("a", 1u32).unwrap();
    assert_eq!(
        err_text(w.add("a", 2u32)),
        "GGUF writer: metadata key 'a': added twice"
    );
    assert!(err_text(w.add("general.alignment", 48u32))
        .contains("must be a u32 power of two, got u32 48"));
    assert!(err_text(w.add("general.alignment", 64u64)).contains("got u64 64"));
    let mut deep = Array::U8(vec![1]);
    for _ in 0..8 {
        deep = Array::Array(vec![deep]);
    }
    assert!(err_text(w.add("deep", deep)).contains("nested deeper than 8"));
}

#[test]
fn writer_refuses_bad_tensor_infos() {
    let mut w = GgufWriter::new();
    w.add_tensor_info("t", QType::F32, &[4]).unwrap();
    assert_eq!(
        err_text(w.add_tensor_info("t", QType::F32, &[4])),
        "GGUF writer: tensor 't': added twice"
    );
    assert!(
        err_text(w.add_tensor_info("x".repeat(64), QType::F32, &[4]))
            .contains("name must be 1 to 63 bytes")
    );
    assert!(err_text(w.add_tensor_info("", QType::F32, &[4])).contains("name must be"));
    for dims in [&[][..], &[1, 1, 1, 1, 1], &[4, 0]] {
        assert!(
            err_text(w.add_tensor_info("d", QType::F32, dims)).contains("non-zero dims"),
            "{dims:?}"
        );
    }
    assert_eq!(
        err_text(w.add_tensor_info("q", QType::Q4_K, &[128, 2])),
        "GGUF writer: tensor 'q': ne[0] = 128 is not a multiple of the q4_K block of 256"
    );
    assert!(
        err_text(w.add_tensor_info("big", QType::F32, &[1 << 40, 1 << 40])).contains("overflow")
    );
}

#[test]
fn writer_refuses_data_out_of_order_or_of_the_wrong_size() {
    let mut w = GgufWriter::new();
    w.add_tensor_info("a", QType::F32, &[2]).unwrap();
    w.add_tensor_info("b", QType::F32, &[1]).unwrap();
    let mut data = w.write_header(Vec::new()).unwrap();
    assert_eq!(
        err_text(data.write_tensor("b", &[0; 4])),
        "GGUF writer: tensor 'b': written out of order: 'a' comes next"
    );
    assert_eq!(
        err_text(data.write_tensor("a", &[0; 7])),
        "GGUF writer: tensor 'a': got 7 bytes, expected 8"
    );
    {
        let mut sink = data.begin_tensor("a").unwrap();
        sink.write_all(&[1; 6]).unwrap();
        let e = sink.write_all(&[1; 3]).unwrap_err();
        assert!(e.to_string().contains("more than its 8 bytes"), "{e}");
        assert_eq!(
            err_text(sink.finish()),
            "GGUF writer: tensor 'a': got 6 bytes, expected 8"
        );
    }
    assert_eq!(
        err_text(data.begin_tensor("a")),
        "GGUF writer: tensor 'a' was begun and never finished"
    );
}

#[test]
fn writer_refuses_to_finish_early_or_write_extra_tensors() {
    let mut w = GgufWriter::new();
    w.add_tensor_info("a", QType::F32, &[1]).unwrap();
    w.add_tensor_info("b", QType::F32, &[1]).unwrap();
    w.add_tensor_info("c", QType::F32, &[1]).unwrap();
    let mut data = w.write_header(Vec::new()).unwrap();
    data.write_tensor("a", &[1, 2, 3, 4]).unwrap();
    assert_eq!(
        err_text(data.finish()),
        "GGUF writer: tensor 'b' and 1 after it were never written"
    );

    let mut w = GgufWriter::new();
    w.add_tensor_info("a", QType::F32, &[1]).unwrap();
    let mut data = w.write_header(Vec::new()).unwrap();
    data.write_tensor("a", &[1, 2, 3, 4]).unwrap();
    assert_eq!(
        err_text(data.write_tensor("z", &[0; 4])),
        "GGUF writer: tensor 'z': all 1 declared tensors are already written"
    );
    let bytes = data.finish().unwrap();
    assert_eq!(
        Gguf::from_bytes("one.gguf", bytes)
            .unwrap()
            .tensor("a")
            .unwrap()
            .data,
        &[1, 2, 3, 4]
    );
}
