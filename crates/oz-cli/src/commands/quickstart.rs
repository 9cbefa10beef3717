//! `oz quickstart`: a server on the embedded defaults and a Direct worker
//! with a temporary workspace root, in this one process; a demo run with
//! the `command` harness, followed to the end.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Args;
use oz_protocol::api::RunState;
use oz_store::{KeyKind, SqliteStore, Store};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::exit;
use super::follow::{Followed, follow};
use crate::client::Client;
use crate::output::Style;

/// Worker id of the quickstart worker.
pub const WORKER_ID: &str = "quickstart";

/// The demo run: a plain shell script, run by the `command` harness.
const DEMO_SCRIPT: &str = r#"echo "Hello from the Oz quickstart."
echo "This is the agent's workspace: $PWD"
echo "It runs as $(id -un) on $(uname -n), with a minimal environment:"
env | cut -d= -f1 | sort | tr '\n' ' '; echo
echo "Done.""#;

#[derive(Debug, Clone, Args)]
pub struct QuickstartArgs {
    /// Keep the server and the worker running after the demo (until Ctrl-C).
    #[arg(long)]
    pub keep: bool,
    /// Address for the server.
    #[arg(long, default_value = "127.0.0.1:8080", value_name = "ADDR")]
    pub listen: SocketAddr,
    /// Data directory of the server (database and admin key).
    #[arg(long, default_value = "oz-data", value_name = "DIR")]
    pub data_dir: PathBuf,
}

pub async fn run(a: QuickstartArgs) -> ExitCode {
    match quickstart(a).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn quickstart(a: QuickstartArgs) -> anyhow::Result<ExitCode> {
    let style = Style::detect();
    let workspace = tempfile::Builder::new()
        .prefix("oz-quickstart-")
        .tempdir()?;

    // 1. The server, on the embedded defaults.
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&a.data_dir.join("oz.db")).await?);
    let admin_key = match oz_server::keys::bootstrap(store.as_ref(), &a.data_dir).await? {
        Some((key, _)) => key,
        None => std::fs::read_to_string(a.data_dir.join(oz_server::keys::ADMIN_KEY_FILE))
            .map(|k| k.trim().to_owned())
            .map_err(|e| {
                anyhow::anyhow!(
                    "{} already holds a server whose admin key file cannot be read ({e}); use another --data-dir",
                    a.data_dir.display()
                )
            })?,
    };
    let listener = tokio::net::TcpListener::bind(a.listen).await.map_err(|e| {
        anyhow::anyhow!(
            "cannot listen on {}: {e}; is another server running? pass --listen 127.0.0.1:0",
            a.listen
        )
    })?;
    let url = format!("http://{}", listener.local_addr()?);
    let shutdown = CancellationToken::new();
    let settings = oz_server::state::ServerSettings {
        public_url: url.clone(),
        default_worker_host: Some(WORKER_ID.to_owned()),
        ..Default::default()
    };
    let state = oz_server::state(store.clone(), settings, shutdown.clone()).await?;
    let server = tokio::spawn(oz_server::serve(listener, state));
    crate::say!(
        "{} oz-server on {url} (data in {})",
        style.bold("1."),
        a.data_dir.display()
    );

    // 2. A Direct worker whose agent is this very binary (`oz agent run`).
    let team = store
        .first_team()
        .await?
        .ok_or_else(|| anyhow::anyhow!("the server has no team"))?;
    let (_, worker_key) = oz_server::keys::create_key(
        store.as_ref(),
        &team.id,
        "quickstart worker",
        KeyKind::Worker,
    )
    .await?;
    let oz = std::env::current_exe()?;
    let config = workspace.path().join("worker.yaml");
    std::fs::write(
        &config,
        format!(
            "state_dir: {}\nbackend:\n  direct:\n    workspace_root: {}\n    oz_path: {}\n",
            yaml_str(&workspace.path().join("worker-state").to_string_lossy()),
            yaml_str(&workspace.path().join("workspaces").to_string_lossy()),
            yaml_str(&oz.to_string_lossy()),
        ),
    )?;
    let cli = <oz_worker::cli::Cli as clap::Parser>::try_parse_from([
        "oz-agent-worker",
        "--worker-id",
        WORKER_ID,
        "--server-url",
        &url,
        "--api-key",
        &worker_key,
        "--config-file",
        &config.to_string_lossy(),
    ])?;
    let worker_stop = CancellationToken::new();
    let worker = tokio::spawn(oz_worker::run_until(cli, worker_stop.clone()));
    crate::say!(
        "{} oz-agent-worker {WORKER_ID:?} (Direct backend, workspaces in {})",
        style.bold("2."),
        workspace.path().join("workspaces").display()
    );

    // 3. The demo run.
    let client = Client::new(&url, &admin_key)?;
    let created = client
        .create_run(&json!({
            "prompt": DEMO_SCRIPT,
            "title": "Quickstart demo",
            "config": {"worker_host": WORKER_ID, "harness": {"type": "command"}, "name": "quickstart"}
        }))
        .await?;
    crate::say!(
        "{} demo run {} (command harness), following it:",
        style.bold("3."),
        created.run_id
    );
    let outcome = follow(&client, &created.run_id, &style, false).await?;

    let code = match &outcome {
        Followed::Ended(run) if run.state == RunState::Succeeded => {
            crate::say!();
            crate::say!("{}", style.bold("The demo run succeeded."));
            exit::OK
        }
        Followed::Ended(run) => {
            let why = run
                .status_message
                .as_ref()
                .map(|s| s.message.clone())
                .unwrap_or_default();
            eprintln!("error: the demo run ended {}: {why}", run.state);
            exit::RUN_FAILED
        }
        Followed::Interrupted => exit::INTERRUPTED,
    };

    let api = format!("{url}/api/v1");
    if a.keep && code == exit::OK {
        crate::say!();
        crate::say!("Both keep running; press Ctrl-C to stop them. In another terminal:");
        crate::say!("  export OZ_API_BASE_URL={api}");
        crate::say!(
            "  export WARP_API_KEY=$(cat {}/admin-api-key)",
            a.data_dir.display()
        );
        crate::say!(
            "  oz agent run-cloud --host {WORKER_ID} --harness command --prompt 'echo hi' --follow"
        );
        crate::say!("  oz run list");
        crate::say!("  oz worker list");
        let _ = tokio::signal::ctrl_c().await;
    } else if code == exit::OK {
        crate::say!("Try next:");
        crate::say!(
            "  oz quickstart --keep          keep the server and worker running, then point oz at them:"
        );
        crate::say!(
            "  export OZ_API_BASE_URL={api} WARP_API_KEY=$(cat {}/admin-api-key)",
            a.data_dir.display()
        );
        crate::say!(
            "  oz agent run-cloud --host {WORKER_ID} --harness command --prompt 'echo hi' --follow"
        );
        crate::say!(
            "  docs/server-operator-guide.md and docs/worker-operator-guide.md for real deployments"
        );
    }

    // Stop the worker first (it drains and reports), then the server.
    worker_stop.cancel();
    match worker.await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => eprintln!("warning: the worker stopped with an error: {e:#}"),
        Err(e) => eprintln!("warning: the worker task failed: {e}"),
    }
    shutdown.cancel();
    if let Ok(Err(e)) = server.await {
        eprintln!("warning: the server stopped with an error: {e:#}");
    }
    Ok(ExitCode::from(code))
}

/// A YAML double-quoted string.
fn yaml_str(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| format!("{s:?}"))
}
