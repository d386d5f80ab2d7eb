//! Placing a model's modules with a rule set: the first matching rule places a module. A
//! linear's parent's rule counts as a match of the linear: a rule that matches the linear
//! and comes before it places the linear (on the parent's device: anything else is an
//! error); otherwise the linear runs with its parent (its device, format and options).
//! Then the memory each device needs.

use std::collections::BTreeMap;

use super::device::Device;
use super::error::{PlacementError, Result};
use super::format::WeightFormat;
use super::modules::{self, Module, ModuleKind, ModuleTensor};
use super::operator::Operator;
use super::rules::{check_format, name, Options, RuleSet};
use crate::config::DeepSeekConfig;
use crate::gguf::Gguf;
use crate::synthetic::Preset;

/// KV cache bytes per element on a GPU (bf16) and on the CPU (kt's CPU cache is f32).
const KV_BYTES_GPU: u64 = 2;
const KV_BYTES_CPU: u64 = 4;
/// Device slots of a GPU prefill's staged layers (double buffering).
const PREFILL_SLOTS: u64 = 2;

/// The experts of a module's stacked expert tensors (ggml dims `[k, n, experts]`).
fn stacked_experts(tensors: &[PlacedTensor]) -> Option<usize> {
    tensors
        .iter()
        .filter_map(|t| (t.dims.len() == 3).then_some(t.dims[2]))
        .max()
        .filter(|&e| e > 0)
}

/// One tensor of a placed module and its bytes in the module's format.
#[derive(Debug, Clone, PartialEq)]
pub struct PlacedTensor {
    pub name: String,
    /// Its format in the GGUF file (or the synthetic Q4_K_M mix).
    pub stored: kt_kernels::quant::QType,
    /// ggml dims, `dims[0]` the row length.
    pub dims: Vec<usize>,
    pub bytes: u64,
}

/// Where one module runs, with which operator and weights.
#[derive(Debug, Clone, PartialEq)]
pub struct ModulePlacement {
    /// llama.cpp-style module name (see [`super::modules`]): `blk.3.ffn_exps`.
    pub name: String,
    pub kind: ModuleKind,
    pub layer: Option<usize>,
    /// Index in [`Placement::modules`] of the module a linear belongs to.
    pub parent: Option<usize>,
    pub op: Operator,
    pub device: Device,
    pub format: WeightFormat,
    pub options: Options,
    /// Index of the rule that placed it; `None` for a linear placed with its parent.
    pub rule: Option<usize>,
    /// The tensors it holds itself (a parent's linears hold theirs).
    pub tensors: Vec<PlacedTensor>,
    /// Bytes of `tensors` on `device`.
    pub bytes: u64,
    /// Bytes of `tensors` in the prefill format, when prefill runs on another device.
    pub prefill_bytes: Option<u64>,
}

/// A whole model placed.
#[derive(Debug, Clone)]
pub struct Placement {
    origin: String,
    devices: Vec<Device>,
    modules: Vec<ModulePlacement>,
    /// KV cache elements per position and attention layer (latent + rope key).
    kv_elems: u64,
    /// Experts each token chooses (the places a single-token step stages its resident
    /// choices into, with `decode_resident`).
    top_k: u64,
}

/// What one device holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceMemory {
    pub device: Device,
    pub weights: u64,
    pub kv_cache: u64,
    /// Two slots of the largest module staged here for prefill: the hybrid executor copies
    /// the next layer into one while the other computes; with `decode_resident`, also the
    /// `top_k` expert places a single-token step stages its resident choices into.
    pub prefill_staging: u64,
    /// Experts kept here for good by `prefill_resident` (the first ones of each module).
    pub prefill_resident: u64,
    /// Activations and workspace set aside (GPUs only).
    pub reserve: u64,
}

impl DeviceMemory {
    pub fn total(&self) -> u64 {
        self.weights + self.kv_cache + self.prefill_staging + self.prefill_resident + self.reserve
    }
}

impl RuleSet {
    /// Places a model of `config` whose tensors are a Q4_K_M file's (llama.cpp's mix, as
    /// kt's synthetic presets hold them): what `gguf`-format bytes are counted in.
    pub fn place(&self, config: &DeepSeekConfig) -> Result<Placement> {
        let tensors = Preset::q4_k_m_tensors(config)
            .into_iter()
            .map(|(name, stored, dims)| ModuleTensor { name, stored, dims });
        self.place_tensors(config, tensors)
    }

    /// Places the model of a GGUF file: its config and its tensors as stored.
    pub fn place_gguf(&self, gguf: &Gguf) -> Result<Placement> {
        let config = DeepSeekConfig::from_gguf(gguf)?;
        let tensors = gguf.tensor_infos().iter().map(|t| ModuleTensor {
            name: t.name().to_owned(),
            stored: t.qtype(),
            dims: t.dims().to_vec(),
        });
        self.place_tensors(&config, tensors)
    }

    /// Places a model of `config` holding `tensors`.
    pub fn place_tensors(
        &self,
        config: &DeepSeekConfig,
        tensors: impl IntoIterator<Item = ModuleTensor>,
    ) -> Result<Placement> {
        let mods = modules::modules(config, tensors)?;
        let mut placed: Vec<ModulePlacement> = Vec::with_capacity(mods.len());
        for m in mods {
            // Parents come first: `placed[p]` exists. A linear's parent's rule counts as a
            // match of the linear, so only a rule before it overrides the parent's choice.
            let parent = m.parent.map(|p| &placed[p]);
            let p = match (self.first_match(&m), parent) {
                (Some(i), Some(par)) if par.rule.is_some_and(|rp| i >= rp) => {
                    self.inherit(par, m)?
                }
                (Some(i), _) => self.apply(i, m)?,
                (None, Some(par)) => self.inherit(par, m)?,
                (None, None) => {
                    return Err(PlacementError::Unmatched {
                        origin: self.origin().to_owned(),
                        module: m.name,
                        kind: m.kind,
                        layer: m.layer,
                    })
                }
            };
            if let (Some(parent), Some(rule)) = (p.parent, p.rule) {
                let parent = &placed[parent];
                if parent.device != p.device {
                    return Err(self.bad_match(
                        rule,
                        &p.name,
                        p.kind,
                        format!(
                            "it belongs to {} on {}; a linear runs on its parent's device",
                            parent.name, parent.device
                        ),
                    ));
                }
            }
            placed.push(p);
        }
        Ok(Placement {
            origin: self.origin().to_owned(),
            devices: self.devices().to_vec(),
            modules: placed,
            kv_elems: (config.kv_lora_rank + config.qk_rope_head_dim) as u64,
            top_k: config.experts_per_tok as u64,
        })
    }

    fn first_match(&self, m: &Module) -> Option<usize> {
        self.rules().iter().position(|r| {
            let c = &r.matches;
            c.kind.is_none_or(|k| k == m.kind)
                && c.name.as_ref().is_none_or(|re| re.is_match(&m.name))
                && c.layers
                    .is_none_or(|range| m.layer.is_some_and(|l| range.contains(l)))
        })
    }

    fn bad_match(
        &self,
        rule: usize,
        module: &str,
        kind: ModuleKind,
        reason: String,
    ) -> PlacementError {
        PlacementError::BadMatch {
            origin: self.origin().to_owned(),
            rule,
            line: self.line(rule),
            module: module.to_owned(),
            kind,
            reason,
        }
    }

    /// Module `m` placed by rule `i`.
    fn apply(&self, i: usize, m: Module) -> Result<ModulePlacement> {
        let r = &self.rules()[i].replace;
        let op = r.op.unwrap_or(Operator::for_kind(m.kind));
        if !op.runs(m.kind) {
            return Err(self.bad_match(
                i,
                &m.name,
                m.kind,
                format!("operator {} does not run {} modules", name(op), m.kind),
            ));
        }
        let to_match = |e: PlacementError| match e {
            PlacementError::Rule { reason, .. } => self.bad_match(i, &m.name, m.kind, reason),
            e => e,
        };
        check_format(self, i, "replace.format", op, r.device, r.format).map_err(to_match)?;
        let prefill_format = r
            .options
            .prefill_device
            .map(|d| (d, r.options.prefill_format.unwrap_or(r.format)));
        if let Some((d, f)) = prefill_format {
            check_format(self, i, "replace.options.prefill_format", op, d, f).map_err(to_match)?;
        }
        let sized = |format: WeightFormat| {
            tensors_in(&m, format).map_err(|reason| self.bad_match(i, &m.name, m.kind, reason))
        };
        let (tensors, bytes) = sized(r.format)?;
        let expert_options = r.options.prefill_resident.is_some()
            || r.options.prefill_cpu_share.is_some()
            || r.options.decode_resident.is_some()
            || r.options.defer_experts.is_some();
        if expert_options && m.kind != ModuleKind::RoutedExperts {
            return Err(self.bad_match(
                i,
                &m.name,
                m.kind,
                format!(
                    "prefill_resident, prefill_cpu_share, decode_resident and defer_experts: only routed experts take them, not {} modules",
                    m.kind
                ),
            ));
        }
        if let Some(n) = r.options.prefill_resident {
            let reason = match stacked_experts(&tensors) {
                Some(e) if n > e => Some(format!(
                    "prefill_resident {n} exceeds the module's {e} experts"
                )),
                None => Some("prefill_resident: the module holds no stacked experts".into()),
                _ => None,
            };
            if let Some(reason) = reason {
                return Err(self.bad_match(i, &m.name, m.kind, reason));
            }
        }
        let prefill_bytes = match prefill_format {
            Some((d, f)) if d != r.device => Some(sized(f)?.1),
            _ => None,
        };
        Ok(ModulePlacement {
            name: m.name,
            kind: m.kind,
            layer: m.layer,
            parent: m.parent,
            op,
            device: r.device,
            format: r.format,
            options: r.options.clone(),
            rule: Some(i),
            tensors,
            bytes,
            prefill_bytes,
        })
    }

    /// A linear run with its parent: the parent's device, format and options.
    fn inherit(&self, parent: &ModulePlacement, m: Module) -> Result<ModulePlacement> {
        let bad = |reason: String| PlacementError::BadMatch {
            // The parent's rule chose the format: name it.
            origin: self.origin().to_owned(),
            rule: parent.rule.unwrap_or_default(),
            line: parent.rule.and_then(|r| self.line(r)),
            module: m.name.clone(),
            kind: m.kind,
            reason: format!("placed with its parent {}: {reason}", parent.name),
        };
        if !Operator::Linear.allows(parent.device, parent.format) {
            return Err(bad(format!(
                "operator linear on {} does not take format {}",
                parent.device, parent.format
            )));
        }
        let (tensors, bytes) = tensors_in(&m, parent.format).map_err(bad)?;
        let prefill_bytes = match parent.options.prefill_device {
            Some(d) if d != parent.device => {
                let f = parent.options.prefill_format.unwrap_or(parent.format);
                Some(tensors_in(&m, f).map_err(bad)?.1)
            }
            _ => None,
        };
        Ok(ModulePlacement {
            name: m.name,
            kind: m.kind,
            layer: m.layer,
            parent: m.parent,
            op: Operator::Linear,
            device: parent.device,
            format: parent.format,
            options: parent.options.clone(),
            rule: None,
            tensors,
            bytes,
            prefill_bytes,
        })
    }
}

/// `m`'s tensors sized in `format`, and their sum.
fn tensors_in(
    m: &Module,
    format: WeightFormat,
) -> std::result::Result<(Vec<PlacedTensor>, u64), String> {
    let mut total = 0u64;
    let mut out = Vec::with_capacity(m.tensors.len());
    for t in &m.tensors {
        let bytes = format
            .tensor_bytes(t.stored, &t.dims)
            .map_err(|e| format!("tensor {} {:?} in {format}: {e}", t.name, t.dims))?;
        total += bytes;
        out.push(PlacedTensor {
            name: t.name.clone(),
            stored: t.stored,
            dims: t.dims.clone(),
            bytes,
        });
    }
    Ok((out, total))
}

impl Placement {
    /// The rule file this placement came from.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// The rule file's devices.
    pub fn devices(&self) -> &[Device] {
        &self.devices
    }

    /// Every module in model order (parents before their linears).
    pub fn modules(&self) -> &[ModulePlacement] {
        &self.modules
    }

    /// The device of the first module of `kind` in `layer` (`None` for the embedding, the
    /// final norm and the head); `None` when there is no such module (e.g. routed experts
    /// of a dense layer). Linears run on their parent's device: ask for the parent's kind.
    pub fn device_of(&self, layer: Option<usize>, kind: ModuleKind) -> Option<Device> {
        self.modules
            .iter()
            .find(|m| m.layer == layer && m.kind == kind)
            .map(|m| m.device)
    }

    /// Weight bytes on each device (every listed device, zero when unused).
    pub fn bytes_per_device(&self) -> BTreeMap<Device, u64> {
        let mut out: BTreeMap<Device, u64> = self.devices.iter().map(|&d| (d, 0)).collect();
        for m in &self.modules {
            *out.entry(m.device).or_default() += m.bytes;
        }
        out
    }

    /// What each device needs with a KV cache of `ctx` positions (on the device of each
    /// layer's attention: bf16 on a GPU, f32 on the CPU) and `gpu_reserve` bytes of
    /// activations and workspace per GPU.
    pub fn memory(&self, ctx: usize, gpu_reserve: u64) -> Vec<DeviceMemory> {
        let weights = self.bytes_per_device();
        self.devices
            .iter()
            .map(|&device| {
                let kv_bytes = if device.is_gpu() {
                    KV_BYTES_GPU
                } else {
                    KV_BYTES_CPU
                };
                let attn_layers = self
                    .modules
                    .iter()
                    .filter(|m| m.kind == ModuleKind::Attention && m.device == device)
                    .count() as u64;
                let prefilled = || {
                    self.modules
                        .iter()
                        .filter(move |m| m.options.prefill_device == Some(device))
                };
                let staging = prefilled()
                    .filter_map(|m| m.prefill_bytes)
                    .max()
                    .map_or(0, |b| PREFILL_SLOTS * b);
                let decode_staging = prefilled()
                    .filter(|m| m.options.decode_resident == Some(true))
                    .filter_map(|m| {
                        let (bytes, experts) = (m.prefill_bytes?, stacked_experts(&m.tensors)?);
                        Some(bytes / experts as u64 * self.top_k)
                    })
                    .max()
                    .unwrap_or(0);
                let resident = prefilled()
                    .filter_map(|m| {
                        let (bytes, experts) = (m.prefill_bytes?, stacked_experts(&m.tensors)?);
                        Some(bytes / experts as u64 * m.options.prefill_resident? as u64)
                    })
                    .sum();
                DeviceMemory {
                    device,
                    weights: weights[&device],
                    kv_cache: attn_layers * ctx as u64 * self.kv_elems * kv_bytes,
                    prefill_staging: staging + decode_staging,
                    prefill_resident: resident,
                    reserve: if device.is_gpu() { gpu_reserve } else { 0 },
                }
            })
            .collect()
    }

    /// How many of each MoE layer's experts (the first ones) fit on `memory.device` for good
    /// in `capacity` bytes beside the rest of `memory` (the rules' own resident experts left
    /// out): the most `prefill_resident` can be, out of the layer's experts. `None` when no
    /// module prefills there.
    pub fn resident_experts_room(
        &self,
        memory: &DeviceMemory,
        capacity: u64,
    ) -> Option<(usize, usize)> {
        let prefilled: Vec<_> = self
            .modules
            .iter()
            .filter(|m| m.options.prefill_device == Some(memory.device))
            .filter_map(|m| Some((m.prefill_bytes?, stacked_experts(&m.tensors)?)))
            .collect();
        let &(_, experts) = prefilled.first()?;
        // every layer keeps the same number: the largest expert sets the cost
        let per_expert = prefilled.iter().map(|&(b, e)| b / e as u64).max()?;
        let cost = per_expert * prefilled.len() as u64;
        let free = capacity.saturating_sub(memory.total() - memory.prefill_resident);
        let fit = free.checked_div(cost).map_or(experts, |n| n as usize);
        Some((fit.min(experts), experts))
    }

    /// An error naming the first GPU of `memory` that needs more than `gpu_bytes`.
    pub fn check_fits(memory: &[DeviceMemory], gpu_bytes: u64) -> Result<()> {
        const GIB: f64 = (1u64 << 30) as f64;
        let gib = |b: u64| b as f64 / GIB;
        match memory
            .iter()
            .find(|m| m.device.is_gpu() && m.total() > gpu_bytes)
        {
            Some(m) => Err(PlacementError::DoesNotFit {
                device: m.device,
                need_gib: gib(m.total()),
                weights_gib: gib(m.weights),
                kv_gib: gib(m.kv_cache),
                staging_gib: gib(m.prefill_staging),
                resident_gib: gib(m.prefill_resident),
                reserve_gib: gib(m.reserve),
                have_gib: gib(gpu_bytes),
            }),
            None => Ok(()),
        }
    }
}
