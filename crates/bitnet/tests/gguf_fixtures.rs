//! The GGUF reader, decoders and writer against files made by the reference tools:
//! bitnet.cpp's converter and quantizer (GGUF) and Hugging Face transformers (safetensors).

use std::path::PathBuf;

use bitnet::formats::gguf::{GgufFile, GgufWriter, TensorSpec};
use bitnet::formats::types::TensorType;
use half::{bf16, f16};
use safetensors::{Dtype, SafeTensors};

fn testdata(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../testdata")
        .join(rel)
}

fn repo_file(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(rel)
}

/// A Hugging Face tensor as f32 plus its shape.
fn hf_tensor(st: &SafeTensors, name: &str) -> (Vec<f32>, Vec<usize>) {
    let t = st.tensor(name).unwrap_or_else(|e| panic!("{name}: {e}"));
    let values = match t.dtype() {
        Dtype::F32 => t
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
        Dtype::BF16 => t
            .data()
            .chunks_exact(2)
            .map(|b| bf16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        Dtype::F16 => t
            .data()
            .chunks_exact(2)
            .map(|b| f16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        Dtype::U8 => t.data().iter().map(|&b| b as f32).collect(),
        other => panic!("{name}: unexpected dtype {other:?}"),
    };
    (values, t.shape().to_vec())
}

/// The Hugging Face name of a GGUF linear weight (`blk.0.attn_q.weight` →
/// `model.layers.0.self_attn.q_proj.weight`).
fn hf_name(gguf_name: &str) -> String {
    let rest = gguf_name.strip_prefix("blk.").unwrap();
    let (layer, rest) = rest.split_once('.').unwrap();
    let module = match rest.strip_suffix(".weight").unwrap() {
        "attn_q" => "self_attn.q_proj",
        "attn_k" => "self_attn.k_proj",
        "attn_v" => "self_attn.v_proj",
        "attn_output" => "self_attn.o_proj",
        "ffn_gate" => "mlp.gate_proj",
        "ffn_up" => "mlp.up_proj",
        "ffn_down" => "mlp.down_proj",
        other => panic!("not a linear: {other}"),
    };
    format!("model.layers.{layer}.{module}.weight")
}

/// transformers' online ternarization in float32: m = mean|W|, t = round_half_even(W / m),
/// computed as `W * (1/m)` like `AutoBitLinear` and bitnet.cpp's preprocess do.
fn ternarize(w: &[f32]) -> (Vec<i8>, f32) {
    let mean = (w.iter().map(|x| x.abs() as f64).sum::<f64>() / w.len() as f64) as f32;
    let m = mean.max(1e-5);
    let sw = 1.0 / m;
    let t = w
        .iter()
        .map(|&x| (x * sw).round_ties_even().clamp(-1.0, 1.0) as i8)
        .collect();
    (t, m)
}

/// transformers' packed layout: uint8 [out/4, in], row chunk k in bits 2k..2k+1.
fn unpack_hf(packed: &[f32], shape: &[usize]) -> Vec<i8> {
    let (r, cols) = (shape[0], shape[1]);
    let mut t = vec![0i8; 4 * r * cols];
    for k in 0..4 {
        for row in 0..r {
            for c in 0..cols {
                let p = packed[row * cols + c] as u8;
                t[(k * r + row) * cols + c] = ((p >> (2 * k)) & 3) as i8 - 1;
            }
        }
    }
    t
}

fn i2s_tensors(gguf: &GgufFile) -> Vec<String> {
    gguf.tensors()
        .iter()
        .filter(|t| t.ty == TensorType::I2S)
        .map(|t| t.name.clone())
        .collect()
}

#[test]
fn visible_i2s_decodes_to_the_hf_ternary_weights_and_scales() {
    let gguf = GgufFile::open(testdata("visible/model-i2_s.gguf")).unwrap();
    let online_bytes = std::fs::read(testdata("visible/hf-online/model.safetensors")).unwrap();
    let online = SafeTensors::deserialize(&online_bytes).unwrap();
    let packed_bytes = std::fs::read(testdata("visible/hf-packed/model.safetensors")).unwrap();
    let packed = SafeTensors::deserialize(&packed_bytes).unwrap();

    let names = i2s_tensors(&gguf);
    assert_eq!(names.len(), 14);
    for name in names {
        let view = gguf.tensor(&name).unwrap();
        let ours = view.to_ternary().unwrap();
        let hf = hf_name(&name);

        let (p, shape) = hf_tensor(&packed, &hf);
        let (scale, _) = hf_tensor(&packed, &hf.replace(".weight", ".weight_scale"));
        let out_features = shape[0] * 4;
        assert_eq!(
            view.info.dims,
            vec![shape[1] as u64, out_features as u64],
            "{name}"
        );
        assert_eq!(ours.values, unpack_hf(&p, &shape), "{name} vs hf-packed");
        assert_eq!(
            ours.scales[0].to_bits(),
            scale[0].to_bits(),
            "{name} scale vs weight_scale"
        );

        let (w, _) = hf_tensor(&online, &hf);
        let (t, m) = ternarize(&w);
        assert_eq!(ours.values, t, "{name} vs hf-online ternarized");
        assert!((ours.scales[0] - m).abs() <= m * 1e-6, "{name} scale {m}");
    }
}

#[test]
fn demo_i2s_decodes_to_the_hf_bf16_master_weights_ternarized() {
    let gguf = GgufFile::open(repo_file("models/bitnet-shakespeare-7m-i2_s.gguf")).unwrap();
    let bytes = std::fs::read(testdata("demo/hf/model.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let names = i2s_tensors(&gguf);
    assert_eq!(names.len(), 8 * 7);
    for name in names {
        let ours = gguf.tensor(&name).unwrap().to_ternary().unwrap();
        let (w, _) = hf_tensor(&st, &hf_name(&name));
        let (t, m) = ternarize(&w);
        assert_eq!(ours.values, t, "{name}");
        // bitnet.cpp stores max|t / s| with s = 1/m: m up to float rounding.
        assert!((ours.scales[0] - m).abs() <= m * 1e-6, "{name}");
    }
}

/// bitnet.cpp's F32 converter output holds the same linears as float `t * m`.
#[test]
fn i2s_times_scale_equals_the_f32_gguf_of_the_same_model() {
    let i2s = GgufFile::open(testdata("visible/model-i2_s.gguf")).unwrap();
    let f32_file = GgufFile::open(testdata("visible/model-f32.gguf")).unwrap();
    for name in i2s_tensors(&i2s) {
        let q = i2s.tensor(&name).unwrap().to_f32().unwrap();
        let f = f32_file.tensor(&name).unwrap();
        assert_eq!(f.info.ty, TensorType::F32);
        let f = f.to_f32().unwrap();
        assert_eq!(q.len(), f.len());
        let scale = i2s.tensor(&name).unwrap().to_ternary().unwrap().scales[0];
        for (a, b) in q.iter().zip(&f) {
            assert!((a - b).abs() <= scale * 1e-6, "{name}: {a} vs {b}");
        }
    }
    // Norms and embeddings are the same values in both files (token_embd F16 is exact here).
    for t in f32_file.tensors() {
        if i2s.tensor_info(&t.name).unwrap().ty != TensorType::I2S {
            let a = i2s.tensor(&t.name).unwrap().to_f32().unwrap();
            let b = f32_file.tensor(&t.name).unwrap().to_f32().unwrap();
            assert_eq!(a, b, "{}", t.name);
        }
    }
}

#[test]
fn the_fixture_files_have_the_documented_shape() {
    let gguf = GgufFile::open(testdata("visible/model-i2_s.gguf")).unwrap();
    let md = gguf.metadata();
    assert_eq!(md.get_str("general.architecture").unwrap(), "bitnet-b1.58");
    assert_eq!(md.get_str("tokenizer.ggml.pre").unwrap(), "llama-bpe");
    assert_eq!(md.get_u64("bitnet-b1.58.block_count").unwrap(), 2);
    let embd = gguf.tensor_info("token_embd.weight").unwrap();
    assert_eq!(embd.ty, TensorType::F16);
    assert_eq!(embd.dims, vec![128, 1024]);

    let vocab = GgufFile::open(testdata("tokenizer/llama3-vocab.gguf")).unwrap();
    assert_eq!(
        vocab
            .metadata()
            .get_array("tokenizer.ggml.tokens")
            .unwrap()
            .len(),
        128256
    );
    assert_eq!(
        vocab
            .metadata()
            .get_array("tokenizer.ggml.merges")
            .unwrap()
            .len(),
        280147
    );
    assert!(!vocab.metadata().contains("tokenizer.ggml.pre"));
}

/// Reading a file and writing it back gives the same bytes (our writer lays files out the way
/// bitnet.cpp's tools do).
#[test]
fn writer_round_trips_reference_files_byte_exactly() {
    for rel in [
        "testdata/visible/model-i2_s.gguf",
        "testdata/visible/model-f32.gguf",
        "testdata/tokenizer/llama3-vocab.gguf",
        "models/bitnet-shakespeare-7m-i2_s.gguf",
    ] {
        let path = repo_file(rel);
        let original = std::fs::read(&path).unwrap();
        let gguf = GgufFile::open(&path).unwrap();
        let specs = gguf
            .tensors()
            .iter()
            .map(|t| TensorSpec {
                name: t.name.clone(),
                ty: t.ty,
                dims: t.dims.clone(),
            })
            .collect();
        let mut w = GgufWriter::new(Vec::new(), gguf.metadata(), specs).unwrap();
        for t in gguf.tensors() {
            w.write_tensor(&t.name, gguf.tensor(&t.name).unwrap().data)
                .unwrap();
        }
        let written = w.finish().unwrap();
        assert_eq!(written.len(), original.len(), "{rel}");
        assert!(written == original, "{rel} differs");
    }
}

/// `read_into_memory` (the `--no-mmap` loader) sees exactly what the memory map sees.
#[test]
fn reading_into_memory_equals_mapping() {
    let path = testdata("visible/model-i2_s.gguf");
    let mapped = GgufFile::open(&path).unwrap();
    let read = GgufFile::read_into_memory(&path).unwrap();
    assert_eq!(mapped.bytes(), read.bytes());
    assert_eq!(mapped.tensors(), read.tensors());
    assert_eq!(mapped.metadata().len(), read.metadata().len());
    assert!(GgufFile::read_into_memory(testdata("missing.gguf")).is_err());
}
