//! Test harness: a control plane played by the test (protocol v1 over a real
//! WebSocket on 127.0.0.1:0), the real `oz-agent-worker` binary, and a fake
//! `oz` agent script that records what it was given.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use oz_protocol::{ServerMessage, Task, TaskAssignment, TaskCancellation, WorkerMessage};
use tokio::net::TcpListener;
use tokio::process::{Child, Command};
use tokio::sync::{broadcast, mpsc};
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep, timeout};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};

/// Generous upper bound for anything a test waits on; a hang fails instead
/// of blocking CI.
pub const WAIT: Duration = Duration::from_secs(30);

/// What the control plane saw.
#[derive(Debug, Clone)]
pub enum Event {
    Connected {
        query: String,
        auth: Option<String>,
    },
    Frame(WorkerMessage),
    /// A text frame that did not decode as a worker frame.
    Garbage(String),
    Disconnected,
}

/// How the control plane treats new connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Serve,
    /// Complete the handshake, then close at once.
    AcceptThenClose,
    /// Refuse the handshake with 401.
    Unauthorized,
}

pub struct ControlPlane {
    pub addr: std::net::SocketAddr,
    events: mpsc::UnboundedReceiver<Event>,
    /// Frames to the current connection.
    to_worker: broadcast::Sender<Cmd>,
    mode: Arc<Mutex<Mode>>,
    accept_loop: JoinHandle<()>,
    event_tx: mpsc::UnboundedSender<Event>,
    /// Every event ever seen, for assertions after the fact.
    pub history: Vec<Event>,
}

#[derive(Debug, Clone)]
enum Cmd {
    Text(String),
    Close,
}

impl ControlPlane {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        Self::with_listener(listener)
    }

    /// Listen again on the same address (after [`ControlPlane::stop`]).
    pub async fn restart_on(addr: std::net::SocketAddr) -> Self {
        let deadline = Instant::now() + WAIT;
        loop {
            match TcpListener::bind(addr).await {
                Ok(l) => return Self::with_listener(l),
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    sleep(Duration::from_millis(50)).await;
                }
                Err(e) => panic!("rebind {addr}: {e}"),
            }
        }
    }

    fn with_listener(listener: TcpListener) -> Self {
        let addr = listener.local_addr().expect("addr");
        let (event_tx, events) = mpsc::unbounded_channel();
        let (to_worker, _) = broadcast::channel(1024);
        let mode = Arc::new(Mutex::new(Mode::Serve));
        let accept_loop = tokio::spawn(accept_loop(
            listener,
            event_tx.clone(),
            to_worker.clone(),
            mode.clone(),
        ));
        ControlPlane {
            addr,
            events,
            to_worker,
            mode,
            accept_loop,
            event_tx,
            history: Vec::new(),
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn set_mode(&self, mode: Mode) {
        *self.mode.lock().unwrap() = mode;
    }

    /// Stop listening and drop every connection (the server "goes down").
    pub fn stop(&mut self) {
        self.accept_loop.abort();
        let _ = self.to_worker.send(Cmd::Close);
    }

    pub fn send(&self, msg: &ServerMessage) {
        self.send_raw(&msg.encode());
    }

    pub fn send_raw(&self, text: &str) {
        self.to_worker
            .send(Cmd::Text(text.to_owned()))
            .expect("no worker connected");
    }

    /// Close the current connection from the server side.
    pub fn close_connection(&self) {
        let _ = self.to_worker.send(Cmd::Close);
    }

    pub fn assign(&self, a: TaskAssignment) {
        self.send(&ServerMessage::TaskAssignment(Box::new(a)));
    }

    pub fn cancel(&self, task_id: &str) {
        self.send(&ServerMessage::TaskCancellation(TaskCancellation {
            task_id: task_id.to_owned(),
        }));
    }

    /// Next event, or panic after [`WAIT`].
    pub async fn next(&mut self) -> Event {
        let ev = timeout(WAIT, self.events.recv())
            .await
            .expect("timed out waiting for an event from the worker")
            .expect("control plane event channel closed");
        self.history.push(ev.clone());
        ev
    }

    /// Next event within `d`, if any.
    pub async fn next_within(&mut self, d: Duration) -> Option<Event> {
        let ev = timeout(d, self.events.recv()).await.ok().flatten()?;
        self.history.push(ev.clone());
        Some(ev)
    }

    /// Wait for a connection; returns its query string and auth header.
    pub async fn connected(&mut self) -> (String, Option<String>) {
        loop {
            if let Event::Connected { query, auth } = self.next().await {
                return (query, auth);
            }
        }
    }

    /// Next worker frame, skipping connection events.
    pub async fn frame(&mut self) -> WorkerMessage {
        loop {
            match self.next().await {
                Event::Frame(f) => return f,
                Event::Garbage(g) => panic!("worker sent an undecodable frame: {g}"),
                _ => {}
            }
        }
    }

    /// Wait for the terminal frame (completed or failed) of `task_id`.
    pub async fn terminal(&mut self, task_id: &str) -> WorkerMessage {
        loop {
            let f = self.frame().await;
            if f.is_terminal() && f.task_id() == task_id {
                return f;
            }
        }
    }

    /// Frames seen so far (history), in order.
    pub fn frames(&self) -> Vec<WorkerMessage> {
        self.history
            .iter()
            .filter_map(|e| match e {
                Event::Frame(f) => Some(f.clone()),
                _ => None,
            })
            .collect()
    }
}

async fn accept_loop(
    listener: TcpListener,
    events: mpsc::UnboundedSender<Event>,
    to_worker: broadcast::Sender<Cmd>,
    mode: Arc<Mutex<Mode>>,
) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            return;
        };
        let mode_now = *mode.lock().unwrap();
        let events = events.clone();
        let mut rx = to_worker.subscribe();
        tokio::spawn(async move {
            let seen: Arc<Mutex<(String, Option<String>)>> = Arc::default();
            let seen2 = seen.clone();
            // The handshake callback's error type is tungstenite's own.
            #[allow(clippy::result_large_err)]
            let callback = move |req: &Request, resp: Response| {
                let query = req.uri().query().unwrap_or_default().to_owned();
                let auth = req
                    .headers()
                    .get("authorization")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned);
                *seen2.lock().unwrap() = (query, auth);
                if mode_now == Mode::Unauthorized {
                    let mut r =
                        tokio_tungstenite::tungstenite::handshake::server::ErrorResponse::new(
                            Some("bad key".to_owned()),
                        );
                    *r.status_mut() =
                        tokio_tungstenite::tungstenite::http::StatusCode::UNAUTHORIZED;
                    return Err(r);
                }
                Ok(resp)
            };
            let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(stream, callback).await else {
                let (query, auth) = seen.lock().unwrap().clone();
                let _ = events.send(Event::Connected { query, auth });
                let _ = events.send(Event::Disconnected);
                return;
            };
            let (query, auth) = seen.lock().unwrap().clone();
            let _ = events.send(Event::Connected { query, auth });
            if mode_now == Mode::AcceptThenClose {
                let _ = ws.close(None).await;
                let _ = events.send(Event::Disconnected);
                return;
            }
            loop {
                tokio::select! {
                    frame = ws.next() => match frame {
                        Some(Ok(Message::Text(t))) => {
                            let ev = match WorkerMessage::decode(t.as_str()) {
                                Ok(f) => Event::Frame(f),
                                Err(_) => Event::Garbage(t.to_string()),
                            };
                            let _ = events.send(ev);
                        }
                        Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                        Some(Ok(_)) => {}
                    },
                    cmd = rx.recv() => match cmd {
                        Ok(Cmd::Text(t)) => { if ws.send(Message::text(t)).await.is_err() { break } }
                        Ok(Cmd::Close) | Err(broadcast::error::RecvError::Closed) => { let _ = ws.close(None).await; break }
                        Err(broadcast::error::RecvError::Lagged(_)) => {}
                    },
                }
            }
            let _ = events.send(Event::Disconnected);
        });
    }
}

/// A temp directory laid out for one test: the fake agent, its records,
/// a workspace root and the worker's log.
pub struct Sandbox {
    pub dir: tempfile::TempDir,
}

impl Sandbox {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = Sandbox { dir };
        std::fs::create_dir_all(s.records()).unwrap();
        s.write_agent();
        s
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Where the fake agent writes what it saw, one dir per task id.
    pub fn records(&self) -> PathBuf {
        self.path().join("records")
    }

    pub fn workspace_root(&self) -> PathBuf {
        self.path().join("workspaces")
    }

    pub fn agent_path(&self) -> PathBuf {
        self.path().join("bin").join("oz")
    }

    pub fn log_path(&self) -> PathBuf {
        self.path().join("worker.log")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// The fake `oz`: records argv, env, cwd and pid under records/<TASK_ID>,
    /// then runs `$FAKE_AGENT_SCRIPT` (from the assignment's env_vars) and
    /// exits with `$FAKE_AGENT_EXIT` (default 0).
    fn write_agent(&self) {
        let bin = self.path().join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        let script = format!(
            r#"#!/bin/sh
out="{records}/$TASK_ID"
mkdir -p "$out"
for a in "$@"; do printf '%s\n' "$a"; done > "$out/argv"
env > "$out/env"
pwd > "$out/cwd"
echo $$ > "$out/pid"
if [ -n "$FAKE_AGENT_SCRIPT" ]; then eval "$FAKE_AGENT_SCRIPT"; fi
exit "${{FAKE_AGENT_EXIT:-0}}"
"#,
            records = self.records().display()
        );
        let path = self.agent_path();
        std::fs::write(&path, script).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    /// Lines of a record file written by the fake agent (or a hook).
    pub fn record(&self, task_id: &str, name: &str) -> Option<String> {
        std::fs::read_to_string(self.records().join(task_id).join(name)).ok()
    }

    /// The env the fake agent saw, as a map.
    pub fn agent_env(&self, task_id: &str) -> BTreeMap<String, String> {
        parse_env_dump(&self.record(task_id, "env").expect("agent env record"))
    }

    pub fn agent_argv(&self, task_id: &str) -> Vec<String> {
        self.record(task_id, "argv")
            .expect("agent argv record")
            .lines()
            .map(str::to_owned)
            .collect()
    }

    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.path().join(name);
        std::fs::write(&p, text).unwrap();
        p
    }
}

/// Parse `env` output (KEY=VALUE lines; multi-line values are rare in tests).
pub fn parse_env_dump(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// A running `oz-agent-worker`.
pub struct WorkerProc {
    pub child: Child,
}

pub struct WorkerBuilder {
    args: Vec<String>,
    env: Vec<(String, String)>,
    config: Option<String>,
    log: PathBuf,
    dir: PathBuf,
}

pub fn worker_bin() -> &'static str {
    env!("CARGO_BIN_EXE_oz-agent-worker")
}

impl WorkerBuilder {
    /// A worker for `cp` with the sandbox's fake agent and workspace root,
    /// worker id `w1` and api key `wk-test-key`.
    pub fn new(sb: &Sandbox, cp: &ControlPlane) -> Self {
        WorkerBuilder {
            args: vec![
                "--worker-id".into(),
                "w1".into(),
                "--server-url".into(),
                cp.url(),
                "--log-level".into(),
                "debug".into(),
                // Every sandbox has its own durable state (log spool,
                // result journal); the default is shared by the host.
                "--state-dir".into(),
                sb.state_dir().display().to_string(),
            ],
            env: vec![("WARP_API_KEY".into(), "wk-test-key".into())],
            config: Some(format!(
                "backend:\n  direct:\n    workspace_root: {}\n    oz_path: {}\n    grace_period: 2s\n",
                sb.workspace_root().display(),
                sb.agent_path().display()
            )),
            log: sb.log_path(),
            dir: sb.path().to_owned(),
        }
    }

    /// Replace the YAML config (None: no --config-file at all).
    pub fn config(mut self, yaml: Option<String>) -> Self {
        self.config = yaml;
        self
    }

    /// Remove a flag and its value from the default arguments.
    pub fn without(mut self, flag: &str) -> Self {
        if let Some(i) = self.args.iter().position(|a| a == flag) {
            self.args.drain(i..(i + 2).min(self.args.len()));
        }
        self
    }

    pub fn arg(mut self, a: impl Into<String>) -> Self {
        self.args.push(a.into());
        self
    }

    pub fn args<I: IntoIterator<Item = S>, S: Into<String>>(mut self, a: I) -> Self {
        self.args.extend(a.into_iter().map(Into::into));
        self
    }

    pub fn env(mut self, k: &str, v: &str) -> Self {
        self.env.push((k.into(), v.into()));
        self
    }

    pub fn command(&self) -> Command {
        let mut cmd = Command::new(worker_bin());
        cmd.args(&self.args);
        if let Some(yaml) = &self.config {
            let path = self.dir.join("worker.yaml");
            std::fs::write(&path, yaml).unwrap();
            cmd.arg("--config-file").arg(path);
        }
        cmd.env_remove("WARP_API_KEY");
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .kill_on_drop(true);
        cmd
    }

    pub fn spawn(&self) -> WorkerProc {
        WorkerProc {
            child: self.command().spawn().expect("spawn oz-agent-worker"),
        }
    }

    /// Run to completion (for startup failures); returns status and stderr.
    pub async fn run_to_exit(&self) -> (ExitStatus, String) {
        let mut cmd = self.command();
        cmd.stderr(Stdio::piped());
        let out = timeout(WAIT, cmd.output())
            .await
            .expect("worker did not exit")
            .expect("run worker");
        (
            out.status,
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }
}

impl WorkerProc {
    pub fn pid(&self) -> i32 {
        self.child.id().expect("worker pid") as i32
    }

    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid()), sig).expect("signal worker");
    }

    pub async fn wait(&mut self) -> ExitStatus {
        timeout(WAIT, self.child.wait())
            .await
            .expect("worker did not exit in time")
            .expect("wait worker")
    }
}

/// An assignment as the official control plane sends it.
pub fn assignment(task_id: &str) -> TaskAssignment {
    TaskAssignment {
        task_id: task_id.to_owned(),
        execution_id: Some(format!("{task_id}-exec-1")),
        task: Some(Task {
            id: task_id.to_owned(),
            title: Some(format!("test task {task_id}")),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// An assignment whose fake agent runs `script` (a shell snippet).
pub fn assignment_running(task_id: &str, script: &str) -> TaskAssignment {
    let mut a = assignment(task_id);
    a.env_vars
        .insert("FAKE_AGENT_SCRIPT".into(), script.to_owned());
    a
}

/// Poll `f` until it is true, or panic after [`WAIT`].
pub async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        sleep(Duration::from_millis(25)).await;
    }
}

/// Is this pid a live (non-zombie) process?
pub fn alive(pid: i32) -> bool {
    oz_worker::sys::pid_alive(pid)
}

/// Read pids (one per line) from a file.
pub fn read_pids(path: &Path) -> Vec<i32> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

// ---------------------------------------------------------------------------
// Extension `logs`: a control plane that says `server_hello` with `logs` and
// acknowledges `log_lines`, and helpers to check what arrived.
// ---------------------------------------------------------------------------

impl Sandbox {
    /// The worker's `--state-dir` (passed by [`WorkerBuilder::new`]).
    pub fn state_dir(&self) -> PathBuf {
        self.path().join("state")
    }

    /// The spool file of a task's log.
    pub fn spool_file(&self, task_id: &str) -> PathBuf {
        self.state_dir()
            .join("spool")
            .join(format!("{task_id}.jsonl"))
    }

    /// Task ids whose result is journaled and not yet delivered
    /// (`results/journal.jsonl`: `put` and `done` records).
    pub fn pending_results(&self) -> Vec<String> {
        let text = std::fs::read_to_string(self.state_dir().join("results").join("journal.jsonl"))
            .unwrap_or_default();
        // The records end at the first NUL; zeros fill the rest of the file.
        let records = text.split('\0').next().unwrap_or_default();
        let mut pending: Vec<String> = Vec::new();
        for line in records.lines() {
            let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
                continue;
            };
            if let Some(id) = v["put"]["task_id"].as_str() {
                pending.retain(|p| p != id);
                pending.push(id.to_owned());
            } else if let Some(id) = v["done"]["task_id"].as_str() {
                pending.retain(|p| p != id);
            }
        }
        pending
    }

    /// Is the result of `task_id` journaled and not yet delivered?
    pub fn result_journaled(&self, task_id: &str) -> bool {
        self.pending_results().iter().any(|p| p == task_id)
    }

    /// Names of the files in a state subdirectory (`spool` or `results`).
    pub fn state_files(&self, sub: &str) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(self.state_dir().join(sub))
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }
}

/// Whether the logs control plane acknowledges `log_lines` by itself.
#[derive(Clone, Debug)]
pub struct Acks(Arc<std::sync::atomic::AtomicBool>);

impl Acks {
    /// Acknowledge every `log_lines` frame at once.
    pub fn auto() -> Self {
        Acks(Arc::new(std::sync::atomic::AtomicBool::new(true)))
    }

    /// Acknowledge only what the test acknowledges ([`ControlPlane::ack`]).
    pub fn manual() -> Self {
        Acks(Arc::new(std::sync::atomic::AtomicBool::new(false)))
    }

    pub fn set_auto(&self, on: bool) {
        self.0.store(on, std::sync::atomic::Ordering::SeqCst);
    }

    fn on(&self) -> bool {
        self.0.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl ControlPlane {
    /// A control plane that announces `logs` in `server_hello` (its first
    /// frame on every connection) and acknowledges as `acks` says.
    pub async fn start_logs(acks: &Acks) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        Self::with_logs_listener(listener, acks)
    }

    /// [`ControlPlane::start_logs`] on the same address (after a stop).
    pub async fn restart_logs_on(addr: std::net::SocketAddr, acks: &Acks) -> Self {
        let deadline = Instant::now() + WAIT;
        loop {
            match TcpListener::bind(addr).await {
                Ok(l) => return Self::with_logs_listener(l, acks),
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    sleep(Duration::from_millis(50)).await;
                }
                Err(e) => panic!("rebind {addr}: {e}"),
            }
        }
    }

    fn with_logs_listener(listener: TcpListener, acks: &Acks) -> Self {
        let addr = listener.local_addr().expect("addr");
        let (event_tx, events) = mpsc::unbounded_channel();
        let (to_worker, _) = broadcast::channel(1024);
        let accept_loop = tokio::spawn(logs_accept_loop(
            listener,
            event_tx.clone(),
            to_worker.clone(),
            acks.clone(),
        ));
        ControlPlane {
            addr,
            events,
            to_worker,
            mode: Arc::new(Mutex::new(Mode::Serve)),
            accept_loop,
            event_tx,
            history: Vec::new(),
        }
    }

    /// Acknowledge a task's lines up to `seq`.
    pub fn ack(&self, task_id: &str, seq: u64) {
        self.send(&ServerMessage::LogAck(oz_protocol::logs::LogAck {
            task_id: task_id.to_owned(),
            seq,
        }));
    }

    /// Frames of one task seen so far, in order.
    pub fn task_frames(&self, task_id: &str) -> Vec<WorkerMessage> {
        self.frames()
            .into_iter()
            .filter(|f| f.task_id() == task_id)
            .collect()
    }
}

async fn logs_accept_loop(
    listener: TcpListener,
    events: mpsc::UnboundedSender<Event>,
    to_worker: broadcast::Sender<Cmd>,
    acks: Acks,
) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            return;
        };
        let events = events.clone();
        let acks = acks.clone();
        let mut rx = to_worker.subscribe();
        tokio::spawn(async move {
            let seen: Arc<Mutex<(String, Option<String>)>> = Arc::default();
            let seen2 = seen.clone();
            #[allow(clippy::result_large_err)]
            let callback = move |req: &Request, resp: Response| {
                let query = req.uri().query().unwrap_or_default().to_owned();
                let auth = req
                    .headers()
                    .get("authorization")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned);
                *seen2.lock().unwrap() = (query, auth);
                Ok(resp)
            };
            let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(stream, callback).await else {
                return;
            };
            let (query, auth) = seen.lock().unwrap().clone();
            let _ = events.send(Event::Connected { query, auth });
            let hello = ServerMessage::ServerHello(oz_protocol::ServerHello {
                protocol: 1,
                extensions: vec![oz_protocol::ext::LOGS.to_owned()],
            });
            if ws.send(Message::text(hello.encode())).await.is_err() {
                let _ = events.send(Event::Disconnected);
                return;
            }
            loop {
                tokio::select! {
                    frame = ws.next() => match frame {
                        Some(Ok(Message::Text(t))) => {
                            let ev = match WorkerMessage::decode(t.as_str()) {
                                Ok(f) => Event::Frame(f),
                                Err(_) => Event::Garbage(t.to_string()),
                            };
                            if let Event::Frame(WorkerMessage::LogLines(l)) = &ev
                                && acks.on()
                                && let Some(last) = l.lines.iter().map(|l| l.seq).max()
                            {
                                let ack = ServerMessage::LogAck(oz_protocol::logs::LogAck {
                                    task_id: l.task_id.clone(),
                                    seq: last,
                                });
                                if ws.send(Message::text(ack.encode())).await.is_err() {
                                    let _ = events.send(ev);
                                    break;
                                }
                            }
                            let _ = events.send(ev);
                        }
                        Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                        Some(Ok(_)) => {}
                    },
                    cmd = rx.recv() => match cmd {
                        Ok(Cmd::Text(t)) => { if ws.send(Message::text(t)).await.is_err() { break } }
                        Ok(Cmd::Close) | Err(broadcast::error::RecvError::Closed) => { let _ = ws.close(None).await; break }
                        Err(broadcast::error::RecvError::Lagged(_)) => {}
                    },
                }
            }
            let _ = events.send(Event::Disconnected);
        });
    }
}

/// Every line in these frames, in arrival order.
pub fn log_lines(frames: &[WorkerMessage]) -> Vec<oz_protocol::logs::LogLine> {
    frames
        .iter()
        .filter_map(|f| match f {
            WorkerMessage::LogLines(l) => Some(l.lines.clone()),
            _ => None,
        })
        .flatten()
        .collect()
}

/// Lines by seq, each once; a seq seen twice must carry the same line.
pub fn dedup_by_seq(lines: &[oz_protocol::logs::LogLine]) -> Vec<oz_protocol::logs::LogLine> {
    let mut by_seq: BTreeMap<u64, oz_protocol::logs::LogLine> = BTreeMap::new();
    for l in lines {
        match by_seq.get(&l.seq) {
            Some(prev) => assert!(
                prev.raw() == l.raw() && prev.gap_bytes == l.gap_bytes,
                "seq {} was sent twice with different content",
                l.seq
            ),
            None => {
                by_seq.insert(l.seq, l.clone());
            }
        }
    }
    by_seq.into_values().collect()
}

/// The exact bytes of one stream of one phase.
pub fn reassemble(
    lines: &[oz_protocol::logs::LogLine],
    stream: oz_protocol::logs::LogStream,
    phase: oz_protocol::logs::LogPhase,
) -> Vec<u8> {
    lines
        .iter()
        .filter(|l| l.stream == stream && l.phase == phase)
        .flat_map(|l| l.raw())
        .collect()
}

/// The contract of one task's frames: every `log_lines` before `log_end`,
/// `log_end` before the terminal frame, exactly one terminal frame, and
/// `log_end.last_seq` the highest seq sent. Returns the last seq.
pub fn assert_log_order(frames: &[WorkerMessage]) -> u64 {
    let end = frames
        .iter()
        .position(|f| matches!(f, WorkerMessage::LogEnd(_)))
        .expect("no log_end");
    let term = frames
        .iter()
        .position(WorkerMessage::is_terminal)
        .expect("no terminal frame");
    assert!(end < term, "log_end must come before the terminal frame");
    assert_eq!(frames.iter().filter(|f| f.is_terminal()).count(), 1);
    if let Some(last_lines) = frames
        .iter()
        .rposition(|f| matches!(f, WorkerMessage::LogLines(_)))
    {
        assert!(last_lines < end, "a log_lines frame came after log_end");
    }
    let max = log_lines(frames).iter().map(|l| l.seq).max().unwrap_or(0);
    match &frames[end] {
        WorkerMessage::LogEnd(e) => {
            assert_eq!(e.last_seq, max, "log_end.last_seq is the last seq sent");
            e.last_seq
        }
        _ => unreachable!(),
    }
}

/// Seqs 1..=last, each present: no line is missing.
pub fn assert_no_gaps(lines: &[oz_protocol::logs::LogLine], last: u64) {
    let seqs: Vec<u64> = lines.iter().map(|l| l.seq).collect();
    assert_eq!(
        seqs,
        (1..=last).collect::<Vec<_>>(),
        "seqs are not 1..={last}"
    );
}
