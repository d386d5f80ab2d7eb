//! The reference ops against ground truth computed by HF transformers:
//! - `fixtures/tiny-dsv2-router`: the router arrays of the tiny-dsv2 model run (copied from
//!   the shared tiny-dsv2 fixture; config.json says what they are);
//! - `fixtures/ops-hf`: rope, routing and MLA attention cases made by
//!   `make_ops_fixtures.py` there from transformers' own DeepSeek V2/V3 modules
//!   (manifest.json lists every case and its config).

mod common;

use std::path::PathBuf;

use kt_kernels::ops::{
    mla_absorbed, mla_naive, route, sort_topk_by_expert, KvB, LatentCache, MlaDims, RopeYarn,
    RouterConfig, Scoring, TopkMethod, YarnScaling,
};
use kt_kernels::util::npy::{read_npy, NpyArray};

fn fixture(dir: &str, name: &str) -> PathBuf {
    common::fixtures_root().join(dir).join(name)
}

fn npy(dir: &str, name: &str) -> NpyArray {
    let p = fixture(dir, name);
    read_npy(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn f32s(dir: &str, name: &str, shape: &[usize]) -> Vec<f32> {
    let a = npy(dir, name);
    a.expect_shape(shape)
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    a.into_f32().unwrap()
}

fn ints(dir: &str, name: &str, shape: &[usize]) -> Vec<i64> {
    let a = npy(dir, name);
    a.expect_shape(shape)
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    a.into_i64().unwrap()
}

fn read_text(dir: &str, name: &str) -> String {
    let p = fixture(dir, name);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// Just enough JSON for the fixture manifests (the crate has no JSON dependency): the
/// balanced `{...}` value of `key` inside `text`, and a scalar's raw text.
mod json {
    /// End (exclusive) of the balanced object starting at `text[start] == '{'`, skipping strings.
    fn object_end(text: &str, start: usize) -> usize {
        let (mut depth, mut in_str, mut escaped) = (0usize, false, false);
        for (i, c) in text[start..].char_indices() {
            if in_str {
                match (escaped, c) {
                    (true, _) => escaped = false,
                    (false, '\\') => escaped = true,
                    (false, '"') => in_str = false,
                    _ => {}
                }
                continue;
            }
            match c {
                '"' => in_str = true,
                '{' => depth += 1,
                '}' => {
                    depth -= 1;
                    if depth == 0 {
                        return start + i + 1;
                    }
                }
                _ => {}
            }
        }
        panic!("unbalanced JSON object")
    }

    fn value_start<'a>(text: &'a str, key: &str) -> &'a str {
        let pat = format!("\"{key}\"");
        let at = text.find(&pat).unwrap_or_else(|| panic!("no key {key:?}"));
        let rest = text[at + pat.len()..].trim_start();
        rest.strip_prefix(':')
            .unwrap_or_else(|| panic!("{key:?} is not a key"))
            .trim_start()
    }

    /// The object value of `key` (the first occurrence), or None if it is `null`.
    pub fn object<'a>(text: &'a str, key: &str) -> Option<&'a str> {
        let v = value_start(text, key);
        if v.starts_with("null") {
            return None;
        }
        assert!(v.starts_with('{'), "{key:?} is not an object");
        let start = text.len() - v.len();
        Some(&text[start..object_end(text, start)])
    }

    /// The raw text of a scalar value (number, bool, or string without its quotes).
    pub fn scalar<'a>(text: &'a str, key: &str) -> &'a str {
        let v = value_start(text, key);
        if let Some(s) = v.strip_prefix('"') {
            return &s[..s.find('"').unwrap()];
        }
        let end = v.find([',', '}', '\n']).unwrap_or(v.len());
        v[..end].trim()
    }

    pub fn f64(text: &str, key: &str) -> f64 {
        scalar(text, key)
            .parse()
            .unwrap_or_else(|_| panic!("{key:?} is not a number"))
    }

    pub fn usize(text: &str, key: &str) -> usize {
        let v = f64(text, key);
        assert!(v >= 0.0 && v.fract() == 0.0, "{key:?} = {v}");
        v as usize
    }

    pub fn bool(text: &str, key: &str) -> bool {
        match scalar(text, key) {
            "true" => true,
            "false" => false,
            other => panic!("{key:?} = {other}"),
        }
    }
}

/// f32's unit roundoff, 2^-24: half the gap between 1 and the next f32.
const U: f64 = f32::EPSILON as f64 / 2.0;

fn router_config(obj: &str) -> RouterConfig {
    let method = match json::scalar(obj, "method") {
        "greedy" => TopkMethod::Greedy,
        "group_limited_greedy" => TopkMethod::GroupLimitedGreedy,
        "noaux_tc" => TopkMethod::NoauxTc,
        m => panic!("method {m}"),
    };
    let scoring = match json::scalar(obj, "scoring") {
        "softmax" => Scoring::Softmax,
        "sigmoid" => Scoring::Sigmoid,
        s => panic!("scoring {s}"),
    };
    RouterConfig {
        n_experts: json::usize(obj, "n_experts"),
        top_k: json::usize(obj, "top_k"),
        n_group: json::usize(obj, "n_group"),
        topk_group: json::usize(obj, "topk_group"),
        scoring,
        method,
        norm_topk_prob: json::bool(obj, "norm_topk_prob"),
        routed_scaling_factor: json::f64(obj, "routed_scaling_factor") as f32,
    }
}

/// Routes `logits`, sorts each token's experts ascending and returns (ids, weights).
fn route_sorted(cfg: &RouterConfig, logits: &[f32], bias: Option<&[f32]>) -> (Vec<i64>, Vec<f32>) {
    let t = logits.len() / cfg.n_experts;
    let mut ids = vec![u32::MAX; t * cfg.top_k];
    let mut w = vec![f32::NAN; t * cfg.top_k];
    route(cfg, logits, bias, &mut ids, &mut w).unwrap();
    sort_topk_by_expert(&mut ids, &mut w, cfg.top_k).unwrap();
    (ids.into_iter().map(i64::from).collect(), w)
}

#[test]
fn tiny_dsv2_router_matches_hf() {
    const DIR: &str = "tiny-dsv2-router";
    let conf = read_text(DIR, "config.json");
    let r = json::object(&conf, "router").unwrap();
    let method = match json::scalar(r, "topk_method") {
        "greedy" => TopkMethod::Greedy,
        "group_limited_greedy" => TopkMethod::GroupLimitedGreedy,
        m => panic!("tiny-dsv2 is a V2 model; topk_method {m}"),
    };
    assert_eq!(json::scalar(r, "scoring_func"), "softmax");
    let cfg = RouterConfig {
        n_experts: json::usize(r, "n_routed_experts"),
        top_k: json::usize(r, "num_experts_per_tok"),
        n_group: json::usize(r, "n_group"),
        topk_group: json::usize(r, "topk_group"),
        scoring: Scoring::Softmax,
        method,
        norm_topk_prob: json::bool(r, "norm_topk_prob"),
        routed_scaling_factor: json::f64(r, "routed_scaling_factor") as f32,
    };
    let (layers, positions, e, k) = (2, 24, cfg.n_experts, cfg.top_k);
    let logits = f32s(DIR, "hf_router_logits.npy", &[layers, positions, e]);
    let want_ids = ints(DIR, "hf_router_topk_idx.npy", &[layers, positions, k]);
    let want_w = f32s(DIR, "hf_router_topk_weight.npy", &[layers, positions, k]);

    let (ids, w) = route_sorted(&cfg, &logits, None);
    assert_eq!(ids, want_ids, "expert ids, [layer, position, k]");
    let mut worst = 0.0f32;
    for (i, (&a, &b)) in w.iter().zip(&want_w).enumerate() {
        assert!(
            (a - b).abs() <= 1e-6,
            "weight {i} (layer {}, pos {}): {a} vs {b}",
            i / (positions * k),
            i / k % positions
        );
        worst = worst.max((a - b).abs());
    }
    eprintln!(
        "tiny-dsv2 router: {} tokens x {k} ids equal, max |weight diff| {worst:e}",
        layers * positions
    );
}

#[test]
fn hf_routers_match() {
    const DIR: &str = "ops-hf";
    let manifest = read_text(DIR, "manifest.json");
    let gates = json::object(&manifest, "gate").unwrap();
    for case in ["v2greedy", "v2group", "v3norm", "v3nonorm"] {
        let obj = json::object(gates, case).unwrap();
        let cfg = router_config(obj);
        let t = json::usize(obj, "tokens");
        let (e, k) = (cfg.n_experts, cfg.top_k);
        let logits = f32s(DIR, &format!("gate_{case}_logits.npy"), &[t, e]);
        let bias = (cfg.method == TopkMethod::NoauxTc)
            .then(|| f32s(DIR, &format!("gate_{case}_bias.npy"), &[e]));
        let want_ids = ints(DIR, &format!("gate_{case}_ids.npy"), &[t, k]);
        let want_w = f32s(DIR, &format!("gate_{case}_weights.npy"), &[t, k]);

        let (ids, w) = route_sorted(&cfg, &logits, bias.as_deref());
        assert_eq!(ids, want_ids, "{case}: expert ids");
        // HF: an f32 softmax/sigmoid (~1-2 ulp), f32 sum and division, f32 scaling; here one
        // rounding of an f64 result. 8 ulps (of the weight) cover the chain.
        for (i, (&a, &b)) in w.iter().zip(&want_w).enumerate() {
            assert!(
                ((a - b).abs() as f64) <= 16.0 * U * b.abs() as f64,
                "{case} weight {i}: {a} vs {b}"
            );
        }
    }
}

#[test]
fn hf_rope_matches() {
    const DIR: &str = "ops-hf";
    let manifest = read_text(DIR, "manifest.json");
    let ropes = json::object(&manifest, "rope").unwrap();
    for case in ["v2yarn", "v3yarn", "uneq", "plain"] {
        let obj = json::object(ropes, case).unwrap();
        let conf = json::object(obj, "config").unwrap();
        let d = json::usize(conf, "rope_dim");
        let theta = json::f64(conf, "theta");
        let scaling = json::object(conf, "scaling").map(|s| YarnScaling {
            factor: json::f64(s, "factor"),
            original_max_pos: json::usize(s, "original_max_position_embeddings"),
            beta_fast: json::f64(s, "beta_fast"),
            beta_slow: json::f64(s, "beta_slow"),
            mscale: json::f64(s, "mscale"),
            mscale_all_dim: json::f64(s, "mscale_all_dim"),
        });
        let rope = RopeYarn::new(d, theta, scaling).unwrap();
        let heads = json::usize(obj, "n_heads");

        // inv_freq: HF forms it in f32 (a pow, two reciprocals, a product and the ramp blend,
        // each rounded): a few ulps from the f64 value rounded once.
        let hf_inv = f32s(DIR, &format!("rope_{case}_inv_freq.npy"), &[d / 2]);
        let rel_inv: Vec<f64> = rope
            .inv_freq()
            .iter()
            .zip(&hf_inv)
            .map(|(&a, &b)| ((a - b) as f64 / b as f64).abs())
            .collect();
        for (i, r) in rel_inv.iter().enumerate() {
            assert!(
                *r <= 8.0 * U,
                "{case}: inv_freq[{i}] {} vs {} ({r:e})",
                rope.inv_freq()[i],
                hf_inv[i]
            );
        }
        let hf_mag = json::f64(obj, "attention_scaling_v2");
        assert!(
            (rope.magnitude() as f64 - hf_mag).abs() <= U * hf_mag,
            "{case}: magnitude {} vs {hf_mag}",
            rope.magnitude()
        );
        assert_eq!(json::f64(obj, "attention_scaling_v3"), hf_mag);
        let qk = json::usize(obj, "qk_head_dim");
        for key in ["softmax_scale_v2", "softmax_scale_v3"] {
            let want = json::f64(obj, key);
            assert!(
                (rope.softmax_scale(qk) as f64 - want).abs() <= U * want,
                "{case}: {key} {} vs {want}",
                rope.softmax_scale(qk)
            );
        }

        let pos: Vec<usize> = ints(DIR, &format!("rope_{case}_pos.npy"), &[14])
            .into_iter()
            .map(|p| p as usize)
            .collect();
        let p = pos.len();
        let x = f32s(DIR, &format!("rope_{case}_x.npy"), &[p, heads, d]);
        let hf_v2 = f32s(DIR, &format!("rope_{case}_v2.npy"), &[p, heads, d]);
        let hf_v3 = f32s(DIR, &format!("rope_{case}_v3.npy"), &[p, heads, d]);
        // rope works in place: every element is rewritten, which the comparison checks
        let mut got = x.clone();
        rope.apply_tokens(&mut got, &pos, d, 0).unwrap();

        let m = rope.magnitude() as f64;
        let (mut worst, mut worst_small) = (0.0f64, 0.0f64);
        for (t, &position) in pos.iter().enumerate() {
            for h in 0..heads {
                let base = (t * heads + h) * d;
                for i in 0..d / 2 {
                    let (a, b) = (x[base + 2 * i] as f64, x[base + 2 * i + 1] as f64);
                    // HF's angle is fl(inv_hf * pos): off from ours by the inv_freq difference and
                    // one rounding; its f32 cos/sin and products add a few ulps of the terms.
                    let angle = position as f64 * rope.inv_freq()[i] as f64;
                    let tol = m * (a.abs() + b.abs()) * (angle * (rel_inv[i] + U) + 8.0 * U);
                    let ours = [got[base + 2 * i], got[base + 2 * i + 1]];
                    let v2 = [hf_v2[base + 2 * i], hf_v2[base + 2 * i + 1]];
                    // V3 with rope_interleave writes pair i to (i, d/2 + i)
                    let v3 = [hf_v3[base + i], hf_v3[base + d / 2 + i]];
                    for (j, &o) in ours.iter().enumerate() {
                        for (name, theirs) in [("v2", v2[j]), ("v3", v3[j])] {
                            let diff = (o as f64 - theirs as f64).abs();
                            assert!(diff <= tol, "{case} {name}: pos {position} head {h} pair {i}.{j}: {o} vs {theirs} (diff {diff:e} > {tol:e})");
                            let rel = diff / (m * (a.abs() + b.abs()));
                            worst = worst.max(rel);
                            if position <= 23 {
                                worst_small = worst_small.max(rel);
                            }
                        }
                    }
                }
            }
        }
        eprintln!("rope {case}: max |diff| / |pair| = {worst_small:e} at positions <= 23, {worst:e} up to {}", pos[p - 1]);
    }
}

/// Either attention form.
type MlaFn =
    fn(&MlaDims, &[f32], usize, &LatentCache, &KvB, f32, &mut [f32]) -> kt_kernels::Result<()>;

#[test]
fn hf_mla_attention_matches() {
    const DIR: &str = "ops-hf";
    let manifest = read_text(DIR, "manifest.json");
    let m = json::object(&manifest, "mla").unwrap();
    let d = MlaDims {
        n_heads: json::usize(m, "n_heads"),
        nope_dim: json::usize(m, "nope_dim"),
        rope_dim: json::usize(m, "rope_dim"),
        kv_lora_rank: json::usize(m, "kv_lora_rank"),
        v_dim: json::usize(m, "v_dim"),
    };
    let (start, t, l) = (
        json::usize(m, "start"),
        json::usize(m, "new_tokens"),
        json::usize(m, "cache_len"),
    );
    let scale = json::f64(m, "scale") as f32;
    let q = f32s(DIR, "mla_q.npy", &[t, d.n_heads, d.qk_head_dim()]);
    let latent = f32s(DIR, "mla_latent.npy", &[l, d.kv_lora_rank]);
    let k_pe = f32s(DIR, "mla_kpe.npy", &[l, d.rope_dim]);
    let w_uk = f32s(DIR, "mla_wuk.npy", &[d.n_heads, d.nope_dim, d.kv_lora_rank]);
    let w_uv = f32s(DIR, "mla_wuv.npy", &[d.n_heads, d.v_dim, d.kv_lora_rank]);
    let want = f32s(DIR, "mla_out.npy", &[t, d.n_heads, d.v_dim]);
    let cache = LatentCache {
        latent: &latent,
        k_pe: &k_pe,
    };
    let kv_b = KvB {
        w_uk: &w_uk,
        w_uv: &w_uv,
    };
    let mag = want.iter().fold(0.0f32, |a, &b| a.max(b.abs()));
    for (name, f) in [("naive", mla_naive as MlaFn), ("absorbed", mla_absorbed)] {
        let mut out = vec![f32::NAN; want.len()];
        f(&d, &q, start, &cache, &kv_b, scale, &mut out).unwrap();
        // HF: f32 matmuls over 24-32 terms and an f32 softmax; 1e-5 of the output scale
        let mut worst = 0.0f32;
        for (i, (&a, &b)) in out.iter().zip(&want).enumerate() {
            assert!((a - b).abs() <= 1e-5 * mag, "{name} [{i}]: {a} vs {b}");
            worst = worst.max((a - b).abs());
        }
        eprintln!("mla {name}: max |diff| {worst:e} (output scale {mag})");
    }
}
