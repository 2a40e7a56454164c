//! `bitnet chat [-m FILE] [--system TEXT]`: an interactive chat in the terminal through the
//! model's chat template, streaming replies, with a line editor (history, arrow keys; a line
//! ending in `\` or Alt-Enter continues the message on a new line). The conversation itself
//! (the exact tokens in the KV cache, turns dropped when the context fills up) is the
//! library's [`bitnet::generate::Chat`].

use std::io::Write;
use std::ops::ControlFlow;

use anyhow::Result;
use bitnet::generate::{Chat, GenerateError, GenerationConfig, Session, StopReason};
use rustyline::error::ReadlineError;

use crate::model_args::{n_predict, ModelArgs, SamplingArgs, SpecArgs, TemplateArgs};

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    sampling: SamplingArgs,
    #[command(flatten)]
    spec: SpecArgs,
    #[command(flatten)]
    template: TemplateArgs,
    /// System prompt
    #[arg(long)]
    system: Option<String>,
    /// Most tokens per reply (-1: until the end of the turn)
    #[arg(short = 'n', long = "n-predict", default_value_t = -1, allow_negative_numbers = true)]
    n_predict: i64,
    /// Stop at a full context instead of dropping the oldest turns
    #[arg(long)]
    no_ctx_shift: bool,
    /// Do not print the one-line figures after each reply
    #[arg(long)]
    no_stats: bool,
}

const HELP: &str = "/reset: new conversation  /system [TEXT]: show or set the system prompt  \
                    /exit: quit  (a line ending in \\ or Alt-Enter starts a new line; //text \
                    sends /text; Ctrl-C interrupts a reply)";

/// The line editor: history and arrow keys, Alt-Enter for a new line inside the message.
fn editor() -> Result<rustyline::DefaultEditor> {
    use rustyline::{Cmd, KeyCode, KeyEvent, Modifiers};
    let mut rl = rustyline::DefaultEditor::new()?;
    rl.bind_sequence(KeyEvent(KeyCode::Enter, Modifiers::ALT), Cmd::Newline);
    Ok(rl)
}

/// Reads one message: a line ending in `\` continues on the next. `None` at end of input.
fn read_message(rl: &mut rustyline::DefaultEditor) -> Result<Option<String>> {
    let mut message = String::new();
    let mut prompt = "> ";
    loop {
        match rl.readline(prompt) {
            Ok(line) => match line.strip_suffix('\\') {
                Some(head) => {
                    message.push_str(head);
                    message.push('\n');
                    prompt = ". ";
                }
                None => {
                    message.push_str(&line);
                    break;
                }
            },
            // Ctrl-C at the prompt quits, as it always did; Ctrl-D ends the input.
            Err(ReadlineError::Interrupted) => std::process::exit(130),
            Err(ReadlineError::Eof) => return Ok(None),
            Err(e) => return Err(e.into()),
        }
    }
    if !message.trim().is_empty() {
        let _ = rl.add_history_entry(message.as_str());
    }
    Ok(Some(message))
}

pub fn run(args: Args) -> Result<()> {
    let sampler_config = args.sampling.config()?;
    let max_tokens = n_predict(args.n_predict)?;
    let speculative = args.spec.config()?;
    args.template.check()?;
    let mut loaded = args.model.load()?;
    args.template.apply(&mut loaded.tokenizer)?;
    let (model, tokenizer) = (&loaded.model, &loaded.tokenizer);
    let mut session = Session::new(model, tokenizer, args.model.ctx_size, args.model.cache_type)?;
    session.set_draft_model(args.spec.load_draft(&args.model, tokenizer)?)?;
    let config = GenerationConfig {
        max_tokens,
        stop: Vec::new(),
        ignore_eos: false,
        context_shift: None,
        speculative,
    };
    let mut chat = Chat::new(session, args.system.clone(), sampler_config, config)?;
    chat.set_context_shift(!args.no_ctx_shift);
    let capacity = chat.context_size();
    let mut rl = editor()?;
    crate::interrupt::install();

    eprintln!(
        "chatting with {} (context {capacity} tokens). {HELP}",
        loaded.name
    );
    let mut stdout = std::io::stdout();
    while let Some(message) = read_message(&mut rl)? {
        let text = match message.trim() {
            "" => continue,
            "/exit" | "/quit" => break,
            "/reset" => {
                chat.reset();
                println!("(conversation reset)");
                continue;
            }
            "/help" => {
                println!("{HELP}");
                continue;
            }
            "/system" => {
                match chat.system() {
                    Some(s) => println!("(system prompt: {s})"),
                    None => println!("(no system prompt; /system TEXT sets one)"),
                }
                continue;
            }
            cmd if cmd.starts_with("/system ") => {
                let text = cmd["/system ".len()..].trim().to_string();
                chat.set_system(Some(text));
                println!("(system prompt set; conversation reset)");
                continue;
            }
            cmd if cmd.starts_with("//") => message.trim_start()[1..].to_string(),
            cmd if cmd.starts_with('/') => {
                let name = cmd.split_whitespace().next().unwrap_or(cmd);
                println!("(unknown command {name}) {HELP}");
                continue;
            }
            _ => message.clone(),
        };

        let turn = match chat.prepare(&text) {
            Ok(turn) => turn,
            Err(bitnet::Error::Generate(GenerateError::PromptTooLong { prompt, .. })) => {
                println!(
                    "(the conversation is {prompt} tokens, longer than the context of \
                     {capacity}: /reset to start over, or restart with a larger -c)"
                );
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        let dropped = turn.dropped_tokens();
        if dropped > 0 {
            eprintln!("(context full: dropped the oldest turns, {dropped} tokens; the system prompt stays)");
        }

        crate::interrupt::set_generating(true);
        let result = turn.respond(|piece| {
            print!("{piece}");
            let _ = std::io::stdout().flush();
            if crate::interrupt::interrupted() {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        });
        crate::interrupt::set_generating(false);
        println!();
        stdout.flush()?;
        let g = result?;
        match g.stop {
            StopReason::Interrupted => println!("(interrupted)"),
            StopReason::ContextFull => println!(
                "(the reply filled the context of {capacity} tokens: /reset to start over, or \
                 restart with a larger -c)"
            ),
            _ => {}
        }
        if !g.shifts.is_empty() {
            eprintln!("(context full: the reply went on after dropping older tokens)");
        }
        if !args.no_stats {
            eprintln!(
                "[{} tokens, {:.1} t/s | prompt {} tokens ({} cached), {:.1} t/s | context {}/{capacity} | stop: {}]",
                g.generated.len(),
                g.generation_tokens_per_s(),
                g.prompt_tokens,
                g.cached_tokens,
                g.prompt_tokens_per_s(),
                // What the cache holds (at most its capacity); the conversation's tokens may
                // run past it by the end-of-turn marker the next turn makes room for.
                chat.session().context_used(),
                g.stop.as_str(),
            );
        }
    }
    Ok(())
}
