//! GGUF metadata values and typed lookups that fail with the key's name.

use std::collections::HashMap;
use std::fmt;

/// A metadata value type id as stored in the file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ValueType {
    /// Unsigned 8-bit integer (id 0).
    U8,
    /// Signed 8-bit integer (id 1).
    I8,
    /// Unsigned 16-bit integer (id 2).
    U16,
    /// Signed 16-bit integer (id 3).
    I16,
    /// Unsigned 32-bit integer (id 4).
    U32,
    /// Signed 32-bit integer (id 5).
    I32,
    /// 32-bit float (id 6).
    F32,
    /// Bool, one byte 0 or 1 (id 7).
    Bool,
    /// UTF-8 string with a u64 length (id 8).
    String,
    /// Array: element type, u64 count, elements (id 9).
    Array,
    /// Unsigned 64-bit integer (id 10).
    U64,
    /// Signed 64-bit integer (id 11).
    I64,
    /// 64-bit float (id 12).
    F64,
}

impl ValueType {
    pub(crate) fn from_id(id: u32) -> Option<ValueType> {
        use ValueType::*;
        Some(match id {
            0 => U8,
            1 => I8,
            2 => U16,
            3 => I16,
            4 => U32,
            5 => I32,
            6 => F32,
            7 => Bool,
            8 => String,
            9 => Array,
            10 => U64,
            11 => I64,
            12 => F64,
            _ => return None,
        })
    }

    /// The id the file stores for this type.
    pub fn id(self) -> u32 {
        use ValueType::*;
        match self {
            U8 => 0,
            I8 => 1,
            U16 => 2,
            I16 => 3,
            U32 => 4,
            I32 => 5,
            F32 => 6,
            Bool => 7,
            String => 8,
            Array => 9,
            U64 => 10,
            I64 => 11,
            F64 => 12,
        }
    }

    /// The fewest bytes one value of this type can take in a file; used to reject counts that
    /// cannot fit in the bytes left before allocating anything for them.
    pub(crate) fn min_encoded_len(self) -> u64 {
        use ValueType::*;
        match self {
            U8 | I8 | Bool => 1,
            U16 | I16 => 2,
            U32 | I32 | F32 => 4,
            U64 | I64 | F64 => 8,
            String => 8,
            Array => 12,
        }
    }

    /// The type's name (`u32`, `string`, ...), as `inspect` shows it.
    pub fn name(self) -> &'static str {
        use ValueType::*;
        match self {
            U8 => "u8",
            I8 => "i8",
            U16 => "u16",
            I16 => "i16",
            U32 => "u32",
            I32 => "i32",
            F32 => "f32",
            Bool => "bool",
            String => "string",
            Array => "array",
            U64 => "u64",
            I64 => "i64",
            F64 => "f64",
        }
    }
}

impl fmt::Display for ValueType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One metadata value.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    /// A `u8`.
    U8(u8),
    /// An `i8`.
    I8(i8),
    /// A `u16`.
    U16(u16),
    /// An `i16`.
    I16(i16),
    /// A `u32`.
    U32(u32),
    /// An `i32`.
    I32(i32),
    /// An `f32`.
    F32(f32),
    /// A bool.
    Bool(bool),
    /// A string.
    String(String),
    /// An array keeps its element type so that empty arrays round-trip.
    Array(ValueType, Vec<Value>),
    /// A `u64`.
    U64(u64),
    /// An `i64`.
    I64(i64),
    /// An `f64`.
    F64(f64),
}

impl Value {
    /// This value's type.
    pub fn value_type(&self) -> ValueType {
        match self {
            Value::U8(_) => ValueType::U8,
            Value::I8(_) => ValueType::I8,
            Value::U16(_) => ValueType::U16,
            Value::I16(_) => ValueType::I16,
            Value::U32(_) => ValueType::U32,
            Value::I32(_) => ValueType::I32,
            Value::F32(_) => ValueType::F32,
            Value::Bool(_) => ValueType::Bool,
            Value::String(_) => ValueType::String,
            Value::Array(..) => ValueType::Array,
            Value::U64(_) => ValueType::U64,
            Value::I64(_) => ValueType::I64,
            Value::F64(_) => ValueType::F64,
        }
    }

    /// Any integer type, if the value is a non-negative integer that fits u64.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U8(v) => Some(v as u64),
            Value::U16(v) => Some(v as u64),
            Value::U32(v) => Some(v as u64),
            Value::U64(v) => Some(v),
            Value::I8(v) => u64::try_from(v).ok(),
            Value::I16(v) => u64::try_from(v).ok(),
            Value::I32(v) => u64::try_from(v).ok(),
            Value::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// Any integer type, if it fits i64.
    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            Value::U64(v) => i64::try_from(v).ok(),
            Value::I8(v) => Some(v as i64),
            Value::I16(v) => Some(v as i64),
            Value::I32(v) => Some(v as i64),
            Value::I64(v) => Some(v),
            _ => self.as_u64().map(|v| v as i64),
        }
    }

    /// Any float or integer type, as f64.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F32(v) => Some(v as f64),
            Value::F64(v) => Some(v),
            _ => self.as_i64().map(|v| v as f64),
        }
    }

    /// The string, if this is one.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    /// The bool, if this is one.
    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Value::Bool(b) => Some(b),
            _ => None,
        }
    }

    /// The elements, if this is an array.
    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(_, items) => Some(items),
            _ => None,
        }
    }

    /// A short human rendering: long arrays are abbreviated to their first items and length.
    pub fn summary(&self, max_items: usize) -> String {
        match self {
            Value::String(s) => {
                let mut short: String = s.chars().take(120).collect();
                if short.len() < s.len() {
                    short.push_str(&format!("… ({} chars)", s.chars().count()));
                }
                format!("{short:?}")
            }
            Value::Array(ty, items) => {
                let shown: Vec<String> = items
                    .iter()
                    .take(max_items)
                    .map(|v| v.summary(max_items))
                    .collect();
                let more = if items.len() > max_items { ", …" } else { "" };
                format!("[{}{more}] ({} × {ty})", shown.join(", "), items.len())
            }
            Value::F32(v) => format!("{v}"),
            Value::F64(v) => format!("{v}"),
            Value::Bool(b) => format!("{b}"),
            other => other.as_i64().map(|v| v.to_string()).unwrap_or_default(),
        }
    }

    /// The value as JSON, arrays abbreviated to `max_items` (None: complete).
    pub fn to_json(&self, max_items: Option<usize>) -> serde_json::Value {
        use serde_json::Value as J;
        match self {
            Value::String(s) => J::String(s.clone()),
            Value::Bool(b) => J::Bool(*b),
            Value::F32(v) => serde_json::Number::from_f64(*v as f64).map_or(J::Null, J::Number),
            Value::F64(v) => serde_json::Number::from_f64(*v).map_or(J::Null, J::Number),
            Value::Array(ty, items) => match max_items {
                Some(max) if items.len() > max => serde_json::json!({
                    "type": ty.name(),
                    "len": items.len(),
                    "head": items.iter().take(max).map(|v| v.to_json(Some(max))).collect::<Vec<_>>(),
                }),
                _ => J::Array(items.iter().map(|v| v.to_json(max_items)).collect()),
            },
            Value::U64(v) => J::from(*v),
            other => other.as_i64().map_or(J::Null, J::from),
        }
    }
}

/// Why a metadata lookup failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum MetadataError {
    /// The key is absent.
    #[error("metadata key `{key}` is missing")]
    Missing {
        /// The key.
        key: String,
    },
    /// The key's value has another type (or does not fit).
    #[error("metadata key `{key}` is {found}, expected {expected}")]
    WrongType {
        /// The key.
        key: String,
        /// What was expected, in words.
        expected: &'static str,
        /// The type (or value) found.
        found: String,
    },
}

/// Metadata in file order, with lookup by key.
#[derive(Clone, Debug, Default)]
pub struct Metadata {
    entries: Vec<(String, Value)>,
    index: HashMap<String, usize>,
}

impl Metadata {
    /// No keys.
    pub fn new() -> Metadata {
        Metadata::default()
    }

    /// Inserts or replaces a key (a replaced key keeps its place).
    pub fn set(&mut self, key: impl Into<String>, value: Value) {
        let key = key.into();
        match self.index.get(&key) {
            Some(&i) => self.entries[i].1 = value,
            None => {
                self.index.insert(key.clone(), self.entries.len());
                self.entries.push((key, value));
            }
        }
    }

    /// Appends a key read from a file; returns false if it was already present.
    pub(crate) fn push_new(&mut self, key: String, value: Value) -> bool {
        if self.index.contains_key(&key) {
            return false;
        }
        self.index.insert(key.clone(), self.entries.len());
        self.entries.push((key, value));
        true
    }

    /// Removes a key; returns its value if it was there.
    pub fn remove(&mut self, key: &str) -> Option<Value> {
        let i = self.index.remove(key)?;
        let (_, v) = self.entries.remove(i);
        for idx in self.index.values_mut() {
            if *idx > i {
                *idx -= 1;
            }
        }
        Some(v)
    }

    /// The value of `key`, if present.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.index.get(key).map(|&i| &self.entries[i].1)
    }

    /// Whether `key` is present.
    pub fn contains(&self, key: &str) -> bool {
        self.index.contains_key(key)
    }

    /// The keys and values in file order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Value)> {
        self.entries.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// The number of keys.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there are no keys.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn require(&self, key: &str) -> Result<&Value, MetadataError> {
        self.get(key).ok_or_else(|| MetadataError::Missing {
            key: key.to_string(),
        })
    }

    fn wrong(key: &str, expected: &'static str, found: &Value) -> MetadataError {
        MetadataError::WrongType {
            key: key.to_string(),
            expected,
            found: found.value_type().name().to_string(),
        }
    }

    /// A non-negative integer of any width.
    pub fn get_u64(&self, key: &str) -> Result<u64, MetadataError> {
        let v = self.require(key)?;
        v.as_u64()
            .ok_or_else(|| Metadata::wrong(key, "a non-negative integer", v))
    }

    /// A non-negative integer that fits usize.
    pub fn get_usize(&self, key: &str) -> Result<usize, MetadataError> {
        let n = self.get_u64(key)?;
        usize::try_from(n).map_err(|_| MetadataError::WrongType {
            key: key.to_string(),
            expected: "an integer that fits this machine's usize",
            found: n.to_string(),
        })
    }

    /// A number of any type, as `f32`.
    pub fn get_f32(&self, key: &str) -> Result<f32, MetadataError> {
        let v = self.require(key)?;
        v.as_f64()
            .map(|x| x as f32)
            .ok_or_else(|| Metadata::wrong(key, "a number", v))
    }

    /// A string.
    pub fn get_str(&self, key: &str) -> Result<&str, MetadataError> {
        let v = self.require(key)?;
        v.as_str()
            .ok_or_else(|| Metadata::wrong(key, "a string", v))
    }

    /// A bool.
    pub fn get_bool(&self, key: &str) -> Result<bool, MetadataError> {
        let v = self.require(key)?;
        v.as_bool().ok_or_else(|| Metadata::wrong(key, "a bool", v))
    }

    /// An array's elements (of any element type).
    pub fn get_array(&self, key: &str) -> Result<&[Value], MetadataError> {
        let v = self.require(key)?;
        v.as_array()
            .ok_or_else(|| Metadata::wrong(key, "an array", v))
    }

    /// An optional key: `Ok(None)` when absent, an error when present with the wrong type.
    pub fn opt<T>(
        &self,
        key: &str,
        get: impl FnOnce(&Metadata, &str) -> Result<T, MetadataError>,
    ) -> Result<Option<T>, MetadataError> {
        if self.contains(key) {
            get(self, key).map(Some)
        } else {
            Ok(None)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typed_lookups_name_the_key() {
        let mut m = Metadata::new();
        m.set("a.count", Value::I32(7));
        m.set("a.name", Value::String("x".into()));
        assert_eq!(m.get_u64("a.count"), Ok(7));
        assert_eq!(
            m.get_u64("a.name"),
            Err(MetadataError::WrongType {
                key: "a.name".into(),
                expected: "a non-negative integer",
                found: "string".into()
            })
        );
        assert_eq!(
            m.get_str("a.missing").unwrap_err().to_string(),
            "metadata key `a.missing` is missing"
        );
        assert_eq!(m.opt("a.missing", Metadata::get_u64), Ok(None));
        m.set("a.count", Value::U8(1));
        assert_eq!(m.iter().next().map(|(k, _)| k), Some("a.count"));
        assert_eq!(m.remove("a.count"), Some(Value::U8(1)));
        assert_eq!(m.get_str("a.name"), Ok("x"));
    }
}
