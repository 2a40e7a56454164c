//! Llama 3's pre-tokenizer: the split of text into words before byte-level BPE.
//!
//! Hugging Face and llama.cpp split with this regular expression (Oniguruma semantics:
//! alternatives tried left to right at each position, greedy quantifiers, backtracking):
//!
//! ```text
//! (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+
//! ```
//!
//! Every character is a letter (`\p{L}`), a number (`\p{N}`), whitespace (`\s`, the Unicode
//! `White_Space` set) or something else, so at every position one alternative matches and the
//! pieces cover the text. [`Llama3Split`] implements the pattern directly: each alternative is a
//! few lines below, in the pattern's order, with the backtracking worked out by hand. The
//! Unicode classes come from `regex-syntax`'s tables (the ones the `regex` crate uses).

use std::sync::OnceLock;

/// The regex that [`Llama3Split`] implements, as written in Hugging Face's `tokenizer.json`.
pub(crate) const LLAMA3_PATTERN: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Qwen2's regex (llama.cpp `qwen2`): Llama 3's with single digits (`\p{N}` for
/// `\p{N}{1,3}`); [`Llama3Split::qwen2`] implements it.
pub(crate) const QWEN2_PATTERN: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// The character classes the pattern distinguishes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Class {
    /// `\p{L}`: Lu, Ll, Lt, Lm, Lo.
    Letter,
    /// `\p{N}`: Nd, Nl, No.
    Number,
    /// `\r` or `\n` (whitespace that the pattern names on its own).
    Newline,
    /// Other whitespace (`\s`): tab, space, U+000B, U+000C, U+0085, U+00A0, U+2000.., U+3000, ...
    Space,
    /// Everything else: punctuation, symbols, marks, controls, emoji, ...
    Other,
}

/// Class lookup: a table for the Basic Multilingual Plane, sorted ranges above it.
struct Classes {
    bmp: Vec<Class>,
    astral: Vec<(u32, u32, Class)>,
}

fn unicode_ranges(pattern: &str) -> Vec<(u32, u32)> {
    use regex_syntax::hir::{Class as HirClass, HirKind};
    // The three patterns are fixed and valid; regex-syntax always builds them with its
    // default `unicode` feature, so failure here is a build misconfiguration.
    let hir = regex_syntax::Parser::new()
        .parse(pattern)
        .expect("regex-syntax parses a fixed Unicode class");
    match hir.kind() {
        HirKind::Class(HirClass::Unicode(class)) => class
            .ranges()
            .iter()
            .map(|r| (r.start() as u32, r.end() as u32))
            .collect(),
        other => panic!("regex-syntax gave {other:?} for {pattern}"),
    }
}

fn classes() -> &'static Classes {
    static CLASSES: OnceLock<Classes> = OnceLock::new();
    CLASSES.get_or_init(|| {
        let mut ranges: Vec<(u32, u32, Class)> = Vec::new();
        for (pattern, class) in [
            (r"\p{L}", Class::Letter),
            (r"\p{N}", Class::Number),
            (r"\s", Class::Space),
        ] {
            ranges.extend(
                unicode_ranges(pattern)
                    .into_iter()
                    .map(|(a, b)| (a, b, class)),
            );
        }
        ranges.sort_unstable_by_key(|r| r.0);
        let mut bmp = vec![Class::Other; 0x10000];
        for &(start, end, class) in &ranges {
            for c in start..=end.min(0xFFFF) {
                bmp[c as usize] = class;
            }
        }
        bmp[b'\r' as usize] = Class::Newline;
        bmp[b'\n' as usize] = Class::Newline;
        let astral = ranges.into_iter().filter(|r| r.1 > 0xFFFF).collect();
        Classes { bmp, astral }
    })
}

impl Classes {
    #[inline]
    fn of(&self, c: char) -> Class {
        let c = c as u32;
        if c < 0x10000 {
            return self.bmp[c as usize];
        }
        match self.astral.binary_search_by(|r| {
            if r.1 < c {
                std::cmp::Ordering::Less
            } else if r.0 > c {
                std::cmp::Ordering::Greater
            } else {
                std::cmp::Ordering::Equal
            }
        }) {
            Ok(i) => self.astral[i].2,
            Err(_) => Class::Other,
        }
    }
}

/// The class of one character, as the Llama 3 pattern sees it.
#[cfg(test)]
pub(crate) fn class_of(c: char) -> Class {
    classes().of(c)
}

/// The pieces of `text` under the Llama 3 pattern, in order; they concatenate to `text`.
pub struct Llama3Split<'a> {
    text: &'a str,
    pos: usize,
    classes: &'static Classes,
    /// Digits per number piece: 3 (Llama 3), 1 (Qwen2).
    max_digits: usize,
}

impl<'a> Llama3Split<'a> {
    /// The words of `text`, in order.
    pub fn new(text: &'a str) -> Llama3Split<'a> {
        Llama3Split {
            text,
            pos: 0,
            classes: classes(),
            max_digits: 3,
        }
    }

    /// The words of `text` under Qwen2's pattern: the same, but each digit its own piece.
    pub fn qwen2(text: &'a str) -> Llama3Split<'a> {
        Llama3Split {
            max_digits: 1,
            ..Llama3Split::new(text)
        }
    }

    /// The character at byte `at`, its class and its length in bytes.
    #[inline]
    fn at(&self, at: usize) -> Option<(char, Class, usize)> {
        let bytes = self.text.as_bytes();
        let &b = bytes.get(at)?;
        if b < 0x80 {
            return Some((b as char, ASCII[b as usize], 1));
        }
        let c = self.text[at..].chars().next()?;
        Some((c, self.classes.of(c), c.len_utf8()))
    }

    /// The end of the run of characters of class `class` starting at byte `at`.
    #[inline]
    fn run(&self, mut at: usize, class: Class, max_chars: usize) -> usize {
        let mut n = 0;
        while n < max_chars {
            match self.at(at) {
                Some((_, k, len)) if k == class => at += len,
                _ => break,
            }
            n += 1;
        }
        at
    }

    /// `(?i:'s|'t|'re|'ve|'m|'ll|'d)` after the apostrophe at `at`: the bytes it spans.
    fn contraction(&self, at: usize) -> Option<usize> {
        let (c1, _, l1) = self.at(at + 1)?;
        // Case-insensitive as Oniguruma folds: U+017F (long s) folds to `s`.
        match c1 {
            's' | 'S' | '\u{17F}' | 't' | 'T' | 'm' | 'M' | 'd' | 'D' => Some(1 + l1),
            'r' | 'R' | 'v' | 'V' | 'l' | 'L' => {
                let (c2, _, l2) = self.at(at + 1 + l1)?;
                let ok = match c1 {
                    'r' | 'R' | 'v' | 'V' => matches!(c2, 'e' | 'E'),
                    _ => matches!(c2, 'l' | 'L'),
                };
                ok.then_some(1 + l1 + l2)
            }
            _ => None,
        }
    }

    /// The end (byte offset) of the piece that starts at `i`.
    fn piece_end(&self, i: usize) -> usize {
        let Some((c0, k0, l0)) = self.at(i) else {
            return i;
        };
        // 1. (?i:'s|'t|'re|'ve|'m|'ll|'d)
        if c0 == '\'' {
            if let Some(len) = self.contraction(i) {
                return i + len;
            }
        }
        let next = self.at(i + l0);
        // 2. [^\r\n\p{L}\p{N}]?\p{L}+
        if k0 == Class::Letter {
            return self.run(i, Class::Letter, usize::MAX);
        }
        if matches!(k0, Class::Space | Class::Other) && matches!(next, Some((_, Class::Letter, _)))
        {
            return self.run(i + l0, Class::Letter, usize::MAX);
        }
        // 3. \p{N}{1,3} (Qwen2: \p{N})
        if k0 == Class::Number {
            return self.run(i, Class::Number, self.max_digits);
        }
        // 4. ` ?[^\s\p{L}\p{N}]+[\r\n]*`
        let other_start = if c0 == ' ' && matches!(next, Some((_, Class::Other, _))) {
            Some(i + 1)
        } else if k0 == Class::Other {
            Some(i)
        } else {
            None
        };
        if let Some(start) = other_start {
            let end = self.run(start, Class::Other, usize::MAX);
            return self.run(end, Class::Newline, usize::MAX);
        }
        // Whitespace from here on: the run of `\s` starting at `i`, noting its last newline
        // and the start of its last character.
        let mut end = i;
        let mut after_last_newline = None;
        let mut last_start = i;
        let mut chars = 0usize;
        while let Some((_, k, len)) = self.at(end) {
            match k {
                Class::Newline => after_last_newline = Some(end + len),
                Class::Space => {}
                _ => break,
            }
            last_start = end;
            end += len;
            chars += 1;
        }
        // 5. \s*[\r\n]+ : backtracking \s* to the last newline of the run.
        if let Some(after) = after_last_newline {
            return after;
        }
        // 6. \s+(?!\S) : the whole run at the end of the text, else all but its last character.
        if end == self.text.len() {
            return end;
        }
        if chars >= 2 {
            return last_start;
        }
        // 7. \s+
        end
    }
}

impl<'a> Iterator for Llama3Split<'a> {
    type Item = &'a str;

    #[inline]
    fn next(&mut self) -> Option<&'a str> {
        if self.pos >= self.text.len() {
            return None;
        }
        let start = self.pos;
        let end = self.piece_end(start);
        debug_assert!(end > start, "every position matches a non-empty piece");
        // Never loop forever, even if a bug made a piece empty: take one character.
        let end = if end > start {
            end
        } else {
            start + self.at(start).map_or(1, |(_, _, l)| l)
        };
        self.pos = end;
        Some(&self.text[start..end])
    }
}

/// Classes of the ASCII characters, so the common case needs no table lookup through `char`.
static ASCII: [Class; 128] = {
    let mut t = [Class::Other; 128];
    let mut i = 0;
    while i < 128 {
        let b = i as u8;
        t[i] = if b.is_ascii_alphabetic() {
            Class::Letter
        } else if b.is_ascii_digit() {
            Class::Number
        } else if b == b'\r' || b == b'\n' {
            Class::Newline
        } else if b == b' ' || b == b'\t' || b == 0x0B || b == 0x0C {
            Class::Space
        } else {
            Class::Other
        };
        i += 1;
    }
    t
};

#[cfg(test)]
mod tests {
    use super::*;

    fn split(s: &str) -> Vec<&str> {
        Llama3Split::new(s).collect()
    }

    #[test]
    fn pieces_follow_the_pattern() {
        assert_eq!(split("Hello world"), ["Hello", " world"]);
        assert_eq!(split("Hello  world"), ["Hello", " ", " world"]);
        assert_eq!(split(" \t\n "), [" \t\n", " "]);
        assert_eq!(
            split("I'm YOU'RE it'sup"),
            ["I", "'m", " YOU", "'RE", " it", "'s", "up"]
        );
        assert_eq!(split("12345"), ["123", "45"]);
        let qwen2: Vec<&str> = Llama3Split::qwen2("x 12345a").collect();
        assert_eq!(qwen2, ["x", " ", "1", "2", "3", "4", "5", "a"]);
        assert_eq!(split("a  \n\n  b"), ["a", "  \n\n", " ", " b"]);
        assert_eq!(split("x ...\n\ny"), ["x", " ...\n\n", "y"]);
        assert_eq!(split("trailing   "), ["trailing", "   "]);
        assert_eq!(split("f(x)"), ["f", "(x", ")"]);
        assert_eq!(split("\u{a0}word"), ["\u{a0}word"]);
        assert_eq!(split(""), Vec::<&str>::new());
    }

    #[test]
    fn ascii_table_agrees_with_unicode_tables() {
        for b in 0u8..128 {
            let c = b as char;
            let from_tables = classes().of(c);
            assert_eq!(ASCII[b as usize], from_tables, "byte {b:#04x}");
        }
        assert_eq!(class_of('é'), Class::Letter);
        assert_eq!(class_of('٣'), Class::Number);
        assert_eq!(class_of('\u{3000}'), Class::Space);
        assert_eq!(class_of('\u{85}'), Class::Space);
        assert_eq!(class_of('\u{1F600}'), Class::Other);
        assert_eq!(class_of('\u{20000}'), Class::Letter);
        assert_eq!(class_of('\u{1D7CE}'), Class::Number);
    }
}
