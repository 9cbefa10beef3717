//! The YAML config file and its merge with the command line.
//!
//! The schema is the official worker's, strictly: an unknown key, two backend
//! sections, a nameless or blank env entry, or a wrong type is an error that
//! names the key and its line. On top of it the Direct section accepts our
//! `setup_timeout`, `teardown_timeout`, `task_timeout` and `grace_period`.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::{self, IgnoredAny};
use serde::{Deserialize, Deserializer};
use url::Url;

use crate::cli::{BackendKind, Cli, DEFAULT_SERVER_ROOT_URL, DEFAULT_WEBSOCKET_URL};

/// Default root of per-task workspaces.
pub const DEFAULT_WORKSPACE_ROOT: &str = "/var/lib/oz/workspaces";
pub const DEFAULT_SETUP_TIMEOUT: Duration = Duration::from_secs(30 * 60);
pub const DEFAULT_TEARDOWN_TIMEOUT: Duration = Duration::from_secs(5 * 60);
pub const DEFAULT_GRACE_PERIOD: Duration = Duration::from_secs(10);
/// Default directory of the durable state (log spool, result journal).
pub const DEFAULT_STATE_DIR: &str = "/var/lib/oz/worker-state";
/// Default bound of one task's unacknowledged log spool.
pub const DEFAULT_LOG_SPOOL_LIMIT: u64 = 64 * 1024 * 1024;
/// The smallest accepted `log_spool_limit`: the spool keeps a window of
/// lines in flight to the control plane that it never drops, and that
/// window is a quarter of the limit.
pub const MIN_LOG_SPOOL_LIMIT: u64 = 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid config file {path}:\n{message}")]
    Parse { path: PathBuf, message: String },
    #[error("{0}")]
    Invalid(String),
}

/// The config file as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub worker_id: Option<String>,
    pub cleanup: Option<bool>,
    pub max_concurrent_tasks: Option<i64>,
    pub idle_on_complete: Option<IdleValue>,
    /// Durable state: log spool and result journal.
    pub state_dir: Option<PathBuf>,
    /// Bound of one task's unacknowledged log spool.
    pub log_spool_limit: Option<ByteSize>,
    #[serde(default)]
    pub backend: Backend,
}

/// `backend:` holds at most one of the four documented sections.
#[derive(Debug, Default)]
pub enum Backend {
    #[default]
    None,
    Direct(Box<DirectFile>),
    /// A documented backend this worker does not implement.
    Unsupported(BackendKind),
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBackend {
    #[serde(default, deserialize_with = "present")]
    direct: Option<DirectFile>,
    #[serde(default, deserialize_with = "present")]
    docker: Option<IgnoredAny>,
    #[serde(default, deserialize_with = "present")]
    kubernetes: Option<IgnoredAny>,
    #[serde(default, deserialize_with = "present")]
    command: Option<IgnoredAny>,
}

/// A key that is present counts even with a null value (`direct:` alone):
/// the official worker silently fell back to docker in that case.
fn present<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Some(Option::<T>::deserialize(d)?.unwrap_or_default()))
}

impl<'de> Deserialize<'de> for Backend {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = Option::<RawBackend>::deserialize(d)?.unwrap_or_default();
        let mut chosen = Vec::new();
        if raw.direct.is_some() {
            chosen.push("direct");
        }
        if raw.docker.is_some() {
            chosen.push("docker");
        }
        if raw.kubernetes.is_some() {
            chosen.push("kubernetes");
        }
        if raw.command.is_some() {
            chosen.push("command");
        }
        if chosen.len() > 1 {
            return Err(de::Error::custom(format!(
                "at most one backend may be configured, found {}",
                chosen.join(" and ")
            )));
        }
        Ok(match (raw.direct, chosen.first()) {
            (Some(direct), _) => Backend::Direct(Box::new(direct)),
            (None, Some(&"docker")) => Backend::Unsupported(BackendKind::Docker),
            (None, Some(&"kubernetes")) => Backend::Unsupported(BackendKind::Kubernetes),
            (None, Some(&"command")) => Backend::Unsupported(BackendKind::Command),
            _ => Backend::None,
        })
    }
}

/// `backend.direct`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DirectFile {
    pub workspace_root: Option<PathBuf>,
    pub target_dir: Option<PathBuf>,
    pub oz_path: Option<PathBuf>,
    pub setup_command: Option<String>,
    pub teardown_command: Option<String>,
    #[serde(default)]
    pub environment: Vec<EnvEntry>,
    pub setup_timeout: Option<HumanDuration>,
    pub teardown_timeout: Option<HumanDuration>,
    pub task_timeout: Option<HumanDuration>,
    pub grace_period: Option<HumanDuration>,
}

/// `{name, value?}`; a missing or null value inherits the worker's own.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnvEntry {
    pub name: EnvName,
    #[serde(default)]
    pub value: Option<String>,
}

/// An environment variable name: not empty, no whitespace, no `=` or NUL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvName(pub String);

impl<'de> Deserialize<'de> for EnvName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let name = String::deserialize(d)?;
        validate_env_name(&name).map_err(de::Error::custom)?;
        Ok(EnvName(name))
    }
}

fn validate_env_name(name: &str) -> Result<(), String> {
    if name.trim().is_empty() {
        return Err("environment variable name must not be empty".into());
    }
    if name.chars().any(char::is_whitespace) {
        return Err(format!(
            "environment variable name {name:?} must not contain whitespace"
        ));
    }
    if name.contains(['=', '\0']) {
        return Err(format!(
            "environment variable name {name:?} must not contain '=' or NUL"
        ));
    }
    Ok(())
}

/// A duration written the humantime way (`30s`, `5m`, `1h 30m`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HumanDuration(pub Duration);

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        parse_duration(&text)
            .map(HumanDuration)
            .map_err(de::Error::custom)
    }
}

/// A size in bytes: a plain integer (`1048576`), or a number with a unit
/// (`512KiB`, `64MiB`, `1GiB`, `64MB`; `B`, `KiB`, `MiB`, `GiB`, `TiB` are
/// powers of 1024, `KB`, `MB`, `GB`, `TB` powers of 1000; case-insensitive).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteSize(pub u64);

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl de::Visitor<'_> for V {
            type Value = ByteSize;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a size such as 64MiB, 1GiB or a number of bytes")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<ByteSize, E> {
                Ok(ByteSize(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<ByteSize, E> {
                u64::try_from(v)
                    .map(ByteSize)
                    .map_err(|_| E::custom(format!("invalid size {v}: it must not be negative")))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<ByteSize, E> {
                parse_byte_size(v).map(ByteSize).map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

/// Parse a byte size (see [`ByteSize`]).
pub fn parse_byte_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let bad = || {
        format!("invalid size {text:?} (use a number of bytes or forms like 512KiB, 64MiB, 1GiB)")
    };
    let n: u64 = num.parse().map_err(|_| bad())?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kib" => 1 << 10,
        "mib" => 1 << 20,
        "gib" => 1 << 30,
        "tib" => 1 << 40,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "tb" => 1_000_000_000_000,
        _ => return Err(bad()),
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("invalid size {text:?}: too large"))
}

/// `idle_on_complete`: passed to `oz` verbatim, but checked here so a typo
/// fails at startup instead of in every task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdleValue(pub String);

impl<'de> Deserialize<'de> for IdleValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        check_idle(&text).map_err(de::Error::custom)?;
        Ok(IdleValue(text))
    }
}

fn check_idle(text: &str) -> Result<(), String> {
    if text.is_empty() {
        return Ok(());
    }
    parse_duration(text).map(drop)
}

pub fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text.trim())
        .map_err(|e| format!("invalid duration {text:?}: {e} (use forms like 30s, 5m, 1h30m)"))
}

impl FileConfig {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text).map_err(|message| ConfigError::Parse {
            path: path.to_owned(),
            message,
        })
    }

    /// Parse YAML text; the error names the key and its line.
    pub fn parse(text: &str) -> Result<Self, String> {
        if text.trim().is_empty() {
            return Ok(FileConfig::default());
        }
        // YAML 1.2 booleans only, as the official worker (yaml.v3) reads them.
        serde_saphyr::from_str_with_options::<Option<FileConfig>>(
            text,
            serde_saphyr::options! { strict_booleans: true },
        )
        .map(Option::unwrap_or_default)
        .map_err(|e| {
            let mut msg = e.to_string();
            if msg.contains("unknown field `log_level`") {
                msg.push_str("\nhint: the log level is not a config key; use --log-level");
            }
            msg
        })
    }
}

/// Everything the worker needs, resolved from flags, file and defaults.
#[derive(Clone)]
pub struct Settings {
    pub worker_id: String,
    pub api_key: String,
    pub websocket_url: Url,
    pub server_root_url: String,
    pub session_sharing_server_url: Option<String>,
    pub cleanup: bool,
    /// 0 = unlimited.
    pub max_concurrent_tasks: usize,
    pub idle_on_complete: Option<String>,
    /// Durable state: `spool/` (task logs) and `results/` (terminal frames).
    pub state_dir: PathBuf,
    /// Bound, in bytes of spool file, of one task's unacknowledged log.
    pub log_spool_limit: u64,
    pub direct: DirectSettings,
}

impl fmt::Debug for Settings {
    // Hand-written so that the API key can never reach a log line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Settings")
            .field("worker_id", &self.worker_id)
            .field("api_key", &"<redacted>")
            .field("websocket_url", &self.websocket_url.as_str())
            .field("server_root_url", &self.server_root_url)
            .field(
                "session_sharing_server_url",
                &self.session_sharing_server_url,
            )
            .field("cleanup", &self.cleanup)
            .field("max_concurrent_tasks", &self.max_concurrent_tasks)
            .field("idle_on_complete", &self.idle_on_complete)
            .field("state_dir", &self.state_dir)
            .field("log_spool_limit", &self.log_spool_limit)
            .field("direct", &self.direct)
            .finish()
    }
}

#[derive(Clone)]
pub struct DirectSettings {
    pub workspace_root: PathBuf,
    pub target_dir: Option<PathBuf>,
    /// As configured; resolved against PATH when the backend starts.
    pub oz_path: Option<PathBuf>,
    pub setup_command: Option<String>,
    pub teardown_command: Option<String>,
    /// The config `environment` resolved, overlaid by `-e` (CLI wins).
    pub environment: Vec<(String, String)>,
    pub setup_timeout: Duration,
    pub teardown_timeout: Duration,
    pub task_timeout: Option<Duration>,
    pub grace_period: Duration,
}

impl fmt::Debug for DirectSettings {
    // Environment values may be secrets: show names only.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.environment.iter().map(|(k, _)| k.as_str()).collect();
        f.debug_struct("DirectSettings")
            .field("workspace_root", &self.workspace_root)
            .field("target_dir", &self.target_dir)
            .field("oz_path", &self.oz_path)
            .field("setup_command", &self.setup_command.is_some())
            .field("teardown_command", &self.teardown_command.is_some())
            .field("environment", &names)
            .field("setup_timeout", &self.setup_timeout)
            .field("teardown_timeout", &self.teardown_timeout)
            .field("task_timeout", &self.task_timeout)
            .field("grace_period", &self.grace_period)
            .finish()
    }
}

/// Parse one `-e` entry: `KEY=VALUE` (split at the first `=`; commas are
/// part of the value) or a bare `KEY` that takes the worker's own value
/// (empty when unset).
pub fn parse_env_flag(
    entry: &str,
    host: &dyn Fn(&str) -> Option<String>,
) -> Result<(String, String), String> {
    if entry.is_empty() {
        return Err("-e/--env entry must not be empty (use KEY=VALUE or KEY)".into());
    }
    let (key, value) = match entry.split_once('=') {
        Some((k, v)) => (k, v.to_owned()),
        None => (entry, host(entry).unwrap_or_default()),
    };
    if key.is_empty() {
        return Err(format!("-e/--env entry {entry:?} has an empty name"));
    }
    validate_env_name(key).map_err(|e| format!("-e/--env: {e}"))?;
    Ok((key.to_owned(), value))
}

impl Settings {
    /// Merge flags over the file over defaults. `host` reads the worker's
    /// own environment (a parameter so tests need not mutate the process).
    pub fn resolve(
        cli: &Cli,
        file: FileConfig,
        host: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Settings, ConfigError> {
        let invalid = |m: String| ConfigError::Invalid(m);

        let worker_id = cli
            .worker_id
            .clone()
            .filter(|s| !s.is_empty())
            .or(file.worker_id.clone().filter(|s| !s.is_empty()))
            .ok_or_else(|| {
                invalid(
                    "worker-id is required (via --worker-id flag or worker_id in the config file)"
                        .into(),
                )
            })?;
        if worker_id.starts_with("warp") {
            return Err(invalid(format!(
                "invalid worker-id {worker_id:?}: values starting with 'warp' are reserved and cannot be used"
            )));
        }
        if worker_id.trim() != worker_id || worker_id.chars().any(char::is_control) {
            return Err(invalid(format!(
                "invalid worker-id {worker_id:?}: it must not have surrounding whitespace or control characters"
            )));
        }

        let api_key = cli
            .api_key
            .clone()
            .filter(|k| !k.is_empty())
            .ok_or_else(|| {
                invalid("an API key is required: pass --api-key or set WARP_API_KEY".into())
            })?;

        // Backend: the flag, else the file's section. Only direct runs here.
        let direct_file = match (&cli.backend, file.backend) {
            (Some(BackendKind::Direct), Backend::Direct(d)) => *d,
            (Some(BackendKind::Direct), Backend::None) => DirectFile::default(),
            (Some(BackendKind::Direct), Backend::Unsupported(other)) => {
                return Err(invalid(format!(
                    "--backend direct was given but the config file configures backend.{}; \
                     remove that section or change it to backend.direct",
                    other.as_str()
                )));
            }
            (Some(other), _) => {
                return Err(invalid(format!(
                    "the {} backend is not implemented by this worker; use --backend direct",
                    other.as_str()
                )));
            }
            (None, Backend::Direct(d)) => *d,
            (None, Backend::Unsupported(other)) => {
                return Err(invalid(format!(
                    "the {} backend is not implemented by this worker; configure backend.direct instead",
                    other.as_str()
                )));
            }
            (None, Backend::None) => {
                return Err(invalid(
                    "no backend selected: pass --backend direct or add a backend.direct section \
                     to the config file (this worker implements the Direct backend)"
                        .into(),
                ));
            }
        };

        let cleanup = !cli.no_cleanup && file.cleanup.unwrap_or(true);
        // As in the official worker, a CLI 0 means "not given".
        let max = match cli.max_concurrent_tasks.filter(|n| *n != 0) {
            Some(n) => n,
            None => file.max_concurrent_tasks.unwrap_or(0),
        };
        let max_concurrent_tasks = usize::try_from(max.max(0)).unwrap_or(usize::MAX);

        let idle_on_complete = match cli.idle_on_complete.clone().filter(|s| !s.is_empty()) {
            Some(v) => {
                check_idle(&v).map_err(|e| invalid(format!("--idle-on-complete: {e}")))?;
                Some(v)
            }
            None => file.idle_on_complete.map(|v| v.0).filter(|s| !s.is_empty()),
        };

        let (websocket_url, server_root_url) = resolve_urls(cli)?;

        let state_dir = cli
            .state_dir
            .clone()
            .filter(|p| !p.as_os_str().is_empty())
            .or(file.state_dir.filter(|p| !p.as_os_str().is_empty()))
            .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR));
        let log_spool_limit = file
            .log_spool_limit
            .map_or(DEFAULT_LOG_SPOOL_LIMIT, |b| b.0);
        if log_spool_limit < MIN_LOG_SPOOL_LIMIT {
            return Err(invalid(format!(
                "log_spool_limit {log_spool_limit} is too small: it must be at least 1MiB"
            )));
        }

        let mut environment: Vec<(String, String)> = Vec::new();
        for entry in &direct_file.environment {
            let value = match &entry.value {
                Some(v) => v.clone(),
                None => host(&entry.name.0).unwrap_or_default(),
            };
            set_env(&mut environment, entry.name.0.clone(), value);
        }
        for raw in &cli.env {
            let (k, v) = parse_env_flag(raw, host).map_err(invalid)?;
            set_env(&mut environment, k, v);
        }

        // The worker's own key must never reach a task or a hook, not even
        // when asked for by name (`-e WARP_API_KEY` or a value-less entry).
        if let Some((name, _)) = environment.iter().find(|(_, v)| *v == api_key) {
            return Err(invalid(format!(
                "refusing to pass the worker's API key to tasks as {name}: tasks get a run-scoped key from the control plane; remove {name} from -e/--env or backend.direct.environment"
            )));
        }

        let target_dir = cli.target_dir.clone().or(direct_file.target_dir);
        let workspace_root = direct_file
            .workspace_root
            .unwrap_or_else(|| PathBuf::from(DEFAULT_WORKSPACE_ROOT));

        let non_blank = |s: Option<String>| s.filter(|c| !c.trim().is_empty());
        Ok(Settings {
            worker_id,
            api_key,
            websocket_url,
            server_root_url,
            session_sharing_server_url: cli
                .session_sharing_server_url
                .clone()
                .filter(|s| !s.is_empty()),
            cleanup,
            max_concurrent_tasks,
            idle_on_complete,
            state_dir,
            log_spool_limit,
            direct: DirectSettings {
                workspace_root,
                target_dir,
                oz_path: direct_file.oz_path,
                setup_command: non_blank(direct_file.setup_command),
                teardown_command: non_blank(direct_file.teardown_command),
                environment,
                setup_timeout: direct_file
                    .setup_timeout
                    .map_or(DEFAULT_SETUP_TIMEOUT, |d| d.0),
                teardown_timeout: direct_file
                    .teardown_timeout
                    .map_or(DEFAULT_TEARDOWN_TIMEOUT, |d| d.0),
                task_timeout: direct_file
                    .task_timeout
                    .map(|d| d.0)
                    .filter(|d| !d.is_zero()),
                grace_period: direct_file
                    .grace_period
                    .map_or(DEFAULT_GRACE_PERIOD, |d| d.0),
            },
        })
    }
}

/// Insert or replace in place (the last value of a key wins, first position kept).
fn set_env(env: &mut Vec<(String, String)>, key: String, value: String) {
    match env.iter_mut().find(|(k, _)| *k == key) {
        Some(slot) => slot.1 = value,
        None => env.push((key, value)),
    }
}

fn resolve_urls(cli: &Cli) -> Result<(Url, String), ConfigError> {
    let invalid = |m: String| ConfigError::Invalid(m);
    let (mut ws, mut root) = (
        DEFAULT_WEBSOCKET_URL.to_owned(),
        DEFAULT_SERVER_ROOT_URL.to_owned(),
    );
    if let Some(base) = &cli.server_url {
        let url = Url::parse(base)
            .map_err(|e| invalid(format!("--server-url {base:?} is not a URL: {e}")))?;
        let ws_scheme = match url.scheme() {
            "http" => "ws",
            "https" => "wss",
            other => {
                return Err(invalid(format!(
                    "--server-url {base:?} must start with http:// or https://, not {other}://"
                )));
            }
        };
        let host = url
            .host_str()
            .ok_or_else(|| invalid(format!("--server-url {base:?} has no host")))?;
        let authority = match url.port() {
            Some(p) => format!("{host}:{p}"),
            None => host.to_owned(),
        };
        let path = url.path().trim_end_matches('/');
        root = format!("{}://{authority}{path}", url.scheme());
        ws = format!(
            "{ws_scheme}://{authority}{path}{}",
            oz_protocol::WORKER_WS_PATH
        );
    }
    if let Some(explicit) = &cli.websocket_url {
        ws = explicit.clone();
    }
    if let Some(explicit) = &cli.server_root_url {
        root = explicit.clone();
    }
    let ws_url = Url::parse(&ws)
        .map_err(|e| invalid(format!("--websocket-url {ws:?} is not a URL: {e}")))?;
    if !matches!(ws_url.scheme(), "ws" | "wss") {
        return Err(invalid(format!(
            "--websocket-url {ws:?} must start with ws:// or wss://"
        )));
    }
    Ok((ws_url, root))
}

/// The WebSocket URL with `worker_id` set (replacing any given one).
pub fn connect_url(base: &Url, worker_id: &str) -> Url {
    let others: Vec<(String, String)> = base
        .query_pairs()
        .filter(|(k, _)| k != "worker_id")
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    let mut url = base.clone();
    {
        let mut q = url.query_pairs_mut();
        q.clear();
        for (k, v) in &others {
            q.append_pair(k, v);
        }
        q.append_pair("worker_id", worker_id);
    }
    url
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn cli(args: &[&str]) -> Cli {
        let mut argv = vec!["oz-agent-worker"];
        argv.extend_from_slice(args);
        Cli::try_parse_from(argv).expect("valid argv")
    }

    fn no_host(_: &str) -> Option<String> {
        None
    }

    fn resolve(args: &[&str], yaml: &str) -> Result<Settings, ConfigError> {
        let file = FileConfig::parse(yaml).map_err(ConfigError::Invalid)?;
        Settings::resolve(&cli(args), file, &no_host)
    }

    fn err(args: &[&str], yaml: &str) -> String {
        match resolve(args, yaml) {
            Ok(s) => panic!("expected an error, got {s:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn full_documented_schema_parses() {
        let yaml = r#"
worker_id: "host-a"
cleanup: false
max_concurrent_tasks: 4
idle_on_complete: "10m"
state_dir: /srv/oz-state
log_spool_limit: 16MiB
backend:
  direct:
    workspace_root: /srv/oz
    oz_path: /usr/local/bin/oz
    setup_command: "git clone x repo"
    teardown_command: "echo bye"
    environment:
      - name: A
        value: "1"
      - name: B
    setup_timeout: 2m
    teardown_timeout: 30s
    task_timeout: 1h
    grace_period: 3s
"#;
        let s = resolve(&["--api-key", "k"], yaml).unwrap();
        assert_eq!(s.worker_id, "host-a");
        assert!(!s.cleanup);
        assert_eq!(s.max_concurrent_tasks, 4);
        assert_eq!(s.idle_on_complete.as_deref(), Some("10m"));
        assert_eq!(s.state_dir, PathBuf::from("/srv/oz-state"));
        assert_eq!(s.log_spool_limit, 16 << 20);
        assert_eq!(s.direct.workspace_root, PathBuf::from("/srv/oz"));
        assert_eq!(s.direct.oz_path, Some(PathBuf::from("/usr/local/bin/oz")));
        assert_eq!(
            s.direct.environment,
            vec![("A".into(), "1".into()), ("B".into(), "".into())]
        );
        assert_eq!(s.direct.setup_timeout, Duration::from_secs(120));
        assert_eq!(s.direct.teardown_timeout, Duration::from_secs(30));
        assert_eq!(s.direct.task_timeout, Some(Duration::from_secs(3600)));
        assert_eq!(s.direct.grace_period, Duration::from_secs(3));
    }

    #[test]
    fn defaults() {
        let s = resolve(
            &["--api-key", "k", "--worker-id", "w", "--backend", "direct"],
            "",
        )
        .unwrap();
        assert!(s.cleanup);
        assert_eq!(s.max_concurrent_tasks, 0);
        assert_eq!(
            s.direct.workspace_root,
            PathBuf::from(DEFAULT_WORKSPACE_ROOT)
        );
        assert_eq!(s.direct.setup_timeout, DEFAULT_SETUP_TIMEOUT);
        assert_eq!(s.direct.teardown_timeout, DEFAULT_TEARDOWN_TIMEOUT);
        assert_eq!(s.direct.grace_period, DEFAULT_GRACE_PERIOD);
        assert_eq!(s.direct.task_timeout, None);
        assert_eq!(s.websocket_url.as_str(), DEFAULT_WEBSOCKET_URL);
        assert_eq!(s.server_root_url, DEFAULT_SERVER_ROOT_URL);
        assert_eq!(s.state_dir, PathBuf::from(DEFAULT_STATE_DIR));
        assert_eq!(s.log_spool_limit, DEFAULT_LOG_SPOOL_LIMIT);
    }

    #[test]
    fn cli_beats_file_beats_default() {
        let yaml = "worker_id: file-id\nmax_concurrent_tasks: 2\nidle_on_complete: 5m\nbackend:\n  direct:\n    target_dir: /from/file\n    environment:\n      - {name: A, value: file}\n";
        let s = resolve(
            &[
                "--api-key",
                "k",
                "--worker-id",
                "cli-id",
                "--max-concurrent-tasks",
                "7",
                "--idle-on-complete",
                "0s",
                "--target-dir",
                "/from/cli",
                "-e",
                "A=cli",
                "--no-cleanup",
            ],
            yaml,
        )
        .unwrap();
        assert_eq!(s.worker_id, "cli-id");
        assert_eq!(s.max_concurrent_tasks, 7);
        assert_eq!(s.idle_on_complete.as_deref(), Some("0s"));
        assert_eq!(s.direct.target_dir, Some(PathBuf::from("/from/cli")));
        assert_eq!(s.direct.environment, vec![("A".into(), "cli".into())]);
        assert!(!s.cleanup);
        // Zero on the command line means "not given", as in the official worker.
        let s = resolve(&["--api-key", "k", "--max-concurrent-tasks", "0"], yaml).unwrap();
        assert_eq!(s.max_concurrent_tasks, 2);
        assert_eq!(s.worker_id, "file-id");
        assert_eq!(s.idle_on_complete.as_deref(), Some("5m"));
    }

    #[test]
    fn warp_prefixed_ids_are_refused_from_flag_and_file() {
        assert!(
            err(
                &[
                    "--api-key",
                    "k",
                    "--worker-id",
                    "warp-1",
                    "--backend",
                    "direct"
                ],
                ""
            )
            .contains("reserved")
        );
        assert!(
            err(
                &["--api-key", "k"],
                "worker_id: warpy\nbackend: {direct: {}}\n"
            )
            .contains("reserved")
        );
    }

    #[test]
    fn missing_worker_id_or_key() {
        assert!(
            err(&["--api-key", "k", "--backend", "direct"], "").contains("worker-id is required")
        );
        assert!(
            err(&["--worker-id", "w", "--backend", "direct"], "").contains("API key is required")
        );
    }

    #[test]
    fn unknown_key_names_key_and_line() {
        let e = FileConfig::parse("worker_id: a\nbackend:\n  direct:\n    workspace_rot: /x\n")
            .unwrap_err();
        assert!(e.contains("workspace_rot"), "{e}");
        assert!(e.contains("line 4"), "{e}");
        let e = FileConfig::parse("worker_id: a\nlog_level: debug\n").unwrap_err();
        assert!(e.contains("line 2") && e.contains("--log-level"), "{e}");
    }

    #[test]
    fn two_backends_are_refused_with_line() {
        let e =
            FileConfig::parse("worker_id: a\nbackend:\n  direct: {}\n  docker: {}\n").unwrap_err();
        assert!(e.contains("at most one backend"), "{e}");
        assert!(e.contains("direct and docker"), "{e}");
        assert!(e.contains("line 3"), "{e}");
    }

    #[test]
    fn env_entries_must_have_a_clean_name() {
        for (yaml, line) in [
            (
                "backend:\n  direct:\n    environment:\n      - value: x\n",
                "line 4",
            ),
            (
                "backend:\n  direct:\n    environment:\n      - name: \"  \"\n",
                "line 4",
            ),
            (
                "backend:\n  direct:\n    environment:\n      - name: A\n      - name: \"B C\"\n",
                "line 5",
            ),
            (
                "backend:\n  direct:\n    environment:\n      - name: \"\"\n",
                "line 4",
            ),
        ] {
            let e = FileConfig::parse(yaml).unwrap_err();
            assert!(e.contains(line), "{yaml}: {e}");
        }
    }

    #[test]
    fn wrong_types_are_refused_with_line() {
        for (yaml, line) in [
            ("max_concurrent_tasks: lots\n", "line 1"),
            ("worker_id: a\ncleanup: maybe\n", "line 2"),
            ("backend:\n  direct:\n    environment: A=1\n", "line 3"),
            ("backend:\n  direct:\n    setup_timeout: soon\n", "line 3"),
            ("idle_on_complete: forever\n", "line 1"),
            ("backend:\n  direct:\n    workspace_root: [a]\n", "line 3"),
        ] {
            let e = FileConfig::parse(yaml).unwrap_err();
            assert!(e.contains(line), "{yaml}: {e}");
        }
    }

    #[test]
    fn only_yaml_1_2_booleans() {
        let e = FileConfig::parse("cleanup: yes\n").unwrap_err();
        assert!(e.contains("line 1"), "{e}");
        let f = FileConfig::parse("worker_id: no\ncleanup: false\n").unwrap();
        assert_eq!(f.worker_id.as_deref(), Some("no"));
    }

    #[test]
    fn null_direct_section_selects_direct() {
        let s = resolve(
            &["--api-key", "k", "--worker-id", "w"],
            "backend:\n  direct:\n",
        )
        .unwrap();
        assert_eq!(
            s.direct.workspace_root,
            PathBuf::from(DEFAULT_WORKSPACE_ROOT)
        );
    }

    #[test]
    fn unsupported_and_missing_backends() {
        assert!(err(&["--api-key", "k", "--worker-id", "w"], "").contains("no backend selected"));
        assert!(
            err(
                &["--api-key", "k", "--worker-id", "w", "--backend", "docker"],
                ""
            )
            .contains("not implemented")
        );
        assert!(
            err(
                &["--api-key", "k", "--worker-id", "w"],
                "backend:\n  kubernetes: {namespace: x}\n"
            )
            .contains("kubernetes")
        );
        assert!(
            err(
                &["--api-key", "k", "--worker-id", "w", "--backend", "direct"],
                "backend:\n  docker: {}\n"
            )
            .contains("backend.docker")
        );
    }

    #[test]
    fn repeated_flags_last_wins_but_env_accumulates() {
        let c = cli(&[
            "--worker-id",
            "a",
            "--worker-id",
            "b",
            "-e",
            "X=1",
            "-e",
            "Y=2",
        ]);
        assert_eq!(c.worker_id.as_deref(), Some("b"));
        assert_eq!(c.env, vec!["X=1", "Y=2"]);
    }

    #[test]
    fn the_worker_key_cannot_be_passed_to_tasks() {
        let host = |k: &str| (k == "WARP_API_KEY").then(|| "wk-secret".to_owned());
        let file = FileConfig::parse("worker_id: w\nbackend:\n  direct: {}\n").unwrap();
        let e = Settings::resolve(
            &cli(&["--api-key", "wk-secret", "-e", "WARP_API_KEY"]),
            file,
            &host,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("refusing") && e.contains("WARP_API_KEY"), "{e}");
        assert!(!e.contains("wk-secret"), "{e}");
    }

    #[test]
    fn env_flags() {
        let host = |k: &str| (k == "HOSTVAR").then(|| "from-host".to_owned());
        assert_eq!(
            parse_env_flag("A=x,y", &host).unwrap(),
            ("A".into(), "x,y".into())
        );
        assert_eq!(
            parse_env_flag("A=b=c", &host).unwrap(),
            ("A".into(), "b=c".into())
        );
        assert_eq!(
            parse_env_flag("A=", &host).unwrap(),
            ("A".into(), "".into())
        );
        assert_eq!(
            parse_env_flag("HOSTVAR", &host).unwrap(),
            ("HOSTVAR".into(), "from-host".into())
        );
        assert_eq!(
            parse_env_flag("UNSET", &host).unwrap(),
            ("UNSET".into(), "".into())
        );
        assert!(parse_env_flag("", &host).is_err());
        assert!(parse_env_flag("=v", &host).is_err());
        assert!(parse_env_flag("A B=v", &host).is_err());
        assert!(parse_env_flag("A\tB", &host).is_err());
    }

    #[test]
    fn file_env_inherits_from_host_and_cli_overrides() {
        let host = |k: &str| (k == "TOKEN").then(|| "host-token".to_owned());
        let file = FileConfig::parse(
            "worker_id: w\nbackend:\n  direct:\n    environment:\n      - name: TOKEN\n      - name: MISSING\n        value: ~\n      - name: X\n        value: a\n      - name: X\n        value: b\n",
        )
        .unwrap();
        let s =
            Settings::resolve(&cli(&["--api-key", "k", "-e", "MISSING=set"]), file, &host).unwrap();
        assert_eq!(
            s.direct.environment,
            vec![
                ("TOKEN".into(), "host-token".into()),
                ("MISSING".into(), "set".into()),
                ("X".into(), "b".into()),
            ]
        );
    }

    #[test]
    fn server_url_derives_both_urls_and_explicit_flags_win() {
        let s = resolve(
            &[
                "--api-key",
                "k",
                "--worker-id",
                "w",
                "--backend",
                "direct",
                "--server-url",
                "http://127.0.0.1:8080",
            ],
            "",
        )
        .unwrap();
        assert_eq!(
            s.websocket_url.as_str(),
            "ws://127.0.0.1:8080/api/v1/selfhosted/worker/ws"
        );
        assert_eq!(s.server_root_url, "http://127.0.0.1:8080");
        let s = resolve(
            &[
                "--api-key",
                "k",
                "--worker-id",
                "w",
                "--backend",
                "direct",
                "--server-url",
                "https://oz.example.com/",
                "--server-root-url",
                "https://ui.example.com",
            ],
            "",
        )
        .unwrap();
        assert_eq!(
            s.websocket_url.as_str(),
            "wss://oz.example.com/api/v1/selfhosted/worker/ws"
        );
        assert_eq!(s.server_root_url, "https://ui.example.com");
        let s = resolve(
            &[
                "--api-key",
                "k",
                "--worker-id",
                "w",
                "--backend",
                "direct",
                "--web-socket-url",
                "ws://h:1/x",
            ],
            "",
        )
        .unwrap();
        assert_eq!(s.websocket_url.as_str(), "ws://h:1/x");
        assert!(
            err(
                &[
                    "--api-key",
                    "k",
                    "--worker-id",
                    "w",
                    "--backend",
                    "direct",
                    "--server-url",
                    "ftp://x"
                ],
                ""
            )
            .contains("http://")
        );
        assert!(
            err(
                &[
                    "--api-key",
                    "k",
                    "--worker-id",
                    "w",
                    "--backend",
                    "direct",
                    "--websocket-url",
                    "http://x"
                ],
                ""
            )
            .contains("ws://")
        );
    }

    #[test]
    fn connect_url_sets_worker_id() {
        let base = Url::parse("ws://h/api/v1/selfhosted/worker/ws?worker_id=old&x=1").unwrap();
        let url = connect_url(&base, "a b");
        assert_eq!(
            url.as_str(),
            "ws://h/api/v1/selfhosted/worker/ws?x=1&worker_id=a+b"
        );
    }

    #[test]
    fn debug_output_hides_secrets() {
        let s = resolve(
            &[
                "--api-key",
                "sekrit-key",
                "--worker-id",
                "w",
                "--backend",
                "direct",
                "-e",
                "TOKEN=sekrit-value",
            ],
            "",
        )
        .unwrap();
        let dbg = format!("{s:?}");
        assert!(!dbg.contains("sekrit"), "{dbg}");
        assert!(dbg.contains("TOKEN"));
    }

    #[test]
    fn state_dir_flag_beats_file_beats_default() {
        let yaml = "worker_id: w\nstate_dir: /from/file\nbackend:\n  direct: {}\n";
        let s = resolve(&["--api-key", "k"], yaml).unwrap();
        assert_eq!(s.state_dir, PathBuf::from("/from/file"));
        let s = resolve(&["--api-key", "k", "--state-dir", "/from/cli"], yaml).unwrap();
        assert_eq!(s.state_dir, PathBuf::from("/from/cli"));
        // An empty value in the file counts as not given.
        let s = resolve(
            &["--api-key", "k"],
            "worker_id: w\nstate_dir: \"\"\nbackend: {direct: {}}\n",
        )
        .unwrap();
        assert_eq!(s.state_dir, PathBuf::from(DEFAULT_STATE_DIR));
    }

    #[test]
    fn log_spool_limit_accepts_sizes_and_plain_bytes() {
        for (yaml, want) in [
            ("log_spool_limit: 64MiB", 64 << 20),
            ("log_spool_limit: \"1 GiB\"", 1 << 30),
            ("log_spool_limit: 2097152", 2 << 20),
            ("log_spool_limit: 5MB", 5_000_000),
            ("log_spool_limit: 2048kib", 2 << 20),
        ] {
            let s = resolve(
                &["--api-key", "k"],
                &format!("worker_id: w\n{yaml}\nbackend: {{direct: {{}}}}\n"),
            )
            .unwrap();
            assert_eq!(s.log_spool_limit, want, "{yaml}");
        }
    }

    #[test]
    fn bad_log_spool_limits_are_refused() {
        for (yaml, line) in [
            ("worker_id: w\nlog_spool_limit: lots\n", "line 2"),
            ("log_spool_limit: 12XB\n", "line 1"),
            ("log_spool_limit: -5\n", "line 1"),
            ("log_spool_limit: [1]\n", "line 1"),
        ] {
            let e = FileConfig::parse(yaml).unwrap_err();
            assert!(e.contains(line), "{yaml}: {e}");
        }
        let e = err(
            &["--api-key", "k"],
            "worker_id: w\nlog_spool_limit: 64KiB\nbackend: {direct: {}}\n",
        );
        assert!(e.contains("at least 1MiB"), "{e}");
        assert_eq!(parse_byte_size("1B"), Ok(1));
        assert!(
            parse_byte_size("99999999999TiB")
                .unwrap_err()
                .contains("too large")
        );
        assert!(parse_byte_size("").is_err());
        assert!(parse_byte_size("1.5GiB").is_err());
    }
}
