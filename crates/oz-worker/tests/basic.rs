//! The happy path end to end: connect, claim, run, report, clean up.
mod common;

use common::*;
use oz_protocol::WorkerMessage;

#[tokio::test]
async fn runs_a_task_and_reports_completion() {
    let sb = Sandbox::new();
    let mut cp = ControlPlane::start().await;
    let mut w = WorkerBuilder::new(&sb, &cp).spawn();

    let (query, auth) = cp.connected().await;
    assert_eq!(query, "worker_id=w1");
    assert_eq!(auth.as_deref(), Some("Bearer wk-test-key"));

    cp.assign(assignment("run-1"));
    match cp.frame().await {
        WorkerMessage::TaskClaimed(c) => {
            assert_eq!(c.task_id, "run-1");
            assert_eq!(c.worker_id, "w1");
        }
        other => panic!("expected task_claimed, got {other:?}"),
    }
    match cp.terminal("run-1").await {
        WorkerMessage::TaskCompleted(c) => {
            assert_eq!(c.message, "Task completed successfully");
            assert_eq!(c.task_state, None);
        }
        other => panic!("expected task_completed, got {other:?}"),
    }

    let ws = sb.workspace_root().join("run-1");
    assert_eq!(
        sb.record("run-1", "cwd").unwrap().trim(),
        ws.to_str().unwrap()
    );
    assert_eq!(
        sb.agent_argv("run-1"),
        vec![
            "agent",
            "run",
            "--task-id",
            "run-1",
            "--sandboxed",
            "--server-root-url",
            &cp.url(),
            "--idle-on-complete",
        ]
    );
    assert!(!ws.exists(), "workspace must be removed after the task");

    w.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(w.wait().await.code(), Some(0));
}

/// The same with a multi-threaded runtime (the default on hosts with more
/// than two CPUs) and with one thread; a thread count outside 1-1024 is
/// refused before anything starts.
#[tokio::test]
async fn runs_tasks_with_any_number_of_runtime_threads() {
    for threads in ["1", "3"] {
        let sb = Sandbox::new();
        let mut cp = ControlPlane::start().await;
        let mut w = WorkerBuilder::new(&sb, &cp)
            .args(["--threads", threads])
            .spawn();
        cp.connected().await;
        for run in ["run-a", "run-b"] {
            cp.assign(assignment(run));
            match cp.terminal(run).await {
                WorkerMessage::TaskCompleted(_) => {}
                other => panic!("threads {threads}: expected task_completed, got {other:?}"),
            }
            assert!(!sb.workspace_root().join(run).exists());
        }
        w.signal(nix::sys::signal::Signal::SIGTERM);
        assert_eq!(w.wait().await.code(), Some(0));
    }
    let sb = Sandbox::new();
    let cp = ControlPlane::start().await;
    for bad in ["0", "1025", "many"] {
        let (status, stderr) = WorkerBuilder::new(&sb, &cp)
            .args(["--threads", bad])
            .run_to_exit()
            .await;
        assert_eq!(status.code(), Some(2), "{stderr}");
        assert!(stderr.contains("--threads"), "{stderr}");
    }
}
