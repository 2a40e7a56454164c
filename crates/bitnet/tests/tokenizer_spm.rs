//! The SentencePiece BPE tokenizer (GGUF model `llama`: Llama 2's vocabulary, which 1bitLLM's
//! bitnet_b1_58 models use) against references outside this code:
//! - llama.cpp's own test cases for `models/ggml-vocab-llama-spm.gguf` (its `.inp`/`.out`,
//!   made with Hugging Face's Llama tokenizer);
//! - Google's `sentencepiece` on the same vocabulary (`tools/make_spm_fixtures.py` builds the
//!   ModelProto from the GGUF, checks it reproduces llama.cpp's cases, and writes the ids);
//! - a small trained SentencePiece model as a Hugging Face folder (tokenizer.json by
//!   transformers' converter, tokenizer.model), through `bitnet convert`'s vocabulary path,
//!   against sentencepiece's ids and the `tokenizers` crate.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use bitnet::formats::gguf::{Metadata, Value, ValueType};
use bitnet::tokenizer::{EncodeOptions, PreTokenizerSource, TokenKind, Tokenizer, TokenizerError};

fn testdata(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../testdata/tokenizer")
        .join(rel)
}

const PLAIN: EncodeOptions = EncodeOptions {
    add_bos: false,
    parse_special: false,
};

fn llama_spm() -> &'static Tokenizer {
    static T: OnceLock<Tokenizer> = OnceLock::new();
    T.get_or_init(|| {
        let path = testdata("llama-spm/ggml-vocab-llama-spm.gguf");
        Tokenizer::load(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    })
}

/// llama.cpp's test format: texts separated by `\n__ggml_vocab_test__\n`, one line of ids each.
fn llama_cpp_cases() -> Vec<(String, Vec<u32>)> {
    let read = |ext: &str| {
        let path = testdata(&format!("llama-spm/ggml-vocab-llama-spm.gguf.{ext}"));
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    };
    let inp = read("inp");
    let out = read("out");
    let texts: Vec<&str> = inp.split("\n__ggml_vocab_test__\n").collect();
    let texts = &texts[..texts.len() - 1];
    let ids: Vec<Vec<u32>> = out
        .split('\n')
        .take(texts.len())
        .map(|l| l.split_whitespace().map(|x| x.parse().unwrap()).collect())
        .collect();
    texts.iter().map(|t| t.to_string()).zip(ids).collect()
}

/// JSON lines `{"text", "ids", "decoded"}` written by tools/make_spm_fixtures.py.
fn jsonl_cases(rel: &str) -> Vec<(String, Vec<u32>, String)> {
    let path = testdata(rel);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    text.lines()
        .map(|line| {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            let ids = v["ids"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_u64().unwrap() as u32)
                .collect();
            (
                v["text"].as_str().unwrap().to_string(),
                ids,
                v["decoded"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// Encodes every case; returns the ones that differ, readably.
fn differences(tok: &Tokenizer, cases: &[(String, Vec<u32>)]) -> Vec<String> {
    cases
        .iter()
        .filter_map(|(text, want)| {
            let got = tok.encode(text, PLAIN);
            (&got != want).then(|| format!("{text:?}\n  want {want:?}\n  got  {got:?}"))
        })
        .collect()
}

#[test]
fn llama_cpp_cases_equal() {
    let tok = llama_spm();
    assert_eq!(
        tok.pre_tokenizer_source(),
        &PreTokenizerSource::SentencePiece
    );
    let cases = llama_cpp_cases();
    assert_eq!(cases.len(), 46);
    let wrong = differences(tok, &cases);
    assert!(
        wrong.is_empty(),
        "{} of 46 differ:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
}

#[test]
fn sentencepiece_cases_equal_and_decode() {
    let tok = llama_spm();
    let cases = jsonl_cases("llama-spm/sentencepiece-cases.jsonl");
    assert!(cases.len() >= 380, "{} cases", cases.len());
    let pairs: Vec<(String, Vec<u32>)> = cases
        .iter()
        .map(|(t, ids, _)| (t.clone(), ids.clone()))
        .collect();
    let wrong = differences(tok, &pairs);
    assert!(
        wrong.is_empty(),
        "{} of {} differ from sentencepiece:\n{}",
        wrong.len(),
        cases.len(),
        wrong.join("\n")
    );
    for (text, ids, decoded) in &cases {
        // sentencepiece's decode drops the dummy prefix; so does ours.
        assert_eq!(&tok.decode(ids).unwrap(), decoded, "{text:?}");
        // A `▁` typed in the text comes back as a space (SentencePiece cannot tell them apart).
        assert_eq!(decoded, &text.replace('▁', " "));
    }
}

#[test]
fn special_ids_bos_and_special_text() {
    let tok = llama_spm();
    assert_eq!(tok.vocab_size(), 32_000);
    assert_eq!((tok.bos_id(), tok.eos_id()), (Some(1), Some(2)));
    assert!(tok.add_bos_token());
    assert_eq!(tok.end_of_generation(), [2]);
    assert_eq!(tok.token_kind(13), Some(TokenKind::Byte));
    assert_eq!(tok.token_bytes(13).unwrap(), b"\n");
    assert_eq!(tok.token_bytes(15043).unwrap(), b" Hello");
    // Special text is text unless asked, then the token; a space prefix follows a special.
    let plain = tok.encode("</s>Hello", PLAIN);
    assert!(!plain.contains(&2));
    let parsed = tok.encode(
        "</s>Hello",
        EncodeOptions {
            add_bos: true,
            parse_special: true,
        },
    );
    assert_eq!(parsed, [1, 2, 15043]);
    assert_eq!(tok.encode_chat("<s>Hello"), [1, 15043]);
    assert_eq!(tok.encode_chat("Hello"), [1, 15043]);
    // decode drops only the first token's prefix space; streaming keeps every byte.
    assert_eq!(tok.decode(&[15043, 3186]).unwrap(), "Hello world");
    assert_eq!(tok.decode(&[1, 15043]).unwrap(), "<s> Hello");
    let mut stream = tok.stream_decoder();
    let pieces: String = [15043u32, 3186]
        .iter()
        .map(|&i| stream.push(i).unwrap())
        .collect();
    assert_eq!(pieces, " Hello world");
}

#[test]
fn byte_fallback_streams_whole_characters() {
    let tok = llama_spm();
    // U+1F999 is not in the vocabulary: four byte tokens.
    let ids = tok.encode("🦙", PLAIN);
    assert_eq!(ids, [29871, 243, 162, 169, 156]);
    let mut stream = tok.stream_decoder();
    let pieces: Vec<String> = ids.iter().map(|&i| stream.push(i).unwrap()).collect();
    assert_eq!(pieces, [" ", "", "", "", "🦙"]);
}

/// A `llama` vocabulary's metadata, to break on purpose.
fn spm_metadata() -> Metadata {
    let strings = |v: &[&str]| {
        Value::Array(
            ValueType::String,
            v.iter().map(|s| Value::String(s.to_string())).collect(),
        )
    };
    let mut md = Metadata::default();
    md.set("tokenizer.ggml.model", Value::String("llama".into()));
    md.set(
        "tokenizer.ggml.tokens",
        strings(&["<unk>", "<s>", "</s>", "▁", "a", "▁a"]),
    );
    md.set(
        "tokenizer.ggml.scores",
        Value::Array(
            ValueType::F32,
            (0..6).map(|i| Value::F32(-(i as f32))).collect(),
        ),
    );
    md.set(
        "tokenizer.ggml.token_type",
        Value::Array(ValueType::I32, [2, 3, 3, 1, 1, 1].map(Value::I32).to_vec()),
    );
    md
}

#[test]
fn bad_spm_metadata_is_an_error() {
    let tok = Tokenizer::from_metadata(&spm_metadata(), "x.gguf").unwrap();
    // No byte tokens: an unknown character is <unk>.
    assert_eq!(tok.encode("a é a", PLAIN), [5, 3, 0, 5]);
    assert_eq!(tok.decode(&[5, 3, 0, 5]).unwrap(), "a <unk> a");

    let mut md = spm_metadata();
    md.set(
        "tokenizer.ggml.scores",
        Value::Array(ValueType::F32, vec![Value::F32(0.0); 3]),
    );
    let err = Tokenizer::from_metadata(&md, "x.gguf")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("tokenizer.ggml.scores") && err.contains("3 entries"),
        "{err}"
    );

    let mut md = spm_metadata();
    md.set(
        "tokenizer.ggml.scores",
        Value::Array(ValueType::String, vec![Value::String("x".into()); 6]),
    );
    let err = Tokenizer::from_metadata(&md, "x.gguf")
        .unwrap_err()
        .to_string();
    assert!(err.contains("tokenizer.ggml.scores[0]"), "{err}");

    // Neither byte tokens nor <unk>: some text could not be encoded.
    let mut md = spm_metadata();
    md.set(
        "tokenizer.ggml.token_type",
        Value::Array(ValueType::I32, [1, 3, 3, 1, 1, 1].map(Value::I32).to_vec()),
    );
    md.set("tokenizer.ggml.unknown_token_id", Value::U32(99));
    let err = Tokenizer::from_metadata(&md, "x.gguf").unwrap_err();
    assert!(matches!(err, TokenizerError::Invalid { .. }), "{err}");
    assert!(err.to_string().contains("outside the vocabulary"), "{err}");

    let mut md = spm_metadata();
    md.set("tokenizer.ggml.model", Value::String("bert".into()));
    let err = Tokenizer::from_metadata(&md, "x.gguf")
        .unwrap_err()
        .to_string();
    assert!(err.contains("\"bert\" is not supported"), "{err}");
}

/// Random strings never panic and always decode back to themselves.
#[test]
fn random_text_round_trips() {
    let tok = llama_spm();
    let mut state = 0x9E3779B97F4A7C15u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for _ in 0..500 {
        let len = next() % 30;
        let text: String = (0..len)
            .filter_map(|_| {
                let r = next();
                match r % 4 {
                    0 => char::from_u32((r >> 8) as u32 % 0x80),
                    1 => char::from_u32((r >> 8) as u32 % 0x800),
                    2 => char::from_u32((r >> 8) as u32 % 0x11_0000),
                    _ => Some(' '),
                }
            })
            .collect();
        let ids = tok.encode(&text, PLAIN);
        assert_eq!(tok.decode(&ids).unwrap(), text, "{ids:?}");
    }
}

/// A 1bitLLM-format checkpoint folder (`testdata/family/bitnet1/hf`, vocab 1024) with the small
/// SentencePiece model's tokenizer files `files` beside it, in a fresh temporary folder.
fn bitnet1_folder_with(name: &str, files: &[&str]) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("bitnet-spm-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let family = testdata("../family/bitnet1/hf");
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(family.join(f), dir.join(f)).unwrap();
    }
    for f in files {
        std::fs::copy(testdata("spm-small").join(f), dir.join(f)).unwrap();
    }
    dir
}

/// The tokenizer of the GGUF that `bitnet convert` (and `-m FOLDER`) makes of the folder.
fn converted_tokenizer(folder: &Path) -> Tokenizer {
    let gguf = bitnet::hf::folder_to_gguf(folder).unwrap_or_else(|e| panic!("{e}"));
    let md = gguf.metadata();
    assert_eq!(md.get_str("tokenizer.ggml.model").unwrap(), "llama");
    assert!(!md.contains("tokenizer.ggml.merges"));
    Tokenizer::from_gguf(&gguf).unwrap_or_else(|e| panic!("{e}"))
}

fn small_cases() -> Vec<(String, Vec<u32>)> {
    jsonl_cases("spm-small/cases.jsonl")
        .into_iter()
        .map(|(t, ids, _)| (t, ids))
        .collect()
}

#[test]
fn hf_folder_sentencepiece_vocabulary_converts() {
    let cases = small_cases();
    assert!(cases.len() >= 340);
    for (name, files) in [
        // As 1bitLLM ships it: tokenizer.model is read (SentencePiece's own scores).
        (
            "all",
            &["tokenizer.json", "tokenizer.model", "tokenizer_config.json"][..],
        ),
        // tokenizer.json alone: scores from its merges.
        ("json", &["tokenizer.json", "tokenizer_config.json"][..]),
        ("model", &["tokenizer.model"][..]),
    ] {
        let dir = bitnet1_folder_with(name, files);
        let tok = converted_tokenizer(&dir);
        std::fs::remove_dir_all(&dir).unwrap();
        // Padded to config.json's vocab_size with unused [PAD] tokens.
        assert_eq!(tok.vocab_size(), 1024, "{name}");
        assert_eq!(tok.token_str(1000), Some("[PAD1000]"));
        assert_eq!((tok.bos_id(), tok.eos_id()), (Some(1), Some(2)), "{name}");
        assert!(tok.add_bos_token(), "{name}");
        let wrong = differences(&tok, &cases);
        assert!(
            wrong.is_empty(),
            "{name}: {} of {} differ from sentencepiece:\n{}",
            wrong.len(),
            cases.len(),
            wrong.join("\n")
        );
        if files.contains(&"tokenizer_config.json") {
            let chat = tok.chat_template().unwrap();
            let prompt = chat
                .render(&[bitnet::tokenizer::ChatMessage::user("Hi")], true)
                .unwrap();
            assert_eq!(prompt, "<s>[INST] Hi [/INST]");
            assert_eq!(
                tok.encode_chat(&prompt)[..2],
                [1, tok.encode("[", PLAIN)[0]]
            );
        }
    }
}

#[test]
fn hf_folder_bad_tokenizer_model_is_an_error() {
    let dir = bitnet1_folder_with("bad", &["tokenizer_config.json"]);
    std::fs::write(dir.join("tokenizer.model"), b"\x0a\xff\x01 truncated").unwrap();
    let err = bitnet::hf::folder_to_gguf(&dir)
        .err()
        .map(|e| e.to_string());
    std::fs::remove_dir_all(&dir).unwrap();
    let err = err.expect("a truncated tokenizer.model converts");
    assert!(
        err.contains("tokenizer.model") && err.contains("not a SentencePiece model"),
        "{err}"
    );
}

/// The converted tokenizer.json vocabulary against Hugging Face's `tokenizers` reading the
/// same tokenizer.json, on random text (x86-64: where the crate is a dev-dependency).
#[cfg(target_arch = "x86_64")]
#[test]
fn hf_folder_json_matches_tokenizers_crate() {
    let dir = bitnet1_folder_with("hf", &["tokenizer.json", "tokenizer_config.json"]);
    let tok = converted_tokenizer(&dir);
    std::fs::remove_dir_all(&dir).unwrap();
    let hf = tokenizers::Tokenizer::from_file(testdata("spm-small/tokenizer.json")).unwrap();
    let pool: Vec<char> = "abcdefghijklmnopqrstuvwxyz ABCDEFGHIJ 0123456789 \n\t.,;:!?'\"()<>/_-éüßçñ абвгд 你好世界 αβγ 🤖🦙👍\u{200d}\u{301}▁"
        .chars()
        .collect();
    let mut state = 0x853c49e6748fea9bu64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut wrong = Vec::new();
    for _ in 0..3000 {
        let len = (next() % 40) as usize;
        let text: String = (0..len)
            .map(|_| pool[(next() % pool.len() as u64) as usize])
            .collect();
        let want = hf.encode(text.as_str(), false).unwrap().get_ids().to_vec();
        let got = tok.encode(&text, PLAIN);
        if got != want {
            wrong.push(format!("{text:?}\n  hf   {want:?}\n  ours {got:?}"));
        }
        let decoded = hf.decode(&want, false).unwrap();
        assert_eq!(tok.decode(&got).unwrap(), decoded, "{text:?}");
    }
    assert!(
        wrong.is_empty(),
        "{} of 3000 differ:\n{}",
        wrong.len(),
        wrong[..wrong.len().min(10)].join("\n")
    );
}

/// A lone SentencePiece tokenizer.json (no model folder around it) is refused with a message
/// that says what to load instead.
#[test]
fn lone_sentencepiece_tokenizer_json_names_the_way_in() {
    let err = Tokenizer::load(testdata("spm-small/tokenizer.json"))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("SentencePiece") && err.contains("-m FOLDER"),
        "{err}"
    );
}

/// The GGUF vocabulary converted from tokenizer.model holds exactly the pieces, scores and
/// types Google's sentencepiece reads from that file (pieces.json, written by it), as
/// llama.cpp's converter writes them; the ids past them are unused padding.
#[test]
fn converted_pieces_equal_sentencepiece_reading_tokenizer_model() {
    let path = testdata("spm-small/pieces.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let rows: Vec<(String, f64, i64)> = serde_json::from_str(&text).unwrap();
    assert_eq!(rows.len(), 1000);
    let dir = bitnet1_folder_with("pieces", &["tokenizer.model"]);
    let gguf = bitnet::hf::folder_to_gguf(&dir).unwrap_or_else(|e| panic!("{e}"));
    std::fs::remove_dir_all(&dir).unwrap();
    let md = gguf.metadata();
    let tokens = md.get_array("tokenizer.ggml.tokens").unwrap();
    let scores = md.get_array("tokenizer.ggml.scores").unwrap();
    let types = md.get_array("tokenizer.ggml.token_type").unwrap();
    assert_eq!(
        (tokens.len(), scores.len(), types.len()),
        (1024, 1024, 1024)
    );
    for (i, (piece, score, ty)) in rows.iter().enumerate() {
        assert_eq!(tokens[i].as_str(), Some(piece.as_str()), "token {i}");
        assert_eq!(scores[i].as_f64(), Some(*score as f32 as f64), "score {i}");
        assert_eq!(types[i].as_i64(), Some(*ty), "type {i}");
    }
    assert!(
        types[1000..].iter().all(|t| t.as_i64() == Some(5)),
        "padding"
    );
    assert_eq!(md.get_u64("tokenizer.ggml.unknown_token_id").unwrap(), 0);
    assert!(!md.contains("tokenizer.ggml.add_space_prefix"));
}

/// Small xorshift generator for the corruption tests.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n.max(1) as u64) as usize
    }
}

/// Replaces one random node of `v` with a random value.
fn corrupt(v: &mut serde_json::Value, rng: &mut Rng) {
    use serde_json::Value as J;
    let replacement = match rng.below(6) {
        0 => J::Null,
        1 => J::from(rng.below(3000) as i64 - 5),
        2 => J::from("▁x <0xZZ> ".repeat(rng.below(3))),
        3 => J::Array(vec![J::from(1), J::from("a")]),
        4 => J::Bool(rng.below(2) == 0),
        _ => J::from(-1.5),
    };
    let mut node = v;
    loop {
        let len = match node {
            J::Object(o) => o.len(),
            J::Array(a) => a.len(),
            _ => 0,
        };
        if len == 0 || rng.below(4) == 0 {
            *node = replacement;
            return;
        }
        let i = rng.below(len);
        node = match node {
            J::Object(o) => o.values_mut().nth(i).unwrap(),
            J::Array(a) => &mut a[i],
            _ => unreachable!(),
        };
    }
}

/// Corrupted SentencePiece tokenizer.json files and GGUF metadata: errors or tokenizers that
/// encode and decode, never a panic.
#[test]
fn corrupted_sentencepiece_inputs_never_panic() {
    let text = std::fs::read_to_string(testdata("spm-small/tokenizer.json")).unwrap();
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    let config = bitnet::hf::HfConfig::from_json(
        "config.json",
        br#"{"model_type": "llama", "vocab_size": 1024, "hidden_size": 64,
            "intermediate_size": 128, "num_hidden_layers": 1, "num_attention_heads": 1,
            "num_key_value_heads": 1, "max_position_embeddings": 64,
            "quantization_config": {"quant_method": "bitnet"}}"#,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let mut rng = Rng(0xDEAD_BEEF_CAFE_F00D);
    let mut loaded = 0;
    for _ in 0..300 {
        let mut bad = json.clone();
        for _ in 0..1 + rng.below(3) {
            corrupt(&mut bad, &mut rng);
        }
        let Ok(vocab) = bitnet::hf::vocab::GgufVocab::from_json("t.json", &bad, None, &config)
        else {
            continue;
        };
        let mut md = Metadata::new();
        let strings = |v: &[String]| {
            Value::Array(
                ValueType::String,
                v.iter().cloned().map(Value::String).collect(),
            )
        };
        md.set("tokenizer.ggml.model", Value::String(vocab.model.clone()));
        md.set("tokenizer.ggml.tokens", strings(&vocab.tokens));
        md.set("tokenizer.ggml.merges", strings(&vocab.merges));
        md.set(
            "tokenizer.ggml.scores",
            Value::Array(
                ValueType::F32,
                vocab.scores.iter().map(|&s| Value::F32(s)).collect(),
            ),
        );
        md.set(
            "tokenizer.ggml.token_type",
            Value::Array(
                ValueType::I32,
                vocab.token_types.iter().map(|&t| Value::I32(t)).collect(),
            ),
        );
        md.set("tokenizer.ggml.pre", Value::String(vocab.pre.clone()));
        if let Ok(tok) = Tokenizer::from_metadata(&md, "t.gguf") {
            let ids = tok.encode("Hello wörld 🦙 12", PLAIN);
            tok.decode(&ids).unwrap();
            loaded += 1;
        }
    }
    // Most corruptions hit a piece or a merge and still load.
    assert!(loaded > 50, "{loaded}");

    // GGUF metadata: NaN and infinite scores, duplicate and empty tokens, any types.
    let mut md = spm_metadata();
    md.set(
        "tokenizer.ggml.tokens",
        Value::Array(
            ValueType::String,
            ["", "<s>", "</s>", "▁", "▁", "a"]
                .iter()
                .map(|s| Value::String(s.to_string()))
                .collect(),
        ),
    );
    md.set(
        "tokenizer.ggml.scores",
        Value::Array(
            ValueType::F32,
            [
                f32::NAN,
                f32::INFINITY,
                -0.0,
                f32::NEG_INFINITY,
                1.0,
                f32::NAN,
            ]
            .map(Value::F32)
            .to_vec(),
        ),
    );
    for types in [[2, 3, 3, 6, 6, 1], [1, 1, 1, 1, 1, 1], [5, 5, 5, 5, 5, 5]] {
        md.set(
            "tokenizer.ggml.token_type",
            Value::Array(ValueType::I32, types.map(Value::I32).to_vec()),
        );
        if let Ok(tok) = Tokenizer::from_metadata(&md, "x.gguf") {
            let ids = tok.encode(" a a é ", PLAIN);
            tok.decode(&ids).unwrap();
        }
    }
}
