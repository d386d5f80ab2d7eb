//! Private dev timing (not committed): min and median ns per call of the AMX table's
//! GEMM tile, single thread, weights resident.
use half::f16;
use kt_kernels::cpu::dispatch::{self, GemmTile};
use kt_kernels::cpu::Isa;
use kt_kernels::quant::QType;
use kt_kernels::util::SplitMix64;
use std::time::Instant;

fn main() {
    let a: Vec<String> = std::env::args().collect();
    let q = QType::from_name(&a[1]).unwrap();
    let (rows, k, tokens, iters): (usize, usize, usize, usize) = (
        a[2].parse().unwrap(),
        a[3].parse().unwrap(),
        a[4].parse().unwrap(),
        a[5].parse().unwrap(),
    );
    let table = dispatch::table(Isa::Amx).unwrap();
    let fk = *table.get(q).unwrap();
    let mut rng = SplitMix64::new(5);
    let rb = q.row_bytes(k).unwrap();
    let mut w: Vec<u8> = (0..rows * rb).map(|_| rng.next_u64() as u8).collect();
    // sane f16 scales: for k-quants d, dmin at block start (Q4_K/Q5_K), Q2_K at end
    let (bb, off): (usize, &[usize]) = match q {
        QType::Q4_K | QType::Q5_K => (q.row_bytes(256).unwrap(), &[0, 2]),
        QType::Q2_K => (84, &[80, 82]),
        _ => (rb, &[]),
    };
    for blk in w.chunks_mut(bb) {
        for &o in off {
            blk[o..o + 2].copy_from_slice(
                &f16::from_f32(0.001 * (1.0 + rng.uniform(0.0, 1.0))).to_le_bytes(),
            );
        }
    }
    let x: Vec<f32> = (0..tokens * k).map(|_| rng.normal()).collect();
    let ar = kt_kernels::cpu::act_row_bytes(q, k).unwrap();
    let mut xq = vec![0u8; tokens * ar];
    for t in 0..tokens {
        unsafe { (fk.quantize_act)(&x[t * k..(t + 1) * k], &mut xq[t * ar..(t + 1) * ar]) };
    }
    let mut out = vec![0f32; tokens * rows];
    let tile = GemmTile {
        qtype: q,
        k,
        w: w.as_ptr(),
        w_stride: rb,
        rows,
        a: xq.as_ptr(),
        a_stride: ar,
        tokens,
        out: out.as_mut_ptr(),
        ldo: rows,
    };
    let mut ts = Vec::with_capacity(iters);
    for _ in 0..iters {
        let t0 = Instant::now();
        unsafe { (fk.gemm)(&tile) };
        ts.push(t0.elapsed().as_nanos() as f64);
    }
    ts.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let ops = 2.0 * (rows * k * tokens) as f64;
    println!(
        "{} {}x{} T={} min {:.3} ms med {:.3} ms  {:.0} GOPS(min) chk {}",
        q,
        rows,
        k,
        tokens,
        ts[0] / 1e6,
        ts[iters / 2] / 1e6,
        ops / ts[0],
        out.iter().map(|v| *v as f64).sum::<f64>()
    );
}
