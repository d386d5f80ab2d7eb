//! What the AMX GEMMs of the GGUF formats without a repack (BF16, Q8_0) share: blocks of
//! up to 32 tokens x 32 weight rows computed as four C tiles, the tile configuration of
//! such a block, and the 16 x 16 dword transpose that puts weight rows in the VNNI form
//! of a B tile.
//!
//! Tiles: 0..4 C (token half `i`, row half `j` at `2i + j`), 4 and 5 A (the activations
//! of the two token halves), 6 and 7 B (the weights of the two row halves). A partial
//! half gets tiles of fewer rows (tokens) or columns (weight rows); an empty second half
//! leaves its tiles unconfigured, and the kernels skip them.

use std::arch::x86_64::*;

use super::tiles::TileConfig;

/// Rows and tokens of a tile.
pub(super) const TILE: usize = 16;

/// Tokens and weight rows of each half of a block (the second may be 0).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) struct Shape {
    pub nt: [usize; 2],
    pub nr: [usize; 2],
}

impl Shape {
    /// The block at token `t0` of `tokens` and row `r0` of `rows`.
    pub fn at(t0: usize, tokens: usize, r0: usize, rows: usize) -> Shape {
        Shape {
            nt: halves(tokens - t0),
            nr: halves(rows - r0),
        }
    }

    pub fn two_token_halves(self) -> bool {
        self.nt[1] > 0
    }

    pub fn two_row_halves(self) -> bool {
        self.nr[1] > 0
    }

    /// The configuration for A tiles of `a_colsb` bytes per token (K / 4 dwords), so B
    /// tiles of `a_colsb / 4` lines; C and B have 4 bytes per weight row.
    pub fn config(self, a_colsb: usize) -> TileConfig {
        let mut c = TileConfig::new();
        for i in 0..2 {
            for j in 0..2 {
                if self.nt[i] > 0 && self.nr[j] > 0 {
                    c.set(2 * i + j, self.nt[i], 4 * self.nr[j]);
                }
            }
            if self.nt[i] > 0 {
                c.set(4 + i, self.nt[i], a_colsb);
            }
            if self.nr[i] > 0 {
                c.set(6 + i, a_colsb / 4, 4 * self.nr[i]);
            }
        }
        c
    }
}

/// Halves of a block of up to 32: `[min(n, 16), rest]`.
pub(super) fn halves(n: usize) -> [usize; 2] {
    let first = n.min(TILE);
    [first, (n - first).min(TILE)]
}

/// Transposes 16 rows of 16 dwords: `out[c]` dword `r` = `rows[r]` dword `c`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw")]
pub(super) fn transpose16(rows: &[__m512i; 16]) -> [__m512i; 16] {
    // Within each 128-bit lane L (dwords 4L..4L + 4 of each row): interleave dwords of
    // row pairs, then qwords of row quartets; u[4i + j] lane L is column 4L + j of rows
    // 4i..4i + 4.
    let mut t = [_mm512_setzero_si512(); 16];
    for m in 0..8 {
        t[2 * m] = _mm512_unpacklo_epi32(rows[2 * m], rows[2 * m + 1]);
        t[2 * m + 1] = _mm512_unpackhi_epi32(rows[2 * m], rows[2 * m + 1]);
    }
    let mut u = [_mm512_setzero_si512(); 16];
    for i in 0..4 {
        u[4 * i] = _mm512_unpacklo_epi64(t[4 * i], t[4 * i + 2]);
        u[4 * i + 1] = _mm512_unpackhi_epi64(t[4 * i], t[4 * i + 2]);
        u[4 * i + 2] = _mm512_unpacklo_epi64(t[4 * i + 1], t[4 * i + 3]);
        u[4 * i + 3] = _mm512_unpackhi_epi64(t[4 * i + 1], t[4 * i + 3]);
    }
    // Gather lane L of the four row quartets into output row 4L + j.
    let mut out = [_mm512_setzero_si512(); 16];
    for j in 0..4 {
        let v0 = _mm512_shuffle_i32x4::<0x88>(u[j], u[4 + j]);
        let v1 = _mm512_shuffle_i32x4::<0xDD>(u[j], u[4 + j]);
        let w0 = _mm512_shuffle_i32x4::<0x88>(u[8 + j], u[12 + j]);
        let w1 = _mm512_shuffle_i32x4::<0xDD>(u[8 + j], u[12 + j]);
        out[j] = _mm512_shuffle_i32x4::<0x88>(v0, w0);
        out[4 + j] = _mm512_shuffle_i32x4::<0x88>(v1, w1);
        out[8 + j] = _mm512_shuffle_i32x4::<0xDD>(v0, w0);
        out[12 + j] = _mm512_shuffle_i32x4::<0xDD>(v1, w1);
    }
    out
}
