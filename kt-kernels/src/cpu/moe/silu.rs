//! `silu(g) * u`, the gated activation between the gate/up and the down projections of
//! both MoE operators (GGUF-native and repacked), with a vector path where the ISA has one.

use crate::cpu::Isa;

/// `out[i] = silu(g[i]) * u[i]` with the fastest code `isa` allows (the AVX512 one is
/// within a few ulp of the scalar formula); slices of one length.
pub fn silu_mul_with(isa: Isa, g: &[f32], u: &[f32], out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if isa >= Isa::Avx512 && std::arch::is_x86_feature_detected!("avx512f") {
        // SAFETY: AVX512F was detected; silu_mul checks the lengths.
        unsafe { super::silu_avx512::silu_mul(g, u, out) };
        return;
    }
    let _ = isa;
    for ((o, &g), &u) in out.iter_mut().zip(g).zip(u) {
        *o = silu(g) * u;
    }
}

/// `g * sigmoid(g)` in f32; for very negative g, exp overflows to inf and the result is
/// -0, as it should be.
pub(crate) fn silu(g: f32) -> f32 {
    g / (1.0 + (-g).exp())
}
