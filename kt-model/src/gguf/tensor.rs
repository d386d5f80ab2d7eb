//! Tensor infos (what the GGUF header says about a tensor) and tensor views (an info
//! with its bytes in the memory map).

use kt_kernels::quant::QType;

/// ggml's limit on a tensor's dimensions.
pub const MAX_DIMS: usize = 4;

/// A tensor as described by a GGUF header, validated: known type, 1 to 4 non-zero
/// dims, a whole number of blocks per row, data inside its file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    pub(crate) name: String,
    pub(crate) qtype: QType,
    pub(crate) dims: Vec<usize>,
    pub(crate) offset: u64,
    pub(crate) n_bytes: usize,
    /// Index of the split file holding the data (0 for single files).
    pub(crate) file: usize,
    /// Absolute byte position of the data in that file.
    pub(crate) start: usize,
}

impl TensorInfo {
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn qtype(&self) -> QType {
        self.qtype
    }

    /// `ne[]` in ggml order: `dims[0]` is the row length (contiguous elements).
    pub fn dims(&self) -> &[usize] {
        &self.dims
    }

    /// Offset of the data from the start of its file's data section.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// `row_bytes(dims[0]) * dims[1] * ...`.
    pub fn n_bytes(&self) -> usize {
        self.n_bytes
    }

    /// Which split file holds the data (0 for a single file).
    pub fn file_index(&self) -> usize {
        self.file
    }
}

/// A tensor with its data: a borrowed view into the memory-mapped file.
#[derive(Debug, Clone, Copy)]
pub struct Tensor<'a> {
    pub name: &'a str,
    pub qtype: QType,
    /// `ne[]` in ggml order: `dims[0]` is the row length.
    pub dims: &'a [usize],
    /// Exactly `row_bytes(dims[0]) * (product of the other dims)` bytes.
    pub data: &'a [u8],
}

impl<'a> Tensor<'a> {
    pub(crate) fn new(info: &'a TensorInfo, data: &'a [u8]) -> Self {
        Tensor {
            name: &info.name,
            qtype: info.qtype,
            dims: &info.dims,
            data,
        }
    }

    /// Elements in a row (`ne[0]`).
    pub fn row_len(&self) -> usize {
        self.dims.first().copied().unwrap_or(0)
    }

    /// Rows: the product of `ne[1..]`.
    pub fn n_rows(&self) -> usize {
        self.dims.iter().skip(1).product()
    }

    pub fn n_elements(&self) -> usize {
        self.dims.iter().product()
    }

    /// Bytes of one row.
    pub fn row_bytes(&self) -> usize {
        self.data.len().checked_div(self.n_rows()).unwrap_or(0)
    }
}

/// Why a shape has no byte size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SizeError {
    /// No dims at all.
    NoDims,
    /// `ne[0]` is not a whole number of blocks.
    RowLength { block: usize },
    /// The element count passes `i64::MAX` (ggml's limit) or the byte count `usize`.
    Overflow,
}

/// Bytes of a tensor of `qtype` and `dims` (ggml order), checked.
pub(crate) fn tensor_n_bytes(qtype: QType, dims: &[usize]) -> Result<usize, SizeError> {
    let Some((&ne0, rest)) = dims.split_first() else {
        return Err(SizeError::NoDims);
    };
    let n_elements = dims
        .iter()
        .try_fold(1u64, |acc, &d| acc.checked_mul(d as u64));
    if n_elements.is_none_or(|n| n > i64::MAX as u64) {
        return Err(SizeError::Overflow);
    }
    // Computed here rather than with `QType::row_bytes`, which does not check for
    // overflow (a file can claim any ne[0]).
    let block = qtype.block_elems();
    if !ne0.is_multiple_of(block) {
        return Err(SizeError::RowLength { block });
    }
    let row = (ne0 / block)
        .checked_mul(qtype.block_bytes())
        .ok_or(SizeError::Overflow)?;
    rest.iter()
        .try_fold(row, |acc, &d| acc.checked_mul(d))
        .ok_or(SizeError::Overflow)
}
