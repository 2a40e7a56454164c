//! What the commands read from and write to files, so that no input can exhaust memory and
//! no output is ever seen half-written or written over one of its own inputs.
//!
//! - [`read_limited`]: a file (or stdin) read whole, up to a stated limit; past it, an error
//!   naming the limit instead of reading `/dev/zero` until memory runs out.
//! - [`Output`]: a file written under a temporary name in the destination's folder and renamed
//!   over the destination only when complete. An error, a panic or Ctrl-C before that removes
//!   the temporary file (the Ctrl-C handler calls [`remove_unfinished`]).

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::{bail, Context, Result};

/// A prompt file (`generate -f`) or text to tokenize: far beyond any context window.
pub const PROMPT_LIMIT: u64 = 64 << 20;
/// A whole corpus (`perplexity -f`) or file of requests (`batch -i`).
pub const CORPUS_LIMIT: u64 = 1 << 30;

/// `bytes` as the limit messages say it (`64 MiB`).
fn mib(bytes: u64) -> String {
    format!("{} MiB", bytes >> 20)
}

/// Reads `path` whole (`-` or `None`: standard input), refusing more than `limit` bytes.
/// `what` names the input in messages (`the prompt file`).
pub fn read_limited(path: Option<&Path>, limit: u64, what: &str) -> Result<Vec<u8>> {
    let (source, name): (Box<dyn Read>, String) = match path {
        None => (Box::new(std::io::stdin().lock()), "standard input".into()),
        Some(p) if p == Path::new("-") => {
            (Box::new(std::io::stdin().lock()), "standard input".into())
        }
        Some(p) => {
            let file = File::open(p).with_context(|| format!("reading {}", p.display()))?;
            (Box::new(file), p.display().to_string())
        }
    };
    let mut data = Vec::new();
    // One byte past the limit tells "exactly at the limit" from "over it".
    source
        .take(limit + 1)
        .read_to_end(&mut data)
        .with_context(|| format!("reading {name}"))?;
    if data.len() as u64 > limit {
        bail!(
            "{name}: {what} is larger than the limit of {} (read stopped there)",
            mib(limit)
        );
    }
    Ok(data)
}

/// [`read_limited`] as UTF-8 text.
pub fn read_limited_text(path: Option<&Path>, limit: u64, what: &str) -> Result<String> {
    let data = read_limited(path, limit, what)?;
    String::from_utf8(data).map_err(|e| {
        let name = path.map_or("standard input".into(), |p| p.display().to_string());
        anyhow::anyhow!(
            "{name}: {what} is not valid UTF-8 (byte {})",
            e.utf8_error().valid_up_to()
        )
    })
}

/// Temporary files not yet renamed into place, removed by [`remove_unfinished`] when the
/// process is interrupted (destructors do not run on `exit`).
static UNFINISHED: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

/// Removes every temporary output file not yet complete. Called by the Ctrl-C handler just
/// before the process exits.
pub fn remove_unfinished() {
    let paths = match UNFINISHED.lock() {
        Ok(mut p) => std::mem::take(&mut *p),
        Err(poisoned) => std::mem::take(&mut *poisoned.into_inner()),
    };
    for p in paths {
        let _ = std::fs::remove_file(p);
    }
}

fn forget_unfinished(path: &Path) {
    let mut paths = match UNFINISHED.lock() {
        Ok(p) => p,
        Err(poisoned) => poisoned.into_inner(),
    };
    paths.retain(|p| p != path);
}

/// Whether `a` and `b` name the same existing file (through links, `..` or other spellings).
fn same_file(a: &Path, b: &Path) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        match (std::fs::metadata(a), std::fs::metadata(b)) {
            (Ok(x), Ok(y)) => x.dev() == y.dev() && x.ino() == y.ino(),
            _ => false,
        }
    }
    #[cfg(not(unix))]
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(x), Ok(y)) => x == y,
        _ => false,
    }
}

/// An output file being written: see the module documentation.
pub struct Output {
    dest: PathBuf,
    temp: PathBuf,
    done: bool,
}

impl Output {
    /// Creates the temporary file for `dest` in its folder. Refuses a `dest` that is one of
    /// `inputs` (the command would destroy what it reads), and one that is a directory.
    pub fn create(dest: &Path, inputs: &[&Path]) -> Result<(Output, File)> {
        if let Some(input) = inputs.iter().find(|i| same_file(dest, i)) {
            bail!(
                "the output {} is the input {}: write to another file",
                dest.display(),
                input.display()
            );
        }
        if dest.is_dir() {
            bail!("the output {} is a directory", dest.display());
        }
        let name = dest
            .file_name()
            .with_context(|| format!("the output {} names no file", dest.display()))?;
        // Hidden, and with the process id so two runs writing the same output do not share it.
        let mut temp_name = std::ffi::OsString::from(".");
        temp_name.push(name);
        temp_name.push(format!(".{}.part", std::process::id()));
        let temp = dest.with_file_name(temp_name);
        // Registered before it exists, so that an interrupt between the two still removes it.
        match UNFINISHED.lock() {
            Ok(mut p) => p.push(temp.clone()),
            Err(poisoned) => poisoned.into_inner().push(temp.clone()),
        }
        let file = match File::create(&temp) {
            Ok(f) => f,
            Err(e) => {
                forget_unfinished(&temp);
                return Err(e).with_context(|| {
                    format!("creating {} (for {})", temp.display(), dest.display())
                });
            }
        };
        Ok((
            Output {
                dest: dest.to_path_buf(),
                temp,
                done: false,
            },
            file,
        ))
    }

    /// Flushes `file` to disk and renames it into place.
    pub fn commit(mut self, mut file: File) -> Result<()> {
        file.flush()
            .and_then(|()| file.sync_all())
            .with_context(|| format!("writing {}", self.dest.display()))?;
        drop(file);
        std::fs::rename(&self.temp, &self.dest).with_context(|| {
            format!(
                "renaming {} to {}",
                self.temp.display(),
                self.dest.display()
            )
        })?;
        self.done = true;
        forget_unfinished(&self.temp);
        Ok(())
    }
}

impl Drop for Output {
    fn drop(&mut self) {
        if !self.done {
            let _ = std::fs::remove_file(&self.temp);
            forget_unfinished(&self.temp);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `remove_unfinished` removes every registered file: the tests that register files run
    /// one at a time.
    static SERIAL: Mutex<()> = Mutex::new(());

    /// A fresh folder, removed when dropped.
    struct Scratch(PathBuf);

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    impl std::ops::Deref for Scratch {
        type Target = Path;
        fn deref(&self) -> &Path {
            &self.0
        }
    }

    fn scratch(name: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("bitnet-files-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }

    #[test]
    fn reads_up_to_the_limit_and_refuses_past_it() {
        let dir = scratch("limit");
        let f = dir.join("in.txt");
        std::fs::write(&f, b"0123456789").unwrap();
        assert_eq!(read_limited(Some(&f), 10, "the text").unwrap().len(), 10);
        let e = read_limited(Some(&f), 9, "the text")
            .unwrap_err()
            .to_string();
        assert!(e.contains("larger than the limit"), "{e}");
        // An endless input stops at the limit too.
        let e = read_limited(Some(Path::new("/dev/zero")), 1 << 20, "the text")
            .unwrap_err()
            .to_string();
        assert!(e.contains("/dev/zero") && e.contains("1 MiB"), "{e}");
    }

    #[test]
    fn an_output_appears_only_when_committed_and_an_abandoned_one_leaves_nothing() {
        let _serial = SERIAL.lock();
        let dir = scratch("atomic");
        let dest = dir.join("out.bin");
        std::fs::write(&dest, b"old").unwrap();
        let (out, mut file) = Output::create(&dest, &[]).unwrap();
        file.write_all(b"new").unwrap();
        // Until the commit the old content stays.
        assert_eq!(std::fs::read(&dest).unwrap(), b"old");
        out.commit(file).unwrap();
        assert_eq!(std::fs::read(&dest).unwrap(), b"new");

        let (out, mut file) = Output::create(&dest, &[]).unwrap();
        file.write_all(b"partial").unwrap();
        drop(out);
        assert_eq!(std::fs::read(&dest).unwrap(), b"new");
        let left: Vec<_> = std::fs::read_dir(&*dir).unwrap().collect();
        assert_eq!(left.len(), 1, "the temporary file was left: {left:?}");
    }

    #[test]
    fn an_output_that_is_an_input_is_refused() {
        let _serial = SERIAL.lock();
        let dir = scratch("same");
        let input = dir.join("a.jsonl");
        std::fs::write(&input, b"{}").unwrap();
        let other_spelling = dir.join(".").join("a.jsonl");
        let e = Output::create(&other_spelling, &[&input])
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("is the input"), "{e}");
        assert_eq!(std::fs::read(&input).unwrap(), b"{}");
    }

    #[test]
    fn interrupted_outputs_are_removed() {
        let _serial = SERIAL.lock();
        let dir = scratch("interrupt");
        let dest = dir.join("model.gguf");
        let (out, file) = Output::create(&dest, &[]).unwrap();
        let temp = out.temp.clone();
        assert!(temp.exists());
        remove_unfinished();
        assert!(!temp.exists());
        drop(file);
        std::mem::forget(out);
    }
}
