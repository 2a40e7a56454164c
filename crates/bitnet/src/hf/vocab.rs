//! GGUF tokenizer metadata (`tokenizer.ggml.*`) from a Hugging Face `tokenizer.json` and
//! `tokenizer_config.json`, as llama.cpp's converter writes it, for two kinds of vocabulary:
//! - byte-level BPE (Llama 3, BitNet b1.58 2B-4T, Falcon3): model `gpt2`, tokens in id order
//!   including the added tokens, merges as `"a b"` strings, token types, special ids, the
//!   pre-tokenizer name and the chat template;
//! - SentencePiece BPE (Llama 2, 1bitLLM's bitnet_b1_58): model `llama`, tokens, scores and
//!   token types, from `tokenizer.model` (SentencePiece's protobuf, read by the small decoder
//!   below) as llama.cpp's `_set_vocab_sentencepiece` does, else from a `tokenizer.json` whose
//!   BPE model has `byte_fallback`.

use std::collections::HashMap;
use std::path::Path;

use serde_json::Value;

use super::config::HfConfig;
use super::HfError;

/// llama.cpp token types (`llama_token_type`; SentencePiece's numbering).
pub(crate) const TOKEN_NORMAL: i32 = 1;
pub(crate) const TOKEN_UNKNOWN: i32 = 2;
pub(crate) const TOKEN_CONTROL: i32 = 3;
pub(crate) const TOKEN_USER_DEFINED: i32 = 4;
pub(crate) const TOKEN_UNUSED: i32 = 5;
pub(crate) const TOKEN_BYTE: i32 = 6;

/// The split regex of Llama 3's tokenizer.json (llama.cpp's `llama-bpe` pre-tokenizer).
pub(crate) const LLAMA3_SPLIT_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// A vocabulary as GGUF stores it.
#[derive(Clone, Debug, PartialEq)]
pub struct GgufVocab {
    /// `tokenizer.ggml.model`: `gpt2` (byte-level BPE) or `llama` (SentencePiece BPE).
    pub model: String,
    /// `tokenizer.ggml.pre`: `llama-bpe` for Llama 3's split rules, `gpt-2` for GPT-2's,
    /// `default` otherwise (and always for SentencePiece).
    pub pre: String,
    /// `tokenizer.ggml.tokens`: every token's string, by id.
    pub tokens: Vec<String>,
    /// `tokenizer.ggml.scores`: byte-level BPE: 0 for BPE tokens, -1000 for added tokens (as
    /// bitnet.cpp's converter writes them). SentencePiece: the pieces' scores, which order the
    /// merges.
    pub scores: Vec<f32>,
    /// `tokenizer.ggml.token_type`: 1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused,
    /// 6 byte.
    pub token_types: Vec<i32>,
    /// `tokenizer.ggml.merges`: the BPE merges, `a b` by rank (none for SentencePiece).
    pub merges: Vec<String>,
    /// `tokenizer.ggml.bos_token_id`.
    pub bos_token_id: Option<u32>,
    /// `tokenizer.ggml.eos_token_id`.
    pub eos_token_id: Option<u32>,
    /// `tokenizer.ggml.add_bos_token`.
    pub add_bos_token: Option<bool>,
    /// `tokenizer.ggml.add_eos_token`: tokenizer_config.json's flag, when it has one (as
    /// gguf-py's `SpecialVocab` copies it).
    pub add_eos_token: Option<bool>,
    /// `tokenizer.ggml.unknown_token_id` (SentencePiece).
    pub unk_token_id: Option<u32>,
    /// `tokenizer.ggml.add_space_prefix` (SentencePiece's dummy prefix; written when false,
    /// llama.cpp's default being true).
    pub add_space_prefix: Option<bool>,
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
    /// Reads `tokenizer.json` and/or `tokenizer.model` (and `tokenizer_config.json`,
    /// `chat_template.jinja` when present) from a folder; `None` when the folder has neither.
    /// A byte-level `tokenizer.json` makes a `gpt2` vocabulary; otherwise `tokenizer.model`,
    /// when present, makes the `llama` one (its scores are SentencePiece's own), else the
    /// SentencePiece-style `tokenizer.json`.
    pub(crate) fn from_folder(
        folder: &Path,
        config: &HfConfig,
    ) -> Result<Option<GgufVocab>, HfError> {
        let tok_path = folder.join("tokenizer.json");
        let model_path = folder.join("tokenizer.model");
        let tokenizer = if tok_path.is_file() {
            Some(read_json(&tok_path)?)
        } else {
            None
        };
        let cfg_path = folder.join("tokenizer_config.json");
        let tok_config = if cfg_path.is_file() {
            Some(read_json(&cfg_path)?)
        } else {
            None
        };
        let byte_level = tokenizer
            .as_ref()
            .is_some_and(|t| !is_sentencepiece_json(t));
        let mut vocab = match &tokenizer {
            _ if !byte_level && model_path.is_file() => {
                let bytes = std::fs::read(&model_path).map_err(|e| HfError::io(&model_path, e))?;
                GgufVocab::from_sentencepiece_model(
                    &model_path.display().to_string(),
                    &bytes,
                    tokenizer.as_ref(),
                    tok_config.as_ref(),
                    config,
                )?
            }
            Some(tokenizer) => GgufVocab::from_json(
                &tok_path.display().to_string(),
                tokenizer,
                tok_config.as_ref(),
                config,
            )?,
            None => return Ok(None),
        };
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
                "model type `{kind}` is not supported (byte-level or SentencePiece BPE only)"
            )));
        }
        if is_sentencepiece_json(tokenizer) {
            return GgufVocab::from_sentencepiece_json(file, tokenizer, model, tok_config, config);
        }
        if !mentions_byte_level(tokenizer) {
            return Err(err(
                "neither a byte-level BPE vocabulary (no ByteLevel pre-tokenizer or decoder) \
                 nor a SentencePiece one (no byte_fallback, ▁ normalizer or Metaspace)"
                    .into(),
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
        let special = |key: &str| config_token(tok_config, key);
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

        let chat_template = config_chat_template(tok_config);

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
            add_eos_token: config_flag(tok_config, "add_eos_token"),
            unk_token_id: None,
            add_space_prefix: None,
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

/// llama.cpp's name for the split rules: `llama-bpe` for Llama 3's regex, `qwen2` for Qwen2's,
/// `gpt-2` for plain byte-level splitting with GPT-2's built-in regex, `default` for anything
/// else.
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
    if regexes == [crate::tokenizer::QWEN2_PATTERN] {
        return "qwen2";
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

/// A token tokenizer_config.json names under `key` (`"<s>"` or `{"content": "<s>", ...}`).
fn config_token(tok_config: Option<&Value>, key: &str) -> Option<String> {
    match tok_config?.get(key)? {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => o.get("content")?.as_str().map(str::to_string),
        _ => None,
    }
}

/// tokenizer_config.json's `chat_template`: the string, or from a list of named templates the
/// default one, else the first.
fn config_chat_template(tok_config: Option<&Value>) -> Option<String> {
    match tok_config?.get("chat_template")? {
        Value::String(s) => Some(s.clone()),
        Value::Array(list) => list
            .iter()
            .find(|t| t.get("name").and_then(Value::as_str) == Some("default"))
            .or_else(|| list.first())
            .and_then(|t| t.get("template"))
            .and_then(Value::as_str)
            .map(str::to_string),
        _ => None,
    }
}

/// SentencePiece's whitespace symbol.
const METASPACE: &str = "\u{2581}";

/// Whether a tokenizer.json is SentencePiece-style BPE (Llama 2's): its BPE model has
/// `byte_fallback`, or, with nothing byte-level, its normalizer or pre-tokenizer writes spaces
/// as `▁`.
pub(crate) fn is_sentencepiece_json(tokenizer: &Value) -> bool {
    fn mentions_metaspace(v: &Value) -> bool {
        match v {
            Value::String(s) => s.contains(METASPACE),
            Value::Object(o) => {
                o.get("type").and_then(Value::as_str) == Some("Metaspace")
                    || o.values().any(mentions_metaspace)
            }
            Value::Array(a) => a.iter().any(mentions_metaspace),
            _ => false,
        }
    }
    let model = tokenizer.get("model");
    if model
        .and_then(|m| m.get("byte_fallback"))
        .and_then(Value::as_bool)
        == Some(true)
    {
        return true;
    }
    !mentions_byte_level(tokenizer)
        && ["normalizer", "pre_tokenizer"]
            .iter()
            .any(|k| tokenizer.get(*k).is_some_and(mentions_metaspace))
}

/// Whether a SentencePiece-style tokenizer.json puts `▁` in front of the text: a `Prepend("▁")`
/// normalizer (Llama 2, "legacy"), or a Metaspace pre-tokenizer that prepends.
fn json_adds_space_prefix(tokenizer: &Value) -> bool {
    fn normalizer_prepends(v: &Value) -> bool {
        match v.get("type").and_then(Value::as_str) {
            Some("Prepend") => v.get("prepend").and_then(Value::as_str) == Some(METASPACE),
            Some("Sequence") => v
                .get("normalizers")
                .and_then(Value::as_array)
                .is_some_and(|l| l.iter().any(normalizer_prepends)),
            _ => false,
        }
    }
    if tokenizer.get("normalizer").is_some_and(normalizer_prepends) {
        return true;
    }
    pre_tokenizers(tokenizer).iter().any(|p| {
        p.get("type").and_then(Value::as_str) == Some("Metaspace")
            && match p.get("prepend_scheme").and_then(Value::as_str) {
                Some(scheme) => scheme != "never",
                None => p.get("add_prefix_space").and_then(Value::as_bool) != Some(false),
            }
    })
}

/// A token slot: text, type, score.
type Slot = Option<(String, i32, f32)>;

impl GgufVocab {
    /// The `llama` vocabulary from a SentencePiece-style tokenizer.json (no tokenizer.model).
    /// Scores come from the merges: a token made by the merge of rank r scores -r, so that
    /// merging by score (llama.cpp) takes the same order as merging by rank (Hugging Face).
    /// (gguf-py's converter writes -1000 for every token here, which loses that order.)
    /// `model` is the file's `model` object, which [`GgufVocab::from_json`] has read.
    fn from_sentencepiece_json(
        file: &str,
        tokenizer: &Value,
        model: &Value,
        tok_config: Option<&Value>,
        config: &HfConfig,
    ) -> Result<GgufVocab, HfError> {
        let err = |message: String| HfError::Tokenizer {
            file: file.to_string(),
            message,
        };
        for key in ["continuing_subword_prefix", "end_of_word_suffix"] {
            if model
                .get(key)
                .and_then(Value::as_str)
                .is_some_and(|s| !s.is_empty())
            {
                return Err(err(format!(
                    "`model.{key}` is not supported (SentencePiece BPE has none)"
                )));
            }
        }
        let vocab = model
            .get("vocab")
            .and_then(Value::as_object)
            .ok_or_else(|| err("`model.vocab` is missing or not an object".into()))?;
        let mut rank_of: HashMap<String, usize> = HashMap::new();
        let merges = model
            .get("merges")
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or(&[]);
        for (rank, m) in merges.iter().enumerate() {
            let merged = match m {
                Value::String(s) => s.split_once(' ').map(|(a, b)| format!("{a}{b}")),
                Value::Array(pair) => match pair.as_slice() {
                    [Value::String(a), Value::String(b)] => Some(format!("{a}{b}")),
                    _ => None,
                },
                _ => None,
            }
            .ok_or_else(|| err(format!("merge {rank} ({m}) is not a pair of strings")))?;
            rank_of.entry(merged).or_insert(rank);
        }
        let unk_text = model.get("unk_token").and_then(Value::as_str);
        let mut slots: Vec<Slot> = vec![None; config.vocab_size];
        for (text, id) in vocab {
            let ty = if unk_text == Some(text.as_str()) {
                TOKEN_UNKNOWN
            } else if crate::tokenizer::is_byte_token(text) {
                TOKEN_BYTE
            } else {
                TOKEN_NORMAL
            };
            let score = rank_of.get(text).map_or(0.0, |&r| -(r as f32));
            place(&mut slots, id.as_u64(), text, ty, score).map_err(err)?;
        }
        for (id, text, special) in added_tokens(tokenizer).map_err(err)? {
            let ty = if unk_text == Some(text.as_str()) {
                TOKEN_UNKNOWN
            } else if special {
                TOKEN_CONTROL
            } else {
                TOKEN_USER_DEFINED
            };
            // An added token that is also a piece (<unk>, <s>, </s>) keeps the piece's score.
            let score = match usize::try_from(id).ok().and_then(|i| slots.get(i)) {
                Some(Some((t, _, score))) if *t == text => *score,
                _ => -1000.0,
            };
            place(&mut slots, Some(id), &text, ty, score).map_err(err)?;
        }
        let id_of = |text: &str| slot_id(&slots, text);
        let unk_token_id = unk_text.and_then(id_of);
        let bos_text = config_token(tok_config, "bos_token");
        let bos_token_id = bos_text.as_deref().and_then(id_of).or(config.bos_token_id);
        let eos_token_id = config_token(tok_config, "eos_token")
            .as_deref()
            .and_then(id_of)
            .or(config.eos_token_id);
        let add_bos_token = match tok_config.and_then(|c| c.get("add_bos_token")) {
            Some(Value::Bool(b)) => Some(*b),
            _ => template_starts_with(tokenizer, bos_text.as_deref(), bos_token_id),
        };
        Ok(finish_spm(
            slots,
            SpmSpecials {
                bos_token_id,
                eos_token_id,
                unk_token_id,
                add_bos_token,
                add_eos_token: config_flag(tok_config, "add_eos_token"),
            },
            json_adds_space_prefix(tokenizer),
            config_chat_template(tok_config),
        ))
    }

    /// The `llama` vocabulary from SentencePiece's `tokenizer.model`, as llama.cpp's
    /// `_set_vocab_sentencepiece` writes it: the pieces with their scores and types, then the
    /// added tokens beyond them (tokenizer.json's `added_tokens`, tokenizer_config.json's
    /// `added_tokens_decoder`), padded to config.json's `vocab_size`.
    fn from_sentencepiece_model(
        file: &str,
        bytes: &[u8],
        tokenizer: Option<&Value>,
        tok_config: Option<&Value>,
        config: &HfConfig,
    ) -> Result<GgufVocab, HfError> {
        let err = |message: String| HfError::Tokenizer {
            file: file.to_string(),
            message,
        };
        let sp = sentencepiece::ModelProto::parse(bytes).map_err(err)?;
        if sp.model_type != sentencepiece::BPE {
            let name = match sp.model_type {
                1 => "UNIGRAM".to_string(),
                3 => "WORD".to_string(),
                4 => "CHAR".to_string(),
                t => t.to_string(),
            };
            return Err(err(format!(
                "SentencePiece model type {name} is not supported (BPE only)"
            )));
        }
        if sp.treat_whitespace_as_suffix {
            return Err(err(
                "`treat_whitespace_as_suffix` is not supported (GGUF has no place for it)".into(),
            ));
        }
        if !(sp.normalizer_name.is_empty() || sp.normalizer_name == "identity") {
            log::warn!(
                "{file}: SentencePiece normalization {:?} is not applied (GGUF has no place \
                 for it; llama.cpp does not apply it either)",
                sp.normalizer_name
            );
        }
        if sp.pieces.len() > config.vocab_size {
            return Err(err(format!(
                "has {} pieces, more than config.json's vocab_size {}",
                sp.pieces.len(),
                config.vocab_size
            )));
        }
        let mut slots: Vec<Slot> = vec![None; config.vocab_size];
        for (slot, p) in slots.iter_mut().zip(&sp.pieces) {
            let ty = match p.kind {
                1..=6 => p.kind,
                _ => TOKEN_NORMAL,
            };
            *slot = Some((p.piece.clone(), ty, p.score));
        }
        let mut added = match tokenizer {
            Some(t) => added_tokens(t).map_err(err)?,
            None => Vec::new(),
        };
        if let Some(map) = tok_config
            .and_then(|c| c.get("added_tokens_decoder"))
            .and_then(Value::as_object)
        {
            for (id, t) in map {
                let (Ok(id), Some(text)) =
                    (id.parse::<u64>(), t.get("content").and_then(Value::as_str))
                else {
                    return Err(err(format!(
                        "tokenizer_config.json: added token {id} ({t}) has no id or content"
                    )));
                };
                let special = t.get("special").and_then(Value::as_bool).unwrap_or(false);
                added.push((id, text.to_string(), special));
            }
        }
        for (id, text, special) in added {
            // Pieces keep their own type and score; only ids past them are added.
            if id < sp.pieces.len() as u64 {
                continue;
            }
            let ty = if special {
                TOKEN_CONTROL
            } else {
                TOKEN_USER_DEFINED
            };
            place(&mut slots, Some(id), &text, ty, -1000.0).map_err(err)?;
        }
        let id_of = |text: &str| slot_id(&slots, text);
        let n_vocab = slots.len();
        let piece_id = |id: i64| u32::try_from(id).ok().filter(|&i| (i as usize) < n_vocab);
        let bos_text = config_token(tok_config, "bos_token");
        let bos_token_id = bos_text
            .as_deref()
            .and_then(id_of)
            .or(piece_id(sp.bos_id))
            .or(config.bos_token_id);
        let eos_token_id = config_token(tok_config, "eos_token")
            .as_deref()
            .and_then(id_of)
            .or(piece_id(sp.eos_id))
            .or(config.eos_token_id);
        let add_bos_token = match tok_config.and_then(|c| c.get("add_bos_token")) {
            Some(Value::Bool(b)) => Some(*b),
            _ => tokenizer.and_then(|t| template_starts_with(t, bos_text.as_deref(), bos_token_id)),
        };
        Ok(finish_spm(
            slots,
            SpmSpecials {
                bos_token_id,
                eos_token_id,
                unk_token_id: piece_id(sp.unk_id),
                add_bos_token,
                add_eos_token: config_flag(tok_config, "add_eos_token"),
            },
            sp.add_dummy_prefix,
            config_chat_template(tok_config),
        ))
    }
}

/// The id of the first slot holding `text`.
fn slot_id(slots: &[Slot], text: &str) -> Option<u32> {
    slots
        .iter()
        .position(|s| s.as_ref().is_some_and(|(t, _, _)| t == text))
        .map(|i| i as u32)
}

/// Puts a token in its slot; an id outside config.json's vocab_size is an error.
fn place(
    slots: &mut [Slot],
    id: Option<u64>,
    text: &str,
    ty: i32,
    score: f32,
) -> Result<(), String> {
    let n = slots.len();
    let id = id.ok_or_else(|| format!("token `{text}` has no integer id"))?;
    let slot = usize::try_from(id)
        .ok()
        .and_then(|i| slots.get_mut(i))
        .ok_or_else(|| {
            format!("token `{text}` has id {id}, outside config.json's vocab_size {n}")
        })?;
    *slot = Some((text.to_string(), ty, score));
    Ok(())
}

/// tokenizer.json's `added_tokens`: (id, content, special).
fn added_tokens(tokenizer: &Value) -> Result<Vec<(u64, String, bool)>, String> {
    tokenizer
        .get("added_tokens")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[])
        .iter()
        .map(|t| {
            match (
                t.get("id").and_then(Value::as_u64),
                t.get("content").and_then(Value::as_str),
            ) {
                (Some(id), Some(text)) => Ok((
                    id,
                    text.to_string(),
                    t.get("special").and_then(Value::as_bool).unwrap_or(false),
                )),
                _ => Err(format!("added token {t} has no id or content")),
            }
        })
        .collect()
}

/// A boolean of tokenizer_config.json, when it is one.
fn config_flag(tok_config: Option<&Value>, key: &str) -> Option<bool> {
    tok_config.and_then(|c| c.get(key)).and_then(Value::as_bool)
}

/// A SentencePiece vocabulary's special ids.
struct SpmSpecials {
    bos_token_id: Option<u32>,
    eos_token_id: Option<u32>,
    unk_token_id: Option<u32>,
    add_bos_token: Option<bool>,
    add_eos_token: Option<bool>,
}

/// The `llama` vocabulary from its slots: ids nothing names become `[PAD{id}]` (unused).
fn finish_spm(
    slots: Vec<Slot>,
    specials: SpmSpecials,
    add_space_prefix: bool,
    chat_template: Option<String>,
) -> GgufVocab {
    let mut tokens = Vec::with_capacity(slots.len());
    let mut token_types = Vec::with_capacity(slots.len());
    let mut scores = Vec::with_capacity(slots.len());
    for (i, s) in slots.into_iter().enumerate() {
        let (text, ty, score) = s.unwrap_or_else(|| (format!("[PAD{i}]"), TOKEN_UNUSED, -1000.0));
        tokens.push(text);
        token_types.push(ty);
        scores.push(score);
    }
    GgufVocab {
        model: "llama".into(),
        pre: "default".into(),
        tokens,
        scores,
        token_types,
        merges: Vec::new(),
        bos_token_id: specials.bos_token_id,
        eos_token_id: specials.eos_token_id,
        add_bos_token: specials.add_bos_token,
        add_eos_token: specials.add_eos_token,
        unk_token_id: specials.unk_token_id,
        add_space_prefix: (!add_space_prefix).then_some(false),
        chat_template,
    }
}

/// SentencePiece's `tokenizer.model`: a protobuf `ModelProto`, of which we need the pieces
/// and a few settings. A minimal reader of the protobuf wire format (varints, fixed 32/64-bit,
/// length-delimited fields); unknown fields are skipped, as protobuf does.
mod sentencepiece {
    /// `TrainerSpec.ModelType.BPE`.
    pub(super) const BPE: u64 = 2;

    pub(super) struct Piece {
        pub(super) piece: String,
        pub(super) score: f32,
        /// `SentencePiece.Type`: 1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused,
        /// 6 byte.
        pub(super) kind: i32,
    }

    /// The parts of `ModelProto` the GGUF vocabulary needs, with protobuf's defaults.
    pub(super) struct ModelProto {
        pub(super) pieces: Vec<Piece>,
        pub(super) model_type: u64,
        pub(super) treat_whitespace_as_suffix: bool,
        pub(super) unk_id: i64,
        pub(super) bos_id: i64,
        pub(super) eos_id: i64,
        pub(super) normalizer_name: String,
        pub(super) add_dummy_prefix: bool,
    }

    enum Field<'a> {
        Varint(u64),
        Fixed64,
        Bytes(&'a [u8]),
        Fixed32(u32),
    }

    /// Fields of one message, in order.
    struct Reader<'a> {
        buf: &'a [u8],
        pos: usize,
        /// What the message is, for errors.
        what: &'static str,
    }

    impl<'a> Reader<'a> {
        fn new(buf: &'a [u8], what: &'static str) -> Reader<'a> {
            Reader { buf, pos: 0, what }
        }

        fn fail(&self, problem: &str) -> String {
            format!(
                "not a SentencePiece model: {} at byte {}: {problem}",
                self.what, self.pos
            )
        }

        fn varint(&mut self) -> Result<u64, String> {
            let mut value = 0u64;
            for shift in (0..64).step_by(7) {
                let b = *self
                    .buf
                    .get(self.pos)
                    .ok_or_else(|| self.fail("the data ends inside a number"))?;
                self.pos += 1;
                value |= u64::from(b & 0x7f) << shift;
                if b & 0x80 == 0 {
                    return Ok(value);
                }
            }
            Err(self.fail("a number longer than 10 bytes"))
        }

        fn take(&mut self, n: u64) -> Result<&'a [u8], String> {
            let end = usize::try_from(n)
                .ok()
                .and_then(|n| self.pos.checked_add(n))
                .filter(|&end| end <= self.buf.len())
                .ok_or_else(|| self.fail(&format!("a field of {n} bytes runs past the end")))?;
            let out = &self.buf[self.pos..end];
            self.pos = end;
            Ok(out)
        }

        fn next(&mut self) -> Result<Option<(u64, Field<'a>)>, String> {
            if self.pos == self.buf.len() {
                return Ok(None);
            }
            let key = self.varint()?;
            let field = match key & 7 {
                0 => Field::Varint(self.varint()?),
                1 => {
                    self.take(8)?;
                    Field::Fixed64
                }
                2 => {
                    let n = self.varint()?;
                    Field::Bytes(self.take(n)?)
                }
                5 => {
                    let b = self.take(4)?;
                    Field::Fixed32(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                }
                w => return Err(self.fail(&format!("wire type {w} is not used by ModelProto"))),
            };
            Ok(Some((key >> 3, field)))
        }

        fn string(&self, bytes: &[u8], field: &str) -> Result<String, String> {
            String::from_utf8(bytes.to_vec())
                .map_err(|_| self.fail(&format!("{field} is not UTF-8")))
        }
    }

    impl ModelProto {
        pub(super) fn parse(buf: &[u8]) -> Result<ModelProto, String> {
            let mut m = ModelProto {
                pieces: Vec::new(),
                model_type: 1,
                treat_whitespace_as_suffix: false,
                unk_id: 0,
                bos_id: 1,
                eos_id: 2,
                normalizer_name: String::new(),
                add_dummy_prefix: true,
            };
            let mut r = Reader::new(buf, "ModelProto");
            while let Some((number, field)) = r.next()? {
                match (number, field) {
                    (1, Field::Bytes(b)) => m.pieces.push(parse_piece(b)?),
                    (2, Field::Bytes(b)) => parse_trainer(b, &mut m)?,
                    (3, Field::Bytes(b)) => parse_normalizer(b, &mut m)?,
                    (1..=3, _) => return Err(r.fail(&format!("field {number} is not a message"))),
                    _ => {}
                }
            }
            if m.pieces.is_empty() {
                return Err(r.fail("no pieces"));
            }
            Ok(m)
        }
    }

    fn parse_piece(buf: &[u8]) -> Result<Piece, String> {
        let mut p = Piece {
            piece: String::new(),
            score: 0.0,
            kind: 1,
        };
        let mut r = Reader::new(buf, "a SentencePiece");
        while let Some((number, field)) = r.next()? {
            match (number, field) {
                (1, Field::Bytes(b)) => p.piece = r.string(b, "the piece")?,
                (2, Field::Fixed32(bits)) => p.score = f32::from_bits(bits),
                (3, Field::Varint(v)) => p.kind = i32::try_from(v).unwrap_or(0),
                (1..=3, _) => return Err(r.fail(&format!("field {number} has the wrong type"))),
                _ => {}
            }
        }
        Ok(p)
    }

    fn parse_trainer(buf: &[u8], m: &mut ModelProto) -> Result<(), String> {
        let mut r = Reader::new(buf, "TrainerSpec");
        while let Some((number, field)) = r.next()? {
            if let Field::Varint(v) = field {
                match number {
                    3 => m.model_type = v,
                    24 => m.treat_whitespace_as_suffix = v != 0,
                    // int32 fields: negative values are sign-extended to 64 bits.
                    40 => m.unk_id = v as i64,
                    41 => m.bos_id = v as i64,
                    42 => m.eos_id = v as i64,
                    _ => {}
                }
            }
        }
        Ok(())
    }

    fn parse_normalizer(buf: &[u8], m: &mut ModelProto) -> Result<(), String> {
        let mut r = Reader::new(buf, "NormalizerSpec");
        while let Some((number, field)) = r.next()? {
            match (number, field) {
                (1, Field::Bytes(b)) => m.normalizer_name = r.string(b, "the name")?,
                (3, Field::Varint(v)) => m.add_dummy_prefix = v != 0,
                _ => {}
            }
        }
        Ok(())
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        /// Arbitrary bytes never panic; every truncation of a valid model is an error.
        #[test]
        fn bad_bytes_are_errors_not_panics() {
            let mut state = 0x2545F4914F6CDD1Du64;
            for len in 0..300 {
                let bytes: Vec<u8> = (0..len)
                    .map(|_| {
                        state ^= state << 13;
                        state ^= state >> 7;
                        state ^= state << 17;
                        state as u8
                    })
                    .collect();
                let _ = ModelProto::parse(&bytes);
            }
            // One piece "a", score -1.5, type 1.
            let piece = [0x0a, 0x01, b'a', 0x15, 0x00, 0x00, 0xc0, 0xbf, 0x18, 0x01];
            let mut model = vec![0x0a, piece.len() as u8];
            model.extend_from_slice(&piece);
            let m = ModelProto::parse(&model).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(m.pieces.len(), 1);
            assert_eq!(m.pieces[0].piece, "a");
            assert_eq!(m.pieces[0].score, -1.5);
            assert_eq!((m.model_type, m.add_dummy_prefix), (1, true));
            for cut in 1..model.len() {
                let e = ModelProto::parse(&model[..cut]).err();
                assert!(
                    e.is_some_and(|e| e.contains("not a SentencePiece model")),
                    "{cut}"
                );
            }
            assert!(ModelProto::parse(b"{\"version\": 1}").is_err());
        }
    }
}
