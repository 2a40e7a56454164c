//! OpenAI's completions and chat completions over the [`Scheduler`]: a parsed [`Request`]
//! into a [`Plan`] and its [`Job`]s, and the jobs' [`Event`]s into OpenAI's response objects
//! ([`Reply`]): whole (`chat.completion`, `text_completion`) or as chunks
//! (`chat.completion.chunk`), with `logprobs`, `usage` and llama-server's `timings`.
//!
//! `bitnet serve` answers its OpenAI endpoints through this module and the Python package's
//! `create_completion` / `create_chat_completion` through the same functions, so that a
//! request answered by both gives the same object (but for `id`, `created` and the timings).
//!
//! Beyond the text: `n` choices (choice `i` samples with seed `seed + i`), `logprobs`, `echo`,
//! `logit_bias`, `stream_options.include_usage`, `response_format` (JSON object or schema,
//! by constrained decoding), and `seed` in every response: the seed the first choice used, so
//! that a request repeated with it gives the same text.
//!
//! [`Scheduler`]: super::Scheduler

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

use super::constraint::ConstraintCompiler;
use super::request::{Input, LogprobsRequest, Prompt, Request, RequestError, ResponseFormat};
use super::sampler::{random_seed, SamplerConfig};
use super::scheduler::{Event, Finished, Job, PromptProgress, TokenLogprob};
use super::tools::{parse_reply, CallParser, Delta, ToolChoice, Tools};
use super::StopReason;
use crate::tokenizer::{ChatTemplate, EncodeOptions, TokenKind, Tokenizer};

/// Which of OpenAI's two generation endpoints a request is for.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Endpoint {
    /// `/v1/completions`: `prompt`, answered with `text`.
    Completions,
    /// `/v1/chat/completions`: `messages`, answered with a `message`.
    Chat,
}

/// What requests are planned against: the model's tokenizer and chat template, and the
/// defaults a request's missing fields take.
pub struct Settings<'a> {
    /// The model's tokenizer.
    pub tokenizer: &'a Tokenizer,
    /// The chat template, or why it does not compile (then only chat requests fail).
    pub template: Result<&'a ChatTemplate, &'a str>,
    /// Compiles `response_format` into a grammar.
    pub constraints: &'a ConstraintCompiler,
    /// Sampling settings a request does not give (its seed is used only with `fixed_seed`).
    pub defaults: &'a SamplerConfig,
    /// Whether a request without a seed takes `defaults.seed` (otherwise a fresh random one).
    pub fixed_seed: bool,
    /// `max_tokens` when a request gives none; `None`: until the end of generation or a full
    /// context (llama.cpp's `-n -1`).
    pub n_predict: Option<usize>,
    /// Context shift when a slot fills up: `Some(keep)` (llama.cpp's `--keep`, a request's
    /// `n_keep` overrides it); `None` stops with `length`.
    pub context_shift: Option<i64>,
    /// Positions a slot's context holds.
    pub n_ctx: usize,
}

/// Seconds since the Unix epoch (a response's `created`).
pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A fresh seed for a request that gives none, below 2^53 so that JavaScript clients can
/// read it back exactly and send it again.
pub fn fresh_seed() -> u64 {
    random_seed() & ((1 << 53) - 1)
}

/// A response id unique across requests and restarts: a random part and a counter.
pub fn response_id(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}-{:016x}{n:06x}", random_seed())
}

/// Responses' `system_fingerprint`.
pub fn fingerprint() -> String {
    format!("bitnet-rust-{}", env!("CARGO_PKG_VERSION"))
}

/// OpenAI's `finish_reason` for a stop.
pub fn finish_reason(stop: &StopReason) -> &'static str {
    match stop {
        StopReason::MaxTokens | StopReason::ContextFull => "length",
        _ => "stop",
    }
}

/// llama.cpp's `--keep`: prompt tokens a context shift keeps, `keep` after BOS (which is
/// always kept), the whole prompt for -1 or more than it has.
pub fn keep_tokens(keep: i64, prompt: &[u32], bos: Option<u32>) -> usize {
    let with_bos = usize::from(bos.is_some() && prompt.first() == bos.as_ref());
    match usize::try_from(keep) {
        Ok(k) => (k + with_bos).min(prompt.len()),
        Err(_) => prompt.len(),
    }
}

/// A prompt of `n_ctx` tokens or more cut to fit a context of `n_ctx`, as llama-server cuts
/// one when context shifting is on: the first `keep` tokens stay, and of the rest whole blocks
/// of half the remaining room are dropped from the front until what is left fits, leaving
/// room to generate. `None` when `keep` leaves no room to cut in.
pub fn truncate_prompt(prompt: &[u32], keep: usize, n_ctx: usize) -> Option<Vec<u32>> {
    let keep = keep.min(prompt.len());
    let block = n_ctx.checked_sub(keep)? / 2;
    if block == 0 || prompt.len() < n_ctx {
        return None;
    }
    // At least one block goes (prompt − keep ≥ 2·block), and the rest is shorter than
    // keep + 2·block ≤ n_ctx.
    let erased = (prompt.len() - keep - block) / block;
    let mut cut = Vec::with_capacity(prompt.len() - erased * block);
    cut.extend_from_slice(&prompt[..keep]);
    cut.extend_from_slice(&prompt[keep + erased * block..]);
    Some(cut)
}

/// llama-server's `timings` over finished generations: prompt figures count the tokens run
/// (not those reused from a slot's cache, which are `cache_n`); times are the longest
/// choice's, in milliseconds.
pub fn timings(done: &[&Finished], n_ctx: usize) -> Value {
    let cache_n: usize = done.iter().map(|f| f.cached_tokens).sum();
    let prompt_n: usize = done
        .iter()
        .map(|f| f.prompt_tokens.saturating_sub(f.cached_tokens))
        .sum();
    let predicted_n: usize = done.iter().map(|f| f.generated_tokens).sum();
    let ms = |d: std::time::Duration| d.as_secs_f64() * 1e3;
    let prompt_ms = done
        .iter()
        .map(|f| ms(f.time_to_first_token.saturating_sub(f.queued)))
        .fold(0.0, f64::max);
    let predicted_ms = done
        .iter()
        .map(|f| ms(f.total.saturating_sub(f.time_to_first_token)))
        .fold(0.0, f64::max);
    // A rate over nothing is 0, not NaN (JSON has no NaN).
    let per_token = |ms: f64, n: usize| if n == 0 { 0.0 } else { ms / n as f64 };
    let per_second = |ms: f64, n: usize| if ms <= 0.0 { 0.0 } else { n as f64 * 1e3 / ms };
    json!({
        "cache_n": cache_n,
        "prompt_n": prompt_n,
        "prompt_ms": prompt_ms,
        "prompt_per_token_ms": per_token(prompt_ms, prompt_n),
        "prompt_per_second": per_second(prompt_ms, prompt_n),
        "predicted_n": predicted_n,
        "predicted_ms": predicted_ms,
        "predicted_per_token_ms": per_token(predicted_ms, predicted_n),
        "predicted_per_second": per_second(predicted_ms, predicted_n),
        "n_ctx": n_ctx,
    })
}

/// One prompt, ready to run.
#[derive(Clone, Debug)]
pub struct PromptIds {
    /// Its token ids.
    pub ids: Vec<u32>,
    /// Its text (for `echo`).
    pub text: String,
    /// Cut to fit the context ([`truncate_prompt`]): `ids` are what is left.
    pub truncated: bool,
}

/// A request turned into prompts and per-choice settings (llama-server's `/completion`
/// plans its requests here too).
#[derive(Clone, Debug)]
pub struct Plan {
    /// The prompts, each answered with `n` choices.
    pub prompts: Vec<PromptIds>,
    /// Choices per prompt.
    pub n: usize,
    /// Alternatives per position when logprobs are asked for.
    pub logprobs: Option<usize>,
    /// Completions: the prompt is part of the returned text.
    pub echo: bool,
    /// The first choice's seed (choice `i` of a prompt uses `seed + i`).
    pub seed: u64,
    /// `stream_options.include_usage`.
    pub include_usage: bool,
    /// Chat with tools in a template that writes Llama 3.x calls: replies are constrained
    /// and read into calls.
    pub tools: Option<Tools>,
}

fn bad(field: &'static str, message: impl Into<String>) -> RequestError {
    RequestError::Unsupported {
        field,
        message: message.into(),
    }
}

/// llama-server's `prompt_progress` object.
pub fn progress_json(p: &PromptProgress) -> Value {
    json!({"total": p.total, "cache": p.cache, "processed": p.processed, "time_ms": p.time_ms})
}

/// Checks a request against the model and turns it into prompts: every field is checked
/// here, before anything runs.
pub fn plan(
    settings: &Settings<'_>,
    req: &Request,
    endpoint: Endpoint,
) -> Result<Plan, RequestError> {
    let tokenizer = settings.tokenizer;
    let missing = |field, expected| RequestError::Field { field, expected };
    // Whether the chat template writes calls as Llama 3.x does (the format read here).
    let mut llama_calls = false;
    let mut prompts = match (endpoint, req.input()) {
        (Endpoint::Completions, Ok(Input::Prompts(prompts))) => prompts
            .into_iter()
            .map(|p| match p {
                Prompt::Text(text) => PromptIds {
                    ids: tokenizer.encode(
                        &text,
                        EncodeOptions {
                            add_bos: tokenizer.add_bos_token(),
                            parse_special: false,
                        },
                    ),
                    text,
                    truncated: false,
                },
                Prompt::Tokens(ids) => PromptIds {
                    text: tokenizer.decode(&ids).unwrap_or_default(),
                    ids,
                    truncated: false,
                },
                // llama-server's dialect: its `/completion` has made it tokens already.
                mixed @ Prompt::Mixed(_) => {
                    let ids = mixed.ids(|text, first| {
                        tokenizer.encode(
                            text,
                            EncodeOptions {
                                add_bos: first && tokenizer.add_bos_token(),
                                parse_special: false,
                            },
                        )
                    });
                    PromptIds {
                        text: tokenizer.decode(&ids).unwrap_or_default(),
                        ids,
                        truncated: false,
                    }
                }
            })
            .collect::<Vec<_>>(),
        (Endpoint::Chat, Ok(Input::Messages(messages))) => {
            let template = settings
                .template
                .map_err(|e| bad("messages", e.to_string()))?;
            if req.tools.is_some() && !template.supports_tools() {
                return Err(bad(
                    "tools",
                    "this model's chat template cannot express tools (function calling): send \
                     the request without `tools`",
                ));
            }
            llama_calls = template.writes_llama_tool_calls();
            let forced = req
                .tools
                .as_ref()
                .is_some_and(|t| *t.choice() != ToolChoice::Auto);
            if forced && !llama_calls {
                return Err(bad(
                    "tool_choice",
                    "this model's chat template asks for tool calls in a format other than \
                     Llama 3.x's `{\"name\": …, \"parameters\": …}`, the one this server can \
                     force: use `tool_choice: \"auto\"` (the reply is then returned as text)",
                ));
            }
            let text = template
                .render_with_tools(
                    &messages,
                    req.tools.as_ref().map(Tools::definitions),
                    req.add_generation_prompt.unwrap_or(true),
                )
                .map_err(RequestError::Template)?;
            vec![PromptIds {
                ids: tokenizer.encode_chat(&text),
                text,
                truncated: false,
            }]
        }
        (Endpoint::Completions, Err(e)) if req.prompt.is_some() => return Err(e),
        (Endpoint::Chat, Err(e)) if req.messages.is_some() => return Err(e),
        (Endpoint::Completions, _) => return Err(missing("prompt", "a string or a list")),
        (Endpoint::Chat, _) => return Err(missing("messages", "a non-empty list")),
    };
    let field = match endpoint {
        Endpoint::Completions => "prompt",
        Endpoint::Chat => "messages",
    };
    if prompts.iter().any(|p| p.ids.is_empty()) {
        return Err(missing(field, "a non-empty prompt"));
    }
    let n_vocab = tokenizer.vocab_size();
    if let Some(t) = prompts
        .iter()
        .flat_map(|p| &p.ids)
        .find(|&&t| t as usize >= n_vocab)
    {
        return Err(bad(
            "prompt",
            format!("token id {t} is outside the vocabulary of {n_vocab} tokens"),
        ));
    }
    // With context shifting on, a prompt that fills the context is cut as llama-server cuts
    // it, instead of refused.
    if let Some(keep) = settings.context_shift {
        for p in prompts.iter_mut().filter(|p| p.ids.len() >= settings.n_ctx) {
            let keep = keep_tokens(req.n_keep.unwrap_or(keep), &p.ids, tokenizer.bos_id());
            if let Some(cut) = truncate_prompt(&p.ids, keep, settings.n_ctx) {
                p.ids = cut;
                p.truncated = true;
            }
        }
    }
    if let Some(p) = prompts.iter().find(|p| p.ids.len() > settings.n_ctx) {
        return Err(RequestError::ExceedsContext {
            field,
            n_prompt_tokens: p.ids.len(),
            n_ctx: settings.n_ctx,
        });
    }
    if let Some((id, _)) = req.logit_bias.iter().find(|(t, _)| *t as usize >= n_vocab) {
        return Err(bad(
            "logit_bias",
            format!("token id {id} is outside the vocabulary of {n_vocab} tokens"),
        ));
    }
    let logprobs = match (req.logprobs, req.top_logprobs) {
        (None | Some(LogprobsRequest::Flag(false)), Some(k)) if k > 0 => {
            return Err(bad(
                "top_logprobs",
                "`logprobs` must be true when `top_logprobs` is given",
            ))
        }
        (None | Some(LogprobsRequest::Flag(false)), _) => None,
        (Some(LogprobsRequest::Flag(true)), k) => Some(k.unwrap_or(0)),
        (Some(LogprobsRequest::Count(k)), _) => Some(k),
    };
    // A request without a seed gets a fresh one (unless the defaults fix one), and the
    // response says which.
    let seed = match req.seed {
        Some(s) => s,
        None if settings.fixed_seed => settings.defaults.seed,
        None => fresh_seed(),
    };
    Ok(Plan {
        prompts,
        n: req.n,
        logprobs,
        echo: req.echo && endpoint == Endpoint::Completions,
        seed,
        include_usage: req.include_usage,
        tools: req.tools.clone().filter(|_| llama_calls),
    })
}

/// The jobs of a plan: one per (prompt, choice), in choice-index order.
pub fn jobs(settings: &Settings<'_>, req: &Request, plan: &Plan) -> Result<Vec<Job>, RequestError> {
    let mut sampler = req.sampler_config(settings.defaults)?;
    let mut out = Vec::with_capacity(plan.prompts.len() * plan.n);
    for p in &plan.prompts {
        for i in 0..plan.n {
            sampler.seed = plan.seed.wrapping_add(i as u64);
            let constraints = settings.constraints;
            let constraint = match &req.response_format {
                Some(ResponseFormat::Text) => None,
                Some(ResponseFormat::JsonObject) => Some(constraints.json_object()),
                Some(ResponseFormat::JsonSchema(s)) => Some(constraints.json_schema(s)),
                Some(ResponseFormat::Grammar(g)) => Some(constraints.gbnf(g)),
                // The calls' grammar (`auto` included: text, or calls that parse).
                None => plan.tools.as_ref().map(|t| constraints.lark(&t.grammar())),
            }
            .transpose()
            .map_err(|e| {
                let field = match req.response_format {
                    Some(ResponseFormat::Grammar(_)) => "grammar",
                    None => "tools",
                    _ => "response_format",
                };
                bad(field, e.to_string())
            })?;
            let context_shift = settings.context_shift.map(|keep| {
                keep_tokens(
                    req.n_keep.unwrap_or(keep),
                    &p.ids,
                    settings.tokenizer.bos_id(),
                )
            });
            out.push(Job {
                prompt: p.ids.clone(),
                sampler: sampler.clone(),
                max_tokens: req.max_tokens.unwrap_or(settings.n_predict),
                stop: req.stop.clone(),
                ignore_eos: req.ignore_eos,
                logit_bias: req.token_logit_bias(settings.tokenizer),
                logprobs: plan.logprobs,
                post_sampling_probs: req.post_sampling_probs,
                prompt_logprobs: plan.echo && plan.logprobs.is_some(),
                constraint,
                context_shift,
                embedding: None,
                slot: req.id_slot,
                // Progress goes out as stream chunks; a whole answer has nowhere to put it.
                progress: req.return_progress && req.stream,
            });
        }
    }
    Ok(out)
}

/// One choice's progress.
#[derive(Default)]
struct ChoiceState {
    text: String,
    /// The generated tokens' logprobs.
    logprobs: Vec<TokenLogprob>,
    /// Completions with echo: the prompt's positions.
    prompt_logprobs: Vec<Option<TokenLogprob>>,
    finished: Option<Finished>,
    /// Index of the prompt this choice continues.
    prompt: usize,
    /// Characters of text streamed so far (completions' `text_offset`).
    offset: usize,
    /// Chat with tools, streamed: the reply read into content and calls as it comes.
    calls: Option<CallParser>,
}

/// A request's response being built from its choices' events: [`Reply::event`] takes each
/// (choice index, event) as the scheduler hands it over and gives the chunk to stream, if
/// any; [`Reply::response`] gives the whole object once every choice is done.
pub struct Reply {
    tokenizer: Arc<Tokenizer>,
    endpoint: Endpoint,
    /// The response's `id`.
    pub id: String,
    /// The response's `created`.
    pub created: u64,
    /// The response's `model`.
    pub model: String,
    n_ctx: usize,
    /// What was asked for.
    pub plan: Plan,
    choices: Vec<ChoiceState>,
    remaining: usize,
}

impl Reply {
    /// A reply to `plan`'s jobs (as [`jobs`] made them), from a model named `model` whose
    /// slots hold `n_ctx` positions.
    pub fn new(
        tokenizer: Arc<Tokenizer>,
        endpoint: Endpoint,
        model: &str,
        n_ctx: usize,
        plan: Plan,
    ) -> Reply {
        let count = plan.prompts.len() * plan.n;
        let choices = (0..count)
            .map(|i| ChoiceState {
                prompt: i / plan.n.max(1),
                calls: plan.tools.as_ref().map(CallParser::new),
                ..ChoiceState::default()
            })
            .collect();
        Reply {
            tokenizer,
            endpoint,
            id: response_id(match endpoint {
                Endpoint::Chat => "chatcmpl",
                Endpoint::Completions => "cmpl",
            }),
            created: now(),
            model: model.to_string(),
            n_ctx,
            plan,
            choices,
            remaining: count,
        }
    }

    /// Whether every choice has ended.
    pub fn is_done(&self) -> bool {
        self.remaining == 0
    }

    /// The choices that have ended, with how.
    pub fn finished(&self) -> impl Iterator<Item = &Finished> {
        self.choices.iter().filter_map(|c| c.finished.as_ref())
    }

    /// Whether the drain after a shutdown ended a choice before its own end.
    pub fn cut_by_shutdown(&self) -> bool {
        self.finished()
            .any(|f| matches!(f.stop, StopReason::Shutdown))
    }

    fn token_str(&self, id: u32) -> String {
        let bytes = self.tokenizer.token_bytes(id).unwrap_or_default();
        String::from_utf8_lossy(bytes).into_owned()
    }

    fn token_bytes(&self, id: u32) -> Vec<u8> {
        self.tokenizer
            .token_bytes(id)
            .map(<[u8]>::to_vec)
            .unwrap_or_default()
    }

    /// Chat's `logprobs.content` entries.
    fn chat_logprobs(&self, lps: &[TokenLogprob]) -> Value {
        let entries: Vec<Value> = lps
            .iter()
            .map(|lp| {
                let top: Vec<Value> = lp
                    .top
                    .iter()
                    .map(|&(t, l)| {
                        json!({"token": self.token_str(t), "logprob": l,
                               "bytes": self.token_bytes(t)})
                    })
                    .collect();
                json!({"token": self.token_str(lp.token), "logprob": lp.logprob,
                       "bytes": self.token_bytes(lp.token), "top_logprobs": top})
            })
            .collect();
        json!({"content": entries})
    }

    /// Completions' `logprobs` object for positions (prompt ones may be `None` for the first)
    /// starting at character `offset`.
    fn completion_logprobs(
        &self,
        positions: &[(u32, Option<&TokenLogprob>)],
        offset: &mut usize,
    ) -> Value {
        let (mut tokens, mut lps, mut tops, mut offsets) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for &(id, lp) in positions {
            let s = self.token_str(id);
            offsets.push(*offset);
            // Special tokens (BOS) are not part of the text the offsets index.
            if self.tokenizer.token_kind(id) != Some(TokenKind::Control) {
                *offset += s.chars().count();
            }
            tokens.push(s);
            lps.push(lp.map_or(Value::Null, |l| json!(l.logprob)));
            tops.push(lp.map_or(Value::Null, |l| {
                let m: serde_json::Map<String, Value> = l
                    .top
                    .iter()
                    .map(|&(t, v)| (self.token_str(t), json!(v)))
                    .collect();
                Value::Object(m)
            }));
        }
        json!({"tokens": tokens, "token_logprobs": lps, "top_logprobs": tops,
               "text_offset": offsets})
    }

    /// `usage`: prompt tokens once per prompt (its cached ones from its first choice), the
    /// generated tokens of every choice.
    pub fn usage(&self) -> Value {
        let prompt: usize = self.plan.prompts.iter().map(|p| p.ids.len()).sum();
        let n = self.plan.n.max(1);
        let cached: usize = self
            .choices
            .iter()
            .enumerate()
            .filter(|(i, _)| i % n == 0)
            .filter_map(|(_, c)| c.finished.as_ref().map(|f| f.cached_tokens))
            .sum();
        let completion: usize = self.finished().map(|f| f.generated_tokens).sum();
        json!({
            "prompt_tokens": prompt, "completion_tokens": completion,
            "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": cached},
        })
    }

    /// llama-server's `timings` over the finished choices.
    pub fn timings(&self) -> Value {
        let done: Vec<&Finished> = self.finished().collect();
        timings(&done, self.n_ctx)
    }

    fn object(&self, chunk: bool) -> &'static str {
        match (self.endpoint, chunk) {
            (Endpoint::Chat, false) => "chat.completion",
            (Endpoint::Chat, true) => "chat.completion.chunk",
            (Endpoint::Completions, _) => "text_completion",
        }
    }

    fn envelope(&self, chunk: bool, choices: Vec<Value>) -> Value {
        json!({
            "id": self.id, "object": self.object(chunk), "created": self.created,
            "model": self.model, "system_fingerprint": fingerprint(),
            "seed": self.plan.seed, "choices": choices,
        })
    }

    /// A chunk holding `choices`; the one that ends the last choice carries `timings`.
    fn chunk(&self, choices: Vec<Value>) -> Value {
        let mut v = self.envelope(true, choices);
        if self.plan.include_usage {
            v["usage"] = Value::Null;
        }
        if self.is_done() {
            v["timings"] = self.timings();
        }
        v
    }

    /// The seed choice `i` sampled with.
    fn choice_seed(&self, i: usize) -> u64 {
        self.plan.seed.wrapping_add((i % self.plan.n.max(1)) as u64)
    }

    /// Chat: the first chunk, opening every choice's assistant message (`None` for
    /// completions, whose stream starts with the text).
    pub fn role_chunk(&self) -> Option<Value> {
        if self.endpoint != Endpoint::Chat {
            return None;
        }
        let firsts = (0..self.choices.len())
            .map(|i| {
                json!({"index": i, "delta": {"role": "assistant", "content": null},
                       "logprobs": null, "finish_reason": null})
            })
            .collect();
        Some(self.chunk(firsts))
    }

    /// Takes choice `i`'s next event; gives the chunk that streams it, if any, or the
    /// model's error (`Event::Failed`).
    pub fn event(&mut self, i: usize, event: Event) -> Result<Option<Value>, String> {
        if i >= self.choices.len() {
            return Ok(None);
        }
        let wants_logprobs = self.plan.logprobs.is_some();
        let choice = match event {
            Event::Embedding(_) => return Ok(None),
            // llama-server's shape: a chunk with the choice's empty delta (or text) and the
            // `prompt_progress` clients such as its web UI read.
            Event::Progress(p) => {
                let choice = match self.endpoint {
                    Endpoint::Chat => json!({"index": i, "delta": {"role": "assistant",
                        "content": null}, "logprobs": null, "finish_reason": null}),
                    Endpoint::Completions => {
                        json!({"index": i, "text": "", "logprobs": null, "finish_reason": null})
                    }
                };
                let mut chunk = self.chunk(vec![choice]);
                chunk["prompt_progress"] = progress_json(&p);
                return Ok(Some(chunk));
            }
            Event::Prompt { logprobs, .. } => {
                let prompt_lps = logprobs.unwrap_or_default();
                if !self.plan.echo {
                    return Ok(None);
                }
                // Completions with echo: the prompt comes first.
                let prompt = &self.plan.prompts[self.choices[i].prompt];
                let positions: Vec<(u32, Option<&TokenLogprob>)> = prompt
                    .ids
                    .iter()
                    .enumerate()
                    .map(|(j, &id)| (id, prompt_lps.get(j).and_then(Option::as_ref)))
                    .collect();
                let mut offset = self.choices[i].offset;
                let lp = wants_logprobs.then(|| self.completion_logprobs(&positions, &mut offset));
                let chunk = json!({"index": i, "text": prompt.text, "logprobs": lp,
                                   "finish_reason": null});
                self.choices[i].offset = offset;
                self.choices[i].prompt_logprobs = prompt_lps;
                chunk
            }
            Event::Token { text, logprob, .. } => {
                let chunk = if text.is_empty() && !wants_logprobs {
                    None
                } else {
                    Some(match self.endpoint {
                        Endpoint::Chat => {
                            let lp = logprob
                                .as_ref()
                                .map(|l| self.chat_logprobs(std::slice::from_ref(l)));
                            match self.choices[i].calls.as_mut() {
                                // With tools: what the reader can tell so far, as content
                                // and `delta.tool_calls` (nothing while it cannot tell).
                                Some(parser) => match tool_delta(&parser.push(&text)) {
                                    Some(delta) => json!({"index": i, "delta": delta,
                                                          "logprobs": lp, "finish_reason": null}),
                                    None => {
                                        let c = &mut self.choices[i];
                                        c.text.push_str(&text);
                                        c.logprobs.extend(logprob);
                                        return Ok(None);
                                    }
                                },
                                None => json!({"index": i, "delta": {"content": text},
                                               "logprobs": lp, "finish_reason": null}),
                            }
                        }
                        Endpoint::Completions => {
                            let mut offset = self.choices[i].offset;
                            let lp = logprob.as_ref().map(|l| {
                                self.completion_logprobs(&[(l.token, Some(l))], &mut offset)
                            });
                            self.choices[i].offset = offset;
                            json!({"index": i, "text": text, "logprobs": lp,
                                   "finish_reason": null})
                        }
                    })
                };
                let c = &mut self.choices[i];
                c.text.push_str(&text);
                c.logprobs.extend(logprob);
                match chunk {
                    Some(chunk) => chunk,
                    None => return Ok(None),
                }
            }
            Event::Done(f) => {
                if self.choices[i].finished.is_some() {
                    return Ok(None);
                }
                self.remaining -= 1;
                let mut reason = finish_reason(&f.stop);
                let stop = f.stop.as_str();
                let tail = f.tail.clone();
                let c = &mut self.choices[i];
                c.text.push_str(&f.tail);
                c.finished = Some(f);
                let calls = c.calls.take();
                let seed = self.choice_seed(i);
                match self.endpoint {
                    Endpoint::Chat => {
                        let delta = match calls {
                            Some(mut parser) => {
                                let mut deltas = parser.push(&tail);
                                if parser.has_calls() && reason == "stop" {
                                    reason = "tool_calls";
                                }
                                // What was held back (text that only looked like a call) is
                                // content after all.
                                if let Some(rest) = parser.finish().content {
                                    deltas.push(Delta::Content(rest));
                                }
                                tool_delta(&deltas).unwrap_or_else(|| json!({}))
                            }
                            None if tail.is_empty() => json!({}),
                            None => json!({"content": tail}),
                        };
                        json!({"index": i, "delta": delta, "logprobs": null,
                               "finish_reason": reason, "stop_reason": stop, "seed": seed})
                    }
                    Endpoint::Completions => {
                        json!({"index": i, "text": tail, "logprobs": null,
                               "finish_reason": reason, "stop_reason": stop, "seed": seed})
                    }
                }
            }
            Event::Failed(e) => return Err(e),
        };
        Ok(Some(self.chunk(vec![choice])))
    }

    /// The last chunk of a stream with `stream_options.include_usage`: no choices, the
    /// `usage` (and llama-server's `timings`, which its clients read there); `None` without.
    pub fn usage_chunk(&self) -> Option<Value> {
        if !self.plan.include_usage {
            return None;
        }
        let mut v = self.envelope(true, Vec::new());
        v["usage"] = self.usage();
        v["timings"] = self.timings();
        Some(v)
    }

    /// Chat: the assistant's message of a finished choice; with tools, text that is calls
    /// becomes `tool_calls` (and `content` null).
    fn chat_message(&self, c: &ChoiceState) -> Value {
        let Some(tools) = &self.plan.tools else {
            return json!({"role": "assistant", "content": c.text, "refusal": null});
        };
        let reply = parse_reply(tools, &c.text);
        let mut m = json!({"role": "assistant", "content": reply.content, "refusal": null});
        if !reply.calls.is_empty() {
            m["tool_calls"] = reply.calls.iter().map(|c| c.to_openai()).collect();
        }
        m
    }

    /// Chat: `tool_calls` when the reply ended by itself after making calls.
    fn chat_finish_reason(&self, c: &ChoiceState, stop: &StopReason) -> &'static str {
        let reason = finish_reason(stop);
        match &self.plan.tools {
            Some(t) if reason == "stop" && !parse_reply(t, &c.text).calls.is_empty() => {
                "tool_calls"
            }
            _ => reason,
        }
    }

    /// The whole response (`chat.completion` or `text_completion`) over the finished
    /// choices, with `usage` and `timings`.
    pub fn response(&self) -> Value {
        let mut choices = Vec::with_capacity(self.choices.len());
        for (i, c) in self.choices.iter().enumerate() {
            let Some(f) = &c.finished else { continue };
            let stop = json!(f.stop.as_str());
            let choice = match self.endpoint {
                Endpoint::Chat => json!({
                    "index": i,
                    "message": self.chat_message(c),
                    "logprobs": self.plan.logprobs.map(|_| self.chat_logprobs(&c.logprobs)),
                    "finish_reason": self.chat_finish_reason(c, &f.stop),
                    "stop_reason": stop,
                    "seed": self.choice_seed(i),
                }),
                Endpoint::Completions => {
                    let prompt = &self.plan.prompts[c.prompt];
                    let mut text = String::new();
                    let mut positions: Vec<(u32, Option<&TokenLogprob>)> = Vec::new();
                    if self.plan.echo {
                        text.push_str(&prompt.text);
                        for (j, &id) in prompt.ids.iter().enumerate() {
                            positions.push((id, c.prompt_logprobs.get(j).and_then(Option::as_ref)));
                        }
                    }
                    text.push_str(&c.text);
                    positions.extend(c.logprobs.iter().map(|l| (l.token, Some(l))));
                    let mut offset = 0;
                    json!({
                        "index": i,
                        "text": text,
                        "logprobs": self.plan.logprobs
                            .map(|_| self.completion_logprobs(&positions, &mut offset)),
                        "finish_reason": finish_reason(&f.stop),
                        "stop_reason": stop,
                        "seed": self.choice_seed(i),
                    })
                }
            };
            choices.push(choice);
        }
        let mut body = self.envelope(false, choices);
        body["usage"] = self.usage();
        body["timings"] = self.timings();
        body
    }
}

/// Streamed pieces of a reply with tools as one OpenAI chunk `delta`: content, and
/// `tool_calls` entries whose first piece carries the call's id, type and name and the next
/// ones its arguments (pieces of one call in a row are joined). `None` for no pieces.
fn tool_delta(deltas: &[Delta]) -> Option<Value> {
    if deltas.is_empty() {
        return None;
    }
    let mut content: Option<String> = None;
    let mut calls: Vec<Value> = Vec::new();
    for d in deltas {
        match d {
            Delta::Content(text) => content.get_or_insert_with(String::new).push_str(text),
            Delta::CallStart { index, id, name } => calls.push(json!({
                "index": index, "id": id, "type": "function",
                "function": {"name": name, "arguments": ""}})),
            Delta::Arguments { index, text } => match calls.last_mut() {
                Some(last) if last["index"] == json!(index) => {
                    let joined = format!(
                        "{}{text}",
                        last["function"]["arguments"].as_str().unwrap_or("")
                    );
                    last["function"]["arguments"] = json!(joined);
                }
                _ => calls.push(json!({"index": index, "function": {"arguments": text}})),
            },
        }
    }
    let mut delta = json!({});
    if let Some(c) = content {
        delta["content"] = json!(c);
    }
    if !calls.is_empty() {
        delta["tool_calls"] = json!(calls);
    }
    Some(delta)
}

#[cfg(test)]
mod tests {
    use super::truncate_prompt;

    #[test]
    fn a_long_prompt_is_cut_as_llama_server_cuts_it() {
        // llama.cpp's server test: 301 tokens into 128, nothing kept: three blocks of 64 go,
        // the last 109 tokens stay.
        let prompt: Vec<u32> = (0..301).collect();
        let cut = truncate_prompt(&prompt, 0, 128).unwrap();
        assert_eq!(cut, (192..301).collect::<Vec<u32>>());
        // The first `keep` stay; blocks are half of what is left after them.
        let cut = truncate_prompt(&prompt, 10, 128).unwrap();
        assert_eq!(&cut[..10], &prompt[..10]);
        assert_eq!(cut.len(), 10 + (301 - 10) - 3 * 59);
        assert!(cut.len() < 128);
        // A prompt of exactly the context's size is cut too (room to generate).
        assert!(truncate_prompt(&prompt[..128], 1, 128).unwrap().len() < 128);
        // Nothing to cut: keeping it all, or no room beside what is kept.
        assert_eq!(truncate_prompt(&prompt, 301, 128), None);
        assert_eq!(truncate_prompt(&prompt, 127, 128), None);
        assert_eq!(truncate_prompt(&prompt[..100], 0, 128), None);
    }
}
