//! Helpers the fixture tests share: paths into the repository and the fixtures' JSON.

use std::path::PathBuf;

use serde_json::Value;

/// A path relative to the repository root.
pub fn repo(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(rel)
}

/// A JSON fixture, by its path relative to the repository root.
pub fn json(rel: &str) -> Value {
    serde_json::from_slice(&std::fs::read(repo(rel)).unwrap()).unwrap()
}

/// A JSON array of token ids.
pub fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}
