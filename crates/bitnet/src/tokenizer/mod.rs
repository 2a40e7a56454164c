//! The tokenizers of the BitNet family and chat templates, byte-exact with Hugging Face and
//! llama.cpp.
//!
//! A [`Tokenizer`] loads from GGUF metadata (`tokenizer.ggml.*`) or from a Hugging Face
//! `tokenizer.json` (optionally with its `tokenizer_config.json`). Two kinds of vocabulary:
//! - byte-level BPE (GGUF model `gpt2`: Llama 3, BitNet b1.58 2B-4T, Falcon3, Falcon-E), with
//!   Llama 3's split rules (`tokenizer.ggml.pre` `llama-bpe`, `falcon3`, `falcon_e`, ...) or
//!   Qwen2's (`qwen2`: the same with single digits);
//! - SentencePiece BPE (GGUF model `llama`: Llama 2, 1bitLLM's bitnet_b1_58), module `spm`.
//!
//! Encoding is three steps, each its own module:
//! 1. special tokens: text such as `<|eot_id|>` becomes its token only when the caller asks
//!    ([`EncodeOptions::parse_special`]); user-defined tokens always do;
//! 2. `pretokenize`: Llama 3's split regex, implemented as a hand-written matcher (SentencePiece
//!    has no such step);
//! 3. `bpe`: byte-level BPE over the words' bytes, merges by rank, with a word cache; or `spm`:
//!    merges by score over the characters, with byte fallback.
//!
//! Decoding maps ids back to bytes; [`StreamDecoder`] does it token by token without ever
//! emitting half a character. [`ChatTemplate`] renders conversations.

mod bpe;
mod chat;
mod chat_names;
mod decode;
mod pretokenize;
mod spm;

use std::path::Path;

use rustc_hash::FxHashMap;
use serde_json::Value as Json;

use crate::formats::gguf::{GgufError, GgufFile, Metadata, MetadataError};

pub(crate) use bpe::byte_to_char;
pub use bpe::char_to_byte;
pub use chat::{ChatMessage, ChatTemplate};
pub use chat_names::{chat_template_from_arg, chat_template_names, named_chat_template};
pub(crate) use decode::PendingUtf8;
pub use decode::StreamDecoder;
pub use pretokenize::Llama3Split;
pub(crate) use pretokenize::{LLAMA3_PATTERN, QWEN2_PATTERN};

/// Whether a vocabulary string is a SentencePiece byte token (`<0x0A>`).
pub(crate) fn is_byte_token(text: &str) -> bool {
    spm::byte_token_value(text).is_some()
}

/// What went wrong loading or using a tokenizer; each names the file and key involved.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    /// A file could not be read.
    #[error("{path}: cannot read: {source}")]
    Io {
        /// The file.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The GGUF file could not be read.
    #[error(transparent)]
    Gguf(#[from] GgufError),
    /// A tokenizer key is missing or has the wrong type.
    #[error("{origin}: {source}")]
    Metadata {
        /// The file.
        origin: String,
        /// The lookup's error.
        source: MetadataError,
    },
    /// `tokenizer.json` or `tokenizer_config.json` is not JSON.
    #[error("{path}: not valid JSON: {source}")]
    Json {
        /// The file.
        path: String,
        /// The parser's error.
        source: serde_json::Error,
    },
    /// A key is present but its value is wrong.
    #[error("{origin}: `{key}`: {problem}")]
    Invalid {
        /// The file.
        origin: String,
        /// The key.
        key: String,
        /// What is wrong with its value.
        problem: String,
    },
    /// A tokenizer model other than byte-level or SentencePiece BPE.
    #[error("{origin}: tokenizer model {found:?} is not supported (byte-level BPE: GGUF \"gpt2\"; SentencePiece BPE: GGUF \"llama\"; tokenizer.json \"BPE\")")]
    UnsupportedModel {
        /// The file.
        origin: String,
        /// The model it names.
        found: String,
    },
    /// Split rules other than Llama 3's.
    #[error(
        "{origin}: `{key}` = {found} is not supported (known: the Llama 3 split rules, named llama-bpe, llama3, llama-v3, falcon3, falcon_e, falcon-e; Qwen2's, named qwen2, deepseek-r1-qwen)"
    )]
    UnsupportedPreTokenizer {
        /// The file.
        origin: String,
        /// The key naming them.
        key: String,
        /// The rules it names.
        found: String,
    },
    /// A GGUF written without a vocabulary.
    #[error("{origin}: has no tokenizer (`tokenizer.ggml.model` is missing or `none`); models written without a vocabulary can only be benchmarked")]
    NoTokenizer {
        /// The file.
        origin: String,
    },
    /// No `tokenizer.ggml.pre`, and a vocabulary that is not Llama 3's.
    #[error("{origin}: `tokenizer.ggml.pre` is missing and the vocabulary is not Llama 3's, so the split rules are unknown")]
    MissingPreTokenizer {
        /// The file.
        origin: String,
    },
    /// A token id outside the vocabulary.
    #[error("token id {id} is outside the vocabulary ({vocab_size} tokens)")]
    UnknownId {
        /// The id.
        id: u32,
        /// The vocabulary's size.
        vocab_size: usize,
    },
    /// The chat template does not compile, or raised an exception while rendering.
    #[error("chat template: {message}")]
    ChatTemplate {
        /// minijinja's message (or the template's own).
        message: String,
    },
    /// A `--chat-template` value that is neither a built-in format name nor a Jinja template.
    #[error(
        "chat template `{name}`: not a built-in format name ({known}) and not a Jinja \
         template (no `{{%` or `{{{{` in it)"
    )]
    UnknownChatTemplate {
        /// The value given.
        name: String,
        /// The built-in names, comma-separated.
        known: String,
    },
}

/// The kind of a vocabulary entry (GGUF `tokenizer.ggml.token_type` numbering).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenKind {
    /// An ordinary BPE token (type 1); its text is in the byte-level alphabet.
    Normal,
    /// Type 2.
    Unknown,
    /// A special token such as `<|eot_id|>` (type 3; Hugging Face `special: true`).
    Control,
    /// An added token that is always matched in text (type 4; Hugging Face `special: false`).
    UserDefined,
    /// Type 5, or an id no entry of a tokenizer.json names.
    Unused,
    /// Type 6.
    Byte,
}

impl TokenKind {
    fn from_gguf(t: i64) -> Option<TokenKind> {
        Some(match t {
            1 => TokenKind::Normal,
            2 => TokenKind::Unknown,
            3 => TokenKind::Control,
            4 => TokenKind::UserDefined,
            5 => TokenKind::Unused,
            6 => TokenKind::Byte,
            _ => return None,
        })
    }

    /// Whether the token's text is in the byte-level alphabet (else it is plain text).
    fn is_byte_level(self) -> bool {
        matches!(self, TokenKind::Normal | TokenKind::Byte)
    }
}

/// Where the split rules came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PreTokenizerSource {
    /// `tokenizer.ggml.pre` named them (the value).
    GgufKey(String),
    /// `tokenizer.ggml.pre` is absent (as in the official 2B-4T file) and the vocabulary is
    /// Llama 3's, so the Llama 3 rules apply. bitnet.cpp falls back to generic rules here.
    InferredFromLlama3Vocab,
    /// tokenizer.json's `pre_tokenizer` is the Llama 3 split.
    TokenizerJson,
    /// A SentencePiece vocabulary (GGUF model `llama`): no split rules, the text is one word.
    SentencePiece,
}

/// How to encode.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EncodeOptions {
    /// Start with the BOS token (if the vocabulary has one). [`Tokenizer::add_bos_token`] is
    /// what the file asks for.
    pub add_bos: bool,
    /// Turn special-token text (`<|eot_id|>`) typed in the input into the special token;
    /// when false it is tokenized as ordinary text.
    pub parse_special: bool,
}

/// A byte-level BPE tokenizer with Llama 3's split rules.
pub struct Tokenizer {
    origin: String,
    /// Vocabulary strings as the file writes them ("" for ids nothing names).
    tokens: Vec<String>,
    kinds: Vec<TokenKind>,
    /// The bytes of token `i` are `bytes[offsets[i]..offsets[i + 1]]`.
    bytes: Vec<u8>,
    offsets: Vec<usize>,
    engine: Engine,
    specials: Specials,
    bos: Option<u32>,
    eos: Option<u32>,
    add_bos: bool,
    /// `tokenizer.ggml.add_eos_token`: embedding models that pool the EOS state end every
    /// text with it (Qwen3's embedding models).
    add_eos: bool,
    end_of_generation: Vec<u32>,
    pre_source: PreTokenizerSource,
    chat_template: Option<String>,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("origin", &self.origin)
            .field("vocab_size", &self.tokens.len())
            .field("bos", &self.bos)
            .field("eos", &self.eos)
            .field("add_bos", &self.add_bos)
            .field("end_of_generation", &self.end_of_generation)
            .field("pre_source", &self.pre_source)
            .finish()
    }
}

/// Whether a `gpt2` vocabulary is really SentencePiece's: every byte-fallback piece
/// `<0x00>`..`<0xFF>` and pieces that mark spaces with `▁`.
fn is_sentencepiece_vocab(tokens: &[String]) -> bool {
    let bytes = tokens.iter().filter(|t| is_byte_token(t)).count();
    bytes >= 256 && tokens.iter().any(|t| t.contains(spm::SPACE))
}

/// `tokenizer.ggml.pre` values that mean the Llama 3 rules (llama.cpp's names). Falcon3's
/// and Falcon-E's converters name their own vocabularies, whose split is Llama 3's (llama.cpp
/// `llama-vocab.cpp` maps `falcon3` to `LLAMA_VOCAB_PRE_TYPE_LLAMA3`; bitnet.cpp's fork and
/// ik_llama.cpp do the same for `falcon_e`).
const LLAMA3_PRE_NAMES: [&str; 6] = [
    "llama-bpe",
    "llama3",
    "llama-v3",
    "falcon3",
    "falcon_e",
    "falcon-e",
];

/// `tokenizer.ggml.pre` values that mean Qwen2's rules (llama.cpp's names).
const QWEN2_PRE_NAMES: [&str; 2] = ["qwen2", "deepseek-r1-qwen"];

/// The split before byte-level BPE.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Split {
    /// Llama 3's regex.
    Llama3,
    /// Qwen2's: Llama 3's with one digit per piece.
    Qwen2,
}

/// How words become ids.
enum Engine {
    /// Byte-level BPE after a regex split.
    Bpe(bpe::Bpe, Split),
    /// SentencePiece BPE over whole segments.
    Spm {
        spm: spm::Spm,
        /// `▁` before a segment that starts the text or follows a special token
        /// (`tokenizer.ggml.add_space_prefix`, SentencePiece's `add_dummy_prefix`).
        add_space_prefix: bool,
    },
}

/// Everything a tokenizer is built from, whichever file it came from.
struct Parts {
    origin: String,
    tokens: Vec<String>,
    kinds: Vec<TokenKind>,
    ignore_merges: bool,
    bos: Option<u32>,
    eos: Option<u32>,
    add_bos: bool,
    extra_end_of_generation: Vec<u32>,
    pre_source: PreTokenizerSource,
    chat_template: Option<String>,
    split: Split,
}

impl Parts {
    /// The tokenizer these parts make with `engine` (BPE or SentencePiece) over the tokens'
    /// bytes (`bytes[offsets[i]..offsets[i + 1]]` for token `i`).
    fn into_tokenizer(self, bytes: Vec<u8>, offsets: Vec<usize>, engine: Engine) -> Tokenizer {
        let specials = Specials::new(&self.tokens, &self.kinds);
        let end_of_generation = end_of_generation(
            &self.tokens,
            &self.kinds,
            self.eos,
            &self.extra_end_of_generation,
        );
        Tokenizer {
            origin: self.origin,
            tokens: self.tokens,
            kinds: self.kinds,
            bytes,
            offsets,
            engine,
            specials,
            bos: self.bos,
            eos: self.eos,
            add_bos: self.add_bos,
            add_eos: false,
            end_of_generation,
            pre_source: self.pre_source,
            chat_template: self.chat_template,
        }
    }
}

impl Tokenizer {
    /// Loads from a GGUF file, a tokenizer.json, or a Hugging Face model folder (by looking:
    /// a folder, a file starting with `GGUF`, else JSON).
    pub fn load(path: impl AsRef<Path>) -> Result<Tokenizer, TokenizerError> {
        let path = path.as_ref();
        if path.is_dir() {
            return Tokenizer::from_hf_dir(path);
        }
        let mut magic = [0u8; 4];
        let is_gguf = std::fs::File::open(path)
            .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut magic))
            .map(|()| &magic == crate::formats::gguf::GGUF_MAGIC)
            .unwrap_or(false);
        if is_gguf {
            Tokenizer::from_gguf(&GgufFile::open(path)?)
        } else {
            let mut tok = Tokenizer::from_tokenizer_json(path)?;
            if let Some(config) = path.parent().map(|d| d.join("tokenizer_config.json")) {
                if config.is_file() {
                    tok.apply_tokenizer_config(&config)?;
                }
            }
            Ok(tok)
        }
    }

    /// Loads from an open GGUF file's metadata.
    pub fn from_gguf(file: &GgufFile) -> Result<Tokenizer, TokenizerError> {
        Tokenizer::from_metadata(file.metadata(), file.source())
    }

    /// Loads from GGUF metadata: `tokenizer.ggml.{model, tokens, token_type, merges, pre,
    /// bos_token_id, eos_token_id, add_bos_token}` and `tokenizer.chat_template`.
    /// `origin` names the source in errors.
    pub fn from_metadata(md: &Metadata, origin: &str) -> Result<Tokenizer, TokenizerError> {
        let meta = |source: MetadataError| TokenizerError::Metadata {
            origin: origin.to_string(),
            source,
        };
        let invalid = |key: String, problem: String| TokenizerError::Invalid {
            origin: origin.to_string(),
            key,
            problem,
        };
        if md.get("tokenizer.ggml.model").is_none() {
            return Err(TokenizerError::NoTokenizer {
                origin: origin.to_string(),
            });
        }
        let model = md.get_str("tokenizer.ggml.model").map_err(meta)?;
        // llama.cpp's names for a file that has no vocabulary (LLAMA_VOCAB_TYPE_NONE).
        if model == "none" || model == "no_vocab" {
            return Err(TokenizerError::NoTokenizer {
                origin: origin.to_string(),
            });
        }
        if model != "gpt2" && model != "llama" {
            return Err(TokenizerError::UnsupportedModel {
                origin: origin.to_string(),
                found: model.to_string(),
            });
        }
        const TOKENS: &str = "tokenizer.ggml.tokens";
        let tokens: Vec<String> = md
            .get_array(TOKENS)
            .map_err(meta)?
            .iter()
            .enumerate()
            .map(|(i, v)| {
                v.as_str().map(str::to_string).ok_or_else(|| {
                    invalid(
                        format!("{TOKENS}[{i}]"),
                        format!("is {}, expected a string", v.value_type()),
                    )
                })
            })
            .collect::<Result<_, _>>()?;
        const TYPES: &str = "tokenizer.ggml.token_type";
        let kinds: Vec<TokenKind> = match md
            .contains(TYPES)
            .then(|| md.get_array(TYPES))
            .transpose()
            .map_err(meta)?
        {
            None => vec![TokenKind::Normal; tokens.len()],
            Some(types) => {
                if types.len() != tokens.len() {
                    return Err(invalid(
                        TYPES.into(),
                        format!("has {} entries for {} tokens", types.len(), tokens.len()),
                    ));
                }
                types
                    .iter()
                    .enumerate()
                    .map(|(i, v)| {
                        v.as_i64().and_then(TokenKind::from_gguf).ok_or_else(|| {
                            invalid(
                                format!("{TYPES}[{i}]"),
                                format!("{} is not a token type (1-6)", v.summary(0)),
                            )
                        })
                    })
                    .collect::<Result<_, _>>()?
            }
        };
        let id_key = |key: &str| -> Result<Option<u32>, TokenizerError> {
            match md.opt(key, Metadata::get_u64).map_err(meta)? {
                None => Ok(None),
                Some(id) if id < tokens.len() as u64 => Ok(Some(id as u32)),
                Some(id) => Err(invalid(
                    key.to_string(),
                    format!("{id} is outside the vocabulary ({} tokens)", tokens.len()),
                )),
            }
        };
        let bos = id_key("tokenizer.ggml.bos_token_id")?;
        let eos = id_key("tokenizer.ggml.eos_token_id")?;
        let mut extra_end_of_generation = Vec::new();
        for key in ["tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id"] {
            extra_end_of_generation.extend(id_key(key)?);
        }
        let add_bos_key = md
            .opt("tokenizer.ggml.add_bos_token", Metadata::get_bool)
            .map_err(meta)?;
        let add_eos = md
            .opt("tokenizer.ggml.add_eos_token", Metadata::get_bool)
            .map_err(meta)?
            .unwrap_or(false);
        let with_eos = |mut t: Tokenizer| {
            t.add_eos = add_eos && t.eos.is_some();
            t
        };
        let chat_template = md
            .contains("tokenizer.chat_template")
            .then(|| md.get_str("tokenizer.chat_template"))
            .transpose()
            .map_err(meta)?
            .map(str::to_string);
        if model == "llama" {
            // llama.cpp's defaults for SentencePiece vocabularies: <unk> 0, <s> 1, </s> 2.
            let n_tokens = tokens.len();
            let default_id = |id: u32| ((id as usize) < n_tokens).then_some(id);
            let unk = id_key("tokenizer.ggml.unknown_token_id")?.or(default_id(0));
            const SCORES: &str = "tokenizer.ggml.scores";
            let scores: Vec<f32> = match md
                .contains(SCORES)
                .then(|| md.get_array(SCORES))
                .transpose()
                .map_err(meta)?
            {
                None => vec![0.0; tokens.len()],
                Some(list) => {
                    if list.len() < tokens.len() {
                        return Err(invalid(
                            SCORES.into(),
                            format!("has {} entries for {} tokens", list.len(), tokens.len()),
                        ));
                    }
                    list.iter()
                        .enumerate()
                        .map(|(i, v)| {
                            v.as_f64().map(|x| x as f32).ok_or_else(|| {
                                invalid(
                                    format!("{SCORES}[{i}]"),
                                    format!("{} is not a number", v.summary(0)),
                                )
                            })
                        })
                        .collect::<Result<_, _>>()?
                }
            };
            let add_space_prefix = md
                .opt("tokenizer.ggml.add_space_prefix", Metadata::get_bool)
                .map_err(meta)?
                .unwrap_or(true);
            let parts = Parts {
                origin: origin.to_string(),
                tokens,
                kinds,
                ignore_merges: false,
                bos: bos.or(default_id(1)),
                eos: eos.or(default_id(2)),
                // llama.cpp's default for SentencePiece when the key is absent.
                add_bos: add_bos_key.unwrap_or(true),
                extra_end_of_generation,
                pre_source: PreTokenizerSource::SentencePiece,
                chat_template,
                split: Split::Llama3,
            };
            return Tokenizer::build_spm(parts, scores, unk, add_space_prefix).map(with_eos);
        }
        const MERGES: &str = "tokenizer.ggml.merges";
        let merges: Vec<(usize, &str, &str)> = md
            .get_array(MERGES)
            .map_err(meta)?
            .iter()
            .enumerate()
            .map(|(i, v)| {
                v.as_str()
                    .and_then(split_merge)
                    .map(|(a, b)| (i, a, b))
                    .ok_or_else(|| {
                        invalid(
                            format!("{MERGES}[{i}]"),
                            format!("{} is not a merge \"left right\"", v.summary(0)),
                        )
                    })
            })
            .collect::<Result<_, _>>()?;
        let pre_name = md
            .contains("tokenizer.ggml.pre")
            .then(|| md.get_str("tokenizer.ggml.pre"))
            .transpose()
            .map_err(meta)?;
        // bitnet.cpp's embedding converter writes Gemma's SentencePiece-style BPE (pieces with
        // `▁`, byte-fallback pieces `<0x00>`..`<0xFF>`, merges) as `gpt2` with pre `default`:
        // byte-level BPE would not find a single one of those pieces. It is run as what it is,
        // SentencePiece BPE, the merges' order giving the pieces' priority (as transformers'
        // BPE applies them), no dummy prefix (Gemma has none) unless the file asks.
        if matches!(pre_name, None | Some("default")) && is_sentencepiece_vocab(&tokens) {
            let mut kinds = kinds;
            for (kind, t) in kinds.iter_mut().zip(&tokens) {
                if *kind == TokenKind::Normal && is_byte_token(t) {
                    *kind = TokenKind::Byte;
                }
            }
            let mut scores = vec![0f32; tokens.len()];
            let index: rustc_hash::FxHashMap<&str, usize> = tokens
                .iter()
                .enumerate()
                .map(|(i, t)| (t.as_str(), i))
                .collect();
            let mut seen = vec![false; tokens.len()];
            for &(rank, a, b) in &merges {
                if let Some(&id) = index.get(format!("{a}{b}").as_str()) {
                    if !seen[id] {
                        seen[id] = true;
                        scores[id] = -(rank as f32);
                    }
                }
            }
            let unk = id_key("tokenizer.ggml.unknown_token_id")?
                .or_else(|| tokens.iter().position(|t| t == "<unk>").map(|i| i as u32));
            let add_space_prefix = md
                .opt("tokenizer.ggml.add_space_prefix", Metadata::get_bool)
                .map_err(meta)?
                .unwrap_or(false);
            let parts = Parts {
                origin: origin.to_string(),
                tokens,
                kinds,
                ignore_merges: false,
                bos,
                eos,
                add_bos: add_bos_key.unwrap_or(true),
                extra_end_of_generation,
                pre_source: PreTokenizerSource::SentencePiece,
                chat_template,
                split: Split::Llama3,
            };
            return Tokenizer::build_spm(parts, scores, unk, add_space_prefix).map(with_eos);
        }
        let mut split = Split::Llama3;
        let pre_source = match md
            .contains("tokenizer.ggml.pre")
            .then(|| md.get_str("tokenizer.ggml.pre"))
            .transpose()
            .map_err(meta)?
        {
            Some(pre) if LLAMA3_PRE_NAMES.contains(&pre) => PreTokenizerSource::GgufKey(pre.into()),
            Some(pre) if QWEN2_PRE_NAMES.contains(&pre) => {
                split = Split::Qwen2;
                PreTokenizerSource::GgufKey(pre.into())
            }
            Some(pre) => {
                return Err(TokenizerError::UnsupportedPreTokenizer {
                    origin: origin.to_string(),
                    key: "tokenizer.ggml.pre".into(),
                    found: format!("{pre:?}"),
                })
            }
            None if is_llama3_vocab(&tokens) => {
                log::warn!(
                    "{origin}: tokenizer.ggml.pre is missing; the vocabulary is Llama 3's, so \
                     using the Llama 3 split rules (llama-bpe)"
                );
                PreTokenizerSource::InferredFromLlama3Vocab
            }
            None => {
                return Err(TokenizerError::MissingPreTokenizer {
                    origin: origin.to_string(),
                })
            }
        };
        // llama.cpp: the Llama 3 rules ignore merges and add BOS by default, Qwen2's do neither.
        let qwen2 = split == Split::Qwen2;
        let add_bos = add_bos_key.unwrap_or(!qwen2);
        let parts = Parts {
            origin: origin.to_string(),
            tokens,
            kinds,
            ignore_merges: !qwen2,
            bos,
            eos,
            add_bos,
            extra_end_of_generation,
            pre_source,
            chat_template,
            split,
        };
        Tokenizer::build(parts, merges.into_iter(), MERGES).map(with_eos)
    }

    /// Loads a Hugging Face `tokenizer.json` (BPE model, Llama 3 split, byte-level).
    /// BOS comes from its post-processor; [`Tokenizer::from_hf_dir`] also reads
    /// `tokenizer_config.json` (chat template, bos/eos tokens).
    pub fn from_tokenizer_json(path: impl AsRef<Path>) -> Result<Tokenizer, TokenizerError> {
        let path = path.as_ref();
        let (origin, json) = read_json(path)?;
        Tokenizer::from_tokenizer_json_value(&json, &origin)
    }

    /// Loads a Hugging Face model folder: `tokenizer.json`, and `tokenizer_config.json` when
    /// present.
    pub fn from_hf_dir(dir: impl AsRef<Path>) -> Result<Tokenizer, TokenizerError> {
        let dir = dir.as_ref();
        let mut tok = Tokenizer::from_tokenizer_json(dir.join("tokenizer.json"))?;
        let config = dir.join("tokenizer_config.json");
        if config.is_file() {
            tok.apply_tokenizer_config(&config)?;
        }
        Ok(tok)
    }

    /// Builds from a parsed tokenizer.json; `origin` names it in errors.
    pub fn from_tokenizer_json_value(
        json: &Json,
        origin: &str,
    ) -> Result<Tokenizer, TokenizerError> {
        let invalid = |key: &str, problem: String| TokenizerError::Invalid {
            origin: origin.to_string(),
            key: key.to_string(),
            problem,
        };
        let model = &json["model"];
        let model_type = model["type"].as_str().unwrap_or("BPE");
        if model_type != "BPE" {
            return Err(TokenizerError::UnsupportedModel {
                origin: origin.to_string(),
                found: model_type.to_string(),
            });
        }
        for key in ["continuing_subword_prefix", "end_of_word_suffix"] {
            if model[key].as_str().is_some_and(|s| !s.is_empty()) {
                return Err(invalid(
                    &format!("model.{key}"),
                    "is not supported (byte-level BPE has none)".into(),
                ));
            }
        }
        if model["byte_fallback"] == true {
            return Err(invalid(
                "model.byte_fallback",
                "a SentencePiece-style vocabulary: load its model folder (`-m FOLDER`, \
                 `bitnet::hf::folder_to_gguf`) or the GGUF converted from it, which carry it \
                 as GGUF model \"llama\"; a lone tokenizer.json loads only byte-level BPE"
                    .into(),
            ));
        }
        if !json["normalizer"].is_null() {
            return Err(invalid(
                "normalizer",
                format!(
                    "{} is not supported (Llama 3 has none)",
                    short_json(&json["normalizer"])
                ),
            ));
        }
        let Some(split) = json_split(&json["pre_tokenizer"]) else {
            return Err(TokenizerError::UnsupportedPreTokenizer {
                origin: origin.to_string(),
                key: "pre_tokenizer".into(),
                found: short_json(&json["pre_tokenizer"]),
            });
        };
        let ignore_merges = model["ignore_merges"].as_bool().unwrap_or(false);

        // Vocabulary: model.vocab, then added_tokens (which may add ids or mark existing ones).
        let vocab = model["vocab"]
            .as_object()
            .ok_or_else(|| invalid("model.vocab", "is missing or not an object".into()))?;
        let mut entries: Vec<(u32, String, TokenKind)> = Vec::with_capacity(vocab.len() + 256);
        for (token, id) in vocab {
            let id = json_id(id).ok_or_else(|| {
                invalid(
                    &format!("model.vocab[{token:?}]"),
                    format!("{id} is not a token id"),
                )
            })?;
            entries.push((id, token.clone(), TokenKind::Normal));
        }
        let added = match &json["added_tokens"] {
            Json::Null => &[][..],
            Json::Array(a) => &a[..],
            other => {
                return Err(invalid(
                    "added_tokens",
                    format!("{} is not an array", short_json(other)),
                ))
            }
        };
        for (i, t) in added.iter().enumerate() {
            let id = json_id(&t["id"]).ok_or_else(|| {
                invalid(
                    &format!("added_tokens[{i}].id"),
                    "is missing or not a token id".into(),
                )
            })?;
            let content = t["content"].as_str().ok_or_else(|| {
                invalid(
                    &format!("added_tokens[{i}].content"),
                    "is missing or not a string".into(),
                )
            })?;
            let kind = if t["special"].as_bool().unwrap_or(false) {
                TokenKind::Control
            } else {
                TokenKind::UserDefined
            };
            entries.push((id, content.to_string(), kind));
        }
        let n = entries.iter().map(|e| e.0 as usize + 1).max().unwrap_or(0);
        // Ids index a table: refuse ids far beyond the number of entries (a corrupt file).
        if n > 2 * entries.len() + 1024 {
            return Err(invalid(
                "model.vocab",
                format!("ids reach {} for {} tokens", n - 1, entries.len()),
            ));
        }
        let mut tokens = vec![String::new(); n];
        let mut kinds = vec![TokenKind::Unused; n];
        for (id, text, kind) in entries {
            tokens[id as usize] = text;
            kinds[id as usize] = kind;
        }

        let merges: Vec<(usize, &str, &str)> = match &model["merges"] {
            Json::Array(list) => list
                .iter()
                .enumerate()
                .map(|(i, m)| {
                    let pair = match m {
                        Json::String(s) => split_merge(s),
                        Json::Array(p) if p.len() == 2 => p[0].as_str().zip(p[1].as_str()),
                        _ => None,
                    };
                    pair.map(|(a, b)| (i, a, b)).ok_or_else(|| {
                        invalid(
                            &format!("model.merges[{i}]"),
                            format!("{} is not a merge", short_json(m)),
                        )
                    })
                })
                .collect::<Result<_, _>>()?,
            Json::Null => Vec::new(),
            other => {
                return Err(invalid(
                    "model.merges",
                    format!("{} is not an array", short_json(other)),
                ))
            }
        };

        // BOS: the special token the post-processor puts first, if any.
        let bos_name = template_first_special(&json["post_processor"]);
        let add_bos = bos_name.is_some();
        let find = |text: &str| tokens.iter().position(|t| t == text).map(|i| i as u32);
        let bos = bos_name
            .as_deref()
            .and_then(find)
            .or_else(|| find("<|begin_of_text|>"));
        let eos = find("<|end_of_text|>");
        let parts = Parts {
            origin: origin.to_string(),
            tokens,
            kinds,
            ignore_merges,
            bos,
            eos,
            add_bos,
            extra_end_of_generation: Vec::new(),
            pre_source: PreTokenizerSource::TokenizerJson,
            chat_template: None,
            split,
        };
        Tokenizer::build(parts, merges.into_iter(), "model.merges")
    }

    /// Applies a Hugging Face `tokenizer_config.json`: `chat_template`, `bos_token`,
    /// `eos_token`, `add_bos_token` (each only when present).
    pub fn apply_tokenizer_config(&mut self, path: &Path) -> Result<(), TokenizerError> {
        let (origin, json) = read_json(path)?;
        let invalid = |key: &str, problem: String| TokenizerError::Invalid {
            origin: origin.clone(),
            key: key.to_string(),
            problem,
        };
        match &json["chat_template"] {
            Json::Null => {}
            Json::String(s) => self.chat_template = Some(s.clone()),
            // The list form: [{"name": "default", "template": "..."}, ...].
            Json::Array(list) => {
                let default = list
                    .iter()
                    .find(|t| t["name"] == "default")
                    .and_then(|t| t["template"].as_str());
                self.chat_template = default.map(str::to_string);
            }
            other => {
                return Err(invalid(
                    "chat_template",
                    format!("{} is not a template", short_json(other)),
                ))
            }
        }
        for key in ["bos_token", "eos_token"] {
            let text = match &json[key] {
                Json::Null => continue,
                Json::String(s) => s.as_str(),
                v => match v["content"].as_str() {
                    Some(s) => s,
                    None => return Err(invalid(key, format!("{} is not a token", short_json(v)))),
                },
            };
            let id = self
                .token_id(text)
                .ok_or_else(|| invalid(key, format!("{text:?} is not in the vocabulary")))?;
            if key == "bos_token" {
                self.bos = Some(id);
            } else {
                self.eos = Some(id);
            }
        }
        if let Some(add) = json["add_bos_token"].as_bool() {
            self.add_bos = add;
        }
        self.end_of_generation = end_of_generation(&self.tokens, &self.kinds, self.eos, &[]);
        Ok(())
    }

    fn build<'m>(
        p: Parts,
        merges: impl Iterator<Item = (usize, &'m str, &'m str)>,
        merges_key: &str,
    ) -> Result<Tokenizer, TokenizerError> {
        let mut bytes = Vec::new();
        let mut offsets = Vec::with_capacity(p.tokens.len() + 1);
        offsets.push(0);
        // Byte-level tokens whose text leaves the alphabet are kept as plain text.
        let mut byte_level: Vec<Option<Vec<u8>>> = Vec::with_capacity(p.tokens.len());
        for (t, &kind) in p.tokens.iter().zip(&p.kinds) {
            let raw = if kind.is_byte_level() {
                bpe::unmap_token(t)
            } else {
                None
            };
            bytes.extend_from_slice(raw.as_deref().unwrap_or(t.as_bytes()));
            offsets.push(bytes.len());
            byte_level.push(raw);
        }
        let by_string: FxHashMap<&str, u32> = p
            .tokens
            .iter()
            .zip(&p.kinds)
            .enumerate()
            .filter(|(_, (_, k))| k.is_byte_level())
            .map(|(i, (t, _))| (t.as_str(), i as u32))
            .collect();
        let words = byte_level
            .into_iter()
            .enumerate()
            .filter_map(|(i, raw)| raw.map(|r| (r, i as u32)));
        let bpe =
            bpe::Bpe::new(words, &by_string, merges, p.ignore_merges).map_err(|e| match e {
                bpe::BpeBuildError::MissingByte(b) => TokenizerError::Invalid {
                    origin: p.origin.clone(),
                    key: "tokens".into(),
                    problem: format!(
                        "no token for the byte {b:#04x} ({:?}); byte-level BPE needs all 256",
                        byte_to_char(b)
                    ),
                },
                bpe::BpeBuildError::UnknownMergeToken { index, token } => TokenizerError::Invalid {
                    origin: p.origin.clone(),
                    key: format!("{merges_key}[{index}]"),
                    problem: format!("{token:?} is not in the vocabulary"),
                },
            })?;
        drop(by_string);
        let split = p.split;
        Ok(p.into_tokenizer(bytes, offsets, Engine::Bpe(bpe, split)))
    }

    /// A SentencePiece tokenizer: token bytes are the text with `▁` as spaces, `<0xXX>` byte
    /// tokens their byte, special and user-defined tokens their text.
    fn build_spm(
        p: Parts,
        scores: Vec<f32>,
        unk: Option<u32>,
        add_space_prefix: bool,
    ) -> Result<Tokenizer, TokenizerError> {
        let mut bytes = Vec::new();
        let mut offsets = Vec::with_capacity(p.tokens.len() + 1);
        offsets.push(0);
        let mut unescaped = String::new();
        for (t, &kind) in p.tokens.iter().zip(&p.kinds) {
            match kind {
                TokenKind::Byte => match spm::byte_token_value(t) {
                    Some(b) => bytes.push(b),
                    None => bytes.extend_from_slice(t.as_bytes()),
                },
                TokenKind::Normal => {
                    unescaped.clear();
                    unescaped.extend(t.chars().map(|c| if c == spm::SPACE { ' ' } else { c }));
                    bytes.extend_from_slice(unescaped.as_bytes());
                }
                _ => bytes.extend_from_slice(t.as_bytes()),
            }
            offsets.push(bytes.len());
        }
        let byte_tokens =
            (0..p.tokens.len() as u32).filter(|&i| p.kinds[i as usize] == TokenKind::Byte);
        let spm = spm::Spm::new(&p.tokens, scores, byte_tokens, unk).map_err(|e| match e {
            spm::SpmBuildError::NoFallback { missing_byte } => TokenizerError::Invalid {
                origin: p.origin.clone(),
                key: "tokenizer.ggml.tokens".into(),
                problem: format!(
                    "no byte token <0x{missing_byte:02X}> and no unknown token: text outside \
                     the vocabulary could not be encoded"
                ),
            },
        })?;
        Ok(p.into_tokenizer(
            bytes,
            offsets,
            Engine::Spm {
                spm,
                add_space_prefix,
            },
        ))
    }

    /// Text to token ids.
    pub fn encode(&self, text: &str, options: EncodeOptions) -> Vec<u32> {
        let mut out = Vec::with_capacity(text.len() / 3 + 2);
        if options.add_bos {
            out.extend(self.bos);
        }
        let (bpe, split) = match &self.engine {
            Engine::Bpe(bpe, split) => (bpe, *split),
            Engine::Spm {
                spm,
                add_space_prefix,
            } => {
                self.encode_spm(spm, *add_space_prefix, text, options, &mut out);
                return out;
            }
        };
        let mut session = bpe.session();
        let mut plain = |segment: &str, out: &mut Vec<u32>| {
            let words = match split {
                Split::Llama3 => Llama3Split::new(segment),
                Split::Qwen2 => Llama3Split::qwen2(segment),
            };
            for word in words {
                session.encode_word(word.as_bytes(), out);
            }
        };
        let mut rest = text;
        while let Some((at, len, id)) = self.specials.find(rest, options.parse_special) {
            plain(&rest[..at], &mut out);
            out.push(id);
            rest = &rest[at + len..];
        }
        plain(rest, &mut out);
        out
    }

    /// llama.cpp's SentencePiece loop: each run of text between special tokens is one word,
    /// with `▁` in front when it starts the text or follows a special token.
    fn encode_spm(
        &self,
        spm: &spm::Spm,
        add_space_prefix: bool,
        text: &str,
        options: EncodeOptions,
        out: &mut Vec<u32>,
    ) {
        let mut word = String::new();
        let mut after_special = true;
        let mut plain = |segment: &str, after_special: bool, out: &mut Vec<u32>| {
            if segment.is_empty() {
                return;
            }
            word.clear();
            if add_space_prefix && after_special {
                word.push(spm::SPACE);
            }
            spm::escape_spaces(segment, &mut word);
            spm.encode(&word, out);
        };
        let mut rest = text;
        while let Some((at, len, id)) = self.specials.find(rest, options.parse_special) {
            if at > 0 {
                plain(&rest[..at], after_special, out);
            }
            out.push(id);
            after_special = true;
            rest = &rest[at + len..];
        }
        plain(rest, after_special, out);
    }

    /// A rendered chat prompt to ids: special-token text is parsed, and BOS is added when the
    /// file asks for it unless the prompt already starts with it.
    pub fn encode_chat(&self, prompt: &str) -> Vec<u32> {
        let starts_with_bos = self
            .bos
            .and_then(|b| self.tokens.get(b as usize))
            .is_some_and(|t| !t.is_empty() && prompt.starts_with(t.as_str()));
        self.encode(
            prompt,
            EncodeOptions {
                add_bos: self.add_bos && !starts_with_bos,
                parse_special: true,
            },
        )
    }

    /// The bytes a token stands for.
    pub fn token_bytes(&self, id: u32) -> Result<&[u8], TokenizerError> {
        let i = id as usize;
        if i >= self.tokens.len() {
            return Err(TokenizerError::UnknownId {
                id,
                vocab_size: self.tokens.len(),
            });
        }
        Ok(&self.bytes[self.offsets[i]..self.offsets[i + 1]])
    }

    /// The bytes of a sequence of tokens.
    pub fn decode_bytes(&self, ids: &[u32]) -> Result<Vec<u8>, TokenizerError> {
        let mut out = Vec::new();
        for &id in ids {
            out.extend_from_slice(self.token_bytes(id)?);
        }
        Ok(out)
    }

    /// Ids to text; bytes that are not valid UTF-8 become U+FFFD. Special tokens appear as
    /// their text. For a SentencePiece vocabulary that adds a space prefix, one space at the
    /// start of the first token is dropped (the prefix encoding added), as llama.cpp's
    /// detokenizer and Hugging Face's `Strip` decoder do; so `decode(encode(text)) == text`.
    /// [`Tokenizer::token_bytes`] and the streaming decoder keep that space.
    pub fn decode(&self, ids: &[u32]) -> Result<String, TokenizerError> {
        let mut bytes = self.decode_bytes(ids)?;
        if let Engine::Spm {
            add_space_prefix: true,
            ..
        } = self.engine
        {
            let first = ids.first().map(|&id| self.token_bytes(id)).transpose()?;
            if first.is_some_and(|b| b.starts_with(b" ")) {
                bytes.remove(0);
            }
        }
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }

    /// A decoder to feed ids one at a time (for printing a generation as it happens).
    pub fn stream_decoder(&self) -> StreamDecoder<'_> {
        StreamDecoder::new(self)
    }

    /// The vocabulary string of a token as the file writes it (`Ġworld`, `<|eot_id|>`).
    pub fn token_str(&self, id: u32) -> Option<&str> {
        self.tokens.get(id as usize).map(String::as_str)
    }

    /// What kind of token `id` is (normal, control, user-defined, ...).
    pub fn token_kind(&self, id: u32) -> Option<TokenKind> {
        self.kinds.get(id as usize).copied()
    }

    /// The id of a vocabulary string (as the file writes it).
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.tokens
            .iter()
            .position(|t| t == token)
            .map(|i| i as u32)
    }

    /// Tokens in the vocabulary.
    pub fn vocab_size(&self) -> usize {
        self.tokens.len()
    }

    /// The first token id whose vocabulary string differs in `other` (one past the shorter
    /// vocabulary when one is a prefix of the other); `None` when the vocabularies are the
    /// same token for token, as a draft model's must be its target's.
    pub fn vocabulary_difference(&self, other: &Tokenizer) -> Option<u32> {
        let n = self.tokens.len().min(other.tokens.len());
        let first = (0..n).find(|&i| self.tokens[i] != other.tokens[i]);
        match first {
            Some(i) => Some(i as u32),
            None if self.tokens.len() != other.tokens.len() => Some(n as u32),
            None => None,
        }
    }

    /// The beginning-of-sequence token, if the vocabulary has one.
    pub fn bos_id(&self) -> Option<u32> {
        self.bos
    }

    /// The end-of-sequence token, if the vocabulary has one.
    pub fn eos_id(&self) -> Option<u32> {
        self.eos
    }

    /// Whether the file asks for BOS at the start of a prompt (`tokenizer.ggml.add_bos_token`,
    /// or a tokenizer.json post-processor that adds one).
    pub fn add_bos_token(&self) -> bool {
        self.add_bos
    }

    /// Whether the file asks for EOS at the end of a text (`tokenizer.ggml.add_eos_token`,
    /// false when absent): embedding models that pool the EOS state. Generation never adds it.
    pub fn add_eos_token(&self) -> bool {
        self.add_eos
    }

    /// A text's ids for an embedding: BOS where the file asks for it, the text (special-token
    /// text read as the token, as llama.cpp's `llama-embedding` and `/embeddings` and HF
    /// tokenizers read it), and EOS where the model ends every text with it
    /// ([`Tokenizer::add_eos_token`]).
    pub fn encode_for_embedding(&self, text: &str) -> Vec<u32> {
        let mut ids = self.encode(
            text,
            EncodeOptions {
                add_bos: self.add_bos,
                parse_special: true,
            },
        );
        if let (true, Some(eos)) = (self.add_eos, self.eos) {
            ids.push(eos);
        }
        ids
    }

    /// Tokens that end a generation: eos, `<|eot_id|>`, `<|eom_id|>` (those present).
    pub fn end_of_generation(&self) -> &[u32] {
        &self.end_of_generation
    }

    /// Whether `id` ends a generation (see [`Tokenizer::end_of_generation`]).
    pub fn is_end_of_generation(&self, id: u32) -> bool {
        self.end_of_generation.contains(&id)
    }

    /// Where the split rules came from.
    pub fn pre_tokenizer_source(&self) -> &PreTokenizerSource {
        &self.pre_source
    }

    /// The file the tokenizer came from.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// The file's chat template text, if any (possibly bitnet.cpp's marker).
    pub fn chat_template_source(&self) -> Option<&str> {
        self.chat_template.as_deref()
    }

    /// Replaces the file's chat template (`None`: the built-in BitNet format), as llama.cpp's
    /// `--chat-template` does; checked when [`Tokenizer::chat_template`] compiles it.
    pub fn set_chat_template(&mut self, template: Option<String>) {
        self.chat_template = template;
    }

    /// The chat template to use: the file's Jinja template, or the built-in BitNet format
    /// when there is none or it is bitnet.cpp's marker.
    pub fn chat_template(&self) -> Result<ChatTemplate, TokenizerError> {
        let text = |id: Option<u32>| id.and_then(|i| self.token_str(i)).unwrap_or("");
        let end_of_turn = match self.token_id("<|eot_id|>") {
            Some(_) => "<|eot_id|>",
            None => text(self.eos),
        };
        ChatTemplate::new(
            self.chat_template.as_deref(),
            text(self.bos),
            text(self.eos),
            end_of_turn,
        )
    }
}

/// eos, then `<|eot_id|>` and `<|eom_id|>` when the vocabulary has them as special tokens.
fn end_of_generation(
    tokens: &[String],
    kinds: &[TokenKind],
    eos: Option<u32>,
    extra: &[u32],
) -> Vec<u32> {
    let mut ids: Vec<u32> = eos.into_iter().chain(extra.iter().copied()).collect();
    for name in ["<|eot_id|>", "<|eom_id|>"] {
        if let Some(i) = tokens.iter().position(|t| t == name) {
            if kinds[i] != TokenKind::Normal {
                ids.push(i as u32);
            }
        }
    }
    let mut seen = Vec::new();
    ids.retain(|id| {
        let new = !seen.contains(id);
        seen.push(*id);
        new
    });
    ids
}

/// "left right" → ("left", "right"); both halves non-empty.
fn split_merge(s: &str) -> Option<(&str, &str)> {
    let (a, b) = s.split_once(' ')?;
    (!a.is_empty() && !b.is_empty()).then_some((a, b))
}

fn json_id(v: &Json) -> Option<u32> {
    v.as_u64().and_then(|id| u32::try_from(id).ok())
}

fn short_json(v: &Json) -> String {
    let s = v.to_string();
    if s.chars().count() > 200 {
        format!("{}…", s.chars().take(200).collect::<String>())
    } else {
        s
    }
}

/// The split of `Sequence[Split(regex, Isolated), ByteLevel(use_regex: false)]` with Llama 3's
/// or Qwen2's regex.
fn json_split(pre: &Json) -> Option<Split> {
    let seq = pre["pretokenizers"]
        .as_array()
        .filter(|_| pre["type"] == "Sequence")?;
    let [split, byte_level] = &seq[..] else {
        return None;
    };
    let which = match split["pattern"]["Regex"].as_str()? {
        LLAMA3_PATTERN => Split::Llama3,
        QWEN2_PATTERN => Split::Qwen2,
        _ => return None,
    };
    let ok = split["type"] == "Split"
        && split["behavior"] == "Isolated"
        && split["invert"] != true
        && byte_level["type"] == "ByteLevel"
        && byte_level["use_regex"] == false
        && byte_level["add_prefix_space"] != true;
    ok.then_some(which)
}

/// The special token a TemplateProcessing post-processor puts first in a single sequence.
fn template_first_special(post: &Json) -> Option<String> {
    match post["type"].as_str()? {
        "Sequence" => post["processors"]
            .as_array()?
            .iter()
            .find_map(template_first_special),
        "TemplateProcessing" => {
            let first = &post["single"].as_array()?.first()?["SpecialToken"]["id"];
            let name = first.as_str()?;
            // The special_tokens map gives the token text; fall back to the name itself.
            let tokens = &post["special_tokens"][name]["tokens"];
            Some(tokens[0].as_str().unwrap_or(name).to_string())
        }
        _ => None,
    }
}

/// Is this Llama 3's vocabulary? (Used only when `tokenizer.ggml.pre` is missing.)
fn is_llama3_vocab(tokens: &[String]) -> bool {
    let at = |i: usize, s: &str| tokens.get(i).is_some_and(|t| t == s);
    tokens.len() == 128_256
        && at(128_000, "<|begin_of_text|>")
        && at(128_001, "<|end_of_text|>")
        && at(128_009, "<|eot_id|>")
        && at(9906, "Hello")
        && at(1917, "Ġworld")
        && at(256, "ĠĠ")
}

/// Matches added-token text in the input: leftmost, then longest, like Hugging Face's
/// added-vocabulary split and llama.cpp's special-token partition.
struct Specials {
    /// Candidates by first byte, longest first.
    by_first: Vec<Vec<AddedToken>>,
    any_always: bool,
    any: bool,
}

struct AddedToken {
    text: Box<[u8]>,
    id: u32,
    /// Control tokens match only with `parse_special`; user-defined ones always.
    only_when_parsing: bool,
}

impl Specials {
    fn new(tokens: &[String], kinds: &[TokenKind]) -> Specials {
        let mut by_first: Vec<Vec<AddedToken>> = (0..256).map(|_| Vec::new()).collect();
        let (mut any, mut any_always) = (false, false);
        for (i, (t, &kind)) in tokens.iter().zip(kinds).enumerate() {
            let only_when_parsing = match kind {
                TokenKind::Control | TokenKind::Unknown => true,
                TokenKind::UserDefined => false,
                _ => continue,
            };
            let Some(&first) = t.as_bytes().first() else {
                continue;
            };
            by_first[first as usize].push(AddedToken {
                text: t.as_bytes().into(),
                id: i as u32,
                only_when_parsing,
            });
            any = true;
            any_always |= !only_when_parsing;
        }
        for list in &mut by_first {
            list.sort_by(|a, b| b.text.len().cmp(&a.text.len()).then(a.id.cmp(&b.id)));
        }
        Specials {
            by_first,
            any_always,
            any,
        }
    }

    /// The first added token in `text`: (byte offset, byte length, id).
    fn find(&self, text: &str, parse_special: bool) -> Option<(usize, usize, u32)> {
        if !(self.any_always || (parse_special && self.any)) {
            return None;
        }
        let bytes = text.as_bytes();
        for (at, &b) in bytes.iter().enumerate() {
            for t in &self.by_first[b as usize] {
                if (parse_special || !t.only_when_parsing) && bytes[at..].starts_with(&t.text) {
                    return Some((at, t.text.len(), t.id));
                }
            }
        }
        None
    }
}

/// A JSON file and its name for error messages.
fn read_json(path: &Path) -> Result<(String, Json), TokenizerError> {
    let origin = path.display().to_string();
    let text = std::fs::read(path).map_err(|source| TokenizerError::Io {
        path: origin.clone(),
        source,
    })?;
    let json = serde_json::from_slice(&text).map_err(|source| TokenizerError::Json {
        path: origin.clone(),
        source,
    })?;
    Ok((origin, json))
}
