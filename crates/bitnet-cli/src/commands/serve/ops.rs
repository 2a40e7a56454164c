//! What surrounds the API: every error as OpenAI's JSON error object, the API key, CORS, one
//! log line per request, the request body's deadline, `/metrics` (Prometheus text format),
//! `/health` and the web page.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::header::{self, HeaderValue};
use axum::http::{Method, StatusCode};
use axum::middleware::Next;
use axum::response::{Html, IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};
use tokio_stream::StreamExt;

use super::AppState;

/// The web chat page (a single file: no build step, no network).
const PAGE: &str = include_str!("chat.html");

/// The largest request body.
pub const MAX_BODY_BYTES: usize = 8 << 20;

/// An OpenAI-shaped error: `{"error": {"message", "type", "param", "code"}}`.
pub fn error(status: StatusCode, message: impl Into<String>, param: Option<&str>) -> Response {
    let (kind, code) = match status {
        StatusCode::UNAUTHORIZED => ("authentication_error", json!("invalid_api_key")),
        StatusCode::NOT_FOUND => ("not_found_error", json!("not_found")),
        StatusCode::SERVICE_UNAVAILABLE => ("server_busy", json!("server_busy")),
        // llama-server's type for what it does not offer.
        StatusCode::NOT_IMPLEMENTED => ("not_supported_error", Value::Null),
        s if s.is_client_error() => ("invalid_request_error", Value::Null),
        _ => ("server_error", Value::Null),
    };
    let body = json!({"error": {
        "message": message.into(), "type": kind, "param": param, "code": code,
    }});
    (status, Json(body)).into_response()
}

/// Figures of one generation request, for its log line and the metrics.
#[derive(Clone, Debug, Default)]
pub struct GenStats {
    pub prompt_tokens: usize,
    pub cached_tokens: usize,
    pub generated_tokens: usize,
    pub time_to_first_token: Option<Duration>,
    pub tokens_per_s: f64,
}

/// What the log line of a request says; the generation handlers fill in `gen`.
#[derive(Default)]
pub struct RequestLog {
    pub gen: Mutex<Option<GenStats>>,
}

impl RequestLog {
    pub fn record(&self, stats: GenStats) {
        *self.gen.lock().unwrap_or_else(|e| e.into_inner()) = Some(stats);
    }
}

/// Counters the server keeps beyond the scheduler's.
#[derive(Default)]
pub struct Metrics {
    /// Requests answered, by path and status.
    requests: Mutex<BTreeMap<(String, u16), u64>>,
    /// Time to first token of finished generations: sum of seconds and count.
    ttft: Mutex<(f64, u64)>,
}

impl Metrics {
    fn count(&self, path: &str, status: u16) {
        // Unknown paths are one label, so random URLs cannot grow the table.
        let known = ["/", "/health", "/metrics", "/v1/models", "/v1/completions"];
        let path = if known.contains(&path) || path == "/v1/chat/completions" {
            path
        } else if path.starts_with("/v1/models/") {
            "/v1/models/{id}"
        } else {
            "other"
        };
        let mut m = self.requests.lock().unwrap_or_else(|e| e.into_inner());
        *m.entry((path.to_string(), status)).or_default() += 1;
    }

    pub fn time_to_first_token(&self, d: Duration) {
        let mut t = self.ttft.lock().unwrap_or_else(|e| e.into_inner());
        t.0 += d.as_secs_f64();
        t.1 += 1;
    }
}

/// Constant-time comparison (a wrong key takes as long to refuse whatever its prefix).
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    let mut diff = a.len() ^ b.len();
    for i in 0..a.len().max(b.len()) {
        let x = a.get(i).copied().unwrap_or(0);
        let y = b.get(i).copied().unwrap_or(0);
        diff |= usize::from(x ^ y);
    }
    diff == 0
}

/// Which browser pages may call the API (`--cors-origin`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Cors {
    /// Any origin, echoed back with credentials allowed: llama-server's and vLLM's default.
    AnyOrigin,
    /// Only these origins (`--cors-origin a,b`).
    Only(Vec<String>),
    /// No CORS headers at all (`--cors-origin none`): browsers keep other pages out.
    Off,
}

impl Cors {
    /// Reads `--cors-origin`: nothing or `*` allows any origin, `none` none, else the list.
    pub fn from_flag(origins: &[String]) -> Result<Cors, String> {
        let origins: Vec<&str> = origins
            .iter()
            .map(|o| o.trim())
            .filter(|o| !o.is_empty())
            .collect();
        if origins.contains(&"none") {
            return match origins.len() {
                1 => Ok(Cors::Off),
                _ => Err("--cors-origin none: cannot be combined with origins".into()),
            };
        }
        if origins.is_empty() || origins.contains(&"*") {
            return Ok(Cors::AnyOrigin);
        }
        Ok(Cors::Only(
            origins.into_iter().map(str::to_string).collect(),
        ))
    }

    fn allows(&self, origin: &str) -> bool {
        match self {
            Cors::AnyOrigin => true,
            Cors::Only(list) => list.iter().any(|a| a == origin),
            Cors::Off => false,
        }
    }
}

/// Whether a path needs the API key: every API route but the page, /health and the model
/// list (public in llama-server too, so that clients can probe a server before they have a
/// key). Paths no route serves never get here (their 404 needs no key, as llama-server keeps
/// everything but its API public).
fn protected(path: &str) -> bool {
    !matches!(path, "/" | "/health" | "/models" | "/v1/models")
}

/// The key a request presents: `Authorization: Bearer KEY`, or `X-Api-Key: KEY` (as
/// Anthropic-style clients send it, and llama-server accepts).
fn presented_key(headers: &axum::http::HeaderMap) -> &str {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let x_api_key = || headers.get("x-api-key").and_then(|v| v.to_str().ok());
    bearer.or_else(x_api_key).unwrap_or("").trim()
}

/// Runs around every request: CORS (a preflight is answered here, before any route and
/// without the API key, which browsers never send on one), errors as JSON, the request log
/// and the request counters. The log line is written when the response body ends (for a
/// stream, when the last event has gone or the client left), so it can carry the token
/// figures.
pub async fn gate(State(state): State<Arc<AppState>>, mut req: Request, next: Next) -> Response {
    let start = Instant::now();
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let allowed_origin = req
        .headers()
        .get(header::ORIGIN)
        .and_then(|o| o.to_str().ok())
        .filter(|o| state.cors.allows(o))
        .map(str::to_string);
    if method == Method::OPTIONS && allowed_origin.is_some() {
        // 200 and `GET, POST` as llama-server answers (its test suite checks both; browsers
        // take either status). The headers asked for are allowed by name: a `*` does not
        // cover `Authorization`, and means nothing at all on a request with credentials.
        let mut r = StatusCode::OK.into_response();
        let h = r.headers_mut();
        h.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static("GET, POST"),
        );
        let asked = req
            .headers()
            .get(header::ACCESS_CONTROL_REQUEST_HEADERS)
            .cloned()
            .unwrap_or(HeaderValue::from_static(
                "authorization, content-type, x-api-key",
            ));
        h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, asked);
        h.insert(
            header::ACCESS_CONTROL_MAX_AGE,
            HeaderValue::from_static("600"),
        );
        return finish(state, r, allowed_origin, method, path, start, None);
    }
    let log = Arc::new(RequestLog::default());
    req.extensions_mut().insert(Arc::clone(&log));
    let r = next.run(req).await;
    let r = json_errors(r, &method).await;
    finish(state, r, allowed_origin, method, path, start, Some(log))
}

/// Runs around the API's routes only (a path no route serves is a 404 without it): the API
/// key, checked before the body is read.
pub async fn require_key(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let refused = state.api_key.as_ref().is_some_and(|key| {
        protected(req.uri().path())
            && !same_secret(presented_key(req.headers()).as_bytes(), key.as_bytes())
    });
    if !refused {
        return next.run(req).await;
    }
    let mut r = error(
        StatusCode::UNAUTHORIZED,
        "Invalid or missing API key: send `Authorization: Bearer KEY` or `X-Api-Key: KEY` \
         (the key given to `bitnet serve --api-key`)",
        None,
    );
    r.headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    r
}

/// Reads the whole request body within `--timeout` before any handler runs: hyper's header
/// timeout ends with the headers, and a client that then sends its body a byte at a time (or
/// promises more than it sends) would otherwise hold its connection for as long as it likes.
/// Too slow is 408, too large 413, a broken body (a bad chunk) 400.
pub async fn read_body(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let (parts, body) = req.into_parts();
    // A body declared too large is still read up to the limit before the 413, as before this
    // deadline: a client whose upload is refused at once meets a reset connection instead of
    // the answer while it is still writing.
    let limited = http_body_util::Limited::new(body, MAX_BODY_BYTES);
    let bytes = match tokio::time::timeout(state.timeout, http_body_util::BodyExt::collect(limited))
        .await
    {
        Ok(Ok(collected)) => collected.to_bytes(),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => return too_large(),
        Ok(Err(e)) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("the request body could not be read: {e}"),
                None,
            )
        }
        Err(_) => {
            let mut r = error(
                StatusCode::REQUEST_TIMEOUT,
                format!(
                    "the request body did not arrive within {:.0} s (bitnet serve --timeout)",
                    state.timeout.as_secs_f64()
                ),
                None,
            );
            r.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
            return r;
        }
    };
    next.run(Request::from_parts(parts, Body::from(bytes)))
        .await
}

fn too_large() -> Response {
    let mut r = error(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!(
            "the request body is too large; the limit is {} MiB",
            MAX_BODY_BYTES >> 20
        ),
        None,
    );
    // The rest of the body is not read: the connection cannot carry another request.
    r.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    r
}

/// Adds the CORS header, counts the request and writes its log line when the body ends.
fn finish(
    state: Arc<AppState>,
    mut response: Response,
    allowed_origin: Option<String>,
    method: Method,
    path: String,
    start: Instant,
    log: Option<Arc<RequestLog>>,
) -> Response {
    if let Some(o) = allowed_origin.and_then(|o| HeaderValue::from_str(&o).ok()) {
        // The origin is echoed, never `*`: credentials are allowed only for a named origin.
        let h = response.headers_mut();
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, o);
        h.insert(
            header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
            HeaderValue::from_static("true"),
        );
        h.insert(header::VARY, HeaderValue::from_static("Origin"));
    }
    if state.scheduler.is_shutting_down() {
        // Draining: a client's pooled connection should take its next request elsewhere.
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    let status = response.status().as_u16();
    state.metrics.count(&path, status);
    let guard = LogLine {
        method,
        path,
        status,
        start,
        log,
    };
    let (parts, body) = response.into_parts();
    let stream = body.into_data_stream().map(move |chunk| {
        // The guard lives as long as the body; its drop writes the line.
        let _ = &guard;
        chunk
    });
    Response::from_parts(parts, Body::from_stream(stream))
}

/// Writes a request's log line when dropped.
struct LogLine {
    method: Method,
    path: String,
    status: u16,
    start: Instant,
    log: Option<Arc<RequestLog>>,
}

impl Drop for LogLine {
    fn drop(&mut self) {
        let mut line = format!(
            "{} {} {} {:.3} s",
            self.method,
            self.path,
            self.status,
            self.start.elapsed().as_secs_f64()
        );
        let gen = self
            .log
            .as_ref()
            .and_then(|l| l.gen.lock().ok().and_then(|g| g.clone()));
        if let Some(g) = gen {
            let _ = write!(
                line,
                " | prompt {} tokens ({} cached), generated {}",
                g.prompt_tokens, g.cached_tokens, g.generated_tokens
            );
            if let Some(t) = g.time_to_first_token {
                let _ = write!(line, ", first token {:.3} s", t.as_secs_f64());
            }
            let _ = write!(line, ", {:.1} t/s", g.tokens_per_s);
        }
        super::log(&line);
    }
}

/// Turns an error response that is not JSON (axum's own 404, 405, 413, 415 …) into OpenAI's
/// error object, keeping its message.
async fn json_errors(response: Response, method: &Method) -> Response {
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let allow = response.headers().get(header::ALLOW).cloned();
    let (_, body) = response.into_parts();
    let text = axum::body::to_bytes(body, 64 << 10)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_string())
        .unwrap_or_default();
    let message = match status {
        StatusCode::METHOD_NOT_ALLOWED => format!(
            "method {method} is not allowed here{}",
            allow
                .as_ref()
                .and_then(|a| a.to_str().ok())
                .map(|a| format!(" (allowed: {a})"))
                .unwrap_or_default()
        ),
        StatusCode::PAYLOAD_TOO_LARGE => {
            format!("the request body is too large ({text}); the limit is 8 MiB")
        }
        _ if text.is_empty() => status.canonical_reason().unwrap_or("error").to_string(),
        _ => text,
    };
    let mut r = error(status, message, None);
    if let Some(a) = allow {
        r.headers_mut().insert(header::ALLOW, a);
    }
    r
}

pub async fn not_found(req: Request) -> Response {
    error(
        StatusCode::NOT_FOUND,
        format!(
            "no such endpoint: {} {} (see /v1/models, /v1/completions, /v1/chat/completions, \
             /health, /metrics)",
            req.method(),
            req.uri().path()
        ),
        None,
    )
}

pub async fn page() -> Html<&'static str> {
    Html(PAGE)
}

pub async fn health(State(state): State<Arc<AppState>>) -> Response {
    let st = state.scheduler.status();
    let slots: Vec<Value> = st
        .slots
        .iter()
        .enumerate()
        .map(|(i, s)| {
            json!({"id": i, "state": s.state.as_str(), "cached_tokens": s.cached_tokens,
                   "n_ctx": s.n_ctx})
        })
        .collect();
    let body = json!({
        "status": if st.shutting_down { "shutting_down" } else { "ok" },
        "model": state.name,
        "slots": slots,
        "slots_idle": st.slots.len() - st.slots_busy(),
        "slots_busy": st.slots_busy(),
        "queued": st.queued,
        "kv_cache_bytes": st.kv_cache_bytes,
        "sleeping": st.sleeping,
    });
    let status = if st.shutting_down {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    (status, Json(body)).into_response()
}

/// Prometheus text exposition format.
pub async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    let st = state.scheduler.status();
    let mut out = String::new();
    let mut metric = |name: &str, kind: &str, help: &str, samples: &[(String, String)]| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (labels, value) in samples {
            let _ = writeln!(out, "{name}{labels} {value}");
        }
    };
    let one = |v: String| vec![(String::new(), v)];
    let requests: Vec<(String, String)> = state
        .metrics
        .requests
        .lock()
        .map(|m| {
            m.iter()
                .map(|((path, status), n)| {
                    (
                        format!("{{path=\"{path}\",status=\"{status}\"}}"),
                        n.to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    metric(
        "bitnet_requests_total",
        "counter",
        "HTTP requests answered, by path and status.",
        &requests,
    );
    metric(
        "bitnet_generations_finished_total",
        "counter",
        "Generations (choices) that ran to their end.",
        &one(st.requests_finished.to_string()),
    );
    metric(
        "bitnet_generations_cancelled_total",
        "counter",
        "Generations ended because their client went away.",
        &one(st.requests_cancelled.to_string()),
    );
    metric(
        "bitnet_prompt_tokens_total",
        "counter",
        "Prompt tokens of admitted generations.",
        &one(st.prompt_tokens.to_string()),
    );
    metric(
        "bitnet_prompt_tokens_cached_total",
        "counter",
        "Prompt tokens served from a slot's cached prefix instead of being run.",
        &one(st.cached_prompt_tokens.to_string()),
    );
    metric(
        "bitnet_generated_tokens_total",
        "counter",
        "Tokens generated.",
        &one(st.generated_tokens.to_string()),
    );
    metric(
        "bitnet_steps_total",
        "counter",
        "Batched forward passes.",
        &one(st.steps.to_string()),
    );
    metric(
        "bitnet_spec_drafted_tokens_total",
        "counter",
        "Speculative decoding (--spec ngram): tokens drafted.",
        &one(st.spec_drafted_tokens.to_string()),
    );
    metric(
        "bitnet_spec_accepted_tokens_total",
        "counter",
        "Speculative decoding: drafted tokens accepted (each one a forward pass saved).",
        &one(st.spec_accepted_tokens.to_string()),
    );
    metric(
        "bitnet_busy_seconds_total",
        "counter",
        "Seconds spent in forward passes.",
        &one(format!("{:.6}", st.busy_seconds)),
    );
    metric(
        "bitnet_generation_tokens_per_second",
        "gauge",
        "Generated tokens per second over recent steps, all slots together (0 when idle).",
        &one(format!("{:.3}", st.generation_tokens_per_s)),
    );
    metric(
        "bitnet_queue_depth",
        "gauge",
        "Requests waiting for a free slot.",
        &one(st.queued.to_string()),
    );
    metric(
        "bitnet_slots_busy",
        "gauge",
        "Slots running a request.",
        &one(st.slots_busy().to_string()),
    );
    metric(
        "bitnet_slots_total",
        "gauge",
        "Slots (--parallel).",
        &one(st.slots.len().to_string()),
    );
    metric(
        "bitnet_kv_cache_bytes",
        "gauge",
        "Bytes of KV cache allocated for all slots.",
        &one(st.kv_cache_bytes.to_string()),
    );
    metric(
        "bitnet_sleeping",
        "gauge",
        "1 while the model and KV caches are unloaded after --sleep-idle-seconds idle (the \
         next request loads them again), else 0.",
        &one(u8::from(st.sleeping).to_string()),
    );
    metric(
        "bitnet_sleeps_total",
        "counter",
        "Times the server unloaded the model after --sleep-idle-seconds idle.",
        &one(st.sleeps.to_string()),
    );
    let (sum, count) = state.metrics.ttft.lock().map(|t| *t).unwrap_or((0.0, 0));
    metric(
        "bitnet_time_to_first_token_seconds",
        "summary",
        "Time from a request's arrival to its first generated token.",
        // A summary's samples are named with suffixes (`_sum`, `_count`), not labels.
        &[
            ("_sum".to_string(), format!("{sum:.6}")),
            ("_count".to_string(), count.to_string()),
        ],
    );
    super::router_metrics::write(&mut out, &st, &state.name);
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        out,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::same_secret;

    #[test]
    fn secrets_compare_whole() {
        assert!(same_secret(b"abc", b"abc"));
        assert!(!same_secret(b"abc", b"abd"));
        assert!(!same_secret(b"abc", b"ab"));
        assert!(!same_secret(b"", b"a"));
        assert!(same_secret(b"", b""));
    }
}
