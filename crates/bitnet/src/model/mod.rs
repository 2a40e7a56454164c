//! The BitNet b1.58 model: typed config from GGUF metadata, weights behind format-agnostic
//! traits, the forward pass, and the KV cache. Uses `formats` and `kernels`; knows nothing of
//! tokenizers, generation or the CLI.

pub(crate) mod backend;
mod bitnet;
pub mod config;
pub mod embed;
mod kv_cache;
pub mod quantize;
pub mod synth;
pub mod weights;

pub use bitnet::{BatchEntry, BitnetModel, LoadOptions, Logits, ShapeIsas};
pub use config::{
    Activation, Architecture, Config, Pooling, RopeStyle, SlidingWindow, DEFAULT_CONTEXT_CAP,
};
pub use embed::EmbedOptions;
#[cfg(all(test, feature = "gpu"))]
pub(crate) use kv_cache::KvSlice;
pub use kv_cache::{available_memory, cache_bytes, human_bytes, CacheType, KvCache, KvFileError};

use crate::formats::gguf::{GgufError, MetadataError};
use config::ConfigError;

/// Why a model could not be loaded or run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ModelError {
    /// The GGUF file could not be read.
    #[error(transparent)]
    Gguf(#[from] GgufError),
    /// A hyperparameter key is missing or has the wrong type.
    #[error("{file}: {source}")]
    Metadata {
        /// The file.
        file: String,
        /// The lookup's error.
        source: MetadataError,
    },
    /// A hyperparameter out of range or inconsistent with the others.
    #[error("{file}: metadata key `{key}`: {message}")]
    InvalidConfig {
        /// The file.
        file: String,
        /// The key.
        key: String,
        /// What is wrong with it.
        message: String,
    },
    /// An architecture, tokenizer or option this library does not run.
    #[error("{file}: {message}")]
    Unsupported {
        /// The file (or the option).
        file: String,
        /// What is not supported, and why.
        message: String,
    },
    /// A tensor whose shape does not match the hyperparameters.
    #[error("{file}: tensor `{tensor}` has shape {found}, expected {expected}")]
    TensorShape {
        /// The file.
        file: String,
        /// The tensor.
        tensor: String,
        /// The shape the hyperparameters imply.
        expected: String,
        /// The shape found.
        found: String,
    },
    /// Another problem with a tensor (a type the model cannot use, a missing tensor).
    #[error("{file}: tensor `{tensor}`: {message}")]
    Tensor {
        /// The file.
        file: String,
        /// The tensor.
        tensor: String,
        /// What is wrong.
        message: String,
    },
    /// A token id outside the vocabulary.
    #[error(
        "token id {token} (input index {index}) is outside the vocabulary of {n_vocab} tokens"
    )]
    TokenOutOfRange {
        /// The id.
        token: u32,
        /// Its index in the input.
        index: usize,
        /// The vocabulary's size.
        n_vocab: usize,
    },
    /// More tokens than the KV cache has room for.
    #[error("the context is full: {needed} positions needed, the cache holds {capacity}")]
    ContextFull {
        /// Positions the call needs.
        needed: usize,
        /// Positions the cache holds.
        capacity: usize,
    },
    /// A forward pass on no tokens.
    #[error("no tokens to run")]
    EmptyInput,
    /// An embedding option out of range (`dimensions` beyond the model's width, ...).
    #[error("{option} {message}")]
    InvalidOption {
        /// The option's name.
        option: &'static str,
        /// The value and what is allowed.
        message: String,
    },
    /// A KV cache larger than the memory available.
    #[error(
        "a context of {n_ctx} tokens needs {} of {cache_type} KV cache but {} of memory is available; at most {fits} tokens fit",
        human_bytes(*.needed),
        human_bytes(*.available)
    )]
    ContextTooLarge {
        /// The context asked for.
        n_ctx: usize,
        /// The cache's element type (`f16`, `f32`).
        cache_type: &'static str,
        /// Bytes it needs.
        needed: u64,
        /// Bytes available.
        available: u64,
        /// The largest context that fits.
        fits: usize,
    },
    /// Allocating the KV cache failed.
    #[error("allocating {} of KV cache for a context of {n_ctx} tokens failed", human_bytes(*.bytes))]
    OutOfMemory {
        /// The context asked for.
        n_ctx: usize,
        /// Bytes it needs.
        bytes: u64,
    },
    /// The GPU backend could not open a device or run the model.
    #[error(transparent)]
    Gpu(#[from] crate::gpu::GpuError),
    /// A context shift outside the cached positions.
    #[error("cannot drop cache positions {keep}..{} of {len}", .keep + .n)]
    BadShift {
        /// Positions kept in front.
        keep: usize,
        /// Positions to drop after them.
        n: usize,
        /// Positions in the cache.
        len: usize,
    },
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
