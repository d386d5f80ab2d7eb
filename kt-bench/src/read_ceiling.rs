//! `--ceiling` of `kt-bench moe` and `kt-bench matmul`: the bytes a timed kernel call
//! reads, read again in one pool job with nothing else done, the read forms taking turns
//! with the kernel call by call.
//!
//! The kernels' one-token figures are fractions of the read probe (1 GiB buffers read in
//! turn, 1 MiB items, the best of its patterns by the median pass). A call reads far fewer bytes (a V3 MoE layer's 198 MB, a
//! V2-Lite expert matrix's 1.6 MB) in one job, with a start and an end on every thread.
//! Reading those very bytes the probe's ways, in the same process and the same rounds,
//! gives the most a kernel reading them in one call could stream; the kernel against it
//! says how much of its distance from the probe is its own.

use std::sync::atomic::{AtomicU64, Ordering};

use kt_kernels::cpu::membw::{self, Pattern, PATTERNS};
use kt_kernels::cpu::ThreadPool;

/// The largest read item: the probe's own slice.
const MAX_ITEM: usize = 1 << 20;
const LINE: usize = 64;
/// Items a thread of the read forms: one (a small call's bytes split evenly, as the GEMV
/// driver hands out its small matrices), or four from the counter (a thread that starts
/// late or streams slowly leaves work to the others).
const ITEMS_PER_THREAD: [usize; 2] = [1, 4];

/// One read form: a pattern of the read probe over items of [`Form::item_bytes`].
#[derive(Clone, Copy, Debug)]
pub struct Form {
    pub pattern: &'static Pattern,
    pub items_per_thread: usize,
}

impl Form {
    /// Bytes of one item for a call of `total` bytes on `threads` threads: the probe's
    /// 1 MiB, or less so that every thread has `items_per_thread` items (whole lines).
    pub fn item_bytes(&self, total: usize, threads: usize) -> usize {
        total
            .div_ceil(threads.max(1) * self.items_per_thread.max(1))
            .next_multiple_of(LINE)
            .clamp(LINE, MAX_ITEM)
    }

    /// The pattern's name and the items a thread.
    pub fn label(&self) -> String {
        let n = self.items_per_thread;
        let s = if n == 1 { "" } else { "s" };
        format!("{}; {n} item{s} a thread", self.pattern.name)
    }
}

/// The read forms timed beside a kernel: each of the probe's patterns with each count of
/// items a thread.
pub fn forms() -> Vec<Form> {
    PATTERNS
        .iter()
        .flat_map(|pattern| {
            ITEMS_PER_THREAD.map(|items_per_thread| Form {
                pattern,
                items_per_thread,
            })
        })
        .collect()
}

/// Reads every byte of `parts` in one job of `pool`: each part cut into items of at most
/// `item` bytes, read as `pattern` reads a probe slice. Handed out by the pool's counter,
/// or item `i` on thread `i` where there are no more items than threads (as the one-token
/// GEMV driver hands out its small matrices). Returns the words' sum (never zero in
/// practice), so the reads cannot be left out.
pub fn read_parts(pool: &ThreadPool, parts: &[&[u8]], item: usize, pattern: &Pattern) -> u64 {
    let item = item.max(LINE);
    let items: usize = parts.iter().map(|p| p.len().div_ceil(item)).sum();
    let sink = AtomicU64::new(0);
    let job = |i: usize, _: usize| {
        // part and offset of item i (a handful of parts: a scan)
        let mut i = i;
        for p in parts {
            let n = p.len().div_ceil(item);
            if i < n {
                let bytes = &p[i * item..p.len().min((i + 1) * item)];
                sink.fetch_add(membw::read_bytes(bytes, pattern), Ordering::Relaxed);
                return;
            }
            i -= n;
        }
    };
    if items <= pool.threads() {
        pool.for_each_static(items, &job);
    } else {
        pool.for_each(items, &job);
    }
    std::hint::black_box(sink.load(Ordering::Relaxed))
}

/// Whether a call of setting `v` (0 the kernel, the others read forms) that follows one of
/// setting `last` needs an untimed kernel call before it, so that every timed kernel call
/// follows a kernel call, as it does without `--ceiling`.
///
/// Why: on the device a kernel call right after a read form read slower than one
/// after a kernel call: the same GEMV code timed in both places in one process read 1.2-4.9%
/// slower after the read (13 format-shape pairs), the V3 one-token MoE layer 1.0 / 1.4%
/// (session 36, call G), so the kernel's figures against the read forms were pessimistic.
pub fn needs_lead_in(v: usize, last: Option<usize>) -> bool {
    v == 0 && last.is_some_and(|l| l != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_kernel_call_after_a_read_form_gets_a_lead_in() {
        assert!(needs_lead_in(0, Some(3)));
        assert!(!needs_lead_in(0, Some(0)));
        assert!(!needs_lead_in(0, None));
        assert!(!needs_lead_in(2, Some(1)));
        assert!(!needs_lead_in(1, Some(0)));
    }

    #[test]
    fn items_cover_every_thread_up_to_the_probe_slice() {
        let all = forms();
        assert_eq!(all.len(), PATTERNS.len() * ITEMS_PER_THREAD.len());
        let (one, four) = (all[0], all[1]);
        assert_eq!((one.items_per_thread, four.items_per_thread), (1, 4));
        assert_eq!(
            four.label(),
            format!("{}; 4 items a thread", PATTERNS[0].name)
        );
        assert_eq!(one.item_bytes(1 << 30, 16), MAX_ITEM);
        assert_eq!(four.item_bytes(1 << 30, 16), MAX_ITEM);
        // a 1408x2048 Q4_K matrix on 16 threads: one item a thread, or four, whole lines
        let v2 = 1408 * 1152;
        for (f, n) in [(one, 16), (four, 64)] {
            let it = f.item_bytes(v2, 16);
            assert_eq!(it % LINE, 0);
            assert_eq!(v2.div_ceil(it), n);
        }
        assert_eq!(one.item_bytes(10, 16), LINE);
        assert_eq!(four.item_bytes(0, 0), LINE);
    }

    #[test]
    fn every_byte_of_every_part_is_read_once() {
        let pool = ThreadPool::new(2).unwrap();
        // parts of different lengths, none a multiple of the item
        let a: Vec<u8> = (0..5000u32).map(|i| (i % 253) as u8 | 1).collect();
        let b: Vec<u8> = (0..20_000u32).map(|i| (i % 241) as u8 | 2).collect();
        let c: Vec<u8> = (0..64u32).map(|i| i as u8 | 4).collect();
        let parts: [&[u8]; 3] = [&a, &b, &c];
        // the sum of every part's aligned words, read whole
        let whole = |item: usize| {
            parts
                .iter()
                .flat_map(|p| p.chunks(item))
                .map(|s| membw::read_bytes(s, &PATTERNS[0]))
                .fold(0u64, |x, y| x.wrapping_add(y))
        };
        for &item in &[64usize, 1024, 4096, 1 << 20] {
            let want = whole(item);
            for p in &PATTERNS {
                assert_eq!(
                    read_parts(&pool, &parts, item, p),
                    want,
                    "{} {item}",
                    p.name
                );
            }
        }
    }
}
