//! Lifecycle of tasks and of the worker itself, end to end against the real
//! binary: user cancellation (T23), the drain on SIGTERM (T24), the forced
//! stop, concurrency limits, hostile input, duplicate assignments,
//! reconnection, reconnect backoff, and which workspaces a shutdown touches.
mod common;

use common::*;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::signal::Signal;
use oz_protocol::{
    FailureReason, MSG_CANCELLED, MSG_COMPLETED, REJECT_AT_CAPACITY, TaskAssignment, WorkerMessage,
};
use tokio::time::Instant;

/// How long "nothing happens" is watched for.
const QUIET: Duration = Duration::from_secs(1);

// ---------------------------------------------------------------------------
// Helpers local to this file
// ---------------------------------------------------------------------------

/// Worker YAML: the sandbox's fake agent and workspace root, a grace period,
/// optional top-level lines (`top`, each ending in a newline) and extra lines
/// for `backend.direct` (`direct_extra`, indented by four spaces).
fn yaml(sb: &Sandbox, top: &str, grace: &str, direct_extra: &str) -> String {
    format!(
        "{top}backend:\n  direct:\n    workspace_root: {}\n    oz_path: {}\n    grace_period: {grace}\n{direct_extra}",
        sb.workspace_root().display(),
        sb.agent_path().display()
    )
}

/// A `teardown_command` line that records `OZ_TASK_RESULT` per run.
fn teardown_recorder(sb: &Sandbox) -> String {
    format!(
        "    teardown_command: 'echo \"$OZ_TASK_RESULT\" > {}/teardown-$OZ_RUN_ID'\n",
        sb.path().display()
    )
}

/// What the recording teardown saw for `run_id`, if it ran.
fn teardown_result(sb: &Sandbox, run_id: &str) -> Option<String> {
    std::fs::read_to_string(sb.path().join(format!("teardown-{run_id}")))
        .ok()
        .map(|s| s.trim().to_owned())
}

/// A shell snippet that blocks until `gate` exists. The wait is bounded
/// (about two minutes) so that a failed test cannot leave an agent polling
/// forever for a gate in a deleted sandbox.
fn wait_for(gate: &Path) -> String {
    format!(
        "n=0; while [ ! -e {} ] && [ $n -lt 2400 ]; do sleep 0.05; n=$((n+1)); done\n",
        gate.display()
    )
}

fn touch(path: &Path) {
    std::fs::write(path, "").unwrap();
}

/// Names directly under `dir`.
fn entries(dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// SIGKILLs the pids recorded in these files if the test panics, so a
/// failing test does not leave sleeps behind. A passing test has already
/// proved they are dead.
struct KillOnPanic(Vec<PathBuf>);

impl Drop for KillOnPanic {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        for file in &self.0 {
            for pid in read_pids(file) {
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGKILL);
            }
        }
    }
}

async fn expect_claimed(cp: &mut ControlPlane, task_id: &str) {
    match cp.frame().await {
        WorkerMessage::TaskClaimed(c) => {
            assert_eq!(c.task_id, task_id);
            assert_eq!(c.worker_id, "w1");
        }
        other => panic!("expected task_claimed for {task_id}, got {other:?}"),
    }
}

async fn expect_completed(cp: &mut ControlPlane, task_id: &str) {
    match cp.terminal(task_id).await {
        WorkerMessage::TaskCompleted(c) => {
            assert_eq!(c.message, MSG_COMPLETED);
            assert_eq!(c.task_state, None);
        }
        other => panic!("expected task_completed for {task_id}, got {other:?}"),
    }
}

async fn expect_rejected(cp: &mut ControlPlane, task_id: &str, reason: &str) {
    match cp.frame().await {
        WorkerMessage::TaskRejected(r) => {
            assert_eq!(r.task_id, task_id);
            assert_eq!(r.reason, reason);
        }
        other => panic!("expected task_rejected for {task_id}, got {other:?}"),
    }
}

/// The next frame must be a `task_failed` for `task_id`; returns it.
async fn expect_failed(cp: &mut ControlPlane, task_id: &str) -> oz_protocol::TaskFailed {
    match cp.frame().await {
        WorkerMessage::TaskFailed(f) => {
            assert_eq!(f.task_id, task_id);
            f
        }
        other => panic!("expected task_failed for {task_id}, got {other:?}"),
    }
}

/// Nothing at all (no frame, no disconnect) arrives for a moment.
async fn expect_quiet(cp: &mut ControlPlane) {
    if let Some(ev) = cp.next_within(QUIET).await {
        panic!("expected no event from the worker, got {ev:?}");
    }
}

/// Claims sent for `task_id` so far.
fn claims(cp: &ControlPlane, task_id: &str) -> usize {
    cp.frames()
        .iter()
        .filter(|f| matches!(f, WorkerMessage::TaskClaimed(c) if c.task_id == task_id))
        .count()
}

/// Terminal frames sent for `task_id` so far.
fn terminals(cp: &ControlPlane, task_id: &str) -> usize {
    cp.frames()
        .iter()
        .filter(|f| f.is_terminal() && f.task_id() == task_id)
        .count()
}

/// Every event that arrives within `d`.
async fn events_for(cp: &mut ControlPlane, d: Duration) -> Vec<Event> {
    let until = Instant::now() + d;
    let mut out = Vec::new();
    loop {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return out;
        }
        match cp.next_within(left).await {
            Some(ev) => out.push(ev),
            None => return out,
        }
    }
}

/// Wait for a connection that stays open (one that is not closed or refused
/// right after the handshake), so that frames sent now reach the worker.
async fn serving_connection(cp: &mut ControlPlane) {
    let deadline = Instant::now() + WAIT;
    loop {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for a lasting connection"
        );
        if let Event::Connected { .. } = cp.next().await {
            match cp.next_within(Duration::from_millis(500)).await {
                None => return,
                Some(Event::Disconnected) => continue,
                Some(other) => panic!("unexpected event on a fresh connection: {other:?}"),
            }
        }
    }
}

fn still_running(w: &mut WorkerProc) -> bool {
    w.child.try_wait().expect("try_wait").is_none()
}

// ---------------------------------------------------------------------------
// 1. User cancellation (T23)
// ---------------------------------------------------------------------------

#[tokio::test]
async fn cancel_kills_the_whole_tree_runs_teardown_and_reports_cancelled() {
    let sb = Sandbox::new();
    let mut cp = ControlPlane::start().await;
    let mut w = WorkerBuilder::new(&sb, &cp)
        .config(Some(yaml(&sb, "", "2s", &teardown_recorder(&sb))))
        .spawn();
    cp.connected().await;

    let pids = sb.path().join("pids");
    let ready = sb.path().join("ready");
    let _guard = KillOnPanic(vec![pids.clone()]);
    // A plain background child, a child that escapes into its own session,
    // the agent shell itself, and a foreground sleep (which records its own
    // pid, signals readiness and becomes the sleep).
    let script = format!(
        "sleep 300 & echo $! >> {p}\n\
         setsid sleep 301 & echo $! >> {p}\n\
         echo $$ >> {p}\n\
         sh -c 'echo $$ >> \"$0\"; touch \"$1\"; exec sleep 302' {p} {r}\n",
        p = pids.display(),
        r = ready.display()
    );
    cp.assign(assignment_running("run-c", &script));
    expect_claimed(&mut cp, "run-c").await;
    eventually("the agent recorded its pids", || ready.exists()).await;
    let recorded = read_pids(&pids);
    assert_eq!(recorded.len(), 4, "pids recorded: {recorded:?}");
    for pid in &recorded {
        assert!(alive(*pid), "pid {pid} should be running before the cancel");
    }

    cp.cancel("run-c");
    match cp.terminal("run-c").await {
        WorkerMessage::TaskCompleted(c) => {
            assert_eq!(c.message, MSG_CANCELLED);
            assert_eq!(c.message, "Task cancelled by user request.");
            assert_eq!(c.task_state.as_deref(), Some("CANCELLED"));
        }
        other => panic!("expected task_completed CANCELLED, got {other:?}"),
    }
    // The report comes after cleanup: every process is gone by now.
    for pid in &recorded {
        assert!(!alive(*pid), "pid {pid} survived the cancellation");
    }
    assert_eq!(teardown_result(&sb, "run-c").as_deref(), Some("cancelled"));
    assert!(
        !sb.workspace_root().join("run-c").exists(),
        "workspace must be removed after a cancel"
    );
    assert_eq!(terminals(&cp, "run-c"), 1);

    // The worker keeps serving.
    cp.assign(assignment("run-after"));
    expect_claimed(&mut cp, "run-after").await;
    expect_completed(&mut cp, "run-after").await;

    w.signal(Signal::SIGTERM);
    assert_eq!(w.wait().await.code(), Some(0));
}

#[tokio::test]
async fn cancel_sends_sigterm_before_sigkill() {
    let sb = Sandbox::new();
    let mut cp = ControlPlane::start().await;
    let mut w = WorkerBuilder::new(&sb, &cp)
        .config(Some(yaml(&sb, "", "20s", "")))
        .spawn();
    cp.connected().await;

    let pids = sb.path().join("pids");
    let ready = sb.path().join("ready");
    let flag = sb.path().join("got-term");
    let _guard = KillOnPanic(vec![pids.clone()]);
    let script = format!(
        "trap 'echo term > {f}; exit 7' TERM\n\
         echo $$ >> {p}\n\
         sleep 300 & echo $! >> {p}\n\
         touch {r}\n\
         wait\n",
        f = flag.display(),
        p = pids.display(),
        r = ready.display()
    );
    cp.assign(assignment_running("run-t", &script));
    expect_claimed(&mut cp, "run-t").await;
    eventually("the agent installed its TERM trap", || ready.exists()).await;

    cp.cancel("run-t");
    match cp.terminal("run-t").await {
        WorkerMessage::TaskCompleted(c) => {
            assert_eq!(c.message, MSG_CANCELLED);
            assert_eq!(c.task_state.as_deref(), Some("CANCELLED"));
        }
        other => panic!("expected task_completed CANCELLED, got {other:?}"),
    }
    // Only SIGTERM can run a trap: SIGKILL cannot be caught.
    assert_eq!(
        std::fs::read_to_string(&flag)
            .ok()
            .as_deref()
            .map(str::trim),
        Some("term"),
        "the agent never saw SIGTERM"
    );
    for pid in read_pids(&pids) {
        assert!(!alive(pid), "pid {pid} survived the cancellation");
    }

    w.signal(Signal::SIGTERM);
    assert_eq!(w.wait().await.code(), Some(0));
}

/// Is `pid` a zombie whose parent is `parent` (a child nobody reaped)?
fn zombie_of(pid: i32, parent: i32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
        return false;
    };
    let mut f = rest.split_whitespace();
    f.next() == Some("Z") && f.next().and_then(|p| p.parse().ok()) == Some(parent)
}

/// A task that ends by itself takes what it started with it: a background
/// child in its group, daemons double-forked into sessions of their own (one
/// from setup, one from the agent), and an orphan that exited by itself.
/// None is left running, and none as a zombie of the worker, which inherits
/// them all as a subreaper.
#[tokio::test]
async fn a_task_that_ends_by_itself_leaves_no_process_and_no_zombie() {
    let sb = Sandbox::new();
    let pids = sb.path().join("pids");
    let exited = sb.path().join("exited");
    let _guard = KillOnPanic(vec![pids.clone()]);
    let setup = format!(
        "    setup_command: '(setsid sleep 304 & echo $! >> {p})'\n",
        p = pids.display()
    );
    let mut cp = ControlPlane::start().await;
    let mut w = WorkerBuilder::new(&sb, &cp)
        .config(Some(yaml(&sb, "", "2s", &setup)))
        .spawn();
    cp.connected().await;

    let script = format!(
        "sleep 300 & echo $! >> {p}\n\
         (setsid sleep 301 & echo $! >> {p})\n\
         (sh -c 'echo $$ >> \"$0\"; touch \"$1\"' {p} {e} &)\n\
         {wait}\
         echo done\n",
        p = pids.display(),
        e = exited.display(),
        wait = wait_for(&exited),
    );
    cp.assign(assignment_running("run-l", &script));
    expect_claimed(&mut cp, "run-l").await;
    expect_completed(&mut cp, "run-l").await;
    let recorded = read_pids(&pids);
    assert_eq!(recorded.len(), 4, "pids recorded: {recorded:?}");
    for pid in &recorded {
        assert!(!alive(*pid), "pid {pid} outlived its task");
        assert!(
            !zombie_of(*pid, w.pid()),
            "pid {pid} is a zombie of the worker"
        );
    }

    w.signal(Signal::SIGTERM);
    assert_eq!(w.wait().await.code(), Some(0));
}

// ---------------------------------------------------------------------------
// 2. Cancellation of a task that is not running here
// ---------------------------------------------------------------------------

#[tokio::test]
async fn cancel_of_an_unknown_task_sends_nothing_and_the_worker_keeps_serving() {
    let sb = Sandbox::new();
    let mut cp = ControlPlane::start().await;
    let mut w = WorkerBuilder::new(&sb, &cp).spawn();
    cp.connected().await;

    cp.cancel("never-assigned");
    expect_quiet(&mut cp).await;

    // A finished task is unknown too.
    cp.assign(assignment("run-1"));
    expect_claimed(&mut cp, "run-1").await;
    expect_completed(&mut cp, "run-1").await;
    cp.cancel("run-1");
    expect_quiet(&mut cp).await;

    cp.assign(assignment("run-2"));
    expect_claimed(&mut cp, "run-2").await;
    expect_completed(&mut cp, "run-2").await;
    assert!(still_running(&mut w));

    w.signal(Signal::SIGTERM);
    assert_eq!(w.wait().await.code(), Some(0));
}

// ---------------------------------------------------------------------------
// 3. Drain on SIGTERM (T24), and idle stops
// ---------------------------------------------------------------------------

#[tokio::test]
async fn sigterm_drains_reports_graceful_shutdown_before_closing_and_exits_3() {
    let sb = Sandbox::new();
    let mut cp = ControlPlane::start().await;
    let mut w = WorkerBuilder::new(&sb, &cp)
        .config(Some(yaml(&sb, "", "30s", &teardown_recorder(&sb))))
        .spawn();
    cp.connected().await;

    let pids = sb.path().join("pids");
    let ready = sb.path().join("ready");
    let flag = sb.path().join("got-term");
    let go = sb.path().join("go");
    let _guard = KillOnPanic(vec![pids.clone()]);
    // On SIGTERM: note it, linger until the test says so, exit 143.
    let script = format!(
        "trap 'echo term > {f}; {gate} exit 143' TERM\n\
         echo $$ >> {p}\n\
         sleep 300 & echo $! >> {p}\n\
         touch {r}\n\
         wait\n",
        f = flag.display(),
        gate = wait_for(&go).replace('\n', ";"),
        p = pids.display(),
        r = ready.display()
    );
    cp.assign(assignment_running("run-d", &script));
    expect_claimed(&mut cp, "run-d").await;
    eventually("the agent installed its TERM trap", || ready.exists()).await;

    w.signal(Signal::SIGTERM);
    // The agent saw SIGTERM, so the worker is draining now.
    eventually("the agent got SIGTERM", || flag.exists()).await;

    cp.assign(assignment("run-late"));
    expect_rejected(&mut cp, "run-late", "worker is shutting down").await;
    assert!(!sb.workspace_root().join("run-late").exists());

    touch(&go);
    // The terminal frame arrives, and only then does the connection close.
    let mut failed = None;
    loop {
        match cp.next().await {
            Event::Frame(WorkerMessage::TaskFailed(f)) if f.task_id == "run-d" => {
                failed = Some(f);
            }
            Event::Frame(other) => panic!("unexpected frame during the drain: {other:?}"),
            Event::Disconnected => break,
            other => panic!("unexpected event during the drain: {other:?}"),
        }
    }
    let failed = failed.expect("task_failed must arrive before the connection closes");
    assert_eq!(failed.failure_reason, Some(FailureReason::GracefulShutdown));
    assert_eq!(failed.exit_code, Some(143));

    assert_eq!(w.wait().await.code(), Some(3));
    assert_eq!(claims(&cp, "run-late"), 0, "no claim for a rejected task");
    assert_eq!(terminals(&cp, "run-d"), 1);
    assert_eq!(teardown_result(&sb, "run-d").as_deref(), Some("cancelled"));
    assert!(
        !sb.workspace_root().join("run-d").exists(),
        "workspace must be removed after the drain"
    );
    for pid in read_pids(&pids) {
        assert!(!alive(pid), "pid {pid} survived the drain");
    }
}

async fn idle_signal_exits_0(sig: Signal) {
    let sb = Sandbox::new();
    let mut cp = ControlPlane::start().await;
    let mut w = WorkerBuilder::new(&sb, &cp).spawn();
    cp.connected().await;
    cp.assign(assignment("run-1"));
    expect_claimed(&mut cp, "run-1").await;
    expect_completed(&mut cp, "run-1").await;

    w.signal(sig);
    assert_eq!(w.wait().await.code(), Some(0), "idle {sig} must exit 0");
    loop {
        match cp.next().await {
            Event::Disconnected => break,
            Event::Frame(f) => panic!("unexpected frame at an idle stop: {f:?}"),
            _ => {}
        }
    }
}

#[tokio::test]
async fn idle_sigterm_exits_0() {
    idle_signal_exits_0(Signal::SIGTERM).await;
}

#[tokio::test]
async fn idle_sigint_exits_0() {
    idle_signal_exits_0(Signal::SIGINT).await;
}

// ---------------------------------------------------------------------------
// 4. A second signal during the drain stops at once
// ---------------------------------------------------------------------------

#[tokio::test]
async fn second_sigterm_during_the_drain_kills_everything_and_exits_4() {
    let sb = Sandbox::new();
    let mut cp = ControlPlane::start().await;
    // A grace period far beyond WAIT: if the worker waited it out, the
    // wait for its exit below would fail.
    let mut w = WorkerBuilder::new(&sb, &cp)
        .config(Some(yaml(&sb, "", "300s", "")))
        .spawn();
    cp.connected().await;

    let pids = sb.path().join("pids");
    let ready = sb.path().join("ready");
    let _guard = KillOnPanic(vec![pids.clone()]);
    // SIGTERM is ignored by the agent and (inherited) by its child.
    let script = format!(
        "trap '' TERM\n\
         echo $$ >> {p}\n\
         sleep 300 & echo $! >> {p}\n\
         touch {r}\n\
         wait\n",
        p = pids.display(),
        r = ready.display()
    );
    cp.assign(assignment_running("run-stubborn", &script));
    expect_claimed(&mut cp, "run-stubborn").await;
    eventually("the agent ignores SIGTERM", || ready.exists()).await;
    let recorded = read_pids(&pids);
    assert_eq!(recorded.len(), 2);

    w.signal(Signal::SIGTERM);
    // Two signals sent back to back could be seen as one; wait until the
    // first one was handled.
    eventually("the worker started draining", || {
        sb.log().contains("shutting down")
    })
    .await;
    assert!(
        still_running(&mut w),
        "one SIGTERM must not stop the worker while the agent ignores it"
    );
    w.signal(Signal::SIGTERM);

    assert_eq!(w.wait().await.code(), Some(4));
    for pid in recorded {
        eventually(&format!("pid {pid} is dead"), || !alive(pid)).await;
    }
}

// ---------------------------------------------------------------------------
// 5. max_concurrent_tasks
// ---------------------------------------------------------------------------

/// Fill `max` slots with blocked tasks, check that one more is rejected
/// without a claim, free one slot and check that a new task is claimed.
async fn capacity_scenario(sb: &Sandbox, cp: &mut ControlPlane, max: usize) {
    let gate = |i: usize| sb.path().join(format!("go-{i}"));
    for i in 0..max {
        let id = format!("busy-{i}");
        cp.assign(assignment_running(&id, &wait_for(&gate(i))));
        expect_claimed(cp, &id).await;
    }

    cp.assign(assignment("extra"));
    expect_rejected(cp, "extra", REJECT_AT_CAPACITY).await;
    assert_eq!(REJECT_AT_CAPACITY, "worker at maximum concurrency");
    assert!(!sb.workspace_root().join("extra").exists());
    assert!(
        sb.record("extra", "pid").is_none(),
        "a rejected task must not run"
    );

    touch(&gate(0));
    expect_completed(cp, "busy-0").await;

    cp.assign(assignment("late"));
    expect_claimed(cp, "late").await;
    expect_completed(cp, "late").await;

    for i in 1..max {
        touch(&gate(i));
        expect_completed(cp, &format!("busy-{i}")).await;
    }
    assert_eq!(
        claims(cp, "extra"),
        0,
        "a rejected task must not be claimed"
    );
    assert_eq!(terminals(cp, "extra"), 0);
}

#[tokio::test]
async fn max_concurrent_tasks_1_from_the_flag_rejects_the_extra_task() {
    let sb = Sandbox::new();
    let mut cp = ControlPlane::start().await;
    let mut w = WorkerBuilder::new(&sb, &cp)
        .args(["--max-concurrent-tasks", "1"])
        .spawn();
    cp.connected().await;
    capacity_scenario(&sb, &mut cp, 1).await;
    w.signal(Signal::SIGTERM);
    assert_eq!(w.wait().await.code(), Some(0));
}

#[tokio::test]
async fn max_concurrent_tasks_2_from_yaml_rejects_the_extra_task() {
    let sb = Sandbox::new();
    let mut cp = ControlPlane::start().await;
    let mut w = WorkerBuilder::new(&sb, &cp)
        .config(Some(yaml(&sb, "max_concurrent_tasks: 2\n", "2s", "")))
        .spawn();
    cp.connected().await;
    capacity_scenario(&sb, &mut cp, 2).await;
    w.signal(Signal::SIGTERM);
    assert_eq!(w.wait().await.code(), Some(0));
}

// ---------------------------------------------------------------------------
// 6. Bad input never kills the worker
// ---------------------------------------------------------------------------

#[tokio::test]
async fn bad_input_is_answered_or_ignored_and_the_worker_keeps_serving() {
    let sb = Sandbox::new();
    let mut cp = ControlPlane::start().await;
    let mut w = WorkerBuilder::new(&sb, &cp).spawn();
    cp.connected().await;
    let before = entries(sb.path());

    // A null task: failed, never claimed.
    cp.assign(TaskAssignment {
        task_id: "no-task".into(),
        task: None,
        ..Default::default()
    });
    expect_failed(&mut cp, "no-task").await;

    // Task ids that are not a single safe directory name.
    for bad in ["../x", "..", "a/b"] {
        cp.assign(assignment(bad));
        let f = expect_failed(&mut cp, bad).await;
        assert_eq!(
            f.failure_reason,
            Some(FailureReason::WorkspaceSetup),
            "task id {bad:?}"
        );
        assert_eq!(
            f.message,
            "Failed to execute task: invalid task ID for workspace path: invalid task ID"
        );
        assert_eq!(f.exit_code, None);
    }

    // An assignment whose task is not an object.
    cp.send_raw(r#"{"type":"task_assignment","data":{"task_id":"bad-task","task":5}}"#);
    expect_failed(&mut cp, "bad-task").await;

    // Ignored: not JSON, an unknown type, a cancellation without data.
    cp.send_raw("this is {not json");
    cp.send_raw(r#"{"type":"heartbeat"}"#);
    cp.send_raw(r#"{"type":"task_cancellation"}"#);
    cp.send_raw(r#"{"type":"task_cancellation","data":null}"#);
    expect_quiet(&mut cp).await;
    assert!(still_running(&mut w), "bad input must not kill the worker");

    // Nothing ran and nothing was created for any of them.
    assert_eq!(
        entries(sb.path()),
        before,
        "something appeared in the sandbox"
    );
    assert!(
        entries(&sb.workspace_root()).is_empty(),
        "something appeared under the workspace root: {:?}",
        entries(&sb.workspace_root())
    );
    assert!(entries(&sb.records()).is_empty(), "the agent ran");

    // A normal task still succeeds, on the same connection.
    cp.assign(assignment("run-ok"));
    expect_claimed(&mut cp, "run-ok").await;
    expect_completed(&mut cp, "run-ok").await;

    for id in ["no-task", "../x", "..", "a/b", "bad-task"] {
        assert_eq!(claims(&cp, id), 0, "{id:?} must not be claimed");
        assert_eq!(terminals(&cp, id), 1, "{id:?} gets exactly one answer");
    }
    let connects = cp
        .history
        .iter()
        .filter(|e| matches!(e, Event::Connected { .. }))
        .count();
    let drops = cp
        .history
        .iter()
        .filter(|e| matches!(e, Event::Disconnected))
        .count();
    assert_eq!((connects, drops), (1, 0), "the connection must stay up");

    w.signal(Signal::SIGTERM);
    assert_eq!(w.wait().await.code(), Some(0));
}

// ---------------------------------------------------------------------------
// 7. Duplicate assignment of a running task
// ---------------------------------------------------------------------------

#[tokio::test]
async fn duplicate_assignment_is_claimed_again_but_runs_once() {
    let sb = Sandbox::new();
    let mut cp = ControlPlane::start().await;
    let mut w = WorkerBuilder::new(&sb, &cp).spawn();
    cp.connected().await;

    let count = sb.path().join("invocations");
    let go = sb.path().join("go");
    let script = format!("echo run >> {}\n{}", count.display(), wait_for(&go));
    cp.assign(assignment_running("dup", &script));
    expect_claimed(&mut cp, "dup").await;
    eventually("the agent started", || count.exists()).await;

    cp.assign(assignment_running("dup", &script));
    expect_claimed(&mut cp, "dup").await;

    touch(&go);
    expect_completed(&mut cp, "dup").await;
    expect_quiet(&mut cp).await;

    assert_eq!(
        std::fs::read_to_string(&count).unwrap().lines().count(),
        1,
        "the agent must run once"
    );
    assert_eq!(claims(&cp, "dup"), 2);
    assert_eq!(terminals(&cp, "dup"), 1);
    assert!(!sb.workspace_root().join("dup").exists());

    w.signal(Signal::SIGTERM);
    assert_eq!(w.wait().await.code(), Some(0));
}

// ---------------------------------------------------------------------------
// 8. Reconnection: results produced while disconnected are delivered later
// ---------------------------------------------------------------------------

#[tokio::test]
async fn result_produced_while_disconnected_is_delivered_after_reconnect() {
    let sb = Sandbox::new();
    let mut cp = ControlPlane::start().await;
    let mut w = WorkerBuilder::new(&sb, &cp).spawn();
    cp.connected().await;

    let go = sb.path().join("go");
    cp.assign(assignment_running("run-r", &wait_for(&go)));
    expect_claimed(&mut cp, "run-r").await;
    eventually("the agent started", || sb.record("run-r", "pid").is_some()).await;

    // Refuse reconnects until the task has finished, then drop the line.
    cp.set_mode(Mode::Unauthorized);
    cp.close_connection();
    loop {
        if let Event::Disconnected = cp.next().await {
            break;
        }
    }
    touch(&go);
    eventually("the task finished while disconnected", || {
        !sb.workspace_root().join("run-r").exists()
    })
    .await;
    assert_eq!(terminals(&cp, "run-r"), 0);

    cp.set_mode(Mode::Serve);
    let mut reconnected = false;
    loop {
        match cp.next().await {
            Event::Connected { .. } => reconnected = true,
            Event::Frame(f) if f.is_terminal() && f.task_id() == "run-r" => {
                assert!(reconnected, "the result came without a new connection");
                match f {
                    WorkerMessage::TaskCompleted(c) => assert_eq!(c.message, MSG_COMPLETED),
                    other => panic!("expected task_completed, got {other:?}"),
                }
                break;
            }
            Event::Frame(f) => panic!("unexpected frame: {f:?}"),
            _ => {}
        }
    }
    expect_quiet(&mut cp).await;
    assert_eq!(terminals(&cp, "run-r"), 1);
    assert_eq!(claims(&cp, "run-r"), 1);

    w.signal(Signal::SIGTERM);
    assert_eq!(w.wait().await.code(), Some(0));
}

#[tokio::test]
async fn result_produced_while_the_server_is_down_is_delivered_after_restart() {
    let sb = Sandbox::new();
    let mut cp = ControlPlane::start().await;
    let mut w = WorkerBuilder::new(&sb, &cp).spawn();
    cp.connected().await;

    let go = sb.path().join("go");
    cp.assign(assignment_running("run-s", &wait_for(&go)));
    expect_claimed(&mut cp, "run-s").await;
    eventually("the agent started", || sb.record("run-s", "pid").is_some()).await;

    let addr = cp.addr;
    cp.stop();
    loop {
        if let Event::Disconnected = cp.next().await {
            break;
        }
    }
    touch(&go);
    eventually("the task finished while the server was down", || {
        !sb.workspace_root().join("run-s").exists()
    })
    .await;
    assert!(still_running(&mut w));

    let mut cp2 = ControlPlane::restart_on(addr).await;
    let (query, _) = cp2.connected().await;
    assert_eq!(query, "worker_id=w1");
    match cp2.frame().await {
        WorkerMessage::TaskCompleted(c) => {
            assert_eq!(c.task_id, "run-s");
            assert_eq!(c.message, MSG_COMPLETED);
        }
        other => panic!("expected the queued task_completed, got {other:?}"),
    }
    expect_quiet(&mut cp2).await;

    // And it serves the new control plane.
    cp2.assign(assignment("run-s2"));
    expect_claimed(&mut cp2, "run-s2").await;
    expect_completed(&mut cp2, "run-s2").await;

    w.signal(Signal::SIGTERM);
    assert_eq!(w.wait().await.code(), Some(0));
}

// ---------------------------------------------------------------------------
// 9. Reconnect backoff and refused handshakes
// ---------------------------------------------------------------------------

#[tokio::test]
async fn accept_then_close_does_not_cause_a_tight_reconnect_loop() {
    let sb = Sandbox::new();
    let mut cp = ControlPlane::start().await;
    cp.set_mode(Mode::AcceptThenClose);
    let mut w = WorkerBuilder::new(&sb, &cp).spawn();

    let seen = events_for(&mut cp, Duration::from_secs(4)).await;
    let connects = seen
        .iter()
        .filter(|e| matches!(e, Event::Connected { .. }))
        .count();
    assert!(connects >= 1, "the worker never connected");
    assert!(
        connects <= 5,
        "{connects} connections in about 4 seconds: the worker reconnects without backing off"
    );
    assert!(still_running(&mut w));

    cp.set_mode(Mode::Serve);
    serving_connection(&mut cp).await;
    cp.assign(assignment("run-b"));
    expect_claimed(&mut cp, "run-b").await;
    expect_completed(&mut cp, "run-b").await;

    w.signal(Signal::SIGTERM);
    assert_eq!(w.wait().await.code(), Some(0));
}

#[tokio::test]
async fn unauthorized_keeps_retrying_and_logs_http_401_and_the_api_key_hint() {
    let sb = Sandbox::new();
    let mut cp = ControlPlane::start().await;
    cp.set_mode(Mode::Unauthorized);
    let mut w = WorkerBuilder::new(&sb, &cp).spawn();

    // At least two refused attempts: it keeps retrying.
    for _ in 0..2 {
        cp.connected().await;
    }
    assert!(
        still_running(&mut w),
        "a refused handshake must not stop the worker"
    );
    eventually("the log explains the 401", || {
        let log = sb.log();
        log.contains("HTTP 401") && log.contains("API key")
    })
    .await;
    assert!(
        !sb.log().contains("wk-test-key"),
        "the API key itself must never be logged"
    );

    cp.set_mode(Mode::Serve);
    serving_connection(&mut cp).await;
    cp.assign(assignment("run-u"));
    expect_claimed(&mut cp, "run-u").await;
    expect_completed(&mut cp, "run-u").await;

    w.signal(Signal::SIGTERM);
    assert_eq!(w.wait().await.code(), Some(0));
}

// ---------------------------------------------------------------------------
// 10. Shutdown removes only this worker's workspaces
// ---------------------------------------------------------------------------

#[tokio::test]
async fn shutdown_leaves_foreign_entries_under_the_workspace_root() {
    let sb = Sandbox::new();
    let root = sb.workspace_root();
    std::fs::create_dir_all(root.join("foreign")).unwrap();
    std::fs::write(root.join("foreign").join("keep.txt"), "mine").unwrap();
    std::fs::write(root.join("stray.txt"), "stray").unwrap();
    // A workspace of another worker, whose creator is long gone.
    let other = root.join("other-run");
    std::fs::create_dir_all(&other).unwrap();
    std::fs::write(
        other.join(".oz-workspace"),
        r#"{"worker_id":"w2","pid":999999999,"start_time":null,"run_id":"other-run","run_marker":"other-marker","cleanup":true}"#,
    )
    .unwrap();
    std::fs::write(other.join("work.txt"), "theirs").unwrap();

    let mut cp = ControlPlane::start().await;
    let mut w = WorkerBuilder::new(&sb, &cp).spawn();
    cp.connected().await;

    cp.assign(assignment("run-1"));
    expect_claimed(&mut cp, "run-1").await;
    expect_completed(&mut cp, "run-1").await;

    // One more task is still running when SIGTERM arrives.
    let go = sb.path().join("never");
    cp.assign(assignment_running("run-2", &wait_for(&go)));
    expect_claimed(&mut cp, "run-2").await;
    eventually("the agent started", || sb.record("run-2", "pid").is_some()).await;
    w.signal(Signal::SIGTERM);
    match cp.terminal("run-2").await {
        WorkerMessage::TaskFailed(f) => {
            assert_eq!(f.failure_reason, Some(FailureReason::GracefulShutdown))
        }
        other => panic!("expected task_failed graceful_shutdown, got {other:?}"),
    }
    assert_eq!(w.wait().await.code(), Some(3));

    assert_eq!(
        std::fs::read_to_string(root.join("foreign").join("keep.txt")).unwrap(),
        "mine"
    );
    assert_eq!(
        std::fs::read_to_string(root.join("stray.txt")).unwrap(),
        "stray"
    );
    assert_eq!(
        std::fs::read_to_string(other.join("work.txt")).unwrap(),
        "theirs"
    );
    assert_eq!(
        entries(&root),
        ["foreign", "other-run", "stray.txt"]
            .into_iter()
            .map(String::from)
            .collect::<BTreeSet<_>>(),
        "only this worker's workspaces may be removed"
    );
}
