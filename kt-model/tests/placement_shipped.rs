//! Every shipped rule file (`rules/*.yaml`) parses, places every module of each model it
//! names (no module left unmatched, formats allowed for the operator and device, devices
//! in the file's scope), fits 80 GiB GPUs, and does what its name says: `-cpu` puts
//! everything on the CPU, `-hybrid` the routed experts on the CPU and the rest on one GPU,
//! `-2gpu` the routed experts on the CPU and the layers split in two runs over two GPUs.
//! No shipped rule is dead (each places at least one module).

use std::path::PathBuf;

use kt_model::config::DeepSeekConfig;
use kt_model::placement::{Device, ModuleKind, Placement, RuleSet};
use kt_model::synthetic::Preset;

/// The rule files of `rules/` and of its subfolders (variants such as `cpu-int4/`).
fn shipped() -> Vec<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../rules");
    let mut files = yaml_files(&dir);
    for sub in std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()) {
        if sub.is_dir() {
            files.extend(yaml_files(&sub));
        }
    }
    files.sort();
    files
}

fn yaml_files(dir: &std::path::Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
        .collect()
}

/// Checks that hold for any placement.
fn check_valid(file: &str, rules: &RuleSet, p: &Placement, config: &DeepSeekConfig) {
    for m in p.modules() {
        assert!(
            rules.devices().contains(&m.device),
            "{file}: {} on {}",
            m.name,
            m.device
        );
        assert!(
            m.op.runs(m.kind),
            "{file}: {} ({}) run by {:?}",
            m.name,
            m.kind,
            m.op
        );
        assert!(
            m.op.allows(m.device, m.format),
            "{file}: {} in {} on {}",
            m.name,
            m.format,
            m.device
        );
        match m.parent {
            Some(parent) => {
                let parent = &p.modules()[parent];
                assert_eq!(m.kind, ModuleKind::Linear, "{file}: {}", m.name);
                assert_eq!(
                    m.device, parent.device,
                    "{file}: {} vs {}",
                    m.name, parent.name
                );
            }
            None => assert!(m.rule.is_some(), "{file}: {} placed by no rule", m.name),
        }
        assert!(
            m.bytes > 0 || m.tensors.is_empty(),
            "{file}: {} has no bytes",
            m.name
        );
    }
    // Each layer has its attention and FFN modules, placed.
    for layer in 0..config.n_layers {
        let kinds: &[ModuleKind] = if config.is_moe_layer(layer) {
            &[
                ModuleKind::Attention,
                ModuleKind::Gate,
                ModuleKind::RoutedExperts,
                ModuleKind::SharedExperts,
            ]
        } else {
            &[ModuleKind::Attention, ModuleKind::DenseMlp]
        };
        for &k in kinds {
            assert!(
                p.device_of(Some(layer), k).is_some(),
                "{file}: layer {layer} has no {k}"
            );
        }
    }
    for k in [ModuleKind::Embedding, ModuleKind::LmHead] {
        assert!(p.device_of(None, k).is_some(), "{file}: no {k}");
    }
    // No dead rule: each places some module (a shipped file says only what it does).
    for (i, rule) in rules.rules().iter().enumerate() {
        let used = p.modules().iter().any(|m| m.rule == Some(i));
        assert!(
            used,
            "{file}: rule {} ({:?}) places nothing",
            i + 1,
            rule.matches
        );
    }
    let memory = p.memory(4096, 2 << 30);
    Placement::check_fits(&memory, 80 << 30).unwrap_or_else(|e| panic!("{file}: {e}"));
    let weights: u64 = p.bytes_per_device().values().sum();
    let summed: u64 = p.modules().iter().map(|m| m.bytes).sum();
    assert_eq!(weights, summed, "{file}");
}

/// The device of every non-expert module of `layer`.
fn layer_devices(p: &Placement, layer: usize) -> Vec<Device> {
    let mut d: Vec<Device> = p
        .modules()
        .iter()
        .filter(|m| m.layer == Some(layer) && m.kind != ModuleKind::RoutedExperts)
        .map(|m| m.device)
        .collect();
    d.dedup();
    d
}

fn check_named_layout(file: &str, p: &Placement, config: &DeepSeekConfig) {
    let experts_on_cpu = p
        .modules()
        .iter()
        .filter(|m| m.kind == ModuleKind::RoutedExperts)
        .all(|m| m.device == Device::Cpu);
    assert!(experts_on_cpu, "{file}: routed experts off the CPU");
    let others = p
        .modules()
        .iter()
        .filter(|m| m.kind != ModuleKind::RoutedExperts);
    if file.ends_with("-cpu.yaml") {
        assert!(
            p.modules().iter().all(|m| m.device == Device::Cpu),
            "{file}"
        );
    } else if file.ends_with("-hybrid.yaml") {
        assert!(
            others.into_iter().all(|m| m.device == Device::Cuda(0)),
            "{file}"
        );
    } else if file.ends_with("-2gpu.yaml") {
        assert!(others.into_iter().all(|m| m.device.is_gpu()), "{file}");
        // Each layer on one GPU; layers on cuda:0 first, then cuda:1.
        let per_layer: Vec<Device> = (0..config.n_layers)
            .map(|l| {
                let d = layer_devices(p, l);
                assert_eq!(d.len(), 1, "{file}: layer {l} spread over {d:?}");
                d[0]
            })
            .collect();
        let split = per_layer
            .iter()
            .position(|&d| d == Device::Cuda(1))
            .expect("cuda:1 used");
        assert!(split > 0, "{file}: cuda:0 holds no layer");
        assert!(
            per_layer[..split].iter().all(|&d| d == Device::Cuda(0)),
            "{file}"
        );
        assert!(
            per_layer[split..].iter().all(|&d| d == Device::Cuda(1)),
            "{file}"
        );
        assert_eq!(
            p.device_of(None, ModuleKind::Embedding),
            Some(Device::Cuda(0))
        );
        assert_eq!(p.device_of(None, ModuleKind::LmHead), Some(Device::Cuda(1)));
    } else {
        panic!("{file}: a shipped rule file ends in -cpu, -hybrid or -2gpu");
    }
}

#[test]
fn every_shipped_file_places_each_of_its_models() {
    let files = shipped();
    let top = files
        .iter()
        .filter(|p| p.parent().unwrap().ends_with("rules"));
    assert_eq!(top.count(), 9, "3 layouts x 3 models: {files:?}");
    assert!(
        files.len() > 9,
        "the variant folders' files are read too: {files:?}"
    );
    for path in files {
        let file = path.file_name().unwrap().to_string_lossy().into_owned();
        let rules = RuleSet::from_file(&path).unwrap_or_else(|e| panic!("{e}"));
        let models = &rules.file().models;
        assert!(!models.is_empty(), "{file}: names no model");
        for name in models {
            let preset =
                Preset::from_name(name).unwrap_or_else(|| panic!("{file}: unknown model {name}"));
            assert!(
                file.starts_with(&format!("{name}-")),
                "{file} is for {name}"
            );
            let config = preset.config();
            let p = rules.place(&config).unwrap_or_else(|e| panic!("{e}"));
            check_valid(&file, &rules, &p, &config);
            check_named_layout(&file, &p, &config);
        }
    }
}

/// The CPU baseline keeps every tensor as stored: its bytes are the Q4_K_M file's data,
/// which the synthetic model (its own code path, the GGUF writer's sizes) agrees with up
/// to the 32-byte alignment padding between tensors.
#[test]
fn cpu_baseline_bytes_are_the_q4_k_m_files() {
    for preset in Preset::ALL {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join(format!("../rules/{}-cpu.yaml", preset.name()));
        let rules = RuleSet::from_file(&path).unwrap();
        let p = rules.place(&preset.config()).unwrap();
        let placed = p.bytes_per_device()[&Device::Cpu];
        let opts = kt_model::synthetic::SyntheticOptions {
            pool_rows: 1,
            ..Default::default()
        };
        let synth = kt_model::synthetic::SyntheticModel::new(preset, &opts).unwrap();
        let data = synth.data_bytes();
        let n = synth.n_tensors() as u64;
        let alignment = kt_model::gguf::DEFAULT_ALIGNMENT;
        assert!(
            placed <= data && data - placed < n * alignment,
            "{preset}: {placed} vs {data}"
        );
    }
}
