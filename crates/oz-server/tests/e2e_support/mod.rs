//! End-to-end harness: the real `oz-server` binary, the real
//! `oz-agent-worker` binary beside it, a fake `oz` agent script, and a tiny
//! HTTP/1.1 client (no extra dependency).
#![allow(dead_code)]

use std::future::Future;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};
use tokio::time::{Instant, sleep, timeout};

/// Upper bound for anything a test waits on.
pub const WAIT: Duration = Duration::from_secs(45);
/// Longer bound for waits that include a worker reconnecting with backoff.
pub const LONG_WAIT: Duration = Duration::from_secs(75);
const POLL: Duration = Duration::from_millis(100);

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

// ---- HTTP -------------------------------------------------------------------

#[derive(Debug, Clone)]
pub struct Resp {
    pub status: u16,
    pub body: String,
}

impl Resp {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("response is not JSON ({e}): {}", self.body))
    }
}

/// One request over a fresh connection (`Connection: close`).
pub async fn http(
    addr: &str,
    method: &str,
    path: &str,
    key: Option<&str>,
    body: Option<&Value>,
) -> Resp {
    let fut = async {
        let mut stream = TcpStream::connect(addr).await?;
        let payload = body.map(Value::to_string).unwrap_or_default();
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
            payload.len()
        );
        if body.is_some() {
            head.push_str("Content-Type: application/json\r\n");
        }
        if let Some(k) = key {
            head.push_str(&format!("Authorization: Bearer {k}\r\n"));
        }
        head.push_str("\r\n");
        stream.write_all(head.as_bytes()).await?;
        stream.write_all(payload.as_bytes()).await?;
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await?;
        Ok::<_, std::io::Error>(raw)
    };
    let raw = timeout(Duration::from_secs(15), fut)
        .await
        .unwrap_or_else(|_| panic!("{method} {path}: no answer within 15s"))
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
    parse_response(&raw).unwrap_or_else(|| {
        panic!(
            "{method} {path}: malformed response {:?}",
            String::from_utf8_lossy(&raw)
        )
    })
}

fn parse_response(raw: &[u8]) -> Option<Resp> {
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&raw[..split]).ok()?;
    let mut body = raw[split + 4..].to_vec();
    let mut lines = head.split("\r\n");
    let status = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let chunked = lines.any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("transfer-encoding:") && l.contains("chunked")
    });
    if chunked {
        body = dechunk(&body)?;
    }
    Some(Resp {
        status,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

fn dechunk(mut data: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let eol = data.windows(2).position(|w| w == b"\r\n")?;
        let size_text = std::str::from_utf8(&data[..eol]).ok()?;
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        data = &data[eol + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(data.get(..size)?);
        data = data.get(size + 2..)?;
    }
}

// ---- binaries ---------------------------------------------------------------

pub fn server_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_oz-server"))
}

/// `oz-agent-worker` is another package's binary: it sits beside ours.
pub fn worker_bin() -> PathBuf {
    let path = server_bin().with_file_name("oz-agent-worker");
    assert!(
        path.is_file(),
        "{} is missing: build it first: cargo build -p oz-worker",
        path.display()
    );
    path
}

/// Send a signal by name with the system `kill` (no libc dependency).
pub fn signal(pid: u32, sig: &str) {
    let ok = std::process::Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "kill -{sig} {pid} failed");
}

/// Is `pid` a live process (present and not a zombie)?
pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state letter follows the parenthesised command name.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|s| s != "Z" && s != "X"),
        Err(_) => false,
    }
}

// ---- sandbox and fake agent ---------------------------------------------------

/// One test's temp directory: server data, fake agent, its records, logs.
pub struct Sandbox {
    pub dir: tempfile::TempDir,
}

impl Default for Sandbox {
    fn default() -> Self {
        Self::new()
    }
}

impl Sandbox {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let sb = Sandbox { dir };
        for d in [
            "data",
            "bin",
            "pids",
            "ran",
            "env",
            "report",
            "behaviour",
            "logs",
        ] {
            std::fs::create_dir_all(sb.path().join(d)).unwrap();
        }
        sb.write_agent();
        sb
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn data_dir(&self) -> PathBuf {
        self.path().join("data")
    }

    pub fn agent_path(&self) -> PathBuf {
        self.path().join("bin").join("oz")
    }

    /// The fake `oz`: records its pid, the worker that ran it
    /// (`$FAKE_WORKER`, set with the worker's `-e`) and its env, reports
    /// INPROGRESS with the run token if curl exists, then sources
    /// `behaviour/$TASK_ID` or `behaviour/default` (e.g. `sleep 30`,
    /// `exit 3`) and exits 0.
    fn write_agent(&self) {
        let script = format!(
            r#"#!/bin/sh
root='{root}'
echo $$ > "$root/pids/$TASK_ID"
echo "$TASK_ID" >> "$root/ran/${{FAKE_WORKER:-unknown}}"
env > "$root/env/$TASK_ID"
if command -v curl >/dev/null 2>&1; then
  curl -s -m 5 -o /dev/null -w '%{{http_code}}' -X POST \
    -H "Authorization: Bearer $WARP_API_KEY" -H 'Content-Type: application/json' \
    -d '{{"state":"INPROGRESS"}}' "$OZ_API_BASE_URL/agent/runs/$TASK_ID/report" \
    > "$root/report/$TASK_ID" 2>/dev/null
fi
b="$root/behaviour/$TASK_ID"
[ -f "$b" ] || b="$root/behaviour/default"
if [ -f "$b" ]; then . "$b"; fi
exit 0
"#,
            root = self.path().display()
        );
        let path = self.agent_path();
        std::fs::write(&path, script).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    /// Shell snippet every run sources unless it has its own.
    pub fn set_behaviour(&self, sh: &str) {
        std::fs::write(self.path().join("behaviour").join("default"), sh).unwrap();
    }

    /// Run ids the agent ran on the worker labelled `label`, in order.
    pub fn ran_on(&self, label: &str) -> Vec<String> {
        std::fs::read_to_string(self.path().join("ran").join(label))
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// Pid of the agent that ran `run_id` (its process group id too).
    pub fn agent_pid(&self, run_id: &str) -> Option<u32> {
        std::fs::read_to_string(self.path().join("pids").join(run_id))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// HTTP status the agent's INPROGRESS report got ("000": no connection).
    pub fn report_status(&self, run_id: &str) -> Option<String> {
        std::fs::read_to_string(self.path().join("report").join(run_id))
            .ok()
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
    }

    /// A variable of the agent's environment.
    pub fn agent_env(&self, run_id: &str, name: &str) -> Option<String> {
        let text = std::fs::read_to_string(self.path().join("env").join(run_id)).ok()?;
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}=")).map(str::to_owned))
    }

    fn log_file(&self, name: &str) -> (PathBuf, std::fs::File) {
        let path = self.path().join("logs").join(name);
        let f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .unwrap();
        (path, f)
    }
}

impl Drop for Sandbox {
    /// Agents outlive a SIGKILLed worker (own process group): end them.
    fn drop(&mut self) {
        let Ok(entries) = std::fs::read_dir(self.path().join("pids")) else {
            return;
        };
        for e in entries.flatten() {
            let pid = std::fs::read_to_string(e.path())
                .ok()
                .and_then(|s| s.trim().parse::<u32>().ok());
            // Only our own agents: the pid must still run our script.
            let ours = |p: &u32| {
                std::fs::read(format!("/proc/{p}/cmdline")).is_ok_and(|c| {
                    String::from_utf8_lossy(&c).contains(&*self.path().to_string_lossy())
                })
            };
            if let Some(pid) = pid.filter(|p| alive(*p) && ours(p)) {
                let _ = std::process::Command::new("kill")
                    .args(["-KILL", "--", &format!("-{pid}")])
                    .stderr(Stdio::null())
                    .status();
            }
        }
    }
}

// ---- server -----------------------------------------------------------------

pub struct Server {
    child: Child,
    /// `127.0.0.1:PORT` as bound.
    pub addr: String,
    pub admin_key: String,
    data_dir: PathBuf,
    flags: Vec<String>,
    log: PathBuf,
    starts: usize,
}

impl Server {
    /// Start on 127.0.0.1:0 with `flags` (e.g. `--lease-grace 2s`).
    pub async fn start(sb: &Sandbox, flags: &[&str]) -> Server {
        let flags: Vec<String> = flags.iter().map(|s| s.to_string()).collect();
        Self::launch(sb, "127.0.0.1:0", flags, 1).await
    }

    /// Start on a given address (e.g. a port chosen up front).
    pub async fn start_on(sb: &Sandbox, listen: &str, flags: &[&str]) -> Server {
        let flags: Vec<String> = flags.iter().map(|s| s.to_string()).collect();
        Self::launch(sb, listen, flags, 1).await
    }

    async fn launch(sb: &Sandbox, listen: &str, flags: Vec<String>, starts: usize) -> Server {
        let (log, file) = sb.log_file(&format!("server-{starts}.log"));
        let mut cmd = Command::new(server_bin());
        cmd.arg("--listen")
            .arg(listen)
            .arg("--data-dir")
            .arg(sb.data_dir())
            .args(&flags)
            .env("OZ_LOG", "info")
            .env_remove("OZ_DEFAULT_WORKER_HOST")
            .env_remove("OZ_QUEUE_TIMEOUT")
            .env_remove("OZ_PUBLIC_URL")
            .env_remove("OZ_CONFIG")
            .env_remove("OZ_THREADS")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(file))
            .kill_on_drop(true);
        let mut child = cmd.spawn().expect("spawn oz-server");
        let stdout = child.stdout.take().expect("server stdout");
        let mut lines = BufReader::new(stdout).lines();
        let read = async {
            while let Some(line) = lines.next_line().await.ok().flatten() {
                if let Some(a) = line.trim().strip_prefix("oz-server listening on http://") {
                    return Some(a.to_owned());
                }
            }
            None
        };
        let addr = match timeout(WAIT, read).await {
            Ok(Some(a)) => a,
            other => panic!(
                "oz-server did not report its address ({}); log:\n{}",
                if other.is_err() { "timeout" } else { "exited" },
                std::fs::read_to_string(&log).unwrap_or_default()
            ),
        };
        // Keep draining stdout so the server never blocks on it.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let admin_key = std::fs::read_to_string(sb.data_dir().join("admin-api-key"))
            .expect("admin-api-key file")
            .trim()
            .to_owned();
        Server {
            child,
            addr,
            admin_key,
            data_dir: sb.data_dir(),
            flags,
            log,
            starts,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM and wait for a clean exit.
    pub async fn stop(&mut self) {
        if let Some(pid) = self.child.id() {
            signal(pid, "TERM");
        }
        let status = timeout(WAIT, self.child.wait())
            .await
            .expect("oz-server did not stop within the wait after SIGTERM")
            .expect("wait oz-server");
        assert!(
            status.success(),
            "oz-server exited with {status} after SIGTERM; log:\n{}",
            self.log()
        );
    }

    /// Stop, then start again on the same address and data directory.
    pub async fn restart(&mut self, sb: &Sandbox) {
        self.stop().await;
        let next = Self::launch(sb, &self.addr.clone(), self.flags.clone(), self.starts + 1).await;
        assert_eq!(next.addr, self.addr, "restarted on another address");
        *self = next;
    }

    pub async fn call(
        &self,
        method: &str,
        path: &str,
        key: Option<&str>,
        body: Option<&Value>,
    ) -> Resp {
        http(&self.addr, method, path, key, body).await
    }

    pub async fn get(&self, path: &str) -> Resp {
        self.call("GET", path, Some(&self.admin_key), None).await
    }

    pub async fn post(&self, path: &str, body: &Value) -> Resp {
        self.call("POST", path, Some(&self.admin_key), Some(body))
            .await
    }

    /// Submit a run; `worker_host` None leaves config.worker_host unset.
    pub async fn submit(&self, prompt: &str, worker_host: Option<&str>) -> String {
        let mut body = json!({ "prompt": prompt });
        if let Some(h) = worker_host {
            body["config"] = json!({ "worker_host": h });
        }
        let r = self.post("/api/v1/agent/runs", &body).await;
        assert_eq!(r.status, 200, "create run: {}", r.body);
        let v = r.json();
        assert_eq!(v["state"], "QUEUED", "a new run is QUEUED: {v}");
        v["run_id"].as_str().expect("run_id").to_owned()
    }

    pub async fn run(&self, run_id: &str) -> Value {
        let r = self.get(&format!("/api/v1/agent/runs/{run_id}")).await;
        assert_eq!(r.status, 200, "get run {run_id}: {}", r.body);
        r.json()
    }

    pub async fn cancel(&self, run_id: &str) -> Resp {
        self.call(
            "POST",
            &format!("/api/v1/agent/runs/{run_id}/cancel"),
            Some(&self.admin_key),
            None,
        )
        .await
    }

    /// Poll the run until `pred` holds; returns it.
    pub async fn wait_run(
        &self,
        run_id: &str,
        what: &str,
        limit: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + limit;
        loop {
            let run = self.run(run_id).await;
            if pred(&run) {
                return run;
            }
            assert!(
                Instant::now() < deadline,
                "timed out after {limit:?} waiting for run {run_id} to be {what}; last seen: {run}\nserver log:\n{}",
                self.log()
            );
            sleep(POLL).await;
        }
    }

    /// Wait until the run is in a terminal state; returns it.
    pub async fn wait_terminal(&self, run_id: &str, limit: Duration) -> Value {
        self.wait_run(run_id, "terminal", limit, |r| {
            matches!(
                r["state"].as_str(),
                Some("SUCCEEDED" | "FAILED" | "ERROR" | "CANCELLED" | "BLOCKED")
            )
        })
        .await
    }

    /// Wait until a worker is running the run (CLAIMED or INPROGRESS).
    pub async fn wait_running(&self, run_id: &str) -> Value {
        self.wait_run(run_id, "CLAIMED or INPROGRESS", WAIT, |r| {
            matches!(r["state"].as_str(), Some("CLAIMED" | "INPROGRESS"))
        })
        .await
    }

    pub async fn workers(&self) -> Vec<Value> {
        let r = self.get("/api/v1/workers").await;
        assert_eq!(r.status, 200, "list workers: {}", r.body);
        r.json()["workers"].as_array().cloned().unwrap_or_default()
    }

    /// Wait until `n` connections of `worker_id` have told their status.
    pub async fn wait_workers(&self, worker_id: &str, n: usize) -> Vec<Value> {
        wait_for(
            &format!("{n} connected worker(s) {worker_id:?} with a known status"),
            WAIT,
            || async {
                let ws: Vec<Value> = self
                    .workers()
                    .await
                    .into_iter()
                    .filter(|w| w["worker_id"] == worker_id && !w["max_concurrent_tasks"].is_null())
                    .collect();
                (ws.len() == n).then_some(ws)
            },
        )
        .await
    }

    /// Run `oz-server api-key …` on this server's data directory.
    pub async fn key_cli(&self, args: &[&str]) -> (bool, String, String) {
        let out = timeout(
            WAIT,
            Command::new(server_bin())
                .arg("api-key")
                .args(args)
                .arg("--data-dir")
                .arg(&self.data_dir)
                .env_remove("OZ_DATABASE_URL")
                .env_remove("OZ_CONFIG")
                .stdin(Stdio::null())
                .output(),
        )
        .await
        .expect("api-key command did not finish")
        .expect("run oz-server api-key");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// Create a key with the CLI; returns the secret.
    pub async fn create_key(&self, kind: &str, name: &str) -> String {
        let (ok, out, err) = self
            .key_cli(&["create", "--kind", kind, "--name", name])
            .await;
        assert!(ok, "api-key create failed: {err}");
        let key = out.trim().to_owned();
        assert!(
            !key.is_empty() && !key.contains(char::is_whitespace),
            "api-key create printed {out:?}"
        );
        key
    }
}

// ---- worker -----------------------------------------------------------------

pub struct Worker {
    pub child: Child,
    pub id: String,
    pub label: String,
    log: PathBuf,
}

/// How to start a worker.
pub struct WorkerSpec<'a> {
    /// Routing id (`--worker-id`).
    pub id: &'a str,
    /// Name the fake agent records runs under (`ran/<label>`).
    pub label: &'a str,
    pub key: &'a str,
    pub max_concurrent_tasks: Option<u32>,
}

impl<'a> WorkerSpec<'a> {
    pub fn new(id: &'a str, key: &'a str) -> Self {
        WorkerSpec {
            id,
            label: id,
            key,
            max_concurrent_tasks: None,
        }
    }

    pub fn label(mut self, label: &'a str) -> Self {
        self.label = label;
        self
    }

    pub fn max(mut self, n: u32) -> Self {
        self.max_concurrent_tasks = Some(n);
        self
    }
}

impl Worker {
    pub fn spawn(sb: &Sandbox, server_url: &str, spec: WorkerSpec<'_>) -> Worker {
        let label = spec.label;
        let ws_root = sb.path().join("ws").join(label);
        let mut yaml = format!(
            "state_dir: {}\nbackend:\n  direct:\n    workspace_root: {}\n    oz_path: {}\n    grace_period: 1s\n",
            sb.path().join("state").join(label).display(),
            ws_root.display(),
            sb.agent_path().display()
        );
        if let Some(n) = spec.max_concurrent_tasks {
            yaml.push_str(&format!("max_concurrent_tasks: {n}\n"));
        }
        let config = sb.path().join(format!("worker-{label}.yaml"));
        std::fs::write(&config, yaml).unwrap();
        let (log, file) = sb.log_file(&format!("worker-{label}.log"));
        let child = Command::new(worker_bin())
            .arg("--worker-id")
            .arg(spec.id)
            .arg("--server-url")
            .arg(server_url)
            .arg("--config-file")
            .arg(&config)
            .arg("-e")
            .arg(format!("FAKE_WORKER={label}"))
            .env("WARP_API_KEY", spec.key)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(file))
            .kill_on_drop(true)
            .spawn()
            .expect("spawn oz-agent-worker");
        Worker {
            child,
            id: spec.id.to_owned(),
            label: label.to_owned(),
            log,
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGKILL and reap: no goodbye, no results.
    pub async fn kill(&mut self) {
        self.child.start_kill().expect("kill worker");
        timeout(WAIT, self.child.wait())
            .await
            .expect("worker did not die")
            .expect("wait worker");
    }
}
