//! The fatbins `build.rs` compiled from `cuda/*.cu` (sm_80 + sm_90a code, compute_90 PTX),
//! and the per-context cache of their kernels.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use cudarc::driver::{sys, CudaContext, CudaFunction, CudaModule};
use cudarc::nvrtc::Ptx;

use super::error::{CudaError, CudaResult};
use super::exclusive::device_exclusive;

/// One embedded module: its name (the .cu file's stem) and fatbin bytes.
pub(crate) struct Embedded {
    pub name: &'static str,
    pub image: &'static [u8],
}

pub(crate) const SMALL_OPS: Embedded = Embedded {
    name: "small_ops",
    image: include_bytes!(concat!(env!("OUT_DIR"), "/small_ops.fatbin")),
};
pub(crate) const MOE_GATING: Embedded = Embedded {
    name: "moe_gating",
    image: include_bytes!(concat!(env!("OUT_DIR"), "/moe_gating.fatbin")),
};
pub(crate) const W4A16_GEMM: Embedded = Embedded {
    name: "w4a16_gemm",
    image: include_bytes!(concat!(env!("OUT_DIR"), "/w4a16_gemm.fatbin")),
};

pub(crate) const MLA_ATTN: Embedded = Embedded {
    name: "mla_attn",
    image: include_bytes!(concat!(env!("OUT_DIR"), "/mla_attn.fatbin")),
};

/// The wgmma MLA kernel: machine code for sm_90a (the sm_80 image holds only a trapping stub
/// that mla.rs never launches).
pub(crate) const MLA_ATTN_SM90: Embedded = Embedded {
    name: "mla_attn_sm90",
    image: include_bytes!(concat!(env!("OUT_DIR"), "/mla_attn_sm90.fatbin")),
};

/// The batch-1 few-heads MLA decode and its combine (mla.rs's small path).
pub(crate) const MLA_DECODE_SMALL: Embedded = Embedded {
    name: "mla_decode_small",
    image: include_bytes!(concat!(env!("OUT_DIR"), "/mla_decode_small.fatbin")),
};

pub(crate) const TOP_P: Embedded = Embedded {
    name: "top_p",
    image: include_bytes!(concat!(env!("OUT_DIR"), "/top_p.fatbin")),
};

/// The hybrid forward pass's GEMM, norms, cache writes and casts.
pub(crate) const HYBRID_OPS: Embedded = Embedded {
    name: "hybrid_ops",
    image: include_bytes!(concat!(env!("OUT_DIR"), "/hybrid_ops.fatbin")),
};

/// The GPU prefill's routed-expert gather and weighted combine.
pub(crate) const MOE_EXPERTS: Embedded = Embedded {
    name: "moe_experts",
    image: include_bytes!(concat!(env!("OUT_DIR"), "/moe_experts.fatbin")),
};

const ALL: [Embedded; 9] = [
    SMALL_OPS,
    MOE_GATING,
    W4A16_GEMM,
    MLA_ATTN,
    MLA_ATTN_SM90,
    MLA_DECODE_SMALL,
    TOP_P,
    HYBRID_OPS,
    MOE_EXPERTS,
];

/// Every embedded module loaded into one context, with kernels looked up once by name.
pub(crate) struct Kernels {
    modules: HashMap<&'static str, Arc<CudaModule>>,
    functions: Mutex<HashMap<String, CudaFunction>>,
    /// Resident blocks per multiprocessor, by kernel and block size (no dynamic shared memory).
    occupancy: Mutex<HashMap<(String, u32), usize>>,
    /// Kernels whose dynamic shared memory limit was raised, and to how many bytes.
    smem_limits: Mutex<HashMap<String, u32>>,
}

impl Drop for Kernels {
    /// Unloads the modules under [`device_exclusive`] (an unload waits for the device).
    fn drop(&mut self) {
        let _exclusive = device_exclusive();
        self.functions
            .get_mut()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
        self.modules.clear();
    }
}

impl Kernels {
    pub fn load(ctx: &Arc<CudaContext>) -> CudaResult<Self> {
        let mut modules = HashMap::new();
        for m in ALL {
            // include_bytes! promises no alignment; the heap copy is aligned the way the
            // system allocator aligns every block (16 bytes on x86-64 glibc), which the
            // driver's fatbin reader is content with.
            let module = ctx
                .load_module(Ptx::from_binary(m.image.to_vec()))
                .map_err(|source| CudaError::ModuleLoad {
                    module: m.name,
                    source,
                })?;
            modules.insert(m.name, module);
        }
        Ok(Kernels {
            modules,
            functions: Mutex::new(HashMap::new()),
            occupancy: Mutex::new(HashMap::new()),
            smem_limits: Mutex::new(HashMap::new()),
        })
    }

    /// Kernel `kernel` of module `module`.
    pub fn get(&self, module: &Embedded, kernel: &str) -> CudaResult<CudaFunction> {
        let mut cache = self.functions.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(f) = cache.get(kernel) {
            return Ok(f.clone());
        }
        let m = &self.modules[module.name];
        let f = m
            .load_function(kernel)
            .map_err(|source| CudaError::MissingKernel {
                module: module.name,
                kernel: kernel.to_string(),
                source,
            })?;
        cache.insert(kernel.to_string(), f.clone());
        Ok(f)
    }

    /// How many blocks of `threads` threads of `kernel` fit on one multiprocessor at once
    /// (registers and static shared memory permitting), asked of the driver once.
    pub fn resident_blocks(
        &self,
        module: &Embedded,
        kernel: &str,
        threads: u32,
    ) -> CudaResult<usize> {
        let key = (kernel.to_string(), threads);
        if let Some(&n) = self
            .occupancy
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
        {
            return Ok(n);
        }
        let f = self.get(module, kernel)?;
        let n = f
            .occupancy_max_active_blocks_per_multiprocessor(threads, 0, None)
            .map_err(|source| CudaError::Driver {
                op: "cuOccupancyMaxActiveBlocksPerMultiprocessor",
                source,
            })? as usize;
        self.occupancy
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key, n.max(1));
        Ok(n.max(1))
    }

    /// Kernel `kernel` of module `module`, allowed `bytes` of dynamic shared memory (past the
    /// 48 KiB default, which needs the driver's opt-in; a device with less fails the launch).
    pub fn get_with_smem(
        &self,
        module: &Embedded,
        kernel: &str,
        bytes: u32,
    ) -> CudaResult<CudaFunction> {
        let f = self.get(module, kernel)?;
        let mut limits = self.smem_limits.lock().unwrap_or_else(|p| p.into_inner());
        if limits.get(kernel).is_none_or(|&b| b < bytes) {
            let value = i32::try_from(bytes).unwrap_or(i32::MAX);
            f.set_attribute(
                sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                value,
            )
            .map_err(|source| CudaError::Driver {
                op: "cuFuncSetAttribute(MAX_DYNAMIC_SHARED_SIZE_BYTES)",
                source,
            })?;
            limits.insert(kernel.to_string(), bytes);
        }
        Ok(f)
    }
}
