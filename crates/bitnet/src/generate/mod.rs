//! Generation: a session holding the KV cache of one conversation, the loop that samples,
//! streams text and stops (end-of-generation tokens, stop strings, a token budget, a full
//! context), and its figures. Uses `model` and `tokenizer`; knows nothing of the CLI.

pub mod anthropic;
pub mod chat;
pub mod constraint;
pub mod gbnf;
pub mod openai;
pub mod request;
pub mod sampler;
pub mod scheduler;
pub mod speculative;
pub mod tools;

use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::model::{BitnetModel, CacheType, KvCache, Logits, ModelError};
use crate::tokenizer::{PendingUtf8, Tokenizer, TokenizerError};

pub use chat::{Chat, Turn};
pub use request::{Dialect, Input, LogprobsRequest, Prompt, Request, RequestError, ResponseFormat};
pub use sampler::{random_seed, Param, Sampler, SamplerConfig, SamplerError};
pub use scheduler::{
    Event, Finished, Job, PromptProgress, Scheduler, SchedulerConfig, SlotFile, SubmitError, Ticket,
};
use speculative::DraftCache;
pub use speculative::{DraftModel, SpecConfig, SpecStats};

/// Why generation could not run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GenerateError {
    /// The forward pass failed (a token out of range, the cache's memory, ...).
    #[error(transparent)]
    Model(#[from] ModelError),
    /// Decoding a token or rendering the chat template failed.
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
    /// The prompt does not fit the context.
    #[error("the prompt has {prompt} tokens but the context holds {capacity}; use a larger context or a shorter prompt")]
    PromptTooLong {
        /// Tokens in the prompt.
        prompt: usize,
        /// Positions the context holds.
        capacity: usize,
    },
    /// No prompt tokens.
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
    /// Prompt-lookup speculative decoding (lossless: the same tokens as without it).
    pub speculative: Option<SpecConfig>,
}

impl Default for GenerationConfig {
    fn default() -> GenerationConfig {
        GenerationConfig {
            max_tokens: Some(128),
            stop: Vec::new(),
            ignore_eos: false,
            context_shift: None,
            speculative: None,
        }
    }
}

/// One context shift: `discarded` tokens dropped after the first `kept`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ContextShift {
    /// Tokens kept at the start.
    pub kept: usize,
    /// Tokens dropped after them.
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
    /// The output completed its grammar ([`constraint::Constraint`]).
    Constraint,
    /// The scheduler was shut down while the request ran or waited.
    Shutdown,
    /// An embedding job produced its vector.
    Embedded,
}

impl StopReason {
    /// A short name (`eos`, `stop`, `length`, ...), as the CLI's JSON and `finish_reason` use.
    pub fn as_str(&self) -> &'static str {
        match self {
            StopReason::EndOfGeneration(_) => "eos",
            StopReason::StopString(_) => "stop",
            StopReason::MaxTokens => "length",
            StopReason::ContextFull => "context_full",
            StopReason::Interrupted => "interrupted",
            StopReason::Constraint => "grammar",
            StopReason::Shutdown => "shutdown",
            StopReason::Embedded => "embedded",
        }
    }
}

/// The result of one generation, with its timings.
#[derive(Clone, Debug, PartialEq)]
pub struct Generation {
    /// The generated text (without the prompt, a stop string or an end token).
    pub text: String,
    /// Tokens prefilled for this call (after any prefix already in the cache).
    pub prompt_tokens: usize,
    /// Prompt tokens that were already in the cache and not run again.
    pub cached_tokens: usize,
    /// The generated token ids (an end-of-generation token is not among them).
    pub generated: Vec<u32>,
    /// Why it ended.
    pub stop: StopReason,
    /// Context shifts made while generating (see [`GenerationConfig::context_shift`]).
    pub shifts: Vec<ContextShift>,
    /// Prefilling the prompt.
    pub prompt_time: Duration,
    /// From the start of the call to the first generated token.
    pub time_to_first_token: Duration,
    /// From the first generated token to the end.
    pub generation_time: Duration,
    /// The whole call.
    pub total_time: Duration,
    /// Speculative decoding's figures (zero without it).
    pub speculative: SpecStats,
}

impl Generation {
    /// Prompt tokens prefilled per second.
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
    model: Handle<'m, BitnetModel>,
    tokenizer: Handle<'m, Tokenizer>,
    cache: KvCache,
    /// The tokens whose keys and values are in the cache, in order.
    tokens: Vec<u32>,
    /// [`Session::set_draft_model`]: the draft model and its cache for this sequence.
    draft: Option<(DraftModel, DraftCache)>,
}

/// How a session holds its model and tokenizer: borrowed, or shared (a session that owns
/// what it uses can outlive the caller's frame, as a streaming iterator must).
enum Handle<'m, T> {
    Borrowed(&'m T),
    Shared(Arc<T>),
}

impl<T> std::ops::Deref for Handle<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        match self {
            Handle::Borrowed(t) => t,
            Handle::Shared(t) => t,
        }
    }
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
            cache: model.new_cache(n_ctx, cache_type)?,
            model: Handle::Borrowed(model),
            tokenizer: Handle::Borrowed(tokenizer),
            tokens: Vec::new(),
            draft: None,
        })
    }

    /// The model.
    pub fn model(&self) -> &BitnetModel {
        &self.model
    }

    /// The tokenizer.
    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// Positions the cache holds.
    pub fn context_size(&self) -> usize {
        self.cache.capacity()
    }

    /// Positions in use.
    pub fn context_used(&self) -> usize {
        self.tokens.len()
    }

    /// Bytes of the KV cache.
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
        if let Some((_, cache)) = &mut self.draft {
            cache.forget();
        }
    }

    /// Speculative decoding with a draft model in this session's generations, in place of
    /// [`GenerationConfig::speculative`]'s prompt lookup (lossless: the same tokens as
    /// without it); `None` stops it. The draft model gets its own cache of this session's
    /// size and type. Refused when its vocabulary is not this model's.
    pub fn set_draft_model(&mut self, draft: Option<DraftModel>) -> Result<(), GenerateError> {
        self.draft = match draft {
            None => None,
            Some(d) => {
                d.check(&self.model)?;
                let cache = DraftCache::new(&d, self.cache.capacity(), self.cache.cache_type())?;
                Some((d, cache))
            }
        };
        Ok(())
    }

    /// Drops tokens `keep .. keep + n` from the context, keeping the cache of those after them
    /// (their keys re-rotated to their new positions): a chat drops its oldest turns this way
    /// without a new prefill.
    pub fn discard(&mut self, keep: usize, n: usize) -> Result<(), GenerateError> {
        self.model.shift_cache(&mut self.cache, keep, n)?;
        if let Some((config, cache)) = &mut self.draft {
            cache.shift(config, &self.tokens, keep, n);
        }
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
        let mut run = Run::start(self, sequence, config.clone(), sampler)?;
        while let Some(piece) = run.next_text(self, sampler)? {
            if !piece.is_empty() && on_text(&piece).is_break() {
                let rest = run.interrupt(self);
                if !rest.is_empty() {
                    let _ = on_text(&rest);
                }
            }
        }
        Ok(run.finish(self))
    }
}

impl Session<'static> {
    /// A session that shares the model and tokenizer instead of borrowing them (see
    /// [`Session::new`]): it can be kept, moved to another thread, or owned by an iterator.
    pub fn shared(
        model: Arc<BitnetModel>,
        tokenizer: Arc<Tokenizer>,
        n_ctx: usize,
        cache_type: CacheType,
    ) -> Result<Session<'static>, GenerateError> {
        Ok(Session {
            cache: model.new_cache(n_ctx, cache_type)?,
            model: Handle::Shared(model),
            tokenizer: Handle::Shared(tokenizer),
            tokens: Vec::new(),
            draft: None,
        })
    }
}

/// One generation in progress, advanced a token at a time by [`Run::next_text`] against the
/// session it started on. It borrows nothing, so a caller may own it beside its session
/// (a streaming iterator does).
pub(crate) struct Run {
    start: Instant,
    config: GenerationConfig,
    capacity: usize,
    /// Prompt tokens already in the cache, and those prefilled.
    cached: usize,
    prefilled: usize,
    prompt_time: Duration,
    logits: Vec<f32>,
    /// A sampled token whose forward pass is still to run (it runs before the next sample).
    pending: Option<u32>,
    /// Drafted tokens already in the cache beyond the accepted ones, with the logits after
    /// each (see `speculative`).
    draft: std::collections::VecDeque<(u32, Vec<f32>)>,
    /// Cache positions holding accepted tokens (the rest are unverified drafts).
    accepted_len: usize,
    /// The next draft's length: the last rejection point + 1, doubled after a draft kept
    /// whole (drafts that keep failing cost little).
    draft_len: usize,
    /// Tokens in the draft under verification.
    draft_size: usize,
    spec: SpecStats,
    decoder: PendingUtf8,
    text: String,
    /// Text produced but not yet given out (it may be the start of a stop string).
    held: String,
    generated: Vec<u32>,
    shifts: Vec<ContextShift>,
    time_to_first_token: Duration,
    /// Why it ended, once it has; the final text has been given out when `done`.
    stop: Option<StopReason>,
    done: bool,
    total_time: Duration,
}

impl Run {
    /// Prefills what of `sequence` the cache does not hold yet.
    pub(crate) fn start(
        session: &mut Session,
        sequence: &[u32],
        config: GenerationConfig,
        sampler: &mut Sampler,
    ) -> Result<Run, GenerateError> {
        let start = Instant::now();
        if sequence.is_empty() {
            return Err(GenerateError::EmptyPrompt);
        }
        let capacity = session.cache.capacity();
        if sequence.len() > capacity {
            return Err(GenerateError::PromptTooLong {
                prompt: sequence.len(),
                capacity,
            });
        }
        // Reuse the common prefix; at least the last token is run to get fresh logits.
        let mut common = session
            .tokens
            .iter()
            .zip(sequence)
            .take_while(|(a, b)| a == b)
            .count();
        common = common.min(sequence.len() - 1);
        session.cache.truncate(common);
        session.tokens.truncate(common);
        sampler.reset();
        for &t in sequence {
            sampler.accept(t);
        }

        let new = &sequence[common..];
        let logits = session
            .model
            .forward(new, &mut session.cache, Logits::Last)?;
        session.tokens.extend_from_slice(new);
        let draft_len = config.speculative.map_or(0, |s| s.max_draft);
        Ok(Run {
            start,
            config,
            capacity,
            cached: common,
            prefilled: new.len(),
            prompt_time: start.elapsed(),
            logits,
            pending: None,
            draft: std::collections::VecDeque::new(),
            accepted_len: session.tokens.len(),
            draft_len,
            draft_size: 0,
            spec: SpecStats::default(),
            decoder: PendingUtf8::default(),
            text: String::new(),
            held: String::new(),
            generated: Vec::new(),
            shifts: Vec::new(),
            time_to_first_token: Duration::ZERO,
            stop: None,
            done: false,
            total_time: Duration::ZERO,
        })
    }

    /// Generates the next token and returns the text ready to show, possibly empty (a
    /// partial character, or what may be the start of a stop string, is held back); at the
    /// end, the text held back (unless a stop string cut it), then `None`.
    pub(crate) fn next_text(
        &mut self,
        session: &mut Session,
        sampler: &mut Sampler,
    ) -> Result<Option<String>, GenerateError> {
        if self.done {
            return Ok(None);
        }
        if let Some(token) = self.pending.take() {
            if session.tokens.len() >= self.capacity {
                let shifted = match self.config.context_shift {
                    Some(keep) => session.shift(keep)?,
                    None => None,
                };
                match shifted {
                    Some(shift) => self.shifts.push(shift),
                    None => return Ok(Some(self.end(StopReason::ContextFull))),
                }
            }
            self.feed(session, token)?;
        }
        if self
            .config
            .max_tokens
            .is_some_and(|m| self.generated.len() >= m)
        {
            return Ok(Some(self.end(StopReason::MaxTokens)));
        }
        let token = sampler.sample(&self.logits);
        if self.generated.is_empty() {
            self.time_to_first_token = self.start.elapsed();
        }
        // A drafted token the sampler chose itself is already in the cache, with the logits
        // after it; any other choice ends the draft, whose tokens leave the cache. A token that
        // ends the run leaves the cache as a plain run leaves it (without that token).
        let before = self.draft.len();
        let drafted = match self.draft.pop_front() {
            Some((t, logits)) if t == token => Some(logits),
            _ => None,
        };
        if before > 0 {
            match drafted {
                Some(_) if self.draft.is_empty() => self.adapt(self.draft_size, self.draft_size),
                Some(_) => {}
                None => self.adapt(self.draft_size - before, self.draft_size),
            }
        }
        if !self.config.ignore_eos && session.tokenizer.is_end_of_generation(token) {
            self.drop_draft(session);
            return Ok(Some(self.end(StopReason::EndOfGeneration(token))));
        }
        self.generated.push(token);
        sampler.accept(token);
        self.held
            .push_str(&self.decoder.push(&session.tokenizer, token)?);
        if let Some((at, s)) = find_stop(&self.held, &self.config.stop) {
            self.held.truncate(at);
            let last = std::mem::take(&mut self.held);
            self.text.push_str(&last);
            self.drop_draft(session);
            self.finish_with(StopReason::StopString(s));
            return Ok(Some(last));
        }
        let safe = safe_prefix_len(&self.held, &self.config.stop);
        let ready: String = self.held.drain(..safe).collect();
        self.text.push_str(&ready);
        match drafted {
            Some(logits) => {
                self.spec.accepted += 1;
                self.accepted_len += 1;
                self.logits = logits;
            }
            None => {
                self.drop_draft(session);
                self.pending = Some(token);
            }
        }
        Ok(Some(ready))
    }

    /// Runs `token` (the last sampled one) and, with speculation, a draft after it in the
    /// same forward pass.
    fn feed(&mut self, session: &mut Session, token: u32) -> Result<(), GenerateError> {
        let mut draft = Vec::new();
        // Room in the cache after `token`, and tokens still wanted after the one this pass's
        // first row gives.
        let room = self.capacity.saturating_sub(session.tokens.len() + 1);
        let wanted = self
            .config
            .max_tokens
            .map_or(usize::MAX, |m| m.saturating_sub(self.generated.len() + 1));
        if let Some((config, cache)) = &mut session.draft {
            // One sequence: its draft cache catches up in one go.
            draft = cache.draft(config, &session.tokens, token, room.min(wanted), usize::MAX);
        } else if let Some(config) = self.config.speculative {
            let limit = room.min(wanted).min(self.draft_len.max(1));
            draft = speculative::ngram_draft_after(&session.tokens, token, &config, limit);
        }
        if draft.is_empty() {
            self.logits = session
                .model
                .forward(&[token], &mut session.cache, Logits::Last)?;
            session.tokens.push(token);
            self.accepted_len = session.tokens.len();
            return Ok(());
        }
        let mut input = Vec::with_capacity(draft.len() + 1);
        input.push(token);
        input.extend_from_slice(&draft);
        let logits = session
            .model
            .forward(&input, &mut session.cache, Logits::All)?;
        session.tokens.extend_from_slice(&input);
        self.accepted_len = session.tokens.len() - draft.len();
        let n_vocab = logits.len() / input.len();
        let mut rows = logits.chunks_exact(n_vocab).map(<[f32]>::to_vec);
        self.logits = rows.next().unwrap_or_default();
        self.spec.drafts += 1;
        self.spec.drafted += draft.len();
        self.draft_size = draft.len();
        self.draft = draft.into_iter().zip(rows).collect();
        Ok(())
    }

    /// A draft ended: `kept` of its `len` tokens were accepted.
    fn adapt(&mut self, kept: usize, len: usize) {
        let max = self.config.speculative.map_or(0, |s| s.max_draft);
        self.draft_len = speculative::next_draft_len(self.draft_len, kept, len, max);
    }

    /// Takes unverified drafted tokens out of the cache.
    fn drop_draft(&mut self, session: &mut Session) {
        self.draft.clear();
        if session.tokens.len() > self.accepted_len {
            session.cache.truncate(self.accepted_len);
            session.tokens.truncate(self.accepted_len);
        }
    }

    /// Stops at the caller's request ([`StopReason::Interrupted`]); returns the text held
    /// back, which is part of the result.
    pub(crate) fn interrupt(&mut self, session: &mut Session) -> String {
        if self.done {
            return String::new();
        }
        self.pending = None;
        self.drop_draft(session);
        self.end(StopReason::Interrupted)
    }

    /// Ends for `stop`, flushing what was held back; returns that text.
    fn end(&mut self, stop: StopReason) -> String {
        self.held.push_str(&self.decoder.finish());
        let rest = std::mem::take(&mut self.held);
        self.text.push_str(&rest);
        self.finish_with(stop);
        rest
    }

    fn finish_with(&mut self, stop: StopReason) {
        self.stop = Some(stop);
        self.done = true;
        self.total_time = self.start.elapsed();
    }

    /// Whether the generation has ended (its last text given out).
    pub(crate) fn is_done(&self) -> bool {
        self.done
    }

    /// The result; a run not yet ended counts as interrupted here.
    pub(crate) fn finish(mut self, session: &mut Session) -> Generation {
        if !self.done {
            self.interrupt(session);
        }
        let total_time = self.total_time;
        Generation {
            text: self.text,
            prompt_tokens: self.prefilled,
            cached_tokens: self.cached,
            generated: self.generated,
            stop: self.stop.unwrap_or(StopReason::Interrupted),
            shifts: self.shifts,
            prompt_time: self.prompt_time,
            time_to_first_token: self.time_to_first_token,
            generation_time: total_time.saturating_sub(self.time_to_first_token),
            total_time,
            speculative: self.spec,
        }
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
