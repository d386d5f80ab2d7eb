//! The pipeline of the AMX GEMMs of the K-quants as stored in the GGUF (no repack), many
//! tokens: the weights of one format are the A operand of `tdpbusd`/`tdpbssd` (one 16-row
//! tile per row block, rows in their natural layout), Q8_K activations the B operand. A
//! format plugs in as a [`StepKernel`]: how it transposes a token group's activations,
//! unpacks a row block's super-block, issues the tile products of one step and scales
//! them into f32 accumulators. Step kernels: Q4_K [`super::q4_k_per_sub`] and
//! [`super::q4_k_folded`] (the folded one also serves Q5_K), Q2_K [`super::q2_k`], Q3_K
//! [`super::q3_k`], Q6_K [`super::q6_k`], and the small-block formats Q8_0, Q4_0, Q5_0,
//! Q4_1, Q5_1 [`super::small_block`], whose "super-block" is four of their blocks against
//! Q8_0 or Q8_1 activations (a step kernel says its step's elements and activation
//! bytes).
//!
//! Operand orientation: the activations must be in VNNI form (one 64-byte line = dword
//! `q` of each of 16 tokens). That transposition is done once per (token group,
//! super-block): by the matmul driver for the whole call ([`Pretransposed`]), shared by all
//! its work items, or, for a tile called on its own (the MoE's experts), by the tile once
//! per token group and K chunk, shared by its row blocks. Transposing the weights instead
//! would cost it per weight, used by only ~16 tokens at V3 prefill.
//!
//! The unpacking is per row block and super-block, shared by the token groups of a token
//! block, the epilogue per token group. The C tiles of one (row block, super-block, token
//! group) step are stored to a double buffer and scaled while the next step's tile
//! products run.

use std::arch::x86_64::*;
use std::mem::MaybeUninit;
use std::sync::OnceLock;

use super::blocks::transpose16;
use super::tiles::TileConfig;
use crate::cpu::dispatch::{GemmFn, GemmTile};
use crate::quant::QType;

/// Elements per super-block, bytes of a Q8_K block.
pub(super) const QK_K: usize = 256;
const Q8K_BLOCK: usize = 292;
/// Weight rows per tile and tokens per group (the C tile is 16 x 16).
pub(super) const TR: usize = 16;
pub(super) const TG: usize = 16;
/// Token groups per token block (`G` of [`gemm_amx`]), and the transposed activation
/// records (`R`: one per token group and super-block, ~4.5 KiB each) of one token block
/// and K chunk, in L2 while every row block passes over them, when a tile transposes its
/// own (the call's records, made once by the driver, are read in one chunk). A chunk
/// holds `R / groups` super-blocks: the whole of a 7168-long row for one token group (V3
/// prefill), so each row block streams its rows from start to end.
///
/// Above [`SMALL_TOKENS`] tokens eight groups (the driver's 128-token blocks) share each
/// unpacked weight block: against four (and 32 records), dev VM, 1 thread, 2048x7168 at
/// 512 tokens, resident weights, CPU time, min of 6: Q4_K 31.2 -> 30.3 ms, Q5_K 32.4 ->
/// 29.1, Q2_K 30.7 -> 28.4, Q6_K 46.9 -> 37.7 (whose unpacking is the dearest); device
/// (16 threads, one call, session 7), Q4_K 512 tokens 0.42-0.58 of the int8 peak against
/// 0.36-0.52 with four. Up to 64 tokens (the MoE's calls) four groups and 32 records, as
/// before: in that call one 16-token Q4_K GEMM (7168x2048, 112 items of 64 rows) ran 34%
/// slower with eight (0.232 vs 0.173 ms, the other shapes level), not reproduced on the
/// dev VM, so the small calls keep the smaller frame.
const LARGE_GROUPS: usize = 8;
const LARGE_RECORDS: usize = 64;
const SMALL_GROUPS: usize = 4;
const SMALL_RECORDS: usize = 32;
const SMALL_TOKENS: usize = SMALL_GROUPS * TG;
/// Weight prefetch distance, in super-blocks of the row block (16 rows x 144 bytes), into
/// L2: the weights stream from DRAM once per call, so they must be requested before the
/// unpacking reads them (one super-block step is ~0.4 µs of work). L2 rather than L1: a
/// step's 16 rows are ~50 lines, more than the L1 miss buffers hold. Dev VM, 1 thread,
/// `kt-bench matmul --formats q4_k --tokens 16` (from DRAM), 2048x7168 / 7168x2048:
/// L1 at 4 steps 1.50 / 1.59 ms, L2 at 4: 1.46 / 1.52, L2 at 2: 1.42 / 1.47 (best of 3).
/// Near a row block's end it continues with the next one.
const PREFETCH: usize = 2;

/// How many super-blocks ahead of the products the weights are unpacked, and the weight
/// buffers: the one read by the products, the one of the step being scaled and those
/// unpacked ahead. Two ahead cost both step kernels 3-10% (dev VM, 1 thread, 7168x2048
/// per sub-block at 16 tokens, folded at 64).
const UNPACK_AHEAD: usize = 1;
const WBUFS: usize = UNPACK_AHEAD + 2;

/// What the pipeline of [`gemm_amx`] needs of a step kernel: its scratch records and the
/// four stages of a step.
///
/// # Safety
/// Implementations read and write only the records and rows they are given, and
/// `products` issues tile instructions valid under the configuration of `config`.
pub(super) unsafe trait StepKernel {
    /// One token group's activations of one super-block, ready for the B tiles.
    type Acts;
    /// One row block's super-block, unpacked for the A tiles.
    type Weights;
    /// The int32 C tiles of one step.
    type Products;
    /// Bytes of one weight block ([`ELEMS`](Self::ELEMS) elements).
    const W_BLOCK: usize;
    /// Elements of K per step (the "super-block" of this module): a K-quant super-block
    /// by default; the small-block formats take several of their blocks.
    const ELEMS: usize = QK_K;
    /// Bytes of the activations' blocks of one step (one Q8_K block by default).
    const A_BYTES: usize = Q8K_BLOCK;

    /// The tile configuration for row blocks of `nr` rows.
    fn config(nr: usize) -> TileConfig;

    /// Transposes one super-block of `n` (1..=16) tokens' Q8_K rows (`a`, `stride` bytes
    /// apart) into `dst`; missing tokens read as zero.
    ///
    /// # Safety
    /// `n` rows of a whole Q8_K block are readable at `a`; `dst` is writable.
    unsafe fn transpose_acts(a: *const u8, stride: usize, n: usize, dst: *mut Self::Acts);

    /// Unpacks `nr` (<= 16) weight rows' block (`w`, rows `stride` bytes apart).
    ///
    /// # Safety
    /// `nr` blocks are readable at `w`; `dst` is writable.
    unsafe fn unpack(w: *const u8, stride: usize, nr: usize, dst: *mut Self::Weights);

    /// [`unpack`](Self::unpack), and a prefetch into L2 of the `ahead_nr` rows' block at
    /// `ahead` (same stride; none when 0). Kernels may interleave the two row by row so
    /// that the step's prefetches do not come as one burst (see [`PREFETCH`]).
    ///
    /// # Safety
    /// As `unpack`; the `ahead_nr` rows' blocks at `ahead` lie inside the weights.
    #[inline]
    unsafe fn unpack_prefetching(
        w: *const u8,
        stride: usize,
        nr: usize,
        dst: *mut Self::Weights,
        ahead: *const u8,
        ahead_nr: usize,
    ) {
        // SAFETY: forwarded.
        unsafe {
            prefetch_rows(ahead, Self::W_BLOCK, stride, ahead_nr);
            Self::unpack(w, stride, nr, dst);
        }
    }

    /// The step's tile products into `c`.
    ///
    /// # Safety
    /// `config` of the rows unpacked in `wb` is loaded; `wb`, `ab` are initialised and
    /// `c` writable.
    unsafe fn products(wb: *const Self::Weights, ab: *const Self::Acts, c: *mut Self::Products);

    /// Adds the step's scaled products to the token group's accumulators (`acc[n]`: row
    /// `n`, 16 tokens).
    ///
    /// # Safety
    /// `c` holds the step's products for `nr` rows, `wb` and `ab` its weights and
    /// activations.
    unsafe fn scale(
        c: *const Self::Products,
        wb: *const Self::Weights,
        ab: *const Self::Acts,
        nr: usize,
        acc: &mut [__m512; TR],
    );
}

/// The stage methods of a [`StepKernel`] impl that only hand their arguments on to the
/// step kernel module's function of the same contract (written inside the impl: `$stage:
/// function` pairs). `unpack` forwards to a function of `unpack`'s arguments;
/// `unpack_prefetching` to one that also takes the prefetch rows after `dst` (and then
/// writes `unpack` as that function without prefetches). Each forwarder carries the
/// target features the hand-written ones had (`scale`: those of `finish_step`, which calls
/// it; none for the tile products), so the code is what it was before this macro: a
/// stage function that needs more than its forwarder (the folded kernels' `scale`, with
/// `vpdpwssd`) stays a call. With those inlined into the epilogue, Q2_K and Q3_K GEMMs
/// read 2-23% slower in both rounds on the device (session 18 call F).
macro_rules! forward_stages {
    ($($stage:ident: $f:path),+ $(,)?) => {
        $($crate::cpu::amx::kquant::forward_stages!(@stage $stage $f);)+
    };
    (@stage transpose_acts $f:path) => {
        #[inline]
        #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")]
        unsafe fn transpose_acts(a: *const u8, stride: usize, n: usize, dst: *mut Self::Acts) {
            // SAFETY: the trait's contract is this function's.
            unsafe { $f(a, stride, n, dst) }
        }
    };
    (@stage unpack $f:path) => {
        #[inline]
        #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,f16c")]
        unsafe fn unpack(w: *const u8, stride: usize, nr: usize, dst: *mut Self::Weights) {
            // SAFETY: the trait's contract is this function's.
            unsafe { $f(w, stride, nr, dst) }
        }
    };
    (@stage unpack_prefetching $f:path) => {
        #[inline]
        #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,f16c")]
        unsafe fn unpack(w: *const u8, stride: usize, nr: usize, dst: *mut Self::Weights) {
            // SAFETY: the trait's contract is this function's (no prefetch rows).
            unsafe { $f(w, stride, nr, dst, std::ptr::null(), 0) }
        }

        #[inline]
        #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,f16c")]
        unsafe fn unpack_prefetching(
            w: *const u8,
            stride: usize,
            nr: usize,
            dst: *mut Self::Weights,
            ahead: *const u8,
            ahead_nr: usize,
        ) {
            // SAFETY: the trait's contract is this function's.
            unsafe { $f(w, stride, nr, dst, ahead, ahead_nr) }
        }
    };
    (@stage products $f:path) => {
        #[inline]
        unsafe fn products(
            wb: *const Self::Weights,
            ab: *const Self::Acts,
            c: *mut Self::Products,
        ) {
            // SAFETY: the trait's contract is this function's.
            unsafe { $f(wb, ab, c) }
        }
    };
    (@stage scale $f:path) => {
        #[inline]
        #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq")]
        unsafe fn scale(
            c: *const Self::Products,
            wb: *const Self::Weights,
            ab: *const Self::Acts,
            nr: usize,
            acc: &mut [std::arch::x86_64::__m512; $crate::cpu::amx::kquant::TR],
        ) {
            // SAFETY: the trait's contract is this function's.
            unsafe { $f(c, wb, ab, nr, acc) }
        }
    };
}
pub(super) use forward_stages;

/// One step whose C tiles wait to be scaled.
struct Pending<A> {
    cbuf: usize,
    wbuf: usize,
    /// Its activation record.
    act: *const A,
    group: usize,
    /// Its row block, and whether it is that block's last step in the K chunk.
    block: usize,
    last: bool,
}

/// The tile configuration the folded step kernels share: tiles `row_tiles` hold `nr`
/// weight rows (A operands) or their C products, 64 bytes wide; tiles 6 and 7 are the
/// activations' B operands (16 lines of 16 tokens).
pub(super) fn folded_config(row_tiles: &[usize], nr: usize) -> TileConfig {
    let mut c = TileConfig::new();
    for &tile in row_tiles {
        c.set(tile, nr, 64);
    }
    c.set(6, 16, 64);
    c.set(7, 16, 64);
    c
}

/// The AMX GEMM of step kernel `K` for tiles of at least `min_tokens` tokens and whole
/// super-blocks; other tiles go to `lower` (the AVX512 table's kernel, recorded by the
/// format's `install`).
///
/// # Safety
/// As [`GemmFn`]: valid tile extents, exclusive output, `Isa::Amx.check()` passed.
pub(super) unsafe fn gemm_or_lower<K: StepKernel>(
    t: &GemmTile,
    lower: &OnceLock<GemmFn>,
    min_tokens: usize,
) {
    if t.tokens < min_tokens || !t.k.is_multiple_of(K::ELEMS) {
        let lower = lower.get().expect("installed with the AMX table");
        // SAFETY: forwarded contract; the lower kernel is the AVX512 table's.
        unsafe { lower(t) };
    } else {
        // SAFETY: forwarded; a null record pointer makes the pipeline transpose.
        unsafe { gemm_sized::<K>(t, std::ptr::null()) };
    }
}

/// The entry points of a format whose AMX path is one step kernel `$kernel` from `$min`
/// tokens (Q2_K, Q5_K, Q6_K; Q4_K picks between two kernels and writes its own):
/// `install` (records the AVX512 kernel for smaller tiles, returns the AMX one),
/// `pretransposed` (the call-wide records for tiles of up to `tokens` tokens, `None` where
/// `gemm` takes the AVX512 kernel) and `gemm` itself. One static per format holds the
/// lower kernel, hence a macro rather than a generic function.
macro_rules! single_step_entry_points {
    ($kernel:ty, $min:expr) => {
        /// The kernel of the level below (AVX512), for small token counts.
        static LOWER: std::sync::OnceLock<$crate::cpu::dispatch::GemmFn> =
            std::sync::OnceLock::new();

        /// Records `lower` as the kernel for tiles with few tokens; returns the AMX kernel.
        pub(crate) fn install(
            lower: $crate::cpu::dispatch::GemmFn,
        ) -> $crate::cpu::dispatch::GemmFn {
            let _ = LOWER.set(lower);
            gemm
        }

        /// The pipeline over call-wide records for tiles of up to `tokens` tokens, `None`
        /// where [`gemm`] takes the AVX512 kernel.
        pub(in $crate::cpu::amx) fn pretransposed(
            tokens: usize,
        ) -> Option<$crate::cpu::amx::kquant::Pretransposed> {
            (tokens >= $min).then($crate::cpu::amx::kquant::Pretransposed::of::<$kernel>)
        }

        /// # Safety
        /// As [`GemmFn`]($crate::cpu::dispatch::GemmFn): valid tile extents, exclusive
        /// output, `Isa::Amx.check()` passed.
        pub(crate) unsafe fn gemm(t: &$crate::cpu::dispatch::GemmTile) {
            // SAFETY: forwarded.
            unsafe { $crate::cpu::amx::kquant::gemm_or_lower::<$kernel>(t, &LOWER, $min) };
        }
    };
}
pub(super) use single_step_entry_points;

/// The pipeline in the frame that fits the tile's tokens.
///
/// # Safety
/// As [`gemm_amx`].
unsafe fn gemm_sized<K: StepKernel>(t: &GemmTile, records: *const K::Acts) {
    // SAFETY (both): forwarded.
    if t.tokens <= SMALL_TOKENS {
        unsafe { gemm_amx::<K, SMALL_GROUPS, SMALL_RECORDS>(t, records) };
    } else {
        unsafe { gemm_amx::<K, LARGE_GROUPS, LARGE_RECORDS>(t, records) };
    }
}

/// A step kernel's pipeline over activations transposed once per call instead of once
/// per work item: the driver makes the records of every (token group, super-block) with
/// `transpose` in one parallel pass, and every item of the product reads them through
/// `gemm`. Items of few rows (1408x2048 at 16 threads: 64 rows, four row blocks per
/// 128-token block) otherwise spend a quarter of their time re-transposing.
#[derive(Clone, Copy)]
pub(crate) struct Pretransposed {
    /// Bytes of one record (a multiple of 64, the records' alignment).
    pub record_bytes: usize,
    /// Elements of K per record (a multiple of the activation format's block).
    pub elems: usize,
    /// Transposes super-blocks (steps of `elems`) `s0..s0 + ns` of one token group (`n`
    /// tokens, 1..=16) into `ns` records.
    pub transpose: TransposeFn,
    /// The product of one tile over its records: those of its first token group (a
    /// multiple of 16 tokens into the call) onwards, `k / elems` records a group.
    pub gemm: RecordsGemmFn,
}

/// `transpose(a, a_stride, n, ns, dst)`: `a` points at super-block `s0` of the group's
/// first Q8_K row, `dst` at the record of (group, `s0`).
pub(crate) type TransposeFn = unsafe fn(*const u8, usize, usize, usize, *mut u8);
/// `gemm(tile, records)`.
pub(crate) type RecordsGemmFn = unsafe fn(&GemmTile, *const u8);

impl Pretransposed {
    /// The pipeline of `qtype` over records for tiles of up to `tokens` tokens of `k`
    /// elements, `None` where that format's AMX kernel would hand such tiles to the AVX512
    /// one (or has no AMX kernel in this pipeline). Only for the AMX table's kernels of
    /// `qtype` (the caller checks that the table has them).
    pub(crate) fn for_format(qtype: QType, k: usize, tokens: usize) -> Option<Pretransposed> {
        match qtype {
            QType::Q4_K => super::q4_k::pretransposed(tokens),
            QType::Q5_K => super::q5_k::pretransposed(tokens),
            QType::Q2_K => super::q2_k::pretransposed(tokens),
            QType::Q3_K => super::q3_k::pretransposed(tokens),
            QType::Q6_K => super::q6_k::pretransposed(tokens),
            QType::Q8_0 => super::q8_0::pretransposed(tokens),
            QType::Q4_0 => super::nibbles::q4_0::pretransposed(tokens),
            QType::Q5_0 => super::nibbles::q5_0::pretransposed(tokens),
            QType::Q4_1 => super::nibbles::q4_1::pretransposed(tokens),
            QType::Q5_1 => super::nibbles::q5_1::pretransposed(tokens),
            _ => None,
        }
        .filter(|p| k.is_multiple_of(p.elems))
    }

    pub(super) fn of<K: StepKernel>() -> Pretransposed {
        Pretransposed {
            record_bytes: size_of::<K::Acts>(),
            elems: K::ELEMS,
            transpose: transpose_records::<K>,
            gemm: gemm_records::<K>,
        }
    }
}

/// # Safety
/// `n` (1..=16) Q8_K rows `stride` bytes apart hold `ns` whole blocks from `a`; `dst` is
/// 64-byte aligned and writable for `ns` records of `K`.
unsafe fn transpose_records<K: StepKernel>(
    a: *const u8,
    stride: usize,
    n: usize,
    ns: usize,
    dst: *mut u8,
) {
    debug_assert!((1..=TG).contains(&n) && dst.align_offset(align_of::<K::Acts>()) == 0);
    for s in 0..ns {
        // SAFETY: block s < ns of each of the n rows is readable, record s is writable
        // (caller).
        unsafe {
            K::transpose_acts(
                a.add(s * K::A_BYTES),
                stride,
                n,
                dst.cast::<K::Acts>().add(s),
            )
        };
    }
}

/// # Safety
/// As [`GemmFn`] for AMX and whole super-blocks; `records` holds the initialised records
/// of the tile's token groups (`tokens.div_ceil(16)` groups of `k / K::ELEMS`), 64-byte
/// aligned.
unsafe fn gemm_records<K: StepKernel>(t: &GemmTile, records: *const u8) {
    debug_assert!(t.k.is_multiple_of(K::ELEMS) && !records.is_null());
    // SAFETY: forwarded.
    unsafe { gemm_sized::<K>(t, records.cast()) };
}

/// The pipeline with `G` token groups per token block and `R` activation records. With
/// `records` null it transposes each token block's activations into its own `R` records
/// per K chunk; otherwise it reads the call's records (see [`Pretransposed`]).
///
/// # Safety
/// As [`GemmFn`]: valid tile extents, exclusive output, `Isa::Amx.check()` passed;
/// `records` null or as [`gemm_records`] says.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,f16c")]
unsafe fn gemm_amx<K: StepKernel, const G: usize, const R: usize>(
    t: &GemmTile,
    records: *const K::Acts,
) {
    let nsb = t.k / K::ELEMS;
    let mut acts = MaybeUninit::<[K::Acts; R]>::uninit();
    let acts = acts.as_mut_ptr().cast::<K::Acts>();
    let mut wbuf = MaybeUninit::<[K::Weights; WBUFS]>::uninit();
    let wbuf = wbuf.as_mut_ptr().cast::<K::Weights>();
    let mut cbuf = MaybeUninit::<[K::Products; 2]>::uninit();
    let cbuf = cbuf.as_mut_ptr().cast::<K::Products>();
    // Accumulators of the row blocks in flight (by parity): group g, row n at
    // [g][n] (16 tokens each).
    let mut acc = [[[_mm512_setzero_ps(); TR]; G]; 2];
    let mut loaded_rows = 0;
    for t0 in (0..t.tokens).step_by(G * TG) {
        let ntb = (G * TG).min(t.tokens - t0);
        let ng = ntb.div_ceil(TG);
        // As few K chunks as the records allow, of even length (7168 = 28 super-blocks in
        // 7 + 7 + 7 + 7 for eight groups, not 8 + 8 + 8 + 4). Over the call's records one
        // chunk: the chunks only bound this frame's records, and each one costs a pass of
        // the accumulators through the output and a drained pipeline. Device, session 19
        // (call A, one process a format, the two taking turns call by call, two rounds),
        // Q8_0 at 512 tokens, ms: 2048x7168 4.58 -> 4.41 and 4.41 -> 4.16, 7168x2048 3.76
        // -> 3.63 and 3.75 -> 3.61, 2048x1408 0.952 -> 0.917 and 0.890 -> 0.852; the
        // K-quants (fewer, longer steps a chunk) level. Prefetching the records a step
        // needs 2 or 4 steps ahead (L1 or L2) while the first row block passes read level;
        // into L1 for every row block, 5-12% slower.
        let chunk = if records.is_null() {
            nsb.div_ceil(nsb.div_ceil(R / ng))
        } else {
            nsb
        };
        for c0 in (0..nsb).step_by(chunk) {
            let kc = chunk.min(nsb - c0);
            // The record of (token group g of this block, super-block c0 + s): in the
            // call's records, or in `acts` after the transposes below.
            let (rec_base, rec_group) = if records.is_null() {
                (acts.cast_const(), chunk)
            } else {
                // Group t0 / 16 + g < tokens.div_ceil(16) and super-block c0 + s < nsb:
                // one of the caller's records.
                (records.wrapping_add(t0 / TG * nsb + c0), nsb)
            };
            let rec = |g: usize, s: usize| rec_base.wrapping_add(g * rec_group + s);
            // Transposed here only without the call's records.
            for g in (0..ng).filter(|_| records.is_null()) {
                let first = t0 + g * TG;
                let n = TG.min(t.tokens - first);
                for s in 0..kc {
                    // SAFETY: tokens first..first + n are readable activation rows of
                    // the tile, super-block c0 + s < nsb of each; the record is inside
                    // `acts` (g * chunk + s < ng * chunk <= R).
                    unsafe {
                        K::transpose_acts(
                            t.a.add(first * t.a_stride + (c0 + s) * K::A_BYTES),
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
            // super-block L (counted over row blocks) is unpacked UNPACK_AHEAD
            // super-blocks ahead into weight buffer L % WBUFS. Accumulators alternate by
            // row block parity.
            let steps_rb = kc * ng;
            let nrb = t.rows.div_ceil(TR);
            let rows_of = |rb: usize| TR.min(t.rows - rb * TR);
            let wblock = |l: usize| {
                let (rb, s) = (l / kc, l % kc);
                // SAFETY (for callers): rb < nrb, s < kc: inside the tile's weights.
                t.w.wrapping_add(rb * TR * t.w_stride + (c0 + s) * K::W_BLOCK)
            };
            for l in 0..UNPACK_AHEAD.min(nrb * kc) {
                // SAFETY: super-block l of the chunk (counted over row blocks) is inside
                // the weights; buffer l is inside `wbuf`.
                unsafe { K::unpack(wblock(l), t.w_stride, rows_of(l / kc), wbuf.add(l)) };
            }
            let mut pending: Option<Pending<K::Acts>> = None;
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
                        // SAFETY: AMX usable (caller); a valid palette-1 configuration
                        // (loading it zeroes the tiles: the previous step stored its C).
                        unsafe { K::config(nr).load() };
                        loaded_rows = nr;
                    }
                }
                // SAFETY (whole block): every weight block named is inside the tile
                // (row block < nrb, super-block < c0 + kc); scratch indices are in
                // bounds (% WBUFS, & 1; g * chunk + s < R). Products read weight
                // buffer l % WBUFS, super-block l + UNPACK_AHEAD goes to its buffer, and
                // the step scaled here (step - 1: super-block l or l - 1) reads neither
                // that nor the C buffer written now.
                unsafe {
                    K::products(wbuf.add(l % WBUFS), rec(g, s), cbuf.add(step & 1));
                    let next = l + UNPACK_AHEAD;
                    if g == 0 && next < nrb * kc {
                        let ahead = l + PREFETCH;
                        let (pf, pf_rows) = if ahead < nrb * kc {
                            (wblock(ahead), rows_of(ahead / kc))
                        } else {
                            (std::ptr::null(), 0)
                        };
                        K::unpack_prefetching(
                            wblock(next),
                            t.w_stride,
                            rows_of(next / kc),
                            wbuf.add(next % WBUFS),
                            pf,
                            pf_rows,
                        );
                    }
                    let now = Pending {
                        cbuf: step & 1,
                        wbuf: l % WBUFS,
                        act: rec(g, s),
                        group: g,
                        block: rb,
                        last: i + 1 == steps_rb,
                    };
                    if let Some(p) = pending.replace(now) {
                        finish_step::<K, G>(t, p, cbuf, wbuf, &mut acc, t0, ng, c0 == 0);
                    }
                }
            }
            if let Some(p) = pending {
                // SAFETY: as above.
                unsafe { finish_step::<K, G>(t, p, cbuf, wbuf, &mut acc, t0, ng, c0 == 0) };
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
unsafe fn finish_step<K: StepKernel, const G: usize>(
    t: &GemmTile,
    p: Pending<K::Acts>,
    cbuf: *const K::Products,
    wbuf: *const K::Weights,
    acc: &mut [[[__m512; TR]; G]; 2],
    t0: usize,
    ng: usize,
    first_chunk: bool,
) {
    let r0 = p.block * TR;
    let nr = TR.min(t.rows - r0);
    let acc = &mut acc[p.block & 1];
    // SAFETY: the caller's contract.
    unsafe {
        K::scale(
            cbuf.add(p.cbuf),
            wbuf.add(p.wbuf),
            p.act,
            nr,
            &mut acc[p.group],
        )
    };
    if !p.last {
        return;
    }
    // The accumulators hold 16 rows of 16 tokens; the output is token-major: one
    // transpose gives each token's 16 rows as a vector (masked to the block's rows).
    let rows: u16 = if nr == TR { u16::MAX } else { (1 << nr) - 1 };
    for (g, a) in acc.iter().enumerate().take(ng) {
        let first = t0 + g * TG;
        let n_tok = TG.min(t.tokens - first);
        let by_token = transpose16(&a.map(|v| _mm512_castps_si512(v)));
        for (tok, v) in by_token.iter().enumerate().take(n_tok) {
            let v = _mm512_castsi512_ps(*v);
            // SAFETY: token first + tok < tokens and rows r0..r0 + nr < rows (the mask):
            // inside the caller's output tile.
            unsafe {
                let o = t.out.add((first + tok) * t.ldo + r0);
                let v = if first_chunk {
                    v
                } else {
                    _mm512_add_ps(_mm512_maskz_loadu_ps(rows, o), v)
                };
                _mm512_mask_storeu_ps(o, rows, v);
            }
        }
    }
}

/// Prefetches one weight block (`bytes` long) of `nr` rows (`stride` bytes apart) into L2.
///
/// # Safety
/// The blocks lie inside the weights (a prefetch never faults, but the address
/// arithmetic must stay inside the allocation).
#[inline]
#[target_feature(enable = "sse")]
unsafe fn prefetch_rows(w: *const u8, bytes: usize, stride: usize, nr: usize) {
    for n in 0..nr {
        // SAFETY: block n is inside the weights (caller).
        unsafe { prefetch_block(w.add(n * stride), bytes) };
    }
}

/// Prefetches the `bytes` (> 0) at `b` into L2: every line they touch.
///
/// # Safety
/// `b..b + bytes` lies inside one allocation (a prefetch never faults).
#[inline]
#[target_feature(enable = "sse")]
pub(super) unsafe fn prefetch_block(b: *const u8, bytes: usize) {
    // SAFETY: offsets below `bytes` (caller).
    unsafe {
        for off in (0..bytes).step_by(64) {
            _mm_prefetch::<_MM_HINT_T1>(b.add(off).cast());
        }
        _mm_prefetch::<_MM_HINT_T1>(b.add(bytes - 1).cast());
    }
}
