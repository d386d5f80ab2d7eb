//! avx512 kernels (filled in by the avx512 backend work).

use super::dispatch::KernelTable;

pub(crate) fn register(_t: &mut KernelTable) {}
