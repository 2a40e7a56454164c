//! File formats: GGUF (read and write) and the tensor element types it stores.
//!
//! Nothing here knows about models, tokenizers or the CLI.

pub mod gguf;
pub mod types;
