mod cpu;
mod quant { pub const QK: usize = 32; pub const QK_K: usize = 256; }
use cpu::dispatch::GemmTile;

struct Rng(u64);
impl Rng { fn next(&mut self) -> u64 { self.0 = self.0.wrapping_add(0x9E3779B97F4A7C15); let mut z = self.0; z = (z ^ (z >> 30)).wrapping_mul(0xBF58476D1CE4E5B9); z = (z ^ (z >> 27)).wrapping_mul(0x94D049BB133111EB); z ^ (z >> 31) } }

fn cpu_s() -> f64 { let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 }; unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) }; ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9 }

#[derive(Clone, Copy, PartialEq)]
enum F { Q4K, Q5_0, Q8_0 }
impl F {
    fn bb(self) -> (usize, usize) { match self { F::Q4K => (256, 144), F::Q5_0 => (32, 22), F::Q8_0 => (32, 34) } }
    fn ab(self) -> usize { match self { F::Q4K => 292, _ => 34 } }
}
fn f16(v: f32) -> [u8; 2] { half::f16::from_f32(v).to_le_bytes() }

fn weights(f: F, rows: usize, k: usize, r: &mut Rng) -> Vec<u8> {
    let (qk, bb) = f.bb();
    let mut w: Vec<u8> = (0..rows * k / qk * bb).map(|_| r.next() as u8).collect();
    for b in w.chunks_exact_mut(bb) {
        let d = f16(0.001 * ((r.next() % 1000) as f32 + 1.0));
        b[0..2].copy_from_slice(&d);
        if f == F::Q4K { b[2..4].copy_from_slice(&f16(0.0005 * ((r.next() % 1000) as f32))); }
    }
    w
}
fn acts(f: F, k: usize, tokens: usize, r: &mut Rng) -> Vec<u8> {
    let ab = f.ab();
    let nb = k / f.bb().0;
    let mut a = vec![0u8; tokens * nb * ab];
    for blk in a.chunks_exact_mut(ab) {
        if f == F::Q4K {
            blk[0..4].copy_from_slice(&(0.01f32 * ((r.next() % 100) as f32 + 1.0)).to_le_bytes());
            let qs: Vec<i8> = (0..256).map(|_| ((r.next() % 255) as i32 - 127) as i8).collect();
            for i in 0..256 { blk[4 + i] = qs[i] as u8; }
            for g in 0..16 { let s: i16 = qs[16 * g..16 * g + 16].iter().map(|&x| x as i16).sum(); blk[260 + 2 * g..262 + 2 * g].copy_from_slice(&s.to_le_bytes()); }
        } else {
            blk[0..2].copy_from_slice(&f16(0.01 * ((r.next() % 100) as f32 + 1.0)));
            for i in 0..32 { blk[2 + i] = ((r.next() % 255) as i32 - 127) as i8 as u8; }
        }
    }
    a
}

type Kern = unsafe fn(&GemmTile);
fn kern(f: F, new: bool) -> Kern {
    match (f, new) {
        (F::Q4K, false) => cpu::avx2::q4k, (F::Q4K, true) => cpu::avx2new::q4k,
        (F::Q5_0, false) => cpu::avx2::q5_0, (F::Q5_0, true) => cpu::avx2new::q5_0,
        (F::Q8_0, false) => cpu::avx2::q8_0, (F::Q8_0, true) => cpu::avx2new::q8_0,
    }
}

fn run(kf: Kern, f: F, w: &[u8], rows: usize, k: usize, a: &[u8], tokens: usize, out: &mut [f32]) {
    let (qk, bb) = f.bb();
    let t = GemmTile { k, w: w.as_ptr(), w_stride: k / qk * bb, rows, a: a.as_ptr(), a_stride: k / qk * f.ab(), tokens, out: out.as_mut_ptr(), ldo: rows };
    unsafe { kf(&t) }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let mode = args.get(1).map(|s| s.as_str()).unwrap_or("res");
    let reps: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(5);
    let tokens: usize = std::env::var("TOK").ok().and_then(|s| s.parse().ok()).unwrap_or(1);
    let mut r = Rng(42);
    let cases = [(F::Q4K, 1408usize, 2048usize, "q4_K 1408x2048"), (F::Q5_0, 2048, 1408, "q5_0 2048x1408"), (F::Q8_0, 2048, 1408, "q8_0 2048x1408")];
    let only = std::env::var("ONLY").ok();
    for &(f, rows, k, name) in &cases {
        if let Some(o) = &only { if !name.starts_with(o.as_str()) { continue; } }
        let copies = if mode == "dram" { (512usize << 20) / (rows * k / f.bb().0 * f.bb().1) } else { 1 };
        let ws: Vec<Vec<u8>> = (0..copies).map(|_| weights(f, rows, k, &mut r)).collect();
        let a = acts(f, k, tokens, &mut r);
        let mut o0 = vec![f32::NAN; rows * tokens];
        let mut o1 = vec![f32::NAN; rows * tokens];
        run(kern(f, false), f, &ws[0], rows, k, &a, tokens, &mut o0);
        run(kern(f, true), f, &ws[0], rows, k, &a, tokens, &mut o1);
        let same = o0.iter().zip(&o1).all(|(x, y)| x.to_bits() == y.to_bits());
        let maxrel = o0.iter().zip(&o1).map(|(x, y)| ((x - y).abs() / x.abs().max(1e-3)) as f64).fold(0.0, f64::max);
        let bytes = (rows * k / f.bb().0 * f.bb().1) as f64;
        let mut best = [f64::MAX; 2];
        for rep in 0..reps {
            for (vi, new) in [(0, false), (1, true)] {
                let kf = kern(f, new);
                let calls = if mode == "dram" { copies } else { 200 };
                let c0 = cpu_s();
                for c in 0..calls { run(kf, f, &ws[c % copies], rows, k, &a, tokens, &mut o0); }
                let dt = (cpu_s() - c0) / calls as f64;
                best[vi] = best[vi].min(dt);
                let _ = rep;
            }
        }
        println!("{name} T={tokens} {mode}: base {:.1} GB/s ({:.2} us) new {:.1} GB/s ({:.2} us) ratio {:.3} bit-identical {same} maxrel {maxrel:.2e}",
            bytes / best[0] / 1e9, best[0] * 1e6, bytes / best[1] / 1e9, best[1] * 1e6, best[0] / best[1]);
    }
}
