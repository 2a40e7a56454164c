//! SentencePiece BPE (Llama 2, 1bitLLM's bitnet_b1_58 models): GGUF `tokenizer.ggml.model`
//! `llama`.
//!
//! There is no pre-tokenizer: a whole text segment is one word. Spaces become `▁` (U+2581) and,
//! as SentencePiece's `add_dummy_prefix` does, a segment that starts the text or follows a
//! special token gets a `▁` in front. The word starts as its characters; the adjacent pair
//! whose concatenation is the vocabulary entry of highest score merges first (leftmost among
//! equals), until no pair's concatenation is in the vocabulary. A character that is not in the
//! vocabulary becomes its UTF-8 bytes' `<0xXX>` tokens (byte fallback), or the unknown token
//! when the vocabulary has no byte tokens. This is llama.cpp's `llm_tokenizer_spm`, which
//! SentencePiece's own BPE agrees with on these vocabularies (see the tests).

use std::cmp::Ordering;
use std::collections::BinaryHeap;

use rustc_hash::FxHashMap;

/// SentencePiece's whitespace symbol.
pub(crate) const SPACE: char = '\u{2581}';

/// The byte a `<0xXX>` token stands for (two upper- or lower-case hex digits).
pub(crate) fn byte_token_value(text: &str) -> Option<u8> {
    let hex = text.strip_prefix("<0x")?.strip_suffix('>')?;
    if hex.len() != 2 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u8::from_str_radix(hex, 16).ok()
}

/// The vocabulary as the merge loop needs it.
pub(crate) struct Spm {
    /// Every token by its text (`▁` for spaces); the first id wins for duplicates.
    by_text: FxHashMap<Box<str>, u32>,
    scores: Vec<f32>,
    /// The `<0xXX>` token of each byte, when the vocabulary has all 256.
    byte_ids: Option<[u32; 256]>,
    /// The unknown token, for characters with no token when there are no byte tokens.
    unk: Option<u32>,
}

/// Why an SPM vocabulary cannot be used.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum SpmBuildError {
    /// Neither all 256 byte tokens nor an unknown token: some text could not be encoded.
    NoFallback {
        /// A byte without a `<0xXX>` token.
        missing_byte: u8,
    },
}

impl Spm {
    /// `tokens` by id with their scores; `byte_tokens` are the ids whose kind is byte (their
    /// text `<0xXX>` names the byte); `unk` the unknown token.
    pub(crate) fn new(
        tokens: &[String],
        scores: Vec<f32>,
        byte_tokens: impl Iterator<Item = u32>,
        unk: Option<u32>,
    ) -> Result<Spm, SpmBuildError> {
        let mut by_text: FxHashMap<Box<str>, u32> = FxHashMap::default();
        for (i, t) in tokens.iter().enumerate() {
            if !t.is_empty() {
                by_text.entry(t.as_str().into()).or_insert(i as u32);
            }
        }
        let mut bytes: [Option<u32>; 256] = [None; 256];
        for id in byte_tokens {
            if let Some(b) = tokens.get(id as usize).and_then(|t| byte_token_value(t)) {
                bytes[b as usize].get_or_insert(id);
            }
        }
        let byte_ids = match bytes.iter().position(Option::is_none) {
            None => Some(bytes.map(|b| b.unwrap_or_default())),
            Some(_) if unk.is_some() => None,
            Some(missing) => {
                return Err(SpmBuildError::NoFallback {
                    missing_byte: missing as u8,
                })
            }
        };
        Ok(Spm {
            by_text,
            scores,
            byte_ids,
            unk,
        })
    }

    /// Appends the ids of `text`, which must already have its spaces as `▁` (and the dummy
    /// prefix, if any).
    pub(crate) fn encode(&self, text: &str, out: &mut Vec<u32>) {
        const NONE: usize = usize::MAX;
        // Symbols: byte ranges of `text`, linked in order; a merged-away symbol has len 0.
        let mut start: Vec<usize> = Vec::with_capacity(text.len());
        let mut len: Vec<usize> = Vec::with_capacity(text.len());
        for (at, c) in text.char_indices() {
            start.push(at);
            len.push(c.len_utf8());
        }
        let n = start.len();
        let mut next: Vec<usize> = (1..=n).map(|j| if j < n { j } else { NONE }).collect();
        let mut prev: Vec<usize> = (0..n).map(|i| i.checked_sub(1).unwrap_or(NONE)).collect();
        let mut heap = BinaryHeap::new();
        let candidate = |left: usize, right: usize, len: &[usize]| -> Option<Bigram> {
            if left == NONE || right == NONE {
                return None;
            }
            let size = len[left] + len[right];
            let s = &text[start[left]..start[left] + size];
            let id = *self.by_text.get(s)?;
            Some(Bigram {
                score: self.scores.get(id as usize).copied().unwrap_or(0.0),
                left,
                right,
                size,
            })
        };
        for i in 1..n {
            heap.extend(candidate(i - 1, i, &len));
        }
        while let Some(b) = heap.pop() {
            // Stale: one side merged into something else since this pair was queued.
            if len[b.left] == 0 || len[b.right] == 0 || len[b.left] + len[b.right] != b.size {
                continue;
            }
            len[b.left] += len[b.right];
            len[b.right] = 0;
            next[b.left] = next[b.right];
            if next[b.right] != NONE {
                prev[next[b.right]] = b.left;
            }
            heap.extend(candidate(prev[b.left], b.left, &len));
            heap.extend(candidate(b.left, next[b.left], &len));
        }
        let mut i = if n == 0 { NONE } else { 0 };
        while i != NONE {
            let piece = &text[start[i]..start[i] + len[i]];
            match self.by_text.get(piece) {
                Some(&id) => out.push(id),
                None => match (&self.byte_ids, self.unk) {
                    (Some(bytes), _) => out.extend(piece.bytes().map(|b| bytes[b as usize])),
                    (None, Some(unk)) => out.push(unk),
                    // `new` refuses a vocabulary with neither.
                    (None, None) => {}
                },
            }
            i = next[i];
        }
    }
}

/// A candidate merge: the heap yields the highest score, then the leftmost.
struct Bigram {
    score: f32,
    left: usize,
    right: usize,
    size: usize,
}

impl PartialEq for Bigram {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Bigram {}

impl PartialOrd for Bigram {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Bigram {
    fn cmp(&self, other: &Self) -> Ordering {
        self.score
            .total_cmp(&other.score)
            .then(other.left.cmp(&self.left))
    }
}

/// Text with its spaces as `▁`, as SentencePiece's normalizer writes them.
pub(crate) fn escape_spaces(text: &str, out: &mut String) {
    for c in text.chars() {
        out.push(if c == ' ' { SPACE } else { c });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toy() -> Spm {
        let tokens: Vec<String> = ["<unk>", "a", "b", "c", "ab", "bc", "abc", "▁", "▁a"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        // "bc" outscores "ab"; "abc" from "a"+"bc".
        let scores = vec![0.0, 0.0, 0.0, 0.0, -5.0, -1.0, -2.0, 0.0, -3.0];
        Spm::new(&tokens, scores, std::iter::empty(), Some(0)).unwrap_or_else(|e| panic!("{e:?}"))
    }

    fn ids(spm: &Spm, text: &str) -> Vec<u32> {
        let mut out = Vec::new();
        spm.encode(text, &mut out);
        out
    }

    #[test]
    fn highest_score_merges_first_and_unknown_characters_are_unk() {
        let spm = toy();
        assert_eq!(ids(&spm, "abc"), [6]);
        assert_eq!(ids(&spm, "ab"), [4]);
        assert_eq!(ids(&spm, "▁ab"), [8, 2]);
        assert_eq!(ids(&spm, "aéb"), [1, 0, 2]);
        assert_eq!(ids(&spm, ""), Vec::<u32>::new());
    }

    #[test]
    fn byte_token_names() {
        assert_eq!(byte_token_value("<0x0A>"), Some(10));
        assert_eq!(byte_token_value("<0xff>"), Some(255));
        assert_eq!(byte_token_value("<0x0A"), None);
        assert_eq!(byte_token_value("<0x0AB>"), None);
        assert_eq!(byte_token_value("<0x+A>"), None);
        let tokens = vec!["a".to_string()];
        assert_eq!(
            Spm::new(&tokens, vec![0.0], std::iter::empty(), None).err(),
            Some(SpmBuildError::NoFallback { missing_byte: 0 })
        );
    }
}
