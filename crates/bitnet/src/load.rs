//! Where a model comes from and how it is loaded: a GGUF file, a Hugging Face folder
//! (converted in memory), `hf:OWNER/REPO[:FILE]` from the Hub (feature `hub`), or the demo
//! model bundled into the library (feature `demo`). [`crate::Model`] loads through here, and
//! so does the `bitnet` command line, so both accept the same names and report the same
//! errors.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::formats::gguf::GgufFile;
use crate::formats::types::TensorType;
use crate::gpu::Device;
use crate::kernels::Isa;
use crate::model::{
    available_memory, cache_bytes, human_bytes, BitnetModel, CacheType, LoadOptions, ModelError,
};
use crate::tokenizer::{Tokenizer, TokenizerError};
use crate::Error;

/// The demo model: 7M parameters of the 2B-4T architecture trained on Shakespeare, I2_S
/// (`models/bitnet-shakespeare-7m-i2_s.gguf`), so that everything runs on a fresh machine
/// without a download.
#[cfg(feature = "demo")]
pub static DEMO_MODEL: &[u8] = include_bytes!("../../../models/bitnet-shakespeare-7m-i2_s.gguf");

/// The name the demo model goes by in messages.
pub const DEMO_MODEL_NAME: &str = "bitnet-shakespeare-7m-i2_s.gguf (bundled)";

/// Most worker threads accepted: more would only oversubscribe any machine this runs on.
pub const MAX_THREADS: usize = 1024;

/// A model to load.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// The demo model bundled into the library (feature `demo`, on by default).
    Demo,
    /// A GGUF file, or a Hugging Face model folder (`config.json`, safetensors,
    /// `tokenizer.json`), converted in memory at each load.
    Path(PathBuf),
    /// `hf:OWNER/REPO[:FILE]`: downloaded into the standard Hugging Face cache, or taken from
    /// it (feature `hub`; `HF_HOME`, `HF_TOKEN`, `HF_HUB_OFFLINE`, ... honoured).
    Hub(String),
}

impl Source {
    /// `hf:OWNER/REPO[:FILE]` names a Hub model, anything else a path.
    pub fn parse(spec: &str) -> Source {
        if spec.starts_with("hf:") {
            Source::Hub(spec.to_string())
        } else {
            Source::Path(PathBuf::from(spec))
        }
    }

    /// The name errors and reports give the model: what the caller wrote.
    pub fn name(&self) -> String {
        match self {
            Source::Demo => DEMO_MODEL_NAME.to_string(),
            Source::Path(p) => p.display().to_string(),
            Source::Hub(spec) => spec.clone(),
        }
    }

    /// Opens the GGUF: the file (memory-mapped), a folder converted in memory, a Hub model
    /// fetched first (`Source::open_with_progress`, feature `hub`, reports the download's
    /// progress), or the demo.
    pub fn open(&self) -> Result<Arc<GgufFile>, Error> {
        match self {
            Source::Demo => demo_gguf(),
            Source::Path(path) => open_resolved(crate::hf::ModelSource::local(path)?),
            #[cfg(feature = "hub")]
            Source::Hub(_) => self.open_with_progress(&mut ()),
            #[cfg(not(feature = "hub"))]
            Source::Hub(spec) => Err(Error::HubDisabled { spec: spec.clone() }),
        }
    }

    /// [`Source::open`], reporting a Hub download's progress to `progress`.
    #[cfg(feature = "hub")]
    pub fn open_with_progress(
        &self,
        progress: &mut dyn crate::hf::hub::DownloadProgress,
    ) -> Result<Arc<GgufFile>, Error> {
        use crate::hf::hub::{self, HubOptions, HubSpec};
        match self {
            Source::Hub(spec) => {
                let spec = HubSpec::parse(spec)?;
                open_resolved(hub::fetch(&spec, &HubOptions::from_env(), progress)?)
            }
            other => other.open(),
        }
    }

    /// Whether this is a Hugging Face folder on disk without a `tokenizer.json`.
    fn is_folder_without_tokenizer(&self) -> bool {
        match self {
            Source::Path(dir) => {
                crate::hf::is_hf_folder(dir) && !dir.join("tokenizer.json").is_file()
            }
            _ => false,
        }
    }
}

/// Opens a resolved GGUF file or folder. A GGUF file's own errors (missing, not GGUF,
/// truncated) are [`Error::Gguf`], as the demo's are; a folder's (its `config.json`,
/// safetensors, tokenizer files, the conversion) stay [`Error::Hf`].
fn open_resolved(resolved: crate::hf::ModelSource) -> Result<Arc<GgufFile>, Error> {
    match resolved {
        crate::hf::ModelSource::Gguf(path) => Ok(Arc::new(GgufFile::open(&path)?)),
        folder @ crate::hf::ModelSource::Folder(_) => Ok(folder.open_gguf()?),
    }
}

#[cfg(feature = "demo")]
fn demo_gguf() -> Result<Arc<GgufFile>, Error> {
    Ok(Arc::new(GgufFile::from_static(
        DEMO_MODEL_NAME,
        DEMO_MODEL,
    )?))
}

#[cfg(not(feature = "demo"))]
fn demo_gguf() -> Result<Arc<GgufFile>, Error> {
    Err(Error::DemoDisabled)
}

impl From<&str> for Source {
    fn from(spec: &str) -> Source {
        Source::parse(spec)
    }
}

impl From<String> for Source {
    fn from(spec: String) -> Source {
        Source::parse(&spec)
    }
}

impl From<&String> for Source {
    fn from(spec: &String) -> Source {
        Source::parse(spec)
    }
}

impl From<&Path> for Source {
    fn from(path: &Path) -> Source {
        Source::Path(path.to_path_buf())
    }
}

impl From<PathBuf> for Source {
    fn from(path: PathBuf) -> Source {
        Source::Path(path)
    }
}

/// `None` is the demo model, as the command line's default.
impl<T: Into<Source>> From<Option<T>> for Source {
    fn from(spec: Option<T>) -> Source {
        spec.map_or(Source::Demo, Into::into)
    }
}

/// Where the weights a generated token reads live while the model runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Residency {
    /// Copied into huge-page memory when the OS has transparent huge pages and the file fits
    /// in half the available memory (~25 % faster generation, 0.5-3 s more to load on a 2B
    /// model), mapped otherwise.
    #[default]
    Auto,
    /// Left in the memory-mapped file where their layout allows: starts at once, shares the
    /// page cache.
    Mapped,
    /// Always copied into owned (huge-page where possible) memory.
    Resident,
}

impl Residency {
    /// The model's load options for a file of `len` bytes.
    pub fn load_options(self, len: u64) -> LoadOptions {
        let resident = match self {
            Residency::Mapped => false,
            Residency::Resident => true,
            Residency::Auto => {
                GgufFile::huge_pages_available()
                    && crate::model::available_memory().is_some_and(|avail| len <= avail / 2)
            }
        };
        LoadOptions { resident }
    }
}

/// How to load and run a model. `Default` is what the command line does without flags.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ModelOptions {
    /// Worker threads for the forward pass (`None`: the physical cores). Results do not
    /// depend on it.
    pub threads: Option<usize>,
    /// Force one kernel instruction set (`None`: the fastest per layer shape, timed at load).
    pub isa: Option<Isa>,
    /// Re-encode the output matrix at load (Q8_0 or Q6_K: fewer bytes read per generated
    /// token, slightly different logits; F16 or F32).
    pub output_type: Option<TensorType>,
    /// Where the weights live while the model runs.
    pub residency: Residency,
    /// Positions each generation's KV cache holds (0: the model's trained context, at most
    /// [`crate::model::DEFAULT_CONTEXT_CAP`]). More than the model was trained with is
    /// allowed; a cache larger than the memory available is refused at load
    /// ([`Error::InvalidOption`] naming `context`).
    pub context: usize,
    /// The KV cache's element type: F16 (half the memory, ggml's arithmetic) or F32
    /// (transformers').
    pub cache_type: CacheType,
    /// Where the model runs: the CPU (default), the GPU (an error when there is none), or
    /// `Auto` (a hardware GPU when there is one). See [`crate::gpu`].
    pub device: Device,
}

impl ModelOptions {
    /// Checks the values that need no model, so that a bad one fails before any work.
    pub fn validate(&self) -> Result<(), Error> {
        if let Some(t) = self.threads {
            if !(1..=MAX_THREADS).contains(&t) {
                return Err(Error::InvalidOption {
                    option: "threads",
                    message: format!("{t}: must be between 1 and {MAX_THREADS}"),
                });
            }
        }
        if let Some(isa) = self.isa {
            if !isa.is_available() {
                return Err(Error::IsaUnavailable(isa));
            }
        }
        if let Some(ty) = self.output_type {
            if !matches!(
                ty,
                TensorType::Q8_0 | TensorType::Q6K | TensorType::F16 | TensorType::F32
            ) {
                return Err(Error::InvalidOption {
                    option: "output_type",
                    message: format!("{ty}: use q8_0, q6_k, f16 or f32"),
                });
            }
        }
        Ok(())
    }
}

/// A loaded model's parts.
pub struct Loaded {
    /// What the caller named (see [`Source::name`]).
    pub name: String,
    /// The network.
    pub model: BitnetModel,
    /// Its tokenizer (from the GGUF's metadata, or a folder's `tokenizer.json`).
    pub tokenizer: Tokenizer,
}

/// Loads the model and its tokenizer from an opened GGUF, as `options` say.
pub fn load_gguf(
    source: &Source,
    file: Arc<GgufFile>,
    options: &ModelOptions,
) -> Result<Loaded, Error> {
    options.validate()?;
    let tokenizer = match Tokenizer::from_gguf(&file) {
        Ok(t) => t,
        // A Hugging Face folder's tokenizer comes from its tokenizer.json: name that file.
        Err(TokenizerError::NoTokenizer { .. }) if source.is_folder_without_tokenizer() => {
            return Err(Error::NoTokenizerJson {
                folder: source.name(),
            })
        }
        Err(e) => return Err(e.into()),
    };
    let load_options = options.residency.load_options(file.file_len());
    let mut model = BitnetModel::from_gguf_with(file, load_options)?;
    if let Some(t) = options.threads {
        model.set_threads(t);
    }
    if let Some(isa) = options.isa {
        model.set_isa(isa);
    }
    if let Some(ty) = options.output_type {
        // The model layer names no option; the caller knows this one as `output_type`.
        model.set_output_type(ty).map_err(|e| match e {
            ModelError::Unsupported { message, .. } => Error::InvalidOption {
                option: "output_type",
                message: format!("{ty}: {message}"),
            },
            e => e.into(),
        })?;
    }
    check_context(&model, options)?;
    // Last: the upload takes the weights as the options above left them.
    model.set_device(options.device)?;
    Ok(Loaded {
        name: source.name(),
        model,
        tokenizer,
    })
}

/// Refuses a context whose KV cache cannot fit in the memory available now (where the
/// platform tells; a size that overflows anywhere): such a model would load and then fail at
/// every generation. Each generation still checks again when it allocates its cache.
fn check_context(model: &BitnetModel, options: &ModelOptions) -> Result<(), Error> {
    let config = model.config();
    let n_ctx = match options.context {
        0 => config.default_context(),
        n => n,
    };
    let ty = options.cache_type;
    let bytes = |positions| cache_bytes(config.n_layer, config.kv_dim(), positions, ty);
    let ty = ty.name();
    let needed = bytes(n_ctx);
    let available = available_memory();
    let fits = match (needed, available) {
        (Some(needed), Some(available)) => needed <= available,
        (Some(_), None) => true,
        (None, _) => false,
    };
    if fits {
        return Ok(());
    }
    let given = match options.context {
        0 => format!("0 (the model's {n_ctx} tokens)"),
        n => n.to_string(),
    };
    let needs = needed.map_or_else(|| "more bytes than can be counted".into(), human_bytes);
    let message = match available {
        Some(available) => {
            let per_position = bytes(1).unwrap_or(u64::MAX).max(1);
            format!(
                "{given} is too large: its {ty} KV cache needs {needs} but {} of memory is \
                 available; at most {} tokens fit",
                human_bytes(available),
                available / per_position
            )
        }
        None => format!("{given} is too large: its {ty} KV cache needs {needs}"),
    };
    Err(Error::InvalidOption {
        option: "context",
        message,
    })
}

/// Opens `source` and loads it (see [`Source::open`] and [`load_gguf`]).
pub fn load(source: &Source, options: &ModelOptions) -> Result<Loaded, Error> {
    options.validate()?;
    load_gguf(source, source.open()?, options)
}
