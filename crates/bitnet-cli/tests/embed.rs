//! `bitnet embed` against the transformers reference of the tiny embedding models
//! (testdata/embedding, tools/make_embedding_fixtures.py): texts through the model's own
//! tokenizer, one embedding per line of a file, token ids, and its errors.

use std::path::PathBuf;
use std::process::{Command, Stdio};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn bitnet(args: &[&str], stdin: Option<&str>) -> (bool, String, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_bitnet"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    if let Some(text) = stdin {
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
    }
    drop(child.stdin.take());
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

fn fixture(name: &str) -> serde_json::Value {
    let path = root()
        .join("testdata/embedding")
        .join(name)
        .join("fixture.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn floats(v: &serde_json::Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

fn max_diff(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max)
}

#[test]
fn lines_of_a_file_match_transformers() {
    for name in ["qwen3", "gemma3"] {
        let fx = fixture(name);
        let texts: Vec<&str> = fx["texts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["text"].as_str().unwrap())
            .collect();
        let model = root().join("testdata/embedding").join(name);
        let input = format!("{}\n\n", texts.join("\n"));
        let (ok, out, err) = bitnet(
            &["embed", "-m", model.to_str().unwrap(), "-f", "-", "--json"],
            Some(&input),
        );
        assert!(ok, "{err}");
        let json: serde_json::Value = serde_json::from_str(&out).unwrap();
        let data = json["data"].as_array().unwrap();
        assert_eq!(data.len(), texts.len(), "empty lines are skipped");
        for (d, case) in data.iter().zip(fx["texts"].as_array().unwrap()) {
            let diff = max_diff(&floats(&d["embedding"]), &floats(&case["embedding"]));
            assert!(diff <= 3e-3, "{name} {:?}: {diff}", case["text"]);
        }
        // Plain output: one line of numbers per text.
        let (ok, out, _) = bitnet(
            &["embed", "-m", model.to_str().unwrap(), "-p", texts[0]],
            None,
        );
        assert!(ok);
        let values: Vec<f64> = out.split_whitespace().map(|v| v.parse().unwrap()).collect();
        let want = floats(&fx["texts"][0]["embedding"]);
        assert!(max_diff(&values, &want) <= 3e-3);
    }
}

#[test]
fn token_ids_and_clear_errors() {
    let fx = fixture("qwen3");
    let seq = &fx["sequences"][2];
    let ids: Vec<String> = seq["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i.to_string())
        .collect();
    let model = root().join("testdata/embedding/qwen3");
    let m = model.to_str().unwrap();
    let (ok, out, err) = bitnet(
        &["embed", "-m", m, "--tokens", &ids.join(","), "--json"],
        None,
    );
    assert!(ok, "{err}");
    let json: serde_json::Value = serde_json::from_str(&out).unwrap();
    let diff = max_diff(
        &floats(&json["data"][0]["embedding"]),
        &floats(&seq["embedding"]),
    );
    assert!(diff <= 3e-3, "{diff}");
    for (args, says) in [
        (vec!["embed", "-m", m], "-p TEXT"),
        (
            vec!["embed", "-m", m, "-p", "x", "--dimensions", "0"],
            "dimensions",
        ),
        (vec!["embed", "-m", m, "--tokens", "999999"], "999999"),
        (vec!["embed", "-m", m, "-p", "x", "--pooling", "max"], "max"),
    ] {
        let (ok, _, err) = bitnet(&args, None);
        assert!(!ok, "{args:?}");
        assert!(err.contains(says), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
}
