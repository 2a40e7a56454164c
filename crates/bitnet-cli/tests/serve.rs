//! `bitnet serve` end to end over real HTTP on 127.0.0.1: health, models, completions (same
//! text as `generate`), chat completions streamed with SSE and not, and a bad request.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};

use serde_json::Value;

struct Server {
    child: Child,
    addr: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start() -> Server {
    let mut child = Command::new(env!("CARGO_BIN_EXE_bitnet"))
        .args(["serve", "--port", "0", "--temp", "0", "-n", "16"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stderr.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .split("http://")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .unwrap_or_else(|| panic!("no address in {line:?}"))
        .to_string();
    Server { child, addr }
}

/// One HTTP/1.1 request; returns the status and the (de-chunked) body.
fn http(addr: &str, method: &str, path: &str, body: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let raw = String::from_utf8(raw).unwrap();
    let (head, rest) = raw.split_once("\r\n\r\n").unwrap();
    let status: u16 = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        let mut out = String::new();
        let mut rest = rest;
        loop {
            let (size, tail) = rest.split_once("\r\n").unwrap();
            let size = usize::from_str_radix(size.trim(), 16).unwrap();
            if size == 0 {
                break;
            }
            out.push_str(&tail[..size]);
            rest = &tail[size + 2..];
        }
        out
    } else {
        rest.to_string()
    };
    (status, body)
}

#[test]
fn openai_compatible_endpoints() {
    let server = start();
    let a = server.addr.as_str();

    let (status, body) = http(a, "GET", "/health", "");
    assert_eq!((status, body.as_str()), (200, r#"{"status":"ok"}"#));
    let (_, body) = http(a, "GET", "/v1/models", "");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["object"], "list");

    // A completion equals `bitnet generate` with the same greedy settings.
    let (status, body) = http(
        a,
        "POST",
        "/v1/completions",
        r#"{"prompt": "ROMEO:\n", "max_tokens": 12, "temperature": 0}"#,
    );
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_bitnet"))
        .args([
            "generate",
            "-p",
            "ROMEO:\\n",
            "-n",
            "12",
            "--temp",
            "0",
            "--json",
        ])
        .output()
        .unwrap();
    let cli: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["choices"][0]["text"], cli["text"]);
    assert_eq!(v["choices"][0]["finish_reason"], "length");
    assert_eq!(v["usage"]["completion_tokens"], 12);

    // Chat, whole and streamed: the streamed deltas add up to the same reply.
    let request = r#"{"messages": [{"role": "user", "content": "Speak, Romeo"}], "max_tokens": 10, "temperature": 0}"#;
    let (status, body) = http(a, "POST", "/v1/chat/completions", request);
    assert_eq!(status, 200, "{body}");
    let whole: Value = serde_json::from_str(&body).unwrap();
    let reply = whole["choices"][0]["message"]["content"].as_str().unwrap();
    assert!(!reply.is_empty());

    let streamed_request =
        request.replace("\"temperature\": 0", "\"temperature\": 0, \"stream\": true");
    let (status, body) = http(a, "POST", "/v1/chat/completions", &streamed_request);
    assert_eq!(status, 200);
    let events: Vec<&str> = body
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .collect();
    assert_eq!(events.last(), Some(&"[DONE]"));
    let mut text = String::new();
    let mut finish = Value::Null;
    for e in &events[..events.len() - 1] {
        let v: Value = serde_json::from_str(e).unwrap();
        assert_eq!(v["object"], "chat.completion.chunk");
        if let Some(t) = v["choices"][0]["delta"]["content"].as_str() {
            text.push_str(t);
        }
        if !v["choices"][0]["finish_reason"].is_null() {
            finish = v["choices"][0]["finish_reason"].clone();
        }
    }
    assert!(events.len() > 3);
    assert_eq!(text, reply);
    assert_eq!(finish, "length");

    // Bad requests are 400 with an OpenAI-style error.
    let (status, body) = http(a, "POST", "/v1/chat/completions", "{bad json");
    assert_eq!(status, 400);
    let v: Value = serde_json::from_str(&body).unwrap();
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .contains("invalid request"));
    let (status, _) = http(a, "POST", "/v1/chat/completions", r#"{"messages": []}"#);
    assert_eq!(status, 400);

    // Sampler values are checked as on the command line: a 400 naming the field and range.
    for (body, param, text) in [
        (
            r#"{"prompt": "x", "min_p": 5}"#,
            "min_p",
            "`min_p` = 5 is out of range",
        ),
        (
            r#"{"prompt": "x", "temperature": "hot"}"#,
            "temperature",
            "must be a number",
        ),
        (
            r#"{"prompt": "x", "repeat_penalty": 0}"#,
            "repeat_penalty",
            "above 0",
        ),
        (
            r#"{"prompt": "x", "stop": 7}"#,
            "stop",
            "a string or a list",
        ),
    ] {
        let (status, body) = http(a, "POST", "/v1/completions", body);
        assert_eq!(status, 400, "{body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["error"]["param"], param, "{v}");
        assert_eq!(v["error"]["type"], "invalid_request_error");
        assert!(
            v["error"]["message"].as_str().unwrap().contains(text),
            "{v}"
        );
    }
    // The format `batch` reads: `stop` as one string, unknown fields ignored.
    let (status, body) = http(
        a,
        "POST",
        "/v1/completions",
        r#"{"prompt": "ROMEO:\n", "stop": "\n", "max_tokens": 40, "temperature": 0, "model": "m", "user": "u"}"#,
    );
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
}
