//! Q8_K activation blocks of a token group in VNNI form for the B tiles, in the natural
//! element order (line `l` = elements `4l..4l + 4` of each token), and their 16-element
//! group sums: what the Q2_K, Q3_K and Q6_K step kernels share (their unpacked weights keep
//! the natural order too), and what the Q2_K and Q3_K kernels share: their one-C-tile
//! products and the shift and scale-pick constants of their 2-bit planes.

use std::arch::x86_64::*;

use super::blocks::transpose16;
use super::kquant::{QK_K, TG};
use super::tiles::{tile_dp_i8, tile_dp_u8i8, tile_load, tile_store, tile_zero};

/// Bytes of a Q8_K block: `d` (f32), 256 int8 quants, 16 int16 group sums.
const QS: usize = 4;
const BSUMS: usize = 4 + QK_K;

/// One token group's quants of one super-block, transposed.
#[repr(C, align(64))]
pub(super) struct Lines {
    /// Line `l`: dword `l` (elements `4l..4l + 4`) of each of the 16 tokens.
    pub q: [[i32; TG]; QK_K / 4],
    /// `da` per token (0 for the group's missing tokens).
    pub d: [f32; TG],
}

/// The 16 group sums of each token as int16 pairs: line `p` holds `(S_2p, S_2p+1)` of
/// every token (low, high half of its dword).
pub(super) type SumPairs = [[i32; TG]; QK_K / 32];

/// Transposes one super-block of `n` (1..=16) tokens' Q8_K rows (`a`, `stride` bytes
/// apart) into `dst`; missing tokens read as zero.
///
/// # Safety
/// `n` rows of a whole Q8_K block are readable at `a`; `dst` is writable.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq")]
pub(super) unsafe fn transpose_lines(a: *const u8, stride: usize, n: usize, dst: *mut Lines) {
    // SAFETY (whole body): rows tok < n of the block are readable (caller); `dst` is a
    // valid, 64-byte aligned record.
    unsafe {
        for quarter in 0..4 {
            let mut r = [_mm512_setzero_si512(); TG];
            for (tok, v) in r.iter_mut().enumerate().take(n) {
                *v = _mm512_loadu_si512(a.add(tok * stride + QS + 64 * quarter).cast());
            }
            let q = (*dst).q.as_mut_ptr().add(16 * quarter);
            for (i, v) in transpose16(&r).iter().enumerate() {
                _mm512_store_si512(q.add(i).cast(), *v);
            }
        }
        for (tok, d) in (*dst).d.iter_mut().enumerate() {
            *d = if tok < n {
                a.add(tok * stride).cast::<f32>().read_unaligned()
            } else {
                0.0
            };
        }
    }
}

/// Transposes the group sums of one super-block of `n` (1..=16) tokens (as
/// [`transpose_lines`]) into `dst`.
///
/// # Safety
/// As [`transpose_lines`].
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq")]
pub(super) unsafe fn transpose_sums(a: *const u8, stride: usize, n: usize, dst: *mut SumPairs) {
    // SAFETY (whole body): the masked loads read only the 32 sum bytes at 260..292 of
    // each block (masked-off lanes never fault); `dst` is valid.
    unsafe {
        let mut r = [_mm512_setzero_si512(); TG];
        for (tok, v) in r.iter_mut().enumerate().take(n) {
            *v = _mm512_maskz_loadu_epi32(0x00FF, a.add(tok * stride + BSUMS).cast());
        }
        let t = transpose16(&r);
        for (p, line) in (*dst).iter_mut().enumerate() {
            _mm512_storeu_si512(line.as_mut_ptr().cast(), t[p]);
        }
    }
}

/// The products of one row block's folded super-block with one token group's lines into
/// one C tile stored at `c`: A = 16 rows of 256 bytes at `a` (unsigned with `tdpbusd`, or
/// signed with `tdpbssd` when `SIGNED`), B = the 64 lines at `b`, four products of K = 64.
/// Uses tiles 0 (C), 2 and 3 (A) and 6 and 7 (B), configured by the caller.
///
/// # Safety
/// AMX is configured with those tiles; `a` holds 16 x 256 readable bytes (the configured
/// rows), `b` 64 lines of 64 bytes, `c` one writable 16 x 64-byte tile.
#[inline]
pub(super) unsafe fn one_tile_products<const SIGNED: bool>(a: *const u8, b: *const u8, c: *mut u8) {
    let (sa, sb) = (QK_K, 64usize);
    // SAFETY (whole body): every address is inside `a` (A rows of 256 bytes, 64 read from
    // 64 * step <= 192), `b` (16 lines of 64 bytes from line 16 * step) or `c` (the
    // caller's contract).
    unsafe {
        tile_zero!(0);
        // K steps alternate between two sets of A and B tiles, so a step's loads need not
        // wait for the previous step's product to release its tiles.
        for step in [0usize, 2] {
            tile_load!(2, a.add(64 * step), sa);
            tile_load!(6, b.add(1024 * step), sb);
            if SIGNED {
                tile_dp_i8!(0, 2, 6);
            } else {
                tile_dp_u8i8!(0, 2, 6);
            }
            tile_load!(3, a.add(64 * step + 64), sa);
            tile_load!(7, b.add(1024 * step + 1024), sb);
            if SIGNED {
                tile_dp_i8!(0, 3, 7);
            } else {
                tile_dp_u8i8!(0, 3, 7);
            }
        }
        tile_store!(0, c, 64usize);
    }
}

/// The 2-bit planes of a Q2_K / Q3_K quant half (its 32 `qs` bytes in both 256-bit halves):
/// plane `jp` shifts each 16-bit word right by `4jp` in bytes 0..32 and `4jp + 2` in bytes
/// 32..64, bringing bits `2j..2j + 2` (`j = 2jp`, then `2jp + 1`) down.
#[inline]
#[target_feature(enable = "avx512f,avx512bw")]
pub(super) fn crumb_plane_shifts() -> [__m512i; 2] {
    std::array::from_fn(|jp| {
        _mm512_inserti64x4::<1>(
            _mm512_set1_epi16(4 * jp as i16),
            _mm256_set1_epi16(4 * jp as i16 + 2),
        )
    })
}

/// `vpermw` indices of plane `m` (elements `64m..64m + 64`, 16-element groups `4m..4m + 4`):
/// word `i` takes the 16-bit scale of group `4m + i / 8`, so each 128-bit lane of a
/// plane's bytes sees its own group's scale.
#[inline]
#[target_feature(enable = "avx512f,avx512bw")]
pub(super) fn group_scale_picks() -> [__m512i; 4] {
    std::array::from_fn(|m| {
        let mut idx = [0i16; 32];
        for (i, x) in idx.iter_mut().enumerate() {
            *x = (4 * m + i / 8) as i16;
        }
        // SAFETY: a 64-byte read of a local array.
        unsafe { _mm512_loadu_si512(idx.as_ptr().cast()) }
    })
}
