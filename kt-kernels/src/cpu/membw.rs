//! Measures the machine's memory read bandwidth with the same pool the kernels use, so
//! every bandwidth figure kt reports can be given as a fraction of one measured in the
//! same run.
//!
//! The figure is the best of several read patterns, not of one: a core streaming a single
//! sequential run is limited by the misses it keeps in flight, and the kernels keep more
//! (a register tile reads several rows at once, and they prefetch ahead). On the device's
//! 16-core Xeon (session 15) the single-stream probe read 104-110 GB/s while one-token
//! GEMVs, cycling through 5 GB of copies (16 x its 300 MiB L3), streamed 120-136 GB/s:
//! fractions of the single-stream figure overstated how close to the DRAM a kernel came.
//! There, one stream read 90-114 GB/s, 4 streams 114-146, 8 streams with a 1 KiB prefetch
//! 140-173; on the 2-core AMD dev VM one stream reads the most. (The pattern prefetching
//! into L2 was added later and is not measured there.)
//!
//! The figure is each pattern's median pass, not its best, and a probe's passes read
//! buffers in turn (session 35, device). The kernels' figures are medians of many calls on
//! weights no recent call read; the probe used to keep the best of 15 passes over one 1 GiB
//! buffer read back to back. On the device's VM the best pattern's fastest pass read up to
//! 11% above its median pass within one reading (the host's other tenants), a quiet moment
//! the kernels' medians do not have, and the 300 MiB L3 kept part of the buffer between
//! passes: at 16 threads the fastest and the median pass over one buffer read back to back
//! were 0-16% (mean 6%) and 1-14% (mean 10%) above those over buffers each read again only
//! 7 GiB later (six rounds; level at 8 threads). A probe now reads [`COLD_SLICES`] buffers
//! in turn and reports each pattern's median pass (the fastest pass stays in
//! [`Bandwidth::best_pass_gbps`]).

use std::time::Instant;

use super::cache_hint;
use super::pool::ThreadPool;
use crate::util::AlignedBuf;

/// Result of [`measure_read_bandwidth`].
#[derive(Clone, Copy, Debug)]
pub struct Bandwidth {
    /// The median pass of the pattern whose median is highest, in GB/s (1e9 bytes per
    /// second): what the machine gives a streaming kernel, like for like with a kernel's
    /// median call.
    pub gbps: f64,
    /// The fastest single pass of any pattern (the probe's figure before session 35).
    pub best_pass_gbps: f64,
    pub bytes: usize,
    pub threads: usize,
    /// The pattern whose median pass is `gbps` ([`PATTERNS`]).
    pub pattern: &'static str,
}

/// How a thread reads one work item (a slice of `slice` bytes, 0 meaning the probe's 1 MiB):
/// `streams` equal parts read side by side, a line of each in turn, with a software
/// prefetch `prefetch` bytes ahead in each (0: none), into L1 (`prefetcht0`) or, with
/// `l2`, into L2 (`prefetcht1`). Slices smaller than the probe's stand for a kernel's work
/// items (a decode MoE item of 128 Q4_K rows is 147-516 KB).
#[derive(Clone, Copy, Debug)]
pub struct Pattern {
    pub name: &'static str,
    pub streams: usize,
    pub prefetch: usize,
    pub l2: bool,
    pub slice: usize,
}

impl Pattern {
    /// Bytes of one work item.
    pub fn slice_bytes(&self) -> usize {
        if self.slice == 0 {
            SLICE
        } else {
            self.slice.next_multiple_of(LINE)
        }
    }
}

/// The patterns every measurement tries; the best one counts.
pub const PATTERNS: [Pattern; 5] = [
    Pattern {
        name: "sequential",
        streams: 1,
        prefetch: 0,
        l2: false,
        slice: 0,
    },
    Pattern {
        name: "4 streams",
        streams: 4,
        prefetch: 0,
        l2: false,
        slice: 0,
    },
    Pattern {
        name: "8 streams, prefetch 1 KiB",
        streams: 8,
        prefetch: 1024,
        l2: false,
        slice: 0,
    },
    Pattern {
        name: "8 streams, prefetch 4 KiB",
        streams: 8,
        prefetch: 4096,
        l2: false,
        slice: 0,
    },
    Pattern {
        name: "8 streams, prefetch 1 KiB into L2",
        streams: 8,
        prefetch: 1024,
        l2: true,
        slice: 0,
    },
];

/// Bytes of the probe's work item (a thread's slice), handed out like kernel work.
const SLICE: usize = 1 << 20;
/// Buffers a probe reads in turn, one a pass: with 1 GiB each, a buffer is read again
/// only after 3 GiB of others (10 x the device's L3), so no pass reads its lines from the
/// cache.
pub const COLD_SLICES: usize = 4;
const LINE: usize = cache_hint::LINE;

/// Reads [`COLD_SLICES`] buffers of `bytes` each (make it several times the last-level
/// cache) in turn, one a pass, with the threads of `pool`, slices of 1 MiB handed out by
/// the same atomic counter the kernels use, `passes` times with each of [`PATTERNS`];
/// returns the pattern with the highest median pass ([`Bandwidth`]). The buffers are
/// filled with non-zero data first so no page is left unmapped.
pub fn measure_read_bandwidth(pool: &ThreadPool, bytes: usize, passes: usize) -> Bandwidth {
    ReadProbe::new(pool, bytes).measure(pool, passes)
}

/// [`measure_read_bandwidth`] per pattern, in the order given, each pattern reading work
/// items of its own size ([`Pattern::slice_bytes`]). Passes alternate between the
/// patterns, so a machine whose bandwidth drifts treats them alike.
pub fn measure_patterns(
    pool: &ThreadPool,
    bytes: usize,
    passes: usize,
    patterns: &[Pattern],
) -> Vec<Bandwidth> {
    ReadProbe::new(pool, bytes).measure_each(pool, passes, patterns)
}

/// A buffer of at least `bytes` (whole 1 MiB slices; a pattern's own slice size may leave
/// a shorter last slice) filled with non-zero data by the pool, so no page is left unmapped.
pub fn filled(pool: &ThreadPool, bytes: usize) -> AlignedBuf {
    let bytes = bytes.next_multiple_of(SLICE).max(SLICE);
    let mut buf = AlignedBuf::with_len(bytes);
    let p = buf.as_mut_slice().as_mut_ptr() as usize;
    pool.for_each(bytes / SLICE, &|i, _| {
        for w in i * SLICE / 8..(i + 1) * SLICE / 8 {
            // SAFETY: word w lies inside the buffer; slices of different i are disjoint
            // and the buffer is 64-byte aligned, so u64 writes are aligned.
            unsafe { *(p as *mut u64).add(w) = (w as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1 };
        }
    });
    buf
}

/// [`measure_read_bandwidth`] for readings taken again and again (between a benchmark's
/// calls): the buffers are allocated and filled once, not at every reading (a fresh 1 GiB
/// took 0.1-0.7 s of page faults and writes on the machines here), and the turn of the
/// buffers goes on from one reading to the next.
pub struct ReadProbe {
    bufs: Vec<AlignedBuf>,
    next: std::sync::atomic::AtomicUsize,
}

impl ReadProbe {
    /// [`COLD_SLICES`] buffers of `bytes` (whole 1 MiB slices).
    pub fn new(pool: &ThreadPool, bytes: usize) -> ReadProbe {
        ReadProbe {
            bufs: (0..COLD_SLICES).map(|_| filled(pool, bytes)).collect(),
            next: std::sync::atomic::AtomicUsize::new(0),
        }
    }

    /// `passes` passes of each of [`PATTERNS`], each pass over the next buffer: the pattern
    /// with the highest median pass.
    pub fn measure(&self, pool: &ThreadPool, passes: usize) -> Bandwidth {
        best_pattern(self.measure_each(pool, passes, &PATTERNS))
    }

    /// [`ReadProbe::measure`] per pattern, in the order given.
    pub fn measure_each(
        &self,
        pool: &ThreadPool,
        passes: usize,
        patterns: &[Pattern],
    ) -> Vec<Bandwidth> {
        let region = |_| {
            let k = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            aligned_words(self.bufs[k % self.bufs.len()].as_slice())
        };
        time_passes(pool, passes, patterns, region)
    }
}

/// Of per-pattern readings ([`measure_patterns`], [`measure_region`]): the one with the
/// highest median pass, carrying the fastest pass of any (the probe's figure, as
/// [`ReadProbe::measure`] gives it).
pub fn best_pattern(each: Vec<Bandwidth>) -> Bandwidth {
    let fastest = each.iter().map(|b| b.best_pass_gbps).fold(0.0, f64::max);
    let best = each
        .into_iter()
        .max_by(|a, b| a.gbps.total_cmp(&b.gbps))
        .expect("at least one pattern");
    Bandwidth {
        best_pass_gbps: fastest,
        ..best
    }
}

/// [`measure_patterns`] over memory that is already there (e.g. a model's weights, to see
/// what the machine delivers from the pages they lie in): every pass of each pattern
/// reads `region` (whole words only: at least one 64-byte line; a 64-byte-aligned start
/// reads whole lines). A region the last-level cache can partly keep between passes reads
/// faster than one a kernel meets cold.
pub fn measure_region(
    pool: &ThreadPool,
    region: &[u8],
    passes: usize,
    patterns: &[Pattern],
) -> Vec<Bandwidth> {
    let data = aligned_words(region);
    time_passes(pool, passes, patterns, |_| data)
}

/// `passes` rounds of one pass of each pattern, the pass reading `region(n)` (n counting
/// the passes); per pattern its median and best pass. Regions of one call have one size.
fn time_passes<'a>(
    pool: &ThreadPool,
    passes: usize,
    patterns: &[Pattern],
    mut region: impl FnMut(usize) -> &'a [u64],
) -> Vec<Bandwidth> {
    let sink = std::sync::atomic::AtomicU64::new(0);
    let mut secs = vec![Vec::new(); patterns.len()];
    let mut words = 0;
    let mut n = 0;
    for _ in 0..passes.max(1) {
        for (pattern, secs) in patterns.iter().zip(secs.iter_mut()) {
            let data = region(n);
            n += 1;
            words = data.len();
            let slice_words = pattern.slice_bytes() / 8;
            let t = Instant::now();
            pool.for_each(words.div_ceil(slice_words), &|i, _| {
                let slice = &data[i * slice_words..words.min((i + 1) * slice_words)];
                let sum = read_slice(slice, pattern);
                sink.fetch_add(sum, std::sync::atomic::Ordering::Relaxed);
            });
            secs.push(t.elapsed().as_secs_f64());
        }
    }
    std::hint::black_box(sink.load(std::sync::atomic::Ordering::Relaxed));
    let bytes = words * 8;
    let threads = pool.threads();
    patterns
        .iter()
        .zip(secs)
        .map(|(p, mut secs)| {
            secs.sort_by(|a, b| a.total_cmp(b));
            // the median pass (of an even count, the slower middle one)
            let median = secs[secs.len() / 2];
            Bandwidth {
                gbps: bytes as f64 / median / 1e9,
                best_pass_gbps: bytes as f64 / secs[0] / 1e9,
                bytes,
                threads,
                pattern: p.name,
            }
        })
        .collect()
}

/// The aligned whole 8-byte words of `region`.
fn aligned_words(region: &[u8]) -> &[u64] {
    let skip = region.as_ptr().align_offset(8).min(region.len());
    let words = (region.len() - skip) / 8;
    // SAFETY: `skip` makes the start 8-byte aligned and `words` whole u64s follow it
    // inside the region; any bit pattern is a valid u64.
    unsafe { std::slice::from_raw_parts(region.as_ptr().add(skip) as *const u64, words) }
}

/// Reads `bytes` (its aligned whole words) as `pattern` reads one work item and returns
/// the words' wrapping sum: a kernel's work item read with nothing else done, so timing
/// it beside the kernel gives the most any kernel reading the same items could stream
/// (`kt-bench moe --ceiling`, `kt-bench matmul --ceiling`).
pub fn read_bytes(bytes: &[u8], pattern: &Pattern) -> u64 {
    read_slice(aligned_words(bytes), pattern)
}

/// Sums every word of `slice` (a whole number of lines per stream) reading it as
/// `pattern` says.
fn read_slice(slice: &[u64], pattern: &Pattern) -> u64 {
    const LINE_WORDS: usize = LINE / 8;
    let streams = pattern.streams.max(1);
    // Whole lines per stream; what a stream count that does not divide the slice leaves
    // over is read in order at the end.
    let part = slice.len() / streams / LINE_WORDS * LINE_WORDS;
    let mut acc = [0u64; LINE_WORDS];
    for line in (0..part).step_by(LINE_WORDS) {
        for s in 0..streams {
            let at = s * part + line;
            if pattern.prefetch > 0 {
                // Ahead within this stream; past its end it asks for the next stream's
                // (or, for the last, a line outside the slice: a hint never faults).
                let ahead = slice
                    .as_ptr()
                    .wrapping_add(at + pattern.prefetch / 8)
                    .cast();
                if pattern.l2 {
                    cache_hint::line_l2_at(ahead);
                } else {
                    cache_hint::lines_l1(ahead, LINE);
                }
            }
            for (a, &w) in acc.iter_mut().zip(&slice[at..at + LINE_WORDS]) {
                *a = a.wrapping_add(w);
            }
        }
    }
    let rest = slice[part * streams..]
        .iter()
        .fold(0u64, |a, &b| a.wrapping_add(b));
    acc.iter().fold(rest, |a, &b| a.wrapping_add(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every pattern reads every word once: the same sum as a plain sum of the slice.
    #[test]
    fn every_pattern_reads_each_word_once() {
        let slice: Vec<u64> = (0..SLICE as u64 / 8)
            .map(|w| w.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
            .collect();
        let want = slice.iter().fold(0u64, |a, &b| a.wrapping_add(b));
        for p in &PATTERNS {
            assert_eq!(read_slice(&slice, p), want, "{}", p.name);
        }
        // A stream count that does not divide the slice into whole lines.
        let odd = Pattern {
            name: "3 streams",
            streams: 3,
            prefetch: 512,
            l2: true,
            slice: 0,
        };
        assert_eq!(read_slice(&slice, &odd), want);
        // As bytes: the same words, from an unaligned start the first aligned word on.
        let bytes: Vec<u8> = slice.iter().flat_map(|w| w.to_le_bytes()).collect();
        for p in PATTERNS.iter().chain([&odd]) {
            assert_eq!(read_bytes(&bytes, p), want, "{}", p.name);
        }
        let mut shifted = vec![1u8; 5];
        shifted.extend_from_slice(&bytes);
        let from = shifted.as_ptr().align_offset(8);
        let expect = shifted[from..]
            .chunks_exact(8)
            .map(|w| u64::from_le_bytes(w.try_into().unwrap()))
            .fold(0u64, |a, b| a.wrapping_add(b));
        assert_eq!(read_bytes(&shifted, &PATTERNS[2]), expect);
    }

    #[test]
    fn the_probe_reports_the_best_pattern() {
        let pool = ThreadPool::new(2).unwrap();
        let each = measure_patterns(&pool, 4 << 20, 1, &PATTERNS);
        assert_eq!(each.len(), PATTERNS.len());
        assert!(each.iter().all(|b| b.gbps.is_finite() && b.gbps > 0.0));
        // Item sizes that do not divide the buffer: a shorter last slice.
        let small = Pattern {
            name: "4 streams, 96 KiB items",
            streams: 4,
            prefetch: 1024,
            l2: false,
            slice: 96 << 10,
        };
        assert_eq!(small.slice_bytes(), 96 << 10);
        let each = measure_patterns(&pool, 4 << 20, 1, &[small]);
        assert!(each[0].gbps.is_finite() && each[0].gbps > 0.0);
        // An existing region, its start not 8-byte aligned: whole words from the first
        // aligned one.
        let region: Vec<u8> = (0..(2 << 20) + 13).map(|i| (i % 251) as u8 | 1).collect();
        let each = measure_region(&pool, &region[3..], 1, &PATTERNS[..2]);
        assert_eq!(each.len(), 2);
        assert!(each.iter().all(|b| b.gbps.is_finite() && b.gbps > 0.0));
        assert!(each
            .iter()
            .all(|b| b.bytes % 8 == 0 && b.bytes + 16 > region.len() - 3));
        let probe = ReadProbe::new(&pool, 3 << 20);
        assert_eq!(probe.bufs.len(), COLD_SLICES);
        let again = probe.measure(&pool, 1);
        assert!(again.gbps.is_finite() && again.gbps > 0.0 && again.bytes == 3 << 20);
        // each pass read the next buffer, and the turn goes on at the next reading
        assert_eq!(
            probe.next.load(std::sync::atomic::Ordering::Relaxed),
            PATTERNS.len()
        );
        let best = measure_read_bandwidth(&pool, 3 << 20, 3);
        assert_eq!(best.bytes, 3 << 20);
        assert!(PATTERNS.iter().any(|p| p.name == best.pattern));
        // the median pass is no faster than the fastest of any pattern
        assert!(best.gbps <= best.best_pass_gbps);
        let each = measure_patterns(&pool, 3 << 20, 3, &PATTERNS);
        assert!(each.iter().all(|b| b.gbps <= b.best_pass_gbps));
    }
}
