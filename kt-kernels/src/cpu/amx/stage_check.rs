//! What the AMX step kernels' stage tests share (tests only; the stages run on AVX512 with
//! the tile products in scalar code, so they run where AMX is missing): their activations
//! and the check of one step's f32 accumulators against the scalar reference dot.

use std::arch::x86_64::{__m512, _mm512_set1_ps, _mm512_setzero_ps};

use super::kquant::{StepKernel, QK_K, TG, TR};
use crate::quant::{self, QType};
use crate::util::SplitMix64;

/// [`TG`] Q8_K activation rows of one super-block each, from normal floats; the first row
/// at the format's extremes (a quant of -128 in every group).
pub(super) fn q8k_rows(rng: &mut SplitMix64) -> Vec<u8> {
    let mut af = vec![0f32; TG * QK_K];
    rng.fill_normal(&mut af, 1.0);
    af[..QK_K].iter_mut().for_each(|v| *v = -(v.abs() + 1.0));
    let mut a = vec![0u8; TG * QType::Q8_K.row_bytes(QK_K).unwrap()];
    quant::quantize(QType::Q8_K, &af, &mut a).unwrap();
    a
}

/// Checks one step's accumulators: lane `t` of `acc[n]` holds weight row `n` of `w`
/// (`qtype`, one super-block a row) times activation row `t` of `a` (Q8_K). Rows from `nr`
/// on must be untouched (NaN, as the caller poisoned them), tokens from `n_tok` on zero,
/// and every other lane within f32 rounding of `quant::vec_dot`: 1e-5 of the sum of
/// `|w a|` over the block, the size of the terms the two summation orders round.
pub(super) fn check_step(
    qtype: QType,
    acc: &[__m512],
    nr: usize,
    n_tok: usize,
    w: &[u8],
    a: &[u8],
    case: &str,
) {
    check_rows(qtype, QType::Q8_K, QK_K, acc, nr, n_tok, w, a, case);
}

/// [`check_step`] for a step of `k` elements with activations in `act` (the small-block
/// formats' Q8_0).
#[allow(clippy::too_many_arguments)]
pub(super) fn check_rows(
    qtype: QType,
    act: QType,
    k: usize,
    acc: &[__m512],
    nr: usize,
    n_tok: usize,
    w: &[u8],
    a: &[u8],
    case: &str,
) {
    let (wrow, arow) = (qtype.row_bytes(k).unwrap(), act.row_bytes(k).unwrap());
    let mut deq_w = vec![0f32; k];
    let mut deq_a = vec![0f32; k];
    for (n, acc) in acc.iter().enumerate() {
        // SAFETY: an __m512 is 16 f32.
        let got: [f32; TG] = unsafe { std::mem::transmute(*acc) };
        if n >= nr {
            assert!(
                got.iter().all(|v| v.is_nan()),
                "{case}: row {n} past nr written"
            );
            continue;
        }
        let wn = &w[n * wrow..(n + 1) * wrow];
        quant::dequantize(qtype, wn, &mut deq_w).unwrap();
        for (t, &g) in got.iter().enumerate() {
            if t >= n_tok {
                assert_eq!(g, 0.0, "{case}: missing token {t} of row {n}");
                continue;
            }
            let at = &a[t * arow..(t + 1) * arow];
            let want = quant::vec_dot(qtype, k, wn, at).unwrap();
            quant::dequantize(act, at, &mut deq_a).unwrap();
            let mag: f32 = deq_w.iter().zip(&deq_a).map(|(x, y)| (x * y).abs()).sum();
            assert!(
                (g - want).abs() <= 1e-5 * mag,
                "{case}: row {n} token {t}: {g} vs {want} (|w a| {mag})"
            );
        }
    }
}

/// One step's records of kernel `K`: unpacked weights, transposed activations, C tiles.
pub(super) type Records<K> = (
    Box<<K as StepKernel>::Weights>,
    Box<<K as StepKernel>::Acts>,
    Box<<K as StepKernel>::Products>,
);

/// Zeroed records of step kernel `K` on the heap: one step's unpacked weights, transposed
/// activations and C tiles.
///
/// # Safety
/// `K`'s record types hold only integers and floats (arrays of them), for which all-zero
/// bytes are valid values.
pub(super) unsafe fn zeroed_records<K: StepKernel>() -> Records<K> {
    // SAFETY: the caller's contract.
    unsafe {
        (
            Box::new(std::mem::zeroed()),
            Box::new(std::mem::zeroed()),
            Box::new(std::mem::zeroed()),
        )
    }
}

/// Whether the stages can run here (AVX512 with VNNI, BW, DQ, VL and F16C); says why not.
pub(super) fn can_run() -> bool {
    let ok = std::arch::is_x86_feature_detected!("avx512vnni")
        && std::arch::is_x86_feature_detected!("avx512bw")
        && std::arch::is_x86_feature_detected!("avx512dq")
        && std::arch::is_x86_feature_detected!("avx512vl")
        && std::arch::is_x86_feature_detected!("f16c");
    if !ok {
        eprintln!("skipped: no AVX512-VNNI");
    }
    ok
}

/// A step's accumulators: rows `..nr` zero, the rest NaN (which [`check_step`] requires
/// untouched). Only after [`can_run`].
pub(super) fn poisoned_acc(nr: usize) -> [__m512; TR] {
    // SAFETY: AVX512F is present (the caller checked `can_run`).
    let mut acc = unsafe { [_mm512_set1_ps(f32::NAN); TR] };
    // SAFETY: as above.
    acc[..nr].fill(unsafe { _mm512_setzero_ps() });
    acc
}
