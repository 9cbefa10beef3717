//! Support for the `oz` CLI tests: the real `oz-server` and
//! `oz-agent-worker` binaries (beside `oz` in the target directory), and a
//! way to run the real `oz` against them.
#![allow(dead_code)]

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use oz_cli::client::Client;
use oz_protocol::api::{RunItem, RunState};
use serde_json::Value;
use tempfile::TempDir;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::time::{Instant, sleep, timeout};

/// Upper bound for anything a test waits on.
pub const WAIT: Duration = Duration::from_secs(60);
const POLL: Duration = Duration::from_millis(100);

/// The `oz` binary under test.
pub fn oz_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_oz"))
}

/// Another package's binary: it sits beside `oz` in the target directory.
fn sibling(name: &str) -> PathBuf {
    let path = oz_bin().with_file_name(name);
    assert!(
        path.is_file(),
        "{} is missing: build them first: cargo build --workspace",
        path.display()
    );
    path
}

pub fn server_bin() -> PathBuf {
    sibling("oz-server")
}

pub fn worker_bin() -> PathBuf {
    sibling("oz-agent-worker")
}

/// Poll `f` until it yields `Some`, or panic after `limit`.
pub async fn wait_for<T, F, Fut>(what: &str, limit: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for: {what}"
        );
        sleep(POLL).await;
    }
}

/// Environment variables of the host that would change what the programs
/// under test do; every spawned process starts without them.
const SCRUBBED: &[&str] = &[
    "OZ_API_BASE_URL",
    "WARP_API_KEY",
    "OZ_LOG",
    "NO_COLOR",
    "COLUMNS",
    "OZ_DEFAULT_HARNESS",
    "OZ_LISTEN",
    "OZ_DATA_DIR",
    "OZ_DATABASE_URL",
    "OZ_PUBLIC_URL",
    "OZ_DEFAULT_WORKER_HOST",
    "OZ_QUEUE_TIMEOUT",
    "OZ_LEASE_GRACE",
    "OZ_CANCEL_TIMEOUT",
    "OZ_CONFIG",
    "OZ_LOG_FORMAT",
    "RUST_BACKTRACE",
    "RUST_LIB_BACKTRACE",
];

fn scrub(cmd: &mut Command) {
    for v in SCRUBBED {
        cmd.env_remove(v);
    }
}

// ---- oz ---------------------------------------------------------------------

/// What a finished `oz` said.
#[derive(Debug)]
pub struct Out {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Out {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}):\n{self}"))
    }

    #[track_caller]
    pub fn assert_code(&self, code: i32) -> &Self {
        assert_eq!(self.code, code, "unexpected exit status:\n{self}");
        self
    }
}

impl std::fmt::Display for Out {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

/// `oz <args>` with a clean environment (no API URL or key unless given),
/// a fixed table width and no colour; killed if dropped.
pub fn oz_command(args: &[&str]) -> Command {
    let mut cmd = Command::new(oz_bin());
    scrub(&mut cmd);
    cmd.args(args)
        .env("COLUMNS", "200")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    cmd
}

/// Run a prepared command to the end (bounded).
pub async fn output(mut cmd: Command) -> Out {
    let out = timeout(WAIT, cmd.output())
        .await
        .unwrap_or_else(|_| panic!("{cmd:?} did not finish within {WAIT:?}"))
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    Out {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// `oz <args>` with no server configured.
pub async fn oz_bare(args: &[&str]) -> Out {
    output(oz_command(args)).await
}

// ---- server -----------------------------------------------------------------

/// A real `oz-server` on 127.0.0.1:0 with its own data directory.
pub struct Server {
    child: Child,
    /// `127.0.0.1:PORT` as bound.
    pub addr: String,
    pub admin_key: String,
    pub dir: TempDir,
    log: PathBuf,
}

impl Server {
    pub async fn start() -> Server {
        let dir = tempfile::tempdir().expect("tempdir");
        let data = dir.path().join("data");
        let log = dir.path().join("server.log");
        let log_file = std::fs::File::create(&log).expect("server log");
        let mut cmd = Command::new(server_bin());
        scrub(&mut cmd);
        cmd.arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--data-dir")
            .arg(&data)
            .env("OZ_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log_file))
            .kill_on_drop(true);
        let mut child = cmd.spawn().expect("spawn oz-server");
        let mut lines = BufReader::new(child.stdout.take().expect("server stdout")).lines();
        let read = async {
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(a) = line.trim().strip_prefix("oz-server listening on http://") {
                    return Some(a.to_owned());
                }
            }
            None
        };
        let addr = match timeout(WAIT, read).await {
            Ok(Some(a)) => a,
            other => panic!(
                "oz-server did not say where it listens ({}); log:\n{}",
                if other.is_err() {
                    "timeout"
                } else {
                    "it exited"
                },
                std::fs::read_to_string(&log).unwrap_or_default()
            ),
        };
        // Keep reading stdout so the server never blocks writing to it.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let admin_key = std::fs::read_to_string(data.join("admin-api-key"))
            .expect("the server saved its admin key")
            .trim()
            .to_owned();
        Server {
            child,
            addr,
            admin_key,
            dir,
            log,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn api_url(&self) -> String {
        format!("{}/api/v1", self.url())
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The library's client (the REST client `oz` itself uses).
    pub fn client(&self) -> Client {
        // reqwest is built without a default TLS crypto provider; `oz`
        // installs ring, and so do we.
        let _ = rustls::crypto::ring::default_provider().install_default();
        Client::new(&self.url(), &self.admin_key).expect("client")
    }

    /// `oz <args>` pointed at this server with the admin key (by environment).
    pub fn oz_command(&self, args: &[&str]) -> Command {
        let mut cmd = oz_command(args);
        cmd.env("OZ_API_BASE_URL", self.api_url())
            .env("WARP_API_KEY", &self.admin_key);
        cmd
    }

    pub async fn oz(&self, args: &[&str]) -> Out {
        output(self.oz_command(args)).await
    }

    /// Submit with `oz agent run-cloud … --output json`; returns the run id.
    pub async fn submit(&self, args: &[&str]) -> String {
        let mut all = vec!["agent", "run-cloud", "--output", "json"];
        all.extend_from_slice(args);
        let out = self.oz(&all).await;
        out.assert_code(0);
        out.json()["run_id"]
            .as_str()
            .unwrap_or_else(|| panic!("no run_id:\n{out}"))
            .to_owned()
    }

    pub async fn run(&self, run_id: &str) -> RunItem {
        self.client()
            .get_run(run_id)
            .await
            .unwrap_or_else(|e| panic!("get run {run_id}: {e}"))
    }

    /// Poll the run until `pred` holds; returns it.
    pub async fn wait_run(
        &self,
        run_id: &str,
        what: &str,
        pred: impl Fn(&RunItem) -> bool,
    ) -> RunItem {
        let deadline = Instant::now() + WAIT;
        loop {
            let run = self.run(run_id).await;
            if pred(&run) {
                return run;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for run {run_id} to be {what}; last seen: {run:?}\nserver log:\n{}",
                self.log()
            );
            sleep(POLL).await;
        }
    }

    pub async fn wait_state(&self, run_id: &str, state: RunState) -> RunItem {
        self.wait_run(run_id, state.as_str(), |r| r.state == state)
            .await
    }

    /// Start a Direct worker whose agent is the real `oz`, and wait until
    /// the server lists it with a known status.
    pub async fn worker(&self, id: &str) -> Worker {
        let w = Worker::spawn(self, id);
        let client = self.client();
        wait_for(&format!("worker {id:?} to connect"), WAIT, || async {
            let workers = client.list_workers().await.ok()?;
            workers
                .iter()
                .any(|w| w["worker_id"] == id && !w["max_concurrent_tasks"].is_null())
                .then_some(())
        })
        .await;
        w
    }
}

// ---- worker -------------------------------------------------------------------

/// A real `oz-agent-worker` with the Direct backend; killed when dropped.
pub struct Worker {
    child: Child,
    pub id: String,
    log: PathBuf,
}

impl Worker {
    fn spawn(server: &Server, id: &str) -> Worker {
        let root = server.dir.path().join(format!("worker-{id}"));
        std::fs::create_dir_all(root.join("ws")).expect("mkdir");
        let config = root.join("worker.yaml");
        std::fs::write(
            &config,
            format!(
                "state_dir: {}\nbackend:\n  direct:\n    workspace_root: {}\n    oz_path: {}\n",
                yaml_str(&root.join("state")),
                yaml_str(&root.join("ws")),
                yaml_str(&oz_bin()),
            ),
        )
        .expect("write worker config");
        let log = root.join("worker.log");
        let log_file = std::fs::File::create(&log).expect("worker log");
        let mut cmd = Command::new(worker_bin());
        scrub(&mut cmd);
        cmd.arg("--worker-id")
            .arg(id)
            .arg("--server-url")
            .arg(server.url())
            .arg("--config-file")
            .arg(&config)
            .env("WARP_API_KEY", &server.admin_key)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log_file))
            .kill_on_drop(true);
        let child = cmd.spawn().expect("spawn oz-agent-worker");
        Worker {
            child,
            id: id.to_owned(),
            log,
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// A YAML double-quoted string (JSON strings are valid YAML).
fn yaml_str(p: &Path) -> String {
    serde_json::to_string(&p.to_string_lossy()).expect("encode path")
}

// ---- helpers --------------------------------------------------------------------

/// A local port nothing listens on (bound, then released).
pub fn unused_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

/// The run states a `--follow` printed, in order (`HH:MM:SS  STATE  …`).
pub fn followed_states(stdout: &str) -> Vec<String> {
    stdout
        .lines()
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            let time = words.next()?;
            let state = words.next()?;
            let is_time = time.len() == 8 && time.chars().filter(|c| *c == ':').count() == 2;
            (is_time && RunState::parse(state).is_some()).then(|| state.to_owned())
        })
        .collect()
}
