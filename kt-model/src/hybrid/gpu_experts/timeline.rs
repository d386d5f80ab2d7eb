//! Where a GPU prefill call's MoE layers spent their time on the GPU: each layer's weight
//! copy on the copy stream and its experts' compute on the main stream, from events
//! recorded as the call queues them, read once the call is done.

use kt_kernels::cuda::GpuEvent;

use crate::hybrid::error::HybridResult;

/// The events of one MoE layer of the call in progress.
pub(super) struct LayerEvents {
    pub layer: usize,
    /// Bytes the copy moves (the staged experts, resident ones left out).
    pub bytes: usize,
    pub copy: (GpuEvent, GpuEvent),
    /// From the end of the wait for the copy to the combine queued.
    pub compute: Option<(GpuEvent, GpuEvent)>,
}

/// One MoE layer of the last GPU prefill call, in ms from the call's start (the first
/// layers' copies queued). Serializes with these field names (`kt-bench --json`).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct PrefillLayerTimes {
    pub layer: usize,
    /// The weight copy: start, duration, bytes and their rate (0 bytes: nothing copied).
    pub copy_start_ms: f64,
    pub copy_ms: f64,
    pub copy_bytes: usize,
    pub copy_gbps: f64,
    /// The layer's expert compute once its weights were in (`None`: not reached).
    pub compute_start_ms: Option<f64>,
    pub compute_ms: Option<f64>,
}

/// The times of `layers` from `start`; waits for their last events.
pub(super) fn layer_times(
    start: &GpuEvent,
    layers: &[LayerEvents],
) -> HybridResult<Vec<PrefillLayerTimes>> {
    let since = |e: &GpuEvent| -> HybridResult<f64> { Ok(f64::from(start.elapsed_ms(e)?)) };
    layers
        .iter()
        .map(|l| {
            let (c0, c1) = (since(&l.copy.0)?, since(&l.copy.1)?);
            let copy_ms = c1 - c0;
            let compute = l
                .compute
                .as_ref()
                .map(|(a, b)| -> HybridResult<(f64, f64)> {
                    let a = since(a)?;
                    Ok((a, since(b)? - a))
                })
                .transpose()?;
            Ok(PrefillLayerTimes {
                layer: l.layer,
                copy_start_ms: c0,
                copy_ms,
                copy_bytes: l.bytes,
                copy_gbps: if copy_ms > 0.0 {
                    l.bytes as f64 / (copy_ms * 1e6)
                } else {
                    0.0
                },
                compute_start_ms: compute.map(|c| c.0),
                compute_ms: compute.map(|c| c.1),
            })
        })
        .collect()
}
