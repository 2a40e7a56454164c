//! `bitnet serve [-m FILE] [--host 127.0.0.1] [--port 8080]`: an OpenAI-compatible HTTP server
//! (`/v1/completions`, `/v1/chat/completions` with SSE streaming, `/v1/models`, `/health`).
//!
//! One model and one KV cache: requests are served one at a time (a CPU engine gains nothing
//! from running two generations over the same cores), and the cache keeps the previous
//! request's tokens, so a chat client resending the conversation prefills only the new turn.

use std::convert::Infallible;
use std::ops::ControlFlow;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use bitnet::generate::{
    GenerationConfig, Input, Request, RequestError, Sampler, SamplerConfig, Session, StopReason,
};
use bitnet::tokenizer::{ChatTemplate, EncodeOptions};
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tokio_stream::StreamExt;

use crate::model_args::{ModelArgs, SamplingArgs};

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    model: ModelArgs,
    /// Defaults for requests that do not set their own sampling fields
    #[command(flatten)]
    sampling: SamplingArgs,
    /// Address to listen on
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Port (0: any free port; the chosen one is printed)
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// Default `max_tokens` for requests that do not set it
    #[arg(short = 'n', long = "n-predict", default_value_t = 256)]
    n_predict: usize,
    /// When a generation fills the context, keep the first --keep tokens, drop half of the
    /// rest and go on (llama.cpp's context shift) instead of stopping with "length"
    #[arg(long)]
    ctx_shift: bool,
    /// Prompt tokens the context shift never drops, after BOS (-1: the whole prompt)
    #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
    keep: i64,
}

/// What the handlers share.
struct AppState {
    name: String,
    tokenizer: &'static bitnet::tokenizer::Tokenizer,
    session: Mutex<Session<'static>>,
    template: ChatTemplate,
    defaults: SamplerConfig,
    n_predict: usize,
    ctx_shift: bool,
    keep: i64,
}

#[derive(Clone, Copy, PartialEq)]
enum Endpoint {
    Completions,
    Chat,
}

/// An OpenAI-shaped error: `{"error": {"message", "type", "param", "code"}}`.
fn error(status: StatusCode, message: impl Into<String>, param: Option<&str>) -> Response {
    let kind = if status.is_client_error() {
        "invalid_request_error"
    } else {
        "server_error"
    };
    let body = json!({"error": {
        "message": message.into(), "type": kind, "param": param, "code": Value::Null,
    }});
    (status, Json(body)).into_response()
}

fn request_error(e: &RequestError) -> Response {
    let message = match e {
        RequestError::Json(_) | RequestError::InvalidUtf8 { .. } => {
            format!("invalid request: {e}")
        }
        _ => e.to_string(),
    };
    error(StatusCode::BAD_REQUEST, message, e.field())
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn finish_reason(stop: &StopReason) -> &'static str {
    match stop {
        StopReason::MaxTokens | StopReason::ContextFull => "length",
        _ => "stop",
    }
}

pub fn run(args: Args) -> Result<()> {
    let defaults = args.sampling.config()?;
    let loaded = args.model.load()?;
    // The server runs until the process ends: the model lives as long.
    let loaded: &'static crate::model_args::Loaded = Box::leak(Box::new(loaded));
    let template = loaded.tokenizer.chat_template()?;
    let session = Session::new(
        &loaded.model,
        &loaded.tokenizer,
        args.model.ctx_size,
        args.model.cache_type,
    )?;
    let state = Arc::new(AppState {
        name: loaded.name.clone(),
        tokenizer: &loaded.tokenizer,
        session: Mutex::new(session),
        template,
        defaults,
        n_predict: args.n_predict,
        ctx_shift: args.ctx_shift,
        keep: args.keep,
    });
    let app = Router::new()
        .route("/health", get(|| async { Json(json!({"status": "ok"})) }))
        .route("/v1/models", get(models))
        .route("/v1/completions", post(completions))
        .route("/v1/chat/completions", post(chat_completions))
        .with_state(state);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind((args.host.as_str(), args.port))
            .await
            .with_context(|| format!("listening on {}:{}", args.host, args.port))?;
        let addr = listener.local_addr()?;
        eprintln!("listening on http://{addr} (model {})", loaded.name);
        axum::serve(listener, app).await.context("serving")
    })
}

async fn models(State(state): State<Arc<AppState>>) -> Json<Value> {
    Json(json!({
        "object": "list",
        "data": [{"id": state.name, "object": "model", "created": now(), "owned_by": "bitnet-rust"}],
    }))
}

async fn completions(State(state): State<Arc<AppState>>, body: axum::body::Bytes) -> Response {
    handle(state, body, Endpoint::Completions).await
}

async fn chat_completions(State(state): State<Arc<AppState>>, body: axum::body::Bytes) -> Response {
    handle(state, body, Endpoint::Chat).await
}

/// A request turned into token ids and settings, ready to run.
struct Job {
    ids: Vec<u32>,
    config: GenerationConfig,
    sampler: SamplerConfig,
}

fn prepare(state: &AppState, req: &Request, endpoint: Endpoint) -> Result<Job, RequestError> {
    let tokenizer = state.tokenizer;
    // Every field is checked before the model runs.
    let sampler = req.sampler_config(&state.defaults)?;
    let missing = |field, expected| RequestError::Field { field, expected };
    let ids = match (endpoint, req.input()) {
        (Endpoint::Completions, Ok(Input::Prompt(prompt))) => tokenizer.encode(
            &prompt,
            EncodeOptions {
                add_bos: tokenizer.add_bos_token(),
                parse_special: false,
            },
        ),
        (Endpoint::Chat, Ok(Input::Messages(messages))) => {
            let prompt = state
                .template
                .render(&messages, true)
                .map_err(RequestError::Template)?;
            tokenizer.encode_chat(&prompt)
        }
        (Endpoint::Completions, _) => return Err(missing("prompt", "a string")),
        (Endpoint::Chat, _) => return Err(missing("messages", "a non-empty list")),
    };
    if ids.is_empty() {
        return Err(missing("prompt", "a non-empty string"));
    }
    let keep = crate::commands::generate::keep_tokens(state.keep, &ids, tokenizer.bos_id());
    Ok(Job {
        ids,
        config: GenerationConfig {
            max_tokens: req.max_tokens.unwrap_or(Some(state.n_predict)),
            stop: req.stop.clone(),
            ignore_eos: false,
            context_shift: state.ctx_shift.then_some(keep),
        },
        sampler,
    })
}

/// What the generation thread sends to the response.
enum Piece {
    Text(String),
    Done {
        stop: StopReason,
        prompt_tokens: usize,
        completion_tokens: usize,
    },
    Failed(String),
}

async fn handle(state: Arc<AppState>, body: axum::body::Bytes, endpoint: Endpoint) -> Response {
    let req = match Request::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return request_error(&e),
    };
    let job = match prepare(&state, &req, endpoint) {
        Ok(j) => j,
        Err(e) => return request_error(&e),
    };
    let (tx, rx) = mpsc::unbounded_channel();
    let worker_state = Arc::clone(&state);
    tokio::task::spawn_blocking(move || {
        let mut session = match worker_state.session.lock() {
            Ok(s) => s,
            Err(_) => {
                let _ = tx.send(Piece::Failed("the server's session is poisoned".into()));
                return;
            }
        };
        let mut sampler = Sampler::new(job.sampler);
        let result = session.generate(&job.ids, &job.config, &mut sampler, |text| {
            // A client that went away stops the generation.
            match tx.send(Piece::Text(text.to_string())) {
                Ok(()) => ControlFlow::Continue(()),
                Err(_) => ControlFlow::Break(()),
            }
        });
        if let Ok(g) = &result {
            if let Some(note) =
                crate::commands::generate::shift_note(&g.shifts, session.context_size())
            {
                eprintln!("{note}");
            }
        }
        let _ = tx.send(match result {
            Ok(g) => Piece::Done {
                stop: g.stop,
                prompt_tokens: job.ids.len(),
                completion_tokens: g.generated.len(),
            },
            Err(e) => Piece::Failed(e.to_string()),
        });
    });

    let id = format!(
        "{}-{}",
        if endpoint == Endpoint::Chat {
            "chatcmpl"
        } else {
            "cmpl"
        },
        now()
    );
    let created = now();
    let model = state.name.clone();
    if req.stream {
        stream_response(rx, endpoint, id, created, model)
    } else {
        collect_response(rx, endpoint, id, created, model).await
    }
}

async fn collect_response(
    mut rx: mpsc::UnboundedReceiver<Piece>,
    endpoint: Endpoint,
    id: String,
    created: u64,
    model: String,
) -> Response {
    let mut text = String::new();
    while let Some(piece) = rx.recv().await {
        match piece {
            Piece::Text(t) => text.push_str(&t),
            Piece::Failed(e) => return error(StatusCode::BAD_REQUEST, e, None),
            Piece::Done {
                stop,
                prompt_tokens,
                completion_tokens,
            } => {
                let choice = match endpoint {
                    Endpoint::Chat => json!({
                        "index": 0,
                        "message": {"role": "assistant", "content": text},
                        "finish_reason": finish_reason(&stop),
                    }),
                    Endpoint::Completions => json!({
                        "index": 0, "text": text, "finish_reason": finish_reason(&stop),
                    }),
                };
                let object = match endpoint {
                    Endpoint::Chat => "chat.completion",
                    Endpoint::Completions => "text_completion",
                };
                return Json(json!({
                    "id": id, "object": object, "created": created, "model": model,
                    "choices": [choice],
                    "usage": {
                        "prompt_tokens": prompt_tokens,
                        "completion_tokens": completion_tokens,
                        "total_tokens": prompt_tokens + completion_tokens,
                    },
                }))
                .into_response();
            }
        }
    }
    error(
        StatusCode::INTERNAL_SERVER_ERROR,
        "generation ended unexpectedly",
        None,
    )
}

fn stream_response(
    rx: mpsc::UnboundedReceiver<Piece>,
    endpoint: Endpoint,
    id: String,
    created: u64,
    model: String,
) -> Response {
    let object = match endpoint {
        Endpoint::Chat => "chat.completion.chunk",
        Endpoint::Completions => "text_completion",
    };
    let chunk = move |delta: Value, finish: Option<&str>| {
        let choice = match endpoint {
            Endpoint::Chat => json!({"index": 0, "delta": delta, "finish_reason": finish}),
            Endpoint::Completions => json!({
                "index": 0,
                "text": delta.get("content").cloned().unwrap_or(Value::String(String::new())),
                "finish_reason": finish,
            }),
        };
        json!({"id": id, "object": object, "created": created, "model": model, "choices": [choice]})
            .to_string()
    };
    let first = (endpoint == Endpoint::Chat).then(|| chunk(json!({"role": "assistant"}), None));
    let events = UnboundedReceiverStream::new(rx).map(move |piece| {
        let data = match piece {
            Piece::Text(t) => chunk(json!({"content": t}), None),
            Piece::Done { stop, .. } => chunk(json!({}), Some(finish_reason(&stop))),
            Piece::Failed(e) => json!({"error": {"message": e}}).to_string(),
        };
        Ok::<Event, Infallible>(Event::default().data(data))
    });
    let head = tokio_stream::iter(first.map(|d| Ok(Event::default().data(d))));
    let done = tokio_stream::once(Ok(Event::default().data("[DONE]")));
    Sse::new(head.chain(events).chain(done)).into_response()
}
