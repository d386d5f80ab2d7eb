//! MLA attention in the latent space over a paged bf16 cache (`cuda/mla_attn.cu`): the
//! attention core of [`crate::ops::mla_absorbed`] for DeepSeek V2/V3 geometry
//! (`kv_lora_rank` 512, rope 64), with `W_uk` already folded into the query and `W_uv` left to
//! the next GEMM.
//!
//! - query rows `[rows, 576]`: per (token, head), `q_lat = W_uk^T q_nope` then `q_pe`;
//! - cache `[num_blocks, block_size, 576]`: per token, the latent then `k_pe`; a sequence's
//!   token `k` lives in block `table[seq][k / block_size]`;
//! - output `[rows, 512]`: `softmax(scale * q . cache_k) . cache_k[:512]` per row.
//!
//! A batch ([`MlaBatch`]) mixes sequences of different lengths; each has `q_len` new tokens
//! that are the last of its `kv_len` cached ones, and token `t` sees cache tokens
//! `0..=kv_len - q_len + t`: decode is `q_len = 1`, a causal prefill `q_len > 1`. Long
//! sequences are cut into key splits whose partial softmaxes a combine kernel merges.
//!
//! Two kernels compute the same thing ([`MlaKernel`]): warpgroup MMAs (`wgmma`) on compute
//! capability 9.0 (H100/H200), warp-level `mma.sync` everywhere else (sm_80+).
//!
//! A live batch ([`GpuStream::mla_batch_live`]) is one a captured CUDA graph replays: its kv
//! lengths and its split count live on the device and change between launches
//! ([`GpuStream::mla_set_kv_lens`]); the grid is sized for the most splits its largest
//! lengths plan and the splits past the step's count exit at once, so a step computes the
//! same key ranges, bit for bit, as a plain batch of the same lengths.
//!
//! [`GpuStream::mla_attention`] sends a decode of one sequence with at most 128 heads (one
//! token) to a third kernel of 16-row blocks that spreads the keys over up to one block per
//! multiprocessor (`mla_small.rs`, `cuda/mla_decode_small.cu`); a forced split count or an explicit kernel
//! ([`GpuStream::mla_attention_with`]) keeps the 64-row kernels.

use cudarc::driver::{LaunchConfig, PushKernelArg};
use half::bf16;

use super::error::{launch_err, shape, CudaResult};
use super::modules::{Embedded, MLA_ATTN, MLA_ATTN_SM90};
use super::runtime::{DeviceBuf, DeviceInfo, GpuStream, TensorMap};

// The batch-1, one-token, few-heads decode path (a child module: it reads the batch's fields).
#[path = "mla_small.rs"]
mod small;

/// Latent (compressed kv) width per token: the output row and the value part of a cache row.
pub const KV_LORA_RANK: usize = 512;
/// Rope part of a cache row and of a query row.
pub const ROPE_DIM: usize = 64;
/// A cache row and a query row: latent then rope.
pub const CACHE_ROW: usize = KV_LORA_RANK + ROPE_DIM;

/// Query rows one block takes (both kernels).
const ROWS_PER_BLOCK: usize = 64;
/// Largest keys per cache tile of the two kernels: the int range check leaves room for it.
const MAX_KEYS_PER_TILE: usize = 64;
const THREADS: u32 = 256;
/// Dynamic shared memory of kt_mla_attn_bf16 (a static_assert there keeps the two equal):
/// query tile, two cache tiles, partial scores, P and the rows' softmax state. More than an
/// sm_80 block may have (164 KiB): there the opt-in fails with a typed driver error.
const SMEM_BYTES: u32 = 192_256;
/// Dynamic shared memory of kt_mla_attn_sm90_bf16 (static_assert there): query tile, two
/// 64-key cache tiles, P, the rows' maxima and sums, a barrier per 64-dim box of each tile,
/// and 1 KiB to align the swizzled tiles.
const SMEM_BYTES_SM90: u32 = 231_568;

/// Which MLA attention kernel a launch uses; both give results within the same error bound
/// and each is deterministic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MlaKernel {
    /// Warp-level `mma.sync`, 32-key tiles (`cuda/mla_attn.cu`): any sm_80+ device with
    /// 188 KiB of shared memory per block.
    MmaSync,
    /// Warpgroup `wgmma`, 64-key tiles (`cuda/mla_attn_sm90.cu`, sm_90a machine code):
    /// compute capability 9.0 only. With pages of a multiple of 64 tokens it fetches whole
    /// tiles with bulk tensor copies (TMA), else with per-thread `cp.async`.
    Wgmma,
}

impl MlaKernel {
    /// Whether `info`'s device can run this kernel.
    pub fn runs_on(self, info: &DeviceInfo) -> bool {
        match self {
            MlaKernel::MmaSync => info.compute_capability.0 >= 8,
            MlaKernel::Wgmma => info.compute_capability == (9, 0),
        }
    }

    /// The fastest kernel for `info`'s device.
    pub fn best_for(info: &DeviceInfo) -> MlaKernel {
        if MlaKernel::Wgmma.runs_on(info) {
            MlaKernel::Wgmma
        } else {
            MlaKernel::MmaSync
        }
    }

    /// Every kernel `info`'s device can run (tests compare them all).
    pub fn all_for(info: &DeviceInfo) -> Vec<MlaKernel> {
        [MlaKernel::MmaSync, MlaKernel::Wgmma]
            .into_iter()
            .filter(|k| k.runs_on(info))
            .collect()
    }

    /// Module, kernel name, keys per cache tile and dynamic shared memory.
    fn launch_params(self) -> (&'static Embedded, &'static str, usize, u32) {
        match self {
            MlaKernel::MmaSync => (&MLA_ATTN, "kt_mla_attn_bf16", 32, SMEM_BYTES),
            MlaKernel::Wgmma => (&MLA_ATTN_SM90, "kt_mla_attn_sm90_bf16", 64, SMEM_BYTES_SM90),
        }
    }
}
const COMBINE_THREADS: u32 = 128;
const GRID_Z_MAX: usize = 65_535;

/// The shapes of one batch on the device: per sequence its new tokens (`q_len`), cache
/// length (`kv_len`) and block-table row. Built once per step, reused by every layer.
pub struct MlaBatch {
    heads: usize,
    block_size: usize,
    max_blocks: usize,
    rows: usize,
    max_q_len: usize,
    max_kv_len: usize,
    /// Largest block id the table uses for the sequences' tokens (checked against the cache).
    max_block_used: usize,
    cu_q: DeviceBuf<i32>,
    kv_lens: DeviceBuf<i32>,
    table: DeviceBuf<i32>,
    /// A live batch's step state (None: lengths fixed at upload).
    live: Option<LiveLens>,
}

/// What a live batch keeps to plan each step: the kernel its split count is planned for,
/// each sequence's new tokens and largest kv length, and the split count on the device.
struct LiveLens {
    kernel: MlaKernel,
    q_lens: Vec<usize>,
    max_kv_lens: Vec<usize>,
    splits: DeviceBuf<i32>,
}

impl MlaBatch {
    pub fn batch(&self) -> usize {
        self.kv_lens.len()
    }

    /// Query (and output) rows: the sum of `q_len * heads`.
    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn heads(&self) -> usize {
        self.heads
    }

    pub fn block_size(&self) -> usize {
        self.block_size
    }

    /// Blocks of one key split (query row tiles times sequences).
    fn blocks_per_split(&self) -> usize {
        (self.max_q_len * self.heads).div_ceil(ROWS_PER_BLOCK) * self.batch()
    }
}

/// f32 scratch of the key splits (partial outputs and log-sum-exps), grown on demand.
#[derive(Default)]
pub struct MlaWorkspace {
    part_o: Option<DeviceBuf<f32>>,
    part_lse: Option<DeviceBuf<f32>>,
    allocations: u64,
}

impl MlaWorkspace {
    /// Room for `split_rows` (splits x rows) partial rows.
    fn reserve(&mut self, s: &GpuStream, split_rows: usize) -> CudaResult<()> {
        let (need_o, need_l) = (split_rows * KV_LORA_RANK, split_rows);
        if self.part_o.as_ref().is_none_or(|b| b.len() < need_o) {
            self.part_o = Some(s.alloc_zeroed::<f32>(need_o)?);
            self.allocations += 1;
        }
        if self.part_lse.as_ref().is_none_or(|b| b.len() < need_l) {
            self.part_lse = Some(s.alloc_zeroed::<f32>(need_l)?);
            self.allocations += 1;
        }
        Ok(())
    }

    /// How many times a buffer was (re)allocated: a CUDA graph captured with this workspace
    /// names its buffers by address and stays valid while this count does not change.
    pub fn allocations(&self) -> u64 {
        self.allocations
    }
}

/// How many key splits a launch uses: enough blocks to fill the device twice when the batch
/// alone does not fill it (`capacity` = blocks resident at once), never a split shorter than
/// two tiles of `keys_per_tile`. `force` overrides (clamped to one tile per split; tests use
/// it).
pub fn plan_splits(
    blocks_per_split: usize,
    max_kv_len: usize,
    keys_per_tile: usize,
    capacity: usize,
    force: Option<usize>,
) -> usize {
    let tiles = max_kv_len.div_ceil(keys_per_tile.max(1)).max(1);
    match force {
        Some(s) => s.clamp(1, tiles),
        None if blocks_per_split * 5 >= capacity * 4 => 1,
        None => (2 * capacity)
            .div_ceil(blocks_per_split.max(1))
            .clamp(1, (tiles / 2).max(1)),
    }
}

fn to_i32(what: &str, v: usize) -> CudaResult<i32> {
    i32::try_from(v).map_err(|_| shape("mla_batch", format!("{what} = {v} does not fit in an i32")))
}

impl GpuStream {
    /// Uploads a batch description. `block_table` is `[batch, max_blocks]` (row-major); only
    /// the first `ceil(kv_len / block_size)` entries of a row are read. Each sequence needs
    /// `1 <= q_len <= kv_len <= max_blocks * block_size`.
    pub fn mla_batch(
        &self,
        heads: usize,
        q_lens: &[usize],
        kv_lens: &[usize],
        block_table: &[u32],
        block_size: usize,
    ) -> CudaResult<MlaBatch> {
        const OP: &str = "mla_batch";
        let batch = kv_lens.len();
        // (the checks below are shared with mla_batch_live, whose kv_lens are the largest)
        if heads == 0 || block_size == 0 || batch == 0 || q_lens.len() != batch {
            return Err(shape(
                OP,
                format!(
                    "heads {heads}, block size {block_size}, {} q lengths and {batch} kv lengths (all must be > 0 and the counts equal)",
                    q_lens.len()
                ),
            ));
        }
        if batch > GRID_Z_MAX || !block_table.len().is_multiple_of(batch) {
            return Err(shape(
                OP,
                format!(
                    "block table of {} entries is not {batch} rows (batch at most {GRID_Z_MAX})",
                    block_table.len()
                ),
            ));
        }
        let max_blocks = block_table.len() / batch;
        let mut cu_q = Vec::with_capacity(batch + 1);
        cu_q.push(0i32);
        let (mut tokens, mut max_block_used) = (0usize, 0usize);
        for (b, (&q_len, &kv_len)) in q_lens.iter().zip(kv_lens).enumerate() {
            if q_len == 0 || q_len > kv_len || kv_len > max_blocks * block_size {
                return Err(shape(
                    OP,
                    format!(
                        "sequence {b}: q_len {q_len}, kv_len {kv_len}; need 1 <= q_len <= kv_len <= {max_blocks} blocks x {block_size}"
                    ),
                ));
            }
            let row = &block_table[b * max_blocks..b * max_blocks + kv_len.div_ceil(block_size)];
            max_block_used = max_block_used.max(row.iter().copied().max().unwrap_or(0) as usize);
            tokens += q_len;
            cu_q.push(to_i32("query tokens", tokens)?);
        }
        let rows = tokens * heads;
        // Element offsets inside the kernels are 64-bit; rows and keys are ints.
        to_i32("rows", rows)?;
        let max_kv_len = *kv_lens.iter().max().expect("batch > 0");
        to_i32("kv_len", max_kv_len + MAX_KEYS_PER_TILE)?;
        to_i32("block id", max_block_used)?;
        to_i32("block size", block_size)?;
        let kv: Vec<i32> = kv_lens.iter().map(|&l| l as i32).collect();
        let table: Vec<i32> = block_table
            .iter()
            .map(|&x| x.min(i32::MAX as u32) as i32)
            .collect();
        Ok(MlaBatch {
            heads,
            block_size,
            max_blocks,
            rows,
            max_q_len: *q_lens.iter().max().expect("batch > 0"),
            max_kv_len,
            max_block_used,
            cu_q: self.upload(&cu_q)?,
            kv_lens: self.upload(&kv)?,
            table: self.upload(&table)?,
            live: None,
        })
    }

    /// A live batch for `kernel` (see the module doc): shaped as [`Self::mla_batch`] with
    /// each sequence's largest kv length `max_kv_lens` (the table must cover it), its
    /// lengths starting there; set each step's with [`Self::mla_set_kv_lens`].
    pub fn mla_batch_live(
        &self,
        heads: usize,
        q_lens: &[usize],
        max_kv_lens: &[usize],
        block_table: &[u32],
        block_size: usize,
        kernel: MlaKernel,
    ) -> CudaResult<MlaBatch> {
        let mut batch = self.mla_batch(heads, q_lens, max_kv_lens, block_table, block_size)?;
        let splits = plan_splits(
            batch.blocks_per_split(),
            batch.max_kv_len,
            kernel.launch_params().2,
            self.info.multiprocessors,
            None,
        );
        batch.live = Some(LiveLens {
            kernel,
            q_lens: q_lens.to_vec(),
            max_kv_lens: max_kv_lens.to_vec(),
            splits: self.upload(&[splits as i32])?,
        });
        Ok(batch)
    }

    /// Sets a live batch's kv lengths for the next launches (each `q_len <= kv_len <=` its
    /// largest) and the split count a plain batch of these lengths would use: two small
    /// copies queued on this stream.
    pub fn mla_set_kv_lens(&self, batch: &mut MlaBatch, kv_lens: &[usize]) -> CudaResult<()> {
        const OP: &str = "mla_set_kv_lens";
        let bps = batch.blocks_per_split();
        let live = batch
            .live
            .as_mut()
            .ok_or_else(|| shape(OP, "not a live batch (mla_batch_live)"))?;
        if kv_lens.len() != live.q_lens.len() {
            return Err(shape(
                OP,
                format!(
                    "{} kv lengths for a batch of {}",
                    kv_lens.len(),
                    live.q_lens.len()
                ),
            ));
        }
        for (b, ((&kv, &q), &max)) in kv_lens
            .iter()
            .zip(&live.q_lens)
            .zip(&live.max_kv_lens)
            .enumerate()
        {
            if kv < q || kv > max {
                return Err(shape(
                    OP,
                    format!("sequence {b}: kv_len {kv}; need {q} (its q_len) ..= {max}"),
                ));
            }
        }
        let longest = *kv_lens.iter().max().expect("batch > 0");
        let splits = plan_splits(
            bps,
            longest,
            live.kernel.launch_params().2,
            self.info.multiprocessors,
            None,
        );
        let kv: Vec<i32> = kv_lens.iter().map(|&l| l as i32).collect();
        self.copy_from_host(&kv, &mut batch.kv_lens)?;
        self.copy_from_host(&[splits as i32], &mut live.splits)
    }

    /// Grows `ws` to the partials a live batch's grid writes, so its launches allocate
    /// nothing (a graph capture may not). Plain batches need no call.
    pub fn mla_reserve(&self, batch: &MlaBatch, ws: &mut MlaWorkspace) -> CudaResult<()> {
        if let Some(live) = &batch.live {
            let splits = plan_splits(
                batch.blocks_per_split(),
                batch.max_kv_len,
                live.kernel.launch_params().2,
                self.info.multiprocessors,
                None,
            );
            ws.reserve(self, splits * batch.rows)?;
            if small::takes(batch, &self.info) {
                ws.reserve(self, small::partial_rows(batch, &self.info))?;
            }
        }
        Ok(())
    }

    /// `out[r, :] = softmax(scale * q[r, :] . cache_k) . cache_k[:512]` for every query row of
    /// `batch` (see the module doc); `scale` is the softmax scale (YaRN mscale included).
    pub fn mla_attention(
        &self,
        batch: &MlaBatch,
        q: &DeviceBuf<bf16>,
        cache: &DeviceBuf<bf16>,
        scale: f32,
        out: &mut DeviceBuf<bf16>,
        ws: &mut MlaWorkspace,
    ) -> CudaResult<()> {
        self.mla_attention_planned(batch, q, cache, scale, out, ws, None)
    }

    /// [`Self::mla_attention`] with the number of key splits forced.
    #[allow(clippy::too_many_arguments)]
    pub fn mla_attention_planned(
        &self,
        batch: &MlaBatch,
        q: &DeviceBuf<bf16>,
        cache: &DeviceBuf<bf16>,
        scale: f32,
        out: &mut DeviceBuf<bf16>,
        ws: &mut MlaWorkspace,
        force_splits: Option<usize>,
    ) -> CudaResult<()> {
        if force_splits.is_none() && small::takes(batch, &self.info) {
            self.check_operands(batch, q, cache, scale, out)?;
            return self.mla_decode_small(batch, q, cache, scale, out, ws);
        }
        let kernel = MlaKernel::best_for(&self.info);
        self.mla_attention_with(batch, q, cache, scale, out, ws, force_splits, kernel)
    }

    /// [`Self::mla_attention_planned`] with the kernel chosen; one the device cannot run is a
    /// shape error naming the device's compute capability.
    #[allow(clippy::too_many_arguments)]
    pub fn mla_attention_with(
        &self,
        batch: &MlaBatch,
        q: &DeviceBuf<bf16>,
        cache: &DeviceBuf<bf16>,
        scale: f32,
        out: &mut DeviceBuf<bf16>,
        ws: &mut MlaWorkspace,
        force_splits: Option<usize>,
        which: MlaKernel,
    ) -> CudaResult<()> {
        const OP: &str = "mla_attention";
        if !which.runs_on(&self.info) {
            let (major, minor) = self.info.compute_capability;
            return Err(shape(
                OP,
                format!("kernel {which:?} cannot run on compute capability {major}.{minor}"),
            ));
        }
        let (module, kernel_name, keys_per_tile, smem) = which.launch_params();
        let rows = batch.rows;
        self.check_operands(batch, q, cache, scale, out)?;
        if let Some(live) = &batch.live {
            if live.kernel != which || force_splits.is_some() {
                return Err(shape(
                    OP,
                    format!(
                        "a live batch planned for {:?} launched as {which:?} with forced splits {force_splits:?} (it plans its own)",
                        live.kernel
                    ),
                ));
            }
        }
        let row_tiles = (batch.max_q_len * batch.heads).div_ceil(ROWS_PER_BLOCK);
        let blocks_per_split = row_tiles * batch.batch();
        // a live batch: the grid of its largest lengths (the step's count is on the device)
        let splits = plan_splits(
            blocks_per_split,
            batch.max_kv_len,
            keys_per_tile,
            self.info.multiprocessors,
            force_splits,
        );
        let kernel = kernel_name;
        let f = self.kernels.get_with_smem(module, kernel, smem)?;
        let dims = || {
            format!(
            "{which:?}: batch {}, heads {}, rows {rows}, max q_len {}, max kv_len {}, block size {}, splits {splits}",
            batch.batch(),
            batch.heads,
            batch.max_q_len,
            batch.max_kv_len,
            batch.block_size
        )
        };
        let cfg = LaunchConfig {
            grid_dim: (
                u32::try_from(row_tiles).map_err(|_| shape(OP, dims()))?,
                splits as u32,
                batch.batch() as u32,
            ),
            block_dim: (THREADS, 1, 1),
            shared_mem_bytes: smem,
        };
        let (heads, bs, mb) = (
            batch.heads as i32,
            batch.block_size as i32,
            to_i32("max blocks", batch.max_blocks)?,
        );
        let scale_log2 = scale * std::f32::consts::LOG2_E;
        let rows_i = rows as i32;
        let null: u64 = 0;
        // The wgmma kernel's last two parameters: when a page holds whole tiles, a tensor map
        // over the pool as [rows, 576] with a box of one tile's 64 rows x 64 dims, so a tile
        // is nine bulk copies; otherwise no map, and it loads with cp.async.
        let tma = which == MlaKernel::Wgmma && batch.block_size.is_multiple_of(keys_per_tile);
        let cache_map = if tma {
            self.tensor_map_bf16_swizzled(cache, CACHE_ROW, keys_per_tile as u32)?
        } else {
            TensorMap::unused()
        };
        let use_tma = i32::from(tma);

        if splits == 1 && batch.live.is_none() {
            let mut b = self.stream.launch_builder(&f);
            b.arg(&q.slice)
                .arg(&cache.slice)
                .arg(&batch.table.slice)
                .arg(&batch.cu_q.slice)
                .arg(&batch.kv_lens.slice);
            b.arg(&heads).arg(&bs).arg(&mb).arg(&scale_log2);
            b.arg(&mut out.slice).arg(&null).arg(&null).arg(&rows_i);
            b.arg(&null);
            if which == MlaKernel::Wgmma {
                b.arg(&cache_map).arg(&use_tma);
            }
            // SAFETY: arguments match kt_mla_attn_bf16 and kt_mla_attn_sm90_bf16 (the same
            // signature: q, cache, table, cu_q, kv_lens, heads,
            // block_size, max_blocks, scale_log2, out, no partials, rows, no live splits; the
            // sm90 kernel also the cache's tensor map, encoded just above over the whole
            // cache buffer, and whether to use it: only with pages of whole tiles, where a full
            // tile's 64 rows lie in one page). mla_batch checked
            // every sequence's lengths against the table and the ints; above, q and out hold
            // `rows` rows and the cache holds every block the table names. The grid covers the
            // longest sequence's row tiles; blocks past a shorter one return at once.
            return unsafe { b.launch(cfg) }
                .map(drop)
                .map_err(launch_err(kernel, dims));
        }

        ws.reserve(self, splits * rows)?;
        let part_o = ws.part_o.as_mut().expect("allocated above");
        let part_lse = ws.part_lse.as_mut().expect("allocated above");
        {
            let mut b = self.stream.launch_builder(&f);
            b.arg(&q.slice)
                .arg(&cache.slice)
                .arg(&batch.table.slice)
                .arg(&batch.cu_q.slice)
                .arg(&batch.kv_lens.slice);
            b.arg(&heads).arg(&bs).arg(&mb).arg(&scale_log2);
            b.arg(&mut out.slice)
                .arg(&mut part_o.slice)
                .arg(&mut part_lse.slice)
                .arg(&rows_i);
            match &batch.live {
                Some(live) => b.arg(&live.splits.slice),
                None => b.arg(&null),
            };
            if which == MlaKernel::Wgmma {
                b.arg(&cache_map).arg(&use_tma);
            }
            // SAFETY: as above, with partials: part_o holds splits x rows x 512 and part_lse
            // splits x rows f32, and every (split, row) pair is written by exactly one block
            // (an empty split writes an empty partial). A live batch's count (device) is at
            // most the grid's: mla_set_kv_lens plans it for lengths up to those planned here
            // and the plan grows with the length; splits past it exit.
            unsafe { b.launch(cfg) }
                .map(drop)
                .map_err(launch_err(kernel, dims))?;
        }
        let combine = "kt_mla_combine_bf16";
        let cf = self.kernels.get(&MLA_ATTN, combine)?;
        let ccfg = LaunchConfig {
            grid_dim: (rows as u32, 1, 1),
            block_dim: (COMBINE_THREADS, 1, 1),
            shared_mem_bytes: 0,
        };
        let splits_i = splits as i32;
        let mut b = self.stream.launch_builder(&cf);
        b.arg(&part_o.slice)
            .arg(&part_lse.slice)
            .arg(&mut out.slice)
            .arg(&splits_i)
            .arg(&rows_i);
        match &batch.live {
            Some(live) => b.arg(&live.splits.slice),
            None => b.arg(&null),
        };
        // SAFETY: matches kt_mla_combine_bf16 (part_o, part_lse, out, splits, rows, live
        // splits or null; at one live split it returns at once): one block
        // of 128 threads x 4 columns per row of 512; the partials were written by the launch
        // above on this stream.
        unsafe { b.launch(ccfg) }
            .map(drop)
            .map_err(launch_err(combine, dims))
    }

    /// The operand checks every MLA launch makes: q and out hold the batch's rows, the cache
    /// holds whole blocks up to the table's largest, the scale is finite.
    fn check_operands(
        &self,
        batch: &MlaBatch,
        q: &DeviceBuf<bf16>,
        cache: &DeviceBuf<bf16>,
        scale: f32,
        out: &DeviceBuf<bf16>,
    ) -> CudaResult<()> {
        const OP: &str = "mla_attention";
        let rows = batch.rows;
        let block_elems = batch.block_size * CACHE_ROW;
        if q.len() != rows * CACHE_ROW || out.len() != rows * KV_LORA_RANK {
            return Err(shape(
                OP,
                format!(
                    "q has {}, out {} elements; the batch has {rows} rows of {CACHE_ROW} and {KV_LORA_RANK}",
                    q.len(),
                    out.len()
                ),
            ));
        }
        if cache.is_empty()
            || !cache.len().is_multiple_of(block_elems)
            || cache.len() / block_elems <= batch.max_block_used
        {
            return Err(shape(
                OP,
                format!(
                    "cache of {} elements is not whole blocks of {} x {CACHE_ROW} up to block {} (the table's largest)",
                    cache.len(),
                    batch.block_size,
                    batch.max_block_used
                ),
            ));
        }
        if !scale.is_finite() {
            return Err(shape(OP, format!("softmax scale {scale} is not finite")));
        }
        Ok(())
    }
}
