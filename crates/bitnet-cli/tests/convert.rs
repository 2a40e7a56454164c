//! The `bitnet` binary end to end: `convert` a Hugging Face folder, `logits -m FOLDER`, and
//! `pull` + `logits -m hf:...` through the environment variables (`HF_ENDPOINT`, `HF_HOME`,
//! `HF_TOKEN`, `HF_HUB_OFFLINE`) against a tiny Hub-like server on 127.0.0.1.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bitnet::formats::gguf::GgufFile;
use bitnet::formats::types::TensorType;

fn repo(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(rel)
}

struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("bitnet-cli-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs `bitnet` with the Hugging Face variables of the caller's environment removed.
fn bitnet(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_bitnet"));
    cmd.args(args);
    for var in [
        "HF_HOME",
        "HF_HUB_CACHE",
        "HF_ENDPOINT",
        "HF_TOKEN",
        "HF_HUB_OFFLINE",
        "RUST_BACKTRACE",
    ] {
        cmd.env_remove(var);
    }
    cmd.envs(env.iter().copied());
    cmd.output().unwrap()
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).unwrap()
}

const TOKENS: &str = "1021,568,559,845,275,10,20";

fn logits_json(model: &str, env: &[(&str, &str)]) -> String {
    ok(&bitnet(
        &[
            "logits",
            "-m",
            model,
            "--tokens",
            TOKENS,
            "--all",
            "--cache-type",
            "f32",
            "--json",
        ],
        env,
    ))
}

#[test]
fn convert_writes_bitnet_cpp_s_i2s_and_folders_load_directly() {
    let tmp = TempDir::new("convert");
    let out = tmp.0.join("visible.gguf");
    let online = repo("testdata/visible/hf-online");
    let run = bitnet(
        &[
            "convert",
            online.to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
            "--type",
            "i2_s",
        ],
        &[],
    );
    ok(&run);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        stderr.contains("24 tensors, I2_S linears, F16 embedding"),
        "{stderr}"
    );
    // Only the finished file: no temporary one left beside it.
    let names: Vec<_> = std::fs::read_dir(&tmp.0)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["visible.gguf"]);

    let ours = GgufFile::open(&out).unwrap();
    let reference = GgufFile::open(repo("testdata/visible/model-i2_s.gguf")).unwrap();
    for t in reference
        .tensors()
        .iter()
        .filter(|t| t.ty == TensorType::I2S)
    {
        let n = (t.element_count() / 4) as usize + 4;
        assert!(
            ours.tensor(&t.name).unwrap().data[..n] == reference.tensor(&t.name).unwrap().data[..n],
            "{}",
            t.name
        );
    }

    let reference_logits = logits_json(
        repo("testdata/visible/model-i2_s.gguf").to_str().unwrap(),
        &[],
    );
    assert_eq!(logits_json(out.to_str().unwrap(), &[]), reference_logits);
    assert_eq!(logits_json(online.to_str().unwrap(), &[]), reference_logits);
    assert_eq!(
        logits_json(repo("testdata/visible/hf-packed").to_str().unwrap(), &[]),
        reference_logits
    );
}

#[test]
fn convert_errors_are_one_clear_line() {
    let tmp = TempDir::new("errors");
    let out = tmp.0.join("x.gguf");
    let visible = repo("testdata/visible");
    let run = bitnet(
        &[
            "convert",
            visible.to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(run.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        stderr.starts_with("error: ") && stderr.contains("no config.json"),
        "{stderr}"
    );
    assert!(!out.exists());

    let online = repo("testdata/visible/hf-online");
    let run = bitnet(
        &[
            "convert",
            online.to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
            "--type",
            "q4_0",
        ],
        &[],
    );
    assert_eq!(run.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&run.stderr).contains("one of i2_s, tq2_0, tq1_0, f16, f32"));
}

// A minimal Hub: the repository listing and `resolve/main/FILE` with Range support.

const COMMIT: &str = "89abcdef0123456789abcdef0123456789abcdef";
const TOKEN: &str = "hf_cli_test";

fn serve_one(mut stream: TcpStream, files: &[(String, Vec<u8>)]) -> std::io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let path = line.split_whitespace().nth(1).unwrap_or("").to_string();
    let (mut range, mut authorized) = (None, false);
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h)? == 0 || h.trim().is_empty() {
            break;
        }
        let (k, v) = h.split_once(':').unwrap_or((&h, ""));
        match k.trim().to_ascii_lowercase().as_str() {
            "range" => range = v.trim().strip_prefix("bytes=").map(str::to_string),
            "authorization" => authorized = v.trim() == format!("Bearer {TOKEN}"),
            _ => {}
        }
    }
    let mut reply = |status: &str, headers: Vec<String>, body: &[u8]| {
        let mut head = format!("HTTP/1.1 {status}\r\nConnection: close\r\n");
        for h in headers {
            head.push_str(&h);
            head.push_str("\r\n");
        }
        head.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
        stream.write_all(head.as_bytes())?;
        stream.write_all(body)
    };
    if !authorized {
        return reply("401 Unauthorized", vec![], b"");
    }
    if path == "/api/models/fixture/tiny/revision/main" {
        let siblings: Vec<_> = files
            .iter()
            .map(|(n, _)| serde_json::json!({"rfilename": n}))
            .collect();
        let body = serde_json::json!({"sha": COMMIT, "siblings": siblings}).to_string();
        return reply("200 OK", vec![], body.as_bytes());
    }
    let Some((name, data)) = path
        .strip_prefix("/fixture/tiny/resolve/main/")
        .and_then(|n| files.iter().find(|(f, _)| f == n))
    else {
        return reply("404 Not Found", vec![], b"");
    };
    let (a, b) = match &range {
        Some(r) => {
            let (a, b) = r.split_once('-').unwrap_or((r, ""));
            (
                a.parse().unwrap_or(0),
                b.parse().unwrap_or(data.len() - 1).min(data.len() - 1),
            )
        }
        None => (0, data.len() - 1),
    };
    let headers = vec![
        format!("ETag: \"etag-of-{name}\""),
        format!("X-Repo-Commit: {COMMIT}"),
        format!("Content-Range: bytes {a}-{b}/{}", data.len()),
    ];
    reply("206 Partial Content", headers, &data[a..=b])
}

#[test]
fn pull_then_offline_logits_through_the_environment() {
    let files: Vec<(String, Vec<u8>)> = std::fs::read_dir(repo("testdata/visible/hf-packed"))
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().into_string().unwrap(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let stop = Arc::new(AtomicBool::new(false));
    let server = {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(60);
            while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
                match listener.accept() {
                    Ok((stream, _)) => {
                        let _ = serve_one(stream, &files);
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        })
    };

    let home = TempDir::new("pull");
    let hf_home = home.0.to_str().unwrap();
    let env = [
        ("HF_HOME", hf_home),
        ("HF_ENDPOINT", endpoint.as_str()),
        ("HF_TOKEN", TOKEN),
    ];
    let path = ok(&bitnet(&["pull", "fixture/tiny"], &env));
    let snapshot = Path::new(hf_home)
        .join("hub/models--fixture--tiny/snapshots")
        .join(COMMIT);
    assert_eq!(path.trim(), snapshot.to_str().unwrap());
    assert!(snapshot.join("model.safetensors").is_file());

    // Without the token the server refuses, and the message says what to do.
    let denied = bitnet(
        &["pull", "fixture/tiny"],
        &[("HF_HOME", hf_home), ("HF_ENDPOINT", endpoint.as_str())],
    );
    assert!(String::from_utf8_lossy(&denied.stderr).contains("HF_TOKEN"));

    stop.store(true, Ordering::SeqCst);
    server.join().unwrap();

    let offline = [
        ("HF_HOME", hf_home),
        ("HF_ENDPOINT", endpoint.as_str()),
        ("HF_HUB_OFFLINE", "1"),
    ];
    assert_eq!(
        logits_json("hf:fixture/tiny", &offline),
        logits_json(repo("testdata/visible/hf-packed").to_str().unwrap(), &[])
    );
}
