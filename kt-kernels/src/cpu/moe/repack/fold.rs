//! INT4 group scales folded into one row scale and small integer group multipliers, so
//! the AMX prefill kernel can accumulate a whole row's integer dot in its C tiles.
//!
//! Weight `(n, k)` of an INT4 row is `s[n, g] * q[n, k]` with `q` in -8..=7 and one f16
//! scale per group (`format.rs`). The repacker chooses `s[n, g] = d_n * m[n, g]` with one
//! row scale `d_n` (an f16 with its 4 low mantissa bits zero) and an integer multiplier
//! `m` in [`MIN_MULT`]..=[`MAX_MULT`]: `d_n` has at most 7 significant bits and `|m|` at
//! most 4 (16 is a shift), so every product is exact in f16 and the f16 scale array
//! holds it exactly. The decode kernels and their reference read that array as before;
//! the AMX kernel unpacks `m * q` (in -128..=120: `16 * -8` to `-15 * -8`, an int8) and
//! scales the row's integer dot once by `d_n * d_a[t]`, with one activation scale per
//! token (`act.rs`, [`ActScales::PerToken`](super::ActScales)).
//!
//! [`Fold`] recovers `d_n` and `m` from the f16 scales alone (any factorization gives
//! the same products), so stacks built from raw parts get it too; a row whose scales do
//! not factor leaves the stack without a fold and its AMX items on the per-group kernel.

use half::f16;

use super::format::PANEL;

/// Group multipliers: `m * q` stays in int8 for `q` in -8..=7.
pub const MAX_MULT: i32 = 16;
pub const MIN_MULT: i32 = -15;

/// Row scales `[panel * 16 + n]` and multipliers `[panel][group][16]` (the index of the
/// f16 scales) of an INT4 stack.
pub(crate) struct Fold {
    pub row_scales: Vec<f32>,
    pub mults: Vec<i8>,
}

impl Fold {
    /// Factors every row of `scales` (`[panel][group][16]`); `None` when one does not.
    pub fn derive(scales: &[f16], groups: usize) -> Option<Fold> {
        let panels = scales.len() / (groups * PANEL);
        let mut f = Fold {
            row_scales: vec![0.0; panels * PANEL],
            mults: vec![0; scales.len()],
        };
        let mut s = vec![0f32; groups];
        let mut m = vec![0i8; groups];
        for p in 0..panels {
            for n in 0..PANEL {
                for (g, v) in s.iter_mut().enumerate() {
                    *v = scales[(p * groups + g) * PANEL + n].to_f32();
                }
                f.row_scales[p * PANEL + n] = factor(&s, &mut m)?;
                for (g, &v) in m.iter().enumerate() {
                    f.mults[(p * groups + g) * PANEL + n] = v;
                }
            }
        }
        Some(f)
    }
}

/// `d` and `m[g]` with `s[g] == d * m[g]` exactly, `d >= 0`, `m` in range; `None` if no
/// `d = max|s| / j` (j in 1..=16) works.
fn factor(s: &[f32], m: &mut [i8]) -> Option<f32> {
    let smax = s.iter().fold(0f32, |a, v| a.max(v.abs()));
    if smax == 0.0 {
        m.fill(0);
        return Some(0.0);
    }
    'next: for j in (1..=MAX_MULT).rev() {
        let d = smax / j as f32;
        for (&v, mg) in s.iter().zip(m.iter_mut()) {
            let q = (v / d).round();
            if !(MIN_MULT as f32..=MAX_MULT as f32).contains(&q) || q * d != v {
                continue 'next;
            }
            *mg = q as i8;
        }
        return Some(d);
    }
    None
}

/// `x` rounded to an f16 with 7 significant bits (4 low mantissa bits zero), or `None`
/// when that is zero or not finite.
fn row_scale_near(x: f32) -> Option<f32> {
    let b = f16::from_f32(x).to_bits();
    let r = f16::from_bits((b + 8) & !0xF).to_f32();
    (r.is_finite() && r != 0.0).then_some(r)
}

/// Row scale divisors tried: `max|s| / r`, so the largest group gets `|m|` near `r`
/// (three: each costs a multiplier search over the whole row at load).
const ROW_DIVISORS: [f32; 3] = [16.0, 15.0, 14.0];
/// Group scale magnitudes searched around: `amax / r` for r in this range (the per-group
/// quantizer's divisors, `matrix.rs`).
const GROUP_DIV_RANGE: (f32, f32) = (6.5, 8.0);

/// `q = round(v / sc)` clamped to -8..=7 (0 when `sc` is 0), ties to even. Clamped
/// first (the same result: rounding is monotone), then rounded by adding and removing
/// 1.5 * 2^23 (exact for |y| <= 2^22 in the default rounding mode; `f32::round` is a libm
/// call). The final quantization of every weight uses it; the searches' [`sq_err`] rounds
/// the same way through [`round4`].
pub(crate) fn quant4(sc: f32, v: f32) -> f32 {
    if sc == 0.0 {
        0.0
    } else {
        round4(v / sc)
    }
}

/// `y` clamped to -8..=7 and rounded to the nearest integer, ties to even ([`quant4`]).
#[inline(always)]
fn round4(y: f32) -> f32 {
    const MAGIC: f32 = 12_582_912.0;
    (y.clamp(-8.0, 7.0) + MAGIC) - MAGIC
}

/// The squared error of `src` quantized as [`quant4`] does under scale `sc`. The scale
/// searches spend most of a repack here, so the sum runs in [`LANES`] independent partial
/// sums (the compiler keeps them in vector registers; one running sum would wait on each
/// addition), and `v / sc` is taken as `v * (1 / sc)`: a vector division costs more than
/// the rest of an element's work, and the two differ by an ulp or two, which moves an
/// integer only for a quotient within that of a rounding tie (the error then counted is
/// the neighbouring integer's, as close as the tie is). Where the CPU has AVX512 or AVX2
/// the same code runs compiled for it: the same operations lane by lane, so the same bits.
pub(crate) fn sq_err(src: &[f32], sc: f32) -> f32 {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has AVX512F, checked just above.
            return unsafe { sq_err_avx512(src, sc) };
        }
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU has AVX2, checked just above.
            return unsafe { sq_err_avx2(src, sc) };
        }
    }
    sq_err_lanes(src, sc)
}

/// [`sq_err_lanes`] compiled for AVX512 (one register of partial sums).
///
/// # Safety
/// The CPU has AVX512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn sq_err_avx512(src: &[f32], sc: f32) -> f32 {
    sq_err_lanes(src, sc)
}

/// [`sq_err_lanes`] compiled for AVX2 (two registers of partial sums).
///
/// # Safety
/// The CPU has AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn sq_err_avx2(src: &[f32], sc: f32) -> f32 {
    sq_err_lanes(src, sc)
}

/// The body of [`sq_err`], inlined into each ISA's copy.
#[inline(always)]
fn sq_err_lanes(src: &[f32], sc: f32) -> f32 {
    if sc == 0.0 {
        return src.iter().map(|v| v * v).sum();
    }
    let inv = 1.0 / sc;
    let err = |v: f32| {
        let e = v - sc * round4(v * inv);
        e * e
    };
    let mut acc = [0f32; LANES];
    let chunks = src.chunks_exact(LANES);
    let tail: f32 = chunks.remainder().iter().map(|&v| err(v)).sum();
    for c in chunks {
        for (a, &v) in acc.iter_mut().zip(c) {
            *a += err(v);
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// Partial sums of [`sq_err`]: one AVX512 register, two AVX2 ones, four of SSE (x86-64's
/// baseline).
const LANES: usize = 16;

/// Quantizes one INT4 row (`src`, whole groups; `amax[g]` the largest magnitude of group
/// `g`) with folded scales: `scales[g]` gets
/// `d * m[g]` (exact in f16) and `q` the integers. `smax` is the largest group scale
/// magnitude the row wants (the per-group quantizer's choice for its largest group): it
/// sets the row scale candidates; for each candidate `d` every group picks the
/// multiplier (either sign) with the least squared error, and the `d` with the least
/// row error is kept. Returns false, writing nothing, when no candidate is exact in f16
/// (the caller then uses per-group scales: the stack has no fold).
pub(crate) fn quantize_row_folded(
    src: &[f32],
    group: usize,
    amax: &[f32],
    smax: f32,
    scales: &mut [f16],
    q: &mut [i8],
) -> bool {
    if smax == 0.0 {
        scales.fill(f16::ZERO);
        q.fill(0);
        return true;
    }
    let groups = src.len() / group;
    let mut best: Option<(f32, f32)> = None; // (row error, d)
    let mut mults = vec![0i32; groups];
    let mut best_mults = vec![0i32; groups];
    for r in ROW_DIVISORS {
        let Some(d) = row_scale_near(smax / r) else {
            continue;
        };
        let mut total = 0f32;
        for (g, x) in src.chunks_exact(group).enumerate() {
            let (e, m) = best_mult(x, amax[g], d);
            mults[g] = m;
            total += e;
        }
        if best.is_none_or(|(e, _)| total < e) {
            best = Some((total, d));
            best_mults.copy_from_slice(&mults);
        }
    }
    let Some((_, d)) = best else {
        return false;
    };
    for ((x, qg), (&m, s)) in src
        .chunks_exact(group)
        .zip(q.chunks_exact_mut(group))
        .zip(best_mults.iter().zip(scales.iter_mut()))
    {
        let sc = d * m as f32;
        *s = f16::from_f32(sc);
        debug_assert_eq!(s.to_f32(), sc);
        for (o, &v) in qg.iter_mut().zip(x) {
            *o = quant4(sc, v) as i8;
        }
    }
    true
}

/// The multiplier of one group under row scale `d`: the least squared error among those
/// near `amax / r` (r in [`GROUP_DIV_RANGE`]), either sign, within the int8 range and
/// exact in f16 (`amax`: the largest magnitude of `x`). Returns (error, m); an all-zero
/// group gets m = 0.
fn best_mult(x: &[f32], amax: f32, d: f32) -> (f32, i32) {
    if amax == 0.0 {
        return (0.0, 0);
    }
    let lo = ((amax / (GROUP_DIV_RANGE.1 * d)).floor() as i32).max(1);
    let hi = (amax / (GROUP_DIV_RANGE.0 * d)).ceil() as i32;
    let mut best = (f32::INFINITY, 0);
    for sign in [1, -1] {
        let top = if sign > 0 { MAX_MULT } else { -MIN_MULT };
        // At least the largest multiplier when the group needs more than it has.
        for a in lo.min(top)..=hi.clamp(1, top) {
            let m = sign * a;
            let sc = d * m as f32;
            if f16::from_f32(sc).to_f32() != sc {
                continue;
            }
            let e = sq_err(x, sc);
            if e < best.0 {
                best = (e, m);
            }
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::util::SplitMix64;

    #[test]
    fn folded_rows_factor_back_exactly() {
        let mut rng = SplitMix64::new(3);
        let (group, cols) = (64, 1024);
        let groups = cols / group;
        let mut x = vec![0f32; cols];
        for trial in 0..50 {
            rng.fill_normal(&mut x, 0.05 * (1 + trial % 5) as f32);
            x[rng.below(cols)] *= 12.0;
            if trial % 7 == 0 {
                x[..group].fill(0.0);
            }
            let smax = x.iter().fold(0f32, |m, v| m.max(v.abs())) / 7.0;
            let mut s = vec![f16::NAN; groups];
            let mut q = vec![0i8; cols];
            let amax: Vec<f32> = x
                .chunks(group)
                .map(|g| g.iter().fold(0f32, |m, v| m.max(v.abs())))
                .collect();
            assert!(quantize_row_folded(&x, group, &amax, smax, &mut s, &mut q));
            let sf: Vec<f32> = s.iter().map(|v| v.to_f32()).collect();
            let mut m = vec![0i8; groups];
            let d = factor(&sf, &mut m).expect("a folded row factors");
            for g in 0..groups {
                assert_eq!(d * m[g] as f32, sf[g], "trial {trial} group {g}");
            }
            assert!(q.iter().all(|&v| (-8..=7).contains(&v)));
        }
    }

    #[test]
    fn squared_errors_agree_on_every_isa() {
        let mut rng = SplitMix64::new(9);
        let mut x = vec![0f32; 300];
        rng.fill_normal(&mut x, 0.3);
        for len in [0, 1, 15, 16, 17, 128, 131, 300] {
            for sc in [0.0f32, 0.01, -0.037, 0.09, 1.0] {
                let want = sq_err_lanes(&x[..len], sc);
                let got = sq_err(&x[..len], sc);
                assert_eq!(got.to_bits(), want.to_bits(), "len {len} sc {sc}");
                #[cfg(target_arch = "x86_64")]
                {
                    if std::arch::is_x86_feature_detected!("avx2") {
                        // SAFETY: AVX2 checked just above.
                        let a = unsafe { sq_err_avx2(&x[..len], sc) };
                        assert_eq!(a.to_bits(), want.to_bits(), "avx2 len {len} sc {sc}");
                    }
                }
                // Against the plain sum of squared errors of quant4 (division, one running
                // sum): the same up to f32 rounding of the sums and the reciprocal.
                let plain: f32 = x[..len]
                    .iter()
                    .map(|&v| (v - sc * quant4(sc, v)).powi(2))
                    .sum();
                assert!(
                    (want - plain).abs() <= 1e-5 * plain.max(1e-12),
                    "{want} vs {plain}"
                );
            }
        }
    }

    #[test]
    fn unfoldable_scales_are_refused() {
        // 1 and 1.001 have no common factor d with multipliers of at most 16.
        let s = [1.0f32, f16::from_f32(1.001).to_f32()];
        assert!(factor(&s, &mut [0; 2]).is_none());
        assert_eq!(factor(&[0.0, 0.0], &mut [0; 2]), Some(0.0));
    }
}
