//! GGUF tokenizer metadata (`tokenizer.ggml.*`) from a Hugging Face `tokenizer.json` and
//! `tokenizer_config.json`, as llama.cpp's converter writes it for byte-level BPE vocabularies
//! (Llama 3, BitNet b1.58 2B-4T): tokens in id order including the added tokens, merges as
//! `"a b"` strings, token types, special ids, the pre-tokenizer name and the chat template.

use std::collections::HashMap;
use std::path::Path;

use serde_json::Value;

use super::config::HfConfig;
use super::HfError;

/// llama.cpp token types (`llama_token_type`).
pub(crate) const TOKEN_NORMAL: i32 = 1;
pub(crate) const TOKEN_CONTROL: i32 = 3;
pub(crate) const TOKEN_USER_DEFINED: i32 = 4;
pub(crate) const TOKEN_UNUSED: i32 = 5;

/// The split regex of Llama 3's tokenizer.json (llama.cpp's `llama-bpe` pre-tokenizer).
pub(crate) const LLAMA3_SPLIT_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// A vocabulary as GGUF stores it.
#[derive(Clone, Debug, PartialEq)]
pub struct GgufVocab {
    /// `tokenizer.ggml.model`: `gpt2` (byte-level BPE).
    pub model: String,
    /// `tokenizer.ggml.pre`: `llama-bpe` for Llama 3's split rules, `gpt-2` for GPT-2's,
    /// `default` otherwise.
    pub pre: String,
    /// `tokenizer.ggml.tokens`: every token's string, by id.
    pub tokens: Vec<String>,
    /// `tokenizer.ggml.scores`: 0 for BPE tokens, -1000 for added tokens (as bitnet.cpp's
    /// converter writes them).
    pub scores: Vec<f32>,
    /// `tokenizer.ggml.token_type`: 1 normal, 3 control, 4 user-defined, 5 unused.
    pub token_types: Vec<i32>,
    /// `tokenizer.ggml.merges`: the BPE merges, `a b` by rank.
    pub merges: Vec<String>,
    /// `tokenizer.ggml.bos_token_id`.
    pub bos_token_id: Option<u32>,
    /// `tokenizer.ggml.eos_token_id`.
    pub eos_token_id: Option<u32>,
    /// `tokenizer.ggml.add_bos_token`.
    pub add_bos_token: Option<bool>,
    /// `tokenizer.chat_template`.
    pub chat_template: Option<String>,
}

fn read_json(path: &Path) -> Result<Value, HfError> {
    let bytes = std::fs::read(path).map_err(|e| HfError::io(path, e))?;
    serde_json::from_slice(&bytes).map_err(|source| HfError::Json {
        file: path.display().to_string(),
        source,
    })
}

impl GgufVocab {
    /// Reads `tokenizer.json` (and `tokenizer_config.json`, `chat_template.jinja` when present)
    /// from a folder; `None` when the folder has no `tokenizer.json`.
    pub(crate) fn from_folder(
        folder: &Path,
        config: &HfConfig,
    ) -> Result<Option<GgufVocab>, HfError> {
        let tok_path = folder.join("tokenizer.json");
        if !tok_path.is_file() {
            return Ok(None);
        }
        let tokenizer = read_json(&tok_path)?;
        let cfg_path = folder.join("tokenizer_config.json");
        let tok_config = if cfg_path.is_file() {
            Some(read_json(&cfg_path)?)
        } else {
            None
        };
        let mut vocab = GgufVocab::from_json(
            &tok_path.display().to_string(),
            &tokenizer,
            tok_config.as_ref(),
            config,
        )?;
        if vocab.chat_template.is_none() {
            let jinja = folder.join("chat_template.jinja");
            if jinja.is_file() {
                let text = std::fs::read_to_string(&jinja).map_err(|e| HfError::io(&jinja, e))?;
                vocab.chat_template = Some(text);
            }
        }
        Ok(Some(vocab))
    }

    /// Builds the vocabulary from parsed `tokenizer.json` (named `file` in errors) and
    /// `tokenizer_config.json`. The token list is padded with `[PAD{id}]` (type unused) up to
    /// `config.vocab_size`, the embedding's row count.
    pub fn from_json(
        file: &str,
        tokenizer: &Value,
        tok_config: Option<&Value>,
        config: &HfConfig,
    ) -> Result<GgufVocab, HfError> {
        let err = |message: String| HfError::Tokenizer {
            file: file.to_string(),
            message,
        };
        let model = tokenizer
            .get("model")
            .ok_or_else(|| err("has no `model`".into()))?;
        let kind = model.get("type").and_then(Value::as_str).unwrap_or("BPE");
        if kind != "BPE" {
            return Err(err(format!(
                "model type `{kind}` is not supported (byte-level BPE only)"
            )));
        }
        if model.get("byte_fallback").and_then(Value::as_bool) == Some(true)
            || !mentions_byte_level(tokenizer)
        {
            return Err(err(
                "not a byte-level BPE vocabulary (SentencePiece-style BPE is not supported)".into(),
            ));
        }

        let n_vocab = config.vocab_size;
        let mut slots: Vec<Option<(String, i32)>> = vec![None; n_vocab];
        let mut place = |id: u64, text: &str, ty: i32| -> Result<(), HfError> {
            let slot = usize::try_from(id)
                .ok()
                .and_then(|i| slots.get_mut(i))
                .ok_or_else(|| {
                    err(format!(
                        "token `{text}` has id {id}, outside config.json's vocab_size {n_vocab}"
                    ))
                })?;
            *slot = Some((text.to_string(), ty));
            Ok(())
        };
        let vocab = model
            .get("vocab")
            .and_then(Value::as_object)
            .ok_or_else(|| err("`model.vocab` is missing or not an object".into()))?;
        for (text, id) in vocab {
            let id = id
                .as_u64()
                .ok_or_else(|| err(format!("token `{text}` has the id {id}")))?;
            place(id, text, TOKEN_NORMAL)?;
        }
        let mut added: HashMap<String, u32> = HashMap::new();
        for t in tokenizer
            .get("added_tokens")
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or(&[])
        {
            let (Some(id), Some(text)) = (
                t.get("id").and_then(Value::as_u64),
                t.get("content").and_then(Value::as_str),
            ) else {
                return Err(err(format!("added token {t} has no id or content")));
            };
            let special = t.get("special").and_then(Value::as_bool).unwrap_or(false);
            let ty = if special {
                TOKEN_CONTROL
            } else {
                TOKEN_USER_DEFINED
            };
            place(id, text, ty)?;
            added.insert(text.to_string(), id as u32);
        }
        let (tokens, token_types): (Vec<String>, Vec<i32>) = slots
            .into_iter()
            .enumerate()
            .map(|(i, s)| s.unwrap_or_else(|| (format!("[PAD{i}]"), TOKEN_UNUSED)))
            .unzip();
        let scores = token_types
            .iter()
            .map(|&t| if t == TOKEN_NORMAL { 0.0 } else { -1000.0 })
            .collect();

        let merges = model
            .get("merges")
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or(&[])
            .iter()
            .map(|m| match m {
                Value::String(s) => Ok(s.clone()),
                Value::Array(pair) => match pair.as_slice() {
                    [Value::String(a), Value::String(b)] => Ok(format!("{a} {b}")),
                    _ => Err(err(format!("merge {m} is not a pair of strings"))),
                },
                _ => Err(err(format!("merge {m} is not a string or a pair"))),
            })
            .collect::<Result<Vec<_>, _>>()?;

        // Special ids: tokenizer_config.json's tokens first (as gguf-py does), then config.json.
        let id_of = |text: &str| -> Option<u32> {
            added
                .get(text)
                .copied()
                .or_else(|| vocab.get(text).and_then(Value::as_u64).map(|i| i as u32))
        };
        let special = |key: &str| -> Option<String> {
            match tok_config?.get(key)? {
                Value::String(s) => Some(s.clone()),
                Value::Object(o) => o.get("content")?.as_str().map(str::to_string),
                _ => None,
            }
        };
        let bos_text = special("bos_token");
        let bos_token_id = bos_text.as_deref().and_then(id_of).or(config.bos_token_id);
        let eos_token_id = special("eos_token")
            .as_deref()
            .and_then(id_of)
            .or(config.eos_token_id);

        let pre = pre_tokenizer_name(tokenizer);
        // tokenizer_config.json's flag, else the post-processor's template, else llama.cpp's
        // default for the Llama 3 pre-tokenizer (BOS added).
        let add_bos_token = match tok_config.and_then(|c| c.get("add_bos_token")) {
            Some(Value::Bool(b)) => Some(*b),
            _ => template_starts_with(tokenizer, bos_text.as_deref(), bos_token_id)
                .or((pre == "llama-bpe").then_some(true)),
        };

        let chat_template = match tok_config.and_then(|c| c.get("chat_template")) {
            Some(Value::String(s)) => Some(s.clone()),
            // A list of named templates: the default one, else the first.
            Some(Value::Array(list)) => list
                .iter()
                .find(|t| t.get("name").and_then(Value::as_str) == Some("default"))
                .or_else(|| list.first())
                .and_then(|t| t.get("template"))
                .and_then(Value::as_str)
                .map(str::to_string),
            _ => None,
        };

        Ok(GgufVocab {
            model: "gpt2".into(),
            pre: pre.into(),
            tokens,
            scores,
            token_types,
            merges,
            bos_token_id,
            eos_token_id,
            add_bos_token,
            chat_template,
        })
    }
}

/// Whether the pre-tokenizer or decoder is byte-level.
fn mentions_byte_level(tokenizer: &Value) -> bool {
    fn walk(v: &Value) -> bool {
        match v {
            Value::Object(o) => {
                o.get("type").and_then(Value::as_str) == Some("ByteLevel") || o.values().any(walk)
            }
            Value::Array(a) => a.iter().any(walk),
            _ => false,
        }
    }
    ["pre_tokenizer", "decoder"]
        .iter()
        .any(|k| tokenizer.get(*k).is_some_and(walk))
}

/// The pre-tokenizers of a `Sequence` (or the one pre-tokenizer).
fn pre_tokenizers(tokenizer: &Value) -> Vec<&Value> {
    match tokenizer.get("pre_tokenizer") {
        None | Some(Value::Null) => Vec::new(),
        Some(p) => match p.get("pretokenizers").and_then(Value::as_array) {
            Some(list) => list.iter().collect(),
            None => vec![p],
        },
    }
}

/// llama.cpp's name for the split rules: `llama-bpe` for Llama 3's regex, `gpt-2` for plain
/// byte-level splitting with GPT-2's built-in regex, `default` for anything else.
pub(crate) fn pre_tokenizer_name(tokenizer: &Value) -> &'static str {
    let pres = pre_tokenizers(tokenizer);
    let regexes: Vec<&str> = pres
        .iter()
        .filter(|p| p.get("type").and_then(Value::as_str) == Some("Split"))
        .filter_map(|p| p.get("pattern")?.get("Regex")?.as_str())
        .collect();
    if regexes == [LLAMA3_SPLIT_REGEX] {
        return "llama-bpe";
    }
    if regexes.is_empty()
        && pres.len() == 1
        && pres[0].get("type").and_then(Value::as_str) == Some("ByteLevel")
        && pres[0].get("use_regex").and_then(Value::as_bool) != Some(false)
    {
        return "gpt-2";
    }
    "default"
}

/// Whether the post-processor's single-sequence template starts with the BOS token, when
/// there is a template.
fn template_starts_with(tokenizer: &Value, bos: Option<&str>, bos_id: Option<u32>) -> Option<bool> {
    let post = tokenizer.get("post_processor")?;
    let template = match post.get("processors").and_then(Value::as_array) {
        Some(list) => list
            .iter()
            .find(|p| p.get("type").and_then(Value::as_str) == Some("TemplateProcessing"))?,
        None if post.get("type").and_then(Value::as_str) == Some("TemplateProcessing") => post,
        None => return None,
    };
    let first = template.get("single")?.as_array()?.first();
    let Some(first) = first.and_then(|f| f.get("SpecialToken")) else {
        return Some(false);
    };
    let id = first.get("id").and_then(Value::as_str);
    let ids = template
        .get("special_tokens")
        .and_then(|s| s.get(id?))
        .and_then(|s| s.get("ids"))
        .and_then(Value::as_array)
        .and_then(|ids| ids.first())
        .and_then(Value::as_u64);
    Some((bos.is_some() && id == bos) || (bos_id.is_some() && ids.map(|i| i as u32) == bos_id))
}
