//! The OpenAI API over HTTP: the library's [`bitnet::generate::openai`] plans a request's jobs
//! and shapes its responses (the Python package answers through the same functions); this
//! module reads the body, submits the jobs to the scheduler and sends the answer, whole or
//! as server-sent events.

use std::convert::Infallible;
use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::UNIX_EPOCH;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::sse::{Event as SseEvent, Sse};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use bitnet::generate::openai::{self as shape, Reply, Settings};
use bitnet::generate::scheduler::{Event, Sink};
use bitnet::generate::{Job, Request, RequestError, SubmitError, Ticket};
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tokio_stream::StreamExt;

use super::ops::{error, GenStats, RequestLog};
use super::AppState;

pub(crate) use bitnet::generate::openai::{Endpoint, Plan};

impl AppState {
    /// What the library plans this server's requests against.
    pub(crate) fn settings(&self) -> Settings<'_> {
        Settings {
            tokenizer: &self.tokenizer,
            template: self.template.as_ref().map_err(String::as_str),
            constraints: &self.constraints,
            defaults: &self.defaults,
            fixed_seed: self.fixed_seed,
            n_predict: self.n_predict,
            context_shift: self.ctx_shift.then_some(self.keep),
            n_ctx: self.scheduler.context_size(),
        }
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

/// The model in OpenAI's shape; with `--alias`/`--tags`, llama-server's `aliases` and `tags`.
fn model_object(state: &AppState) -> Value {
    let created = state
        .started
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut model =
        json!({"id": state.name, "object": "model", "created": created, "owned_by": "bitnet-rust"});
    if !state.aliases.is_empty() {
        model["aliases"] = json!(state.aliases);
    }
    if !state.tags.is_empty() {
        model["tags"] = json!(state.tags);
    }
    model
}

pub async fn model(State(state): State<Arc<AppState>>, Path(id): Path<String>) -> Response {
    if id == state.name || state.aliases.contains(&id) {
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

/// `POST /v1/chat/completions/input_tokens` (and `/chat/completions/input_tokens`, as
/// llama-server serves it): `{"input_tokens": N}`, the tokens the chat request's prompt takes
/// once rendered, checked by the same plan as the chat endpoint without running anything. A
/// prompt longer than the context is still counted: clients ask in order to trim it.
pub async fn chat_input_tokens(State(state): State<Arc<AppState>>, body: Bytes) -> Response {
    let req = match Request::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return request_error(&e),
    };
    if let Err(e) = &state.template {
        return error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("this server's chat template does not compile ({e})"),
            None,
        );
    }
    match plan(&state, &req, Endpoint::Chat) {
        Ok(plan) => {
            let n: usize = plan.prompts.iter().map(|p| p.ids.len()).sum();
            Json(json!({"input_tokens": n})).into_response()
        }
        Err(RequestError::ExceedsContext {
            n_prompt_tokens, ..
        }) => Json(json!({"input_tokens": n_prompt_tokens})).into_response(),
        Err(e) => request_error(&e),
    }
}

/// The library's [`shape::plan`] against this server's settings.
pub(crate) fn plan(
    state: &AppState,
    req: &Request,
    endpoint: Endpoint,
) -> Result<Plan, RequestError> {
    shape::plan(&state.settings(), req, endpoint)
}

/// The library's [`shape::jobs`] against this server's settings.
pub(crate) fn jobs(state: &AppState, req: &Request, plan: &Plan) -> Result<Vec<Job>, RequestError> {
    shape::jobs(&state.settings(), req, plan)
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
        SubmitError::NoSuchSlot { .. } => {
            error(StatusCode::BAD_REQUEST, e.to_string(), Some("id_slot"))
        }
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
    let reply = Reply::new(
        Arc::clone(&state.tokenizer),
        endpoint,
        &state.name,
        state.scheduler.context_size(),
        plan,
    );
    if req.stream {
        stream(state, log, reply, tickets, rx)
    } else {
        collect(&state, &log, reply, tickets, rx).await
    }
}

/// Records a request's figures for its log line and the metrics, once all choices are done
/// (or its client left).
pub(crate) fn record(state: &AppState, log: &RequestLog, reply: &Reply) {
    let done: Vec<_> = reply.finished().collect();
    let ttft = done.iter().map(|f| f.time_to_first_token).min();
    if let Some(t) = ttft {
        state.metrics.time_to_first_token(t);
    }
    let tps = done
        .iter()
        .map(|f| f.generation_tokens_per_s())
        .fold(0.0, f64::max);
    log.record(GenStats {
        prompt_tokens: reply.plan.prompts.iter().map(|p| p.ids.len()).sum(),
        cached_tokens: done.iter().map(|f| f.cached_tokens).sum(),
        generated_tokens: done.iter().map(|f| f.generated_tokens).sum(),
        time_to_first_token: ttft,
        tokens_per_s: tps,
    });
}

async fn collect(
    state: &AppState,
    log: &RequestLog,
    mut reply: Reply,
    tickets: Vec<Ticket>,
    mut rx: mpsc::UnboundedReceiver<(usize, Event)>,
) -> Response {
    while !reply.is_done() {
        let Some((i, event)) = rx.recv().await else {
            break;
        };
        if let Err(e) = reply.event(i, event) {
            return error(StatusCode::INTERNAL_SERVER_ERROR, e, None);
        }
    }
    drop(tickets);
    if !reply.is_done() {
        return error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "generation ended unexpectedly",
            None,
        );
    }
    record(state, log, &reply);
    if reply.cut_by_shutdown() {
        return super::lifecycle::cut_by_shutdown();
    }
    Json(reply.response()).into_response()
}

/// Server-sent events: a translating task turns the scheduler's events into chunks; when the
/// client goes away the task sees its channel close and drops the tickets, which cancels the
/// choices at the scheduler's next step.
fn stream(
    state: Arc<AppState>,
    log: Arc<RequestLog>,
    reply: Reply,
    tickets: Vec<Ticket>,
    rx: mpsc::UnboundedReceiver<(usize, Event)>,
) -> Response {
    let (out, out_rx) = mpsc::unbounded_channel::<String>();
    tokio::spawn(translate(state, log, reply, tickets, rx, out));
    let events = UnboundedReceiverStream::new(out_rx)
        .map(|data| Ok::<SseEvent, Infallible>(SseEvent::default().data(data)));
    Sse::new(events).into_response()
}

async fn translate(
    state: Arc<AppState>,
    log: Arc<RequestLog>,
    mut reply: Reply,
    tickets: Vec<Ticket>,
    mut rx: mpsc::UnboundedReceiver<(usize, Event)>,
    out: mpsc::UnboundedSender<String>,
) {
    if let Some(first) = reply.role_chunk() {
        if out.send(first.to_string()).is_err() {
            return;
        }
    }
    while !reply.is_done() {
        let (i, event) = tokio::select! {
            e = rx.recv() => match e {
                Some(e) => e,
                None => break,
            },
            _ = out.closed() => {
                // The client left: the log line shows what was done for it.
                record(&state, &log, &reply);
                return;
            }
        };
        match reply.event(i, event) {
            Ok(None) => {}
            Ok(Some(chunk)) => {
                if out.send(chunk.to_string()).is_err() {
                    return;
                }
            }
            Err(e) => {
                let _ = out.send(
                    json!({"error": {"message": e, "type": "server_error", "param": null,
                                     "code": null}})
                    .to_string(),
                );
                return;
            }
        }
    }
    drop(tickets);
    record(&state, &log, &reply);
    if let Some(usage) = reply.usage_chunk() {
        let _ = out.send(usage.to_string());
    }
    if reply.cut_by_shutdown() {
        let _ = out.send(super::lifecycle::cut_by_shutdown_event());
    }
    let _ = out.send("[DONE]".to_string());
}
