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
//!
//! Round-trip cost: every step of a job touches as few shared cache lines as it can, and
//! no step can fail and retry. Joining and leaving are one `fetch_add`/`fetch_sub` each on
//! the job word (a compare-and-swap join made 16 workers that wake together retry ~120
//! times, each retry a cache-line transfer: most of the ~13 us an empty job cost on the
//! device); the job word, the job pointer and the item counter sit on lines of their own,
//! away from anything written per job; a spinning worker reads the clock only every
//! [`SPIN_CHECK`] polls (a clock read per poll delays its reaction to a new job).

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
/// How long workers spin after [`ThreadPool::wake`]: a caller that knows a job is coming
/// after a wait of its own (the hybrid executor's routed experts, posted once the GPU has
/// finished a layer: 0.1-1 ms later) keeps the workers off the sleep path, whose wake-up
/// costs far more than the spin on a VM whose idle vCPUs halt.
const WOKEN_SPIN: Duration = Duration::from_millis(2);
/// Polls of the job word between two clock reads while spinning (a `pause` is ~40 ns on
/// the Xeons measured, so the clock is read every few microseconds).
const SPIN_CHECK: u32 = 64;

type Job = *const (dyn Fn(usize) + Sync);

/// `state` packs the job's epoch (high 32 bits), a closed flag and the number of workers
/// counted in the job (low 31 bits), so posting, joining, leaving and closing are one
/// atomic step each.
///
/// A worker joins with `fetch_add(1)` whatever the state; if the job turns out closed, it
/// did not join: it takes its 1 back with `fetch_sub` and never reads the job. Posting
/// therefore keeps the count (such a worker may still be on its way out) and only bumps
/// the epoch and clears the flag, so every increment is matched by its own decrement.
const CLOSED: u64 = 1 << 31;
const ACTIVE: u64 = CLOSED - 1;
/// Added to a closed `state` to post the next job: epoch + 1 (wrapping), flag cleared.
const POST: u64 = (1u64 << 32).wrapping_sub(CLOSED);

/// A value on a cache-line pair of its own (the adjacent-line prefetcher fetches lines
/// in pairs), so that writes to its neighbours do not steal it from readers.
#[repr(align(128))]
struct Padded<T>(T);

impl<T> std::ops::Deref for Padded<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

struct Shared {
    /// Written per job by the caller (post, close) and by each worker (join, leave); read
    /// by spinning workers.
    state: Padded<AtomicU64>,
    /// The posted job. Written by the caller before it posts the epoch (SeqCst RMW) and
    /// read by workers after they joined (an AcqRel RMW later in `state`'s order).
    job: Padded<UnsafeCell<Option<Job>>>,
    /// Written only when a job panicked (and when the next job clears that).
    panicked: AtomicBool,
    stop: AtomicBool,
    /// Bumped by [`ThreadPool::wake`]: sleeping workers go back to spinning.
    nudge: AtomicU64,
    sleepers: AtomicUsize,
    sleep_lock: Mutex<()>,
    wake: Condvar,
}

// SAFETY: `job` is only written by the thread holding `ThreadPool::submit` while no
// worker reads it (the previous job was closed and every worker that joined it has left;
// a worker arriving at a closed job leaves without reading it), and only read by workers
// that joined the open job, before they leave it.
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
            return Err(KtError::Shape {
                op: "ThreadPool::new",
                detail: "0 threads".into(),
            });
        }
        let shared = Arc::new(Shared {
            state: Padded(AtomicU64::new(CLOSED)),
            job: Padded(UnsafeCell::new(None)),
            panicked: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            nudge: AtomicU64::new(0),
            sleepers: AtomicUsize::new(0),
            sleep_lock: Mutex::new(()),
            wake: Condvar::new(),
        });
        let cores = core_affinity::get_core_ids().unwrap_or_default();
        let workers = (1..threads)
            .map(|id| {
                let shared = Arc::clone(&shared);
                let core = if cores.len() >= threads {
                    cores.get(id).copied()
                } else {
                    None
                };
                std::thread::Builder::new()
                    .name(format!("kt-worker-{id}"))
                    .spawn(move || {
                        if let Some(core) = core {
                            core_affinity::set_for_current(core);
                        }
                        worker_loop(&shared, id)
                    })
                    .map_err(|e| KtError::Shape {
                        op: "ThreadPool::new",
                        detail: format!("spawn failed: {e}"),
                    })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(ThreadPool {
            shared,
            workers,
            submit: Mutex::new(()),
            threads,
        })
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
        // SAFETY: we hold `submit` and the previous job is closed with every worker that
        // joined it gone (a late one leaves without reading `job`), so no worker reads
        // `job` now.
        unsafe { *s.job.0.get() = Some(job) };
        if s.panicked.load(Ordering::Relaxed) {
            s.panicked.store(false, Ordering::Relaxed);
        }
        // SeqCst: ordered before the `sleepers` load below, against a worker that counts
        // itself a sleeper and then re-reads `state` (neither may miss the other).
        s.state.fetch_add(POST, Ordering::SeqCst);
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

    /// Gets the workers spinning for the next [`WOKEN_SPIN`] without posting a job, so that
    /// a job posted within that window finds them awake. For a caller about to wait for
    /// something else (a GPU stream) before its next job; cheap when nobody sleeps.
    pub fn wake(&self) {
        let s = &*self.shared;
        // SeqCst: against a worker that counts itself a sleeper, then reads `nudge`.
        s.nudge.fetch_add(1, Ordering::SeqCst);
        if s.sleepers.load(Ordering::SeqCst) > 0 {
            let _l = s.sleep_lock.lock().unwrap_or_else(|p| p.into_inner());
            s.wake.notify_all();
        }
    }

    /// Calls `f(i, thread)` for every `i` in `0..n`, items handed out one at a time by
    /// an atomic counter, so no thread idles while items remain.
    pub fn for_each(&self, n: usize, f: &(dyn Fn(usize, usize) + Sync)) {
        if n == 0 {
            return;
        }
        // Padded: every thread hammers this counter, and the caller's other locals
        // (written while it works on items) must not share its line.
        let next = Padded(AtomicUsize::new(0));
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
        if !wait_for_epoch(s, seen) {
            return;
        }
        // Join whatever job is posted now (one RMW that cannot fail, see `CLOSED`).
        let prev = s.state.fetch_add(1, Ordering::AcqRel);
        seen = prev >> 32;
        if prev & CLOSED != 0 {
            // Closed before we came: we are not part of it.
            s.state.fetch_sub(1, Ordering::Release);
            continue;
        }
        // SAFETY: we joined the open job of epoch `seen` (our AcqRel RMW follows its
        // SeqCst post in `state`'s modification order, and the post follows the write of
        // `job`), and the caller keeps the closure alive until we leave.
        let job = unsafe { (*s.job.0.get()).expect("job posted with the epoch") };
        // SAFETY: see above: the pointee outlives this call.
        let r = catch_unwind(AssertUnwindSafe(|| unsafe { (*job)(id) }));
        if r.is_err() {
            s.panicked.store(true, Ordering::Relaxed);
        }
        s.state.fetch_sub(1, Ordering::Release);
    }
}

/// Waits until `state` carries an epoch other than `seen`: spins for [`SPIN`] (for
/// [`WOKEN_SPIN`] after a [`ThreadPool::wake`]), then sleeps on the condition variable.
/// False when the pool is stopping.
fn wait_for_epoch(s: &Shared, seen: u64) -> bool {
    let fresh = || s.state.load(Ordering::Acquire) >> 32 != seen;
    let mut start = Instant::now();
    let mut spin = SPIN;
    let mut nudge = s.nudge.load(Ordering::Relaxed);
    let mut polls = 0u32;
    while !fresh() {
        if s.stop.load(Ordering::Relaxed) {
            return false;
        }
        polls += 1;
        if !polls.is_multiple_of(SPIN_CHECK) {
            std::hint::spin_loop();
            continue;
        }
        let n = s.nudge.load(Ordering::Relaxed);
        if n != nudge {
            (nudge, start, spin) = (n, Instant::now(), WOKEN_SPIN);
        }
        if start.elapsed() < spin {
            std::hint::spin_loop();
            continue;
        }
        s.sleepers.fetch_add(1, Ordering::SeqCst);
        // A nudge since the one this spin began with means: spin again, do not sleep.
        // (SeqCst: the loads below and `ThreadPool::wake` cannot both miss each other.)
        let slept_at = nudge;
        let mut g = s.sleep_lock.lock().unwrap_or_else(|p| p.into_inner());
        // SeqCst: see the post in `ThreadPool::run`.
        while s.state.load(Ordering::SeqCst) >> 32 == seen
            && s.nudge.load(Ordering::SeqCst) == slept_at
            && !s.stop.load(Ordering::Relaxed)
        {
            g = s.wake.wait(g).unwrap_or_else(|p| p.into_inner());
        }
        drop(g);
        s.sleepers.fetch_sub(1, Ordering::SeqCst);
        // woken by a job, a nudge or the stop: the loop's checks tell which
    }
    !s.stop.load(Ordering::Relaxed)
}

impl Drop for ThreadPool {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        {
            let _l = self
                .shared
                .sleep_lock
                .lock()
                .unwrap_or_else(|p| p.into_inner());
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
        .unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        })
}

/// The process-wide pool the kernels use, created on first use.
pub fn global() -> &'static ThreadPool {
    GLOBAL.get_or_init(|| {
        ThreadPool::new(default_threads()).expect("cannot start the kt thread pool")
    })
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
            detail: format!(
                "the global pool already runs {} threads, asked for {threads}",
                pool.threads()
            ),
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
                assert!(
                    hits.iter().all(|h| h.load(Ordering::Relaxed) == 1),
                    "threads {threads} n {n}"
                );
            }
        }
    }

    #[test]
    fn back_to_back_small_jobs_with_late_workers() {
        // More threads than this machine's cores and jobs of a few items: workers often
        // arrive at a job the caller already closed, and must leave it without running it
        // or upsetting the count of the next one.
        let pool = ThreadPool::new(5).unwrap();
        let hits: Vec<AtomicUsize> = (0..9).map(|_| AtomicUsize::new(0)).collect();
        let jobs = 3000;
        for j in 0..jobs {
            let n = 2 + j % 8;
            pool.for_each(n, &|i, _| {
                hits[i].fetch_add(1, Ordering::Relaxed);
            });
        }
        for (i, h) in hits.iter().enumerate() {
            let want = (0..jobs).filter(|j| i < 2 + j % 8).count();
            assert_eq!(h.load(Ordering::Relaxed), want, "item {i}");
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
    fn wake_gets_sleeping_workers_spinning_and_jobs_still_run() {
        let pool = ThreadPool::new(3).unwrap();
        let sleepers = || pool.shared.sleepers.load(Ordering::SeqCst);
        let deadline = Instant::now() + Duration::from_secs(10);
        // the two workers fall asleep once their spin is over
        while sleepers() < 2 {
            assert!(Instant::now() < deadline, "workers never slept");
            std::thread::sleep(SPIN);
        }
        // A nudge (no job) takes them off the condition variable; each then spins for
        // WOKEN_SPIN and sleeps again. On 2 cores this thread may not run during that window,
        // so it nudges again until it sees a worker awake (without nudges they never wake).
        while sleepers() == 2 {
            assert!(Instant::now() < deadline, "wake left the workers asleep");
            pool.wake();
            std::thread::sleep(Duration::from_micros(100));
        }
        for round in 0..50 {
            if round % 10 == 0 {
                pool.wake();
            }
            let total = AtomicUsize::new(0);
            pool.for_each(33, &|i, _| {
                total.fetch_add(i, Ordering::Relaxed);
            });
            assert_eq!(total.load(Ordering::Relaxed), 33 * 32 / 2, "round {round}");
        }
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
