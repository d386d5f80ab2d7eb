//! A global allocator that counts allocations (of every thread: the caller, a driver, the
//! pool workers) and forwards them to the system allocator, for the no-allocation tests.
//! A test binary installs it with
//! `#[global_allocator] static GLOBAL: alloc_counter::Counting = alloc_counter::Counting;`
//! and holds a single test, so that no other test allocates meanwhile.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

pub struct Counting;

static ALLOCS: AtomicUsize = AtomicUsize::new(0);
/// The first allocation inside an open [`Window`]: its size (0: none yet) and the Linux
/// thread id that made it, so a failing test can say what allocated and on which thread.
static FIRST_SIZE: AtomicUsize = AtomicUsize::new(0);
static FIRST_TID: AtomicUsize = AtomicUsize::new(0);
static WINDOW_OPEN: AtomicBool = AtomicBool::new(false);

/// Notes the first allocation of an open window (no allocation here: atomics and a syscall).
fn note(size: usize) {
    if WINDOW_OPEN.load(Ordering::Relaxed)
        && FIRST_SIZE
            .compare_exchange(0, size.max(1), Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    {
        FIRST_TID.store(this_tid(), Ordering::Relaxed);
    }
}

/// The calling thread's Linux thread id.
pub fn this_tid() -> usize {
    // SAFETY: gettid takes no arguments and cannot fail.
    unsafe { libc::syscall(libc::SYS_gettid) as usize }
}

/// A stretch of a test in which allocations are counted and the first one is described.
pub struct Window {
    before: usize,
}

/// What a [`Window`] saw: the allocation count, and the first allocation's size and thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seen {
    pub allocations: usize,
    pub first_size: Option<usize>,
    pub first_tid: Option<usize>,
}

impl Window {
    pub fn open() -> Window {
        FIRST_SIZE.store(0, Ordering::SeqCst);
        FIRST_TID.store(0, Ordering::SeqCst);
        WINDOW_OPEN.store(true, Ordering::SeqCst);
        Window {
            before: allocations(),
        }
    }
    pub fn close(self) -> Seen {
        let allocations = allocations() - self.before;
        WINDOW_OPEN.store(false, Ordering::SeqCst);
        let size = FIRST_SIZE.load(Ordering::SeqCst);
        Seen {
            allocations,
            first_size: (size != 0).then_some(size),
            first_tid: (size != 0).then(|| FIRST_TID.load(Ordering::SeqCst)),
        }
    }
}

/// Allocations (alloc, alloc_zeroed and realloc) since the program started.
pub fn allocations() -> usize {
    ALLOCS.load(Ordering::SeqCst)
}

// SAFETY: forwards every call to the system allocator unchanged, only counting.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        note(layout.size());
        // SAFETY: same contract as ours.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        note(layout.size());
        // SAFETY: same contract as ours.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        note(new_size);
        // SAFETY: same contract as ours.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(ptr, layout) }
    }
}

/// Fails unless the counter is the installed allocator (so a zero count means something).
pub fn assert_counting() {
    let window = Window::open();
    drop(std::hint::black_box(Vec::<u8>::with_capacity(64)));
    let seen = window.close();
    assert!(
        seen.allocations > 0,
        "alloc_counter::Counting is not the global allocator"
    );
    assert_eq!(
        (seen.first_size, seen.first_tid),
        (Some(64), Some(this_tid())),
        "a window describes its first allocation"
    );
}
