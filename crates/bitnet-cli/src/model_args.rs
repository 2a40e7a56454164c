//! The options every command that runs a model shares (`-m -c -t --cache-type --isa --device`),
//! and loading: a GGUF file, a Hugging Face folder or hub repo, or the bundled demo model when `-m`
//! is not given.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use bitnet::formats::gguf::GgufFile;
use bitnet::formats::types::TensorType;
use bitnet::kernels::Isa;
use bitnet::load::{ModelOptions, Source};
use bitnet::model::{BitnetModel, CacheType};
use bitnet::tokenizer::Tokenizer;

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
    /// Kernel instruction set: scalar, avx2, avx512vnni, amx (x86-64), neon, dotprod, i8mm (AArch64);
    /// default: the best this CPU has
    #[arg(long)]
    pub isa: Option<Isa>,
    #[command(flatten)]
    pub residency: Residency,
    /// Store the output matrix as q8_0 or q6_k (re-encoded at load): fewer bytes read per
    /// generated token, slightly different logits (see README)
    #[arg(long)]
    pub output_type: Option<String>,
    /// Where the model runs: cpu; gpu (the best GPU adapter, software ones such as Mesa's
    /// lavapipe included; an error when there is none); auto (a hardware GPU if there is
    /// one, else the CPU)
    #[arg(long, default_value = "cpu")]
    pub device: bitnet::gpu::Device,
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
    /// The library's setting for these flags.
    pub fn residency(self) -> bitnet::Residency {
        if self.no_mmap {
            bitnet::Residency::Resident
        } else if self.mmap {
            bitnet::Residency::Mapped
        } else {
            bitnet::Residency::Auto
        }
    }
}

/// What `-m` names (a GGUF file, a Hugging Face folder, or `hf:OWNER/REPO[:FILE]`); the
/// bundled demo model without `-m`.
pub fn source(spec: Option<&str>) -> Source {
    Source::from(spec)
}

/// Opens what `-m` names (a Hugging Face folder is converted in memory, a Hub model
/// downloaded with a progress bar); returns its name for messages and the file.
pub fn open_gguf(spec: Option<&str>) -> Result<(String, Arc<GgufFile>)> {
    let source = source(spec);
    // The library's errors name the file (or repository) already: no context is added.
    let file = source.open_with_progress(&mut crate::commands::pull::DownloadBar::default())?;
    Ok((source.name(), file))
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

    /// The library's load options for these flags.
    pub fn options(&self) -> Result<ModelOptions> {
        Ok(ModelOptions {
            threads: self.threads,
            isa: self.isa,
            output_type: self.output_type.as_deref().map(output_type).transpose()?,
            residency: self.residency.residency(),
            context: self.ctx_size,
            cache_type: self.cache_type,
            device: self.device,
        })
    }

    /// [`ModelArgs::load`] without the spinner and the context notes.
    pub fn load_quietly(&self) -> Result<Loaded> {
        let source = source(self.model.as_deref());
        let options = self.options()?;
        let file = source.open_with_progress(&mut crate::commands::pull::DownloadBar::default())?;
        // An option the library refuses is named as this command line spells it.
        let loaded = bitnet::load::load_gguf(&source, file, &options).map_err(|e| match e {
            bitnet::Error::InvalidOption { option, message } => {
                let flag = match option {
                    "context" => "-c",
                    "threads" => "-t",
                    "output_type" => "--output-type",
                    other => other,
                };
                anyhow::anyhow!("{flag} {message}")
            }
            e => e.into(),
        })?;
        Ok(Loaded {
            name: loaded.name,
            model: loaded.model,
            tokenizer: loaded.tokenizer,
        })
    }
}

/// The chat template, for the commands that render conversations (`chat`, `batch`, `serve`).
#[derive(clap::Args, Clone, Debug, Default)]
pub struct TemplateArgs {
    /// The chat template to use instead of the model's own, as llama.cpp's flag takes it: one
    /// of llama.cpp's built-in format names (chatml, llama2, llama3, gemma, phi3, mistral-v7,
    /// zephyr, vicuna, command-r, deepseek3, …; an unknown name lists them) or a Jinja template
    #[arg(long = "chat-template", conflicts_with = "chat_template_file")]
    pub chat_template: Option<String>,
    /// A Jinja chat template read from a file
    #[arg(long = "chat-template-file")]
    pub chat_template_file: Option<std::path::PathBuf>,
}

impl TemplateArgs {
    /// Checks `--chat-template` before any work is done: a value that is neither a built-in
    /// format name nor a Jinja template is an error naming the built-in names.
    pub fn check(&self) -> Result<()> {
        if let Some(value) = &self.chat_template {
            bitnet::tokenizer::chat_template_from_arg(value)
                .map_err(|e| anyhow::anyhow!("--chat-template: {e}"))?;
        }
        Ok(())
    }

    /// Puts the template given on the command line, if any, in place of the model's.
    pub fn apply(&self, tokenizer: &mut Tokenizer) -> Result<()> {
        let text = match (&self.chat_template, &self.chat_template_file) {
            (Some(value), _) => bitnet::tokenizer::chat_template_from_arg(value)
                .map_err(|e| anyhow::anyhow!("--chat-template: {e}"))?
                .into_owned(),
            (None, Some(f)) => crate::files::read_limited_text(
                Some(f),
                crate::files::PROMPT_LIMIT,
                "the chat template",
            )?,
            (None, None) => return Ok(()),
        };
        tokenizer.set_chat_template(Some(text));
        Ok(())
    }
}

/// Speculative decoding, shared by `generate`, `chat` and `batch`.
#[derive(clap::Args, Clone, Debug)]
pub struct SpecArgs {
    /// Speculative decoding: `ngram` drafts from the text so far (prompt lookup, no draft
    /// model) and verifies the draft in one forward pass; lossless (the same tokens as
    /// without it), faster where the output repeats its input
    #[arg(long, default_value = "none", value_parser = ["none", "ngram"])]
    pub spec: String,
    /// Most tokens drafted per step
    #[arg(long, default_value_t = 8)]
    pub draft_max: usize,
    /// Shortest n-gram looked up for a draft
    #[arg(long, default_value_t = 2)]
    pub spec_ngram_min: usize,
    /// Longest n-gram looked up for a draft
    #[arg(long, default_value_t = 4)]
    pub spec_ngram_max: usize,
    /// Speculative decoding with a draft model (llama-server's --model-draft): a smaller model
    /// with this model's vocabulary (e.g. Falcon3-1B-1.58bit for the larger Falcon3 models)
    /// proposes up to --draft-max tokens that one forward pass verifies; lossless, faster when
    /// the draft model is much cheaper per token and often right
    #[arg(long = "model-draft", value_name = "FILE")]
    pub model_draft: Option<String>,
    /// With --model-draft: drafts shorter than this are not verified
    #[arg(long, default_value_t = 0)]
    pub draft_min: usize,
    /// With --model-draft: a draft stops at a token the draft model gives less probability
    #[arg(long, default_value_t = 0.75)]
    pub draft_p_min: f32,
}

impl SpecArgs {
    /// The prompt-lookup setting, checked, and the draft-model flags checked (before any
    /// model loads; [`SpecArgs::load_draft`] loads it).
    pub fn config(&self) -> Result<Option<bitnet::generate::SpecConfig>> {
        if self.model_draft.is_some() {
            if self.spec != "none" {
                bail!(
                    "--spec {} and --model-draft: drafts come from one or the other",
                    self.spec
                );
            }
            check_draft_settings(self.draft_max, self.draft_min, self.draft_p_min)?;
        }
        if self.spec == "none" {
            return Ok(None);
        }
        if !(1..=64).contains(&self.draft_max) {
            bail!("--draft-max {}: must be between 1 and 64", self.draft_max);
        }
        if self.spec_ngram_min == 0 || self.spec_ngram_min > self.spec_ngram_max {
            bail!(
                "--spec-ngram-min {} --spec-ngram-max {}: need 1 ≤ min ≤ max",
                self.spec_ngram_min,
                self.spec_ngram_max
            );
        }
        Ok(Some(bitnet::generate::SpecConfig {
            max_draft: self.draft_max,
            min_ngram: self.spec_ngram_min,
            max_ngram: self.spec_ngram_max.min(64),
        }))
    }

    /// The `--model-draft` model, loaded with the main model's flags (`model`), and checked
    /// to share `tokenizer`'s vocabulary token for token (as llama.cpp checks it).
    pub fn load_draft(
        &self,
        model: &ModelArgs,
        tokenizer: &Tokenizer,
    ) -> Result<Option<bitnet::generate::DraftModel>> {
        let Some(path) = &self.model_draft else {
            return Ok(None);
        };
        let mut draft_args = model.clone();
        draft_args.model = Some(path.clone());
        let loaded = draft_args
            .load_quietly()
            .with_context(|| format!("--model-draft {path}"))?;
        check_draft_vocabulary(path, tokenizer, &loaded.tokenizer)?;
        eprintln!(
            "draft model {} for speculative decoding: up to {} tokens per step (at least {}, \
             each with probability ≥ {})",
            loaded.name, self.draft_max, self.draft_min, self.draft_p_min
        );
        Ok(Some(bitnet::generate::DraftModel {
            model: Arc::new(loaded.model),
            max: self.draft_max,
            min: self.draft_min,
            p_min: self.draft_p_min,
        }))
    }
}

/// `--draft-max`, `--draft-min` and `--draft-p-min`, checked (named as the flags).
pub fn check_draft_settings(max: usize, min: usize, p_min: f32) -> Result<()> {
    if !(1..=64).contains(&max) {
        bail!("--draft-max {max}: must be between 1 and 64");
    }
    if min > max {
        bail!("--draft-min {min}: must not exceed --draft-max {max}");
    }
    if !(0.0..=1.0).contains(&p_min) {
        bail!("--draft-p-min {p_min}: must be a probability, 0 to 1");
    }
    Ok(())
}

/// A `--model-draft` vocabulary checked token for token against the model's (as llama.cpp
/// checks it), the error naming the first token that differs.
pub fn check_draft_vocabulary(path: &str, model: &Tokenizer, draft: &Tokenizer) -> Result<()> {
    let Some(id) = model.vocabulary_difference(draft) else {
        return Ok(());
    };
    let (n, theirs) = (model.vocab_size(), draft.vocab_size());
    if n != theirs {
        bail!(
            "--model-draft {path}: its vocabulary has {theirs} tokens, the model's {n}; a draft \
             model must share the served model's vocabulary"
        );
    }
    bail!(
        "--model-draft {path}: token {id} is {:?} there but {:?} in the model; a draft model \
         must share the served model's vocabulary",
        draft.token_str(id).unwrap_or_default(),
        model.token_str(id).unwrap_or_default()
    )
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
