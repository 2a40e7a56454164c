//! The server's life as an orchestrator sees it: bound before the model loads, ready when it
//! has loaded, draining after SIGTERM.
//!
//! - **Loading.** The port is bound first, so that probes see the state instead of a refused
//!   connection: `/health` answers 503 with llama-server's body for this state (`{"error":
//!   {"code": 503, "message": "Loading model", "type": "unavailable_error"}}`) plus
//!   `"status": "loading"`, every other endpoint a 503 OpenAI error with `Retry-After`.
//! - **Ready.** The API (`super::app`'s router) answers; `/health` is 200 `{"status": "ok", …}`.
//! - **Draining** (SIGTERM or Ctrl-C). The listener stays open, so that late clients get an
//!   answer rather than a refused connection: `/health` and new requests are 503 and every
//!   response says `Connection: close`, so that pooled connections move to other replicas.
//!   Running requests go on for `--shutdown-timeout` seconds; then the rest are ended (a
//!   stream gets a final error event, a non-streaming request a 503, which routers retry on
//!   another replica). When none is left the process exits 0. A second signal ends the running
//!   requests at once.
//!
//! `/livez` answers 200 in every state, without the API key and without a log line: it says
//! only that the process serves HTTP (a liveness probe must not fail while a large model
//! loads, or the orchestrator restarts the load forever).
//!
//! `BITNET_SERVE_HOLD_LOAD=FILE` (for tests only) makes the load wait until FILE exists, so a
//! test can observe the loading state as long as it needs without timing anything.

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::header::{self, HeaderValue};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;
use tokio::sync::oneshot;
use tower::ServiceExt as _;

use super::{log, ops, AppState};

/// The environment variable that holds the model's load until a file exists (tests only).
pub const HOLD_LOAD_VAR: &str = "BITNET_SERVE_HOLD_LOAD";

/// The API once the model has loaded; empty until then.
pub type Ready = Arc<OnceLock<Router>>;

/// The router the connections serve in every state: `/livez`, then the API when it is ready,
/// or the loading answers before.
pub fn front(ready: Ready) -> Router {
    Router::new()
        .route("/livez", get(livez))
        .fallback(dispatch)
        .with_state(ready)
}

async fn livez() -> Response {
    Json(json!({"status": "alive"})).into_response()
}

async fn dispatch(State(ready): State<Ready>, req: Request) -> Response {
    match ready.get() {
        Some(app) => match app.clone().oneshot(req).await {
            Ok(r) => r,
            Err(never) => match never {},
        },
        None => loading(req.uri().path()),
    }
}

/// What every path but `/livez` answers while the model loads.
fn loading(path: &str) -> Response {
    let mut r = if path == "/health" {
        // llama-server's body for this state, and `status` as our ready body has it.
        let body = json!({
            "status": "loading",
            "error": {"code": 503, "message": "Loading model", "type": "unavailable_error"},
        });
        (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
    } else {
        ops::error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the model is loading; try again when /health answers 200",
            None,
        )
    };
    r.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    r
}

/// With [`HOLD_LOAD_VAR`] set: waits until the file it names exists (tests only).
pub fn hold_load_for_tests() {
    let Some(file) = std::env::var_os(HOLD_LOAD_VAR).map(PathBuf::from) else {
        return;
    };
    log(&format!(
        "note: {HOLD_LOAD_VAR} is set: loading waits until {} exists",
        file.display()
    ));
    while !file.exists() {
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The server's course after binding, for `conn::serve` (which stops accepting when it
/// ends): waits for the loaded state (or returns, when the load failed and `loaded` is
/// dropped), then for a signal, then drains as the module documentation says.
pub async fn course(
    loaded: oneshot::Receiver<Arc<AppState>>,
    grace: Duration,
    mut signals: Signals,
) {
    let state = tokio::select! {
        s = loaded => match s {
            Ok(s) => s,
            Err(_) => return,
        },
        () = signals.next() => {
            // Nothing runs yet: nothing to drain.
            log("stopped while loading the model");
            std::process::exit(0);
        }
    };
    signals.next().await;
    log(&format!(
        "shutting down: /health and new requests answer 503; running ones end within \
         {:.1} s (a second signal ends them now)",
        grace.as_secs_f64()
    ));
    state.scheduler.shutdown(grace);
    let joined = Arc::clone(&state);
    let mut drained = tokio::task::spawn_blocking(move || joined.scheduler.join());
    tokio::select! {
        _ = &mut drained => {}
        () = signals.next() => {
            log("second signal: ending running requests now");
            state.scheduler.shutdown(Duration::ZERO);
            let _ = drained.await;
        }
    }
}

/// SIGTERM and SIGINT (Ctrl-C), caught from the moment [`Signals::install`] returns: one that
/// arrives before the server's task first runs is not lost to the default action.
pub struct Signals {
    #[cfg(unix)]
    term: tokio::signal::unix::Signal,
    #[cfg(unix)]
    interrupt: tokio::signal::unix::Signal,
}

impl Signals {
    /// Installs the handlers; must run inside the async runtime's context.
    pub fn install() -> std::io::Result<Signals> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            Ok(Signals {
                term: signal(SignalKind::terminate())?,
                interrupt: signal(SignalKind::interrupt())?,
            })
        }
        #[cfg(not(unix))]
        Ok(Signals {})
    }

    /// The next signal.
    async fn next(&mut self) {
        #[cfg(unix)]
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.interrupt.recv() => {}
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

pub(crate) const CUT_MESSAGE: &str =
    "the server shut down before this generation finished (bitnet serve \
                           --shutdown-timeout); send the request again";

/// The answer to a non-streaming request the drain ended: 503, which routers retry on
/// another replica (the partial text is dropped: a client would take it for the whole).
pub fn cut_by_shutdown() -> Response {
    let mut r = ops::error(StatusCode::SERVICE_UNAVAILABLE, CUT_MESSAGE, None);
    r.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    r
}

/// The last event (before `[DONE]`) of a stream the drain ended: OpenAI's error object, on
/// which the official clients raise, so the cut text is not taken for a finished one.
pub fn cut_by_shutdown_event() -> String {
    json!({"error": {"message": CUT_MESSAGE, "type": "server_error", "param": null,
                     "code": "server_shutdown"}})
    .to_string()
}
