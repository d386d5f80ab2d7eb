//! Parses one GGUF file (v2 or v3, little-endian) from its bytes: header, metadata,
//! tensor infos, and the position of the data section; every tensor's data range is
//! checked against the file. Nothing here panics or allocates more than the file
//! could hold, whatever the bytes.

use std::collections::HashSet;
use std::path::Path;

use kt_kernels::quant::QType;

use super::cursor::{Cursor, What};
use super::tensor::{tensor_n_bytes, SizeError, TensorInfo, MAX_DIMS};
use super::value::{Array, Value, ValueType};
use crate::error::{ModelError, Result};

pub const MAGIC: &[u8; 4] = b"GGUF";
pub const DEFAULT_ALIGNMENT: u64 = 32;
pub const ALIGNMENT_KEY: &str = "general.alignment";

/// Arrays of arrays deeper than this are refused (llama.cpp reads none at all); the
/// limit bounds the reader's recursion.
pub const MAX_ARRAY_NESTING: usize = 8;

/// Fewest bytes of one metadata entry: key length, value type, a one-byte value.
const MIN_KV_BYTES: u64 = 8 + 4 + 1;
/// Fewest bytes of one tensor info: name length, n_dims, one dim, type, offset.
const MIN_TENSOR_INFO_BYTES: u64 = 8 + 4 + 8 + 4 + 8;

/// One parsed file. Tensor infos carry `file` = the index given to [`parse`].
#[derive(Debug)]
pub(crate) struct ParsedFile {
    pub version: u32,
    pub metadata: Vec<(String, Value)>,
    pub alignment: u64,
    pub data_offset: u64,
    pub tensors: Vec<TensorInfo>,
}

pub(crate) fn parse(path: &Path, buf: &[u8], file_index: usize) -> Result<ParsedFile> {
    let mut c = Cursor::new(path, buf);
    let magic = c.array::<4>(&|| "header: magic".into())?;
    if &magic != MAGIC {
        return Err(ModelError::BadMagic {
            path: path.to_owned(),
            found: magic,
        });
    }
    let version = c.u32(&|| "header: version".into())?;
    match version {
        2 | 3 => {}
        v if matches!(v.swap_bytes(), 2 | 3) => {
            return Err(ModelError::BigEndian {
                path: path.to_owned(),
                version: v.swap_bytes(),
            })
        }
        v => {
            return Err(ModelError::UnsupportedVersion {
                path: path.to_owned(),
                version: v,
            })
        }
    }
    let n_tensors = c.u64(&|| "header: tensor count".into())?;
    let n_kv = c.u64(&|| "header: metadata count".into())?;

    let metadata = read_metadata(&mut c, n_kv)?;
    let alignment = alignment_of(path, &metadata)?;

    let n_tensors = c.check_count(n_tensors, MIN_TENSOR_INFO_BYTES, &|| {
        "header: tensor count".into()
    })?;
    let mut tensors = Vec::with_capacity(n_tensors);
    let mut names = HashSet::with_capacity(n_tensors);
    for i in 0..n_tensors {
        let info = read_tensor_info(&mut c, i, alignment, file_index)?;
        if !names.insert(info.name.clone()) {
            return Err(ModelError::DuplicateTensor {
                path: path.to_owned(),
                tensor: info.name,
            });
        }
        tensors.push(info);
    }

    // The data section starts at the next multiple of the alignment. A file with no
    // tensors may stop before it; any tensor past the end is caught below.
    let end_of_infos = c.pos() as u64;
    let data_offset = end_of_infos
        .checked_next_multiple_of(alignment)
        .unwrap_or(u64::MAX);
    let file_len = buf.len() as u64;
    for t in &mut tensors {
        let start = data_offset.saturating_add(t.offset);
        let end = start.saturating_add(t.n_bytes as u64);
        if end > file_len {
            return Err(ModelError::TensorPastEnd {
                path: path.to_owned(),
                tensor: t.name.clone(),
                start,
                end,
                len: file_len,
            });
        }
        // start < end <= file_len <= usize::MAX.
        t.start = start as usize;
    }
    Ok(ParsedFile {
        version,
        metadata,
        alignment,
        data_offset,
        tensors,
    })
}

fn read_metadata(c: &mut Cursor, n_kv: u64) -> Result<Vec<(String, Value)>> {
    let n_kv = c.check_count(n_kv, MIN_KV_BYTES, &|| "header: metadata count".into())?;
    let mut entries = Vec::with_capacity(n_kv);
    let mut keys = HashSet::with_capacity(n_kv);
    for i in 0..n_kv {
        let key = c.string(&|| format!("metadata entry #{i}: key"))?;
        let what = || format!("metadata '{key}'");
        let type_id = c.u32(&|| format!("{}: value type", what()))?;
        let value = read_value(c, type_id, 0, &what)?;
        if !keys.insert(key.clone()) {
            return Err(ModelError::DuplicateKey {
                path: c.path().to_owned(),
                key,
            });
        }
        entries.push((key, value));
    }
    Ok(entries)
}

fn value_type(c: &Cursor, id: u32, what: What) -> Result<ValueType> {
    ValueType::from_id(id).ok_or_else(|| ModelError::UnknownValueType {
        path: c.path().to_owned(),
        what: what(),
        id,
    })
}

fn read_value(c: &mut Cursor, type_id: u32, depth: usize, what: What) -> Result<Value> {
    let ty = value_type(c, type_id, what)?;
    Ok(match ty {
        ValueType::U8 => Value::U8(u8::from_le_bytes(c.array(what)?)),
        ValueType::I8 => Value::I8(i8::from_le_bytes(c.array(what)?)),
        ValueType::U16 => Value::U16(u16::from_le_bytes(c.array(what)?)),
        ValueType::I16 => Value::I16(i16::from_le_bytes(c.array(what)?)),
        ValueType::U32 => Value::U32(u32::from_le_bytes(c.array(what)?)),
        ValueType::I32 => Value::I32(i32::from_le_bytes(c.array(what)?)),
        ValueType::U64 => Value::U64(u64::from_le_bytes(c.array(what)?)),
        ValueType::I64 => Value::I64(i64::from_le_bytes(c.array(what)?)),
        ValueType::F32 => Value::F32(f32::from_le_bytes(c.array(what)?)),
        ValueType::F64 => Value::F64(f64::from_le_bytes(c.array(what)?)),
        ValueType::Bool => {
            let [byte] = c.array::<1>(what)?;
            Value::Bool(to_bool(c, byte, what)?)
        }
        ValueType::String => Value::String(c.string(what)?),
        ValueType::Array => Value::Array(read_array(c, depth + 1, what)?),
    })
}

fn to_bool(c: &Cursor, byte: u8, what: What) -> Result<bool> {
    match byte {
        0 => Ok(false),
        1 => Ok(true),
        byte => Err(ModelError::BadBool {
            path: c.path().to_owned(),
            what: what(),
            byte,
        }),
    }
}

/// Reads `count` fixed-size little-endian values in one bounds check.
fn read_fixed<T, const N: usize>(
    c: &mut Cursor,
    count: usize,
    what: What,
    conv: fn([u8; N]) -> T,
) -> Result<Vec<T>> {
    let bytes = c.bytes((count * N) as u64, what)?;
    Ok(bytes
        .chunks_exact(N)
        .map(|b| {
            let mut a = [0u8; N];
            a.copy_from_slice(b);
            conv(a)
        })
        .collect())
}

fn read_array(c: &mut Cursor, depth: usize, what: What) -> Result<Array> {
    if depth > MAX_ARRAY_NESTING {
        return Err(ModelError::NestingTooDeep {
            path: c.path().to_owned(),
            what: what(),
            max_depth: MAX_ARRAY_NESTING,
        });
    }
    let elem_id = c.u32(&|| format!("{}: array element type", what()))?;
    let elem = value_type(c, elem_id, &|| format!("{}: array element type", what()))?;
    let count = c.u64(&|| format!("{}: array length", what()))?;
    let count = c.check_count(count, elem.min_size() as u64, &|| {
        format!("{}: array of {elem}", what())
    })?;
    let items = &|| format!("{}: array of {count} {elem}", what());
    Ok(match elem {
        ValueType::U8 => Array::U8(read_fixed(c, count, items, u8::from_le_bytes)?),
        ValueType::I8 => Array::I8(read_fixed(c, count, items, i8::from_le_bytes)?),
        ValueType::U16 => Array::U16(read_fixed(c, count, items, u16::from_le_bytes)?),
        ValueType::I16 => Array::I16(read_fixed(c, count, items, i16::from_le_bytes)?),
        ValueType::U32 => Array::U32(read_fixed(c, count, items, u32::from_le_bytes)?),
        ValueType::I32 => Array::I32(read_fixed(c, count, items, i32::from_le_bytes)?),
        ValueType::U64 => Array::U64(read_fixed(c, count, items, u64::from_le_bytes)?),
        ValueType::I64 => Array::I64(read_fixed(c, count, items, i64::from_le_bytes)?),
        ValueType::F32 => Array::F32(read_fixed(c, count, items, f32::from_le_bytes)?),
        ValueType::F64 => Array::F64(read_fixed(c, count, items, f64::from_le_bytes)?),
        ValueType::Bool => {
            let bytes = c.bytes(count as u64, items)?;
            let mut out = Vec::with_capacity(count);
            for (j, &b) in bytes.iter().enumerate() {
                out.push(to_bool(c, b, &|| format!("{}[{j}]", what()))?);
            }
            Array::Bool(out)
        }
        ValueType::String => {
            let mut out = Vec::with_capacity(count);
            for j in 0..count {
                out.push(c.string(&|| format!("{}[{j}]", what()))?);
            }
            Array::String(out)
        }
        ValueType::Array => {
            let mut out = Vec::with_capacity(count);
            for j in 0..count {
                out.push(read_array(c, depth + 1, &|| format!("{}[{j}]", what()))?);
            }
            Array::Array(out)
        }
    })
}

/// `general.alignment` (any integer type), a power of two; 32 when absent.
fn alignment_of(path: &Path, metadata: &[(String, Value)]) -> Result<u64> {
    let Some((_, v)) = metadata.iter().find(|(k, _)| k == ALIGNMENT_KEY) else {
        return Ok(DEFAULT_ALIGNMENT);
    };
    let Some(i) = v.as_int() else {
        return Err(ModelError::WrongType {
            path: path.to_owned(),
            key: ALIGNMENT_KEY.into(),
            expected: "u32",
            found: v.describe(),
        });
    };
    match u64::try_from(i) {
        Ok(a) if a.is_power_of_two() => Ok(a),
        _ => Err(ModelError::BadAlignment {
            path: path.to_owned(),
            value: i as u64,
        }),
    }
}

fn read_tensor_info(
    c: &mut Cursor,
    index: usize,
    alignment: u64,
    file_index: usize,
) -> Result<TensorInfo> {
    let path = c.path();
    let name = c.string(&|| format!("tensor info #{index}: name"))?;
    let what = || format!("tensor '{name}'");
    let n_dims = c.u32(&|| format!("{}: n_dims", what()))?;
    if n_dims == 0 || n_dims as usize > MAX_DIMS {
        return Err(ModelError::TensorDims {
            path: path.to_owned(),
            tensor: name,
            n_dims,
        });
    }
    let mut raw_dims = Vec::with_capacity(n_dims as usize);
    for d in 0..n_dims as usize {
        let ne = c.u64(&|| format!("{}: ne[{d}]", what()))?;
        if ne == 0 || ne > i64::MAX as u64 {
            return Err(ModelError::TensorDim {
                path: path.to_owned(),
                tensor: name,
                index: d,
                value: ne,
            });
        }
        raw_dims.push(ne);
    }
    let type_id = c.u32(&|| format!("{}: type", what()))?;
    let offset = c.u64(&|| format!("{}: offset", what()))?;
    let Some(qtype) = QType::from_ggml_id(type_id) else {
        return Err(ModelError::UnknownTensorType {
            path: path.to_owned(),
            tensor: name,
            id: type_id,
        });
    };
    let dims: Option<Vec<usize>> = raw_dims.iter().map(|&d| usize::try_from(d).ok()).collect();
    let n_bytes = match dims.as_deref().map(|d| tensor_n_bytes(qtype, d)) {
        Some(Ok(n)) => n,
        Some(Err(SizeError::RowLength { block })) => {
            return Err(ModelError::TensorRowLength {
                path: path.to_owned(),
                tensor: name,
                qtype,
                ne0: raw_dims[0],
                block,
            })
        }
        Some(Err(SizeError::NoDims | SizeError::Overflow)) | None => {
            return Err(ModelError::TensorSizeOverflow {
                path: path.to_owned(),
                tensor: name,
                dims: raw_dims,
            })
        }
    };
    if offset % alignment != 0 {
        return Err(ModelError::TensorMisaligned {
            path: path.to_owned(),
            tensor: name,
            offset,
            alignment,
        });
    }
    Ok(TensorInfo {
        name,
        qtype,
        dims: dims.unwrap_or_default(),
        offset,
        n_bytes,
        file: file_index,
        start: 0,
    })
}
