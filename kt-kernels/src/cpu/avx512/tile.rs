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
//! A tile keeps its integer column sums in registers and its f32 partial sums in a stack
//! buffer, so a 2 x 8 tile (two rows share every activation load, eight pairs share the
//! weight rearrangement) fits, and partial sums survive from one K slice to the next.
//!
//! That is the GEMV path. From `UNPACK_MIN_TOKENS` tokens on [`gemm`] hands the
//! tile to [`super::unpacked`], which rearranges each weight row once per tile instead
//! of once per register tile, with the same arithmetic.

use std::arch::x86_64::*;
use std::mem::MaybeUninit;

use super::act::{self, PairGroup};
use crate::cpu::dispatch::GemmTile;
use crate::quant::QType;

/// Columns (32 elements each) of a group.
pub(super) const COLS: usize = 8;
/// From this many tokens on, unpacking the weights once per tile ([`super::unpacked`])
/// beats rearranging them in registers per token group (measured: 15% slower at 9
/// tokens, even at 16, ahead from 32).
const UNPACK_MIN_TOKENS: usize = 16;
/// Tokens per token group: up to 8 token pairs share one repacked activation slice.
pub(super) const TOKEN_GROUP: usize = 16;
/// Pair-group records in the stack scratch (56 KiB, about the L1 of the target Xeon: a
/// slice is re-read by every row of the tile). With the 32 KiB partial-sum buffer a
/// call uses 88 KiB of stack (the GEMM path, [`super::unpacked`], about 480 KiB),
/// inside a 2 MiB thread stack.
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
    /// Largest `RM * NP` register tile whose integer sums (twice as many when SPLIT)
    /// and row state fit the 32 zmm registers beside the chunk being multiplied.
    const MAX_TILE: usize;
    /// Largest `RM` (1, 2 or 4).
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

    /// The unsigned offset the quants are stored with (Q6_K's `q + 32`, the `w + 128`
    /// the Q8_0 weights are given here), or 0 for formats that subtract a minimum. The
    /// GEMM path ([`super::unpacked`]) removes it in the integer sums, which start at
    /// `-OFFSET * sum(a)`, instead of through the f32 correction `c_lo`/`c_hi`.
    const OFFSET: i32 = 0;

    /// Whether the GEMM path multiplies the 16-element scales into the unpacked weight
    /// bytes (Q2_K: `q * sc <= 45` fits a byte), so that a SPLIT format needs one
    /// integer sum per column there.
    const FOLD: bool = false;

    /// Only called when [`ColumnFormat::FOLD`]: the 16-bit factors of chunks 0..4 and
    /// 4..8 (lane `j`: the scale of column `j`'s first or last 16 elements, in both
    /// words), and the scales with `s_lo` the factor left to apply in f32.
    ///
    /// # Safety
    /// As [`ColumnFormat::load`].
    unsafe fn folded(_w: *const u8) -> (__m512i, __m512i, Scales) {
        unreachable!("only formats with FOLD fold their scales")
    }
}

/// Chunk `c` of a row held as chunk pairs (`row[i]` = `[chunk 2i | chunk 2i + 1]`, as
/// [`super::act::block_chunks`] makes them) in both halves: the small-block formats' `chunk`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")]
pub(super) fn chunk_of_pairs(row: &[__m512i; 4], c: usize) -> __m512i {
    let m = row[c / 2];
    if c.is_multiple_of(2) {
        _mm512_shuffle_i64x2::<0x44>(m, m)
    } else {
        _mm512_shuffle_i64x2::<0xEE>(m, m)
    }
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
    (
        _mm512_broadcastss_ps(dd),
        _mm512_broadcastss_ps(_mm_movehdup_ps(dd)),
    )
}

/// Converts the f16 at `p` to an f32 broadcast.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")]
pub(super) unsafe fn f16_one(p: *const u8) -> __m512 {
    // SAFETY: the caller guarantees 2 readable bytes at p.
    let bits = unsafe { p.cast::<u16>().read_unaligned() };
    _mm512_broadcastss_ps(_mm_cvtph_ps(_mm_cvtsi32_si128(bits as i32)))
}

/// Sums of the low and the high 8 lanes (the two tokens of a pair).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")]
pub(super) fn hsum_halves(v: __m512) -> (f32, f32) {
    // Within each 128-bit lane: swap 64-bit halves and add, swap neighbours and add;
    // then add neighbouring 128-bit lanes: lane 0 holds the low sum, lane 8 the high.
    let v = _mm512_add_ps(v, _mm512_permute_ps::<0x4E>(v));
    let v = _mm512_add_ps(v, _mm512_permute_ps::<0xB1>(v));
    let v = _mm512_add_ps(v, _mm512_shuffle_f32x4::<0xB1>(v, v));
    (
        _mm512_cvtss_f32(v),
        _mm_cvtss_f32(_mm512_extractf32x4_ps::<2>(v)),
    )
}

/// What one register tile computes: `RM` weight rows (the first at `w`) against `NP`
/// token pairs of repacked activations, over `groups` groups, added to `acc`.
struct KernelArgs {
    w: *const u8,
    w_stride: usize,
    /// Record of (group 0, pair 0) of this tile; pair `p` of group `g` is record
    /// `g * rec_stride + p`.
    acts: *const PairGroup,
    rec_stride: usize,
    groups: usize,
    valid_last: usize,
    /// Partial sums of (row 0, pair 0); row `r`, pair `p` at `r * acc_stride + p`.
    acc: *mut __m512,
    acc_stride: usize,
    /// Start the partial sums from zero (the first K slice) instead of reading them.
    init: bool,
    /// Prefetch the next row block's weights (GEMV: the weights stream from DRAM once).
    prefetch: bool,
}

/// Bytes ahead of the current row block that the GEMV path prefetches: the same group
/// of the rows `RM` further on, which the next register tile reads (into L1).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")]
pub(super) fn prefetch_group(p: *const u8, bytes: usize) {
    prefetch_lines::<_MM_HINT_T0>(p, bytes);
}

/// [`prefetch_group`] into L2 (`prefetcht1`): for rows further ahead, whose lines would
/// otherwise hold L1 fill buffers for longer than the next tile's.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")]
pub(super) fn prefetch_group_l2(p: *const u8, bytes: usize) {
    prefetch_lines::<_MM_HINT_T1>(p, bytes);
}

/// A prefetch with hint `HINT` of each line of `bytes` from `p`.
#[inline(always)]
fn prefetch_lines<const HINT: i32>(p: *const u8, bytes: usize) {
    let mut off = 0;
    while off < bytes {
        // A prefetch never faults, whatever the address; wrapping_add keeps the
        // pointer arithmetic defined past the end of the weights.
        // SAFETY: prefetch hints are SSE (baseline on x86_64) and touch no value.
        unsafe { _mm_prefetch::<HINT>(p.wrapping_add(off).cast()) };
        off += 64;
    }
}

/// One `RM x NP` register tile over a K slice: the integer column sums of each group
/// stay in registers, the f32 partial sums live in the caller's stack buffer (so the
/// tile can be as wide as the 32 registers allow and outlive a K slice).
///
/// # Safety
/// `args` describes readable weights (`RM` rows of `groups` groups), `groups *
/// rec_stride` initialised records and `RM x NP` partial sums (initialised unless
/// `init`); AVX512+VNNI.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")]
unsafe fn kernel<F: ColumnFormat, const RM: usize, const NP: usize>(args: &KernelArgs) {
    for g in 0..args.groups {
        let valid = if g + 1 == args.groups {
            args.valid_last
        } else {
            COLS
        };
        // SAFETY (whole loop body): group g of each of the RM rows lies inside the
        // weights, records g * rec_stride + p (p < NP) are initialised, and the partial
        // sums r * acc_stride + p belong to this tile (the caller's contract).
        unsafe {
            let wg = args.w.add(g * F::GROUP_BYTES);
            let ag = args.acts.add(g * args.rec_stride);
            if args.prefetch {
                for r in 0..RM {
                    prefetch_group(wg.wrapping_add((r + RM) * args.w_stride), F::GROUP_BYTES);
                }
            }
            let mut rows = [const { MaybeUninit::<F::Row>::uninit() }; RM];
            for (r, row) in rows.iter_mut().enumerate() {
                row.write(F::load(wg.add(r * args.w_stride), valid));
            }
            let mut lo = [[_mm512_setzero_si512(); NP]; RM];
            let mut hi = [[_mm512_setzero_si512(); NP]; RM];
            for c in 0..8 {
                let mut wv = [_mm512_setzero_si512(); RM];
                for r in 0..RM {
                    wv[r] = F::chunk(rows[r].assume_init_ref(), c);
                }
                for p in 0..NP {
                    let av = _mm512_load_si512((*ag.add(p)).chunks[c].as_ptr().cast());
                    for r in 0..RM {
                        if F::SPLIT && c >= 4 {
                            hi[r][p] = _mm512_dpbusd_epi32(hi[r][p], wv[r], av);
                        } else {
                            lo[r][p] = _mm512_dpbusd_epi32(lo[r][p], wv[r], av);
                        }
                    }
                }
            }
            let fresh = args.init && g == 0;
            for r in 0..RM {
                let s = F::scales(wg.add(r * args.w_stride), valid);
                for p in 0..NP {
                    let rec = &*ag.add(p);
                    let da = _mm512_load_ps(rec.da.as_ptr());
                    let slot = args.acc.add(r * args.acc_stride + p);
                    let mut a = if fresh { _mm512_setzero_ps() } else { *slot };
                    a = _mm512_fmadd_ps(_mm512_cvtepi32_ps(lo[r][p]), _mm512_mul_ps(s.s_lo, da), a);
                    if F::SPLIT {
                        a = _mm512_fmadd_ps(
                            _mm512_cvtepi32_ps(hi[r][p]),
                            _mm512_mul_ps(s.s_hi, da),
                            a,
                        );
                        a = _mm512_fnmadd_ps(s.c_lo, _mm512_load_ps(rec.flo.as_ptr()), a);
                        a = _mm512_fnmadd_ps(s.c_hi, _mm512_load_ps(rec.fhi.as_ptr()), a);
                    } else {
                        a = _mm512_fnmadd_ps(s.c_lo, _mm512_load_ps(rec.fa.as_ptr()), a);
                    }
                    *slot = a;
                }
            }
        }
    }
}

/// Calls `kernel::<F, rm, np>` for the runtime shape.
macro_rules! dispatch_shape {
    ($f:ty, $rm:expr, $np:expr, $args:expr, [$(($r:literal, $p:literal)),*]) => {
        match ($rm, $np) {
            $(($r, $p) => kernel::<$f, $r, $p>($args),)*
            (rm, np) => unreachable!("no {rm}x{np} register tile"),
        }
    };
}

/// Partial-sum vectors in the stack buffer: 64 rows x 8 token pairs (32 KiB).
const ACC_VECS: usize = 512;

/// Largest register tile rows `<= want` among the instantiated 1, 2, 4.
fn tile_rows(want: usize) -> usize {
    if want >= 4 {
        4
    } else if want >= 2 {
        2
    } else {
        1
    }
}

/// The table's `gemm` entry of a column format.
///
/// Order: token groups of up to 16 tokens; within one, passes of as many rows as the
/// partial-sum buffer holds; within a pass, K slices whose repacked activations fit the
/// scratch; within a slice, register tiles over rows x pairs. When all of K fits one
/// slice it is repacked once per token group.
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
    let gemv = tile.tokens <= crate::cpu::GEMV_MAX_TOKENS;
    if tile.tokens >= UNPACK_MIN_TOKENS {
        // SAFETY: forwarded contract; groups >= 1.
        unsafe { super::unpacked::gemm::<F>(tile, groups, valid_last) };
        return;
    }
    let mut scratch = MaybeUninit::<[PairGroup; SCRATCH_RECORDS]>::uninit();
    let recs = scratch.as_mut_ptr().cast::<PairGroup>();
    let mut accbuf = MaybeUninit::<[__m512; ACC_VECS]>::uninit();
    let acc = accbuf.as_mut_ptr().cast::<__m512>();
    let mut t0 = 0;
    while t0 < tile.tokens {
        let nt = TOKEN_GROUP.min(tile.tokens - t0);
        let np = nt.div_ceil(2);
        let slice = (SCRATCH_RECORDS / np).max(1);
        let np_max = np.min(8);
        let rm_max = tile_rows((F::MAX_TILE / np_max).clamp(1, F::MAX_RM));
        let pass_rows = ACC_VECS / np;
        // The slice now in the scratch (None: nothing repacked for this token group).
        let mut repacked: Option<usize> = None;
        let mut pr0 = 0;
        while pr0 < tile.rows {
            let pass = pass_rows.min(tile.rows - pr0);
            let mut g0 = 0;
            while g0 < groups {
                let gn = slice.min(groups - g0);
                if repacked != Some(g0) {
                    // SAFETY: tokens t0..t0+nt of the tile's activations are readable
                    // rows in the format's activation type (the caller's contract);
                    // gn * np <= SCRATCH_RECORDS records are written.
                    unsafe {
                        let a = tile.a.add(t0 * tile.a_stride);
                        act::repack(
                            F::ACT,
                            a,
                            tile.a_stride,
                            nt,
                            g0,
                            gn,
                            total_cols,
                            F::OFFSET,
                            recs,
                        )
                    }
                    repacked = Some(g0);
                }
                let last_slice = g0 + gn == groups;
                let mut r = 0;
                while r < pass {
                    let rm = tile_rows(rm_max.min(pass - r));
                    let mut p0 = 0;
                    while p0 < np {
                        let npk = np_max.min(np - p0);
                        let args = KernelArgs {
                            // SAFETY: row pr0 + r and group g0 are inside the weights.
                            w: unsafe {
                                tile.w.add((pr0 + r) * tile.w_stride + g0 * F::GROUP_BYTES)
                            },
                            w_stride: tile.w_stride,
                            // SAFETY: record p0 of the slice's first group was written.
                            acts: unsafe { recs.add(p0) },
                            rec_stride: np,
                            groups: gn,
                            valid_last: if last_slice { valid_last } else { COLS },
                            // SAFETY: (r, p0) is inside the pass's pass * np <= ACC_VECS
                            // partial sums.
                            acc: unsafe { acc.add(r * np + p0) },
                            acc_stride: np,
                            init: g0 == 0,
                            prefetch: gemv,
                        };
                        // SAFETY: the args describe rm rows and npk pairs inside the
                        // tile, the written scratch and the pass's partial sums.
                        unsafe {
                            dispatch_shape!(
                                F,
                                rm,
                                npk,
                                &args,
                                [
                                    (1, 1),
                                    (1, 2),
                                    (1, 3),
                                    (1, 4),
                                    (1, 5),
                                    (1, 6),
                                    (1, 7),
                                    (1, 8),
                                    (2, 1),
                                    (2, 2),
                                    (2, 3),
                                    (2, 4),
                                    (2, 5),
                                    (2, 6),
                                    (2, 7),
                                    (2, 8),
                                    (4, 1),
                                    (4, 2),
                                    (4, 3),
                                    (4, 4)
                                ]
                            )
                        };
                        p0 += npk;
                    }
                    r += rm;
                }
                g0 += gn;
            }
            for r in 0..pass {
                for p in 0..np {
                    // SAFETY: every (r, p) of the pass was written by the slices above.
                    let (s0, s1) = hsum_halves(unsafe { *acc.add(r * np + p) });
                    for (h, s) in [(0, s0), (1, s1)] {
                        let t = t0 + 2 * p + h;
                        if t < t0 + nt {
                            // SAFETY: token t and row pr0 + r are inside the output tile.
                            unsafe { *tile.out.add(t * tile.ldo + pr0 + r) = s };
                        }
                    }
                }
            }
            pr0 += pass;
        }
        t0 += nt;
    }
}
