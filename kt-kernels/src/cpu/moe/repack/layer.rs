//! [`RepackedLayer`]: one MoE layer's gate, up and down experts in repacked layouts.

use std::sync::Arc;

use super::format::RepackFormat;
use super::matrix::RepackedStack;
use crate::cpu::moe::MoeLayer;
use crate::error::{KtError, Result};

/// Gate and up `[E, I, H]` in one format (their activations are quantized once), down
/// `[E, H, I]` in any. Cheap to clone (shared).
#[derive(Clone)]
pub struct RepackedLayer {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub gate: RepackedStack,
    pub up: RepackedStack,
    pub down: RepackedStack,
}

fn shape(detail: String) -> KtError {
    KtError::Shape {
        op: "RepackedLayer",
        detail,
    }
}

impl RepackedLayer {
    pub fn new(
        gate: RepackedStack,
        up: RepackedStack,
        down: RepackedStack,
    ) -> Result<RepackedLayer> {
        let (e, i, h) = (gate.experts(), gate.rows(), gate.cols());
        if (up.experts(), up.rows(), up.cols()) != (e, i, h)
            || (down.experts(), down.rows(), down.cols()) != (e, h, i)
        {
            return Err(shape(format!(
                "gate {e}x{i}x{h}, up {}x{}x{}, down {}x{}x{}: need E x I x H, E x I x H, E x H x I",
                up.experts(),
                up.rows(),
                up.cols(),
                down.experts(),
                down.rows(),
                down.cols()
            )));
        }
        if gate.format() != up.format() {
            return Err(shape(format!(
                "gate is {} and up {}: they must share a format",
                gate.format().name(),
                up.format().name()
            )));
        }
        Ok(RepackedLayer {
            inner: Arc::new(Inner { gate, up, down }),
        })
    }

    /// Repacks a GGUF-native layer (the whole intermediate range; a sliced layer is an
    /// error): gate and up into `gate_up`, down into `down`.
    pub fn from_layer(
        layer: &MoeLayer,
        gate_up: RepackFormat,
        down: RepackFormat,
    ) -> Result<RepackedLayer> {
        if layer.intermediate_slice() != (0..layer.intermediate()) {
            return Err(shape(
                "repacking a layer restricted to an intermediate slice is not supported".into(),
            ));
        }
        RepackedLayer::new(
            RepackedStack::from_stack(layer.gate(), gate_up)?,
            RepackedStack::from_stack(layer.up(), gate_up)?,
            RepackedStack::from_stack(layer.down(), down)?,
        )
    }

    pub fn hidden(&self) -> usize {
        self.inner.gate.cols()
    }
    pub fn intermediate(&self) -> usize {
        self.inner.gate.rows()
    }
    pub fn experts(&self) -> usize {
        self.inner.gate.experts()
    }
    pub fn gate(&self) -> &RepackedStack {
        &self.inner.gate
    }
    pub fn up(&self) -> &RepackedStack {
        &self.inner.up
    }
    pub fn down(&self) -> &RepackedStack {
        &self.inner.down
    }
    /// Bytes one expert's three matrices occupy (data and scales).
    pub fn expert_bytes(&self) -> usize {
        self.inner.gate.expert_bytes()
            + self.inner.up.expert_bytes()
            + self.inner.down.expert_bytes()
    }
}
