//! `bitnet quantize IN.gguf OUT.gguf [--output-type q8_0|q6_k] [--type i2_s|tq2_0|tq1_0]`:
//! re-encodes a GGUF into another, streamed tensor by tensor with all metadata kept: the
//! output matrix as Q8_0 or Q6_K (what `--output-type` otherwise does at every load), the
//! ternary weights between bitnet.cpp's I2_S and llama.cpp's TQ2_0 / TQ1_0.

use std::io::BufWriter;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use bitnet::formats::gguf::GgufFile;
use bitnet::formats::types::TensorType;
use bitnet::model::quantize::{quantize_gguf, QuantizeOptions};

#[derive(clap::Args)]
pub struct Args {
    /// The GGUF to read
    input: PathBuf,
    /// The GGUF to write
    output: PathBuf,
    /// Store the output matrix as q8_0, q6_k, f16 or f32 (a tied model gets its own
    /// output.weight; the embedding stays as it is)
    #[arg(long)]
    output_type: Option<String>,
    /// Store the ternary linear weights as i2_s (bitnet.cpp), tq2_0 or tq1_0 (llama.cpp)
    #[arg(long = "type")]
    ty: Option<String>,
    /// Threads for the output matrix's encoding (default: all cores)
    #[arg(short = 't', long = "threads")]
    threads: Option<usize>,
}

pub fn run(args: Args) -> Result<()> {
    let output_type = args
        .output_type
        .as_deref()
        .map(crate::model_args::output_type)
        .transpose()?;
    let ternary_type = match args.ty.as_deref() {
        None => None,
        Some(name) => match TensorType::from_name(name) {
            Some(ty) if ty.is_ternary() => Some(ty),
            _ => bail!("--type {name}: use i2_s, tq2_0 or tq1_0"),
        },
    };
    if output_type.is_none() && ternary_type.is_none() {
        bail!("nothing to do: give --output-type q8_0|q6_k and/or --type i2_s|tq2_0|tq1_0");
    }
    let threads = match args.threads {
        Some(t) => {
            crate::model_args::check_threads(t)?;
            t
        }
        None => bitnet::kernels::threads::ThreadPool::default_threads(),
    };
    let src = Arc::new(GgufFile::open(&args.input)?);
    let options = QuantizeOptions {
        output_type,
        ternary_type,
    };

    let start = Instant::now();
    // Written under a temporary name and renamed when complete: no half-written model is left
    // under the requested name, and the input is never the output.
    let (output, file) = crate::files::Output::create(&args.output, &[&args.input])?;
    crate::interrupt::install();
    let total: u64 = src.tensors().iter().map(|t| t.element_count()).sum();
    let bar = crate::progress::bar(total, "quantizing");
    let result = quantize_gguf(&src, &options, BufWriter::new(file), threads, |_, n| {
        bar.inc(n)
    });
    bar.finish_and_clear();
    let (writer, summary) = result.with_context(|| format!("writing {}", args.output.display()))?;
    let file = writer
        .into_inner()
        .map_err(|e| e.into_error())
        .with_context(|| format!("writing {}", args.output.display()))?;
    output.commit(file)?;
    let mut by_change: std::collections::BTreeMap<(String, String), usize> = Default::default();
    for (_, from, to) in &summary.changed {
        *by_change
            .entry((from.to_string(), to.to_string()))
            .or_default() += 1;
    }
    for ((from, to), n) in by_change {
        eprintln!("{n} tensor(s) {from} → {to}");
    }
    if summary
        .changed
        .iter()
        .any(|(_, from, to)| *from == TensorType::I2S && to.is_ternary())
    {
        eprintln!(
            "note: TQ2_0 and TQ1_0 keep each 256-value block's scale as f16, so the I2_S scales \
             were rounded to f16 (every ternary value is kept)"
        );
    }
    if summary.added_output {
        eprintln!("added output.weight (the model was tied to token_embd.weight, which stays)");
    }
    let bytes = std::fs::metadata(&args.output)?.len();
    eprintln!(
        "wrote {} ({} tensors, {:.2} GB) in {:.1} s",
        args.output.display(),
        summary.tensors,
        bytes as f64 / 1e9,
        start.elapsed().as_secs_f64()
    );
    Ok(())
}
