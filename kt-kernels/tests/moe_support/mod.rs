//! Shared helpers of the MoE operator tests: random layers, routings, and the references
//! the operator is compared with.
#![allow(dead_code)]

use std::ops::Range;

use kt_kernels::cpu::moe::{ExpertStack, MoeLayer};
use kt_kernels::cpu::{dispatch, Isa, GEMV_MAX_TOKENS};
use kt_kernels::quant::{self, QType};
use kt_kernels::util::SplitMix64;

/// A layer's shape and formats.
#[derive(Clone, Copy, Debug)]
pub struct Spec {
    pub hidden: usize,
    pub inter: usize,
    pub experts: usize,
    pub gate: QType,
    pub up: QType,
    pub down: QType,
}

/// A random layer and its dequantized weights (gate/up `[E, I, H]`, down `[E, H, I]`).
pub struct Built {
    pub spec: Spec,
    pub layer: MoeLayer,
    pub gate: Vec<f32>,
    pub up: Vec<f32>,
    pub down: Vec<f32>,
}

/// `rows x cols` random weights per expert, rows of varying scale and a few outliers so
/// block scales differ (never zero), quantized with the reference quantizer. Returns the
/// bytes and their dequantization.
fn random_stack(
    q: QType,
    experts: usize,
    rows: usize,
    cols: usize,
    scale: f32,
    rng: &mut SplitMix64,
) -> (Vec<u8>, Vec<f32>) {
    let mut f = vec![0f32; experts * rows * cols];
    for (r, row) in f.chunks_mut(cols).enumerate() {
        rng.fill_normal(row, scale * [1.0, 0.4, 1.7, 0.8][r % 4]);
        if r % 7 == 3 {
            row[rng.below(cols)] *= 6.0;
        }
    }
    let mut bytes = vec![0u8; experts * rows * q.row_bytes(cols).unwrap()];
    quant::quantize(q, &f, &mut bytes).unwrap();
    let mut deq = vec![0f32; f.len()];
    quant::dequantize(q, &bytes, &mut deq).unwrap();
    (bytes, deq)
}

pub fn build(spec: Spec, seed: u64) -> Built {
    let mut rng = SplitMix64::new(seed);
    let (h, i, e) = (spec.hidden, spec.inter, spec.experts);
    // Gate/up outputs of ~1.5 standard deviations (silu far from linear), down of ~1.
    let gu_scale = 1.5 / (h as f32).sqrt();
    let (gb, gate) = random_stack(spec.gate, e, i, h, gu_scale, &mut rng);
    let (ub, up) = random_stack(spec.up, e, i, h, gu_scale, &mut rng);
    let (db, down) = random_stack(spec.down, e, h, i, 1.0 / (i as f32).sqrt(), &mut rng);
    let layer = MoeLayer::new(
        ExpertStack::from_vec(spec.gate, gb, e, i, h).unwrap(),
        ExpertStack::from_vec(spec.up, ub, e, i, h).unwrap(),
        ExpertStack::from_vec(spec.down, db, e, h, i).unwrap(),
    )
    .unwrap();
    Built {
        spec,
        layer,
        gate,
        up,
        down,
    }
}

pub fn activations(tokens: usize, hidden: usize, seed: u64) -> Vec<f32> {
    let mut rng = SplitMix64::new(seed ^ 0x5EED);
    let mut x = vec![0f32; tokens * hidden];
    for (t, row) in x.chunks_mut(hidden).enumerate() {
        rng.fill_normal(row, [1.0, 0.05, 4.0][t % 3]);
    }
    x
}

/// How tokens pick experts.
#[derive(Clone, Copy, Debug)]
pub enum Routing {
    /// k distinct experts per token, uniform over all but the last expert (which no
    /// token chooses).
    Uniform,
    /// Most tokens choose experts 1 and 2 first: a few experts get most tokens.
    Skewed,
    /// Like Uniform, but every third token lists its first expert twice.
    Duplicates,
}

/// `(ids, weights)`, both `[tokens, k]`; weights positive, summing to ~1 per token.
pub fn routing(
    mode: Routing,
    tokens: usize,
    k: usize,
    experts: usize,
    seed: u64,
) -> (Vec<u32>, Vec<f32>) {
    assert!(k < experts);
    let mut rng = SplitMix64::new(seed ^ 0xF00D);
    let mut ids = Vec::with_capacity(tokens * k);
    let mut w = Vec::with_capacity(tokens * k);
    for t in 0..tokens {
        let mut chosen: Vec<u32> = Vec::new();
        if matches!(mode, Routing::Skewed) && t % 8 != 0 {
            chosen.extend([1, 2]);
        }
        while chosen.len() < k {
            let e = rng.below(experts - 1) as u32;
            if !chosen.contains(&e) {
                chosen.push(e);
            }
        }
        if matches!(mode, Routing::Duplicates) && t % 3 == 0 {
            chosen[k - 1] = chosen[0];
        }
        let raw: Vec<f32> = (0..k).map(|_| rng.uniform(0.05, 1.0)).collect();
        let sum: f32 = raw.iter().sum();
        ids.extend(chosen);
        w.extend(raw.iter().map(|v| v / sum));
    }
    (ids, w)
}

pub fn poisoned(n: usize) -> Vec<f32> {
    vec![f32::NAN; n]
}

fn silu(g: f64) -> f64 {
    g / (1.0 + (-g).exp())
}

fn norm(v: &[f64]) -> f64 {
    v.iter().map(|a| a * a).sum::<f64>().sqrt()
}

fn roundtrip(act: QType, v: &[f32]) -> Vec<f32> {
    let mut q = vec![0u8; act.row_bytes(v.len()).unwrap()];
    quant::quantize(act, v, &mut q).unwrap();
    let mut back = vec![0f32; v.len()];
    quant::dequantize(act, &q, &mut back).unwrap();
    back
}

/// Error bound of one fast-path dot against the f64 dot of the dequantized operands,
/// relative to `|w|_2 * |a|_2`. The kernels sum each block's int8 products exactly; what
/// differs is f32 rounding of the per-block scale products and of their running sum
/// (a few ulps, 6e-8 each, over at most 64 blocks here) and of the dequantized weights
/// the f64 side uses (1 ulp). 2e-6 is ~30 ulps.
pub const DOT_EPS: f64 = 2e-6;

/// The same bound for a dot of the bf16 path (`cpu/amx/dequant_gemm.rs`) over `k`
/// elements, against the f64 dot of the same bf16 operands (the expected side rounds the
/// dequantized weights and activations to bf16 exactly as the kernel does: the products of
/// two bf16 are exact in f32, so only the f32 accumulation rounds): at most `k` roundings
/// of a partial sum, each <= 2^-24 of it, so `k 2^-24 sum |w a| <= k 2^-24 |w|_2 |a|_2`
/// (Cauchy-Schwarz), in any order the hardware adds in. 1.01 covers the second-order term.
pub fn bf16_dot_eps(k: usize) -> f64 {
    1.01 * k as f64 * 2f64.powi(-24)
}

/// Whether the MoE operator on `isa` runs format `q` of an expert with `count` positions
/// through the dequantize-to-bf16 GEMM: the table has one for `q`, the expert has more
/// than `GEMV_MAX_TOKENS` positions (`compute.rs`'s `BF16_MIN_TOKENS`), and the path is
/// enabled (`dispatch::bf16_gemm_enabled`: off unless `KT_MOE_BF16=1` or a test turns it
/// on).
pub fn takes_bf16(isa: Isa, q: QType, count: usize) -> bool {
    dispatch::bf16_gemm_enabled()
        && count > GEMV_MAX_TOKENS
        && dispatch::table(isa)
            .map(|t| t.bf16_gemm(q).is_some())
            .unwrap_or(false)
}

/// Whether the MoE operator on `isa` runs any projection of `b` through the bf16 path for
/// the routing `ids`.
pub fn uses_bf16(isa: Isa, b: &Built, ids: &[u32]) -> bool {
    let s = b.spec;
    let mut counts = vec![0usize; s.experts];
    ids.iter().for_each(|&e| counts[e as usize] += 1);
    counts.iter().any(|&n| {
        [s.gate, s.up, s.down]
            .iter()
            .any(|&q| takes_bf16(isa, q, n))
    })
}

/// The largest tolerance, as a fraction of the outputs' rms, at which a check against
/// [`expected_on`] still sees what matters (a lost slot, a wrong expert, token or tile
/// moves outputs by tens of percent): 5% where every projection takes an integer path.
/// `None` where the bf16 path runs: its rigorous dot bound ([`bf16_dot_eps`],
/// `k 2^-24 sum |w a|`, grows as K^1.5 against a dot's K^0.5: 15x the integer path's at
/// K = 512, 40x at 2304) widens the band of intermediate elements whose quantization may
/// flip until the per-element check is only a sanity bound (10-25% of the rms). Those runs
/// get their power from the per-token check against the f32 reference
/// ([`Q8_BF16_PATH_TOL`]), and the bf16 arithmetic is checked tightly, against the same
/// bf16 operands, by `moe_q4k_bf16.rs`'s GEMM test.
pub fn tightness_guard(isa: Isa, b: &Built, ids: &[u32]) -> Option<f64> {
    (!uses_bf16(isa, b, ids)).then_some(0.05)
}

/// Relative L2 error per token allowed between the MoE operator and the f32 reference
/// (dequantized weights, f32 activations, f64 sums) where the bf16 path runs.
///
/// The path rounds x to Q8_K (<= 1.1% relative rms per stage: block maxima up to ~5x the
/// rms, half a step of amax / 127 spread uniformly, `moe_correctness.rs`'s
/// `Q8_STAGES_TOL`), then to bf16 (half an ulp <= 2^-9 relative, rms 2^-9 / sqrt(3) =
/// 0.11%); every weight to bf16 (0.11% rms, independent per weight, so a dot over random
/// weights moves by 0.11% rms too); the intermediate to Q8_K and bf16 again. The x stage
/// reaches the output through gate and up, the weights' rounding through gate, up and
/// down, the intermediate's once: 3 x 1.1% + 3 x 0.11% + 3 x 0.11% = 4.0% (the integer
/// path's 3.4% plus the bf16 terms), summed linearly; 4.5% leaves the integer path's room
/// for a token's few hundred outputs to fluctuate. A wrong expert, slot, tile, sub-block
/// scale or minimum moves a token by tens of percent.
pub const Q8_BF16_PATH_TOL: f64 = 0.045;

/// `v` rounded to the nearest-even bf16.
pub fn bf16_round(v: f32) -> f32 {
    half::bf16::from_f32(v).to_f32()
}

/// One bf16 ulp at `v` (2^(e - 7) for `|v|` in [2^e, 2^(e + 1))).
fn bf16_ulp(v: f64) -> f64 {
    2f64.powi(v.abs().log2().floor() as i32 - 7)
}

/// How far `v` lies from the nearest bf16 rounding boundary (a midpoint between two bf16
/// values), in absolute terms.
fn bf16_boundary_distance(v: f64) -> f64 {
    if v == 0.0 {
        return f64::INFINITY;
    }
    let ulp = bf16_ulp(v);
    let frac = (v.abs() / ulp).fract();
    (frac - 0.5).abs() * ulp
}

/// The expected output of the fast path, computed the way the fast path computes it
/// but in f64 over dequantized operands: activations go through the reference quantizer
/// of their activation type (the fast path's quantizers produce the same bytes), the
/// intermediate `silu(g) * u` is rounded to f32 and through the down format's activation
/// quantizer. Returns `(y, tol)` per output element.
///
/// `tol` is what the fast path may differ by: the dot products' rounding (`DOT_EPS`), and
/// the intermediate elements whose quantization the fast path may round the other way
/// because its `h` differs from ours by that rounding ("ambiguous": within the error
/// margin of a rounding boundary). Such an element moves the output by one quantization
/// step times its down weight. Everything else quantizes to the same value on both sides.
pub fn expected(
    b: &Built,
    slice: Range<usize>,
    x: &[f32],
    ids: &[u32],
    weights: &[f32],
) -> (Vec<f64>, Vec<f64>, f64) {
    expected_on(Isa::Scalar, b, slice, x, ids, weights)
}

/// [`expected`] for the MoE operator on `isa`: where it runs a projection of an expert
/// through the dequantize-to-bf16 GEMM ([`takes_bf16`]), that projection's weights and
/// activations are rounded to bf16 here too (after the activation quantizer, as the
/// kernel converts the quantized activations) and its dots get [`bf16_dot_eps`]; an
/// intermediate element the down projection takes in bf16 may also round to the
/// neighbouring bf16 where the margin of its quantized value reaches a bf16 boundary.
pub fn expected_on(
    isa: Isa,
    b: &Built,
    slice: Range<usize>,
    x: &[f32],
    ids: &[u32],
    weights: &[f32],
) -> (Vec<f64>, Vec<f64>, f64) {
    let s = b.spec;
    let (h, i_all) = (s.hidden, s.inter);
    let tokens = x.len() / h;
    let k = ids.len() / tokens;
    let n = slice.len();
    let (ag, au, ad) = (
        s.gate.vec_dot_type(),
        s.up.vec_dot_type(),
        s.down.vec_dot_type(),
    );
    let mut y = vec![0f64; tokens * h];
    let mut tol = vec![0f64; tokens * h];
    // |row|_2 of every gate and up row.
    let row_norms = |m: &[f32]| -> Vec<f64> {
        m.chunks(h)
            .map(|r| r.iter().map(|&a| (a as f64).powi(2)).sum::<f64>().sqrt())
            .collect()
    };
    let mut counts = vec![0usize; s.experts];
    ids.iter().for_each(|&e| counts[e as usize] += 1);
    let bf = |q: QType, e: usize| takes_bf16(isa, q, counts[e]);
    let rounded = |m: &[f32]| m.iter().map(|&v| bf16_round(v)).collect::<Vec<f32>>();
    // The bf16 copies of the weights (only where some expert takes the bf16 path).
    let any = |q: QType| (0..s.experts).any(|e| bf(q, e));
    let (gate16, up16, down16) = (
        if any(s.gate) {
            rounded(&b.gate)
        } else {
            Vec::new()
        },
        if any(s.up) {
            rounded(&b.up)
        } else {
            Vec::new()
        },
        if any(s.down) {
            rounded(&b.down)
        } else {
            Vec::new()
        },
    );
    let (gate_norms, up_norms) = (row_norms(&b.gate), row_norms(&b.up));
    let (gate16_norms, up16_norms) = (row_norms(&gate16), row_norms(&up16));
    for t in 0..tokens {
        let xt = &x[t * h..(t + 1) * h];
        let xg_q = roundtrip(ag, xt);
        let xu_q = roundtrip(au, xt);
        let to64 = |v: &[f32], bf16: bool| -> Vec<f64> {
            v.iter()
                .map(|&a| if bf16 { bf16_round(a) } else { a } as f64)
                .collect()
        };
        for sl in 0..k {
            let e = ids[t * k + sl] as usize;
            let w = weights[t * k + sl] as f64;
            let (g16, u16, d16) = (bf(s.gate, e), bf(s.up, e), bf(s.down, e));
            let (xg, xu) = (to64(&xg_q, g16), to64(&xu_q, u16));
            let (ng, nu) = (norm(&xg), norm(&xu));
            let (gate_m, gate_n, g_eps) = if g16 {
                (&gate16, &gate16_norms, bf16_dot_eps(h))
            } else {
                (&b.gate, &gate_norms, DOT_EPS)
            };
            let (up_m, up_n, u_eps) = if u16 {
                (&up16, &up16_norms, bf16_dot_eps(h))
            } else {
                (&b.up, &up_norms, DOT_EPS)
            };
            let (down_m, d_eps) = if d16 {
                (&down16, bf16_dot_eps(n))
            } else {
                (&b.down, DOT_EPS)
            };
            let mut hv = vec![0f32; n];
            let mut dh = vec![0f64; n];
            for (j, r) in slice.clone().enumerate() {
                let grow = &gate_m[(e * i_all + r) * h..(e * i_all + r + 1) * h];
                let urow = &up_m[(e * i_all + r) * h..(e * i_all + r + 1) * h];
                let g: f64 = grow.iter().zip(&xg).map(|(&a, &c)| a as f64 * c).sum();
                let u: f64 = urow.iter().zip(&xu).map(|(&a, &c)| a as f64 * c).sum();
                // What the dot's rounding bound scales with: `sum |w a|` itself on the
                // bf16 path (its bound is per term), `|w|_2 |a|_2 >= sum |w a|` otherwise.
                let abs_dot = |row: &[f32], a: &[f64]| -> f64 {
                    row.iter().zip(a).map(|(&w, &c)| (w as f64 * c).abs()).sum()
                };
                let gn = if g16 {
                    abs_dot(grow, &xg)
                } else {
                    gate_n[e * i_all + r] * ng
                };
                let un = if u16 {
                    abs_dot(urow, &xu)
                } else {
                    up_n[e * i_all + r] * nu
                };
                // d silu / dg = sigmoid(g) (1 + g (1 - sigmoid(g))), at most 1.1 in magnitude.
                let hval = silu(g) * u;
                hv[j] = hval as f32;
                dh[j] = g_eps * 1.1 * u.abs() * gn + u_eps * silu(g).abs() * un + 1e-6 * hval.abs();
            }
            let mut hq = roundtrip(ad, &hv);
            let (step, amb) = quant_steps(ad, &hv, &dh);
            let mut flip16 = vec![0f64; n];
            if d16 {
                // The kernel rounds each quantized element to bf16. Where the element is
                // certain (no flip, no scale move) both sides round the same value; where
                // it may move (by a flip's step, or by its scale's slack), the bf16
                // rounding may land one bf16 ulp further (past a boundary the margin
                // reaches): that ulp joins its step.
                for (j, v) in hq.iter_mut().enumerate() {
                    let q = *v as f64;
                    let reach = if amb[j] { step[j].0 } else { 0.0 } + step[j].1 * q.abs();
                    if reach > 0.0 && bf16_boundary_distance(q) <= reach {
                        flip16[j] = bf16_ulp(q.abs() + reach);
                    }
                    *v = bf16_round(*v);
                }
            }
            let hq_norm = hq.iter().map(|&v| (v as f64).powi(2)).sum::<f64>().sqrt();
            for r in 0..h {
                let drow =
                    &down_m[(e * h + r) * i_all + slice.start..(e * h + r) * i_all + slice.end];
                let mut dotv = 0f64;
                let mut slack = 0f64;
                let mut dn = 0f64;
                for j in 0..n {
                    let d = drow[j] as f64;
                    dotv += d * hq[j] as f64;
                    dn += d * d;
                    slack += d.abs()
                        * (if amb[j] { step[j].0 } else { 0.0 }
                            + step[j].1 * (hq[j] as f64).abs()
                            + flip16[j]);
                    if ad == QType::F32 {
                        slack += d.abs() * dh[j];
                    }
                }
                y[t * h + r] += w * dotv;
                tol[t * h + r] +=
                    w.abs() * (d_eps * dn.sqrt() * hq_norm + slack) + 1e-6 * (w * dotv).abs();
            }
        }
    }
    let rms = |v: &[f64]| (v.iter().map(|a| a * a).sum::<f64>() / v.len() as f64).sqrt();
    let tightness = rms(&tol) / rms(&y);
    (y, tol, tightness)
}

/// For each element of `h` quantized to `act`: `(step, scale_slack)`, where `step` is the
/// quantization step at that element (what a rounding flip moves it by) and
/// `scale_slack` the relative change of its block scale the margins allow; and whether
/// it is ambiguous (within its margin `dh` of a rounding boundary).
fn quant_steps(act: QType, h: &[f32], dh: &[f64]) -> (Vec<(f64, f64)>, Vec<bool>) {
    let mut steps = vec![(0f64, 0f64); h.len()];
    let mut amb = vec![false; h.len()];
    // Slack for formula details (127/amax vs 1/d, f16-rounded d): a few ulps of v <= 127.
    const FORMULA: f64 = 1e-4;
    match act {
        QType::Q8_0 | QType::Q8_1 | QType::Q8_K => {
            for (blk, (hb, db)) in h
                .chunks(act.block_elems())
                .zip(dh.chunks(act.block_elems()))
                .enumerate()
            {
                let amax = hb.iter().fold(0f64, |m, &v| m.max((v as f64).abs()));
                if amax == 0.0 {
                    continue;
                }
                let dmax = db.iter().fold(0f64, |m, &v| m.max(v));
                // One step is amax / 127; the scale moves with amax by at most dmax, and
                // where it is stored in f16 (Q8_0, Q8_1) that small move may round it to
                // the neighbouring f16 value: up to 2^-10 relative.
                let step = amax / 127.0 * (1.0 + 1e-3);
                let d = amax / 127.0;
                let dd = dmax / 127.0;
                let f16_flip = act != QType::Q8_K
                    && half::f16::from_f64(d - dd) != half::f16::from_f64(d + dd);
                let scale_slack = dmax / amax + if f16_flip { 2f64.powi(-10) } else { 0.0 };
                for (j, (&v, &d)) in hb.iter().zip(db).enumerate() {
                    let idx = blk * act.block_elems() + j;
                    let q = (v as f64).abs() * 127.0 / amax;
                    // v = |h| 127 / amax moves by dh 127 / amax, and by v dmax / amax with the scale.
                    let margin = d / (amax / 127.0) + q * dmax / amax + FORMULA;
                    steps[idx] = (step, scale_slack);
                    amb[idx] = ((q - q.floor()) - 0.5).abs() <= margin;
                }
            }
        }
        QType::BF16 | QType::F16 => {
            let mant = if act == QType::BF16 { 7 } else { 10 };
            for (j, (&v, &d)) in h.iter().zip(dh).enumerate() {
                if v == 0.0 {
                    continue;
                }
                let step = 2f64.powi((v as f64).abs().log2().floor() as i32 - mant);
                let q = (v as f64).abs() / step;
                steps[j] = (step * (1.0 + 1e-3), 0.0);
                amb[j] = ((q - q.floor()) - 0.5).abs() <= d / step + FORMULA;
            }
        }
        QType::F32 => {}
        other => panic!("{other} is not an activation type"),
    }
    (steps, amb)
}

/// Checks `got` against `(y, tol)`: every element finite and within its tolerance.
pub fn check(label: &str, got: &[f32], y: &[f64], tol: &[f64]) {
    assert_eq!(got.len(), y.len());
    let mut worst = (0f64, 0usize);
    for (idx, ((&g, &e), &t)) in got.iter().zip(y).zip(tol).enumerate() {
        assert!(
            g.is_finite(),
            "{label}: output {idx} is {g} (unwritten or overflow)"
        );
        let ratio = (g as f64 - e).abs() / t;
        if ratio > worst.0 {
            worst = (ratio, idx);
        }
    }
    let (r, idx) = worst;
    assert!(
        r <= 1.0,
        "{label}: output {idx} = {} but expected {} +- {} ({r:.2} x the tolerance)",
        got[idx],
        y[idx],
        tol[idx]
    );
}

/// Largest per-token relative L2 error of `got` against `want`.
pub fn max_token_rel_l2(got: &[f32], want: &[f32], hidden: usize) -> f64 {
    got.chunks(hidden)
        .zip(want.chunks(hidden))
        .map(|(g, w)| {
            let num: f64 = g
                .iter()
                .zip(w)
                .map(|(&a, &b)| (a as f64 - b as f64).powi(2))
                .sum();
            let den: f64 = w.iter().map(|&b| (b as f64).powi(2)).sum();
            (num / den).sqrt()
        })
        .fold(0.0, f64::max)
}
