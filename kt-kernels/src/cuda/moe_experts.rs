//! The routed experts of a long prompt chunk on the GPU (`cuda/moe_experts.cu`): a layer's
//! experts as one int4 slab (every expert's W4A16 weights back to back) that is staged from
//! pinned host memory ([`HostExpertSlab`]) into a device slot ([`ExpertSlab`]) while the
//! previous layer computes, the token rows gathered in expert order, one W4A16 GEMM per
//! expert on its run of rows ([`GpuStream::w4a16_gemm_expert`]), and each token's expert
//! outputs weighted and summed in a fixed order ([`GpuStream::moe_combine`]). A single-token
//! step's choices among a layer's resident experts are staged into a slab of `top_k` places
//! by the device itself ([`GpuStream::moe_stage_resident`]), so a captured decode graph runs
//! them whatever the router picks.

use std::ops::Range;

use cudarc::driver::{LaunchConfig, PushKernelArg};
use half::bf16;

use super::dtype::MmaFloat;
use super::error::{launch_err, shape, to_i32, CudaResult};
use super::gating::packed_len;
use super::modules::MOE_EXPERTS;
use super::runtime::{DeviceBuf, Gpu, GpuStream, PinnedBuf};
use super::w4a16::{GemmWorkspace, Int4Weights, Operands, GROUP, TILE_N};

const THREADS: u32 = 256;
const GRID_X_MAX: usize = i32::MAX as usize;

/// Sizes of a slab of `experts` matrices of `[n, k]` int4 weights.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SlabShape {
    pub experts: usize,
    pub n: usize,
    pub k: usize,
}

impl SlabShape {
    pub fn new(experts: usize, n: usize, k: usize) -> CudaResult<Self> {
        if experts == 0 || n == 0 || k == 0 || !n.is_multiple_of(TILE_N) || !k.is_multiple_of(GROUP)
        {
            return Err(shape(
                "expert slab",
                format!(
                    "{experts} experts of n {n}, k {k}: need at least one expert, n a positive multiple of {TILE_N}, k of {GROUP}"
                ),
            ));
        }
        Ok(SlabShape { experts, n, k })
    }

    /// Packed bytes of one expert.
    pub fn packed_bytes(&self) -> usize {
        self.n * self.k / 2
    }

    /// Scales of one expert.
    pub fn scales(&self) -> usize {
        (self.k / GROUP) * self.n
    }

    /// Bytes of the whole slab with scales of `scale_bytes` each.
    pub fn bytes(&self, scale_bytes: usize) -> usize {
        self.experts * (self.packed_bytes() + self.scales() * scale_bytes)
    }
}

/// One layer's experts in pinned host memory, in the GEMM's packed layout.
pub struct HostExpertSlab<T> {
    pub shape: SlabShape,
    packed: PinnedBuf<u8>,
    scales: PinnedBuf<T>,
}

/// Expert `e`'s packed bytes and scales inside a slab, to be filled (from any thread).
pub struct ExpertPart<'a, T> {
    pub expert: usize,
    pub packed: &'a mut [u8],
    pub scales: &'a mut [T],
}

impl<T: MmaFloat> ExpertPart<'_, T> {
    /// Writes `w` (the expert's `[n, k]` int4 weights) into this part.
    pub fn set(&mut self, w: &Int4Weights<T>) -> CudaResult<()> {
        let packed_len = w.n * w.k / 2;
        if packed_len != self.packed.len() || w.scales.len() != self.scales.len() {
            return Err(shape(
                "expert slab part",
                format!(
                    "expert {}: weights of n {}, k {} ({} bytes, {} scales) into a part of {} bytes and {} scales",
                    self.expert,
                    w.n,
                    w.k,
                    packed_len,
                    w.scales.len(),
                    self.packed.len(),
                    self.scales.len()
                ),
            ));
        }
        // straight into the (pinned) slab: no packed copy to allocate and copy over
        w.pack_into(self.packed)?;
        self.scales.copy_from_slice(&w.scales);
        Ok(())
    }
}

impl<T: MmaFloat> HostExpertSlab<T> {
    /// A zeroed slab of pinned memory for `shape`.
    pub fn new(gpu: &Gpu, shape: SlabShape) -> CudaResult<Self> {
        Ok(HostExpertSlab {
            shape,
            packed: gpu.alloc_pinned(shape.experts * shape.packed_bytes())?,
            scales: gpu.alloc_pinned(shape.experts * shape.scales())?,
        })
    }

    /// Every expert's part, in expert order, for filling on several threads.
    pub fn parts_mut(&mut self) -> CudaResult<Vec<ExpertPart<'_, T>>> {
        let (pb, sc) = (self.shape.packed_bytes(), self.shape.scales());
        let packed = self.packed.as_mut_slice()?;
        let scales = self.scales.as_mut_slice()?;
        Ok(packed
            .chunks_exact_mut(pb)
            .zip(scales.chunks_exact_mut(sc))
            .enumerate()
            .map(|(expert, (packed, scales))| ExpertPart {
                expert,
                packed,
                scales,
            })
            .collect())
    }
}

/// Where the gating's packed words of one token lie (`xn32`'s row, ids, weights: the layout
/// of [`GpuStream::moe_gating_packed`](crate::cuda::GpuStream::moe_gating_packed)).
pub enum PackedWords<'a> {
    Device(&'a DeviceBuf<u32>),
    /// Page-locked host memory, read through its device address.
    Pinned(&'a PinnedBuf<u32>),
}

impl PackedWords<'_> {
    fn len(&self) -> usize {
        match self {
            PackedWords::Device(d) => d.len(),
            PackedWords::Pinned(p) => p.len(),
        }
    }
}

/// A layer's resident experts (gate+up and down slabs) and the staging slabs of a
/// single-token step's `top_k` choices (the same `n` and `k`, `top_k` experts each).
pub struct ResidentStage<'a, T> {
    pub gate_up: &'a ExpertSlab<T>,
    pub down: &'a ExpertSlab<T>,
    pub staged_gate_up: &'a mut ExpertSlab<T>,
    pub staged_down: &'a mut ExpertSlab<T>,
}

/// A device slot holding one layer's experts.
pub struct ExpertSlab<T> {
    pub shape: SlabShape,
    packed: DeviceBuf<u8>,
    scales: DeviceBuf<T>,
}

impl GpuStream {
    /// A device slot for slabs of `shape`.
    pub fn alloc_expert_slab<T: MmaFloat>(&self, shape: SlabShape) -> CudaResult<ExpertSlab<T>> {
        Ok(ExpertSlab {
            shape,
            packed: self.alloc_zeroed(shape.experts * shape.packed_bytes())?,
            scales: self.alloc_zeroed(shape.experts * shape.scales())?,
        })
    }

    /// Queues the copy of `src` into `dst` (same shape); returns at once.
    pub fn copy_expert_slab<T: MmaFloat>(
        &self,
        src: &HostExpertSlab<T>,
        dst: &mut ExpertSlab<T>,
    ) -> CudaResult<()> {
        if src.shape != dst.shape {
            return Err(shape(
                "copy_expert_slab",
                format!("host slab {:?} into device slot {:?}", src.shape, dst.shape),
            ));
        }
        self.copy_experts(src, 0, dst, 0, src.shape.experts)
    }

    /// Queues the copy of `count` experts of `src` from expert `from` on into `dst` from
    /// expert `to` on (the same `n` and `k`; e.g. a layer's first experts into a smaller
    /// resident slab, or the others into the same places of a full slot); returns at once.
    /// The other experts' weights in `dst` stay as they were.
    pub fn copy_experts<T: MmaFloat>(
        &self,
        src: &HostExpertSlab<T>,
        from: usize,
        dst: &mut ExpertSlab<T>,
        to: usize,
        count: usize,
    ) -> CudaResult<()> {
        let (a, b) = (src.shape, dst.shape);
        let fits = |at: usize, experts: usize| at.checked_add(count).is_some_and(|e| e <= experts);
        if a.n != b.n || a.k != b.k || !fits(from, a.experts) || !fits(to, b.experts) {
            return Err(shape(
                "copy_experts",
                format!(
                    "{count} experts from {from} of host slab {a:?} to {to} of device slab {b:?}"
                ),
            ));
        }
        let (pb, sc) = (a.packed_bytes(), a.scales());
        self.copy_from_pinned_part(&src.packed, from * pb, &mut dst.packed, to * pb, count * pb)?;
        self.copy_from_pinned_part(&src.scales, from * sc, &mut dst.scales, to * sc, count * sc)
    }

    /// `out[rows] = x[rows] W_e^T` for expert `e` of `slab`: rows `rows` of `x` (`[*, k]`)
    /// into the same rows of `out` (`[*, n]`); f32 sums, one rounding to T.
    pub fn w4a16_gemm_expert<T: MmaFloat>(
        &self,
        slab: &ExpertSlab<T>,
        e: usize,
        x: &DeviceBuf<T>,
        rows: Range<usize>,
        out: &mut DeviceBuf<T>,
        ws: &mut GemmWorkspace,
    ) -> CudaResult<()> {
        let SlabShape { experts, n, k } = slab.shape;
        if e >= experts
            || rows.start > rows.end
            || rows.end * k > x.len()
            || rows.end * n > out.len()
            || !x.len().is_multiple_of(k)
            || !out.len().is_multiple_of(n)
        {
            return Err(shape(
                "w4a16_gemm_expert",
                format!(
                    "expert {e} of {experts} (n {n}, k {k}), rows {rows:?} of x with {} and out with {} elements",
                    x.len(),
                    out.len()
                ),
            ));
        }
        let m = rows.len();
        let (pb, sc) = (slab.shape.packed_bytes(), slab.shape.scales());
        let ops = Operands {
            x: x.slice.slice(rows.start * k..rows.end * k),
            packed: slab.packed.slice.slice(e * pb..(e + 1) * pb),
            scales: slab.scales.slice.slice(e * sc..(e + 1) * sc),
            out: out.slice.slice_mut(rows.start * n..rows.end * n),
            m,
            n,
            k,
        };
        self.w4a16_launch(ops, ws, None)
    }

    /// `out[i, :] = x[rows[i], :]` for the `rows.len()` rows of `out` (`[*, width]` bf16):
    /// each (token, expert) pair's input in expert order. Row indices are checked by the
    /// caller that built them (`rows` must index rows of `x`).
    pub fn moe_gather(
        &self,
        x: &DeviceBuf<bf16>,
        rows: &DeviceBuf<i32>,
        out: &mut DeviceBuf<bf16>,
        width: usize,
    ) -> CudaResult<()> {
        const OP: &str = "moe_gather";
        let n = rows.len();
        if width == 0 || !x.len().is_multiple_of(width) || out.len() != n * width {
            return Err(shape(
                OP,
                format!(
                    "x has {}, out {} elements for {n} rows of width {width}",
                    x.len(),
                    out.len()
                ),
            ));
        }
        if n == 0 {
            return Ok(());
        }
        if n > GRID_X_MAX || i32::try_from(width).is_err() {
            return Err(shape(OP, format!("{n} rows of {width} for one launch")));
        }
        let f = self.kernels.get(&MOE_EXPERTS, "kt_moe_gather_bf16")?;
        let w = width as i32;
        let cfg = LaunchConfig {
            grid_dim: (n as u32, 1, 1),
            block_dim: (THREADS, 1, 1),
            shared_mem_bytes: 0,
        };
        let mut b = self.stream.launch_builder(&f);
        b.arg(&x.slice).arg(&rows.slice).arg(&mut out.slice).arg(&w);
        // SAFETY: matches kt_moe_gather_bf16 (x, rows, out, width); one block per row of
        // out (n x width, checked); each rows[i] indexes a row of x (the caller's
        // grouping, built from token indices < x.len() / width); 16-byte accesses only when
        // width % 8 == 0, on buffers the driver aligns to 256 bytes.
        unsafe { b.launch(cfg) }
            .map(drop)
            .map_err(launch_err("kt_moe_gather_bf16", || {
                format!("{n} rows of {width}")
            }))
    }

    /// `out[t, :] = sum_j weights[t, j] * y[slot[t, j], :]` for every token t (j in order,
    /// f32 sums): `slot` and `weights` are `[tokens, top_k]`, y `[*, width]` bf16, out
    /// `[tokens, width]` f32. A negative slot is a pair computed elsewhere (the CPU's share
    /// of a split prefill): it adds nothing. Slots are checked by the caller that built them.
    pub fn moe_combine(
        &self,
        y: &DeviceBuf<bf16>,
        slot: &DeviceBuf<i32>,
        weights: &DeviceBuf<f32>,
        top_k: usize,
        out: &mut DeviceBuf<f32>,
        width: usize,
    ) -> CudaResult<()> {
        const OP: &str = "moe_combine";
        let pairs = slot.len();
        if top_k == 0
            || width == 0
            || weights.len() != pairs
            || !pairs.is_multiple_of(top_k)
            || out.len() != (pairs / top_k) * width
            || y.len() < pairs * width
        {
            return Err(shape(
                OP,
                format!(
                    "{pairs} slots, {} weights, y {} and out {} elements for top {top_k} of width {width}",
                    weights.len(),
                    y.len(),
                    out.len()
                ),
            ));
        }
        let tokens = pairs / top_k;
        if tokens == 0 {
            return Ok(());
        }
        if tokens > GRID_X_MAX || i32::try_from(width).is_err() || i32::try_from(top_k).is_err() {
            return Err(shape(
                OP,
                format!("{tokens} tokens of {width} for one launch"),
            ));
        }
        let f = self.kernels.get(&MOE_EXPERTS, "kt_moe_combine_bf16")?;
        let (k, w) = (top_k as i32, width as i32);
        let cfg = LaunchConfig {
            grid_dim: (tokens as u32, 1, 1),
            block_dim: (THREADS, 1, 1),
            shared_mem_bytes: 0,
        };
        let mut b = self.stream.launch_builder(&f);
        b.arg(&y.slice)
            .arg(&slot.slice)
            .arg(&weights.slice)
            .arg(&mut out.slice)
            .arg(&k)
            .arg(&w);
        // SAFETY: matches kt_moe_combine_bf16 (y, slot, weights, out, top_k, width); one
        // block per token of out (tokens x width, checked); slot and weights hold tokens x
        // top_k entries (checked) and every slot indexes a row of y (the caller's grouping,
        // a permutation of 0..pairs, and y holds at least pairs rows, checked).
        unsafe { b.launch(cfg) }
            .map(drop)
            .map_err(launch_err("kt_moe_combine_bf16", || {
                format!("{tokens} tokens of {width}")
            }))
    }
}

impl GpuStream {
    /// Stages a single-token step's choices among the resident experts: for choice `j` of
    /// the token's `top_k` (ids and weights read from `words`, packed for a `hidden`-wide row),
    /// `chosen[j]` = its expert `e`; when `e` is below the resident slabs' expert count,
    /// expert `e`'s weights are copied into place `j` of the staging slabs and `slot[j] = j`,
    /// else `slot[j] = -1` (place `j` keeps its old weights); `weights[j]` = the choice's
    /// weight. Decided on the device, so the launches have the same arguments every step
    /// (capturable into a graph); [`Self::w4a16_gemm_expert`] on places `0..top_k` and
    /// [`Self::moe_combine`] with `slot` and `weights` then give the resident choices'
    /// weighted sum. Two launches: the choices (the only reads of `words`, which may lie in
    /// host memory), then the copies.
    #[allow(clippy::too_many_arguments)]
    pub fn moe_stage_resident<T: MmaFloat>(
        &self,
        words: PackedWords<'_>,
        hidden: usize,
        top_k: usize,
        stage: ResidentStage<'_, T>,
        chosen: &mut DeviceBuf<i32>,
        slot: &mut DeviceBuf<i32>,
        weights: &mut DeviceBuf<f32>,
    ) -> CudaResult<()> {
        const OP: &str = "moe_stage_resident";
        let ResidentStage {
            gate_up,
            down,
            staged_gate_up,
            staged_down,
        } = stage;
        let (gu, dn) = (gate_up.shape, down.shape);
        let (sgu, sdn) = (staged_gate_up.shape, staged_down.shape);
        let same = |a: SlabShape, b: SlabShape| a.n == b.n && a.k == b.k;
        if top_k == 0
            || top_k > THREADS as usize
            || words.len() != packed_len(1, hidden, top_k)
            || gu.experts != dn.experts
            || !same(gu, sgu)
            || !same(dn, sdn)
            || sgu.experts < top_k
            || sdn.experts < top_k
            || chosen.len() != top_k
            || slot.len() != top_k
            || weights.len() != top_k
        {
            return Err(shape(
                OP,
                format!(
                    "{} packed words for one token of {hidden} and top {top_k}; resident {gu:?} / {dn:?}, staging {sgu:?} / {sdn:?}, {} chosen, {} slots, {} weights",
                    words.len(),
                    chosen.len(),
                    slot.len(),
                    weights.len()
                ),
            ));
        }
        let ids_at = to_i32(OP, "hidden", hidden)?;
        let weights_at = to_i32(OP, "hidden + top_k", hidden + top_k)?;
        let resident = to_i32(OP, "resident experts", gu.experts)?;
        let k = top_k as i32;
        let f = self.kernels.get(&MOE_EXPERTS, "kt_moe_resident_choices")?;
        let cfg = LaunchConfig {
            grid_dim: (1, 1, 1),
            block_dim: (top_k.next_multiple_of(32) as u32, 1, 1),
            shared_mem_bytes: 0,
        };
        let pinned_at;
        let mut b = self.stream.launch_builder(&f);
        match &words {
            PackedWords::Device(d) => b.arg(&d.slice),
            PackedWords::Pinned(p) => {
                pinned_at = p.device_ptr()?;
                b.arg(&pinned_at)
            }
        };
        b.arg(&ids_at)
            .arg(&weights_at)
            .arg(&resident)
            .arg(&k)
            .arg(&mut chosen.slice)
            .arg(&mut slot.slice)
            .arg(&mut weights.slice);
        // SAFETY: matches kt_moe_resident_choices (words, ids_at, weights_at, resident, top_k,
        // chosen, slot, weights); words holds the packed layout of one token (checked), so
        // threads j < top_k read ids and weights at hidden + j and hidden + top_k + j; chosen,
        // slot and weights hold top_k (checked). A pinned pack lives past the launch (the
        // caller's buffers).
        unsafe { b.launch(cfg) }
            .map(drop)
            .map_err(launch_err("kt_moe_resident_choices", || {
                format!("top {top_k}")
            }))?;

        let vecs = |bytes: usize| (bytes / 16) as i64;
        let scale_bytes = std::mem::size_of::<T>();
        let (gu_p, gu_s) = (vecs(gu.packed_bytes()), vecs(gu.scales() * scale_bytes));
        let (dn_p, dn_s) = (vecs(dn.packed_bytes()), vecs(dn.scales() * scale_bytes));
        let f = self.kernels.get(&MOE_EXPERTS, "kt_moe_stage_resident")?;
        // enough blocks per choice to spread one or two resident choices (the usual case)
        // over the SMs, few enough to stay one wave with all of them
        let cfg = LaunchConfig {
            grid_dim: (top_k as u32, 64, 1),
            block_dim: (THREADS, 1, 1),
            shared_mem_bytes: 0,
        };
        let mut b = self.stream.launch_builder(&f);
        b.arg(&chosen.slice)
            .arg(&resident)
            .arg(&gate_up.packed.slice)
            .arg(&gate_up.scales.slice)
            .arg(&down.packed.slice)
            .arg(&down.scales.slice)
            .arg(&gu_p)
            .arg(&gu_s)
            .arg(&dn_p)
            .arg(&dn_s)
            .arg(&mut staged_gate_up.packed.slice)
            .arg(&mut staged_gate_up.scales.slice)
            .arg(&mut staged_down.packed.slice)
            .arg(&mut staged_down.scales.slice);
        // SAFETY: matches kt_moe_stage_resident (chosen, resident, the resident slabs' packed
        // and scales, one expert's sizes in 16-byte vectors, the staging slabs' packed and
        // scales). chosen holds top_k ids (written above on this stream); an id is used only
        // in 0..resident, the resident slabs' expert count, and place j < top_k <= the staging
        // slabs' experts (checked); one expert's packed bytes (n k / 2, n a multiple of 64)
        // and scales ((k / 128) n of T) are whole 16-byte vectors and every slab starts
        // 256-byte aligned.
        unsafe { b.launch(cfg) }
            .map(drop)
            .map_err(launch_err("kt_moe_stage_resident", || {
                format!("top {top_k}, resident {gu:?} / {dn:?}")
            }))
    }
}
