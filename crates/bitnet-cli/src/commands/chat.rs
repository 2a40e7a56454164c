//! `bitnet chat [-m FILE] [--system TEXT]`: an interactive chat in the terminal through the
//! model's chat template, streaming replies, with a line editor (history, arrow keys; a line
//! ending in `\` or Alt-Enter continues the message on a new line).
//!
//! The conversation is kept as the exact tokens the KV cache holds, and each turn appends only
//! the template's text for the new message: re-rendering the whole conversation would tokenize
//! the previous reply differently from how the model generated it (the template's
//! `Assistant: ` ends in a space that a re-tokenization merges into the reply's first word), so
//! the cache would miss and the reply be prefilled again. When the context fills up the oldest
//! turns are dropped (the system prompt stays) and the cache of the later ones is kept,
//! shifted into place; a reply that alone fills the context is shifted as `generate
//! --ctx-shift` does.

use std::collections::VecDeque;
use std::io::Write;
use std::ops::ControlFlow;

use anyhow::Result;
use bitnet::generate::{GenerateError, Generation, GenerationConfig, Sampler, Session, StopReason};
use bitnet::tokenizer::{ChatMessage, ChatTemplate, EncodeOptions, Tokenizer};
use rustyline::error::ReadlineError;

use crate::model_args::{n_predict, ModelArgs, SamplingArgs};

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    sampling: SamplingArgs,
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

/// One exchange after the system prompt: what dropping it removes.
#[derive(Clone, Copy, Debug)]
struct Turn {
    tokens: usize,
    messages: usize,
}

/// The conversation: its messages (for the template) and its exact tokens (for the cache).
struct Conversation {
    system: Option<String>,
    messages: Vec<ChatMessage>,
    /// The conversation's tokens; the session's cache holds a prefix of them.
    tokens: Vec<u32>,
    /// Leading tokens never dropped: BOS and the system prompt.
    keep: usize,
    turns: VecDeque<Turn>,
}

impl Conversation {
    fn new(system: Option<String>) -> Conversation {
        Conversation {
            messages: system.iter().map(ChatMessage::system).collect(),
            system,
            tokens: Vec::new(),
            keep: 0,
            turns: VecDeque::new(),
        }
    }

    fn render_past(&self, template: &ChatTemplate) -> Option<String> {
        if self.messages.is_empty() {
            Some(String::new())
        } else {
            template.render(&self.messages, false).ok()
        }
    }

    /// The tokens a new user message adds: the template's text for it (with the assistant's
    /// generation prompt) after what is already there. For a template whose rendering of the
    /// past changes as the conversation grows, the whole conversation is tokenized again
    /// instead (the cache is then reused only up to the change).
    fn user_turn(
        &mut self,
        text: &str,
        template: &ChatTemplate,
        tokenizer: &Tokenizer,
    ) -> Result<Vec<u32>> {
        let mut with_user = self.messages.clone();
        with_user.push(ChatMessage::user(text));
        let full = template.render(&with_user, true)?;
        let past = self.render_past(template);
        let continuation = match &past {
            Some(p) if full.starts_with(p.as_str()) => Some(&full[p.len()..]),
            _ => None,
        };
        let new = match continuation {
            Some(suffix) if !self.tokens.is_empty() => encode_special(tokenizer, suffix),
            Some(suffix) => {
                // The first turn: the system prompt becomes the part never dropped.
                let past = past.unwrap_or_default();
                self.tokens = if past.is_empty() {
                    Vec::new()
                } else {
                    tokenizer.encode_chat(&past)
                };
                if self.tokens.is_empty() {
                    let ids = tokenizer.encode_chat(suffix);
                    let bos = usize::from(ids.first() == tokenizer.bos_id().as_ref());
                    self.tokens.extend_from_slice(&ids[..bos]);
                    self.keep = bos;
                    ids[bos..].to_vec()
                } else {
                    self.keep = self.tokens.len();
                    encode_special(tokenizer, suffix)
                }
            }
            None => {
                // The template does not extend its past rendering: start over from its text.
                self.tokens.clear();
                self.turns.clear();
                self.keep = 0;
                tokenizer.encode_chat(&full)
            }
        };
        Ok(new)
    }

    /// Drops the oldest turn from the conversation and from the cache (shifting the rest into
    /// place); false when there is none to drop.
    fn drop_oldest(&mut self, session: &mut Session) -> Result<bool, GenerateError> {
        let Some(turn) = self.turns.pop_front() else {
            return Ok(false);
        };
        let (keep, n) = (self.keep, turn.tokens);
        if session.context_used() >= keep + n {
            session.discard(keep, n)?;
        } else {
            session.reset();
        }
        self.tokens.drain(keep..keep + n);
        let first = usize::from(self.system.is_some());
        let end = (first + turn.messages).min(self.messages.len());
        self.messages.drain(first..end);
        Ok(true)
    }

    /// Records the reply: its tokens as generated, then the template's end of the turn.
    fn finish_turn(
        &mut self,
        user: &str,
        sequence_len: usize,
        g: &Generation,
        session: &Session,
        template: &ChatTemplate,
        tokenizer: &Tokenizer,
    ) {
        let before = self.tokens.len();
        let mut with_prompt = self.messages.clone();
        with_prompt.push(ChatMessage::user(user));
        let reply = g.text.trim().to_string();
        let prompt_text = template.render(&with_prompt, true).ok();
        with_prompt.push(ChatMessage::assistant(reply.clone()));
        let closed = template.render(&with_prompt, false).ok();
        self.messages = with_prompt;

        // The cache holds the sequence (less what context shifts dropped) and the generated
        // tokens but the last one or two: those follow it here.
        let discarded: usize = g.shifts.iter().map(|s| s.discarded).sum();
        let forwarded = (session.context_used() + discarded).saturating_sub(sequence_len);
        self.tokens = session.tokens().to_vec();
        self.tokens
            .extend_from_slice(&g.generated[forwarded.min(g.generated.len())..]);
        let closing = match (&prompt_text, &closed) {
            (Some(p), Some(c)) => c
                .strip_prefix(p.as_str())
                .and_then(|rest| rest.trim_start().strip_prefix(reply.as_str())),
            _ => None,
        };
        match closing {
            Some(text) => self.tokens.extend(encode_special(tokenizer, text)),
            // A template that rewrites the reply: take its text from the start (the cache
            // is reused up to where it differs).
            None => {
                self.tokens = tokenizer.encode_chat(closed.as_deref().unwrap_or_default());
                self.turns.clear();
                self.keep = 0;
                return;
            }
        }
        if g.shifts.is_empty() {
            // The user message, the reply and its end of turn.
            self.turns.push_back(Turn {
                tokens: self.tokens.len().saturating_sub(before),
                messages: 2,
            });
        } else {
            // A shift cut through the turns: what is left after the system prompt is one.
            self.turns.clear();
            let first = usize::from(self.system.is_some());
            self.turns.push_back(Turn {
                tokens: self.tokens.len() - self.keep,
                messages: self.messages.len() - first,
            });
        }
    }
}

fn encode_special(tokenizer: &Tokenizer, text: &str) -> Vec<u32> {
    tokenizer.encode(
        text,
        EncodeOptions {
            add_bos: false,
            parse_special: true,
        },
    )
}

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
    let loaded = args.model.load()?;
    let (model, tokenizer) = (&loaded.model, &loaded.tokenizer);
    let template = tokenizer.chat_template()?;
    let mut session = Session::new(model, tokenizer, args.model.ctx_size, args.model.cache_type)?;
    let mut sampler = Sampler::new(sampler_config);
    let capacity = session.context_size();
    let shift = !args.no_ctx_shift;
    let mut conv = Conversation::new(args.system.clone());
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
                conv = Conversation::new(conv.system.clone());
                session.reset();
                println!("(conversation reset)");
                continue;
            }
            "/help" => {
                println!("{HELP}");
                continue;
            }
            "/system" => {
                match &conv.system {
                    Some(s) => println!("(system prompt: {s})"),
                    None => println!("(no system prompt; /system TEXT sets one)"),
                }
                continue;
            }
            cmd if cmd.starts_with("/system ") => {
                let text = cmd["/system ".len()..].trim().to_string();
                conv = Conversation::new(Some(text));
                session.reset();
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

        let new = conv.user_turn(&text, &template, tokenizer)?;
        // Room for the message and some of the reply; older turns go first.
        let reserve = max_tokens.unwrap_or(capacity / 4).min(capacity / 2);
        let mut dropped = 0;
        while shift && conv.tokens.len() + new.len() + reserve > capacity {
            let before = conv.tokens.len();
            if !conv.drop_oldest(&mut session)? {
                break;
            }
            dropped += before - conv.tokens.len();
        }
        if dropped > 0 {
            eprintln!("(context full: dropped the oldest turns, {dropped} tokens; the system prompt stays)");
        }
        let sequence: Vec<u32> = conv.tokens.iter().chain(&new).copied().collect();
        if sequence.len() > capacity {
            println!(
                "(the conversation is {} tokens, longer than the context of {capacity}: /reset \
                 to start over, or restart with a larger -c)",
                sequence.len()
            );
            continue;
        }
        let config = GenerationConfig {
            max_tokens,
            stop: Vec::new(),
            ignore_eos: false,
            context_shift: shift.then_some(conv.keep),
        };

        crate::interrupt::set_generating(true);
        let result = session.generate(&sequence, &config, &mut sampler, |piece| {
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
        conv.finish_turn(&text, sequence.len(), &g, &session, &template, tokenizer);
        if !args.no_stats {
            eprintln!(
                "[{} tokens, {:.1} t/s | prompt {} tokens ({} cached), {:.1} t/s | context {}/{capacity} | stop: {}]",
                g.generated.len(),
                g.generation_tokens_per_s(),
                g.prompt_tokens,
                g.cached_tokens,
                g.prompt_tokens_per_s(),
                conv.tokens.len(),
                g.stop.as_str(),
            );
        }
    }
    Ok(())
}
