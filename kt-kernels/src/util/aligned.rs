//! A growable byte buffer aligned to 64 bytes (a cache line, and an AVX512 register):
//! per-thread scratch and quantized activations live in these.

use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::ptr::NonNull;

const ALIGN: usize = 64;

#[cfg(target_os = "linux")]
const PAGE: usize = 4096;

/// An owned, 64-byte aligned, zero-initialised byte buffer.
pub struct AlignedBuf {
    ptr: NonNull<u8>,
    len: usize,
    cap: usize,
    /// Mapped from the OS by [`AlignedBuf::with_len_mapped`] (unmapped when freed), not
    /// taken from the allocator.
    mapped: bool,
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
            mapped: false,
        }
    }

    pub fn with_len(len: usize) -> Self {
        let mut b = Self::new();
        b.resize(len);
        b
    }

    /// A buffer of `len` zero bytes whose pages are first touched by whichever threads
    /// write them, for large buffers filled once by many threads (a model's repacked
    /// experts). On Linux it is an anonymous private mapping of whole pages, zero until
    /// written; the allocator instead zeroes an over-aligned allocation with a `memset` on
    /// the allocating thread, a serial first touch of every page (session 26, device, 16
    /// threads writing 0.74 GB: 0.45-0.61 s after that zeroing, 0.045-0.054 s mapped).
    /// Elsewhere, and for an
    /// empty buffer, [`AlignedBuf::with_len`]. Growing it later takes a fresh mapping.
    pub fn with_len_mapped(len: usize) -> Self {
        let mut b = Self::new();
        #[cfg(target_os = "linux")]
        if len > 0 {
            b.map(len);
            return b;
        }
        b.resize(len);
        b
    }

    /// Sets the length to `len`, reallocating (contents not kept) only when the capacity
    /// is too small. Reused scratch therefore allocates once and then never again.
    pub fn resize(&mut self, len: usize) {
        if len > self.cap {
            let mapped = self.mapped;
            self.free();
            if mapped {
                #[cfg(target_os = "linux")]
                {
                    self.map(len);
                    return;
                }
            }
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

    /// A fresh anonymous mapping of `len` bytes (whole pages), zero until written.
    #[cfg(target_os = "linux")]
    fn map(&mut self, len: usize) {
        let cap = len.next_multiple_of(PAGE);
        // SAFETY: a new private anonymous mapping (no file, no fixed address) aliases nothing.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                cap,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        let layout = Layout::from_size_align(cap, PAGE).expect("buffer size overflows");
        if p == libc::MAP_FAILED {
            std::alloc::handle_alloc_error(layout);
        }
        self.ptr = NonNull::new(p.cast()).unwrap_or_else(|| std::alloc::handle_alloc_error(layout));
        self.cap = cap;
        self.len = len;
        self.mapped = true;
    }

    fn free(&mut self) {
        #[cfg(target_os = "linux")]
        if self.mapped {
            // SAFETY: mapped in `map` with exactly this length, and no reference to it
            // outlives `&mut self`.
            unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.cap) };
            self.cap = 0;
            self.len = 0;
            self.ptr = NonNull::dangling();
            self.mapped = false;
            return;
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Allocated and mapped buffers: zeroed, 64-byte aligned, writable to their last
    /// byte, regrown without keeping contents, and freed (a bad unmap or a double free
    /// crashes the test).
    #[test]
    fn allocated_and_mapped_buffers_are_zeroed_aligned_and_regrow() {
        let sizes = [1usize, 4096, 4097, (3 << 20) + 5];
        let make = [AlignedBuf::with_len, AlignedBuf::with_len_mapped];
        for (len, new) in sizes.into_iter().flat_map(|l| make.map(|m| (l, m))) {
            let mut b = new(len);
            assert_eq!(b.len(), len);
            assert_eq!(b.as_slice().as_ptr() as usize % ALIGN, 0, "{len}");
            assert!(b.as_slice().iter().all(|&v| v == 0), "{len}");
            b.as_mut_slice()[len - 1] = 7;
            b.as_mut_slice()[0] = 9;
            assert_eq!(
                (b.as_slice()[0], b.as_slice()[len - 1]),
                (9, if len == 1 { 9 } else { 7 })
            );
            // Shrinking keeps the allocation; growing past it takes a fresh, zeroed one.
            b.resize(len / 2);
            let grown = b.cap + 1;
            b.resize(grown);
            assert_eq!(b.len(), grown);
            assert!(b.as_slice().iter().all(|&v| v == 0), "{len} regrown");
        }
    }
}
