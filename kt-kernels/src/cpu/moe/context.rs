//! [`MoeContext`]: the pool, the ISA, the scratch and a driver thread that runs submitted
//! calls, so the caller can overlap other work with a layer's experts.
//!
//! The call protocol (one call at a time, who waits for what) is `driver.rs`'s, shared
//! with the repacked operator.

use std::ops::Deref;

use std::sync::Arc;

use super::compute;
use super::driver::{Driver, Job, MoeHandle};
use super::layer::MoeLayer;
use super::prefetch::Rounds;
use super::scratch::{Needs, Scratch};
use crate::cpu::dispatch;
use crate::cpu::{Isa, ThreadPool};
use crate::error::{KtError, Result};

/// The pool a context runs on: the process-wide one or one the caller owns.
#[derive(Clone)]
pub enum PoolRef {
    Static(&'static ThreadPool),
    Shared(Arc<ThreadPool>),
}

impl Deref for PoolRef {
    type Target = ThreadPool;
    fn deref(&self) -> &ThreadPool {
        match self {
            PoolRef::Static(p) => p,
            PoolRef::Shared(p) => p,
        }
    }
}

impl From<&'static ThreadPool> for PoolRef {
    fn from(p: &'static ThreadPool) -> Self {
        PoolRef::Static(p)
    }
}

impl From<Arc<ThreadPool>> for PoolRef {
    fn from(p: Arc<ThreadPool>) -> Self {
        PoolRef::Shared(p)
    }
}

/// Runs MoE layers: see the module docs of [`crate::cpu::moe`].
pub struct MoeContext {
    driver: Driver<Scratch>,
    max_tokens: usize,
    max_top_k: usize,
    /// [`MoeContext::set_prefetch_rounds`] and the rounds the last prefetch warmed.
    rounds: Rounds,
}

impl Job for Scratch {
    fn run(&mut self, pool: &ThreadPool, isa: Isa) -> Result<()> {
        compute::run(self, pool, isa)
    }
    fn output(&self) -> &[f32] {
        &self.out
    }
}

fn shape(detail: String) -> KtError {
    KtError::Shape {
        op: "MoeContext",
        detail,
    }
}

impl MoeContext {
    /// A context for calls of up to `max_tokens` tokens with up to `max_top_k` experts
    /// each, on `pool` with the kernels of `isa`, with scratch sized for `layers`
    /// (more can be added with [`MoeContext::reserve`]). Starts the driver thread.
    pub fn new(
        pool: impl Into<PoolRef>,
        isa: Isa,
        max_tokens: usize,
        max_top_k: usize,
        layers: &[&MoeLayer],
    ) -> Result<MoeContext> {
        dispatch::table(isa)?;
        if max_tokens == 0 || max_top_k == 0 {
            return Err(shape(format!(
                "max_tokens {max_tokens} and max_top_k {max_top_k} must be positive"
            )));
        }
        let driver = Driver::new("MoeContext", pool.into(), isa, Scratch::default())?;
        let ctx = MoeContext {
            driver,
            max_tokens,
            max_top_k,
            rounds: Rounds::new(),
        };
        for l in layers {
            ctx.reserve(l)?;
        }
        Ok(ctx)
    }

    /// Sizes the scratch for `layer` (allocates; call it at setup, not per step). Checks
    /// that the context's ISA has kernels for the layer's formats.
    pub fn reserve(&self, layer: &MoeLayer) -> Result<()> {
        let table = dispatch::table(self.isa())?;
        for stack in [layer.gate(), layer.up(), layer.down()] {
            table.get(stack.qtype())?;
        }
        let needs = Needs::of(layer, self.max_tokens, self.max_top_k)?;
        self.driver.idle_scratch()?.grow(&needs, self.threads());
        Ok(())
    }

    pub fn isa(&self) -> Isa {
        self.driver.isa()
    }
    pub fn threads(&self) -> usize {
        self.driver.pool().threads()
    }
    pub fn max_tokens(&self) -> usize {
        self.max_tokens
    }

    /// Starts `out[t] = sum_s weights[t,s] * expert_{ids[t,s]}(x[t])` for `x: [T, H]`,
    /// `ids, weights: [T, k]` and returns at once; [`MoeHandle::sync`] waits for it. The
    /// inputs are copied, so the caller may reuse them right away. Waits first for the
    /// previous call of this context to be synced (or its handle dropped).
    pub fn submit(
        &self,
        layer: &MoeLayer,
        x: &[f32],
        ids: &[u32],
        weights: &[f32],
    ) -> Result<MoeHandle<'_>> {
        let (tokens, k) = self.check_call(layer, x, ids, weights)?;
        let needs = Needs::of(layer, self.max_tokens, self.max_top_k)?;
        let primed = self.rounds.take_primed();
        self.driver.submit(tokens * layer.hidden(), |sc| {
            sc.primed = primed;
            load(sc, &needs, layer, x, ids, weights, tokens, k)
        })
    }

    /// The synchronous call: what [`MoeContext::submit`] + [`MoeHandle::sync`] compute,
    /// but run on the calling thread (as the pool's thread 0), which saves the two
    /// hand-offs to and from the driver thread. Waits for a call in flight first.
    pub fn forward(
        &self,
        layer: &MoeLayer,
        x: &[f32],
        ids: &[u32],
        weights: &[f32],
        out: &mut [f32],
    ) -> Result<()> {
        let (tokens, k) = self.check_call(layer, x, ids, weights)?;
        if out.len() != tokens * layer.hidden() {
            return Err(shape(format!(
                "forward: output has {} elements, the call produces {}",
                out.len(),
                tokens * layer.hidden()
            )));
        }
        let needs = Needs::of(layer, self.max_tokens, self.max_top_k)?;
        let mut sc = self.driver.idle_scratch()?;
        sc.primed = self.rounds.take_primed();
        load(&mut sc, &needs, layer, x, ids, weights, tokens, k)?;
        compute::run(&mut sc, self.driver.pool(), self.isa())?;
        out.copy_from_slice(&sc.out[..out.len()]);
        Ok(())
    }

    /// Prefetches into the pool threads' L2 caches the weights a decode call of `layer`
    /// routed to the experts `ids` would read first (its first gate+up items, up to
    /// [`MoeContext::prefetch_rounds`] per thread; `prefetch.rs`), for a caller that knows
    /// the next call's experts (or a prediction of them) while the threads idle. The rounds
    /// cover the experts in the order of `ids`, so a prediction goes likeliest first (as a
    /// router picks them), and the next call lays its experts out in that order. Changes no
    /// result. Polls `stop` every KB and returns once it says so; returns the bytes it
    /// issued. Waits for a call in flight on the pool first. An error for an id past the
    /// layer's experts.
    pub fn prefetch(
        &self,
        layer: &MoeLayer,
        ids: &[u32],
        stop: &(dyn Fn() -> bool + Sync),
    ) -> Result<usize> {
        let rounds = self.prefetch_rounds();
        let issued =
            super::prefetch::run_gguf(self.driver.pool(), &layer.inner, ids, rounds, stop)?;
        self.rounds.prime(rounds, ids);
        Ok(issued)
    }

    /// How many gate+up items per thread [`MoeContext::prefetch`] warms and the next decode
    /// call hands to their fixed threads first (2 unless set).
    pub fn prefetch_rounds(&self) -> usize {
        self.rounds.get()
    }

    /// Sets [`MoeContext::prefetch_rounds`] (1 to 64): more rounds fill a longer wait with
    /// the next call's weights, as long as a thread's share fits its L2. Changes no result.
    pub fn set_prefetch_rounds(&self, rounds: usize) -> Result<()> {
        self.rounds.set(rounds).map_err(shape)
    }

    /// Checks a call's shapes; returns (tokens, k).
    fn check_call(
        &self,
        layer: &MoeLayer,
        x: &[f32],
        ids: &[u32],
        weights: &[f32],
    ) -> Result<(usize, usize)> {
        let h = layer.hidden();
        if !x.len().is_multiple_of(h) {
            return Err(shape(format!(
                "x has {} elements, not a whole number of rows of hidden size {h}",
                x.len()
            )));
        }
        let tokens = x.len() / h;
        if tokens > self.max_tokens {
            return Err(shape(format!(
                "{tokens} tokens, the context was built for at most {}",
                self.max_tokens
            )));
        }
        if tokens == 0 {
            if !ids.is_empty() || !weights.is_empty() {
                return Err(shape(format!(
                    "no tokens but {} expert ids and {} weights",
                    ids.len(),
                    weights.len()
                )));
            }
            return Ok((0, 0));
        }
        if !ids.len().is_multiple_of(tokens) || ids.is_empty() {
            return Err(shape(format!(
                "{} expert ids for {tokens} tokens: not tokens x k",
                ids.len()
            )));
        }
        let k = ids.len() / tokens;
        if k > self.max_top_k {
            return Err(shape(format!(
                "{k} experts per token, the context was built for at most {}",
                self.max_top_k
            )));
        }
        if weights.len() != ids.len() {
            return Err(shape(format!(
                "{} routing weights for {} expert ids",
                weights.len(),
                ids.len()
            )));
        }
        if let Some(i) = ids.iter().position(|&e| e as usize >= layer.experts()) {
            return Err(shape(format!(
                "token {} slot {}: expert id {} but the layer has {} experts",
                i / k,
                i % k,
                ids[i],
                layer.experts()
            )));
        }
        Ok((tokens, k))
    }
}

/// Copies a checked call's inputs into the scratch.
#[allow(clippy::too_many_arguments)]
fn load(
    sc: &mut Scratch,
    needs: &Needs,
    layer: &MoeLayer,
    x: &[f32],
    ids: &[u32],
    weights: &[f32],
    tokens: usize,
    k: usize,
) -> Result<()> {
    if !sc.sized_for.covers(needs) {
        return Err(shape(
            "the scratch was not sized for this layer: pass it to MoeContext::new or reserve()"
                .into(),
        ));
    }
    sc.layer = Some(layer.clone());
    sc.tokens = tokens;
    sc.top_k = k;
    sc.x[..x.len()].copy_from_slice(x);
    sc.ids[..ids.len()].copy_from_slice(ids);
    sc.weights[..weights.len()].copy_from_slice(weights);
    Ok(())
}
