//! The model's hyperparameters, read from GGUF metadata and checked up front.

use crate::formats::gguf::{GgufFile, Metadata, MetadataError};

use super::ModelError;

/// The largest context [`Config::default_context`] picks.
pub const DEFAULT_CONTEXT_CAP: usize = 4096;

/// The architectures this engine runs, as GGUF names them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Architecture {
    /// `bitnet-b1.58` (microsoft/bitnet-b1.58-2B-4T) and its older name `bitnet-25`.
    BitnetB158,
}

impl Architecture {
    pub fn from_gguf_name(name: &str) -> Option<Architecture> {
        match name {
            "bitnet-b1.58" | "bitnet-25" => Some(Architecture::BitnetB158),
            _ => None,
        }
    }
}

/// Hyperparameters of a BitNet b1.58 model.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// `general.architecture` as written in the file (its keys are prefixed with it).
    pub arch_name: String,
    pub arch: Architecture,
    pub n_vocab: usize,
    /// Hidden size H.
    pub n_embd: usize,
    pub n_layer: usize,
    /// FFN inner size I.
    pub n_ff: usize,
    pub n_head: usize,
    pub n_head_kv: usize,
    pub head_dim: usize,
    /// Context length the model was trained with.
    pub n_ctx_train: usize,
    pub rope_theta: f32,
    pub rms_eps: f32,
}

impl Config {
    /// Reads and checks the hyperparameters; `n_vocab_tensor` is the vocabulary size implied by
    /// the embedding tensor (used when `{arch}.vocab_size` is absent).
    pub fn from_gguf(gguf: &GgufFile, n_vocab_tensor: Option<usize>) -> Result<Config, ModelError> {
        Config::from_metadata(gguf.metadata(), n_vocab_tensor)
            .map_err(|e| ModelError::from_config(gguf.source(), e))
    }

    fn from_metadata(md: &Metadata, n_vocab_tensor: Option<usize>) -> Result<Config, ConfigError> {
        let arch_name = md.get_str("general.architecture")?.to_string();
        let arch = Architecture::from_gguf_name(&arch_name).ok_or_else(|| {
            ConfigError::Unsupported(format!(
                "architecture `{arch_name}` is not supported (supported: bitnet-b1.58, bitnet-25)"
            ))
        })?;
        let key = |k: &str| format!("{arch_name}.{k}");
        let usize_key = |k: &str| md.get_usize(&key(k));

        let n_embd = usize_key("embedding_length")?;
        let n_layer = usize_key("block_count")?;
        let n_ff = usize_key("feed_forward_length")?;
        let n_head = usize_key("attention.head_count")?;
        let n_head_kv = md
            .opt(&key("attention.head_count_kv"), Metadata::get_usize)?
            .unwrap_or(n_head);
        let n_ctx_train = usize_key("context_length")?;
        let rms_eps = md.get_f32(&key("attention.layer_norm_rms_epsilon"))?;
        let rope_theta = md
            .opt(&key("rope.freq_base"), Metadata::get_f32)?
            .unwrap_or(10000.0);
        let n_vocab = match md.opt(&key("vocab_size"), Metadata::get_usize)? {
            Some(v) => v,
            None => match md.get_array("tokenizer.ggml.tokens") {
                Ok(tokens) => tokens.len(),
                Err(_) => n_vocab_tensor.ok_or_else(|| MetadataError::Missing {
                    key: key("vocab_size"),
                })?,
            },
        };

        let bad = |k: &str, why: String| ConfigError::Invalid {
            key: key(k),
            message: why,
        };
        for (k, v) in [
            ("embedding_length", n_embd),
            ("block_count", n_layer),
            ("feed_forward_length", n_ff),
            ("attention.head_count", n_head),
            ("attention.head_count_kv", n_head_kv),
            ("context_length", n_ctx_train),
            ("vocab_size", n_vocab),
        ] {
            if v == 0 {
                return Err(bad(k, "must be positive".into()));
            }
        }
        if n_embd % n_head != 0 {
            return Err(bad(
                "attention.head_count",
                format!("{n_head} heads do not divide the embedding length {n_embd}"),
            ));
        }
        if n_head % n_head_kv != 0 {
            return Err(bad(
                "attention.head_count_kv",
                format!("{n_head_kv} KV heads do not divide the {n_head} query heads"),
            ));
        }
        let head_dim = n_embd / n_head;
        if head_dim % 2 != 0 {
            return Err(bad(
                "attention.head_count",
                format!("head dimension {head_dim} must be even for RoPE"),
            ));
        }
        if let Some(rot) = md.opt(&key("rope.dimension_count"), Metadata::get_usize)? {
            if rot != head_dim {
                return Err(bad(
                    "rope.dimension_count",
                    format!("{rot} differs from the head dimension {head_dim} (partial RoPE is not supported)"),
                ));
            }
        }
        if !(rms_eps > 0.0 && rms_eps < 1.0) {
            return Err(bad(
                "attention.layer_norm_rms_epsilon",
                format!("{rms_eps} is not in (0, 1)"),
            ));
        }
        if !(rope_theta > 0.0 && rope_theta.is_finite()) {
            return Err(bad(
                "rope.freq_base",
                format!("{rope_theta} is not positive"),
            ));
        }
        Ok(Config {
            arch_name,
            arch,
            n_vocab,
            n_embd,
            n_layer,
            n_ff,
            n_head,
            n_head_kv,
            head_dim,
            n_ctx_train,
            rope_theta,
            rms_eps,
        })
    }

    /// The context used when none is asked for: the trained one, but at most
    /// [`DEFAULT_CONTEXT_CAP`] (a file may claim billions of positions, whose cache no machine
    /// holds; llama.cpp defaults to 4096 for the same reason).
    pub fn default_context(&self) -> usize {
        self.n_ctx_train.min(DEFAULT_CONTEXT_CAP)
    }

    /// Width of the K and V projections.
    pub fn kv_dim(&self) -> usize {
        self.n_head_kv * self.head_dim
    }
}

/// A configuration problem before it is tied to a file name.
#[derive(Debug)]
pub(crate) enum ConfigError {
    Metadata(MetadataError),
    Invalid { key: String, message: String },
    Unsupported(String),
}

impl From<MetadataError> for ConfigError {
    fn from(e: MetadataError) -> ConfigError {
        ConfigError::Metadata(e)
    }
}
