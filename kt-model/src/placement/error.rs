//! Errors of rule files and placement. Each names the rule file (its path, or the name
//! given with its text), the line where known, and the rule, field or module at fault.

use std::path::PathBuf;

use super::device::Device;
use super::modules::ModuleKind;

/// Where a rule is: `rule 3 (line 27)`, or `rule 3` when its line is unknown.
fn at_rule(rule: &usize, line: &Option<usize>) -> String {
    match line {
        Some(l) => format!("rule {} (line {l})", rule + 1),
        None => format!("rule {}", rule + 1),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PlacementError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// Not valid YAML, or not the rule format (unknown field or operator, bad value): the
    /// message has the field's path and the line and column.
    /// The model's own files (GGUF metadata) were wrong.
    #[error(transparent)]
    Model(#[from] crate::ModelError),

    #[error("{origin}: {message}")]
    Yaml {
        origin: String,
        line: Option<usize>,
        column: Option<usize>,
        message: String,
    },

    /// A field that parsed but is inconsistent with the rest of the file.
    #[error("{origin}: {}: {field}: {reason}", at_rule(rule, line))]
    Rule {
        origin: String,
        /// Index in `rules` (0-based; messages count from 1).
        rule: usize,
        line: Option<usize>,
        field: &'static str,
        reason: String,
    },

    #[error("{origin}: {field}: {reason}")]
    File {
        origin: String,
        field: &'static str,
        reason: String,
    },

    /// A rule matched a module it cannot place (operator, format or device).
    #[error(
        "{origin}: {}: cannot place module {module} ({kind}): {reason}",
        at_rule(rule, line)
    )]
    BadMatch {
        origin: String,
        rule: usize,
        line: Option<usize>,
        module: String,
        kind: ModuleKind,
        reason: String,
    },

    #[error("{origin}: no rule matches module {module} ({kind}{}); add a rule for it (the first matching rule places a module)", match layer { Some(l) => format!(", layer {l}"), None => String::new() })]
    Unmatched {
        origin: String,
        module: String,
        kind: ModuleKind,
        layer: Option<usize>,
    },

    #[error(
        "tensor {tensor} belongs to no module kt knows (or to a layer past the config's last)"
    )]
    UnknownTensor { tensor: String },

    #[error("the model has no {kind} module{}", match layer { Some(l) => format!(" in layer {l}"), None => String::new() })]
    MissingModule {
        layer: Option<usize>,
        kind: ModuleKind,
    },

    #[error(
        "{device} needs {need_gib:.2} GiB (weights {weights_gib:.2}, KV cache {kv_gib:.2}, \
         prefill staging {staging_gib:.2}, resident prefill experts {resident_gib:.2}, activation reserve \
         {reserve_gib:.2}) but has {have_gib:.2} GiB"
    )]
    DoesNotFit {
        device: Device,
        need_gib: f64,
        weights_gib: f64,
        kv_gib: f64,
        staging_gib: f64,
        resident_gib: f64,
        reserve_gib: f64,
        have_gib: f64,
    },
}

pub type Result<T, E = PlacementError> = std::result::Result<T, E>;
