//! One phase of a call for both MoE operators: its items on the pool, or on the calling
//! thread alone when the phase is too small to pay for waking the pool.

use crate::cpu::ThreadPool;

/// Below this many elements (multiply-adds) a phase runs on the calling thread alone:
/// waking the pool would cost more than the work.
pub(crate) const SERIAL_ELEMS: usize = 1 << 16;

/// Runs `body(i, thread)` for `i in 0..n` on the pool, or inline (as thread 0) when the
/// phase's `elems` are fewer than [`SERIAL_ELEMS`].
pub(crate) fn phase(
    pool: &ThreadPool,
    n: usize,
    elems: usize,
    body: &(dyn Fn(usize, usize) + Sync),
) {
    if elems < SERIAL_ELEMS {
        (0..n).for_each(|i| body(i, 0));
    } else {
        pool.for_each(n, body);
    }
}
