//! The `oz` CLI end to end: the real `oz` binary against a real `oz-server`
//! and a real `oz-agent-worker` (Direct backend, whose agent is this same
//! `oz`, running the `command` harness), plus snapshots of the help texts
//! and of the table renderers.

mod cli_support;

use chrono::{Duration as Age, SecondsFormat, Utc};
use cli_support::{Server, followed_states, output, oz_bare, unused_port};
use oz_cli::output::Style;
use oz_protocol::api::{RunItem, RunState};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};

/// The run id from run-cloud's first line, `Run <id> queued…`.
fn queued_id(stdout: &str) -> String {
    stdout
        .lines()
        .find_map(|l| l.strip_prefix("Run ")?.split_once(" queued"))
        .map(|(id, _)| id.to_owned())
        .unwrap_or_else(|| panic!("no `Run <id> queued` line in:\n{stdout}"))
}

/// The value of a `Key  value` line of `oz run get`.
fn field<'a>(table: &'a str, key: &str) -> &'a str {
    table
        .lines()
        .find_map(|l| {
            let rest = l.strip_prefix(key)?;
            rest.starts_with("  ").then(|| rest.trim())
        })
        .unwrap_or_else(|| panic!("no {key:?} line in:\n{table}"))
}

fn ids(list: &Value) -> Vec<String> {
    list["runs"]
        .as_array()
        .unwrap_or_else(|| panic!("no runs array: {list}"))
        .iter()
        .map(|r| r["run_id"].as_str().expect("run_id").to_owned())
        .collect()
}

/// One line, an `error: ` sentence, nothing dumped.
#[track_caller]
fn assert_one_sentence(stderr: &str) {
    let text = stderr.trim_end();
    assert_eq!(text.lines().count(), 1, "more than one line:\n{stderr}");
    assert!(text.starts_with("error: "), "{stderr}");
    for dump in ["{", "panicked", "backtrace", "RUST_BACKTRACE"] {
        assert!(!text.contains(dump), "{dump:?} in: {stderr}");
    }
}

// ---- 1. agent run-cloud -----------------------------------------------------------

#[tokio::test]
async fn run_cloud_follow_prints_the_states_until_succeeded() {
    let srv = Server::start().await;
    let _w = srv.worker("w1").await;
    let out = srv
        .oz(&[
            "agent",
            "run-cloud",
            "--prompt",
            "echo hello",
            "--host",
            "w1",
            "--harness",
            "command",
            "--follow",
        ])
        .await;
    out.assert_code(0);
    let id = queued_id(&out.stdout);
    assert!(
        out.stdout
            .contains(&format!("Run {id} queued for worker \"w1\".")),
        "{out}"
    );
    assert!(out.stdout.contains(&format!("oz run get {id}")), "{out}");
    let states = followed_states(&out.stdout);
    assert_eq!(
        states.last().map(String::as_str),
        Some("SUCCEEDED"),
        "states: {states:?}\n{out}"
    );
    assert_eq!(srv.run(&id).await.state, RunState::Succeeded);
}

#[tokio::test]
async fn run_cloud_follow_of_a_failing_run_exits_1_with_the_reason() {
    let srv = Server::start().await;
    let _w = srv.worker("w1").await;
    let out = srv
        .oz(&[
            "agent",
            "run-cloud",
            "--prompt",
            "exit 3",
            "--host",
            "w1",
            "--harness",
            "command",
            "--follow",
        ])
        .await;
    out.assert_code(1);
    let id = queued_id(&out.stdout);
    let run = srv.run(&id).await;
    assert_eq!(run.state, RunState::Failed);
    let message = run.status_message.expect("a failed run says why").message;
    assert!(!message.is_empty());
    assert!(
        out.stderr
            .contains(&format!("error: run {id} ended FAILED: {message}")),
        "{out}"
    );
    assert_eq!(
        followed_states(&out.stdout).last().map(String::as_str),
        Some("FAILED"),
        "{out}"
    );
}

#[tokio::test]
async fn run_cloud_json_output_is_the_api_answer() {
    let srv = Server::start().await;
    let _w = srv.worker("w1").await;
    let out = srv
        .oz(&[
            "agent",
            "run-cloud",
            "--prompt",
            "echo json",
            "--host",
            "w1",
            "--harness",
            "command",
            "--output",
            "json",
        ])
        .await;
    out.assert_code(0);
    let v = out.json();
    let id = v["run_id"].as_str().expect("run_id");
    assert!(!id.is_empty(), "{v}");
    assert_eq!(v["task_id"], id, "{v}");
    assert_eq!(v["state"], "QUEUED", "{v}");
    // The run is real and runs to the end.
    srv.wait_state(id, RunState::Succeeded).await;
}

// ---- 2. run files -----------------------------------------------------------------

const RUN_FILE: &str = "\
prompt: |
  echo from the file
title: From the file
config:
  worker_host: file-host
  name: nightly
  harness: {type: command}
metadata:
  team: platform
  ticket: ABC-1
";

#[tokio::test]
async fn run_file_sets_the_fields_and_flags_override_it() {
    // No worker: the runs stay QUEUED, which is all this needs.
    let srv = Server::start().await;
    let file = srv.dir.path().join("run.yaml");
    std::fs::write(&file, RUN_FILE).unwrap();
    let file = file.to_str().unwrap();

    let out = srv.oz(&["agent", "run-cloud", "--file", file]).await;
    out.assert_code(0);
    assert!(out.stdout.contains("for worker \"file-host\""), "{out}");
    let id = queued_id(&out.stdout);
    let got = srv.oz(&["run", "get", &id, "--output", "json"]).await;
    got.assert_code(0);
    let run = got.json();
    assert_eq!(run["run_id"], id.as_str());
    assert_eq!(run["prompt"], "echo from the file\n", "{run}");
    assert_eq!(run["title"], "From the file", "{run}");
    assert_eq!(run["agent_config"]["worker_host"], "file-host", "{run}");
    assert_eq!(run["agent_config"]["name"], "nightly", "{run}");
    // Not a harness type the official API names: kept under runner_harness.
    assert_eq!(
        run["agent_config"]["runner_harness"]["type"], "command",
        "{run}"
    );
    assert_eq!(
        run["metadata"],
        json!({"team": "platform", "ticket": "ABC-1"}),
        "{run}"
    );

    let out = srv
        .oz(&[
            "agent",
            "run-cloud",
            "--file",
            file,
            "--prompt",
            "echo from a flag",
            "--title",
            "From a flag",
            "--host",
            "flag-host",
            "--name",
            "weekly",
            "--metadata",
            "ticket=XYZ-9",
        ])
        .await;
    out.assert_code(0);
    let id = queued_id(&out.stdout);
    let run = srv
        .oz(&["run", "get", &id, "--output", "json"])
        .await
        .assert_code(0)
        .json();
    assert_eq!(run["prompt"], "echo from a flag", "{run}");
    assert_eq!(run["title"], "From a flag", "{run}");
    assert_eq!(run["agent_config"]["worker_host"], "flag-host", "{run}");
    assert_eq!(run["agent_config"]["name"], "weekly", "{run}");
    // What the flags do not name still comes from the file.
    // Not a harness type the official API names: kept under runner_harness.
    assert_eq!(
        run["agent_config"]["runner_harness"]["type"], "command",
        "{run}"
    );
    assert_eq!(
        run["metadata"],
        json!({"team": "platform", "ticket": "XYZ-9"}),
        "{run}"
    );
}

#[tokio::test]
async fn run_cloud_usage_errors_exit_2() {
    let srv = Server::start().await;
    let out = srv.oz(&["agent", "run-cloud", "--host", "h"]).await;
    out.assert_code(2);
    assert!(out.stderr.contains("--prompt"), "{out}");
    let missing = srv.dir.path().join("missing.yaml");
    let out = srv
        .oz(&["agent", "run-cloud", "--file", missing.to_str().unwrap()])
        .await;
    out.assert_code(2);
    assert!(out.stderr.contains("cannot read"), "{out}");
    let out = srv
        .oz(&[
            "agent",
            "run-cloud",
            "--prompt",
            "x",
            "--metadata",
            "novalue",
        ])
        .await;
    out.assert_code(2);
    assert!(out.stderr.contains("KEY=VALUE"), "{out}");
}

// ---- 3. run list ------------------------------------------------------------------

#[tokio::test]
async fn run_list_shows_filters_and_pages_runs() {
    let srv = Server::start().await;
    let _w = srv.worker("w1").await;
    let follow = |prompt: &'static str, name: &'static str| {
        let srv = &srv;
        async move {
            let out = srv
                .oz(&[
                    "agent",
                    "run-cloud",
                    "--prompt",
                    prompt,
                    "--host",
                    "w1",
                    "--harness",
                    "command",
                    "--name",
                    name,
                    "--follow",
                ])
                .await;
            queued_id(&out.stdout)
        }
    };
    let ok = follow("echo one", "alpha").await;
    let failed = follow("exit 3", "beta").await;
    srv.wait_state(&ok, RunState::Succeeded).await;
    srv.wait_state(&failed, RunState::Failed).await;
    let queued = srv
        .submit(&[
            "--prompt",
            "echo never",
            "--host",
            "nobody",
            "--name",
            "alpha",
        ])
        .await;

    // Table.
    let out = srv.oz(&["run", "list"]).await;
    out.assert_code(0);
    let header = out.stdout.lines().next().unwrap_or_default();
    for col in ["RUN ID", "STATE", "WORKER", "CREATED", "TITLE"] {
        assert!(header.contains(col), "{col}: {out}");
    }
    for (id, state, worker) in [
        (&ok, "SUCCEEDED", "w1"),
        (&failed, "FAILED", "w1"),
        (&queued, "QUEUED", "nobody"),
    ] {
        let row = out
            .stdout
            .lines()
            .find(|l| l.starts_with(id.as_str()))
            .unwrap_or_else(|| panic!("no row for {id}:\n{out}"));
        assert!(row.contains(state), "{row}");
        assert!(row.contains(worker), "{row}");
    }
    assert!(!out.stdout.contains("more runs exist"), "{out}");

    // JSON: newest first.
    let all = srv
        .oz(&["run", "list", "--output", "json"])
        .await
        .assert_code(0)
        .json();
    assert_eq!(ids(&all), vec![queued.clone(), failed.clone(), ok.clone()]);
    assert_eq!(all["page_info"]["has_next_page"], false, "{all}");

    // Filters.
    let v = srv
        .oz(&["run", "list", "--state", "SUCCEEDED", "--output", "json"])
        .await
        .assert_code(0)
        .json();
    assert_eq!(ids(&v), vec![ok.clone()]);
    let v = srv
        .oz(&[
            "run", "list", "--state", "failed", "--state", "queued", "--output", "json",
        ])
        .await
        .assert_code(0)
        .json();
    assert_eq!(ids(&v), vec![queued.clone(), failed.clone()]);
    let v = srv
        .oz(&["run", "list", "--name", "alpha", "--output", "json"])
        .await
        .assert_code(0)
        .json();
    assert_eq!(ids(&v), vec![queued.clone(), ok.clone()]);
    let out = srv.oz(&["run", "list", "--state", "SUCCEEDED"]).await;
    out.assert_code(0);
    assert!(out.stdout.contains(&ok), "{out}");
    assert!(!out.stdout.contains(&failed), "{out}");
    let out = srv.oz(&["run", "list", "--name", "nothing-has-this"]).await;
    out.assert_code(0);
    assert_eq!(out.stdout.trim(), "No runs.");

    // Paging.
    let out = srv.oz(&["run", "list", "--limit", "1"]).await;
    out.assert_code(0);
    assert_eq!(out.stdout.lines().count(), 3, "header, row, hint:\n{out}");
    assert!(out.stdout.contains(&queued), "{out}");
    assert!(
        out.stdout.contains("(more runs exist: raise --limit)"),
        "{out}"
    );
    let v = srv
        .oz(&["run", "list", "--limit", "1", "--output", "json"])
        .await
        .assert_code(0)
        .json();
    assert_eq!(ids(&v), vec![queued.clone()]);
    assert_eq!(v["page_info"]["has_next_page"], true, "{v}");
}

#[tokio::test]
async fn run_list_bad_options_are_usage_errors() {
    for limit in ["0", "501", "many"] {
        let out = oz_bare(&["run", "list", "--limit", limit]).await;
        out.assert_code(2);
        assert!(out.stderr.contains("--limit"), "{out}");
        assert!(out.stdout.is_empty(), "{out}");
    }
    let out = oz_bare(&["run", "list", "--state", "bogus"]).await;
    out.assert_code(2);
    assert!(out.stderr.contains("\"bogus\" is not a run state"), "{out}");
    for state in ["QUEUED", "SUCCEEDED", "CANCELLED"] {
        assert!(out.stderr.contains(state), "the states are listed: {out}");
    }
}

// ---- 4. run get -------------------------------------------------------------------

#[tokio::test]
async fn run_get_shows_the_run_as_a_table() {
    let srv = Server::start().await;
    let _w = srv.worker("w-get").await;
    let out = srv
        .oz(&[
            "agent",
            "run-cloud",
            "--prompt",
            "echo got it",
            "--title",
            "Get me",
            "--host",
            "w-get",
            "--harness",
            "command",
            "--follow",
        ])
        .await;
    out.assert_code(0);
    let id = queued_id(&out.stdout);
    let run = srv.run(&id).await;
    let status = run
        .status_message
        .expect("a finished run has a status")
        .message;

    let out = srv.oz(&["run", "get", &id]).await;
    out.assert_code(0);
    let t = &out.stdout;
    assert_eq!(field(t, "Run"), id);
    assert_eq!(field(t, "State"), "SUCCEEDED");
    assert_eq!(field(t, "Title"), "Get me");
    assert_eq!(field(t, "Worker"), "w-get");
    assert_eq!(field(t, "Status"), status);
    assert_eq!(field(t, "Harness"), "command");
    let prompt: Vec<&str> = t.lines().skip_while(|l| *l != "Prompt").collect();
    assert_eq!(prompt, ["Prompt", "  echo got it"], "{out}");
}

#[tokio::test]
async fn run_get_of_an_unknown_id_is_one_sentence_and_exit_3() {
    let srv = Server::start().await;
    let out = srv.oz(&["run", "get", "no-such-run"]).await;
    out.assert_code(3);
    assert!(out.stdout.is_empty(), "{out}");
    assert_one_sentence(&out.stderr);
    assert!(out.stderr.contains("no-such-run"), "{out}");
    assert!(out.stderr.contains("HTTP 404"), "{out}");
    let out = srv
        .oz(&["run", "get", "no-such-run", "--output", "json"])
        .await;
    out.assert_code(3);
    assert!(out.stdout.is_empty(), "{out}");
    assert_one_sentence(&out.stderr);
}

// ---- 5. run cancel ----------------------------------------------------------------

#[tokio::test]
async fn cancel_a_queued_run() {
    let srv = Server::start().await;
    let id = srv
        .submit(&[
            "--prompt",
            "echo never",
            "--host",
            "nobody",
            "--harness",
            "command",
        ])
        .await;
    assert_eq!(srv.run(&id).await.state, RunState::Queued);
    let out = srv.oz(&["run", "cancel", &id]).await;
    out.assert_code(0);
    assert_eq!(out.stdout.trim(), format!("Run {id} cancelled."), "{out}");
    let out = srv.oz(&["run", "get", &id]).await;
    out.assert_code(0);
    assert_eq!(field(&out.stdout, "State"), "CANCELLED", "{out}");
}

#[tokio::test]
async fn cancel_a_running_run_ends_it_cancelled() {
    let srv = Server::start().await;
    let _w = srv.worker("w1").await;
    // Follow it in the background: following ends when the run does.
    let mut follower = srv
        .oz_command(&[
            "agent",
            "run-cloud",
            "--prompt",
            "sleep 30",
            "--host",
            "w1",
            "--harness",
            "command",
            "--follow",
        ])
        .spawn()
        .expect("spawn oz");
    let mut lines = BufReader::new(follower.stdout.take().expect("stdout")).lines();
    let first = tokio::time::timeout(cli_support::WAIT, lines.next_line())
        .await
        .expect("run-cloud prints the run id")
        .expect("read stdout")
        .expect("a first line");
    let id = queued_id(&first);
    let rest = tokio::spawn(async move {
        let mut text = String::new();
        while let Ok(Some(l)) = lines.next_line().await {
            text.push_str(&l);
            text.push('\n');
        }
        text
    });
    srv.wait_state(&id, RunState::Inprogress).await;

    let out = srv.oz(&["run", "cancel", &id]).await;
    out.assert_code(0);
    assert!(
        out.stdout.contains(&format!("Run {id} cancelled."))
            || out.stdout.contains("Cancellation sent"),
        "{out}"
    );
    let run = srv.wait_state(&id, RunState::Cancelled).await;
    assert!(run.status_message.is_some(), "{run:?}");

    let status = tokio::time::timeout(cli_support::WAIT, follower.wait())
        .await
        .expect("following ends with the run")
        .expect("wait oz");
    let mut stderr = String::new();
    if let Some(mut e) = follower.stderr.take() {
        use tokio::io::AsyncReadExt;
        let _ = e.read_to_string(&mut stderr).await;
    }
    let stdout = rest.await.unwrap();
    assert_eq!(status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(
        stderr.contains(&format!("run {id} ended CANCELLED")),
        "{stderr}"
    );
    assert_eq!(
        followed_states(&stdout).last().map(String::as_str),
        Some("CANCELLED"),
        "{stdout}"
    );
}

#[tokio::test]
async fn cancel_a_finished_run_is_refused_with_the_servers_sentence() {
    let srv = Server::start().await;
    let _w = srv.worker("w1").await;
    let out = srv
        .oz(&[
            "agent",
            "run-cloud",
            "--prompt",
            "true",
            "--host",
            "w1",
            "--harness",
            "command",
            "--follow",
        ])
        .await;
    out.assert_code(0);
    let id = queued_id(&out.stdout);
    let out = srv.oz(&["run", "cancel", &id]).await;
    out.assert_code(3);
    assert_one_sentence(&out.stderr);
    assert!(out.stderr.contains("already ended (SUCCEEDED)"), "{out}");
    assert!(out.stderr.contains("nothing to cancel"), "{out}");
    assert!(out.stdout.is_empty(), "{out}");
    assert_eq!(srv.run(&id).await.state, RunState::Succeeded);
}

// ---- 6. worker list ---------------------------------------------------------------

#[tokio::test]
async fn worker_list_shows_the_connected_worker() {
    let srv = Server::start().await;
    let out = srv.oz(&["worker", "list"]).await;
    out.assert_code(0);
    assert_eq!(out.stdout.trim(), "No workers are connected.");

    let _w = srv.worker("box-1").await;
    let out = srv.oz(&["worker", "list"]).await;
    out.assert_code(0);
    let header = out.stdout.lines().next().unwrap_or_default();
    for col in ["WORKER ID", "BACKEND", "SLOTS", "STATE", "CONNECTED"] {
        assert!(header.contains(col), "{col}: {out}");
    }
    let row = out
        .stdout
        .lines()
        .find(|l| l.starts_with("box-1 "))
        .unwrap_or_else(|| panic!("no row for box-1:\n{out}"));
    for cell in ["direct", "unlimited", "ready", "127.0.0.1:"] {
        assert!(row.contains(cell), "{cell}: {row}");
    }

    let v = srv
        .oz(&["worker", "list", "--output", "json"])
        .await
        .assert_code(0)
        .json();
    let workers = v["workers"].as_array().expect("workers array");
    assert_eq!(workers.len(), 1, "{v}");
    assert_eq!(workers[0]["worker_id"], "box-1", "{v}");
    assert_eq!(workers[0]["backend"], "direct", "{v}");
    assert_eq!(workers[0]["draining"], false, "{v}");
}

// ---- 7. connection and auth errors ------------------------------------------------

#[tokio::test]
async fn no_api_url_is_a_usage_error_naming_the_variable() {
    let mut cmd = cli_support::oz_command(&["run", "list"]);
    cmd.env("WARP_API_KEY", "ozk_whatever");
    let out = output(cmd).await;
    out.assert_code(2);
    assert_one_sentence(&out.stderr);
    assert!(out.stderr.contains("OZ_API_BASE_URL"), "{out}");
    assert!(out.stderr.contains("--api-url"), "{out}");
}

#[tokio::test]
async fn no_api_key_is_a_usage_error_naming_the_variable() {
    let out = oz_bare(&["--api-url", "http://127.0.0.1:1", "worker", "list"]).await;
    out.assert_code(2);
    assert_one_sentence(&out.stderr);
    assert!(out.stderr.contains("WARP_API_KEY"), "{out}");
}

#[tokio::test]
async fn a_wrong_key_is_refused_with_exit_3() {
    let srv = Server::start().await;
    // By flag (which wins over the environment) and by environment.
    let out = srv
        .oz(&["--api-key", "ozk_not_a_real_key", "run", "list"])
        .await;
    out.assert_code(3);
    assert_one_sentence(&out.stderr);
    assert!(out.stderr.contains("key"), "{out}");
    assert!(out.stderr.contains("HTTP 401"), "{out}");
    let mut cmd = srv.oz_command(&["worker", "list"]);
    cmd.env("WARP_API_KEY", "ozk_not_a_real_key");
    let out = output(cmd).await;
    out.assert_code(3);
    assert!(out.stderr.contains("WARP_API_KEY"), "{out}");
}

#[tokio::test]
async fn flags_instead_of_the_environment_and_a_url_without_api_v1() {
    let srv = Server::start().await;
    let out = oz_bare(&[
        "--api-url",
        &format!("{}/", srv.url()),
        "--api-key",
        &srv.admin_key,
        "run",
        "list",
    ])
    .await;
    out.assert_code(0);
    assert_eq!(out.stdout.trim(), "No runs.");
}

#[tokio::test]
async fn a_server_that_is_down_cannot_be_reached() {
    let port = unused_port();
    let mut cmd = cli_support::oz_command(&["run", "list"]);
    cmd.env("OZ_API_BASE_URL", format!("http://127.0.0.1:{port}"))
        .env("WARP_API_KEY", "ozk_whatever");
    let out = output(cmd).await;
    out.assert_code(3);
    assert_one_sentence(&out.stderr);
    assert!(out.stderr.contains("cannot reach"), "{out}");
    assert!(out.stderr.contains(&format!("127.0.0.1:{port}")), "{out}");
}

// ---- 8. snapshots -----------------------------------------------------------------

async fn help(args: &[&str]) -> String {
    let out = oz_bare(args).await;
    out.assert_code(0);
    assert!(out.stderr.is_empty(), "{out}");
    out.stdout
}

#[tokio::test]
async fn snapshot_help_oz() {
    insta::assert_snapshot!("help_oz", help(&["--help"]).await);
}

#[tokio::test]
async fn snapshot_help_agent_run_cloud() {
    insta::assert_snapshot!(
        "help_agent_run_cloud",
        help(&["agent", "run-cloud", "--help"]).await
    );
}

#[tokio::test]
async fn snapshot_help_run_list() {
    insta::assert_snapshot!("help_run_list", help(&["run", "list", "--help"]).await);
}

/// An RFC 3339 time `age` ago: `output::ago` shows it the same way for as
/// long as a test takes (whole minutes, hours or days).
fn ago(age: Age) -> String {
    (Utc::now() - age).to_rfc3339_opts(SecondsFormat::Micros, true)
}

fn list_fixture() -> Vec<RunItem> {
    let runs = json!([
        {
            "run_id": "01a20000-0000-7000-8000-000000000003",
            "task_id": "01a20000-0000-7000-8000-000000000003",
            "state": "INPROGRESS",
            "prompt": "Upgrade the dependencies in repo/ and open a pull request",
            "title": "Weekly dependency upgrade for the platform team's services",
            "created_at": ago(Age::minutes(5) + Age::seconds(20)),
            "updated_at": ago(Age::minutes(1)),
            "agent_config": {"worker_host": "build-box-1", "harness": {"type": "claude"}}
        },
        {
            "run_id": "01a20000-0000-7000-8000-000000000002",
            "task_id": "01a20000-0000-7000-8000-000000000002",
            "state": "FAILED",
            "prompt": "exit 3",
            "title": "exit 3",
            "created_at": ago(Age::hours(3) + Age::minutes(10)),
            "updated_at": ago(Age::hours(3)),
            "agent_config": {"worker_host": "w1"}
        },
        {
            "run_id": "01a20000-0000-7000-8000-000000000001",
            "task_id": "01a20000-0000-7000-8000-000000000001",
            "state": "QUEUED",
            "prompt": "no config at all",
            "title": "no config\twith a tab",
            "created_at": ago(Age::days(2) + Age::hours(1)),
            "updated_at": ago(Age::days(2))
        }
    ]);
    serde_json::from_value(runs).expect("RunItems")
}

#[test]
fn snapshot_render_list() {
    let text = oz_cli::commands::run::render_list(&Style::plain(100), &list_fixture());
    insta::assert_snapshot!("render_list_100", text);
}

#[test]
fn snapshot_render_list_narrow() {
    let text = oz_cli::commands::run::render_list(&Style::plain(60), &list_fixture());
    assert!(text.contains('…'), "{text}");
    insta::assert_snapshot!("render_list_60", text);
}

#[test]
fn snapshot_render_run() {
    let run: RunItem = serde_json::from_value(json!({
        "run_id": "01a20000-0000-7000-8000-000000000004",
        "task_id": "01a20000-0000-7000-8000-000000000004",
        "state": "FAILED",
        "prompt": "Fix the flaky test in repo/.\nThen open a pull request.\n",
        "title": "Fix the flaky test",
        "created_at": "2025-01-02T03:04:05.000006Z",
        "started_at": "2025-01-02T03:04:06.000007Z",
        "updated_at": "2025-01-02T03:09:07.000008Z",
        "run_time": "PT0H5M1S",
        "agent_config": {"worker_host": "build-box-1", "harness": {"type": "command"}, "name": "flaky"},
        "status_message": {"message": "oz agent exited with status 3", "error_code": "AGENT_FAILED"},
        "artifacts": [
            {"artifact_type": "PULL_REQUEST", "data": {"url": "https://github.com/o/r/pull/7"}},
            {"data": {}}
        ]
    }))
    .expect("RunItem");
    let text = oz_cli::commands::run::render_run(&Style::plain(100), &run);
    insta::assert_snapshot!("render_run_full", text);

    let queued: RunItem = serde_json::from_value(json!({
        "run_id": "01a20000-0000-7000-8000-000000000005",
        "task_id": "01a20000-0000-7000-8000-000000000005",
        "state": "QUEUED",
        "prompt": "echo hi",
        "title": "echo hi",
        "created_at": "2025-01-02T03:04:05Z",
        "updated_at": "2025-01-02T03:04:05Z"
    }))
    .expect("RunItem");
    let text = oz_cli::commands::run::render_run(&Style::plain(100), &queued);
    insta::assert_snapshot!("render_run_queued", text);
}

fn workers_fixture() -> Vec<Value> {
    vec![
        json!({
            "worker_id": "build-box-1",
            "version": "0.1.0",
            "backend": "direct",
            "max_concurrent_tasks": 0,
            "running_runs": [],
            "draining": false,
            "at_capacity": false,
            "connected_at": ago(Age::minutes(7) + Age::seconds(15)),
            "remote_addr": "10.0.0.17:53122"
        }),
        json!({
            "worker_id": "a-worker-with-a-rather-long-identifier-for-the-gpu-pool",
            "version": "0.1.0",
            "backend": "docker",
            "max_concurrent_tasks": 2,
            "running_runs": ["r1", "r2"],
            "draining": false,
            "at_capacity": true,
            "connected_at": ago(Age::hours(5) + Age::minutes(1)),
            "remote_addr": "[2001:db8::1234:5678]:40000"
        }),
        json!({
            "worker_id": "old-box",
            "version": "0.0.9",
            "backend": "direct",
            "max_concurrent_tasks": 4,
            "running_runs": ["r3"],
            "draining": true,
            "connected_at": ago(Age::days(3) + Age::hours(2)),
            "remote_addr": "10.0.0.18:40100"
        }),
        // A worker that has not told its status yet.
        json!({"worker_id": "new-box", "connected_at": ago(Age::hours(1) + Age::minutes(30))}),
    ]
}

#[test]
fn snapshot_render_workers() {
    let text = oz_cli::commands::worker::render(&Style::plain(100), &workers_fixture());
    insta::assert_snapshot!("render_workers_100", text);
}

#[test]
fn snapshot_render_workers_narrow() {
    let text = oz_cli::commands::worker::render(&Style::plain(60), &workers_fixture());
    assert!(text.contains('…'), "{text}");
    insta::assert_snapshot!("render_workers_60", text);
}

#[test]

fn narrow_tables_fit_the_width() {
    let style = Style::plain(60);
    let lists = [
        oz_cli::commands::run::render_list(&style, &list_fixture()),
        oz_cli::commands::worker::render(&style, &workers_fixture()),
    ];
    for text in lists {
        for line in text.lines() {
            assert!(line.chars().count() <= 60, "{line:?}\n{text}");
        }
    }
}

// ---- 9. quickstart ----------------------------------------------------------------

#[tokio::test]
async fn quickstart_runs_the_demo_twice_on_the_same_data_dir() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("oz-data");
    let data_arg = data.to_str().unwrap().to_owned();
    let quickstart = || {
        let mut cmd = cli_support::oz_command(&[
            "quickstart",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            &data_arg,
        ]);
        cmd.current_dir(dir.path());
        output(cmd)
    };

    let first = quickstart().await;
    first.assert_code(0);
    for text in [
        "The demo run succeeded",
        "Hello from the Oz quickstart.",
        "Try next",
    ] {
        assert!(first.stdout.contains(text), "{text:?}:\n{first}");
    }
    assert_eq!(
        followed_states(&first.stdout).last().map(String::as_str),
        Some("SUCCEEDED"),
        "{first}"
    );
    let key = std::fs::read_to_string(data.join("admin-api-key")).expect("admin key saved");
    assert!(!key.trim().is_empty());

    let second = quickstart().await;
    second.assert_code(0);
    for text in [
        "The demo run succeeded",
        "Hello from the Oz quickstart.",
        "Try next",
    ] {
        assert!(second.stdout.contains(text), "{text:?}:\n{second}");
    }
    assert_eq!(
        std::fs::read_to_string(data.join("admin-api-key")).unwrap(),
        key,
        "the second run re-uses the saved admin key"
    );
}

// ---- bugs found -------------------------------------------------------------------

#[tokio::test]

async fn a_closed_stdout_does_not_panic() {
    let srv = Server::start().await;
    for _ in 0..3 {
        srv.submit(&["--prompt", "echo x", "--host", "nobody"])
            .await;
    }
    let mut cmd = srv.oz_command(&["run", "list", "--output", "json"]);
    cmd.env("RUST_BACKTRACE", "1");
    let mut child = cmd.spawn().expect("spawn oz");
    // Close the reading end before oz writes, like `| head -1` does.
    drop(child.stdout.take());
    let out = tokio::time::timeout(cli_support::WAIT, child.wait_with_output())
        .await
        .expect("oz finishes")
        .expect("wait oz");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_ne!(out.status.code(), Some(101), "{stderr}");
}
