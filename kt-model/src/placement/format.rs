//! The weight formats a rule can ask for, and the bytes a tensor takes in each.
//!
//! - `gguf`: every tensor as the GGUF file stores it (a Q4_K_M file mixes q4_K, q6_K,
//!   q5_0, q8_0 and f32): no conversion at load.
//! - a ggml type name (`q4_k`, `q8_0`, `bf16`, `f16`, `f32`, ...): converted at load to
//!   that GGUF block format, row-major as ggml stores it.
//! - `int4_g128`: symmetric int4 with one f16 scale per 128 reduction elements, repacked
//!   for the GPU's W4A16 (Marlin-like) GEMM (`kt_kernels::cuda::w4a16`).
//! - `int8_amx`, `int4_amx`: kt's repacked CPU expert layouts (16-row panels for AMX and
//!   AVX512-VNNI, one f16 scale per 16 rows per 128 reduction elements;
//!   `kt_kernels::cpu::moe::repack`).
//!
//! Vectors (1-D tensors: norm weights, the router's score bias) are held in f32 whatever
//! the format, except under `gguf`, which keeps them as stored.

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;

use kt_kernels::cpu::moe::repack::{RepackFormat, PANEL};
use kt_kernels::quant::QType;
use schemars::{json_schema, JsonSchema, Schema, SchemaGenerator};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Reduction elements per scale of `int4_g128` (`kt_kernels::cuda::w4a16::GROUP`, which
/// exists only with the `cuda` feature; planning must work without it, and a test of the
/// `cuda` build checks the two agree).
pub const W4A16_GROUP: usize = 128;
/// Output rows per tile of the W4A16 GEMM (`kt_kernels::cuda::w4a16::TILE_N`): a matrix's
/// output count must be a multiple of it.
pub const W4A16_TILE_N: usize = 64;
/// The scale group of the `*_amx` layouts.
pub const AMX_GROUP: usize = 128;

/// A weight format of a placed module (see the module docs for each).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WeightFormat {
    Gguf,
    Ggml(QType),
    Int4G128,
    Int8Amx,
    Int4Amx,
}

impl WeightFormat {
    /// Every format name a rule file accepts (for error messages and the schema).
    pub fn names() -> Vec<String> {
        let mut v = vec!["gguf".to_owned()];
        v.extend(QType::WEIGHTS.iter().map(|t| t.name().to_ascii_lowercase()));
        v.extend(["int4_g128", "int8_amx", "int4_amx"].map(String::from));
        v
    }

    /// Bytes of one tensor of ggml `dims` (`dims[0]` is the row length, the reduction)
    /// stored as `stored`, once converted to this format; `Err` says why the shape does
    /// not fit the format.
    pub fn tensor_bytes(self, stored: QType, dims: &[usize]) -> Result<u64, String> {
        let row_len = *dims.first().ok_or("a tensor without dimensions")?;
        let n_rows: usize = dims[1..].iter().product();
        let ggml = |t: QType| -> Result<u64, String> {
            let row = t.row_bytes(row_len).map_err(|e| e.to_string())?;
            Ok(row as u64 * n_rows as u64)
        };
        if dims.len() == 1 {
            return match self {
                WeightFormat::Gguf => ggml(stored),
                _ => ggml(QType::F32),
            };
        }
        // Matrices of a stacked tensor (experts, heads): `dims[1]` outputs each.
        let (outputs, matrices) = (dims[1], dims[2..].iter().product::<usize>());
        match self {
            WeightFormat::Gguf => ggml(stored),
            WeightFormat::Ggml(t) => ggml(t),
            WeightFormat::Int4G128 => {
                if !row_len.is_multiple_of(W4A16_GROUP) || !outputs.is_multiple_of(W4A16_TILE_N) {
                    return Err(format!(
                        "int4_g128 needs rows of a multiple of {W4A16_GROUP} elements and a \
                         multiple of {W4A16_TILE_N} outputs per matrix; this one is \
                         {row_len} x {outputs}"
                    ));
                }
                let elems = (row_len * n_rows) as u64;
                Ok(elems / 2 + 2 * (elems / W4A16_GROUP as u64))
            }
            WeightFormat::Int8Amx | WeightFormat::Int4Amx => {
                let repack = self.repack().expect("AMX formats have a repacked layout");
                repack.check(outputs, row_len).map_err(|e| e.to_string())?;
                // f16 scales after each panel's data.
                let panel = repack.panel_bytes(row_len) + 2 * repack.panel_scales(row_len);
                Ok((outputs / PANEL * panel * matrices) as u64)
            }
        }
    }

    /// The CPU repacked layout of the `*_amx` formats.
    pub fn repack(self) -> Option<RepackFormat> {
        match self {
            WeightFormat::Int8Amx => Some(RepackFormat::Int8 { group: AMX_GROUP }),
            WeightFormat::Int4Amx => Some(RepackFormat::Int4 { group: AMX_GROUP }),
            _ => None,
        }
    }
}

impl fmt::Display for WeightFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WeightFormat::Gguf => f.write_str("gguf"),
            WeightFormat::Ggml(t) => f.write_str(&t.name().to_ascii_lowercase()),
            WeightFormat::Int4G128 => f.write_str("int4_g128"),
            WeightFormat::Int8Amx => f.write_str("int8_amx"),
            WeightFormat::Int4Amx => f.write_str("int4_amx"),
        }
    }
}

impl FromStr for WeightFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<WeightFormat, String> {
        let f = match s {
            "gguf" => WeightFormat::Gguf,
            "int4_g128" => WeightFormat::Int4G128,
            "int8_amx" => WeightFormat::Int8Amx,
            "int4_amx" => WeightFormat::Int4Amx,
            // Lower case only, as the schema's enum lists them.
            _ => match QType::from_name(s).filter(|t| QType::WEIGHTS.contains(t)) {
                Some(t) if s == s.to_ascii_lowercase() => WeightFormat::Ggml(t),
                _ => {
                    return Err(format!(
                        "unknown weight format {s:?}; expected one of {}",
                        WeightFormat::names().join(", ")
                    ))
                }
            },
        };
        Ok(f)
    }
}

impl Serialize for WeightFormat {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for WeightFormat {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<WeightFormat, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl JsonSchema for WeightFormat {
    fn schema_name() -> Cow<'static, str> {
        "WeightFormat".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "How the module's weights are held on its device: `gguf` (as stored in \
                the GGUF file), a ggml type (converted at load), `int4_g128` (GPU W4A16), \
                `int8_amx` / `int4_amx` (CPU repacked expert panels, group 128).",
            "type": "string",
            "enum": WeightFormat::names(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The mirrored W4A16 constants are the kernel's (checked where the kernel is built).
    #[cfg(feature = "cuda")]
    #[test]
    fn w4a16_constants_are_the_kernels() {
        assert_eq!(W4A16_GROUP, kt_kernels::cuda::w4a16::GROUP);
        assert_eq!(W4A16_TILE_N, kt_kernels::cuda::w4a16::TILE_N);
    }

    #[test]
    fn every_listed_name_parses_back_to_itself() {
        for name in WeightFormat::names() {
            let f: WeightFormat = name.parse().unwrap();
            assert_eq!(f.to_string(), name);
        }
        for bad in ["Q4_K", "q8_k", "q8_1", "int4", "int8_amx_g64", ""] {
            assert!(bad.parse::<WeightFormat>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn bytes_follow_each_formats_block() {
        // A V3 routed-expert stack: 256 experts of 2048 outputs x 7168 inputs.
        let dims = [7168, 2048, 256];
        let elems = 7168u64 * 2048 * 256;
        let q4k = WeightFormat::Gguf.tensor_bytes(QType::Q4_K, &dims).unwrap();
        assert_eq!(q4k, elems / 256 * 144, "144-byte Q4_K super-blocks");
        let bf16 = WeightFormat::Ggml(QType::BF16);
        assert_eq!(bf16.tensor_bytes(QType::Q4_K, &dims).unwrap(), elems * 2);
        let i4 = WeightFormat::Int4G128
            .tensor_bytes(QType::Q4_K, &dims)
            .unwrap();
        assert_eq!(i4, elems / 2 + elems / 128 * 2, "4 bits + one f16 per 128");
        let i8 = WeightFormat::Int8Amx
            .tensor_bytes(QType::Q4_K, &dims)
            .unwrap();
        assert_eq!(i8, elems + elems / 128 * 2, "1 byte + one f16 per 128");
        let i4amx = WeightFormat::Int4Amx
            .tensor_bytes(QType::Q4_K, &dims)
            .unwrap();
        assert_eq!(i4amx, i4, "same bits as int4_g128, another layout");
        // Vectors stay f32 unless kept as stored.
        assert_eq!(bf16.tensor_bytes(QType::F32, &[7168]).unwrap(), 7168 * 4);
        assert_eq!(
            WeightFormat::Gguf.tensor_bytes(QType::F16, &[64]).unwrap(),
            128
        );
    }

    #[test]
    fn shapes_a_format_cannot_hold_are_errors() {
        // V2-Lite's 1408-wide expert rows are no whole Q4_K super-block...
        let q4k = WeightFormat::Ggml(QType::Q4_K);
        assert!(q4k.tensor_bytes(QType::Q5_0, &[1408, 2048, 64]).is_err());
        // ... and V2's 160 router outputs no whole W4A16 tile.
        let e = WeightFormat::Int4G128
            .tensor_bytes(QType::F32, &[5120, 160])
            .unwrap_err();
        assert!(e.contains("160"), "{e}");
        assert!(WeightFormat::Int8Amx
            .tensor_bytes(QType::Q4_K, &[100, 64])
            .is_err());
    }
}
