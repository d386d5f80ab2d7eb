//! The repacked operator's decode call as ONE pool job (`moe/fused_job.rs`, as the
//! GGUF-native operator's): the last gate+up item of an expert finishes its intermediate
//! (quantizing the rows its items left in f32), and the last down item of each block of
//! output rows combines the block ([`InJob`]). The phase barriers, the pass quantizing the
//! unfused rows and the serial combine go away; every item's arithmetic is the phases', so
//! the output is bit for bit theirs.

use std::sync::atomic::AtomicU32;

use super::items::{Down, GateUp};
use crate::cpu::moe::combine::InJob;
use crate::cpu::moe::fused_job;
use crate::cpu::moe::plan::Item;
use crate::cpu::moe::routing::Routing;
use crate::cpu::ThreadPool;

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
    (up, down): (&[Item], &[Item]),
    combine: &InJob,
    state: &mut [AtomicU32],
    own_rounds: usize,
) {
    let gate_up = |it: Item, thread: usize| {
        // SAFETY: up items partition (position, row) of the intermediate, `thread` is the
        // pool's and owns its tiles, and the activations are gathered.
        unsafe { gu.item(it, thread) };
    };
    let expert_done = |e: usize| {
        let ps = (routing.offsets[e], routing.offsets[e + 1]);
        if unfused.contains(&ps) {
            // SAFETY: every gate+up item of expert e is done, so its positions' f32 rows
            // are complete and nobody writes them; their quantized rows are read only by
            // down items, which wait for the job's ready mark set after this.
            unsafe { gu.quantize_positions(ps.0 as usize..ps.1 as usize) };
        }
    };
    let down_step = |it: Item| {
        // SAFETY: the expert's quantized intermediate is complete (the job's ready mark);
        // down items partition (position, row) of the down rows.
        unsafe { dn.item(it) };
    };
    let steps = fused_job::Steps {
        gate_up: &gate_up,
        expert_done: &expert_done,
        down: &down_step,
        combine,
    };
    fused_job::run(pool, routing, (up, down), state, own_rounds, steps);
}
