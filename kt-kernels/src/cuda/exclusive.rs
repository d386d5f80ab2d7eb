//! One process-wide lock that keeps two kinds of GPU work from overlapping across threads:
//!
//! - work queued behind a wait on a [`HostFlag`](super::HostFlag): the thread that will
//!   raise the flag keeps making driver calls (events, copies, launches) until it does;
//! - driver calls that wait for the whole device to go idle while holding a lock of the
//!   driver's own: freeing page-locked memory (`cuMemFreeHost`), unloading modules,
//!   destroying graphs, and, to be safe, allocating page-locked memory and loading modules.
//!
//! Overlapping, the second waits for the first's flag-gated work, which waits for its thread,
//! which waits for the driver's lock in its next call: a deadlock with the GPU idle. Seen on
//! the device: two hybrid models on two threads of one process (`kt-model`'s
//! `tests/hybrid_graph.rs`), one thread dropping its model (running, in the driver) while the
//! other, inside a forward call, slept on a futex of the driver's (session 14, 4 of 29 runs with
//! the forward calls alone serialized).
//!
//! The lock is re-entrant per thread: a decode step that holds it may free or allocate
//! page-locked buffers itself (its own flag waits are not pending then).

use std::cell::{Cell, RefCell};
use std::marker::PhantomData;
use std::sync::{Mutex, MutexGuard};

static LOCK: Mutex<()> = Mutex::new(());

thread_local! {
    /// How many [`DeviceExclusive`] guards this thread holds.
    static DEPTH: Cell<usize> = const { Cell::new(0) };
    /// The lock's guard while `DEPTH > 0`.
    static HELD: RefCell<Option<MutexGuard<'static, ()>>> = const { RefCell::new(None) };
}

/// Held while this thread may have GPU work queued behind a host flag, or while it makes a
/// driver call that waits for the whole device (see the module docs). Not `Send`: it is
/// released on the thread that took it.
#[must_use = "the lock is released when the guard drops"]
pub struct DeviceExclusive {
    _not_send: PhantomData<*const ()>,
}

/// Takes the process's device lock (or another hold of it, when this thread already has it).
pub fn device_exclusive() -> DeviceExclusive {
    if DEPTH.get() == 0 {
        // The lock guards no data: a thread that panicked while holding it left nothing
        // half-written.
        let guard = LOCK.lock().unwrap_or_else(|p| p.into_inner());
        HELD.with_borrow_mut(|h| *h = Some(guard));
    }
    DEPTH.set(DEPTH.get() + 1);
    DeviceExclusive {
        _not_send: PhantomData,
    }
}

impl Drop for DeviceExclusive {
    fn drop(&mut self) {
        let depth = DEPTH.get() - 1;
        DEPTH.set(depth);
        if depth == 0 {
            HELD.with_borrow_mut(|h| *h = None);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    #[test]
    fn reentrant_on_one_thread_exclusive_across_threads() {
        let outer = device_exclusive();
        let inner = device_exclusive(); // the same thread again: no self-deadlock
        let entered = Arc::new(AtomicBool::new(false));
        let other = {
            let entered = entered.clone();
            std::thread::spawn(move || {
                let _g = device_exclusive();
                entered.store(true, Ordering::SeqCst);
            })
        };
        std::thread::sleep(Duration::from_millis(50));
        assert!(!entered.load(Ordering::SeqCst), "entered while held twice");
        drop(inner);
        std::thread::sleep(Duration::from_millis(50));
        assert!(
            !entered.load(Ordering::SeqCst),
            "entered while still held once"
        );
        drop(outer);
        other.join().unwrap();
        assert!(entered.load(Ordering::SeqCst));
    }
}
