//! The model behind an HTTP endpoint with axum: `POST /generate {"prompt": "...",
//! "max_tokens": 32}` answers `{"text": "...", "tokens": 32}`. Generation is CPU work, so it
//! runs on tokio's blocking pool; the model is shared by all requests (cloning it is cheap).
//!
//! ```sh
//! cargo run --release --example axum                     # serves on 127.0.0.1:3000
//! curl -s localhost:3000/generate -d '{"prompt": "ROMEO:"}' -H 'content-type: application/json'
//! cargo run --release --example axum -- --self-test      # serves one request to itself, exits
//! ```

use std::io::{Read, Write};

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use axum::{Json, Router};
use bitnet::{GenerateParams, Model};
use serde::{Deserialize, Serialize};

#[derive(Deserialize)]
struct GenerateRequest {
    prompt: String,
    max_tokens: Option<usize>,
    /// Omitted: greedy.
    temperature: Option<f32>,
    seed: Option<u64>,
}

#[derive(Serialize)]
struct GenerateResponse {
    text: String,
    tokens: usize,
}

async fn generate(
    State(model): State<Model>,
    Json(req): Json<GenerateRequest>,
) -> Result<Json<GenerateResponse>, (StatusCode, String)> {
    let params = GenerateParams {
        max_tokens: Some(req.max_tokens.unwrap_or(64)),
        temperature: req.temperature.unwrap_or(0.0),
        seed: req.seed,
        ..GenerateParams::default()
    };
    let result = tokio::task::spawn_blocking(move || model.generate(&req.prompt, &params))
        .await
        .map_err(|e| (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    match result {
        Ok(g) => Ok(Json(GenerateResponse {
            tokens: g.generated.len(),
            text: g.text,
        })),
        // Bad sampling values, a prompt longer than the context, ...: the library says which.
        Err(e) => Err((StatusCode::BAD_REQUEST, e.to_string())),
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let self_test = std::env::args().any(|a| a == "--self-test");
    let model = Model::load(std::env::var("BITNET_MODEL").ok())?;
    let app = Router::new()
        .route("/generate", post(generate))
        .with_state(model.clone());
    let addr = if self_test {
        "127.0.0.1:0"
    } else {
        "127.0.0.1:3000"
    };
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let addr = listener.local_addr()?;
    eprintln!("serving {} on http://{addr}/generate", model.name());
    if !self_test {
        axum::serve(listener, app).await?;
        return Ok(());
    }

    // Self-test (CI): one request over real HTTP, checked against the library called directly.
    tokio::spawn(async move { axum::serve(listener, app).await });
    let body = tokio::task::spawn_blocking(move || {
        post_json(addr, r#"{"prompt": "ROMEO:", "max_tokens": 24}"#)
    })
    .await??;
    println!("{body}");
    let answer: serde_json::Value = serde_json::from_str(&body)?;
    let direct = model.generate("ROMEO:", &GenerateParams::greedy().max_tokens(24))?;
    if answer["text"] != direct.text.as_str() {
        return Err(format!(
            "the endpoint answered {body}, the library {:?}",
            direct.text
        )
        .into());
    }
    eprintln!("self-test passed");
    Ok(())
}

/// A bare HTTP/1.1 POST (the example needs no HTTP client); returns the body.
fn post_json(addr: std::net::SocketAddr, body: &str) -> std::io::Result<String> {
    let mut stream = std::net::TcpStream::connect(addr)?;
    write!(
        stream,
        "POST /generate HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    if !head.starts_with("HTTP/1.1 200") {
        return Err(std::io::Error::other(format!("{head}\n\n{body}")));
    }
    Ok(body.to_string())
}
