//! Kernels that read page-locked host memory through its device address instead of a copy.
//!
//! A host-to-device copy runs on a copy engine, and a small one queued behind a large copy
//! from another stream waits for it: in a GPU prefill, a layer's routing indices (32 KiB)
//! waited for the next layer's 5.8 GB weight copy, so the layer computed one copy late
//! (session 28). Read by the SMs over PCIe, the same bytes arrive at once.

use std::mem::size_of;

use cudarc::driver::{DeviceRepr, PushKernelArg, ValidAsZeroBits};

use super::error::{launch_err, shape, CudaResult};
use super::linear::elem_config;
use super::modules::HYBRID_OPS;
use super::runtime::{DeviceBuf, GpuStream, PinnedBuf};

impl GpuStream {
    /// Queues `dst = src` (same length, elements of a multiple of 4 bytes) as a kernel that
    /// reads `src` over PCIe; returns at once. Host writes to `src` wait for it.
    pub fn copy_from_pinned_mapped<T: DeviceRepr + ValidAsZeroBits>(
        &self,
        src: &PinnedBuf<T>,
        dst: &mut DeviceBuf<T>,
    ) -> CudaResult<()> {
        const OP: &str = "copy_from_pinned_mapped";
        if src.len() != dst.len() || !size_of::<T>().is_multiple_of(4) {
            return Err(shape(
                OP,
                format!(
                    "{} host elements into {} of {} bytes each (need equal lengths, 4-byte words)",
                    src.len(),
                    dst.len(),
                    size_of::<T>()
                ),
            ));
        }
        let words = src.len() * size_of::<T>() / 4;
        if words == 0 {
            return Ok(());
        }
        let kernel = "kt_copy_u32";
        let f = self.kernels.get(&HYBRID_OPS, kernel)?;
        let (from, n) = (src.device_ptr()?, words as i64);
        let mut b = self.stream.launch_builder(&f);
        b.arg(&from).arg(&mut dst.slice).arg(&n);
        // SAFETY: matches kt_copy_u32 (src, dst, n): `from` is the device address of src's
        // page-locked block of `words` 4-byte words (its length times its element size), dst
        // holds as many; src lives past the launch (its drop waits for the device) and host
        // writes to it wait for the event recorded next.
        unsafe { b.launch(elem_config(words)) }
            .map(drop)
            .map_err(launch_err(kernel, || format!("{words} words")))?;
        src.mark_copies(&self.stream)
    }

    /// Queues `acc += src` (same length), `src` read over PCIe from page-locked host memory
    /// as [`Self::copy_from_pinned_mapped`] does; returns at once. The sums of
    /// [`Self::add_f32`] (one f32 add each).
    pub fn add_f32_from_pinned(
        &self,
        acc: &mut DeviceBuf<f32>,
        src: &PinnedBuf<f32>,
    ) -> CudaResult<()> {
        const OP: &str = "add_f32_from_pinned";
        if acc.len() != src.len() {
            return Err(shape(
                OP,
                format!("acc has {} elements, host x {}", acc.len(), src.len()),
            ));
        }
        let n = acc.len();
        if n == 0 {
            return Ok(());
        }
        let kernel = "kt_add_f32_f32";
        let f = self.kernels.get(&HYBRID_OPS, kernel)?;
        let (x, nn) = (src.device_ptr()?, n as i64);
        let mut b = self.stream.launch_builder(&f);
        b.arg(&mut acc.slice).arg(&x).arg(&nn);
        // SAFETY: matches kt_add_f32_f32 (acc, x, n): `x` is the device address of src's
        // page-locked block of n f32, acc holds n; src lives past the launch and host writes
        // to it wait for the event recorded next.
        unsafe { b.launch(elem_config(n)) }
            .map(drop)
            .map_err(launch_err(kernel, || format!("n {n}")))?;
        src.mark_copies(&self.stream)
    }
}
