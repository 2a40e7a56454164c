//! The BitNet b1.58 model: typed config from GGUF metadata, weights behind format-agnostic
//! traits, the forward pass, and the KV cache. Uses `formats` and `kernels`; knows nothing of
//! tokenizers, generation or the CLI.

mod bitnet;
pub mod config;
mod kv_cache;
pub mod quantize;
pub mod synth;
pub mod weights;

pub use bitnet::{BatchEntry, BitnetModel, LoadOptions, Logits, ShapeIsas};
pub use config::{Activation, Architecture, Config, RopeStyle, DEFAULT_CONTEXT_CAP};
pub use kv_cache::{available_memory, cache_bytes, human_bytes, CacheType, KvCache};

use crate::formats::gguf::{GgufError, MetadataError};
use config::ConfigError;

/// Why a model could not be loaded or run.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error(transparent)]
    Gguf(#[from] GgufError),
    #[error("{file}: {source}")]
    Metadata { file: String, source: MetadataError },
    #[error("{file}: metadata key `{key}`: {message}")]
    InvalidConfig {
        file: String,
        key: String,
        message: String,
    },
    #[error("{file}: {message}")]
    Unsupported { file: String, message: String },
    #[error("{file}: tensor `{tensor}` has shape {found}, expected {expected}")]
    TensorShape {
        file: String,
        tensor: String,
        expected: String,
        found: String,
    },
    #[error("{file}: tensor `{tensor}`: {message}")]
    Tensor {
        file: String,
        tensor: String,
        message: String,
    },
    #[error(
        "token id {token} (input index {index}) is outside the vocabulary of {n_vocab} tokens"
    )]
    TokenOutOfRange {
        token: u32,
        index: usize,
        n_vocab: usize,
    },
    #[error("the context is full: {needed} positions needed, the cache holds {capacity}")]
    ContextFull { needed: usize, capacity: usize },
    #[error("no tokens to run")]
    EmptyInput,
    #[error(
        "a context of {n_ctx} tokens needs {} of {cache_type} KV cache but {} of memory is available; use a smaller -c (at most {fits} here)",
        human_bytes(*.needed),
        human_bytes(*.available)
    )]
    ContextTooLarge {
        n_ctx: usize,
        cache_type: &'static str,
        needed: u64,
        available: u64,
        /// The largest context that fits.
        fits: usize,
    },
    #[error("allocating {} of KV cache for a context of {n_ctx} tokens failed; use a smaller -c", human_bytes(*.bytes))]
    OutOfMemory { n_ctx: usize, bytes: u64 },
    #[error("cannot drop cache positions {keep}..{} of {len}", .keep + .n)]
    BadShift { keep: usize, n: usize, len: usize },
}

impl ModelError {
    pub(crate) fn from_config(file: &str, e: ConfigError) -> ModelError {
        let file = file.to_string();
        match e {
            ConfigError::Metadata(source) => ModelError::Metadata { file, source },
            ConfigError::Invalid { key, message } => {
                ModelError::InvalidConfig { file, key, message }
            }
            ConfigError::Unsupported(message) => ModelError::Unsupported { file, message },
        }
    }
}
