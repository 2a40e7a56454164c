//! Streaming detokenization: token ids in, text pieces out, never a broken UTF-8 sequence.
//!
//! Byte-level BPE tokens are byte strings: a character of two to four bytes may be split
//! across tokens (an emoji is often three; SentencePiece's byte-fallback tokens are one byte
//! each). The decoder keeps the bytes of an unfinished character until the tokens that
//! complete it arrive. Bytes that can never become valid UTF-8 come out as U+FFFD, exactly as
//! [`String::from_utf8_lossy`] does on the whole output, so the pieces always concatenate to
//! [`Tokenizer::decode`] of the same ids (for a SentencePiece vocabulary, plus the one leading
//! space that `decode` drops).

use super::{Tokenizer, TokenizerError};

/// Turns a stream of token ids into text pieces. Made by [`Tokenizer::stream_decoder`].
pub struct StreamDecoder<'t> {
    tokenizer: &'t Tokenizer,
    bytes: PendingUtf8,
}

impl<'t> StreamDecoder<'t> {
    pub(crate) fn new(tokenizer: &'t Tokenizer) -> StreamDecoder<'t> {
        StreamDecoder {
            tokenizer,
            bytes: PendingUtf8::default(),
        }
    }

    /// Adds one token; returns the text it completes (possibly empty).
    pub fn push(&mut self, id: u32) -> Result<String, TokenizerError> {
        self.bytes.push(self.tokenizer, id)
    }

    /// Ends the stream: bytes of an unfinished character come out as U+FFFD.
    pub fn finish(&mut self) -> String {
        self.bytes.finish()
    }

    /// Whether bytes of an unfinished character are being held back.
    pub fn has_pending(&self) -> bool {
        !self.bytes.pending.is_empty()
    }
}

/// A [`StreamDecoder`]'s state without the borrow of its tokenizer, which each call takes
/// instead: for a generation that owns its tokenizer through an `Arc`.
#[derive(Clone, Debug, Default)]
pub(crate) struct PendingUtf8 {
    /// Bytes of a character not yet complete (at most 3).
    pending: Vec<u8>,
}

impl PendingUtf8 {
    pub(crate) fn push(
        &mut self,
        tokenizer: &Tokenizer,
        id: u32,
    ) -> Result<String, TokenizerError> {
        let bytes = tokenizer.token_bytes(id)?;
        self.pending.extend_from_slice(bytes);
        Ok(self.take_complete())
    }

    pub(crate) fn finish(&mut self) -> String {
        let rest = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        rest
    }

    /// Emits everything but a trailing incomplete (still completable) UTF-8 sequence.
    fn take_complete(&mut self) -> String {
        let mut out = String::new();
        let kept = complete_prefix(&self.pending, &mut out);
        let done = self.pending.len() - kept;
        self.pending.drain(..done);
        out
    }
}

/// Appends the text of `bytes` to `out`, invalid sequences as U+FFFD, except a trailing
/// sequence that more bytes could still complete; returns that sequence's length.
fn complete_prefix(bytes: &[u8], out: &mut String) -> usize {
    let mut rest = bytes;
    loop {
        match std::str::from_utf8(rest) {
            Ok(s) => {
                out.push_str(s);
                return 0;
            }
            Err(e) => {
                let (valid, after) = rest.split_at(e.valid_up_to());
                // Valid by the error's own report.
                out.push_str(std::str::from_utf8(valid).unwrap_or_default());
                match e.error_len() {
                    Some(bad) => {
                        out.push(char::REPLACEMENT_CHARACTER);
                        rest = &after[bad..];
                    }
                    None => return after.len(),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::complete_prefix;

    /// Feeds `chunks` one by one; returns the piece after each and the flushed rest.
    fn pieces(chunks: &[&[u8]]) -> (Vec<String>, String) {
        let mut pending: Vec<u8> = Vec::new();
        let mut out = Vec::new();
        for c in chunks {
            pending.extend_from_slice(c);
            let mut text = String::new();
            let kept = complete_prefix(&pending, &mut text);
            pending.drain(..pending.len() - kept);
            out.push(text);
        }
        (out, String::from_utf8_lossy(&pending).into_owned())
    }

    #[test]
    fn split_characters_are_held_until_complete() {
        let emoji = "🤖".as_bytes();
        let (out, rest) = pieces(&[b"a", &emoji[..1], &emoji[1..3], &emoji[3..], b"b"]);
        assert_eq!(out, ["a", "", "", "🤖", "b"]);
        assert_eq!(rest, "");
        let (out, rest) = pieces(&[b"x\xff", &emoji[..2]]);
        assert_eq!(out, ["x\u{FFFD}", ""]);
        assert_eq!(rest, "\u{FFFD}");
        let all: Vec<u8> = [&b"x\xff"[..], &emoji[..2], b"y"].concat();
        let (out, rest) = pieces(&[b"x\xff", &emoji[..2], b"y"]);
        assert_eq!(out.concat() + &rest, String::from_utf8_lossy(&all));
    }
}
