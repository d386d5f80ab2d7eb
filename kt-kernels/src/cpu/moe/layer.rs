//! The weights of one MoE layer: three stacked expert tensors, borrowed from whatever owns
//! the bytes (a memory-mapped GGUF file, a `Vec<u8>`), checked once here so the hot path
//! never re-validates them.

use std::ops::Range;
use std::sync::Arc;

use crate::error::{KtError, Result};
use crate::quant::QType;

/// An owner of weight bytes. `Arc<memmap2::Mmap>` and `Arc<Vec<u8>>` both coerce to it.
pub type Storage = Arc<dyn AsRef<[u8]> + Send + Sync>;

/// `experts` matrices of `rows x cols` in one format, stored back to back as GGUF stores a
/// 3-D tensor `[experts, rows, cols]` (cols fastest), at `offset` in a shared owner.
#[derive(Clone)]
pub struct ExpertStack {
    qtype: QType,
    storage: Storage,
    offset: usize,
    experts: usize,
    rows: usize,
    cols: usize,
    row_bytes: usize,
}

impl ExpertStack {
    /// Borrows `experts * rows * row_bytes(cols)` bytes at `offset` of `storage`.
    /// Errors: `cols` not a whole number of `qtype` blocks, a format with no matmul, or
    /// the owner too short.
    pub fn new(
        qtype: QType,
        storage: Storage,
        offset: usize,
        experts: usize,
        rows: usize,
        cols: usize,
    ) -> Result<Self> {
        if !QType::WEIGHTS.contains(&qtype) {
            return Err(KtError::Unsupported {
                qtype,
                op: "MoE expert weights",
            });
        }
        let row_bytes = qtype.row_bytes(cols)?;
        let len = experts
            .checked_mul(rows)
            .and_then(|n| n.checked_mul(row_bytes))
            .ok_or_else(|| {
                shape(format!(
                    "{experts} x {rows} rows of {row_bytes} bytes overflow"
                ))
            })?;
        let have = (*storage).as_ref().len();
        if offset.checked_add(len).is_none_or(|end| end > have) {
            return Err(KtError::Length {
                qtype,
                what: "expert stack (bytes from its offset to the end of its storage)",
                unit: "bytes",
                expected: len,
                got: have.saturating_sub(offset),
            });
        }
        Ok(ExpertStack {
            qtype,
            storage,
            offset,
            experts,
            rows,
            cols,
            row_bytes,
        })
    }

    /// A stack that owns its bytes (tests, benchmarks, synthetic models).
    pub fn from_vec(
        qtype: QType,
        bytes: Vec<u8>,
        experts: usize,
        rows: usize,
        cols: usize,
    ) -> Result<Self> {
        let expected = qtype
            .row_bytes(cols)?
            .checked_mul(rows)
            .and_then(|n| n.checked_mul(experts))
            .ok_or_else(|| {
                shape(format!(
                    "{experts} x {rows} rows of {cols} elements overflow"
                ))
            })?;
        if bytes.len() != expected {
            return Err(KtError::Length {
                qtype,
                what: "expert stack",
                unit: "bytes",
                expected,
                got: bytes.len(),
            });
        }
        ExpertStack::new(qtype, Arc::new(bytes), 0, experts, rows, cols)
    }

    pub fn qtype(&self) -> QType {
        self.qtype
    }
    pub fn experts(&self) -> usize {
        self.experts
    }
    pub fn rows(&self) -> usize {
        self.rows
    }
    pub fn cols(&self) -> usize {
        self.cols
    }
    /// Bytes of one row of `cols` elements.
    pub fn row_bytes(&self) -> usize {
        self.row_bytes
    }
    /// Bytes of one expert's matrix.
    pub fn expert_bytes(&self) -> usize {
        self.rows * self.row_bytes
    }

    /// The whole stack.
    pub fn bytes(&self) -> &[u8] {
        &(*self.storage).as_ref()[self.offset..self.offset + self.experts * self.expert_bytes()]
    }

    /// One expert's `rows x cols` matrix; panics if `e >= experts` (callers check ids).
    pub fn expert(&self, e: usize) -> &[u8] {
        let b = self.expert_bytes();
        &self.bytes()[e * b..(e + 1) * b]
    }
}

/// One MoE layer's routed experts: gate and up `[E, I, H]`, down `[E, H, I]`, each in its
/// own format. Cheap to clone (shared). Optionally restricted to a slice of the
/// intermediate dimension (the NUMA split, see the module docs).
#[derive(Clone)]
pub struct MoeLayer {
    pub(crate) inner: Arc<LayerInner>,
}

pub(crate) struct LayerInner {
    pub gate: ExpertStack,
    pub up: ExpertStack,
    pub down: ExpertStack,
    pub hidden: usize,
    pub intermediate: usize,
    pub experts: usize,
    /// The intermediate rows (gate/up) and columns (down) this layer computes.
    pub slice: Range<usize>,
    /// Bytes of one activation row for gate and up (`hidden` elements) and for down (the
    /// slice), and where the slice's columns start in a down row: computed here once so
    /// a call does no size arithmetic that could fail.
    pub act_row_gate: usize,
    pub act_row_up: usize,
    pub act_row_down: usize,
    pub down_col_offset: usize,
}

impl LayerInner {
    fn new(
        gate: ExpertStack,
        up: ExpertStack,
        down: ExpertStack,
        slice: Range<usize>,
    ) -> Result<LayerInner> {
        let hidden = gate.cols;
        Ok(LayerInner {
            act_row_gate: gate.qtype.vec_dot_type().row_bytes(hidden)?,
            act_row_up: up.qtype.vec_dot_type().row_bytes(hidden)?,
            act_row_down: down.qtype.vec_dot_type().row_bytes(slice.len())?,
            down_col_offset: down.qtype.row_bytes(slice.start)?,
            hidden,
            intermediate: gate.rows,
            experts: gate.experts,
            gate,
            up,
            down,
            slice,
        })
    }
}

fn shape(detail: String) -> KtError {
    KtError::Shape {
        op: "MoeLayer",
        detail,
    }
}

impl MoeLayer {
    /// Checks that the three stacks agree: gate and up are `E x I x H`, down is `E x H x I`.
    pub fn new(gate: ExpertStack, up: ExpertStack, down: ExpertStack) -> Result<MoeLayer> {
        let (e, i, h) = (gate.experts, gate.rows, gate.cols);
        if (up.experts, up.rows, up.cols) != (e, i, h) {
            return Err(shape(format!(
                "up is {}x{}x{}, gate is {e}x{i}x{h} (experts x intermediate x hidden)",
                up.experts, up.rows, up.cols
            )));
        }
        if (down.experts, down.rows, down.cols) != (e, h, i) {
            return Err(shape(format!(
                "down is {}x{}x{}, expected {e}x{h}x{i} (experts x hidden x intermediate)",
                down.experts, down.rows, down.cols
            )));
        }
        if e == 0 || i == 0 || h == 0 {
            return Err(shape(format!(
                "empty layer: {e} experts, intermediate {i}, hidden {h}"
            )));
        }
        Ok(MoeLayer {
            inner: Arc::new(LayerInner::new(gate, up, down, 0..i)?),
        })
    }

    /// The same weights restricted to intermediate rows/columns `range` (a NUMA node's
    /// share): the output is the partial sum over that slice. `range` must be non-empty,
    /// inside `0..I`, and its ends multiples of the down format's block and of its
    /// activation format's block (so the slice's intermediate quantizes exactly as the
    /// full one does).
    pub fn with_intermediate_slice(&self, range: Range<usize>) -> Result<MoeLayer> {
        let l = &*self.inner;
        let down = l.down.qtype;
        let align = down.block_elems().max(down.vec_dot_type().block_elems());
        if range.start >= range.end || range.end > l.intermediate {
            return Err(shape(format!(
                "intermediate slice {range:?} is not a non-empty part of 0..{}",
                l.intermediate
            )));
        }
        for end in [range.start, range.end] {
            if end % align != 0 && end != l.intermediate {
                return Err(shape(format!(
                    "intermediate slice {range:?}: {end} is not a multiple of {align} (the block of {down} and its activations)"
                )));
            }
        }
        // (LayerInner::new also checks that the slice's length quantizes in whole
        // activation blocks.)
        Ok(MoeLayer {
            inner: Arc::new(LayerInner::new(
                l.gate.clone(),
                l.up.clone(),
                l.down.clone(),
                range,
            )?),
        })
    }

    pub fn hidden(&self) -> usize {
        self.inner.hidden
    }
    pub fn intermediate(&self) -> usize {
        self.inner.intermediate
    }
    pub fn experts(&self) -> usize {
        self.inner.experts
    }
    pub fn gate(&self) -> &ExpertStack {
        &self.inner.gate
    }
    pub fn up(&self) -> &ExpertStack {
        &self.inner.up
    }
    pub fn down(&self) -> &ExpertStack {
        &self.inner.down
    }
    /// The intermediate range this layer computes (all of `0..I` unless sliced).
    pub fn intermediate_slice(&self) -> Range<usize> {
        self.inner.slice.clone()
    }
    /// Bytes of one expert's three matrices (within the slice): what a call reads per
    /// distinct expert it touches.
    pub fn expert_bytes(&self) -> usize {
        let l = &*self.inner;
        let n = l.slice.len();
        // Whole blocks (the slice is block-aligned): bytes in proportion to elements.
        let down_row = l.down.row_bytes * n / l.intermediate;
        n * (l.gate.row_bytes + l.up.row_bytes) + l.hidden * down_row
    }
}
