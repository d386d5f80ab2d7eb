//! The key/value metadata of a GGUF file, in file order, with typed getters whose
//! errors name the file, the key and the type found.
//!
//! Integer getters accept any integer type whose value fits (converters disagree on
//! u32 vs i32 vs u64 for counts); `get_*` fails on a missing key, `opt_*` returns
//! `Ok(None)` for it and fails only on a wrong type or an out-of-range value.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::value::{Array, Value};
use crate::error::{ModelError, Result};

#[derive(Debug, Clone)]
pub struct Metadata {
    path: PathBuf,
    entries: Vec<(String, Value)>,
    index: HashMap<String, usize>,
}

impl PartialEq for Metadata {
    /// Same keys with the same values in the same order; the path is not compared.
    fn eq(&self, other: &Self) -> bool {
        self.entries == other.entries
    }
}

macro_rules! int_getters {
    ($($get:ident, $opt:ident => $t:ty),* $(,)?) => {$(
        pub fn $get(&self, key: &str) -> Result<$t> {
            self.$opt(key)?.ok_or_else(|| self.missing(key))
        }
        pub fn $opt(&self, key: &str) -> Result<Option<$t>> {
            self.int(key, stringify!($t))
        }
    )*};
}

impl Metadata {
    /// Builds the map; a key given twice is an error.
    pub(crate) fn new(path: &Path, entries: Vec<(String, Value)>) -> Result<Self> {
        let mut index = HashMap::with_capacity(entries.len());
        for (i, (key, _)) in entries.iter().enumerate() {
            if index.insert(key.clone(), i).is_some() {
                return Err(ModelError::DuplicateKey {
                    path: path.to_owned(),
                    key: key.clone(),
                });
            }
        }
        Ok(Metadata {
            path: path.to_owned(),
            entries,
            index,
        })
    }

    /// The file the metadata came from (named in errors).
    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn contains(&self, key: &str) -> bool {
        self.index.contains_key(key)
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.index.get(key).map(|&i| &self.entries[i].1)
    }

    /// Entries in file order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Value)> {
        self.entries.iter().map(|(k, v)| (k.as_str(), v))
    }

    int_getters!(
        get_u8, opt_u8 => u8,
        get_u16, opt_u16 => u16,
        get_u32, opt_u32 => u32,
        get_i32, opt_i32 => i32,
        get_u64, opt_u64 => u64,
        get_i64, opt_i64 => i64,
        get_usize, opt_usize => usize,
    );

    /// An f32 (or an f64, rounded to f32).
    pub fn get_f32(&self, key: &str) -> Result<f32> {
        self.opt_f32(key)?.ok_or_else(|| self.missing(key))
    }

    pub fn opt_f32(&self, key: &str) -> Result<Option<f32>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::F32(v)) => Ok(Some(*v)),
            Some(Value::F64(v)) => Ok(Some(*v as f32)),
            Some(v) => Err(self.wrong_type(key, "f32", v)),
        }
    }

    /// An f64 (or an f32, widened exactly).
    pub fn get_f64(&self, key: &str) -> Result<f64> {
        self.opt_f64(key)?.ok_or_else(|| self.missing(key))
    }

    pub fn opt_f64(&self, key: &str) -> Result<Option<f64>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::F32(v)) => Ok(Some(f64::from(*v))),
            Some(Value::F64(v)) => Ok(Some(*v)),
            Some(v) => Err(self.wrong_type(key, "f64", v)),
        }
    }

    pub fn get_bool(&self, key: &str) -> Result<bool> {
        self.opt_bool(key)?.ok_or_else(|| self.missing(key))
    }

    pub fn opt_bool(&self, key: &str) -> Result<Option<bool>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Bool(v)) => Ok(Some(*v)),
            Some(v) => Err(self.wrong_type(key, "bool", v)),
        }
    }

    pub fn get_str(&self, key: &str) -> Result<&str> {
        self.opt_str(key)?.ok_or_else(|| self.missing(key))
    }

    pub fn opt_str(&self, key: &str) -> Result<Option<&str>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::String(v)) => Ok(Some(v)),
            Some(v) => Err(self.wrong_type(key, "string", v)),
        }
    }

    pub fn get_array(&self, key: &str) -> Result<&Array> {
        self.opt_array(key)?.ok_or_else(|| self.missing(key))
    }

    pub fn opt_array(&self, key: &str) -> Result<Option<&Array>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Array(a)) => Ok(Some(a)),
            Some(v) => Err(self.wrong_type(key, "array", v)),
        }
    }

    /// An array of strings (a token list, merges, ...).
    pub fn get_str_array(&self, key: &str) -> Result<&[String]> {
        match self.get_array(key)? {
            Array::String(v) => Ok(v),
            a => Err(ModelError::WrongType {
                path: self.path.clone(),
                key: key.to_owned(),
                expected: "array of string",
                found: format!("array of {}", a.elem_type()),
            }),
        }
    }

    fn int<T: TryFrom<i128>>(&self, key: &str, expected: &'static str) -> Result<Option<T>> {
        let Some(v) = self.get(key) else {
            return Ok(None);
        };
        let Some(i) = v.as_int() else {
            return Err(self.wrong_type(key, expected, v));
        };
        T::try_from(i)
            .map(Some)
            .map_err(|_| ModelError::OutOfRange {
                path: self.path.clone(),
                key: key.to_owned(),
                value: v.describe(),
                expected,
            })
    }

    fn missing(&self, key: &str) -> ModelError {
        ModelError::MissingKey {
            path: self.path.clone(),
            key: key.to_owned(),
        }
    }

    fn wrong_type(&self, key: &str, expected: &'static str, found: &Value) -> ModelError {
        ModelError::WrongType {
            path: self.path.clone(),
            key: key.to_owned(),
            expected,
            found: found.describe(),
        }
    }
}
