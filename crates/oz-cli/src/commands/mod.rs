//! One module per subcommand.

pub mod agent;
pub mod follow;
pub mod logs;
pub mod quickstart;
pub mod run;
pub mod schedule;
pub mod worker;

use std::process::ExitCode;

use crate::client::ClientError;

/// Exit statuses of `oz` (documented in `oz --help`).
pub mod exit {
    /// The command (or the followed run) succeeded.
    pub const OK: u8 = 0;
    /// The followed run ended without succeeding.
    pub const RUN_FAILED: u8 = 1;
    /// Bad usage: a wrong flag, a missing argument, a conflict.
    pub const USAGE: u8 = 2;
    /// The API refused the request or could not be reached.
    pub const API_ERROR: u8 = 3;
    /// Following was interrupted by Ctrl-C (the run goes on).
    pub const INTERRUPTED: u8 = 130;
}

/// Print an API error as one sentence and map it to the exit status.
pub fn api_error(e: &ClientError) -> ExitCode {
    eprintln!("error: {e}");
    ExitCode::from(exit::API_ERROR)
}
