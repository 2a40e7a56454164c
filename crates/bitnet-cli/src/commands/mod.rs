//! One module per `bitnet` subcommand.

pub mod batch;
pub mod bench;
pub mod chat;
pub mod convert;
pub mod embed;
pub mod generate;
pub mod inspect;
pub mod list;
pub mod logits;
pub mod perplexity;
pub mod pull;
pub mod quantize;
pub mod serve;
pub mod synth;
pub mod tokenize;
