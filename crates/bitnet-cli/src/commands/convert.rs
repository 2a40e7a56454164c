//! `bitnet convert FOLDER|hf:OWNER/REPO -o OUT.gguf [--type i2_s|tq2_0|tq1_0|f16|f32]`: a
//! Hugging Face BitNet b1.58 checkpoint (bf16 master weights or packed uint8) to a GGUF that
//! bitnet.cpp loads, streamed tensor by tensor.

use std::io::BufWriter;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use bitnet::formats::types::TensorType;
use bitnet::hf::hub::{self, HubOptions};
use bitnet::hf::{convert, Checkpoint, ConvertOptions, ModelSource, OutType};

use super::pull::DownloadBar;

#[derive(clap::Args)]
pub struct Args {
    /// A Hugging Face model folder (config.json, *.safetensors, tokenizer.json) or
    /// hf:OWNER/REPO
    input: String,
    /// Output GGUF file
    #[arg(short = 'o', long)]
    output: PathBuf,
    /// Type of the ternary linear weights: i2_s (bitnet.cpp), tq2_0 or tq1_0 (llama.cpp),
    /// f16 or f32 (float t·scale)
    #[arg(long = "type", default_value = "i2_s")]
    ty: OutType,
    /// Type of the token embedding: f16 (default), bf16 or f32 (default with --type f32)
    #[arg(long)]
    embed_type: Option<String>,
    /// general.name (default: the folder's name)
    #[arg(long)]
    name: Option<String>,
}

pub fn run(args: Args) -> Result<()> {
    let options = HubOptions::from_env();
    let folder = match hub::resolve_model(&args.input, &options, &mut DownloadBar::default())? {
        ModelSource::Folder(f) => f,
        ModelSource::Gguf(p) => bail!(
            "{} is not a Hugging Face model folder (no config.json); nothing to convert",
            p.display()
        ),
    };
    let ckpt = Checkpoint::open(&folder)?;
    let mut options = ConvertOptions::new(args.ty);
    if let Some(name) = &args.embed_type {
        options.embed_type = match TensorType::from_name(name) {
            Some(t @ (TensorType::F16 | TensorType::BF16 | TensorType::F32)) => t,
            _ => bail!("--embed-type must be f16, bf16 or f32, not `{name}`"),
        };
    }
    options.name = args.name.clone();

    let start = Instant::now();
    let total = convert::output_size(&ckpt, &options)?;
    // Written under a temporary name and renamed when complete: no half-written model is left
    // under the requested name (nor after Ctrl-C), and no file the checkpoint is read from is
    // written over.
    let inputs = ckpt.files();
    let inputs: Vec<&Path> = inputs.iter().map(PathBuf::as_path).collect();
    let (output, file) = crate::files::Output::create(&args.output, &inputs)?;
    crate::interrupt::install();
    let bar = crate::progress::bar(total, "converting");
    let result = convert::convert(&ckpt, &options, BufWriter::new(file), |_, bytes| {
        bar.inc(bytes)
    });
    bar.finish_and_clear();
    let (writer, summary) = result.with_context(|| format!("converting {}", folder.display()))?;
    let file = writer
        .into_inner()
        .map_err(|e| e.into_error())
        .with_context(|| format!("writing {}", args.output.display()))?;
    output.commit(file)?;

    for (tensor, ty) in &summary.fallbacks {
        eprintln!(
            "note: {tensor} written as {ty}: its row length does not fit {}'s blocks",
            args.ty.tensor_type()
        );
    }
    for note in &summary.notes {
        eprintln!("warning: {note}");
    }
    if !summary.skipped.is_empty() {
        eprintln!("note: not converted: {}", summary.skipped.join(", "));
    }
    if !summary.tokenizer {
        eprintln!("note: no tokenizer.json in the folder, so the GGUF has no tokenizer");
    }
    let bytes = std::fs::metadata(&args.output)?.len();
    eprintln!(
        "wrote {} ({} tensors, {} linears, {} embedding, {:.2} MB) in {:.1} s",
        args.output.display(),
        summary.tensors,
        args.ty.tensor_type(),
        options.embed_type,
        bytes as f64 / 1e6,
        start.elapsed().as_secs_f64()
    );
    Ok(())
}
