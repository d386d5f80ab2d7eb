//! The decode call as ONE pool job, for both MoE operators (GGUF-native `compute.rs`,
//! repacked `repack/fused.rs`): gate+up, finishing the intermediate and down without the
//! phase barriers between them.
//!
//! Items `0..up.len()` are gate+up items, the rest down items, both in the same expert
//! order. The thread that finishes an expert's last gate+up item finishes that expert's
//! intermediate (`expert_done`: quantizes what is left in f32) and marks it ready; a down
//! item waits for its expert's mark. All gate+up items are handed out before any down
//! item ([`ThreadPool::for_each_in_order_first_own`]) and none waits on anything, so every
//! wait ends; since the counter hands the down items out in expert order, they mostly find
//! their expert ready. The thread that finishes the last down item of a block of output
//! rows combines that block ([`InJob`]). Thread `t` starts on gate+up items `t`, `t + threads`, ...
//! (`own_rounds` of them, none of which waits): those a prefetch warmed in its L2 when the
//! caller knew the experts ahead (`prefetch.rs`).

use std::sync::atomic::{AtomicU32, Ordering};

use super::combine::InJob;
use super::plan::Item;
use super::routing::Routing;
use crate::cpu::ThreadPool;

/// `state` value once an expert's intermediate is finished (until then it counts the
/// expert's gate+up items still running).
const READY: u32 = u32::MAX;

/// What the job does with each kind of item.
pub(crate) struct Steps<'a> {
    /// Gate+up item on pool thread `thread` (its tile scratch is that thread's).
    pub gate_up: &'a (dyn Fn(Item, usize) + Sync),
    /// Expert `e`'s gate+up items are all done: finish its intermediate.
    pub expert_done: &'a (dyn Fn(usize) + Sync),
    /// Down item, once its expert is ready: writes the item's down rows of `combine`.
    pub down: &'a (dyn Fn(Item) + Sync),
    /// Combines the output, block by block, as the down items finish.
    pub combine: &'a InJob<'a>,
}

/// Runs `up` then `down` with per-expert readiness; `state` holds a counter per expert.
/// `down` must be the down items `steps.combine` was built from.
pub(crate) fn run(
    pool: &ThreadPool,
    routing: &Routing,
    (up, down): (&[Item], &[Item]),
    state: &mut [AtomicU32],
    own_rounds: usize,
    steps: Steps,
) {
    // Plain writes: the pool's job post publishes them to the threads running items.
    for &e in routing.active() {
        *state[e as usize].get_mut() = 0;
    }
    for it in up {
        *state[it.expert as usize].get_mut() += 1;
    }
    let state = &*state;
    let own = up.len().min(own_rounds.saturating_mul(pool.threads()));
    pool.for_each_in_order_first_own(up.len() + down.len(), own, &|i, thread| {
        if let Some(&it) = up.get(i) {
            (steps.gate_up)(it, thread);
            let e = it.expert as usize;
            // AcqRel: the last one out sees every other item's intermediate rows.
            if state[e].fetch_sub(1, Ordering::AcqRel) == 1 {
                (steps.expert_done)(e);
                state[e].store(READY, Ordering::Release);
            }
        } else {
            let it = down[i - up.len()];
            let s = &state[it.expert as usize];
            // Acquire: the expert's finished intermediate is visible below.
            while s.load(Ordering::Acquire) != READY {
                std::hint::spin_loop();
            }
            (steps.down)(it);
            // SAFETY: one of the down items the combine was built from (the caller's
            // contract), finished, reported once; down items partition (position, row).
            unsafe { steps.combine.item_done(&it) };
        }
    });
}
