//! The weights of a Hugging Face folder: safetensors shards (one file, an index of shards, or
//! every `*.safetensors`), read tensor by tensor with positional reads so that converting a
//! checkpoint never holds more than one tensor (the page cache holds the file, not us).
//!
//! Also here: the HF → GGUF tensor names, the packed uint8 layout of
//! microsoft/bitnet-b1.58-2B-4T, and absmean ternarization as transformers computes it.

use std::collections::{BTreeSet, HashMap};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use safetensors::tensor::Metadata;
use safetensors::Dtype;
use serde_json::Value;

use super::config::{HfConfig, LinearClass};
use super::HfError;

/// A safetensors header larger than this is refused (the format's own limit).
const MAX_HEADER: u64 = 100_000_000;

/// One safetensors file: its parsed header and where its data starts.
struct Shard {
    path: PathBuf,
    label: String,
    file: Mutex<File>,
    data_start: u64,
    meta: Metadata,
}

impl Shard {
    fn open(path: &Path) -> Result<Shard, HfError> {
        let label = path.display().to_string();
        let bad = |message: String| HfError::Safetensors {
            file: label.clone(),
            message,
        };
        let mut file = File::open(path).map_err(|e| HfError::io(path, e))?;
        let len = file.metadata().map_err(|e| HfError::io(path, e))?.len();
        let mut n = [0u8; 8];
        file.read_exact(&mut n)
            .map_err(|_| bad(format!("{len} bytes is too short for a header")))?;
        let n = u64::from_le_bytes(n);
        if n > MAX_HEADER || 8 + n > len {
            return Err(bad(format!(
                "header length {n} does not fit the file ({len} bytes)"
            )));
        }
        let mut header = vec![0u8; n as usize];
        file.read_exact(&mut header)
            .map_err(|e| HfError::io(path, e))?;
        // The crate's `Metadata` checks that the tensors tile the data section exactly.
        let meta: Metadata =
            serde_json::from_slice(&header).map_err(|e| bad(format!("header: {e}")))?;
        let data_start = 8 + n;
        let expected = data_start + meta.data_len() as u64;
        if expected != len {
            return Err(bad(format!(
                "the header describes {expected} bytes but the file has {len} (truncated or corrupt download?)"
            )));
        }
        Ok(Shard {
            path: path.to_path_buf(),
            label,
            file: Mutex::new(file),
            data_start,
            meta,
        })
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), HfError> {
        // A poisoned lock only means another reader panicked; the file is still usable.
        let mut file = self.file.lock().unwrap_or_else(|e| e.into_inner());
        file.seek(SeekFrom::Start(self.data_start + offset))
            .and_then(|_| file.read_exact(buf))
            .map_err(|e| HfError::io(&self.path, e))
    }
}

/// An opened Hugging Face model folder: its config and its tensors.
pub struct Checkpoint {
    folder: PathBuf,
    config: HfConfig,
    shards: Vec<Shard>,
    index: HashMap<String, usize>,
    /// Names stored without the `model.` prefix (a bare `Qwen3Model` / `Gemma3TextModel`, as
    /// sentence-transformers saves it) are indexed with it; this maps back to the stored name.
    stored_names: HashMap<String, String>,
}

impl std::fmt::Debug for Checkpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Checkpoint")
            .field("folder", &self.folder)
            .field("shards", &self.shards.len())
            .field("tensors", &self.index.len())
            .finish()
    }
}

/// A tensor of the checkpoint: its dtype and shape (row-major, PyTorch order).
#[derive(Clone, Copy)]
pub struct TensorRef<'a> {
    /// The tensor's name in the checkpoint.
    pub name: &'a str,
    /// Its stored dtype.
    pub dtype: Dtype,
    /// Its shape (row-major, PyTorch order).
    pub shape: &'a [usize],
    shard: &'a Shard,
    start: u64,
    len: u64,
}

impl<'a> TensorRef<'a> {
    /// The safetensors file holding the tensor.
    pub fn file(&self) -> &'a str {
        &self.shard.label
    }

    /// The number of elements.
    pub fn element_count(&self) -> usize {
        self.shape.iter().product()
    }

    pub(crate) fn error(&self, message: impl Into<String>) -> HfError {
        HfError::Tensor {
            file: self.file().to_string(),
            tensor: self.name.to_string(),
            message: message.into(),
        }
    }

    /// The raw bytes (little-endian, as stored).
    pub fn read(&self) -> Result<Vec<u8>, HfError> {
        self.read_range(0, self.len)
    }

    /// `len` raw bytes starting `offset` bytes into the tensor.
    pub(crate) fn read_range(&self, offset: u64, len: u64) -> Result<Vec<u8>, HfError> {
        if offset.checked_add(len).is_none_or(|end| end > self.len) {
            return Err(self.error(format!(
                "bytes {offset}..+{len} are outside its {} bytes",
                self.len
            )));
        }
        let mut buf = vec![0u8; len as usize];
        self.shard.read_at(self.start + offset, &mut buf)?;
        Ok(buf)
    }

    /// Bytes per element of a float dtype, or an error naming the tensor.
    pub(crate) fn float_width(&self) -> Result<usize, HfError> {
        match self.dtype {
            Dtype::F32 => Ok(4),
            Dtype::F16 | Dtype::BF16 => Ok(2),
            other => Err(self.error(format!(
                "dtype {other:?} where a float (F32, F16, BF16) was expected"
            ))),
        }
    }

    /// Elements `first .. first + count` decoded to f32 (F32, F16 or BF16 storage).
    pub(crate) fn read_f32_range(&self, first: usize, count: usize) -> Result<Vec<f32>, HfError> {
        let w = self.float_width()?;
        let bytes = self.read_range((first * w) as u64, (count * w) as u64)?;
        Ok(decode_floats(self.dtype, &bytes))
    }

    /// All elements as f32 (F32, F16 or BF16 storage).
    pub fn to_f32(&self) -> Result<Vec<f32>, HfError> {
        self.read_f32_range(0, self.element_count())
    }

    fn check_shape(&self, expected: &[usize]) -> Result<(), HfError> {
        if self.shape != expected {
            return Err(HfError::TensorShape {
                file: self.file().to_string(),
                tensor: self.name.to_string(),
                expected: format!("{expected:?}"),
                found: format!("{:?}", self.shape),
            });
        }
        Ok(())
    }
}

/// Decodes little-endian F32 / F16 / BF16 bytes (other dtypes give an empty vector).
pub(crate) fn decode_floats(dtype: Dtype, bytes: &[u8]) -> Vec<f32> {
    match dtype {
        Dtype::F32 => bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
        Dtype::F16 => bytes
            .chunks_exact(2)
            .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        Dtype::BF16 => bytes
            .chunks_exact(2)
            .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        _ => Vec::new(),
    }
}

impl Checkpoint {
    /// Opens a folder: `config.json` (required), then the safetensors shards.
    pub fn open(folder: &Path) -> Result<Checkpoint, HfError> {
        let config_path = folder.join("config.json");
        if !config_path.is_file() {
            return Err(HfError::NoConfig {
                folder: folder.display().to_string(),
            });
        }
        let config = HfConfig::from_file(&config_path)?;
        let (files, weight_map) = shard_files(folder)?;
        let mut shards = Vec::with_capacity(files.len());
        let mut index = HashMap::new();
        for path in files {
            let shard = Shard::open(&path)?;
            for name in shard.meta.offset_keys() {
                if let Some(&other) = index.get(&name) {
                    let first: &Shard = &shards[other];
                    return Err(HfError::Safetensors {
                        file: shard.label.clone(),
                        message: format!("tensor `{name}` is also in {}", first.label),
                    });
                }
                index.insert(name, shards.len());
            }
            shards.push(shard);
        }
        if let Some((index_file, map)) = weight_map {
            for (tensor, shard) in map {
                let found = index.get(&tensor).map(|&i| &shards[i]);
                if found.is_none_or(|s| s.path.file_name() != Some(shard.as_ref())) {
                    return Err(HfError::Tensor {
                        file: index_file.clone(),
                        tensor,
                        message: format!("listed in shard `{shard}`, which does not hold it"),
                    });
                }
            }
        }
        // A base model (no `...ForCausalLM` wrapper) stores `layers.0...`, `embed_tokens...`
        // and `norm...`: index them under the names a causal-LM checkpoint uses.
        let mut stored_names = HashMap::new();
        if !index.keys().any(|n| n.starts_with("model.")) {
            let bare: Vec<String> = index
                .keys()
                .filter(|n| {
                    n.starts_with("layers.")
                        || n.starts_with("embed_tokens.")
                        || n.starts_with("norm.")
                })
                .cloned()
                .collect();
            for name in bare {
                if let Some(shard) = index.remove(&name) {
                    let alias = format!("model.{name}");
                    index.insert(alias.clone(), shard);
                    stored_names.insert(alias, name);
                }
            }
        }
        Ok(Checkpoint {
            folder: folder.to_path_buf(),
            config,
            shards,
            index,
            stored_names,
        })
    }

    /// The checkpoint's folder.
    pub fn folder(&self) -> &Path {
        &self.folder
    }

    /// Every file of the folder that loading or converting it reads: `config.json`, the
    /// safetensors shards and their index, and the tokenizer's files (those that exist).
    /// A command writing into the folder checks its output is none of them.
    pub fn files(&self) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = self.shards.iter().map(|s| s.path.clone()).collect();
        files.extend(
            super::FOLDER_FILES
                .iter()
                .map(|f| self.folder.join(f))
                .filter(|p| p.is_file()),
        );
        files
    }

    /// Its `config.json`.
    pub fn config(&self) -> &HfConfig {
        &self.config
    }

    /// Whether the checkpoint holds a tensor of this name.
    pub fn contains(&self, name: &str) -> bool {
        self.index.contains_key(name)
    }

    /// All tensor names, sorted.
    pub fn names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.index.keys().map(String::as_str).collect();
        names.sort_unstable();
        names
    }

    /// A tensor by its Hugging Face name, or an error naming it.
    pub fn tensor(&self, name: &str) -> Result<TensorRef<'_>, HfError> {
        let missing = || HfError::MissingTensor {
            folder: self.folder.display().to_string(),
            tensor: name.to_string(),
        };
        let (key, &i) = self.index.get_key_value(name).ok_or_else(missing)?;
        let shard = &self.shards[i];
        let stored = self.stored_names.get(name).map_or(name, String::as_str);
        let info = shard.meta.info(stored).ok_or_else(missing)?;
        let (start, end) = info.data_offsets;
        Ok(TensorRef {
            name: key,
            dtype: info.dtype,
            shape: &info.shape,
            shard,
            start: start as u64,
            len: (end - start) as u64,
        })
    }

    /// A float tensor of exactly this shape (norms, embeddings, master weights).
    pub(crate) fn float_tensor(
        &self,
        name: &str,
        shape: &[usize],
    ) -> Result<TensorRef<'_>, HfError> {
        let t = self.tensor(name)?;
        t.float_width()?;
        t.check_shape(shape)?;
        Ok(t)
    }

    /// Checks the gain of a BitLinear's pre-quantization RMSNorm (transformers'
    /// `use_rms_norm`) where the checkpoint stores one: only the weightless norm (all gains 1,
    /// as transformers initializes it) is supported, since the q, k and v projections (and gate
    /// and up) share one quantization of their input.
    pub(crate) fn check_unit_norm(&self, name: &str, len: usize) -> Result<(), HfError> {
        if !self.contains(name) {
            return Ok(());
        }
        let t = self.float_tensor(name, &[len])?;
        if let Some(g) = t.to_f32()?.into_iter().find(|&g| g != 1.0) {
            return Err(t.error(format!(
                "a pre-quantization RMSNorm gain of {g} is not supported (only the weightless norm, all gains 1)"
            )));
        }
        Ok(())
    }

    /// Checks a BitLinear weight's storage and shape against `[out, in]` without reading its
    /// data; for a packed weight, returns its `weight_scale` tensor.
    pub(crate) fn check_linear(
        &self,
        name: &str,
        out_features: usize,
        in_features: usize,
    ) -> Result<Option<TensorRef<'_>>, HfError> {
        let t = self.tensor(name)?;
        if t.dtype != Dtype::U8 {
            t.float_width()?;
            t.check_shape(&[out_features, in_features])?;
            return Ok(None);
        }
        if !out_features.is_multiple_of(4) {
            return Err(HfError::PackedRows {
                file: t.file().to_string(),
                tensor: name.to_string(),
                out_features,
            });
        }
        t.check_shape(&[out_features / 4, in_features])?;
        let scale_name = match name.strip_suffix(".weight") {
            Some(prefix) => format!("{prefix}.weight_scale"),
            None => format!("{name}_scale"),
        };
        let s = self.tensor(&scale_name)?;
        s.float_width()?;
        if s.element_count() != 1 {
            return Err(HfError::TensorShape {
                file: s.file().to_string(),
                tensor: scale_name,
                expected: "[1]".into(),
                found: format!("{:?}", s.shape),
            });
        }
        Ok(Some(s))
    }

    /// A BitLinear weight `[out, in]` as ternary values (row-major) and one scale, whatever
    /// its storage:
    /// - uint8 `[out/4, in]` packed + `weight_scale`: unpacked, the scale multiplied
    ///   (`autobitlinear`) or divided (`bitlinear`) as `quantization_config.linear_class` says;
    /// - F32 / F16 / BF16 master weights: absmean-ternarized (`absmean_ternarize`).
    pub fn ternary_weight(
        &self,
        name: &str,
        out_features: usize,
        in_features: usize,
    ) -> Result<(Vec<i8>, f32), HfError> {
        let t = self.tensor(name)?;
        let Some(s) = self.check_linear(name, out_features, in_features)? else {
            return Ok(absmean_ternarize(&t.to_f32()?));
        };
        let values = unpack_ternary(&t.read()?, out_features / 4, in_features).map_err(|i| {
            t.error(format!(
                "byte {i} holds the 2-bit code 3, which is not a ternary value"
            ))
        })?;
        let stored = s.to_f32()?[0];
        let scale = match self.config.linear_class {
            LinearClass::AutoBitLinear => stored,
            LinearClass::BitLinear => 1.0 / stored,
        };
        if !(scale.is_finite() && scale > 0.0) {
            return Err(s.error(format!(
                "weight_scale {stored} gives the scale {scale} ({:?}), which is not a positive number",
                self.config.linear_class
            )));
        }
        Ok((values, scale))
    }
}

/// The shard files of a folder, and the index's weight map when there is one.
#[allow(clippy::type_complexity)]
fn shard_files(
    folder: &Path,
) -> Result<(Vec<PathBuf>, Option<(String, Vec<(String, String)>)>), HfError> {
    let index_path = folder.join("model.safetensors.index.json");
    if index_path.is_file() {
        let label = index_path.display().to_string();
        let bytes = std::fs::read(&index_path).map_err(|e| HfError::io(&index_path, e))?;
        let value: Value = serde_json::from_slice(&bytes).map_err(|source| HfError::Json {
            file: label.clone(),
            source,
        })?;
        let map = value
            .get("weight_map")
            .and_then(Value::as_object)
            .ok_or_else(|| HfError::Config {
                file: label.clone(),
                key: "weight_map".into(),
                message: "is missing or not an object".into(),
            })?;
        let mut pairs = Vec::with_capacity(map.len());
        let mut files = BTreeSet::new();
        for (tensor, shard) in map {
            let shard = shard.as_str().ok_or_else(|| HfError::Config {
                file: label.clone(),
                key: format!("weight_map.{tensor}"),
                message: format!("expected a file name, found {shard}"),
            })?;
            // Shards are plain file names next to the index; never follow a path elsewhere.
            if shard.contains(['/', '\\']) || shard == ".." {
                return Err(HfError::Config {
                    file: label.clone(),
                    key: format!("weight_map.{tensor}"),
                    message: format!("`{shard}` is not a file name in this folder"),
                });
            }
            let path = folder.join(shard);
            if files.insert(shard.to_string()) && !path.is_file() {
                return Err(HfError::MissingShard {
                    index: label,
                    shard: shard.to_string(),
                    tensor: tensor.clone(),
                });
            }
            pairs.push((tensor.clone(), shard.to_string()));
        }
        let paths = files.iter().map(|f| folder.join(f)).collect();
        return Ok((paths, Some((label, pairs))));
    }
    let single = folder.join("model.safetensors");
    if single.is_file() {
        return Ok((vec![single], None));
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir(folder)
        .map_err(|e| HfError::io(folder, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && p.extension().is_some_and(|x| x == "safetensors"))
        .collect();
    if found.is_empty() {
        return Err(HfError::NoWeights {
            folder: folder.display().to_string(),
        });
    }
    found.sort();
    Ok((found, None))
}

/// The GGUF name of a Hugging Face tensor (`model.layers.3.self_attn.q_proj.weight` →
/// `blk.3.attn_q.weight`), or `None` for tensors a GGUF does not keep (`weight_scale`,
/// `rotary_emb.inv_freq`).
pub fn gguf_name(hf: &str) -> Option<String> {
    match hf {
        "model.embed_tokens.weight" => return Some("token_embd.weight".into()),
        "model.norm.weight" => return Some("output_norm.weight".into()),
        "lm_head.weight" => return Some("output.weight".into()),
        _ => {}
    }
    let rest = hf.strip_prefix("model.layers.")?;
    let (layer, rest) = rest.split_once('.')?;
    layer.parse::<usize>().ok()?;
    let (module, kind) = rest.rsplit_once('.')?;
    if kind != "weight" && kind != "bias" {
        return None;
    }
    let short = match module {
        "input_layernorm" => "attn_norm",
        "post_attention_layernorm" => "ffn_norm",
        "self_attn.attn_sub_norm" | "self_attn.inner_attn_ln" => "attn_sub_norm",
        "mlp.ffn_sub_norm" | "mlp.ffn_layernorm" => "ffn_sub_norm",
        "self_attn.q_proj" => "attn_q",
        "self_attn.k_proj" => "attn_k",
        "self_attn.v_proj" => "attn_v",
        "self_attn.o_proj" => "attn_output",
        "mlp.gate_proj" => "ffn_gate",
        "mlp.up_proj" => "ffn_up",
        "mlp.down_proj" => "ffn_down",
        _ => return None,
    };
    Some(format!("blk.{layer}.{short}.{kind}"))
}

/// Unpacks transformers' packed layout: uint8 `[rows, cols]` holding `[4·rows, cols]` ternary
/// values, `t[k·rows + r, c] = ((P[r, c] >> 2k) & 3) − 1`. Fails with the byte offset of a
/// 2-bit code 3.
pub(crate) fn unpack_ternary(packed: &[u8], rows: usize, cols: usize) -> Result<Vec<i8>, usize> {
    if let Some(i) = packed.iter().position(|&b| b & (b >> 1) & 0x55 != 0) {
        return Err(i);
    }
    let mut t = vec![0i8; 4 * rows * cols];
    for (k, chunk) in t.chunks_exact_mut(rows * cols).enumerate() {
        for (out, &p) in chunk.iter_mut().zip(packed) {
            *out = ((p >> (2 * k)) & 3) as i8 - 1;
        }
    }
    Ok(t)
}

/// BitNet's absmean ternarization exactly as transformers computes it in float32:
/// `m = max(mean|W|, 1e-5)`, `s = 1/m`, `t = clamp(round_half_even(W · s), -1, 1)`; returns
/// `(t, m)`. The mean is PyTorch's: a float32 sum in the order of its CPU reduction kernel,
/// then one division by the count, so m (the I2_S scale) is bit-identical to the
/// `weight_scale` transformers packs and to what bitnet.cpp writes.
pub(crate) fn absmean_ternarize(w: &[f32]) -> (Vec<i8>, f32) {
    let abs: Vec<f32> = w.iter().map(|v| v.abs()).collect();
    let mean = torch_sum(&abs) / w.len().max(1) as f32;
    let m = mean.max(1e-5);
    let s = 1.0 / m;
    // clamp(round_half_even(x), -1, 1) is 1 above 0.5, -1 below -0.5 and 0 in between (ties
    // go to the even 0; NaN gives 0): comparisons, which vectorize.
    let t = w
        .iter()
        .map(|&v| {
            let x = v * s;
            (x > 0.5) as i8 - (x < -0.5) as i8
        })
        .collect();
    (t, m)
}

/// `torch.sum` of a contiguous float32 tensor on one CPU thread (ATen's `cascade_sum` with
/// AVX2 vectors of 8 lanes): lanes of 8, four interleaved vector accumulators, each summed in a
/// four-level cascade, then the tail and the lanes added in order. Reproduced here because a
/// one-ulp difference in mean|W| is a different scale in the file.
fn torch_sum(x: &[f32]) -> f32 {
    const LANES: usize = 8;
    const ILP: usize = 4;
    const LEVELS: usize = 4;
    type V = [f32; LANES];
    let add = |a: &mut V, b: &V| a.iter_mut().zip(b).for_each(|(a, b)| *a += b);
    let vec_at = |i: usize| -> V {
        let mut v = [0f32; LANES];
        v.copy_from_slice(&x[i * LANES..(i + 1) * LANES]);
        v
    };

    let n_vec = x.len() / LANES;
    let rows = n_vec / ILP;
    // multi_row_sum: `rows` rows of ILP vectors, cascaded over LEVELS levels.
    let ceil_log2 = |v: usize| -> u32 {
        if v <= 2 {
            1
        } else {
            usize::BITS - (v - 1).leading_zeros()
        }
    };
    let level_power = (ceil_log2(rows) / LEVELS as u32).max(4);
    let level_step = 1usize << level_power;
    let level_mask = level_step - 1;
    let mut acc = [[[0f32; LANES]; ILP]; LEVELS];
    let mut i = 0;
    while i + level_step <= rows {
        for _ in 0..level_step {
            for (k, a) in acc[0].iter_mut().enumerate() {
                add(a, &vec_at(i * ILP + k));
            }
            i += 1;
        }
        for j in 1..LEVELS {
            let (lower, upper) = acc.split_at_mut(j);
            for (hi, lo) in upper[0].iter_mut().zip(lower[j - 1].iter_mut()) {
                add(hi, lo);
                *lo = [0.0; LANES];
            }
            if i & (level_mask << (j as u32 * level_power)) != 0 {
                break;
            }
        }
    }
    while i < rows {
        for (k, a) in acc[0].iter_mut().enumerate() {
            add(a, &vec_at(i * ILP + k));
        }
        i += 1;
    }
    let mut partial = acc[0];
    for level in &acc[1..] {
        for (p, a) in partial.iter_mut().zip(level) {
            add(p, a);
        }
    }
    // row_sum: leftover vectors into the first accumulator, then the accumulators together.
    for v in rows * ILP..n_vec {
        add(&mut partial[0], &vec_at(v));
    }
    for k in 1..ILP {
        let p = partial[k];
        add(&mut partial[0], &p);
    }
    // vectorized_inner_sum: the scalar tail first, then the lanes in order.
    let mut total = 0f32;
    for &v in &x[n_vec * LANES..] {
        total += v;
    }
    for &lane in &partial[0] {
        total += lane;
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_map_both_ways_of_the_spec() {
        assert_eq!(
            gguf_name("model.layers.12.mlp.down_proj.weight").as_deref(),
            Some("blk.12.ffn_down.weight")
        );
        assert_eq!(
            gguf_name("model.layers.0.self_attn.attn_sub_norm.weight").as_deref(),
            Some("blk.0.attn_sub_norm.weight")
        );
        assert_eq!(
            gguf_name("model.layers.0.self_attn.q_proj.bias").as_deref(),
            Some("blk.0.attn_q.bias")
        );
        assert_eq!(
            gguf_name("model.layers.0.self_attn.q_proj.weight_scale"),
            None
        );
        assert_eq!(gguf_name("model.layers.x.mlp.up_proj.weight"), None);
    }

    #[test]
    fn unpack_follows_the_row_chunk_layout() {
        // rows = 1, cols = 2: byte 0 holds rows 0..4 of column 0.
        let packed = [0b10_01_00_10u8, 0b01_01_01_01];
        let t = unpack_ternary(&packed, 1, 2).unwrap();
        assert_eq!(t, vec![1, 0, -1, 0, 0, 0, 1, 0]);
        assert_eq!(unpack_ternary(&[0, 0b0011_0000], 1, 2), Err(1));
    }

    #[test]
    fn torch_sum_is_exact_on_integers_and_handles_tails() {
        for n in [0usize, 1, 7, 8, 33, 1000, 4096 + 13, 70_000] {
            let x: Vec<f32> = (0..n).map(|i| (i % 7) as f32).collect();
            let exact: f32 = x.iter().map(|&v| v as f64).sum::<f64>() as f32;
            assert_eq!(torch_sum(&x), exact, "n = {n}");
        }
    }

    #[test]
    fn ternary_rounding_equals_round_half_even_then_clamp() {
        for x in [
            0.0f32,
            0.49999997,
            0.5,
            0.50000006,
            1.0,
            1.5,
            2.5,
            -0.5,
            -0.50000006,
            -1.5,
            1e9,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::NAN,
            -0.0,
        ] {
            let (t, _) = absmean_ternarize(&[x, 1.0]);
            let m = (x.abs() + 1.0) / 2.0;
            let expected = (x * (1.0 / m.max(1e-5))).round_ties_even().clamp(-1.0, 1.0) as i8;
            if m.is_finite() {
                assert_eq!(t[0], expected, "{x}");
            }
        }
    }

    #[test]
    fn ternarize_rounds_half_to_even() {
        // mean |w| = 1, so 0.5 → 0, 1.5 → 2 → clamped to 1, -0.5 → 0.
        let (t, m) = absmean_ternarize(&[0.5, -0.5, 1.5, -1.5, 1.0, -1.0, 0.25, 1.75]);
        assert_eq!(m, 1.0);
        assert_eq!(t, vec![0, 0, 1, -1, 1, -1, 0, 1]);
    }
}
