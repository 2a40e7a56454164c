//! `bitnet embed -m MODEL (-p TEXT | -f FILE | --tokens IDS) [--json]`: text embeddings
//! (llama.cpp's `llama-embedding`). Each text is tokenized as the model's files say (BOS, and
//! the EOS the Qwen3 embedding models append), run through the model, pooled (the model's
//! pooling unless `--pooling` says otherwise) and L2-normalised (unless `--no-normalize`).
//! `-f` embeds every non-empty line, in batched forward passes.

use anyhow::{bail, Result};
use bitnet::{EmbedOptions, Model, Pooling};

use crate::model_args::ModelArgs;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    model: ModelArgs,
    /// The text to embed
    #[arg(short = 'p', long = "prompt", conflicts_with_all = ["file", "tokens"])]
    prompt: Option<String>,
    /// A file (or - for standard input): one embedding per non-empty line
    #[arg(short = 'f', long = "file", conflicts_with = "tokens")]
    file: Option<std::path::PathBuf>,
    /// Token ids to embed as they are (comma-separated; no BOS or EOS added)
    #[arg(long, value_delimiter = ',')]
    tokens: Option<Vec<u32>>,
    /// Pooling: none (every token's vector), mean, cls or last (default: the model's own,
    /// from its GGUF `pooling_type` or sentence-transformers' 1_Pooling)
    #[arg(long)]
    pooling: Option<Pooling>,
    /// Leave the vectors unnormalised (default: L2-normalised, as the models are trained)
    #[arg(long)]
    no_normalize: bool,
    /// Keep only the first N dimensions (Matryoshka truncation), then normalise
    #[arg(long)]
    dimensions: Option<usize>,
    /// Print OpenAI's embeddings response as JSON (`data[i].embedding`, `usage`)
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args) -> Result<()> {
    args.model.check()?;
    let texts: Option<Vec<String>> = match (&args.prompt, &args.file, &args.tokens) {
        (Some(p), _, _) => Some(vec![crate::model_args::unescape(p)]),
        (None, Some(f), _) => {
            let text = crate::files::read_limited_text(
                Some(f),
                crate::files::CORPUS_LIMIT,
                "the input file",
            )?;
            let lines: Vec<String> = text
                .lines()
                .filter(|l| !l.trim().is_empty())
                .map(str::to_string)
                .collect();
            if lines.is_empty() {
                bail!("{}: no non-empty line to embed", f.display());
            }
            Some(lines)
        }
        (None, None, Some(_)) => None,
        (None, None, None) => bail!("give the text with -p TEXT, -f FILE or --tokens IDS"),
    };
    let options = args.model.options()?;
    let model = Model::load_with(
        crate::model_args::source(args.model.model.as_deref()),
        &options,
    )?;
    let sequences: Vec<Vec<u32>> = match (&texts, &args.tokens) {
        (Some(texts), _) => texts.iter().map(|t| model.embedding_tokens(t)).collect(),
        (None, Some(ids)) => vec![ids.clone()],
        (None, None) => bail!("give the text with -p TEXT, -f FILE or --tokens IDS"),
    };
    if let Some(i) = sequences.iter().position(Vec::is_empty) {
        bail!("input {} has no tokens to embed", i + 1);
    }
    let embed_options = EmbedOptions {
        pooling: args.pooling,
        normalize: !args.no_normalize,
        dimensions: args.dimensions,
    };
    let vectors = model.embed_tokens(&sequences, &embed_options)?;
    let n_tokens: usize = sequences.iter().map(Vec::len).sum();
    if args.json {
        let data: Vec<serde_json::Value> = vectors
            .iter()
            .enumerate()
            .map(|(i, v)| serde_json::json!({"object": "embedding", "index": i, "embedding": v}))
            .collect();
        let out = serde_json::json!({
            "object": "list",
            "data": data,
            "model": model.name(),
            "usage": {"prompt_tokens": n_tokens, "total_tokens": n_tokens},
        });
        println!("{out}");
    } else {
        let width = embed_options.dimensions.unwrap_or(model.config().n_embd);
        for v in &vectors {
            // Pooling `none` gives one row per token.
            for row in v.chunks(width.max(1)) {
                let values: Vec<String> = row.iter().map(|x| format!("{x:.6}")).collect();
                println!("{}", values.join(" "));
            }
        }
    }
    eprintln!(
        "{} embedding{} of {} dimensions from {n_tokens} tokens ({} pooling{})",
        vectors.len(),
        if vectors.len() == 1 { "" } else { "s" },
        embed_options.dimensions.unwrap_or(model.config().n_embd),
        args.pooling
            .unwrap_or_else(|| model.inner().default_pooling())
            .name(),
        if args.no_normalize {
            ""
        } else {
            ", L2-normalised"
        }
    );
    Ok(())
}
