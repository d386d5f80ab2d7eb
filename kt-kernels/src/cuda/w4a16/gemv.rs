//! The small-m path of the W4A16 GEMM (`kt_w4a16_gemv_*` in `cuda/w4a16_gemm.cu`): for up
//! to [`GemvPlan::MAX_ROWS`] rows the product is a stream over the packed weights, cut into
//! work units (one pipeline stage of one column group: 8 KiB of weights) that the blocks
//! share out in equal runs ("stream-K": a run may start and end inside a column group).

use cudarc::driver::{LaunchConfig, PushKernelArg};

use super::quant::TILE_N;
use super::{GemmWorkspace, Operands, W4A16Weights};
use crate::cuda::dtype::MmaFloat;
use crate::cuda::error::{launch_err, shape, CudaResult};
use crate::cuda::modules::W4A16_GEMM;
use crate::cuda::runtime::{DeviceBuf, GpuStream};

/// Warps per block (`kGvWarps`); with `k_ways` warps per tile a block covers 4 / k_ways tiles.
const WARPS: usize = 4;
const THREADS: u32 = 32 * WARPS as u32;
/// Pipeline stages, k steps of 16 per warp and stage, and a stage's weight and scale bytes
/// (`kGvStages`, `kGvSteps`, `kGvWBytes + kGvSBytes`).
const STAGES: usize = 4;
const STEPS: usize = 4;
const STAGE_FIXED_BYTES: usize = WARPS * STEPS * 512 + WARPS * TILE_N * 2;
/// Packed weight bytes per block the automatic plan aims at. Measured on an H100 (timing
/// example, sweeps at 1 and 16 rows, 2026-11-21): the fastest plans of all seven DeepSeek-V3
/// shapes gave each block 28-64 KiB and several waves of blocks; less leaves the pipeline's
/// start-up latency unhidden, more leaves too few blocks for the hardware to even out the
/// multiprocessors' unequal share of memory bandwidth (one wave of equal blocks, one per
/// resident slot, measured 5-50% slower).
const BLOCK_BYTES: usize = 32 << 10;

/// How the small-m kernel is cut: the work units are the `stages_per_group` pipeline stages
/// of each of the `column_groups` groups of 4 / k_ways column tiles, numbered group by group,
/// and block b of `blocks` takes units floor(b U / blocks) .. floor((b + 1) U / blocks).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GemvPlan {
    /// Warps sharing one 64-column tile's k range: 1, 2 or 4.
    pub k_ways: usize,
    /// 1 for m <= 8, 2 for m <= 16: the 8-row token tiles of the transposed mma.
    pub token_tiles: usize,
    /// The n / 64 tiles in groups of 4 / k_ways, rounded up.
    pub column_groups: usize,
    /// Stages of a column group: k / (64 k_ways), rounded up.
    pub stages_per_group: usize,
    /// Blocks of the launch, 1..=units.
    pub blocks: usize,
}

impl GemvPlan {
    /// The most rows the small-m kernel takes.
    pub const MAX_ROWS: usize = 16;
    /// The k-way counts the kernel is instantiated for.
    pub const K_WAYS: [usize; 3] = [1, 2, 4];

    /// The plan with `k_ways` warps per tile and `blocks` blocks (clamped to 1..=units, so
    /// that no block is without work).
    pub fn with(m: usize, n: usize, k: usize, k_ways: usize, blocks: usize) -> CudaResult<Self> {
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
        let column_groups = (n / TILE_N).div_ceil(WARPS / k_ways).max(1);
        let stages_per_group = (k / 16).div_ceil(k_ways * STEPS).max(1);
        Ok(GemvPlan {
            k_ways,
            token_tiles: m.div_ceil(8),
            column_groups,
            stages_per_group,
            blocks: blocks.clamp(1, column_groups * stages_per_group),
        })
    }

    /// The automatic plan: blocks of about 32 KiB of weights (`BLOCK_BYTES`). Tiles per block (4 /
    /// k_ways) start at 1 (2 past 8 rows, whose x tile costs twice the shared memory) and
    /// double while a block's tiles hold less; each column group is cut into as many blocks
    /// ("slices") as that byte count allows, but no more than keep the partial sums (8 m n
    /// bytes per slice, written and read) within a quarter of the weight bytes (n k / 2),
    /// slices <= k / (64 m), unless that leaves fewer blocks than multiprocessors.
    /// `force_slices` overrides the slices per column group (clamped as in [`Self::with`]).
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
        let blocks = slices.max(1).saturating_mul(column_groups);
        Self::with(m, n, k, WARPS / tiles_per_block, blocks)
    }

    /// Work units: column groups x stages per group.
    pub fn units(&self) -> usize {
        self.column_groups * self.stages_per_group
    }

    /// Dynamic shared memory of the kernel for m rows with k_ways: the stages' weights,
    /// scales and m rows of x (`gv_x_row` bytes each).
    pub fn shared_bytes(m: usize, k_ways: usize) -> usize {
        STAGES * (STAGE_FIXED_BYTES + m * (k_ways * STEPS * 32 + 16))
    }

    /// f32 partial sums a launch may write for m rows: one slot of m x (4 / k_ways) x 64
    /// per (column group + block) pair, at most column groups + blocks slots.
    fn partial_len(&self, m: usize) -> usize {
        (self.column_groups + self.blocks) * m * (WARPS / self.k_ways) * TILE_N
    }

    fn kernel<T: MmaFloat>(token_tiles: usize, k_ways: usize) -> String {
        format!("kt_w4a16_gemv_{}_t{token_tiles}_k{k_ways}", T::SUFFIX)
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
        let expect = GemvPlan::with(m, n, k, plan.k_ways, plan.blocks)?;
        if *plan != expect {
            return Err(shape(
                OP,
                format!("plan {plan:?} is not one for m {m}, n {n}, k {k} (expected {expect:?})"),
            ));
        }
        let kernel = GemvPlan::kernel::<T>(plan.token_tiles, plan.k_ways);
        let smem = GemvPlan::shared_bytes(m, plan.k_ways);
        let f = self
            .kernels
            .get_with_smem(&W4A16_GEMM, &kernel, smem as u32)?;
        let dims = format!("m {m}, n {n}, k {k}, {plan:?}");
        let cfg = LaunchConfig {
            grid_dim: (plan.blocks as u32, 1, 1),
            block_dim: (THREADS, 1, 1),
            shared_mem_bytes: smem as u32,
        };
        let (mi, ni, ki) = (m as i32, n as i32, k as i32);

        if plan.blocks == 1 {
            let null: u64 = 0;
            let mut b = self.stream.launch_builder(&f);
            b.arg(&x)
                .arg(&packed)
                .arg(&scales)
                .arg(&mut out)
                .arg(&null)
                .arg(&null);
            b.arg(&mi).arg(&ni).arg(&ki);
            // SAFETY: arguments match kt_w4a16_gemv_<T>_t<tiles>_k<ways> (x, packed, scales,
            // out, no partials, no counters, M, N, K); x is m x k and out m x n, packed and
            // scales hold n x k weights, n % 64 == 0 and k % 128 == 0 (Operands::check), 1 <=
            // m <= 16 and the plan is this shape's (checked); the dynamic shared memory is the
            // kernel's for m rows, and one block owns every column group, so it never touches
            // partials or counters.
            return unsafe { b.launch(cfg) }
                .map(drop)
                .map_err(launch_err(kernel, dims));
        }

        ws.grow(self, plan.partial_len(m), plan.column_groups)?;
        let (partial, counters) = ws.buffers();
        let mut b = self.stream.launch_builder(&f);
        b.arg(&x)
            .arg(&packed)
            .arg(&scales)
            .arg(&mut out)
            .arg(&mut partial.slice)
            .arg(&mut counters.slice);
        b.arg(&mi).arg(&ni).arg(&ki);
        // SAFETY: as above, with partials and counters: the workspace holds at least (column
        // groups + blocks) x m x (4 / k_ways) x 64 f32, the slots (group + block) the kernel
        // writes, and one u32 per column group; the counters are zero (freshly allocated, or
        // reset by the last block of every group in every earlier launch on this stream), and
        // blocks <= units (GemvPlan::with), so every block has work and each group's last
        // contributor sees all the others' slots.
        unsafe { b.launch(cfg) }
            .map(drop)
            .map_err(launch_err(kernel, dims))
    }
}
