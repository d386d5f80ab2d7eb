//! [`RepackedStack`]: `experts` matrices of `rows x cols` in a repacked format, converted
//! once at load time from f32 weights or from a GGUF expert stack (dequantized with the
//! reference, then requantized), and the error report of a conversion.

use half::f16;

use super::fold::{quant4, quantize_row_folded, Fold};
use super::format::{locate, RepackFormat, PANEL};
use crate::cpu::moe::ExpertStack;
use crate::error::{KtError, Result};
use crate::quant::reference as quant_ref;
use crate::util::AlignedBuf;

/// One projection's experts in a repacked layout (see `format.rs`). Owns its bytes.
pub struct RepackedStack {
    format: RepackFormat,
    experts: usize,
    rows: usize,
    cols: usize,
    data: AlignedBuf,
    scales: Vec<f16>,
    /// INT4: the scales as row scales times integer multipliers (`fold.rs`), for the AMX
    /// prefill kernel; `None` for other formats or scales that do not factor.
    fold: Option<Fold>,
}

/// Candidate INT4 scale divisors: the absmax element maps to +-r. Searching a few
/// (with either sign, since -8..=7 is asymmetric) and keeping the least squared error
/// beats the plain `absmax / 7` by ~10% in error on Gaussian weights.
const INT4_DIVISORS: [f32; 7] = [6.5, 6.75, 7.0, 7.25, 7.5, 7.75, 8.0];

fn bad(detail: String) -> KtError {
    KtError::Shape {
        op: "RepackedStack",
        detail,
    }
}

impl RepackedStack {
    /// Repacks `w` (`experts x rows x cols`, row-major f32).
    pub fn from_f32(
        format: RepackFormat,
        w: &[f32],
        experts: usize,
        rows: usize,
        cols: usize,
    ) -> Result<RepackedStack> {
        let mut s = RepackedStack::empty(format, experts, rows, cols)?;
        if w.len() != experts * rows * cols {
            return Err(bad(format!(
                "{} weights for {experts} x {rows} x {cols}",
                w.len()
            )));
        }
        for e in 0..experts {
            s.pack_expert(e, &w[e * rows * cols..(e + 1) * rows * cols]);
        }
        s.derive_fold();
        Ok(s)
    }

    /// Repacks a GGUF expert stack: each expert dequantized with the reference, then
    /// requantized into `format`.
    pub fn from_stack(stack: &ExpertStack, format: RepackFormat) -> Result<RepackedStack> {
        let (experts, rows, cols) = (stack.experts(), stack.rows(), stack.cols());
        let mut s = RepackedStack::empty(format, experts, rows, cols)?;
        let mut f = vec![0f32; rows * cols];
        for e in 0..experts {
            quant_ref::dequantize(stack.qtype(), stack.expert(e), &mut f);
            s.pack_expert(e, &f);
        }
        s.derive_fold();
        Ok(s)
    }

    /// Wraps already repacked bytes (benchmarks that replicate one packed expert).
    pub fn from_parts(
        format: RepackFormat,
        experts: usize,
        rows: usize,
        cols: usize,
        data: &[u8],
        scales: Vec<f16>,
    ) -> Result<RepackedStack> {
        let mut s = RepackedStack::empty(format, experts, rows, cols)?;
        if data.len() != s.data.len() || scales.len() != s.scales.len() {
            return Err(bad(format!(
                "{} data bytes and {} scales, {} needs {} and {}",
                data.len(),
                scales.len(),
                format.name(),
                s.data.len(),
                s.scales.len()
            )));
        }
        s.data.as_mut_slice().copy_from_slice(data);
        s.scales = scales;
        s.derive_fold();
        Ok(s)
    }

    fn empty(
        format: RepackFormat,
        experts: usize,
        rows: usize,
        cols: usize,
    ) -> Result<RepackedStack> {
        format.check(rows, cols)?;
        if experts == 0 {
            return Err(bad("no experts".into()));
        }
        let panels = experts
            .checked_mul(rows / PANEL)
            .ok_or_else(|| bad(format!("{experts} x {rows} rows overflow")))?;
        let bytes = panels
            .checked_mul(format.panel_bytes(cols))
            .ok_or_else(|| bad(format!("{experts} x {rows} x {cols} overflows")))?;
        Ok(RepackedStack {
            format,
            experts,
            rows,
            cols,
            data: AlignedBuf::with_len(bytes),
            scales: vec![f16::ZERO; panels * format.panel_scales(cols)],
            fold: None,
        })
    }

    fn derive_fold(&mut self) {
        if let RepackFormat::Int4 { group } = self.format {
            self.fold = Fold::derive(&self.scales, self.cols / group);
        }
    }

    /// True when the INT4 scales factor into row scales and group multipliers (always
    /// for stacks this repacker quantized, see `fold.rs`): the AMX prefill kernel then
    /// accumulates whole rows in integers.
    pub fn folded(&self) -> bool {
        self.fold.is_some()
    }

    /// The row scale `d_n` of row `r` of expert `e` of a folded INT4 stack (its group
    /// scales are `d_n` times integers in `MIN_MULT..=MAX_MULT`); `None` when not folded
    /// or out of range.
    pub fn row_scale(&self, e: usize, r: usize) -> Option<f32> {
        if e >= self.experts || r >= self.rows {
            return None;
        }
        Some(self.fold.as_ref()?.row_scales[e * self.rows + r])
    }

    /// Expert `e`'s row scales (`rows` f32) and group multipliers (indexed as its
    /// scales), if folded; panics if `e >= experts`.
    pub(crate) fn expert_fold(&self, e: usize) -> Option<(&[f32], &[i8])> {
        let f = self.fold.as_ref()?;
        let n = self.expert_scales_len();
        Some((
            &f.row_scales[e * self.rows..(e + 1) * self.rows],
            &f.mults[e * n..(e + 1) * n],
        ))
    }

    pub fn format(&self) -> RepackFormat {
        self.format
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
    /// Data bytes plus scale bytes of one expert.
    pub fn expert_bytes(&self) -> usize {
        self.expert_data_len() + 2 * self.expert_scales_len()
    }
    fn expert_data_len(&self) -> usize {
        self.rows / PANEL * self.format.panel_bytes(self.cols)
    }
    fn expert_scales_len(&self) -> usize {
        self.rows / PANEL * self.format.panel_scales(self.cols)
    }
    /// Expert `e`'s data (panels back to back); panics if `e >= experts`.
    pub fn expert_data(&self, e: usize) -> &[u8] {
        let n = self.expert_data_len();
        &self.data.as_slice()[e * n..(e + 1) * n]
    }
    /// Expert `e`'s scales (`[panel][group][16]`); empty for BF16.
    pub fn expert_scales(&self, e: usize) -> &[f16] {
        let n = self.expert_scales_len();
        &self.scales[e * n..(e + 1) * n]
    }
    pub fn data(&self) -> &[u8] {
        self.data.as_slice()
    }
    pub fn scales(&self) -> &[f16] {
        &self.scales
    }

    /// Quantizes one expert's `rows x cols` f32 matrix into its panels.
    fn pack_expert(&mut self, e: usize, w: &[f32]) {
        let (format, cols) = (self.format, self.cols);
        let (pb, ps) = (format.panel_bytes(cols), format.panel_scales(cols));
        let (dn, sn) = (self.expert_data_len(), self.expert_scales_len());
        let data = &mut self.data.as_mut_slice()[e * dn..(e + 1) * dn];
        let scales = &mut self.scales[e * sn..(e + 1) * sn];
        let mut q = vec![0i8; cols];
        let mut row_scales = vec![f16::ZERO; format.group().map_or(0, |g| cols / g)];
        for r in 0..self.rows {
            let (p, n) = (r / PANEL, r % PANEL);
            let panel = &mut data[p * pb..(p + 1) * pb];
            let row = &w[r * cols..(r + 1) * cols];
            match format {
                RepackFormat::Bf16 => {
                    for (k, &v) in row.iter().enumerate() {
                        let (b, _) = locate(format, n, k);
                        panel[b..b + 2]
                            .copy_from_slice(&half::bf16::from_f32(v).to_bits().to_le_bytes());
                    }
                }
                RepackFormat::Int8 { group } | RepackFormat::Int4 { group } => {
                    let int4 = matches!(format, RepackFormat::Int4 { .. });
                    // INT4: scales folded over the row (`fold.rs`), the row scale set by
                    // the best own scale of the group with the largest magnitude; the
                    // groups' own scales only where no row scale is exact in f16.
                    let folded = int4 && {
                        let gmax = row
                            .chunks_exact(group)
                            .map(|x| x.iter().fold(0f32, |m, v| m.max(v.abs())))
                            .enumerate()
                            .fold((0, -1f32), |b, (g, a)| if a > b.1 { (g, a) } else { b })
                            .0;
                        let own = quantize_int4_group(
                            &row[gmax * group..(gmax + 1) * group],
                            &mut q[..group],
                        );
                        quantize_row_folded(row, group, own.to_f32().abs(), &mut row_scales, &mut q)
                    };
                    if !folded {
                        for (g, (src, dst)) in row
                            .chunks_exact(group)
                            .zip(q.chunks_exact_mut(group))
                            .enumerate()
                        {
                            row_scales[g] = if int4 {
                                quantize_int4_group(src, dst)
                            } else {
                                quantize_int8_group(src, dst)
                            };
                        }
                    }
                    for (g, &d) in row_scales.iter().enumerate() {
                        scales[p * ps + g * PANEL + n] = d;
                    }
                    for (k, &v) in q.iter().enumerate() {
                        let (b, nib) = locate(format, n, k);
                        if int4 {
                            let u = (v + 8) as u8;
                            panel[b] = if nib == 0 {
                                (panel[b] & 0xF0) | u
                            } else {
                                (panel[b] & 0x0F) | (u << 4)
                            };
                        } else {
                            panel[b] = v as u8;
                        }
                    }
                }
            }
        }
    }

    /// Expert `e` back to f32, `rows x cols` row-major: exactly the values the kernels
    /// multiply with (scale x integer, or the bf16 value).
    pub fn dequantize_expert(&self, e: usize, out: &mut [f32]) -> Result<()> {
        let (format, cols) = (self.format, self.cols);
        if out.len() != self.rows * cols || e >= self.experts {
            return Err(bad(format!(
                "expert {e} of {} into {} floats ({} x {cols} needed)",
                self.experts,
                out.len(),
                self.rows
            )));
        }
        let (pb, ps) = (format.panel_bytes(cols), format.panel_scales(cols));
        let (data, scales) = (self.expert_data(e), self.expert_scales(e));
        for r in 0..self.rows {
            let (p, n) = (r / PANEL, r % PANEL);
            let panel = &data[p * pb..(p + 1) * pb];
            for (k, o) in out[r * cols..(r + 1) * cols].iter_mut().enumerate() {
                *o = match format {
                    RepackFormat::Bf16 => {
                        let (b, _) = locate(format, n, k);
                        half::bf16::from_bits(u16::from_le_bytes([panel[b], panel[b + 1]])).to_f32()
                    }
                    RepackFormat::Int8 { group } | RepackFormat::Int4 { group } => {
                        let d = scales[p * ps + (k / group) * PANEL + n].to_f32();
                        d * int_weight(format, panel, n, k) as f32
                    }
                };
            }
        }
        Ok(())
    }
}

/// The integer weight `(n, k)` of an INT8/INT4 panel.
pub(crate) fn int_weight(format: RepackFormat, panel: &[u8], n: usize, k: usize) -> i32 {
    let (b, nib) = locate(format, n, k);
    match format {
        RepackFormat::Int4 { .. } => ((panel[b] >> (4 * nib)) & 0x0F) as i32 - 8,
        _ => panel[b] as i8 as i32,
    }
}

/// Symmetric int8 in -127..=127 with `d = absmax / 127` rounded to f16; returns `d`.
fn quantize_int8_group(src: &[f32], dst: &mut [i8]) -> f16 {
    let amax = src.iter().fold(0f32, |m, v| m.max(v.abs()));
    let d = f16::from_f32(amax / 127.0);
    let inv = if d.to_f32() > 0.0 {
        1.0 / d.to_f32()
    } else {
        0.0
    };
    for (q, &v) in dst.iter_mut().zip(src) {
        *q = (v * inv).round().clamp(-127.0, 127.0) as i8;
    }
    d
}

/// Symmetric int4 in -8..=7: the f16 scale among `±absmax / r` (r in [`INT4_DIVISORS`])
/// with the least squared error; returns it.
fn quantize_int4_group(src: &[f32], dst: &mut [i8]) -> f16 {
    let amax = src.iter().fold(0f32, |m, v| m.max(v.abs()));
    if amax == 0.0 {
        dst.fill(0);
        return f16::ZERO;
    }
    let quant = quant4;
    let mut best = (f32::INFINITY, f16::ZERO);
    for r in INT4_DIVISORS {
        for sign in [1.0f32, -1.0] {
            let d = f16::from_f32(sign * amax / r);
            let df = d.to_f32();
            let err: f32 = src.iter().map(|&v| (v - df * quant(df, v)).powi(2)).sum();
            if err < best.0 {
                best = (err, d);
            }
        }
    }
    let df = best.1.to_f32();
    for (q, &v) in dst.iter_mut().zip(src) {
        *q = quant(df, v) as i8;
    }
    best.1
}

/// `||a - b||_F / ||a||_F` in f64 (0 when both are zero).
pub fn relative_error(original: &[f32], approx: &[f32]) -> f64 {
    let (mut num, mut den) = (0f64, 0f64);
    for (&a, &b) in original.iter().zip(approx) {
        num += (a as f64 - b as f64).powi(2);
        den += (a as f64).powi(2);
    }
    if den == 0.0 {
        if num == 0.0 {
            0.0
        } else {
            f64::INFINITY
        }
    } else {
        (num / den).sqrt()
    }
}

/// The relative Frobenius error of `repacked` against the f32 weights of `stack` (the
/// reference dequantization of the GGUF original), over all experts.
pub fn repack_error(stack: &ExpertStack, repacked: &RepackedStack) -> Result<f64> {
    let (rows, cols) = (stack.rows(), stack.cols());
    if (repacked.experts, repacked.rows, repacked.cols) != (stack.experts(), rows, cols) {
        return Err(bad(
            "the repacked stack has another shape than the original".into(),
        ));
    }
    let (mut a, mut b) = (vec![0f32; rows * cols], vec![0f32; rows * cols]);
    let (mut num, mut den) = (0f64, 0f64);
    for e in 0..stack.experts() {
        quant_ref::dequantize(stack.qtype(), stack.expert(e), &mut a);
        repacked.dequantize_expert(e, &mut b)?;
        for (&x, &y) in a.iter().zip(&b) {
            num += (x as f64 - y as f64).powi(2);
            den += (x as f64).powi(2);
        }
    }
    Ok(if den == 0.0 { 0.0 } else { (num / den).sqrt() })
}
