//! End to end: the real `oz-server` and `oz-agent-worker` binaries, a fake
//! `oz` agent, and HTTP from the test. Every wait is bounded; no test
//! asserts a duration.
//!
//! Needs `oz-agent-worker` built beside `oz-server`
//! (`cargo build -p oz-worker`; `cargo nextest run --workspace` does it).

mod e2e_support;

use std::collections::BTreeSet;
use std::time::Duration;

use e2e_support::{LONG_WAIT, Sandbox, Server, WAIT, Worker, WorkerSpec, alive, wait_for};
use serde_json::{Value, json};

const DONE: &str = "Task completed successfully";

fn state(run: &Value) -> &str {
    run["state"].as_str().unwrap_or_default()
}

fn status_text(run: &Value) -> &str {
    run["status_message"]["message"]
        .as_str()
        .unwrap_or_default()
}

fn assert_succeeded(run: &Value) {
    assert_eq!(state(run), "SUCCEEDED", "run did not succeed: {run}");
    assert_eq!(status_text(run), DONE, "{run}");
}

/// 1. Routing by config.worker_host, the server default, and a run that waits
/// for a worker that is not there yet.
#[tokio::test]
async fn runs_go_to_the_worker_named_by_worker_host() {
    let sb = Sandbox::new();
    let server = Server::start(&sb, &["--default-worker-host", "a"]).await;
    let key = server.admin_key.clone();
    let _a = Worker::spawn(&sb, &server.url(), WorkerSpec::new("a", &key));
    let _b = Worker::spawn(&sb, &server.url(), WorkerSpec::new("b", &key));
    server.wait_workers("a", 1).await;
    server.wait_workers("b", 1).await;

    let for_a = server.submit("route to a", Some("a")).await;
    let for_b = server.submit("route to b", Some("b")).await;
    let default = server.submit("route by default", None).await;
    let for_c = server.submit("route to c", Some("c")).await;

    for id in [&for_a, &for_b, &default] {
        assert_succeeded(&server.wait_terminal(id, WAIT).await);
    }
    let on_a: BTreeSet<String> = sb.ran_on("a").into_iter().collect();
    let on_b: BTreeSet<String> = sb.ran_on("b").into_iter().collect();
    assert_eq!(
        on_a,
        BTreeSet::from([for_a.clone(), default.clone()]),
        "worker a ran"
    );
    assert_eq!(on_b, BTreeSet::from([for_b.clone()]), "worker b ran");
    let d = server.run(&default).await;
    assert_eq!(
        d["agent_config"]["worker_host"], "a",
        "the default worker host is recorded: {d}"
    );

    // Nobody serves "c": the run waits and says why.
    let waiting = server
        .wait_run(&for_c, "QUEUED with a reason", WAIT, |r| {
            !status_text(r).is_empty()
        })
        .await;
    assert_eq!(state(&waiting), "QUEUED", "{waiting}");
    let why = status_text(&waiting);
    assert!(
        why.contains("waiting for a worker") && why.contains("\"c\""),
        "status_message: {why}"
    );
    assert!(sb.agent_pid(&for_c).is_none(), "no agent ran the run for c");

    let _c = Worker::spawn(&sb, &server.url(), WorkerSpec::new("c", &key));
    let done = server.wait_terminal(&for_c, WAIT).await;
    assert_succeeded(&done);
    assert_eq!(sb.ran_on("c"), vec![for_c.clone()]);
    assert!(!sb.ran_on("a").contains(&for_c) && !sb.ran_on("b").contains(&for_c));
}

/// 2. Two processes with one worker id share the runs of that id.
#[tokio::test]
async fn workers_sharing_an_id_share_the_load() {
    let sb = Sandbox::new();
    sb.set_behaviour("sleep 2\n");
    let server = Server::start(&sb, &[]).await;
    let key = server.admin_key.clone();
    let _one = Worker::spawn(
        &sb,
        &server.url(),
        WorkerSpec::new("pool", &key).label("one").max(1),
    );
    let _two = Worker::spawn(
        &sb,
        &server.url(),
        WorkerSpec::new("pool", &key).label("two").max(1),
    );
    server.wait_workers("pool", 2).await;

    let mut ids = Vec::new();
    for i in 0..4 {
        ids.push(
            server
                .submit(&format!("pooled run {i}"), Some("pool"))
                .await,
        );
    }
    for id in &ids {
        assert_succeeded(&server.wait_terminal(id, WAIT).await);
    }
    let one = sb.ran_on("one");
    let two = sb.ran_on("two");
    assert!(
        !one.is_empty() && !two.is_empty(),
        "both workers ran some: one={one:?} two={two:?}"
    );
    let all: BTreeSet<String> = one.iter().chain(two.iter()).cloned().collect();
    assert_eq!(
        all,
        ids.iter().cloned().collect::<BTreeSet<_>>(),
        "every run ran"
    );
    assert_eq!(
        one.len() + two.len(),
        4,
        "no run ran twice: one={one:?} two={two:?}"
    );
}

/// 3. A one-slot worker gets three runs at once (they are queued before it
/// connects, so some are offered before its status is known and rejected):
/// all complete one after another, none in an error.
#[tokio::test]
async fn one_slot_worker_works_through_the_queue() {
    let sb = Sandbox::new();
    let root = sb.path().display().to_string();
    sb.set_behaviour(&format!(
        "if [ -e '{root}/busy' ]; then echo \"$TASK_ID\" >> '{root}/overlap'; fi\n\
         touch '{root}/busy'\nsleep 1\nrm -f '{root}/busy'\n"
    ));
    let server = Server::start(&sb, &[]).await;
    let key = server.admin_key.clone();
    let mut ids = Vec::new();
    for i in 0..3 {
        ids.push(server.submit(&format!("one slot {i}"), Some("solo")).await);
    }
    let worker = Worker::spawn(&sb, &server.url(), WorkerSpec::new("solo", &key).max(1));

    // Watch the runs while they complete; remember any capacity reason.
    let mut saw_capacity_reason = false;
    let mut finals = Vec::new();
    for id in &ids {
        let run = server
            .wait_run(id, "terminal", WAIT, |r| {
                matches!(
                    state(r),
                    "SUCCEEDED" | "FAILED" | "ERROR" | "CANCELLED" | "BLOCKED"
                )
            })
            .await;
        finals.push(run);
        for other in &ids {
            let r = server.run(other).await;
            let why = status_text(&r);
            if state(&r) == "QUEUED" && (why.contains("free slot") || why.contains("capacity")) {
                saw_capacity_reason = true;
            }
        }
    }
    for run in &finals {
        assert_succeeded(run);
    }
    assert!(
        !sb.path().join("overlap").exists(),
        "two runs ran at once on a one-slot worker: {}",
        std::fs::read_to_string(sb.path().join("overlap")).unwrap_or_default()
    );
    let ran = sb.ran_on("solo");
    assert_eq!(ran.len(), 3, "each run ran exactly once: {ran:?}");
    let rejected = worker.log().contains("rejecting");
    eprintln!(
        "worker rejected an assignment: {rejected}; a QUEUED capacity reason was seen: {saw_capacity_reason}"
    );
}

/// 3b. A run that waits for a busy worker says why.
#[tokio::test]
async fn queued_run_behind_a_busy_worker_says_it_waits_for_a_slot() {
    let sb = Sandbox::new();
    sb.set_behaviour("sleep 30\n");
    let server = Server::start(&sb, &["--cancel-timeout", "3s"]).await;
    let key = server.admin_key.clone();
    let _w = Worker::spawn(&sb, &server.url(), WorkerSpec::new("busy", &key).max(1));
    server.wait_workers("busy", 1).await;
    let first = server.submit("take the only slot", Some("busy")).await;
    server.wait_running(&first).await;

    let second = server.submit("wait for the slot", Some("busy")).await;
    let waiting = server
        .wait_run(&second, "QUEUED waiting for a free slot", WAIT, |r| {
            state(r) == "QUEUED"
                && (status_text(r).contains("free slot") || status_text(r).contains("capacity"))
        })
        .await;
    assert!(status_text(&waiting).contains("\"busy\""), "{waiting}");

    // The slot frees up: the second run gets it.
    assert_eq!(server.cancel(&first).await.status, 200);
    assert_eq!(
        state(&server.wait_terminal(&first, WAIT).await),
        "CANCELLED"
    );
    server.wait_running(&second).await;
    assert_eq!(server.cancel(&second).await.status, 200);
    assert_eq!(
        state(&server.wait_terminal(&second, WAIT).await),
        "CANCELLED"
    );
}

/// 3c. The reason of a run queued before its worker connected follows what
/// happens next: once the worker is connected and busy, it no longer says
/// the run waits for the worker to connect.
#[tokio::test]
async fn reason_of_a_run_queued_before_its_worker_connected_is_refreshed() {
    let sb = Sandbox::new();
    sb.set_behaviour("sleep 30\n");
    let server = Server::start(&sb, &["--cancel-timeout", "3s"]).await;
    let key = server.admin_key.clone();
    let ids = [
        server.submit("queued early 1", Some("later")).await,
        server.submit("queued early 2", Some("later")).await,
    ];
    for id in &ids {
        let r = server.run(id).await;
        assert!(status_text(&r).contains("to connect"), "{r}");
    }
    let _w = Worker::spawn(&sb, &server.url(), WorkerSpec::new("later", &key).max(1));
    server.wait_workers("later", 1).await;
    let running = wait_for("one of the runs to start", WAIT, || async {
        for id in &ids {
            if matches!(state(&server.run(id).await), "CLAIMED" | "INPROGRESS") {
                return Some(id.clone());
            }
        }
        None
    })
    .await;
    let other = ids.iter().find(|id| **id != running).unwrap();
    let r = server
        .wait_run(
            other,
            "QUEUED with a reason that is not 'to connect'",
            // Well below the agent's 30 s, so the run is still waiting.
            Duration::from_secs(10),
            |r| state(r) == "QUEUED" && !status_text(r).contains("to connect"),
        )
        .await;
    let why = status_text(&r);
    assert!(
        why.contains("free slot") || why.contains("capacity"),
        "status_message: {why}"
    );
}

/// 4. Cancel while QUEUED, while running, and after the end.
#[tokio::test]
async fn cancel_in_each_state() {
    let sb = Sandbox::new();
    sb.set_behaviour("sleep 30\n");
    let server = Server::start(&sb, &["--cancel-timeout", "3s"]).await;
    let key = server.admin_key.clone();

    // QUEUED: nobody serves "ghost"; the cancel is immediate.
    let queued = server.submit("cancel me while queued", Some("ghost")).await;
    let r = server.cancel(&queued).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json(), json!(queued));
    let run = server.run(&queued).await;
    assert_eq!(state(&run), "CANCELLED", "{run}");

    // Running: the worker stops the agent and confirms.
    let _w = Worker::spawn(&sb, &server.url(), WorkerSpec::new("w", &key));
    server.wait_workers("w", 1).await;
    let running = server.submit("cancel me while running", Some("w")).await;
    server.wait_running(&running).await;
    let pid = wait_for("the agent to start", WAIT, || async {
        sb.agent_pid(&running)
    })
    .await;
    assert!(alive(pid), "agent {pid} runs before the cancel");
    let r = server.cancel(&running).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let run = server.wait_terminal(&running, WAIT).await;
    assert_eq!(state(&run), "CANCELLED", "{run}");
    assert_eq!(
        status_text(&run),
        "Task cancelled by user request.",
        "the worker confirmed (not the cancel timeout): {run}"
    );
    wait_for("the cancelled agent to be gone", WAIT, || async {
        (!alive(pid)).then_some(())
    })
    .await;

    // Terminal: nothing to cancel.
    let r = server.cancel(&running).await;
    assert_eq!(r.status, 400, "{}", r.body);
    let r = server.cancel(&queued).await;
    assert_eq!(r.status, 400, "{}", r.body);
}

/// 5a. A worker that dies with its run: after the lease grace the run ends
/// ERROR naming the lost worker.
#[tokio::test]
async fn run_of_a_killed_worker_ends_error_after_the_lease() {
    let sb = Sandbox::new();
    sb.set_behaviour("sleep 30\n");
    let server = Server::start(&sb, &["--lease-grace", "2s"]).await;
    let key = server.admin_key.clone();
    let mut w = Worker::spawn(&sb, &server.url(), WorkerSpec::new("doomed", &key));
    server.wait_workers("doomed", 1).await;
    let id = server.submit("lose my worker", Some("doomed")).await;
    server.wait_running(&id).await;
    wait_for("the agent to start", WAIT, || async { sb.agent_pid(&id) }).await;

    w.kill().await;
    let run = server.wait_terminal(&id, WAIT).await;
    assert_eq!(state(&run), "ERROR", "{run}");
    let msg = status_text(&run);
    assert!(
        msg.contains("\"doomed\"") && msg.contains("was lost"),
        "status_message: {msg}"
    );
    assert_eq!(
        run["status_message"]["error_code"], "resource_unavailable",
        "{run}"
    );
}

/// 5b. A new process with the same worker id does not have the run: it is
/// not adopted for good, and still ends ERROR after the lease.
#[tokio::test]
async fn replacement_worker_without_the_run_does_not_keep_it_alive() {
    let sb = Sandbox::new();
    sb.set_behaviour("sleep 30\n");
    let server = Server::start(&sb, &["--lease-grace", "4s"]).await;
    let key = server.admin_key.clone();
    let mut first = Worker::spawn(
        &sb,
        &server.url(),
        WorkerSpec::new("phoenix", &key).label("first"),
    );
    server.wait_workers("phoenix", 1).await;
    let id = server
        .submit("lose my worker, get another", Some("phoenix"))
        .await;
    server.wait_running(&id).await;
    wait_for("the agent to start", WAIT, || async { sb.agent_pid(&id) }).await;

    first.kill().await;
    let _second = Worker::spawn(
        &sb,
        &server.url(),
        WorkerSpec::new("phoenix", &key).label("second"),
    );
    let run = server.wait_terminal(&id, WAIT).await;
    assert_eq!(state(&run), "ERROR", "{run}");
    assert!(status_text(&run).contains("was lost"), "{run}");
    assert!(
        sb.ran_on("second").is_empty(),
        "the replacement did not run it again"
    );
}

/// 5c/6. The server restarts while a run is in progress: the worker
/// reconnects, the run finishes and ends SUCCEEDED; it ran once.
#[tokio::test]
async fn server_restart_with_a_running_run() {
    let sb = Sandbox::new();
    sb.set_behaviour("sleep 4\n");
    let mut server = Server::start(&sb, &["--lease-grace", "60s"]).await;
    let key = server.admin_key.clone();
    let _w = Worker::spawn(&sb, &server.url(), WorkerSpec::new("steady", &key));
    server.wait_workers("steady", 1).await;
    let id = server
        .submit("survive a server restart", Some("steady"))
        .await;
    server.wait_running(&id).await;
    wait_for("the agent to start", WAIT, || async { sb.agent_pid(&id) }).await;

    server.restart(&sb).await;
    let run = server.wait_terminal(&id, LONG_WAIT).await;
    assert_succeeded(&run);
    assert_eq!(
        sb.ran_on("steady"),
        vec![id.clone()],
        "the run ran exactly once"
    );
}

/// 6. Runs queued for an absent worker survive a server restart and run
/// when it connects.
#[tokio::test]
async fn server_restart_keeps_queued_runs() {
    let sb = Sandbox::new();
    let mut server = Server::start(&sb, &[]).await;
    let key = server.admin_key.clone();
    let mut ids = Vec::new();
    for i in 0..3 {
        ids.push(
            server
                .submit(&format!("queued across a restart {i}"), Some("late"))
                .await,
        );
    }
    server.restart(&sb).await;
    assert_eq!(server.admin_key, key, "the admin key survives");
    for id in &ids {
        let run = server.run(id).await;
        assert_eq!(state(&run), "QUEUED", "{run}");
    }
    let _w = Worker::spawn(&sb, &server.url(), WorkerSpec::new("late", &key));
    for id in &ids {
        assert_succeeded(&server.wait_terminal(id, WAIT).await);
    }
    let ran: BTreeSet<String> = sb.ran_on("late").into_iter().collect();
    assert_eq!(ran, ids.iter().cloned().collect::<BTreeSet<_>>());
}

/// 7. Keys end to end: a wrong key never connects; worker keys only open the
/// WebSocket; the CLI lists keys without secrets and revokes them.
#[tokio::test]
async fn keys_end_to_end() {
    let sb = Sandbox::new();
    let server = Server::start(&sb, &[]).await;
    let worker_key = server.create_key("worker", "w").await;
    assert!(
        worker_key.starts_with("wk-"),
        "worker keys start wk-: {worker_key}"
    );

    // A worker with a wrong key: 401, never connected, its run stays QUEUED.
    let wrong = Worker::spawn(
        &sb,
        &server.url(),
        WorkerSpec::new("intruder", "wk-this-is-not-a-key"),
    );
    let stuck = server.submit("for the intruder", Some("intruder")).await;
    wait_for("the wrong-key worker to log a 401", WAIT, || async {
        wrong.log().contains("401").then_some(())
    })
    .await;
    assert!(
        server
            .workers()
            .await
            .iter()
            .all(|w| w["worker_id"] != "intruder"),
        "the intruder is not connected"
    );
    let run = server.run(&stuck).await;
    assert_eq!(state(&run), "QUEUED", "{run}");
    assert!(sb.agent_pid(&stuck).is_none());

    // The worker key serves the WebSocket...
    let _good = Worker::spawn(&sb, &server.url(), WorkerSpec::new("good", &worker_key));
    let ok = server.submit("for the good worker", Some("good")).await;
    assert_succeeded(&server.wait_terminal(&ok, WAIT).await);
    // ...and nothing else.
    let body = json!({ "prompt": "from a worker key", "config": { "worker_host": "good" } });
    let r = server
        .call("POST", "/api/v1/agent/runs", Some(&worker_key), Some(&body))
        .await;
    assert_eq!(r.status, 403, "{}", r.body);
    let r = server
        .call("GET", "/api/v1/agent/runs", Some(&worker_key), None)
        .await;
    assert_eq!(r.status, 403, "{}", r.body);

    // CLI: list shows names and prefixes, never secrets.
    let team_key = server.create_key("team", "t").await;
    let r = server
        .call("GET", "/api/v1/agent/runs", Some(&team_key), None)
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let (ok_list, listing, err) = server.key_cli(&["list"]).await;
    assert!(ok_list, "api-key list failed: {err}");
    for secret in [&server.admin_key, &worker_key, &team_key] {
        assert!(
            !listing.contains(secret.as_str()),
            "a secret is listed:\n{listing}"
        );
        let shown: String = secret.chars().take(8).collect();
        assert!(
            listing.contains(&shown),
            "the key prefix {shown} is listed:\n{listing}"
        );
    }
    let id_of = |name: &str| -> String {
        listing
            .lines()
            .find(|l| l.split_whitespace().last() == Some(name))
            .and_then(|l| l.split_whitespace().next())
            .unwrap_or_else(|| panic!("no key named {name} in:\n{listing}"))
            .to_owned()
    };
    let (team_id, worker_id) = (id_of("t"), id_of("w"));
    assert!(
        listing
            .lines()
            .any(|l| l.starts_with(&worker_id) && l.contains("worker")),
        "{listing}"
    );

    // Revoke: the team key gets 401 where it got 200, the worker key 401
    // where it got 403. The offline CLI is another process: the server
    // honours a key it saw within the last second (auth::KeyCache), so the
    // revocation is waited for, not expected on the very next request.
    for id in [&team_id, &worker_id] {
        let (ok_revoke, out, err) = server.key_cli(&["revoke", id]).await;
        assert!(ok_revoke, "revoke {id}: {err}");
        assert!(out.contains(id.as_str()), "{out}");
    }
    for key in [&team_key, &worker_key] {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let r = server
                .call("GET", "/api/v1/agent/runs", Some(key), None)
                .await;
            if r.status == 401 {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "a revoked key still works: {} {}",
                r.status,
                r.body
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let (ok_twice, _, _) = server.key_cli(&["revoke", &team_id]).await;
    assert!(!ok_twice, "revoking twice fails");
}

/// 8. `GET /api/v1/workers` shows the connected worker and what it runs.
#[tokio::test]
async fn workers_endpoint_shows_the_worker_and_its_runs() {
    let sb = Sandbox::new();
    sb.set_behaviour("sleep 30\n");
    let server = Server::start(&sb, &["--cancel-timeout", "3s"]).await;
    let key = server.admin_key.clone();
    let _w = Worker::spawn(&sb, &server.url(), WorkerSpec::new("listed", &key).max(3));
    let listed = server.wait_workers("listed", 1).await;
    assert_eq!(listed[0]["running_runs"], json!([]), "{}", listed[0]);

    let id = server
        .submit("show me in the worker list", Some("listed"))
        .await;
    server.wait_running(&id).await;
    let w = wait_for("the run in the worker's running_runs", WAIT, || async {
        server
            .workers()
            .await
            .into_iter()
            .find(|w| w["worker_id"] == "listed" && w["running_runs"] == json!([id.clone()]))
    })
    .await;
    assert_eq!(w["backend"], "direct", "{w}");
    assert_eq!(w["max_concurrent_tasks"], 3, "{w}");
    assert_eq!(w["version"], env!("CARGO_PKG_VERSION"), "{w}");
    assert_eq!(w["at_capacity"], false, "{w}");
    assert_eq!(w["draining"], false, "{w}");
    assert!(
        w["connection_id"].as_str().is_some_and(|s| !s.is_empty()),
        "{w}"
    );
    assert!(
        w["remote_addr"]
            .as_str()
            .is_some_and(|s| s.starts_with("127.0.0.1:")),
        "{w}"
    );

    // Once it ends the list is empty again.
    assert_eq!(server.cancel(&id).await.status, 200);
    server.wait_terminal(&id, WAIT).await;
    wait_for("running_runs to empty", WAIT, || async {
        server
            .workers()
            .await
            .into_iter()
            .find(|w| w["worker_id"] == "listed" && w["running_runs"] == json!([]))
    })
    .await;
}

/// 9. `--queue-timeout`: a run nobody picks up ends ERROR.
#[tokio::test]
async fn queue_timeout_ends_unserved_runs() {
    let sb = Sandbox::new();
    let server = Server::start(&sb, &["--queue-timeout", "2s"]).await;
    let id = server.submit("nobody will take me", Some("nobody")).await;
    let run = server.wait_terminal(&id, WAIT).await;
    assert_eq!(state(&run), "ERROR", "{run}");
    assert_eq!(
        run["status_message"]["error_code"], "resource_unavailable",
        "{run}"
    );
    assert!(status_text(&run).contains("\"nobody\""), "{run}");
}

/// The agent's progress report with its run token: INPROGRESS, then the
/// worker's result. The server listens on a port chosen up front because
/// the run's API base URL is built from the configured listen address.
#[tokio::test]
async fn agent_reports_progress_with_its_run_token() {
    let sb = Sandbox::new();
    if std::process::Command::new("sh")
        .args(["-c", "command -v curl"])
        .output()
        .map(|o| !o.status.success())
        .unwrap_or(true)
    {
        eprintln!("curl is not installed; skipping");
        return;
    }
    sb.set_behaviour("sleep 2\n");
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let server = Server::start_on(&sb, &format!("127.0.0.1:{port}"), &[]).await;
    let key = server.admin_key.clone();
    let _w = Worker::spawn(&sb, &server.url(), WorkerSpec::new("reporter", &key));
    let id = server.submit("report progress", Some("reporter")).await;
    let run = server
        .wait_run(&id, "INPROGRESS", WAIT, |r| state(r) == "INPROGRESS")
        .await;
    assert!(run["started_at"].is_string(), "{run}");
    assert_eq!(sb.report_status(&id).as_deref(), Some("200"));
    let token = sb
        .agent_env(&id, "WARP_API_KEY")
        .expect("agent WARP_API_KEY");
    assert_ne!(
        token, key,
        "the agent gets a run token, not the worker's key"
    );
    assert_succeeded(&server.wait_terminal(&id, WAIT).await);
    // The token dies with the run.
    let r = server
        .call(
            "GET",
            &format!("/api/v1/agent/runs/{id}"),
            Some(&token),
            None,
        )
        .await;
    assert_eq!(r.status, 401, "{}", r.body);
}

/// With `--listen 127.0.0.1:0` (and no `--public-url`) the agent must still
/// be told a URL that reaches this server.
#[tokio::test]

async fn agent_api_base_url_uses_the_bound_port() {
    let sb = Sandbox::new();
    let server = Server::start(&sb, &[]).await;
    let key = server.admin_key.clone();
    let _w = Worker::spawn(&sb, &server.url(), WorkerSpec::new("where", &key));
    let id = server.submit("where is the server", Some("where")).await;
    assert_succeeded(&server.wait_terminal(&id, WAIT).await);
    let base = sb
        .agent_env(&id, "OZ_API_BASE_URL")
        .expect("agent OZ_API_BASE_URL");
    assert_eq!(base, format!("{}/api/v1", server.url()));
}

/// `--threads` (or `threads:` in the config file) sizes the server's
/// runtime: several threads serve a run end to end like the default single
/// one on a small machine, and an impossible count is refused at startup.
#[tokio::test]
async fn threads_setting_sizes_the_runtime() {
    let sb = Sandbox::new();
    for bad in ["0", "1025", "many"] {
        let out = tokio::process::Command::new(e2e_support::server_bin())
            .args(["--threads", bad, "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(sb.data_dir())
            .env_remove("OZ_CONFIG")
            .env_remove("OZ_THREADS")
            .output()
            .await
            .unwrap();
        assert!(!out.status.success(), "--threads {bad} was accepted");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("threads"), "--threads {bad}: {err}");
    }

    let mut server = Server::start(&sb, &["--threads", "3"]).await;
    assert!(server.log().contains("threads=3"), "{}", server.log());
    let key = server.admin_key.clone();
    let w = Worker::spawn(&sb, &server.url(), WorkerSpec::new("mt", &key));
    let id = server.submit("on three threads", Some("mt")).await;
    assert_succeeded(&server.wait_terminal(&id, WAIT).await);
    drop(w);
    server.stop().await;

    let config = sb.path().join("server.yaml");
    std::fs::write(&config, "threads: 2\n").unwrap();
    let config = config.display().to_string();
    let mut server = Server::start(&sb, &["--config", &config]).await;
    assert!(server.log().contains("threads=2"), "{}", server.log());
    server.stop().await;
}
