//! Warming the caches for a decode call that has not been posted yet: the first gate+up
//! items of a predicted set of experts, a few rounds of one item per pool thread,
//! prefetched into L2.
//!
//! Why: in the hybrid decode the CPU threads wait ~40 us per layer for the GPU (the stretch
//! between two layers' experts) while DRAM idles; if the next layer's experts are known
//! early (predicted from the hidden state), the bytes its experts job reads first can stream
//! in then, and the job starts on cached weights. A decode call hands out its gate+up items
//! in order (experts in the routing's order, row blocks ascending: `plan::build`), thread
//! `t` starting on items `t`, `t + threads`, ... for `rounds` rounds
//! (`ThreadPool::for_each_in_order_first_own`), so those are the items each thread runs
//! first; this prefetches them, thread `t` its own items into its own L2 in that order (the
//! first round everywhere before any second). One round of V2-Lite's items is ~4.7 MB
//! over 16 threads, streamed in ~25 us on a fast host, so a ~40 us stretch has room for
//! part of a second; the rounds past the first are what a slower host cuts short. Items
//! past the rounds would be evicted from a thread's L2 by the job's own stream before their
//! turn.
//!
//! The prefetch walks the predicted experts in the order given, a router's picks, best score
//! first: the rounds cover only the first experts' items (V3 at one token: 4 of 8), and the
//! router's first picks are its surest (the `post` predictor of `kt-model`'s
//! `route_predict` example on the synthetic V2-Lite, 8 layers, 100 steps: 99% of the first
//! picks right, 96, 89, 78, 67 and 52% of the next, 80% over all six; the synthetic V3 cut
//! to 5 layers: 90, 92, 85, 83, 76, 65, 50 and 39%, 72.5% over all eight). The call after a
//! prefetch lays its experts out in that order ([`super::routing::Routing::order_like`]):
//! item `i` of the prefetch and of the call then name the same expert wherever the
//! prediction was right. In ascending order of the actual experts, one wrong guess would
//! move every later expert's items to other threads, whose L2s hold nothing of them
//! (session 11 measured a core reading another core's L2 gain nothing): with DeepSeek-V3's
//! top-8 of 256 predicted at ~65%, only ~30% of the prefetched items would run where they
//! were warmed (a simulation of random sets), against the ~65% that are right. Session 37,
//! device, the hybrid decode with both changes against neither, in one process, 10 rounds
//! each, two instances: experts per MoE layer on the V3 6-layer file 1.7623 -> 1.7286 and
//! 1.7454 -> 1.6932 ms (faster in 7 and 6 rounds of 10); on V2-Lite 0.3235 -> 0.3084 (9 of
//! 10) and 0.2912 -> 0.3105 ms (2 of 10): V3 gains ~2%, V2-Lite (whose prediction is
//! surer, so the old ranks were less often off) reads level over the two.
//!
//! The prefetch changes no value anywhere (it only issues prefetch hints); `stop` is polled
//! every [`LINES_PER_POLL`] lines so that the caller can end it as soon as the real call
//! can start (the hints already issued still land).

use std::ops::Range;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};

use super::layer::LayerInner;
use super::plan;
use crate::cpu::cache_hint::{self, LINE};
use crate::cpu::ThreadPool;
use crate::error::{KtError, Result};

/// Cache lines issued between two polls of `stop` (1 KB): the poll is a load that hits
/// until the flag changes, while the lines between two polls delay the real call's start
/// (a thread streams ~8 GB/s, 1 KB in ~0.13 us).
const LINES_PER_POLL: usize = 16;

/// The distinct ids of `ids` in the order they first appear (no allocation: `ids` holds
/// one token's top-k, a few dozen at most).
fn distinct_in_order(ids: &[u32]) -> impl Iterator<Item = u32> + '_ {
    ids.iter()
        .enumerate()
        .filter(|&(i, e)| !ids[..i].contains(e))
        .map(|(_, &e)| e)
}

/// The `rank`-th distinct id of `ids` in the order they first appear.
fn nth_distinct(ids: &[u32], rank: usize) -> Option<u32> {
    distinct_in_order(ids).nth(rank)
}

/// How many distinct ids `ids` holds.
fn distinct(ids: &[u32]) -> usize {
    distinct_in_order(ids).count()
}

/// The rounds of own items a context prefetches and hands out first unless told otherwise
/// (`MoeContext::set_prefetch_rounds`).
const DEFAULT_ROUNDS: usize = 2;

/// The most predicted experts a prefetch records for the next call's order (one token's
/// top-k; longer predictions keep their first ones).
const MAX_HINT: usize = 32;

/// What the call after a prefetch takes from it: the rounds of gate+up items to hand to
/// fixed threads first, and the order of the experts the prefetch warmed (the predicted
/// ones, distinct, in the order [`run`] walks them; empty when no prefetch came before).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Primed {
    pub rounds: usize,
    order: [u32; MAX_HINT],
    len: usize,
}

impl Primed {
    pub fn order(&self) -> &[u32] {
        &self.order[..self.len]
    }
}

impl Default for Primed {
    /// No prefetch: every thread starts on its own first item, the experts in the
    /// routing's (ascending) order.
    fn default() -> Primed {
        Primed {
            rounds: 1,
            order: [0; MAX_HINT],
            len: 0,
        }
    }
}

/// An operator's prefetch rounds: how many gate+up items per thread a prefetch warms (1 to
/// 64), and what the last prefetch warmed (its rounds and its experts' order), which the
/// next call takes (resetting it): only a call after a prefetch has items worth keeping on
/// fixed threads past the first round; the others keep the shared counter's order (with
/// two fixed rounds on every call, one device call read V3's one-token layer 5-12% slower;
/// later ones with this rule read new and old level within the noise).
pub(crate) struct Rounds {
    rounds: AtomicUsize,
    primed: AtomicUsize,
    /// The last prefetch's experts in its order (`order_len` of them). Written by
    /// [`Rounds::prime`] and read by [`Rounds::take_primed`] on the caller's thread, one
    /// after the other, so relaxed atomics carry them.
    order: [AtomicU32; MAX_HINT],
    order_len: AtomicUsize,
}

impl Rounds {
    pub fn new() -> Rounds {
        Rounds {
            rounds: AtomicUsize::new(DEFAULT_ROUNDS),
            primed: AtomicUsize::new(0),
            order: [const { AtomicU32::new(0) }; MAX_HINT],
            order_len: AtomicUsize::new(0),
        }
    }

    pub fn get(&self) -> usize {
        self.rounds.load(Ordering::Relaxed)
    }

    /// Sets the rounds; `Err` with the message when outside 1 to 64.
    pub fn set(&self, rounds: usize) -> std::result::Result<(), String> {
        if !(1..=64).contains(&rounds) {
            return Err(format!("prefetch rounds {rounds}, expected 1 to 64"));
        }
        self.rounds.store(rounds, Ordering::Relaxed);
        Ok(())
    }

    /// A prefetch of `rounds` rounds was issued for the experts `ids` (as passed to
    /// [`run`]).
    pub fn prime(&self, rounds: usize, ids: &[u32]) {
        let mut len = 0;
        for (slot, e) in self.order.iter().zip(distinct_in_order(ids)) {
            slot.store(e, Ordering::Relaxed);
            len += 1;
        }
        self.order_len.store(len, Ordering::Relaxed);
        self.primed.store(rounds, Ordering::Relaxed);
    }

    /// What the next call takes: the own rounds of its decode hand-out (those the last
    /// prefetch warmed, else one: every thread starts on its own first item) and the
    /// prefetch's order of the experts (empty without one).
    pub fn take_primed(&self) -> Primed {
        let rounds = self.primed.swap(0, Ordering::Relaxed);
        if rounds == 0 {
            return Primed::default();
        }
        let mut p = Primed {
            rounds,
            ..Primed::default()
        };
        p.len = self.order_len.swap(0, Ordering::Relaxed).min(MAX_HINT);
        for (o, a) in p.order.iter_mut().zip(&self.order).take(p.len) {
            *o = a.load(Ordering::Relaxed);
        }
        p
    }
}

/// The gate and up bytes of rows `r0..r0 + nr` of expert `e`: what one gate+up item of a
/// decode call reads, `(e, r0, nr) -> [gate, up]`, for either weight layout.
pub(crate) type ItemBytes<'a> = dyn Fn(usize, usize, usize) -> [&'a [u8]; 2] + Sync + 'a;

/// Prefetches the first gate+up items (`rounds` per pool thread at most) that a decode call
/// of a layer of `experts` experts over intermediate rows `rows`, routed to the experts
/// `ids`, would hand out to fixed threads, their bytes given by `item`; returns the bytes
/// issued. Stops early once `stop()` returns true. An error (of operation `op`) for an id
/// past the layer's experts.
#[allow(clippy::too_many_arguments)]
pub(crate) fn run(
    pool: &ThreadPool,
    op: &'static str,
    experts: usize,
    rows: Range<usize>,
    ids: &[u32],
    rounds: usize,
    stop: &(dyn Fn() -> bool + Sync),
    item: &ItemBytes<'_>,
) -> Result<usize> {
    if let Some(&e) = ids.iter().find(|&&e| e as usize >= experts) {
        return Err(KtError::Shape {
            op,
            detail: format!("expert id {e} but the layer has {experts} experts"),
        });
    }
    let chosen = distinct(ids);
    let block = plan::gemv_row_block(chosen, rows.len());
    let per_expert = rows.len().div_ceil(block);
    let threads = pool.threads();
    let items = (chosen * per_expert).min(rounds.saturating_mul(threads));
    let issued = AtomicUsize::new(0);
    // Thread t runs its own items t, t + threads, ...: the ones the call hands it first.
    pool.for_each_static(items.min(threads), &|t, _| {
        let mut bytes = 0;
        'items: for i in (t..items).step_by(threads) {
            let Some(e) = nth_distinct(ids, i / per_expert) else {
                break;
            };
            let r0 = rows.start + (i % per_expert) * block;
            let nr = block.min(rows.end - r0);
            for part in item(e as usize, r0, nr) {
                match prefetch_l2(part, stop) {
                    Some(n) => bytes += n,
                    None => break 'items,
                }
            }
        }
        issued.fetch_add(bytes, Ordering::Relaxed);
    });
    Ok(issued.into_inner())
}

/// [`run`] for a GGUF-native layer: an item's gate and up rows as stored.
pub(crate) fn run_gguf(
    pool: &ThreadPool,
    l: &LayerInner,
    ids: &[u32],
    rounds: usize,
    stop: &(dyn Fn() -> bool + Sync),
) -> Result<usize> {
    let rows_of = |e: usize, r0: usize, nr: usize| {
        [&l.gate, &l.up].map(|stack| {
            let rb = stack.row_bytes();
            let first = (e * l.intermediate + r0) * rb;
            // the rows lie inside the stack (the plan's rows of a checked expert id)
            stack.bytes().get(first..first + nr * rb).unwrap_or(&[])
        })
    };
    let op = "MoeContext::prefetch";
    run(
        pool,
        op,
        l.experts,
        l.slice.clone(),
        ids,
        rounds,
        stop,
        &rows_of,
    )
}

/// Issues an L2 prefetch for every cache line of `bytes`, polling `stop` every
/// [`LINES_PER_POLL`] lines; the bytes covered, or `None` when stopped.
fn prefetch_l2(bytes: &[u8], stop: &(dyn Fn() -> bool + Sync)) -> Option<usize> {
    for (c, chunk) in bytes.chunks(LINES_PER_POLL * LINE).enumerate() {
        if c > 0 && stop() {
            return None;
        }
        for off in (0..chunk.len()).step_by(LINE) {
            cache_hint::line_l2(&chunk[off]);
        }
    }
    Some(bytes.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distinct_ids_in_the_order_given() {
        let ids = [9u32, 3, 9, 0, 3, 7];
        assert_eq!(distinct(&ids), 4);
        let got: Vec<_> = (0..5).map(|r| nth_distinct(&ids, r)).collect();
        assert_eq!(got, [Some(9), Some(3), Some(0), Some(7), None]);
        assert_eq!(distinct(&[]), 0);
        assert_eq!(nth_distinct(&[], 0), None);
    }

    /// The call after a prefetch hands item `i` to the thread that prefetched item `i`
    /// (`for_each_in_order_first_own`); with the prefetch's order of the experts, item `i`
    /// of the call is the prefetch's item `i` wherever the prediction named an expert the
    /// call chose, at the same rows. In the routing's ascending order it would not be here.
    #[test]
    fn the_call_runs_the_prefetched_items_where_the_prediction_was_right() {
        use super::super::routing::Routing;
        let (experts, rows, threads, rounds) = (256, 0..2048, 16, 2);
        let chosen = [17u32, 250, 3, 96, 40, 128, 77, 201];
        // a router's picks, best first: 6 of the 8 right; 1 and 90 wrong
        let predicted = [1u32, 250, 96, 40, 90, 128, 77, 201];
        let prime = Rounds::new();
        prime.prime(rounds, &predicted);
        let primed = prime.take_primed();
        let mut routing = Routing::default();
        routing.reserve(experts, chosen.len());
        routing.route(&chosen, experts);
        let plan_of = |routing: &Routing| {
            let mut items = Vec::with_capacity(plan::max_items(rows.end, chosen.len(), experts));
            plan::build(&mut items, routing, rows.clone(), 128, 0);
            items
        };
        let ascending = plan_of(&routing);
        routing.order_like(primed.order());
        let items = plan_of(&routing);
        let block = plan::gemv_row_block(distinct(&predicted), rows.len());
        let per_expert = rows.len().div_ceil(block);
        let (mut same, mut same_ascending, mut right) = (0, 0, 0);
        for i in 0..rounds * threads {
            let e = nth_distinct(&predicted, i / per_expert).unwrap();
            let r0 = (rows.start + i % per_expert * block) as u32;
            if chosen.contains(&e) {
                right += 1;
                assert_eq!((items[i].expert, items[i].row0), (e, r0), "item {i}");
                same += 1;
            }
            same_ascending += usize::from((ascending[i].expert, ascending[i].row0) == (e, r0));
        }
        // V3's one-token items are 256 rows: 8 a expert, so two rounds of 16 threads warm
        // the first four predicted experts (1, 250, 96, 40), three of them right
        assert_eq!((per_expert, right, same), (8, 24, 24));
        assert_eq!(same_ascending, 0);
    }

    #[test]
    fn the_next_call_takes_the_prefetch_once() {
        let r = Rounds::new();
        let p = r.take_primed();
        assert_eq!((p.rounds, p.order()), (1, &[][..]));
        r.prime(3, &[40, 7, 40, 200, 7, 9]);
        let p = r.take_primed();
        assert_eq!((p.rounds, p.order()), (3, &[40, 7, 200, 9][..]));
        // taken: the call after gets neither
        let p = r.take_primed();
        assert_eq!((p.rounds, p.order()), (1, &[][..]));
        // a prediction past MAX_HINT distinct experts keeps its first ones
        let many: Vec<u32> = (0..40).rev().collect();
        r.prime(2, &many);
        let want: Vec<u32> = (0..40).rev().take(MAX_HINT).collect();
        assert_eq!(r.take_primed().order(), &want[..]);
    }
}
