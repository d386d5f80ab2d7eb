use std::arch::asm;
use std::time::Instant;
#[repr(C, align(64))] struct Cfg([u8; 64]);
#[repr(C, align(64))] struct Buf([u8; 65536]);
fn main() {
    kt_kernels::cpu::dispatch::table(kt_kernels::cpu::Isa::Amx).unwrap();
    let mut c = Cfg([0; 64]); c.0[0] = 1;
    for t in 0..8 { c.0[16 + 2*t] = 64; c.0[48 + t] = 16; }
    let buf = Box::new(Buf([1; 65536]));
    let p = buf.0.as_ptr();
    unsafe { asm!("ldtilecfg [{0}]", in(reg) c.0.as_ptr()); }
    let n = 2_000_000u64;
    for variant in 0..7 {
        let t0 = Instant::now();
        for _ in 0..n / 4 {
            unsafe {
                match variant {
                    0 => asm!("tdpbf16ps tmm0, tmm4, tmm6", "tdpbf16ps tmm1, tmm4, tmm7", "tdpbf16ps tmm2, tmm5, tmm6", "tdpbf16ps tmm3, tmm5, tmm7"),
                    1 => asm!("tdpbssd tmm0, tmm4, tmm6", "tdpbssd tmm1, tmm4, tmm7", "tdpbssd tmm2, tmm5, tmm6", "tdpbssd tmm3, tmm5, tmm7"),
                    2 => asm!("tileloadd tmm4, [{p} + {s}*1]", "tileloadd tmm6, [{p} + {s}*1 + 1024]", "tdpbf16ps tmm0, tmm4, tmm6", "tileloadd tmm7, [{p} + {s}*1 + 2048]", "tdpbf16ps tmm1, tmm4, tmm7", "tileloadd tmm5, [{p} + {s}*1+ 4096]", "tdpbf16ps tmm2, tmm5, tmm6", "tdpbf16ps tmm3, tmm5, tmm7", p = in(reg) p, s = in(reg) 64usize),
                    3 => asm!("tdpbf16ps tmm0, tmm4, tmm6", "tdpbf16ps tmm0, tmm4, tmm7", "tdpbf16ps tmm0, tmm5, tmm6", "tdpbf16ps tmm0, tmm5, tmm7"),
                    // 4: 4 tdp + 96 independent zmm FMAs (8 chains x 12)
                    4 => asm!("tdpbf16ps tmm0, tmm4, tmm6", "tdpbf16ps tmm1, tmm4, tmm7", "tdpbf16ps tmm2, tmm5, tmm6", "tdpbf16ps tmm3, tmm5, tmm7",
                        ".rept 12", "vfmadd231ps zmm0, zmm8, zmm9", "vfmadd231ps zmm1, zmm8, zmm9", "vfmadd231ps zmm2, zmm8, zmm9", "vfmadd231ps zmm3, zmm8, zmm9", "vfmadd231ps zmm4, zmm8, zmm9", "vfmadd231ps zmm5, zmm8, zmm9", "vfmadd231ps zmm6, zmm8, zmm9", "vfmadd231ps zmm7, zmm8, zmm9", ".endr",
                        out("zmm0") _, out("zmm1") _, out("zmm2") _, out("zmm3") _, out("zmm4") _, out("zmm5") _, out("zmm6") _, out("zmm7") _),
                    // 5: the FMAs alone
                    5 => asm!(".rept 12", "vfmadd231ps zmm0, zmm8, zmm9", "vfmadd231ps zmm1, zmm8, zmm9", "vfmadd231ps zmm2, zmm8, zmm9", "vfmadd231ps zmm3, zmm8, zmm9", "vfmadd231ps zmm4, zmm8, zmm9", "vfmadd231ps zmm5, zmm8, zmm9", "vfmadd231ps zmm6, zmm8, zmm9", "vfmadd231ps zmm7, zmm8, zmm9", ".endr",
                        out("zmm0") _, out("zmm1") _, out("zmm2") _, out("zmm3") _, out("zmm4") _, out("zmm5") _, out("zmm6") _, out("zmm7") _),
                    // 6: 4 tdp + 96 vpermw (port 5)
                    _ => asm!("tdpbf16ps tmm0, tmm4, tmm6", "tdpbf16ps tmm1, tmm4, tmm7", "tdpbf16ps tmm2, tmm5, tmm6", "tdpbf16ps tmm3, tmm5, tmm7",
                        ".rept 12", "vpermw zmm0, zmm8, zmm9", "vpermw zmm1, zmm8, zmm9", "vpermw zmm2, zmm8, zmm9", "vpermw zmm3, zmm8, zmm9", "vpermw zmm4, zmm8, zmm9", "vpermw zmm5, zmm8, zmm9", "vpermw zmm6, zmm8, zmm9", "vpermw zmm7, zmm8, zmm9", ".endr",
                        out("zmm0") _, out("zmm1") _, out("zmm2") _, out("zmm3") _, out("zmm4") _, out("zmm5") _, out("zmm6") _, out("zmm7") _),
                }
            }
        }
        let dt = t0.elapsed().as_secs_f64();
        println!("variant {variant}: {:.2} ns per 1/4 iteration (per tdp where present)", dt * 1e9 / n as f64);
    }
    unsafe { asm!("tilerelease"); }
}
