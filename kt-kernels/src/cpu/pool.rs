//! A small thread pool for the kernels: workers pinned to cores, one job broadcast to all
//! of them, work handed out by an atomic counter.
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

struct Shared {
    /// Bumped once per posted job; workers run the job when they see a new value.
    epoch: AtomicU64,
    /// The posted job. Written by the caller before `epoch` is bumped (Release) and read
    /// by workers after they observe the bump (Acquire).
    job: UnsafeCell<Option<Job>>,
    /// Workers that have not finished the current job.
    pending: AtomicUsize,
    panicked: AtomicBool,
    stop: AtomicBool,
    sleepers: AtomicUsize,
    sleep_lock: Mutex<()>,
    wake: Condvar,
}

// SAFETY: `job` is only written by the thread holding `ThreadPool::submit` while no
// worker reads it (all workers finished the previous job: pending == 0), and only read by
// workers between observing a new epoch and decrementing `pending`.
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
            epoch: AtomicU64::new(0),
            job: UnsafeCell::new(None),
            pending: AtomicUsize::new(0),
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

    /// Runs `f(thread)` once on every thread of the pool (thread 0 is the caller) and
    /// returns when all have finished. Jobs share work through their own atomic counters
    /// (see [`ThreadPool::for_each`]). Called from inside a job, runs `f(0)` inline.
    pub fn broadcast(&self, f: &(dyn Fn(usize) + Sync)) {
        if self.threads == 1 || IN_POOL.with(|c| c.get()) {
            f(0);
            return;
        }
        let _guard = self.submit.lock().unwrap_or_else(|p| p.into_inner());
        let s = &*self.shared;
        // SAFETY: lifetime erasure. The pointer is only used by workers until they
        // decrement `pending`, and we do not return (nor unwind) before pending == 0.
        let job: Job = unsafe { std::mem::transmute::<&(dyn Fn(usize) + Sync), Job>(f) };
        // SAFETY: we hold `submit` and pending == 0 (the previous broadcast waited for
        // it), so no worker is reading `job`.
        unsafe { *s.job.get() = Some(job) };
        s.pending.store(self.threads - 1, Ordering::Relaxed);
        s.panicked.store(false, Ordering::Relaxed);
        s.epoch.fetch_add(1, Ordering::Release);
        if s.sleepers.load(Ordering::SeqCst) > 0 {
            let _l = s.sleep_lock.lock().unwrap_or_else(|p| p.into_inner());
            s.wake.notify_all();
        }

        IN_POOL.with(|c| c.set(true));
        let mine = catch_unwind(AssertUnwindSafe(|| f(0)));
        IN_POOL.with(|c| c.set(false));

        let mut spins = 0u32;
        while s.pending.load(Ordering::Acquire) != 0 {
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
            self.broadcast(&body);
        }
    }
}

fn worker_loop(s: &Shared, id: usize) {
    IN_POOL.with(|c| c.set(true));
    let mut seen = 0u64;
    loop {
        // Wait for a new epoch: spin first, then sleep.
        let start = Instant::now();
        let mut epoch = s.epoch.load(Ordering::Acquire);
        while epoch == seen && !s.stop.load(Ordering::Relaxed) {
            if start.elapsed() < SPIN {
                std::hint::spin_loop();
            } else {
                s.sleepers.fetch_add(1, Ordering::SeqCst);
                let mut g = s.sleep_lock.lock().unwrap_or_else(|p| p.into_inner());
                while s.epoch.load(Ordering::Acquire) == seen && !s.stop.load(Ordering::Relaxed) {
                    g = s.wake.wait(g).unwrap_or_else(|p| p.into_inner());
                }
                drop(g);
                s.sleepers.fetch_sub(1, Ordering::SeqCst);
            }
            epoch = s.epoch.load(Ordering::Acquire);
        }
        if s.stop.load(Ordering::Relaxed) {
            return;
        }
        seen = epoch;
        // SAFETY: the epoch bump (Acquire above) happened after the caller stored the
        // job, and the caller keeps the closure alive until we decrement `pending`.
        let job = unsafe { (*s.job.get()).expect("job posted with the epoch") };
        // SAFETY: see above: the pointee outlives this call.
        let r = catch_unwind(AssertUnwindSafe(|| unsafe { (*job)(id) }));
        if r.is_err() {
            s.panicked.store(true, Ordering::Relaxed);
        }
        s.pending.fetch_sub(1, Ordering::Release);
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
