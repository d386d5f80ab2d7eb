//! Q6_K weights as stored in the GGUF, many tokens, on AMX `tdpbssd` (a step kernel of
//! the [`kquant`](super::kquant) pipeline).
//!
//! A Q6_K block (210 bytes: 128 `ql`, 64 `qh`, 16 int8 scales, f16 `d`) is
//! `w = d * sc_g * q` for the 16-element group `g`, `q` in -32..32. `q * sc_g` reaches
//! 4096, no byte; but each scale splits into three balanced base-8 digits,
//! `sc = c0 + 8 c1 + 64 c2` with `c0, c1` in -3..=4 and `c2` in -2..=2, and `q * c` then
//! lies in -128..=127: three signed A operands (`q * c_k` per element), three C tiles
//! (four `tdpbssd` each, K = 64), and `C0 + 8 C1 + 64 C2 = sum_g sc_g * I_g` exactly (at
//! most 256 * 4096 * 128 < 2^31). No minimum term.
//!
//! Element `128n + 32s + e` has its low 4 bits in `ql[64n + 32(s & 1) + e]` (low nibble
//! for `s < 2`, high otherwise) and its top 2 bits at bits `2s..2s + 2` of `qh[32n + e]`,
//! stored as `q + 32`: the unpacked rows keep the natural element order, as do the
//! activation lines ([`super::q8_k_lines`]).
//!
//! Tiles: 0..3 the C tiles, 3..6 the A tiles, 6 and 7 the B tiles (alternating by K step).

use std::arch::x86_64::*;

use super::kquant::{folded_config, single_step_entry_points, StepKernel, QK_K, TG, TR};
use super::q8_k_lines::{transpose_lines, Lines};
use super::tiles::{tile_dp_i8, tile_load, tile_store, tile_zero, TileConfig};

/// Below this many tokens the AVX512 kernel is used: with few token groups the three
/// digit products of the unpacking are shared by too few tokens. Device (16 threads,
/// session 7, before the unpacking lost its sign extensions), AMX / AVX512 ms,
/// 7168x2048 and 2048x7168: 16 tokens 0.307 / 0.243 and 0.326 / 0.299, 32 tokens 0.429 /
/// 0.399 and 0.546 / 0.475, 64 tokens 0.629 / 0.666 and 0.830 / 0.824.
pub(crate) const AMX_MIN_TOKENS: usize = 64;

single_step_entry_points!(Q6K, AMX_MIN_TOKENS);

/// Digits of each scale.
const DIGITS: usize = 3;

pub(super) struct Q6K;

/// One row block's super-block, unpacked for the A tiles.
#[repr(C, align(64))]
pub(super) struct WeightBlock {
    /// Digit `k`, row `n`: `q * c_k` of each element (int8), in element order.
    a: [[[i8; QK_K]; TR]; DIGITS],
    /// `d` per row.
    d: [f32; TR],
}

/// The three int32 C tiles of one step: digit `k`, weight row `n` at `[k][n]`.
#[repr(C, align(64))]
pub(super) struct CTiles([[[i32; TG]; TR]; DIGITS]);

// SAFETY: each stage touches only the records and rows it is given (see the
// functions' contracts); `products` uses tiles 0..8 as `config` sets them up.
unsafe impl StepKernel for Q6K {
    type Acts = Lines;
    type Weights = WeightBlock;
    type Products = CTiles;
    const W_BLOCK: usize = 210;

    fn config(nr: usize) -> TileConfig {
        folded_config(&[0, 1, 2, 3, 4, 5], nr)
    }

    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")]
    unsafe fn transpose_acts(a: *const u8, stride: usize, n: usize, dst: *mut Lines) {
        // SAFETY: the trait's contract is this function's.
        unsafe { transpose_lines(a, stride, n, dst) }
    }

    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,f16c")]
    unsafe fn unpack(w: *const u8, stride: usize, nr: usize, dst: *mut WeightBlock) {
        // SAFETY: the trait's contract is this function's.
        unsafe { unpack_weights(w, stride, nr, dst) }
    }

    #[inline]
    unsafe fn products(wb: *const WeightBlock, ab: *const Lines, c: *mut CTiles) {
        // SAFETY (whole body): every address is inside `wb` (A rows of 256 bytes, 64 read
        // from 64 * step <= 192), `ab` (16 lines of 64 bytes from line 16 * step) or `c`
        // (three 16 x 64-byte tiles); AMX state is configured (caller).
        unsafe {
            let a0 = (*wb).a[0].as_ptr().cast::<u8>();
            let a1 = (*wb).a[1].as_ptr().cast::<u8>();
            let a2 = (*wb).a[2].as_ptr().cast::<u8>();
            let b = (*ab).q.as_ptr().cast::<u8>();
            let c = (*c).0.as_mut_ptr().cast::<u8>();
            let (sa, sb, sc) = (QK_K, 64usize, 64usize);
            tile_zero!(0);
            tile_zero!(1);
            tile_zero!(2);
            for step in [0usize, 2] {
                tile_load!(6, b.add(1024 * step), sb);
                tile_load!(3, a0.add(64 * step), sa);
                tile_dp_i8!(0, 3, 6);
                tile_load!(4, a1.add(64 * step), sa);
                tile_dp_i8!(1, 4, 6);
                tile_load!(5, a2.add(64 * step), sa);
                tile_dp_i8!(2, 5, 6);
                tile_load!(7, b.add(1024 * step + 1024), sb);
                tile_load!(3, a0.add(64 * step + 64), sa);
                tile_dp_i8!(0, 3, 7);
                tile_load!(4, a1.add(64 * step + 64), sa);
                tile_dp_i8!(1, 4, 7);
                tile_load!(5, a2.add(64 * step + 64), sa);
                tile_dp_i8!(2, 5, 7);
            }
            tile_store!(0, c, sc);
            tile_store!(1, c.add(1024), sc);
            tile_store!(2, c.add(2048), sc);
        }
    }

    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq")]
    unsafe fn scale(
        c: *const CTiles,
        wb: *const WeightBlock,
        ab: *const Lines,
        nr: usize,
        acc: &mut [__m512; TR],
    ) {
        // SAFETY: the trait's contract is this function's.
        unsafe { scale(c, wb, ab, nr, acc) }
    }
}

/// The balanced base-8 digits of 16 int16 scales: `sc = c0 + 8 c1 + 64 c2` with
/// `c0, c1` in -3..=4 (`((x + 3) & 7) - 3` is `x` mod 8 in that range) and `c2` the rest.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
fn digits(sc: __m256i) -> [__m256i; DIGITS] {
    let (three, seven) = (_mm256_set1_epi16(3), _mm256_set1_epi16(7));
    let low =
        |x: __m256i| _mm256_sub_epi16(_mm256_and_si256(_mm256_add_epi16(x, three), seven), three);
    let c0 = low(sc);
    let r1 = _mm256_srai_epi16::<3>(_mm256_sub_epi16(sc, c0));
    let c1 = low(r1);
    let c2 = _mm256_srai_epi16::<3>(_mm256_sub_epi16(r1, c1));
    [c0, c1, c2]
}

/// Unpacks `nr` weight rows' Q6_K block (`w`, rows `stride` bytes apart) into `dst`.
///
/// # Safety
/// `nr` (<= 16) blocks are readable at `w`; `dst` is writable.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,f16c")]
unsafe fn unpack_weights(w: *const u8, stride: usize, nr: usize, dst: *mut WeightBlock) {
    let nib = _mm512_set1_epi8(0x0F);
    let top_bits = _mm512_set1_epi8(0x30);
    let offset = _mm512_set1_epi8(32);
    let high_bytes = _mm512_set1_epi16(0xFF00u16 as i16);
    // Plane `m = 2n + h` (elements 128n + 64h..128n + 64h + 64): bytes 0..32 take `qh`
    // bits 2s.. with s = 2h, bytes 32..64 bits 2s + 2..; rotating each dword left by
    // 4 - 2s (mod 32) brings them to bits 4 and 5 of each byte.
    let rotate: [__m512i; 2] = std::array::from_fn(|h| {
        let s = 2 * h as i32;
        _mm512_inserti64x4::<1>(
            _mm512_set1_epi32((4 - 2 * s).rem_euclid(32)),
            _mm256_set1_epi32((2 - 2 * s).rem_euclid(32)),
        )
    });
    // Word `i` of plane `m` takes the digit of group 4m + i / 8.
    let pick: [__m512i; 4] = std::array::from_fn(|m| {
        let mut idx = [0i16; 32];
        for (i, x) in idx.iter_mut().enumerate() {
            *x = (4 * m + i / 8) as i16;
        }
        // SAFETY: a 64-byte read of a local array.
        unsafe { _mm512_loadu_si512(idx.as_ptr().cast()) }
    });
    for n in 0..nr {
        // SAFETY: block n is readable (caller): ql at 0..128, qh at 128..192, scales at
        // 192..208, d at 208..210; row n of `dst`.
        unsafe {
            let b = w.add(n * stride);
            let d = _mm_cvtph_ps(_mm_cvtsi32_si128(i32::from(
                b.add(208).cast::<u16>().read_unaligned(),
            )));
            (*dst).d[n] = _mm_cvtss_f32(d);
            let sc = _mm256_cvtepi8_epi16(_mm_loadu_si128(b.add(192).cast()));
            let c = digits(sc).map(|v| _mm512_castsi256_si512(v));
            for half in 0..2 {
                let ql = _mm512_loadu_si512(b.add(64 * half).cast());
                let qh = _mm512_broadcast_i64x4(_mm256_loadu_si256(b.add(128 + 32 * half).cast()));
                for (h, rotate) in rotate.iter().enumerate() {
                    let plane = 2 * half + h;
                    let low = if h == 0 {
                        ql
                    } else {
                        _mm512_srli_epi16::<4>(ql)
                    };
                    let top = _mm512_rolv_epi32(qh, *rotate);
                    // (low & 0x0F) | (top & 0x30), less the offset 32.
                    let u = _mm512_or_si512(
                        _mm512_and_si512(low, nib),
                        _mm512_and_si512(top, top_bits),
                    );
                    let q = _mm512_sub_epi8(u, offset);
                    // A word times a digit has the right low byte (the even element's
                    // product mod 256), but the low byte's carry spoils the high one; the
                    // word with its low byte cleared gives the odd element's product in
                    // its high byte.
                    let odd = _mm512_and_si512(q, high_bytes);
                    for (k, c) in c.iter().enumerate() {
                        let x = _mm512_permutexvar_epi16(pick[plane], *c);
                        let v = _mm512_mask_blend_epi8(
                            0xAAAA_AAAA_AAAA_AAAA,
                            _mm512_mullo_epi16(q, x),
                            _mm512_mullo_epi16(odd, x),
                        );
                        _mm512_store_si512((*dst).a[k][n].as_mut_ptr().add(64 * plane).cast(), v);
                    }
                }
            }
        }
    }
}

/// Adds one step's scaled products to the accumulators of its token group:
/// `acc[n] += da * d[n] * (C0[n] + 8 C1[n] + 64 C2[n])`.
///
/// # Safety
/// `c` holds the step's products for `nr` rows, `wb` and `ab` its unpacked weights and
/// activations.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq")]
unsafe fn scale(
    c: *const CTiles,
    wb: *const WeightBlock,
    ab: *const Lines,
    nr: usize,
    acc: &mut [__m512; TR],
) {
    // SAFETY (whole body): rows n < nr of the initialised buffers (caller).
    unsafe {
        let da = _mm512_load_ps((*ab).d.as_ptr());
        for (n, acc) in acc.iter_mut().enumerate().take(nr) {
            let [c0, c1, c2] = [0, 1, 2].map(|k| _mm512_load_si512((*c).0[k][n].as_ptr().cast()));
            let dot = _mm512_add_epi32(
                c0,
                _mm512_add_epi32(_mm512_slli_epi32::<3>(c1), _mm512_slli_epi32::<6>(c2)),
            );
            let v = _mm512_mul_ps(_mm512_cvtepi32_ps(dot), _mm512_set1_ps((*wb).d[n]));
            *acc = _mm512_fmadd_ps(v, da, *acc);
        }
    }
}
