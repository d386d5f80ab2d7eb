//! A matrix to int4 group by group (per group of 128 along k: scale = max|v| / 7 rounded to
//! T, `round(v / scale)` clamped to -8..=7) and, when asked, its error terms: the loop of
//! [`super::Int4Weights::quantize`], which a load runs over every GPU matrix and, for the
//! GPU prefill, every routed expert (hundreds of billions of weights for DeepSeek-V3).
//!
//! Written so the compiler vectorizes it: the group maximum is an integer maximum of the
//! bits, the rounding converts with `to_int_unchecked` (no saturation code: the value is
//! clamped first), the error sums run in 8 independent lanes, and the loop is compiled
//! twice, for the baseline and with AVX2, chosen once per matrix at run time. Both give the
//! same bits: the same operations in the same order per lane (no fused multiply-adds: Rust
//! does not contract). On the device's Xeon the quantization with its error went from ~5
//! to ~2 ns a weight per thread (BENCHMARKS.md, session 32).

use super::quant::GROUP;
use crate::cuda::dtype::MmaFloat;

/// `y` rounded to the nearest integer, halves away from zero (as `f32::round`), clamped to
/// -8..=7. Without SSE4.1 `f32::round` is a library call per element; this is the same
/// result from a truncating conversion (exact: `y - trunc(y)` is exact below 2^23). A NaN
/// gives 0.
#[inline(always)]
pub(super) fn round_int4(y: f32) -> i8 {
    let y = y.clamp(-8.0, 7.0);
    let t = y as i32;
    let frac = y - t as f32;
    (t + i32::from(frac >= 0.5) - i32::from(frac <= -0.5)) as i8
}

/// [`round_int4`] for a `y` that is not NaN (the caller's guarantee; infinities clamp),
/// without the conversion's saturation code.
#[inline(always)]
fn round_int4_not_nan(y: f32) -> i8 {
    let y = y.clamp(-8.0, 7.0);
    // SAFETY: y is not NaN (the caller's guarantee) and clamped to -8..=7: finite, and
    // i32 holds it.
    let t: i32 = unsafe { y.to_int_unchecked() };
    let frac = y - t as f32;
    (t + i32::from(frac >= 0.5) - i32::from(frac <= -0.5)) as i8
}

/// The error terms of quantized groups: the largest |v - q scale| (its bits: a finite
/// non-negative float orders as its bits) and the sums of the squared differences and of the
/// squared weights, each group's in f32 (8 lanes), the groups' in f64.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct GroupErrors {
    pub max_abs_bits: u32,
    pub se: f64,
    pub sw: f64,
}

/// Quantizes `w` (finite values) with `inv = 1 / scale` into `out`; with `errors`, adds
/// the group's terms against `scale`.
#[inline(always)]
fn group_body(
    w: &[f32; GROUP],
    inv: f32,
    scale: f32,
    out: &mut [i8; GROUP],
    errors: Option<&mut GroupErrors>,
) {
    if inv.is_finite() {
        for (o, &v) in out.iter_mut().zip(w) {
            // v (the caller's guarantee) and inv finite: their product may overflow to an
            // infinity but is never NaN
            *o = round_int4_not_nan(v * inv);
        }
    } else {
        // a scale so small that its inverse overflows: 0 x inf is NaN, left to the
        // checked conversion (NaN -> 0), as before the vectorized path existed
        for (o, &v) in out.iter_mut().zip(w) {
            *o = round_int4(v * inv);
        }
    }
    if let Some(e) = errors {
        let (mut mb, mut se, mut sw) = ([0u32; 8], [0f32; 8], [0f32; 8]);
        for (wv, qv) in w.as_chunks::<8>().0.iter().zip(out.as_chunks::<8>().0) {
            for l in 0..8 {
                let d = wv[l] - qv[l] as f32 * scale;
                mb[l] = mb[l].max(d.to_bits() & 0x7fff_ffff);
                se[l] += d * d;
                sw[l] += wv[l] * wv[l];
            }
        }
        e.max_abs_bits = mb.iter().fold(e.max_abs_bits, |m, &b| m.max(b));
        e.se += se.iter().sum::<f32>() as f64;
        e.sw += sw.iter().sum::<f32>() as f64;
    }
}

/// Quantizes `w` (`[n, k]`, `k` a multiple of [`GROUP`]) into `q` (`[n, k]`) and `scales`
/// (`[k / GROUP, n]`, group-major); with `errors`, adds every group's terms. `Err(i)` when
/// weight `i` is a NaN or an infinity (what was written by then is left as it is).
pub(super) fn quantize_matrix<T: MmaFloat>(
    w: &[f32],
    k: usize,
    q: &mut [i8],
    scales: &mut [T],
    errors: Option<&mut GroupErrors>,
) -> Result<(), usize> {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2 (checked just above).
        return unsafe { matrix_avx2(w, k, q, scales, errors) };
    }
    matrix_body(w, k, q, scales, errors)
}

/// [`matrix_body`] compiled with AVX2.
///
/// # Safety
/// The CPU has AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn matrix_avx2<T: MmaFloat>(
    w: &[f32],
    k: usize,
    q: &mut [i8],
    scales: &mut [T],
    errors: Option<&mut GroupErrors>,
) -> Result<(), usize> {
    matrix_body(w, k, q, scales, errors)
}

#[inline(always)]
fn matrix_body<T: MmaFloat>(
    w: &[f32],
    k: usize,
    q: &mut [i8],
    scales: &mut [T],
    mut errors: Option<&mut GroupErrors>,
) -> Result<(), usize> {
    let n = w.len() / k;
    for (c, (w_row, q_row)) in w.chunks_exact(k).zip(q.chunks_exact_mut(k)).enumerate() {
        // groups as arrays: their fixed length lets the compiler unroll and vectorize
        let (w_groups, _) = w_row.as_chunks::<GROUP>();
        let (q_groups, _) = q_row.as_chunks_mut::<GROUP>();
        for (g, (group, out)) in w_groups.iter().zip(q_groups).enumerate() {
            // |v| orders as its bits with the sign cleared (an integer max the compiler
            // vectorizes; f32::max's NaN rule it does not), and an infinity or NaN has the
            // largest: the group's maximum finds any
            let amax_bits = group
                .iter()
                .fold(0u32, |m, v| m.max(v.to_bits() & 0x7fff_ffff));
            if amax_bits >= f32::INFINITY.to_bits() {
                let at = group.iter().position(|v| !v.is_finite()).unwrap_or(0);
                return Err(c * k + g * GROUP + at);
            }
            let s = T::from_f32(f32::from_bits(amax_bits) / 7.0);
            scales[g * n + c] = s;
            let sf = s.to_f32();
            let inv = if sf == 0.0 { 0.0 } else { 1.0 / sf };
            group_body(group, inv, sf, out, errors.as_deref_mut());
        }
    }
    Ok(())
}

/// [`group_body`] compiled with AVX2 (the tests compare it with the baseline build).
///
/// # Safety
/// The CPU has AVX2.
#[cfg(all(test, target_arch = "x86_64"))]
#[target_feature(enable = "avx2")]
unsafe fn group_avx2(
    w: &[f32; GROUP],
    inv: f32,
    scale: f32,
    out: &mut [i8; GROUP],
    errors: Option<&mut GroupErrors>,
) {
    group_body(w, inv, scale, out, errors);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_int4_is_round_then_clamp() {
        let mut ys = vec![
            0.0f32,
            -0.0,
            0.5,
            -0.5,
            1.5,
            -1.5,
            2.5,
            6.5,
            7.5,
            -7.5,
            -8.5,
            1e9,
            -1e9,
            f32::INFINITY,
            f32::NEG_INFINITY,
        ];
        for i in -1000..=1000 {
            let y = i as f32 / 100.0;
            // each value and its neighbours (the ties' neighbours among them)
            ys.extend([
                y,
                f32::from_bits(y.to_bits() + 1),
                f32::from_bits(y.to_bits().max(1) - 1),
            ]);
        }
        for y in ys {
            let want = y.round().clamp(-8.0, 7.0) as i8;
            assert_eq!(round_int4(y), want, "y {y}");
            assert_eq!(round_int4_not_nan(y), want, "y {y}");
        }
        assert_eq!(round_int4(f32::NAN), 0);
    }

    /// The dispatched matrix loop (AVX2 where the CPU has it) and the baseline build give
    /// the same quants, scales and error terms, bit for bit.
    #[test]
    fn the_dispatched_matrix_is_the_baseline_one() {
        use half::bf16;
        let (n, k) = (96usize, 3 * GROUP);
        let mut rng = crate::util::SplitMix64::new(5);
        let w: Vec<f32> = (0..n * k)
            .map(|i| {
                let u = rng.uniform(-0.5, 0.5);
                // row 7 subnormal, row 8 zero, every 331st weight an outlier
                match i / k {
                    7 => u * 1e-39,
                    8 => 0.0,
                    _ if i % 331 == 0 => u * 50.0,
                    _ => u,
                }
            })
            .collect();
        let run = |dispatched: bool| {
            let mut q = vec![0i8; n * k];
            let mut sc = vec![bf16::ZERO; n * k / GROUP];
            let mut e = GroupErrors::default();
            let r = if dispatched {
                quantize_matrix(&w, k, &mut q, &mut sc, Some(&mut e))
            } else {
                matrix_body(&w, k, &mut q, &mut sc, Some(&mut e))
            };
            assert_eq!(r, Ok(()));
            let bits: Vec<u16> = sc.iter().map(|v| v.to_bits()).collect();
            (q, bits, e.max_abs_bits, e.se.to_bits(), e.sw.to_bits())
        };
        assert_eq!(run(true), run(false));
        let mut bad = w.clone();
        bad[5 * k + 200] = f32::NAN;
        let mut q = vec![0i8; n * k];
        let mut sc = vec![bf16::ZERO; n * k / GROUP];
        assert_eq!(
            quantize_matrix(&bad, k, &mut q, &mut sc, None),
            Err(5 * k + 200)
        );
    }

    /// The AVX2 build of a group (where the CPU has it) and the baseline build give the same
    /// quants and the same error terms, bit for bit, including a scale whose inverse
    /// overflows and values at the rounding ties.
    #[test]
    fn both_builds_agree() {
        let mut rng = crate::util::SplitMix64::new(11);
        let mut w = [0f32; GROUP];
        for case in 0..50 {
            for (i, v) in w.iter_mut().enumerate() {
                let u = rng.uniform(-0.5, 0.5);
                *v = match (case % 5, i % 7) {
                    (0, _) => u,
                    (1, 0) => (i % 16) as f32 - 8.5, // ties once scaled by 1
                    (1, _) => u * 16.0,
                    (2, _) => u * 1e-40, // subnormal weights
                    (3, 3) => 0.0,
                    _ => u * 3.0,
                };
            }
            let scale = match case % 5 {
                1 => 1.0,
                2 => 1e-45,
                _ => w.iter().fold(0f32, |m, v| m.max(v.abs())) / 7.0,
            };
            let inv = if scale == 0.0 { 0.0 } else { 1.0 / scale };
            let (mut q1, mut q2) = ([0i8; GROUP], [0i8; GROUP]);
            let (mut e1, mut e2) = (GroupErrors::default(), GroupErrors::default());
            #[cfg(target_arch = "x86_64")]
            if std::arch::is_x86_feature_detected!("avx2") {
                // SAFETY: the CPU has AVX2 (checked just above).
                unsafe { group_avx2(&w, inv, scale, &mut q1, Some(&mut e1)) };
            } else {
                group_body(&w, inv, scale, &mut q1, Some(&mut e1));
            }
            #[cfg(not(target_arch = "x86_64"))]
            group_body(&w, inv, scale, &mut q1, Some(&mut e1));
            group_body(&w, inv, scale, &mut q2, Some(&mut e2));
            assert_eq!(q1, q2, "case {case}");
            assert_eq!(
                (e1.max_abs_bits, e1.se.to_bits(), e1.sw.to_bits()),
                (e2.max_abs_bits, e2.se.to_bits(), e2.sw.to_bits()),
                "case {case}"
            );
            let want: Vec<i8> = w.iter().map(|&v| round_int4(v * inv)).collect();
            assert_eq!(
                q1.to_vec(),
                want,
                "case {case}: against round_int4 element by element"
            );
        }
    }
}
