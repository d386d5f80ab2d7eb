//! Measures the machine's memory read bandwidth with the same pool the kernels use, so
//! every bandwidth figure kt reports can be given as a fraction of one measured in the
//! same run.

use std::time::Instant;

use super::pool::ThreadPool;
use crate::util::AlignedBuf;

/// Result of [`measure_read_bandwidth`].
#[derive(Clone, Copy, Debug)]
pub struct Bandwidth {
    /// Best of the passes, in GB/s (1e9 bytes per second).
    pub gbps: f64,
    pub bytes: usize,
    pub threads: usize,
}

/// Reads a `bytes`-sized buffer (make it several times the last-level cache) with the
/// threads of `pool`, slices of 1 MiB handed out by the same atomic counter the kernels
/// use, `passes` times; returns the best pass. The buffer is filled with non-zero data first so no page is left unmapped.
pub fn measure_read_bandwidth(pool: &ThreadPool, bytes: usize, passes: usize) -> Bandwidth {
    let bytes = bytes.next_multiple_of(4096);
    let mut buf = AlignedBuf::with_len(bytes);
    let words = bytes / 8;
    let threads = pool.threads();
    const SLICE_WORDS: usize = (1 << 20) / 8;
    let slices = words.div_ceil(SLICE_WORDS);
    {
        let p = buf.as_mut_slice().as_mut_ptr() as usize;
        pool.for_each(slices, &|i, _| {
            let (lo, hi) = (i * SLICE_WORDS, ((i + 1) * SLICE_WORDS).min(words));
            for w in lo..hi {
                // SAFETY: word w lies inside the buffer; slices of different i are disjoint
                // and the buffer is 64-byte aligned, so u64 writes are aligned.
                unsafe {
                    *(p as *mut u64).add(w) = (w as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1
                };
            }
        });
    }
    let data: &[u64] = {
        let s = buf.as_slice();
        // SAFETY: the buffer is 64-byte aligned and holds `words` initialised u64s.
        unsafe { std::slice::from_raw_parts(s.as_ptr() as *const u64, words) }
    };
    let sink = std::sync::atomic::AtomicU64::new(0);
    let mut best = f64::INFINITY;
    for _ in 0..passes.max(1) {
        let t = Instant::now();
        pool.for_each(slices, &|i, _| {
            let chunk = &data[i * SLICE_WORDS..((i + 1) * SLICE_WORDS).min(words)];
            let mut acc = [0u64; 8];
            for c in chunk.chunks_exact(8) {
                for j in 0..8 {
                    acc[j] = acc[j].wrapping_add(c[j]);
                }
            }
            sink.fetch_add(
                acc.iter().fold(0u64, |a, &b| a.wrapping_add(b)),
                std::sync::atomic::Ordering::Relaxed,
            );
        });
        best = best.min(t.elapsed().as_secs_f64());
    }
    std::hint::black_box(sink.load(std::sync::atomic::Ordering::Relaxed));
    Bandwidth {
        gbps: bytes as f64 / best / 1e9,
        bytes,
        threads,
    }
}
