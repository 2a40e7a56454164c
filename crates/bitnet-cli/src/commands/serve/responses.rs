//! OpenAI's Responses API (`POST /v1/responses`), translated to a chat completion as
//! llama-server does: `instructions` becomes a system message, `input` (text or items) the
//! conversation, `max_output_tokens` `max_tokens`, `text.format` `response_format`, and the
//! translated body goes through the same request parser and planner as
//! `/v1/chat/completions`. Only the response is shaped differently: a `response` object, or
//! streamed, the `response.*` events in the order OpenAI sends them.
//!
//! Nothing is stored: `previous_response_id`, `store: true` and `background: true` are
//! refused by name rather than pretended.

use std::convert::Infallible;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::sse::{Event as SseEvent, Sse};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use bitnet::generate::scheduler::Event;
use bitnet::generate::tools::{parse_reply, CallParser, Delta, Tools};
use bitnet::generate::{Finished, Request, StopReason, Ticket};
use serde_json::{json, Map, Value};
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tokio_stream::StreamExt;

use super::openai::{self, request_error, Endpoint, Submitted};
use super::ops::{error, GenStats, RequestLog};
use super::AppState;

/// A refusal (boxed: a `Response` is large to pass back through every `?`).
type Refusal = Box<Response>;

fn bad(field: &str, message: impl Into<String>) -> Refusal {
    Box::new(error(StatusCode::BAD_REQUEST, message, Some(field)))
}

/// One `input` item (or an `EasyInputMessage`) as chat messages.
fn item_to_message(i: usize, item: &Value) -> Result<Value, Refusal> {
    let kind = item
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or("message");
    match kind {
        "message" => {
            let role = item
                .get("role")
                .and_then(Value::as_str)
                .ok_or_else(|| bad("input", format!("input item {i}: a message needs a `role`")))?;
            let content = match item.get("content") {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Array(parts)) => {
                    let mut texts = Vec::with_capacity(parts.len());
                    for part in parts {
                        let t = part.get("type").and_then(Value::as_str);
                        match (t, part.get("text").and_then(Value::as_str)) {
                            (Some("input_text" | "output_text" | "text"), Some(text)) => {
                                texts.push(text)
                            }
                            (Some(t @ ("input_image" | "input_file" | "input_audio")), _) => {
                                return Err(bad(
                                    "input",
                                    format!(
                                        "input item {i}: content parts of type `{t}` are not \
                                         supported: this model reads text only"
                                    ),
                                ))
                            }
                            _ => {
                                return Err(bad(
                                    "input",
                                    format!(
                                        "input item {i}: content parts are \
                                         {{\"type\": \"input_text\", \"text\": …}}"
                                    ),
                                ))
                            }
                        }
                    }
                    texts.join("\n")
                }
                _ => {
                    return Err(bad(
                        "input",
                        format!("input item {i}: `content` must be a string or a list of parts"),
                    ))
                }
            };
            Ok(json!({"role": role, "content": content}))
        }
        "function_call" => {
            let get = |k: &str| item.get(k).and_then(Value::as_str);
            match (get("call_id"), get("name"), get("arguments")) {
                (Some(id), Some(name), Some(args)) => Ok(json!({
                    "role": "assistant", "content": null,
                    "tool_calls": [{"id": id, "type": "function",
                                    "function": {"name": name, "arguments": args}}],
                })),
                _ => Err(bad(
                    "input",
                    format!(
                        "input item {i}: a function_call needs `call_id`, `name` and `arguments`"
                    ),
                )),
            }
        }
        "function_call_output" => {
            let id = item.get("call_id").and_then(Value::as_str);
            let output = match item.get("output") {
                Some(Value::String(s)) => Some(s.clone()),
                Some(v @ Value::Array(_)) => Some(v.to_string()),
                _ => None,
            };
            match (id, output) {
                (Some(id), Some(output)) => {
                    Ok(json!({"role": "tool", "tool_call_id": id, "content": output}))
                }
                _ => Err(bad(
                    "input",
                    format!("input item {i}: a function_call_output needs `call_id` and `output`"),
                )),
            }
        }
        other => Err(bad(
            "input",
            format!(
                "input item {i} has type `{other}`: this server reads messages, function_call \
                 and function_call_output items"
            ),
        )),
    }
}

/// `text.format` as a chat `response_format`.
fn format_to_response_format(format: &Value) -> Result<Value, Refusal> {
    match format.get("type").and_then(Value::as_str) {
        Some("text") => Ok(json!({"type": "text"})),
        Some("json_object") => Ok(json!({"type": "json_object"})),
        Some("json_schema") => {
            let schema = format.get("schema").cloned().unwrap_or_else(|| json!({}));
            Ok(json!({"type": "json_schema", "json_schema": {
                "name": format.get("name").cloned().unwrap_or(json!("response")),
                "schema": schema,
            }}))
        }
        _ => Err(bad(
            "text",
            "`text.format` must be {\"type\": \"text\"}, {\"type\": \"json_object\"} or \
             {\"type\": \"json_schema\", \"name\": …, \"schema\": …}",
        )),
    }
}

/// A Responses request as a chat completion request (a JSON body for the chat parser).
fn to_chat(obj: &Map<String, Value>) -> Result<Value, Refusal> {
    let mut messages = Vec::new();
    let mut chat = Map::new();
    for (key, value) in obj {
        if value.is_null() {
            continue;
        }
        match key.as_str() {
            "instructions" => {
                let s = value
                    .as_str()
                    .ok_or_else(|| bad("instructions", "`instructions` must be a string"))?;
                messages.insert(0, json!({"role": "system", "content": s}));
            }
            "input" => match value {
                Value::String(s) => messages.push(json!({"role": "user", "content": s})),
                Value::Array(items) => {
                    for (i, item) in items.iter().enumerate() {
                        messages.push(item_to_message(i, item)?);
                    }
                }
                _ => return Err(bad("input", "`input` must be a string or a list of items")),
            },
            "max_output_tokens" => {
                chat.insert("max_tokens".into(), value.clone());
            }
            "text" => {
                if let Some(format) = value.get("format") {
                    chat.insert("response_format".into(), format_to_response_format(format)?);
                }
            }
            "tools" => {
                // Responses tools are flat; chat nests the function.
                let tools = value
                    .as_array()
                    .ok_or_else(|| bad("tools", "`tools` must be a list"))?;
                let mut out = Vec::with_capacity(tools.len());
                for t in tools {
                    if t.get("type").and_then(Value::as_str) != Some("function") {
                        return Err(bad(
                            "tools",
                            "only function tools are supported (no built-in tools here)",
                        ));
                    }
                    let mut f = t.clone();
                    if let Some(o) = f.as_object_mut() {
                        o.remove("type");
                        o.remove("strict");
                    }
                    out.push(json!({"type": "function", "function": f}));
                }
                chat.insert("tools".into(), Value::Array(out));
            }
            "top_logprobs" => {
                chat.insert("logprobs".into(), json!(true));
                chat.insert("top_logprobs".into(), value.clone());
            }
            // The same meaning in both APIs: the chat parser checks them.
            "model"
            | "temperature"
            | "top_p"
            | "stream"
            | "tool_choice"
            | "user"
            | "metadata"
            | "parallel_tool_calls"
            | "service_tier"
            | "prompt_cache_key"
            | "safety_identifier"
            | "store"
            | "seed" => {
                chat.insert(key.clone(), value.clone());
            }
            "previous_response_id" | "conversation" => {
                return Err(bad(
                    key,
                    format!(
                        "`{key}` is not supported: this server keeps no responses; send the \
                         whole conversation in `input`"
                    ),
                ))
            }
            "background" if value != &Value::Bool(false) => {
                return Err(bad("background", "background responses are not supported"))
            }
            "truncation" if value != "disabled" => {
                return Err(bad(
                    "truncation",
                    "only \"disabled\": a prompt longer than the context is refused",
                ))
            }
            "reasoning" if value.as_object().is_some_and(|o| !o.is_empty()) => {
                return Err(bad(
                    "reasoning",
                    "not supported: this model does not reason before answering",
                ))
            }
            "include" if value.as_array().is_some_and(|a| !a.is_empty()) => {
                return Err(bad(
                    "include",
                    "no extra output data is offered: leave it empty",
                ))
            }
            "background" | "truncation" | "reasoning" | "include" | "stream_options" => {}
            other => {
                return Err(bad(
                    other,
                    format!(
                        "unknown field `{other}`: the Responses API does not document it (a \
                         misspelling?)"
                    ),
                ))
            }
        }
    }
    if messages.is_empty() {
        return Err(bad(
            "input",
            "`input` must be given: text or a list of items",
        ));
    }
    chat.insert("messages".into(), Value::Array(messages));
    Ok(Value::Object(chat))
}

/// What the response object is built from.
struct Reply {
    state: Arc<AppState>,
    log: Arc<RequestLog>,
    id: String,
    message_id: String,
    created: u64,
    /// The request's fields echoed in the response object.
    echo: Map<String, Value>,
    prompt_tokens: usize,
    text: String,
    finished: Option<Finished>,
    /// With tools: a reply that is calls becomes `function_call` items.
    tools: Option<Tools>,
    /// The finished reply's output items, once read (a call keeps its id in every event).
    items: std::sync::OnceLock<Vec<Value>>,
}

impl Reply {
    fn status(&self) -> &'static str {
        match self.finished.as_ref().map(|f| &f.stop) {
            None => "in_progress",
            Some(StopReason::MaxTokens | StopReason::ContextFull) => "incomplete",
            Some(_) => "completed",
        }
    }

    fn message(&self, status: &str, with_text: bool) -> Value {
        let content = if with_text {
            vec![
                json!({"type": "output_text", "text": self.text, "annotations": [],
                        "logprobs": []}),
            ]
        } else {
            vec![]
        };
        json!({"type": "message", "id": self.message_id, "status": status,
               "role": "assistant", "content": content})
    }

    /// The output items of a finished reply: the message, or with tools the calls it made
    /// (`function_call` items, each with its call's id as `call_id`).
    fn output(&self, status: &str) -> Vec<Value> {
        self.items.get_or_init(|| self.read_output(status)).clone()
    }

    fn read_output(&self, status: &str) -> Vec<Value> {
        let Some(tools) = &self.tools else {
            return vec![self.message(status, true)];
        };
        let reply = parse_reply(tools, &self.text);
        if reply.calls.is_empty() {
            return vec![self.message(status, true)];
        }
        reply
            .calls
            .iter()
            .map(|c| {
                json!({"type": "function_call", "id": format!("fc_{}", &c.id[5..]),
                       "call_id": c.id, "name": c.name, "arguments": c.arguments,
                       "status": status})
            })
            .collect()
    }

    fn object(&self) -> Value {
        let status = self.status();
        let output = if self.finished.is_some() {
            self.output(status)
        } else {
            vec![]
        };
        let generated = self.finished.as_ref().map_or(0, |f| f.generated_tokens);
        let cached = self.finished.as_ref().map_or(0, |f| f.cached_tokens);
        let mut v = json!({
            "id": self.id,
            "object": "response",
            "created_at": self.created,
            "status": status,
            "error": null,
            "incomplete_details": if status == "incomplete" {
                json!({"reason": "max_output_tokens"})
            } else {
                Value::Null
            },
            "model": self.state.name,
            "output": output,
            "parallel_tool_calls": true,
            "tool_choice": "auto",
            "tools": [],
            "text": {"format": {"type": "text"}},
            "truncation": "disabled",
            "store": false,
            "metadata": {},
            "instructions": null,
            "max_output_tokens": null,
            "previous_response_id": null,
            "reasoning": null,
            "temperature": null,
            "top_p": null,
            "usage": if self.finished.is_some() {
                json!({
                    "input_tokens": self.prompt_tokens,
                    "input_tokens_details": {"cached_tokens": cached},
                    "output_tokens": generated,
                    "output_tokens_details": {"reasoning_tokens": 0},
                    "total_tokens": self.prompt_tokens + generated,
                })
            } else {
                Value::Null
            },
        });
        for (k, val) in &self.echo {
            v[k.as_str()] = val.clone();
        }
        if let Some(f) = &self.finished {
            v["timings"] = super::llama::timings(&[f], self.state.scheduler.context_size());
        }
        v
    }

    fn record(&self) {
        if let Some(f) = &self.finished {
            self.state
                .metrics
                .time_to_first_token(f.time_to_first_token);
            self.log.record(GenStats {
                prompt_tokens: self.prompt_tokens,
                cached_tokens: f.cached_tokens,
                generated_tokens: f.generated_tokens,
                time_to_first_token: Some(f.time_to_first_token),
                tokens_per_s: f.generation_tokens_per_s(),
            });
        }
    }
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn new_id(prefix: &str) -> String {
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("{prefix}_{:016x}{n:06x}", bitnet::generate::random_seed())
}

/// `POST /v1/responses`.
pub async fn responses(
    State(state): State<Arc<AppState>>,
    Extension(log): Extension<Arc<RequestLog>>,
    body: Bytes,
) -> Response {
    let value: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("invalid request: invalid JSON: {e}"),
                None,
            )
        }
    };
    let Some(obj) = value.as_object() else {
        return error(
            StatusCode::BAD_REQUEST,
            "a request must be a JSON object",
            None,
        );
    };
    let chat = match to_chat(obj) {
        Ok(c) => c,
        Err(r) => return *r,
    };
    let req = match Request::from_value(&chat) {
        Ok(r) => r,
        Err(e) => return request_error(&e),
    };
    if let Err(e) = &state.template {
        return error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!(
                "this server cannot render conversations: its chat template does not compile ({e})"
            ),
            None,
        );
    }
    let plan = match openai::plan(&state, &req, Endpoint::Chat) {
        Ok(p) => p,
        Err(e) => return request_error(&e),
    };
    let jobs = match openai::jobs(&state, &req, &plan) {
        Ok(j) => j,
        Err(e) => return request_error(&e),
    };
    let Submitted { tickets, rx } = match openai::submit(&state, jobs) {
        Ok(s) => s,
        Err(e) => return openai::submit_error(&e),
    };
    // The request's own settings, echoed as OpenAI echoes them.
    let mut echo = Map::new();
    for k in [
        "instructions",
        "max_output_tokens",
        "temperature",
        "top_p",
        "metadata",
        "tools",
        "tool_choice",
        "parallel_tool_calls",
        "text",
        "user",
    ] {
        if let Some(v) = obj.get(k).filter(|v| !v.is_null()) {
            echo.insert(k.into(), v.clone());
        }
    }
    let reply = Reply {
        state,
        log,
        id: new_id("resp"),
        message_id: new_id("msg"),
        created: now(),
        echo,
        prompt_tokens: plan.prompts.iter().map(|p| p.ids.len()).sum(),
        text: String::new(),
        finished: None,
        tools: plan.tools.clone(),
        items: std::sync::OnceLock::new(),
    };
    if req.stream {
        let (out, out_rx) = mpsc::unbounded_channel::<(String, String)>();
        tokio::spawn(stream(reply, tickets, rx, out));
        let events = UnboundedReceiverStream::new(out_rx).map(|(name, data)| {
            Ok::<SseEvent, Infallible>(SseEvent::default().event(name).data(data))
        });
        Sse::new(events).into_response()
    } else {
        collect(reply, tickets, rx).await
    }
}

async fn collect(
    mut reply: Reply,
    tickets: Vec<Ticket>,
    mut rx: mpsc::UnboundedReceiver<(usize, Event)>,
) -> Response {
    while let Some((_, event)) = rx.recv().await {
        match event {
            Event::Prompt { .. } | Event::Embedding(_) | Event::Progress(_) => {}
            Event::Token { text, .. } => reply.text.push_str(&text),
            Event::Done(f) => {
                reply.text.push_str(&f.tail);
                reply.finished = Some(f);
                break;
            }
            Event::Failed(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e, None),
        }
    }
    drop(tickets);
    if reply.finished.is_none() {
        return error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "generation ended unexpectedly",
            None,
        );
    }
    reply.record();
    Json(reply.object()).into_response()
}

/// The output item a streamed reply with tools has open.
enum Open {
    None,
    Message,
    /// A function call: its item so far.
    Call(Value),
}

/// Closes the open item at `index` with `status`: the events that say so, and the item.
fn close(
    open: &mut Open,
    text: &str,
    reply: &Reply,
    index: usize,
    status: &str,
) -> Option<(Vec<(&'static str, Value)>, Value)> {
    match std::mem::replace(open, Open::None) {
        Open::None => None,
        Open::Message => {
            let at = json!({"item_id": reply.message_id, "output_index": index,
                            "content_index": 0});
            let mut done = at.clone();
            done["text"] = json!(text);
            done["logprobs"] = json!([]);
            let mut part = at;
            part["part"] = json!({"type": "output_text", "text": text, "annotations": []});
            let mut item = reply.message(status, true);
            item["content"][0]["text"] = json!(text);
            Some((
                vec![
                    ("response.output_text.done", done),
                    ("response.content_part.done", part),
                ],
                item,
            ))
        }
        Open::Call(mut item) => {
            item["status"] = json!(status);
            let done = json!({"item_id": item["id"], "output_index": index,
                              "arguments": item["arguments"]});
            Some((vec![("response.function_call_arguments.done", done)], item))
        }
    }
}

/// A message item opening at `index`.
fn open_message(reply: &Reply, index: usize) -> Vec<(&'static str, Value)> {
    let mut item = reply.message("in_progress", false);
    item["content"] = json!([]);
    vec![
        (
            "response.output_item.added",
            json!({"output_index": index, "item": item}),
        ),
        (
            "response.content_part.added",
            json!({"item_id": reply.message_id, "output_index": index, "content_index": 0,
                   "part": {"type": "output_text", "text": "", "annotations": []}}),
        ),
    ]
}

/// The `response.*` events of a reply with tools, as OpenAI streams them: text opens a
/// message item as it comes; each call opens a `function_call` item whose arguments come in
/// `response.function_call_arguments.delta` events.
async fn stream_with_tools(
    mut reply: Reply,
    tickets: Vec<Ticket>,
    mut rx: mpsc::UnboundedReceiver<(usize, Event)>,
    out: mpsc::UnboundedSender<(String, String)>,
) {
    let Some(tools) = reply.tools.clone() else {
        return;
    };
    let mut seq = 0u64;
    let mut send = |name: &str, mut data: Value| {
        data["type"] = json!(name);
        data["sequence_number"] = json!(seq);
        seq += 1;
        out.send((name.to_string(), data.to_string())).is_ok()
    };
    for name in ["response.created", "response.in_progress"] {
        if !send(name, json!({"response": reply.object()})) {
            return;
        }
    }
    let mut parser = Some(CallParser::new(&tools));
    let mut open = Open::None;
    let mut items: Vec<Value> = Vec::new();
    let mut text = String::new();
    let mut finished = None;
    while finished.is_none() {
        let event = tokio::select! {
            e = rx.recv() => match e {
                Some((_, e)) => e,
                None => break,
            },
            // The client left: the ticket's drop cancels the generation.
            _ = out.closed() => return,
        };
        let piece = match event {
            Event::Prompt { .. } | Event::Embedding(_) | Event::Progress(_) => continue,
            Event::Token { text, .. } => text,
            Event::Done(f) => {
                let tail = f.tail.clone();
                finished = Some(f);
                tail
            }
            Event::Failed(e) => {
                let _ = send(
                    "error",
                    json!({"code": "server_error", "message": e, "param": null}),
                );
                return;
            }
        };
        reply.text.push_str(&piece);
        let Some(p) = parser.as_mut() else { break };
        let mut deltas = p.push(&piece);
        if finished.is_some() {
            // What was held back (text that only looked like a call) is content after all.
            if let Some(rest) = parser.take().and_then(|p| p.finish().content) {
                deltas.push(Delta::Content(rest));
            }
        }
        for d in deltas {
            let mut index = items.len();
            let mut events: Vec<(&str, Value)> = Vec::new();
            match d {
                Delta::Content(t) if t.is_empty() => {}
                Delta::Content(t) => {
                    if !matches!(open, Open::Message) {
                        events.extend(open_message(&reply, index));
                        open = Open::Message;
                    }
                    text.push_str(&t);
                    events.push((
                        "response.output_text.delta",
                        json!({"item_id": reply.message_id, "output_index": index,
                               "content_index": 0, "delta": t, "logprobs": []}),
                    ));
                }
                Delta::CallStart { id, name, .. } => {
                    if let Some((closing, item)) =
                        close(&mut open, &text, &reply, index, "completed")
                    {
                        events.extend(closing);
                        events.push((
                            "response.output_item.done",
                            json!({"output_index": index, "item": item}),
                        ));
                        items.push(item);
                        index += 1;
                    }
                    let item = json!({"type": "function_call",
                        "id": format!("fc_{}", id.trim_start_matches("call_")),
                        "call_id": id, "name": name, "arguments": "",
                        "status": "in_progress"});
                    events.push((
                        "response.output_item.added",
                        json!({"output_index": index, "item": item}),
                    ));
                    open = Open::Call(item);
                }
                Delta::Arguments { text: piece, .. } => {
                    if let Open::Call(item) = &mut open {
                        let args = format!("{}{piece}", item["arguments"].as_str().unwrap_or(""));
                        item["arguments"] = json!(args);
                        events.push((
                            "response.function_call_arguments.delta",
                            json!({"item_id": item["id"], "output_index": index,
                                   "delta": piece}),
                        ));
                    }
                }
            }
            for (name, data) in events {
                if !send(name, data) {
                    return;
                }
            }
        }
    }
    drop(tickets);
    let Some(f) = finished else { return };
    reply.finished = Some(f);
    reply.record();
    let status = reply.status();
    let index = items.len();
    if matches!(open, Open::None) && items.is_empty() {
        // An empty reply is an empty message, as without tools.
        for (name, data) in open_message(&reply, index) {
            if !send(name, data) {
                return;
            }
        }
        open = Open::Message;
    }
    if let Some((closing, item)) = close(&mut open, &text, &reply, index, status) {
        for (name, data) in closing {
            if !send(name, data) {
                return;
            }
        }
        if !send(
            "response.output_item.done",
            json!({"output_index": index, "item": item}),
        ) {
            return;
        }
        items.push(item);
    }
    // The response object lists the items as streamed (same ids).
    let _ = reply.items.set(items);
    let end = if status == "incomplete" {
        "response.incomplete"
    } else {
        "response.completed"
    };
    let _ = send(end, json!({"response": reply.object()}));
}

/// The `response.*` events: created, in progress, the message item and its text part
/// opened, a delta per piece of text, then each closed and `response.completed` (or
/// `response.incomplete` when the length limit ended it).
async fn stream(
    mut reply: Reply,
    tickets: Vec<Ticket>,
    mut rx: mpsc::UnboundedReceiver<(usize, Event)>,
    out: mpsc::UnboundedSender<(String, String)>,
) {
    if reply.tools.is_some() {
        return stream_with_tools(reply, tickets, rx, out).await;
    }
    let mut seq = 0u64;
    let mut send = |name: &str, mut data: Value| {
        data["type"] = json!(name);
        data["sequence_number"] = json!(seq);
        seq += 1;
        out.send((name.to_string(), data.to_string())).is_ok()
    };
    let item = |reply: &Reply, status: &str, with_text: bool| reply.message(status, with_text);
    let part = |text: &str| json!({"type": "output_text", "text": text, "annotations": []});
    let opening = [
        ("response.created", json!({"response": reply.object()})),
        ("response.in_progress", json!({"response": reply.object()})),
        (
            "response.output_item.added",
            json!({"output_index": 0, "item": item(&reply, "in_progress", false)}),
        ),
        (
            "response.content_part.added",
            json!({"item_id": reply.message_id, "output_index": 0, "content_index": 0,
                   "part": part("")}),
        ),
    ];
    for (name, data) in opening {
        if !send(name, data) {
            return;
        }
    }
    let delta = |reply: &Reply, text: &str| {
        json!({"item_id": reply.message_id, "output_index": 0, "content_index": 0,
               "delta": text, "logprobs": []})
    };
    loop {
        let event = tokio::select! {
            e = rx.recv() => match e {
                Some((_, e)) => e,
                None => break,
            },
            // The client left: the ticket's drop cancels the generation.
            _ = out.closed() => return,
        };
        match event {
            Event::Prompt { .. } | Event::Embedding(_) | Event::Progress(_) => {}
            Event::Token { text, .. } => {
                if !text.is_empty() {
                    reply.text.push_str(&text);
                    if !send("response.output_text.delta", delta(&reply, &text)) {
                        return;
                    }
                }
            }
            Event::Done(f) => {
                let tail = f.tail.clone();
                reply.finished = Some(f);
                if !tail.is_empty() {
                    reply.text.push_str(&tail);
                    if !send("response.output_text.delta", delta(&reply, &tail)) {
                        return;
                    }
                }
                break;
            }
            Event::Failed(e) => {
                let _ = send(
                    "error",
                    json!({"code": "server_error", "message": e, "param": null}),
                );
                return;
            }
        }
    }
    drop(tickets);
    if reply.finished.is_none() {
        return;
    }
    reply.record();
    let status = reply.status();
    let closing = [
        (
            "response.output_text.done",
            json!({"item_id": reply.message_id, "output_index": 0, "content_index": 0,
                   "text": reply.text, "logprobs": []}),
        ),
        (
            "response.content_part.done",
            json!({"item_id": reply.message_id, "output_index": 0, "content_index": 0,
                   "part": part(&reply.text)}),
        ),
        (
            "response.output_item.done",
            json!({"output_index": 0, "item": item(&reply, status, true)}),
        ),
        (
            if status == "incomplete" {
                "response.incomplete"
            } else {
                "response.completed"
            },
            json!({"response": reply.object()}),
        ),
    ];
    for (name, data) in closing {
        if !send(name, data) {
            return;
        }
    }
}
