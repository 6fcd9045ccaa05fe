//! The subcommands of the `inkstream` binary, one file (or folder) each.
//! `main.rs` parses the arguments and calls one `run` here per subcommand.

pub mod serve;
pub mod replay;
pub mod generate;
pub mod load;
pub mod fanout_load;
pub mod healthcheck;
