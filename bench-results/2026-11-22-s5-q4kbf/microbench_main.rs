use kt_kernels::cpu::dispatch::{self, GemmTile};
use kt_kernels::cpu::Isa;
use kt_kernels::quant::{self, QType};
use kt_kernels::util::SplitMix64;
use std::time::Instant;

fn cpu_ns() -> u64 {
    let mut ts = libc_timespec { tv_sec: 0, tv_nsec: 0 };
    unsafe { clock_gettime(3, &mut ts) }; // CLOCK_THREAD_CPUTIME_ID
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}
#[repr(C)] struct libc_timespec { tv_sec: i64, tv_nsec: i64 }
extern "C" { fn clock_gettime(clk: i32, ts: *mut libc_timespec) -> i32; }

unsafe fn noop(_w: *const u8, _ws: usize, _rows: usize, _k0: usize, _kn: usize, _dst: *mut u16, _ds: usize) {}
static mut SCRATCH: [u16; 32 * 256 * 4] = [0; 32 * 256 * 4];
static mut DQ: Option<kt_kernels::cpu::dispatch::DequantBf16Fn> = None;
unsafe fn fake(w: *const u8, ws: usize, rows: usize, k0: usize, kn: usize, _dst: *mut u16, ds: usize) { DQ.unwrap()(w, ws, rows, k0, kn, std::ptr::addr_of_mut!(SCRATCH).cast(), ds) }
fn main() {
    let args: Vec<String> = std::env::args().collect();
    let rows: usize = args.get(1).map_or(2048, |s| s.parse().unwrap());
    let k: usize = args.get(2).map_or(7168, |s| s.parse().unwrap());
    let copies: usize = args.get(3).map_or(8, |s| s.parse().unwrap());
    let mut rng = SplitMix64::new(1);
    let mut f = vec![0f32; rows * k];
    rng.fill_normal(&mut f, 0.02);
    let rb = QType::Q4_K.row_bytes(k).unwrap();
    let mut w1 = vec![0u8; rows * rb];
    quant::quantize(QType::Q4_K, &f, &mut w1).unwrap();
    let w: Vec<Vec<u8>> = (0..copies).map(|_| w1.clone()).collect();
    let table = dispatch::table(Isa::Amx).unwrap();
    let bf = table.bf16_gemm(QType::Q4_K).unwrap();
    let int = table.get(QType::Q4_K).unwrap();
    let ar = QType::Q8_K.row_bytes(k).unwrap();
    let toks: Vec<usize> = std::env::var("TOKS").map_or(vec![8usize, 16, 24, 32, 48, 64], |s| s.split(",").map(|t| t.parse().unwrap()).collect()); let paths: usize = std::env::var("PATHS").map_or(3, |s| s.parse().unwrap()); for tokens in toks {
        let mut x = vec![0f32; tokens * k];
        rng.fill_normal(&mut x, 1.0);
        let mut xq = vec![0u8; tokens * ar];
        quant::quantize(QType::Q8_K, &x, &mut xq).unwrap();
        let mut out = vec![0f32; tokens * 128];
        let mut res = vec![]; let mut buf = vec![0u16; 32 * 256];
        for path in std::env::var("PATH0").map_or(0, |s| s.parse().unwrap())..paths {
            let mut best = u64::MAX;
            let reps: usize = std::env::var("REPS").map_or(5, |s| s.parse().unwrap()); for rep in 0..reps {
                let t0 = cpu_ns();
                let _w0 = Instant::now();
                for c in 0..copies {
                for r0 in (0..rows).step_by(128) {
                    let t = GemmTile { qtype: QType::Q4_K, k, w: w[c][r0 * rb..].as_ptr(), w_stride: rb, rows: 128.min(rows - r0), a: xq.as_ptr(), a_stride: ar, tokens, out: out.as_mut_ptr(), ldo: 128 };
                    unsafe { if path == 0 { (bf.gemm)(&t, bf.dequant) } else if path == 3 { (bf.gemm)(&t, noop) } else if path == 4 { DQ = Some(bf.dequant); (bf.gemm)(&t, fake) } else if path == 1 { (int.gemm)(&t) } else {
                        for rr in (0..t.rows).step_by(32) { for kk in (0..k).step_by(256) { (bf.dequant)(t.w.add(rr * rb), rb, 32, kk, 256, buf.as_mut_ptr(), 256); } }
                    } }
                }
                }
                let dt = cpu_ns() - t0;
                if rep > 0 { best = best.min(dt); }
            }
            let per_w = best as f64 / (copies * rows * k) as f64;
            res.push(per_w);
        }
        println!("tokens {tokens:3}: bf16 {:.4} ns/weight  int8-amx {:.4} ns/weight  ratio {:.2} dequant-only {:.4} gemm-noop-dequant {:.4} gemm-fake {:.4}", res[0], res.get(1).copied().unwrap_or(0.0), 0.0, res.get(2).copied().unwrap_or(0.0), res.get(3).copied().unwrap_or(0.0), res.get(4).copied().unwrap_or(0.0));
    }
}
