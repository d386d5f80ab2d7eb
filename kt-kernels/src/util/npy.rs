//! A small reader and writer for NumPy's `.npy` files: little-endian `f32`, `i32` and `i64`
//! arrays in C order, format versions 1, 2 and 3. Enough for the reference fixtures the
//! tests compare against and for the logits kt-bench writes; not a general NumPy loader.
//!
//! Layout: the magic `\x93NUMPY`, a major and a minor version byte, the header length
//! (u16 LE in v1, u32 LE in v2/v3), then a Python dict literal such as
//! `{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }` padded with spaces and a
//! final `\n` so that the data starts on a 64-byte boundary, then the raw elements.

use std::path::Path;

const MAGIC: &[u8; 6] = b"\x93NUMPY";
/// The data of a written file starts at a multiple of this many bytes (NumPy's choice).
const ALIGN: usize = 64;

/// What went wrong reading or writing a `.npy` file.
#[derive(Debug, thiserror::Error)]
pub enum NpyError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("not a supported .npy file: {0}")]
    Format(String),
    #[error("array holds {got} elements but {what} needs {expected}")]
    Mismatch {
        what: &'static str,
        expected: String,
        got: String,
    },
}

/// The element types this module reads and writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NpyDtype {
    F32,
    I32,
    I64,
}

impl NpyDtype {
    fn descr(self) -> &'static str {
        match self {
            NpyDtype::F32 => "<f4",
            NpyDtype::I32 => "<i4",
            NpyDtype::I64 => "<i8",
        }
    }

    fn from_descr(d: &str) -> Result<Self, NpyError> {
        match d {
            "<f4" => Ok(NpyDtype::F32),
            "<i4" => Ok(NpyDtype::I32),
            "<i8" => Ok(NpyDtype::I64),
            other => Err(NpyError::Format(format!(
                "dtype {other:?} (only <f4, <i4, <i8 are read)"
            ))),
        }
    }

    fn size(self) -> usize {
        match self {
            NpyDtype::F32 | NpyDtype::I32 => 4,
            NpyDtype::I64 => 8,
        }
    }
}

/// The elements of an array, in C order.
#[derive(Debug, Clone, PartialEq)]
pub enum NpyData {
    F32(Vec<f32>),
    I32(Vec<i32>),
    I64(Vec<i64>),
}

/// A whole `.npy` array: its shape and its elements.
#[derive(Debug, Clone, PartialEq)]
pub struct NpyArray {
    pub shape: Vec<usize>,
    pub data: NpyData,
}

impl NpyArray {
    pub fn dtype(&self) -> NpyDtype {
        match self.data {
            NpyData::F32(_) => NpyDtype::F32,
            NpyData::I32(_) => NpyDtype::I32,
            NpyData::I64(_) => NpyDtype::I64,
        }
    }

    pub fn len(&self) -> usize {
        match &self.data {
            NpyData::F32(v) => v.len(),
            NpyData::I32(v) => v.len(),
            NpyData::I64(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The f32 elements; an integer array is refused (no silent conversion of ids).
    pub fn into_f32(self) -> Result<Vec<f32>, NpyError> {
        match self.data {
            NpyData::F32(v) => Ok(v),
            other => Err(NpyError::Format(format!(
                "expected <f4 data, found {:?}",
                dtype_of(&other)
            ))),
        }
    }

    /// The integer elements widened to i64; a float array is refused.
    pub fn into_i64(self) -> Result<Vec<i64>, NpyError> {
        match self.data {
            NpyData::I32(v) => Ok(v.into_iter().map(i64::from).collect()),
            NpyData::I64(v) => Ok(v),
            NpyData::F32(_) => Err(NpyError::Format("expected integer data, found <f4".into())),
        }
    }

    /// Checks that the shape is exactly `expected` (fixture tests state what they read).
    pub fn expect_shape(&self, expected: &[usize]) -> Result<(), NpyError> {
        if self.shape == expected {
            Ok(())
        } else {
            Err(NpyError::Mismatch {
                what: "the expected shape",
                expected: format!("{expected:?}"),
                got: format!("{:?}", self.shape),
            })
        }
    }
}

fn dtype_of(d: &NpyData) -> NpyDtype {
    match d {
        NpyData::F32(_) => NpyDtype::F32,
        NpyData::I32(_) => NpyDtype::I32,
        NpyData::I64(_) => NpyDtype::I64,
    }
}

/// Reads a `.npy` file.
pub fn read_npy(path: impl AsRef<Path>) -> Result<NpyArray, NpyError> {
    let path = path.as_ref();
    let bytes = std::fs::read(path).map_err(|source| NpyError::Io {
        path: path.display().to_string(),
        source,
    })?;
    parse_npy(&bytes)
}

/// Parses the bytes of a `.npy` file.
pub fn parse_npy(bytes: &[u8]) -> Result<NpyArray, NpyError> {
    if bytes.len() < 10 || &bytes[..6] != MAGIC {
        return Err(NpyError::Format("missing the \\x93NUMPY magic".into()));
    }
    let major = bytes[6];
    let (header_len, header_start) = match major {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10usize),
        2 | 3 => {
            if bytes.len() < 12 {
                return Err(NpyError::Format("truncated v2 header length".into()));
            }
            (
                u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
                12,
            )
        }
        v => return Err(NpyError::Format(format!("format version {v}"))),
    };
    let data_start = header_start
        .checked_add(header_len)
        .filter(|&e| e <= bytes.len())
        .ok_or_else(|| {
            NpyError::Format(format!(
                "header of {header_len} bytes runs past the file end"
            ))
        })?;
    // v3 allows utf-8 in the header; every header we accept is plain ASCII anyway.
    let header = std::str::from_utf8(&bytes[header_start..data_start])
        .map_err(|_| NpyError::Format("header is not utf-8".into()))?;

    let descr = dict_value(header, "descr")?;
    let descr = descr.trim().trim_matches(|c| c == '\'' || c == '"');
    // a one-byte type has '|' as its byte order; none of ours do, so a descr is taken verbatim
    let dtype = NpyDtype::from_descr(descr)?;
    match dict_value(header, "fortran_order")?.trim() {
        "False" => {}
        "True" => {
            return Err(NpyError::Format(
                "Fortran-ordered arrays are not read".into(),
            ))
        }
        other => return Err(NpyError::Format(format!("fortran_order = {other:?}"))),
    }
    let shape = parse_shape(&dict_value(header, "shape")?)?;

    let count = shape
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| NpyError::Format(format!("shape {shape:?} overflows")))?;
    let payload = &bytes[data_start..];
    let expected_bytes = count
        .checked_mul(dtype.size())
        .ok_or_else(|| NpyError::Format(format!("shape {shape:?} overflows")))?;
    if payload.len() != expected_bytes {
        return Err(NpyError::Mismatch {
            what: "the header's shape",
            expected: format!("{expected_bytes} data bytes"),
            got: format!("{} data bytes", payload.len()),
        });
    }
    let data = match dtype {
        NpyDtype::F32 => NpyData::F32(
            payload
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
        ),
        NpyDtype::I32 => NpyData::I32(
            payload
                .chunks_exact(4)
                .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
        ),
        NpyDtype::I64 => NpyData::I64(
            payload
                .chunks_exact(8)
                .map(|c| i64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
                .collect(),
        ),
    };
    Ok(NpyArray { shape, data })
}

/// The text of `'key': <value>` in the header dict, up to the next top-level comma or brace.
fn dict_value(header: &str, key: &str) -> Result<String, NpyError> {
    let missing = || NpyError::Format(format!("header has no {key:?}: {header:?}"));
    let quoted_single = format!("'{key}'");
    let quoted_double = format!("\"{key}\"");
    let at = header
        .find(&quoted_single)
        .or_else(|| header.find(&quoted_double))
        .ok_or_else(missing)?;
    let rest = &header[at + key.len() + 2..];
    let rest = rest.trim_start().strip_prefix(':').ok_or_else(missing)?;
    let mut depth = 0usize;
    let mut end = rest.len();
    for (i, c) in rest.char_indices() {
        match c {
            '(' | '[' => depth += 1,
            ')' | ']' => depth = depth.saturating_sub(1),
            ',' | '}' if depth == 0 => {
                end = i;
                break;
            }
            _ => {}
        }
    }
    Ok(rest[..end].trim().to_string())
}

/// `()` -> [], `(16,)` -> [16], `(2, 24, 6)` -> [2, 24, 6].
fn parse_shape(text: &str) -> Result<Vec<usize>, NpyError> {
    let inner = text
        .strip_prefix('(')
        .and_then(|t| t.strip_suffix(')'))
        .ok_or_else(|| NpyError::Format(format!("shape {text:?} is not a tuple")))?;
    inner
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.trim_end_matches('L')
                .parse::<usize>()
                .map_err(|_| NpyError::Format(format!("shape entry {s:?}")))
        })
        .collect()
}

/// The bytes of a `.npy` file (v1 header unless it needs more than 65535 bytes).
pub fn npy_bytes(shape: &[usize], data: &NpyData) -> Result<Vec<u8>, NpyError> {
    let dtype = dtype_of(data);
    let count: usize = shape.iter().product();
    let len = match data {
        NpyData::F32(v) => v.len(),
        NpyData::I32(v) => v.len(),
        NpyData::I64(v) => v.len(),
    };
    if count != len {
        return Err(NpyError::Mismatch {
            what: "the shape",
            expected: format!("{count} ({shape:?})"),
            got: len.to_string(),
        });
    }
    let shape_text = match shape {
        [] => "()".to_string(),
        [d] => format!("({d},)"),
        dims => format!(
            "({})",
            dims.iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let dict = format!(
        "{{'descr': '{}', 'fortran_order': False, 'shape': {shape_text}, }}",
        dtype.descr()
    );
    // v1 if the padded header fits in a u16, else v2
    let (major, prefix) = if 10 + dict.len() < u16::MAX as usize {
        (1u8, 10)
    } else {
        (2u8, 12)
    };
    let unpadded = prefix + dict.len() + 1; // + the closing '\n'
    let total_header = unpadded.div_ceil(ALIGN) * ALIGN;
    let header_len = total_header - prefix;

    let mut out = Vec::with_capacity(total_header + len * dtype.size());
    out.extend_from_slice(MAGIC);
    out.push(major);
    out.push(0);
    if major == 1 {
        out.extend_from_slice(&(header_len as u16).to_le_bytes());
    } else {
        out.extend_from_slice(&(header_len as u32).to_le_bytes());
    }
    out.extend_from_slice(dict.as_bytes());
    out.resize(total_header - 1, b' ');
    out.push(b'\n');
    match data {
        NpyData::F32(v) => v
            .iter()
            .for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
        NpyData::I32(v) => v
            .iter()
            .for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
        NpyData::I64(v) => v
            .iter()
            .for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
    }
    Ok(out)
}

/// Writes `data` (C order) with the given shape as a `.npy` file.
pub fn write_npy(path: impl AsRef<Path>, shape: &[usize], data: &NpyData) -> Result<(), NpyError> {
    let path = path.as_ref();
    let bytes = npy_bytes(shape, data)?;
    std::fs::write(path, bytes).map_err(|source| NpyError::Io {
        path: path.display().to_string(),
        source,
    })
}

/// Writes an f32 array (the common case: logits, activations).
pub fn write_npy_f32(
    path: impl AsRef<Path>,
    shape: &[usize],
    data: &[f32],
) -> Result<(), NpyError> {
    write_npy(path, shape, &NpyData::F32(data.to_vec()))
}

/// Writes an i32 array (token ids, expert ids).
pub fn write_npy_i32(
    path: impl AsRef<Path>,
    shape: &[usize],
    data: &[i32],
) -> Result<(), NpyError> {
    write_npy(path, shape, &NpyData::I32(data.to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_each_dtype_and_rank() {
        let cases: Vec<(Vec<usize>, NpyData)> = vec![
            (
                vec![2, 3],
                NpyData::F32(vec![1.5, -2.0, 3.25, f32::MIN_POSITIVE, 1e30, -0.0]),
            ),
            (vec![4], NpyData::I32(vec![7, -1, i32::MAX, i32::MIN])),
            (vec![1, 2, 1], NpyData::I64(vec![i64::MIN, 42])),
            (vec![], NpyData::F32(vec![9.0])),
            (vec![0, 5], NpyData::I32(vec![])),
        ];
        for (shape, data) in cases {
            let bytes = npy_bytes(&shape, &data).unwrap();
            // the data starts on a 64-byte boundary, as NumPy writes it
            let header_len = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
            assert_eq!((10 + header_len) % ALIGN, 0);
            let back = parse_npy(&bytes).unwrap();
            assert_eq!(back.shape, shape);
            assert_eq!(back.data, data);
        }
    }

    /// Bytes exactly as NumPy 2.x writes `np.array([[1, 2, 3]], dtype='<i4')`.
    #[test]
    fn reads_numpy_written_header() {
        let mut b = b"\x93NUMPY\x01\x00\x76\x00".to_vec();
        let dict = "{'descr': '<i4', 'fortran_order': False, 'shape': (1, 3), }";
        b.extend_from_slice(dict.as_bytes());
        b.resize(127, b' ');
        b.push(b'\n');
        for v in [1i32, 2, 3] {
            b.extend_from_slice(&v.to_le_bytes());
        }
        let a = parse_npy(&b).unwrap();
        assert_eq!(a.shape, vec![1, 3]);
        assert_eq!(a.into_i64().unwrap(), vec![1, 2, 3]);
    }

    #[test]
    fn v2_header_is_read() {
        let mut b = npy_bytes(&[2], &NpyData::F32(vec![1.0, 2.0])).unwrap();
        // rewrite as v2: 4-byte header length, same dict
        let header_len = u16::from_le_bytes([b[8], b[9]]) as u32;
        let mut v2 = b[..6].to_vec();
        v2.extend_from_slice(&[2, 0]);
        v2.extend_from_slice(&header_len.to_le_bytes());
        v2.extend_from_slice(&b.split_off(10));
        assert_eq!(parse_npy(&v2).unwrap().into_f32().unwrap(), vec![1.0, 2.0]);
    }

    #[test]
    fn bad_files_are_errors_not_panics() {
        let good = npy_bytes(&[3], &NpyData::F32(vec![1.0, 2.0, 3.0])).unwrap();
        assert!(
            parse_npy(&good[..good.len() - 1]).is_err(),
            "truncated data"
        );
        assert!(parse_npy(&good[..20]).is_err(), "truncated header");
        assert!(parse_npy(b"\x93NUMPY").is_err());
        assert!(parse_npy(b"not an npy file at all").is_err());
        // replaces one header token by another of the same length
        let swap = |from: &str, to: &str| {
            assert_eq!(from.len(), to.len());
            let mut b = good.clone();
            let at = b
                .windows(from.len())
                .position(|w| w == from.as_bytes())
                .unwrap();
            b[at..at + to.len()].copy_from_slice(to.as_bytes());
            parse_npy(&b).is_err()
        };
        assert!(!swap("<f4", "<f4"), "the unchanged file parses");
        assert!(swap("<f4", ">f4"), "big endian");
        assert!(swap("<f4", "<f8"), "f64");
        assert!(swap("False", "True "), "fortran order");
        assert!(swap("(3,)", "(4,)"), "shape larger than the data");
        let mut huge = good.clone();
        huge[8] = 0xff;
        huge[9] = 0xff;
        assert!(parse_npy(&huge).is_err(), "header length past the end");
        assert!(npy_bytes(&[2, 2], &NpyData::F32(vec![1.0])).is_err());
        assert!(parse_npy(&good).unwrap().into_i64().is_err());
    }
}
