//! `bitnet generate [-m FILE] -p PROMPT`: complete a prompt, streaming the text to stdout, with
//! llama.cpp's flags; the figures go to stderr at the end (or everything as one JSON object
//! with `--json`).

use std::io::Write;
use std::ops::ControlFlow;
use std::path::PathBuf;

use anyhow::{bail, Result};
use bitnet::generate::{ContextShift, GenerationConfig, Sampler, Session};
use bitnet::tokenizer::EncodeOptions;
use serde_json::json;

use crate::model_args::{n_predict, unescape, ModelArgs, SamplingArgs, SpecArgs};

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    sampling: SamplingArgs,
    #[command(flatten)]
    spec: SpecArgs,
    /// The prompt (escapes like \n are interpreted, as in llama.cpp)
    #[arg(short = 'p', long = "prompt")]
    prompt: Option<String>,
    /// Read the prompt from a file
    #[arg(short = 'f', long = "file", conflicts_with = "prompt")]
    file: Option<PathBuf>,
    /// Start from these token ids instead of text (no BOS added)
    #[arg(long, value_delimiter = ',', conflicts_with_all = ["prompt", "file"])]
    tokens: Option<Vec<u32>>,
    /// Tokens to generate (-1: until end of generation or a full context)
    #[arg(
        short = 'n',
        long = "n-predict",
        default_value_t = 128,
        allow_negative_numbers = true
    )]
    n_predict: i64,
    /// Stop before this text (repeatable); it is not printed
    #[arg(long = "stop")]
    stop: Vec<String>,
    /// Keep generating past end-of-generation tokens
    #[arg(long)]
    ignore_eos: bool,
    /// Do not add the BOS token (added by default when the model asks for it)
    #[arg(long)]
    no_bos: bool,
    /// Read special-token text in the prompt (`<|eot_id|>`) as the special token
    #[arg(long)]
    parse_special: bool,
    /// Do not print the prompt before the generated text
    #[arg(long)]
    no_display_prompt: bool,
    /// Print one JSON object (text, ids, figures) instead of streaming
    #[arg(long)]
    json: bool,
    /// When the context fills up, keep the first --keep tokens, drop half of the rest and go
    /// on (llama.cpp's context shift) instead of stopping
    #[arg(long)]
    ctx_shift: bool,
    /// Prompt tokens the context shift never drops, after BOS (-1: the whole prompt)
    #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
    keep: i64,
}

/// llama.cpp's `--keep` (the library's rule, which the server's requests use too).
pub use bitnet::generate::openai::keep_tokens;

/// The one-line note about context shifts, for stderr.
pub fn shift_note(shifts: &[ContextShift], capacity: usize) -> Option<String> {
    let last = shifts.last()?;
    let dropped: usize = shifts.iter().map(|s| s.discarded).sum();
    Some(format!(
        "[context shift: the context of {capacity} tokens filled up {} time{}; kept the first {} \
         tokens and dropped {dropped} older ones in all]",
        shifts.len(),
        if shifts.len() == 1 { "" } else { "s" },
        last.kept,
    ))
}

pub fn run(args: Args) -> Result<()> {
    // Everything that can be checked without the model is checked before loading it.
    let sampler_config = args.sampling.config()?;
    let max_tokens = n_predict(args.n_predict)?;
    let speculative = args.spec.config()?;
    args.model.check()?;
    let file_text = match (&args.tokens, &args.prompt, &args.file) {
        (None, None, Some(f)) => Some(crate::files::read_limited_text(
            Some(f),
            crate::files::PROMPT_LIMIT,
            "the prompt file",
        )?),
        (None, None, None) => bail!("give a prompt with -p TEXT, -f FILE or --tokens IDS"),
        _ => None,
    };
    let loaded = args.model.load()?;
    let (model, tokenizer) = (&loaded.model, &loaded.tokenizer);
    let (prompt_text, ids) = match (&args.tokens, &args.prompt, file_text) {
        (Some(ids), _, _) => (tokenizer.decode(ids)?, ids.clone()),
        (None, Some(p), _) => {
            let text = unescape(p);
            let ids = encode(tokenizer, &text, !args.no_bos, args.parse_special);
            (text, ids)
        }
        (None, None, Some(text)) => {
            let ids = encode(tokenizer, &text, !args.no_bos, args.parse_special);
            (text, ids)
        }
        (None, None, None) => bail!("give a prompt with -p TEXT, -f FILE or --tokens IDS"),
    };
    if ids.is_empty() {
        bail!("the prompt is empty");
    }
    let mut session = Session::new(model, tokenizer, args.model.ctx_size, args.model.cache_type)?;
    let drafting = args.spec.model_draft.is_some();
    session.set_draft_model(args.spec.load_draft(&args.model, tokenizer)?)?;
    // A prompt longer than the context is refused before anything is printed.
    if ids.len() > session.context_size() {
        return Err(bitnet::generate::GenerateError::PromptTooLong {
            prompt: ids.len(),
            capacity: session.context_size(),
        }
        .into());
    }
    let config = GenerationConfig {
        max_tokens,
        stop: args.stop.iter().map(|s| unescape(s)).collect(),
        ignore_eos: args.ignore_eos,
        context_shift: args
            .ctx_shift
            .then(|| keep_tokens(args.keep, &ids, tokenizer.bos_id())),
        speculative,
    };
    let mut sampler = Sampler::new(sampler_config);

    let mut stdout = std::io::stdout().lock();
    if !args.json && !args.no_display_prompt {
        write!(stdout, "{prompt_text}")?;
        stdout.flush()?;
    }
    crate::interrupt::set_generating(true);
    let result = session.generate(&ids, &config, &mut sampler, |piece| {
        if !args.json {
            // A closed stdout ends the program quietly (SIGPIPE); other errors stop here.
            if write!(stdout, "{piece}")
                .and_then(|_| stdout.flush())
                .is_err()
            {
                return ControlFlow::Break(());
            }
        }
        if crate::interrupt::interrupted() {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    });
    // Ctrl-C ends the reply; what was generated and the timings are still shown, and the
    // exit status says it was interrupted (130, as a shell reports SIGINT).
    let interrupted = crate::interrupt::interrupted();
    crate::interrupt::set_generating(false);
    let result = result?;
    let peak_rss = crate::stats::peak_rss_bytes();
    if args.json {
        let out = json!({
            "model": loaded.name,
            "prompt": prompt_text,
            "text": result.text,
            "prompt_ids": ids,
            "generated_ids": result.generated,
            "stop_reason": result.stop.as_str(),
            "prompt_tokens": result.prompt_tokens,
            "prompt_tokens_per_s": result.prompt_tokens_per_s(),
            "generated_tokens": result.generated.len(),
            "generation_tokens_per_s": result.generation_tokens_per_s(),
            "time_to_first_token_s": result.time_to_first_token.as_secs_f64(),
            "total_s": result.total_time.as_secs_f64(),
            "peak_rss_bytes": peak_rss,
            "kv_cache_bytes": session.cache_bytes(),
            "context_shifts": result.shifts.len(),
            "speculative": (speculative.is_some() || drafting).then(|| json!({
                "drafts": result.speculative.drafts,
                "drafted_tokens": result.speculative.drafted,
                "accepted_tokens": result.speculative.accepted,
                "acceptance": result.speculative.acceptance(),
            })),
            "threads": model.threads(),
            "isa": model.isa().name(),
        });
        writeln!(stdout, "{}", serde_json::to_string_pretty(&out)?)?;
        return crate::interrupt::exit_if(interrupted);
    }
    writeln!(stdout)?;
    if let Some(note) = shift_note(&result.shifts, session.context_size()) {
        eprintln!("{note}");
    }
    if let bitnet::generate::StopReason::ContextFull = result.stop {
        eprintln!(
            "[context full: {} tokens; use a larger -c, or --ctx-shift to go on]",
            session.context_size()
        );
    }
    crate::stats::print_generation_summary(&result, peak_rss, session.cache_bytes());
    if speculative.is_some() || drafting {
        let sp = result.speculative;
        eprintln!(
            "speculative ({}): {} drafts, {} tokens drafted, {} accepted ({:.0} %)",
            if drafting { "draft model" } else { "ngram" },
            sp.drafts,
            sp.drafted,
            sp.accepted,
            100.0 * sp.acceptance()
        );
    }
    crate::interrupt::exit_if(interrupted)
}

/// Text to ids, with BOS when the model asks for it (and `bos` allows).
fn encode(
    tokenizer: &bitnet::tokenizer::Tokenizer,
    text: &str,
    bos: bool,
    parse_special: bool,
) -> Vec<u32> {
    tokenizer.encode(
        text,
        EncodeOptions {
            add_bos: bos && tokenizer.add_bos_token(),
            parse_special,
        },
    )
}
