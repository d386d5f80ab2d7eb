//! Row pools: a few hundred distinct quantized rows per (format, row length, scale),
//! from which every quantized tensor of a synthetic model is filled.
//!
//! Quantizing a 16B-parameter model with the reference quantizer would take hours; a
//! pool of distinct rows takes a fraction of a second on the kernel thread pool, and a
//! tensor is then only memory copies. Row `r` of a tensor is pool row
//! `hash(tensor seed, r) mod pool size`: a per-tensor pseudo-random mapping, so two
//! tensors (two experts of one stacked tensor, two layers) do not repeat each other's
//! row order, and the bytes a kernel streams are as varied as a real model's (every
//! row is a genuine quantization of fresh normal values; only the set of distinct rows
//! is small).

use std::sync::OnceLock;

use kt_kernels::cpu::ThreadPool;
use kt_kernels::quant::{self, QType};
use kt_kernels::util::SplitMix64;

use crate::error::{ModelError, Result};

/// What rows a pool holds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct PoolKey {
    pub qtype: QType,
    pub row_len: usize,
    pub std: f32,
}

impl PoolKey {
    /// A seed that depends on everything the rows depend on.
    fn seed(&self, seed: u64) -> u64 {
        let mut h = SplitMix64::new(seed ^ u64::from(self.qtype.ggml_id()));
        let a = h.next_u64() ^ self.row_len as u64;
        let mut h = SplitMix64::new(a);
        h.next_u64() ^ u64::from(self.std.to_bits())
    }
}

/// `n_rows` quantized rows of one key.
#[derive(Debug, Clone)]
pub(crate) struct RowPool {
    row_bytes: usize,
    data: Vec<u8>,
}

impl RowPool {
    pub fn n_rows(&self) -> usize {
        self.data.len() / self.row_bytes
    }

    pub fn row(&self, i: usize) -> &[u8] {
        &self.data[i * self.row_bytes..(i + 1) * self.row_bytes]
    }

    /// The pool row that row `r` of the tensor with `tensor_seed` copies.
    pub fn pick(&self, tensor_seed: u64, r: usize) -> &[u8] {
        let h = SplitMix64::new(tensor_seed ^ (r as u64).wrapping_mul(0xD1B5_4A32_D192_ED03))
            .next_u64();
        self.row(((h as u128 * self.n_rows() as u128) >> 64) as usize)
    }
}

/// Rows quantized per work item: small enough to balance, big enough to amortize.
const ROWS_PER_ITEM: usize = 8;

/// Builds one pool of `n_rows` rows per key, quantizing on `threads` with the
/// reference quantizer. Row `i` of a pool depends only on `seed`, the key and `i`.
pub(crate) fn build(
    keys: &[PoolKey],
    n_rows: usize,
    seed: u64,
    threads: &ThreadPool,
) -> Result<Vec<RowPool>> {
    let items_per_key = n_rows.div_ceil(ROWS_PER_ITEM);
    let n_items = keys.len() * items_per_key;
    let done: Vec<OnceLock<Result<Vec<u8>, kt_kernels::KtError>>> =
        (0..n_items).map(|_| OnceLock::new()).collect();
    threads.for_each(n_items, &|item, _thread| {
        let key = &keys[item / items_per_key];
        let first = (item % items_per_key) * ROWS_PER_ITEM;
        let rows = first..(first + ROWS_PER_ITEM).min(n_rows);
        let _ = done[item].set(quantize_rows(key, seed, rows));
    });

    let mut done = done.into_iter();
    keys.iter()
        .map(|&key| {
            let row_bytes = key.qtype.row_bytes(key.row_len)?;
            let mut data = Vec::with_capacity(n_rows * row_bytes);
            for cell in done.by_ref().take(items_per_key) {
                let bytes = cell
                    .into_inner()
                    .expect("for_each ran every item")
                    .map_err(|source| ModelError::TensorKernel {
                        tensor: format!(
                            "synthetic {} row pool of {}-wide rows",
                            key.qtype, key.row_len
                        ),
                        source,
                    })?;
                data.extend_from_slice(&bytes);
            }
            Ok(RowPool { row_bytes, data })
        })
        .collect()
}

fn quantize_rows(
    key: &PoolKey,
    seed: u64,
    rows: std::ops::Range<usize>,
) -> Result<Vec<u8>, kt_kernels::KtError> {
    let n = key.row_len;
    let base = key.seed(seed);
    let mut f = vec![0f32; rows.len() * n];
    for (row, out) in rows.clone().zip(f.chunks_exact_mut(n)) {
        SplitMix64::new(base ^ (row as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15))
            .fill_normal(out, key.std);
    }
    let mut q = vec![0u8; key.qtype.row_bytes(n)? * rows.len()];
    quant::quantize(key.qtype, &f, &mut q)?;
    Ok(q)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> Vec<PoolKey> {
        vec![
            PoolKey {
                qtype: QType::Q4_K,
                row_len: 512,
                std: 0.05,
            },
            PoolKey {
                qtype: QType::Q5_0,
                row_len: 128,
                std: 0.1,
            },
        ]
    }

    /// Rows are the quantization of `std * N(0, 1)`: their dequantized RMS is near
    /// `std`, no row is zero, and rows differ from each other.
    #[test]
    fn rows_are_distinct_scaled_normals() {
        let keys = keys();
        let pools = build(&keys, 20, 3, &ThreadPool::new(2).unwrap()).unwrap();
        for (p, key) in pools.iter().zip(&keys) {
            assert_eq!(p.n_rows(), 20);
            let n = key.row_len;
            let mut seen = std::collections::HashSet::new();
            for i in 0..p.n_rows() {
                let mut f = vec![f32::NAN; n];
                quant::dequantize(key.qtype, p.row(i), &mut f).unwrap();
                let rms = (f.iter().map(|v| v * v).sum::<f32>() / n as f32).sqrt();
                // the RMS of n normal draws is within ~3 / sqrt(2n) of std, plus rounding
                assert!(
                    (rms / key.std - 1.0).abs() < 0.25,
                    "{key:?} row {i}: rms {rms}"
                );
                assert!(seen.insert(p.row(i).to_vec()), "row {i} repeats");
            }
        }
    }

    /// The pool depends on the seed and the key only, not on the thread count or on
    /// which other keys are built with it.
    #[test]
    fn pools_are_deterministic() {
        let k = keys();
        let a = build(&k, 17, 9, &ThreadPool::new(1).unwrap()).unwrap();
        let b = build(&k[1..], 17, 9, &ThreadPool::new(2).unwrap()).unwrap();
        assert_eq!(a[1].data, b[0].data);
        let c = build(&k, 17, 10, &ThreadPool::new(1).unwrap()).unwrap();
        assert_ne!(a[0].data, c[0].data);
    }

    #[test]
    fn picks_spread_over_the_pool() {
        let pools = build(&keys()[..1], 64, 1, &ThreadPool::new(1).unwrap()).unwrap();
        let p = &pools[0];
        let distinct: std::collections::HashSet<_> = (0..1000).map(|r| p.pick(77, r)).collect();
        // 1000 draws from 64 rows hit all of them with overwhelming probability
        assert_eq!(distinct.len(), 64);
        let same_order = (0..64).all(|r| p.pick(77, r) == p.pick(78, r));
        assert!(!same_order, "another tensor seed gives another mapping");
    }
}
