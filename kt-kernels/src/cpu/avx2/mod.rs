//! avx2 kernels (filled in by the avx2 backend work).

use super::dispatch::KernelTable;

pub(crate) fn register(_t: &mut KernelTable) {}
