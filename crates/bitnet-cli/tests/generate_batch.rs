//! The `bitnet` binary end to end: greedy generation reproduces the reference engines' tokens
//! through the CLI, and batch keeps order and isolates bad lines.

use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;

fn repo(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(rel)
}

fn bitnet(args: &[&str]) -> (String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_bitnet"))
        .args(args)
        .output()
        .unwrap();
    let stdout = String::from_utf8(out.stdout).unwrap();
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(out.status.success(), "{args:?}: {stderr}");
    (stdout, stderr)
}

fn ids(v: &Value) -> Vec<u64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap())
        .collect()
}

fn json_file(rel: &str) -> Value {
    serde_json::from_slice(&std::fs::read(repo(rel)).unwrap()).unwrap()
}

#[test]
fn greedy_generation_reproduces_the_references_through_the_cli() {
    // Demo model, bitnet.cpp's and transformers' 100 greedy tokens (both cache types).
    let cpp = json_file("testdata/demo/bitnetcpp-greedy.json");
    for sample in cpp["samples"].as_array().unwrap() {
        let prompt = sample["prompt"].as_str().unwrap();
        if prompt != "ROMEO:\n" && prompt != "JULIET:\n" {
            continue;
        }
        let prompt_ids: Vec<String> = ids(&sample["prompt_ids"])
            .iter()
            .map(u64::to_string)
            .collect();
        for cache in ["f16", "f32"] {
            let (out, _) = bitnet(&[
                "generate",
                "--tokens",
                &prompt_ids.join(","),
                "-n",
                "100",
                "--temp",
                "0",
                "--cache-type",
                cache,
                "--json",
            ]);
            let v: Value = serde_json::from_str(&out).unwrap();
            assert_eq!(
                ids(&v["generated_ids"]),
                ids(&sample["generated_ids"]),
                "{prompt:?} {cache}"
            );
        }
        // The same from text: the tokenizer adds BOS and gives the same prompt ids.
        let escaped = prompt.replace('\n', "\\n");
        let (out, _) = bitnet(&[
            "generate", "-p", &escaped, "-n", "100", "--temp", "0", "--json",
        ]);
        let v: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(ids(&v["prompt_ids"]), ids(&sample["prompt_ids"]));
        assert_eq!(ids(&v["generated_ids"]), ids(&sample["generated_ids"]));
    }

    // The visible fixture: 32 greedy tokens equal to transformers' and bitnet.cpp's.
    let fixture = json_file("testdata/visible/fixture.json");
    let prompt: Vec<String> = ids(&fixture["greedy"]["prompt_ids"])
        .iter()
        .map(u64::to_string)
        .collect();
    let model = repo("testdata/visible/model-i2_s.gguf");
    let (out, _) = bitnet(&[
        "generate",
        "-m",
        model.to_str().unwrap(),
        "--tokens",
        &prompt.join(","),
        "-n",
        "32",
        "--temp",
        "0",
        "--ignore-eos",
        "--json",
    ]);
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        ids(&v["generated_ids"]),
        ids(&fixture["greedy"]["new_tokens"])
    );
    for key in [
        "prompt_tokens_per_s",
        "generation_tokens_per_s",
        "time_to_first_token_s",
        "total_s",
        "kv_cache_bytes",
    ] {
        assert!(v[key].as_f64().is_some(), "{key} missing");
    }
}

#[test]
fn sampled_generation_is_reproducible_with_a_seed_and_reports_its_figures() {
    let run = |seed: &str| bitnet(&["generate", "-p", "ROMEO:\\n", "-n", "40", "--seed", seed]);
    let (a, stderr) = run("11");
    let (b, _) = run("11");
    let (c, _) = run("12");
    assert_eq!(a, b);
    assert_ne!(a, c);
    assert!(a.starts_with("ROMEO:\n"));
    for figure in [
        "prompt:",
        "t/s",
        "time to first token",
        "peak RSS",
        "KV cache",
    ] {
        assert!(stderr.contains(figure), "{figure} missing from: {stderr}");
    }
}

#[test]
fn stop_strings_end_generation_and_are_not_printed() {
    let (out, _) = bitnet(&[
        "generate",
        "-p",
        "ROMEO:\\n",
        "-n",
        "200",
        "--temp",
        "0",
        "--stop",
        "ROMEO",
        "--json",
    ]);
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["stop_reason"], "stop");
    let text = v["text"].as_str().unwrap();
    assert!(!text.contains("ROMEO"), "{text:?}");
    assert!(!text.is_empty());
}

#[test]
fn batch_keeps_order_and_reports_a_bad_line() {
    let dir = std::env::temp_dir().join(format!("bitnet-batch-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let input = dir.join("in.jsonl");
    let output = dir.join("out.jsonl");
    let mut lines = Vec::new();
    for i in 0..100 {
        if i == 37 {
            lines.push("{\"id\": 37, \"prompt\": ".to_string()); // malformed JSON
        } else if i % 2 == 0 {
            lines.push(format!(
                "{{\"id\": {i}, \"prompt\": \"ROMEO:\\n\", \"max_tokens\": 4, \"seed\": {i}}}"
            ));
        } else {
            lines.push(format!(
                "{{\"id\": \"r{i}\", \"messages\": [{{\"role\": \"user\", \"content\": \"Speak\"}}], \"max_tokens\": 3, \"temperature\": 0}}"
            ));
        }
    }
    std::fs::write(&input, lines.join("\n")).unwrap();
    // The bad line makes the exit status 1, after every line has its record.
    let run = Command::new(env!("CARGO_BIN_EXE_bitnet"))
        .args([
            "batch",
            "-i",
            input.to_str().unwrap(),
            "-o",
            output.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert_eq!(run.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("99 results, 1 errors"), "{stderr}");
    let out = std::fs::read_to_string(&output).unwrap();
    let records: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(records.len(), 100);
    for (i, r) in records.iter().enumerate() {
        assert_eq!(r["line"], i + 1);
        if i == 37 {
            assert!(r["error"].as_str().unwrap().contains("line 38"), "{r}");
        } else {
            assert!(r.get("error").is_none(), "{r}");
            let expected_id = if i % 2 == 0 {
                Value::from(i)
            } else {
                Value::from(format!("r{i}"))
            };
            assert_eq!(r["id"], expected_id);
            assert!(r["generated_tokens"].as_u64().unwrap() > 0);
        }
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn errors_are_one_clear_line() {
    let out = Command::new(env!("CARGO_BIN_EXE_bitnet"))
        .args(["generate", "-m", "/nonexistent.gguf", "-p", "x"])
        .env_remove("RUST_BACKTRACE")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with("error: ") && stderr.contains("/nonexistent.gguf"),
        "{stderr}"
    );
}

/// Perplexity: the demo model finds its own greedy Shakespeare far more likely than word salad.
#[test]
fn perplexity_separates_the_models_text_from_noise() {
    let samples = std::fs::read_to_string(repo("testdata/demo/transformers-samples.txt")).unwrap();
    let mut own = String::new();
    let mut inside = false;
    for line in samples.lines() {
        if line.starts_with("--- text") {
            inside = true;
        } else if line.starts_with("=====") {
            inside = false;
        } else if inside {
            own.push_str(&line.replace("<|begin_of_text|>", ""));
            own.push('\n');
        }
    }
    let noise: String = (0..600u64)
        .map(|i| ["qz", "xv ", "the", "kk ", "of", "ja "][(i * 7 + i / 3) as usize % 6])
        .collect();
    let dir = std::env::temp_dir().join(format!("bitnet-ppl-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ppl = |name: &str, text: &str| {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        let (out, _) = bitnet(&[
            "perplexity",
            "-f",
            path.to_str().unwrap(),
            "-c",
            "64",
            "--json",
        ]);
        let v: Value = serde_json::from_str(&out).unwrap();
        assert!(v["chunks"].as_u64().unwrap() >= 3, "{v}");
        v["ppl"].as_f64().unwrap()
    };
    let (a, b) = (ppl("own.txt", &own), ppl("noise.txt", &noise));
    assert!(a > 1.0 && a < 50.0, "own text: {a}");
    assert!(b > 1000.0, "noise: {b}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `--chat-template` replaces the model's template; one that does not compile fails only the
/// lines that need it (`messages`), not plain prompts.
#[test]
fn the_chat_template_flag_overrides_and_a_broken_one_fails_only_chat_lines() {
    let dir = std::env::temp_dir().join(format!("bitnet-template-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let input = dir.join("in.jsonl");
    let output = dir.join("out.jsonl");
    std::fs::write(
        &input,
        "{\"prompt\": \"ROMEO:\", \"max_tokens\": 2, \"temperature\": 0}\n\
         {\"messages\": [{\"role\": \"user\", \"content\": \"ROMEO:\"}], \"max_tokens\": 2, \"temperature\": 0}\n",
    )
    .unwrap();
    let batch = |template: &str| {
        let out = Command::new(env!("CARGO_BIN_EXE_bitnet"))
            .args(["batch", "--chat-template", template, "-i"])
            .arg(&input)
            .arg("-o")
            .arg(&output)
            .env_remove("RUST_BACKTRACE")
            .output()
            .unwrap();
        let records: Vec<Value> = std::fs::read_to_string(&output)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        (out.status.code(), records)
    };
    let (code, records) = batch("{% if %}");
    assert_eq!(code, Some(1));
    assert!(records[0].get("error").is_none(), "{}", records[0]);
    let error = records[1]["error"].as_str().unwrap();
    assert!(error.contains("chat template"), "{error}");

    // A template that renders the message's text alone: the chat line's prompt is the plain
    // prompt's (BOS and "ROMEO:").
    let (code, records) =
        batch("{{ bos_token }}{% for m in messages %}{{ m.content }}{% endfor %}");
    assert_eq!(code, Some(0), "{records:?}");
    assert_eq!(records[1]["prompt_tokens"], records[0]["prompt_tokens"]);
    assert_eq!(records[1]["generated_ids"], records[0]["generated_ids"]);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// What only `serve` answers (several choices, logprobs, streaming, constrained output) is
/// refused by name on its line, not silently ignored.
#[test]
fn batch_refuses_the_fields_only_the_server_answers() {
    let dir = std::env::temp_dir().join(format!("bitnet-batch-fields-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let input = dir.join("in.jsonl");
    let output = dir.join("out.jsonl");
    let fields = [
        ("n", "2"),
        ("logprobs", "true"),
        ("stream", "true"),
        ("echo", "true"),
        ("logit_bias", "{\"5\": 1}"),
        ("response_format", "{\"type\": \"json_object\"}"),
    ];
    let lines: Vec<String> = fields
        .iter()
        .map(|(f, v)| format!("{{\"prompt\": \"ROMEO:\", \"max_tokens\": 2, \"{f}\": {v}}}"))
        .collect();
    std::fs::write(&input, lines.join("\n")).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_bitnet"))
        .args(["batch", "-i"])
        .arg(&input)
        .arg("-o")
        .arg(&output)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let records: Vec<Value> = std::fs::read_to_string(&output)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    for ((field, _), r) in fields.iter().zip(&records) {
        let error = r["error"].as_str().unwrap_or_default();
        assert!(
            error.contains(&format!("`{field}` is not supported by `bitnet batch`")),
            "{field}: {r}"
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `-n -1` (llama.cpp's "no limit") is the default budget of lines without `max_tokens`:
/// generation then runs to a full context.
#[test]
fn batch_takes_n_minus_one_as_no_limit() {
    let dir = std::env::temp_dir().join(format!("bitnet-batch-n-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let input = dir.join("in.jsonl");
    let output = dir.join("out.jsonl");
    std::fs::write(
        &input,
        "{\"prompt\": \"ROMEO:\", \"temperature\": 0, \"ignore_eos\": true}\n",
    )
    .unwrap();
    let (input_s, output_s) = (input.to_str().unwrap(), output.to_str().unwrap());
    bitnet(&[
        "batch", "-n", "-1", "-c", "32", "-i", input_s, "-o", output_s,
    ]);
    let record: Value =
        serde_json::from_str(std::fs::read_to_string(&output).unwrap().trim()).unwrap();
    let generated = record["generated_tokens"].as_u64().unwrap();
    let prompt = record["prompt_tokens"].as_u64().unwrap();
    assert!(generated > 0 && generated + prompt >= 31, "{record}");
    std::fs::remove_dir_all(&dir).unwrap();
}
