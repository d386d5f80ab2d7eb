//! The last step of a call: `out[t] = sum_s w[t,s] * down_out[pos(t,s)]`, every element
//! summed by one thread in slot order, so the result never depends on the threads.
//!
//! It runs either as a phase of its own ([`combine`]) or inside the fused decode job
//! ([`InJob`]): there each block of [`BLOCK_ROWS`] output rows counts the down items
//! still writing it, and the item that finishes a block last combines it. In a phase of
//! its own at one token the combine ran on the calling thread alone (8 x 7168 products,
//! below the pool's threshold) and read every position's down row from the cores that
//! wrote it: 26-32 us of a 1.5 ms DeepSeek-V3 call at 16 threads on the device, 4-8 us
//! of V2-Lite's 0.27 ms (session 24, per-item TSC stamps). Inside the job that work is
//! spread over the threads finishing the blocks, at no change in any output bit.

use std::sync::atomic::{AtomicU32, Ordering};

use super::phase::phase;
use super::plan::{Item, GEMV_MIN_ROW_BLOCK};
use crate::cpu::shared_ptr::Raw;
use crate::cpu::ThreadPool;

/// Output columns per item of the combine phase.
const COMBINE_COLS: usize = 1024;

/// Output rows per block of the in-job combine. Decode items' rows start at multiples of
/// the smallest decode row block, so a block is finished once every item touching it is.
pub(crate) const BLOCK_ROWS: usize = 32;
const _: () = assert!(GEMV_MIN_ROW_BLOCK.is_multiple_of(BLOCK_ROWS));

/// The blocks of [`BLOCK_ROWS`] output rows that down item `it` writes rows of.
fn blocks(it: &Item) -> std::ops::Range<usize> {
    let r0 = it.row0 as usize;
    r0 / BLOCK_ROWS..(r0 + it.rows as usize).div_ceil(BLOCK_ROWS)
}

/// What a combine reads: the routing weights and positions of `tokens` tokens of `k`
/// slots, and the `[tokens * k, h]` down rows.
#[derive(Clone, Copy)]
struct Sums<'a> {
    pos_of: &'a [u32],
    weights: &'a [f32],
    down_out: Raw<f32>,
    h: usize,
    k: usize,
    tokens: usize,
}

impl<'a> Sums<'a> {
    /// Checks the lengths: positions are a permutation of `0..tokens * k` (the routing's
    /// counting sort), so every row they name lies in `down_out`.
    fn new(pos_of: &'a [u32], weights: &'a [f32], down_out: &[f32], h: usize, k: usize) -> Self {
        let tokens = pos_of.len() / k.max(1);
        assert!(pos_of.len() == tokens * k && weights.len() == tokens * k);
        assert!(down_out.len() >= tokens * k * h);
        Sums {
            pos_of,
            weights,
            down_out: Raw::new(down_out.as_ptr()),
            h,
            k,
            tokens,
        }
    }

    /// Columns `c0..c0 + dst.len()` (within `h`) of token `t`'s output.
    ///
    /// # Safety
    /// The down rows of token `t`'s positions are written at those columns and not being
    /// written.
    unsafe fn cols(&self, t: usize, c0: usize, dst: &mut [f32]) {
        debug_assert!(t < self.tokens && c0 + dst.len() <= self.h);
        let k = self.k;
        for s in 0..k {
            let w = self.weights[t * k + s];
            let p = self.pos_of[t * k + s] as usize;
            // SAFETY: the caller's contract; row p lies in `down_out` (checked in `new`)
            // and the columns inside it.
            let src =
                unsafe { std::slice::from_raw_parts(self.down_out.at(p * self.h + c0), dst.len()) };
            if s == 0 {
                dst.iter_mut().zip(src).for_each(|(o, &v)| *o = w * v);
            } else {
                dst.iter_mut().zip(src).for_each(|(o, &v)| *o += w * v);
            }
        }
    }
}

/// The combine as a phase of its own, in items of one token's [`COMBINE_COLS`] columns.
pub(crate) fn combine(
    pool: &ThreadPool,
    pos_of: &[u32],
    down_out: &[f32],
    h: usize,
    k: usize,
    weights: &[f32],
    out: &mut [f32],
) {
    let sums = Sums::new(pos_of, weights, down_out, h, k);
    let tokens = sums.tokens;
    assert_eq!(out.len(), tokens * h);
    let chunks = h.div_ceil(COMBINE_COLS);
    let o = Raw::new(out.as_mut_ptr());
    phase(pool, tokens * chunks, tokens * h * k, &|i, _| {
        let (t, c0) = (i / chunks, (i % chunks) * COMBINE_COLS);
        let c1 = (c0 + COMBINE_COLS).min(h);
        // SAFETY: columns c0..c1 of token t's output row belong to item i only; every
        // position's down row is written (the down phase is over).
        unsafe {
            let dst = std::slice::from_raw_parts_mut(o.at(t * h + c0), c1 - c0);
            sums.cols(t, c0, dst);
        }
    });
}

/// The combine inside the fused decode job: one counter per block of output rows.
pub(crate) struct InJob<'a> {
    left: &'a [AtomicU32],
    sums: Sums<'a>,
    out: Raw<f32>,
}

impl<'a> InJob<'a> {
    /// Each block expects the job's `down` items that cover it. `left` holds at least
    /// `h.div_ceil(BLOCK_ROWS)` counters; `down_out` the `[pairs, h]` down rows the down
    /// items write, `out` the `[tokens, h]` output.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        left: &'a mut [AtomicU32],
        down: &[Item],
        pos_of: &'a [u32],
        weights: &'a [f32],
        down_out: &'a mut [f32],
        out: &'a mut [f32],
        h: usize,
        k: usize,
    ) -> InJob<'a> {
        let sums = Sums::new(pos_of, weights, down_out, h, k);
        assert_eq!(out.len(), sums.tokens * h);
        let left = &mut left[..h.div_ceil(BLOCK_ROWS)];
        // Plain writes: the pool's job post publishes them to the threads.
        for c in left.iter_mut() {
            *c.get_mut() = 0;
        }
        for it in down {
            for b in blocks(it) {
                *left[b].get_mut() += 1;
            }
        }
        InJob {
            left,
            sums,
            out: Raw::new(out.as_mut_ptr()),
        }
    }

    /// The down rows the job's items write (for the items themselves).
    pub fn down_out(&self) -> Raw<f32> {
        self.sums.down_out
    }

    /// Down item `it` has written its rows: combines the blocks it was the last to finish.
    ///
    /// # Safety
    /// `it` is one of the `down` items given to [`InJob::new`], it has finished, and this
    /// is its only call; those items write disjoint (position, row) blocks.
    pub unsafe fn item_done(&self, it: &Item) {
        let h = self.sums.h;
        for b in blocks(it) {
            // AcqRel: the last item out sees every other item's rows of the block.
            if self.left[b].fetch_sub(1, Ordering::AcqRel) != 1 {
                continue;
            }
            let (c0, c1) = (b * BLOCK_ROWS, ((b + 1) * BLOCK_ROWS).min(h));
            for t in 0..self.sums.tokens {
                // SAFETY: every down item of the block is done (its count reached 0), so
                // those rows of every position are written and final; rows c0..c1 of the
                // output belong to this block's last item alone.
                unsafe {
                    let dst = std::slice::from_raw_parts_mut(self.out.at(t * h + c0), c1 - c0);
                    self.sums.cols(t, c0, dst);
                }
            }
        }
    }
}
