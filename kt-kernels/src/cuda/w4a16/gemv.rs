//! The small-m path of the W4A16 GEMM (`kt_w4a16_gemv_*` in `cuda/w4a16_gemm.cu`): for up
//! to [`GemvPlan::MAX_ROWS`] rows the product is a stream over the packed weights, loaded
//! straight into registers. The plan cuts it into blocks: several warps may share a column
//! tile's k range (k-ways, summed in shared memory) and k may be cut into slices, whose f32
//! partial sums the kernel adds up; it also picks how many groups of 128 each warp keeps in
//! flight (depth).

use cudarc::driver::{LaunchConfig, PushKernelArg};

use super::quant::{GROUP, TILE_N};
use super::{GemmWorkspace, Operands, W4A16Weights};
use crate::cuda::dtype::MmaFloat;
use crate::cuda::error::{launch_err, shape, CudaResult};
use crate::cuda::modules::W4A16_GEMM;
use crate::cuda::runtime::{DeviceBuf, GpuStream};

/// Warps per block (`kGvWarps`); with `k_ways` warps per tile a block covers 4 / k_ways tiles.
const WARPS: usize = 4;
const THREADS: u32 = 32 * WARPS as u32;
/// Packed weight bytes per block the automatic plan aims at. Measured on an H100 (timing
/// example, k-ways x slices sweeps at 1 and 16 rows, 2026-11-21): the fastest plans of all
/// seven DeepSeek-V3 shapes gave each block 28-64 KiB; less leaves the pipeline's start-up
/// latency unhidden, more leaves too few blocks to spread over the device.
const BLOCK_BYTES: usize = 32 << 10;

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
    /// Groups of 128 (4 KiB of weights) each warp keeps in flight ahead of the one it
    /// multiplies: 1 or 2 ([`Self::DEPTHS`]). Two hide more latency per warp but take ~30
    /// more registers, so fewer warps fit on a multiprocessor.
    pub depth: usize,
}

impl GemvPlan {
    /// The most rows the small-m kernel takes.
    pub const MAX_ROWS: usize = 16;
    /// The k-way counts the kernel is instantiated for.
    pub const K_WAYS: [usize; 3] = [1, 2, 4];
    /// The depths the kernel is instantiated for.
    pub const DEPTHS: [usize; 2] = [1, 2];

    /// The plan with `k_ways` warps per tile and about `slices` k slices (clamped to
    /// 1..=k/128, then evened out so that every slice holds at least one group), depth 1.
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
            depth: 1,
        })
    }

    /// This plan with `depth` groups in flight per warp (one of [`Self::DEPTHS`]).
    pub fn with_depth(self, depth: usize) -> CudaResult<Self> {
        if !Self::DEPTHS.contains(&depth) {
            return Err(shape(
                "w4a16 gemv plan",
                format!("depth {depth} must be one of {:?}", Self::DEPTHS),
            ));
        }
        Ok(GemvPlan { depth, ..self })
    }

    /// The automatic plan: blocks of about 32 KiB of weights (`BLOCK_BYTES`). Tiles per block (4 /
    /// k_ways) start at 1 (2 past 8 rows, whose x tile costs twice the shared memory) and
    /// double while a block's tiles hold less; k is cut into as many slices as that byte
    /// count allows, but no more than keep the partial sums (8 m n bytes each, written and
    /// read) within a quarter of the weight bytes (n k / 2), slices <= k / (64 m), unless
    /// that leaves fewer blocks than multiprocessors. `force_slices` overrides the slice
    /// count (clamped as in [`Self::with`]).
    pub fn choose(
        m: usize,
        n: usize,
        k: usize,
        multiprocessors: usize,
        force_slices: Option<usize>,
    ) -> CudaResult<Self> {
        let tile_bytes = k * TILE_N / 2; // one tile's packed weights over all of k
        let mut tiles_per_block = if m > 8 { 2 } else { 1 };
        while tiles_per_block < WARPS && tiles_per_block * tile_bytes < BLOCK_BYTES {
            tiles_per_block *= 2;
        }
        let column_groups = (n / TILE_N).div_ceil(tiles_per_block).max(1);
        let slices = force_slices.unwrap_or_else(|| {
            (tiles_per_block * tile_bytes / BLOCK_BYTES)
                .min(k / (64 * m))
                .max(multiprocessors.div_ceil(column_groups))
        });
        Self::with(m, n, k, WARPS / tiles_per_block, slices)
    }

    fn kernel<T: MmaFloat>(&self) -> String {
        format!(
            "kt_w4a16_gemv_{}_t{}_k{}_d{}",
            T::SUFFIX,
            self.token_tiles,
            self.k_ways,
            self.depth
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
        GemvPlan::choose(m, n, k, self.info.multiprocessors, force_slices)
    }

    /// `out = x W^T` for 1..=16 rows on the small-m kernel with an explicit `plan` (made
    /// by [`GemvPlan::with`] or [`GpuStream::w4a16_gemv_plan`] for this m, n and k).
    pub fn w4a16_gemv_planned<T: MmaFloat>(
        &self,
        w: &W4A16Weights<T>,
        x: &DeviceBuf<T>,
        m: usize,
        out: &mut DeviceBuf<T>,
        ws: &mut GemmWorkspace,
        plan: &GemvPlan,
    ) -> CudaResult<()> {
        let ops = Operands::of("w4a16_gemv", w, x, m, out)?;
        self.w4a16_gemv_launch(ops, ws, plan)
    }

    /// Launches the small-m kernel on `ops` with `plan`.
    pub(crate) fn w4a16_gemv_launch<T: MmaFloat>(
        &self,
        ops: Operands<'_, T>,
        ws: &mut GemmWorkspace,
        plan: &GemvPlan,
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
        let expect = GemvPlan::with(m, n, k, plan.k_ways, plan.slices)?.with_depth(plan.depth)?;
        if *plan != expect {
            return Err(shape(
                OP,
                format!("plan {plan:?} is not one for m {m}, n {n}, k {k} (expected {expect:?})"),
            ));
        }
        let kernel = plan.kernel::<T>();
        let f = self.kernels.get(&W4A16_GEMM, &kernel)?;
        let dims = || format!("m {m}, n {n}, k {k}, {plan:?}");
        let cfg = LaunchConfig {
            grid_dim: ((plan.column_groups * plan.slices) as u32, 1, 1),
            block_dim: (THREADS, 1, 1),
            shared_mem_bytes: 0,
        };
        let (mi, ni, ki) = (m as i32, n as i32, k as i32);
        let steps = (plan.groups_per_slice * GROUP / 16) as i32;
        let slices = plan.slices as i32;

        if plan.slices == 1 {
            let null: u64 = 0;
            let mut b = self.stream.launch_builder(&f);
            b.arg(&x)
                .arg(&packed)
                .arg(&scales)
                .arg(&mut out)
                .arg(&null)
                .arg(&null);
            b.arg(&mi).arg(&ni).arg(&ki).arg(&steps).arg(&slices);
            // SAFETY: arguments match kt_w4a16_gemv_<T>_t<tiles>_k<ways>_d<depth> (x, packed, scales,
            // out, no partials, no counters, M, N, K, k steps per slice, slices); x is m x k
            // and out m x n, packed and scales hold n x k weights (Operands::check), 1 <= m
            // <= 16 and the plan is this shape's (checked), n % 64 == 0 and k % 128 == 0
            // (upload_w4a16 / the expert slab checked them); the grid covers every column
            // group, and one slice never touches partials or counters.
            return unsafe { b.launch(cfg) }
                .map(drop)
                .map_err(launch_err(kernel, dims));
        }

        ws.grow(self, plan.slices * m * n, plan.column_groups)?;
        let (partial, counters) = ws.buffers();
        let mut b = self.stream.launch_builder(&f);
        b.arg(&x)
            .arg(&packed)
            .arg(&scales)
            .arg(&mut out)
            .arg(&mut partial.slice)
            .arg(&mut counters.slice);
        b.arg(&mi).arg(&ni).arg(&ki).arg(&steps).arg(&slices);
        // SAFETY: as above, with partials and counters: the workspace holds at least slices x
        // m x n f32 and one u32 per column group; the counters are zero (freshly allocated,
        // or reset by the last block of every earlier launch on this stream), and every
        // slice has at least one group (GemvPlan::with), so each group's last block sees all.
        unsafe { b.launch(cfg) }
            .map(drop)
            .map_err(launch_err(kernel, dims))
    }
}
