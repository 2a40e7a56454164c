//! BitNet-Rust: an inference engine for BitNet b1.58 models (ternary weights, int8 activations).
//!
//! Layers, each knowing only those below it:
//! - [`formats`]: GGUF reading and writing, tensor element types (I2_S, TQ1_0, TQ2_0, ...).
//! - [`kernels`]: ternary × int8 products and the float operations, scalar reference first.
//! - [`model`]: config, weights, the BitNet b1.58 forward pass and KV cache.
pub mod formats;
pub mod hf;
pub mod kernels;
pub mod model;
pub mod tokenizer;
