//! The call protocol both MoE operators share ([`super::MoeContext`] over GGUF-native
//! layers, [`super::repack::RepackedMoe`] over repacked ones): a scratch behind a mutex,
//! a driver thread that runs submitted calls on the pool, and [`MoeHandle`] to wait for
//! one. What a call computes is the scratch's business ([`Job`]); this file only hands
//! calls over.
//!
//! Protocol: one call at a time. `submit` waits until the previous call finished and its
//! output was claimed (by `sync`, or by dropping its handle), loads the inputs into the
//! scratch and wakes the driver; the driver runs the call on the pool (as the pool's
//! thread 0) and marks it finished; `sync` copies the output out. The scratch sits behind
//! a mutex that the driver holds only while it runs a call, so no state is ever shared
//! unsynchronised. A thread that calls `submit` or `forward` while a handle it submitted
//! is still unsynced gets an error instead of waiting for itself; a handle leaked with
//! `mem::forget` (or sent to a thread that never syncs it) leaves its output unclaimed,
//! and other threads' later calls then wait forever (a deadlock, never unsoundness).

use std::any::Any;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::{JoinHandle, ThreadId};

use super::context::PoolRef;
use crate::cpu::{Isa, ThreadPool};
use crate::error::{KtError, Result};

/// An operator's scratch: the loaded call's inputs, its buffers and its output.
pub(crate) trait Job: Send + 'static {
    /// Runs the loaded call on `pool` (the calling thread is the pool's thread 0).
    fn run(&mut self, pool: &ThreadPool, isa: Isa) -> Result<()>;
    /// The output buffer; a finished call's result is its first `tokens * hidden` floats.
    fn output(&self) -> &[f32];
}

/// The driver thread and the scratch it runs calls in.
pub(crate) struct Driver<S: Job> {
    shared: Arc<Shared<S>>,
    thread: Option<JoinHandle<()>>,
}

struct Shared<S> {
    /// The operator's name, for errors.
    op: &'static str,
    pool: PoolRef,
    isa: Isa,
    state: Mutex<State>,
    changed: Condvar,
    scratch: Mutex<S>,
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

impl<S: Job> Driver<S> {
    /// Starts the driver thread of operator `op` over `scratch`.
    pub fn new(op: &'static str, pool: PoolRef, isa: Isa, scratch: S) -> Result<Driver<S>> {
        let pin = core_affinity::get_core_ids().unwrap_or_default();
        // With the pool on every core, workers sit on cores 1.. and the driver (the
        // pool's thread 0) takes core 0, as a pinned caller would.
        let pin = if pin.len() == pool.threads() {
            pin.first().copied()
        } else {
            None
        };
        let shared = Arc::new(Shared {
            op,
            pool,
            isa,
            state: Mutex::new(State {
                submitted: 0,
                finished: 0,
                claimed: true,
                owner: None,
                stop: false,
                result: Ok(()),
                panic: None,
            }),
            changed: Condvar::new(),
            scratch: Mutex::new(scratch),
        });
        let for_thread = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("kt-moe-driver".into())
            .spawn(move || {
                if let Some(core) = pin {
                    core_affinity::set_for_current(core);
                }
                driver_loop(&for_thread)
            })
            .map_err(|e| KtError::Shape {
                op,
                detail: format!("cannot spawn the driver thread: {e}"),
            })?;
        Ok(Driver {
            shared,
            thread: Some(thread),
        })
    }

    pub fn pool(&self) -> &ThreadPool {
        &self.shared.pool
    }
    pub fn isa(&self) -> Isa {
        self.shared.isa
    }

    fn error(&self, detail: &str) -> KtError {
        KtError::Shape {
            op: self.shared.op,
            detail: detail.into(),
        }
    }

    /// Waits until no call is in flight or unclaimed; returns the state lock. An error
    /// when the unclaimed call is this thread's own (waiting would never end).
    fn wait_idle(&self) -> Result<MutexGuard<'_, State>> {
        let s = &*self.shared;
        let mut st = lock(&s.state);
        while st.finished != st.submitted || !st.claimed {
            if st.owner == Some(std::thread::current().id()) {
                return Err(self.error(
                    "this thread holds the handle of an unsynced call: sync or drop it first",
                ));
            }
            st = s.changed.wait(st).unwrap_or_else(|p| p.into_inner());
        }
        Ok(st)
    }

    /// The scratch, once no call is in flight or unclaimed: for sizing it, and for the
    /// synchronous call, which runs on the calling thread instead of the driver's.
    /// Submitters wait on the returned lock until it is dropped.
    pub fn idle_scratch(&self) -> Result<MutexGuard<'_, S>> {
        let idle = self.wait_idle()?;
        let sc = lock(&self.shared.scratch);
        drop(idle);
        Ok(sc)
    }

    /// Loads a call with `load` (which may refuse it) and hands it to the driver; the
    /// handle's output is `len` floats.
    pub fn submit(
        &self,
        len: usize,
        load: impl FnOnce(&mut S) -> Result<()>,
    ) -> Result<MoeHandle<'_>> {
        let s = &*self.shared;
        let mut st = self.wait_idle()?;
        load(&mut lock(&s.scratch))?;
        st.submitted += 1;
        st.claimed = false;
        st.owner = Some(std::thread::current().id());
        let seq = st.submitted;
        drop(st);
        s.changed.notify_all();
        Ok(MoeHandle {
            shared: s,
            seq,
            len,
            synced: false,
        })
    }
}

impl<S: Job> Drop for Driver<S> {
    fn drop(&mut self) {
        lock(&self.shared.state).stop = true;
        self.shared.changed.notify_all();
        if let Some(d) = self.thread.take() {
            let _ = d.join();
        }
    }
}

fn driver_loop<S: Job>(s: &Shared<S>) {
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
            catch_unwind(AssertUnwindSafe(|| sc.run(&s.pool, s.isa)))
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

/// What a handle needs from its driver, whatever the scratch type.
trait Finish: Sync {
    fn state(&self) -> &Mutex<State>;
    fn changed(&self) -> &Condvar;
    fn op(&self) -> &'static str;
    /// Copies the first `out.len()` floats of the finished call's output.
    fn copy_output(&self, out: &mut [f32]);
}

impl<S: Job> Finish for Shared<S> {
    fn state(&self) -> &Mutex<State> {
        &self.state
    }
    fn changed(&self) -> &Condvar {
        &self.changed
    }
    fn op(&self) -> &'static str {
        self.op
    }
    fn copy_output(&self, out: &mut [f32]) {
        out.copy_from_slice(&lock(&self.scratch).output()[..out.len()]);
    }
}

/// A submitted call (of either MoE operator). [`MoeHandle::sync`] waits for it and copies
/// its output; dropping the handle waits for it and discards the output.
#[must_use = "a submitted MoE call must be synced to get its output"]
pub struct MoeHandle<'a> {
    shared: &'a dyn Finish,
    seq: u64,
    len: usize,
    synced: bool,
}

impl MoeHandle<'_> {
    /// Waits for the call, then copies its `[T, H]` output to `out`. A kernel panic on
    /// the pool is resumed here.
    pub fn sync(mut self, out: &mut [f32]) -> Result<()> {
        let s = self.shared;
        if out.len() != self.len {
            return Err(KtError::Shape {
                op: s.op(),
                detail: format!(
                    "sync: output has {} elements, the call produces {}",
                    out.len(),
                    self.len
                ),
            });
        }
        let mut st = wait_finished(s, self.seq);
        let result = std::mem::replace(&mut st.result, Ok(()));
        let panic = st.panic.take();
        if result.is_ok() && panic.is_none() {
            s.copy_output(out);
        }
        st.claimed = true;
        st.owner = None;
        self.synced = true;
        drop(st);
        s.changed().notify_all();
        if let Some(p) = panic {
            resume_unwind(p);
        }
        result
    }

    /// True once the call has finished (sync will not block).
    pub fn is_done(&self) -> bool {
        lock(self.shared.state()).finished >= self.seq
    }
}

/// Waits until call `seq` has finished; returns the state lock.
fn wait_finished(s: &dyn Finish, seq: u64) -> MutexGuard<'_, State> {
    let mut st = lock(s.state());
    while st.finished < seq {
        st = s.changed().wait(st).unwrap_or_else(|p| p.into_inner());
    }
    st
}

impl Drop for MoeHandle<'_> {
    fn drop(&mut self) {
        if !self.synced {
            let s = self.shared;
            let mut st = wait_finished(s, self.seq);
            st.claimed = true;
            st.owner = None;
            st.result = Ok(());
            st.panic = None;
            drop(st);
            s.changed().notify_all();
        }
    }
}
