//! `POST /v1/embeddings` (and `/embeddings`): OpenAI's embeddings endpoint. `input` is a
//! string, a list of strings, a list of token ids or a list of such lists, or one of
//! llama-server's prompt forms (ids mixed with strings, `{"prompt_string": …}`); `encoding_format`
//! `float` (default) or `base64` (little-endian f32, as the `openai` client decodes it);
//! `dimensions` truncates (Matryoshka) then normalises. Each input is one job of the
//! library's scheduler ([`Job::embed`]): embeddings take the slots, queue and batched steps of
//! the generation requests (continuous batching), each input whole in one step. `POST
//! /embedding` is llama-server's native form of the same, and the only one that gives every
//! token's vector (`--pooling none`).

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine as _;
use bitnet::generate::request::llama_prompts;
use bitnet::generate::{Event, Job, Prompt};
use bitnet::model::{EmbedOptions, Pooling};
use bitnet::tokenizer::EncodeOptions;
use serde_json::{json, Value};

use super::openai::{submit, submit_error, Submitted};
use super::ops::error;
use super::AppState;

/// Inputs one request may hold (OpenAI's own limit is 2048).
const MAX_INPUTS: usize = 2048;

fn bad(message: impl Into<String>, param: &str) -> Response {
    error(StatusCode::BAD_REQUEST, message, Some(param))
}

/// The token ids of every input, or the 400 naming what is wrong. `input` takes
/// llama-server's prompt forms (a superset of OpenAI's): a string, token ids, one list mixing
/// ids and strings, `{"prompt_string": …}`, or a list of such inputs.
fn inputs(state: &AppState, input: &Value) -> Result<Vec<Vec<u32>>, Box<Response>> {
    let bad = |message: String, param: &str| Box::new(bad(message, param));
    if input.as_array().is_some_and(Vec::is_empty) {
        return Err(bad("`input` must not be empty".into(), "input"));
    }
    let Some(prompts) = llama_prompts(input) else {
        return Err(bad(
            "`input` must be a string, a list of token ids (integers ≥ 0), one list mixing \
             token ids and strings, {\"prompt_string\": …}, or a list of such inputs"
                .into(),
            "input",
        ));
    };
    let tokenizer = &state.tokenizer;
    let seqs: Vec<Vec<u32>> = prompts
        .iter()
        .map(|p| match p {
            Prompt::Text(s) => tokenizer.encode_for_embedding(s),
            Prompt::Tokens(ids) => ids.clone(),
            // Texts tokenized where they stand (BOS only before a leading one), and the EOS
            // the model ends every text with, as for a plain text.
            mixed @ Prompt::Mixed(_) => {
                let mut ids = mixed.ids(|text, first| {
                    tokenizer.encode(
                        text,
                        EncodeOptions {
                            add_bos: first && tokenizer.add_bos_token(),
                            parse_special: false,
                        },
                    )
                });
                if let (true, Some(eos)) = (tokenizer.add_eos_token(), tokenizer.eos_id()) {
                    ids.push(eos);
                }
                ids
            }
        })
        .collect();
    if seqs.len() > MAX_INPUTS {
        return Err(bad(
            format!("`input` holds {} items; at most {MAX_INPUTS}", seqs.len()),
            "input",
        ));
    }
    let n_vocab = state.n_vocab;
    let n_ctx = state.scheduler.context_size();
    for (i, s) in seqs.iter().enumerate() {
        if s.is_empty() {
            return Err(bad(format!("`input[{i}]` has no tokens"), "input"));
        }
        if let Some(t) = s.iter().find(|&&t| t as usize >= n_vocab) {
            return Err(bad(
                format!("`input[{i}]` holds token {t}, outside the vocabulary of {n_vocab}"),
                "input",
            ));
        }
        if s.len() > n_ctx {
            return Err(bad(
                format!(
                    "`input[{i}]` ({} tokens) is too large to process: the context holds \
                     {n_ctx}",
                    s.len()
                ),
                "input",
            ));
        }
    }
    Ok(seqs)
}

pub async fn embeddings(State(state): State<Arc<AppState>>, body: Bytes) -> Response {
    let req: Value = match serde_json::from_slice(&body) {
        Ok(v @ Value::Object(_)) => v,
        Ok(_) => return bad("the body must be a JSON object", "body"),
        Err(e) => return bad(format!("the body is not valid JSON: {e}"), "body"),
    };
    const FIELDS: [&str; 5] = ["input", "model", "encoding_format", "dimensions", "user"];
    if let Some(k) = req
        .as_object()
        .and_then(|o| o.keys().find(|k| !FIELDS.contains(&k.as_str())))
    {
        return bad(format!("unknown field `{k}`"), k);
    }
    let Some(input) = req.get("input") else {
        return bad("`input` is required", "input");
    };
    let base64 = match req.get("encoding_format") {
        None | Some(Value::Null) => false,
        Some(Value::String(s)) if s == "float" => false,
        Some(Value::String(s)) if s == "base64" => true,
        Some(other) => {
            return bad(
                format!("`encoding_format` {other} is not supported (float or base64)"),
                "encoding_format",
            )
        }
    };
    let width = state.n_embd;
    let dimensions = match req.get("dimensions") {
        None | Some(Value::Null) => None,
        Some(v) => match v.as_u64() {
            Some(d) if (1..=width as u64).contains(&d) => Some(d as usize),
            _ => {
                return bad(
                    format!("`dimensions` {v} must be an integer from 1 to {width}"),
                    "dimensions",
                )
            }
        },
    };
    let seqs = match inputs(&state, input) {
        Ok(s) => s,
        Err(r) => return *r,
    };
    if state.pooling == Some(Pooling::None) {
        // llama-server's answer: OpenAI's shape has one vector per input.
        return bad(
            "Pooling type 'none' is not OAI compatible. Please use a different pooling type \
             (the server runs with --pooling none: per-token vectors are at /embedding)",
            "input",
        );
    }
    let n_tokens: usize = seqs.iter().map(Vec::len).sum();
    let options = EmbedOptions {
        pooling: state.pooling,
        normalize: true,
        dimensions,
    };
    let vectors = match run(&state, seqs, options).await {
        Ok(v) => v,
        Err(r) => return *r,
    };
    let data: Vec<Value> = vectors
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let embedding = if base64 {
                let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
                json!(base64::engine::general_purpose::STANDARD.encode(bytes))
            } else {
                json!(v)
            };
            json!({"object": "embedding", "index": i, "embedding": embedding})
        })
        .collect();
    Json(json!({
        "object": "list",
        "data": data,
        "model": state.name,
        "usage": {"prompt_tokens": n_tokens, "total_tokens": n_tokens},
    }))
    .into_response()
}

/// Runs one scheduler job per input (they share the steps, slots, queue and 503s of the
/// generation requests); the vectors in input order.
async fn run(
    state: &AppState,
    seqs: Vec<Vec<u32>>,
    options: EmbedOptions,
) -> Result<Vec<Vec<f32>>, Box<Response>> {
    let jobs: Vec<Job> = seqs.into_iter().map(|s| Job::embed(s, options)).collect();
    let n = jobs.len();
    let Submitted { tickets, mut rx } = match submit(state, jobs) {
        Ok(s) => s,
        Err(e) => return Err(Box::new(submit_error(&e))),
    };
    let mut vectors: Vec<Option<Vec<f32>>> = vec![None; n];
    let mut remaining = n;
    while remaining > 0 {
        let Some((i, event)) = rx.recv().await else {
            break;
        };
        match event {
            Event::Embedding(v) => vectors[i] = Some(v),
            Event::Done(_) => remaining -= 1,
            Event::Failed(e) => {
                return Err(Box::new(error(StatusCode::INTERNAL_SERVER_ERROR, e, None)))
            }
            Event::Prompt { .. } | Event::Token { .. } | Event::Progress(_) => {}
        }
    }
    drop(tickets);
    vectors
        .into_iter()
        .collect::<Option<Vec<_>>>()
        .ok_or_else(|| {
            Box::new(error(
                StatusCode::SERVICE_UNAVAILABLE,
                "the server ended the request before its embedding was computed",
                None,
            ))
        })
}

/// `POST /embeddings` (no `/v1`): OpenAI's shape, which OpenAI clients whose base URL lacks
/// `/v1` expect; under `--pooling none`, which that shape cannot carry (one vector per input),
/// llama-server's native answer, as llama-server serves its native endpoint there.
pub async fn unprefixed(state: State<Arc<AppState>>, body: Bytes) -> Response {
    if state.pooling == Some(Pooling::None) {
        native(state, body).await
    } else {
        embeddings(state, body).await
    }
}

/// `POST /embedding`: llama-server's native embeddings. `content` (or `input`) in any of its
/// prompt forms; the answer is a list of `{"index", "embedding"}`, each `embedding` a list of
/// vectors: every token's with `--pooling none` (not normalised, as llama-server leaves
/// them), else the one pooled vector, L2-normalised (`embd_normalize` 2, the default, or -1
/// for none).
pub async fn native(State(state): State<Arc<AppState>>, body: Bytes) -> Response {
    let req =
        match super::llama::small_body(&body, &["content", "input", "model", "embd_normalize"]) {
            Ok(obj) => obj,
            Err(r) => return *r,
        };
    let Some(input) = req.get("content").or_else(|| req.get("input")) else {
        return bad("`content` is required", "content");
    };
    let normalize = match req.get("embd_normalize") {
        None | Some(Value::Null) => true,
        Some(v) if v.as_i64() == Some(2) => true,
        Some(v) if v.as_i64() == Some(-1) => false,
        Some(v) => {
            return bad(
                format!("`embd_normalize` {v}: only 2 (euclidean, the default) or -1 (none)"),
                "embd_normalize",
            )
        }
    };
    let seqs = match inputs(&state, input) {
        Ok(s) => s,
        Err(r) => return *r,
    };
    let per_token = state.pooling == Some(Pooling::None);
    let options = EmbedOptions {
        pooling: state.pooling,
        normalize: normalize && !per_token,
        dimensions: None,
    };
    let vectors = match run(&state, seqs, options).await {
        Ok(v) => v,
        Err(r) => return *r,
    };
    let width = state.n_embd.max(1);
    let results: Vec<Value> = vectors
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let rows: Vec<&[f32]> = v.chunks(width).collect();
            json!({"index": i, "embedding": rows})
        })
        .collect();
    Json(Value::Array(results)).into_response()
}
