//! `bitnet logits [-m FILE] --tokens 1,2,3 [--all] [--cache-type f32] [--json]`: the raw forward
//! pass on given token ids (no BOS added). Our own reference checks use it.

use std::time::Instant;

use anyhow::Result;
use bitnet::model::{BitnetModel, CacheType, Logits};

#[derive(clap::Args)]
pub struct Args {
    /// The model: a GGUF file, a Hugging Face folder (config.json + safetensors), or
    /// hf:OWNER/REPO[:FILE] (downloaded into the Hugging Face cache); default: the bundled
    /// demo model
    #[arg(short = 'm', long = "model")]
    model: Option<String>,
    /// Token ids to run, comma-separated (no BOS is added)
    #[arg(long, value_delimiter = ',', required = true)]
    tokens: Vec<u32>,
    /// Print every position's logits, not only the last
    #[arg(long)]
    all: bool,
    /// KV cache element type: f16 (default, bitnet.cpp's arithmetic) or f32 (closest to
    /// transformers)
    #[arg(long, default_value = "f16")]
    cache_type: CacheType,
    /// Print `{"n_vocab": …, "logits": [[…], …]}`
    #[arg(long)]
    json: bool,
    /// Store the output matrix as q8_0 or q6_k (re-encoded at load), as the other commands do
    #[arg(long)]
    output_type: Option<String>,
}

pub fn run(args: Args) -> Result<()> {
    let start = Instant::now();
    let (_, file) = crate::model_args::open_gguf(args.model.as_deref())?;
    let mut model = BitnetModel::from_gguf(file)?;
    if let Some(name) = &args.output_type {
        model.set_output_type(crate::model_args::output_type(name)?)?;
    }
    let loaded = start.elapsed();
    let mut cache = model.new_cache(args.tokens.len(), args.cache_type)?;
    let which = if args.all { Logits::All } else { Logits::Last };
    let logits = model.forward(&args.tokens, &mut cache, which)?;
    eprintln!(
        "loaded in {:.3} s; {} tokens in {:.3} s",
        loaded.as_secs_f64(),
        args.tokens.len(),
        (start.elapsed() - loaded).as_secs_f64()
    );
    let n_vocab = model.config().n_vocab;
    let rows: Vec<&[f32]> = logits.chunks(n_vocab).collect();
    if args.json {
        let out = serde_json::json!({ "n_vocab": n_vocab, "logits": rows });
        println!("{out}");
    } else {
        let first = if args.all { 0 } else { args.tokens.len() - 1 };
        for (i, row) in rows.iter().enumerate() {
            let values: Vec<String> = row.iter().map(|v| format!("{v:.6}")).collect();
            println!("position {}: {}", first + i, values.join(" "));
        }
    }
    Ok(())
}
