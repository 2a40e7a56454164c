//! `bitnet synth --shape 2b-4t -o FILE [--vocab-from GGUF]`: write a random-weight model of a
//! real shape (I2_S linears, ~31 % zeros, F16 embedding) for benchmarks and load tests.

use std::io::BufWriter;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use bitnet::formats::gguf::GgufFile;
use bitnet::model::synth::{self, Shape};

use bitnet::load::{DEMO_MODEL, DEMO_MODEL_NAME};

#[derive(clap::Args)]
pub struct Args {
    /// Model shape: 2b-4t (microsoft/bitnet-b1.58-2B-4T), falcon3-1b, falcon3-3b, falcon3-7b,
    /// falcon3-10b, llama3-8b, bitnet-large, bitnet-3b, bitnet-embedding-0.6b,
    /// bitnet-embedding-270m, 700m, tiny
    #[arg(long, default_value = "2b-4t")]
    shape: String,
    /// Output GGUF file
    #[arg(short = 'o', long)]
    output: PathBuf,
    /// Copy the tokenizer metadata from this GGUF (e.g. testdata/tokenizer/llama3-vocab.gguf
    /// for 2b-4t). Default for tiny: the bundled demo model's vocabulary
    #[arg(long, conflicts_with = "no_vocab")]
    vocab_from: Option<PathBuf>,
    /// Write no tokenizer (the file then serves `bench` and load tests only: nothing can
    /// generate text from it)
    #[arg(long)]
    no_vocab: bool,
    /// Random seed
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Write the full-precision baseline of the shape instead: F16 linear weights, without
    /// BitNet's own norms (what multilingual-e5-0.6b is to BitNet-embedding-0.6B), for timing
    /// an F16 engine on the same shape. This engine would ternarize its weights at load.
    #[arg(long)]
    f16_baseline: bool,
}

pub fn run(args: Args) -> Result<()> {
    if let Some((_, why)) = synth::REFUSED_SHAPES
        .iter()
        .find(|(name, _)| *name == args.shape)
    {
        bail!("--shape {}: {why}", args.shape);
    }
    let Some(shape) = Shape::by_name(&args.shape) else {
        let names: Vec<&str> = synth::SHAPES.iter().map(|s| s.name).collect();
        bail!(
            "unknown shape `{}` (known: {})",
            args.shape,
            names.join(", ")
        );
    };
    let shape = Shape {
        float_weights: args.f16_baseline,
        ..shape
    };
    let (shape, vocab) = match (&args.vocab_from, args.no_vocab) {
        (Some(path), _) => (shape, Some(GgufFile::open(path)?)),
        (None, true) => (shape, None),
        // The tiny shape exists for tests: it takes the demo's vocabulary, whatever its size,
        // so that what it writes can generate (random) text.
        (None, false) if shape.name == "tiny" => {
            let demo = GgufFile::from_static(DEMO_MODEL_NAME, DEMO_MODEL)?;
            let n_vocab = bitnet::tokenizer::Tokenizer::from_gguf(&demo)?.vocab_size();
            (Shape { n_vocab, ..shape }, Some(demo))
        }
        (None, false) => bail!(
            "--shape {} needs a vocabulary of {} tokens: give --vocab-from GGUF (e.g. \
             testdata/tokenizer/llama3-vocab.gguf for 2b-4t), or --no-vocab for a file that \
             only `bench` can use",
            shape.name,
            shape.n_vocab
        ),
    };
    // Written under a temporary name and renamed when complete: an interrupted or failed run
    // (a full disk) leaves no truncated model under the requested name.
    let inputs: Vec<&Path> = args.vocab_from.iter().map(|p| p.as_path()).collect();
    let (output, file) = crate::files::Output::create(&args.output, &inputs)?;
    crate::interrupt::install();
    let start = Instant::now();
    let total: u64 = shape
        .tensors()
        .iter()
        .map(|t| t.dims.iter().product::<u64>())
        .sum();
    let bar = crate::progress::bar(total, "writing tensors");
    let writer = synth::write_random_model(
        BufWriter::new(file),
        &shape,
        vocab.as_ref(),
        args.seed,
        |_, n| bar.inc(n),
    )
    .with_context(|| format!("writing {}", args.output.display()))?;
    bar.finish_and_clear();
    let file = writer
        .into_inner()
        .map_err(|e| e.into_error())
        .with_context(|| format!("writing {}", args.output.display()))?;
    output.commit(file)?;
    let bytes = std::fs::metadata(&args.output)?.len();
    eprintln!(
        "wrote {} ({} shape, {:.2} GB) in {:.1} s",
        args.output.display(),
        shape.name,
        bytes as f64 / 1e9,
        start.elapsed().as_secs_f64()
    );
    Ok(())
}
