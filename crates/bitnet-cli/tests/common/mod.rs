//! The real `bitnet serve` binary over raw HTTP/1.1 on 127.0.0.1, for the server test files
//! (`serve.rs`, `serve_llama.rs`, `serve_fleet.rs`): start it on a free port, send requests
//! and read streams byte for byte, as a client would, with nothing of the server's code.

// Each test file is its own crate and uses only part of this module.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, ChildStderr, Command, Stdio};
use std::sync::{Arc, Mutex};

use serde_json::Value;

/// A running `bitnet serve`, killed when dropped.
pub struct Server {
    pub child: Child,
    pub addr: String,
    /// Everything the server wrote to stderr (its request log).
    pub log: Arc<Mutex<String>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Spawns `bitnet serve --port 0 ARGS` with extra environment; stderr is piped.
pub fn spawn(args: &[&str], env: &[(&str, &str)]) -> (Child, BufReader<ChildStderr>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_bitnet"))
        .args(["serve", "--port", "0"])
        .args(args)
        .envs(env.iter().copied())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = BufReader::new(child.stderr.take().unwrap());
    (child, stderr)
}

/// Reads stderr lines until one contains `marker`; returns that line.
pub fn read_until(stderr: &mut BufReader<ChildStderr>, seen: &mut String, marker: &str) -> String {
    loop {
        let mut line = String::new();
        if stderr.read_line(&mut line).unwrap() == 0 {
            panic!("the server ended before writing {marker:?}: {seen}");
        }
        seen.push_str(&line);
        if line.contains(marker) {
            return line;
        }
    }
}

/// Keeps reading stderr into `log`, so the server never blocks on a full pipe.
pub fn drain(mut stderr: BufReader<ChildStderr>, log: Arc<Mutex<String>>) {
    std::thread::spawn(move || {
        let mut line = String::new();
        while stderr.read_line(&mut line).unwrap_or(0) > 0 {
            log.lock().unwrap().push_str(&line);
            line.clear();
        }
    });
}

/// The address in a "listening on http://ADDR" line.
pub fn address_in(line: &str) -> String {
    line.split("http://")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .unwrap_or_else(|| panic!("no address in {line:?}"))
        .to_string()
}

/// Starts a server with extra arguments and waits until it listens (and has loaded).
pub fn start_with(args: &[&str]) -> Server {
    let (child, mut stderr) = spawn(args, &[]);
    let mut seen = String::new();
    let addr = address_in(&read_until(&mut stderr, &mut seen, "http://"));
    let log = Arc::new(Mutex::new(seen));
    drain(stderr, Arc::clone(&log));
    Server { child, addr, log }
}

/// Sends a request with extra header lines; returns the status, the head (as sent) and the
/// de-chunked body.
pub fn http_with(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[&str],
    body: &str,
) -> (u16, String, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    let extra: String = headers.iter().map(|h| format!("{h}\r\n")).collect();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         {extra}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
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
    (status, head.to_string(), body)
}

/// One request; returns the status and the de-chunked body.
pub fn http(addr: &str, method: &str, path: &str, body: &str) -> (u16, String) {
    let (status, _, body) = http_with(addr, method, path, &[], body);
    (status, body)
}

pub fn json(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

/// Starts a streaming POST; returns the status and a reader positioned after the head.
pub fn open_stream(addr: &str, path: &str, body: &str) -> (u16, BufReader<TcpStream>) {
    let mut s = TcpStream::connect(addr).unwrap();
    write!(
        s,
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut r = BufReader::new(s);
    let mut status_line = String::new();
    r.read_line(&mut status_line).unwrap();
    let status = status_line
        .split_whitespace()
        .nth(1)
        .unwrap_or_else(|| panic!("no status in {status_line:?}"))
        .parse()
        .unwrap();
    loop {
        let mut line = String::new();
        r.read_line(&mut line).unwrap();
        if line == "\r\n" {
            break;
        }
    }
    (status, r)
}

/// The next `data:` payload of an event stream (`None` at its end).
pub fn next_event(r: &mut BufReader<TcpStream>) -> Option<String> {
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).ok()? == 0 {
            return None;
        }
        if let Some(d) = line.strip_prefix("data: ") {
            return Some(d.trim_end().to_string());
        }
    }
}
