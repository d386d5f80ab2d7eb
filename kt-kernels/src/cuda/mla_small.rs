//! MLA decode for one sequence and one new token (`cuda/mla_decode_small.cu`): the path
//! [`GpuStream::mla_attention`] takes for such a batch (the hybrid decode of DeepSeek V2-Lite's
//! 16 heads and V3's 128) instead of the 64-row kernels, which pad 16 rows to a 64-row tile and
//! give a ~1k-key decode ~9 blocks (V3: 16). Here a block takes 16 rows and whole 32-key tiles,
//! with up to one key split per multiprocessor (fewer per block of rows when there are several,
//! [`max_splits`]), and a combine merges the splits.
//!
//! The split plan depends only on the sequence's length, which the kernels read on the device:
//! a live batch (a graph replaying one grid, sized for its largest length) and a plain batch of
//! the same length compute the same key ranges in the same order, bit for bit.
//!
//! On compute capability 9.0+ the combine is a programmatic dependent launch of the attention
//! kernel (its blocks wait on the device for the attention's end instead of being launched after
//! it: ~0.5 us less per layer in the hybrid decode); `KT_PDL=0` in the environment turns that off.

use std::ffi::c_void;

use cudarc::driver::{DevicePtr, DevicePtrMut, LaunchConfig, PushKernelArg};
use half::bf16;

use super::{MlaBatch, MlaWorkspace, KV_LORA_RANK};
use crate::cuda::error::{launch_err, CudaResult};
use crate::cuda::modules::MLA_DECODE_SMALL;
use crate::cuda::runtime::{launch_raw, DeviceBuf, DeviceInfo, GpuStream, LaunchOrder};

/// Largest head count this path takes (16-row blocks, `heads / 16` of them per key split):
/// DeepSeek V3's 128 heads of one token run here too. The 64-row kernels give such a decode a
/// block per 64 heads and two 64-key tiles (V3 at ~1k keys: 16 blocks, 15.3 us plus a 5.8 us
/// combine on an H100, cold: session 29).
const MAX_HEADS: usize = 128;
/// Rows (heads) of one block (kRows in the kernel).
const ROWS_PER_BLOCK: usize = 16;
/// Keys per cache tile (kKeys in the kernel).
const KEYS_PER_TILE: usize = 32;
const THREADS: u32 = 128;
const COMBINE_THREADS: u32 = 256;
/// Dynamic shared memory of kt_mla_decode_small_bf16 (a static_assert there keeps the two
/// equal): the query rows, two cache tiles, P and the per-warp row maxima and sums.
const SMEM_BYTES: u32 = 95_232;
/// The combine's shared weights per split (kMaxSplits in the kernel).
const MAX_SPLITS_CAP: usize = 1024;

/// Whether `batch` takes this path on `info`'s device (mma.sync needs compute capability 8.0+).
pub(super) fn takes(batch: &MlaBatch, info: &DeviceInfo) -> bool {
    batch.batch() == 1
        && batch.max_q_len == 1
        && batch.heads <= MAX_HEADS
        && info.compute_capability.0 >= 8
}

/// The most key splits of one launch for `heads`: one per multiprocessor for one block of
/// rows (16 heads); with `g` blocks of rows, about two blocks per multiprocessor over all of
/// them (V3's 128 heads: 8 x 33), so the partial outputs the combine reads stay few.
fn max_splits(info: &DeviceInfo, heads: usize) -> usize {
    let sms = info.multiprocessors.max(1);
    let groups = heads.div_ceil(ROWS_PER_BLOCK).max(1);
    (2 * sms).div_ceil(groups).min(sms).clamp(1, MAX_SPLITS_CAP)
}

/// Key splits of the grid for lengths up to `max_kv_len`: at least the kernel's plan for any
/// of them (ceil(tiles / ceil(tiles / max)) <= min(tiles, max)).
fn grid_splits(max_kv_len: usize, info: &DeviceInfo, heads: usize) -> usize {
    max_kv_len
        .div_ceil(KEYS_PER_TILE)
        .clamp(1, max_splits(info, heads))
}

/// Partial rows (splits x rows) a launch for `batch` writes.
pub(super) fn partial_rows(batch: &MlaBatch, info: &DeviceInfo) -> usize {
    grid_splits(batch.max_kv_len, info, batch.heads) * batch.rows
}

impl GpuStream {
    /// [`GpuStream::mla_attention`] for a batch that [`takes`] this path; the caller checked
    /// the operands against the batch (`check_operands`).
    pub(super) fn mla_decode_small(
        &self,
        batch: &MlaBatch,
        q: &DeviceBuf<bf16>,
        cache: &DeviceBuf<bf16>,
        scale: f32,
        out: &mut DeviceBuf<bf16>,
        ws: &mut MlaWorkspace,
    ) -> CudaResult<()> {
        let splits = grid_splits(batch.max_kv_len, &self.info, batch.heads);
        ws.reserve(self, splits * batch.rows)?;
        let part_o = ws.part_o.as_mut().expect("allocated above");
        let part_lse = ws.part_lse.as_mut().expect("allocated above");
        let kernel = "kt_mla_decode_small_bf16";
        let f = self
            .kernels
            .get_with_smem(&MLA_DECODE_SMALL, kernel, SMEM_BYTES)?;
        let dims = || {
            format!(
                "heads {}, max kv_len {}, block size {}, grid splits {splits}",
                batch.heads, batch.max_kv_len, batch.block_size
            )
        };
        let heads = batch.heads as i32;
        let bs = batch.block_size as i32;
        let max_sp = max_splits(&self.info, batch.heads) as i32;
        let scale_log2 = scale * std::f32::consts::LOG2_E;
        let cfg = LaunchConfig {
            grid_dim: (
                batch.heads.div_ceil(ROWS_PER_BLOCK) as u32,
                splits as u32,
                1,
            ),
            block_dim: (THREADS, 1, 1),
            shared_mem_bytes: SMEM_BYTES,
        };
        let mut b = self.stream.launch_builder(&f);
        b.arg(&q.slice)
            .arg(&cache.slice)
            .arg(&batch.table.slice)
            .arg(&batch.kv_lens.slice);
        b.arg(&heads).arg(&bs).arg(&scale_log2).arg(&max_sp);
        b.arg(&mut part_o.slice).arg(&mut part_lse.slice);
        // SAFETY: arguments match kt_mla_decode_small_bf16 (q, cache, table, kv_lens, heads,
        // block_size, scale_log2, max_splits, part_o, part_lse). The batch is one sequence of
        // one token (takes) whose lengths mla_batch / mla_set_kv_lens checked against its table
        // row and the ints; the caller checked q (heads rows of 576), the cache (every block the
        // table names) and out. part_o / part_lse hold `splits` x heads rows, and the kernel's
        // plan for the device's length never exceeds the grid's splits (grid_splits).
        unsafe { b.launch(cfg) }
            .map(drop)
            .map_err(launch_err(kernel, dims))?;

        let combine = "kt_mla_decode_small_combine";
        let cf = self.kernels.get(&MLA_DECODE_SMALL, combine)?;
        let ccfg = LaunchConfig {
            grid_dim: (batch.heads as u32, (KV_LORA_RANK / 128) as u32, 1),
            block_dim: (COMBINE_THREADS, 1, 1),
            shared_mem_bytes: 0,
        };
        let (po, _g1) = part_o.slice.device_ptr(&self.stream);
        let (pl, _g2) = part_lse.slice.device_ptr(&self.stream);
        let (kl, _g3) = batch.kv_lens.slice.device_ptr(&self.stream);
        let (o, _g4) = out.slice.device_ptr_mut(&self.stream);
        let mut params: [*mut c_void; 6] = [
            &po as *const _ as *mut c_void,
            &pl as *const _ as *mut c_void,
            &kl as *const _ as *mut c_void,
            &heads as *const _ as *mut c_void,
            &max_sp as *const _ as *mut c_void,
            &o as *const _ as *mut c_void,
        ];
        let programmatic = self.programmatic(LaunchOrder::Programmatic);
        // SAFETY: the parameters are kt_mla_decode_small_combine's (part_o, part_lse, kv_lens,
        // heads, max_splits, out; each pointer names a live value of the kernel's type for the
        // duration of the call): block (head, quarter) reads the splits the kernel above wrote
        // for the same length (the same plan) on this stream and writes the head's 128 outputs
        // of that quarter; out holds heads x 512 (checked by the caller). The kernel waits for
        // the attention kernel's grid (griddepcontrol.wait) before it reads part_o / part_lse,
        // so a programmatic (early) start is safe.
        unsafe { launch_raw(&self.stream, &cf, ccfg, &mut params, programmatic, 1) }
            .map_err(launch_err(combine, dims))
    }
}
