//! The BitNet family members other than 2B-4T against transformers: tiny random checkpoints in
//! each family's Hugging Face format (`testdata/family/*/`, made by
//! `tools/make_family_fixtures.py`), with transformers' float32 logits and greedy tokens, and
//! bitnet.cpp's greedy tokens on the GGUF our converter writes (`bitnetcpp.json`).

use bitnet::hf;
use bitnet::model::{Architecture, BitnetModel, CacheType, Logits};

mod common;
use common::{ids, json, repo};

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
const FAMILIES: [(&str, &[&str], Architecture); 5] = [
    ("falcon3", &["hf-packed"], Architecture::Llama),
    ("llama3", &["hf-packed"], Architecture::Llama),
    ("rmsnorm", &["hf-online", "hf-packed"], Architecture::Llama),
    ("bitnet1", &["hf"], Architecture::Bitnet),
    // An FFN width of 2.5 I2_S blocks (1bitLLM 3B's 8640 is 67.5): ffn_down's rows padded.
    ("bitnet1-oddff", &["hf"], Architecture::Bitnet),
];

/// The families with a `bitnetcpp.json` (bitnet.cpp's greedy tokens on our GGUF).
const WITH_BITNET_CPP: [&str; 4] = ["falcon3", "llama3", "rmsnorm", "bitnet1"];

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
                    assert!(
                        d <= 1e-3,
                        "{family}/{folder} len {} pos {t}: {d}",
                        tokens.len()
                    );
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

/// Two correct engines part where one of them sees a near-tie: on these random models
/// bitnet.cpp's logits differ from transformers' (and ours) by up to ~0.6 (f16 queries and KV
/// cache, and int8 activation roundings that flip with them; the same holds for the 2B-4T
/// `visible` fixture, made with bitnet.cpp's own converter). Below this top-2 margin of
/// bitnet.cpp's, its choice is not held against us.
const TIE_MARGIN: f64 = 0.5;

/// The GGUF our converter writes for each family (I2_S linears, F16 embedding and output, as
/// bitnet.cpp's pipeline makes them), decoded greedily by bitnet.cpp (`bitnetcpp.json`) and by
/// us from the same file: every token equal up to the first step where bitnet.cpp's top-2
/// margin is below [`TIE_MARGIN`], and whole runs equal where bitnet.cpp has no such step.
#[test]
fn converted_ggufs_decode_like_bitnet_cpp() {
    for (family, folders, arch) in FAMILIES {
        if !WITH_BITNET_CPP.contains(&family) {
            continue;
        }
        let cpp = json(&format!("testdata/family/{family}/bitnetcpp.json"));
        let folder = repo(&format!(
            "testdata/family/{family}/{}",
            folders.last().unwrap()
        ));
        let ckpt = hf::Checkpoint::open(&folder).unwrap();
        let options = hf::ConvertOptions::new(hf::OutType::I2S);
        let (bytes, summary) = hf::convert::convert_to_vec(&ckpt, &options).unwrap();
        assert!(
            summary.skipped.is_empty(),
            "{family}: {:?}",
            summary.skipped
        );
        let file = bitnet::formats::gguf::GgufFile::from_vec(family, bytes).unwrap();
        assert_eq!(
            file.metadata().get_str("general.architecture").unwrap(),
            arch.gguf_name()
        );
        if cpp.get("not_comparable").is_some() {
            // bitnet.cpp has no pre-quantization norm: the converter says so.
            assert!(
                summary.notes.iter().any(|n| n.contains("use_rms_norm")),
                "{family}: {:?}",
                summary.notes
            );
            continue;
        }
        let model = BitnetModel::from_gguf(std::sync::Arc::new(file)).unwrap();
        let mut whole = 0;
        for run in cpp["runs"].as_array().unwrap() {
            let prompt = ids(&run["prompt_ids"]);
            let expected = ids(&run["new_tokens"]);
            let margins: Vec<f64> = run["top2_margin"]
                .as_array()
                .unwrap()
                .iter()
                .map(|m| m.as_f64().unwrap())
                .collect();
            let firm = margins
                .iter()
                .position(|&m| m < TIE_MARGIN)
                .unwrap_or(expected.len());
            for ty in [CacheType::F16, CacheType::F32] {
                let ours = greedy(&model, &prompt, expected.len(), ty);
                assert_eq!(
                    ours[..firm],
                    expected[..firm],
                    "{family} {prompt:?} {ty:?} cache vs bitnet.cpp (first {firm} steps)"
                );
                if ty == CacheType::F16 && ours == expected {
                    whole += 1;
                }
            }
        }
        // Most runs agree to the last token despite the near-ties.
        assert!(whole >= 2, "{family}: {whole} whole runs equal");
    }
}

/// llama.cpp's ternary types for the `llama` and `bitnet` architectures keep every ternary
/// value and store the scale as f16 per 256 values: they give the logits of the same weights
/// with f16-rounded scales (the F16 conversion, ternarized at load), to float noise.
#[test]
fn tq_types_hold_the_same_family_models() {
    for (family, folders, _) in FAMILIES {
        let folder = repo(&format!("testdata/family/{family}/{}", folders[0]));
        let ckpt = hf::Checkpoint::open(&folder).unwrap();
        let logits = |ty: hf::OutType| {
            let (bytes, _) =
                hf::convert::convert_to_vec(&ckpt, &hf::ConvertOptions::new(ty)).unwrap();
            let file = bitnet::formats::gguf::GgufFile::from_vec(family, bytes).unwrap();
            // Rows of 128 (these models' hidden size) are not whole 256-value TQ blocks and
            // fall back to F16, as llama-quantize does; the FFN's 256-wide rows are TQ.
            let n_ty = file
                .tensors()
                .iter()
                .filter(|t| t.ty == ty.tensor_type())
                .count();
            let expected = match (ty, family) {
                (hf::OutType::F16, _) => n_ty,
                (_, "bitnet1-oddff") => 0,
                _ => 2,
            };
            assert_eq!(n_ty, expected, "{family} {ty}");
            let model = BitnetModel::from_gguf(std::sync::Arc::new(file)).unwrap();
            let mut cache = model.new_cache(0, CacheType::F32).unwrap();
            model
                .forward(&[1021, 568, 559, 845, 275], &mut cache, Logits::All)
                .unwrap()
        };
        let reference = logits(hf::OutType::F16);
        for ty in [hf::OutType::TQ2_0, hf::OutType::TQ1_0] {
            let l = logits(ty);
            let d = l
                .iter()
                .zip(&reference)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            assert!(d <= 1e-3, "{family} {ty}: max |Δlogit| vs F16 {d}");
        }
    }
}

/// The `bitnet` architecture's optional per-tensor `.scale` (llama.cpp multiplies each linear's
/// output by it): a file whose I2_S scales are divided by 4 and that carries `.scale` = 4 for
/// every linear holds the same model.
#[test]
fn bitnet_scale_tensors_multiply_the_outputs() {
    use bitnet::formats::gguf::{GgufFile, GgufWriter, TensorSpec};
    use bitnet::formats::types::TensorType;
    let folder = repo("testdata/family/bitnet1/hf");
    let ckpt = hf::Checkpoint::open(&folder).unwrap();
    let options = hf::ConvertOptions::new(hf::OutType::I2S);
    let (bytes, _) = hf::convert::convert_to_vec(&ckpt, &options).unwrap();
    let plain = GgufFile::from_vec("plain", bytes).unwrap();
    let mut specs = Vec::new();
    for t in plain.tensors() {
        specs.push(TensorSpec {
            name: t.name.clone(),
            ty: t.ty,
            dims: t.dims.clone(),
        });
        if t.ty == TensorType::I2S {
            specs.push(TensorSpec {
                name: t.name.replace(".weight", ".scale"),
                ty: TensorType::F32,
                dims: vec![1],
            });
        }
    }
    let mut w = GgufWriter::new(Vec::new(), plain.metadata(), specs).unwrap();
    for t in plain.tensors() {
        let mut data = plain.bytes()[plain.tensor_range(t)].to_vec();
        if t.ty == TensorType::I2S {
            let at = (t.dims[0] * t.dims[1] / 4) as usize;
            let s = f32::from_le_bytes(data[at..at + 4].try_into().unwrap());
            data[at..at + 4].copy_from_slice(&(s / 4.0).to_le_bytes());
            w.write_tensor(&t.name, &data).unwrap();
            w.write_tensor(&t.name.replace(".weight", ".scale"), &4f32.to_le_bytes())
                .unwrap();
        } else {
            w.write_tensor(&t.name, &data).unwrap();
        }
    }
    let scaled = GgufFile::from_vec("scaled", w.finish().unwrap()).unwrap();
    let logits = |file: GgufFile| {
        let model = BitnetModel::from_gguf(std::sync::Arc::new(file)).unwrap();
        let mut cache = model.new_cache(0, CacheType::F32).unwrap();
        model
            .forward(&[1021, 568, 559, 845, 275], &mut cache, Logits::All)
            .unwrap()
    };
    let (a, b) = (logits(plain), logits(scaled));
    let d = a
        .iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max);
    // Dividing and multiplying by 4 is exact in binary floating point.
    assert!(d <= 1e-5, "{d}");
}
