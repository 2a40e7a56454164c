//! Completes a prompt, printing the text as it comes.
//!
//! ```sh
//! cargo run --release --example generate -- "ROMEO:"              # the bundled demo model
//! cargo run --release --example generate -- -m model.gguf -n 64 "The capital of France is"
//! ```

use std::io::Write;

use bitnet::{GenerateParams, Model};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut model_path = None;
    let mut max_tokens = 64;
    let mut prompt = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "-m" => model_path = Some(args.next().ok_or("-m needs a model path")?),
            "-n" => max_tokens = args.next().ok_or("-n needs a number")?.parse()?,
            _ => prompt = Some(arg),
        }
    }
    let prompt = prompt.unwrap_or_else(|| "ROMEO:".to_string());

    // A path, "hf:OWNER/REPO", or None for the demo model built into the library.
    let model = Model::load(model_path)?;
    let params = GenerateParams::greedy().max_tokens(max_tokens);

    print!("{prompt}");
    let mut stream = model.stream(&prompt, &params)?;
    for piece in stream.by_ref() {
        print!("{}", piece?);
        std::io::stdout().flush()?;
    }
    println!();
    if let Some(result) = stream.finish() {
        eprintln!(
            "[{} tokens, {:.1} tokens/s, stop: {}]",
            result.generated.len(),
            result.generation_tokens_per_s(),
            result.stop.as_str()
        );
    }
    Ok(())
}
