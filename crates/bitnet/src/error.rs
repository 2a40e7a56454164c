//! The error of the high-level API ([`crate::Model`]): every layer's error, each carrying its
//! own message (which names the file, key, tensor or value involved).

use crate::formats::gguf::GgufError;
use crate::generate::{GenerateError, SamplerError, SubmitError};
use crate::hf::HfError;
use crate::kernels::Isa;
use crate::model::ModelError;
use crate::tokenizer::TokenizerError;

/// Why loading or running a model failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The GGUF file could not be read.
    #[error(transparent)]
    Gguf(#[from] GgufError),
    /// The model could not be loaded from the file, or run.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// The tokenizer could not be loaded, or met an unknown token id.
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
    /// Generation could not run (an empty prompt, one longer than the context, ...).
    #[error(transparent)]
    Generate(#[from] GenerateError),
    /// A sampling value is out of its range.
    #[error(transparent)]
    Sampler(#[from] SamplerError),
    /// A [`crate::generate::Scheduler`] did not take a request.
    #[error(transparent)]
    Submit(#[from] SubmitError),
    /// A request failed while a scheduler ran it (the model's error, as text).
    #[error("{0}")]
    Failed(String),
    /// A Hugging Face checkpoint could not be read or converted, or a Hub download failed.
    #[error(transparent)]
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
    /// A [`crate::ModelOptions`] value out of its range.
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
