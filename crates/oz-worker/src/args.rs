//! The argv handed to the `oz` CLI for one task, and the per-harness env var.
//!
//! The argument order and every emission rule mirror the official worker, so
//! that an `oz` binary sees exactly what it would see under the Go worker:
//!
//! ```text
//! agent run [--share team:edit] --task-id <id> --sandboxed --server-root-url <url>
//!   <snapshot-derived flags, only when agent_config_snapshot is present>
//!   <additional_oz_args...>
//!   --idle-on-complete [<value>]
//!   [--session-sharing-server-url <url>]
//! ```
//!
//! Deliberately never emitted: `--prompt` (the task is resolved server-side
//! from `--task-id`) and `--conversation`.

use std::collections::BTreeMap;

use oz_protocol::{AgentConfigSnapshot, Task, TaskAssignment};
use serde_json::Value;

/// Worker-level inputs to the argv.
#[derive(Debug, Clone, Default)]
pub struct ArgsOptions {
    pub server_root_url: String,
    /// Worker's idle_on_complete (flag or YAML); None or Some("") = unset.
    pub idle_on_complete: Option<String>,
    pub session_sharing_server_url: Option<String>,
}

/// argv after the program name, starting with "agent", "run".
pub fn agent_args(assignment: &TaskAssignment, task: &Task, opts: &ArgsOptions) -> Vec<String> {
    let mut args: Vec<String> = vec!["agent".into(), "run".into()];

    // Only team-owned tasks are shared with the team; a user-owned task or a
    // task without an owner must not be.
    if task.owner.as_ref().is_some_and(|o| o.is_team()) {
        push(&mut args, "--share", "team:edit");
    }

    // The run id normally equals task.id; fall back to the assignment's id so
    // that we never pass an empty `--task-id`.
    let task_id = if task.id.is_empty() {
        &assignment.task_id
    } else {
        &task.id
    };
    push(&mut args, "--task-id", task_id);
    args.push("--sandboxed".into());
    // Passed even when empty, as the official worker does.
    push(&mut args, "--server-root-url", &opts.server_root_url);

    if let Some(snapshot) = task.agent_config_snapshot.as_ref() {
        push_snapshot_args(&mut args, snapshot);
    }

    // Server-provided extras go before `--idle-on-complete`, whose value is
    // optional: anything after a bare flag could be taken for its value.
    args.extend(assignment.additional_oz_args.iter().cloned());

    args.push("--idle-on-complete".into());
    if let Some(value) = idle_value(task.agent_config_snapshot.as_ref(), opts) {
        args.push(value);
    }

    if let Some(url) = non_empty(opts.session_sharing_server_url.as_deref()) {
        push(&mut args, "--session-sharing-server-url", url);
    }

    args
}

/// "Harness is Oz" test of the official worker (untrimmed: None, type None, "" or exactly "oz").
pub fn is_oz_harness(snapshot: Option<&AgentConfigSnapshot>) -> bool {
    // Untrimmed on purpose: the official worker compares the raw value, so
    // " oz " is a third-party harness here even though `--harness` trims it.
    matches!(harness_type(snapshot), None | Some("" | "oz"))
}

/// The harness state dir the agent gets, relative to the workspace: ("CLAUDE_CONFIG_DIR", ".claude") for trimmed type "claude", ("CODEX_HOME", ".codex") for "codex", else None.
pub fn harness_env(task: &Task) -> Option<(&'static str, &'static str)> {
    // One state dir per workspace keeps concurrent tasks of the same harness
    // from sharing credentials, sessions and caches.
    match harness_type(task.agent_config_snapshot.as_ref()).map(str::trim) {
        Some("claude") => Some(("CLAUDE_CONFIG_DIR", ".claude")),
        Some("codex") => Some(("CODEX_HOME", ".codex")),
        _ => None,
    }
}

/// Flags derived from the agent config snapshot, in the official order.
fn push_snapshot_args(args: &mut Vec<String>, snap: &AgentConfigSnapshot) {
    let oz = is_oz_harness(Some(snap));

    // A model id only means something to the Oz harness; third-party
    // harnesses pick their own model.
    if oz && let Some(model) = trimmed(snap.model_id.as_deref()) {
        push(args, "--model", model);
    }
    if let Some(profile) = trimmed(snap.profile_id.as_deref()) {
        push(args, "--profile", profile);
    }
    if let Some(skill) = trimmed(snap.skill_spec.as_deref()) {
        push(args, "--skill", skill);
    }
    if let Some(servers) = snap.mcp_servers.as_ref().filter(|m| !m.is_empty())
        && let Some(json) = mcp_json(servers)
    {
        push(args, "--mcp", &json);
    }

    // An explicit choice wins; otherwise computer use is on for Oz only.
    let computer_use = snap.computer_use_enabled.unwrap_or(oz);
    let flag = if computer_use {
        "--computer-use"
    } else {
        "--no-computer-use"
    };
    args.push(flag.into());

    if let Some(aws) = snap
        .inference_providers
        .as_ref()
        .and_then(|p| p.aws.as_ref())
        .filter(|aws| !aws.disabled)
        && let Some(role) = trimmed(aws.role_arn.as_deref())
    {
        push(args, "--bedrock-inference-role", role);
        if let Some(region) = trimmed(aws.region.as_deref()) {
            push(args, "--bedrock-role-region", region);
        }
    }

    if let Some(harness) = trimmed(harness_type(Some(snap))) {
        push(args, "--harness", harness);
    }

    // Only these two levels map to a public share; anything else (FULL, an
    // unknown level) shares nothing.
    let public = match snap
        .session_sharing
        .as_ref()
        .and_then(|s| s.public_access.as_deref())
    {
        Some("VIEWER") => Some("public:view"),
        Some("EDITOR") => Some("public:edit"),
        _ => None,
    };
    if let Some(share) = public {
        push(args, "--share", share);
    }

    if snap.snapshot_disabled == Some(true) {
        args.push("--no-snapshot".into());
    }
    if let Some(secs) = snap.snapshot_upload_timeout_secs.filter(|n| *n > 0) {
        push(args, "--snapshot-upload-timeout", &format!("{secs}s"));
    }
    if let Some(secs) = snap.snapshot_script_timeout_secs.filter(|n| *n > 0) {
        push(args, "--snapshot-script-timeout", &format!("{secs}s"));
    }
    if let Some(env) = trimmed(snap.environment_id.as_deref()) {
        push(args, "--environment", env);
    }
}

/// Value of `--idle-on-complete`: the task's minutes when positive, else the
/// worker's setting verbatim, else none (the CLI then applies its default).
fn idle_value(snap: Option<&AgentConfigSnapshot>, opts: &ArgsOptions) -> Option<String> {
    if let Some(minutes) = snap.and_then(|s| s.idle_timeout_minutes).filter(|m| *m > 0) {
        return Some(format!("{minutes}m"));
    }
    non_empty(opts.idle_on_complete.as_deref()).map(str::to_owned)
}

/// Compact JSON with keys sorted at every level. Sorting is done here rather
/// than relying on serde_json's map type, which would keep insertion order if
/// its `preserve_order` feature were ever enabled in the build. serde_json
/// does not HTML-escape, so `<`, `>` and `&` stay raw.
fn mcp_json(servers: &BTreeMap<String, Value>) -> Option<String> {
    let object = servers
        .iter()
        .map(|(k, v)| (k.clone(), sorted(v)))
        .collect::<serde_json::Map<_, _>>();
    // Serialising a Value cannot fail in practice; if it ever did, leaving
    // `--mcp` out is better than passing a broken argument.
    serde_json::to_string(&Value::Object(object)).ok()
}

/// A copy of `value` whose objects are rebuilt in key order, recursively.
fn sorted(value: &Value) -> Value {
    match value {
        Value::Object(map) => {
            let ordered: BTreeMap<&String, &Value> = map.iter().collect();
            Value::Object(
                ordered
                    .into_iter()
                    .map(|(k, v)| (k.clone(), sorted(v)))
                    .collect(),
            )
        }
        Value::Array(items) => Value::Array(items.iter().map(sorted).collect()),
        other => other.clone(),
    }
}

/// The raw (untrimmed) harness type, if any.
fn harness_type(snap: Option<&AgentConfigSnapshot>) -> Option<&str> {
    snap.and_then(|s| s.harness.as_ref())
        .and_then(|h| h.kind.as_deref())
}

fn trimmed(value: Option<&str>) -> Option<&str> {
    value.map(str::trim).filter(|s| !s.is_empty())
}

fn non_empty(value: Option<&str>) -> Option<&str> {
    value.filter(|s| !s.is_empty())
}

fn push(args: &mut Vec<String>, flag: &str, value: &str) {
    args.push(flag.to_owned());
    args.push(value.to_owned());
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const URL: &str = "https://app.warp.dev";

    fn opts() -> ArgsOptions {
        ArgsOptions {
            server_root_url: URL.into(),
            ..Default::default()
        }
    }

    fn assignment() -> TaskAssignment {
        TaskAssignment {
            task_id: "run-1".into(),
            ..Default::default()
        }
    }

    /// A task decoded from its wire JSON, as the worker would receive it.
    fn task(value: Value) -> Task {
        serde_json::from_value(value).expect("test task JSON must decode")
    }

    /// A task with id "run-1" and the given snapshot.
    fn with_snapshot(snapshot: Value) -> Task {
        task(json!({ "id": "run-1", "agent_config_snapshot": snapshot }))
    }

    fn run(task: &Task) -> Vec<String> {
        agent_args(&assignment(), task, &opts())
    }

    fn argv(parts: &[&str]) -> Vec<String> {
        parts.iter().map(|s| (*s).to_owned()).collect()
    }

    /// Base argv up to and including `--server-root-url`, for task "run-1".
    fn base() -> Vec<String> {
        argv(&[
            "agent",
            "run",
            "--task-id",
            "run-1",
            "--sandboxed",
            "--server-root-url",
            URL,
        ])
    }

    /// `base()`, then `middle`, then the bare idle flag.
    fn expect(middle: &[&str]) -> Vec<String> {
        let mut v = base();
        v.extend(argv(middle));
        v.push("--idle-on-complete".into());
        v
    }

    // ---- base args and owner ----

    #[test]
    fn minimal_task_without_snapshot() {
        let t = task(json!({ "id": "run-1" }));
        assert_eq!(run(&t), expect(&[]));
    }

    #[test]
    fn team_owner_gets_team_share_first() {
        let t = task(json!({ "id": "run-1", "owner": { "Type": "TEAM", "Id": 7 } }));
        assert_eq!(
            run(&t),
            argv(&[
                "agent",
                "run",
                "--share",
                "team:edit",
                "--task-id",
                "run-1",
                "--sandboxed",
                "--server-root-url",
                URL,
                "--idle-on-complete",
            ])
        );
    }

    #[test]
    fn user_owner_gets_no_share() {
        let t = task(json!({ "id": "run-1", "owner": { "Type": "USER", "Id": "u" } }));
        assert_eq!(run(&t), expect(&[]));
    }

    #[test]
    fn owner_without_type_or_lowercase_team_gets_no_share() {
        for owner in [
            json!({}),
            json!({ "Type": null }),
            json!({ "Type": "team" }),
        ] {
            let t = task(json!({ "id": "run-1", "owner": owner }));
            assert_eq!(run(&t), expect(&[]), "owner {owner}");
        }
    }

    #[test]
    fn empty_server_root_url_is_still_passed() {
        let t = task(json!({ "id": "run-1" }));
        let o = ArgsOptions::default();
        assert_eq!(
            agent_args(&assignment(), &t, &o),
            argv(&[
                "agent",
                "run",
                "--task-id",
                "run-1",
                "--sandboxed",
                "--server-root-url",
                "",
                "--idle-on-complete",
            ])
        );
    }

    #[test]
    fn empty_task_id_falls_back_to_assignment_task_id() {
        let t = task(json!({ "id": "" }));
        let a = TaskAssignment {
            task_id: "from-assignment".into(),
            ..Default::default()
        };
        assert_eq!(
            agent_args(&a, &t, &opts()),
            argv(&[
                "agent",
                "run",
                "--task-id",
                "from-assignment",
                "--sandboxed",
                "--server-root-url",
                URL,
                "--idle-on-complete",
            ])
        );
    }

    #[test]
    fn task_id_wins_over_assignment_task_id() {
        let t = task(json!({ "id": "run-1" }));
        let a = TaskAssignment {
            task_id: "other".into(),
            ..Default::default()
        };
        assert_eq!(agent_args(&a, &t, &opts()), expect(&[]));
    }

    // ---- model and harness ----

    #[test]
    fn empty_snapshot_only_adds_computer_use() {
        assert_eq!(run(&with_snapshot(json!({}))), expect(&["--computer-use"]));
    }

    #[test]
    fn model_with_explicit_oz_harness() {
        let t = with_snapshot(json!({ "model_id": " gpt-5 ", "harness": { "type": "oz" } }));
        assert_eq!(
            run(&t),
            expect(&["--model", "gpt-5", "--computer-use", "--harness", "oz"])
        );
    }

    #[test]
    fn model_with_absent_or_empty_harness_type_is_oz() {
        for harness in [json!(null), json!({}), json!({ "type": "" })] {
            let t = with_snapshot(json!({ "model_id": "m1", "harness": harness }));
            assert_eq!(
                run(&t),
                expect(&["--model", "m1", "--computer-use"]),
                "harness {harness}"
            );
        }
    }

    #[test]
    fn model_dropped_for_claude_harness() {
        let t = with_snapshot(json!({ "model_id": "m1", "harness": { "type": "claude" } }));
        assert_eq!(
            run(&t),
            expect(&["--no-computer-use", "--harness", "claude"])
        );
    }

    #[test]
    fn padded_oz_harness_counts_as_third_party() {
        let t = with_snapshot(json!({ "model_id": "m1", "harness": { "type": " oz " } }));
        assert_eq!(run(&t), expect(&["--no-computer-use", "--harness", "oz"]));
    }

    #[test]
    fn blank_harness_type_is_third_party_but_not_emitted() {
        // "  " is neither nil, "" nor "oz" untrimmed, yet trims to nothing.
        let t = with_snapshot(json!({ "model_id": "m1", "harness": { "type": "  " } }));
        assert_eq!(run(&t), expect(&["--no-computer-use"]));
    }

    #[test]
    fn blank_model_is_skipped() {
        let t = with_snapshot(json!({ "model_id": " \t " }));
        assert_eq!(run(&t), expect(&["--computer-use"]));
    }

    #[test]
    fn profile_and_skill_are_trimmed() {
        let t = with_snapshot(json!({ "profile_id": "  prof-1 ", "skill_spec": "\nrepo:skill\t" }));
        assert_eq!(
            run(&t),
            expect(&[
                "--profile",
                "prof-1",
                "--skill",
                "repo:skill",
                "--computer-use"
            ])
        );
    }

    #[test]
    fn blank_profile_and_skill_are_skipped() {
        let t = with_snapshot(json!({ "profile_id": "   ", "skill_spec": "" }));
        assert_eq!(run(&t), expect(&["--computer-use"]));
    }

    // ---- mcp ----

    #[test]
    fn mcp_is_compact_sorted_and_not_html_escaped() {
        let t = with_snapshot(json!({
            "mcp_servers": {
                "zeta": { "url": "https://z.example/?a=1&b=<2>", "headers": { "Z": "1", "A": "2" } },
                "alpha": { "command": "npx", "args": ["-y", { "b": 1, "a": [ { "y": 0, "x": null } ] }] }
            }
        }));
        let mcp = concat!(
            r#"{"alpha":{"args":["-y",{"a":[{"x":null,"y":0}],"b":1}],"command":"npx"},"#,
            r#""zeta":{"headers":{"A":"2","Z":"1"},"url":"https://z.example/?a=1&b=<2>"}}"#
        );
        assert_eq!(run(&t), expect(&["--mcp", mcp, "--computer-use"]));
    }

    #[test]
    fn empty_mcp_map_is_skipped() {
        let t = with_snapshot(json!({ "mcp_servers": {} }));
        assert_eq!(run(&t), expect(&["--computer-use"]));
    }

    // ---- computer use ----

    #[test]
    fn computer_use_explicit_false_wins_for_oz() {
        let t = with_snapshot(json!({ "computer_use_enabled": false }));
        assert_eq!(run(&t), expect(&["--no-computer-use"]));
    }

    #[test]
    fn computer_use_explicit_true_wins_for_third_party() {
        let t =
            with_snapshot(json!({ "computer_use_enabled": true, "harness": { "type": "codex" } }));
        assert_eq!(run(&t), expect(&["--computer-use", "--harness", "codex"]));
    }

    #[test]
    fn computer_use_explicit_true_for_oz() {
        let t = with_snapshot(json!({ "computer_use_enabled": true, "harness": { "type": "oz" } }));
        assert_eq!(run(&t), expect(&["--computer-use", "--harness", "oz"]));
    }

    #[test]
    fn computer_use_default_off_for_third_party() {
        let t = with_snapshot(json!({ "harness": { "type": "codex" } }));
        assert_eq!(
            run(&t),
            expect(&["--no-computer-use", "--harness", "codex"])
        );
    }

    // ---- bedrock ----

    #[test]
    fn bedrock_disabled_is_skipped() {
        let t = with_snapshot(json!({ "inference_providers": { "aws": {
            "disabled": true, "role_arn": "arn:aws:iam::1:role/r", "region": "us-east-1"
        } } }));
        assert_eq!(run(&t), expect(&["--computer-use"]));
    }

    #[test]
    fn bedrock_blank_role_is_skipped_even_with_region() {
        let t = with_snapshot(json!({ "inference_providers": { "aws": {
            "role_arn": "   ", "region": "us-east-1"
        } } }));
        assert_eq!(run(&t), expect(&["--computer-use"]));
    }

    #[test]
    fn bedrock_role_without_region() {
        for region in [json!(null), json!(""), json!("  ")] {
            let t = with_snapshot(json!({ "inference_providers": { "aws": {
                "role_arn": "arn:aws:iam::1:role/r", "region": region
            } } }));
            assert_eq!(
                run(&t),
                expect(&[
                    "--computer-use",
                    "--bedrock-inference-role",
                    "arn:aws:iam::1:role/r"
                ]),
                "region {region}"
            );
        }
    }

    #[test]
    fn bedrock_role_and_region_are_trimmed() {
        let t = with_snapshot(json!({ "inference_providers": { "aws": {
            "disabled": false, "role_arn": " arn:aws:iam::1:role/r\n", "region": "\teu-west-1 "
        } } }));
        assert_eq!(
            run(&t),
            expect(&[
                "--computer-use",
                "--bedrock-inference-role",
                "arn:aws:iam::1:role/r",
                "--bedrock-role-region",
                "eu-west-1",
            ])
        );
    }

    // ---- public share ----

    #[test]
    fn public_share_viewer() {
        let t = with_snapshot(json!({ "session_sharing": { "public_access": "VIEWER" } }));
        assert_eq!(
            run(&t),
            expect(&["--computer-use", "--share", "public:view"])
        );
    }

    #[test]
    fn public_share_editor() {
        let t = with_snapshot(json!({ "session_sharing": { "public_access": "EDITOR" } }));
        assert_eq!(
            run(&t),
            expect(&["--computer-use", "--share", "public:edit"])
        );
    }

    #[test]
    fn public_share_other_levels_share_nothing() {
        for level in [json!("FULL"), json!("viewer"), json!(""), json!(null)] {
            let t = with_snapshot(json!({ "session_sharing": { "public_access": level } }));
            assert_eq!(run(&t), expect(&["--computer-use"]), "level {level}");
        }
    }

    #[test]
    fn team_and_public_share_both_emitted() {
        let t = task(json!({
            "id": "run-1",
            "owner": { "Type": "TEAM" },
            "agent_config_snapshot": { "session_sharing": { "public_access": "EDITOR" } }
        }));
        assert_eq!(
            run(&t),
            argv(&[
                "agent",
                "run",
                "--share",
                "team:edit",
                "--task-id",
                "run-1",
                "--sandboxed",
                "--server-root-url",
                URL,
                "--computer-use",
                "--share",
                "public:edit",
                "--idle-on-complete",
            ])
        );
    }

    // ---- snapshot and environment ----

    #[test]
    fn snapshot_flags_when_set() {
        let t = with_snapshot(json!({
            "snapshot_disabled": true,
            "snapshot_upload_timeout_secs": 120,
            "snapshot_script_timeout_secs": 30
        }));
        assert_eq!(
            run(&t),
            expect(&[
                "--computer-use",
                "--no-snapshot",
                "--snapshot-upload-timeout",
                "120s",
                "--snapshot-script-timeout",
                "30s",
            ])
        );
    }

    #[test]
    fn snapshot_flags_skipped_when_false_or_not_positive() {
        let t = with_snapshot(json!({
            "snapshot_disabled": false,
            "snapshot_upload_timeout_secs": 0,
            "snapshot_script_timeout_secs": -5
        }));
        assert_eq!(run(&t), expect(&["--computer-use"]));
    }

    #[test]
    fn environment_is_trimmed_and_blank_skipped() {
        let t = with_snapshot(json!({ "environment_id": " env-9 " }));
        assert_eq!(
            run(&t),
            expect(&["--computer-use", "--environment", "env-9"])
        );
        let t = with_snapshot(json!({ "environment_id": "  " }));
        assert_eq!(run(&t), expect(&["--computer-use"]));
    }

    // ---- additional args, idle, session sharing ----

    #[test]
    fn additional_args_verbatim_before_idle_without_snapshot() {
        let t = task(json!({ "id": "run-1" }));
        let a = TaskAssignment {
            task_id: "run-1".into(),
            additional_oz_args: argv(&["--debug", " spaced value ", ""]),
            ..Default::default()
        };
        assert_eq!(
            agent_args(&a, &t, &opts()),
            expect(&["--debug", " spaced value ", ""])
        );
    }

    #[test]
    fn additional_args_after_snapshot_flags_and_before_idle_value() {
        let t = with_snapshot(json!({ "environment_id": "env-1", "idle_timeout_minutes": 10 }));
        let a = TaskAssignment {
            task_id: "run-1".into(),
            additional_oz_args: argv(&["--foo", "bar"]),
            ..Default::default()
        };
        let mut want = base();
        want.extend(argv(&[
            "--computer-use",
            "--environment",
            "env-1",
            "--foo",
            "bar",
            "--idle-on-complete",
            "10m",
        ]));
        assert_eq!(agent_args(&a, &t, &opts()), want);
    }

    #[test]
    fn idle_from_task_minutes_beats_worker_value() {
        let t = with_snapshot(json!({ "idle_timeout_minutes": 30 }));
        let o = ArgsOptions {
            idle_on_complete: Some("5m".into()),
            ..opts()
        };
        let mut want = base();
        want.extend(argv(&["--computer-use", "--idle-on-complete", "30m"]));
        assert_eq!(agent_args(&assignment(), &t, &o), want);
    }

    #[test]
    fn idle_task_minutes_zero_or_negative_fall_back_to_worker_value() {
        for minutes in [0, -1, -60] {
            let t = with_snapshot(json!({ "idle_timeout_minutes": minutes }));
            let o = ArgsOptions {
                idle_on_complete: Some("15m".into()),
                ..opts()
            };
            let mut want = base();
            want.extend(argv(&["--computer-use", "--idle-on-complete", "15m"]));
            assert_eq!(agent_args(&assignment(), &t, &o), want, "minutes {minutes}");
        }
    }

    #[test]
    fn idle_task_minutes_zero_without_worker_value_is_bare_flag() {
        let t = with_snapshot(json!({ "idle_timeout_minutes": 0 }));
        assert_eq!(run(&t), expect(&["--computer-use"]));
    }

    #[test]
    fn idle_worker_value_zero_seconds_is_verbatim() {
        let t = task(json!({ "id": "run-1" }));
        let o = ArgsOptions {
            idle_on_complete: Some("0s".into()),
            ..opts()
        };
        let mut want = base();
        want.extend(argv(&["--idle-on-complete", "0s"]));
        assert_eq!(agent_args(&assignment(), &t, &o), want);
    }

    #[test]
    fn idle_worker_value_empty_is_bare_flag_last() {
        let t = task(json!({ "id": "run-1" }));
        let o = ArgsOptions {
            idle_on_complete: Some(String::new()),
            ..opts()
        };
        let got = agent_args(&assignment(), &t, &o);
        assert_eq!(got, expect(&[]));
        assert_eq!(got.last().map(String::as_str), Some("--idle-on-complete"));
    }

    #[test]
    fn session_sharing_url_follows_bare_idle_flag() {
        let t = task(json!({ "id": "run-1" }));
        let o = ArgsOptions {
            session_sharing_server_url: Some("wss://share.example".into()),
            ..opts()
        };
        let mut want = expect(&[]);
        want.extend(argv(&[
            "--session-sharing-server-url",
            "wss://share.example",
        ]));
        assert_eq!(agent_args(&assignment(), &t, &o), want);
    }

    #[test]
    fn session_sharing_url_follows_idle_value() {
        let t = task(json!({ "id": "run-1" }));
        let o = ArgsOptions {
            idle_on_complete: Some("1h".into()),
            session_sharing_server_url: Some("wss://share.example".into()),
            ..opts()
        };
        let mut want = base();
        want.extend(argv(&[
            "--idle-on-complete",
            "1h",
            "--session-sharing-server-url",
            "wss://share.example",
        ]));
        assert_eq!(agent_args(&assignment(), &t, &o), want);
    }

    #[test]
    fn empty_session_sharing_url_is_skipped() {
        let t = task(json!({ "id": "run-1" }));
        let o = ArgsOptions {
            session_sharing_server_url: Some(String::new()),
            ..opts()
        };
        assert_eq!(agent_args(&assignment(), &t, &o), expect(&[]));
    }

    #[test]
    fn everything_in_official_order() {
        let t = task(json!({
            "id": "run-1",
            "owner": { "Type": "TEAM" },
            "agent_config_snapshot": {
                "environment_id": "env-1",
                "model_id": "m1",
                "profile_id": "p1",
                "skill_spec": "s1",
                "mcp_servers": { "b": {}, "a": { "k": "v" } },
                "idle_timeout_minutes": 5,
                "harness": { "type": "oz" },
                "inference_providers": { "aws": { "role_arn": "r", "region": "g" } },
                "session_sharing": { "public_access": "VIEWER" },
                "snapshot_disabled": true,
                "snapshot_upload_timeout_secs": 1,
                "snapshot_script_timeout_secs": 2
            }
        }));
        let a = TaskAssignment {
            task_id: "run-1".into(),
            additional_oz_args: argv(&["--extra"]),
            ..Default::default()
        };
        let o = ArgsOptions {
            server_root_url: URL.into(),
            idle_on_complete: Some("0s".into()),
            session_sharing_server_url: Some("wss://s".into()),
        };
        assert_eq!(
            agent_args(&a, &t, &o),
            argv(&[
                "agent",
                "run",
                "--share",
                "team:edit",
                "--task-id",
                "run-1",
                "--sandboxed",
                "--server-root-url",
                URL,
                "--model",
                "m1",
                "--profile",
                "p1",
                "--skill",
                "s1",
                "--mcp",
                r#"{"a":{"k":"v"},"b":{}}"#,
                "--computer-use",
                "--bedrock-inference-role",
                "r",
                "--bedrock-role-region",
                "g",
                "--harness",
                "oz",
                "--share",
                "public:view",
                "--no-snapshot",
                "--snapshot-upload-timeout",
                "1s",
                "--snapshot-script-timeout",
                "2s",
                "--environment",
                "env-1",
                "--extra",
                "--idle-on-complete",
                "5m",
                "--session-sharing-server-url",
                "wss://s",
            ])
        );
    }

    // ---- is_oz_harness and harness_env ----

    #[test]
    fn is_oz_harness_is_untrimmed() {
        assert!(is_oz_harness(None));
        for snap in [
            json!({}),
            json!({ "harness": {} }),
            json!({ "harness": { "type": "" } }),
            json!({ "harness": { "type": "oz" } }),
        ] {
            let s: AgentConfigSnapshot = serde_json::from_value(snap.clone()).expect("decode");
            assert!(is_oz_harness(Some(&s)), "{snap}");
        }
        for kind in [" oz ", "OZ", "claude", " "] {
            let s: AgentConfigSnapshot =
                serde_json::from_value(json!({ "harness": { "type": kind } })).expect("decode");
            assert!(!is_oz_harness(Some(&s)), "{kind:?}");
        }
    }

    fn harness_task(kind: Option<&str>) -> Task {
        match kind {
            Some(k) => with_snapshot(json!({ "harness": { "type": k } })),
            None => task(json!({ "id": "run-1" })),
        }
    }

    #[test]
    fn harness_env_claude() {
        assert_eq!(
            harness_env(&harness_task(Some("claude"))),
            Some(("CLAUDE_CONFIG_DIR", ".claude"))
        );
    }

    #[test]
    fn harness_env_codex_is_trimmed() {
        assert_eq!(
            harness_env(&harness_task(Some(" codex "))),
            Some(("CODEX_HOME", ".codex"))
        );
    }

    #[test]
    fn harness_env_unknown_or_oz_is_none() {
        for kind in ["gemini", "oz", "", "Claude"] {
            assert_eq!(harness_env(&harness_task(Some(kind))), None, "{kind:?}");
        }
    }

    #[test]
    fn harness_env_without_harness_is_none() {
        assert_eq!(harness_env(&harness_task(None)), None);
        assert_eq!(harness_env(&with_snapshot(json!({}))), None);
    }
}
