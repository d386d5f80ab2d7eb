//! The repacked operator's decode call as ONE pool job, as the GGUF-native operator's
//! (`compute.rs`'s `fused`): gate+up items first, then down items, handed out in order;
//! the last gate+up item of an expert finishes its intermediate (quantizing the rows its
//! items left in f32) and marks it ready, a down item waits for its expert's mark, and
//! the last down item of each block of output rows combines the block ([`InJob`]). The
//! three phase barriers, the pass quantizing the unfused rows and the serial combine go
//! away; every item's arithmetic is the phases', so the output is bit for bit theirs.

use std::sync::atomic::{AtomicU32, Ordering};

use super::items::{Down, GateUp};
use crate::cpu::moe::combine::InJob;
use crate::cpu::moe::plan::Item;
use crate::cpu::moe::routing::Routing;
use crate::cpu::ThreadPool;

/// `state` value once an expert's quantized intermediate is complete (until then it
/// counts the expert's gate+up items still running).
const READY: u32 = u32::MAX;

/// Runs the `up` then `down` items of one call (every expert at most
/// `GEMV_MAX_TOKENS` positions) and combines the output through `combine`, whose down
/// rows `dn` writes. `unfused` lists the position ranges of the experts whose gate+up
/// items leave their intermediate in f32; `state` has a counter per expert; `own_rounds`
/// rounds of gate+up items go to fixed threads first.
#[allow(clippy::too_many_arguments)]
pub(super) fn run(
    pool: &ThreadPool,
    gu: &GateUp,
    dn: &Down,
    routing: &Routing,
    unfused: &[(u32, u32)],
    up: &[Item],
    down: &[Item],
    combine: &InJob,
    state: &mut [AtomicU32],
    own_rounds: usize,
) {
    // Plain writes: the pool's job post publishes them to the threads running items.
    for &e in routing.active() {
        *state[e as usize].get_mut() = 0;
    }
    for it in up {
        *state[it.expert as usize].get_mut() += 1;
    }
    let state = &*state;
    // In order: a down item waits for its expert's gate+up items, so all of those must be
    // handed out before any down item (plain `for_each` starts each thread on a share of
    // its own); none of them waits, so every wait ends. Thread t starts on gate+up items
    // t, t + threads, ... (`own_rounds` of them): those `RepackedMoe::prefetch` warmed in
    // its L2.
    let own = up.len().min(own_rounds.saturating_mul(pool.threads()));
    pool.for_each_in_order_first_own(up.len() + down.len(), own, &|i, thread| {
        if let Some(&it) = up.get(i) {
            // SAFETY: up items partition (position, row) of the intermediate, `thread` is
            // the pool's and owns its tiles, and the activations are gathered.
            unsafe { gu.item(it, thread) };
            let e = it.expert as usize;
            // AcqRel: the last one out sees every other item's intermediate rows.
            if state[e].fetch_sub(1, Ordering::AcqRel) == 1 {
                let ps = (routing.offsets[e], routing.offsets[e + 1]);
                if unfused.contains(&ps) {
                    // SAFETY: every gate+up item of expert e is done (the count reached
                    // 0), so its positions' f32 rows are complete and nobody writes them;
                    // their quantized rows are read only by down items waiting for READY.
                    unsafe { gu.quantize_positions(ps.0 as usize..ps.1 as usize) };
                }
                state[e].store(READY, Ordering::Release);
            }
        } else {
            let it = down[i - up.len()];
            let s = &state[it.expert as usize];
            while s.load(Ordering::Acquire) != READY {
                std::hint::spin_loop();
            }
            // SAFETY: the expert's quantized intermediate is complete (READY, Acquire);
            // down items partition (position, row) of the down rows.
            unsafe { dn.item(it) };
            // SAFETY: one of the down items the combine was built from, finished,
            // reported once; down items partition (position, row).
            unsafe { combine.item_done(&it) };
        }
    });
}
