//! The `oz-server` binary: flags, config file, logging, key management
//! subcommands, and the serve loop.
// `deny`, not `forbid`: `sys` is the one module allowed libc calls.
#![deny(unsafe_code)]

mod sys;

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand, ValueEnum};
use oz_server::state::ServerSettings;
use oz_store::{KeyKind, SqliteStore, Store};
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Parser)]
#[command(
    name = "oz-server",
    version,
    args_override_self = true,
    about = "The Oz control plane: queues runs, routes them to self-hosted workers, serves the REST API",
    long_about = "The Oz control plane.\n\n\
        With no arguments it serves on 127.0.0.1:8080 with its data in ./oz-data (SQLite). \
        On first start it creates a team and an admin API key, prints the key once and writes it \
        to <data-dir>/admin-api-key.\n\n\
        Flags beat environment variables, which beat the config file, which beats the defaults."
)]
struct Cli {
    #[command(flatten)]
    serve: ServeArgs,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Args)]
struct ServeArgs {
    /// Address to listen on.
    #[arg(long, env = "OZ_LISTEN", global = true, value_name = "ADDR")]
    listen: Option<SocketAddr>,
    /// Directory for the database and the first admin key.
    #[arg(long, env = "OZ_DATA_DIR", global = true, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Database URL (sqlite://PATH); default: <data-dir>/oz.db.
    #[arg(
        long,
        env = "OZ_DATABASE_URL",
        global = true,
        value_name = "URL",
        hide_env_values = true
    )]
    database_url: Option<String>,
    /// URL clients and agents use to reach this server; default http://<listen>.
    #[arg(long, env = "OZ_PUBLIC_URL", global = true, value_name = "URL")]
    public_url: Option<String>,
    /// Worker id for runs that do not set config.worker_host.
    #[arg(
        long,
        env = "OZ_DEFAULT_WORKER_HOST",
        global = true,
        value_name = "WORKER_ID"
    )]
    default_worker_host: Option<String>,
    /// Fail runs still queued after this long (e.g. 30m); default: never.
    #[arg(long, env = "OZ_QUEUE_TIMEOUT", global = true, value_name = "DURATION")]
    queue_timeout: Option<String>,
    /// How long runs of a disconnected worker wait for it to come back (default 2m).
    #[arg(long, env = "OZ_LEASE_GRACE", global = true, value_name = "DURATION")]
    lease_grace: Option<String>,
    /// How long a cancelled running run waits for the worker's confirmation (default 1m).
    #[arg(
        long,
        env = "OZ_CANCEL_TIMEOUT",
        global = true,
        value_name = "DURATION"
    )]
    cancel_timeout: Option<String>,
    /// Delete the logs of runs that ended longer ago than this (default 7d; 0s keeps them forever).
    #[arg(long, env = "OZ_LOG_RETENTION", global = true, value_name = "DURATION")]
    log_retention: Option<String>,
    /// Threads serving HTTP and worker connections (database work always goes
    /// through one SQLite connection); default: 1 on machines with up to 2
    /// CPUs, else one per CPU.
    #[arg(long, env = "OZ_THREADS", global = true, value_name = "N")]
    threads: Option<usize>,
    /// YAML config file with the same settings (snake_case keys).
    #[arg(long, env = "OZ_CONFIG", global = true, value_name = "PATH")]
    config: Option<PathBuf>,
    /// Log format.
    #[arg(long, env = "OZ_LOG_FORMAT", global = true, value_enum)]
    log_format: Option<LogFormat>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Manage API keys directly in the database (works while the server runs).
    #[command(subcommand)]
    ApiKey(KeyCommand),
}

#[derive(Debug, Subcommand)]
enum KeyCommand {
    /// Create a key and print it once.
    Create {
        /// A name that says what the key is for.
        #[arg(long)]
        name: String,
        /// team: the REST API; worker: only the worker WebSocket; admin: also manages keys.
        #[arg(long, value_enum, default_value_t = KindArg::Team)]
        kind: KindArg,
    },
    /// List keys (never their secrets).
    List,
    /// Revoke a key by id.
    Revoke { id: String },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum KindArg {
    Team,
    Worker,
    Admin,
}

impl From<KindArg> for KeyKind {
    fn from(k: KindArg) -> Self {
        match k {
            KindArg::Team => KeyKind::Team,
            KindArg::Worker => KeyKind::Worker,
            KindArg::Admin => KeyKind::Admin,
        }
    }
}

/// The optional config file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    listen: Option<SocketAddr>,
    data_dir: Option<PathBuf>,
    database_url: Option<String>,
    public_url: Option<String>,
    default_worker_host: Option<String>,
    queue_timeout: Option<String>,
    lease_grace: Option<String>,
    cancel_timeout: Option<String>,
    assign_timeout: Option<String>,
    log_retention: Option<String>,
    log_format: Option<LogFormat>,
    threads: Option<usize>,
}

struct Resolved {
    listen: SocketAddr,
    data_dir: PathBuf,
    database_url: Option<String>,
    settings: ServerSettings,
    log_format: LogFormat,
    /// Runtime threads (resolved: at least 1).
    threads: usize,
}

/// Most runtime threads accepted: more would only cost memory.
const MAX_THREADS: usize = 1024;

/// The default number of runtime threads. On one or two CPUs, a single
/// thread: the server shares them with its SQLite connection thread (and
/// often with a worker and its agents), and a second runtime thread mostly
/// added wake-ups between threads (bench/REPORT.md: about a tenth less
/// server CPU per run with one, runs per second unchanged).
fn default_threads() -> usize {
    match std::thread::available_parallelism().map(usize::from) {
        Ok(n) if n > 2 => n,
        _ => 1,
    }
}

fn duration(
    name: &str,
    v: Option<String>,
    default: Option<Duration>,
) -> anyhow::Result<Option<Duration>> {
    match v {
        None => Ok(default),
        Some(text) => humantime::parse_duration(text.trim())
            .map(Some)
            .with_context(|| {
                format!("{name} {text:?} is not a duration (use forms like 30s, 5m, 1h)")
            }),
    }
}

fn resolve(a: &ServeArgs) -> anyhow::Result<Resolved> {
    let file = match &a.config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read config file {}", path.display()))?;
            if text.trim().is_empty() {
                FileConfig::default()
            } else {
                serde_saphyr::from_str_with_options::<FileConfig>(
                    &text,
                    serde_saphyr::options! { strict_booleans: true },
                )
                .map_err(|e| anyhow::anyhow!("invalid config file {}:\n{e}", path.display()))?
            }
        }
        None => FileConfig::default(),
    };
    let listen = a
        .listen
        .or(file.listen)
        .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 8080)));
    let data_dir = a
        .data_dir
        .clone()
        .or(file.data_dir)
        .unwrap_or_else(|| PathBuf::from("oz-data"));
    let defaults = ServerSettings::default();
    let public_url = a
        .public_url
        .clone()
        .or(file.public_url)
        // Without one, it is derived from the bound address in `serve`
        // (the configured port may be 0).
        .unwrap_or_default()
        .trim_end_matches('/')
        .to_owned();
    let scheme_ok = public_url.starts_with("http://") || public_url.starts_with("https://");
    if !public_url.is_empty() && !scheme_ok {
        bail!("public URL {public_url:?} must start with http:// or https://");
    }
    let settings = ServerSettings {
        public_url,
        default_worker_host: a
            .default_worker_host
            .clone()
            .or(file.default_worker_host)
            .filter(|s| !s.trim().is_empty()),
        queue_timeout: duration(
            "queue_timeout",
            a.queue_timeout.clone().or(file.queue_timeout),
            None,
        )?,
        lease_grace: duration(
            "lease_grace",
            a.lease_grace.clone().or(file.lease_grace),
            Some(defaults.lease_grace),
        )?
        .unwrap_or(defaults.lease_grace),
        cancel_timeout: duration(
            "cancel_timeout",
            a.cancel_timeout.clone().or(file.cancel_timeout),
            Some(defaults.cancel_timeout),
        )?
        .unwrap_or(defaults.cancel_timeout),
        assign_timeout: duration(
            "assign_timeout",
            file.assign_timeout,
            Some(defaults.assign_timeout),
        )?
        .unwrap_or(defaults.assign_timeout),
        // Zero keeps logs forever.
        log_retention: duration(
            "log_retention",
            a.log_retention.clone().or(file.log_retention),
            defaults.log_retention,
        )?
        .filter(|d| !d.is_zero()),
    };
    let threads = match a.threads.or(file.threads) {
        None => default_threads(),
        Some(n) if (1..=MAX_THREADS).contains(&n) => n,
        Some(n) => bail!("threads {n} is out of range: use 1 to {MAX_THREADS}, or leave it unset"),
    };
    Ok(Resolved {
        listen,
        data_dir,
        threads,
        database_url: a.database_url.clone().or(file.database_url),
        settings,
        log_format: a.log_format.or(file.log_format).unwrap_or(LogFormat::Text),
    })
}

async fn open_store(r: &Resolved) -> anyhow::Result<Arc<dyn Store>> {
    let store = match &r.database_url {
        Some(url) if url.starts_with("sqlite:") => SqliteStore::open_url(url).await?,
        Some(url) => bail!(
            "database URL {url:?} is not supported: use sqlite://PATH (PostgreSQL is not built yet)"
        ),
        None => SqliteStore::open(&r.data_dir.join("oz.db")).await?,
    };
    Ok(Arc::new(store))
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("OZ_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,tower_http=warn"));
    let ansi = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .with_target(false);
    match format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Text => builder.init(),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let resolved = match resolve(&cli.serve) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    if cli.command.is_none() {
        init_logging(resolved.log_format);
        sys::keep_freed_memory();
    }
    let mut builder = if resolved.threads == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(resolved.threads);
        b
    };
    let runtime = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Some(Command::ApiKey(cmd)) => key_command(&resolved, cmd).await,
            None => serve(resolved).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(r: Resolved) -> anyhow::Result<()> {
    let store = open_store(&r).await?;
    if let Some((key, path)) = oz_server::keys::bootstrap(store.as_ref(), &r.data_dir).await? {
        println!(
            "Created the first team and its admin API key (shown only this once; also saved to {}):",
            path.display()
        );
        println!();
        println!("    {key}");
        println!();
    }
    let listener = tokio::net::TcpListener::bind(r.listen)
        .await
        .with_context(|| format!("cannot listen on {}", r.listen))?;
    let local = listener.local_addr()?;
    let mut r = r;
    if r.settings.public_url.is_empty() {
        r.settings.public_url = format!("http://{local}");
    }
    let shutdown = CancellationToken::new();
    let state = oz_server::state(store, r.settings.clone(), shutdown.clone()).await?;
    // Installed before the address is announced: a SIGTERM that arrives
    // once a supervisor (or a test) knows we are up must stop us cleanly,
    // not kill us with the default action before a task first runs.
    let signals = shutdown_signals().context("cannot install the SIGTERM and SIGINT handlers")?;
    tokio::spawn(stop_on_signal(signals, shutdown));
    tracing::info!(
        listen = %local,
        public_url = %r.settings.public_url,
        data_dir = %r.data_dir.display(),
        default_worker_host = r.settings.default_worker_host.as_deref().unwrap_or("-"),
        threads = r.threads,
        log_retention = %r
            .settings
            .log_retention
            .map_or_else(|| "forever".to_owned(), |d| humantime::format_duration(d).to_string()),
        version = env!("CARGO_PKG_VERSION"),
        "oz-server listening"
    );
    // Tests and scripts read the bound address from this line.
    println!("oz-server listening on http://{local}");
    oz_server::serve(listener, state).await?;
    tracing::info!("oz-server stopped");
    Ok(())
}

type ShutdownSignals = (tokio::signal::unix::Signal, tokio::signal::unix::Signal);

fn shutdown_signals() -> std::io::Result<ShutdownSignals> {
    use tokio::signal::unix::{SignalKind, signal};
    Ok((
        signal(SignalKind::terminate())?,
        signal(SignalKind::interrupt())?,
    ))
}

async fn stop_on_signal((mut term, mut int): ShutdownSignals, stop: CancellationToken) {
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    tracing::info!("shutting down");
    stop.cancel();
}

async fn key_command(r: &Resolved, cmd: KeyCommand) -> anyhow::Result<()> {
    let store = open_store(r).await?;
    let team = match store.first_team().await? {
        Some(t) => t,
        None => {
            // No server has run on this data yet: bootstrap so keys have a team.
            oz_server::keys::bootstrap(store.as_ref(), &r.data_dir).await?;
            store
                .first_team()
                .await?
                .context("cannot create the first team")?
        }
    };
    match cmd {
        KeyCommand::Create { name, kind } => {
            let (key, secret) =
                oz_server::keys::create_key(store.as_ref(), &team.id, &name, kind.into()).await?;
            println!("{secret}");
            eprintln!(
                "created {} key {} ({}); the secret above is shown only once",
                key.kind.as_str(),
                key.id,
                key.name
            );
        }
        KeyCommand::List => {
            let keys = store.list_api_keys(&team.id).await?;
            println!(
                "{:<38} {:<7} {:<14} {:<28} NAME",
                "ID", "KIND", "PREFIX", "STATUS"
            );
            for k in keys {
                let status = match (&k.revoked_at, &k.last_used_at) {
                    (Some(t), _) => format!("revoked {}", short(t)),
                    (None, Some(t)) => format!("used {}", short(t)),
                    (None, None) => "never used".to_owned(),
                };
                println!(
                    "{:<38} {:<7} {:<14} {:<28} {}",
                    k.id,
                    k.kind.as_str(),
                    k.prefix,
                    status,
                    k.name
                );
            }
        }
        KeyCommand::Revoke { id } => {
            if store
                .revoke_api_key(&team.id, &id, &oz_server::now())
                .await?
            {
                println!("revoked {id}");
            } else {
                bail!("no live API key with id {id:?} (see `oz-server api-key list`)");
            }
        }
    }
    Ok(())
}

fn short(ts: &str) -> &str {
    ts.get(..19).unwrap_or(ts)
}
