//! Scratch probe (gemm9, dev VM): what one Q6_K AMX step's tile sequence costs, in ns,
//! against variants. Not part of the build: copy to kt-kernels/examples/ and
//! `cargo run --release -p kt-kernels --example amx_step_probe` (AMX CPU).
//!
//! SAFETY (every `unsafe` block of this probe): it runs the library's AMX matmul first
//! (`Isa::Amx`, which makes the Linux AMX permission request and fails cleanly without
//! AMX), so the tile instructions are allowed; `ldtilecfg` configures all eight tiles
//! (16 rows x 64 bytes) before any tile instruction; every tile load / store and vector
//! access stays inside the three 16 KiB, 64-byte-aligned buffers (the largest reach is
//! 8192 + 4 x 64 + a 16 x 64-byte tile, under 9.5 KiB); `tilerelease` ends the probe.
use std::arch::asm;
use std::time::Instant;

#[repr(C, align(64))]
struct Buf([u8; 16384]);

macro_rules! ld {
    ($t:literal, $p:expr) => {
        asm!(concat!("tileloadd tmm", stringify!($t), ", [{p} + {s}*1]"), p = in(reg) $p, s = in(reg) 64usize, options(nostack, readonly, preserves_flags))
    };
    ($t:literal, $p:expr, $s:expr) => {
        asm!(concat!("tileloadd tmm", stringify!($t), ", [{p} + {s}*1]"), p = in(reg) $p, s = in(reg) $s, options(nostack, readonly, preserves_flags))
    };
}
macro_rules! st {
    ($t:literal, $p:expr) => {
        asm!(concat!("tilestored [{p} + {s}*1], tmm", stringify!($t)), p = in(reg) $p, s = in(reg) 64usize, options(nostack, preserves_flags))
    };
}
macro_rules! zero {
    ($t:literal) => {
        asm!(concat!("tilezero tmm", stringify!($t)), options(nostack, nomem, preserves_flags))
    };
}
macro_rules! dp {
    ($c:literal, $a:literal, $b:literal) => {
        asm!(concat!("tdpbssd tmm", stringify!($c), ", tmm", stringify!($a), ", tmm", stringify!($b)), options(nostack, nomem, preserves_flags))
    };
}


/// ~16 rows of a scale epilogue's vector work: loads of 3 C rows, shifts, adds, a
/// conversion and an FMA per row, on `c` (the previous step's products).
#[target_feature(enable = "avx512f")]
unsafe fn scale_like(c: *const u8, acc: &mut [std::arch::x86_64::__m512; 16]) {
    use std::arch::x86_64::*;
    let da = _mm512_set1_ps(0.5);
    for (n, a) in acc.iter_mut().enumerate() {
        unsafe {
            let c0 = _mm512_load_si512(c.add(64 * n).cast());
            let c1 = _mm512_load_si512(c.add(1024 + 64 * n).cast());
            let c2 = _mm512_load_si512(c.add(2048 + 64 * n).cast());
            let dot = _mm512_add_epi32(c0, _mm512_add_epi32(_mm512_slli_epi32::<3>(c1), _mm512_slli_epi32::<6>(c2)));
            let v = _mm512_mul_ps(_mm512_cvtepi32_ps(dot), _mm512_set1_ps(1.25));
            *a = _mm512_fmadd_ps(v, da, *a);
        }
    }
}

fn main() {
    // Ask for AMX through the library (arch_prctl) with one tiny product.
    {
        use kt_kernels::cpu::{self, Isa, ThreadPool};
        use kt_kernels::quant::{self, QType};
        let pool = ThreadPool::new(1).unwrap();
        let (rows, cols, tokens) = (16, 256, 64);
        let wf: Vec<f32> = (0..rows * cols).map(|i| (i % 7) as f32 - 3.0).collect();
        let mut w = vec![0u8; rows * QType::Q6_K.row_bytes(cols).unwrap()];
        quant::quantize(QType::Q6_K, &wf, &mut w).unwrap();
        let x = vec![0.5f32; tokens * cols];
        let mut out = vec![0f32; tokens * rows];
        cpu::matmul_with(Isa::Amx, &pool, QType::Q6_K, &w, rows, cols, &x, tokens, &mut out).unwrap();
    }
    let mut cfg = [0u8; 64];
    cfg[0] = 1;
    for t in 0..8 {
        cfg[16 + 2 * t..18 + 2 * t].copy_from_slice(&64u16.to_le_bytes());
        cfg[48 + t] = 16;
    }
    let a = Box::new(Buf([3; 16384]));
    let b = Box::new(Buf([1; 16384]));
    let mut c = Box::new(Buf([0; 16384])); // two C buffers of 3 KiB at 0 and 4096
    let n = 200_000usize;
    let (ap, bp, cp) = (a.0.as_ptr(), b.0.as_ptr(), c.0.as_mut_ptr());
    unsafe { asm!("ldtilecfg [{0}]", in(reg) cfg.as_ptr(), options(nostack, readonly)) };
    for round in 0..3 {
        // 1. the Q6_K step as products() issues it
        let t = Instant::now();
        for _ in 0..n {
            unsafe {
                zero!(0); zero!(1); zero!(2);
                for step in [0usize, 2] {
                    ld!(6, bp.add(1024 * step));
                    ld!(3, ap.add(64 * step), 256usize); dp!(0, 3, 6);
                    ld!(4, ap.add(4096 + 64 * step), 256usize); dp!(1, 4, 6);
                    ld!(5, ap.add(8192 + 64 * step), 256usize); dp!(2, 5, 6);
                    ld!(7, bp.add(1024 * step + 1024));
                    ld!(3, ap.add(64 * step + 64), 256usize); dp!(0, 3, 7);
                    ld!(4, ap.add(4096 + 64 * step + 64), 256usize); dp!(1, 4, 7);
                    ld!(5, ap.add(8192 + 64 * step + 64), 256usize); dp!(2, 5, 7);
                }
                st!(0, cp); st!(1, cp.add(1024)); st!(2, cp.add(2048));
            }
        }
        let step_ns = t.elapsed().as_secs_f64() * 1e9 / n as f64;
        // 2. the same without zero/store (accumulate across steps)
        let t = Instant::now();
        for _ in 0..n {
            unsafe {
                for step in [0usize, 2] {
                    ld!(6, bp.add(1024 * step));
                    ld!(3, ap.add(64 * step), 256usize); dp!(0, 3, 6);
                    ld!(4, ap.add(4096 + 64 * step), 256usize); dp!(1, 4, 6);
                    ld!(5, ap.add(8192 + 64 * step), 256usize); dp!(2, 5, 6);
                    ld!(7, bp.add(1024 * step + 1024));
                    ld!(3, ap.add(64 * step + 64), 256usize); dp!(0, 3, 7);
                    ld!(4, ap.add(4096 + 64 * step + 64), 256usize); dp!(1, 4, 7);
                    ld!(5, ap.add(8192 + 64 * step + 64), 256usize); dp!(2, 5, 7);
                }
            }
        }
        let nostore_ns = t.elapsed().as_secs_f64() * 1e9 / n as f64;
        // 3. 12 dp only, operands resident
        let t = Instant::now();
        for _ in 0..n {
            unsafe {
                for _ in 0..2 {
                    dp!(0, 3, 6); dp!(1, 4, 6); dp!(2, 5, 6);
                    dp!(0, 3, 7); dp!(1, 4, 7); dp!(2, 5, 7);
                }
            }
        }
        let dp_ns = t.elapsed().as_secs_f64() * 1e9 / n as f64;
        // 4. 12 dp into 4 independent C tiles (0,1,2,3 with A 4,5 and B 6,7)
        let t = Instant::now();
        for _ in 0..n {
            unsafe {
                for _ in 0..3 {
                    dp!(0, 4, 6); dp!(1, 5, 6); dp!(2, 4, 7); dp!(3, 5, 7);
                }
            }
        }
        let dp4_ns = t.elapsed().as_secs_f64() * 1e9 / n as f64;
        // 5. 16 loads only
        let t = Instant::now();
        for _ in 0..n {
            unsafe {
                for step in 0..4usize {
                    ld!(6, bp.add(1024 * step));
                    ld!(3, ap.add(64 * step), 256usize);
                    ld!(4, ap.add(4096 + 64 * step), 256usize);
                    ld!(5, ap.add(8192 + 64 * step), 256usize);
                }
            }
        }
        let ld_ns = t.elapsed().as_secs_f64() * 1e9 / n as f64;
        // 6. 3 zero + 3 stores only
        let t = Instant::now();
        for _ in 0..n {
            unsafe {
                zero!(0); zero!(1); zero!(2);
                st!(0, cp); st!(1, cp.add(1024)); st!(2, cp.add(2048));
            }
        }
        let st_ns = t.elapsed().as_secs_f64() * 1e9 / n as f64;
        // 7. the step, then the scale-like work on the other C buffer (the pipeline's order)
        let mut acc = [unsafe { std::arch::x86_64::_mm512_setzero_ps() }; 16];
        let c2p = unsafe { cp.add(4096) };
        let t = Instant::now();
        for i in 0..n {
            let (cur, prev) = if i & 1 == 0 { (cp, c2p) } else { (c2p, cp) };
            unsafe {
                zero!(0); zero!(1); zero!(2);
                for step in [0usize, 2] {
                    ld!(6, bp.add(1024 * step));
                    ld!(3, ap.add(64 * step), 256usize); dp!(0, 3, 6);
                    ld!(4, ap.add(4096 + 64 * step), 256usize); dp!(1, 4, 6);
                    ld!(5, ap.add(8192 + 64 * step), 256usize); dp!(2, 5, 6);
                    ld!(7, bp.add(1024 * step + 1024));
                    ld!(3, ap.add(64 * step + 64), 256usize); dp!(0, 3, 7);
                    ld!(4, ap.add(4096 + 64 * step + 64), 256usize); dp!(1, 4, 7);
                    ld!(5, ap.add(8192 + 64 * step + 64), 256usize); dp!(2, 5, 7);
                }
                st!(0, cur); st!(1, cur.add(1024)); st!(2, cur.add(2048));
                scale_like(prev, &mut acc);
            }
        }
        let then_scale_ns = t.elapsed().as_secs_f64() * 1e9 / n as f64;
        // 8. the scale-like work issued before the step's stores (between its last dp and
        // its stores)
        let t = Instant::now();
        for i in 0..n {
            let (cur, prev) = if i & 1 == 0 { (cp, c2p) } else { (c2p, cp) };
            unsafe {
                zero!(0); zero!(1); zero!(2);
                for step in [0usize, 2] {
                    ld!(6, bp.add(1024 * step));
                    ld!(3, ap.add(64 * step), 256usize); dp!(0, 3, 6);
                    ld!(4, ap.add(4096 + 64 * step), 256usize); dp!(1, 4, 6);
                    ld!(5, ap.add(8192 + 64 * step), 256usize); dp!(2, 5, 6);
                    ld!(7, bp.add(1024 * step + 1024));
                    ld!(3, ap.add(64 * step + 64), 256usize); dp!(0, 3, 7);
                    ld!(4, ap.add(4096 + 64 * step + 64), 256usize); dp!(1, 4, 7);
                    ld!(5, ap.add(8192 + 64 * step + 64), 256usize); dp!(2, 5, 7);
                }
                scale_like(prev, &mut acc);
                st!(0, cur); st!(1, cur.add(1024)); st!(2, cur.add(2048));
            }
        }
        let scale_first_ns = t.elapsed().as_secs_f64() * 1e9 / n as f64;
        // 9. the scale-like work alone
        let t = Instant::now();
        for i in 0..n {
            let prev = if i & 1 == 0 { c2p } else { cp };
            unsafe { scale_like(prev, &mut acc) };
        }
        let scale_ns = t.elapsed().as_secs_f64() * 1e9 / n as f64;
        std::hint::black_box(&acc);
        println!(
            "round {round}: step+scale {then_scale_ns:.1} ns | scale before stores {scale_first_ns:.1} | scale alone {scale_ns:.1}"
        );
        println!(
            "round {round}: step {step_ns:.1} ns | no zero/store {nostore_ns:.1} | 12 dp (3 C) {dp_ns:.1} | 12 dp (4 C) {dp4_ns:.1} | 16 loads {ld_ns:.1} | 3 zero+3 store {st_ns:.1}"
        );
    }
    unsafe { asm!("tilerelease", options(nostack, nomem)) };
    std::hint::black_box(&mut c);
}
