//! BitNet-Rust: an inference engine for BitNet b1.58 models (ternary weights {-1, 0, +1} on
//! 8-bit activations), on the CPU.
//!
//! [`Model`] is the way in: it loads a model and generates text (whole, through a callback, or
//! as an iterator), chats through the model's template, keeps conversations, runs many
//! requests at once, tokenizes and returns logits. Everything below it is public too, layer by
//! layer, for what the high-level API does not cover.
//!
//! # Quick start
//!
//! ```
//! use std::ops::ControlFlow;
//! use bitnet::{ChatMessage, GenerateParams, Model};
//!
//! // The demo model built into the library (7M parameters trained on Shakespeare, the
//! // 2B-4T architecture); `Model::load` takes a GGUF file, a Hugging Face folder or
//! // "hf:OWNER/REPO[:FILE]".
//! let model = Model::demo()?;
//!
//! // Greedy decoding (the same text every time), at most 24 tokens.
//! let params = GenerateParams::greedy().max_tokens(24);
//! let out = model.generate("ROMEO:\n", &params)?;
//! assert!(!out.text.is_empty() && out.generated.len() <= 24);
//!
//! // The same text, piece by piece as it is produced (never half a character).
//! let mut streamed = String::new();
//! for piece in model.stream("ROMEO:\n", &params)? {
//!     streamed.push_str(&piece?);
//! }
//! assert_eq!(streamed, out.text);
//!
//! // Or through a callback, which can stop the generation.
//! model.generate_with("JULIET:\n", &params, |piece| {
//!     print!("{piece}");
//!     ControlFlow::Continue(())
//! })?;
//!
//! // A reply through the model's chat template.
//! let reply = model.chat(&[ChatMessage::user("Good morrow!")], &params)?;
//! println!("{}", reply.text);
//!
//! // Token ids and the logits after them.
//! let ids = model.tokenize("ROMEO:");
//! assert_eq!(model.detokenize(&ids)?, "<|begin_of_text|>ROMEO:");
//! let logits = model.logits(&ids)?;
//! assert_eq!(logits.len(), model.config().n_vocab);
//! # Ok::<(), bitnet::Error>(())
//! ```
//!
//! # Sampling
//!
//! [`GenerateParams`] holds the command line's options with its defaults (llama.cpp's):
//! temperature 0.8, top-k 40, top-p 0.95, min-p 0.05, penalties off, 128 tokens, a new random
//! seed for each generation. A fixed `seed` gives the same text every time; stop strings end
//! the text before them. Values are checked when a generation starts: a bad one is an
//! [`Error::Sampler`] naming the setting and its range.
//!
//! # Conversations and many requests
//!
//! [`Model::chat_session`] keeps a conversation in the KV cache, so each turn prefills only
//! its new message; when the context fills up the oldest turns are dropped.
//! [`Model::generate_batch`] runs many prompts together through the continuous-batching
//! [`generate::Scheduler`] (one forward pass per step for all of them, each prompt's text the
//! same as alone); [`Model::scheduler`] and [`Model::job`] give the scheduler itself, for a
//! server.
//!
//! ```
//! use std::ops::ControlFlow;
//! use bitnet::{GenerateParams, Model};
//!
//! let model = Model::demo()?;
//! let params = GenerateParams::greedy().max_tokens(12);
//! let mut chat = model.chat_session(Some("You are Romeo."), &params)?;
//! chat.send("Good morrow!", |_| ControlFlow::Continue(()))?;
//! let second = chat.send("What news?", |_| ControlFlow::Continue(()))?;
//! assert!(second.cached_tokens > 0, "the first turn stayed in the cache");
//!
//! let results = model.generate_batch(&["ROMEO:", "JULIET:"], &params, 2)?;
//! assert_eq!(results[0].as_ref().unwrap().text, model.generate("ROMEO:", &params)?.text);
//! # Ok::<(), bitnet::Error>(())
//! ```
//!
//! # Loading
//!
//! [`Model::load`] takes anything that converts to a [`Source`]: a path (a GGUF file, or a
//! Hugging Face folder, converted in memory), `"hf:OWNER/REPO[:FILE]"` (downloaded into the
//! Hugging Face cache, feature `hub`), or `None` for the demo. [`Model::load_with`] takes
//! [`ModelOptions`]: threads, the kernels' instruction set, an output matrix re-encoded as
//! Q8_0 or Q6_K, where the weights live ([`Residency`]), the context size and the KV cache's
//! element type.
//!
//! Features: `demo` (default) builds the demo model (3.9 MB) into the library; `hub` adds
//! downloads from the Hugging Face Hub.
//!
//! # Errors
//!
//! Every fallible call of [`Model`] (and of the [`generate::Chat`] it hands out) returns
//! [`Error`], with one variant per layer wrapping that layer's own error: a GGUF file that
//! cannot be read is [`Error::Gguf`], a Hugging Face folder whose files are wrong
//! [`Error::Hf`], a bad [`ModelOptions`] value [`Error::InvalidOption`] naming the field.
//! The messages name the file, key, tensor or value involved, as the `bitnet` command prints
//! them, and [`std::error::Error::source`] leads down the layers to the first cause:
//!
//! ```
//! use std::error::Error as _;
//! use bitnet::formats::gguf::GgufError;
//!
//! let err = bitnet::Model::load("no-such-model.gguf").unwrap_err();
//! // "no-such-model.gguf: cannot read the file: No such file or directory (os error 2)"
//! assert!(err.to_string().starts_with("no-such-model.gguf: cannot read the file: "));
//! assert!(matches!(err, bitnet::Error::Gguf(_)));
//! // Error -> GgufError -> GgufErrorKind::Io -> io::Error
//! let gguf = err.source().unwrap();
//! assert!(gguf.is::<GgufError>());
//! let io = gguf.source().unwrap().source().unwrap();
//! let io = io.downcast_ref::<std::io::Error>().unwrap();
//! assert_eq!(io.kind(), std::io::ErrorKind::NotFound);
//! ```
//!
//! Each message already contains its causes' text, so a reporter that prints the whole chain
//! should skip a cause whose text it has printed. [`Error`] is `#[non_exhaustive]`: a `match`
//! needs a `_` arm.
//!
//! # Layers
//!
//! Each knows only those below it:
//! - [`formats`]: GGUF reading and writing, tensor element types (I2_S, TQ1_0, TQ2_0, ...).
//! - [`kernels`]: ternary × int8 products and the float operations, scalar reference first.
//! - [`model`]: config, weights, the BitNet b1.58 forward pass and KV cache.
//! - [`tokenizer`]: the Llama 3 byte-level BPE and chat templates (uses `formats`).
//! - [`generate`]: sampling, the generation loop, conversations and the scheduler (uses
//!   `model` and `tokenizer`).
//! - [`hf`]: Hugging Face checkpoints: loading, conversion to GGUF, the hub (uses `formats`,
//!   `model`).
//! - [`load`] and [`Model`]: loading by name, and the high-level API over all of the above.
#![warn(missing_docs)]
mod engine;
mod error;
pub mod formats;
pub mod generate;
pub mod gpu;
pub mod hf;
pub mod kernels;
pub mod load;
pub mod model;
pub mod tokenizer;

pub use engine::{Completion, GenerateParams, Model, TextStream, LOGITS_CHUNK};
pub use error::Error;
pub use generate::{Generation, StopReason};
pub use load::{ModelOptions, Residency, Source};
pub use model::{EmbedOptions, Pooling};
pub use tokenizer::ChatMessage;
