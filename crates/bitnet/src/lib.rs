//! BitNet-Rust: an inference engine for BitNet b1.58 models (ternary weights, int8 activations).
//!
//! Start with [`Model`]: it loads a model ([`Source`]: a GGUF file, a Hugging Face folder,
//! `hf:OWNER/REPO`, or the bundled demo) and generates, chats, tokenizes and returns logits.
//!
//! Layers, each knowing only those below it:
//! - [`formats`]: GGUF reading and writing, tensor element types (I2_S, TQ1_0, TQ2_0, ...).
//! - [`kernels`]: ternary × int8 products and the float operations, scalar reference first.
//! - [`model`]: config, weights, the BitNet b1.58 forward pass and KV cache.
//! - [`tokenizer`]: the Llama 3 byte-level BPE and chat templates (uses `formats`).
//! - [`generate`]: sampling and the generation loop (uses `model` and `tokenizer`).
//! - [`hf`]: Hugging Face checkpoints: loading, conversion to GGUF, the hub (uses `formats`, `model`).
//! - [`load`] and [`Model`]: loading by name, and the high-level API over all of the above.
mod engine;
mod error;
pub mod formats;
pub mod generate;
pub mod hf;
pub mod kernels;
pub mod load;
pub mod model;
pub mod tokenizer;

pub use engine::{Completion, GenerateParams, Model, TextStream};
pub use error::Error;
pub use generate::{Generation, StopReason};
pub use load::{ModelOptions, Residency, Source};
pub use tokenizer::ChatMessage;
