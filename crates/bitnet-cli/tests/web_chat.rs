//! The web chat page at `/`, in a real headless Chromium driven through WebDriver
//! (chromedriver): type a system prompt and a message, send, read the streamed reply from the
//! page (it must equal the API's answer to the same conversation), stop a long reply with the
//! Stop button, and start a new chat; a failed request is rolled back (the next message
//! succeeds, and what the page sends is what the API answers without the failed turn); Stop
//! answers during a reply of thousands of tokens and the page never blocks for long while it
//! streams; the API key is typed into a password field and the header says whether the server
//! took it. Screenshots are written to `$BITNET_SCREENSHOT_DIR` (or the temporary directory).
//!
//! Needs Debian's `chromium` and `chromium-driver` (`.ci/run` installs them and sets
//! `BITNET_REQUIRE_BROWSER=1`, which turns a missing browser into a failure; elsewhere the
//! test says it was skipped).

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_server(args: &[&str]) -> (Killed, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_bitnet"))
        .args(["serve", "--port", "0"])
        .args(args)
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
    profile: TempDir,
}

struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

fn call(method: &str, url: &str, body: Option<Value>) -> Value {
    try_call(method, url, body, Duration::from_secs(60))
        .unwrap_or_else(|e| panic!("{method} {url}: {e}"))
}

/// A WebDriver command, or why it got no answer within `timeout` (a command that runs
/// script waits for the page's main thread).
fn try_call(
    method: &str,
    url: &str,
    body: Option<Value>,
    timeout: Duration,
) -> Result<Value, String> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(timeout))
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
    let mut response = response.map_err(|e| e.to_string())?;
    let text = response
        .body_mut()
        .read_to_string()
        .map_err(|e| e.to_string())?;
    let v: Value = serde_json::from_str(&text).map_err(|e| format!("{e}: {text}"))?;
    if !response.status().is_success() {
        return Err(format!("{} {text}", response.status()));
    }
    Ok(v["value"].clone())
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
        static PROFILES: AtomicUsize = AtomicUsize::new(0);
        let profile = std::env::temp_dir().join(format!(
            "bitnet-chromium-{}-{}",
            std::process::id(),
            PROFILES.fetch_add(1, Ordering::Relaxed)
        ));
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
            profile: TempDir(profile),
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

    /// Runs `script`, or says that the page did not run it within `timeout`.
    fn script_within(&self, script: &str, timeout: Duration) -> Result<Value, String> {
        try_call(
            "POST",
            &self.url("/execute/sync"),
            Some(json!({"script": script, "args": []})),
            timeout,
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
        // Closing the session closes Chromium, but only once its page's main thread takes the
        // command: a page blocked for good (a regression of the Stop test) would hold the test
        // forever, so then Chromium's processes are killed, found by their profile directory.
        if try_call("DELETE", &self.url(""), None, Duration::from_secs(15)).is_err() {
            kill_browser(&self.profile.0);
        }
    }
}

/// Kills the processes started with `--user-data-dir=PROFILE` (this test's Chromium only).
fn kill_browser(profile: &Path) {
    let flag = format!("--user-data-dir={}", profile.display());
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return;
    };
    for p in procs.flatten() {
        let Some(pid) = p.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let cmdline = std::fs::read(p.path().join("cmdline")).unwrap_or_default();
        if cmdline.split(|&b| b == 0).any(|arg| arg == flag.as_bytes()) {
            // SAFETY: kill(2) with a pid read from /proc and a signal number; no memory.
            #[cfg(unix)]
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
        }
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

/// Chromedriver and Chromium, or `None` (the test is skipped) where they are not installed.
fn browser() -> Option<(PathBuf, PathBuf)> {
    let (Some(chromedriver), Some(chromium)) = (
        find_program("CHROMEDRIVER", "/usr/bin/chromedriver"),
        find_program("CHROMIUM", "/usr/bin/chromium"),
    ) else {
        assert!(
            std::env::var_os("BITNET_REQUIRE_BROWSER").is_none(),
            "BITNET_REQUIRE_BROWSER is set but chromium / chromedriver are not installed"
        );
        eprintln!("skipped: no /usr/bin/chromium and /usr/bin/chromedriver (apt install chromium chromium-driver)");
        return None;
    };
    Some((chromedriver, chromium))
}

/// One browser test at a time: each runs a server and a Chromium, and the Stop test watches
/// the page's main thread, which a second Chromium rendering beside it would slow down.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// Writes a screenshot of the page to `$BITNET_SCREENSHOT_DIR/NAME.png` (or the temporary
/// directory) and checks that it is a PNG.
fn screenshot(driver: &Driver, name: &str) {
    let dir =
        std::env::var_os("BITNET_SCREENSHOT_DIR").map_or_else(std::env::temp_dir, PathBuf::from);
    let shot = dir.join(format!("bitnet-web-{name}.png"));
    driver.screenshot(&shot);
    let png = std::fs::read(&shot).unwrap();
    assert!(png.starts_with(b"\x89PNG"), "not a PNG");
    eprintln!("screenshot: {}", shot.display());
}

/// Opens the settings panel (if closed) and sets its sampling fields.
fn settings(driver: &Driver, temperature: &str, max_tokens: &str) {
    if driver.script("return document.getElementById('settings').open") != json!(true) {
        driver.click("#settings summary");
    }
    driver.clear("#temperature");
    driver.type_into("#temperature", temperature);
    driver.clear("#max-tokens");
    driver.type_into("#max-tokens", max_tokens);
}

/// Waits for the `n`th reply (from 0) to finish and returns its text.
fn reply(driver: &Driver, n: usize) -> String {
    driver.wait_for(
        &format!(
            "const m = document.querySelectorAll('.msg.assistant')[{n}]; \
             return m && m.dataset.done === 'true'"
        ),
        "the reply to finish",
    );
    let v = driver.script(&format!(
        "return document.querySelectorAll('.msg.assistant')[{n}].querySelector('.text').textContent"
    ));
    v.as_str().unwrap().to_string()
}

/// What the transcript shows: (class, text) of each message, and the text of each reply's
/// figures line.
fn transcript(driver: &Driver) -> (Vec<(String, String)>, Vec<String>) {
    let v = driver.script(
        "return [[...document.querySelectorAll('.msg')].map(m => \
            [m.className, m.querySelector('.text').textContent]), \
          [...document.querySelectorAll('.msg.assistant')].map(m => \
            (m.querySelector('.meta') || {textContent: ''}).textContent)]",
    );
    let msgs = v[0]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m[0].as_str().unwrap().to_string(),
                m[1].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let metas = v[1]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m.as_str().unwrap().to_string())
        .collect();
    (msgs, metas)
}

fn pair(class: &str, text: &str) -> (String, String) {
    (class.to_string(), text.to_string())
}

#[test]
fn the_web_page_chats_streams_stops_and_starts_over_in_chromium() {
    let Some((chromedriver, chromium)) = browser() else {
        return;
    };
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let (_server, addr) = start_server(&[]);
    let driver = Driver::start(&chromedriver, &chromium);
    driver.go(&format!("http://{addr}/"));
    driver.wait_for(
        "return document.getElementById('model').textContent.includes('.gguf')",
        "the model name",
    );
    // No key was asked for, so the page says nothing about one.
    let key_box = driver.script("return document.getElementById('key-box').hidden");
    assert_eq!(key_box, json!(true));

    // A system prompt, greedy sampling, then a message.
    let system = "You are Friar Laurence.";
    settings(&driver, "0", "40");
    driver.type_into("#system", system);
    let message = "Good morrow, father.";
    driver.type_into("#input", message);
    driver.click("#send");
    let first = reply(&driver, 0);
    assert!(!first.is_empty());
    let meta = driver.script("return document.querySelector('.msg.assistant .meta').textContent");
    assert!(meta.as_str().unwrap().contains("tokens/s"), "{meta}");
    let user = driver.script("return document.querySelector('.msg.user').textContent");
    assert_eq!(user, json!(message));

    // The page showed what the API answers for the same conversation.
    let body = json!({
        "messages": [{"role": "system", "content": system}, {"role": "user", "content": message}],
        "temperature": 0, "max_tokens": 40,
    });
    let api = call_api(&addr, body, None).unwrap();
    assert_eq!(first, api, "page vs API");
    screenshot(&driver, "chat");

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

    // New chat in the middle of a reply: nothing of it reaches the new conversation, whose
    // first message gets the same answer as the first message of the first one.
    driver.type_into("#input", "Tell me a long tale.");
    driver.click("#send");
    driver.wait_for(
        "const m = document.querySelector('.msg.assistant .text'); return m && m.textContent.length > 0",
        "the reply to stream",
    );
    driver.click("#new-chat");
    driver.wait_for(
        "return !document.getElementById('send').disabled",
        "the page to be ready",
    );
    driver.clear("#max-tokens");
    driver.type_into("#max-tokens", "40");
    driver.type_into("#input", message);
    driver.click("#send");
    assert_eq!(
        reply(&driver, 0),
        api,
        "after New chat mid-reply: page vs API"
    );
    assert_eq!(transcript(&driver).0.len(), 2);
}

/// A request the server refuses (a prompt longer than the context) is rolled back: its
/// message goes back into the input box, the error is shown, no bubble of it stays (no empty
/// figures line either), and the next messages are sent without it: they succeed, and the
/// page shows what the API answers for the conversation without the failed turn.
#[test]
fn a_failed_request_is_rolled_back_and_the_next_message_succeeds() {
    let Some((chromedriver, chromium)) = browser() else {
        return;
    };
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let (_server, addr) = start_server(&["-c", "64"]);
    let driver = Driver::start(&chromedriver, &chromium);
    driver.go(&format!("http://{addr}/"));
    driver.wait_for(
        "return document.getElementById('model').textContent.includes('.gguf')",
        "the model name",
    );
    settings(&driver, "0", "8");
    let too_long = "Good morrow, father, and a fair good night to thee. ".repeat(12);
    let too_long = too_long.trim();

    for (turn, short) in ["Hi.", "And thou?"].into_iter().enumerate() {
        driver.type_into("#input", too_long);
        driver.click("#send");
        let error = driver.wait_for(
            "const e = document.querySelector('.msg.error'); return e && e.textContent",
            "the error",
        );
        assert!(
            error
                .as_str()
                .unwrap()
                .contains("exceeds the available context size (64 tokens)"),
            "{error}"
        );
        let input = driver.script("return document.getElementById('input').value");
        assert_eq!(input, json!(too_long), "the message is back in the box");
        let (msgs, metas) = transcript(&driver);
        assert_eq!(msgs.len(), 2 * turn + 1, "{msgs:?}");
        assert_eq!(msgs.last().unwrap().0, "msg error");
        assert!(metas.iter().all(|m| m.contains("tokens/s")), "{metas:?}");
        let buttons = driver.script(
            "return [document.getElementById('send').disabled, document.getElementById('stop').disabled]",
        );
        assert_eq!(buttons, json!([false, true]));
        if turn == 0 {
            screenshot(&driver, "error");
        }

        driver.clear("#input");
        driver.type_into("#input", short);
        driver.click("#send");
        reply(&driver, turn);
    }

    let (msgs, metas) = transcript(&driver);
    assert_eq!(msgs.len(), 4, "{msgs:?}");
    assert!(metas.iter().all(|m| m.contains("tokens/s")), "{metas:?}");
    let (first, second) = (msgs[1].1.clone(), msgs[3].1.clone());
    assert_eq!(
        msgs,
        [
            pair("msg user", "Hi."),
            pair("msg assistant", &first),
            pair("msg user", "And thou?"),
            pair("msg assistant", &second),
        ]
    );
    let api = call_api(
        &addr,
        json!({"messages": [{"role": "user", "content": "Hi."}], "temperature": 0, "max_tokens": 8}),
        None,
    )
    .unwrap();
    assert_eq!(first, api, "first reply: page vs API");
    let api = call_api(
        &addr,
        json!({"messages": [
            {"role": "user", "content": "Hi."},
            {"role": "assistant", "content": first},
            {"role": "user", "content": "And thou?"},
        ], "temperature": 0, "max_tokens": 8}),
        None,
    )
    .unwrap();
    assert_eq!(second, api, "second reply: page vs API");
}

/// Stop during a reply of thousands of tokens (the demo model streams them faster than a page
/// that renders every token can draw them): the reply ends as "stopped", soon after the click,
/// and the page's main thread never blocked for long while it streamed (Chromium's own
/// long-task records). The bounds are loose, for a loaded CI machine: the page this replaced
/// blocked for seconds at a time (its long tasks grew with the reply).
#[test]
fn stop_answers_during_a_long_streamed_reply() {
    let Some((chromedriver, chromium)) = browser() else {
        return;
    };
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    // With --ctx-shift and a huge max_tokens, the reply can only end by Stop.
    let (_server, addr) = start_server(&["--ctx-shift"]);
    let driver = Driver::start(&chromedriver, &chromium);
    driver.go(&format!("http://{addr}/"));
    driver.wait_for(
        "return document.getElementById('model').textContent.includes('.gguf')",
        "the model name",
    );
    settings(&driver, "0.8", "1000000");
    // The test's own records, from outside the page's code: every long task, when the Stop
    // click happened (its event time: when the browser dispatched it, before the page's main
    // thread could take it) and when the reply was marked done.
    driver.script(
        "window.probe = {longest: 0, tasks: 0, clicked: null, done: null};
         new PerformanceObserver((list) => {
           for (const e of list.getEntries()) {
             probe.tasks++; probe.longest = Math.max(probe.longest, e.duration);
           }
         }).observe({type: 'longtask'});
         document.getElementById('stop').addEventListener('click',
           (e) => { probe.clicked = e.timeStamp; }, true);
         new MutationObserver(() => {
           if (probe.done === null && document.querySelector('.msg.assistant[data-done]'))
             probe.done = performance.now();
         }).observe(document.getElementById('messages'),
           {subtree: true, attributes: true, attributeFilter: ['data-done']});
         return true",
    );
    driver.type_into("#input", "Tell me a long tale.");
    driver.click("#send");
    // About 4000 tokens of the demo model's text. A page whose main thread is blocked runs
    // no script: the one that rendered every token in full blocked for over a minute here.
    let start = Instant::now();
    let streamed = loop {
        let v = driver
            .script_within(
                "const m = document.querySelector('.msg.assistant .text'); \
                 return m && m.textContent.length >= 16000 && m.textContent.length",
                Duration::from_secs(20),
            )
            .unwrap_or_else(|e| {
                panic!("the page ran no script for 20 s while the reply streamed: {e}")
            });
        if v.is_number() {
            break v;
        }
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "the reply did not reach 16000 characters"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    driver.click("#stop");
    let meta = driver.wait_for(
        "const m = document.querySelector('.msg.assistant'); \
         return m.dataset.done === 'true' && m.querySelector('.meta').textContent",
        "the stopped reply",
    );
    let probe = driver.script("return probe");
    eprintln!("streamed {streamed} characters before Stop; {meta}; page records: {probe}");
    assert!(meta.as_str().unwrap().contains("stopped"), "{meta}");
    let stop_ms = probe["done"].as_f64().unwrap() - probe["clicked"].as_f64().unwrap();
    let longest = probe["longest"].as_f64().unwrap();
    assert!(
        stop_ms < 1000.0,
        "the reply was marked stopped {stop_ms:.0} ms after the click"
    );
    assert!(
        longest < 1000.0,
        "the page's main thread was blocked for {longest:.0} ms at once while the reply streamed"
    );
    screenshot(&driver, "stopped");
    // The page still answers: a new chat empties it.
    driver.click("#new-chat");
    let n = driver.script("return document.querySelectorAll('.msg').length");
    assert_eq!(n, json!(0));
}

/// With `--api-key`, the key goes into a password field, and the header says what the server
/// made of it: needed (no key), rejected (a 401 for the key sent), accepted (an answer).
#[test]
fn the_api_key_is_typed_into_a_password_field_and_its_state_is_shown() {
    let Some((chromedriver, chromium)) = browser() else {
        return;
    };
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let (_server, addr) = start_server(&["--api-key", "sesame"]);
    let driver = Driver::start(&chromedriver, &chromium);
    driver.go(&format!("http://{addr}/"));
    let state = "return document.getElementById('key-state').textContent";
    let wait_state = |want: &str| {
        driver.wait_for(
            &format!("return document.getElementById('key-state').textContent === '{want}'"),
            want,
        );
    };
    wait_state("API key needed");
    let kind = driver.script("return document.getElementById('api-key').type");
    assert_eq!(kind, json!("password"));
    let model = driver.script("return document.getElementById('model').textContent");
    assert!(!model.as_str().unwrap().contains(".gguf"), "{model}");
    settings(&driver, "0", "12");

    // Sending without a key: refused, rolled back, still "needed".
    driver.type_into("#input", "Hi.");
    driver.click("#send");
    driver.wait_for("return document.querySelector('.msg.error')", "the error");
    assert_eq!(driver.script(state), json!("API key needed"));

    // A wrong key (Enter in the field checks it).
    driver.type_into("#api-key", "open up\u{E007}");
    wait_state("API key rejected");
    screenshot(&driver, "key-rejected");
    driver.click("#send");
    let error = driver.wait_for(
        "const e = document.querySelector('.msg.error'); return e && e.textContent.includes('refused') && e.textContent",
        "the error for the wrong key",
    );
    assert!(error.as_str().unwrap().contains("API key"), "{error}");
    assert_eq!(driver.script(state), json!("API key rejected"));
    let input = driver.script("return document.getElementById('input').value");
    assert_eq!(input, json!("Hi."), "the message is back in the box");
    assert_eq!(transcript(&driver).0.len(), 1, "only the error is shown");

    // The right key: accepted, the model's name shows, and the message goes through.
    driver.clear("#api-key");
    driver.type_into("#api-key", "sesame\u{E007}");
    wait_state("API key accepted");
    driver.wait_for(
        "return document.getElementById('model').textContent.includes('.gguf')",
        "the model name",
    );
    driver.click("#send");
    let reply = reply(&driver, 0);
    assert_eq!(driver.script(state), json!("API key accepted"));
    let api = call_api(
        &addr,
        json!({"messages": [{"role": "user", "content": "Hi."}], "temperature": 0, "max_tokens": 12}),
        Some("sesame"),
    )
    .unwrap();
    assert_eq!(reply, api, "page vs API");
    screenshot(&driver, "key-accepted");

    // The key is kept for the next visit, and checked again then.
    driver.go(&format!("http://{addr}/"));
    wait_state("API key accepted");
    let kept =
        driver.script("const k = document.getElementById('api-key'); return [k.type, k.value]");
    assert_eq!(kept, json!(["password", "sesame"]));
    // The page itself needs no key; the API refuses a wrong one, as the header said.
    assert_eq!(
        call_api(
            &addr,
            json!({"messages": [{"role": "user", "content": "Hi."}]}),
            Some("open up")
        ),
        Err(401)
    );
}

/// The assistant's reply from the API (non-streaming), or the HTTP status of a refusal.
fn call_api(addr: &str, body: Value, key: Option<&str>) -> Result<String, u16> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let mut request = agent
        .post(format!("http://{addr}/v1/chat/completions"))
        .header("Content-Type", "application/json");
    if let Some(key) = key {
        request = request.header("Authorization", format!("Bearer {key}"));
    }
    let mut r = request.send(body.to_string()).unwrap();
    if !r.status().is_success() {
        return Err(r.status().as_u16());
    }
    let text = r.body_mut().read_to_string().unwrap();
    let v = serde_json::from_str::<Value>(&text).unwrap();
    Ok(v["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .to_string())
}
