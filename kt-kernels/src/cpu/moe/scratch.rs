//! Every buffer a call uses, allocated when the context is built or a layer is reserved
//! and only sliced afterwards: a call allocates nothing.

use std::sync::atomic::AtomicU32;

use super::combine::BLOCK_ROWS;
use super::layer::MoeLayer;
use super::plan::{self, Item, MAX_ITEM_FLOATS};
use super::prefetch::Primed;
use super::routing::Routing;
use crate::error::{KtError, Result};
use crate::util::AlignedBuf;

/// The sizes one layer needs for calls of up to `max_tokens` tokens and `max_top_k` slots.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Needs {
    pub hidden: usize,
    pub inter: usize,
    pub experts: usize,
    pub pairs: usize,
    pub tokens: usize,
    pub act_gate: usize,
    pub act_up: usize,
    pub act_down: usize,
    pub items: usize,
}

impl Needs {
    pub fn of(layer: &MoeLayer, max_tokens: usize, max_top_k: usize) -> Result<Needs> {
        let l = &*layer.inner;
        let pairs = max_tokens
            .checked_mul(max_top_k)
            .ok_or_else(|| KtError::Shape {
                op: "MoeContext",
                detail: format!("{max_tokens} tokens x {max_top_k} slots overflow"),
            })?;
        let same_act = l.gate.qtype().vec_dot_type() == l.up.qtype().vec_dot_type();
        let inter = l.slice.len();
        Ok(Needs {
            hidden: l.hidden,
            inter,
            experts: l.experts,
            pairs,
            tokens: max_tokens,
            act_gate: l.act_row_gate,
            act_up: if same_act { 0 } else { l.act_row_up },
            act_down: l.act_row_down,
            items: plan::max_items(inter.max(l.hidden), pairs, l.experts),
        })
    }

    /// True when buffers sized for `self` also serve a call that needs `other` (every
    /// buffer is a product of these fields, so field-wise is enough).
    pub fn covers(&self, other: &Needs) -> bool {
        let (s, o) = (self, other);
        s.hidden >= o.hidden
            && s.inter >= o.inter
            && s.experts >= o.experts
            && s.pairs >= o.pairs
            && s.tokens >= o.tokens
            && s.act_gate >= o.act_gate
            && s.act_up >= o.act_up
            && s.act_down >= o.act_down
            && s.items >= o.items
    }

    /// The field-wise maximum: buffers sized for it serve both.
    fn max(&self, o: &Needs) -> Needs {
        Needs {
            hidden: self.hidden.max(o.hidden),
            inter: self.inter.max(o.inter),
            experts: self.experts.max(o.experts),
            pairs: self.pairs.max(o.pairs),
            tokens: self.tokens.max(o.tokens),
            act_gate: self.act_gate.max(o.act_gate),
            act_up: self.act_up.max(o.act_up),
            act_down: self.act_down.max(o.act_down),
            items: self.items.max(o.items),
        }
    }
}

/// The scratch of a context: the current call's inputs and output, the routing, the
/// item lists and the intermediate buffers.
#[derive(Default)]
pub(crate) struct Scratch {
    pub sized_for: Needs,
    /// The call in flight: its layer, tokens and slots.
    pub layer: Option<MoeLayer>,
    pub tokens: usize,
    pub top_k: usize,
    /// Inputs `[tokens, hidden]`, `[tokens, k]`, `[tokens, k]` and the output `[tokens, hidden]`.
    pub x: Vec<f32>,
    pub ids: Vec<u32>,
    pub weights: Vec<f32>,
    pub out: Vec<f32>,
    pub routing: Routing,
    pub items_up: Vec<Item>,
    pub items_down: Vec<Item>,
    /// Quantized activations gathered by position for the gate's (and, when it differs,
    /// the up's) activation type.
    pub act_gate: AlignedBuf,
    pub act_up: AlignedBuf,
    /// `silu(gate) * up` per position (f32), then quantized for down.
    pub inter: Vec<f32>,
    pub inter_q: AlignedBuf,
    /// Down output per position, `[pairs, hidden]`.
    pub down_out: Vec<f32>,
    /// Per pool thread: a gate tile and an up tile of the largest item.
    pub tiles: Vec<f32>,
    /// Per expert, in the fused decode job: gate+up items still running, then ready.
    pub expert_state: Vec<AtomicU32>,
    /// Per block of output rows, in the fused decode job: down items still writing it
    /// (`combine::InJob`).
    pub block_state: Vec<AtomicU32>,
    /// Per position, in the fused decode job: the activation row its items read.
    pub read_row: Vec<u32>,
    /// What a prefetch before the call warmed (`prefetch.rs`): the rounds of gate+up items
    /// the call's fused decode job hands to fixed threads first (item `i` to thread
    /// `i % threads`; one without a prefetch) and the experts' order those items follow.
    pub primed: Primed,
}

/// f32s of one thread's tile scratch (gate tile then up tile).
pub(crate) const TILE_FLOATS: usize = 2 * MAX_ITEM_FLOATS;

impl Scratch {
    /// Grows every buffer to serve `needs` (and everything it served before) with a pool
    /// of `threads` threads.
    pub fn grow(&mut self, needs: &Needs, threads: usize) {
        let n = self.sized_for.max(needs);
        let (t, p) = (n.tokens, n.pairs);
        grow_vec(&mut self.x, t * n.hidden);
        grow_vec(&mut self.out, t * n.hidden);
        grow_vec(&mut self.ids, p);
        grow_vec(&mut self.weights, p);
        self.routing.reserve(n.experts, p);
        for items in [&mut self.items_up, &mut self.items_down] {
            items.reserve_exact(n.items.saturating_sub(items.len()));
        }
        grow_buf(&mut self.act_gate, p * n.act_gate);
        grow_buf(&mut self.act_up, p * n.act_up);
        grow_buf(&mut self.inter_q, p * n.act_down);
        grow_vec(&mut self.inter, p * n.inter);
        grow_vec(&mut self.down_out, p * n.hidden);
        grow_vec(&mut self.tiles, threads * TILE_FLOATS);
        grow_vec(&mut self.read_row, p);
        let blocks = n.hidden.div_ceil(BLOCK_ROWS);
        if self.block_state.len() < blocks {
            self.block_state.resize_with(blocks, || AtomicU32::new(0));
        }
        if self.expert_state.len() < n.experts {
            self.expert_state
                .resize_with(n.experts, || AtomicU32::new(0));
        }
        self.sized_for = n;
    }
}

fn grow_vec<T: Default + Clone>(v: &mut Vec<T>, n: usize) {
    if v.len() < n {
        v.resize(n, T::default());
    }
}

fn grow_buf(b: &mut AlignedBuf, n: usize) {
    if b.len() < n {
        b.resize(n);
    }
}
