//! `bitnet list` and `bitnet rm OWNER/REPO[:FILE]`: the models in the Hugging Face cache that
//! `bitnet pull` and `-m hf:…` use (`HF_HUB_CACHE`, `HF_HOME`), as `ollama list` / `ollama rm`
//! show and remove them.

use std::time::SystemTime;

use anyhow::Result;
use bitnet::hf::hub::{self, HubOptions, HubSpec};

#[derive(clap::Args)]
pub struct ListArgs {
    /// Print one JSON object per model instead of the table
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
pub struct RmArgs {
    /// What to remove: OWNER/REPO (the whole repository) or OWNER/REPO:FILE (one GGUF file)
    #[arg(required = true)]
    models: Vec<String>,
}

/// "3 days ago", as ollama shows ages.
fn ago(t: SystemTime) -> String {
    let s = SystemTime::now()
        .duration_since(t)
        .map_or(0, |d| d.as_secs());
    let (n, unit) = match s {
        0..60 => return "just now".into(),
        60..3600 => (s / 60, "minute"),
        3600..86400 => (s / 3600, "hour"),
        86400..604800 => (s / 86400, "day"),
        604800..2592000 => (s / 604800, "week"),
        2592000..31536000 => (s / 2592000, "month"),
        _ => (s / 31536000, "year"),
    };
    format!("{n} {unit}{} ago", if n == 1 { "" } else { "s" })
}

pub fn list(args: ListArgs) -> Result<()> {
    let options = HubOptions::from_env();
    let models = hub::cached_models(&options)?;
    if args.json {
        for m in &models {
            let modified = m
                .modified
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            println!(
                "{}",
                serde_json::json!({
                    "name": m.name, "path": m.path, "size": m.size, "modified": modified,
                })
            );
        }
        return Ok(());
    }
    if models.is_empty() {
        eprintln!(
            "no models in {} (bitnet pull OWNER/REPO downloads one)",
            options.cache_dir.display()
        );
        return Ok(());
    }
    let width = models
        .iter()
        .map(|m| m.name.len())
        .max()
        .unwrap_or(4)
        .max(4);
    println!(
        "{:<width$}  {:>10}  {:<16}  PATH",
        "NAME", "SIZE", "MODIFIED"
    );
    for m in &models {
        println!(
            "{:<width$}  {:>10}  {:<16}  {}",
            m.name,
            bitnet::model::human_bytes(m.size),
            ago(m.modified),
            m.path.display()
        );
    }
    Ok(())
}

pub fn rm(args: RmArgs) -> Result<()> {
    let options = HubOptions::from_env();
    // Every name is checked before anything is removed.
    let specs = args
        .models
        .iter()
        .map(|m| HubSpec::parse(m))
        .collect::<Result<Vec<_>, _>>()?;
    for spec in specs {
        hub::remove_cached(&options, &spec)?;
        let name = match &spec.file {
            Some(f) => format!("{}:{f}", spec.repo),
            None => spec.repo.clone(),
        };
        println!("deleted '{name}'");
    }
    Ok(())
}
