//! GPU MLA attention over a paged latent cache against the CPU reference
//! `kt_kernels::ops::mla_absorbed` (f64 sums) run on the same bf16 values with identity
//! `W_uk` / `W_uv` (which makes it exactly the latent-space attention the kernel computes):
//! decode batches of 1, 3 and 17 sequences of different lengths (1, 31, 32, 33,
//! block_size + 1, ...), causal prefill, forced and automatic key splits, and two exact
//! properties: the result does not depend on how the cache is paged, and a prefill row equals
//! the decode of its token. Every case runs with each MLA kernel the device has (`mma.sync`
//! everywhere, `wgmma` on compute capability 9.0). Pages past a sequence's end and unused blocks hold NaN, as do the
//! outputs before the kernel runs. Also MLA's rotary embedding (YaRN) against
//! `RopeYarn::apply_tokens`.
//! Skips (with a message) on machines without a GPU unless KT_REQUIRE_GPU is set.
#![cfg(feature = "cuda")]

mod cuda_common;

use cuda_common::{gpu_or_skip, nan_buf};
use half::bf16;
use kt_kernels::cuda::mla::{MlaKernel, MlaWorkspace, CACHE_ROW, KV_LORA_RANK};
use kt_kernels::cuda::{CudaError, GpuFloat, GpuStream};
use kt_kernels::ops::{mla_absorbed, KvB, LatentCache, MlaDims, RopeYarn, YarnScaling};
use kt_kernels::util::SplitMix64;

const RANK: usize = KV_LORA_RANK;
const ROPE: usize = CACHE_ROW - KV_LORA_RANK;

/// One batch: queries `[rows, 576]` and each sequence's cache rows `[kv_len, 576]` (logical
/// order), all bf16.
struct Batch {
    heads: usize,
    q_lens: Vec<usize>,
    kv_lens: Vec<usize>,
    q: Vec<bf16>,
    seqs: Vec<Vec<bf16>>,
    scale: f32,
}

impl Batch {
    fn random(seed: u64, heads: usize, q_lens: &[usize], kv_lens: &[usize]) -> Batch {
        let mut rng = SplitMix64::new(seed);
        let rows: usize = q_lens.iter().sum::<usize>() * heads;
        // Unit-normal cache and 0.5-scale queries with scale 0.12 give scores of standard
        // deviation about 1.4: a softmax neither flat nor one-hot.
        let q = (0..rows * CACHE_ROW)
            .map(|_| bf16::from_f32(0.5 * rng.normal()))
            .collect();
        let seqs = kv_lens
            .iter()
            .map(|&l| {
                (0..l * CACHE_ROW)
                    .map(|_| bf16::from_f32(rng.normal()))
                    .collect()
            })
            .collect();
        Batch {
            heads,
            q_lens: q_lens.to_vec(),
            kv_lens: kv_lens.to_vec(),
            q,
            seqs,
            scale: 0.12,
        }
    }

    fn decode(seed: u64, heads: usize, kv_lens: &[usize]) -> Batch {
        Batch::random(seed, heads, &vec![1; kv_lens.len()], kv_lens)
    }

    fn rows(&self) -> usize {
        self.q_lens.iter().sum::<usize>() * self.heads
    }
}

/// The batch's cache scattered over shuffled blocks of `block_size` tokens: a NaN-filled pool
/// with two spare blocks, each table row one block longer than needed (entries past the
/// needed ones are u32::MAX: never read).
fn paged(b: &Batch, block_size: usize, seed: u64) -> (Vec<bf16>, Vec<u32>) {
    let need: Vec<usize> = b.kv_lens.iter().map(|l| l.div_ceil(block_size)).collect();
    let n_blocks = need.iter().sum::<usize>() + 2;
    let max_blocks = need.iter().max().unwrap() + 1;
    let mut ids: Vec<u32> = (0..n_blocks as u32).collect();
    let mut rng = SplitMix64::new(seed);
    for i in (1..ids.len()).rev() {
        ids.swap(i, rng.below(i + 1));
    }
    let mut pool = vec![bf16::from_f32(f32::NAN); n_blocks * block_size * CACHE_ROW];
    let mut table = vec![u32::MAX; b.kv_lens.len() * max_blocks];
    let mut next = ids.into_iter();
    for (s, seq) in b.seqs.iter().enumerate() {
        for blk in 0..need[s] {
            let id = next.next().unwrap();
            table[s * max_blocks + blk] = id;
            let tokens = (b.kv_lens[s] - blk * block_size).min(block_size);
            let src = &seq[blk * block_size * CACHE_ROW..(blk * block_size + tokens) * CACHE_ROW];
            let dst = id as usize * block_size * CACHE_ROW;
            pool[dst..dst + src.len()].copy_from_slice(src);
        }
    }
    (pool, table)
}

/// The reference output `[rows, 512]` (f64 of the f32 reference) and each element's error
/// bound for the GPU's bf16 arithmetic (see `bound`).
fn reference(b: &Batch) -> (Vec<f64>, Vec<f64>) {
    let d = MlaDims {
        n_heads: b.heads,
        nope_dim: RANK,
        rope_dim: ROPE,
        kv_lora_rank: RANK,
        v_dim: RANK,
    };
    let mut eye = vec![0.0f32; b.heads * RANK * RANK];
    for h in 0..b.heads {
        for i in 0..RANK {
            eye[(h * RANK + i) * RANK + i] = 1.0;
        }
    }
    let kv_b = KvB {
        w_uk: &eye,
        w_uv: &eye,
    };
    let (mut want, mut tol) = (Vec::new(), Vec::new());
    let mut q_row0 = 0;
    for (s, seq) in b.seqs.iter().enumerate() {
        let (ql, kl) = (b.q_lens[s], b.kv_lens[s]);
        let f: Vec<f32> = seq.iter().map(|v| v.to_f32()).collect();
        let mut latent = Vec::with_capacity(kl * RANK);
        let mut k_pe = Vec::with_capacity(kl * ROPE);
        for row in f.chunks_exact(CACHE_ROW) {
            latent.extend_from_slice(&row[..RANK]);
            k_pe.extend_from_slice(&row[RANK..]);
        }
        let rows = ql * b.heads;
        let q: Vec<f32> = b.q[q_row0 * CACHE_ROW..(q_row0 + rows) * CACHE_ROW]
            .iter()
            .map(|v| v.to_f32())
            .collect();
        let mut out = vec![f32::NAN; rows * RANK];
        let cache = LatentCache {
            latent: &latent,
            k_pe: &k_pe,
        };
        mla_absorbed(&d, &q, kl - ql, &cache, &kv_b, b.scale, &mut out).unwrap();
        let max_abs = f.iter().fold(0.0f64, |m, &v| m.max(v.abs() as f64));
        for r in 0..rows {
            let visible = kl - ql + r / b.heads + 1;
            let q1: f64 = q[r * CACHE_ROW..(r + 1) * CACHE_ROW]
                .iter()
                .map(|v| v.abs() as f64)
                .sum();
            for i in 0..RANK {
                let o = out[r * RANK + i] as f64;
                let (mut dev, mut big) = (0.0f64, 0.0f64);
                for k in 0..visible {
                    let v = latent[k * RANK + i] as f64;
                    dev = dev.max((v - o).abs());
                    big = big.max(v.abs());
                }
                want.push(o);
                tol.push(bound(b.scale, q1 * max_abs, visible, dev, big, o));
            }
        }
        q_row0 += rows;
    }
    (want, tol)
}

/// Error bound of one output element `o = sum_k w_k v_k / sum_k w_k` (the reference is exact
/// to f32 rounding). The GPU rounds each weight to bf16 and divides by the sum of the rounded
/// weights, so `o' - o = sum_k w_k d_k (v_k - o) / sum_k w_k (1 + d_k)` with
/// `|d_k| <= eps`: at most `eps / (1 - eps) * max_k |v_k - o|` (`dev`). `eps` is the bf16
/// rounding `u` compounded with the scores' own error: an f32 tensor-core dot of 576 bf16
/// products errs by at most `gamma_576 * sum |q_i k_i|` (unit roundoff 2^-23, allowing
/// truncating accumulation), so a weight by a factor `exp(scale * that)`. The f32 sum over
/// keys (and per-tile rescalings) adds `gamma_{keys + 2 tiles + 16} * max |v_k|` (`big`);
/// the final store to bf16 `u (|o| + err)`.
fn bound(scale: f32, dot_abs: f64, keys: usize, dev: f64, big: f64, o: f64) -> f64 {
    let u = 2f64.powi(-8);
    let u32c = 2f64.powi(-23);
    let gamma = |n: usize| n as f64 * u32c / (1.0 - n as f64 * u32c);
    let delta = scale as f64 * gamma(CACHE_ROW) * dot_abs;
    let eps = (1.0 + u) * (2.0 * delta).exp() - 1.0;
    let err = eps / (1.0 - eps) * dev + gamma(keys + 2 * keys.div_ceil(32) + 16) * big;
    u * (o.abs() + err) + err
}

fn run(
    s: &GpuStream,
    b: &Batch,
    block_size: usize,
    seed: u64,
    splits: Option<usize>,
    kernel: MlaKernel,
) -> Result<Vec<bf16>, CudaError> {
    let (pool, table) = paged(b, block_size, seed);
    let batch = s.mla_batch(b.heads, &b.q_lens, &b.kv_lens, &table, block_size)?;
    let q = s.upload(&b.q)?;
    let cache = s.upload(&pool)?;
    let mut out = nan_buf::<bf16>(s, b.rows() * RANK);
    let mut ws = MlaWorkspace::default();
    s.mla_attention_with(
        &batch, &q, &cache, b.scale, &mut out, &mut ws, splits, kernel,
    )?;
    s.download(&out)
}

fn check(what: &str, got: &[bf16], want: &[f64], tol: &[f64]) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, ((g, &w), &t)) in got.iter().zip(want).zip(tol).enumerate() {
        let g = g.to_f32() as f64;
        assert!(
            (g - w).abs() <= t,
            "{what}: row {} col {}: got {g}, want {w} (|diff| {:e} > tol {t:e})",
            i / RANK,
            i % RANK,
            (g - w).abs()
        );
    }
}

#[test]
fn decode_batches_of_different_lengths() {
    let Some(gpu) = gpu_or_skip("mla decode") else {
        return;
    };
    let s = gpu.stream();
    let cases: [(usize, Vec<usize>); 4] = [
        (16, vec![1]),
        (16, vec![65, 1, 33]),
        (
            16,
            vec![
                31, 32, 33, 64, 65, 1, 2, 200, 129, 7, 96, 97, 300, 5, 63, 128, 257,
            ],
        ),
        (128, vec![65, 700, 3]),
    ];
    for (ci, (heads, lens)) in cases.iter().enumerate() {
        let b = Batch::decode(10 + ci as u64, *heads, lens);
        let (want, tol) = reference(&b);
        for kernel in MlaKernel::all_for(s.info()) {
            for splits in [None, Some(1), Some(3), Some(8)] {
                let got = run(s, &b, 64, ci as u64, splits, kernel).unwrap();
                check(
                    &format!(
                        "{kernel:?} decode heads {heads} batch {} splits {splits:?}",
                        lens.len()
                    ),
                    &got,
                    &want,
                    &tol,
                );
            }
        }
    }
}

#[test]
fn causal_prefill() {
    let Some(gpu) = gpu_or_skip("mla prefill") else {
        return;
    };
    let s = gpu.stream();
    // (heads, q_lens, kv_lens): a fresh prompt, prompts after cached tokens, ragged, 3 heads
    // (row blocks mixing tokens), and 128 heads (row blocks of one token's head halves, as in
    // DeepSeek V3; the 200 keys include three tiles of bulk copies).
    let cases: [(usize, Vec<usize>, Vec<usize>); 4] = [
        (16, vec![70], vec![70]),
        (16, vec![5, 1, 33], vec![69, 1, 33]),
        (3, vec![40, 9], vec![40, 100]),
        (128, vec![3, 1], vec![200, 130]),
    ];
    for (ci, (heads, ql, kl)) in cases.iter().enumerate() {
        let b = Batch::random(20 + ci as u64, *heads, ql, kl);
        let (want, tol) = reference(&b);
        for kernel in MlaKernel::all_for(s.info()) {
            for splits in [Some(1), Some(2), None] {
                let got = run(s, &b, 16, ci as u64, splits, kernel).unwrap();
                check(
                    &format!("{kernel:?} prefill case {ci} splits {splits:?}"),
                    &got,
                    &want,
                    &tol,
                );
            }
        }
    }
}

/// Paging only changes where rows are read from: any block size and block order gives the
/// same bits. For the wgmma kernel, pages of 64 and 256 tokens take bulk tensor copies and
/// pages of 1 and 17 per-thread copies; the batches cover 16 heads (row blocks mixing
/// tokens), 128 heads (DeepSeek V3: a block per head half of a token, several bulk-copied
/// tiles) and 96 heads over two tokens, where adjacent row blocks need different tile counts
/// (65 keys: 64 for the first block's rows, 65 for the second's).
#[test]
fn paging_does_not_change_the_result() {
    let Some(gpu) = gpu_or_skip("mla paging") else {
        return;
    };
    let s = gpu.stream();
    let batches = [
        Batch::random(30, 16, &[1, 4, 1], &[150, 77, 1]),
        Batch::random(31, 128, &[1, 2, 1], &[300, 129, 64]),
        Batch::random(32, 96, &[2], &[65]),
    ];
    for b in &batches {
        for kernel in MlaKernel::all_for(s.info()) {
            for splits in [Some(1), Some(3)] {
                let first = run(s, b, 64, 1, splits, kernel).unwrap();
                for (bs, seed) in [(64, 2), (1, 3), (17, 4), (256, 5)] {
                    let other = run(s, b, bs, seed, splits, kernel).unwrap();
                    assert!(
                        first
                            .iter()
                            .zip(&other)
                            .all(|(x, y)| x.to_bits() == y.to_bits()),
                        "{kernel:?} heads {} block size {bs}, splits {splits:?}: result differs from block size 64",
                        b.heads
                    );
                }
            }
        }
    }
}

/// With one split a prefill row is computed exactly as the decode of its token over the
/// cache cut after that token (masked keys add exact zeros).
#[test]
fn prefill_rows_equal_decode_steps() {
    let Some(gpu) = gpu_or_skip("mla prefill vs decode") else {
        return;
    };
    let s = gpu.stream();
    let (heads, ql, kl) = (16, 40, 75);
    let b = Batch::random(40, heads, &[ql], &[kl]);
    for kernel in MlaKernel::all_for(s.info()) {
        prefill_equals_decode(s, &b, kernel);
    }
}

fn prefill_equals_decode(s: &GpuStream, b: &Batch, kernel: MlaKernel) {
    let (heads, ql, kl) = (b.heads, b.q_lens[0], b.kv_lens[0]);
    let full = run(s, b, 64, 1, Some(1), kernel).unwrap();
    for t in [0, 1, 31, 32, 39] {
        let vis = kl - ql + t + 1;
        let step = Batch {
            heads,
            q_lens: vec![1],
            kv_lens: vec![vis],
            q: b.q[t * heads * CACHE_ROW..(t + 1) * heads * CACHE_ROW].to_vec(),
            seqs: vec![b.seqs[0][..vis * CACHE_ROW].to_vec()],
            scale: b.scale,
        };
        let one = run(s, &step, 64, 2, Some(1), kernel).unwrap();
        let row = &full[t * heads * RANK..(t + 1) * heads * RANK];
        assert!(
            row.iter()
                .zip(&one)
                .all(|(x, y)| x.to_bits() == y.to_bits()),
            "{kernel:?} token {t}: prefill row differs from its decode"
        );
    }
}

#[test]
fn bad_shapes_are_errors() {
    let Some(gpu) = gpu_or_skip("mla shapes") else {
        return;
    };
    let s = gpu.stream();
    let shape_err = |r: Result<_, CudaError>| matches!(r, Err(CudaError::Shape { .. }));
    let table = [0u32, 1, 2, 3];
    assert!(
        shape_err(s.mla_batch(16, &[2], &[1], &table, 64).map(drop)),
        "q_len > kv_len"
    );
    assert!(
        shape_err(s.mla_batch(16, &[0], &[1], &table, 64).map(drop)),
        "q_len 0"
    );
    assert!(
        shape_err(s.mla_batch(16, &[1], &[257], &table, 64).map(drop)),
        "past the table"
    );
    assert!(
        shape_err(s.mla_batch(16, &[1, 1], &[1], &table, 64).map(drop)),
        "counts"
    );
    assert!(
        shape_err(s.mla_batch(16, &[1; 3], &[1; 3], &table, 64).map(drop)),
        "table rows"
    );

    let b = Batch::decode(50, 16, &[100]);
    let (pool, table) = paged(&b, 64, 1);
    let batch = s.mla_batch(16, &[1], &[100], &table, 64).unwrap();
    let q = s.upload(&b.q).unwrap();
    let cache = s.upload(&pool).unwrap();
    let small = s.upload(&pool[..64 * CACHE_ROW]).unwrap();
    let mut out = nan_buf::<bf16>(s, 16 * RANK);
    let mut short = nan_buf::<bf16>(s, 16 * RANK - 1);
    let mut ws = MlaWorkspace::default();
    assert!(
        shape_err(s.mla_attention(&batch, &q, &small, 0.1, &mut out, &mut ws)),
        "cache lacks the table's blocks"
    );
    assert!(
        shape_err(s.mla_attention(&batch, &q, &cache, 0.1, &mut short, &mut ws)),
        "out"
    );
    assert!(
        shape_err(s.mla_attention(&batch, &q, &cache, f32::NAN, &mut out, &mut ws)),
        "scale"
    );
    s.mla_attention(&batch, &q, &cache, 0.1, &mut out, &mut ws)
        .unwrap();
    // A kernel the device cannot run is refused before any launch.
    for kernel in [MlaKernel::MmaSync, MlaKernel::Wgmma] {
        let r = s.mla_attention_with(&batch, &q, &cache, 0.1, &mut out, &mut ws, None, kernel);
        assert_eq!(
            shape_err(r),
            !kernel.runs_on(s.info()),
            "{kernel:?} on compute capability {:?}",
            s.info().compute_capability
        );
    }
}

/// The kernel choice follows the compute capability: wgmma exactly on 9.0, mma.sync on any
/// other sm_80+ device (needs no GPU).
#[test]
fn kernel_choice_follows_the_device() {
    let info = |cc: (i32, i32)| kt_kernels::cuda::DeviceInfo {
        ordinal: 0,
        name: "test".into(),
        compute_capability: cc,
        multiprocessors: 132,
        total_memory: 1 << 30,
        l2_bytes: 50 << 20,
    };
    assert_eq!(MlaKernel::best_for(&info((9, 0))), MlaKernel::Wgmma);
    assert_eq!(MlaKernel::best_for(&info((8, 0))), MlaKernel::MmaSync);
    assert_eq!(MlaKernel::best_for(&info((8, 9))), MlaKernel::MmaSync);
    assert_eq!(MlaKernel::best_for(&info((10, 0))), MlaKernel::MmaSync);
    assert_eq!(
        MlaKernel::all_for(&info((9, 0))),
        vec![MlaKernel::MmaSync, MlaKernel::Wgmma]
    );
    assert!(MlaKernel::all_for(&info((7, 5))).is_empty());
}

/// YaRN as DeepSeek V3 configures it (magnitude 1), and with `mscale_all_dim` absent
/// (magnitude 1 + 0.1 ln 40, about 1.37).
fn yarn(mscale_all_dim: f64) -> RopeYarn {
    let scaling = YarnScaling {
        factor: 40.0,
        original_max_pos: 4096,
        beta_fast: 32.0,
        beta_slow: 1.0,
        mscale: 1.0,
        mscale_all_dim,
    };
    RopeYarn::new(ROPE, 10_000.0, Some(scaling)).unwrap()
}

fn rope_case<T: GpuFloat>(
    s: &GpuStream,
    rope: &RopeYarn,
    tokens: usize,
    heads: usize,
    head_dim: usize,
    offset: usize,
    seed: u64,
) {
    const TABLE: usize = 70_000;
    let tables = s.upload_rope_tables(rope, TABLE).unwrap();
    let mut rng = SplitMix64::new(seed);
    let x: Vec<T> = cuda_common::random(&mut rng, tokens * heads * head_dim, 1.5);
    // Positions spread over the table (large ones included), the last one past its end.
    let mut pos: Vec<u32> = (0..tokens).map(|_| rng.below(TABLE) as u32).collect();
    pos[0] = TABLE as u32 - 1;
    let past = tokens > 1;
    if past {
        pos[tokens - 1] = TABLE as u32;
    }
    let xf: Vec<f32> = x.iter().map(|v| v.to_f32()).collect();
    let mut want = xf.clone();
    let ok = if past { tokens - 1 } else { tokens };
    let row = heads * head_dim;
    let positions: Vec<usize> = pos[..ok].iter().map(|&p| p as usize).collect();
    rope.apply_tokens(&mut want[..ok * row], &positions, head_dim, offset)
        .unwrap();
    let mut xd = s.upload(&x).unwrap();
    let pd = s.upload(&pos).unwrap();
    s.rope_inplace(&mut xd, &pd, &tables, heads, head_dim, offset)
        .unwrap();
    let got = s.download(&xd).unwrap();
    let mag = rope.magnitude() as f64;
    let u = T::UNIT_ROUNDOFF;
    for (i, g) in got.iter().enumerate() {
        let (t, e) = (i / row, i % head_dim);
        let g = g.to_f32() as f64;
        let in_rope = e >= offset && e < offset + ROPE;
        if t >= ok && in_rope {
            assert!(
                g.is_nan(),
                "{}: token {t} past the table: element {i} is {g}, not NaN",
                T::SUFFIX
            );
            continue;
        }
        let w = want[i] as f64;
        if !in_rope {
            assert_eq!(
                g,
                w,
                "{}: element {i} outside the rope slice changed",
                T::SUFFIX
            );
            continue;
        }
        // The tables round cos and sin to f32 (2^-24 each) and the kernel's two products and a
        // sum round up to 3 more times, on terms of at most (|a| + |b|) * magnitude; the
        // reference itself rounds once to f32; then the store to T.
        let pair = i - (e - offset) % 2;
        let ab = xf[pair].abs() as f64 + xf[pair + 1].abs() as f64;
        let tol =
            u * w.abs() + 5.0 * 2f64.powi(-24) * ab * mag * (1.0 + u) + 0.5 * T::MIN_SUBNORMAL;
        assert!(
            (g - w).abs() <= tol,
            "{}: element {i}: got {g}, want {w} (tol {tol:e})",
            T::SUFFIX
        );
    }
}

#[test]
fn rope_matches_the_yarn_reference() {
    let Some(gpu) = gpu_or_skip("rope") else {
        return;
    };
    let s = gpu.stream();
    for (ri, rope) in [yarn(1.0), yarn(0.0)].iter().enumerate() {
        for (ti, &tokens) in [1usize, 3, 17].iter().enumerate() {
            let seed = (10 * ri + ti) as u64;
            // q: 16 heads of nope 128 + rope 64; k_pe: one head of just the rope part.
            rope_case::<f32>(s, rope, tokens, 16, 192, 128, seed);
            rope_case::<bf16>(s, rope, tokens, 16, 192, 128, seed);
            rope_case::<half::f16>(s, rope, tokens, 1, 64, 0, seed);
        }
    }
    let tables = s.upload_rope_tables(&yarn(1.0), 8).unwrap();
    let mut x = s.upload(&vec![1.0f32; 2 * 100]).unwrap();
    let pd = s.upload(&[0u32, 1]).unwrap();
    assert!(
        matches!(
            s.rope_inplace(&mut x, &pd, &tables, 1, 100, 40),
            Err(CudaError::Shape { .. })
        ),
        "slice past the head"
    );
    assert!(
        matches!(
            s.rope_inplace(&mut x, &pd, &tables, 2, 100, 0),
            Err(CudaError::Shape { .. })
        ),
        "x length"
    );
}

/// A live batch (the lengths and split count on the device, the grid of the largest
/// lengths: what a captured decode graph replays) gives, step after step, the very bits of a
/// plain batch of the step's lengths (which the tests above hold to the reference): the
/// split counts differ from the grid's and change between steps.
#[test]
fn live_batch_matches_plain_batch_bit_for_bit() {
    let Some(gpu) = gpu_or_skip("mla live batch") else {
        return;
    };
    let s = gpu.stream();
    let max_lens = [700usize, 300, 65];
    let steps: [[usize; 3]; 5] = [
        [1, 1, 1],
        [33, 129, 64],
        [257, 300, 5],
        [700, 1, 65],
        [64, 65, 2],
    ];
    // 16 heads: row tiles mixing tokens; 128 heads: a row tile per head half of a token.
    for heads in [16, 128] {
        let b = Batch::decode(77, heads, &max_lens);
        let (pool, table) = paged(&b, 64, 5);
        let q = s.upload(&b.q).unwrap();
        let cache = s.upload(&pool).unwrap();
        for kernel in MlaKernel::all_for(s.info()) {
            let mut live = s
                .mla_batch_live(heads, &[1; 3], &max_lens, &table, 64, kernel)
                .unwrap();
            let mut ws_live = MlaWorkspace::default();
            s.mla_reserve(&live, &mut ws_live).unwrap();
            for lens in &steps {
                let plain = s.mla_batch(heads, &[1; 3], lens, &table, 64).unwrap();
                let mut want = nan_buf::<bf16>(s, b.rows() * RANK);
                let mut ws = MlaWorkspace::default();
                s.mla_attention_with(
                    &plain, &q, &cache, b.scale, &mut want, &mut ws, None, kernel,
                )
                .unwrap();
                s.mla_set_kv_lens(&mut live, lens).unwrap();
                let mut got = nan_buf::<bf16>(s, b.rows() * RANK);
                s.mla_attention_with(
                    &live,
                    &q,
                    &cache,
                    b.scale,
                    &mut got,
                    &mut ws_live,
                    None,
                    kernel,
                )
                .unwrap();
                let (want, got) = (s.download(&want).unwrap(), s.download(&got).unwrap());
                assert!(
                    want.iter().all(|v| v.to_f32().is_finite()),
                    "{kernel:?} {lens:?}: plain batch left a row unwritten"
                );
                let bits = |v: &[bf16]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert_eq!(
                    bits(&got),
                    bits(&want),
                    "{kernel:?} heads {heads} lengths {lens:?}"
                );
            }
            let shape_err = |r: Result<(), CudaError>| matches!(r, Err(CudaError::Shape { .. }));
            assert!(
                shape_err(s.mla_set_kv_lens(&mut live, &[701, 1, 1])),
                "past the largest length"
            );
            assert!(
                shape_err(s.mla_set_kv_lens(&mut live, &[0, 1, 1])),
                "below q_len"
            );
            assert!(shape_err(s.mla_set_kv_lens(&mut live, &[5, 5])), "count");
            let mut out = nan_buf::<bf16>(s, b.rows() * RANK);
            assert!(
                shape_err(s.mla_attention_with(
                    &live,
                    &q,
                    &cache,
                    b.scale,
                    &mut out,
                    &mut ws_live,
                    Some(2),
                    kernel
                )),
                "forced splits on a live batch"
            );
        }
    }
    let mut plain = s.mla_batch(16, &[1], &[5], &[0], 64).unwrap();
    assert!(
        matches!(
            s.mla_set_kv_lens(&mut plain, &[4]),
            Err(CudaError::Shape { .. })
        ),
        "a plain batch has no live lengths"
    );
}

/// The automatic path of a one-token decode of one sequence with at most 128 heads
/// (`mla_attention`: the small-rows kernel, `mla_small.rs`): against the reference at lengths
/// around its 32-key tiles, past one split per multiprocessor (several tiles per split), with
/// 3 heads (padded rows), 40 (three blocks of rows, the last part padded), 128 (V3: eight
/// blocks of rows, fewer splits each) and with block sizes that split tiles across pages.
#[test]
fn small_decode_path_matches_reference() {
    let Some(gpu) = gpu_or_skip("mla small decode") else {
        return;
    };
    let s = gpu.stream();
    // past 32 tiles per multiprocessor's split on any device up to 160 SMs: 5200 keys
    let cases: [(usize, usize, usize); 13] = [
        (128, 1100, 64),
        (128, 5200, 64),
        (40, 300, 17),
        (16, 1, 64),
        (16, 31, 64),
        (16, 32, 16),
        (16, 33, 64),
        (16, 65, 1),
        (16, 700, 17),
        (16, 1100, 64),
        (16, 5200, 64),
        (3, 97, 64),
        (1, 40, 64),
    ];
    for (ci, &(heads, kv, bs)) in cases.iter().enumerate() {
        let b = Batch::decode(90 + ci as u64, heads, &[kv]);
        let (want, tol) = reference(&b);
        let (pool, table) = paged(&b, bs, ci as u64);
        let batch = s.mla_batch(heads, &[1], &[kv], &table, bs).unwrap();
        let q = s.upload(&b.q).unwrap();
        let cache = s.upload(&pool).unwrap();
        let mut out = nan_buf::<bf16>(s, b.rows() * RANK);
        let mut ws = MlaWorkspace::default();
        s.mla_attention(&batch, &q, &cache, b.scale, &mut out, &mut ws)
            .unwrap();
        check(
            &format!("small path heads {heads} kv {kv} block size {bs}"),
            &s.download(&out).unwrap(),
            &want,
            &tol,
        );
    }
}

/// The small-rows path: paging does not change the bits, and a live batch (one grid for every
/// length up to its largest, lengths read on the device) gives a plain batch's bits at each
/// length, also where the split count stops growing with the length (one split per
/// multiprocessor) and the tiles per split grow instead.
#[test]
fn small_decode_path_live_and_paging_bit_for_bit() {
    let Some(gpu) = gpu_or_skip("mla small decode live") else {
        return;
    };
    let s = gpu.stream();
    let bits = |v: &[bf16]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    let max = 6000;
    // 16 heads (V2-Lite: one block of rows per split) and 128 (V3: eight, fewer splits)
    for heads in [16usize, 128] {
        let b = Batch::decode(95 + heads as u64, heads, &[max]);
        let q = s.upload(&b.q).unwrap();
        let (pool, table) = paged(&b, 64, 7);
        let cache = s.upload(&pool).unwrap();
        let (pool17, table17) = paged(&b, 17, 8);
        let cache17 = s.upload(&pool17).unwrap();
        let mut live = s
            .mla_batch_live(
                heads,
                &[1],
                &[max],
                &table,
                64,
                MlaKernel::best_for(s.info()),
            )
            .unwrap();
        let mut ws_live = MlaWorkspace::default();
        s.mla_reserve(&live, &mut ws_live).unwrap();
        for kv in [1, 32, 33, 1000, 4224, 4225, 4300, 6000] {
            let attend = |batch: &kt_kernels::cuda::mla::MlaBatch,
                          cache: &kt_kernels::cuda::DeviceBuf<bf16>,
                          ws: &mut MlaWorkspace| {
                let mut out = nan_buf::<bf16>(s, heads * RANK);
                s.mla_attention(batch, &q, cache, b.scale, &mut out, ws)
                    .unwrap();
                s.download(&out).unwrap()
            };
            let plain = s.mla_batch(heads, &[1], &[kv], &table, 64).unwrap();
            let want = attend(&plain, &cache, &mut MlaWorkspace::default());
            assert!(
                want.iter().all(|v| v.to_f32().is_finite()),
                "heads {heads} kv {kv}: an output left unwritten"
            );
            let plain17 = s.mla_batch(heads, &[1], &[kv], &table17, 17).unwrap();
            let paged17 = attend(&plain17, &cache17, &mut MlaWorkspace::default());
            assert_eq!(
                bits(&paged17),
                bits(&want),
                "heads {heads} kv {kv}: block size 17"
            );
            s.mla_set_kv_lens(&mut live, &[kv]).unwrap();
            let got = attend(&live, &cache, &mut ws_live);
            assert_eq!(bits(&got), bits(&want), "heads {heads} kv {kv}: live batch");
        }
    }
}
