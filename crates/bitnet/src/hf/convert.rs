//! Hugging Face checkpoint → GGUF, the way bitnet.cpp's converter and quantizer lay it out
//! (architecture `bitnet-b1.58`, `bitnet` or `llama` by family, its metadata keys, its tensor
//! names; for `llama`, Q and K rows permuted per head into llama.cpp's RoPE pair order),
//! streamed: the header is written first, then each tensor is read, converted and written
//! before the next is touched.
//!
//! Linear weights become ternary (unpacked, or absmean-ternarized from master weights) and are
//! stored as I2_S (one f32 scale, bitnet.cpp), TQ2_0 / TQ1_0 (llama.cpp, an f16 scale per 256
//! values) or as float `t · scale` (F16 / F32, what bitnet.cpp's own converter writes before
//! quantizing). Norms stay F32; the embedding is F16 by default (as in the official file) and
//! is converted in row chunks.

use std::cell::Cell;
use std::io::Write;
use std::rc::Rc;
use std::str::FromStr;

use crate::formats::gguf::{GgufWriter, Metadata, TensorSpec, Value, ValueType, DEFAULT_ALIGNMENT};
use crate::formats::types::{float, i2_s, tq1_0, tq2_0, TensorType};
use safetensors::Dtype;

use super::checkpoint::Checkpoint;
use super::vocab::GgufVocab;
use super::HfError;

use crate::model::config::{ACT_NORM_EPS_KEY, QUERY_PRE_ATTN_SCALAR_KEY};
use crate::model::{Architecture, Pooling};

use super::config::{HfFamily, RopeScaling};

/// The storage of the ternary linear weights (`bitnet convert --type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutType {
    /// bitnet.cpp's I2_S (the default; what bitnet.cpp loads).
    I2S,
    /// llama.cpp's TQ2_0.
    TQ2_0,
    /// llama.cpp's TQ1_0.
    TQ1_0,
    /// Unquantized f16 (the ternary values times their scale).
    F16,
    /// Unquantized f32.
    F32,
}

impl OutType {
    pub(crate) const ALL: [OutType; 5] = [
        OutType::I2S,
        OutType::TQ2_0,
        OutType::TQ1_0,
        OutType::F16,
        OutType::F32,
    ];

    /// The name `--type` takes.
    pub fn name(self) -> &'static str {
        match self {
            OutType::I2S => "i2_s",
            OutType::TQ2_0 => "tq2_0",
            OutType::TQ1_0 => "tq1_0",
            OutType::F16 => "f16",
            OutType::F32 => "f32",
        }
    }

    /// The GGUF tensor type it writes.
    pub fn tensor_type(self) -> TensorType {
        match self {
            OutType::I2S => TensorType::I2S,
            OutType::TQ2_0 => TensorType::TQ2_0,
            OutType::TQ1_0 => TensorType::TQ1_0,
            OutType::F16 => TensorType::F16,
            OutType::F32 => TensorType::F32,
        }
    }

    /// `general.file_type` (llama.cpp's `llama_ftype`; 40 is bitnet.cpp's I2_S).
    pub fn file_type(self) -> u32 {
        match self {
            OutType::I2S => 40,
            OutType::TQ2_0 => 37,
            OutType::TQ1_0 => 36,
            OutType::F16 => 1,
            OutType::F32 => 0,
        }
    }
}

impl FromStr for OutType {
    type Err = String;
    fn from_str(s: &str) -> Result<OutType, String> {
        OutType::ALL
            .into_iter()
            .find(|t| t.name().eq_ignore_ascii_case(s))
            .ok_or_else(|| {
                let names: Vec<&str> = OutType::ALL.iter().map(|t| t.name()).collect();
                format!("unknown type `{s}` (one of {})", names.join(", "))
            })
    }
}

impl std::fmt::Display for OutType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// What to write.
#[derive(Clone, Debug, PartialEq)]
pub struct ConvertOptions {
    /// Storage of the ternary linear weights.
    pub linear_type: OutType,
    /// Type of `token_embd` (and of `output` for untied models): F32, F16 or BF16.
    pub embed_type: TensorType,
    /// Type of a linear weight whose row length does not fit `linear_type`'s block (I2_S needs
    /// a multiple of 128 input features, TQ1_0/TQ2_0 of 256), as llama-quantize falls back.
    pub fallback_type: TensorType,
    /// `general.name`; the folder's name when `None`.
    pub name: Option<String>,
}

impl ConvertOptions {
    /// bitnet.cpp's choices for a file: F16 embedding and F16 fallback (F32 for `--type f32`).
    pub fn new(linear_type: OutType) -> ConvertOptions {
        let float = if linear_type == OutType::F32 {
            TensorType::F32
        } else {
            TensorType::F16
        };
        ConvertOptions {
            linear_type,
            embed_type: float,
            fallback_type: float,
            name: None,
        }
    }

    /// For loading a checkpoint as a model: I2_S linears, the embedding in its stored
    /// precision (F32, F16, or BF16: nothing is rounded), F32 fallback (exact).
    pub fn in_memory(ckpt: &Checkpoint) -> ConvertOptions {
        let embed_type = match ckpt.tensor("model.embed_tokens.weight").map(|t| t.dtype) {
            Ok(Dtype::F16) => TensorType::F16,
            Ok(Dtype::BF16) => TensorType::BF16,
            _ => TensorType::F32,
        };
        ConvertOptions {
            linear_type: OutType::I2S,
            embed_type,
            fallback_type: TensorType::F32,
            name: None,
        }
    }
}

/// What a conversion did.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ConvertSummary {
    /// Tensors written.
    pub tensors: usize,
    /// Bytes of tensor data written (without the header).
    pub data_bytes: u64,
    /// Linear weights written in the fallback type, with their GGUF names.
    pub fallbacks: Vec<(String, TensorType)>,
    /// Whether tokenizer metadata was written (the folder had a `tokenizer.json`).
    pub tokenizer: bool,
    /// Checkpoint tensors that were not converted (a tied `lm_head.weight`, unknown names).
    pub skipped: Vec<String>,
    /// What a reader of the file should know (e.g. parts bitnet.cpp does not compute).
    pub notes: Vec<String>,
}

/// How one GGUF tensor is made.
#[derive(Clone, Debug, PartialEq)]
enum Kind {
    /// Row-chunked float conversion (`token_embd`, `output`).
    Embedding { rows: usize, cols: usize },
    /// F32 vector (norms, biases); a Q or K bias of a `llama` file is permuted like its rows.
    /// `plus_one`: a Gemma norm, which computes x · (1 + g), stored as 1 + g, as llama.cpp's
    /// Gemma converters and bitnet.cpp's embedding converter store it (the BitLinear input
    /// norms `*_norm_in` are plain RMSNorms and are stored as they are).
    Vector {
        permute: Option<usize>,
        plus_one: bool,
    },
    /// Ternary weight `[out, in]`, its rows permuted per head of `permute` dimensions for the
    /// Q and K of a `llama` file.
    Linear {
        out: usize,
        inp: usize,
        permute: Option<usize>,
    },
    /// Values computed from config.json (Llama 3's `rope_freqs`).
    Computed(Vec<f32>),
}

/// One tensor of a layer: HF module, GGUF module, `Some((out, in))` for a linear, the length
/// of a vector.
type LayerTensor = (&'static str, &'static str, Option<(usize, usize)>, usize);

/// llama.cpp's `permute` of Q / K rows for its "normal" RoPE: within each head of `hd` rows,
/// row `2j + i` of the result is row `i·hd/2 + j` of the input, so the rotate-half pairs
/// `(j, j + hd/2)` become adjacent pairs `(2j, 2j + 1)`. `row_len` values per row.
pub(crate) fn permute_rows<T: Copy>(values: &[T], row_len: usize, hd: usize) -> Vec<T> {
    let mut out = Vec::with_capacity(values.len());
    for head in values.chunks(hd * row_len) {
        let rows = head.len() / row_len;
        for r in 0..rows {
            let src = (r % 2) * (rows / 2) + r / 2;
            out.extend_from_slice(&head[src * row_len..(src + 1) * row_len]);
        }
    }
    out
}

#[derive(Clone, Debug)]
struct Item {
    hf: String,
    spec: TensorSpec,
    kind: Kind,
}

/// The tensors to write, in bitnet.cpp's order, every shape and dtype checked against
/// `config.json` (only headers are read).
struct Plan {
    items: Vec<Item>,
    fallbacks: Vec<(String, TensorType)>,
    skipped: Vec<String>,
}

fn plan(ckpt: &Checkpoint, options: &ConvertOptions) -> Result<Plan, HfError> {
    let c = ckpt.config();
    let (v, h, ff, kv) = (c.vocab_size, c.hidden_size, c.intermediate_size, c.kv_dim());
    let qd = c.num_attention_heads * c.head_dim;
    let hd = c.head_dim;
    let arch = c.family.architecture();
    // llama.cpp's `llama` graph rotates adjacent pairs; its converter permutes Q and K so that
    // the model's rotate-half pairs land there.
    let permute = (arch == Architecture::Llama).then_some(c.head_dim);
    let mut items = Vec::new();
    let mut fallbacks = Vec::new();
    let embed = |hf: &str, gguf: &str| -> Result<Item, HfError> {
        ckpt.float_tensor(hf, &[v, h])?;
        Ok(Item {
            hf: hf.into(),
            spec: TensorSpec {
                name: gguf.into(),
                ty: options.embed_type,
                dims: vec![h as u64, v as u64],
            },
            kind: Kind::Embedding { rows: v, cols: h },
        })
    };
    let vector = |hf: String, gguf: String, len: usize, permute: Option<usize>| {
        ckpt.float_tensor(&hf, &[len])?;
        let plus_one = c.family == HfFamily::Gemma3 && gguf.ends_with("_norm.weight");
        Ok::<Item, HfError>(Item {
            hf,
            spec: TensorSpec {
                name: gguf,
                ty: TensorType::F32,
                dims: vec![len as u64],
            },
            kind: Kind::Vector { permute, plus_one },
        })
    };

    items.push(embed("model.embed_tokens.weight", "token_embd.weight")?);
    if let Some(factors) = c
        .rope_scaling
        .and_then(|s| s.llama3_factors(c.rope_theta, c.head_dim))
    {
        items.push(Item {
            hf: String::new(),
            spec: TensorSpec {
                name: "rope_freqs.weight".into(),
                ty: TensorType::F32,
                dims: vec![factors.len() as u64],
            },
            kind: Kind::Computed(factors),
        });
    }
    for i in 0..c.num_hidden_layers {
        let hf = |m: &str| format!("model.layers.{i}.{m}");
        let gg = |m: &str| format!("blk.{i}.{m}");
        let mut layer: Vec<LayerTensor> = vec![
            ("input_layernorm", "attn_norm", None, h),
            ("mlp.down_proj", "ffn_down", Some((h, ff)), 0),
            ("mlp.gate_proj", "ffn_gate", Some((ff, h)), 0),
            ("mlp.up_proj", "ffn_up", Some((ff, h)), 0),
            ("self_attn.k_proj", "attn_k", Some((kv, h)), 0),
            ("self_attn.o_proj", "attn_output", Some((h, qd)), 0),
            ("self_attn.q_proj", "attn_q", Some((qd, h)), 0),
            ("self_attn.v_proj", "attn_v", Some((kv, h)), 0),
        ];
        // bitnet.cpp's embedding converter's names for the Qwen3 / Gemma 3 norms.
        match c.family {
            HfFamily::Gemma3 => layer.extend([
                ("post_attention_layernorm", "post_attention_norm", None, h),
                ("pre_feedforward_layernorm", "ffn_norm", None, h),
                ("post_feedforward_layernorm", "post_ffw_norm", None, h),
            ]),
            _ => layer.push(("post_attention_layernorm", "ffn_norm", None, h)),
        }
        if c.family.is_embedding_backbone() {
            layer.push(("self_attn.q_norm", "attn_q_norm", None, hd));
            layer.push(("self_attn.k_norm", "attn_k_norm", None, hd));
        }
        if let Some((attn_sub, ffn_sub)) = c.family.sub_norm_modules() {
            layer.push((attn_sub, "attn_sub_norm", None, h));
            layer.push((ffn_sub, "ffn_sub_norm", None, ff));
        }
        // bitnet.cpp's converter writes each layer's tensors sorted by their HF names.
        layer.sort_by_key(|t| t.0);
        for (hf_module, gguf_module, linear, len) in layer {
            let weight = hf(&format!("{hf_module}.weight"));
            let gguf = gg(&format!("{gguf_module}.weight"));
            let Some((out, inp)) = linear else {
                items.push(vector(weight, gguf, len, None)?);
                continue;
            };
            let permute = permute.filter(|_| matches!(gguf_module, "attn_q" | "attn_k"));
            ckpt.check_linear(&weight, out, inp)?;
            // The BitNet embedding models' RMSNorm in front of this projection.
            let norm_in = hf(&format!("{hf_module}.norm.weight"));
            if c.family.is_embedding_backbone() && ckpt.contains(&norm_in) {
                items.push(vector(
                    norm_in,
                    gg(&format!("{gguf_module}_norm_in.weight")),
                    inp,
                    None,
                )?);
            }
            if c.act_norm_eps.is_some() {
                ckpt.check_unit_norm(&hf(&format!("{hf_module}.rms_norm.weight")), inp)?;
            }
            let wanted = options.linear_type.tensor_type();
            let ty = if (inp as u64).is_multiple_of(wanted.block_len()) {
                wanted
            } else {
                fallbacks.push((gguf.clone(), options.fallback_type));
                options.fallback_type
            };
            items.push(Item {
                hf: weight,
                spec: TensorSpec {
                    name: gguf,
                    ty,
                    dims: vec![inp as u64, out as u64],
                },
                kind: Kind::Linear { out, inp, permute },
            });
            let bias = hf(&format!("{hf_module}.bias"));
            if ckpt.contains(&bias) {
                items.push(vector(
                    bias,
                    gg(&format!("{gguf_module}.bias")),
                    out,
                    permute,
                )?);
            }
        }
    }
    items.push(vector(
        "model.norm.weight".into(),
        "output_norm.weight".into(),
        h,
        None,
    )?);

    let mut skipped = Vec::new();
    // The embedding backbones have no output head (bitnet.cpp's converter skips lm_head).
    if !c.tie_word_embeddings && !c.family.is_embedding_backbone() {
        if arch == Architecture::Bitnet {
            // llama.cpp's `bitnet` graph has no output tensor: it multiplies by the embedding.
            return Err(HfError::Config {
                file: ckpt.folder().join("config.json").display().to_string(),
                key: "tie_word_embeddings".into(),
                message: "must be true for a 1bitLLM BitnetForCausalLM (its GGUF architecture `bitnet` has no separate output matrix)".into(),
            });
        }
        if !ckpt.contains("lm_head.weight") {
            return Err(HfError::MissingTensor {
                folder: format!(
                    "{} (config.json has tie_word_embeddings: false)",
                    ckpt.folder().display()
                ),
                tensor: "lm_head.weight".into(),
            });
        }
        items.push(embed("lm_head.weight", "output.weight")?);
    }
    for name in ckpt.names() {
        let used = items.iter().any(|it| it.hf == name);
        let scale = name.ends_with(".weight_scale")
            || name.ends_with("rotary_emb.inv_freq")
            || (c.act_norm_eps.is_some() && name.ends_with(".rms_norm.weight"));
        if !used && !scale {
            skipped.push(name.to_string());
        }
    }
    Ok(Plan {
        items,
        fallbacks,
        skipped,
    })
}

/// Checked u32 for a metadata value.
fn u32_key(key: &str, v: usize) -> Result<Value, HfError> {
    u32::try_from(v)
        .map(Value::U32)
        .map_err(|_| HfError::Config {
            file: "config.json".into(),
            key: key.into(),
            message: format!("{v} does not fit the GGUF's u32"),
        })
}

/// The GGUF metadata, keys in the order bitnet.cpp's converter writes them.
fn metadata(
    ckpt: &Checkpoint,
    options: &ConvertOptions,
    vocab: Option<&GgufVocab>,
) -> Result<Metadata, HfError> {
    let c = ckpt.config();
    let arch = c.family.architecture().gguf_name();
    let k = |key: &str| format!("{arch}.{key}");
    let mut md = Metadata::new();
    md.set("general.architecture", Value::String(arch.into()));
    for (key, hf_key, value) in [
        ("vocab_size", "vocab_size", c.vocab_size),
        (
            "context_length",
            "max_position_embeddings",
            c.max_position_embeddings,
        ),
        ("embedding_length", "hidden_size", c.hidden_size),
        ("block_count", "num_hidden_layers", c.num_hidden_layers),
        (
            "feed_forward_length",
            "intermediate_size",
            c.intermediate_size,
        ),
        ("rope.dimension_count", "head_dim", c.head_dim),
        (
            "attention.head_count",
            "num_attention_heads",
            c.num_attention_heads,
        ),
        (
            "attention.head_count_kv",
            "num_key_value_heads",
            c.num_key_value_heads,
        ),
    ] {
        md.set(k(key), u32_key(hf_key, value)?);
    }
    if let Some(add_bos) = vocab.and_then(|v| v.add_bos_token) {
        md.set("tokenizer.ggml.add_bos_token", Value::Bool(add_bos));
    }
    // Qwen3 embedding models end every text with <|endoftext|> and pool its state (as
    // bitnet.cpp's converter sets it: that token is EOS, and EOS is appended).
    let endoftext = vocab
        .filter(|_| c.family == HfFamily::Qwen3)
        .and_then(|v| v.tokens.iter().position(|t| t == "<|endoftext|>"))
        .and_then(|id| u32::try_from(id).ok());
    if endoftext.is_some() {
        md.set("tokenizer.ggml.add_eos_token", Value::Bool(true));
    } else if let Some(add_eos) = vocab.and_then(|v| v.add_eos_token) {
        md.set("tokenizer.ggml.add_eos_token", Value::Bool(add_eos));
    }
    md.set(
        k("attention.layer_norm_rms_epsilon"),
        Value::F32(c.rms_norm_eps),
    );
    md.set(k("rope.freq_base"), Value::F32(c.rope_theta));
    if let Some(RopeScaling::Linear { factor }) = c.rope_scaling {
        md.set(k("rope.scaling.type"), Value::String("linear".into()));
        md.set(k("rope.scaling.factor"), Value::F32(factor));
    }
    if let Some(eps) = c.act_norm_eps {
        md.set(k(ACT_NORM_EPS_KEY), Value::F32(eps));
    }
    if c.family.is_embedding_backbone() {
        // Heads wider than H / heads: llama.cpp reads the width from these.
        md.set(k("attention.key_length"), u32_key("head_dim", c.head_dim)?);
        md.set(
            k("attention.value_length"),
            u32_key("head_dim", c.head_dim)?,
        );
        md.set(
            k("pooling_type"),
            Value::U32(
                super::pooling(ckpt.folder())?
                    .unwrap_or(Pooling::Mean)
                    .gguf_id(),
            ),
        );
        if let Some(q) = c.query_pre_attn_scalar {
            md.set(k(QUERY_PRE_ATTN_SCALAR_KEY), Value::F32(q));
        }
        if let Some((window, pattern, local_base)) = c.sliding_window {
            md.set(
                k("attention.sliding_window"),
                u32_key("sliding_window", window)?,
            );
            md.set(
                k("attention.sliding_window_pattern"),
                u32_key("sliding_window_pattern", pattern)?,
            );
            md.set(k("rope.freq_base_swa"), Value::F32(local_base));
        }
        if !c.causal {
            md.set(k("attention.causal"), Value::Bool(false));
        }
    }
    md.set(
        "general.file_type",
        Value::U32(options.linear_type.file_type()),
    );
    if let Some(v) = vocab {
        let strings = |items: &[String]| {
            Value::Array(
                ValueType::String,
                items.iter().cloned().map(Value::String).collect(),
            )
        };
        md.set("tokenizer.ggml.model", Value::String(v.model.clone()));
        md.set("tokenizer.ggml.tokens", strings(&v.tokens));
        md.set(
            "tokenizer.ggml.scores",
            Value::Array(
                ValueType::F32,
                v.scores.iter().map(|&s| Value::F32(s)).collect(),
            ),
        );
        md.set(
            "tokenizer.ggml.token_type",
            Value::Array(
                ValueType::I32,
                v.token_types.iter().map(|&t| Value::I32(t)).collect(),
            ),
        );
        // SentencePiece vocabularies have no merges (their scores order the merges).
        if v.model != "llama" || !v.merges.is_empty() {
            md.set("tokenizer.ggml.merges", strings(&v.merges));
        }
        if let Some(id) = v.unk_token_id {
            md.set("tokenizer.ggml.unknown_token_id", Value::U32(id));
        }
        if let Some(add) = v.add_space_prefix {
            md.set("tokenizer.ggml.add_space_prefix", Value::Bool(add));
        }
        if let Some(id) = v.bos_token_id {
            md.set("tokenizer.ggml.bos_token_id", Value::U32(id));
        }
        if let Some(id) = endoftext.or(v.eos_token_id) {
            md.set("tokenizer.ggml.eos_token_id", Value::U32(id));
        }
        if let Some(t) = &v.chat_template {
            md.set("tokenizer.chat_template", Value::String(t.clone()));
        }
    }
    if options.linear_type.tensor_type().is_ternary() {
        md.set("general.quantization_version", Value::U32(2));
    }
    if let Some(v) = vocab {
        md.set("tokenizer.ggml.pre", Value::String(v.pre.clone()));
    }
    let name = options.name.clone().unwrap_or_else(|| {
        ckpt.folder()
            .canonicalize()
            .unwrap_or_else(|_| ckpt.folder().to_path_buf())
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| arch.to_string())
    });
    md.set("general.name", Value::String(name));
    Ok(md)
}

fn padded(size: u64) -> u64 {
    size.div_ceil(DEFAULT_ALIGNMENT) * DEFAULT_ALIGNMENT
}

/// Bytes of tensor data (with alignment padding) the conversion will write.
pub fn output_size(ckpt: &Checkpoint, options: &ConvertOptions) -> Result<u64, HfError> {
    let plan = plan(ckpt, options)?;
    plan.items.iter().try_fold(0u64, |acc, it| {
        let size = it
            .spec
            .ty
            .data_size(&it.spec.dims)
            .map_err(|e| HfError::Tensor {
                file: ckpt.folder().display().to_string(),
                tensor: it.spec.name.clone(),
                message: e.to_string(),
            })?;
        Ok(acc + padded(size))
    })
}

/// Elements per chunk when converting an embedding.
const CHUNK_ELEMENTS: usize = 1 << 22;

/// Encodes float values as `ty` (F32, F16 or BF16).
fn encode_float(ty: TensorType, values: &[f32]) -> Vec<u8> {
    match ty {
        TensorType::F16 => float::encode_f16(values),
        TensorType::BF16 => float::encode_bf16(values),
        _ => float::encode_f32(values),
    }
}

/// Encodes ternary values with one scale as `ty`.
fn encode_ternary(ty: TensorType, t: &[i8], scale: f32) -> Vec<u8> {
    if ty == TensorType::I2S {
        return i2_s::encode(t, scale);
    }
    let w: Vec<f32> = t.iter().map(|&v| v as f32 * scale).collect();
    match ty {
        TensorType::TQ2_0 => tq2_0::quantize(&w),
        TensorType::TQ1_0 => tq1_0::quantize(&w),
        other => encode_float(other, &w),
    }
}

/// Converts the checkpoint, writing the GGUF to `out`; `progress(tensor, bytes)` is called
/// after each tensor. Returns the writer and a summary.
pub fn convert<W: Write>(
    ckpt: &Checkpoint,
    options: &ConvertOptions,
    out: W,
    mut progress: impl FnMut(&str, u64),
) -> Result<(W, ConvertSummary), HfError> {
    if !matches!(
        options.embed_type,
        TensorType::F32 | TensorType::F16 | TensorType::BF16
    ) {
        return Err(HfError::Spec {
            spec: options.embed_type.to_string(),
            message: "the embedding type must be F32, F16 or BF16".into(),
        });
    }
    let plan = plan(ckpt, options)?;
    let vocab = GgufVocab::from_folder(ckpt.folder(), ckpt.config())?;
    let md = metadata(ckpt, options, vocab.as_ref())?;
    let specs: Vec<TensorSpec> = plan.items.iter().map(|it| it.spec.clone()).collect();
    let mut w = GgufWriter::new(out, &md, specs)?;
    let mut data_bytes = 0u64;
    for it in &plan.items {
        let name = &it.spec.name;
        let written = match it.kind {
            Kind::Computed(ref values) => {
                let bytes = float::encode_f32(values);
                w.write_tensor(name, &bytes)?;
                bytes.len() as u64
            }
            Kind::Vector { permute, plus_one } => {
                let mut values = ckpt.tensor(&it.hf)?.to_f32()?;
                if let Some(hd) = permute {
                    values = permute_rows(&values, 1, hd);
                }
                if plus_one {
                    values.iter_mut().for_each(|g| *g += 1.0);
                }
                let bytes = float::encode_f32(&values);
                w.write_tensor(name, &bytes)?;
                bytes.len() as u64
            }
            Kind::Linear { out, inp, permute } => {
                let (mut values, scale) = ckpt.ternary_weight(&it.hf, out, inp)?;
                if let Some(hd) = permute {
                    values = permute_rows(&values, inp, hd);
                }
                let bytes = encode_ternary(it.spec.ty, &values, scale);
                w.write_tensor(name, &bytes)?;
                bytes.len() as u64
            }
            Kind::Embedding { rows, cols } => {
                let t = ckpt.tensor(&it.hf)?;
                let rows_per_chunk = (CHUNK_ELEMENTS / cols).max(1);
                let mut failure = None;
                let mut total = 0u64;
                let chunks = (0..rows).step_by(rows_per_chunk).map_while(|r0| {
                    let n = rows_per_chunk.min(rows - r0);
                    match t.read_f32_range(r0 * cols, n * cols) {
                        Ok(values) => {
                            let bytes = encode_float(it.spec.ty, &values);
                            total += bytes.len() as u64;
                            Some(bytes)
                        }
                        Err(e) => {
                            failure = Some(e);
                            None
                        }
                    }
                });
                let result = w.write_tensor_chunks(name, chunks);
                if let Some(e) = failure {
                    return Err(e);
                }
                result?;
                total
            }
        };
        data_bytes += written;
        progress(name, written);
    }
    let out = w.finish()?;
    Ok((
        out,
        ConvertSummary {
            tensors: plan.items.len(),
            data_bytes,
            fallbacks: plan.fallbacks,
            tokenizer: vocab.is_some(),
            skipped: plan.skipped,
            notes: notes(ckpt),
        },
    ))
}

/// Caveats about the written file.
fn notes(ckpt: &Checkpoint) -> Vec<String> {
    let mut notes = Vec::new();
    if let Some(eps) = ckpt.config().act_norm_eps {
        notes.push(format!(
            "quantization_config.use_rms_norm: the RMSNorm (eps {eps}) before every BitLinear's activation quantization is recorded as `{}.{ACT_NORM_EPS_KEY}`; bitnet.cpp and llama.cpp do not apply it and compute a different model from this file",
            ckpt.config().family.architecture().gguf_name()
        ));
    }
    notes
}

/// A writer that only counts bytes.
struct Counter(Rc<Cell<u64>>);

impl Write for Counter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.set(self.0.get() + buf.len() as u64);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Converts into memory, allocating the exact file size up front (no reallocation of a
/// multi-gigabyte buffer).
pub fn convert_to_vec(
    ckpt: &Checkpoint,
    options: &ConvertOptions,
) -> Result<(Vec<u8>, ConvertSummary), HfError> {
    let header = {
        let plan = plan(ckpt, options)?;
        let vocab = GgufVocab::from_folder(ckpt.folder(), ckpt.config())?;
        let md = metadata(ckpt, options, vocab.as_ref())?;
        let specs = plan.items.iter().map(|it| it.spec.clone()).collect();
        let count = Rc::new(Cell::new(0));
        drop(GgufWriter::new(Counter(Rc::clone(&count)), &md, specs)?);
        count.get()
    };
    let capacity = header + output_size(ckpt, options)?;
    let buf = Vec::with_capacity(usize::try_from(capacity).unwrap_or(0));
    convert(ckpt, options, buf, |_, _| {})
}

#[cfg(test)]
mod tests {
    use super::permute_rows;

    /// llama.cpp's `permute`: `reshape(n_head, 2, hd/2, in).swapaxes(1, 2)`.
    #[test]
    fn permute_interleaves_the_two_halves_of_each_head() {
        // Two heads of 4 rows, one value per row.
        let rows: Vec<u32> = (0..8).collect();
        assert_eq!(permute_rows(&rows, 1, 4), vec![0, 2, 1, 3, 4, 6, 5, 7]);
        // Rows of 2 values move whole.
        let rows: Vec<u32> = (0..8).collect();
        assert_eq!(permute_rows(&rows, 2, 4), vec![0, 1, 4, 5, 2, 3, 6, 7]);
    }
}
