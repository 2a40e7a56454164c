//! One module per `bitnet` subcommand.

pub mod inspect;
