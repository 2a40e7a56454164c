//! One module per `bitnet` subcommand.

pub mod bench;
pub mod inspect;
pub mod logits;
pub mod synth;
