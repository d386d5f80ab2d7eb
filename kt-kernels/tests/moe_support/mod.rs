//! Shared helpers of the MoE operator tests: random layers, routings, and the references
//! the operator is compared with.
#![allow(dead_code)]

use std::ops::Range;

use kt_kernels::cpu::moe::{ExpertStack, MoeLayer};
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

/// A prediction of a decode call routed to `ids` (of `experts`) that reorders the call's
/// experts (`MoeContext::prefetch`: the call after a prefetch takes the prediction's order):
/// the call's distinct experts ascending without its smallest, then one the call does not
/// choose. The smallest chosen expert, missed, moves from the first place to the last.
pub fn reordering_prediction(ids: &[u32], experts: usize) -> Vec<u32> {
    let mut predicted = ids.to_vec();
    predicted.sort_unstable();
    predicted.dedup();
    let missed = predicted.remove(0);
    let other = (0..experts as u32).find(|e| !ids.contains(e)).unwrap();
    predicted.push(other);
    assert!(predicted.len() >= 2 && missed < predicted[0]);
    predicted
}

/// True when `a` and `b` hold the same bits.
pub fn same_bits(a: &[f32], b: &[f32]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())
}

/// Asserts that every labelled output is `before` bit for bit (what a prefetch or a
/// reordering of the experts must leave unchanged).
pub fn assert_unchanged(before: &[f32], outputs: &[(&str, &[f32])]) {
    for (label, o) in outputs {
        assert!(same_bits(o, before), "{label} changed a result");
    }
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
    let (gate_norms, up_norms) = (row_norms(&b.gate), row_norms(&b.up));
    for t in 0..tokens {
        let xt = &x[t * h..(t + 1) * h];
        let xg: Vec<f64> = roundtrip(ag, xt).iter().map(|&v| v as f64).collect();
        let xu: Vec<f64> = roundtrip(au, xt).iter().map(|&v| v as f64).collect();
        let (ng, nu) = (norm(&xg), norm(&xu));
        for sl in 0..k {
            let e = ids[t * k + sl] as usize;
            let w = weights[t * k + sl] as f64;
            let mut hv = vec![0f32; n];
            let mut dh = vec![0f64; n];
            for (j, r) in slice.clone().enumerate() {
                let grow = &b.gate[(e * i_all + r) * h..(e * i_all + r + 1) * h];
                let urow = &b.up[(e * i_all + r) * h..(e * i_all + r + 1) * h];
                let g: f64 = grow.iter().zip(&xg).map(|(&a, &c)| a as f64 * c).sum();
                let u: f64 = urow.iter().zip(&xu).map(|(&a, &c)| a as f64 * c).sum();
                let gn = gate_norms[e * i_all + r] * ng;
                let un = up_norms[e * i_all + r] * nu;
                // d silu / dg = sigmoid(g) (1 + g (1 - sigmoid(g))), at most 1.1 in magnitude.
                let hval = silu(g) * u;
                hv[j] = hval as f32;
                dh[j] = DOT_EPS * (1.1 * u.abs() * gn + silu(g).abs() * un) + 1e-6 * hval.abs();
            }
            let hq = roundtrip(ad, &hv);
            let (step, amb) = quant_steps(ad, &hv, &dh);
            let hq_norm = hq.iter().map(|&v| (v as f64).powi(2)).sum::<f64>().sqrt();
            for r in 0..h {
                let drow =
                    &b.down[(e * h + r) * i_all + slice.start..(e * h + r) * i_all + slice.end];
                let mut dotv = 0f64;
                let mut slack = 0f64;
                let mut dn = 0f64;
                for j in 0..n {
                    let d = drow[j] as f64;
                    dotv += d * hq[j] as f64;
                    dn += d * d;
                    slack += d.abs()
                        * (if amb[j] { step[j].0 } else { 0.0 } + step[j].1 * (hq[j] as f64).abs());
                    if ad == QType::F32 {
                        slack += d.abs() * dh[j];
                    }
                }
                y[t * h + r] += w * dotv;
                tol[t * h + r] +=
                    w.abs() * (DOT_EPS * dn.sqrt() * hq_norm + slack) + 1e-6 * (w * dotv).abs();
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
