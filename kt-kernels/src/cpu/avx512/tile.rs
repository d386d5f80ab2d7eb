//! The register-tile driver of the AVX512 integer kernels (K-quants and Q8_0), written
//! once for every format.
//!
//! # The column layout
//! The K dimension is cut into *groups* of 256 elements (one K-quant super-block, or
//! eight Q8_0 blocks), and each group into 8 *columns* of 32 consecutive elements (a
//! Q4_K/Q5_K sub-block, two Q2_K/Q6_K sub-blocks, or one Q8_0 block). A `vpdpbusd`
//! works on 16 int32 lanes of 4 bytes each; here lane `h * 8 + j` always holds bytes of
//! column `j` for token `h` of a *token pair*, and *chunk* `c` (0..8) holds bytes
//! `4c..4c + 4` of every column. Summing the 8 chunks therefore leaves each lane with the
//! exact integer dot of one column (or, for the 16-element-scale formats, of each half of
//! it in two sums), so the per-column scale is applied once per group in f32 instead of
//! once per 64 products, and one vector serves two tokens.
//!
//! Activations are repacked into that layout once per tile ([`super::act`]), together
//! with their scales and block sums; the weights are rearranged in registers by the
//! format's [`ColumnFormat::chunk`] (a cross-lane permute and a mask or shift).
//! Weights stored unsigned with an offset or a minimum (`q - 32`, `d*sc*q - dmin*m`,
//! Q8_0's `w + 128`) are corrected with the activations' per-column sums.
//!
//! # Tiling
//! [`gemm`] walks the [`GemmTile`] in token groups of up to [`TOKEN_GROUP`] tokens and
//! K slices that fit the stack scratch, and covers rows x token pairs with register tiles
//! `RM x NP` ([`kernel`], generic over both), the largest that fits what remains first.

use std::arch::x86_64::*;
use std::mem::MaybeUninit;

use super::act::{self, PairGroup};
use crate::cpu::dispatch::GemmTile;
use crate::quant::QType;

/// Columns (32 elements each) of a group.
pub(super) const COLS: usize = 8;
/// Tokens per token group: up to 8 token pairs share one repacked activation slice.
const TOKEN_GROUP: usize = 16;
/// Pair-group records in the stack scratch (48 KiB: fits L1 + L2 comfortably, and a
/// 2 MiB thread stack many times over).
const SCRATCH_RECORDS: usize = 64;

/// Per-column scales of one weight row and group, in f32, laid out like the lanes
/// (`h * 8 + j`, the same value in both halves).
#[derive(Clone, Copy)]
pub(super) struct Scales {
    /// Scale of column `j` (of its first 16 elements when [`ColumnFormat::SPLIT`]).
    pub s_lo: __m512,
    /// Scale of the second 16 elements of column `j` (only read when SPLIT).
    pub s_hi: __m512,
    /// Correction multiplying the activations' column sums (or first-half sums when
    /// SPLIT): `dmin * m`, `32 * scale`, `128 * d`.
    pub c_lo: __m512,
    /// Correction of the second-half sums (only read when SPLIT).
    pub c_hi: __m512,
}

/// A weight format computed through the column layout.
///
/// # Safety
/// Implementations may only read the `GROUP_BYTES` bytes of the group they are given
/// (fewer for a partial Q8_0 group: `valid` whole columns).
pub(super) unsafe trait ColumnFormat {
    /// The activation format (must equal the weight format's `vec_dot_type`).
    const ACT: QType;
    /// Scales per 16 elements: chunks 0..4 and 4..8 are summed separately.
    const SPLIT: bool;
    /// Weight bytes of a whole group.
    const GROUP_BYTES: usize;
    /// Largest `RM * NP` register tile that fits the 32 zmm registers.
    const MAX_TILE: usize;
    /// Largest `RM`.
    const MAX_RM: usize;
    /// What the chunk loop needs of one row's group (kept in registers).
    type Row: Copy;

    /// Loads the group at `w` (`valid` columns of it exist).
    ///
    /// # Safety
    /// `w` points at a group of a weight row with `valid` readable columns; AVX512+VNNI.
    unsafe fn load(w: *const u8, valid: usize) -> Self::Row;

    /// Chunk `c` (0..8) of the row, as unsigned bytes in the column layout, the same in
    /// both halves.
    ///
    /// # Safety
    /// The CPU has AVX512+VNNI.
    unsafe fn chunk(row: &Self::Row, c: usize) -> __m512i;

    /// The group's scales and corrections.
    ///
    /// # Safety
    /// As [`ColumnFormat::load`].
    unsafe fn scales(w: *const u8, valid: usize) -> Scales;
}

/// A constant vector of 16 int32 lanes.
pub(super) const fn v32(a: [i32; 16]) -> __m512i {
    // SAFETY: [i32; 16] and __m512i have the same size and every bit pattern is valid.
    unsafe { std::mem::transmute::<[i32; 16], __m512i>(a) }
}

/// A constant vector of 16 f32 lanes.
pub(super) const fn vps(a: [f32; 16]) -> __m512 {
    // SAFETY: as in v32.
    unsafe { std::mem::transmute::<[f32; 16], __m512>(a) }
}

/// Lane `h * 8 + j` = `f(j)`: the per-column constants of the layout.
pub(super) const fn per_column(f: [i32; 8]) -> __m512i {
    let mut a = [0i32; 16];
    let mut l = 0;
    while l < 16 {
        a[l] = f[l % 8];
        l += 1;
    }
    v32(a)
}

/// Per-column constants of every chunk: `f[c][j]`.
pub(super) const fn per_chunk_column(f: [[i32; 8]; 8]) -> [__m512i; 8] {
    let mut out = [v32([0; 16]); 8];
    let mut c = 0;
    while c < 8 {
        out[c] = per_column(f[c]);
        c += 1;
    }
    out
}

/// Lane `h * 8 + j` = `k(j)`: picks element `k(j)` of a 16-lane vector (for scales
/// stored per 16 elements: `2j` and `2j + 1`).
pub(super) const EVEN_LANES: __m512i = per_column([0, 2, 4, 6, 8, 10, 12, 14]);
pub(super) const ODD_LANES: __m512i = per_column([1, 3, 5, 7, 9, 11, 13, 15]);

/// Converts the two f16 at `p` (`d`, `dmin` of a K-quant) to f32 broadcasts.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")]
pub(super) unsafe fn f16_pair(p: *const u8) -> (__m512, __m512) {
    // SAFETY: the caller guarantees 4 readable bytes at p.
    let bits = unsafe { p.cast::<i32>().read_unaligned() };
    let dd = _mm_cvtph_ps(_mm_cvtsi32_si128(bits));
    (_mm512_broadcastss_ps(dd), _mm512_broadcastss_ps(_mm_movehdup_ps(dd)))
}

/// Converts the f16 at `p` to an f32 broadcast.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")]
pub(super) unsafe fn f16_one(p: *const u8) -> __m512 {
    // SAFETY: the caller guarantees 2 readable bytes at p.
    let bits = unsafe { p.cast::<u16>().read_unaligned() };
    _mm512_broadcastss_ps(_mm_cvtph_ps(_mm_cvtsi32_si128(bits as i32)))
}

/// Sums of the low and the high 8 lanes.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")]
fn hsum_halves(v: __m512) -> (f32, f32) {
    let lo = _mm512_castps512_ps256(v);
    let hi = _mm512_extractf32x8_ps::<1>(v);
    let a = _mm256_permute2f128_ps::<0x20>(lo, hi);
    let b = _mm256_permute2f128_ps::<0x31>(lo, hi);
    let s = _mm256_add_ps(a, b);
    let s = _mm256_hadd_ps(s, s);
    let s = _mm256_hadd_ps(s, s);
    (_mm256_cvtss_f32(s), _mm_cvtss_f32(_mm256_extractf128_ps::<1>(s)))
}

/// What one register tile computes: `RM` weight rows (the first at `w`) against `NP`
/// token pairs of repacked activations, over `groups` groups, into `out`.
struct KernelArgs {
    w: *const u8,
    w_stride: usize,
    /// Record of (group 0, pair 0) of this tile; pair `p` of group `g` is record
    /// `g * rec_stride + p`.
    acts: *const PairGroup,
    rec_stride: usize,
    groups: usize,
    valid_last: usize,
    /// Output of (row 0, token 0 of pair 0).
    out: *mut f32,
    ldo: usize,
    /// Real tokens of the NP pairs (the last pair may have one).
    tokens: usize,
    /// Add to the output (a later K slice) instead of writing it.
    accumulate: bool,
}

/// One `RM x NP` register tile over a K slice.
///
/// # Safety
/// `args` describes readable weights (`RM` rows of `groups` groups), `groups *
/// rec_stride` initialised records and writable outputs; AVX512+VNNI.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")]
unsafe fn kernel<F: ColumnFormat, const RM: usize, const NP: usize>(args: &KernelArgs) {
    let mut acc = [[_mm512_setzero_ps(); NP]; RM];
    for g in 0..args.groups {
        let valid = if g + 1 == args.groups { args.valid_last } else { COLS };
        // SAFETY (whole loop body): group g of each of the RM rows lies inside the
        // weights (the caller's contract), and records g * rec_stride + p, p < NP, are
        // initialised records of the scratch.
        unsafe {
            let wg = args.w.add(g * F::GROUP_BYTES);
            let ag = args.acts.add(g * args.rec_stride);
            let mut rows = [const { MaybeUninit::<F::Row>::uninit() }; RM];
            for (r, row) in rows.iter_mut().enumerate() {
                row.write(F::load(wg.add(r * args.w_stride), valid));
            }
            let mut lo = [[_mm512_setzero_si512(); NP]; RM];
            let mut hi = [[_mm512_setzero_si512(); NP]; RM];
            for c in 0..8 {
                for r in 0..RM {
                    let wv = F::chunk(rows[r].assume_init_ref(), c);
                    for p in 0..NP {
                        let av = _mm512_load_si512((*ag.add(p)).chunks[c].as_ptr().cast());
                        if F::SPLIT && c >= 4 {
                            hi[r][p] = _mm512_dpbusd_epi32(hi[r][p], wv, av);
                        } else {
                            lo[r][p] = _mm512_dpbusd_epi32(lo[r][p], wv, av);
                        }
                    }
                }
            }
            for r in 0..RM {
                let s = F::scales(wg.add(r * args.w_stride), valid);
                for p in 0..NP {
                    let rec = &*ag.add(p);
                    let da = _mm512_load_ps(rec.da.as_ptr());
                    let a = &mut acc[r][p];
                    *a = _mm512_fmadd_ps(_mm512_cvtepi32_ps(lo[r][p]), _mm512_mul_ps(s.s_lo, da), *a);
                    if F::SPLIT {
                        *a = _mm512_fmadd_ps(_mm512_cvtepi32_ps(hi[r][p]), _mm512_mul_ps(s.s_hi, da), *a);
                        *a = _mm512_fnmadd_ps(s.c_lo, _mm512_load_ps(rec.flo.as_ptr()), *a);
                        *a = _mm512_fnmadd_ps(s.c_hi, _mm512_load_ps(rec.fhi.as_ptr()), *a);
                    } else {
                        *a = _mm512_fnmadd_ps(s.c_lo, _mm512_load_ps(rec.fa.as_ptr()), *a);
                    }
                }
            }
        }
    }
    for (r, acc_r) in acc.iter().enumerate() {
        for (p, &a) in acc_r.iter().enumerate() {
            let (s0, s1) = hsum_halves(a);
            for (h, s) in [(0, s0), (1, s1)] {
                let t = 2 * p + h;
                if t < args.tokens {
                    // SAFETY: token t < tokens and row r < RM are inside the caller's
                    // output tile, written by this call only.
                    unsafe {
                        let o = args.out.add(t * args.ldo + r);
                        *o = if args.accumulate { *o + s } else { s };
                    }
                }
            }
        }
    }
}

/// Calls `kernel::<F, rm, np>` for the runtime shape (every shape with `rm <= 4`,
/// `np <= 8`, `rm * np <= 8` is instantiated).
macro_rules! dispatch_shape {
    ($f:ty, $rm:expr, $np:expr, $args:expr, [$(($r:literal, $p:literal)),*]) => {
        match ($rm, $np) {
            $(($r, $p) => kernel::<$f, $r, $p>($args),)*
            (rm, np) => unreachable!("no {rm}x{np} register tile"),
        }
    };
}

/// The table's `gemm` entry of a column format.
///
/// # Safety
/// See [`crate::cpu::dispatch::GemmFn`]; `tile.qtype` is the format `F` implements.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")]
pub(super) unsafe fn gemm<F: ColumnFormat>(tile: &GemmTile) {
    let total_cols = tile.k / 32;
    let groups = total_cols.div_ceil(COLS);
    if groups == 0 {
        for t in 0..tile.tokens {
            for r in 0..tile.rows {
                // SAFETY: inside the output tile the caller gave us.
                unsafe { *tile.out.add(t * tile.ldo + r) = 0.0 };
            }
        }
        return;
    }
    let valid_last = total_cols - (groups - 1) * COLS;
    let mut scratch = MaybeUninit::<[PairGroup; SCRATCH_RECORDS]>::uninit();
    let recs = scratch.as_mut_ptr().cast::<PairGroup>();
    let mut t0 = 0;
    while t0 < tile.tokens {
        let nt = TOKEN_GROUP.min(tile.tokens - t0);
        let np = nt.div_ceil(2);
        let slice = (SCRATCH_RECORDS / np).max(1);
        let np_max = np.min(8).min(F::MAX_TILE);
        let rm_max = (F::MAX_TILE / np_max).clamp(1, F::MAX_RM);
        let mut g0 = 0;
        while g0 < groups {
            let gn = slice.min(groups - g0);
            // SAFETY: tokens t0..t0+nt of the tile's activations are readable rows in
            // the format's activation type (the caller's contract); gn * np <=
            // SCRATCH_RECORDS records are written.
            unsafe {
                let a = tile.a.add(t0 * tile.a_stride);
                match F::ACT {
                    QType::Q8_K => act::repack_q8_k(a, tile.a_stride, nt, g0, gn, recs),
                    QType::Q8_0 => act::repack_q8_0(a, tile.a_stride, nt, g0, gn, total_cols, recs),
                    other => unreachable!("{other} activations have no column layout"),
                }
            }
            let last_slice = g0 + gn == groups;
            let mut r0 = 0;
            while r0 < tile.rows {
                let rm = rm_max.min(tile.rows - r0);
                let mut p0 = 0;
                while p0 < np {
                    let npk = np_max.min(np - p0);
                    let args = KernelArgs {
                        // SAFETY: row r0 and group g0 are inside the tile's weights.
                        w: unsafe { tile.w.add(r0 * tile.w_stride + g0 * F::GROUP_BYTES) },
                        w_stride: tile.w_stride,
                        // SAFETY: record p0 of the slice's first group was written.
                        acts: unsafe { recs.add(p0) },
                        rec_stride: np,
                        groups: gn,
                        valid_last: if last_slice { valid_last } else { COLS },
                        // SAFETY: token t0 + 2 p0 and row r0 are inside the output tile.
                        out: unsafe { tile.out.add((t0 + 2 * p0) * tile.ldo + r0) },
                        ldo: tile.ldo,
                        tokens: (nt - 2 * p0).min(2 * npk),
                        accumulate: g0 > 0,
                    };
                    // SAFETY: the args describe rm rows and npk pairs inside the tile
                    // and the written scratch (see above).
                    unsafe {
                        dispatch_shape!(F, rm, npk, &args, [
                            (1, 1), (1, 2), (1, 3), (1, 4), (1, 5), (1, 6), (1, 7), (1, 8),
                            (2, 1), (2, 2), (2, 3), (2, 4),
                            (3, 1), (3, 2),
                            (4, 1), (4, 2)
                        ])
                    };
                    p0 += npk;
                }
                r0 += rm;
            }
            g0 += gn;
        }
        t0 += nt;
    }
}
