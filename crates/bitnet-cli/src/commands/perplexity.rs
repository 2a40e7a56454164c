//! `bitnet perplexity [-m FILE] -f TEXT [-c 512]`: perplexity over a text file the way
//! llama.cpp's `llama-perplexity` measures it: the tokens are cut into chunks of `-c` tokens
//! (BOS first when the model uses one), each chunk is one forward pass from an empty cache,
//! and only the second half of each chunk is scored (so every scored token has at least half a
//! context before it). Prints the running estimate per chunk and the final PPL ± its standard
//! error.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Result};
use bitnet::model::Logits;
use bitnet::tokenizer::EncodeOptions;
use serde_json::json;

use crate::model_args::ModelArgs;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    model: ModelArgs,
    /// The text to score
    #[arg(short = 'f', long = "file")]
    file: PathBuf,
    /// Score at most this many chunks
    #[arg(long)]
    chunks: Option<usize>,
    /// Print one JSON object at the end
    #[arg(long)]
    json: bool,
}

/// `-log p(target)` from a row of logits (log-softmax in f64).
fn nll(logits: &[f32], target: u32) -> f64 {
    let max = logits.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v)) as f64;
    let sum: f64 = logits.iter().map(|&v| (v as f64 - max).exp()).sum();
    (sum.ln() + max) - logits[target as usize] as f64
}

pub fn run(args: Args) -> Result<()> {
    if args.chunks == Some(0) {
        bail!("--chunks 0: must be at least 1 (or left out for every chunk)");
    }
    args.model.check()?;
    let text =
        crate::files::read_limited_text(Some(&args.file), crate::files::CORPUS_LIMIT, "the text")?;
    let loaded = args.model.load()?;
    let (model, tokenizer) = (&loaded.model, &loaded.tokenizer);
    let n_ctx = if args.model.ctx_size == 0 {
        512.min(model.config().n_ctx_train)
    } else {
        args.model.ctx_size
    };
    if n_ctx < 8 {
        bail!("-c {n_ctx} is too small for perplexity (use at least 8)");
    }
    let tokens = tokenizer.encode(
        &text,
        EncodeOptions {
            add_bos: false,
            parse_special: false,
        },
    );
    let bos = tokenizer
        .add_bos_token()
        .then(|| tokenizer.bos_id())
        .flatten();
    // With BOS, each chunk's first text token is replaced by it, as llama.cpp does.
    let n_chunks = (tokens.len() / n_ctx).min(args.chunks.unwrap_or(usize::MAX));
    if n_chunks == 0 {
        bail!(
            "the text has {} tokens, fewer than one chunk of {n_ctx}; use a longer text or a smaller -c",
            tokens.len()
        );
    }
    let n_vocab = model.config().n_vocab;
    let first_scored = n_ctx / 2;
    let bar = crate::progress::bar(n_chunks as u64, "chunks");
    let start = Instant::now();
    let (mut sum, mut sum_sq, mut count) = (0f64, 0f64, 0usize);
    let mut running = Vec::with_capacity(n_chunks);
    for c in 0..n_chunks {
        let mut chunk = tokens[c * n_ctx..(c + 1) * n_ctx].to_vec();
        if let Some(b) = bos {
            chunk[0] = b;
        }
        let mut cache = model.new_cache(n_ctx, args.model.cache_type)?;
        let logits = model.forward(&chunk, &mut cache, Logits::All)?;
        for i in first_scored..n_ctx - 1 {
            let v = nll(&logits[i * n_vocab..(i + 1) * n_vocab], chunk[i + 1]);
            sum += v;
            sum_sq += v * v;
            count += 1;
        }
        let ppl = (sum / count as f64).exp();
        running.push(ppl);
        bar.inc(1);
        if !args.json {
            bar.suspend(|| println!("[{}] {ppl:.4}", c + 1));
        }
    }
    bar.finish_and_clear();
    let mean = sum / count as f64;
    let var = (sum_sq / count as f64 - mean * mean).max(0.0);
    // Standard error of the mean NLL, carried to PPL (d exp(m) = exp(m) dm).
    let ppl = mean.exp();
    let ppl_err = ppl * (var / count as f64).sqrt();
    let secs = start.elapsed().as_secs_f64();
    if args.json {
        println!(
            "{}",
            json!({
                "model": loaded.name, "ctx": n_ctx, "chunks": n_chunks, "scored_tokens": count,
                "ppl": ppl, "ppl_stderr": ppl_err, "mean_nll": mean, "running_ppl": running,
                "seconds": secs,
            })
        );
    } else {
        println!(
            "Final estimate: PPL = {ppl:.4} +/- {ppl_err:.4} ({count} tokens scored in {n_chunks} \
             chunks of {n_ctx}, {:.1} s, {:.1} t/s)",
            secs,
            (n_chunks * n_ctx) as f64 / secs
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::nll;

    #[test]
    fn nll_is_minus_log_softmax() {
        let logits = [0.0f32, (3.0f32).ln()];
        // softmax = [0.25, 0.75]
        assert!((nll(&logits, 1) - -(0.75f64.ln())).abs() < 1e-6);
        assert!((nll(&logits, 0) - -(0.25f64.ln())).abs() < 1e-6);
    }
}
