//! The MoE operator over a [`RepackedLayer`] computed with its weights exactly: the same
//! activation quantization (`act.rs`, per group or per token as the operator on `isa`
//! chooses, [`act_scales`]), the scalar reference kernel (integer dots, f64 sums), `silu(g) * u` in f32 as the fast path does, slots summed in f64. Plain
//! loops, never optimized: the tight check of [`super::RepackedMoe`].

use super::act::quantize_row;
use super::kernel::{act_scales, gemm, Kernel};
use super::layer::RepackedLayer;
use crate::cpu::moe::silu::silu;
use crate::cpu::Isa;
use crate::error::{KtError, Result};

/// Shapes as in [`super::RepackedMoe::forward`]; `isa` is the operator's (it decides
/// how activations are scaled, not how this computes).
pub fn reference_exact(
    layer: &RepackedLayer,
    isa: Isa,
    x: &[f32],
    ids: &[u32],
    weights: &[f32],
    out: &mut [f32],
) -> Result<()> {
    let (h, i_dim, e_count) = (layer.hidden(), layer.intermediate(), layer.experts());
    let bad = |detail: String| KtError::Shape {
        op: "repack::reference_exact",
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
    if ids.is_empty() || !ids.len().is_multiple_of(tokens) || weights.len() != ids.len() {
        return Err(bad(format!(
            "{} ids and {} weights for {tokens} tokens",
            ids.len(),
            weights.len()
        )));
    }
    if let Some(&e) = ids.iter().find(|&&e| e as usize >= e_count) {
        return Err(bad(format!("expert id {e} >= {e_count} experts")));
    }
    let k = ids.len() / tokens;
    let (fg, fd) = (layer.gate().format(), layer.down().format());
    let mut count = vec![0usize; e_count];
    ids.iter().for_each(|&e| count[e as usize] += 1);
    let busiest = count.into_iter().max().unwrap_or(0);
    let (sg, sd) = (
        act_scales(isa, layer.gate(), busiest),
        act_scales(isa, layer.down(), busiest),
    );
    let mut xa = vec![0u8; fg.act_row_bytes(h)];
    let mut ia = vec![0u8; fd.act_row_bytes(i_dim)];
    let (mut g, mut u, mut inter, mut d) = (
        vec![0f32; i_dim],
        vec![0f32; i_dim],
        vec![0f32; i_dim],
        vec![0f32; h],
    );
    for t in 0..tokens {
        quantize_row(fg, sg, &x[t * h..(t + 1) * h], &mut xa);
        let mut acc = vec![0f64; h];
        for s in 0..k {
            let e = ids[t * k + s] as usize;
            gemm(
                Kernel::Scalar,
                layer.gate(),
                e,
                0..i_dim,
                &xa,
                sg,
                1,
                &mut g,
            )?;
            gemm(Kernel::Scalar, layer.up(), e, 0..i_dim, &xa, sg, 1, &mut u)?;
            for ((o, &g), &u) in inter.iter_mut().zip(&g).zip(&u) {
                *o = silu(g) * u;
            }
            quantize_row(fd, sd, &inter, &mut ia);
            gemm(Kernel::Scalar, layer.down(), e, 0..h, &ia, sd, 1, &mut d)?;
            let w = weights[t * k + s] as f64;
            for (a, &v) in acc.iter_mut().zip(&d) {
                *a += w * v as f64;
            }
        }
        for (o, a) in out[t * h..(t + 1) * h].iter_mut().zip(acc) {
            *o = a as f32;
        }
    }
    Ok(())
}
