//! The GPU runtime: one context per device, streams, events, device and pinned host buffers.
//! A thin layer over cudarc that turns its errors into [`CudaError`] and keeps the loaded
//! kernels with the context.

use std::ffi::c_void;
use std::mem::ManuallyDrop;
use std::mem::MaybeUninit;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use cudarc::driver::{
    sys, CudaContext, CudaEvent, CudaFunction, CudaGraph, CudaSlice, CudaStream, DevicePtr,
    DeviceRepr, DriverError, LaunchConfig, PinnedHostSlice, ValidAsZeroBits,
};

use super::error::{driver, shape, CudaError, CudaResult};
use super::exclusive::device_exclusive;
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
    /// Bytes of the L2 cache.
    pub l2_bytes: usize,
}

/// One device: its (primary) context, the embedded kernels loaded into it and a stream of its own.
pub struct Gpu {
    ctx: Arc<CudaContext>,
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
            l2_bytes: ctx
                .attribute(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_L2_CACHE_SIZE)
                .map_err(driver("cuDeviceGetAttribute"))? as usize,
        };
        let kernels = Arc::new({
            let _exclusive = device_exclusive();
            Kernels::load(&ctx)?
        });
        let info = Arc::new(info);
        // A stream of this `Gpu`'s own, not the context's legacy default stream: every `Gpu`
        // of the process opens the same primary context and so would share that one, and the
        // hybrid executor queues work behind waits on host flags, so one model's waits would
        // hold up another's work. (Session 13's deadlocks of two models, 6 of 16 runs, were
        // on that shared stream; a stream each still deadlocked, which `device_exclusive`
        // ended.)
        //
        // SAFETY: with tracking off cudarc no longer inserts its per-buffer cross-stream
        // events (two driver calls per buffer argument of every launch, which made small
        // launches host-bound). Work that shares buffers between this stream and another
        // (every other stream comes from `GpuStream::new_untracked_stream`) orders them
        // itself with recorded events: the graph capture's streams (forked and joined by
        // events), the GPU prefill experts' copy stream (it allocates the expert slots on
        // this stream, synchronized, before copying into them, and synchronizes before
        // freeing them) and `Self::new_stream`'s callers (see there).
        unsafe { ctx.disable_event_tracking() };
        let stream = GpuStream {
            stream: ctx.new_stream().map_err(driver("cuStreamCreate"))?,
            kernels,
            info: info.clone(),
        };
        Ok(Gpu { ctx, info, stream })
    }

    pub fn info(&self) -> &DeviceInfo {
        &self.info
    }

    /// This `Gpu`'s stream (non-blocking, its own: not shared with another `Gpu` of the
    /// process); enough for work that runs in order.
    pub fn stream(&self) -> &GpuStream {
        &self.stream
    }

    /// Another stream of this device, for work that may overlap. Untracked: work on it that
    /// touches a buffer also used on another stream must be ordered with events
    /// ([`GpuStream::record_event`], [`GpuStream::wait_event`]).
    pub fn new_stream(&self) -> CudaResult<GpuStream> {
        self.stream.new_untracked_stream()
    }

    /// A page-locked host buffer of `len` zeroed elements (the source or target of
    /// asynchronous copies).
    pub fn alloc_pinned<T: DeviceRepr + ValidAsZeroBits>(
        &self,
        len: usize,
    ) -> CudaResult<PinnedBuf<T>> {
        let _exclusive = device_exclusive();
        // SAFETY: flags 0 (cached, not write-combined: the host reads it back). The memory is
        // uninitialised until the write_bytes below, and nothing reads it before.
        let mut slice = unsafe { self.ctx.alloc_pinned_with_flags::<T>(len, 0) }
            .map_err(driver("cuMemHostAlloc"))?;
        let ptr = slice.as_mut_ptr().map_err(driver("cuEventSynchronize"))?;
        // SAFETY: `ptr` points to `len` elements of T just allocated, which nothing else
        // reads or writes yet; all-zero bits are a valid T (ValidAsZeroBits).
        unsafe { zero_on_all_cores(ptr.cast::<u8>(), len * std::mem::size_of::<T>()) };
        let host = ptr as usize;
        // Spin-waited (not blocking-sync) like the stream's events: the hybrid decode reads
        // these buffers once per layer and a sleeping wait costs tens of microseconds.
        let copies_done = self
            .ctx
            .new_event(Some(sys::CUevent_flags::CU_EVENT_DISABLE_TIMING))
            .map_err(driver("cuEventCreate"))?;
        Ok(PinnedBuf {
            slice: ManuallyDrop::new(slice),
            copies_done,
            host,
        })
    }

    /// A counter in pinned host memory that streams can wait on ([`GpuStream::wait_flag`]):
    /// the host queues work behind it and releases it by raising the counter. Starts at 0.
    /// A device without stream memory operations fails at the first wait. Refused (a
    /// `CUDA_ERROR_NOT_SUPPORTED` driver error) where the device has no stream-ordered
    /// allocator: there freeing a buffer synchronizes its stream, which would wait forever
    /// for a flag the host raises only later.
    pub fn host_flag(&self) -> CudaResult<HostFlag> {
        const POOLS: &str = "cuDeviceGetAttribute(MEMORY_POOLS_SUPPORTED)";
        let pools = self
            .ctx
            .attribute(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MEMORY_POOLS_SUPPORTED)
            .map_err(driver(POOLS))?;
        if pools == 0 {
            return Err(CudaError::Driver {
                op: POOLS,
                source: cudarc::driver::DriverError(sys::cudaError_enum::CUDA_ERROR_NOT_SUPPORTED),
            });
        }
        let buf = self.alloc_pinned::<u32>(1)?;
        let mut dev: sys::CUdeviceptr = 0;
        // SAFETY: `buf.host` is the start of a live cuMemHostAlloc block of this context;
        // the driver writes its device address into `dev`.
        unsafe { sys::cuMemHostGetDevicePointer_v2(&mut dev, buf.host as *mut _, 0) }
            .result()
            .map_err(driver("cuMemHostGetDevicePointer"))?;
        Ok(HostFlag { buf, dev })
    }
}

/// See [`Gpu::host_flag`]. The counter compares cyclically (as `cuStreamWaitValue32`'s
/// "greater or equal" does), so it may wrap.
pub struct HostFlag {
    buf: PinnedBuf<u32>,
    dev: sys::CUdeviceptr,
}

impl HostFlag {
    /// The counter's device address, for kernels that wait on it or raise it themselves.
    pub(crate) fn device_ptr(&self) -> sys::CUdeviceptr {
        self.dev
    }

    fn cell(&self) -> &AtomicU32 {
        // SAFETY: the buffer holds one u32, 4-byte aligned (page-locked allocations are page
        // aligned), alive as long as self; no copy ever targets it, so the host and the
        // device's wait are its only users, and the host side goes through this atomic.
        unsafe { &*(self.buf.host as *const AtomicU32) }
    }

    /// Sets the counter to `value`, after every write this thread made before (release):
    /// work waiting for `value` or less may start and sees those writes.
    pub fn raise(&self, value: u32) {
        self.cell().store(value, Ordering::Release);
    }

    pub fn value(&self) -> u32 {
        self.cell().load(Ordering::Acquire)
    }

    /// Spins until the counter reaches `value` (compared cyclically), the device's writes
    /// before it ([`GpuStream::write_flag`]) visible (acquire). A driver error
    /// `CUDA_ERROR_TIMEOUT` after `timeout`: the work that should raise it failed or hangs.
    pub fn wait_at_least(&self, value: u32, timeout: Duration) -> CudaResult<()> {
        let start = Instant::now();
        let mut spins = 0u32;
        while (self.value().wrapping_sub(value) as i32) < 0 {
            std::hint::spin_loop();
            spins = spins.wrapping_add(1);
            if spins.is_multiple_of(4096) && start.elapsed() > timeout {
                return Err(CudaError::Driver {
                    op: "host flag wait",
                    source: DriverError(sys::cudaError_enum::CUDA_ERROR_TIMEOUT),
                });
            }
        }
        Ok(())
    }
}

/// A queue of work on one device. Every kernel wrapper is a method of a stream; work on one
/// stream runs in order.
pub struct GpuStream {
    pub(crate) stream: Arc<CudaStream>,
    pub(crate) kernels: Arc<Kernels>,
    pub(crate) info: Arc<DeviceInfo>,
}

/// How a kernel that supports it is launched after the kernel before it on its stream.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LaunchOrder {
    /// An ordinary launch: the kernel starts once the one before it has finished.
    #[default]
    Serial,
    /// A programmatic dependent launch (compute capability 9.0+; elsewhere, or with `KT_PDL=0`
    /// in the environment, an ordinary launch): the kernel's blocks may start while the kernel
    /// before it runs, do what does not depend on it (the wrapper says what: e.g. load
    /// weights), and wait on the device for its end before reading its results or writing
    /// anything. The caller vouches that the kernel before does not write what the wrapper
    /// names as read early. Results are the same bits as with [`LaunchOrder::Serial`].
    Programmatic,
}

impl GpuStream {
    pub fn info(&self) -> &DeviceInfo {
        &self.info
    }

    /// Whether a launch in `order` is programmatic on this device (see [`LaunchOrder`]).
    pub(crate) fn programmatic(&self, order: LaunchOrder) -> bool {
        order == LaunchOrder::Programmatic
            && self.info.compute_capability.0 >= 9
            && programmatic_launch_enabled()
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

    /// Queues a copy of `src` into `dst` on the device (same length); capturable.
    pub fn copy_device<T: DeviceRepr>(
        &self,
        src: &DeviceBuf<T>,
        dst: &mut DeviceBuf<T>,
    ) -> CudaResult<()> {
        check_len("copy_device", src.len(), dst.len())?;
        self.stream
            .memcpy_dtod(&src.slice, &mut dst.slice)
            .map_err(driver("cuMemcpyDtoDAsync"))
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
            .memcpy_htod(&*src.slice, &mut dst.slice)
            .map_err(driver("cuMemcpyHtoDAsync"))?;
        src.mark_copies(&self.stream)
    }

    /// Queues a copy of the `len` elements of pinned `src` from `src_at` on into `dst` from
    /// `dst_at` on; returns at once (a part of a buffer, e.g. some experts of a slab).
    pub fn copy_from_pinned_part<T: DeviceRepr + ValidAsZeroBits>(
        &self,
        src: &PinnedBuf<T>,
        src_at: usize,
        dst: &mut DeviceBuf<T>,
        dst_at: usize,
        len: usize,
    ) -> CudaResult<()> {
        let fits = |at: usize, total: usize| at.checked_add(len).is_some_and(|end| end <= total);
        if !fits(src_at, src.len()) || !fits(dst_at, dst.len()) {
            return Err(shape(
                "copy_from_pinned_part",
                format!(
                    "{len} elements from {src_at} of a {}-element host buffer to {dst_at} of {}",
                    src.len(),
                    dst.len()
                ),
            ));
        }
        if len == 0 {
            return Ok(());
        }
        // SAFETY: `host` holds `src.len() >= src_at + len` initialized page-locked elements
        // that live as long as `src`; host writes to it wait for `copies_done`, recorded
        // below after the copy, so the driver's asynchronous read sees them unchanged.
        let part = unsafe { std::slice::from_raw_parts((src.host as *const T).add(src_at), len) };
        let mut to = dst.slice.slice_mut(dst_at..dst_at + len);
        self.stream
            .memcpy_htod(part, &mut to)
            .map_err(driver("cuMemcpyHtoDAsync"))?;
        src.mark_copies(&self.stream)
    }

    /// Queues a copy from `src` into pinned host memory (same length); returns at once.
    /// Reading the buffer ([`PinnedBuf::as_slice`]) waits for the copy.
    pub fn copy_to_pinned<T: DeviceRepr + ValidAsZeroBits>(
        &self,
        src: &DeviceBuf<T>,
        dst: &mut PinnedBuf<T>,
    ) -> CudaResult<()> {
        check_len("copy_to_pinned", src.len(), dst.len())?;
        self.stream
            .memcpy_dtoh(&src.slice, &mut *dst.slice)
            .map_err(driver("cuMemcpyDtoHAsync"))?;
        dst.mark_copies(&self.stream)
    }

    /// Makes later work on this stream wait until `flag` reaches `value` (compared
    /// cyclically). The host must raise it eventually: until then the stream, and anything
    /// that synchronizes with it, waits. Where other threads of the process use the GPU,
    /// hold [`device_exclusive`] from before the first such wait until every one queued
    /// is released (see its module for the deadlock it prevents).
    pub fn wait_flag(&self, flag: &HostFlag, value: u32) -> CudaResult<()> {
        let geq = sys::CUstreamWaitValue_flags::CU_STREAM_WAIT_VALUE_GEQ as u32;
        // SAFETY: `flag.dev` is the device address of a live page-locked u32 of this
        // context (HostFlag keeps it alive; the stream's users keep the flag alive while
        // work waits on it, see the doc).
        unsafe { sys::cuStreamWaitValue32_v2(self.stream.cu_stream(), flag.dev, value, geq) }
            .result()
            .map_err(driver("cuStreamWaitValue32"))
    }

    /// Makes the stream set `flag` to `value` once the work queued before is done, after a
    /// system-wide fence (so a host that sees the value sees that work's copies to pinned
    /// memory). Capturable into a graph.
    pub fn write_flag(&self, flag: &HostFlag, value: u32) -> CudaResult<()> {
        let fenced = sys::CUstreamWriteValue_flags::CU_STREAM_WRITE_VALUE_DEFAULT as u32;
        // SAFETY: `flag.dev` is the device address of a live page-locked u32 of this context
        // (HostFlag keeps it alive; the caller keeps the flag alive while the write is queued
        // or in a graph that may run).
        unsafe { sys::cuStreamWriteValue32_v2(self.stream.cu_stream(), flag.dev, value, fenced) }
            .result()
            .map_err(driver("cuStreamWriteValue32"))
    }

    /// Queues a copy of `src` into pinned `dst` (same length) that marks nothing: no event
    /// of `dst` is recorded, so it may be captured into a graph.
    ///
    /// # Safety
    /// [`PinnedBuf::as_slice`] does not wait for this copy: the caller orders every host
    /// access to `dst` with the copy by other means (a [`HostFlag`] the stream writes after
    /// it, for reads; for writes, a flag the stream waits for before it), and keeps both
    /// buffers alive while the copy is queued or in a graph that may run.
    pub unsafe fn copy_to_pinned_unordered<T: DeviceRepr + ValidAsZeroBits>(
        &self,
        src: &DeviceBuf<T>,
        dst: &mut PinnedBuf<T>,
    ) -> CudaResult<()> {
        check_len("copy_to_pinned_unordered", src.len(), dst.len())?;
        let (ptr, _read) = src.slice.device_ptr(&self.stream);
        // SAFETY: dst.host is the start of dst.len() page-locked elements, src holds as many
        // (checked); the caller's contract above covers the host's accesses and lifetimes.
        unsafe {
            sys::cuMemcpyDtoHAsync_v2(
                dst.host as *mut _,
                ptr,
                src.len() * std::mem::size_of::<T>(),
                self.stream.cu_stream(),
            )
        }
        .result()
        .map_err(driver("cuMemcpyDtoHAsync"))
    }

    /// Queues a copy of pinned `src` into `dst` (same length) that marks nothing (see
    /// [`Self::copy_to_pinned_unordered`]).
    ///
    /// # Safety
    /// As [`Self::copy_to_pinned_unordered`]: the caller orders the host's writes of `src`
    /// with the copy (the stream waits for a flag the host raises after them).
    pub unsafe fn copy_from_pinned_unordered<T: DeviceRepr + ValidAsZeroBits>(
        &self,
        src: &PinnedBuf<T>,
        dst: &mut DeviceBuf<T>,
    ) -> CudaResult<()> {
        check_len("copy_from_pinned_unordered", src.len(), dst.len())?;
        let (ptr, _write) = dst.slice.device_ptr(&self.stream);
        // SAFETY: as copy_to_pinned_unordered, the other way.
        unsafe {
            sys::cuMemcpyHtoDAsync_v2(
                ptr,
                src.host as *const _,
                src.len() * std::mem::size_of::<T>(),
                self.stream.cu_stream(),
            )
        }
        .result()
        .map_err(driver("cuMemcpyHtoDAsync"))
    }

    /// Another stream of this stream's device whose work overlaps this one's (non-blocking).
    /// Untracked, as every stream of a [`Gpu`] (it turns cudarc's per-buffer cross-stream
    /// tracking off; the hybrid decode relies on that for its launch rate): work that shares
    /// a buffer with another stream orders the two with events.
    pub fn new_untracked_stream(&self) -> CudaResult<GpuStream> {
        Ok(GpuStream {
            stream: self
                .stream
                .context()
                .new_stream()
                .map_err(driver("cuStreamCreate"))?,
            kernels: self.kernels.clone(),
            info: self.info.clone(),
        })
    }

    /// Starts capturing this stream's work into a graph instead of running it (this thread
    /// may make no call that is unsafe during a capture, such as allocating). The hybrid
    /// executor captures on a stream of [`GpuStream::new_untracked_stream`], so that its own
    /// stream stays usable. Ends with [`Self::end_capture`], also on error
    /// paths (until then the stream is unusable).
    pub fn begin_capture(&self) -> CudaResult<()> {
        self.stream
            .begin_capture(sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
            .map_err(driver("cuStreamBeginCapture"))
    }

    /// Ends a capture begun by [`Self::begin_capture`] and instantiates what it recorded.
    pub fn end_capture(&self) -> CudaResult<GpuGraph> {
        let graph = self
            .stream
            .end_capture(sys::CUgraphInstantiate_flags(0))
            .map_err(driver("cuStreamEndCapture"))?;
        graph
            .map(|graph| GpuGraph {
                graph: ManuallyDrop::new(graph),
            })
            .ok_or_else(|| {
                shape(
                    "end_capture",
                    "the capture recorded no work (or the stream was not capturing)",
                )
            })
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

/// A captured, instantiated CUDA graph ([`GpuStream::end_capture`]): the recorded work, with
/// the buffers and values it was captured with, replayed by each launch.
pub struct GpuGraph {
    /// Dropped under [`device_exclusive`].
    graph: ManuallyDrop<CudaGraph>,
}

impl Drop for GpuGraph {
    fn drop(&mut self) {
        let _exclusive = device_exclusive();
        // SAFETY: `graph` is dropped here only, once, and not used after.
        unsafe { ManuallyDrop::drop(&mut self.graph) };
    }
}

impl GpuGraph {
    /// Queues one replay on `stream` (any stream of the context, the default one too).
    pub fn launch(&self, stream: &GpuStream) -> CudaResult<()> {
        // SAFETY: the executable graph is alive (self); the buffers and flags it names are
        // kept alive by its owner as long as it may be launched (see the capture's users).
        unsafe { sys::cuGraphLaunch(self.graph.cu_graph_exec(), stream.stream.cu_stream()) }
            .result()
            .map_err(driver("cuGraphLaunch"))
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
///
/// cudarc's own per-buffer event is recorded only while its context tracks several streams
/// (never: [`Gpu::new`] turns tracking off), so [`PinnedHostSlice::as_slice`] would not wait for a
/// queued copy. `copies_done` is ours: recorded after every copy into or out of the buffer
/// on the stream that queued it, and waited for before the host reads or writes. One event:
/// copies queued on two streams at once are covered for the later stream only (order the
/// streams with an event, as for any buffer they share).
pub struct PinnedBuf<T> {
    /// Dropped under [`device_exclusive`] (freeing page-locked memory waits for the device).
    slice: ManuallyDrop<PinnedHostSlice<T>>,
    copies_done: CudaEvent,
    /// The host address of the first element (for the unsynchronized views).
    host: usize,
}

impl<T> Drop for PinnedBuf<T> {
    fn drop(&mut self) {
        let _exclusive = device_exclusive();
        // SAFETY: `slice` is dropped here only, once, and not used after.
        unsafe { ManuallyDrop::drop(&mut self.slice) };
    }
}

impl<T> PinnedBuf<T> {
    /// Marks the end of the copies `stream` queued so far on this buffer.
    pub(crate) fn mark_copies(&self, stream: &CudaStream) -> CudaResult<()> {
        self.copies_done
            .record(stream)
            .map_err(driver("cuEventRecord"))
    }

    fn wait_copies(&self) -> CudaResult<()> {
        self.copies_done
            .synchronize()
            .map_err(driver("cuEventSynchronize"))
    }
}

impl<T: ValidAsZeroBits> PinnedBuf<T> {
    /// The device address of the first element: kernels read or write the host memory
    /// through it directly (no copy).
    pub(crate) fn device_ptr(&self) -> CudaResult<sys::CUdeviceptr> {
        let mut dev: sys::CUdeviceptr = 0;
        // SAFETY: `host` is the start of a live cuMemHostAlloc block of this buffer's
        // context; the driver writes its device address into `dev`.
        unsafe { sys::cuMemHostGetDevicePointer_v2(&mut dev, self.host as *mut _, 0) }
            .result()
            .map_err(driver("cuMemHostGetDevicePointer"))?;
        Ok(dev)
    }

    pub fn len(&self) -> usize {
        self.slice.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slice.is_empty()
    }

    /// The contents, after every queued copy into it finished (on any stream).
    pub fn as_slice(&self) -> CudaResult<&[T]> {
        self.wait_copies()?;
        self.slice.as_slice().map_err(driver("cuEventSynchronize"))
    }

    /// The contents for writing, after every queued copy into or out of it finished.
    pub fn as_mut_slice(&mut self) -> CudaResult<&mut [T]> {
        self.wait_copies()?;
        self.slice
            .as_mut_slice()
            .map_err(driver("cuEventSynchronize"))
    }

    /// The contents without waiting: for a caller that queued copies behind work the host
    /// has not released yet (so this buffer's own event would wait for them) and waited for
    /// the copies it needs by another event.
    ///
    /// # Safety
    /// No copy into the buffer may run while the slice lives, and every copy into it whose
    /// data the caller reads must have finished.
    pub unsafe fn as_slice_unsynced(&self) -> &[T] {
        // SAFETY: `host` is the start of `len` initialized elements (zeroed at allocation)
        // alive as long as self; the caller excludes concurrent device writes.
        unsafe { std::slice::from_raw_parts(self.host as *const T, self.slice.len()) }
    }

    /// [`Self::as_slice_unsynced`] for writing.
    ///
    /// # Safety
    /// No copy into or out of the buffer may run while the slice lives.
    pub unsafe fn as_mut_slice_unsynced(&mut self) -> &mut [T] {
        // SAFETY: as as_slice_unsynced, and &mut self excludes other host views.
        unsafe { std::slice::from_raw_parts_mut(self.host as *mut T, self.slice.len()) }
    }
}

/// A bulk tensor copy (TMA) descriptor: the driver's 128-byte `CUtensorMap`, passed by value
/// to a kernel's `const __grid_constant__ KtTensorMap` parameter (`cuda/include/kt_tma.cuh`).
/// It holds a device address: build it for each launch from the buffer it describes.
#[repr(transparent)]
#[derive(Clone, Copy)]
pub(crate) struct TensorMap(sys::CUtensorMap);

// SAFETY: plain bytes (16 u64, no pointers Rust follows) that the kernel parameter of the same
// size reads by value; the driver copies them into the launch's parameter space.
unsafe impl DeviceRepr for TensorMap {}

impl TensorMap {
    /// All zeros, for a kernel told not to read its map.
    pub(crate) fn unused() -> TensorMap {
        TensorMap(sys::CUtensorMap { opaque: [0; 16] })
    }
}

/// Bytes of one box row under the 128-byte swizzle (the swizzle's span).
const SWIZZLE_128B_ROW: usize = 128;

impl GpuStream {
    /// A map over `buf` as a row-major bf16 matrix of `cols` columns, copied in boxes of
    /// `box_rows` rows x 64 columns (128 bytes) stored with the 128-byte swizzle, the layout of
    /// `kt_swz128`; boxes past the last row read as zeros. Row coordinates must fit the
    /// kernel's int: at most `i32::MAX` rows.
    pub(crate) fn tensor_map_bf16_swizzled(
        &self,
        buf: &DeviceBuf<half::bf16>,
        cols: usize,
        box_rows: u32,
    ) -> CudaResult<TensorMap> {
        const OP: &str = "tensor_map_bf16_swizzled";
        let elem = std::mem::size_of::<half::bf16>();
        let box_cols = SWIZZLE_128B_ROW / elem;
        let rows = buf.len().checked_div(cols).unwrap_or(0);
        if cols < box_cols
            || !(cols * elem).is_multiple_of(16)
            || rows == 0
            || rows * cols != buf.len()
            || rows > i32::MAX as usize
            || !(1..=256).contains(&box_rows)
        {
            return Err(shape(
                OP,
                format!(
                    "{} elements as rows of {cols} (need whole rows, at most {} of them, of a multiple of 16 bytes and at least {box_cols} columns), boxes of {box_rows} rows (1 to 256)",
                    buf.len(),
                    i32::MAX
                ),
            ));
        }
        let (ptr, _read) = buf.slice.device_ptr(&self.stream);
        let dims = [cols as u64, rows as u64];
        let strides = [(cols * elem) as u64]; // bytes between rows (the outer dimension)
        let boxes = [box_cols as u32, box_rows];
        let element_strides = [1u32, 1];
        let mut map = TensorMap::unused();
        // SAFETY: `map` is a writable CUtensorMap; the arrays hold rank (2) entries for the
        // dimensions, boxes and element strides and rank - 1 for the strides; the address is
        // the start of `buf`, which holds rows x cols elements (checked). The call only
        // encodes the descriptor; nothing is read or written on the device.
        unsafe {
            sys::cuTensorMapEncodeTiled(
                &mut map.0,
                sys::CUtensorMapDataType::CU_TENSOR_MAP_DATA_TYPE_BFLOAT16,
                2,
                ptr as *mut std::ffi::c_void,
                dims.as_ptr(),
                strides.as_ptr(),
                boxes.as_ptr(),
                element_strides.as_ptr(),
                sys::CUtensorMapInterleave::CU_TENSOR_MAP_INTERLEAVE_NONE,
                sys::CUtensorMapSwizzle::CU_TENSOR_MAP_SWIZZLE_128B,
                sys::CUtensorMapL2promotion::CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
                sys::CUtensorMapFloatOOBfill::CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE,
            )
        }
        .result()
        .map_err(driver("cuTensorMapEncodeTiled"))?;
        Ok(map)
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

/// Whether programmatic dependent launches are allowed: yes unless the environment sets
/// `KT_PDL=0` (read once; for A/B runs and as a way out on a driver that refuses them).
pub(crate) fn programmatic_launch_enabled() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| std::env::var("KT_PDL").map_or(true, |v| v.trim() != "0"))
}

/// Launches `f` on `stream` through cuLaunchKernelEx (compute capability 9.0+ for either
/// attribute):
/// - with programmatic stream serialization if `programmatic`: then its blocks may be
///   scheduled once every block of the kernel before it on the stream has run
///   `griddepcontrol.launch_dependents` (or exited), instead of after that kernel's end, so
///   its launch and set-up overlap the previous kernel's tail. Also in a captured graph (a
///   programmatic edge);
/// - in thread-block clusters of `cluster` consecutive blocks along x if `cluster` > 1.
///
/// # Safety
/// `params` are `f`'s parameters as cuLaunchKernelEx takes them (each a pointer to a live
/// value of the parameter's type), the launch is within `f`'s bounds, if `programmatic`,
/// `f` runs `griddepcontrol.wait` before it touches anything the previous kernel writes or
/// reads, and if `cluster` > 1, it divides the grid's x and `f` expects such clusters.
pub(crate) unsafe fn launch_raw(
    stream: &CudaStream,
    f: &CudaFunction,
    cfg: LaunchConfig,
    params: &mut [*mut c_void],
    programmatic: bool,
    cluster: u32,
) -> Result<(), DriverError> {
    // SAFETY: an all-zero CUlaunchAttribute is a valid value (an id and a plain union); the
    // fields used are set below.
    let mut attrs: [sys::CUlaunchAttribute; 2] = unsafe { std::mem::zeroed() };
    let mut used = 0;
    if programmatic {
        attrs[used].id =
            sys::CUlaunchAttributeID::CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION;
        attrs[used].value.programmaticStreamSerializationAllowed = 1;
        used += 1;
    }
    if cluster > 1 {
        attrs[used].id = sys::CUlaunchAttributeID::CU_LAUNCH_ATTRIBUTE_CLUSTER_DIMENSION;
        attrs[used].value.clusterDim.x = cluster;
        attrs[used].value.clusterDim.y = 1;
        attrs[used].value.clusterDim.z = 1;
        used += 1;
    }
    let config = sys::CUlaunchConfig {
        gridDimX: cfg.grid_dim.0,
        gridDimY: cfg.grid_dim.1,
        gridDimZ: cfg.grid_dim.2,
        blockDimX: cfg.block_dim.0,
        blockDimY: cfg.block_dim.1,
        blockDimZ: cfg.block_dim.2,
        sharedMemBytes: cfg.shared_mem_bytes,
        hStream: stream.cu_stream(),
        attrs: attrs.as_mut_ptr(),
        numAttrs: used as u32,
    };
    stream.context().bind_to_thread()?;
    // SAFETY: config and attrs live across the call; the caller vouches for f and params.
    unsafe {
        sys::cuLaunchKernelEx(
            &config,
            f.cu_function(),
            params.as_mut_ptr(),
            std::ptr::null_mut(),
        )
    }
    .result()
}
/// Zeroes `bytes` bytes from `p`, in pieces on all cores when there are many (a GPU
/// prefill's expert slabs pin tens of gigabytes: on one core the zeroing took about half of
/// their allocation's time on the device, BENCHMARKS.md session 32).
///
/// # Safety
/// `p..p + bytes` is valid for writes and nothing else accesses it meanwhile.
unsafe fn zero_on_all_cores(p: *mut u8, bytes: usize) {
    let threads = std::thread::available_parallelism().map_or(1, |t| t.get());
    // SAFETY: the caller's contract.
    unsafe { zero_in_pieces(p, bytes, 64 << 20, threads) };
}

/// [`zero_on_all_cores`] with pieces of at least `piece_min` bytes on up to `threads`
/// threads.
///
/// # Safety
/// As [`zero_on_all_cores`].
unsafe fn zero_in_pieces(p: *mut u8, bytes: usize, piece_min: usize, threads: usize) {
    // SAFETY: the caller's range, valid for writes and ours alone; MaybeUninit makes no
    // claim on its contents.
    let buf = unsafe { std::slice::from_raw_parts_mut(p.cast::<MaybeUninit<u8>>(), bytes) };
    let pieces = (bytes / piece_min.max(1)).clamp(1, threads.max(1));
    if pieces == 1 {
        buf.fill(MaybeUninit::new(0));
        return;
    }
    std::thread::scope(|scope| {
        for piece in buf.chunks_mut(bytes.div_ceil(pieces)) {
            scope.spawn(move || piece.fill(MaybeUninit::new(0)));
        }
    });
}

#[cfg(test)]
mod tests {
    use super::zero_in_pieces;

    /// Every byte is zeroed, whatever the split: one piece, pieces that divide the length
    /// and pieces that do not, more threads than pieces.
    #[test]
    fn pieces_zero_every_byte() {
        for (bytes, piece_min, threads) in [
            (0usize, 1usize, 4usize),
            (1, 1, 4),
            (1000, 1, 3),
            (4096, 1024, 16),
            (10_007, 100, 7),
        ] {
            let mut buf = vec![0xABu8; bytes + 2];
            // SAFETY: bytes 1..=bytes of buf, which nothing else touches meanwhile.
            unsafe { zero_in_pieces(buf.as_mut_ptr().add(1), bytes, piece_min, threads) };
            assert_eq!(buf[0], 0xAB, "{bytes} bytes: written before the range");
            assert_eq!(
                buf[bytes + 1],
                0xAB,
                "{bytes} bytes: written past the range"
            );
            assert!(
                buf[1..=bytes].iter().all(|&b| b == 0),
                "{bytes} bytes, pieces of {piece_min}"
            );
        }
    }
}
