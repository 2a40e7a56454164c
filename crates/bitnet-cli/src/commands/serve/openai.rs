//! The OpenAI API: requests into scheduler jobs, events into responses.
//!
//! Beyond the text: `n` choices (choice `i` samples with seed `seed + i`), `logprobs`, `echo`,
//! `logit_bias`, `stream_options.include_usage`, `response_format` (JSON object or schema,
//! by constrained decoding), and `seed` in every response: the seed the first choice used, so
//! that a request repeated with it gives the same text.

use std::convert::Infallible;
use std::ops::ControlFlow;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::sse::{Event as SseEvent, Sse};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use bitnet::generate::scheduler::{Event, Finished, Sink, TokenLogprob};
use bitnet::generate::tools::{parse_reply, CallParser, Delta, ToolChoice, Tools};
use bitnet::generate::{
    random_seed, Input, Job, LogprobsRequest, Prompt, Request, RequestError, ResponseFormat,
    StopReason, SubmitError, Ticket,
};
use bitnet::tokenizer::{EncodeOptions, TokenKind};
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tokio_stream::StreamExt;

use super::ops::{error, GenStats, RequestLog};
use super::AppState;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Endpoint {
    Completions,
    Chat,
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A fresh seed for a request that gives none, below 2^53 so that JavaScript clients can
/// read it back exactly and send it again.
fn fresh_seed() -> u64 {
    random_seed() & ((1 << 53) - 1)
}

/// A response id unique across requests and restarts: a random part and a counter.
fn response_id(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}-{:016x}{n:06x}", random_seed())
}

fn fingerprint() -> String {
    format!("bitnet-rust-{}", env!("CARGO_PKG_VERSION"))
}

fn finish_reason(stop: &StopReason) -> &'static str {
    match stop {
        StopReason::MaxTokens | StopReason::ContextFull => "length",
        _ => "stop",
    }
}

pub(crate) fn request_error(e: &RequestError) -> Response {
    if let RequestError::ExceedsContext { .. } = e {
        return super::llama::exceeds_context(e);
    }
    let message = match e {
        RequestError::Json(_) | RequestError::InvalidUtf8 { .. } => {
            format!("invalid request: {e}")
        }
        _ => e.to_string(),
    };
    error(StatusCode::BAD_REQUEST, message, e.field())
}

pub async fn models(State(state): State<Arc<AppState>>) -> Json<Value> {
    Json(json!({"object": "list", "data": [model_object(&state)]}))
}

fn model_object(state: &AppState) -> Value {
    let created = state
        .started
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    json!({"id": state.name, "object": "model", "created": created, "owned_by": "bitnet-rust"})
}

pub async fn model(State(state): State<Arc<AppState>>, Path(id): Path<String>) -> Response {
    if id == state.name {
        Json(model_object(&state)).into_response()
    } else {
        error(
            StatusCode::NOT_FOUND,
            format!(
                "The model `{id}` does not exist: this server serves `{}`",
                state.name
            ),
            Some("model"),
        )
    }
}

pub async fn completions(
    State(state): State<Arc<AppState>>,
    Extension(log): Extension<Arc<RequestLog>>,
    body: Bytes,
) -> Response {
    handle(state, log, body, Endpoint::Completions).await
}

pub async fn chat_completions(
    State(state): State<Arc<AppState>>,
    Extension(log): Extension<Arc<RequestLog>>,
    body: Bytes,
) -> Response {
    handle(state, log, body, Endpoint::Chat).await
}

/// One prompt, ready to run.
pub(crate) struct PromptIds {
    pub ids: Vec<u32>,
    /// Its text (for `echo`).
    pub text: String,
}

/// What the logprobs of a request's choices should hold.
#[derive(Clone, Copy)]
struct LogprobsWanted {
    /// Alternatives per position.
    top: usize,
}

/// A request turned into prompts and per-choice settings (llama-server's `/completion`
/// plans its requests here too).
pub(crate) struct Plan {
    pub prompts: Vec<PromptIds>,
    pub n: usize,
    logprobs: Option<LogprobsWanted>,
    echo: bool,
    pub seed: u64,
    include_usage: bool,
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

pub(crate) fn plan(
    state: &AppState,
    req: &Request,
    endpoint: Endpoint,
) -> Result<Plan, RequestError> {
    let tokenizer = &state.tokenizer;
    let missing = |field, expected| RequestError::Field { field, expected };
    // Whether the chat template writes calls as Llama 3.x does (the format read here).
    let mut llama_calls = false;
    let prompts = match (endpoint, req.input()) {
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
                },
                Prompt::Tokens(ids) => PromptIds {
                    text: tokenizer.decode(&ids).unwrap_or_default(),
                    ids,
                },
            })
            .collect::<Vec<_>>(),
        (Endpoint::Chat, Ok(Input::Messages(messages))) => {
            // `handle` has answered already when the template does not compile.
            let template = state
                .template
                .as_ref()
                .map_err(|e| bad("messages", e.clone()))?;
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
                    req.tools
                        .as_ref()
                        .map(bitnet::generate::tools::Tools::definitions),
                    true,
                )
                .map_err(RequestError::Template)?;
            vec![PromptIds {
                ids: tokenizer.encode_chat(&text),
                text,
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
    let capacity = state.scheduler.context_size();
    if let Some(p) = prompts.iter().find(|p| p.ids.len() > capacity) {
        return Err(RequestError::ExceedsContext {
            field,
            n_prompt_tokens: p.ids.len(),
            n_ctx: capacity,
        });
    }
    if let Some((id, _)) = req.logit_bias.iter().find(|(t, _)| *t as usize >= n_vocab) {
        return Err(bad(
            "logit_bias",
            format!("token id {id} is outside the vocabulary of {n_vocab} tokens"),
        ));
    }
    let logprobs = match (endpoint, req.logprobs, req.top_logprobs) {
        (_, None | Some(LogprobsRequest::Flag(false)), Some(k)) if k > 0 => {
            return Err(bad(
                "top_logprobs",
                "`logprobs` must be true when `top_logprobs` is given",
            ))
        }
        (_, None | Some(LogprobsRequest::Flag(false)), _) => None,
        (Endpoint::Chat, Some(LogprobsRequest::Flag(true)), k) => Some(LogprobsWanted {
            top: k.unwrap_or(0),
        }),
        (_, Some(LogprobsRequest::Count(k)), _) => Some(LogprobsWanted { top: k }),
        (Endpoint::Completions, Some(LogprobsRequest::Flag(true)), k) => Some(LogprobsWanted {
            top: k.unwrap_or(0),
        }),
    };
    // A request without a seed gets a fresh one (unless the server was given --seed), and
    // the response says which.
    let seed = match req.seed {
        Some(s) => s,
        None if state.fixed_seed => state.defaults.seed,
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
pub(crate) fn jobs(state: &AppState, req: &Request, plan: &Plan) -> Result<Vec<Job>, RequestError> {
    let mut sampler = req.sampler_config(&state.defaults)?;
    let mut out = Vec::with_capacity(plan.prompts.len() * plan.n);
    for p in &plan.prompts {
        for i in 0..plan.n {
            sampler.seed = plan.seed.wrapping_add(i as u64);
            let constraint = match &req.response_format {
                Some(ResponseFormat::Text) => None,
                Some(ResponseFormat::JsonObject) => Some(state.constraints.json_object()),
                Some(ResponseFormat::JsonSchema(s)) => Some(state.constraints.json_schema(s)),
                Some(ResponseFormat::Grammar(g)) => Some(state.constraints.gbnf(g)),
                // The calls' grammar (`auto` included: text, or calls that parse).
                None => plan
                    .tools
                    .as_ref()
                    .map(|t| state.constraints.lark(&t.grammar())),
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
            let keep = crate::commands::generate::keep_tokens(
                req.n_keep.unwrap_or(state.keep),
                &p.ids,
                state.tokenizer.bos_id(),
            );
            out.push(Job {
                prompt: p.ids.clone(),
                sampler: sampler.clone(),
                max_tokens: req.max_tokens.unwrap_or(Some(state.n_predict)),
                stop: req.stop.clone(),
                ignore_eos: req.ignore_eos,
                logit_bias: req.logit_bias.clone(),
                logprobs: plan.logprobs.map(|l| l.top),
                prompt_logprobs: plan.echo && plan.logprobs.is_some(),
                constraint,
                context_shift: state.ctx_shift.then_some(keep),
                embedding: None,
            });
        }
    }
    Ok(out)
}

/// A request's choices in the scheduler: their tickets and their events, tagged with the
/// choice index.
pub(crate) struct Submitted {
    pub tickets: Vec<Ticket>,
    pub rx: mpsc::UnboundedReceiver<(usize, Event)>,
}

/// Submits every job; on a refusal the ones already queued are cancelled (their tickets
/// dropped).
pub(crate) fn submit(state: &AppState, jobs: Vec<Job>) -> Result<Submitted, SubmitError> {
    let (tx, rx) = mpsc::unbounded_channel();
    let mut tickets = Vec::with_capacity(jobs.len());
    for (i, job) in jobs.into_iter().enumerate() {
        let tx = tx.clone();
        let sink: Sink = Box::new(move |e| match tx.send((i, e)) {
            Ok(()) => ControlFlow::Continue(()),
            Err(_) => ControlFlow::Break(()),
        });
        tickets.push(state.scheduler.submit(job, sink)?);
    }
    Ok(Submitted { tickets, rx })
}

/// A refusal as HTTP: a full queue or a shutdown is 503 (with Retry-After when busy).
pub(crate) fn submit_error(e: &SubmitError) -> Response {
    match e {
        SubmitError::Busy { .. } => {
            let mut r = error(StatusCode::SERVICE_UNAVAILABLE, e.to_string(), None);
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            r
        }
        SubmitError::ShuttingDown => error(StatusCode::SERVICE_UNAVAILABLE, e.to_string(), None),
        _ => error(StatusCode::BAD_REQUEST, e.to_string(), Some("prompt")),
    }
}

async fn handle(
    state: Arc<AppState>,
    log: Arc<RequestLog>,
    body: Bytes,
    endpoint: Endpoint,
) -> Response {
    let req = match Request::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return request_error(&e),
    };
    // A chat template that does not compile fails the chat endpoint only (completions need
    // none): the server's fault, not the request's.
    if let (Endpoint::Chat, Err(e)) = (endpoint, &state.template) {
        return error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!(
                "this server cannot render conversations: its chat template does not compile \
                 ({e}); restart it with --chat-template"
            ),
            None,
        );
    }
    // Every field is checked before anything runs.
    let plan = match plan(&state, &req, endpoint) {
        Ok(p) => p,
        Err(e) => return request_error(&e),
    };
    let jobs = match jobs(&state, &req, &plan) {
        Ok(j) => j,
        Err(e) => return request_error(&e),
    };
    let Submitted { tickets, rx } = match submit(&state, jobs) {
        Ok(s) => s,
        Err(e) => return submit_error(&e),
    };
    let reply = Reply {
        state: Arc::clone(&state),
        endpoint,
        id: response_id(match endpoint {
            Endpoint::Chat => "chatcmpl",
            Endpoint::Completions => "cmpl",
        }),
        created: now(),
        choices: (0..tickets.len())
            .map(|i| ChoiceState::new(&plan, i))
            .collect(),
        plan,
        log,
    };
    if req.stream {
        stream(reply, tickets, rx)
    } else {
        collect(reply, tickets, rx).await
    }
}

/// One choice's progress.
struct ChoiceState {
    text: String,
    /// Chat: `logprobs.content` entries. Completions: positions (tokens, logprobs, tops).
    logprobs: Vec<TokenLogprob>,
    /// Completions with echo: the prompt's positions first.
    prompt_logprobs: Vec<Option<TokenLogprob>>,
    finished: Option<Finished>,
    /// Index of the prompt this choice continues.
    prompt: usize,
    /// Characters of text so far (completions' `text_offset`).
    offset: usize,
    /// Chat with tools, streamed: the reply read into content and calls as it comes.
    calls: Option<CallParser>,
}

impl ChoiceState {
    /// Whether the drain after SIGTERM ended this choice before its own end.
    fn cut_by_shutdown(&self) -> bool {
        self.finished
            .as_ref()
            .is_some_and(|f| matches!(f.stop, StopReason::Shutdown))
    }

    fn new(plan: &Plan, index: usize) -> ChoiceState {
        ChoiceState {
            text: String::new(),
            logprobs: Vec::new(),
            prompt_logprobs: Vec::new(),
            finished: None,
            prompt: index / plan.n,
            offset: 0,
            calls: plan.tools.as_ref().map(CallParser::new),
        }
    }
}

/// Everything a response is built from.
struct Reply {
    state: Arc<AppState>,
    endpoint: Endpoint,
    id: String,
    created: u64,
    plan: Plan,
    choices: Vec<ChoiceState>,
    log: Arc<RequestLog>,
}

impl Reply {
    fn token_str(&self, id: u32) -> String {
        let bytes = self.state.tokenizer.token_bytes(id).unwrap_or_default();
        String::from_utf8_lossy(bytes).into_owned()
    }

    fn token_bytes(&self, id: u32) -> Vec<u8> {
        self.state
            .tokenizer
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
            if self.state.tokenizer.token_kind(id) != Some(TokenKind::Control) {
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

    fn usage(&self) -> Value {
        let prompt: usize = self.plan.prompts.iter().map(|p| p.ids.len()).sum();
        let cached: usize = self
            .choices
            .iter()
            .enumerate()
            .filter(|(i, _)| i % self.plan.n == 0)
            .filter_map(|(_, c)| c.finished.as_ref().map(|f| f.cached_tokens))
            .sum();
        let completion: usize = self
            .choices
            .iter()
            .filter_map(|c| c.finished.as_ref().map(|f| f.generated_tokens))
            .sum();
        json!({
            "prompt_tokens": prompt, "completion_tokens": completion,
            "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": cached},
        })
    }

    /// llama-server's `timings` over the finished choices.
    fn timings(&self) -> Value {
        let done: Vec<&Finished> = self
            .choices
            .iter()
            .filter_map(|c| c.finished.as_ref())
            .collect();
        super::llama::timings(&done, self.state.scheduler.context_size())
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
            "model": self.state.name, "system_fingerprint": fingerprint(),
            "seed": self.plan.seed, "choices": choices,
        })
    }

    /// Records the request's figures for its log line and the metrics, once all choices
    /// are done.
    fn record(&self) {
        let done: Vec<&Finished> = self
            .choices
            .iter()
            .filter_map(|c| c.finished.as_ref())
            .collect();
        let ttft = done.iter().map(|f| f.time_to_first_token).min();
        if let Some(t) = ttft {
            self.state.metrics.time_to_first_token(t);
        }
        let tps = done
            .iter()
            .map(|f| f.generation_tokens_per_s())
            .fold(0.0, f64::max);
        self.log.record(GenStats {
            prompt_tokens: self.plan.prompts.iter().map(|p| p.ids.len()).sum(),
            cached_tokens: done.iter().map(|f| f.cached_tokens).sum(),
            generated_tokens: done.iter().map(|f| f.generated_tokens).sum(),
            time_to_first_token: ttft,
            tokens_per_s: tps,
        });
    }
}

async fn collect(
    mut reply: Reply,
    tickets: Vec<Ticket>,
    mut rx: mpsc::UnboundedReceiver<(usize, Event)>,
) -> Response {
    let mut remaining = tickets.len();
    while remaining > 0 {
        let Some((i, event)) = rx.recv().await else {
            break;
        };
        let c = &mut reply.choices[i];
        match event {
            Event::Prompt { logprobs, .. } => c.prompt_logprobs = logprobs.unwrap_or_default(),
            // Only embedding jobs produce these.
            Event::Embedding(_) => {}
            Event::Token { text, logprob, .. } => {
                c.text.push_str(&text);
                c.logprobs.extend(logprob);
            }
            Event::Done(f) => {
                c.text.push_str(&f.tail);
                c.finished = Some(f);
                remaining -= 1;
            }
            Event::Failed(e) => {
                return error(StatusCode::INTERNAL_SERVER_ERROR, e, None);
            }
        }
    }
    drop(tickets);
    if remaining > 0 {
        return error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "generation ended unexpectedly",
            None,
        );
    }
    reply.record();
    if reply.choices.iter().any(ChoiceState::cut_by_shutdown) {
        return super::lifecycle::cut_by_shutdown();
    }
    let mut choices = Vec::with_capacity(reply.choices.len());
    for (i, c) in reply.choices.iter().enumerate() {
        let Some(f) = &c.finished else { continue };
        let stop = json!(f.stop.as_str());
        let choice = match reply.endpoint {
            Endpoint::Chat => json!({
                "index": i,
                "message": chat_message(&c.text, reply.plan.tools.as_ref()),
                "logprobs": reply.plan.logprobs.map(|_| reply.chat_logprobs(&c.logprobs)),
                "finish_reason": chat_finish_reason(&f.stop, &c.text, reply.plan.tools.as_ref()),
                "stop_reason": stop,
                "seed": reply.plan.seed.wrapping_add((i % reply.plan.n) as u64),
            }),
            Endpoint::Completions => {
                let prompt = &reply.plan.prompts[c.prompt];
                let mut text = String::new();
                let mut positions: Vec<(u32, Option<&TokenLogprob>)> = Vec::new();
                if reply.plan.echo {
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
                    "logprobs": reply.plan.logprobs
                        .map(|_| reply.completion_logprobs(&positions, &mut offset)),
                    "finish_reason": finish_reason(&f.stop),
                    "stop_reason": stop,
                    "seed": reply.plan.seed.wrapping_add((i % reply.plan.n) as u64),
                })
            }
        };
        choices.push(choice);
    }
    let mut body = reply.envelope(false, choices);
    body["usage"] = reply.usage();
    body["timings"] = reply.timings();
    Json(body).into_response()
}

/// A chat reply's message: with tools, text that is calls becomes `tool_calls` (and
/// `content` null).
fn chat_message(text: &str, tools: Option<&Tools>) -> Value {
    let Some(tools) = tools else {
        return json!({"role": "assistant", "content": text, "refusal": null});
    };
    let reply = parse_reply(tools, text);
    let mut m = json!({"role": "assistant", "content": reply.content, "refusal": null});
    if !reply.calls.is_empty() {
        m["tool_calls"] = reply.calls.iter().map(|c| c.to_openai()).collect();
    }
    m
}

/// `tool_calls` when the reply ended by itself after making calls.
fn chat_finish_reason(stop: &StopReason, text: &str, tools: Option<&Tools>) -> &'static str {
    let reason = finish_reason(stop);
    match tools {
        Some(t) if reason == "stop" && !parse_reply(t, text).calls.is_empty() => "tool_calls",
        _ => reason,
    }
}

/// A streamed piece of a reply with tools, as OpenAI's chunk `delta`: the first piece of a
/// call carries its id, type and name, the next ones its arguments.
fn delta(d: &Delta) -> Value {
    match d {
        Delta::Content(text) => json!({"content": text}),
        Delta::CallStart { index, id, name } => json!({"tool_calls": [{
            "index": index, "id": id, "type": "function",
            "function": {"name": name, "arguments": ""}}]}),
        Delta::Arguments { index, text } => {
            json!({"tool_calls": [{"index": index, "function": {"arguments": text}}]})
        }
    }
}

/// Server-sent events: a translating task turns the scheduler's events into chunks; when the
/// client goes away the task sees its channel close and drops the tickets, which cancels the
/// choices at the scheduler's next step.
fn stream(
    reply: Reply,
    tickets: Vec<Ticket>,
    rx: mpsc::UnboundedReceiver<(usize, Event)>,
) -> Response {
    let (out, out_rx) = mpsc::unbounded_channel::<String>();
    tokio::spawn(translate(reply, tickets, rx, out));
    let events = UnboundedReceiverStream::new(out_rx)
        .map(|data| Ok::<SseEvent, Infallible>(SseEvent::default().data(data)));
    Sse::new(events).into_response()
}

async fn translate(
    mut reply: Reply,
    tickets: Vec<Ticket>,
    mut rx: mpsc::UnboundedReceiver<(usize, Event)>,
    out: mpsc::UnboundedSender<String>,
) {
    let usage_null = reply.plan.include_usage;
    // The chunk that ends the last choice carries llama-server's `timings`.
    let send = |reply: &Reply, choices: Vec<Value>, last: bool| {
        let mut v = reply.envelope(true, choices);
        if usage_null {
            v["usage"] = Value::Null;
        }
        if last {
            v["timings"] = reply.timings();
        }
        out.send(v.to_string()).is_ok()
    };
    let mut remaining = tickets.len();
    // The first chunk of each choice: the role (chat).
    if reply.endpoint == Endpoint::Chat {
        let firsts = (0..remaining)
            .map(|i| {
                json!({"index": i, "delta": {"role": "assistant", "content": null},
                       "logprobs": null, "finish_reason": null})
            })
            .collect();
        if !send(&reply, firsts, false) {
            return;
        }
    }
    while remaining > 0 {
        let (i, event) = tokio::select! {
            e = rx.recv() => match e {
                Some(e) => e,
                None => break,
            },
            _ = out.closed() => {
                // The client left: the log line shows what was done for it.
                reply.record();
                return;
            }
        };
        let wants_logprobs = reply.plan.logprobs.is_some();
        let choice = match event {
            Event::Embedding(_) => continue,
            Event::Prompt { logprobs, .. } => {
                if !reply.plan.echo {
                    continue;
                }
                // Completions with echo: the prompt comes first.
                let prompt_lps = logprobs.unwrap_or_default();
                let prompt = &reply.plan.prompts[reply.choices[i].prompt];
                let positions: Vec<(u32, Option<&TokenLogprob>)> = prompt
                    .ids
                    .iter()
                    .enumerate()
                    .map(|(j, &id)| (id, prompt_lps.get(j).and_then(Option::as_ref)))
                    .collect();
                let mut offset = reply.choices[i].offset;
                let lp = wants_logprobs.then(|| reply.completion_logprobs(&positions, &mut offset));
                let chunk = json!({"index": i, "text": prompt.text, "logprobs": lp,
                                   "finish_reason": null});
                reply.choices[i].offset = offset;
                chunk
            }
            Event::Token { text, logprob, .. } => {
                if text.is_empty() && !wants_logprobs {
                    continue;
                }
                match reply.endpoint {
                    Endpoint::Chat => {
                        let lp = logprob
                            .as_ref()
                            .map(|l| reply.chat_logprobs(std::slice::from_ref(l)));
                        if let Some(parser) = &mut reply.choices[i].calls {
                            // Calls stream as OpenAI's `delta.tool_calls`, one chunk each.
                            let chunks: Vec<Value> = parser
                                .push(&text)
                                .iter()
                                .map(|d| {
                                    json!({"index": i, "delta": delta(d), "logprobs": null,
                                                "finish_reason": null})
                                })
                                .collect();
                            if !chunks.iter().all(|c| send(&reply, vec![c.clone()], false)) {
                                return;
                            }
                            continue;
                        }
                        json!({"index": i, "delta": {"content": text}, "logprobs": lp,
                               "finish_reason": null})
                    }
                    Endpoint::Completions => {
                        let mut offset = reply.choices[i].offset;
                        let lp = logprob
                            .as_ref()
                            .map(|l| reply.completion_logprobs(&[(l.token, Some(l))], &mut offset));
                        reply.choices[i].offset = offset;
                        json!({"index": i, "text": text, "logprobs": lp, "finish_reason": null})
                    }
                }
            }
            Event::Done(f) => {
                remaining -= 1;
                let mut reason = finish_reason(&f.stop);
                let stop = f.stop.as_str();
                let mut tail = f.tail.clone();
                reply.choices[i].finished = Some(f);
                let seed = reply.plan.seed.wrapping_add((i % reply.plan.n) as u64);
                match reply.endpoint {
                    Endpoint::Chat => {
                        if let Some(mut parser) = reply.choices[i].calls.take() {
                            let mut chunks = Vec::new();
                            for d in parser.push(&tail) {
                                chunks.push(json!({"index": i, "delta": delta(&d),
                                                   "logprobs": null, "finish_reason": null}));
                            }
                            let made_calls = parser.has_calls();
                            // What was held back (text that only looked like a call) is
                            // content after all.
                            tail = parser.finish().content.unwrap_or_default();
                            if made_calls && reason == "stop" {
                                reason = "tool_calls";
                            }
                            if !chunks.into_iter().all(|c| send(&reply, vec![c], false)) {
                                return;
                            }
                        }
                        let delta = if tail.is_empty() {
                            json!({})
                        } else {
                            json!({"content": tail})
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
            Event::Failed(e) => {
                let _ = out.send(
                    json!({"error": {"message": e, "type": "server_error", "param": null,
                                     "code": null}})
                    .to_string(),
                );
                return;
            }
        };
        if !send(&reply, vec![choice], remaining == 0) {
            return;
        }
    }
    drop(tickets);
    reply.record();
    if reply.plan.include_usage {
        let mut v = reply.envelope(true, Vec::new());
        v["usage"] = reply.usage();
        // llama-server's usage chunk carries `timings` too; its clients read them there.
        v["timings"] = reply.timings();
        let _ = out.send(v.to_string());
    }
    if reply.choices.iter().any(ChoiceState::cut_by_shutdown) {
        let _ = out.send(super::lifecycle::cut_by_shutdown_event());
    }
    let _ = out.send("[DONE]".to_string());
}
