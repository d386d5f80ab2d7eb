//! The fused CPU MoE operator: one call computes, for every token `t` of a batch,
//! `out[t] = sum_s w[t,s] * down_e(silu(gate_e(x[t])) * up_e(x[t]))` with `e = ids[t,s]`,
//! over the GGUF-native stacked expert tensors (gate/up `[E, I, H]`, down `[E, H, I]`),
//! borrowed in place (a memory map or any byte owner: no copy, no repack).
//!
//! # Pieces
//! - [`ExpertStack`], [`MoeLayer`]: the three stacked tensors of one layer, each in its own
//!   format, checked once at construction.
//! - [`MoeContext`]: what runs layers: the thread pool, the ISA, one driver thread and the
//!   scratch, sized at construction for `max_tokens` and the layers it will run
//!   ([`MoeContext::reserve`]); nothing is allocated per call. Several layers share one
//!   context (they run one after the other), so a model pays for one scratch.
//! - [`MoeContext::submit`] returns a [`MoeHandle`] at once: the driver thread runs the
//!   call on the pool while the caller does something else; [`MoeHandle::sync`] waits and
//!   copies the output out. [`MoeContext::forward`] computes the same on the calling
//!   thread (no hand-off to the driver).
//! - [`reference`]: the f32 reference (dequantized weights, f32 activations, f64 sums).
//!
//! # How a call runs (see `compute.rs`)
//! 1. Routing (`routing.rs`): a counting sort of the `T * k` (token, slot) pairs by
//!    expert gives every pair a *position*; positions of one expert are contiguous, in
//!    (token, slot) order. Only experts some token chose appear in the work.
//! 2. Each token's activations are quantized once per distinct activation type (the
//!    table's `quantize_act` of the gate's and the up's format; one pass when they share
//!    an activation type) and copied to its `k` positions, so an expert's tokens are
//!    contiguous rows the GEMM tile reads with one stride. (In the fused decode job
//!    below, only positions of experts with several positions get a copy; an item of
//!    one position reads its token's row where it lies.)
//! 3. Gate and up together: a work item is (expert, block of intermediate rows, block of
//!    that expert's positions); it runs the gate tile and the up tile over the same
//!    activations into per-thread scratch and writes `silu(g) * u` into the per-position
//!    intermediate. Experts with at most [`GEMV_MAX_TOKENS`] positions take all of them
//!    in one item (the weights are read once for all tokens that chose the expert: the
//!    decode case: 256-row items, fewer when that leaves the pool too few; see `plan.rs`);
//!    busier experts are cut into 128-row x 64-position tiles (the prefill
//!    case; 256 rows where the projection runs the AMX K-quant GEMM, which transposes an
//!    item's activations once for all its rows), so a few experts that got most tokens
//!    still spread over every thread. With
//!    the AMX Q4_K GEMM (16-token groups) a busy expert's last 1-4 positions past a
//!    multiple of 16 get tiles of their own, which that GEMM hands to the AVX512 kernel
//!    (`plan::token_blocks`; cheaper than a mostly empty AMX token group).
//! 4. The intermediate rows are quantized to the down format's activation type.
//! 5. Down: items (expert, block of hidden rows, block of positions) write each
//!    position's down output to its own scratch row.
//! 6. The output: `out[t] = sum_s w[t,s] * down_out[pos(t,s)]`, in slot order
//!    (`combine.rs`; in the fused decode job, block by block of output rows as their
//!    down items finish).
//!
//! Items of one phase are handed out by the pool's atomic counter ([`ThreadPool::for_each`])
//! so no thread idles while work remains. When no expert has more than
//! [`GEMV_MAX_TOKENS`] positions (decode), phases 3-5 run as one pool job instead of three:
//! the thread that finishes an expert's last gate+up item quantizes that expert's
//! intermediate and marks it ready, and down items (handed out after every gate+up item)
//! wait for their expert's mark; this saves two pool round trips per call, and the
//! output is combined inside the same job.
//! Tile sizes depend only on the routing, never
//! on the thread count, and every output element is summed by one thread in slot order:
//! results are bit-identical whatever the number of threads.
//!
//! # NUMA (KTransformers-style tensor parallelism) — the mapping, not implemented
//! On a machine with several NUMA nodes, each node would own a contiguous slice
//! `[a, b)` of every expert's intermediate dimension: gate/up rows `a..b` and down
//! columns `a..b` (a column slice of a GGUF row is a byte range of the row when `a` is a
//! multiple of the down format's block), kept in memory local to the node. Node `n` runs
//! this same operator with its own pool (pinned to its cores) and context over a layer
//! restricted with [`MoeLayer::with_intermediate_slice`]: phases 2-5 touch only its slice,
//! because the gate/up work split takes the intermediate row range as a parameter and
//! the down tiles take the column offset and length. Its output is a partial sum over
//! its slice; the nodes' outputs are added (a `nodes x T x H` f32 reduction, small next to
//! the weights). Activations (phase 2) are replicated per node; weights are read only
//! from local memory, which is the point. Slices aligned to the activation block
//! quantize the intermediate exactly as the full layer does, so the sum of the
//! partials differs from the full output only by f32 summation order
//! (`tests/moe_api.rs` checks it).
//!
//! Repacked layouts (INT8/INT4 group-scaled, BF16 for AMX and VNNI) are the layer kind of
//! [`repack`]: weights converted at load time, run by [`repack::RepackedMoe`] with this
//! operator's routing and work split and its own kernels.
//!
//! [`GEMV_MAX_TOKENS`]: crate::cpu::GEMV_MAX_TOKENS
//! [`ThreadPool::for_each`]: crate::cpu::ThreadPool::for_each

mod combine;
mod compute;
mod context;
mod driver;
mod fused_job;
mod layer;
mod phase;
mod plan;
mod prefetch;
pub mod reference;
pub mod repack;
mod routing;
mod scratch;
mod silu;
#[cfg(target_arch = "x86_64")]
mod silu_avx512;

pub use context::{MoeContext, PoolRef};
pub use driver::MoeHandle;
pub use layer::{ExpertStack, MoeLayer, Storage};
pub use reference::reference;
