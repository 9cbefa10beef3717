//! `oz schedule …` end to end: the real `oz` binary against a real
//! `oz-server` on 127.0.0.1:0. Human output is snapshotted with the
//! schedule ids and the times redacted.

mod cli_support;

use cli_support::{Out, Server, oz_bare};
use serde_json::Value;

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

/// Replace `needle` with `with`; where a table pads the cell (the gap of
/// two spaces follows), pad the replacement to the same width so columns
/// stay aligned.
fn replace_keep_width(text: &str, needle: &str, with: &str) -> String {
    if needle.is_empty() {
        return text.to_owned();
    }
    let mut out = String::new();
    let mut rest = text;
    while let Some(i) = rest.find(needle) {
        out.push_str(&rest[..i]);
        out.push_str(with);
        rest = &rest[i + needle.len()..];
        if rest.starts_with("  ") {
            let pad = needle.chars().count().saturating_sub(with.chars().count());
            out.push_str(&" ".repeat(pad));
        }
    }
    out.push_str(rest);
    out
}

/// Length of the timestamp at the start of `s` (`2025-01-02`, then
/// optionally `T`/` ` `09:00`, `:05`, `.123`, `Z`/`+00:00`, ` UTC`), if any.
fn timestamp_len(s: &[u8]) -> Option<usize> {
    let digits = |from: usize, n: usize| {
        s.len() >= from + n && s[from..from + n].iter().all(u8::is_ascii_digit)
    };
    let at = |i: usize, c: u8| s.get(i) == Some(&c);
    if !(digits(0, 4) && at(4, b'-') && digits(5, 2) && at(7, b'-') && digits(8, 2)) {
        return None;
    }
    let mut n = 10;
    if (at(n, b'T') || at(n, b' ')) && digits(n + 1, 2) && at(n + 3, b':') && digits(n + 4, 2) {
        n += 6;
        if at(n, b':') && digits(n + 1, 2) {
            n += 3;
        }
        if at(n, b'.') && digits(n + 1, 1) {
            n += 1;
            while s.get(n).is_some_and(u8::is_ascii_digit) {
                n += 1;
            }
        }
        if at(n, b'Z') {
            n += 1;
        } else if (at(n, b'+') || at(n, b'-')) && digits(n + 1, 2) && at(n + 3, b':') {
            n += 6;
        }
        if s[n..].starts_with(b" UTC") {
            n += 4;
        }
    }
    Some(n)
}

/// Every timestamp becomes `[TIME]` (padded where a table pads it, as in
/// [`replace_keep_width`]).
fn redact_times(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = String::new();
    let mut i = 0;
    let mut copied = 0;
    while i < bytes.len() {
        match timestamp_len(&bytes[i..]) {
            Some(n) if i == 0 || !bytes[i - 1].is_ascii_digit() => {
                out.push_str(&text[copied..i]);
                out.push_str("[TIME]");
                if bytes[i + n..].starts_with(b"  ") {
                    out.push_str(&" ".repeat(n.saturating_sub(6)));
                }
                i += n;
                copied = i;
            }
            _ => i += 1,
        }
    }
    out.push_str(&text[copied..]);
    out
}

/// Stdout with these schedule ids and every time redacted.
fn redact(out: &Out, ids: &[(&str, &str)]) -> String {
    let mut text = out.stdout.clone();
    for (id, name) in ids {
        text = replace_keep_width(&text, id, name);
    }
    redact_times(&text)
}

/// The id from `Schedule <id> created…`.
fn created_id(out: &Out) -> String {
    out.stdout
        .lines()
        .find_map(|l| l.strip_prefix("Schedule ")?.split_once(" created"))
        .map(|(id, _)| id.to_owned())
        .unwrap_or_else(|| panic!("no `Schedule <id> created` line in:\n{out}"))
}

async fn get_json(srv: &Server, id: &str) -> Value {
    let out = srv.oz(&["schedule", "get", id, "--output", "json"]).await;
    out.assert_code(0);
    out.json()
}

#[test]
fn redaction_keeps_tables_aligned() {
    assert_eq!(
        redact_times("A  2025-01-02 09:00 UTC  x\nB  2025-01-02T03:04:05.123Z\n"),
        "A  [TIME]                x\nB  [TIME]\n"
    );
    assert_eq!(
        replace_keep_width("id-123  x id-123", "id-123", "[ID]"),
        "[ID]    x [ID]"
    );
}

// ---- the whole life of a schedule ---------------------------------------------------

/// A real environment (the server refuses unknown environment ids).
async fn environment(srv: &Server, name: &str) -> String {
    let env: Value = srv
        .client()
        .post("/agent/environments", &serde_json::json!({"name": name}))
        .await
        .unwrap_or_else(|e| panic!("create environment: {e}"));
    env["uid"]
        .as_str()
        .unwrap_or_else(|| panic!("no uid: {env}"))
        .to_owned()
}

#[tokio::test]
async fn create_list_get_update_pause_unpause_delete() {
    let srv = Server::start().await;
    let env = environment(&srv, "Rust").await;

    let out = srv
        .oz(&[
            "schedule",
            "create",
            "--name",
            "nightly",
            "--cron",
            "0 9 * * *",
            "--prompt",
            "echo nightly\necho twice",
            "--environment",
            &env,
            "--host",
            "w1",
        ])
        .await;
    out.assert_code(0);
    let id = created_id(&out);
    let ids = [(id.as_str(), "[SID]"), (env.as_str(), "[ENV]")];
    insta::assert_snapshot!("create", redact(&out, &ids));

    let s = get_json(&srv, &id).await;
    assert_eq!(s["id"], id.as_str(), "{s}");
    assert_eq!(s["name"], "nightly", "{s}");
    assert_eq!(s["cron_schedule"], "0 9 * * *", "{s}");
    assert_eq!(s["enabled"], true, "{s}");
    assert_eq!(s["prompt"], "echo nightly\necho twice", "{s}");
    assert_eq!(s["agent_config"]["environment_id"], env.as_str(), "{s}");
    assert_eq!(s["agent_config"]["worker_host"], "w1", "{s}");

    let team = s["scope"]["uid"].as_str().unwrap_or("no team").to_owned();
    let ids = [
        (id.as_str(), "[SID]"),
        (env.as_str(), "[ENV]"),
        (team.as_str(), "[TEAM]"),
    ];

    let out = srv.oz(&["schedule", "list"]).await;
    out.assert_code(0);
    insta::assert_snapshot!("list", redact(&out, &ids));

    let out = srv.oz(&["schedule", "get", &id]).await;
    out.assert_code(0);
    insta::assert_snapshot!("get", redact(&out, &ids));

    let out = srv
        .oz(&[
            "schedule",
            "update",
            &id,
            "--cron",
            "30 8 * * 1-5",
            "--remove-environment",
            "--host",
            "w2",
        ])
        .await;
    out.assert_code(0);
    insta::assert_snapshot!("update", redact(&out, &ids));
    let s = get_json(&srv, &id).await;
    assert_eq!(s["cron_schedule"], "30 8 * * 1-5", "{s}");
    assert_eq!(s["agent_config"]["worker_host"], "w2", "{s}");
    assert!(s["agent_config"].get("environment_id").is_none(), "{s}");
    // What the flags did not name is kept.
    assert_eq!(s["name"], "nightly", "{s}");
    assert_eq!(s["prompt"], "echo nightly\necho twice", "{s}");
    assert_eq!(s["enabled"], true, "{s}");

    let out = srv.oz(&["schedule", "pause", &id]).await;
    out.assert_code(0);
    insta::assert_snapshot!("pause", redact(&out, &ids));
    assert_eq!(get_json(&srv, &id).await["enabled"], false);
    let out = srv.oz(&["schedule", "list"]).await;
    out.assert_code(0);
    insta::assert_snapshot!("list_paused", redact(&out, &ids));
    // An update keeps it paused.
    srv.oz(&["schedule", "update", &id, "--name", "nightly-2"])
        .await
        .assert_code(0);
    let s = get_json(&srv, &id).await;
    assert_eq!(s["name"], "nightly-2", "{s}");
    assert_eq!(s["enabled"], false, "{s}");

    let out = srv.oz(&["schedule", "unpause", &id]).await;
    out.assert_code(0);
    insta::assert_snapshot!("unpause", redact(&out, &ids));
    assert_eq!(get_json(&srv, &id).await["enabled"], true);

    let out = srv.oz(&["schedule", "delete", &id]).await;
    out.assert_code(0);
    insta::assert_snapshot!("delete", redact(&out, &ids));

    let out = srv.oz(&["schedule", "get", &id]).await;
    out.assert_code(3);
    assert!(out.stdout.is_empty(), "{out}");
    assert_one_sentence(&out.stderr);
    assert!(out.stderr.contains(&id), "{out}");
    assert!(out.stderr.contains("HTTP 404"), "{out}");
    for verb in ["pause", "unpause", "delete"] {
        let out = srv.oz(&["schedule", verb, &id]).await;
        out.assert_code(3);
        assert_one_sentence(&out.stderr);
        assert!(out.stderr.contains("HTTP 404"), "{verb}: {out}");
    }
    let out = srv
        .oz(&["schedule", "update", &id, "--cron", "* * * * *"])
        .await;
    out.assert_code(3);
    assert_one_sentence(&out.stderr);

    let out = srv.oz(&["schedule", "list"]).await;
    out.assert_code(0);
    assert_eq!(out.stdout, "No schedules.\n", "{out}");
}

// ---- create ---------------------------------------------------------------------------

#[tokio::test]
async fn create_with_a_bad_cron_shows_the_servers_error_and_exits_3() {
    let srv = Server::start().await;
    for cron in ["not a cron", "0 9 * *", "61 * * * *"] {
        let out = srv
            .oz(&[
                "schedule", "create", "--name", "bad", "--cron", cron, "--prompt", "x",
            ])
            .await;
        out.assert_code(3);
        assert!(out.stdout.is_empty(), "{out}");
        assert_one_sentence(&out.stderr);
        assert!(out.stderr.contains("HTTP 4"), "{cron:?}: {out}");
        assert!(
            out.stderr.to_lowercase().contains("cron"),
            "{cron:?}: {out}"
        );
    }
    let out = srv.oz(&["schedule", "list", "--output", "json"]).await;
    out.assert_code(0);
    assert_eq!(out.json()["schedules"], serde_json::json!([]), "{out}");
}

#[tokio::test]
async fn create_without_prompt_or_skill_is_a_usage_error() {
    let srv = Server::start().await;
    let out = srv
        .oz(&["schedule", "create", "--name", "n", "--cron", "0 9 * * *"])
        .await;
    out.assert_code(2);
    assert_one_sentence(&out.stderr);
    assert!(out.stderr.contains("--prompt or --skill"), "{out}");
    let out = srv
        .oz(&[
            "schedule",
            "create",
            "--name",
            "n",
            "--cron",
            "0 9 * * *",
            "--prompt",
            " ",
        ])
        .await;
    out.assert_code(2);
    // Nothing reached the server.
    let out = srv.oz(&["schedule", "list", "--output", "json"]).await;
    assert_eq!(out.json()["schedules"], serde_json::json!([]), "{out}");
    // --name and --cron are required by clap (exit 2, its usage text).
    let out = srv.oz(&["schedule", "create", "--prompt", "x"]).await;
    out.assert_code(2);
    assert!(out.stderr.contains("--name"), "{out}");
}

#[tokio::test]
async fn create_json_paused_skill_mcp_and_file() {
    let srv = Server::start().await;
    let out = srv
        .oz(&[
            "schedule",
            "create",
            "--name",
            "b-skill",
            "--cron",
            "*/15 * * * *",
            "--host",
            "w1",
            "--skill",
            "o/r:skills/fix/SKILL.md",
            "--model",
            "m-1",
            "--mcp",
            r#"{"gh": {"url": "http://127.0.0.1:9/mcp"}}"#,
            "--mcp",
            "linear",
            "--paused",
            "--output",
            "json",
        ])
        .await;
    out.assert_code(0);
    let s = out.json();
    let skill_id = s["id"].as_str().expect("id").to_owned();
    assert_eq!(s["enabled"], false, "{s}");
    assert_eq!(
        s["agent_config"]["skill_spec"], "o/r:skills/fix/SKILL.md",
        "{s}"
    );
    assert_eq!(s["agent_config"]["model_id"], "m-1", "{s}");
    assert_eq!(
        s["agent_config"]["mcp_servers"],
        serde_json::json!({"gh": {"url": "http://127.0.0.1:9/mcp"}, "linear": {"warp_id": "linear"}}),
        "{s}"
    );
    assert_eq!(get_json(&srv, &skill_id).await, s);

    let file = srv.dir.path().join("run.yaml");
    std::fs::write(
        &file,
        "prompt: from the file\ntitle: not for schedules\nconfig:\n  worker_host: file-host\n",
    )
    .unwrap();
    let out = srv
        .oz(&[
            "schedule",
            "create",
            "--name",
            "a-file",
            "--cron",
            "0 0 * * 0",
            "--file",
            file.to_str().unwrap(),
        ])
        .await;
    out.assert_code(0);
    assert!(out.stderr.contains("title not used by a schedule"), "{out}");
    let file_id = created_id(&out);
    let s = get_json(&srv, &file_id).await;
    assert_eq!(s["prompt"], "from the file", "{s}");
    assert_eq!(s["agent_config"]["worker_host"], "file-host", "{s}");

    // Sorted by name; json is the API's list.
    let out = srv.oz(&["schedule", "list", "--output", "json"]).await;
    out.assert_code(0);
    let list = out.json();
    let names: Vec<&str> = list["schedules"]
        .as_array()
        .expect("schedules")
        .iter()
        .map(|s| s["name"].as_str().expect("name"))
        .collect();
    assert_eq!(names, ["a-file", "b-skill"]);
    let out = srv.oz(&["schedule", "list"]).await;
    out.assert_code(0);
    let rows: Vec<&str> = out.stdout.lines().skip(1).collect();
    assert!(
        rows[0].starts_with(&file_id) && rows[0].contains(" no "),
        "{out}"
    );
    assert!(
        rows[1].starts_with(&skill_id) && rows[1].contains(" yes "),
        "{out}"
    );

    // MCP servers change by name.
    let out = srv
        .oz(&[
            "schedule",
            "update",
            &skill_id,
            "--remove-mcp",
            "gh",
            "--mcp",
            "github",
        ])
        .await;
    out.assert_code(0);
    let s = get_json(&srv, &skill_id).await;
    assert_eq!(
        s["agent_config"]["mcp_servers"],
        serde_json::json!({"linear": {"warp_id": "linear"}, "github": {"warp_id": "github"}}),
        "{s}"
    );
    let out = srv
        .oz(&["schedule", "update", &skill_id, "--remove-mcp", "nope"])
        .await;
    out.assert_code(2);
    assert_one_sentence(&out.stderr);
    assert!(out.stderr.contains("no MCP server named \"nope\""), "{out}");
    // What the server refuses is its sentence and exit 3: this one has
    // no host left, and this server has no default worker host.
    let out = srv
        .oz(&["schedule", "update", &skill_id, "--remove-host"])
        .await;
    out.assert_code(3);
    assert_one_sentence(&out.stderr);
    assert!(out.stderr.contains("worker host"), "{out}");
    let out = srv
        .oz(&["schedule", "update", &skill_id, "--environment", "nope"])
        .await;
    out.assert_code(3);
    assert_one_sentence(&out.stderr);
    assert!(out.stderr.contains("\"nope\" does not exist"), "{out}");
    // The skill is all it runs: it cannot go.
    let out = srv
        .oz(&["schedule", "update", &skill_id, "--remove-skill"])
        .await;
    out.assert_code(2);
    assert!(out.stderr.contains("nothing to run"), "{out}");

    let out = srv
        .oz(&["schedule", "delete", &file_id, "--output", "json"])
        .await;
    out.assert_code(0);
    assert_eq!(out.json()["success"], true, "{out}");
}

// ---- usage errors -----------------------------------------------------------------------

#[tokio::test]
async fn update_usage_errors_exit_2_before_asking_the_server() {
    // No server at all: these must fail on the flags alone.
    let cases: &[&[&str]] = &[
        &["--environment", "e", "--remove-environment"],
        &["--skill", "o/r:S.md", "--remove-skill"],
        &["--host", "h", "--remove-host"],
        &["--paused", "--unpaused"],
    ];
    let url = format!("http://127.0.0.1:{}", cli_support::unused_port());
    for flags in cases {
        let mut args = vec![
            "--api-url",
            url.as_str(),
            "--api-key",
            "k",
            "schedule",
            "update",
            "s1",
        ];
        args.extend_from_slice(flags);
        let out = oz_bare(&args).await;
        out.assert_code(2);
        assert!(
            out.stderr.contains("cannot be used with"),
            "{flags:?}: {out}"
        );
    }
    let base = [
        "--api-url",
        url.as_str(),
        "--api-key",
        "k",
        "schedule",
        "update",
        "s1",
    ];
    let out = oz_bare(&base).await;
    out.assert_code(2);
    assert_one_sentence(&out.stderr);
    assert!(out.stderr.contains("nothing to change"), "{out}");
    let mut args = base.to_vec();
    args.extend(["--mcp", "gh", "--remove-mcp", "gh"]);
    let out = oz_bare(&args).await;
    out.assert_code(2);
    assert_one_sentence(&out.stderr);
    let mut args = base.to_vec();
    args.extend(["--mcp", "[1]"]);
    let out = oz_bare(&args).await;
    out.assert_code(2);
    assert_one_sentence(&out.stderr);
    // With good flags the unreachable server is exit 3.
    let mut args = base.to_vec();
    args.extend(["--cron", "* * * * *"]);
    let out = oz_bare(&args).await;
    out.assert_code(3);
    assert_one_sentence(&out.stderr);
    assert!(out.stderr.contains("cannot reach"), "{out}");
}

// ---- help -------------------------------------------------------------------------------

async fn help(args: &[&str]) -> String {
    let out = oz_bare(args).await;
    out.assert_code(0);
    assert!(out.stderr.is_empty(), "{out}");
    out.stdout
}

#[tokio::test]
async fn snapshot_help() {
    insta::assert_snapshot!("help_schedule", help(&["schedule", "--help"]).await);
    insta::assert_snapshot!(
        "help_schedule_create",
        help(&["schedule", "create", "--help"]).await
    );
    let update = help(&["schedule", "update", "--help"]).await;
    assert!(update.contains("future runs only"), "{update}");
    insta::assert_snapshot!("help_schedule_update", update);
}

// ---- firing, and delete keeps the runs -------------------------------------------------------

#[tokio::test]
async fn runs_a_schedule_made_outlive_it() {
    let srv = Server::start().await;
    // No worker "w-none": the run it starts stays QUEUED, which is all this needs.
    let out = srv
        .oz(&[
            "schedule",
            "create",
            "--name",
            "every-minute",
            "--cron",
            "* * * * *",
            "--prompt",
            "echo tick",
            "--host",
            "w-none",
            "--output",
            "json",
        ])
        .await;
    out.assert_code(0);
    let id = out.json()["id"].as_str().expect("id").to_owned();
    let client = srv.client();
    let query = [("schedule_id".to_owned(), id.clone())];
    // The next minute boundary, plus the scheduler's own latency.
    let run_id = cli_support::wait_for(
        "the schedule to start a run",
        std::time::Duration::from_secs(90),
        || async {
            let page = client.list_runs(&query).await.ok()?;
            page.runs.first().map(|r| r.run_id.clone())
        },
    )
    .await;
    let out = srv.oz(&["schedule", "get", &id]).await;
    out.assert_code(0);
    assert!(!out.stdout.contains("Last ran     never"), "{out}");
    let out = srv.oz(&["schedule", "list"]).await;
    out.assert_code(0);
    assert!(!out.stdout.contains("never"), "{out}");

    srv.oz(&["schedule", "delete", &id]).await.assert_code(0);
    let out = srv.oz(&["run", "get", &run_id, "--output", "json"]).await;
    out.assert_code(0);
    assert_eq!(out.json()["run_id"], run_id.as_str(), "{out}");
}
