//! Runs every line of a text file as a prompt and writes one JSON result per line.
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
    let prompts = std::fs::read_to_string(input).map_err(|e| format!("{input}: {e}"))?;
    let out: Box<dyn Write> = match args.get(1) {
        Some(path) => Box::new(std::fs::File::create(path).map_err(|e| format!("{path}: {e}"))?),
        None => Box::new(std::io::stdout()),
    };
    let mut out = BufWriter::new(out);

    let model = Model::load(std::env::var("BITNET_MODEL").ok())?;
    let params = GenerateParams::greedy().max_tokens(32).stop(["\n\n"]);
    for (i, prompt) in prompts
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        // A prompt that fails (too long for the context, ...) gives an error record; the
        // others go on.
        let record = match model.generate(prompt, &params) {
            Ok(g) => serde_json::json!({
                "line": i + 1,
                "prompt": prompt,
                "text": g.text,
                "tokens": g.generated.len(),
                "stop": g.stop.as_str(),
                "tokens_per_s": g.generation_tokens_per_s(),
            }),
            Err(e) => {
                serde_json::json!({ "line": i + 1, "prompt": prompt, "error": e.to_string() })
            }
        };
        writeln!(out, "{record}")?;
    }
    out.flush()?;
    Ok(())
}
