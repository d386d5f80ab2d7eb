//! amx kernels (filled in by the amx backend work).

use super::dispatch::KernelTable;

pub(crate) fn register(_t: &mut KernelTable) {}
