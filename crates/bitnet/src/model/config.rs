//! The model's hyperparameters, read from GGUF metadata and checked up front.

use crate::formats::gguf::{GgufFile, Metadata, MetadataError};

use super::ModelError;

/// The largest context [`Config::default_context`] picks.
pub const DEFAULT_CONTEXT_CAP: usize = 4096;

/// The architectures this engine runs, as GGUF names them. Each is one configuration of the
/// same forward pass (see [`Architecture::activation`] and friends), not a model of its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Architecture {
    /// `bitnet-b1.58` (microsoft/bitnet-b1.58-2B-4T) and its older name `bitnet-25`: sub-norms,
    /// relu² gate, rotate-half RoPE.
    BitnetB158,
    /// `bitnet` (1bitLLM/bitnet_b1_58-large and -3B, as llama.cpp and bitnet.cpp name them):
    /// sub-norms, SiLU gate, rotate-half RoPE, the embedding as output matrix, optional
    /// per-tensor `.scale` tensors.
    Bitnet,
    /// `llama` with ternary linear weights (Falcon3-*-1.58bit, Falcon-E, Llama3-8B-1.58): no
    /// sub-norms, SiLU gate, and llama.cpp's "normal" RoPE on adjacent pairs, because its
    /// converter permutes the rows of Q and K into that order.
    Llama,
    /// `qwen3` (BitNet-embedding-0.6B's backbone): Q/K head norms, a head width of its own
    /// (`attention.key_length`), SiLU gate, rotate-half RoPE, and in the BitNet embedding
    /// models an RMSNorm in front of every projection (`*_norm_in`).
    Qwen3,
    /// `gemma3` (BitNet-embedding-270M's backbone): as `qwen3`, plus the embedding scaled by
    /// √H, tanh-GELU gate, norms after attention and after the FFN, attention scaled by
    /// `query_pre_attn_scalar`, and sliding-window attention on five layers of every six.
    Gemma3,
}

/// The gate activation of the feed-forward block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    /// `relu(x)²` (BitNet b1.58 2B-4T).
    Relu2,
    /// `x · sigmoid(x)` (Llama, 1bitLLM, Qwen3).
    Silu,
    /// The tanh approximation of GELU (Gemma's `gelu_pytorch_tanh`).
    GeluTanh,
}

/// How an embedding model turns its per-token hidden states into one vector (GGUF
/// `{arch}.pooling_type`, sentence-transformers' `1_Pooling/config.json`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pooling {
    /// Every token's own vector (llama.cpp's `none`).
    None,
    /// The mean over the tokens.
    Mean,
    /// The first token's.
    Cls,
    /// The last token's (the models that append an end-of-sequence token).
    Last,
}

impl Pooling {
    /// llama.cpp's `LLAMA_POOLING_TYPE_*` number.
    pub fn gguf_id(self) -> u32 {
        match self {
            Pooling::None => 0,
            Pooling::Mean => 1,
            Pooling::Cls => 2,
            Pooling::Last => 3,
        }
    }

    /// The pooling llama.cpp numbers `id`, if we run it (4, `rank`, is a reranker's head).
    pub fn from_gguf_id(id: u32) -> Option<Pooling> {
        Some(match id {
            0 => Pooling::None,
            1 => Pooling::Mean,
            2 => Pooling::Cls,
            3 => Pooling::Last,
            _ => return None,
        })
    }

    /// Its name on the command line and in JSON.
    pub fn name(self) -> &'static str {
        match self {
            Pooling::None => "none",
            Pooling::Mean => "mean",
            Pooling::Cls => "cls",
            Pooling::Last => "last",
        }
    }
}

impl std::str::FromStr for Pooling {
    type Err = String;
    fn from_str(s: &str) -> Result<Pooling, String> {
        [Pooling::None, Pooling::Mean, Pooling::Cls, Pooling::Last]
            .into_iter()
            .find(|p| p.name() == s)
            .ok_or_else(|| format!("`{s}` is not a pooling (none, mean, cls or last)"))
    }
}

/// Which dimensions RoPE rotates together.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RopeStyle {
    /// Pairs `(k, k + hd/2)`: transformers' rotate-half, ggml's NEOX mode.
    Neox,
    /// Pairs `(2k, 2k + 1)`: ggml's normal mode, used for `llama` files whose Q and K rows
    /// the converter permuted.
    Interleaved,
}

impl Architecture {
    /// The GGUF names each architecture is read from; the first is the one written.
    pub(crate) const NAMES: [(&'static str, Architecture); 6] = [
        ("bitnet-b1.58", Architecture::BitnetB158),
        ("bitnet-25", Architecture::BitnetB158),
        ("bitnet", Architecture::Bitnet),
        ("llama", Architecture::Llama),
        ("qwen3", Architecture::Qwen3),
        ("gemma3", Architecture::Gemma3),
    ];

    pub(crate) fn from_gguf_name(name: &str) -> Option<Architecture> {
        Architecture::NAMES
            .iter()
            .find(|(n, _)| *n == name)
            .map(|&(_, a)| a)
    }

    /// The name written to `general.architecture`.
    pub fn gguf_name(self) -> &'static str {
        match self {
            Architecture::BitnetB158 => "bitnet-b1.58",
            Architecture::Bitnet => "bitnet",
            Architecture::Llama => "llama",
            Architecture::Qwen3 => "qwen3",
            Architecture::Gemma3 => "gemma3",
        }
    }

    /// The FFN's gate activation.
    pub fn activation(self) -> Activation {
        match self {
            Architecture::BitnetB158 => Activation::Relu2,
            Architecture::Bitnet | Architecture::Llama | Architecture::Qwen3 => Activation::Silu,
            Architecture::Gemma3 => Activation::GeluTanh,
        }
    }

    /// Whether each block normalizes the attention output before `attn_output` and the gated
    /// FFN activation before `ffn_down` (BitNet's sub-norms).
    pub(crate) fn has_sub_norms(self) -> bool {
        matches!(self, Architecture::BitnetB158 | Architecture::Bitnet)
    }

    pub(crate) fn rope_style(self) -> RopeStyle {
        match self {
            Architecture::Llama => RopeStyle::Interleaved,
            Architecture::BitnetB158
            | Architecture::Bitnet
            | Architecture::Qwen3
            | Architecture::Gemma3 => RopeStyle::Neox,
        }
    }

    /// Whether an `output.weight` tensor is used when present (llama.cpp's `bitnet` graph
    /// always multiplies by the embedding).
    pub(crate) fn reads_output_tensor(self) -> bool {
        !matches!(self, Architecture::Bitnet)
    }
}

/// The GGUF key (after `{arch}.`) of Gemma's `query_pre_attn_scalar` (attention scores are
/// scaled by its inverse square root; the head width when absent, as llama.cpp assumes).
pub(crate) const QUERY_PRE_ATTN_SCALAR_KEY: &str = "attention.query_pre_attn_scalar";

/// The GGUF key (after `{arch}.`) of the epsilon of the RMSNorm that transformers'
/// `quantization_config.use_rms_norm` puts in front of every BitLinear's activation
/// quantization. Our own key: llama.cpp and bitnet.cpp know no such norm.
pub(crate) const ACT_NORM_EPS_KEY: &str = "bitnet.input_norm_epsilon";

/// Hyperparameters of a BitNet b1.58 model.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// `general.architecture` as written in the file (its keys are prefixed with it).
    pub arch_name: String,
    /// The architecture it names.
    pub arch: Architecture,
    /// Vocabulary size (rows of the embedding and the output matrix).
    pub n_vocab: usize,
    /// Hidden size H.
    pub n_embd: usize,
    /// Transformer layers.
    pub n_layer: usize,
    /// FFN inner size I.
    pub n_ff: usize,
    /// Query heads.
    pub n_head: usize,
    /// Key/value heads (grouped-query attention when fewer than `n_head`).
    pub n_head_kv: usize,
    /// Width of one head.
    pub head_dim: usize,
    /// Context length the model was trained with.
    pub n_ctx_train: usize,
    /// RoPE base frequency θ.
    pub rope_theta: f32,
    /// Linear RoPE scaling: positions are multiplied by this (`1 / rope.scaling.factor`).
    pub rope_freq_scale: f32,
    /// RMSNorm epsilon.
    pub rms_eps: f32,
    /// The FFN's gate activation.
    pub activation: Activation,
    /// Whether each block has BitNet's sub-norms (before `attn_output` and `ffn_down`).
    pub sub_norms: bool,
    /// Which pairs of a head RoPE rotates together.
    pub rope_style: RopeStyle,
    /// Epsilon of a weightless RMSNorm applied to every BitLinear input before its int8
    /// quantization (transformers' `use_rms_norm`), if the model has one.
    pub act_norm_eps: Option<f32>,
    /// Scale of the attention scores (`1/√head_dim`, or Gemma's `1/√query_pre_attn_scalar`).
    pub attn_scale: f32,
    /// The token embedding is multiplied by this (Gemma's √H).
    pub embd_scale: Option<f32>,
    /// Sliding-window attention: the window and which layers use it (Gemma 3: five of every
    /// six), with their own RoPE base.
    pub sliding_window: Option<SlidingWindow>,
    /// Whether a token attends only to those before it (false: embedding models with
    /// bidirectional attention, `{arch}.attention.causal`).
    pub causal: bool,
    /// How an embedding model pools its hidden states (`{arch}.pooling_type`), if the file
    /// says.
    pub pooling: Option<Pooling>,
}

/// Sliding-window attention: local layers see only the last `window` positions.
#[derive(Clone, Debug, PartialEq)]
pub struct SlidingWindow {
    /// Positions a query sees, itself included.
    pub window: usize,
    /// Every `pattern`-th layer (the last of each group) attends globally.
    pub pattern: usize,
    /// RoPE base frequency of the local layers.
    pub rope_theta_local: f32,
}

impl SlidingWindow {
    /// Whether layer `l` is a local (windowed) one.
    pub fn is_local(&self, l: usize) -> bool {
        self.pattern == 0 || !(l + 1).is_multiple_of(self.pattern)
    }
}

impl Config {
    /// Reads and checks the hyperparameters; `n_vocab_tensor` is the vocabulary size implied by
    /// the embedding tensor (used when `{arch}.vocab_size` is absent).
    pub fn from_gguf(gguf: &GgufFile, n_vocab_tensor: Option<usize>) -> Result<Config, ModelError> {
        Config::from_metadata(gguf.metadata(), n_vocab_tensor)
            .map_err(|e| ModelError::from_config(gguf.source(), e))
    }

    fn from_metadata(md: &Metadata, n_vocab_tensor: Option<usize>) -> Result<Config, ConfigError> {
        let arch_name = md.get_str("general.architecture")?.to_string();
        let arch = Architecture::from_gguf_name(&arch_name).ok_or_else(|| {
            let names: Vec<&str> = Architecture::NAMES.iter().map(|(n, _)| *n).collect();
            ConfigError::Unsupported(format!(
                "architecture `{arch_name}` is not supported (supported: {})",
                names.join(", ")
            ))
        })?;
        let key = |k: &str| format!("{arch_name}.{k}");
        let usize_key = |k: &str| md.get_usize(&key(k));

        let n_embd = usize_key("embedding_length")?;
        let n_layer = usize_key("block_count")?;
        let n_ff = usize_key("feed_forward_length")?;
        let n_head = usize_key("attention.head_count")?;
        let n_head_kv = md
            .opt(&key("attention.head_count_kv"), Metadata::get_usize)?
            .unwrap_or(n_head);
        let n_ctx_train = usize_key("context_length")?;
        let rms_eps = md.get_f32(&key("attention.layer_norm_rms_epsilon"))?;
        let rope_theta = md
            .opt(&key("rope.freq_base"), Metadata::get_f32)?
            .unwrap_or(10000.0);
        let scaling_type = md.opt(&key("rope.scaling.type"), |m, k| {
            m.get_str(k).map(str::to_string)
        })?;
        let rope_freq_scale = match scaling_type.as_deref() {
            None | Some("none") => 1.0,
            Some("linear") => {
                let factor = md
                    .opt(&key("rope.scaling.factor"), Metadata::get_f32)?
                    .unwrap_or(1.0);
                if !(factor > 0.0 && factor.is_finite()) {
                    return Err(ConfigError::Invalid {
                        key: key("rope.scaling.factor"),
                        message: format!("{factor} is not positive"),
                    });
                }
                1.0 / factor
            }
            Some(other) => {
                return Err(ConfigError::Invalid {
                    key: key("rope.scaling.type"),
                    message: format!("`{other}` is not supported (none or linear; Llama 3 scaling comes as a rope_freqs tensor)"),
                })
            }
        };
        let act_norm_eps = md.opt(&key(ACT_NORM_EPS_KEY), Metadata::get_f32)?;
        if let Some(e) = act_norm_eps {
            if !(e > 0.0 && e < 1.0) {
                return Err(ConfigError::Invalid {
                    key: key(ACT_NORM_EPS_KEY),
                    message: format!("{e} is not in (0, 1)"),
                });
            }
        }
        let n_vocab = match md.opt(&key("vocab_size"), Metadata::get_usize)? {
            Some(v) => v,
            None => match md.get_array("tokenizer.ggml.tokens") {
                Ok(tokens) => tokens.len(),
                Err(_) => n_vocab_tensor.ok_or_else(|| MetadataError::Missing {
                    key: key("vocab_size"),
                })?,
            },
        };

        let bad = |k: &str, why: String| ConfigError::Invalid {
            key: key(k),
            message: why,
        };
        for (k, v) in [
            ("embedding_length", n_embd),
            ("block_count", n_layer),
            ("feed_forward_length", n_ff),
            ("attention.head_count", n_head),
            ("attention.head_count_kv", n_head_kv),
            ("context_length", n_ctx_train),
            ("vocab_size", n_vocab),
        ] {
            if v == 0 {
                return Err(bad(k, "must be positive".into()));
            }
        }
        if n_head % n_head_kv != 0 {
            return Err(bad(
                "attention.head_count_kv",
                format!("{n_head_kv} KV heads do not divide the {n_head} query heads"),
            ));
        }
        // Qwen3 and Gemma 3 heads are wider than H / heads: the file says so in key_length.
        let head_dim = match md.opt(&key("attention.key_length"), Metadata::get_usize)? {
            Some(k) => {
                let v = md
                    .opt(&key("attention.value_length"), Metadata::get_usize)?
                    .unwrap_or(k);
                if v != k {
                    return Err(bad(
                        "attention.value_length",
                        format!("{v} differs from attention.key_length {k} (not supported)"),
                    ));
                }
                if k == 0 || k > 1 << 14 {
                    return Err(bad("attention.key_length", format!("{k} is out of range")));
                }
                k
            }
            None => {
                if n_embd % n_head != 0 {
                    return Err(bad(
                        "attention.head_count",
                        format!("{n_head} heads do not divide the embedding length {n_embd}"),
                    ));
                }
                n_embd / n_head
            }
        };
        if n_head.checked_mul(head_dim).is_none_or(|q| q > 1 << 20) {
            return Err(bad(
                "attention.head_count",
                format!("{n_head} heads of width {head_dim} are too many"),
            ));
        }
        if head_dim % 2 != 0 {
            return Err(bad(
                "attention.head_count",
                format!("head dimension {head_dim} must be even for RoPE"),
            ));
        }
        if let Some(rot) = md.opt(&key("rope.dimension_count"), Metadata::get_usize)? {
            if rot != head_dim {
                return Err(bad(
                    "rope.dimension_count",
                    format!("{rot} differs from the head dimension {head_dim} (partial RoPE is not supported)"),
                ));
            }
        }
        if !(rms_eps > 0.0 && rms_eps < 1.0) {
            return Err(bad(
                "attention.layer_norm_rms_epsilon",
                format!("{rms_eps} is not in (0, 1)"),
            ));
        }
        if !(rope_theta > 0.0 && rope_theta.is_finite()) {
            return Err(bad(
                "rope.freq_base",
                format!("{rope_theta} is not positive"),
            ));
        }
        let query_pre_attn = md
            .opt(&key(QUERY_PRE_ATTN_SCALAR_KEY), Metadata::get_f32)?
            .unwrap_or(head_dim as f32);
        if !(query_pre_attn > 0.0 && query_pre_attn.is_finite()) {
            return Err(bad(
                QUERY_PRE_ATTN_SCALAR_KEY,
                format!("{query_pre_attn} is not positive"),
            ));
        }
        let sliding_window = match md.opt(&key("attention.sliding_window"), Metadata::get_usize)? {
            Some(0) | None => None,
            Some(window) if arch == Architecture::Gemma3 => {
                let pattern = md
                    .opt(
                        &key("attention.sliding_window_pattern"),
                        Metadata::get_usize,
                    )?
                    .unwrap_or(6);
                // llama.cpp's default for Gemma 3's local layers.
                let rope_theta_local = md
                    .opt(&key("rope.freq_base_swa"), Metadata::get_f32)?
                    .unwrap_or(10000.0);
                if !(rope_theta_local > 0.0 && rope_theta_local.is_finite()) {
                    return Err(bad(
                        "rope.freq_base_swa",
                        format!("{rope_theta_local} is not positive"),
                    ));
                }
                Some(SlidingWindow {
                    window,
                    pattern,
                    rope_theta_local,
                })
            }
            Some(_) => None,
        };
        let causal = md
            .opt(&key("attention.causal"), Metadata::get_bool)?
            .unwrap_or(true);
        let pooling = match md.opt(&key("pooling_type"), Metadata::get_usize)? {
            None => None,
            Some(id) => Some(
                u32::try_from(id)
                    .ok()
                    .and_then(Pooling::from_gguf_id)
                    .ok_or_else(|| {
                        bad(
                            "pooling_type",
                            format!("{id} is not supported (0 none, 1 mean, 2 cls, 3 last)"),
                        )
                    })?,
            ),
        };
        Ok(Config {
            arch_name,
            arch,
            n_vocab,
            n_embd,
            n_layer,
            n_ff,
            n_head,
            n_head_kv,
            head_dim,
            n_ctx_train,
            rope_theta,
            rope_freq_scale,
            rms_eps,
            activation: arch.activation(),
            sub_norms: arch.has_sub_norms(),
            rope_style: arch.rope_style(),
            act_norm_eps,
            attn_scale: 1.0 / query_pre_attn.sqrt(),
            embd_scale: (arch == Architecture::Gemma3).then(|| (n_embd as f32).sqrt()),
            sliding_window,
            causal,
            pooling,
        })
    }

    /// The context used when none is asked for: the trained one, but at most
    /// [`DEFAULT_CONTEXT_CAP`] (a file may claim billions of positions, whose cache no machine
    /// holds; llama.cpp defaults to 4096 for the same reason).
    pub fn default_context(&self) -> usize {
        self.n_ctx_train.min(DEFAULT_CONTEXT_CAP)
    }

    /// Width of the K and V projections.
    pub fn kv_dim(&self) -> usize {
        self.n_head_kv * self.head_dim
    }

    /// Width of the Q projection and of the attention output (H, except where heads are
    /// wider than H / heads).
    pub fn q_dim(&self) -> usize {
        self.n_head * self.head_dim
    }
}

/// A configuration problem before it is tied to a file name.
#[derive(Debug)]
pub(crate) enum ConfigError {
    Metadata(MetadataError),
    Invalid { key: String, message: String },
    Unsupported(String),
}

impl From<MetadataError> for ConfigError {
    fn from(e: MetadataError) -> ConfigError {
        ConfigError::Metadata(e)
    }
}
