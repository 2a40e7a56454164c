//! Constrained decoding: output that must match a JSON schema (OpenAI's `response_format`)
//! or a GBNF grammar (llama-server's `grammar`), through llguidance's Earley parser over our
//! own vocabulary. At each step the constraint
//! gives the set of tokens that keep the output a valid prefix, and the sampler only sees
//! those.
//!
//! llguidance learns the vocabulary as a trie of token byte strings (`toktrie`): ordinary
//! tokens are their bytes, special tokens (`<|eot_id|>`) are marked with a leading 0xFF byte
//! so that no text can produce them. It re-tokenizes forced text with our own BPE, so the
//! tokens it forces are the ones our tokenizer would produce.

use std::sync::Arc;

use llguidance::api::TopLevelGrammar;
use llguidance::{Matcher, ParserFactory};
use serde_json::Value;
use toktrie::{TokRxInfo, TokTrie, TokenizerEnv};

use crate::tokenizer::{EncodeOptions, TokenKind, Tokenizer};

/// Why a constraint could not be built or followed.
#[derive(Debug, thiserror::Error)]
pub enum ConstraintError {
    /// Constrained output must end with an end-of-generation token, and there is none.
    #[error("the vocabulary has no end-of-generation token to end constrained output with")]
    NoEndToken,
    /// llguidance could not be given the vocabulary (its message).
    #[error("the grammar engine could not be set up: {0}")]
    Setup(String),
    /// The JSON schema could not be compiled (llguidance's message).
    #[error("invalid JSON schema: {0}")]
    Schema(String),
    /// A GBNF grammar could not be read or compiled.
    #[error("invalid grammar: {0}")]
    Grammar(String),
    /// The grammar matcher failed while generating (llguidance's message).
    #[error("constrained decoding failed: {0}")]
    Matcher(String),
}

/// Our tokenizer as llguidance sees it.
struct TokenizerAdapter {
    tokenizer: Arc<Tokenizer>,
    trie: TokTrie,
}

impl TokenizerEnv for TokenizerAdapter {
    fn tok_trie(&self) -> &TokTrie {
        &self.trie
    }

    fn tokenize_bytes(&self, s: &[u8]) -> Vec<u32> {
        match std::str::from_utf8(s) {
            Ok(text) => self.tokenizer.encode(text, EncodeOptions::default()),
            // Only whole texts are valid UTF-8; a split character falls back to the trie's
            // greedy split, which still produces tokens that spell exactly these bytes.
            Err(_) => self.trie.greedy_tokenize(s),
        }
    }
}

/// Builds constraints for one tokenizer; the vocabulary's trie is made once (about a second
/// for a 128k vocabulary) and shared by every request.
pub struct ConstraintCompiler {
    factory: ParserFactory,
    /// Tokens that end a generation; allowed wherever the grammar allows its end.
    end_tokens: Vec<u32>,
}

impl std::fmt::Debug for ConstraintCompiler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConstraintCompiler")
            .field("end_tokens", &self.end_tokens)
            .finish_non_exhaustive()
    }
}

impl ConstraintCompiler {
    /// A compiler over `tokenizer`'s vocabulary (built once, shared by every constraint).
    pub fn new(tokenizer: Arc<Tokenizer>) -> Result<ConstraintCompiler, ConstraintError> {
        let end_tokens: Vec<u32> = tokenizer.end_of_generation().to_vec();
        let eos = end_tokens
            .first()
            .copied()
            .or(tokenizer.eos_id())
            .ok_or(ConstraintError::NoEndToken)?;
        let n = tokenizer.vocab_size();
        let words: Vec<Vec<u8>> = (0..n as u32)
            .map(|id| {
                let special = !matches!(
                    tokenizer.token_kind(id),
                    Some(TokenKind::Normal | TokenKind::Byte)
                );
                let name = tokenizer.token_str(id).unwrap_or_default();
                if special || end_tokens.contains(&id) {
                    let mut w = vec![TokTrie::SPECIAL_TOKEN_MARKER];
                    if name.is_empty() {
                        w.extend_from_slice(format!("<[{id}]>").as_bytes());
                    } else {
                        w.extend_from_slice(name.as_bytes());
                    }
                    w
                } else {
                    tokenizer
                        .token_bytes(id)
                        .map(<[u8]>::to_vec)
                        .unwrap_or_default()
                }
            })
            .collect();
        let mut info = TokRxInfo::new(n as u32, eos);
        info.tok_bos = tokenizer.bos_id();
        let trie = TokTrie::from(&info, &words);
        let env: toktrie::TokEnv = Arc::new(TokenizerAdapter { tokenizer, trie });
        let mut factory =
            ParserFactory::new_simple(&env).map_err(|e| ConstraintError::Setup(e.to_string()))?;
        factory.quiet();
        Ok(ConstraintCompiler {
            factory,
            end_tokens,
        })
    }

    /// Output that is any JSON object (`response_format: {"type": "json_object"}`).
    pub fn json_object(&self) -> Result<Constraint, ConstraintError> {
        self.json_schema(&serde_json::json!({"type": "object"}))
    }

    /// Output that is a JSON value valid against `schema`, written compactly (no free
    /// whitespace: a small model given a choice of whitespace may never stop writing it).
    pub fn json_schema(&self, schema: &Value) -> Result<Constraint, ConstraintError> {
        let mut schema = schema.clone();
        match &mut schema {
            Value::Object(o) => {
                o.entry("x-guidance")
                    .or_insert_with(|| serde_json::json!({"whitespace_flexible": false}));
            }
            Value::Bool(_) => {}
            _ => {
                return Err(ConstraintError::Schema(
                    "a JSON schema must be an object or a boolean".into(),
                ))
            }
        }
        self.build(
            TopLevelGrammar::from_json_schema(schema),
            ConstraintError::Schema,
        )
    }

    /// Output matching a GBNF grammar (llama-server's `grammar` field), read into
    /// llguidance's Lark by [`super::gbnf`].
    pub fn gbnf(&self, grammar: &str) -> Result<Constraint, ConstraintError> {
        let lark = super::gbnf::gbnf_to_lark(grammar)
            .map_err(|e| ConstraintError::Grammar(e.to_string()))?;
        self.build(TopLevelGrammar::from_lark(lark), ConstraintError::Grammar)
    }

    /// Output matching a grammar in llguidance's Lark dialect (tool calls: [`super::tools`]).
    pub fn lark(&self, grammar: &str) -> Result<Constraint, ConstraintError> {
        self.build(
            TopLevelGrammar::from_lark(grammar.to_string()),
            ConstraintError::Grammar,
        )
    }

    fn build(
        &self,
        grammar: TopLevelGrammar,
        fail: fn(String) -> ConstraintError,
    ) -> Result<Constraint, ConstraintError> {
        let parser = self
            .factory
            .create_parser(grammar)
            .map_err(|e| fail(e.to_string()))?;
        let matcher = Matcher::new(Ok(parser));
        if let Some(e) = matcher.get_error() {
            return Err(fail(e));
        }
        Ok(Constraint {
            matcher,
            end_tokens: self.end_tokens.clone(),
        })
    }
}

/// One request's constraint: where its output stands in the grammar.
pub struct Constraint {
    matcher: Matcher,
    end_tokens: Vec<u32>,
}

impl std::fmt::Debug for Constraint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Constraint")
            .field("stopped", &self.matcher.is_stopped())
            .finish_non_exhaustive()
    }
}

impl Constraint {
    /// Sets the logits of tokens the grammar does not allow next to −∞. End-of-generation
    /// tokens are allowed exactly where the grammar may end.
    pub(crate) fn mask(&mut self, logits: &mut [f32]) -> Result<(), ConstraintError> {
        let mask = self
            .matcher
            .compute_mask()
            .map_err(|e| ConstraintError::Matcher(e.to_string()))?;
        let may_end = self
            .matcher
            .is_accepting()
            .map_err(|e| ConstraintError::Matcher(e.to_string()))?;
        for (id, l) in logits.iter_mut().enumerate() {
            let id = id as u32;
            let allowed = if self.end_tokens.contains(&id) {
                may_end
            } else {
                (id as usize) < mask.len() && mask.is_allowed(id)
            };
            if !allowed {
                *l = f32::NEG_INFINITY;
            }
        }
        Ok(())
    }

    /// Moves past a generated token (not an end-of-generation one).
    pub fn accept(&mut self, token: u32) -> Result<(), ConstraintError> {
        self.matcher
            .consume_token(token)
            .map_err(|e| ConstraintError::Matcher(e.to_string()))
    }

    /// Whether the grammar is complete and allows nothing more.
    pub(crate) fn is_finished(&self) -> bool {
        self.matcher.is_stopped() && !self.matcher.is_error()
    }

    /// What went wrong, if the matcher failed.
    pub fn error(&self) -> Option<String> {
        self.matcher.get_error()
    }
}
