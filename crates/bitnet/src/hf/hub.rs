//! The Hugging Face Hub: `hf:OWNER/REPO[:FILE]` resolved to files in the standard cache
//! (`HF_HUB_CACHE`, else `HF_HOME/hub`, else `~/.cache/huggingface/hub`), laid out as
//! huggingface_hub lays it out (`models--OWNER--REPO/{blobs,snapshots,refs}`), so Python tools
//! and this engine share downloads.
//!
//! The HTTP is ours, over ureq, as huggingface_hub speaks it: a one-byte request for the file's
//! ETag, commit and size (following the Hub's relative redirects only), a download into
//! `blobs/ETAG.part` that resumes from the bytes already there with an HTTP `Range` request,
//! both after a failure within one call (`retries`, with backoff) and in a later call, and the
//! repository's file list from `/api/models`. Every call has timeouts (resolve, connect, send,
//! the response's head, and each read of its body: `HF_HUB_ETAG_TIMEOUT` and
//! `HF_HUB_DOWNLOAD_TIMEOUT`, 10 s by default as in huggingface_hub), so a Hub that accepts and
//! never answers is an error, not a hang; timeouts, refused or reset connections and 5xx/429
//! answers are retried. `hf-hub` gives the cache's layout. Around that: `HF_TOKEN`,
//! `HF_HUB_CACHE` and `HF_HUB_OFFLINE`, reuse of a blob already in the cache, and
//! verification of each finished file against the size and the hash in its ETag (sha256 for
//! LFS files, the git blob sha1 otherwise).

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use hf_hub::{Cache, Repo};
use sha1::Digest as _;

use super::{is_hf_folder, HfError, ModelSource, FOLDER_FILES};
use crate::formats::gguf::GgufFile;
use crate::model::BitnetModel;

/// The Hub used when `HF_ENDPOINT` is not set.
pub(crate) const DEFAULT_ENDPOINT: &str = "https://huggingface.co";

/// Where and how to reach the Hub.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HubOptions {
    /// The Hub's address (`HF_ENDPOINT`, default `https://huggingface.co`).
    pub endpoint: String,
    /// The hub cache folder (holding `models--OWNER--REPO`).
    pub cache_dir: PathBuf,
    /// The access token for gated or private repositories (`HF_TOKEN`, or the `token` file).
    pub token: Option<String>,
    /// Use only the cache; never touch the network.
    pub offline: bool,
    /// How many times a failed call is tried again (a download resumes where it stopped).
    pub retries: usize,
    /// The longest wait for a metadata answer (`HF_HUB_ETAG_TIMEOUT`, default 10 s): DNS,
    /// connecting, and the response's head.
    pub etag_timeout: Duration,
    /// The longest wait for any one read of a download (`HF_HUB_DOWNLOAD_TIMEOUT`, default
    /// 10 s): a stalled transfer is retried, then an error.
    pub download_timeout: Duration,
}

fn truthy(v: &str) -> bool {
    matches!(
        v.trim().to_ascii_lowercase().as_str(),
        "1" | "on" | "yes" | "true"
    )
}

impl HubOptions {
    /// From the environment, as huggingface_hub reads it: `HF_ENDPOINT`, `HF_HUB_CACHE` /
    /// `HF_HOME` / `XDG_CACHE_HOME`, `HF_TOKEN` / `HF_TOKEN_PATH` / the `token` file,
    /// `HF_HUB_OFFLINE`, `HF_HUB_ETAG_TIMEOUT`, `HF_HUB_DOWNLOAD_TIMEOUT`.
    pub fn from_env() -> HubOptions {
        HubOptions::from_lookup(|k| std::env::var(k).ok().filter(|v| !v.is_empty()))
    }

    /// [`HubOptions::from_env`] with another source of variables (tests).
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> HubOptions {
        let home = || {
            get("HOME")
                .or_else(|| get("USERPROFILE"))
                .map(PathBuf::from)
        };
        let hf_home = get("HF_HOME").map(PathBuf::from).or_else(|| {
            get("XDG_CACHE_HOME")
                .map(PathBuf::from)
                .or_else(|| home().map(|h| h.join(".cache")))
                .map(|c| c.join("huggingface"))
        });
        let hf_home = hf_home.unwrap_or_else(|| PathBuf::from(".cache/huggingface"));
        let cache_dir = get("HF_HUB_CACHE")
            .or_else(|| get("HUGGINGFACE_HUB_CACHE"))
            .map(PathBuf::from)
            .unwrap_or_else(|| hf_home.join("hub"));
        let token = get("HF_TOKEN").or_else(|| {
            let path = get("HF_TOKEN_PATH")
                .map(PathBuf::from)
                .unwrap_or_else(|| hf_home.join("token"));
            std::fs::read_to_string(path)
                .ok()
                .map(|t| t.trim().to_string())
                .filter(|t| !t.is_empty())
        });
        HubOptions {
            endpoint: get("HF_ENDPOINT")
                .map(|e| e.trim_end_matches('/').to_string())
                .unwrap_or_else(|| DEFAULT_ENDPOINT.to_string()),
            cache_dir,
            token,
            offline: get("HF_HUB_OFFLINE").is_some_and(|v| truthy(&v)),
            retries: 3,
            etag_timeout: seconds(get("HF_HUB_ETAG_TIMEOUT")),
            download_timeout: seconds(get("HF_HUB_DOWNLOAD_TIMEOUT")),
        }
    }
}

/// A timeout variable in seconds (huggingface_hub's default of 10 when unset or not a
/// positive number).
fn seconds(v: Option<String>) -> Duration {
    v.and_then(|v| v.trim().parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s > 0.0 && *s < 1e6)
        .map_or(Duration::from_secs(10), Duration::from_secs_f64)
}

/// `OWNER/REPO[:FILE]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HubSpec {
    /// `OWNER/REPO`.
    pub repo: String,
    /// One file of it, if named.
    pub file: Option<String>,
}

impl HubSpec {
    /// Parses `OWNER/REPO` or `OWNER/REPO:FILE` (an optional `hf:` prefix is accepted).
    pub fn parse(spec: &str) -> Result<HubSpec, HfError> {
        let bad = |message: &str| HfError::Spec {
            spec: spec.to_string(),
            message: message.to_string(),
        };
        let s = spec.strip_prefix("hf:").unwrap_or(spec);
        let (repo, file) = match s.split_once(':') {
            Some((r, f)) => (r, Some(f.to_string())),
            None => (s, None),
        };
        let ok_part = |p: &str| {
            !p.is_empty()
                && p != "."
                && p != ".."
                && p.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        };
        match repo.split_once('/') {
            Some((owner, name)) if ok_part(owner) && ok_part(name) => {}
            _ => return Err(bad("expected hf:OWNER/REPO or hf:OWNER/REPO:FILE")),
        }
        if let Some(f) = &file {
            if f.is_empty() || f.starts_with('/') || f.split('/').any(|p| p == ".." || p.is_empty())
            {
                return Err(bad("FILE must be a relative path inside the repository"));
            }
        }
        Ok(HubSpec {
            repo: repo.to_string(),
            file,
        })
    }
}

/// Receives download progress (the CLI draws a bar; the library draws nothing).
pub trait DownloadProgress {
    /// A file of `size` bytes starts (again, after a resume: the position restarts at 0 and
    /// the bytes already there are reported through `advance`).
    fn start(&mut self, file: &str, size: u64);
    /// `bytes` more bytes of the current file arrived.
    fn advance(&mut self, bytes: u64);
    /// The current file is complete.
    fn finish(&mut self);
}

impl DownloadProgress for () {
    fn start(&mut self, _: &str, _: u64) {}
    fn advance(&mut self, _: u64) {}
    fn finish(&mut self) {}
}

/// Why one HTTP call failed, and so whether it is worth another try.
enum Failure {
    /// An answer with this status.
    Status(u16),
    /// No usable answer: a timeout, a refused, reset or cut connection, a name that does not
    /// resolve. Tried again.
    Network(String),
    /// Anything else: a malformed answer, a file of the cache that cannot be written.
    Other(String),
}

impl Failure {
    fn transient(&self) -> bool {
        matches!(self, Failure::Network(_) | Failure::Status(429 | 500..=599))
    }
}

impl From<ureq::Error> for Failure {
    fn from(e: ureq::Error) -> Failure {
        match e {
            ureq::Error::StatusCode(code) => Failure::Status(code),
            ureq::Error::Timeout(t) => Failure::Network(format!("no answer in time ({t})")),
            ureq::Error::Io(e) => Failure::Network(e.to_string()),
            ureq::Error::HostNotFound => Failure::Network("host not found".into()),
            ureq::Error::ConnectionFailed => Failure::Network("connection failed".into()),
            ureq::Error::BodyStalled => Failure::Network("the download stalled".into()),
            other => Failure::Other(other.to_string()),
        }
    }
}

/// The wait before try `attempt + 1`: 0.5 s, 1 s, 2 s, … at most 8 s.
fn backoff(attempt: usize) -> Duration {
    Duration::from_millis(500 << attempt.min(4))
}

/// What the Hub says of one file.
struct FileMeta {
    commit: String,
    etag: String,
    size: u64,
}

/// A Hub client for one repository.
struct Hub<'a> {
    options: &'a HubOptions,
    repo_id: String,
    /// Follows redirects (to the CDN that serves LFS files), sending the token to the Hub's
    /// own host only.
    follow: ureq::Agent,
    /// Follows none: the metadata lives in the Hub's own answer, before any redirect.
    direct: ureq::Agent,
}

impl<'a> Hub<'a> {
    fn new(options: &'a HubOptions, repo_id: &str) -> Hub<'a> {
        let agent = |redirects: u32| -> ureq::Agent {
            let wait = Some(options.etag_timeout);
            ureq::Agent::config_builder()
                .http_status_as_error(false)
                .max_redirects(redirects)
                .max_redirects_will_error(redirects > 0)
                .redirect_auth_headers(ureq::config::RedirectAuthHeaders::SameHost)
                .user_agent(concat!("bitnet-rust/", env!("CARGO_PKG_VERSION")))
                .timeout_resolve(wait)
                .timeout_connect(wait)
                .timeout_send_request(wait)
                .timeout_recv_response(wait)
                .timeout_per_read(Some(options.download_timeout))
                .build()
                .into()
        };
        Hub {
            options,
            repo_id: repo_id.to_string(),
            follow: agent(10),
            direct: agent(0),
        }
    }

    fn url(&self, file: &str) -> String {
        format!(
            "{}/{}/resolve/main/{file}",
            self.options.endpoint, self.repo_id
        )
    }

    /// A GET with the token (when there is one) and an optional byte range.
    fn get(
        &self,
        agent: &ureq::Agent,
        url: &str,
        range: Option<String>,
    ) -> Result<ureq::http::Response<ureq::Body>, Failure> {
        let mut request = agent.get(url);
        if let Some(token) = &self.options.token {
            request = request.header("Authorization", format!("Bearer {token}"));
        }
        if let Some(range) = range {
            request = request.header("Range", range);
        }
        Ok(request.call()?)
    }

    /// Runs `call` until it succeeds, fails for good, or has been tried `retries + 1` times.
    fn retrying<T>(
        &self,
        what: &str,
        mut call: impl FnMut() -> Result<T, Failure>,
    ) -> Result<T, HfError> {
        let mut attempt = 0;
        loop {
            match call() {
                Ok(v) => return Ok(v),
                Err(f) if f.transient() && attempt < self.options.retries => {
                    log::info!("{}: {what}: trying again", self.repo_id);
                    std::thread::sleep(backoff(attempt));
                    attempt += 1;
                }
                Err(f) => return Err(self.error(what, f, attempt + 1)),
            }
        }
    }

    fn error(&self, what: &str, failure: Failure, tries: usize) -> HfError {
        let endpoint = &self.options.endpoint;
        let tries = if tries > 1 {
            format!(" (tried {tries} times)")
        } else {
            String::new()
        };
        let message = match failure {
            Failure::Status(401 | 403) => format!(
                "{what}: access denied by {endpoint} (a gated or private repository needs HF_TOKEN)"
            ),
            Failure::Status(404) => format!("{what}: not found on {endpoint}"),
            Failure::Status(code) => format!("{what}: {endpoint} answered HTTP {code}{tries}"),
            Failure::Network(m) => format!(
                "{what}: cannot reach {endpoint}: {m}{tries}; set HF_HUB_OFFLINE=1 to use the cache only"
            ),
            Failure::Other(m) => format!("{what}: {m}"),
        };
        HfError::Hub {
            repo: self.repo_id.clone(),
            message,
        }
    }

    fn cache(&self) -> hf_hub::CacheRepo {
        Cache::new(self.options.cache_dir.clone()).repo(Repo::model(self.repo_id.clone()))
    }

    /// The file's commit, ETag and size, from a one-byte request as huggingface_hub makes it:
    /// the Hub's own redirects (a renamed repository) are followed, a redirect to another
    /// host (the CDN of an LFS file) is not, since the Hub's answer carries the headers.
    fn metadata(&self, file: &str) -> Result<FileMeta, Failure> {
        let header = |r: &ureq::http::Response<ureq::Body>, name: &str| {
            r.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let mut url = self.url(file);
        let mut response = self.get(&self.direct, &url, Some("bytes=0-0".into()))?;
        for _ in 0..5 {
            let relative = header(&response, "location").filter(|l| l.starts_with('/'));
            match relative {
                Some(path) if response.status().is_redirection() => {
                    url = format!("{}{path}", self.options.endpoint);
                    response = self.get(&self.direct, &url, Some("bytes=0-0".into()))?;
                }
                _ => break,
            }
        }
        let status = response.status();
        if !(status.is_success() || status.is_redirection()) {
            return Err(Failure::Status(status.as_u16()));
        }
        let etag = header(&response, "x-linked-etag")
            .or_else(|| header(&response, "etag"))
            .ok_or_else(|| Failure::Other("the Hub's answer has no ETag".into()))?;
        let etag = etag.trim_start_matches("W/").replace('"', "");
        let commit = header(&response, "x-repo-commit")
            .ok_or_else(|| Failure::Other("the Hub's answer has no X-Repo-Commit".into()))?;
        // The size: the Hub's X-Linked-Size, else the range's total (from the CDN when the
        // Hub redirects there), else the whole body's length.
        let total = |r: &ureq::http::Response<ureq::Body>| -> Option<u64> {
            if let Some(range) = header(r, "content-range") {
                return range.rsplit('/').next()?.trim().parse().ok();
            }
            if r.status().as_u16() == 200 {
                return header(r, "content-length")?.trim().parse().ok();
            }
            None
        };
        let size = match header(&response, "x-linked-size").and_then(|s| s.trim().parse().ok()) {
            Some(size) => size,
            None if status.is_redirection() => {
                let location = header(&response, "location")
                    .ok_or_else(|| Failure::Other("a redirect without a Location".into()))?;
                let cdn = self.get(&self.follow, &location, Some("bytes=0-0".into()))?;
                if !cdn.status().is_success() {
                    return Err(Failure::Status(cdn.status().as_u16()));
                }
                total(&cdn).ok_or_else(|| Failure::Other("no size in the answer".into()))?
            }
            None => {
                total(&response).ok_or_else(|| Failure::Other("no size in the answer".into()))?
            }
        };
        Ok(FileMeta { commit, etag, size })
    }

    /// Downloads into `part`, resuming from the bytes already there; complete when it holds
    /// `size` bytes.
    fn download(
        &self,
        file: &str,
        size: u64,
        part: &Path,
        progress: &mut dyn DownloadProgress,
    ) -> Result<(), Failure> {
        let local = |e: std::io::Error| Failure::Other(format!("{}: {e}", part.display()));
        let mut out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(part)
            .map_err(local)?;
        let mut have = out.metadata().map_err(local)?.len();
        if have > size {
            // Not a prefix of this file: start over.
            out.set_len(0).map_err(local)?;
            have = 0;
        }
        progress.start(file, size);
        progress.advance(have);
        if have < size {
            let mut response = self.get(
                &self.follow,
                &self.url(file),
                Some(format!("bytes={have}-")),
            )?;
            match response.status().as_u16() {
                206 => {}
                // The whole file, the range ignored: written from the start.
                200 => {
                    out.set_len(0).map_err(local)?;
                    progress.start(file, size);
                }
                code => return Err(Failure::Status(code)),
            }
            let mut body = response.body_mut().as_reader();
            let mut buf = vec![0u8; 1 << 20];
            loop {
                let n = match body.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(Failure::Network(e.to_string())),
                };
                out.write_all(&buf[..n]).map_err(local)?;
                progress.advance(n as u64);
            }
            out.flush().map_err(local)?;
        }
        let got = out.metadata().map_err(local)?.len();
        if got != size {
            return Err(Failure::Network(format!(
                "the connection ended after {got} of {size} bytes"
            )));
        }
        progress.finish();
        Ok(())
    }

    /// Downloads one file into the cache (or finds its blob there) and checks it; returns the
    /// snapshot path.
    fn file(&self, file: &str, progress: &mut dyn DownloadProgress) -> Result<PathBuf, HfError> {
        let meta = self.retrying(file, || self.metadata(file))?;
        let cache = self.cache();
        let blob = cache.blob_path(&meta.etag);
        let pointer = cache.pointer_path(&meta.commit).join(file);
        let have = |blob: &Path| std::fs::metadata(blob).is_ok_and(|m| m.len() == meta.size);
        if !have(&blob) {
            if let Some(dir) = blob.parent() {
                std::fs::create_dir_all(dir).map_err(|e| HfError::io(dir, e))?;
            }
            let mut part = blob.clone().into_os_string();
            part.push(".part");
            let part = PathBuf::from(part);
            // One download of a blob at a time: another process fetching the same file holds
            // the lock until it is done (then the blob is there).
            let lock = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&part)
                .map_err(|e| HfError::io(&part, e))?;
            lock.lock().map_err(|e| HfError::io(&part, e))?;
            if !have(&blob) {
                self.retrying(file, || self.download(file, meta.size, &part, progress))?;
                if let Err(e) = verify(&part, meta.size, &meta.etag) {
                    // A corrupt download must not be found, or resumed, by the next run.
                    let _ = std::fs::remove_file(&part);
                    return Err(HfError::Hub {
                        repo: self.repo_id.clone(),
                        message: format!("{file}: {e}"),
                    });
                }
                std::fs::rename(&part, &blob).map_err(|e| HfError::io(&blob, e))?;
            }
            drop(lock);
        }
        link_blob(&blob, &pointer).map_err(|e| HfError::io(&pointer, e))?;
        cache
            .create_ref(&meta.commit)
            .map_err(|e| HfError::io(&self.options.cache_dir, e))?;
        Ok(pointer)
    }

    /// The repository's file names.
    fn list(&self) -> Result<Vec<String>, HfError> {
        let what = "listing its files";
        let url = format!(
            "{}/api/models/{}/revision/main",
            self.options.endpoint, self.repo_id
        );
        let body = self.retrying(what, || {
            let mut response = self.get(&self.follow, &url, None)?;
            if !response.status().is_success() {
                return Err(Failure::Status(response.status().as_u16()));
            }
            response
                .body_mut()
                .with_config()
                .limit(64 << 20)
                .read_to_string()
                .map_err(Failure::from)
        })?;
        let info: serde_json::Value = serde_json::from_str(&body).map_err(|e| HfError::Hub {
            repo: self.repo_id.clone(),
            message: format!("{what}: the Hub's answer is not JSON: {e}"),
        })?;
        Ok(info["siblings"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| s["rfilename"].as_str().map(str::to_string))
            .collect())
    }
}

/// Checks a downloaded blob: its size, and its hash when the ETag is one (64 hex digits:
/// sha256 of an LFS file; 40: git's blob sha1 of a regular file).
fn verify(blob: &Path, size: u64, etag: &str) -> Result<(), String> {
    let len = std::fs::metadata(blob).map_err(|e| e.to_string())?.len();
    if len != size {
        return Err(format!(
            "downloaded {len} bytes, the server announced {size}"
        ));
    }
    let hex = |d: &[u8]| d.iter().map(|b| format!("{b:02x}")).collect::<String>();
    let etag = etag
        .trim_start_matches("W/")
        .trim_matches('"')
        .to_ascii_lowercase();
    let is_hex = etag.bytes().all(|b| b.is_ascii_hexdigit());
    let digest = match etag.len() {
        64 if is_hex => {
            let mut h = sha2::Sha256::new();
            hash_file(blob, |b| h.update(b))?;
            hex(&h.finalize())
        }
        40 if is_hex => {
            let mut h = sha1::Sha1::new();
            h.update(format!("blob {len}\0").as_bytes());
            hash_file(blob, |b| h.update(b))?;
            hex(&h.finalize())
        }
        _ => return Ok(()),
    };
    if digest != etag {
        return Err(format!(
            "the download's hash {digest} differs from the server's {etag}"
        ));
    }
    Ok(())
}

fn hash_file(path: &Path, mut update: impl FnMut(&[u8])) -> Result<(), String> {
    let mut f = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(|e| e.to_string())?;
        if n == 0 {
            return Ok(());
        }
        update(&buf[..n]);
    }
}

/// Points `snapshots/COMMIT/FILE` at `blobs/ETAG` with a relative symlink, as huggingface_hub
/// does (a copy where symlinks are not available).
fn link_blob(blob: &Path, pointer: &Path) -> std::io::Result<()> {
    if pointer.exists() {
        return Ok(());
    }
    let _ = std::fs::remove_file(pointer); // a dangling link
    if let Some(parent) = pointer.parent() {
        std::fs::create_dir_all(parent)?;
    }
    #[cfg(unix)]
    {
        // snapshots/COMMIT/a/b/FILE → ../../(../..)blobs/ETAG
        let depth = pointer
            .strip_prefix(
                blob.parent()
                    .and_then(Path::parent)
                    .unwrap_or(Path::new("")),
            )
            .map(|rel| rel.components().count().saturating_sub(1))
            .unwrap_or(0);
        let mut target = PathBuf::new();
        for _ in 0..depth {
            target.push("..");
        }
        target.push("blobs");
        target.push(blob.file_name().unwrap_or_default());
        std::os::unix::fs::symlink(target, pointer)
    }
    #[cfg(not(unix))]
    {
        std::fs::copy(blob, pointer).map(|_| ())
    }
}

/// The snapshot folder `refs/main` points at, if the repository is in the cache.
pub fn cached_snapshot(options: &HubOptions, repo_id: &str) -> Option<PathBuf> {
    let repo_dir = options
        .cache_dir
        .join(Repo::model(repo_id.to_string()).folder_name());
    let commit = std::fs::read_to_string(repo_dir.join("refs").join("main")).ok()?;
    let snapshot = repo_dir.join("snapshots").join(commit.trim());
    snapshot.is_dir().then_some(snapshot)
}

/// Picks the GGUF to load from a repository without `config.json`: the only one, or the only
/// I2_S one.
fn pick_gguf(repo: &str, names: &[String]) -> Result<String, HfError> {
    let ggufs: Vec<&String> = names.iter().filter(|n| n.ends_with(".gguf")).collect();
    let i2s: Vec<&String> = ggufs
        .iter()
        .copied()
        .filter(|n| n.to_ascii_lowercase().contains("i2_s"))
        .collect();
    match (ggufs.as_slice(), i2s.as_slice()) {
        ([one], _) | (_, [one]) => Ok(one.to_string()),
        ([], _) => Err(HfError::Hub {
            repo: repo.to_string(),
            message: "neither config.json (a Hugging Face checkpoint) nor a .gguf file".into(),
        }),
        _ => Err(HfError::Hub {
            repo: repo.to_string(),
            message: format!(
                "several GGUF files, name one as hf:{repo}:FILE: {}",
                ggufs
                    .iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }),
    }
}

fn source_for_file(path: PathBuf) -> ModelSource {
    if path.extension().is_some_and(|e| e == "gguf") {
        ModelSource::Gguf(path)
    } else {
        ModelSource::Folder(path.parent().map(Path::to_path_buf).unwrap_or_default())
    }
}

/// Resolves `OWNER/REPO[:FILE]` to local files: from the cache only when `options.offline`,
/// otherwise downloading what is missing (a checkpoint's config, tokenizer and safetensors; or
/// the named / only GGUF).
pub fn fetch(
    spec: &HubSpec,
    options: &HubOptions,
    progress: &mut dyn DownloadProgress,
) -> Result<ModelSource, HfError> {
    if options.offline {
        return fetch_offline(spec, options);
    }
    let hub = Hub::new(options, &spec.repo);
    if let Some(file) = &spec.file {
        return Ok(source_for_file(hub.file(file, progress)?));
    }
    let names = hub.list()?;
    if names.iter().any(|n| n == "config.json") {
        let mut folder = None;
        for name in &names {
            let top_level = !name.contains('/');
            let wanted = FOLDER_FILES.contains(&name.as_str()) || name.ends_with(".safetensors");
            if top_level && wanted {
                let path = hub.file(name, progress)?;
                folder = path.parent().map(Path::to_path_buf);
            }
        }
        return folder.map(ModelSource::Folder).ok_or_else(|| HfError::Hub {
            repo: spec.repo.clone(),
            message: "nothing to download".into(),
        });
    }
    let gguf = pick_gguf(&spec.repo, &names)?;
    Ok(ModelSource::Gguf(hub.file(&gguf, progress)?))
}

fn fetch_offline(spec: &HubSpec, options: &HubOptions) -> Result<ModelSource, HfError> {
    let not_cached = |what: &str| HfError::Hub {
        repo: spec.repo.clone(),
        message: format!(
            "HF_HUB_OFFLINE is set and {what} is not in the cache {}",
            options.cache_dir.display()
        ),
    };
    let snapshot = cached_snapshot(options, &spec.repo).ok_or_else(|| not_cached("it"))?;
    if let Some(file) = &spec.file {
        let path = snapshot.join(file);
        if !path.is_file() {
            return Err(not_cached(file));
        }
        return Ok(source_for_file(path));
    }
    if is_hf_folder(&snapshot) {
        return Ok(ModelSource::Folder(snapshot));
    }
    let names: Vec<String> = std::fs::read_dir(&snapshot)
        .map_err(|e| HfError::io(&snapshot, e))?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .collect();
    let gguf = pick_gguf(&spec.repo, &names)?;
    Ok(ModelSource::Gguf(snapshot.join(gguf)))
}

/// Resolves what `-m` names: `hf:OWNER/REPO[:FILE]` through the Hub (or its cache), a folder
/// with `config.json`, or a GGUF file.
pub fn resolve_model(
    spec: &str,
    options: &HubOptions,
    progress: &mut dyn DownloadProgress,
) -> Result<ModelSource, HfError> {
    if spec.starts_with("hf:") {
        fetch(&HubSpec::parse(spec)?, options, progress)
    } else {
        ModelSource::local(Path::new(spec))
    }
}

/// Resolves and loads a model (see [`resolve_model`] and [`ModelSource::load`]).
pub fn open_model(
    spec: &str,
    options: &HubOptions,
    progress: &mut dyn DownloadProgress,
) -> Result<(Arc<GgufFile>, BitnetModel), HfError> {
    resolve_model(spec, options, progress)?.load()
}

/// A model in the Hugging Face cache, as `bitnet list` shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CachedModel {
    /// `OWNER/REPO` for a checkpoint folder, `OWNER/REPO:FILE` for a GGUF file.
    pub name: String,
    /// The GGUF file's name, or `config.json`'s folder.
    pub path: PathBuf,
    /// Bytes of the files (blobs) it is made of.
    pub size: u64,
    /// When its files last changed (the newest).
    pub modified: std::time::SystemTime,
}

/// `models--OWNER--REPO` back to `OWNER/REPO`.
fn repo_id(folder_name: &str) -> Option<String> {
    let rest = folder_name.strip_prefix("models--")?;
    let (owner, name) = rest.split_once("--")?;
    Some(format!("{owner}/{name}"))
}

/// Size and latest modification of the files under `dir` (links followed to their blobs).
fn files_size(dir: &Path) -> (u64, std::time::SystemTime) {
    let mut size = 0;
    let mut modified = std::time::UNIX_EPOCH;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let path = e.path();
            match std::fs::metadata(&path) {
                Ok(m) if m.is_dir() => stack.push(path),
                Ok(m) => {
                    size += m.len();
                    if let Ok(t) = m.modified() {
                        modified = modified.max(t);
                    }
                }
                Err(_) => {}
            }
        }
    }
    (size, modified)
}

/// The models in the cache (`options.cache_dir`): each repository's current snapshot
/// (`refs/main`), as one checkpoint folder or one entry per GGUF file. Sorted by name.
pub fn cached_models(options: &HubOptions) -> Result<Vec<CachedModel>, HfError> {
    let dir = &options.cache_dir;
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(HfError::io(dir, e)),
    };
    let mut out = Vec::new();
    for entry in entries.flatten() {
        let Some(repo) = entry.file_name().to_str().and_then(repo_id) else {
            continue;
        };
        let Some(snapshot) = cached_snapshot(options, &repo) else {
            continue;
        };
        if is_hf_folder(&snapshot) {
            let (size, modified) = files_size(&snapshot);
            out.push(CachedModel {
                name: repo,
                path: snapshot,
                size,
                modified,
            });
            continue;
        }
        let Ok(files) = std::fs::read_dir(&snapshot) else {
            continue;
        };
        for f in files.flatten() {
            let path = f.path();
            let Some(file) = f.file_name().to_str().map(str::to_string) else {
                continue;
            };
            if !file.ends_with(".gguf") {
                continue;
            }
            if let Ok(m) = std::fs::metadata(&path) {
                out.push(CachedModel {
                    name: format!("{repo}:{file}"),
                    path,
                    size: m.len(),
                    modified: m.modified().unwrap_or(std::time::UNIX_EPOCH),
                });
            }
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// Removes `OWNER/REPO` (the whole repository) or `OWNER/REPO:FILE` (that file and its blob,
/// when no other snapshot file points at it) from the cache; returns what was removed.
pub fn remove_cached(options: &HubOptions, spec: &HubSpec) -> Result<Vec<PathBuf>, HfError> {
    let repo_dir = options
        .cache_dir
        .join(Repo::model(spec.repo.clone()).folder_name());
    let not_cached = |what: &str| HfError::Hub {
        repo: spec.repo.clone(),
        message: format!("{what} is not in the cache {}", options.cache_dir.display()),
    };
    if !repo_dir.is_dir() {
        return Err(not_cached("it"));
    }
    let Some(file) = &spec.file else {
        std::fs::remove_dir_all(&repo_dir).map_err(|e| HfError::io(&repo_dir, e))?;
        return Ok(vec![repo_dir]);
    };
    let snapshots = repo_dir.join("snapshots");
    let mut links = Vec::new();
    if let Ok(commits) = std::fs::read_dir(&snapshots) {
        for c in commits.flatten() {
            let link = c.path().join(file);
            if link.symlink_metadata().is_ok() {
                links.push(link);
            }
        }
    }
    if links.is_empty() {
        return Err(not_cached(file));
    }
    let mut removed = Vec::new();
    for link in links {
        let blob = std::fs::canonicalize(&link).ok();
        std::fs::remove_file(&link).map_err(|e| HfError::io(&link, e))?;
        removed.push(link);
        if let Some(blob) = blob.filter(|b| b.starts_with(&repo_dir) && b.is_file()) {
            // Another snapshot's file may share the blob: keep it then.
            let shared = cached_links(&snapshots)
                .iter()
                .any(|l| std::fs::canonicalize(l).ok().as_ref() == Some(&blob));
            if !shared {
                std::fs::remove_file(&blob).map_err(|e| HfError::io(&blob, e))?;
                removed.push(blob);
            }
        }
    }
    Ok(removed)
}

/// Every file under `snapshots/`.
fn cached_links(snapshots: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![snapshots.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let path = e.path();
            if path.is_dir() && !path.is_symlink() {
                stack.push(path);
            } else {
                out.push(path);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cache_is_listed_and_models_removed() {
        let root = std::env::temp_dir().join(format!("bitnet-cache-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let options =
            HubOptions::from_lookup(|k| (k == "HF_HUB_CACHE").then(|| root.display().to_string()));
        assert_eq!(cached_models(&options).unwrap(), vec![]);
        // A GGUF repository with two files, one of them sharing its blob with another commit.
        let repo = root.join("models--ms--model-gguf");
        for (commit, file, blob) in [
            ("c1", "a.gguf", "b1"),
            ("c1", "b.gguf", "b2"),
            ("c0", "a.gguf", "b1"),
        ] {
            let blob_path = repo.join("blobs").join(blob);
            std::fs::create_dir_all(blob_path.parent().unwrap()).unwrap();
            std::fs::write(&blob_path, vec![0u8; if blob == "b1" { 10 } else { 20 }]).unwrap();
            let link = repo.join("snapshots").join(commit).join(file);
            link_blob(&blob_path, &link).unwrap();
        }
        std::fs::create_dir_all(repo.join("refs")).unwrap();
        std::fs::write(repo.join("refs/main"), "c1").unwrap();
        // A checkpoint folder.
        let folder = root.join("models--ms--ckpt/snapshots/c9");
        std::fs::create_dir_all(&folder).unwrap();
        std::fs::write(folder.join("config.json"), "{}").unwrap();
        std::fs::write(folder.join("model.safetensors"), vec![0u8; 100]).unwrap();
        std::fs::create_dir_all(root.join("models--ms--ckpt/refs")).unwrap();
        std::fs::write(root.join("models--ms--ckpt/refs/main"), "c9\n").unwrap();

        let listed = cached_models(&options).unwrap();
        let names: Vec<(&str, u64)> = listed.iter().map(|m| (m.name.as_str(), m.size)).collect();
        assert_eq!(
            names,
            vec![
                ("ms/ckpt", 102),
                ("ms/model-gguf:a.gguf", 10),
                ("ms/model-gguf:b.gguf", 20)
            ]
        );

        // One file: its link goes; the blob stays while another commit's file uses it.
        let spec = HubSpec::parse("ms/model-gguf:b.gguf").unwrap();
        let removed = remove_cached(&options, &spec).unwrap();
        assert_eq!(removed.len(), 2, "{removed:?}"); // the link and its blob
        assert!(!repo.join("blobs/b2").exists());
        // A file in two snapshots: both links go, then their shared blob.
        let spec = HubSpec::parse("ms/model-gguf:a.gguf").unwrap();
        assert_eq!(remove_cached(&options, &spec).unwrap().len(), 3);
        assert!(!repo.join("blobs/b1").exists());
        // A whole repository; then it is gone and removing it again is an error.
        let spec = HubSpec::parse("ms/ckpt").unwrap();
        remove_cached(&options, &spec).unwrap();
        assert!(!root.join("models--ms--ckpt").exists());
        assert!(remove_cached(&options, &spec).is_err());
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn specs_parse_and_bad_ones_are_refused() {
        assert_eq!(
            HubSpec::parse("hf:microsoft/bitnet-b1.58-2B-4T").unwrap(),
            HubSpec {
                repo: "microsoft/bitnet-b1.58-2B-4T".into(),
                file: None
            }
        );
        assert_eq!(
            HubSpec::parse("hf:microsoft/bitnet-b1.58-2B-4T-gguf:ggml-model-i2_s.gguf")
                .unwrap()
                .file
                .as_deref(),
            Some("ggml-model-i2_s.gguf")
        );
        for bad in [
            "hf:noslash",
            "hf:a/b/c",
            "hf:a/..",
            "hf:a/b:../x",
            "hf:a/b:",
            "hf:/b",
        ] {
            assert!(HubSpec::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn environment_is_read_like_huggingface_hub() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                pairs
                    .iter()
                    .find(|(key, _)| *key == k)
                    .map(|(_, v)| v.to_string())
            }
        };
        let o = HubOptions::from_lookup(env(&[("HOME", "/home/u")]));
        assert_eq!(o.cache_dir, PathBuf::from("/home/u/.cache/huggingface/hub"));
        assert_eq!(o.endpoint, DEFAULT_ENDPOINT);
        assert!(!o.offline);
        let o = HubOptions::from_lookup(env(&[
            ("HOME", "/home/u"),
            ("HF_HOME", "/data/hf"),
            ("HF_ENDPOINT", "http://127.0.0.1:9/"),
            ("HF_HUB_OFFLINE", "1"),
            ("HF_TOKEN", "hf_x"),
        ]));
        assert_eq!(o.cache_dir, PathBuf::from("/data/hf/hub"));
        assert_eq!(o.endpoint, "http://127.0.0.1:9");
        assert!(o.offline);
        assert_eq!(o.token.as_deref(), Some("hf_x"));
        let o = HubOptions::from_lookup(env(&[
            ("HF_HOME", "/data/hf"),
            ("HF_HUB_CACHE", "/fast/cache"),
            ("HF_HUB_OFFLINE", "0"),
        ]));
        assert_eq!(o.cache_dir, PathBuf::from("/fast/cache"));
        assert!(!o.offline);
    }

    #[test]
    fn gguf_choice() {
        let names = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            pick_gguf("a/b", &names(&["README.md", "m.gguf"])).unwrap(),
            "m.gguf"
        );
        assert_eq!(
            pick_gguf("a/b", &names(&["m-f16.gguf", "ggml-model-i2_s.gguf"])).unwrap(),
            "ggml-model-i2_s.gguf"
        );
        assert!(pick_gguf("a/b", &names(&["x.gguf", "y.gguf"])).is_err());
        assert!(pick_gguf("a/b", &names(&["README.md"])).is_err());
    }
}
