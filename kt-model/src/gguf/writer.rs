//! A GGUF v3 writer with the layout of llama.cpp's `gguf.cpp` and gguf-py: header,
//! metadata, tensor infos, zero padding to the alignment, then each tensor's data
//! followed by zero padding to the alignment.
//!
//! Writing is two-phase so tensor data can be streamed: declare metadata and tensor
//! infos on a [`GgufWriter`], call [`GgufWriter::write_header`], then hand each
//! tensor's bytes, in declaration order, to the returned [`TensorDataWriter`] (whole,
//! or piece by piece through a [`TensorSink`]). Only one tensor's bytes need exist at
//! a time, so multi-GB synthetic models are never held twice.

use std::collections::HashSet;
use std::io::{self, Read, Write};

use kt_kernels::quant::QType;

use super::parse::{ALIGNMENT_KEY, DEFAULT_ALIGNMENT, MAGIC, MAX_ARRAY_NESTING};
use super::tensor::{tensor_n_bytes, SizeError, MAX_DIMS};
use super::value::{Array, Value};
use crate::error::{ModelError, Result};

/// Longest tensor name llama.cpp accepts (`GGML_MAX_NAME` is 64 with the NUL).
pub const MAX_TENSOR_NAME_BYTES: usize = 63;

const VERSION: u32 = 3;

#[derive(Debug, Clone)]
struct Planned {
    name: String,
    qtype: QType,
    dims: Vec<usize>,
    n_bytes: usize,
}

/// Collects metadata and tensor infos; see the module docs.
#[derive(Debug, Clone)]
pub struct GgufWriter {
    alignment: u64,
    metadata: Vec<(String, Value)>,
    keys: HashSet<String>,
    tensors: Vec<Planned>,
    names: HashSet<String>,
}

impl Default for GgufWriter {
    fn default() -> Self {
        GgufWriter::new()
    }
}

impl GgufWriter {
    /// An empty file with the default alignment of 32.
    pub fn new() -> Self {
        GgufWriter {
            alignment: DEFAULT_ALIGNMENT,
            metadata: Vec::new(),
            keys: HashSet::new(),
            tensors: Vec::new(),
            names: HashSet::new(),
        }
    }

    /// Adds a metadata entry (written in the order added). `general.alignment` must be
    /// a u32 power of two and sets the data alignment.
    pub fn add(&mut self, key: impl Into<String>, value: impl Into<Value>) -> Result<()> {
        let key = key.into();
        let value = value.into();
        let err = |reason: String| ModelError::WriterKey {
            key: key.clone(),
            reason,
        };
        if self.keys.contains(&key) {
            return Err(err("added twice".into()));
        }
        if key == ALIGNMENT_KEY {
            match value {
                Value::U32(a) if a.is_power_of_two() => self.alignment = a.into(),
                _ => {
                    return Err(err(format!(
                        "must be a u32 power of two, got {}",
                        value.describe()
                    )))
                }
            }
        }
        if let Value::Array(a) = &value {
            if nesting(a) > MAX_ARRAY_NESTING {
                return Err(err(format!(
                    "arrays nested deeper than {MAX_ARRAY_NESTING} levels"
                )));
            }
        }
        self.keys.insert(key.clone());
        self.metadata.push((key, value));
        Ok(())
    }

    /// Declares a tensor: name, type and `ne[]` in ggml order (`dims[0]` = row length).
    /// Its bytes are written later, in declaration order, through the
    /// [`TensorDataWriter`].
    pub fn add_tensor_info(
        &mut self,
        name: impl Into<String>,
        qtype: QType,
        dims: &[usize],
    ) -> Result<()> {
        let name = name.into();
        let err = |reason: String| ModelError::WriterTensor {
            tensor: name.clone(),
            reason,
        };
        if name.is_empty() || name.len() > MAX_TENSOR_NAME_BYTES {
            return Err(err(format!(
                "name must be 1 to {MAX_TENSOR_NAME_BYTES} bytes"
            )));
        }
        if self.names.contains(&name) {
            return Err(err("added twice".into()));
        }
        if dims.is_empty() || dims.len() > MAX_DIMS || dims.contains(&0) {
            return Err(err(format!(
                "dims {dims:?}: need 1 to {MAX_DIMS} non-zero dims"
            )));
        }
        let n_bytes = match tensor_n_bytes(qtype, dims) {
            Ok(n) => n,
            Err(SizeError::RowLength { block }) => {
                return Err(err(format!(
                    "ne[0] = {} is not a multiple of the {qtype} block of {block}",
                    dims[0]
                )))
            }
            Err(SizeError::NoDims | SizeError::Overflow) => {
                return Err(err(format!("dims {dims:?} overflow")))
            }
        };
        self.names.insert(name.clone());
        self.tensors.push(Planned {
            name,
            qtype,
            dims: dims.to_vec(),
            n_bytes,
        });
        Ok(())
    }

    pub fn alignment(&self) -> u64 {
        self.alignment
    }

    pub fn n_tensors(&self) -> usize {
        self.tensors.len()
    }

    /// Writes header, metadata, tensor infos and the padding before the data section,
    /// and returns the writer that takes the tensors' bytes.
    pub fn write_header<W: Write>(self, mut w: W) -> Result<TensorDataWriter<W>> {
        let mut head = Vec::new();
        head.extend_from_slice(MAGIC);
        head.extend_from_slice(&VERSION.to_le_bytes());
        head.extend_from_slice(&(self.tensors.len() as u64).to_le_bytes());
        head.extend_from_slice(&(self.metadata.len() as u64).to_le_bytes());
        for (key, value) in &self.metadata {
            put_string(&mut head, key);
            head.extend_from_slice(&value.value_type().id().to_le_bytes());
            put_value(&mut head, value);
        }
        let mut offset: u64 = 0;
        for t in &self.tensors {
            put_string(&mut head, &t.name);
            head.extend_from_slice(&(t.dims.len() as u32).to_le_bytes());
            for &d in &t.dims {
                head.extend_from_slice(&(d as u64).to_le_bytes());
            }
            head.extend_from_slice(&t.qtype.ggml_id().to_le_bytes());
            head.extend_from_slice(&offset.to_le_bytes());
            offset = (t.n_bytes as u64)
                .checked_next_multiple_of(self.alignment)
                .and_then(|n| offset.checked_add(n))
                .ok_or_else(|| ModelError::WriterTensor {
                    tensor: t.name.clone(),
                    reason: "data section passes 2^64 bytes".into(),
                })?;
        }
        let padded = (head.len() as u64).next_multiple_of(self.alignment);
        head.resize(padded as usize, 0);
        w.write_all(&head)?;
        Ok(TensorDataWriter {
            w,
            alignment: self.alignment,
            tensors: self.tensors,
            next: 0,
            begun: None,
        })
    }
}

/// Takes the tensors' bytes, in declaration order, after the header.
#[derive(Debug)]
pub struct TensorDataWriter<W: Write> {
    w: W,
    alignment: u64,
    tensors: Vec<Planned>,
    next: usize,
    /// Bytes written so far of a tensor begun with `begin_tensor` and not finished
    /// (once some are, nothing else may be written: the file would be corrupt).
    begun: Option<usize>,
}

impl<W: Write> TensorDataWriter<W> {
    /// Writes the next tensor's bytes whole.
    pub fn write_tensor(&mut self, name: &str, data: &[u8]) -> Result<()> {
        let expected = self.next_tensor(name)?.n_bytes;
        if data.len() != expected {
            return Err(ModelError::WriterTensor {
                tensor: name.to_owned(),
                reason: format!("got {} bytes, expected {expected}", data.len()),
            });
        }
        let mut sink = self.begin_tensor(name)?;
        sink.write_all(data)?;
        sink.finish()
    }

    /// Starts the next tensor, to be written piece by piece through the sink; the
    /// sink's `finish` checks the length and pads.
    pub fn begin_tensor(&mut self, name: &str) -> Result<TensorSink<'_, W>> {
        self.next_tensor(name)?;
        self.begun = Some(0);
        Ok(TensorSink { parent: self })
    }

    /// The tensor due next, checked to be `name`, with no earlier one left half written.
    fn next_tensor(&self, name: &str) -> Result<&Planned> {
        if let Some(t) = self
            .begun
            .filter(|&n| n > 0)
            .and(self.tensors.get(self.next))
        {
            return Err(ModelError::WriterState {
                reason: format!("tensor '{}' was begun and never finished", t.name),
            });
        }
        let Some(t) = self.tensors.get(self.next) else {
            return Err(ModelError::WriterTensor {
                tensor: name.to_owned(),
                reason: format!(
                    "all {} declared tensors are already written",
                    self.tensors.len()
                ),
            });
        };
        if t.name != name {
            return Err(ModelError::WriterTensor {
                tensor: name.to_owned(),
                reason: format!("written out of order: '{}' comes next", t.name),
            });
        }
        Ok(t)
    }

    /// Checks that every declared tensor was written, flushes, and returns the output.
    pub fn finish(mut self) -> Result<W> {
        if let Some(t) = self.tensors.get(self.next) {
            // Covers a half-written tensor too: it is the next one.
            return Err(ModelError::WriterState {
                reason: format!(
                    "tensor '{}' and {} after it were never written",
                    t.name,
                    self.tensors.len() - self.next - 1
                ),
            });
        }
        self.w.flush()?;
        Ok(self.w)
    }
}

/// One tensor's bytes being written; `Write` refuses bytes past the tensor's size.
#[derive(Debug)]
pub struct TensorSink<'p, W: Write> {
    parent: &'p mut TensorDataWriter<W>,
}

impl<W: Write> TensorSink<'_, W> {
    fn planned(&self) -> &Planned {
        &self.parent.tensors[self.parent.next]
    }

    fn written(&self) -> usize {
        self.parent.begun.unwrap_or(0)
    }

    /// Bytes this tensor must have.
    pub fn expected(&self) -> usize {
        self.planned().n_bytes
    }

    /// Checks the length, writes the padding and moves on to the next tensor.
    pub fn finish(self) -> Result<()> {
        let (n, written) = (self.expected(), self.written());
        if written != n {
            return Err(ModelError::WriterTensor {
                tensor: self.planned().name.clone(),
                reason: format!("got {written} bytes, expected {n}"),
            });
        }
        let pad = (n as u64).next_multiple_of(self.parent.alignment) - n as u64;
        io::copy(&mut io::repeat(0).take(pad), &mut self.parent.w)?;
        self.parent.next += 1;
        self.parent.begun = None;
        Ok(())
    }
}

impl<W: Write> Write for TensorSink<'_, W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let left = self.expected() - self.written();
        if buf.len() > left {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "tensor '{}': more than its {} bytes",
                    self.planned().name,
                    self.expected()
                ),
            ));
        }
        let n = self.parent.w.write(buf)?;
        self.parent.begun = Some(self.written() + n);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.parent.w.flush()
    }
}

/// Depth of nested arrays: 1 for a flat array.
fn nesting(a: &Array) -> usize {
    match a {
        Array::Array(items) => 1 + items.iter().map(nesting).max().unwrap_or(0),
        _ => 1,
    }
}

fn put_string(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn put_value(out: &mut Vec<u8>, v: &Value) {
    match v {
        Value::U8(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I8(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::U16(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I16(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::U32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::U64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::F32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::F64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::Bool(x) => out.push(u8::from(*x)),
        Value::String(s) => put_string(out, s),
        Value::Array(a) => put_array(out, a),
    }
}

fn put_array(out: &mut Vec<u8>, a: &Array) {
    out.extend_from_slice(&a.elem_type().id().to_le_bytes());
    out.extend_from_slice(&(a.len() as u64).to_le_bytes());
    macro_rules! items {
        ($v:expr) => {
            for x in $v {
                out.extend_from_slice(&x.to_le_bytes());
            }
        };
    }
    match a {
        Array::U8(v) => out.extend_from_slice(v),
        Array::I8(v) => items!(v),
        Array::U16(v) => items!(v),
        Array::I16(v) => items!(v),
        Array::U32(v) => items!(v),
        Array::I32(v) => items!(v),
        Array::U64(v) => items!(v),
        Array::I64(v) => items!(v),
        Array::F32(v) => items!(v),
        Array::F64(v) => items!(v),
        Array::Bool(v) => out.extend(v.iter().map(|&b| u8::from(b))),
        Array::String(v) => v.iter().for_each(|s| put_string(out, s)),
        Array::Array(v) => v.iter().for_each(|inner| put_array(out, inner)),
    }
}
