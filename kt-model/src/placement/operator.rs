//! The operators a rule binds to modules, which module kinds each runs, and which weight
//! formats each accepts on each device: the contract between rule files and the engine.
//!
//! | operator    | kinds                              | on `cpu`                         | on `cuda:N`                  |
//! |-------------|------------------------------------|----------------------------------|------------------------------|
//! | `embedding` | embedding                          | `gguf`, any ggml type            | `bf16`, `f16`, `f32`         |
//! | `rms_norm`  | norm                               | `gguf`, `f32`                    | `f32`                        |
//! | `mla`       | attention                          | `gguf`, any ggml type            | `int4_g128`, `bf16`, `f16`   |
//! | `moe_gate`  | gate                               | `gguf`, `f32`, `bf16`            | `f32`, `bf16`                |
//! | `moe`       | routed_experts                     | `gguf`, any ggml type, `int8_amx`, `int4_amx` | `int4_g128`, `bf16` |
//! | `mlp`       | shared_experts, dense_mlp          | `gguf`, any ggml type            | `int4_g128`, `bf16`, `f16`   |
//! | `linear`    | linear, lm_head                    | `gguf`, any ggml type            | `int4_g128`, `bf16`, `f16`   |
//!
//! The CPU runs every GGUF block format through its matmul dispatch; the GPU has no GGUF
//! block kernels, so weights go there converted (W4A16 int4 or a float type). The `*_amx`
//! repacked layouts exist only for the CPU expert operator. An `mla` / `mlp` module's
//! format is the default of its linears.

use kt_kernels::quant::QType;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::device::Device;
use super::format::WeightFormat;
use super::modules::ModuleKind;

/// An operator of the engine (`replace.op`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Operator {
    /// Row lookup in the token embedding table.
    Embedding,
    /// RMSNorm.
    RmsNorm,
    /// DeepSeek multi-head latent attention over the latent KV cache.
    Mla,
    /// The MoE router: scores, group-limited top-k, weights.
    MoeGate,
    /// The fused routed-experts operator.
    Moe,
    /// A SwiGLU MLP (gate, up, down).
    Mlp,
    /// One matmul.
    Linear,
}

impl Operator {
    /// The operator that runs modules of `kind` (a rule without `op` binds this one).
    pub fn for_kind(kind: ModuleKind) -> Operator {
        match kind {
            ModuleKind::Embedding => Operator::Embedding,
            ModuleKind::Norm => Operator::RmsNorm,
            ModuleKind::Attention => Operator::Mla,
            ModuleKind::Gate => Operator::MoeGate,
            ModuleKind::RoutedExperts => Operator::Moe,
            ModuleKind::SharedExperts | ModuleKind::DenseMlp => Operator::Mlp,
            ModuleKind::Linear | ModuleKind::LmHead => Operator::Linear,
        }
    }

    /// Whether this operator can run a module of `kind`.
    pub fn runs(self, kind: ModuleKind) -> bool {
        Operator::for_kind(kind) == self
    }

    /// Whether this operator accepts weights in `format` on `device` (the table above).
    pub fn allows(self, device: Device, format: WeightFormat) -> bool {
        use WeightFormat::*;
        let float = |t: QType| matches!(t, QType::F32 | QType::F16 | QType::BF16);
        match (device, self) {
            (Device::Cpu, Operator::RmsNorm) => matches!(format, Gguf | Ggml(QType::F32)),
            (Device::Cpu, Operator::MoeGate) => {
                matches!(format, Gguf | Ggml(QType::F32) | Ggml(QType::BF16))
            }
            (Device::Cpu, Operator::Moe) => !matches!(format, Int4G128),
            (Device::Cpu, _) => matches!(format, Gguf | Ggml(_)),
            (Device::Cuda(_), Operator::Embedding) => matches!(format, Ggml(t) if float(t)),
            (Device::Cuda(_), Operator::RmsNorm) => format == Ggml(QType::F32),
            (Device::Cuda(_), Operator::MoeGate) => {
                matches!(format, Ggml(QType::F32) | Ggml(QType::BF16))
            }
            (Device::Cuda(_), Operator::Moe) => matches!(format, Int4G128 | Ggml(QType::BF16)),
            (Device::Cuda(_), _) => {
                matches!(format, Int4G128 | Ggml(QType::BF16) | Ggml(QType::F16))
            }
        }
    }

    /// The formats [`Operator::allows`] on `device`, for error messages.
    pub fn allowed_formats(self, device: Device) -> Vec<String> {
        WeightFormat::names()
            .into_iter()
            .filter(|n| n.parse().is_ok_and(|f| self.allows(device, f)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_has_exactly_one_operator() {
        for kind in ModuleKind::ALL {
            let ops: Vec<_> = [
                Operator::Embedding,
                Operator::RmsNorm,
                Operator::Mla,
                Operator::MoeGate,
                Operator::Moe,
                Operator::Mlp,
                Operator::Linear,
            ]
            .into_iter()
            .filter(|op| op.runs(kind))
            .collect();
            assert_eq!(ops, [Operator::for_kind(kind)], "{kind}");
        }
    }

    #[test]
    fn formats_follow_the_table() {
        let gpu = Device::Cuda(0);
        assert!(Operator::Moe.allows(Device::Cpu, WeightFormat::Int8Amx));
        assert!(!Operator::Moe.allows(gpu, WeightFormat::Int8Amx));
        assert!(!Operator::Mlp.allows(Device::Cpu, WeightFormat::Int8Amx));
        assert!(!Operator::Linear.allows(Device::Cpu, WeightFormat::Int4G128));
        assert!(Operator::Linear.allows(gpu, WeightFormat::Int4G128));
        assert!(
            !Operator::Mla.allows(gpu, WeightFormat::Gguf),
            "no GGUF blocks on the GPU"
        );
        assert!(!Operator::Mla.allows(gpu, WeightFormat::Ggml(QType::Q4_K)));
        assert_eq!(Operator::RmsNorm.allowed_formats(gpu), ["f32"]);
        assert_eq!(
            Operator::Embedding.allowed_formats(gpu),
            ["f32", "f16", "bf16"]
        );
    }
}
