//! The latent KV cache of one sequence. MLA caches, per layer and position, only the
//! normalized compressed kv (`kv_lora_rank` values, shared by all heads) and the rotated
//! rope key (`qk_rope_head_dim` values, also shared): 576 floats a position for V3, where
//! plain multi-head attention would keep 2 * 128 heads * 128.

use crate::config::DeepSeekConfig;
use crate::error::{ModelError, Result};

/// One layer's cached positions: `latent` `[capacity, kv_lora_rank]`, `k_pe`
/// `[capacity, rope_dim]`; rows `0..len` of the owning [`KvCache`] are valid.
#[derive(Debug, Clone)]
pub struct LayerCache {
    pub(crate) latent: Vec<f32>,
    pub(crate) k_pe: Vec<f32>,
}

/// The cache of every layer for one sequence, with room for `capacity` positions.
#[derive(Debug, Clone)]
pub struct KvCache {
    layers: Vec<LayerCache>,
    kv_lora_rank: usize,
    rope_dim: usize,
    capacity: usize,
    len: usize,
}

impl KvCache {
    /// An empty cache for `capacity` positions of a model with `config` (allocated now:
    /// `n_layers * capacity * (kv_lora_rank + rope_dim)` floats).
    pub fn new(config: &DeepSeekConfig, capacity: usize) -> Result<Self> {
        let (rank, rope) = (config.kv_lora_rank, config.qk_rope_head_dim);
        let too_big = || ModelError::CacheMismatch {
            reason: format!(
                "{capacity} positions of {} floats in {} layers overflow",
                rank + rope,
                config.n_layers
            ),
        };
        let latent_len = capacity.checked_mul(rank).ok_or_else(too_big)?;
        let k_pe_len = capacity.checked_mul(rope).ok_or_else(too_big)?;
        let layers = (0..config.n_layers)
            .map(|_| LayerCache {
                latent: vec![0.0; latent_len],
                k_pe: vec![0.0; k_pe_len],
            })
            .collect();
        Ok(KvCache {
            layers,
            kv_lora_rank: rank,
            rope_dim: rope,
            capacity,
            len: 0,
        })
    }

    /// Positions cached so far (the position of the next token).
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Forgets every position (the memory is kept for the next sequence).
    pub fn clear(&mut self) {
        self.len = 0;
    }

    /// Drops positions `len..`, e.g. to re-run a suffix.
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }

    /// Layer `layer`'s valid rows `(latent, k_pe)`.
    pub fn layer(&self, layer: usize) -> Option<(&[f32], &[f32])> {
        let l = self.layers.get(layer)?;
        Some((
            &l.latent[..self.len * self.kv_lora_rank],
            &l.k_pe[..self.len * self.rope_dim],
        ))
    }

    /// Checks that the cache was made for this geometry and has room for `new` positions.
    pub(crate) fn check_room(&self, config: &DeepSeekConfig, new: usize) -> Result<()> {
        let fits = self.layers.len() == config.n_layers
            && self.kv_lora_rank == config.kv_lora_rank
            && self.rope_dim == config.qk_rope_head_dim;
        if !fits {
            return Err(ModelError::CacheMismatch {
                reason: format!(
                    "cache has {} layers of rank {} + rope {}, the model {} layers of {} + {}",
                    self.layers.len(),
                    self.kv_lora_rank,
                    self.rope_dim,
                    config.n_layers,
                    config.kv_lora_rank,
                    config.qk_rope_head_dim
                ),
            });
        }
        if self
            .len
            .checked_add(new)
            .is_none_or(|end| end > self.capacity)
        {
            return Err(ModelError::CacheFull {
                cached: self.len,
                new,
                capacity: self.capacity,
            });
        }
        Ok(())
    }

    /// Layer `layer`'s storage, for the attention to write positions `len..len + new` and
    /// read `0..len + new`.
    pub(crate) fn layer_mut(&mut self, layer: usize) -> &mut LayerCache {
        &mut self.layers[layer]
    }

    /// Marks `new` more positions valid once every layer has written them.
    pub(crate) fn advance(&mut self, new: usize) {
        self.len += new;
    }
}
