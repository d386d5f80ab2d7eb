//! A global allocator that counts allocations (of every thread: the caller, a driver, the
//! pool workers) and forwards them to the system allocator, for the no-allocation tests.
//! A test binary installs it with
//! `#[global_allocator] static GLOBAL: alloc_counter::Counting = alloc_counter::Counting;`
//! and holds a single test, so that no other test allocates meanwhile.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

pub struct Counting;

static ALLOCS: AtomicUsize = AtomicUsize::new(0);

/// Allocations (alloc, alloc_zeroed and realloc) since the program started.
pub fn allocations() -> usize {
    ALLOCS.load(Ordering::SeqCst)
}

// SAFETY: forwards every call to the system allocator unchanged, only counting.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as ours.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as ours.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
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
    let before = allocations();
    drop(std::hint::black_box(Vec::<u8>::with_capacity(64)));
    assert!(
        allocations() > before,
        "alloc_counter::Counting is not the global allocator"
    );
}
