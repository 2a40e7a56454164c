//! GGUF to GGUF re-encoding (`bitnet quantize`): the output matrix as Q8_0 or Q6_K, so that
//! the slow re-encoding `--output-type` does at every load is paid once, and the ternary
//! linear weights between I2_S (bitnet.cpp), TQ2_0 and TQ1_0 (llama.cpp). Streams tensor by
//! tensor through [`GgufWriter`], copying every other tensor and all metadata unchanged.
//!
//! Ternary re-encodings keep every value; what can change is the scale: I2_S holds one f32
//! per tensor, TQ1_0 and TQ2_0 one f16 per 256 values. I2_S → TQ rounds the scale to f16 once;
//! TQ → I2_S needs every block to share one scale (as in files converted from one
//! `weight_scale`), and refuses a tensor whose blocks differ rather than change its weights.

use std::io::Write;
use std::sync::Arc;

use crate::formats::gguf::{GgufError, GgufFile, GgufWriter, TensorSpec, Value, WriteError};
use crate::formats::types::{i2_s, tq1_0, tq2_0, TensorType};
use crate::kernels::threads::ThreadPool;

use super::weights::DenseTensor;
use super::ModelError;

/// What to re-encode.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QuantizeOptions {
    /// The output matrix's type (Q8_0, Q6_K, F16, F32). A tied model (no `output.weight`)
    /// gets a separate `output.weight`, its embedding kept for the token lookup.
    pub output_type: Option<TensorType>,
    /// The ternary linear weights' type (I2_S, TQ2_0, TQ1_0).
    pub ternary_type: Option<TensorType>,
}

/// What was written.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct QuantizeSummary {
    /// Tensors written.
    pub tensors: usize,
    /// Tensors whose type changed: (name, from, to).
    pub changed: Vec<(String, TensorType, TensorType)>,
    /// Whether `output.weight` was added (the model was tied).
    pub added_output: bool,
}

/// Why a GGUF could not be re-encoded.
#[derive(Debug, thiserror::Error)]
pub enum QuantizeError {
    /// The input could not be read.
    #[error(transparent)]
    Gguf(#[from] GgufError),
    /// The input is not a model this library can re-encode.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// The output could not be written.
    #[error("writing the GGUF: {0}")]
    Write(#[from] WriteError),
    /// The options ask for something impossible (the message says what).
    #[error("{0}")]
    Options(String),
    /// A tensor could not be converted.
    #[error("tensor `{tensor}`: {message}")]
    Tensor {
        /// The tensor.
        tensor: String,
        /// Why.
        message: String,
    },
}

/// llama.cpp's `general.file_type` for a file whose linear weights are `ty`.
fn file_type(ty: TensorType) -> Option<u32> {
    match ty {
        TensorType::I2S => Some(40),
        TensorType::TQ2_0 => Some(37),
        TensorType::TQ1_0 => Some(36),
        _ => None,
    }
}

/// One tensor of the output file, and where its data comes from.
enum Source {
    Copy,
    Ternary(TensorType),
    /// The output matrix re-encoded from this tensor.
    Output {
        from: String,
        ty: TensorType,
    },
}

/// Re-encodes `src` as `options` ask, writing the new GGUF to `out`; `progress(tensor,
/// bytes)` follows each tensor.
pub fn quantize_gguf<W: Write>(
    src: &Arc<GgufFile>,
    options: &QuantizeOptions,
    out: W,
    threads: usize,
    mut progress: impl FnMut(&str, u64),
) -> Result<(W, QuantizeSummary), QuantizeError> {
    if let Some(ty) = options.output_type {
        if !matches!(
            ty,
            TensorType::Q8_0 | TensorType::Q6K | TensorType::F16 | TensorType::F32
        ) {
            return Err(QuantizeError::Options(format!(
                "--output-type {ty}: use q8_0, q6_k, f16 or f32"
            )));
        }
    }
    if let Some(ty) = options.ternary_type {
        if !ty.is_ternary() {
            return Err(QuantizeError::Options(format!(
                "--type {ty}: use i2_s, tq2_0 or tq1_0"
            )));
        }
    }

    let mut plan: Vec<(TensorSpec, Source)> = Vec::new();
    for info in src.tensors() {
        let mut spec = TensorSpec {
            name: info.name.clone(),
            ty: info.ty,
            dims: info.dims.clone(),
        };
        let source = match (options.ternary_type, options.output_type) {
            (Some(ty), _) if info.ty.is_ternary() && info.ty != ty => {
                spec.ty = ty;
                Source::Ternary(ty)
            }
            (_, Some(ty)) if info.name == "output.weight" && info.ty != ty => {
                spec.ty = ty;
                Source::Output {
                    from: info.name.clone(),
                    ty,
                }
            }
            _ => Source::Copy,
        };
        plan.push((spec, source));
    }
    let tied = src.tensor_info("output.weight").is_none();
    let mut added_output = false;
    if let (Some(ty), true) = (options.output_type, tied) {
        let embd = src.tensor_info("token_embd.weight").ok_or_else(|| {
            QuantizeError::Options(
                "the file has neither output.weight nor token_embd.weight".into(),
            )
        })?;
        plan.push((
            TensorSpec {
                name: "output.weight".into(),
                ty,
                dims: embd.dims.clone(),
            },
            Source::Output {
                from: embd.name.clone(),
                ty,
            },
        ));
        added_output = true;
    }

    let mut metadata = src.metadata().clone();
    if let Some(ft) = options.ternary_type.and_then(file_type) {
        if src.tensors().iter().any(|t| t.ty.is_ternary()) {
            metadata.set("general.file_type", Value::U32(ft));
        }
    }

    let specs: Vec<TensorSpec> = plan.iter().map(|(s, _)| s.clone()).collect();
    let mut w = GgufWriter::new(out, &metadata, specs)?;
    let pool = ThreadPool::new(threads);
    let mut summary = QuantizeSummary {
        tensors: plan.len(),
        added_output,
        ..QuantizeSummary::default()
    };
    for (spec, source) in &plan {
        let tensor_error = |message: String| QuantizeError::Tensor {
            tensor: spec.name.clone(),
            message,
        };
        match source {
            Source::Copy => {
                let info = src.tensor(&spec.name)?.info;
                let range = src.tensor_range(info);
                w.write_tensor(&spec.name, &src.bytes()[range.clone()])?;
                src.release(range);
            }
            Source::Ternary(ty) => {
                let view = src.tensor(&spec.name)?;
                let t = view.to_ternary().map_err(|e| tensor_error(e.to_string()))?;
                let data = encode_ternary(*ty, &t.values, &t.scales)
                    .map_err(|m| tensor_error(format!("{} → {ty}: {m}", view.info.ty)))?;
                w.write_tensor(&spec.name, &data)?;
                src.release(src.tensor_range(view.info));
                summary.changed.push((spec.name.clone(), view.info.ty, *ty));
            }
            Source::Output { from, ty } => {
                let info = src.tensor(from)?.info;
                let dense = DenseTensor::from_gguf(src, info)?;
                let encoded = DenseTensor::requantize(&dense, *ty, &pool).map_err(tensor_error)?;
                w.write_tensor(&spec.name, encoded.data())?;
                summary.changed.push((spec.name.clone(), info.ty, *ty));
            }
        }
        progress(&spec.name, spec.dims.iter().product());
    }
    Ok((w.finish()?, summary))
}

/// Ternary values with their scales (one per `values.len() / scales.len()` values) as `ty`.
fn encode_ternary(ty: TensorType, values: &[i8], scales: &[f32]) -> Result<Vec<u8>, String> {
    let block_len = values.len() / scales.len().max(1);
    match ty {
        TensorType::I2S => {
            // One scale for the tensor: every block that has one must agree (all-zero blocks
            // store 0 and say nothing).
            let mut nonzero = scales.iter().copied().filter(|&s| s != 0.0);
            let scale = nonzero.next().unwrap_or(0.0);
            if let Some(other) = nonzero.find(|&s| s != scale) {
                return Err(format!(
                    "its blocks have different scales ({scale} and {other}) but I2_S holds one \
                     per tensor; re-encoding would change the weights"
                ));
            }
            if !values.len().is_multiple_of(i2_s::BLOCK_LEN) {
                return Err(format!(
                    "{} values are not a multiple of I2_S's {}",
                    values.len(),
                    i2_s::BLOCK_LEN
                ));
            }
            Ok(i2_s::encode(values, scale))
        }
        TensorType::TQ2_0 | TensorType::TQ1_0 => {
            if !values.len().is_multiple_of(tq2_0::BLOCK_LEN) {
                return Err(format!(
                    "{} values are not a multiple of the 256-value blocks",
                    values.len()
                ));
            }
            // value · scale, whose block maximum is the scale again: the blocks keep every
            // value exactly (the scale is rounded to f16).
            let w: Vec<f32> = values
                .iter()
                .enumerate()
                .map(|(i, &t)| t as f32 * scales[i / block_len])
                .collect();
            Ok(if ty == TensorType::TQ2_0 {
                tq2_0::quantize(&w)
            } else {
                tq1_0::quantize(&w)
            })
        }
        other => Err(format!("{other} is not a ternary type")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ternary_re_encodings_keep_the_values() {
        let values: Vec<i8> = (0..1024).map(|i| [(-1i8), 0, 1, 1, 0][i * 7 % 5]).collect();
        let back =
            |ty, data: &[u8]| crate::formats::types::decode_ternary(ty, &[1024], data).unwrap();
        for ty in [TensorType::TQ2_0, TensorType::TQ1_0] {
            let data = encode_ternary(ty, &values, &[0.75]).unwrap();
            let t = back(ty, &data);
            assert_eq!(t.values, values, "{ty}");
            assert!(t.scales.iter().all(|&s| s == 0.75), "{ty}");
            let i2s = encode_ternary(TensorType::I2S, &t.values, &t.scales).unwrap();
            assert_eq!(i2s, i2_s::encode(&values, 0.75));
        }
        // Per-block scales that differ cannot become one.
        let e = encode_ternary(TensorType::I2S, &values, &[0.5, 0.5, 0.25, 0.5]).unwrap_err();
        assert!(e.contains("different scales"), "{e}");
    }
}
