//! `bitnet serve` in llama-server's dialect, over real HTTP on 127.0.0.1: the un-prefixed
//! OpenAI routes, `X-Api-Key`, the public model list, CORS preflights naming any header,
//! llama-server's context-overflow error and `timings`, `/tokenize` ↔ `/detokenize`,
//! `/apply-template`, `/props`, `/slots`, the native `/completion` (whole and streamed)
//! against `/v1/completions`, and the clear refusals of `/infill` and `/rerank`.
//! The Responses API is tested with the official `openai` client in `tests/openai/`.

use std::process::Command;

use serde_json::{json, Value};

mod common;
use common::{http, http_with, start_with};

/// A POST whose answer is JSON; returns the status and the parsed body.
fn post(addr: &str, path: &str, body: &Value) -> (u16, Value) {
    let (status, text) = http(addr, "POST", path, &body.to_string());
    let v = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}: {text}"));
    (status, v)
}

/// Asserts a refusal: this status, and an error message that says `needle`.
fn assert_refused((status, v): (u16, Value), code: u16, needle: &str) {
    assert_eq!(status, code, "{v}");
    let message = v["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains(needle), "{v}");
}

fn get(addr: &str, path: &str) -> (u16, Value) {
    let (status, text) = http(addr, "GET", path, "");
    (status, serde_json::from_str(&text).unwrap())
}

/// The `data:` payloads of an event stream.
fn events(body: &str) -> Vec<&str> {
    body.lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .collect()
}

#[test]
fn unprefixed_routes_x_api_key_public_models_and_cors() {
    let server = start_with(&[
        "--temp",
        "0",
        "-n",
        "8",
        "--api-key",
        "s3cret",
        // llama-server's spelling: a comma-separated list.
        "--cors-origins",
        "http://other.test,http://example.test",
    ]);
    let a = server.addr.as_str();
    // The model list is public, as /health is (llama-server's rule); the rest needs the key.
    for path in ["/v1/models", "/models"] {
        let (status, v) = get(a, path);
        assert_eq!(status, 200, "{path}: {v}");
        assert_eq!(v["data"][0]["id"], "bitnet-shakespeare-7m-i2_s.gguf");
    }
    let chat = r#"{"messages": [{"role": "user", "content": "Speak"}], "max_tokens": 4}"#;
    for path in [
        "/chat/completions",
        "/tokenize",
        "/completion",
        "/props",
        "/v1/responses",
    ] {
        let (status, _) = http(a, "POST", path, chat);
        assert_eq!(status, 401, "{path} without a key");
    }
    let (status, _, _) = http_with(a, "POST", "/chat/completions", &["X-Api-Key: wrong"], chat);
    assert_eq!(status, 401);
    // `X-Api-Key` is taken as `Authorization: Bearer` is; the un-prefixed chat route is the
    // same endpoint as /v1/chat/completions.
    let (status, _, body) = http_with(a, "POST", "/chat/completions", &["X-Api-Key: s3cret"], chat);
    assert_eq!(status, 200, "{body}");
    let unprefixed: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(unprefixed["object"], "chat.completion");
    let (_, _, body) = http_with(
        a,
        "POST",
        "/v1/chat/completions",
        &["Authorization: Bearer s3cret"],
        chat,
    );
    let prefixed: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        unprefixed["choices"][0]["message"],
        prefixed["choices"][0]["message"]
    );
    // A preflight is allowed the headers it asks for (here the key's), without the key.
    let (status, head, _) = http_with(
        a,
        "OPTIONS",
        "/chat/completions",
        &[
            "Origin: http://example.test",
            "Access-Control-Request-Method: POST",
            "Access-Control-Request-Headers: x-api-key, content-type, x-stainless-os",
        ],
        "",
    );
    assert_eq!(status, 200);
    let head = head.to_ascii_lowercase();
    assert!(
        head.contains("access-control-allow-headers: x-api-key, content-type, x-stainless-os"),
        "{head}"
    );
}

#[test]
fn context_overflow_is_llama_servers_error_and_responses_carry_timings() {
    let server = start_with(&["--temp", "0", "-n", "8", "-c", "64", "--parallel", "2"]);
    let a = server.addr.as_str();
    let long = "ROMEO: ".repeat(200);
    for (path, body) in [
        ("/v1/completions", json!({"prompt": long})),
        ("/completion", json!({"prompt": long})),
        (
            "/v1/chat/completions",
            json!({"messages": [{"role": "user", "content": long}]}),
        ),
    ] {
        let (status, v) = post(a, path, &body);
        assert_eq!(status, 400, "{path}: {v}");
        let e = &v["error"];
        assert_eq!(e["type"], "exceed_context_size_error", "{path}: {v}");
        assert_eq!(e["n_ctx"], 64, "{path}: {v}");
        assert!(e["n_prompt_tokens"].as_u64().unwrap() > 64, "{path}: {v}");
        assert!(e["message"]
            .as_str()
            .unwrap()
            .contains("exceeds the available context size"));
    }

    // `timings` agree with `usage`: prompt tokens run plus those reused are the prompt.
    let body = json!({"prompt": "ROMEO:\n", "max_tokens": 6});
    for _ in 0..2 {
        let (status, v) = post(a, "/v1/completions", &body);
        assert_eq!(status, 200, "{v}");
        let t = &v["timings"];
        assert_eq!(t["predicted_n"], v["usage"]["completion_tokens"], "{v}");
        assert_eq!(
            t["prompt_n"].as_u64().unwrap() + t["cache_n"].as_u64().unwrap(),
            v["usage"]["prompt_tokens"].as_u64().unwrap(),
            "{v}"
        );
        assert!(t["predicted_ms"].as_f64().unwrap() >= 0.0);
        assert!(t["predicted_per_second"].as_f64().is_some());
    }
    // Streamed: the chunk that ends the choice carries them.
    let (status, body) = http(
        a,
        "POST",
        "/v1/chat/completions",
        r#"{"messages": [{"role": "user", "content": "Speak"}], "max_tokens": 5, "stream": true}"#,
    );
    assert_eq!(status, 200);
    let chunks: Vec<Value> = events(&body)
        .into_iter()
        .filter(|e| *e != "[DONE]")
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    let last = chunks.last().unwrap();
    assert_eq!(last["choices"][0]["finish_reason"], "length");
    assert_eq!(last["timings"]["predicted_n"], 5, "{last}");
    assert!(chunks[..chunks.len() - 1]
        .iter()
        .all(|c| c.get("timings").is_none()));
}

#[test]
fn tokenize_detokenize_apply_template_props_and_slots() {
    let server = start_with(&["--temp", "0", "-n", "8", "--parallel", "3"]);
    let a = server.addr.as_str();
    let text = "Speak, Romeo: é!";
    let (status, v) = post(
        a,
        "/tokenize",
        &json!({"content": text, "with_pieces": true}),
    );
    assert_eq!(status, 200, "{v}");
    let pieces = v["tokens"].as_array().unwrap();
    let ids: Vec<u64> = pieces.iter().map(|p| p["id"].as_u64().unwrap()).collect();
    // The pieces are the text cut into tokens (a piece that is not UTF-8 alone is bytes).
    let mut bytes = Vec::new();
    for p in pieces {
        match &p["piece"] {
            Value::String(s) => bytes.extend_from_slice(s.as_bytes()),
            Value::Array(b) => bytes.extend(b.iter().map(|x| x.as_u64().unwrap() as u8)),
            other => panic!("piece {other}"),
        }
    }
    assert_eq!(String::from_utf8(bytes).unwrap(), text);
    let (_, plain) = post(a, "/tokenize", &json!({"content": text}));
    assert_eq!(plain["tokens"], json!(ids));
    // The ids are `bitnet tokenize`'s.
    let out = Command::new(env!("CARGO_BIN_EXE_bitnet"))
        .args(["tokenize", "-p", text, "--json", "--no-bos"])
        .output()
        .unwrap();
    let cli: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(cli["ids"], json!(ids));
    let (status, v) = post(a, "/detokenize", &json!({"tokens": ids}));
    assert_eq!(status, 200);
    assert_eq!(v["content"], text);
    // The count is the one the completions endpoint bills (it adds BOS where the model
    // asks, as `add_special` does).
    let (_, special) = post(
        a,
        "/tokenize",
        &json!({"content": text, "add_special": true}),
    );
    let (_, c) = post(
        a,
        "/v1/completions",
        &json!({"prompt": text, "max_tokens": 1}),
    );
    assert_eq!(
        special["tokens"].as_array().unwrap().len() as u64,
        c["usage"]["prompt_tokens"].as_u64().unwrap()
    );
    for (body, field) in [
        (json!({}), "content"),
        (json!({"content": 3}), "content"),
        (json!({"content": "a", "with_piece": true}), "with_piece"),
    ] {
        let (status, v) = post(a, "/tokenize", &body);
        assert_eq!(status, 400, "{body}");
        assert_eq!(v["error"]["param"], field, "{v}");
    }
    let (status, v) = post(a, "/detokenize", &json!({"tokens": [999999]}));
    assert_eq!(status, 400, "{v}");

    // /apply-template renders as the chat endpoint does: the rendered prompt run through
    // /completion gives the chat endpoint's reply.
    let messages = json!([{"role": "system", "content": "Be brief."},
                          {"role": "user", "content": "Speak, Romeo."}]);
    let (status, t) = post(a, "/apply-template", &json!({"messages": messages}));
    assert_eq!(status, 200, "{t}");
    let prompt = t["prompt"].as_str().unwrap();
    assert!(prompt.contains("Speak, Romeo."));
    let (_, chat) = post(
        a,
        "/v1/chat/completions",
        &json!({"messages": messages, "max_tokens": 8}),
    );
    let (_, native) = post(a, "/completion", &json!({"prompt": prompt, "n_predict": 8}));
    assert_eq!(native["content"], chat["choices"][0]["message"]["content"]);
    assert_eq!(
        native["tokens_evaluated"], chat["usage"]["prompt_tokens"],
        "{native}"
    );
    let (status, _) = post(a, "/apply-template", &json!({"prompt": "x"}));
    assert_eq!(status, 400);

    let (status, p) = get(a, "/props");
    assert_eq!(status, 200);
    assert_eq!(p["total_slots"], 3);
    assert_eq!(p["default_generation_settings"]["params"]["n_predict"], 8);
    assert_eq!(
        p["default_generation_settings"]["params"]["temperature"],
        0.0
    );
    assert!(p["chat_template"].is_string());
    let (status, _) = post(a, "/props", &json!({}));
    assert_eq!(status, 501);
    let (status, s) = get(a, "/slots");
    assert_eq!(status, 200);
    let slots = s.as_array().unwrap();
    assert_eq!(slots.len(), 3);
    assert_eq!(slots[2]["id"], 2);
    assert_eq!(slots[0]["is_processing"], false);
    assert_eq!(get(a, "/slots?fail_on_no_slot=1").0, 200);
    let (status, v) = post(a, "/slots/0?action=save", &json!({"filename": "x.bin"}));
    assert_eq!(status, 501, "{v}");
    // Erasing forgets a slot's cached prompt: the same request then reuses nothing.
    let body = json!({"prompt": "ROMEO:\nSpeak.", "n_predict": 2});
    post(a, "/completion", &body);
    let (_, again) = post(a, "/completion", &body);
    let slot = again["id_slot"].as_u64().unwrap();
    assert!(again["tokens_cached"].as_u64().unwrap() > 0, "{again}");
    let held = get(a, "/slots").1[slot as usize]["cached_tokens"].clone();
    let (status, v) = post(a, &format!("/slots/{slot}?action=erase"), &json!({}));
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["n_erased"], held);
    assert_eq!(get(a, "/slots").1[slot as usize]["cached_tokens"], 0);
    for (path, want) in [
        ("/slots/9?action=erase", 400),
        ("/slots/0?action=melt", 400),
    ] {
        assert_eq!(post(a, path, &json!({})).0, want, "{path}");
    }
}

/// llama-server's slot save and restore: a slot's cache written to a file under
/// --slot-save-path and read into a fresh server, whose next request with that prompt reuses
/// it and gives the same text; a file of another cache type or model, a name with a folder and
/// a missing file are refused with the reason.
#[test]
fn a_saved_slot_restores_into_a_new_server() {
    let dir = std::env::temp_dir().join(format!("bitnet-slot-save-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let dir_arg = dir.to_str().unwrap();
    let args = [
        "--temp",
        "0",
        "--parallel",
        "1",
        "--slot-save-path",
        dir_arg,
    ];
    let body =
        json!({"prompt": "ROMEO:\nSpeak, and say what light breaks yonder.", "n_predict": 8});
    let (first, saved) = {
        let server = start_with(&args);
        let a = server.addr.as_str();
        let (status, first) = post(a, "/completion", &body);
        assert_eq!(status, 200, "{first}");
        let (status, v) = post(a, "/slots/0?action=save", &json!({"filename": "romeo.bin"}));
        assert_eq!(status, 200, "{v}");
        assert_eq!(v["filename"], "romeo.bin");
        let saved = v["n_saved"].as_u64().unwrap();
        assert!(saved > 8, "{v}");
        let file = std::fs::metadata(dir.join("romeo.bin")).unwrap();
        assert_eq!(v["n_written"].as_u64().unwrap(), file.len());
        assert!(v["timings"]["save_ms"].is_number(), "{v}");
        for bad in [
            json!({"filename": "../romeo.bin"}),
            json!({"filename": "a/b.bin"}),
            json!({"filename": ""}),
            json!({"name": "x"}),
        ] {
            let (status, v) = post(a, "/slots/0?action=save", &bad);
            assert_eq!(status, 400, "{bad}: {v}");
            assert_eq!(v["error"]["param"], "filename", "{v}");
        }
        (first, saved)
    };
    assert!(!dir.join("romeo.bin.partial").exists());
    let server = start_with(&args);
    let a = server.addr.as_str();
    let (status, v) = post(
        a,
        "/slots/0?action=restore",
        &json!({"filename": "romeo.bin"}),
    );
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["n_restored"].as_u64().unwrap(), saved);
    assert_eq!(
        get(a, "/slots").1[0]["cached_tokens"].as_u64().unwrap(),
        saved
    );
    let (_, again) = post(a, "/completion", &body);
    assert!(again["tokens_cached"].as_u64().unwrap() > 0, "{again}");
    assert_eq!(again["content"], first["content"]);
    let (status, v) = post(
        a,
        "/slots/0?action=restore",
        &json!({"filename": "none.bin"}),
    );
    assert_eq!(status, 404, "{v}");
    drop(server);
    for (extra, said) in [
        (["--cache-type", "f32"], "f16 cache but this one is f32"),
        (["--alias", "other"], "not of `other`"),
    ] {
        let server = start_with(&[&args[..], &extra[..]].concat());
        let (status, v) = post(
            &server.addr,
            "/slots/0?action=restore",
            &json!({"filename": "romeo.bin"}),
        );
        assert_eq!(status, 400, "{v}");
        let message = v["error"]["message"].as_str().unwrap();
        assert!(message.contains(said), "{message}");
        assert_eq!(get(&server.addr, "/slots").1[0]["cached_tokens"], 0);
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn native_completion_matches_openai_completions() {
    let server = start_with(&["--temp", "0", "-n", "8", "--parallel", "2"]);
    let a = server.addr.as_str();
    let (status, oai) = post(
        a,
        "/v1/completions",
        &json!({"prompt": "ROMEO:\n", "max_tokens": 10, "logprobs": 2}),
    );
    assert_eq!(status, 200, "{oai}");
    let (status, n) = post(
        a,
        "/completion",
        &json!({"prompt": "ROMEO:\n", "n_predict": 10, "n_probs": 2, "return_tokens": true,
                "cache_prompt": true}),
    );
    assert_eq!(status, 200, "{n}");
    assert_eq!(n["content"], oai["choices"][0]["text"], "{n}");
    assert_eq!(n["stop"], true);
    assert_eq!(n["stop_type"], "limit");
    assert_eq!(n["truncated"], false);
    assert_eq!(n["tokens_predicted"], 10);
    assert_eq!(n["tokens"].as_array().unwrap().len(), 10);
    assert_eq!(n["tokens_evaluated"], oai["usage"]["prompt_tokens"]);
    assert_eq!(n["generation_settings"]["n_predict"], 10);
    assert_eq!(n["generation_settings"]["n_probs"], 2);
    assert!(n["id_slot"].as_i64().unwrap() >= 0, "{n}");
    assert_eq!(n["timings"]["predicted_n"], 10);
    assert_eq!(n["model"], "bitnet-shakespeare-7m-i2_s.gguf");
    // The probabilities are the OpenAI endpoint's logprobs, in llama-server's shape.
    let probs = n["completion_probabilities"].as_array().unwrap();
    assert_eq!(probs.len(), 10);
    let lps = &oai["choices"][0]["logprobs"];
    for (i, p) in probs.iter().enumerate() {
        assert_eq!(p["token"], lps["tokens"][i]);
        assert_eq!(p["logprob"], lps["token_logprobs"][i]);
        assert_eq!(p["id"], n["tokens"][i]);
        assert_eq!(p["top_logprobs"].as_array().unwrap().len(), 2);
    }
    // Without `return_tokens` the ids are left out, as llama-server leaves them.
    let (_, plain) = post(
        a,
        "/completion",
        &json!({"prompt": "ROMEO:\n", "n_predict": 3}),
    );
    assert_eq!(plain["tokens"], json!([]));
    assert!(plain.get("completion_probabilities").is_none());

    // A prompt of token ids, and a stop string: `word` with the word.
    let ids = n["tokens"].clone();
    let (_, by_ids) = post(a, "/completion", &json!({"prompt": ids, "n_predict": 3}));
    assert_eq!(by_ids["tokens_evaluated"], 10);
    let content = n["content"].as_str().unwrap();
    let word: String = content.chars().skip(3).take(2).collect();
    let (_, stopped) = post(
        a,
        "/completion",
        &json!({"prompt": "ROMEO:\n", "n_predict": 10, "stop": [word]}),
    );
    assert_eq!(stopped["stop_type"], "word", "{stopped}");
    assert_eq!(stopped["stopping_word"], word.as_str());
    assert!(content.starts_with(stopped["content"].as_str().unwrap()));

    // Several prompts: a list, one result each.
    let (_, many) = post(
        a,
        "/completion",
        &json!({"prompt": ["ROMEO:\n", "JULIET:\n"], "n_predict": 4}),
    );
    let many = many.as_array().unwrap();
    assert_eq!(many.len(), 2);
    assert_eq!(many[1]["index"], 1);
    // The un-prefixed /completions is llama-server's native endpoint too.
    let (_, alias) = post(
        a,
        "/completions",
        &json!({"prompt": "ROMEO:\n", "n_predict": 10}),
    );
    assert_eq!(alias["content"], n["content"]);

    // llama-server's conventions: any temperature (≤ 0 greedy), logit_bias as pairs, where
    // `false` bans the token.
    let first = n["tokens"][0].as_u64().unwrap();
    let (status, banned) = post(
        a,
        "/completion",
        &json!({"prompt": "ROMEO:\n", "n_predict": 2, "temperature": -1,
                "logit_bias": [[first, false]], "return_tokens": true}),
    );
    assert_eq!(status, 200, "{banned}");
    assert_ne!(banned["tokens"][0].as_u64().unwrap(), first);
    // …which the OpenAI endpoints still refuse.
    let (status, v) = post(a, "/v1/completions", &json!({"prompt": "a", "n_probs": 2}));
    assert_eq!(
        (status, v["error"]["param"].as_str()),
        (400, Some("n_probs"))
    );
    for (body, field) in [
        (json!({"prompt": "a", "n": 2}), "n"),
        (json!({"prompt": "a", "n_probs": 99}), "n_probs"),
        (json!({"prompt": "a", "temprature": 1}), "temprature"),
        (
            json!({"messages": [{"role": "user", "content": "x"}]}),
            "messages",
        ),
    ] {
        let (status, v) = post(a, "/completion", &body);
        assert_eq!(status, 400, "{body}: {v}");
        assert_eq!(v["error"]["param"], field, "{body}: {v}");
    }

    // Streamed: one event per token with its id, then the whole result with `stop: true`;
    // the pieces add up to the unstreamed content, and no `[DONE]` follows.
    let (status, body) = http(
        a,
        "POST",
        "/completion",
        &json!({"prompt": "ROMEO:\n", "n_predict": 10, "stream": true, "n_probs": 1}).to_string(),
    );
    assert_eq!(status, 200);
    let evs: Vec<Value> = events(&body)
        .into_iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    let (last, partials) = evs.split_last().unwrap();
    assert_eq!(last["stop"], true);
    assert_eq!(last["stop_type"], "limit");
    assert_eq!(last["content"], "");
    assert_eq!(last["timings"]["predicted_n"], 10);
    let mut text = String::new();
    let mut tokens = Vec::new();
    for p in partials {
        assert_eq!(p["stop"], false, "{p}");
        text.push_str(p["content"].as_str().unwrap());
        tokens.extend(p["tokens"].as_array().unwrap().iter().cloned());
    }
    assert_eq!(text, content);
    assert_eq!(Value::Array(tokens), n["tokens"]);
    assert_eq!(
        partials[0]["completion_probabilities"][0]["id"],
        n["tokens"][0]
    );
}

#[test]
fn infill_and_rerank_say_why_not() {
    let server = start_with(&["-n", "4"]);
    let a = server.addr.as_str();
    let infill = json!({"input_prefix": "a", "input_suffix": "b"});
    assert_refused(
        post(a, "/infill", &infill),
        501,
        "no fill-in-the-middle tokens",
    );
    for path in ["/rerank", "/reranking", "/v1/rerank", "/v1/reranking"] {
        let rerank = json!({"query": "q", "documents": ["d"]});
        assert_refused(post(a, path, &rerank), 501, "no reranker head");
    }
}

#[test]
fn gbnf_grammars_constrain_output() {
    let server = start_with(&["-n", "24", "--parallel", "2"]);
    let a = server.addr.as_str();
    let answer = r#"root ::= answer "!"
answer ::= "yes" | "no" | "maybe-" digit
digit ::= [0-9]   # one digit
"#;
    for seed in 0..4 {
        let (status, v) = post(
            a,
            "/completion",
            &json!({"prompt": "ROMEO:\n", "grammar": answer, "seed": seed, "temperature": 1.5}),
        );
        assert_eq!(status, 200, "{v}");
        let c = v["content"].as_str().unwrap();
        let ok = c == "yes!"
            || c == "no!"
            || (c.len() == 8
                && c.starts_with("maybe-")
                && c.ends_with('!')
                && c.as_bytes()[6].is_ascii_digit());
        assert!(ok, "seed {seed}: {c:?}");
        assert_eq!(v["stop_type"], "eos", "{v}");
    }
    // On the OpenAI endpoints too, streamed and not; repetition counts hold.
    let digits = r#"root ::= [1-9] [0-9]{2,3} ("," [0-9]{3})?"#;
    let (status, v) = post(
        a,
        "/v1/chat/completions",
        &json!({"messages": [{"role": "user", "content": "Count."}], "grammar": digits,
                "seed": 3, "temperature": 1.2}),
    );
    assert_eq!(status, 200, "{v}");
    let c = v["choices"][0]["message"]["content"].as_str().unwrap();
    let (head, tail) = c.split_once(',').unwrap_or((c, ""));
    assert!((3..=4).contains(&head.len()), "{c:?}");
    assert!(
        head.bytes().all(|b| b.is_ascii_digit()) && !head.starts_with('0'),
        "{c:?}"
    );
    assert!(tail.is_empty() || (tail.len() == 3 && tail.bytes().all(|b| b.is_ascii_digit())));
    let (status, body) = http(
        a,
        "POST",
        "/v1/completions",
        &json!({"prompt": "ROMEO:\n", "grammar": "root ::= \"Ay, \" [a-z]+ \".\"",
                "seed": 1, "stream": true, "max_tokens": 40})
        .to_string(),
    );
    assert_eq!(status, 200);
    let text: String = events(&body)
        .into_iter()
        .filter(|e| *e != "[DONE]")
        .filter_map(|e| {
            let v: Value = serde_json::from_str(e).unwrap();
            v["choices"][0]["text"].as_str().map(str::to_string)
        })
        .collect();
    assert!(text.starts_with("Ay, "), "{text:?}");
    let word = text["Ay, ".len()..].trim_end_matches('.');
    assert!(word.bytes().all(|b| b.is_ascii_lowercase()), "{text:?}");
    // A grammar that does not parse is a 400 naming the field and the line.
    for (grammar, text) in [
        ("root ::= \"a\"\nx ::= [b", "line 2"),
        ("start ::= \"a\"", "no `root` rule"),
    ] {
        let (status, v) = post(
            a,
            "/completion",
            &json!({"prompt": "a", "grammar": grammar}),
        );
        assert_eq!(status, 400, "{v}");
        assert_eq!(v["error"]["param"], "grammar");
        assert!(
            v["error"]["message"].as_str().unwrap().contains(text),
            "{v}"
        );
    }
}

/// What llama.cpp's own server tests (tools/server/tests, run in external mode by
/// tools/llama-server-tests/run.sh) showed we answered differently from llama-server.
#[test]
fn llama_server_test_suite_findings() {
    let server = start_with(&["--cors-origin", "*", "-n", "4", "--alias", "tinyllama-2"]);
    let a = server.addr.as_str();

    // `/props` names the model file whatever `--alias` says (test_basic.py::test_server_props).
    let (status, p) = get(a, "/props");
    assert_eq!(status, 200);
    assert_eq!(p["model_path"], "bitnet-shakespeare-7m-i2_s.gguf", "{p}");
    assert_eq!(get(a, "/v1/models").1["data"][0]["id"], "tinyllama-2");

    // A preflight answers 200 with llama-server's methods, and allows credentials for the
    // echoed origin (test_security.py::test_cors_options).
    let (status, head, _) = http_with(
        a,
        "OPTIONS",
        "/completions",
        &[
            "Origin: web.mydomain.fr",
            "Access-Control-Request-Method: POST",
            "Access-Control-Request-Headers: Authorization",
        ],
        "",
    );
    assert_eq!(status, 200, "{head}");
    // Header names are written Title-Case, as llama-server writes them.
    assert!(
        head.contains("\r\nAccess-Control-Allow-Origin: web.mydomain.fr"),
        "{head}"
    );
    let head = head.to_ascii_lowercase();
    assert!(
        head.contains("access-control-allow-methods: get, post\r\n"),
        "{head}"
    );
    assert!(
        head.contains("access-control-allow-credentials: true"),
        "{head}"
    );

    // A stream's first chunk carries the role and a null content (the openai client and
    // llama-server's tests read `delta.content is None` there); `timings_per_token` is
    // accepted, and the usage chunk carries `timings` as llama-server's does.
    let (status, body) = http(
        a,
        "POST",
        "/v1/chat/completions",
        &json!({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 3,
                "stream": true, "stream_options": {"include_usage": true},
                "timings_per_token": true})
        .to_string(),
    );
    assert_eq!(status, 200, "{body}");
    let chunks: Vec<Value> = events(&body)
        .into_iter()
        .filter(|e| *e != "[DONE]")
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    let first = &chunks[0]["choices"][0]["delta"];
    assert_eq!(first["role"], "assistant", "{first}");
    assert!(first["content"].is_null(), "{first}");
    let usage = chunks.last().unwrap();
    assert_eq!(usage["choices"], json!([]), "{usage}");
    assert!(
        usage["usage"]["completion_tokens"].as_u64().is_some(),
        "{usage}"
    );
    assert!(
        usage["timings"]["predicted_n"].as_u64().is_some(),
        "{usage}"
    );
    assert!(
        usage["timings"]["prompt_per_second"].as_f64().is_some(),
        "{usage}"
    );

    // Two assistant messages in a row at the end are refused, naming `messages`
    // (test_chat_completion.py::test_invalid_chat_completion_req).
    let (status, v) = post(
        a,
        "/chat/completions",
        &json!({"messages": [{"role": "user", "content": "test"},
                             {"role": "assistant", "content": "test"},
                             {"role": "assistant", "content": "test"}]}),
    );
    assert_eq!(status, 400, "{v}");
    assert_eq!(v["error"]["param"], "messages", "{v}");
    // One assistant message after the user's is still a conversation.
    let (status, v) = post(
        a,
        "/chat/completions",
        &json!({"messages": [{"role": "user", "content": "test"},
                             {"role": "assistant", "content": "test"}], "max_tokens": 1}),
    );
    assert_eq!(status, 200, "{v}");
}

/// llama-server's `/completion` fields its own tests exercise (test_completion.py,
/// test_ignore_eos.py): text keys in `logit_bias`, one prompt mixing ids and texts,
/// `ignore_eos` banning the end-of-generation tokens (listed in `generation_settings` with a
/// null bias), `response_fields` and `post_sampling_probs`.
#[test]
fn native_completion_fields_of_llama_servers_tests() {
    let server = start_with(&["-n", "24", "--temp", "0"]);
    let a = server.addr.as_str();
    let complete = |body: Value| {
        let (status, v) = post(a, "/completion", &body);
        assert_eq!(status, 200, "{body} → {v}");
        v
    };
    let prompt = "ROMEO: What say you";
    // The greedy continuation's words, banned by text (a list of pairs, and an object):
    // none of them comes back.
    let plain = complete(json!({"prompt": prompt}));
    let text = plain["content"].as_str().unwrap().to_string();
    let words: Vec<String> = text
        .split_whitespace()
        .map(|w| w.trim_matches(|c: char| !c.is_alphanumeric()).to_string())
        .filter(|w| !w.is_empty())
        .take(3)
        .collect();
    assert!(!words.is_empty(), "{text:?}");
    for style in ["pairs", "object"] {
        let keys: Vec<String> = words.iter().map(|w| format!(" {w}")).collect();
        let bias = if style == "pairs" {
            json!(keys.iter().map(|k| json!([k, false])).collect::<Vec<_>>())
        } else {
            Value::Object(keys.iter().map(|k| (k.clone(), json!(-100))).collect())
        };
        let v = complete(json!({"prompt": prompt, "logit_bias": bias}));
        let out = v["content"].as_str().unwrap();
        assert_ne!(out, text, "{style}");
        let settings = &v["generation_settings"]["logit_bias"];
        assert!(
            settings.as_array().is_some_and(|l| !l.is_empty()),
            "{settings}"
        );
        // The first word's first token is banned: the text cannot start the same way.
        let first = &text[..text.find(&words[0]).unwrap() + words[0].len()];
        assert!(
            !out.starts_with(first),
            "{style}: {out:?} starts with {first:?}"
        );
    }

    // A mixed prompt is one prompt: ids, then text tokenized where it stands.
    let (_, t) = post(
        a,
        "/tokenize",
        &json!({"content": "ROMEO:", "add_special": true}),
    );
    let mut mixed: Vec<Value> = t["tokens"].as_array().unwrap().clone();
    mixed.push(json!(" What say you"));
    let v = complete(json!({"prompt": mixed}));
    assert!(v.is_object(), "{v}");
    assert_eq!(v["content"], plain["content"], "{v}");
    assert_eq!(v["tokens_evaluated"], plain["tokens_evaluated"], "{v}");

    // ignore_eos: the end-of-generation tokens banned, reported with a null bias; without
    // it, no bias at all.
    let v = complete(json!({"prompt": prompt, "ignore_eos": true, "n_predict": 8}));
    let list = v["generation_settings"]["logit_bias"].as_array().unwrap();
    assert!(
        !list.is_empty() && list.iter().all(|e| e["bias"].is_null()),
        "{v}"
    );
    assert_eq!(v["tokens_predicted"], 8, "{v}");
    let v = complete(json!({"prompt": prompt, "ignore_eos": false, "n_predict": 8}));
    assert_eq!(v["generation_settings"]["logit_bias"], json!([]), "{v}");

    // response_fields: only those, nested ones under their path.
    let v = complete(json!({"prompt": prompt, "n_predict": 5,
        "response_fields": ["content", "generation_settings/n_predict", "prompt"]}));
    let o = v.as_object().unwrap();
    assert_eq!(o.len(), 3, "{v}");
    assert_eq!(v["generation_settings/n_predict"], 5, "{v}");
    assert!(v["prompt"].as_str().unwrap().ends_with(prompt), "{v}");

    // post_sampling_probs: greedy gives the pick probability 1, and lists only it (llama-server
    // never lists a candidate the sampler chain dropped).
    let v = complete(json!({"prompt": prompt, "n_predict": 3, "n_probs": 4,
        "post_sampling_probs": true}));
    let probs = v["completion_probabilities"].as_array().unwrap();
    assert_eq!(probs.len(), 3, "{v}");
    for p in probs {
        assert_eq!(p["prob"], 1.0, "{p}");
        let top = p["top_probs"].as_array().unwrap();
        assert_eq!(top.len(), 1, "{p}");
        assert_eq!(top[0]["id"], p["id"], "{p}");
    }
    // Sampled: the probabilities after top-k sum to 1 over the kept candidates.
    let v = complete(
        json!({"prompt": prompt, "n_predict": 3, "n_probs": 3, "top_k": 3,
        "temperature": 1.0, "seed": 5, "post_sampling_probs": true}),
    );
    for p in v["completion_probabilities"].as_array().unwrap() {
        let sum: f64 = p["top_probs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["prob"].as_f64().unwrap())
            .sum();
        assert!((sum - 1.0).abs() < 1e-4, "{p}");
        assert!(p["prob"].as_f64().unwrap() > 0.0, "{p}");
        let top = p["top_probs"].as_array().unwrap();
        assert!(top.iter().all(|t| t["prob"].as_f64().unwrap() > 0.0), "{p}");
    }
}

/// What a run of llama.cpp's own server tests (mainline, 2026-06) found next: llama-server's
/// other prompt forms (`{"prompt_string"}`, ids mixed with strings, lists of both) on
/// `/completion` and `/v1/embeddings`, `id_slot`, `backend_sampling`, the chat token count
/// `/chat/completions/input_tokens`, `/apply-template` without the generation prompt, and
/// "too large" in an oversized embedding input's error.
#[test]
fn llama_servers_prompt_forms_slots_and_token_counts() {
    let server = start_with(&["--temp", "0", "-n", "8", "--parallel", "2", "-c", "256"]);
    let a = server.addr.as_str();
    let prompt = "I believe the meaning of life is";

    // `{"prompt_string"}` is the text; a list of forms is several prompts.
    let (status, text) = post(a, "/completion", &json!({"prompt": prompt, "n_predict": 4}));
    assert_eq!(status, 200, "{text}");
    let (status, object) = post(
        a,
        "/completion",
        &json!({"prompt": {"prompt_string": prompt}, "n_predict": 4}),
    );
    assert_eq!(status, 200, "{object}");
    assert_eq!(object["content"], text["content"]);
    let (_, tokens) = post(
        a,
        "/tokenize",
        &json!({"content": prompt, "add_special": true}),
    );
    let (status, many) = post(
        a,
        "/completion",
        &json!({"prompt": [tokens["tokens"], {"prompt_string": prompt}], "n_predict": 4}),
    );
    assert_eq!(status, 200, "{many}");
    let many = many.as_array().unwrap();
    assert_eq!(many.len(), 2);
    assert!(
        many.iter().all(|m| m["content"] == text["content"]),
        "{many:?}"
    );
    let multimodal = json!({"prompt": {"prompt_string": prompt, "multimodal_data": ["AAAA"]}});
    assert_refused(post(a, "/completion", &multimodal), 400, "text only");

    // Embedding inputs in the same forms: one embedding per prompt, a mixed list is one.
    for (input, n) in [
        (json!([12, 34, "string", 56, 78]), 1),
        (json!(["string1", [12, 34, 56]]), 2),
        (json!([[12, 34, 56], [12, "string", 34, 56]]), 2),
        (json!({"prompt_string": "string"}), 1),
    ] {
        let (status, v) = post(a, "/v1/embeddings", &json!({"input": input}));
        assert_eq!(status, 200, "{input}: {v}");
        assert_eq!(v["data"].as_array().unwrap().len(), n, "{input}");
    }
    // The mixed form is the tokens of its pieces in place: BOS and the ids of "string1",
    // then 12 and 34.
    let (_, ids) = post(
        a,
        "/tokenize",
        &json!({"content": "string1", "add_special": true}),
    );
    let mut joined: Vec<Value> = ids["tokens"].as_array().unwrap().clone();
    joined.extend([json!(12), json!(34)]);
    let (_, by_ids) = post(a, "/v1/embeddings", &json!({"input": joined}));
    let (_, mixed) = post(a, "/v1/embeddings", &json!({"input": ["string1", 12, 34]}));
    assert!(by_ids["data"][0]["embedding"] == mixed["data"][0]["embedding"]);
    let long = json!({"input": "This is a test ".repeat(512)});
    assert_refused(post(a, "/v1/embeddings", &long), 400, "too large");

    // id_slot: the request runs in that slot; a slot that does not exist is refused.
    for slot in [0, 1] {
        let (status, v) = post(
            a,
            "/completion",
            &json!({"prompt": prompt, "n_predict": 2, "id_slot": slot, "cache_prompt": true}),
        );
        assert_eq!(status, 200, "{v}");
        assert_eq!(v["id_slot"], slot, "{v}");
    }
    let chat = json!({"messages": [{"role": "user", "content": "Hello"}], "max_tokens": 4,
        "n": 2, "id_slot": 0});
    let (status, v) = post(a, "/chat/completions", &chat);
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["choices"].as_array().unwrap().len(), 2, "{v}");
    let (status, v) = post(a, "/completion", &json!({"prompt": prompt, "id_slot": 2}));
    assert_eq!(
        (status, v["error"]["param"].as_str()),
        (400, Some("id_slot")),
        "{v}"
    );

    // backend_sampling (where llama-server samples) changes nothing here.
    let probe = |backend: bool| {
        post(
            a,
            "/completion",
            &json!({"prompt": prompt, "n_probs": 3, "n_predict": 4, "seed": 4242,
                "temperature": 1.0, "post_sampling_probs": true, "backend_sampling": backend}),
        )
    };
    let ((s1, v1), (s2, v2)) = (probe(true), probe(false));
    assert_eq!((s1, s2), (200, 200), "{v1} {v2}");
    assert_eq!(
        v1["completion_probabilities"],
        v2["completion_probabilities"]
    );

    // The chat prompt's token count, as the chat endpoint renders it (even past the
    // context, which is what a client asks it for).
    let messages = json!([{"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is the meaning of life?"}]);
    let (_, rendered) = post(a, "/apply-template", &json!({"messages": messages}));
    let (_, ids) = post(
        a,
        "/tokenize",
        &json!({"content": rendered["prompt"], "add_special": true, "parse_special": true}),
    );
    let n = ids["tokens"].as_array().unwrap().len();
    for path in [
        "/chat/completions/input_tokens",
        "/v1/chat/completions/input_tokens",
    ] {
        let (status, v) = post(a, path, &json!({"messages": messages}));
        assert_eq!(status, 200, "{v}");
        assert_eq!(v["input_tokens"], n, "{v}");
    }
    let (status, v) = post(
        a,
        "/v1/chat/completions",
        &json!({"messages": messages, "max_tokens": 1}),
    );
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["usage"]["prompt_tokens"], n, "{v}");
    let long = json!([{"role": "user", "content": "word ".repeat(400)}]);
    let (status, v) = post(
        a,
        "/chat/completions/input_tokens",
        &json!({"messages": long}),
    );
    assert_eq!(status, 200, "{v}");
    assert!(v["input_tokens"].as_u64().unwrap() > 256, "{v}");

    // Without the generation prompt the rendering stops after the last message.
    let user = json!([{"role": "user", "content": "Hello"}]);
    let (_, with) = post(a, "/apply-template", &json!({"messages": user}));
    let (status, without) = post(
        a,
        "/apply-template",
        &json!({"messages": user, "add_generation_prompt": false}),
    );
    assert_eq!(status, 200, "{without}");
    let (with, without) = (
        with["prompt"].as_str().unwrap(),
        without["prompt"].as_str().unwrap(),
    );
    assert!(
        with.starts_with(without) && with.len() > without.len(),
        "{with:?} {without:?}"
    );
    assert!(without.ends_with("Hello<|eot_id|>"), "{without:?}");
}

/// llama-server's `return_progress` (clients such as Jan always send it with `stream`):
/// `prompt_progress` chunks before the first token, from the cached prefix to the whole
/// prompt, on the chat, completions and native endpoints; a whole answer just accepts it.
#[test]
fn streams_report_the_prompts_progress() {
    let server = start_with(&["--temp", "0", "-n", "4", "--parallel", "1", "-b", "16"]);
    let a = server.addr.as_str();
    // A different start per endpoint, so that no request finds another's prompt cached.
    let text = |start: &str| format!("{start} {}", "This is a test. ".repeat(6));
    let chat = json!({"messages": [{"role": "user", "content": text("Chat:")}],
        "stream": true, "return_progress": true, "stream_options": {"include_usage": true}});
    for (path, body) in [
        ("/v1/chat/completions", chat.clone()),
        (
            "/v1/completions",
            json!({"prompt": text("Completion:"), "stream": true, "return_progress": true,
            "stream_options": {"include_usage": true}}),
        ),
        (
            "/completion",
            json!({"prompt": text("Native:"), "stream": true, "return_progress": true}),
        ),
    ] {
        let (status, body) = http(a, "POST", path, &body.to_string());
        assert_eq!(status, 200, "{body}");
        let chunks: Vec<Value> = events(&body)
            .into_iter()
            .filter(|e| *e != "[DONE]")
            .map(|e| serde_json::from_str(e).unwrap())
            .collect();
        // Every progress chunk comes before the first piece of text.
        let first_text = chunks
            .iter()
            .position(|c| {
                let choice = &c["choices"][0];
                [&choice["delta"]["content"], &choice["text"], &c["content"]]
                    .iter()
                    .any(|t| t.as_str().is_some_and(|t| !t.is_empty()))
            })
            .unwrap_or_else(|| panic!("{path}: no text in {body}"));
        let progress: Vec<&Value> = chunks
            .iter()
            .filter_map(|c| c.get("prompt_progress"))
            .collect();
        assert!(progress.len() >= 3, "{path}: {body}");
        assert!(chunks[first_text..]
            .iter()
            .all(|c| c.get("prompt_progress").is_none()));
        let total = progress[0]["total"].as_u64().unwrap();
        assert_eq!(progress[0]["cache"], progress[0]["processed"], "{path}");
        for w in progress.windows(2) {
            assert!(
                w[1]["processed"].as_u64() > w[0]["processed"].as_u64(),
                "{path}: {w:?}"
            );
            assert!(
                w[1]["processed"].as_u64().unwrap() - w[0]["processed"].as_u64().unwrap() <= 16
            );
        }
        assert_eq!(progress.last().unwrap()["processed"], total, "{path}");
        if path != "/completion" {
            let usage = &chunks.last().unwrap()["usage"];
            assert_eq!(usage["prompt_tokens"], total, "{path}: {usage}");
        }
    }
    // Again (the slot still holds the last prompt): the cached prefix is reported as such,
    // with one piece left.
    let again = json!({"prompt": text("Native:"), "stream": true, "return_progress": true});
    let (_, body) = http(a, "POST", "/completion", &again.to_string());
    let progress: Vec<Value> = events(&body)
        .into_iter()
        .filter_map(|e| {
            serde_json::from_str::<Value>(e)
                .ok()?
                .get("prompt_progress")
                .cloned()
        })
        .collect();
    assert_eq!(progress.len(), 2, "{body}");
    assert!(progress[0]["cache"].as_u64().unwrap() > 16, "{body}");
    let mut whole = chat.clone();
    whole["stream"] = json!(false);
    let (status, v) = post(a, "/v1/chat/completions", &whole);
    assert_eq!(status, 200, "{v}");
}

/// A header's value in a response head (names compared without case).
fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// llama-server's defaults and flags that llama.cpp's server test suite showed missing: CORS
/// for any origin by default, preflights before the API key, unknown paths 404 without the
/// key, `-n -1`, `--chat-template NAME`, `--no-slots`, `--no-webui`, several `--alias`es and
/// `--tags`.
#[test]
fn llama_server_defaults_and_flags() {
    let server = start_with(&[
        "--api-key",
        "k",
        "-n",
        "-1",
        "-c",
        "48",
        "--temp",
        "0",
        "--chat-template",
        "llama3",
        "--no-slots",
        "--no-webui",
        "--alias",
        "second,first",
        "--tags",
        "t1,t2",
    ]);
    let a = server.addr.as_str();
    let key = "Authorization: Bearer k";

    // Any origin is echoed, with credentials, on any answer (test_security.py).
    let (status, head, _) = http_with(a, "GET", "/health", &["Origin: http://any.test"], "");
    assert_eq!(status, 200);
    assert_eq!(
        header(&head, "access-control-allow-origin"),
        Some("http://any.test")
    );
    assert_eq!(
        header(&head, "access-control-allow-credentials"),
        Some("true")
    );
    // A preflight is answered before the key is asked for.
    let (status, head, _) = http_with(
        a,
        "OPTIONS",
        "/v1/chat/completions",
        &[
            "Origin: http://any.test",
            "Access-Control-Request-Method: POST",
            "Access-Control-Request-Headers: authorization, content-type",
        ],
        "",
    );
    assert_eq!(status, 200, "{head}");
    assert_eq!(
        header(&head, "access-control-allow-origin"),
        Some("http://any.test")
    );
    assert_eq!(
        header(&head, "access-control-allow-methods"),
        Some("GET, POST")
    );
    assert_eq!(
        header(&head, "access-control-allow-headers"),
        Some("authorization, content-type")
    );
    assert_eq!(
        header(&head, "access-control-allow-credentials"),
        Some("true")
    );
    // A path that is no route is a 404 without the key (the web UI's files are public in
    // llama-server); routes still want it.
    for (method, path) in [
        ("GET", "/bundle.js"),
        ("GET", "/bundle.css"),
        ("POST", "/nope"),
    ] {
        let (status, body) = http(a, method, path, "");
        assert_eq!(status, 404, "{method} {path}: {body}");
        assert!(body.contains("no such endpoint"), "{body}");
    }
    assert_eq!(http(a, "POST", "/completion", "{}").0, 401);
    // --no-webui: no page; --no-slots: llama-server's 501.
    assert_eq!(http(a, "GET", "/", "").0, 404);
    let (status, _, body) = http_with(a, "GET", "/slots", &[key], "");
    assert_eq!(status, 501, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        v["error"]["message"],
        "This server does not support slots endpoint. Start it with `--slots`"
    );
    assert_eq!(v["error"]["type"], "not_supported_error");

    // Aliases: the smallest is the id (llama-server keeps them in a sorted set); all are
    // listed, and each is a model here.
    let (status, models) = get(a, "/v1/models");
    assert_eq!(status, 200);
    assert_eq!(models["data"].as_array().map(Vec::len), Some(1), "{models}");
    assert_eq!(models["data"][0]["id"], "first");
    assert_eq!(models["data"][0]["aliases"], json!(["first", "second"]));
    assert_eq!(models["data"][0]["tags"], json!(["t1", "t2"]));
    for id in ["first", "second"] {
        let path = format!("/v1/models/{id}");
        assert_eq!(http_with(a, "GET", &path, &[key], "").0, 200, "{path}");
    }
    let (status, _, body) = http_with(a, "GET", "/v1/models/third", &[key], "");
    assert_eq!(status, 404, "{body}");

    // -n -1: no limit by default, so a generation ends at the end of generation or a full
    // context (48 tokens here).
    let (_, _, body) = http_with(a, "GET", "/props", &[key], "");
    let props: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        props["default_generation_settings"]["params"]["n_predict"], -1,
        "{props}"
    );
    let (status, _, body) = http_with(
        a,
        "POST",
        "/completion",
        &[key],
        &json!({"prompt": "ROMEO:", "ignore_eos": true}).to_string(),
    );
    assert_eq!(status, 200, "{body}");
    let done: Value = serde_json::from_str(&body).unwrap();
    let predicted = done["tokens_predicted"].as_u64().unwrap_or(0);
    let evaluated = done["tokens_evaluated"].as_u64().unwrap_or(0);
    assert!(predicted > 0 && predicted + evaluated >= 47, "{done}");

    // --chat-template llama3: llama.cpp's Llama 3 format.
    let (status, _, body) = http_with(
        a,
        "POST",
        "/apply-template",
        &[key],
        &json!({"messages": [{"role": "system", "content": " Be brief. "},
                             {"role": "user", "content": "hi"}]})
        .to_string(),
    );
    assert_eq!(status, 200, "{body}");
    let rendered: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        rendered["prompt"],
        "<|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>\
         <|start_header_id|>user<|end_header_id|>\n\nhi<|eot_id|>\
         <|start_header_id|>assistant<|end_header_id|>\n\n"
    );
}

/// `--cors-origin` restricts to its origins; `none` turns CORS off.
#[test]
fn cors_origins_restrict_and_none_turns_cors_off() {
    let server = start_with(&["--cors-origin", "none"]);
    let (_, head, _) = http_with(
        &server.addr,
        "OPTIONS",
        "/v1/completions",
        &[
            "Origin: http://any.test",
            "Access-Control-Request-Method: POST",
        ],
        "",
    );
    assert_eq!(header(&head, "access-control-allow-origin"), None, "{head}");
    drop(server);
    let server = start_with(&["--cors-origin", "http://mine.test"]);
    for (origin, allowed) in [("http://mine.test", true), ("http://any.test", false)] {
        let (_, head, _) = http_with(
            &server.addr,
            "GET",
            "/health",
            &[&format!("Origin: {origin}")],
            "",
        );
        assert_eq!(
            header(&head, "access-control-allow-origin").is_some(),
            allowed,
            "{origin}: {head}"
        );
    }
}

/// `--pooling`: `none` gives every token's vector at llama-server's native `/embedding` (and
/// OpenAI's endpoint refuses it, as llama-server does); `mean` is their normalised mean.
#[test]
fn pooling_none_and_mean() {
    let prompt = "ROMEO: But soft";
    let server = start_with(&["--pooling", "none"]);
    let a = server.addr.as_str();
    let (status, tokens) = post(
        a,
        "/tokenize",
        &json!({"content": prompt, "add_special": true}),
    );
    assert_eq!(status, 200, "{tokens}");
    let n_tokens = tokens["tokens"].as_array().map_or(0, Vec::len);
    let (status, v) = post(a, "/embedding", &json!({"content": prompt}));
    assert_eq!(status, 200, "{v}");
    let rows: Vec<Vec<f64>> = v[0]["embedding"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            r.as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap())
                .collect()
        })
        .collect();
    assert!(
        n_tokens > 1 && rows.len() >= n_tokens - 1,
        "{} rows",
        rows.len()
    );
    assert_refused(
        post(a, "/v1/embeddings", &json!({"input": prompt})),
        400,
        "not OAI compatible",
    );
    // Un-prefixed `/embeddings` is llama-server's native endpoint there
    // (test_embedding.py::test_embedding_pooling_none).
    let (status, unprefixed) = post(a, "/embeddings", &json!({"input": prompt}));
    assert_eq!(status, 200, "{unprefixed}");
    assert_eq!(unprefixed, v);
    drop(server);

    let server = start_with(&["--pooling", "mean"]);
    let a = server.addr.as_str();
    let (status, native) = post(a, "/embedding", &json!({"content": prompt}));
    assert_eq!(status, 200, "{native}");
    let pooled: Vec<f64> = native[0]["embedding"][0]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect();
    let (_, openai) = post(a, "/v1/embeddings", &json!({"input": prompt}));
    assert_eq!(openai["data"][0]["embedding"], native[0]["embedding"][0]);
    // With a pooling, un-prefixed `/embeddings` keeps OpenAI's shape (clients whose base URL
    // lacks `/v1`).
    let (_, unprefixed) = post(a, "/embeddings", &json!({"input": prompt}));
    assert_eq!(
        unprefixed["data"][0]["embedding"],
        openai["data"][0]["embedding"]
    );
    // The mean of the per-token vectors, normalised.
    let width = pooled.len();
    let mut mean = vec![0f64; width];
    for r in &rows {
        mean.iter_mut()
            .zip(r)
            .for_each(|(m, x)| *m += x / rows.len() as f64);
    }
    let norm = mean.iter().map(|x| x * x).sum::<f64>().sqrt();
    let diff = mean
        .iter()
        .zip(&pooled)
        .map(|(m, p)| (m / norm - p).abs())
        .fold(0.0, f64::max);
    assert!(diff < 1e-4, "mean pooling differs by {diff}");
}

/// Values llama-server refuses are refused before the model loads, naming what is known.
#[test]
fn bad_flag_values_are_refused_at_start() {
    for (args, said) in [
        (&["--chat-template", "llama-3"][..], "chatml, llama2"),
        (&["--pooling", "rank"][..], "reranker"),
        (&["-n", "-2"][..], "-n -2"),
        (&["--cors-origin", "none,http://a.test"][..], "none"),
        (&["--sleep-idle-seconds", "0"][..], "above 0, or -1"),
        (
            &["--spec", "ngram", "--model-draft", "d.gguf"][..],
            "one or the other",
        ),
        (
            &["--model-draft", "d.gguf", "--draft-p-min", "2"][..],
            "a probability",
        ),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_bitnet"))
            .args(["serve", "--port", "0"])
            .args(args)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?}");
        assert!(stderr.contains(said), "{args:?}: {stderr}");
    }
    let out = Command::new(env!("CARGO_BIN_EXE_bitnet"))
        .args(["chat", "--chat-template", "nonsense"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("llama3"));
}

#[test]
fn an_idle_server_sleeps_and_the_next_request_wakes_it() {
    let server = start_with(&["--sleep-idle-seconds", "0.3", "--parallel", "2"]);
    let addr = server.addr.as_str();
    let request = json!({"prompt": "ROMEO:\n", "n_predict": 12, "temperature": 0});
    let (status, awake) = post(addr, "/completion", &request);
    assert_eq!(status, 200, "{awake}");
    let is_sleeping = || get(addr, "/props").1["is_sleeping"].as_bool().unwrap();
    let start = std::time::Instant::now();
    while !is_sleeping() {
        assert!(
            start.elapsed().as_secs() < 30,
            "the server did not go to sleep"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    // What needs no model answers without waking it.
    let (status, health) = get(addr, "/health");
    assert_eq!(status, 200);
    assert_eq!(
        (
            health["sleeping"].as_bool(),
            health["kv_cache_bytes"].as_u64()
        ),
        (Some(true), Some(0))
    );
    assert_eq!(get(addr, "/models").0, 200);
    let (status, tokens) = post(addr, "/tokenize", &json!({"content": "ROMEO"}));
    assert_eq!(status, 200, "{tokens}");
    let (_, metrics) = http(addr, "GET", "/metrics", "");
    assert!(metrics.contains("\nbitnet_sleeping 1\n"), "{metrics}");
    assert!(is_sleeping());
    // A generation loads the model again and gives the same greedy text.
    let (status, woken) = post(addr, "/completion", &request);
    assert_eq!(status, 200, "{woken}");
    assert_eq!(woken["content"], awake["content"]);
    let log = server.log.lock().unwrap().clone();
    assert!(
        log.contains("sleeping: the model and KV caches are unloaded"),
        "{log}"
    );
    assert!(log.contains("awake: the model loaded again"), "{log}");
}

#[test]
fn a_draft_model_changes_no_token_and_must_share_the_vocabulary() {
    let demo = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../models/bitnet-shakespeare-7m-i2_s.gguf"
    );
    let requests = [
        json!({"prompt": "ROMEO:\n", "n_predict": 40, "temperature": 0}),
        json!({"prompt": "JULIET:\n", "n_predict": 40, "temperature": 0.9, "seed": 7}),
    ];
    let answers = |args: &[&str]| {
        let server = start_with(args);
        let texts: Vec<Value> = requests
            .iter()
            .map(|r| {
                let (status, v) = post(&server.addr, "/completion", r);
                assert_eq!(status, 200, "{v}");
                v["content"].clone()
            })
            .collect();
        let (_, metrics) = http(&server.addr, "GET", "/metrics", "");
        (texts, metrics)
    };
    let (plain, _) = answers(&[]);
    let (drafted, metrics) = answers(&["--model-draft", demo, "--draft-p-min", "0"]);
    assert_eq!(plain, drafted);
    let drafted_tokens = metrics
        .lines()
        .find_map(|l| l.strip_prefix("bitnet_spec_drafted_tokens_total "))
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap();
    assert!(drafted_tokens > 0, "{metrics}");

    let other = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../testdata/embedding/qwen3-wide/model.gguf"
    );
    let out = Command::new(env!("CARGO_BIN_EXE_bitnet"))
        .args(["serve", "--port", "0", "--model-draft", other])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("must share the served model's vocabulary"),
        "{stderr}"
    );
}

#[test]
fn a_generation_past_a_shifted_context_is_truncated() {
    // llama-server's `truncated`: prompt and generated tokens together overflowed the
    // context, whether generation stopped there or shifted it and went on.
    let server = start_with(&["-c", "32", "--parallel", "1", "--temp", "0"]);
    let request = json!({"prompt": "ROMEO:\n", "n_predict": 8});
    let (_, short) = post(&server.addr, "/completion", &request);
    assert_eq!(short["truncated"], false, "{short}");
    let long = json!({"prompt": "ROMEO:\n", "n_predict": 40});
    let (_, full) = post(&server.addr, "/completion", &long);
    assert_eq!(
        (full["truncated"].as_bool(), full["stop_type"].as_str()),
        (Some(true), Some("limit")),
        "{full}"
    );
    drop(server);
    let server = start_with(&["-c", "32", "--parallel", "1", "--temp", "0", "--ctx-shift"]);
    let (status, shifted) = post(&server.addr, "/completion", &long);
    assert_eq!(status, 200, "{shifted}");
    assert_eq!(shifted["tokens_predicted"], 40, "{shifted}");
    assert_eq!(shifted["truncated"], true, "{shifted}");
    // A prompt longer than the context is cut to fit (its first tokens and its end), not
    // refused, as llama-server does under context shifting.
    let passage = "ROMEO:\nBut soft, what light through yonder window breaks? It is the east, \
                   and Juliet is the sun. Arise, fair sun, and kill the envious moon.";
    let (status, cut) = post(
        &server.addr,
        "/completion",
        &json!({"prompt": passage, "n_predict": 4, "n_keep": 2}),
    );
    assert_eq!(status, 200, "{cut}");
    assert_eq!(cut["truncated"], true, "{cut}");
    let evaluated = cut["tokens_evaluated"].as_u64().unwrap();
    assert!((17..32).contains(&evaluated), "{cut}");
    let run =
        cut["timings"]["prompt_n"].as_u64().unwrap() + cut["timings"]["cache_n"].as_u64().unwrap();
    assert_eq!(run, evaluated, "{cut}");
    drop(server);
    let server = start_with(&["-c", "32", "--parallel", "1", "--temp", "0"]);
    let (status, refused) = post(&server.addr, "/completion", &json!({"prompt": passage}));
    assert_eq!(status, 400, "{refused}");
}
