//! The small-m path of the W4A16 GEMM (`kt_w4a16_gemv_*` in `cuda/w4a16_gemm.cu`): for up
//! to [`GemvPlan::MAX_ROWS`] rows the product is a stream over the packed weights, so the
//! plan's job is to give every multiprocessor enough blocks to keep memory busy, splitting k
//! only as far as the column groups alone cannot.

use cudarc::driver::{LaunchConfig, PushKernelArg};

use super::quant::{GROUP, TILE_N};
use super::{GemmWorkspace, W4A16Weights};
use crate::cuda::dtype::MmaFloat;
use crate::cuda::error::{launch_err, CudaResult};
use crate::cuda::modules::W4A16_GEMM;
use crate::cuda::runtime::{DeviceBuf, GpuStream};

/// Warps per block, each streaming one 64-column tile (`kGvWarps` in the kernel).
const TILES_PER_BLOCK: usize = 4;
const THREADS: u32 = 32 * TILES_PER_BLOCK as u32;

/// How the small-m kernel is cut: blocks of [`TILES_PER_BLOCK`] column tiles times k slices
/// of whole 128-groups, and the kernel instance (8 or 16 rows per mma).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GemvPlan {
    pub slices: usize,
    pub groups_per_slice: usize,
    /// Column groups (blocks per k slice): n / 256, rounded up.
    pub column_groups: usize,
    /// 1 for m <= 8, 2 for m <= 16: the 8-row token tiles of the transposed mma.
    pub token_tiles: usize,
}

impl GemvPlan {
    /// The most rows the small-m kernel takes.
    pub const MAX_ROWS: usize = 16;

    /// Splits k so that the blocks fill the device in one wave: `capacity` is how many blocks
    /// can be resident at once. Every slice holds at least one group. `force_slices`
    /// overrides the choice (clamped to 1..=k/128); tests exercise both paths with it.
    pub fn new(m: usize, n: usize, k: usize, capacity: usize, force_slices: Option<usize>) -> Self {
        let groups = (k / GROUP).max(1);
        let column_groups = n.div_ceil(TILE_N * TILES_PER_BLOCK).max(1);
        let wanted = force_slices
            .unwrap_or(capacity / column_groups)
            .clamp(1, groups);
        let groups_per_slice = groups.div_ceil(wanted);
        GemvPlan {
            slices: groups.div_ceil(groups_per_slice),
            groups_per_slice,
            column_groups,
            token_tiles: if m <= 8 { 1 } else { 2 },
        }
    }
}

impl GpuStream {
    /// [`GpuStream::w4a16_gemm_planned`] for 1..=16 rows (shapes checked by the caller).
    pub(super) fn w4a16_gemv<T: MmaFloat>(
        &self,
        w: &W4A16Weights<T>,
        x: &DeviceBuf<T>,
        m: usize,
        out: &mut DeviceBuf<T>,
        ws: &mut GemmWorkspace,
        force_slices: Option<usize>,
    ) -> CudaResult<()> {
        let (n, k) = (w.n, w.k);
        let kernel = format!(
            "kt_w4a16_gemv_{}_t{}",
            T::SUFFIX,
            if m <= 8 { 1 } else { 2 }
        );
        let f = self.kernels.get(&W4A16_GEMM, &kernel)?;
        let capacity = self
            .kernels
            .resident_blocks(&W4A16_GEMM, &kernel, THREADS)?
            * self.info.multiprocessors;
        let plan = GemvPlan::new(m, n, k, capacity, force_slices);
        let dims = format!("m {m}, n {n}, k {k}, {plan:?}");
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
            b.arg(&x.slice)
                .arg(&w.packed.slice)
                .arg(&w.scales.slice)
                .arg(&mut out.slice)
                .arg(&null)
                .arg(&null);
            b.arg(&mi).arg(&ni).arg(&ki).arg(&steps).arg(&slices);
            // SAFETY: arguments match kt_w4a16_gemv_<T>_t<tiles> (x, packed, scales, out, no
            // partials, no counters, M, N, K, k steps per slice, slices); x is m x k and out
            // m x n (checked by the caller), m <= 16, the packed weights and scales were sized
            // for n x k by upload_w4a16 with n % 64 == 0 and k % 128 == 0; the grid covers
            // every column group, and one slice never touches partials or counters.
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
        // slice has at least one group (GemvPlan), so each group's last block sees all.
        unsafe { b.launch(cfg) }
            .map(drop)
            .map_err(launch_err(kernel, dims))
    }
}
