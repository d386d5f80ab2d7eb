//! [`RepackedMoe`]: runs [`RepackedLayer`]s on the pool. The phases are those of the
//! GGUF-native operator (`compute.rs`): route, quantize and gather, gate+up with
//! `silu(g) * u`, quantize the intermediate, down, combine; the work split is the same
//! (`plan.rs`: 128 x 64 items for busy experts, one item per light expert), and each item
//! picks its kernel by its token count ([`Kernel::pick`]): AMX for busy experts, the
//! AVX512 kernel for light ones. Tile sizes depend only on the routing, so results do not
//! depend on the number of threads.
//!
//! The intermediate is quantized by the gate/up items themselves where an item's rows
//! are whole groups of the down format (every busy expert's 128-row items, and light
//! ones unless the planner halved their row blocks below a group): each item quantizes
//! its block of columns of its positions' rows straight from `silu(g) * u`, so the
//! `[pairs, I]` f32 intermediate is neither written nor read back (at V2-Lite's 512
//! tokens 17 MB each way). Other experts' positions go through the f32 buffer and a
//! separate pass; both give the bytes the row quantizer gives.
//!
//! Activations are scaled per token (`act.rs`) for a projection whose busy experts run
//! the folded INT4 AMX kernel ([`act_scales`]): the intermediate's per-token scale needs
//! the whole row, so those calls leave it in f32 and quantize it in the separate pass.
//!
//! In decode (no expert with more than `GEMV_MAX_TOKENS` positions) gate+up, the
//! intermediate's quantization, down and the combine run as one pool job with per-expert
//! readiness (`fused.rs`), as in the GGUF-native operator; the item bodies both ways are
//! `items.rs`'s.
//!
//! Calls run as the GGUF-native operator's do (`driver.rs`): [`RepackedMoe::submit`]
//! hands the call to a driver thread and returns a [`MoeHandle`] at once,
//! [`RepackedMoe::forward`] runs it on the calling thread. Every buffer is sized by
//! [`RepackedMoe::new`] / [`RepackedMoe::reserve`]; a call allocates nothing.

use std::sync::atomic::AtomicU32;

use super::act::{quantize_row_with, ActScales};
use super::format::{RepackFormat, PANEL};
use super::fused;
use super::items::{fuses_quantize, Down, GateUp, Inter};
use super::kernel::{act_scales, Prefetch};
use super::layer::RepackedLayer;
use crate::cpu::moe::combine::{combine, InJob, BLOCK_ROWS};
use crate::cpu::moe::driver::{Driver, Job, MoeHandle};
use crate::cpu::moe::phase::phase;
use crate::cpu::moe::plan::{self, Item, MAX_ITEM_FLOATS};
use crate::cpu::moe::prefetch::{self, Primed};
use crate::cpu::moe::routing::Routing;
use crate::cpu::moe::PoolRef;
use crate::cpu::shared_ptr::Raw;
use crate::cpu::{Isa, ThreadPool, GEMV_MAX_TOKENS};
use crate::error::{KtError, Result};
use crate::util::AlignedBuf;

/// Readable rows after the last position of the activation buffers (two AMX tiles).
const PAD_ROWS: usize = 32;

/// Runs repacked MoE layers: calls of up to `max_tokens` tokens and `max_top_k` slots.
pub struct RepackedMoe {
    driver: Driver<Scratch>,
    max_tokens: usize,
    max_top_k: usize,
    /// [`RepackedMoe::set_prefetch_rounds`] and the rounds the last prefetch warmed.
    rounds: prefetch::Rounds,
}

#[derive(Default)]
struct Scratch {
    call: Call,
    work: Work,
}

/// A submitted call's inputs (copied in) and its output.
#[derive(Default)]
struct Call {
    layer: Option<RepackedLayer>,
    tokens: usize,
    k: usize,
    x: Vec<f32>,
    ids: Vec<u32>,
    weights: Vec<f32>,
    out: Vec<f32>,
}

/// The buffers of the phases.
#[derive(Default)]
struct Work {
    prefetch: Prefetch,
    /// (hidden, intermediate, experts, act row bytes gate/up, act row bytes down)
    sized_for: [usize; 5],
    routing: Routing,
    items_up: Vec<Item>,
    items_down: Vec<Item>,
    /// Position ranges of the experts whose gate/up items leave the intermediate in f32
    /// (rows not whole groups of the down format), quantized by a separate pass.
    unfused: Vec<(u32, u32)>,
    act: AlignedBuf,
    inter: Vec<f32>,
    inter_q: AlignedBuf,
    down_out: Vec<f32>,
    tiles: Vec<f32>,
    /// What a prefetch before the call warmed: the rounds of gate+up items the fused decode
    /// job hands to fixed threads first (at least one) and the experts' order they follow.
    primed: Primed,
    /// Per expert, the fused decode job's count of gate+up items still running.
    expert_state: Vec<AtomicU32>,
    /// Per block of `BLOCK_ROWS` output rows, the fused job's down items still writing it.
    block_state: Vec<AtomicU32>,
}

impl Job for Scratch {
    fn run(&mut self, pool: &ThreadPool, isa: Isa) -> Result<()> {
        let Scratch { call, work } = self;
        let Some(layer) = &call.layer else {
            return Ok(());
        };
        let (tokens, k, h) = (call.tokens, call.k, layer.hidden());
        if tokens == 0 {
            return Ok(());
        }
        compute(
            work,
            pool,
            isa,
            layer,
            &call.x[..tokens * h],
            &call.ids[..tokens * k],
            &call.weights[..tokens * k],
            &mut call.out[..tokens * h],
        )
    }
    fn output(&self) -> &[f32] {
        &self.call.out
    }
}

fn shape(detail: String) -> KtError {
    KtError::Shape {
        op: "RepackedMoe",
        detail,
    }
}

impl RepackedMoe {
    /// Scratch sized for `layers`; `isa` decides the kernels (AMX items need
    /// `Isa::Amx`, an error here when this machine lacks or refuses it).
    pub fn new(
        pool: impl Into<PoolRef>,
        isa: Isa,
        max_tokens: usize,
        max_top_k: usize,
        layers: &[&RepackedLayer],
    ) -> Result<RepackedMoe> {
        isa.check()?;
        if max_tokens == 0 || max_top_k == 0 {
            return Err(shape(format!(
                "max_tokens {max_tokens} and max_top_k {max_top_k} must be positive"
            )));
        }
        let driver = Driver::new("RepackedMoe", pool.into(), isa, Scratch::default())?;
        let m = RepackedMoe {
            driver,
            max_tokens,
            max_top_k,
            rounds: prefetch::Rounds::new(),
        };
        for l in layers {
            m.reserve(l)?;
        }
        Ok(m)
    }

    pub fn isa(&self) -> Isa {
        self.driver.isa()
    }

    /// Sets how the AMX kernel prefetches weights (see [`Prefetch`]; results do not
    /// change). Waits for a call in flight.
    pub fn set_prefetch(&self, prefetch: Prefetch) -> Result<()> {
        self.driver.idle_scratch()?.work.prefetch = prefetch;
        Ok(())
    }
    pub fn threads(&self) -> usize {
        self.driver.pool().threads()
    }
    /// The most tokens a call may carry.
    pub fn max_tokens(&self) -> usize {
        self.max_tokens
    }

    /// Prefetches into the pool threads' L2 caches the panels a decode call of `layer`
    /// routed to the experts `ids` would read first, as `MoeContext::prefetch` does for
    /// the GGUF layout: its first gate+up items, up to [`RepackedMoe::prefetch_rounds`] per
    /// thread, which the next call hands to the same threads first; the experts in the
    /// order of `ids` (likeliest first). Changes no result.
    /// Polls `stop` every KB and returns once it says so; returns the bytes it issued.
    /// Waits for a call in flight on the pool first. An error for an id past the layer's
    /// experts.
    pub fn prefetch(
        &self,
        layer: &RepackedLayer,
        ids: &[u32],
        stop: &(dyn Fn() -> bool + Sync),
    ) -> Result<usize> {
        let rounds = self.prefetch_rounds();
        let panels_of = |e: usize, r0: usize, nr: usize| {
            [layer.gate(), layer.up()].map(|stack| {
                let pb = stack.format().panel_bytes(stack.cols());
                // the plan's rows are whole panels of a checked expert id
                let first = r0 / PANEL * pb;
                stack
                    .expert_data(e)
                    .get(first..first + nr / PANEL * pb)
                    .unwrap_or(&[])
            })
        };
        let pool = self.driver.pool();
        let (op, rows) = ("RepackedMoe::prefetch", 0..layer.intermediate());
        let issued = prefetch::run(
            pool,
            op,
            layer.experts(),
            rows,
            ids,
            rounds,
            stop,
            &panels_of,
        )?;
        self.rounds.prime(rounds, ids);
        Ok(issued)
    }

    /// How many gate+up items per thread [`RepackedMoe::prefetch`] warms and the next
    /// decode call hands to their fixed threads first (2 unless set).
    pub fn prefetch_rounds(&self) -> usize {
        self.rounds.get()
    }

    /// Sets [`RepackedMoe::prefetch_rounds`] (1 to 64). Changes no result.
    pub fn set_prefetch_rounds(&self, rounds: usize) -> Result<()> {
        self.rounds.set(rounds).map_err(shape)
    }

    /// Sizes the scratch for `layer` (allocates: call at setup).
    pub fn reserve(&self, layer: &RepackedLayer) -> Result<()> {
        let need = needs(layer);
        let threads = self.threads();
        let mut guard = self.driver.idle_scratch()?;
        let Scratch { call, work: s } = &mut *guard;
        let n: Vec<usize> = s
            .sized_for
            .iter()
            .zip(need)
            .map(|(&a, b)| a.max(b))
            .collect();
        let (h, i, e, ag, ad) = (n[0], n[1], n[2], n[3], n[4]);
        let pairs = self.max_tokens * self.max_top_k;
        s.routing.reserve(e, pairs);
        s.unfused.reserve_exact(e.saturating_sub(s.unfused.len()));
        let items = plan::max_items(i.max(h), pairs, e);
        for v in [&mut s.items_up, &mut s.items_down] {
            v.reserve_exact(items.saturating_sub(v.len()));
        }
        let padded = pairs + PAD_ROWS;
        let (act_len, inter_q_len) = (
            s.act.len().max(padded * ag),
            s.inter_q.len().max(padded * ad),
        );
        s.act.resize(act_len);
        s.inter_q.resize(inter_q_len);
        grow(&mut s.inter, pairs * i);
        grow(&mut s.down_out, pairs * h);
        grow(&mut s.tiles, threads * 2 * MAX_ITEM_FLOATS);
        grow_atomics(&mut s.expert_state, e);
        grow_atomics(&mut s.block_state, h.div_ceil(BLOCK_ROWS));
        s.sized_for = [h, i, e, ag, ad];
        grow(&mut call.x, self.max_tokens * h);
        grow(&mut call.out, self.max_tokens * h);
        grow(&mut call.ids, pairs);
        grow(&mut call.weights, pairs);
        Ok(())
    }

    /// `out[t] = sum_s weights[t,s] * expert_{ids[t,s]}(x[t])` for `x: [T, H]`,
    /// `ids, weights: [T, k]`, `out: [T, H]`, on the calling thread and the pool. Waits
    /// for a submitted call first.
    pub fn forward(
        &self,
        layer: &RepackedLayer,
        x: &[f32],
        ids: &[u32],
        weights: &[f32],
        out: &mut [f32],
    ) -> Result<()> {
        let (tokens, _) = self.check_call(layer, x, ids, weights)?;
        if out.len() != x.len() {
            return Err(shape(format!(
                "x has {} and out {} elements; both must be tokens x {}",
                x.len(),
                out.len(),
                layer.hidden()
            )));
        }
        if tokens == 0 {
            return Ok(());
        }
        let mut sc = self.driver.idle_scratch()?;
        sc.work.primed = self.rounds.take_primed();
        compute(
            &mut sc.work,
            self.driver.pool(),
            self.isa(),
            layer,
            x,
            ids,
            weights,
            out,
        )
    }

    /// Starts the call [`RepackedMoe::forward`] makes and returns at once; the driver
    /// thread runs it on the pool and [`MoeHandle::sync`] waits for it and copies the
    /// `[T, H]` output out. The inputs are copied, so the caller may reuse them right
    /// away. Waits first for the previous call to be synced (or its handle dropped).
    pub fn submit(
        &self,
        layer: &RepackedLayer,
        x: &[f32],
        ids: &[u32],
        weights: &[f32],
    ) -> Result<MoeHandle<'_>> {
        let (tokens, k) = self.check_call(layer, x, ids, weights)?;
        let primed = self.rounds.take_primed();
        self.driver.submit(x.len(), |sc| {
            sc.work.primed = primed;
            let c = &mut sc.call;
            if sc
                .work
                .sized_for
                .iter()
                .zip(needs(layer))
                .any(|(&a, b)| a < b)
                || c.x.len() < x.len()
            {
                return Err(not_reserved());
            }
            c.layer = Some(layer.clone());
            (c.tokens, c.k) = (tokens, k);
            c.x[..x.len()].copy_from_slice(x);
            c.ids[..ids.len()].copy_from_slice(ids);
            c.weights[..weights.len()].copy_from_slice(weights);
            Ok(())
        })
    }

    /// Checks a call's shapes; returns (tokens, k) (0 tokens: an empty call).
    fn check_call(
        &self,
        layer: &RepackedLayer,
        x: &[f32],
        ids: &[u32],
        weights: &[f32],
    ) -> Result<(usize, usize)> {
        let (h, e_count) = (layer.hidden(), layer.experts());
        if !x.len().is_multiple_of(h) {
            return Err(shape(format!(
                "x has {} elements, not a whole number of rows of hidden size {h}",
                x.len()
            )));
        }
        let tokens = x.len() / h;
        if tokens == 0 {
            if !ids.is_empty() || !weights.is_empty() {
                return Err(shape(format!(
                    "no tokens but {} expert ids and {} weights",
                    ids.len(),
                    weights.len()
                )));
            }
            return Ok((0, 0));
        }
        if tokens > self.max_tokens
            || ids.is_empty()
            || !ids.len().is_multiple_of(tokens)
            || weights.len() != ids.len()
        {
            return Err(shape(format!(
                "{tokens} tokens (at most {}), {} ids and {} weights: need tokens x k of each",
                self.max_tokens,
                ids.len(),
                weights.len()
            )));
        }
        let k = ids.len() / tokens;
        if k > self.max_top_k {
            return Err(shape(format!(
                "{k} experts per token, built for at most {}",
                self.max_top_k
            )));
        }
        if let Some(i) = ids.iter().position(|&e| e as usize >= e_count) {
            return Err(shape(format!(
                "token {} slot {}: expert id {} but the layer has {e_count} experts",
                i / k,
                i % k,
                ids[i]
            )));
        }
        Ok((tokens, k))
    }
}

fn not_reserved() -> KtError {
    shape(
        "the scratch was not sized for this layer: pass it to RepackedMoe::new or reserve()".into(),
    )
}

/// One call (shapes checked, at least one token) in the phases' buffers `s`.
#[allow(clippy::too_many_arguments)]
fn compute(
    s: &mut Work,
    pool: &ThreadPool,
    isa: Isa,
    layer: &RepackedLayer,
    x: &[f32],
    ids: &[u32],
    weights: &[f32],
    out: &mut [f32],
) -> Result<()> {
    let (h, e_count) = (layer.hidden(), layer.experts());
    let tokens = x.len() / h;
    let k = ids.len() / tokens;
    if s.sized_for.iter().zip(needs(layer)).any(|(&a, b)| a < b) {
        return Err(not_reserved());
    }
    let l = &*layer.inner;
    let i_dim = layer.intermediate();
    let pairs = tokens * k;
    let (fg, fd) = (l.gate.format(), l.down.format());
    let (act_g, act_d) = (act_stride(fg, h), act_stride(fd, i_dim));

    s.routing.route(ids, e_count);
    // the experts in the order a prefetch before the call warmed them (prefetch.rs)
    s.routing.order_like(s.primed.order());
    let busiest = s.routing.counts[..e_count]
        .iter()
        .max()
        .copied()
        .unwrap_or(0) as usize;
    let (sg, sd) = (
        act_scales(isa, &l.gate, busiest),
        act_scales(isa, &l.down, busiest),
    );
    let rows = plan::GEMM_ROW_BLOCK;
    plan::build(&mut s.items_up, &s.routing, 0..i_dim, rows, 0);
    plan::build(&mut s.items_down, &s.routing, 0..h, rows, 0);
    // An expert's items all have one row block size: record each unfused expert once.
    s.unfused.clear();
    for it in &s.items_up {
        let e = it.expert as usize;
        let range = (s.routing.offsets[e], s.routing.offsets[e + 1]);
        if !fuses_quantize(fd, sd, it) && s.unfused.last() != Some(&range) {
            debug_assert!(s.unfused.len() < s.unfused.capacity());
            s.unfused.push(range);
        }
    }
    let inter = &mut s.inter[..pairs * i_dim];
    let down_out = &mut s.down_out[..pairs * h];
    if cfg!(debug_assertions) {
        inter.fill(f32::NAN);
        down_out.fill(f32::NAN);
    }
    let pos_of = &s.routing.pos_of[..pairs];
    // The padding rows after the last position are readable (stale or zero bytes)
    // so AMX can load whole tiles; their results are dropped.
    let act_all = &mut s.act.as_mut_slice()[..(pairs + PAD_ROWS) * act_g];
    let (act, _) = act_all.split_at_mut(pairs * act_g);
    gather(pool, isa, (fg, sg), x, h, k, pos_of, act, act_g);
    let inter_q_all = &mut s.inter_q.as_mut_slice()[..(pairs + PAD_ROWS) * act_d];
    let gu = GateUp::new(
        isa,
        s.prefetch,
        l,
        act_all,
        act_g,
        inter,
        Inter {
            q: &mut *inter_q_all,
            stride: act_d,
            scales: sd,
        },
        (&mut s.tiles, sg),
    );
    let decode = s
        .routing
        .active()
        .iter()
        .all(|&e| s.routing.counts[e as usize] as usize <= GEMV_MAX_TOKENS);
    // (With one thread the phases run: tests comparing thread counts therefore also
    // check that both ways give bit-identical results.)
    if decode && pool.threads() > 1 {
        let combine = InJob::new(
            &mut s.block_state,
            &s.items_down,
            pos_of,
            weights,
            down_out,
            out,
            h,
            k,
        );
        // The down rows through the combine's own view of them (it holds the buffer).
        let dn = Down::new(
            isa,
            s.prefetch,
            (&l.down, sd),
            gu.quantized(),
            act_d,
            combine.down_out(),
        );
        fused::run(
            pool,
            &gu,
            &dn,
            &s.routing,
            &s.unfused,
            (&s.items_up, &s.items_down),
            &combine,
            &mut s.expert_state,
            s.primed.rounds,
        );
        return Ok(());
    }
    gate_up(pool, &gu, &s.items_up, h);
    let (inter_q, _) = inter_q_all.split_at_mut(pairs * act_d);
    quantize_rows(
        pool,
        isa,
        (fd, sd),
        &s.unfused,
        inter,
        i_dim,
        inter_q,
        act_d,
    );
    // Fresh pointers: the phases above wrote the buffers through borrows of their own.
    let q_rows = (Raw::new(inter_q_all.as_ptr()), inter_q_all.len() / act_d);
    let out_rows = Raw::new(down_out.as_mut_ptr());
    let dn = Down::new(isa, s.prefetch, (&l.down, sd), q_rows, act_d, out_rows);
    down(pool, &dn, &s.items_down, i_dim);
    combine(pool, pos_of, down_out, h, k, weights, out);
    Ok(())
}

/// The gate+up phase: every item of `items` (`h` columns).
fn gate_up(pool: &ThreadPool, gu: &GateUp, items: &[Item], h: usize) {
    phase(pool, items.len(), plan::elems(items, h), &|i, thread| {
        // SAFETY: items partition (position, row) of the intermediate; `thread` is the
        // pool's (or 0 inline) and owns its tiles; the activations are gathered.
        unsafe { gu.item(items[i], thread) };
    });
}

/// The down phase: every item of `items` (`cols` columns), after the intermediate's
/// quantization.
fn down(pool: &ThreadPool, dn: &Down, items: &[Item], cols: usize) {
    phase(pool, items.len(), plan::elems(items, cols), &|i, _| {
        // SAFETY: every position's quantized intermediate is written; items partition
        // (position, row) of the down rows.
        unsafe { dn.item(items[i]) };
    });
}

/// (hidden, intermediate, experts, act row strides of gate/up and of down).
fn needs(layer: &RepackedLayer) -> [usize; 5] {
    let (h, i) = (layer.hidden(), layer.intermediate());
    [
        h,
        i,
        layer.experts(),
        act_stride(layer.gate().format(), h),
        act_stride(layer.down().format(), i),
    ]
}

/// Bytes from one quantized activation row to the next: the row's bytes rounded up to
/// a whole number of 64-byte lines, so each row of an AMX A tile (64 bytes of one
/// K-step, at a multiple of 64 in the row) is one cache line. V2-Lite's down rows
/// (1408 int8 + 11 f32 scales = 1452 bytes) otherwise make every A tile row straddle
/// two lines.
fn act_stride(f: RepackFormat, cols: usize) -> usize {
    f.act_row_bytes(cols).next_multiple_of(64)
}

fn grow<T: Default + Clone>(v: &mut Vec<T>, n: usize) {
    if v.len() < n {
        v.resize(n, T::default());
    }
}

fn grow_atomics(v: &mut Vec<AtomicU32>, n: usize) {
    if v.len() < n {
        v.resize_with(n, || AtomicU32::new(0));
    }
}

/// Quantizes each token once and copies the row to its `k` positions.
#[allow(clippy::too_many_arguments)]
fn gather(
    pool: &ThreadPool,
    isa: Isa,
    (f, scales): (RepackFormat, ActScales),
    x: &[f32],
    h: usize,
    k: usize,
    pos_of: &[u32],
    dst: &mut [u8],
    stride: usize,
) {
    let tokens = x.len() / h;
    let row = f.act_row_bytes(h);
    let dst = Raw::new(dst.as_mut_ptr());
    phase(pool, tokens, tokens * h, &|t, _| {
        let slots = &pos_of[t * k..(t + 1) * k];
        let first = slots[0] as usize;
        // SAFETY: positions are a permutation of 0..tokens * k, so token t's rows belong
        // to this item only, each inside `dst` (pairs rows of `row <= stride` bytes,
        // `stride` apart).
        let first_row = unsafe { std::slice::from_raw_parts_mut(dst.at(first * stride), row) };
        quantize_row_with(isa, f, scales, &x[t * h..(t + 1) * h], first_row);
        for &p in &slots[1..] {
            // SAFETY: as above; distinct positions' rows do not overlap.
            unsafe {
                std::ptr::copy_nonoverlapping(
                    dst.at(first * stride),
                    dst.at(p as usize * stride),
                    row,
                )
            };
        }
    });
}

/// Quantizes the intermediate rows of the positions in `ranges` (disjoint) from `inter`
/// (`n` floats per position) into `dst` (`stride` bytes per position), one item per range.
#[allow(clippy::too_many_arguments)]
fn quantize_rows(
    pool: &ThreadPool,
    isa: Isa,
    (f, scales): (RepackFormat, ActScales),
    ranges: &[(u32, u32)],
    inter: &[f32],
    n: usize,
    dst: &mut [u8],
    stride: usize,
) {
    let row = f.act_row_bytes(n);
    let positions: usize = ranges.iter().map(|&(a, b)| (b - a) as usize).sum();
    let dst = Raw::new(dst.as_mut_ptr());
    phase(pool, ranges.len(), positions * n, &|i, _| {
        let (a, b) = ranges[i];
        for p in a as usize..b as usize {
            // SAFETY: row p of `dst` (rows of `row <= stride` bytes, `stride` apart)
            // belongs to range i only (the ranges are disjoint).
            let out = unsafe { std::slice::from_raw_parts_mut(dst.at(p * stride), row) };
            quantize_row_with(isa, f, scales, &inter[p * n..(p + 1) * n], out);
        }
    });
}
