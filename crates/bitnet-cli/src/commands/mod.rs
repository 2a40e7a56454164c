//! One module per `bitnet` subcommand.

pub mod bench;
pub mod convert;
pub mod inspect;
pub mod logits;
pub mod pull;
pub mod synth;
