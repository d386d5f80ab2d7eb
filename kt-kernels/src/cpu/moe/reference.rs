//! The f32 reference of the MoE operator: weights dequantized with the scalar reference,
//! activations kept in f32 (no activation quantization), dot products summed in f64.
//! Plain loops, never optimized: the fast path is tested against it, and it is what an
//! f32 engine would compute.

use super::layer::MoeLayer;
use crate::error::{KtError, Result};
use crate::quant::reference as quant_ref;

/// `out[t] = sum_s weights[t,s] * down_e(silu(gate_e x[t]) * up_e x[t])`, `e = ids[t,s]`,
/// over the layer's intermediate slice. Shapes as in [`super::MoeContext::submit`].
pub fn reference(
    layer: &MoeLayer,
    x: &[f32],
    ids: &[u32],
    weights: &[f32],
    out: &mut [f32],
) -> Result<()> {
    let (h, e_count) = (layer.hidden(), layer.experts());
    let slice = layer.intermediate_slice();
    let bad = |detail: String| KtError::Shape {
        op: "moe::reference",
        detail,
    };
    if !x.len().is_multiple_of(h) || out.len() != x.len() {
        return Err(bad(format!(
            "x has {} and out {} elements; both must be tokens x {h}",
            x.len(),
            out.len()
        )));
    }
    let tokens = x.len() / h;
    if tokens == 0 {
        return Ok(());
    }
    if !ids.len().is_multiple_of(tokens) || weights.len() != ids.len() || ids.is_empty() {
        return Err(bad(format!(
            "{} ids and {} weights for {tokens} tokens",
            ids.len(),
            weights.len()
        )));
    }
    let k = ids.len() / tokens;
    if let Some(&e) = ids.iter().find(|&&e| e as usize >= e_count) {
        return Err(bad(format!("expert id {e} >= {e_count} experts")));
    }

    // Dequantize each expert the batch uses, once.
    let mut experts: Vec<Option<Expert>> = (0..e_count).map(|_| None).collect();
    for &e in ids {
        let e = e as usize;
        if experts[e].is_none() {
            experts[e] = Some(Expert::dequantize(layer, e));
        }
    }

    for t in 0..tokens {
        let xt = &x[t * h..(t + 1) * h];
        let mut acc = vec![0f64; h];
        for s in 0..k {
            let ex = experts[ids[t * k + s] as usize]
                .as_ref()
                .expect("dequantized above");
            let inter: Vec<f64> = (0..slice.len())
                .map(|i| {
                    let g = dot(&ex.gate[i * h..(i + 1) * h], xt);
                    let u = dot(&ex.up[i * h..(i + 1) * h], xt);
                    g / (1.0 + (-g).exp()) * u
                })
                .collect();
            let w = weights[t * k + s] as f64;
            for (r, a) in acc.iter_mut().enumerate() {
                let d = &ex.down[r * slice.len()..(r + 1) * slice.len()];
                *a += w * d
                    .iter()
                    .zip(&inter)
                    .map(|(&d, &v)| d as f64 * v)
                    .sum::<f64>();
            }
        }
        for (o, a) in out[t * h..(t + 1) * h].iter_mut().zip(acc) {
            *o = a as f32;
        }
    }
    Ok(())
}

fn dot(w: &[f32], x: &[f32]) -> f64 {
    w.iter().zip(x).map(|(&a, &b)| a as f64 * b as f64).sum()
}

/// One expert's matrices in f32, restricted to the layer's intermediate slice: gate and
/// up `[slice, H]`, down `[H, slice]`.
struct Expert {
    gate: Vec<f32>,
    up: Vec<f32>,
    down: Vec<f32>,
}

impl Expert {
    fn dequantize(layer: &MoeLayer, e: usize) -> Expert {
        let (h, i_all) = (layer.hidden(), layer.intermediate());
        let slice = layer.intermediate_slice();
        let rows = |stack: &super::ExpertStack, n_rows: usize, n_cols: usize| {
            let mut f = vec![0f32; n_rows * n_cols];
            quant_ref::dequantize(stack.qtype(), stack.expert(e), &mut f);
            f
        };
        let gate = rows(layer.gate(), i_all, h)[slice.start * h..slice.end * h].to_vec();
        let up = rows(layer.up(), i_all, h)[slice.start * h..slice.end * h].to_vec();
        let down_full = rows(layer.down(), h, i_all);
        let down = down_full
            .chunks_exact(i_all)
            .flat_map(|row| row[slice.clone()].iter().copied())
            .collect();
        Expert { gate, up, down }
    }
}
