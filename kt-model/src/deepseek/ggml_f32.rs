//! ggml's f32 evaluation order for the steps of the quantized forward pass that are not
//! quantized weight products: the latent attention's scores (`K q`), softmax and latent sum
//! (`V p`), SwiGLU, the rope, and products with f32 weights. The fixtures' llama.cpp is ggml's
//! AVX2 + FMA build (docs/parity.md), so these reproduce that build's code lane by lane in
//! portable Rust: IEEE f32 adds, multiplies and fused multiply-adds (the same bits on any CPU),
//! and libm's `expf`, `logf`, `powf`, `cosf`, `sinf` where ggml calls libm (glibc's on Linux, as
//! llama.cpp's). Tested bit for bit against llama.cpp's own tensors (`tests::llama_cpp_*`,
//! `kt-model/tests/data/README.md`).
//!
//! * [`matmul_f32`]: `MUL_MAT` of f32 weights (the router), by one of the two dots below.
//! * [`vec_dot_f32`]: `ggml_vec_dot_f32` (GGML_SIMD): four 8-lane FMA accumulators over steps
//!   of 32, combined pairwise and reduced with `hadd`, the tail added one by one (FMA-contracted).
//! * [`sgemm_dot_f32`]: llamafile's tinyBLAS F32 kernel, one output: one 8-lane FMA accumulator
//!   over steps of 8 (the last one partial), then its `hsum`. ggml's `MUL_MAT` takes it for a
//!   contiguous f32 right-hand side of at least 2 columns (a prompt's `V p`; not a decode
//!   step, nor the permuted queries of `K q`).
//! * [`softmax_row`]: `ggml_compute_forward_soft_max_f32`: `x * scale`, the max,
//!   `ggml_vec_soft_max_f32` (its vectorized `expf` over 8-lane blocks, the block sums added in
//!   f64), then a multiply by `(f32)(1 / sum)`.
//! * [`weighted_rows`]: `V p` summed as either dot does it.
//! * [`Rope`]: `ggml_compute_forward_rope_flt` with its f32 cos/sin cache.
//! * [`swiglu`]: `ggml_vec_swiglu_f32`: `x / (1 + expf(-x)) * g`, the `expf` vectorized on
//!   8-lane blocks and libm's on a tail.
//!
//! ggml's AVX512 build differs (16 lanes, another `expf`): llama.cpp is then not bit-equal
//! to its own AVX2 fixtures either. On x86 CPUs with AVX2 and FMA the loops run in a function
//! compiled for them ([`with_fma`]) so the fused operations are single instructions;
//! elsewhere `f32::mul_add` computes the same fused result in software.

/// ggml's AVX2 vector width in f32 lanes.
const LANES: usize = 8;
/// `GGML_F32_STEP` on AVX2: four vectors per loop step.
const STEP: usize = 4 * LANES;

/// `(a * b) + c` rounded once (`_mm256_fmadd_ps` on one lane).
#[inline(always)]
fn fma(a: f32, b: f32, c: f32) -> f32 {
    a.mul_add(b, c)
}

/// The `hsum` of llamafile and of `ggml_vec_soft_max_f32`: high half plus low half, then
/// `(l0 + l2) + (l1 + l3)`.
#[inline(always)]
fn hsum_movehl(v: &[f32; LANES]) -> f32 {
    let t = [v[0] + v[4], v[1] + v[5], v[2] + v[6], v[3] + v[7]];
    (t[0] + t[2]) + (t[1] + t[3])
}

/// `GGML_F32x8_REDUCE`'s last step: high half plus low half, then two `hadd`s,
/// `(l0 + l1) + (l2 + l3)`.
#[inline(always)]
fn hsum_hadd(v: &[f32; LANES]) -> f32 {
    let t = [v[0] + v[4], v[1] + v[5], v[2] + v[6], v[3] + v[7]];
    (t[0] + t[1]) + (t[2] + t[3])
}

/// `GGML_F32x8_REDUCE` of the four accumulators: `0 += 2`, `1 += 3`, then `0 += 1`, then
/// [`hsum_hadd`].
#[inline(always)]
fn reduce_accumulators(acc: [[f32; LANES]; 4]) -> f32 {
    let [a0, a1, a2, a3] = acc;
    let sum: [f32; LANES] = std::array::from_fn(|l| (a0[l] + a2[l]) + (a1[l] + a3[l]));
    hsum_hadd(&sum)
}

/// `ggml_vec_dot_f32` of `x` and `y` (same length) on ggml's AVX2 build.
#[inline(always)]
pub(crate) fn vec_dot_f32(x: &[f32], y: &[f32]) -> f32 {
    debug_assert_eq!(x.len(), y.len());
    let n = x.len().min(y.len());
    let np = n - n % STEP;
    let mut acc = [[0.0f32; LANES]; 4];
    steps(&mut acc, &x[..np], &y[..np]);
    finish(acc, &x[np..n], &y[np..n])
}

/// [`vec_dot_f32`] of the concatenations `[xa | xb]` and `[ya | yb]` (`xa`, `ya` and `xb`, `yb`
/// of equal lengths), without copying them together: llama.cpp's MLA score of a query
/// `[q_lat | q_pe]` against a cache row `[c | k_pe]` that kt keeps in two arrays.
#[inline(always)]
pub(crate) fn vec_dot_f32_concat(xa: &[f32], xb: &[f32], ya: &[f32], yb: &[f32]) -> f32 {
    debug_assert!(xa.len() == ya.len() && xb.len() == yb.len());
    let (na, n) = (xa.len(), xa.len() + xb.len());
    if na % STEP == 0 {
        // the steps of the first part end where the second starts
        let mut acc = [[0.0f32; LANES]; 4];
        steps(&mut acc, xa, ya);
        let nb = xb.len() - xb.len() % STEP;
        steps(&mut acc, &xb[..nb], &yb[..nb]);
        return finish(acc, &xb[nb..], &yb[nb..]);
    }
    let at = |i: usize| {
        if i < na {
            (xa[i], ya[i])
        } else {
            (xb[i - na], yb[i - na])
        }
    };
    let np = n - n % STEP;
    let mut acc = [[0.0f32; LANES]; 4];
    for i in 0..np {
        let (x, y) = at(i);
        let (j, l) = ((i % STEP) / LANES, i % LANES);
        acc[j][l] = fma(x, y, acc[j][l]);
    }
    let mut sum = reduce_accumulators(acc);
    for i in np..n {
        let (x, y) = at(i);
        sum = fma(x, y, sum);
    }
    sum
}

/// The 32-element steps of [`vec_dot_f32`] over `x`, `y` (lengths a multiple of 32).
#[inline(always)]
fn steps(acc: &mut [[f32; LANES]; 4], x: &[f32], y: &[f32]) {
    for (xs, ys) in x.chunks_exact(STEP).zip(y.chunks_exact(STEP)) {
        for (j, a) in acc.iter_mut().enumerate() {
            for (l, s) in a.iter_mut().enumerate() {
                let i = j * LANES + l;
                *s = fma(xs[i], ys[i], *s);
            }
        }
    }
}

/// The end of [`vec_dot_f32`]: reduce the accumulators, then add the tail one by one.
#[inline(always)]
fn finish(acc: [[f32; LANES]; 4], x_tail: &[f32], y_tail: &[f32]) -> f32 {
    let mut sum = reduce_accumulators(acc);
    for (&a, &b) in x_tail.iter().zip(y_tail) {
        // `sumf += x[i]*y[i]`, taken as contracted into an FMA (GCC's default
        // -ffp-contract=fast with -mfma); DeepSeek's lengths (288, 576) have no tail, so this
        // is the one step here not checked against llama.cpp's tensors
        sum = fma(a, b, sum);
    }
    sum
}

/// One output of llamafile's tinyBLAS F32 kernel on AVX2, `sum x_i y_i` over `x.len()`.
#[inline(always)]
pub(crate) fn sgemm_dot_f32(x: &[f32], y: &[f32]) -> f32 {
    debug_assert_eq!(x.len(), y.len());
    let mut acc = [0.0f32; LANES];
    let mut xs = x.chunks_exact(LANES);
    let mut ys = y.chunks_exact(LANES);
    for (xc, yc) in (&mut xs).zip(&mut ys) {
        for l in 0..LANES {
            acc[l] = fma(xc[l], yc[l], acc[l]);
        }
    }
    // the partial last step loads zeros past the end: fma(0, 0, s) = s on those lanes
    for (l, (&a, &b)) in xs.remainder().iter().zip(ys.remainder()).enumerate() {
        acc[l] = fma(a, b, acc[l]);
    }
    hsum_movehl(&acc)
}

/// One lane of ggml's AVX2 `ggml_v_expf` (from ARM's optimized routines: `2^n * e^b` with
/// `n = round(x / ln 2)`, a degree-5 polynomial, and scaling that avoids overflow in the
/// intermediate for `|n| > 126`). Its lanes are independent, so a lane is the function.
#[inline(always)]
pub(crate) fn v_expf(x: f32) -> f32 {
    let r = f32::from_bits(0x4b40_0000); // 0x1.8p23
    let z = fma(x, f32::from_bits(0x3fb8_aa3b), r); // 0x1.715476p+0
    let n = z - r;
    let b = fma(
        -n,
        f32::from_bits(0x35bf_be8e),             // 0x1.7f7d1cp-20
        fma(-n, f32::from_bits(0x3f31_7200), x), // 0x1.62e4p-1
    );
    let e = z.to_bits() << 23;
    let k = f32::from_bits(e.wrapping_add(1.0f32.to_bits()));
    let big = n.abs() > 126.0;
    let u = b * b;
    let j = fma(
        fma(
            fma(f32::from_bits(0x3c07_2010), b, f32::from_bits(0x3d2b_9f17)), // 0x1.0e4020p-7, 0x1.573e2ep-5
            u,
            fma(f32::from_bits(0x3e2a_af33), b, f32::from_bits(0x3eff_fedb)), // 0x1.555e66p-3, 0x1.fffdb6p-2
        ),
        u,
        f32::from_bits(0x3f7f_fff6) * b, // 0x1.ffffecp-1
    );
    if !big {
        return fma(j, k, k);
    }
    let g: u32 = if n <= 0.0 { 0x8200_0000 } else { 0 };
    let s1 = f32::from_bits(g.wrapping_add(0x7f00_0000));
    let s2 = f32::from_bits(e.wrapping_sub(g));
    if n.abs() > 192.0 {
        s1 * s1
    } else {
        fma(s2, j, s2) * s1
    }
}

/// `ggml_compute_forward_soft_max_f32` on the unmasked start of one row of attention scores:
/// `p_i = e_i * (f32)(1 / sum e)` with `e_i = expf(s_i * scale - max)`, in place. llama.cpp
/// pads the row (the KV length `n_kv`) to a multiple of 256 (`llama_kv_cache::get_n_kv`), so
/// every entry takes the vectorized `expf` and the masked rest (`-inf`, so `e = 0`) only fills
/// the last 8-lane block with zeros.
#[inline(always)]
pub(crate) fn softmax_row(row: &mut [f32], scale: f32) {
    for s in row.iter_mut() {
        *s *= scale;
    }
    let max = row.iter().fold(f32::NEG_INFINITY, |m, &s| m.max(s));
    let mut sum = 0.0f64;
    for block in row.chunks_mut(LANES) {
        let mut lanes = [0.0f32; LANES];
        for (s, lane) in block.iter_mut().zip(&mut lanes) {
            *s = v_expf(*s - max);
            *lane = *s;
        }
        sum += f64::from(hsum_movehl(&lanes));
    }
    let inv = (1.0 / sum) as f32;
    for s in row.iter_mut() {
        *s *= inv;
    }
}

/// How ggml's `MUL_MAT` of f32 operands sums each output (an f32 weight product, the
/// attention's `V^T p`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SumOrder {
    /// [`vec_dot_f32`]: one right-hand row (a decode step), or a left-hand side llamafile
    /// refuses. For `V^T p` the row is `n_kv` long, a multiple of 32 (256 in llama.cpp), so
    /// every term goes to the four accumulators.
    VecDot,
    /// llamafile's kernel, [`sgemm_dot_f32`]: a contiguous right-hand side of two rows or more.
    Sgemm,
}

impl SumOrder {
    /// The order of a `MUL_MAT` with `rows` left-hand rows and `batch` right-hand rows (a
    /// contiguous f32 right-hand side): llamafile takes it on AVX2 for `batch >= 2` and `rows`
    /// a multiple of 4 (`tinyBLAS::matmul`), else `ggml_vec_dot_f32`.
    pub(crate) fn of_mul_mat(rows: usize, batch: usize) -> Self {
        if batch >= 2 && rows.is_multiple_of(4) {
            SumOrder::Sgemm
        } else {
            SumOrder::VecDot
        }
    }

    fn accumulators(self) -> usize {
        match self {
            SumOrder::VecDot => 4,
            SumOrder::Sgemm => 1,
        }
    }

    /// Scratch floats [`weighted_rows`] needs for rows of `width`.
    pub(crate) fn scratch_len(self, width: usize) -> usize {
        self.accumulators() * LANES * width
    }
}

/// `out[i][r] = sum_s rows[s][r] * p[i][s]` for `rows` `[positions, width]` (the cached
/// latents) and `n` weight rows `p` `[n, stride]` (`stride >= positions`; softmax
/// probabilities, zero past a token's visible positions) into `out` `[n, width]`,
/// each output summed in `order` as if over a row padded with zeros. The lanes of every output
/// are kept side by side in `acc` (at least [`SumOrder::scratch_len`] per weight row) so that
/// the rows are read once, in order.
#[inline(always)]
pub(crate) fn weighted_rows(
    order: SumOrder,
    rows: &[f32],
    p: &[f32],
    stride: usize,
    acc: &mut [f32],
    out: &mut [f32],
) {
    let n = p.len() / stride.max(1);
    if n == 0 || out.len() < n {
        return;
    }
    let width = out.len() / n;
    let lanes_len = order.scratch_len(width);
    let acc = &mut acc[..n * lanes_len];
    acc.fill(0.0);
    for (s, row) in rows.chunks_exact(width).enumerate() {
        // term s goes to lane s % 8 of accumulator (s % 32) / 8 (VecDot) or of the only one
        let slot = match order {
            SumOrder::VecDot => s % STEP,
            SumOrder::Sgemm => s % LANES,
        };
        for (i, lanes) in acc.chunks_exact_mut(lanes_len).enumerate() {
            let w = p[i * stride + s];
            for (a, &v) in lanes[slot * width..(slot + 1) * width].iter_mut().zip(row) {
                *a = fma(v, w, *a);
            }
        }
    }
    for (lanes, o) in acc.chunks_exact(lanes_len).zip(out.chunks_exact_mut(width)) {
        for (r, ov) in o.iter_mut().enumerate() {
            let lane = |slot: usize| lanes[slot * width + r];
            *ov = match order {
                SumOrder::VecDot => {
                    let a: [[f32; LANES]; 4] =
                        std::array::from_fn(|j| std::array::from_fn(|l| lane(j * LANES + l)));
                    reduce_accumulators(a)
                }
                SumOrder::Sgemm => hsum_movehl(&std::array::from_fn(lane)),
            };
        }
    }
}

/// `ggml_vec_swiglu_f32`: `gate[i] = silu(gate[i]) * up[i]` on one row (call it per row: the
/// 8-lane blocks start at each row's first element).
#[inline(always)]
pub(crate) fn swiglu(gate: &mut [f32], up: &[f32]) {
    let vectorized = gate.len() - gate.len() % LANES;
    let (head, tail) = gate.split_at_mut(vectorized);
    for (g, &u) in head.iter_mut().zip(up) {
        *g = *g / (1.0 + v_expf(0.0 - *g)) * u;
    }
    for (g, &u) in tail.iter_mut().zip(&up[vectorized..]) {
        *g = *g / (1.0 + (-*g).exp()) * u;
    }
}

/// ggml's `MUL_MAT` of an f32 weight matrix `w` `[rows, cols]` and f32 activations `x`
/// `[tokens, cols]` into `out` `[tokens, rows]` (lengths checked by the caller), each output one
/// dot product in `order` ([`SumOrder::of_mul_mat`] of the whole call). F32 weights have no
/// activation quantizer, so this is the whole product (DeepSeek GGUFs keep the router
/// `ffn_gate_inp` in f32).
#[inline(always)]
pub(crate) fn matmul_f32(order: SumOrder, w: &[f32], cols: usize, x: &[f32], out: &mut [f32]) {
    let rows = w.len() / cols.max(1);
    for (xt, ot) in x.chunks_exact(cols).zip(out.chunks_exact_mut(rows.max(1))) {
        for (o, wr) in ot.iter_mut().zip(w.chunks_exact(cols)) {
            *o = match order {
                SumOrder::Sgemm => sgemm_dot_f32(wr, xt),
                SumOrder::VecDot => vec_dot_f32(wr, xt),
            };
        }
    }
}

/// ggml's rope for DeepSeek2 (`ggml_compute_forward_rope_flt`, `GGML_ROPE_TYPE_NORMAL`:
/// adjacent pairs), in its f32 steps: per position a cos/sin cache built as
/// `ggml_rope_cache_init` does (`theta` from the position, times `theta_scale` per pair;
/// YaRN's ramp mix and magnitude as `rope_yarn`), then `rotate_pairs`. GCC contracts
/// `a * b + c * d` there into `fma(a, b, c * d)` (-ffp-contract=fast), so these do too.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Rope {
    n_dims: usize,
    freq_scale: f32,
    /// 1 with YaRN, else 0.
    ext_factor: f32,
    /// cos/sin magnitude: llama.cpp's `yarn_attn_factor`, with YaRN times `1 + 0.1 ln(1 / freq_scale)`.
    mscale: f32,
    corr_dims: [f32; 2],
    theta_scale: f32,
}

/// YaRN's parameters as llama.cpp reads them from the GGUF.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Yarn {
    pub factor: f32,
    pub n_ctx_orig: usize,
    pub beta_fast: f32,
    pub beta_slow: f32,
}

impl Rope {
    /// Rope over `n_dims` (even) elements with base `freq_base`, YaRN-scaled when given;
    /// `attn_factor` is llama.cpp's `yarn_attn_factor`.
    pub(crate) fn new(n_dims: usize, freq_base: f32, yarn: Option<Yarn>, attn_factor: f32) -> Self {
        // ggml_rope_yarn_corr_dim(s) (ggml.c, built without FMA)
        let corr_dim = |n_ctx_orig: usize, n_rot: f32| {
            n_dims as f32 * (n_ctx_orig as f32 / (n_rot * 2.0 * std::f32::consts::PI)).ln()
                / (2.0 * freq_base.ln())
        };
        let (freq_scale, ext_factor, corr_dims) = match yarn {
            Some(y) => {
                let start = corr_dim(y.n_ctx_orig, y.beta_fast).floor();
                let end = corr_dim(y.n_ctx_orig, y.beta_slow).ceil();
                (
                    1.0f32 / y.factor,
                    1.0f32,
                    [start.max(0.0), end.min(n_dims as f32 - 1.0)],
                )
            }
            None => (1.0, 0.0, [0.0, 0.0]),
        };
        let mscale = if ext_factor != 0.0 {
            attn_factor * fma(0.1, (1.0f32 / freq_scale).ln(), 1.0)
        } else {
            attn_factor
        };
        Rope {
            n_dims,
            freq_scale,
            ext_factor,
            mscale,
            corr_dims,
            theta_scale: freq_base.powf(-2.0f32 / n_dims as f32),
        }
    }

    /// Elements of [`Rope::cache`].
    pub(crate) fn cache_len(&self) -> usize {
        self.n_dims
    }

    /// `cache` (`[n_dims]`: cos, sin per pair) of position `pos`.
    pub(crate) fn cache(&self, pos: usize, cache: &mut [f32]) {
        let [low, high] = self.corr_dims;
        let mut theta = pos as f32;
        for (i, cs) in cache[..self.n_dims].chunks_exact_mut(2).enumerate() {
            let interp = self.freq_scale * theta;
            let mut th = interp;
            if self.ext_factor != 0.0 {
                let y = (i as f32 - low) / 0.001f32.max(high - low);
                let ramp_mix = (1.0 - 1.0f32.min(0.0f32.max(y))) * self.ext_factor;
                th = fma(interp, 1.0 - ramp_mix, theta * ramp_mix);
            }
            cs[0] = th.cos() * self.mscale;
            cs[1] = th.sin() * self.mscale;
            theta *= self.theta_scale;
        }
    }

    /// Rotates the pairs of `x` (`[n_dims]`) with a position's `cache`.
    pub(crate) fn rotate(cache: &[f32], x: &mut [f32]) {
        for (p, cs) in x.chunks_exact_mut(2).zip(cache.chunks_exact(2)) {
            let (x0, x1, c, s) = (p[0], p[1], cs[0], cs[1]);
            p[0] = fma(x0, c, -(x1 * s));
            p[1] = fma(x0, s, x1 * c);
        }
    }
}

/// Runs `f` compiled for the widest of AVX-512 or AVX2 (each with FMA) the CPU has: the fused
/// multiply-adds above become single instructions and the lane loops vector instructions
/// (AVX-512 only widens the vectors the compiler may use; every operation stays the same f32
/// add, multiply or fma). Without them, as is. Same bits either way: only the speed differs.
pub(crate) fn with_fma<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::is_x86_feature_detected as has;
        if has!("avx512f") && has!("avx512vl") && has!("fma") {
            // SAFETY: the CPU has every feature `run_avx512` is compiled for (checked above).
            return unsafe { run_avx512(f) };
        }
        if has!("avx2") && has!("fma") {
            // SAFETY: the CPU has both features `run_avx2_fma` is compiled for (checked above).
            return unsafe { run_avx2_fma(f) };
        }
    }
    f()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
fn run_avx512<R>(f: impl FnOnce() -> R) -> R {
    f()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn run_avx2_fma<R>(f: impl FnOnce() -> R) -> R {
    f()
}

#[cfg(test)]
mod tests {
    //! Each order against exact f64 arithmetic within the error its roundings allow, and
    //! hand-made inputs whose result only ggml's grouping gives. That the whole is ggml's bits is
    //! checked against llama.cpp's own tensors and logits (docs/parity.md,
    //! `tests/forward_llamacpp_native.rs`).

    use super::*;
    use kt_kernels::util::SplitMix64;

    const U: f64 = f32::EPSILON as f64 / 2.0;
    const BIG: f32 = 16_777_216.0; // 2^24: BIG + 1 rounds back to BIG

    fn randn(rng: &mut SplitMix64, n: usize) -> Vec<f32> {
        (0..n).map(|_| rng.normal() + 0.01).collect()
    }

    #[test]
    fn dots_are_within_the_summation_error() {
        let mut rng = SplitMix64::new(11);
        for n in (1..80).chain([255, 256, 288, 577]) {
            let (x, y) = (randn(&mut rng, n), randn(&mut rng, n));
            let exact: f64 = x.iter().zip(&y).map(|(&a, &b)| a as f64 * b as f64).sum();
            let mag: f64 = x
                .iter()
                .zip(&y)
                .map(|(&a, &b)| (a as f64 * b as f64).abs())
                .sum();
            // any order of n - 1 additions (fused or not) and one final rounding
            let limit = (n as f64 + 1.0) * U * mag;
            for (what, got) in [
                ("vec_dot", vec_dot_f32(&x, &y)),
                ("sgemm", sgemm_dot_f32(&x, &y)),
            ] {
                assert!(
                    ((got as f64) - exact).abs() <= limit,
                    "{what} n={n}: {got} vs {exact}"
                );
            }
        }
    }

    #[test]
    fn dots_group_as_ggml_does() {
        let ones = [1.0f32; 64];
        // sgemm: lanes summed (l0 + l2) + (l1 + l3): BIG and -BIG cancel before the 1 is added
        let lanes = [BIG, 1.0, -BIG, 0.0, 0.0, 0.0, 0.0, 0.0];
        assert_eq!(sgemm_dot_f32(&lanes, &ones[..8]), 1.0);
        // vec_dot below 32 elements: one by one, so the 1 is lost in BIG
        assert_eq!(vec_dot_f32(&lanes, &ones[..8]), 0.0);
        // vec_dot on 32: one accumulator's lanes summed (l0 + l1) + (l2 + l3): the 1 is lost
        let mut x = [0.0f32; 32];
        x[..3].copy_from_slice(&lanes[..3]);
        assert_eq!(vec_dot_f32(&x, &ones[..32]), 0.0);
        // accumulators combined 0 + 2 and 1 + 3 first: BIG (acc 0) and -BIG (acc 2) cancel
        let mut x = [0.0f32; 32];
        (x[0], x[8], x[16]) = (BIG, 1.0, -BIG);
        assert_eq!(vec_dot_f32(&x, &ones[..32]), 1.0);
        // the sgemm partial last step joins the same lanes: element 8 goes to lane 0 with BIG
        let mut x = [0.0f32; 11];
        (x[0], x[1], x[8]) = (BIG, 1.0, -BIG);
        assert_eq!(sgemm_dot_f32(&x, &ones[..11]), 1.0);
    }

    #[test]
    fn concat_dot_is_the_dot_of_the_concatenation() {
        let mut rng = SplitMix64::new(17);
        for (na, nb) in [
            (64, 32),
            (256, 32),
            (64, 7),
            (0, 40),
            (40, 24),
            (13, 3),
            (31, 66),
        ] {
            let (x, y) = (randn(&mut rng, na + nb), randn(&mut rng, na + nb));
            let split = vec_dot_f32_concat(&x[..na], &x[na..], &y[..na], &y[na..]);
            assert_eq!(
                split.to_bits(),
                vec_dot_f32(&x, &y).to_bits(),
                "({na}, {nb})"
            );
        }
    }

    /// Distance in f32 ulps of `got` from `exact` (ulp of the exact value's binade).
    fn ulps(got: f32, exact: f64) -> f64 {
        let e = exact as f32;
        let ulp = if e == 0.0 || e.is_subnormal() {
            f32::from_bits(1) as f64
        } else {
            (f32::from_bits(e.abs().to_bits() + 1) - e.abs()) as f64
        };
        (got as f64 - exact).abs() / ulp
    }

    #[test]
    fn v_expf_is_within_its_documented_error() {
        // ARM's routine: at most 1.45358 ulp plus the final rounding's 0.5
        let mut worst = 0.0f64;
        let mut x = -103.0f32;
        while x < 88.0 {
            let err = ulps(v_expf(x), (x as f64).exp());
            assert!(err <= 1.96, "expf({x}): {} ulps", err);
            worst = worst.max(err);
            x += 0.0137;
        }
        assert!(
            worst > 0.5,
            "a sweep that never rounds differently from exp proves little"
        );
        assert_eq!(v_expf(0.0), 1.0);
        assert_eq!(v_expf(f32::NEG_INFINITY), 0.0);
        assert_eq!(v_expf(-200.0), 0.0);
        assert_eq!(v_expf(100.0), f32::INFINITY);
    }

    /// f64 softmax of the f32-rounded scaled scores.
    fn softmax_exact(x: &[f32], scale: f32) -> Vec<f64> {
        let s: Vec<f64> = x.iter().map(|&v| (v * scale) as f64).collect();
        let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let sum: f64 = s.iter().map(|v| (v - m).exp()).sum();
        s.iter().map(|v| (v - m).exp() / sum).collect()
    }

    #[test]
    fn softmax_row_is_within_its_rounding_error() {
        let mut rng = SplitMix64::new(5);
        for n in [1, 5, 8, 13, 24, 100] {
            let x: Vec<f32> = randn(&mut rng, n).iter().map(|v| 4.0 * v).collect();
            let mut row = x.clone();
            softmax_row(&mut row, 0.37);
            // expf (< 2 ulps), 1 / sum rounded to f32 (0.5 ulp plus the sum's 2 ulps), the
            // final product (0.5 ulp): under 6 ulps relative
            for (i, (&p, e)) in row.iter().zip(softmax_exact(&x, 0.37)).enumerate() {
                assert!(
                    (p as f64 - e).abs() <= 6.0 * 2.0 * U * e,
                    "n={n} p[{i}] = {p} vs {e}"
                );
            }
        }
    }

    #[test]
    fn softmax_row_sums_blocks_as_ggml_does() {
        // e = [1, t, t, ...] with t near 2^-24: ggml adds a block's lanes in f32, high half to
        // low half then (l0 + l2) + (l1 + l3), and the block sums in f64
        let tiny = -(24.0f32 * std::f32::consts::LN_2);
        let mut row = vec![tiny; 9];
        row[0] = 0.0;
        let t = v_expf(tiny);
        let block0 = ((1.0 + t) + (t + t)) + ((t + t) + (t + t));
        let sum = f64::from(block0) + f64::from(t);
        // a plain left-to-right f32 sum loses every t against the 1
        assert_ne!(block0, (1..8).fold(1.0f32, |a, _| a + t));
        softmax_row(&mut row, 1.0);
        assert_eq!(row[0], (1.0 / sum) as f32);
        assert_eq!(row[8], t * (1.0 / sum) as f32);
    }

    #[test]
    fn weighted_rows_sum_as_the_dots_do() {
        let mut rng = SplitMix64::new(21);
        let (n, width) = (45, 7);
        let rows = randn(&mut rng, n * width);
        let p: Vec<f32> = randn(&mut rng, n).iter().map(|v| v.abs()).collect();
        let mut acc = vec![f32::NAN; SumOrder::VecDot.scratch_len(width)];
        for order in [SumOrder::VecDot, SumOrder::Sgemm] {
            let mut out = vec![f32::NAN; width];
            weighted_rows(order, &rows, &p, p.len(), &mut acc, &mut out);
            for (r, &o) in out.iter().enumerate() {
                let mut column: Vec<f32> = (0..n).map(|s| rows[s * width + r]).collect();
                let mut weights = p.clone();
                let want = match order {
                    // over a row padded with zeros to a multiple of 32 (llama.cpp's n_kv)
                    SumOrder::VecDot => {
                        column.resize(64, 0.0);
                        weights.resize(64, 0.0);
                        vec_dot_f32(&column, &weights)
                    }
                    SumOrder::Sgemm => sgemm_dot_f32(&column, &weights),
                };
                assert_eq!(o.to_bits(), want.to_bits(), "{order:?} [{r}]");
            }
        }
    }

    #[test]
    fn swiglu_is_within_its_rounding_error() {
        let mut rng = SplitMix64::new(9);
        for n in [1, 7, 8, 29, 64] {
            let g: Vec<f32> = randn(&mut rng, n).iter().map(|v| 3.0 * v).collect();
            let u = randn(&mut rng, n);
            let mut out = g.clone();
            swiglu(&mut out, &u);
            for i in 0..n {
                let (gv, uv) = (g[i] as f64, u[i] as f64);
                let exact = gv / (1.0 + (-gv).exp()) * uv;
                // expf (< 2 ulps, damped by 1 + e), 1 + e, the division and the product: 4 roundings
                assert!(
                    (out[i] as f64 - exact).abs() <= 5.0 * 2.0 * U * exact.abs(),
                    "n={n} [{i}]: {} vs {exact}",
                    out[i]
                );
            }
        }
    }

    #[test]
    fn with_fma_changes_no_bit() {
        let mut rng = SplitMix64::new(3);
        let (x, y) = (randn(&mut rng, 291), randn(&mut rng, 291));
        let run = || {
            let mut row = x.clone();
            softmax_row(&mut row, 0.5);
            let mut g = x.clone();
            swiglu(&mut g, &y);
            (vec_dot_f32(&x, &y), sgemm_dot_f32(&x, &y), row, g)
        };
        let (a, b) = (run(), with_fma(run));
        assert_eq!(a.0.to_bits(), b.0.to_bits());
        assert_eq!(a.1.to_bits(), b.1.to_bits());
        assert!(a
            .2
            .iter()
            .zip(&b.2)
            .all(|(p, q)| p.to_bits() == q.to_bits()));
        assert!(a
            .3
            .iter()
            .zip(&b.3)
            .all(|(p, q)| p.to_bits() == q.to_bits()));
    }

    #[test]
    fn llama_cpp_attention_ffn_and_router_bit_for_bit() {
        // layer 0's scores, latent sums and SwiGLU, layer 1's router, from llama.cpp's own
        // inputs (kt-model/tests/data/README.md)
        for model in llama_cpp::MODELS {
            for call in ["prompt", "decode"] {
                let at = |name: &str| llama_cpp::tensor(model, &format!("{call}_{name}"));
                let (shape, qcur) = at("qcur");
                let (tokens, heads, width) = (shape[0], shape[1], shape[2]);
                let rank = 256;
                let (_, keys) = at("keys");
                let (kq_shape, kq) = at("kq");
                let visible = kq_shape[2];
                let (_, soft) = at("kq_soft_max");
                let (_, kqv) = at("kqv");
                let order = if tokens == 1 {
                    SumOrder::VecDot
                } else {
                    SumOrder::Sgemm
                };
                let mut lanes = vec![f32::NAN; order.scratch_len(rank)];
                let mut o = vec![f32::NAN; rank];
                for h in 0..heads {
                    for t in 0..tokens {
                        let q = &qcur[(t * heads + h) * width..(t * heads + h + 1) * width];
                        // prompt token t sees positions 0..=t, the decode token all 17
                        let seen = if tokens == 1 { visible } else { t + 1 };
                        let row = (h * tokens + t) * visible;
                        for s in 0..seen {
                            let k = &keys[s * width..(s + 1) * width];
                            let score =
                                vec_dot_f32_concat(&k[..rank], &k[rank..], &q[..rank], &q[rank..]);
                            assert_eq!(
                                score.to_bits(),
                                kq[row + s].to_bits(),
                                "{model} {call} kq h{h} t{t} s{s}"
                            );
                        }
                        let latent: Vec<f32> = keys
                            .chunks_exact(width)
                            .take(seen)
                            .flat_map(|k| k[..rank].to_vec())
                            .collect();
                        weighted_rows(
                            order,
                            &latent,
                            &soft[row..row + seen],
                            seen,
                            &mut lanes,
                            &mut o,
                        );
                        let want = &kqv[(h * tokens + t) * rank..(h * tokens + t + 1) * rank];
                        assert!(bits_equal(&o, want), "{model} {call} kqv h{h} t{t}");
                    }
                }
                let (_, mut gate) = at("ffn_gate");
                let (_, up) = at("ffn_up");
                let n = gate.len() / tokens;
                for (g, u) in gate.chunks_exact_mut(n).zip(up.chunks_exact(n)) {
                    swiglu(g, u);
                }
                assert!(
                    bits_equal(&gate, &at("ffn_swiglu").1),
                    "{model} {call} swiglu"
                );
                let (w_shape, w) = llama_cpp::tensor(model, "router_weights");
                let (_, x) = at("router_in");
                let mut logits = vec![f32::NAN; tokens * w_shape[0]];
                matmul_f32(
                    SumOrder::of_mul_mat(w_shape[0], tokens),
                    &w,
                    w_shape[1],
                    &x,
                    &mut logits,
                );
                assert!(
                    bits_equal(&logits, &at("router_logits").1),
                    "{model} {call} router"
                );
            }
        }
    }

    fn bits_equal(a: &[f32], b: &[f32]) -> bool {
        a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())
    }
}

/// llama.cpp's tensors of the fixtures' runs (`kt-model/tests/data`), for the tests here and in
/// `attention.rs`.
#[cfg(test)]
pub(crate) mod llama_cpp {
    /// The runs: tiny-dsv2 Q4_K_M (YaRN factor 40, `mscale_all_dim` 0.707) and tiny-dsv3 Q5_K_M
    /// (factor 4, 1).
    pub(crate) const MODELS: [&str; 2] = ["tiny_dsv2_q4_k_m", "tiny_dsv3_q5_k_m"];

    /// Shape and values of `<name>.npy` of a run.
    pub(crate) fn tensor(model: &str, name: &str) -> (Vec<usize>, Vec<f32>) {
        let path = format!(
            "{}/tests/data/ggml_ops_{model}/{name}.npy",
            env!("CARGO_MANIFEST_DIR")
        );
        let a = kt_kernels::util::npy::read_npy(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        let shape = a.shape.clone();
        (
            shape,
            a.into_f32().unwrap_or_else(|e| panic!("{path}: {e}")),
        )
    }
}
