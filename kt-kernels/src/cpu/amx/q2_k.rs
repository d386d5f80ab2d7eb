//! Q2_K weights as stored in the GGUF, many tokens, on AMX `tdpbusd` (a step kernel of
//! the [`kquant`](super::kquant) pipeline).
//!
//! A Q2_K block (84 bytes: 16 scale bytes, 64 quant bytes, f16 `d`, `dmin`) is
//! `w = d * sc_g * q - dmin * m_g` for the 16-element group `g` (`q` in 0..4, `sc_g` the low
//! and `m_g` the high nibble of scale byte `g`). `q * sc_g` is at most 45: the scales fold
//! into the unpacked bytes with no split, and one C tile accumulates the super-block's
//! `sum_g sc_g * I_g` exactly (four `tdpbusd`, K = 64). The minimum term
//! `sum_g m_g * S_g` takes the activations' own group sums (Q8_K `bsums`) in eight
//! `vpdpwssd` per row in the epilogue.
//!
//! Element `128n + 32j + e` is bits `2j..2j + 2` of quant byte `32n + e`: the unpacked row
//! keeps the natural element order, as do the activation lines ([`super::q8_k_lines`]).
//!
//! Tiles: 0 the C tile, 2 and 3 the A tiles and 6 and 7 the B tiles (alternating by K
//! step).

use std::arch::x86_64::*;

use super::kquant::{
    folded_config, forward_stages, single_step_entry_points, StepKernel, QK_K, TG, TR,
};
use super::q8_k_lines::{
    crumb_plane_shifts, group_scale_picks, one_tile_products, transpose_lines, transpose_sums,
    Lines, SumPairs,
};
use super::tiles::TileConfig;

/// Below this many tokens the AVX512 kernel is used.
pub(crate) const AMX_MIN_TOKENS: usize = 12;

single_step_entry_points!(Q2K, AMX_MIN_TOKENS);

/// Groups (of 16 elements) per super-block.
const GROUPS: usize = QK_K / 16;

pub(super) struct Q2K;

/// One token group's activations of one super-block.
#[repr(C, align(64))]
pub(super) struct ActBlock {
    lines: Lines,
    sums: SumPairs,
}

/// One row block's super-block, unpacked for the A tiles.
#[repr(C, align(64))]
pub(super) struct WeightBlock {
    /// Row `n`: `q * sc_g` per element, in element order.
    q: [[u8; QK_K]; TR],
    /// `d` and `dmin` per row.
    d: [f32; TR],
    dmin: [f32; TR],
    /// Per row: `m_2p` in the low and `m_2p+1` in the high int16 of dword `p`.
    mins: [[i32; GROUPS / 2]; TR],
}

/// The int32 C tile of one step: weight row `n` at `[n]`.
#[repr(C, align(64))]
pub(super) struct CTile([[i32; TG]; TR]);

// SAFETY: each stage touches only the records and rows it is given (see the
// functions' contracts); `products` uses tiles 0, 2, 3, 6 and 7 as `config` sets them up.
unsafe impl StepKernel for Q2K {
    type Acts = ActBlock;
    type Weights = WeightBlock;
    type Products = CTile;
    const W_BLOCK: usize = 84;

    fn config(nr: usize) -> TileConfig {
        folded_config(&[0, 2, 3], nr)
    }

    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")]
    unsafe fn transpose_acts(a: *const u8, stride: usize, n: usize, dst: *mut ActBlock) {
        // SAFETY: the trait's contract is these functions'; both records are in `dst`.
        unsafe {
            transpose_lines(a, stride, n, &raw mut (*dst).lines);
            transpose_sums(a, stride, n, &raw mut (*dst).sums);
        }
    }

    #[inline]
    unsafe fn products(wb: *const WeightBlock, ab: *const ActBlock, c: *mut CTile) {
        // SAFETY: the configuration of `config` is loaded (caller); `wb` holds 16 rows of
        // 256 bytes, `ab` 64 lines, `c` one 16 x 64-byte tile.
        unsafe {
            one_tile_products::<false>(
                (*wb).q.as_ptr().cast(),
                (*ab).lines.q.as_ptr().cast(),
                (*c).0.as_mut_ptr().cast(),
            )
        }
    }

    forward_stages!(unpack: unpack_weights, scale: scale);
}

/// Unpacks `nr` weight rows' Q2_K block (`w`, rows `stride` bytes apart) into `dst`.
///
/// # Safety
/// `nr` (<= 16) blocks are readable at `w`; `dst` is writable.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,f16c")]
unsafe fn unpack_weights(w: *const u8, stride: usize, nr: usize, dst: *mut WeightBlock) {
    let three = _mm512_set1_epi8(3);
    let nib = _mm_set1_epi8(0x0F);
    // Plane `jp` of a quant half: bits 4jp.. of each byte in bytes 0..32, bits 4jp + 2..
    // in bytes 32..64 (the quant half's 32 bytes are in both 256-bit halves).
    let shift = crumb_plane_shifts();
    // Plane `m` holds elements 64m..64m + 64, groups 4m..4m + 4.
    let pick = group_scale_picks();
    for n in 0..nr {
        // SAFETY: block n is readable (caller): scales at 0..16, quants at 16..80, d and
        // dmin at 80..84; row n of `dst`.
        unsafe {
            let b = w.add(n * stride);
            let dd = _mm_cvtph_ps(_mm_cvtsi32_si128(b.add(80).cast::<i32>().read_unaligned()));
            (*dst).d[n] = _mm_cvtss_f32(dd);
            (*dst).dmin[n] = _mm_cvtss_f32(_mm_movehdup_ps(dd));
            let bytes = _mm_loadu_si128(b.cast());
            let sc = _mm512_castsi256_si512(_mm256_cvtepu8_epi16(_mm_and_si128(bytes, nib)));
            let m = _mm256_cvtepu8_epi16(_mm_and_si128(_mm_srli_epi16::<4>(bytes), nib));
            _mm256_storeu_si256((*dst).mins[n].as_mut_ptr().cast(), m);
            let q = (*dst).q[n].as_mut_ptr();
            for half in 0..2 {
                let v = _mm512_broadcast_i64x4(_mm256_loadu_si256(b.add(16 + 32 * half).cast()));
                for (jp, shift) in shift.iter().enumerate() {
                    let plane = 2 * half + jp;
                    let crumbs = _mm512_and_si512(_mm512_srlv_epi16(v, *shift), three);
                    // Each word is q0 + 256 q1 with q < 4: times a scale < 16 the low
                    // byte's product stays below 256, so the bytes are q0 * sc, q1 * sc.
                    let x = _mm512_permutexvar_epi16(pick[plane], sc);
                    _mm512_store_si512(q.add(64 * plane).cast(), _mm512_mullo_epi16(crumbs, x));
                }
            }
        }
    }
}

/// Adds one step's scaled products to the accumulators of its token group:
/// `acc[n] += da * (d[n] * C[n] - dmin[n] * sum_g m_g[n] S_g)`.
///
/// # Safety
/// `c` holds the step's products for `nr` rows, `wb` and `ab` its unpacked weights and
/// activations.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")]
unsafe fn scale(
    c: *const CTile,
    wb: *const WeightBlock,
    ab: *const ActBlock,
    nr: usize,
    acc: &mut [__m512; TR],
) {
    // SAFETY (whole body): rows n < nr of the initialised buffers (caller).
    unsafe {
        let da = _mm512_load_ps((*ab).lines.d.as_ptr());
        let sums: [__m512i; GROUPS / 2] =
            std::array::from_fn(|p| _mm512_loadu_si512((*ab).sums[p].as_ptr().cast()));
        for (n, acc) in acc.iter_mut().enumerate().take(nr) {
            let dot = _mm512_load_si512((*c).0[n].as_ptr().cast());
            let m = &(*wb).mins[n];
            // Two chains of four, so a row waits on fewer dependent `vpdpwssd`s.
            let mut chains = [_mm512_setzero_si512(); 2];
            for (p, s) in sums.iter().enumerate() {
                chains[p % 2] = _mm512_dpwssd_epi32(chains[p % 2], *s, _mm512_set1_epi32(m[p]));
            }
            let mins = _mm512_add_epi32(chains[0], chains[1]);
            let v = _mm512_mul_ps(_mm512_cvtepi32_ps(dot), _mm512_set1_ps((*wb).d[n]));
            let v = _mm512_fnmadd_ps(_mm512_cvtepi32_ps(mins), _mm512_set1_ps((*wb).dmin[n]), v);
            *acc = _mm512_fmadd_ps(v, da, *acc);
        }
    }
}
