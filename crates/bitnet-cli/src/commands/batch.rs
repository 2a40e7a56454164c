//! `bitnet batch [-m FILE] -i in.jsonl -o out.jsonl`: one request per input line
//! (`{"id": …, "prompt": "…"}` or `{"messages": [{"role": …, "content": …}]}`, with optional
//! `max_tokens`, `temperature`, `top_k`, `top_p`, `min_p`, `repeat_penalty`, `seed`, `stop`),
//! one result per output line in input order. A bad line gives an error record and the rest
//! still run; each result is written and flushed as soon as it is done, so an interrupted run
//! keeps what it finished.

use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::ops::ControlFlow;
use std::path::PathBuf;

use anyhow::{Context, Result};
use bitnet::generate::{GenerationConfig, Sampler, SamplerConfig, Session};
use bitnet::tokenizer::{ChatMessage, EncodeOptions};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::model_args::{ModelArgs, SamplingArgs};

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    model: ModelArgs,
    /// Defaults for requests that do not set their own sampling fields
    #[command(flatten)]
    sampling: SamplingArgs,
    /// Input JSONL file
    #[arg(short = 'i', long = "input")]
    input: PathBuf,
    /// Output JSONL file
    #[arg(short = 'o', long = "output")]
    output: PathBuf,
    /// Default tokens to generate per request
    #[arg(short = 'n', long = "n-predict", default_value_t = 128)]
    n_predict: usize,
}

/// One request line.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Request {
    id: Option<Value>,
    prompt: Option<String>,
    messages: Option<Vec<ChatMessage>>,
    #[serde(alias = "n_predict")]
    max_tokens: Option<usize>,
    temperature: Option<f32>,
    top_k: Option<usize>,
    top_p: Option<f32>,
    min_p: Option<f32>,
    repeat_penalty: Option<f32>,
    presence_penalty: Option<f32>,
    frequency_penalty: Option<f32>,
    seed: Option<u64>,
    stop: Option<Vec<String>>,
}

pub fn run(args: Args) -> Result<()> {
    let input =
        File::open(&args.input).with_context(|| format!("opening {}", args.input.display()))?;
    let lines: Vec<String> = BufReader::new(input)
        .lines()
        .collect::<std::io::Result<_>>()
        .with_context(|| format!("reading {}", args.input.display()))?;
    let loaded = args.model.load()?;
    let (model, tokenizer) = (&loaded.model, &loaded.tokenizer);
    let template = tokenizer.chat_template()?;
    let mut session = Session::new(model, tokenizer, args.model.ctx_size, args.model.cache_type);
    let defaults = args.sampling.config();

    let out = File::create(&args.output)
        .with_context(|| format!("creating {}", args.output.display()))?;
    let mut out = BufWriter::new(out);
    let requests: Vec<(usize, &String)> = lines
        .iter()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .collect();
    let bar = crate::progress::bar(requests.len() as u64, "requests");
    let (mut ok, mut failed) = (0usize, 0usize);
    for (index, line) in requests {
        let line_no = index + 1;
        let record = match serde_json::from_str::<Request>(line) {
            Err(e) => Err((Value::Null, format!("line {line_no}: invalid request: {e}"))),
            Ok(req) => {
                let id = req.id.clone().unwrap_or(Value::Null);
                run_one(&mut session, &template, &req, &defaults, args.n_predict)
                    .map(|mut v| {
                        v["id"] = id.clone();
                        v["line"] = json!(line_no);
                        v
                    })
                    .map_err(|e| (id, format!("line {line_no}: {e:#}")))
            }
        };
        let record = match record {
            Ok(v) => {
                ok += 1;
                v
            }
            Err((id, error)) => {
                failed += 1;
                json!({"id": id, "line": line_no, "error": error})
            }
        };
        writeln!(out, "{record}")?;
        out.flush()?;
        bar.inc(1);
    }
    bar.finish_and_clear();
    eprintln!("{ok} results, {failed} errors → {}", args.output.display());
    Ok(())
}

fn run_one(
    session: &mut Session,
    template: &bitnet::tokenizer::ChatTemplate,
    req: &Request,
    defaults: &SamplerConfig,
    n_predict: usize,
) -> Result<Value> {
    let tokenizer = session.tokenizer();
    let ids = match (&req.prompt, &req.messages) {
        (Some(p), None) => tokenizer.encode(
            p,
            EncodeOptions {
                add_bos: tokenizer.add_bos_token(),
                parse_special: false,
            },
        ),
        (None, Some(m)) => tokenizer.encode_chat(&template.render(m, true)?),
        _ => anyhow::bail!("a request needs exactly one of `prompt` and `messages`"),
    };
    let sampler_config = SamplerConfig {
        temperature: req.temperature.unwrap_or(defaults.temperature),
        top_k: req.top_k.unwrap_or(defaults.top_k),
        top_p: req.top_p.unwrap_or(defaults.top_p),
        min_p: req.min_p.unwrap_or(defaults.min_p),
        repeat_penalty: req.repeat_penalty.unwrap_or(defaults.repeat_penalty),
        presence_penalty: req.presence_penalty.unwrap_or(defaults.presence_penalty),
        frequency_penalty: req.frequency_penalty.unwrap_or(defaults.frequency_penalty),
        penalty_last_n: defaults.penalty_last_n,
        seed: req.seed.unwrap_or(defaults.seed),
    };
    let config = GenerationConfig {
        max_tokens: Some(req.max_tokens.unwrap_or(n_predict)),
        stop: req.stop.clone().unwrap_or_default(),
        ignore_eos: false,
    };
    let mut sampler = Sampler::new(sampler_config);
    let g = session.generate(&ids, &config, &mut sampler, |_| ControlFlow::Continue(()))?;
    Ok(json!({
        "text": g.text,
        "prompt_tokens": ids.len(),
        "generated_tokens": g.generated.len(),
        "generated_ids": g.generated,
        "stop_reason": g.stop.as_str(),
        "prompt_tokens_per_s": g.prompt_tokens_per_s(),
        "generation_tokens_per_s": g.generation_tokens_per_s(),
        "time_to_first_token_s": g.time_to_first_token.as_secs_f64(),
        "total_s": g.total_time.as_secs_f64(),
    }))
}
