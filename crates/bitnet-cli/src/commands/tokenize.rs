//! `bitnet tokenize [-m FILE] [-p TEXT] [--no-bos] [--parse-special] [--json]` (text from stdin
//! without `-p`) and `bitnet detokenize [-m FILE] 1 2 3`.

use anyhow::Result;
use bitnet::tokenizer::{EncodeOptions, Tokenizer};
use serde_json::json;

use crate::model_args::unescape;

#[derive(clap::Args)]
pub struct TokenizeArgs {
    /// A GGUF file, Hugging Face folder or hf:OWNER/REPO with a tokenizer (default: the
    /// bundled demo model)
    #[arg(short = 'm', long = "model")]
    model: Option<String>,
    /// The text, escapes like \n interpreted as `generate -p` does (default: read stdin, as is)
    #[arg(short = 'p', long = "prompt")]
    prompt: Option<String>,
    /// Do not add BOS (added when the file asks for it)
    #[arg(long)]
    no_bos: bool,
    /// Read special-token text (`<|eot_id|>`) as the special token
    #[arg(long)]
    parse_special: bool,
    /// Print ids and token strings as JSON
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
pub struct DetokenizeArgs {
    /// A GGUF file with tokenizer metadata (default: the bundled demo model)
    #[arg(short = 'm', long = "model")]
    model: Option<String>,
    /// Token ids
    #[arg(required = true, value_delimiter = ',')]
    ids: Vec<u32>,
}

fn load(model: &Option<String>) -> Result<Tokenizer> {
    let (_, file) = crate::model_args::open_gguf(model.as_deref())?;
    Ok(Tokenizer::from_gguf(&file)?)
}

pub fn tokenize(args: TokenizeArgs) -> Result<()> {
    let tokenizer = load(&args.model)?;
    let text = match args.prompt {
        Some(p) => unescape(&p),
        None => crate::files::read_limited_text(None, crate::files::PROMPT_LIMIT, "the text")?,
    };
    let ids = tokenizer.encode(
        &text,
        EncodeOptions {
            add_bos: !args.no_bos && tokenizer.add_bos_token(),
            parse_special: args.parse_special,
        },
    );
    if args.json {
        let tokens: Vec<Option<&str>> = ids.iter().map(|&i| tokenizer.token_str(i)).collect();
        println!("{}", json!({ "ids": ids, "tokens": tokens }));
    } else {
        let ids: Vec<String> = ids.iter().map(u32::to_string).collect();
        println!("{}", ids.join(" "));
    }
    Ok(())
}

pub fn detokenize(args: DetokenizeArgs) -> Result<()> {
    let tokenizer = load(&args.model)?;
    print!("{}", tokenizer.decode(&args.ids)?);
    Ok(())
}
