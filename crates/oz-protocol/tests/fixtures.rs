//! Wire fixtures: every frame the official `oz-agent-worker` reads or sends,
//! decoded with our types and, where the encoding is meant to be exact,
//! encoded back and compared.

use std::collections::BTreeSet;

use oz_protocol::{
    DecodeError, FailureReason, MSG_CANCELLED, MSG_COMPLETED, MSG_INTERRUPTED, REJECT_AT_CAPACITY,
    ServerMessage, TaskAssignment, TaskCancellation, TaskClaimed, TaskCompleted, TaskFailed,
    TaskRejected, WorkerMessage, task::Sidecar,
};
use serde_json::{Value, json};

macro_rules! fixture {
    ($name:literal) => {
        include_str!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/",
            $name
        ))
    };
}

fn value(text: &str) -> Value {
    serde_json::from_str(text).expect("valid JSON")
}

fn assignment(text: &str) -> TaskAssignment {
    match ServerMessage::decode(text) {
        Ok(ServerMessage::TaskAssignment(a)) => *a,
        other => panic!("expected a task_assignment, got {other:?}"),
    }
}

fn encode_assignment(a: &TaskAssignment) -> Value {
    value(&ServerMessage::TaskAssignment(Box::new(a.clone())).encode())
}

fn worker(text: &str) -> WorkerMessage {
    WorkerMessage::decode(text).expect("worker frame decodes")
}

fn keys(v: &Value) -> BTreeSet<&str> {
    v.as_object()
        .expect("a JSON object")
        .keys()
        .map(String::as_str)
        .collect()
}

// ---------------------------------------------------------------- server frames

#[test]
fn full_assignment_decodes_every_field() {
    let a = assignment(fixture!("server_task_assignment_full.json"));
    assert_eq!(a.task_id, "run-7f3c2a");
    assert_eq!(a.execution_id.as_deref(), Some("exec-0001-7f3c2a"));
    assert_eq!(
        a.docker_image.as_deref(),
        Some("ghcr.io/example/dev-env:2026.08")
    );
    assert_eq!(
        a.sidecar_image.as_deref(),
        Some("warpdotdev/oz-agent-sidecar:latest")
    );
    assert_eq!(
        a.additional_sidecars,
        Some(vec![
            Sidecar {
                image: "ghcr.io/example/claude-cli:1.2.3".into(),
                mount_path: "/mnt/claude-cli-sidecar".into(),
                read_write: false,
            },
            Sidecar {
                image: "ghcr.io/example/cache:1".into(),
                mount_path: "/cache".into(),
                read_write: true,
            },
        ])
    );
    assert_eq!(a.env_vars.len(), 2);
    assert_eq!(a.env_vars["WARP_API_KEY"], "wk-run-scoped-key");
    assert_eq!(a.env_vars["GITHUB_ACCESS_TOKEN"], "ghs_exampletoken");
    assert_eq!(a.additional_oz_args, ["--skip-initial-turn", "--verbose"]);
    let shape = a.instance_shape.as_ref().expect("instance_shape");
    assert_eq!((shape.vcpus, shape.memory_gb), (Some(4), Some(16)));

    let task = a.task.as_ref().expect("task");
    assert_eq!(task.id, "run-7f3c2a");
    assert_eq!(task.title.as_deref(), Some("Fix flaky integration test"));
    assert_eq!(
        task.task_definition
            .as_ref()
            .and_then(|d| d.prompt.as_deref()),
        Some("Find out why the login test fails one time in ten and fix it.")
    );
    assert_eq!(task.created_at, Some(json!("2026-08-04T10:15:30.123456Z")));
    assert_eq!(task.updated_at, Some(json!("2026-08-04T10:15:31Z")));
    let owner = task.owner.as_ref().expect("owner");
    assert_eq!(owner.kind.as_deref(), Some("TEAM"));
    assert_eq!(owner.id, Some(json!(4242)));
    assert!(owner.is_team());
    assert_eq!(task.agent_conversation_id.as_deref(), Some("conv-19ab"));

    let snap = task.agent_config_snapshot.as_ref().expect("snapshot");
    assert_eq!(snap.environment_id.as_deref(), Some("env-backend"));
    assert_eq!(
        snap.base_prompt.as_deref(),
        Some("You are working on the payments service.")
    );
    // Kept verbatim: trimming is the argv builder's job.
    assert_eq!(snap.model_id.as_deref(), Some(" claude-sonnet "));
    assert_eq!(snap.profile_id.as_deref(), Some("profile-default"));
    assert_eq!(
        snap.skill_spec.as_deref(),
        Some("owner/repo:skills/testing")
    );
    let mcp = snap.mcp_servers.as_ref().expect("mcp_servers");
    assert_eq!(
        mcp.keys().map(String::as_str).collect::<Vec<_>>(),
        ["github", "linear"]
    );
    assert_eq!(mcp["github"]["args"], json!(["--read-only"]));
    assert_eq!(
        mcp["linear"]["url"],
        json!("https://mcp.example.com/linear?a=1&b=2")
    );
    assert_eq!(snap.computer_use_enabled, Some(false));
    assert_eq!(snap.idle_timeout_minutes, Some(20));
    assert_eq!(
        snap.harness.as_ref().and_then(|h| h.kind.as_deref()),
        Some("claude")
    );
    assert_eq!(
        snap.harness_auth_secrets,
        Some(json!({"claude_auth_secret_name": "team-claude-key"}))
    );
    let aws = snap
        .inference_providers
        .as_ref()
        .and_then(|p| p.aws.as_ref())
        .expect("aws provider");
    assert!(!aws.disabled);
    assert_eq!(
        aws.role_arn.as_deref(),
        Some("arn:aws:iam::123456789012:role/oz-bedrock")
    );
    assert_eq!(aws.region.as_deref(), Some("us-west-2"));
    assert_eq!(
        snap.session_sharing
            .as_ref()
            .and_then(|s| s.public_access.as_deref()),
        Some("VIEWER")
    );
    assert_eq!(snap.snapshot_disabled, Some(true));
    assert_eq!(snap.snapshot_upload_timeout_secs, Some(120));
    assert_eq!(snap.snapshot_script_timeout_secs, Some(30));
}

#[test]
fn full_assignment_reencodes_exactly() {
    let text = fixture!("server_task_assignment_full.json");
    let a = assignment(text);
    assert_eq!(encode_assignment(&a), value(text));
    // And it survives a second trip unchanged.
    assert_eq!(
        assignment(&ServerMessage::TaskAssignment(Box::new(a.clone())).encode()),
        a
    );
}

#[test]
fn minimal_assignment() {
    let text = fixture!("server_task_assignment_minimal.json");
    let a = assignment(text);
    assert_eq!(a.task_id, "run-min");
    assert_eq!(a.execution_id, None);
    assert_eq!(a.docker_image, None);
    assert_eq!(a.sidecar_image, None);
    assert_eq!(a.additional_sidecars, None);
    assert!(a.env_vars.is_empty());
    assert!(a.additional_oz_args.is_empty());
    assert_eq!(a.instance_shape, None);
    let task = a.task.as_ref().expect("task");
    assert_eq!(task.id, "run-min");
    assert_eq!(task.title, None);
    assert_eq!(task.owner, None);
    assert_eq!(task.created_at, None);
    assert_eq!(task.agent_config_snapshot, None);
    assert_eq!(encode_assignment(&a), value(text));
}

#[test]
fn lower_case_owner_keys_are_accepted_and_reencoded_capitalised() {
    let a = assignment(fixture!("server_task_assignment_owner_lowercase.json"));
    let owner = a
        .task
        .as_ref()
        .and_then(|t| t.owner.clone())
        .expect("owner");
    assert_eq!(owner.kind.as_deref(), Some("USER"));
    assert_eq!(owner.id, Some(json!(17)));
    assert!(!owner.is_team());

    let encoded = encode_assignment(&a);
    assert_eq!(
        encoded["data"]["task"]["owner"],
        json!({"Type": "USER", "Id": 17})
    );
    assert_eq!(assignment(&encoded.to_string()), a);
}

fn owner_of(owner: Value) -> Result<Option<oz_protocol::Owner>, DecodeError> {
    let frame = json!({
        "type": "task_assignment",
        "data": {"task_id": "run-o", "task": {"id": "run-o", "owner": owner}},
    });
    ServerMessage::decode(&frame.to_string()).map(|m| match m {
        ServerMessage::TaskAssignment(a) => a.task.and_then(|t| t.owner),
        other => panic!("expected an assignment, got {other:?}"),
    })
}

#[test]
fn owner_key_spellings() {
    // Any case, like Go's decoder.
    let o = owner_of(json!({"TYPE": "TEAM", "iD": 5})).unwrap().unwrap();
    assert_eq!((o.kind.as_deref(), o.id), (Some("TEAM"), Some(json!(5))));
    // Both spellings present: the exact capitalised key wins, and the
    // duplicate is not an error.
    let o = owner_of(json!({"type": "USER", "Type": "TEAM", "id": 1, "Id": 2}))
        .unwrap()
        .unwrap();
    assert_eq!((o.kind.as_deref(), o.id), (Some("TEAM"), Some(json!(2))));
    // Empty, null and missing values.
    let o = owner_of(json!({})).unwrap().unwrap();
    assert_eq!((o.kind, o.id), (None, None));
    assert!(
        !owner_of(json!({"Type": null, "Id": null}))
            .unwrap()
            .unwrap()
            .is_team()
    );
    assert_eq!(owner_of(Value::Null).unwrap(), None);
    // A wrong type fails the assignment but keeps the task id.
    for bad in [json!({"Type": 7}), json!("TEAM"), json!([["TEAM", 1]])] {
        match owner_of(bad.clone()) {
            Err(DecodeError::Assignment { task_id, .. }) => {
                assert_eq!(task_id.as_deref(), Some("run-o"), "{bad}")
            }
            other => panic!("{bad}: expected an Assignment error, got {other:?}"),
        }
    }
}

#[test]
fn malformed_timestamps_are_kept_verbatim() {
    let text = fixture!("server_task_assignment_bad_created_at.json");
    let a = assignment(text);
    assert_eq!(a.task_id, "run-badtime");
    let task = a.task.as_ref().expect("task");
    assert_eq!(task.created_at, Some(json!("yesterday at noon")));
    assert_eq!(task.updated_at, Some(json!(1722766530)));
    assert_eq!(
        task.owner.as_ref().and_then(|o| o.kind.as_deref()),
        Some("USER")
    );
    assert_eq!(encode_assignment(&a), value(text));
}

#[test]
fn null_task_decodes_to_none() {
    let text = fixture!("server_task_assignment_null_task.json");
    let a = assignment(text);
    assert_eq!(a.task_id, "run-nulltask");
    assert_eq!(a.task, None);
    // `task` is always on the wire, as `null` when absent.
    assert_eq!(encode_assignment(&a), value(text));
}

#[test]
fn unknown_fields_are_ignored_everywhere() {
    let a = assignment(fixture!("server_task_assignment_unknown_fields.json"));
    assert_eq!(a.task_id, "run-future");
    assert_eq!(a.execution_id.as_deref(), Some("exec-future"));
    let task = a.task.as_ref().expect("task");
    assert_eq!(
        task.task_definition
            .as_ref()
            .and_then(|d| d.prompt.as_deref()),
        Some("hi")
    );
    assert_eq!(
        task.owner.as_ref().and_then(|o| o.kind.as_deref()),
        Some("USER")
    );
    let snap = task.agent_config_snapshot.as_ref().expect("snapshot");
    assert_eq!(snap.model_id.as_deref(), Some("auto"));
    assert_eq!(
        snap.harness.as_ref().and_then(|h| h.kind.as_deref()),
        Some("codex")
    );
    let aws = snap
        .inference_providers
        .as_ref()
        .and_then(|p| p.aws.as_ref())
        .expect("aws");
    assert!(aws.disabled);
    assert_eq!(aws.region, None);
    assert_eq!(a.additional_sidecars.as_ref().map(Vec::len), Some(1));
    let shape = a.instance_shape.as_ref().expect("shape");
    assert_eq!((shape.vcpus, shape.memory_gb), (Some(2), Some(8)));

    // Re-encoding keeps only the fields we know.
    let expected = json!({
        "type": "task_assignment",
        "data": {
            "task_id": "run-future",
            "execution_id": "exec-future",
            "task": {
                "id": "run-future",
                "title": "fields from a newer control plane",
                "task_definition": {"prompt": "hi"},
                "created_at": "2026-08-04T10:15:30Z",
                "updated_at": "2026-08-04T10:15:30Z",
                "owner": {"Type": "USER", "Id": 9},
                "agent_config_snapshot": {
                    "model_id": "auto",
                    "harness": {"type": "codex"},
                    "inference_providers": {
                        "aws": {"disabled": true, "role_arn": "arn:aws:iam::1:role/x"}
                    },
                    "session_sharing": {"public_access": "EDITOR"}
                }
            },
            "additional_sidecars": [{"image": "img:1", "mount_path": "/m", "read_write": false}],
            "instance_shape": {"vcpus": 2, "memory_gb": 8}
        }
    });
    assert_eq!(encode_assignment(&a), expected);
}

#[test]
fn task_cancellation() {
    let text = fixture!("server_task_cancellation.json");
    let msg = ServerMessage::decode(text).expect("decodes");
    assert_eq!(
        msg,
        ServerMessage::TaskCancellation(TaskCancellation {
            task_id: "run-7f3c2a".into()
        })
    );
    assert_eq!(value(&msg.encode()), value(text));
}

#[test]
fn unknown_type_is_not_an_error() {
    let text = fixture!("server_unknown_heartbeat.json");
    let msg = ServerMessage::decode(text).expect("decodes");
    assert_eq!(
        msg,
        ServerMessage::Unknown {
            kind: "heartbeat".into()
        }
    );
    assert_eq!(value(&msg.encode()), value(text));
    // Data of an unknown type is never looked at.
    for text in [
        r#"{"type":"heartbeat","data":[1,2]}"#,
        r#"{"type":"worker_config","data":{"x":1}}"#,
        r#"{"type":""}"#,
    ] {
        assert!(matches!(
            ServerMessage::decode(text),
            Ok(ServerMessage::Unknown { .. })
        ));
    }
}

// ---------------------------------------------------------------- worker frames

/// Every worker fixture, with the message our types build for it.
fn worker_frames() -> Vec<(&'static str, &'static str, WorkerMessage)> {
    let task_id = || "run-7f3c2a".to_owned();
    vec![
        (
            "worker_task_claimed.json",
            fixture!("worker_task_claimed.json"),
            WorkerMessage::TaskClaimed(TaskClaimed {
                task_id: task_id(),
                worker_id: "build-box-1".into(),
            }),
        ),
        (
            "worker_task_rejected.json",
            fixture!("worker_task_rejected.json"),
            WorkerMessage::TaskRejected(TaskRejected {
                task_id: task_id(),
                reason: REJECT_AT_CAPACITY.into(),
            }),
        ),
        (
            "worker_task_completed.json",
            fixture!("worker_task_completed.json"),
            WorkerMessage::TaskCompleted(TaskCompleted {
                task_id: task_id(),
                message: MSG_COMPLETED.into(),
                task_state: None,
            }),
        ),
        (
            "worker_task_completed_cancelled.json",
            fixture!("worker_task_completed_cancelled.json"),
            WorkerMessage::TaskCompleted(TaskCompleted {
                task_id: task_id(),
                message: MSG_CANCELLED.into(),
                task_state: Some("CANCELLED".into()),
            }),
        ),
        (
            "worker_task_failed_full.json",
            fixture!("worker_task_failed_full.json"),
            WorkerMessage::TaskFailed(TaskFailed {
                task_id: task_id(),
                message: "Failed to execute task: oz agent exited with error: exit status 1".into(),
                failure_reason: Some(FailureReason::AgentInvocation),
                exit_code: Some(1),
            }),
        ),
        (
            "worker_task_failed_no_exit_code.json",
            fixture!("worker_task_failed_no_exit_code.json"),
            WorkerMessage::TaskFailed(TaskFailed {
                task_id: task_id(),
                message: "Failed to execute task: setup command failed: exit status 2".into(),
                failure_reason: Some(FailureReason::SetupCommand),
                exit_code: None,
            }),
        ),
        (
            "worker_task_failed_bare.json",
            fixture!("worker_task_failed_bare.json"),
            WorkerMessage::TaskFailed(TaskFailed {
                task_id: task_id(),
                message: "Failed to execute task: backend is not ready".into(),
                failure_reason: None,
                exit_code: None,
            }),
        ),
        (
            "worker_task_failed_shutdown.json",
            fixture!("worker_task_failed_shutdown.json"),
            WorkerMessage::TaskFailed(TaskFailed {
                task_id: task_id(),
                message: MSG_INTERRUPTED.into(),
                failure_reason: Some(FailureReason::GracefulShutdown),
                exit_code: Some(143),
            }),
        ),
    ]
}

#[test]
fn worker_frames_decode_to_the_expected_messages() {
    for (name, text, expected) in worker_frames() {
        assert_eq!(worker(text), expected, "{name}");
        // The derived serde impl agrees with `decode`.
        let via_serde: WorkerMessage = serde_json::from_str(text).expect(name);
        assert_eq!(via_serde, expected, "{name}");
    }
}

#[test]
fn worker_frames_encode_exactly_like_the_official_worker() {
    for (name, text, msg) in worker_frames() {
        let encoded = msg.encode();
        // Same value, same key set at every level...
        let (got, want) = (value(&encoded), value(text));
        assert_eq!(got, want, "{name}");
        assert_eq!(keys(&got), BTreeSet::from(["type", "data"]), "{name}");
        assert_eq!(keys(&got["data"]), keys(&want["data"]), "{name}");
        // ...and, since the official worker writes compact JSON in struct
        // order, the very same bytes.
        assert_eq!(encoded, text.trim_end(), "{name}");
        assert_eq!(got["type"], msg.kind(), "{name}");
        assert_eq!(msg.task_id(), "run-7f3c2a", "{name}");
    }
}

#[test]
fn worker_frame_helpers() {
    for (name, _, msg) in worker_frames() {
        let terminal = matches!(
            msg,
            WorkerMessage::TaskCompleted(_) | WorkerMessage::TaskFailed(_)
        );
        assert_eq!(msg.is_terminal(), terminal, "{name}");
    }
}

#[test]
fn absent_optionals_are_omitted_from_worker_frames() {
    let failed = WorkerMessage::TaskFailed(TaskFailed {
        task_id: "r".into(),
        message: "m".into(),
        failure_reason: None,
        exit_code: None,
    });
    assert_eq!(
        value(&failed.encode()),
        json!({"type": "task_failed", "data": {"task_id": "r", "message": "m"}})
    );
    // A zero exit code is never sent, even if a caller sets it.
    let zero = WorkerMessage::TaskFailed(TaskFailed {
        task_id: "r".into(),
        message: "m".into(),
        failure_reason: Some(FailureReason::Unknown),
        exit_code: Some(0),
    });
    assert_eq!(
        value(&zero.encode()),
        json!({"type": "task_failed", "data": {"task_id": "r", "message": "m", "failure_reason": "unknown"}})
    );
    let completed = WorkerMessage::TaskCompleted(TaskCompleted {
        task_id: "r".into(),
        message: MSG_COMPLETED.into(),
        task_state: None,
    });
    assert_eq!(
        keys(&value(&completed.encode())["data"]),
        BTreeSet::from(["task_id", "message"])
    );
}

#[test]
fn unknown_failure_reason_decodes_to_unknown() {
    let text = r#"{"type":"task_failed","data":{"task_id":"r","message":"m","failure_reason":"quantum_flux","exit_code":9}}"#;
    match worker(text) {
        WorkerMessage::TaskFailed(f) => {
            assert_eq!(f.failure_reason, Some(FailureReason::Unknown));
            assert_eq!(f.exit_code, Some(9));
        }
        other => panic!("expected task_failed, got {other:?}"),
    }
    let text =
        r#"{"type":"task_failed","data":{"task_id":"r","message":"m","failure_reason":null}}"#;
    match worker(text) {
        WorkerMessage::TaskFailed(f) => assert_eq!(f.failure_reason, None),
        other => panic!("expected task_failed, got {other:?}"),
    }
    // Every official string maps to its own variant.
    for r in FailureReason::ALL {
        let text = json!({"type": "task_failed", "data": {"task_id": "r", "message": "m", "failure_reason": r.as_str()}});
        match worker(&text.to_string()) {
            WorkerMessage::TaskFailed(f) => assert_eq!(f.failure_reason, Some(r)),
            other => panic!("expected task_failed, got {other:?}"),
        }
    }
}

#[test]
fn worker_decode_errors() {
    use oz_protocol::WorkerDecodeError as E;
    assert!(matches!(WorkerMessage::decode("{"), Err(E::Envelope(_))));
    assert!(matches!(
        WorkerMessage::decode(r#"{"type":"heartbeat"}"#),
        Err(E::UnknownType(t)) if t == "heartbeat"
    ));
    for text in [
        r#"{"type":"task_claimed"}"#,
        r#"{"type":"task_claimed","data":{"task_id":"r"}}"#,
        r#"{"type":"task_rejected","data":["r","full"]}"#,
        r#"{"type":"task_failed","data":{"task_id":"r","message":"m","exit_code":"1"}}"#,
    ] {
        assert!(
            matches!(WorkerMessage::decode(text), Err(E::Data { .. })),
            "{text}"
        );
    }
}

// ---------------------------------------------------------------- error paths

#[test]
fn invalid_json_is_an_envelope_error() {
    for text in [
        "",
        "not json",
        "{\"type\":\"task_assignment\",",
        "[]",
        "\"task_assignment\"",
        r#"{"data":{"task_id":"r"}}"#,
        r#"{"type":5}"#,
    ] {
        assert!(
            matches!(ServerMessage::decode(text), Err(DecodeError::Envelope(_))),
            "{text:?}"
        );
    }
}

fn assignment_error(data: Value) -> Option<String> {
    let frame = json!({"type": "task_assignment", "data": data});
    match ServerMessage::decode(&frame.to_string()) {
        Err(DecodeError::Assignment { task_id, reason }) => {
            assert!(!reason.is_empty());
            task_id
        }
        other => panic!("{frame}: expected an Assignment error, got {other:?}"),
    }
}

#[test]
fn wrongly_typed_task_keeps_the_task_id() {
    for task in [
        json!(5),
        json!("run-x"),
        json!(true),
        json!([]),
        json!(["run-x"]),
    ] {
        assert_eq!(
            assignment_error(json!({"task_id": "run-x", "task": task})).as_deref(),
            Some("run-x"),
            "task = {task}"
        );
    }
    // Deeper type errors still carry the id.
    for data in [
        json!({"task_id": "run-x", "task": {"id": 1}}),
        json!({"task_id": "run-x", "task": {"id": "run-x", "title": 2}}),
        json!({"task_id": "run-x", "task": {"id": "run-x", "agent_config_snapshot": {"harness": []}}}),
        json!({"task_id": "run-x", "task": {"id": "run-x", "agent_config_snapshot": {"idle_timeout_minutes": "20"}}}),
        json!({"task_id": "run-x", "task": {"id": "run-x"}, "env_vars": {"A": 1}}),
        json!({"task_id": "run-x", "task": {"id": "run-x"}, "additional_sidecars": [["img", "/m", true]]}),
        json!({"task_id": "run-x", "task": {"id": "run-x"}, "instance_shape": [4, 16]}),
    ] {
        assert_eq!(
            assignment_error(data.clone()).as_deref(),
            Some("run-x"),
            "{data}"
        );
    }
    let err =
        ServerMessage::decode(r#"{"type":"task_assignment","data":{"task_id":"run-x","task":5}}"#)
            .expect_err("must fail");
    assert!(err.to_string().contains("run-x"), "{err}");
}

#[test]
fn unreadable_task_id_gives_none() {
    assert_eq!(assignment_error(json!({"task_id": 12, "task": {}})), None);
    assert_eq!(assignment_error(json!({"task_id": "", "task": 5})), None);
    assert_eq!(assignment_error(json!([{"task_id": "run-x"}])), None);
    assert_eq!(assignment_error(json!("run-x")), None);
}

#[test]
fn missing_data_gives_an_assignment_without_task() {
    for text in [
        r#"{"type":"task_assignment"}"#,
        r#"{"type":"task_assignment","data":null}"#,
        r#"{"type":"task_assignment","data":{}}"#,
    ] {
        let a = assignment(text);
        assert_eq!(a.task, None, "{text}");
        assert_eq!(a.task_id, "", "{text}");
    }
    // `task` absent while `task_id` is present.
    let a = assignment(r#"{"type":"task_assignment","data":{"task_id":"run-y"}}"#);
    assert_eq!((a.task_id.as_str(), a.task), ("run-y", None));
}

#[test]
fn nulls_are_accepted_where_the_official_worker_accepts_them() {
    let text = json!({
        "type": "task_assignment",
        "data": {
            "task_id": "run-n",
            "execution_id": null,
            "task": {
                "id": null, "title": null, "task_definition": null,
                "created_at": null, "updated_at": null, "owner": null,
                "agent_conversation_id": null,
                "agent_config_snapshot": {
                    "mcp_servers": null, "harness": {"type": null},
                    "inference_providers": {"aws": {"disabled": null, "role_arn": null}},
                    "session_sharing": null
                }
            },
            "docker_image": null,
            "sidecar_image": null,
            "additional_sidecars": [{"image": "i", "mount_path": null, "read_write": null}],
            "env_vars": null,
            "additional_oz_args": null,
            "instance_shape": null
        }
    });
    let a = assignment(&text.to_string());
    assert_eq!(a.task_id, "run-n");
    assert!(a.env_vars.is_empty());
    assert!(a.additional_oz_args.is_empty());
    let task = a.task.expect("task");
    assert_eq!(task.id, "");
    assert_eq!(task.created_at, None);
    let snap = task.agent_config_snapshot.expect("snapshot");
    assert_eq!(snap.harness.and_then(|h| h.kind), None);
    assert!(
        !snap
            .inference_providers
            .and_then(|p| p.aws)
            .expect("aws")
            .disabled
    );
    let sidecars = a.additional_sidecars.expect("sidecars");
    assert_eq!(
        (sidecars[0].mount_path.as_str(), sidecars[0].read_write),
        ("", false)
    );

    let c = ServerMessage::decode(r#"{"type":"task_cancellation","data":{"task_id":null}}"#);
    assert!(
        matches!(c, Ok(ServerMessage::TaskCancellation(TaskCancellation { task_id })) if task_id.is_empty())
    );
}

#[test]
fn malformed_cancellation_is_a_data_error() {
    for text in [
        r#"{"type":"task_cancellation"}"#,
        r#"{"type":"task_cancellation","data":{"task_id":7}}"#,
        r#"{"type":"task_cancellation","data":["run-1"]}"#,
    ] {
        match ServerMessage::decode(text) {
            Err(DecodeError::Data { kind, .. }) => assert_eq!(kind, "task_cancellation"),
            other => panic!("{text}: expected a Data error, got {other:?}"),
        }
    }
}

// ---------------------------------------------------------------- all fixtures

#[test]
fn every_fixture_on_disk_decodes() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");
    let mut seen = 0;
    for entry in std::fs::read_dir(dir).expect("fixtures dir") {
        let path = entry.expect("dir entry").path();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_owned();
        if !name.ends_with(".json") {
            continue;
        }
        let text = std::fs::read_to_string(&path).expect("readable fixture");
        if name.starts_with("server_") {
            let msg = ServerMessage::decode(&text).unwrap_or_else(|e| panic!("{name}: {e}"));
            // What we encode decodes to the same message.
            assert_eq!(
                ServerMessage::decode(&msg.encode()).expect(&name),
                msg,
                "{name}"
            );
        } else if name.starts_with("worker_") {
            let msg = WorkerMessage::decode(&text).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(value(&msg.encode()), value(&text), "{name}");
        } else {
            panic!("fixture {name} must start with server_ or worker_");
        }
        seen += 1;
    }
    assert!(seen >= 16, "only {seen} fixtures found");
}
