//! One completion request as both `bitnet batch` (a JSONL line) and `bitnet serve` (an HTTP
//! body) read it, so the two accept the same fields with the same types: OpenAI's names
//! (`prompt`, `messages`, `max_tokens`, `temperature`, `top_p`, `presence_penalty`,
//! `frequency_penalty`, `seed`, `stop` as a string or a list, `stream`) plus llama.cpp server's
//! (`top_k`, `min_p`, `repeat_penalty`, `repeat_last_n`, `n_predict`). Unknown fields such as
//! `model` or `user` are ignored, as the OpenAI API ignores what it does not use.
//!
//! Fields are read one by one from the JSON object rather than through a derived
//! `Deserialize`, so that every error names the field and says what it must be.

use serde_json::{Map, Value};

use super::sampler::{random_seed, SamplerConfig, SamplerError};
use crate::tokenizer::ChatMessage;

/// Why a request was refused.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error("not valid UTF-8 (byte {at})")]
    InvalidUtf8 { at: usize },
    #[error("invalid JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("a request must be a JSON object")]
    NotAnObject,
    #[error("`{field}` must be {expected}")]
    Field {
        field: &'static str,
        expected: &'static str,
    },
    #[error(transparent)]
    Sampler(#[from] SamplerError),
    #[error("a request needs exactly one of `prompt` and `messages`")]
    PromptOrMessages,
    /// The chat template refused the conversation (a template may raise an exception).
    #[error("`messages`: {0}")]
    Template(crate::tokenizer::TokenizerError),
}

impl RequestError {
    /// The request field the error is about, if one (OpenAI's `param`).
    pub fn field(&self) -> Option<&'static str> {
        match self {
            RequestError::Field { field, .. } => Some(field),
            RequestError::Sampler(e) => Some(e.param.field()),
            RequestError::Template(_) => Some("messages"),
            _ => None,
        }
    }
}

/// What the request asks the model to continue.
#[derive(Clone, Debug, PartialEq)]
pub enum Input {
    /// Plain text (BOS added when the model asks for it).
    Prompt(String),
    /// A conversation, rendered through the model's chat template.
    Messages(Vec<ChatMessage>),
}

/// A parsed request. Sampling fields left out take the caller's defaults (see
/// [`Request::sampler_config`]).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Request {
    /// Echoed back by `batch` (any JSON value).
    pub id: Option<Value>,
    pub prompt: Option<String>,
    pub messages: Option<Vec<ChatMessage>>,
    /// `max_completion_tokens`, `max_tokens` or `n_predict` (first found); -1 in `n_predict`
    /// means no limit, as in llama.cpp, and is kept as `Some(None)`.
    pub max_tokens: Option<Option<usize>>,
    pub temperature: Option<f32>,
    pub top_k: Option<usize>,
    pub top_p: Option<f32>,
    pub min_p: Option<f32>,
    pub repeat_penalty: Option<f32>,
    pub repeat_last_n: Option<usize>,
    pub presence_penalty: Option<f32>,
    pub frequency_penalty: Option<f32>,
    /// `-1` asks for a random seed (llama.cpp's convention) and is resolved when parsed.
    pub seed: Option<u64>,
    pub stop: Vec<String>,
    pub stream: bool,
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
    pub fn from_value(value: &Value) -> Result<Request, RequestError> {
        let obj = value.as_object().ok_or(RequestError::NotAnObject)?;
        let prompt = opt(obj, "prompt", "a string", |v| match v {
            Value::String(s) => Some(s.clone()),
            // OpenAI allows a list of prompts; one is what a single completion can answer.
            Value::Array(a) if a.len() == 1 => a[0].as_str().map(str::to_string),
            _ => None,
        })?;
        let messages = opt(
            obj,
            "messages",
            "a list of {\"role\": …, \"content\": …} objects",
            |v| serde_json::from_value::<Vec<ChatMessage>>(v.clone()).ok(),
        )?;
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
        })
    }

    /// The prompt or the messages (exactly one must be given).
    pub fn input(&self) -> Result<Input, RequestError> {
        match (&self.prompt, &self.messages) {
            (Some(p), None) => Ok(Input::Prompt(p.clone())),
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
        assert_eq!(r.input().unwrap(), Input::Prompt("a".into()));
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
}
