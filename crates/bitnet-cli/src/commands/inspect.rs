//! `bitnet inspect [FILE] [--json]`: what a GGUF file holds, read from its header only.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::Result;
use bitnet::formats::gguf::{GgufFile, Metadata, Value};
use bitnet::formats::types::TensorType;
use serde_json::json;

use bitnet::load::{DEMO_MODEL, DEMO_MODEL_NAME};

#[derive(clap::Args)]
pub struct Args {
    /// The GGUF file (default: the bundled demo model)
    #[arg(conflicts_with = "model")]
    file: Option<PathBuf>,
    /// The GGUF file, as the other commands name it
    #[arg(short = 'm', long = "model")]
    model: Option<PathBuf>,
    /// Print one JSON object instead of text
    #[arg(long)]
    json: bool,
    /// Show every metadata key (long arrays still abbreviated)
    #[arg(long)]
    all: bool,
}

/// Arrays longer than this are shown by their first items and their length.
const ARRAY_ITEMS: usize = 8;

/// llama.cpp's `llama_ftype` names, with bitnet.cpp's I2_S.
fn file_type_name(ft: u64) -> &'static str {
    match ft {
        0 => "all F32",
        1 => "mostly F16",
        2 => "mostly Q4_0",
        3 => "mostly Q4_1",
        7 => "mostly Q8_0",
        8 => "mostly Q5_0",
        9 => "mostly Q5_1",
        10 => "mostly Q2_K",
        14 | 15 => "mostly Q4_K",
        16 | 17 => "mostly Q5_K",
        18 => "mostly Q6_K",
        32 => "mostly BF16",
        36 => "mostly TQ1_0",
        37 => "mostly TQ2_0",
        40 => "mostly I2_S",
        _ => "unknown",
    }
}

struct TypeTotal {
    tensors: usize,
    elements: u64,
    bytes: u64,
}

/// The summary both outputs are made from.
struct Summary<'a> {
    gguf: &'a GgufFile,
    arch: Option<&'a str>,
    totals: BTreeMap<TensorType, TypeTotal>,
    params: u64,
}

impl<'a> Summary<'a> {
    fn new(gguf: &'a GgufFile) -> Summary<'a> {
        let mut totals: BTreeMap<TensorType, TypeTotal> = BTreeMap::new();
        let mut params = 0;
        for t in gguf.tensors() {
            let e = totals.entry(t.ty).or_insert(TypeTotal {
                tensors: 0,
                elements: 0,
                bytes: 0,
            });
            e.tensors += 1;
            e.elements += t.element_count();
            e.bytes += t.size;
            params += t.element_count();
        }
        Summary {
            gguf,
            arch: gguf
                .metadata()
                .get("general.architecture")
                .and_then(Value::as_str),
            totals,
            params,
        }
    }

    fn md(&self) -> &Metadata {
        self.gguf.metadata()
    }

    /// Keys under `{arch}.`: the model's hyperparameters.
    fn hyperparameters(&self) -> Vec<(&str, &Value)> {
        let Some(arch) = self.arch else {
            return Vec::new();
        };
        let prefix = format!("{arch}.");
        self.md()
            .iter()
            .filter_map(|(k, v)| k.strip_prefix(&prefix).map(|short| (short, v)))
            .collect()
    }

    fn tokenizer(&self) -> serde_json::Value {
        let md = self.md();
        let len = |k: &str| md.get(k).and_then(Value::as_array).map(<[Value]>::len);
        let id = |k: &str| md.get(k).and_then(Value::as_u64);
        let template = md
            .get("tokenizer.chat_template")
            .and_then(Value::as_str)
            .map(str::len);
        json!({
            "model": md.get("tokenizer.ggml.model").and_then(Value::as_str),
            "pre": md.get("tokenizer.ggml.pre").and_then(Value::as_str),
            "vocab_size": len("tokenizer.ggml.tokens"),
            "merges": len("tokenizer.ggml.merges"),
            "bos_token_id": id("tokenizer.ggml.bos_token_id"),
            "eos_token_id": id("tokenizer.ggml.eos_token_id"),
            "eot_token_id": id("tokenizer.ggml.eot_token_id"),
            "padding_token_id": id("tokenizer.ggml.padding_token_id"),
            "add_bos_token": md.get("tokenizer.ggml.add_bos_token").and_then(Value::as_bool),
            "chat_template_chars": template,
        })
    }
}

pub fn run(args: Args) -> Result<()> {
    let gguf = match args.file.as_ref().or(args.model.as_ref()) {
        Some(path) => GgufFile::open(path)?,
        None => GgufFile::from_static(DEMO_MODEL_NAME, DEMO_MODEL)?,
    };
    let summary = Summary::new(&gguf);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&to_json(&summary))?);
    } else {
        print_text(&summary, args.all);
    }
    Ok(())
}

fn to_json(s: &Summary) -> serde_json::Value {
    let md = s.md();
    let file_type = md.get("general.file_type").and_then(Value::as_u64);
    let metadata: serde_json::Map<String, serde_json::Value> = md
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_json(Some(ARRAY_ITEMS))))
        .collect();
    let hyper: serde_json::Map<String, serde_json::Value> = s
        .hyperparameters()
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_json(Some(ARRAY_ITEMS))))
        .collect();
    let tensors: Vec<_> = s
        .gguf
        .tensors()
        .iter()
        .map(|t| {
            json!({
                "name": t.name,
                "type": t.ty.name(),
                "shape": t.dims,
                "bytes": t.size,
                "offset": s.gguf.data_offset() + t.offset,
            })
        })
        .collect();
    let totals: serde_json::Map<String, serde_json::Value> = s
        .totals
        .iter()
        .map(|(ty, t)| {
            (
                ty.name().to_string(),
                json!({"tensors": t.tensors, "elements": t.elements, "bytes": t.bytes}),
            )
        })
        .collect();
    json!({
        "file": s.gguf.source(),
        "file_bytes": s.gguf.file_len(),
        "gguf_version": s.gguf.version(),
        "alignment": s.gguf.alignment(),
        "data_offset": s.gguf.data_offset(),
        "architecture": s.arch,
        "name": md.get("general.name").and_then(Value::as_str),
        "file_type": file_type,
        "file_type_name": file_type.map(file_type_name),
        "hyperparameters": hyper,
        "tokenizer": s.tokenizer(),
        "metadata": metadata,
        "tensors": tensors,
        "totals_by_type": totals,
        "parameters": s.params,
    })
}

fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.2} {}", UNITS[unit])
    }
}

fn print_text(s: &Summary, all: bool) {
    let md = s.md();
    let g = s.gguf;
    println!(
        "file:          {} ({})",
        g.source(),
        human_bytes(g.file_len())
    );
    println!(
        "gguf:          version {}, alignment {}, {} metadata keys, {} tensors, data at byte {}",
        g.version(),
        g.alignment(),
        md.len(),
        g.tensors().len(),
        g.data_offset()
    );
    println!("architecture:  {}", s.arch.unwrap_or("(none)"));
    if let Some(name) = md.get("general.name").and_then(Value::as_str) {
        println!("name:          {name}");
    }
    if let Some(ft) = md.get("general.file_type").and_then(Value::as_u64) {
        println!("file type:     {ft} ({})", file_type_name(ft));
    }

    let hyper = s.hyperparameters();
    if !hyper.is_empty() {
        println!("\nhyperparameters:");
        for (k, v) in hyper {
            println!("  {k:<40} {}", v.summary(ARRAY_ITEMS));
        }
    }

    let tok = s.tokenizer();
    if tok["model"].is_string() {
        println!("\ntokenizer:");
        let show = |v: &serde_json::Value| match v {
            serde_json::Value::Null => "(absent)".to_string(),
            serde_json::Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        for key in [
            "model",
            "pre",
            "vocab_size",
            "merges",
            "bos_token_id",
            "eos_token_id",
            "eot_token_id",
            "add_bos_token",
        ] {
            println!("  {key:<40} {}", show(&tok[key]));
        }
        let template = match tok["chat_template_chars"].as_u64() {
            Some(n) => format!("present ({n} chars)"),
            None => "absent".to_string(),
        };
        println!("  {:<40} {template}", "chat_template");
    }

    println!("\nmetadata:");
    let arch_prefix = s.arch.map(|a| format!("{a}."));
    for (k, v) in md.iter() {
        let shown_above = arch_prefix.as_deref().is_some_and(|p| k.starts_with(p))
            || (k.starts_with("tokenizer.") && !all);
        if !shown_above || all {
            println!("  {k:<40} {}", v.summary(ARRAY_ITEMS));
        }
    }

    println!("\ntensors:");
    let width = g
        .tensors()
        .iter()
        .map(|t| t.name.len())
        .max()
        .unwrap_or(4)
        .max(4);
    println!(
        "  {:<width$}  {:<6} {:<20} {:>14} {:>14}",
        "name", "type", "shape", "bytes", "offset"
    );
    for t in g.tensors() {
        println!(
            "  {:<width$}  {:<6} {:<20} {:>14} {:>14}",
            t.name,
            t.ty.name(),
            t.shape_string(),
            t.size,
            g.data_offset() + t.offset
        );
    }
    println!("\ntotals by type:");
    for (ty, t) in &s.totals {
        println!(
            "  {:<6} {:>5} tensors {:>16} elements {:>12}",
            ty.name(),
            t.tensors,
            t.elements,
            human_bytes(t.bytes)
        );
    }
    println!(
        "parameters:    {} ({:.3} B)",
        s.params,
        s.params as f64 / 1e9
    );
}
