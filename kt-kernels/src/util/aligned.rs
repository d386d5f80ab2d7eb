//! A growable byte buffer aligned to 64 bytes (a cache line, and an AVX512 register):
//! per-thread scratch and quantized activations live in these.

use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::ptr::NonNull;

const ALIGN: usize = 64;

/// An owned, 64-byte aligned, zero-initialised byte buffer.
pub struct AlignedBuf {
    ptr: NonNull<u8>,
    len: usize,
    cap: usize,
}

// SAFETY: AlignedBuf owns its allocation exclusively, like Vec<u8>.
unsafe impl Send for AlignedBuf {}
// SAFETY: shared references only give out &[u8], like Vec<u8>.
unsafe impl Sync for AlignedBuf {}

impl AlignedBuf {
    pub const fn new() -> Self {
        Self {
            ptr: NonNull::dangling(),
            len: 0,
            cap: 0,
        }
    }

    pub fn with_len(len: usize) -> Self {
        let mut b = Self::new();
        b.resize(len);
        b
    }

    /// Sets the length to `len`, reallocating (contents not kept) only when the capacity
    /// is too small. Reused scratch therefore allocates once and then never again.
    pub fn resize(&mut self, len: usize) {
        if len > self.cap {
            self.free();
            let cap = len.next_multiple_of(ALIGN);
            let layout = Layout::from_size_align(cap, ALIGN).expect("buffer size overflows");
            // SAFETY: layout has a non-zero size (len > cap >= 0 so len >= 1).
            let p = unsafe { alloc_zeroed(layout) };
            self.ptr = NonNull::new(p).unwrap_or_else(|| std::alloc::handle_alloc_error(layout));
            self.cap = cap;
        }
        self.len = len;
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: ptr is valid for cap >= len initialised bytes (zeroed at allocation),
        // or dangling with len == 0.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as in as_slice, and &mut self gives exclusive access.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }

    /// The buffer viewed as f32 (length rounded down to whole floats).
    pub fn as_f32_mut(&mut self) -> &mut [f32] {
        // SAFETY: the pointer is 64-byte aligned (so 4-byte aligned), every bit pattern
        // is a valid f32, and len / 4 floats fit in len bytes.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr() as *mut f32, self.len / 4) }
    }

    fn free(&mut self) {
        if self.cap > 0 {
            // SAFETY: allocated in resize with exactly this layout.
            unsafe {
                dealloc(
                    self.ptr.as_ptr(),
                    Layout::from_size_align_unchecked(self.cap, ALIGN),
                )
            };
            self.cap = 0;
            self.len = 0;
            self.ptr = NonNull::dangling();
        }
    }
}

impl Default for AlignedBuf {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        self.free();
    }
}

impl std::fmt::Debug for AlignedBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AlignedBuf({} bytes)", self.len)
    }
}
