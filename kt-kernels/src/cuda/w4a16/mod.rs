//! W4A16 GEMM on tensor cores (`cuda/w4a16_gemm.cu`): `out[m, n] = sum_k x[m, k] W[n, k]`
//! with W as symmetric int4 (one f16/bf16 scale per column per 128 along k) and x, out in
//! f16 or bf16 (the scales' type). Weights are quantized ([`Int4Weights`]) and repacked
//! once at load ([`GpuStream::upload_w4a16`]). Up to 16 rows (decode, short chunks) take the
//! streaming small-m kernel ([`GemvPlan`], `gemv.rs`); more rows the tiled tensor-core GEMM.

mod gemv;
mod group;
mod pack;
mod quant;

use cudarc::driver::{CudaView, CudaViewMut, LaunchConfig, PushKernelArg};

use super::dtype::MmaFloat;
use super::error::{launch_err, shape, CudaResult};
use super::modules::W4A16_GEMM;
use super::runtime::{DeviceBuf, GpuStream, LaunchOrder};

pub use gemv::GemvPlan;
pub use quant::{Int4Weights, QuantError, GROUP, TILE_N};

const THREADS: u32 = 128;
const GRID_YZ_MAX: usize = 65_535;

impl<T: MmaFloat> Int4Weights<T> {
    /// The packed bytes the kernel reads (n * k / 2).
    pub fn pack(&self) -> Vec<u8> {
        pack::pack(&self.q, self.n, self.k)
    }

    /// [`Self::pack`] into `out`, which must hold exactly n * k / 2 bytes.
    pub fn pack_into(&self, out: &mut [u8]) -> CudaResult<()> {
        if out.len() != self.n * self.k / 2 || self.q.len() != self.n * self.k {
            return Err(shape(
                "w4a16 pack_into",
                format!(
                    "n {}, k {} ({} values) into {} bytes, expected {}",
                    self.n,
                    self.k,
                    self.q.len(),
                    out.len(),
                    self.n * self.k / 2
                ),
            ));
        }
        pack::pack_into(&self.q, self.k, out);
        Ok(())
    }

    /// [`Self::pack`] on all of the machine's cores (column tiles split between threads):
    /// the same bytes, for a caller that is not itself one of several threads packing.
    pub fn pack_parallel(&self) -> Vec<u8> {
        let threads = std::thread::available_parallelism().map_or(1, |t| t.get());
        pack::pack_parallel(&self.q, self.n, self.k, threads)
    }

    /// Rebuilds the weights from packed bytes and scales (the inverse of [`Self::pack`]).
    pub fn unpack(packed: &[u8], scales: Vec<T>, n: usize, k: usize) -> CudaResult<Self> {
        quant::check_shape("w4a16 unpack", n, k)?;
        if packed.len() != n * k / 2 || scales.len() != (k / GROUP) * n {
            return Err(shape(
                "w4a16 unpack",
                format!(
                    "{} bytes and {} scales for n {n}, k {k}",
                    packed.len(),
                    scales.len()
                ),
            ));
        }
        Ok(Int4Weights {
            n,
            k,
            q: pack::unpack(packed, n, k),
            scales,
        })
    }
}

/// Int4 weights on the device, in the kernel's layout.
pub struct W4A16Weights<T> {
    pub n: usize,
    pub k: usize,
    packed: DeviceBuf<u8>,
    scales: DeviceBuf<T>,
}

impl<T> W4A16Weights<T> {
    /// The device buffers: the packed int4 weights and the group scales.
    pub fn buffers(&self) -> (&DeviceBuf<u8>, &DeviceBuf<T>) {
        (&self.packed, &self.scales)
    }
}

/// What one launch reads and writes, as views: whole buffers for [`GpuStream::w4a16_gemm`],
/// one expert's weights inside a layer's slab and a run of rows of larger activation
/// buffers for the MoE path (`cuda::moe_experts`): `x` holds m x k, `out` m x n, `packed`
/// n x k / 2 bytes and `scales` (k / 128) x n values (checked before every launch).
pub(crate) struct Operands<'a, T> {
    pub x: CudaView<'a, T>,
    pub packed: CudaView<'a, u8>,
    pub scales: CudaView<'a, T>,
    pub out: CudaViewMut<'a, T>,
    pub m: usize,
    pub n: usize,
    pub k: usize,
}

impl<'a, T> Operands<'a, T> {
    /// Whole buffers: `w`'s weights, m rows of `x` into `out` (lengths checked here).
    fn of(
        op: &'static str,
        w: &'a W4A16Weights<T>,
        x: &'a DeviceBuf<T>,
        m: usize,
        out: &'a mut DeviceBuf<T>,
    ) -> CudaResult<Self> {
        let (n, k) = (w.n, w.k);
        if x.len() != m * k || out.len() != m * n {
            return Err(shape(
                op,
                format!(
                    "x has {}, out {} elements; expected m {m} x k {k} and m {m} x n {n}",
                    x.len(),
                    out.len()
                ),
            ));
        }
        Ok(Operands {
            x: x.slice.as_view(),
            packed: w.packed.slice.as_view(),
            scales: w.scales.slice.as_view(),
            out: out.slice.as_view_mut(),
            m,
            n,
            k,
        })
    }

    /// The views hold exactly what m, n and k call for, n and k fit the packed layout, and
    /// rows of x and out fit the kernels' 32-bit index products.
    fn check(&self, op: &'static str) -> CudaResult<()> {
        let (m, n, k) = (self.m, self.n, self.k);
        quant::check_shape(op, n, k)?;
        if i32::try_from(m * k.max(n)).is_err() {
            return Err(shape(
                op,
                format!("m {m} is too large for one launch (k {k}, n {n})"),
            ));
        }
        if self.x.len() != m * k
            || self.out.len() != m * n
            || self.packed.len() != n * k / 2
            || self.scales.len() != (k / GROUP) * n
        {
            return Err(shape(
                op,
                format!(
                    "x {}, out {}, packed {} and scales {} elements for m {m}, n {n}, k {k}",
                    self.x.len(),
                    self.out.len(),
                    self.packed.len(),
                    self.scales.len()
                ),
            ));
        }
        Ok(())
    }
}

/// f32 scratch for the k-split partial sums, grown on demand and reused across calls, and
/// the small-m kernel's per-column-group arrival counters (zero between launches).
#[derive(Default)]
pub struct GemmWorkspace {
    buf: Option<DeviceBuf<f32>>,
    counters: Option<DeviceBuf<u32>>,
    allocations: u64,
}

impl GemmWorkspace {
    /// Makes the partial sums hold at least `partials` f32 and the counters `counters`
    /// (zeroed when allocated).
    fn grow(&mut self, s: &GpuStream, partials: usize, counters: usize) -> CudaResult<()> {
        if self.buf.as_ref().is_none_or(|b| b.len() < partials) {
            self.buf = Some(s.alloc_zeroed::<f32>(partials)?);
            self.allocations += 1;
        }
        if self.counters.as_ref().is_none_or(|c| c.len() < counters) {
            self.counters = Some(s.alloc_zeroed::<u32>(counters.max(1))?);
            self.allocations += 1;
        }
        Ok(())
    }

    /// How many times a buffer was (re)allocated: a CUDA graph captured with this workspace
    /// names its buffers by address and stays valid while this count does not change.
    pub fn allocations(&self) -> u64 {
        self.allocations
    }

    /// The partial sums and counters ([`Self::grow`] made them).
    fn buffers(&mut self) -> (&mut DeviceBuf<f32>, &mut DeviceBuf<u32>) {
        (
            self.buf.as_mut().expect("grown before use"),
            self.counters.as_mut().expect("grown before use"),
        )
    }
}

/// How a GEMM is cut into blocks: the k splits and the row-tile height (16 * m_tile).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GemmPlan {
    pub splits: usize,
    pub groups_per_split: usize,
    pub m_tile: usize,
}

impl GemmPlan {
    /// The row tile (in units of 16 rows) of the kernel instance used for `m` rows.
    pub fn m_tile_for(m: usize) -> usize {
        if m <= 16 {
            1
        } else if m <= 32 {
            2
        } else {
            4
        }
    }

    /// Splits k so that the grid fills the device in one wave: `capacity` is how many blocks
    /// of the kernel can be resident at once (blocks per multiprocessor x multiprocessors).
    /// A decode GEMM (m = 1) has only n / 64 column tiles, far fewer than the blocks it takes
    /// to keep memory busy; a grid just past one wave would run a second, mostly empty one.
    /// `force_splits` overrides the choice (tests exercise both paths with it).
    pub fn new(m: usize, n: usize, k: usize, capacity: usize, force_splits: Option<usize>) -> Self {
        let m_tile = Self::m_tile_for(m);
        let groups = k / GROUP;
        let blocks = ((n / TILE_N) * m.div_ceil(16 * m_tile)).max(1);
        let wanted = force_splits
            .unwrap_or(capacity / blocks)
            .clamp(1, groups.max(1));
        let groups_per_split = groups.div_ceil(wanted);
        GemmPlan {
            splits: groups.div_ceil(groups_per_split),
            groups_per_split,
            m_tile,
        }
    }
}

impl GpuStream {
    /// Packs `w` (on all cores) and copies it to the device.
    pub fn upload_w4a16<T: MmaFloat>(&self, w: &Int4Weights<T>) -> CudaResult<W4A16Weights<T>> {
        quant::check_shape("upload_w4a16", w.n, w.k)?;
        if w.q.len() != w.n * w.k || w.scales.len() != (w.k / GROUP) * w.n {
            return Err(shape(
                "upload_w4a16",
                format!(
                    "{} values and {} scales for n {}, k {}",
                    w.q.len(),
                    w.scales.len(),
                    w.n,
                    w.k
                ),
            ));
        }
        Ok(W4A16Weights {
            n: w.n,
            k: w.k,
            packed: self.upload(&w.pack_parallel())?,
            scales: self.upload(&w.scales)?,
        })
    }

    /// `out[m, n] = sum_k x[m, k] W[n, k]` for `m` rows of `x` (`[m, k]`) into `out`
    /// (`[m, n]`); f32 accumulation, one rounding to T at the end.
    pub fn w4a16_gemm<T: MmaFloat>(
        &self,
        w: &W4A16Weights<T>,
        x: &DeviceBuf<T>,
        m: usize,
        out: &mut DeviceBuf<T>,
        ws: &mut GemmWorkspace,
    ) -> CudaResult<()> {
        self.w4a16_gemm_planned(w, x, m, out, ws, None)
    }

    /// [`Self::w4a16_gemm`] launched in `order`: [`LaunchOrder::Programmatic`] makes the
    /// small-m kernel (m <= 16) a programmatic dependent launch, which overlaps its start and
    /// first weight loads with the end of the kernel before it (that kernel may write x, not
    /// `w`); the tiled kernel (m > 16) is launched the ordinary way either way. Same bits as
    /// [`LaunchOrder::Serial`].
    pub fn w4a16_gemm_ordered<T: MmaFloat>(
        &self,
        w: &W4A16Weights<T>,
        x: &DeviceBuf<T>,
        m: usize,
        out: &mut DeviceBuf<T>,
        ws: &mut GemmWorkspace,
        order: LaunchOrder,
    ) -> CudaResult<()> {
        let ops = Operands::of("w4a16_gemm", w, x, m, out)?;
        self.w4a16_launch_ordered(ops, ws, None, order)
    }

    /// [`Self::w4a16_gemm`] with the number of k splits forced (clamped to 1..=k/128); for
    /// m <= 16 they are the small-m kernel's k slices ([`GemvPlan`]).
    pub fn w4a16_gemm_planned<T: MmaFloat>(
        &self,
        w: &W4A16Weights<T>,
        x: &DeviceBuf<T>,
        m: usize,
        out: &mut DeviceBuf<T>,
        ws: &mut GemmWorkspace,
        force_splits: Option<usize>,
    ) -> CudaResult<()> {
        let ops = Operands::of("w4a16_gemm", w, x, m, out)?;
        self.w4a16_launch(ops, ws, force_splits)
    }

    /// Launches the GEMM on `ops` (lengths checked by the caller, see [`Operands`]): the
    /// small-m kernel up to 16 rows, the tiled one past that.
    pub(crate) fn w4a16_launch<T: MmaFloat>(
        &self,
        ops: Operands<'_, T>,
        ws: &mut GemmWorkspace,
        force_splits: Option<usize>,
    ) -> CudaResult<()> {
        self.w4a16_launch_ordered(ops, ws, force_splits, LaunchOrder::Serial)
    }

    /// [`Self::w4a16_launch`] with the small-m kernel launched in `order`.
    fn w4a16_launch_ordered<T: MmaFloat>(
        &self,
        ops: Operands<'_, T>,
        ws: &mut GemmWorkspace,
        force_splits: Option<usize>,
        order: LaunchOrder,
    ) -> CudaResult<()> {
        const OP: &str = "w4a16_gemm";
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
        if m == 0 {
            return Ok(());
        }
        if m <= GemvPlan::MAX_ROWS {
            let plan = self.w4a16_gemv_plan(m, n, k, force_splits)?;
            let ops = Operands {
                x,
                packed,
                scales,
                out,
                m,
                n,
                k,
            };
            return self.w4a16_gemv_launch(ops, ws, &plan, order);
        }
        let m_tile = GemmPlan::m_tile_for(m);
        let kernel = format!("kt_w4a16_gemm_{}_m{}", T::SUFFIX, m_tile);
        let f = self.kernels.get(&W4A16_GEMM, &kernel)?;
        let capacity = self
            .kernels
            .resident_blocks(&W4A16_GEMM, &kernel, THREADS)?
            * self.info.multiprocessors;
        let plan = GemmPlan::new(m, n, k, capacity, force_splits);
        let m_tiles = m.div_ceil(16 * plan.m_tile);
        if m_tiles > GRID_YZ_MAX {
            return Err(shape(
                OP,
                format!("m {m} is too large for one launch (k {k}, n {n})"),
            ));
        }
        let dims = || format!("m {m}, n {n}, k {k}, {plan:?}");
        let grid = ((n / TILE_N) as u32, plan.splits as u32, m_tiles as u32);
        let (mi, ni, ki, gps) = (m as i32, n as i32, k as i32, plan.groups_per_split as i32);
        let cfg = LaunchConfig {
            grid_dim: grid,
            block_dim: (THREADS, 1, 1),
            shared_mem_bytes: 0,
        };

        if plan.splits == 1 {
            let null: u64 = 0;
            let mut b = self.stream.launch_builder(&f);
            b.arg(&x).arg(&packed).arg(&scales).arg(&mut out).arg(&null);
            b.arg(&mi).arg(&ni).arg(&ki).arg(&gps);
            // SAFETY: arguments match kt_w4a16_gemm_<T>_m<tile> (x, packed, scales, out, no
            // partials, M, N, K, groups per split); x is m x k, out m x n, packed and scales
            // hold n x k weights, n % 64 == 0 and k % 128 == 0 (Operands::check); the grid
            // covers n / 64 tiles and all m rows.
            return unsafe { b.launch(cfg) }
                .map(drop)
                .map_err(launch_err(kernel, dims));
        }

        ws.grow(self, plan.splits * m * n, 0)?;
        let (partial, _) = ws.buffers();
        {
            let mut b = self.stream.launch_builder(&f);
            b.arg(&x)
                .arg(&packed)
                .arg(&scales)
                .arg(&mut out)
                .arg(&mut partial.slice);
            b.arg(&mi).arg(&ni).arg(&ki).arg(&gps);
            // SAFETY: as above, with partials: the workspace holds at least splits x m x n
            // f32 and every split has at least one group (GemmPlan), so each block writes
            // its own rows of partial[split].
            unsafe { b.launch(cfg) }
                .map(drop)
                .map_err(launch_err(kernel, dims))?;
        }
        let reduce = format!("kt_w4a16_reduce_{}", T::SUFFIX);
        let rf = self.kernels.get(&W4A16_GEMM, &reduce)?;
        let mn = (m * n) as u64;
        let splits = plan.splits as i32;
        let blocks = (m * n).div_ceil(256).clamp(1, GRID_YZ_MAX) as u32;
        let rcfg = LaunchConfig {
            grid_dim: (blocks, 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        let mut b = self.stream.launch_builder(&rf);
        b.arg(&partial.slice).arg(&mut out).arg(&splits).arg(&mn);
        // SAFETY: matches kt_w4a16_reduce_<T> (partial, out, splits, m * n); partial holds
        // splits x m x n values written by the GEMM above (same stream, so in order).
        unsafe { b.launch(rcfg) }
            .map(drop)
            .map_err(launch_err(reduce, dims))
    }
}
