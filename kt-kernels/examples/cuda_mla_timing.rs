//! Timing of MLA attention over the paged latent cache (DeepSeek V3: 128 heads, latent 512 +
//! rope 64, bf16, blocks of 64 tokens), run on a GPU machine:
//! `cargo run --release -p kt-kernels --features cuda --example cuda_mla_timing`.
//! Decode at several batch sizes and context lengths (automatic and forced key splits), then
//! a causal prefill, with the best kernel for the device; the other kernels on the decode
//! shapes of batch 64 and 32. One line per case: microseconds per call, the cache bytes read per
//! microsecond (each sequence's cache once; the figure the 70%-of-HBM target is about) and
//! the tensor-core rate. `cuda/bench_torch_mla.py` times torch on the same decode shapes.
//! Arguments, if any, pick cases by the start of their names (`decode 64x4096`,
//! `splits 64x4096/2`, `prefill 512x512`, `MmaSync decode 64x4096`, ...): a device call with
//! little time times only the shapes it compares. (A benchmark, so not a test.)

#[path = "../tests/cuda_common/mod.rs"]
mod cuda_common;

use cuda_common::{gpu_or_skip, random};
use half::bf16;
use kt_kernels::cuda::mla::{MlaKernel, MlaWorkspace, CACHE_ROW, KV_LORA_RANK};
use kt_kernels::cuda::GpuStream;
use kt_kernels::util::SplitMix64;

const HEADS: usize = 128;
const BLOCK: usize = 64;

/// Mean microseconds of `iters` calls after 5 warm-ups.
fn time_us(s: &GpuStream, iters: usize, mut f: impl FnMut()) -> f64 {
    for _ in 0..5 {
        f();
    }
    let start = s.record_event().unwrap();
    for _ in 0..iters {
        f();
    }
    let end = s.record_event().unwrap();
    start.elapsed_ms(&end).unwrap() as f64 * 1000.0 / iters as f64
}

/// Case names that the command line picks (empty: all).
struct Pick(Vec<String>);

impl Pick {
    fn wants(&self, name: &str) -> bool {
        self.0.is_empty() || self.0.iter().any(|p| name.starts_with(p.as_str()))
    }
}

#[allow(clippy::too_many_arguments)]
fn case(
    s: &GpuStream,
    pick: &Pick,
    name: &str,
    kernel: MlaKernel,
    q_len: usize,
    batch: usize,
    kv: usize,
    splits: Option<usize>,
) {
    if !pick.wants(name) {
        return;
    }
    let mut rng = SplitMix64::new((batch * kv) as u64);
    let blocks_per_seq = kv.div_ceil(BLOCK);
    // Sequences' blocks interleaved in the pool, as an allocator serving many would leave them.
    let table: Vec<u32> = (0..batch * blocks_per_seq)
        .map(|i| ((i % blocks_per_seq) * batch + i / blocks_per_seq) as u32)
        .collect();
    let rows = batch * q_len * HEADS;
    let pool = s
        .upload(&random::<bf16>(
            &mut rng,
            batch * blocks_per_seq * BLOCK * CACHE_ROW,
            1.0,
        ))
        .unwrap();
    let q = s
        .upload(&random::<bf16>(&mut rng, rows * CACHE_ROW, 0.5))
        .unwrap();
    let mut out = s.alloc_zeroed::<bf16>(rows * KV_LORA_RANK).unwrap();
    let mut ws = MlaWorkspace::default();
    let mb = s
        .mla_batch(HEADS, &vec![q_len; batch], &vec![kv; batch], &table, BLOCK)
        .unwrap();
    let scale = 0.1352f32; // V3: 192^-0.5 * mscale^2 (about 1.87)
    let us = time_us(s, 20, || {
        s.mla_attention_with(&mb, &q, &pool, scale, &mut out, &mut ws, splits, kernel)
            .unwrap()
    });
    let bytes = (batch * kv * CACHE_ROW * 2) as f64;
    // Scores over 576 dims and outputs over 512 for every visible (row, key) pair.
    let pairs = if q_len == 1 {
        (batch * HEADS * kv) as f64
    } else {
        (batch * HEADS) as f64 * (0..q_len).map(|t| (kv - q_len + t + 1) as f64).sum::<f64>()
    };
    let flops = 2.0 * pairs * (CACHE_ROW + KV_LORA_RANK) as f64;
    println!(
        "KT_MLA kernel={kernel:?} q_len={q_len} batch={batch} kv={kv} heads={HEADS} splits={} us={us:.1} cache_GB/s={:.0} TFLOP/s={:.1}",
        splits.map_or("auto".to_string(), |v| v.to_string()),
        bytes / (us * 1e3),
        flops / (us * 1e6)
    );
}

fn main() {
    let Some(gpu) = gpu_or_skip("mla_timing") else {
        return;
    };
    let s = gpu.stream();
    eprintln!("device: {:?}", gpu.info());
    let pick = Pick(std::env::args().skip(1).collect());
    let best = MlaKernel::best_for(s.info());
    for &(batch, kv) in &[
        (64usize, 4096usize),
        (1, 4096),
        (8, 4096),
        (32, 4096),
        (64, 1024),
        (16, 16384),
    ] {
        let name = format!("decode {batch}x{kv}");
        case(s, &pick, &name, best, 1, batch, kv, None);
    }
    for splits in [1, 2, 4] {
        let name = format!("splits 64x4096/{splits}");
        case(s, &pick, &name, best, 1, 64, 4096, Some(splits));
    }
    case(s, &pick, "prefill 512x512", best, 512, 1, 512, None);
    case(s, &pick, "prefill 1024x4096", best, 1024, 1, 4096, None);
    // The other kernels on the headline shape, for comparison.
    for kernel in MlaKernel::all_for(s.info()) {
        if kernel != best {
            for batch in [64, 32] {
                let name = format!("{kernel:?} decode {batch}x4096");
                case(s, &pick, &name, kernel, 1, batch, 4096, None);
            }
        }
    }
}
