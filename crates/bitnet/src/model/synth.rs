//! Random-weight BitNet-family models of real shapes, written as GGUF in their architecture's
//! layout: I2_S linears with realistic ternary statistics (~31 % zeros), an F16 embedding (and
//! an F16 output matrix for untied models), F32 norms. Benchmarks and load tests use them where
//! the real weights cannot be downloaded. The hyperparameters are those of each model's
//! config.json.

use std::io::Write;

use half::f16;
use rand::{Rng, RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::formats::gguf::{GgufFile, GgufWriter, Metadata, TensorSpec, Value, WriteError};
use crate::formats::types::{i2_s, TensorType};

use super::config::{Architecture, Pooling, QUERY_PRE_ATTN_SCALAR_KEY};

/// A model shape.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Shape {
    /// The name `bitnet synth --shape` takes.
    pub name: &'static str,
    /// Vocabulary size.
    pub n_vocab: usize,
    /// Hidden size.
    pub n_embd: usize,
    /// Transformer layers.
    pub n_layer: usize,
    /// Feed-forward width.
    pub n_ff: usize,
    /// Query heads.
    pub n_head: usize,
    /// Key/value heads.
    pub n_head_kv: usize,
    /// Trained context length.
    pub n_ctx: usize,
    /// RoPE base frequency.
    pub rope_theta: f32,
    /// RMSNorm epsilon.
    pub rms_eps: f32,
    /// The architecture written.
    pub arch: Architecture,
    /// Whether the output matrix is the embedding (no `output.weight`).
    pub tied: bool,
    /// Width of one head (0: `n_embd / n_head`).
    pub head_dim: usize,
    /// Full-precision F16 linear weights and no BitNet-only norms: the float baseline of the
    /// same shape (for peers' F16 speed; this engine would ternarize them at load).
    pub float_weights: bool,
}

/// A `llama`-architecture ternary shape (Falcon3, Llama 3 1.58): untied, SiLU, no sub-norms.
#[allow(clippy::too_many_arguments)]
const fn llama(
    name: &'static str,
    n_vocab: usize,
    n_embd: usize,
    n_layer: usize,
    n_ff: usize,
    n_head: usize,
    n_head_kv: usize,
    n_ctx: usize,
    rope_theta: f32,
    rms_eps: f32,
) -> Shape {
    Shape {
        name,
        n_vocab,
        n_embd,
        n_layer,
        n_ff,
        n_head,
        n_head_kv,
        n_ctx,
        rope_theta,
        rms_eps,
        arch: Architecture::Llama,
        tied: false,
        head_dim: 0,
        float_weights: false,
    }
}

/// A 1bitLLM `bitnet` shape: tied, SiLU, sub-norms, no GQA, Llama 2's vocabulary + 2.
const fn one_bit_llm(
    name: &'static str,
    n_embd: usize,
    n_layer: usize,
    n_ff: usize,
    n_head: usize,
) -> Shape {
    Shape {
        name,
        n_vocab: 32002,
        n_embd,
        n_layer,
        n_ff,
        n_head,
        n_head_kv: n_head,
        n_ctx: 2048,
        rope_theta: 10000.0,
        rms_eps: 1e-5,
        arch: Architecture::Bitnet,
        tied: true,
        head_dim: 0,
        float_weights: false,
    }
}

/// The shapes `bitnet synth --shape` knows.
pub const SHAPES: [Shape; 12] = [
    // microsoft/bitnet-b1.58-2B-4T exactly.
    Shape {
        name: "2b-4t",
        n_vocab: 128256,
        n_embd: 2560,
        n_layer: 30,
        n_ff: 6912,
        n_head: 20,
        n_head_kv: 5,
        n_ctx: 4096,
        rope_theta: 500000.0,
        rms_eps: 1e-5,
        arch: Architecture::BitnetB158,
        tied: true,
        head_dim: 0,
        float_weights: false,
    },
    // The size class of 1bitLLM/bitnet_b1_58-large, with the b1.58 architecture.
    Shape {
        name: "700m",
        n_vocab: 32002,
        n_embd: 1536,
        n_layer: 24,
        n_ff: 4096,
        n_head: 16,
        n_head_kv: 16,
        n_ctx: 2048,
        rope_theta: 10000.0,
        rms_eps: 1e-5,
        arch: Architecture::BitnetB158,
        tied: true,
        head_dim: 0,
        float_weights: false,
    },
    // Small enough for tests.
    Shape {
        name: "tiny",
        n_vocab: 1024,
        n_embd: 256,
        n_layer: 2,
        n_ff: 768,
        n_head: 4,
        n_head_kv: 2,
        n_ctx: 512,
        rope_theta: 500000.0,
        rms_eps: 1e-5,
        arch: Architecture::BitnetB158,
        tied: true,
        head_dim: 0,
        float_weights: false,
    },
    // tiiuae/Falcon3-{1B,3B,7B,10B}-*-1.58bit (config.json of the 1.58bit uploads: head dim
    // 256, rope θ 1000042, eps 1e-6, 131072-token vocabulary, untied).
    llama(
        "falcon3-1b",
        131072,
        2048,
        18,
        8192,
        8,
        4,
        8192,
        1000042.0,
        1e-6,
    ),
    llama(
        "falcon3-3b",
        131072,
        3072,
        22,
        9216,
        12,
        4,
        4096,
        1000042.0,
        1e-6,
    ),
    llama(
        "falcon3-7b",
        131072,
        3072,
        28,
        23040,
        12,
        4,
        8192,
        1000042.0,
        1e-6,
    ),
    llama(
        "falcon3-10b",
        131072,
        3072,
        40,
        23040,
        12,
        4,
        32768,
        1000042.0,
        1e-6,
    ),
    // HF1BitLLM/Llama3-8B-1.58-100B-tokens: Llama 3 8B's shape.
    llama(
        "llama3-8b",
        128256,
        4096,
        32,
        14336,
        32,
        8,
        8192,
        500000.0,
        1e-5,
    ),
    // 1bitLLM/bitnet_b1_58-large (0.7B) and -3B.
    one_bit_llm("bitnet-large", 1536, 24, 4096, 16),
    one_bit_llm("bitnet-3b", 3200, 26, 8640, 32),
    // microsoft/BitNet's BitNet-embedding-0.6B (Qwen3 backbone; bitnet.cpp's
    // docs/bitnet-embeddings-gguf-conversion.md), with its per-projection norms.
    Shape {
        name: "bitnet-embedding-0.6b",
        n_vocab: 151936,
        n_embd: 1024,
        n_layer: 28,
        n_ff: 3072,
        n_head: 16,
        n_head_kv: 8,
        n_ctx: 32768,
        rope_theta: 1000000.0,
        rms_eps: 1e-6,
        arch: Architecture::Qwen3,
        tied: true,
        head_dim: 128,
        float_weights: false,
    },
    // BitNet-embedding-270M (Gemma 3 backbone).
    Shape {
        name: "bitnet-embedding-270m",
        n_vocab: 262144,
        n_embd: 640,
        n_layer: 18,
        n_ff: 2048,
        n_head: 4,
        n_head_kv: 1,
        n_ctx: 32768,
        rope_theta: 10000.0,
        rms_eps: 1e-6,
        arch: Architecture::Gemma3,
        tied: true,
        head_dim: 256,
        float_weights: false,
    },
];

/// Shapes asked for that this build cannot write, with the reason (shown by `bitnet synth`).
pub const REFUSED_SHAPES: [(&str, &str); 2] = [
    (
        "falcon-e-1b",
        "tiiuae/Falcon-E-1B config.json was not reachable when these shapes were written, so its hyperparameters are unknown here; convert or load the real checkpoint instead",
    ),
    (
        "falcon-e-3b",
        "tiiuae/Falcon-E-3B config.json was not reachable when these shapes were written, so its hyperparameters are unknown here; convert or load the real checkpoint instead",
    ),
];

impl Shape {
    /// The shape called `name`, if there is one.
    pub fn by_name(name: &str) -> Option<Shape> {
        SHAPES.iter().copied().find(|s| s.name == name)
    }

    /// Width of one head.
    pub fn head_dim(&self) -> usize {
        if self.head_dim == 0 {
            self.n_embd / self.n_head
        } else {
            self.head_dim
        }
    }

    /// Whether the shape is one of the BitNet embedding models (per-projection norms, Q/K
    /// head norms, a pooling type, no output matrix).
    pub fn is_embedding(&self) -> bool {
        matches!(self.arch, Architecture::Qwen3 | Architecture::Gemma3)
    }

    /// Every tensor of the model in the order bitnet.cpp writes them.
    pub fn tensors(&self) -> Vec<TensorSpec> {
        let hd = self.head_dim() as u64;
        let (h, ff, kv, qd) = (
            self.n_embd as u64,
            self.n_ff as u64,
            hd * self.n_head_kv as u64,
            hd * self.n_head as u64,
        );
        // The BitNet per-projection norms are not part of the float baseline.
        let embedding = self.is_embedding() && !self.float_weights;
        let gemma = self.arch == Architecture::Gemma3;
        let spec = |name: String, ty, dims: Vec<u64>| TensorSpec { name, ty, dims };
        // A linear whose rows are not whole I2_S blocks (1bitLLM 3B's ffn_down, 8640 inputs)
        // stays F16, as converters leave it; loading ternarizes it.
        let float = self.float_weights;
        let linear = |name: String, dims: Vec<u64>| {
            let ty = if !float && dims[0].is_multiple_of(i2_s::BLOCK_LEN as u64) {
                TensorType::I2S
            } else {
                TensorType::F16
            };
            TensorSpec { name, ty, dims }
        };
        let sub_norms = self.arch.has_sub_norms();
        let mut out = vec![spec(
            "token_embd.weight".into(),
            TensorType::F16,
            vec![h, self.n_vocab as u64],
        )];
        for i in 0..self.n_layer {
            let p = |n: &str| format!("blk.{i}.{n}.weight");
            // A projection, preceded in the embedding models by its own input norm.
            let proj = |out: &mut Vec<TensorSpec>, name: &str, dims: Vec<u64>| {
                if embedding {
                    out.push(spec(
                        p(&format!("{name}_norm_in")),
                        TensorType::F32,
                        vec![dims[0]],
                    ));
                }
                out.push(linear(p(name), dims));
            };
            out.push(spec(p("attn_norm"), TensorType::F32, vec![h]));
            proj(&mut out, "attn_q", vec![h, qd]);
            proj(&mut out, "attn_k", vec![h, kv]);
            proj(&mut out, "attn_v", vec![h, kv]);
            if self.is_embedding() {
                out.push(spec(p("attn_q_norm"), TensorType::F32, vec![hd]));
                out.push(spec(p("attn_k_norm"), TensorType::F32, vec![hd]));
            }
            if sub_norms {
                out.push(spec(p("attn_sub_norm"), TensorType::F32, vec![qd]));
            }
            proj(&mut out, "attn_output", vec![qd, h]);
            if gemma {
                out.push(spec(p("post_attention_norm"), TensorType::F32, vec![h]));
            }
            out.push(spec(p("ffn_norm"), TensorType::F32, vec![h]));
            proj(&mut out, "ffn_gate", vec![h, ff]);
            proj(&mut out, "ffn_up", vec![h, ff]);
            if sub_norms {
                out.push(spec(p("ffn_sub_norm"), TensorType::F32, vec![ff]));
            }
            proj(&mut out, "ffn_down", vec![ff, h]);
            if gemma {
                out.push(spec(p("post_ffw_norm"), TensorType::F32, vec![h]));
            }
        }
        out.push(spec("output_norm.weight".into(), TensorType::F32, vec![h]));
        if !self.tied {
            out.push(spec(
                "output.weight".into(),
                TensorType::F16,
                vec![h, self.n_vocab as u64],
            ));
        }
        out
    }

    /// The metadata bitnet.cpp's converter writes, with tokenizer keys copied from `vocab`.
    pub fn metadata(&self, vocab: Option<&GgufFile>) -> Metadata {
        let arch = self.arch.gguf_name();
        let mut md = Metadata::new();
        md.set("general.architecture", Value::String(arch.into()));
        md.set(
            "general.name",
            Value::String(format!("{arch} {} (random weights)", self.name)),
        );
        if self.float_weights {
            md.set("general.file_type", Value::U32(1));
        } else {
            md.set("general.file_type", Value::U32(40));
            md.set("general.quantization_version", Value::U32(2));
        }
        let k = |key: &str| format!("{arch}.{key}");
        md.set(k("vocab_size"), Value::U32(self.n_vocab as u32));
        md.set(k("context_length"), Value::U32(self.n_ctx as u32));
        md.set(k("embedding_length"), Value::U32(self.n_embd as u32));
        md.set(k("block_count"), Value::U32(self.n_layer as u32));
        md.set(k("feed_forward_length"), Value::U32(self.n_ff as u32));
        md.set(
            k("rope.dimension_count"),
            Value::U32(self.head_dim() as u32),
        );
        if self.is_embedding() {
            md.set(
                k("attention.key_length"),
                Value::U32(self.head_dim() as u32),
            );
            md.set(
                k("attention.value_length"),
                Value::U32(self.head_dim() as u32),
            );
            let pooling = if self.arch == Architecture::Qwen3 {
                Pooling::Last
            } else {
                Pooling::Mean
            };
            md.set(k("pooling_type"), Value::U32(pooling.gguf_id()));
        }
        if self.arch == Architecture::Gemma3 {
            md.set(
                k(QUERY_PRE_ATTN_SCALAR_KEY),
                Value::F32(self.head_dim() as f32),
            );
            md.set(k("attention.sliding_window"), Value::U32(512));
        }
        md.set(k("attention.head_count"), Value::U32(self.n_head as u32));
        md.set(
            k("attention.head_count_kv"),
            Value::U32(self.n_head_kv as u32),
        );
        md.set(
            k("attention.layer_norm_rms_epsilon"),
            Value::F32(self.rms_eps),
        );
        md.set(k("rope.freq_base"), Value::F32(self.rope_theta));
        match vocab {
            Some(vocab) => {
                for (key, value) in vocab.metadata().iter() {
                    if key.starts_with("tokenizer.") {
                        md.set(key, value.clone());
                    }
                }
            }
            // llama.cpp's marker for a model without a vocabulary: its tools (llama-bench)
            // then load the file.
            None => md.set("tokenizer.ggml.model", Value::String("none".into())),
        }
        md
    }
}

/// Why a synthetic model could not be written.
#[derive(Debug, thiserror::Error)]
pub enum SynthError {
    /// The output could not be written.
    #[error(transparent)]
    Write(#[from] WriteError),
    /// The vocabulary given has another size than the shape's.
    #[error("--vocab-from has {found} tokens but the shape `{shape}` needs {expected}")]
    VocabMismatch {
        /// The shape.
        shape: &'static str,
        /// Tokens the shape has.
        expected: usize,
        /// Tokens the vocabulary has.
        found: usize,
    },
}

/// Bytes generated per chunk: large tensors are streamed, never held whole.
const CHUNK: usize = 1 << 22;

/// Writes a random model of `shape` to `out`, reporting each tensor's name to `progress`.
pub fn write_random_model<W: Write>(
    out: W,
    shape: &Shape,
    vocab: Option<&GgufFile>,
    seed: u64,
    mut progress: impl FnMut(&str, u64),
) -> Result<W, SynthError> {
    if let Some(tokens) = vocab.and_then(|v| v.metadata().get("tokenizer.ggml.tokens")) {
        let found = tokens.as_array().map_or(0, <[Value]>::len);
        if found != shape.n_vocab {
            return Err(SynthError::VocabMismatch {
                shape: shape.name,
                expected: shape.n_vocab,
                found,
            });
        }
    }
    let specs = shape.tensors();
    let mut w = GgufWriter::new(out, &shape.metadata(vocab), specs.clone())?;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    for spec in &specs {
        let n: u64 = spec.dims.iter().product();
        match spec.ty {
            TensorType::I2S => {
                let fan_in = spec.dims[0] as f32;
                // Outputs of unit scale for unit inputs: 69 % of weights are non-zero.
                let scale = 1.0 / (fan_in * 0.69).sqrt();
                let packed = (n / 4) as usize;
                let chunks = ChunkIter::new(packed, |len| random_i2s_bytes(&mut rng, len));
                let trailer = i2_s_trailer(scale);
                w.write_tensor_chunks(&spec.name, chunks.chain(std::iter::once(trailer)))?;
            }
            TensorType::F16 => {
                let chunks = ChunkIter::new(n as usize * 2, |len| {
                    (0..len / 2)
                        .flat_map(|_| f16::from_f32(rng.random_range(-1.0f32..1.0)).to_le_bytes())
                        .collect()
                });
                w.write_tensor_chunks(&spec.name, chunks)?;
            }
            _ => {
                let data: Vec<u8> = (0..n)
                    .flat_map(|_| rng.random_range(0.5f32..1.5).to_le_bytes())
                    .collect();
                w.write_tensor(&spec.name, &data)?;
            }
        }
        progress(&spec.name, n);
    }
    Ok(w.finish()?)
}

fn i2_s_trailer(scale: f32) -> Vec<u8> {
    let mut t = vec![0u8; i2_s::TRAILER_BYTES];
    t[..4].copy_from_slice(&scale.to_le_bytes());
    t
}

/// Packed I2_S bytes whose 2-bit codes are -1, 0, +1 with probabilities 0.345, 0.31, 0.345.
fn random_i2s_bytes(rng: &mut ChaCha8Rng, len: usize) -> Vec<u8> {
    // One random byte per code: below 79 of 256 (30.9 %) is a zero.
    let code = |b: u8| -> u8 {
        if b < 79 {
            1
        } else if b < 168 {
            0
        } else {
            2
        }
    };
    let mut random = vec![0u8; len * 4];
    rng.fill_bytes(&mut random);
    random
        .chunks_exact(4)
        .map(|r| code(r[0]) << 6 | code(r[1]) << 4 | code(r[2]) << 2 | code(r[3]))
        .collect()
}

/// Yields `total` bytes as chunks of at most [`CHUNK`] made by `make(len)`.
struct ChunkIter<F> {
    left: usize,
    make: F,
}

impl<F: FnMut(usize) -> Vec<u8>> ChunkIter<F> {
    fn new(total: usize, make: F) -> ChunkIter<F> {
        ChunkIter { left: total, make }
    }
}

impl<F: FnMut(usize) -> Vec<u8>> Iterator for ChunkIter<F> {
    type Item = Vec<u8>;
    fn next(&mut self) -> Option<Vec<u8>> {
        if self.left == 0 {
            return None;
        }
        let len = self.left.min(CHUNK);
        self.left -= len;
        Some((self.make)(len))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{BitnetModel, CacheType, Logits};
    use std::sync::Arc;

    #[test]
    fn tiny_random_model_loads_and_runs() {
        let shape = Shape::by_name("tiny").unwrap();
        let bytes = write_random_model(Vec::new(), &shape, None, 7, |_, _| {}).unwrap();
        let file = GgufFile::from_vec("tiny.gguf", bytes).unwrap();
        let t = file
            .tensor("blk.0.ffn_up.weight")
            .unwrap()
            .to_ternary()
            .unwrap();
        let zeros = t.values.iter().filter(|&&v| v == 0).count() as f64 / t.values.len() as f64;
        assert!((0.29..0.33).contains(&zeros), "{zeros}");
        let model = BitnetModel::from_gguf(Arc::new(file)).unwrap();
        let mut cache = model.new_cache(0, CacheType::F16).unwrap();
        let logits = model.forward(&[1, 2, 3], &mut cache, Logits::Last).unwrap();
        assert_eq!(logits.len(), 1024);
        assert!(logits.iter().all(|v| v.is_finite()));
    }

    /// A file claiming a context of 4e9 positions: the default context is capped, so loading
    /// and running it with no context asked for works (its full cache would need 8 TB).
    #[test]
    fn a_huge_trained_context_is_capped_by_default() {
        let shape = Shape {
            n_ctx: 4_000_000_000,
            ..Shape::by_name("tiny").unwrap()
        };
        let bytes = write_random_model(Vec::new(), &shape, None, 7, |_, _| {}).unwrap();
        let file = GgufFile::from_vec("huge-context.gguf", bytes).unwrap();
        let model = BitnetModel::from_gguf(Arc::new(file)).unwrap();
        assert_eq!(model.config().n_ctx_train, 4_000_000_000);
        let mut cache = model.new_cache(0, CacheType::F16).unwrap();
        assert_eq!(cache.capacity(), crate::model::DEFAULT_CONTEXT_CAP);
        model.forward(&[1, 2], &mut cache, Logits::Last).unwrap();
        if crate::model::available_memory().is_some() {
            let err = model.new_cache(4_000_000_000, CacheType::F16).unwrap_err();
            assert!(err.to_string().contains("needs"), "{err}");
        }
    }

    /// Every family shape's parameter count is its real model's (config.json arithmetic).
    #[test]
    fn family_shapes_have_their_models_parameter_counts() {
        for (name, params) in [
            // 1bitLLM/bitnet_b1_58-large: "700M" (0.73 B with its 32002-token embedding).
            ("bitnet-large", 728_842_752u64),
            ("bitnet-3b", 3_324_387_840),
            ("falcon3-1b", 1_669_408_768),
            ("falcon3-10b", 10_305_653_760),
            ("llama3-8b", 8_030_261_248),
            // config.json arithmetic of the two embedding models: Qwen3-0.6B's 596,049,920
            // (tied) and Gemma 3 270M's 268,098,176, plus the 7 per-projection norms of each
            // layer (their input widths).
            (
                "bitnet-embedding-0.6b",
                596_049_920 + 28 * (5 * 1024 + 2048 + 3072),
            ),
            (
                "bitnet-embedding-270m",
                268_098_176 + 18 * (5 * 640 + 1024 + 2048),
            ),
        ] {
            let shape = Shape::by_name(name).unwrap();
            let n: u64 = shape
                .tensors()
                .iter()
                .map(|s| s.dims.iter().product::<u64>())
                .sum();
            assert_eq!(n, params, "{name}");
        }
        let tiny_llama = Shape {
            n_vocab: 1024,
            n_embd: 256,
            n_layer: 2,
            n_ff: 512,
            n_head: 2,
            n_head_kv: 1,
            ..Shape::by_name("falcon3-1b").unwrap()
        };
        let bytes = write_random_model(Vec::new(), &tiny_llama, None, 3, |_, _| {}).unwrap();
        let model =
            BitnetModel::from_gguf(Arc::new(GgufFile::from_vec("l.gguf", bytes).unwrap())).unwrap();
        assert_eq!(model.config().arch, Architecture::Llama);
        let mut cache = model.new_cache(0, CacheType::F16).unwrap();
        let logits = model.forward(&[1, 2, 3], &mut cache, Logits::Last).unwrap();
        assert!(logits.iter().all(|v| v.is_finite()));
    }

    /// Small versions of the two embedding shapes load and embed: every tensor the loader
    /// wants is written, with the widths of wide heads and per-projection norms.
    #[test]
    fn embedding_shapes_load_and_embed() {
        for name in ["bitnet-embedding-0.6b", "bitnet-embedding-270m"] {
            let shape = Shape {
                n_vocab: 1024,
                n_layer: 2,
                ..Shape::by_name(name).unwrap()
            };
            let bytes = write_random_model(Vec::new(), &shape, None, 5, |_, _| {}).unwrap();
            let file = GgufFile::from_vec("e.gguf", bytes).unwrap();
            let model = BitnetModel::from_gguf(Arc::new(file)).unwrap();
            assert_eq!(model.config().head_dim, shape.head_dim, "{name}");
            let v = model
                .embed(&[&[1, 2, 3]], &crate::model::EmbedOptions::default())
                .unwrap();
            assert_eq!(v[0].len(), shape.n_embd);
            let norm: f32 = v[0].iter().map(|x| x * x).sum::<f32>().sqrt();
            assert!((norm - 1.0).abs() < 1e-4, "{name}: {norm}");
            let float = Shape {
                float_weights: true,
                ..shape
            };
            assert!(float
                .tensors()
                .iter()
                .all(|t| !t.name.contains("_norm_in") && t.ty != TensorType::I2S));
        }
    }

    #[test]
    fn the_2b_shape_has_the_official_tensor_count_and_size() {
        let shape = Shape::by_name("2b-4t").unwrap();
        let specs = shape.tensors();
        assert_eq!(specs.len(), 332);
        let count = |ty| specs.iter().filter(|s| s.ty == ty).count();
        assert_eq!(
            (
                count(TensorType::F32),
                count(TensorType::F16),
                count(TensorType::I2S)
            ),
            (121, 1, 210)
        );
        let params: u64 = specs.iter().map(|s| s.dims.iter().product::<u64>()).sum();
        assert_eq!(params, 2_412_820_480);
    }
}
