//! Hugging Face checkpoints of BitNet b1.58 (`BitNetForCausalLM`): read a model folder
//! (`config.json`, `*.safetensors` shards, `tokenizer.json`), convert it to a GGUF that
//! bitnet.cpp accepts, load it directly as a model, and fetch it from the Hub.
//!
//! - [`config`]: typed `config.json`.
//! - [`checkpoint`]: safetensors shards, the HF → GGUF tensor names, packed-weight unpacking,
//!   the `weight_scale` rule and absmean ternarization.
//! - [`vocab`]: GGUF tokenizer metadata from `tokenizer.json` / `tokenizer_config.json`.
//! - [`convert`]: the GGUF writer, streaming one tensor at a time.
//! - `hub` (feature `hub`): downloads into the standard Hugging Face cache.
//!
//! Loading a folder as a model converts it in memory (I2_S linears, the embedding kept in its
//! stored precision) and loads that GGUF, so one code path serves `convert` and `-m FOLDER`.
//!
//! Uses `formats` and `model`; nothing above them.

pub mod checkpoint;
pub mod config;
pub mod convert;
#[cfg(feature = "hub")]
pub mod hub;
pub mod vocab;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::formats::gguf::{GgufError, GgufFile, WriteError};
use crate::model::{BitnetModel, ModelError};

pub use checkpoint::Checkpoint;
pub use config::{HfConfig, HfFamily, LinearClass, QuantMode, RopeScaling};
pub use convert::{ConvertOptions, ConvertSummary, OutType};

/// Files of a model folder besides its `*.safetensors`: what a Hub download fetches and what a
/// command writing into the folder must not overwrite.
pub(crate) const FOLDER_FILES: &[&str] = &[
    "config.json",
    "model.safetensors.index.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "generation_config.json",
    "chat_template.jinja",
    "modules.json",
    "1_Pooling/config.json",
];

/// The pooling a sentence-transformers folder declares (`modules.json` names the Pooling
/// module's folder, whose `config.json` sets one `pooling_mode_*`), as bitnet.cpp's embedding
/// converter reads it; `None` when the folder has no such module.
pub(crate) fn pooling(folder: &std::path::Path) -> Result<Option<crate::model::Pooling>, HfError> {
    use crate::model::Pooling;
    let modules_path = folder.join("modules.json");
    if !modules_path.is_file() {
        return Ok(None);
    }
    let read = |path: &std::path::Path| -> Result<serde_json::Value, HfError> {
        let bytes = std::fs::read(path).map_err(|e| HfError::io(path, e))?;
        serde_json::from_slice(&bytes).map_err(|source| HfError::Json {
            file: path.display().to_string(),
            source,
        })
    };
    let modules = read(&modules_path)?;
    let Some(list) = modules.as_array() else {
        return Err(HfError::Config {
            file: modules_path.display().to_string(),
            key: "(top level)".into(),
            message: "must be a list of modules".into(),
        });
    };
    let Some(module) = list.iter().find(|m| {
        m.get("type")
            .and_then(serde_json::Value::as_str)
            .is_some_and(|t| t.ends_with("Pooling"))
    }) else {
        return Ok(None);
    };
    let sub = module
        .get("path")
        .and_then(serde_json::Value::as_str)
        .unwrap_or("1_Pooling");
    // The module's folder is relative and inside the model folder.
    if sub.contains("..") || sub.starts_with('/') {
        return Err(HfError::Config {
            file: modules_path.display().to_string(),
            key: "path".into(),
            message: format!("`{sub}` is not a folder inside the model folder"),
        });
    }
    let config_path = folder.join(sub).join("config.json");
    if !config_path.is_file() {
        return Ok(None);
    }
    let config = read(&config_path)?;
    let on = |k: &str| config.get(k).and_then(serde_json::Value::as_bool) == Some(true);
    Ok(if on("pooling_mode_mean_tokens") {
        Some(Pooling::Mean)
    } else if on("pooling_mode_cls_token") {
        Some(Pooling::Cls)
    } else if on("pooling_mode_lasttoken") {
        Some(Pooling::Last)
    } else {
        None
    })
}

/// Why a Hugging Face checkpoint could not be read, converted or fetched. Every variant names
/// the file, and the tensor or key where there is one.
#[derive(Debug, thiserror::Error)]
pub enum HfError {
    /// A file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// A folder without `config.json`.
    #[error("{folder}: no config.json, so this is not a Hugging Face model folder")]
    NoConfig {
        /// The folder.
        folder: String,
    },
    /// A JSON file that does not parse.
    #[error("{file}: invalid JSON: {source}")]
    Json {
        /// The file.
        file: String,
        /// The parser's error.
        source: serde_json::Error,
    },
    /// A `config.json` key missing or out of range.
    #[error("{file}: key `{key}`: {message}")]
    Config {
        /// The file.
        file: String,
        /// The key.
        key: String,
        /// What is wrong with it.
        message: String,
    },
    /// A `model_type` this loader does not convert.
    #[error("{file}: model_type `{model_type}` is not supported (supported: {})", config::SUPPORTED_MODEL_TYPES.join(", "))]
    UnsupportedModelType {
        /// The file.
        file: String,
        /// The `model_type` found.
        model_type: String,
    },
    /// A folder without safetensors weights.
    #[error("{folder}: no weights found (model.safetensors, model.safetensors.index.json or *.safetensors)")]
    NoWeights {
        /// The folder.
        folder: String,
    },
    /// A shard the index names is not in the folder.
    #[error("{index}: shard `{shard}` (holding `{tensor}`) is missing")]
    MissingShard {
        /// The index file.
        index: String,
        /// The missing shard.
        shard: String,
        /// A tensor the index puts in it.
        tensor: String,
    },
    /// A file that is not valid safetensors.
    #[error("{file}: not a valid safetensors file: {message}")]
    Safetensors {
        /// The file.
        file: String,
        /// What is wrong.
        message: String,
    },
    /// A tensor the architecture needs is not in the checkpoint.
    #[error("{folder}: tensor `{tensor}` is missing")]
    MissingTensor {
        /// The folder.
        folder: String,
        /// The tensor's Hugging Face name.
        tensor: String,
    },
    /// A tensor whose shape does not match `config.json`.
    #[error("{file}: tensor `{tensor}` has shape {found}, config.json implies {expected}")]
    TensorShape {
        /// The shard holding it.
        file: String,
        /// The tensor.
        tensor: String,
        /// The shape `config.json` implies.
        expected: String,
        /// The shape found.
        found: String,
    },
    /// A packed (uint8) weight whose rows cannot be unpacked.
    #[error("{file}: tensor `{tensor}` is packed (uint8 [out/4, in]) but its out-features {out_features} are not divisible by 4")]
    PackedRows {
        /// The shard holding it.
        file: String,
        /// The tensor.
        tensor: String,
        /// Its output features.
        out_features: usize,
    },
    /// Another problem with a tensor (dtype, values).
    #[error("{file}: tensor `{tensor}`: {message}")]
    Tensor {
        /// The shard holding it.
        file: String,
        /// The tensor.
        tensor: String,
        /// What is wrong.
        message: String,
    },
    /// `tokenizer.json` or `tokenizer_config.json` could not be turned into GGUF metadata.
    #[error("{file}: {message}")]
    Tokenizer {
        /// The file.
        file: String,
        /// What is wrong.
        message: String,
    },
    /// The converted GGUF could not be read back.
    #[error(transparent)]
    Gguf(#[from] GgufError),
    /// The converted model could not be loaded.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// The GGUF could not be written.
    #[error("writing the GGUF: {0}")]
    Write(#[from] WriteError),
    /// A malformed `hf:OWNER/REPO[:FILE]`.
    #[error("model `{spec}`: {message}")]
    Spec {
        /// The name as given.
        spec: String,
        /// What is wrong.
        message: String,
    },
    /// A Hub download or cache lookup failed.
    #[error("{repo}: {message}")]
    Hub {
        /// The repository.
        repo: String,
        /// What went wrong.
        message: String,
    },
}

impl HfError {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> HfError {
        HfError::Io {
            path: path.display().to_string(),
            source,
        }
    }
}

/// Whether `path` is a folder holding a `config.json` (a Hugging Face model folder).
pub fn is_hf_folder(path: &Path) -> bool {
    path.is_dir() && path.join("config.json").is_file()
}

/// Converts a Hugging Face folder in memory to a GGUF (I2_S linears, the embedding in its
/// stored precision: F32, F16 or BF16), as [`convert::convert`] would write it.
pub fn folder_to_gguf(folder: &Path) -> Result<Arc<GgufFile>, HfError> {
    let ckpt = Checkpoint::open(folder)?;
    let (bytes, _) = convert::convert_to_vec(&ckpt, &ConvertOptions::in_memory(&ckpt))?;
    let label = format!("{} (converted in memory)", folder.display());
    Ok(Arc::new(GgufFile::from_vec(label, bytes)?))
}

/// Loads a Hugging Face folder as a model (see [`folder_to_gguf`]). The GGUF carries the
/// tokenizer metadata too.
pub fn load_model(folder: &Path) -> Result<(Arc<GgufFile>, BitnetModel), HfError> {
    let gguf = folder_to_gguf(folder)?;
    let model = BitnetModel::from_gguf(Arc::clone(&gguf))?;
    Ok((gguf, model))
}

/// Where a model named on the command line lives, once resolved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ModelSource {
    /// A GGUF file.
    Gguf(PathBuf),
    /// A Hugging Face model folder (a local one or a Hub snapshot).
    Folder(PathBuf),
}

impl ModelSource {
    /// Classifies a local path: a folder with `config.json`, or a file taken as GGUF.
    pub fn local(path: &Path) -> Result<ModelSource, HfError> {
        if path.is_dir() {
            if is_hf_folder(path) {
                Ok(ModelSource::Folder(path.to_path_buf()))
            } else {
                Err(HfError::NoConfig {
                    folder: path.display().to_string(),
                })
            }
        } else {
            Ok(ModelSource::Gguf(path.to_path_buf()))
        }
    }

    /// The file or folder.
    pub fn path(&self) -> &Path {
        match self {
            ModelSource::Gguf(p) | ModelSource::Folder(p) => p,
        }
    }

    /// Opens the GGUF (memory-mapped) or converts the folder in memory.
    pub fn open_gguf(&self) -> Result<Arc<GgufFile>, HfError> {
        match self {
            ModelSource::Gguf(p) => Ok(Arc::new(GgufFile::open(p)?)),
            ModelSource::Folder(p) => folder_to_gguf(p),
        }
    }

    /// Opens the source as a model.
    pub fn load(&self) -> Result<(Arc<GgufFile>, BitnetModel), HfError> {
        let gguf = self.open_gguf()?;
        let model = BitnetModel::from_gguf(Arc::clone(&gguf))?;
        Ok((gguf, model))
    }
}
