//! The GPU runtime: a CPU-only machine gets a typed error, not a crash; on a GPU, buffers,
//! pinned copies, a second stream and events work.
#![cfg(feature = "cuda")]

mod cuda_common;

use cuda_common::gpu_or_skip;
use kt_kernels::cuda::{CudaError, Gpu};

#[test]
fn no_gpu_is_an_error_not_a_crash() {
    match Gpu::new(0) {
        Ok(gpu) => eprintln!("device 0: {:?}", gpu.info()),
        Err(e @ (CudaError::NoDriver | CudaError::NoDevice { .. })) => {
            eprintln!("as expected here: {e}")
        }
        Err(e) => panic!("unexpected error: {e}"),
    }
    // An ordinal past any machine's device count is always NoDevice (or NoDriver).
    match Gpu::new(4096) {
        Err(CudaError::NoDriver | CudaError::NoDevice { .. }) => {}
        Err(e) => panic!("unexpected error: {e}"),
        Ok(_) => panic!("device 4096 exists?"),
    }
}

#[test]
fn buffers_pinned_copies_streams_and_events() {
    let Some(gpu) = gpu_or_skip("buffers_pinned_copies_streams_and_events") else {
        return;
    };
    let info = gpu.info();
    assert!(
        info.multiprocessors > 0 && info.compute_capability.0 >= 8,
        "{info:?}"
    );
    let s = gpu.stream();
    let data: Vec<f32> = (0..100_003).map(|i| (i as f32) * 0.5 - 7.0).collect();
    let d = s.upload(&data).unwrap();
    assert_eq!(s.download(&d).unwrap(), data);

    // Pinned round trip through a second stream ordered after the first by an event.
    let s2 = gpu.new_stream().unwrap();
    let mut pin_in = gpu.alloc_pinned::<f32>(data.len()).unwrap();
    pin_in.as_mut_slice().unwrap().copy_from_slice(&data);
    let mut dev = s.alloc_zeroed::<f32>(data.len()).unwrap();
    let start = s.record_event().unwrap();
    s.copy_from_pinned(&pin_in, &mut dev).unwrap();
    let copied = s.record_event().unwrap();
    s2.wait_event(&copied).unwrap();
    let mut pin_out = gpu.alloc_pinned::<f32>(data.len()).unwrap();
    s2.copy_to_pinned(&dev, &mut pin_out).unwrap();
    s2.synchronize().unwrap();
    assert_eq!(pin_out.as_slice().unwrap(), &data[..]);
    let ms = start.elapsed_ms(&copied).unwrap();
    assert!(ms >= 0.0 && ms.is_finite(), "{ms}");

    // Length mismatches are typed errors.
    let mut short = s.alloc_zeroed::<f32>(3).unwrap();
    assert!(matches!(
        s.copy_from_pinned(&pin_in, &mut short),
        Err(CudaError::Shape { .. })
    ));
}
