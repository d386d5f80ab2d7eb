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
/// the smallest decode row block, so no item covers part of a block another item of the
/// same expert covers.
pub(crate) const BLOCK_ROWS: usize = 32;
const _: () = assert!(GEMV_MIN_ROW_BLOCK.is_multiple_of(BLOCK_ROWS));

/// Columns `c0..c0 + dst.len()` of token `t`'s output.
///
/// # Safety
/// `down_out` points at the `[pairs, h]` down rows, whose rows of token `t`'s positions
/// (`pos_of[t * k..][..k]`) are written at those columns and not being written.
#[allow(clippy::too_many_arguments)]
unsafe fn combine_cols(
    pos_of: &[u32],
    down_out: *const f32,
    h: usize,
    k: usize,
    weights: &[f32],
    t: usize,
    c0: usize,
    dst: &mut [f32],
) {
    for s in 0..k {
        let w = weights[t * k + s];
        let p = pos_of[t * k + s] as usize;
        // SAFETY: the caller's contract; the columns lie inside row p (c0 + len <= h).
        let src = unsafe { std::slice::from_raw_parts(down_out.add(p * h + c0), dst.len()) };
        if s == 0 {
            dst.iter_mut().zip(src).for_each(|(o, &v)| *o = w * v);
        } else {
            dst.iter_mut().zip(src).for_each(|(o, &v)| *o += w * v);
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
    let tokens = out.len() / h;
    // Positions are a permutation of 0..tokens * k (the routing's counting sort).
    assert!(pos_of.len() >= tokens * k && weights.len() >= tokens * k);
    assert!(down_out.len() >= tokens * k * h);
    let chunks = h.div_ceil(COMBINE_COLS);
    let o = Raw::new(out.as_mut_ptr());
    phase(pool, tokens * chunks, tokens * h * k, &|i, _| {
        let (t, c0) = (i / chunks, (i % chunks) * COMBINE_COLS);
        let c1 = (c0 + COMBINE_COLS).min(h);
        // SAFETY: columns c0..c1 of token t's output row belong to item i only; every
        // position's down row is written (the down phase is over) and lies inside
        // `down_out` (asserted above).
        unsafe {
            let dst = std::slice::from_raw_parts_mut(o.at(t * h + c0), c1 - c0);
            combine_cols(pos_of, down_out.as_ptr(), h, k, weights, t, c0, dst);
        }
    });
}

/// The combine inside the fused decode job: one counter per block of output rows.
pub(crate) struct InJob<'a> {
    left: &'a [AtomicU32],
    pos_of: &'a [u32],
    weights: &'a [f32],
    down_out: Raw<f32>,
    out: Raw<f32>,
    h: usize,
    k: usize,
}

impl<'a> InJob<'a> {
    /// Every block expects one down item of each of `experts` experts (decode: each
    /// active expert's items cover every output row once). `left` holds at least
    /// `h.div_ceil(BLOCK_ROWS)` counters; `down_out` the `[pairs, h]` down rows the job's
    /// down items write, `out` the `[tokens, h]` output.
    pub fn new(
        left: &'a mut [AtomicU32],
        experts: usize,
        pos_of: &'a [u32],
        weights: &'a [f32],
        down_out: &'a mut [f32],
        out: &'a mut [f32],
        k: usize,
    ) -> InJob<'a> {
        let h = down_out.len() / pos_of.len().max(1);
        let tokens = out.len() / h.max(1);
        assert!(pos_of.len() == tokens * k && weights.len() == tokens * k);
        assert!(down_out.len() == pos_of.len() * h && out.len() == tokens * h);
        let left = &mut left[..h.div_ceil(BLOCK_ROWS)];
        // Plain writes: the pool's job post publishes them to the threads.
        for c in left.iter_mut() {
            *c.get_mut() = experts as u32;
        }
        InJob {
            left,
            pos_of,
            weights,
            down_out: Raw::new(down_out.as_mut_ptr()),
            out: Raw::new(out.as_mut_ptr()),
            h,
            k,
        }
    }

    /// The down rows the job's items write (for the items themselves).
    pub fn down_out(&self) -> Raw<f32> {
        self.down_out
    }

    /// Down item `it` has written its rows: combines the blocks it was the last to finish.
    ///
    /// # Safety
    /// `it` is one of the job's down items, it has finished, and this is its only call; the
    /// job's down items cover each block once per expert.
    pub unsafe fn item_done(&self, it: &Item) {
        let r0 = it.row0 as usize;
        for b in r0 / BLOCK_ROWS..(r0 + it.rows as usize).div_ceil(BLOCK_ROWS) {
            // AcqRel: the last item out sees every other item's rows of the block.
            if self.left[b].fetch_sub(1, Ordering::AcqRel) != 1 {
                continue;
            }
            let (c0, c1) = (b * BLOCK_ROWS, ((b + 1) * BLOCK_ROWS).min(self.h));
            let tokens = self.pos_of.len() / self.k;
            for t in 0..tokens {
                // SAFETY: every down item of the block is done (its count reached 0), so
                // those rows of every position are written and final; rows c0..c1 of the
                // output belong to this block's last item alone.
                unsafe {
                    let dst = std::slice::from_raw_parts_mut(self.out.at(t * self.h + c0), c1 - c0);
                    let (p, w) = (self.pos_of, self.weights);
                    combine_cols(p, self.down_out.get(), self.h, self.k, w, t, c0, dst);
                }
            }
        }
    }
}
