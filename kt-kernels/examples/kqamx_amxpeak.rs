//! Private dev microbenchmark (not committed): tdpbusd / tileloadd throughput.
use kt_kernels::cpu::Isa;
use std::arch::asm;
use std::time::Instant;
#[repr(C, align(64))]
struct Cfg([u8; 64]);
#[repr(C, align(64))]
struct Buf([u8; 16384]);
fn main() {
    Isa::Amx.check().unwrap();
    let mut c = Cfg([0; 64]);
    c.0[0] = 1;
    let half = std::env::args().count() > 1;
    for t in 0..8 {
        c.0[16 + 2 * t] = if half && (t == 4 || t == 5) { 32 } else { 64 };
        c.0[48 + t] = if half && t >= 6 { 8 } else { 16 };
    }
    let buf = Box::new(Buf([1; 16384]));
    let p = buf.0.as_ptr();
    unsafe { asm!("ldtilecfg [{0}]", in(reg) c.0.as_ptr()) };
    let n = 2_000_000u64;
    for mode in 0..4 {
        let t0 = Instant::now();
        for _ in 0..n {
            unsafe {
                match mode {
                    0 => asm!(
                        "tdpbusd tmm0, tmm4, tmm6",
                        "tdpbusd tmm1, tmm4, tmm7",
                        "tdpbusd tmm2, tmm5, tmm6",
                        "tdpbusd tmm3, tmm5, tmm7"
                    ),
                    1 => {
                        asm!("tileloadd tmm4, [{p} + {s}*1]", "tileloadd tmm5, [{p} + {s}*1 + 1024]", "tileloadd tmm6, [{p} + {s}*1 + 2048]", "tileloadd tmm7, [{p} + {s}*1 + 3072]", p = in(reg) p, s = in(reg) 64usize)
                    }
                    2 => {
                        asm!("tileloadd tmm4, [{p} + {s}*1]", "tileloadd tmm6, [{p} + {s}*1 + 2048]", "tdpbusd tmm0, tmm4, tmm6", "tdpbusd tmm1, tmm5, tmm6", "tileloadd tmm5, [{p} + {s}*1 + 1024]", "tileloadd tmm7, [{p} + {s}*1 + 3072]",  "tdpbusd tmm0, tmm4, tmm7", "tdpbusd tmm1, tmm5, tmm7", p = in(reg) p, s = in(reg) 64usize)
                    }
                    _ => {
                        asm!("tilestored [{p} + {s}*1], tmm0", "tilestored [{p} + {s}*1 + 1024], tmm1", p = in(reg) p, s = in(reg) 64usize)
                    }
                }
            }
        }
        let ns = t0.elapsed().as_nanos() as f64 / n as f64;
        println!("mode {mode}: {:.2} ns per iteration (0: 4 dp; 1: 4 loads; 2: 4 loads + 4 dp; 3: 2 stores)", ns);
    }
    unsafe { asm!("tilerelease") };
}
