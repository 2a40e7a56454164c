//! Gemma's tokenizer (SentencePiece BPE as tokenizer.json: byte fallback, `▁` by a Replace
//! normalizer, no dummy prefix, <bos> added) against Hugging Face `tokenizers`: the cases in
//! testdata/tokenizer/gemma-small come from `tokenizers` itself
//! (tools/make_gemma_tokenizer_fixture.py; the pieces are a small SentencePiece model trained
//! here, since Gemma 3's own 262,144 cannot be downloaded). Checked both ways a BitNet
//! embedding model arrives: a Hugging Face folder, and a GGUF laid out as bitnet.cpp's
//! embedding converter writes it (`gpt2` model, pre `default`, the pieces and merges as they
//! are).

use std::path::PathBuf;

use bitnet::formats::gguf::{Metadata, Value, ValueType};
use bitnet::tokenizer::{EncodeOptions, Tokenizer};
use serde_json::Value as Json;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn cases() -> Vec<(String, Vec<u32>)> {
    let text =
        std::fs::read_to_string(root().join("testdata/tokenizer/gemma-small/cases.jsonl")).unwrap();
    text.lines()
        .map(|l| {
            let v: Json = serde_json::from_str(l).unwrap();
            let ids = v["ids"]
                .as_array()
                .unwrap()
                .iter()
                .map(|i| i.as_u64().unwrap() as u32)
                .collect();
            (v["text"].as_str().unwrap().to_string(), ids)
        })
        .collect()
}

fn check(tok: &Tokenizer, how: &str) {
    let cases = cases();
    assert!(cases.len() >= 200);
    let options = EncodeOptions {
        add_bos: tok.add_bos_token(),
        parse_special: false,
    };
    let wrong: Vec<String> = cases
        .iter()
        .filter(|(text, ids)| &tok.encode(text, options) != ids)
        .map(|(text, ids)| {
            format!(
                "{text:?}: got {:?}, want {ids:?}",
                tok.encode(text, options)
            )
        })
        .collect();
    assert!(
        wrong.is_empty(),
        "{how}: {} of {} differ: {:#?}",
        wrong.len(),
        cases.len(),
        &wrong[..wrong.len().min(5)]
    );
    for (text, ids) in &cases {
        assert_eq!(
            &tok.decode(&ids[1..]).unwrap(),
            text,
            "{how}: decode {text:?}"
        );
    }
}

#[test]
fn hf_folder_matches_tokenizers() {
    let dir = std::env::temp_dir().join(format!("bitnet-gemma-tok-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let model = root().join("testdata/embedding/gemma3");
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(model.join(f), dir.join(f)).unwrap();
    }
    let tok_dir = root().join("testdata/tokenizer/gemma-small");
    for f in ["tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(tok_dir.join(f), dir.join(f)).unwrap();
    }
    let gguf = bitnet::hf::folder_to_gguf(&dir).unwrap_or_else(|e| panic!("{e}"));
    std::fs::remove_dir_all(&dir).unwrap();
    let tok = Tokenizer::from_gguf(&gguf).unwrap();
    check(&tok, "folder");
}

/// The tokenizer keys as bitnet.cpp's convert-bitnet-embedding-to-gguf.py writes them for
/// Gemma 3: `gpt2`, pre `default`, every piece typed NORMAL (the byte pieces too), added
/// specials CONTROL, the merges, BOS/EOS/UNK ids and add_bos_token from tokenizer_config.
fn bitnet_cpp_metadata() -> Metadata {
    let json: Json = serde_json::from_str(
        &std::fs::read_to_string(root().join("testdata/tokenizer/gemma-small/tokenizer.json"))
            .unwrap(),
    )
    .unwrap();
    let vocab = json["model"]["vocab"].as_object().unwrap();
    let mut tokens = vec![String::new(); vocab.len()];
    for (t, id) in vocab {
        tokens[id.as_u64().unwrap() as usize] = t.clone();
    }
    let mut types = vec![1i32; tokens.len()];
    for added in json["added_tokens"].as_array().unwrap() {
        let id = added["id"].as_u64().unwrap() as usize;
        if id < types.len() && added["special"].as_bool() == Some(true) {
            types[id] = 3;
        }
    }
    let merges: Vec<Value> = json["model"]["merges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| match m {
            Json::String(s) => Value::String(s.clone()),
            Json::Array(p) => Value::String(format!(
                "{} {}",
                p[0].as_str().unwrap(),
                p[1].as_str().unwrap()
            )),
            other => panic!("{other}"),
        })
        .collect();
    let id = |t: &str| tokens.iter().position(|x| x == t).unwrap() as u32;
    let mut md = Metadata::new();
    md.set("tokenizer.ggml.model", Value::String("gpt2".into()));
    md.set("tokenizer.ggml.pre", Value::String("default".into()));
    md.set(
        "tokenizer.ggml.tokens",
        Value::Array(
            ValueType::String,
            tokens.iter().cloned().map(Value::String).collect(),
        ),
    );
    md.set(
        "tokenizer.ggml.token_type",
        Value::Array(ValueType::I32, types.into_iter().map(Value::I32).collect()),
    );
    md.set(
        "tokenizer.ggml.merges",
        Value::Array(ValueType::String, merges),
    );
    md.set("tokenizer.ggml.bos_token_id", Value::U32(id("<s>")));
    md.set("tokenizer.ggml.eos_token_id", Value::U32(id("</s>")));
    md.set("tokenizer.ggml.unknown_token_id", Value::U32(id("<unk>")));
    md.set("tokenizer.ggml.add_bos_token", Value::Bool(true));
    md
}

#[test]
fn bitnet_cpp_gguf_layout_matches_tokenizers() {
    let tok = Tokenizer::from_metadata(&bitnet_cpp_metadata(), "gemma-small.gguf")
        .unwrap_or_else(|e| panic!("{e}"));
    check(&tok, "bitnet.cpp gguf");
}
