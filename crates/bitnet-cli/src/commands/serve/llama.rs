//! llama-server's own dialect, beside the OpenAI one: its `timings` object and context-overflow
//! error (which the OpenAI endpoints answer too, as llama-server does), `/tokenize`,
//! `/detokenize`, `/apply-template`, `/props`, `/slots`, and the native `/completion`.
//!
//! Requests are read by the library's [`Request`] parser in its llama-server dialect, so a
//! field means the same here as on `/v1/completions`; only the response shapes differ.
//!
//! [`Request`]: bitnet::generate::Request

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::sse::{Event as SseEvent, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use bitnet::generate::scheduler::{Event, SlotError, SlotState, SlotStatus, TokenLogprob};
use bitnet::generate::{
    Dialect, Finished, Input, LogprobsRequest, Prompt, Request, RequestError, ResponseFormat,
    SamplerConfig, StopReason, Ticket,
};
use bitnet::tokenizer::EncodeOptions;
use serde_json::{json, Map, Value};
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tokio_stream::StreamExt;

use super::openai::{self, request_error, Endpoint, Plan, Submitted};
use super::ops::{error, GenStats, RequestLog};
use super::AppState;

pub(crate) use bitnet::generate::openai::timings;

/// A prompt longer than a slot's context: 400, with llama-server's error type and the two
/// numbers clients use to trim (`n_prompt_tokens`, `n_ctx`) beside OpenAI's fields.
pub(crate) fn exceeds_context(e: &RequestError) -> Response {
    let RequestError::ExceedsContext {
        field,
        n_prompt_tokens,
        n_ctx,
    } = e
    else {
        return error(StatusCode::BAD_REQUEST, e.to_string(), e.field());
    };
    let body = json!({"error": {
        "message": format!("{e} (bitnet serve -c)"),
        "type": "exceed_context_size_error",
        "param": field,
        "code": "context_length_exceeded",
        "n_prompt_tokens": n_prompt_tokens,
        "n_ctx": n_ctx,
    }});
    (StatusCode::BAD_REQUEST, Json(body)).into_response()
}

/// A small request body (not a completion request): a JSON object whose fields are all
/// among `known` (a misspelt field is refused by name, as on the completion endpoints).
pub(super) fn small_body(body: &[u8], known: &[&str]) -> Result<Map<String, Value>, Box<Response>> {
    let bad = |m: String, field: Option<&str>| Box::new(error(StatusCode::BAD_REQUEST, m, field));
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| bad(format!("invalid request: invalid JSON: {e}"), None))?;
    let Value::Object(obj) = value else {
        return Err(bad("a request must be a JSON object".into(), None));
    };
    if let Some(k) = obj.keys().find(|k| !known.contains(&k.as_str())) {
        return Err(bad(
            format!(
                "unknown field `{k}`: this endpoint reads {}",
                known
                    .iter()
                    .map(|k| format!("`{k}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            Some(k),
        ));
    }
    Ok(obj)
}

/// An optional boolean field.
fn flag(obj: &Map<String, Value>, field: &str, default: bool) -> Result<bool, Box<Response>> {
    match obj.get(field) {
        None | Some(Value::Null) => Ok(default),
        Some(Value::Bool(b)) => Ok(*b),
        Some(_) => Err(Box::new(error(
            StatusCode::BAD_REQUEST,
            format!("`{field}` must be true or false"),
            Some(field),
        ))),
    }
}

/// `POST /tokenize`: `content` to token ids; `add_special` adds BOS where the model asks for
/// it, `parse_special` (default true) reads special-token text as the special token,
/// `with_pieces` returns each id with its text (or its bytes, when not UTF-8 on its own).
pub async fn tokenize(State(state): State<Arc<AppState>>, body: Bytes) -> Response {
    let obj = match small_body(
        &body,
        &[
            "content",
            "add_special",
            "parse_special",
            "with_pieces",
            "model",
        ],
    ) {
        Ok(o) => o,
        Err(r) => return *r,
    };
    let Some(content) = obj.get("content").and_then(Value::as_str) else {
        return error(
            StatusCode::BAD_REQUEST,
            "`content` must be a string: the text to tokenize",
            Some("content"),
        );
    };
    let (add_special, parse_special, with_pieces) = match (
        flag(&obj, "add_special", false),
        flag(&obj, "parse_special", true),
        flag(&obj, "with_pieces", false),
    ) {
        (Ok(a), Ok(p), Ok(w)) => (a, p, w),
        (Err(r), _, _) | (_, Err(r), _) | (_, _, Err(r)) => return *r,
    };
    let tokenizer = &state.tokenizer;
    let ids = tokenizer.encode(
        content,
        EncodeOptions {
            add_bos: add_special && tokenizer.add_bos_token(),
            parse_special,
        },
    );
    let tokens: Vec<Value> = if with_pieces {
        ids.iter()
            .map(|&id| {
                let bytes = tokenizer.token_bytes(id).unwrap_or_default();
                let piece = match std::str::from_utf8(bytes) {
                    Ok(s) => json!(s),
                    Err(_) => json!(bytes),
                };
                json!({"id": id, "piece": piece})
            })
            .collect()
    } else {
        ids.iter().map(|&id| json!(id)).collect()
    };
    Json(json!({"tokens": tokens})).into_response()
}

/// `POST /detokenize`: `tokens` (ids) to `content`.
pub async fn detokenize(State(state): State<Arc<AppState>>, body: Bytes) -> Response {
    let obj = match small_body(&body, &["tokens", "model"]) {
        Ok(o) => o,
        Err(r) => return *r,
    };
    let ids: Option<Vec<u32>> = match obj.get("tokens") {
        None | Some(Value::Null) => Some(Vec::new()),
        Some(Value::Array(a)) => a
            .iter()
            .map(|t| t.as_u64().and_then(|t| u32::try_from(t).ok()))
            .collect(),
        Some(_) => None,
    };
    let Some(ids) = ids else {
        return error(
            StatusCode::BAD_REQUEST,
            "`tokens` must be a list of token ids",
            Some("tokens"),
        );
    };
    match state.tokenizer.decode(&ids) {
        Ok(content) => Json(json!({"content": content})).into_response(),
        Err(e) => error(StatusCode::BAD_REQUEST, e.to_string(), Some("tokens")),
    }
}

/// `POST /apply-template`: a chat request's `messages` (and `tools`) rendered through the
/// chat template, as `/v1/chat/completions` would run it, without running it. The body is
/// read by the same parser as the chat endpoint, so what one refuses the other does.
pub async fn apply_template(State(state): State<Arc<AppState>>, body: Bytes) -> Response {
    let req = match Request::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return request_error(&e),
    };
    let template = match &state.template {
        Ok(t) => t,
        Err(e) => {
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("this server's chat template does not compile ({e})"),
                None,
            )
        }
    };
    let messages = match (req.input(), &req.messages) {
        (Ok(Input::Messages(m)), _) => m,
        (Err(e), Some(_)) => return request_error(&e),
        _ => {
            return error(
                StatusCode::BAD_REQUEST,
                "`messages` must be a non-empty list of {\"role\": …, \"content\": …} objects",
                Some("messages"),
            )
        }
    };
    if req.tools.is_some() && !template.supports_tools() {
        return error(
            StatusCode::BAD_REQUEST,
            "`tools`: this model's chat template cannot express tools (function calling)",
            Some("tools"),
        );
    }
    match template.render_with_tools(
        &messages,
        req.tools
            .as_ref()
            .map(bitnet::generate::tools::Tools::definitions),
        req.add_generation_prompt.unwrap_or(true),
    ) {
        Ok(prompt) => Json(json!({"prompt": prompt})).into_response(),
        Err(e) => request_error(&RequestError::Template(e)),
    }
}

/// The sampling defaults in llama-server's `params` shape (`/props`, `/slots`, and
/// `generation_settings` with a request's own values).
pub(crate) fn params(state: &AppState, s: &SamplerConfig, n_predict: Option<usize>) -> Value {
    json!({
        "n_predict": n_predict.map_or(-1, |n| n as i64),
        "max_tokens": n_predict.map_or(-1, |n| n as i64),
        "seed": s.seed,
        "temperature": s.temperature,
        "dynatemp_range": 0.0,
        "dynatemp_exponent": 1.0,
        "top_k": s.top_k,
        "top_p": s.top_p,
        "min_p": s.min_p,
        "top_n_sigma": -1.0,
        "xtc_probability": 0.0,
        "xtc_threshold": 0.1,
        "typical_p": 1.0,
        "repeat_last_n": s.penalty_last_n,
        "repeat_penalty": s.repeat_penalty,
        "presence_penalty": s.presence_penalty,
        "frequency_penalty": s.frequency_penalty,
        "dry_multiplier": 0.0,
        "mirostat": 0,
        "n_keep": state.keep,
        "ignore_eos": false,
        "n_probs": 0,
        "min_keep": 0,
        "grammar": "",
        "samplers": ["penalties", "top_k", "top_p", "min_p", "temperature"],
        "speculative": state.speculative,
        "timings_per_token": false,
        "post_sampling_probs": false,
        "lora": [],
    })
}

/// One slot in llama-server's shape.
fn slot(state: &AppState, id: usize, s: &SlotStatus) -> Value {
    json!({
        "id": id,
        "id_task": s.request.map_or(-1, |r| r as i64),
        "n_ctx": s.n_ctx,
        "speculative": state.speculative,
        "is_processing": s.state != SlotState::Idle,
        "state": s.state.as_str(),
        "cached_tokens": s.cached_tokens,
        "params": params(state, &state.defaults, state.n_predict),
        "next_token": {"has_next_token": s.state != SlotState::Idle, "has_new_line": false,
                       "n_remain": -1, "n_decoded": 0},
    })
}

/// `GET /props`: the server's settings, in llama-server's shape.
pub async fn props(State(state): State<Arc<AppState>>) -> Response {
    let st = state.scheduler.status();
    let first = st.slots.first().map_or(Value::Null, |s| slot(&state, 0, s));
    Json(json!({
        "default_generation_settings": first,
        "total_slots": st.slots.len(),
        "model_alias": state.name,
        "model_path": state.model_path,
        "chat_template": state.tokenizer.chat_template_source().unwrap_or(""),
        "chat_template_caps": {
            "supports_tools": state.template.as_ref().is_ok_and(|t| t.supports_tools()),
        },
        "bos_token": state.tokenizer.bos_id()
            .and_then(|b| state.tokenizer.token_str(b)).unwrap_or(""),
        "eos_token": state.tokenizer.eos_id()
            .and_then(|e| state.tokenizer.token_str(e)).unwrap_or(""),
        "modalities": {"vision": false, "audio": false},
        "build_info": format!("bitnet-rust-{}", env!("CARGO_PKG_VERSION")),
        "is_sleeping": st.sleeping,
    }))
    .into_response()
}

/// `POST /props`: llama-server changes nothing either unless started with `--props`, which
/// this server does not have.
pub async fn set_props() -> Response {
    error(
        StatusCode::NOT_IMPLEMENTED,
        "changing the server's properties is not supported: restart it with other flags",
        None,
    )
}

/// `GET /slots`: every slot; with `?fail_on_no_slot=1`, 503 when none is idle.
pub async fn slots(
    State(state): State<Arc<AppState>>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    if !state.slots_endpoint {
        // llama-server's answer under --no-slots, word for word.
        return error(
            StatusCode::NOT_IMPLEMENTED,
            "This server does not support slots endpoint. Start it with `--slots`",
            None,
        );
    }
    let st = state.scheduler.status();
    let fail = query
        .get("fail_on_no_slot")
        .is_some_and(|v| v == "1" || v == "true");
    if fail && st.slots_busy() == st.slots.len() {
        return error(StatusCode::SERVICE_UNAVAILABLE, "no slot available", None);
    }
    let list: Vec<Value> = st
        .slots
        .iter()
        .enumerate()
        .map(|(i, s)| slot(&state, i, s))
        .collect();
    Json(Value::Array(list)).into_response()
}

/// `POST /slots/{id}?action=erase`: forgets an idle slot's cached prompt. `save` and
/// `restore` with `{"filename": …}` write the slot's cached tokens and KV cache to a file under
/// `--slot-save-path`, or read one back (llama-server's shapes); a file of another model or
/// cache type is refused with the reason.
pub async fn slot_action(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    body: Bytes,
) -> Response {
    let Ok(slot) = id.parse::<usize>() else {
        return error(
            StatusCode::BAD_REQUEST,
            format!("`{id}` is not a slot number"),
            Some("id_slot"),
        );
    };
    let restore = match query.get("action").map(String::as_str) {
        Some("erase") => None,
        Some("save") => Some(false),
        Some("restore") => Some(true),
        _ => {
            return error(
                StatusCode::BAD_REQUEST,
                "`action` must be erase, save or restore (?action=erase)",
                Some("action"),
            )
        }
    };
    let Some(restore) = restore else {
        return erase(state, slot).await;
    };
    let Some(dir) = state.slot_save_path.clone() else {
        return error(
            StatusCode::NOT_IMPLEMENTED,
            "saving and restoring slots is off: start the server with --slot-save-path DIR",
            Some("action"),
        );
    };
    let filename = match slot_filename(&body) {
        Ok(f) => f,
        Err(message) => return error(StatusCode::BAD_REQUEST, message, Some("filename")),
    };
    let path = dir.join(&filename);
    let started = std::time::Instant::now();
    // The scheduler does it between two steps: wait for it off the async threads.
    let st = Arc::clone(&state);
    let done = tokio::task::spawn_blocking(move || {
        if restore {
            st.scheduler.restore_slot(slot, &st.name, &path)
        } else {
            st.scheduler.save_slot(slot, &st.name, &path)
        }
    })
    .await;
    let ms = started.elapsed().as_secs_f64() * 1e3;
    match done {
        Ok(Ok(f)) if restore => Json(json!({
            "id_slot": slot, "filename": filename, "n_restored": f.tokens, "n_read": f.bytes,
            "timings": {"restore_ms": ms},
        }))
        .into_response(),
        Ok(Ok(f)) => Json(json!({
            "id_slot": slot, "filename": filename, "n_saved": f.tokens, "n_written": f.bytes,
            "timings": {"save_ms": ms},
        }))
        .into_response(),
        Ok(Err(e)) => slot_error(e),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string(), None),
    }
}

/// The body's `filename`: a plain file name, so that every file stays in --slot-save-path.
fn slot_filename(body: &[u8]) -> Result<String, String> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| format!("the body must be {{\"filename\": …}}: {e}"))?;
    let name = v
        .get("filename")
        .and_then(Value::as_str)
        .ok_or("the body must be {\"filename\": \"…\"} (a file name under --slot-save-path)")?;
    let plain = !name.is_empty()
        && name.len() <= 255
        && name != "."
        && name != ".."
        && !name.ends_with(".partial")
        && !name
            .chars()
            .any(|c| matches!(c, '/' | '\\' | '\0') || c.is_control());
    if !plain {
        return Err(format!(
            "`filename` {name:?} must be a plain file name (no folders, no `..`): files stay \
             under --slot-save-path"
        ));
    }
    Ok(name.to_string())
}

fn slot_error(e: SlotError) -> Response {
    match e {
        SlotError::NoSuchSlot { .. } => {
            error(StatusCode::BAD_REQUEST, e.to_string(), Some("id_slot"))
        }
        SlotError::Busy(_) => error(StatusCode::CONFLICT, e.to_string(), None),
        SlotError::File {
            source: bitnet::model::KvFileError::Io(ref io),
            ..
        } if io.kind() == std::io::ErrorKind::NotFound => {
            error(StatusCode::NOT_FOUND, e.to_string(), Some("filename"))
        }
        SlotError::File {
            source: bitnet::model::KvFileError::Io(_),
            ..
        } => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string(), None),
        SlotError::File { .. } => error(StatusCode::BAD_REQUEST, e.to_string(), Some("filename")),
        SlotError::Stopped | SlotError::Reload(_) => {
            error(StatusCode::SERVICE_UNAVAILABLE, e.to_string(), None)
        }
    }
}

async fn erase(state: Arc<AppState>, slot: usize) -> Response {
    // The scheduler answers between two steps: wait for it off the async threads.
    let scheduler = Arc::clone(&state);
    match tokio::task::spawn_blocking(move || scheduler.scheduler.erase_slot(slot)).await {
        Ok(Ok(n)) => Json(json!({"id_slot": slot, "n_erased": n})).into_response(),
        Ok(Err(e)) => slot_error(e),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string(), None),
    }
}

/// llama-server's `stop_type`: `eos`, `word` (a stop string), `limit` (`n_predict` or the
/// context), `none` (ended otherwise: shut down, cancelled).
fn stop_type(stop: &StopReason) -> &'static str {
    match stop {
        StopReason::EndOfGeneration(_) | StopReason::Constraint => "eos",
        StopReason::StopString(_) => "word",
        StopReason::MaxTokens | StopReason::ContextFull => "limit",
        StopReason::Interrupted | StopReason::Shutdown | StopReason::Embedded => "none",
    }
}

/// One result of a native completion (one per prompt).
#[derive(Default)]
struct NativeResult {
    content: String,
    tokens: Vec<u32>,
    probs: Vec<TokenLogprob>,
    slot: Option<usize>,
    cached: usize,
    finished: Option<Finished>,
}

/// What the native responses are built from.
struct Native {
    state: Arc<AppState>,
    plan: Plan,
    return_tokens: bool,
    /// `n_probs` (or `logprobs`) asked for alternatives: `completion_probabilities`.
    probs: bool,
    /// `post_sampling_probs`: probabilities (`prob`, `top_probs`) after the sampler chain.
    post_sampling: bool,
    /// `response_fields`: the only fields of a whole (not streamed) result.
    response_fields: Vec<String>,
    settings: Value,
    results: Vec<NativeResult>,
    log: Arc<RequestLog>,
}

impl Native {
    fn token_entry(&self, id: u32, logprob: f32) -> Value {
        let bytes = self.state.tokenizer.token_bytes(id).unwrap_or_default();
        let mut e = json!({"id": id, "token": String::from_utf8_lossy(bytes), "bytes": bytes});
        if self.post_sampling {
            e["prob"] = json!(logprob.exp());
        } else {
            e["logprob"] = json!(logprob);
        }
        e
    }

    /// `completion_probabilities` entries.
    fn probabilities(&self, probs: &[TokenLogprob]) -> Value {
        let top = if self.post_sampling {
            "top_probs"
        } else {
            "top_logprobs"
        };
        probs
            .iter()
            .map(|lp| {
                let mut e = self.token_entry(lp.token, lp.logprob);
                e[top] = lp
                    .top
                    .iter()
                    .map(|&(t, l)| self.token_entry(t, l))
                    .collect();
                e
            })
            .collect()
    }

    /// llama-server's `response_fields`: only the named fields, a nested one under its path
    /// (`generation_settings/n_predict`); fields the result lacks are left out.
    fn select(&self, v: Value) -> Value {
        if self.response_fields.is_empty() {
            return v;
        }
        let mut out = Map::new();
        for path in &self.response_fields {
            let found = path.split('/').try_fold(&v, |at, key| at.get(key));
            if let Some(found) = found {
                out.insert(path.clone(), found.clone());
            }
        }
        Value::Object(out)
    }

    /// A streamed token: only what llama-server sends before the end.
    fn partial(
        &self,
        i: usize,
        content: &str,
        token: Option<u32>,
        lp: Option<&TokenLogprob>,
    ) -> Value {
        let r = &self.results[i];
        let mut v = json!({
            "index": i, "content": content, "tokens": token.map_or(vec![], |t| vec![t]),
            "stop": false, "id_slot": r.slot.map_or(-1, |s| s as i64),
            "tokens_predicted": r.tokens.len(),
            "tokens_evaluated": self.plan.prompts[i].ids.len(),
        });
        if let Some(lp) = lp.filter(|_| self.probs) {
            v["completion_probabilities"] = self.probabilities(std::slice::from_ref(lp));
        }
        v
    }

    /// The whole result (streamed: without the content and tokens already sent).
    fn last(&self, i: usize, streamed: bool) -> Value {
        let r = &self.results[i];
        let f = r.finished.as_ref();
        let stop = f.map(|f| &f.stop);
        let prompt = &self.plan.prompts[i];
        let mut v = json!({
            "index": i,
            "content": if streamed { "" } else { r.content.as_str() },
            "tokens": if streamed || !self.return_tokens { vec![] } else { r.tokens.clone() },
            "id_slot": r.slot.map_or(-1, |s| s as i64),
            "stop": true,
            "model": self.state.name,
            "tokens_predicted": r.tokens.len(),
            "tokens_evaluated": prompt.ids.len(),
            "generation_settings": self.settings,
            "prompt": prompt.text,
            "has_new_line": r.content.contains('\n'),
            // As llama-server: the context overflowed, whether generation stopped there or
            // shifted the context and went on, or the prompt was cut to fit.
            "truncated": matches!(stop, Some(StopReason::ContextFull))
                || f.is_some_and(|f| f.context_shifts > 0)
                || prompt.truncated,
            "stop_type": stop.map_or("none", stop_type),
            "stopping_word": match stop {
                Some(StopReason::StopString(s)) => s.as_str(),
                _ => "",
            },
            "tokens_cached": r.cached,
            "timings": timings(
                &f.into_iter().collect::<Vec<_>>(),
                self.state.scheduler.context_size(),
            ),
        });
        if self.probs && !streamed {
            v["completion_probabilities"] = self.probabilities(&r.probs);
        }
        if streamed {
            v
        } else {
            self.select(v)
        }
    }

    /// The request's figures for its log line and the metrics.
    fn record(&self) {
        let done: Vec<&Finished> = self
            .results
            .iter()
            .filter_map(|r| r.finished.as_ref())
            .collect();
        let ttft = done.iter().map(|f| f.time_to_first_token).min();
        if let Some(t) = ttft {
            self.state.metrics.time_to_first_token(t);
        }
        self.log.record(GenStats {
            prompt_tokens: self.plan.prompts.iter().map(|p| p.ids.len()).sum(),
            cached_tokens: done.iter().map(|f| f.cached_tokens).sum(),
            generated_tokens: done.iter().map(|f| f.generated_tokens).sum(),
            time_to_first_token: ttft,
            tokens_per_s: done
                .iter()
                .map(|f| f.generation_tokens_per_s())
                .fold(0.0, f64::max),
        });
    }
}

/// `POST /completion` (and `/completions`): llama-server's native completion. The body is
/// read by the library's request parser in llama-server's dialect and planned as
/// `/v1/completions` plans it; only the response differs: one object per prompt (a list for
/// several prompts) with `content`, `tokens`, `stop_type`, `timings`, `generation_settings`
/// …, or, streamed, one event per token and a last one with `stop: true`.
pub async fn completion(
    State(state): State<Arc<AppState>>,
    Extension(log): Extension<Arc<RequestLog>>,
    body: Bytes,
) -> Response {
    let mut req = match Request::from_slice_in(&body, Dialect::LlamaServer) {
        Ok(r) => r,
        Err(e) => return request_error(&e),
    };
    // llama-server reads special-token text in a native prompt as the special token (a
    // prompt from /apply-template runs as the chat endpoint would run it), and adds BOS
    // where the model asks for it unless the prompt starts with it.
    // A mixed prompt's texts after the first piece are tokenized where they stand, without
    // BOS.
    let tokenizer = &state.tokenizer;
    for p in req.prompt.iter_mut().flatten() {
        if matches!(p, Prompt::Text(_) | Prompt::Mixed(_)) {
            *p = Prompt::Tokens(p.ids(|text, first| {
                if first {
                    tokenizer.encode_chat(text)
                } else {
                    tokenizer.encode(
                        text,
                        EncodeOptions {
                            add_bos: false,
                            parse_special: true,
                        },
                    )
                }
            }));
        }
    }
    let refuse = |field: &'static str, message: &str| {
        request_error(&RequestError::Unsupported {
            field,
            message: message.to_string(),
        })
    };
    if req.messages.is_some() {
        return refuse(
            "messages",
            "/completion continues a `prompt`: send conversations to /v1/chat/completions, or \
             render them with /apply-template first",
        );
    }
    if req.n != 1 {
        return refuse(
            "n",
            "/completion gives one result per prompt: leave `n` out",
        );
    }
    if req.echo {
        return refuse("echo", "an OpenAI completions field: use /v1/completions");
    }
    let plan = match openai::plan(&state, &req, Endpoint::Completions) {
        Ok(p) => p,
        Err(e) => return request_error(&e),
    };
    let jobs = match openai::jobs(&state, &req, &plan) {
        Ok(j) => j,
        Err(e) => return request_error(&e),
    };
    let mut settings = match jobs.first() {
        Some(j) => params(&state, &j.sampler, j.max_tokens),
        None => Value::Null,
    };
    settings["n_ctx"] = json!(state.scheduler.context_size());
    settings["model"] = json!(state.name);
    settings["stop"] = json!(req.stop);
    settings["stream"] = json!(req.stream);
    settings["ignore_eos"] = json!(req.ignore_eos);
    // llama-server's shape; a ban (-∞) is `null`.
    settings["logit_bias"] = jobs.first().map_or(json!([]), |j| {
        j.logit_bias
            .iter()
            .map(|&(token, bias)| {
                json!({"token": token, "bias": if bias.is_finite() { json!(bias) } else { Value::Null }})
            })
            .collect()
    });
    settings["post_sampling_probs"] = json!(req.post_sampling_probs);
    if let Some(ResponseFormat::Grammar(g)) = &req.response_format {
        settings["grammar"] = json!(g);
    }
    settings["n_probs"] = json!(match req.logprobs {
        Some(LogprobsRequest::Count(k)) => k,
        _ => 0,
    });
    let Submitted { tickets, rx } = match openai::submit(&state, jobs) {
        Ok(s) => s,
        Err(e) => return openai::submit_error(&e),
    };
    let native = Native {
        results: (0..plan.prompts.len())
            .map(|_| NativeResult::default())
            .collect(),
        state,
        plan,
        return_tokens: req.return_tokens,
        probs: req.logprobs.is_some(),
        post_sampling: req.post_sampling_probs,
        response_fields: req.response_fields.clone(),
        settings,
        log,
    };
    if req.stream {
        let (out, out_rx) = mpsc::unbounded_channel::<String>();
        tokio::spawn(stream_native(native, tickets, rx, out));
        let events = UnboundedReceiverStream::new(out_rx)
            .map(|data| Ok::<SseEvent, Infallible>(SseEvent::default().data(data)));
        Sse::new(events).into_response()
    } else {
        collect_native(native, tickets, rx).await
    }
}

/// What an event adds to a streamed result.
struct Piece {
    text: String,
    /// The token it came with (none for the text held back until the end).
    token: Option<u32>,
    logprob: Option<TokenLogprob>,
}

/// Applies one event to its result; what it adds, if anything.
fn apply(r: &mut NativeResult, event: Event) -> Result<Option<Piece>, String> {
    match event {
        // Only embedding jobs produce these; progress is streamed as it comes.
        Event::Embedding(_) | Event::Progress(_) => Ok(None),
        Event::Prompt {
            slot,
            cached_tokens,
            ..
        } => {
            r.slot = Some(slot);
            r.cached = cached_tokens;
            Ok(None)
        }
        Event::Token { id, text, logprob } => {
            r.content.push_str(&text);
            r.tokens.push(id);
            if let Some(lp) = &logprob {
                r.probs.push(lp.clone());
            }
            Ok(Some(Piece {
                text,
                token: Some(id),
                logprob,
            }))
        }
        Event::Done(f) => {
            let tail = f.tail.clone();
            r.content.push_str(&tail);
            r.slot = r.slot.or(f.slot);
            r.finished = Some(f);
            Ok(Some(Piece {
                text: tail,
                token: None,
                logprob: None,
            }))
        }
        Event::Failed(e) => Err(e),
    }
}

async fn collect_native(
    mut native: Native,
    tickets: Vec<Ticket>,
    mut rx: mpsc::UnboundedReceiver<(usize, Event)>,
) -> Response {
    let mut remaining = tickets.len();
    while remaining > 0 {
        let Some((i, event)) = rx.recv().await else {
            break;
        };
        let done = matches!(event, Event::Done(_));
        if let Err(e) = apply(&mut native.results[i], event) {
            return error(StatusCode::INTERNAL_SERVER_ERROR, e, None);
        }
        remaining -= usize::from(done);
    }
    drop(tickets);
    if remaining > 0 {
        return error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "generation ended unexpectedly",
            None,
        );
    }
    native.record();
    let mut all: Vec<Value> = (0..native.results.len())
        .map(|i| native.last(i, false))
        .collect();
    // One prompt: one object; several: a list (as llama-server answers).
    if all.len() == 1 {
        Json(all.remove(0)).into_response()
    } else {
        Json(Value::Array(all)).into_response()
    }
}

/// Streams a native completion: a partial event per token, the held-back text at the end,
/// then the whole result with `stop: true`. No `[DONE]` (llama-server sends none here).
async fn stream_native(
    mut native: Native,
    tickets: Vec<Ticket>,
    mut rx: mpsc::UnboundedReceiver<(usize, Event)>,
    out: mpsc::UnboundedSender<String>,
) {
    let mut remaining = tickets.len();
    while remaining > 0 {
        let (i, event) = tokio::select! {
            e = rx.recv() => match e {
                Some(e) => e,
                None => break,
            },
            _ = out.closed() => {
                native.record();
                return;
            }
        };
        if let Event::Progress(p) = &event {
            let v = json!({"index": i, "content": "", "tokens": [], "stop": false,
                           "prompt_progress": bitnet::generate::openai::progress_json(p)});
            if out.send(v.to_string()).is_err() {
                return;
            }
            continue;
        }
        let done = matches!(event, Event::Done(_));
        let sent = match apply(&mut native.results[i], event) {
            Err(e) => {
                let _ = out.send(
                    json!({"error": {"message": e, "type": "server_error", "code": 500}})
                        .to_string(),
                );
                return;
            }
            Ok(None) => true,
            Ok(Some(p)) if p.token.is_some() || !p.text.is_empty() => {
                let v = native.partial(i, &p.text, p.token, p.logprob.as_ref());
                out.send(v.to_string()).is_ok()
            }
            Ok(Some(_)) => true,
        };
        if done {
            remaining -= 1;
            if out.send(native.last(i, true).to_string()).is_err() {
                return;
            }
        }
        if !sent {
            return;
        }
    }
    drop(tickets);
    native.record();
}

/// `/infill`: BitNet models have no fill-in-the-middle tokens.
pub async fn infill() -> Response {
    error(
        StatusCode::NOT_IMPLEMENTED,
        "infill is not supported: this model has no fill-in-the-middle tokens (FIM_PRE, \
         FIM_SUF, FIM_MID); continue a prompt with /completion instead",
        None,
    )
}

/// `/rerank` and its aliases: BitNet models have no reranker head.
pub async fn rerank() -> Response {
    error(
        StatusCode::NOT_IMPLEMENTED,
        "reranking is not supported: this model has no reranker head (llama-server needs a \
         reranker model started with --rerank)",
        None,
    )
}

/// llama-server's routes beside the OpenAI ones.
pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/completion", post(completion))
        .route("/completions", post(completion))
        .route("/tokenize", post(tokenize))
        .route("/detokenize", post(detokenize))
        .route("/apply-template", post(apply_template))
        .route("/props", get(props).post(set_props))
        .route("/slots", get(slots))
        .route("/slots/{id}", post(slot_action))
        .route("/infill", post(infill))
        .route("/rerank", post(rerank))
        .route("/reranking", post(rerank))
        .route("/v1/rerank", post(rerank))
        .route("/v1/reranking", post(rerank))
}
