//! Command-line flags of `oz-agent-worker`, compatible with the official worker.

use std::path::PathBuf;

use clap::{Parser, ValueEnum};

/// Default control-plane WebSocket endpoint of the official service.
pub const DEFAULT_WEBSOCKET_URL: &str = "wss://oz.warp.dev/api/v1/selfhosted/worker/ws";
/// Default server root URL handed to `oz` and to tasks.
pub const DEFAULT_SERVER_ROOT_URL: &str = "https://app.warp.dev";

#[derive(Debug, Clone, Parser)]
#[command(
    name = "oz-agent-worker",
    args_override_self = true,
    version,
    about = "Self-hosted Oz worker: connects to a control plane and runs agent tasks on this host",
    long_about = "Self-hosted Oz worker with the Direct backend.\n\n\
        It holds one WebSocket connection to the control plane, accepts the runs routed to its \
        worker id, and runs each one straight on this host in its own workspace directory, with \
        optional setup and teardown hooks.\n\n\
        Flags beat the config file, and the config file beats the defaults.\n\
        SIGTERM or SIGINT drains: new runs are refused, running tasks are stopped within the \
        grace period and reported, then the worker exits. A second signal stops at once.\n\n\
        Exit status: 0 clean stop, 1 startup or configuration error, 2 bad usage, \
        3 stopped with tasks cut short or results undelivered, 4 forced stop."
)]
pub struct Cli {
    /// Worker API key used to authenticate to the control plane.
    #[arg(long, env = "WARP_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,

    /// Routing id of this worker: runs whose worker host equals it come here.
    #[arg(long)]
    pub worker_id: Option<String>,

    /// YAML config file (see docs/worker-config.md).
    #[arg(long, value_name = "PATH")]
    pub config_file: Option<PathBuf>,

    /// Task backend. Only `direct` is implemented by this worker.
    #[arg(long, value_enum)]
    pub backend: Option<BackendKind>,

    /// Log verbosity.
    #[arg(long, value_enum, default_value_t = LogLevel::Info)]
    pub log_level: LogLevel,

    /// Log format: human-readable text, or one JSON object per line.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Keep each task's workspace after it ends (and skip teardown_command for per-task workspaces).
    #[arg(long)]
    pub no_cleanup: bool,

    /// Direct backend: run every task in this existing directory instead of a per-task workspace.
    #[arg(long, value_name = "DIR")]
    pub target_dir: Option<PathBuf>,

    /// Extra task environment: KEY=VALUE, or a bare KEY to pass this worker's own value through.
    /// Repeatable; a value may contain commas and `=`.
    #[arg(short = 'e', long = "env", value_name = "KEY[=VALUE]")]
    pub env: Vec<String>,

    /// Maximum number of tasks run at once (0 = unlimited). Extra assignments are rejected and stay queued on the server.
    #[arg(long, value_name = "N")]
    pub max_concurrent_tasks: Option<i64>,

    /// How long `oz` stays alive after the conversation ends (e.g. 45m, 0s); passed to the agent.
    #[arg(long, value_name = "DURATION")]
    pub idle_on_complete: Option<String>,

    /// Control plane base URL (http(s)://host:port); derives --websocket-url and --server-root-url.
    #[arg(long, value_name = "URL")]
    pub server_url: Option<String>,

    /// Control-plane WebSocket endpoint.
    #[arg(long, alias = "web-socket-url", value_name = "URL")]
    pub websocket_url: Option<String>,

    /// Server root URL handed to `oz` and to tasks (WARP_SERVER_ROOT_URL).
    #[arg(long, value_name = "URL")]
    pub server_root_url: Option<String>,

    /// Session-sharing server URL forwarded to `oz`.
    #[arg(long, hide = true, value_name = "URL")]
    pub session_sharing_server_url: Option<String>,

    /// Directory for the worker's durable state: task logs not yet acknowledged
    /// by the control plane and results not yet delivered [default: /var/lib/oz/worker-state].
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,

    /// Validate the configuration, print the resolved settings and exit.
    #[arg(long)]
    pub check_config: bool,

    /// Runtime threads (1-1024) [default: 1 with up to 2 CPUs, else one per CPU].
    /// Slow work (removing a large workspace, searching /proc after a cancel)
    /// runs on a separate blocking pool either way.
    #[arg(long, env = "OZ_WORKER_THREADS", value_name = "N",
          value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub threads: Option<u16>,
}

impl Cli {
    /// The runtime threads to start: `--threads`, else the default.
    pub fn runtime_threads(&self) -> usize {
        match self.threads {
            Some(n) => usize::from(n),
            None => default_threads(),
        }
    }
}

/// One runtime thread on up to two CPUs: a worker shares them with its
/// agents (and often with the control plane), and a second thread mostly
/// added wake-ups between threads, about a sixth of the worker's CPU per
/// trivial task (bench/REPORT.md). One per CPU on bigger hosts.
fn default_threads() -> usize {
    match std::thread::available_parallelism().map(usize::from) {
        Ok(n) if n > 2 => n,
        _ => 1,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BackendKind {
    Direct,
    Docker,
    Kubernetes,
    Command,
}

impl BackendKind {
    pub fn as_str(self) -> &'static str {
        match self {
            BackendKind::Direct => "direct",
            BackendKind::Docker => "docker",
            BackendKind::Kubernetes => "kubernetes",
            BackendKind::Command => "command",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogLevel {
    Debug,
    Info,
    Warn,
    Error,
}

impl LogLevel {
    pub fn as_str(self) -> &'static str {
        match self {
            LogLevel::Debug => "debug",
            LogLevel::Info => "info",
            LogLevel::Warn => "warn",
            LogLevel::Error => "error",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}
