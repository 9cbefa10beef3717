//! `oz-agent-worker`: the self-hosted Oz worker with the Direct backend.
//!
//! Code map: [`cli`] and [`config`] resolve the settings; [`connection`]
//! owns the WebSocket; [`worker`] supervises tasks; [`direct`] runs one task
//! on the host; [`sys`] contains process groups and tree kills; [`args`],
//! [`env`] and [`dotenv`] build what each process receives; [`capture`]
//! reads and redacts task output into the [`spool`], the durable state that
//! also journals results ([`journal`]).
#![forbid(unsafe_code)]

pub mod args;
pub mod capture;
pub mod cli;
pub mod config;
pub mod connection;
pub mod direct;
pub mod dotenv;
pub mod env;
pub mod journal;
pub mod spool;
pub mod sys;
pub mod task;
pub mod worker;

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;

use crate::cli::Cli;
use crate::config::{FileConfig, Settings};
use crate::direct::DirectBackend;

/// Resolve the configuration, run the startup checks, and serve until a
/// signal stops the worker.
pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    run_until(cli, tokio_util::sync::CancellationToken::new()).await
}

/// [`run`], with `stop` acting as a first SIGTERM (drain and exit): for
/// programs that embed a worker, such as `oz quickstart`.
pub async fn run_until(
    cli: Cli,
    stop: tokio_util::sync::CancellationToken,
) -> anyhow::Result<ExitCode> {
    let file = match &cli.config_file {
        Some(path) => {
            let path = expand_home(path);
            FileConfig::load(&path)?
        }
        None => FileConfig::default(),
    };
    let host = |k: &str| std::env::var(k).ok();
    let settings = Arc::new(Settings::resolve(&cli, file, &host)?);
    let worker_env = env::worker_env_without_key(std::env::vars_os(), &settings.api_key);
    let backend = DirectBackend::new(settings.clone(), worker_env)
        .context("the Direct backend cannot start")?;
    spool::prepare_state_dir(&settings.state_dir)?;

    if cli.check_config {
        println!("configuration is valid");
        println!("{settings:#?}");
        println!("oz: {}", backend.oz_path().display());
        return Ok(ExitCode::SUCCESS);
    }
    let spool = Arc::new(spool::Spool::open(
        &settings.state_dir,
        settings.log_spool_limit,
    )?);

    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        worker_id = %settings.worker_id,
        backend = "direct",
        oz = %backend.oz_path().display(),
        workspace = %settings.direct.target_dir.as_ref().unwrap_or(&settings.direct.workspace_root).display(),
        max_concurrent_tasks = settings.max_concurrent_tasks,
        cleanup = settings.cleanup,
        state_dir = %settings.state_dir.display(),
        "starting oz-agent-worker"
    );
    let (logs, results) = spool.leftovers();
    if logs + results > 0 {
        tracing::info!(
            task_logs = logs,
            results,
            "found output and results an earlier worker process did not deliver; sending them once connected"
        );
    }
    backend.sweep_leftovers().await;
    worker::Worker::run(settings, Arc::new(backend), spool, stop).await
}

fn expand_home(path: &std::path::Path) -> std::path::PathBuf {
    match (path.strip_prefix("~"), std::env::var_os("HOME")) {
        (Ok(rest), Some(home)) => std::path::PathBuf::from(home).join(rest),
        _ => path.to_owned(),
    }
}
