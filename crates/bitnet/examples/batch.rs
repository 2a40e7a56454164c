//! Runs every line of a text file as a prompt and writes one JSON result per line, in input
//! order. The prompts go through the library's scheduler, four at a time with continuous
//! batching: each step runs one forward pass over all of them, so every weight is read once
//! per step for the four (a prompt's text is the same as alone).
//!
//! ```sh
//! cargo run --release --example batch -- prompts.txt results.jsonl
//! cargo run --release --example batch -- prompts.txt            # results to stdout
//! ```

use std::io::{BufWriter, Write};

use bitnet::{GenerateParams, Model};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(input) = args.first() else {
        return Err("usage: batch PROMPTS.txt [RESULTS.jsonl]".into());
    };
    let text = std::fs::read_to_string(input).map_err(|e| format!("{input}: {e}"))?;
    let out: Box<dyn Write> = match args.get(1) {
        Some(path) => Box::new(std::fs::File::create(path).map_err(|e| format!("{path}: {e}"))?),
        None => Box::new(std::io::stdout()),
    };
    let mut out = BufWriter::new(out);

    let model = Model::load(std::env::var("BITNET_MODEL").ok())?;
    let lines: Vec<(usize, &str)> = (1..)
        .zip(text.lines())
        .filter(|(_, l)| !l.trim().is_empty())
        .collect();
    let prompts: Vec<&str> = lines.iter().map(|&(_, p)| p).collect();
    let params = GenerateParams::greedy().max_tokens(32).stop(["\n\n"]);
    let results = model.generate_batch(&prompts, &params, 4)?;

    for ((line, prompt), result) in lines.iter().zip(results) {
        // A prompt that could not run (too long for the context, ...) gives an error record.
        let record = match result {
            Ok(c) => serde_json::json!({
                "line": line,
                "prompt": prompt,
                "text": c.text,
                "tokens": c.generated.len(),
                "stop": c.finished.stop.as_str(),
                "tokens_per_s": c.finished.generation_tokens_per_s(),
            }),
            Err(e) => serde_json::json!({ "line": line, "prompt": prompt, "error": e.to_string() }),
        };
        writeln!(out, "{record}")?;
    }
    out.flush()?;
    Ok(())
}
