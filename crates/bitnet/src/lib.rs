//! BitNet-Rust: an inference engine for BitNet b1.58 models (ternary weights, int8 activations).
//!
//! Layers, each knowing only those below it:
//! - [`formats`]: GGUF reading and writing, tensor element types (I2_S, TQ1_0, TQ2_0, ...).
pub mod formats;
