//! Activation rows for the repacked kernels.
//!
//! INT8/INT4 weights: each token's row is quantized to signed int8 with one f32 scale
//! per group of G elements (the weights' group), `d = absmax / 127`, `x * (1/d)` rounded
//! to nearest even (what `vcvtps2dq` does, so the AVX512 quantizer in `act_avx512.rs`
//! gives the same bytes). Signed (not u8 with an offset): AMX `tdpbssd` multiplies
//! s8 x s8 directly, so the prefill path needs no zero-point correction, and a group's integer dot is
//! scaled once by `d_w * d_a`. Per group rather than per token: one outlier then only
//! coarsens its own group (DeepSeek's hidden states have a few large channels). The
//! VNNI kernels (`vpdpbusd` is u8 x s8) handle the sign on the weight side instead.
//!
//! [`ActScales::PerToken`] (INT4 prefill on AMX with folded weight scales, `fold.rs`):
//! one scale for the whole row, `d = absmax(row) / 127`, written into every group's
//! scale slot, so the row has the per-group layout and every kernel reads it as before;
//! the folded AMX kernel reads one. A row's outlier then coarsens all of it: the price
//! of accumulating the whole row's integer dot in the AMX tiles.
//!
//! Row layout: `cols` int8 values, then `cols / G` f32 scales (little endian).
//! BF16 weights: the row in bf16, round to nearest even.

use half::bf16;

use super::format::RepackFormat;

/// How an INT activation row is scaled (BF16 rows ignore it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ActScales {
    /// One scale per group of the weights' group size.
    PerGroup,
    /// One scale per row, repeated in each group's slot.
    PerToken,
}

/// Quantizes one row with the fastest quantizer `isa` allows (same bytes as
/// [`quantize_row`]).
pub fn quantize_row_with(
    isa: crate::cpu::Isa,
    format: RepackFormat,
    scales: ActScales,
    src: &[f32],
    dst: &mut [u8],
) {
    #[cfg(target_arch = "x86_64")]
    let avx512 = isa >= crate::cpu::Isa::Avx512
        && std::arch::is_x86_feature_detected!("avx512f")
        && std::arch::is_x86_feature_detected!("avx512bw");
    if let (true, Some(g)) = (avx512, format.group()) {
        let n = src.len();
        // SAFETY: AVX512 F/BW were detected; quantize_int8 checks the lengths (a
        // per-token row is one group of n, its scale at n, then copied to the others).
        match scales {
            ActScales::PerGroup => unsafe { super::act_avx512::quantize_int8(src, dst, g) },
            ActScales::PerToken => {
                unsafe { super::act_avx512::quantize_int8(src, &mut dst[..n + 4], n) };
                repeat_scale(dst, n, g);
            }
        }
        return;
    }
    quantize_row(format, scales, src, dst);
}

/// Copies the first group's scale of an INT row of `n` values into the other slots.
fn repeat_scale(dst: &mut [u8], n: usize, g: usize) {
    let (first, rest) = dst[n..n + 4 * (n / g)].split_at_mut(4);
    for s in rest.chunks_exact_mut(4) {
        s.copy_from_slice(first);
    }
}

/// Quantizes the columns `c0..c0 + src.len()` of a row whose other columns are written
/// elsewhere (the gate/up items each own a block of the intermediate's columns), with the
/// bytes [`quantize_row_with`] gives for the whole row: `vals` gets the segment's values
/// (bytes `c0..` of an INT row, `2 * c0..` of a BF16 one) and `scales` its groups' scales
/// (bytes `cols + 4 * c0 / G..` of an INT row; empty for BF16). `c0` and the length are
/// whole groups (the caller checks; a group's scale needs all of it).
pub(crate) fn quantize_segment_with(
    isa: crate::cpu::Isa,
    format: RepackFormat,
    src: &[f32],
    vals: &mut [u8],
    scales: &mut [u8],
) {
    let Some(g) = format.group() else {
        quantize_row_with(isa, format, ActScales::PerGroup, src, vals);
        return;
    };
    debug_assert!(src.len().is_multiple_of(g) && vals.len() == src.len());
    debug_assert_eq!(scales.len(), 4 * (src.len() / g));
    // One group at a time through the row quantizer: a group's row is its `g` values
    // then its scale (GROUPS is ascending).
    let mut one = [0u8; super::format::GROUPS[super::format::GROUPS.len() - 1] + 4];
    for ((x, v), s) in src
        .chunks_exact(g)
        .zip(vals.chunks_exact_mut(g))
        .zip(scales.chunks_exact_mut(4))
    {
        let row = &mut one[..g + 4];
        quantize_row_with(isa, format, ActScales::PerGroup, x, row);
        v.copy_from_slice(&row[..g]);
        s.copy_from_slice(&row[g..]);
    }
}

/// Quantizes one row (`src.len()` = cols) into `dst` (`format.act_row_bytes(cols)` bytes).
/// The scalar reference; lengths are checked by the callers.
pub fn quantize_row(format: RepackFormat, scales: ActScales, src: &[f32], dst: &mut [u8]) {
    debug_assert_eq!(dst.len(), format.act_row_bytes(src.len()));
    match format.group() {
        None => {
            for (d, &v) in dst.chunks_exact_mut(2).zip(src) {
                d.copy_from_slice(&bf16::from_f32(v).to_bits().to_le_bytes());
            }
        }
        Some(g) => {
            let n = src.len();
            let (vals, sc) = dst.split_at_mut(n);
            match scales {
                ActScales::PerGroup => {
                    for ((x, q), s) in src
                        .chunks_exact(g)
                        .zip(vals.chunks_exact_mut(g))
                        .zip(sc.chunks_exact_mut(4))
                    {
                        s.copy_from_slice(&quantize_group(x, q).to_le_bytes());
                    }
                }
                ActScales::PerToken => {
                    sc[..4].copy_from_slice(&quantize_group(src, vals).to_le_bytes());
                    repeat_scale(dst, n, g);
                }
            }
        }
    }
}

/// `x` to int8 with `d = absmax / 127`, `x * (1/d)` rounded to nearest even; returns `d`.
fn quantize_group(x: &[f32], q: &mut [u8]) -> f32 {
    let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
    let d = amax / 127.0;
    let inv = if d > 0.0 { 1.0 / d } else { 0.0 };
    for (q, &v) in q.iter_mut().zip(x) {
        *q = (v * inv).round_ties_even().clamp(-127.0, 127.0) as i8 as u8;
    }
    d
}

/// The f32 values a quantized row stands for (tests and the exact reference).
pub fn dequantize_row(format: RepackFormat, src: &[u8], cols: usize, out: &mut [f32]) {
    match format.group() {
        None => {
            for (o, b) in out.iter_mut().zip(src.chunks_exact(2)) {
                *o = bf16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32();
            }
        }
        Some(g) => {
            for (k, o) in out.iter_mut().enumerate().take(cols) {
                *o = src[k] as i8 as f32 * act_scale(src, cols, k / g);
            }
        }
    }
}

/// Scale of group `g` of a quantized row of `cols` elements.
pub fn act_scale(row: &[u8], cols: usize, g: usize) -> f32 {
    let o = cols + 4 * g;
    f32::from_le_bytes([row[o], row[o + 1], row[o + 2], row[o + 3]])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::Isa;
    use crate::util::SplitMix64;

    /// A row quantized block by block (as the gate/up items do) is the row quantized
    /// whole, byte for byte, whatever the block sizes (whole groups).
    #[test]
    fn segments_give_the_bytes_of_the_whole_row() {
        let cols = 384;
        let mut x = vec![0f32; cols];
        SplitMix64::new(11).fill_normal(&mut x, 1.0);
        x[70] = 9.0; // one outlier group
        for isa in Isa::available() {
            for f in [
                RepackFormat::Int8 { group: 32 },
                RepackFormat::Int4 { group: 64 },
                RepackFormat::Int4 { group: 128 },
                RepackFormat::Bf16,
            ] {
                let row_bytes = f.act_row_bytes(cols);
                let mut whole = vec![0u8; row_bytes];
                quantize_row(f, ActScales::PerGroup, &x, &mut whole);
                let g = f.group().unwrap_or(32);
                for block in [g, 2 * g, 128.max(g)] {
                    let mut parts = vec![0xA5u8; row_bytes];
                    for c0 in (0..cols).step_by(block) {
                        let n = block.min(cols - c0);
                        let (vals, scales) = match f.group() {
                            Some(g) => {
                                let (v, s) = parts.split_at_mut(cols);
                                (&mut v[c0..c0 + n], &mut s[4 * c0 / g..4 * (c0 + n) / g])
                            }
                            None => (&mut parts[2 * c0..2 * (c0 + n)], &mut [][..]),
                        };
                        quantize_segment_with(isa, f, &x[c0..c0 + n], vals, scales);
                    }
                    assert_eq!(parts, whole, "{f:?} on {isa} in blocks of {block}");
                }
            }
        }
    }
}
