//! One completion request as both `bitnet batch` (a JSONL line) and `bitnet serve` (an HTTP
//! body) read it, so the two accept the same fields with the same types: OpenAI's names
//! (`prompt`, `messages`, `max_tokens`, `temperature`, `top_p`, `presence_penalty`,
//! `frequency_penalty`, `seed`, `stop` as a string or a list, `stream`) plus llama.cpp server's
//! (`top_k`, `min_p`, `repeat_penalty`, `repeat_last_n`, `n_predict`). Unknown fields such as
//! `model` or `user` are ignored, as the OpenAI API ignores what it does not use.
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
    /// The chat template refused the conversation (a template may raise an exception).
    #[error("`messages`: {0}")]
    Template(crate::tokenizer::TokenizerError),
}

impl RequestError {
    /// The request field the error is about, if one (OpenAI's `param`).
    pub fn field(&self) -> Option<&'static str> {
        match self {
            RequestError::Field { field, .. } | RequestError::Unsupported { field, .. } => {
                Some(field)
            }
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
    /// `stream_options.include_usage`: a last chunk with the token counts.
    pub include_usage: bool,
    /// `response_format`.
    pub response_format: Option<ResponseFormat>,
    /// OpenAI's `tools` (function definitions), when given and not empty.
    pub tools: Option<Value>,
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
/// (joined with newlines), or null for an assistant message that only calls tools.
fn messages(v: &Value) -> Result<Vec<ChatMessage>, RequestError> {
    const EXPECTED: &str = "a list of {\"role\": …, \"content\": …} objects";
    let list = v.as_array().ok_or(field_error("messages", EXPECTED))?;
    let mut out = Vec::with_capacity(list.len());
    for m in list {
        let m = m.as_object().ok_or(field_error("messages", EXPECTED))?;
        let role = m
            .get("role")
            .and_then(Value::as_str)
            .ok_or(field_error("messages", EXPECTED))?;
        let tool_calls = m.get("tool_calls").filter(|v| !v.is_null()).cloned();
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
    Ok(out)
}

fn logit_bias(v: &Value) -> Option<Vec<(u32, f32)>> {
    v.as_object()?
        .iter()
        .map(|(k, b)| {
            let id: u32 = k.parse().ok()?;
            let b = b.as_f64().filter(|b| (-100.0..=100.0).contains(b))?;
            Some((id, b as f32))
        })
        .collect()
}

fn response_format(v: &Value) -> Result<ResponseFormat, RequestError> {
    const EXPECTED: &str = "{\"type\": \"text\"}, {\"type\": \"json_object\"} or {\"type\": \"json_schema\", \"json_schema\": {\"schema\": …}}";
    let kind = v
        .get("type")
        .and_then(Value::as_str)
        .ok_or(field_error("response_format", EXPECTED))?;
    match kind {
        "text" => Ok(ResponseFormat::Text),
        "json_object" => Ok(ResponseFormat::JsonObject),
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
        let text = std::str::from_utf8(bytes).map_err(|e| RequestError::InvalidUtf8 {
            at: e.valid_up_to(),
        })?;
        let value: Value = serde_json::from_str(text)?;
        Request::from_value(&value)
    }

    /// Reads the fields of a JSON object.
    pub(crate) fn from_value(value: &Value) -> Result<Request, RequestError> {
        let obj = value.as_object().ok_or(RequestError::NotAnObject)?;
        let prompt = opt(
            obj,
            "prompt",
            "a string, a list of strings, a list of token ids or a list of such lists",
            prompts,
        )?;
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
        Ok(Request {
            id: obj.get("id").cloned(),
            prompt,
            messages,
            max_tokens,
            temperature: opt(obj, "temperature", "a number", number)?,
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
            n: opt(obj, "n", "an integer from 1 to 16", |v| {
                count(v).filter(|n| (1..=MAX_CHOICES).contains(n))
            })?
            .unwrap_or(1),
            logprobs: opt(
                obj,
                "logprobs",
                "true or false (chat), or a number of alternatives from 0 to 20 (completions)",
                |v| match v {
                    Value::Bool(b) => Some(LogprobsRequest::Flag(*b)),
                    v => count(v)
                        .filter(|&k| k <= MAX_TOP_LOGPROBS)
                        .map(LogprobsRequest::Count),
                },
            )?,
            top_logprobs: opt(obj, "top_logprobs", "an integer from 0 to 20", |v| {
                count(v).filter(|&k| k <= MAX_TOP_LOGPROBS)
            })?,
            echo: opt(obj, "echo", "true or false", Value::as_bool)?.unwrap_or(false),
            logit_bias: opt(
                obj,
                "logit_bias",
                "an object mapping token ids to numbers from -100 to 100",
                logit_bias,
            )?
            .unwrap_or_default(),
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
            response_format: match obj.get("response_format") {
                None | Some(Value::Null) => None,
                Some(v) => Some(response_format(v)?),
            },
            tools: match obj.get("tools") {
                None | Some(Value::Null) => None,
                Some(Value::Array(a)) if a.is_empty() => None,
                Some(v @ Value::Array(_)) => Some(v.clone()),
                Some(_) => return Err(field_error("tools", "a list of tool definitions")),
            },
        })
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
    fn stop_is_a_string_or_a_list_and_unknown_fields_are_ignored() {
        let r = parse(r#"{"prompt": "a", "stop": "\n", "model": "x", "user": 3}"#).unwrap();
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
        assert_eq!(e.to_string(), "`temperature` must be a number");
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
}
