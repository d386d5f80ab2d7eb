//! The small-m path of the W4A16 GEMM (`kt_w4a16_gemv_*` in `cuda/w4a16_gemm.cu`): for up
//! to [`GemvPlan::MAX_ROWS`] rows the product is a stream over the packed weights, so the
//! plan's job is to put enough warps on every multiprocessor to keep memory busy: first by
//! letting several warps share a column tile's k range (k-ways, summed in shared memory),
//! then by cutting k into slices whose f32 partial sums the kernel adds up at the end.

use std::collections::HashMap;

use cudarc::driver::{LaunchConfig, PushKernelArg};

use super::quant::{GROUP, TILE_N};
use super::{GemmWorkspace, W4A16Weights};
use crate::cuda::dtype::MmaFloat;
use crate::cuda::error::{launch_err, shape, CudaError, CudaResult};
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

/// Resident blocks per multiprocessor by (kernel, dynamic shared memory), asked of the driver
/// once per workspace.
pub(super) type OccupancyCache = HashMap<(String, usize), usize>;

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
        })
    }

    /// The automatic plan. `resident_warps(k_ways)` is how many warps of that kernel fit on
    /// the device at once (its shared memory grows with k_ways and m). The fewest k-ways
    /// whose warps fill the device with one slice; failing that 4 k-ways and enough slices to
    /// fill it, but no more slices than keep the partial sums (8 m n bytes each, written and
    /// read) within a quarter of the weight bytes (n k / 2): slices <= k / (64 m).
    /// `force_slices` overrides the slice count (clamped as in [`Self::with`]).
    pub fn choose(
        m: usize,
        n: usize,
        k: usize,
        mut resident_warps: impl FnMut(usize) -> CudaResult<usize>,
        force_slices: Option<usize>,
    ) -> CudaResult<Self> {
        let tiles = (n / TILE_N).max(1);
        for k_ways in [1, 2] {
            if tiles * k_ways >= resident_warps(k_ways)? {
                return Self::with(m, n, k, k_ways, force_slices.unwrap_or(1));
            }
        }
        let fill = resident_warps(4)? / (tiles * 4);
        let slices = force_slices.unwrap_or(fill.min(k / (64 * m)));
        Self::with(m, n, k, 4, slices)
    }

    /// Dynamic shared memory of the kernel for m rows with k_ways: the stages' weights,
    /// scales and m rows of x (`gv_x_row` bytes each).
    pub fn shared_bytes(m: usize, k_ways: usize) -> usize {
        STAGES * (STAGE_FIXED_BYTES + m * (k_ways * STEPS * 32 + 16))
    }

    fn kernel<T: MmaFloat>(&self) -> String {
        format!(
            "kt_w4a16_gemv_{}_t{}_k{}",
            T::SUFFIX,
            self.token_tiles,
            self.k_ways
        )
    }
}

impl GpuStream {
    /// Resident warps of the small-m kernel for m rows and k_ways on the whole device.
    fn gemv_resident_warps<T: MmaFloat>(
        &self,
        cache: &mut OccupancyCache,
        m: usize,
        k_ways: usize,
    ) -> CudaResult<usize> {
        let kernel = format!("kt_w4a16_gemv_{}_t{}_k{k_ways}", T::SUFFIX, m.div_ceil(8));
        let smem = GemvPlan::shared_bytes(m, k_ways);
        let key = (kernel, smem);
        if let Some(&b) = cache.get(&key) {
            return Ok(b * WARPS * self.info.multiprocessors);
        }
        let f = self
            .kernels
            .get_with_smem(&W4A16_GEMM, &key.0, smem as u32)?;
        let blocks = f
            .occupancy_max_active_blocks_per_multiprocessor(THREADS, smem, None)
            .map_err(|source| CudaError::Driver {
                op: "cuOccupancyMaxActiveBlocksPerMultiprocessor",
                source,
            })?
            .max(1) as usize;
        cache.insert(key, blocks);
        Ok(blocks * WARPS * self.info.multiprocessors)
    }

    /// The plan [`GpuStream::w4a16_gemm_planned`] uses for m <= 16 rows.
    pub fn w4a16_gemv_plan<T: MmaFloat>(
        &self,
        m: usize,
        n: usize,
        k: usize,
        ws: &mut GemmWorkspace,
        force_slices: Option<usize>,
    ) -> CudaResult<GemvPlan> {
        let cache = &mut ws.occupancy;
        GemvPlan::choose(
            m,
            n,
            k,
            |kw| self.gemv_resident_warps::<T>(cache, m, kw),
            force_slices,
        )
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
        const OP: &str = "w4a16_gemv";
        let (n, k) = (w.n, w.k);
        if x.len() != m * k || out.len() != m * n {
            return Err(shape(
                OP,
                format!(
                    "x has {}, out {} elements; expected m {m} x k {k} and m {m} x n {n}",
                    x.len(),
                    out.len()
                ),
            ));
        }
        if i32::try_from(m * k.max(n)).is_err() {
            return Err(shape(
                OP,
                format!("m {m} x k {k} or n {n} overflows the kernel's 32-bit indices"),
            ));
        }
        let expect = GemvPlan::with(m, n, k, plan.k_ways, plan.slices)?;
        if *plan != expect {
            return Err(shape(
                OP,
                format!("plan {plan:?} is not one for m {m}, n {n}, k {k} (expected {expect:?})"),
            ));
        }
        let kernel = plan.kernel::<T>();
        let smem = GemvPlan::shared_bytes(m, plan.k_ways);
        let f = self
            .kernels
            .get_with_smem(&W4A16_GEMM, &kernel, smem as u32)?;
        let dims = format!("m {m}, n {n}, k {k}, {plan:?}");
        let cfg = LaunchConfig {
            grid_dim: ((plan.column_groups * plan.slices) as u32, 1, 1),
            block_dim: (THREADS, 1, 1),
            shared_mem_bytes: smem as u32,
        };
        let (mi, ni, ki) = (m as i32, n as i32, k as i32);
        let steps = (plan.groups_per_slice * GROUP / 16) as i32;
        let slices = plan.slices as i32;

        if plan.slices == 1 {
            let null: u64 = 0;
            let mut b = self.stream.launch_builder(&f);
            b.arg(&x.slice)
                .arg(&w.packed.slice)
                .arg(&w.scales.slice)
                .arg(&mut out.slice)
                .arg(&null)
                .arg(&null);
            b.arg(&mi).arg(&ni).arg(&ki).arg(&steps).arg(&slices);
            // SAFETY: arguments match kt_w4a16_gemv_<T>_t<tiles>_k<ways> (x, packed, scales,
            // out, no partials, no counters, M, N, K, k steps per slice, slices); x is m x k
            // and out m x n (checked), 1 <= m <= 16 and the plan is this shape's (checked),
            // the packed weights and scales were sized for n x k by upload_w4a16 with
            // n % 64 == 0 and k % 128 == 0; the grid covers every column group, the dynamic
            // shared memory is the kernel's for m rows, and one slice never touches partials
            // or counters.
            return unsafe { b.launch(cfg) }
                .map(drop)
                .map_err(launch_err(kernel, dims));
        }

        let need = plan.slices * m * n;
        if ws.buf.as_ref().is_none_or(|b| b.len() < need) {
            ws.buf = Some(self.alloc_zeroed::<f32>(need)?);
        }
        if ws
            .counters
            .as_ref()
            .is_none_or(|c| c.len() < plan.column_groups)
        {
            ws.counters = Some(self.alloc_zeroed::<u32>(plan.column_groups)?);
        }
        let partial = ws.buf.as_mut().expect("allocated above");
        let counters = ws.counters.as_mut().expect("allocated above");
        let mut b = self.stream.launch_builder(&f);
        b.arg(&x.slice)
            .arg(&w.packed.slice)
            .arg(&w.scales.slice)
            .arg(&mut out.slice)
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
