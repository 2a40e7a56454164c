//! Generation: a session holding the KV cache of one conversation, the loop that samples,
//! streams text and stops (end-of-generation tokens, stop strings, a token budget, a full
//! context), and its figures. Uses `model` and `tokenizer`; knows nothing of the CLI.

pub mod request;
pub mod sampler;

use std::ops::ControlFlow;
use std::time::{Duration, Instant};

use crate::model::{BitnetModel, CacheType, KvCache, Logits, ModelError};
use crate::tokenizer::{Tokenizer, TokenizerError};

pub use request::{Input, Request, RequestError};
pub use sampler::{random_seed, Param, Sampler, SamplerConfig, SamplerError};

/// Why generation could not run.
#[derive(Debug, thiserror::Error)]
pub enum GenerateError {
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
    #[error("the prompt has {prompt} tokens but the context holds {capacity}; use a larger -c or a shorter prompt")]
    PromptTooLong { prompt: usize, capacity: usize },
    #[error("the prompt is empty")]
    EmptyPrompt,
}

/// What to generate.
#[derive(Clone, Debug, PartialEq)]
pub struct GenerationConfig {
    /// Most tokens to generate (`None`: until a stop or the context is full).
    pub max_tokens: Option<usize>,
    /// Stop before any of these strings; they are not part of the output.
    pub stop: Vec<String>,
    /// Keep going past end-of-generation tokens.
    pub ignore_eos: bool,
    /// What to do when the context is full: `None` stops ([`StopReason::ContextFull`]);
    /// `Some(keep)` shifts the context as llama.cpp does, keeping the first `keep` tokens and
    /// dropping half of the rest, and goes on.
    pub context_shift: Option<usize>,
}

impl Default for GenerationConfig {
    fn default() -> GenerationConfig {
        GenerationConfig {
            max_tokens: Some(128),
            stop: Vec::new(),
            ignore_eos: false,
            context_shift: None,
        }
    }
}

/// One context shift: `discarded` tokens dropped after the first `kept`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ContextShift {
    pub kept: usize,
    pub discarded: usize,
}

/// Why generation ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StopReason {
    /// The model produced an end-of-generation token (not part of the output).
    EndOfGeneration(u32),
    /// A stop string appeared (not part of the output).
    StopString(String),
    /// `max_tokens` were generated.
    MaxTokens,
    /// The context (KV cache) is full.
    ContextFull,
    /// The caller's callback asked to stop (an interrupt).
    Interrupted,
}

impl StopReason {
    pub fn as_str(&self) -> &'static str {
        match self {
            StopReason::EndOfGeneration(_) => "eos",
            StopReason::StopString(_) => "stop",
            StopReason::MaxTokens => "length",
            StopReason::ContextFull => "context_full",
            StopReason::Interrupted => "interrupted",
        }
    }
}

/// The result of one generation, with its timings.
#[derive(Clone, Debug, PartialEq)]
pub struct Generation {
    pub text: String,
    /// Tokens prefilled for this call (after any prefix already in the cache).
    pub prompt_tokens: usize,
    /// Prompt tokens that were already in the cache and not run again.
    pub cached_tokens: usize,
    pub generated: Vec<u32>,
    pub stop: StopReason,
    /// Context shifts made while generating (see [`GenerationConfig::context_shift`]).
    pub shifts: Vec<ContextShift>,
    pub prompt_time: Duration,
    /// From the start of the call to the first generated token.
    pub time_to_first_token: Duration,
    pub generation_time: Duration,
    pub total_time: Duration,
}

impl Generation {
    pub fn prompt_tokens_per_s(&self) -> f64 {
        rate(self.prompt_tokens, self.prompt_time)
    }

    /// Tokens per second after the first (the first comes with the prompt's logits).
    pub fn generation_tokens_per_s(&self) -> f64 {
        rate(self.generated.len().saturating_sub(1), self.generation_time)
    }
}

fn rate(n: usize, t: Duration) -> f64 {
    if t.is_zero() {
        0.0
    } else {
        n as f64 / t.as_secs_f64()
    }
}

/// A conversation's state: the model, its tokenizer and one KV cache. Successive calls reuse
/// the cached prefix they share with the new sequence, so a chat turn prefills only what is
/// new.
pub struct Session<'m> {
    model: &'m BitnetModel,
    tokenizer: &'m Tokenizer,
    cache: KvCache,
    /// The tokens whose keys and values are in the cache, in order.
    tokens: Vec<u32>,
}

impl<'m> Session<'m> {
    /// A session with a cache of `n_ctx` positions (0: the model's default context, see
    /// [`crate::model::Config::default_context`]); an error when the machine lacks the memory.
    pub fn new(
        model: &'m BitnetModel,
        tokenizer: &'m Tokenizer,
        n_ctx: usize,
        cache_type: CacheType,
    ) -> Result<Session<'m>, GenerateError> {
        Ok(Session {
            model,
            tokenizer,
            cache: model.new_cache(n_ctx, cache_type)?,
            tokens: Vec::new(),
        })
    }

    pub fn model(&self) -> &BitnetModel {
        self.model
    }

    pub fn tokenizer(&self) -> &Tokenizer {
        self.tokenizer
    }

    pub fn context_size(&self) -> usize {
        self.cache.capacity()
    }

    /// Positions in use.
    pub fn context_used(&self) -> usize {
        self.tokens.len()
    }

    pub fn cache_bytes(&self) -> usize {
        self.cache.bytes()
    }

    /// The tokens in the cache.
    pub fn tokens(&self) -> &[u32] {
        &self.tokens
    }

    /// Forgets everything (a new conversation).
    pub fn reset(&mut self) {
        self.cache.clear();
        self.tokens.clear();
    }

    /// Drops tokens `keep .. keep + n` from the context, keeping the cache of those after them
    /// (their keys re-rotated to their new positions): a chat drops its oldest turns this way
    /// without a new prefill.
    pub fn discard(&mut self, keep: usize, n: usize) -> Result<(), GenerateError> {
        self.model.shift_cache(&mut self.cache, keep, n)?;
        self.tokens.drain(keep..keep + n);
        Ok(())
    }

    /// llama.cpp's context shift: keeps the first `keep` tokens and drops half of the rest.
    /// `None` when nothing can be dropped.
    fn shift(&mut self, keep: usize) -> Result<Option<ContextShift>, GenerateError> {
        let kept = keep.min(self.tokens.len());
        let discarded = (self.tokens.len() - kept) / 2;
        if discarded == 0 {
            return Ok(None);
        }
        self.discard(kept, discarded)?;
        Ok(Some(ContextShift { kept, discarded }))
    }

    /// Generates a continuation of the full token sequence `sequence` (which may begin with
    /// what the cache already holds). `on_text` receives the text as it is produced, never a
    /// broken UTF-8 character nor the beginning of a stop string that may still complete; it
    /// returns `ControlFlow::Break` to interrupt.
    pub fn generate(
        &mut self,
        sequence: &[u32],
        config: &GenerationConfig,
        sampler: &mut Sampler,
        mut on_text: impl FnMut(&str) -> ControlFlow<()>,
    ) -> Result<Generation, GenerateError> {
        let start = Instant::now();
        if sequence.is_empty() {
            return Err(GenerateError::EmptyPrompt);
        }
        let capacity = self.cache.capacity();
        if sequence.len() > capacity {
            return Err(GenerateError::PromptTooLong {
                prompt: sequence.len(),
                capacity,
            });
        }
        // Reuse the common prefix; at least the last token is run to get fresh logits.
        let mut common = self
            .tokens
            .iter()
            .zip(sequence)
            .take_while(|(a, b)| a == b)
            .count();
        common = common.min(sequence.len() - 1);
        self.cache.truncate(common);
        self.tokens.truncate(common);
        sampler.reset();
        for &t in sequence {
            sampler.accept(t);
        }

        let new = &sequence[common..];
        let mut logits = self.model.forward(new, &mut self.cache, Logits::Last)?;
        self.tokens.extend_from_slice(new);
        let prompt_time = start.elapsed();

        let mut decoder = self.tokenizer.stream_decoder();
        let mut text = String::new();
        // Text produced but not yet given to `on_text` (it may be the start of a stop string).
        let mut held = String::new();
        let mut generated = Vec::new();
        let mut shifts = Vec::new();
        let mut time_to_first_token = Duration::ZERO;
        let stop = loop {
            if config.max_tokens.is_some_and(|m| generated.len() >= m) {
                break StopReason::MaxTokens;
            }
            let token = sampler.sample(&logits);
            if generated.is_empty() {
                time_to_first_token = start.elapsed();
            }
            if !config.ignore_eos && self.tokenizer.is_end_of_generation(token) {
                break StopReason::EndOfGeneration(token);
            }
            generated.push(token);
            sampler.accept(token);
            held.push_str(&decoder.push(token)?);
            if let Some((at, s)) = find_stop(&held, &config.stop) {
                held.truncate(at);
                text.push_str(&held);
                let _ = on_text(&held);
                held.clear();
                break StopReason::StopString(s);
            }
            let safe = safe_prefix_len(&held, &config.stop);
            if safe > 0 {
                let ready: String = held.drain(..safe).collect();
                text.push_str(&ready);
                if on_text(&ready).is_break() {
                    break StopReason::Interrupted;
                }
            }
            if self.tokens.len() >= capacity {
                match config.context_shift {
                    Some(keep) => match self.shift(keep)? {
                        Some(shift) => shifts.push(shift),
                        None => break StopReason::ContextFull,
                    },
                    None => break StopReason::ContextFull,
                }
            }
            logits = self
                .model
                .forward(&[token], &mut self.cache, Logits::Last)?;
            self.tokens.push(token);
        };
        if !matches!(stop, StopReason::StopString(_)) {
            held.push_str(&decoder.finish());
            if !held.is_empty() {
                text.push_str(&held);
                let _ = on_text(&held);
            }
        }
        let total_time = start.elapsed();
        Ok(Generation {
            text,
            prompt_tokens: new.len(),
            cached_tokens: common,
            generated,
            stop,
            shifts,
            prompt_time,
            time_to_first_token,
            generation_time: total_time.saturating_sub(time_to_first_token),
            total_time,
        })
    }
}

/// The earliest stop string in `text`: its byte offset and the string.
fn find_stop(text: &str, stops: &[String]) -> Option<(usize, String)> {
    stops
        .iter()
        .filter(|s| !s.is_empty())
        .filter_map(|s| text.find(s.as_str()).map(|at| (at, s.clone())))
        .min_by_key(|(at, _)| *at)
}

/// How much of `text` can be shown: all of it except a tail that is the beginning of some
/// stop string (it may complete with the next tokens).
fn safe_prefix_len(text: &str, stops: &[String]) -> usize {
    let mut safe = text.len();
    for s in stops.iter().filter(|s| !s.is_empty()) {
        // The longest suffix of `text` that is a proper prefix of `s`.
        for (i, _) in text.char_indices() {
            let tail = &text[i..];
            if tail.len() < s.len() && s.starts_with(tail) {
                safe = safe.min(i);
                break;
            }
        }
    }
    safe
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_strings_are_found_and_partial_ones_held_back() {
        let stops = vec!["\n\n".to_string(), "END".to_string()];
        assert_eq!(find_stop("abc\n\nx", &stops), Some((3, "\n\n".into())));
        assert_eq!(find_stop("aENDb\n\n", &stops), Some((1, "END".into())));
        assert_eq!(find_stop("abc", &stops), None);
        assert_eq!(safe_prefix_len("hello E", &stops), 6);
        assert_eq!(safe_prefix_len("hello EN", &stops), 6);
        assert_eq!(safe_prefix_len("hello\n", &stops), 5);
        assert_eq!(safe_prefix_len("hello", &stops), 5);
        assert_eq!(safe_prefix_len("héllo", &[]), 6);
    }
}
