//! The format-agnostic matmul driver: checks shapes, quantizes the activations once to
//! the weight format's activation type, cuts the product into tiles and hands them to
//! the pool. It never names a format: the kernels come from the dispatch table.

use std::cell::RefCell;

use super::cache_hint;
use super::dispatch::{self, FormatKernels, GemmTile};
use super::isa::{self, Isa};
use super::pool::{self, ThreadPool};
use crate::cpu::shared_ptr::Raw;
use crate::error::{KtError, Result};
use crate::quant::{reference, QType};
use crate::util::AlignedBuf;

/// Up to this many tokens the product is a GEMV: each work item is a block of rows
/// against all tokens, so every weight byte is read exactly once.
pub const GEMV_MAX_TOKENS: usize = 8;

/// Rows and tokens of one work item in the GEMM path. A kernel may prepare each weight
/// row once per item (AVX512 unpacks 128 rows of a 7168-wide Q4_K matrix into ~1.3 MB,
/// inside L2) and each activation row once per item, so large items amortize both, up
/// to where one item's activations no longer stay in cache (AVX512 Q4_K at 512 tokens:
/// 128 tokens beat 64 and 256). The driver halves them when there would be too few
/// items per thread.
const GEMM_ROW_BLOCK: usize = 128;
const GEMM_TOKEN_BLOCK: usize = 128;

/// GEMV work items per thread: at most [`GEMV_ITEMS_PER_THREAD`], fewer (down to
/// [`GEMV_MIN_ITEMS_PER_THREAD`]) when a thread's share of the weights is small. Every
/// item restarts the kernel (the activation repack, the weight prefetch's ramp), so a
/// small matrix gets few, large items: a V2-Lite expert matrix (1.6 MB of Q4_K) is ~100
/// KB per thread on 16 threads, a few microseconds. More than one per thread, so that a
/// thread that starts late or gets descheduled loses its share to several thieves (the
/// pool starts each thread on a contiguous share and lets the others steal from it); on
/// the 2-core dev VM with other load, 3 per thread measured 10-20% slower than 8 on Q4_K
/// 1408x2048 (800 KB per thread: 4 items).
const GEMV_ITEMS_PER_THREAD: usize = 4;
const GEMV_MIN_ITEMS_PER_THREAD: usize = 2;
/// Weight bytes of a GEMV item above which a share is cut into more items.
const GEMV_ITEM_BYTES: usize = 48 << 10;
/// A thread's share of the weights below which it is one item (each thread streams one
/// contiguous run): a share this small is a few microseconds of work, where the second
/// item a thread costs more than it protects. Device (16 threads, session 9, `kt-bench
/// pool`): one shared counter over 16 items of 2048 floats 4.7 µs a job, over 32 items
/// 6.4, against a 1408x2048 Q4_K GEMV of ~22 µs (101 KB a thread; Q6_K 148 KB).
const GEMV_ONE_ITEM_BYTES: usize = 160 << 10;
/// Fewest rows of a GEMV item (smaller matrices get fewer items), and the row multiple
/// item boundaries fall on (the widest register tile of the kernels is 4 rows).
const GEMV_MIN_ROWS: usize = 16;
const GEMV_ROW_ALIGN: usize = 4;

/// Records (AMX K-quant activations in the tile layout) per item of the pass that makes
/// them: ~2 µs of work.
#[cfg(target_arch = "x86_64")]
const RECORDS_PER_ITEM: usize = 8;

thread_local! {
    /// Quantized activations of the current call (grows once, then reused).
    static ACT_SCRATCH: RefCell<AlignedBuf> = const { RefCell::new(AlignedBuf::new()) };
    /// The AMX K-quant pipeline's activation records of the current call (grows once).
    #[cfg(target_arch = "x86_64")]
    static RECORD_SCRATCH: RefCell<AlignedBuf> = const { RefCell::new(AlignedBuf::new()) };
}

/// `out[t*rows + r] = sum_c W[r,c] * x[t*cols + c]` on the selected ISA
/// (`KT_ISA` or the best available), all cores of the global pool. Activations are
/// quantized to `qtype.vec_dot_type()` first, as a GGUF engine does.
pub fn matmul(
    qtype: QType,
    weights: &[u8],
    rows: usize,
    cols: usize,
    x: &[f32],
    tokens: usize,
    out: &mut [f32],
) -> Result<()> {
    matmul_with(
        isa::selected()?,
        pool::global(),
        qtype,
        weights,
        rows,
        cols,
        x,
        tokens,
        out,
    )
}

/// [`matmul`] on an explicit ISA and pool (tests run every ISA the machine has).
#[allow(clippy::too_many_arguments)]
pub fn matmul_with(
    isa: Isa,
    pool: &ThreadPool,
    qtype: QType,
    weights: &[u8],
    rows: usize,
    cols: usize,
    x: &[f32],
    tokens: usize,
    out: &mut [f32],
) -> Result<()> {
    // Cheap shape checks first, so a bad call fails before any work is done.
    check_weights(qtype, weights, rows, cols)?;
    check_len("activations x", x.len(), tokens * cols, qtype)?;
    check_len("output", out.len(), tokens * rows, qtype)?;
    let kernels = dispatch::table(isa)?.get(qtype)?;
    let act_row = kernels.act.row_bytes(cols)?;
    if rows == 0 || tokens == 0 {
        return Ok(());
    }
    ACT_SCRATCH.with(|scratch| {
        let mut scratch = scratch.borrow_mut();
        scratch.resize(tokens * act_row);
        let xq = Activations::Quantize {
            x,
            xq: scratch.as_mut_slice(),
        };
        run_tiles(
            pool, kernels, qtype, weights, rows, cols, xq, act_row, tokens, out,
        );
    });
    Ok(())
}

/// The activations of a product: quantized by the caller, or to be quantized into `xq`
/// (by the driver first, or by the AMX K-quant records pass, in runs of super-blocks of a
/// 16-token group, so the rows are transposed while still in cache).
enum Activations<'a> {
    Quantized(&'a [u8]),
    Quantize { x: &'a [f32], xq: &'a mut [u8] },
}

/// Bytes of one activation row of `cols` elements for weights of `qtype`.
pub fn act_row_bytes(qtype: QType, cols: usize) -> Result<usize> {
    qtype.vec_dot_type().row_bytes(cols)
}

/// Quantizes `tokens` rows of `x` into `xq` (rows of [`act_row_bytes`]) with the
/// activation quantizer of `qtype` on `isa`. Lets a caller quantize once and run
/// several products over the same activations (gate and up of an MLP).
pub fn quantize_activations_with(
    isa: Isa,
    pool: &ThreadPool,
    qtype: QType,
    x: &[f32],
    cols: usize,
    tokens: usize,
    xq: &mut [u8],
) -> Result<()> {
    let kernels = dispatch::table(isa)?.get(qtype)?;
    let act_row = kernels.act.row_bytes(cols)?;
    check_len("activations x", x.len(), tokens * cols, qtype)?;
    check_len(
        "quantized activations",
        xq.len(),
        tokens * act_row,
        kernels.act,
    )?;
    quantize_activations(pool, kernels, x, cols, tokens, act_row, xq);
    Ok(())
}

/// The product over activations already quantized by [`quantize_activations_with`].
#[allow(clippy::too_many_arguments)]
pub fn matmul_quantized_with(
    isa: Isa,
    pool: &ThreadPool,
    qtype: QType,
    weights: &[u8],
    rows: usize,
    cols: usize,
    xq: &[u8],
    tokens: usize,
    out: &mut [f32],
) -> Result<()> {
    check_weights(qtype, weights, rows, cols)?;
    let kernels = dispatch::table(isa)?.get(qtype)?;
    let act_row = kernels.act.row_bytes(cols)?;
    check_len(
        "quantized activations",
        xq.len(),
        tokens * act_row,
        kernels.act,
    )?;
    check_len("output", out.len(), tokens * rows, qtype)?;
    if rows > 0 && tokens > 0 {
        let xq = Activations::Quantized(xq);
        run_tiles(
            pool, kernels, qtype, weights, rows, cols, xq, act_row, tokens, out,
        );
    }
    Ok(())
}

/// The reference mode: weights dequantized to f32, activations kept in f32, sums in
/// f64. Same layout as [`matmul`]. Slow; used to check the fast path and to reproduce
/// an f32 engine.
pub fn matmul_f32_reference(
    qtype: QType,
    weights: &[u8],
    rows: usize,
    cols: usize,
    x: &[f32],
    tokens: usize,
    out: &mut [f32],
) -> Result<()> {
    check_weights(qtype, weights, rows, cols)?;
    check_len("activations x", x.len(), tokens * cols, qtype)?;
    check_len("output", out.len(), tokens * rows, qtype)?;
    if rows == 0 || tokens == 0 {
        return Ok(());
    }
    let row_bytes = qtype.row_bytes(cols)?;
    let out_ptr = Raw::new(out.as_mut_ptr());
    let block = 16;
    pool::global().for_each(rows.div_ceil(block), &|i, _| {
        let mut w = vec![0f32; cols];
        for r in i * block..((i + 1) * block).min(rows) {
            reference::dequantize(qtype, &weights[r * row_bytes..(r + 1) * row_bytes], &mut w);
            for t in 0..tokens {
                let xt = &x[t * cols..(t + 1) * cols];
                let s: f64 = w.iter().zip(xt).map(|(&a, &b)| a as f64 * b as f64).sum();
                // SAFETY: each (t, r) is written by exactly one work item (rows are
                // partitioned by i), and t * rows + r < tokens * rows = out.len().
                unsafe { *out_ptr.get().add(t * rows + r) = s as f32 };
            }
        }
    });
    Ok(())
}

fn check_weights(qtype: QType, weights: &[u8], rows: usize, cols: usize) -> Result<()> {
    let row = qtype.row_bytes(cols)?;
    let expected = rows.checked_mul(row).ok_or_else(|| KtError::Shape {
        op: "matmul",
        detail: format!("{rows} rows of {row} bytes overflow"),
    })?;
    if weights.len() != expected {
        return Err(KtError::Length {
            qtype,
            what: "weights",
            unit: "bytes",
            expected,
            got: weights.len(),
        });
    }
    Ok(())
}

fn check_len(what: &'static str, got: usize, expected: usize, qtype: QType) -> Result<()> {
    if got != expected {
        return Err(KtError::Length {
            qtype,
            what,
            unit: "elements",
            expected,
            got,
        });
    }
    Ok(())
}

fn quantize_activations(
    pool: &ThreadPool,
    kernels: &FormatKernels,
    x: &[f32],
    cols: usize,
    tokens: usize,
    act_row: usize,
    xq: &mut [u8],
) {
    let xq_ptr = Raw::new(xq.as_mut_ptr());
    // SAFETY: xq holds `tokens` rows (checked by the caller); each row is quantized once.
    let quantize_row = |t: usize| unsafe { quantize_row(kernels, x, cols, act_row, xq_ptr, t) };
    if tokens * cols < PARALLEL_QUANTIZE_ELEMS {
        (0..tokens).for_each(quantize_row);
    } else {
        pool.for_each(tokens, &|t, _| quantize_row(t));
    }
}

/// Quantizes token `t` of `x` (rows of `cols`) into row `t` of `xq` (rows of `act_row`).
///
/// # Safety
/// Row `t` of `x` exists and row `t` of `xq` is writable and written by no one else
/// meanwhile.
unsafe fn quantize_row(
    kernels: &FormatKernels,
    x: &[f32],
    cols: usize,
    act_row: usize,
    xq: Raw<u8>,
    t: usize,
) {
    let blocks = cols / kernels.act.block_elems();
    // SAFETY: forwarded; all blocks of the row.
    unsafe { quantize_blocks(kernels, x, cols, act_row, xq, t, 0..blocks) };
}

/// Quantizes activation blocks `blocks` of token `t` (elements `blocks.start * block ..
/// blocks.end * block` of its row) into the same blocks of row `t` of `xq`. Every
/// activation format quantizes each block on its own (a block carries its own scale), so
/// a row quantized in parts is the row quantized whole.
///
/// # Safety
/// Row `t` of `x` exists, `blocks.end <= cols / block`, and those blocks of row `t` of
/// `xq` are writable and written by no one else meanwhile.
unsafe fn quantize_blocks(
    kernels: &FormatKernels,
    x: &[f32],
    cols: usize,
    act_row: usize,
    xq: Raw<u8>,
    t: usize,
    blocks: std::ops::Range<usize>,
) {
    let (elems, bytes) = (kernels.act.block_elems(), kernels.act.block_bytes());
    let src = &x[t * cols + blocks.start * elems..t * cols + blocks.end * elems];
    // SAFETY: bytes [blocks.start * bytes, blocks.end * bytes) of row t of xq lie inside
    // the row (blocks.end * bytes <= act_row) and are the caller's to write.
    let dst = unsafe {
        std::slice::from_raw_parts_mut(
            xq.get().add(t * act_row + blocks.start * bytes),
            blocks.len() * bytes,
        )
    };
    // SAFETY: the table only holds quantizers this CPU can run; src is whole blocks.
    unsafe { (kernels.quantize_act)(src, dst) };
}

#[allow(clippy::too_many_arguments)]
fn run_tiles(
    pool: &ThreadPool,
    kernels: &FormatKernels,
    qtype: QType,
    weights: &[u8],
    rows: usize,
    cols: usize,
    xq: Activations,
    act_row: usize,
    tokens: usize,
    out: &mut [f32],
) {
    let (xq_ptr, x) = match xq {
        Activations::Quantized(xq) => (Raw::new(xq.as_ptr()), None),
        Activations::Quantize { x, xq } => (Raw::new(xq.as_mut_ptr().cast_const()), Some(x)),
    };
    let tiles = Tiles {
        qtype,
        k: cols,
        w: Raw::new(weights.as_ptr()),
        w_stride: qtype.row_bytes(cols).expect("checked by the caller"),
        a: xq_ptr,
        a_stride: act_row,
        out: Raw::new(out.as_mut_ptr()),
        ldo: rows,
    };
    #[cfg(target_arch = "x86_64")]
    if tokens > GEMV_MAX_TOKENS && kernels.gemm_isa == Isa::Amx {
        let items = AmxItems::new(rows, tokens, pool.threads());
        // The widest tile's tokens pick the step kernel, as in the per-tile kernels.
        let widest = items.token_block.min(tokens);
        if let Some(p) = super::amx::kquant::Pretransposed::for_format(qtype, cols, widest) {
            run_pretransposed(pool, kernels, &p, &tiles, x, tokens, &items);
            return;
        }
    }
    let w_stride = tiles.w_stride;
    let run = |r0: usize, nr: usize, t0: usize, nt: usize| {
        // SAFETY: the tile lies inside the checked weights (rows x w_stride), activations
        // (tokens x act_row) and output (tokens x rows); tiles of different items are
        // disjoint; the table only holds kernels this CPU can run.
        unsafe { (kernels.gemm)(&tiles.tile(r0, nr, t0, nt)) };
    };
    let gemv_items =
        (tokens <= GEMV_MAX_TOKENS).then(|| gemv_items(rows, w_stride, pool.threads()));
    if let (Some(items), Some(x)) = (gemv_items, x) {
        if items <= pool.threads() && tokens * cols < PARALLEL_QUANTIZE_ELEMS {
            let quantize = || {
                // SAFETY: xq came as `&mut [u8]` of `tokens` rows of act_row (checked),
                // borrowed for this whole call; only item 0 writes it, and the other items
                // read it only once item 0 marked it done.
                let xq = unsafe { std::slice::from_raw_parts_mut(xq_ptr.get(), tokens * act_row) };
                quantize_activations(pool, kernels, x, cols, tokens, act_row, xq);
            };
            let prefetch = |i: usize| {
                let r0 = gemv_bound(i, items, rows);
                let nr = (gemv_bound(i + 1, items, rows) - r0).min(GEMV_ROW_ALIGN);
                for r in r0..r0 + nr {
                    cache_hint::lines_l1(
                        tiles.w.at(r * w_stride),
                        w_stride.min(GEMV_WAIT_PREFETCH),
                    );
                }
            };
            let run_item = |i: usize| {
                let (r0, r1) = (gemv_bound(i, items, rows), gemv_bound(i + 1, items, rows));
                run(r0, r1 - r0, 0, tokens);
            };
            gemv_quantizing_first(pool, items, &quantize, &prefetch, &run_item);
            return;
        }
    }
    if let Some(x) = x {
        // SAFETY: xq came as `&mut [u8]` of `tokens` rows of act_row (checked), borrowed
        // for this whole call.
        let xq = unsafe { std::slice::from_raw_parts_mut(xq_ptr.get(), tokens * act_row) };
        quantize_activations(pool, kernels, x, cols, tokens, act_row, xq);
    }
    if let Some(items) = gemv_items {
        let item = |i: usize, _: usize| {
            let (r0, r1) = (gemv_bound(i, items, rows), gemv_bound(i + 1, items, rows));
            run(r0, r1 - r0, 0, tokens);
        };
        if items <= pool.threads() {
            // One item a thread (small matrices): item i on thread i, no counter at all
            // (every thread would otherwise take its turn on the counter's line twice).
            pool.for_each_static(items, &item);
        } else {
            // One shared counter, not per-thread shares: a GEMV has at most four items a
            // thread, and there the shares' end-of-job scan of every other thread's counter
            // costs more than the counter's line moving per claim (device, 16 threads,
            // session 5: a job of 16 items 3.3 -> 1.6-1.9 us, of 32 items 4.2-4.3 -> 3.0-3.3
            // us; a 1408x2048 Q4_K GEMV is ~20 us).
            pool.for_each_in_order(items, &item);
        }
        return;
    }
    let (row_block, token_block) = gemm_tile_sizes(rows, tokens, pool.threads());
    let token_blocks = tokens.div_ceil(token_block);
    let items = rows.div_ceil(row_block) * token_blocks;
    // Consecutive items share a weight block, so threads working side by side read the
    // same weights from the shared cache.
    let item = |i: usize| {
        let (rb, tb) = (i / token_blocks, i % token_blocks);
        let (r0, t0) = (rb * row_block, tb * token_block);
        (
            r0,
            row_block.min(rows - r0),
            t0,
            token_block.min(tokens - t0),
        )
    };
    pool.for_each(items, &|i, _| {
        let (r0, nr, t0, nt) = item(i);
        run(r0, nr, t0, nt);
    });
}

/// Activations of at least this many elements are quantized by the pool, fewer by the
/// calling thread alone.
const PARALLEL_QUANTIZE_ELEMS: usize = 1 << 16;

/// Bytes of each of its first [`GEMV_ROW_ALIGN`] rows (the kernels' widest register
/// tile) a GEMV item prefetches into L1 while it waits for the activations.
const GEMV_WAIT_PREFETCH: usize = 1 << 10;

/// A GEMV of one item a thread (`items <= threads`) whose activations still need
/// quantizing: the job is posted at once, item 0 (the caller's, which runs first)
/// quantizes them and raises a flag, and the other items prefetch the first lines of
/// their rows and wait for the flag, so the workers' wake-up and first DRAM misses
/// overlap the quantize instead of following it. Items never wait on a later one: item 0
/// runs first on the caller, and the caller runs a late worker's item only after it
/// (or inline, all items in order). If the quantize panics the waiters give up (their
/// items are not run) and the pool carries the panic to the caller.
/// Device (16 threads, `kt-bench gemv-probe`, 1408x2048, against the caller quantizing
/// before the post in the same process): session 11, as the probe's `static_rf`, -0.13 to
/// -0.78 µs a call, mean -0.46 (2.5%), six pairs; session 12, this library path, -1.03 to
/// +0.55 µs, mean -0.27 (1.4%), six of eight process-format pairs faster (Q4_K, Q6_K,
/// Q2_K; by process: level). Quantizing in parts, part `i` by item `i`, every item waiting
/// for all of them, read +1.04 and +0.48 µs there (dropped).
fn gemv_quantizing_first(
    pool: &ThreadPool,
    items: usize,
    quantize: &(dyn Fn() + Sync),
    prefetch: &(dyn Fn(usize) + Sync),
    run_item: &(dyn Fn(usize) + Sync),
) {
    let ready = Ready::default();
    pool.for_each_static(items, &|i, _| {
        if i == 0 {
            ready.publish(quantize);
        } else {
            prefetch(i);
            if !ready.wait() {
                return;
            }
        }
        run_item(i);
    });
}

/// Whether item 0's activations are written ([`Ready::PENDING`] by default): on a line
/// pair of its own (the waiters poll it while the caller writes the activations' lines).
#[derive(Default)]
#[repr(align(128))]
struct Ready(std::sync::atomic::AtomicU8);

impl Ready {
    const PENDING: u8 = 0;
    const DONE: u8 = 1;
    const FAILED: u8 = 2;

    /// Runs `work` and then marks it done (released to [`Ready::wait`]), or failed if
    /// it unwinds.
    fn publish(&self, work: &dyn Fn()) {
        use std::sync::atomic::{AtomicU8, Ordering};
        /// Marks the work failed while it unwinds.
        struct Unwinding<'a>(&'a AtomicU8);
        impl Drop for Unwinding<'_> {
            fn drop(&mut self) {
                self.0.store(Ready::FAILED, Ordering::Release);
            }
        }
        let guard = Unwinding(&self.0);
        work();
        std::mem::forget(guard);
        self.0.store(Self::DONE, Ordering::Release);
    }

    /// Spins until the work is published: true once what it wrote is visible to this
    /// thread, false if it failed.
    fn wait(&self) -> bool {
        use std::sync::atomic::Ordering;
        loop {
            match self.0.load(Ordering::Acquire) {
                Self::PENDING => std::hint::spin_loop(),
                Self::DONE => return true,
                _ => return false,
            }
        }
    }
}

/// An AMX K-quant product over activations transposed once for the call
/// ([`Pretransposed`](super::amx::kquant::Pretransposed)): one parallel pass makes the
/// records of every (16-token group, super-block), quantizing each group's rows first when
/// they come in f32, then the `items` tiles run over them.
#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
fn run_pretransposed(
    pool: &ThreadPool,
    kernels: &FormatKernels,
    p: &super::amx::kquant::Pretransposed,
    tiles: &Tiles,
    x: Option<&[f32]>,
    tokens: usize,
    items: &AmxItems,
) {
    const TG: usize = AmxItems::BLOCK;
    // Super-blocks: the pipeline's steps of `p.elems` (a Q8_K block, or several Q8_0 / Q8_1
    // ones), `per` activation blocks each.
    let (cols, act_row) = (tiles.k, tiles.a_stride);
    let per = p.elems / kernels.act.block_elems();
    let (nsb, a_block) = (cols / p.elems, per * kernels.act.block_bytes());
    let groups = tokens.div_ceil(TG);
    let chunks = record_chunks(nsb, groups, pool.threads());
    RECORD_SCRATCH.with(|scratch| {
        let mut scratch = scratch.borrow_mut();
        scratch.resize(groups * nsb * p.record_bytes);
        let rec = Raw::new(scratch.as_mut_slice().as_mut_ptr());
        // Short items (a few µs), few a thread: one shared counter, as the GEMV's.
        pool.for_each_in_order(groups * chunks, &|i, _| {
            let (g, c) = (i / chunks, i % chunks);
            let (s0, s1) = (run_bound(c, chunks, nsb), run_bound(c + 1, chunks, nsb));
            let ns = s1 - s0;
            let n = TG.min(tokens - g * TG);
            if let Some(x) = x {
                for t in g * TG..g * TG + n {
                    let blocks = s0 * per..(s0 + ns) * per;
                    // SAFETY: xq holds `tokens` rows (checked by the callers); super-blocks
                    // s0..s0 + ns of the group's rows (those activation blocks) are this
                    // item's alone.
                    unsafe { quantize_blocks(kernels, x, cols, act_row, tiles.a, t, blocks) };
                }
            }
            // SAFETY: tokens g*16..g*16 + n are rows of xq (tokens x act_row bytes, checked
            // by the callers; quantized above or by the caller), super-blocks s0..s0 + ns <
            // nsb of each; the records (g, s0..s0 + ns) lie inside the scratch (groups x nsb
            // records), written by this item only, 64-byte aligned (AlignedBuf,
            // record_bytes a multiple of 64).
            unsafe {
                (p.transpose)(
                    tiles.a.at(g * TG * act_row + s0 * a_block),
                    act_row,
                    n,
                    ns,
                    rec.get().add((g * nsb + s0) * p.record_bytes),
                )
            };
        });
        let rec = rec.get().cast_const() as usize;
        pool.for_each(items.count(), &|i, _| {
            let (r0, nr, t0, nt) = items.item(i);
            let tile = tiles.tile(r0, nr, t0, nt);
            // SAFETY: the tile lies inside the checked weights, activations and output,
            // tiles of different items are disjoint, the table holds AMX kernels (so AMX
            // passed its check); the records of its token groups (from t0 / 16, t0 a
            // multiple of 16) were all written by the pass above, which returned before
            // this one started.
            unsafe { (p.gemm)(&tile, (rec + t0 / TG * nsb * p.record_bytes) as *const u8) };
        });
    });
}

#[cfg(target_arch = "x86_64")]
/// Super-block runs each token group's records are made in (one item each): runs of about
/// [`RECORDS_PER_ITEM`] super-blocks, cut further (down to one super-block) until there
/// are [`RECORD_ITEMS_PER_THREAD`] items a thread. At 16 tokens a call has one group:
/// whole-group items left one thread quantizing and transposing all of it while the others
/// waited (dev VM, one thread: 16 rows of 7168 take 43 µs to quantize, of 2048 13 µs,
/// against a whole 16-token call of ~0.2 ms on the device's 16 threads, whose Q4_K was
/// 0.174 / 0.195 ms before the records pass and 0.192 / 0.228 with it). An item quantizes
/// its own super-blocks of the group's rows (the activation blocks are independent), so
/// the rows it transposes are in its cache.
fn record_chunks(nsb: usize, groups: usize, threads: usize) -> usize {
    nsb.div_ceil(RECORDS_PER_ITEM)
        .max((RECORD_ITEMS_PER_THREAD * threads).div_ceil(groups))
        .clamp(1, nsb.max(1))
}

/// First super-block of run `c` of `chunks` over `nsb`: near-equal runs, none empty while
/// `chunks <= nsb`; `run_bound(chunks) = nsb`.
#[cfg(target_arch = "x86_64")]
fn run_bound(c: usize, chunks: usize, nsb: usize) -> usize {
    c * nsb / chunks
}

/// Items of the records pass per thread where the super-blocks allow: four, as the AMX
/// GEMM items, so that a thread that starts late loses its share in small parts.
#[cfg(target_arch = "x86_64")]
const RECORD_ITEMS_PER_THREAD: usize = 4;

/// Items of a GEMV over `rows` rows of `row_bytes` on `threads`: per thread, one per
/// [`GEMV_ITEM_BYTES`] of its share within [`GEMV_MIN_ITEMS_PER_THREAD`]..=
/// [`GEMV_ITEMS_PER_THREAD`] (one below [`GEMV_ONE_ITEM_BYTES`]), fewer when items would
/// be smaller than [`GEMV_MIN_ROWS`];
/// a multiple of `threads` whenever there are at least as many items as threads (every
/// share then holds whole items).
fn gemv_items(rows: usize, row_bytes: usize, threads: usize) -> usize {
    let most = (rows / GEMV_MIN_ROWS).max(1);
    if most < threads {
        return most;
    }
    let share = rows.saturating_mul(row_bytes) / threads;
    let per_thread = if share < GEMV_ONE_ITEM_BYTES {
        1
    } else {
        (share / GEMV_ITEM_BYTES).clamp(GEMV_MIN_ITEMS_PER_THREAD, GEMV_ITEMS_PER_THREAD)
    };
    threads * per_thread.min(most / threads)
}

/// First row of GEMV item `i` of `items`: the rows cut evenly (item sizes differ by at
/// most [`GEMV_ROW_ALIGN`]), boundaries on multiples of it; `gemv_bound(items) = rows`.
/// Public for probes that split a GEMV the way the driver does (`kt-bench gemv-probe`).
pub fn gemv_bound(i: usize, items: usize, rows: usize) -> usize {
    if i >= items {
        rows
    } else {
        i * rows / items / GEMV_ROW_ALIGN * GEMV_ROW_ALIGN
    }
}

/// What every tile of one product shares: the weights, activation rows and output.
struct Tiles {
    qtype: QType,
    k: usize,
    w: Raw<u8>,
    w_stride: usize,
    a: Raw<u8>,
    a_stride: usize,
    out: Raw<f32>,
    ldo: usize,
}

impl Tiles {
    /// Rows `r0..r0 + nr` against tokens `t0..t0 + nt`.
    fn tile(&self, r0: usize, nr: usize, t0: usize, nt: usize) -> GemmTile {
        GemmTile {
            qtype: self.qtype,
            k: self.k,
            w: self.w.at(r0 * self.w_stride).cast_const(),
            w_stride: self.w_stride,
            rows: nr,
            a: self.a.at(t0 * self.a_stride).cast_const(),
            a_stride: self.a_stride,
            tokens: nt,
            out: self.out.at(t0 * self.ldo + r0),
            ldo: self.ldo,
        }
    }
}

/// The work items of an AMX K-quant GEMM over shared activation records: token blocks of
/// [`GEMM_TOKEN_BLOCK`] (the pipeline's widest frame: each unpacked weight block serves
/// eight 16-token groups), the rows cut into `ranges` near-equal runs of 16-row blocks.
/// With the activations transposed once per call an item's fixed cost is small (the
/// pipeline's first unpacking, the tile configuration: [`AMX_ITEM_COST_ROWS`]), so the
/// ranges are chosen for the shortest critical path: rounds of items per thread times the
/// largest item (plus [`AMX_TAIL_ITEMS`] where the call has several token blocks), at least
/// [`AMX_ITEMS_PER_THREAD`] items per thread where the rows allow (a late thread's share is
/// then stolen in small parts), at most [`GEMM_ROW_BLOCK`] rows an item.
#[cfg(target_arch = "x86_64")]
#[derive(Debug)]
struct AmxItems {
    rows: usize,
    tokens: usize,
    token_block: usize,
    token_blocks: usize,
    /// 16-row blocks of the matrix, and the ranges they are cut into.
    blocks: usize,
    ranges: usize,
}

/// What one AMX GEMM item's fixed costs weigh, in rows of its work.
#[cfg(target_arch = "x86_64")]
const AMX_ITEM_COST_ROWS: usize = 8;
/// Fewest AMX GEMM items per thread (where the rows allow). Four, not two: device (16
/// threads, one call, session 8), 16 tokens 2048x7168 in 32 items of 64 rows took Q4_K
/// 0.327 / 0.261 ms and Q2_K 0.222 / 0.215 against 0.229 / 0.222 and 0.143 / 0.146 in 64
/// of 32 (each item ~0.1 ms: a thread that starts late holds up the call), while
/// 7168x2048 in 64 items of 112 rows (four a thread) was level with 112 of 64.
#[cfg(target_arch = "x86_64")]
const AMX_ITEMS_PER_THREAD: usize = 4;
/// Items of slack in the critical path of a call with several token blocks: the threads do
/// not end their last items together, so the call ends up to about one item after the
/// rounds say. The items of such calls are long (128 tokens over the whole K), and so is
/// that slack: at 512 tokens on 16 threads it cuts 2048 rows into 64-row items (128 of
/// them) instead of 128-row ones (64), and 1408 into 32-row items (176) instead of 96
/// (64); the larger shapes keep theirs. Device, session 18 (calls A and B, one process
/// each, the partitions taking turns call by call), ms: Q8_0 2048x7168 5.15 -> 4.84 and
/// 5.09 -> 4.89, 1408x2048 1.10 -> 1.01 and 1.09 -> 1.00, 2048x1408 1.03 -> 0.98 and
/// 1.05 -> 1.00; Q4_K 2048x7168 4.57 -> 4.44 and 4.86 -> 4.59, 1408x2048 0.770 -> 0.739
/// and 0.946 -> 0.877.
#[cfg(target_arch = "x86_64")]
const AMX_TAIL_ITEMS: usize = 1;

#[cfg(target_arch = "x86_64")]
impl AmxItems {
    const BLOCK: usize = 16;

    fn new(rows: usize, tokens: usize, threads: usize) -> AmxItems {
        let token_block = GEMM_TOKEN_BLOCK.min(tokens.next_multiple_of(Self::BLOCK));
        let token_blocks = tokens.div_ceil(token_block);
        let blocks = rows.div_ceil(Self::BLOCK).max(1);
        let fewest = blocks.div_ceil(GEMM_ROW_BLOCK / Self::BLOCK);
        let want = (AMX_ITEMS_PER_THREAD * threads).min(blocks * token_blocks);
        let tail = if token_blocks > 1 { AMX_TAIL_ITEMS } else { 0 };
        let cost = |ranges: usize| {
            let rounds = (ranges * token_blocks).div_ceil(threads);
            (rounds + tail) * (blocks.div_ceil(ranges) * Self::BLOCK + AMX_ITEM_COST_ROWS)
        };
        let ranges = (fewest..=blocks)
            .filter(|&r| r * token_blocks >= want)
            .min_by_key(|&r| (cost(r), r))
            .unwrap_or(blocks);
        AmxItems {
            rows,
            tokens,
            token_block,
            token_blocks,
            blocks,
            ranges,
        }
    }

    fn count(&self) -> usize {
        self.ranges * self.token_blocks
    }

    /// Item `i`'s rows `r0..r0 + nr` and tokens `t0..t0 + nt` (`t0` a multiple of 16).
    /// Consecutive items share a row range, so threads working side by side read the same
    /// weights from the shared cache.
    fn item(&self, i: usize) -> (usize, usize, usize, usize) {
        let (r, tb) = (i / self.token_blocks, i % self.token_blocks);
        // Where the blocks do not divide evenly into the ranges, the range bounds of token
        // block `tb` move by `tb / token_blocks` of a range, so that the larger and smaller
        // ranges alternate across the token blocks and every range's items together hold
        // `token_blocks * blocks / ranges` blocks (+-1): a thread's share (consecutive
        // items: one range's token blocks) is then as long as any other's. 1408x2048 at
        // 256 tokens on 16 threads: 32 ranges of 2 or 3 blocks, shares of 10 or 12 blocks
        // without the shift, 11 with it.
        let shift = tb * self.ranges / self.token_blocks;
        let bound =
            |r: usize| ((r * self.blocks + shift) / self.ranges * Self::BLOCK).min(self.rows);
        let (r0, t0) = (bound(r), tb * self.token_block);
        (
            r0,
            bound(r + 1) - r0,
            t0,
            self.token_block.min(self.tokens - t0),
        )
    }
}

/// Row and token block of a GEMM work item: the largest blocks that still give about 4
/// items per thread.
fn gemm_tile_sizes(rows: usize, tokens: usize, threads: usize) -> (usize, usize) {
    let items_wanted = threads * 4;
    let (mut row_block, mut token_block) = (GEMM_ROW_BLOCK, GEMM_TOKEN_BLOCK);
    while rows.div_ceil(row_block) * tokens.div_ceil(token_block) < items_wanted {
        if token_block > row_block && token_block > 16 {
            token_block /= 2;
        } else if row_block > 16 {
            row_block /= 2;
        } else {
            break;
        }
    }
    (row_block, token_block)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gemv_items_cut_the_rows_evenly_on_aligned_bounds() {
        for (threads, row_bytes) in [1, 2, 3, 15, 16, 64]
            .into_iter()
            .flat_map(|t| [(t, 34), (t, 1152), (t, 4032), (t, 1 << 20)])
        {
            for rows in [1, 3, 15, 16, 17, 100, 1408, 2048, 7168, 18432] {
                let items = gemv_items(rows, row_bytes, threads);
                assert!(items >= 1 && items <= threads * GEMV_ITEMS_PER_THREAD);
                assert_eq!(gemv_bound(0, items, rows), 0);
                assert_eq!(gemv_bound(items, items, rows), rows);
                let sizes: Vec<usize> = (0..items)
                    .map(|i| gemv_bound(i + 1, items, rows) - gemv_bound(i, items, rows))
                    .collect();
                let (lo, hi) = (*sizes.iter().min().unwrap(), *sizes.iter().max().unwrap());
                if items >= threads {
                    // every thread's share holds whole items
                    assert_eq!(items % threads, 0, "rows {rows} threads {threads}");
                }
                assert!(lo >= 1, "rows {rows} threads {threads}: an empty item");
                assert!(
                    hi - lo <= 2 * GEMV_ROW_ALIGN,
                    "rows {rows} threads {threads}: sizes {lo}..{hi}"
                );
                for i in 1..items {
                    assert_eq!(gemv_bound(i, items, rows) % GEMV_ROW_ALIGN, 0);
                }
                if rows >= GEMV_MIN_ROWS {
                    assert!(
                        lo + GEMV_ROW_ALIGN >= GEMV_MIN_ROWS.min(rows),
                        "rows {rows} threads {threads}: item of {lo}"
                    );
                }
            }
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn amx_items_cover_the_product_once_in_aligned_items() {
        for threads in [1, 2, 3, 15, 16, 64] {
            for rows in [1, 15, 16, 17, 100, 1408, 2048, 7168, 18432] {
                for tokens in [9, 16, 17, 64, 65, 128, 129, 512, 513] {
                    let items = AmxItems::new(rows, tokens, threads);
                    let what = format!("rows {rows} tokens {tokens} threads {threads}: {items:?}");
                    let mut seen = vec![0u8; rows * tokens];
                    for i in 0..items.count() {
                        let (r0, nr, t0, nt) = items.item(i);
                        assert!((1..=GEMM_ROW_BLOCK).contains(&nr) && nt >= 1, "{what}");
                        assert!(nt <= GEMM_TOKEN_BLOCK, "{what}");
                        assert_eq!((r0 % 16, t0 % 16), (0, 0), "{what}");
                        for t in t0..t0 + nt {
                            for r in r0..r0 + nr {
                                seen[t * rows + r] += 1;
                            }
                        }
                    }
                    assert!(seen.iter().all(|&c| c == 1), "{what}");
                    let blocks = rows.div_ceil(16) * tokens.div_ceil(GEMM_TOKEN_BLOCK);
                    let most = (AMX_ITEMS_PER_THREAD * threads).min(blocks);
                    assert!(items.count() >= most, "{what}");
                }
            }
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn amx_items_balance_the_device_shapes() {
        // (rows, tokens) -> (items, largest rows) on 16 threads
        for (rows, tokens, want) in [
            (1408, 512, (176, 32)),
            (2048, 512, (128, 64)),
            (18432, 512, (576, 128)),
            (7168, 512, (224, 128)),
            (7168, 16, (64, 112)),
            (2048, 16, (64, 32)),
            (1408, 16, (88, 16)),
        ] {
            let items = AmxItems::new(rows, tokens, 16);
            let largest = (0..items.count()).map(|i| items.item(i).1).max().unwrap();
            assert_eq!((items.count(), largest), want, "{rows}x{tokens}: {items:?}");
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn amx_items_give_every_thread_an_equal_share() {
        // The pool starts each thread on its contiguous share of the items (`shares`): the
        // blocks of each share, for shapes whose blocks do not divide into the ranges.
        for (rows, tokens, threads) in [
            (1408, 512, 16),
            (1408, 256, 16),
            (1408, 512, 8),
            (2816, 512, 16),
            (1408, 512, 2),
            (100, 512, 3),
        ] {
            let items = AmxItems::new(rows, tokens, threads);
            let what = format!("{rows}x{tokens} on {threads}: {items:?}");
            let shares: Vec<usize> = crate::cpu::pool::shares(items.count(), threads)
                .map(|share| {
                    share
                        .map(|i| {
                            let (_, nr, _, nt) = items.item(i);
                            nr.div_ceil(16) * nt.div_ceil(16)
                        })
                        .sum()
                })
                .collect();
            let (lo, hi) = (*shares.iter().min().unwrap(), *shares.iter().max().unwrap());
            // one 16-row block of one token block (8 groups) apart at most
            assert!(hi - lo <= GEMM_TOKEN_BLOCK / 16, "{what}: {shares:?}");
        }
        // 1408x2048 at 256 tokens on 16 threads: 32 ranges of 2 or 3 blocks, 4 items a
        // thread, 11 blocks of 8 groups each
        let items = AmxItems::new(1408, 256, 16);
        assert_eq!(items.count(), 64, "{items:?}");
        for t in 0..16 {
            let blocks: usize = (4 * t..4 * t + 4).map(|i| items.item(i).1 / 16).sum();
            assert_eq!(blocks, 11, "thread {t}");
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn record_chunks_cut_every_group_into_near_equal_nonempty_runs() {
        for threads in [1, 2, 16, 64] {
            for nsb in [0, 1, 5, 8, 9, 17, 28, 72] {
                for groups in [1, 2, 3, 32, 33] {
                    let what = format!("nsb {nsb} groups {groups} threads {threads}");
                    let chunks = record_chunks(nsb, groups, threads);
                    assert!(chunks >= 1 && chunks <= nsb.max(1), "{what}: {chunks}");
                    // the driver's runs: contiguous, covering 0..nsb, near-equal, none empty
                    assert_eq!(run_bound(0, chunks, nsb), 0, "{what}");
                    assert_eq!(run_bound(chunks, chunks, nsb), nsb, "{what}");
                    let sizes: Vec<usize> = (0..chunks)
                        .map(|c| run_bound(c + 1, chunks, nsb) - run_bound(c, chunks, nsb))
                        .collect();
                    let (lo, hi) = (*sizes.iter().min().unwrap(), *sizes.iter().max().unwrap());
                    assert!(hi - lo <= 1 && (lo >= 1 || nsb == 0), "{what}: {sizes:?}");
                    assert!(hi <= RECORDS_PER_ITEM, "{what}: {sizes:?}");
                    // four items a thread where the super-blocks allow
                    let want = (RECORD_ITEMS_PER_THREAD * threads).min(groups * nsb);
                    assert!(groups * chunks >= want, "{what}");
                }
            }
        }
        // one 16-token group of a 7168-long row on 16 threads: one super-block an item
        assert_eq!(record_chunks(28, 1, 16), 28);
        // 512 tokens of a 2048-long row on 16 threads: two runs of four a group
        assert_eq!(record_chunks(8, 32, 16), 2);
    }

    #[test]
    fn ready_releases_the_waiters_or_tells_them_it_failed() {
        let ready = Ready::default();
        let mut runs = std::sync::atomic::AtomicUsize::new(0);
        ready.publish(&|| {
            runs.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        });
        assert!(ready.wait());
        assert_eq!(*runs.get_mut(), 1);
        let failed = Ready::default();
        let unwound = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            failed.publish(&|| panic!("the quantize fails"))
        }));
        assert!(unwound.is_err());
        assert!(!failed.wait());
    }

    #[test]
    fn a_panicking_gemv_quantize_reaches_the_caller_and_no_waiter_hangs() {
        let pool = ThreadPool::new(4).unwrap();
        let ran = std::sync::atomic::AtomicUsize::new(0);
        let unwound = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            gemv_quantizing_first(&pool, 4, &|| panic!("the quantize fails"), &|_| {}, &|_| {
                ran.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            })
        }));
        assert!(unwound.is_err());
        assert_eq!(
            ran.into_inner(),
            0,
            "no item runs on unquantized activations"
        );
        // the pool still works
        let ran = std::sync::atomic::AtomicUsize::new(0);
        gemv_quantizing_first(&pool, 4, &|| {}, &|_| {}, &|_| {
            ran.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        });
        assert_eq!(ran.into_inner(), 4);
    }

    #[test]
    fn gemv_items_grow_with_the_share_of_weights() {
        // V2-Lite expert, Q4_K (1152 bytes a row of 2048), 16 threads: 100 KB a thread,
        // one item each; Q6_K (1680 bytes) 148 KB, one item
        assert_eq!(gemv_items(1408, 1152, 16), 16);
        assert_eq!(gemv_items(1408, 1680, 16), 16);
        // the same on 2 threads: 800 KB a thread, four items
        assert_eq!(gemv_items(1408, 1152, 2), 2 * GEMV_ITEMS_PER_THREAD);
        // just above the one-item share: the minimum of two or more
        let rows = GEMV_ONE_ITEM_BYTES * 16 / 1152 + 16;
        assert!(gemv_items(rows, 1152, 16) >= 16 * GEMV_MIN_ITEMS_PER_THREAD);
        // V3 expert, Q4_K (4032 bytes a row of 7168), 16 threads: 516 KB a thread
        assert_eq!(gemv_items(2048, 4032, 16), 16 * GEMV_ITEMS_PER_THREAD);
        // in between: 3 items of ~56 KB (a share of 168 KB)
        let rows = (GEMV_ONE_ITEM_BYTES + (8 << 10)) * 16 / 1152 + 1;
        assert_eq!(gemv_items(rows, 1152, 16), 16 * 3);
    }
}
