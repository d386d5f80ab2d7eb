//! Whether reading weights with loads that cross cache lines costs DRAM bandwidth: the
//! one-token K-quant GEMVs read each 144-byte Q4_K block as a 16-byte header and two
//! 64-byte loads at +16 and +80, so three blocks in four put both big loads across two
//! lines, while the read probe (`cpu::membw`) reads whole aligned lines. The same bytes
//! are read here with 64-byte AVX512 loads in several ways, in turns, by all threads
//! (1 MiB items by the pool's counter, as the probe does):
//!   aligned   one load per line
//!   off16     one load per 64 bytes at +16 (every load crosses two lines)
//!   q4k       per 144-byte block: 16 bytes at +0, 64 at +16, 64 at +80 (the GEMV's loads)
//!   q4k-al    the 9 lines of 4 blocks with aligned loads, each block's two quant vectors
//!             put together with `valignd` (what an aligned kernel would do)
//! each in steps of 576 bytes (4 blocks, 9 lines), `streams` streams per item, an L1
//! prefetch `ahead` bytes ahead in each (one per line).
//!   cargo run --release -p kt-kernels --example membw_split -- THREADS [GIB] [PASSES]
//! Prints one JSON line per (pattern, pass) and the best per pattern. Needs AVX512F.

use kt_kernels::cpu::ThreadPool;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    Aligned,
    Off16,
    Q4k,
    Q4kAligned,
}

impl Kind {
    /// Bytes one step of a stream reads: four Q4_K blocks, nine lines, for every kind
    /// (the same loop and prefetch count around each kind's loads).
    fn unit(self) -> usize {
        576
    }
}

#[derive(Clone, Copy, Debug)]
struct Variant {
    kind: Kind,
    streams: usize,
    ahead: usize,
}

const SLICE: usize = 1 << 20;

#[cfg(target_arch = "x86_64")]
mod reads {
    use super::Kind;
    use std::arch::x86_64::*;

    /// Reads one unit of `kind` at `p` into `acc`.
    ///
    /// # Safety
    /// `p..p + kind.unit() + 16` is readable; AVX512F.
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn unit(kind: Kind, p: *const u8, acc: __m512i) -> __m512i {
        // SAFETY: the caller's contract covers every load below.
        unsafe {
            match kind {
                Kind::Aligned | Kind::Off16 => {
                    let off = if kind == Kind::Off16 { 16 } else { 0 };
                    let mut a = acc;
                    for i in 0..9 {
                        a = _mm512_xor_si512(a, _mm512_loadu_si512(p.add(64 * i + off).cast()));
                    }
                    a
                }
                Kind::Q4k => {
                    let mut a = acc;
                    for b in 0..4 {
                        let q = p.add(144 * b);
                        let h = _mm512_castsi128_si512(_mm_loadu_si128(q.cast()));
                        let lo = _mm512_loadu_si512(q.add(16).cast());
                        let hi = _mm512_loadu_si512(q.add(80).cast());
                        a = _mm512_xor_si512(_mm512_xor_si512(a, h), _mm512_xor_si512(lo, hi));
                    }
                    a
                }
                Kind::Q4kAligned => {
                    let l: [__m512i; 9] =
                        std::array::from_fn(|i| _mm512_loadu_si512(p.add(64 * i).cast()));
                    // block b's quants start at byte 144 b + 16: lines 0-1 at dword 4,
                    // 2-3 at 8, 4-5 at 12, line 7 itself
                    let q = [
                        _mm512_alignr_epi32::<4>(l[1], l[0]),
                        _mm512_alignr_epi32::<4>(l[2], l[1]),
                        _mm512_alignr_epi32::<8>(l[3], l[2]),
                        _mm512_alignr_epi32::<8>(l[4], l[3]),
                        _mm512_alignr_epi32::<12>(l[5], l[4]),
                        _mm512_alignr_epi32::<12>(l[6], l[5]),
                        l[7],
                        l[8],
                    ];
                    let mut a = acc;
                    for v in q {
                        a = _mm512_xor_si512(a, v);
                    }
                    // the headers, as the kernel reads them (16 bytes at 144 b)
                    for b in 0..4 {
                        let h = _mm512_castsi128_si512(_mm_loadu_si128(p.add(144 * b).cast()));
                        a = _mm512_xor_si512(a, h);
                    }
                    a
                }
            }
        }
    }

    /// Reads `streams` streams of `part` bytes each from `p` (one unit of each stream in
    /// turn), prefetching `ahead` bytes ahead in each; returns a fold of what it read.
    ///
    /// # Safety
    /// `p..p + streams * part + 64` is readable; `part` is a multiple of the unit; AVX512F.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn item(kind: Kind, p: *const u8, streams: usize, part: usize, ahead: usize) -> u64 {
        let u = kind.unit();
        let mut acc = _mm512_setzero_si512();
        let mut at = 0;
        while at < part {
            for s in 0..streams {
                let q = p.wrapping_add(s * part + at);
                if ahead > 0 {
                    let mut l = 0;
                    while l < u {
                        // a prefetch never faults, whatever the address
                        _mm_prefetch::<_MM_HINT_T0>(q.wrapping_add(ahead + l).cast());
                        l += 64;
                    }
                }
                // SAFETY: unit `at` of stream `s` lies inside the item (+ the caller's slack).
                acc = unsafe { unit(kind, q, acc) };
            }
            at += u;
        }
        _mm512_reduce_add_epi64(acc) as u64
    }
}

fn main() -> Result<(), String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let num = |i: usize, d: usize| -> Result<usize, String> {
        args.get(i).map_or(Ok(d), |a| {
            a.parse().map_err(|_| format!("argument {i}: {a:?}"))
        })
    };
    let (threads, gib, passes) = (num(0, 2)?, num(1, 1)?, num(2, 5)?);
    if !std::arch::is_x86_feature_detected!("avx512f") {
        return Err("this probe needs AVX512F".into());
    }
    let pool = ThreadPool::new(threads).map_err(|e| e.to_string())?;
    let bytes = gib << 30;
    // 64-byte aligned start, slack past the end for the last unit's overreach
    let mut raw = vec![0u64; bytes / 8 + 64];
    for (i, w) in raw.iter_mut().enumerate() {
        *w = (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
    let base = raw.as_ptr() as usize;
    let start = base.next_multiple_of(64) - base;
    let buf = raw.as_slice();
    let variants: Vec<Variant> = [
        (Kind::Aligned, 4, 1024),
        (Kind::Off16, 4, 1024),
        (Kind::Q4k, 4, 1024),
        (Kind::Q4kAligned, 4, 1024),
        (Kind::Aligned, 4, 4096),
        (Kind::Off16, 4, 4096),
        (Kind::Q4k, 4, 4096),
        (Kind::Q4kAligned, 4, 4096),
        (Kind::Aligned, 8, 1024),
        (Kind::Q4k, 8, 1024),
        (Kind::Aligned, 4, 0),
        (Kind::Off16, 4, 0),
        (Kind::Q4k, 4, 0),
        (Kind::Q4kAligned, 4, 0),
    ]
    .into_iter()
    .map(|(kind, streams, ahead)| Variant {
        kind,
        streams,
        ahead,
    })
    .collect();
    let sink = AtomicU64::new(0);
    let items = bytes / SLICE;
    let mut best = vec![0f64; variants.len()];
    for pass in 0..passes {
        for (v, best) in variants.iter().zip(best.iter_mut()) {
            let part = SLICE / v.streams / v.kind.unit() * v.kind.unit();
            let t = Instant::now();
            pool.for_each(items, &|i, _| {
                let p = (buf.as_ptr() as *const u8).wrapping_add(start + i * SLICE);
                // SAFETY: item i's SLICE bytes lie inside the buffer, with 512 bytes of
                // slack after the last; `part` is a multiple of the unit; AVX512F checked.
                let s = unsafe { reads::item(v.kind, p, v.streams, part, v.ahead) };
                sink.fetch_add(s, Ordering::Relaxed);
            });
            let read = items * v.streams * part;
            let gbps = read as f64 / t.elapsed().as_secs_f64() / 1e9;
            *best = best.max(gbps);
            println!(
                "{{\"pass\":{pass},\"kind\":\"{:?}\",\"streams\":{},\"ahead\":{},\"gbps\":{gbps:.2}}}",
                v.kind, v.streams, v.ahead
            );
        }
    }
    for (v, b) in variants.iter().zip(&best) {
        println!(
            "best {:>10} streams {} ahead {:>4}: {b:7.2} GB/s",
            format!("{:?}", v.kind),
            v.streams,
            v.ahead
        );
    }
    std::hint::black_box(sink.load(Ordering::Relaxed));
    Ok(())
}
