//! The `oz-agent-worker` binary: logging, TLS provider, runtime, exit status.
#![forbid(unsafe_code)]

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use oz_worker::cli::{Cli, LogFormat};
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(&cli);
    // One crypto provider for every TLS connection (ring, never aws-lc).
    let _ = rustls::crypto::ring::default_provider().install_default();
    // What a task leaves running is re-parented to us, so it is found among
    // our children instead of by reading all of /proc after every task.
    if let Err(e) = oz_worker::sys::become_subreaper() {
        tracing::warn!(error = %e, "cannot become a child subreaper; every task's leftovers are searched for in all of /proc");
    }

    let mut builder = match cli.runtime_threads() {
        1 => tokio::runtime::Builder::new_current_thread(),
        n => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            b.worker_threads(n);
            b
        }
    };
    let runtime = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(oz_worker::run(cli)) {
        Ok(code) => code,
        Err(e) => {
            // Logging is already set up and writes to stderr.
            tracing::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(cli: &Cli) {
    let level = cli.log_level.as_str();
    // Our crates at the chosen level; libraries only when they warn.
    let filter = EnvFilter::try_from_env("OZ_LOG").unwrap_or_else(|_| {
        EnvFilter::new(format!("warn,oz_worker={level},oz_agent_worker={level}"))
    });
    // Colour only on a terminal (and never with NO_COLOR), so log files and
    // journald get plain text.
    let ansi = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .with_target(false);
    match cli.log_format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Text => builder.init(),
    }
}
