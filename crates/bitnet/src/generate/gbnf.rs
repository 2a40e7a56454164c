//! llama.cpp's GBNF grammars (the `grammar` field of llama-server's requests) read into the
//! Lark syntax of llguidance, the constraint engine behind [`super::constraint`]. llguidance
//! reads Lark but not GBNF; the two differ in surface only:
//!
//! | GBNF                       | Lark (llguidance)                  |
//! |----------------------------|------------------------------------|
//! | `name ::= a b \| c`        | `name: a b \| c`                   |
//! | `root`                     | `start`                            |
//! | `"text"` (C-like escapes)  | `"text"` (JSON escapes)            |
//! | `[a-z^"]`, `[^\n]`, `.`    | `/[a-z\^"]/`, `/[^\n]/`, `/(?s:.)/` |
//! | `x*`, `x+`, `x?`, `x{m,n}` | the same                           |
//! | `# comment`                | dropped                            |
//!
//! A rule ends at the end of its line unless a parenthesis is open or the line ends with `|`
//! (llama.cpp's reading). Rule names may hold `-` and capitals, which Lark reads otherwise, so
//! every name is rewritten to a lowercase one of its own. Token references (`<[123]>`,
//! `<think>`) are refused: they name tokens of llama.cpp's vocabulary handling.

use std::collections::HashMap;
use std::fmt::Write as _;

/// Why a GBNF grammar could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("GBNF grammar, line {line}: {message}")]
pub struct GbnfError {
    /// 1-based line of the problem.
    pub line: usize,
    /// What is wrong.
    pub message: String,
}

struct Reader<'a> {
    src: &'a [char],
    pos: usize,
    /// Lark name of each GBNF rule name, in order of first appearance.
    names: HashMap<String, String>,
}

impl Reader<'_> {
    fn line(&self) -> usize {
        1 + self.src[..self.pos.min(self.src.len())]
            .iter()
            .filter(|&&c| c == '\n')
            .count()
    }

    fn fail<T>(&self, message: impl Into<String>) -> Result<T, GbnfError> {
        Err(GbnfError {
            line: self.line(),
            message: message.into(),
        })
    }

    fn peek(&self) -> Option<char> {
        self.src.get(self.pos).copied()
    }

    /// Skips blanks and comments; newlines too when `newlines` (inside parentheses, after
    /// `|` or `::=`).
    fn space(&mut self, newlines: bool) {
        while let Some(c) = self.peek() {
            match c {
                ' ' | '\t' | '\r' => self.pos += 1,
                '\n' if newlines => self.pos += 1,
                '#' => {
                    while self.peek().is_some_and(|c| c != '\n') {
                        self.pos += 1;
                    }
                }
                _ => break,
            }
        }
    }

    fn is_name_char(c: char) -> bool {
        c.is_ascii_alphanumeric() || c == '-' || c == '_'
    }

    fn name(&mut self) -> Option<String> {
        let start = self.pos;
        while self.peek().is_some_and(Self::is_name_char) {
            self.pos += 1;
        }
        (self.pos > start).then(|| self.src[start..self.pos].iter().collect())
    }

    /// The Lark name of a GBNF rule name.
    fn lark_name(&mut self, name: &str) -> String {
        if name == "root" {
            return "start".to_string();
        }
        let n = self.names.len();
        self.names
            .entry(name.to_string())
            .or_insert_with(|| {
                let clean: String = name
                    .chars()
                    .map(|c| match c {
                        '-' => '_',
                        c => c.to_ascii_lowercase(),
                    })
                    .collect();
                format!("r{n}_{clean}")
            })
            .clone()
    }

    /// One escaped character after a backslash, in a literal or a class.
    fn escape(&mut self) -> Result<char, GbnfError> {
        let Some(c) = self.peek() else {
            return self.fail("a backslash at the end of the grammar");
        };
        self.pos += 1;
        let hex = |r: &mut Self, digits: usize| -> Result<char, GbnfError> {
            let s: String = r.src[r.pos..(r.pos + digits).min(r.src.len())]
                .iter()
                .collect();
            r.pos += digits;
            u32::from_str_radix(&s, 16)
                .ok()
                .filter(|_| s.len() == digits)
                .and_then(char::from_u32)
                .map_or_else(|| r.fail(format!("bad escape \\{c}{s}")), Ok)
        };
        match c {
            'n' => Ok('\n'),
            't' => Ok('\t'),
            'r' => Ok('\r'),
            '\\' | '"' | '[' | ']' | '-' | '^' => Ok(c),
            'x' => hex(self, 2),
            'u' => hex(self, 4),
            'U' => hex(self, 8),
            _ => self.fail(format!("unknown escape \\{c}")),
        }
    }

    /// `"…"` to a JSON string literal (llguidance's Lark strings are JSON strings).
    fn literal(&mut self) -> Result<String, GbnfError> {
        self.pos += 1;
        let mut text = String::new();
        loop {
            match self.peek() {
                None | Some('\n') => return self.fail("a string literal is not closed"),
                Some('"') => {
                    self.pos += 1;
                    break;
                }
                Some('\\') => {
                    self.pos += 1;
                    text.push(self.escape()?);
                }
                Some(c) => {
                    self.pos += 1;
                    text.push(c);
                }
            }
        }
        if text.is_empty() {
            // Lark has no empty string; an empty group matches nothing as well.
            return Ok("\"\"".to_string());
        }
        Ok(serde_json::Value::String(text).to_string())
    }

    /// `[…]` to a regex lexeme; every character written as `\x{…}` so that nothing in it is
    /// read as regex syntax.
    fn class(&mut self) -> Result<String, GbnfError> {
        self.pos += 1;
        let mut out = String::from("/[");
        if self.peek() == Some('^') {
            self.pos += 1;
            out.push('^');
        }
        let mut any = false;
        loop {
            let c = match self.peek() {
                None => return self.fail("a character class is not closed"),
                Some(']') => {
                    self.pos += 1;
                    break;
                }
                Some('\\') => {
                    self.pos += 1;
                    self.escape()?
                }
                Some(c) => {
                    self.pos += 1;
                    c
                }
            };
            let _ = write!(out, "\\x{{{:x}}}", c as u32);
            any = true;
            // A range `a-z` (a `-` before `]` is itself).
            if self.peek() == Some('-') && self.src.get(self.pos + 1) != Some(&']') {
                self.pos += 1;
                let end = match self.peek() {
                    None => return self.fail("a character class is not closed"),
                    Some('\\') => {
                        self.pos += 1;
                        self.escape()?
                    }
                    Some(e) => {
                        self.pos += 1;
                        e
                    }
                };
                if end < c {
                    return self.fail(format!("the range {c:?}-{end:?} is backwards"));
                }
                let _ = write!(out, "-\\x{{{:x}}}", end as u32);
            }
        }
        if !any {
            return self.fail("an empty character class matches nothing");
        }
        out.push_str("]/");
        Ok(out)
    }

    /// A repetition after an atom, if any.
    fn repetition(&mut self) -> Result<Option<String>, GbnfError> {
        match self.peek() {
            Some(c @ ('*' | '+' | '?')) => {
                self.pos += 1;
                Ok(Some(c.to_string()))
            }
            Some('{') => {
                let start = self.pos;
                while self.peek().is_some_and(|c| c != '}' && c != '\n') {
                    self.pos += 1;
                }
                if self.peek() != Some('}') {
                    return self.fail("a repetition `{…}` is not closed");
                }
                self.pos += 1;
                let inner: String = self.src[start + 1..self.pos - 1]
                    .iter()
                    .filter(|c| !c.is_whitespace())
                    .collect();
                let ok = match inner.split_once(',') {
                    None => inner.parse::<u32>().is_ok(),
                    Some((lo, hi)) => {
                        lo.parse::<u32>().is_ok()
                            && (hi.is_empty()
                                || hi
                                    .parse::<u32>()
                                    .is_ok_and(|h| h >= lo.parse().unwrap_or(0)))
                    }
                };
                if !ok {
                    return self.fail(format!("bad repetition {{{inner}}}"));
                }
                Ok(Some(format!("{{{inner}}}")))
            }
            _ => Ok(None),
        }
    }

    /// Alternatives up to the end of the rule (`nested`: inside parentheses).
    fn alternatives(&mut self, nested: bool) -> Result<String, GbnfError> {
        let mut out = self.sequence(nested)?;
        while self.peek() == Some('|') {
            self.pos += 1;
            self.space(true);
            out.push_str(" | ");
            out.push_str(&self.sequence(nested)?);
        }
        Ok(out)
    }

    fn sequence(&mut self, nested: bool) -> Result<String, GbnfError> {
        let mut items: Vec<String> = Vec::new();
        loop {
            self.space(nested);
            let atom = match self.peek() {
                Some('"') => self.literal()?,
                Some('[') => self.class()?,
                Some('.') => {
                    self.pos += 1;
                    "/(?s:.)/".to_string()
                }
                Some('(') => {
                    self.pos += 1;
                    self.space(true);
                    let inner = self.alternatives(true)?;
                    self.space(true);
                    if self.peek() != Some(')') {
                        return self.fail("a `(` is not closed");
                    }
                    self.pos += 1;
                    format!("({inner})")
                }
                Some('<') => {
                    return self
                        .fail("token references (`<…>`) are not supported: write the text instead")
                }
                Some(c) if Self::is_name_char(c) => {
                    let start = self.pos;
                    let name = self.name().unwrap_or_default();
                    // The next rule's head ends this one.
                    let save = self.pos;
                    self.space(false);
                    if self.src[self.pos..].starts_with(&[':', ':', '=']) {
                        self.pos = start;
                        break;
                    }
                    self.pos = save;
                    self.lark_name(&name)
                }
                _ => break,
            };
            let rep = self.repetition()?;
            items.push(match rep {
                Some(r) => format!("{atom}{r}"),
                None => atom,
            });
        }
        if items.is_empty() {
            // An empty alternative: Lark writes it as an empty string literal.
            return Ok("\"\"".to_string());
        }
        Ok(items.join(" "))
    }
}

/// Converts a GBNF grammar (its rule `root` is the whole output) to llguidance's Lark.
pub fn gbnf_to_lark(gbnf: &str) -> Result<String, GbnfError> {
    let src: Vec<char> = gbnf.chars().collect();
    let mut r = Reader {
        src: &src,
        pos: 0,
        names: HashMap::new(),
    };
    let mut rules: Vec<(String, String)> = Vec::new();
    let mut defined: HashMap<String, usize> = HashMap::new();
    loop {
        r.space(true);
        if r.peek().is_none() {
            break;
        }
        let Some(name) = r.name() else {
            return r.fail(format!(
                "expected a rule name, found {:?}",
                r.peek().unwrap_or(' ')
            ));
        };
        r.space(false);
        if !r.src[r.pos..].starts_with(&[':', ':', '=']) {
            return r.fail(format!("expected `::=` after the rule name `{name}`"));
        }
        r.pos += 3;
        r.space(true);
        let body = r.alternatives(false)?;
        r.space(false);
        match r.peek() {
            None | Some('\n') => {}
            Some(c) => return r.fail(format!("unexpected {c:?} in the rule `{name}`")),
        }
        let line = r.line();
        if defined.insert(name.clone(), line).is_some() {
            return r.fail(format!("the rule `{name}` is defined twice"));
        }
        let lark = r.lark_name(&name);
        rules.push((lark, body));
    }
    if !defined.contains_key("root") {
        return Err(GbnfError {
            line: 1,
            message: "the grammar has no `root` rule".to_string(),
        });
    }
    if let Some((name, _)) = r
        .names
        .iter()
        .filter(|(n, _)| !defined.contains_key(*n))
        .min_by_key(|(_, lark)| (*lark).clone())
    {
        return Err(GbnfError {
            line: 1,
            message: format!("the rule `{name}` is used but never defined"),
        });
    }
    let mut out = String::new();
    for (name, body) in rules {
        let _ = writeln!(out, "{name}: {body}");
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_literals_classes_and_repetitions() {
        let lark = gbnf_to_lark(
            "root ::= greeting \" \" name-list  # a comment\n\
             greeting ::= \"hi\" | \"ho\\n\"\n\
             name-list ::= [A-Z] [a-z]{1,4} (\", \" [^\\n\"]+)*\n",
        )
        .unwrap();
        assert_eq!(
            lark,
            "start: r0_greeting \" \" r1_name_list\n\
             r0_greeting: \"hi\" | \"ho\\n\"\n\
             r1_name_list: /[\\x{41}-\\x{5a}]/ /[\\x{61}-\\x{7a}]/{1,4} (\", \" /[^\\x{a}\\x{22}]/+)*\n"
        );
    }

    #[test]
    fn rules_continue_in_parentheses_and_after_a_bar() {
        let lark = gbnf_to_lark("root ::= (\n  \"a\"\n  | \"b\"\n) |\n  \"c\"\nx ::= .\n").unwrap();
        assert!(
            lark.starts_with("start: (\"a\" | \"b\") | \"c\"\n"),
            "{lark}"
        );
        assert!(lark.contains(": /(?s:.)/"), "{lark}");
    }

    #[test]
    fn mistakes_are_named_with_their_line() {
        for (g, text, line) in [
            ("x ::= \"a\"", "no `root` rule", 1),
            ("root ::= y", "`y` is used but never defined", 1),
            ("root ::= \"a\nb\"", "not closed", 1),
            ("root ::= \"a\"\nroot ::= \"b\"", "defined twice", 2),
            ("root ::= [z-a]", "backwards", 1),
            ("root ::= <[12]>", "token references", 1),
            ("root ::= \"a\"{2,1}", "bad repetition", 1),
            ("root = \"a\"", "expected `::=`", 1),
            ("root ::= \"\\q\"", "unknown escape", 1),
        ] {
            let e = gbnf_to_lark(g).unwrap_err();
            assert!(e.message.contains(text), "{g}: {e}");
            assert_eq!(e.line, line, "{g}: {e}");
        }
    }
}
