//! Launch wrappers of `cuda/hybrid_ops.cu`, the pieces of the hybrid forward pass that the
//! other kernels lack:
//!
//! - [`GpuStream::gemm_nt`]: batched, strided `out[b, m, n] = sum_k A[b, m, k] B[b, n, k]`
//!   with f32 accumulation ([`GemmNt`] holds the shape and strides). At batch 1 with
//!   contiguous rows it is the `bf16` linear of the placement rules ([`GemmNt::linear`]); at
//!   batch = heads it is MLA's per-head absorption (`W_uk^T q_nope`, `W_uv o_lat`) straight
//!   on the strided query and output rows. Instantiated for (A, B, out) = (bf16, bf16, bf16),
//!   (bf16, bf16, f32) and (f32, f32, f32); another combination is a
//!   [`super::CudaError::MissingKernel`]. [`GemmNt::reference`] is its scalar reference.
//!   Products of at most [`GEMV_MAX_M`] rows (decode) run on a warp-per-column kernel that
//!   streams each weight row once; larger ones on the tiled kernel.
//! - [`GpuStream::rmsnorm_w32`]: RMSNorm with f32 weights, bf16 out (plus an f32 copy);
//!   [`GpuStream::add_rmsnorm_w32`] fuses the residual add before it.
//! - [`GpuStream::mla_cache_write`]: new rows of the bf16 latent cache (normalized latent,
//!   the rotated rope key as given); [`GpuStream::mla_cache_write_rows`] reads the rows on
//!   the device; [`GpuStream::mla_rope_cache_write`] fuses it with the rope of the key and
//!   of the queries (into the absorbed query rows).
//! - [`GpuStream::copy_cols_bf16`], [`GpuStream::add_f32`], [`GpuStream::add2_f32`],
//!   [`GpuStream::cast`].

use cudarc::driver::{DeviceRepr, LaunchConfig, PushKernelArg};
use half::bf16;

use super::dtype::GpuFloat;
use super::error::{launch_err, shape, to_i32, CudaResult};
use super::modules::HYBRID_OPS;
use super::runtime::{DeviceBuf, GpuStream, HostFlag, PinnedBuf};
use super::small_ops::RopeTables;

/// Where `cache_write` puts token `t`: row `first + t`, or the row a device buffer names.
enum CacheRows<'a> {
    From(usize),
    At(&'a DeviceBuf<u32>),
}

/// Tile of the GEMM kernel (rows and columns per block) and its block size.
const GEMM_TILE: usize = 64;
const GEMM_THREADS: u32 = 256;
const GRID_YZ_MAX: usize = 65_535;
/// The most rows the warp-per-column kernel takes (`GEMV_MAX_M` in the .cu), its output
/// columns per block and block size.
pub const GEMV_MAX_M: usize = 8;
const GEMV_COLS: usize = 8;
const GEMV_THREADS: u32 = 32 * GEMV_COLS as u32;
/// The warp-per-column kernel's vector loads: 16 bytes.
const VEC_BYTES: usize = 16;
const ROW_THREADS: u32 = 256;
const ELEM_THREADS: u32 = 256;
const ELEM_MAX_BLOCKS: usize = 65_535;

/// Where a strided matrix starts in its buffer and how far apart its batches and rows are
/// (in elements).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Strides {
    pub offset: usize,
    pub batch: usize,
    pub row: usize,
}

/// A batched product `out[b, m, n] = sum_k A[b, m, k] * B[b, n, k]` (B's rows are the
/// output columns, as a GGUF weight matrix stores them):
/// `A[b, m, k] = a[a.offset + b * a.batch + m * a.row + k]`,
/// `B[b, n, k] = w[b * b_batch + n * b_row + k]`,
/// `out[b, m, n] = o[out.offset + b * out.batch + m * out.row + n]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GemmNt {
    pub batch: usize,
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub a: Strides,
    pub b_batch: usize,
    pub b_row: usize,
    pub out: Strides,
}

/// The kernel's argument block (`GemmNtArgs` in `cuda/hybrid_ops.cu`, same field order).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
struct GemmNtArgs {
    a_off: i64,
    a_batch: i64,
    a_row: i64,
    b_batch: i64,
    b_row: i64,
    o_off: i64,
    o_batch: i64,
    o_row: i64,
    m: i32,
    n: i32,
    k: i32,
}

// SAFETY: a plain #[repr(C)] struct of integers with the field order, types and alignment of
// the C struct GemmNtArgs, passed by value.
unsafe impl DeviceRepr for GemmNtArgs {}

impl GemmNt {
    /// `out[m, n] = sum_k x[m, k] W[n, k]` over contiguous row-major `x` `[m, k]`, `W`
    /// `[n, k]` and `out` `[m, n]`.
    pub fn linear(m: usize, n: usize, k: usize) -> GemmNt {
        GemmNt {
            batch: 1,
            m,
            n,
            k,
            a: Strides {
                offset: 0,
                batch: 0,
                row: k,
            },
            b_batch: 0,
            b_row: k,
            out: Strides {
                offset: 0,
                batch: 0,
                row: n,
            },
        }
    }

    /// Elements a buffer needs to hold every A, B and output element this product touches
    /// (0 when the product is empty).
    pub fn lens(&self) -> (usize, usize, usize) {
        if self.batch == 0 || self.m == 0 || self.n == 0 {
            return (0, 0, 0);
        }
        let (b, m, n) = (self.batch - 1, self.m - 1, self.n - 1);
        let a = if self.k == 0 {
            0
        } else {
            self.a.offset + b * self.a.batch + m * self.a.row + self.k
        };
        let w = if self.k == 0 {
            0
        } else {
            b * self.b_batch + n * self.b_row + self.k
        };
        let o = self.out.offset + b * self.out.batch + m * self.out.row + n + 1;
        (a, w, o)
    }

    /// The scalar reference: every output element as an f64 sum in k order, rounded once
    /// to f32. `a`, `w`, `out` are the whole buffers (f32 copies of the GPU's); elements of
    /// `out` the product does not cover are left alone.
    pub fn reference(&self, a: &[f32], w: &[f32], out: &mut [f32]) -> CudaResult<()> {
        self.check("gemm_nt reference", a.len(), w.len(), out.len())?;
        for b in 0..self.batch {
            for m in 0..self.m {
                let ar = self.a.offset + b * self.a.batch + m * self.a.row;
                for n in 0..self.n {
                    let br = b * self.b_batch + n * self.b_row;
                    let mut acc = 0.0f64;
                    for k in 0..self.k {
                        acc += f64::from(a[ar + k]) * f64::from(w[br + k]);
                    }
                    out[self.out.offset + b * self.out.batch + m * self.out.row + n] = acc as f32;
                }
            }
        }
        Ok(())
    }

    fn check(&self, op: &'static str, a: usize, w: usize, out: usize) -> CudaResult<()> {
        let (na, nw, no) = self.lens();
        if a < na || w < nw || out < no {
            return Err(shape(
                op,
                format!(
                    "{self:?} reads up to {na} A and {nw} B elements and writes {no}; the buffers hold {a}, {w} and {out}"
                ),
            ));
        }
        Ok(())
    }

    fn args(&self, op: &'static str) -> CudaResult<GemmNtArgs> {
        let int = |what: &str, v: usize| {
            i32::try_from(v).map_err(|_| shape(op, format!("{what} = {v} does not fit in an i32")))
        };
        let long = |v: usize| i64::try_from(v).map_err(|_| shape(op, format!("{v} > i64")));
        // Row offsets are computed in 64 bits inside the kernel from an int row index.
        Ok(GemmNtArgs {
            a_off: long(self.a.offset)?,
            a_batch: long(self.a.batch)?,
            a_row: long(self.a.row)?,
            b_batch: long(self.b_batch)?,
            b_row: long(self.b_row)?,
            o_off: long(self.out.offset)?,
            o_batch: long(self.out.batch)?,
            o_row: long(self.out.row)?,
            m: int("m", self.m)?,
            n: int("n", self.n)?,
            k: int("k", self.k)?,
        })
    }
}

pub(crate) fn elem_config(n: usize) -> LaunchConfig {
    let blocks = n.div_ceil(ELEM_THREADS as usize).clamp(1, ELEM_MAX_BLOCKS) as u32;
    LaunchConfig {
        grid_dim: (blocks, 1, 1),
        block_dim: (ELEM_THREADS, 1, 1),
        shared_mem_bytes: 0,
    }
}

fn row_config(op: &'static str, rows: usize) -> CudaResult<LaunchConfig> {
    let r = u32::try_from(rows)
        .ok()
        .filter(|&r| r <= i32::MAX as u32)
        .ok_or_else(|| shape(op, format!("{rows} rows exceed the grid")))?;
    Ok(LaunchConfig {
        grid_dim: (r, 1, 1),
        block_dim: (ROW_THREADS, 1, 1),
        shared_mem_bytes: 0,
    })
}

impl GpuStream {
    /// The batched product `g` (see [`GemmNt`]) of `a` and `w` into `out`: f32 sums, one
    /// rounding to `O`. Every index the product touches is checked against the buffers.
    pub fn gemm_nt<A: GpuFloat, B: GpuFloat, O: GpuFloat>(
        &self,
        g: &GemmNt,
        a: &DeviceBuf<A>,
        w: &DeviceBuf<B>,
        out: &mut DeviceBuf<O>,
    ) -> CudaResult<()> {
        const OP: &str = "gemm_nt";
        g.check(OP, a.len(), w.len(), out.len())?;
        if g.batch == 0 || g.m == 0 || g.n == 0 {
            return Ok(());
        }
        let args = g.args(OP)?;
        if g.m <= GEMV_MAX_M {
            return self.gemv_nt(g, args, a, w, out);
        }
        let (gx, gy) = (g.n.div_ceil(GEMM_TILE), g.m.div_ceil(GEMM_TILE));
        if gy > GRID_YZ_MAX || g.batch > GRID_YZ_MAX {
            return Err(shape(
                OP,
                format!("{g:?}: m or batch too large for one launch"),
            ));
        }
        let kernel = format!("kt_gemm_nt_{}_{}_{}", A::SUFFIX, B::SUFFIX, O::SUFFIX);
        let f = self.kernels.get(&HYBRID_OPS, &kernel)?;
        let cfg = LaunchConfig {
            grid_dim: (gx as u32, gy as u32, g.batch as u32),
            block_dim: (GEMM_THREADS, 1, 1),
            shared_mem_bytes: 0,
        };
        let mut b = self.stream.launch_builder(&f);
        b.arg(&a.slice).arg(&w.slice).arg(&mut out.slice).arg(&args);
        // SAFETY: matches kt_gemm_nt_* (a, b, out, GemmNtArgs by value); check() proved every
        // element the grid reads or writes lies inside the buffers, and the kernel masks rows
        // and columns past m and n.
        unsafe { b.launch(cfg) }
            .map(drop)
            .map_err(launch_err(kernel, || format!("{g:?}")))
    }

    /// [`Self::gemm_nt`] for `g.m <= GEMV_MAX_M` (checked by the caller): one warp per
    /// output column, 16-byte loads where every row of A and B starts 16-byte aligned
    /// (offsets, strides and k multiples of the vector; device buffers start aligned).
    fn gemv_nt<A: GpuFloat, B: GpuFloat, O: GpuFloat>(
        &self,
        g: &GemmNt,
        args: GemmNtArgs,
        a: &DeviceBuf<A>,
        w: &DeviceBuf<B>,
        out: &mut DeviceBuf<O>,
    ) -> CudaResult<()> {
        let (va, vb) = (
            VEC_BYTES / std::mem::size_of::<A>(),
            VEC_BYTES / std::mem::size_of::<B>(),
        );
        let vec = va == vb
            && [g.k, g.a.offset, g.a.batch, g.a.row, g.b_batch, g.b_row]
                .iter()
                .all(|v| v % va == 0);
        // The kernel and its columns per warp. 16-byte loads: h, 8 columns for rows of at most
        // 16 vectors (gemv_nt_short); m, 4 for rows of 17..=64 vectors (gemv_nt_mid); v, one for
        // longer rows; s: scalar loads, one column
        let (kind, per_warp) = match (vec, g.k.div_ceil(vb)) {
            (true, 0..=16) => ("h", 8),
            (true, 17..=64) => ("m", 4),
            (true, _) => ("v", 1),
            (false, _) => ("s", 1),
        };
        let kernel = format!(
            "kt_gemv_nt_{kind}_{}_{}_{}",
            A::SUFFIX,
            B::SUFFIX,
            O::SUFFIX
        );
        if g.batch > GRID_YZ_MAX {
            return Err(shape(
                "gemm_nt",
                format!("{g:?}: batch too large for one launch"),
            ));
        }
        let f = self.kernels.get(&HYBRID_OPS, &kernel)?;
        let blocks = u32::try_from(g.n.div_ceil(GEMV_COLS * per_warp))
            .map_err(|_| shape("gemm_nt", format!("{g:?}: n too large for one launch")))?;
        let cfg = LaunchConfig {
            grid_dim: (blocks, 1, g.batch as u32),
            block_dim: (GEMV_THREADS, 1, 1),
            shared_mem_bytes: 0,
        };
        let mut b = self.stream.launch_builder(&f);
        b.arg(&a.slice).arg(&w.slice).arg(&mut out.slice).arg(&args);
        // SAFETY: matches kt_gemv_nt_* (a, b, out, GemmNtArgs by value); the caller's check()
        // proved every element of the product inside the buffers, each warp touches only its
        // per_warp columns (columns past n are skipped) and the m <= GEMV_MAX_M rows' elements,
        // and the vector kernels run only
        // when every row start is a multiple of 16 bytes from the (aligned) buffer start.
        unsafe { b.launch(cfg) }
            .map(drop)
            .map_err(launch_err(kernel, || format!("{g:?}")))
    }

    /// `out[r, :] = w * x[r, :n] / sqrt(mean(x[r, :n]^2) + eps)` for `rows` rows that start
    /// `x_row` elements apart in `x` (`n = w.len()`); `out` is `[rows, n]` bf16 and `out32`,
    /// when given, receives the same values in f32 (unrounded).
    #[allow(clippy::too_many_arguments)]
    pub fn rmsnorm_w32<X: GpuFloat>(
        &self,
        x: &DeviceBuf<X>,
        x_row: usize,
        rows: usize,
        w: &DeviceBuf<f32>,
        out: &mut DeviceBuf<bf16>,
        out32: Option<&mut DeviceBuf<f32>>,
        eps: f32,
    ) -> CudaResult<()> {
        const OP: &str = "rmsnorm_w32";
        let n = w.len();
        let x_need = if rows == 0 { 0 } else { (rows - 1) * x_row + n };
        let out32_ok = out32.as_ref().is_none_or(|o| o.len() == rows * n);
        if n == 0 || x_row < n || x.len() < x_need || out.len() != rows * n || !out32_ok {
            return Err(shape(
                OP,
                format!(
                    "{rows} rows of {n} (the weight's length, > 0) every {x_row} elements of x ({}); out {} elements, f32 copy {:?}",
                    x.len(),
                    out.len(),
                    out32.as_ref().map(|o| o.len())
                ),
            ));
        }
        if rows == 0 {
            return Ok(());
        }
        let kernel = format!("kt_rmsnorm_w32_{}", X::SUFFIX);
        let f = self.kernels.get(&HYBRID_OPS, &kernel)?;
        let (nn, xr) = (to_i32(OP, "n", n)?, x_row as i64);
        let null: u64 = 0;
        let mut b = self.stream.launch_builder(&f);
        b.arg(&x.slice).arg(&xr).arg(&w.slice).arg(&mut out.slice);
        match out32 {
            Some(o) => b.arg(&mut o.slice),
            None => b.arg(&null),
        };
        b.arg(&nn).arg(&eps);
        // SAFETY: matches kt_rmsnorm_w32_* (x, x_row, w, out, out32 or null, n, eps); one block
        // per row reads x[r * x_row .. + n] (inside x, checked) and writes out rows of n.
        unsafe { b.launch(row_config(OP, rows)?) }
            .map(drop)
            .map_err(launch_err(kernel, || {
                format!("rows {rows}, n {n}, x_row {x_row}")
            }))
    }

    /// `x[r, :] += d[r, :]` (the residual add, as [`Self::add_f32`]) and then
    /// [`Self::rmsnorm_w32`] of the new rows into `out` (and `out32`), in one launch and bit
    /// for bit the two calls' result. `x` and `d` are `[rows, n]` (`n = w.len()`).
    #[allow(clippy::too_many_arguments)]
    pub fn add_rmsnorm_w32<D: GpuFloat>(
        &self,
        x: &mut DeviceBuf<f32>,
        d: &DeviceBuf<D>,
        rows: usize,
        w: &DeviceBuf<f32>,
        out: &mut DeviceBuf<bf16>,
        out32: Option<&mut DeviceBuf<f32>>,
        eps: f32,
    ) -> CudaResult<()> {
        const OP: &str = "add_rmsnorm_w32";
        let n = w.len();
        let len = rows * n;
        let out32_ok = out32.as_ref().is_none_or(|o| o.len() == len);
        if n == 0 || x.len() != len || d.len() != len || out.len() != len || !out32_ok {
            return Err(shape(
                OP,
                format!(
                    "{rows} rows of {n} (the weight's length, > 0): x {}, d {}, out {}, f32 copy {:?} elements",
                    x.len(),
                    d.len(),
                    out.len(),
                    out32.as_ref().map(|o| o.len())
                ),
            ));
        }
        if rows == 0 {
            return Ok(());
        }
        let kernel = format!("kt_add_rmsnorm_w32_{}", D::SUFFIX);
        let f = self.kernels.get(&HYBRID_OPS, &kernel)?;
        let nn = to_i32(OP, "n", n)?;
        let null: u64 = 0;
        let mut b = self.stream.launch_builder(&f);
        b.arg(&mut x.slice)
            .arg(&d.slice)
            .arg(&w.slice)
            .arg(&mut out.slice);
        match out32 {
            Some(o) => b.arg(&mut o.slice),
            None => b.arg(&null),
        };
        b.arg(&nn).arg(&eps);
        // SAFETY: matches kt_add_rmsnorm_w32_* (x, d, w, out, out32 or null, n, eps); one
        // block of ROW_THREADS (the block size rmsnorm_w32 uses, which the bit-for-bit match
        // needs) per row reads and writes x and reads d at [r * n, r * n + n), inside the
        // buffers of rows * n elements (checked).
        unsafe { b.launch(row_config(OP, rows)?) }
            .map(drop)
            .map_err(launch_err(kernel, || format!("rows {rows}, n {n}")))
    }

    /// Writes `tokens` new rows of an MLA latent cache (`[rows, rank + rope]`, bf16) from
    /// the kv projection `kv` (`[tokens, rank + rope]`, its rope part already rotated): row
    /// `first_row + t` = `rmsnorm(kv[t, :rank]) * w` then `kv[t, rank:]` (`rank = w.len()`).
    #[allow(clippy::too_many_arguments)]
    pub fn mla_cache_write(
        &self,
        kv: &DeviceBuf<bf16>,
        tokens: usize,
        w: &DeviceBuf<f32>,
        cache: &mut DeviceBuf<bf16>,
        first_row: usize,
        rope: usize,
        eps: f32,
    ) -> CudaResult<()> {
        const OP: &str = "mla_cache_write";
        let rank = w.len();
        let width = rank + rope;
        if width > 0 && first_row + tokens > cache.len() / width {
            return Err(shape(
                OP,
                format!(
                    "rows {first_row}..{} of a cache of {} elements ({} rows of {width})",
                    first_row + tokens,
                    cache.len(),
                    cache.len() / width
                ),
            ));
        }
        self.cache_write(kv, tokens, w, cache, CacheRows::From(first_row), rope, eps)
    }

    /// [`Self::mla_cache_write`] with token `t` to cache row `rows[t]`, read on the device
    /// (so a captured graph writes each step's row from a buffer updated between launches).
    /// Rows past the cache are skipped on the device: the caller checks them before it
    /// uploads them.
    pub fn mla_cache_write_rows(
        &self,
        kv: &DeviceBuf<bf16>,
        w: &DeviceBuf<f32>,
        cache: &mut DeviceBuf<bf16>,
        rows: &DeviceBuf<u32>,
        rope: usize,
        eps: f32,
    ) -> CudaResult<()> {
        self.cache_write(kv, rows.len(), w, cache, CacheRows::At(rows), rope, eps)
    }

    /// The MLA step between the projections and the attention for `T = positions.len()`
    /// tokens of one sequence, in one launch: [`Self::mla_cache_write_rows`] (rows =
    /// positions) with the rope part `kv[t, rank:]` rotated on the way (as
    /// [`Self::rope_inplace`] would, `kv` itself unchanged), and each query head's rope part
    /// `q[t, h, nope:]` rotated into the rope slot of its absorbed row `q_lat[t * heads + h,
    /// rank:]` (`q` unchanged; the latent slot is left to the absorption GEMM). `q` is
    /// `[T, heads, nope + rope]`, `q_lat` `[T * heads, rank + rope]`, `kv` `[T, rank + rope]`
    /// with `rank = w.len()` and `rope = tables.rope_dim()`.
    #[allow(clippy::too_many_arguments)]
    pub fn mla_rope_cache_write(
        &self,
        q: &DeviceBuf<bf16>,
        heads: usize,
        nope: usize,
        q_lat: &mut DeviceBuf<bf16>,
        kv: &DeviceBuf<bf16>,
        w: &DeviceBuf<f32>,
        cache: &mut DeviceBuf<bf16>,
        positions: &DeviceBuf<u32>,
        tables: &RopeTables,
        eps: f32,
    ) -> CudaResult<()> {
        self.rope_kv_at(
            "mla_rope_cache_write",
            q,
            heads,
            nope,
            q_lat,
            kv,
            0,
            w,
            cache,
            positions,
            tables,
            eps,
        )
    }

    /// [`Self::mla_rope_cache_write`] with the queries and the kv row of each token in one
    /// buffer `qkv` `[T, heads * (nope + rope) + rank + rope]` (q_proj and kv_a stacked
    /// into one GEMV): the same kernel, reading token `t`'s queries at row `t` and its kv
    /// row right after them.
    #[allow(clippy::too_many_arguments)]
    pub fn mla_rope_cache_write_stacked(
        &self,
        qkv: &DeviceBuf<bf16>,
        heads: usize,
        nope: usize,
        q_lat: &mut DeviceBuf<bf16>,
        w: &DeviceBuf<f32>,
        cache: &mut DeviceBuf<bf16>,
        positions: &DeviceBuf<u32>,
        tables: &RopeTables,
        eps: f32,
    ) -> CudaResult<()> {
        const OP: &str = "mla_rope_cache_write_stacked";
        let (tokens, rank, rope) = (positions.len(), w.len(), tables.rope_dim());
        let q_width = heads * (nope + rope);
        let row = q_width + rank + rope;
        if qkv.len() != tokens * row {
            return Err(shape(
                OP,
                format!(
                    "{tokens} tokens, {heads} heads, rank {rank}, rope {rope}, nope {nope}: qkv {} elements, expected {tokens} x {row}",
                    qkv.len()
                ),
            ));
        }
        // the kv rows are the same buffer from column q_width on
        let rows = RopeRows {
            q: qkv,
            q_row: row,
            kv: qkv,
            kv_offset: q_width,
            kv_row: row,
        };
        self.rope_cache_launch(
            OP, rows, heads, nope, q_lat, w, cache, positions, tables, eps,
        )
    }

    /// Asks the L2 cache for the first `bytes` bytes of `buf` (all of it when shorter) and
    /// returns how many that is; changes no value. For weights a later kernel of the stream
    /// reads, issued while the GPU would otherwise idle.
    pub fn prefetch_l2<T: DeviceRepr>(
        &self,
        buf: &DeviceBuf<T>,
        bytes: usize,
    ) -> CudaResult<usize> {
        const OP: &str = "prefetch_l2";
        let bytes = bytes.min(buf.len() * std::mem::size_of::<T>());
        if bytes == 0 {
            return Ok(0);
        }
        let kernel = "kt_prefetch_l2";
        let f = self.kernels.get(&HYBRID_OPS, kernel)?;
        let n = i64::try_from(bytes).map_err(|_| shape(OP, format!("{bytes} bytes")))?;
        let lines = bytes.div_ceil(128);
        let mut b = self.stream.launch_builder(&f);
        b.arg(&buf.slice).arg(&n);
        // SAFETY: matches kt_prefetch_l2 (p, bytes); it issues prefetches of lines of the
        // first `bytes` bytes of the buffer (inside it) and reads or writes nothing.
        unsafe { b.launch(elem_config(lines)) }
            .map(drop)
            .map_err(launch_err(kernel, || format!("{bytes} bytes")))?;
        Ok(bytes)
    }

    /// [`Self::mla_rope_cache_write`] with each token's kv row inside a wider row of `akv`
    /// `[T, kv_offset + rank + rope]` (the query LoRA's `q_a` and `kv_a` stacked into one
    /// GEMV: token `t`'s kv row is `akv[t * row + kv_offset ..]`); the same kernel.
    #[allow(clippy::too_many_arguments)]
    pub fn mla_rope_cache_write_kv_in(
        &self,
        q: &DeviceBuf<bf16>,
        heads: usize,
        nope: usize,
        q_lat: &mut DeviceBuf<bf16>,
        akv: &DeviceBuf<bf16>,
        kv_offset: usize,
        w: &DeviceBuf<f32>,
        cache: &mut DeviceBuf<bf16>,
        positions: &DeviceBuf<u32>,
        tables: &RopeTables,
        eps: f32,
    ) -> CudaResult<()> {
        self.rope_kv_at(
            "mla_rope_cache_write_kv_in",
            q,
            heads,
            nope,
            q_lat,
            akv,
            kv_offset,
            w,
            cache,
            positions,
            tables,
            eps,
        )
    }

    /// The two entries above with the queries in `q` and token `t`'s kv row at `kv[t * row +
    /// kv_offset ..]`, `row = kv_offset + rank + rope`: checks the lengths (errors of `op`)
    /// and launches.
    #[allow(clippy::too_many_arguments)]
    fn rope_kv_at(
        &self,
        op: &'static str,
        q: &DeviceBuf<bf16>,
        heads: usize,
        nope: usize,
        q_lat: &mut DeviceBuf<bf16>,
        kv: &DeviceBuf<bf16>,
        kv_offset: usize,
        w: &DeviceBuf<f32>,
        cache: &mut DeviceBuf<bf16>,
        positions: &DeviceBuf<u32>,
        tables: &RopeTables,
        eps: f32,
    ) -> CudaResult<()> {
        let (tokens, rank, rope) = (positions.len(), w.len(), tables.rope_dim());
        let (q_row, row) = (heads * (nope + rope), kv_offset + rank + rope);
        if q.len() != tokens * q_row || kv.len() != tokens * row {
            return Err(shape(
                op,
                format!(
                    "{tokens} tokens, {heads} heads, rank {rank}, rope {rope}, nope {nope}: q {} elements, kv rows of {row} from column {kv_offset}: {} elements",
                    q.len(),
                    kv.len()
                ),
            ));
        }
        let rows = RopeRows {
            q,
            q_row,
            kv,
            kv_offset,
            kv_row: row,
        };
        self.rope_cache_launch(
            op, rows, heads, nope, q_lat, w, cache, positions, tables, eps,
        )
    }

    /// The launch of kt_mla_rope_cache_write for both layouts; `rows` has passed its
    /// caller's length checks.
    #[allow(clippy::too_many_arguments)]
    fn rope_cache_launch(
        &self,
        op: &'static str,
        rows: RopeRows<'_>,
        heads: usize,
        nope: usize,
        q_lat: &mut DeviceBuf<bf16>,
        w: &DeviceBuf<f32>,
        cache: &mut DeviceBuf<bf16>,
        positions: &DeviceBuf<u32>,
        tables: &RopeTables,
        eps: f32,
    ) -> CudaResult<()> {
        let (tokens, rank, rope) = (positions.len(), w.len(), tables.rope_dim());
        let width = rank + rope;
        if rank == 0
            || heads == 0
            || q_lat.len() != tokens * heads * width
            || !cache.len().is_multiple_of(width)
        {
            return Err(shape(
                op,
                format!(
                    "{tokens} tokens, {heads} heads, rank {rank}, rope {rope}, nope {nope}: q_lat {}, cache {} elements",
                    q_lat.len(),
                    cache.len()
                ),
            ));
        }
        if tokens == 0 {
            return Ok(());
        }
        let kernel = "kt_mla_rope_cache_write";
        let f = self.kernels.get(&HYBRID_OPS, kernel)?;
        let (h, qd, np, r, t_i) = (
            to_i32(op, "heads", heads)?,
            to_i32(op, "q row", nope + rope)?,
            to_i32(op, "nope", nope)?,
            to_i32(op, "rank", rank)?,
            to_i32(op, "tokens", tokens)?,
        );
        to_i32(op, "heads x half", heads * tables.half)?;
        let (cache_rows, half, rope_rows) = (
            (cache.len() / width) as i64,
            tables.half as i32,
            tables.rows as u32,
        );
        // query blocks per token: each thread rotates at most 4 of its heads' pairs
        let qblocks = (heads * tables.half)
            .div_ceil(ROW_THREADS as usize * 4)
            .max(1);
        let mut b = self.stream.launch_builder(&f);
        let (q_row, kv_row) = (rows.q_row as i64, rows.kv_row as i64);
        let kv = rows.kv.slice.slice(rows.kv_offset..);
        b.arg(&rows.q.slice)
            .arg(&q_row)
            .arg(&h)
            .arg(&qd)
            .arg(&np)
            .arg(&mut q_lat.slice);
        b.arg(&kv).arg(&kv_row).arg(&w.slice).arg(&mut cache.slice);
        b.arg(&positions.slice).arg(&cache_rows);
        b.arg(&tables.cos.slice)
            .arg(&tables.sin.slice)
            .arg(&half)
            .arg(&rope_rows);
        b.arg(&r).arg(&t_i).arg(&eps);
        // SAFETY: matches kt_mla_rope_cache_write (q, q_row, heads, q_dim, nope, q_lat, kv,
        // kv_row, w, cache, pos, cache_rows, cos, sin, half, rope_rows, rank, tokens, eps).
        // The callers checked that q holds T rows of q_row (heads x q_dim read from each) and
        // kv from kv_offset T rows of kv_row (width read from each; the view starts there).
        // Blocks [0, T) read kv row t and write cache row pos[t] only below cache_rows (whole
        // rows of the cache, checked); blocks T + t x qblocks + j (j < qblocks) read q's rows of
        // token t and write rope slots of its q_lat rows (the lengths are checked above); the
        // tables hold rope_rows x half and are read only below row rope_rows; positions hold T
        // entries.
        unsafe { b.launch(row_config(op, tokens * (1 + qblocks))?) }
            .map(drop)
            .map_err(launch_err(kernel, || {
                format!("tokens {tokens}, heads {heads}, rank {rank}, rope {rope}")
            }))
    }

    #[allow(clippy::too_many_arguments)]
    fn cache_write(
        &self,
        kv: &DeviceBuf<bf16>,
        tokens: usize,
        w: &DeviceBuf<f32>,
        cache: &mut DeviceBuf<bf16>,
        rows: CacheRows<'_>,
        rope: usize,
        eps: f32,
    ) -> CudaResult<()> {
        const OP: &str = "mla_cache_write";
        let rank = w.len();
        let width = rank + rope;
        if rank == 0 || kv.len() != tokens * width || !cache.len().is_multiple_of(width) {
            return Err(shape(
                OP,
                format!(
                    "kv has {} elements for {tokens} rows of {rank} + {rope}; cache of {} elements",
                    kv.len(),
                    cache.len(),
                ),
            ));
        }
        if tokens == 0 {
            return Ok(());
        }
        let kernel = "kt_mla_cache_write";
        let f = self.kernels.get(&HYBRID_OPS, kernel)?;
        let (cache_rows, r, p) = (
            (cache.len() / width) as i64,
            to_i32(OP, "rank", rank)?,
            to_i32(OP, "rope", rope)?,
        );
        let null: u64 = 0;
        let mut b = self.stream.launch_builder(&f);
        b.arg(&kv.slice).arg(&w.slice).arg(&mut cache.slice);
        let first = match rows {
            CacheRows::From(first) => first as i64,
            CacheRows::At(_) => 0,
        };
        b.arg(&first);
        match rows {
            CacheRows::From(_) => b.arg(&null),
            CacheRows::At(at) => b.arg(&at.slice),
        };
        b.arg(&cache_rows).arg(&r).arg(&p).arg(&eps);
        // SAFETY: matches kt_mla_cache_write (kv, w, cache, first_row, rows or null,
        // cache_rows, rank, rope, eps); one block per token reads its kv row (inside kv,
        // checked) and writes one cache row, skipped on the device unless below cache_rows
        // (the cache's whole rows, checked); `rows` holds one entry per token.
        unsafe { b.launch(row_config(OP, tokens)?) }
            .map(drop)
            .map_err(launch_err(kernel, || {
                format!("tokens {tokens}, rank {rank}, rope {rope}")
            }))
    }

    /// `dst[dst_off + r * dst_row + c] = src[src_off + r * src_row + c]` for `rows` rows of
    /// `cols` elements.
    #[allow(clippy::too_many_arguments)]
    pub fn copy_cols_bf16(
        &self,
        src: &DeviceBuf<bf16>,
        src_off: usize,
        src_row: usize,
        dst: &mut DeviceBuf<bf16>,
        dst_off: usize,
        dst_row: usize,
        rows: usize,
        cols: usize,
    ) -> CudaResult<()> {
        const OP: &str = "copy_cols_bf16";
        if rows == 0 || cols == 0 {
            return Ok(());
        }
        let (s_need, d_need) = (
            src_off + (rows - 1) * src_row + cols,
            dst_off + (rows - 1) * dst_row + cols,
        );
        if src.len() < s_need || dst.len() < d_need {
            return Err(shape(
                OP,
                format!(
                    "{rows} rows of {cols}: source needs {s_need} of {}, destination {d_need} of {}",
                    src.len(),
                    dst.len()
                ),
            ));
        }
        let kernel = "kt_copy_cols_bf16";
        let f = self.kernels.get(&HYBRID_OPS, kernel)?;
        let longs = [src_off, src_row, dst_off, dst_row, rows].map(|v| v as i64);
        let c = to_i32(OP, "cols", cols)?;
        let mut b = self.stream.launch_builder(&f);
        b.arg(&src.slice).arg(&longs[0]).arg(&longs[1]);
        b.arg(&mut dst.slice).arg(&longs[2]).arg(&longs[3]);
        b.arg(&longs[4]).arg(&c);
        // SAFETY: matches kt_copy_cols_bf16 (src, src_off, src_row, dst, dst_off, dst_row,
        // rows, cols); the last element of each side lies inside its buffer (checked).
        unsafe { b.launch(elem_config(rows * cols)) }
            .map(drop)
            .map_err(launch_err(kernel, || format!("rows {rows}, cols {cols}")))
    }

    /// `acc[i] += x[i]` with an f32 accumulator (the residual stream); `x` f32 or bf16.
    pub fn add_f32<X: GpuFloat>(
        &self,
        acc: &mut DeviceBuf<f32>,
        x: &DeviceBuf<X>,
    ) -> CudaResult<()> {
        const OP: &str = "add_f32";
        if acc.len() != x.len() {
            return Err(shape(
                OP,
                format!("acc has {} elements, x {}", acc.len(), x.len()),
            ));
        }
        let n = acc.len();
        if n == 0 {
            return Ok(());
        }
        let kernel = format!("kt_add_f32_{}", X::SUFFIX);
        let f = self.kernels.get(&HYBRID_OPS, &kernel)?;
        let nn = n as i64;
        let mut b = self.stream.launch_builder(&f);
        b.arg(&mut acc.slice).arg(&x.slice).arg(&nn);
        // SAFETY: matches kt_add_f32_* (acc, x, n); both hold n elements.
        unsafe { b.launch(elem_config(n)) }
            .map(drop)
            .map_err(launch_err(kernel, || format!("n {n}")))
    }

    /// The hybrid decode graph's return from the CPU's routed experts, one launch: waits
    /// (on the device) until `flag` reaches `value` (compared cyclically), then
    /// `x += routed + shared` (`routed` read from page-locked host memory through its device
    /// address, no copy; without `shared`, `x += routed`), then `x += extra` when given (the
    /// GPU's resident routed experts), and `out` = the RMSNorm of the new `x` with the f32
    /// weight `w`. Bit for bit [`Self::add2_f32`] (or [`Self::add_f32`]), [`Self::add_f32`] of
    /// `extra`, then [`Self::rmsnorm_w32`] (no f32 copy): the same roundings, block size and
    /// sum order. Capturable into a graph.
    ///
    /// # Safety
    /// Until `flag` reaches `value` the stream stalls in this kernel (and everything that
    /// synchronizes with it waits): the host must raise it, also on its error paths. The
    /// caller writes `routed` only before raising the flag and not again until the kernel is
    /// done (a later point of the stream it knows of), and keeps `routed` and `flag` alive
    /// while the launch is queued or in a graph that may run.
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn wait_add2_rmsnorm_w32(
        &self,
        flag: &HostFlag,
        value: u32,
        x: &mut DeviceBuf<f32>,
        routed: &PinnedBuf<f32>,
        shared: Option<&DeviceBuf<bf16>>,
        extra: Option<&DeviceBuf<f32>>,
        w: &DeviceBuf<f32>,
        out: &mut DeviceBuf<bf16>,
        eps: f32,
    ) -> CudaResult<()> {
        const OP: &str = "wait_add2_rmsnorm_w32";
        let n = w.len();
        let len = x.len();
        let shared_ok = shared.is_none_or(|y| y.len() == len);
        let extra_ok = extra.is_none_or(|y| y.len() == len);
        if n == 0
            || !len.is_multiple_of(n)
            || routed.len() != len
            || out.len() != len
            || !shared_ok
            || !extra_ok
        {
            return Err(shape(
                OP,
                format!(
                    "rows of {n} (the weight's length, > 0): x {len}, routed {}, shared {:?}, extra {:?}, out {} elements",
                    routed.len(),
                    shared.map(|y| y.len()),
                    extra.map(|y| y.len()),
                    out.len()
                ),
            ));
        }
        let rows = len / n;
        if rows == 0 {
            return Ok(());
        }
        let kernel = "kt_wait_add2_rmsnorm_w32";
        let f = self.kernels.get(&HYBRID_OPS, kernel)?;
        let nn = to_i32(OP, "n", n)?;
        let (flag_dev, routed_dev) = (flag.device_ptr(), routed.device_ptr()?);
        let null: u64 = 0;
        let mut b = self.stream.launch_builder(&f);
        b.arg(&flag_dev)
            .arg(&value)
            .arg(&mut x.slice)
            .arg(&routed_dev);
        match shared {
            Some(y) => b.arg(&y.slice),
            None => b.arg(&null),
        };
        match extra {
            Some(y) => b.arg(&y.slice),
            None => b.arg(&null),
        };
        b.arg(&w.slice).arg(&mut out.slice).arg(&nn).arg(&eps);
        // SAFETY: matches kt_wait_add2_rmsnorm_w32 (flag, value, x, routed, shared or null,
        // extra or null, w, out, n, eps); one block of ROW_THREADS (rmsnorm_w32's block size,
        // which the bit for bit match needs) per row touches [r * n, r * n + n) of x, routed,
        // shared, extra and out, all of rows * n elements (checked); the caller's contract
        // covers the flag, the host's writes of routed and the lifetimes.
        unsafe { b.launch(row_config(OP, rows)?) }
            .map(drop)
            .map_err(launch_err(kernel, || format!("rows {rows}, n {n}")))
    }

    /// `acc[i] = (acc[i] + x[i]) + y[i]`: two residual adds in one launch, rounded as two
    /// [`Self::add_f32`] calls. Instantiated for `x` f32, `y` bf16 (the routed experts' sum
    /// and the shared experts' output).
    pub fn add2_f32<X: GpuFloat, Y: GpuFloat>(
        &self,
        acc: &mut DeviceBuf<f32>,
        x: &DeviceBuf<X>,
        y: &DeviceBuf<Y>,
    ) -> CudaResult<()> {
        const OP: &str = "add2_f32";
        if acc.len() != x.len() || acc.len() != y.len() {
            return Err(shape(
                OP,
                format!(
                    "acc has {} elements, x {}, y {}",
                    acc.len(),
                    x.len(),
                    y.len()
                ),
            ));
        }
        let n = acc.len();
        if n == 0 {
            return Ok(());
        }
        let kernel = format!("kt_add2_f32_{}_{}", X::SUFFIX, Y::SUFFIX);
        let f = self.kernels.get(&HYBRID_OPS, &kernel)?;
        let nn = n as i64;
        let mut b = self.stream.launch_builder(&f);
        b.arg(&mut acc.slice).arg(&x.slice).arg(&y.slice).arg(&nn);
        // SAFETY: matches kt_add2_f32_* (acc, x, y, n); all three hold n elements.
        unsafe { b.launch(elem_config(n)) }
            .map(drop)
            .map_err(launch_err(kernel, || format!("n {n}")))
    }

    /// `y[i] = x[i]` converted (f32 to bf16 rounds to nearest even).
    pub fn cast<I: GpuFloat, O: GpuFloat>(
        &self,
        x: &DeviceBuf<I>,
        y: &mut DeviceBuf<O>,
    ) -> CudaResult<()> {
        const OP: &str = "cast";
        if x.len() != y.len() {
            return Err(shape(
                OP,
                format!("x has {} elements, y {}", x.len(), y.len()),
            ));
        }
        let n = x.len();
        if n == 0 {
            return Ok(());
        }
        let kernel = format!("kt_cast_{}_{}", I::SUFFIX, O::SUFFIX);
        let f = self.kernels.get(&HYBRID_OPS, &kernel)?;
        let nn = n as i64;
        let mut b = self.stream.launch_builder(&f);
        b.arg(&x.slice).arg(&mut y.slice).arg(&nn);
        // SAFETY: matches kt_cast_* (x, y, n); both hold n elements.
        unsafe { b.launch(elem_config(n)) }
            .map(drop)
            .map_err(launch_err(kernel, || format!("n {n}")))
    }
}

/// The query and kv rows [`GpuStream::mla_rope_cache_write`] reads: token `t`'s heads at
/// `q[t * q_row..]`, its kv row at `kv[kv_offset + t * kv_row..]` (one stacked buffer:
/// `kv` is `q` and `kv_offset` its query columns).
struct RopeRows<'a> {
    q: &'a DeviceBuf<bf16>,
    q_row: usize,
    kv: &'a DeviceBuf<bf16>,
    kv_offset: usize,
    kv_row: usize,
}
