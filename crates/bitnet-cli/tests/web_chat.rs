//! The web chat page at `/`, in a real headless Chromium driven through WebDriver
//! (chromedriver): type a system prompt and a message, send, read the streamed reply from the
//! page (it must equal the API's answer to the same conversation), stop a long reply with the
//! Stop button, and start a new chat. A screenshot is written to `$BITNET_SCREENSHOT` (or the
//! temporary directory).
//!
//! Needs Debian's `chromium` and `chromium-driver` (`.ci/run` installs them and sets
//! `BITNET_REQUIRE_BROWSER=1`, which turns a missing browser into a failure; elsewhere the
//! test says it was skipped).

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_server() -> (Killed, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_bitnet"))
        .args(["serve", "--port", "0"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let addr = loop {
        let mut line = String::new();
        assert!(stderr.read_line(&mut line).unwrap() > 0, "server ended");
        if let Some(a) = line
            .split("http://")
            .nth(1)
            .and_then(|s| s.split_whitespace().next())
        {
            break a.to_string();
        }
    };
    std::thread::spawn(move || {
        let mut line = String::new();
        while stderr.read_line(&mut line).unwrap_or(0) > 0 {
            line.clear();
        }
    });
    (Killed(child), addr)
}

/// A minimal WebDriver client (W3C protocol, JSON over HTTP).
struct Driver {
    base: String,
    session: String,
    _chromedriver: Killed,
    _profile: TempDir,
}

struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

fn call(method: &str, url: &str, body: Option<Value>) -> Value {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(60)))
        .build()
        .into();
    let response = match (method, body) {
        ("GET", _) => agent.get(url).call(),
        ("DELETE", _) => agent.delete(url).call(),
        (_, body) => agent
            .post(url)
            .header("Content-Type", "application/json")
            .send(body.unwrap_or(json!({})).to_string()),
    };
    let mut response = response.unwrap_or_else(|e| panic!("{method} {url}: {e}"));
    let text = response.body_mut().read_to_string().unwrap();
    let v: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{url}: {e}: {text}"));
    assert!(
        response.status().is_success(),
        "{method} {url}: {} {text}",
        response.status()
    );
    v["value"].clone()
}

impl Driver {
    fn start(chromedriver: &Path, chromium: &Path) -> Driver {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(chromedriver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let child = Killed(child);
        let base = format!("http://127.0.0.1:{port}");
        let start = Instant::now();
        loop {
            let agent: ureq::Agent = ureq::Agent::config_builder()
                .http_status_as_error(false)
                .build()
                .into();
            if agent.get(format!("{base}/status")).call().is_ok() {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "chromedriver did not start"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        let profile = std::env::temp_dir().join(format!("bitnet-chromium-{}", std::process::id()));
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium,
                "args": [
                    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                    "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
                    "--window-size=1000,760",
                    format!("--user-data-dir={}", profile.display()),
                ],
            },
        }}});
        let session = call("POST", &format!("{base}/session"), Some(caps));
        let session = session["sessionId"].as_str().unwrap().to_string();
        Driver {
            base,
            session,
            _chromedriver: child,
            _profile: TempDir(profile),
        }
    }

    fn url(&self, rest: &str) -> String {
        format!("{}/session/{}{rest}", self.base, self.session)
    }

    fn go(&self, url: &str) {
        call("POST", &self.url("/url"), Some(json!({"url": url})));
    }

    fn find(&self, css: &str) -> String {
        let v = call(
            "POST",
            &self.url("/element"),
            Some(json!({"using": "css selector", "value": css})),
        );
        v[ELEMENT].as_str().unwrap().to_string()
    }

    fn click(&self, css: &str) {
        let e = self.find(css);
        call("POST", &self.url(&format!("/element/{e}/click")), None);
    }

    fn clear(&self, css: &str) {
        let e = self.find(css);
        call("POST", &self.url(&format!("/element/{e}/clear")), None);
    }

    fn type_into(&self, css: &str, text: &str) {
        let e = self.find(css);
        call(
            "POST",
            &self.url(&format!("/element/{e}/value")),
            Some(json!({"text": text})),
        );
    }

    fn script(&self, script: &str) -> Value {
        call(
            "POST",
            &self.url("/execute/sync"),
            Some(json!({"script": script, "args": []})),
        )
    }

    /// Polls `script` until it returns something other than null or false.
    fn wait_for(&self, script: &str, what: &str) -> Value {
        let start = Instant::now();
        loop {
            let v = self.script(script);
            if !(v.is_null() || v == json!(false)) {
                return v;
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "waiting for {what}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn screenshot(&self, to: &Path) {
        use std::io::Write;
        let b64 = call("GET", &self.url("/screenshot"), None);
        let png = base64_decode(b64.as_str().unwrap());
        std::fs::File::create(to).unwrap().write_all(&png).unwrap();
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build()
            .into();
        let _ = agent.delete(self.url("")).call();
    }
}

fn base64_decode(s: &str) -> Vec<u8> {
    let val = |c: u8| -> u32 {
        match c {
            b'A'..=b'Z' => (c - b'A') as u32,
            b'a'..=b'z' => (c - b'a' + 26) as u32,
            b'0'..=b'9' => (c - b'0' + 52) as u32,
            b'+' => 62,
            b'/' => 63,
            _ => 0,
        }
    };
    let bytes: Vec<u8> = s.bytes().filter(|&c| c != b'=' && c != b'\n').collect();
    let mut out = Vec::with_capacity(bytes.len() * 3 / 4);
    for chunk in bytes.chunks(4) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |acc, (i, &c)| acc | (val(c) << (18 - 6 * i)));
        let take = chunk.len() - 1;
        for i in 0..take {
            out.push((n >> (16 - 8 * i)) as u8);
        }
    }
    out
}

fn find_program(env: &str, default: &str) -> Option<PathBuf> {
    let p = std::env::var_os(env).map_or_else(|| PathBuf::from(default), PathBuf::from);
    p.is_file().then_some(p)
}

#[test]
fn the_web_page_chats_streams_stops_and_starts_over_in_chromium() {
    let (Some(chromedriver), Some(chromium)) = (
        find_program("CHROMEDRIVER", "/usr/bin/chromedriver"),
        find_program("CHROMIUM", "/usr/bin/chromium"),
    ) else {
        assert!(
            std::env::var_os("BITNET_REQUIRE_BROWSER").is_none(),
            "BITNET_REQUIRE_BROWSER is set but chromium / chromedriver are not installed"
        );
        eprintln!("skipped: no /usr/bin/chromium and /usr/bin/chromedriver (apt install chromium chromium-driver)");
        return;
    };
    let (_server, addr) = start_server();
    let driver = Driver::start(&chromedriver, &chromium);
    driver.go(&format!("http://{addr}/"));
    driver.wait_for(
        "return document.getElementById('model').textContent.includes('.gguf')",
        "the model name",
    );

    // A system prompt, greedy sampling, then a message.
    let system = "You are Friar Laurence.";
    driver.click("#settings summary");
    driver.type_into("#system", system);
    driver.clear("#temperature");
    driver.type_into("#temperature", "0");
    driver.clear("#max-tokens");
    driver.type_into("#max-tokens", "40");
    let message = "Good morrow, father.";
    driver.type_into("#input", message);
    driver.click("#send");
    driver.wait_for(
        "const m = document.querySelector('.msg.assistant'); return m && m.dataset.done === 'true'",
        "the reply to finish",
    );
    let reply = driver.script("return document.querySelector('.msg.assistant .text').textContent");
    let reply = reply.as_str().unwrap().to_string();
    assert!(!reply.is_empty());
    let meta = driver.script("return document.querySelector('.msg.assistant .meta').textContent");
    assert!(meta.as_str().unwrap().contains("tokens/s"), "{meta}");
    let user = driver.script("return document.querySelector('.msg.user').textContent");
    assert_eq!(user, json!(message));

    // The page showed what the API answers for the same conversation.
    let body = json!({
        "messages": [{"role": "system", "content": system}, {"role": "user", "content": message}],
        "temperature": 0, "max_tokens": 40,
    });
    let api = call_api(&addr, body);
    assert_eq!(reply, api, "page vs API");

    let shot = std::env::var_os("BITNET_SCREENSHOT").map_or_else(
        || std::env::temp_dir().join("bitnet-web-chat.png"),
        PathBuf::from,
    );
    driver.screenshot(&shot);
    let png = std::fs::read(&shot).unwrap();
    assert!(png.starts_with(b"\x89PNG"), "not a PNG");
    eprintln!("screenshot: {}", shot.display());

    // A long reply, stopped once it streams.
    driver.clear("#max-tokens");
    driver.type_into("#max-tokens", "4000");
    driver.type_into("#input", "Tell me a long tale.");
    driver.click("#send");
    driver.wait_for(
        "const m = document.querySelectorAll('.msg.assistant')[1]; return m && m.querySelector('.text').textContent.length > 0",
        "the second reply to stream",
    );
    driver.click("#stop");
    let meta = driver.wait_for(
        "const m = document.querySelectorAll('.msg.assistant')[1]; return m.dataset.done === 'true' && m.querySelector('.meta').textContent",
        "the stopped reply",
    );
    assert!(meta.as_str().unwrap().contains("stopped"), "{meta}");

    // New chat: the conversation is gone.
    driver.click("#new-chat");
    let n = driver.script("return document.querySelectorAll('.msg').length");
    assert_eq!(n, json!(0));
}

/// The assistant's reply from the API (non-streaming).
fn call_api(addr: &str, body: Value) -> String {
    let v = {
        let agent: ureq::Agent = ureq::Agent::config_builder().build().into();
        let mut r = agent
            .post(format!("http://{addr}/v1/chat/completions"))
            .header("Content-Type", "application/json")
            .send(body.to_string())
            .unwrap();
        let text = r.body_mut().read_to_string().unwrap();
        serde_json::from_str::<Value>(&text).unwrap()
    };
    v["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .to_string()
}
