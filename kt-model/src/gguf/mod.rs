//! GGUF files: a reader (v2 and v3, memory-mapped, split files merged), typed
//! metadata, and a streaming writer with llama.cpp's layout.
//!
//! The reader validates everything before handing out a byte: bad magic or version,
//! truncation anywhere, counts that cannot fit the file, unknown types, bad shapes,
//! misaligned offsets and data outside the file are typed errors naming the file and
//! the field or tensor.

mod cursor;
mod metadata;
mod mmap;
mod parse;
pub mod split;
mod tensor;
mod value;
mod writer;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use metadata::Metadata;
pub use parse::{ALIGNMENT_KEY, DEFAULT_ALIGNMENT, MAGIC, MAX_ARRAY_NESTING};
pub use tensor::{Tensor, TensorInfo, MAX_DIMS};
pub use value::{Array, Value, ValueType};
pub use writer::{GgufWriter, TensorDataWriter, TensorSink, MAX_TENSOR_NAME_BYTES};

use crate::error::{ModelError, Result};
use mmap::Backing;
use parse::ParsedFile;

/// One file of a GGUF model (the only one, or one part of a split set).
#[derive(Debug)]
pub struct GgufFile {
    path: PathBuf,
    version: u32,
    alignment: u64,
    data_offset: u64,
    n_tensors: usize,
    /// Shared so that kernels can hold tensor bytes beyond a borrow ([`Gguf::tensor_storage`]).
    bytes: Arc<Backing>,
}

impl GgufFile {
    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn version(&self) -> u32 {
        self.version
    }

    pub fn alignment(&self) -> u64 {
        self.alignment
    }

    /// Byte position of the data section.
    pub fn data_offset(&self) -> u64 {
        self.data_offset
    }

    pub fn n_tensors(&self) -> usize {
        self.n_tensors
    }

    /// File size in bytes.
    pub fn len(&self) -> usize {
        self.bytes.bytes().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A GGUF model: its metadata (from the first file) and the tensors of all its files.
#[derive(Debug)]
pub struct Gguf {
    files: Vec<GgufFile>,
    metadata: Metadata,
    tensors: Vec<TensorInfo>,
    index: HashMap<String, usize>,
}

impl Gguf {
    /// Opens a GGUF file by memory-mapping it. For the first part of a split set
    /// (`name-00001-of-0000N.gguf` with `split.count` = N) the other parts are opened
    /// from the same folder and their tensors merged.
    pub fn open(path: impl AsRef<Path>) -> Result<Gguf> {
        let path = path.as_ref();
        let (first, parsed) = load(path, Backing::map(path)?, 0)?;
        let metadata = Metadata::new(path, parsed.metadata)?;
        let count = split::split_count(&metadata)?;
        let mut gguf = Gguf::single(first, metadata, parsed.tensors)?;
        if count > 1 {
            let others = split::other_part_paths(path, &gguf.metadata, count)?;
            for (i, other) in others.iter().enumerate() {
                let (file, parsed) = load(other, Backing::map(other)?, i + 1)?;
                let meta = Metadata::new(other, parsed.metadata)?;
                split::check_part(&meta, i + 1, count)?;
                gguf.add_file(file, parsed.tensors)?;
            }
            gguf.check_split_tensor_count()?;
        }
        Ok(gguf)
    }

    /// Reads a GGUF file from bytes in memory; `label` names it in errors. Split
    /// sets must be opened from disk with [`Gguf::open`].
    pub fn from_bytes(label: impl Into<PathBuf>, bytes: Vec<u8>) -> Result<Gguf> {
        let path = label.into();
        let (file, parsed) = load(&path, Backing::Owned(bytes), 0)?;
        let metadata = Metadata::new(&path, parsed.metadata)?;
        if split::split_count(&metadata)? > 1 {
            return Err(split::split_err(
                &path,
                "a part of a split set cannot be read from memory; open the first part from disk"
                    .into(),
            ));
        }
        Gguf::single(file, metadata, parsed.tensors)
    }

    fn single(file: GgufFile, metadata: Metadata, tensors: Vec<TensorInfo>) -> Result<Gguf> {
        let mut gguf = Gguf {
            files: Vec::new(),
            metadata,
            tensors: Vec::new(),
            index: HashMap::new(),
        };
        gguf.add_file(file, tensors)?;
        Ok(gguf)
    }

    fn add_file(&mut self, file: GgufFile, tensors: Vec<TensorInfo>) -> Result<()> {
        self.tensors.reserve(tensors.len());
        for t in tensors {
            if self.index.contains_key(&t.name) {
                return Err(ModelError::DuplicateTensor {
                    path: file.path.clone(),
                    tensor: t.name,
                });
            }
            self.index.insert(t.name.clone(), self.tensors.len());
            self.tensors.push(t);
        }
        self.files.push(file);
        Ok(())
    }

    fn check_split_tensor_count(&self) -> Result<()> {
        if let Some(expected) = self.metadata.opt_usize(split::SPLIT_TENSORS_COUNT_KEY)? {
            if expected != self.tensors.len() {
                return Err(split::split_err(
                    self.path(),
                    format!(
                        "split.tensors.count is {expected} but the {} parts hold {} tensors",
                        self.files.len(),
                        self.tensors.len()
                    ),
                ));
            }
        }
        Ok(())
    }

    /// The path of the (first) file.
    pub fn path(&self) -> &Path {
        &self.files[0].path
    }

    /// The GGUF version of the (first) file.
    pub fn version(&self) -> u32 {
        self.files[0].version
    }

    /// The data alignment of the (first) file.
    pub fn alignment(&self) -> u64 {
        self.files[0].alignment
    }

    /// The files: one, or the parts of a split set in order.
    pub fn files(&self) -> &[GgufFile] {
        &self.files
    }

    pub fn metadata(&self) -> &Metadata {
        &self.metadata
    }

    /// Tensor infos in file order (parts in order for split sets).
    pub fn tensor_infos(&self) -> &[TensorInfo] {
        &self.tensors
    }

    pub fn n_tensors(&self) -> usize {
        self.tensors.len()
    }

    pub fn tensor_info(&self, name: &str) -> Option<&TensorInfo> {
        self.index.get(name).map(|&i| &self.tensors[i])
    }

    /// A tensor with its data, by name.
    pub fn tensor(&self, name: &str) -> Option<Tensor<'_>> {
        self.index.get(name).map(|&i| self.view(&self.tensors[i]))
    }

    /// A tensor with its data, or an error naming the missing tensor.
    pub fn require_tensor(&self, name: &str) -> Result<Tensor<'_>> {
        self.tensor(name).ok_or_else(|| ModelError::MissingTensor {
            path: self.path().to_owned(),
            tensor: name.to_owned(),
        })
    }

    /// All tensors with their data, in file order.
    pub fn tensors(&self) -> impl ExactSizeIterator<Item = Tensor<'_>> {
        self.tensors.iter().map(|t| self.view(t))
    }

    /// The owner of `name`'s bytes and where they start in it: for kernels that keep
    /// weights beyond a borrow of the `Gguf` (`kt_kernels::cpu::moe::ExpertStack`), without
    /// copying them. `None` when there is no such tensor.
    pub fn tensor_storage(&self, name: &str) -> Option<(kt_kernels::cpu::moe::Storage, usize)> {
        let t = &self.tensors[*self.index.get(name)?];
        let owner: kt_kernels::cpu::moe::Storage = self.files[t.file].bytes.clone();
        Some((owner, t.start))
    }

    fn view<'a>(&'a self, t: &'a TensorInfo) -> Tensor<'a> {
        // The parser checked start + n_bytes <= file length for this file.
        let bytes = self.files[t.file].bytes.bytes();
        Tensor::new(t, &bytes[t.start..t.start + t.n_bytes])
    }
}

fn load(path: &Path, bytes: Backing, file_index: usize) -> Result<(GgufFile, ParsedFile)> {
    let parsed = parse::parse(path, bytes.bytes(), file_index)?;
    let file = GgufFile {
        path: path.to_owned(),
        version: parsed.version,
        alignment: parsed.alignment,
        data_offset: parsed.data_offset,
        n_tensors: parsed.tensors.len(),
        bytes: Arc::new(bytes),
    };
    Ok((file, parsed))
}
