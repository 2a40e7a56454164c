//! A multi-turn conversation over one [`Session`], through the model's chat template.
//!
//! The conversation is kept as the exact tokens the KV cache holds, and each turn appends only
//! the template's text for the new message: re-rendering the whole conversation would tokenize
//! the previous reply differently from how the model generated it (the template's
//! `Assistant: ` ends in a space that a re-tokenization merges into the reply's first word), so
//! the cache would miss and the reply be prefilled again. When the context fills up the oldest
//! turns are dropped (the system prompt stays) and the cache of the later ones is kept,
//! shifted into place; a reply that alone fills the context is shifted as
//! [`GenerationConfig::context_shift`] does.

use std::collections::VecDeque;
use std::ops::ControlFlow;

use super::{GenerateError, Generation, GenerationConfig, Sampler, SamplerConfig, Session};
use crate::tokenizer::{ChatMessage, ChatTemplate, EncodeOptions, Tokenizer};
use crate::Error;

/// One exchange after the system prompt: what dropping it removes.
#[derive(Clone, Copy, Debug)]
struct Exchange {
    tokens: usize,
    messages: usize,
}

/// A conversation: its messages (for the template), its exact tokens (for the cache), the
/// session holding them and the sampler, which goes on from turn to turn.
pub struct Chat<'m> {
    session: Session<'m>,
    template: ChatTemplate,
    sampler: Sampler,
    config: GenerationConfig,
    /// Drop the oldest turns when the context fills up (and shift within a long reply).
    shift: bool,
    system: Option<String>,
    messages: Vec<ChatMessage>,
    /// The conversation's tokens; the session's cache holds a prefix of them.
    tokens: Vec<u32>,
    /// Leading tokens never dropped: BOS and the system prompt.
    keep: usize,
    turns: VecDeque<Exchange>,
}

impl<'m> Chat<'m> {
    /// A new conversation on `session` (whose cache it takes over) with an optional system
    /// prompt, sampling with `sampling` and generating each reply as `config` says (its
    /// `context_shift` is ignored: see [`Chat::set_context_shift`]). An error
    /// ([`Error::Tokenizer`]) when the model's chat template is not valid Jinja.
    ///
    /// A `Chat` is what [`crate::Model::chat_session`] returns, so it reports the crate's
    /// [`Error`] as the rest of the high-level API does.
    pub fn new(
        mut session: Session<'m>,
        system: Option<String>,
        sampling: SamplerConfig,
        config: GenerationConfig,
    ) -> Result<Chat<'m>, Error> {
        let template = session.tokenizer().chat_template()?;
        session.reset();
        Ok(Chat {
            session,
            template,
            sampler: Sampler::new(sampling),
            config,
            shift: true,
            messages: system.iter().map(ChatMessage::system).collect(),
            system,
            tokens: Vec::new(),
            keep: 0,
            turns: VecDeque::new(),
        })
    }

    /// Whether a full context drops the oldest turns (the default) or stops the reply.
    pub fn set_context_shift(&mut self, on: bool) {
        self.shift = on;
    }

    /// The system prompt.
    pub fn system(&self) -> Option<&str> {
        self.system.as_deref()
    }

    /// The messages so far (a dropped turn's messages are gone).
    pub fn messages(&self) -> &[ChatMessage] {
        &self.messages
    }

    /// The conversation's tokens (what the next turn continues).
    pub fn tokens(&self) -> &[u32] {
        &self.tokens
    }

    /// The session holding the conversation's cache.
    pub fn session(&self) -> &Session<'m> {
        &self.session
    }

    /// Positions the context holds.
    pub fn context_size(&self) -> usize {
        self.session.context_size()
    }

    /// Starts over with the same system prompt.
    pub fn reset(&mut self) {
        self.set_system(self.system.clone());
    }

    /// Starts over with another system prompt.
    pub fn set_system(&mut self, system: Option<String>) {
        self.messages = system.iter().map(ChatMessage::system).collect();
        self.system = system;
        self.tokens.clear();
        self.keep = 0;
        self.turns.clear();
        self.session.reset();
    }

    /// Sends a user message and generates the reply; `on_text` receives its text as it comes
    /// and returns `ControlFlow::Break(())` to interrupt it (the reply so far is kept).
    pub fn send(
        &mut self,
        text: &str,
        on_text: impl FnMut(&str) -> ControlFlow<()>,
    ) -> Result<Generation, Error> {
        self.prepare(text)?.respond(on_text)
    }

    /// The first half of [`Chat::send`]: adds the message's tokens, dropping the oldest turns
    /// if the context needs the room ([`Turn::dropped_tokens`] says how many). An error
    /// (`Error::Generate(`[`GenerateError::PromptTooLong`]`)`) when the conversation cannot
    /// fit even so.
    pub fn prepare(&mut self, text: &str) -> Result<Turn<'_, 'm>, Error> {
        let new = self.user_turn(text)?;
        let capacity = self.session.context_size();
        // Room for the message and some of the reply; older turns go first.
        let reserve = self
            .config
            .max_tokens
            .unwrap_or(capacity / 4)
            .min(capacity / 2);
        let mut dropped = 0;
        while self.shift && self.tokens.len() + new.len() + reserve > capacity {
            let before = self.tokens.len();
            if !self.drop_oldest()? {
                break;
            }
            dropped += before - self.tokens.len();
        }
        let sequence: Vec<u32> = self.tokens.iter().chain(&new).copied().collect();
        if sequence.len() > capacity {
            return Err(GenerateError::PromptTooLong {
                prompt: sequence.len(),
                capacity,
            }
            .into());
        }
        Ok(Turn {
            chat: self,
            text: text.to_string(),
            sequence,
            dropped,
        })
    }

    fn render_past(&self) -> Option<String> {
        if self.messages.is_empty() {
            Some(String::new())
        } else {
            self.template.render(&self.messages, false).ok()
        }
    }

    /// The tokens a new user message adds: the template's text for it (with the assistant's
    /// generation prompt) after what is already there. For a template whose rendering of the
    /// past changes as the conversation grows, the whole conversation is tokenized again
    /// instead (the cache is then reused only up to the change).
    fn user_turn(&mut self, text: &str) -> Result<Vec<u32>, Error> {
        let tokenizer = self.session.tokenizer();
        let mut with_user = self.messages.clone();
        with_user.push(ChatMessage::user(text));
        let full = self.template.render(&with_user, true)?;
        let past = self.render_past();
        let continuation = match &past {
            Some(p) if full.starts_with(p.as_str()) => Some(&full[p.len()..]),
            _ => None,
        };
        let new = match continuation {
            Some(suffix) if !self.tokens.is_empty() => encode_special(tokenizer, suffix),
            Some(suffix) => {
                // The first turn: the system prompt becomes the part never dropped.
                let past = past.unwrap_or_default();
                self.tokens = if past.is_empty() {
                    Vec::new()
                } else {
                    tokenizer.encode_chat(&past)
                };
                if self.tokens.is_empty() {
                    let ids = tokenizer.encode_chat(suffix);
                    let bos = usize::from(ids.first() == tokenizer.bos_id().as_ref());
                    self.tokens.extend_from_slice(&ids[..bos]);
                    self.keep = bos;
                    ids[bos..].to_vec()
                } else {
                    self.keep = self.tokens.len();
                    encode_special(tokenizer, suffix)
                }
            }
            None => {
                // The template does not extend its past rendering: start over from its text.
                self.tokens.clear();
                self.turns.clear();
                self.keep = 0;
                tokenizer.encode_chat(&full)
            }
        };
        Ok(new)
    }

    /// Drops the oldest turn from the conversation and from the cache (shifting the rest into
    /// place); false when there is none to drop.
    fn drop_oldest(&mut self) -> Result<bool, Error> {
        let Some(turn) = self.turns.pop_front() else {
            return Ok(false);
        };
        let (keep, n) = (self.keep, turn.tokens);
        if self.session.context_used() >= keep + n {
            self.session.discard(keep, n)?;
        } else {
            self.session.reset();
        }
        self.tokens.drain(keep..keep + n);
        let first = usize::from(self.system.is_some());
        let end = (first + turn.messages).min(self.messages.len());
        self.messages.drain(first..end);
        Ok(true)
    }

    /// Records the reply: its tokens as generated, then the template's end of the turn.
    fn finish_turn(&mut self, user: &str, sequence_len: usize, g: &Generation) {
        let tokenizer = self.session.tokenizer();
        let before = self.tokens.len();
        let mut with_prompt = self.messages.clone();
        with_prompt.push(ChatMessage::user(user));
        let reply = g.text.trim().to_string();
        let prompt_text = self.template.render(&with_prompt, true).ok();
        with_prompt.push(ChatMessage::assistant(reply.clone()));
        let closed = self.template.render(&with_prompt, false).ok();
        self.messages = with_prompt;

        // The cache holds the sequence (less what context shifts dropped) and the generated
        // tokens but the last one or two: those follow it here.
        let discarded: usize = g.shifts.iter().map(|s| s.discarded).sum();
        let forwarded = (self.session.context_used() + discarded).saturating_sub(sequence_len);
        let mut tokens = self.session.tokens().to_vec();
        tokens.extend_from_slice(&g.generated[forwarded.min(g.generated.len())..]);
        let closing = match (&prompt_text, &closed) {
            (Some(p), Some(c)) => c
                .strip_prefix(p.as_str())
                .and_then(|rest| rest.trim_start().strip_prefix(reply.as_str())),
            _ => None,
        };
        match closing {
            Some(text) => tokens.extend(encode_special(tokenizer, text)),
            // A template that rewrites the reply: take its text from the start (the cache
            // is reused up to where it differs).
            None => {
                self.tokens = tokenizer.encode_chat(closed.as_deref().unwrap_or_default());
                self.turns.clear();
                self.keep = 0;
                return;
            }
        }
        self.tokens = tokens;
        if g.shifts.is_empty() {
            // The user message, the reply and its end of turn.
            self.turns.push_back(Exchange {
                tokens: self.tokens.len().saturating_sub(before),
                messages: 2,
            });
        } else {
            // A shift cut through the turns: what is left after the system prompt is one.
            self.turns.clear();
            let first = usize::from(self.system.is_some());
            self.turns.push_back(Exchange {
                tokens: self.tokens.len() - self.keep,
                messages: self.messages.len() - first,
            });
        }
    }
}

/// A user message added to the conversation, its reply still to generate (made by
/// [`Chat::prepare`]).
pub struct Turn<'c, 'm> {
    chat: &'c mut Chat<'m>,
    text: String,
    sequence: Vec<u32>,
    dropped: usize,
}

impl Turn<'_, '_> {
    /// Tokens of older turns dropped to make room for this one (0: none).
    pub fn dropped_tokens(&self) -> usize {
        self.dropped
    }

    /// The whole conversation's tokens the reply continues.
    pub fn sequence(&self) -> &[u32] {
        &self.sequence
    }

    /// Generates the reply (see [`Chat::send`]).
    pub fn respond(
        self,
        on_text: impl FnMut(&str) -> ControlFlow<()>,
    ) -> Result<Generation, Error> {
        let chat = self.chat;
        let config = GenerationConfig {
            context_shift: chat.shift.then_some(chat.keep),
            ..chat.config.clone()
        };
        let g = chat
            .session
            .generate(&self.sequence, &config, &mut chat.sampler, on_text)?;
        chat.finish_turn(&self.text, self.sequence.len(), &g);
        Ok(g)
    }
}

fn encode_special(tokenizer: &Tokenizer, text: &str) -> Vec<u32> {
    tokenizer.encode(
        text,
        EncodeOptions {
            add_bos: false,
            parse_special: true,
        },
    )
}
