//! `bitnet batch [-m FILE] -i in.jsonl -o out.jsonl`: one request per input line, in the same
//! format `bitnet serve` accepts (`bitnet::generate::Request`: `prompt` or `messages`, with
//! optional `id`, `max_tokens`, `temperature`, `top_k`, `top_p`, `min_p`, `repeat_penalty`,
//! `seed`, `stop` (a string or a list), `ignore_eos`, …; the fields only `serve` answers, such as
//! `n`, `logprobs` or `response_format`, and unknown ones are refused), one result per output line
//! in input order. A bad line (invalid UTF-8, invalid JSON, a bad field) gives an error record
//! with its 1-based line number and the rest still run; blank lines are skipped; the exit status
//! is 1 when any line failed. The output is written under a temporary name and renamed when
//! complete (an interrupted run leaves no partial file); it may not be the input.

use std::io::{BufWriter, Write};
use std::ops::ControlFlow;
use std::path::PathBuf;

use anyhow::{bail, Result};
use bitnet::generate::{
    GenerationConfig, Input, LogprobsRequest, Prompt, Request, ResponseFormat, Sampler,
    SamplerConfig, Session,
};
use bitnet::tokenizer::EncodeOptions;
use serde_json::{json, Value};

use crate::model_args::{ModelArgs, SamplingArgs, SpecArgs, TemplateArgs};

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    model: ModelArgs,
    /// Defaults for requests that do not set their own sampling fields
    #[command(flatten)]
    sampling: SamplingArgs,
    #[command(flatten)]
    spec: SpecArgs,
    #[command(flatten)]
    template: TemplateArgs,
    /// Input JSONL file
    #[arg(short = 'i', long = "input")]
    input: PathBuf,
    /// Output JSONL file
    #[arg(short = 'o', long = "output")]
    output: PathBuf,
    /// Default tokens to generate per request (-1: until end of generation or a full context)
    #[arg(
        short = 'n',
        long = "n-predict",
        default_value_t = 128,
        allow_negative_numbers = true
    )]
    n_predict: i64,
}

/// The input's lines as bytes, numbered from 1, blank ones left out. Read as bytes so that a
/// line of invalid UTF-8 is that line's error, not the whole file's.
fn lines(data: &[u8]) -> Vec<(usize, &[u8])> {
    data.split(|&b| b == b'\n')
        .enumerate()
        .map(|(i, l)| (i + 1, l.strip_suffix(b"\r").unwrap_or(l)))
        .filter(|(_, l)| !l.iter().all(u8::is_ascii_whitespace))
        .collect()
}

pub fn run(args: Args) -> Result<()> {
    let defaults = args.sampling.config()?;
    let n_predict = crate::model_args::n_predict(args.n_predict)?;
    let speculative = args.spec.config()?;
    args.template.check()?;
    let data = crate::files::read_limited(
        Some(&args.input),
        crate::files::CORPUS_LIMIT,
        "the file of requests",
    )?;
    let requests = lines(&data);
    let (output, out) = crate::files::Output::create(&args.output, &[&args.input])?;
    let mut loaded = args.model.load()?;
    args.template.apply(&mut loaded.tokenizer)?;
    let (model, tokenizer) = (&loaded.model, &loaded.tokenizer);
    // A template that does not compile fails the lines with `messages` only: plain prompts
    // do not need it.
    let template = tokenizer.chat_template().map_err(|e| e.to_string());
    let mut session = Session::new(model, tokenizer, args.model.ctx_size, args.model.cache_type)?;
    session.set_draft_model(args.spec.load_draft(&args.model, tokenizer)?)?;

    let mut out = BufWriter::new(out);
    let written = |e: std::io::Error| {
        anyhow::Error::from(e).context(format!("writing {}", args.output.display()))
    };
    crate::interrupt::install();
    let bar = crate::progress::bar(requests.len() as u64, "requests");
    let (mut ok, mut failed) = (0usize, 0usize);
    for (line_no, line) in requests {
        let record = match Request::from_slice(line) {
            Err(e) => Err((Value::Null, format!("line {line_no}: invalid request: {e}"))),
            Ok(req) => {
                let id = req.id.clone().unwrap_or(Value::Null);
                run_one(
                    &mut session,
                    &template,
                    &req,
                    &defaults,
                    n_predict,
                    speculative,
                )
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
        writeln!(out, "{record}").map_err(written)?;
        bar.inc(1);
    }
    bar.finish_and_clear();
    let out = out.into_inner().map_err(|e| written(e.into_error()))?;
    output.commit(out)?;
    eprintln!("{ok} results, {failed} errors → {}", args.output.display());
    if failed > 0 {
        bail!(
            "{failed} of {} requests failed (their error records are in {})",
            ok + failed,
            args.output.display()
        );
    }
    Ok(())
}

fn run_one(
    session: &mut Session,
    template: &Result<bitnet::tokenizer::ChatTemplate, String>,
    req: &Request,
    defaults: &SamplerConfig,
    n_predict: Option<usize>,
    speculative: Option<bitnet::generate::SpecConfig>,
) -> Result<Value> {
    // Every field is checked before the model runs. What the server honours beyond one
    // completion (several choices, logprobs, constrained output, tools, streaming) is refused
    // here by name rather than ignored.
    let refused = [
        ("stream", req.stream),
        ("stream_options", req.include_usage),
        ("n", req.n > 1),
        (
            "logprobs",
            matches!(
                req.logprobs,
                Some(LogprobsRequest::Flag(true) | LogprobsRequest::Count(_))
            ),
        ),
        ("top_logprobs", req.top_logprobs.is_some_and(|k| k > 0)),
        ("echo", req.echo),
        ("logit_bias", !req.logit_bias.is_empty()),
        (
            "grammar",
            matches!(req.response_format, Some(ResponseFormat::Grammar(_))),
        ),
        (
            "response_format",
            !matches!(req.response_format, None | Some(ResponseFormat::Text)),
        ),
        ("tools", req.tools.is_some()),
        ("n_keep", req.n_keep.is_some()),
    ];
    if let Some((field, _)) = refused.iter().find(|(_, set)| *set) {
        bail!("`{field}` is not supported by `bitnet batch` (`bitnet serve` answers it)");
    }
    let sampler_config = req.sampler_config(defaults)?;
    let tokenizer = session.tokenizer();
    let ids = match req.input()? {
        Input::Prompts(prompts) => match &prompts[..] {
            [Prompt::Text(p)] => tokenizer.encode(
                p,
                EncodeOptions {
                    add_bos: tokenizer.add_bos_token(),
                    parse_special: false,
                },
            ),
            [Prompt::Tokens(ids)] => ids.clone(),
            _ => {
                anyhow::bail!("`prompt`: a batch line answers one prompt; put each on its own line")
            }
        },
        Input::Messages(m) => {
            let template = template
                .as_ref()
                .map_err(|e| anyhow::anyhow!("`messages` need the chat template: {e}"))?;
            tokenizer.encode_chat(&template.render(&m, true)?)
        }
    };
    let config = GenerationConfig {
        max_tokens: req.max_tokens.unwrap_or(n_predict),
        stop: req.stop.clone(),
        ignore_eos: req.ignore_eos,
        context_shift: None,
        speculative,
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

#[cfg(test)]
mod tests {
    use super::lines;

    #[test]
    fn lines_are_numbered_from_one_and_blank_ones_skipped() {
        let data = b"{\"a\":1}\r\n\n  \n\xff\xfe\n{\"b\":2}";
        let got: Vec<(usize, &[u8])> = lines(data);
        assert_eq!(
            got,
            vec![
                (1, &b"{\"a\":1}"[..]),
                (4, &b"\xff\xfe"[..]),
                (5, &b"{\"b\":2}"[..])
            ]
        );
    }
}
