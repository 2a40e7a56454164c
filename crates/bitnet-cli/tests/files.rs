//! Files and signals cannot take the commands down or lose data: inputs are read up to a
//! stated limit, outputs appear under their name only when complete (never over an input),
//! and Ctrl-C leaves nothing half-written behind.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn bitnet() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_bitnet"));
    c.env_remove("RUST_BACKTRACE");
    c
}

fn run(args: &[&str]) -> Output {
    bitnet().args(args).output().unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A fresh folder, removed when dropped.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl std::ops::Deref for TempDir {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

fn temp_dir(name: &str) -> TempDir {
    let dir = std::env::temp_dir().join(format!("bitnet-files-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    TempDir(dir)
}

fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn endless_inputs_stop_at_a_stated_limit() {
    // Each of these read /dev/zero until memory ran out.
    for args in [
        &["generate", "-f", "/dev/zero"][..],
        &["perplexity", "-f", "/dev/zero"],
        &["batch", "-i", "/dev/zero", "-o", "/tmp/never-written.jsonl"],
    ] {
        let out = run(args);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert!(
            err.contains("/dev/zero") && err.contains("larger than the limit of"),
            "{args:?}: {err}"
        );
    }
    let out = bitnet()
        .arg("tokenize")
        .stdin(std::fs::File::open("/dev/zero").unwrap())
        .output()
        .unwrap();
    let err = stderr(&out);
    assert!(
        err.contains("standard input: the text is larger than the limit of 64 MiB"),
        "{err}"
    );
}

#[test]
fn batch_never_writes_over_its_input_and_fails_when_a_line_fails() {
    let dir = temp_dir("batch");
    let input = dir.join("a.jsonl");
    let requests = "{\"prompt\": \"ROMEO:\", \"max_tokens\": 2}\n{\"prompt\": 5}\n";
    std::fs::write(&input, requests).unwrap();
    // The same file under another spelling.
    let same = dir.join(".").join("a.jsonl");
    let out = run(&[
        "batch",
        "-i",
        input.to_str().unwrap(),
        "-o",
        same.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("is the input"), "{}", stderr(&out));
    assert_eq!(std::fs::read_to_string(&input).unwrap(), requests);

    // One bad line of two: every line has its record, and the exit status says one failed.
    let output = dir.join("out.jsonl");
    let out = run(&[
        "batch",
        "-i",
        input.to_str().unwrap(),
        "-o",
        output.to_str().unwrap(),
    ]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("1 of 2 requests failed"), "{err}");
    let results = std::fs::read_to_string(&output).unwrap();
    assert_eq!(results.lines().count(), 2, "{results}");
    assert!(results.lines().nth(1).unwrap().contains("\"error\""));
    assert_eq!(entries(&dir), ["a.jsonl", "out.jsonl"]);
}

/// Starts `args`, waits until a temporary output appears in `dir`, then sends SIGINT.
#[cfg(unix)]
fn interrupt_while_writing(args: &[&str], dir: &Path) -> std::process::ExitStatus {
    let mut child = bitnet()
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while !entries(dir).iter().any(|n| n.ends_with(".part")) {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "{args:?}: no temporary output appeared in {}: {:?}",
            dir.display(),
            entries(dir)
        );
        if let Some(status) = child.try_wait().unwrap() {
            panic!("{args:?} ended ({status}) before it could be interrupted");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    // SAFETY: sending a signal to our own child.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGINT);
    }
    child.wait().unwrap()
}

#[cfg(unix)]
#[test]
fn ctrl_c_while_writing_a_model_leaves_nothing_behind() {
    let dir = temp_dir("synth");
    // A full-size shape takes seconds to write: long enough to be interrupted mid-file.
    let model = dir.join("m.gguf");
    let status = interrupt_while_writing(
        &[
            "synth",
            "--shape",
            "2b-4t",
            "--no-vocab",
            "-o",
            model.to_str().unwrap(),
        ],
        &dir,
    );
    assert_eq!(status.code(), Some(130));
    assert!(entries(&dir).is_empty(), "{:?}", entries(&dir));

    // quantize too, from a complete model (written first, not interrupted).
    let small = dir.join("small.gguf");
    let out = run(&[
        "synth",
        "--shape",
        "700m",
        "--no-vocab",
        "-o",
        small.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let status = interrupt_while_writing(
        &[
            "quantize",
            small.to_str().unwrap(),
            dir.join("q.gguf").to_str().unwrap(),
            "--output-type",
            "q6_k",
        ],
        &dir,
    );
    assert_eq!(status.code(), Some(130));
    assert_eq!(entries(&dir), ["small.gguf"]);
}

/// A full disk: the error names the file, and no partial file is left. Needs a small tmpfs,
/// which only root can mount; skipped (with a note) elsewhere.
#[cfg(target_os = "linux")]
#[test]
fn a_full_disk_is_named_and_leaves_no_partial_file() {
    let dir = temp_dir("full");
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"])
        .arg(&*dir)
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !mounted {
        eprintln!("skipped: cannot mount a small tmpfs here (not root?)");
        return;
    }
    let model = dir.join("m.gguf");
    let out = run(&[
        "synth",
        "--shape",
        "700m",
        "--no-vocab",
        "-o",
        model.to_str().unwrap(),
    ]);
    let left = entries(&dir);
    let _ = Command::new("umount").arg(&*dir).status();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!("writing {}", model.display())) && err.contains("No space left"),
        "{err}"
    );
    assert!(left.is_empty(), "{left:?}");
}

/// Ctrl-C ends `generate`'s reply: the text so far and the timings are shown, and the exit
/// status says it was interrupted (it was 0).
#[cfg(unix)]
#[test]
fn an_interrupted_generation_exits_130() {
    use std::io::Read;
    let mut child = bitnet()
        .args([
            "generate",
            "-p",
            "ROMEO:",
            "-n",
            "-1",
            "--ignore-eos",
            "--ctx-shift",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    // Some generated text first: the reply is under way.
    let mut text = vec![0u8; 256];
    stdout.read_exact(&mut text).unwrap();
    // SAFETY: sending a signal to our own child.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGINT);
    }
    let mut rest = Vec::new();
    let _ = stdout.read_to_end(&mut rest);
    let out = child.wait_with_output().unwrap();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(130), "{err}");
    assert!(err.contains("[interrupted]"), "{err}");
}
