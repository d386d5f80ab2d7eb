//! `kt-bench plan`: where a rule file puts every module of a model, in which format, and
//! the memory each device needs; refuses (non-zero exit) a plan that overflows a GPU.
//!
//! The table groups modules that differ only by layer over runs of consecutive layers
//! ("layers 3-60"); `--json` lists every module. GPU memory is weights + the latent KV
//! cache for `--ctx` positions of the layers whose attention runs there + the largest
//! module staged there for prefill + `--reserve` GiB for activations and workspace.
//! `--print-schema` prints the rule files' JSON Schema (what
//! `rule-schemas/rules.schema.json` holds).

use std::collections::HashMap;

use kt_model::gguf::Gguf;
use kt_model::placement::{self, DeviceMemory, ModulePlacement, Placement, RuleSet};
use serde_json::json;

use crate::gen_gguf::parse_preset;

const GIB: f64 = (1u64 << 30) as f64;

#[derive(clap::Args, Clone, Debug)]
pub struct Args {
    /// deepseek-v2-lite, deepseek-v2 or deepseek-v3 (the Q4_K_M mix of kt's synthetic
    /// presets, no weights built), or a path to a GGUF file (its tensors as stored).
    #[arg(long, required_unless_present = "print_schema")]
    pub model: Option<String>,
    /// The placement rule file (YAML; see rules/ and rule-schemas/).
    #[arg(long, required_unless_present = "print_schema")]
    pub rules: Option<String>,
    /// Memory of each GPU, GiB.
    #[arg(long, default_value_t = 80.0)]
    pub gpu_mem: f64,
    /// KV cache positions to reserve.
    #[arg(long, default_value_t = 4096)]
    pub ctx: usize,
    /// GiB set aside per GPU for activations and workspace.
    #[arg(long, default_value_t = 2.0)]
    pub reserve: f64,
    /// Print one JSON object (every module).
    #[arg(long)]
    pub json: bool,
    /// Print the JSON Schema of rule files and exit.
    #[arg(long)]
    pub print_schema: bool,
}

pub fn run(a: Args) -> Result<(), Box<dyn std::error::Error>> {
    if a.print_schema {
        print!("{}", placement::json_schema());
        return Ok(());
    }
    let (model, rules_path) = match (&a.model, &a.rules) {
        (Some(m), Some(r)) => (m, r),
        _ => unreachable!("clap requires --model and --rules without --print-schema"),
    };
    for (flag, v) in [("--gpu-mem", a.gpu_mem), ("--reserve", a.reserve)] {
        if !(v.is_finite() && v >= 0.0) {
            return Err(format!("{flag} {v} is not a size in GiB").into());
        }
    }
    let rules = RuleSet::from_file(rules_path)?;
    let plan = if model.ends_with(".gguf") || std::path::Path::new(model).is_file() {
        rules.place_gguf(&Gguf::open(model)?)?
    } else {
        rules.place(&parse_preset(model)?.config())?
    };
    let gpu_bytes = (a.gpu_mem * GIB) as u64;
    let memory = plan.memory(a.ctx, (a.reserve * GIB) as u64);
    let fits = Placement::check_fits(&memory, gpu_bytes);
    if a.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report_json(
                &a,
                model,
                &plan,
                &memory,
                gpu_bytes,
                fits.is_ok()
            ))?
        );
    } else {
        print_table(&a, model, &plan, &memory, gpu_bytes);
    }
    fits.map_err(|e| format!("the plan does not fit: {e}").into())
}

/// Modules that differ only by layer, over a run of consecutive layers.
struct Group<'a> {
    first: &'a ModulePlacement,
    layers: Option<(usize, usize)>,
    count: usize,
    bytes: u64,
}

/// What a module is apart from its layer: its name with the layer number as `N`, and
/// where and how it runs.
fn group_key(m: &ModulePlacement) -> String {
    let name = match m.layer {
        Some(l) => m.name.replacen(&format!("blk.{l}."), "blk.N.", 1),
        None => m.name.clone(),
    };
    format!(
        "{name}|{}|{}|{:?}|{:?}|{:?}",
        m.device, m.format, m.op, m.options, m.rule
    )
}

fn groups(plan: &Placement) -> Vec<Group<'_>> {
    let mut out: Vec<Group> = Vec::new();
    let mut last: HashMap<String, usize> = HashMap::new();
    for m in plan.modules() {
        let key = group_key(m);
        if let (Some(&g), Some(l)) = (last.get(&key), m.layer) {
            let group = &mut out[g];
            if let Some((_, end)) = &mut group.layers {
                if *end + 1 == l {
                    *end = l;
                    group.count += 1;
                    group.bytes += m.bytes;
                    continue;
                }
            }
        }
        last.insert(key, out.len());
        out.push(Group {
            first: m,
            layers: m.layer.map(|l| (l, l)),
            count: 1,
            bytes: m.bytes,
        });
    }
    out
}

fn layers_label(layers: Option<(usize, usize)>) -> String {
    match layers {
        None => String::new(),
        Some((a, b)) if a == b => format!("layer {a}"),
        Some((a, b)) => format!("layers {a}-{b}"),
    }
}

fn gib(bytes: u64) -> f64 {
    bytes as f64 / GIB
}

fn print_table(a: &Args, model: &str, plan: &Placement, memory: &[DeviceMemory], gpu_bytes: u64) {
    println!("model {model}, rules {}", plan.origin());
    println!(
        "{:<12} {:<26} {:<15} {:<7} {:<10} {:<10} {:>10}",
        "layers", "module", "kind", "device", "format", "rule", "GiB"
    );
    for g in groups(plan) {
        let m = g.first;
        let name = match m.layer {
            Some(l) => m.name.replacen(&format!("blk.{l}."), "blk.N.", 1),
            None => m.name.clone(),
        };
        // Linears indented under their parent.
        let name = if m.parent.is_some() {
            format!("  {name}")
        } else {
            name
        };
        let rule = match m.rule {
            Some(r) => format!("{}", r + 1),
            None => "(parent)".into(),
        };
        let mut row = format!(
            "{:<12} {:<26} {:<15} {:<7} {:<10} {:<10} {:>10.3}",
            layers_label(g.layers),
            name,
            m.kind.to_string(),
            m.device.to_string(),
            m.format.to_string(),
            rule,
            gib(g.bytes)
        );
        if let Some(d) = m.options.prefill_device {
            let threshold = m.options.prefill_threshold.unwrap_or_default();
            let mut resident = match m.options.prefill_resident {
                Some(n) => format!(", {n} experts resident"),
                None => String::new(),
            };
            if let Some(f) = m.options.prefill_cpu_share {
                resident += &format!(", {f} of them on the CPU meanwhile");
            }
            row += &format!("  (prefill > {threshold} tokens on {d}{resident})");
        }
        if g.count > 1 {
            row += &format!("  ({} modules)", g.count);
        }
        println!("{row}");
    }
    println!();
    println!(
        "memory (GiB): KV cache for {} positions, {:.1} GiB reserve per GPU, {:.1} GiB per GPU",
        a.ctx, a.reserve, a.gpu_mem
    );
    println!(
        "{:<8} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10}",
        "device", "weights", "kv cache", "staging", "resident", "reserve", "total", "capacity"
    );
    for d in memory {
        let capacity = if d.device.is_gpu() {
            format!("{:.1}", gib(gpu_bytes))
        } else {
            "-".into()
        };
        println!(
            "{:<8} {:>10.2} {:>10.2} {:>10.2} {:>10.2} {:>10.2} {:>10.2} {:>10}",
            d.device.to_string(),
            gib(d.weights),
            gib(d.kv_cache),
            gib(d.prefill_staging),
            gib(d.prefill_resident),
            gib(d.reserve),
            gib(d.total()),
            capacity
        );
    }
    for d in memory.iter().filter(|d| d.device.is_gpu()) {
        if let Some((fit, experts)) = plan.resident_experts_room(d, gpu_bytes) {
            println!(
                "{}: room for {fit} of each MoE layer's {experts} experts resident for the GPU prefill (rule option prefill_resident, or `kt-bench prefill --prefill-resident {fit}`)",
                d.device
            );
        }
    }
}

fn report_json(
    a: &Args,
    model: &str,
    plan: &Placement,
    memory: &[DeviceMemory],
    gpu_bytes: u64,
    fits: bool,
) -> serde_json::Value {
    let modules: Vec<_> = plan
        .modules()
        .iter()
        .map(|m| {
            json!({
                "name": m.name,
                "kind": m.kind,
                "layer": m.layer,
                "parent": m.parent.map(|p| &plan.modules()[p].name),
                "op": m.op,
                "device": m.device,
                "format": m.format,
                "options": m.options,
                "rule": m.rule.map(|r| r + 1),
                "bytes": m.bytes,
                "prefill_bytes": m.prefill_bytes,
            })
        })
        .collect();
    let devices: Vec<_> = memory
        .iter()
        .map(|d| {
            json!({
                "device": d.device,
                "weights_bytes": d.weights,
                "kv_cache_bytes": d.kv_cache,
                "prefill_staging_bytes": d.prefill_staging,
                "prefill_resident_bytes": d.prefill_resident,
                "reserve_bytes": d.reserve,
                "total_bytes": d.total(),
                "resident_experts_room": d.device.is_gpu()
                    .then(|| plan.resident_experts_room(d, gpu_bytes).map(|r| r.0))
                    .flatten(),
            })
        })
        .collect();
    json!({
        "model": model,
        "rules": plan.origin(),
        "ctx": a.ctx,
        "gpu_mem_gib": a.gpu_mem,
        "reserve_gib": a.reserve,
        "fits": fits,
        "devices": devices,
        "modules": modules,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use kt_model::synthetic::Preset;

    #[test]
    fn groups_cover_every_module_once_in_runs_of_layers() {
        let text = "devices: [cpu]\nrules:\n  - match: {name: '.*'}\n    replace: {device: cpu, format: gguf}\n";
        let rules = RuleSet::from_yaml_str(text, "all-cpu").unwrap();
        let plan = rules.place(&Preset::DeepSeekV3.config()).unwrap();
        let gs = groups(&plan);
        let covered: usize = gs.iter().map(|g| g.count).sum();
        assert_eq!(covered, plan.modules().len());
        let total: u64 = gs.iter().map(|g| g.bytes).sum();
        assert_eq!(total, plan.bytes_per_device()[&placement::Device::Cpu]);
        let exps: Vec<_> = gs
            .iter()
            .filter(|g| g.first.name.ends_with("ffn_exps"))
            .collect();
        assert_eq!(exps.len(), 1);
        assert_eq!(exps[0].layers, Some((3, 60)), "V3's MoE layers");
        let dense: Vec<_> = gs
            .iter()
            .filter(|g| g.first.name.ends_with(".ffn"))
            .collect();
        assert_eq!(dense[0].layers, Some((0, 2)));
        assert_eq!(layers_label(Some((3, 60))), "layers 3-60");
    }

    fn args(rules: &str, gpu_mem: f64) -> Args {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../rules");
        Args {
            model: Some("deepseek-v2-lite".into()),
            rules: Some(dir.join(rules).display().to_string()),
            gpu_mem,
            ctx: 4096,
            reserve: 2.0,
            json: true,
            print_schema: false,
        }
    }

    #[test]
    fn refuses_a_plan_that_overflows_a_gpu() {
        run(args("deepseek-v2-lite-hybrid.yaml", 80.0)).unwrap();
        // Weights ~1.1 GiB + 2 GiB reserve do not fit 2 GiB.
        let e = run(args("deepseek-v2-lite-hybrid.yaml", 2.0))
            .unwrap_err()
            .to_string();
        assert!(e.contains("does not fit") && e.contains("cuda:0"), "{e}");
        // The CPU is not bounded by --gpu-mem.
        run(args("deepseek-v2-lite-cpu.yaml", 0.0)).unwrap();
        let e = run(args("deepseek-v2-lite-cpu.yaml", f64::NAN))
            .unwrap_err()
            .to_string();
        assert!(e.contains("--gpu-mem"), "{e}");
    }
}
