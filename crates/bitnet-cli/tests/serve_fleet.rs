//! `bitnet serve` as one replica among many, over real HTTP on 127.0.0.1: the port bound while
//! the model loads (`/health` 503 "loading", `/livez` 200, the API 503), the metrics routers
//! read (vLLM's and llama-server's names, with the values the server's state implies), and the
//! drain on SIGTERM (readiness and new requests 503, running requests finish or are ended,
//! exit 0). Three replicas behind a real LiteLLM proxy: `tests/replicas/` (run by `.ci/run`).

use std::io::Read;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

mod common;
use common::{drain, http_with, json, next_event, read_until, spawn, start_with, Server};

/// One request; returns the status, the lower-cased head and the body.
fn http(addr: &str, method: &str, path: &str, body: &str) -> (u16, String, String) {
    let (status, head, body) = http_with(addr, method, path, &[], body);
    (status, head.to_ascii_lowercase(), body)
}

/// Starts a streaming request that must be accepted (200).
fn open_stream(addr: &str, path: &str, body: &str) -> std::io::BufReader<std::net::TcpStream> {
    let (status, r) = common::open_stream(addr, path, body);
    assert_eq!(status, 200);
    r
}

/// The value of the sample `name` (with its labels, if any) in a Prometheus text page.
fn sample(page: &str, name: &str) -> f64 {
    page.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| {
            let (key, value) = l.rsplit_once(' ')?;
            let bare = key.split('{').next()?;
            (bare == name).then(|| value.parse().unwrap())
        })
        .unwrap_or_else(|| panic!("no {name} in:\n{page}"))
}

fn metrics(addr: &str) -> String {
    let (status, _, body) = http(addr, "GET", "/metrics", "");
    assert_eq!(status, 200, "{body}");
    body
}

/// Polls `/health` until no slot is busy and nothing waits (a cancelled request leaves at
/// the scheduler's next step).
fn wait_idle(addr: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let h = json(&http(addr, "GET", "/health", "").2);
        if h["slots_busy"] == 0 && h["queued"] == 0 {
            return;
        }
        assert!(Instant::now() < deadline, "still busy: {h}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

const LONG_STREAM: &str = r#"{"prompt": "ROMEO:\n", "max_tokens": 100000, "stream": true}"#;

#[test]
fn the_port_answers_while_the_model_loads() {
    let dir = std::env::temp_dir().join(format!("bitnet-hold-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let hold = dir.join("go");
    let _ = std::fs::remove_file(&hold);
    let (child, mut stderr) = spawn(
        &["--temp", "0", "-n", "4"],
        &[("BITNET_SERVE_HOLD_LOAD", hold.to_str().unwrap())],
    );
    // A server that bound its port only after loading would never print "bound" while the
    // load is held: release the hold after a minute so that this test fails instead of
    // hanging.
    let release = hold.clone();
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(60));
        let _ = std::fs::write(release, "");
    });
    let mut seen = String::new();
    let line = read_until(&mut stderr, &mut seen, "bound ");
    assert!(!line.contains("http://"), "{line}");
    let addr = line
        .split("bound ")
        .nth(1)
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    let mut server = Server {
        child,
        addr: addr.clone(),
        log: Arc::new(Mutex::new(String::new())),
    };
    let (status, _, body) = http(&addr, "GET", "/livez", "");
    assert_eq!(status, 200, "{body}");
    // llama-server's answer while loading, with our "status".
    let (status, head, body) = http(&addr, "GET", "/health", "");
    assert_eq!(status, 503, "{body}");
    assert!(head.contains("retry-after: 1"), "{head}");
    let h = json(&body);
    assert_eq!(h["status"], "loading");
    assert_eq!(h["error"]["message"], "Loading model");
    assert_eq!(h["error"]["type"], "unavailable_error");
    for (method, path) in [
        ("POST", "/v1/completions"),
        ("POST", "/v1/chat/completions"),
        ("GET", "/v1/models"),
        ("GET", "/metrics"),
    ] {
        let (status, _, body) = http(&addr, method, path, r#"{"prompt": "x"}"#);
        assert_eq!(status, 503, "{method} {path}: {body}");
        let e = json(&body);
        assert!(
            e["error"]["message"].as_str().unwrap().contains("loading"),
            "{body}"
        );
    }
    assert!(!seen.contains("http://"), "ready before the hold: {seen}");
    std::fs::write(&hold, "").unwrap();
    let line = read_until(&mut stderr, &mut seen, "http://");
    assert!(line.contains(&addr), "{line} (bound {addr})");
    drain(stderr, Arc::clone(&server.log));
    let (status, _, body) = http(&addr, "GET", "/health", "");
    assert_eq!(status, 200, "{body}");
    assert_eq!(json(&body)["status"], "ok");
    let (status, _, _) = http(&addr, "GET", "/livez", "");
    assert_eq!(status, 200);
    let (status, _, body) = http(
        &addr,
        "POST",
        "/v1/completions",
        r#"{"prompt": "ROMEO:\n", "max_tokens": 3}"#,
    );
    assert_eq!(status, 200, "{body}");
    // SIGTERM while loading is a clean exit too (nothing runs yet) — here after the load, the
    // ordinary drain with nothing in flight.
    // SAFETY: signalling our own child process.
    unsafe { libc::kill(server.child.id() as i32, libc::SIGTERM) };
    assert!(server.child.wait().unwrap().success());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn sigterm_while_loading_exits_zero_at_once() {
    let dir = std::env::temp_dir().join(format!("bitnet-hold2-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let hold = dir.join("never");
    let (mut child, mut stderr) = spawn(&[], &[("BITNET_SERVE_HOLD_LOAD", hold.to_str().unwrap())]);
    let mut seen = String::new();
    read_until(&mut stderr, &mut seen, "bound ");
    read_until(&mut stderr, &mut seen, "loading waits");
    // SAFETY: signalling our own child process.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = child.wait().unwrap();
    assert!(status.success(), "{status:?}");
    let mut rest = String::new();
    stderr.read_to_string(&mut rest).unwrap();
    assert!(rest.contains("stopped while loading"), "{seen}{rest}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// The names the Gateway API Inference Extension's endpoint picker reads for vLLM, and
/// llama-server's, with the values the server's state implies: one request generating in
/// the only slot and two waiting.
#[test]
fn router_metrics_show_the_queue_the_running_and_the_kv_cache() {
    let server = start_with(&["--parallel", "1", "--temp", "0", "--ctx-shift"]);
    let a = server.addr.as_str();
    let page = metrics(a);
    for (name, kind) in [
        ("vllm:num_requests_waiting", "gauge"),
        ("vllm:num_requests_running", "gauge"),
        ("vllm:kv_cache_usage_perc", "gauge"),
        ("vllm:gpu_cache_usage_perc", "gauge"),
        ("vllm:prefix_cache_queries_total", "counter"),
        ("vllm:prefix_cache_hits_total", "counter"),
        ("llamacpp:requests_deferred", "gauge"),
        ("llamacpp:requests_processing", "gauge"),
        ("llamacpp:n_decode_total", "counter"),
    ] {
        assert!(
            page.contains(&format!("# TYPE {name} {kind}\n")),
            "{name} {kind}:\n{page}"
        );
    }
    assert!(
        page.contains(
            "vllm:num_requests_waiting{model_name=\"bitnet-shakespeare-7m-i2_s.gguf\"} 0\n"
        ),
        "{page}"
    );
    assert_eq!(sample(&page, "vllm:kv_cache_usage_perc"), 0.0);

    let mut running = open_stream(a, "/v1/completions", LONG_STREAM);
    for _ in 0..3 {
        assert!(next_event(&mut running).is_some());
    }
    // A stream's head comes back once the request is queued: these two wait for the only
    // slot.
    let mut waiting = open_stream(a, "/v1/completions", LONG_STREAM);
    let waiting_too = open_stream(a, "/v1/completions", LONG_STREAM);
    let page = metrics(a);
    assert_eq!(sample(&page, "vllm:num_requests_waiting"), 2.0, "{page}");
    assert_eq!(sample(&page, "vllm:num_requests_running"), 1.0, "{page}");
    assert_eq!(sample(&page, "llamacpp:requests_deferred"), 2.0);
    assert_eq!(sample(&page, "llamacpp:requests_processing"), 1.0);
    let usage = sample(&page, "vllm:kv_cache_usage_perc");
    assert!(usage > 0.0 && usage <= 1.0, "{usage}");
    assert_eq!(sample(&page, "vllm:gpu_cache_usage_perc"), usage);
    // The fraction is of the positions /health reports.
    let health = json(&http(a, "GET", "/health", "").2);
    let n_ctx = health["slots"][0]["n_ctx"].as_f64().unwrap();
    let used = sample(&page, "llamacpp:kv_cache_tokens");
    assert!(
        (usage - used / n_ctx).abs() < 1e-5,
        "{usage} vs {used}/{n_ctx}"
    );
    assert!(sample(&page, "llamacpp:n_busy_slots_per_decode") >= 1.0);
    drop(running);
    // The first waiting one takes the slot.
    assert!(next_event(&mut waiting).is_some());
    drop(waiting_too);
    drop(waiting);
    wait_idle(a);
    let page = metrics(a);
    assert_eq!(sample(&page, "vllm:num_requests_waiting"), 0.0);
    assert_eq!(sample(&page, "vllm:num_requests_running"), 0.0);
    assert_eq!(sample(&page, "vllm:kv_cache_usage_perc"), 0.0);

    // Prefix cache: the same prompt twice; the hits are the cached tokens the responses
    // report, the queries their prompt tokens.
    let before = (
        sample(&page, "vllm:prefix_cache_queries_total"),
        sample(&page, "vllm:prefix_cache_hits_total"),
    );
    let body =
        r#"{"prompt": "JULIET:\nO Romeo, Romeo! wherefore art thou Romeo?\n", "max_tokens": 2}"#;
    let mut prompt = 0.0;
    let mut cached = 0.0;
    for _ in 0..2 {
        let (status, _, r) = http(a, "POST", "/v1/completions", body);
        assert_eq!(status, 200, "{r}");
        let u = &json(&r)["usage"];
        prompt += u["prompt_tokens"].as_f64().unwrap();
        cached += u["prompt_tokens_details"]["cached_tokens"]
            .as_f64()
            .unwrap();
    }
    assert!(cached > 0.0);
    let page = metrics(a);
    assert_eq!(
        sample(&page, "vllm:prefix_cache_queries_total") - before.0,
        prompt
    );
    assert_eq!(
        sample(&page, "vllm:prefix_cache_hits_total") - before.1,
        cached
    );
}

/// SIGTERM: readiness and new requests 503 at once (the port still answers), a request that
/// ends within --shutdown-timeout finishes normally, the rest are ended (a stream with a
/// final error event, a non-streaming request with a 503 a router retries), exit 0.
#[cfg(unix)]
#[test]
fn sigterm_drains_then_exits_zero() {
    let server = start_with(&[
        "--parallel",
        "3",
        "--temp",
        "0",
        "--ctx-shift",
        "--shutdown-timeout",
        "5",
    ]);
    let mut server = server;
    let a = server.addr.clone();
    // Generates until the drain ends it.
    let mut endless = open_stream(
        &a,
        "/v1/chat/completions",
        &LONG_STREAM.replace(
            r#""prompt": "ROMEO:\n""#,
            r#""messages": [{"role": "user", "content": "Speak"}]"#,
        ),
    );
    assert!(next_event(&mut endless).is_some());
    // Ends by itself, well within the 5 s.
    let mut short = open_stream(
        &a,
        "/v1/completions",
        r#"{"prompt": "ROMEO:\n", "max_tokens": 40, "ignore_eos": true, "stream": true}"#,
    );
    assert!(next_event(&mut short).is_some());
    // A non-streaming request that would never end.
    let addr = a.clone();
    let pending = std::thread::spawn(move || {
        http(
            &addr,
            "POST",
            "/v1/completions",
            r#"{"prompt": "KING LEAR:\n", "max_tokens": 100000}"#,
        )
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    while json(&http(&a, "GET", "/health", "").2)["slots_busy"] != 3 {
        assert!(Instant::now() < deadline, "the third request never ran");
        std::thread::sleep(Duration::from_millis(10));
    }
    // SAFETY: signalling our own child process.
    unsafe { libc::kill(server.child.id() as i32, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(60);
    while !server.log.lock().unwrap().contains("shutting down") {
        assert!(Instant::now() < deadline, "no drain");
        std::thread::sleep(Duration::from_millis(10));
    }
    let (status, head, body) = http(&a, "GET", "/health", "");
    assert_eq!(status, 503, "{body}");
    assert_eq!(json(&body)["status"], "shutting_down");
    assert!(head.contains("connection: close"), "{head}");
    let (status, _, _) = http(&a, "GET", "/livez", "");
    assert_eq!(status, 200);
    let (status, _, body) = http(&a, "POST", "/v1/completions", r#"{"prompt": "x"}"#);
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("shutting down"), "{body}");
    let metrics_page = metrics(&a);
    assert_eq!(sample(&metrics_page, "bitnet_shutting_down"), 1.0);

    // The short stream ends as it would have.
    let mut events = Vec::new();
    while let Some(e) = next_event(&mut short) {
        events.push(e);
    }
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    assert!(
        !events.iter().any(|e| e.contains("\"error\"")),
        "{events:?}"
    );
    let last = json(&events[events.len() - 2]);
    assert_eq!(last["choices"][0]["finish_reason"], "length", "{events:?}");
    // The endless one is ended: its finish chunk, then an error event, then [DONE].
    let mut events = Vec::new();
    while let Some(e) = next_event(&mut endless) {
        events.push(e);
    }
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    let error = json(&events[events.len() - 2]);
    assert_eq!(error["error"]["code"], "server_shutdown", "{events:?}");
    // The non-streaming one: 503, for a router to send it elsewhere.
    let (status, _, body) = pending.join().unwrap();
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("shut down before"), "{body}");
    let status = server.child.wait().unwrap();
    assert!(status.success(), "{status:?}");
    assert!(server.log.lock().unwrap().contains("stopped"));
}
