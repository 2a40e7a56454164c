//! The options every command that runs a model shares (`-m -c -t --cache-type --isa`), and
//! loading: a GGUF file, a Hugging Face folder or hub repo, or the bundled demo model when `-m`
//! is not given.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Result};
use bitnet::formats::gguf::GgufFile;
use bitnet::formats::types::TensorType;
use bitnet::hf::hub::{self, HubOptions};
use bitnet::kernels::Isa;
use bitnet::model::{BitnetModel, CacheType, LoadOptions};
use bitnet::tokenizer::Tokenizer;

/// The demo model shipped inside the binary (7M parameters, trained on Shakespeare), so that
/// `bitnet generate -p "ROMEO:\n"` works on a fresh machine without a download.
pub static DEMO_MODEL: &[u8] = include_bytes!("../../../models/bitnet-shakespeare-7m-i2_s.gguf");
pub const DEMO_MODEL_NAME: &str = "bitnet-shakespeare-7m-i2_s.gguf (bundled)";

#[derive(clap::Args, Clone, Debug)]
pub struct ModelArgs {
    /// Model: a GGUF file, a Hugging Face folder, or hf:OWNER/REPO[:FILE] (default: the
    /// bundled Shakespeare demo model)
    #[arg(short = 'm', long = "model")]
    pub model: Option<String>,
    /// Context size in tokens (0: the model's trained context, at most 4096)
    #[arg(short = 'c', long = "ctx-size", default_value_t = 0)]
    pub ctx_size: usize,
    /// Threads (default: all cores)
    #[arg(short = 't', long = "threads")]
    pub threads: Option<usize>,
    /// KV cache type: f16 (half the memory, ggml's arithmetic) or f32 (transformers')
    #[arg(long, default_value = "f16")]
    pub cache_type: CacheType,
    /// Kernel instruction set: scalar, avx2, avx512vnni (x86-64), neon, dotprod, i8mm (AArch64);
    /// default: the best this CPU has
    #[arg(long)]
    pub isa: Option<Isa>,
    #[command(flatten)]
    pub residency: Residency,
    /// Store the output matrix as q8_0 or q6_k (re-encoded at load): fewer bytes read per
    /// generated token, slightly different logits (see README)
    #[arg(long)]
    pub output_type: Option<String>,
}

/// Where a GGUF file's weights live while the model runs.
#[derive(clap::Args, Clone, Copy, Debug, Default)]
pub struct Residency {
    /// Copy the weights read every token into huge-page memory (the default when the OS has
    /// transparent huge pages and the file fits in half the available memory): generation
    /// streams every weight each token, and huge pages make that ~30 % faster than through
    /// the file's 4 KiB pages
    #[arg(long, conflicts_with = "mmap")]
    pub no_mmap: bool,
    /// Keep the weights in the memory-mapped file where their layout allows (starts at once,
    /// shares the page cache; slower generation)
    #[arg(long)]
    pub mmap: bool,
}

impl Residency {
    /// How to load a model from a file of `len` bytes.
    pub fn load_options(self, len: u64) -> LoadOptions {
        let resident = if self.no_mmap || self.mmap {
            self.no_mmap
        } else {
            GgufFile::huge_pages_available()
                && bitnet::model::available_memory().is_some_and(|avail| len <= avail / 2)
        };
        LoadOptions { resident }
    }
}

/// Opens what `-m` names (a GGUF file, a Hugging Face folder converted in memory, or
/// `hf:OWNER/REPO[:FILE]`), or the bundled demo model without `-m`; returns its name for
/// messages and the file.
pub fn open_gguf(spec: Option<&str>) -> Result<(String, Arc<GgufFile>)> {
    let Some(spec) = spec else {
        let file = GgufFile::from_static(DEMO_MODEL_NAME, DEMO_MODEL)?;
        return Ok((DEMO_MODEL_NAME.to_string(), Arc::new(file)));
    };
    let mut bar = crate::commands::pull::DownloadBar::default();
    // The library's errors name the file (or repository) already: no context is added.
    let source = hub::resolve_model(spec, &HubOptions::from_env(), &mut bar)?;
    Ok((spec.to_string(), source.open_gguf()?))
}

/// Parses `--output-type`.
pub fn output_type(name: &str) -> Result<TensorType> {
    match TensorType::from_name(name) {
        Some(ty @ (TensorType::Q8_0 | TensorType::Q6K | TensorType::F16 | TensorType::F32)) => {
            Ok(ty)
        }
        _ => anyhow::bail!("--output-type {name}: use q8_0, q6_k, f16 or f32"),
    }
}

/// A loaded model with its tokenizer.
pub struct Loaded {
    pub name: String,
    pub model: BitnetModel,
    pub tokenizer: Tokenizer,
}

/// Most threads `-t` accepts: more would only oversubscribe any machine this runs on.
pub const MAX_THREADS: usize = 1024;

/// Checks `-t`.
pub fn check_threads(t: usize) -> Result<()> {
    if !(1..=MAX_THREADS).contains(&t) {
        bail!("-t {t}: the number of threads must be between 1 and {MAX_THREADS}");
    }
    Ok(())
}

impl ModelArgs {
    /// Checks the values that need no model (before any work is done).
    pub fn check(&self) -> Result<()> {
        if let Some(t) = self.threads {
            check_threads(t)?;
        }
        if let Some(name) = &self.output_type {
            output_type(name)?;
        }
        Ok(())
    }

    /// Opens the model, showing a spinner if that takes more than a moment, and warns when
    /// `-c` is beyond the context the model was trained with.
    pub fn load(&self) -> Result<Loaded> {
        self.check()?;
        let spinner = crate::progress::spinner("loading model", Duration::from_millis(300));
        let loaded = self.load_quietly();
        spinner.finish_and_clear();
        let loaded = loaded?;
        let config = loaded.model.config();
        let trained = config.n_ctx_train;
        if self.ctx_size > trained {
            eprintln!(
                "warning: -c {} is beyond the {trained} tokens {} was trained with; expect \
                 worse text past {trained}",
                self.ctx_size, loaded.name
            );
        } else if self.ctx_size == 0 && config.default_context() < trained {
            eprintln!(
                "note: the model claims a context of {trained} tokens; using {} (set -c to \
                 change)",
                config.default_context()
            );
        }
        Ok(loaded)
    }

    fn load_quietly(&self) -> Result<Loaded> {
        let (name, file) = open_gguf(self.model.as_deref())?;
        let tokenizer = match Tokenizer::from_gguf(&file) {
            Ok(t) => t,
            // A Hugging Face folder's tokenizer comes from its tokenizer.json: name that file.
            Err(bitnet::tokenizer::TokenizerError::NoTokenizer { .. })
                if self.model.as_deref().is_some_and(|m| {
                    let dir = std::path::Path::new(m);
                    bitnet::hf::is_hf_folder(dir) && !dir.join("tokenizer.json").is_file()
                }) =>
            {
                bail!(
                    "{}: no tokenizer.json in the folder, so there is no tokenizer to encode \
                     text with",
                    name
                )
            }
            Err(e) => return Err(e.into()),
        };
        let options = self.residency.load_options(file.file_len());
        let mut model = BitnetModel::from_gguf_with(Arc::clone(&file), options)?;
        if let Some(t) = self.threads {
            model.set_threads(t);
        }
        if let Some(isa) = self.isa {
            anyhow::ensure!(isa.is_available(), "this CPU cannot run {isa} kernels");
            model.set_isa(isa);
        }
        if let Some(name) = &self.output_type {
            model.set_output_type(output_type(name)?)?;
        }
        Ok(Loaded {
            name,
            model,
            tokenizer,
        })
    }
}

/// Sampling options shared by `generate`, `chat` and `batch` (llama.cpp's names and defaults).
#[derive(clap::Args, Clone, Debug)]
pub struct SamplingArgs {
    /// Temperature; 0 or below = greedy
    #[arg(long = "temp", default_value_t = 0.8, allow_negative_numbers = true)]
    pub temperature: f32,
    /// Top-k (0 = off)
    #[arg(long, default_value_t = 40)]
    pub top_k: usize,
    /// Top-p (1.0 = off)
    #[arg(long, default_value_t = 0.95, allow_negative_numbers = true)]
    pub top_p: f32,
    /// Min-p (0.0 = off)
    #[arg(long, default_value_t = 0.05, allow_negative_numbers = true)]
    pub min_p: f32,
    /// Repetition penalty (1.0 = off)
    #[arg(long, default_value_t = 1.0, allow_negative_numbers = true)]
    pub repeat_penalty: f32,
    /// Tokens the penalties look back over
    #[arg(long, default_value_t = 64)]
    pub repeat_last_n: usize,
    /// Presence penalty (0.0 = off)
    #[arg(long, default_value_t = 0.0, allow_negative_numbers = true)]
    pub presence_penalty: f32,
    /// Frequency penalty (0.0 = off)
    #[arg(long, default_value_t = 0.0, allow_negative_numbers = true)]
    pub frequency_penalty: f32,
    /// Random seed (-1 or absent: a random one; the same seed gives the same text)
    #[arg(long, allow_negative_numbers = true)]
    pub seed: Option<i64>,
}

impl SamplingArgs {
    /// The sampler settings, checked (an error names the flag and its range).
    pub fn config(&self) -> Result<bitnet::generate::SamplerConfig> {
        let seed = match self.seed {
            None | Some(-1) => bitnet::generate::random_seed(),
            Some(s) => match u64::try_from(s) {
                Ok(s) => s,
                Err(_) => bail!("--seed {s}: must be an integer ≥ 0, or -1 for a random seed"),
            },
        };
        let config = bitnet::generate::SamplerConfig {
            temperature: self.temperature,
            top_k: self.top_k,
            top_p: self.top_p,
            min_p: self.min_p,
            repeat_penalty: self.repeat_penalty,
            presence_penalty: self.presence_penalty,
            frequency_penalty: self.frequency_penalty,
            penalty_last_n: self.repeat_last_n,
            seed,
        };
        config
            .validate()
            .map_err(|e| anyhow::anyhow!(e.for_flag()))?;
        Ok(config)
    }
}

/// Checks `-n` (llama.cpp's `--n-predict`: -1 = no limit) and turns it into a token budget.
pub fn n_predict(n: i64) -> Result<Option<usize>> {
    match n {
        -1 => Ok(None),
        n => match usize::try_from(n) {
            Ok(n) => Ok(Some(n)),
            Err(_) => bail!("-n {n}: must be -1 (no limit) or a number of tokens ≥ 0"),
        },
    }
}

/// llama.cpp's escape processing for `-p`: \n, \t, \r, \\, \", \'. Shared by every command
/// that takes `-p`, so the same argument gives the same tokens everywhere.
pub fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('n') => out.push('\n'),
            Some('t') => out.push('\t'),
            Some('r') => out.push('\r'),
            Some('\\') => out.push('\\'),
            Some('"') => out.push('"'),
            Some('\'') => out.push('\''),
            Some(other) => {
                out.push('\\');
                out.push(other);
            }
            None => out.push('\\'),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::unescape;

    #[test]
    fn escapes_like_llama_cpp() {
        assert_eq!(unescape(r"ROMEO:\n"), "ROMEO:\n");
        assert_eq!(unescape(r"a\tb\\c\q"), "a\tb\\c\\q");
        assert_eq!(unescape("trailing\\"), "trailing\\");
    }
}
