//! The error type of kt-model. Every variant that comes from a file names the file
//! and the field, key or tensor that was wrong, so a bad model file can be fixed
//! without a debugger.

use std::path::PathBuf;

use kt_kernels::quant::QType;
use kt_kernels::KtError;

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    // ---- GGUF structure -------------------------------------------------------
    #[error("{}: bad magic {found:02x?}, expected \"GGUF\"", path.display())]
    BadMagic { path: PathBuf, found: [u8; 4] },

    #[error("{}: GGUF version {version} is not supported (only 2 and 3)", path.display())]
    UnsupportedVersion { path: PathBuf, version: u32 },

    #[error("{}: big-endian GGUF (version {version} byte-swapped) is not supported", path.display())]
    BigEndian { path: PathBuf, version: u32 },

    #[error("{}: {what}: needs bytes [{start}..{end}) but the file has {len} bytes", path.display())]
    Truncated {
        path: PathBuf,
        what: String,
        start: u64,
        end: u64,
        len: u64,
    },

    #[error(
        "{}: {what}: count {count} cannot fit: each needs at least {min_bytes_each} bytes \
         and only {remaining} bytes remain",
        path.display()
    )]
    CountTooLarge {
        path: PathBuf,
        what: String,
        count: u64,
        min_bytes_each: u64,
        remaining: u64,
    },

    #[error("{}: {what}: not valid UTF-8", path.display())]
    InvalidUtf8 { path: PathBuf, what: String },

    #[error("{}: {what}: unknown value type id {id}", path.display())]
    UnknownValueType {
        path: PathBuf,
        what: String,
        id: u32,
    },

    #[error("{}: {what}: bool byte is {byte}, expected 0 or 1", path.display())]
    BadBool {
        path: PathBuf,
        what: String,
        byte: u8,
    },

    #[error("{}: {what}: arrays nested deeper than {max_depth} levels", path.display())]
    NestingTooDeep {
        path: PathBuf,
        what: String,
        max_depth: usize,
    },

    #[error("{}: metadata key '{key}' appears twice", path.display())]
    DuplicateKey { path: PathBuf, key: String },

    #[error("{}: general.alignment = {value} is not a power of two", path.display())]
    BadAlignment { path: PathBuf, value: u64 },

    // ---- GGUF tensor infos ----------------------------------------------------
    #[error("{}: tensor '{tensor}': {n_dims} dimensions, expected 1 to 4", path.display())]
    TensorDims {
        path: PathBuf,
        tensor: String,
        n_dims: u32,
    },

    #[error("{}: tensor '{tensor}': ne[{index}] = {value}, must be in 1..=2^63-1", path.display())]
    TensorDim {
        path: PathBuf,
        tensor: String,
        index: usize,
        value: u64,
    },

    #[error("{}: tensor '{tensor}': shape {dims:?} has too many elements or bytes", path.display())]
    TensorSizeOverflow {
        path: PathBuf,
        tensor: String,
        dims: Vec<u64>,
    },

    #[error("{}: tensor '{tensor}': unknown ggml type id {id}", path.display())]
    UnknownTensorType {
        path: PathBuf,
        tensor: String,
        id: u32,
    },

    #[error(
        "{}: tensor '{tensor}': row length ne[0] = {ne0} is not a multiple of the {qtype} block \
         of {block} elements",
        path.display()
    )]
    TensorRowLength {
        path: PathBuf,
        tensor: String,
        qtype: QType,
        ne0: u64,
        block: usize,
    },

    #[error("{}: tensor '{tensor}': offset {offset} is not a multiple of the alignment {alignment}", path.display())]
    TensorMisaligned {
        path: PathBuf,
        tensor: String,
        offset: u64,
        alignment: u64,
    },

    #[error("{}: tensor '{tensor}': data [{start}..{end}) past end of file ({len} bytes)", path.display())]
    TensorPastEnd {
        path: PathBuf,
        tensor: String,
        start: u64,
        end: u64,
        len: u64,
    },

    #[error("{}: tensor '{tensor}' appears twice", path.display())]
    DuplicateTensor { path: PathBuf, tensor: String },

    // ---- split files ----------------------------------------------------------
    #[error("{}: split files: {reason}", path.display())]
    Split { path: PathBuf, reason: String },

    // ---- typed metadata access ------------------------------------------------
    #[error("{}: metadata key '{key}' is missing", path.display())]
    MissingKey { path: PathBuf, key: String },

    #[error("{}: metadata key '{key}' holds {found}, expected {expected}", path.display())]
    WrongType {
        path: PathBuf,
        key: String,
        expected: &'static str,
        found: String,
    },

    #[error("{}: metadata key '{key}' = {value} does not fit in {expected}", path.display())]
    OutOfRange {
        path: PathBuf,
        key: String,
        value: String,
        expected: &'static str,
    },

    #[error("{}: metadata key '{key}': {reason}", path.display())]
    BadValue {
        path: PathBuf,
        key: String,
        reason: String,
    },

    // ---- hyper-parameters -----------------------------------------------------
    #[error("{}: {source}", path.display())]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },

    #[error("{}: field '{field}': {reason}", path.display())]
    HfConfig {
        path: PathBuf,
        field: String,
        reason: String,
    },

    #[error("{origin}: hyper-parameter {field}: {reason}")]
    InvalidConfig {
        origin: String,
        field: &'static str,
        reason: String,
    },

    #[error("hyper-parameter {field} disagrees: GGUF has {gguf}, config.json has {hf}")]
    ConfigMismatch {
        field: &'static str,
        gguf: String,
        hf: String,
    },

    // ---- model tensors --------------------------------------------------------
    #[error("{}: tensor '{tensor}' is missing", path.display())]
    MissingTensor { path: PathBuf, tensor: String },

    #[error("{}: tensor '{tensor}': shape {found:?}, expected {expected:?} (ggml order, ne[0] first)", path.display())]
    TensorShape {
        path: PathBuf,
        tensor: String,
        found: Vec<usize>,
        expected: Vec<usize>,
    },

    #[error("{}: layer {layer}: {reason}", path.display())]
    TensorLayout {
        path: PathBuf,
        layer: usize,
        reason: String,
    },

    // ---- GGUF writer ----------------------------------------------------------
    #[error("GGUF writer: metadata key '{key}': {reason}")]
    WriterKey { key: String, reason: String },

    #[error("GGUF writer: tensor '{tensor}': {reason}")]
    WriterTensor { tensor: String, reason: String },

    #[error("GGUF writer: {reason}")]
    WriterState { reason: String },

    #[error("GGUF writer: {source}")]
    WriteIo {
        #[from]
        source: std::io::Error,
    },

    // ---- forward pass ---------------------------------------------------------
    #[error("input token {index}: id {token} is outside the vocabulary of {vocab}")]
    TokenOutOfRange {
        index: usize,
        token: u32,
        vocab: usize,
    },

    #[error(
        "KV cache full: {cached} cached positions + {new} new exceed its capacity of {capacity}"
    )]
    CacheFull {
        cached: usize,
        new: usize,
        capacity: usize,
    },

    #[error("KV cache does not fit the model: {reason}")]
    CacheMismatch { reason: String },

    #[error("forward pass: {reason}")]
    Forward { reason: String },

    #[error("tensor '{tensor}': {source}")]
    TensorKernel {
        tensor: String,
        #[source]
        source: KtError,
    },

    #[error(transparent)]
    Kernel(#[from] KtError),
}

pub type Result<T, E = ModelError> = std::result::Result<T, E>;
