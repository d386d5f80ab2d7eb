//! Launch wrappers of `cuda/small_ops.cu`: RMSNorm, SiLU-and-multiply, in-place residual
//! add, embedding gather, row arg-max and rotary embedding (YaRN), for f32, f16 and bf16. All
//! compute in f32 and round once when storing. Also top-p sampling of f32 logit rows
//! (`cuda/top_p.cu`).

use cudarc::driver::{LaunchConfig, PushKernelArg};

use super::dtype::GpuFloat;
use super::error::{launch_err, shape, to_i32, CudaResult};
use super::modules::{SMALL_OPS, TOP_P};
use super::runtime::{DeviceBuf, GpuStream};
use crate::ops::sampling::check_top_p_settings;
use crate::ops::RopeYarn;

/// Threads per block of the per-row kernels (a multiple of 32, as the block sum requires).
const ROW_THREADS: u32 = 256;
/// Threads per block and the grid cap of the grid-stride element-wise kernels.
const ELEM_THREADS: u32 = 256;
const ELEM_MAX_BLOCKS: usize = 65_535;
/// Threads per block of kt_top_p_f32 (its block scan is written for exactly this many).
const TOP_P_THREADS: u32 = 512;
/// What kt_top_p_f32 writes for a row it cannot sample (NaN or +inf logits, or all -inf).
pub const TOP_P_INVALID: u32 = u32::MAX;

fn grid_rows(op: &'static str, rows: usize) -> CudaResult<u32> {
    // One block per row on grid x (limit 2^31 - 1); rows == 0 launches nothing.
    u32::try_from(rows)
        .ok()
        .filter(|&r| r <= i32::MAX as u32)
        .ok_or_else(|| shape(op, format!("{rows} rows exceed the grid")))
}

fn elem_config(n: usize) -> LaunchConfig {
    let blocks = n.div_ceil(ELEM_THREADS as usize).clamp(1, ELEM_MAX_BLOCKS) as u32;
    LaunchConfig {
        grid_dim: (blocks, 1, 1),
        block_dim: (ELEM_THREADS, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// Rope cos and sin (magnitude included) for positions `0..rows`, `[rows, rope_dim / 2]` each,
/// on the device: computed once on the host by [`RopeYarn`] in f64.
pub struct RopeTables {
    pub(crate) half: usize,
    pub(crate) rows: usize,
    pub(crate) cos: DeviceBuf<f32>,
    pub(crate) sin: DeviceBuf<f32>,
}

impl RopeTables {
    pub fn rope_dim(&self) -> usize {
        2 * self.half
    }

    /// Positions the tables cover.
    pub fn positions(&self) -> usize {
        self.rows
    }
}

impl GpuStream {
    /// The cos / sin tables of `rope` for positions `0..positions`.
    pub fn upload_rope_tables(&self, rope: &RopeYarn, positions: usize) -> CudaResult<RopeTables> {
        const OP: &str = "upload_rope_tables";
        let half = rope.rope_dim() / 2;
        if positions == 0 || u32::try_from(positions).is_err() {
            return Err(shape(
                OP,
                format!("{positions} positions (need 1 ..= u32::MAX)"),
            ));
        }
        let mut cos = vec![0.0f32; positions * half];
        let mut sin = vec![0.0f32; positions * half];
        for (p, (c, s)) in cos
            .chunks_exact_mut(half)
            .zip(sin.chunks_exact_mut(half))
            .enumerate()
        {
            rope.cos_sin_table(p, c, s)
                .map_err(|e| shape(OP, e.to_string()))?;
        }
        Ok(RopeTables {
            half,
            rows: positions,
            cos: self.upload(&cos)?,
            sin: self.upload(&sin)?,
        })
    }

    /// Rotates, in place, the slice `[offset, offset + rope_dim)` of every head of
    /// `x = [tokens, heads, head_dim]`, token `t` to position `positions[t]` (as
    /// [`RopeYarn::apply_tokens`]). A position past the tables gives NaN in that token's rope
    /// slices (positions live on the device, so they are checked there).
    pub fn rope_inplace<T: GpuFloat>(
        &self,
        x: &mut DeviceBuf<T>,
        positions: &DeviceBuf<u32>,
        tables: &RopeTables,
        heads: usize,
        head_dim: usize,
        offset: usize,
    ) -> CudaResult<()> {
        const OP: &str = "rope";
        let tokens = positions.len();
        if heads == 0
            || offset + tables.rope_dim() > head_dim
            || x.len() != tokens * heads * head_dim
        {
            return Err(shape(
                OP,
                format!(
                    "x has {} elements for {tokens} positions x {heads} heads x {head_dim}; rope slice [{offset}, {}) must lie in a head",
                    x.len(),
                    offset + tables.rope_dim()
                ),
            ));
        }
        if tokens == 0 {
            return Ok(());
        }
        let kernel = format!("kt_rope_{}", T::SUFFIX);
        let f = self.kernels.get(&SMALL_OPS, &kernel)?;
        let (h, hd, off) = (
            to_i32(OP, "heads", heads)?,
            to_i32(OP, "head_dim", head_dim)?,
            to_i32(OP, "offset", offset)?,
        );
        to_i32(OP, "heads x head_dim", heads * head_dim)?;
        let half = tables.half as i32;
        let rows = tables.rows as u32;
        let cfg = LaunchConfig {
            grid_dim: (grid_rows(OP, tokens)?, 1, 1),
            block_dim: (ROW_THREADS, 1, 1),
            shared_mem_bytes: 0,
        };
        let mut b = self.stream.launch_builder(&f);
        b.arg(&mut x.slice)
            .arg(&positions.slice)
            .arg(&tables.cos.slice)
            .arg(&tables.sin.slice);
        b.arg(&h).arg(&hd).arg(&off).arg(&half).arg(&rows);
        // SAFETY: matches kt_rope_* (x, pos, cos, sin, heads, head_dim, offset, half, rows); one
        // block per position, x holds tokens x heads x head_dim with the rope slice inside each
        // head (checked above), the tables hold rows x half and are read only below row `rows`.
        unsafe { b.launch(cfg) }
            .map(drop)
            .map_err(launch_err(kernel, || {
                format!("tokens {tokens}, heads {heads}, head_dim {head_dim}, offset {offset}")
            }))
    }

    /// `out[t, :] = w * x[t, :] / sqrt(mean(x[t, :]^2) + eps)` for `tokens` rows of
    /// `w.len()` elements.
    pub fn rmsnorm<T: GpuFloat>(
        &self,
        x: &DeviceBuf<T>,
        w: &DeviceBuf<T>,
        out: &mut DeviceBuf<T>,
        tokens: usize,
        eps: f32,
    ) -> CudaResult<()> {
        const OP: &str = "rmsnorm";
        let dim = w.len();
        if dim == 0 || x.len() != tokens * dim || out.len() != tokens * dim {
            return Err(shape(
                OP,
                format!("x has {}, out {} elements; expected tokens {tokens} x dim {dim} (the weight's length, > 0)", x.len(), out.len()),
            ));
        }
        if tokens == 0 {
            return Ok(());
        }
        let kernel = format!("kt_rmsnorm_{}", T::SUFFIX);
        let f = self.kernels.get(&SMALL_OPS, &kernel)?;
        let n = to_i32(OP, "dim", dim)?;
        let cfg = LaunchConfig {
            grid_dim: (grid_rows(OP, tokens)?, 1, 1),
            block_dim: (ROW_THREADS, 1, 1),
            shared_mem_bytes: 0,
        };
        let mut b = self.stream.launch_builder(&f);
        b.arg(&x.slice)
            .arg(&w.slice)
            .arg(&mut out.slice)
            .arg(&n)
            .arg(&eps);
        // SAFETY: the argument list matches kt_rmsnorm_* (x, w, out, n, eps); x and out hold
        // tokens * n elements and w holds n (checked above), one block per token.
        unsafe { b.launch(cfg) }
            .map(drop)
            .map_err(launch_err(kernel, || format!("tokens {tokens}, dim {dim}")))
    }

    /// `out[t, i] = silu(gate_up[t, i]) * gate_up[t, d + i]`: `gate_up` is `[tokens, 2 d]`
    /// (gate half first), `out` is `[tokens, d]`.
    pub fn silu_mul<T: GpuFloat>(
        &self,
        gate_up: &DeviceBuf<T>,
        out: &mut DeviceBuf<T>,
        tokens: usize,
        d: usize,
    ) -> CudaResult<()> {
        const OP: &str = "silu_mul";
        if gate_up.len() != tokens * 2 * d || out.len() != tokens * d {
            return Err(shape(
                OP,
                format!(
                    "gate_up has {}, out {} elements; expected {tokens} x {} and {tokens} x {d}",
                    gate_up.len(),
                    out.len(),
                    2 * d
                ),
            ));
        }
        if tokens * d == 0 {
            return Ok(());
        }
        let kernel = format!("kt_silu_mul_{}", T::SUFFIX);
        let f = self.kernels.get(&SMALL_OPS, &kernel)?;
        let (t, dd) = (to_i32(OP, "tokens", tokens)?, to_i32(OP, "d", d)?);
        let mut b = self.stream.launch_builder(&f);
        b.arg(&gate_up.slice).arg(&mut out.slice).arg(&t).arg(&dd);
        // SAFETY: matches kt_silu_mul_* (gate_up, out, tokens, d); lengths checked above and the
        // kernel's grid-stride loop stays below tokens * d.
        unsafe { b.launch(elem_config(tokens * d)) }
            .map(drop)
            .map_err(launch_err(kernel, || format!("tokens {tokens}, d {d}")))
    }

    /// `acc[i] += x[i]` (the residual update).
    pub fn add_inplace<T: GpuFloat>(
        &self,
        acc: &mut DeviceBuf<T>,
        x: &DeviceBuf<T>,
    ) -> CudaResult<()> {
        const OP: &str = "add_inplace";
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
        let kernel = format!("kt_add_inplace_{}", T::SUFFIX);
        let f = self.kernels.get(&SMALL_OPS, &kernel)?;
        let n64 = n as u64;
        let mut b = self.stream.launch_builder(&f);
        b.arg(&mut acc.slice).arg(&x.slice).arg(&n64);
        // SAFETY: matches kt_add_inplace_* (acc, x, n); both hold n elements.
        unsafe { b.launch(elem_config(n)) }
            .map(drop)
            .map_err(launch_err(kernel, || format!("n {n}")))
    }

    /// `out[t, :] = table[ids[t], :]` with `table` `[vocab, dim]`. An id `>= vocab` gives a
    /// row of NaN (ids live on the device, so they are checked there).
    pub fn embedding<T: GpuFloat>(
        &self,
        table: &DeviceBuf<T>,
        vocab: usize,
        ids: &DeviceBuf<u32>,
        out: &mut DeviceBuf<T>,
    ) -> CudaResult<()> {
        const OP: &str = "embedding";
        if vocab == 0 || table.is_empty() || !table.len().is_multiple_of(vocab) {
            return Err(shape(
                OP,
                format!(
                    "table of {} elements is not vocab {vocab} rows",
                    table.len()
                ),
            ));
        }
        let dim = table.len() / vocab;
        let tokens = ids.len();
        if out.len() != tokens * dim {
            return Err(shape(
                OP,
                format!(
                    "out has {} elements, expected {tokens} ids x dim {dim}",
                    out.len()
                ),
            ));
        }
        if tokens == 0 {
            return Ok(());
        }
        let kernel = format!("kt_embedding_{}", T::SUFFIX);
        let f = self.kernels.get(&SMALL_OPS, &kernel)?;
        let v = u32::try_from(vocab)
            .map_err(|_| shape(OP, format!("vocab {vocab} does not fit in a u32")))?;
        let d = to_i32(OP, "dim", dim)?;
        let cfg = LaunchConfig {
            grid_dim: (grid_rows(OP, tokens)?, 1, 1),
            block_dim: (ROW_THREADS, 1, 1),
            shared_mem_bytes: 0,
        };
        let mut b = self.stream.launch_builder(&f);
        b.arg(&table.slice)
            .arg(&ids.slice)
            .arg(&mut out.slice)
            .arg(&v)
            .arg(&d);
        // SAFETY: matches kt_embedding_* (table, ids, out, vocab, dim); one block per id, the
        // kernel reads table rows only for ids < vocab and out holds tokens * dim.
        unsafe { b.launch(cfg) }
            .map(drop)
            .map_err(launch_err(kernel, || {
                format!("tokens {tokens}, vocab {vocab}, dim {dim}")
            }))
    }

    /// `out[r] =` index of the largest of `x[r, :]` for `rows` rows of `x.len() / rows`
    /// elements. Ties go to the lowest index; NaN never wins (an all-NaN row gives 0).
    pub fn argmax<T: GpuFloat>(
        &self,
        x: &DeviceBuf<T>,
        rows: usize,
        out: &mut DeviceBuf<u32>,
    ) -> CudaResult<()> {
        const OP: &str = "argmax";
        if rows == 0 || x.is_empty() || !x.len().is_multiple_of(rows) || out.len() != rows {
            return Err(shape(
                OP,
                format!(
                    "x has {} elements, out {}; expected rows {rows} (> 0) of equal length",
                    x.len(),
                    out.len()
                ),
            ));
        }
        let n = x.len() / rows;
        let kernel = format!("kt_argmax_{}", T::SUFFIX);
        let f = self.kernels.get(&SMALL_OPS, &kernel)?;
        let nn = to_i32(OP, "row length", n)?;
        let cfg = LaunchConfig {
            grid_dim: (grid_rows(OP, rows)?, 1, 1),
            block_dim: (ROW_THREADS, 1, 1),
            shared_mem_bytes: 0,
        };
        let mut b = self.stream.launch_builder(&f);
        b.arg(&x.slice).arg(&mut out.slice).arg(&nn);
        // SAFETY: matches kt_argmax_* (x, out, n); one block per row, x holds rows * n.
        unsafe { b.launch(cfg) }
            .map(drop)
            .map_err(launch_err(kernel, || format!("rows {rows}, n {n}")))
    }

    /// `out[r] =` the token top-p sampling picks from logit row `r` of `rows` equal rows with
    /// `uniforms[r]` as its draw: exactly [`crate::ops::top_p_sample`] (see its module for
    /// the definition; temperature 0 is greedy). `uniforms` must lie in `[0, 1)` (they live
    /// on the device and are not checked; a value outside picks the nucleus's first or last
    /// token). A row holding NaN or `+inf`, or only `-inf`, gets [`TOP_P_INVALID`].
    pub fn top_p_sample(
        &self,
        logits: &DeviceBuf<f32>,
        rows: usize,
        uniforms: &DeviceBuf<f32>,
        temperature: f32,
        top_p: f32,
        out: &mut DeviceBuf<u32>,
    ) -> CudaResult<()> {
        const OP: &str = "top_p_sample";
        check_top_p_settings(OP, temperature, top_p).map_err(|e| shape(OP, e.to_string()))?;
        if rows == 0
            || logits.is_empty()
            || !logits.len().is_multiple_of(rows)
            || uniforms.len() != rows
            || out.len() != rows
        {
            return Err(shape(
                OP,
                format!(
                    "logits have {} elements, uniforms {}, out {}; expected rows {rows} (> 0) of equal length and one uniform and output per row",
                    logits.len(),
                    uniforms.len(),
                    out.len()
                ),
            ));
        }
        let n = logits.len() / rows;
        let kernel = "kt_top_p_f32";
        let f = self.kernels.get(&TOP_P, kernel)?;
        let nn = to_i32(OP, "row length", n)?;
        let cfg = LaunchConfig {
            grid_dim: (grid_rows(OP, rows)?, 1, 1),
            block_dim: (TOP_P_THREADS, 1, 1),
            shared_mem_bytes: 0,
        };
        let mut b = self.stream.launch_builder(&f);
        b.arg(&logits.slice)
            .arg(&uniforms.slice)
            .arg(&mut out.slice)
            .arg(&nn)
            .arg(&temperature)
            .arg(&top_p);
        // SAFETY: matches kt_top_p_f32 (logits, uniforms, out, n, temperature, top_p); one
        // block of 512 threads per row; logits hold rows * n, uniforms and out rows.
        unsafe { b.launch(cfg) }
            .map(drop)
            .map_err(launch_err(kernel, || format!("rows {rows}, n {n}")))
    }
}
