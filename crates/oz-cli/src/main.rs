//! The `oz` binary: submit and inspect runs, follow them, run agents.
#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use oz_cli::client::Client;
use oz_cli::commands::{
    self, agent::RunCloudArgs, quickstart::QuickstartArgs, run::ListOptions,
    schedule::ScheduleCommand,
};
use oz_cli::output::Format;
use oz_protocol::api::RunState;

#[derive(Debug, Parser)]
#[command(
    name = "oz",
    version,
    about = "Submit, follow and inspect Oz agent runs; run agents",
    long_about = "Submit, follow and inspect Oz agent runs, and run agents.\n\n\
        The API is found through --api-url / OZ_API_BASE_URL and the key through --api-key / \
        WARP_API_KEY (the official SDK's names).\n\n\
        Exit status: 0 success; 1 a followed run did not succeed; 2 bad usage; \
        3 the API refused the request or could not be reached; 130 following interrupted.",
    args_override_self = true
)]
struct Cli {
    /// API base URL, e.g. http://127.0.0.1:8080/api/v1 (default: $OZ_API_BASE_URL).
    #[arg(long, global = true, value_name = "URL")]
    api_url: Option<String>,
    /// API key (default: $WARP_API_KEY).
    #[arg(long, global = true, value_name = "KEY", hide_env_values = true)]
    api_key: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run agents: in the cloud (run-cloud) or here (run).
    #[command(subcommand)]
    Agent(AgentCommand),
    /// Inspect and cancel runs.
    #[command(subcommand)]
    Run(RunCommand),
    /// Inspect connected workers.
    #[command(subcommand)]
    Worker(WorkerCommand),
    /// Run agents on a cron schedule: create, list, get, update, pause, unpause, delete.
    #[command(subcommand)]
    Schedule(ScheduleCommand),
    /// Start a server and a Direct worker here, run a demo, show what to try next.
    Quickstart(QuickstartArgs),
}

#[derive(Debug, Subcommand)]
enum AgentCommand {
    /// Submit a run to a self-hosted worker.
    RunCloud(Box<RunCloudArgs>),
    /// Run an agent in the current directory (what the worker starts; or
    /// unmanaged with --prompt). Accepts the official worker's arguments;
    /// unknown options are warned about and ignored. See `oz agent run --help`.
    #[command(disable_help_flag = true)]
    Run {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, num_args = 0..)]
        args: Vec<String>,
    },
}

#[derive(Debug, Subcommand)]
enum RunCommand {
    /// List runs, newest first.
    List {
        /// How many runs (1-500).
        #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=500))]
        limit: u32,
        /// Only runs in this state (repeatable): QUEUED, PENDING, CLAIMED, INPROGRESS, SUCCEEDED, FAILED, BLOCKED, ERROR, CANCELLED.
        #[arg(long = "state", value_parser = parse_state)]
        states: Vec<RunState>,
        /// Only runs with this config.name.
        #[arg(long)]
        name: Option<String>,
        /// table for people, json (the API's own) for scripts.
        #[arg(long, value_enum, default_value_t = Format::Table)]
        output: Format,
    },
    /// Show one run.
    Get {
        run_id: String,
        /// table for people, json (the API's own) for scripts.
        #[arg(long, value_enum, default_value_t = Format::Table)]
        output: Format,
    },
    /// Cancel a run.
    Cancel { run_id: String },
    /// Print a run's output (setup, agent, teardown); -f follows it live.
    Logs {
        run_id: String,
        /// Keep printing new output until the run ends (Ctrl-C stops following, not the run).
        #[arg(short = 'f', long)]
        follow: bool,
        /// Only output after this sequence number.
        #[arg(long, value_name = "N")]
        since_seq: Option<u64>,
        /// Only output of this phase.
        #[arg(long, value_parser = ["setup", "agent", "teardown"])]
        phase: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
enum WorkerCommand {
    /// List connected workers.
    List {
        /// table for people, json (the API's own) for scripts.
        #[arg(long, value_enum, default_value_t = Format::Table)]
        output: Format,
    },
}

fn parse_state(s: &str) -> Result<RunState, String> {
    RunState::parse(&s.to_ascii_uppercase()).ok_or_else(|| {
        let all: Vec<&str> = RunState::ALL.iter().map(|s| s.as_str()).collect();
        format!("{s:?} is not a run state ({})", all.join(", "))
    })
}

fn main() -> ExitCode {
    // One crypto provider for every TLS connection (ring, never aws-lc).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = Cli::parse();
    init_logging();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(dispatch(cli))
}

/// Only warnings from the libraries (the quickstart embeds a server and a
/// worker); `OZ_LOG` takes a tracing filter for more.
fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("OZ_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .try_init();
}

async fn dispatch(cli: Cli) -> ExitCode {
    let client = || Client::from_options(cli.api_url.as_deref(), cli.api_key.as_deref());
    macro_rules! with_client {
        ($body:expr) => {
            match client() {
                Ok(c) => $body(c).await,
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::from(2)
                }
            }
        };
    }
    match cli.command {
        Command::Agent(AgentCommand::Run { mut args }) => {
            // Global options given before the runner's own arguments are
            // taken by clap; hand them on.
            let mut pre = Vec::new();
            if let Some(k) = &cli.api_key {
                pre.extend(["--api-key".to_owned(), k.clone()]);
            }
            if let Some(u) = &cli.api_url {
                pre.extend(["--api-url".to_owned(), u.clone()]);
            }
            pre.append(&mut args);
            oz_cli::runner::main(pre).await
        }
        Command::Agent(AgentCommand::RunCloud(a)) => {
            with_client!(|c: Client| async move { commands::agent::run_cloud(&c, *a).await })
        }
        Command::Run(RunCommand::List {
            limit,
            states,
            name,
            output,
        }) => {
            with_client!(|c: Client| async move {
                commands::run::list(
                    &c,
                    ListOptions {
                        limit,
                        states,
                        name,
                        format: output,
                    },
                )
                .await
            })
        }
        Command::Run(RunCommand::Get { run_id, output }) => {
            with_client!(|c: Client| async move { commands::run::get(&c, &run_id, output).await })
        }
        Command::Run(RunCommand::Logs {
            run_id,
            follow,
            since_seq,
            phase,
        }) => {
            with_client!(|c: Client| async move {
                let filter = commands::logs::LogFilter { since_seq, phase };
                commands::logs::logs(&c, &run_id, follow, filter).await
            })
        }
        Command::Run(RunCommand::Cancel { run_id }) => {
            with_client!(|c: Client| async move { commands::run::cancel(&c, &run_id).await })
        }
        Command::Worker(WorkerCommand::List { output }) => {
            with_client!(|c: Client| async move { commands::worker::list(&c, output).await })
        }
        Command::Schedule(cmd) => {
            with_client!(|c: Client| async move { commands::schedule::run(&c, cmd).await })
        }
        Command::Quickstart(a) => commands::quickstart::run(a).await,
    }
}
