//! `oz agent run` end to end: the real `oz` binary, fake agent CLIs on PATH,
//! and, for managed runs, a real `oz-server` started in the test.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::sync::Arc;
use std::time::Duration;

use oz_cli::client::Client;
use oz_server::state::ServerSettings;
use oz_store::{Catalog, RunPatch, RunState, SqliteStore, Store};
use serde_json::{Value, json};
use tempfile::TempDir;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio_util::sync::CancellationToken;

const OZ: &str = env!("CARGO_BIN_EXE_oz");

/// A scratch directory with `bin/` (the only thing on PATH besides the
/// system directories the test names), `home/` and `work/` (the cwd).
struct Sandbox {
    dir: TempDir,
}

impl Sandbox {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        for sub in ["bin", "home", "work"] {
            std::fs::create_dir(dir.path().join(sub)).expect("mkdir");
        }
        Sandbox { dir }
    }

    fn bin(&self) -> PathBuf {
        self.dir.path().join("bin")
    }

    fn work(&self) -> PathBuf {
        self.dir.path().join("work")
    }

    /// An executable shell script in bin/.
    fn script(&self, name: &str, body: &str) {
        let path = self.bin().join(name);
        std::fs::write(&path, format!("#!/bin/sh\n{body}")).expect("write script");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }

    /// `oz agent run <args>` in work/, with a minimal environment: PATH is
    /// bin/ plus `extra_path`, HOME is home/.
    fn command(&self, extra_path: &str, args: &[&str]) -> tokio::process::Command {
        let mut path = self.bin().display().to_string();
        if !extra_path.is_empty() {
            path = format!("{path}:{extra_path}");
        }
        let mut cmd = tokio::process::Command::new(OZ);
        cmd.arg("agent")
            .arg("run")
            .args(args)
            .current_dir(self.work())
            .env_clear()
            .env("PATH", path)
            .env("HOME", self.dir.path().join("home"))
            .stdin(Stdio::null())
            .kill_on_drop(true);
        cmd
    }

    async fn run(&self, extra_path: &str, args: &[&str]) -> Output {
        self.run_cmd(self.command(extra_path, args)).await
    }

    async fn run_cmd(&self, mut cmd: tokio::process::Command) -> Output {
        tokio::time::timeout(Duration::from_secs(60), cmd.output())
            .await
            .expect("oz agent run finishes within a minute")
            .expect("oz runs")
    }
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn code(out: &Output) -> i32 {
    out.status.code().unwrap_or(-1)
}

// ---- unmanaged: command harness -----------------------------------------

#[tokio::test]
async fn command_output_is_byte_exact_and_exit_code_propagates() {
    let sb = Sandbox::new();
    let script = r"printf 'one\n\377\376 raw\n'; printf 'to stderr\n' >&2; printf 'last line without newline'; exit 7";
    let out = sb
        .run("", &["--harness", "command", "--prompt", script])
        .await;
    assert_eq!(code(&out), 7, "{}", stderr(&out));
    assert_eq!(
        out.stdout,
        b"one\n\xff\xfe raw\nlast line without newline".to_vec()
    );
    let err = stderr(&out);
    assert!(err.contains("to stderr\n"), "{err}");
    assert!(err.contains("command exited with status 7"), "{err}");
}

#[tokio::test]
async fn command_success_and_working_directory() {
    let sb = Sandbox::new();
    let out = sb
        .run("", &["--harness", "command", "--prompt", "pwd"])
        .await;
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let pwd = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let want = std::fs::canonicalize(sb.work()).expect("canonical");
    assert_eq!(std::fs::canonicalize(&pwd).expect("pwd"), want);
}

#[tokio::test]
async fn command_killed_by_a_signal_is_128_plus_n() {
    let sb = Sandbox::new();
    let out = sb
        .run("", &["--harness", "command", "--prompt", "kill -9 $$"])
        .await;
    assert_eq!(code(&out), 137, "{}", stderr(&out));
    assert!(stderr(&out).contains("SIGKILL"), "{}", stderr(&out));
}

#[tokio::test]
async fn a_background_process_holding_the_output_does_not_hang_the_runner() {
    let sb = Sandbox::new();
    let started = std::time::Instant::now();
    let out = sb
        .run(
            "/usr/bin:/bin",
            &["--harness", "command", "--prompt", "sleep 9 & echo done"],
        )
        .await;
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(out.stdout, b"done\n");
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "{:?}",
        started.elapsed()
    );
    assert!(
        stderr(&out).contains("still holds its output open"),
        "{}",
        stderr(&out)
    );
}

#[tokio::test]
async fn default_harness_from_env() {
    let sb = Sandbox::new();
    let mut cmd = sb.command("", &["--prompt", "echo via env"]);
    cmd.env("OZ_DEFAULT_HARNESS", "command");
    let out = sb.run_cmd(cmd).await;
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(out.stdout, b"via env\n");
}

// ---- arguments ------------------------------------------------------------

#[tokio::test]
async fn unknown_options_are_warned_about_and_dropped() {
    let sb = Sandbox::new();
    let out = sb
        .run(
            "",
            &[
                "--share",
                "team:edit",
                "--sandboxed",
                "--harness",
                "command",
                "--prompt",
                "echo ran",
                "--no-computer-use",
                "--skip-initial-turn",
                "--future-flag=value",
                "--other-flag",
                "value",
                "--idle-on-complete",
            ],
        )
        .await;
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(out.stdout, b"ran\n");
    let err = stderr(&out);
    for flag in ["--skip-initial-turn", "--future-flag", "--other-flag"] {
        assert!(
            err.contains(&format!("oz agent run: ignoring unknown option {flag}")),
            "{flag}: {err}"
        );
    }
    assert!(!err.contains("\"value\""), "{err}");
}

#[tokio::test]
async fn bare_idle_on_complete_followed_by_session_sharing_url() {
    let sb = Sandbox::new();
    let out = sb
        .run(
            "",
            &[
                "--harness",
                "command",
                "--prompt",
                "echo ok",
                "--idle-on-complete",
                "--session-sharing-server-url",
                "wss://share.example",
            ],
        )
        .await;
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(out.stdout, b"ok\n");
    assert!(!stderr(&out).contains("ignoring"), "{}", stderr(&out));
}

#[tokio::test]
async fn help_is_printed() {
    let sb = Sandbox::new();
    let out = sb.run("", &["--help"]).await;
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("--task-id <ID>") && text.contains("--harness-config"),
        "{text}"
    );
}

// ---- missing CLIs -----------------------------------------------------------

#[tokio::test]
async fn missing_harness_cli_is_127_with_install_hint() {
    let sb = Sandbox::new();
    for (harness, hint) in [
        ("claude", "npm install -g @anthropic-ai/claude-code"),
        ("codex", "npm install -g @openai/codex"),
        ("gemini", "npm install -g @google/gemini-cli"),
    ] {
        let out = sb.run("", &["--harness", harness, "--prompt", "hi"]).await;
        assert_eq!(code(&out), 127, "{harness}: {}", stderr(&out));
        assert!(stderr(&out).contains(hint), "{harness}: {}", stderr(&out));
    }
}

// ---- claude (a fake one) ------------------------------------------------------

/// A fake `claude` that records its argv and CLAUDE_CONFIG_DIR, prints the
/// given stream-json lines and exits with `exit_code`.
fn fake_claude(sb: &Sandbox, lines: &[&str], exit_code: i32) {
    let args_file = sb.dir.path().join("claude-args");
    let mut body = format!(
        "for a in \"$@\"; do printf '%s\\n' \"$a\"; done > '{}'\necho \"CLAUDE_CONFIG_DIR=${{CLAUDE_CONFIG_DIR-unset}}\" >> '{}'\n",
        args_file.display(),
        args_file.display()
    );
    for line in lines {
        body.push_str(&format!(
            "printf '%s\\n' '{}'\n",
            line.replace('\'', r"'\''")
        ));
    }
    body.push_str(&format!("exit {exit_code}\n"));
    sb.script("claude", &body);
}

fn claude_args(sb: &Sandbox) -> Vec<String> {
    std::fs::read_to_string(sb.dir.path().join("claude-args"))
        .expect("claude ran")
        .lines()
        .map(str::to_owned)
        .collect()
}

const SESSION: &[&str] = &[
    r#"{"type":"system","subtype":"init","session_id":"s","tools":["Bash"]}"#,
    r#"{"type":"assistant","message":{"content":[{"type":"text","text":"I will fix it."},{"type":"tool_use","id":"t1","name":"Edit","input":{}}]}}"#,
    r#"{"type":"user","message":{"content":[{"type":"tool_result","tool_use_id":"t1","content":"ok"}]}}"#,
    "not json at all",
    r#"{"type":"result","subtype":"success","is_error":false,"result":"Fixed the bug."}"#,
];

#[tokio::test]
async fn claude_stream_json_is_rendered() {
    let sb = Sandbox::new();
    fake_claude(&sb, SESSION, 0);
    let out = sb
        .run(
            "",
            &[
                "--harness",
                "claude",
                "--prompt",
                "fix the bug",
                "--model",
                "sonnet",
            ],
        )
        .await;
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "I will fix it.\n→ Edit\nnot json at all\nFixed the bug.\n"
    );
    assert_eq!(
        claude_args(&sb),
        vec![
            "-p",
            "fix the bug",
            "--output-format",
            "stream-json",
            "--verbose",
            "--model",
            "sonnet",
            // Unmanaged: the user's own claude configuration is used.
            "CLAUDE_CONFIG_DIR=unset",
        ]
    );
}

#[tokio::test]
async fn claude_sandboxed_with_mcp() {
    let sb = Sandbox::new();
    fake_claude(&sb, SESSION, 0);
    let out = sb
        .run(
            "",
            &[
                "--harness",
                "claude",
                "--prompt",
                "p",
                "--sandboxed",
                "--mcp",
                r#"{"fs":{"command":"mcp-fs"}}"#,
            ],
        )
        .await;
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(
        claude_args(&sb),
        vec![
            "-p",
            "p",
            "--output-format",
            "stream-json",
            "--verbose",
            "--dangerously-skip-permissions",
            "--mcp-config",
            r#"{"mcpServers":{"fs":{"command":"mcp-fs"}}}"#,
            "CLAUDE_CONFIG_DIR=unset",
        ]
    );
}

#[tokio::test]
async fn claude_exit_status_propagates() {
    let sb = Sandbox::new();
    fake_claude(&sb, &SESSION[..2], 3);
    let out = sb.run("", &["--harness", "claude", "--prompt", "p"]).await;
    assert_eq!(code(&out), 3, "{}", stderr(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "I will fix it.\n→ Edit\n"
    );
}

#[tokio::test]
async fn claude_error_result_fails_the_run_even_with_exit_0() {
    let sb = Sandbox::new();
    fake_claude(
        &sb,
        &[
            r#"{"type":"result","subtype":"error_during_execution","is_error":true,"result":"API Error: overloaded"}"#,
        ],
        0,
    );
    let out = sb.run("", &["--harness", "claude", "--prompt", "p"]).await;
    assert_eq!(code(&out), 1, "{}", stderr(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout)
            .contains("claude reported an error: API Error: overloaded"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(
        stderr(&out).contains("API Error: overloaded"),
        "{}",
        stderr(&out)
    );
}

// ---- custom harnesses -----------------------------------------------------------

#[tokio::test]
async fn custom_harness_from_config() {
    let sb = Sandbox::new();
    sb.script(
        "my-agent",
        "printf 'model=%s prompt=%s token=%s\\n' \"$2\" \"$4\" \"$AGENT_TOKEN\"\n",
    );
    let config = sb.dir.path().join("harnesses.yaml");
    std::fs::write(
        &config,
        "default: mine\nharnesses:\n  mine:\n    command: [my-agent, --model, \"{model}\", --task, \"{prompt}\"]\n    env: {AGENT_TOKEN: t0k}\n    install_hint: get my-agent from example.com\n",
    )
    .expect("write config");
    let config_arg = config.display().to_string();
    let out = sb
        .run(
            "",
            &[
                "--harness-config",
                &config_arg,
                "--prompt",
                "do it",
                "--model",
                "big",
            ],
        )
        .await;
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(out.stdout, b"model=big prompt=do it token=t0k\n");

    // Missing program: 127 and the config's install hint.
    std::fs::remove_file(sb.bin().join("my-agent")).expect("rm");
    let out = sb
        .run("", &["--harness-config", &config_arg, "--prompt", "do it"])
        .await;
    assert_eq!(code(&out), 127, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("get my-agent from example.com"),
        "{}",
        stderr(&out)
    );
}

#[tokio::test]
async fn bad_harness_config_names_the_line() {
    let sb = Sandbox::new();
    let config = sb.dir.path().join("harnesses.yaml");
    std::fs::write(
        &config,
        "harnesses:\n  mine:\n    command: [x]\n    comand: [y]\n",
    )
    .expect("write");
    let mut cmd = sb.command("", &["--harness", "command", "--prompt", "true"]);
    cmd.env("OZ_HARNESS_CONFIG", &config);
    let out = sb.run_cmd(cmd).await;
    assert_eq!(code(&out), 2, "{}", stderr(&out));
    assert!(stderr(&out).contains("line 4"), "{}", stderr(&out));

    std::fs::write(&config, "harnesses:\n  codex:\n    command: [x]\n").expect("write");
    let mut cmd = sb.command("", &["--harness", "command", "--prompt", "true"]);
    cmd.env("OZ_HARNESS_CONFIG", &config);
    let out = sb.run_cmd(cmd).await;
    assert_eq!(code(&out), 2, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("line 2") && stderr(&out).contains("built-in"),
        "{}",
        stderr(&out)
    );
}

// ---- signals --------------------------------------------------------------------

#[tokio::test]
async fn sigterm_to_the_runner_reaches_the_harness() {
    let sb = Sandbox::new();
    let script = "trap 'echo got TERM; exit 5' TERM; echo ready; while :; do sleep 0.1; done";
    let mut cmd = sb.command(
        "/usr/bin:/bin",
        &["--harness", "command", "--prompt", script],
    );
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn oz");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let first = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
        .await
        .expect("ready in time")
        .expect("read");
    assert_eq!(first.as_deref(), Some("ready"));
    let pid = child.id().and_then(|p| i32::try_from(p).ok()).expect("pid");
    // The runner only: the harness is in its own process group.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGTERM,
    )
    .expect("signal");
    let next = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
        .await
        .expect("harness answers in time")
        .expect("read");
    assert_eq!(next.as_deref(), Some("got TERM"));
    let status = tokio::time::timeout(Duration::from_secs(20), child.wait())
        .await
        .expect("exit in time")
        .expect("wait");
    assert_eq!(status.code(), Some(5));
}

// ---- managed mode against a real server ---------------------------------------------

struct Server {
    _dir: TempDir,
    store: Arc<SqliteStore>,
    base: String,
    admin: Client,
    stop: CancellationToken,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn server() -> Server {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Arc::new(
        SqliteStore::open(&dir.path().join("oz.db"))
            .await
            .expect("open store"),
    );
    let (admin_key, _) = oz_server::keys::bootstrap(store.as_ref(), dir.path())
        .await
        .expect("bootstrap")
        .expect("fresh store");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let root = format!("http://{addr}");
    let stop = CancellationToken::new();
    let dyn_store: Arc<dyn Store> = store.clone();
    let settings = ServerSettings {
        public_url: root.clone(),
        ..Default::default()
    };
    let state = oz_server::state(dyn_store, settings, stop.clone())
        .await
        .expect("state");
    tokio::spawn(oz_server::serve(listener, state));
    let _ = rustls::crypto::ring::default_provider().install_default();
    let base = format!("{root}/api/v1");
    let admin = Client::new(&base, &admin_key).expect("client");
    Server {
        _dir: dir,
        store,
        base,
        admin,
        stop,
    }
}

impl Server {
    /// Create a run and hand it to a pretend worker: QUEUED → PENDING →
    /// CLAIMED with a run token. Returns (run id, token).
    async fn claimed_run(&self, prompt: &str, config: Value) -> (String, String) {
        self.claimed_run_in(prompt, config, Some("exec-1")).await
    }

    /// [`Server::claimed_run`] with the given execution id (or none).
    async fn claimed_run_in(
        &self,
        prompt: &str,
        config: Value,
        execution: Option<&str>,
    ) -> (String, String) {
        let created = self
            .admin
            .create_run(&json!({ "prompt": prompt, "config": config }))
            .await
            .expect("create run");
        let id = created.run_id;
        let token = oz_server::auth::new_secret(oz_server::auth::RUN_TOKEN_PREFIX);
        let now = oz_server::now();
        let patch = RunPatch {
            token_hash: Some(Some(oz_server::auth::hash(&token))),
            execution_id: Some(execution.map(str::to_owned)),
            assigned_at: Some(Some(now.clone())),
            ..Default::default()
        };
        self.store
            .transition(&id, &[RunState::Queued], RunState::Pending, patch, &now)
            .await
            .expect("store")
            .expect("QUEUED → PENDING");
        self.store
            .transition(
                &id,
                &[RunState::Pending],
                RunState::Claimed,
                RunPatch::default(),
                &now,
            )
            .await
            .expect("store")
            .expect("PENDING → CLAIMED");
        (id, token)
    }

    async fn run(&self, id: &str) -> oz_store::Run {
        self.store
            .get_run(id)
            .await
            .expect("store")
            .expect("run exists")
    }
}

/// The worker's argv for a run, then the runner's environment.
fn managed_command(
    sb: &Sandbox,
    srv: &Server,
    id: &str,
    token: &str,
    extra: &[&str],
) -> tokio::process::Command {
    let root = srv.base.trim_end_matches("/api/v1").to_owned();
    let mut args = vec![
        "--task-id",
        id,
        "--sandboxed",
        "--server-root-url",
        root.as_str(),
    ];
    args.extend_from_slice(extra);
    args.push("--idle-on-complete");
    let mut cmd = sb.command("/usr/bin:/bin", &args);
    cmd.env("WARP_API_KEY", token)
        .env("OZ_API_BASE_URL", &srv.base)
        .env("TASK_ID", id);
    cmd
}

fn has_git() -> bool {
    std::process::Command::new("git")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A git repository in `dir` on branch `branch` with one commit.
fn git_repo(dir: &Path, branch: &str) {
    let run = |args: &[&str]| {
        let ok = std::process::Command::new("git")
            .args(args)
            .current_dir(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "git {args:?}");
    };
    run(&["init", "-q", "-b", branch]);
    run(&[
        "-c",
        "user.name=t",
        "-c",
        "user.email=t@example.com",
        "commit",
        "-q",
        "--allow-empty",
        "-m",
        "init",
    ]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn managed_command_run_reports_progress_and_pull_request() {
    let srv = server().await;
    let sb = Sandbox::new();
    let branch = if has_git() {
        std::fs::create_dir(sb.work().join("repo")).expect("mkdir");
        git_repo(&sb.work().join("repo"), "oz/fix-42");
        "oz/fix-42"
    } else {
        ""
    };
    let prompt = "echo 'Opened https://github.com/acme/app/pull/42'; echo 'again: https://github.com/acme/app/pull/42/files' >&2; exit 3";
    let (id, token) = srv
        .claimed_run(
            prompt,
            json!({ "worker_host": "w1", "harness": { "type": "command" } }),
        )
        .await;

    let out = sb
        .run_cmd(managed_command(
            &sb,
            &srv,
            &id,
            &token,
            &["--no-computer-use", "--harness", "command"],
        ))
        .await;
    assert_eq!(code(&out), 3, "{}", stderr(&out));
    assert_eq!(out.stdout, b"Opened https://github.com/acme/app/pull/42\n");

    let run = srv.run(&id).await;
    assert_eq!(run.state, RunState::Inprogress);
    assert!(run.started_at.is_some());
    assert_eq!(run.artifacts.len(), 1, "{:?}", run.artifacts);
    let artifact = &run.artifacts[0];
    assert_eq!(artifact["artifact_type"], "PULL_REQUEST");
    assert_eq!(
        artifact["data"]["url"],
        "https://github.com/acme/app/pull/42"
    );
    assert_eq!(artifact["data"]["branch"], branch);
    let status = run.status_message.expect("status message");
    assert_eq!(status.message, "command exited with status 3");

    // The REST view agrees.
    let item = srv.admin.get_run(&id).await.expect("get run");
    assert_eq!(item.artifacts.map(|a| a.len()), Some(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn managed_claude_run_uses_harness_model_and_workspace_state() {
    let srv = server().await;
    let sb = Sandbox::new();
    fake_claude(
        &sb,
        &[
            r#"{"type":"result","subtype":"success","is_error":false,"result":"PR: https://gitlab.com/g/p/-/merge_requests/7"}"#,
        ],
        0,
    );
    let config = json!({
        "worker_host": "w1",
        "model_id": "oz-model",
        "harness": { "type": "claude", "model_id": "claude-opus-4" }
    });
    let (id, token) = srv.claimed_run("fix the bug", config).await;
    let out = sb
        .run_cmd(managed_command(
            &sb,
            &srv,
            &id,
            &token,
            &["--no-computer-use", "--harness", "claude"],
        ))
        .await;
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "PR: https://gitlab.com/g/p/-/merge_requests/7\n"
    );
    let work = std::fs::canonicalize(sb.work())
        .expect("canonical")
        .display()
        .to_string();
    assert_eq!(
        claude_args(&sb),
        vec![
            "-p".to_owned(),
            "fix the bug".to_owned(),
            "--output-format".to_owned(),
            "stream-json".to_owned(),
            "--verbose".to_owned(),
            "--model".to_owned(),
            "claude-opus-4".to_owned(),
            "--dangerously-skip-permissions".to_owned(),
            format!("CLAUDE_CONFIG_DIR={work}/.claude"),
        ]
    );
    let run = srv.run(&id).await;
    assert_eq!(run.state, RunState::Inprogress);
    assert_eq!(run.artifacts.len(), 1, "{:?}", run.artifacts);
    assert_eq!(
        run.artifacts[0]["data"]["url"],
        "https://gitlab.com/g/p/-/merge_requests/7"
    );
    // Success leaves the status message alone.
    assert!(
        run.status_message
            .as_ref()
            .is_none_or(|s| !s.message.contains("claude")),
        "{:?}",
        run.status_message
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn managed_oz_harness_is_refused_and_reported() {
    let srv = server().await;
    let sb = Sandbox::new();
    let (id, token) = srv
        .claimed_run(
            "do things",
            json!({ "worker_host": "w1", "model_id": "auto" }),
        )
        .await;
    let out = sb
        .run_cmd(managed_command(
            &sb,
            &srv,
            &id,
            &token,
            &["--model", "auto", "--computer-use"],
        ))
        .await;
    assert_eq!(code(&out), 2, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("built-in oz harness"),
        "{}",
        stderr(&out)
    );
    let run = srv.run(&id).await;
    assert_eq!(run.state, RunState::Claimed);
    let status = run.status_message.expect("status message");
    assert!(
        status.message.contains("OZ_DEFAULT_HARNESS"),
        "{}",
        status.message
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn managed_missing_cli_is_127_and_reported() {
    let srv = server().await;
    let sb = Sandbox::new();
    let (id, token) = srv
        .claimed_run(
            "p",
            json!({ "worker_host": "w1", "harness": { "type": "codex" } }),
        )
        .await;
    let mut cmd = managed_command(&sb, &srv, &id, &token, &["--harness", "codex"]);
    // Only bin/ on PATH: no codex anywhere.
    cmd.env("PATH", sb.bin());
    let out = sb.run_cmd(cmd).await;
    assert_eq!(code(&out), 127, "{}", stderr(&out));
    let run = srv.run(&id).await;
    let status = run.status_message.expect("status message");
    assert!(
        status.message.contains("npm install -g @openai/codex"),
        "{}",
        status.message
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn managed_with_a_bad_token_exits_1() {
    let srv = server().await;
    let sb = Sandbox::new();
    let (id, _token) = srv
        .claimed_run(
            "p",
            json!({ "worker_host": "w1", "harness": { "type": "command" } }),
        )
        .await;
    let out = sb
        .run_cmd(managed_command(&sb, &srv, &id, "ozr_wrong", &[]))
        .await;
    assert_eq!(code(&out), 1, "{}", stderr(&out));
    assert!(stderr(&out).contains("cannot read run"), "{}", stderr(&out));
}

// ---- managed mode: artifacts and handoff files ------------------------------------

/// GET a download URL with no key at all.
async fn fetch_without_key(url: &str) -> Vec<u8> {
    let resp = reqwest::get(url).await.expect("download");
    assert!(resp.status().is_success(), "{url}: {}", resp.status());
    resp.bytes().await.expect("body").to_vec()
}

/// The artifact entry of `run` whose `data.filepath` (or, for a PLAN or a
/// SCREENSHOT, whose type) matches.
fn entry<'a>(artifacts: &'a [Value], kind: &str, filepath: Option<&str>) -> &'a Value {
    artifacts
        .iter()
        .find(|a| {
            a["artifact_type"] == kind
                && filepath.is_none_or(|p| a["data"]["filepath"].as_str() == Some(p))
        })
        .unwrap_or_else(|| panic!("no {kind} {filepath:?} in {artifacts:#?}"))
}

const PLAN: &str = "# Plan\n\n1. Fix the bug\n";

/// A claimed run (with `execution`, or none) whose command harness runs
/// `script` under `oz agent run` in managed mode.
async fn managed_command_run(
    sb: &Sandbox,
    srv: &Server,
    script: &str,
    execution: Option<&str>,
) -> (String, Output) {
    let (id, token) = srv
        .claimed_run_in(
            script,
            json!({ "worker_host": "w1", "harness": { "type": "command" } }),
            execution,
        )
        .await;
    let out = sb
        .run_cmd(managed_command(
            sb,
            srv,
            &id,
            &token,
            &["--harness", "command"],
        ))
        .await;
    (id, out)
}

/// `GET /agent/artifacts/{uid}` of an artifact entry of a run.
async fn artifact(srv: &Server, entry: &Value) -> Value {
    let uid = entry["data"]["artifact_uid"].as_str().expect("uid");
    srv.admin
        .get(&format!("/agent/artifacts/{uid}"))
        .await
        .expect("get artifact")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn managed_run_uploads_artifacts_and_handoff_files() {
    let srv = server().await;
    let sb = Sandbox::new();
    let script = r#"
echo "dirs: $OZ_ARTIFACTS_DIR $OZ_HANDOFF_DIR"
mkdir -p "$OZ_ARTIFACTS_DIR/sub" "$OZ_ARTIFACTS_DIR/screenshots"
printf 'all good\n' > "$OZ_ARTIFACTS_DIR/report.txt"
printf '{"n": 1}' > "$OZ_ARTIFACTS_DIR/sub/data.json"
printf '# Plan\n\n1. Fix the bug\n' > "$OZ_ARTIFACTS_DIR/plan.md"
printf 'odd name' > "$OZ_ARTIFACTS_DIR/sub/a b&c=d%.txt"
printf '\211PNG\r\n\032\n\377' > "$OZ_ARTIFACTS_DIR/screenshots/home.png"
printf 'diff --git a/x b/x\n' > "$OZ_HANDOFF_DIR/snapshot.patch"
exit 5
"#;
    let (id, out) = managed_command_run(&sb, &srv, script, Some("exec-1")).await;
    // A failed harness still has its files uploaded, and keeps its status.
    assert_eq!(code(&out), 5, "{}", stderr(&out));
    let err = stderr(&out);
    assert!(!err.contains("warning"), "{err}");
    assert!(
        err.contains("oz agent run: uploaded 5 artifacts and 1 handoff file\n"),
        "{err}"
    );
    let work = std::fs::canonicalize(sb.work()).expect("canonical");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!(
            "dirs: {} {}\n",
            work.join(".oz/artifacts").display(),
            work.join(".oz/handoff").display()
        )
    );

    let item = srv.admin.get_run(&id).await.expect("get run");
    let artifacts = item.artifacts.expect("artifacts");
    assert_eq!(artifacts.len(), 5, "{artifacts:#?}");
    for (filepath, filename, mime, content) in [
        ("report.txt", "report.txt", "text/plain", &b"all good\n"[..]),
        (
            "sub/data.json",
            "data.json",
            "application/json",
            b"{\"n\": 1}",
        ),
        (
            "sub/a b&c=d%.txt",
            "a b&c=d%.txt",
            "text/plain",
            b"odd name",
        ),
    ] {
        let e = entry(&artifacts, "FILE", Some(filepath));
        assert_eq!(e["data"]["filename"], filename, "{e}");
        assert_eq!(e["data"]["mime_type"], mime, "{e}");
        assert_eq!(e["data"]["size_bytes"], content.len(), "{e}");
        let got = artifact(&srv, e).await;
        assert_eq!(got["data"]["filepath"], filepath, "{got}");
        let url = got["data"]["download_url"].as_str().expect("download_url");
        assert_eq!(fetch_without_key(url).await, content, "{filepath}");
    }

    let got = artifact(&srv, entry(&artifacts, "PLAN", None)).await;
    assert_eq!(got["data"]["content"], PLAN, "{got}");
    assert_eq!(got["data"]["content_type"], "text/markdown", "{got}");

    let shot = entry(&artifacts, "SCREENSHOT", None);
    assert_eq!(shot["data"]["mime_type"], "image/png", "{shot}");
    let got = artifact(&srv, shot).await;
    let url = got["data"]["download_url"].as_str().expect("download_url");
    assert_eq!(fetch_without_key(url).await, b"\x89PNG\r\n\x1a\n\xff");

    // The handoff file belongs to this execution; the API lists it once the
    // execution has ended.
    let stored = srv.store.list_handoff(&id).await.expect("store");
    assert_eq!(stored.len(), 1, "{stored:?}");
    assert_eq!(stored[0].filename, "snapshot.patch");
    assert_eq!(stored[0].execution_id, "exec-1");
    assert_eq!(stored[0].mime_type.as_deref(), Some("text/x-diff"));
    let now = oz_server::now();
    srv.store
        .transition(
            &id,
            &[RunState::Inprogress],
            RunState::Failed,
            RunPatch::default(),
            &now,
        )
        .await
        .expect("store")
        .expect("INPROGRESS → FAILED");
    let listed: Value = srv
        .admin
        .get(&format!("/agent/runs/{id}/handoff/attachments"))
        .await
        .expect("list handoff");
    let attachments = listed["attachments"].as_array().expect("attachments");
    assert_eq!(attachments.len(), 1, "{listed}");
    assert_eq!(attachments[0]["filename"], "snapshot.patch");
    let url = attachments[0]["download_url"].as_str().expect("url");
    assert_eq!(fetch_without_key(url).await, b"diff --git a/x b/x\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_upload_is_a_warning_and_keeps_the_exit_code() {
    let srv = server().await;
    let sb = Sandbox::new();
    let script = r#"
printf 'kept' > "$OZ_ARTIFACTS_DIR/kept.txt"
ln -s /etc/hostname "$OZ_ARTIFACTS_DIR/link.txt"
printf 'x' > "$OZ_HANDOFF_DIR/state.patch"
"#;
    // No execution: the server refuses handoff files (409).
    let (id, out) = managed_command_run(&sb, &srv, script, None).await;
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("warning: .oz/artifacts/link.txt is a symbolic link"),
        "{err}"
    );
    assert!(
        err.contains("warning: cannot upload .oz/handoff/state.patch: "),
        "{err}"
    );
    assert!(
        err.contains(
            "oz agent run: warning: uploaded 1 artifact and 0 handoff files; 1 upload failed; 1 file skipped\n"
        ),
        "{err}"
    );
    let run = srv.run(&id).await;
    assert_eq!(run.artifacts.len(), 1, "{:?}", run.artifacts);
    assert_eq!(run.artifacts[0]["data"]["filepath"], "kept.txt");
    // The failed upload does not make the run look failed.
    assert!(
        run.status_message
            .as_ref()
            .is_none_or(|s| !s.message.contains("upload")),
        "{:?}",
        run.status_message
    );
}
