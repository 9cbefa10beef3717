//! `oz run logs` and the output shown by `oz agent run-cloud --follow`,
//! against the real server, worker and runner.
mod cli_support;

use cli_support::Server;
use oz_protocol::api::RunState;

const SCRIPT: &str = r#"echo first; echo "to stderr" >&2; printf 'partial'"#;

#[tokio::test]
async fn follow_shows_the_output_and_logs_prints_it_exactly() {
    let srv = Server::start().await;
    let _w = srv.worker("w1").await;
    let out = srv
        .oz(&[
            "agent",
            "run-cloud",
            "--prompt",
            SCRIPT,
            "--host",
            "w1",
            "--harness",
            "command",
            "--follow",
        ])
        .await;
    out.assert_code(0);
    assert!(out.stdout.contains("first\n"), "{out}");
    // The last line had no newline; the final state still starts a line.
    assert!(out.stdout.contains("partial\n"), "{out}");
    assert!(out.stdout.contains("SUCCEEDED"), "{out}");
    assert!(out.stderr.contains("to stderr"), "{out}");

    let id = srv.client().list_runs(&[]).await.expect("list").runs[0]
        .run_id
        .clone();
    let logs = srv.oz(&["run", "logs", &id, "--phase", "agent"]).await;
    logs.assert_code(0);
    assert!(logs.stdout.ends_with("first\npartial"), "{logs}");
    assert!(logs.stderr.contains("to stderr\n"), "{logs}");

    let none = srv.oz(&["run", "logs", &id, "--phase", "setup"]).await;
    none.assert_code(0);
    assert_eq!(none.stdout, "", "{none}");

    // Resuming after the line "first" skips it.
    let page: serde_json::Value = srv
        .client()
        .get_query(&format!("/agent/runs/{id}/logs"), &[])
        .await
        .expect("logs page");
    let seq = page["lines"]
        .as_array()
        .expect("lines")
        .iter()
        .find(|l| l["text"] == "first")
        .and_then(|l| l["seq"].as_u64())
        .expect("the line 'first'");
    let since = seq.to_string();
    let later = srv
        .oz(&[
            "run",
            "logs",
            &id,
            "--since-seq",
            &since,
            "--phase",
            "agent",
        ])
        .await;
    assert!(later.stdout.contains("partial"), "{later}");
    assert!(!later.stdout.contains("first"), "{later}");

    // -f on an ended run prints everything and the final state.
    let f = srv.oz(&["run", "logs", "-f", &id]).await;
    f.assert_code(0);
    assert!(
        f.stdout.contains("first\n") && f.stderr.contains("SUCCEEDED"),
        "{f}"
    );
}

#[tokio::test]
async fn ctrl_c_stops_following_not_the_run() {
    let srv = Server::start().await;
    let _w = srv.worker("w1").await;
    let id = srv
        .submit(&[
            "--prompt",
            "echo started; sleep 20",
            "--host",
            "w1",
            "--harness",
            "command",
        ])
        .await;
    srv.wait_state(&id, RunState::Inprogress).await;
    let mut cmd = srv.oz_command(&["run", "logs", "-f", &id]);
    let child = cmd.spawn().expect("spawn oz");
    let pid = child.id().expect("pid") as i32;
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGINT,
    )
    .expect("SIGINT");
    let out = tokio::time::timeout(cli_support::WAIT, child.wait_with_output())
        .await
        .expect("oz stops following")
        .expect("wait");
    assert_eq!(
        out.status.code(),
        Some(130),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("started"));
    // The run goes on.
    let run = srv.run(&id).await;
    assert_eq!(run.state, RunState::Inprogress);
}

#[tokio::test]
async fn logs_of_an_unknown_run_is_one_clear_error() {
    let srv = Server::start().await;
    let out = srv.oz(&["run", "logs", "no-such-run"]).await;
    out.assert_code(3);
    assert!(
        out.stderr.starts_with("error: ") && out.stderr.lines().count() == 1,
        "{out}"
    );
}
