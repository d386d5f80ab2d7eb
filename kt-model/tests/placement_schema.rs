//! The committed JSON Schema of rule files (`rule-schemas/rules.schema.json`) is the one
//! generated from the serde types, and it names every kind, operator and format the
//! parser accepts.

use std::path::PathBuf;

use kt_model::placement::{json_schema, ModuleKind, Operator, WeightFormat};

fn committed_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../rule-schemas/rules.schema.json")
}

#[test]
fn committed_schema_is_the_generated_one() {
    let path = committed_path();
    let committed =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert!(
        committed == json_schema(),
        "{} differs from the schema of the rule types; regenerate it with\n  \
         cargo run --release -p kt-bench -- plan --print-schema > rule-schemas/rules.schema.json",
        path.display()
    );
}

fn enum_of<'a>(schema: &'a serde_json::Value, def: &str) -> Vec<&'a str> {
    let d = &schema["$defs"][def];
    // Unit enums with doc comments become `oneOf` of `const`s; plain ones an `enum`.
    let values: Vec<&serde_json::Value> = match d.get("enum") {
        Some(e) => e.as_array().unwrap().iter().collect(),
        None => d["oneOf"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| &v["const"])
            .collect(),
    };
    values.into_iter().map(|v| v.as_str().unwrap()).collect()
}

#[test]
fn schema_names_every_kind_operator_and_format() {
    let schema: serde_json::Value = serde_json::from_str(&json_schema()).unwrap();
    let kinds = enum_of(&schema, "ModuleKind");
    let want: Vec<String> = ModuleKind::ALL.iter().map(|k| k.to_string()).collect();
    assert_eq!(kinds, want);
    let ops = enum_of(&schema, "Operator");
    assert_eq!(
        ops,
        [
            "embedding",
            "rms_norm",
            "mla",
            "moe_gate",
            "moe",
            "mlp",
            "linear"
        ]
    );
    for op in &ops {
        let parsed: Operator = serde_json::from_value(serde_json::json!(op)).unwrap();
        assert_eq!(serde_json::to_value(parsed).unwrap(), serde_json::json!(op));
    }
    let formats = enum_of(&schema, "WeightFormat");
    assert_eq!(formats, WeightFormat::names());
    assert!(
        formats.contains(&"int4_g128") && formats.contains(&"q4_k") && formats.contains(&"gguf")
    );
    // Unknown fields are refused everywhere the parser refuses them.
    for def in ["Rule", "Match", "Replace", "Options"] {
        assert_eq!(schema["$defs"][def]["additionalProperties"], false, "{def}");
    }
    assert_eq!(schema["additionalProperties"], false);
}
