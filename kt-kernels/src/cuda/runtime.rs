//! The GPU runtime: one context per device, streams, events, device and pinned host buffers.
//! A thin layer over cudarc that turns its errors into [`CudaError`] and keeps the loaded
//! kernels with the context.

use std::sync::Arc;

use cudarc::driver::{
    sys, CudaContext, CudaEvent, CudaSlice, CudaStream, DeviceRepr, PinnedHostSlice,
    ValidAsZeroBits,
};

use super::error::{driver, shape, CudaError, CudaResult};
use super::modules::Kernels;

/// What the kernels' launch heuristics need to know about the device.
#[derive(Clone, Debug)]
pub struct DeviceInfo {
    pub ordinal: usize,
    pub name: String,
    /// Compute capability (major, minor).
    pub compute_capability: (i32, i32),
    pub multiprocessors: usize,
    pub total_memory: usize,
}

/// One device: its (primary) context, the embedded kernels loaded into it and a default stream.
pub struct Gpu {
    ctx: Arc<CudaContext>,
    kernels: Arc<Kernels>,
    info: Arc<DeviceInfo>,
    stream: GpuStream,
}

impl Gpu {
    /// Opens device `ordinal` and loads the kernels. On a machine with no NVIDIA driver this
    /// is [`CudaError::NoDriver`], with no device of that ordinal [`CudaError::NoDevice`]:
    /// never a crash.
    pub fn new(ordinal: usize) -> CudaResult<Gpu> {
        // SAFETY: only tries to dlopen libcuda under its usual names and drops the handle;
        // no symbol of it is called.
        if !unsafe { cudarc::driver::sys::is_culib_present() } {
            return Err(CudaError::NoDriver);
        }
        let count = CudaContext::device_count().map_err(driver("cuDeviceGetCount"))?;
        let count = usize::try_from(count).unwrap_or(0);
        if ordinal >= count {
            return Err(CudaError::NoDevice { ordinal, count });
        }
        let ctx = CudaContext::new(ordinal).map_err(driver("cuDevicePrimaryCtxRetain"))?;
        let info = DeviceInfo {
            ordinal,
            name: ctx.name().map_err(driver("cuDeviceGetName"))?,
            compute_capability: ctx
                .compute_capability()
                .map_err(driver("cuDeviceGetAttribute"))?,
            multiprocessors: ctx
                .attribute(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
                .map_err(driver("cuDeviceGetAttribute"))? as usize,
            total_memory: ctx.total_mem().map_err(driver("cuDeviceTotalMem"))?,
        };
        let kernels = Arc::new(Kernels::load(&ctx)?);
        let info = Arc::new(info);
        // The context's default stream: while it is the only one, cudarc skips its per-buffer
        // cross-stream event tracking (two driver calls per buffer argument of every launch,
        // which made small launches host-bound); a second stream turns it on, keeping buffers
        // shared between streams safe.
        let stream = GpuStream {
            stream: ctx.default_stream(),
            kernels: kernels.clone(),
            info: info.clone(),
        };
        Ok(Gpu {
            ctx,
            kernels,
            info,
            stream,
        })
    }

    pub fn info(&self) -> &DeviceInfo {
        &self.info
    }

    /// The context's default stream; enough for work that runs in order.
    pub fn stream(&self) -> &GpuStream {
        &self.stream
    }

    /// Another stream of this device, for work that may overlap.
    pub fn new_stream(&self) -> CudaResult<GpuStream> {
        Ok(GpuStream {
            stream: self.ctx.new_stream().map_err(driver("cuStreamCreate"))?,
            kernels: self.kernels.clone(),
            info: self.info.clone(),
        })
    }

    /// A page-locked host buffer of `len` zeroed elements (the source or target of
    /// asynchronous copies).
    pub fn alloc_pinned<T: DeviceRepr + ValidAsZeroBits>(
        &self,
        len: usize,
    ) -> CudaResult<PinnedBuf<T>> {
        // SAFETY: flags 0 (cached, not write-combined: the host reads it back). The memory is
        // uninitialised until the write_bytes below, and nothing reads it before.
        let mut slice = unsafe { self.ctx.alloc_pinned_with_flags::<T>(len, 0) }
            .map_err(driver("cuMemHostAlloc"))?;
        let ptr = slice.as_mut_ptr().map_err(driver("cuEventSynchronize"))?;
        // SAFETY: `ptr` points to `len` elements of T just allocated; all-zero bits are a
        // valid T (ValidAsZeroBits).
        unsafe { std::ptr::write_bytes(ptr, 0, len) };
        Ok(PinnedBuf { slice })
    }
}

/// A queue of work on one device. Every kernel wrapper is a method of a stream; work on one
/// stream runs in order.
pub struct GpuStream {
    pub(crate) stream: Arc<CudaStream>,
    pub(crate) kernels: Arc<Kernels>,
    pub(crate) info: Arc<DeviceInfo>,
}

impl GpuStream {
    pub fn info(&self) -> &DeviceInfo {
        &self.info
    }

    /// Waits for all work queued so far; asynchronous kernel faults surface here.
    pub fn synchronize(&self) -> CudaResult<()> {
        self.stream
            .synchronize()
            .map_err(driver("cuStreamSynchronize"))
    }

    /// A device buffer of `len` zeroed elements.
    pub fn alloc_zeroed<T: DeviceRepr + ValidAsZeroBits>(
        &self,
        len: usize,
    ) -> CudaResult<DeviceBuf<T>> {
        let slice = self
            .stream
            .alloc_zeros::<T>(len)
            .map_err(driver("cuMemAlloc"))?;
        Ok(DeviceBuf { slice })
    }

    /// A device buffer holding a copy of `host`.
    pub fn upload<T: DeviceRepr>(&self, host: &[T]) -> CudaResult<DeviceBuf<T>> {
        let slice = self
            .stream
            .clone_htod(host)
            .map_err(driver("cuMemcpyHtoD"))?;
        Ok(DeviceBuf { slice })
    }

    /// Copies `host` into `dst` (same length).
    pub fn copy_from_host<T: DeviceRepr>(
        &self,
        host: &[T],
        dst: &mut DeviceBuf<T>,
    ) -> CudaResult<()> {
        check_len("copy_from_host", host.len(), dst.len())?;
        self.stream
            .memcpy_htod(host, &mut dst.slice)
            .map_err(driver("cuMemcpyHtoD"))
    }

    /// Copies `buf` back to the host (waits for the stream).
    pub fn download<T: DeviceRepr>(&self, buf: &DeviceBuf<T>) -> CudaResult<Vec<T>> {
        self.stream
            .clone_dtoh(&buf.slice)
            .map_err(driver("cuMemcpyDtoH"))
    }

    /// Queues a copy from pinned host memory to `dst` (same length); returns at once.
    pub fn copy_from_pinned<T: DeviceRepr + ValidAsZeroBits>(
        &self,
        src: &PinnedBuf<T>,
        dst: &mut DeviceBuf<T>,
    ) -> CudaResult<()> {
        check_len("copy_from_pinned", src.len(), dst.len())?;
        self.stream
            .memcpy_htod(&src.slice, &mut dst.slice)
            .map_err(driver("cuMemcpyHtoDAsync"))
    }

    /// Queues a copy from `src` into pinned host memory (same length); the data is there once
    /// the stream is synchronized (reading the buffer waits for it).
    pub fn copy_to_pinned<T: DeviceRepr + ValidAsZeroBits>(
        &self,
        src: &DeviceBuf<T>,
        dst: &mut PinnedBuf<T>,
    ) -> CudaResult<()> {
        check_len("copy_to_pinned", src.len(), dst.len())?;
        self.stream
            .memcpy_dtoh(&src.slice, &mut dst.slice)
            .map_err(driver("cuMemcpyDtoHAsync"))
    }

    /// Records an event (with timing) at the current end of the stream.
    pub fn record_event(&self) -> CudaResult<GpuEvent> {
        let event = self
            .stream
            .record_event(Some(sys::CUevent_flags::CU_EVENT_DEFAULT))
            .map_err(driver("cuEventRecord"))?;
        Ok(GpuEvent { event })
    }

    /// Makes later work on this stream wait for `event` (recorded on any stream).
    pub fn wait_event(&self, event: &GpuEvent) -> CudaResult<()> {
        self.stream
            .wait(&event.event)
            .map_err(driver("cuStreamWaitEvent"))
    }
}

/// A point in a stream's work, for ordering streams and timing.
pub struct GpuEvent {
    event: CudaEvent,
}

impl GpuEvent {
    pub fn synchronize(&self) -> CudaResult<()> {
        self.event
            .synchronize()
            .map_err(driver("cuEventSynchronize"))
    }

    /// Milliseconds from `self` to the later event `end` (waits for `end`).
    pub fn elapsed_ms(&self, end: &GpuEvent) -> CudaResult<f32> {
        end.synchronize()?;
        self.event
            .elapsed_ms(&end.event)
            .map_err(driver("cuEventElapsedTime"))
    }
}

/// Device memory of `len` elements of `T`, freed on drop.
pub struct DeviceBuf<T> {
    pub(crate) slice: CudaSlice<T>,
}

impl<T> DeviceBuf<T> {
    pub fn len(&self) -> usize {
        self.slice.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slice.is_empty()
    }
}

/// Page-locked host memory, freed on drop.
pub struct PinnedBuf<T> {
    slice: PinnedHostSlice<T>,
}

impl<T: ValidAsZeroBits> PinnedBuf<T> {
    pub fn len(&self) -> usize {
        self.slice.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slice.is_empty()
    }

    /// The contents, after every queued copy into it finished.
    pub fn as_slice(&self) -> CudaResult<&[T]> {
        self.slice.as_slice().map_err(driver("cuEventSynchronize"))
    }

    /// The contents for writing, after every queued copy out of it finished.
    pub fn as_mut_slice(&mut self) -> CudaResult<&mut [T]> {
        self.slice
            .as_mut_slice()
            .map_err(driver("cuEventSynchronize"))
    }
}

pub(crate) fn check_len(op: &'static str, src: usize, dst: usize) -> CudaResult<()> {
    if src != dst {
        return Err(shape(
            op,
            format!("source has {src} elements, destination {dst}"),
        ));
    }
    Ok(())
}
