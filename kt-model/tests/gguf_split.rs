//! Split sets as llama.cpp's gguf-split writes them (`-0000k-of-0000N.gguf`, the
//! first with all metadata, each with `split.no` / `split.count` /
//! `split.tensors.count`): opening the first part opens all and merges the tensors.

mod gguf_common;

use std::path::{Path, PathBuf};

use gguf_common::*;
use kt_model::gguf::split::{parse_split_file_name, split_file_name};
use kt_model::gguf::{Gguf, Value};
use kt_model::ModelError;

type Part = (Vec<(String, Value)>, Vec<TensorSpec>);

/// Splits the q4_k_m fixture into parts of the given tensor counts, as gguf-split
/// does; returns the original and the parts (not yet written).
fn split_fixture(sizes: &[usize]) -> (Gguf, Vec<Part>) {
    let g = open(&dsv3_dir().join("tiny-dsv3-q4_k_m.gguf"));
    let (meta, tensors) = contents(&g);
    assert_eq!(sizes.iter().sum::<usize>(), tensors.len());
    let n = sizes.len();
    let mut parts = Vec::new();
    let mut rest = tensors.into_iter();
    for (i, &size) in sizes.iter().enumerate() {
        let mut m = if i == 0 { meta.clone() } else { Vec::new() };
        m.push(("split.no".into(), Value::U16(i as u16)));
        m.push(("split.count".into(), Value::U16(n as u16)));
        m.push((
            "split.tensors.count".into(),
            Value::I32(g.n_tensors() as i32),
        ));
        parts.push((m, rest.by_ref().take(size).collect()));
    }
    (g, parts)
}

fn write_parts(dir: &Path, prefix: &str, parts: &[Part]) -> Vec<PathBuf> {
    parts
        .iter()
        .enumerate()
        .map(|(i, (meta, tensors))| {
            let path = dir.join(split_file_name(prefix, i, parts.len()));
            std::fs::write(&path, write_gguf(meta, tensors)).unwrap();
            path
        })
        .collect()
}

#[test]
fn file_names() {
    assert_eq!(split_file_name("model", 0, 3), "model-00001-of-00003.gguf");
    assert_eq!(
        parse_split_file_name("model-q4-00002-of-00010.gguf"),
        Some(("model-q4", 1, 10))
    );
    for bad in [
        "model.gguf",
        "model-00000-of-00003.gguf",
        "model-00004-of-00003.gguf",
        "model-1-of-3.gguf",
        "model-00001-of-00003.bin",
    ] {
        assert_eq!(parse_split_file_name(bad), None, "{bad}");
    }
}

#[test]
fn opening_the_first_part_merges_all_parts() {
    let dir = tempfile::tempdir().unwrap();
    let (original, parts) = split_fixture(&[20, 1, 31]);
    let paths = write_parts(dir.path(), "tiny", &parts);
    let g = open(&paths[0]);
    assert_eq!(g.files().len(), 3);
    for (f, (path, part)) in g.files().iter().zip(paths.iter().zip(&parts)) {
        assert_eq!((f.path(), f.n_tensors()), (path.as_path(), part.1.len()));
    }
    assert_eq!(g.n_tensors(), original.n_tensors());
    for (a, b) in g.tensors().zip(original.tensors()) {
        assert_eq!((a.name, a.qtype, a.dims), (b.name, b.qtype, b.dims));
        assert_eq!(a.data, b.data, "{}", a.name);
    }
    // Part-relative offsets: the first tensor of each part is at offset 0.
    assert_eq!(g.tensor_infos()[20].offset(), 0);
    assert_eq!(g.tensor_infos()[20].file_index(), 1);
    assert_eq!(g.tensor_infos()[21].file_index(), 2);
    // The metadata is the first part's.
    for (k, v) in original.metadata().iter() {
        assert_eq!(g.metadata().get(k), Some(v), "{k}");
    }
    assert_eq!(g.metadata().get_u32("split.count").unwrap(), 3);
}

#[test]
fn opening_a_later_part_says_which_to_open() {
    let dir = tempfile::tempdir().unwrap();
    let (_, parts) = split_fixture(&[10, 10, 32]);
    let paths = write_parts(dir.path(), "tiny", &parts);
    let e = Gguf::open(&paths[1]).unwrap_err().to_string();
    assert!(
        e.contains(
            "tiny-00002-of-00003.gguf: split files: this is part 2 of 3; open the first part"
        ),
        "{e}"
    );
}

#[test]
fn a_missing_part_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let (_, parts) = split_fixture(&[10, 10, 32]);
    let paths = write_parts(dir.path(), "tiny", &parts);
    std::fs::remove_file(&paths[2]).unwrap();
    match Gguf::open(&paths[0]) {
        Err(ModelError::Io { path, .. }) => assert_eq!(path, paths[2]),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_truncated_part_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let (_, parts) = split_fixture(&[10, 10, 32]);
    let paths = write_parts(dir.path(), "tiny", &parts);
    let bytes = std::fs::read(&paths[1]).unwrap();
    std::fs::write(&paths[1], &bytes[..bytes.len() / 2]).unwrap();
    match Gguf::open(&paths[0]) {
        Err(ModelError::TensorPastEnd { path, .. }) => assert_eq!(path, paths[1]),
        other => panic!("{other:?}"),
    }
}

#[test]
fn parts_must_agree_on_numbering_and_tensor_count() {
    let dir = tempfile::tempdir().unwrap();
    let (_, mut parts) = split_fixture(&[10, 10, 32]);
    set_meta(&mut parts[1].0, "split.no", Value::U16(2));
    let paths = write_parts(dir.path(), "a", &parts);
    let e = Gguf::open(&paths[0]).unwrap_err().to_string();
    assert!(
        e.contains(
            "a-00002-of-00003.gguf: split files: says it is part 3 of 3, expected part 2 of 3"
        ),
        "{e}"
    );

    let (_, mut parts) = split_fixture(&[10, 10, 32]);
    set_meta(&mut parts[0].0, "split.tensors.count", Value::I32(40));
    let paths = write_parts(dir.path(), "b", &parts);
    let e = Gguf::open(&paths[0]).unwrap_err().to_string();
    assert!(
        e.contains("split.tensors.count is 40 but the 3 parts hold 52 tensors"),
        "{e}"
    );
}

#[test]
fn a_tensor_in_two_parts_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (_, mut parts) = split_fixture(&[10, 10, 32]);
    let dup = parts[0].1[3].clone();
    parts[2].1.push(dup.clone());
    let paths = write_parts(dir.path(), "tiny", &parts);
    match Gguf::open(&paths[0]) {
        Err(ModelError::DuplicateTensor { path, tensor }) => {
            assert_eq!((path, tensor), (paths[2].clone(), dup.0))
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_first_part_must_be_named_like_one() {
    let dir = tempfile::tempdir().unwrap();
    let (_, parts) = split_fixture(&[10, 10, 32]);
    let paths = write_parts(dir.path(), "tiny", &parts);
    let renamed = dir.path().join("renamed.gguf");
    std::fs::rename(&paths[0], &renamed).unwrap();
    let e = Gguf::open(&renamed).unwrap_err().to_string();
    assert!(
        e.contains("split.count is 3 but the file name is not <name>-00001-of-00003.gguf"),
        "{e}"
    );
    // And a part cannot be read from memory, where its siblings cannot be found.
    let e = Gguf::from_bytes("mem.gguf", std::fs::read(&renamed).unwrap())
        .unwrap_err()
        .to_string();
    assert!(e.contains("open the first part from disk"), "{e}");
}

#[test]
fn a_single_file_with_split_count_one_opens_alone() {
    let dir = tempfile::tempdir().unwrap();
    let (original, parts) = split_fixture(&[52]);
    let paths = write_parts(dir.path(), "one", &parts);
    let g = open(&paths[0]);
    assert_eq!((g.files().len(), g.n_tensors()), (1, original.n_tensors()));
}
