//! What a new user hits (issue 13): bad values refused up front with one line naming the flag
//! and its range, llama.cpp's conventions, clear load errors, the context checked against the
//! machine, context shift, the one request format of `batch`, and the commands that default
//! to the demo model.

use std::path::PathBuf;
use std::process::{Command, Output};

use serde_json::Value;

fn repo(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(rel)
}

fn run(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_bitnet"))
        .args(args)
        .env_remove("RUST_BACKTRACE")
        .output()
        .unwrap()
}

fn ok(args: &[&str]) -> (String, String) {
    let out = run(args);
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "{args:?}: {stderr}");
    (String::from_utf8(out.stdout).unwrap(), stderr)
}

/// Runs a command that must fail; returns its one-line error (and checks stdout is empty).
fn fails(args: &[&str]) -> String {
    let out = run(args);
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!out.status.success(), "{args:?} succeeded");
    assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
    assert!(out.stdout.is_empty(), "{args:?} printed {:?}", out.stdout);
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "{args:?}: {stderr}");
    errors[0].to_string()
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("bitnet-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn bad_sampler_values_are_refused_naming_the_flag_and_range() {
    for (args, expected) in [
        (
            &["--temp", "nan"][..],
            "--temp NaN: must be a finite number",
        ),
        (&["--top-p", "2"], "--top-p 2: must be between 0 and 1"),
        (&["--min-p", "5"], "--min-p 5: must be between 0 and 1"),
        (
            &["--repeat-penalty", "0"],
            "--repeat-penalty 0: must be a number above 0",
        ),
        (
            &["--repeat-penalty", "-1"],
            "--repeat-penalty -1: must be a number above 0",
        ),
        (
            &["--presence-penalty", "9"],
            "--presence-penalty 9: must be between -2 and 2",
        ),
        (
            &["-t", "0"],
            "-t 0: the number of threads must be between 1",
        ),
        (
            &["--seed", "-2"],
            "--seed -2: must be an integer ≥ 0, or -1 for a random seed",
        ),
        (&["-n", "-5"], "-n -5: must be -1 (no limit)"),
    ] {
        let mut all = vec!["generate", "-p", "hi"];
        all.extend_from_slice(args);
        let e = fails(&all);
        assert!(e.contains(expected), "{args:?}: {e}");
    }
    // The same checks in every command that samples.
    let e = fails(&["chat", "--min-p", "5"]);
    assert!(e.contains("--min-p 5"), "{e}");
    let e = fails(&["serve", "--temp", "inf"]);
    assert!(e.contains("--temp inf"), "{e}");
}

#[test]
fn llama_cpp_conventions_negative_temp_is_greedy_and_seed_minus_one_is_random() {
    let gen = |extra: &[&str]| {
        let mut args = vec!["generate", "-p", "ROMEO:\\n", "-n", "12", "--json"];
        args.extend_from_slice(extra);
        let (out, _) = ok(&args);
        let v: Value = serde_json::from_str(&out).unwrap();
        v["generated_ids"].clone()
    };
    assert_eq!(gen(&["--temp", "-1"]), gen(&["--temp", "0"]));
    // Random seeds: two runs of 12 sampled tokens at a high temperature differ.
    let a = gen(&[
        "--seed", "-1", "--temp", "1.5", "--top-k", "0", "--min-p", "0",
    ]);
    let b = gen(&[
        "--seed", "-1", "--temp", "1.5", "--top-k", "0", "--min-p", "0",
    ]);
    assert_ne!(a, b);
}

#[test]
fn the_context_is_checked_against_the_machine_and_the_model() {
    // Far more than any machine: an error with the sizes, no abort.
    let e = fails(&["generate", "-p", "hi", "-c", "1000000000"]);
    assert!(
        e.contains("-c 1000000000 is too large") && e.contains("available"),
        "{e}"
    );
    // Beyond the trained context: accepted with a warning.
    let (_, stderr) = ok(&["generate", "-p", "hi", "-c", "2048", "-n", "2"]);
    assert!(
        stderr.contains("warning: -c 2048 is beyond the 1024 tokens"),
        "{stderr}"
    );
    // A prompt longer than the context: refused before the prompt is printed.
    let dir = temp_dir("long-prompt");
    let long = dir.join("long.txt");
    std::fs::write(
        &long,
        "But soft, what light through yonder window breaks? ".repeat(40),
    )
    .unwrap();
    let e = fails(&["generate", "-f", long.to_str().unwrap(), "-c", "64"]);
    assert!(e.contains("but the context holds 64"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn context_shift_lets_generation_go_past_a_full_context() {
    let gen = |extra: &[&str]| {
        let mut args = vec![
            "generate",
            "-p",
            "ROMEO:\\n",
            "-c",
            "48",
            "-n",
            "120",
            "--temp",
            "0",
            "--json",
        ];
        args.extend_from_slice(extra);
        let (out, stderr) = ok(&args);
        (serde_json::from_str::<Value>(&out).unwrap(), stderr)
    };
    let (plain, _) = gen(&[]);
    assert_eq!(plain["stop_reason"], "context_full");
    let (shifted, _) = gen(&["--ctx-shift", "--keep", "2"]);
    assert_eq!(shifted["stop_reason"], "length");
    assert_eq!(shifted["generated_tokens"], 120);
    assert!(
        shifted["context_shifts"].as_u64().unwrap() >= 2,
        "{shifted}"
    );
    // Until the context filled up both runs are the same greedy text.
    let (a, b) = (
        plain["generated_ids"].as_array().unwrap(),
        shifted["generated_ids"].as_array().unwrap(),
    );
    assert_eq!(a[..], b[..a.len()]);
    // Streaming, the user is told.
    let (_, stderr) = ok(&[
        "generate",
        "-p",
        "ROMEO:\\n",
        "-c",
        "48",
        "-n",
        "120",
        "--ctx-shift",
    ]);
    assert!(
        stderr.contains("[context shift: the context of 48 tokens filled up"),
        "{stderr}"
    );
}

#[test]
fn generate_with_a_draft_model_gives_the_same_text() {
    let demo = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../models/bitnet-shakespeare-7m-i2_s.gguf"
    );
    let gen = |extra: &[&str]| {
        let mut args = vec![
            "generate",
            "-p",
            "JULIET:\\n",
            "-n",
            "48",
            "--temp",
            "0.9",
            "--seed",
            "3",
            "--json",
        ];
        args.extend_from_slice(extra);
        let (out, stderr) = ok(&args);
        (serde_json::from_str::<Value>(&out).unwrap(), stderr)
    };
    let (plain, _) = gen(&[]);
    let (drafted, stderr) = gen(&["--model-draft", demo, "--draft-p-min", "0"]);
    assert_eq!(plain["generated_ids"], drafted["generated_ids"]);
    assert!(
        drafted["speculative"]["drafted_tokens"].as_u64().unwrap() > 0,
        "{drafted}"
    );
    assert!(stderr.contains("draft model"), "{stderr}");
    // Prompt lookup and a draft model together are refused before anything loads.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_bitnet"))
        .args([
            "generate",
            "-p",
            "a",
            "--spec",
            "ngram",
            "--model-draft",
            demo,
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("one or the other"));
}

#[test]
fn tokenize_reads_escapes_as_generate_does() {
    let (out, _) = ok(&["tokenize", "-p", "ROMEO:\\n", "--json"]);
    let tok: Value = serde_json::from_str(&out).unwrap();
    let (out, _) = ok(&["generate", "-p", "ROMEO:\\n", "-n", "0", "--json"]);
    let gen: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(tok["ids"], gen["prompt_ids"]);
}

#[test]
fn load_errors_are_clear_and_name_the_path_once() {
    let e = fails(&["generate", "-m", "/nonexistent/m.gguf", "-p", "x"]);
    assert_eq!(e.matches("/nonexistent/m.gguf").count(), 1, "{e}");

    // A Hugging Face folder without tokenizer.json: the missing file is named, once.
    let dir = temp_dir("hf-no-tokenizer");
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(repo("testdata/demo/hf").join(f), dir.join(f)).unwrap();
    }
    let e = fails(&["generate", "-m", dir.to_str().unwrap(), "-p", "x"]);
    assert!(e.contains("no tokenizer.json"), "{e}");
    assert_eq!(e.matches("is missing").count(), 0, "{e}");

    let e = fails(&["inspect", dir.to_str().unwrap()]);
    assert!(e.contains("is a directory"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();

    let e = fails(&["perplexity", "-f", "README.md", "--chunks", "0"]);
    assert!(e.contains("--chunks 0: must be at least 1"), "{e}");
}

#[test]
fn synth_tiny_writes_a_model_that_generates() {
    let dir = temp_dir("synth-tiny");
    let file = dir.join("tiny.gguf");
    ok(&["synth", "--shape", "tiny", "-o", file.to_str().unwrap()]);
    let (out, _) = ok(&[
        "generate",
        "-m",
        file.to_str().unwrap(),
        "-p",
        "hi",
        "-n",
        "4",
        "--json",
    ]);
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["generated_tokens"], 4);
    // Shapes with no built-in vocabulary say what to give.
    let e = fails(&[
        "synth",
        "--shape",
        "700m",
        "-o",
        dir.join("x.gguf").to_str().unwrap(),
    ]);
    assert!(
        e.contains("--vocab-from") && e.contains("--no-vocab"),
        "{e}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn model_commands_default_to_the_demo_model() {
    let (out, _) = ok(&["inspect", "--json"]);
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["architecture"], "bitnet-b1.58");
    let (out, _) = ok(&["logits", "--tokens", "4093,2093", "--json"]);
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["n_vocab"], 4096);
    let (out, _) = ok(&[
        "bench",
        "-p",
        "8",
        "-n",
        "4",
        "-r",
        "1",
        "--no-bandwidth",
        "--json",
    ]);
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["results"].as_array().unwrap().len(), 2);
}

/// `bench` compares every generation run with bandwidth probes taken next to it, and reports
/// the model's peak memory without the probe's 512 MiB buffer.
#[test]
fn bench_measures_each_generation_run_against_its_own_roofline() {
    let (out, _) = ok(&[
        "bench", "-p", "8", "-n", "4", "-r", "2", "-t", "1", "--json",
    ]);
    let v: Value = serde_json::from_str(&out).unwrap();
    let results = v["results"].as_array().unwrap();
    let pp = results.iter().find(|r| r["test"] == "pp8").unwrap();
    assert!(pp["fraction_of_roofline"].is_null());
    let tg = results.iter().find(|r| r["test"] == "tg4").unwrap();
    let rooflines = tg["sample_rooflines"].as_array().unwrap();
    assert_eq!(rooflines.len(), 2, "one roofline per timed run: {tg}");
    assert!(rooflines.iter().all(|r| r.as_f64().unwrap() > 0.0));
    let fraction = tg["fraction_of_roofline"].as_f64().unwrap();
    let samples = tg["samples"].as_array().unwrap();
    let expected: f64 = samples
        .iter()
        .zip(rooflines)
        .map(|(s, r)| s.as_f64().unwrap() / r.as_f64().unwrap())
        .sum::<f64>()
        / 2.0;
    assert!(
        (fraction - expected).abs() < 1e-9 * expected.max(1.0),
        "{fraction} vs {expected}"
    );
    assert!(v["bandwidth_gb_s"][0]["gb_s"].as_f64().unwrap() > 0.0);
    // The demo model needs a few MB; the probe's buffer alone is 512 MiB.
    let rss = v["peak_rss_bytes"].as_u64().unwrap();
    assert!(rss < 400 << 20, "peak RSS {rss} counts the probe's buffer");
}

/// `bench --spec` times each task with and without speculation and says how many drafted
/// tokens were kept: the demo model quoting a passage keeps some, and the rows without
/// speculation report no acceptance (the bench itself fails if speculation changed a token).
#[test]
fn bench_spec_times_a_quoted_passage_and_unmatchable_sampling_with_and_without_drafts() {
    let (out, _) = ok(&[
        "bench",
        "--spec",
        "-p",
        "8",
        "-n",
        "24",
        "-r",
        "1",
        "-t",
        "1",
        "--no-bandwidth",
        "--json",
    ]);
    let v: Value = serde_json::from_str(&out).unwrap();
    let results = v["results"].as_array().unwrap();
    let row = |test: &str| {
        results
            .iter()
            .find(|r| r["test"] == test)
            .unwrap_or_else(|| panic!("no {test} row in {out}"))
    };
    for task in ["copy24", "sample24"] {
        assert!(row(task)["spec_acceptance"].is_null(), "{out}");
        assert!(row(task)["tokens_per_s"].as_f64().unwrap() > 0.0);
        let acceptance = row(&format!("{task}+spec"))["spec_acceptance"]
            .as_f64()
            .unwrap();
        assert!((0.0..=1.0).contains(&acceptance), "{out}");
        assert!(row(task)["spec_drafted_per_run"].is_null(), "{out}");
    }
    // The passage gives drafts every run.
    let drafted = row("copy24+spec")["spec_drafted_per_run"].as_f64().unwrap();
    assert!(drafted >= 1.0, "{out}");
    let quoted = row("copy24+spec")["spec_acceptance"].as_f64().unwrap();
    assert!(quoted > 0.2, "the passage's drafts were not kept: {out}");
}

/// `batch` reads the request format `serve` reads: `stop` as a string, unknown fields ignored;
/// each bad line (invalid UTF-8, invalid JSON, a bad value) is an error record with its line
/// number and the run goes on; blank lines are skipped.
#[test]
fn batch_reads_the_serve_format_and_isolates_every_bad_line() {
    let dir = temp_dir("batch-format");
    let input = dir.join("in.jsonl");
    let output = dir.join("out.jsonl");
    let mut data = Vec::new();
    for line in [
        &br#"{"id": 1, "prompt": "ROMEO:\n", "stop": "\n", "model": "bitnet", "max_tokens": 40, "temperature": 0}"#[..],
        b"",
        b"{\"id\": 3, \"prompt\": \"\xff\xfe\"}",
        br#"{"id": 4, "prompt": "x", "min_p": 5}"#,
        b"   ",
        br#"{"id": 6, "prompt": "x", "temperature": "hot"}"#,
        br#"{"id": 7, "prompt": "#,
        br#"{"id": 8, "messages": [{"role": "user", "content": "Speak"}], "stop": ["x", "y"], "max_tokens": 3, "user": "u"}"#,
    ] {
        data.extend_from_slice(line);
        data.push(b'\n');
    }
    std::fs::write(&input, data).unwrap();
    // Four bad lines: the exit status is 1, after every line has its record.
    let out = run(&[
        "batch",
        "-i",
        input.to_str().unwrap(),
        "-o",
        output.to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("2 results, 4 errors"), "{stderr}");
    assert!(stderr.contains("4 of 6 requests failed"), "{stderr}");
    let records: Vec<Value> = std::fs::read_to_string(&output)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let lines: Vec<u64> = records
        .iter()
        .map(|r| r["line"].as_u64().unwrap())
        .collect();
    assert_eq!(lines, vec![1, 3, 4, 6, 7, 8]);
    let error = |i: usize| records[i]["error"].as_str().unwrap_or("").to_string();
    assert!(records[0].get("error").is_none(), "{}", records[0]);
    assert_eq!(records[0]["stop_reason"], "stop");
    assert!(!records[0]["text"].as_str().unwrap().contains('\n'));
    assert!(
        error(1).contains("line 3") && error(1).contains("UTF-8"),
        "{}",
        error(1)
    );
    assert!(error(2).contains("`min_p` = 5"), "{}", error(2));
    assert!(
        error(3).contains("`temperature` must be a number"),
        "{}",
        error(3)
    );
    assert!(error(4).contains("invalid JSON"), "{}", error(4));
    assert!(records[5].get("error").is_none(), "{}", records[5]);
    assert_eq!(records[5]["id"], 8);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `bitnet list` shows what `bitnet pull` put in the Hugging Face cache; `bitnet rm` removes it.
#[test]
fn list_and_rm_the_hugging_face_cache() {
    let cache = temp_dir("hf-cache");
    let repo = cache.join("models--someone--tiny-gguf");
    let blob = repo.join("blobs/0123abcd");
    std::fs::create_dir_all(blob.parent().unwrap()).unwrap();
    std::fs::copy(repo_root_demo(), &blob).unwrap();
    let snapshot = repo.join("snapshots/c1");
    std::fs::create_dir_all(&snapshot).unwrap();
    std::os::unix::fs::symlink("../../blobs/0123abcd", snapshot.join("m.gguf")).unwrap();
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs/main"), "c1").unwrap();

    let with_cache = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_bitnet"))
            .args(args)
            .env("HF_HUB_CACHE", &cache)
            .env_remove("RUST_BACKTRACE")
            .output()
            .unwrap()
    };
    let out = with_cache(&["list"]);
    let table = String::from_utf8(out.stdout).unwrap();
    assert!(table.starts_with("NAME"), "{table}");
    let row = table.lines().nth(1).unwrap();
    assert!(row.starts_with("someone/tiny-gguf:m.gguf"), "{table}");
    assert!(row.contains("just now") && row.contains(" MB"), "{row}");
    // The listed name loads offline.
    let out = Command::new(env!("CARGO_BIN_EXE_bitnet"))
        .args([
            "generate",
            "-m",
            "hf:someone/tiny-gguf:m.gguf",
            "-p",
            "hi",
            "-n",
            "2",
        ])
        .env("HF_HUB_CACHE", &cache)
        .env("HF_HUB_OFFLINE", "1")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let out = with_cache(&["rm", "someone/tiny-gguf"]);
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        "deleted 'someone/tiny-gguf'\n"
    );
    assert!(!repo.exists());
    let out = with_cache(&["rm", "someone/tiny-gguf"]);
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(
        !out.status.success() && stderr.contains("not in the cache"),
        "{stderr}"
    );
    std::fs::remove_dir_all(&cache).unwrap();
}

fn repo_root_demo() -> PathBuf {
    repo("models/bitnet-shakespeare-7m-i2_s.gguf")
}
