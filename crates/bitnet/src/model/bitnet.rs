//! The BitNet b1.58 model family: weights read from GGUF, and the one forward pass every
//! architecture runs (`bitnet-b1.58`, the 1bitLLM `bitnet`, ternary `llama`).
//!
//! ```text
//! x = E[ids]
//! for each layer:
//!     h = RMSNorm(x; attn_norm)
//!     q, k, v = Lin(h; Wq), Lin(h; Wk), Lin(h; Wv)     one activation quantization of h
//!     q, k = RoPE(q, k)  (rotate-half, or adjacent pairs for llama); cache k, v
//!     o = softmax(q·kᵀ / sqrt(hd) + causal mask) · v   query head i uses KV head i / (nh/nkv)
//!     x = x + Lin([RMSNorm(o; attn_sub_norm)]; Wo)     [..]: BitNet's sub-norms, if present
//!     h = RMSNorm(x; ffn_norm)
//!     a = act(Lin(h; Wgate)) ⊙ Lin(h; Wup)            act: relu² (2B-4T) or SiLU
//!     x = x + Lin([RMSNorm(a; ffn_sub_norm)]; Wdown)
//! logits = RMSNorm(x; output_norm) · Wout               Wout: `output`, or E when tied
//! ```
//! `Lin` is BitLinear: per-token absmax int8 activations (after a weightless RMSNorm when the
//! model has transformers' `use_rms_norm`), ternary weights, an exact integer dot product,
//! then one float rescale (times a per-tensor `.scale` where the file has one), plus a bias
//! where the file has one. See `shared/spec/bitnet-forward.md`.

use std::sync::{Arc, Mutex};

use crate::formats::gguf::{GgufFile, TensorInfo};
use crate::formats::types::TensorType;
use crate::kernels::threads::{self, SharedOut, ThreadPool};
use crate::kernels::{self, DecodeLayout, Isa};

use super::backend::{layer_forward, Backend, LayerWeights, Scratch};
use super::config::{Activation, Architecture, Config, RopeStyle};
use super::kv_cache::{CacheType, KvCache, KvSlice};
use super::weights::{
    ternary_linear_from_gguf, DenseMatrix, DenseTensor, QuantizedActs, QuantizedBuffers,
    TernaryLinear,
};
use super::ModelError;

/// Running this model on the GPU backend (`crate::gpu`): the upload and the device forward.
#[cfg(feature = "gpu")]
mod gpu;

/// A BitLinear layer with its optional output scale (the `bitnet` architecture's per-tensor
/// `.scale`, multiplied after the product) and bias (added after that, as llama.cpp does).
struct Linear {
    weight: Box<dyn TernaryLinear>,
    scale: Option<f32>,
    bias: Option<Vec<f32>>,
    /// The BitNet embedding models' own RMSNorm gains in front of this projection
    /// (`{name}_norm_in`): its input is normalized once more before the int8 quantization.
    norm_in: Option<Vec<f32>>,
}

impl Linear {
    /// The second RMSNorm in front of the quantization, if any: the projection's own gains,
    /// else the model's weightless one (`act_norm`).
    fn second_norm<'a>(
        &'a self,
        eps: f32,
        act_norm: Option<(&'a [f32], f32)>,
    ) -> Option<(&'a [f32], f32)> {
        match &self.norm_in {
            Some(g) => Some((g.as_slice(), eps)),
            None => act_norm,
        }
    }
}

/// Runs several linear layers on the same quantized input in one parallel section (q, k, v;
/// gate, up): each thread computes its share of every layer's output rows, so there is one
/// synchronization instead of one per layer. Outputs are token-major `[n_tokens × out]`.
fn linear_group<const N: usize>(
    exec: &Exec,
    x: &QuantizedActs<'_>,
    layers: [(&Linear, &mut [f32]); N],
) {
    let n_tokens = x.n_tokens();
    let (linears, outs): (Vec<&Linear>, Vec<&mut [f32]>) = layers.into_iter().unzip();
    let mut outs = outs;
    {
        let shared: Vec<SharedOut<f32>> = outs.iter_mut().map(|o| SharedOut::new(o)).collect();
        // Chunks of whole granules over every layer's rows, taken by the threads as they come.
        let total: usize = linears.iter().map(|l| l.weight.out_features()).sum();
        let k = linears[0].weight.in_features();
        let len = exec.pool.chunk_len(total, ROW_GRANULE, k * n_tokens);
        let mut chunks = Vec::new();
        for (l, lin) in linears.iter().enumerate() {
            let rows = lin.weight.out_features();
            chunks.extend((0..rows).step_by(len).map(|r| (l, r..(r + len).min(rows))));
        }
        exec.pool.run_chunks(chunks.len(), &|i| {
            let (l, rows) = chunks[i].clone();
            let (lin, out) = (linears[l], &shared[l]);
            let out_features = lin.weight.out_features();
            let n = rows.len();
            threads::with_scratch_f32(n_tokens * n, |local| {
                let isa = exec.ternary_isa(lin.weight.as_ref(), n_tokens);
                lin.weight.matmul(isa, x, rows.clone(), local);
                for (t, chunk) in local.chunks_exact(n).enumerate() {
                    let start = t * out_features + rows.start;
                    // SAFETY: each chunk is a distinct range of one layer's rows.
                    unsafe { out.slice_mut(start..start + n) }.copy_from_slice(chunk);
                }
            });
        });
    }
    for (lin, out) in linears.iter().zip(outs.iter_mut()) {
        if let Some(scale) = lin.scale {
            out.iter_mut().for_each(|o| *o *= scale);
        }
        if let Some(bias) = &lin.bias {
            for row in out.chunks_exact_mut(bias.len()) {
                row.iter_mut().zip(bias).for_each(|(o, b)| *o += b);
            }
        }
    }
}

/// Buffers of the forward pass, kept between calls (reallocating megabytes per layer costs
/// page faults on every call; ggml pre-allocates its compute buffers for the same reason).
#[derive(Default)]
struct Workspace {
    acts: QuantizedBuffers,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    attn: Vec<f32>,
    proj: Vec<f32>,
    gate: Vec<f32>,
    up: Vec<f32>,
}

impl Workspace {
    /// Sizes every buffer for `n` tokens (capacity is kept when shrinking).
    fn fit(&mut self, n: usize, c: &Config) {
        let (h, kv, ff, qd) = (c.n_embd, c.kv_dim(), c.n_ff, c.q_dim());
        self.q.resize(n * qd, 0.0);
        self.k.resize(n * kv, 0.0);
        self.v.resize(n * kv, 0.0);
        self.attn.resize(n * qd, 0.0);
        self.proj.resize(n * h, 0.0);
        self.gate.resize(n * ff, 0.0);
        self.up.resize(n * ff, 0.0);
    }

    /// The quantized activations' buffers, and the block's float matrices.
    fn split(&mut self) -> (&mut QuantizedBuffers, Scratch<'_, [f32]>) {
        let scratch = Scratch {
            q: &mut self.q[..],
            k: &mut self.k[..],
            v: &mut self.v[..],
            attn: &mut self.attn[..],
            proj: &mut self.proj[..],
            gate: &mut self.gate[..],
            up: &mut self.up[..],
        };
        (&mut self.acts, scratch)
    }
}

impl Layer {
    fn linears_mut(&mut self) -> [&mut Linear; 7] {
        [
            &mut self.wq,
            &mut self.wk,
            &mut self.wv,
            &mut self.wo,
            &mut self.w_gate,
            &mut self.w_up,
            &mut self.w_down,
        ]
    }

    fn linears(&self) -> [&Linear; 7] {
        [
            &self.wq,
            &self.wk,
            &self.wv,
            &self.wo,
            &self.w_gate,
            &self.w_up,
            &self.w_down,
        ]
    }
}

/// One transformer block's weights on the CPU (see [`LayerWeights`] for which norms are
/// whose).
type Layer = LayerWeights<Linear, Vec<f32>>;

/// Which positions' logits a forward pass returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Logits {
    /// Only the last position's (generation).
    Last,
    /// Every position's, `[n_tokens × n_vocab]`.
    All,
    /// No logits: every position's final hidden state after the output norm,
    /// `[n_tokens × n_embd]` (what an embedding model pools).
    Hidden,
}

/// One sequence's part of a batched forward pass ([`BitnetModel::forward_batch`]).
pub struct BatchEntry<'a> {
    /// The new tokens, run at the positions after those already in `cache`.
    pub tokens: &'a [u32],
    /// The sequence's own cache.
    pub cache: &'a mut KvCache,
    /// Which of its positions' logits to return.
    pub logits: Logits,
}

/// Where a sequence's tokens sit in the batch's activation rows, and its first position.
struct Span {
    start: usize,
    len: usize,
    pos0: usize,
}

/// Rows of the output matrix multiplied at a time when several sequences need logits
/// (128 rows of 2560 F16 weights are 640 KiB: they stay in a 1 MiB L2 cache).
const OUTPUT_BLOCK: usize = 128;

/// Output rows per scheduling unit (keeps the kernels' 4-row tiles whole).
const ROW_GRANULE: usize = 16;

/// How the forward pass runs: the kernels' instruction set and the worker threads.
struct Exec {
    isa: Isa,
    /// The ISA each ternary layer shape runs on (empty: `isa` everywhere).
    shapes: Vec<(ShapeKey, ShapeIsas)>,
    pool: ThreadPool,
}

/// A ternary layer's storage format, input and output features.
type ShapeKey = (TensorType, usize, usize);

/// The fastest ISA for a ternary layer shape, for one token (decode) and for many (prefill).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ShapeIsas {
    /// For one token (a GEMV).
    pub decode: Isa,
    /// For several (a GEMM).
    pub prefill: Isa,
}

/// Tokens the prefill kernels are timed with.
const TUNE_TOKENS: usize = 32;
/// Rows the kernels are timed over (enough to stream from the L2 cache, not to be slow).
const TUNE_ROWS: usize = 256;

impl Exec {
    fn ternary_isa(&self, w: &dyn TernaryLinear, n_tokens: usize) -> Isa {
        // The shapes were tuned on I2_S's kernels; T1_6's GEMV does more arithmetic per byte
        // and wants the richest ISA.
        if n_tokens == 1 && w.decode_layout() == Some(DecodeLayout::T16) {
            return self.isa;
        }
        let key = (w.format(), w.in_features(), w.out_features());
        match self.shapes.iter().find(|(k, _)| *k == key) {
            Some((_, isas)) if n_tokens == 1 => isas.decode,
            Some((_, isas)) => isas.prefill,
            None => self.isa,
        }
    }

    /// Times every available SIMD path up to `isa` on each distinct ternary layer shape (on the
    /// model's own weights; the paths give bit-identical results, so only speed differs) and
    /// keeps the fastest per shape, for one token and for many.
    fn tune(&mut self, layers: &[Layer]) {
        self.shapes.clear();
        let candidates: Vec<Isa> = Isa::available()
            .into_iter()
            .filter(|&i| i != Isa::Scalar && i <= self.isa && i.kernels().isa == i)
            // The weights are placed in one layout; only kernels taking it can run them.
            .filter(|&i| i.kernels().i2s_rows == self.isa.kernels().i2s_rows)
            .collect();
        if candidates.len() < 2 {
            return;
        }
        for layer in layers {
            for lin in layer.linears() {
                let w = lin.weight.as_ref();
                let key = (w.format(), w.in_features(), w.out_features());
                if self.shapes.iter().any(|(k, _)| *k == key) {
                    continue;
                }
                let fastest = |tokens: usize| {
                    // One token: each distinct GEMV once, under the name of the ISA it is.
                    let mut isas: Vec<Isa> = candidates
                        .iter()
                        .map(|&i| if tokens == 1 { i.decode_isa() } else { i })
                        .collect();
                    isas.dedup();
                    let timed = isas
                        .iter()
                        .map(|&i| (w.time_matmul(i, tokens, TUNE_ROWS), i));
                    timed
                        .fold(
                            (f64::INFINITY, self.isa),
                            |a, b| if b.0 < a.0 { b } else { a },
                        )
                        .1
                };
                let isas = ShapeIsas {
                    decode: fastest(1),
                    prefill: fastest(TUNE_TOKENS),
                };
                self.shapes.push((key, isas));
            }
        }
    }
}

/// Seconds one decode pass (one token through every ternary layer, as `linear_group` runs it)
/// spends in each layer shape, summed over the layers.
fn time_decode_pass(exec: &Exec, layers: &[Layer]) -> Vec<(ShapeKey, f64)> {
    let mut acts: Vec<(usize, QuantizedBuffers)> = Vec::new();
    let mut times: Vec<(ShapeKey, f64)> = Vec::new();
    let mut out = Vec::new();
    for layer in layers {
        for lin in layer.linears() {
            let w = lin.weight.as_ref();
            let k = w.in_features();
            if !acts.iter().any(|(n, _)| *n == k) {
                let mut b = QuantizedBuffers::default();
                b.fit(1, k);
                let mut x = 0x9e37_79b9_7f4a_7c15u64 ^ k as u64;
                for q in b.q.iter_mut() {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    *q = x as i8;
                }
                b.qsums[0] = b.q.iter().map(|&v| v as i32).sum();
                b.scales[0] = 1.0;
                acts.push((k, b));
            }
            let x = acts.iter().find(|(n, _)| *n == k).map(|(_, b)| b.view());
            let Some(x) = x else { continue };
            out.resize(w.out_features(), 0.0);
            let start = std::time::Instant::now();
            linear_group(exec, &x, [(lin, &mut out[..])]);
            let secs = start.elapsed().as_secs_f64();
            let key = (w.format(), k, w.out_features());
            match times.iter_mut().find(|(k, _)| *k == key) {
                Some((_, t)) => *t += secs,
                None => times.push((key, secs)),
            }
        }
    }
    times
}

/// A loaded BitNet b1.58 model.
pub struct BitnetModel {
    exec: Exec,
    config: Config,
    token_embd: Box<dyn DenseMatrix>,
    output: Box<dyn DenseMatrix>,
    output_norm: Vec<f32>,
    /// Whether the output matrix is the token embedding.
    tied_output: bool,
    layers: Vec<Layer>,
    /// RoPE inverse frequencies, `head_dim / 2` of them (with any scaling applied).
    inv_freq: Vec<f32>,
    /// Those of the sliding-window layers, where their base differs (Gemma 3).
    inv_freq_local: Option<Vec<f32>>,
    /// Unit gains for the weightless pre-quantization RMSNorm (`Config::act_norm_eps`).
    ones: Vec<f32>,
    /// Reused buffers; a forward pass holds the lock (one at a time per model).
    workspace: Mutex<Workspace>,
    /// Whether the streamed weights were copied into owned memory at load.
    resident: bool,
    /// The weights on the GPU, when the model runs there ([`BitnetModel::set_device`]).
    #[cfg(feature = "gpu")]
    gpu: Option<crate::gpu::GpuModel>,
}

impl std::fmt::Debug for BitnetModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BitnetModel")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// Reads tensors by their GGUF names, checking shape and naming the tensor in every error.
struct TensorLoader<'a> {
    file: &'a Arc<GgufFile>,
}

impl TensorLoader<'_> {
    fn info(&self, name: &str) -> Result<&TensorInfo, ModelError> {
        Ok(self.file.tensor(name)?.info)
    }

    fn check_shape(&self, info: &TensorInfo, expected: &[usize]) -> Result<(), ModelError> {
        let dims: Vec<usize> = info.dims.iter().map(|&d| d as usize).collect();
        if dims != expected {
            return Err(ModelError::TensorShape {
                file: self.file.source().to_string(),
                tensor: info.name.clone(),
                expected: format!("{expected:?}"),
                found: info.shape_string(),
            });
        }
        Ok(())
    }

    /// A 1-D float vector (norm weights, biases).
    fn vector(&self, name: &str, len: usize) -> Result<Vec<f32>, ModelError> {
        let view = self.file.tensor(name)?;
        self.check_shape(view.info, &[len])?;
        view.to_f32().map_err(|e| ModelError::Tensor {
            file: self.file.source().to_string(),
            tensor: name.to_string(),
            message: e.to_string(),
        })
    }

    fn linear(&self, prefix: &str, in_f: usize, out_f: usize) -> Result<Linear, ModelError> {
        let name = format!("{prefix}.weight");
        let info = self.info(&name)?;
        self.check_shape(info, &[in_f, out_f])?;
        let weight = ternary_linear_from_gguf(self.file, info)?;
        let bias_name = format!("{prefix}.bias");
        let bias = match self.file.tensor_info(&bias_name) {
            Some(_) => Some(self.vector(&bias_name, out_f)?),
            None => None,
        };
        // llama.cpp's `bitnet` graph multiplies by an optional one-element `{prefix}.scale`.
        let scale_name = format!("{prefix}.scale");
        let scale = match self.file.tensor_info(&scale_name) {
            Some(_) => {
                let s = self.vector(&scale_name, 1)?[0];
                if !s.is_finite() {
                    return Err(ModelError::Tensor {
                        file: self.file.source().to_string(),
                        tensor: scale_name,
                        message: format!("scale {s} is not finite"),
                    });
                }
                Some(s)
            }
            None => None,
        };
        // The BitNet embedding models' per-projection norm, named after the projection.
        let norm_name = format!("{prefix}_norm_in.weight");
        let norm_in = match self.file.tensor_info(&norm_name) {
            Some(_) => Some(self.vector(&norm_name, in_f)?),
            None => None,
        };
        Ok(Linear {
            weight,
            scale,
            bias,
            norm_in,
        })
    }

    /// A 1-D vector if the file has it.
    fn opt_vector(&self, name: &str, len: usize) -> Result<Option<Vec<f32>>, ModelError> {
        match self.file.tensor_info(name) {
            Some(_) => self.vector(name, len).map(Some),
            None => Ok(None),
        }
    }

    fn dense(&self, name: &str, cols: usize, rows: usize) -> Result<DenseTensor, ModelError> {
        let info = self.info(name)?;
        self.check_shape(info, &[cols, rows])?;
        DenseTensor::from_gguf(self.file, info)
    }
}

/// How a model is loaded.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LoadOptions {
    /// Copy the weights every generated token reads (the ternary layers and the output
    /// matrix) into owned huge-page memory, releasing their pages of the mapped file: ~30 %
    /// faster decoding, at the cost of the copy at load. Otherwise they stay in the file's map
    /// where their kernels' layout allows (I2_S weights are reordered for the x86 kernels
    /// either way, into owned memory).
    pub resident: bool,
}

impl BitnetModel {
    /// Loads a model from an opened GGUF file, weights mapped (see [`LoadOptions`]).
    pub fn from_gguf(file: Arc<GgufFile>) -> Result<BitnetModel, ModelError> {
        BitnetModel::from_gguf_with(file, LoadOptions::default())
    }

    /// Loads a model from an opened GGUF file.
    pub fn from_gguf_with(
        file: Arc<GgufFile>,
        options: LoadOptions,
    ) -> Result<BitnetModel, ModelError> {
        let n_vocab_tensor = file
            .tensor_info("token_embd.weight")
            .and_then(|t| t.dims.get(1).map(|&d| d as usize));
        let c = Config::from_gguf(&file, n_vocab_tensor)?;
        let load = TensorLoader { file: &file };
        let (h, ff, kv, qd) = (c.n_embd, c.n_ff, c.kv_dim(), c.q_dim());
        // Gemma's norms compute x · (1 + g); every converter (llama.cpp's Gemma ones,
        // bitnet.cpp's embedding converter on its main branch, `bitnet convert`) stores 1 + g,
        // so the file's values are the gains as they are.
        let norm = |name: &str, len: usize| load.vector(name, len);
        let opt_norm = |name: &str, len: usize| load.opt_vector(name, len);
        let head_norms = matches!(c.arch, Architecture::Qwen3 | Architecture::Gemma3);
        let post_norms = c.arch == Architecture::Gemma3;

        let token_embd = load.dense("token_embd.weight", h, c.n_vocab)?;
        // A separate output matrix when the file has one (untied models); otherwise the
        // embedding (tied, as in bitnet-b1.58-2B-4T). llama.cpp's `bitnet` graph has no output
        // tensor and always multiplies by the embedding, so neither do we for that
        // architecture.
        let has_output =
            file.tensor_info("output.weight").is_some() && c.arch.reads_output_tensor();
        let tied_output = !has_output;
        let output = if has_output {
            load.dense("output.weight", h, c.n_vocab)?
        } else {
            load.dense("token_embd.weight", h, c.n_vocab)?
        };
        let output_norm = norm("output_norm.weight", h)?;

        let sub_norm = |name: &str, len: usize| -> Result<Option<Vec<f32>>, ModelError> {
            if c.sub_norms {
                load.vector(name, len).map(Some)
            } else {
                Ok(None)
            }
        };
        let mut layers = Vec::with_capacity(c.n_layer);
        for i in 0..c.n_layer {
            let p = |n: &str| format!("blk.{i}.{n}");
            let head_norm = |name: &str| -> Result<Option<Vec<f32>>, ModelError> {
                if head_norms {
                    norm(&p(name), c.head_dim).map(Some)
                } else {
                    Ok(None)
                }
            };
            let post_norm = |name: &str| -> Result<Option<Vec<f32>>, ModelError> {
                if post_norms {
                    opt_norm(&p(name), h)
                } else {
                    Ok(None)
                }
            };
            layers.push(Layer {
                attn_norm: norm(&p("attn_norm.weight"), h)?,
                wq: load.linear(&p("attn_q"), h, qd)?,
                wk: load.linear(&p("attn_k"), h, kv)?,
                wv: load.linear(&p("attn_v"), h, kv)?,
                q_norm: head_norm("attn_q_norm.weight")?,
                k_norm: head_norm("attn_k_norm.weight")?,
                attn_sub_norm: sub_norm(&p("attn_sub_norm.weight"), qd)?,
                wo: load.linear(&p("attn_output"), qd, h)?,
                post_attn_norm: post_norm("post_attention_norm.weight")?,
                ffn_norm: norm(&p("ffn_norm.weight"), h)?,
                w_gate: load.linear(&p("ffn_gate"), h, ff)?,
                w_up: load.linear(&p("ffn_up"), h, ff)?,
                ffn_sub_norm: sub_norm(&p("ffn_sub_norm.weight"), ff)?,
                w_down: load.linear(&p("ffn_down"), ff, h)?,
                post_ffn_norm: post_norm("post_ffw_norm.weight")?,
            });
        }

        // inv_freq_k = 1 / θ^(2k/hd), computed in f64 and rounded once to f32; Llama 3's
        // scaling comes as per-frequency divisors in `rope_freqs.weight` (as llama.cpp's
        // converter writes it), linear scaling as one factor on every frequency.
        let freq_factors = match file.tensor_info("rope_freqs.weight") {
            Some(_) => Some(load.vector("rope_freqs.weight", c.head_dim / 2)?),
            None => None,
        };
        if let Some(f) = freq_factors
            .as_ref()
            .and_then(|f| f.iter().find(|v| !(v.is_finite() && **v > 0.0)))
        {
            return Err(ModelError::Tensor {
                file: file.source().to_string(),
                tensor: "rope_freqs.weight".into(),
                message: format!("frequency factor {f} is not positive"),
            });
        }
        let inv_freq_for = |theta: f32| -> Vec<f32> {
            (0..c.head_dim / 2)
                .map(|k| {
                    let base = 1.0 / (theta as f64).powf(2.0 * k as f64 / c.head_dim as f64);
                    let factor = freq_factors.as_ref().map_or(1.0, |f| f[k] as f64);
                    (base / factor * c.rope_freq_scale as f64) as f32
                })
                .collect()
        };
        let inv_freq = inv_freq_for(c.rope_theta);
        let inv_freq_local = c
            .sliding_window
            .as_ref()
            .filter(|w| w.rope_theta_local != c.rope_theta)
            .map(|w| inv_freq_for(w.rope_theta_local));
        let ones = vec![1.0; h.max(ff).max(qd)];

        let mut model = BitnetModel {
            exec: Exec {
                isa: Isa::best(),
                shapes: Vec::new(),
                pool: ThreadPool::new(ThreadPool::default_threads()),
            },
            config: c,
            token_embd: Box::new(token_embd),
            output: Box::new(output),
            output_norm,
            tied_output,
            layers,
            inv_freq,
            inv_freq_local,
            ones,
            workspace: Mutex::new(Workspace::default()),
            resident: options.resident,
            #[cfg(feature = "gpu")]
            gpu: None,
        };
        model.place_weights();
        if options.resident {
            model.output.make_resident();
        }
        if std::env::var_os("BITNET_ISA").is_none() {
            model.exec.tune(&model.layers);
        }
        // Decoding reads I2_S unless `BITNET_DECODE_LAYOUT` says `t1_6` or `auto` (timed per
        // shape). T1_6 lost to I2_S on every shape measured (Zen 4, 1 and 2 threads: 0.4-0.9x,
        // its unpacking is compute-bound there), and timing it costs every load a second copy
        // of the ternary weights and six decode passes, so it is asked for, not tried.
        let layout = match std::env::var("BITNET_DECODE_LAYOUT").as_deref() {
            Ok("auto") => None,
            Ok(v) => Some(v.parse::<DecodeLayout>().unwrap_or(DecodeLayout::I2s)),
            Err(_) => Some(DecodeLayout::I2s),
        };
        model.set_decode_layout(layout);
        Ok(model)
    }

    /// Puts every ternary layer's weights in the layout of the current ISA's kernels.
    fn place_weights(&mut self) {
        let (isa, resident) = (self.exec.isa, self.resident);
        for layer in &mut self.layers {
            for lin in layer.linears_mut() {
                lin.weight.place(isa, resident);
            }
        }
    }

    /// Opens and loads a GGUF file.
    pub fn open(path: impl AsRef<std::path::Path>) -> Result<BitnetModel, ModelError> {
        BitnetModel::from_gguf(Arc::new(GgufFile::open(path)?))
    }

    /// The hyperparameters.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Runs the forward pass on `n` threads (results do not depend on it).
    pub fn set_threads(&mut self, n: usize) {
        if n.max(1) != self.exec.pool.n_threads() {
            self.exec.pool = ThreadPool::new(n);
        }
    }

    /// The threads the forward pass runs on.
    pub fn threads(&self) -> usize {
        self.exec.pool.n_threads()
    }

    /// Uses the kernels of `isa` everywhere (falls back to the best available one below it).
    pub fn set_isa(&mut self, isa: Isa) {
        self.exec.isa = isa;
        self.exec.shapes.clear();
        self.place_weights();
    }

    /// The ISA each ternary layer shape runs on, chosen at load (empty when one ISA was forced
    /// or only one SIMD path is available): `(format, in_features, out_features, isas)`.
    pub fn kernel_plan(&self) -> Vec<(TensorType, usize, usize, ShapeIsas)> {
        self.exec
            .shapes
            .iter()
            .map(|&((ty, i, o), isas)| (ty, i, o, isas))
            .collect()
    }

    /// Reads every I2_S layer in `layout` when decoding (one token at a time), or (None) in the
    /// layout that decodes it fastest: each I2_S shape is timed in both layouts over one
    /// decode pass of every layer (one token, this model's threads, so the weights stream from
    /// memory as they do when generating), best of three passes each, and T1_6 is kept where
    /// it wins. T1_6 is a second copy (1.6 bits a weight, 80 % of the I2_S bytes) beside the
    /// I2_S one, which prefill keeps reading: prefill speed is unchanged, and the ternary
    /// weights take 1.8× the memory. Products are bit-identical in both.
    pub fn set_decode_layout(&mut self, layout: Option<DecodeLayout>) {
        let all = |layers: &mut [Layer], l: DecodeLayout| -> bool {
            let mut any = false;
            for layer in layers.iter_mut() {
                for lin in layer.linears_mut() {
                    any |= lin.weight.set_decode_layout(l).is_some();
                }
            }
            any
        };
        if let Some(l) = layout {
            all(&mut self.layers, l);
        } else if all(&mut self.layers, DecodeLayout::T16) {
            let mut best: Vec<(ShapeKey, [f64; 2])> = Vec::new();
            for _ in 0..3 {
                for (i, l) in [DecodeLayout::I2s, DecodeLayout::T16]
                    .into_iter()
                    .enumerate()
                {
                    all(&mut self.layers, l);
                    for (key, secs) in time_decode_pass(&self.exec, &self.layers) {
                        match best.iter_mut().find(|(k, _)| *k == key) {
                            Some((_, b)) => b[i] = b[i].min(secs),
                            None => {
                                let mut b = [f64::INFINITY; 2];
                                b[i] = secs;
                                best.push((key, b));
                            }
                        }
                    }
                }
            }
            for layer in &mut self.layers {
                for lin in layer.linears_mut() {
                    let w = &mut lin.weight;
                    let key = (w.format(), w.in_features(), w.out_features());
                    let faster = best
                        .iter()
                        .find(|(k, _)| *k == key)
                        .is_some_and(|(_, [i2s, t16])| t16 < i2s);
                    if faster {
                        w.set_decode_layout(DecodeLayout::T16);
                    } else {
                        w.set_decode_layout(DecodeLayout::I2s);
                    }
                }
            }
        }
        for layer in &mut self.layers {
            for lin in layer.linears_mut() {
                lin.weight.release_unused();
            }
        }
    }

    /// The layout each I2_S-based layer shape decodes from:
    /// `(format, in_features, out_features, layout)`.
    pub fn decode_layouts(&self) -> Vec<(TensorType, usize, usize, DecodeLayout)> {
        let mut out: Vec<(TensorType, usize, usize, DecodeLayout)> = Vec::new();
        for layer in &self.layers {
            for lin in layer.linears() {
                let w = lin.weight.as_ref();
                let key = (w.format(), w.in_features(), w.out_features());
                if let Some(l) = w.decode_layout() {
                    if !out.iter().any(|e| (e.0, e.1, e.2) == key) {
                        out.push((key.0, key.1, key.2, l));
                    }
                }
            }
        }
        out
    }

    /// The instruction set the kernels use: the one forced with [`BitnetModel::set_isa`], else
    /// the best this CPU has (each layer shape may run another: see `kernel_plan`).
    pub fn isa(&self) -> Isa {
        self.exec.isa
    }

    /// Stores the output matrix as `ty` (e.g. Q8_0 or Q6_K: about a half or two fifths of the
    /// F16 bytes every generated token reads), re-encoding it in memory. The token embedding
    /// keeps its own storage.
    pub fn set_output_type(&mut self, ty: TensorType) -> Result<(), ModelError> {
        if self.output.format() == ty {
            return Ok(());
        }
        let output = DenseTensor::requantize(self.output.as_ref(), ty, &self.exec.pool).map_err(
            |message| ModelError::Unsupported {
                file: String::from("--output-type"),
                message,
            },
        )?;
        self.output = Box::new(output);
        Ok(())
    }

    /// Bytes a one-token decode step reads: every linear weight (in the layout decoding reads)
    /// and the output matrix.
    pub fn bytes_read_per_token(&self) -> usize {
        let linears: usize = self
            .layers
            .iter()
            .flat_map(|l| l.linears())
            .map(|lin| lin.weight.decode_bytes())
            .sum();
        linears + self.output.weight_bytes()
    }

    /// Parameters: weights of every layer, the embedding, and a separate output matrix if any.
    pub fn parameter_count(&self) -> usize {
        let c = &self.config;
        let vectors: usize = self
            .layers
            .first()
            .map(|l| {
                let norms_in: usize = l
                    .linears()
                    .iter()
                    .filter_map(|lin| lin.norm_in.as_ref().map(Vec::len))
                    .sum();
                let opt = [
                    &l.q_norm,
                    &l.k_norm,
                    &l.attn_sub_norm,
                    &l.post_attn_norm,
                    &l.ffn_sub_norm,
                    &l.post_ffn_norm,
                ]
                .iter()
                .filter_map(|v| v.as_ref().map(Vec::len))
                .sum::<usize>();
                norms_in + opt + 2 * c.n_embd
            })
            .unwrap_or(0);
        let per_layer =
            2 * c.n_embd * c.q_dim() + 2 * c.n_embd * c.kv_dim() + 3 * c.n_embd * c.n_ff + vectors;
        let output = if self.tied_output {
            0
        } else {
            c.n_vocab * c.n_embd
        };
        c.n_layer * per_layer + c.n_vocab * c.n_embd + c.n_embd + output
    }

    /// How the BitLinear weights are held: (the file's type, the layout the kernels read,
    /// tensors), one entry per distinct pair. TQ2_0 / TQ1_0 tensors whose blocks share one
    /// scale are re-encoded as I2_S at load (owned memory, even with a mapped file); others
    /// keep their per-block layout.
    pub fn weight_layouts(&self) -> Vec<(TensorType, TensorType, usize)> {
        let mut out: Vec<(TensorType, TensorType, usize)> = Vec::new();
        for layer in &self.layers {
            for lin in layer.linears() {
                let key = (lin.weight.file_format(), lin.weight.format());
                match out.iter_mut().find(|e| (e.0, e.1) == key) {
                    Some(e) => e.2 += 1,
                    None => out.push((key.0, key.1, 1)),
                }
            }
        }
        out
    }

    /// The formats the weights are held in: (BitLinear weights, output matrix).
    pub fn weight_formats(&self) -> (TensorType, TensorType) {
        (self.layers[0].wq.weight.format(), self.output.format())
    }

    /// A KV cache for this model holding `n_ctx` positions (0: the trained context length,
    /// capped by [`Config::default_context`]); an error, not an abort, when the machine lacks
    /// the memory.
    pub fn new_cache(&self, n_ctx: usize, ty: CacheType) -> Result<KvCache, ModelError> {
        let n_ctx = if n_ctx == 0 {
            self.config.default_context()
        } else {
            n_ctx
        };
        #[cfg(feature = "gpu")]
        if let Some(gpu) = &self.gpu {
            let device = gpu.new_cache(n_ctx, ty)?;
            return Ok(KvCache::on_device(self.config.kv_dim(), n_ctx, ty, device));
        }
        KvCache::new(self.config.n_layer, self.config.kv_dim(), n_ctx, ty)
    }

    /// Drops cached positions `keep .. keep + n`, moving the later ones down (llama.cpp's
    /// context shift): the keys are stored rotated by their position, so each moved key is
    /// rotated back by `n` positions (ggml's K-shift); values move as they are. A cache on the
    /// GPU is shifted on the device.
    pub fn shift_cache(
        &self,
        cache: &mut KvCache,
        keep: usize,
        n: usize,
    ) -> Result<(), ModelError> {
        if self.inv_freq_local.is_some() {
            return Err(ModelError::Unsupported {
                file: self.config.arch_name.clone(),
                message: "context shift with per-layer RoPE bases (sliding-window layers) is not supported".into(),
            });
        }
        let (cos, sin) = self.rope_tables(&self.inv_freq, &[n]);
        // R(−θ): the same cosines, negated sines.
        let sin: Vec<f32> = sin.iter().map(|s| -s).collect();
        // A cache on the device is shifted there, by the same angles and arithmetic.
        #[cfg(feature = "gpu")]
        if cache.device().is_some() {
            let Some(gpu) = &self.gpu else {
                let what = "a KV cache on the GPU with the model on the CPU".into();
                return Err(crate::gpu::GpuError::Unsupported(what).into());
            };
            return cache.discard_on_device(keep, n, |kv, len| {
                gpu.shift_cache(kv, (keep, n, len), &cos, &sin)
            });
        }
        let hd = self.config.head_dim;
        let style = self.config.rope_style;
        cache.discard(keep, n, |row| {
            for head in row.chunks_exact_mut(hd) {
                rope(style, head, &cos, &sin);
            }
        })
    }

    /// Runs `tokens` at the positions after those already in `cache`, appends their keys and
    /// values to it, and returns logits (`[n × n_vocab]`, n = 1 for [`Logits::Last`]).
    pub fn forward(
        &self,
        tokens: &[u32],
        cache: &mut KvCache,
        which: Logits,
    ) -> Result<Vec<f32>, ModelError> {
        let mut batch = [BatchEntry {
            tokens,
            cache,
            logits: which,
        }];
        let mut out = self.forward_batch(&mut batch)?;
        Ok(out.pop().unwrap_or_default())
    }

    /// One forward pass over several sequences at once (continuous batching): every entry's
    /// new tokens are concatenated into one activation matrix, so each weight is read once
    /// for the whole batch; each token is rotated by its own position and attends only over
    /// its own sequence's cache, to which its keys and values are appended. Returns each
    /// entry's logits (as [`BitnetModel::forward`] does for it).
    ///
    /// A sequence's results do not depend on what else is in the batch, bit for bit: the
    /// activation quantization and the output product work row by row, the ternary products
    /// are exact integers, and attention is computed per (token, head) over its own cache.
    pub fn forward_batch(&self, batch: &mut [BatchEntry<'_>]) -> Result<Vec<Vec<f32>>, ModelError> {
        let c = &self.config;
        if batch.is_empty() {
            return Err(ModelError::EmptyInput);
        }
        for entry in batch.iter() {
            if entry.tokens.is_empty() {
                return Err(ModelError::EmptyInput);
            }
            if let Some((i, &t)) = entry
                .tokens
                .iter()
                .enumerate()
                .find(|(_, &t)| t as usize >= c.n_vocab)
            {
                return Err(ModelError::TokenOutOfRange {
                    token: t,
                    index: i,
                    n_vocab: c.n_vocab,
                });
            }
            let needed = entry.cache.len() + entry.tokens.len();
            if needed > entry.cache.capacity() {
                return Err(ModelError::ContextFull {
                    needed,
                    capacity: entry.cache.capacity(),
                });
            }
        }
        #[cfg(feature = "gpu")]
        match &self.gpu {
            Some(gpu) => return self.forward_batch_gpu(gpu, batch),
            None if batch.iter().any(|e| e.cache.device().is_some()) => {
                let what = "a KV cache on the GPU with the model on the CPU".into();
                return Err(crate::gpu::GpuError::Unsupported(what).into());
            }
            None => {}
        }
        let h = c.n_embd;
        let mut spans = Vec::with_capacity(batch.len());
        let mut positions = Vec::new();
        let mut x = Vec::new();
        for entry in batch.iter() {
            let (start, pos0) = (positions.len(), entry.cache.len());
            spans.push(Span {
                start,
                len: entry.tokens.len(),
                pos0,
            });
            positions.extend(pos0..pos0 + entry.tokens.len());
            for &t in entry.tokens {
                let at = x.len();
                x.resize(at + h, 0.0);
                self.token_embd.row_to_f32(t as usize, &mut x[at..]);
                if let Some(scale) = c.embd_scale {
                    x[at..].iter_mut().for_each(|v| *v *= scale);
                }
            }
        }
        let n = positions.len();

        let global = self.rope_tables(&self.inv_freq, &positions);
        let local = self
            .inv_freq_local
            .as_ref()
            .map(|f| self.rope_tables(f, &positions));
        let mut caches: Vec<&mut KvCache> = batch.iter_mut().map(|e| &mut *e.cache).collect();
        let mut ws = self.workspace.lock().unwrap_or_else(|e| e.into_inner());
        ws.fit(n, c);
        for (l, layer) in self.layers.iter().enumerate() {
            let is_local = c.sliding_window.as_ref().is_some_and(|w| w.is_local(l));
            let (cos, sin) = match &local {
                Some(tables) if is_local => tables,
                _ => &global,
            };
            let (acts, scratch) = ws.split();
            let mut cpu = CpuBackend {
                model: self,
                acts,
                caches: &mut caches,
                spans: &spans,
                cos,
                sin,
                n,
            };
            // The CPU runs every step: its error type has no values.
            let Ok(()) = layer_forward(&mut cpu, c, l, layer, &mut x[..], scratch);
        }
        drop(ws);
        for (cache, span) in caches.iter_mut().zip(&spans) {
            cache.set_len(span.pos0 + span.len);
        }

        // The rows whose logits are wanted, normalized, each entry's rounded as its cache
        // type asks.
        let mut normed = Vec::new();
        let mut n_rows = Vec::with_capacity(batch.len());
        for (entry, span) in batch.iter().zip(&spans) {
            let rows = match entry.logits {
                Logits::All | Logits::Hidden => span.start..span.start + span.len,
                Logits::Last => span.start + span.len - 1..span.start + span.len,
            };
            n_rows.push(rows.len());
            for r in rows {
                let at = normed.len();
                normed.resize(at + h, 0.0);
                let o = &mut normed[at..];
                kernels::rms_norm(&x[r * h..(r + 1) * h], &self.output_norm, c.rms_eps, o);
                if entry.cache.cache_type() == CacheType::F16 && entry.logits != Logits::Hidden {
                    // The f16 mode follows ggml (llama.cpp, bitnet.cpp): a product with F16
                    // weights rounds its f32 input to f16 first. The f32 mode keeps
                    // transformers' float32.
                    o.iter_mut()
                        .for_each(|v| *v = half::f16::from_f32(*v).to_f32());
                }
            }
        }
        // Hidden states are returned as they are; the other rows go through the output
        // product together.
        let mut hidden_rows = Vec::new();
        let mut logit_rows = Vec::new();
        let mut at = 0;
        for (entry, &rows) in batch.iter().zip(&n_rows) {
            let mine = &normed[at * h..(at + rows) * h];
            if entry.logits == Logits::Hidden {
                hidden_rows.push(mine.to_vec());
            } else {
                logit_rows.extend_from_slice(mine);
            }
            at += rows;
        }
        let logits = if logit_rows.is_empty() {
            Vec::new()
        } else {
            self.output_product(&logit_rows)
        };
        let mut hidden_rows = hidden_rows.into_iter();
        let mut out = Vec::with_capacity(batch.len());
        let mut rest = &logits[..];
        for (entry, rows) in batch.iter().zip(n_rows) {
            if entry.logits == Logits::Hidden {
                out.push(hidden_rows.next().unwrap_or_default());
                continue;
            }
            let (mine, tail) = rest.split_at(rows * c.n_vocab);
            out.push(mine.to_vec());
            rest = tail;
        }
        Ok(out)
    }

    /// `normed · outputᵀ` for every row of `normed`, `[rows × n_vocab]`, the vocabulary split
    /// between the threads.
    fn output_product(&self, normed: &[f32]) -> Vec<f32> {
        let c = &self.config;
        let h = c.n_embd;
        let n_out = normed.len() / h;
        let mut logits = vec![0f32; n_out * c.n_vocab];
        let shared = SharedOut::new(&mut logits);
        // With several rows, each thread's range is taken in blocks small enough to stay in
        // the L2 cache while every row of `normed` runs over them: the matrix is then read
        // from memory once per step, not once per sequence. Each logit is the same dot product
        // whatever the blocking, so results do not change. Not for the 8-bit formats, whose
        // products quantize every row of `normed` again at each call (measured slower).
        let float = matches!(
            self.output.format(),
            TensorType::F16 | TensorType::BF16 | TensorType::F32
        );
        let block = if n_out == 1 || !float {
            usize::MAX
        } else {
            OUTPUT_BLOCK
        };
        self.exec
            .pool
            .for_chunks(c.n_vocab, 64, h * n_out, &|rows| {
                let mut start_row = rows.start;
                while start_row < rows.end {
                    let sub = start_row..rows.end.min(start_row.saturating_add(block));
                    let n = sub.len();
                    let mut local = vec![0f32; n_out * n];
                    self.output
                        .matmul(self.exec.isa, normed, sub.clone(), &mut local);
                    for (t, chunk) in local.chunks_exact(n).enumerate() {
                        let start = t * c.n_vocab + sub.start;
                        // SAFETY: each thread owns a distinct range of vocabulary rows.
                        unsafe { shared.slice_mut(start..start + n) }.copy_from_slice(chunk);
                    }
                    start_row = sub.end;
                }
            });
        logits
    }

    /// cos and sin of `angle = p · inv_freq_k` (the product in f32, as transformers computes
    /// it) for each position `p`, `[positions × head_dim/2]` each.
    fn rope_tables(&self, inv_freq: &[f32], positions: &[usize]) -> (Vec<f32>, Vec<f32>) {
        let half = inv_freq.len();
        let mut cos = Vec::with_capacity(positions.len() * half);
        let mut sin = Vec::with_capacity(positions.len() * half);
        for &p in positions {
            for &f in inv_freq {
                let angle = (p as f32 * f) as f64;
                cos.push(angle.cos() as f32);
                sin.push(angle.sin() as f32);
            }
        }
        (cos, sin)
    }

    /// Quantizes `input` (rows of `n` values, after the block norm `block_norm` when given)
    /// for each linear layer of `group` and runs them: together on one quantization when none
    /// has its own input norm, else each on its own (the BitNet embedding models normalize
    /// every projection's input with its own gains).
    #[allow(clippy::too_many_arguments)]
    fn project<const N: usize>(
        &self,
        input: &[f32],
        n: usize,
        block_norm: Option<&[f32]>,
        act_norm: Option<(&[f32], f32)>,
        acts: &mut QuantizedBuffers,
        group: [(&Linear, &mut [f32]); N],
    ) {
        let (ex, eps) = (&self.exec, self.config.rms_eps);
        if group.iter().all(|(lin, _)| lin.norm_in.is_none()) {
            let width = group[0].0.weight.in_features();
            norm_quantize(ex, input, n, width, block_norm, eps, act_norm, acts);
            linear_group(ex, &acts.view(), group);
            return;
        }
        for (lin, out) in group {
            let width = lin.weight.in_features();
            let second = lin.second_norm(eps, act_norm);
            norm_quantize(ex, input, n, width, block_norm, eps, second, acts);
            linear_group(ex, &acts.view(), [(lin, out)]);
        }
    }

    /// Causal attention of the `n` queries of every span, each over its own sequence's cache
    /// (which already holds their own keys and values). Each (query, head) pair is computed
    /// alone by one thread, in the same order, so a prefill, one-token-at-a-time decoding and
    /// a batch of other sequences give identical results on any number of threads.
    fn attention(
        &self,
        l: usize,
        q: &[f32],
        caches: &[&mut KvCache],
        spans: &[Span],
        n: usize,
        out: &mut [f32],
    ) {
        let c = &self.config;
        let (qd, hd, kv) = (c.q_dim(), c.head_dim, c.kv_dim());
        // Sliding-window layers see the last `window` positions; models without a causal
        // mask see their whole sequence (the span's tokens are all in the cache by now).
        let window = c
            .sliding_window
            .as_ref()
            .filter(|w| w.is_local(l))
            .map(|w| w.window.max(1));
        let causal = c.causal;
        let group = c.n_head / c.n_head_kv;
        let isa = self.exec.isa;
        let layers: Vec<_> = caches.iter().map(|cache| cache.layer(l)).collect();
        // The span and position of every token.
        let mut owner = Vec::with_capacity(n);
        for (s, span) in spans.iter().enumerate() {
            let end = span.pos0 + span.len;
            owner.extend((0..span.len).map(|i| {
                let last = if causal { span.pos0 + i } else { end - 1 };
                let first = window.map_or(0, |w| (span.pos0 + i + 1).saturating_sub(w));
                (s, first, last)
            }));
        }
        let scale = c.attn_scale;
        out.fill(0.0);
        let shared = SharedOut::new(out);
        // One chunk per (token, KV head): the query heads sharing a KV head read each cached
        // key and value once for all of them (same sums as one head at a time). Later tokens
        // see more keys, and the threads take chunks as they come, which balances that.
        let mean_visible = owner.iter().map(|&(_, f, p)| p + 1 - f).sum::<usize>() / n.max(1);
        let item_work = 2 * hd * group * mean_visible.max(1);
        self.exec
            .pool
            .for_chunks(n * c.n_head_kv, 1, item_work, &|items| {
                for item in items {
                    let (t, kv_head) = (item / c.n_head_kv, item % c.n_head_kv);
                    let (s, first, last) = owner[t];
                    let (keys, values) = layers[s];
                    let visible = last + 1 - first;
                    let kv_off = kv_head * hd;
                    let heads = t * qd + kv_head * group * hd..t * qd + (kv_head + 1) * group * hd;
                    let qs = &q[heads.clone()];
                    threads::with_scratch_f32(group * visible, |scores| {
                        match keys {
                            KvSlice::F32(k) => {
                                for (qh, sc) in
                                    qs.chunks_exact(hd).zip(scores.chunks_exact_mut(visible))
                                {
                                    kernels::f32_rows_dot(isa, &k[first * kv..], kv, kv_off, qh, sc)
                                }
                            }
                            KvSlice::F16(k) => kernels::f16_rows_dot_multi(
                                isa,
                                &k[first * kv..],
                                kv,
                                kv_off,
                                qs,
                                hd,
                                scores,
                            ),
                        }
                        for sc in scores.chunks_exact_mut(visible) {
                            sc.iter_mut().for_each(|s| *s *= scale);
                            kernels::softmax(sc);
                        }
                        // SAFETY: each (token, KV head) pair is one chunk, and its query heads
                        // are these.
                        let o = unsafe { shared.slice_mut(heads) };
                        match values {
                            KvSlice::F32(v) => {
                                for (sc, oh) in
                                    scores.chunks_exact(visible).zip(o.chunks_exact_mut(hd))
                                {
                                    kernels::f32_rows_axpy(
                                        isa,
                                        &v[first * kv..],
                                        kv,
                                        kv_off,
                                        sc,
                                        oh,
                                    )
                                }
                            }
                            KvSlice::F16(v) => kernels::f16_rows_axpy_multi(
                                isa,
                                &v[first * kv..],
                                kv,
                                kv_off,
                                scores,
                                hd,
                                o,
                            ),
                        }
                    });
                }
            });
    }
}

/// The CPU's steps of a block (`model::backend`): the model's thread pool and kernels over
/// the rows of one batch, `n` rows of the sequences `spans`, each with its cache.
struct CpuBackend<'a, 'c> {
    model: &'a BitnetModel,
    acts: &'a mut QuantizedBuffers,
    caches: &'a mut [&'c mut KvCache],
    spans: &'a [Span],
    /// RoPE's cosines and sines for every row, `[n × head_dim/2]` each.
    cos: &'a [f32],
    sin: &'a [f32],
    n: usize,
}

impl Backend for CpuBackend<'_, '_> {
    type Linear = Linear;
    type Gains = Vec<f32>;
    type Rows = [f32];
    type Error = std::convert::Infallible;

    fn project<const N: usize>(
        &mut self,
        input: &[f32],
        width: usize,
        block_norm: Option<&Vec<f32>>,
        group: [(&Linear, &mut [f32]); N],
    ) -> Result<(), Self::Error> {
        let m = self.model;
        let act_norm = m.config.act_norm_eps.map(|e| (m.ones.as_slice(), e));
        let block_norm = block_norm.map(Vec::as_slice);
        m.project(input, width, block_norm, act_norm, self.acts, group);
        Ok(())
    }

    fn head_norm(
        &mut self,
        heads: &mut [f32],
        _width: usize,
        gains: &Vec<f32>,
    ) -> Result<(), Self::Error> {
        let c = &self.model.config;
        let hd = c.head_dim;
        threads::with_scratch_f32(hd, |tmp| {
            for head in heads.chunks_exact_mut(hd) {
                tmp.copy_from_slice(head);
                kernels::rms_norm(tmp, gains, c.rms_eps, head);
            }
        });
        Ok(())
    }

    fn rope(&mut self, q: &mut [f32], k: &mut [f32]) -> Result<(), Self::Error> {
        let c = &self.model.config;
        let (hd, kv, qd) = (c.head_dim, c.kv_dim(), c.q_dim());
        let half = hd / 2;
        for t in 0..self.n {
            let (cos, sin) = (
                &self.cos[t * half..(t + 1) * half],
                &self.sin[t * half..(t + 1) * half],
            );
            for head in q[t * qd..(t + 1) * qd].chunks_exact_mut(hd) {
                rope(c.rope_style, head, cos, sin);
            }
            for head in k[t * kv..(t + 1) * kv].chunks_exact_mut(hd) {
                rope(c.rope_style, head, cos, sin);
            }
        }
        Ok(())
    }

    fn attend(
        &mut self,
        l: usize,
        q: &[f32],
        k: &[f32],
        v: &[f32],
        out: &mut [f32],
    ) -> Result<(), Self::Error> {
        let kv = self.model.config.kv_dim();
        for (cache, span) in self.caches.iter_mut().zip(self.spans) {
            for t in span.start..span.start + span.len {
                cache.write(
                    l,
                    span.pos0 + t - span.start,
                    &k[t * kv..(t + 1) * kv],
                    &v[t * kv..(t + 1) * kv],
                );
            }
        }
        let (caches, spans, n) = (&*self.caches, self.spans, self.n);
        self.model.attention(l, q, caches, spans, n, out);
        Ok(())
    }

    fn add_residual(
        &mut self,
        x: &mut [f32],
        out: &mut [f32],
        post_norm: Option<&Vec<f32>>,
    ) -> Result<(), Self::Error> {
        let (h, eps) = (self.model.config.n_embd, self.model.config.rms_eps);
        add_residual(x, out, h, post_norm.map(Vec::as_slice), eps);
        Ok(())
    }

    fn gate(
        &mut self,
        activation: Activation,
        gate: &[f32],
        up: &mut [f32],
    ) -> Result<(), Self::Error> {
        match activation {
            Activation::Relu2 => {
                for (u, g) in up.iter_mut().zip(gate.iter()) {
                    let r = g.max(0.0);
                    *u *= r * r;
                }
            }
            Activation::Silu => {
                // x / (1 + e^-x), the form PyTorch's SiLU computes.
                for (u, &g) in up.iter_mut().zip(gate.iter()) {
                    *u *= g / (1.0 + (-g).exp());
                }
            }
            Activation::GeluTanh => {
                // PyTorch's gelu(approximate="tanh").
                const K: f32 = 0.797_884_6; // √(2/π)
                for (u, &g) in up.iter_mut().zip(gate.iter()) {
                    *u *= 0.5 * g * (1.0 + (K * (g + 0.044715 * g * g * g)).tanh());
                }
            }
        }
        Ok(())
    }
}

/// BitNet's int8 quantization of every row (token, `n` values) of `x` into `acts`, after an
/// RMSNorm with gain `g` when given (the block's norm or sub-norm), then after the weightless
/// pre-quantization RMSNorm `act_norm` (unit gains and epsilon) when the model has one. Rows
/// are split between the threads when there are several.
/// Rows are stored `width` long (the consuming layer's input width, at least `n`: a padded
/// weight's extra columns meet zeros).
#[allow(clippy::too_many_arguments)]
fn norm_quantize(
    exec: &Exec,
    x: &[f32],
    n: usize,
    width: usize,
    g: Option<&[f32]>,
    eps: f32,
    act_norm: Option<(&[f32], f32)>,
    acts: &mut QuantizedBuffers,
) {
    let n_tokens = x.len() / n;
    acts.fit(n_tokens, width);
    let (q_out, s_out, sum_out) = (
        SharedOut::new(&mut acts.q),
        SharedOut::new(&mut acts.scales),
        SharedOut::new(&mut acts.qsums),
    );
    let work = |tokens: std::ops::Range<usize>| {
        threads::with_scratch_f32(2 * n, |buf| {
            let (normed, tmp) = buf.split_at_mut(n);
            for t in tokens {
                let row = &x[t * n..(t + 1) * n];
                match g {
                    Some(g) => kernels::rms_norm(row, g, eps, normed),
                    None => normed.copy_from_slice(row),
                }
                if let Some((ones, act_eps)) = act_norm {
                    tmp.copy_from_slice(normed);
                    kernels::rms_norm(tmp, &ones[..n], act_eps, normed);
                }
                // SAFETY: each token's row and scalars belong to one thread.
                let row_q = unsafe { q_out.slice_mut(t * width..(t + 1) * width) };
                let (qt, pad) = row_q.split_at_mut(n);
                pad.fill(0);
                let s = kernels::quantize_row_i8(exec.isa, normed, qt);
                let sum: i32 = qt.iter().map(|&v| v as i32).sum();
                unsafe { s_out.slice_mut(t..t + 1)[0] = s };
                unsafe { sum_out.slice_mut(t..t + 1)[0] = sum };
            }
        })
    };
    if n_tokens == 1 {
        work(0..1);
    } else {
        exec.pool.for_chunks(n_tokens, 1, 4 * n, &work);
    }
}

/// `x += out`, row by row, after an RMSNorm of `out` with gains `post_norm` when given
/// (Gemma's norms after attention and after the FFN).
fn add_residual(x: &mut [f32], out: &mut [f32], h: usize, post_norm: Option<&[f32]>, eps: f32) {
    if let Some(g) = post_norm {
        threads::with_scratch_f32(h, |tmp| {
            for row in out.chunks_exact_mut(h) {
                tmp.copy_from_slice(row);
                kernels::rms_norm(tmp, g, eps, row);
            }
        });
    }
    x.iter_mut().zip(out.iter()).for_each(|(x, o)| *x += o);
}

/// Rotates one head in place by the angles whose cosines and sines are given.
fn rope(style: RopeStyle, head: &mut [f32], cos: &[f32], sin: &[f32]) {
    match style {
        RopeStyle::Neox => kernels::rope_neox(head, cos, sin),
        RopeStyle::Interleaved => {
            for ((pair, &c), &s) in head.chunks_exact_mut(2).zip(cos).zip(sin) {
                let (u, v) = (pair[0], pair[1]);
                pair[0] = u * c - v * s;
                pair[1] = v * c + u * s;
            }
        }
    }
}
