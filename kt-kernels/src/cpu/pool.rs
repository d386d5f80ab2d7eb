//! A small thread pool for the kernels: workers pinned to cores, one job posted to all of
//! them; each thread works through a contiguous share of the items and then steals what
//! is left of the others' shares.
//!
//! Job protocol: the caller posts a job (a new epoch), works on it itself, then closes it
//! and waits only for the workers that *joined* it. A worker that wakes after the job was
//! closed skips it. So one descheduled or slow-to-wake worker never stalls a call: the
//! threads that are awake steal its share (measured on the device's 16-vCPU VM, where
//! waiting for every worker cost ~230 us per call).
//!
//! Why not rayon: a decode-step GEMV is a few to a few tens of microseconds of work per
//! thread, and the cost that matters is the latency from "job posted" to "every core
//! busy" and back. Here workers spin briefly on an epoch counter before sleeping, so
//! back-to-back kernel calls find them awake, and the caller takes part in the work.
//! BENCHMARKS.md has the measurement.
//!
//! Pinning: worker `i` (1-based) is pinned to core `i`; the calling thread is left where
//! the OS puts it (pinning a caller such as a test harness thread would serialise tests).
//!
//! Round-trip cost: at 16 threads a cache line that every thread writes costs a transfer
//! per write, one after the other (~50-100 ns each on the device's VM). So joining and
//! leaving a job write only the worker's own line (a busy flag the caller polls) and the
//! caller writes the job word twice (post, close): that took 1.7-2.3 us off every job on
//! the device against a `fetch_add`/`fetch_sub` per worker on the job word (bare round
//! trip 4.0-4.2 -> 1.6-1.9 us with one counter; BENCHMARKS.md, session 5). In
//! [`ThreadPool::for_each`] thread `t` takes items from a share of its own (a counter on
//! its own cache line, which stays in its core while nobody steals) and only then steals
//! from the others': no contended line while shares last, and a late worker's share is
//! taken by the threads that are there. Measured on empty items it did not beat one
//! counter (the caller steals the late joiners' shares one remote `fetch_add` at a time)
//! and its end-of-job scan of the other counters costs ~1.5 us at 16 threads;
//! [`ThreadPool::for_each_in_order`] keeps the one shared counter (and is required for
//! jobs whose items wait on earlier items). [`ThreadPool::for_each_static`] (one item a
//! thread, item `i` on thread `i`) has no counter at all: a worker writes only its own
//! busy flag, which says whether it ran its item, and the caller runs the items of the
//! workers that had not joined when it closed the job; device, 16 threads, one GEMV item
//! a thread: the last thread starts 0.8 us after the post instead of 1.5 with the counter
//! (BENCHMARKS.md, session 11). A spinning worker reads the clock only every
//! [`SPIN_CHECK`] polls (a clock read per poll delays its reaction to a new job).

use std::cell::{Cell, UnsafeCell};
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::error::{KtError, Result};

/// The most rounds of own items [`ThreadPool::for_each_in_order_first_own`] keeps (one
/// bit per round in a slot's `taken`).
const OWN_ROUNDS_MAX: usize = 64;

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

/// `state` is the job's epoch (high 32 bits) and a closed flag; only the caller writes it
/// (post: epoch + 1 and the flag cleared; close: the flag set).
const CLOSED: u64 = 1 << 31;
/// Added to a closed `state` to post the next job: epoch + 1 (wrapping), flag cleared.
const POST: u64 = (1u64 << 32).wrapping_sub(CLOSED);
/// A worker's `busy` value while it is in no job (epochs fit in 32 bits).
const IDLE: u64 = u64::MAX;
/// Or'ed into the epoch in a worker's `busy` once it has run its part of that job (kept
/// until it joins another), so the caller can tell "ran and left" from "saw the job
/// closed and left".
const RAN: u64 = 1 << 32;

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

/// What one thread writes during a job, on a line of its own.
struct Slot {
    /// The next unclaimed item of the thread's share in [`ThreadPool::for_each`]
    /// (claimed with `fetch_add` by the owner and by thieves alike).
    next: AtomicUsize,
    /// The end of that share, set with `next` when the job is posted (so a thief reads
    /// both from one line and divides nothing).
    end: AtomicUsize,
    /// The epoch of the job the worker is in, that epoch `|` [`RAN`] once it has run its
    /// part, or [`IDLE`] (unused for the caller).
    busy: AtomicU64,
    /// In [`ThreadPool::for_each_in_order_first_own`]: bit `r` set once the thread's own
    /// item of round `r` (item `r * threads + t`) has been taken, by its thread or by the
    /// shared counter.
    taken: AtomicU64,
}

struct Shared {
    /// Written per job by the caller (post, close); read by spinning workers.
    state: Padded<AtomicU64>,
    /// The posted job. Written by the caller before it posts the epoch (SeqCst RMW) and
    /// read by workers after they saw the job open (a SeqCst load later in `state`'s
    /// order). On a line of its own: in the line workers poll, the caller's write of it
    /// would pull the line away from them once more per job.
    job: Padded<UnsafeCell<Option<Job>>>,
    /// One per thread, the caller's first.
    slots: Box<[Padded<Slot>]>,
    /// The shared counter of [`ThreadPool::for_each_in_order`].
    ordered: Padded<AtomicUsize>,
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

/// Not in a job: [`IN_POOL`]'s value outside the pool's threads.
const OUTSIDE: usize = usize::MAX;

thread_local! {
    /// The pool thread index inside pool workers and inside a running job, so a nested
    /// call runs inline (on that thread's index) instead of deadlocking on the pool.
    static IN_POOL: Cell<usize> = const { Cell::new(OUTSIDE) };
}

/// The shares of `n` items over `threads`, thread 0's first: contiguous, covering
/// `0..n`, the first `n % threads` of them one item longer than the rest. One division
/// per job (the caller computes every bound of every job).
pub(crate) fn shares(n: usize, threads: usize) -> impl Iterator<Item = std::ops::Range<usize>> {
    let (q, r) = (n / threads, n % threads);
    (0..threads).scan(0, move |start, t| {
        let share = *start..*start + q + usize::from(t < r);
        *start = share.end;
        Some(share)
    })
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
            slots: (0..threads)
                .map(|_| {
                    Padded(Slot {
                        next: AtomicUsize::new(0),
                        end: AtomicUsize::new(0),
                        busy: AtomicU64::new(IDLE),
                        taken: AtomicU64::new(0),
                    })
                })
                .collect(),
            ordered: Padded(AtomicUsize::new(0)),
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
    /// do not run `f`: the callers' `f` leaves no item undone when it returns on any one
    /// thread (the caller's included), so by then nothing is left. `prepare` runs first,
    /// under the submit lock (it resets the job's counters). Not for nested calls.
    ///
    /// With `rescue`, `f(t)` on a worker is its own work only (nobody else's items), and
    /// the caller runs `rescue(t)` for every worker `t` that did not run `f(t)`: it had not
    /// joined when the job was closed, or it joined and saw the job closed.
    fn run(
        &self,
        prepare: impl FnOnce(&Shared),
        f: &(dyn Fn(usize) + Sync),
        rescue: Option<&(dyn Fn(usize) + Sync)>,
    ) {
        let _guard = self.submit.lock().unwrap_or_else(|p| p.into_inner());
        let s = &*self.shared;
        prepare(s);
        // SAFETY: lifetime erasure. Workers only use the pointer between joining and
        // leaving the job, and we neither return nor unwind before every joined worker
        // has left (its busy flag no longer names this epoch after the job is closed).
        let job: Job = unsafe { std::mem::transmute::<&(dyn Fn(usize) + Sync), Job>(f) };
        // SAFETY: we hold `submit` and the previous job is closed with every worker that
        // joined it gone (a late one leaves without reading `job`), so no worker reads
        // `job` now.
        unsafe { *s.job.0.get() = Some(job) };
        if s.panicked.load(Ordering::Relaxed) {
            s.panicked.store(false, Ordering::Relaxed);
        }
        // SeqCst: ordered before the `sleepers` load below, against a worker that counts
        // itself a sleeper and then re-reads `state` (neither may miss the other). Also a
        // release of `job` and of what `prepare` wrote.
        let epoch = (s.state.fetch_add(POST, Ordering::SeqCst).wrapping_add(POST)) >> 32;
        if s.sleepers.load(Ordering::SeqCst) > 0 {
            let _l = s.sleep_lock.lock().unwrap_or_else(|p| p.into_inner());
            s.wake.notify_all();
        }

        IN_POOL.with(|c| c.set(0));
        let mut mine = catch_unwind(AssertUnwindSafe(|| f(0)));

        // SeqCst: against a worker that announces itself (busy = epoch) and then re-reads
        // `state`: either it sees the job closed and leaves without reading `job`, or we
        // see its flag below and wait.
        s.state.fetch_or(CLOSED, Ordering::SeqCst);
        let ran = epoch | RAN;
        for (t, slot) in s.slots.iter().enumerate().skip(1) {
            let mut spins = 0u32;
            let b = loop {
                let b = slot.busy.load(Ordering::SeqCst);
                if b != epoch {
                    break b;
                }
                spins += 1;
                if spins < 1 << 16 {
                    std::hint::spin_loop();
                } else {
                    std::thread::yield_now();
                }
            };
            // The worker is out of this job for good (closed): its work is ours.
            if let (Some(rescue), true, true) = (rescue, b != ran, mine.is_ok()) {
                mine = catch_unwind(AssertUnwindSafe(|| rescue(t)));
            }
        }
        IN_POOL.with(|c| c.set(OUTSIDE));
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

    /// Calls `f(i, thread)` once for every `i` in `0..n`, in no particular order. Thread
    /// `t` starts on its own contiguous share of the items ([`shares`]), so
    /// threads starting together read adjacent blocks; a thread done with its share takes
    /// what is left of the others', so no thread idles while items remain. Items must
    /// not wait on one another (see [`ThreadPool::for_each_in_order`]). A call from
    /// inside a job runs inline on that thread.
    pub fn for_each(&self, n: usize, f: &(dyn Fn(usize, usize) + Sync)) {
        if self.inline(n, f) {
            return;
        }
        let threads = self.threads;
        let slots = &self.shared.slots;
        let body = |me: usize| {
            // Own share first: our counter stays in our cache while nobody steals.
            let mine = &slots[me];
            let end = mine.end.load(Ordering::Relaxed);
            loop {
                let i = mine.next.fetch_add(1, Ordering::Relaxed);
                if i >= end {
                    break;
                }
                f(i, me);
            }
            // Then the others', starting with the next thread's (thieves spread out). Plain
            // loads first: a finished share's line is then only read, not written.
            for k in 1..threads {
                let v = &slots[(me + k) % threads];
                let end = v.end.load(Ordering::Relaxed);
                while v.next.load(Ordering::Relaxed) < end {
                    let i = v.next.fetch_add(1, Ordering::Relaxed);
                    if i >= end {
                        break;
                    }
                    f(i, me);
                }
            }
        };
        let prepare = |s: &Shared| {
            for (slot, share) in s.slots.iter().zip(shares(n, threads)) {
                slot.next.store(share.start, Ordering::Relaxed);
                slot.end.store(share.end, Ordering::Relaxed);
            }
        };
        self.run(prepare, &body, None);
    }

    /// Calls `f(i, thread)` for every `i` in `0..n`, items handed out one at a time in
    /// increasing order by one shared counter: every item below `i` has been handed to a
    /// running thread before `i` is, so an item may wait for earlier ones (the MoE
    /// decode job's down items wait for their expert's gate+up items). Dearer per item
    /// than [`ThreadPool::for_each`] at many threads (every claim moves the counter's
    /// cache line).
    pub fn for_each_in_order(&self, n: usize, f: &(dyn Fn(usize, usize) + Sync)) {
        if self.inline(n, f) {
            return;
        }
        let next = &self.shared.ordered;
        let body = |me: usize| loop {
            let i = next.fetch_add(1, Ordering::Relaxed);
            if i >= n {
                break;
            }
            f(i, me);
        };
        self.run(|s| s.ordered.store(0, Ordering::Relaxed), &body, None);
    }

    /// Calls `f(i, thread)` once for every `i` in `0..n`, item `i` on thread `i` (the
    /// caller is thread 0): for `n <= threads`, one item a thread. No counter: a worker
    /// takes its item without writing any line but its own, and leaves without looking at
    /// the others. The caller runs its item, closes the job, and then runs (as thread 0)
    /// the item of every worker that had not joined by then, so a late or descheduled
    /// worker costs one item's time on the caller rather than a stall. Items must not wait
    /// on one another. Above `threads` items this is [`ThreadPool::for_each`]. A call
    /// from inside a job runs inline on that thread.
    pub fn for_each_static(&self, n: usize, f: &(dyn Fn(usize, usize) + Sync)) {
        if n > self.threads {
            return self.for_each(n, f);
        }
        if self.inline(n, f) {
            return;
        }
        let body = |me: usize| {
            if me < n {
                f(me, me);
            }
        };
        let rescue = |t: usize| {
            if t < n {
                f(t, 0);
            }
        };
        self.run(|_| {}, &body, Some(&rescue));
    }

    /// [`ThreadPool::for_each_in_order`], except that the first `own` items belong to fixed
    /// threads, item `i` to thread `i % threads`, and each joining thread first takes its own
    /// items in increasing order (those nobody took yet): what a thread prepared for them
    /// beforehand (weights prefetched into its own L2, `moe/prefetch.rs`) is its own. The
    /// shared counter then hands out the items in increasing order, skipping the own ones
    /// already taken, and takes those of threads that have not reached them yet, so a late
    /// worker never holds an item back.
    ///
    /// Items may wait on earlier items as in [`ThreadPool::for_each_in_order`], except the
    /// own items past the first round (`threads..own`), which must wait on nothing. Why that
    /// always ends: the caller (always in the job) takes item 0, which waits on nothing, then
    /// its own later items, which wait on nothing, and then goes through the counter, so
    /// whenever it waits every earlier item has been taken; a thread takes its own items in
    /// increasing order, so an untaken own item belongs to a thread that is on an earlier
    /// item or has not joined; hence the lowest unfinished item is always taken and has what
    /// it waits for. `own` is clamped to at least `min(n, threads)` (one round, as before)
    /// and at most `n`.
    pub fn for_each_in_order_first_own(
        &self,
        n: usize,
        own: usize,
        f: &(dyn Fn(usize, usize) + Sync),
    ) {
        if self.inline(n, f) {
            return;
        }
        let (next, slots, threads) = (&self.shared.ordered, &self.shared.slots, self.threads);
        let own = own.clamp(n.min(threads), n.min(threads * OWN_ROUNDS_MAX));
        // AcqRel fetch_or: exactly one taker per item (no data travels with the flag)
        let take = |i: usize| {
            if i >= own {
                return true;
            }
            let bit = 1u64 << (i / threads);
            slots[i % threads].taken.fetch_or(bit, Ordering::AcqRel) & bit == 0
        };
        let body = |me: usize| {
            for i in (me..own).step_by(threads) {
                if take(i) {
                    f(i, me);
                }
            }
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    break;
                }
                if take(i) {
                    f(i, me);
                }
            }
        };
        let prepare = |s: &Shared| {
            s.ordered.store(0, Ordering::Relaxed);
            for slot in &s.slots[..own.min(threads)] {
                slot.taken.store(0, Ordering::Relaxed);
            }
        };
        self.run(prepare, &body, None);
    }

    /// Runs the items on this thread when a job would not pay (at most one item, one
    /// thread) or cannot be posted (a call from inside a job); true if it did.
    fn inline(&self, n: usize, f: &(dyn Fn(usize, usize) + Sync)) -> bool {
        let inside = IN_POOL.with(|c| c.get());
        if n > 1 && self.threads > 1 && inside == OUTSIDE {
            return false;
        }
        let me = if inside == OUTSIDE { 0 } else { inside };
        (0..n).for_each(|i| f(i, me));
        true
    }
}

fn worker_loop(s: &Shared, id: usize) {
    IN_POOL.with(|c| c.set(id));
    let busy = &s.slots[id].busy;
    let mut seen = s.state.load(Ordering::Acquire) >> 32;
    loop {
        if !wait_for_epoch(s, seen) {
            return;
        }
        let st = s.state.load(Ordering::Acquire);
        seen = st >> 32;
        if st & CLOSED != 0 {
            // Closed before we came: not ours.
            continue;
        }
        // Announce, then check the job is still open (SeqCst store then load, against the
        // caller's close then load of our flag: one of us sees the other).
        busy.store(seen, Ordering::SeqCst);
        if s.state.load(Ordering::SeqCst) != st {
            // Closed meanwhile (or already the next job): leave without reading `job`.
            busy.store(IDLE, Ordering::Release);
            continue;
        }
        // SAFETY: the job of epoch `seen` was open after we announced ourselves, so the
        // caller waits for our flag before it returns (the closure outlives our use), and
        // it wrote `job` before posting the epoch we loaded (SeqCst RMW, then our load).
        let job = unsafe { (*s.job.0.get()).expect("job posted with the epoch") };
        // SAFETY: see above: the pointee outlives this call.
        let r = catch_unwind(AssertUnwindSafe(|| unsafe { (*job)(id) }));
        if r.is_err() {
            s.panicked.store(true, Ordering::Relaxed);
        }
        // Release: our writes (and the panic flag) before the caller sees us gone.
        busy.store(seen | RAN, Ordering::Release);
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
                pool.for_each_in_order(n, &|i, t| {
                    assert!(t < threads);
                    hits[i].fetch_add(1, Ordering::Relaxed);
                });
                for own in [0, threads, 3 * threads + 1, usize::MAX] {
                    pool.for_each_in_order_first_own(n, own, &|i, t| {
                        assert!(t < threads);
                        hits[i].fetch_add(1, Ordering::Relaxed);
                    });
                }
                assert!(
                    hits.iter().all(|h| h.load(Ordering::Relaxed) == 6),
                    "threads {threads} n {n}"
                );
            }
        }
    }

    #[test]
    fn first_own_items_may_wait_on_earlier_ones() {
        // As the MoE decode job: item i waits until item i - 3 is done. In order (every
        // earlier item handed to a running thread first) this always ends, also with late
        // workers whose own items the counter takes; and a thread that joins in time runs
        // its own item.
        let (mut own, mut all) = (0, 0);
        for threads in [2, 3, 5] {
            let pool = ThreadPool::new(threads).unwrap();
            for round in 0..200 {
                let n = 3 + round % 40;
                let done: Vec<AtomicBool> = (0..n).map(|_| AtomicBool::new(false)).collect();
                let ran_on: Vec<AtomicUsize> =
                    (0..n).map(|_| AtomicUsize::new(usize::MAX)).collect();
                pool.for_each_in_order_first_own(n, 0, &|i, t| {
                    if i >= 3 {
                        while !done[i - 3].load(Ordering::Acquire) {
                            std::hint::spin_loop();
                        }
                    }
                    ran_on[i].store(t, Ordering::Relaxed);
                    done[i].store(true, Ordering::Release);
                });
                assert!(done.iter().all(|d| d.load(Ordering::Relaxed)));
                own += (0..threads.min(n))
                    .filter(|&t| ran_on[t].load(Ordering::Relaxed) == t)
                    .count();
                all += threads.min(n);
            }
        }
        // which thread comes first is the scheduler's business; the owners do take part
        assert!(own > 0, "no thread ever ran its own item ({all} chances)");
    }

    #[test]
    fn later_own_rounds_run_before_the_waiting_items() {
        // As the MoE decode job with a two-round prefetch: the first 2 * threads items wait
        // on nothing and belong to fixed threads; every later item waits until item i - 5
        // is done (so the first round's items may be waited for by own items of no one). It
        // always ends, every item runs once, and owners do take part in the later round.
        let (mut own_later, mut all_later) = (0, 0);
        for threads in [2, 3, 5] {
            let pool = ThreadPool::new(threads).unwrap();
            let own = 2 * threads;
            for round in 0..200 {
                let n = 1 + round % 40;
                let done: Vec<AtomicBool> = (0..n).map(|_| AtomicBool::new(false)).collect();
                let runs: Vec<AtomicUsize> = (0..n).map(|_| AtomicUsize::new(0)).collect();
                let ran_on: Vec<AtomicUsize> =
                    (0..n).map(|_| AtomicUsize::new(usize::MAX)).collect();
                pool.for_each_in_order_first_own(n, own, &|i, t| {
                    if i >= own.max(5) {
                        while !done[i - 5].load(Ordering::Acquire) {
                            std::hint::spin_loop();
                        }
                    }
                    runs[i].fetch_add(1, Ordering::Relaxed);
                    ran_on[i].store(t, Ordering::Relaxed);
                    done[i].store(true, Ordering::Release);
                });
                assert!(runs.iter().all(|r| r.load(Ordering::Relaxed) == 1));
                own_later += (threads..own.min(n))
                    .filter(|&i| ran_on[i].load(Ordering::Relaxed) == i % threads)
                    .count();
                all_later += own.min(n).saturating_sub(threads);
            }
        }
        assert!(
            own_later > 0,
            "no thread ever ran its own later-round item ({all_later} chances)"
        );
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
    fn static_items_run_once_on_their_own_thread_or_the_caller() {
        // More threads than this machine's cores: workers often miss a job, and the caller
        // must run their items (as thread 0) exactly once.
        for threads in [1, 2, 3, 5] {
            let pool = ThreadPool::new(threads).unwrap();
            let hits: Vec<AtomicUsize> = (0..threads + 3).map(|_| AtomicUsize::new(0)).collect();
            let jobs = 2000;
            for j in 0..jobs {
                let n = j % (threads + 1);
                pool.for_each_static(n, &|i, t| {
                    assert!(t == i || t == 0, "item {i} on thread {t}");
                    hits[i].fetch_add(1, Ordering::Relaxed);
                });
            }
            for (i, h) in hits.iter().enumerate() {
                let want = (0..jobs).filter(|j| i < j % (threads + 1)).count();
                assert_eq!(
                    h.load(Ordering::Relaxed),
                    want,
                    "threads {threads} item {i}"
                );
            }
            // more items than threads: the shares and stealing of `for_each`
            let n = 3 * threads + 1;
            let hits: Vec<AtomicUsize> = (0..n).map(|_| AtomicUsize::new(0)).collect();
            pool.for_each_static(n, &|i, _| {
                hits[i].fetch_add(1, Ordering::Relaxed);
            });
            assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 1));
        }
    }

    #[test]
    fn static_items_of_sleeping_workers_run_on_the_caller() {
        // Workers asleep on the condition variable wake long after the caller's own item
        // (which returns at once) closed the job: the caller runs their items. Retried: a
        // worker may also wake in time.
        let pool = ThreadPool::new(3).unwrap();
        let mut rescued = false;
        for _ in 0..50 {
            std::thread::sleep(SPIN * 5);
            let hits: Vec<AtomicUsize> = (0..3).map(|_| AtomicUsize::new(0)).collect();
            let on_caller = AtomicUsize::new(0);
            pool.for_each_static(3, &|i, t| {
                hits[i].fetch_add(1, Ordering::Relaxed);
                if t == 0 && i != 0 {
                    on_caller.fetch_add(1, Ordering::Relaxed);
                }
            });
            assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 1));
            if on_caller.load(Ordering::Relaxed) > 0 {
                rescued = true;
                break;
            }
        }
        assert!(rescued, "the caller never ran a late worker's item");
    }

    #[test]
    fn nested_calls_run_inline_on_the_outer_thread() {
        let pool = ThreadPool::new(3).unwrap();
        let total = AtomicUsize::new(0);
        for round in 0..200 {
            let outer = |_: usize, t: usize| {
                let inner = |_: usize, u: usize| {
                    // per-thread scratch indexed by `thread` stays private to the thread
                    assert_eq!(u, t, "round {round}");
                    total.fetch_add(1, Ordering::Relaxed);
                };
                match round % 3 {
                    0 => pool.for_each(5, &inner),
                    1 => pool.for_each_in_order(5, &inner),
                    _ => pool.for_each_static(2, &inner),
                }
            };
            if round % 2 == 0 {
                pool.for_each(4, &outer);
            } else {
                pool.for_each_static(3, &outer);
            }
        }
        let per_round = |r: usize| [5, 5, 2][r % 3] * [4, 3][r % 2];
        assert_eq!(
            total.load(Ordering::Relaxed),
            (0..200).map(per_round).sum::<usize>()
        );
    }

    #[test]
    fn stolen_items_still_run_exactly_once() {
        // Item 0 stalls its thread (thread 0, unless a worker stole it before the caller
        // began), so the workers finish their own shares and then take the rest of
        // thread 0's share. Retried because on a loaded 2-core
        // machine a worker may not get to run during the stall.
        let threads = 3;
        let n = 60;
        let pool = ThreadPool::new(threads).unwrap();
        let mut stolen_seen = false;
        for _ in 0..50 {
            let ran_on: Vec<AtomicUsize> = (0..n).map(|_| AtomicUsize::new(usize::MAX)).collect();
            let hits: Vec<AtomicUsize> = (0..n).map(|_| AtomicUsize::new(0)).collect();
            pool.for_each(n, &|i, t| {
                if i == 0 {
                    std::thread::sleep(Duration::from_millis(20));
                }
                hits[i].fetch_add(1, Ordering::Relaxed);
                ran_on[i].store(t, Ordering::Relaxed);
            });
            assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 1));
            let share0 = shares(n, threads).next().unwrap();
            stolen_seen = share0
                .into_iter()
                .any(|i| ran_on[i].load(Ordering::Relaxed) != 0);
            if stolen_seen {
                break;
            }
        }
        assert!(stolen_seen, "no worker ever took part of a stalled share");
    }

    #[test]
    fn shares_cover_the_items_once_in_contiguous_runs() {
        for threads in [1, 2, 3, 16, 64] {
            for n in [0, 1, 2, 15, 16, 17, 100, 1000] {
                let v: Vec<_> = shares(n, threads).collect();
                assert_eq!(v.len(), threads);
                assert_eq!(v[0].start, 0);
                assert_eq!(v[threads - 1].end, n);
                for (t, s) in v.iter().enumerate() {
                    assert!(
                        s.len() == n / threads || s.len() == n / threads + 1,
                        "{threads} {n} {t}"
                    );
                    if t > 0 {
                        assert_eq!(s.start, v[t - 1].end);
                    }
                }
            }
        }
    }

    #[test]
    fn in_order_items_may_wait_for_earlier_items() {
        // The MoE decode pattern: the second half of the items waits for the first half.
        // Any thread that took a waiting item has seen every earlier item handed out, so
        // this ends; the deadline turns a hang into a failure.
        let pool = ThreadPool::new(4).unwrap();
        for round in 0..200 {
            let half = 2 + round % 13;
            let done = AtomicUsize::new(0);
            let hits: Vec<AtomicUsize> = (0..2 * half).map(|_| AtomicUsize::new(0)).collect();
            pool.for_each_in_order(2 * half, &|i, _| {
                if i >= half {
                    let deadline = Instant::now() + Duration::from_secs(20);
                    while done.load(Ordering::Acquire) < half {
                        assert!(Instant::now() < deadline, "round {round}: item {i} starved");
                        std::thread::yield_now();
                    }
                } else {
                    done.fetch_add(1, Ordering::Release);
                }
                hits[i].fetch_add(1, Ordering::Relaxed);
            });
            assert!(
                hits.iter().all(|h| h.load(Ordering::Relaxed) == 1),
                "round {round}"
            );
        }
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
    fn panics_on_the_caller_or_a_worker_propagate_in_every_hand_out() {
        let pool = ThreadPool::new(3).unwrap();
        for mode in 0..3 {
            for on_worker in [false, true] {
                // A worker may not join a given job on a loaded machine: retry until one
                // ran an item (then it panicked).
                let mut panicked = false;
                for _ in 0..200 {
                    let job = |_: usize, t: usize| {
                        std::thread::sleep(Duration::from_micros(200));
                        if (t != 0) == on_worker {
                            panic!("boom on thread {t}");
                        }
                    };
                    let r = catch_unwind(AssertUnwindSafe(|| match mode {
                        0 => pool.for_each(12, &job),
                        1 => pool.for_each_in_order(12, &job),
                        _ => pool.for_each_static(3, &job),
                    }));
                    if r.is_err() {
                        panicked = true;
                        break;
                    }
                }
                assert!(panicked, "mode {mode} on_worker {on_worker}");
                let hits: Vec<AtomicUsize> = (0..40).map(|_| AtomicUsize::new(0)).collect();
                pool.for_each(40, &|i, _| {
                    hits[i].fetch_add(1, Ordering::Relaxed);
                });
                assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 1));
            }
        }
    }

    #[test]
    fn zero_threads_is_an_error() {
        assert!(ThreadPool::new(0).is_err());
    }
}
