//! A chat in the terminal: each line read from stdin is a message, the reply streams back.
//! The conversation stays in the KV cache between turns (only the new message is prefilled).
//!
//! ```sh
//! cargo run --release --example chat                       # the bundled demo model
//! cargo run --release --example chat -- model.gguf "You are a helpful assistant."
//! printf 'Good morrow!\nWhat news?\n' | cargo run --release --example chat
//! ```

use std::io::{BufRead, Write};
use std::ops::ControlFlow;

use bitnet::{GenerateParams, Model};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let model = Model::load(args.next())?;
    let system = args.next();

    let params = GenerateParams {
        max_tokens: Some(48),
        temperature: 0.7,
        seed: Some(1),
        ..GenerateParams::default()
    };
    let mut chat = model.chat_session(system.as_deref(), &params)?;
    eprintln!(
        "chatting with {} (one message per line; end with Ctrl-D)",
        model.name()
    );

    let mut stdout = std::io::stdout();
    for line in std::io::stdin().lock().lines() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        println!("> {line}");
        let reply = chat.send(&line, |piece| {
            print!("{piece}");
            let _ = stdout.flush();
            ControlFlow::Continue(())
        })?;
        println!();
        eprintln!(
            "[{} tokens, {:.0} tokens/s, prompt {} tokens ({} reused from the cache)]",
            reply.generated.len(),
            reply.generation_tokens_per_s(),
            reply.prompt_tokens,
            reply.cached_tokens
        );
    }
    Ok(())
}
