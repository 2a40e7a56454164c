//! Anthropic's Messages API (`POST /v1/messages`, `POST /v1/messages/count_tokens`) as
//! another dialect over chat completions, as llama-server serves it: [`to_chat`] translates
//! a request into a chat completion request for the one request parser and planner
//! ([`super::openai::plan`]), and [`Message`] reads the chat reply ([`super::openai::Reply`],
//! which already splits text from tool calls) into Anthropic's `message` object, or streamed,
//! into its events (`message_start`, `content_block_start`/`_delta`/`_stop`,
//! `message_delta`, `message_stop`). Sampling, stop strings and tool calls stay chat's.
//!
//! The translation: `system` becomes a system message; content blocks become message text,
//! `tool_use` blocks an assistant's `tool_calls` and `tool_result` blocks `tool` messages;
//! `stop_sequences` is `stop`, `tools[].input_schema` a function's `parameters`, and
//! `tool_choice` `any`/`tool` are `required`/a named function. Fields Anthropic does not
//! document go to the chat parser as they are (llama-server's sampling extensions such as
//! `seed` or `min_p` work; a misspelling is refused there by name), but OpenAI's own
//! spellings of Anthropic fields are refused with the Anthropic name to use.

use serde_json::{json, Map, Value};

use super::openai::{self, Reply};
use super::request::RequestError;
use super::scheduler::Event;
use super::StopReason;

/// Which of the two routes a request is for.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Endpoint {
    /// `/v1/messages`: a reply is generated (`max_tokens` is required, as Anthropic's is).
    Messages,
    /// `/v1/messages/count_tokens`: only the prompt is rendered (`max_tokens` and `stream`
    /// are not needed, and ignored when given).
    CountTokens,
}

fn bad(field: &'static str, message: impl Into<String>) -> RequestError {
    RequestError::Unsupported {
        field,
        message: message.into(),
    }
}

/// OpenAI's fields that the Messages API spells otherwise, with the name to use: a client
/// that sends them is speaking the wrong dialect, and silently serving half of it would
/// mislead (`n` would be dropped from the answer, say).
const OPENAI_ONLY: [(&str, &str); 10] = [
    ("prompt", "`messages`"),
    ("stop", "`stop_sequences`"),
    ("max_completion_tokens", "`max_tokens`"),
    ("n", "one message per request"),
    ("best_of", "one message per request"),
    ("logprobs", "nothing: the Messages API has no logprobs"),
    ("top_logprobs", "nothing: the Messages API has no logprobs"),
    ("echo", "nothing: the Messages API has no echo"),
    (
        "stream_options",
        "nothing: usage is always in `message_delta`",
    ),
    (
        "parallel_tool_calls",
        "`tool_choice.disable_parallel_tool_use`",
    ),
];

/// A request of the Messages API as a chat completion request (a JSON body for
/// [`super::Request::from_value`]).
pub fn to_chat(body: &Value, endpoint: Endpoint) -> Result<Value, RequestError> {
    let obj = body.as_object().ok_or(RequestError::NotAnObject)?;
    let mut chat = Map::new();
    let mut messages = Vec::new();
    let mut max_tokens_given = false;
    for (key, value) in obj {
        if value.is_null() {
            continue;
        }
        match key.as_str() {
            "system" => messages.insert(0, json!({"role": "system", "content": system(value)?})),
            "messages" => {
                let list = value.as_array().ok_or(RequestError::Field {
                    field: "messages",
                    expected: "a list of {\"role\": …, \"content\": …} objects",
                })?;
                for (i, m) in list.iter().enumerate() {
                    turn(i, m, &mut messages)?;
                }
            }
            "max_tokens" => {
                max_tokens_given = true;
                if endpoint == Endpoint::Messages {
                    if value.as_u64().is_none_or(|n| n == 0) {
                        return Err(RequestError::Field {
                            field: "max_tokens",
                            expected: "an integer ≥ 1",
                        });
                    }
                    chat.insert("max_tokens".into(), value.clone());
                }
            }
            "stop_sequences" => {
                let ok = value
                    .as_array()
                    .is_some_and(|a| a.iter().all(Value::is_string));
                if !ok {
                    return Err(RequestError::Field {
                        field: "stop_sequences",
                        expected: "a list of strings",
                    });
                }
                chat.insert("stop".into(), value.clone());
            }
            "tools" => {
                chat.insert("tools".into(), tools(value)?);
            }
            "tool_choice" => {
                let (choice, parallel) = tool_choice(value)?;
                chat.insert("tool_choice".into(), choice);
                if let Some(p) = parallel {
                    chat.insert("parallel_tool_calls".into(), json!(p));
                }
            }
            // No model here reasons before answering: asking for it is harmless (llama-server
            // accepts it too), and the reply simply has no thinking block.
            "thinking" => {
                if !value.is_object() {
                    return Err(RequestError::Field {
                        field: "thinking",
                        expected: "an object like {\"type\": \"enabled\", \"budget_tokens\": …}",
                    });
                }
            }
            "stream" if endpoint == Endpoint::CountTokens => {}
            // Prompt caching is automatic here (a slot reuses the longest shared prefix); the
            // others choose among Anthropic's deployments, and there is one model here.
            "cache_control" | "service_tier" | "inference_geo" | "speed" | "diagnostics"
            | "user_profile_id" | "workspace_id" => {}
            // Structured output: a JSON schema the reply must follow, as chat's
            // `response_format` (`effort` is for reasoning models: nothing to spend here).
            "output_config" | "output_format" => {
                let format = if key == "output_format" {
                    Some(value)
                } else {
                    value.get("format").filter(|f| !f.is_null())
                };
                if let Some(f) = format {
                    match (kind(f), f.get("schema")) {
                        ("json_schema", Some(schema)) => {
                            chat.insert(
                                "response_format".into(),
                                json!({"type": "json_schema",
                                       "json_schema": {"name": "output", "schema": schema}}),
                            );
                        }
                        _ => {
                            return Err(RequestError::Field {
                                field: "output_config",
                                expected:
                                    "{\"format\": {\"type\": \"json_schema\", \"schema\": …}}",
                            })
                        }
                    }
                }
            }
            "container" | "mcp_servers" | "context_management" => {
                let field = match key.as_str() {
                    "container" => "container",
                    "mcp_servers" => "mcp_servers",
                    _ => "context_management",
                };
                return Err(bad(
                    field,
                    format!("`{key}` is not supported: this server runs no tools of its own"),
                ));
            }
            k => {
                if let Some((field, instead)) = OPENAI_ONLY.iter().find(|(f, _)| *f == k) {
                    return Err(bad(
                        field,
                        format!("`{k}` is not a Messages API field: use {instead}"),
                    ));
                }
                // The same meaning in both (`model`, `temperature`, `top_p`, `top_k`,
                // `metadata`, `stream`, `service_tier`) or llama-server's extensions: the chat
                // parser reads and checks them.
                chat.insert(k.to_string(), value.clone());
            }
        }
    }
    if endpoint == Endpoint::Messages && !max_tokens_given {
        return Err(RequestError::Field {
            field: "max_tokens",
            expected: "given: the Messages API requires an integer ≥ 1",
        });
    }
    if obj.contains_key("messages") {
        chat.insert("messages".into(), Value::Array(messages));
    }
    Ok(Value::Object(chat))
}

/// `system`: a string or a list of text blocks (joined with newlines, as chat joins parts).
fn system(value: &Value) -> Result<String, RequestError> {
    const EXPECTED: &str = "a string or a list of {\"type\": \"text\", \"text\": …} blocks";
    match value {
        Value::String(s) => Ok(s.clone()),
        Value::Array(blocks) => blocks
            .iter()
            .map(|b| match (kind(b), b.get("text").and_then(Value::as_str)) {
                ("text", Some(t)) => Ok(t),
                _ => Err(RequestError::Field {
                    field: "system",
                    expected: EXPECTED,
                }),
            })
            .collect::<Result<Vec<_>, _>>()
            .map(|t| t.join("\n")),
        _ => Err(RequestError::Field {
            field: "system",
            expected: EXPECTED,
        }),
    }
}

fn kind(block: &Value) -> &str {
    block.get("type").and_then(Value::as_str).unwrap_or("")
}

/// A block the model cannot read (an image, a document) or that this server does not
/// serve (another server's tools), refused by its type.
fn unreadable(i: usize, block: &str) -> RequestError {
    let why = match block {
        "image" => "image input is not supported: this model reads text only".to_string(),
        "document" => "document input is not supported: this model reads text only".to_string(),
        other => format!(
            "content blocks of type `{other}` are not supported (text, tool_use, tool_result \
             and thinking are)"
        ),
    };
    bad("messages", format!("message {i}: {why}"))
}

/// One turn of `messages` as chat messages: its text, an assistant's `tool_use` blocks as
/// `tool_calls`, a user's `tool_result` blocks as `tool` messages.
fn turn(i: usize, m: &Value, out: &mut Vec<Value>) -> Result<(), RequestError> {
    let role = m.get("role").and_then(Value::as_str);
    let role = match role {
        Some(r @ ("user" | "assistant")) => r,
        Some(other) => {
            return Err(bad(
                "messages",
                format!(
                    "message {i} has role `{other}`: the roles are user and assistant (the \
                     system prompt is `system`)"
                ),
            ))
        }
        None => {
            return Err(RequestError::Field {
                field: "messages",
                expected: "a list of {\"role\": …, \"content\": …} objects",
            })
        }
    };
    let blocks = match m.get("content") {
        Some(Value::String(s)) => {
            out.push(json!({"role": role, "content": s}));
            return Ok(());
        }
        Some(Value::Array(blocks)) => blocks,
        _ => {
            return Err(bad(
                "messages",
                format!("message {i}: `content` must be a string or a list of content blocks"),
            ))
        }
    };
    let mut texts = Vec::new();
    let mut calls = Vec::new();
    let mut results = Vec::new();
    for b in blocks {
        match (role, kind(b)) {
            (_, "text") => match b.get("text").and_then(Value::as_str) {
                Some(t) => texts.push(json!({"type": "text", "text": t})),
                None => {
                    return Err(bad(
                        "messages",
                        format!("message {i}: a text block needs `text`"),
                    ))
                }
            },
            ("assistant", "tool_use") => {
                let id = b.get("id").and_then(Value::as_str);
                let name = b.get("name").and_then(Value::as_str);
                let input = b.get("input").filter(|v| v.is_object());
                match (id, name, input) {
                    (Some(id), Some(name), Some(input)) => calls.push(json!({
                        "id": id, "type": "function",
                        "function": {"name": name, "arguments": input.to_string()},
                    })),
                    _ => {
                        return Err(bad(
                            "messages",
                            format!(
                                "message {i}: a tool_use block needs `id`, `name` and an \
                                 object `input`"
                            ),
                        ))
                    }
                }
            }
            ("user", "tool_result") => results.push(tool_result(i, b)?),
            // A reasoning model's thoughts from an earlier turn: no model here reasons, and
            // no template here has a place for them.
            ("assistant", "thinking" | "redacted_thinking") => {}
            (_, other) => return Err(unreadable(i, other)),
        }
    }
    // Tool results answer the assistant's calls just before them, so they come first (as
    // Anthropic requires them to in the block list); any text follows as the user's turn.
    out.extend(results);
    if role == "assistant" && !calls.is_empty() {
        let content = if texts.is_empty() {
            Value::Null
        } else {
            Value::Array(texts)
        };
        out.push(json!({"role": "assistant", "content": content, "tool_calls": calls}));
    } else if !texts.is_empty() || (role == "assistant" && calls.is_empty()) || blocks.is_empty() {
        out.push(json!({"role": role, "content": texts}));
    }
    Ok(())
}

/// A `tool_result` block as a `tool` message; `is_error` is said in the text, the only place
/// a chat template shows a tool's answer.
fn tool_result(i: usize, b: &Value) -> Result<Value, RequestError> {
    let id = b
        .get("tool_use_id")
        .and_then(Value::as_str)
        .ok_or_else(|| {
            bad(
                "messages",
                format!("message {i}: a tool_result needs `tool_use_id`"),
            )
        })?;
    let text = match b.get("content") {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(parts)) => parts
            .iter()
            .map(|p| match (kind(p), p.get("text").and_then(Value::as_str)) {
                ("text", Some(t)) => Ok(t),
                (other, _) => Err(unreadable(i, other)),
            })
            .collect::<Result<Vec<_>, _>>()?
            .join("\n"),
        Some(_) => {
            return Err(bad(
                "messages",
                format!("message {i}: a tool_result's `content` is a string or text blocks"),
            ))
        }
    };
    let content = if b.get("is_error") == Some(&Value::Bool(true)) {
        format!("Error: {text}")
    } else {
        text
    };
    Ok(json!({"role": "tool", "tool_call_id": id, "content": content}))
}

/// `tools`: Anthropic's flat `{"name", "description", "input_schema"}` as chat's functions.
fn tools(value: &Value) -> Result<Value, RequestError> {
    let list = value.as_array().ok_or(RequestError::Field {
        field: "tools",
        expected: "a list of {\"name\": …, \"input_schema\": …} tools",
    })?;
    let mut out = Vec::with_capacity(list.len());
    for (j, t) in list.iter().enumerate() {
        match t.get("type").and_then(Value::as_str) {
            None | Some("custom") => {}
            Some(other) => {
                return Err(bad(
                    "tools",
                    format!(
                        "tool {j} has type `{other}`: Anthropic's server tools are not \
                         supported, only your own ({{\"name\", \"input_schema\"}})"
                    ),
                ))
            }
        }
        let name = t.get("name").cloned().unwrap_or(Value::Null);
        let mut f = json!({"name": name});
        if let Some(d) = t.get("description") {
            f["description"] = d.clone();
        }
        if let Some(s) = t.get("input_schema") {
            f["parameters"] = s.clone();
        }
        out.push(json!({"type": "function", "function": f}));
    }
    Ok(Value::Array(out))
}

/// `tool_choice` as chat's, with `parallel_tool_calls` from `disable_parallel_tool_use`.
fn tool_choice(value: &Value) -> Result<(Value, Option<bool>), RequestError> {
    const EXPECTED: &str = "{\"type\": \"auto\"}, {\"type\": \"any\"}, {\"type\": \"tool\", \
                            \"name\": …} or {\"type\": \"none\"}";
    let choice = match (kind(value), value.get("name").and_then(Value::as_str)) {
        ("auto", _) => json!("auto"),
        ("any", _) => json!("required"),
        ("none", _) => json!("none"),
        ("tool", Some(name)) => json!({"type": "function", "function": {"name": name}}),
        _ => {
            return Err(RequestError::Field {
                field: "tool_choice",
                expected: EXPECTED,
            })
        }
    };
    let parallel = value
        .get("disable_parallel_tool_use")
        .and_then(Value::as_bool)
        .map(|d| !d);
    Ok((choice, parallel))
}

/// Anthropic's error `type` for an HTTP status.
pub fn error_type(status: u16) -> &'static str {
    match status {
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        503 | 529 => "overloaded_error",
        400..=499 => "invalid_request_error",
        _ => "api_error",
    }
}

/// Anthropic's error body (also the `error` event of a stream).
pub fn error_body(status: u16, message: &str) -> Value {
    json!({"type": "error", "error": {"type": error_type(status), "message": message}})
}

/// One server-sent event: its `event:` name and its data.
pub type StreamEvent = (&'static str, Value);

/// The content block a stream has open.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Open {
    Text,
    Tool,
}

/// A chat reply (one choice, planned from [`to_chat`]'s request) read as Anthropic's
/// message: [`Message::event`] takes the scheduler's events and gives the stream's events;
/// [`Message::message`] gives the whole object once done.
pub struct Message {
    reply: Reply,
    id: String,
    started: bool,
    /// The open block, and how many blocks were opened so far (the next one's index).
    open: Option<Open>,
    blocks: usize,
    /// The ids of the tool_use blocks opened so far: the whole message gives its calls the
    /// same ids (the chat reply would read the text again with fresh ones).
    call_ids: Vec<String>,
}

impl Message {
    /// A message over a chat reply (its plan has one prompt and one choice).
    pub fn new(reply: Reply) -> Message {
        Message {
            reply,
            id: openai::response_id("msg").replace('-', "_"),
            started: false,
            open: None,
            blocks: 0,
            call_ids: Vec::new(),
        }
    }

    /// The chat reply underneath (for its figures).
    pub fn reply(&self) -> &Reply {
        &self.reply
    }

    /// Whether the reply has ended.
    pub fn is_done(&self) -> bool {
        self.reply.is_done()
    }

    fn prompt_tokens(&self) -> usize {
        self.reply.plan.prompts.iter().map(|p| p.ids.len()).sum()
    }

    /// `usage` as Anthropic counts it: `input_tokens` are the prompt tokens run, those
    /// reused from a slot's cache are `cache_read_input_tokens` (their sum is the prompt,
    /// what `count_tokens` says).
    fn usage(&self, cached: usize) -> Value {
        let generated: usize = self.reply.finished().map(|f| f.generated_tokens).sum();
        json!({
            "input_tokens": self.prompt_tokens().saturating_sub(cached),
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": cached,
            "output_tokens": generated,
        })
    }

    fn cached(&self) -> usize {
        self.reply.finished().map(|f| f.cached_tokens).sum()
    }

    /// `stop_reason` and `stop_sequence` of the ended reply.
    fn stop(&self, made_calls: bool) -> (&'static str, Value) {
        match self.reply.finished().next().map(|f| &f.stop) {
            Some(StopReason::StopString(s)) => ("stop_sequence", json!(s)),
            Some(StopReason::MaxTokens | StopReason::ContextFull) => ("max_tokens", Value::Null),
            _ if made_calls => ("tool_use", Value::Null),
            _ => ("end_turn", Value::Null),
        }
    }

    fn envelope(&self, content: Vec<Value>, stop: Option<(&str, Value)>, usage: Value) -> Value {
        let (reason, sequence) = match stop {
            Some((r, s)) => (json!(r), s),
            None => (Value::Null, Value::Null),
        };
        json!({
            "id": self.id, "type": "message", "role": "assistant", "model": self.reply.model,
            "content": content, "stop_reason": reason, "stop_sequence": sequence,
            "usage": usage,
        })
    }

    /// The whole message: a text block (unless the reply is only calls), then a `tool_use`
    /// block per call.
    pub fn message(&self) -> Value {
        let chat = self.reply.response();
        let m = &chat["choices"][0]["message"];
        let text = m["content"].as_str().unwrap_or("");
        let calls = m["tool_calls"].as_array().cloned().unwrap_or_default();
        let mut content = Vec::new();
        if !text.is_empty() || calls.is_empty() {
            content.push(json!({"type": "text", "text": text}));
        }
        for (j, c) in calls.iter().enumerate() {
            let id = match self.call_ids.get(j) {
                Some(id) => id.clone(),
                None => tool_use_id(c["id"].as_str().unwrap_or("")),
            };
            let args = c["function"]["arguments"].as_str().unwrap_or("{}");
            content.push(json!({
                "type": "tool_use", "id": id,
                "name": c["function"]["name"],
                "input": serde_json::from_str::<Value>(args).unwrap_or_else(|_| json!({})),
            }));
        }
        let stop = self.stop(!calls.is_empty());
        self.envelope(content, Some(stop), self.usage(self.cached()))
    }

    fn close(&mut self, out: &mut Vec<StreamEvent>) {
        if self.open.take().is_some() {
            out.push((
                "content_block_stop",
                json!({"type": "content_block_stop", "index": self.blocks - 1}),
            ));
        }
    }

    fn open(&mut self, block: Open, content_block: Value, out: &mut Vec<StreamEvent>) {
        self.close(out);
        out.push((
            "content_block_start",
            json!({"type": "content_block_start", "index": self.blocks,
                   "content_block": content_block}),
        ));
        self.open = Some(block);
        self.blocks += 1;
    }

    fn delta(&self, delta: Value) -> StreamEvent {
        (
            "content_block_delta",
            json!({"type": "content_block_delta", "index": self.blocks - 1, "delta": delta}),
        )
    }

    /// Takes the reply's next event; gives the stream's events for it (the first one opens
    /// with `message_start`), or the model's error.
    pub fn event(&mut self, event: Event) -> Result<Vec<StreamEvent>, String> {
        let mut out = Vec::new();
        if !self.started {
            self.started = true;
            let cached = match &event {
                Event::Prompt { cached_tokens, .. } => *cached_tokens,
                _ => 0,
            };
            let mut usage = self.usage(cached);
            usage["output_tokens"] = json!(0);
            out.push((
                "message_start",
                json!({"type": "message_start", "message": self.envelope(vec![], None, usage)}),
            ));
        }
        let Some(chunk) = self.reply.event(0, event)? else {
            return Ok(out);
        };
        let choice = &chunk["choices"][0];
        let delta = &choice["delta"];
        if let Some(text) = delta["content"].as_str().filter(|t| !t.is_empty()) {
            if self.open != Some(Open::Text) {
                self.open(Open::Text, json!({"type": "text", "text": ""}), &mut out);
            }
            out.push(self.delta(json!({"type": "text_delta", "text": text})));
        }
        for call in delta["tool_calls"].as_array().into_iter().flatten() {
            if let Some(id) = call["id"].as_str() {
                self.call_ids.push(tool_use_id(id));
                let block = json!({"type": "tool_use", "id": tool_use_id(id),
                                   "name": call["function"]["name"], "input": {}});
                self.open(Open::Tool, block, &mut out);
            }
            if let Some(args) = call["function"]["arguments"]
                .as_str()
                .filter(|a| !a.is_empty())
            {
                out.push(self.delta(json!({"type": "input_json_delta", "partial_json": args})));
            }
        }
        if let Some(reason) = choice["finish_reason"].as_str() {
            if self.blocks == 0 {
                // An empty reply is an empty text block, as the whole message has it.
                self.open(Open::Text, json!({"type": "text", "text": ""}), &mut out);
            }
            self.close(&mut out);
            let (stop_reason, sequence) = self.stop(reason == "tool_calls");
            let usage = self.usage(self.cached());
            out.push((
                "message_delta",
                json!({"type": "message_delta",
                       "delta": {"stop_reason": stop_reason, "stop_sequence": sequence},
                       "usage": usage}),
            ));
            out.push(("message_stop", json!({"type": "message_stop"})));
        }
        Ok(out)
    }
}

/// A chat call id (`call_…`) as Anthropic's tool_use ids look (`toolu_…`); a client sends
/// it back as it is, and any id reads back the same.
fn tool_use_id(call_id: &str) -> String {
    match call_id.strip_prefix("call_") {
        Some(rest) => format!("toolu_{rest}"),
        None => call_id.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chat(body: Value) -> Value {
        to_chat(&body, Endpoint::Messages).unwrap()
    }

    #[test]
    fn system_blocks_and_stop_sequences_become_chat_fields() {
        let c = chat(json!({
            "model": "m", "max_tokens": 5, "stop_sequences": ["END"], "top_k": 3,
            "system": [{"type": "text", "text": "Be brief."}, {"type": "text", "text": "Rhyme."}],
            "messages": [{"role": "user", "content": [{"type": "text", "text": "Hi"}]}],
            "metadata": {"user_id": "u"}, "thinking": {"type": "enabled", "budget_tokens": 9},
        }));
        assert_eq!(c["stop"], json!(["END"]));
        assert_eq!(c["max_tokens"], 5);
        assert_eq!(c["top_k"], 3);
        assert!(c.get("thinking").is_none());
        assert_eq!(
            c["messages"],
            json!([{"role": "system", "content": "Be brief.\nRhyme."},
                   {"role": "user", "content": [{"type": "text", "text": "Hi"}]}])
        );
        // The chat parser takes the translation as it is.
        super::super::Request::from_value(&c).unwrap();
    }

    #[test]
    fn tool_use_and_tool_result_become_calls_and_tool_messages() {
        let c = chat(json!({"max_tokens": 5, "messages": [
            {"role": "user", "content": "Weather?"},
            {"role": "assistant", "content": [
                {"type": "thinking", "thinking": "hm", "signature": "x"},
                {"type": "tool_use", "id": "t1", "name": "w", "input": {"city": "Rome"}}]},
            {"role": "user", "content": [
                {"type": "text", "text": "Here:"},
                {"type": "tool_result", "tool_use_id": "t1", "is_error": true,
                 "content": [{"type": "text", "text": "no such city"}]}]},
        ]}));
        let m = c["messages"].as_array().unwrap();
        assert_eq!(m.len(), 4);
        assert_eq!(m[1]["content"], Value::Null);
        assert_eq!(m[1]["tool_calls"][0]["id"], "t1");
        let args: Value = serde_json::from_str(
            m[1]["tool_calls"][0]["function"]["arguments"]
                .as_str()
                .unwrap(),
        )
        .unwrap();
        assert_eq!(args, json!({"city": "Rome"}));
        // The result answers the call right after it; the user's text follows.
        assert_eq!(
            m[2],
            json!({"role": "tool", "tool_call_id": "t1", "content": "Error: no such city"})
        );
        assert_eq!(m[3]["role"], "user");
        super::super::Request::from_value(&c).unwrap();
    }

    #[test]
    fn tools_and_tool_choice_map_onto_functions() {
        let c = chat(
            json!({"max_tokens": 5, "messages": [{"role": "user", "content": "x"}],
            "tools": [{"name": "w", "description": "d", "input_schema": {"type": "object"}}],
            "tool_choice": {"type": "tool", "name": "w", "disable_parallel_tool_use": true}}),
        );
        assert_eq!(
            c["tools"],
            json!([{"type": "function",
                    "function": {"name": "w", "description": "d",
                                 "parameters": {"type": "object"}}}])
        );
        assert_eq!(
            c["tool_choice"],
            json!({"type": "function", "function": {"name": "w"}})
        );
        assert_eq!(c["parallel_tool_calls"], false);
        for (choice, chat_choice) in [
            ("any", json!("required")),
            ("auto", json!("auto")),
            ("none", json!("none")),
        ] {
            let c = chat(json!({"max_tokens": 1, "messages": [],
                                "tool_choice": {"type": choice}}));
            assert_eq!(c["tool_choice"], chat_choice);
        }
    }

    #[test]
    fn refusals_name_the_field() {
        let field_str = |body: Value, endpoint| {
            to_chat(&body, endpoint)
                .unwrap_err()
                .field()
                .map(str::to_owned)
        };
        let msgs = json!([{"role": "user", "content": "x"}]);
        // max_tokens: required to generate, not to count.
        assert_eq!(
            field_str(json!({"messages": msgs}), Endpoint::Messages),
            Some("max_tokens".to_string())
        );
        assert!(to_chat(&json!({"messages": msgs}), Endpoint::CountTokens).is_ok());
        assert_eq!(
            field_str(
                json!({"max_tokens": 0, "messages": msgs}),
                Endpoint::Messages
            ),
            Some("max_tokens".to_string())
        );
        let image = json!([{"role": "user", "content": [
            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": ""}}]}]);
        let e = to_chat(
            &json!({"max_tokens": 1, "messages": image}),
            Endpoint::Messages,
        )
        .unwrap_err();
        assert!(
            e.to_string().contains("image input is not supported"),
            "{e}"
        );
        assert_eq!(
            field_str(
                json!({"max_tokens": 1, "messages": msgs, "stop": ["a"]}),
                Endpoint::Messages
            ),
            Some("stop".to_string())
        );
        assert_eq!(
            field_str(
                json!({"max_tokens": 1, "messages": [{"role": "system", "content": "x"}]}),
                Endpoint::Messages
            ),
            Some("messages".to_string())
        );
        assert_eq!(
            field_str(
                json!({"max_tokens": 1, "messages": msgs,
                         "tools": [{"type": "web_search_20250305", "name": "web_search"}]}),
                Endpoint::Messages
            ),
            Some("tools".to_string())
        );
        assert_eq!(
            field_str(
                json!({"max_tokens": 1, "messages": msgs, "tool_choice": {"type": "tool"}}),
                Endpoint::Messages
            ),
            Some("tool_choice".to_string())
        );
    }

    #[test]
    fn output_config_format_is_a_json_schema_response_format() {
        let c = chat(
            json!({"max_tokens": 5, "messages": [{"role": "user", "content": "x"}],
            "cache_control": {"type": "ephemeral"},
            "output_config": {"effort": "low",
                              "format": {"type": "json_schema", "schema": {"type": "object"}}}}),
        );
        assert_eq!(c["response_format"]["type"], "json_schema");
        assert_eq!(
            c["response_format"]["json_schema"]["schema"],
            json!({"type": "object"})
        );
        assert!(c.get("cache_control").is_none());
        super::super::Request::from_value(&c).unwrap();
    }

    /// A reply to a one-prompt chat plan over the demo tokenizer, with `tools` if given.
    #[cfg(feature = "demo")]
    fn message(tools: Option<super::super::tools::Tools>) -> Message {
        let model = crate::Model::demo().unwrap();
        let plan = openai::Plan {
            prompts: vec![openai::PromptIds {
                ids: vec![1, 2, 3, 4],
                text: String::new(),
                truncated: false,
            }],
            n: 1,
            logprobs: None,
            echo: false,
            seed: 0,
            include_usage: false,
            tools,
        };
        let tokenizer = model.shared_tokenizer();
        Message::new(Reply::new(tokenizer, openai::Endpoint::Chat, "m", 64, plan))
    }

    #[cfg(feature = "demo")]
    fn done(stop: StopReason, generated_tokens: usize) -> Event {
        Event::Done(super::super::Finished {
            stop,
            tail: String::new(),
            prompt_tokens: 4,
            cached_tokens: 3,
            generated_tokens,
            queued: Default::default(),
            time_to_first_token: Default::default(),
            total: Default::default(),
            seed: 0,
            slot: Some(0),
            context_shifts: 0,
        })
    }

    #[cfg(feature = "demo")]
    fn token(text: &str) -> Event {
        Event::Token {
            id: 5,
            text: text.to_string(),
            logprob: None,
        }
    }

    #[cfg(feature = "demo")]
    fn prompt() -> Event {
        Event::Prompt {
            slot: 0,
            cached_tokens: 3,
            logprobs: None,
        }
    }

    #[cfg(feature = "demo")]
    #[test]
    fn a_streamed_text_reply_is_one_text_block_and_its_stop_sequence() {
        let mut m = message(None);
        let mut events = Vec::new();
        for e in [
            prompt(),
            token("Good"),
            token(" morrow"),
            done(StopReason::StopString("!".into()), 2),
        ] {
            events.extend(m.event(e).unwrap());
        }
        let names: Vec<&str> = events.iter().map(|(n, _)| *n).collect();
        assert_eq!(
            names,
            [
                "message_start",
                "content_block_start",
                "content_block_delta",
                "content_block_delta",
                "content_block_stop",
                "message_delta",
                "message_stop"
            ]
        );
        // Each event's data says its own name.
        assert!(events.iter().all(|(n, d)| d["type"] == *n));
        assert_eq!(events[0].1["message"]["usage"]["input_tokens"], 1);
        assert_eq!(
            events[0].1["message"]["usage"]["cache_read_input_tokens"],
            3
        );
        assert_eq!(
            events[3].1["delta"],
            json!({"type": "text_delta", "text": " morrow"})
        );
        assert_eq!(events[5].1["delta"]["stop_reason"], "stop_sequence");
        assert_eq!(events[5].1["delta"]["stop_sequence"], "!");
        assert_eq!(events[5].1["usage"]["output_tokens"], 2);
        let whole = m.message();
        assert_eq!(
            whole["content"],
            json!([{"type": "text", "text": "Good morrow"}])
        );
        assert_eq!(whole["stop_reason"], "stop_sequence");
        assert_eq!(whole["usage"]["input_tokens"], 1);
        assert!(whole.get("timings").is_none());
    }

    #[cfg(feature = "demo")]
    #[test]
    fn a_reply_that_is_a_call_streams_a_tool_use_block() {
        let defs = json!([{"type": "function", "function": {"name": "w",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]);
        let tools = super::super::tools::Tools::new(&defs, None, true).unwrap();
        let mut m = message(Some(tools));
        let mut events = Vec::new();
        for piece in [
            "{\"name\": \"w\", ",
            "\"parameters\": {\"city\"",
            ": \"Rome\"}}",
        ] {
            events.extend(m.event(token(piece)).unwrap());
        }
        events.extend(m.event(done(StopReason::EndOfGeneration(2), 3)).unwrap());
        let start = events
            .iter()
            .find(|(n, _)| *n == "content_block_start")
            .unwrap();
        assert_eq!(start.1["index"], 0);
        assert_eq!(start.1["content_block"]["type"], "tool_use");
        assert_eq!(start.1["content_block"]["name"], "w");
        let json: String = events
            .iter()
            .filter(|(n, _)| *n == "content_block_delta")
            .map(|(_, d)| {
                assert_eq!(d["delta"]["type"], "input_json_delta");
                d["delta"]["partial_json"].as_str().unwrap().to_string()
            })
            .collect();
        assert_eq!(
            serde_json::from_str::<Value>(&json).unwrap(),
            json!({"city": "Rome"})
        );
        let delta = events.iter().find(|(n, _)| *n == "message_delta").unwrap();
        assert_eq!(delta.1["delta"]["stop_reason"], "tool_use");
        let whole = m.message();
        assert_eq!(whole["stop_reason"], "tool_use");
        let content = whole["content"].as_array().unwrap();
        assert_eq!(content.len(), 1);
        assert_eq!(content[0]["input"], json!({"city": "Rome"}));
        assert_eq!(content[0]["id"], start.1["content_block"]["id"]);
    }

    #[cfg(feature = "demo")]
    #[test]
    fn an_empty_reply_is_an_empty_text_block_cut_by_max_tokens() {
        let mut m = message(None);
        let events = m.event(done(StopReason::MaxTokens, 0)).unwrap();
        let names: Vec<&str> = events.iter().map(|(n, _)| *n).collect();
        assert_eq!(
            names,
            [
                "message_start",
                "content_block_start",
                "content_block_stop",
                "message_delta",
                "message_stop"
            ]
        );
        assert_eq!(
            m.message()["content"],
            json!([{"type": "text", "text": ""}])
        );
        assert_eq!(m.message()["stop_reason"], "max_tokens");
    }

    #[test]
    fn errors_have_anthropics_shape() {
        assert_eq!(
            error_body(400, "bad"),
            json!({"type": "error", "error": {"type": "invalid_request_error", "message": "bad"}})
        );
        assert_eq!(error_type(503), "overloaded_error");
        assert_eq!(error_type(500), "api_error");
        assert_eq!(tool_use_id("call_abc"), "toolu_abc");
    }
}
