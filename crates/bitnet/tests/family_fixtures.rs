//! The BitNet family members other than 2B-4T against transformers: tiny random checkpoints in
//! each family's Hugging Face format (`testdata/family/*/`, made by
//! `tools/make_family_fixtures.py`), with transformers' float32 logits and greedy tokens, and
//! bitnet.cpp's greedy tokens on the GGUF our converter writes (`bitnetcpp.json`).

use std::path::PathBuf;

use bitnet::hf;
use bitnet::model::{Architecture, BitnetModel, CacheType, Logits};
use serde_json::Value;

fn repo(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(rel)
}

fn json(rel: &str) -> Value {
    serde_json::from_slice(&std::fs::read(repo(rel)).unwrap()).unwrap()
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

fn argmax(x: &[f32]) -> usize {
    let mut best = 0;
    for (i, &v) in x.iter().enumerate() {
        if v > x[best] {
            best = i;
        }
    }
    best
}

fn greedy(model: &BitnetModel, prompt: &[u32], n: usize, ty: CacheType) -> Vec<u32> {
    let mut cache = model.new_cache(0, ty).unwrap();
    let mut logits = model.forward(prompt, &mut cache, Logits::Last).unwrap();
    let mut out = Vec::new();
    for _ in 0..n {
        let next = argmax(&logits) as u32;
        out.push(next);
        logits = model.forward(&[next], &mut cache, Logits::Last).unwrap();
    }
    out
}

/// (family, its Hugging Face folders, the GGUF architecture they become)
const FAMILIES: [(&str, &[&str], Architecture); 4] = [
    ("falcon3", &["hf-packed"], Architecture::Llama),
    ("llama3", &["hf-packed"], Architecture::Llama),
    ("rmsnorm", &["hf-online", "hf-packed"], Architecture::Llama),
    ("bitnet1", &["hf"], Architecture::Bitnet),
];

/// transformers' logits of every position of every sequence.
fn reference_logits(family: &str) -> Vec<f32> {
    let bytes = std::fs::read(repo(&format!("testdata/family/{family}/logits.f32"))).unwrap();
    bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

/// Every folder of every family: logits within 1e-3 of transformers' float32 ones at the
/// positions where transformers' own valid computations agree to 1e-4, the same argmax there,
/// and the same greedy tokens.
#[test]
fn families_match_transformers() {
    for (family, folders, arch) in FAMILIES {
        let fixture = json(&format!("testdata/family/{family}/fixture.json"));
        let reference = reference_logits(family);
        for folder in folders {
            let path = repo(&format!("testdata/family/{family}/{folder}"));
            let (_, model) = hf::load_model(&path).unwrap();
            assert_eq!(model.config().arch, arch, "{family}/{folder}");
            let n_vocab = model.config().n_vocab;
            let mut offset = 0;
            let mut worst = 0f32;
            let mut checked = 0;
            for seq in fixture["sequences"].as_array().unwrap() {
                let tokens = ids(&seq["input_ids"]);
                let mut cache = model.new_cache(0, CacheType::F32).unwrap();
                let ours = model.forward(&tokens, &mut cache, Logits::All).unwrap();
                let theirs = &reference[offset..offset + tokens.len() * n_vocab];
                offset += tokens.len() * n_vocab;
                for t in ids(&seq["stable_positions"]) {
                    let t = t as usize;
                    let (a, b) = (
                        &ours[t * n_vocab..(t + 1) * n_vocab],
                        &theirs[t * n_vocab..(t + 1) * n_vocab],
                    );
                    let d = a
                        .iter()
                        .zip(b)
                        .map(|(x, y)| (x - y).abs())
                        .fold(0f32, f32::max);
                    worst = worst.max(d);
                    checked += 1;
                    assert!(d <= 1e-3, "{family}/{folder} len {} pos {t}: {d}", tokens.len());
                    assert_eq!(argmax(a), argmax(b), "{family}/{folder} pos {t}");
                }
            }
            assert_eq!(offset, reference.len());
            assert!(checked >= 10, "{family}: only {checked} stable positions");
            let prompt = ids(&fixture["greedy"]["prompt_ids"]);
            let expected = ids(&fixture["greedy"]["new_tokens"]);
            let ours = greedy(&model, &prompt, expected.len(), CacheType::F32);
            assert_eq!(ours, expected, "{family}/{folder} greedy");
            eprintln!(
                "{family}/{folder}: max |Δlogit| {worst:e} over {checked} stable positions, greedy {} tokens equal",
                expected.len()
            );
        }
    }
}
