//! AMX kernels. The GGUF-native formats keep their AVX512 kernels (`register` adds
//! nothing to their table); AMX serves the repacked expert layouts of
//! [`crate::cpu::moe::repack`] through [`repack::gemm`].
//!
//! AMX needs the Linux permission request ([`crate::cpu::isa`]'s `amx_permission`), made
//! once per process by `Isa::Amx.check()`; every entry here is reached only after it
//! passed. Each work item loads its own tile configuration on the thread that runs it and
//! releases the tiles at its end, so pool threads never share tile state.

use super::dispatch::KernelTable;

pub(crate) mod repack;
mod tiles;

pub(crate) fn register(_t: &mut KernelTable) {}
