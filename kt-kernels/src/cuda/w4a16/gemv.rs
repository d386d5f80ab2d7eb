//! The small-m path of the W4A16 GEMM (`kt_w4a16_gemv_*` in `cuda/w4a16_gemm.cu`): for up
//! to [`GemvPlan::MAX_ROWS`] rows the product is a stream over the packed weights, loaded
//! straight into registers (x too up to 8 rows; past 8 the block stages x in shared memory).
//! The plan cuts it into blocks: several warps may share a column tile's k range (k-ways,
//! summed in shared memory) and k may be cut into slices, whose f32 partial sums the kernel
//! adds up: through global f32 partials and an arrival counter per column group, or (2-3
//! slices, compute capability 9.0+) within a thread-block cluster's shared memory. A spread
//! plan ([`GemvPlan::spread`]) streams most tiles whole and cuts the rest into k slices, so
//! that the multiprocessors stream about the same number of groups.
//!
//! With [`LaunchOrder::Programmatic`] (compute capability 9.0+) the kernel is a programmatic
//! dependent launch: its blocks may start before the kernel before it has completed (as soon
//! as that kernel lets them; this kernel lets its own dependents start at its exit), load
//! their first group of weights, and wait for that kernel's completion before reading x or
//! the scales or writing anything (partials, counters, out). So the weights must not be
//! written by the kernel just before; x may be (that is the point).

use std::ffi::c_void;
use std::sync::OnceLock;

use cudarc::driver::{DevicePtr, DevicePtrMut, LaunchConfig};

use super::quant::{GROUP, TILE_N};
use super::{GemmWorkspace, Operands, W4A16Weights};
use crate::cuda::dtype::MmaFloat;
use crate::cuda::error::{launch_err, shape, CudaResult};
use crate::cuda::modules::W4A16_GEMM;
use crate::cuda::runtime::{launch_raw, DeviceBuf, GpuStream, LaunchOrder};

/// Warps per block (`kGvWarps`); with `k_ways` warps per tile a block covers 4 / k_ways tiles.
const WARPS: usize = 4;
const THREADS: u32 = 32 * WARPS as u32;
/// Groups of 128 per warp under which the automatic plan does not cut k into slices unless
/// the device is far from full. Measured on an H100 (timing example, k-ways x slices sweeps at
/// 1 and 16 rows, 2026-11-22): a warp streams best over long runs (the fastest plans gave the
/// large matrices 14-18 groups per warp, one tile per block, ~1.7-2.2 blocks per
/// multiprocessor); a slice that halves a 4-group run to 2 costs more than the idle
/// multiprocessors it fills (shared expert down: 5.5 us unsplit, 7.0 in two slices).
const MIN_RUN: usize = 8;
/// Blocks of the kernel resident per multiprocessor: its launch bounds hold both token-tile
/// forms to <= 168 registers per thread (m <= 8: ~150; m > 8, with x staged through shared
/// memory and one weight buffer: ~160, and 14-38 KiB of shared memory per block). The plan
/// rule below, fitted at 1 and 16 rows on an H100 (session 7 and 8 sweeps), picks the best
/// or a near-best k-ways x slices cell at both.
const RESIDENT_BLOCKS: usize = 3;

/// How the small-m kernel is cut.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GemvPlan {
    /// Warps sharing one 64-column tile's k range: 1, 2 or 4.
    pub k_ways: usize,
    /// k slices (each a whole number of 128-groups) and their size in groups.
    pub slices: usize,
    pub groups_per_slice: usize,
    /// Blocks per k slice: the n / 64 tiles in blocks of 4 / k_ways, rounded up.
    pub column_groups: usize,
    /// 1 for m <= 8, 2 for m <= 16: the 8-row token tiles of the transposed mma.
    pub token_tiles: usize,
    /// The spread form ([`Self::spread`]): the tiles streamed whole, one block each, the
    /// others cut into `slices` k slices of `groups_per_slice`; 0 for the plain form, whose
    /// grid is `column_groups` x `slices`.
    pub spread: usize,
}

impl GemvPlan {
    /// The most rows the small-m kernel takes.
    pub const MAX_ROWS: usize = 16;
    /// The k-way counts the kernel is instantiated for.
    pub const K_WAYS: [usize; 3] = [1, 2, 4];

    /// The plan with `k_ways` warps per tile and about `slices` k slices (clamped to
    /// 1..=k/128, then evened out so that every slice holds at least one group).
    pub fn with(m: usize, n: usize, k: usize, k_ways: usize, slices: usize) -> CudaResult<Self> {
        if !(1..=Self::MAX_ROWS).contains(&m) || !Self::K_WAYS.contains(&k_ways) {
            return Err(shape(
                "w4a16 gemv plan",
                format!(
                    "m {m} must be 1..={}, k_ways {k_ways} one of {:?}",
                    Self::MAX_ROWS,
                    Self::K_WAYS
                ),
            ));
        }
        let groups = (k / GROUP).max(1);
        let groups_per_slice = groups.div_ceil(slices.clamp(1, groups));
        Ok(GemvPlan {
            k_ways,
            slices: groups.div_ceil(groups_per_slice),
            groups_per_slice,
            column_groups: (n / TILE_N).div_ceil(WARPS / k_ways).max(1),
            token_tiles: m.div_ceil(8),
            spread: 0,
        })
    }

    /// The spread plan: 4 k-ways, one tile per block; blocks 0..`whole` stream tiles
    /// 0..`whole` whole, and each of the n / 64 - `whole` tiles past them is cut into
    /// `slices` k slices (evened out as in [`Self::with`]), a block each, after those.
    pub fn spread(m: usize, n: usize, k: usize, whole: usize, slices: usize) -> CudaResult<Self> {
        let tiles = n / TILE_N;
        if whole == 0 || whole >= tiles {
            return Err(shape(
                "w4a16 gemv plan",
                format!("spread: {whole} whole tiles must be 1..{tiles} (n {n})"),
            ));
        }
        let mut plan = Self::with(m, n, k, 4, slices)?;
        plan.spread = whole;
        Ok(plan)
    }

    /// The blocks the kernel is launched with.
    pub fn blocks(&self) -> usize {
        if self.spread > 0 {
            self.spread + (self.column_groups - self.spread) * self.slices
        } else {
            self.column_groups * self.slices
        }
    }

    /// The automatic plan. k-ways: 4 (one tile per block, the tile's warps interleaving its
    /// groups), fewer where k has under two groups per warp. Slices: where the column groups
    /// fill less than half of the multiprocessors, enough for two blocks per multiprocessor
    /// (at most one per group and k-way); otherwise one block per multiprocessor at least, if
    /// that leaves every warp a run of `MIN_RUN` groups, else no split. A grid just past one
    /// wave of resident blocks (`RESIDENT_BLOCKS` per multiprocessor) runs its last blocks
    /// alone, so there k is cut in two where every warp keeps `MIN_RUN / 2` groups, else the
    /// k-ways are halved (session 7, when the 16-row kernel fit two blocks per multiprocessor:
    /// dense in 288 blocks 48.8 us, 576 44.3; q_b_proj 384 blocks 16.6 us, 192 of two tiles
    /// 14.9). Past 8 rows the slices grow to what one wave of resident blocks holds where
    /// every warp keeps `MIN_RUN` groups (o_proj and dense out: 3 instead of 2; session-8
    /// sweep at 16 rows, `bench-results/2026-11-22-s8-w4a16s8b/`: dense out 29.4 vs 29.8 us,
    /// o_proj 27.1-27.3 either way; at 1 row 3 slices were 1-2% faster too, but 2-8 rows
    /// were not timed, so m <= 8 keeps its rule). A plan of one tile per block and 2-3 blocks
    /// per multiprocessor becomes a spread plan where the tiles past 2 per multiprocessor are
    /// at most half the multiprocessors (see the rule below; dense in). `force_slices`
    /// overrides the slice count (clamped as in [`Self::with`]) and keeps the plain form.
    pub fn choose(
        m: usize,
        n: usize,
        k: usize,
        multiprocessors: usize,
        force_slices: Option<usize>,
    ) -> CudaResult<Self> {
        let groups = (k / GROUP).max(1);
        let tiles = (n / TILE_N).max(1);
        let mut k_ways = Self::K_WAYS
            .into_iter()
            .rev()
            .find(|&kw| groups >= 2 * kw)
            .unwrap_or(1);
        let mut min_slices = 1;
        let resident = multiprocessors * RESIDENT_BLOCKS;
        if tiles.div_ceil(WARPS / k_ways) > resident {
            if groups / (2 * k_ways) >= MIN_RUN / 2 {
                min_slices = 2;
            } else {
                k_ways = (k_ways / 2).max(1);
            }
        }
        let column_groups = tiles.div_ceil(WARPS / k_ways);
        let slices = force_slices.unwrap_or_else(|| {
            let s = min_slices.max(if 2 * column_groups < multiprocessors {
                (2 * multiprocessors)
                    .div_ceil(column_groups)
                    .min(groups / k_ways)
            } else {
                let s = multiprocessors.div_ceil(column_groups);
                if groups / (s * k_ways) >= MIN_RUN {
                    s
                } else {
                    1
                }
            });
            // Past 8 rows: as many slices as one wave of resident blocks holds, where every
            // warp keeps a run of MIN_RUN groups.
            let wave = resident / column_groups;
            if m > 8 && wave > s && groups / (wave * k_ways) >= MIN_RUN {
                wave
            } else {
                s
            }
        });
        let plan = Self::with(m, n, k, k_ways, slices)?;
        // Between 2 and 3 blocks per multiprocessor of one tile each, some multiprocessors
        // stream 3 tiles and the rest 2, and the kernel ends with the former alone. Where the
        // tiles past 2 per multiprocessor are at most half as many as the multiprocessors,
        // those are cut into as many k slices as leaves one per multiprocessor (blocks start
        // in index order, the sliced ones last): dense in, 288 tiles of 56 groups on 132: 264
        // whole tiles and 24 in 5 slices of 12 groups, at most 56 + 56 + 12 groups per
        // multiprocessor instead of 3 x 56. H100, session 11 (interleaved, same binary):
        // 16 rows 27.8 -> 26.6 us, 8 rows 27.1 -> 26.4, 1 row 25.6 -> 25.5 (kernel alone,
        // CUPTI: 24.8 -> 24.3); ncu at 16 rows: the busiest multiprocessor's active cycles
        // 49.9k -> 46.4k (mean 44.7k -> 44.2k). Two blocks per multiprocessor, each a whole
        // tile plus a k slice of one past them, were slower (31.4 us: fewer warps in flight).
        let whole = 2 * multiprocessors;
        if force_slices.is_none()
            && plan.k_ways == 4
            && plan.slices == 1
            && tiles > whole
            && 2 * (tiles - whole) <= multiprocessors
        {
            return Self::spread(m, n, k, whole, multiprocessors / (tiles - whole));
        }
        Ok(plan)
    }

    fn kernel<T: MmaFloat>(&self) -> String {
        format!(
            "kt_w4a16_gemv_{}_t{}_k{}{}",
            T::SUFFIX,
            self.token_tiles,
            self.k_ways,
            if self.spread > 0 { "_spread" } else { "" }
        )
    }
}

impl GpuStream {
    /// The plan [`GpuStream::w4a16_gemm_planned`] uses for m <= 16 rows.
    pub fn w4a16_gemv_plan(
        &self,
        m: usize,
        n: usize,
        k: usize,
        force_slices: Option<usize>,
    ) -> CudaResult<GemvPlan> {
        // `KT_W4A16_SPREAD=0` (read once) keeps the plain form, for A/B runs.
        static ON: OnceLock<bool> = OnceLock::new();
        let on =
            *ON.get_or_init(|| std::env::var("KT_W4A16_SPREAD").map_or(true, |v| v.trim() != "0"));
        let plan = GemvPlan::choose(m, n, k, self.info.multiprocessors, force_slices)?;
        if plan.spread > 0 && !on {
            return GemvPlan::with(m, n, k, plan.k_ways, 1);
        }
        Ok(plan)
    }

    /// `out = x W^T` for 1..=16 rows on the small-m kernel with an explicit `plan` (made by
    /// [`GemvPlan::with`], [`GemvPlan::spread`] or [`GpuStream::w4a16_gemv_plan`] for this m,
    /// n and k),
    /// launched in `order` (see the module's doc).
    #[allow(clippy::too_many_arguments)] // the operands, workspace, plan and launch order
    pub fn w4a16_gemv_planned<T: MmaFloat>(
        &self,
        w: &W4A16Weights<T>,
        x: &DeviceBuf<T>,
        m: usize,
        out: &mut DeviceBuf<T>,
        ws: &mut GemmWorkspace,
        plan: &GemvPlan,
        order: LaunchOrder,
    ) -> CudaResult<()> {
        let ops = Operands::of("w4a16_gemv", w, x, m, out)?;
        self.w4a16_gemv_launch(ops, ws, plan, order)
    }

    /// Launches the small-m kernel on `ops` with `plan`, in `order`.
    pub(crate) fn w4a16_gemv_launch<T: MmaFloat>(
        &self,
        ops: Operands<'_, T>,
        ws: &mut GemmWorkspace,
        plan: &GemvPlan,
        order: LaunchOrder,
    ) -> CudaResult<()> {
        const OP: &str = "w4a16_gemv";
        ops.check(OP)?;
        let Operands {
            x,
            packed,
            scales,
            mut out,
            m,
            n,
            k,
        } = ops;
        let expect = if plan.spread > 0 {
            GemvPlan::spread(m, n, k, plan.spread, plan.slices)?
        } else {
            GemvPlan::with(m, n, k, plan.k_ways, plan.slices)?
        };
        if *plan != expect {
            return Err(shape(
                OP,
                format!("plan {plan:?} is not one for m {m}, n {n}, k {k} (expected {expect:?})"),
            ));
        }
        let kernel = plan.kernel::<T>();
        let f = self.kernels.get(&W4A16_GEMM, &kernel)?;
        let dims = || format!("m {m}, n {n}, k {k}, {plan:?}, {order:?}");
        let cfg = LaunchConfig {
            grid_dim: (plan.blocks() as u32, 1, 1),
            block_dim: (THREADS, 1, 1),
            shared_mem_bytes: 0,
        };
        let (mi, ni, ki) = (m as i32, n as i32, k as i32);
        let steps = (plan.groups_per_slice * GROUP / 16) as i32;
        let slices = plan.slices as i32;
        let cluster = self.gemv_cluster(plan);
        // The last parameter: whether the slices are clustered, or for the spread form the
        // tiles streamed whole.
        let clustered = if plan.spread > 0 {
            plan.spread as i32
        } else {
            i32::from(cluster > 1)
        };

        // One slice, or slices in a cluster, never touch the partials or the counters (null
        // pointers).
        let buffers = if plan.slices > 1 && cluster == 1 {
            ws.grow(self, plan.slices * m * n, plan.column_groups)?;
            Some(ws.buffers())
        } else {
            None
        };
        let st = &self.stream;
        let (xp, _gx) = x.device_ptr(st);
        let (wp, _gw) = packed.device_ptr(st);
        let (sp, _gs) = scales.device_ptr(st);
        let (op, _go) = out.device_ptr_mut(st);
        let (pp, cp, _gp, _gc) = match buffers {
            Some((partial, counters)) => {
                let (pp, gp) = partial.slice.device_ptr_mut(st);
                let (cp, gc) = counters.slice.device_ptr_mut(st);
                (pp, cp, Some(gp), Some(gc))
            }
            None => (0, 0, None, None),
        };
        let mut params: [*mut c_void; 12] = [
            &xp as *const _ as *mut c_void,
            &wp as *const _ as *mut c_void,
            &sp as *const _ as *mut c_void,
            &op as *const _ as *mut c_void,
            &pp as *const _ as *mut c_void,
            &cp as *const _ as *mut c_void,
            &mi as *const _ as *mut c_void,
            &ni as *const _ as *mut c_void,
            &ki as *const _ as *mut c_void,
            &steps as *const _ as *mut c_void,
            &slices as *const _ as *mut c_void,
            &clustered as *const _ as *mut c_void,
        ];
        // SAFETY: the parameters are kt_w4a16_gemv_<T>_t<tiles>_k<ways>'s (x, packed, scales,
        // out, partials, counters, M, N, K, k steps per slice, slices, clustered), each a
        // pointer to a live value of its type; x is m x k and out m x n, packed and scales hold
        // n x k weights (Operands::check), 1 <= m <= 16 and the plan is this shape's
        // (checked), n % 64 == 0 and k % 128 == 0 (upload_w4a16 / the expert slab checked
        // them); the grid covers every column group. One slice never touches partials or
        // counters (null); with several, the workspace holds at least slices x m x n f32 and
        // one u32 per column group, the counters are zero (freshly allocated, or reset by the
        // last block of every earlier launch on this stream), and every slice has at least
        // one group (GemvPlan::with), so each group's last block sees all. Clustered: the
        // slices of a column group are consecutive blocks (block = group x slices + slice),
        // one cluster of `slices` <= 3 blocks (compute capability 9.0+, gemv_cluster), and
        // the kernel then uses neither partials nor counters. Spread (kt_w4a16_gemv_<T>_t<tiles>
        // _k4_spread, the last parameter the count w of tiles streamed whole): blocks 0..w take
        // tiles 0..w whole and write `out`; the tiles - w tiles past them (column group = tile
        // at 4 k-ways) take `slices` blocks each after those, through the partials and one
        // counter per column group as above (GemvPlan::spread: 1 <= w < tiles; the grid is
        // blocks()). Programmatic: the
        // kernel reads only weights (which the caller vouches the previous kernel does not
        // write) before griddepcontrol.wait, and x, the workspace and out after it.
        unsafe { launch_raw(st, &f, cfg, &mut params, self.programmatic(order), cluster) }
            .map_err(launch_err(kernel, dims))
    }
}

impl GpuStream {
    /// The cluster size of a launch of `plan`: its slices where they are 2 or 3, on compute
    /// capability 9.0+, the slices of a column group then summed through distributed shared
    /// memory instead of global partials (same bits); else 1. Measured on an H100 (timing
    /// example, 2026-11-22): o_proj and dense out (2 slices at 1 row, 3 at 16) 2-4% faster;
    /// the shared expert's in projection (8 slices) 17-26% slower as one cluster of 8 (a
    /// cluster's blocks must share one GPC, and rank 0 reads 8 blocks' sums one by one); 4-7
    /// slices were not timed. `KT_W4A16_CLUSTER=0` (read once) keeps the partials everywhere,
    /// for A/B runs.
    fn gemv_cluster(&self, plan: &GemvPlan) -> u32 {
        static ON: OnceLock<bool> = OnceLock::new();
        let on =
            *ON.get_or_init(|| std::env::var("KT_W4A16_CLUSTER").map_or(true, |v| v.trim() != "0"));
        if on
            && plan.spread == 0
            && self.info.compute_capability.0 >= 9
            && (2..=MAX_CLUSTER).contains(&plan.slices)
        {
            plan.slices as u32
        } else {
            1
        }
    }
}

/// The most slices summed in a cluster.
const MAX_CLUSTER: usize = 3;
