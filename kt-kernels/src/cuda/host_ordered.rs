//! Keeping device-wide synchronizing frees away from work that waits on the host.
//!
//! A stream that waits on a host flag ([`super::GpuStream::wait_flag`]) holds its work
//! until a host thread raises the flag, and that thread may need the driver meanwhile
//! (queuing the next layer, reading a copy). Freeing page-locked memory
//! (`cuMemFreeHost`) waits for all work on the device to finish while it holds the
//! driver's lock: if another thread's flag-gated work is in flight, the free waits for the
//! flag, and the flag's raiser waits for the lock. Two hybrid models decoding in one
//! process (the hybrid_graph tests run in parallel) hung that way in 3 of 8 runs on the
//! device. So flag-gated work holds [`HostOrderedWork`] (shared, from before its first
//! wait is queued or its graph launched until every wait is released) and such frees
//! take the lock exclusively: a free waits for the work in flight to finish instead.
//! Module unloads (a dropped [`super::Gpu`]'s last handle) are treated the same.
//! Nested holds on one thread count once; a free on a thread that holds the work itself
//! does not lock (it would only wait for itself).

use std::cell::Cell;
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

static HOST_ORDERED: RwLock<()> = RwLock::new(());

thread_local! {
    /// How many [`HostOrderedWork`] this thread holds.
    static HELD: Cell<u32> = const { Cell::new(0) };
}

/// Flag-gated work in flight on this thread (see the module docs); released on drop.
pub struct HostOrderedWork {
    _shared: Option<RwLockReadGuard<'static, ()>>,
}

/// Marks flag-gated work in flight until the returned value drops: a page-locked free on
/// another thread waits for it.
pub fn host_ordered_work() -> HostOrderedWork {
    let outer = HELD.with(|h| {
        let n = h.get();
        h.set(n + 1);
        n == 0
    });
    let shared = outer.then(|| HOST_ORDERED.read().unwrap_or_else(|p| p.into_inner()));
    HostOrderedWork { _shared: shared }
}

impl Drop for HostOrderedWork {
    fn drop(&mut self) {
        HELD.with(|h| h.set(h.get() - 1));
    }
}

/// Held around a device-wide synchronizing free: waits until no other thread has
/// flag-gated work in flight (none when this thread holds some itself).
pub(crate) fn synchronizing_free() -> Option<RwLockWriteGuard<'static, ()>> {
    (HELD.with(Cell::get) == 0).then(|| HOST_ORDERED.write().unwrap_or_else(|p| p.into_inner()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Duration;

    #[test]
    fn a_free_waits_for_work_on_another_thread_but_not_for_its_own() {
        let work = host_ordered_work();
        let nested = host_ordered_work();
        // this thread's own work: no lock (it would wait for itself)
        assert!(synchronizing_free().is_none());
        drop(nested);
        let freed = AtomicBool::new(false);
        std::thread::scope(|s| {
            s.spawn(|| {
                let _g = synchronizing_free();
                freed.store(true, Ordering::SeqCst);
            });
            std::thread::sleep(Duration::from_millis(50));
            assert!(!freed.load(Ordering::SeqCst), "the free did not wait for the work");
            drop(work);
        });
        assert!(freed.load(Ordering::SeqCst));
        assert!(synchronizing_free().is_some());
    }
}
