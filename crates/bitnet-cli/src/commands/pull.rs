//! `bitnet pull OWNER/REPO[:FILE]`: download a model from the Hugging Face Hub into the
//! standard cache (`HF_HUB_CACHE` / `HF_HOME`; `HF_ENDPOINT`, `HF_TOKEN`, `HF_HUB_OFFLINE`
//! honoured) and print where it is. Interrupted downloads resume on the next run.

use anyhow::Result;
use bitnet::hf::hub::{self, DownloadProgress, HubOptions, HubSpec};
use indicatif::ProgressBar;

#[derive(clap::Args)]
pub struct Args {
    /// The repository, e.g. microsoft/bitnet-b1.58-2B-4T, or OWNER/REPO:FILE for one GGUF
    /// file of it (an `hf:` prefix is accepted)
    repo: String,
}

pub fn run(args: Args) -> Result<()> {
    let spec = HubSpec::parse(&args.repo)?;
    let options = HubOptions::from_env();
    // The library's error names the repository and the file already.
    let source = hub::fetch(&spec, &options, &mut DownloadBar::default())?;
    eprintln!(
        "{} is in the cache {}",
        spec.repo,
        options.cache_dir.display()
    );
    println!("{}", source.path().display());
    Ok(())
}

/// Download progress as a bar per file on stderr (hidden when stderr is not a terminal).
#[derive(Default)]
pub struct DownloadBar {
    bar: Option<ProgressBar>,
}

impl DownloadProgress for DownloadBar {
    fn start(&mut self, file: &str, size: u64) {
        match &self.bar {
            Some(bar) => {
                bar.set_length(size);
                bar.set_position(0);
                bar.set_message(file.to_string());
            }
            None => self.bar = Some(crate::progress::bar(size, file)),
        }
    }

    fn advance(&mut self, bytes: u64) {
        if let Some(bar) = &self.bar {
            bar.inc(bytes);
        }
    }

    fn finish(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }
}
