//! `bitnet chat [-m FILE] [--system TEXT]`: an interactive chat in the terminal through the
//! model's chat template, streaming replies. The KV cache is kept across turns, so each turn
//! prefills only what is new. Ctrl-C interrupts a reply; `/reset`, `/system TEXT`, `/exit`.

use std::io::{BufRead, Write};
use std::ops::ControlFlow;

use anyhow::Result;
use bitnet::generate::{GenerateError, GenerationConfig, Sampler, Session, StopReason};
use bitnet::tokenizer::ChatMessage;

use crate::model_args::{ModelArgs, SamplingArgs};

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    sampling: SamplingArgs,
    /// System prompt
    #[arg(long)]
    system: Option<String>,
    /// Most tokens per reply (-1: until the end of the turn or a full context)
    #[arg(short = 'n', long = "n-predict", default_value_t = -1, allow_negative_numbers = true)]
    n_predict: i64,
    /// Print the figures of each reply on stderr
    #[arg(long)]
    verbose: bool,
}

const HELP: &str = "/reset: new conversation  /system TEXT: set the system prompt  /exit: quit  \
                    (Ctrl-C interrupts a reply)";

pub fn run(args: Args) -> Result<()> {
    let loaded = args.model.load()?;
    let (model, tokenizer) = (&loaded.model, &loaded.tokenizer);
    let template = tokenizer.chat_template()?;
    let mut session = Session::new(model, tokenizer, args.model.ctx_size, args.model.cache_type);
    let mut sampler = Sampler::new(args.sampling.config());
    let config = GenerationConfig {
        max_tokens: usize::try_from(args.n_predict).ok(),
        stop: Vec::new(),
        ignore_eos: false,
    };
    let mut system = args.system.clone();
    let mut messages = initial(&system);
    crate::interrupt::install();

    eprintln!(
        "chatting with {} (context {} tokens). {HELP}",
        loaded.name,
        session.context_size()
    );
    let stdin = std::io::stdin();
    let mut input = stdin.lock();
    let mut stdout = std::io::stdout();
    loop {
        print!("> ");
        stdout.flush()?;
        let mut line = String::new();
        if input.read_line(&mut line)? == 0 {
            println!();
            break;
        }
        let line = line.trim_end_matches(['\n', '\r']);
        match line.trim() {
            "" => continue,
            "/exit" | "/quit" => break,
            "/reset" => {
                messages = initial(&system);
                session.reset();
                println!("(conversation reset)");
                continue;
            }
            "/help" => {
                println!("{HELP}");
                continue;
            }
            cmd if cmd.starts_with("/system") => {
                let text = cmd.trim_start_matches("/system").trim();
                system = (!text.is_empty()).then(|| text.to_string());
                messages = initial(&system);
                session.reset();
                println!("(system prompt set; conversation reset)");
                continue;
            }
            _ => {}
        }
        messages.push(ChatMessage::user(line));
        let prompt = template.render(&messages, true)?;
        let ids = tokenizer.encode_chat(&prompt);

        crate::interrupt::set_generating(true);
        let result = session.generate(&ids, &config, &mut sampler, |piece| {
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
        match result {
            Ok(g) => {
                match g.stop {
                    StopReason::Interrupted => println!("(interrupted)"),
                    StopReason::ContextFull => println!(
                        "(the conversation filled the context of {} tokens: /reset to start over, \
                         or restart with a larger -c)",
                        session.context_size()
                    ),
                    _ => {}
                }
                if args.verbose {
                    crate::stats::print_generation_summary(
                        &g,
                        crate::stats::peak_rss_bytes(),
                        session.cache_bytes(),
                    );
                }
                messages.push(ChatMessage::assistant(g.text.trim()));
            }
            Err(GenerateError::PromptTooLong { prompt, capacity }) => {
                messages.pop();
                println!(
                    "(the conversation is {prompt} tokens, longer than the context of {capacity}: \
                     /reset to start over, or restart with a larger -c)"
                );
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

fn initial(system: &Option<String>) -> Vec<ChatMessage> {
    system.iter().map(ChatMessage::system).collect()
}
