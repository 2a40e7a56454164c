//! Anthropic's Messages API over HTTP (`POST /v1/messages`, `POST /v1/messages/count_tokens`):
//! the library's [`bitnet::generate::anthropic`] translates the request into a chat
//! completion and the chat reply into a message or its events; this module reads the body,
//! plans and submits as `/v1/chat/completions` does, and sends the answer with Anthropic's
//! error shape (`{"type": "error", "error": {"type", "message"}}`).

use std::convert::Infallible;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::sse::{Event as SseEvent, Sse};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use bitnet::generate::anthropic::{self, error_body, Message, StreamEvent};
use bitnet::generate::openai::Reply;
use bitnet::generate::{Request, RequestError, SubmitError};
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tokio_stream::StreamExt;

use super::openai::{self, Endpoint, Submitted};
use super::ops::RequestLog;
use super::AppState;

fn fail(status: StatusCode, message: impl AsRef<str>) -> Response {
    (status, Json(error_body(status.as_u16(), message.as_ref()))).into_response()
}

fn request_error(e: &RequestError) -> Response {
    let message = match e {
        RequestError::Json(_) | RequestError::InvalidUtf8 { .. } => format!("invalid request: {e}"),
        RequestError::ExceedsContext { .. } => format!("{e} (bitnet serve -c)"),
        _ => e.to_string(),
    };
    fail(StatusCode::BAD_REQUEST, message)
}

fn submit_error(e: &SubmitError) -> Response {
    match e {
        SubmitError::Busy { .. } => {
            let mut r = fail(StatusCode::SERVICE_UNAVAILABLE, e.to_string());
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            r
        }
        SubmitError::ShuttingDown => fail(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
        _ => fail(StatusCode::BAD_REQUEST, e.to_string()),
    }
}

/// The body as a chat request, planned against this server: every field checked before
/// anything runs.
fn plan(
    state: &AppState,
    body: &[u8],
    endpoint: anthropic::Endpoint,
) -> Result<(Request, openai::Plan), Box<Response>> {
    let parsed = std::str::from_utf8(body)
        .map_err(|e| RequestError::InvalidUtf8 {
            at: e.valid_up_to(),
        })
        .and_then(|text| Ok(serde_json::from_str::<Value>(text)?))
        .and_then(|v| anthropic::to_chat(&v, endpoint))
        .and_then(|chat| Request::from_value(&chat));
    let req = parsed.map_err(|e| Box::new(request_error(&e)))?;
    if let Err(e) = &state.template {
        return Err(Box::new(fail(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!(
                "this server cannot render conversations: its chat template does not compile \
                 ({e}); restart it with --chat-template"
            ),
        )));
    }
    let plan =
        openai::plan(state, &req, Endpoint::Chat).map_err(|e| Box::new(request_error(&e)))?;
    Ok((req, plan))
}

/// `POST /v1/messages/count_tokens`: the prompt's tokens as the chat template renders the
/// same request for generation.
pub async fn count_tokens(State(state): State<Arc<AppState>>, body: Bytes) -> Response {
    match plan(&state, &body, anthropic::Endpoint::CountTokens) {
        Ok((_, plan)) => {
            let n: usize = plan.prompts.iter().map(|p| p.ids.len()).sum();
            Json(json!({"input_tokens": n})).into_response()
        }
        Err(r) => *r,
    }
}

/// `POST /v1/messages`.
pub async fn messages(
    State(state): State<Arc<AppState>>,
    Extension(log): Extension<Arc<RequestLog>>,
    body: Bytes,
) -> Response {
    let (req, plan) = match plan(&state, &body, anthropic::Endpoint::Messages) {
        Ok(p) => p,
        Err(r) => return *r,
    };
    let jobs = match openai::jobs(&state, &req, &plan) {
        Ok(j) => j,
        Err(e) => return request_error(&e),
    };
    let Submitted { tickets, mut rx } = match openai::submit(&state, jobs) {
        Ok(s) => s,
        Err(e) => return submit_error(&e),
    };
    let reply = Reply::new(
        Arc::clone(&state.tokenizer),
        Endpoint::Chat,
        &state.name,
        state.scheduler.context_size(),
        plan,
    );
    let mut message = Message::new(reply);
    if req.stream {
        let (out, out_rx) = mpsc::unbounded_channel::<StreamEvent>();
        tokio::spawn(async move {
            let _tickets = tickets;
            while !message.is_done() {
                let event = tokio::select! {
                    e = rx.recv() => match e {
                        Some((_, e)) => e,
                        None => break,
                    },
                    // The client left: dropping the tickets cancels the generation.
                    _ = out.closed() => break,
                };
                match message.event(event) {
                    Ok(mut events) => {
                        // A drain that cut the reply ends the stream with an error, not with
                        // a `message_stop` a client would take for the whole reply.
                        if message.reply().cut_by_shutdown() {
                            events.retain(|(name, _)| !name.starts_with("message_"));
                        }
                        if events.into_iter().any(|e| out.send(e).is_err()) {
                            break;
                        }
                    }
                    Err(e) => {
                        let _ = out.send(("error", error_body(500, &e)));
                        break;
                    }
                }
            }
            openai::record(&state, &log, message.reply());
            if message.reply().cut_by_shutdown() {
                let _ = out.send(("error", error_body(503, super::lifecycle::CUT_MESSAGE)));
            }
        });
        let events = UnboundedReceiverStream::new(out_rx).map(|(name, data)| {
            Ok::<SseEvent, Infallible>(SseEvent::default().event(name).data(data.to_string()))
        });
        return Sse::new(events).into_response();
    }
    while !message.is_done() {
        let Some((_, event)) = rx.recv().await else {
            break;
        };
        if let Err(e) = message.event(event) {
            return fail(StatusCode::INTERNAL_SERVER_ERROR, e);
        }
    }
    drop(tickets);
    if !message.is_done() {
        return fail(
            StatusCode::INTERNAL_SERVER_ERROR,
            "generation ended unexpectedly",
        );
    }
    openai::record(&state, &log, message.reply());
    if message.reply().cut_by_shutdown() {
        return fail(
            StatusCode::SERVICE_UNAVAILABLE,
            super::lifecycle::CUT_MESSAGE,
        );
    }
    Json(message.message()).into_response()
}
