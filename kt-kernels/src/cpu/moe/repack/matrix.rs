//! [`RepackedStack`]: `experts` matrices of `rows x cols` in a repacked format, converted
//! once at load time from f32 weights or from a GGUF expert stack (dequantized with the
//! reference, then requantized), and the error report of a conversion.

use std::sync::Mutex;

use half::f16;

use super::fold::{quant4, quantize_row_folded, sq_err, Fold};
use super::format::{locate, RepackFormat, PANEL};
use crate::cpu::moe::ExpertStack;
use crate::cpu::{dequant, pool};
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
    /// Repacks `w` (`experts x rows x cols`, row-major f32), an expert per item of the
    /// kernels' pool.
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
        s.pack_experts(
            &|e, r0, out| out.copy_from_slice(&w[(e * rows + r0) * cols..][..out.len()]),
            &|| {},
        );
        Ok(s)
    }

    /// Repacks a GGUF expert stack: each expert dequantized (the reference's values, by
    /// [`crate::cpu::dequantize`]), then requantized into `format`, an expert per item of
    /// the kernels' pool.
    pub fn from_stack(stack: &ExpertStack, format: RepackFormat) -> Result<RepackedStack> {
        RepackedStack::from_stack_reporting(stack, format, &|| {})
    }

    /// [`RepackedStack::from_stack`], calling `expert_done` (from the pool's threads) as
    /// each expert is finished: a progress report for loads that repack many stacks.
    pub fn from_stack_reporting(
        stack: &ExpertStack,
        format: RepackFormat,
        expert_done: &(dyn Fn() + Sync),
    ) -> Result<RepackedStack> {
        let (experts, rows, cols) = (stack.experts(), stack.rows(), stack.cols());
        let mut s = RepackedStack::empty(format, experts, rows, cols)?;
        let (qtype, row_bytes) = (stack.qtype(), stack.row_bytes());
        s.pack_experts(
            &|e, r0, out| {
                let n = out.len() / cols;
                let src = &stack.expert(e)[r0 * row_bytes..(r0 + n) * row_bytes];
                dequant::dequantize_rows(qtype, src, out);
            },
            expert_done,
        );
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
            // Filled right after by the pool's threads, an expert each: pages they fault
            // in themselves rather than a serial zeroing of gigabytes here.
            data: AlignedBuf::with_len_mapped(bytes),
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

    /// Quantizes every expert into its panels, an expert per item of the kernels' pool (run
    /// in place when called from inside a pool job), then derives the INT4 fold.
    /// `rows_of(e, r0, out)` writes rows `r0..` of expert `e` in f32 (`out.len() / cols` of
    /// them, a panel); `expert_done` is called after each expert.
    fn pack_experts(
        &mut self,
        rows_of: &(dyn Fn(usize, usize, &mut [f32]) + Sync),
        expert_done: &(dyn Fn() + Sync),
    ) {
        let (format, rows, cols) = (self.format, self.rows, self.cols);
        let (dn, sn) = (self.expert_data_len(), self.expert_scales_len());
        let (pb, ps) = (format.panel_bytes(cols), format.panel_scales(cols));
        // Each item locks only its own expert's slices: no lock is ever contended.
        let scales: Vec<&mut [f16]> = if sn == 0 {
            (0..self.experts).map(|_| &mut [][..]).collect()
        } else {
            self.scales.chunks_mut(sn).collect()
        };
        let parts: Vec<Mutex<(&mut [u8], &mut [f16])>> = self
            .data
            .as_mut_slice()
            .chunks_mut(dn)
            .zip(scales)
            .map(Mutex::new)
            .collect();
        pool::global().for_each(parts.len(), &|e, _| {
            let mut part = parts[e].lock().unwrap_or_else(|p| p.into_inner());
            let (data, scales) = &mut *part;
            let mut w = vec![0f32; PANEL * cols];
            let mut scratch = PanelScratch::new(format, cols);
            for p in 0..rows / PANEL {
                rows_of(e, p * PANEL, &mut w);
                pack_panel(
                    format,
                    &w,
                    &mut data[p * pb..(p + 1) * pb],
                    &mut scales[p * ps..(p + 1) * ps],
                    &mut scratch,
                );
            }
            expert_done();
        });
        drop(parts);
        self.derive_fold();
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

/// Per-thread buffers of [`pack_panel`]: one row's integers, its group scales and group
/// magnitudes.
struct PanelScratch {
    q: Vec<i8>,
    row_scales: Vec<f16>,
    amax: Vec<f32>,
}

impl PanelScratch {
    fn new(format: RepackFormat, cols: usize) -> PanelScratch {
        let groups = format.group().map_or(0, |g| cols / g);
        PanelScratch {
            q: vec![0; cols],
            row_scales: vec![f16::ZERO; groups],
            amax: vec![0.0; groups],
        }
    }
}

/// Quantizes the [`PANEL`] rows of `w` (`PANEL x cols`, row-major) into one panel's bytes
/// and scales (`[group][16]`). INT4 rows get folded scales (`fold.rs`), the row scale set
/// by the best own scale of the group with the largest magnitude; per-group scales only
/// where no row scale is exact in f16.
fn pack_panel(
    format: RepackFormat,
    w: &[f32],
    panel: &mut [u8],
    scales: &mut [f16],
    t: &mut PanelScratch,
) {
    let cols = w.len() / PANEL;
    for (n, row) in w.chunks_exact(cols).enumerate() {
        let group = match format {
            RepackFormat::Bf16 => {
                write_bf16_row(row, n, panel);
                continue;
            }
            RepackFormat::Int8 { group } | RepackFormat::Int4 { group } => group,
        };
        let int4 = matches!(format, RepackFormat::Int4 { .. });
        for (a, x) in t.amax.iter_mut().zip(row.chunks_exact(group)) {
            *a = x.iter().fold(0f32, |m, v| m.max(v.abs()));
        }
        let folded = int4 && {
            let gmax = (0..t.amax.len()).fold(0, |b, g| if t.amax[g] > t.amax[b] { g } else { b });
            let own = quantize_int4_group(
                &row[gmax * group..(gmax + 1) * group],
                t.amax[gmax],
                &mut t.q[..group],
            );
            quantize_row_folded(
                row,
                group,
                &t.amax,
                own.to_f32().abs(),
                &mut t.row_scales,
                &mut t.q,
            )
        };
        if !folded {
            for (g, (src, dst)) in row
                .chunks_exact(group)
                .zip(t.q.chunks_exact_mut(group))
                .enumerate()
            {
                t.row_scales[g] = if int4 {
                    quantize_int4_group(src, t.amax[g], dst)
                } else {
                    quantize_int8_group(src, t.amax[g], dst)
                };
            }
        }
        for (g, &d) in t.row_scales.iter().enumerate() {
            scales[g * PANEL + n] = d;
        }
        if int4 {
            write_int4_row(&t.q, n, panel);
        } else {
            write_int8_row(&t.q, n, panel);
        }
    }
}

/// Row `n` of a BF16 panel: elements `2i`, `2i + 1` side by side at u16 `i * 32 + n * 2`
/// ([`locate`]).
fn write_bf16_row(row: &[f32], n: usize, panel: &mut [u8]) {
    for (i, pair) in row.chunks_exact(2).enumerate() {
        let at = 2 * (i * 32 + n * 2);
        for (j, &v) in pair.iter().enumerate() {
            let b = half::bf16::from_f32(v).to_bits().to_le_bytes();
            panel[at + 2 * j..at + 2 * j + 2].copy_from_slice(&b);
        }
    }
}

/// Row `n` of an INT8 panel: elements `4i..4i + 4` at bytes `i * 64 + n * 4..` ([`locate`]).
fn write_int8_row(q: &[i8], n: usize, panel: &mut [u8]) {
    for (i, four) in q.chunks_exact(4).enumerate() {
        let at = i * 64 + n * 4;
        for (o, &v) in panel[at..at + 4].iter_mut().zip(four) {
            *o = v as u8;
        }
    }
}

/// Row `n` of an INT4 panel: of the eight elements `8i..8i + 8`, the first four in the low
/// nibbles of bytes `i * 64 + n * 4..`, the last four in their high nibbles, each as
/// `q + 8` ([`locate`]).
fn write_int4_row(q: &[i8], n: usize, panel: &mut [u8]) {
    for (i, eight) in q.chunks_exact(8).enumerate() {
        let at = i * 64 + n * 4;
        for (j, o) in panel[at..at + 4].iter_mut().enumerate() {
            *o = (eight[j] + 8) as u8 | (((eight[4 + j] + 8) as u8) << 4);
        }
    }
}

/// Symmetric int8 in -127..=127 with `d = amax / 127` rounded to f16 (`amax`: the largest
/// magnitude of `src`); returns `d`.
fn quantize_int8_group(src: &[f32], amax: f32, dst: &mut [i8]) -> f16 {
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

/// Symmetric int4 in -8..=7: the f16 scale among `±amax / r` (r in [`INT4_DIVISORS`];
/// `amax` the largest magnitude of `src`) with the least squared error; returns it.
fn quantize_int4_group(src: &[f32], amax: f32, dst: &mut [i8]) -> f16 {
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
            let err = sq_err(src, df);
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
