//! The scalar backend: every weight format through the reference dot product, one
//! (row, token) pair at a time. Never optimized: it is what the SIMD backends are
//! tested against, and what runs on a CPU without AVX2.

pub mod ggml_order;

use super::dispatch::{FormatKernels, GemmTile, KernelTable, QuantizeActFn};
use super::isa::Isa;
use crate::quant::{reference, QType};

pub(crate) fn register(t: &mut KernelTable) {
    for q in QType::WEIGHTS {
        t.set(
            q,
            FormatKernels {
                act: q.vec_dot_type(),
                quantize_act: quantize_act_fn(q.vec_dot_type()),
                gemm,
                gemm_isa: Isa::Scalar,
            },
        );
    }
}

/// The reference activation quantizer of an activation format.
pub fn quantize_act_fn(act: QType) -> QuantizeActFn {
    match act {
        QType::Q8_K => q8_k,
        QType::Q8_0 => q8_0,
        QType::Q8_1 => q8_1,
        QType::F16 => f16,
        QType::BF16 => bf16,
        QType::F32 => f32,
        other => unreachable!("{other} is not an activation format"),
    }
}

macro_rules! act_quantizer {
    ($name:ident, $q:expr) => {
        /// # Safety
        /// Safe to call on any CPU; `unsafe` only to match [`QuantizeActFn`].
        unsafe fn $name(src: &[f32], dst: &mut [u8]) {
            reference::quantize($q, src, dst)
        }
    };
}
act_quantizer!(q8_k, QType::Q8_K);
act_quantizer!(q8_0, QType::Q8_0);
act_quantizer!(q8_1, QType::Q8_1);
act_quantizer!(f16, QType::F16);
act_quantizer!(bf16, QType::BF16);
act_quantizer!(f32, QType::F32);

/// # Safety
/// See [`super::dispatch::GemmFn`].
unsafe fn gemm(tile: &GemmTile) {
    let wb = tile
        .qtype
        .row_bytes(tile.k)
        .expect("k checked by the driver");
    let ab = tile
        .qtype
        .vec_dot_type()
        .row_bytes(tile.k)
        .expect("k checked by the driver");
    for t in 0..tile.tokens {
        // SAFETY: the caller guarantees `tokens` activation rows of `ab` bytes at stride
        // `a_stride`.
        let a = unsafe { std::slice::from_raw_parts(tile.a.add(t * tile.a_stride), ab) };
        for r in 0..tile.rows {
            // SAFETY: the caller guarantees `rows` weight rows of `wb` bytes at stride
            // `w_stride`, and exclusive access to the output tile.
            unsafe {
                let w = std::slice::from_raw_parts(tile.w.add(r * tile.w_stride), wb);
                *tile.out.add(t * tile.ldo + r) = reference::vec_dot(tile.qtype, tile.k, w, a);
            }
        }
    }
}
