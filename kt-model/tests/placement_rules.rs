//! Rule files: what the parser refuses (each error names the file, the line and the field
//! or module), how rules place modules (first match wins, linears follow their parent),
//! and the bytes and memory of a placement, checked against the tiny-dsv3 fixture's
//! manifest (tensor types, shapes and sizes as llama.cpp's tooling wrote them).

use std::path::PathBuf;

use kt_model::gguf::Gguf;
use kt_model::placement::{
    Device, ModuleKind, Operator, Placement, PlacementError, RuleSet, WeightFormat,
};
use kt_model::synthetic::Preset;

const ORIGIN: &str = "test.yaml";

fn parse(text: &str) -> Result<RuleSet, PlacementError> {
    RuleSet::from_yaml_str(text, ORIGIN)
}

fn parse_err(text: &str) -> String {
    let e = parse(text).expect_err("the file must be refused");
    let msg = e.to_string();
    assert!(msg.starts_with(ORIGIN), "the error names the file: {msg}");
    msg
}

/// A V2-Lite-shaped hybrid file with `extra` rules first.
fn hybrid_with(extra: &str) -> String {
    format!(
        "devices: [cpu, \"cuda:0\"]
rules:
{extra}  - match: {{kind: routed_experts}}
    replace: {{device: cpu, format: gguf}}
  - match: {{kind: embedding}}
    replace: {{device: \"cuda:0\", format: bf16}}
  - match: {{kind: norm}}
    replace: {{device: \"cuda:0\", format: f32}}
  - match: {{kind: gate}}
    replace: {{device: \"cuda:0\", format: f32}}
  - match: {{name: 'blk\\.\\d+\\.ffn(_gate|_up|_down)?'}}
    replace: {{device: \"cuda:0\", format: bf16}}
  - match: {{name: '.*'}}
    replace: {{device: \"cuda:0\", format: int4_g128}}
"
    )
}

#[test]
fn unknown_fields_operators_and_values_name_their_line() {
    // line 4: a misspelt field of `replace`
    let text = "devices: [cpu]\nrules:\n  - match: {kind: norm}\n    replace: {device: cpu, format: f32, devise: cpu}\n";
    let msg = parse_err(text);
    assert!(
        msg.contains("unknown field `devise`") && msg.contains("line 4"),
        "{msg}"
    );
    assert!(
        msg.contains("rules[0].replace"),
        "names the field's path: {msg}"
    );

    let text = "devices: [cpu]\nrules:\n  - match:\n      kind: norm\n    replace:\n      op: fast_norm\n      device: cpu\n      format: f32\n";
    let msg = parse_err(text);
    assert!(msg.contains("fast_norm") && msg.contains("line 6"), "{msg}");

    let text =
        "devices: [cpu]\nrules:\n  - match: {kind: mlp}\n    replace: {device: cpu, format: f32}\n";
    let msg = parse_err(text);
    assert!(
        msg.contains("unknown variant `mlp`") && msg.contains("line 3"),
        "{msg}"
    );

    let text = "devices: [cpu]\nrules:\n  - match: {kind: norm}\n    replace: {device: gpu0, format: f32}\n";
    let msg = parse_err(text);
    assert!(
        msg.contains("gpu0") && msg.contains("cuda:N") && msg.contains("line 4"),
        "{msg}"
    );

    let text = "devices: [cpu]\nrules:\n  - match: {kind: norm}\n    replace: {device: cpu, format: q4_km}\n";
    let msg = parse_err(text);
    assert!(
        msg.contains("q4_km") && msg.contains("int4_g128") && msg.contains("line 4"),
        "{msg}"
    );

    let text = "devices: [cpu]\nrules:\n  - match: {name: 'blk.(\\d+'}\n    replace: {device: cpu, format: f32}\n";
    let msg = parse_err(text);
    assert!(
        msg.contains("bad name regex") && msg.contains("line 3"),
        "{msg}"
    );

    let text = "devices: [cpu]\nrules:\n  - match: {layers: 9-3}\n    replace: {device: cpu, format: gguf}\n";
    let msg = parse_err(text);
    assert!(msg.contains("9-3") && msg.contains("line 3"), "{msg}");

    let msg = parse_err("devices: [cpu]\nrules: []\nextra: 1\n");
    assert!(msg.contains("unknown field `extra`"), "{msg}");
    let msg = parse_err("devices: [cpu\n");
    assert!(msg.contains("line"), "{msg}");
}

#[test]
fn inconsistent_rules_name_rule_line_and_field() {
    let text = "devices: [cpu]\nrules:\n  - match: {kind: norm}\n    replace: {device: cpu, format: f32}\n  - match: {kind: attention}\n    replace: {device: \"cuda:1\", format: bf16}\n";
    let msg = parse_err(text);
    assert!(
        msg.contains("rule 2 (line 5)") && msg.contains("replace.device"),
        "{msg}"
    );
    assert!(
        msg.contains("cuda:1 is not in the file's devices [cpu]"),
        "{msg}"
    );

    // A format the operator does not take on that device, with the ones it takes.
    let text = "devices: [cpu]\nrules:\n  - match: {kind: shared_experts}\n    replace: {device: cpu, format: int8_amx}\n";
    let msg = parse_err(text);
    assert!(
        msg.contains("rule 1 (line 3)") && msg.contains("replace.format"),
        "{msg}"
    );
    assert!(
        msg.contains("operator mlp on cpu does not take format int8_amx"),
        "{msg}"
    );
    let text = "devices: [\"cuda:0\"]\nrules:\n  - match: {kind: attention}\n    replace: {device: \"cuda:0\", format: q4_k}\n";
    let msg = parse_err(text);
    assert!(
        msg.contains("int4_g128, bf16") || msg.contains("f16, bf16, int4_g128"),
        "{msg}"
    );

    let text = "devices: [cpu]\nrules:\n  - match: {kind: norm}\n    replace: {op: moe, device: cpu, format: f32}\n";
    let msg = parse_err(text);
    assert!(
        msg.contains("operator moe cannot run norm modules (use rms_norm)"),
        "{msg}"
    );

    let text = "devices: [cpu]\nrules:\n  - match: {}\n    replace: {device: cpu, format: gguf}\n";
    assert!(parse_err(text).contains("has no condition"));

    let text = "devices: [cpu, cpu]\nrules:\n  - match: {kind: norm}\n    replace: {device: cpu, format: gguf}\n";
    assert!(parse_err(text).contains("cpu is listed twice"));

    // Prefill options go together, on a device in scope, in a format it takes.
    let text = "devices: [cpu]\nrules:\n  - match: {kind: routed_experts}\n    replace:\n      device: cpu\n      format: gguf\n      options: {prefill_threshold: 512}\n";
    assert!(parse_err(text).contains("prefill_device and prefill_threshold go together"));
    let text = "devices: [cpu, \"cuda:0\"]\nrules:\n  - match: {kind: routed_experts}\n    replace:\n      device: cpu\n      format: gguf\n      options: {prefill_device: \"cuda:0\", prefill_format: bf16, prefill_threshold: 0}\n";
    assert!(parse_err(text).contains("replace.options.prefill_threshold: is 0"));
    let text = "devices: [cpu, \"cuda:0\"]\nrules:\n  - match: {kind: routed_experts}\n    replace:\n      device: cpu\n      format: gguf\n      options: {prefill_device: \"cuda:0\", prefill_threshold: 512}\n";
    let msg = parse_err(text);
    assert!(
        msg.contains("prefill_format")
            && msg.contains("operator moe on cuda:0 does not take format gguf"),
        "{msg}"
    );
    let text = "devices: [cpu]\nrules:\n  - match: {kind: routed_experts}\n    replace:\n      device: cpu\n      format: gguf\n      options: {prefill_resident: 4}\n";
    assert!(parse_err(text)
        .contains("prefill_resident, prefill_cpu_share and decode_resident only with them"));
    let text = "devices: [cpu]\nrules:\n  - match: {kind: routed_experts}\n    replace:\n      device: cpu\n      format: gguf\n      options: {decode_resident: true}\n";
    assert!(parse_err(text).contains("decode_resident only with them"));
    // decode_resident needs resident experts to run
    let text = "devices: [cpu, \"cuda:0\"]\nrules:\n  - match: {kind: routed_experts}\n    replace:\n      device: cpu\n      format: gguf\n      options: {prefill_device: \"cuda:0\", prefill_format: int4_g128, prefill_threshold: 64, decode_resident: true}\n";
    let msg = parse_err(text);
    assert!(
        msg.contains("replace.options.decode_resident")
            && msg.contains("prefill_resident of at least 1"),
        "{msg}"
    );
    let text = "devices: [cpu, \"cuda:0\"]\nrules:\n  - match: {kind: routed_experts}\n    replace:\n      device: cpu\n      format: gguf\n      options: {prefill_device: \"cuda:0\", prefill_format: int4_g128, prefill_threshold: 64, prefill_cpu_share: 1.5}\n";
    let msg = parse_err(text);
    assert!(
        msg.contains("replace.options.prefill_cpu_share") && msg.contains("is 1.5"),
        "{msg}"
    );
}

#[test]
fn placing_errors_name_the_module() {
    // No rule for the embedding.
    let text = "devices: [cpu]\nrules:\n  - match: {layers: 0-26}\n    replace: {device: cpu, format: gguf}\n  - match: {kind: lm_head}\n    replace: {device: cpu, format: gguf}\n  - match: {kind: norm}\n    replace: {device: cpu, format: f32}\n";
    let e = parse(text)
        .unwrap()
        .place(&Preset::DeepSeekV2Lite.config())
        .unwrap_err();
    assert!(
        matches!(&e, PlacementError::Unmatched { module, .. } if module == "token_embd"),
        "{e}"
    );
    assert!(
        e.to_string()
            .contains("no rule matches module token_embd (embedding);"),
        "{e}"
    );

    // A layer range that misses layer 26.
    let text = hybrid_with("").replace(
        "{name: '.*'}",
        "{name: 'token_embd|output|blk\\.([0-9]|1[0-9]|2[0-5])\\..*'}",
    );
    let e = parse(&text)
        .unwrap()
        .place(&Preset::DeepSeekV2Lite.config())
        .unwrap_err();
    assert!(
        e.to_string()
            .contains("module blk.26.attn (attention, layer 26)"),
        "{e}"
    );

    // A rule without kind catching a module whose operator refuses the format.
    let text =
        hybrid_with("  - match: {layers: 3}\n    replace: {device: \"cuda:0\", format: bf16}\n");
    let e = parse(&text)
        .unwrap()
        .place(&Preset::DeepSeekV2Lite.config())
        .unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains("rule 1 (line 3)") && msg.contains("blk.3.attn_norm (norm)"),
        "{msg}"
    );
    assert!(
        msg.contains("operator rms_norm on cuda:0 does not take format bf16"),
        "{msg}"
    );

    // A shape the format cannot hold: V2-Lite's dense down rows in int4 groups of 128.
    let text = hybrid_with("").replace(
        "  - match: {name: 'blk\\.\\d+\\.ffn(_gate|_up|_down)?'}\n    replace: {device: \"cuda:0\", format: bf16}\n",
        "",
    );
    let e = parse(&text)
        .unwrap()
        .place(&Preset::DeepSeekV2Lite.config())
        .unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains("blk.0.ffn_down") && msg.contains("[10944, 2048]"),
        "{msg}"
    );

    // Resident prefill experts: at most the module's experts, on routed experts only.
    let prefill = |kind: &str, resident: usize| {
        hybrid_with(&format!(
            "  - match: {{kind: {kind}}}\n    replace:\n      device: cpu\n      format: gguf\n      options: {{prefill_device: \"cuda:0\", prefill_format: int4_g128, prefill_threshold: 64, prefill_resident: {resident}}}\n"
        ))
    };
    let place = |text: String| {
        parse(&text)
            .unwrap()
            .place(&Preset::DeepSeekV2Lite.config())
    };
    place(prefill("routed_experts", 64)).unwrap();
    let msg = place(prefill("routed_experts", 65))
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("blk.1.ffn_exps")
            && msg.contains("prefill_resident 65 exceeds the module's 64 experts"),
        "{msg}"
    );
    let msg = place(prefill("shared_experts", 2)).unwrap_err().to_string();
    assert!(
        msg.contains("blk.1.ffn_shexp")
            && msg.contains("only routed experts take them, not shared_experts modules"),
        "{msg}"
    );
    // defer_experts: routed experts only (the hybrid executor checks it against top_k)
    let defer = |kind: &str| {
        format!(
            "devices: [cpu, \"cuda:0\"]\nrules:\n  - match: {{kind: {kind}}}\n    replace:\n      device: cpu\n      format: gguf\n      options: {{defer_experts: 2}}\n  - match: {{name: '.*'}}\n    replace: {{device: cpu, format: gguf}}\n"
        )
    };
    let placed = place(defer("routed_experts")).unwrap();
    let routed = placed
        .modules()
        .iter()
        .filter(|m| m.kind == ModuleKind::RoutedExperts)
        .map(|m| m.options.defer_experts)
        .collect::<Vec<_>>();
    assert!(
        !routed.is_empty() && routed.iter().all(|&n| n == Some(2)),
        "{routed:?}"
    );
    let msg = place(defer("attention")).unwrap_err().to_string();
    assert!(
        msg.contains("defer_experts") && msg.contains("not attention modules"),
        "{msg}"
    );

    // A linear sent to another device than its attention.
    let text = "devices: [cpu, \"cuda:0\"]\nrules:\n  - match: {name: 'blk\\.\\d+\\.attn_k_b'}\n    replace: {device: cpu, format: gguf}\n  - match: {kind: norm}\n    replace: {device: \"cuda:0\", format: f32}\n  - match: {name: '.*'}\n    replace: {device: \"cuda:0\", format: bf16}\n";
    let e = parse(text)
        .unwrap()
        .place(&Preset::DeepSeekV2Lite.config())
        .unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains("blk.0.attn_k_b") && msg.contains("belongs to blk.0.attn on cuda:0"),
        "{msg}"
    );
}

#[test]
fn first_match_wins_and_linears_follow_their_parent() {
    let text = hybrid_with(
        "  - match: {name: 'blk\\.\\d+\\.attn_[kv]_b', kind: linear}\n    replace: {device: \"cuda:0\", format: bf16}\n  - match: {kind: attention, layers: 5-9}\n    replace: {device: \"cuda:0\", format: f16}\n  - match: {kind: attention}\n    replace: {device: \"cuda:0\", format: int4_g128}\n",
    );
    let rules = parse(&text).unwrap();
    assert_eq!(rules.line(0), Some(3));
    let config = Preset::DeepSeekV2Lite.config();
    let p = rules.place(&config).unwrap();
    let get = |name: &str| {
        p.modules()
            .iter()
            .find(|m| m.name == name)
            .unwrap_or_else(|| panic!("{name}"))
    };
    assert_eq!(
        get("blk.7.attn").format,
        WeightFormat::Ggml(kt_kernels::quant::QType::F16)
    );
    assert_eq!(get("blk.7.attn").rule, Some(1));
    assert_eq!(get("blk.4.attn").rule, Some(2), "layer 4 is outside 5-9");
    // Linears no rule names take the parent's format; k_b / v_b took rule 1.
    assert_eq!(get("blk.7.attn_q").format, get("blk.7.attn").format);
    assert_eq!(get("blk.7.attn_q").rule, None);
    assert_eq!(get("blk.7.attn_q").op, Operator::Linear);
    assert_eq!(
        get("blk.7.attn_k_b").format,
        WeightFormat::Ggml(kt_kernels::quant::QType::BF16)
    );
    assert_eq!(get("blk.7.attn_k_b").rule, Some(0));
    let parent = get("blk.7.attn_q").parent.unwrap();
    assert_eq!(p.modules()[parent].name, "blk.7.attn");
    // `.*` catches shared experts (rule order: the catch-all is last).
    assert_eq!(get("blk.3.ffn_shexp").format, WeightFormat::Int4G128);
    assert_eq!(
        p.device_of(Some(3), ModuleKind::RoutedExperts),
        Some(Device::Cpu)
    );
    assert_eq!(
        p.device_of(Some(0), ModuleKind::RoutedExperts),
        None,
        "layer 0 is dense"
    );
    assert_eq!(
        p.device_of(Some(0), ModuleKind::DenseMlp),
        Some(Device::Cuda(0))
    );
    assert_eq!(
        p.device_of(None, ModuleKind::Embedding),
        Some(Device::Cuda(0))
    );
    // Model order: embedding first, head last, parents before their linears.
    assert_eq!(p.modules()[0].name, "token_embd");
    assert_eq!(p.modules().last().unwrap().name, "output");
    for (i, m) in p.modules().iter().enumerate() {
        if let Some(parent) = m.parent {
            assert!(parent < i, "{}", m.name);
        }
    }
    let names: Vec<&str> = p
        .modules()
        .iter()
        .filter(|m| m.layer == Some(1))
        .map(|m| m.name.as_str())
        .collect();
    assert_eq!(
        names,
        [
            "blk.1.attn_norm",
            "blk.1.attn",
            "blk.1.attn_q",
            "blk.1.attn_kv_a_mqa",
            "blk.1.attn_k_b",
            "blk.1.attn_v_b",
            "blk.1.attn_output",
            "blk.1.ffn_norm",
            "blk.1.ffn_gate_inp",
            "blk.1.ffn_exps",
            "blk.1.ffn_shexp",
            "blk.1.ffn_gate_shexp",
            "blk.1.ffn_up_shexp",
            "blk.1.ffn_down_shexp"
        ]
    );
}

fn fixture_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/tiny-dsv3")
}

/// (name, ggml dims, bytes) of every tensor, from the fixture's manifest.
fn manifest() -> Vec<(String, Vec<usize>, u64)> {
    let path = fixture_dir().join("tiny-dsv3-q4_k_m.gguf.json");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    json["tensors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            let dims = t["ne"]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d.as_u64().unwrap() as usize)
                .collect();
            (
                t["name"].as_str().unwrap().to_owned(),
                dims,
                t["bytes"].as_u64().unwrap(),
            )
        })
        .collect()
}

#[test]
fn bytes_of_a_gguf_match_its_manifest() {
    let gguf = Gguf::open(fixture_dir().join("tiny-dsv3-q4_k_m.gguf")).unwrap();
    let want = manifest();
    assert!(want.len() > 30, "a whole model's tensors");

    // As stored: every tensor's bytes are the file's.
    let stored = parse("devices: [cpu]\nrules:\n  - match: {name: '.*'}\n    replace: {device: cpu, format: gguf}\n").unwrap();
    let p = stored.place_gguf(&gguf).unwrap();
    let placed: Vec<_> = p.modules().iter().flat_map(|m| &m.tensors).collect();
    assert_eq!(placed.len(), want.len(), "every tensor in one module");
    for (name, dims, bytes) in &want {
        let t = placed
            .iter()
            .find(|t| &t.name == name)
            .unwrap_or_else(|| panic!("{name} unplaced"));
        assert_eq!((&t.dims, t.bytes), (dims, *bytes), "{name}");
    }
    let total: u64 = want.iter().map(|w| w.2).sum();
    assert_eq!(p.bytes_per_device()[&Device::Cpu], total);

    // Converted to bf16: 2 bytes an element, vectors kept in f32.
    let bf16 = parse("devices: [cpu]\nrules:\n  - match: {kind: norm}\n    replace: {device: cpu, format: f32}\n  - match: {name: '.*'}\n    replace: {device: cpu, format: bf16}\n").unwrap();
    let p = bf16.place_gguf(&gguf).unwrap();
    let total: u64 = want
        .iter()
        .map(|(_, dims, _)| {
            let n: usize = dims.iter().product();
            (if dims.len() == 1 { 4 * n } else { 2 * n }) as u64
        })
        .sum();
    assert_eq!(p.bytes_per_device()[&Device::Cpu], total);
}

#[test]
fn memory_counts_kv_cache_staging_and_reserve() {
    // V3: attention of layers 0-29 on cuda:0, 30-60 on the CPU; experts staged on the
    // GPU for prefill in int4_g128.
    let text = "devices: [cpu, \"cuda:0\"]
rules:
  - match: {kind: routed_experts}
    replace:
      device: cpu
      format: gguf
      options: {prefill_device: \"cuda:0\", prefill_format: int4_g128, prefill_threshold: 1024}
  - match: {layers: 0-29, kind: norm}
    replace: {device: \"cuda:0\", format: f32}
  - match: {layers: 0-29, kind: gate}
    replace: {device: \"cuda:0\", format: f32}
  - match: {layers: 0-29}
    replace: {device: \"cuda:0\", format: bf16}
  - match: {name: '.*'}
    replace: {device: cpu, format: gguf}
";
    let p = parse(text)
        .unwrap()
        .place(&Preset::DeepSeekV3.config())
        .unwrap();
    let ctx = 1000;
    let reserve = 3 << 30;
    let mem = p.memory(ctx, reserve);
    let (cpu, gpu) = (mem[0], mem[1]);
    assert_eq!((cpu.device, gpu.device), (Device::Cpu, Device::Cuda(0)));
    // 576 latent + rope values a position: bf16 on the GPU, f32 on the CPU.
    assert_eq!(gpu.kv_cache, 30 * 1000 * 576 * 2);
    assert_eq!(cpu.kv_cache, 31 * 1000 * 576 * 4);
    // One V3 expert layer in int4_g128: 3 x 256 x 2048 x 7168 weights, 4 bits + f16 / 128.
    let elems: u64 = 3 * 256 * 2048 * 7168;
    // two slots: one layer copied while the other computes
    assert_eq!(gpu.prefill_staging, 2 * (elems / 2 + elems / 128 * 2));
    assert_eq!((gpu.reserve, cpu.reserve), (reserve, 0));
    assert_eq!(gpu.weights, p.bytes_per_device()[&Device::Cuda(0)]);
    assert_eq!(
        gpu.total(),
        gpu.weights + gpu.kv_cache + gpu.prefill_staging + reserve
    );
    // Fits exactly at its total, not a byte less.
    Placement::check_fits(&mem, gpu.total()).unwrap();
    let e = Placement::check_fits(&mem, gpu.total() - 1).unwrap_err();
    assert!(
        matches!(
            e,
            PlacementError::DoesNotFit {
                device: Device::Cuda(0),
                ..
            }
        ),
        "{e}"
    );
    assert_eq!(gpu.prefill_resident, 0);
    // Resident prefill experts: the same number in each of the 58 MoE layers, in what the
    // GPU has left; none left, none fit; the CPU prefills nothing.
    let per_expert = (elems / 2 + elems / 128 * 2) / 256;
    let layers = 58;
    let room = |extra: u64| p.resident_experts_room(&gpu, gpu.total() + extra);
    assert_eq!(room(0), Some((0, 256)));
    assert_eq!(room(10 * layers * per_expert), Some((10, 256)));
    assert_eq!(room(11 * layers * per_expert - 1), Some((10, 256)));
    assert_eq!(room(u64::MAX / 2), Some((256, 256)));
    assert_eq!(p.resident_experts_room(&gpu, 0), Some((0, 256)));
    assert_eq!(p.resident_experts_room(&cpu, u64::MAX), None);

    // The rules' own resident experts count on the GPU, and the room stays what fits in all.
    let with = parse(&text.replace(
        "prefill_threshold: 1024}",
        "prefill_threshold: 1024, prefill_resident: 10}",
    ))
    .unwrap()
    .place(&Preset::DeepSeekV3.config())
    .unwrap();
    let gpu10 = with.memory(ctx, reserve)[1];
    assert_eq!(gpu10.prefill_resident, 10 * layers * per_expert);
    assert_eq!(gpu10.total(), gpu.total() + gpu10.prefill_resident);
    let room = |extra: u64| with.resident_experts_room(&gpu10, gpu.total() + extra);
    assert_eq!(room(12 * layers * per_expert), Some((12, 256)));
    let e = Placement::check_fits(&[gpu10], gpu10.total() - 1).unwrap_err();
    assert!(e.to_string().contains("resident prefill experts"), "{e}");

    // Decode on the resident experts stages a step's 8 choices: 8 experts more of staging.
    let decode = parse(&text.replace(
        "prefill_threshold: 1024}",
        "prefill_threshold: 1024, prefill_resident: 10, decode_resident: true}",
    ))
    .unwrap()
    .place(&Preset::DeepSeekV3.config())
    .unwrap();
    let gpu_d = decode.memory(ctx, reserve)[1];
    assert_eq!(
        gpu_d.prefill_staging,
        gpu10.prefill_staging + 8 * per_expert
    );
    assert_eq!(gpu_d.total(), gpu10.total() + 8 * per_expert);
}
