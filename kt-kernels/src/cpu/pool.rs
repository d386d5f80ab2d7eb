//! A small thread pool for the kernels: workers pinned to cores, one job posted to all of
//! them, work handed out by an atomic counter.
//!
//! Job protocol: the caller posts a job (a new epoch), works on it itself, then closes it
//! and waits only for the workers that *joined* it. A worker that wakes after the job was
//! closed skips it. So one descheduled or slow-to-wake worker never stalls a call: with
//! atomic hand-out, the threads that are awake simply take its share (measured on the
//! device's 16-vCPU VM, where waiting for every worker cost ~230 us per call).
//!
//! Why not rayon: a decode-step GEMV is a few to a few tens of microseconds of work per
//! thread, and the cost that matters is the latency from "job posted" to "every core
//! busy" and back. Here workers spin briefly on an epoch counter before sleeping, so
//! back-to-back kernel calls find them awake; the caller takes part in the work; and the
//! hand-out is one `fetch_add` per work item. BENCHMARKS.md has the measurement.
//!
//! Pinning: worker `i` (1-based) is pinned to core `i`; the calling thread is left where
//! the OS puts it (pinning a caller such as a test harness thread would serialise tests).

use std::cell::{Cell, UnsafeCell};
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::error::{KtError, Result};

/// How long an idle worker spins before it sleeps: long enough to cover the gap between
/// two kernels of a decode step, short enough not to burn a core between steps.
const SPIN: Duration = Duration::from_micros(200);

type Job = *const (dyn Fn(usize) + Sync);

/// `state` packs the job's epoch (high 32 bits), a closed flag and the number of workers
/// running the job (low 31 bits), so joining and closing are one atomic step each.
const CLOSED: u64 = 1 << 31;
const ACTIVE: u64 = CLOSED - 1;

struct Shared {
    state: AtomicU64,
    /// The posted job. Written by the caller before the new epoch is stored (Release) and
    /// read by workers after they joined (an Acquire CAS on `state`).
    job: UnsafeCell<Option<Job>>,
    panicked: AtomicBool,
    stop: AtomicBool,
    sleepers: AtomicUsize,
    sleep_lock: Mutex<()>,
    wake: Condvar,
}

// SAFETY: `job` is only written by the thread holding `ThreadPool::submit` while no
// worker reads it (the previous job was closed with no worker left in it), and only read
// by workers that joined the open job, before they leave it.
unsafe impl Sync for Shared {}
// SAFETY: see Sync; the raw job pointer is only dereferenced under that protocol.
unsafe impl Send for Shared {}

/// A pool of `threads - 1` pinned workers plus the calling thread.
pub struct ThreadPool {
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
    submit: Mutex<()>,
    threads: usize,
}

thread_local! {
    /// Set inside pool workers and inside a running job, so a nested call runs inline
    /// instead of deadlocking on the pool.
    static IN_POOL: Cell<bool> = const { Cell::new(false) };
}

impl ThreadPool {
    /// A pool using `threads` threads in all (the caller counts as one).
    pub fn new(threads: usize) -> Result<ThreadPool> {
        if threads == 0 {
            return Err(KtError::Shape { op: "ThreadPool::new", detail: "0 threads".into() });
        }
        let shared = Arc::new(Shared {
            state: AtomicU64::new(CLOSED),
            job: UnsafeCell::new(None),
            panicked: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            sleepers: AtomicUsize::new(0),
            sleep_lock: Mutex::new(()),
            wake: Condvar::new(),
        });
        let cores = core_affinity::get_core_ids().unwrap_or_default();
        let workers = (1..threads)
            .map(|id| {
                let shared = Arc::clone(&shared);
                let core = if cores.len() >= threads { cores.get(id).copied() } else { None };
                std::thread::Builder::new()
                    .name(format!("kt-worker-{id}"))
                    .spawn(move || {
                        if let Some(core) = core {
                            core_affinity::set_for_current(core);
                        }
                        worker_loop(&shared, id)
                    })
                    .map_err(|e| KtError::Shape { op: "ThreadPool::new", detail: format!("spawn failed: {e}") })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(ThreadPool { shared, workers, submit: Mutex::new(()), threads })
    }

    /// Threads taking part in a job, the caller included.
    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Runs `f(thread)` on the caller (thread 0) and on every worker that joins before the
    /// caller's own `f(0)` returns, then waits for those workers. Workers that come later
    /// do not run `f`: callers share work through an atomic counter that `f` drains
    /// ([`ThreadPool::for_each`]), so by then nothing is left. Nested calls run inline.
    fn run(&self, f: &(dyn Fn(usize) + Sync)) {
        if self.threads == 1 || IN_POOL.with(|c| c.get()) {
            f(0);
            return;
        }
        let _guard = self.submit.lock().unwrap_or_else(|p| p.into_inner());
        let s = &*self.shared;
        // SAFETY: lifetime erasure. Workers only use the pointer between joining and
        // leaving the job, and we neither return nor unwind before every joined worker
        // has left (active == 0 after the job is closed).
        let job: Job = unsafe { std::mem::transmute::<&(dyn Fn(usize) + Sync), Job>(f) };
        // SAFETY: we hold `submit` and the previous job is closed with no worker in it,
        // so no worker reads `job` now.
        unsafe { *s.job.get() = Some(job) };
        s.panicked.store(false, Ordering::Relaxed);
        let epoch = (s.state.load(Ordering::Relaxed) >> 32).wrapping_add(1) & 0xFFFF_FFFF;
        s.state.store(epoch << 32, Ordering::Release);
        if s.sleepers.load(Ordering::SeqCst) > 0 {
            let _l = s.sleep_lock.lock().unwrap_or_else(|p| p.into_inner());
            s.wake.notify_all();
        }

        IN_POOL.with(|c| c.set(true));
        let mine = catch_unwind(AssertUnwindSafe(|| f(0)));
        IN_POOL.with(|c| c.set(false));

        s.state.fetch_or(CLOSED, Ordering::AcqRel);
        let mut spins = 0u32;
        while s.state.load(Ordering::Acquire) & ACTIVE != 0 {
            spins += 1;
            if spins < 1 << 16 {
                std::hint::spin_loop();
            } else {
                std::thread::yield_now();
            }
        }
        if let Err(p) = mine {
            resume_unwind(p);
        }
        if s.panicked.load(Ordering::Relaxed) {
            panic!("a kt kernel panicked on a pool worker thread");
        }
    }

    /// Calls `f(i, thread)` for every `i` in `0..n`, items handed out one at a time by
    /// an atomic counter, so no thread idles while items remain.
    pub fn for_each(&self, n: usize, f: &(dyn Fn(usize, usize) + Sync)) {
        if n == 0 {
            return;
        }
        let next = AtomicUsize::new(0);
        let body = |thread: usize| loop {
            let i = next.fetch_add(1, Ordering::Relaxed);
            if i >= n {
                break;
            }
            f(i, thread);
        };
        if n == 1 {
            body(0);
        } else {
            self.run(&body);
        }
    }
}

fn worker_loop(s: &Shared, id: usize) {
    IN_POOL.with(|c| c.set(true));
    let mut seen = s.state.load(Ordering::Acquire) >> 32;
    loop {
        // Wait for a new epoch: spin first, then sleep.
        let start = Instant::now();
        let mut state = s.state.load(Ordering::Acquire);
        while state >> 32 == seen && !s.stop.load(Ordering::Relaxed) {
            if start.elapsed() < SPIN {
                std::hint::spin_loop();
            } else {
                s.sleepers.fetch_add(1, Ordering::SeqCst);
                let mut g = s.sleep_lock.lock().unwrap_or_else(|p| p.into_inner());
                while s.state.load(Ordering::Acquire) >> 32 == seen && !s.stop.load(Ordering::Relaxed) {
                    g = s.wake.wait(g).unwrap_or_else(|p| p.into_inner());
                }
                drop(g);
                s.sleepers.fetch_sub(1, Ordering::SeqCst);
            }
            state = s.state.load(Ordering::Acquire);
        }
        if s.stop.load(Ordering::Relaxed) {
            return;
        }
        seen = state >> 32;
        // Join the job unless it was closed (or replaced) meanwhile.
        let joined = loop {
            if state >> 32 != seen || state & CLOSED != 0 {
                break false;
            }
            match s.state.compare_exchange_weak(state, state + 1, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => break true,
                Err(now) => state = now,
            }
        };
        if !joined {
            continue;
        }
        // SAFETY: we joined the open job (Acquire CAS after the caller's Release store of
        // the epoch, which follows its write of `job`), and the caller keeps the closure
        // alive until we leave.
        let job = unsafe { (*s.job.get()).expect("job posted with the epoch") };
        // SAFETY: see above: the pointee outlives this call.
        let r = catch_unwind(AssertUnwindSafe(|| unsafe { (*job)(id) }));
        if r.is_err() {
            s.panicked.store(true, Ordering::Relaxed);
        }
        s.state.fetch_sub(1, Ordering::Release);
    }
}

impl Drop for ThreadPool {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        {
            let _l = self.shared.sleep_lock.lock().unwrap_or_else(|p| p.into_inner());
            self.shared.wake.notify_all();
        }
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

static GLOBAL: OnceLock<ThreadPool> = OnceLock::new();

/// Threads of the global pool: `KT_THREADS` if set, else every core.
fn default_threads() -> usize {
    std::env::var("KT_THREADS")
        .ok()
        .and_then(|v| v.trim().parse::<usize>().ok())
        .filter(|&n| n > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1))
}

/// The process-wide pool the kernels use, created on first use.
pub fn global() -> &'static ThreadPool {
    GLOBAL.get_or_init(|| ThreadPool::new(default_threads()).expect("cannot start the kt thread pool"))
}

/// Sizes the global pool before its first use (e.g. from `--threads`). An error if it
/// already exists with another size.
pub fn init_global(threads: usize) -> Result<&'static ThreadPool> {
    let mut err = None;
    let pool = GLOBAL.get_or_init(|| match ThreadPool::new(threads) {
        Ok(p) => p,
        Err(e) => {
            err = Some(e);
            ThreadPool::new(1).expect("a 1-thread pool spawns nothing")
        }
    });
    if let Some(e) = err {
        return Err(e);
    }
    if pool.threads() != threads {
        return Err(KtError::Shape {
            op: "pool::init_global",
            detail: format!("the global pool already runs {} threads, asked for {threads}", pool.threads()),
        });
    }
    Ok(pool)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_item_runs_exactly_once() {
        for threads in [1, 2, 3, 5] {
            let pool = ThreadPool::new(threads).unwrap();
            for n in [0, 1, 2, 7, 100, 1000] {
                let hits: Vec<AtomicUsize> = (0..n).map(|_| AtomicUsize::new(0)).collect();
                pool.for_each(n, &|i, t| {
                    assert!(t < threads);
                    hits[i].fetch_add(1, Ordering::Relaxed);
                });
                assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 1), "threads {threads} n {n}");
            }
        }
    }

    #[test]
    fn nested_calls_run_inline() {
        let pool = ThreadPool::new(3).unwrap();
        let total = AtomicUsize::new(0);
        pool.for_each(4, &|_, _| {
            pool.for_each(5, &|_, _| {
                total.fetch_add(1, Ordering::Relaxed);
            });
        });
        assert_eq!(total.load(Ordering::Relaxed), 20);
    }

    #[test]
    fn wakes_after_workers_sleep() {
        let pool = ThreadPool::new(3).unwrap();
        std::thread::sleep(SPIN * 20);
        let total = AtomicUsize::new(0);
        pool.for_each(64, &|i, _| {
            total.fetch_add(i, Ordering::Relaxed);
        });
        assert_eq!(total.load(Ordering::Relaxed), 64 * 63 / 2);
    }

    #[test]
    fn a_panicking_job_propagates_and_the_pool_survives() {
        let pool = ThreadPool::new(2).unwrap();
        let r = catch_unwind(AssertUnwindSafe(|| {
            pool.for_each(8, &|i, _| {
                if i == 5 {
                    panic!("boom");
                }
            })
        }));
        assert!(r.is_err());
        let total = AtomicUsize::new(0);
        pool.for_each(10, &|_, _| {
            total.fetch_add(1, Ordering::Relaxed);
        });
        assert_eq!(total.load(Ordering::Relaxed), 10);
    }

    #[test]
    fn zero_threads_is_an_error() {
        assert!(ThreadPool::new(0).is_err());
    }
}
