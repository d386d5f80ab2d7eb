//! The repacked weight formats and their byte layout.
//!
//! A matrix of `rows x cols` (outputs x reduction) is cut into *panels* of 16 output
//! rows. Inside a panel the reduction dimension is grouped so that one 64-byte line holds
//! 16 outputs x (4 int8 | 2 bf16) consecutive reduction elements: exactly an AMX B-tile
//! row (VNNI form) and exactly the weight operand of one AVX512 `vpdpbusd`/`vdpbf16ps`.
//!
//! - INT8 (group G): byte `(k/4)*64 + n*4 + k%4` of the panel is `w[n][k]`, a signed int8
//!   in -127..=127 (never -128: the VNNI kernel negates weights). Symmetric, one f16 scale
//!   per 16-output panel row per group of G reduction elements.
//! - INT4 (group G): two consecutive 64-byte INT8 lines `2i`, `2i+1` share one 64-byte
//!   line `i`: low nibble from line `2i`, high nibble from `2i+1`, each stored as `q + 8`
//!   (0..=15) for `q` in -8..=7; byte `(k/8)*64 + n*4 + k%4`, nibble `(k/4)%2`. Scales as
//!   for INT8; the repacker picks each row's scales as one row scale times small integers
//!   (`fold.rs`), which the AMX prefill kernel folds into the weight bytes.
//! - BF16: element `(k/2)*32 + n*2 + k%2` (u16) of the panel; no scales.
//!
//! Scales of one expert are `[panel][group][16]` f16. Groups never straddle a 64-byte
//! line (G is a multiple of 32), so a group's data is a contiguous run of lines: one or
//! two AMX tile loads.

use crate::error::{KtError, Result};

/// Output rows per panel (one AMX tile's columns, one zmm of i32/f32 lanes).
pub const PANEL: usize = 16;
/// The group sizes the layouts accept: multiples of the 32-element INT4 line pair and at
/// most two 64-element AMX K-steps.
pub const GROUPS: [usize; 3] = [32, 64, 128];

/// A repacked weight format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RepackFormat {
    /// Symmetric int8, one f16 scale per group of `group` reduction elements.
    Int8 { group: usize },
    /// Symmetric int4 (-8..=7), one f16 scale per group of `group` reduction elements.
    Int4 { group: usize },
    /// bfloat16, round to nearest even.
    Bf16,
}

fn bad(detail: String) -> KtError {
    KtError::Shape {
        op: "repack",
        detail,
    }
}

impl RepackFormat {
    /// `int8`, `int4` (with `group`) or `bf16` (group ignored).
    pub fn parse(name: &str, group: usize) -> Result<RepackFormat> {
        let f = match name {
            "int8" => RepackFormat::Int8 { group },
            "int4" => RepackFormat::Int4 { group },
            "bf16" => RepackFormat::Bf16,
            other => {
                return Err(bad(format!(
                    "unknown repacked format {other:?}: int8, int4 or bf16"
                )))
            }
        };
        f.check_group()?;
        Ok(f)
    }

    fn check_group(self) -> Result<()> {
        match self.group() {
            Some(g) if !GROUPS.contains(&g) => Err(bad(format!(
                "group size {g}: the repacked layouts take {GROUPS:?}"
            ))),
            _ => Ok(()),
        }
    }

    pub fn name(self) -> String {
        match self {
            RepackFormat::Int8 { group } => format!("int8-g{group}"),
            RepackFormat::Int4 { group } => format!("int4-g{group}"),
            RepackFormat::Bf16 => "bf16".into(),
        }
    }

    /// The scale group, `None` for BF16.
    pub fn group(self) -> Option<usize> {
        match self {
            RepackFormat::Int8 { group } | RepackFormat::Int4 { group } => Some(group),
            RepackFormat::Bf16 => None,
        }
    }

    /// Storage per weight, scales included.
    pub fn bits_per_weight(self) -> f64 {
        match self {
            RepackFormat::Int8 { group } => 8.0 + 16.0 / group as f64,
            RepackFormat::Int4 { group } => 4.0 + 16.0 / group as f64,
            RepackFormat::Bf16 => 16.0,
        }
    }

    /// Ok when a `rows x cols` matrix fits the layout: whole panels, whole groups (and
    /// whole 32-element AMX BF16 K-steps).
    pub fn check(self, rows: usize, cols: usize) -> Result<()> {
        self.check_group()?;
        if rows == 0 || cols == 0 || !rows.is_multiple_of(PANEL) {
            return Err(bad(format!(
                "{rows} rows: {} needs a positive multiple of {PANEL}",
                self.name()
            )));
        }
        let unit = self.group().unwrap_or(32);
        if !cols.is_multiple_of(unit) {
            return Err(bad(format!(
                "{cols} columns: {} needs a multiple of {unit}",
                self.name()
            )));
        }
        Ok(())
    }

    /// Data bytes of one 16-row panel of `cols` columns.
    pub fn panel_bytes(self, cols: usize) -> usize {
        match self {
            RepackFormat::Int8 { .. } => PANEL * cols,
            RepackFormat::Int4 { .. } => PANEL * cols / 2,
            RepackFormat::Bf16 => PANEL * cols * 2,
        }
    }

    /// Scales of one panel of `cols` columns.
    pub fn panel_scales(self, cols: usize) -> usize {
        self.group().map_or(0, |g| PANEL * cols / g)
    }

    /// Bytes of one activation row of `cols` elements in this format's activation type:
    /// int8 values then one f32 scale per group (INT8/INT4), or bf16 values (BF16).
    pub fn act_row_bytes(self, cols: usize) -> usize {
        match self.group() {
            Some(g) => cols + 4 * (cols / g),
            None => 2 * cols,
        }
    }
}

/// Where weight `(n, k)` of a panel lives: byte offset and, for INT4, the nibble (0 low).
/// The single definition of the layout; the repacker and the reference read through it.
pub fn locate(format: RepackFormat, n: usize, k: usize) -> (usize, usize) {
    match format {
        RepackFormat::Int8 { .. } => ((k / 4) * 64 + n * 4 + k % 4, 0),
        RepackFormat::Int4 { .. } => ((k / 8) * 64 + n * 4 + k % 4, (k / 4) % 2),
        RepackFormat::Bf16 => (2 * ((k / 2) * 32 + n * 2 + k % 2), 0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_is_a_bijection_onto_the_panel() {
        for f in [
            RepackFormat::Int8 { group: 32 },
            RepackFormat::Int4 { group: 64 },
            RepackFormat::Bf16,
        ] {
            let cols = 128;
            let unit = if f == RepackFormat::Bf16 { 2 } else { 1 };
            let mut hit = vec![0u8; f.panel_bytes(cols) * 2];
            for n in 0..PANEL {
                for k in 0..cols {
                    let (b, nib) = locate(f, n, k);
                    for u in 0..unit {
                        hit[(b + u) * 2 + nib] += 1;
                    }
                }
            }
            let per_byte = if matches!(f, RepackFormat::Int4 { .. }) {
                2
            } else {
                1
            };
            for (i, &h) in hit.iter().enumerate() {
                assert_eq!(
                    h,
                    u8::from(i % 2 < per_byte),
                    "{f:?} byte {} nibble {}",
                    i / 2,
                    i % 2
                );
            }
        }
    }

    #[test]
    fn bad_shapes_and_groups_are_errors() {
        assert!(RepackFormat::parse("int4", 48).is_err());
        assert!(RepackFormat::parse("int5", 64).is_err());
        assert!(RepackFormat::Int8 { group: 64 }.check(24, 128).is_err());
        assert!(RepackFormat::Int8 { group: 64 }.check(32, 96).is_err());
        assert!(RepackFormat::Bf16.check(32, 48).is_err());
        assert!(RepackFormat::Int4 { group: 128 }.check(32, 1408).is_ok());
        assert_eq!(RepackFormat::Int4 { group: 64 }.bits_per_weight(), 4.25);
    }
}
