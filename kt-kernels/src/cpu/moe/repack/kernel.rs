//! One GEMM tile over a repacked expert matrix and the choice of kernel.
//!
//! A [`Tile`] is `panels` 16-row panels of one expert against `tokens` activation rows
//! (quantized by `act.rs`): `out[t * ldo + 16 * p + n] = W[16 p + n, :] . a_t`. Three
//! kernels compute it:
//! - [`scalar`]: the reference. Integer dot per group, then `d_w * d_a * dot` summed over
//!   groups in f64 (BF16: products summed in f64); for per-token activations over folded
//!   INT4 weights (`fold.rs`) the prefill arithmetic instead: the row's integer dot
//!   `sum m * q * a`, times `d_n * d_a`, in f64. Never optimized.
//! - `vnni` (AVX512-VNNI, AVX512-BF16): few tokens (decode), and prefill without AMX.
//! - `cpu::amx::repack` (AMX `tdpbssd` / `tdpbf16ps`): prefill, chosen when an item has at
//!   least [`amx_min_tokens`] tokens and the ISA is AMX.

use std::ops::Range;

use half::f16;

use super::act::{act_scale, ActScales};
use super::format::{RepackFormat, PANEL};
use super::matrix::{int_weight, RepackedStack};
use crate::cpu::Isa;
use crate::error::{KtError, Result};

/// Tokens from which AMX beats the AVX512 kernel on one item. An AMX tile pass costs
/// the same for 1 and 16 rows; the AVX512 kernel is at its best on INT4 (the `q + 8`
/// nibbles are `vpdpbusd`'s u8 operand as stored) and weakest on BF16 (one
/// `vdpbf16ps` per 32 products). Measured on a 2-core Sapphire Rapids slice (one
/// thread, 256 x 2048 tile in cache, GOP/s AVX512 vs AMX): INT4-g64 at 4 tokens
/// 158 vs 165, at 8 tokens 159 vs 266; INT8-g64 at 1 token 83 vs 91, at 4 tokens 112
/// vs 290; BF16 at 1 token 21 vs 61.
pub fn amx_min_tokens(format: RepackFormat) -> usize {
    match format {
        RepackFormat::Int4 { .. } => 6,
        RepackFormat::Int8 { .. } => 2,
        RepackFormat::Bf16 => 1,
    }
}

/// How the activation rows of a call are scaled for `stack` when its busiest expert has
/// `busiest` positions: one scale per token when AMX items will run over folded INT4
/// weights (the folded kernel needs it; the other kernels read such rows as they read
/// per-group ones), else one per group (finer: decode and machines without AMX keep it).
pub fn act_scales(isa: Isa, stack: &RepackedStack, busiest: usize) -> ActScales {
    if isa >= Isa::Amx && stack.folded() && busiest >= amx_min_tokens(stack.format()) {
        ActScales::PerToken
    } else {
        ActScales::PerGroup
    }
}

/// How the AMX kernel prefetches an item's weight stream: `groups` scale groups ahead of
/// the one it multiplies (0: no software prefetch, the hardware prefetchers only), into
/// L1 (`prefetcht0`) or L2 (`prefetcht1`). A runtime choice because the best one depends
/// on the machine's memory system (how many misses a core keeps in flight, the loaded
/// latency); results never depend on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Prefetch {
    pub groups: usize,
    pub level: PrefetchLevel,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PrefetchLevel {
    L1,
    L2,
}

impl Default for Prefetch {
    /// Two groups ahead into L1 (4 KiB per panel pair at G = 128 INT4).
    fn default() -> Prefetch {
        Prefetch {
            groups: 2,
            level: PrefetchLevel::L1,
        }
    }
}

impl Prefetch {
    /// `none`, or `GROUPS:l1` / `GROUPS:l2` (e.g. `2:l1`).
    pub fn parse(s: &str) -> Result<Prefetch> {
        let bad = || KtError::Shape {
            op: "prefetch",
            detail: format!("{s:?}: expected none, or GROUPS:l1 / GROUPS:l2 with GROUPS in 1..=16"),
        };
        if s == "none" {
            return Ok(Prefetch {
                groups: 0,
                level: PrefetchLevel::L1,
            });
        }
        let (g, l) = s.split_once(':').ok_or_else(bad)?;
        let groups: usize = g.parse().map_err(|_| bad())?;
        let level = match l {
            "l1" => PrefetchLevel::L1,
            "l2" => PrefetchLevel::L2,
            _ => return Err(bad()),
        };
        if !(1..=16).contains(&groups) {
            return Err(bad());
        }
        Ok(Prefetch { groups, level })
    }
}

/// One tile of work, in raw pointers so pool threads can write disjoint outputs.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Tile {
    pub format: RepackFormat,
    /// Reduction length (columns of the weight matrix).
    pub k: usize,
    /// Data and scales of the tile's first panel; panel `p` is `p * panel_bytes(k)`
    /// bytes and `p * panel_scales(k)` scales further.
    pub w: *const u8,
    pub scales: *const f16,
    /// INT4 folded scales of the tile's first panel (row scales, `[panel][16]`; group
    /// multipliers, indexed as `scales`), when the stack has them.
    pub fold: Option<(*const f32, *const i8)>,
    pub panels: usize,
    /// Activation row `t` at `a + t * a_stride` (`act_row_bytes(k)` bytes each).
    pub a: *const u8,
    pub a_stride: usize,
    /// How the activation rows are scaled (per token: every group slot holds the row's
    /// scale).
    pub act: ActScales,
    pub tokens: usize,
    /// Rows readable from `a` (>= tokens). With 32 or more rows readable past a block's
    /// first token, AMX loads whole 16-row tiles and drops the extra rows' results
    /// instead of reconfiguring its tiles for a short block.
    pub a_rows: usize,
    pub out: *mut f32,
    pub ldo: usize,
    /// The AMX kernel's weight prefetch (the others ignore it).
    pub prefetch: Prefetch,
}

/// Which kernel computes a tile.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kernel {
    Scalar,
    Vnni,
    Amx,
}

impl Kernel {
    /// Ok when this machine can run the kernel on `format`.
    pub fn check(self, format: RepackFormat) -> Result<()> {
        match self {
            Kernel::Scalar => Ok(()),
            Kernel::Vnni => {
                Isa::Avx512.check()?;
                if format == RepackFormat::Bf16 && !Isa::Avx512.has_avx512_bf16() {
                    return Err(KtError::IsaUnavailable {
                        isa: "avx512",
                        reason: "the CPU lacks AVX512-BF16 (bf16 repacked layout)".into(),
                    });
                }
                Ok(())
            }
            Kernel::Amx => Isa::Amx.check(),
        }
    }

    /// The kernel for an item of `tokens` tokens under `isa`.
    pub fn pick(isa: Isa, format: RepackFormat, tokens: usize) -> Kernel {
        if isa >= Isa::Amx && tokens >= amx_min_tokens(format) {
            Kernel::Amx
        } else if isa >= Isa::Avx512 && (format != RepackFormat::Bf16 || isa.has_avx512_bf16()) {
            Kernel::Vnni
        } else {
            Kernel::Scalar
        }
    }

    /// Runs `t` with this kernel.
    ///
    /// # Safety
    /// The tile's pointers must be valid for its extents, no other thread may write its
    /// output meanwhile, and `self.check(t.format)` must have passed.
    pub(crate) unsafe fn run(self, t: &Tile) {
        match self {
            Kernel::Scalar => scalar(t),
            #[cfg(target_arch = "x86_64")]
            // SAFETY: forwarded from the caller (check passed).
            Kernel::Vnni => unsafe { super::vnni::gemm(t) },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: forwarded from the caller (check passed).
            Kernel::Amx => unsafe { crate::cpu::amx::repack::gemm(t) },
            #[cfg(not(target_arch = "x86_64"))]
            _ => scalar(t),
        }
    }
}

/// The reference kernel (see the module docs).
///
/// # Safety
/// As [`Kernel::run`].
pub(crate) unsafe fn scalar(t: &Tile) {
    let f = t.format;
    let (pb, ps) = (f.panel_bytes(t.k), f.panel_scales(t.k));
    let arow = f.act_row_bytes(t.k);
    let folded = t.fold.filter(|_| t.act == ActScales::PerToken);
    for p in 0..t.panels {
        // SAFETY: the caller guarantees the tile's panels, activation rows and outputs
        // (and the fold's row scales and multipliers, indexed as panels and scales).
        let (panel, scales, fold) = unsafe {
            (
                std::slice::from_raw_parts(t.w.add(p * pb), pb),
                std::slice::from_raw_parts(t.scales.add(p * ps), ps),
                folded.map(|(d, m)| {
                    (
                        std::slice::from_raw_parts(d.add(p * PANEL), PANEL),
                        std::slice::from_raw_parts(m.add(p * ps), ps),
                    )
                }),
            )
        };
        for tok in 0..t.tokens {
            // SAFETY: as above.
            let a = unsafe { std::slice::from_raw_parts(t.a.add(tok * t.a_stride), arow) };
            for n in 0..PANEL {
                let v = match fold {
                    Some((d, m)) => dot_folded(f, t.k, panel, d[n], m, n, a),
                    None => dot_reference(f, t.k, panel, scales, n, a),
                };
                // SAFETY: as above.
                unsafe { *t.out.add(tok * t.ldo + p * PANEL + n) = v as f32 };
            }
        }
    }
}

/// The prefill arithmetic of folded INT4 with a per-token activation row: the integer
/// dot of `m * q` with the row over all of K, scaled once by `d_n * d_a`, in f64.
fn dot_folded(
    f: RepackFormat,
    k: usize,
    panel: &[u8],
    d: f32,
    m: &[i8],
    n: usize,
    a: &[u8],
) -> f64 {
    let g = f.group().expect("folded weights are INT4");
    let idot: i64 = (0..k)
        .map(|c| {
            m[(c / g) * PANEL + n] as i64 * int_weight(f, panel, n, c) as i64 * a[c] as i8 as i64
        })
        .sum();
    idot as f64 * d as f64 * act_scale(a, k, 0) as f64
}

/// Row `n` of one panel against one quantized activation row, in f64.
fn dot_reference(
    f: RepackFormat,
    k: usize,
    panel: &[u8],
    scales: &[f16],
    n: usize,
    a: &[u8],
) -> f64 {
    match f.group() {
        None => (0..k)
            .map(|c| {
                let (b, _) = super::format::locate(f, n, c);
                let w =
                    half::bf16::from_bits(u16::from_le_bytes([panel[b], panel[b + 1]])).to_f32();
                let x =
                    half::bf16::from_bits(u16::from_le_bytes([a[2 * c], a[2 * c + 1]])).to_f32();
                w as f64 * x as f64
            })
            .sum(),
        Some(g) => (0..k / g)
            .map(|gi| {
                let idot: i64 = (gi * g..(gi + 1) * g)
                    .map(|c| int_weight(f, panel, n, c) as i64 * a[c] as i8 as i64)
                    .sum();
                idot as f64 * scales[gi * PANEL + n].to_f32() as f64 * act_scale(a, k, gi) as f64
            })
            .sum(),
    }
}

/// Safe entry for tests and tools: rows `rows` (whole panels) of expert `e` against the
/// first `tokens` activation rows of `act` (`act_row_bytes(cols)` bytes each; rows after
/// them are padding the AMX kernel may load whole tiles from) into
/// `out[tokens x rows.len()]`, with `kernel`. `scales` says how the rows were quantized
/// (per token: an error unless each INT row's group scales are equal).
#[allow(clippy::too_many_arguments)]
pub fn gemm(
    kernel: Kernel,
    stack: &RepackedStack,
    e: usize,
    rows: Range<usize>,
    act: &[u8],
    scales: ActScales,
    tokens: usize,
    out: &mut [f32],
) -> Result<()> {
    let f = stack.format();
    kernel.check(f)?;
    let bad = |detail: String| KtError::Shape {
        op: "repack::gemm",
        detail,
    };
    let k = stack.cols();
    if e >= stack.experts()
        || rows.start > rows.end
        || rows.end > stack.rows()
        || !rows.start.is_multiple_of(PANEL)
        || !rows.end.is_multiple_of(PANEL)
    {
        return Err(bad(format!(
            "expert {e} rows {rows:?} of {} x {} (whole 16-row panels)",
            stack.experts(),
            stack.rows()
        )));
    }
    let arow = f.act_row_bytes(k);
    if act.len() < tokens * arow
        || !act.len().is_multiple_of(arow)
        || out.len() != tokens * rows.len()
    {
        return Err(bad(format!(
            "{} activation bytes and {} outputs for {tokens} tokens x {} rows",
            act.len(),
            out.len(),
            rows.len()
        )));
    }
    if let (ActScales::PerToken, Some(g)) = (scales, f.group()) {
        if let Some(t) = (0..tokens).find(|&t| {
            let row = &act[t * arow..(t + 1) * arow];
            (1..k / g).any(|gi| act_scale(row, k, gi).to_bits() != act_scale(row, k, 0).to_bits())
        }) {
            return Err(bad(format!(
                "activation row {t} has different group scales: not a per-token row"
            )));
        }
    }
    if tokens == 0 || rows.is_empty() {
        return Ok(());
    }
    let p0 = rows.start / PANEL;
    let tile = Tile {
        format: f,
        k,
        w: stack.expert_data(e)[p0 * f.panel_bytes(k)..].as_ptr(),
        scales: stack.expert_scales(e)[p0 * f.panel_scales(k)..].as_ptr(),
        fold: stack.expert_fold(e).map(|(d, m)| {
            (
                d[rows.start..].as_ptr(),
                m[p0 * f.panel_scales(k)..].as_ptr(),
            )
        }),
        panels: rows.len() / PANEL,
        a: act.as_ptr(),
        a_stride: arow,
        act: scales,
        tokens,
        a_rows: act.len() / arow,
        out: out.as_mut_ptr(),
        ldo: rows.len(),
        prefetch: Prefetch::default(),
    };
    // SAFETY: the extents were checked above against the slices the pointers come from,
    // `out` is exclusively borrowed, and `kernel.check` passed.
    unsafe { kernel.run(&tile) };
    Ok(())
}
