//! What every benchmark shares: starting the real binaries, the trivial
//! agent and its timestamps, `/proc` readings, percentiles and targets.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use oz_cli::client::Client;
use oz_protocol::api::{RunItem, RunState};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// The sibling binaries of this one.
pub fn sibling(name: &str) -> anyhow::Result<PathBuf> {
    let me = std::env::current_exe()?;
    let path = me.with_file_name(name);
    if !path.exists() {
        bail!(
            "{} not found; build it first: cargo build --release --workspace",
            path.display()
        );
    }
    Ok(path)
}

/// Wall-clock time (CLOCK_REALTIME) in nanoseconds since the epoch: the
/// clock the agent's timestamp and the server's timestamps use.
pub fn now_ns() -> i128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i128)
        .unwrap_or(0)
}

/// A server timestamp (RFC 3339, microseconds) in nanoseconds.
pub fn ts_ns(ts: &str) -> Option<i128> {
    chrono::DateTime::parse_from_rfc3339(ts)
        .ok()
        .and_then(|t| t.timestamp_nanos_opt())
        .map(i128::from)
}

pub fn ms(ns: i128) -> f64 {
    ns as f64 / 1e6
}

/// With `OZ_BENCH_LOG_DIR` set, the server and workers log at
/// `OZ_BENCH_LOG` (default `info`) as JSON into files there (for timing
/// spans when profiling); otherwise they log warnings nowhere.
fn log_level() -> String {
    match std::env::var_os("OZ_BENCH_LOG_DIR") {
        Some(_) => std::env::var("OZ_BENCH_LOG").unwrap_or_else(|_| "info".into()),
        None => "warn".into(),
    }
}

fn log_file(name: &str) -> anyhow::Result<Stdio> {
    let Some(dir) = std::env::var_os("OZ_BENCH_LOG_DIR") else {
        return Ok(Stdio::null());
    };
    std::fs::create_dir_all(&dir)?;
    let path = Path::new(&dir).join(format!("{name}-{}.log", now_ns()));
    Ok(std::fs::File::create(path)?.into())
}

/// Let the machine settle before a measurement: write back what the last
/// one left dirty (a server's database, thousands of workspaces) and wait a
/// second, so that no measurement pays for the write-back of the one
/// before it.
pub async fn settle() {
    match Command::new("sync").status().await {
        Ok(st) if st.success() => {}
        Ok(st) => eprintln!("warning: sync exited with {st}; measuring without it"),
        Err(e) => eprintln!("warning: cannot run sync ({e}); measuring without it"),
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
}

/// Leave out of `cmd`'s environment every `OZ_` variable of the shell the
/// bench runs in, and the C allocator's (the caller sets what it needs
/// afterwards): an `OZ_DATABASE_URL`, `OZ_CONFIG` or `OZ_THREADS` there
/// would otherwise point the bench's server at another database or
/// configuration, and its numbers would silently depend on who ran it.
fn clean_env(cmd: &mut Command) -> &mut Command {
    for (name, _) in std::env::vars_os() {
        let n = name.to_string_lossy();
        // The C library's allocator settings too: with any of them set the
        // server leaves its own allocator tuning off.
        if n.starts_with("OZ_") || n.starts_with("MALLOC_") || n == "GLIBC_TUNABLES" {
            cmd.env_remove(&name);
        }
    }
    cmd
}

/// A running server with its admin key.
pub struct Server {
    child: Child,
    pub url: String,
    pub key: String,
    _dir: tempfile::TempDir,
}

impl Server {
    /// A server on a fresh database file in a temporary data directory.
    pub async fn start() -> anyhow::Result<Server> {
        Server::start_with(None).await
    }

    /// A server on `database_url` (its `--database-url`), or on a fresh
    /// file in its data directory when `None`.
    pub async fn start_with(database_url: Option<&str>) -> anyhow::Result<Server> {
        let dir = tempfile::tempdir()?;
        let mut cmd = Command::new(sibling("oz-server")?);
        clean_env(&mut cmd);
        if let Some(url) = database_url {
            cmd.arg("--database-url").arg(url);
        }
        let mut child = cmd
            .args(["--listen", "127.0.0.1:0", "--data-dir"])
            .arg(dir.path().join("data"))
            .env("OZ_LOG", log_level())
            .env("OZ_LOG_FORMAT", "json")
            .stdout(Stdio::piped())
            .stderr(log_file("server")?)
            .kill_on_drop(true)
            .spawn()?;
        let stdout = child.stdout.take().context("server stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let url = tokio::time::timeout(Duration::from_secs(30), async {
            while let Ok(Some(l)) = lines.next_line().await {
                if let Some(u) = l.strip_prefix("oz-server listening on ") {
                    return Some(u.trim().to_owned());
                }
            }
            None
        })
        .await
        .ok()
        .flatten()
        .context("the server did not report its address")?;
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let key = std::fs::read_to_string(dir.path().join("data/admin-api-key"))?
            .trim()
            .to_owned();
        Ok(Server {
            child,
            url,
            key,
            _dir: dir,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id().unwrap_or(0)
    }

    pub fn client(&self) -> anyhow::Result<Client> {
        Ok(Client::new(&self.url, &self.key)?)
    }

    /// The worker WebSocket URL for `worker_id`.
    pub fn ws_url(&self, worker_id: &str) -> String {
        let base = self
            .url
            .trim_end_matches('/')
            .replacen("http://", "ws://", 1);
        format!(
            "{base}{}?worker_id={worker_id}",
            oz_protocol::WORKER_WS_PATH
        )
    }
}

/// What a worker runs as its agent (its `oz_path`).
#[derive(Clone, Copy)]
pub enum Agent<'a> {
    /// An executable, e.g. [`Stamps::agent`].
    Exe(&'a Path),
    /// The body of a script run by `/bin/sh`.
    Script(&'a str),
}

/// How to start one `oz-agent-worker`.
pub struct WorkerSpec<'a> {
    pub id: &'a str,
    pub agent: Agent<'a>,
    pub max: u32,
    pub setup: Option<&'a str>,
    pub teardown: Option<&'a str>,
}

impl<'a> WorkerSpec<'a> {
    pub fn new(id: &'a str, agent: Agent<'a>, max: u32) -> Self {
        WorkerSpec {
            id,
            agent,
            max,
            setup: None,
            teardown: None,
        }
    }

    pub fn hooks(mut self, on: bool) -> Self {
        if on {
            self.setup = Some(": setup");
            self.teardown = Some(": teardown");
        }
        self
    }
}

/// A running worker with its own state dir and workspace root.
pub struct Worker {
    child: Child,
    _dir: tempfile::TempDir,
}

impl Worker {
    /// Start the worker; it is not yet connected when this returns (see
    /// [`wait_workers`]).
    pub fn spawn(server: &Server, spec: &WorkerSpec<'_>) -> anyhow::Result<Worker> {
        let dir = tempfile::tempdir()?;
        let oz = match spec.agent {
            Agent::Exe(path) => path.to_path_buf(),
            Agent::Script(body) => {
                let path = dir.path().join("agent.sh");
                write_exe(&path, format!("#!/bin/sh\n{body}\n").as_bytes())?;
                path
            }
        };
        let q = |p: &Path| serde_json::to_string(&p.display().to_string()).unwrap_or_default();
        let mut cfg = format!(
            "max_concurrent_tasks: {}\nstate_dir: {}\nbackend:\n  direct:\n    workspace_root: {}\n    oz_path: {}\n",
            spec.max,
            q(&dir.path().join("state")),
            q(&dir.path().join("ws")),
            q(&oz),
        );
        for (key, value) in [
            ("setup_command", spec.setup),
            ("teardown_command", spec.teardown),
        ] {
            if let Some(v) = value {
                cfg.push_str(&format!("    {key}: {}\n", serde_json::to_string(v)?));
            }
        }
        let cfg_path = dir.path().join("worker.yaml");
        std::fs::write(&cfg_path, cfg)?;
        let child = clean_env(&mut Command::new(sibling("oz-agent-worker")?))
            .args([
                "--worker-id",
                spec.id,
                "--server-url",
                &server.url,
                "--log-format",
                "json",
                "--config-file",
            ])
            .arg(&cfg_path)
            .env("WARP_API_KEY", &server.key)
            .env("OZ_LOG", log_level())
            .stdout(Stdio::null())
            .stderr(log_file(&format!("worker-{}", spec.id))?)
            .kill_on_drop(true)
            .spawn()?;
        Ok(Worker { child, _dir: dir })
    }

    /// Start the worker and wait until the server knows it and its capacity.
    pub async fn start(server: &Server, spec: &WorkerSpec<'_>) -> anyhow::Result<Worker> {
        let client = server.client()?;
        let n = count_workers(&client, spec.id).await?;
        let w = Worker::spawn(server, spec)?;
        wait_workers(&client, spec.id, n + 1).await?;
        Ok(w)
    }

    pub fn pid(&self) -> u32 {
        self.child.id().unwrap_or(0)
    }

    /// SIGTERM, then wait (the worker drains); SIGKILL after 15 s.
    pub async fn stop(mut self) {
        if let Some(pid) = self.child.id() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        if tokio::time::timeout(Duration::from_secs(15), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
    }
}

async fn count_workers(client: &Client, id: &str) -> anyhow::Result<usize> {
    let workers = client.list_workers().await?;
    Ok(workers
        .iter()
        .filter(|w| w["worker_id"] == id && !w["max_concurrent_tasks"].is_null())
        .count())
}

/// Wait until `count` connections of `id` reported their capacity.
pub async fn wait_workers(client: &Client, id: &str, count: usize) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if count_workers(client, id).await? >= count {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    bail!("{count} worker(s) with id {id} did not connect")
}

/// Which trivial agent the benchmarks run (`oz-bench --agent`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum AgentKind {
    /// `bench/agent/probe.c`, statically linked: reads the clock before
    /// anything else, writes it, exits.
    Probe,
    /// `/bin/sh` running `date +%s%N`: the agent of the first four reports,
    /// which spends about 1.3 ms of its own before its timestamp.
    ShDate,
}

impl AgentKind {
    pub fn name(self) -> &'static str {
        match self {
            AgentKind::Probe => "probe",
            AgentKind::ShDate => "sh-date",
        }
    }
}

static AGENT_KIND: OnceLock<AgentKind> = OnceLock::new();

/// Choose the trivial agent for this process (once, before any
/// [`Stamps::new`]); without a call it is [`AgentKind::Probe`].
pub fn set_agent_kind(kind: AgentKind) {
    let _ = AGENT_KIND.set(kind);
}

pub fn agent_kind() -> AgentKind {
    AGENT_KIND.get().copied().unwrap_or(AgentKind::Probe)
}

/// The probe, compiled by build.rs from `agent/probe.c`.
const PROBE: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/oz-bench-probe"));

fn write_exe(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    std::fs::write(path, bytes).with_context(|| format!("cannot write {}", path.display()))?;
    std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .with_context(|| format!("cannot make {} executable", path.display()))
}

/// The trivial agent and the timestamps it leaves: `<dir>/agent` writes
/// the time it started (ns since the epoch) to `<dir>/stamps/$TASK_ID` and
/// exits 0.
pub struct Stamps {
    dir: tempfile::TempDir,
}

impl Stamps {
    pub fn new() -> anyhow::Result<Stamps> {
        let dir = tempfile::tempdir()?;
        let stamps = dir.path().join("stamps");
        std::fs::create_dir(&stamps)?;
        let agent = dir.path().join("agent");
        match agent_kind() {
            AgentKind::Probe => write_exe(&agent, PROBE)?,
            AgentKind::ShDate => write_exe(
                &agent,
                format!(
                    "#!/bin/sh\ndate +%s%N > {}/\"$TASK_ID\"\n",
                    sh_quote(&stamps)
                )
                .as_bytes(),
            )?,
        }
        Ok(Stamps { dir })
    }

    /// The agent executable.
    pub fn agent(&self) -> PathBuf {
        self.dir.path().join("agent")
    }

    /// A script that runs the agent, then `tail` (e.g. `exec sleep 5`).
    pub fn agent_then(&self, tail: &str) -> anyhow::Result<PathBuf> {
        let path = self.dir.path().join("agent-then.sh");
        let body = format!("#!/bin/sh\n{} || exit\n{tail}\n", sh_quote(&self.agent()));
        write_exe(&path, body.as_bytes())?;
        Ok(path)
    }

    /// When the agent of `task_id` started (ns since the epoch).
    pub fn read(&self, task_id: &str) -> Option<i128> {
        std::fs::read_to_string(self.dir.path().join("stamps").join(task_id))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    pub fn count(&self) -> usize {
        std::fs::read_dir(self.dir.path().join("stamps"))
            .map(|d| d.count())
            .unwrap_or(0)
    }
}

/// `path` in single quotes for `/bin/sh`.
fn sh_quote(path: &Path) -> String {
    format!("'{}'", path.display().to_string().replace('\'', "'\\''"))
}

/// The body of `POST /agent/runs` for a run on `worker_id`.
pub fn run_body(worker_id: &str) -> Value {
    json!({"prompt": "bench", "config": {"worker_host": worker_id, "harness": {"type": "command"}}})
}

/// One `POST /agent/runs`: the run id, and when it was sent and answered.
pub struct Submitted {
    pub run_id: String,
    pub sent_ns: i128,
    pub answered_ns: i128,
}

pub async fn submit(client: &Client, worker_id: &str) -> anyhow::Result<Submitted> {
    let sent_ns = now_ns();
    let r = client.create_run(&run_body(worker_id)).await?;
    Ok(Submitted {
        run_id: r.run_id,
        sent_ns,
        answered_ns: now_ns(),
    })
}

/// Submit `n` runs with `parallel` concurrent POSTs; results in
/// submission-index order.
pub async fn submit_many(
    client: &Client,
    worker_id: &str,
    n: usize,
    parallel: usize,
) -> anyhow::Result<Vec<Submitted>> {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..parallel.max(1) {
        let (client, worker_id, next) = (client.clone(), worker_id.to_owned(), next.clone());
        tasks.push(tokio::spawn(async move {
            let mut out = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    return anyhow::Ok(out);
                }
                out.push((i, submit(&client, &worker_id).await?));
            }
        }));
    }
    let mut all = Vec::with_capacity(n);
    for t in tasks {
        all.extend(t.await??);
    }
    all.sort_by_key(|(i, _)| *i);
    Ok(all.into_iter().map(|(_, s)| s).collect())
}

/// Wait for the run's end through the log stream (`event: end` is sent once
/// the run ended and its log is complete): no polling.
pub async fn wait_end(client: &Client, run_id: &str) -> anyhow::Result<()> {
    let path = format!("/agent/runs/{run_id}/logs/stream");
    let mut resp = client.get_stream(&path, &[], None).await?;
    let deadline = Duration::from_secs(120);
    let mut seen = String::new();
    loop {
        match tokio::time::timeout(deadline, resp.chunk()).await {
            Err(_) => bail!("run {run_id} did not end within {}s", deadline.as_secs()),
            Ok(Err(e)) => bail!("log stream of {run_id}: {e}"),
            Ok(Ok(None)) => return Ok(()),
            Ok(Ok(Some(bytes))) => {
                seen.push_str(&String::from_utf8_lossy(&bytes));
                if seen.contains("event: end") {
                    return Ok(());
                }
                // Lines of a chatty agent: keep only the tail.
                if seen.len() > 4096 {
                    seen.drain(..seen.len() - 64);
                }
            }
        }
    }
}

/// Poll (every `every`) until the run is terminal.
pub async fn wait_terminal(
    client: &Client,
    run_id: &str,
    every: Duration,
) -> anyhow::Result<RunItem> {
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let run = client.get_run(run_id).await?;
        if run.state.is_terminal() {
            return Ok(run);
        }
        if Instant::now() > deadline {
            bail!("run {run_id} is still {} after 300 s", run.state);
        }
        tokio::time::sleep(every).await;
    }
}

/// The terminal run's end time: its last update (the terminal transition).
pub fn ended_ns(run: &RunItem) -> Option<i128> {
    run.state.is_terminal().then(|| ts_ns(&run.updated_at))?
}

pub fn is_success(run: &RunItem) -> bool {
    run.state == RunState::Succeeded
}

/// Resident set size and its peak (VmHWM) of a process, in KiB.
pub fn rss_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

pub fn mib(kib: u64) -> f64 {
    round(kib as f64 / 1024.0, 2)
}

/// CPU time (user + system) a process used so far, in seconds.
pub fn cpu_secs(pid: u32) -> f64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let Some(rest) = text.rfind(')').map(|i| &text[i + 1..]) else {
        return 0.0;
    };
    // After the command name: state is field 3, utime 14 and stime 15.
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    (ticks(11) + ticks(12)) as f64 / clk_tck()
}

fn clk_tck() -> f64 {
    static TCK: OnceLock<f64> = OnceLock::new();
    *TCK.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(100.0)
    })
}

pub fn round(v: f64, digits: i32) -> f64 {
    let f = 10f64.powi(digits);
    (v * f).round() / f
}

/// Nearest-rank percentile of sorted values.
pub fn pct(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// n, min, p50, p90, p99, max and mean of a sample (milliseconds).
pub fn summary(mut v: Vec<f64>) -> Value {
    v.retain(|x| x.is_finite());
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return json!({"n": 0});
    }
    let mean = v.iter().sum::<f64>() / v.len() as f64;
    json!({
        "n": v.len(),
        "min": round(v[0], 3),
        "p50": round(pct(&v, 0.50), 3),
        "p90": round(pct(&v, 0.90), 3),
        "p99": round(pct(&v, 0.99), 3),
        "max": round(v[v.len() - 1], 3),
        "mean": round(mean, 3),
    })
}

/// A measured value against its target.
pub fn check(metric: &str, value: f64, unit: &str, at_most: bool, bound: f64) -> Value {
    let met = if at_most {
        value <= bound
    } else {
        value >= bound
    };
    let sign = if at_most { "≤" } else { "≥" };
    json!({
        "metric": metric,
        "value": round(value, 3),
        "unit": unit,
        "target": format!("{sign} {bound} {unit}"),
        "met": met,
    })
}

pub fn machine() -> Value {
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| m.lines().next().map(str::to_owned))
        .unwrap_or_default();
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_default();
    let profile = if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    };
    json!({
        "cpus": cpus,
        "cpu_model": model,
        "memory": mem,
        "build": profile,
        "agent": agent_kind().name(),
        "agent_link": match agent_kind() {
            AgentKind::Probe => env!("OZ_BENCH_PROBE_LINK"),
            AgentKind::ShDate => "script",
        },
        "date": chrono::Utc::now().to_rfc3339(),
    })
}

/// Parse `1,8,32`.
pub fn parse_list(s: &str) -> Result<Vec<usize>, String> {
    s.split(',')
        .map(|p| {
            p.trim()
                .replace('_', "")
                .parse::<usize>()
                .map_err(|e| format!("{p:?}: {e}"))
        })
        .collect()
}
