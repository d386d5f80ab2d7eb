//! The GEMM path (from `UNPACK_MIN_TOKENS` = 16 tokens) of the column-layout formats:
//! weights unpacked once, then a pure `vpdpbusd` register tile over every token.
//!
//! In the GEMV path ([`super::tile::gemm`]) each register tile rearranges its weight
//! rows into the column layout itself (a permute and a mask per chunk) and computes
//! the rows' scales, because every weight byte is used by at most 8 tokens anyway. With
//! many tokens that work would be repeated for every token group and would compete with
//! `vpdpbusd` for the same vector ports. Here a block of up to [`UNPACK_ROWS`] weight rows
//! is unpacked once into a per-thread scratch ([`RowGroup`] per row and group: the 8
//! chunks as the 32 bytes shared by both token halves, and the f32 scales and
//! corrections), and the register tiles over all token groups only load from it: one
//! broadcast load per row and chunk, one activation load per pair and chunk, `RM * NP`
//! `vpdpbusd`, and per row, pair and group the f32 epilogue of the column layout.

use std::arch::x86_64::*;
use std::mem::MaybeUninit;
use std::ptr::addr_of_mut;

use super::act::{self, PairGroup};
use super::tile::{ColumnFormat, COLS, TOKEN_GROUP};
use crate::cpu::dispatch::GemmTile;

/// Weight rows unpacked at a time (each unpacked row is shared by the tile's tokens,
/// each repacked activation slice by these rows).
pub(super) const UNPACK_ROWS: usize = 128;
/// Groups (of 256 elements) unpacked at a time: 128 rows x 8 groups are 384 KiB of stack
/// scratch, in L2 while every token group passes over them. A fixed stack buffer keeps
/// the kernel free of allocations (the MoE path must not allocate); a longer K is
/// done in chunks whose sums are added into the output.
const UNPACK_GROUPS: usize = 8;

/// Activation records per K slice (28 KiB: with the tile's unpacked weights they stay in
/// the 48 KiB L1 while every row tile passes over them).
const SLICE_RECORDS: usize = 32;
/// Partial-sum vectors of one row block and token group (64 KiB of stack).
const ACC_SUMS: usize = UNPACK_ROWS * TOKEN_GROUP / 2;

/// One weight row's group in the column layout, ready for the register tile.
#[repr(C, align(64))]
pub(super) struct RowGroup {
    /// Chunk `c`, lanes `j` (0..8): bytes `4c..4c + 4` of column `j` (the same for both
    /// tokens of a pair: loaded with a 256-bit broadcast).
    chunks: [[u8; 32]; 8],
    /// The low halves (lanes 0..8) of [`super::tile::Scales`].
    s_lo: [f32; 8],
    s_hi: [f32; 8],
    c_lo: [f32; 8],
    c_hi: [f32; 8],
}

/// Unpacks `rows` weight rows (`w`, `w_stride` bytes apart) of `groups` groups into
/// `dst`: row `r`, group `g` at `dst[r * groups + g]`.
///
/// # Safety
/// The rows are readable weights of `groups` groups (the last with `valid_last`
/// columns); `dst` is valid for `rows * groups` writes; AVX512+VNNI.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")]
unsafe fn unpack<F: ColumnFormat>(
    w: *const u8,
    w_stride: usize,
    rows: usize,
    groups: usize,
    valid_last: usize,
    dst: *mut RowGroup,
) {
    for r in 0..rows {
        for g in 0..groups {
            let valid = if g + 1 == groups { valid_last } else { COLS };
            // SAFETY: group g of row r is inside the weights and dst[r * groups + g] is
            // inside dst (the caller's contract); RowGroup is 64-byte aligned, so each
            // 32-byte field is 32-byte aligned.
            unsafe {
                let wg = w.add(r * w_stride + g * F::GROUP_BYTES);
                let out = dst.add(r * groups + g);
                let row = F::load(wg, valid);
                let (fold_lo, fold_hi, s) = if F::FOLD {
                    F::folded(wg)
                } else {
                    let one = _mm512_set1_epi16(1);
                    (one, one, F::scales(wg, valid))
                };
                let chunks = addr_of_mut!((*out).chunks).cast::<[u8; 32]>();
                for c in 0..8 {
                    let mut v = F::chunk(&row, c);
                    if F::FOLD {
                        v = _mm512_mullo_epi16(v, if c < 4 { fold_lo } else { fold_hi });
                    }
                    _mm256_store_si256(chunks.add(c).cast(), _mm512_castsi512_si256(v));
                }
                _mm256_store_ps(
                    addr_of_mut!((*out).s_lo).cast(),
                    _mm512_castps512_ps256(s.s_lo),
                );
                _mm256_store_ps(
                    addr_of_mut!((*out).s_hi).cast(),
                    _mm512_castps512_ps256(s.s_hi),
                );
                _mm256_store_ps(
                    addr_of_mut!((*out).c_lo).cast(),
                    _mm512_castps512_ps256(s.c_lo),
                );
                _mm256_store_ps(
                    addr_of_mut!((*out).c_hi).cast(),
                    _mm512_castps512_ps256(s.c_hi),
                );
            }
        }
    }
}

/// What one register tile computes: `RM` unpacked rows against `NP` token pairs over
/// `groups` groups, added to the partial sums at `acc`.
struct TileArgs {
    /// (row 0, first group) of the tile; row `r`, group `g` at `w + r * w_row + g`.
    w: *const RowGroup,
    w_row: usize,
    /// Record of (first group, pair 0); pair `p` of group `g` at `g * rec_stride + p`.
    acts: *const PairGroup,
    rec_stride: usize,
    groups: usize,
    /// Partial sums of (row 0, pair 0); row `r`, pair `p` at `r * acc_stride + p`.
    acc: *mut __m512,
    acc_stride: usize,
    /// Start the partial sums from zero (the first K slice) instead of reading them.
    init: bool,
}

/// Broadcasts 8 f32 (32-byte aligned) to both halves.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")]
unsafe fn bcast8(p: *const [f32; 8]) -> __m512 {
    // SAFETY: the caller passes a field of a live RowGroup.
    _mm512_broadcast_f32x8(unsafe { _mm256_load_ps(p.cast()) })
}

/// One `RM x NP` register tile over unpacked weights (see [`super::tile`] for the
/// arithmetic of the column layout; this is the same sum in the same order).
///
/// # Safety
/// `args` describes `RM` rows of `groups` unpacked groups, `groups * rec_stride`
/// initialised records and `RM x NP` partial sums (initialised unless `init`);
/// AVX512+VNNI.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")]
unsafe fn kernel<F: ColumnFormat, const RM: usize, const NP: usize>(args: &TileArgs) {
    for g in 0..args.groups {
        // SAFETY (whole loop body): groups g of the RM rows and records g * rec_stride
        // + p (p < NP) are initialised, and the partial sums belong to this tile (the
        // caller's contract).
        unsafe {
            let ag = args.acts.add(g * args.rec_stride);
            let mut wg = [std::ptr::null::<RowGroup>(); RM];
            for (r, p) in wg.iter_mut().enumerate() {
                *p = args.w.add(r * args.w_row + g);
            }
            let mut lo = [[_mm512_setzero_si512(); NP]; RM];
            let mut hi = [[_mm512_setzero_si512(); NP]; RM];
            if F::OFFSET != 0 {
                for p in 0..NP {
                    let rec = &*ag.add(p);
                    let (ol, oh) = (
                        _mm512_load_si512(rec.off_lo.as_ptr().cast()),
                        _mm512_load_si512(rec.off_hi.as_ptr().cast()),
                    );
                    for r in 0..RM {
                        lo[r][p] = ol;
                        if split::<F>() {
                            hi[r][p] = oh;
                        }
                    }
                }
            }
            for c in 0..8 {
                let mut wv = [_mm512_setzero_si512(); RM];
                for r in 0..RM {
                    wv[r] = _mm512_broadcast_i64x4(_mm256_load_si256(
                        (*wg[r]).chunks[c].as_ptr().cast(),
                    ));
                }
                for p in 0..NP {
                    let av = _mm512_load_si512((*ag.add(p)).chunks[c].as_ptr().cast());
                    for r in 0..RM {
                        if split::<F>() && c >= 4 {
                            hi[r][p] = _mm512_dpbusd_epi32(hi[r][p], wv[r], av);
                        } else {
                            lo[r][p] = _mm512_dpbusd_epi32(lo[r][p], wv[r], av);
                        }
                    }
                }
            }
            let fresh = args.init && g == 0;
            // The rows' scales once, then each pair's activation scales once for all
            // rows: the loads, not the arithmetic, are what this loop runs short of.
            let zero = _mm512_setzero_ps();
            let mut sc = [[zero; 4]; RM];
            for (r, sc) in sc.iter_mut().enumerate() {
                let u = wg[r];
                sc[0] = bcast8(&(*u).s_lo);
                sc[1] = if split::<F>() {
                    bcast8(&(*u).s_hi)
                } else {
                    zero
                };
                sc[2] = if F::OFFSET == 0 {
                    bcast8(&(*u).c_lo)
                } else {
                    zero
                };
                sc[3] = if F::OFFSET == 0 && F::SPLIT {
                    bcast8(&(*u).c_hi)
                } else {
                    zero
                };
            }
            for p in 0..NP {
                let rec = &*ag.add(p);
                let da = _mm512_load_ps(rec.da.as_ptr());
                let (f0, f1) = match (F::OFFSET == 0, F::SPLIT) {
                    (false, _) => (zero, zero),
                    (true, false) => (_mm512_load_ps(rec.fa.as_ptr()), zero),
                    (true, true) => (
                        _mm512_load_ps(rec.flo.as_ptr()),
                        _mm512_load_ps(rec.fhi.as_ptr()),
                    ),
                };
                for r in 0..RM {
                    let slot = args.acc.add(r * args.acc_stride + p);
                    let mut a = if fresh { zero } else { *slot };
                    a = _mm512_fmadd_ps(
                        _mm512_cvtepi32_ps(lo[r][p]),
                        _mm512_mul_ps(sc[r][0], da),
                        a,
                    );
                    if split::<F>() {
                        a = _mm512_fmadd_ps(
                            _mm512_cvtepi32_ps(hi[r][p]),
                            _mm512_mul_ps(sc[r][1], da),
                            a,
                        );
                    }
                    if F::OFFSET == 0 {
                        a = _mm512_fnmadd_ps(sc[r][2], f0, a);
                        if F::SPLIT {
                            a = _mm512_fnmadd_ps(sc[r][3], f1, a);
                        }
                    }
                    *slot = a;
                }
            }
        }
    }
}

/// Sums the 8 column lanes of each token half of 16 partial-sum vectors (row `i`'s is
/// `v(i)`):
/// returns, per token `h`, the 16 rows' sums in row order, ready for one store.
/// A transposing tree: each level adds neighbouring lanes while interleaving rows, so
/// 16 vectors take 44 shuffles and adds instead of a horizontal sum each.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")]
fn reduce16(v: impl Fn(usize) -> __m512) -> [__m512; 2] {
    // Within each 128-bit lane k (token k / 2, columns 4(k % 2)..+4): pairs of
    // neighbouring columns, rows a and b interleaved: [a01, a23, b01, b23].
    let pairs = |a: __m512, b: __m512| {
        _mm512_add_ps(
            _mm512_shuffle_ps::<0x88>(a, b),
            _mm512_shuffle_ps::<0xDD>(a, b),
        )
    };
    let mut l1 = [_mm512_setzero_ps(); 8];
    for (i, l) in l1.iter_mut().enumerate() {
        *l = pairs(v(2 * i), v(2 * i + 1));
    }
    // Lane k: the 4-column sums of rows [a, b, c, d].
    let mut l2 = [_mm512_setzero_ps(); 4];
    for (i, l) in l2.iter_mut().enumerate() {
        *l = pairs(l1[2 * i], l1[2 * i + 1]);
    }
    // Add the two column halves of each token: [h0 abcd, h1 abcd, h0 efgh, h1 efgh].
    let halves = |a: __m512, b: __m512| {
        _mm512_add_ps(
            _mm512_shuffle_f32x4::<0x88>(a, b),
            _mm512_shuffle_f32x4::<0xDD>(a, b),
        )
    };
    let l3 = [halves(l2[0], l2[1]), halves(l2[2], l2[3])];
    // Gather each token's four row quartets.
    [
        _mm512_shuffle_f32x4::<0x88>(l3[0], l3[1]),
        _mm512_shuffle_f32x4::<0xDD>(l3[0], l3[1]),
    ]
}

/// Whether the GEMM path sums the two halves of a column apart: formats with scales
/// per 16 elements, unless they fold them into the weights.
const fn split<F: ColumnFormat>() -> bool {
    F::SPLIT && !F::FOLD
}

/// Largest register tile (rows, pairs) of format `F` within `rows` x `pairs`.
fn tile_shape<F: ColumnFormat>(rows: usize, pairs: usize) -> (usize, usize) {
    let rm = if rows >= 4 {
        4
    } else if rows >= 2 {
        2
    } else {
        1
    };
    // 16 int32 sums (32 when split) beside the RM weight chunks and an activation chunk.
    let max_np = if split::<F>() { 8 / rm } else { 16 / rm };
    (rm, pairs.min(max_np).min(8))
}

/// The table's `gemm` of a column format for tiles of many tokens
/// (`groups` >= 1 groups, the last with `valid_last` columns).
///
/// Order: row blocks of up to [`UNPACK_ROWS`] rows; within one, K chunks of up to
/// [`UNPACK_GROUPS`] groups, unpacked once; within one, token groups of up to
/// [`TOKEN_GROUP`] tokens; within those, K slices whose repacked activations fit the
/// L1 ([`SLICE_RECORDS`]); within a slice, register tiles over rows x pairs.
///
/// # Safety
/// See [`crate::cpu::dispatch::GemmFn`]; `tile.qtype` is the format `F` implements.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")]
pub(super) unsafe fn gemm<F: ColumnFormat>(tile: &GemmTile, groups: usize, valid_last: usize) {
    let total_cols = tile.k / 32;
    let mut scratch = MaybeUninit::<[PairGroup; SLICE_RECORDS]>::uninit();
    let recs = scratch.as_mut_ptr().cast::<PairGroup>();
    let mut accbuf = MaybeUninit::<[__m512; ACC_SUMS]>::uninit();
    let acc = accbuf.as_mut_ptr().cast::<__m512>();
    let mut unpacked = MaybeUninit::<[RowGroup; UNPACK_ROWS * UNPACK_GROUPS]>::uninit();
    let ug = unpacked.as_mut_ptr().cast::<RowGroup>();
    let mut rb0 = 0;
    while rb0 < tile.rows {
        let nr = UNPACK_ROWS.min(tile.rows - rb0);
        let mut kc0 = 0;
        while kc0 < groups {
            // Groups kc0..kc0 + kcn, unpacked as row r, group g at ug[r * kcn + g].
            let kcn = UNPACK_GROUPS.min(groups - kc0);
            let valid_chunk_last = if kc0 + kcn == groups {
                valid_last
            } else {
                COLS
            };
            // SAFETY: rows rb0..rb0 + nr, groups kc0..kc0 + kcn of the tile are readable
            // weights; the buffer holds nr * kcn <= UNPACK_ROWS * UNPACK_GROUPS RowGroups.
            unsafe {
                let w = tile.w.add(rb0 * tile.w_stride + kc0 * F::GROUP_BYTES);
                unpack::<F>(w, tile.w_stride, nr, kcn, valid_chunk_last, ug);
            }
            let mut t0 = 0;
            while t0 < tile.tokens {
                let nt = TOKEN_GROUP.min(tile.tokens - t0);
                let np = nt.div_ceil(2);
                let slice = (SLICE_RECORDS / np).max(1);
                let mut g0 = 0;
                while g0 < kcn {
                    let gn = slice.min(kcn - g0);
                    debug_assert!(gn * np <= SLICE_RECORDS);
                    // SAFETY: tokens t0..t0 + nt of the tile's activations are readable
                    // rows in the format's activation type (the caller's contract);
                    // gn * np <= SLICE_RECORDS records are written.
                    unsafe {
                        let a = tile.a.add(t0 * tile.a_stride);
                        let ga = kc0 + g0;
                        act::repack(
                            F::ACT,
                            a,
                            tile.a_stride,
                            nt,
                            ga,
                            gn,
                            total_cols,
                            F::OFFSET,
                            recs,
                        )
                    }
                    let mut r = 0;
                    while r < nr {
                        let mut p0 = 0;
                        while p0 < np {
                            let (rm, npk) = tile_shape::<F>(nr - r, np - p0);
                            let args = TileArgs {
                                // SAFETY: row r, group g0 are inside the unpacked chunk.
                                w: unsafe { ug.add(r * kcn + g0) },
                                w_row: kcn,
                                // SAFETY: record p0 of the slice's first group was written.
                                acts: unsafe { recs.add(p0) },
                                rec_stride: np,
                                groups: gn,
                                // SAFETY: (r, p0) is inside nr * np <= ACC_SUMS sums.
                                acc: unsafe { acc.add(r * np + p0) },
                                acc_stride: np,
                                init: g0 == 0,
                            };
                            // SAFETY: the args describe rm rows and npk pairs inside the
                            // unpacked block, the written scratch and the partial sums.
                            unsafe {
                                match (rm, npk) {
                                    (4, 4) => kernel::<F, 4, 4>(&args),
                                    (4, 3) => kernel::<F, 4, 3>(&args),
                                    (4, 2) => kernel::<F, 4, 2>(&args),
                                    (4, 1) => kernel::<F, 4, 1>(&args),
                                    (2, 8) => kernel::<F, 2, 8>(&args),
                                    (2, 7) => kernel::<F, 2, 7>(&args),
                                    (2, 6) => kernel::<F, 2, 6>(&args),
                                    (2, 5) => kernel::<F, 2, 5>(&args),
                                    (2, 4) => kernel::<F, 2, 4>(&args),
                                    (2, 3) => kernel::<F, 2, 3>(&args),
                                    (2, 2) => kernel::<F, 2, 2>(&args),
                                    (2, 1) => kernel::<F, 2, 1>(&args),
                                    (1, 8) => kernel::<F, 1, 8>(&args),
                                    (1, 7) => kernel::<F, 1, 7>(&args),
                                    (1, 6) => kernel::<F, 1, 6>(&args),
                                    (1, 5) => kernel::<F, 1, 5>(&args),
                                    (1, 4) => kernel::<F, 1, 4>(&args),
                                    (1, 3) => kernel::<F, 1, 3>(&args),
                                    (1, 2) => kernel::<F, 1, 2>(&args),
                                    (1, 1) => kernel::<F, 1, 1>(&args),
                                    (rm, np) => unreachable!("no {rm}x{np} register tile"),
                                }
                            };
                            p0 += npk;
                        }
                        r += tile_shape::<F>(nr - r, np).0;
                    }
                    g0 += gn;
                }
                for p in 0..np {
                    for r0 in (0..nr).step_by(16) {
                        let n = 16.min(nr - r0);
                        // SAFETY: every (r, p) with r < nr was written by the slices
                        // above; rows past nr read as zero.
                        let sums = reduce16(|i| {
                            if i < n {
                                unsafe { *acc.add((r0 + i) * np + p) }
                            } else {
                                _mm512_setzero_ps()
                            }
                        });
                        let mask = (1u32 << n).wrapping_sub(1) as __mmask16;
                        for (h, &s) in sums.iter().enumerate() {
                            let t = t0 + 2 * p + h;
                            if t < t0 + nt {
                                // SAFETY: token t and rows rb0 + r0 .. rb0 + r0 + n are
                                // inside the output tile; the mask touches only those,
                                // and a later K chunk adds to what the first wrote.
                                unsafe {
                                    let o = tile.out.add(t * tile.ldo + rb0 + r0);
                                    let s = if kc0 == 0 {
                                        s
                                    } else {
                                        _mm512_add_ps(_mm512_maskz_loadu_ps(mask, o), s)
                                    };
                                    _mm512_mask_storeu_ps(o, mask, s);
                                }
                            }
                        }
                    }
                }
                t0 += nt;
            }
            kc0 += kcn;
        }
        rb0 += nr;
    }
}
