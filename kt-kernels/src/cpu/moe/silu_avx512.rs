//! `silu(g) * u` over a row with AVX512: `g * u / (1 + exp(-g))`, exp by range
//! reduction (`x = n ln2 + r`, |r| <= ln2/2, ln2 split in two for exactness) and a
//! degree-6 polynomial for `e^r` (the classic Cephes `expf` coefficients, ~1 ulp), then
//! `scalef` by 2^n. Within a few ulp of the scalar `silu` (tested), which only moves an
//! intermediate element across an activation rounding boundary as rarely as the f32
//! summation order already does.

use std::arch::x86_64::*;

const LOG2E: f32 = std::f32::consts::LOG2_E;
const LN2_HI: f32 = 0.693_359_4;
const LN2_LO: f32 = -2.121_944_4e-4;
const P: [f32; 6] = [
    1.987_569_1e-4,
    1.398_199_9e-3,
    8.333_452e-3,
    4.166_579_6e-2,
    1.666_666_5e-1,
    0.5,
]; // Cephes: 5.0000001201e-1, which is 0.5 in f32

/// `out[i] = silu(g[i]) * u[i]`; the three slices have one length.
///
/// # Safety
/// The CPU has AVX512F.
#[target_feature(enable = "avx512f")]
pub(crate) unsafe fn silu_mul(g: &[f32], u: &[f32], out: &mut [f32]) {
    let n = out.len();
    assert!(g.len() == n && u.len() == n);
    let full = n / 16 * 16;
    for i in (0..full).step_by(16) {
        // SAFETY: i + 16 <= n for all three slices.
        unsafe {
            let gv = _mm512_loadu_ps(g.as_ptr().add(i));
            let uv = _mm512_loadu_ps(u.as_ptr().add(i));
            _mm512_storeu_ps(out.as_mut_ptr().add(i), row(gv, uv));
        }
    }
    for i in full..n {
        out[i] = super::silu::silu(g[i]) * u[i];
    }
}

#[target_feature(enable = "avx512f")]
fn row(g: __m512, u: __m512) -> __m512 {
    let x = _mm512_min_ps(
        _mm512_max_ps(
            _mm512_sub_ps(_mm512_setzero_ps(), g),
            _mm512_set1_ps(-104.0),
        ),
        _mm512_set1_ps(104.0),
    );
    let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
        _mm512_mul_ps(x, _mm512_set1_ps(LOG2E)),
    );
    let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(LN2_HI), x);
    let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(LN2_LO), r);
    let mut p = _mm512_set1_ps(P[0]);
    for c in &P[1..] {
        p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(*c));
    }
    let r2 = _mm512_mul_ps(r, r);
    let er = _mm512_add_ps(_mm512_fmadd_ps(p, r2, r), _mm512_set1_ps(1.0));
    // 2^n scaling saturates to inf (g <= -89) or 0 (g >= 104): silu -> -0 or g.
    let e = _mm512_scalef_ps(er, n);
    _mm512_div_ps(_mm512_mul_ps(g, u), _mm512_add_ps(_mm512_set1_ps(1.0), e))
}
