//! The rule file: its serde types (the JSON Schema is generated from them) and its
//! parsing, with the checks that need the whole file (devices in scope, formats allowed
//! for the operator and device).
//!
//! ```yaml
//! description: DeepSeek-V3, routed experts on the CPU, the rest on one GPU
//! models: [deepseek-v3]
//! devices: [cpu, "cuda:0"]
//! rules:
//!   - match: { kind: routed_experts }
//!     replace: { device: cpu, format: gguf }
//!   - match: { name: 'blk\.\d+\.attn_[kv]_b' }
//!     replace: { device: "cuda:0", format: bf16 }
//!   - match: { kind: norm }
//!     replace: { device: "cuda:0", format: f32 }
//!   # ...
//! ```

use std::borrow::Cow;
use std::fmt;
use std::path::Path;

use regex::Regex;
use schemars::{json_schema, JsonSchema, Schema, SchemaGenerator};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::device::Device;
use super::error::{PlacementError, Result};
use super::format::WeightFormat;
use super::modules::ModuleKind;
use super::operator::Operator;

/// A placement rule file.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "kt placement rules")]
pub struct RuleFile {
    /// What the file is for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// The synthetic presets (`kt-bench --model` names) the file is written for; the
    /// shipped-rules test places each of them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub models: Vec<String>,
    /// The devices the file uses; every device a rule names must be listed.
    pub devices: Vec<Device>,
    /// Ordered: the first rule whose `match` fits a module places it.
    pub rules: Vec<Rule>,
}

/// One rule: which modules, and where and how they run.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    #[serde(rename = "match")]
    pub matches: Match,
    pub replace: Replace,
}

/// Which modules a rule applies to: all the given conditions hold (at least one given).
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Match {
    /// Regex over the whole module name (anchored at both ends), e.g. `blk\.\d+\.ffn_exps`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<NameRegex>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<ModuleKind>,
    /// Layers `A-B` (inclusive) or `A`; modules outside layers (embedding, final norm,
    /// head) never match a rule with `layers`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layers: Option<LayerRange>,
}

/// Where and how the matched modules run.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Replace {
    /// The operator; by default the one that runs the module's kind.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub op: Option<Operator>,
    pub device: Device,
    pub format: WeightFormat,
    #[serde(default, skip_serializing_if = "Options::is_empty")]
    pub options: Options,
}

/// Operator options. Batches of more than `prefill_threshold` tokens run on
/// `prefill_device` (weights converted to `prefill_format`, the module's format by
/// default, and staged there one module at a time); smaller batches on `device`. Of routed
/// experts, `prefill_resident` experts (the first ones) stay on `prefill_device` for good,
/// so a prefill stages only the others (`kt-bench plan` prints how many fit), and the CPU
/// runs the last `prefill_cpu_share` of them (0 to 1) while the others are copied. With
/// `decode_resident: true`, single-token steps (decode) run the choices that fall on
/// resident experts there too, beside the CPU's (in `prefill_format`, as the prefill does).
/// With `defer_experts: N`, single-token steps of the hybrid executor hand each MoE layer's
/// `N` lowest-weighted CPU choices (the last MoE layer's excepted) to the next MoE layer,
/// whose output adds them, so the CPU computes them while the GPU runs that layer's
/// attention: an approximation of the model, off by default (kt-model's `deepseek/defer.rs`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Options {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefill_device: Option<Device>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefill_format: Option<WeightFormat>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub prefill_threshold: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefill_resident: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 1))]
    pub prefill_cpu_share: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decode_resident: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub defer_experts: Option<usize>,
}

impl Options {
    fn is_empty(&self) -> bool {
        *self == Options::default()
    }
}

/// A module-name regex, matched against the whole name.
#[derive(Clone)]
pub struct NameRegex {
    source: String,
    anchored: Regex,
}

impl NameRegex {
    pub fn new(source: &str) -> std::result::Result<NameRegex, regex::Error> {
        let anchored = Regex::new(&format!("^(?:{source})$"))?;
        Ok(NameRegex {
            source: source.to_owned(),
            anchored,
        })
    }

    pub fn is_match(&self, name: &str) -> bool {
        self.anchored.is_match(name)
    }

    pub fn as_str(&self) -> &str {
        &self.source
    }
}

impl fmt::Debug for NameRegex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NameRegex({:?})", self.source)
    }
}

impl Serialize for NameRegex {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(&self.source)
    }
}

impl<'de> Deserialize<'de> for NameRegex {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<NameRegex, D::Error> {
        let s = String::deserialize(d)?;
        NameRegex::new(&s).map_err(|e| serde::de::Error::custom(format!("bad name regex: {e}")))
    }
}

impl JsonSchema for NameRegex {
    fn schema_name() -> Cow<'static, str> {
        "NameRegex".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "A Rust `regex` matched against the whole module name.",
            "type": "string",
            "format": "regex",
        })
    }
}

/// Layers `first..=last`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LayerRange {
    pub first: usize,
    pub last: usize,
}

const LAYERS_PATTERN: &str = "^[0-9]+(-[0-9]+)?$";

impl LayerRange {
    pub fn contains(self, layer: usize) -> bool {
        (self.first..=self.last).contains(&layer)
    }
}

impl fmt::Display for LayerRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.first == self.last {
            write!(f, "{}", self.first)
        } else {
            write!(f, "{}-{}", self.first, self.last)
        }
    }
}

impl std::str::FromStr for LayerRange {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<LayerRange, String> {
        let bad = || format!("layers {s:?}: expected `A-B` (inclusive, A <= B) or `A`");
        let num = |t: &str| -> std::result::Result<usize, String> {
            if t.is_empty() || !t.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad());
            }
            t.parse().map_err(|_| bad())
        };
        let (first, last) = match s.split_once('-') {
            Some((a, b)) => (num(a)?, num(b)?),
            None => (num(s)?, num(s)?),
        };
        if first > last {
            return Err(bad());
        }
        Ok(LayerRange { first, last })
    }
}

impl Serialize for LayerRange {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for LayerRange {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<LayerRange, D::Error> {
        // `layers: 5` is a YAML integer: take it as well as the string forms.
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            One(usize),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::One(n) => Ok(LayerRange { first: n, last: n }),
            Raw::Text(s) => s.parse().map_err(serde::de::Error::custom),
        }
    }
}

impl JsonSchema for LayerRange {
    fn schema_name() -> Cow<'static, str> {
        "LayerRange".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "Layers `A-B` (inclusive) or one layer `A`.",
            "oneOf": [
                { "type": "string", "pattern": LAYERS_PATTERN },
                { "type": "integer", "minimum": 0 },
            ],
        })
    }
}

/// A parsed and checked rule file.
#[derive(Debug, Clone)]
pub struct RuleSet {
    origin: String,
    file: RuleFile,
    /// Line (1-based) where each rule starts, when the file writes `rules` as a block list.
    lines: Vec<Option<usize>>,
}

impl RuleSet {
    /// Parses rule-file text; `origin` names it in errors (usually its path).
    pub fn from_yaml_str(text: &str, origin: &str) -> Result<RuleSet> {
        let file: RuleFile = serde_yaml::from_str(text).map_err(|e| {
            let loc = e.location();
            PlacementError::Yaml {
                origin: origin.to_owned(),
                line: loc.as_ref().map(|l| l.line()),
                column: loc.as_ref().map(|l| l.column()),
                message: e.to_string(),
            }
        })?;
        let mut lines = rule_lines(text);
        lines.resize(file.rules.len(), None);
        let set = RuleSet {
            origin: origin.to_owned(),
            file,
            lines,
        };
        set.check()?;
        Ok(set)
    }

    /// Reads and parses a rule file.
    pub fn from_file(path: impl AsRef<Path>) -> Result<RuleSet> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| PlacementError::Io {
            path: path.to_owned(),
            source,
        })?;
        RuleSet::from_yaml_str(&text, &path.display().to_string())
    }

    pub fn origin(&self) -> &str {
        &self.origin
    }

    pub fn file(&self) -> &RuleFile {
        &self.file
    }

    pub fn rules(&self) -> &[Rule] {
        &self.file.rules
    }

    pub fn devices(&self) -> &[Device] {
        &self.file.devices
    }

    /// The line where rule `i` starts, if known.
    pub fn line(&self, i: usize) -> Option<usize> {
        self.lines.get(i).copied().flatten()
    }

    /// An error about rule `i`'s `field`.
    pub(crate) fn rule_error(
        &self,
        i: usize,
        field: &'static str,
        reason: String,
    ) -> PlacementError {
        PlacementError::Rule {
            origin: self.origin.clone(),
            rule: i,
            line: self.line(i),
            field,
            reason,
        }
    }

    /// What can be checked without a model.
    fn check(&self) -> Result<()> {
        let file_err = |field, reason: String| PlacementError::File {
            origin: self.origin.clone(),
            field,
            reason,
        };
        let devices = &self.file.devices;
        if devices.is_empty() {
            return Err(file_err("devices", "is empty".into()));
        }
        for (i, d) in devices.iter().enumerate() {
            if devices[..i].contains(d) {
                return Err(file_err("devices", format!("{d} is listed twice")));
            }
        }
        if self.file.rules.is_empty() {
            return Err(file_err("rules", "is empty".into()));
        }
        let scope = devices
            .iter()
            .map(|d| d.to_string())
            .collect::<Vec<_>>()
            .join(", ");
        let in_scope = |i: usize, field, d: Device| {
            if devices.contains(&d) {
                Ok(())
            } else {
                Err(self.rule_error(
                    i,
                    field,
                    format!("{d} is not in the file's devices [{scope}]"),
                ))
            }
        };
        for (i, rule) in self.file.rules.iter().enumerate() {
            let (m, r) = (&rule.matches, &rule.replace);
            if m.name.is_none() && m.kind.is_none() && m.layers.is_none() {
                return Err(self.rule_error(
                    i,
                    "match",
                    "has no condition (name, kind or layers)".into(),
                ));
            }
            in_scope(i, "replace.device", r.device)?;
            // The operator, when the rule fixes it: check kind and formats now.
            let op = r.op.or(m.kind.map(Operator::for_kind));
            if let (Some(op), Some(kind)) = (r.op, m.kind) {
                if !op.runs(kind) {
                    return Err(self.rule_error(
                        i,
                        "replace.op",
                        format!(
                            "operator {} cannot run {kind} modules (use {})",
                            name(op),
                            name(Operator::for_kind(kind))
                        ),
                    ));
                }
            }
            if let Some(op) = op {
                check_format(self, i, "replace.format", op, r.device, r.format)?;
            }
            let o = &r.options;
            match (o.prefill_device, o.prefill_threshold) {
                (Some(_), Some(0)) => {
                    return Err(self.rule_error(
                        i,
                        "replace.options.prefill_threshold",
                        "is 0 (batches of more than this many tokens take the prefill path)".into(),
                    ))
                }
                (Some(d), Some(_)) => {
                    in_scope(i, "replace.options.prefill_device", d)?;
                    if let Some(f) = o.prefill_cpu_share.filter(|f| !(0.0..=1.0).contains(f)) {
                        return Err(self.rule_error(
                            i,
                            "replace.options.prefill_cpu_share",
                            format!("is {f}; a share of the experts lies in 0..=1"),
                        ));
                    }
                    if let Some(op) = op {
                        let f = o.prefill_format.unwrap_or(r.format);
                        check_format(self, i, "replace.options.prefill_format", op, d, f)?;
                    }
                }
                (None, None)
                    if o.prefill_format.is_none()
                        && o.prefill_resident.is_none()
                        && o.prefill_cpu_share.is_none()
                        && o.decode_resident.is_none() => {}
                _ => {
                    return Err(self.rule_error(
                        i,
                        "replace.options",
                        "prefill_device and prefill_threshold go together (prefill_format, prefill_resident, prefill_cpu_share and decode_resident only with them)".into(),
                    ))
                }
            }
            if o.decode_resident == Some(true) && o.prefill_resident.unwrap_or(0) == 0 {
                return Err(self.rule_error(
                    i,
                    "replace.options.decode_resident",
                    "needs resident experts (prefill_resident of at least 1)".into(),
                ));
            }
        }
        Ok(())
    }
}

/// The name of an operator as rule files write it.
pub(crate) fn name(op: Operator) -> String {
    match serde_json::to_value(op) {
        Ok(serde_json::Value::String(s)) => s,
        _ => unreachable!("unit variants serialize to strings"),
    }
}

pub(crate) fn check_format(
    set: &RuleSet,
    i: usize,
    field: &'static str,
    op: Operator,
    device: Device,
    format: WeightFormat,
) -> Result<()> {
    if op.allows(device, format) {
        return Ok(());
    }
    Err(set.rule_error(
        i,
        field,
        format!(
            "operator {} on {device} does not take format {format}; it takes {}",
            name(op),
            op.allowed_formats(device).join(", ")
        ),
    ))
}

/// The 1-based line of each item of the top-level `rules:` block list (best effort: a
/// flow-style list gives none, and errors then name the rule by number only).
fn rule_lines(text: &str) -> Vec<Option<usize>> {
    let mut out = Vec::new();
    let mut in_rules = false;
    let mut item_indent = None;
    for (n, line) in text.lines().enumerate() {
        let trimmed = line.trim_start();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let indent = line.len() - trimmed.len();
        if indent == 0 && !trimmed.starts_with('-') {
            in_rules = trimmed.trim_end() == "rules:" || trimmed.starts_with("rules: #");
            item_indent = None;
            continue;
        }
        if in_rules && trimmed.starts_with('-') && *item_indent.get_or_insert(indent) == indent {
            out.push(Some(n + 1));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rule_lines_find_block_items_only() {
        let text = "devices: [cpu]\nrules:\n  # a comment\n  - match: {kind: norm}\n    replace:\n      device: cpu\n  - match:\n      kind: gate\nmodels:\n  - x\n";
        assert_eq!(rule_lines(text), [Some(4), Some(7)]);
        assert!(rule_lines("rules: [{match: {kind: norm}}]").is_empty());
    }

    #[test]
    fn layer_ranges_parse_inclusive() {
        assert_eq!("3-60".parse(), Ok(LayerRange { first: 3, last: 60 }));
        assert_eq!("7".parse(), Ok(LayerRange { first: 7, last: 7 }));
        for bad in ["", "5-3", "a-b", "-3", "3-", "+3", "1-2-3"] {
            assert!(bad.parse::<LayerRange>().is_err(), "{bad:?}");
        }
        let re = Regex::new(LAYERS_PATTERN).unwrap();
        assert!(re.is_match("3-60") && re.is_match("0") && !re.is_match("3-"));
    }

    #[test]
    fn name_regexes_match_whole_names() {
        let r = NameRegex::new(r"blk\.\d+\.ffn_exps").unwrap();
        assert!(r.is_match("blk.3.ffn_exps"));
        assert!(!r.is_match("blk.3.ffn_exps_extra"));
        assert!(!r.is_match("xblk.3.ffn_exps"));
        let alt = NameRegex::new("output|token_embd").unwrap();
        assert!(
            alt.is_match("output") && alt.is_match("token_embd") && !alt.is_match("output_norm")
        );
    }
}
