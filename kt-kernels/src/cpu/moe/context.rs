//! [`MoeContext`]: the pool, the ISA, the scratch and a driver thread that runs submitted
//! calls, so the caller can overlap other work with a layer's experts.
//!
//! Protocol: one call at a time. `submit` waits until the previous call finished and its
//! output was claimed (by `sync`, or by dropping its handle), copies the inputs into the
//! scratch and wakes the driver; the driver runs the call on the pool (as the pool's
//! thread 0) and marks it finished; `sync` copies the output out. The scratch sits behind
//! a mutex that the driver holds only while it runs a call, so no state is ever shared
//! unsynchronised. A thread that calls `submit` or `forward` while a handle it submitted
//! is still unsynced gets an error instead of waiting for itself; a handle leaked with
//! `mem::forget` (or sent to a thread that never syncs it) leaves its output unclaimed,
//! and other threads' later calls then wait forever (a deadlock, never unsoundness).

use std::any::Any;
use std::ops::Deref;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::{JoinHandle, ThreadId};

use super::compute;
use super::layer::MoeLayer;
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
    shared: Arc<Shared>,
    driver: Option<JoinHandle<()>>,
}

struct Shared {
    pool: PoolRef,
    isa: Isa,
    max_tokens: usize,
    max_top_k: usize,
    state: Mutex<State>,
    changed: Condvar,
    scratch: Mutex<Scratch>,
}

struct State {
    /// Calls submitted and finished so far; a call is in flight while they differ.
    submitted: u64,
    finished: u64,
    /// The last finished call's output has been taken (or abandoned).
    claimed: bool,
    /// The thread that submitted the unclaimed call.
    owner: Option<ThreadId>,
    stop: bool,
    /// Result of the last finished call, and the panic of its kernel if one panicked.
    result: Result<()>,
    panic: Option<Box<dyn Any + Send>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic inside a call is caught and handed to `sync`; the data stays consistent
    // (every call rewrites what it reads), so a poisoned lock is still usable.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn shape(detail: String) -> KtError {
    KtError::Shape { op: "MoeContext", detail }
}

impl MoeContext {
    /// A context for calls of up to `max_tokens` tokens with up to `max_top_k` experts
    /// each, on `pool` with the kernels of `isa`, with scratch sized for `layers`
    /// (more can be added with [`MoeContext::reserve`]). Starts the driver thread.
    pub fn new(pool: impl Into<PoolRef>, isa: Isa, max_tokens: usize, max_top_k: usize, layers: &[&MoeLayer]) -> Result<MoeContext> {
        dispatch::table(isa)?;
        if max_tokens == 0 || max_top_k == 0 {
            return Err(shape(format!("max_tokens {max_tokens} and max_top_k {max_top_k} must be positive")));
        }
        let pool = pool.into();
        let pin = core_affinity::get_core_ids().unwrap_or_default();
        // With the pool on every core, workers sit on cores 1.. and the driver (the
        // pool's thread 0) takes core 0, as a pinned caller would.
        let pin = if pin.len() == pool.threads() { pin.first().copied() } else { None };
        let shared = Arc::new(Shared {
            pool,
            isa,
            max_tokens,
            max_top_k,
            state: Mutex::new(State { submitted: 0, finished: 0, claimed: true, owner: None, stop: false, result: Ok(()), panic: None }),
            changed: Condvar::new(),
            scratch: Mutex::new(Scratch::default()),
        });
        let ctx_shared = Arc::clone(&shared);
        let driver = std::thread::Builder::new()
            .name("kt-moe-driver".into())
            .spawn(move || {
                if let Some(core) = pin {
                    core_affinity::set_for_current(core);
                }
                driver_loop(&ctx_shared)
            })
            .map_err(|e| shape(format!("cannot spawn the driver thread: {e}")))?;
        let ctx = MoeContext { shared, driver: Some(driver) };
        for l in layers {
            ctx.reserve(l)?;
        }
        Ok(ctx)
    }

    /// Sizes the scratch for `layer` (allocates; call it at setup, not per step). Checks
    /// that the context's ISA has kernels for the layer's formats.
    pub fn reserve(&self, layer: &MoeLayer) -> Result<()> {
        let s = &*self.shared;
        let table = dispatch::table(s.isa)?;
        for stack in [layer.gate(), layer.up(), layer.down()] {
            table.get(stack.qtype())?;
        }
        let needs = Needs::of(layer, s.max_tokens, s.max_top_k)?;
        let _idle = self.wait_idle()?;
        lock(&s.scratch).grow(&needs, s.pool.threads());
        Ok(())
    }

    pub fn isa(&self) -> Isa {
        self.shared.isa
    }
    pub fn threads(&self) -> usize {
        self.shared.pool.threads()
    }
    pub fn max_tokens(&self) -> usize {
        self.shared.max_tokens
    }

    /// Waits until no call is in flight or unclaimed; returns the state lock. An error
    /// when the unclaimed call is this thread's own (waiting would never end).
    fn wait_idle(&self) -> Result<MutexGuard<'_, State>> {
        let s = &*self.shared;
        let mut st = lock(&s.state);
        while st.finished != st.submitted || !st.claimed {
            if st.owner == Some(std::thread::current().id()) {
                return Err(shape("this thread holds the handle of an unsynced call: sync or drop it first".into()));
            }
            st = s.changed.wait(st).unwrap_or_else(|p| p.into_inner());
        }
        Ok(st)
    }

    /// Starts `out[t] = sum_s weights[t,s] * expert_{ids[t,s]}(x[t])` for `x: [T, H]`,
    /// `ids, weights: [T, k]` and returns at once; [`MoeHandle::sync`] waits for it. The
    /// inputs are copied, so the caller may reuse them right away. Waits first for the
    /// previous call of this context to be synced (or its handle dropped).
    pub fn submit(&self, layer: &MoeLayer, x: &[f32], ids: &[u32], weights: &[f32]) -> Result<MoeHandle<'_>> {
        let (tokens, k) = self.check_call(layer, x, ids, weights)?;
        let s = &*self.shared;
        let needs = Needs::of(layer, s.max_tokens, s.max_top_k)?;
        let mut st = self.wait_idle()?;
        load(&mut lock(&s.scratch), &needs, layer, x, ids, weights, tokens, k)?;
        st.submitted += 1;
        st.claimed = false;
        st.owner = Some(std::thread::current().id());
        let seq = st.submitted;
        drop(st);
        s.changed.notify_all();
        Ok(MoeHandle { ctx: self, seq, len: tokens * layer.hidden(), synced: false })
    }

    /// The synchronous call: what [`MoeContext::submit`] + [`MoeHandle::sync`] compute,
    /// but run on the calling thread (as the pool's thread 0), which saves the two
    /// hand-offs to and from the driver thread. Waits for a call in flight first.
    pub fn forward(&self, layer: &MoeLayer, x: &[f32], ids: &[u32], weights: &[f32], out: &mut [f32]) -> Result<()> {
        let (tokens, k) = self.check_call(layer, x, ids, weights)?;
        if out.len() != tokens * layer.hidden() {
            return Err(shape(format!("forward: output has {} elements, the call produces {}", out.len(), tokens * layer.hidden())));
        }
        let s = &*self.shared;
        let needs = Needs::of(layer, s.max_tokens, s.max_top_k)?;
        let idle = self.wait_idle()?;
        let mut sc = lock(&s.scratch);
        // Submitters now wait on the scratch lock until this call is done.
        drop(idle);
        load(&mut sc, &needs, layer, x, ids, weights, tokens, k)?;
        compute::run(&mut sc, &s.pool, s.isa)?;
        out.copy_from_slice(&sc.out[..out.len()]);
        Ok(())
    }

    /// Checks a call's shapes; returns (tokens, k).
    fn check_call(&self, layer: &MoeLayer, x: &[f32], ids: &[u32], weights: &[f32]) -> Result<(usize, usize)> {
        let h = layer.hidden();
        if !x.len().is_multiple_of(h) {
            return Err(shape(format!("x has {} elements, not a whole number of rows of hidden size {h}", x.len())));
        }
        let tokens = x.len() / h;
        if tokens > self.shared.max_tokens {
            return Err(shape(format!("{tokens} tokens, the context was built for at most {}", self.shared.max_tokens)));
        }
        if tokens == 0 {
            if !ids.is_empty() || !weights.is_empty() {
                return Err(shape(format!("no tokens but {} expert ids and {} weights", ids.len(), weights.len())));
            }
            return Ok((0, 0));
        }
        if !ids.len().is_multiple_of(tokens) || ids.is_empty() {
            return Err(shape(format!("{} expert ids for {tokens} tokens: not tokens x k", ids.len())));
        }
        let k = ids.len() / tokens;
        if k > self.shared.max_top_k {
            return Err(shape(format!("{k} experts per token, the context was built for at most {}", self.shared.max_top_k)));
        }
        if weights.len() != ids.len() {
            return Err(shape(format!("{} routing weights for {} expert ids", weights.len(), ids.len())));
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
fn load(sc: &mut Scratch, needs: &Needs, layer: &MoeLayer, x: &[f32], ids: &[u32], weights: &[f32], tokens: usize, k: usize) -> Result<()> {
    if !sc.sized_for.covers(needs) {
        return Err(shape("the scratch was not sized for this layer: pass it to MoeContext::new or reserve()".into()));
    }
    sc.layer = Some(layer.clone());
    sc.tokens = tokens;
    sc.top_k = k;
    sc.x[..x.len()].copy_from_slice(x);
    sc.ids[..ids.len()].copy_from_slice(ids);
    sc.weights[..weights.len()].copy_from_slice(weights);
    Ok(())
}

impl Drop for MoeContext {
    fn drop(&mut self) {
        lock(&self.shared.state).stop = true;
        self.shared.changed.notify_all();
        if let Some(d) = self.driver.take() {
            let _ = d.join();
        }
    }
}

fn driver_loop(s: &Shared) {
    let mut seen = 0u64;
    loop {
        {
            let mut st = lock(&s.state);
            while st.submitted == seen && !st.stop {
                st = s.changed.wait(st).unwrap_or_else(|p| p.into_inner());
            }
            if st.submitted == seen {
                return; // stopping, nothing left to run
            }
            seen = st.submitted;
        }
        let outcome = {
            let mut sc = lock(&s.scratch);
            catch_unwind(AssertUnwindSafe(|| compute::run(&mut sc, &s.pool, s.isa)))
        };
        let mut st = lock(&s.state);
        st.finished = seen;
        match outcome {
            Ok(r) => st.result = r,
            Err(p) => {
                st.result = Ok(());
                st.panic = Some(p);
            }
        }
        drop(st);
        s.changed.notify_all();
    }
}

/// A submitted call. [`MoeHandle::sync`] waits for it and copies its output; dropping the
/// handle waits for it and discards the output.
#[must_use = "a submitted MoE call must be synced to get its output"]
pub struct MoeHandle<'a> {
    ctx: &'a MoeContext,
    seq: u64,
    len: usize,
    synced: bool,
}

impl MoeHandle<'_> {
    /// Waits for the call, then copies its `[T, H]` output to `out`. A kernel panic on
    /// the pool is resumed here.
    pub fn sync(mut self, out: &mut [f32]) -> Result<()> {
        if out.len() != self.len {
            return Err(shape(format!("sync: output has {} elements, the call produces {}", out.len(), self.len)));
        }
        let ctx = self.ctx;
        let s = &*ctx.shared;
        let mut st = wait_finished(s, self.seq);
        let result = std::mem::replace(&mut st.result, Ok(()));
        let panic = st.panic.take();
        if result.is_ok() && panic.is_none() {
            out.copy_from_slice(&lock(&s.scratch).out[..self.len]);
        }
        st.claimed = true;
        st.owner = None;
        self.synced = true;
        drop(st);
        s.changed.notify_all();
        if let Some(p) = panic {
            resume_unwind(p);
        }
        result
    }

    /// True once the call has finished (sync will not block).
    pub fn is_done(&self) -> bool {
        lock(&self.ctx.shared.state).finished >= self.seq
    }

}

/// Waits until call `seq` has finished; returns the state lock.
fn wait_finished(s: &Shared, seq: u64) -> MutexGuard<'_, State> {
    let mut st = lock(&s.state);
    while st.finished < seq {
        st = s.changed.wait(st).unwrap_or_else(|p| p.into_inner());
    }
    st
}

impl Drop for MoeHandle<'_> {
    fn drop(&mut self) {
        if !self.synced {
            let mut st = wait_finished(&self.ctx.shared, self.seq);
            st.claimed = true;
            st.owner = None;
            st.result = Ok(());
            st.panic = None;
            drop(st);
            self.ctx.shared.changed.notify_all();
        }
    }
}
