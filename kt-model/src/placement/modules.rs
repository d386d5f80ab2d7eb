//! The modules of a DeepSeek model that rules place, and which GGUF tensors each holds.
//!
//! Names follow llama.cpp's GGUF tensor names without the `.weight` / `.bias` suffix, so a
//! rule's regex reads like the file's tensor list:
//!
//! | module                        | kind             | tensors                                   |
//! |-------------------------------|------------------|-------------------------------------------|
//! | `token_embd`                  | `embedding`      | `token_embd`                              |
//! | `blk.N.attn_norm`, `blk.N.ffn_norm` | `norm`     | itself                                    |
//! | `blk.N.attn`                  | `attention`      | `attn_q_a_norm`, `attn_kv_a_norm`         |
//! | `blk.N.attn_q`, `attn_q_a`, `attn_q_b`, `attn_kv_a_mqa`, `attn_k_b`, `attn_v_b`, `attn_kv_b`, `attn_output` | `linear` (in `blk.N.attn`) | itself |
//! | `blk.N.ffn`                   | `dense_mlp`      | (its linears)                             |
//! | `blk.N.ffn_gate`, `ffn_up`, `ffn_down` | `linear` (in `blk.N.ffn`) | itself                 |
//! | `blk.N.ffn_gate_inp`          | `gate`           | `ffn_gate_inp`, `exp_probs_b`             |
//! | `blk.N.ffn_exps`              | `routed_experts` | `ffn_{gate,up,down}_exps`                 |
//! | `blk.N.ffn_shexp`             | `shared_experts` | (its linears)                             |
//! | `blk.N.ffn_gate_shexp`, `ffn_up_shexp`, `ffn_down_shexp` | `linear` (in `blk.N.ffn_shexp`) | itself |
//! | `output_norm`                 | `norm`           | itself                                    |
//! | `output`                      | `lm_head`        | `output`                                  |
//!
//! Linears belong to a parent (attention, dense MLP, shared experts) and run on its device.

use std::borrow::Cow;
use std::fmt;

use kt_kernels::quant::QType;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::error::PlacementError;
use crate::config::DeepSeekConfig;

/// What a module is; rules match on it (`match.kind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ModuleKind {
    /// The token embedding table.
    Embedding,
    /// MLA attention of one layer (its projections are `linear` children).
    Attention,
    /// The MoE router: expert scores, group limit, top-k.
    Gate,
    /// The routed experts of one MoE layer (one fused operator).
    RoutedExperts,
    /// The shared experts of one MoE layer (a SwiGLU MLP; `linear` children).
    SharedExperts,
    /// The FFN of a dense layer (a SwiGLU MLP; `linear` children).
    DenseMlp,
    /// An RMSNorm before attention, before the FFN, or before the output head.
    Norm,
    /// The output head (hidden state to logits).
    LmHead,
    /// One projection inside an attention or MLP module.
    Linear,
}

impl ModuleKind {
    pub const ALL: [ModuleKind; 9] = [
        ModuleKind::Embedding,
        ModuleKind::Attention,
        ModuleKind::Gate,
        ModuleKind::RoutedExperts,
        ModuleKind::SharedExperts,
        ModuleKind::DenseMlp,
        ModuleKind::Norm,
        ModuleKind::LmHead,
        ModuleKind::Linear,
    ];

    /// The name rule files use (`routed_experts`, ...).
    pub fn name(self) -> Cow<'static, str> {
        match serde_json::to_value(self) {
            Ok(serde_json::Value::String(s)) => s.into(),
            _ => unreachable!("unit variants serialize to strings"),
        }
    }
}

impl fmt::Display for ModuleKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name())
    }
}

/// One tensor of a module: GGUF name, format in the file, ggml dims.
#[derive(Debug, Clone, PartialEq)]
pub struct ModuleTensor {
    pub name: String,
    pub stored: QType,
    pub dims: Vec<usize>,
}

/// A module before placement.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Module {
    pub name: String,
    pub kind: ModuleKind,
    pub layer: Option<usize>,
    /// Index of the parent module (linears only).
    pub parent: Option<usize>,
    pub tensors: Vec<ModuleTensor>,
}

/// A module's name inside its layer (after `blk.N.`) and its kind.
type LayerModule = (&'static str, ModuleKind);

/// Which module a layer tensor (name after `blk.N.`, without suffix) belongs to: its own
/// name and kind, and its parent's, if any.
fn owner(tensor: &str) -> Option<(&'static str, ModuleKind, Option<LayerModule>)> {
    use ModuleKind::*;
    let attn = Some(("attn", Attention));
    Some(match tensor {
        "attn_norm" => ("attn_norm", Norm, None),
        "ffn_norm" => ("ffn_norm", Norm, None),
        "attn_q_a_norm" | "attn_kv_a_norm" => ("attn", Attention, None),
        "attn_q" => ("attn_q", Linear, attn),
        "attn_q_a" => ("attn_q_a", Linear, attn),
        "attn_q_b" => ("attn_q_b", Linear, attn),
        "attn_kv_a_mqa" => ("attn_kv_a_mqa", Linear, attn),
        "attn_k_b" => ("attn_k_b", Linear, attn),
        "attn_v_b" => ("attn_v_b", Linear, attn),
        "attn_kv_b" => ("attn_kv_b", Linear, attn),
        "attn_output" => ("attn_output", Linear, attn),
        "ffn_gate" => ("ffn_gate", Linear, Some(("ffn", DenseMlp))),
        "ffn_up" => ("ffn_up", Linear, Some(("ffn", DenseMlp))),
        "ffn_down" => ("ffn_down", Linear, Some(("ffn", DenseMlp))),
        "ffn_gate_inp" | "exp_probs_b" => ("ffn_gate_inp", Gate, None),
        "ffn_gate_exps" | "ffn_up_exps" | "ffn_down_exps" => ("ffn_exps", RoutedExperts, None),
        "ffn_gate_shexp" => ("ffn_gate_shexp", Linear, Some(("ffn_shexp", SharedExperts))),
        "ffn_up_shexp" => ("ffn_up_shexp", Linear, Some(("ffn_shexp", SharedExperts))),
        "ffn_down_shexp" => ("ffn_down_shexp", Linear, Some(("ffn_shexp", SharedExperts))),
        _ => return None,
    })
}

/// Splits `blk.N.rest.weight` into `(N, rest)`; other names into `(None, name)`.
fn split_name(tensor: &str) -> (Option<usize>, &str) {
    let base = tensor
        .strip_suffix(".weight")
        .or_else(|| tensor.strip_suffix(".bias"))
        .unwrap_or(tensor);
    if let Some(rest) = base.strip_prefix("blk.") {
        if let Some((n, t)) = rest.split_once('.') {
            if let Ok(n) = n.parse() {
                return (Some(n), t);
            }
        }
    }
    (None, base)
}

/// The modules of a model with `config` holding `tensors` (name, stored format, dims), in
/// model order (embedding, layer by layer, final norm, head); parents come before their
/// linears. Every tensor must belong to a module, and every layer must have the modules
/// its config implies.
pub(crate) fn modules(
    config: &DeepSeekConfig,
    tensors: impl IntoIterator<Item = ModuleTensor>,
) -> Result<Vec<Module>, PlacementError> {
    let mut top: Vec<Module> = Vec::new();
    let mut per_layer: Vec<Vec<Module>> = vec![Vec::new(); config.n_layers];
    let mut tail: Vec<Module> = Vec::new();
    for t in tensors {
        let (layer, short) = split_name(&t.name);
        let unknown = || PlacementError::UnknownTensor {
            tensor: t.name.clone(),
        };
        let Some(i) = layer else {
            let (list, kind) = match short {
                "token_embd" => (&mut top, ModuleKind::Embedding),
                "output_norm" => (&mut tail, ModuleKind::Norm),
                "output" => (&mut tail, ModuleKind::LmHead),
                _ => return Err(unknown()),
            };
            add(list, short.to_owned(), kind, None, None, t);
            continue;
        };
        let (name, kind, parent) = owner(short).ok_or_else(unknown)?;
        let layer_modules = per_layer.get_mut(i).ok_or_else(unknown)?;
        let parent = parent.map(|(p, pk)| {
            let p = format!("blk.{i}.{p}");
            match layer_modules.iter().position(|m| m.name == p) {
                Some(j) => j,
                None => {
                    layer_modules.push(empty(p, pk, Some(i), None));
                    layer_modules.len() - 1
                }
            }
        });
        add(
            layer_modules,
            format!("blk.{i}.{name}"),
            kind,
            Some(i),
            parent,
            t,
        );
    }

    let mut out = top;
    for (i, layer_modules) in per_layer.into_iter().enumerate() {
        check_layer(config, i, &layer_modules)?;
        let base = out.len();
        let mut sorted = layer_modules;
        // Parents before their linears, in model order; indices rebased on the output.
        let order = layer_order(&sorted);
        let position = |j: usize| order.iter().position(|&k| k == j).expect("a permutation");
        for m in &mut sorted {
            m.parent = m.parent.map(|p| base + position(p));
        }
        let mut slots: Vec<Option<Module>> = sorted.into_iter().map(Some).collect();
        out.extend(
            order
                .iter()
                .map(|&j| slots[j].take().expect("each index once")),
        );
    }
    out.extend(tail);
    for kind in [ModuleKind::Embedding, ModuleKind::LmHead] {
        if !out.iter().any(|m| m.kind == kind) {
            return Err(PlacementError::MissingModule { layer: None, kind });
        }
    }
    Ok(out)
}

/// Model order inside a layer: attention norm, attention and its linears, FFN norm, then
/// the FFN (router, routed experts, shared experts and linears, or dense MLP and linears).
fn layer_order(ms: &[Module]) -> Vec<usize> {
    let stage = |m: &Module| -> usize {
        match m.kind {
            ModuleKind::Norm if m.name.ends_with("attn_norm") => 0,
            ModuleKind::Attention => 1,
            ModuleKind::Norm => 3,
            ModuleKind::Gate => 4,
            ModuleKind::RoutedExperts => 5,
            ModuleKind::SharedExperts | ModuleKind::DenseMlp => 6,
            _ => match m.parent.map(|p| ms[p].kind) {
                Some(ModuleKind::Attention) => 2,
                _ => 7,
            },
        }
    };
    let mut idx: Vec<usize> = (0..ms.len()).collect();
    // Stable: linears keep file order within their stage.
    idx.sort_by_key(|&j| stage(&ms[j]));
    idx
}

fn check_layer(config: &DeepSeekConfig, i: usize, ms: &[Module]) -> Result<(), PlacementError> {
    let has = |k: ModuleKind| ms.iter().any(|m| m.kind == k);
    let mut need = vec![ModuleKind::Attention];
    if config.is_moe_layer(i) {
        need.extend([ModuleKind::Gate, ModuleKind::RoutedExperts]);
        if config.n_shared_experts > 0 {
            need.push(ModuleKind::SharedExperts);
        }
    } else {
        need.push(ModuleKind::DenseMlp);
    }
    match need.into_iter().find(|&k| !has(k)) {
        Some(kind) => Err(PlacementError::MissingModule {
            layer: Some(i),
            kind,
        }),
        None => Ok(()),
    }
}

fn empty(name: String, kind: ModuleKind, layer: Option<usize>, parent: Option<usize>) -> Module {
    Module {
        name,
        kind,
        layer,
        parent,
        tensors: Vec::new(),
    }
}

/// Adds `t` to the module `name` of `list`, creating the module if needed.
fn add(
    list: &mut Vec<Module>,
    name: String,
    kind: ModuleKind,
    layer: Option<usize>,
    parent: Option<usize>,
    t: ModuleTensor,
) {
    match list.iter_mut().find(|m| m.name == name) {
        Some(m) => m.tensors.push(t),
        None => {
            let mut m = empty(name, kind, layer, parent);
            m.tensors.push(t);
            list.push(m);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kind_names_are_the_rule_files_words() {
        let names: Vec<_> = ModuleKind::ALL.iter().map(|k| k.name()).collect();
        assert_eq!(
            names,
            [
                "embedding",
                "attention",
                "gate",
                "routed_experts",
                "shared_experts",
                "dense_mlp",
                "norm",
                "lm_head",
                "linear"
            ]
        );
    }

    #[test]
    fn names_split_into_layer_and_tensor() {
        assert_eq!(
            split_name("blk.12.ffn_down_exps.weight"),
            (Some(12), "ffn_down_exps")
        );
        assert_eq!(
            split_name("blk.3.exp_probs_b.bias"),
            (Some(3), "exp_probs_b")
        );
        assert_eq!(split_name("output.weight"), (None, "output"));
        assert_eq!(split_name("blk.x.attn_q.weight"), (None, "blk.x.attn_q"));
    }
}
