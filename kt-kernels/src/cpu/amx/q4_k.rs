//! Q4_K weights as stored in the GGUF (no repack), many tokens: AMX `tdpbusd` per
//! 32-element sub-block, scaled in f32 with AVX512.
//!
//! A Q4_K row block (256 weights) is `w = d * sc_j * q - dmin * m_j` for sub-block `j`
//! (32 weights, `q` in 0..16); a Q8_K activation block is `a = da * s` (`s` int8) with
//! the sums of its 16-element groups. So one block's dot is
//! `da * (sum_j d * sc_j * I_j - dmin * sum_j m_j * S_j)` with `I_j` the int8 dot of
//! sub-block `j` and `S_j` the activations' sum over it. `tdpbusd` computes `I_j` for 16
//! weight rows x 16 tokens at once (A = the unpacked quants, unsigned; B = the
//! activations, signed), with K = 32 so each sub-block gets its own C tile; the f32
//! epilogue applies `d * sc_j`, the minimum term and `da`.
//!
//! Operand orientation: the weights are the A operand (one 16-row tile per row block,
//! rows in their natural layout: unpacking the nibbles to bytes is two masks and a
//! shift), the activations the B operand, which AMX wants in VNNI form (one 64-byte
//! line = dword `q` of each of 16 tokens). That transposition is done once per token
//! group and K chunk and shared by every row block of the call; transposing the weights
//! instead would cost it per weight, used by only ~16 tokens at V3 prefill.
//!
//! Tiles: 0..4 the C tiles of four sub-blocks, 4 and 5 the A tiles, 6 and 7 the B tiles.
//! The eight C tiles of one (row block, super-block, token group) step are stored to a
//! double buffer and scaled while the next step's `tdpbusd`s run.

use std::arch::x86_64::*;
use std::mem::MaybeUninit;
use std::sync::OnceLock;

use super::tiles::{tile_dp_u8i8, tile_load, tile_store, tile_zero, TileConfig};
use crate::cpu::avx512::q4_k::scales_mins;
use crate::cpu::dispatch::{GemmFn, GemmTile};

/// Elements per super-block, bytes of a Q4_K and of a Q8_K block.
const QK_K: usize = 256;
const W_BLOCK: usize = 144;
const A_BLOCK: usize = 292;
/// Sub-blocks per super-block.
const SUBS: usize = 8;
/// Weight rows per tile and tokens per group (the C tile is 16 x 16).
const TR: usize = 16;
const TG: usize = 16;
/// Token groups per token block, and the transposed activation records (one per token
/// group and super-block, 4.6 KiB each) of one token block and K chunk: 147 KiB, in L2
/// while every row block passes over them. A chunk holds `RECORDS / groups`
/// super-blocks: the whole of a 7168-long row for one token group (V3 prefill), so each
/// row block streams its rows from start to end.
const GROUPS: usize = 4;
const RECORDS: usize = 32;
/// Weight prefetch distance, in super-blocks of the row block (16 rows x 144 bytes), into
/// L2: the weights stream from DRAM once per call, so they must be requested before the
/// unpacking reads them (one super-block step is ~0.4 µs of work). L2 rather than L1: a
/// step's 16 rows are ~50 lines, more than the L1 miss buffers hold. Dev VM, 1 thread,
/// `kt-bench matmul --formats q4_k --tokens 16` (from DRAM), 2048x7168 / 7168x2048:
/// L1 at 4 steps 1.50 / 1.59 ms, L2 at 4: 1.46 / 1.52, L2 at 2: 1.42 / 1.47 (best of 3).
/// Near a row block's end it continues with the next one.
const PREFETCH: usize = 2;

/// Below this many tokens the AVX512 kernel is used: a C tile's 16 token columns would
/// be mostly empty.
pub(crate) const AMX_MIN_TOKENS: usize = 12;

/// The kernel of the level below (AVX512), for small token counts.
static LOWER: OnceLock<GemmFn> = OnceLock::new();

/// Records `lower` as the kernel for tiles with few tokens; returns the AMX kernel.
pub(crate) fn install(lower: GemmFn) -> GemmFn {
    let _ = LOWER.set(lower);
    gemm
}

/// One token group's activations of one super-block, ready for the B tiles.
#[repr(C, align(64))]
struct ActBlock {
    /// Line `q`: dword `q` (elements `4q..4q + 4`) of each of the 16 tokens.
    q: [[i32; TG]; QK_K / 4],
    /// `S_j` per token, as f32.
    sums: [[f32; TG]; SUBS],
    /// `da` per token (0 for the group's missing tokens).
    d: [f32; TG],
}

/// One row block's super-block, unpacked for the A tiles.
#[repr(C, align(64))]
struct WeightBlock {
    /// Row `n`: the quants as bytes, sub-block `j` at [`sub_offset`]`(j)`.
    q: [[u8; QK_K]; TR],
    /// `d * sc_j` and `dmin * m_j` per row.
    scale: [[f32; SUBS]; TR],
    min: [[f32; SUBS]; TR],
}

/// Where sub-block `j` sits in an unpacked row: quant byte `i` of pair `p = j / 2` holds
/// element `i` of sub-block `2p` (low nibble) and `2p + 1` (high nibble); each 64 bytes
/// of quants unpack to their 64 low nibbles, then their 64 high nibbles.
const fn sub_offset(j: usize) -> usize {
    let p = j / 2;
    (p / 2) * 128 + (j % 2) * 64 + (p % 2) * 32
}

/// The eight int32 C tiles of one step: sub-block `j`, weight row `n` at `[j][n]`.
#[repr(C, align(64))]
struct CTiles([[[i32; TG]; TR]; SUBS]);

/// One step whose C tiles wait to be scaled.
#[derive(Clone, Copy)]
struct Pending {
    cbuf: usize,
    wbuf: usize,
    act: usize,
    group: usize,
    /// Its row block, and whether it is that block's last step in the K chunk.
    block: usize,
    last: bool,
}

/// # Safety
/// As [`GemmFn`]: valid tile extents, exclusive output, `Isa::Amx.check()` passed.
pub(crate) unsafe fn gemm(t: &GemmTile) {
    if t.tokens < AMX_MIN_TOKENS || !t.k.is_multiple_of(QK_K) {
        let lower = LOWER.get().expect("installed with the AMX table");
        // SAFETY: forwarded contract; the lower kernel is the AVX512 table's.
        unsafe { lower(t) };
        return;
    }
    // SAFETY: forwarded.
    unsafe { gemm_amx(t) };
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,f16c")]
unsafe fn gemm_amx(t: &GemmTile) {
    let nsb = t.k / QK_K;
    let mut acts = MaybeUninit::<[ActBlock; RECORDS]>::uninit();
    let acts = acts.as_mut_ptr().cast::<ActBlock>();
    let mut wbuf = MaybeUninit::<[WeightBlock; 3]>::uninit();
    let wbuf = wbuf.as_mut_ptr().cast::<WeightBlock>();
    let mut cbuf = MaybeUninit::<[CTiles; 2]>::uninit();
    let cbuf = cbuf.as_mut_ptr().cast::<CTiles>();
    // Accumulators of the row blocks in flight (by parity): group g, row n at
    // [g][n] (16 tokens each).
    let mut acc = [[[_mm512_setzero_ps(); TR]; GROUPS]; 2];
    let mut loaded_rows = 0;
    for t0 in (0..t.tokens).step_by(GROUPS * TG) {
        let ntb = (GROUPS * TG).min(t.tokens - t0);
        let ng = ntb.div_ceil(TG);
        let chunk = RECORDS / ng;
        for c0 in (0..nsb).step_by(chunk) {
            let kc = chunk.min(nsb - c0);
            for g in 0..ng {
                let first = t0 + g * TG;
                let n = TG.min(t.tokens - first);
                for s in 0..kc {
                    // SAFETY: tokens first..first + n are readable activation rows of
                    // the tile, super-block c0 + s < nsb of each; the record is inside
                    // `acts` (g * chunk + s < ng * chunk <= RECORDS).
                    unsafe {
                        transpose_acts(
                            t.a.add(first * t.a_stride + (c0 + s) * A_BLOCK),
                            t.a_stride,
                            n,
                            acts.add(g * chunk + s),
                        )
                    };
                }
            }
            // One pipeline over every (row block, super-block, token group) step of
            // the chunk, so neither the first unpacking nor the last scaling of a row
            // block waits: step i's products overlap step i - 1's scaling, and
            // super-block L (counted over row blocks) is unpacked one step ahead into
            // weight buffer L % 3. Accumulators alternate by row block parity.
            let steps_rb = kc * ng;
            let nrb = t.rows.div_ceil(TR);
            let rows_of = |rb: usize| TR.min(t.rows - rb * TR);
            let wblock = |l: usize| {
                let (rb, s) = (l / kc, l % kc);
                // SAFETY (for callers): rb < nrb, s < kc: inside the tile's weights.
                t.w.wrapping_add(rb * TR * t.w_stride + (c0 + s) * W_BLOCK)
            };
            // SAFETY: super-block 0 of row block 0 is inside the weights; buffer 0 is
            // inside `wbuf`.
            unsafe { unpack_weights(wblock(0), t.w_stride, rows_of(0), wbuf) };
            let mut pending: Option<Pending> = None;
            for step in 0..nrb * steps_rb {
                let (rb, i) = (step / steps_rb, step % steps_rb);
                let (s, g) = (i / ng, i % ng);
                let l = rb * kc + s;
                let nr = rows_of(rb);
                if i == 0 {
                    acc[rb & 1][..ng]
                        .iter_mut()
                        .for_each(|a| *a = [_mm512_setzero_ps(); TR]);
                    if loaded_rows != nr {
                        let mut c = TileConfig::new();
                        for tile in 0..4 {
                            c.set(tile, nr, 64);
                        }
                        c.set(4, nr, 32);
                        c.set(5, nr, 32);
                        c.set(6, 8, 64);
                        c.set(7, 8, 64);
                        // SAFETY: AMX usable (caller); a valid palette-1 configuration
                        // (loading it zeroes the tiles: the previous step stored its C).
                        unsafe { c.load() };
                        loaded_rows = nr;
                    }
                }
                // SAFETY (whole block): every weight block named is inside the tile
                // (row block < nrb, super-block < c0 + kc); scratch indices are in
                // bounds (% 3, & 1; g * chunk + s < RECORDS). Products read weight
                // buffer l % 3 (unpacked a step earlier, so its stores have drained
                // before the tile loads), the next super-block goes to (l + 1) % 3, and
                // the step scaled here (step - 1: super-block l or l - 1) reads neither
                // that nor the C buffer written now.
                unsafe {
                    products(wbuf.add(l % 3), acts.add(g * chunk + s), cbuf.add(step & 1));
                    if g == 0 {
                        let ahead = l + PREFETCH;
                        if ahead < nrb * kc {
                            prefetch_rows(wblock(ahead), t.w_stride, rows_of(ahead / kc));
                        }
                        if l + 1 < nrb * kc {
                            let next = l + 1;
                            unpack_weights(
                                wblock(next),
                                t.w_stride,
                                rows_of(next / kc),
                                wbuf.add(next % 3),
                            );
                        }
                    }
                    let now = Pending {
                        cbuf: step & 1,
                        wbuf: l % 3,
                        act: g * chunk + s,
                        group: g,
                        block: rb,
                        last: i + 1 == steps_rb,
                    };
                    if let Some(p) = pending.replace(now) {
                        finish_step(t, p, cbuf, wbuf, acts, &mut acc, t0, ng, c0 == 0);
                    }
                }
            }
            if let Some(p) = pending {
                // SAFETY: as above.
                unsafe { finish_step(t, p, cbuf, wbuf, acts, &mut acc, t0, ng, c0 == 0) };
            }
        }
    }
    // SAFETY: AMX is enabled (caller); ends this call's use of the tiles.
    unsafe { super::tiles::release() };
}

/// Scales step `p` into its row block's accumulators; after the block's last step, adds
/// them to the output (stores them for the first K chunk).
///
/// # Safety
/// As the steps of [`gemm_amx`]: `p` names initialised scratch, and the output rows of
/// its row block and tokens `t0..t0 + 16 * ng` are the caller's.
#[allow(clippy::too_many_arguments)]
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq")]
unsafe fn finish_step(
    t: &GemmTile,
    p: Pending,
    cbuf: *const CTiles,
    wbuf: *const WeightBlock,
    acts: *const ActBlock,
    acc: &mut [[[__m512; TR]; GROUPS]; 2],
    t0: usize,
    ng: usize,
    first_chunk: bool,
) {
    let r0 = p.block * TR;
    let nr = TR.min(t.rows - r0);
    let acc = &mut acc[p.block & 1];
    // SAFETY: the caller's contract.
    unsafe {
        scale(
            cbuf.add(p.cbuf),
            wbuf.add(p.wbuf),
            acts.add(p.act),
            nr,
            &mut acc[p.group],
        )
    };
    if !p.last {
        return;
    }
    for (g, a) in acc.iter().enumerate().take(ng) {
        let first = t0 + g * TG;
        let n_tok = TG.min(t.tokens - first);
        let mut lanes = [[0f32; TG]; TR];
        for (n, v) in a.iter().enumerate().take(nr) {
            // SAFETY: a 64-byte store into a local array row.
            unsafe { _mm512_storeu_ps(lanes[n].as_mut_ptr(), *v) };
        }
        for tok in 0..n_tok {
            for (n, row) in lanes.iter().enumerate().take(nr) {
                // SAFETY: token first + tok < tokens, row r0 + n < rows: inside the
                // caller's output tile.
                unsafe {
                    let o = t.out.add((first + tok) * t.ldo + r0 + n);
                    *o = if first_chunk { row[tok] } else { *o + row[tok] };
                }
            }
        }
    }
}

/// Prefetches one Q4_K block of `nr` rows (`stride` bytes apart) into L2.
///
/// # Safety
/// The blocks lie inside the weights (a prefetch never faults, but the address
/// arithmetic must stay inside the allocation).
#[inline]
#[target_feature(enable = "sse")]
unsafe fn prefetch_rows(w: *const u8, stride: usize, nr: usize) {
    for n in 0..nr {
        // SAFETY: bytes 0..W_BLOCK of block n are inside the weights (caller).
        unsafe {
            let b = w.add(n * stride);
            _mm_prefetch::<_MM_HINT_T1>(b.cast());
            _mm_prefetch::<_MM_HINT_T1>(b.add(64).cast());
            _mm_prefetch::<_MM_HINT_T1>(b.add(128).cast());
            _mm_prefetch::<_MM_HINT_T1>(b.add(W_BLOCK - 1).cast());
        }
    }
}

/// Transposes one super-block of `n` (1..=16) tokens' Q8_K rows (`a`, `stride` bytes
/// apart) into `dst`; missing tokens read as zero. The sub-block sums come from the
/// transposed lines (one `vpdpbusd` with ones per line sums each token's 4 bytes).
///
/// # Safety
/// `n` rows of a whole Q8_K block are readable at `a`; `dst` is writable.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")]
unsafe fn transpose_acts(a: *const u8, stride: usize, n: usize, dst: *mut ActBlock) {
    let ones = _mm512_set1_epi8(1);
    // SAFETY (whole body): rows tok < n of the block are readable (caller); `dst` is a
    // valid, 64-byte aligned ActBlock.
    unsafe {
        for quarter in 0..4 {
            let mut r = [_mm512_setzero_si512(); TG];
            for (tok, v) in r.iter_mut().enumerate().take(n) {
                *v = _mm512_loadu_si512(a.add(tok * stride + 4 + 64 * quarter).cast());
            }
            let r = transpose16(r);
            let q = (*dst).q.as_mut_ptr().add(16 * quarter);
            for (i, v) in r.iter().enumerate() {
                _mm512_store_si512(q.add(i).cast(), *v);
            }
            // Lines 0..8 of the quarter are sub-block 2 * quarter, 8..16 the next.
            for (half, lines) in r.chunks_exact(8).enumerate() {
                let sum = lines.iter().fold(_mm512_setzero_si512(), |acc, &l| {
                    _mm512_dpbusd_epi32(acc, ones, l)
                });
                _mm512_store_ps(
                    (*dst).sums[2 * quarter + half].as_mut_ptr(),
                    _mm512_cvtepi32_ps(sum),
                );
            }
        }
        let d = &mut (*dst).d;
        for (tok, d) in d.iter_mut().enumerate() {
            *d = if tok < n {
                a.add(tok * stride).cast::<f32>().read_unaligned()
            } else {
                0.0
            };
        }
    }
}

/// Transposes 16 x 16 dwords: row `i` of the result holds dword `i` of every input.
#[inline]
#[target_feature(enable = "avx512f")]
fn transpose16(r: [__m512i; 16]) -> [__m512i; 16] {
    let mut a = [_mm512_setzero_si512(); 16];
    for i in 0..8 {
        a[2 * i] = _mm512_unpacklo_epi32(r[2 * i], r[2 * i + 1]);
        a[2 * i + 1] = _mm512_unpackhi_epi32(r[2 * i], r[2 * i + 1]);
    }
    // b[4i + e], 128-bit lane L: rows 4i..4i + 4 of dword 4L + e.
    let mut b = [_mm512_setzero_si512(); 16];
    for i in 0..4 {
        b[4 * i] = _mm512_unpacklo_epi64(a[4 * i], a[4 * i + 2]);
        b[4 * i + 1] = _mm512_unpackhi_epi64(a[4 * i], a[4 * i + 2]);
        b[4 * i + 2] = _mm512_unpacklo_epi64(a[4 * i + 1], a[4 * i + 3]);
        b[4 * i + 3] = _mm512_unpackhi_epi64(a[4 * i + 1], a[4 * i + 3]);
    }
    let mut out = [_mm512_setzero_si512(); 16];
    for e in 0..4 {
        let c0 = _mm512_shuffle_i32x4::<0x88>(b[e], b[4 + e]);
        let c1 = _mm512_shuffle_i32x4::<0xDD>(b[e], b[4 + e]);
        let d0 = _mm512_shuffle_i32x4::<0x88>(b[8 + e], b[12 + e]);
        let d1 = _mm512_shuffle_i32x4::<0xDD>(b[8 + e], b[12 + e]);
        out[e] = _mm512_shuffle_i32x4::<0x88>(c0, d0);
        out[4 + e] = _mm512_shuffle_i32x4::<0x88>(c1, d1);
        out[8 + e] = _mm512_shuffle_i32x4::<0xDD>(c0, d0);
        out[12 + e] = _mm512_shuffle_i32x4::<0xDD>(c1, d1);
    }
    out
}

/// Unpacks `nr` weight rows' Q4_K block (`w`, rows `stride` bytes apart) into `dst`.
///
/// # Safety
/// `nr` (<= 16) blocks are readable at `w`; `dst` is writable.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,f16c")]
unsafe fn unpack_weights(w: *const u8, stride: usize, nr: usize, dst: *mut WeightBlock) {
    let nib = _mm512_set1_epi8(0x0F);
    for n in 0..nr {
        // SAFETY: block n is readable (caller): d, dmin at 0..4, scales at 4..16 (and
        // scales_mins reads 4 quant bytes past them), quants at 16..144; row n of `dst`.
        unsafe {
            let b = w.add(n * stride);
            let dd = _mm_cvtph_ps(_mm_cvtsi32_si128(b.cast::<i32>().read_unaligned()));
            let (d, dmin) = (
                _mm256_broadcastss_ps(dd),
                _mm256_broadcastss_ps(_mm_movehdup_ps(dd)),
            );
            let (sc, m) = scales_mins(b.add(4));
            let sc = _mm256_cvtepi32_ps(_mm512_castsi512_si256(sc));
            let m = _mm256_cvtepi32_ps(_mm512_castsi512_si256(m));
            _mm256_store_ps((*dst).scale[n].as_mut_ptr(), _mm256_mul_ps(sc, d));
            _mm256_store_ps((*dst).min[n].as_mut_ptr(), _mm256_mul_ps(m, dmin));
            let q = (*dst).q[n].as_mut_ptr();
            for half in 0..2 {
                let v = _mm512_loadu_si512(b.add(16 + 64 * half).cast());
                _mm512_store_si512(q.add(128 * half).cast(), _mm512_and_si512(v, nib));
                _mm512_store_si512(
                    q.add(128 * half + 64).cast(),
                    _mm512_and_si512(_mm512_srli_epi16::<4>(v), nib),
                );
            }
        }
    }
}

/// The eight sub-blocks' int32 products of one row block and token group into `c`.
///
/// # Safety
/// The tile configuration of [`gemm_amx`] is loaded (A and C rows = the rows unpacked
/// in `wb`); `wb`, `ab` are initialised and `c` writable.
#[inline]
unsafe fn products(wb: *const WeightBlock, ab: *const ActBlock, c: *mut CTiles) {
    // SAFETY (whole body): every address is inside `wb` (A rows of 256 bytes, 32 read
    // from sub_offset(j) <= 224), `ab` (8 lines of 64 bytes from line 8j) or `c` (one
    // 16 x 64-byte tile per sub-block); AMX state is configured (caller).
    unsafe {
        let a = (*wb).q.as_ptr().cast::<u8>();
        let b = (*ab).q.as_ptr().cast::<u8>();
        let c = (*c).0.as_mut_ptr().cast::<u8>();
        let (sa, sb, sc) = (QK_K, 64usize, 64usize);
        let bl = |j: usize| b.add(512 * j);
        let al = |j: usize| a.add(sub_offset(j));
        let cl = |j: usize| c.add(1024 * j);
        for round in 0..2 {
            let j = 4 * round;
            tile_zero!(0);
            tile_zero!(1);
            tile_zero!(2);
            tile_zero!(3);
            tile_load!(4, al(j), sa);
            tile_load!(6, bl(j), sb);
            tile_dp_u8i8!(0, 4, 6);
            tile_load!(5, al(j + 1), sa);
            tile_load!(7, bl(j + 1), sb);
            tile_dp_u8i8!(1, 5, 7);
            tile_load!(4, al(j + 2), sa);
            tile_load!(6, bl(j + 2), sb);
            tile_dp_u8i8!(2, 4, 6);
            tile_load!(5, al(j + 3), sa);
            tile_load!(7, bl(j + 3), sb);
            tile_dp_u8i8!(3, 5, 7);
            tile_store!(0, cl(j), sc);
            tile_store!(1, cl(j + 1), sc);
            tile_store!(2, cl(j + 2), sc);
            tile_store!(3, cl(j + 3), sc);
        }
    }
}

/// Adds one step's scaled products to the accumulators of its token group:
/// `acc[n] += da * (sum_j d sc_j[n] I_j[n] - sum_j dmin m_j[n] S_j)`.
///
/// # Safety
/// `c` holds the step's products for `nr` rows, `wb` and `ab` its unpacked weights and
/// activations.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq")]
unsafe fn scale(
    c: *const CTiles,
    wb: *const WeightBlock,
    ab: *const ActBlock,
    nr: usize,
    acc: &mut [__m512; TR],
) {
    // SAFETY (whole body): rows n < nr of the initialised buffers (caller).
    unsafe {
        let da = _mm512_load_ps((*ab).d.as_ptr());
        let sums: [__m512; SUBS] = std::array::from_fn(|j| _mm512_load_ps((*ab).sums[j].as_ptr()));
        for (n, acc) in acc.iter_mut().enumerate().take(nr) {
            // Four independent sums (products and minimums of even and odd sub-blocks):
            // a row's dependency chain is 4 FMAs and 2 adds instead of 16 FMAs, so less
            // of the epilogue waits on latency while the AMX products of the next step
            // hold the reorder window.
            let (mut ps, mut ms) = ([_mm512_setzero_ps(); 2], [_mm512_setzero_ps(); 2]);
            for (j, s) in sums.iter().enumerate() {
                let ci = _mm512_load_si512((*c).0[j][n].as_ptr().cast());
                let (p, m) = (&mut ps[j % 2], &mut ms[j % 2]);
                *p = _mm512_fmadd_ps(
                    _mm512_cvtepi32_ps(ci),
                    _mm512_set1_ps((*wb).scale[n][j]),
                    *p,
                );
                *m = _mm512_fmadd_ps(*s, _mm512_set1_ps((*wb).min[n][j]), *m);
            }
            let v = _mm512_sub_ps(_mm512_add_ps(ps[0], ps[1]), _mm512_add_ps(ms[0], ms[1]));
            *acc = _mm512_fmadd_ps(v, da, *acc);
        }
    }
}
