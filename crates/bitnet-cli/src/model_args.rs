//! The options every command that runs a model shares (`-m -c -t --cache-type --isa`), and
//! loading: a GGUF file, a Hugging Face folder or hub repo, or the bundled demo model when `-m`
//! is not given.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use bitnet::formats::gguf::GgufFile;
use bitnet::formats::types::TensorType;
use bitnet::hf::hub::{self, HubOptions};
use bitnet::hf::ModelSource;
use bitnet::kernels::Isa;
use bitnet::model::{BitnetModel, CacheType};
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
    /// Context size in tokens (0: the model's trained context)
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
    /// Read the GGUF file into (huge-page) memory instead of memory-mapping it: a slower start
    /// (about 3 s for the 2B model), about 10 % faster generation
    #[arg(long)]
    pub no_mmap: bool,
    /// Store the output matrix as q8_0 or q6_k (re-encoded at load): fewer bytes read per
    /// generated token, slightly different logits (see README)
    #[arg(long)]
    pub output_type: Option<String>,
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

impl ModelArgs {
    /// Opens the model, showing a spinner if that takes more than a moment.
    pub fn load(&self) -> Result<Loaded> {
        let spinner = crate::progress::spinner("loading model", Duration::from_millis(300));
        let loaded = self.load_quietly();
        spinner.finish_and_clear();
        loaded
    }

    fn load_quietly(&self) -> Result<Loaded> {
        let (name, file) = match &self.model {
            None => (
                DEMO_MODEL_NAME.to_string(),
                Arc::new(GgufFile::from_static(DEMO_MODEL_NAME, DEMO_MODEL)?),
            ),
            Some(spec) => {
                let mut bar = crate::commands::pull::DownloadBar::default();
                let source = hub::resolve_model(spec, &HubOptions::from_env(), &mut bar)
                    .with_context(|| format!("loading {spec}"))?;
                let file = match &source {
                    ModelSource::Gguf(path) if self.no_mmap => {
                        Arc::new(GgufFile::read_into_memory(path)?)
                    }
                    _ => source
                        .open_gguf()
                        .with_context(|| format!("loading {spec}"))?,
                };
                (spec.clone(), file)
            }
        };
        let tokenizer = Tokenizer::from_gguf(&file)?;
        let mut model = BitnetModel::from_gguf(Arc::clone(&file))?;
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
    /// Temperature; 0 = greedy
    #[arg(long = "temp", default_value_t = 0.8)]
    pub temperature: f32,
    /// Top-k (0 = off)
    #[arg(long, default_value_t = 40)]
    pub top_k: usize,
    /// Top-p (1.0 = off)
    #[arg(long, default_value_t = 0.95)]
    pub top_p: f32,
    /// Min-p (0.0 = off)
    #[arg(long, default_value_t = 0.05)]
    pub min_p: f32,
    /// Repetition penalty (1.0 = off)
    #[arg(long, default_value_t = 1.0)]
    pub repeat_penalty: f32,
    /// Tokens the penalties look back over
    #[arg(long, default_value_t = 64)]
    pub repeat_last_n: usize,
    /// Presence penalty (0.0 = off)
    #[arg(long, default_value_t = 0.0)]
    pub presence_penalty: f32,
    /// Frequency penalty (0.0 = off)
    #[arg(long, default_value_t = 0.0)]
    pub frequency_penalty: f32,
    /// Random seed (default: from the clock; the same seed gives the same text)
    #[arg(long)]
    pub seed: Option<u64>,
}

impl SamplingArgs {
    pub fn config(&self) -> bitnet::generate::SamplerConfig {
        bitnet::generate::SamplerConfig {
            temperature: self.temperature,
            top_k: self.top_k,
            top_p: self.top_p,
            min_p: self.min_p,
            repeat_penalty: self.repeat_penalty,
            presence_penalty: self.presence_penalty,
            frequency_penalty: self.frequency_penalty,
            penalty_last_n: self.repeat_last_n,
            seed: self.seed.unwrap_or_else(clock_seed),
        }
    }
}

fn clock_seed() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}
