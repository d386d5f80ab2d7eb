//! Where a module runs: the CPU or one CUDA GPU, written `cpu` / `cuda:N` in rule files.

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;

use schemars::{json_schema, JsonSchema, Schema, SchemaGenerator};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The pattern the schema gives device names (what [`Device::from_str`] accepts).
const DEVICE_PATTERN: &str = "^(cpu|cuda:[0-9]+)$";

/// A device of the machine. Ordered CPU first, then GPUs by index (the order of reports).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Device {
    Cpu,
    /// The CUDA device of this index (as `CUDA_VISIBLE_DEVICES` numbers them).
    Cuda(u32),
}

impl Device {
    pub fn is_gpu(self) -> bool {
        matches!(self, Device::Cuda(_))
    }
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Device::Cpu => f.write_str("cpu"),
            Device::Cuda(i) => write!(f, "cuda:{i}"),
        }
    }
}

impl FromStr for Device {
    type Err = String;

    fn from_str(s: &str) -> Result<Device, String> {
        if s == "cpu" {
            return Ok(Device::Cpu);
        }
        let bad = || format!("device {s:?}: expected `cpu` or `cuda:N` (e.g. `cuda:0`)");
        let index = s.strip_prefix("cuda:").ok_or_else(bad)?;
        // `u32::from_str` takes a leading `+`; a device index is digits only.
        if index.is_empty() || !index.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        index.parse().map(Device::Cuda).map_err(|_| bad())
    }
}

impl Serialize for Device {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Device {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Device, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl JsonSchema for Device {
    fn schema_name() -> Cow<'static, str> {
        "Device".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "`cpu`, or `cuda:N` for the CUDA device of index N.",
            "type": "string",
            "pattern": DEVICE_PATTERN,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_what_it_prints_and_nothing_else() {
        for d in [Device::Cpu, Device::Cuda(0), Device::Cuda(7)] {
            assert_eq!(d.to_string().parse::<Device>(), Ok(d));
        }
        for bad in [
            "", "CPU", "cuda", "cuda:", "cuda:+1", "cuda:-1", "gpu:0", "cuda:0 ",
        ] {
            assert!(bad.parse::<Device>().is_err(), "{bad:?}");
        }
        let re = regex::Regex::new(DEVICE_PATTERN).unwrap();
        assert!(re.is_match("cuda:12") && re.is_match("cpu") && !re.is_match("cuda:x"));
    }
}
