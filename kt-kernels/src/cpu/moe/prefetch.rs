//! Warming the caches for a decode call that has not been posted yet: the first gate+up
//! items of a predicted set of experts, a few rounds of one item per pool thread,
//! prefetched into L2.
//!
//! Why: in the hybrid decode the CPU threads wait ~40 us per layer for the GPU (the stretch
//! between two layers' experts) while DRAM idles; if the next layer's experts are known
//! early (predicted from the hidden state), the bytes its experts job reads first can stream
//! in then, and the job starts on cached weights. A decode call hands out its gate+up items
//! in order (experts ascending, row blocks ascending: `plan::build`), thread `t` starting on
//! items `t`, `t + threads`, ... for `rounds` rounds
//! (`ThreadPool::for_each_in_order_first_own`), so those are the items each thread runs
//! first; this prefetches them, thread `t` its own items into its own L2 in that order (the
//! first round everywhere before any second). One round of V2-Lite's items is ~4.7 MB
//! over 16 threads, streamed in ~25 us on a fast host, so a ~40 us stretch has room for
//! part of a second; the rounds past the first are what a slower host cuts short. Items
//! past the rounds would be evicted from a thread's L2 by the job's own stream before their
//! turn.
//!
//! The prefetch changes no value anywhere (it only issues prefetch hints); `stop` is polled
//! every [`LINES_PER_POLL`] lines so that the caller can end it as soon as the real call
//! can start (the hints already issued still land).

use std::ops::Range;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::layer::LayerInner;
use super::plan;
use crate::cpu::cache_hint::{self, LINE};
use crate::cpu::ThreadPool;
use crate::error::{KtError, Result};

/// Cache lines issued between two polls of `stop` (1 KB): the poll is a load that hits
/// until the flag changes, while the lines between two polls delay the real call's start
/// (a thread streams ~8 GB/s, 1 KB in ~0.13 us).
const LINES_PER_POLL: usize = 16;

/// The `rank`-th smallest distinct id of `ids` (no allocation: `ids` holds one token's
/// top-k, a few dozen at most).
fn nth_distinct(ids: &[u32], rank: usize) -> Option<u32> {
    let mut last: Option<u32> = None;
    for _ in 0..=rank {
        last = ids
            .iter()
            .copied()
            .filter(|&e| last.is_none_or(|l| e > l))
            .min();
        last?;
    }
    last
}

/// How many distinct ids `ids` holds.
fn distinct(ids: &[u32]) -> usize {
    ids.iter()
        .enumerate()
        .filter(|&(i, e)| !ids[..i].contains(e))
        .count()
}

/// The rounds of own items a context prefetches and hands out first unless told otherwise
/// (`MoeContext::set_prefetch_rounds`).
const DEFAULT_ROUNDS: usize = 2;

/// An operator's prefetch rounds: how many gate+up items per thread a prefetch warms (1 to
/// 64), and how many the last prefetch warmed, which the next call takes (resetting it):
/// only a call after a prefetch has items worth keeping on fixed threads past the first
/// round; the others keep the shared counter's order (with two fixed rounds on every call,
/// one device call read V3's one-token layer 5-12% slower; later ones with this rule read
/// new and old level within the noise).
pub(crate) struct Rounds {
    rounds: AtomicUsize,
    primed: AtomicUsize,
}

impl Rounds {
    pub fn new() -> Rounds {
        Rounds {
            rounds: AtomicUsize::new(DEFAULT_ROUNDS),
            primed: AtomicUsize::new(0),
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

    /// A prefetch of `rounds` rounds was issued.
    pub fn prime(&self, rounds: usize) {
        self.primed.store(rounds, Ordering::Relaxed);
    }

    /// The own rounds of the next call's decode hand-out: those the last prefetch warmed,
    /// else one (every thread starts on its own first item).
    pub fn take_primed(&self) -> usize {
        self.primed.swap(0, Ordering::Relaxed).max(1)
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
    fn distinct_ids_in_ascending_order() {
        let ids = [9u32, 3, 9, 0, 3, 7];
        assert_eq!(distinct(&ids), 4);
        let got: Vec<_> = (0..5).map(|r| nth_distinct(&ids, r)).collect();
        assert_eq!(got, [Some(0), Some(3), Some(7), Some(9), None]);
        assert_eq!(distinct(&[]), 0);
        assert_eq!(nth_distinct(&[], 0), None);
    }
}
