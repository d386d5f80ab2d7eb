//! The one dispatch point: for each ISA, a table of kernel entry points per weight
//! format, filled once on first use. Each ISA level starts from the table of the level
//! below and overrides the formats it has hand-tuned kernels for, so every format always
//! has a kernel and the matmul driver never names a format.

use std::sync::OnceLock;

use super::isa::Isa;
use crate::error::{KtError, Result};
use crate::quant::QType;

/// One tile of a matrix product, in raw pointers so several threads can write disjoint
/// tiles of one output:
/// `out[t * ldo + r] = dot(weight row r, activation row t)` for `r < rows`, `t < tokens`,
/// over `k` elements. Weight row `r` starts at `w + r * w_stride`; activation row `t`
/// (already in the format's `vec_dot_type`) at `a + t * a_stride`.
#[derive(Clone, Copy, Debug)]
pub struct GemmTile {
    pub qtype: QType,
    pub k: usize,
    pub w: *const u8,
    pub w_stride: usize,
    pub rows: usize,
    pub a: *const u8,
    pub a_stride: usize,
    pub tokens: usize,
    pub out: *mut f32,
    pub ldo: usize,
}

/// Computes one [`GemmTile`].
///
/// # Safety
/// The pointers must be valid for the extents the tile describes (`rows` weight rows of
/// `row_bytes(k)` bytes, `tokens` activation rows of the activation row size, and the
/// output elements), no other thread may write those output elements meanwhile, and the
/// CPU must support the ISA the function was compiled for (guaranteed by the table).
pub type GemmFn = unsafe fn(&GemmTile);

/// Quantizes f32 activations (a whole number of activation blocks) to the activation
/// format. `dst.len()` is exactly the activation row size of `src.len()` elements.
///
/// # Safety
/// The CPU must support the ISA the function was compiled for (guaranteed by the table).
pub type QuantizeActFn = unsafe fn(src: &[f32], dst: &mut [u8]);

/// The kernels of one weight format on one ISA.
#[derive(Clone, Copy)]
pub struct FormatKernels {
    /// The activation format (`qtype.vec_dot_type()`).
    pub act: QType,
    pub quantize_act: QuantizeActFn,
    pub gemm: GemmFn,
    /// Which ISA's code `gemm` is (may be lower than the table's ISA).
    pub gemm_isa: Isa,
}

/// Kernel entry points of every weight format for one ISA.
pub struct KernelTable {
    isa: Isa,
    formats: [Option<FormatKernels>; 31],
}

impl KernelTable {
    pub fn isa(&self) -> Isa {
        self.isa
    }

    /// The kernels of `qtype`, or an error for a format with no matmul (Q8_K, Q8_1).
    pub fn get(&self, qtype: QType) -> Result<&FormatKernels> {
        self.formats[qtype.ggml_id() as usize]
            .as_ref()
            .ok_or(KtError::Unsupported {
                qtype,
                op: "matmul (not a weight format)",
            })
    }

    /// Installs or replaces the kernels of `qtype`; ISA modules call this when the table
    /// is built.
    pub fn set(&mut self, qtype: QType, k: FormatKernels) {
        debug_assert_eq!(k.act, qtype.vec_dot_type());
        self.formats[qtype.ggml_id() as usize] = Some(k);
    }

    /// Replaces only the activation quantizer of `qtype` (an ISA may have a faster Q8_K
    /// quantizer while keeping a lower level's dot kernel).
    pub fn set_quantize_act(&mut self, qtype: QType, f: QuantizeActFn) {
        if let Some(k) = self.formats[qtype.ggml_id() as usize].as_mut() {
            k.quantize_act = f;
        }
    }

    fn build(isa: Isa) -> KernelTable {
        let mut t = KernelTable {
            isa,
            formats: [None; 31],
        };
        super::scalar::register(&mut t);
        #[cfg(target_arch = "x86_64")]
        {
            if isa >= Isa::Avx2 {
                super::avx2::register(&mut t);
            }
            if isa >= Isa::Avx512 {
                super::avx512::register(&mut t);
            }
            if isa >= Isa::Amx {
                super::amx::register(&mut t);
            }
        }
        t.isa = isa;
        t
    }
}

/// The kernel table of `isa`: an error when the CPU cannot run it.
pub fn table(isa: Isa) -> Result<&'static KernelTable> {
    static TABLES: [OnceLock<KernelTable>; 4] = [const { OnceLock::new() }; 4];
    isa.check()?;
    super::order::kquant_order()?;
    Ok(TABLES[isa as usize].get_or_init(|| KernelTable::build(isa)))
}
