//! Helpers shared by the reference quantizers of the K-quants: ggml's rounding, the
//! per-sub-block scale searches, and the packings of sub-block scales and 2-bit quants.
//!
//! The searches reproduce ggml's reference algorithms operation for operation (same
//! float expressions, same evaluation order, no fused multiply-adds), because the point
//! of the reference is to produce ggml's bytes, and a different rounding anywhere flips
//! a quant. They are public so the SIMD paths and the MoE repacker reuse them.

use half::f16;

use crate::quant::blocks::{read_block, Block, BlockQ8K};

/// Sub-blocks whose largest magnitude is below this are treated as all zeros.
pub const GROUP_MAX_EPS: f32 = 1e-15;

/// ggml's `nearest_int`: round to nearest, ties to even, in f32.
///
/// ggml adds 1.5 * 2^23 and reads the mantissa, which is exactly round-half-to-even
/// for |x| < 2^22 (the only range ggml feeds it). Outside that range (degenerate
/// inputs) this saturates instead of returning ggml's garbage.
#[inline]
pub fn nearest_int(x: f32) -> i32 {
    x.round_ties_even() as i32
}

/// The element of largest magnitude (the first one on ties), as ggml's searches pick
/// it: returns `(max_abs, signed_value)`.
#[inline]
fn signed_absmax(x: &[f32]) -> (f32, f32) {
    let mut amax = 0f32;
    let mut max = 0f32;
    for &v in x {
        if v.abs() > amax {
            amax = v.abs();
            max = v;
        }
    }
    (amax, max)
}

/// Symmetric quantization of `x` to integers in `[-nmax, nmax - 1]` with the scale that
/// maximises the x²-weighted fit (ggml's `make_qx_quants`, weight type 1, no importance
/// weights): tries 19 candidate inverse scales around `-nmax / max` and keeps the one
/// whose least-squares scale explains the most of `x`.
///
/// Writes `l[i] = q + nmax` (so `0..2*nmax`) and returns the scale (`x ≈ scale * q`).
/// An all-zero `x` gives scale 0 and `l = 0`.
pub fn make_qx_quants(x: &[f32], nmax: i32, l: &mut [u8]) -> f32 {
    debug_assert_eq!(x.len(), l.len());
    let (amax, max) = signed_absmax(x);
    if amax < GROUP_MAX_EPS {
        l.fill(0);
        return 0.0;
    }
    let nmaxf = nmax as f32;
    let quant = |iscale: f32, v: f32| nearest_int(iscale * v).clamp(-nmax, nmax - 1);
    // Weighted sums of the least-squares fit of x by scale * q, weights x².
    let fit = |iscale: f32| {
        let (mut sumlx, mut suml2) = (0f32, 0f32);
        for &v in x {
            let q = quant(iscale, v) as f32;
            let w = v * v;
            sumlx += w * v * q;
            suml2 += w * q * q;
        }
        (sumlx, suml2)
    };

    let mut iscale = -nmaxf / max;
    for (li, &v) in l.iter_mut().zip(x) {
        *li = (quant(iscale, v) + nmax) as u8;
    }
    let (sumlx, suml2) = fit(iscale);
    let mut scale = if suml2 != 0.0 { sumlx / suml2 } else { 0.0 };
    let mut best = scale * sumlx;
    for step in (-9..=9).filter(|&s| s != 0) {
        iscale = -(nmaxf + 0.1 * step as f32) / max;
        let (sumlx, suml2) = fit(iscale);
        // sumlx² / suml2 is the explained energy; compare without dividing.
        if suml2 > 0.0 && sumlx * sumlx > best * suml2 {
            for (li, &v) in l.iter_mut().zip(x) {
                *li = (quant(iscale, v) + nmax) as u8;
            }
            scale = sumlx / suml2;
            best = scale * sumlx;
        }
    }
    scale
}

/// Symmetric quantization to `[-nmax, nmax - 1]` for Q3_K (ggml's `make_q3_quants` with
/// its RMSE refinement): start from `-nmax / max`, then up to 5 passes that move single
/// quants to the value the current least-squares scale prefers whenever that improves
/// the x²-weighted fit.
///
/// Writes `l[i] = q + nmax` and returns the scale (`x ≈ scale * q`).
pub fn make_q3_quants(x: &[f32], nmax: i32, l: &mut [u8]) -> f32 {
    debug_assert_eq!(x.len(), l.len());
    let (amax, max) = signed_absmax(x);
    if amax < GROUP_MAX_EPS {
        l.fill(0);
        return 0.0;
    }
    let iscale = -(nmax as f32) / max;
    let mut q = [0i32; 32];
    let q = &mut q[..x.len()];
    let (mut sumlx, mut suml2) = (0f32, 0f32);
    for (qi, &v) in q.iter_mut().zip(x) {
        *qi = nearest_int(iscale * v).clamp(-nmax, nmax - 1);
        let w = v * v;
        let qf = *qi as f32;
        sumlx += w * v * qf;
        suml2 += w * qf * qf;
    }
    for _ in 0..5 {
        let mut changed = false;
        for (qi, &v) in q.iter_mut().zip(x) {
            let w = v * v;
            let old = *qi as f32;
            // The fit without element i; its best quant is x * sl2 / slx.
            let mut slx = sumlx - w * v * old;
            if slx > 0.0 {
                let mut sl2 = suml2 - w * old * old;
                let new_q = nearest_int(v * sl2 / slx).clamp(-nmax, nmax - 1);
                if new_q != *qi {
                    let nf = new_q as f32;
                    slx += w * v * nf;
                    sl2 += w * nf * nf;
                    // Keep the move when slx²/sl2 (explained energy) grows.
                    if sl2 > 0.0 && slx * slx * suml2 > sumlx * sumlx * sl2 {
                        *qi = new_q;
                        sumlx = slx;
                        suml2 = sl2;
                        changed = true;
                    }
                }
            }
        }
        if !changed {
            break;
        }
    }
    for (li, &qi) in l.iter_mut().zip(q.iter()) {
        *li = (qi + nmax) as u8;
    }
    if suml2 > 0.0 {
        sumlx / suml2
    } else {
        0.0
    }
}

/// Parameters of [`make_qkx2_quants`]: the quant range and the grid of inverse scales
/// tried, `(nmax + rmin + rdelta * k) / (max - min)` for `k` in `0..=nstep`.
#[derive(Clone, Copy, Debug)]
pub struct ScaleMinSearch {
    pub nmax: i32,
    pub rmin: f32,
    pub rdelta: f32,
    pub nstep: i32,
    /// Minimise the weighted absolute error instead of the weighted squared error.
    pub use_mad: bool,
}

/// Asymmetric quantization `x ≈ scale * q - min` with `q` in `0..=nmax` and `min >= 0`
/// (ggml's `make_qkx2_quants`): for each candidate inverse scale, quantize, solve the
/// weighted least-squares scale and offset for those quants, and keep the candidate with
/// the smallest weighted error. Writes `q` into `l` and returns `(scale, min)`.
pub fn make_qkx2_quants(
    x: &[f32],
    weights: &[f32],
    p: &ScaleMinSearch,
    l: &mut [u8],
) -> (f32, f32) {
    let n = x.len();
    debug_assert!(n <= 32 && weights.len() == n && l.len() == n);
    let mut min = x[0];
    let mut max = x[0];
    let mut sum_w = weights[0];
    let mut sum_x = sum_w * x[0];
    for i in 1..n {
        // Strict comparisons, as ggml: a NaN never replaces the running value.
        if x[i] < min {
            min = x[i];
        }
        if x[i] > max {
            max = x[i];
        }
        let w = weights[i];
        sum_w += w;
        sum_x += w * x[i];
    }
    // The offset only ever moves values up: a block of positives keeps min = 0.
    if min > 0.0 {
        min = 0.0;
    }
    if max == min {
        l.fill(0);
        return (0.0, -min);
    }
    let nmax = p.nmax;
    let nmaxf = nmax as f32;
    let err = |d: f32, w: f32| if p.use_mad { w * d.abs() } else { w * (d * d) };

    let mut iscale = nmaxf / (max - min);
    let mut scale = 1.0 / iscale;
    let mut best_error = 0f32;
    for i in 0..n {
        let q = nearest_int(iscale * (x[i] - min)).clamp(0, nmax);
        l[i] = q as u8;
        let diff = scale * q as f32 + min - x[i];
        best_error += err(diff, weights[i]);
    }
    let mut aux = [0u8; 32];
    let aux = &mut aux[..n];
    for step in 0..=p.nstep {
        // `min` is the best offset so far: later candidates quantize around it.
        iscale = (p.rmin + p.rdelta * step as f32 + nmaxf) / (max - min);
        let (mut sum_l, mut sum_l2, mut sum_xl) = (0f32, 0f32, 0f32);
        for i in 0..n {
            let q = nearest_int(iscale * (x[i] - min)).clamp(0, nmax);
            aux[i] = q as u8;
            let (w, qf) = (weights[i], q as f32);
            sum_l += w * qf;
            sum_l2 += w * qf * qf;
            sum_xl += w * qf * x[i];
        }
        let det = sum_w * sum_l2 - sum_l * sum_l;
        if det > 0.0 {
            let mut this_scale = (sum_w * sum_xl - sum_x * sum_l) / det;
            let mut this_min = (sum_l2 * sum_x - sum_l * sum_xl) / det;
            if this_min > 0.0 {
                this_min = 0.0;
                this_scale = sum_xl / sum_l2;
            }
            let mut cur_error = 0f32;
            for i in 0..n {
                let diff = this_scale * aux[i] as f32 + this_min - x[i];
                cur_error += err(diff, weights[i]);
            }
            if cur_error < best_error {
                l.copy_from_slice(aux);
                best_error = cur_error;
                scale = this_scale;
                min = this_min;
            }
        }
    }
    (scale, -min)
}

/// Q4_K / Q5_K: the 6-bit scale and 6-bit min of sub-block `j` (0..8) from the 12
/// packed bytes. Sub-blocks 0..4 sit in the low 6 bits of bytes `j` (scale) and `j + 4`
/// (min); sub-blocks 4..8 keep their low 4 bits in the nibbles of byte `j + 4` and
/// their top 2 bits in the spare top bits of bytes `j - 4` (scale) and `j` (min).
#[inline]
pub fn get_scale_min_k4(j: usize, scales: &[u8; 12]) -> (u8, u8) {
    if j < 4 {
        (scales[j] & 63, scales[j + 4] & 63)
    } else {
        let sc = (scales[j + 4] & 0x0F) | ((scales[j - 4] >> 6) << 4);
        let m = (scales[j + 4] >> 4) | ((scales[j] >> 6) << 4);
        (sc, m)
    }
}

/// Packs eight 6-bit (scale, min) pairs the way [`get_scale_min_k4`] reads them.
/// Values above 63 are a caller bug (only their low 6 bits are kept).
pub fn put_scales_mins_k4(sc: &[u8; 8], m: &[u8; 8]) -> [u8; 12] {
    let mut out = [0u8; 12];
    for j in 0..4 {
        out[j] = sc[j] & 63;
        out[j + 4] = m[j] & 63;
    }
    for j in 4..8 {
        out[j + 4] = (sc[j] & 0x0F) | ((m[j] & 0x0F) << 4);
        out[j - 4] |= ((sc[j] >> 4) & 3) << 6;
        out[j] |= ((m[j] >> 4) & 3) << 6;
    }
    out
}

/// The low 4 bits of element `e` of a Q4_K / Q5_K super-block's `qs`: 64-element chunks
/// of 32 bytes, element `i` of a chunk in the low nibble of byte `i`, `32 + i` in its
/// high nibble.
#[inline]
pub fn nibble_k4(qs: &[u8; 128], e: usize) -> u8 {
    let byte = qs[32 * (e / 64) + e % 32];
    if e % 64 < 32 {
        byte & 0x0F
    } else {
        byte >> 4
    }
}

/// A stored super-block with Q4_K's scales: `x = d * sc * q - dmin * m`, the 6-bit scale
/// and minimum of each 32-element sub-block packed as [`get_scale_min_k4`] reads them
/// (Q4_K, Q5_K; they differ only in where the quants' bits lie).
pub trait ScaleMinBlock: Block {
    /// `d` and `dmin`.
    fn d_dmin(&self) -> (f32, f32);
    /// The 12 packed scale bytes.
    fn scales(&self) -> &[u8; 12];
    /// The quant of element `e` (0..256).
    fn quant(&self, e: usize) -> u8;
}

/// Dequantizes whole [`ScaleMinBlock`]s of type `B` from `src` into `dst`.
pub fn dequantize_scale_min<B: ScaleMinBlock>(src: &[u8], dst: &mut [f32]) {
    for (i, y) in dst.chunks_exact_mut(256).enumerate() {
        let b: B = read_block(src, i);
        let (d, dmin) = b.d_dmin();
        for (e, o) in y.iter_mut().enumerate() {
            let (sc, m) = get_scale_min_k4(e / 32, b.scales());
            let (dl, ml) = (d * sc as f32, dmin * m as f32);
            *o = dl * b.quant(e) as f32 - ml;
        }
    }
}

/// Weight row of [`ScaleMinBlock`]s `B` · Q8_K activation row (`n` elements): per block
/// the integer sub-block dots times their 6-bit scales, the 6-bit minimums against the
/// activation's `bsums` (two 16-sums per sub-block), then `d * act.d` and `dmin * act.d`
/// once each.
pub fn vec_dot_scale_min<B: ScaleMinBlock>(n: usize, w: &[u8], act: &[u8]) -> f32 {
    let mut sum = 0f32;
    for i in 0..n / 256 {
        let b: B = read_block(w, i);
        let a: BlockQ8K = read_block(act, i);
        let mut isum = 0i32;
        let mut msum = 0i32;
        for j in 0..8 {
            let (sc, m) = get_scale_min_k4(j, b.scales());
            let sub: i32 = (32 * j..32 * j + 32)
                .map(|e| b.quant(e) as i32 * a.qs[e] as i32)
                .sum();
            isum += sc as i32 * sub;
            msum += m as i32 * (a.bsums[2 * j] as i32 + a.bsums[2 * j + 1] as i32);
        }
        let (d, dmin) = b.d_dmin();
        let (d, dmin) = (d * a.d, dmin * a.d);
        sum += d * isum as f32 - dmin * msum as f32;
    }
    sum
}

/// The quantized form of a Q4_K / Q5_K super-block before bit packing.
#[derive(Clone, Debug)]
pub struct ScaleMinQuants {
    pub d: f16,
    pub dmin: f16,
    /// Eight 6-bit (scale, min) pairs packed by [`put_scales_mins_k4`].
    pub scales: [u8; 12],
    /// One quant per element, `0..=nmax`.
    pub q: [u8; 256],
}

/// Q4_K / Q5_K quantization of one 256-element super-block (ggml's reference
/// quantizers, which differ only in `p`): each sub-block of 32 gets a scale and a min
/// from [`make_qkx2_quants`] with weights `rms(sub-block) + |x|`; both are quantized to
/// 6 bits against the block maxima (stored as f16 `d = max_scale / 63` and
/// `dmin = max_min / 63`), and the quants are recomputed against the stored values.
pub fn quantize_scale_min_k4(x: &[f32], p: &ScaleMinSearch) -> ScaleMinQuants {
    debug_assert_eq!(x.len(), 256);
    let mut q = [0u8; 256];
    let mut scales = [0f32; 8];
    let mut mins = [0f32; 8];
    for j in 0..8 {
        let xs = &x[32 * j..32 * j + 32];
        let sum_x2 = xs.iter().fold(0f32, |s, &v| s + v * v);
        let av_x = (sum_x2 / 32.0).sqrt();
        let weights: [f32; 32] = std::array::from_fn(|l| av_x + xs[l].abs());
        (scales[j], mins[j]) = make_qkx2_quants(xs, &weights, p, &mut q[32 * j..32 * j + 32]);
    }
    let max_scale = scales.iter().fold(0f32, |m, &s| if s > m { s } else { m });
    let max_min = mins.iter().fold(0f32, |m, &s| if s > m { s } else { m });
    let inv_scale = if max_scale > 0.0 {
        63.0 / max_scale
    } else {
        0.0
    };
    let inv_min = if max_min > 0.0 { 63.0 / max_min } else { 0.0 };
    // ggml truncates to u8 before capping at 63 (a negative scale wraps, then caps).
    let ls: [u8; 8] = std::array::from_fn(|j| (nearest_int(inv_scale * scales[j]) as u8).min(63));
    let lm: [u8; 8] = std::array::from_fn(|j| (nearest_int(inv_min * mins[j]) as u8).min(63));
    let packed = put_scales_mins_k4(&ls, &lm);
    let d = f16::from_f32(max_scale / 63.0);
    let dmin = f16::from_f32(max_min / 63.0);

    for j in 0..8 {
        let (sc, m) = get_scale_min_k4(j, &packed);
        let dl = d.to_f32() * sc as f32;
        if dl == 0.0 {
            continue;
        }
        let ml = dmin.to_f32() * m as f32;
        for i in 32 * j..32 * j + 32 {
            q[i] = nearest_int((x[i] + ml) / dl).clamp(0, p.nmax) as u8;
        }
    }
    ScaleMinQuants {
        d,
        dmin,
        scales: packed,
        q,
    }
}

/// Q3_K: the sixteen 6-bit scales (stored biased by 32) from the 12 packed bytes, with
/// the bias removed. Scale `j` keeps its low 4 bits in a nibble of byte `j % 8` (low
/// nibble for `j < 8`) and its top 2 bits at bit `2 * (j / 4)` of byte `8 + j % 4`.
pub fn get_q3_k_scales(packed: &[u8; 12]) -> [i8; 16] {
    let mut out = [0i8; 16];
    for (j, o) in out.iter_mut().enumerate() {
        let low = if j < 8 {
            packed[j] & 0x0F
        } else {
            packed[j - 8] >> 4
        };
        let high = (packed[8 + j % 4] >> (2 * (j / 4))) & 3;
        *o = ((low | (high << 4)) as i8) - 32;
    }
    out
}

/// Packs sixteen biased 6-bit Q3_K scales (`0..64`, i.e. scale + 32) the way
/// [`get_q3_k_scales`] reads them.
pub fn put_q3_k_scales(biased: &[u8; 16]) -> [u8; 12] {
    let mut out = [0u8; 12];
    for (j, &b) in biased.iter().enumerate() {
        if j < 8 {
            out[j] |= b & 0x0F;
        } else {
            out[j - 8] |= (b & 0x0F) << 4;
        }
        out[8 + j % 4] |= ((b >> 4) & 3) << (2 * (j / 4));
    }
    out
}

/// Q2_K / Q3_K: packs 256 2-bit quants into 64 bytes. Each 128-element half uses 32
/// bytes; element `32 * s + i` of a half goes to bits `2 * s` of byte `i`.
pub fn pack_2bit(q: &[u8; 256]) -> [u8; 64] {
    let mut out = [0u8; 64];
    for half in 0..2 {
        for i in 0..32 {
            let e = 128 * half + i;
            out[32 * half + i] = (q[e] & 3)
                | ((q[e + 32] & 3) << 2)
                | ((q[e + 64] & 3) << 4)
                | ((q[e + 96] & 3) << 6);
        }
    }
    out
}

/// The 2-bit quant of element `e` (0..256) of a [`pack_2bit`] array.
#[inline]
pub fn get_2bit(qs: &[u8; 64], e: usize) -> u8 {
    let (half, shift, i) = (e / 128, (e % 128) / 32, e % 32);
    (qs[32 * half + i] >> (2 * shift)) & 3
}

/// Checks shared by the formats' unit tests.
#[cfg(test)]
pub(crate) mod test_support {
    use crate::util::SplitMix64;

    /// Quantizes 8 blocks of normal data whose scales span 4^-4..4^3, plus an all-zero
    /// block, and checks each block's RMSE relative to its standard deviation against
    /// `bound`, and the zero block comes back exactly zero. `bound` follows from the
    /// bit budget: a uniform grid of L levels over a sub-block's range R (about 3.5
    /// sigma for 16 normals, 4.1 for 32) has RMSE R / (L - 1) / sqrt(12); the bounds
    /// are that times 1.25.
    pub(crate) fn check_roundtrip(
        quantize: fn(&[f32], &mut [u8]),
        dequantize: fn(&[u8], &mut [f32]),
        block_bytes: usize,
        bound: f64,
    ) {
        const BLOCKS: usize = 9;
        let mut rng = SplitMix64::new(0x5eed);
        let mut x = vec![0f32; BLOCKS * 256];
        for (b, blk) in x.chunks_exact_mut(256).enumerate().take(8) {
            rng.fill_normal(blk, 4f32.powi(b as i32 - 4));
        }
        let mut q = vec![0u8; BLOCKS * block_bytes];
        quantize(&x, &mut q);
        let mut y = vec![f32::NAN; x.len()];
        dequantize(&q, &mut y);
        for (b, (xb, yb)) in x.chunks_exact(256).zip(y.chunks_exact(256)).enumerate() {
            let var = xb.iter().map(|&v| (v as f64).powi(2)).sum::<f64>() / 256.0;
            let err = xb
                .iter()
                .zip(yb)
                .map(|(&a, &r)| (a as f64 - r as f64).powi(2))
                .sum::<f64>()
                / 256.0;
            if b == 8 {
                assert!(
                    yb.iter().all(|&v| v == 0.0),
                    "zero block dequantizes to {yb:?}"
                );
                continue;
            }
            let rel = (err / var).sqrt();
            assert!(rel <= bound, "block {b}: relative RMSE {rel} > {bound}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::util::SplitMix64;

    #[test]
    fn nearest_int_rounds_half_to_even() {
        let cases = [
            (0.5, 0),
            (1.5, 2),
            (2.5, 2),
            (-0.5, 0),
            (-1.5, -2),
            (-2.5, -2),
            (2.49, 2),
        ];
        for (x, want) in cases {
            assert_eq!(nearest_int(x), want, "nearest_int({x})");
        }
        // Agrees with ggml's magic-number formulation over its whole domain sample.
        let mut rng = SplitMix64::new(7);
        for _ in 0..10_000 {
            let x = rng.uniform(-4_194_303.0, 4_194_303.0) * rng.next_f32();
            let magic = ((x + 12_582_912.0f32).to_bits() & 0x007f_ffff) as i32 - 0x0040_0000;
            assert_eq!(nearest_int(x), magic, "x = {x}");
        }
    }

    #[test]
    fn scale_min_k4_pack_roundtrip() {
        let mut rng = SplitMix64::new(3);
        for _ in 0..200 {
            let sc: [u8; 8] = std::array::from_fn(|_| rng.below(64) as u8);
            let m: [u8; 8] = std::array::from_fn(|_| rng.below(64) as u8);
            let packed = put_scales_mins_k4(&sc, &m);
            for j in 0..8 {
                assert_eq!(get_scale_min_k4(j, &packed), (sc[j], m[j]), "sub-block {j}");
            }
        }
    }

    #[test]
    fn q3_k_scales_pack_roundtrip() {
        let mut rng = SplitMix64::new(4);
        for _ in 0..200 {
            let biased: [u8; 16] = std::array::from_fn(|_| rng.below(64) as u8);
            let got = get_q3_k_scales(&put_q3_k_scales(&biased));
            for j in 0..16 {
                assert_eq!(got[j] as i32, biased[j] as i32 - 32, "scale {j}");
            }
        }
    }

    #[test]
    fn two_bit_pack_roundtrip() {
        let mut rng = SplitMix64::new(5);
        let q: [u8; 256] = std::array::from_fn(|_| rng.below(4) as u8);
        let packed = pack_2bit(&q);
        for (e, &v) in q.iter().enumerate() {
            assert_eq!(get_2bit(&packed, e), v, "element {e}");
        }
    }

    #[test]
    fn make_qx_quants_fits_and_clamps() {
        let mut rng = SplitMix64::new(6);
        let mut x = [0f32; 16];
        rng.fill_normal(&mut x, 2.0);
        let mut l = [0u8; 16];
        let scale = make_qx_quants(&x, 32, &mut l);
        assert!(scale != 0.0);
        for (&v, &q) in x.iter().zip(&l) {
            assert!(q < 64);
            // Each value is within one step of its reconstruction.
            assert!(
                (scale * (q as f32 - 32.0) - v).abs() <= scale.abs() * 1.01,
                "{v} -> {q}"
            );
        }
        let mut z = [9u8; 16];
        assert_eq!(make_qx_quants(&[0.0; 16], 32, &mut z), 0.0);
        assert_eq!(z, [0u8; 16]);
    }

    #[test]
    fn make_qkx2_quants_fits_offset_blocks() {
        let mut rng = SplitMix64::new(8);
        let x: [f32; 32] = std::array::from_fn(|_| rng.uniform(-1.0, 3.0));
        let w: [f32; 32] = std::array::from_fn(|i| 0.5 + x[i].abs());
        let mut l = [0u8; 32];
        let p = ScaleMinSearch {
            nmax: 15,
            rmin: -1.0,
            rdelta: 0.1,
            nstep: 20,
            use_mad: false,
        };
        let (scale, min) = make_qkx2_quants(&x, &w, &p, &mut l);
        assert!(scale > 0.0 && min > 0.0, "scale {scale} min {min}");
        for (&v, &q) in x.iter().zip(&l) {
            assert!(q <= 15);
            assert!((scale * q as f32 - min - v).abs() <= scale, "{v} -> {q}");
        }
        // A constant positive block: min is clamped to 0 and the scale covers the value.
        let (s, m) = make_qkx2_quants(&[1.5; 32], &[1.0; 32], &p, &mut l);
        assert_eq!(m, 0.0);
        assert!((s * l[0] as f32 - 1.5).abs() < 1e-6, "{s} * {}", l[0]);
    }
}
