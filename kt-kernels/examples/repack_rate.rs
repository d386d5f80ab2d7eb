//! How fast the load-time repack runs (`cpu::moe::repack::RepackedStack::from_stack`), and
//! what part of it is the first touch of the fresh output pages:
//!   cargo run --release -p kt-kernels --example repack_rate -- [EXPERTS] [ROWSxCOLS] [REPS]
//! A random Q4_K stack (64 distinct rows repeated) is repacked to int4-g128 and int8-g128
//! on the kernels' pool (`KT_THREADS` threads) `REPS` times each; printed: seconds and
//! M weights/s per repack, the same number of bytes freshly allocated and written once
//! (the first-touch floor: allocated, i.e. zeroed by one thread, and mapped, as the repack's
//! buffers are), and the stack's dequantization alone (the reference and the
//! load path's `cpu::dequantize`).

use std::time::Instant;

use kt_kernels::cpu::moe::repack::{RepackFormat, RepackedStack};
use kt_kernels::cpu::moe::ExpertStack;
use kt_kernels::cpu::pool;
use kt_kernels::quant::{self, QType};
use kt_kernels::util::{AlignedBuf, SplitMix64};

fn main() -> Result<(), String> {
    let mut args = std::env::args().skip(1);
    let experts: usize = args
        .next()
        .map_or(Ok(64), |v| v.parse())
        .map_err(|e| format!("{e}"))?;
    let (rows, cols) = match args.next() {
        Some(s) => {
            let (r, c) = s.split_once('x').ok_or(format!("shape {s:?}: ROWSxCOLS"))?;
            (
                r.parse().map_err(|_| "rows")?,
                c.parse().map_err(|_| "cols")?,
            )
        }
        None => (1408usize, 2048usize),
    };
    let reps: usize = args
        .next()
        .map_or(Ok(3), |v| v.parse())
        .map_err(|e| format!("{e}"))?;
    let q = QType::Q4_K;
    let rb = q.row_bytes(cols).map_err(|e| e.to_string())?;
    let distinct = 64.min(rows);
    let mut f = vec![0f32; distinct * cols];
    SplitMix64::new(1).fill_normal(&mut f, 0.05);
    let mut base = vec![0u8; distinct * rb];
    quant::quantize(q, &f, &mut base).map_err(|e| e.to_string())?;
    let bytes: Vec<u8> = (0..experts * rows)
        .flat_map(|r| {
            base[(r % distinct) * rb..(r % distinct + 1) * rb]
                .iter()
                .copied()
        })
        .collect();
    let stack = ExpertStack::from_vec(q, bytes, experts, rows, cols).map_err(|e| e.to_string())?;
    let pool = pool::global();
    let weights = (experts * rows * cols) as f64;
    println!(
        "{experts} experts of {rows}x{cols} Q4_K, {} threads",
        pool.threads()
    );
    for _ in 0..reps {
        for f in [
            RepackFormat::Int4 { group: 128 },
            RepackFormat::Int8 { group: 128 },
        ] {
            let t = Instant::now();
            let r = RepackedStack::from_stack(&stack, f).map_err(|e| e.to_string())?;
            let s = t.elapsed().as_secs_f64();
            println!(
                "{:>10}: {s:.3} s, {:.1} M weights/s, {:.2} GB out",
                f.name(),
                weights / s / 1e6,
                r.data().len() as f64 / 1e9
            );
            // The same bytes allocated fresh (zeroed by this thread, or mapped as the
            // repack's buffers are) and written once by the pool's threads.
            for mapped in [false, true] {
                let t = Instant::now();
                let len = r.data().len();
                let mut b = if mapped {
                    AlignedBuf::with_len_mapped(len)
                } else {
                    AlignedBuf::with_len(len)
                };
                let chunk = 1 << 20;
                let p = b.as_mut_slice().as_mut_ptr() as usize;
                pool.for_each(len.div_ceil(chunk), &|i, _| {
                    let n = chunk.min(len - i * chunk);
                    // SAFETY: chunk i of the buffer; chunks are disjoint.
                    unsafe { std::ptr::write_bytes((p as *mut u8).add(i * chunk), 1, n) };
                });
                println!(
                    "{:>10}  first touch of as many bytes, {}: {:.3} s",
                    "",
                    if mapped { "mapped" } else { "allocated" },
                    t.elapsed().as_secs_f64()
                );
            }
        }
        let t = Instant::now();
        let mut out = vec![0f32; rows * cols];
        for e in 0..experts {
            quant::reference::dequantize(q, stack.expert(e), &mut out);
        }
        let reference = t.elapsed().as_secs_f64();
        let t = Instant::now();
        for e in 0..experts {
            kt_kernels::cpu::dequantize(q, stack.expert(e), &mut out).map_err(|e| e.to_string())?;
        }
        println!(
            "dequantize, one thread: reference {reference:.3} s, cpu::dequantize {:.3} s",
            t.elapsed().as_secs_f64()
        );
    }
    Ok(())
}
