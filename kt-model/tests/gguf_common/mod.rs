//! Helpers shared by kt-model's GGUF, config and tensor tests: fixture paths, a
//! hand-assembled small GGUF whose every field position is known (built without the
//! crate's writer, so reader tests do not lean on it), and rewriting a GGUF.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use kt_kernels::quant::QType;
use kt_kernels::util::SplitMix64;
use kt_model::gguf::{Gguf, GgufWriter, Value};
use sha2::{Digest, Sha256};

/// `tests/fixtures/tiny-dsv3` of the repository (the BF16, Q4_K_M, Q5_K_M and Q2_K GGUFs).
pub fn dsv3_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/tiny-dsv3")
}

/// `tests/fixtures/tiny-dsv2` of the repository: every file of the shared fixture but its
/// BF16 GGUF ([`dsv2_bf16`]).
pub fn dsv2_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/tiny-dsv2")
}

/// tiny-dsv2's BF16 GGUF (17.7 MB, left out of the repository to keep it small) from the
/// read-only shared fixtures: `$KT_SHARED_FIXTURES/tiny-dsv2`, else the first
/// `shared/fixtures/tiny-dsv2` beside the checkout or one of its parents. `None`, with a note
/// on stderr, where there is none, so the test command passes on a machine without them; with
/// `KT_REQUIRE_SHARED_FIXTURES=1` a missing file fails the test instead (as
/// `KT_REQUIRE_GPU=1` does for the GPU tests).
pub fn dsv2_bf16(test: &str) -> Option<PathBuf> {
    const FILE: &str = "tiny-dsv2/tiny-dsv2-bf16.gguf";
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let (found, looked) = match std::env::var_os("KT_SHARED_FIXTURES") {
        Some(dir) => {
            let path = PathBuf::from(dir).join(FILE);
            let looked = format!("at {} ($KT_SHARED_FIXTURES)", path.display());
            (Some(path).filter(|p| p.is_file()), looked)
        }
        None => (
            manifest
                .ancestors()
                .map(|a| a.join("shared/fixtures").join(FILE))
                .find(|p| p.is_file()),
            format!("in shared/fixtures above {}", manifest.display()),
        ),
    };
    if found.is_none() {
        let why = format!("{test}: no {FILE} {looked}");
        if std::env::var_os("KT_REQUIRE_SHARED_FIXTURES").is_some_and(|v| v == "1") {
            panic!("{why} (KT_REQUIRE_SHARED_FIXTURES=1)");
        }
        eprintln!("skipped: {why}");
    }
    found
}

pub fn open(path: &Path) -> Gguf {
    Gguf::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Bytes that are not all zeros (nor any other constant).
pub fn random_bytes(n: usize, seed: u64) -> Vec<u8> {
    let mut rng = SplitMix64::new(seed);
    (0..n).map(|_| rng.below(256) as u8).collect()
}

/// A tensor to write: name, type, dims (ggml order), bytes.
pub type TensorSpec = (String, QType, Vec<usize>, Vec<u8>);

/// Writes a GGUF with the crate's writer to memory.
pub fn write_gguf(metadata: &[(String, Value)], tensors: &[TensorSpec]) -> Vec<u8> {
    let mut w = GgufWriter::new();
    for (k, v) in metadata {
        w.add(k.clone(), v.clone()).unwrap();
    }
    for (name, qtype, dims, _) in tensors {
        w.add_tensor_info(name.clone(), *qtype, dims).unwrap();
    }
    let mut data = w.write_header(Vec::new()).unwrap();
    for (name, _, _, bytes) in tensors {
        data.write_tensor(name, bytes).unwrap();
    }
    data.finish().unwrap()
}

/// The metadata and tensors of `g`, for editing and rewriting.
pub fn contents(g: &Gguf) -> (Vec<(String, Value)>, Vec<TensorSpec>) {
    let meta = g
        .metadata()
        .iter()
        .map(|(k, v)| (k.to_owned(), v.clone()))
        .collect();
    let tensors = g
        .tensors()
        .map(|t| (t.name.to_owned(), t.qtype, t.dims.to_vec(), t.data.to_vec()))
        .collect();
    (meta, tensors)
}

pub fn set_meta(meta: &mut Vec<(String, Value)>, key: &str, value: impl Into<Value>) {
    let value = value.into();
    match meta.iter_mut().find(|(k, _)| k == key) {
        Some(entry) => entry.1 = value,
        None => meta.push((key.to_owned(), value)),
    }
}

pub fn remove_meta(meta: &mut Vec<(String, Value)>, key: &str) {
    let before = meta.len();
    meta.retain(|(k, _)| k != key);
    assert_eq!(meta.len() + 1, before, "key {key} was not there");
}

// ---- a hand-assembled small GGUF ------------------------------------------------

/// A small GGUF v3 with every value type, nested arrays and three tensors of
/// different types, assembled byte by byte; `field(name)` is the byte position of a
/// named header field and `sections` the boundaries between sections.
pub struct RawGguf {
    pub bytes: Vec<u8>,
    fields: Vec<(String, usize)>,
    pub sections: Vec<(&'static str, usize)>,
    /// (name, qtype, dims, data) of the tensors, in file order.
    pub tensors: Vec<TensorSpec>,
}

impl RawGguf {
    pub fn field(&self, name: &str) -> usize {
        self.fields
            .iter()
            .find(|(n, _)| n == name)
            .unwrap_or_else(|| panic!("no field {name}"))
            .1
    }

    pub fn field_names(&self) -> impl Iterator<Item = &str> {
        self.fields.iter().map(|(n, _)| n.as_str())
    }

    /// A copy with the u64 at `field` replaced.
    pub fn with_u64(&self, field: &str, v: u64) -> Vec<u8> {
        let mut b = self.bytes.clone();
        let p = self.field(field);
        b[p..p + 8].copy_from_slice(&v.to_le_bytes());
        b
    }

    /// A copy with the u32 at `field` replaced.
    pub fn with_u32(&self, field: &str, v: u32) -> Vec<u8> {
        let mut b = self.bytes.clone();
        let p = self.field(field);
        b[p..p + 4].copy_from_slice(&v.to_le_bytes());
        b
    }

    pub fn read_u64(&self, field: &str) -> u64 {
        let p = self.field(field);
        u64::from_le_bytes(self.bytes[p..p + 8].try_into().unwrap())
    }

    /// End of the last tensor's data (the file continues with padding).
    pub fn data_end(&self) -> usize {
        self.sections
            .iter()
            .find(|(n, _)| *n == "data end")
            .unwrap()
            .1
    }
}

struct Asm {
    b: Vec<u8>,
    fields: Vec<(String, usize)>,
}

impl Asm {
    fn mark(&mut self, field: &str) {
        self.fields.push((field.to_owned(), self.b.len()));
    }
    fn u32(&mut self, field: &str, v: u32) {
        if !field.is_empty() {
            self.mark(field);
        }
        self.b.extend_from_slice(&v.to_le_bytes());
    }
    fn u64(&mut self, field: &str, v: u64) {
        if !field.is_empty() {
            self.mark(field);
        }
        self.b.extend_from_slice(&v.to_le_bytes());
    }
    fn string(&mut self, field: &str, s: &str) {
        self.u64(field, s.len() as u64);
        self.b.extend_from_slice(s.as_bytes());
    }
    fn raw(&mut self, bytes: &[u8]) {
        self.b.extend_from_slice(bytes);
    }
    fn kv(&mut self, i: usize, key: &str, type_id: u32) {
        self.string(&format!("kv{i}.key_len"), key);
        self.u32(&format!("kv{i}.type"), type_id);
    }
    fn pad(&mut self, alignment: usize) {
        while !self.b.len().is_multiple_of(alignment) {
            self.b.push(0);
        }
    }
}

/// The value of each scalar key in [`raw_gguf`], for checking what was read.
pub fn raw_scalars() -> Vec<(&'static str, Value)> {
    vec![
        ("general.architecture", Value::from("deepseek2")),
        ("test.u8", Value::U8(200)),
        ("test.i8", Value::I8(-100)),
        ("test.u16", Value::U16(60000)),
        ("test.i16", Value::I16(-30000)),
        ("test.u32", Value::U32(4_000_000_000)),
        ("test.i32", Value::I32(-2_000_000_000)),
        ("test.u64", Value::U64(1 << 40)),
        ("test.i64", Value::I64(-(1 << 40))),
        ("test.f32", Value::F32(1.5e-6)),
        ("test.f64", Value::F64(-2.25e100)),
        ("test.bool", Value::Bool(true)),
    ]
}

pub fn raw_gguf() -> RawGguf {
    let tensors: Vec<TensorSpec> = vec![
        (
            "blk.0.attn_q_a.weight".into(),
            QType::F32,
            vec![8, 3],
            random_bytes(8 * 3 * 4, 1),
        ),
        (
            "w.q4_k".into(),
            QType::Q4_K,
            vec![256, 2],
            random_bytes(2 * 144, 2),
        ),
        (
            "w.q8_0".into(),
            QType::Q8_0,
            vec![32, 2, 2],
            random_bytes(4 * 34, 3),
        ),
    ];
    let mut a = Asm {
        b: Vec::new(),
        fields: Vec::new(),
    };
    let mut sections = Vec::new();
    a.raw(b"GGUF");
    a.u32("version", 3);
    a.u64("n_tensors", tensors.len() as u64);
    let scalars = raw_scalars();
    let n_kv = scalars.len() + 3;
    a.u64("n_kv", n_kv as u64);
    sections.push(("header end", a.b.len()));

    for (i, (key, v)) in scalars.iter().enumerate() {
        a.kv(i, key, v.value_type().id());
        match v {
            Value::U8(x) => a.raw(&x.to_le_bytes()),
            Value::I8(x) => a.raw(&x.to_le_bytes()),
            Value::U16(x) => a.raw(&x.to_le_bytes()),
            Value::I16(x) => a.raw(&x.to_le_bytes()),
            Value::U32(x) => a.raw(&x.to_le_bytes()),
            Value::I32(x) => a.raw(&x.to_le_bytes()),
            Value::U64(x) => a.raw(&x.to_le_bytes()),
            Value::I64(x) => a.raw(&x.to_le_bytes()),
            Value::F32(x) => a.raw(&x.to_le_bytes()),
            Value::F64(x) => a.raw(&x.to_le_bytes()),
            Value::Bool(x) => {
                a.mark("bool.byte");
                a.raw(&[u8::from(*x)]);
            }
            Value::String(s) => a.string(&format!("kv{i}.str_len"), s),
            Value::Array(_) => unreachable!(),
        }
    }
    let mut i = scalars.len();
    // An array of strings.
    a.kv(i, "test.strings", 9);
    a.u32("strings.elem_type", 8);
    a.u64("strings.len", 3);
    for s in ["a", "bc", "d\u{e9}f"] {
        a.string("", s);
    }
    i += 1;
    // An array of arrays: [[1u32, 2u32], ["x"]].
    a.kv(i, "test.nested", 9);
    a.u32("nested.elem_type", 9);
    a.u64("nested.len", 2);
    a.u32("nested0.elem_type", 4);
    a.u64("nested0.len", 2);
    a.u32("", 1);
    a.u32("", 2);
    a.u32("nested1.elem_type", 8);
    a.u64("nested1.len", 1);
    a.string("", "x");
    i += 1;
    a.kv(i, "general.alignment", 4);
    a.u32("alignment", 32);
    sections.push(("metadata end", a.b.len()));

    let mut offset = 0u64;
    for (t, (name, qtype, dims, data)) in tensors.iter().enumerate() {
        a.string(&format!("t{t}.name_len"), name);
        a.u32(&format!("t{t}.n_dims"), dims.len() as u32);
        for (d, &ne) in dims.iter().enumerate() {
            a.u64(&format!("t{t}.ne{d}"), ne as u64);
        }
        a.u32(&format!("t{t}.type"), qtype.ggml_id());
        a.u64(&format!("t{t}.offset"), offset);
        offset += (data.len() as u64).next_multiple_of(32);
    }
    sections.push(("tensor infos end", a.b.len()));
    a.pad(32);
    sections.push(("data start", a.b.len()));
    for (t, (_, _, _, data)) in tensors.iter().enumerate() {
        if t > 0 {
            a.pad(32);
        }
        a.raw(data);
    }
    sections.push(("data end", a.b.len()));
    a.pad(32);
    RawGguf {
        bytes: a.b,
        fields: a.fields,
        sections,
        tensors,
    }
}
