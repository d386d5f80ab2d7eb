//! The phases of one MoE call (see the module docs): quantize and gather, gate+up,
//! quantize the intermediate, down, combine. Every kernel comes from the dispatch table;
//! this file never names a format. In decode (no expert with more than
//! `GEMV_MAX_TOKENS` positions) gate+up, the intermediate's quantization and down run as
//! one pool job with per-expert readiness instead of three phases, the combine included
//! ([`fused`]).
//!
//! Threads write disjoint parts of the scratch through raw pointers: each phase's items
//! partition its output (positions x rows), which `plan.rs` tests.

use std::sync::atomic::AtomicU32;

use super::combine::{combine, InJob};
use super::fused_job;
use super::layer::LayerInner;
use super::phase::{phase, SERIAL_ELEMS};
use super::plan::{Item, MAX_ITEM_FLOATS};
use super::scratch::{Scratch, TILE_FLOATS};
use super::silu::silu_mul_with;
use super::{plan, routing::Routing};
use crate::cpu::dispatch::{self, FormatKernels, GemmTile};
use crate::cpu::shared_ptr::Raw;
use crate::cpu::{Isa, ThreadPool, GEMV_MAX_TOKENS};
use crate::error::Result;
use crate::quant::QType;

/// Runs the call described by `s` (layer, tokens, inputs) on `pool`, leaving the result
/// in `s.out[..tokens * hidden]`.
pub(crate) fn run(s: &mut Scratch, pool: &ThreadPool, isa: Isa) -> Result<()> {
    let Some(layer) = s.layer.clone() else {
        return Ok(());
    };
    let l: &LayerInner = &layer.inner;
    let (tokens, k) = (s.tokens, s.top_k);
    if tokens == 0 {
        return Ok(());
    }
    let pairs = tokens * k;
    let table = dispatch::table(isa)?;
    let (kg, ku, kd) = (
        table.get(l.gate.qtype())?,
        table.get(l.up.qtype())?,
        table.get(l.down.qtype())?,
    );
    let h = l.hidden;
    let n_inter = l.slice.len();
    let dims = Dims {
        isa,
        h,
        n_inter,
        slice0: l.slice.start,
        act_g: l.act_row_gate,
        act_u: l.act_row_up,
        act_d: l.act_row_down,
    };
    assert!(
        s.tiles.len() >= pool.threads() * TILE_FLOATS,
        "tile scratch sized for another pool"
    );

    let Scratch {
        x,
        ids,
        weights,
        out,
        routing,
        items_up,
        items_down,
        act_gate,
        act_up,
        inter,
        inter_q,
        down_out,
        tiles,
        expert_state,
        block_state,
        read_row,
        primed,
        ..
    } = s;
    routing.route(&ids[..pairs], l.experts);
    // the experts in the order a prefetch before the call warmed them (prefetch.rs)
    routing.order_like(primed.order());
    let (qg, qu, qd) = (l.gate.qtype(), l.up.qtype(), l.down.qtype());
    let tail_g = amx_q4k_tail(kg, qg).min(amx_q4k_tail(ku, qu));
    let rows_g = busy_rows(kg, qg).min(busy_rows(ku, qu));
    plan::build(items_up, routing, l.slice.clone(), rows_g, tail_g);
    let (rows_d, tail_d) = (busy_rows(kd, qd), amx_q4k_tail(kd, qd));
    plan::build(items_down, routing, 0..h, rows_d, tail_d);
    let inter = &mut inter[..pairs * n_inter];
    let down_out = &mut down_out[..pairs * h];
    if cfg!(debug_assertions) {
        // An element no item writes would otherwise keep the previous call's value.
        inter.fill(f32::NAN);
        down_out.fill(f32::NAN);
    }

    let pos_of = &routing.pos_of[..pairs];
    let decode = routing
        .active()
        .iter()
        .all(|&e| routing.counts[e as usize] as usize <= GEMV_MAX_TOKENS);
    // (With one thread the phased path runs: tests comparing thread counts therefore
    // also check that both paths give bit-identical results.)
    let fuse = decode && pool.threads() > 1;
    let copies = if fuse {
        Copies::Shared {
            ids: &ids[..pairs],
            counts: &routing.counts,
        }
    } else {
        Copies::All
    };
    let act_gate = &mut act_gate.as_mut_slice()[..pairs * dims.act_g];
    let xs = &x[..tokens * h];
    quantize_gather(pool, kg, xs, h, k, pos_of, copies, act_gate, dims.act_g);
    let act_up: &[u8] = if ku.act == kg.act {
        act_gate
    } else {
        let buf = &mut act_up.as_mut_slice()[..pairs * dims.act_u];
        quantize_gather(pool, ku, xs, h, k, pos_of, copies, buf, dims.act_u);
        buf
    };
    let inter_q = &mut inter_q.as_mut_slice()[..pairs * dims.act_d];
    if fuse {
        let read_row = &mut read_row[..pairs];
        read_rows(pos_of, k, copies, read_row);
        let kernels = Kernels {
            gate: kg,
            up: ku,
            down: kd,
        };
        let combine = InJob::new(
            block_state,
            items_down,
            pos_of,
            &weights[..pairs],
            down_out,
            &mut out[..tokens * h],
            h,
            k,
        );
        let bufs = Bufs {
            act_g: act_gate,
            act_u: act_up,
            read_row,
            inter,
            inter_q,
            combine,
            tiles,
        };
        fused(
            pool,
            l,
            &kernels,
            &dims,
            routing,
            items_up,
            items_down,
            bufs,
            &mut expert_state[..l.experts],
            primed.rounds,
        );
    } else {
        gate_up(
            pool, l, kg, ku, &dims, items_up, act_gate, act_up, inter, tiles,
        );
        quantize_rows(pool, kd, inter, n_inter, inter_q, dims.act_d);
        down(pool, l, kd, &dims, items_down, inter_q, down_out);
        let (w, o) = (&weights[..pairs], &mut out[..tokens * h]);
        combine(pool, pos_of, down_out, h, k, w, o);
    }
    Ok(())
}

/// The longest tail of a busy expert's positions given an item of its own when the
/// projection runs the AMX Q4_K GEMM (0 otherwise; see `plan::token_blocks`). That
/// kernel works in groups of 16 tokens; below `AMX_MIN_TOKENS` (10) it hands a tile to
/// the AVX512 kernel. One thread, one 2048 x 7168 tile, weights resident (dev VM, best
/// of 5): AMX 1.42 ms at 16 tokens and 2.32-2.40 at 17-32; AVX512 0.33 / 0.58 / 0.75 /
/// 0.75 / 0.92 ms at 1 / 2 / 3 / 4 / 5 tokens. So 16 + r tokens cost 1.75 / 2.00 / 2.17
/// / 2.17 ms split against 2.32 in one tile for r = 1..4, and the same at r = 5: at V3
/// prefill's ~16 tokens per expert about a fifth of the experts have 17-20. At 16 threads,
/// where the threads share the AMX units, longer tails pay: device, V3 Q4_K 512 tokens in
/// one process (four processes, session 12), AMX from 10 tokens with tails up to 6 ran
/// 2.9% faster than base (from 12, up to 4; -4.4 / -4.6 / -2.5 / -0.2%), up to 8 2.6%,
/// up to 4 1.6%; no split at all (with the folded kernel) +9.3 / -3.0 / +2.6%.
fn amx_q4k_tail(kern: &FormatKernels, qtype: QType) -> usize {
    if kern.gemm_isa == Isa::Amx && qtype == QType::Q4_K {
        AMX_Q4K_TAIL
    } else {
        0
    }
}

const AMX_Q4K_TAIL: usize = 6;
// A tail item must stay below the AMX kernel's threshold, so that it runs on AVX512.
#[cfg(target_arch = "x86_64")]
const _: () = assert!(AMX_Q4K_TAIL < crate::cpu::amx::q4_k::AMX_MIN_TOKENS);

/// Rows per busy item: larger where the projection's GEMM is the AMX K-quant pipeline
/// (see `plan::AMX_KQUANT_ROW_BLOCK`); the other kernels keep the size they were tuned at.
fn busy_rows(kern: &FormatKernels, qtype: QType) -> usize {
    if kern.gemm_isa == Isa::Amx && qtype.is_k_quant() {
        plan::AMX_KQUANT_ROW_BLOCK
    } else {
        plan::GEMM_ROW_BLOCK
    }
}

/// Row sizes of one call: hidden and intermediate (slice) lengths, the slice's first
/// intermediate row, and the activation row bytes of gate, up and down; and the ISA of
/// the call's vector code outside the kernels (the SiLU).
struct Dims {
    isa: Isa,
    h: usize,
    n_inter: usize,
    slice0: usize,
    act_g: usize,
    act_u: usize,
    act_d: usize,
}

/// Which of a token's positions get a copy of its quantized activation row.
#[derive(Clone, Copy)]
enum Copies<'a> {
    /// Every position (the phased path, whose GEMM tiles read an item's positions as
    /// consecutive rows).
    All,
    /// Only the positions of experts with more than one position, whose items read
    /// consecutive rows; an item of one position reads its token's first position's row
    /// ([`read_rows`]). At one token that is no copy at all: a DeepSeek-V3 call at 16
    /// threads spent 17-20 us before its job with the k - 1 copies, 10-13 without
    /// (device, session 24; likely because each copy rewrites lines other cores read the
    /// call before).
    Shared { ids: &'a [u32], counts: &'a [u32] },
}

impl Copies<'_> {
    /// Whether pair `i` (token `i / k`, slot `i % k`) gets its own row.
    fn copy(&self, i: usize) -> bool {
        match *self {
            Copies::All => true,
            Copies::Shared { ids, counts } => counts[ids[i] as usize] > 1,
        }
    }
}

/// Quantizes each token's activations once, into the row of the token's first position,
/// and copies them to the token's other positions as `copies` says.
#[allow(clippy::too_many_arguments)]
fn quantize_gather(
    pool: &ThreadPool,
    kern: &FormatKernels,
    x: &[f32],
    h: usize,
    k: usize,
    pos_of: &[u32],
    copies: Copies,
    dst: &mut [u8],
    row: usize,
) {
    let tokens = x.len() / h;
    debug_assert_eq!(dst.len(), tokens * k * row);
    let dst = Raw::new(dst.as_mut_ptr());
    phase(pool, tokens, tokens * h, &|t, _| {
        let slots = &pos_of[t * k..(t + 1) * k];
        let first = slots[0] as usize;
        // SAFETY: positions are a permutation of 0..tokens * k (the counting sort), so the
        // rows of token t's slots belong to this item only, and each lies inside `dst`
        // (tokens * k rows of `row` bytes).
        let first_row = unsafe { std::slice::from_raw_parts_mut(dst.at(first * row), row) };
        // SAFETY: the table only holds quantizers this CPU can run.
        unsafe { (kern.quantize_act)(&x[t * h..(t + 1) * h], first_row) };
        for (s, &p) in slots.iter().enumerate().skip(1) {
            if copies.copy(t * k + s) {
                // SAFETY: as above; rows of distinct positions do not overlap.
                unsafe {
                    std::ptr::copy_nonoverlapping(
                        dst.at(first * row),
                        dst.at(p as usize * row),
                        row,
                    )
                };
            }
        }
    });
}

/// The activation row each position's items read under [`Copies::Shared`]: its own where
/// it got a copy (or is its token's first position), else its token's first position's.
fn read_rows(pos_of: &[u32], k: usize, copies: Copies, rows: &mut [u32]) {
    for (i, &p) in pos_of.iter().enumerate() {
        let first = pos_of[i - i % k];
        rows[p as usize] = if copies.copy(i) { p } else { first };
    }
}

/// Gate and up of each item into the thread's tiles, then `silu(g) * u` into the
/// intermediate rows of the item's positions.
#[allow(clippy::too_many_arguments)]
fn gate_up(
    pool: &ThreadPool,
    l: &LayerInner,
    kg: &FormatKernels,
    ku: &FormatKernels,
    d: &Dims,
    items: &[Item],
    act_g: &[u8],
    act_u: &[u8],
    inter: &mut [f32],
    tiles: &mut [f32],
) {
    let (ag, au) = (Raw::new(act_g.as_ptr()), Raw::new(act_u.as_ptr()));
    let (inter, tiles) = (Raw::new(inter.as_mut_ptr()), Raw::new(tiles.as_mut_ptr()));
    phase(pool, items.len(), plan::elems(items, d.h), &|i, thread| {
        // Every position has its own gathered row here (`Copies::All`).
        let it = items[i];
        let a_row = it.pos0 as usize;
        // SAFETY: the buffers are the call's (sized for its positions by the caller);
        // items partition (position, row) and `thread` owns its tile scratch.
        unsafe { gate_up_item(l, kg, ku, d, it, a_row, ag, au, inter, tiles, thread) };
    });
}

/// One gate+up item: the gate tile and the up tile into `thread`'s tile scratch, then
/// `silu(g) * u` into the intermediate rows of the item's positions. The activations are
/// the item's `tokens` consecutive rows of `ag`/`au` from row `a_row` (the item's first
/// position, or the row its one position shares with its token's first: [`Copies`]).
///
/// # Safety
/// `ag`/`au` hold those written activation rows and `inter` the intermediate rows of every
/// position of the call; no other thread works on this item's (position, row) block
/// or uses `thread`'s tile scratch (of `TILE_FLOATS` floats in `tiles`) meanwhile.
#[allow(clippy::too_many_arguments)]
unsafe fn gate_up_item(
    l: &LayerInner,
    kg: &FormatKernels,
    ku: &FormatKernels,
    d: &Dims,
    it: Item,
    a_row: usize,
    ag: Raw<u8>,
    au: Raw<u8>,
    inter: Raw<f32>,
    tiles: Raw<f32>,
    thread: usize,
) {
    let (gate, up) = (
        Raw::new(l.gate.bytes().as_ptr()),
        Raw::new(l.up.bytes().as_ptr()),
    );
    let inter_rows = l.intermediate;
    let (e, r0, nr, p0, nt) = it.parts();
    debug_assert!(nr * nt <= MAX_ITEM_FLOATS);
    let g_out = tiles.at(thread * TILE_FLOATS);
    let u_out = tiles.at(thread * TILE_FLOATS + TILE_FLOATS / 2);
    let tile =
        |stack: &super::ExpertStack, w: Raw<u8>, a: Raw<u8>, a_stride: usize, out: *mut f32| {
            GemmTile {
                qtype: stack.qtype(),
                k: d.h,
                w: w.at((e * inter_rows + r0) * stack.row_bytes()),
                w_stride: stack.row_bytes(),
                rows: nr,
                a: a.at(a_row * a_stride),
                a_stride,
                tokens: nt,
                out,
                ldo: nr,
            }
        };
    // SAFETY: expert e < experts (checked at submit) and rows r0..r0+nr < I, so the
    // weight rows lie in the stack; rows a_row..a_row+nt of the activations are
    // written (the caller's contract); the thread's tile scratch holds
    // MAX_ITEM_FLOATS >= nr x nt floats per projection and only this thread uses it;
    // the table only holds kernels this CPU can run.
    unsafe {
        (kg.gemm)(&tile(&l.gate, gate, ag, d.act_g, g_out));
        (ku.gemm)(&tile(&l.up, up, au, d.act_u, u_out));
    }
    for t in 0..nt {
        // SAFETY: the tiles were just written (nt x nr each); the intermediate row
        // part (position p0+t, rows r0..r0+nr of the slice) belongs to this item.
        let (g, u, h) = unsafe {
            (
                std::slice::from_raw_parts(g_out.add(t * nr), nr),
                std::slice::from_raw_parts(u_out.add(t * nr), nr),
                std::slice::from_raw_parts_mut(inter.at((p0 + t) * d.n_inter + r0 - d.slice0), nr),
            )
        };
        silu_mul_with(d.isa, g, u, h);
    }
}

/// Quantizes every intermediate row to the down format's activation type.
fn quantize_rows(
    pool: &ThreadPool,
    kern: &FormatKernels,
    inter: &[f32],
    n: usize,
    dst: &mut [u8],
    row: usize,
) {
    let rows = inter.len() / n;
    let per_item = (SERIAL_ELEMS / 4 / n).max(1);
    let (inter, dst) = (Raw::new(inter.as_ptr()), Raw::new(dst.as_mut_ptr()));
    phase(pool, rows.div_ceil(per_item), rows * n, &|i, _| {
        // SAFETY: rows p of `inter` (rows x n floats, written by gate/up) and of `dst`
        // (rows x `row` bytes) for p in this item's range belong to item i only.
        unsafe {
            quantize_inter_rows(
                kern,
                inter,
                n,
                dst,
                row,
                i * per_item..((i + 1) * per_item).min(rows),
            )
        };
    });
}

/// Quantizes intermediate rows `ps` (of `n` floats) to rows of `row` bytes in `dst`.
///
/// # Safety
/// Those rows of `inter` are written and no thread writes them meanwhile; those rows of
/// `dst` are this thread's alone.
unsafe fn quantize_inter_rows(
    kern: &FormatKernels,
    inter: Raw<f32>,
    n: usize,
    dst: Raw<u8>,
    row: usize,
    ps: std::ops::Range<usize>,
) {
    for p in ps {
        // SAFETY: the caller's contract; the table only holds quantizers this CPU can run.
        unsafe {
            let src = std::slice::from_raw_parts(inter.at(p * n).cast_const(), n);
            let out = std::slice::from_raw_parts_mut(dst.at(p * row), row);
            (kern.quantize_act)(src, out);
        }
    }
}

/// Down of each item straight into the positions' rows of `down_out`.
fn down(
    pool: &ThreadPool,
    l: &LayerInner,
    kd: &FormatKernels,
    d: &Dims,
    items: &[Item],
    act: &[u8],
    down_out: &mut [f32],
) {
    let a = Raw::new(act.as_ptr());
    let out = Raw::new(down_out.as_mut_ptr());
    phase(pool, items.len(), plan::elems(items, d.n_inter), &|i, _| {
        // SAFETY: `act` holds every position's quantized intermediate and `down_out`
        // every position's output row; items partition (position, row).
        unsafe { down_item(l, kd, d, items[i], a, out) };
    });
}

/// One down item: hidden rows of one expert against its positions' quantized
/// intermediate rows, into those positions' rows of `down_out`.
///
/// # Safety
/// `act` holds the quantized intermediate rows of the item's positions (written and no
/// longer changing) and `out` the `[pairs, h]` down output, whose (position, row) block
/// of this item no other thread touches meanwhile.
unsafe fn down_item(
    l: &LayerInner,
    kd: &FormatKernels,
    d: &Dims,
    it: Item,
    a: Raw<u8>,
    out: Raw<f32>,
) {
    let stack = &l.down;
    let w = Raw::new(stack.bytes().as_ptr());
    let (e, r0, p0) = (it.expert as usize, it.row0 as usize, it.pos0 as usize);
    let tile = GemmTile {
        qtype: stack.qtype(),
        k: d.n_inter,
        // The slice's columns start `down_col_offset` bytes into each row.
        w: w.at((e * d.h + r0) * stack.row_bytes() + l.down_col_offset),
        w_stride: stack.row_bytes(),
        rows: it.rows as usize,
        a: a.at(p0 * d.act_d),
        a_stride: d.act_d,
        tokens: it.tokens as usize,
        out: out.at(p0 * d.h + r0),
        ldo: d.h,
    };
    // SAFETY: expert e and rows r0..r0+rows lie in the down stack, and the slice's
    // columns in each row; positions p0.. lie in the quantized intermediate and in
    // down_out (pairs x h), where this item's (position, row) block is its own (the
    // caller's contract); the table only holds kernels this CPU can run.
    unsafe { (kd.gemm)(&tile) };
}

/// The kernels of a call's three projections.
struct Kernels<'a> {
    gate: &'a FormatKernels,
    up: &'a FormatKernels,
    down: &'a FormatKernels,
}

/// The buffers of a call, sized for its positions.
struct Bufs<'a> {
    act_g: &'a [u8],
    act_u: &'a [u8],
    /// Per position, the activation row its items read ([`read_rows`]).
    read_row: &'a [u32],
    inter: &'a mut [f32],
    inter_q: &'a mut [u8],
    /// The down rows and the combine of the output ([`InJob`]).
    combine: InJob<'a>,
    tiles: &'a mut [f32],
}

/// Decode (every expert at most [`GEMV_MAX_TOKENS`] positions): gate+up, quantizing the
/// intermediate and down in ONE pool job instead of three phases ([`fused_job`]): the
/// thread that finishes an expert's last gate+up item quantizes that expert's intermediate
/// rows (at most 8 x I elements), and the one that finishes the last down item of a block
/// of output rows combines that block ([`InJob`]), so no serial combine follows the job.
/// The arithmetic is the phased path's, item for item.
#[allow(clippy::too_many_arguments)]
fn fused(
    pool: &ThreadPool,
    l: &LayerInner,
    k: &Kernels,
    d: &Dims,
    routing: &Routing,
    up: &[Item],
    down: &[Item],
    b: Bufs,
    state: &mut [AtomicU32],
    own_rounds: usize,
) {
    let (ag, au) = (Raw::new(b.act_g.as_ptr()), Raw::new(b.act_u.as_ptr()));
    let (inter, inter_q) = (
        Raw::new(b.inter.as_mut_ptr()),
        Raw::new(b.inter_q.as_mut_ptr()),
    );
    let (down_out, tiles) = (b.combine.down_out(), Raw::new(b.tiles.as_mut_ptr()));
    let (read_row, combine) = (b.read_row, &b.combine);
    let gate_up = |it: Item, thread: usize| {
        let a_row = read_row[it.pos0 as usize] as usize;
        debug_assert!(it.tokens == 1 || a_row == it.pos0 as usize);
        // SAFETY: as in `gate_up`: up items partition (position, row) and `thread` owns its
        // tile scratch; the item's activation rows from `a_row` are written (its one
        // position's token row, or its positions' copies: `Copies::Shared`).
        unsafe { gate_up_item(l, k.gate, k.up, d, it, a_row, ag, au, inter, tiles, thread) };
    };
    let expert_done = |e: usize| {
        let ps = routing.offsets[e] as usize..routing.offsets[e + 1] as usize;
        // SAFETY: every gate+up item of expert e is done, so its positions' intermediate
        // rows are complete and nobody writes them; their quantized rows are only read by
        // down items, which wait for the job's ready mark set after this.
        unsafe { quantize_inter_rows(k.down, inter, d.n_inter, inter_q, d.act_d, ps) };
    };
    let down_step = |it: Item| {
        // SAFETY: the expert's quantized intermediate is complete (the job's ready mark);
        // down items partition (position, row) of `down_out`.
        unsafe { down_item(l, k.down, d, it, inter_q, down_out) };
    };
    let steps = fused_job::Steps {
        gate_up: &gate_up,
        expert_done: &expert_done,
        down: &down_step,
        combine,
    };
    fused_job::run(pool, routing, (up, down), state, own_rounds, steps);
}
