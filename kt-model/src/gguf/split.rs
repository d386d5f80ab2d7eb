//! Split GGUF files as llama.cpp's `gguf-split` writes them: `name-00001-of-00003.gguf`
//! and so on, each a complete GGUF file holding some of the tensors (offsets relative
//! to its own data section). The first holds all the metadata plus `split.no` (0-based
//! index), `split.count` and `split.tensors.count`; the others hold the `split.*` keys.

use std::path::{Path, PathBuf};

use super::metadata::Metadata;
use crate::error::{ModelError, Result};

pub const SPLIT_NO_KEY: &str = "split.no";
pub const SPLIT_COUNT_KEY: &str = "split.count";
pub const SPLIT_TENSORS_COUNT_KEY: &str = "split.tensors.count";

/// gguf-split's file name of part `index` (0-based, as in `split.no`) of `count`.
pub fn split_file_name(prefix: &str, index: usize, count: usize) -> String {
    format!("{prefix}-{:05}-of-{count:05}.gguf", index + 1)
}

/// Parses `prefix-NNNNN-of-MMMMM.gguf` into (prefix, 0-based index, count).
pub fn parse_split_file_name(file_name: &str) -> Option<(&str, usize, usize)> {
    let stem = file_name.strip_suffix(".gguf")?;
    let (rest, count) = stem.rsplit_once("-of-")?;
    let (prefix, no) = rest.rsplit_once('-')?;
    let digits = |s: &str| s.len() == 5 && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(no) || !digits(count) {
        return None;
    }
    let no: usize = no.parse().ok()?;
    let count: usize = count.parse().ok()?;
    (no >= 1 && no <= count).then(|| (prefix, no - 1, count))
}

/// `split.count` of a file (1 when the key is absent).
pub(crate) fn split_count(meta: &Metadata) -> Result<usize> {
    let count = meta.opt_usize(SPLIT_COUNT_KEY)?.unwrap_or(1);
    if count == 0 {
        return Err(split_err(meta.path(), "split.count is 0".into()));
    }
    Ok(count)
}

/// The paths of parts 2..=count of the split set whose first part is `first`, after
/// checking that `first` is named and numbered as part 1.
pub(crate) fn other_part_paths(
    first: &Path,
    meta: &Metadata,
    count: usize,
) -> Result<Vec<PathBuf>> {
    let no = meta.get_usize(SPLIT_NO_KEY)?;
    let file_name = first.file_name().and_then(|n| n.to_str()).unwrap_or("");
    if no != 0 {
        return Err(split_err(
            first,
            format!(
                "this is part {} of {count}; open the first part (-00001-of-{count:05}.gguf)",
                no + 1
            ),
        ));
    }
    let Some((prefix, 0, name_count)) = parse_split_file_name(file_name) else {
        return Err(split_err(
            first,
            format!(
                "split.count is {count} but the file name is not <name>-00001-of-{count:05}.gguf"
            ),
        ));
    };
    if name_count != count {
        return Err(split_err(
            first,
            format!("split.count is {count} but the file name says {name_count} parts"),
        ));
    }
    let dir = first.parent().unwrap_or(Path::new(""));
    Ok((1..count)
        .map(|i| dir.join(split_file_name(prefix, i, count)))
        .collect())
}

/// Checks that a later part says it is part `index` of `count`.
pub(crate) fn check_part(meta: &Metadata, index: usize, count: usize) -> Result<()> {
    let no = meta.get_usize(SPLIT_NO_KEY)?;
    let its_count = meta.get_usize(SPLIT_COUNT_KEY)?;
    if no != index || its_count != count {
        return Err(split_err(
            meta.path(),
            format!(
                "says it is part {} of {its_count}, expected part {} of {count}",
                no.saturating_add(1),
                index + 1
            ),
        ));
    }
    Ok(())
}

pub(crate) fn split_err(path: &Path, reason: String) -> ModelError {
    ModelError::Split {
        path: path.to_owned(),
        reason,
    }
}
