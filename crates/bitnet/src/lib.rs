//! BitNet-Rust: an inference engine for BitNet b1.58 models (ternary weights, int8 activations).
//!
//! Layers, each knowing only those below it:
//! - [`formats`]: GGUF reading and writing, tensor element types (I2_S, TQ1_0, TQ2_0, ...).
//! - [`kernels`]: ternary × int8 products and the float operations, scalar reference first.
//! - [`model`]: config, weights, the BitNet b1.58 forward pass and KV cache.
//! - [`tokenizer`]: the Llama 3 byte-level BPE and chat templates (uses `formats`).
//! - [`generate`]: sampling and the generation loop (uses `model` and `tokenizer`).
//! - [`hf`]: Hugging Face checkpoints: loading, conversion to GGUF, the hub (uses `formats`, `model`).
pub mod formats;
pub mod generate;
pub mod hf;
pub mod kernels;
pub mod model;
pub mod tokenizer;
