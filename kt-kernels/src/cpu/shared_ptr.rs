//! [`Raw`]: a raw pointer that pool threads of one parallel region share, for kernels whose
//! work items write disjoint parts of one buffer (rows of an output, tiles of a scratch).

/// A raw pointer that may cross threads. Whoever shares one guarantees that the items of
/// the parallel region touch disjoint elements while the buffer it points into stays
/// exclusively borrowed (for writes) or alive (for reads) until the region ends.
#[derive(Clone, Copy)]
pub(crate) struct Raw<T>(*mut T);
// SAFETY: a `Raw` is only a pointer; the sharing contract above (disjoint elements per
// item, buffer borrowed for the whole region) is the caller's, checked at each use.
unsafe impl<T> Send for Raw<T> {}
// SAFETY: as above.
unsafe impl<T> Sync for Raw<T> {}

impl<T> Raw<T> {
    pub(crate) fn new(p: *const T) -> Self {
        Raw(p as *mut T)
    }
    /// The pointer to element `i` (no bounds: the caller's region contract).
    pub(crate) fn at(self, i: usize) -> *mut T {
        self.0.wrapping_add(i)
    }
    pub(crate) fn get(self) -> *mut T {
        self.0
    }
}
