//! The Direct backend end to end: what the agent and the hooks see, the env
//! file, hook failures and timeouts, cleanup, target_dir mode, the startup
//! sweep of leftovers, and a missing `oz` binary (T11-T14).
mod common;
use common::*;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use nix::sys::signal::Signal;
use oz_protocol::{FailureReason, TaskAssignment, TaskCompleted, TaskFailed, WorkerMessage};

// ---------------------------------------------------------------------------
// Helpers local to this file.
// ---------------------------------------------------------------------------

/// Direct-backend YAML pointing at the sandbox's workspace root and fake
/// agent. `top` is prepended (top-level keys); `direct` is appended inside
/// `backend.direct` (lines indented by four spaces).
fn yaml(sb: &Sandbox, top: &str, direct: &str) -> String {
    format!(
        "{top}backend:\n  direct:\n    workspace_root: {}\n    oz_path: {}\n    grace_period: 2s\n{direct}",
        sb.workspace_root().display(),
        sb.agent_path().display()
    )
}

/// Write a hook script into the sandbox and return the command that runs it.
fn hook(sb: &Sandbox, name: &str, body: &str) -> String {
    let path = sb.write(name, body);
    format!("sh {}", path.display())
}

/// A directory under the sandbox where hooks write what they saw.
fn hooks_dir(sb: &Sandbox) -> PathBuf {
    let d = sb.path().join("hooks");
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn with_env(mut a: TaskAssignment, k: &str, v: &str) -> TaskAssignment {
    a.env_vars.insert(k.to_owned(), v.to_owned());
    a
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

fn env_file(path: &Path) -> BTreeMap<String, String> {
    parse_env_dump(&read(path))
}

fn s(p: &Path) -> String {
    p.to_str().unwrap().to_owned()
}

/// The worker's log without ANSI styling (the text format colours field
/// names even when stderr is a file).
fn plain_log(sb: &Sandbox) -> String {
    let raw = sb.log();
    let mut out = String::with_capacity(raw.len());
    let mut chars = raw.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            // CSI: ESC [ parameters... final letter.
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Assign `a` and return its terminal frame (after checking the claim).
async fn run(cp: &mut ControlPlane, a: TaskAssignment) -> WorkerMessage {
    let id = a.task_id.clone();
    cp.assign(a);
    match cp.frame().await {
        WorkerMessage::TaskClaimed(c) => assert_eq!(c.task_id, id),
        other => panic!("expected task_claimed for {id}, got {other:?}"),
    }
    cp.terminal(&id).await
}

fn completed(m: WorkerMessage) -> TaskCompleted {
    match m {
        WorkerMessage::TaskCompleted(c) => {
            assert_eq!(c.message, "Task completed successfully");
            assert_eq!(c.task_state, None);
            c
        }
        other => panic!("expected task_completed, got {other:?}"),
    }
}

fn failed(m: WorkerMessage) -> TaskFailed {
    match m {
        WorkerMessage::TaskFailed(f) => f,
        other => panic!("expected task_failed, got {other:?}"),
    }
}

/// SIGTERM the (idle) worker and expect a clean exit.
async fn stop(mut w: WorkerProc, sb: &Sandbox) {
    w.signal(Signal::SIGTERM);
    let status = w.wait().await;
    assert_eq!(status.code(), Some(0), "worker log:\n{}", plain_log(sb));
}

fn listing(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// A pid that surely belongs to no live process: a child that already exited
/// and was reaped.
fn dead_pid() -> u32 {
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let pid = child.id();
    child.wait().unwrap();
    pid
}

// ---------------------------------------------------------------------------
// 1. The agent's minimal environment.
// ---------------------------------------------------------------------------

#[tokio::test]
async fn agent_gets_a_minimal_env_with_every_task_layer() {
    let sb = Sandbox::new();
    let mut cp = ControlPlane::start().await;
    let home = sb.path().join("home");
    let tmp = sb.path().join("tmp");
    std::fs::create_dir_all(&home).unwrap();
    std::fs::create_dir_all(&tmp).unwrap();
    let path_var = format!(
        "{}:/usr/local/bin:/usr/bin:/bin",
        sb.path().join("xbin").display()
    );
    let setup = hook(
        &sb,
        "setup.sh",
        "echo FROM_ENV_FILE=file-value >> \"$OZ_ENVIRONMENT_FILE\"\n",
    );
    let config = yaml(
        &sb,
        "",
        &format!(
            "    setup_command: \"{setup}\"\n    environment:\n      - name: CFG_VALUE\n        value: from-yaml\n      - name: CFG_INHERITED\n      - name: OVERRIDDEN\n        value: from-yaml\n"
        ),
    );
    let w = WorkerBuilder::new(&sb, &cp)
        .config(Some(config))
        .env("HOME", &s(&home))
        .env("TMPDIR", &s(&tmp))
        .env("PATH", &path_var)
        .env("WORKER_ONLY_VAR", "worker-only")
        .env("CFG_INHERITED", "inherited-from-worker")
        .env("BARE_VAR", "bare-from-worker")
        .args(["-e", "COMMA_VAR=a,b,c=d"])
        .args(["-e", "OVERRIDDEN=from-cli"])
        .args(["-e", "BARE_VAR"])
        .args(["-e", "UNSET_BARE_VAR"])
        .spawn();
    cp.connected().await;

    let a = with_env(assignment("env-1"), "SERVER_VAR", "from-server");
    completed(run(&mut cp, a).await);

    let ws = sb.workspace_root().join("env-1");
    let env = sb.agent_env("env-1");
    let marker = env.get("OZ_RUN_MARKER").cloned().unwrap_or_default();
    assert!(!marker.is_empty(), "OZ_RUN_MARKER must be set: {env:?}");
    let expected: BTreeMap<String, String> = [
        ("HOME", s(&home)),
        ("TMPDIR", s(&tmp)),
        ("PATH", path_var.clone()),
        ("TASK_ID", "env-1".into()),
        ("GIT_TERMINAL_PROMPT", "0".into()),
        ("GH_PROMPT_DISABLED", "1".into()),
        ("WARP_SERVER_ROOT_URL", cp.url()),
        ("SERVER_VAR", "from-server".into()),
        ("CFG_VALUE", "from-yaml".into()),
        ("CFG_INHERITED", "inherited-from-worker".into()),
        ("OVERRIDDEN", "from-cli".into()),
        ("COMMA_VAR", "a,b,c=d".into()),
        ("BARE_VAR", "bare-from-worker".into()),
        // A bare `-e` of a variable the worker does not have: set, empty.
        ("UNSET_BARE_VAR", String::new()),
        ("FROM_ENV_FILE", "file-value".into()),
        ("GIT_CONFIG_GLOBAL", s(&ws.join(".gitconfig"))),
        ("OZ_RUN_MARKER", marker),
        // Exported by the fake agent's own shell (dash), not by the worker.
        ("PWD", s(&ws)),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    assert_eq!(env, expected);
    for leaked in [
        "WORKER_ONLY_VAR",
        "WARP_API_KEY",
        "OZ_WORKSPACE_ROOT",
        "OZ_RUN_ID",
        "OZ_ENVIRONMENT_FILE",
        "OZ_WORKER_BACKEND",
        "OZ_TASK_RESULT",
    ] {
        assert!(!env.contains_key(leaked), "{leaked} leaked into the agent");
    }
    stop(w, &sb).await;
}

// ---------------------------------------------------------------------------
// 2. The worker's API key; what setup and teardown see.
// ---------------------------------------------------------------------------

#[tokio::test]
async fn worker_api_key_reaches_no_task_process_and_hooks_get_their_env() {
    let sb = Sandbox::new();
    let mut cp = ControlPlane::start().await;
    let hooks = hooks_dir(&sb);
    let setup = hook(
        &sb,
        "setup.sh",
        &format!("env > {}/setup-$OZ_RUN_ID.env\n", hooks.display()),
    );
    let teardown = hook(
        &sb,
        "teardown.sh",
        &format!("env > {}/teardown-$OZ_RUN_ID.env\n", hooks.display()),
    );
    let config = yaml(
        &sb,
        "",
        &format!("    setup_command: \"{setup}\"\n    teardown_command: \"{teardown}\"\n"),
    );
    let w = WorkerBuilder::new(&sb, &cp)
        .config(Some(config))
        .env("WORKER_ONLY_VAR", "worker-only")
        .spawn();
    cp.connected().await;

    // Without a server-provided key.
    let a = with_env(assignment("nokey"), "SERVER_VAR", "from-server");
    completed(run(&mut cp, a).await);
    // With a run-scoped key from the server.
    let a = with_env(assignment("withkey"), "WARP_API_KEY", "run-scoped-key");
    let a = with_env(a, "SERVER_VAR", "from-server");
    completed(run(&mut cp, a).await);

    for id in ["nokey", "withkey"] {
        let agent_raw = sb.record(id, "env").unwrap();
        let setup_raw = read(&hooks.join(format!("setup-{id}.env")));
        let teardown_raw = read(&hooks.join(format!("teardown-{id}.env")));
        for (who, text) in [
            ("agent", &agent_raw),
            ("setup", &setup_raw),
            ("teardown", &teardown_raw),
        ] {
            assert!(
                !text.contains("wk-test-key"),
                "the worker's API key reached the {who} of {id}:\n{text}"
            );
        }

        let ws = sb.workspace_root().join(id);
        let setup_env = parse_env_dump(&setup_raw);
        let teardown_env = parse_env_dump(&teardown_raw);

        // Setup: the full worker env, the task env and the OZ_* hook vars.
        let get = |m: &BTreeMap<String, String>, k: &str| m.get(k).cloned();
        assert_eq!(
            get(&setup_env, "WORKER_ONLY_VAR").as_deref(),
            Some("worker-only")
        );
        assert_eq!(get(&setup_env, "OZ_WORKSPACE_ROOT"), Some(s(&ws)));
        assert_eq!(get(&setup_env, "OZ_RUN_ID").as_deref(), Some(id));
        assert_eq!(
            get(&setup_env, "OZ_WORKER_BACKEND").as_deref(),
            Some("direct")
        );
        let env_file_path = get(&setup_env, "OZ_ENVIRONMENT_FILE").expect("OZ_ENVIRONMENT_FILE");
        let env_file_path = PathBuf::from(env_file_path);
        assert_eq!(env_file_path.parent(), Some(ws.as_path()));
        assert!(
            env_file_path
                .file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("oz-env-"),
            "{env_file_path:?}"
        );
        assert_eq!(get(&setup_env, "TASK_ID").as_deref(), Some(id));
        assert_eq!(
            get(&setup_env, "SERVER_VAR").as_deref(),
            Some("from-server")
        );
        assert_eq!(
            get(&setup_env, "GIT_CONFIG_GLOBAL"),
            Some(s(&ws.join(".gitconfig")))
        );

        // Teardown: the worker env plus the documented OZ_* vars, and none
        // of the task env.
        assert_eq!(
            get(&teardown_env, "WORKER_ONLY_VAR").as_deref(),
            Some("worker-only")
        );
        assert_eq!(get(&teardown_env, "OZ_WORKSPACE_ROOT"), Some(s(&ws)));
        assert_eq!(get(&teardown_env, "OZ_RUN_ID").as_deref(), Some(id));
        assert_eq!(
            get(&teardown_env, "OZ_WORKER_BACKEND").as_deref(),
            Some("direct")
        );
        assert_eq!(
            get(&teardown_env, "GIT_CONFIG_GLOBAL"),
            Some(s(&ws.join(".gitconfig")))
        );
        assert_eq!(
            get(&teardown_env, "OZ_TASK_RESULT").as_deref(),
            Some("succeeded")
        );
        for absent in [
            "OZ_ENVIRONMENT_FILE",
            "SERVER_VAR",
            "TASK_ID",
            "WARP_API_KEY",
        ] {
            assert!(
                !teardown_env.contains_key(absent),
                "teardown of {id} must not see {absent}"
            );
        }
    }

    // Without a server key nobody gets one; with one, setup and agent get it.
    assert!(!sb.agent_env("nokey").contains_key("WARP_API_KEY"));
    assert!(!env_file(&hooks.join("setup-nokey.env")).contains_key("WARP_API_KEY"));
    assert_eq!(
        sb.agent_env("withkey")
            .get("WARP_API_KEY")
            .map(String::as_str),
        Some("run-scoped-key")
    );
    assert_eq!(
        env_file(&hooks.join("setup-withkey.env"))
            .get("WARP_API_KEY")
            .map(String::as_str),
        Some("run-scoped-key")
    );
    stop(w, &sb).await;
}

// ---------------------------------------------------------------------------
// 3. The env file written by setup (T14).
// ---------------------------------------------------------------------------

#[tokio::test]
async fn env_file_good_lines_apply_around_a_malformed_one() {
    let sb = Sandbox::new();
    let mut cp = ControlPlane::start().await;
    let setup = hook(
        &sb,
        "setup.sh",
        r#"cat >> "$OZ_ENVIRONMENT_FILE" <<'EOF'
# written by setup
GOOD_ONE=1
export GOOD_TWO="two words"
this line is not an assignment
GOOD_THREE: three
PATH=/opt/from-env-file/bin:/usr/local/bin:/usr/bin:/bin
HOME=/home/from-env-file
SERVER_VAR=from-env-file
GIT_CONFIG_GLOBAL=/tmp/evil-gitconfig
EOF
"#,
    );
    let config = yaml(&sb, "", &format!("    setup_command: \"{setup}\"\n"));
    let w = WorkerBuilder::new(&sb, &cp).config(Some(config)).spawn();
    cp.connected().await;

    let a = with_env(assignment("envfile"), "SERVER_VAR", "from-server");
    completed(run(&mut cp, a).await);

    let ws = sb.workspace_root().join("envfile");
    let env = sb.agent_env("envfile");
    let get = |k: &str| env.get(k).map(String::as_str);
    assert_eq!(get("GOOD_ONE"), Some("1"));
    assert_eq!(get("GOOD_TWO"), Some("two words"));
    assert_eq!(get("GOOD_THREE"), Some("three"));
    // The env file may override PATH-like vars and server values...
    assert_eq!(
        get("PATH"),
        Some("/opt/from-env-file/bin:/usr/local/bin:/usr/bin:/bin")
    );
    assert_eq!(get("HOME"), Some("/home/from-env-file"));
    assert_eq!(get("SERVER_VAR"), Some("from-env-file"));
    // ...but never the isolated git config.
    assert_eq!(
        get("GIT_CONFIG_GLOBAL"),
        Some(s(&ws.join(".gitconfig")).as_str())
    );
    assert!(
        !env.keys().any(|k| k.contains(' ') || k.starts_with("this")),
        "the malformed line produced a variable: {env:?}"
    );

    // The warning names the malformed line (line 4 of the file).
    let log = plain_log(&sb);
    assert!(
        log.lines()
            .any(|l| l.contains("WARN") && l.contains("malformed") && l.contains("line=4")),
        "no warning naming line 4 in the log:\n{log}"
    );
    stop(w, &sb).await;
}

// ---------------------------------------------------------------------------
// 4-6. Hook failures and OZ_TASK_RESULT (T12, T13).
// ---------------------------------------------------------------------------

#[tokio::test]
async fn setup_failure_fails_the_task_skips_the_agent_and_still_tears_down() {
    let sb = Sandbox::new();
    let mut cp = ControlPlane::start().await;
    let hooks = hooks_dir(&sb);
    let setup = hook(&sb, "setup.sh", "echo setting up; exit 2\n");
    let teardown = hook(
        &sb,
        "teardown.sh",
        &format!(
            "echo \"$OZ_TASK_RESULT\" > {}/teardown-$OZ_RUN_ID\n",
            hooks.display()
        ),
    );
    let config = yaml(
        &sb,
        "",
        &format!("    setup_command: \"{setup}\"\n    teardown_command: \"{teardown}\"\n"),
    );
    let w = WorkerBuilder::new(&sb, &cp).config(Some(config)).spawn();
    cp.connected().await;

    let f = failed(run(&mut cp, assignment("setup-fails")).await);
    assert_eq!(f.task_id, "setup-fails");
    assert_eq!(f.failure_reason, Some(FailureReason::SetupCommand));
    assert_eq!(f.exit_code, None);
    assert_eq!(
        f.message,
        "Failed to execute task: setup command failed: exit status 2"
    );
    assert!(
        !sb.records().join("setup-fails").exists(),
        "the agent must not run after a failed setup"
    );
    assert_eq!(read(&hooks.join("teardown-setup-fails")).trim(), "failed");
    assert!(!sb.workspace_root().join("setup-fails").exists());
    stop(w, &sb).await;
}

#[tokio::test]
async fn teardown_failure_only_warns() {
    let sb = Sandbox::new();
    let mut cp = ControlPlane::start().await;
    let hooks = hooks_dir(&sb);
    let teardown = hook(
        &sb,
        "teardown.sh",
        &format!("touch {}/teardown-ran; exit 1\n", hooks.display()),
    );
    let config = yaml(&sb, "", &format!("    teardown_command: \"{teardown}\"\n"));
    let w = WorkerBuilder::new(&sb, &cp).config(Some(config)).spawn();
    cp.connected().await;

    let c = completed(run(&mut cp, assignment("td-fails")).await);
    assert_eq!(c.task_id, "td-fails");
    assert!(hooks.join("teardown-ran").exists());
    let log = plain_log(&sb);
    assert!(
        log.lines()
            .any(|l| l.contains("WARN") && l.contains("teardown command failed")),
        "no teardown warning in the log:\n{log}"
    );
    // The workspace is still removed.
    assert!(!sb.workspace_root().join("td-fails").exists());
    stop(w, &sb).await;
}

#[tokio::test]
async fn teardown_learns_the_task_result() {
    let sb = Sandbox::new();
    let mut cp = ControlPlane::start().await;
    let hooks = hooks_dir(&sb);
    let teardown = hook(
        &sb,
        "teardown.sh",
        &format!(
            "echo \"$OZ_TASK_RESULT\" > {}/result-$OZ_RUN_ID\n",
            hooks.display()
        ),
    );
    let config = yaml(&sb, "", &format!("    teardown_command: \"{teardown}\"\n"));
    let w = WorkerBuilder::new(&sb, &cp).config(Some(config)).spawn();
    cp.connected().await;

    completed(run(&mut cp, assignment("ok")).await);
    let a = with_env(assignment("bad"), "FAKE_AGENT_EXIT", "1");
    let f = failed(run(&mut cp, a).await);
    assert_eq!(f.failure_reason, Some(FailureReason::AgentInvocation));
    assert_eq!(f.exit_code, Some(1));

    assert_eq!(read(&hooks.join("result-ok")).trim(), "succeeded");
    assert_eq!(read(&hooks.join("result-bad")).trim(), "failed");
    stop(w, &sb).await;
}

// ---------------------------------------------------------------------------
// 7. Agent failures and exit codes.
// ---------------------------------------------------------------------------

#[tokio::test]
async fn agent_exit_codes_are_reported() {
    let sb = Sandbox::new();
    let mut cp = ControlPlane::start().await;
    let w = WorkerBuilder::new(&sb, &cp).spawn();
    cp.connected().await;

    let a = with_env(assignment("exit3"), "FAKE_AGENT_EXIT", "3");
    let f = failed(run(&mut cp, a).await);
    assert_eq!(f.task_id, "exit3");
    assert_eq!(f.failure_reason, Some(FailureReason::AgentInvocation));
    assert_eq!(f.exit_code, Some(3));
    assert_eq!(
        f.message,
        "Failed to execute task: oz agent exited with error: exit status 3"
    );

    let f = failed(run(&mut cp, assignment_running("killed", "kill -9 $$")).await);
    assert_eq!(f.failure_reason, Some(FailureReason::AgentInvocation));
    assert_eq!(f.exit_code, Some(137));
    assert_eq!(
        f.message,
        "Failed to execute task: oz agent exited with error: signal: killed"
    );
    assert!(!sb.workspace_root().join("exit3").exists());
    assert!(!sb.workspace_root().join("killed").exists());
    stop(w, &sb).await;
}

// ---------------------------------------------------------------------------
// 8. Timeouts.
// ---------------------------------------------------------------------------

#[tokio::test]
async fn setup_timeout_fails_the_task_and_kills_the_hook() {
    let sb = Sandbox::new();
    let mut cp = ControlPlane::start().await;
    let hooks = hooks_dir(&sb);
    let setup = hook(
        &sb,
        "setup.sh",
        &format!(
            "sleep 30 & echo $! > {}/setup-sleep.pid; wait\n",
            hooks.display()
        ),
    );
    let config = yaml(
        &sb,
        "",
        &format!("    setup_command: \"{setup}\"\n    setup_timeout: 1s\n"),
    );
    let w = WorkerBuilder::new(&sb, &cp).config(Some(config)).spawn();
    cp.connected().await;

    let f = failed(run(&mut cp, assignment("slow-setup")).await);
    assert_eq!(f.failure_reason, Some(FailureReason::SetupCommand));
    assert_eq!(f.exit_code, None);
    assert!(
        f.message
            .starts_with("Failed to execute task: setup command")
            && f.message.contains("timed out"),
        "{}",
        f.message
    );
    assert!(
        !sb.records().join("slow-setup").exists(),
        "agent must not run"
    );
    let pids = read_pids(&hooks.join("setup-sleep.pid"));
    assert_eq!(pids.len(), 1);
    assert!(!alive(pids[0]), "setup's sleep survived the timeout");
    assert!(!sb.workspace_root().join("slow-setup").exists());
    stop(w, &sb).await;
}

#[tokio::test]
async fn task_timeout_fails_the_task_and_kills_the_agent_tree() {
    let sb = Sandbox::new();
    let mut cp = ControlPlane::start().await;
    let config = yaml(&sb, "", "    task_timeout: 1s\n");
    let w = WorkerBuilder::new(&sb, &cp).config(Some(config)).spawn();
    cp.connected().await;

    let a = assignment_running(
        "slow-agent",
        "sleep 30 & echo $! > \"$out/sleep_pid\"; wait",
    );
    let f = failed(run(&mut cp, a).await);
    assert_eq!(f.failure_reason, Some(FailureReason::TaskTimeout));
    assert_eq!(f.message, oz_protocol::MSG_TIMED_OUT);
    assert_ne!(f.exit_code, Some(0));

    let agent = read_pids(&sb.records().join("slow-agent").join("pid"));
    let sleeper = read_pids(&sb.records().join("slow-agent").join("sleep_pid"));
    assert_eq!((agent.len(), sleeper.len()), (1, 1));
    assert!(!alive(agent[0]), "the agent survived its timeout");
    assert!(!alive(sleeper[0]), "the agent's sleep survived the timeout");
    assert!(!sb.workspace_root().join("slow-agent").exists());
    stop(w, &sb).await;
}

// ---------------------------------------------------------------------------
// 9. Cleanup and workspace permissions.
// ---------------------------------------------------------------------------

const RECORD_MODE: &str = "stat -c %a . > \"$out/mode\"";

/// Run one task with a worker that keeps workspaces (`top` YAML keys and
/// extra CLI args decide how) and check what is left behind.
async fn check_kept_workspace(top: &str, args: &[&str]) {
    let sb = Sandbox::new();
    let mut cp = ControlPlane::start().await;
    let hooks = hooks_dir(&sb);
    let teardown = hook(
        &sb,
        "teardown.sh",
        &format!("touch {}/teardown-$OZ_RUN_ID\n", hooks.display()),
    );
    let config = yaml(&sb, top, &format!("    teardown_command: \"{teardown}\"\n"));
    let w = WorkerBuilder::new(&sb, &cp)
        .config(Some(config))
        .args(args.iter().copied())
        .spawn();
    cp.connected().await;

    let a = assignment_running("kept", &format!("{RECORD_MODE}; echo data > result.txt"));
    completed(run(&mut cp, a).await);

    let ws = sb.workspace_root().join("kept");
    assert_eq!(sb.record("kept", "mode").unwrap().trim(), "700");
    assert!(ws.is_dir(), "workspace must be kept");
    assert_eq!(read(&ws.join("result.txt")).trim(), "data");
    assert!(
        !hooks.join("teardown-kept").exists(),
        "teardown must be skipped when a per-task workspace is kept"
    );
    // The env file is removed even so; the marker says "never sweep this".
    assert!(
        !listing(&ws).iter().any(|n| n.starts_with("oz-env-")),
        "{:?}",
        listing(&ws)
    );
    let marker: serde_json::Value = serde_json::from_str(&read(&ws.join(".oz-workspace"))).unwrap();
    assert_eq!(marker["cleanup"], serde_json::Value::Bool(false));
    assert_eq!(marker["run_id"], "kept");
    assert_eq!(marker["worker_id"], "w1");

    stop(w, &sb).await;
    assert!(ws.is_dir(), "shutdown must not wipe a kept workspace");
}

#[tokio::test]
async fn no_cleanup_flag_keeps_the_workspace_and_skips_teardown() {
    check_kept_workspace("", &["--no-cleanup"]).await;
}

#[tokio::test]
async fn cleanup_false_in_yaml_keeps_the_workspace_and_skips_teardown() {
    check_kept_workspace("cleanup: false\n", &[]).await;
}

#[tokio::test]
async fn default_cleanup_tears_down_and_removes_a_private_workspace() {
    let sb = Sandbox::new();
    let mut cp = ControlPlane::start().await;
    let hooks = hooks_dir(&sb);
    let teardown = hook(
        &sb,
        "teardown.sh",
        &format!("ls -A > {}/teardown-ls-$OZ_RUN_ID\n", hooks.display()),
    );
    let config = yaml(&sb, "", &format!("    teardown_command: \"{teardown}\"\n"));
    let w = WorkerBuilder::new(&sb, &cp).config(Some(config)).spawn();
    cp.connected().await;

    let a = assignment_running("cleaned", &format!("{RECORD_MODE}; echo data > result.txt"));
    completed(run(&mut cp, a).await);

    assert_eq!(sb.record("cleaned", "mode").unwrap().trim(), "700");
    // Teardown ran inside the workspace, before it was removed.
    let seen = read(&hooks.join("teardown-ls-cleaned"));
    assert!(seen.lines().any(|l| l == "result.txt"), "{seen}");
    assert!(!sb.workspace_root().join("cleaned").exists());
    assert!(sb.workspace_root().is_dir(), "the root itself stays");
    stop(w, &sb).await;
}

// ---------------------------------------------------------------------------
// 10. target_dir mode.
// ---------------------------------------------------------------------------

async fn check_target_mode(via_yaml: bool) {
    let sb = Sandbox::new();
    let mut cp = ControlPlane::start().await;
    let hooks = hooks_dir(&sb);
    let tmp = sb.path().join("tmp");
    std::fs::create_dir_all(&tmp).unwrap();
    let target = sb.path().join("checkout");
    std::fs::create_dir_all(&target).unwrap();
    std::fs::write(target.join("keep.txt"), "precious\n").unwrap();

    let h = hooks.display();
    let setup = hook(
        &sb,
        "setup.sh",
        &format!(
            "ls -A > {h}/setup-ls\n\
             printf '%s\\n' \"$OZ_ENVIRONMENT_FILE\" > {h}/envfile-path\n\
             git config --global user.name 'Oz Target Test'\n\
             echo FROM_SETUP=yes >> \"$OZ_ENVIRONMENT_FILE\"\n"
        ),
    );
    let teardown = hook(
        &sb,
        "teardown.sh",
        &format!("ls -A > {h}/teardown-ls\necho \"$OZ_TASK_RESULT\" > {h}/teardown-result\n"),
    );
    let hooks_yaml =
        format!("    setup_command: \"{setup}\"\n    teardown_command: \"{teardown}\"\n");
    let builder = if via_yaml {
        // No workspace_root at all: target mode does not need one.
        let config = format!(
            "backend:\n  direct:\n    target_dir: {}\n    oz_path: {}\n    grace_period: 2s\n{hooks_yaml}",
            target.display(),
            sb.agent_path().display()
        );
        WorkerBuilder::new(&sb, &cp).config(Some(config))
    } else {
        WorkerBuilder::new(&sb, &cp)
            .config(Some(yaml(&sb, "", &hooks_yaml)))
            .args(["--target-dir", target.to_str().unwrap()])
            // Target mode tears down even when cleanup is off.
            .arg("--no-cleanup")
    };
    let w = builder.env("TMPDIR", &s(&tmp)).spawn();
    cp.connected().await;

    let a = assignment_running(
        "in-target",
        "ls -A > \"$out/ls\"; git config --global user.name > \"$out/gitname\"; echo made-by-agent > agent.txt",
    );
    let a = with_env(a, "WARP_API_KEY", "run-key");
    completed(run(&mut cp, a).await);

    // The agent ran in the target dir and saw what setup configured.
    assert_eq!(
        sb.record("in-target", "cwd").unwrap().trim(),
        s(&target),
        "the agent's cwd must be the target dir"
    );
    assert_eq!(
        sb.record("in-target", "gitname").unwrap().trim(),
        "Oz Target Test"
    );
    let env = sb.agent_env("in-target");
    assert_eq!(env.get("FROM_SETUP").map(String::as_str), Some("yes"));
    let git_config = PathBuf::from(env.get("GIT_CONFIG_GLOBAL").expect("GIT_CONFIG_GLOBAL"));
    assert!(
        !git_config.starts_with(&target),
        "GIT_CONFIG_GLOBAL {git_config:?} must be outside the target dir"
    );
    assert_eq!(git_config.file_name().unwrap(), ".gitconfig");
    let env_file_path = PathBuf::from(read(&hooks.join("envfile-path")).trim());
    assert!(
        !env_file_path.starts_with(&target),
        "OZ_ENVIRONMENT_FILE {env_file_path:?} must be outside the target dir"
    );

    // No oz-env-* file or .gitconfig in the checkout, at any stage.
    let stages = [
        ("setup", read(&hooks.join("setup-ls"))),
        ("agent", sb.record("in-target", "ls").unwrap()),
        ("teardown", read(&hooks.join("teardown-ls"))),
        ("after", listing(&target).join("\n")),
    ];
    for (stage, names) in &stages {
        for name in names.lines() {
            assert!(
                !name.starts_with("oz-env-") && name != ".gitconfig",
                "{stage}: {name} found in the target dir"
            );
        }
        assert!(names.lines().any(|n| n == "keep.txt"), "{stage}: {names}");
    }

    // Teardown ran; the directory and its contents survive; our private
    // files are gone.
    assert_eq!(read(&hooks.join("teardown-result")).trim(), "succeeded");
    assert_eq!(read(&target.join("keep.txt")), "precious\n");
    assert_eq!(read(&target.join("agent.txt")).trim(), "made-by-agent");
    assert!(!env_file_path.exists(), "env file must be removed");
    assert!(
        !git_config.parent().unwrap().exists(),
        "the private git config dir must be removed"
    );
    assert_eq!(
        listing(&tmp),
        Vec::<String>::new(),
        "private files left in TMPDIR"
    );
    if !via_yaml {
        assert!(
            !sb.workspace_root().exists(),
            "target mode must not create workspace_root"
        );
    }

    stop(w, &sb).await;
    assert_eq!(read(&target.join("keep.txt")), "precious\n");
    assert!(target.join("agent.txt").exists());
}

#[tokio::test]
async fn target_dir_flag_runs_in_place_without_polluting_it() {
    check_target_mode(false).await;
}

#[tokio::test]
async fn target_dir_from_yaml_runs_in_place_without_polluting_it() {
    check_target_mode(true).await;
}

// ---------------------------------------------------------------------------
// 11. Startup sweep of leftovers.
// ---------------------------------------------------------------------------

/// SIGKILLs a process when dropped, so a failing test leaks nothing.
struct KillOnDrop(i32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.0), Signal::SIGKILL);
    }
}

#[tokio::test]
async fn startup_sweep_removes_only_our_dead_leftovers_and_kills_their_processes() {
    let sb = Sandbox::new();
    let root = sb.workspace_root();
    std::fs::create_dir_all(&root).unwrap();
    let dead = dead_pid();
    let run_marker = format!("m-old-{}", std::process::id());
    let marker_json = |worker: &str, pid: u32, start: &str, cleanup: bool| {
        format!(
            r#"{{"worker_id":"{worker}","pid":{pid},"start_time":{start},"run_id":"old","run_marker":"{run_marker}","cleanup":{cleanup}}}"#
        )
    };
    let make = |name: &str, marker: Option<String>| {
        let d = root.join(name);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("payload.txt"), "x").unwrap();
        if let Some(m) = marker {
            std::fs::write(d.join(".oz-workspace"), m).unwrap();
        }
        d
    };
    let ours_dead = make("ours-dead", Some(marker_json("w1", dead, "1", true)));
    let unmarked = make("unmarked", None);
    let other_worker = make("other-worker", Some(marker_json("w2", dead, "1", true)));
    let kept = make("kept", Some(marker_json("w1", dead, "1", false)));
    // Owned by a live process (this test): not a leftover.
    let live = make(
        "ours-live",
        Some(marker_json("w1", std::process::id(), "null", true)),
    );
    let garbage = make("garbage-marker", Some("{not json".into()));

    // A process of the dead run that escaped into its own session.
    let pidfile = sb.path().join("orphan.pid");
    let mut orphan = std::process::Command::new("setsid")
        .args([
            "sh",
            "-c",
            &format!("echo $$ > {}; exec sleep 300", pidfile.display()),
        ])
        .env("OZ_RUN_MARKER", &run_marker)
        .spawn()
        .unwrap();
    eventually("the orphan writes its pid", || {
        read_pids(&pidfile).len() == 1
    })
    .await;
    let orphan_pid = read_pids(&pidfile)[0];
    let _reap = KillOnDrop(orphan_pid);
    // Wait for the exec, so the marker is in the environment of `sleep`.
    eventually("the orphan execs sleep", || {
        std::fs::read_to_string(format!("/proc/{orphan_pid}/comm"))
            .is_ok_and(|c| c.trim() == "sleep")
    })
    .await;
    assert!(alive(orphan_pid));

    let mut cp = ControlPlane::start().await;
    let w = WorkerBuilder::new(&sb, &cp).spawn();
    // The sweep is over before the worker connects.
    cp.connected().await;

    let orphan_gone = !alive(orphan_pid);
    let _ = orphan.kill();
    let _ = orphan.wait();
    assert!(orphan_gone, "the sweep must kill the dead run's processes");
    assert!(!ours_dead.exists(), "our dead leftover must be removed");
    for d in [&unmarked, &other_worker, &kept, &live, &garbage] {
        assert!(
            d.join("payload.txt").exists(),
            "{} must be left alone",
            d.display()
        );
    }
    stop(w, &sb).await;
}

// ---------------------------------------------------------------------------
// 12. The oz binary disappears after startup (T11).
// ---------------------------------------------------------------------------

#[tokio::test]
async fn missing_oz_binary_fails_the_task_and_the_worker_keeps_serving() {
    let sb = Sandbox::new();
    let mut cp = ControlPlane::start().await;
    let w = WorkerBuilder::new(&sb, &cp).spawn();
    cp.connected().await;

    let agent = sb.agent_path();
    let moved = sb.path().join("oz.moved");
    std::fs::rename(&agent, &moved).unwrap();
    let f = failed(run(&mut cp, assignment("no-oz")).await);
    assert_eq!(f.failure_reason, Some(FailureReason::AgentInvocation));
    assert_eq!(f.exit_code, None);
    assert!(
        f.message.starts_with("Failed to execute task: ")
            && f.message.contains(agent.to_str().unwrap()),
        "{}",
        f.message
    );
    assert!(!sb.workspace_root().join("no-oz").exists());

    std::fs::rename(&moved, &agent).unwrap();
    completed(run(&mut cp, assignment("oz-back")).await);
    assert_eq!(sb.agent_env("oz-back")["TASK_ID"], "oz-back");
    stop(w, &sb).await;
}

// ---------------------------------------------------------------------------
// 13. The same run id again.
// ---------------------------------------------------------------------------

#[tokio::test]
async fn same_run_id_again_gets_a_fresh_workspace() {
    let sb = Sandbox::new();
    let mut cp = ControlPlane::start().await;
    let w = WorkerBuilder::new(&sb, &cp).spawn();
    cp.connected().await;

    let first = assignment_running("again", "echo first > leftover.txt");
    completed(run(&mut cp, first).await);
    assert!(!sb.workspace_root().join("again").exists());

    let second = assignment_running("again", &format!("ls -A > \"$out/ls\"; {RECORD_MODE}"));
    completed(run(&mut cp, second).await);
    let seen = sb.record("again", "ls").unwrap();
    assert!(
        !seen.lines().any(|l| l == "leftover.txt"),
        "the second run saw the first run's files: {seen}"
    );
    assert!(seen.lines().any(|l| l == ".oz-workspace"), "{seen}");
    // No setup hook, so no environment file: nothing could write it.
    assert!(!seen.lines().any(|l| l.starts_with("oz-env-")), "{seen}");
    assert_eq!(sb.record("again", "mode").unwrap().trim(), "700");
    assert!(!sb.workspace_root().join("again").exists());
    stop(w, &sb).await;
}

/// A directory already there under the task's id (say, kept by an earlier
/// execution with other permissions) is reused and made 0700 again.
#[tokio::test]
async fn a_reused_workspace_is_made_private_again() {
    use std::os::unix::fs::PermissionsExt;
    let sb = Sandbox::new();
    let mut cp = ControlPlane::start().await;
    let w = WorkerBuilder::new(&sb, &cp).spawn();
    cp.connected().await;

    let ws = sb.workspace_root().join("open");
    std::fs::create_dir(&ws).unwrap();
    std::fs::set_permissions(&ws, std::fs::Permissions::from_mode(0o755)).unwrap();
    let a = assignment_running("open", RECORD_MODE);
    completed(run(&mut cp, a).await);
    assert_eq!(sb.record("open", "mode").unwrap().trim(), "700");
    stop(w, &sb).await;
}

#[tokio::test]
async fn same_run_id_after_no_cleanup_reuses_the_kept_workspace() {
    let sb = Sandbox::new();
    let mut cp = ControlPlane::start().await;
    let w = WorkerBuilder::new(&sb, &cp).arg("--no-cleanup").spawn();
    cp.connected().await;

    completed(
        run(
            &mut cp,
            assignment_running("again", "echo first > leftover.txt"),
        )
        .await,
    );
    let second = assignment_running("again", "cat leftover.txt > \"$out/leftover\"");
    completed(run(&mut cp, second).await);
    assert_eq!(sb.record("again", "leftover").unwrap().trim(), "first");
    let log = plain_log(&sb);
    assert!(
        log.lines()
            .any(|l| l.contains("WARN") && l.contains("workspace already exists")),
        "{log}"
    );
    stop(w, &sb).await;
}
