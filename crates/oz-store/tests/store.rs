//! The store "story" suite.
//!
//! Everything in [`story`] is written against `Arc<dyn Store>` only, so a
//! future Postgres implementation can run the same stories; the macro at the
//! bottom instantiates each story for a SQLite file and an in-memory SQLite
//! database. SQLite-specific tests (files, durability, open errors,
//! corruption) follow.

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};
use oz_store::{
    Cursor, KeyKind, NewApiKey, NewRun, Run, RunPatch, RunQuery, RunState, SortBy, SortOrder,
    SqliteStore, StatusMessage, Store, StoreError, cursor_value, ts,
};
use serde_json::json;

fn base() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-03-01T12:00:00Z")
        .unwrap()
        .with_timezone(&Utc)
}

/// A timestamp `secs` seconds after a fixed origin, in the stored format.
fn at(secs: i64) -> String {
    ts(base() + Duration::seconds(secs))
}

fn new_run(run_id: &str, team_id: &str, created_at: &str) -> NewRun {
    NewRun {
        run_id: run_id.to_owned(),
        team_id: team_id.to_owned(),
        prompt: format!("prompt of {run_id}"),
        title: format!("title of {run_id}"),
        config: json!({ "worker_host": "w-default" }),
        metadata: BTreeMap::new(),
        source: "API".to_owned(),
        mode: None,
        worker_host: "w-default".to_owned(),
        name: None,
        model_id: None,
        environment_id: None,
        skill_spec: None,
        schedule_id: None,
        status_message: None,
        created_at: created_at.to_owned(),
        creator_id: None,
        creator: None,
        agent_uid: None,
        executor: None,
        parent_run_id: None,
        conversation_id: None,
        schedule: None,
    }
}

fn new_key(id: &str, team_id: &str, hash: &str, now: &str) -> NewApiKey {
    NewApiKey {
        id: id.to_owned(),
        team_id: team_id.to_owned(),
        name: format!("key {id}"),
        kind: KeyKind::Team,
        prefix: format!("oz_{id}"),
        hash: hash.to_owned(),
        created_at: now.to_owned(),
    }
}

fn query(team_id: &str) -> RunQuery {
    RunQuery {
        team_id: team_id.to_owned(),
        limit: 1000,
        ..RunQuery::default()
    }
}

fn ids(runs: &[Run]) -> Vec<String> {
    runs.iter().map(|r| r.run_id.clone()).collect()
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

/// The order `list_runs` must produce, computed independently.
fn expected_order(runs: &[Run], sort: SortBy, order: SortOrder) -> Vec<String> {
    let mut runs: Vec<&Run> = runs.iter().collect();
    runs.sort_by(|a, b| {
        let key = |r: &Run| match sort {
            SortBy::UpdatedAt => (false, r.updated_at.clone(), r.run_id.clone()),
            SortBy::CreatedAt => (false, r.created_at.clone(), r.run_id.clone()),
            SortBy::Title => (false, r.title.clone(), r.run_id.clone()),
            // Runs without a skill come after every run with one (ascending).
            SortBy::Agent => (
                r.skill_spec.is_none(),
                r.skill_spec.clone().unwrap_or_default(),
                r.run_id.clone(),
            ),
        };
        key(a).cmp(&key(b))
    });
    if order == SortOrder::Desc {
        runs.reverse();
    }
    runs.into_iter().map(|r| r.run_id.clone()).collect()
}

const SORTS: [SortBy; 4] = [
    SortBy::UpdatedAt,
    SortBy::CreatedAt,
    SortBy::Title,
    SortBy::Agent,
];
const ORDERS: [SortOrder; 2] = [SortOrder::Asc, SortOrder::Desc];

mod story {
    use super::*;

    pub async fn teams_and_keys(s: Arc<dyn Store>) {
        assert_eq!(s.first_team().await.unwrap(), None);
        let t2 = s.create_team("t2", "Second", &at(2)).await.unwrap();
        let t1 = s.create_team("t1", "First", &at(1)).await.unwrap();
        assert_eq!(t1.id, "t1");
        assert_eq!(t1.name, "First");
        assert_eq!(t1.created_at, at(1));
        assert_eq!(s.first_team().await.unwrap(), Some(t1.clone()));
        assert_eq!(s.get_team("t2").await.unwrap(), Some(t2));
        assert_eq!(s.get_team("nope").await.unwrap(), None);
        let dup = s.create_team("t1", "Again", &at(3)).await.unwrap_err();
        assert!(matches!(dup, StoreError::Conflict(_)), "{dup:?}");

        let mut admin = new_key("k1", "t1", "hash1", &at(10));
        admin.kind = KeyKind::Admin;
        let k1 = s.insert_api_key(admin).await.unwrap();
        assert_eq!(k1.kind, KeyKind::Admin);
        assert_eq!(k1.prefix, "oz_k1");
        assert_eq!(k1.last_used_at, None);
        assert_eq!(k1.revoked_at, None);
        let mut worker = new_key("k2", "t1", "hash2", &at(11));
        worker.kind = KeyKind::Worker;
        s.insert_api_key(worker).await.unwrap();
        s.insert_api_key(new_key("k3", "t2", "hash3", &at(12)))
            .await
            .unwrap();
        let dup = s
            .insert_api_key(new_key("k4", "t1", "hash1", &at(13)))
            .await
            .unwrap_err();
        assert!(matches!(dup, StoreError::Conflict(_)), "{dup:?}");

        assert_eq!(s.find_api_key("hash1").await.unwrap(), Some(k1.clone()));
        assert_eq!(s.find_api_key("nope").await.unwrap(), None);
        let listed = s.list_api_keys("t1").await.unwrap();
        assert_eq!(
            listed.iter().map(|k| k.id.as_str()).collect::<Vec<_>>(),
            ["k1", "k2"]
        );
        assert_eq!(listed[1].kind, KeyKind::Worker);

        s.touch_api_key("k1", &at(20)).await.unwrap();
        s.touch_api_key("missing", &at(20)).await.unwrap();
        let touched = s.find_api_key("hash1").await.unwrap().unwrap();
        assert_eq!(touched.last_used_at.as_deref(), Some(at(20).as_str()));

        // Revoking needs the right team, and works once.
        assert!(!s.revoke_api_key("t2", "k1", &at(30)).await.unwrap());
        assert!(s.revoke_api_key("t1", "k1", &at(30)).await.unwrap());
        assert!(!s.revoke_api_key("t1", "k1", &at(31)).await.unwrap());
        assert!(!s.revoke_api_key("t1", "missing", &at(31)).await.unwrap());
        assert_eq!(s.find_api_key("hash1").await.unwrap(), None);
        let listed = s.list_api_keys("t1").await.unwrap();
        assert_eq!(listed[0].revoked_at.as_deref(), Some(at(30).as_str()));
        assert_eq!(listed[1].revoked_at, None);
        assert!(s.find_api_key("hash2").await.unwrap().is_some());
    }

    pub async fn insert_and_get_run(s: Arc<dyn Store>) {
        s.create_team("t", "T", &at(0)).await.unwrap();
        let mut nr = new_run("r1", "t", &at(5));
        nr.config = json!({"model_id": "m", "nested": {"a": [1, 2]}});
        nr.metadata = BTreeMap::from([("k".to_owned(), "v".to_owned())]);
        nr.mode = Some("plan".to_owned());
        nr.name = Some("nightly".to_owned());
        nr.model_id = Some("m".to_owned());
        nr.environment_id = Some("env".to_owned());
        nr.skill_spec = Some("org/repo:skill".to_owned());
        nr.schedule_id = Some("sched".to_owned());
        nr.status_message = Some(StatusMessage::info("queued behind 2 runs"));
        nr.creator_id = Some("key-1".to_owned());
        nr.creator = Some(json!({"uid": "key-1", "type": "service_account"}));
        nr.agent_uid = Some("agent-1".to_owned());
        nr.executor = Some(json!({"uid": "agent-1", "display_name": "bot"}));
        nr.parent_run_id = Some("r0".to_owned());
        nr.conversation_id = Some("c-1".to_owned());
        nr.schedule = Some(
            json!({"schedule_id": "sched", "schedule_name": "n", "cron_schedule": "0 9 * * *"}),
        );
        let run = s.insert_run(nr.clone()).await.unwrap();
        let expected = Run {
            run_id: "r1".to_owned(),
            team_id: "t".to_owned(),
            state: RunState::Queued,
            prompt: nr.prompt.clone(),
            title: nr.title.clone(),
            config: nr.config.clone(),
            metadata: nr.metadata.clone(),
            source: "API".to_owned(),
            mode: Some("plan".to_owned()),
            worker_host: "w-default".to_owned(),
            name: Some("nightly".to_owned()),
            model_id: Some("m".to_owned()),
            environment_id: Some("env".to_owned()),
            skill_spec: Some("org/repo:skill".to_owned()),
            schedule_id: Some("sched".to_owned()),
            created_at: at(5),
            updated_at: at(5),
            started_at: None,
            ended_at: None,
            status_message: Some(StatusMessage::info("queued behind 2 runs")),
            execution_id: None,
            holder: None,
            assigned_at: None,
            cancel_requested_at: None,
            token_hash: None,
            artifacts: vec![],
            log_last_seq: None,
            creator_id: Some("key-1".to_owned()),
            creator: Some(json!({"uid": "key-1", "type": "service_account"})),
            agent_uid: Some("agent-1".to_owned()),
            executor: Some(json!({"uid": "agent-1", "display_name": "bot"})),
            parent_run_id: Some("r0".to_owned()),
            conversation_id: Some("c-1".to_owned()),
            schedule: Some(
                json!({"schedule_id": "sched", "schedule_name": "n", "cron_schedule": "0 9 * * *"}),
            ),
            execution_prompt: None,
            pending_followups: 0,
            executions: 0,
            log_seq_base: 0,
            queued_at: at(5),
        };
        assert_eq!(run, expected);
        assert_eq!(s.get_run("r1").await.unwrap(), Some(expected.clone()));
        assert_eq!(s.get_run("r2").await.unwrap(), None);

        // Same id again: conflict, and the stored run is untouched.
        let mut again = new_run("r1", "t", &at(9));
        again.prompt = "other".to_owned();
        let err = s.insert_run(again).await.unwrap_err();
        assert!(matches!(err, StoreError::Conflict(_)), "{err:?}");
        assert_eq!(s.get_run("r1").await.unwrap(), Some(expected));

        // A run of an unknown team is refused.
        let err = s.insert_run(new_run("r3", "ghost", &at(9))).await;
        assert!(err.is_err());
        assert_eq!(s.get_run("r3").await.unwrap(), None);
    }

    pub async fn transition_cas(s: Arc<dyn Store>) {
        s.create_team("t", "T", &at(0)).await.unwrap();
        let mut nr = new_run("r", "t", &at(1));
        nr.status_message = Some(StatusMessage::info("waiting"));
        let original = s.insert_run(nr).await.unwrap();

        // Wrong from-state: nothing happens.
        let none = s
            .transition(
                "r",
                &[RunState::Pending, RunState::Claimed],
                RunState::Inprogress,
                RunPatch {
                    holder: Some(Some("conn".to_owned())),
                    ..RunPatch::default()
                },
                &at(2),
            )
            .await
            .unwrap();
        assert_eq!(none, None);
        assert_eq!(s.get_run("r").await.unwrap(), Some(original.clone()));
        // Missing run and empty from-set: None.
        let missing = s
            .transition(
                "nope",
                &[RunState::Queued],
                RunState::Pending,
                RunPatch::default(),
                &at(2),
            )
            .await
            .unwrap();
        assert_eq!(missing, None);
        let empty = s
            .transition("r", &[], RunState::Pending, RunPatch::default(), &at(2))
            .await
            .unwrap();
        assert_eq!(empty, None);
        assert_eq!(s.get_run("r").await.unwrap(), Some(original.clone()));

        // Right from-state: state, patch and updated_at change together.
        let pending = s
            .transition(
                "r",
                &[RunState::Queued],
                RunState::Pending,
                RunPatch {
                    execution_id: Some(Some("exec-1".to_owned())),
                    holder: Some(Some("conn-1".to_owned())),
                    assigned_at: Some(Some(at(3))),
                    token_hash: Some(Some("token-r".to_owned())),
                    ..RunPatch::default()
                },
                &at(3),
            )
            .await
            .unwrap()
            .unwrap();
        assert_eq!(pending.state, RunState::Pending);
        assert_eq!(pending.execution_id.as_deref(), Some("exec-1"));
        assert_eq!(pending.holder.as_deref(), Some("conn-1"));
        assert_eq!(pending.assigned_at, Some(at(3)));
        assert_eq!(pending.updated_at, at(3));
        assert_eq!(pending.created_at, at(1));
        // Untouched fields are kept.
        assert_eq!(pending.status_message, original.status_message);
        // A queued run has no token; the assignment gave it one.
        assert_eq!(original.token_hash, None);
        assert_eq!(pending.token_hash.as_deref(), Some("token-r"));
        assert_eq!(s.get_run("r").await.unwrap(), Some(pending.clone()));

        // The same event again finds the run in another state.
        let dup = s
            .transition(
                "r",
                &[RunState::Queued],
                RunState::Pending,
                RunPatch::default(),
                &at(4),
            )
            .await
            .unwrap();
        assert_eq!(dup, None);

        // Some(None) clears, Some(Some) sets, None keeps.
        let running = s
            .transition(
                "r",
                &[RunState::Pending, RunState::Claimed],
                RunState::Inprogress,
                RunPatch {
                    status_message: Some(None),
                    started_at: Some(Some(at(5))),
                    assigned_at: Some(None),
                    ..RunPatch::default()
                },
                &at(5),
            )
            .await
            .unwrap()
            .unwrap();
        assert_eq!(running.state, RunState::Inprogress);
        assert_eq!(running.status_message, None);
        assert_eq!(running.started_at, Some(at(5)));
        assert_eq!(running.assigned_at, None);
        assert_eq!(running.holder.as_deref(), Some("conn-1"));
        assert_eq!(running.execution_id.as_deref(), Some("exec-1"));
        assert_eq!(running.updated_at, at(5));

        // patch_run: no state change, only in the given states.
        let no = s
            .patch_run(
                "r",
                &[RunState::Queued],
                RunPatch {
                    cancel_requested_at: Some(Some(at(6))),
                    ..RunPatch::default()
                },
                &at(6),
            )
            .await
            .unwrap();
        assert_eq!(no, None);
        assert_eq!(s.get_run("r").await.unwrap(), Some(running.clone()));
        let err_msg = StatusMessage::error("boom", "internal_error", true);
        let patched = s
            .patch_run(
                "r",
                &[RunState::Inprogress],
                RunPatch {
                    cancel_requested_at: Some(Some(at(6))),
                    status_message: Some(Some(err_msg.clone())),
                    holder: Some(None),
                    ..RunPatch::default()
                },
                &at(6),
            )
            .await
            .unwrap()
            .unwrap();
        assert_eq!(patched.state, RunState::Inprogress);
        assert_eq!(patched.cancel_requested_at, Some(at(6)));
        assert_eq!(patched.status_message, Some(err_msg));
        assert_eq!(patched.holder, None);
        assert_eq!(patched.started_at, Some(at(5)));
        assert_eq!(patched.updated_at, at(6));

        // Ending the run: every patch field at once.
        let ended = s
            .transition(
                "r",
                &[RunState::Inprogress],
                RunState::Succeeded,
                RunPatch {
                    status_message: Some(Some(StatusMessage::info("done"))),
                    execution_id: Some(None),
                    holder: Some(None),
                    assigned_at: Some(None),
                    started_at: Some(None),
                    ended_at: Some(Some(at(7))),
                    cancel_requested_at: Some(None),
                    token_hash: Some(None),
                    new_execution: true,
                    log_last_seq: Some(42),
                },
                &at(7),
            )
            .await
            .unwrap()
            .unwrap();
        assert_eq!(ended.state, RunState::Succeeded);
        assert_eq!(ended.ended_at, Some(at(7)));
        assert_eq!(ended.executions, 1);
        assert_eq!(ended.execution_id, None);
        assert_eq!(ended.started_at, None);
        assert_eq!(ended.log_last_seq, Some(42));
        assert_eq!(ended.cancel_requested_at, None);
        assert_eq!(ended.token_hash, None);
        assert_eq!(s.get_run("r").await.unwrap(), Some(ended));
    }

    pub async fn concurrent_transitions(s: Arc<dyn Store>) {
        s.create_team("t", "T", &at(0)).await.unwrap();
        s.insert_run(new_run("r", "t", &at(1))).await.unwrap();
        let barrier = Arc::new(tokio::sync::Barrier::new(8));
        let mut tasks = Vec::new();
        for i in 0..8 {
            let s = s.clone();
            let barrier = barrier.clone();
            tasks.push(tokio::spawn(async move {
                barrier.wait().await;
                s.transition(
                    "r",
                    &[RunState::Queued],
                    RunState::Pending,
                    RunPatch {
                        holder: Some(Some(format!("conn-{i}"))),
                        ..RunPatch::default()
                    },
                    &at(10 + i),
                )
                .await
                .unwrap()
                .map(|run| (i, run))
            }));
        }
        let mut winners = Vec::new();
        for task in tasks {
            if let Some(won) = task.await.unwrap() {
                winners.push(won);
            }
        }
        assert_eq!(winners.len(), 1, "exactly one transition wins");
        let (i, run) = winners.pop().unwrap();
        assert_eq!(run.holder, Some(format!("conn-{i}")));
        assert_eq!(s.get_run("r").await.unwrap(), Some(run));
    }

    /// The dispatcher's step: oldest first (run_id breaks ties), only the
    /// pair's QUEUED runs, the patch applied, `None` once drained; and
    /// concurrent callers never get the same run.
    pub async fn assign_next(s: Arc<dyn Store>) {
        s.create_team("t", "T", &at(0)).await.unwrap();
        s.create_team("u", "U", &at(0)).await.unwrap();
        let make = |id: &str, team: &str, host: &str, t: i64| {
            let mut nr = new_run(id, team, &at(t));
            nr.worker_host = host.to_owned();
            nr
        };
        for nr in [
            make("c", "t", "w", 3),
            make("b", "t", "w", 1),
            make("a", "t", "w", 1),
            make("other-host", "t", "x", 0),
            make("other-team", "u", "w", 0),
            make("cancelled", "t", "w", 0),
        ] {
            s.insert_run(nr).await.unwrap();
        }
        s.transition(
            "cancelled",
            &[RunState::Queued],
            RunState::Cancelled,
            RunPatch::default(),
            &at(5),
        )
        .await
        .unwrap()
        .unwrap();
        let patch = |conn: &str| RunPatch {
            holder: Some(Some(conn.to_owned())),
            execution_id: Some(Some(format!("exec-{conn}"))),
            new_execution: true,
            ..RunPatch::default()
        };
        let mut got = Vec::new();
        while let Some(run) = s
            .assign_next("t", "w", patch(&format!("c{}", got.len())), &at(10))
            .await
            .unwrap()
        {
            assert_eq!(run.state, RunState::Pending);
            assert_eq!(run.holder, Some(format!("c{}", got.len())));
            assert_eq!(run.execution_id, Some(format!("exec-c{}", got.len())));
            assert_eq!(run.executions, 1);
            assert_eq!(run.updated_at, at(10));
            assert_eq!(s.get_run(&run.run_id).await.unwrap(), Some(run.clone()));
            got.push(run.run_id);
        }
        assert_eq!(got, ["a", "b", "c"]);
        for (id, state) in [
            ("other-host", RunState::Queued),
            ("other-team", RunState::Queued),
            ("cancelled", RunState::Cancelled),
        ] {
            assert_eq!(s.get_run(id).await.unwrap().unwrap().state, state, "{id}");
        }
        assert_eq!(
            s.assign_next("t", "nobody", patch("z"), &at(11))
                .await
                .unwrap(),
            None
        );

        // Eight dispatchers racing for five runs: each run goes once.
        for i in 0..5 {
            s.insert_run(make(&format!("race-{i}"), "u", "r", 20 + i))
                .await
                .unwrap();
        }
        let barrier = Arc::new(tokio::sync::Barrier::new(8));
        let mut tasks = Vec::new();
        for i in 0..8 {
            let (s, barrier) = (s.clone(), barrier.clone());
            tasks.push(tokio::spawn(async move {
                barrier.wait().await;
                s.assign_next("u", "r", patch(&format!("d{i}")), &at(30))
                    .await
                    .unwrap()
            }));
        }
        let mut won = Vec::new();
        for task in tasks {
            won.extend(task.await.unwrap().map(|r| r.run_id));
        }
        won.sort();
        assert_eq!(won, ["race-0", "race-1", "race-2", "race-3", "race-4"]);
    }

    pub async fn queue_active_artifacts(s: Arc<dyn Store>) {
        s.create_team("t", "T", &at(0)).await.unwrap();
        // Same created_at for b and a: run_id breaks the tie.
        for (id, t) in [("c", 3), ("b", 1), ("a", 1), ("d", 2), ("e", 4)] {
            s.insert_run(new_run(id, "t", &at(t))).await.unwrap();
        }
        assert_eq!(
            ids(&s.queued_runs(&at(99), 10).await.unwrap()),
            ["a", "b", "d", "c", "e"]
        );
        assert_eq!(ids(&s.queued_runs(&at(99), 2).await.unwrap()), ["a", "b"]);
        // Only runs queued before the cutoff.
        assert_eq!(ids(&s.queued_runs(&at(2), 10).await.unwrap()), ["a", "b"]);
        assert_eq!(
            ids(&s.queued_runs(&at(1), 10).await.unwrap()),
            [] as [&str; 0]
        );

        let go = |id: &'static str, from: RunState, to: RunState| {
            let s = s.clone();
            async move {
                s.transition(id, &[from], to, RunPatch::default(), &at(9))
                    .await
                    .unwrap()
                    .unwrap()
            }
        };
        go("a", RunState::Queued, RunState::Pending).await;
        go("b", RunState::Queued, RunState::Claimed).await;
        go("c", RunState::Queued, RunState::Inprogress).await;
        go("d", RunState::Queued, RunState::Cancelled).await;
        assert_eq!(ids(&s.queued_runs(&at(99), 10).await.unwrap()), ["e"]);
        assert_eq!(ids(&s.active_runs().await.unwrap()), ["a", "b", "c"]);

        let one = s
            .add_artifact("c", json!({"type": "PLAN", "id": 1}), &at(20))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(one.artifacts, vec![json!({"type": "PLAN", "id": 1})]);
        assert_eq!(one.updated_at, at(20));
        let two = s
            .add_artifact("c", json!({"type": "PULL_REQUEST", "url": "x"}), &at(21))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            two.artifacts,
            vec![
                json!({"type": "PLAN", "id": 1}),
                json!({"type": "PULL_REQUEST", "url": "x"})
            ]
        );
        assert_eq!(two.state, RunState::Inprogress);
        assert_eq!(s.get_run("c").await.unwrap(), Some(two));
        assert_eq!(
            s.add_artifact("nope", json!({}), &at(22)).await.unwrap(),
            None
        );
    }

    pub async fn token_lookup(s: Arc<dyn Store>) {
        s.create_team("t", "T", &at(0)).await.unwrap();
        s.insert_run(new_run("r", "t", &at(1))).await.unwrap();
        s.insert_run(new_run("q", "t", &at(1))).await.unwrap();
        // A queued run has no token to be found by.
        assert_eq!(s.get_run("r").await.unwrap().unwrap().token_hash, None);
        assert_eq!(s.find_run_by_token("token-r").await.unwrap(), None);

        // Assigned: the token the patch sets finds it.
        let assign = |token: &str| RunPatch {
            token_hash: Some(Some(token.to_owned())),
            ..RunPatch::default()
        };
        for (id, token) in [("r", "token-r"), ("q", "token-q")] {
            s.transition(
                id,
                &[RunState::Queued],
                RunState::Pending,
                assign(token),
                &at(2),
            )
            .await
            .unwrap()
            .unwrap();
        }
        let found = s.find_run_by_token("token-r").await.unwrap().unwrap();
        assert_eq!(found.run_id, "r");
        assert_eq!(s.find_run_by_token("nope").await.unwrap(), None);

        s.transition(
            "r",
            &[RunState::Pending],
            RunState::Inprogress,
            RunPatch::default(),
            &at(2),
        )
        .await
        .unwrap()
        .unwrap();
        let found = s.find_run_by_token("token-r").await.unwrap().unwrap();
        assert_eq!(found.state, RunState::Inprogress);

        s.transition(
            "r",
            &[RunState::Inprogress],
            RunState::Failed,
            RunPatch {
                token_hash: Some(None),
                ended_at: Some(Some(at(3))),
                ..RunPatch::default()
            },
            &at(3),
        )
        .await
        .unwrap()
        .unwrap();
        assert_eq!(s.find_run_by_token("token-r").await.unwrap(), None);

        // A terminal run is not found even if its hash was kept.
        s.transition(
            "q",
            &[RunState::Pending],
            RunState::Cancelled,
            RunPatch::default(),
            &at(3),
        )
        .await
        .unwrap()
        .unwrap();
        assert_eq!(s.find_run_by_token("token-q").await.unwrap(), None);
    }

    /// Runs with distinct values in every filterable column.
    async fn filter_fixture(s: &Arc<dyn Store>) {
        s.create_team("t", "T", &at(0)).await.unwrap();
        s.create_team("other", "Other", &at(0)).await.unwrap();

        let mut r1 = new_run("r1", "t", &at(10));
        r1.title = "Fix the bug".to_owned();
        r1.prompt = "please".to_owned();
        r1.source = "API".to_owned();
        r1.name = Some("alpha".to_owned());
        r1.model_id = Some("m1".to_owned());
        r1.environment_id = Some("e1".to_owned());
        r1.skill_spec = Some("org/repo:deploy".to_owned());
        r1.worker_host = "w1".to_owned();
        r1.metadata = BTreeMap::from([
            ("team".to_owned(), "red".to_owned()),
            ("prio".to_owned(), "high".to_owned()),
        ]);

        let mut r2 = new_run("r2", "t", &at(20));
        r2.title = "100% done".to_owned();
        r2.prompt = "Fixing nothing".to_owned();
        r2.source = "SCHEDULED_AGENT".to_owned();
        r2.name = Some("beta".to_owned());
        r2.model_id = Some("m2".to_owned());
        r2.schedule_id = Some("s1".to_owned());
        r2.worker_host = "w2".to_owned();
        r2.metadata = BTreeMap::from([
            ("team".to_owned(), "red".to_owned()),
            ("prio".to_owned(), "low".to_owned()),
        ]);

        let mut r3 = new_run("r3", "t", &at(30));
        r3.title = "1000 done".to_owned();
        r3.prompt = "under_score".to_owned();
        r3.environment_id = Some("e2".to_owned());
        r3.skill_spec = Some("org/repo:review".to_owned());
        r3.metadata = BTreeMap::from([
            ("team".to_owned(), "blue".to_owned()),
            ("prio".to_owned(), "high".to_owned()),
            ("odd key.\"$[0]".to_owned(), "x".to_owned()),
        ]);

        let mut r4 = new_run("r4", "t", &at(40));
        r4.title = "underXscore".to_owned();
        r4.prompt = "nothing".to_owned();
        r4.skill_spec = Some("ACME/FIX:it".to_owned());

        // Another team's run matches nothing of team t.
        let mut o1 = new_run("o1", "other", &at(15));
        o1.title = "Fix the bug".to_owned();
        o1.name = Some("alpha".to_owned());

        for r in [r1, r2, r3, r4, o1] {
            s.insert_run(r).await.unwrap();
        }
        // updated_at: r1 at 50, r3 at 60; states r1 INPROGRESS, r3 CANCELLED.
        s.transition(
            "r1",
            &[RunState::Queued],
            RunState::Inprogress,
            RunPatch::default(),
            &at(50),
        )
        .await
        .unwrap()
        .unwrap();
        s.transition(
            "r3",
            &[RunState::Queued],
            RunState::Cancelled,
            RunPatch::default(),
            &at(60),
        )
        .await
        .unwrap()
        .unwrap();
    }

    pub async fn list_filters(s: Arc<dyn Store>) {
        filter_fixture(&s).await;
        let list = |q: RunQuery| {
            let s = s.clone();
            async move { sorted(ids(&s.list_runs(&q).await.unwrap())) }
        };
        let all = ["r1", "r2", "r3", "r4"];

        assert_eq!(list(query("t")).await, all);
        assert_eq!(list(query("other")).await, ["o1"]);
        assert!(list(query("nobody")).await.is_empty());

        let q = |f: &dyn Fn(&mut RunQuery)| {
            let mut q = query("t");
            f(&mut q);
            q
        };
        assert_eq!(
            list(q(&|q| q.states = vec![RunState::Queued])).await,
            ["r2", "r4"]
        );
        assert_eq!(
            list(q(
                &|q| q.states = vec![RunState::Inprogress, RunState::Cancelled]
            ))
            .await,
            ["r1", "r3"]
        );
        assert_eq!(
            list(q(&|q| q.source = Some("SCHEDULED_AGENT".into()))).await,
            ["r2"]
        );
        assert_eq!(
            list(q(&|q| q.created_after = Some(at(20)))).await,
            ["r3", "r4"]
        );
        assert_eq!(list(q(&|q| q.created_before = Some(at(20)))).await, ["r1"]);
        assert_eq!(
            list(q(&|q| {
                q.created_after = Some(at(10));
                q.created_before = Some(at(40));
            }))
            .await,
            ["r2", "r3"]
        );
        assert_eq!(
            list(q(&|q| q.updated_after = Some(at(45)))).await,
            ["r1", "r3"]
        );
        assert_eq!(list(q(&|q| q.name = Some("alpha".into()))).await, ["r1"]);
        assert_eq!(list(q(&|q| q.model_id = Some("m2".into()))).await, ["r2"]);
        assert_eq!(
            list(q(&|q| q.environment_id = Some(Some("e2".into())))).await,
            ["r3"]
        );
        assert_eq!(
            list(q(&|q| q.environment_id = Some(None))).await,
            ["r2", "r4"]
        );
        assert_eq!(
            list(q(&|q| q.schedule_id = Some("s1".into()))).await,
            ["r2"]
        );
        assert_eq!(
            list(q(&|q| q.skill_spec = Some("org/repo:review".into()))).await,
            ["r3"]
        );
        assert_eq!(
            list(q(&|q| q.worker_host = Some("w1".into()))).await,
            ["r1"]
        );
        assert_eq!(
            list(q(&|q| q.worker_host = Some("w-default".into()))).await,
            ["r3", "r4"]
        );

        // q: case-insensitive over title, prompt and skill spec.
        assert_eq!(
            list(q(&|q| q.q = Some("fix".into()))).await,
            ["r1", "r2", "r4"]
        );
        assert_eq!(list(q(&|q| q.q = Some("REPO:REV".into()))).await, ["r3"]);
        // `%`, `_` and `\` are literal.
        assert_eq!(list(q(&|q| q.q = Some("0% d".into()))).await, ["r2"]);
        assert_eq!(list(q(&|q| q.q = Some("%".into()))).await, ["r2"]);
        assert_eq!(list(q(&|q| q.q = Some("r_s".into()))).await, ["r3"]);
        assert!(list(q(&|q| q.q = Some("\\".into()))).await.is_empty());
        assert_eq!(list(q(&|q| q.q = Some("".into()))).await, all);

        // Metadata: every pair must match.
        let md = |pairs: &[(&str, &str)]| {
            let pairs: Vec<(String, String)> = pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            q(&|q| q.metadata = pairs.clone())
        };
        assert_eq!(list(md(&[("team", "red")])).await, ["r1", "r2"]);
        assert_eq!(list(md(&[("team", "red"), ("prio", "high")])).await, ["r1"]);
        assert_eq!(list(md(&[("prio", "high")])).await, ["r1", "r3"]);
        assert!(list(md(&[("team", "green")])).await.is_empty());
        assert!(list(md(&[("nokey", "red")])).await.is_empty());
        assert_eq!(list(md(&[("odd key.\"$[0]", "x")])).await, ["r3"]);

        // Filters combine with AND.
        assert_eq!(
            list(q(&|q| {
                q.q = Some("fix".into());
                q.states = vec![RunState::Queued];
                q.environment_id = Some(None);
            }))
            .await,
            ["r2", "r4"]
        );

        // Limit.
        let mut limited = query("t");
        limited.limit = 2;
        assert_eq!(s.list_runs(&limited).await.unwrap().len(), 2);
        limited.limit = 0;
        assert!(s.list_runs(&limited).await.unwrap().is_empty());
    }

    /// ~50 runs with ties in every sort column and some without a skill.
    async fn paging_fixture(s: &Arc<dyn Store>) -> Vec<Run> {
        s.create_team("t", "T", &at(0)).await.unwrap();
        let titles = ["alpha", "Beta", "gamma", "alpha", "delta", "Épsilon"];
        let skills = [
            None,
            Some("org/a:x"),
            Some("org/b:y"),
            None,
            Some("org/a:x"),
            Some("z"),
            Some(""),
        ];
        for i in 0..50_i64 {
            // Ids not in creation order, so the tie-break is visible.
            let id = format!("run-{:02}", (i * 37) % 50);
            let mut r = new_run(&id, "t", &at(i / 3));
            r.title = titles[(i % 6) as usize].to_owned();
            r.skill_spec = skills[(i % 7) as usize].map(str::to_owned);
            s.insert_run(r).await.unwrap();
            if i % 4 == 0 {
                s.patch_run(
                    &id,
                    &[RunState::Queued],
                    RunPatch::default(),
                    &at(100 + (i % 5)),
                )
                .await
                .unwrap()
                .unwrap();
            }
        }
        s.list_runs(&query("t")).await.unwrap()
    }

    pub async fn list_sorting(s: Arc<dyn Store>) {
        let runs = paging_fixture(&s).await;
        assert_eq!(runs.len(), 50);
        assert!(runs.iter().any(|r| r.skill_spec.is_none()));
        for sort in SORTS {
            for order in ORDERS {
                let mut q = query("t");
                q.sort_by = sort;
                q.sort_order = order;
                let got = ids(&s.list_runs(&q).await.unwrap());
                assert_eq!(
                    got,
                    expected_order(&runs, sort, order),
                    "{sort:?} {order:?}"
                );
            }
        }
        // The default is updated_at descending.
        let got = ids(&s.list_runs(&query("t")).await.unwrap());
        assert_eq!(
            got,
            expected_order(&runs, SortBy::UpdatedAt, SortOrder::Desc)
        );
        // Runs without a skill: last ascending, first descending.
        let mut q = query("t");
        q.sort_by = SortBy::Agent;
        q.sort_order = SortOrder::Asc;
        let asc = s.list_runs(&q).await.unwrap();
        assert!(asc.last().unwrap().skill_spec.is_none());
        assert_eq!(asc[0].skill_spec.as_deref(), Some(""));
        q.sort_order = SortOrder::Desc;
        let desc = s.list_runs(&q).await.unwrap();
        assert!(desc[0].skill_spec.is_none());
    }

    pub async fn list_pagination(s: Arc<dyn Store>) {
        let runs = paging_fixture(&s).await;
        for sort in SORTS {
            for order in ORDERS {
                let mut q = query("t");
                q.sort_by = sort;
                q.sort_order = order;
                q.limit = 7;
                let mut seen = Vec::new();
                let mut pages = 0;
                loop {
                    let page = s.list_runs(&q).await.unwrap();
                    pages += 1;
                    assert!(page.len() <= 7);
                    seen.extend(ids(&page));
                    let Some(last) = page.last() else { break };
                    if page.len() < 7 {
                        break;
                    }
                    q.after = Some(Cursor {
                        value: cursor_value(last, sort),
                        run_id: last.run_id.clone(),
                    });
                    assert!(pages < 20, "pagination does not end");
                }
                assert_eq!(
                    seen,
                    expected_order(&runs, sort, order),
                    "{sort:?} {order:?}"
                );
                assert_eq!(pages, 8, "{sort:?} {order:?}");
            }
        }

        // Pagination composes with filters.
        let mut q = query("t");
        q.states = vec![RunState::Queued];
        q.sort_by = SortBy::Agent;
        q.sort_order = SortOrder::Asc;
        q.q = Some("ALPHA".into());
        let expected: Vec<Run> = runs
            .iter()
            .filter(|r| r.title == "alpha")
            .cloned()
            .collect();
        q.limit = 3;
        let mut seen = Vec::new();
        loop {
            let page = s.list_runs(&q).await.unwrap();
            seen.extend(ids(&page));
            if page.len() < 3 {
                break;
            }
            let last = page.last().unwrap();
            q.after = Some(Cursor {
                value: cursor_value(last, SortBy::Agent),
                run_id: last.run_id.clone(),
            });
        }
        assert_eq!(
            seen,
            expected_order(&expected, SortBy::Agent, SortOrder::Asc)
        );
    }
}

async fn file_store() -> (tempfile::TempDir, SqliteStore) {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("data/oz.db"))
        .await
        .unwrap();
    (dir, store)
}

async fn memory_store() -> SqliteStore {
    SqliteStore::open_url("sqlite::memory:").await.unwrap()
}

macro_rules! stories {
    ($($name:ident),* $(,)?) => {
        mod sqlite_file {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    let (_dir, store) = super::file_store().await;
                    super::story::$name(std::sync::Arc::new(store)).await;
                }
            )*
        }
        mod sqlite_memory {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    let store = super::memory_store().await;
                    super::story::$name(std::sync::Arc::new(store)).await;
                }
            )*
        }
    };
}

stories!(
    teams_and_keys,
    insert_and_get_run,
    transition_cas,
    concurrent_transitions,
    assign_next,
    queue_active_artifacts,
    token_lookup,
    list_filters,
    list_sorting,
    list_pagination,
);

// SQLite-specific tests.

/// Two stores on one file (two server processes, or replicas) handing out
/// one queue at once: every run goes to exactly one of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn assign_next_across_two_stores_on_one_file_hands_each_run_out_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("oz.db");
    let a = Arc::new(SqliteStore::open(&path).await.unwrap());
    let b = Arc::new(SqliteStore::open(&path).await.unwrap());
    a.create_team("t", "T", &at(0)).await.unwrap();
    const RUNS: usize = 40;
    for i in 0..RUNS {
        let mut nr = new_run(&format!("r{i:02}"), "t", &at(i as i64));
        nr.worker_host = "w".into();
        a.insert_run(nr).await.unwrap();
    }
    let barrier = Arc::new(tokio::sync::Barrier::new(8));
    let mut tasks = Vec::new();
    for i in 0..8 {
        let s: Arc<dyn Store> = if i % 2 == 0 { a.clone() } else { b.clone() };
        let barrier = barrier.clone();
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            let mut got = Vec::new();
            let patch = || RunPatch {
                holder: Some(Some(format!("d{i}"))),
                ..RunPatch::default()
            };
            while let Some(run) = s.assign_next("t", "w", patch(), &at(100)).await.unwrap() {
                assert_eq!(run.holder, Some(format!("d{i}")));
                got.push(run.run_id);
            }
            got
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all.sort();
    let expected: Vec<String> = (0..RUNS).map(|i| format!("r{i:02}")).collect();
    assert_eq!(all, expected, "each run handed out exactly once");
}

#[tokio::test]
async fn reopen_file_keeps_data() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nested/dirs/oz.db");
    let run = {
        let store = SqliteStore::open(&path).await.unwrap();
        store.create_team("t", "T", &at(0)).await.unwrap();
        store
            .insert_api_key(new_key("k", "t", "h", &at(0)))
            .await
            .unwrap();
        store.insert_run(new_run("r", "t", &at(1))).await.unwrap();
        let run = store
            .add_artifact("r", json!({"type": "FILE"}), &at(2))
            .await
            .unwrap()
            .unwrap();
        store.close().await;
        run
    };
    assert!(path.exists());
    // Opening again runs the (already applied) migrations and finds everything.
    let store = SqliteStore::open(&path).await.unwrap();
    assert_eq!(store.get_run("r").await.unwrap(), Some(run));
    assert_eq!(store.first_team().await.unwrap().unwrap().id, "t");
    assert!(store.find_api_key("h").await.unwrap().is_some());
    store.close().await;

    // And through a URL.
    let url = format!("sqlite://{}", path.display());
    let store = SqliteStore::open_url(&url).await.unwrap();
    assert!(store.get_run("r").await.unwrap().is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn open_the_same_fresh_file_concurrently() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("oz.db");
    let opens: Vec<_> = (0..6)
        .map(|_| {
            let path = path.clone();
            tokio::spawn(async move { SqliteStore::open(&path).await })
        })
        .collect();
    let mut stores = Vec::new();
    for open in opens {
        stores.push(open.await.unwrap().unwrap());
    }
    stores[0].create_team("t", "T", &at(0)).await.unwrap();
    for store in &stores {
        assert!(store.get_team("t").await.unwrap().is_some());
    }
}

#[tokio::test]
async fn file_uses_wal_and_foreign_keys() {
    let (_dir, store) = file_store().await;
    let (mode, fk) = store
        .with_connection(|c| {
            let mode: String = c
                .query_row("PRAGMA journal_mode", [], |r| r.get(0))
                .unwrap();
            let fk: i64 = c
                .query_row("PRAGMA foreign_keys", [], |r| r.get(0))
                .unwrap();
            (mode, fk)
        })
        .unwrap();
    assert_eq!(mode, "wal");
    assert_eq!(fk, 1);
}

#[tokio::test]
async fn memory_store_shares_one_database() {
    let store = memory_store().await;
    store.create_team("t", "T", &at(0)).await.unwrap();
    // Clones and later calls see the same data.
    let clone = store.clone();
    assert!(clone.get_team("t").await.unwrap().is_some());
    // Two memory stores are independent.
    let other = memory_store().await;
    assert!(other.get_team("t").await.unwrap().is_none());
}

#[tokio::test]
async fn open_under_a_regular_file_fails_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("plain");
    std::fs::write(&file, "not a directory").unwrap();
    let path = file.join("oz.db");
    let err = SqliteStore::open(&path).await.unwrap_err();
    let StoreError::Open { location, message } = &err else {
        panic!("expected an Open error, got {err:?}");
    };
    assert_eq!(location, &path.display().to_string());
    assert!(message.contains("cannot create the directory"), "{message}");
    let text = err.to_string();
    assert!(text.contains(&path.display().to_string()), "{text}");
}

#[tokio::test]
async fn open_a_file_that_is_not_a_database_fails_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("oz.db");
    std::fs::write(&path, vec![b'x'; 8192]).unwrap();
    let err = SqliteStore::open(&path).await.unwrap_err();
    match &err {
        StoreError::Open { location, message } => {
            assert_eq!(location, &path.display().to_string());
            assert!(message.contains("not a database"), "{message}");
        }
        other => panic!("expected an Open error, got {other:?}"),
    }
}

#[tokio::test]
async fn bad_url_fails_clearly() {
    let err = SqliteStore::open_url("sqlite://x.db?mode=bogus")
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Open { .. }), "{err:?}");
}

#[tokio::test]
async fn corrupt_json_is_reported() {
    let (_dir, store) = file_store().await;
    store.create_team("t", "T", &at(0)).await.unwrap();
    store.insert_run(new_run("r", "t", &at(1))).await.unwrap();
    store
        .with_connection(|c| {
            c.execute(
                "UPDATE runs SET metadata = '{not json' WHERE run_id = 'r'",
                [],
            )
        })
        .unwrap()
        .unwrap();
    let err = store.get_run("r").await.unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::Corrupt {
                what: "run metadata",
                ..
            }
        ),
        "{err:?}"
    );
    let err = store.list_runs(&query("t")).await.unwrap_err();
    assert!(matches!(err, StoreError::Corrupt { .. }), "{err:?}");
}

// ------------------------------------------------------------------------------------------------
// Logs (extension `logs`): stories over `Arc<dyn Store>`, instantiated for both SQLite flavours.

mod log_story {
    use super::*;
    use oz_store::{LogLine, LogPhase, LogQuery, LogRecord, LogStream};

    fn text(seq: u64, phase: LogPhase, s: &str) -> LogRecord {
        LogRecord::from_line(&LogLine::new(
            seq,
            at((seq % 100_000) as i64),
            LogStream::Stdout,
            phase,
            s.as_bytes(),
            true,
        ))
        .unwrap()
    }

    fn lines(range: std::ops::RangeInclusive<u64>) -> Vec<LogRecord> {
        range
            .map(|seq| text(seq, LogPhase::Agent, &format!("line {seq}")))
            .collect()
    }

    fn seqs(records: &[LogRecord]) -> Vec<u64> {
        records.iter().map(|r| r.seq).collect()
    }

    fn all(run_id: &str) -> LogQuery {
        LogQuery {
            run_id: run_id.to_owned(),
            after_seq: 0,
            limit: 10_000,
            phase: None,
        }
    }

    async fn setup(s: &Arc<dyn Store>, runs: &[&str]) {
        s.create_team("t", "T", &at(0)).await.unwrap();
        for (i, r) in runs.iter().enumerate() {
            s.insert_run(new_run(r, "t", &at(i as i64 + 1)))
                .await
                .unwrap();
        }
    }

    pub async fn append_and_read_exactly_once(s: Arc<dyn Store>) {
        setup(&s, &["r", "other"]).await;
        assert_eq!(s.max_log_seq("r").await.unwrap(), None);
        assert_eq!(s.read_logs(&all("r")).await.unwrap(), vec![]);
        assert_eq!(s.append_logs("r", &[]).await.unwrap(), 0);

        // Text, invalid UTF-8, an empty line, a line without newline, a gap.
        let binary = [b'a', 0xff, 0xc3, 0x28, 0, b'z'];
        let wire = vec![
            LogLine::new(1, at(1), LogStream::Stdout, LogPhase::Setup, b"hi", true),
            LogLine::new(2, at(2), LogStream::Stderr, LogPhase::Agent, &binary, true),
            LogLine::new(3, at(3), LogStream::Stdout, LogPhase::Agent, b"", true),
            LogLine::new(4, at(4), LogStream::Stdout, LogPhase::Agent, b"tail", false),
            LogLine::gap(5, at(5), LogStream::Stderr, LogPhase::Teardown, 4096),
        ];
        let records: Vec<LogRecord> = wire
            .iter()
            .map(|l| LogRecord::from_line(l).unwrap())
            .collect();
        assert_eq!(s.append_logs("r", &records[..3]).await.unwrap(), 3);
        // A repeated frame overlapping the stored lines adds only the new ones.
        assert_eq!(s.append_logs("r", &records[1..]).await.unwrap(), 2);
        assert_eq!(s.append_logs("r", &records).await.unwrap(), 0);

        let back = s.read_logs(&all("r")).await.unwrap();
        assert_eq!(back, records, "each line once, in seq order, byte for byte");
        let back_wire: Vec<LogLine> = back.iter().map(LogRecord::to_line).collect();
        assert_eq!(
            back_wire, wire,
            "the wire lines come back as they were sent"
        );
        assert_eq!(back[1].data, binary);
        assert_eq!(back_wire[1].bytes(), binary);
        assert_eq!(s.max_log_seq("r").await.unwrap(), Some(5));
        assert_eq!(s.count_logs_up_to("r", 3).await.unwrap(), 3);
        assert_eq!(s.count_logs_up_to("r", u64::MAX).await.unwrap(), 5);

        // Paging and the phase filter.
        let page = |after, limit, phase| LogQuery {
            run_id: "r".to_owned(),
            after_seq: after,
            limit,
            phase,
        };
        assert_eq!(seqs(&s.read_logs(&page(1, 2, None)).await.unwrap()), [2, 3]);
        assert_eq!(
            seqs(&s.read_logs(&page(3, 10, None)).await.unwrap()),
            [4, 5]
        );
        assert_eq!(
            seqs(
                &s.read_logs(&page(0, 10, Some(LogPhase::Agent)))
                    .await
                    .unwrap()
            ),
            [2, 3, 4]
        );
        assert_eq!(
            seqs(
                &s.read_logs(&page(2, 1, Some(LogPhase::Agent)))
                    .await
                    .unwrap()
            ),
            [3]
        );
        assert_eq!(
            seqs(
                &s.read_logs(&page(0, 10, Some(LogPhase::Teardown)))
                    .await
                    .unwrap()
            ),
            [5]
        );
        assert!(s.read_logs(&page(5, 10, None)).await.unwrap().is_empty());
        assert!(
            s.read_logs(&page(u64::MAX, 10, None))
                .await
                .unwrap()
                .is_empty()
        );

        // Other runs are separate.
        assert_eq!(s.read_logs(&all("other")).await.unwrap(), vec![]);
        assert_eq!(s.append_logs("other", &lines(1..=2)).await.unwrap(), 2);
        assert_eq!(seqs(&s.read_logs(&all("other")).await.unwrap()), [1, 2]);
        assert_eq!(s.max_log_seq("r").await.unwrap(), Some(5));
    }

    pub async fn bad_batches_store_nothing(s: Arc<dyn Store>) {
        setup(&s, &["r"]).await;
        // seq 0 and seqs beyond i64 are refused, with the whole batch.
        for bad in [0, u64::MAX, i64::MAX as u64 + 1] {
            let mut batch = lines(1..=3);
            batch.push(text(bad, LogPhase::Agent, "bad"));
            let err = s.append_logs("r", &batch).await.unwrap_err();
            assert!(matches!(err, StoreError::Invalid(_)), "{err:?}");
        }
        let mut huge_gap = lines(1..=1);
        huge_gap[0].gap_bytes = Some(u64::MAX);
        assert!(matches!(
            s.append_logs("r", &huge_gap).await.unwrap_err(),
            StoreError::Invalid(_)
        ));
        assert_eq!(s.max_log_seq("r").await.unwrap(), None);
        // The largest storable seq is fine.
        let top = text(i64::MAX as u64, LogPhase::Agent, "top");
        assert_eq!(s.append_logs("r", &[top]).await.unwrap(), 1);
        assert_eq!(s.max_log_seq("r").await.unwrap(), Some(i64::MAX as u64));
        // Lines of a run that does not exist are refused.
        assert!(s.append_logs("nope", &lines(1..=2)).await.is_err());
        assert_eq!(s.read_logs(&all("nope")).await.unwrap(), vec![]);
    }

    pub async fn log_end_is_kept_on_the_run(s: Arc<dyn Store>) {
        setup(&s, &["r"]).await;
        assert_eq!(s.get_run("r").await.unwrap().unwrap().log_last_seq, None);
        assert!(s.set_log_end("r", 0).await.unwrap());
        assert_eq!(s.get_run("r").await.unwrap().unwrap().log_last_seq, Some(0));
        assert!(s.set_log_end("r", 42).await.unwrap());
        assert!(!s.set_log_end("nope", 1).await.unwrap());
        assert!(matches!(
            s.set_log_end("r", u64::MAX).await.unwrap_err(),
            StoreError::Invalid(_)
        ));
        // Transitions return and keep it.
        let run = s
            .transition(
                "r",
                &[RunState::Queued],
                RunState::Cancelled,
                RunPatch::default(),
                &at(9),
            )
            .await
            .unwrap()
            .unwrap();
        assert_eq!(run.log_last_seq, Some(42));
        assert_eq!(
            s.get_run("r").await.unwrap().unwrap().log_last_seq,
            Some(42)
        );
    }

    pub async fn retention_deletes_logs_of_runs_that_ended_long_ago(s: Arc<dyn Store>) {
        setup(&s, &["old", "recent", "live", "ended-without-logs"]).await;
        for r in ["old", "recent", "live"] {
            s.append_logs(r, &lines(1..=4)).await.unwrap();
        }
        let end = |secs: i64| RunPatch {
            ended_at: Some(Some(at(secs))),
            ..RunPatch::default()
        };
        for (r, secs) in [("old", 10), ("recent", 100), ("ended-without-logs", 5)] {
            s.transition(
                r,
                &[RunState::Queued],
                RunState::Succeeded,
                end(secs),
                &at(secs),
            )
            .await
            .unwrap()
            .unwrap();
        }
        assert_eq!(s.delete_logs_ended_before(&at(5)).await.unwrap(), 0);
        assert_eq!(s.delete_logs_ended_before(&at(50)).await.unwrap(), 4);
        assert_eq!(s.read_logs(&all("old")).await.unwrap(), vec![]);
        assert_eq!(s.read_logs(&all("recent")).await.unwrap().len(), 4);
        assert_eq!(s.read_logs(&all("live")).await.unwrap().len(), 4);
        // The run itself stays.
        assert!(s.get_run("old").await.unwrap().is_some());
        assert_eq!(s.delete_logs_ended_before(&at(50)).await.unwrap(), 0);
        assert_eq!(s.delete_logs_ended_before(&at(1000)).await.unwrap(), 4);
        assert_eq!(s.read_logs(&all("live")).await.unwrap().len(), 4);
    }

    /// A run with more lines than one delete statement takes (the sweep
    /// deletes in chunks so that it never holds the database long).
    pub async fn retention_deletes_a_long_log_completely(s: Arc<dyn Store>) {
        setup(&s, &["long"]).await;
        const N: u64 = 12_345;
        for start in (1..=N).step_by(1_000) {
            let end = (start + 999).min(N);
            s.append_logs("long", &lines(start..=end)).await.unwrap();
        }
        s.transition(
            "long",
            &[RunState::Queued],
            RunState::Succeeded,
            RunPatch {
                ended_at: Some(Some(at(10))),
                ..RunPatch::default()
            },
            &at(10),
        )
        .await
        .unwrap()
        .unwrap();
        assert_eq!(s.delete_logs_ended_before(&at(50)).await.unwrap(), N);
        assert_eq!(s.max_log_seq("long").await.unwrap(), None);
    }

    pub async fn concurrent_overlapping_appends_store_each_line_once(s: Arc<dyn Store>) {
        setup(&s, &["r"]).await;
        // 8 writers send overlapping windows of 1..=200 in batches, twice.
        let tasks: Vec<_> = (0..8u64)
            .map(|w| {
                let s = s.clone();
                tokio::spawn(async move {
                    let mut inserted = 0;
                    for round in 0..2 {
                        let mut start = 1 + (w * 7 + round * 3) % 20;
                        while start <= 200 {
                            let end = (start + 24).min(200);
                            inserted += s.append_logs("r", &lines(start..=end)).await.unwrap();
                            start = end + 1;
                        }
                        if w % 2 == 0 {
                            inserted +=
                                s.append_logs("r", &lines(1..=start.min(25))).await.unwrap();
                        }
                    }
                    inserted
                })
            })
            .collect();
        let mut total = 0;
        for t in tasks {
            total += t.await.unwrap();
        }
        assert_eq!(total, 200, "each line was inserted by exactly one call");
        let back = s.read_logs(&all("r")).await.unwrap();
        assert_eq!(seqs(&back), (1..=200).collect::<Vec<_>>());
        assert_eq!(back, lines(1..=200));
    }
}

macro_rules! log_stories {
    ($($name:ident),* $(,)?) => {
        mod logs_sqlite_file {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    let (_dir, store) = super::file_store().await;
                    super::log_story::$name(std::sync::Arc::new(store)).await;
                }
            )*
        }
        mod logs_sqlite_memory {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    let store = super::memory_store().await;
                    super::log_story::$name(std::sync::Arc::new(store)).await;
                }
            )*
        }
    };
}

log_stories!(
    append_and_read_exactly_once,
    bad_batches_store_nothing,
    log_end_is_kept_on_the_run,
    retention_deletes_logs_of_runs_that_ended_long_ago,
    retention_deletes_a_long_log_completely,
    concurrent_overlapping_appends_store_each_line_once,
);

#[tokio::test]
async fn log_migration_applies_to_an_existing_database() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("oz.db");
    let store = SqliteStore::open(&path).await.unwrap();
    store.create_team("t", "T", &at(0)).await.unwrap();
    store.insert_run(new_run("r", "t", &at(1))).await.unwrap();
    store.close().await;
    let store = SqliteStore::open(&path).await.unwrap();
    assert_eq!(
        store.get_run("r").await.unwrap().unwrap().log_last_seq,
        None
    );
    let kind: String = store
        .with_connection(|c| {
            c.query_row(
                "SELECT sql FROM sqlite_schema WHERE type = 'table' AND name = 'run_logs'",
                [],
                |r| r.get(0),
            )
        })
        .unwrap()
        .unwrap();
    assert!(kind.contains("WITHOUT ROWID"), "{kind}");
}
