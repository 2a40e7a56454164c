//! The forward pass against outside references: transformers' float32 logits and greedy tokens
//! (`fixture.json`), bitnet.cpp's greedy tokens (`bitnetcpp.json`, `bitnetcpp-greedy.json`),
//! and transformers' greedy samples of the trained demo model.

use std::sync::Arc;

use bitnet::formats::gguf::GgufFile;
use bitnet::kernels::Isa;
use bitnet::model::{BitnetModel, CacheType, Logits, ModelError};
use serde_json::Value;

mod common;
use common::{ids, json, repo};

fn floats(v: &Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

fn argmax(x: &[f32]) -> usize {
    // Ties go to the lowest id, as in both references.
    let mut best = 0;
    for (i, &v) in x.iter().enumerate() {
        if v > x[best] {
            best = i;
        }
    }
    best
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn visible_model() -> BitnetModel {
    BitnetModel::open(repo("testdata/visible/model-i2_s.gguf")).unwrap()
}

fn greedy(model: &BitnetModel, prompt: &[u32], n: usize, cache_type: CacheType) -> Vec<u32> {
    let mut cache = model.new_cache(0, cache_type).unwrap();
    let mut logits = model.forward(prompt, &mut cache, Logits::Last).unwrap();
    let mut out = Vec::new();
    for _ in 0..n {
        let next = argmax(&logits) as u32;
        out.push(next);
        logits = model.forward(&[next], &mut cache, Logits::Last).unwrap();
    }
    out
}

/// Logits within 1e-3 of transformers at every position its five float32 variants agree on
/// (stable_positions_1e-4), with equal argmax there.
#[test]
fn visible_logits_match_transformers_at_stable_positions() {
    let mut model = visible_model();
    let fixture = json("testdata/visible/fixture.json");
    let n_vocab = model.config().n_vocab;
    for isa in Isa::available() {
        model.set_isa(isa);
        let mut worst = 0f32;
        for seq in fixture["sequences"].as_array().unwrap() {
            let tokens = ids(&seq["input_ids"]);
            let stable = ids(&seq["stability"]["stable_positions_1e-4"]);
            let mut cache = model.new_cache(0, CacheType::F32).unwrap();
            let ours = model.forward(&tokens, &mut cache, Logits::All).unwrap();
            let reference = seq["logits"].as_array().unwrap();
            assert_eq!(reference.len(), tokens.len());
            for &t in &stable {
                let t = t as usize;
                let ours = &ours[t * n_vocab..(t + 1) * n_vocab];
                let theirs = floats(&reference[t]);
                let d = max_abs_diff(ours, &theirs);
                worst = worst.max(d);
                assert!(d <= 1e-3, "len {} position {t}: max |Δ| {d}", tokens.len());
                assert_eq!(
                    argmax(ours),
                    argmax(&theirs),
                    "len {} position {t}",
                    tokens.len()
                );
            }
        }
        eprintln!("visible, {isa}: max |Δlogit| vs transformers at stable positions = {worst:e}");
    }
}

#[test]
fn visible_greedy_matches_transformers_and_bitnet_cpp() {
    let model = visible_model();
    let fixture = json("testdata/visible/fixture.json");
    let cpp = json("testdata/visible/bitnetcpp.json");
    let prompt = ids(&fixture["greedy"]["prompt_ids"]);
    assert_eq!(prompt, ids(&cpp["greedy"]["prompt_ids"]));
    let expected = ids(&fixture["greedy"]["new_tokens"]);
    assert_eq!(expected, ids(&cpp["greedy"]["new_tokens"]));
    let mut model = model;
    for isa in Isa::available() {
        model.set_isa(isa);
        for ty in [CacheType::F32, CacheType::F16] {
            assert_eq!(
                greedy(&model, &prompt, 32, ty),
                expected,
                "{isa} {ty:?} cache"
            );
        }
    }
}

/// The trained demo model: greedy tokens equal bitnet.cpp's and transformers' where those two
/// agree (all 100 tokens for ROMEO and JULIET).
#[test]
fn demo_greedy_matches_both_references() {
    let mut model = BitnetModel::open(repo("models/bitnet-shakespeare-7m-i2_s.gguf")).unwrap();
    let cpp = json("testdata/demo/bitnetcpp-greedy.json");
    let mut checked = 0;
    for isa in Isa::available() {
        model.set_isa(isa);
        for sample in cpp["samples"].as_array().unwrap() {
            let prompt = sample["prompt"].as_str().unwrap();
            if prompt != "ROMEO:\n" && prompt != "JULIET:\n" {
                continue;
            }
            let prompt_ids = ids(&sample["prompt_ids"]);
            let expected = ids(&sample["generated_ids"]);
            assert_eq!(expected.len(), 100);
            for ty in [CacheType::F32, CacheType::F16] {
                let ours = greedy(&model, &prompt_ids, expected.len(), ty);
                assert_eq!(ours, expected, "{prompt:?} with {isa}, {ty:?} cache");
            }
            checked += 1;
        }
    }
    assert_eq!(checked, 2 * Isa::available().len());

    // transformers' samples file lists the same ids for those prompts.
    let text = std::fs::read_to_string(repo("testdata/demo/transformers-samples.txt")).unwrap();
    let tf_lines: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("generated ids:"))
        .collect();
    for (line, sample) in tf_lines.iter().zip(cpp["samples"].as_array().unwrap()) {
        let prompt = sample["prompt"].as_str().unwrap();
        if prompt == "ROMEO:\n" || prompt == "JULIET:\n" {
            let list = line.trim_start_matches("generated ids:").trim();
            let tf: Vec<u32> = serde_json::from_str(list).unwrap();
            assert_eq!(tf, ids(&sample["generated_ids"]), "{prompt:?}");
        }
    }
}

/// Decoding from the 1.6-bit layout (T1_6) on every ISA: bitnet.cpp's greedy tokens, and
/// logits bit-identical to decoding from I2_S (the same integer products), from 20 % fewer
/// ternary weight bytes per token.
#[test]
fn t16_decode_matches_bitnet_cpp_and_i2s_bit_for_bit() {
    use bitnet::kernels::DecodeLayout;
    let mut model = BitnetModel::open(repo("models/bitnet-shakespeare-7m-i2_s.gguf")).unwrap();
    let cpp = json("testdata/demo/bitnetcpp-greedy.json");
    let sample = cpp["samples"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["prompt"] == "ROMEO:\n")
        .unwrap();
    let prompt_ids = ids(&sample["prompt_ids"]);
    let expected = ids(&sample["generated_ids"]);
    model.set_decode_layout(Some(DecodeLayout::I2s));
    let i2s_bytes = model.bytes_read_per_token();
    let decode = |model: &BitnetModel| {
        let mut cache = model.new_cache(0, CacheType::F32).unwrap();
        model
            .forward(&prompt_ids, &mut cache, Logits::Last)
            .unwrap();
        let mut logits = Vec::new();
        for &t in &expected[..20] {
            logits.extend(model.forward(&[t], &mut cache, Logits::Last).unwrap());
        }
        logits
    };
    model.set_decode_layout(Some(DecodeLayout::T16));
    assert!(model
        .decode_layouts()
        .iter()
        .all(|(_, _, _, l)| *l == DecodeLayout::T16));
    // Every BitLinear (in → out) in I2_S (in/4 bytes a row) and in T1_6 (32 bytes per 160
    // values, 2 bits a value in the tail).
    let c = model.config();
    let (h, q, kv, ff) = (c.n_embd, c.q_dim(), c.kv_dim(), c.n_ff);
    let shapes = [(h, q), (h, kv), (h, kv), (q, h), (h, ff), (h, ff), (ff, h)];
    let bytes = |row: fn(usize) -> usize| -> usize {
        shapes.iter().map(|&(i, o)| o * row(i)).sum::<usize>() * c.n_layer
    };
    let (i2s, t16) = (bytes(|k| k / 4), bytes(|k| k / 160 * 32 + k % 160 / 4));
    assert!(t16 * 10 < i2s * 9, "{t16} vs {i2s}");
    assert_eq!(i2s_bytes - model.bytes_read_per_token(), i2s - t16);
    // The float parts of the forward pass add in each ISA's order: compare per ISA.
    for isa in Isa::available() {
        model.set_isa(isa);
        assert_eq!(
            greedy(&model, &prompt_ids, expected.len(), CacheType::F16),
            expected,
            "{isa}"
        );
        let ours = decode(&model);
        model.set_decode_layout(Some(DecodeLayout::I2s));
        let reference = decode(&model);
        model.set_decode_layout(Some(DecodeLayout::T16));
        assert!(
            ours.iter()
                .zip(&reference)
                .all(|(a, b)| a.to_bits() == b.to_bits()),
            "{isa}"
        );
    }
}

/// One token at a time through the KV cache equals one prefill of the whole sequence.
#[test]
fn kv_cache_decode_equals_prefill() {
    let model = visible_model();
    let fixture = json("testdata/visible/fixture.json");
    let n_vocab = model.config().n_vocab;
    for seq in fixture["sequences"].as_array().unwrap() {
        let tokens = ids(&seq["input_ids"]);
        for ty in [CacheType::F32, CacheType::F16] {
            let mut cache = model.new_cache(0, ty).unwrap();
            let full = model.forward(&tokens, &mut cache, Logits::All).unwrap();
            let mut cache = model.new_cache(0, ty).unwrap();
            for (t, &tok) in tokens.iter().enumerate() {
                let step = model.forward(&[tok], &mut cache, Logits::Last).unwrap();
                let d = max_abs_diff(&step, &full[t * n_vocab..(t + 1) * n_vocab]);
                assert!(d <= 1e-4, "len {} position {t} {ty:?}: {d}", tokens.len());
            }
        }
    }
}

/// Results do not depend on the thread count: the work is split by output rows and by
/// (token, head) pairs, never by reordering a reduction.
#[test]
fn logits_are_bit_identical_for_any_thread_count() {
    let mut model = BitnetModel::open(repo("models/bitnet-shakespeare-7m-i2_s.gguf")).unwrap();
    let tokens: Vec<u32> = (0..37).map(|i| (i * 131 % 4000) as u32).collect();
    for ty in [CacheType::F16, CacheType::F32] {
        let mut runs = Vec::new();
        for threads in [1, 2, 3] {
            model.set_threads(threads);
            let mut cache = model.new_cache(0, ty).unwrap();
            let mut all = model.forward(&tokens, &mut cache, Logits::All).unwrap();
            all.extend(model.forward(&[7], &mut cache, Logits::Last).unwrap());
            runs.push(all);
        }
        for r in &runs[1..] {
            assert!(r
                .iter()
                .zip(&runs[0])
                .all(|(a, b)| a.to_bits() == b.to_bits()));
        }
    }
}

#[test]
fn forward_is_deterministic() {
    let model = visible_model();
    let tokens: Vec<u32> = (0..40).map(|i| (i * 97 % 1024) as u32).collect();
    let run = || {
        let mut cache = model.new_cache(0, CacheType::F16).unwrap();
        model.forward(&tokens, &mut cache, Logits::All).unwrap()
    };
    let a = run();
    let b = run();
    assert!(a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()));
}

/// bitnet.cpp's F32 GGUF holds the same linears as float `t·m`; loaded, they ternarize back
/// exactly (identical ternary products), so the logits differ only by the output product's
/// float summation (F32 vs F16 storage of the same embedding values).
#[test]
fn f32_gguf_gives_the_same_logits_as_i2s() {
    let a = visible_model();
    let b = BitnetModel::open(repo("testdata/visible/model-f32.gguf")).unwrap();
    assert_eq!(
        b.weight_formats().0,
        bitnet::formats::types::TensorType::I2S
    );
    let tokens: Vec<u32> = vec![1021, 568, 559, 845, 275, 10, 20];
    let mut ca = a.new_cache(0, CacheType::F32).unwrap();
    let mut cb = b.new_cache(0, CacheType::F32).unwrap();
    let la = a.forward(&tokens, &mut ca, Logits::All).unwrap();
    let lb = b.forward(&tokens, &mut cb, Logits::All).unwrap();
    let d = max_abs_diff(&la, &lb);
    assert!(d <= 1e-4, "{d}");
}

#[test]
fn bad_input_is_a_clear_error() {
    let model = visible_model();
    let mut cache = model.new_cache(8, CacheType::F32).unwrap();
    match model.forward(&[1, 2, 5000], &mut cache, Logits::Last) {
        Err(ModelError::TokenOutOfRange {
            token: 5000,
            index: 2,
            n_vocab: 1024,
        }) => {}
        other => panic!("{:?}", other.err()),
    }
    assert!(matches!(
        model.forward(&[1; 9], &mut cache, Logits::Last),
        Err(ModelError::ContextFull {
            needed: 9,
            capacity: 8
        })
    ));
    model.forward(&[1; 8], &mut cache, Logits::Last).unwrap();
    let e = model.forward(&[1], &mut cache, Logits::Last).unwrap_err();
    assert_eq!(
        e.to_string(),
        "the context is full: 9 positions needed, the cache holds 8"
    );
    assert!(matches!(
        model.forward(&[], &mut cache, Logits::Last),
        Err(ModelError::EmptyInput)
    ));
}

/// Rewrites the visible model with one tensor changed, and loads it.
fn load_modified(
    edit: impl FnOnce(
        &mut Vec<(
            String,
            bitnet::formats::types::TensorType,
            Vec<u64>,
            Vec<u8>,
        )>,
    ),
) -> Result<BitnetModel, ModelError> {
    use bitnet::formats::gguf::{GgufWriter, TensorSpec};
    let src = GgufFile::open(repo("testdata/visible/model-i2_s.gguf")).unwrap();
    let mut tensors: Vec<_> = src
        .tensors()
        .iter()
        .map(|t| {
            (
                t.name.clone(),
                t.ty,
                t.dims.clone(),
                src.tensor(&t.name).unwrap().data.to_vec(),
            )
        })
        .collect();
    edit(&mut tensors);
    let specs = tensors
        .iter()
        .map(|(name, ty, dims, _)| TensorSpec {
            name: name.clone(),
            ty: *ty,
            dims: dims.clone(),
        })
        .collect();
    let mut w = GgufWriter::new(Vec::new(), src.metadata(), specs).unwrap();
    for (name, _, _, data) in &tensors {
        w.write_tensor(name, data).unwrap();
    }
    let bytes = w.finish().unwrap();
    let file = GgufFile::from_vec("modified.gguf", bytes)?;
    BitnetModel::from_gguf(Arc::new(file))
}

#[test]
fn missing_or_misshapen_tensors_are_named() {
    let e = load_modified(|t| t.retain(|(n, ..)| n != "blk.1.ffn_up.weight")).unwrap_err();
    assert_eq!(
        e.to_string(),
        "modified.gguf: tensor `blk.1.ffn_up.weight` is missing"
    );

    let e = load_modified(|t| {
        let norm = t
            .iter_mut()
            .find(|(n, ..)| n == "blk.0.attn_norm.weight")
            .unwrap();
        norm.2 = vec![64];
        norm.3.truncate(256);
    })
    .unwrap_err();
    assert_eq!(
        e.to_string(),
        "modified.gguf: tensor `blk.0.attn_norm.weight` has shape [64], expected [128]"
    );

    let e = load_modified(|t| {
        let q = t
            .iter_mut()
            .find(|(n, ..)| n == "blk.0.attn_q.weight")
            .unwrap();
        q.3[3] = 0xff;
    })
    .unwrap_err();
    assert!(
        e.to_string()
            .contains("tensor `blk.0.attn_q.weight`: I2_S byte 3 holds the unused 2-bit code 3"),
        "{e}"
    );
}

/// What the default f16 cache (with bitnet.cpp's f16 rounding of q and of the attention
/// probabilities) costs against transformers, and how close it brings us to bitnet.cpp.
#[test]
fn f16_cache_cost_on_the_fixtures() {
    let model = visible_model();
    let fixture = json("testdata/visible/fixture.json");
    let cpp = json("testdata/visible/bitnetcpp.json");
    let n_vocab = model.config().n_vocab;
    let (mut vs_tf_f16, mut vs_tf_f32, mut vs_cpp_f16, mut vs_cpp_f32) = (0f32, 0f32, 0f32, 0f32);
    for (seq, cseq) in fixture["sequences"]
        .as_array()
        .unwrap()
        .iter()
        .zip(cpp["sequences"].as_array().unwrap())
    {
        let tokens = ids(&seq["input_ids"]);
        let stable = ids(&seq["stability"]["stable_positions_1e-4"]);
        let run = |ty| {
            let mut cache = model.new_cache(0, ty).unwrap();
            model.forward(&tokens, &mut cache, Logits::All).unwrap()
        };
        let (l16, l32) = (run(CacheType::F16), run(CacheType::F32));
        for &t in &stable {
            let t = t as usize;
            let r = t * n_vocab..(t + 1) * n_vocab;
            let tf = floats(&seq["logits"][t]);
            let bc = floats(&cseq["logits"][t]);
            vs_tf_f16 = vs_tf_f16.max(max_abs_diff(&l16[r.clone()], &tf));
            vs_tf_f32 = vs_tf_f32.max(max_abs_diff(&l32[r.clone()], &tf));
            vs_cpp_f16 = vs_cpp_f16.max(max_abs_diff(&l16[r.clone()], &bc));
            vs_cpp_f32 = vs_cpp_f32.max(max_abs_diff(&l32[r], &bc));
        }
    }
    eprintln!(
        "max |Δlogit| at stable positions: f32 cache vs transformers {vs_tf_f32:e}, \
         f16 cache vs transformers {vs_tf_f16:e}, f16 vs bitnet.cpp {vs_cpp_f16:e}, \
         f32 vs bitnet.cpp {vs_cpp_f32:e}"
    );
    assert!(vs_tf_f32 <= 1e-3);

    // bitnet.cpp's greedy run decodes one token per step, the arithmetic the f16 mode copies.
    let prompt = ids(&cpp["greedy"]["prompt_ids"]);
    let steps = cpp["greedy"]["step_logits"].as_array().unwrap();
    let tokens = ids(&cpp["greedy"]["new_tokens"]);
    let mut cache = model.new_cache(0, CacheType::F16).unwrap();
    let mut logits = model.forward(&prompt, &mut cache, Logits::Last).unwrap();
    let mut worst_step = 0f32;
    for (k, step) in steps.iter().enumerate() {
        let d = max_abs_diff(&logits, &floats(step));
        worst_step = worst_step.max(d);
        logits = model
            .forward(&[tokens[k]], &mut cache, Logits::Last)
            .unwrap();
    }
    eprintln!("greedy step logits, f16 mode vs bitnet.cpp: max |Δ| {worst_step:e}");

    // On the trained demo model (not chaotic like the random one): f16 against f32 over a
    // 103-token sequence.
    let demo = BitnetModel::open(repo("models/bitnet-shakespeare-7m-i2_s.gguf")).unwrap();
    let greedy = json("testdata/demo/bitnetcpp-greedy.json");
    let sample = &greedy["samples"][0];
    let mut tokens = ids(&sample["prompt_ids"]);
    tokens.extend(ids(&sample["generated_ids"]));
    let run = |ty| {
        let mut cache = demo.new_cache(0, ty).unwrap();
        demo.forward(&tokens, &mut cache, Logits::All).unwrap()
    };
    let (l16, l32) = (run(CacheType::F16), run(CacheType::F32));
    let nv = demo.config().n_vocab;
    let same_argmax = l16
        .chunks(nv)
        .zip(l32.chunks(nv))
        .filter(|(a, b)| argmax(a) == argmax(b))
        .count();
    let d = max_abs_diff(&l16, &l32);
    eprintln!(
        "demo model, {} positions: f16 vs f32 max |Δlogit| {d:e}, argmax equal at {same_argmax}",
        tokens.len()
    );
    assert!(same_argmax + 2 >= tokens.len());
}

/// The opt-in smaller output matrices: what they cost in logits and in greedy agreement.
#[test]
fn quantized_output_matrix_accuracy() {
    use bitnet::formats::types::TensorType;
    let cpp = json("testdata/demo/bitnetcpp-greedy.json");
    let base = BitnetModel::open(repo("models/bitnet-shakespeare-7m-i2_s.gguf")).unwrap();
    let nv = base.config().n_vocab;
    let sample = &cpp["samples"][0];
    let mut tokens = ids(&sample["prompt_ids"]);
    tokens.extend(ids(&sample["generated_ids"]));
    let run = |m: &BitnetModel| {
        let mut cache = m.new_cache(0, CacheType::F32).unwrap();
        m.forward(&tokens, &mut cache, Logits::All).unwrap()
    };
    let reference = run(&base);
    // (type, bound on max |Δlogit|, positions whose argmax may move)
    for (ty, max_delta, moved) in [(TensorType::Q8_0, 0.1, 0), (TensorType::Q6K, 0.5, 5)] {
        let mut m = BitnetModel::open(repo("models/bitnet-shakespeare-7m-i2_s.gguf")).unwrap();
        m.set_output_type(ty).unwrap();
        assert_eq!(m.weight_formats().1, ty);
        let logits = run(&m);
        let d = max_abs_diff(&logits, &reference);
        let same_argmax = logits
            .chunks(nv)
            .zip(reference.chunks(nv))
            .filter(|(a, b)| argmax(a) == argmax(b))
            .count();
        let mut agree = Vec::new();
        for s in cpp["samples"].as_array().unwrap() {
            let expected = ids(&s["generated_ids"]);
            let ours = greedy(&m, &ids(&s["prompt_ids"]), expected.len(), CacheType::F32);
            agree.push(
                ours.iter()
                    .zip(&expected)
                    .take_while(|(a, b)| a == b)
                    .count(),
            );
        }
        eprintln!(
            "demo, {ty} output: max |Δlogit| vs F16 {d:.4}, argmax equal at {same_argmax}/{} \
             positions, greedy tokens equal to the references (prefix per prompt): {agree:?}",
            tokens.len()
        );
        assert!(d <= max_delta, "{ty}: {d}");
        assert!(same_argmax + moved >= tokens.len(), "{ty}: {same_argmax}");
    }
    // The visible model (hidden size 128) can take Q8_0 but not Q6_K (256-value blocks).
    let mut m = visible_model();
    assert!(m.set_output_type(TensorType::Q6K).is_err());
    m.set_output_type(TensorType::Q8_0).unwrap();
}
