//! One work item of the repacked operator's gate+up or down projection: what every item
//! of a call shares ([`GateUp`], [`Down`]) and the item itself, so that the phases
//! (`run.rs`) and the fused decode job (`fused.rs`) run the same arithmetic item for item.

use std::marker::PhantomData;

use super::act::{quantize_row_with, quantize_segment_with, ActScales};
use super::format::{RepackFormat, PANEL};
use super::kernel::{Kernel, Prefetch, Tile};
use super::layer::Inner;
use super::matrix::RepackedStack;
use crate::cpu::moe::plan::{self, Item, MAX_ITEM_FLOATS};
use crate::cpu::moe::silu::silu_mul_with;
use crate::cpu::shared_ptr::Raw;
use crate::cpu::Isa;

/// The quantized intermediate: `pairs` rows `stride` bytes apart, scaled `scales`.
pub(super) struct Inter<'a> {
    pub q: &'a mut [u8],
    pub stride: usize,
    pub scales: ActScales,
}

/// The most rows of one item (the per-item `silu(g) * u` row on the stack).
const ITEM_ROWS: usize = if plan::GEMM_ROW_BLOCK > plan::GEMV_ROW_BLOCK {
    plan::GEMM_ROW_BLOCK
} else {
    plan::GEMV_ROW_BLOCK
};

/// True when a gate/up item's rows are whole groups of the down format `fd` scaled per
/// group, so it can quantize its block of the intermediate itself (a per-token scale
/// needs the whole row).
pub(super) fn fuses_quantize(fd: RepackFormat, sd: ActScales, it: &Item) -> bool {
    sd == ActScales::PerGroup
        && fd.group().is_none_or(|g| {
            (it.row0 as usize).is_multiple_of(g) && (it.rows as usize).is_multiple_of(g)
        })
}

/// The tile of rows `r0..r0 + rows` (whole panels) of expert `e` of `stack`.
#[allow(clippy::too_many_arguments)]
fn tile(
    stack: &RepackedStack,
    prefetch: Prefetch,
    e: usize,
    r0: usize,
    rows: usize,
    (a, act): (*const u8, ActScales),
    a_stride: usize,
    tokens: usize,
    a_rows: usize,
    out: *mut f32,
    ldo: usize,
) -> Tile {
    let f = stack.format();
    let k = stack.cols();
    let (pb, ps) = (f.panel_bytes(k), f.panel_scales(k));
    let panels_per_expert = stack.rows() / PANEL;
    let p = e * panels_per_expert + r0 / PANEL;
    Tile {
        format: f,
        k,
        w: stack.data().as_ptr().wrapping_add(p * pb),
        scales: stack.scales().as_ptr().wrapping_add(p * ps),
        fold: stack.expert_fold(e).map(|(d, m)| {
            (
                d.as_ptr().wrapping_add(r0),
                m.as_ptr().wrapping_add(r0 / PANEL * ps),
            )
        }),
        panels: rows / PANEL,
        a,
        a_stride,
        act,
        tokens,
        a_rows,
        out,
        ldo,
        prefetch,
    }
}

/// What the gate+up items of one call share: the gathered activations (`a_rows` rows of
/// `act_row` bytes, scaled `sg`), the f32 intermediate, the quantized intermediate and
/// the per-thread tile scratch (two tiles of `MAX_ITEM_FLOATS` a thread).
pub(super) struct GateUp<'a> {
    isa: Isa,
    pf: Prefetch,
    l: &'a Inner,
    a: Raw<u8>,
    act_row: usize,
    a_rows: usize,
    sg: ActScales,
    inter: Raw<f32>,
    q: Raw<u8>,
    q_stride: usize,
    q_rows: usize,
    sd: ActScales,
    tiles: Raw<f32>,
    /// The buffers stay borrowed while the items run.
    _bufs: PhantomData<(&'a [u8], &'a mut [f32])>,
}

impl<'a> GateUp<'a> {
    /// `act` holds the gathered rows plus readable padding; `tiles` is sized for the
    /// pool's threads.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        isa: Isa,
        pf: Prefetch,
        l: &'a Inner,
        act: &'a [u8],
        act_row: usize,
        inter: &'a mut [f32],
        inter_q: Inter<'a>,
        (tiles, sg): (&'a mut [f32], ActScales),
    ) -> GateUp<'a> {
        GateUp {
            isa,
            pf,
            l,
            a: Raw::new(act.as_ptr()),
            act_row,
            a_rows: act.len() / act_row,
            sg,
            inter: Raw::new(inter.as_mut_ptr()),
            q_rows: inter_q.q.len() / inter_q.stride,
            q: Raw::new(inter_q.q.as_mut_ptr()),
            q_stride: inter_q.stride,
            sd: inter_q.scales,
            tiles: Raw::new(tiles.as_mut_ptr()),
            _bufs: PhantomData,
        }
    }

    /// The quantized intermediate the items write, as (rows, count) for [`Down`] in the same
    /// job: the pointer the writes go through, so the reads share its provenance.
    pub fn quantized(&self) -> (Raw<u8>, usize) {
        (self.q, self.q_rows)
    }

    /// Whether item `it` quantizes its block of the intermediate itself (else it leaves
    /// the block in f32 for [`GateUp::quantize_positions`]).
    pub fn fuses(&self, it: &Item) -> bool {
        fuses_quantize(self.l.down.format(), self.sd, it)
    }

    /// Gate and up of item `it` into `thread`'s tiles, then `silu(g) * u` into the
    /// item's block of the intermediate: quantized straight away when [`GateUp::fuses`],
    /// else in f32.
    ///
    /// # Safety
    /// The item's expert and rows lie in the layer and its positions in the gathered
    /// activations (written); no other thread works on the item's (position, row) block
    /// or uses `thread`'s tiles meanwhile; `thread` is below the threads the tiles were
    /// sized for.
    pub unsafe fn item(&self, it: Item, thread: usize) {
        let (l, isa) = (self.l, self.isa);
        let i_dim = l.gate.rows();
        let fd = l.down.format();
        // Where the scale of the group holding column `c` lies in a quantized
        // intermediate row (INT formats).
        let scale_at = |c: usize| i_dim + 4 * (c / fd.group().unwrap_or(1));
        let (e, r0, nr, p0, nt) = it.parts();
        let g_out = self.tiles.at(thread * 2 * MAX_ITEM_FLOATS);
        let u_out = self
            .tiles
            .at(thread * 2 * MAX_ITEM_FLOATS + MAX_ITEM_FLOATS);
        let kern = Kernel::pick(isa, l.gate.format(), nt);
        let ap = self.a.at(p0 * self.act_row);
        let run = |stack: &RepackedStack, out: *mut f32| {
            let t = tile(
                stack,
                self.pf,
                e,
                r0,
                nr,
                (ap, self.sg),
                self.act_row,
                nt,
                self.a_rows - p0,
                out,
                nr,
            );
            // SAFETY: e < experts (checked by forward) and r0..r0+nr are whole panels
            // inside 0..I (plan blocks are multiples of 16 and I is), positions
            // p0..p0+nt lie in the gathered activations, the thread's two tile buffers
            // hold MAX_ITEM_FLOATS >= nr * nt floats each and only this thread uses them
            // (the caller's contract); `pick` only returns kernels the checked ISA runs.
            unsafe { kern.run(&t) };
        };
        run(&l.gate, g_out);
        run(&l.up, u_out);
        let fused = self.fuses(&it);
        let mut row = [0f32; ITEM_ROWS];
        for t in 0..nt {
            // SAFETY: the tiles were just written (nt x nr each).
            let (g, u) = unsafe {
                (
                    std::slice::from_raw_parts(g_out.add(t * nr), nr),
                    std::slice::from_raw_parts(u_out.add(t * nr), nr),
                )
            };
            if !fused {
                // SAFETY: the intermediate part (position p0+t, rows r0..r0+nr) belongs
                // to this item.
                let hrow = unsafe {
                    std::slice::from_raw_parts_mut(self.inter.at((p0 + t) * i_dim + r0), nr)
                };
                silu_mul_with(isa, g, u, hrow);
                continue;
            }
            let hrow = &mut row[..nr];
            silu_mul_with(isa, g, u, hrow);
            let p = p0 + t;
            // SAFETY: position p's quantized row (`q_stride` bytes at p * q_stride) holds
            // the values of columns r0..r0+nr (bytes r0.. of an INT row, 2 * r0.. of a
            // BF16 one) and their groups' scales at `scale_at`: both belong to this item
            // (its rows are whole groups), and no other byte of the row is touched here.
            let (vals, scales) = unsafe {
                let base = self.q.at(p * self.q_stride);
                match fd.group() {
                    Some(_) => (
                        std::slice::from_raw_parts_mut(base.add(r0), nr),
                        std::slice::from_raw_parts_mut(
                            base.add(scale_at(r0)),
                            scale_at(r0 + nr) - scale_at(r0),
                        ),
                    ),
                    None => (
                        std::slice::from_raw_parts_mut(base.add(2 * r0), 2 * nr),
                        &mut [][..],
                    ),
                }
            };
            quantize_segment_with(isa, fd, hrow, vals, scales);
        }
    }

    /// Quantizes the f32 intermediate rows of positions `ps` into their quantized rows
    /// (the items that did not [`fuse`](GateUp::fuses) the quantization).
    ///
    /// # Safety
    /// Those positions' intermediate rows are complete and nobody writes them; their
    /// quantized rows are this thread's alone meanwhile.
    pub unsafe fn quantize_positions(&self, ps: std::ops::Range<usize>) {
        let (fd, n) = (self.l.down.format(), self.l.gate.rows());
        let row = fd.act_row_bytes(n);
        for p in ps {
            // SAFETY: the caller's contract; rows of `row <= q_stride` bytes, `q_stride`
            // apart, and f32 rows of n floats.
            let (src, out) = unsafe {
                (
                    std::slice::from_raw_parts(self.inter.at(p * n).cast_const(), n),
                    std::slice::from_raw_parts_mut(self.q.at(p * self.q_stride), row),
                )
            };
            quantize_row_with(self.isa, fd, self.sd, src, out);
        }
    }
}

/// What the down items of one call share: the quantized intermediate (`a_rows` rows of
/// `act_row` bytes, scaled `sd`) and the `[pairs, h]` down output, both raw: the caller
/// keeps the buffers borrowed while the items run (the fused job writes the intermediate
/// through [`GateUp`] and reads it here, ordered by its per-expert marks).
pub(super) struct Down<'a> {
    isa: Isa,
    pf: Prefetch,
    stack: &'a RepackedStack,
    sd: ActScales,
    a: Raw<u8>,
    act_row: usize,
    a_rows: usize,
    out: Raw<f32>,
}

impl<'a> Down<'a> {
    pub fn new(
        isa: Isa,
        pf: Prefetch,
        (stack, sd): (&'a RepackedStack, ActScales),
        (a, a_rows): (Raw<u8>, usize),
        act_row: usize,
        out: Raw<f32>,
    ) -> Down<'a> {
        Down {
            isa,
            pf,
            stack,
            sd,
            a,
            act_row,
            a_rows,
            out,
        }
    }

    /// Down of item `it` into its positions' rows of the output.
    ///
    /// # Safety
    /// As [`GateUp::item`]; the item's positions' quantized rows are written and no
    /// longer change; its (position, row) block of the output is its own.
    pub unsafe fn item(&self, it: Item) {
        let h = self.stack.rows();
        let (e, r0, nr, p0, nt) = it.parts();
        let kern = Kernel::pick(self.isa, self.stack.format(), nt);
        let t = tile(
            self.stack,
            self.pf,
            e,
            r0,
            nr,
            (self.a.at(p0 * self.act_row), self.sd),
            self.act_row,
            nt,
            self.a_rows - p0,
            self.out.at(p0 * h + r0),
            h,
        );
        // SAFETY: as in `GateUp::item`; the (positions, rows) block of the output
        // (pairs x h) belongs to this item (the caller's contract).
        unsafe { kern.run(&t) };
    }
}
