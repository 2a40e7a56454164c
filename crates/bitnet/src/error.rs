//! The error of the high-level API ([`crate::Model`]): one variant per layer, each carrying
//! that layer's error, whose message names the file, key, tensor or value involved.
//!
//! Each variant's message is its layer's message, and [`std::error::Error::source`] returns
//! that layer's error, whose own `source` goes on down (a missing GGUF file: `Error::Gguf` →
//! [`GgufError`] → [`crate::formats::gguf::GgufErrorKind::Io`] → [`std::io::Error`]). A
//! message already includes its causes' text, so a reporter that prints the whole chain
//! should skip what it has already printed, as the `bitnet` command does.

use crate::formats::gguf::GgufError;
use crate::generate::{GenerateError, SamplerError, SubmitError};
use crate::hf::HfError;
use crate::kernels::Isa;
use crate::model::ModelError;
use crate::tokenizer::TokenizerError;

/// Why loading or running a model failed. New variants may be added: match with a `_` arm.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A GGUF file could not be read (a local `.gguf`, the demo, or one from the Hub).
    #[error("{0}")]
    Gguf(#[from] GgufError),
    /// The model could not be loaded from the file, or run.
    #[error("{0}")]
    Model(#[from] ModelError),
    /// The tokenizer could not be loaded, or met an unknown token id.
    #[error("{0}")]
    Tokenizer(#[from] TokenizerError),
    /// Generation could not run (an empty prompt, one longer than the context, ...).
    #[error("{0}")]
    Generate(#[from] GenerateError),
    /// A sampling value is out of its range.
    #[error("{0}")]
    Sampler(#[from] SamplerError),
    /// A [`crate::generate::Scheduler`] did not take a request.
    #[error("{0}")]
    Submit(#[from] SubmitError),
    /// A request failed while a scheduler ran it (the model's error, as text).
    #[error("{0}")]
    Failed(String),
    /// A Hugging Face folder could not be read or converted (its `config.json`, safetensors,
    /// tokenizer files), or a Hub download failed.
    #[error("{0}")]
    Hf(#[from] HfError),
    /// A Hugging Face folder without `tokenizer.json`: nothing to encode text with.
    #[error(
        "{folder}: no tokenizer.json in the folder, so there is no tokenizer to encode text with"
    )]
    NoTokenizerJson {
        /// The folder as the caller named it.
        folder: String,
    },
    /// [`crate::ModelOptions::isa`] names kernels this CPU cannot run.
    #[error("this CPU cannot run {0} kernels")]
    IsaUnavailable(Isa),
    /// A [`crate::ModelOptions`] value out of its range (`context` too large for this
    /// machine's memory, `threads` 0, ...).
    #[error("{option} {message}")]
    InvalidOption {
        /// The option's field name.
        option: &'static str,
        /// The value and what is allowed.
        message: String,
    },
    /// `hf:OWNER/REPO` with a library built without its `hub` feature.
    #[error(
        "model `{spec}`: loading from the Hugging Face Hub needs the bitnet crate's `hub` feature"
    )]
    HubDisabled {
        /// The name as given.
        spec: String,
    },
    /// The demo model with a library built without its `demo` feature.
    #[error("the bundled demo model needs the bitnet crate's `demo` feature")]
    DemoDisabled,
}
