//! Shared helpers of kt-kernels' integration tests: the ggml fixtures in
//! `tests/fixtures/quant` (see its manifest.json) and poisoned output buffers.
#![allow(dead_code)]

use std::path::PathBuf;

use kt_kernels::quant::QType;

pub const ROWS: usize = 32;
pub const COLS: usize = 1024;
pub const ACT_ROWS: usize = 4;

/// The root of the test fixtures: `$KT_TEST_FIXTURES` when set (for a test binary built in
/// one checkout and run from another, e.g. on the device from the repository root:
/// `KT_TEST_FIXTURES=kt-kernels/tests/fixtures`), else this crate's `tests/fixtures`.
pub fn fixtures_root() -> PathBuf {
    std::env::var_os("KT_TEST_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures"))
}

pub fn fixture_dir() -> PathBuf {
    fixtures_root().join("quant")
}

pub fn read_bytes(name: &str) -> Vec<u8> {
    let p = fixture_dir().join(name);
    std::fs::read(&p).unwrap_or_else(|e| panic!("cannot read fixture {}: {e}", p.display()))
}

pub fn read_f32(name: &str) -> Vec<f32> {
    let b = read_bytes(name);
    assert_eq!(b.len() % 4, 0, "{name}: not a whole number of f32");
    b.chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

/// `weights.f32`: [ROWS, COLS]; row m is of kind m % 8 (manifest.json: normal, small,
/// outliers, zeros, constant, uniform, tiny, spikes).
pub fn weights() -> Vec<f32> {
    read_f32("weights.f32")
}

/// `activations.f32`: [ACT_ROWS, COLS].
pub fn activations() -> Vec<f32> {
    read_f32("activations.f32")
}

/// ggml's file stem of a type (`q4_K`, `bf16`, ...), as the fixture files are named.
pub fn stem(t: QType) -> &'static str {
    t.name()
}

/// ggml's quantized bytes of `weights.f32` in type `t`.
pub fn ggml_quant(t: QType) -> Vec<u8> {
    read_bytes(&format!("{}.quant", stem(t)))
}

/// ggml's dequantization of `ggml_quant(t)`: [ROWS, COLS].
pub fn ggml_dequant(t: QType) -> Vec<f32> {
    read_f32(&format!("{}.dequant.f32", stem(t)))
}

/// ggml's vec_dot of each weight row (quantized to t) with each activation row
/// (quantized to t's vec_dot_type): [ROWS, ACT_ROWS].
pub fn ggml_dot(t: QType) -> Vec<f32> {
    read_f32(&format!("{}.dot.f32", stem(t)))
}

/// A vector of `n` NaNs: outputs are poisoned before a kernel writes them.
pub fn poisoned(n: usize) -> Vec<f32> {
    vec![f32::NAN; n]
}

/// Root mean square of a - b.
pub fn rmse(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    let s: f64 = a
        .iter()
        .zip(b)
        .map(|(&x, &y)| (x as f64 - y as f64).powi(2))
        .sum();
    (s / a.len().max(1) as f64).sqrt()
}

/// Runs `isa`'s GEMM kernel for `q` directly on one tile of `rows` weight rows (`w`) and
/// `tokens` quantized activation rows (`xq`, `act_row` bytes each) whose output lies at
/// offset `off` with row stride `ldo` (> rows) inside a NaN-poisoned buffer; checks that
/// nothing outside the tile was written and returns the tile `[tokens, rows]`.
/// The caller has checked that this CPU runs `isa`.
#[allow(clippy::too_many_arguments)]
pub fn strided_gemm_tile(
    isa: kt_kernels::cpu::Isa,
    q: QType,
    w: &[u8],
    rows: usize,
    k: usize,
    xq: &[u8],
    act_row: usize,
    tokens: usize,
    (off, ldo): (usize, usize),
) -> Vec<f32> {
    use kt_kernels::cpu::dispatch::{self, GemmTile};
    assert!(ldo > rows && w.len() == rows * q.row_bytes(k).unwrap());
    assert_eq!(xq.len(), tokens * act_row);
    let mut big = poisoned(off + tokens * ldo);
    let tile = GemmTile {
        qtype: q,
        k,
        w: w.as_ptr(),
        w_stride: q.row_bytes(k).unwrap(),
        rows,
        a: xq.as_ptr(),
        a_stride: act_row,
        tokens,
        out: big[off..].as_mut_ptr(),
        ldo,
    };
    let kernels = dispatch::table(isa).unwrap().get(q).unwrap();
    // SAFETY: the tile describes the weights (rows x row_bytes, checked above), the
    // quantized activations (tokens x act_row, checked above) and output elements inside
    // `big`; the caller checked that this CPU runs `isa`.
    unsafe { (kernels.gemm)(&tile) };
    let mut got = vec![0f32; tokens * rows];
    for (i, v) in big.iter().enumerate() {
        let inside = i >= off && (i - off) % ldo < rows && (i - off) / ldo < tokens;
        if inside {
            got[(i - off) / ldo * rows + (i - off) % ldo] = *v;
        } else {
            assert!(v.is_nan(), "{q}: element {i} outside the tile was written");
        }
    }
    got
}

/// Offsets of the f16 scale fields inside a block of `t` (random bytes there would make
/// NaN / infinite scales; every other byte of a block is a valid quant or sub-scale).
pub fn f16_fields(t: QType) -> &'static [usize] {
    match t {
        QType::Q4_0 | QType::Q5_0 | QType::Q8_0 => &[0],
        QType::Q4_1 | QType::Q5_1 => &[0, 2],
        QType::Q2_K => &[80, 82],
        QType::Q3_K => &[108],
        QType::Q4_K | QType::Q5_K => &[0, 2],
        QType::Q6_K => &[208],
        _ => &[],
    }
}

/// `rows` random weight rows of `k` elements: random bytes for every quant and packed
/// sub-block scale (so every bit pattern occurs), random normal f16 block scales; the
/// float formats get normal values.
pub fn random_weights(
    t: QType,
    rows: usize,
    k: usize,
    rng: &mut kt_kernels::util::SplitMix64,
) -> Vec<u8> {
    let n = rows * k;
    match t {
        QType::F32 => (0..n).flat_map(|_| rng.normal().to_le_bytes()).collect(),
        QType::F16 => (0..n)
            .flat_map(|_| half::f16::from_f32(rng.normal()).to_le_bytes())
            .collect(),
        QType::BF16 => (0..n)
            .flat_map(|_| half::bf16::from_f32(rng.normal()).to_le_bytes())
            .collect(),
        _ => {
            let bytes = t.row_bytes(k).unwrap() * rows;
            let mut w: Vec<u8> = (0..bytes).map(|_| rng.next_u64() as u8).collect();
            for block in w.chunks_exact_mut(t.block_bytes()) {
                for &off in f16_fields(t) {
                    let d = half::f16::from_f32(0.01 * rng.normal());
                    block[off..off + 2].copy_from_slice(&d.to_le_bytes());
                }
            }
            w
        }
    }
}

/// For weights with a minimum against Q8_1 activations (Q4_1, Q5_1): `sum |m| * |s|` over
/// the blocks of weight row `r` (`w`, `rows` rows of `cols`) and activation row `t` (`xq`),
/// per `[t * rows + r]`: the minimum times the activations' stored `s = f16(d * sum(q))`,
/// which dequantized activations do not carry (a token whose `d` rounds to 0 in f16 can
/// keep a nonzero `s`), so a tolerance relative to `sum |w| |a|` must add it. Zeros for
/// every other format.
pub fn q8_1_min_terms(q: QType, w: &[u8], xq: &[u8], rows: usize, cols: usize) -> Vec<f64> {
    let act = q.vec_dot_type();
    let act_row = act.row_bytes(cols).unwrap();
    let mut out = vec![0f64; xq.len() / act_row * rows];
    if act != QType::Q8_1 {
        return out;
    }
    // Both blocks keep their second f16 (the weights' `m`, the activations' `s`) at 2..4.
    let second = |b: &[u8]| f64::from(half::f16::from_le_bytes([b[2], b[3]]).to_f32().abs());
    let w_row = q.row_bytes(cols).unwrap();
    for (t, at) in xq.chunks(act_row).enumerate() {
        for r in 0..rows {
            out[t * rows + r] = w[r * w_row..(r + 1) * w_row]
                .chunks(q.block_bytes())
                .zip(at.chunks(act.block_bytes()))
                .map(|(wb, ab)| second(wb) * second(ab))
                .sum();
        }
    }
    out
}
