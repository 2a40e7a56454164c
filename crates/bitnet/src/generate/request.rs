//! One completion request as both `bitnet batch` (a JSONL line) and `bitnet serve` (an HTTP
//! body) read it, so the two accept the same fields with the same types: OpenAI's names
//! (`prompt`, `messages`, `max_tokens`, `temperature`, `top_p`, `presence_penalty`,
//! `frequency_penalty`, `seed`, `stop` as a string or a list, `stream`) plus llama.cpp server's
//! (`top_k`, `min_p`, `repeat_penalty`, `repeat_last_n`, `n_predict`, `ignore_eos`, `n_keep`,
//! `json_schema`).
//!
//! Every field either works as OpenAI's API reference or llama-server's README describes it,
//! or is refused with an error naming it: a request is never answered as if a field had been
//! honoured when it was not. Fields that change nothing observable here are accepted (`model`,
//! `user`, `metadata`, `store: false`, llama-server's `cache_prompt`, a sampler's parameters
//! while that sampler is off, …); fields asking for what this engine does not do are refused
//! (`grammar`, `suffix`, `functions`, `mirostat: 2`, `audio`, …), and so is any field neither
//! API documents (OpenAI refuses those too), which catches misspellings. The table is
//! `other_field` below.
//!
//! Fields are read one by one from the JSON object rather than through a derived
//! `Deserialize`, so that every error names the field and says what it must be.
//!
//! The OpenAI fields clients send beyond those: `prompt` as a list of strings, a list of token
//! ids or a list of such lists; `messages[].content` as a list of text parts; assistant
//! messages with `content: null` and `tool_calls`; `n`, `logprobs` (a boolean for chat, a count
//! for completions), `top_logprobs`, `echo`, `logit_bias`, `stream_options`,
//! `response_format` and `tools`.

use serde_json::{Map, Value};

use super::sampler::{random_seed, SamplerConfig, SamplerError};
use super::tools::{ToolChoice, Tools};
use crate::tokenizer::ChatMessage;

/// Why a request was refused.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    /// The bytes are not UTF-8.
    #[error("not valid UTF-8 (byte {at})")]
    InvalidUtf8 {
        /// The offset of the first bad byte.
        at: usize,
    },
    /// The text is not JSON.
    #[error("invalid JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// The JSON is not an object.
    #[error("a request must be a JSON object")]
    NotAnObject,
    /// A field of the wrong type or out of range.
    #[error("`{field}` must be {expected}")]
    Field {
        /// The field.
        field: &'static str,
        /// What it must be, in words.
        expected: &'static str,
    },
    /// A sampling value out of range.
    #[error(transparent)]
    Sampler(#[from] SamplerError),
    /// Neither or both of `prompt` and `messages`.
    #[error("a request needs exactly one of `prompt` and `messages`")]
    PromptOrMessages,
    /// A well-formed value this engine cannot serve (an image part, say).
    #[error("`{field}`: {message}")]
    Unsupported {
        /// The field.
        field: &'static str,
        /// What cannot be served, and why.
        message: String,
    },
    /// A field neither OpenAI's API nor llama-server's documents.
    #[error(
        "unknown field `{0}`: neither OpenAI's API nor llama-server documents it (a misspelling?)"
    )]
    UnknownField(String),
    /// The chat template refused the conversation (a template may raise an exception).
    #[error("`messages`: {0}")]
    Template(crate::tokenizer::TokenizerError),
    /// The prompt does not fit in a slot's context. The wording is llama-server's, which
    /// clients match to trim their conversations.
    #[error(
        "request ({n_prompt_tokens} tokens) exceeds the available context size ({n_ctx} \
         tokens), try increasing it"
    )]
    ExceedsContext {
        /// The field holding the prompt (`prompt` or `messages`).
        field: &'static str,
        /// Tokens in the prompt.
        n_prompt_tokens: usize,
        /// Tokens a slot's context holds.
        n_ctx: usize,
    },
}

impl RequestError {
    /// The request field the error is about, if one (OpenAI's `param`).
    pub fn field(&self) -> Option<&str> {
        match self {
            RequestError::Field { field, .. }
            | RequestError::Unsupported { field, .. }
            | RequestError::ExceedsContext { field, .. } => Some(field),
            RequestError::UnknownField(field) => Some(field),
            RequestError::Sampler(e) => Some(e.param.field()),
            RequestError::Template(_) => Some("messages"),
            _ => None,
        }
    }
}

/// One prompt of a completion request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Prompt {
    /// Text (BOS added when the model asks for it).
    Text(String),
    /// Token ids, run as given.
    Tokens(Vec<u32>),
    /// llama-server's mixed prompt (its dialect only): token ids and texts in one list, run
    /// as one prompt, each text tokenized where it stands (BOS only before a leading text).
    Mixed(Vec<PromptPart>),
}

/// One piece of a [`Prompt::Mixed`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PromptPart {
    /// A token id.
    Token(u32),
    /// Text, tokenized in place.
    Text(String),
}

impl Prompt {
    /// The prompt's tokens: text with `encode` (given whether it starts the prompt), ids as
    /// they are.
    pub fn ids(&self, mut encode: impl FnMut(&str, bool) -> Vec<u32>) -> Vec<u32> {
        match self {
            Prompt::Text(t) => encode(t, true),
            Prompt::Tokens(ids) => ids.clone(),
            Prompt::Mixed(parts) => {
                let mut ids = Vec::new();
                for (i, part) in parts.iter().enumerate() {
                    match part {
                        PromptPart::Token(t) => ids.push(*t),
                        PromptPart::Text(t) => ids.extend(encode(t, i == 0)),
                    }
                }
                ids
            }
        }
    }
}

/// What the request asks the model to continue.
#[derive(Clone, Debug, PartialEq)]
pub enum Input {
    /// One or more prompts (OpenAI's completions answer each with its own choices).
    Prompts(Vec<Prompt>),
    /// A conversation, rendered through the model's chat template.
    Messages(Vec<ChatMessage>),
}

/// `logprobs`: chat completions ask with `true` (and `top_logprobs: k`), completions with
/// the number of alternatives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogprobsRequest {
    /// Chat completions' `logprobs: true/false`.
    Flag(bool),
    /// Completions' `logprobs: k` (k alternatives per token).
    Count(usize),
}

/// `response_format`.
#[derive(Clone, Debug, PartialEq)]
pub enum ResponseFormat {
    /// Free text (the default).
    Text,
    /// Any JSON object.
    JsonObject,
    /// JSON valid against this schema.
    JsonSchema(Value),
    /// llama-server's `grammar`: output matching this GBNF grammar.
    Grammar(String),
}

/// Whose conventions a request body follows where OpenAI's API and llama-server's native
/// `/completion` differ. The fields and their checks are otherwise the same: one parser,
/// two dialects.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Dialect {
    /// OpenAI's: `temperature` from 0 to 2, `logit_bias` as an object, `n_probs` and
    /// `return_tokens` refused (ask with `logprobs`).
    #[default]
    OpenAi,
    /// llama-server's `/completion`: any `temperature` (≤ 0 is greedy), `logit_bias` also as
    /// a list of `[token id, bias or false]` pairs (false bans the token), `n_probs: k` asks
    /// for k alternatives per token (as `logprobs: k` does), `return_tokens` asks for the
    /// generated ids.
    LlamaServer,
}

/// Most choices (`n`) or alternatives (`top_logprobs`) one request may ask for.
pub(crate) const MAX_CHOICES: usize = 16;
pub(crate) const MAX_TOP_LOGPROBS: usize = 20;

/// A parsed request. Sampling fields left out take the caller's defaults (see
/// [`Request::sampler_config`]).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Request {
    /// Echoed back by `batch` (any JSON value).
    pub id: Option<Value>,
    /// `prompt`: text, a list of texts, token ids, or a list of token-id lists.
    pub prompt: Option<Vec<Prompt>>,
    /// `messages`: a conversation for the chat template.
    pub messages: Option<Vec<ChatMessage>>,
    /// `max_completion_tokens`, `max_tokens` or `n_predict` (first found); -1 in `n_predict`
    /// means no limit, as in llama.cpp, and is kept as `Some(None)`.
    pub max_tokens: Option<Option<usize>>,
    /// `temperature` (≤ 0: greedy).
    pub temperature: Option<f32>,
    /// `top_k` (0: off).
    pub top_k: Option<usize>,
    /// `top_p` (1: off).
    pub top_p: Option<f32>,
    /// `min_p` (0: off).
    pub min_p: Option<f32>,
    /// `repeat_penalty` (1: off).
    pub repeat_penalty: Option<f32>,
    /// `repeat_last_n`: tokens the penalties look back over.
    pub repeat_last_n: Option<usize>,
    /// `presence_penalty` (0: off).
    pub presence_penalty: Option<f32>,
    /// `frequency_penalty` (0: off).
    pub frequency_penalty: Option<f32>,
    /// `-1` asks for a random seed (llama.cpp's convention) and is resolved when parsed.
    pub seed: Option<u64>,
    /// `stop`: strings that end the output (a string or a list).
    pub stop: Vec<String>,
    /// `stream`: answer with server-sent events.
    pub stream: bool,
    /// Choices per prompt.
    pub n: usize,
    /// `logprobs`.
    pub logprobs: Option<LogprobsRequest>,
    /// `top_logprobs`: alternatives per token (chat completions).
    pub top_logprobs: Option<usize>,
    /// Completions: the prompt is part of the returned text (and of its logprobs).
    pub echo: bool,
    /// `(token id, bias)`: added to the token's logit before sampling, -100..=100.
    pub logit_bias: Vec<(u32, f32)>,
    /// llama-server's text keys of `logit_bias` (its dialect only): every token of the text,
    /// tokenized without BOS, gets the bias. See [`Request::token_logit_bias`].
    pub logit_bias_text: Vec<(String, f32)>,
    /// `stream_options.include_usage`: a last chunk with the token counts.
    pub include_usage: bool,
    /// `response_format`, or llama-server's `json_schema` (the same as a `json_schema`
    /// response format).
    pub response_format: Option<ResponseFormat>,
    /// OpenAI's `tools` (function definitions) with `tool_choice` and `parallel_tool_calls`,
    /// when given, not empty and not `tool_choice: "none"`.
    pub tools: Option<Tools>,
    /// llama-server's `ignore_eos`: generation goes on past the end-of-generation token.
    pub ignore_eos: bool,
    /// llama-server's `n_keep`: prompt tokens a context shift keeps (-1: all of them); `None`
    /// takes the server's `--keep`.
    pub n_keep: Option<i64>,
    /// llama-server's `return_tokens` ([`Dialect::LlamaServer`]): the response lists the
    /// generated token ids.
    pub return_tokens: bool,
    /// llama-server's `post_sampling_probs` ([`Dialect::LlamaServer`]): the alternatives'
    /// probabilities after the sampler chain (top-k, top-p, min-p, temperature; greedy: 1 for
    /// the pick), not the model's.
    pub post_sampling_probs: bool,
    /// llama-server's `response_fields` ([`Dialect::LlamaServer`]): the response keeps only
    /// these fields, nested ones named by their path (`generation_settings/n_predict`).
    pub response_fields: Vec<String>,
    /// llama-server's `id_slot`: run on this slot (waiting for it if busy); `None` (or -1)
    /// lets the scheduler pick.
    pub id_slot: Option<usize>,
    /// `add_generation_prompt` (chat): whether the rendered conversation ends with the
    /// assistant's turn opened; `None` is the default, true. With false the model continues
    /// the conversation as the template leaves it (llama-server and vLLM read it so).
    pub add_generation_prompt: Option<bool>,
    /// llama-server's `return_progress`: a stream reports the prompt's progress
    /// (`prompt_progress` chunks) before the first token.
    pub return_progress: bool,
}

fn field_error(field: &'static str, expected: &'static str) -> RequestError {
    RequestError::Field { field, expected }
}

/// Reads an optional field with `get`, which returns `None` for a value of the wrong type.
fn opt<T>(
    obj: &Map<String, Value>,
    field: &'static str,
    expected: &'static str,
    get: impl Fn(&Value) -> Option<T>,
) -> Result<Option<T>, RequestError> {
    match obj.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => get(v).map(Some).ok_or(field_error(field, expected)),
    }
}

fn number(v: &Value) -> Option<f32> {
    v.as_f64().map(|x| x as f32)
}

fn count(v: &Value) -> Option<usize> {
    v.as_u64().and_then(|x| usize::try_from(x).ok())
}

/// llama-server's mixed prompt: one list of token ids and texts, with at least one of each.
fn mixed_prompt(v: &Value) -> Option<Vec<Prompt>> {
    let a = v.as_array()?;
    if !a.iter().any(Value::is_number) || !a.iter().any(Value::is_string) {
        return None;
    }
    a.iter()
        .map(|p| match p {
            Value::String(s) => Some(PromptPart::Text(s.clone())),
            t => t
                .as_u64()
                .and_then(|t| u32::try_from(t).ok())
                .map(PromptPart::Token),
        })
        .collect::<Option<Vec<_>>>()
        .map(|parts| vec![Prompt::Mixed(parts)])
}

/// One of llama-server's prompts: a string, `{"prompt_string": …}` (its multimodal form,
/// without media: this model reads text only), token ids, or one list mixing ids and strings.
fn llama_prompt(v: &Value) -> Option<Prompt> {
    match v {
        Value::String(s) => Some(Prompt::Text(s.clone())),
        Value::Object(o) => {
            let media = o.get("multimodal_data").is_some_and(|m| !is_empty(m));
            let known = o
                .keys()
                .all(|k| k == "prompt_string" || k == "multimodal_data");
            match o.get("prompt_string") {
                Some(Value::String(s)) if known && !media => Some(Prompt::Text(s.clone())),
                _ => None,
            }
        }
        Value::Array(a) if !a.is_empty() && a.iter().all(Value::is_number) => a
            .iter()
            .map(|t| t.as_u64().and_then(|t| u32::try_from(t).ok()))
            .collect::<Option<Vec<_>>>()
            .map(Prompt::Tokens),
        Value::Array(_) => mixed_prompt(v).and_then(|mut p| p.pop()),
        _ => None,
    }
}

/// llama-server's `prompt` (and `/embeddings`' `input`): one prompt as `llama_prompt`
/// reads it, or a list of them (a list of strings is several prompts; a list of ids, or of
/// ids and strings, is one).
pub fn llama_prompts(v: &Value) -> Option<Vec<Prompt>> {
    match v {
        Value::Array(a) if a.iter().any(|p| p.is_array() || p.is_object()) => {
            a.iter().map(llama_prompt).collect()
        }
        Value::Array(a) if a.iter().all(Value::is_string) => a.iter().map(llama_prompt).collect(),
        v => llama_prompt(v).map(|p| vec![p]),
    }
}

/// Whether a prompt object asks for images or audio (which a text model refuses).
fn has_media(v: &Value) -> bool {
    match v {
        Value::Object(o) => o.get("multimodal_data").is_some_and(|m| !is_empty(m)),
        Value::Array(a) => a.iter().any(has_media),
        _ => false,
    }
}

/// `prompt`: a string, a list of strings, a list of token ids, or a list of such lists.
fn prompts(v: &Value) -> Option<Vec<Prompt>> {
    let tokens = |a: &[Value]| -> Option<Vec<u32>> {
        a.iter()
            .map(|t| t.as_u64().and_then(|t| u32::try_from(t).ok()))
            .collect()
    };
    match v {
        Value::String(s) => Some(vec![Prompt::Text(s.clone())]),
        Value::Array(a) if !a.is_empty() && a.iter().all(Value::is_number) => {
            tokens(a).map(|t| vec![Prompt::Tokens(t)])
        }
        Value::Array(a) => a
            .iter()
            .map(|p| match p {
                Value::String(s) => Some(Prompt::Text(s.clone())),
                Value::Array(t) => tokens(t).map(Prompt::Tokens),
                _ => None,
            })
            .collect(),
        _ => None,
    }
}

/// `messages`: objects with a `role` and a `content` that is a string, a list of text parts
/// (joined with newlines), or null for an assistant message that only calls tools. The roles
/// are OpenAI's: `system`, `user`, `assistant`, `tool`, and `developer`, which OpenAI's own
/// models read as `system` and so does this.
fn messages(v: &Value) -> Result<Vec<ChatMessage>, RequestError> {
    const EXPECTED: &str = "a list of {\"role\": …, \"content\": …} objects";
    let list = v.as_array().ok_or(field_error("messages", EXPECTED))?;
    let mut out = Vec::with_capacity(list.len());
    for (i, m) in list.iter().enumerate() {
        let m = m.as_object().ok_or(field_error("messages", EXPECTED))?;
        let role = m
            .get("role")
            .and_then(Value::as_str)
            .ok_or(field_error("messages", EXPECTED))?;
        let role = match role {
            "system" | "user" | "assistant" | "tool" => role,
            "developer" => "system",
            other => {
                return Err(RequestError::Unsupported {
                    field: "messages",
                    message: format!(
                        "message {i} has role `{other}`: a role is one of system, developer, \
                         user, assistant, tool"
                    ),
                })
            }
        };
        let tool_calls = m.get("tool_calls").filter(|v| !v.is_null()).cloned();
        if let Some(calls) = &tool_calls {
            check_tool_calls(i, calls)?;
        }
        let content = match m.get("content") {
            Some(Value::String(s)) => s.clone(),
            None | Some(Value::Null) if role == "assistant" || tool_calls.is_some() => {
                String::new()
            }
            Some(Value::Array(parts)) => {
                let mut texts = Vec::with_capacity(parts.len());
                for part in parts {
                    let kind = part.get("type").and_then(Value::as_str);
                    match (kind, part.get("text").and_then(Value::as_str)) {
                        (Some("text"), Some(t)) => texts.push(t),
                        (
                            Some(kind @ ("image_url" | "input_image" | "input_audio" | "file")),
                            _,
                        ) => {
                            return Err(RequestError::Unsupported {
                                field: "messages",
                                message: format!(
                                    "content parts of type `{kind}` are not supported: this \
                                     model reads text only"
                                ),
                            })
                        }
                        _ => {
                            return Err(field_error(
                                "messages",
                                "content parts like {\"type\": \"text\", \"text\": …}",
                            ))
                        }
                    }
                }
                texts.join("\n")
            }
            _ => return Err(field_error("messages", EXPECTED)),
        };
        out.push(ChatMessage {
            role: role.to_string(),
            content,
            tool_calls,
            tool_call_id: m
                .get("tool_call_id")
                .and_then(Value::as_str)
                .map(str::to_string),
        });
    }
    // Two assistant turns in a row at the end are a client's bookkeeping error (a reply
    // appended twice); llama-server refuses them, and so do we rather than render both.
    if out.len() >= 2 && out[out.len() - 2..].iter().all(|m| m.role == "assistant") {
        return Err(field_error(
            "messages",
            "a conversation that does not end with two assistant messages in a row",
        ));
    }
    Ok(out)
}

/// An assistant message's `tool_calls`: a list of `{"id", "type": "function", "function":
/// {"name", "arguments"}}` with the arguments a JSON text, as OpenAI sends them back. A
/// malformed call would otherwise reach the chat template and render as something the model
/// never wrote.
fn check_tool_calls(i: usize, calls: &Value) -> Result<(), RequestError> {
    let bad = |why: &str| RequestError::Unsupported {
        field: "messages",
        message: format!("message {i}: `tool_calls` {why}"),
    };
    let list = calls.as_array().ok_or_else(|| bad("must be a list"))?;
    for (j, call) in list.iter().enumerate() {
        let f = call.get("function");
        let name = f.and_then(|f| f.get("name")).and_then(Value::as_str);
        let args = f.and_then(|f| f.get("arguments")).and_then(Value::as_str);
        if call.get("type").is_some_and(|t| t != "function") {
            return Err(bad(&format!("entry {j} must have type \"function\"")));
        }
        match (name, args) {
            (Some(n), Some(a)) if !n.is_empty() => {
                if serde_json::from_str::<Value>(a).is_err() {
                    return Err(bad(&format!(
                        "entry {j}: `function.arguments` must be a JSON text"
                    )));
                }
            }
            _ => {
                return Err(bad(&format!(
                    "entry {j} must be {{\"id\": …, \"type\": \"function\", \"function\": \
                     {{\"name\": …, \"arguments\": \"{{…}}\"}}}}"
                )))
            }
        }
    }
    Ok(())
}

fn logit_bias_object(v: &Value) -> Option<Vec<(u32, f32)>> {
    v.as_object()?
        .iter()
        .map(|(k, b)| {
            let id: u32 = k.parse().ok()?;
            let b = b.as_f64().filter(|b| (-100.0..=100.0).contains(b))?;
            Some((id, b as f32))
        })
        .collect()
}

/// A `logit_bias` key in llama-server's dialect: a token id, or a text whose tokens all get
/// the bias.
enum BiasKey {
    Id(u32),
    Text(String),
}

/// A bias value in llama-server's dialect: a number from -100 to 100, or `false`, which bans
/// the token (as OpenAI's -100 does).
fn llama_bias(b: &Value) -> Option<f32> {
    match b {
        Value::Bool(false) => Some(-100.0),
        b => b
            .as_f64()
            .filter(|b| (-100.0..=100.0).contains(b))
            .map(|b| b as f32),
    }
}

/// llama-server's `logit_bias`: `[[id or text, bias], …]` or `{"id or text": bias}`.
fn llama_logit_bias(v: &Value) -> Option<Vec<(BiasKey, f32)>> {
    let key = |k: &str| match k.parse::<u32>() {
        Ok(id) => BiasKey::Id(id),
        Err(_) => BiasKey::Text(k.to_string()),
    };
    match v {
        Value::Object(o) => o
            .iter()
            .map(|(k, b)| Some((key(k), llama_bias(b)?)))
            .collect(),
        Value::Array(a) => a
            .iter()
            .map(|pair| match pair.as_array()?.as_slice() {
                [Value::String(text), bias] => {
                    Some((BiasKey::Text(text.clone()), llama_bias(bias)?))
                }
                [id, bias] => Some((
                    BiasKey::Id(u32::try_from(id.as_u64()?).ok()?),
                    llama_bias(bias)?,
                )),
                _ => None,
            })
            .collect(),
        _ => None,
    }
}

/// The fields [`Request::from_value`] reads itself.
const READ: &[&str] = &[
    "id",
    "prompt",
    "messages",
    "max_completion_tokens",
    "max_tokens",
    "n_predict",
    "seed",
    "stop",
    "temperature",
    "top_k",
    "top_p",
    "min_p",
    "repeat_penalty",
    "repeat_last_n",
    "presence_penalty",
    "frequency_penalty",
    "stream",
    "n",
    "best_of",
    "logprobs",
    "top_logprobs",
    "echo",
    "suffix",
    "logit_bias",
    "stream_options",
    "response_format",
    "json_schema",
    "grammar",
    "tools",
    "tool_choice",
    "parallel_tool_calls",
    "ignore_eos",
    "n_keep",
    "id_slot",
    "add_generation_prompt",
    "return_progress",
];

/// How a field beyond those read into [`Request`] is met.
enum Rule {
    /// Accepted when of the right type; it changes nothing observable here.
    Harmless(fn(&Value) -> bool, &'static str),
    /// Accepted only at the value that asks for nothing (a sampler's "off"); anything else is
    /// refused with the message.
    OffOnly(fn(&Value) -> bool, &'static str),
    /// Refused whatever its value (but null).
    Refused(&'static str),
}

fn is_number(v: &Value) -> bool {
    v.is_number()
}

fn is_string(v: &Value) -> bool {
    v.is_string()
}

fn is_bool(v: &Value) -> bool {
    v.is_boolean()
}

fn is_empty(v: &Value) -> bool {
    match v {
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
        Value::String(s) => s.is_empty(),
        _ => false,
    }
}

/// The fields of OpenAI's completions and chat completions and of llama-server's completion
/// requests that [`Request`] does not carry, and what happens to each; `None` for a field
/// neither documents.
fn other_field(key: &str) -> Option<(&'static str, Rule)> {
    use Rule::*;
    const SAMPLER_OFF: &str = "this sampler is not implemented here: only its \"off\" value \
                               is accepted";
    let rule = match key {
        // OpenAI: accepted, changing nothing observable (this server serves one model).
        "model" => ("model", Harmless(is_string, "a string")),
        "user" => ("user", Harmless(is_string, "a string")),
        "safety_identifier" => ("safety_identifier", Harmless(is_string, "a string")),
        "prompt_cache_key" => ("prompt_cache_key", Harmless(is_string, "a string")),
        "metadata" => ("metadata", Harmless(Value::is_object, "an object")),
        "service_tier" => (
            "service_tier",
            Harmless(
                |v| {
                    matches!(
                        v.as_str(),
                        Some("auto" | "default" | "flex" | "scale" | "priority")
                    )
                },
                "one of \"auto\", \"default\", \"flex\", \"scale\", \"priority\"",
            ),
        ),
        // Predicted output only makes a response faster; the text is the same without it.
        "prediction" => ("prediction", Harmless(Value::is_object, "an object")),
        "store" => (
            "store",
            OffOnly(
                |v| v == &Value::Bool(false),
                "this server keeps no completions: leave `store` out or false",
            ),
        ),
        "modalities" => (
            "modalities",
            OffOnly(
                |v| v.as_array().is_some_and(|a| a.iter().all(|m| m == "text")),
                "this model writes text only: [\"text\"]",
            ),
        ),
        "functions" => (
            "functions",
            Refused("deprecated by OpenAI in favour of `tools`, and not supported"),
        ),
        "function_call" => (
            "function_call",
            Refused("deprecated by OpenAI in favour of `tool_choice`, and not supported"),
        ),
        "audio" => ("audio", Refused("this model writes text only")),
        "reasoning_effort" => (
            "reasoning_effort",
            Refused("not supported: this model does not reason before answering"),
        ),
        "verbosity" => ("verbosity", Refused("not supported by this model")),
        "web_search_options" => (
            "web_search_options",
            Refused("this server cannot search the web"),
        ),
        // llama-server: accepted, changing nothing observable. Prompts always reuse a slot's
        // cached prefix, which gives the same tokens as running it again (batch invariance).
        "cache_prompt" => ("cache_prompt", Harmless(is_bool, "true or false")),
        // llama-server: per-request draft lengths and confidence for speculative decoding,
        // which changes no token (lossless); the server's own settings are used.
        "speculative.n_max" => ("speculative.n_max", Harmless(is_number, "a number")),
        "speculative.n_min" => ("speculative.n_min", Harmless(is_number, "a number")),
        "speculative.p_min" => ("speculative.p_min", Harmless(is_number, "a number")),
        // llama-server: whether sampling runs on its GPU backend; the tokens are the same.
        "backend_sampling" => ("backend_sampling", Harmless(is_bool, "true or false")),
        // A sampler's parameters while the sampler is off (as they are in llama.cpp then).
        "mirostat_tau" => ("mirostat_tau", Harmless(is_number, "a number")),
        "mirostat_eta" => ("mirostat_eta", Harmless(is_number, "a number")),
        "dynatemp_exponent" => ("dynatemp_exponent", Harmless(is_number, "a number")),
        "xtc_threshold" => ("xtc_threshold", Harmless(is_number, "a number")),
        "dry_base" => ("dry_base", Harmless(is_number, "a number")),
        "dry_allowed_length" => ("dry_allowed_length", Harmless(is_number, "a number")),
        "dry_penalty_last_n" => ("dry_penalty_last_n", Harmless(is_number, "a number")),
        "dry_sequence_breakers" => (
            "dry_sequence_breakers",
            Harmless(
                |v| v.as_array().is_some_and(|a| a.iter().all(Value::is_string)),
                "a list of strings",
            ),
        ),
        // llama-server: samplers and features not implemented here, accepted off only.
        "mirostat" => ("mirostat", OffOnly(|v| v == 0, SAMPLER_OFF)),
        "typical_p" => ("typical_p", OffOnly(|v| v == 1.0 || v == 1, SAMPLER_OFF)),
        "dynatemp_range" => (
            "dynatemp_range",
            OffOnly(|v| v == 0 || v == 0.0, SAMPLER_OFF),
        ),
        "xtc_probability" => (
            "xtc_probability",
            OffOnly(|v| v == 0 || v == 0.0, SAMPLER_OFF),
        ),
        "dry_multiplier" => (
            "dry_multiplier",
            OffOnly(|v| v == 0 || v == 0.0, SAMPLER_OFF),
        ),
        "top_n_sigma" => (
            "top_n_sigma",
            OffOnly(|v| v.as_f64().is_some_and(|x| x <= 0.0), SAMPLER_OFF),
        ),
        "min_keep" => (
            "min_keep",
            OffOnly(
                |v| v == 0 || v == 1,
                "only 0 or 1: the samplers here keep at least one candidate, no more",
            ),
        ),
        "n_probs" => (
            "n_probs",
            OffOnly(
                |v| v == 0,
                "not supported: ask with `logprobs` (and `top_logprobs`)",
            ),
        ),
        "t_max_predict_ms" => (
            "t_max_predict_ms",
            OffOnly(
                |v| v == 0,
                "not supported: limit the length with `max_tokens`",
            ),
        ),
        "n_indent" => ("n_indent", OffOnly(|v| v == 0, "not supported")),
        "samplers" => (
            "samplers",
            Refused("not supported: the sampler order is fixed (llama.cpp's default)"),
        ),
        "image_data" => (
            "image_data",
            OffOnly(is_empty, "this model reads text only"),
        ),
        "multimodal_data" => (
            "multimodal_data",
            OffOnly(is_empty, "this model reads text only"),
        ),
        "lora" => ("lora", OffOnly(is_empty, "LoRA adapters are not supported")),
        "return_tokens" => ("return_tokens", OffOnly(|v| v == false, "not supported")),
        // Every stream already ends with `timings` (in its last chunk and its usage chunk).
        "timings_per_token" => ("timings_per_token", Harmless(is_bool, "true or false")),
        "post_sampling_probs" => (
            "post_sampling_probs",
            OffOnly(|v| v == false, "not supported"),
        ),
        "response_fields" => ("response_fields", OffOnly(is_empty, "not supported")),
        "chat_template_kwargs" => (
            "chat_template_kwargs",
            OffOnly(
                is_empty,
                "not supported: the chat template takes no arguments here",
            ),
        ),
        "reasoning_format" => (
            "reasoning_format",
            OffOnly(
                |v| v == "none",
                "only \"none\": this model does not reason before answering",
            ),
        ),
        _ => return None,
    };
    Some(rule)
}

/// The fields [`Request::from_value`] reads in llama-server's dialect only (in OpenAI's,
/// `other_field` decides them).
const READ_LLAMA: &[&str] = &[
    "n_probs",
    "return_tokens",
    "post_sampling_probs",
    "response_fields",
];

/// Checks every field the request gives that [`Request::from_value`] does not read itself.
fn screen(obj: &Map<String, Value>, dialect: Dialect) -> Result<(), RequestError> {
    for (key, value) in obj {
        if READ.contains(&key.as_str())
            || (dialect == Dialect::LlamaServer && READ_LLAMA.contains(&key.as_str()))
        {
            continue;
        }
        let Some((field, rule)) = other_field(key) else {
            return Err(RequestError::UnknownField(key.clone()));
        };
        if value.is_null() {
            continue;
        }
        match rule {
            Rule::Harmless(ok, expected) if !ok(value) => return Err(field_error(field, expected)),
            Rule::OffOnly(ok, message) if !ok(value) => {
                return Err(RequestError::Unsupported {
                    field,
                    message: message.to_string(),
                })
            }
            Rule::Refused(message) => {
                return Err(RequestError::Unsupported {
                    field,
                    message: message.to_string(),
                })
            }
            _ => {}
        }
    }
    Ok(())
}

fn response_format(v: &Value) -> Result<ResponseFormat, RequestError> {
    const EXPECTED: &str = "{\"type\": \"text\"}, {\"type\": \"json_object\"} or {\"type\": \"json_schema\", \"json_schema\": {\"schema\": …}}";
    let kind = v
        .get("type")
        .and_then(Value::as_str)
        .ok_or(field_error("response_format", EXPECTED))?;
    match kind {
        "text" => Ok(ResponseFormat::Text),
        // llama-server reads a schema given beside `json_object` too.
        "json_object" => match v.get("schema") {
            None | Some(Value::Null) => Ok(ResponseFormat::JsonObject),
            Some(s @ Value::Object(_)) => Ok(ResponseFormat::JsonSchema(s.clone())),
            Some(_) => Err(field_error(
                "response_format",
                "a `schema` that is a JSON schema (an object)",
            )),
        },
        "json_schema" => {
            let spec = v
                .get("json_schema")
                .ok_or(field_error("response_format", EXPECTED))?;
            // OpenAI nests the schema under `json_schema.schema`; llama.cpp also takes it
            // directly under `json_schema`.
            let schema = match spec.get("schema") {
                Some(s) => s.clone(),
                None if spec.get("type").is_some() => spec.clone(),
                None => serde_json::json!({}),
            };
            Ok(ResponseFormat::JsonSchema(schema))
        }
        _ => Err(field_error("response_format", EXPECTED)),
    }
}

impl Request {
    /// Parses one request from raw bytes (a batch line or an HTTP body).
    pub fn from_slice(bytes: &[u8]) -> Result<Request, RequestError> {
        Request::from_slice_in(bytes, Dialect::OpenAi)
    }

    /// Parses one request in the given dialect.
    pub fn from_slice_in(bytes: &[u8], dialect: Dialect) -> Result<Request, RequestError> {
        let text = std::str::from_utf8(bytes).map_err(|e| RequestError::InvalidUtf8 {
            at: e.valid_up_to(),
        })?;
        let value: Value = serde_json::from_str(text)?;
        Request::from_value_in(&value, dialect)
    }

    /// Reads the fields of a JSON object (OpenAI's dialect).
    pub fn from_value(value: &Value) -> Result<Request, RequestError> {
        Request::from_value_in(value, Dialect::OpenAi)
    }

    /// Reads the fields of a JSON object in the given dialect.
    pub fn from_value_in(value: &Value, dialect: Dialect) -> Result<Request, RequestError> {
        let llama = dialect == Dialect::LlamaServer;
        let obj = value.as_object().ok_or(RequestError::NotAnObject)?;
        screen(obj, dialect)?;
        let prompt = if llama {
            if obj.get("prompt").is_some_and(has_media) {
                return Err(RequestError::Unsupported {
                    field: "prompt",
                    message: "`multimodal_data`: this model reads text only".to_string(),
                });
            }
            opt(
                obj,
                "prompt",
                "a string, token ids, one list mixing token ids and strings, \
                 {\"prompt_string\": …}, or a list of such prompts",
                llama_prompts,
            )?
        } else {
            opt(
                obj,
                "prompt",
                "a string, a list of strings, a list of token ids or a list of such lists",
                prompts,
            )?
        };
        let messages = match obj.get("messages") {
            None | Some(Value::Null) => None,
            Some(v) => Some(messages(v)?),
        };
        let mut max_tokens = None;
        for field in ["max_completion_tokens", "max_tokens"] {
            if max_tokens.is_none() {
                max_tokens = opt(obj, field, "an integer ≥ 0", count)?.map(Some);
            }
        }
        if max_tokens.is_none() {
            max_tokens = opt(obj, "n_predict", "an integer ≥ -1", |v| {
                match v.as_i64() {
                    Some(-1) => Some(None),
                    Some(n) => usize::try_from(n).ok().map(Some),
                    None => None,
                }
            })?;
        }
        let seed = opt(
            obj,
            "seed",
            "an integer ≥ 0, or -1 for a random seed",
            |v| match (v.as_u64(), v.as_i64()) {
                (Some(s), _) => Some(s),
                (None, Some(-1)) => Some(random_seed()),
                _ => None,
            },
        )?;
        let stop = opt(obj, "stop", "a string or a list of strings", |v| match v {
            Value::String(s) => Some(vec![s.clone()]),
            Value::Array(a) => a.iter().map(|s| s.as_str().map(str::to_string)).collect(),
            _ => None,
        })?
        .unwrap_or_default();
        let n = opt(obj, "n", "an integer from 1 to 16", |v| {
            count(v).filter(|n| (1..=MAX_CHOICES).contains(n))
        })?
        .unwrap_or(1);
        // `best_of` candidates of which the `n` best are returned: exact only when they are
        // the same number (every candidate returned).
        if let Some(b) = opt(obj, "best_of", "an integer ≥ 1", count)? {
            if b != n {
                return Err(RequestError::Unsupported {
                    field: "best_of",
                    message: format!(
                        "ranking {b} candidates is not supported: only `best_of` equal to `n` \
                         ({n})"
                    ),
                });
            }
        }
        if opt(obj, "suffix", "a string", |v| v.as_str().map(str::is_empty))? == Some(false) {
            return Err(RequestError::Unsupported {
                field: "suffix",
                message: "inserting between a prompt and a suffix is not supported".to_string(),
            });
        }
        let messages_given = messages.is_some();
        let echo = opt(obj, "echo", "true or false", Value::as_bool)?.unwrap_or(false);
        if echo && messages_given {
            return Err(RequestError::Unsupported {
                field: "echo",
                message: "`echo` is a completions field: a chat request has no prompt text to \
                          echo"
                    .to_string(),
            });
        }
        let mut response_format = match obj.get("response_format") {
            None | Some(Value::Null) => None,
            Some(v) => Some(response_format(v)?),
        };
        match obj.get("json_schema") {
            None | Some(Value::Null) => {}
            Some(_) if response_format.is_some() => {
                return Err(RequestError::Unsupported {
                    field: "json_schema",
                    message: "give `json_schema` or `response_format`, not both".to_string(),
                })
            }
            Some(schema @ Value::Object(_)) => {
                response_format = Some(ResponseFormat::JsonSchema(schema.clone()))
            }
            Some(_) => return Err(field_error("json_schema", "a JSON schema (an object)")),
        }
        match obj.get("grammar") {
            None | Some(Value::Null) => {}
            Some(Value::String(g)) if g.is_empty() => {}
            Some(Value::String(_)) if response_format.is_some() => {
                return Err(RequestError::Unsupported {
                    field: "grammar",
                    message: "give one of `grammar`, `json_schema` and `response_format`"
                        .to_string(),
                })
            }
            Some(Value::String(g)) => response_format = Some(ResponseFormat::Grammar(g.clone())),
            Some(_) => return Err(field_error("grammar", "a GBNF grammar (a string)")),
        }
        // `tool_choice: "none"`: no tool may be called, so none is shown to the model (and a
        // template without tools serves the request).
        let no_tools = obj.get("tool_choice").is_some_and(|c| c == "none");
        let parallel = opt(obj, "parallel_tool_calls", "true or false", Value::as_bool)?;
        let tools = match obj.get("tools") {
            None | Some(Value::Null) => None,
            Some(Value::Array(a)) if a.is_empty() => None,
            Some(Value::Array(_)) if no_tools => None,
            Some(v @ Value::Array(_)) => Some(
                Tools::new(v, obj.get("tool_choice"), parallel.unwrap_or(true)).map_err(|e| {
                    RequestError::Unsupported {
                        field: e.field(),
                        message: e.to_string(),
                    }
                })?,
            ),
            Some(_) => return Err(field_error("tools", "a list of tool definitions")),
        };
        if tools.is_none() && !no_tools {
            // A choice that calls a tool needs tools to call.
            if let Some(c) = obj
                .get("tool_choice")
                .filter(|c| !c.is_null() && *c != "auto")
            {
                return Err(RequestError::Unsupported {
                    field: "tool_choice",
                    message: format!("`tool_choice` {c} needs `tools` to choose from"),
                });
            }
        }
        if tools
            .as_ref()
            .is_some_and(|t| *t.choice() != ToolChoice::Auto)
            && response_format.is_some()
        {
            return Err(RequestError::Unsupported {
                field: "tool_choice",
                message: "a forced tool call and `response_format` (or `grammar`) would both \
                          constrain the reply: give one"
                    .to_string(),
            });
        }
        if tools.is_some() && !messages_given {
            return Err(RequestError::Unsupported {
                field: "tools",
                message: "tools are offered in a chat request (`messages`)".to_string(),
            });
        }
        let mut logprobs = opt(
            obj,
            "logprobs",
            "true or false (chat), or a number of alternatives from 0 to 20 (completions)",
            |v| match v {
                Value::Bool(b) => Some(LogprobsRequest::Flag(*b)),
                v => count(v)
                    .filter(|&k| k <= MAX_TOP_LOGPROBS)
                    .map(LogprobsRequest::Count),
            },
        )?;
        if llama {
            // llama-server's `n_probs: k` is OpenAI's `logprobs: k`; 0 asks for nothing.
            match opt(obj, "n_probs", "an integer from 0 to 20", |v| {
                count(v).filter(|&k| k <= MAX_TOP_LOGPROBS)
            })? {
                None | Some(0) => {}
                Some(_) if logprobs.is_some() => {
                    return Err(RequestError::Unsupported {
                        field: "n_probs",
                        message: "give `n_probs` or `logprobs`, not both".to_string(),
                    })
                }
                Some(k) => logprobs = Some(LogprobsRequest::Count(k)),
            }
        }
        let temperature = if llama {
            // llama-server samples greedily at any temperature ≤ 0.
            opt(obj, "temperature", "a number", number)?.map(|t| t.max(0.0))
        } else {
            // OpenAI's range.
            opt(obj, "temperature", "a number from 0 to 2", |v| {
                number(v).filter(|t| (0.0..=2.0).contains(t))
            })?
        };
        let (mut logit_bias, mut logit_bias_text) = (Vec::new(), Vec::new());
        if llama {
            let entries = opt(
                obj,
                "logit_bias",
                "an object mapping token ids or texts to numbers from -100 to 100 (or false), \
                 or a list of [token id or text, bias or false] pairs",
                llama_logit_bias,
            )?;
            for (key, bias) in entries.unwrap_or_default() {
                match key {
                    BiasKey::Id(id) => logit_bias.push((id, bias)),
                    BiasKey::Text(text) => logit_bias_text.push((text, bias)),
                }
            }
        } else {
            logit_bias = opt(
                obj,
                "logit_bias",
                "an object mapping token ids to numbers from -100 to 100",
                logit_bias_object,
            )?
            .unwrap_or_default();
        }
        let return_tokens =
            llama && opt(obj, "return_tokens", "true or false", Value::as_bool)?.unwrap_or(false);
        let post_sampling_probs = llama
            && opt(obj, "post_sampling_probs", "true or false", Value::as_bool)?.unwrap_or(false);
        let response_fields = if llama {
            opt(obj, "response_fields", "a list of field names", |v| {
                v.as_array()?
                    .iter()
                    .map(|f| f.as_str().map(str::to_string))
                    .collect()
            })?
            .unwrap_or_default()
        } else {
            Vec::new()
        };
        Ok(Request {
            id: obj.get("id").cloned(),
            prompt,
            messages,
            max_tokens,
            temperature,
            top_k: opt(obj, "top_k", "an integer ≥ 0 (0: off)", count)?,
            top_p: opt(obj, "top_p", "a number between 0 and 1", number)?,
            min_p: opt(obj, "min_p", "a number between 0 and 1", number)?,
            repeat_penalty: opt(obj, "repeat_penalty", "a number above 0", number)?,
            repeat_last_n: opt(obj, "repeat_last_n", "an integer ≥ 0", count)?,
            presence_penalty: opt(obj, "presence_penalty", "a number", number)?,
            frequency_penalty: opt(obj, "frequency_penalty", "a number", number)?,
            seed,
            stop,
            stream: opt(obj, "stream", "true or false", Value::as_bool)?.unwrap_or(false),
            n,
            logprobs,
            top_logprobs: opt(obj, "top_logprobs", "an integer from 0 to 20", |v| {
                count(v).filter(|&k| k <= MAX_TOP_LOGPROBS)
            })?,
            echo,
            logit_bias,
            logit_bias_text,
            include_usage: opt(
                obj,
                "stream_options",
                "an object such as {\"include_usage\": true}",
                |v| {
                    let o = v.as_object()?;
                    match o.get("include_usage") {
                        None | Some(Value::Null) => Some(false),
                        Some(b) => b.as_bool(),
                    }
                },
            )?
            .unwrap_or(false),
            response_format,
            tools,
            ignore_eos: opt(obj, "ignore_eos", "true or false", Value::as_bool)?.unwrap_or(false),
            n_keep: opt(
                obj,
                "n_keep",
                "an integer ≥ -1 (-1: the whole prompt)",
                |v| v.as_i64().filter(|&k| k >= -1),
            )?,
            return_tokens,
            post_sampling_probs,
            response_fields,
            id_slot: opt(
                obj,
                "id_slot",
                "a slot's number (-1: any slot)",
                |v| match v.as_i64()? {
                    -1 => Some(None),
                    n => usize::try_from(n).ok().map(Some),
                },
            )?
            .flatten(),
            add_generation_prompt: opt(
                obj,
                "add_generation_prompt",
                "true or false",
                Value::as_bool,
            )?,
            return_progress: opt(obj, "return_progress", "true or false", Value::as_bool)?
                .unwrap_or(false),
        })
    }

    /// The logit biases by token id: `logit_bias`'s ids, every token of its texts (tokenized
    /// without BOS, special-token text read as the special token, as llama-server does), and
    /// with `ignore_eos` every end-of-generation token banned (-∞), as llama-server bans them
    /// (it then reports them with a `null` bias).
    pub fn token_logit_bias(&self, tokenizer: &crate::tokenizer::Tokenizer) -> Vec<(u32, f32)> {
        let mut bias = self.logit_bias.clone();
        for (text, b) in &self.logit_bias_text {
            let options = crate::tokenizer::EncodeOptions {
                add_bos: false,
                parse_special: true,
            };
            bias.extend(tokenizer.encode(text, options).into_iter().map(|t| (t, *b)));
        }
        if self.ignore_eos {
            bias.extend(
                tokenizer
                    .end_of_generation()
                    .iter()
                    .map(|&t| (t, f32::NEG_INFINITY)),
            );
        }
        bias
    }

    /// The prompt or the messages (exactly one must be given).
    pub fn input(&self) -> Result<Input, RequestError> {
        match (&self.prompt, &self.messages) {
            (Some(p), None) if p.is_empty() => Err(field_error("prompt", "a non-empty list")),
            (Some(p), None) => Ok(Input::Prompts(p.clone())),
            (None, Some(m)) if m.is_empty() => Err(field_error("messages", "a non-empty list")),
            (None, Some(m)) => Ok(Input::Messages(m.clone())),
            _ => Err(RequestError::PromptOrMessages),
        }
    }

    /// The sampler settings: the request's where it gives them, `defaults` elsewhere, checked.
    pub fn sampler_config(&self, defaults: &SamplerConfig) -> Result<SamplerConfig, RequestError> {
        let d = defaults;
        let config = SamplerConfig {
            temperature: self.temperature.unwrap_or(d.temperature),
            top_k: self.top_k.unwrap_or(d.top_k),
            top_p: self.top_p.unwrap_or(d.top_p),
            min_p: self.min_p.unwrap_or(d.min_p),
            repeat_penalty: self.repeat_penalty.unwrap_or(d.repeat_penalty),
            presence_penalty: self.presence_penalty.unwrap_or(d.presence_penalty),
            frequency_penalty: self.frequency_penalty.unwrap_or(d.frequency_penalty),
            penalty_last_n: self.repeat_last_n.unwrap_or(d.penalty_last_n),
            seed: self.seed.unwrap_or(d.seed),
        };
        config.validate()?;
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::generate::sampler::Param;

    fn parse(s: &str) -> Result<Request, RequestError> {
        Request::from_slice(s.as_bytes())
    }

    #[test]
    fn stop_is_a_string_or_a_list() {
        let r = parse(r#"{"prompt": "a", "stop": "\n", "model": "x", "user": "u"}"#).unwrap();
        assert_eq!(r.stop, vec!["\n".to_string()]);
        assert_eq!(
            r.input().unwrap(),
            Input::Prompts(vec![Prompt::Text("a".into())])
        );
        let r = parse(r#"{"prompt": ["a"], "stop": ["x", "y"]}"#).unwrap();
        assert_eq!(r.stop, vec!["x".to_string(), "y".to_string()]);
        let e = parse(r#"{"prompt": "a", "stop": 3}"#).unwrap_err();
        assert_eq!(e.field(), Some("stop"));
    }

    #[test]
    fn bad_values_name_their_field() {
        let e = parse(r#"{"prompt": "a", "temperature": "hot"}"#).unwrap_err();
        assert_eq!(e.to_string(), "`temperature` must be a number from 0 to 2");
        let e = parse(r#"{"prompt": "a", "max_tokens": -3}"#).unwrap_err();
        assert_eq!(e.field(), Some("max_tokens"));
        let r = parse(r#"{"prompt": "a", "min_p": 5}"#).unwrap();
        let e = r.sampler_config(&SamplerConfig::default()).unwrap_err();
        assert!(matches!(
            e,
            RequestError::Sampler(SamplerError {
                param: Param::MinP,
                ..
            })
        ));
        assert_eq!(e.field(), Some("min_p"));
        assert!(matches!(
            parse("[1]").unwrap_err(),
            RequestError::NotAnObject
        ));
        assert!(matches!(
            Request::from_slice(b"{\"prompt\": \"\xff\"}").unwrap_err(),
            RequestError::InvalidUtf8 { at: 12 }
        ));
        let both = parse(r#"{"prompt": "a", "messages": []}"#).unwrap();
        assert!(matches!(
            both.input().unwrap_err(),
            RequestError::PromptOrMessages
        ));
    }

    #[test]
    fn defaults_fill_what_the_request_leaves_out() {
        let r = parse(r#"{"prompt": "a", "top_k": 5, "seed": 9, "n_predict": -1}"#).unwrap();
        let c = r.sampler_config(&SamplerConfig::default()).unwrap();
        assert_eq!((c.top_k, c.seed, c.top_p), (5, 9, 0.95));
        assert_eq!(r.max_tokens, Some(None));
        let r = parse(r#"{"prompt": "a", "seed": -1}"#).unwrap();
        assert!(r.seed.is_some());
        let r = parse(r#"{"prompt": "a", "max_tokens": 4, "n_predict": 9}"#).unwrap();
        assert_eq!(r.max_tokens, Some(Some(4)));
    }

    #[test]
    fn prompts_come_as_strings_lists_and_token_ids() {
        let p = |s: &str| parse(s).unwrap().input().unwrap();
        assert_eq!(
            p(r#"{"prompt": ["a", "b"]}"#),
            Input::Prompts(vec![Prompt::Text("a".into()), Prompt::Text("b".into())])
        );
        assert_eq!(
            p(r#"{"prompt": [1, 2, 3]}"#),
            Input::Prompts(vec![Prompt::Tokens(vec![1, 2, 3])])
        );
        assert_eq!(
            p(r#"{"prompt": [[1, 2], [3]]}"#),
            Input::Prompts(vec![Prompt::Tokens(vec![1, 2]), Prompt::Tokens(vec![3])])
        );
        for bad in [
            r#"{"prompt": [1, -2]}"#,
            r#"{"prompt": {"a": 1}}"#,
            r#"{"prompt": [[1], 2]}"#,
        ] {
            assert_eq!(parse(bad).unwrap_err().field(), Some("prompt"), "{bad}");
        }
        assert!(parse(r#"{"prompt": []}"#).unwrap().input().is_err());
    }

    #[test]
    fn messages_take_text_parts_and_tool_calls_and_refuse_images() {
        let r = parse(
            r#"{"messages": [
                {"role": "system", "content": [{"type": "text", "text": "Be brief."}]},
                {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
                {"role": "assistant", "content": null, "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
                {"role": "tool", "tool_call_id": "c1", "content": "42"}
            ]}"#,
        )
        .unwrap();
        let m = r.messages.unwrap();
        assert_eq!(m[0].content, "Be brief.");
        assert_eq!(m[1].content, "a\nb");
        assert_eq!(m[2].content, "");
        assert!(m[2].tool_calls.is_some());
        assert_eq!(m[3].tool_call_id.as_deref(), Some("c1"));
        let e = parse(
            r#"{"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}"#,
        )
        .unwrap_err();
        assert!(e.to_string().contains("image_url"), "{e}");
        assert_eq!(e.field(), Some("messages"));
        let e = parse(r#"{"messages": [{"role": "user", "content": null}]}"#).unwrap_err();
        assert_eq!(e.field(), Some("messages"));
    }

    #[test]
    fn openai_fields_are_read_and_checked() {
        let r = parse(
            r#"{"prompt": "a", "n": 3, "logprobs": 2, "echo": true, "logit_bias": {"15": -100, "7": 5.5},
                "stream_options": {"include_usage": true}, "response_format": {"type": "json_object"}}"#,
        )
        .unwrap();
        assert_eq!(r.n, 3);
        assert_eq!(r.logprobs, Some(LogprobsRequest::Count(2)));
        assert!(r.echo && r.include_usage);
        let mut bias = r.logit_bias.clone();
        bias.sort_by_key(|b| b.0);
        assert_eq!(bias, vec![(7, 5.5), (15, -100.0)]);
        assert_eq!(r.response_format, Some(ResponseFormat::JsonObject));
        let r = parse(
            r#"{"messages": [{"role": "user", "content": "x"}], "logprobs": true, "top_logprobs": 4,
                "response_format": {"type": "json_schema", "json_schema": {"name": "n", "schema": {"type": "object"}}},
                "tools": [{"type": "function", "function": {"name": "f"}}]}"#,
        )
        .unwrap();
        assert_eq!(r.logprobs, Some(LogprobsRequest::Flag(true)));
        assert_eq!(r.top_logprobs, Some(4));
        assert_eq!(
            r.response_format,
            Some(ResponseFormat::JsonSchema(
                serde_json::json!({"type": "object"})
            ))
        );
        assert!(r.tools.is_some());
        for (bad, field) in [
            (r#"{"prompt": "a", "n": 0}"#, "n"),
            (r#"{"prompt": "a", "n": 99}"#, "n"),
            (r#"{"prompt": "a", "logprobs": 50}"#, "logprobs"),
            (r#"{"prompt": "a", "top_logprobs": 21}"#, "top_logprobs"),
            (r#"{"prompt": "a", "logit_bias": {"x": 1}}"#, "logit_bias"),
            (r#"{"prompt": "a", "logit_bias": {"1": 500}}"#, "logit_bias"),
            (
                r#"{"prompt": "a", "response_format": {"type": "xml"}}"#,
                "response_format",
            ),
            (r#"{"prompt": "a", "stream_options": 3}"#, "stream_options"),
            (r#"{"prompt": "a", "tools": "f"}"#, "tools"),
        ] {
            assert_eq!(parse(bad).unwrap_err().field(), Some(field), "{bad}");
        }
    }

    fn refused(s: &str) -> RequestError {
        parse(s).expect_err(s)
    }

    const CHAT: &str = r#""messages": [{"role": "user", "content": "x"}]"#;

    #[test]
    fn temperature_is_openais_zero_to_two() {
        for t in ["-1", "3", "2.01", "-0.1"] {
            let e = refused(&format!(r#"{{"prompt": "a", "temperature": {t}}}"#));
            assert_eq!(e.field(), Some("temperature"), "{t}");
            assert!(e.to_string().contains("from 0 to 2"), "{e}");
        }
        for t in ["0", "2", "0.7"] {
            parse(&format!(r#"{{"prompt": "a", "temperature": {t}}}"#)).unwrap();
        }
    }

    #[test]
    fn llama_servers_prompt_forms_and_slot() {
        let llama = |body: &str| {
            Request::from_slice_in(body.as_bytes(), Dialect::LlamaServer).map(|r| r.prompt)
        };
        let text = |s: &str| Prompt::Text(s.into());
        let mixed = |p: Vec<PromptPart>| Prompt::Mixed(p);
        use PromptPart::{Text as T, Token as K};
        for (prompt, expected) in [
            (r#""hi""#, vec![text("hi")]),
            (r#"{"prompt_string": "hi"}"#, vec![text("hi")]),
            (
                r#"{"prompt_string": "hi", "multimodal_data": []}"#,
                vec![text("hi")],
            ),
            (r#"[1, 2]"#, vec![Prompt::Tokens(vec![1, 2])]),
            (r#"["a", "b"]"#, vec![text("a"), text("b")]),
            (
                r#"[12, 34, "s", 56]"#,
                vec![mixed(vec![K(12), K(34), T("s".into()), K(56)])],
            ),
            (
                r#"["s", [12, 34]]"#,
                vec![text("s"), Prompt::Tokens(vec![12, 34])],
            ),
            (
                r#"[[12], [12, "s"], {"prompt_string": "x"}]"#,
                vec![
                    Prompt::Tokens(vec![12]),
                    mixed(vec![K(12), T("s".into())]),
                    text("x"),
                ],
            ),
        ] {
            let got = llama(&format!(r#"{{"prompt": {prompt}}}"#)).unwrap();
            assert_eq!(got, Some(expected), "{prompt}");
        }
        for prompt in [
            r#"{"prompt_string": "hi", "multimodal_data": ["AAAA"]}"#,
            r#"[{"prompt_string": "hi", "multimodal_data": ["AAAA"]}]"#,
            r#"{"text": "hi"}"#,
            r#"[1, -2]"#,
        ] {
            let e = llama(&format!(r#"{{"prompt": {prompt}}}"#)).unwrap_err();
            assert_eq!(e.field(), Some("prompt"), "{prompt}: {e}");
        }
        // OpenAI's dialect keeps OpenAI's forms.
        assert!(parse(r#"{"prompt": {"prompt_string": "hi"}}"#).is_err());
        let r = parse(&format!(
            r#"{{{CHAT}, "id_slot": 1, "add_generation_prompt": false, "backend_sampling": true}}"#
        ))
        .unwrap();
        assert_eq!((r.id_slot, r.add_generation_prompt), (Some(1), Some(false)));
        let r = parse(&format!(r#"{{{CHAT}, "id_slot": -1}}"#)).unwrap();
        assert_eq!((r.id_slot, r.add_generation_prompt), (None, None));
    }

    #[test]
    fn roles_are_openais() {
        let e = refused(
            r#"{"messages": [{"role": "user", "content": "x"}, {"role": "wizard", "content": "y"}]}"#,
        );
        assert_eq!(e.field(), Some("messages"));
        assert!(e.to_string().contains("message 1 has role `wizard`"), "{e}");
        let r = parse(r#"{"messages": [{"role": "developer", "content": "Be brief."}, {"role": "user", "content": "x"}]}"#).unwrap();
        let m = r.messages.unwrap();
        assert_eq!((m[0].role.as_str(), m[1].role.as_str()), ("system", "user"));
    }

    #[test]
    fn fields_not_served_are_refused_by_name() {
        for (body, field) in [
            (r#""prompt": "a", "grammar": 3"#, "grammar"),
            (
                r#""prompt": "a", "grammar": "root ::= \"x\"", "json_schema": {}"#,
                "grammar",
            ),
            (r#""prompt": "a", "suffix": "end""#, "suffix"),
            (r#""prompt": "a", "best_of": 2"#, "best_of"),
            (r#""prompt": "a", "n": 2, "best_of": 3"#, "best_of"),
            (r#""prompt": "a", "echo": true, "messages": []"#, "echo"),
            (r#""prompt": "a", "tools": [{"type": "function"}]"#, "tools"),
            (r#""prompt": "a", "mirostat": 2"#, "mirostat"),
            (r#""prompt": "a", "typical_p": 0.5"#, "typical_p"),
            (r#""prompt": "a", "dry_multiplier": 0.8"#, "dry_multiplier"),
            (
                r#""prompt": "a", "xtc_probability": 0.5"#,
                "xtc_probability",
            ),
            (r#""prompt": "a", "dynatemp_range": 0.5"#, "dynatemp_range"),
            (r#""prompt": "a", "n_probs": 3"#, "n_probs"),
            (r#""prompt": "a", "id_slot": -2"#, "id_slot"),
            (
                r#""prompt": "a", "backend_sampling": 1"#,
                "backend_sampling",
            ),
            (r#""prompt": "a", "samplers": ["top_k"]"#, "samplers"),
            (r#""prompt": "a", "lora": [{"id": 0, "scale": 1}]"#, "lora"),
            (
                r#""prompt": "a", "json_schema": {}, "response_format": {"type": "text"}"#,
                "json_schema",
            ),
            (r#""prompt": "a", "temprature": 0.5"#, "temprature"),
            (r#""prompt": "a", "user": 3"#, "user"),
        ] {
            let e = refused(&format!("{{{body}}}"));
            assert_eq!(e.field(), Some(field), "{body}: {e}");
        }
        for (body, field) in [
            (r#""functions": [{"name": "f"}]"#, "functions"),
            (r#""function_call": "auto""#, "function_call"),
            (r#""tool_choice": "required""#, "tool_choice"),
            (
                r#""tool_choice": {"type": "function", "function": {"name": "f"}}"#,
                "tool_choice",
            ),
            (r#""modalities": ["text", "audio"]"#, "modalities"),
            (r#""audio": {"voice": "alloy", "format": "wav"}"#, "audio"),
            (r#""store": true"#, "store"),
            (r#""reasoning_effort": "low""#, "reasoning_effort"),
            (r#""web_search_options": {}"#, "web_search_options"),
            (r#""add_generation_prompt": 0"#, "add_generation_prompt"),
            (
                r#""chat_template_kwargs": {"enable_thinking": true}"#,
                "chat_template_kwargs",
            ),
            (r#""echo": true"#, "echo"),
        ] {
            let e = refused(&format!("{{{CHAT}, {body}}}"));
            assert_eq!(e.field(), Some(field), "{body}: {e}");
        }
        let r = parse(r#"{"prompt": "a", "grammar": "root ::= \"x\""}"#).unwrap();
        assert_eq!(
            r.response_format,
            Some(ResponseFormat::Grammar("root ::= \"x\"".into()))
        );
        let r = parse(r#"{"prompt": "a", "response_format": {"type": "json_object", "schema": {"type": "array"}}}"#).unwrap();
        assert_eq!(
            r.response_format,
            Some(ResponseFormat::JsonSchema(
                serde_json::json!({"type": "array"})
            ))
        );
        let e = refused(r#"{"prompt": "a", "temprature": 0.5}"#);
        assert!(e.to_string().contains("unknown field `temprature`"), "{e}");
    }

    #[test]
    fn harmless_fields_and_off_values_are_accepted() {
        let r = parse(&format!(
            r#"{{{CHAT}, "model": "gpt-4o", "user": "u1", "store": false, "metadata": {{"a": "b"}},
                "service_tier": "auto", "parallel_tool_calls": true, "tool_choice": "auto",
                "modalities": ["text"], "prediction": {{"type": "content", "content": "x"}},
                "prompt_cache_key": "k", "safety_identifier": "s", "cache_prompt": false,
                "mirostat": 0, "mirostat_tau": 5.0, "mirostat_eta": 0.1, "typical_p": 1.0,
                "dynatemp_range": 0.0, "dynatemp_exponent": 1.0, "xtc_probability": 0,
                "xtc_threshold": 0.1, "dry_multiplier": 0.0, "dry_base": 1.75,
                "dry_allowed_length": 2, "dry_penalty_last_n": -1, "dry_sequence_breakers": ["\n"],
                "n_probs": 0, "id_slot": -1, "min_keep": 0, "grammar": "", "lora": [],
                "t_max_predict_ms": 0, "n_indent": 0, "top_n_sigma": -1, "image_data": [],
                "return_tokens": false, "timings_per_token": false, "post_sampling_probs": false,
                "response_fields": [], "chat_template_kwargs": {{}}, "add_generation_prompt": true,
                "reasoning_format": "none", "functions": null, "audio": null, "best_of": 1,
                "suffix": null, "speculative.n_max": 16, "speculative.n_min": 0,
                "speculative.p_min": 0.75}}"#
        ))
        .unwrap();
        assert_eq!(r.n, 1);
        let r = parse(r#"{"prompt": "a", "n": 3, "best_of": 3, "suffix": ""}"#).unwrap();
        assert_eq!(r.n, 3);
    }

    #[test]
    fn llama_server_fields_are_honoured() {
        let r = parse(r#"{"prompt": "a", "ignore_eos": true, "n_keep": -1, "json_schema": {"type": "object"}}"#)
            .unwrap();
        assert!(r.ignore_eos);
        assert_eq!(r.n_keep, Some(-1));
        assert_eq!(
            r.response_format,
            Some(ResponseFormat::JsonSchema(
                serde_json::json!({"type": "object"})
            ))
        );
        let r = parse(r#"{"prompt": "a"}"#).unwrap();
        assert!(!r.ignore_eos && r.n_keep.is_none() && r.response_format.is_none());
        assert_eq!(
            refused(r#"{"prompt": "a", "n_keep": -2}"#).field(),
            Some("n_keep")
        );
    }

    #[test]
    fn tool_calls_in_history_are_checked_and_tool_choice_none_drops_tools() {
        let call = |c: &str| {
            format!(
                r#"{{"messages": [{{"role": "assistant", "content": null, "tool_calls": {c}}}]}}"#
            )
        };
        parse(&call(
            r#"[{"id": "c", "type": "function", "function": {"name": "f", "arguments": "{\"a\": 1}"}}]"#,
        ))
        .unwrap();
        for bad in [
            r#"{"id": "c"}"#,
            r#"[{"id": "c", "type": "function", "function": {"name": "f"}}]"#,
            r#"[{"id": "c", "type": "function", "function": {"name": "f", "arguments": "{oops"}}]"#,
            r#"[{"id": "c", "type": "custom", "function": {"name": "f", "arguments": "{}"}}]"#,
            r#"[{"id": "c", "function": {"name": "", "arguments": "{}"}}]"#,
        ] {
            let e = parse(&call(bad)).unwrap_err();
            assert_eq!(e.field(), Some("messages"), "{bad}");
            assert!(e.to_string().contains("tool_calls"), "{bad}: {e}");
        }
        let tools = r#""tools": [{"type": "function", "function": {"name": "f"}}]"#;
        let r = parse(&format!(r#"{{{CHAT}, {tools}, "tool_choice": "none"}}"#)).unwrap();
        assert!(r.tools.is_none());
        let r = parse(&format!(r#"{{{CHAT}, {tools}, "tool_choice": "auto"}}"#)).unwrap();
        assert!(r.tools.is_some());
        let named = r#""tool_choice": {"type": "function", "function": {"name": "f"}}"#;
        let r = parse(&format!(r#"{{{CHAT}, {tools}, {named}}}"#)).unwrap();
        let choice = r.tools.as_ref().map(|t| t.choice().clone());
        assert_eq!(choice, Some(ToolChoice::Function("f".into())));
        for (body, field) in [
            (
                format!(
                    r#"{tools}, "tool_choice": {{"type": "function", "function": {{"name": "g"}}}}"#
                ),
                "tool_choice",
            ),
            (r#""tool_choice": "required""#.to_string(), "tool_choice"),
            (
                format!(
                    r#"{tools}, "tool_choice": "required", "response_format": {{"type": "json_object"}}"#
                ),
                "tool_choice",
            ),
            (
                format!(r#"{tools}, "parallel_tool_calls": 1"#),
                "parallel_tool_calls",
            ),
            (
                r#""tools": [{"type": "function", "function": {"name": ""}}]"#.to_string(),
                "tools",
            ),
        ] {
            let e = parse(&format!("{{{CHAT}, {body}}}")).unwrap_err();
            assert_eq!(e.field(), Some(field), "{body}: {e}");
        }
    }

    #[test]
    fn llama_server_dialect_reads_its_own_conventions() {
        let llama = |s: &str| Request::from_slice_in(s.as_bytes(), Dialect::LlamaServer);
        let r = llama(
            r#"{"prompt": "a", "n_probs": 3, "temperature": -1, "return_tokens": true,
                "logit_bias": [[5, false], [7, 2.5]]}"#,
        )
        .unwrap();
        assert_eq!(r.logprobs, Some(LogprobsRequest::Count(3)));
        assert_eq!(r.temperature, Some(0.0));
        assert!(r.return_tokens);
        assert_eq!(r.logit_bias, vec![(5, -100.0), (7, 2.5)]);
        // `n_probs: 0` asks for nothing; the object form of `logit_bias` still works.
        let r = llama(r#"{"prompt": "a", "n_probs": 0, "logit_bias": {"5": 1}}"#).unwrap();
        assert_eq!(r.logprobs, None);
        assert_eq!(r.logit_bias, vec![(5, 1.0)]);
        for (bad, field) in [
            (r#"{"prompt": "a", "n_probs": 21}"#, "n_probs"),
            (r#"{"prompt": "a", "n_probs": 2, "logprobs": 2}"#, "n_probs"),
            (r#"{"prompt": "a", "logit_bias": [[5]]}"#, "logit_bias"),
            (
                r#"{"prompt": "a", "logit_bias": [[5, true]]}"#,
                "logit_bias",
            ),
            (r#"{"prompt": "a", "return_tokens": 1}"#, "return_tokens"),
            (r#"{"prompt": "a", "temperature": "hot"}"#, "temperature"),
        ] {
            assert_eq!(llama(bad).unwrap_err().field(), Some(field), "{bad}");
        }
        // The same bodies in OpenAI's dialect keep OpenAI's rules.
        for (body, field) in [
            (r#"{"prompt": "a", "n_probs": 3}"#, "n_probs"),
            (r#"{"prompt": "a", "temperature": -1}"#, "temperature"),
            (r#"{"prompt": "a", "return_tokens": true}"#, "return_tokens"),
            (
                r#"{"prompt": "a", "logit_bias": [[5, false]]}"#,
                "logit_bias",
            ),
        ] {
            assert_eq!(refused(body).field(), Some(field), "{body}");
        }
    }

    /// Every request field of OpenAI's API reference (completions and chat completions) and of
    /// llama-server's README (its completion endpoint) has been decided: read, accepted as
    /// harmless, accepted only off, or refused. None falls through as "unknown".
    #[test]
    fn every_documented_field_is_decided() {
        let openai = [
            "model",
            "prompt",
            "best_of",
            "echo",
            "frequency_penalty",
            "logit_bias",
            "logprobs",
            "max_tokens",
            "n",
            "presence_penalty",
            "seed",
            "stop",
            "stream",
            "stream_options",
            "suffix",
            "temperature",
            "top_p",
            "user",
            "messages",
            "audio",
            "function_call",
            "functions",
            "max_completion_tokens",
            "metadata",
            "modalities",
            "parallel_tool_calls",
            "prediction",
            "prompt_cache_key",
            "reasoning_effort",
            "response_format",
            "safety_identifier",
            "service_tier",
            "store",
            "tool_choice",
            "tools",
            "top_logprobs",
            "verbosity",
            "web_search_options",
        ];
        let llama = [
            "temperature",
            "dynatemp_range",
            "dynatemp_exponent",
            "top_k",
            "top_p",
            "min_p",
            "n_predict",
            "n_indent",
            "n_keep",
            "stream",
            "stop",
            "typical_p",
            "repeat_penalty",
            "repeat_last_n",
            "presence_penalty",
            "frequency_penalty",
            "dry_multiplier",
            "dry_base",
            "dry_allowed_length",
            "dry_penalty_last_n",
            "dry_sequence_breakers",
            "xtc_probability",
            "xtc_threshold",
            "mirostat",
            "mirostat_tau",
            "mirostat_eta",
            "grammar",
            "json_schema",
            "seed",
            "ignore_eos",
            "logit_bias",
            "n_probs",
            "min_keep",
            "t_max_predict_ms",
            "image_data",
            "id_slot",
            "cache_prompt",
            "return_tokens",
            "samplers",
            "timings_per_token",
            "return_progress",
            "post_sampling_probs",
            "response_fields",
            "lora",
            "top_n_sigma",
            "chat_template_kwargs",
            "add_generation_prompt",
            "reasoning_format",
            "multimodal_data",
        ];
        for f in openai.iter().chain(&llama) {
            assert!(
                READ.contains(f) || other_field(f).is_some(),
                "`{f}` is neither read nor decided"
            );
        }
        for f in READ {
            assert!(
                other_field(f).is_none(),
                "`{f}` is read and also has a rule"
            );
        }
    }
}
