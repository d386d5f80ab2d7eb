//! The fatbins `build.rs` compiled from `cuda/*.cu` (sm_80 + sm_90 code, compute_90 PTX),
//! and the per-context cache of their kernels.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use cudarc::driver::{CudaContext, CudaFunction, CudaModule};
use cudarc::nvrtc::Ptx;

use super::error::{CudaError, CudaResult};

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

const ALL: [Embedded; 3] = [SMALL_OPS, MOE_GATING, W4A16_GEMM];

/// Every embedded module loaded into one context, with kernels looked up once by name.
pub(crate) struct Kernels {
    modules: HashMap<&'static str, Arc<CudaModule>>,
    functions: Mutex<HashMap<String, CudaFunction>>,
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
                .map_err(|source| CudaError::ModuleLoad { module: m.name, source })?;
            modules.insert(m.name, module);
        }
        Ok(Kernels { modules, functions: Mutex::new(HashMap::new()) })
    }

    /// Kernel `kernel` of module `module`.
    pub fn get(&self, module: &Embedded, kernel: &str) -> CudaResult<CudaFunction> {
        let mut cache = self.functions.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(f) = cache.get(kernel) {
            return Ok(f.clone());
        }
        let m = &self.modules[module.name];
        let f = m.load_function(kernel).map_err(|source| CudaError::MissingKernel {
            module: module.name,
            kernel: kernel.to_string(),
            source,
        })?;
        cache.insert(kernel.to_string(), f.clone());
        Ok(f)
    }
}
