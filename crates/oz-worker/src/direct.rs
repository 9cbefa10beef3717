//! The Direct backend: each task runs straight on this host, in its own
//! workspace directory, between optional setup and teardown hooks.
//!
//! Order per task: workspace (0700, owner marker) → env file (only with a
//! setup hook) → setup hook → env-file vars → agent → teardown hook (always,
//! with its own timeout and `OZ_TASK_RESULT`) → leftover processes killed →
//! output capture closed → workspace removed. The stdout and stderr of every hook and the agent are
//! piped into the task's log ([`crate::capture`]), never inherited.

use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use oz_protocol::logs::LogPhase;
use oz_protocol::{FailureReason, Task, TaskAssignment};
use serde::{Deserialize, Serialize};
use tokio::process::Command;
use tokio_util::sync::CancellationToken;

use crate::args::{self, ArgsOptions};
use crate::capture::{SETTLE_BETWEEN_PHASES, Secrets, TaskLog};
use crate::config::Settings;
use crate::dotenv;
use crate::env::{EnvList, minimal_base};
use crate::spool::Spool;
use crate::sys::{self, MARKER_VAR, Marker, RunOutcome, Scan, StopTokens, Stopped};
use crate::task::{Outcome, StopReason, TaskControl};

/// Name of the ownership marker written into every workspace we create.
pub const WORKSPACE_MARKER: &str = ".oz-workspace";

/// A startup check of the Direct backend failed.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error(
        "oz CLI not found in PATH: install the oz CLI or set backend.direct.oz_path to its absolute path"
    )]
    OzNotFound,
    #[error(
        "oz_path {path} is not usable: {problem}; point backend.direct.oz_path at the oz executable"
    )]
    OzPath { path: PathBuf, problem: String },
    #[error(
        "target_dir {path} is not usable: {problem}; create it or fix --target-dir / backend.direct.target_dir"
    )]
    TargetDir { path: PathBuf, problem: String },
    #[error(
        "workspace_root {path} cannot be used: {source}; create it and give the worker's user write access, or set backend.direct.workspace_root"
    )]
    WorkspaceRoot {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Written into each workspace so that only our own leftovers are ever
/// removed: a workspace is swept at startup only when it belongs to this
/// worker id and the process that created it is gone.
#[derive(Debug, Serialize, Deserialize)]
struct OwnerMarker {
    worker_id: String,
    pid: i32,
    start_time: Option<u64>,
    run_id: String,
    run_marker: String,
    cleanup: bool,
}

pub struct DirectBackend {
    settings: Arc<Settings>,
    oz_path: PathBuf,
    /// The worker's environment without its API key: the base of the hooks.
    worker_env: EnvList,
    pid: i32,
    start_time: Option<u64>,
}

impl DirectBackend {
    /// Run the startup checks: resolve `oz`, check `target_dir` or create
    /// `workspace_root`. Any failure is fatal for the worker.
    pub fn new(settings: Arc<Settings>, worker_env: EnvList) -> Result<Self, StartupError> {
        let d = &settings.direct;
        let oz_path = match &d.oz_path {
            Some(p) => check_executable(p).map_err(|problem| StartupError::OzPath {
                path: p.clone(),
                problem,
            })?,
            None => find_in_path("oz", worker_env.get("PATH").unwrap_or_default())
                .ok_or(StartupError::OzNotFound)?,
        };
        if let Some(t) = &d.target_dir {
            match std::fs::metadata(t) {
                Ok(m) if m.is_dir() => {}
                Ok(_) => {
                    return Err(StartupError::TargetDir {
                        path: t.clone(),
                        problem: "not a directory".into(),
                    });
                }
                Err(e) => {
                    return Err(StartupError::TargetDir {
                        path: t.clone(),
                        problem: e.to_string(),
                    });
                }
            }
        } else {
            prepare_root(&d.workspace_root).map_err(|source| StartupError::WorkspaceRoot {
                path: d.workspace_root.clone(),
                source,
            })?;
        }
        let pid = std::process::id() as i32;
        Ok(DirectBackend {
            oz_path,
            worker_env,
            pid,
            start_time: sys::process_start_time(pid),
            settings,
        })
    }

    pub fn oz_path(&self) -> &Path {
        &self.oz_path
    }

    /// Remove what a crashed earlier instance of this worker left behind:
    /// workspaces that carry our worker id, were meant to be cleaned up, and
    /// whose creating process is gone. Their processes are killed first.
    /// Nothing without our marker is touched.
    pub async fn sweep_leftovers(&self) {
        let d = &self.settings.direct;
        if d.target_dir.is_some() {
            return;
        }
        let Ok(entries) = std::fs::read_dir(&d.workspace_root) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let Ok(text) = std::fs::read_to_string(path.join(WORKSPACE_MARKER)) else {
                continue;
            };
            let Ok(owner) = serde_json::from_str::<OwnerMarker>(&text) else {
                tracing::warn!(workspace = %path.display(), "unreadable workspace marker; leaving the directory alone");
                continue;
            };
            if owner.worker_id != self.settings.worker_id || !owner.cleanup {
                continue;
            }
            let same_process = owner.pid == self.pid && owner.start_time == self.start_time;
            let owner_alive = sys::pid_alive(owner.pid)
                && (owner.start_time.is_none()
                    || sys::process_start_time(owner.pid) == owner.start_time);
            if same_process || owner_alive {
                continue;
            }
            let killed = sys::terminate(
                None,
                &[],
                &Marker::new(owner.run_marker.as_str()),
                Scan::All,
                d.grace_period,
                &CancellationToken::new(),
            )
            .await;
            let tree = path.clone();
            match off_thread(move || remove_marked_tree(&tree)).await {
                Ok(()) => tracing::info!(
                    run_id = %owner.run_id,
                    workspace = %path.display(),
                    killed_processes = killed,
                    "removed workspace left over by an earlier worker process"
                ),
                Err(e) => {
                    tracing::warn!(workspace = %path.display(), error = %e, "cannot remove leftover workspace")
                }
            }
        }
    }

    /// Run one task to its end, hooks and cleanup included. The output of
    /// the hooks and the agent goes to the task's log in `spool`; when this
    /// returns, every line read is there.
    pub async fn run_task(
        &self,
        assignment: &TaskAssignment,
        task: &Task,
        ctl: &TaskControl,
        spool: &Arc<Spool>,
    ) -> Outcome {
        let run_id = assignment.task_id.as_str();
        if !oz_protocol::is_safe_path_component(run_id) {
            return Outcome::failed(
                FailureReason::WorkspaceSetup,
                "invalid task ID for workspace path: invalid task ID",
                None,
            );
        }
        let log = TaskLog::new(
            spool.clone(),
            run_id,
            assignment.execution_id.clone(),
            self.task_secrets(assignment),
        );
        let mut ws = match self.open_workspace(run_id, ctl.marker.as_str()) {
            Ok(ws) => ws,
            Err(e) => {
                tracing::error!(run_id, error = %e, "cannot prepare the workspace");
                return Outcome::failed(
                    FailureReason::WorkspaceSetup,
                    format!("workspace setup failed: {e}"),
                    None,
                );
            }
        };
        let outcome = self
            .setup_and_agent(assignment, task, ctl, &mut ws, &log)
            .await;
        self.finish(run_id, ctl, &mut ws, &outcome, &log).await;
        outcome
    }

    /// What is redacted from the task's output: the values of the
    /// assignment's `secret_env_vars`, its `WARP_API_KEY` (the run token),
    /// every configured `environment`/`-e` value and the worker's own key.
    /// The env file's values are added after setup.
    fn task_secrets(&self, assignment: &TaskAssignment) -> Secrets {
        let mut values: Vec<&str> = assignment
            .secret_env_vars
            .iter()
            .filter_map(|name| assignment.env_vars.get(name))
            .map(String::as_str)
            .collect();
        if let Some(token) = assignment.env_vars.get("WARP_API_KEY") {
            values.push(token);
        }
        values.extend(
            self.settings
                .direct
                .environment
                .iter()
                .map(|(_, v)| v.as_str()),
        );
        values.push(&self.settings.api_key);
        Secrets::new(values)
    }

    async fn setup_and_agent(
        &self,
        assignment: &TaskAssignment,
        task: &Task,
        ctl: &TaskControl,
        ws: &mut Workspace,
        log: &TaskLog,
    ) -> Outcome {
        let d = &self.settings.direct;
        let run_id = assignment.task_id.as_str();
        let task_env = self.task_env(assignment, task, ws);

        if let Some(setup) = &d.setup_command {
            let mut env = self.worker_env.clone();
            env.extend(task_env.iter());
            env.set("OZ_WORKSPACE_ROOT", path_str(&ws.dir));
            env.set("OZ_RUN_ID", run_id);
            if let Some(f) = &ws.env_file {
                env.set("OZ_ENVIRONMENT_FILE", path_str(f));
            }
            env.set("OZ_WORKER_BACKEND", "direct");
            env.set(MARKER_VAR, ctl.marker.as_str());
            tracing::info!(run_id, "setup started");
            let result = self
                .run_hook(
                    setup,
                    &ws.dir,
                    &env,
                    &ctl.marker,
                    limit(d.setup_timeout),
                    &ctl.tokens,
                    log,
                    LogPhase::Setup,
                )
                .await;
            match result {
                Err(e) => {
                    return Outcome::failed(
                        FailureReason::SetupCommand,
                        format!("setup command failed to start: {e}"),
                        None,
                    );
                }
                Ok(out) => {
                    ws.pgids.push(out.pgid);
                    ws.stopped |= out.stopped.is_some();
                    tracing::info!(run_id, status = %sys::describe(&out.status), "setup finished");
                    log.settle(SETTLE_BETWEEN_PHASES).await;
                    match out.stopped {
                        Some(Stopped::Timeout) => {
                            return Outcome::failed(
                                FailureReason::SetupCommand,
                                format!(
                                    "setup command timed out after {}",
                                    humantime::format_duration(d.setup_timeout)
                                ),
                                None,
                            );
                        }
                        Some(_) => return ctl.stopped_outcome(None),
                        None if !out.status.success() => {
                            return Outcome::failed(
                                FailureReason::SetupCommand,
                                format!("setup command failed: {}", sys::describe(&out.status)),
                                None,
                            );
                        }
                        None => {}
                    }
                }
            }
        }
        if ctl.tokens.stop.is_cancelled() || ctl.tokens.kill.is_cancelled() {
            return ctl.stopped_outcome(None);
        }

        // Agent env: minimal host base, task layers, then the env file (which
        // may override anything but the isolated git config and our marker).
        let mut env = minimal_base(&self.worker_env);
        env.extend(task_env.iter());
        let parsed = match ws.env_file.as_ref().map(std::fs::read) {
            None => dotenv::Parsed::default(),
            Some(Ok(bytes)) => dotenv::parse(&bytes),
            Some(Err(e)) => {
                tracing::warn!(run_id, error = %e, "cannot read the environment file written by setup; continuing without its variables");
                dotenv::Parsed::default()
            }
        };
        for w in &parsed.warnings {
            tracing::warn!(run_id, line = w.line, problem = %w.message, "skipping a malformed line in the environment file");
        }
        log.add_secrets(parsed.vars.iter().map(|(_, v)| v));
        env.extend(parsed.vars);
        env.set("GIT_CONFIG_GLOBAL", path_str(&ws.git_config));
        env.set(MARKER_VAR, ctl.marker.as_str());

        let opts = ArgsOptions {
            server_root_url: self.settings.server_root_url.clone(),
            idle_on_complete: self.settings.idle_on_complete.clone(),
            session_sharing_server_url: self.settings.session_sharing_server_url.clone(),
        };
        let argv = args::agent_args(assignment, task, &opts);
        let mut cmd = Command::new(&self.oz_path);
        cmd.args(&argv)
            .current_dir(&ws.dir)
            .env_clear()
            .envs(env.iter())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        tracing::info!(run_id, oz = %self.oz_path.display(), "agent started");
        let out = match sys::run_supervised(
            cmd,
            &ctl.marker,
            d.task_timeout,
            &ctl.tokens,
            d.grace_period,
            |child| log.attach(child, LogPhase::Agent),
        )
        .await
        {
            Ok(out) => out,
            Err(e) => {
                tracing::error!(run_id, error = %e, "cannot start the agent");
                return Outcome::failed(
                    FailureReason::AgentInvocation,
                    format!("failed to start oz agent {}: {e}", self.oz_path.display()),
                    None,
                );
            }
        };
        ws.pgids.push(out.pgid);
        ws.stopped |= out.stopped.is_some();
        let code = sys::exit_code(&out.status);
        tracing::info!(run_id, status = %sys::describe(&out.status), "agent exited");
        log.settle(SETTLE_BETWEEN_PHASES).await;
        match out.stopped {
            Some(Stopped::Timeout) => Outcome::TimedOut {
                exit_code: nonzero(code),
            },
            Some(_) => ctl.stopped_outcome(nonzero(code)),
            None if out.status.success() => Outcome::Succeeded,
            None => Outcome::failed(
                FailureReason::AgentInvocation,
                format!("oz agent exited with error: {}", sys::describe(&out.status)),
                nonzero(code),
            ),
        }
    }

    /// Layers 2-6 of the task environment: common vars, the assignment's
    /// env_vars, configured `environment` and `-e`, harness state dir and the
    /// isolated git config.
    fn task_env(&self, assignment: &TaskAssignment, task: &Task, ws: &Workspace) -> EnvList {
        let mut env = EnvList::new();
        let task_id = if task.id.is_empty() {
            &assignment.task_id
        } else {
            &task.id
        };
        env.set("TASK_ID", task_id.as_str());
        env.set("GIT_TERMINAL_PROMPT", "0");
        env.set("GH_PROMPT_DISABLED", "1");
        if !self.settings.server_root_url.is_empty() {
            env.set(
                "WARP_SERVER_ROOT_URL",
                self.settings.server_root_url.as_str(),
            );
        }
        env.extend(
            assignment
                .env_vars
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str())),
        );
        env.extend(
            self.settings
                .direct
                .environment
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str())),
        );
        if let Some((var, sub)) = args::harness_env(task) {
            env.set(var, path_str(&ws.dir.join(sub)));
        }
        env.set("GIT_CONFIG_GLOBAL", path_str(&ws.git_config));
        env
    }

    #[allow(clippy::too_many_arguments)]
    async fn run_hook(
        &self,
        script: &str,
        cwd: &Path,
        env: &EnvList,
        marker: &Marker,
        timeout: Option<Duration>,
        tokens: &StopTokens,
        log: &TaskLog,
        phase: LogPhase,
    ) -> io::Result<RunOutcome> {
        let mut cmd = Command::new("/bin/sh");
        cmd.arg("-c")
            .arg(script)
            .current_dir(cwd)
            .env_clear()
            .envs(env.iter())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        sys::run_supervised(
            cmd,
            marker,
            timeout,
            tokens,
            self.settings.direct.grace_period,
            |child| log.attach(child, phase),
        )
        .await
    }

    /// Teardown, leftover processes, env file, workspace, output capture:
    /// runs after every outcome. Nothing here changes the reported result.
    async fn finish(
        &self,
        run_id: &str,
        ctl: &TaskControl,
        ws: &mut Workspace,
        outcome: &Outcome,
        log: &TaskLog,
    ) {
        let d = &self.settings.direct;
        if let Some(f) = &ws.env_file {
            remove_file_logged(f);
        }
        let forced = ctl.tokens.kill.is_cancelled();
        // A per-task workspace kept with --no-cleanup also skips teardown, so
        // it can be inspected as the task left it (documented behaviour);
        // target_dir mode always tears down.
        let teardown_wanted = ws.private_tmp.is_some() || self.settings.cleanup;
        if let Some(teardown) = d
            .teardown_command
            .as_ref()
            .filter(|_| teardown_wanted && !forced)
        {
            let mut env = self.worker_env.clone();
            env.set("OZ_WORKSPACE_ROOT", path_str(&ws.dir));
            env.set("OZ_RUN_ID", run_id);
            env.set("OZ_WORKER_BACKEND", "direct");
            env.set("GIT_CONFIG_GLOBAL", path_str(&ws.git_config));
            env.set("OZ_TASK_RESULT", outcome.task_result());
            env.set(MARKER_VAR, ctl.marker.as_str());
            // A fresh stop token: teardown must run even after a cancel; only
            // a forced stop of the worker interrupts it.
            let tokens = StopTokens {
                stop: CancellationToken::new(),
                kill: ctl.tokens.kill.clone(),
            };
            tracing::info!(run_id, result = outcome.task_result(), "teardown started");
            match self
                .run_hook(
                    teardown,
                    &ws.dir,
                    &env,
                    &ctl.marker,
                    limit(d.teardown_timeout),
                    &tokens,
                    log,
                    LogPhase::Teardown,
                )
                .await
            {
                Ok(out) => {
                    ws.pgids.push(out.pgid);
                    ws.stopped |= out.stopped.is_some();
                    let status = sys::describe(&out.status);
                    if out.stopped == Some(Stopped::Timeout) {
                        tracing::warn!(run_id, %status, timeout = %humantime::format_duration(d.teardown_timeout), "teardown command timed out; the task result is unchanged");
                    } else if !out.status.success() {
                        tracing::warn!(run_id, %status, "teardown command failed; the task result is unchanged");
                    } else {
                        tracing::info!(run_id, %status, "teardown finished");
                    }
                }
                Err(e) => tracing::warn!(run_id, error = %e, "teardown command failed to start"),
            }
        }
        // Whatever the hooks or the agent left running dies with the task.
        let grace = if forced {
            Duration::ZERO
        } else {
            d.grace_period
        };
        // A task that ended by itself left its leftovers, if any, in its
        // groups or as our children (subreaper); after a stop or a timeout
        // every process on the host is searched.
        let scan = if ws.stopped || ctl.tokens.stop.is_cancelled() || forced {
            Scan::All
        } else {
            Scan::Children
        };
        let killed =
            sys::terminate(None, &ws.pgids, &ctl.marker, scan, grace, &ctl.tokens.kill).await;
        if killed > 0 {
            tracing::info!(run_id, killed, "killed processes the task left behind");
        }
        // The pipes close with their last writer; a writer we could not
        // reach gets a bounded wait.
        log.close().await;
        if let Some(tmp) = ws.private_tmp.take() {
            remove_tree(tmp).await;
        }
        if ws.owned && self.settings.cleanup && !forced {
            remove_workspace(&ws.dir, &ws.marker).await;
        } else if ws.owned {
            tracing::info!(run_id, workspace = %ws.dir.display(), "keeping the workspace (cleanup disabled or forced stop)");
        }
    }

    fn open_workspace(&self, run_id: &str, marker: &str) -> io::Result<Workspace> {
        let d = &self.settings.direct;
        if let Some(target) = &d.target_dir {
            // Shared checkout: keep our files out of it, in a private temp dir.
            let tmp_root = self
                .worker_env
                .get("TMPDIR")
                .filter(|s| !s.is_empty())
                .unwrap_or("/tmp");
            let private =
                PathBuf::from(tmp_root).join(format!("oz-task-{run_id}-{}", random_hex(6)));
            std::fs::DirBuilder::new().mode(0o700).create(&private)?;
            std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o700))?;
            let env_file = self.env_file_in(&private)?;
            return Ok(Workspace {
                dir: target.clone(),
                git_config: private.join(".gitconfig"),
                env_file,
                private_tmp: Some(private),
                owned: false,
                marker: String::new(),
                pgids: Vec::new(),
                stopped: false,
            });
        }
        let dir = d.workspace_root.join(run_id);
        match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && dir.is_dir() => {
                tracing::warn!(run_id, workspace = %dir.display(), "workspace already exists (left by an earlier execution); reusing it");
            }
            Err(e) => return Err(e),
        }
        // Explicit chmod: the mode given to mkdir is filtered by the umask
        // (or a default ACL), a setgid root adds its bit, and a reused
        // directory keeps its own.
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
        let owner = OwnerMarker {
            worker_id: self.settings.worker_id.clone(),
            pid: self.pid,
            start_time: self.start_time,
            run_id: run_id.to_owned(),
            run_marker: marker.to_owned(),
            cleanup: self.settings.cleanup,
        };
        let text = serde_json::to_string(&owner).map_err(io::Error::other)?;
        std::fs::write(dir.join(WORKSPACE_MARKER), &text)?;
        let env_file = self.env_file_in(&dir)?;
        Ok(Workspace {
            marker: text,
            git_config: dir.join(".gitconfig"),
            dir,
            env_file,
            private_tmp: None,
            owned: true,
            pgids: Vec::new(),
            stopped: false,
        })
    }
}

/// Where one task runs and the files that belong to it.
struct Workspace {
    dir: PathBuf,
    git_config: PathBuf,
    /// Only with a setup hook: nothing else can write it.
    env_file: Option<PathBuf>,
    /// target_dir mode: our private dir for the env file and git config.
    private_tmp: Option<PathBuf>,
    /// True when we created the directory and may remove it.
    owned: bool,
    /// The owner marker written into an owned workspace (to put it back if
    /// the workspace is not empty when removed).
    marker: String,
    /// Process groups of the hooks and agent, for the final sweep.
    pgids: Vec<i32>,
    /// A hook or the agent was stopped (timeout, cancel, shutdown).
    stopped: bool,
}

impl DirectBackend {
    /// The task's environment file, created empty (0600) in `dir`, when
    /// there is a setup hook to write it. Without one it could only stay
    /// empty (the agent is not told its path), and on a busy host creating
    /// and deleting it was a third of the inodes each task allocated
    /// (bench/REPORT.md).
    fn env_file_in(&self, dir: &Path) -> io::Result<Option<PathBuf>> {
        match self.settings.direct.setup_command {
            Some(_) => create_env_file(dir).map(Some),
            None => Ok(None),
        }
    }
}

fn create_env_file(dir: &Path) -> io::Result<PathBuf> {
    let path = dir.join(format!("oz-env-{}", random_hex(8)));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)?;
    f.flush()?;
    Ok(path)
}

fn prepare_root(root: &Path) -> io::Result<()> {
    if !root.is_dir() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(root)?;
        std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o700))?;
    }
    // Prove we can create workspaces here now, not at the first task.
    let probe = root.join(format!(".oz-probe-{}", std::process::id()));
    std::fs::create_dir(&probe)?;
    std::fs::remove_dir(&probe)
}

fn check_executable(path: &Path) -> Result<PathBuf, String> {
    let meta = std::fs::metadata(path).map_err(|e| e.to_string())?;
    if !meta.is_file() {
        return Err("not a regular file".into());
    }
    if meta.permissions().mode() & 0o111 == 0 {
        return Err("not executable".into());
    }
    std::path::absolute(path).map_err(|e| e.to_string())
}

fn find_in_path(name: &str, path_var: &str) -> Option<PathBuf> {
    path_var
        .split(':')
        .filter(|d| !d.is_empty())
        .map(|d| Path::new(d).join(name))
        .find(|p| check_executable(p).is_ok())
}

fn remove_file_logged(path: &Path) {
    if let Err(e) = std::fs::remove_file(path)
        && e.kind() != io::ErrorKind::NotFound
    {
        tracing::warn!(path = %path.display(), error = %e, "cannot remove file");
    }
}

/// Remove a task's own workspace. Many hold nothing but our marker by now
/// (an agent that cleans up after itself, or writes elsewhere): then the
/// marker and the directory go in three calls, without opening and listing
/// the directory. Otherwise the marker is put back and the tree goes on the
/// blocking pool (a checkout can take seconds), the marker last: a removal
/// that fails or is cut short leaves a workspace the startup sweep still
/// recognises as ours.
async fn remove_workspace(dir: &Path, marker: &str) {
    match std::fs::symlink_metadata(dir) {
        Ok(m) if m.is_dir() => {}
        // The task put something else in its place (a symlink, say):
        // that goes, not what it points to.
        Ok(_) => {
            if let Err(e) = std::fs::remove_file(dir) {
                tracing::warn!(path = %dir.display(), error = %e, "cannot remove the workspace");
            }
            return;
        }
        Err(_) => return,
    }
    let marker_path = dir.join(WORKSPACE_MARKER);
    let _ = std::fs::remove_file(&marker_path);
    match std::fs::remove_dir(dir) {
        Ok(()) => return,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return,
        Err(_) => {}
    }
    if let Err(e) = std::fs::write(&marker_path, marker) {
        tracing::debug!(path = %marker_path.display(), error = %e, "cannot put the workspace marker back");
    }
    let tree = dir.to_path_buf();
    if let Err(e) = off_thread(move || remove_marked_tree(&tree)).await {
        tracing::warn!(path = %dir.display(), error = %e, "cannot remove the workspace");
    }
}

/// Everything in `dir` but the marker, then the marker, then `dir` (the
/// same order for the startup sweep: a removal cut short leaves a
/// workspace that is still recognised).
fn remove_marked_tree(dir: &Path) -> io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_name() == WORKSPACE_MARKER {
            continue;
        }
        let path = entry.path();
        // Not followed: a symlink is removed, not what it points to.
        if entry.file_type()?.is_dir() {
            std::fs::remove_dir_all(&path)?;
        } else {
            std::fs::remove_file(&path)?;
        }
    }
    match std::fs::remove_file(dir.join(WORKSPACE_MARKER)) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    std::fs::remove_dir(dir)
}

/// Remove a directory tree on the blocking pool; failures are logged.
async fn remove_tree(path: PathBuf) {
    let tree = path.clone();
    if let Err(e) = off_thread(move || std::fs::remove_dir_all(tree)).await
        && e.kind() != io::ErrorKind::NotFound
    {
        tracing::warn!(path = %path.display(), error = %e, "cannot remove directory");
    }
}

/// File system work that can take long (a tree of any size), on the
/// blocking pool so that it never holds up the runtime thread.
async fn off_thread(f: impl FnOnce() -> io::Result<()> + Send + 'static) -> io::Result<()> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| Err(io::Error::other(e)))
}

/// A configured timeout of zero means "no limit".
fn limit(d: Duration) -> Option<Duration> {
    (!d.is_zero()).then_some(d)
}

fn nonzero(code: i32) -> Option<i32> {
    (code != 0).then_some(code)
}

fn path_str(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

pub fn random_hex(bytes: usize) -> String {
    use rand::RngExt;
    let mut rng = rand::rng();
    (0..bytes)
        .map(|_| format!("{:02x}", rng.random::<u8>()))
        .collect()
}

impl TaskControl {
    /// The outcome of a task whose processes were stopped by a stop token.
    fn stopped_outcome(&self, exit_code: Option<i32>) -> Outcome {
        match self.reason() {
            Some(StopReason::User) => Outcome::Cancelled,
            _ => Outcome::Interrupted { exit_code },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_workspace_is_removed_with_or_without_what_the_task_left() {
        let root = tempfile::tempdir().unwrap();
        // Only our marker: the short way.
        let bare = root.path().join("bare");
        std::fs::create_dir(&bare).unwrap();
        std::fs::write(bare.join(WORKSPACE_MARKER), "{}").unwrap();
        remove_workspace(&bare, "{}").await;
        assert!(!bare.exists());
        // Files and directories the task left: the whole tree.
        let full = root.path().join("full");
        std::fs::create_dir_all(full.join("a/b")).unwrap();
        std::fs::write(full.join(WORKSPACE_MARKER), "{}").unwrap();
        std::fs::write(full.join("a/b/f"), "x").unwrap();
        std::fs::write(full.join("g"), "y").unwrap();
        remove_workspace(&full, "{}").await;
        assert!(!full.exists());
        // Already gone (or never made): nothing to do, no panic.
        remove_workspace(&root.path().join("missing"), "{}").await;
        // Replaced by a symlink: the link goes, what it points to stays.
        let other = root.path().join("other");
        std::fs::create_dir(&other).unwrap();
        std::fs::write(other.join(WORKSPACE_MARKER), "{}").unwrap();
        let link = root.path().join("link");
        std::os::unix::fs::symlink(&other, &link).unwrap();
        remove_workspace(&link, "{}").await;
        assert!(std::fs::symlink_metadata(&link).is_err());
        assert!(other.join(WORKSPACE_MARKER).exists());
    }

    /// A workspace tree is removed whole, links removed and not followed.
    #[test]
    fn a_tree_is_removed_without_following_links() {
        let root = tempfile::tempdir().unwrap();
        let ws = root.path().join("ws");
        std::fs::create_dir_all(ws.join("sub")).unwrap();
        std::fs::write(ws.join(WORKSPACE_MARKER), "{}").unwrap();
        std::fs::write(ws.join("sub/f"), "x").unwrap();
        // A symlink to a directory outside: removed, not followed.
        let outside = root.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        std::fs::write(outside.join("keep"), "k").unwrap();
        std::os::unix::fs::symlink(&outside, ws.join("out")).unwrap();
        remove_marked_tree(&ws).unwrap();
        assert!(!ws.exists());
        assert!(outside.join("keep").exists());
    }
}
