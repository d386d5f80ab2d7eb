//! BF16 weights times BF16 activations. With AVX512-BF16, `vdpbf16ps` multiplies pairs
//! of bf16 and adds them to f32 lanes; without it, each bf16 is widened to f32 (a shift
//! or a mask: bf16 is the top half of an f32) and accumulated with FMA. Either way a
//! register tile of `RM` rows x `RN` tokens walks K 32 elements at a time, the tail with
//! masked loads, and each product's 16 lanes are summed at the end. In a GEMV tile each
//! step also prefetches the same 64 bytes of the next register tile's rows (see
//! [`super::tile::prefetch_group`]'s callers: a GEMV streams its weights once); at one
//! token, tiles of 16 rows and more stream four runs of rows side by side instead
//! ([`gemv_streams`]).

use std::arch::x86_64::*;

use super::gemv::{stream_rows, STREAMS};
use super::tile::prefetch_group;
use crate::cpu::dispatch::GemmTile;
use crate::cpu::isa::Isa;
use crate::cpu::GEMV_MAX_TOKENS;

/// Elements per step (one zmm of bf16).
const STEP: usize = 32;

/// The table's `gemm` entry for BF16.
///
/// # Safety
/// See [`crate::cpu::dispatch::GemmFn`].
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")]
pub(super) unsafe fn gemm(tile: &GemmTile) {
    if Isa::Avx512.has_avx512_bf16() {
        // SAFETY: the CPU has AVX512-BF16 (checked just above); the tile contract is
        // forwarded.
        unsafe { gemm_dpbf16(tile) }
    } else {
        // SAFETY: forwarded contract.
        unsafe { gemm_with::<false>(tile) }
    }
}

/// # Safety
/// As [`gemm`], on a CPU with AVX512-BF16.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx512bf16")]
unsafe fn gemm_dpbf16(tile: &GemmTile) {
    // SAFETY: forwarded contract; the features of gemm_with::<true> are enabled here.
    unsafe { gemm_with::<true>(tile) }
}

/// Covers the tile with `RM x RN` register tiles, the largest first.
///
/// # Safety
/// As [`gemm`]; `DPBF16` only on a CPU with AVX512-BF16.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")]
unsafe fn gemm_with<const DPBF16: bool>(tile: &GemmTile) {
    // SAFETY: forwarded contract.
    let mut r0 = unsafe { gemv_streams::<DPBF16>(tile) };
    while r0 < tile.rows {
        let rm = 4.min(tile.rows - r0);
        let mut t0 = 0;
        while t0 < tile.tokens {
            let rn = 4.min(tile.tokens - t0);
            // SAFETY: rows r0..r0+rm and tokens t0..t0+rn are inside the tile.
            unsafe {
                let (w, a) = (
                    tile.w.add(r0 * tile.w_stride),
                    tile.a.add(t0 * tile.a_stride),
                );
                let out = tile.out.add(t0 * tile.ldo + r0);
                let gemv = tile.tokens <= GEMV_MAX_TOKENS;
                let args = Args {
                    w,
                    ws: tile.w_stride,
                    a,
                    as_: tile.a_stride,
                    k: tile.k,
                    out,
                    ldo: tile.ldo,
                    row_step: 1,
                    prefetch: if gemv {
                        Prefetch::NextTile
                    } else {
                        Prefetch::None
                    },
                };
                macro_rules! shapes {
                    ($(($r:literal, $n:literal)),*) => {
                        match (rm, rn) {
                            $(($r, $n) => if DPBF16 { kernel_dpbf16::<$r, $n>(args) } else { kernel_fma::<$r, $n>(args) },)*
                            _ => unreachable!("no {rm}x{rn} register tile"),
                        }
                    };
                }
                shapes!(
                    (1, 1),
                    (1, 2),
                    (1, 3),
                    (1, 4),
                    (2, 1),
                    (2, 2),
                    (2, 3),
                    (2, 4),
                    (3, 1),
                    (3, 2),
                    (3, 3),
                    (3, 4),
                    (4, 1),
                    (4, 2),
                    (4, 3),
                    (4, 4)
                );
            }
            t0 += rn;
        }
        r0 += rm;
    }
}

/// One-token tiles long enough for the streams of the integer formats' GEMV
/// ([`super::gemv`]): register tiles of rows `i`, `i + q`, `i + 2q`, `i + 3q`, four runs
/// of consecutive rows that a thread streams side by side, each prefetched
/// [`STREAM_LEAD`] bytes ahead into L1. Returns the rows done (`4q`, or 0).
///
/// Adjacent tiles prefetch the next tile's rows, which for rows of 7168 bf16 is 57 KB
/// ahead, more than L1 holds. Session 16 (device, 16 threads, `kt-bench matmul --tokens
/// 1`, the schemes taking turns call by call, two processes), GB/s adjacent / streams:
/// 2048x7168 79.5 / 88.6 and 91.7 / 100.5, 7168x2048 99.5 / 104.6 and 102.3 / 106.6,
/// 1408x2048 92.5 / 105.0 and 90.8 / 102.4, 2048x1408 91.9 / 100.8 and 95.7 / 102.9,
/// 18432x7168 115.3 / 116.4 and 100.3 / 108.2. A lead of 2 KiB, or an L2 prefetch 4 or 8
/// KiB ahead as well, read the same on the device (within 2%) and up to 15% slower on the
/// dev VM's Zen 5.
///
/// # Safety
/// As [`gemm`]; `DPBF16` only on a CPU with AVX512-BF16.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")]
unsafe fn gemv_streams<const DPBF16: bool>(tile: &GemmTile) -> usize {
    let q = stream_rows(tile.rows);
    if tile.tokens != 1 || q == 0 {
        return 0;
    }
    for i in 0..q {
        let args = Args {
            w: tile.w.wrapping_add(i * tile.w_stride),
            ws: q * tile.w_stride,
            a: tile.a,
            as_: tile.a_stride,
            k: tile.k,
            out: tile.out.wrapping_add(i),
            ldo: tile.ldo,
            row_step: q,
            prefetch: Prefetch::Ahead,
        };
        // SAFETY: rows i + j q (j < 4) are inside the tile, as are their outputs.
        unsafe {
            if DPBF16 {
                kernel_dpbf16::<4, 1>(args)
            } else {
                kernel_fma::<4, 1>(args)
            }
        }
    }
    STREAMS * q
}

/// Bytes ahead of each streamed row that a step prefetches.
const STREAM_LEAD: usize = 1024;

/// What a register tile prefetches each step.
#[derive(Clone, Copy)]
enum Prefetch {
    None,
    /// The same 64 bytes of the `RM` rows after the tile's (adjacent tiles).
    NextTile,
    /// The line [`STREAM_LEAD`] bytes ahead in each of the tile's rows, into L1.
    Ahead,
}

/// A register tile: `RM` weight rows `ws` bytes apart from `w`, `RN` activation rows
/// `as_` bytes apart from `a`, `k` elements; output `(t, r)` at `out[t * ldo + r *
/// row_step]`.
#[derive(Clone, Copy)]
struct Args {
    w: *const u8,
    ws: usize,
    a: *const u8,
    as_: usize,
    k: usize,
    out: *mut f32,
    ldo: usize,
    row_step: usize,
    prefetch: Prefetch,
}

/// The step's prefetches of `args` at element `i`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")]
fn prefetch_step<const RM: usize>(args: &Args, i: usize) {
    match args.prefetch {
        Prefetch::None => {}
        Prefetch::NextTile => prefetch_next::<RM>(args.w, args.ws, i),
        Prefetch::Ahead => {
            for r in 0..RM {
                prefetch_group(args.w.wrapping_add(r * args.ws + 2 * i + STREAM_LEAD), 64);
            }
        }
    }
}

/// Prefetches bytes `2i .. 2i + 64` of the `RM` rows after the register tile's.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")]
fn prefetch_next<const RM: usize>(w: *const u8, ws: usize, i: usize) {
    for r in RM..2 * RM {
        prefetch_group(w.wrapping_add(r * ws + 2 * i), 64);
    }
}

/// 32 bf16 at `p`, or the first `n < 32` of them and zeros.
///
/// # Safety
/// `min(n, 32)` bf16 are readable at `p`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")]
unsafe fn load(p: *const u8, n: usize) -> __m512i {
    // SAFETY: the masked load touches only the first min(n, 32) elements.
    unsafe {
        if n >= STEP {
            _mm512_loadu_si512(p.cast())
        } else {
            _mm512_maskz_loadu_epi16(((1u64 << n) - 1) as __mmask32, p.cast())
        }
    }
}

/// Writes the lane sums of the accumulators.
///
/// # Safety
/// `args.out` covers `RN` tokens x `RM` rows at `args.ldo` and `args.row_step`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")]
unsafe fn store<const RM: usize, const RN: usize>(acc: &[[__m512; RN]; RM], args: &Args) {
    for (r, acc_r) in acc.iter().enumerate() {
        for (t, &a) in acc_r.iter().enumerate() {
            // SAFETY: inside the output tile (the caller's contract).
            unsafe { *args.out.add(t * args.ldo + r * args.row_step) = _mm512_reduce_add_ps(a) };
        }
    }
}

/// # Safety
/// `args` describe `RM` weight rows and `RN` activation rows of `k` bf16 and the output
/// tile; AVX512-BF16.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx512bf16")]
unsafe fn kernel_dpbf16<const RM: usize, const RN: usize>(args: Args) {
    let Args {
        w, ws, a, as_, k, ..
    } = args;
    let mut acc = [[_mm512_setzero_ps(); RN]; RM];
    let mut i = 0;
    while i < k {
        prefetch_step::<RM>(&args, i);
        let n = k - i;
        // SAFETY: elements i..min(i + 32, k) of each row (the caller's contract).
        unsafe {
            let mut wv = [_mm512_setzero_si512(); RM];
            for (r, v) in wv.iter_mut().enumerate() {
                *v = load(w.add(r * ws + 2 * i), n);
            }
            for t in 0..RN {
                let av: __m512bh = std::mem::transmute(load(a.add(t * as_ + 2 * i), n));
                for (acc_r, &w_r) in acc.iter_mut().zip(&wv) {
                    acc_r[t] = _mm512_dpbf16_ps(
                        acc_r[t],
                        std::mem::transmute::<__m512i, __m512bh>(w_r),
                        av,
                    );
                }
            }
        }
        i += STEP;
    }
    // SAFETY: forwarded contract.
    unsafe { store(&acc, &args) };
}

/// A vector of 32 bf16 as two f32 vectors: the even elements (shifted up into the f32
/// high half) and the odd ones (already there: the low half masked off).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")]
fn widen(v: __m512i) -> (__m512, __m512) {
    let high = _mm512_set1_epi32(0xFFFF_0000_u32 as i32);
    (
        _mm512_castsi512_ps(_mm512_slli_epi32::<16>(v)),
        _mm512_castsi512_ps(_mm512_and_si512(v, high)),
    )
}

/// # Safety
/// As [`kernel_dpbf16`], without needing AVX512-BF16.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")]
unsafe fn kernel_fma<const RM: usize, const RN: usize>(args: Args) {
    let Args {
        w, ws, a, as_, k, ..
    } = args;
    let mut acc = [[_mm512_setzero_ps(); RN]; RM];
    let mut i = 0;
    while i < k {
        prefetch_step::<RM>(&args, i);
        let n = k - i;
        // SAFETY: as in kernel_dpbf16.
        unsafe {
            let mut wv = [(_mm512_setzero_ps(), _mm512_setzero_ps()); RM];
            for (r, v) in wv.iter_mut().enumerate() {
                *v = widen(load(w.add(r * ws + 2 * i), n));
            }
            for t in 0..RN {
                let (ae, ao) = widen(load(a.add(t * as_ + 2 * i), n));
                for (acc_r, &(we, wo)) in acc.iter_mut().zip(&wv) {
                    acc_r[t] = _mm512_fmadd_ps(wo, ao, _mm512_fmadd_ps(we, ae, acc_r[t]));
                }
            }
        }
        i += STEP;
    }
    // SAFETY: forwarded contract.
    unsafe { store(&acc, &args) };
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::util::SplitMix64;

    /// The widening fallback cannot be reached through the table on a CPU with
    /// AVX512-BF16: compare both kernels on the same data here.
    #[test]
    fn dpbf16_and_fma_kernels_agree() {
        if Isa::Avx512.check().is_err() || !Isa::Avx512.has_avx512_bf16() {
            eprintln!("skipped: this CPU lacks AVX512 or AVX512-BF16");
            return;
        }
        let mut rng = SplitMix64::new(7);
        for k in [1usize, 31, 32, 33, 100, 1024] {
            let (rows, tokens) = (3, 2);
            let bf = |x: f32| half::bf16::from_f32(x).to_bits().to_le_bytes();
            let w: Vec<u8> = (0..rows * k).flat_map(|_| bf(rng.normal())).collect();
            let a: Vec<u8> = (0..tokens * k).flat_map(|_| bf(rng.normal())).collect();
            let mut o1 = vec![f32::NAN; rows * tokens];
            let mut o2 = vec![f32::NAN; rows * tokens];
            let args = |o: &mut Vec<f32>| Args {
                w: w.as_ptr(),
                ws: 2 * k,
                a: a.as_ptr(),
                as_: 2 * k,
                k,
                out: o.as_mut_ptr(),
                ldo: rows,
                row_step: 1,
                prefetch: Prefetch::NextTile,
            };
            // SAFETY: the CPU features were checked; the buffers hold rows x k weights,
            // tokens x k activations and tokens x rows outputs.
            unsafe {
                kernel_dpbf16::<3, 2>(args(&mut o1));
                kernel_fma::<3, 2>(args(&mut o2));
            }
            let scale: f32 = (k as f32).sqrt() * 4.0;
            for (x, y) in o1.iter().zip(&o2) {
                assert!((x - y).abs() <= 1e-5 * scale, "k {k}: {x} vs {y}");
            }
            // A one-token tile of four rows 3 rows apart whose outputs go 3 apart (the
            // streamed GEMV's register tile): the same in both kernels.
            let w: Vec<u8> = (0..12 * k).flat_map(|_| bf(rng.normal())).collect();
            let mut s1 = vec![f32::NAN; 12];
            let mut s2 = vec![f32::NAN; 12];
            let streamed = |o: &mut Vec<f32>| Args {
                w: w[2 * k..].as_ptr(),
                ws: 3 * 2 * k,
                a: a.as_ptr(),
                as_: 2 * k,
                k,
                out: o[1..].as_mut_ptr(),
                ldo: 12,
                row_step: 3,
                prefetch: Prefetch::Ahead,
            };
            // SAFETY: as above; rows 1, 4, 7, 10 of the 12 and their outputs exist.
            unsafe {
                kernel_dpbf16::<4, 1>(streamed(&mut s1));
                kernel_fma::<4, 1>(streamed(&mut s2));
            }
            for (r, (x, y)) in s1.iter().zip(&s2).enumerate() {
                if r % 3 == 1 {
                    assert!((x - y).abs() <= 1e-5 * scale, "k {k} row {r}: {x} vs {y}");
                } else {
                    assert!(x.is_nan() && y.is_nan(), "row {r} was written");
                }
            }
        }
    }
}
