//! W4A16: the quantizer and the packed layout (CPU), and the GPU GEMM against a scalar f64
//! reference over the weights the kernel multiplies with, for f16 and bf16: token counts 1,
//! 3, 17, 129 and both the single-pass and the k-split paths of the tiled kernel, and 1..=16
//! tokens of the small-m kernel with column counts that leave its 256-column blocks partly
//! empty, forced and automatic k slices, repeat calls on one workspace (its arrival counters
//! must reset) and bit-identical results from repeated calls, from programmatic dependent
//! launches (also of two chained GEMMs, the second reading the first's output) and ordinary
//! ones.
#![cfg(feature = "cuda")]

mod cuda_common;

use cuda_common::{gpu_or_skip, nan_buf, random, to_f64};
use half::{bf16, f16};
use kt_kernels::cuda::w4a16::{GemmPlan, GemmWorkspace, GemvPlan, Int4Weights, GROUP};
use kt_kernels::cuda::{DeviceBuf, GpuStream, LaunchOrder, MmaFloat};
use kt_kernels::quant::{quantize, QType};
use kt_kernels::util::SplitMix64;

fn random_weights(n: usize, k: usize, seed: u64) -> Vec<f32> {
    let mut rng = SplitMix64::new(seed);
    // Columns of different magnitudes, so per-group scales matter.
    (0..n * k)
        .map(|i| rng.normal() * 0.02 * (1.0 + (i / k % 7) as f32))
        .collect()
}

#[test]
fn pack_then_unpack_gives_back_the_weights() {
    let (n, k) = (192, 384);
    let q = random_int4::<f16>(n, k, 1);
    let back = Int4Weights::<f16>::unpack(&q.pack(), q.scales.clone(), n, k).unwrap();
    assert_eq!(back, q);
    assert!(
        q.q.contains(&-8) && q.q.contains(&7),
        "the full int4 range is exercised"
    );
}

/// Int4 weights with every value -8..=7 equally likely and scales of varied size: exercises
/// every nibble (the quantizer rarely emits -8).
fn random_int4<T: MmaFloat>(n: usize, k: usize, seed: u64) -> Int4Weights<T> {
    let mut rng = SplitMix64::new(seed);
    let q = (0..n * k).map(|_| rng.below(16) as i8 - 8).collect();
    let scales = (0..(k / GROUP) * n)
        .map(|_| T::from_f32(rng.uniform(0.002, 0.02)))
        .collect();
    Int4Weights { n, k, q, scales }
}

fn check_quant_error<T: MmaFloat>() {
    let (n, k) = (128, 512);
    let w = random_weights(n, k, 2);
    let (q, err) = Int4Weights::<T>::quantize(&w, n, k).unwrap();
    let deq = q.dequantize();
    // Every weight is within half a step of its group's scale, plus what rounding the scale
    // to T can add at the clamped end (|w| <= amax = 7 s (1 + u)).
    for c in 0..n {
        for kk in 0..k {
            let s = q.scales[(kk / GROUP) * n + c].to_f32() as f64;
            let d = (w[c * k + kk] as f64 - deq[c * k + kk] as f64).abs();
            assert!(
                d <= 0.5 * s + 8.0 * s * T::UNIT_ROUNDOFF + 1e-12,
                "{} col {c} k {kk}: err {d} scale {s}",
                T::SUFFIX
            );
        }
    }
    // Gaussian groups of 128: max |w| is about 2.6 sigma, the step 0.37 sigma, the rms error
    // about step / sqrt(12) = 0.11 sigma.
    let rel = err.relative_rms();
    eprintln!(
        "int4/{} quantization of N(0, s) weights: rms error {rel:.4} of rms weight, max {:.3e}",
        T::SUFFIX,
        err.max_abs
    );
    assert!((0.07..0.15).contains(&rel), "relative rms error {rel}");
}

#[test]
fn quantization_error_is_bounded() {
    check_quant_error::<f16>();
    check_quant_error::<bf16>();
}

#[test]
fn from_gguf_quantizes_the_dequantized_rows() {
    let (n, k) = (64, 256);
    let w = random_weights(n, k, 3);
    let row_bytes = QType::Q8_0.row_bytes(k).unwrap();
    let mut bytes = vec![0u8; n * row_bytes];
    for r in 0..n {
        quantize(
            QType::Q8_0,
            &w[r * k..(r + 1) * k],
            &mut bytes[r * row_bytes..(r + 1) * row_bytes],
        )
        .unwrap();
    }
    let (from_gguf, err) = Int4Weights::<bf16>::from_gguf(QType::Q8_0, &bytes, n, k).unwrap();
    let mut deq = vec![0.0f32; n * k];
    for r in 0..n {
        kt_kernels::quant::dequantize(
            QType::Q8_0,
            &bytes[r * row_bytes..(r + 1) * row_bytes],
            &mut deq[r * k..(r + 1) * k],
        )
        .unwrap();
    }
    let (direct, err2) = Int4Weights::<bf16>::quantize(&deq, n, k).unwrap();
    assert_eq!(from_gguf, direct);
    assert_eq!(err, err2);
    assert!(Int4Weights::<bf16>::from_gguf(QType::Q8_0, &bytes[1..], n, k).is_err());
    assert!(
        Int4Weights::<bf16>::quantize(&w, 60, k).is_err(),
        "n must be a multiple of 64"
    );
}

#[test]
fn gemm_plan_fills_one_wave_with_nonempty_splits() {
    // H100-like: 132 multiprocessors; 7 resident decode blocks each, 2 of the 64-row kernel.
    let plan = GemmPlan::new(1, 4096, 7168, 7 * 132, None);
    assert_eq!(plan.m_tile, 1);
    assert!(plan.splits > 1, "a decode GEMM splits k: {plan:?}");
    assert!(plan.splits * 64 <= 7 * 132, "one wave: {plan:?}");
    let plan = GemmPlan::new(129, 7168, 7168, 2 * 132, None);
    assert_eq!(
        (plan.m_tile, plan.splits),
        (4, 1),
        "enough blocks without splitting: {plan:?}"
    );
    for m in [1, 3, 17, 33, 129] {
        for (n, k) in [(64, 128), (192, 384), (4096, 7168), (2048, 1408)] {
            for force in [None, Some(1), Some(3), Some(1000)] {
                let p = GemmPlan::new(m, n, k, 900, force);
                let groups = k / GROUP;
                assert!(p.splits >= 1 && p.splits <= groups, "{p:?}");
                // Every split starts inside k: no block without work.
                assert!(
                    (p.splits - 1) * p.groups_per_split < groups
                        && p.splits * p.groups_per_split >= groups,
                    "{p:?}"
                );
            }
        }
    }
}

#[test]
fn gemv_plan_sizes_blocks_and_slices() {
    let sms = 132;
    let plan = |m, n, k| GemvPlan::choose(m, n, k, sms, None).unwrap();
    // The same plans at 1 and at 9-16 rows (3 blocks per multiprocessor either way), but
    // for the slices past 8 rows that fill one wave.
    for m in [1, 9, 16] {
        // o_proj: 112 tiles of 128 groups, one per block (4 k-ways); 2 slices give a block
        // per multiprocessor and still 16 groups per warp; past 8 rows 3 (336 of the 396
        // resident blocks, 10-11 groups per warp).
        let p = plan(m, 7168, 16384);
        assert_eq!(
            (p.k_ways, p.slices, p.column_groups, p.token_tiles),
            (4, if m > 8 { 3 } else { 2 }, 112, m.div_ceil(8)),
            "{p:?}"
        );
        // Dense out: the same with 144 groups (12 per warp in 3 slices).
        let p = plan(m, 7168, 18432);
        assert_eq!(
            (p.k_ways, p.slices),
            (4, if m > 8 { 3 } else { 2 }),
            "{p:?}"
        );
        // q_b: 384 tiles of 12 groups; a block per tile fits in one wave.
        let p = plan(m, 24576, 1536);
        assert_eq!(
            (p.k_ways, p.slices, p.column_groups, p.spread),
            (4, 1, 384, 0),
            "{p:?}"
        );
        // Dense in: 288 tiles of 56 groups, one wave; spread: 264 tiles whole (2 per
        // multiprocessor), the 24 past them in 5 slices of 12 groups (one per multiprocessor).
        let p = plan(m, 18432, 7168);
        assert_eq!(
            (
                p.k_ways,
                p.slices,
                p.groups_per_slice,
                p.column_groups,
                p.spread,
                p.blocks()
            ),
            (4, 5, 12, 288, 264, 384),
            "{p:?}"
        );
        // Past one wave (more than 3 x 132 blocks): k cut in two where every warp keeps 4
        // groups (1024 tiles of 64 groups), else half the k-ways (1024 tiles of 12 groups).
        let p = plan(m, 65536, 8192);
        assert_eq!((p.k_ways, p.slices, p.column_groups), (4, 2, 1024), "{p:?}");
        let p = plan(m, 65536, 1536);
        assert_eq!((p.k_ways, p.slices, p.column_groups), (2, 1, 512), "{p:?}");
    }
    // kv_b: 4 groups, so 2 k-ways (two groups per warp), two tiles per block, unsplit.
    let p = plan(1, 32768, 512);
    assert_eq!((p.k_ways, p.slices, p.column_groups), (2, 1, 256), "{p:?}");
    let p = plan(16, 32768, 512);
    assert_eq!((p.k_ways, p.slices, p.token_tiles), (2, 1, 2), "{p:?}");
    // Shared expert down: 112 tiles of 16 groups; 2 slices would leave 2 groups per warp.
    let p = plan(1, 7168, 2048);
    assert_eq!((p.k_ways, p.slices), (4, 1), "{p:?}");
    // Shared expert in: 32 tiles fill a quarter of the device, so k is cut toward two
    // blocks per multiprocessor: 9 slices wanted, evened out to 8 of 7 groups.
    let p = plan(16, 2048, 7168);
    assert_eq!((p.k_ways, p.column_groups, p.slices), (4, 32, 8), "{p:?}");
    // A small matrix: 2 groups, so one k-way and 4 tiles per block; the slices wanted for
    // two blocks per multiprocessor are capped at one group each.
    let p = plan(1, 1024, 256);
    assert_eq!((p.k_ways, p.column_groups, p.slices), (1, 4, 2), "{p:?}");
    // 8 groups: 4 k-ways, 16 blocks; slices capped at 8 / 4 = 2 (a group per warp).
    let p = plan(1, 1024, 1024);
    assert_eq!((p.k_ways, p.column_groups, p.slices), (4, 16, 2), "{p:?}");
    // Forced slices win.
    assert_eq!(
        GemvPlan::choose(1, 7168, 16384, sms, Some(3))
            .unwrap()
            .slices,
        3
    );
    // Spread plans: 1..tiles whole tiles; 3 tiles past 7 in 2 slices of 6 and 5 groups.
    assert!(GemvPlan::spread(1, 640, 1408, 10, 2).is_err());
    assert!(GemvPlan::spread(1, 640, 1408, 0, 2).is_err());
    assert!(GemvPlan::spread(17, 640, 1408, 7, 2).is_err());
    let p = GemvPlan::spread(1, 640, 1408, 7, 2).unwrap();
    assert_eq!(
        (p.k_ways, p.slices, p.groups_per_slice, p.blocks()),
        (4, 2, 6, 13),
        "{p:?}"
    );
    // Not spread: 364 tiles, the 100 past 2 per multiprocessor more than half of 132.
    let p = plan(1, 64 * 364, 7168);
    assert_eq!((p.spread, p.slices), (0, 1), "{p:?}");
    assert!(GemvPlan::with(0, 64, 128, 4, 1).is_err());
    assert!(GemvPlan::with(17, 64, 128, 4, 1).is_err());
    assert!(GemvPlan::with(1, 64, 128, 3, 1).is_err());
    for m in 1..=GemvPlan::MAX_ROWS {
        for (n, k) in [(64, 128), (320, 384), (7168, 18432), (2048, 1408)] {
            let auto = plan(m, n, k);
            assert!(GemvPlan::K_WAYS.contains(&auto.k_ways), "{auto:?}");
            for kw in GemvPlan::K_WAYS {
                for slices in [1, 3, 1000] {
                    let p = GemvPlan::with(m, n, k, kw, slices).unwrap();
                    let groups = k / GROUP;
                    assert_eq!(p.token_tiles, m.div_ceil(8), "{p:?}");
                    assert_eq!(p.column_groups, (n / 64).div_ceil(4 / kw), "{p:?}");
                    assert!(p.slices >= 1 && p.slices <= groups, "{p:?}");
                    assert!(
                        (p.slices - 1) * p.groups_per_slice < groups
                            && p.slices * p.groups_per_slice >= groups,
                        "every slice starts inside k: {p:?}"
                    );
                }
            }
        }
    }
}

/// Which path a GEMM case runs: the public entry point (tiled kernel past 16 rows, small-m
/// kernel with its automatic k-ways below) with optionally forced k splits, or the small-m
/// kernel with an explicit plan.
#[derive(Clone, Copy, Debug)]
enum Path {
    Auto(Option<usize>),
    Gemv { k_ways: usize, slices: usize },
    Spread { whole: usize, slices: usize },
}

/// Runs one GEMM and compares with the f64 reference over the kernel's weights. The kernel's
/// only differences from that reference are the f32 accumulation (products of two 16-bit
/// floats, or of x and the integer q, are exact in f32; each of the K/16 mma steps, the
/// small-m kernel's scaling of each group's sum, the 4-warp and k-split sums rounds at most
/// once relative to the running sum of |x w|) and the final rounding to T (relative, or
/// absolute below T's normal range).
fn gemm_case<T: MmaFloat>(
    s: &GpuStream,
    ws: &mut GemmWorkspace,
    m: usize,
    n: usize,
    k: usize,
    path: Path,
    seed: u64,
) {
    let q = random_int4::<T>(n, k, seed);
    // The small-m kernel multiplies with the exact q * scale (scaling each group's sum in
    // f32), the tiled one with q * scale rounded to T.
    let small_m = !matches!(path, Path::Auto(_)) || m <= GemvPlan::MAX_ROWS;
    let kw = if small_m {
        q.dequantize()
    } else {
        q.kernel_weights()
    };
    let mut rng = SplitMix64::new(seed + 1);
    let x: Vec<T> = random(&mut rng, m * k, 1.0);
    let xf = to_f64(&x);
    let (mut want, mut mag) = (vec![0.0f64; m * n], vec![0.0f64; m * n]);
    for r in 0..m {
        for c in 0..n {
            let (mut acc, mut abs) = (0.0f64, 0.0f64);
            for kk in 0..k {
                let p = xf[r * k + kk] * kw[c * k + kk] as f64;
                acc += p;
                abs += p.abs();
            }
            want[r * n + c] = acc;
            mag[r * n + c] = abs;
        }
    }
    let wd = s.upload_w4a16(&q).unwrap();
    let xd = s.upload(&x).unwrap();
    let run = |out: &mut DeviceBuf<T>, ws: &mut GemmWorkspace, order| match path {
        Path::Auto(None) => s.w4a16_gemm_ordered(&wd, &xd, m, out, ws, order).unwrap(),
        Path::Auto(splits) => s.w4a16_gemm_planned(&wd, &xd, m, out, ws, splits).unwrap(),
        Path::Gemv { k_ways, slices } => {
            let plan = GemvPlan::with(m, n, k, k_ways, slices).unwrap();
            s.w4a16_gemv_planned(&wd, &xd, m, out, ws, &plan, order)
                .unwrap()
        }
        Path::Spread { whole, slices } => {
            let plan = GemvPlan::spread(m, n, k, whole, slices).unwrap();
            s.w4a16_gemv_planned(&wd, &xd, m, out, ws, &plan, order)
                .unwrap()
        }
    };
    let mut out = nan_buf::<T>(s, m * n);
    run(&mut out, ws, LaunchOrder::Serial);
    let got = s.download(&out).unwrap();
    // A second call on the same workspace (the k-split counters were reset by the first)
    // into a fresh poisoned buffer gives the same bits: the slice sums have a fixed order;
    // and so does a programmatic dependent launch (right after the poisoning copy here).
    for order in [LaunchOrder::Serial, LaunchOrder::Programmatic] {
        let mut again = nan_buf::<T>(s, m * n);
        run(&mut again, ws, order);
        let again = s.download(&again).unwrap();
        assert_same_bits(
            &got,
            &again,
            &format!("w4a16 m{m} n{n} k{k} {path:?} {order:?}"),
        );
    }
    let steps = (k / 16 + 4 + 2 * (k / GROUP)) as f64;
    let u32 = 2f64.powi(-23); // tensor-core accumulation may truncate instead of rounding
    let name = format!("w4a16 {} m{m} n{n} k{k} {path:?}", T::SUFFIX);
    for i in 0..m * n {
        let g = got[i].to_f32() as f64;
        let tol = T::UNIT_ROUNDOFF * want[i].abs() + steps * u32 * mag[i] + 0.5 * T::MIN_SUBNORMAL;
        assert!(
            (g - want[i]).abs() <= tol,
            "{name}: row {} col {}: got {g}, want {} (tol {tol:e})",
            i / n,
            i % n,
            want[i]
        );
    }
}

fn assert_same_bits<T: MmaFloat>(want: &[T], got: &[T], what: &str) {
    assert_eq!(want.len(), got.len(), "{what}: length");
    for (i, (a, b)) in want.iter().zip(got).enumerate() {
        assert!(
            a.to_f32().to_bits() == b.to_f32().to_bits(),
            "{} {what}: element {i} differs: {} vs {}",
            T::SUFFIX,
            a.to_f32(),
            b.to_f32()
        );
    }
}

/// Two chained small-m GEMMs, y = W2 (W1 x), on one workspace, every launch programmatic
/// (compute capability 9.0+) against every launch ordinary: the same bits, and no NaN of the
/// poisoned buffers. The first GEMM is long (36 groups per warp, 2 slices: summed in a
/// cluster on 9.0+), the second short with 4 slices (global partials and counters, which the
/// first's launch on the same workspace used too where it had no cluster), so a second GEMM
/// that did not wait for the first would read the poisoned or partly written middle buffer,
/// or race for the workspace; 8 chains back to back.
fn gemv_chain<T: MmaFloat>(s: &GpuStream, m: usize) {
    let (n1, k1, n2) = (512, 9216, 2048);
    let (w1, w2) = (
        random_int4::<T>(n1, k1, 40 + m as u64),
        random_int4::<T>(n2, n1, 41),
    );
    let (w1, w2) = (s.upload_w4a16(&w1).unwrap(), s.upload_w4a16(&w2).unwrap());
    let mut rng = SplitMix64::new(42 + m as u64);
    let xs: Vec<DeviceBuf<T>> = (0..8)
        .map(|_| s.upload(&random::<T>(&mut rng, m * k1, 1.0)).unwrap())
        .collect();
    // 8 column groups x 2 slices of 36 groups; 32 tiles of one k-way x 4 slices of 1 group.
    let first = GemvPlan::with(m, n1, k1, 4, 2).unwrap();
    let second = GemvPlan::with(m, n2, n1, 1, 4).unwrap();
    let mut ws = GemmWorkspace::default();
    let mut results = Vec::new();
    for order in [LaunchOrder::Serial, LaunchOrder::Programmatic] {
        let mut mids: Vec<DeviceBuf<T>> = (0..8).map(|_| nan_buf::<T>(s, m * n1)).collect();
        let mut outs: Vec<DeviceBuf<T>> = (0..8).map(|_| nan_buf::<T>(s, m * n2)).collect();
        for ((x, mid), out) in xs.iter().zip(&mut mids).zip(&mut outs) {
            s.w4a16_gemv_planned(&w1, x, m, mid, &mut ws, &first, order)
                .unwrap();
            s.w4a16_gemv_planned(&w2, mid, m, out, &mut ws, &second, order)
                .unwrap();
        }
        let got: Vec<Vec<T>> = outs.iter().map(|o| s.download(o).unwrap()).collect();
        for (i, y) in got.iter().enumerate() {
            assert!(
                y.iter().all(|v| v.to_f32().is_finite()),
                "{} m{m} chain {i} {order:?}: a NaN or infinity in the output",
                T::SUFFIX
            );
        }
        results.push(got);
    }
    for (i, (a, b)) in results[0].iter().zip(&results[1]).enumerate() {
        assert_same_bits(
            a,
            b,
            &format!("chained gemv m{m}, chain {i}, programmatic vs serial"),
        );
    }
}

#[test]
fn w4a16_gemv_programmatic_chain() {
    let Some(gpu) = gpu_or_skip("w4a16_gemv_programmatic_chain") else {
        return;
    };
    for m in [1, 3, 9, 16] {
        gemv_chain::<f16>(gpu.stream(), m);
        gemv_chain::<bf16>(gpu.stream(), m);
    }
}

fn gemm_all<T: MmaFloat>(s: &GpuStream) {
    let mut ws = GemmWorkspace::default();
    for (i, &m) in [1usize, 3, 17, 129].iter().enumerate() {
        for &(n, k) in &[(64, 128), (192, 384), (1024, 2048)] {
            for splits in [None, Some(1), Some(3)] {
                gemm_case::<T>(
                    s,
                    &mut ws,
                    m,
                    n,
                    k,
                    Path::Auto(splits),
                    10 * i as u64 + n as u64,
                );
            }
        }
    }
    // A deeper k (DeepSeek's 7168) for decode and a prefill-sized m.
    gemm_case::<T>(s, &mut ws, 1, 256, 7168, Path::Auto(None), 99);
    gemm_case::<T>(s, &mut ws, 64, 128, 1408, Path::Auto(None), 98);
}

/// The small-m kernel at every row count (automatic plan), and at 1, 2, 7, 8 (full token
/// tile), 9 (second tile begins; x through shared memory, rows past m zero-filled), 13 and
/// 16 rows with every k-way count and 1, 3, 4, 8 and 11 slices
/// of k = 11 groups: with 4 k-ways the warps of one slice get 3, 3, 3 and 2 groups (odd and
/// even counts end the two-buffer loop at either buffer), 1 or 0 (3 to 11 slices: warps
/// with nothing to add), 3 and 4 slices are uneven (4 + 4 + 3, 3 + 3 + 3 + 2), 8 become 6 of
/// 2 groups (+ 1); on compute capability 9.0+ 3 slices are summed in a cluster, the rest
/// through partials (at 9-16 rows two items per thread), and 448 columns (7 tiles) leave
/// the last block with 3 of 4 tiles (one k-way) or 1 of 2 (two k-ways). Then DeepSeek-like
/// depths: a long k in many slices, a short k, and one warp streaming 56 groups.
fn gemv_all<T: MmaFloat>(s: &GpuStream) {
    let mut ws = GemmWorkspace::default();
    for m in 1..=GemvPlan::MAX_ROWS {
        let seed = 1000 + 100 * m as u64;
        gemm_case::<T>(s, &mut ws, m, 320, 1408, Path::Auto(None), seed);
        if [1, 2, 7, 8, 9, 13, 16].contains(&m) {
            for (i, k_ways) in GemvPlan::K_WAYS.into_iter().enumerate() {
                for (j, slices) in [1, 3, 4, 8, 11].into_iter().enumerate() {
                    let path = Path::Gemv { k_ways, slices };
                    gemm_case::<T>(s, &mut ws, m, 448, 1408, path, seed + (5 * i + j) as u64);
                }
            }
            gemm_case::<T>(s, &mut ws, m, 1024, 512, Path::Auto(None), seed + 50);
            // Spread over 10 tiles: 7 whole and 3 in 2 slices (6 + 5 groups), 5 whole and 5
            // in 1 slice each, 9 whole and 1 in 6 slices of 2 groups (8 wanted), 1 whole
            // and 9 in 11 slices of one group (warps with nothing to add).
            for (i, (whole, slices)) in [(7, 2), (5, 1), (9, 8), (1, 11)].into_iter().enumerate() {
                let path = Path::Spread { whole, slices };
                gemm_case::<T>(s, &mut ws, m, 640, 1408, path, seed + 60 + i as u64);
            }
        }
    }
    gemm_case::<T>(s, &mut ws, 1, 512, 18432, Path::Auto(None), 3000);
    gemm_case::<T>(s, &mut ws, 4, 4096, 512, Path::Auto(None), 3001);
    gemm_case::<T>(s, &mut ws, 16, 192, 4096, Path::Auto(Some(32)), 3002);
    let path = Path::Gemv {
        k_ways: 1,
        slices: 1,
    };
    gemm_case::<T>(s, &mut ws, 3, 128, 7168, path, 3003);
}

#[test]
fn w4a16_gemv_f16() {
    let Some(gpu) = gpu_or_skip("w4a16_gemv_f16") else {
        return;
    };
    gemv_all::<f16>(gpu.stream());
}

#[test]
fn w4a16_gemv_bf16() {
    let Some(gpu) = gpu_or_skip("w4a16_gemv_bf16") else {
        return;
    };
    gemv_all::<bf16>(gpu.stream());
}

#[test]
fn w4a16_gemm_f16() {
    let Some(gpu) = gpu_or_skip("w4a16_gemm_f16") else {
        return;
    };
    gemm_all::<f16>(gpu.stream());
}

#[test]
fn w4a16_gemm_bf16() {
    let Some(gpu) = gpu_or_skip("w4a16_gemm_bf16") else {
        return;
    };
    gemm_all::<bf16>(gpu.stream());
}

#[test]
fn w4a16_gemm_checks_shapes() {
    let Some(gpu) = gpu_or_skip("w4a16_gemm_checks_shapes") else {
        return;
    };
    let s = gpu.stream();
    let (q, _) = Int4Weights::<f16>::quantize(&random_weights(64, 128, 4), 64, 128).unwrap();
    let wd = s.upload_w4a16(&q).unwrap();
    let x = s.upload(&vec![f16::ONE; 2 * 128]).unwrap();
    let mut out = s.upload(&vec![f16::ZERO; 2 * 63]).unwrap();
    let mut ws = GemmWorkspace::default();
    assert!(s.w4a16_gemm(&wd, &x, 2, &mut out, &mut ws).is_err());
    let mut out = s.upload(&vec![f16::ZERO; 3 * 64]).unwrap();
    assert!(s.w4a16_gemm(&wd, &x, 3, &mut out, &mut ws).is_err());
    // A small-m plan made for another shape is refused.
    let mut out = s.upload(&vec![f16::ZERO; 2 * 64]).unwrap();
    let other = GemvPlan::with(2, 128, 128, 4, 1).unwrap();
    let serial = LaunchOrder::Serial;
    assert!(s
        .w4a16_gemv_planned(&wd, &x, 2, &mut out, &mut ws, &other, serial)
        .is_err());
    let mut plan = GemvPlan::with(2, 64, 128, 4, 1).unwrap();
    s.w4a16_gemv_planned(&wd, &x, 2, &mut out, &mut ws, &plan, serial)
        .unwrap();
    plan.slices = 2; // more slices than k / 128 groups
    assert!(s
        .w4a16_gemv_planned(&wd, &x, 2, &mut out, &mut ws, &plan, serial)
        .is_err());
}
