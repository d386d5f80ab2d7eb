//! Top-p (nucleus) sampling of one token from a row of logits, with the random draw supplied
//! by the caller: the plain reference of the GPU kernel (`GpuStream::top_p_sample`), which
//! picks the same token for the same logits, settings and uniform.
//!
//! Definition (f64 arithmetic):
//! - rank the tokens by logit, highest first, equal logits by lower index (`-0.0 == 0.0`);
//! - weights `w_i = exp((l_i - max) * (1 / temperature))`, total `Z`;
//! - the nucleus is every ranked token whose preceding weights sum to less than `top_p * Z`
//!   (the smallest prefix holding at least `top_p` of the mass; always the top token);
//! - with `Zn` the nucleus's weight, the sample is the first ranked nucleus token whose
//!   running weight (itself included) exceeds `uniform * Zn`.
//!
//! Temperature 0 is greedy: the lowest index of the highest logit, whatever `top_p`.

use super::shape_err;

/// Checks the sampling settings shared by the reference and the GPU kernel: temperature
/// finite and `>= 0`, `top_p` in `(0, 1]`.
pub fn check_top_p_settings(op: &'static str, temperature: f32, top_p: f32) -> crate::Result<()> {
    if !(temperature.is_finite() && temperature >= 0.0) {
        return Err(shape_err(
            op,
            format!("temperature {temperature} is not finite and >= 0"),
        ));
    }
    if !(top_p > 0.0 && top_p <= 1.0) {
        return Err(shape_err(op, format!("top_p {top_p} is not in (0, 1]")));
    }
    Ok(())
}

/// Checks one caller-supplied uniform draw: in `[0, 1)`.
pub fn check_uniform(op: &'static str, uniform: f32) -> crate::Result<()> {
    if !(0.0..1.0).contains(&uniform) {
        return Err(shape_err(op, format!("uniform {uniform} is not in [0, 1)")));
    }
    Ok(())
}

/// The sampled token index of `logits` (see the module doc). Errors: an empty row, a NaN or
/// `+inf` logit, every logit `-inf`, or settings out of range.
pub fn top_p_sample(
    logits: &[f32],
    temperature: f32,
    top_p: f32,
    uniform: f32,
) -> crate::Result<usize> {
    const OP: &str = "top_p_sample";
    check_top_p_settings(OP, temperature, top_p)?;
    check_uniform(OP, uniform)?;
    if logits.is_empty() {
        return Err(shape_err(OP, "no logits"));
    }
    if let Some(i) = logits
        .iter()
        .position(|l| l.is_nan() || *l == f32::INFINITY)
    {
        return Err(shape_err(OP, format!("logit {i} is {}", logits[i])));
    }
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    if max == f32::NEG_INFINITY {
        return Err(shape_err(OP, "every logit is -inf"));
    }

    let mut order: Vec<usize> = (0..logits.len()).collect();
    // Finite or -inf values: partial_cmp always answers; a stable sort keeps equal logits
    // in index order.
    order.sort_by(|&a, &b| logits[b].partial_cmp(&logits[a]).expect("no NaN"));
    if temperature == 0.0 {
        return Ok(order[0]);
    }

    let inv_t = 1.0 / temperature as f64;
    let weight = |i: usize| ((logits[i] as f64 - max as f64) * inv_t).exp();
    let total: f64 = (0..logits.len()).map(weight).sum();
    let cut = top_p as f64 * total;
    let mut nucleus = Vec::new();
    let mut before = 0.0f64;
    for &i in &order {
        if before >= cut {
            break;
        }
        nucleus.push(i);
        before += weight(i);
    }
    let target = uniform as f64 * before;
    let mut run = 0.0f64;
    for &i in &nucleus {
        run += weight(i);
        if run > target {
            return Ok(i);
        }
    }
    // Unreachable in exact arithmetic (uniform < 1); rounding lands on the last token.
    Ok(*nucleus.last().expect("the nucleus holds the top token"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temperature_zero_is_the_lowest_index_of_the_max() {
        let l = [0.5, 3.0, -1.0, 3.0, 2.9];
        for u in [0.0, 0.5, 0.999] {
            assert_eq!(top_p_sample(&l, 0.0, 0.9, u).unwrap(), 1);
        }
    }

    #[test]
    fn tiny_temperature_and_tiny_p_pick_the_top_token() {
        let l = [0.5, 3.0, -1.0, 2.99, 2.9];
        for u in [0.0, 0.3, 0.999] {
            assert_eq!(top_p_sample(&l, 1e-3, 1.0, u).unwrap(), 1, "T=1e-3 u={u}");
            assert_eq!(top_p_sample(&l, 1.0, 1e-6, u).unwrap(), 1, "p=1e-6 u={u}");
        }
        // Tied at the top: a tiny p keeps the first of them only.
        let tied = [1.0, 4.0, 4.0, 0.0];
        assert_eq!(top_p_sample(&tied, 1.0, 1e-6, 0.99).unwrap(), 1);
    }

    /// Weights 1, 2, 3, 4 (logits ln k): ranked 3, 2, 1, 0 with masses .4, .3, .2, .1.
    fn ladder() -> Vec<f32> {
        (1..=4).map(|k| (k as f32).ln()).collect()
    }

    #[test]
    fn p_one_samples_the_whole_distribution() {
        let l = ladder();
        for (u, want) in [
            (0.05, 3),
            (0.39, 3),
            (0.45, 2),
            (0.69, 2),
            (0.75, 1),
            (0.95, 0),
        ] {
            assert_eq!(top_p_sample(&l, 1.0, 1.0, u).unwrap(), want, "u={u}");
        }
    }

    #[test]
    fn p_half_keeps_the_smallest_prefix_reaching_it() {
        // .4 < .5, .4 + .3 >= .5: the nucleus is tokens 3 and 2 (mass .7).
        let l = ladder();
        for (u, want) in [(0.5, 3), (0.56, 3), (0.6, 2), (0.99, 2)] {
            assert_eq!(top_p_sample(&l, 1.0, 0.5, u).unwrap(), want, "u={u}");
        }
        // A temperature of 2 flattens the weights to sqrt(k): 2, 1.73, 1.41, 1 of 6.15.
        assert_eq!(top_p_sample(&l, 2.0, 1.0, 0.99).unwrap(), 0);
        assert_eq!(top_p_sample(&l, 2.0, 1.0, 0.4).unwrap(), 2);
    }

    #[test]
    fn ties_rank_by_index() {
        // Weights 1 (tokens 1, 2, 4), e^-1 (token 3), e^-2 (token 0); Z = 3.503.
        let l = [0.0, 2.0, 2.0, 1.0, 2.0];
        for (u, want) in [(0.1, 1), (0.4, 2), (0.7, 4), (0.9, 3), (0.99, 0)] {
            assert_eq!(top_p_sample(&l, 1.0, 1.0, u).unwrap(), want, "u={u}");
        }
        // p = 0.5: 1 < 1.75, 2 >= 1.75: the nucleus is tokens 1 and 2.
        assert_eq!(top_p_sample(&l, 1.0, 0.5, 0.99).unwrap(), 2);
        // -0.0 and 0.0 are one logit: index order decides.
        assert_eq!(top_p_sample(&[0.0, -0.0], 1.0, 1.0, 0.4).unwrap(), 0);
        assert_eq!(top_p_sample(&[-0.0, 0.0], 1.0, 1.0, 0.6).unwrap(), 1);
    }

    #[test]
    fn minus_infinity_is_never_sampled() {
        let l = [f32::NEG_INFINITY, 1.0, f32::NEG_INFINITY];
        for u in [0.0, 0.5, 0.999] {
            assert_eq!(top_p_sample(&l, 1.0, 1.0, u).unwrap(), 1);
        }
    }

    #[test]
    fn bad_input_is_an_error() {
        let ok = [1.0f32, 2.0];
        assert!(top_p_sample(&[], 1.0, 1.0, 0.5).is_err());
        assert!(top_p_sample(&[1.0, f32::NAN], 1.0, 1.0, 0.5).is_err());
        assert!(top_p_sample(&[1.0, f32::INFINITY], 1.0, 1.0, 0.5).is_err());
        assert!(top_p_sample(&[f32::NEG_INFINITY; 3], 1.0, 1.0, 0.5).is_err());
        assert!(top_p_sample(&ok, -1.0, 1.0, 0.5).is_err());
        assert!(top_p_sample(&ok, f32::NAN, 1.0, 0.5).is_err());
        assert!(top_p_sample(&ok, 1.0, 0.0, 0.5).is_err());
        assert!(top_p_sample(&ok, 1.0, 1.5, 0.5).is_err());
        assert!(top_p_sample(&ok, 1.0, 1.0, 1.0).is_err());
        assert!(top_p_sample(&ok, 1.0, 1.0, -0.1).is_err());
    }
}
