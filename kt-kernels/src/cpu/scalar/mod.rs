//! The scalar backend: every weight format through the reference dot product, one
//! (row, token) pair at a time. Never optimized: it is what the SIMD backends are
//! tested against, and what runs on a CPU without AVX2. With `KT_KQUANT_ORDER=ggml`
//! (`cpu::order`) the formats whose llama.cpp order [`ggml_order`] models (Q4_K, Q5_K,
//! Q6_K, Q4_1, Q5_1) take those plain loops instead, as the SIMD backends do.

pub mod ggml_order;

use super::dispatch::{FormatKernels, GemmTile, KernelTable, QuantizeActFn};
use super::isa::Isa;
use super::order::KquantOrder;
use crate::quant::{reference, QType};

pub(crate) fn register(t: &mut KernelTable) {
    // `dispatch::table` has parsed the variable before any table is built.
    let ggml = super::order::kquant_order() == Ok(KquantOrder::Ggml);
    for q in QType::WEIGHTS {
        t.set(
            q,
            FormatKernels {
                act: q.vec_dot_type(),
                quantize_act: quantize_act_fn(q.vec_dot_type()),
                gemm: if ggml && ggml_order_dot(q).is_some() {
                    gemm_ggml_order
                } else {
                    gemm
                },
                gemm_isa: Isa::Scalar,
            },
        );
    }
}

/// A dot product of `n` elements of one weight row and one activation row.
type DotFn = fn(usize, &[u8], &[u8]) -> f32;

/// The model of llama.cpp's x86 order for `q`, where [`ggml_order`] has one.
fn ggml_order_dot(q: QType) -> Option<DotFn> {
    match q {
        QType::Q4_K => Some(ggml_order::vec_dot_q4_k_q8_k_repack_order),
        QType::Q5_K => Some(ggml_order::vec_dot_q5_k_q8_k_ggml_order),
        QType::Q6_K => Some(ggml_order::vec_dot_q6_k_q8_k_ggml_order),
        QType::Q4_1 => Some(ggml_order::vec_dot_q4_1_q8_1_ggml_order),
        QType::Q5_1 => Some(ggml_order::vec_dot_q5_1_q8_1_ggml_order),
        _ => None,
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
    // SAFETY: the caller's contract is this function's.
    unsafe { gemm_by(tile, reference::vec_dot) }
}

/// [`gemm`] in llama.cpp's order ([`ggml_order_dot`]; registered only for those formats).
///
/// # Safety
/// See [`super::dispatch::GemmFn`].
unsafe fn gemm_ggml_order(tile: &GemmTile) {
    let dot = ggml_order_dot(tile.qtype).expect("registered only for modelled formats");
    // SAFETY: the caller's contract is this function's.
    unsafe { gemm_by(tile, |_, n, w, a| dot(n, w, a)) }
}

/// Every (row, token) product of the tile through `dot`.
///
/// # Safety
/// See [`super::dispatch::GemmFn`].
unsafe fn gemm_by(tile: &GemmTile, dot: impl Fn(QType, usize, &[u8], &[u8]) -> f32) {
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
                *tile.out.add(t * tile.ldo + r) = dot(tile.qtype, tile.k, w, a);
            }
        }
    }
}
