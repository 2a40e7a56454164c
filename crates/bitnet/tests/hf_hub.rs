//! `hf:OWNER/REPO` against a local server on 127.0.0.1 that answers the way the Hugging Face
//! Hub does (the `api/models/.../revision/main` listing; `resolve/main/FILE` with `ETag` /
//! `X-Linked-Etag`, `X-Repo-Commit`, `Content-Range` and `Range` support). It can drop the
//! connection in the middle of a file, demand a token, or announce a wrong hash. Nothing here
//! leaves the machine.
#![cfg(feature = "hub")]

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use bitnet::hf::hub::{self, HubOptions, HubSpec};
use bitnet::hf::ModelSource;
use bitnet::model::{BitnetModel, CacheType, Logits};
use sha1::Digest as _;

fn repo_path(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(rel)
}

fn hex(d: &[u8]) -> String {
    d.iter().map(|b| format!("{b:02x}")).collect()
}

const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";
const TOKEN: &str = "hf_local_test_token";

/// A file of the served repository.
struct RepoFile {
    name: String,
    data: Vec<u8>,
    /// Served like an LFS file: `X-Linked-Etag` = sha256 (else `ETag` = git blob sha1).
    lfs: bool,
}

impl RepoFile {
    fn from_disk(name: &str, path: &Path, lfs: bool) -> RepoFile {
        RepoFile {
            name: name.to_string(),
            data: std::fs::read(path).unwrap(),
            lfs,
        }
    }

    fn etag(&self, bad_hash: bool) -> String {
        if self.lfs {
            let mut h = sha2::Sha256::new();
            h.update(&self.data);
            if bad_hash {
                h.update(b"x");
            }
            hex(&h.finalize())
        } else {
            let mut h = sha1::Sha1::new();
            h.update(format!("blob {}\0", self.data.len()).as_bytes());
            h.update(&self.data);
            hex(&h.finalize())
        }
    }
}

struct Config {
    repo: String,
    files: Vec<RepoFile>,
    /// Drop the connection after this many body bytes of the first real download of a file.
    cut: Option<(String, usize)>,
    bad_hash: bool,
    /// At the cut, stop sending but keep the connection open (for 20 s) instead of closing it.
    stall: bool,
}

/// One request as the server saw it.
#[derive(Clone, Debug)]
struct Seen {
    path: String,
    range: Option<String>,
    auth: Option<String>,
}

struct Server {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    fn start(config: Config) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let state = Arc::new((config, Mutex::new(false)));
        let thread = {
            let (seen, stop) = (Arc::clone(&seen), Arc::clone(&stop));
            std::thread::spawn(move || {
                // Bounded: stops when the test drops the server (and after 60 s regardless).
                let deadline = std::time::Instant::now() + Duration::from_secs(60);
                while !stop.load(Ordering::SeqCst) && std::time::Instant::now() < deadline {
                    match listener.accept() {
                        Ok((stream, _)) => {
                            let (seen, state) = (Arc::clone(&seen), Arc::clone(&state));
                            std::thread::spawn(move || {
                                let _ = handle(stream, &state.0, &state.1, &seen);
                            });
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(5)),
                    }
                }
            })
        };
        Server {
            addr,
            seen,
            stop,
            thread: Some(thread),
        }
    }

    fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn respond(
    stream: &mut TcpStream,
    status: &str,
    headers: &[(String, String)],
    body: &[u8],
) -> std::io::Result<()> {
    let mut head = format!("HTTP/1.1 {status}\r\nConnection: close\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes())?;
    stream.write_all(body)?;
    stream.flush()
}

fn handle(
    mut stream: TcpStream,
    config: &Config,
    cut_done: &Mutex<bool>,
    seen: &Mutex<Vec<Seen>>,
) -> std::io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let path = line.split_whitespace().nth(1).unwrap_or("").to_string();
    let (mut range, mut auth) = (None, None);
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h)? == 0 || h.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            match k.trim().to_ascii_lowercase().as_str() {
                "range" => range = Some(v.trim().to_string()),
                "authorization" => auth = Some(v.trim().to_string()),
                _ => {}
            }
        }
    }
    seen.lock().unwrap().push(Seen {
        path: path.clone(),
        range: range.clone(),
        auth: auth.clone(),
    });
    if auth.as_deref() != Some(&format!("Bearer {TOKEN}")) {
        return respond(&mut stream, "401 Unauthorized", &[], b"");
    }
    let json = |v: serde_json::Value| {
        let body = v.to_string().into_bytes();
        (
            vec![
                ("Content-Type".to_string(), "application/json".to_string()),
                ("Content-Length".to_string(), body.len().to_string()),
            ],
            body,
        )
    };
    if path == format!("/api/models/{}/revision/main", config.repo) {
        let siblings: Vec<_> = config
            .files
            .iter()
            .map(|f| serde_json::json!({"rfilename": f.name}))
            .collect();
        let (headers, body) =
            json(serde_json::json!({"id": config.repo, "sha": COMMIT, "siblings": siblings}));
        return respond(&mut stream, "200 OK", &headers, &body);
    }
    let prefix = format!("/{}/resolve/main/", config.repo);
    let Some(file) = path
        .strip_prefix(&prefix)
        .and_then(|name| config.files.iter().find(|f| f.name == name))
    else {
        let (headers, body) = json(serde_json::json!({"error": "Entry not found"}));
        return respond(&mut stream, "404 Not Found", &headers, &body);
    };
    let size = file.data.len();
    let (start, end) = match range.as_deref().and_then(|r| r.strip_prefix("bytes=")) {
        Some(r) => {
            let (a, b) = r.split_once('-').unwrap_or((r, ""));
            let a: usize = a.parse().unwrap_or(0);
            let b: usize = if b.is_empty() {
                size - 1
            } else {
                b.parse().unwrap_or(size - 1)
            };
            (a, b.min(size - 1))
        }
        None => (0, size - 1),
    };
    let etag = file.etag(config.bad_hash);
    let mut headers = vec![
        ("X-Repo-Commit".to_string(), COMMIT.to_string()),
        ("Accept-Ranges".to_string(), "bytes".to_string()),
        ("Content-Length".to_string(), (end + 1 - start).to_string()),
    ];
    if file.lfs {
        headers.push(("X-Linked-Etag".into(), format!("\"{etag}\"")));
        headers.push(("ETag".into(), "\"an-lfs-pointer-oid\"".into()));
    } else {
        headers.push(("ETag".into(), format!("\"{etag}\"")));
    }
    let status = if range.is_some() {
        headers.push((
            "Content-Range".into(),
            format!("bytes {start}-{end}/{size}"),
        ));
        "206 Partial Content"
    } else {
        "200 OK"
    };
    let body = &file.data[start..=end];
    // A real download (not the one-byte metadata probe) of the file to cut, the first time.
    let cut = match &config.cut {
        Some((name, n)) if *name == file.name && end > 0 => {
            let mut done = cut_done.lock().unwrap();
            let first = !*done;
            *done = true;
            first.then_some(*n)
        }
        _ => None,
    };
    match cut {
        Some(n) => {
            respond(&mut stream, status, &headers, &body[..n.min(body.len())])?;
            if config.stall {
                std::thread::sleep(Duration::from_secs(20));
            }
            stream.shutdown(std::net::Shutdown::Both)
        }
        None => respond(&mut stream, status, &headers, body),
    }
}

/// The packed fixture as a Hub repository (plus files a model folder does not need).
fn packed_repo() -> Vec<RepoFile> {
    let dir = repo_path("testdata/visible/hf-packed");
    let mut files: Vec<RepoFile> = [
        "config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
    ]
    .iter()
    .map(|n| RepoFile::from_disk(n, &dir.join(n), false))
    .collect();
    files.push(RepoFile::from_disk(
        "model.safetensors",
        &dir.join("model.safetensors"),
        true,
    ));
    files.push(RepoFile {
        name: "README.md".into(),
        data: b"# a tiny BitNet\n".to_vec(),
        lfs: false,
    });
    files
}

/// A scratch cache folder, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("bitnet-hub-{tag}-{}", std::process::id()));
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

fn options(server: &Server, cache: &TempDir, retries: usize) -> HubOptions {
    HubOptions {
        endpoint: server.endpoint(),
        cache_dir: cache.0.join("hub"),
        token: Some(TOKEN.to_string()),
        offline: false,
        retries,
        etag_timeout: Duration::from_secs(10),
        download_timeout: Duration::from_secs(10),
    }
}

fn logits(model: &BitnetModel) -> Vec<f32> {
    let mut cache = model.new_cache(0, CacheType::F32).unwrap();
    model
        .forward(&[1021, 568, 559, 845, 275], &mut cache, Logits::All)
        .unwrap()
}

const MODEL_CUT: usize = 100_000;

/// A dropped connection in the middle of model.safetensors is resumed with a Range request
/// in the same call; the snapshot is the Hub cache layout; a second run reuses the blobs; an
/// offline run uses the cache with the server gone.
#[test]
fn download_resumes_reuses_the_cache_and_works_offline() {
    let cache = TempDir::new("resume");
    let server = Server::start(Config {
        repo: "fixture/bitnet-tiny".into(),
        files: packed_repo(),
        cut: Some(("model.safetensors".into(), MODEL_CUT)),
        bad_hash: false,
        stall: false,
    });
    let opts = options(&server, &cache, 2);
    let spec = HubSpec::parse("hf:fixture/bitnet-tiny").unwrap();
    let source = hub::fetch(&spec, &opts, &mut ()).unwrap();
    let snapshot = cache
        .0
        .join("hub/models--fixture--bitnet-tiny/snapshots")
        .join(COMMIT);
    assert_eq!(source, ModelSource::Folder(snapshot.clone()));
    let original =
        std::fs::read(repo_path("testdata/visible/hf-packed/model.safetensors")).unwrap();
    assert!(std::fs::read(snapshot.join("model.safetensors")).unwrap() == original);
    assert_eq!(
        std::fs::read_to_string(cache.0.join("hub/models--fixture--bitnet-tiny/refs/main"))
            .unwrap(),
        COMMIT
    );

    let seen = server.seen();
    let model_gets: Vec<&Seen> = seen
        .iter()
        .filter(|s| {
            s.path.ends_with("/model.safetensors") && s.range.as_deref() != Some("bytes=0-0")
        })
        .collect();
    assert_eq!(
        model_gets
            .iter()
            .map(|s| s.range.as_deref())
            .collect::<Vec<_>>(),
        vec![
            Some("bytes=0-"),
            Some(format!("bytes={MODEL_CUT}-").as_str())
        ],
        "the second request resumes where the first was cut"
    );
    assert!(seen
        .iter()
        .all(|s| s.auth.as_deref() == Some(&format!("Bearer {TOKEN}"))));
    assert!(!seen.iter().any(|s| s.path.ends_with("README.md")));

    let (_, model) = source.load().unwrap();
    let (_, local) = bitnet::hf::load_model(&repo_path("testdata/visible/hf-packed")).unwrap();
    assert!(logits(&model) == logits(&local));

    // Again: only the metadata probes, no body downloads.
    let before = server.seen().len();
    assert_eq!(hub::fetch(&spec, &opts, &mut ()).unwrap(), source);
    let again: Vec<Seen> = server.seen()[before..].to_vec();
    assert!(
        again
            .iter()
            .all(|s| s.path.starts_with("/api/") || s.range.as_deref() == Some("bytes=0-0")),
        "{again:?}"
    );

    // Offline, with the server gone.
    drop(server);
    let offline = HubOptions {
        offline: true,
        ..opts.clone()
    };
    assert_eq!(hub::fetch(&spec, &offline, &mut ()).unwrap(), source);
    let (_, model) = hub::open_model("hf:fixture/bitnet-tiny", &offline, &mut ()).unwrap();
    assert!(logits(&model) == logits(&local));
    let e = hub::fetch(
        &HubSpec::parse("hf:fixture/other").unwrap(),
        &offline,
        &mut (),
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("HF_HUB_OFFLINE is set") && e.contains("not in the cache"),
        "{e}"
    );
    // Online without a server: a clear error that points at offline mode.
    let e = hub::fetch(&spec, &opts, &mut ()).unwrap_err().to_string();
    assert!(
        e.contains("cannot reach") && e.contains("HF_HUB_OFFLINE"),
        "{e}"
    );
}

/// A server that stops sending in the middle of a file, keeping the connection open: the read
/// times out and the download resumes on a new connection.
#[test]
fn a_stalled_download_times_out_and_resumes() {
    let cache = TempDir::new("stall");
    let server = Server::start(Config {
        repo: "fixture/bitnet-tiny".into(),
        files: packed_repo(),
        cut: Some(("model.safetensors".into(), MODEL_CUT)),
        bad_hash: false,
        stall: true,
    });
    let opts = HubOptions {
        download_timeout: Duration::from_secs(1),
        ..options(&server, &cache, 2)
    };
    let source = hub::resolve_model("hf:fixture/bitnet-tiny", &opts, &mut ()).unwrap();
    let resumed = server
        .seen()
        .iter()
        .any(|s| s.range.as_deref() == Some(format!("bytes={MODEL_CUT}-").as_str()));
    assert!(resumed);
    source.load().unwrap();
}

/// A Hub that accepts connections and never answers: an error naming the endpoint after the
/// retries, not a hang. (The call runs in a thread so that a hang fails the test instead of
/// stopping the suite.)
#[test]
fn a_hub_that_never_answers_is_an_error_not_a_hang() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    // Accepts (the kernel would too, up to its backlog) and holds every connection silently.
    let holder = std::thread::spawn(move || {
        listener.set_nonblocking(true).unwrap();
        let mut held = Vec::new();
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while std::time::Instant::now() < deadline && held.len() < 8 {
            match listener.accept() {
                Ok((s, _)) => held.push(s),
                Err(_) => std::thread::sleep(Duration::from_millis(10)),
            }
        }
        held
    });
    let cache = TempDir::new("silent");
    let opts = HubOptions {
        endpoint: endpoint.clone(),
        cache_dir: cache.0.join("hub"),
        token: None,
        offline: false,
        retries: 1,
        etag_timeout: Duration::from_millis(500),
        download_timeout: Duration::from_millis(500),
    };
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let r = hub::fetch(&HubSpec::parse("hf:a/b").unwrap(), &opts, &mut ());
        let _ = tx.send(r.map(|_| ()).map_err(|e| e.to_string()));
    });
    let e = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("the call did not return: no timeout")
        .unwrap_err();
    assert!(
        e.contains(&format!("cannot reach {endpoint}"))
            && e.contains("no answer in time")
            && e.contains("tried 2 times"),
        "{e}"
    );
    drop(holder);
}

/// Without retries the cut download fails, leaving the partial blob; the next run resumes it.
#[test]
fn an_interrupted_run_is_resumed_by_the_next() {
    let cache = TempDir::new("rerun");
    let server = Server::start(Config {
        repo: "fixture/bitnet-tiny".into(),
        files: packed_repo(),
        cut: Some(("model.safetensors".into(), MODEL_CUT)),
        bad_hash: false,
        stall: false,
    });
    let opts = options(&server, &cache, 0);
    let e = hub::resolve_model("hf:fixture/bitnet-tiny", &opts, &mut ())
        .unwrap_err()
        .to_string();
    assert!(e.contains("fixture/bitnet-tiny: model.safetensors"), "{e}");
    let blobs = cache.0.join("hub/models--fixture--bitnet-tiny/blobs");
    let part: Vec<u64> = std::fs::read_dir(&blobs)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.path().extension().is_some_and(|x| x == "part"))
        .map(|e| e.metadata().unwrap().len())
        .collect();
    assert_eq!(part, vec![MODEL_CUT as u64]);

    let mut progress = Recorder::default();
    let source = hub::resolve_model("hf:fixture/bitnet-tiny", &opts, &mut progress).unwrap();
    assert!(matches!(source, ModelSource::Folder(_)));
    let resumed = server
        .seen()
        .iter()
        .any(|s| s.range.as_deref() == Some(format!("bytes={MODEL_CUT}-").as_str()));
    assert!(resumed);
    // Progress saw the file's size and ended at it.
    let size = std::fs::metadata(repo_path("testdata/visible/hf-packed/model.safetensors"))
        .unwrap()
        .len();
    assert!(progress
        .events
        .contains(&("model.safetensors".to_string(), size, size)));
    source.load().unwrap();
}

#[derive(Default)]
struct Recorder {
    events: Vec<(String, u64, u64)>,
    current: Option<(String, u64, u64)>,
}

impl hub::DownloadProgress for Recorder {
    fn start(&mut self, file: &str, size: u64) {
        self.current = Some((file.to_string(), size, 0));
    }
    fn advance(&mut self, bytes: u64) {
        if let Some(c) = &mut self.current {
            c.2 += bytes;
        }
    }
    fn finish(&mut self) {
        if let Some(c) = self.current.take() {
            self.events.push(c);
        }
    }
}

#[test]
fn a_download_that_does_not_match_its_hash_is_refused_and_removed() {
    let cache = TempDir::new("hash");
    let server = Server::start(Config {
        repo: "fixture/bitnet-tiny".into(),
        files: packed_repo(),
        cut: None,
        bad_hash: true,
        stall: false,
    });
    let e = hub::fetch(
        &HubSpec::parse("hf:fixture/bitnet-tiny").unwrap(),
        &options(&server, &cache, 0),
        &mut (),
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("model.safetensors: the download's hash") && e.contains("differs"),
        "{e}"
    );
    let blobs = cache.0.join("hub/models--fixture--bitnet-tiny/blobs");
    let left: Vec<PathBuf> = std::fs::read_dir(&blobs)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.file_name().is_some_and(|n| n.len() == 64))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn a_missing_token_and_a_missing_repo_are_explained() {
    let cache = TempDir::new("token");
    let server = Server::start(Config {
        repo: "fixture/bitnet-tiny".into(),
        files: packed_repo(),
        cut: None,
        bad_hash: false,
        stall: false,
    });
    let no_token = HubOptions {
        token: None,
        ..options(&server, &cache, 0)
    };
    let spec = HubSpec::parse("hf:fixture/bitnet-tiny").unwrap();
    let e = hub::fetch(&spec, &no_token, &mut ())
        .unwrap_err()
        .to_string();
    assert!(e.contains("access denied") && e.contains("HF_TOKEN"), "{e}");
    let e = hub::fetch(
        &HubSpec::parse("hf:fixture/bitnet-tiny:nothing.gguf").unwrap(),
        &options(&server, &cache, 0),
        &mut (),
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("nothing.gguf: not found on http://127.0.0.1"),
        "{e}"
    );
}

/// A GGUF repository: the file named after the colon, or the only GGUF when none is named.
#[test]
fn gguf_repositories() {
    let cache = TempDir::new("gguf");
    let server = Server::start(Config {
        repo: "fixture/bitnet-tiny-gguf".into(),
        files: vec![
            RepoFile::from_disk(
                "model-i2_s.gguf",
                &repo_path("testdata/visible/model-i2_s.gguf"),
                true,
            ),
            RepoFile {
                name: "README.md".into(),
                data: b"gguf\n".to_vec(),
                lfs: false,
            },
        ],
        cut: None,
        bad_hash: false,
        stall: false,
    });
    let opts = options(&server, &cache, 0);
    let named = hub::resolve_model(
        "hf:fixture/bitnet-tiny-gguf:model-i2_s.gguf",
        &opts,
        &mut (),
    )
    .unwrap();
    let picked = hub::resolve_model("hf:fixture/bitnet-tiny-gguf", &opts, &mut ()).unwrap();
    assert_eq!(named, picked);
    let ModelSource::Gguf(path) = &named else {
        panic!("{named:?}")
    };
    assert!(path.ends_with(format!("snapshots/{COMMIT}/model-i2_s.gguf")));
    let (_, model) = named.load().unwrap();
    let reference = BitnetModel::open(repo_path("testdata/visible/model-i2_s.gguf")).unwrap();
    assert!(logits(&model) == logits(&reference));
}
