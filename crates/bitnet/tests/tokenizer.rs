//! The Llama 3 tokenizer against Hugging Face: fixed cases, the visible model's comparison
//! list, thousands of generated strings against the `tokenizers` crate, streaming decode, and
//! chat templates.
//!
//! x86-64 only: the `tokenizers` crate is an x86-64-only dev-dependency (kept out of the
//! aarch64 test build); the tokenizer is plain integer and string code, the same everywhere.

#![cfg(target_arch = "x86_64")]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use bitnet::formats::gguf::{GgufFile, Value};
use bitnet::tokenizer::{
    char_to_byte, ChatMessage, ChatTemplate, EncodeOptions, Llama3Split, PreTokenizerSource,
    Tokenizer, TokenizerError,
};

fn testdata(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../testdata")
        .join(rel)
}

fn load(path: &Path) -> Tokenizer {
    Tokenizer::load(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn llama3_gguf() -> &'static Tokenizer {
    static T: OnceLock<Tokenizer> = OnceLock::new();
    T.get_or_init(|| load(&testdata("tokenizer/llama3-vocab.gguf")))
}

fn llama3_json() -> &'static Tokenizer {
    static T: OnceLock<Tokenizer> = OnceLock::new();
    T.get_or_init(|| load(&testdata("tokenizer/llama3-tokenizer.json")))
}

fn hf_llama3() -> &'static tokenizers::Tokenizer {
    static T: OnceLock<tokenizers::Tokenizer> = OnceLock::new();
    T.get_or_init(|| {
        tokenizers::Tokenizer::from_file(testdata("tokenizer/llama3-tokenizer.json"))
            .unwrap_or_else(|e| panic!("tokenizers crate: {e}"))
    })
}

const PLAIN: EncodeOptions = EncodeOptions {
    add_bos: false,
    parse_special: false,
};
const PARSE: EncodeOptions = EncodeOptions {
    add_bos: false,
    parse_special: true,
};

fn cases() -> Vec<(String, Vec<u32>)> {
    let path = testdata("tokenizer/tokenizer-cases.jsonl");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            let v: serde_json::Value =
                serde_json::from_str(line).unwrap_or_else(|e| panic!("{line}: {e}"));
            let text = v["text"].as_str().map(str::to_string);
            let ids = v["ids"].as_array().map(|a| {
                a.iter()
                    .filter_map(|x| x.as_u64().map(|x| x as u32))
                    .collect()
            });
            (text.unwrap_or_default(), ids.unwrap_or_default())
        })
        .collect()
}

fn check_cases(tok: &Tokenizer) {
    let cases = cases();
    assert_eq!(cases.len(), 94);
    let mut wrong = Vec::new();
    for (text, ids) in &cases {
        let got = tok.encode(text, PARSE);
        if &got != ids {
            wrong.push(format!("{text:?}\n  want {ids:?}\n  got  {got:?}"));
        }
        assert_eq!(tok.decode(ids).ok().as_deref(), Some(text.as_str()));
    }
    assert!(
        wrong.is_empty(),
        "{} of {} cases differ:\n{}",
        wrong.len(),
        cases.len(),
        wrong.join("\n")
    );
}

#[test]
fn cases_match_hf_from_gguf() {
    let tok = llama3_gguf();
    // The file has no tokenizer.ggml.pre, like the official 2B-4T file.
    assert_eq!(
        tok.pre_tokenizer_source(),
        &PreTokenizerSource::InferredFromLlama3Vocab
    );
    check_cases(tok);
}

#[test]
fn cases_match_hf_from_tokenizer_json() {
    let tok = llama3_json();
    assert_eq!(
        tok.pre_tokenizer_source(),
        &PreTokenizerSource::TokenizerJson
    );
    check_cases(tok);
}

#[test]
fn special_ids_bos_and_end_of_generation() {
    let g = llama3_gguf();
    assert_eq!(g.vocab_size(), 128_256);
    assert_eq!(g.bos_id(), Some(128_000));
    assert_eq!(g.eos_id(), Some(128_009));
    assert!(g.add_bos_token());
    // This vocabulary is Llama 3.0's: no <|eom_id|> (128008 is a reserved token).
    assert_eq!(g.token_str(128_008), Some("<|reserved_special_token_4|>"));
    assert_eq!(g.end_of_generation(), [128_009]);
    assert!(g.is_end_of_generation(128_009) && !g.is_end_of_generation(128_001));
    let with_bos = EncodeOptions {
        add_bos: true,
        parse_special: false,
    };
    assert_eq!(g.encode("Hello world", with_bos), [128_000, 9906, 1917]);

    let j = llama3_json();
    // This tokenizer.json's post-processor adds no BOS; its eos is <|end_of_text|>.
    assert!(!j.add_bos_token());
    assert_eq!(j.bos_id(), Some(128_000));
    assert_eq!(j.end_of_generation(), [128_001, 128_009]);
}

#[test]
fn special_token_text_is_plain_unless_asked() {
    for tok in [llama3_gguf(), llama3_json()] {
        let text = "Hi<|eot_id|>";
        assert_eq!(tok.encode(text, PARSE), [13347, 128_009]);
        let plain = tok.encode(text, PLAIN);
        assert!(!plain.contains(&128_009));
        assert_eq!(tok.decode(&plain).ok().as_deref(), Some(text));
        // The same as Hugging Face with special tokens encoded as text.
        let mut hf = hf_llama3().clone();
        hf.set_encode_special_tokens(true);
        let want = hf.encode(text, false).map(|e| e.get_ids().to_vec()).ok();
        assert_eq!(Some(plain), want);
    }
}

/// Reads a Python `repr` string ('...' or "...") from `tokenize-compare.txt`.
fn python_str(s: &str) -> String {
    let quote = s.chars().next().unwrap_or('\'');
    let inner = &s[1..s.len() - 1];
    let mut out = String::new();
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('n') => out.push('\n'),
            Some('t') => out.push('\t'),
            Some('r') => out.push('\r'),
            Some(c) => out.push(c),
            None => {}
        }
    }
    assert!(quote == '\'' || quote == '"');
    out
}

fn parse_ids(s: &str) -> Vec<u32> {
    s.trim()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .split(',')
        .filter(|x| !x.trim().is_empty())
        .map(|x| x.trim().parse().unwrap_or_else(|e| panic!("{x}: {e}")))
        .collect()
}

#[test]
fn visible_model_matches_hf_list() {
    let path = testdata("visible/tokenize-compare.txt");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut cases = Vec::new();
    let mut current: Option<String> = None;
    for line in text.lines() {
        let t = line.trim();
        if let Some(rest) = t.strip_prefix('[') {
            if let Some((_, s)) = rest.split_once("] ") {
                current = Some(python_str(s));
            }
        } else if let Some(ids) = t.strip_prefix("HF") {
            let ids = ids.trim_start().trim_start_matches(':');
            if let Some(s) = current.take() {
                cases.push((s, parse_ids(ids)));
            }
        }
    }
    assert_eq!(cases.len(), 20);
    let gguf = load(&testdata("visible/model-i2_s.gguf"));
    let json = load(&testdata("visible/tokenizer.json"));
    assert_eq!(
        gguf.pre_tokenizer_source(),
        &PreTokenizerSource::GgufKey("llama-bpe".into())
    );
    for tok in [&gguf, &json] {
        assert!(tok.add_bos_token());
        assert_eq!(tok.bos_id(), Some(1021));
        for (s, ids) in &cases {
            assert_eq!(&tok.encode(s, PARSE), ids, "{s:?} ({})", tok.origin());
            let with_bos = tok.encode(
                s,
                EncodeOptions {
                    add_bos: true,
                    parse_special: true,
                },
            );
            assert_eq!(with_bos[0], 1021);
            assert_eq!(&with_bos[1..], &ids[..]);
            assert_eq!(tok.decode(ids).ok().as_deref(), Some(s.as_str()));
        }
    }
    assert_eq!(gguf.end_of_generation(), [1023]);
}

/// xorshift64*: a small deterministic generator for test strings.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

/// Code point ranges to draw from: many scripts, digits of several kinds, whitespace of every
/// kind the pattern distinguishes, marks, emoji and their joiners.
const RANGES: &[(u32, u32)] = &[
    (0x20, 0x7E),       // ASCII
    (0x61, 0x7A),       // ASCII letters, again (words)
    (0x30, 0x39),       // ASCII digits
    (0xC0, 0x17F),      // Latin-1, Latin Extended-A (incl. U+017F long s)
    (0x300, 0x36F),     // combining marks
    (0x391, 0x3C9),     // Greek
    (0x410, 0x44F),     // Cyrillic
    (0x5D0, 0x5EA),     // Hebrew
    (0x620, 0x64A),     // Arabic
    (0x660, 0x669),     // Arabic-Indic digits
    (0x900, 0x97F),     // Devanagari (letters, signs, digits)
    (0xE01, 0xE5B),     // Thai
    (0x1100, 0x1112),   // Hangul jamo
    (0xAC00, 0xAC40),   // Hangul syllables
    (0x3041, 0x30FA),   // Hiragana, Katakana
    (0x4E00, 0x4F00),   // CJK
    (0xFF01, 0xFF5E),   // fullwidth forms
    (0x2000, 0x206F),   // general punctuation, spaces, ZWJ, line/paragraph separators
    (0x2070, 0x2189),   // super/subscripts, currency, letterlike, number forms
    (0x2460, 0x24FF),   // enclosed alphanumerics
    (0x1F300, 0x1F64F), // emoji
    (0x1F680, 0x1F6FF), // transport emoji
    (0x1F900, 0x1F9FF), // more emoji
    (0x1F1E6, 0x1F1FF), // regional indicators
    (0x1F3FB, 0x1F3FF), // skin tones
    (0xFE00, 0xFE0F),   // variation selectors
    (0x1D400, 0x1D7FF), // mathematical alphanumerics (astral letters and digits)
    (0x20000, 0x20100), // CJK extension B
    (0x0, 0x1F),        // controls
];

const PIECES: &[&str] = &[
    " ",
    "  ",
    "   ",
    "\t",
    "\n",
    "\n\n",
    "\r\n",
    "\r",
    " \n ",
    "\u{a0}",
    "\u{3000}",
    "\u{85}",
    "\u{b}",
    "\u{c}",
    "\u{2028}",
    "'s",
    "'S",
    "'t",
    "'re",
    "'VE",
    "'m",
    "'ll",
    "'LL",
    "'d",
    "'ſ",
    "'x",
    "’s",
    "don't",
    "I'M",
    "the",
    " the",
    "Hello",
    " world",
    "12345",
    "3.14",
    "1,000",
    "...",
    "!!!",
    "->",
    "::",
    "<|eot_id|>",
    "<|begin_of_text|>",
    "<|eot_id",
    "<|reserved_special_token_12|>",
    "<|",
    "|>",
    "é",
    "e\u{301}",
    "👩\u{200d}👩\u{200d}👧",
    "🇺🇸",
    "👍🏽",
    "你好",
    "こんにちは",
    "Привет",
    "مرحبا",
    "नमस्ते",
    "  \t ",
    "aaaaaaaaaaaa",
    "{\"k\": [1, 2]}",
    "fn main() {}",
    "x = y + 1;",
    "https://example.com/a?b=1",
];

fn random_string(rng: &mut Rng) -> String {
    let mut s = String::new();
    let n = 1 + rng.below(24);
    for _ in 0..n {
        match rng.below(3) {
            0 => s.push_str(rng.pick::<&str>(PIECES)),
            _ => {
                let run = 1 + rng.below(6);
                let &(lo, hi) = rng.pick(RANGES);
                for _ in 0..run {
                    let c = lo + rng.below((hi - lo + 1) as usize) as u32;
                    s.push(char::from_u32(c).unwrap_or('?'));
                }
            }
        }
    }
    s
}

/// Any Unicode scalar value: Unicode versions may differ here (see `random_code_points_…`).
fn random_any_string(rng: &mut Rng) -> String {
    let n = 1 + rng.below(12);
    (0..n)
        .map(|_| loop {
            let c = match rng.below(4) {
                0 => rng.below(0x80) as u32,
                1 => rng.below(0x3000) as u32,
                2 => rng.below(0x10000) as u32,
                _ => rng.below(0x110000) as u32,
            };
            if let Some(c) = char::from_u32(c) {
                break c;
            }
        })
        .collect()
}

fn hf_ids(hf: &tokenizers::Tokenizer, s: &str) -> Vec<u32> {
    hf.encode(s, false)
        .map(|e| e.get_ids().to_vec())
        .unwrap_or_else(|e| panic!("tokenizers crate on {s:?}: {e}"))
}

/// Edge cases of the split pattern, each checked against the tokenizers crate.
const EDGE_CASES: &[&str] = &[
    "it'ſok",
    "IT'SOK",
    "'ſ'ſx",
    "'sup",
    "'llama",
    "'REd",
    "''s",
    "x'\u{17F}t",
    "a\u{a0}b",
    "a\u{a0}\u{a0}b",
    "a \u{a0}b",
    "\u{3000}x",
    "x\u{2028}y",
    "x\u{85}y",
    "\u{b}\u{c}x",
    "a\r\r\nb",
    " \r \n x",
    "  \n\t  x",
    "x  ",
    "x \t",
    "\t\tx",
    " !x",
    "  !x",
    " !\n\nx",
    "!!\r\n\r\n",
    "1234567",
    "١٢٣٤",
    "x²³",
    "Ⅻ",
    "½x",
    "e\u{301}e\u{301}",
    "\u{301}x",
    "ab\u{301}cd",
    "👩\u{200d}💻x",
    "\u{feff}x",
    "<|eot_id|><|eot_id|>",
    "<|begin_of_text|>x",
    "x<|eot_id",
    "\u{1d400}\u{1d7ce}",
    // Words that are tokens but that the merges alone would not reach (ignore_merges).
    "làm việc",
    "gelmektedir",
    "характер",
    "Việt Nam",
    "oluşturuldu",
];

#[test]
fn edge_cases_match_tokenizers_crate() {
    let hf = hf_llama3();
    for tok in [llama3_gguf(), llama3_json()] {
        for s in EDGE_CASES {
            assert_eq!(our_pieces(s), hf_pieces(hf, s), "{s:?}");
            assert_eq!(tok.encode(s, PARSE), hf_ids(hf, s), "{s:?}");
            assert_eq!(tok.decode(&tok.encode(s, PARSE)).ok().as_deref(), Some(*s));
        }
    }
}

/// The tokenizers crate's pre-tokenization of `s` (its pieces mapped back from the byte-level
/// alphabet), to compare with ours piece by piece.
fn hf_pieces(hf: &tokenizers::Tokenizer, s: &str) -> Vec<String> {
    use tokenizers::PreTokenizer;
    let Some(pre) = hf.get_pre_tokenizer() else {
        panic!("tokenizer.json has a pre_tokenizer")
    };
    let mut pre_tokenized = tokenizers::PreTokenizedString::from(s);
    pre.pre_tokenize(&mut pre_tokenized)
        .unwrap_or_else(|e| panic!("{e}"));
    pre_tokenized
        .get_splits(
            tokenizers::OffsetReferential::Original,
            tokenizers::OffsetType::Byte,
        )
        .into_iter()
        .map(|(piece, _, _)| {
            let bytes: Vec<u8> = piece.chars().filter_map(char_to_byte).collect();
            String::from_utf8_lossy(&bytes).into_owned()
        })
        .collect()
}

fn our_pieces(s: &str) -> Vec<String> {
    Llama3Split::new(s).map(str::to_string).collect()
}

/// Every vocabulary token that is one pre-token encodes to itself, as in Hugging Face with
/// `ignore_merges` (588 of them are not reachable through the merges).
#[test]
fn every_word_token_encodes_to_itself() {
    let hf = hf_llama3();
    let tok = llama3_gguf();
    let mut checked = 0;
    for id in 0..128_000u32 {
        let Some(word) = tok
            .token_bytes(id)
            .ok()
            .and_then(|b| std::str::from_utf8(b).ok())
        else {
            continue;
        };
        if Llama3Split::new(word).count() != 1 {
            continue;
        }
        assert_eq!(tok.encode(word, PLAIN), [id], "{word:?}");
        assert_eq!(hf_ids(hf, word), [id], "{word:?}");
        checked += 1;
    }
    assert!(checked > 120_000, "{checked}");
}

const RANDOM_STRINGS: usize = 5000;

#[test]
fn random_strings_match_tokenizers_crate() {
    let hf = hf_llama3();
    let mut hf_plain = hf.clone();
    hf_plain.set_encode_special_tokens(true);
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut wrong = Vec::new();
    for i in 0..RANDOM_STRINGS {
        let s = random_string(&mut rng);
        let want = hf_ids(hf, &s);
        let want_plain = hf_ids(&hf_plain, &s);
        if !s.contains("<|") {
            let (ours, theirs) = (our_pieces(&s), hf_pieces(hf, &s));
            if ours != theirs {
                wrong.push(format!(
                    "#{i} {s:?} split\n  hf   {theirs:?}\n  ours {ours:?}"
                ));
            }
        }
        for tok in [llama3_gguf(), llama3_json()] {
            let got = tok.encode(&s, PARSE);
            if got != want {
                wrong.push(format!(
                    "#{i} {s:?} parse ({})\n  hf   {want:?}\n  ours {got:?}",
                    tok.origin()
                ));
            }
            let got_plain = tok.encode(&s, PLAIN);
            if got_plain != want_plain {
                wrong.push(format!(
                    "#{i} {s:?} plain ({})\n  hf   {want_plain:?}\n  ours {got_plain:?}",
                    tok.origin()
                ));
            }
            assert_eq!(
                tok.decode(&got).ok().as_deref(),
                Some(s.as_str()),
                "round trip"
            );
            assert_eq!(
                tok.decode(&got_plain).ok().as_deref(),
                Some(s.as_str()),
                "round trip"
            );
        }
        if wrong.len() > 20 {
            break;
        }
    }
    assert!(
        wrong.is_empty(),
        "differences from the tokenizers crate:\n{}",
        wrong.join("\n")
    );
}

/// Uniformly drawn code points, including ones assigned only in recent Unicode versions; our
/// classes come from regex-syntax's tables, the tokenizers crate's from Oniguruma's.
#[test]
fn random_code_points_match_tokenizers_crate() {
    let hf = hf_llama3();
    let tok = llama3_json();
    let mut rng = Rng(0xD1B5_4A32_D192_ED03);
    let mut wrong = Vec::new();
    for i in 0..2000 {
        let s = random_any_string(&mut rng);
        let want = hf_ids(hf, &s);
        let got = tok.encode(&s, PARSE);
        if got != want {
            wrong.push(format!("#{i} {s:?}\n  hf   {want:?}\n  ours {got:?}"));
        }
        if !s.contains("<|") && our_pieces(&s) != hf_pieces(hf, &s) {
            wrong.push(format!(
                "#{i} {s:?} split\n  hf   {:?}\n  ours {:?}",
                hf_pieces(hf, &s),
                our_pieces(&s)
            ));
        }
        assert_eq!(
            tok.decode(&got).ok().as_deref(),
            Some(s.as_str()),
            "round trip"
        );
    }
    assert!(
        wrong.is_empty(),
        "differences from the tokenizers crate:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn streaming_decode_never_splits_a_character() {
    let tok = llama3_gguf();
    let mut rng = Rng(42);
    for _ in 0..500 {
        let s = random_string(&mut rng);
        let ids = tok.encode(&s, PARSE);
        let mut decoder = tok.stream_decoder();
        let mut out = String::new();
        for &id in &ids {
            let piece = decoder.push(id).unwrap_or_else(|e| panic!("{e}"));
            assert!(
                !piece.contains('\u{FFFD}') || s.contains('\u{FFFD}'),
                "{s:?}"
            );
            out.push_str(&piece);
        }
        assert!(!decoder.has_pending());
        out.push_str(&decoder.finish());
        assert_eq!(out, s);
    }
    // An emoji is several byte tokens: nothing comes out until the last one.
    let ids = tok.encode("🤖", PLAIN);
    assert_eq!(ids, [9468, 97, 244]);
    let mut d = tok.stream_decoder();
    let pieces: Vec<String> = ids.iter().filter_map(|&id| d.push(id).ok()).collect();
    assert_eq!(pieces, ["", "", "🤖"]);
    // Cut off mid-character: the rest comes out as U+FFFD, as decode() gives it.
    let mut d = tok.stream_decoder();
    assert_eq!(d.push(9468).ok().as_deref(), Some(""));
    assert_eq!(d.finish(), "\u{FFFD}");
    assert_eq!(tok.decode(&[9468]).ok().as_deref(), Some("\u{FFFD}"));
}

#[test]
fn bad_ids_and_bad_files_are_errors() {
    let tok = llama3_gguf();
    assert!(matches!(
        tok.decode(&[1, 128_256]),
        Err(TokenizerError::UnknownId { id: 128_256, .. })
    ));
    assert!(tok.stream_decoder().push(u32::MAX).is_err());

    let file =
        GgufFile::open(testdata("visible/model-i2_s.gguf")).unwrap_or_else(|e| panic!("{e}"));
    let mut md = file.metadata().clone();
    md.set("tokenizer.ggml.pre", Value::String("deepseek-llm".into()));
    let err = Tokenizer::from_metadata(&md, "x.gguf").err();
    assert!(
        matches!(err, Some(TokenizerError::UnsupportedPreTokenizer { .. })),
        "{err:?}"
    );
    md.remove("tokenizer.ggml.pre");
    let err = Tokenizer::from_metadata(&md, "x.gguf").err();
    assert!(
        matches!(err, Some(TokenizerError::MissingPreTokenizer { .. })),
        "{err:?}"
    );
    md.set("tokenizer.ggml.pre", Value::String("llama-bpe".into()));
    md.set("tokenizer.ggml.model", Value::String("bert".into()));
    let err = Tokenizer::from_metadata(&md, "x.gguf").err();
    assert!(
        matches!(err, Some(TokenizerError::UnsupportedModel { .. })),
        "{err:?}"
    );
    md.set("tokenizer.ggml.model", Value::String("gpt2".into()));
    md.set(
        "tokenizer.ggml.merges",
        Value::Array(
            bitnet::formats::gguf::ValueType::String,
            vec![Value::String("nospace".into())],
        ),
    );
    let err = Tokenizer::from_metadata(&md, "x.gguf")
        .err()
        .map(|e| e.to_string());
    assert_eq!(
        err.as_deref(),
        Some("x.gguf: `tokenizer.ggml.merges[0]`: \"nospace\" is not a merge \"left right\"")
    );
    md.remove("tokenizer.ggml.merges");
    let err = Tokenizer::from_metadata(&md, "x.gguf")
        .err()
        .map(|e| e.to_string());
    assert_eq!(
        err.as_deref(),
        Some("x.gguf: metadata key `tokenizer.ggml.merges` is missing")
    );
    md.set("tokenizer.ggml.bos_token_id", Value::U32(5000));
    let err = Tokenizer::from_metadata(&md, "x.gguf")
        .err()
        .map(|e| e.to_string());
    assert_eq!(
        err.as_deref(),
        Some("x.gguf: `tokenizer.ggml.bos_token_id`: 5000 is outside the vocabulary (1024 tokens)")
    );

    let missing = Tokenizer::load(testdata("visible/no-such-tokenizer.json")).err();
    assert!(matches!(missing, Some(TokenizerError::Io { .. })));
}

// ---- chat templates ----

fn three_turns() -> Vec<ChatMessage> {
    vec![
        ChatMessage::system("You are a helpful assistant."),
        ChatMessage::user("Hello"),
        ChatMessage::assistant("Hi! How can I help?"),
        ChatMessage::user("  What is 2+2?\n"),
    ]
}

const THREE_TURNS_PROMPT: &str = "System: You are a helpful assistant.<|eot_id|>\
User: Hello<|eot_id|>\
Assistant: Hi! How can I help?<|eot_id|>\
User: What is 2+2?<|eot_id|>\
Assistant: ";

#[test]
fn chat_2b4t_template_from_gguf() {
    let tok = llama3_gguf();
    let template = tok.chat_template().unwrap_or_else(|e| panic!("{e}"));
    // llama3-vocab.gguf carries the model's own Hugging Face template, rendered as Jinja.
    assert!(!template.is_builtin());
    let prompt = template
        .render(&three_turns(), true)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(prompt, THREE_TURNS_PROMPT);
    let without = template
        .render(&three_turns(), false)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(without, THREE_TURNS_PROMPT.trim_end_matches("Assistant: "));

    let ids = tok.encode_chat(&prompt);
    assert_eq!(ids[0], 128_000);
    assert_eq!(ids.iter().filter(|&&i| i == 128_009).count(), 4);
    assert_eq!(&ids[ids.len() - 3..], [72803, 25, 220]); // "Assistant", ":", " "
    assert_eq!(
        tok.decode(&ids).ok(),
        Some(format!("<|begin_of_text|>{prompt}"))
    );
    // A prompt that already starts with BOS does not get a second one.
    let again = tok.encode_chat(&format!("<|begin_of_text|>{prompt}"));
    assert_eq!(again, ids);

    // The spec's example.
    let example = template
        .render(
            &[
                ChatMessage::system("You are a helpful assistant."),
                ChatMessage::user("Hello"),
            ],
            true,
        )
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        tok.decode(&tok.encode_chat(&example)).ok().as_deref(),
        Some("<|begin_of_text|>System: You are a helpful assistant.<|eot_id|>User: Hello<|eot_id|>Assistant: ")
    );
}

#[test]
fn chat_builtin_format_equals_the_models_template() {
    let tok = llama3_gguf();
    let builtin = ChatTemplate::bitnet("<|begin_of_text|>", "<|eot_id|>", "<|eot_id|>");
    assert!(builtin.is_builtin());
    let jinja = tok.chat_template().unwrap_or_else(|e| panic!("{e}"));
    for n in 1..=4 {
        let messages = &three_turns()[..n];
        for gen in [false, true] {
            assert_eq!(
                builtin.render(messages, gen).ok(),
                jinja.render(messages, gen).ok(),
                "{n} messages, generation prompt {gen}"
            );
        }
    }
}

#[test]
fn chat_bitnet_cpp_marker_uses_builtin_format() {
    // The visible GGUF and the demo model carry bitnet.cpp's `BITNET` marker template.
    for path in [
        testdata("visible/model-i2_s.gguf"),
        testdata("../models/bitnet-shakespeare-7m-i2_s.gguf"),
    ] {
        let tok = load(&path);
        assert!(tok
            .chat_template_source()
            .is_some_and(|t| t.contains("BITNET")));
        let template = tok.chat_template().unwrap_or_else(|e| panic!("{e}"));
        assert!(template.is_builtin(), "{}", path.display());
        let prompt = template
            .render(&three_turns(), true)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(prompt, THREE_TURNS_PROMPT);
        let ids = tok.encode_chat(&prompt);
        assert_eq!(Some(ids[0]), tok.bos_id());
        let eot = tok.token_id("<|eot_id|>");
        assert_eq!(ids.iter().filter(|&&i| Some(i) == eot).count(), 4);
    }
}

#[test]
fn chat_hf_folders() {
    // visible/: tokenizer_config.json has the 2B-4T template.
    let tok = load(&testdata("visible"));
    let template = tok.chat_template().unwrap_or_else(|e| panic!("{e}"));
    assert!(!template.is_builtin());
    assert_eq!(
        template.render(&three_turns(), true).ok().as_deref(),
        Some(THREE_TURNS_PROMPT)
    );
    assert_eq!(tok.eos_id(), Some(1023));
    assert_eq!(tok.end_of_generation(), [1023]);
    // The same via the tokenizer.json path (its sibling config is read too).
    let tok = load(&testdata("visible/tokenizer.json"));
    assert!(tok.chat_template_source().is_some());

    // demo/hf: no template in its config: the built-in format.
    let tok = load(&testdata("demo/hf"));
    let template = tok.chat_template().unwrap_or_else(|e| panic!("{e}"));
    assert!(template.is_builtin());
    assert_eq!(
        template.render(&three_turns(), true).ok().as_deref(),
        Some(THREE_TURNS_PROMPT)
    );
    let demo = load(&testdata("../models/bitnet-shakespeare-7m-i2_s.gguf"));
    let text = "To be, or not to be: that is the question.\n  Whether 'tis nobler";
    assert_eq!(tok.encode(text, PARSE), demo.encode(text, PARSE));
}

#[test]
fn chat_llama3_instruct_style_template() {
    // Jinja features HF templates use: trim_blocks/lstrip_blocks, loop variables, `.strip()`,
    // `raise_exception`, `bos_token`.
    let source = "{{ bos_token }}{% for message in messages %}\n\
        {% if message['role'] not in ['system', 'user', 'assistant'] %}{{ raise_exception('bad role') }}{% endif %}\n\
        {% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'].strip() + '<|eot_id|>' %}\n\
        {{ content }}{% endfor %}\n\
        {% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}";
    let t = ChatTemplate::new(
        Some(source),
        "<|begin_of_text|>",
        "<|eot_id|>",
        "<|eot_id|>",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let out = t
        .render(
            &[ChatMessage::system(" Be brief. "), ChatMessage::user("Hi")],
            true,
        )
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        out,
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>\
         <|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>\
         <|start_header_id|>assistant<|end_header_id|>\n\n"
    );
    let err = t
        .render(&[ChatMessage::new("tool", "x")], false)
        .err()
        .map(|e| e.to_string());
    assert!(err.is_some_and(|e| e.contains("bad role")));
    // BOS already in the rendered text: encode_chat adds no second one.
    let ids = llama3_gguf().encode_chat(&out);
    assert_eq!(ids.iter().filter(|&&i| i == 128_000).count(), 1);
}

/// Falcon3's and Falcon-E's GGUFs name their pre-tokenizer `falcon3` / `falcon_e`: llama.cpp
/// (and bitnet.cpp's fork) splits them with Llama 3's rules over the model's own byte-level
/// vocabulary. Here the Llama 3 vocabulary under those names must encode exactly as under
/// `llama-bpe`, and a Falcon3-shaped chat template (`<|system|>`/`<|user|>`/`<|assistant|>`
/// lines, eos after assistant turns) renders.
#[test]
fn falcon3_and_falcon_e_pre_tokenizer_names_load_with_llama3_rules() {
    let file = GgufFile::open(testdata("tokenizer/llama3-vocab.gguf")).unwrap();
    let falcon3_template = "{% for message in messages %}\
        {% if message['role'] == 'system' %}{{ '<|system|>\\n' + message['content'] + '\\n' }}\
        {% elif message['role'] == 'user' %}{{ '<|user|>\\n' + message['content'] + '\\n' }}\
        {% elif message['role'] == 'assistant' %}{{ '<|assistant|>\\n' + message['content'] + eos_token + '\\n' }}\
        {% endif %}{% endfor %}\
        {% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}";
    for name in ["falcon3", "falcon_e"] {
        let mut md = file.metadata().clone();
        md.set("tokenizer.ggml.pre", Value::String(name.into()));
        md.set(
            "tokenizer.chat_template",
            Value::String(falcon3_template.into()),
        );
        md.set("tokenizer.ggml.eos_token_id", Value::U32(128_001));
        let tok = Tokenizer::from_metadata(&md, "falcon.gguf").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            tok.pre_tokenizer_source(),
            &PreTokenizerSource::GgufKey(name.into())
        );
        check_cases(&tok);
        let prompt = tok
            .chat_template()
            .unwrap()
            .render(
                &[
                    ChatMessage::system("Be brief."),
                    ChatMessage::user("Hi"),
                    ChatMessage::assistant("Hello."),
                    ChatMessage::user("2+2?"),
                ],
                true,
            )
            .unwrap();
        assert_eq!(
            prompt,
            "<|system|>\nBe brief.\n<|user|>\nHi\n<|assistant|>\nHello.<|end_of_text|>\n\
             <|user|>\n2+2?\n<|assistant|>\n"
        );
        let ids = tok.encode_chat(&prompt);
        assert_eq!(ids[0], 128_000);
        assert!(ids.contains(&128_001));
        assert!(tok.is_end_of_generation(128_001));
    }
}

/// Qwen2's split (`tokenizer.ggml.pre` `qwen2`: Llama 3's with one digit per piece) on a small
/// byte-level BPE vocabulary trained with Hugging Face `tokenizers`
/// (tools/make_qwen2_fixture.py), loaded from its tokenizer.json and from the GGUF metadata
/// our converter makes of it, against the `tokenizers` crate on the same file.
#[test]
fn qwen2_split_matches_tokenizers_crate() {
    let path = testdata("tokenizer/qwen2-small/tokenizer.json");
    let hf = tokenizers::Tokenizer::from_file(&path).unwrap_or_else(|e| panic!("{e}"));
    let from_json = load(&path);
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let config = bitnet::hf::HfConfig::from_json(
        "config.json",
        br#"{"model_type": "llama", "vocab_size": 1200, "hidden_size": 64,
            "intermediate_size": 128, "num_hidden_layers": 1, "num_attention_heads": 1,
            "num_key_value_heads": 1, "max_position_embeddings": 64,
            "quantization_config": {"quant_method": "bitnet"}}"#,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let vocab = bitnet::hf::vocab::GgufVocab::from_json("tokenizer.json", &json, None, &config)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(vocab.pre, "qwen2");
    let strings = |v: &[String]| {
        Value::Array(
            bitnet::formats::gguf::ValueType::String,
            v.iter().cloned().map(Value::String).collect(),
        )
    };
    let mut md = bitnet::formats::gguf::Metadata::new();
    md.set("tokenizer.ggml.model", Value::String(vocab.model.clone()));
    md.set("tokenizer.ggml.pre", Value::String(vocab.pre.clone()));
    md.set("tokenizer.ggml.tokens", strings(&vocab.tokens));
    md.set("tokenizer.ggml.merges", strings(&vocab.merges));
    md.set(
        "tokenizer.ggml.token_type",
        Value::Array(
            bitnet::formats::gguf::ValueType::I32,
            vocab.token_types.iter().map(|&t| Value::I32(t)).collect(),
        ),
    );
    let from_gguf = Tokenizer::from_metadata(&md, "qwen2.gguf").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        from_gguf.pre_tokenizer_source(),
        &PreTokenizerSource::GgufKey("qwen2".into())
    );
    // llama.cpp: no BOS by default for qwen2.
    assert!(!from_gguf.add_bos_token());
    let digits = |rng: &mut Rng| -> String {
        (0..1 + rng.below(20))
            .map(|_| *rng.pick(&['1', '2', '9', '0', ' ', '.', ',', 'x', '\n', '٣', '²']))
            .collect()
    };
    let mut rng = Rng(0x51_7CC1_B727_220A);
    let mut wrong = Vec::new();
    let mut texts: Vec<String> = EDGE_CASES.iter().map(|s| s.to_string()).collect();
    texts.extend((0..2000).map(|_| random_string(&mut rng)));
    texts.extend((0..1000).map(|_| digits(&mut rng)));
    texts.push("<|im_start|>user\n12345<|im_end|>".into());
    for s in &texts {
        let want = hf_ids(&hf, s);
        for tok in [&from_json, &from_gguf] {
            let got = tok.encode(s, PARSE);
            if got != want {
                wrong.push(format!(
                    "{s:?} ({})\n  hf   {want:?}\n  ours {got:?}",
                    tok.origin()
                ));
            }
            assert_eq!(tok.decode(&got).ok().as_deref(), Some(s.as_str()));
        }
    }
    assert!(
        wrong.is_empty(),
        "{} differ:\n{}",
        wrong.len(),
        wrong[..wrong.len().min(10)].join("\n")
    );
    // The Llama 3 split would group digits in threes: the vocabulary sees Qwen2's pieces.
    assert_eq!(
        Llama3Split::qwen2("12345").collect::<Vec<_>>(),
        ["1", "2", "3", "4", "5"]
    );
}

#[test]
fn vocabularies_compare_token_for_token() {
    // The same vocabulary read from the GGUF and from tokenizer.json, as a draft model's must
    // be its target's; another vocabulary differs at its first token.
    assert_eq!(llama3_gguf().vocabulary_difference(llama3_json()), None);
    let demo = load(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/bitnet-shakespeare-7m-i2_s.gguf"),
    );
    assert_eq!(demo.vocabulary_difference(&demo), None);
    let id = demo.vocabulary_difference(llama3_gguf()).unwrap();
    assert_ne!(demo.token_str(id), llama3_gguf().token_str(id));
    assert!((0..id).all(|i| demo.token_str(i) == llama3_gguf().token_str(i)));
}
