//! `config.json` of a Hugging Face BitNet-family checkpoint, typed and checked up front:
//! - `BitNetForCausalLM` (`model_type: bitnet`, microsoft/bitnet-b1.58-2B-4T);
//! - `LlamaForCausalLM` with `quantization_config.quant_method: bitnet` (Falcon3-*-1.58bit,
//!   Falcon-E, HF1BitLLM/Llama3-8B-1.58);
//! - 1bitLLM's `BitnetForCausalLM` (`model_type: llama`, its own modeling code: sub-norms,
//!   SiLU, master weights ternarized at every forward).
//!
//! Keys and defaults follow transformers' `BitNetConfig` / `LlamaConfig` and
//! `BitNetQuantConfig`: the shape keys are required (a config without them is not a model we
//! can check), `num_key_value_heads` defaults to `num_attention_heads`, `rope_theta` to 500000
//! (BitNet) or 10000 (Llama), `rms_norm_eps` to 1e-5 (BitNet) or 1e-6 (Llama),
//! `tie_word_embeddings` to false, `linear_class` to `bitlinear`, `quantization_mode` to
//! `offline`, `use_rms_norm` to false with `rms_norm_eps` 1e-6.

use std::path::Path;

use serde_json::{Map, Value};

use super::HfError;

/// How `weight_scale` of a packed checkpoint is applied (`quantization_config.linear_class`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinearClass {
    /// `autobitlinear`: `y = (t · x) · weight_scale`, so the scale is m = mean|W|.
    AutoBitLinear,
    /// `bitlinear` (transformers' default, the legacy class): `y = (t · x) / weight_scale`, so the
    /// stored scale is 1/m.
    BitLinear,
}

/// `quantization_config.quantization_mode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QuantMode {
    /// Master weights, ternarized at every forward (the `-bf16` checkpoints).
    Online,
    /// Packed uint8 ternary weights with `weight_scale` (microsoft/bitnet-b1.58-2B-4T).
    Offline,
}

/// Which kind of checkpoint a folder holds (and so which GGUF architecture it becomes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HfFamily {
    /// transformers' `BitNetForCausalLM`: GGUF `bitnet-b1.58`.
    BitNet,
    /// `LlamaForCausalLM` quantized with `quant_method: bitnet`: GGUF `llama`.
    Llama,
    /// 1bitLLM's `BitnetForCausalLM`: GGUF `bitnet`.
    OneBitLlm,
    /// `model_type: qwen3` (BitNet-embedding-0.6B): GGUF `qwen3`.
    Qwen3,
    /// `model_type: gemma3_text` (BitNet-embedding-270M): GGUF `gemma3`.
    Gemma3,
}

impl HfFamily {
    /// The GGUF architecture the checkpoint converts to.
    pub fn architecture(self) -> crate::model::Architecture {
        use crate::model::Architecture;
        match self {
            HfFamily::BitNet => Architecture::BitnetB158,
            HfFamily::Llama => Architecture::Llama,
            HfFamily::OneBitLlm => Architecture::Bitnet,
            HfFamily::Qwen3 => Architecture::Qwen3,
            HfFamily::Gemma3 => Architecture::Gemma3,
        }
    }

    /// Whether the family is one of the embedding backbones (Q/K head norms, per-projection
    /// norms, no output matrix of its own).
    pub fn is_embedding_backbone(self) -> bool {
        matches!(self, HfFamily::Qwen3 | HfFamily::Gemma3)
    }

    /// The Hugging Face module names of the two sub-norms, where the family has them.
    pub(crate) fn sub_norm_modules(self) -> Option<(&'static str, &'static str)> {
        match self {
            HfFamily::BitNet => Some(("self_attn.attn_sub_norm", "mlp.ffn_sub_norm")),
            HfFamily::OneBitLlm => Some(("self_attn.inner_attn_ln", "mlp.ffn_layernorm")),
            HfFamily::Llama | HfFamily::Qwen3 | HfFamily::Gemma3 => None,
        }
    }
}

/// `rope_scaling` of a Llama config.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum RopeScaling {
    /// Every frequency divided by `factor` (`rope_type: linear`).
    Linear {
        /// The divisor.
        factor: f32,
    },
    /// Llama 3.1's frequency-dependent scaling (`rope_type: llama3`).
    Llama3 {
        /// The divisor of the long wavelengths.
        factor: f32,
        /// Wavelengths beyond `original_max_position_embeddings / low_freq_factor` are
        /// divided by `factor`.
        low_freq_factor: f32,
        /// Wavelengths below `original_max_position_embeddings / high_freq_factor` are kept.
        high_freq_factor: f32,
        /// The context the model was first trained with.
        original_max_position_embeddings: usize,
    },
}

impl RopeScaling {
    /// The divisor of each of the `head_dim / 2` RoPE frequencies (llama.cpp's `rope_freqs`
    /// tensor), for Llama 3 scaling: 1 for short wavelengths, `factor` for long ones, a smooth
    /// blend in between, as transformers' `_compute_llama3_parameters` computes.
    pub(crate) fn llama3_factors(&self, rope_theta: f32, head_dim: usize) -> Option<Vec<f32>> {
        let RopeScaling::Llama3 {
            factor,
            low_freq_factor,
            high_freq_factor,
            original_max_position_embeddings,
        } = *self
        else {
            return None;
        };
        let old = original_max_position_embeddings as f64;
        let (factor, low, high) = (
            factor as f64,
            low_freq_factor as f64,
            high_freq_factor as f64,
        );
        let low_wavelen = old / low;
        let high_wavelen = old / high;
        Some(
            (0..head_dim / 2)
                .map(|k| {
                    let inv = 1.0 / (rope_theta as f64).powf(2.0 * k as f64 / head_dim as f64);
                    let wavelen = 2.0 * std::f64::consts::PI / inv;
                    let scaled = if wavelen < high_wavelen {
                        inv
                    } else if wavelen > low_wavelen {
                        inv / factor
                    } else {
                        let smooth = (old / wavelen - low) / (high - low);
                        (1.0 - smooth) * inv / factor + smooth * inv
                    };
                    (inv / scaled) as f32
                })
                .collect(),
        )
    }
}

/// The hyperparameters of a BitNet-family checkpoint.
#[derive(Clone, Debug, PartialEq)]
pub struct HfConfig {
    /// `model_type` (`bitnet`, `llama`).
    pub model_type: String,
    /// Which member of the family the config describes.
    pub family: HfFamily,
    /// Tokens in the vocabulary (rows of the embedding).
    pub vocab_size: usize,
    /// The model width.
    pub hidden_size: usize,
    /// The feed-forward width.
    pub intermediate_size: usize,
    /// Transformer layers.
    pub num_hidden_layers: usize,
    /// Query heads.
    pub num_attention_heads: usize,
    /// Key/value heads (grouped-query attention when fewer than the query heads).
    pub num_key_value_heads: usize,
    /// Width of one head.
    pub head_dim: usize,
    /// The trained context length.
    pub max_position_embeddings: usize,
    /// Epsilon of the RMSNorms.
    pub rms_norm_eps: f32,
    /// RoPE base frequency.
    pub rope_theta: f32,
    /// Whether the output matrix is the embedding.
    pub tie_word_embeddings: bool,
    /// `bos_token_id`, if given.
    pub bos_token_id: Option<u32>,
    /// `eos_token_id` (the first one when a list), if given.
    pub eos_token_id: Option<u32>,
    /// `torch_dtype` (or transformers 5's `dtype`), for display.
    pub torch_dtype: Option<String>,
    /// Absent when the config has no `quantization_config` (then the weights' storage decides:
    /// uint8 is packed, floats are master weights).
    pub linear_class: LinearClass,
    /// `quantization_config.quantization_mode`, when given.
    pub quant_mode: Option<QuantMode>,
    /// `quantization_config.use_rms_norm`: the epsilon of the weightless RMSNorm in front of
    /// every BitLinear's activation quantization, when the model has it.
    pub act_norm_eps: Option<f32>,
    /// `rope_scaling`, when the config has one.
    pub rope_scaling: Option<RopeScaling>,
    /// Gemma's `query_pre_attn_scalar`, when given.
    pub query_pre_attn_scalar: Option<f32>,
    /// Gemma 3's sliding window (`sliding_window`), the period of its global layers
    /// (`sliding_window_pattern`, or read off `layer_types`) and the local RoPE base
    /// (`rope_local_base_freq`).
    pub sliding_window: Option<(usize, usize, f32)>,
    /// False for `use_bidirectional_attention: true` (embedding models without a causal mask).
    pub causal: bool,
}

/// The `model_type`s this loader converts.
pub(crate) const SUPPORTED_MODEL_TYPES: &[&str] = &["bitnet", "llama", "qwen3", "gemma3_text"];

impl HfConfig {
    /// Reads and checks `config.json`.
    pub fn from_file(path: &Path) -> Result<HfConfig, HfError> {
        let bytes = std::fs::read(path).map_err(|source| HfError::Io {
            path: path.display().to_string(),
            source,
        })?;
        HfConfig::from_json(&path.display().to_string(), &bytes)
    }

    /// Parses `config.json` text; `file` names it in errors.
    pub fn from_json(file: &str, bytes: &[u8]) -> Result<HfConfig, HfError> {
        let value: Value = serde_json::from_slice(bytes).map_err(|source| HfError::Json {
            file: file.to_string(),
            source,
        })?;
        let obj = value.as_object().ok_or_else(|| HfError::Config {
            file: file.to_string(),
            key: "(top level)".into(),
            message: "must be a JSON object".into(),
        })?;
        Keys { file, obj }.config()
    }

    /// Width of the K and V projections.
    pub fn kv_dim(&self) -> usize {
        self.num_key_value_heads * self.head_dim
    }
}

/// Typed lookups in a JSON object that fail with the file and key.
struct Keys<'a> {
    file: &'a str,
    obj: &'a Map<String, Value>,
}

impl Keys<'_> {
    fn err(&self, key: &str, message: impl Into<String>) -> HfError {
        HfError::Config {
            file: self.file.to_string(),
            key: key.to_string(),
            message: message.into(),
        }
    }

    /// A present, non-null value.
    fn get(&self, key: &str) -> Option<&Value> {
        self.obj.get(key).filter(|v| !v.is_null())
    }

    fn opt_usize(&self, key: &str) -> Result<Option<usize>, HfError> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_u64()
                .and_then(|n| usize::try_from(n).ok())
                .map(Some)
                .ok_or_else(|| {
                    self.err(key, format!("expected a non-negative integer, found {v}"))
                }),
        }
    }

    fn usize(&self, key: &str) -> Result<usize, HfError> {
        let n = self
            .opt_usize(key)?
            .ok_or_else(|| self.err(key, "is missing"))?;
        if n == 0 {
            return Err(self.err(key, "must be positive"));
        }
        Ok(n)
    }

    fn opt_f64(&self, key: &str) -> Result<Option<f64>, HfError> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_f64()
                .map(Some)
                .ok_or_else(|| self.err(key, format!("expected a number, found {v}"))),
        }
    }

    fn opt_str(&self, key: &str) -> Result<Option<&str>, HfError> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_str()
                .map(Some)
                .ok_or_else(|| self.err(key, format!("expected a string, found {v}"))),
        }
    }

    fn opt_bool(&self, key: &str) -> Result<Option<bool>, HfError> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_bool()
                .map(Some)
                .ok_or_else(|| self.err(key, format!("expected true or false, found {v}"))),
        }
    }

    /// A token id: an integer, or the first of a list (generation configs list several eos).
    fn opt_token_id(&self, key: &str) -> Result<Option<u32>, HfError> {
        let v = match self.get(key) {
            None => return Ok(None),
            Some(Value::Array(items)) => match items.first() {
                None => return Ok(None),
                Some(first) => first,
            },
            Some(v) => v,
        };
        v.as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .map(Some)
            .ok_or_else(|| self.err(key, format!("expected a token id, found {v}")))
    }

    fn config(&self) -> Result<HfConfig, HfError> {
        let model_type = self
            .opt_str("model_type")?
            .ok_or_else(|| self.err("model_type", "is missing"))?
            .to_string();
        if !SUPPORTED_MODEL_TYPES.contains(&model_type.as_str()) {
            return Err(HfError::UnsupportedModelType {
                file: self.file.to_string(),
                model_type,
            });
        }
        let architecture = match self.get("architectures").and_then(Value::as_array) {
            Some(list) => list.first().and_then(Value::as_str),
            None => None,
        };
        let family = match (model_type.as_str(), architecture) {
            ("bitnet", _) => HfFamily::BitNet,
            ("llama", Some("BitnetForCausalLM")) => HfFamily::OneBitLlm,
            ("llama", _) => HfFamily::Llama,
            ("qwen3", _) => HfFamily::Qwen3,
            ("gemma3_text", _) => HfFamily::Gemma3,
            _ => unreachable!("model_type checked above"),
        };
        let expected_act = match family {
            HfFamily::BitNet => "relu2",
            HfFamily::Llama | HfFamily::OneBitLlm | HfFamily::Qwen3 => "silu",
            HfFamily::Gemma3 => "gelu_pytorch_tanh",
        };
        // Gemma configs name it hidden_activation.
        let act_key = if family == HfFamily::Gemma3 && self.get("hidden_activation").is_some() {
            "hidden_activation"
        } else {
            "hidden_act"
        };
        if let Some(act) = self.opt_str(act_key)? {
            if act != expected_act {
                return Err(self.err(
                    act_key,
                    format!("`{act}` is not supported (this family uses {expected_act})"),
                ));
            }
        }
        if family == HfFamily::OneBitLlm {
            for (key, bits) in [("weight_bits", 1), ("input_bits", 8)] {
                if let Some(b) = self.opt_usize(key)? {
                    if b != bits {
                        return Err(self.err(key, format!("{b} is not supported (only {bits})")));
                    }
                }
            }
        }
        let rope_scaling = match self.get("rope_scaling") {
            None => None,
            Some(v) => self.rope_scaling(v)?,
        };

        let hidden_size = self.usize("hidden_size")?;
        let num_attention_heads = self.usize("num_attention_heads")?;
        let num_key_value_heads = match self.opt_usize("num_key_value_heads")? {
            Some(0) => return Err(self.err("num_key_value_heads", "must be positive")),
            Some(n) => n,
            None => num_attention_heads,
        };
        // Qwen3 and Gemma 3 give their heads a width of their own.
        let own_head_dim = family.is_embedding_backbone();
        let head_dim = match self.opt_usize("head_dim")? {
            Some(0) => return Err(self.err("head_dim", "must be positive")),
            Some(hd) if own_head_dim => hd,
            given => {
                if hidden_size % num_attention_heads != 0 {
                    return Err(self.err(
                        "num_attention_heads",
                        format!(
                            "{num_attention_heads} heads do not divide hidden_size {hidden_size}"
                        ),
                    ));
                }
                let hd = hidden_size / num_attention_heads;
                if let Some(g) = given.filter(|&g| g != hd) {
                    return Err(self.err(
                        "head_dim",
                        format!("{g} differs from hidden_size / num_attention_heads = {hd}"),
                    ));
                }
                hd
            }
        };
        if num_attention_heads % num_key_value_heads != 0 {
            return Err(self.err(
                "num_key_value_heads",
                format!(
                    "{num_key_value_heads} KV heads do not divide the {num_attention_heads} query heads"
                ),
            ));
        }
        if head_dim % 2 != 0 {
            return Err(self.err(
                "num_attention_heads",
                format!("head dimension {head_dim} must be even for RoPE"),
            ));
        }

        let default_eps = if family == HfFamily::BitNet {
            1e-5
        } else {
            1e-6
        };
        let query_pre_attn_scalar = match self.opt_f64("query_pre_attn_scalar")? {
            Some(v) if !(v > 0.0 && v.is_finite()) => {
                return Err(self.err("query_pre_attn_scalar", format!("{v} is not positive")))
            }
            Some(v) if family == HfFamily::Gemma3 => Some(v as f32),
            _ => None,
        };
        let sliding_window = if family == HfFamily::Gemma3 {
            self.sliding_window()?
        } else {
            None
        };
        let causal = !self
            .opt_bool("use_bidirectional_attention")?
            .unwrap_or(false);
        let rms_norm_eps = self.opt_f64("rms_norm_eps")?.unwrap_or(default_eps) as f32;
        if !(rms_norm_eps > 0.0 && rms_norm_eps < 1.0) {
            return Err(self.err("rms_norm_eps", format!("{rms_norm_eps} is not in (0, 1)")));
        }
        // transformers 5 moves rope_theta into rope_parameters.
        let rope_theta = match self.opt_f64("rope_theta")? {
            Some(t) => t,
            // transformers 5's Gemma 3 keeps one set per layer type.
            None => self
                .get("rope_parameters")
                .and_then(|p| p.get("full_attention").unwrap_or(p).get("rope_theta"))
                .and_then(Value::as_f64)
                .unwrap_or(match family {
                    HfFamily::BitNet => 500000.0,
                    // transformers' Gemma3TextConfig default.
                    HfFamily::Gemma3 => 1000000.0,
                    _ => 10000.0,
                }),
        } as f32;
        if !(rope_theta > 0.0 && rope_theta.is_finite()) {
            return Err(self.err("rope_theta", format!("{rope_theta} is not positive")));
        }

        let (linear_class, quant_mode, act_norm_eps) = match self.get("quantization_config") {
            None if family == HfFamily::Llama => {
                return Err(self.err(
                    "quantization_config",
                    "is missing: a LlamaForCausalLM checkpoint is a ternary (BitNet) model only with quant_method `bitnet`",
                ))
            }
            None => (LinearClass::BitLinear, None, None),
            Some(q) => self.quantization(q)?,
        };

        Ok(HfConfig {
            model_type,
            vocab_size: self.usize("vocab_size")?,
            hidden_size,
            intermediate_size: self.usize("intermediate_size")?,
            num_hidden_layers: self.usize("num_hidden_layers")?,
            num_attention_heads,
            num_key_value_heads,
            head_dim,
            max_position_embeddings: self.usize("max_position_embeddings")?,
            rms_norm_eps,
            rope_theta,
            tie_word_embeddings: self.opt_bool("tie_word_embeddings")?.unwrap_or(false),
            bos_token_id: self.opt_token_id("bos_token_id")?,
            eos_token_id: self.opt_token_id("eos_token_id")?,
            torch_dtype: match self.opt_str("torch_dtype")? {
                Some(d) => Some(d.to_string()),
                None => self.opt_str("dtype")?.map(str::to_string),
            },
            linear_class,
            quant_mode,
            act_norm_eps,
            rope_scaling,
            query_pre_attn_scalar,
            sliding_window,
            causal,
            family,
        })
    }

    /// Gemma 3's local attention: `(window, pattern, local RoPE base)`, where every
    /// `pattern`-th layer is global. `layer_types` (transformers ≥ 4.53) must have that form.
    fn sliding_window(&self) -> Result<Option<(usize, usize, f32)>, HfError> {
        let Some(window) = self.opt_usize("sliding_window")? else {
            return Ok(None);
        };
        let mut pattern = self.opt_usize("sliding_window_pattern")?.unwrap_or(6);
        if let Some(types) = self.get("layer_types").filter(|v| !v.is_null()) {
            let list = types.as_array().ok_or_else(|| {
                self.err("layer_types", format!("expected a list, found {types}"))
            })?;
            let full: Vec<usize> = list
                .iter()
                .enumerate()
                .filter(|(_, t)| t.as_str() == Some("full_attention"))
                .map(|(i, _)| i)
                .collect();
            if let Some(bad) = list
                .iter()
                .find(|t| !matches!(t.as_str(), Some("full_attention" | "sliding_attention")))
            {
                return Err(self.err("layer_types", format!("{bad} is not supported")));
            }
            pattern = match full.first() {
                None => 0,
                Some(&first) => first + 1,
            };
            let expected = |i: usize| pattern != 0 && (i + 1).is_multiple_of(pattern);
            if list
                .iter()
                .enumerate()
                .any(|(i, t)| (t.as_str() == Some("full_attention")) != expected(i))
            {
                return Err(self.err(
                    "layer_types",
                    "only a global layer every n layers (Gemma 3's pattern) is supported",
                ));
            }
        }
        let local_base = match self.opt_f64("rope_local_base_freq")? {
            Some(b) => b,
            None => self
                .get("rope_parameters")
                .and_then(|p| p.get("sliding_attention"))
                .and_then(|p| p.get("rope_theta"))
                .and_then(Value::as_f64)
                .unwrap_or(10000.0),
        } as f32;
        if !(local_base > 0.0 && local_base.is_finite()) {
            return Err(self.err(
                "rope_local_base_freq",
                format!("{local_base} is not positive"),
            ));
        }
        Ok(Some((window, pattern, local_base)))
    }

    fn rope_scaling(&self, v: &Value) -> Result<Option<RopeScaling>, HfError> {
        let key = |k: &str| format!("rope_scaling.{k}");
        let obj = v
            .as_object()
            .ok_or_else(|| self.err("rope_scaling", format!("expected an object, found {v}")))?;
        let kind = obj
            .get("rope_type")
            .or_else(|| obj.get("type"))
            .and_then(Value::as_str)
            .unwrap_or("default");
        let num = |k: &str, default: Option<f64>| -> Result<f32, HfError> {
            match obj.get(k).filter(|v| !v.is_null()) {
                None => default
                    .map(|d| d as f32)
                    .ok_or_else(|| self.err(&key(k), "is missing")),
                Some(v) => v
                    .as_f64()
                    .filter(|x| *x > 0.0 && x.is_finite())
                    .map(|x| x as f32)
                    .ok_or_else(|| {
                        self.err(&key(k), format!("expected a positive number, found {v}"))
                    }),
            }
        };
        match kind {
            "default" => Ok(None),
            "linear" => Ok(Some(RopeScaling::Linear {
                factor: num("factor", None)?,
            })),
            "llama3" => {
                let scaling = RopeScaling::Llama3 {
                    factor: num("factor", None)?,
                    low_freq_factor: num("low_freq_factor", None)?,
                    high_freq_factor: num("high_freq_factor", None)?,
                    original_max_position_embeddings: num("original_max_position_embeddings", None)?
                        as usize,
                };
                if let RopeScaling::Llama3 {
                    low_freq_factor,
                    high_freq_factor,
                    ..
                } = scaling
                {
                    if low_freq_factor == high_freq_factor {
                        return Err(
                            self.err(&key("high_freq_factor"), "must differ from low_freq_factor")
                        );
                    }
                }
                Ok(Some(scaling))
            }
            other => Err(self.err(
                "rope_scaling",
                format!("RoPE scaling `{other}` is not supported (linear or llama3)"),
            )),
        }
    }

    #[allow(clippy::type_complexity)]
    fn quantization(
        &self,
        q: &Value,
    ) -> Result<(LinearClass, Option<QuantMode>, Option<f32>), HfError> {
        let key = |k: &str| format!("quantization_config.{k}");
        let q = q
            .as_object()
            .ok_or_else(|| self.err("quantization_config", "must be an object"))?;
        let field = |k: &str| -> Result<Option<&str>, HfError> {
            match q.get(k).filter(|v| !v.is_null()) {
                None => Ok(None),
                Some(v) => v
                    .as_str()
                    .map(Some)
                    .ok_or_else(|| self.err(&key(k), format!("expected a string, found {v}"))),
            }
        };
        match field("quant_method")? {
            Some("bitnet") => {}
            // A Llama config names its quantization, or it is not a BitNet model.
            None if self.opt_str("model_type")? != Some("llama") => {}
            other => {
                return Err(self.err(
                    &key("quant_method"),
                    format!(
                        "`{}` is not supported (only `bitnet`)",
                        other.unwrap_or("(missing)")
                    ),
                ))
            }
        }
        // Every linear layer but the output head is BitLinear; a checkpoint that keeps others
        // in full precision is a model this engine cannot run.
        if let Some(list) = q.get("modules_to_not_convert").filter(|v| !v.is_null()) {
            let names = list.as_array().ok_or_else(|| {
                self.err(
                    &key("modules_to_not_convert"),
                    format!("expected a list, found {list}"),
                )
            })?;
            if let Some(other) = names.iter().find(|n| n.as_str() != Some("lm_head")) {
                return Err(self.err(
                    &key("modules_to_not_convert"),
                    format!("{other} is not supported (only lm_head may stay unquantized)"),
                ));
            }
        }
        let act_norm_eps = match q.get("use_rms_norm").filter(|v| !v.is_null()) {
            None | Some(Value::Bool(false)) => None,
            Some(Value::Bool(true)) => {
                let eps = match q.get("rms_norm_eps").filter(|v| !v.is_null()) {
                    None => 1e-6,
                    Some(v) => v.as_f64().ok_or_else(|| {
                        self.err(
                            &key("rms_norm_eps"),
                            format!("expected a number, found {v}"),
                        )
                    })?,
                } as f32;
                if !(eps > 0.0 && eps < 1.0) {
                    return Err(self.err(&key("rms_norm_eps"), format!("{eps} is not in (0, 1)")));
                }
                Some(eps)
            }
            Some(v) => {
                return Err(self.err(
                    &key("use_rms_norm"),
                    format!("expected true or false, found {v}"),
                ))
            }
        };
        let class = match field("linear_class")? {
            None | Some("bitlinear") => LinearClass::BitLinear,
            Some("autobitlinear") => LinearClass::AutoBitLinear,
            Some(other) => {
                return Err(self.err(
                    &key("linear_class"),
                    format!("`{other}` is not supported (autobitlinear or bitlinear)"),
                ))
            }
        };
        let mode = match field("quantization_mode")? {
            None | Some("offline") => QuantMode::Offline,
            Some("online") => QuantMode::Online,
            Some(other) => {
                return Err(self.err(
                    &key("quantization_mode"),
                    format!("`{other}` is not supported (online or offline)"),
                ))
            }
        };
        Ok((class, Some(mode), act_norm_eps))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ONLINE: &str = r#"{"model_type": "bitnet", "vocab_size": 1024, "hidden_size": 128,
        "intermediate_size": 384, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 2, "max_position_embeddings": 512, "rms_norm_eps": 1e-05,
        "rope_theta": 500000.0, "tie_word_embeddings": true, "hidden_act": "relu2",
        "bos_token_id": 1021, "eos_token_id": [1023, 1022],
        "quantization_config": {"linear_class": "autobitlinear", "quant_method": "bitnet",
        "quantization_mode": "online"}}"#;

    #[test]
    fn parses_the_fixture_shape() {
        let c = HfConfig::from_json("config.json", ONLINE.as_bytes()).unwrap();
        assert_eq!((c.hidden_size, c.head_dim, c.kv_dim()), (128, 32, 64));
        assert_eq!(c.linear_class, LinearClass::AutoBitLinear);
        assert_eq!(c.quant_mode, Some(QuantMode::Online));
        assert_eq!((c.bos_token_id, c.eos_token_id), (Some(1021), Some(1023)));
        assert!(c.tie_word_embeddings);
    }

    #[test]
    fn errors_name_the_key() {
        let bad = ONLINE.replace(r#""hidden_size": 128"#, r#""hidden_size": "x""#);
        let e = HfConfig::from_json("c.json", bad.as_bytes()).unwrap_err();
        assert_eq!(
            e.to_string(),
            "c.json: key `hidden_size`: expected a non-negative integer, found \"x\""
        );
        let bad = ONLINE.replace(r#""num_key_value_heads": 2"#, r#""num_key_value_heads": 3"#);
        let e = HfConfig::from_json("c.json", bad.as_bytes()).unwrap_err();
        assert!(e.to_string().contains("`num_key_value_heads`"), "{e}");
        let bad = ONLINE.replace(r#""autobitlinear""#, r#""fancylinear""#);
        let e = HfConfig::from_json("c.json", bad.as_bytes()).unwrap_err();
        assert!(
            e.to_string().contains("quantization_config.linear_class"),
            "{e}"
        );
    }

    /// Falcon3-1B-Instruct-1.58bit's config.json (the keys that matter here).
    const FALCON3: &str = r#"{"architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "head_dim": 256, "hidden_act": "silu", "hidden_size": 2048, "intermediate_size": 8192,
        "max_position_embeddings": 8192, "num_attention_heads": 8, "num_hidden_layers": 18,
        "num_key_value_heads": 4, "quantization_config": {"modules_to_not_convert": ["lm_head"],
        "quant_method": "bitnet"}, "rms_norm_eps": 1e-06, "rope_scaling": null,
        "rope_theta": 1000042, "tie_word_embeddings": false, "vocab_size": 131072}"#;

    #[test]
    fn llama_family_configs() {
        let c = HfConfig::from_json("c.json", FALCON3.as_bytes()).unwrap();
        assert_eq!(c.family, HfFamily::Llama);
        assert_eq!((c.head_dim, c.linear_class), (256, LinearClass::BitLinear));
        assert_eq!((c.act_norm_eps, c.rope_scaling), (None, None));
        let mut v: Value = serde_json::from_str(FALCON3).unwrap();
        v["quantization_config"]["modules_to_not_convert"] = serde_json::json!(["lm_head", "mlp"]);
        let e = HfConfig::from_json("c.json", v.to_string().as_bytes()).unwrap_err();
        assert!(
            e.to_string().contains("only lm_head may stay unquantized"),
            "{e}"
        );
        let mut v: Value = serde_json::from_str(FALCON3).unwrap();
        v["quantization_config"]["use_rms_norm"] = serde_json::json!(true);
        v["rope_scaling"] = serde_json::json!({"rope_type": "yarn", "factor": 4.0});
        let e = HfConfig::from_json("c.json", v.to_string().as_bytes()).unwrap_err();
        assert!(
            e.to_string()
                .contains("RoPE scaling `yarn` is not supported"),
            "{e}"
        );
        v["rope_scaling"] = serde_json::json!({"rope_type": "llama3", "factor": 8.0,
            "low_freq_factor": 1.0, "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192});
        let c = HfConfig::from_json("c.json", v.to_string().as_bytes()).unwrap();
        assert_eq!(c.act_norm_eps, Some(1e-6));
        // Llama 3.1 8B's published rope_freqs: 1 for the first (short) wavelengths, 8 for the
        // long ones, a blend between.
        let f = c
            .rope_scaling
            .unwrap()
            .llama3_factors(500000.0, 128)
            .unwrap();
        assert_eq!(f.len(), 64);
        assert_eq!((f[0], f[63]), (1.0, 8.0));
        assert!(f.windows(2).all(|w| w[0] <= w[1]), "{f:?}");
        assert!(f.iter().any(|&x| x > 1.0 && x < 8.0));
        let mut v: Value = serde_json::from_str(FALCON3).unwrap();
        v["architectures"] = serde_json::json!(["BitnetForCausalLM"]);
        v["tie_word_embeddings"] = serde_json::json!(true);
        v.as_object_mut().unwrap().remove("quantization_config");
        let c = HfConfig::from_json("c.json", v.to_string().as_bytes()).unwrap();
        assert_eq!(c.family, HfFamily::OneBitLlm);
    }

    #[test]
    fn legacy_defaults() {
        let mut legacy: Value = serde_json::from_str(ONLINE).unwrap();
        legacy["quantization_config"] = serde_json::json!({"quant_method": "bitnet"});
        let c = HfConfig::from_json("c.json", legacy.to_string().as_bytes()).unwrap();
        assert_eq!(c.linear_class, LinearClass::BitLinear);
        assert_eq!(c.quant_mode, Some(QuantMode::Offline));
    }
}
