//! Helpers of the GPU tests: getting a device (or skipping on machines without one),
//! NaN-poisoned outputs and error bounds.
#![allow(dead_code)]

use kt_kernels::cuda::{CudaError, DeviceBuf, Gpu, GpuFloat, GpuStream};

/// Device 0, or None (with a message) on a machine without a driver or GPU. With
/// `KT_REQUIRE_GPU` set (the device runs set it) a missing GPU fails the test instead.
pub fn gpu_or_skip(test: &str) -> Option<Gpu> {
    match Gpu::new(0) {
        Ok(gpu) => Some(gpu),
        Err(e @ (CudaError::NoDriver | CudaError::NoDevice { .. })) => {
            if std::env::var_os("KT_REQUIRE_GPU").is_some() {
                panic!("{test}: KT_REQUIRE_GPU is set but {e}");
            }
            eprintln!("skipping {test}: {e}");
            None
        }
        Err(e) => panic!("{test}: opening the GPU failed: {e}"),
    }
}

/// A device buffer of `n` NaNs: elements a kernel leaves unwritten fail the comparison.
pub fn nan_buf<T: GpuFloat>(s: &GpuStream, n: usize) -> DeviceBuf<T> {
    s.upload(&vec![T::from_f32(f32::NAN); n]).expect("upload")
}

/// `n` values of scale * N(0, 1), rounded to T.
pub fn random<T: GpuFloat>(rng: &mut kt_kernels::util::SplitMix64, n: usize, scale: f32) -> Vec<T> {
    (0..n).map(|_| T::from_f32(rng.normal() * scale)).collect()
}

pub fn to_f64<T: GpuFloat>(v: &[T]) -> Vec<f64> {
    v.iter().map(|x| x.to_f32() as f64).collect()
}

/// Asserts |got - want| <= tol(i, want) for every element (NaN fails), naming the first
/// element that does not.
pub fn assert_close<T: GpuFloat>(
    what: &str,
    got: &[T],
    want: &[f64],
    tol: impl Fn(usize, f64) -> f64,
) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let mut worst = 0.0f64;
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let g = g.to_f32() as f64;
        let t = tol(i, w);
        let d = (g - w).abs();
        assert!(
            d <= t,
            "{what}: element {i}: got {g}, want {w} (|diff| {d:e} > tol {t:e})"
        );
        worst = worst.max(d / t.max(f64::MIN_POSITIVE));
    }
    assert!(worst.is_finite(), "{what}: bad error ratio");
}
