//! `bitnet`: the command-line front end. Each command lives in its own file under `commands/`;
//! this file only parses arguments and reports errors as one clear line.

mod commands;
mod files;
mod interrupt;
mod model_args;
mod progress;
mod stats;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "bitnet",
    version,
    about = "Run BitNet b1.58 models (ternary weights, int8 activations) on the CPU"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Complete a prompt, streaming the text (default model: the bundled Shakespeare demo)
    Generate(commands::generate::Args),
    /// Chat interactively through the model's chat template
    Chat(commands::chat::Args),
    /// Run many requests from a JSONL file into a JSONL file
    Batch(commands::batch::Args),
    /// Perplexity of a text file (llama-perplexity's method)
    Perplexity(commands::perplexity::Args),
    /// OpenAI-compatible HTTP server (/v1/completions, /v1/chat/completions with SSE)
    Serve(Box<commands::serve::Args>),
    /// Text to token ids
    Tokenize(commands::tokenize::TokenizeArgs),
    /// Token ids to text
    Detokenize(commands::tokenize::DetokenizeArgs),
    /// Show a GGUF file's metadata, hyperparameters, tokenizer and tensors (reads no tensor data)
    Inspect(commands::inspect::Args),
    /// Run token ids through the model and print the logits (no BOS added)
    Logits(commands::logits::Args),
    /// Text embeddings (pooled, L2-normalised), like llama-embedding
    Embed(commands::embed::Args),
    /// Write a random-weight model of a real shape (for benchmarks and load tests)
    Synth(commands::synth::Args),
    /// Measure prompt processing and generation speed (like llama-bench)
    Bench(commands::bench::Args),
    /// Convert a Hugging Face BitNet checkpoint (folder or hf:OWNER/REPO) to GGUF
    Convert(commands::convert::Args),
    /// Download a model from the Hugging Face Hub into its cache and print the local path
    Pull(commands::pull::Args),
    /// List the models in the Hugging Face cache (name, size, age, path)
    List(commands::list::ListArgs),
    /// Remove models from the Hugging Face cache
    Rm(commands::list::RmArgs),
    /// Re-encode a GGUF: the output matrix as q8_0/q6_k, the ternary weights as i2_s/tq2_0/tq1_0
    Quantize(commands::quantize::Args),
}

fn main() {
    // Library notes (e.g. a tokenizer rule inferred from the vocabulary) go to stderr in the
    // same two styles as the commands' own (`warning: …`, `note: …`); RUST_LOG=info shows
    // more.
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn"))
        .format(|out, record| {
            use std::io::Write;
            let label = match record.level() {
                log::Level::Error => "error",
                log::Level::Warn => "warning",
                _ => "note",
            };
            writeln!(out, "{label}: {}", record.args())
        })
        .init();
    // llama.cpp spells the number of parallel sequences `-np`; a short option is one letter
    // in clap, so that one spelling becomes `--np` before parsing.
    let cli = Cli::parse_from(std::env::args_os().map(|a| {
        if a == "-np" {
            std::ffi::OsString::from("--np")
        } else {
            a
        }
    }));
    // Die quietly on a closed pipe (`bitnet ... | head`), like other Unix tools, instead of
    // panicking on the failed write. Not the server: a client that closes its socket while a
    // response is being written must end that response only, and it is written with
    // `writev`, which raises SIGPIPE (Rust leaves SIGPIPE ignored, so the write fails with
    // EPIPE instead).
    #[cfg(unix)]
    if !matches!(cli.command, Command::Serve(_)) {
        // SAFETY: restoring the default disposition of SIGPIPE before any thread starts.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    let result = match cli.command {
        Command::Generate(args) => commands::generate::run(args),
        Command::Chat(args) => commands::chat::run(args),
        Command::Batch(args) => commands::batch::run(args),
        Command::Perplexity(args) => commands::perplexity::run(args),
        Command::Serve(args) => commands::serve::run(*args),
        Command::Tokenize(args) => commands::tokenize::tokenize(args),
        Command::Detokenize(args) => commands::tokenize::detokenize(args),
        Command::Inspect(args) => commands::inspect::run(args),
        Command::Logits(args) => commands::logits::run(args),
        Command::Embed(args) => commands::embed::run(args),
        Command::Synth(args) => commands::synth::run(args),
        Command::Bench(args) => commands::bench::run(args),
        Command::Convert(args) => commands::convert::run(args),
        Command::Pull(args) => commands::pull::run(args),
        Command::Quantize(args) => commands::quantize::run(args),
        Command::List(args) => commands::list::list(args),
        Command::Rm(args) => commands::list::rm(args),
    };
    if let Err(e) = result {
        // One line with the whole cause chain; a backtrace only when asked for.
        eprintln!("error: {}", one_line(&e));
        if std::env::var_os("RUST_BACKTRACE").is_some_and(|v| v != "0") {
            eprintln!("{}", e.backtrace());
        }
        std::process::exit(1);
    }
}

/// The error and its causes on one line, each said once: a library error that shows its
/// source in its own message (`FILE: metadata key … is missing`) also returns that source as
/// its cause, which `{:#}` would print a second time.
fn one_line(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let message = cause.to_string();
        if out.contains(&message) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&message);
    }
    out
}
