//! Store stories for schedules, agents, environments, artifacts, handoff
//! attachments and follow-ups; and the schedule claim shared by replicas.

use std::collections::BTreeMap;
use std::sync::Arc;

use oz_store::{
    Agent, Artifact, Catalog, Delivery, Environment, Firing, HandoffAttachment, NewFollowup,
    NewRun, RunPatch, RunQuery, RunState, Schedule, SqliteStore, StatusMessage, Store,
};
use serde_json::json;

const T0: &str = "2026-03-01T12:00:00.000000Z";
const T1: &str = "2026-03-01T12:01:00.000000Z";
const T2: &str = "2026-03-01T12:02:00.000000Z";

async fn store() -> (tempfile::TempDir, Arc<SqliteStore>) {
    let dir = tempfile::tempdir().unwrap();
    let s = SqliteStore::open(&dir.path().join("oz.db")).await.unwrap();
    s.create_team("t", "team", T0).await.unwrap();
    (dir, Arc::new(s))
}

fn new_run(run_id: &str) -> NewRun {
    NewRun {
        run_id: run_id.to_owned(),
        team_id: "t".to_owned(),
        prompt: "do it".to_owned(),
        title: "do it".to_owned(),
        config: json!({"worker_host": "w"}),
        metadata: BTreeMap::new(),
        source: "API".to_owned(),
        mode: None,
        worker_host: "w".to_owned(),
        name: None,
        model_id: None,
        environment_id: None,
        skill_spec: None,
        schedule_id: None,
        status_message: None,
        created_at: T0.to_owned(),
        creator_id: None,
        creator: None,
        agent_uid: None,
        executor: None,
        parent_run_id: None,
        conversation_id: None,
        schedule: None,
    }
}

fn schedule(id: &str, name: &str, next_run: Option<&str>) -> Schedule {
    Schedule {
        id: id.to_owned(),
        team_id: "t".to_owned(),
        name: name.to_owned(),
        cron_schedule: "* * * * *".to_owned(),
        enabled: true,
        prompt: "nightly".to_owned(),
        agent_config: Some(json!({"worker_host": "w"})),
        agent_uid: None,
        metadata: BTreeMap::new(),
        mode: None,
        created_by: None,
        updated_by: None,
        created_at: T0.to_owned(),
        updated_at: T0.to_owned(),
        last_ran: None,
        next_run: next_run.map(str::to_owned),
        last_spawn_error: None,
    }
}

#[tokio::test]
async fn schedules_crud_and_due() {
    let (_d, s) = store().await;
    s.insert_schedule(schedule("s2", "b", Some(T1)))
        .await
        .unwrap();
    s.insert_schedule(schedule("s1", "a", Some(T2)))
        .await
        .unwrap();
    let names: Vec<String> = s
        .list_schedules("t")
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.name)
        .collect();
    assert_eq!(names, ["a", "b"]);
    assert_eq!(s.next_due().await.unwrap().as_deref(), Some(T1));
    let due = s.due_schedules(T1, 10).await.unwrap();
    assert_eq!(due.len(), 1);
    assert_eq!(due[0].id, "s2");

    let mut paused = s.get_schedule("t", "s2").await.unwrap().unwrap();
    paused.enabled = false;
    paused.next_run = None;
    s.update_schedule(paused, false).await.unwrap().unwrap();
    assert!(
        s.due_schedules(T2, 10)
            .await
            .unwrap()
            .iter()
            .all(|x| x.id != "s2")
    );
    assert!(s.get_schedule("other-team", "s1").await.unwrap().is_none());
    assert!(s.delete_schedule("t", "s1").await.unwrap());
    assert!(!s.delete_schedule("t", "s1").await.unwrap());
    assert!(
        s.update_schedule(schedule("s1", "a", None), false)
            .await
            .unwrap()
            .is_none()
    );
}

fn firing(expected: &str, run_id: &str) -> Firing {
    let mut run = new_run(run_id);
    run.source = "SCHEDULED_AGENT".to_owned();
    run.schedule_id = Some("s".to_owned());
    Firing {
        schedule_id: "s".to_owned(),
        expected_next_run: expected.to_owned(),
        next_run: Some(T2.to_owned()),
        last_ran: expected.to_owned(),
        run: Some(run),
        spawn_error: None,
    }
}

#[tokio::test]
async fn a_firing_is_claimed_once() {
    let (_d, s) = store().await;
    s.insert_schedule(schedule("s", "n", Some(T1)))
        .await
        .unwrap();
    let first = s.fire_schedule(firing(T1, "r1")).await.unwrap();
    assert!(matches!(first, Some(Some(ref r)) if r.run_id == "r1"));
    // Same firing again (another replica that saw the old next_run): nothing.
    assert!(s.fire_schedule(firing(T1, "r2")).await.unwrap().is_none());
    assert!(s.get_run("r2").await.unwrap().is_none());
    let after = s.get_schedule("t", "s").await.unwrap().unwrap();
    assert_eq!(after.next_run.as_deref(), Some(T2));
    assert_eq!(after.last_ran.as_deref(), Some(T1));

    // Deleted between reading and firing: nothing happens.
    s.delete_schedule("t", "s").await.unwrap();
    assert!(s.fire_schedule(firing(T2, "r3")).await.unwrap().is_none());
    assert!(s.get_run("r3").await.unwrap().is_none());
}

#[tokio::test]
async fn a_failed_spawn_is_recorded_and_moves_on() {
    let (_d, s) = store().await;
    s.insert_schedule(schedule("s", "n", Some(T1)))
        .await
        .unwrap();
    let mut f = firing(T1, "r1");
    f.run = None;
    f.spawn_error = Some("agent gone".to_owned());
    assert!(matches!(s.fire_schedule(f).await.unwrap(), Some(None)));
    let after = s.get_schedule("t", "s").await.unwrap().unwrap();
    assert_eq!(after.last_spawn_error.as_deref(), Some("agent gone"));
    assert_eq!(after.next_run.as_deref(), Some(T2));
}

/// Two stores on one file stand for two server replicas: racing on the same
/// due firings, every firing makes exactly one run.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replicas_never_fire_twice() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("oz.db");
    let a = Arc::new(SqliteStore::open(&path).await.unwrap());
    let b = Arc::new(SqliteStore::open(&path).await.unwrap());
    a.create_team("t", "team", T0).await.unwrap();
    let minutes: Vec<String> = (0..40)
        .map(|m| format!("2026-03-01T13:{m:02}:00.000000Z"))
        .collect();
    a.insert_schedule(schedule("s", "n", Some(&minutes[0])))
        .await
        .unwrap();
    let fire_all = |store: Arc<SqliteStore>, tag: &'static str| {
        let minutes = minutes.clone();
        tokio::spawn(async move {
            let mut made = 0;
            for (i, m) in minutes.iter().enumerate().take(minutes.len() - 1) {
                let mut f = firing(m, &format!("{tag}-{i}"));
                f.next_run = Some(minutes[i + 1].clone());
                if let Some(Some(_)) = store.fire_schedule(f).await.unwrap() {
                    made += 1;
                }
            }
            made
        })
    };
    let (x, y) = tokio::join!(fire_all(a.clone(), "a"), fire_all(b.clone(), "b"));
    let (x, y) = (x.unwrap(), y.unwrap());
    assert_eq!(x + y, minutes.len() - 1, "a made {x}, b made {y}");
    let q = RunQuery {
        team_id: "t".to_owned(),
        limit: 1000,
        schedule_id: Some("s".to_owned()),
        ..Default::default()
    };
    assert_eq!(a.list_runs(&q).await.unwrap().len(), minutes.len() - 1);
}

#[tokio::test]
async fn agents_and_environments() {
    let (_d, s) = store().await;
    let mut spec = serde_json::Map::new();
    spec.insert("factory_uid".into(), json!("f1"));
    spec.insert("worker_host".into(), json!("w9"));
    let a = Agent {
        uid: "a1".into(),
        team_id: "t".into(),
        name: "bot".into(),
        spec,
        created_at: T0.into(),
        updated_at: T0.into(),
    };
    s.insert_agent(a.clone()).await.unwrap();
    let mut b = a.clone();
    b.uid = "a2".into();
    b.spec = serde_json::Map::new();
    s.insert_agent(b).await.unwrap();
    assert_eq!(s.list_agents("t", None).await.unwrap().len(), 2);
    let in_f1 = s.list_agents("t", Some("f1")).await.unwrap();
    assert_eq!(in_f1.len(), 1);
    assert_eq!(in_f1[0], a);
    let mut renamed = a.clone();
    renamed.name = "robot".into();
    renamed.updated_at = T1.into();
    assert_eq!(
        s.update_agent(renamed.clone()).await.unwrap(),
        Some(renamed)
    );
    assert!(s.delete_agent("t", "a1").await.unwrap());
    assert!(s.get_agent("t", "a1").await.unwrap().is_none());

    let e = Environment {
        uid: "e1".into(),
        team_id: "t".into(),
        config: json!({"name": "rust"}),
        creator: None,
        last_editor: None,
        created_at: T0.into(),
        last_updated: T0.into(),
    };
    s.insert_environment(e.clone()).await.unwrap();
    assert_eq!(s.get_environment("t", "e1").await.unwrap(), Some(e));
    let mut r = new_run("r1");
    r.environment_id = Some("e1".into());
    s.insert_run(r).await.unwrap();
    let last = s.last_run_in_environment("t", "e1").await.unwrap().unwrap();
    assert_eq!(last.run_id, "r1");
    assert_eq!(s.list_environments("t").await.unwrap().len(), 1);
    assert!(s.delete_environment("t", "e1").await.unwrap());
}

#[tokio::test]
async fn artifacts_and_handoff() {
    let (_d, s) = store().await;
    s.insert_run(new_run("r1")).await.unwrap();
    let art = Artifact {
        uid: "u1".into(),
        run_id: "r1".into(),
        team_id: "t".into(),
        artifact_type: "FILE".into(),
        filename: "a.txt".into(),
        filepath: "out/a.txt".into(),
        mime_type: "text/plain".into(),
        description: None,
        title: None,
        size_bytes: 3,
        created_at: T1.into(),
    };
    let entry = json!({"artifact_type": "FILE", "created_at": T1, "data": {"artifact_uid": "u1"}});
    let run = s
        .insert_artifact(art.clone(), b"abc".to_vec(), entry.clone(), T1)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(run.artifacts, vec![entry]);
    assert_eq!(s.get_artifact("u1").await.unwrap(), Some(art.clone()));
    assert_eq!(
        s.artifact_content("u1").await.unwrap(),
        Some(b"abc".to_vec())
    );
    let mut orphan = art;
    orphan.uid = "u2".into();
    orphan.run_id = "nope".into();
    assert!(
        s.insert_artifact(orphan, vec![], json!({}), T1)
            .await
            .unwrap()
            .is_none()
    );
    assert!(s.get_artifact("u2").await.unwrap().is_none());

    let h = HandoffAttachment {
        id: "h1".into(),
        run_id: "r1".into(),
        execution_id: "e1".into(),
        filename: "snapshot.patch".into(),
        mime_type: Some("text/x-diff".into()),
        size_bytes: 2,
        created_at: T1.into(),
    };
    s.insert_handoff(h.clone(), b"hi".to_vec()).await.unwrap();
    assert_eq!(s.list_handoff("r1").await.unwrap(), vec![h]);
    assert!(s.list_handoff("r0").await.unwrap().is_empty());
    assert_eq!(
        s.handoff_content("r1", "h1").await.unwrap(),
        Some(b"hi".to_vec())
    );
    assert!(s.handoff_content("r2", "h1").await.unwrap().is_none());
}

fn followup(id: &str, run_id: &str, at: &str) -> NewFollowup {
    NewFollowup {
        id: id.to_owned(),
        run_id: run_id.to_owned(),
        message: format!("message {id}"),
        mode: None,
        created_at: at.to_owned(),
    }
}

#[tokio::test]
async fn followups_route_by_state() {
    let (_d, s) = store().await;
    assert!(
        s.add_followup(followup("f0", "nope", T1))
            .await
            .unwrap()
            .is_none()
    );
    s.insert_run(new_run("r1")).await.unwrap();

    // Queued: goes with the execution about to start.
    let (f, run) = s
        .add_followup(followup("f1", "r1", T1))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(f.delivery, Delivery::NextExecution);
    assert_eq!(f.execution, Some(1));
    assert_eq!(run.current_prompt(), "do it\n\n## Follow-up 1\nmessage f1");

    // Running: waits for the execution to end.
    let patch = RunPatch {
        new_execution: true,
        execution_id: Some(Some("x1".into())),
        ..Default::default()
    };
    let run = s
        .transition("r1", &[RunState::Queued], RunState::Inprogress, patch, T1)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(run.executions, 1);
    let (f, run) = s
        .add_followup(followup("f2", "r1", T1))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(f.delivery, Delivery::NextExecution);
    assert_eq!(f.execution, None);
    assert_eq!(run.pending_followups, 1);
    // Nothing to requeue while it runs.
    assert!(s.requeue_for_followups("r1", T2).await.unwrap().is_none());

    // It ends: the waiting follow-up makes a new execution.
    let mut lines = Vec::new();
    for seq in 1..=3 {
        lines.push(oz_store::LogRecord {
            seq,
            ts: T1.into(),
            stream: oz_store::LogStream::Stdout,
            phase: oz_store::LogPhase::Agent,
            data: b"x".to_vec(),
            is_text: true,
            newline: true,
            gap_bytes: None,
        });
    }
    s.append_logs("r1", &lines).await.unwrap();
    s.set_log_end("r1", 3).await.unwrap();
    let ended = s
        .transition(
            "r1",
            &[RunState::Inprogress],
            RunState::Succeeded,
            RunPatch {
                ended_at: Some(Some(T2.into())),
                status_message: Some(Some(StatusMessage::info("done"))),
                ..Default::default()
            },
            T2,
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(ended.pending_followups, 1);
    let again = s.requeue_for_followups("r1", T2).await.unwrap().unwrap();
    assert_eq!(again.state, RunState::Queued);
    assert_eq!(again.pending_followups, 0);
    assert_eq!(again.ended_at, None);
    assert_eq!(again.log_last_seq, None);
    assert_eq!(again.log_seq_base, 3);
    assert_eq!(
        again.current_prompt(),
        "do it\n\n## Follow-up 1\nmessage f1\n\n## Follow-up 2\nmessage f2"
    );
    // Once only.
    assert!(s.requeue_for_followups("r1", T2).await.unwrap().is_none());

    // Ended with nothing waiting: a follow-up queues it again at once.
    s.transition(
        "r1",
        &[RunState::Queued],
        RunState::Cancelled,
        RunPatch::default(),
        T2,
    )
    .await
    .unwrap()
    .unwrap();
    let (f, run) = s
        .add_followup(followup("f3", "r1", T2))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(f.delivery, Delivery::NewExecution);
    assert_eq!(run.state, RunState::Queued);
    let all = s.list_followups("r1").await.unwrap();
    assert_eq!(all.len(), 3);
    let executions: Vec<Option<u32>> = all.iter().map(|f| f.execution).collect();
    assert_eq!(executions, [Some(1), Some(2), Some(2)]);
}

#[tokio::test]
async fn server_secrets_are_created_once() {
    let (_d, s) = store().await;
    assert_eq!(s.server_secret("k", b"first").await.unwrap(), b"first");
    assert_eq!(s.server_secret("k", b"second").await.unwrap(), b"first");
    assert_eq!(s.server_secret("j", b"other").await.unwrap(), b"other");
}

/// An edit that read the schedule before a firing was claimed must not put
/// the claimed firing back.
#[tokio::test]
async fn an_edit_racing_with_a_firing_keeps_the_claimed_next_run() {
    let (_d, s) = store().await;
    s.insert_schedule(schedule("s", "n", Some(T1)))
        .await
        .unwrap();
    let stale = s.get_schedule("t", "s").await.unwrap().unwrap();
    assert!(matches!(
        s.fire_schedule(firing(T1, "r1")).await.unwrap(),
        Some(Some(_))
    ));
    let mut edit = stale;
    edit.name = "renamed".into();
    edit.last_spawn_error = Some("stale".into());
    let after = s.update_schedule(edit, true).await.unwrap().unwrap();
    assert_eq!(after.name, "renamed");
    assert_eq!(after.next_run.as_deref(), Some(T2), "the claim stands");
    assert_eq!(after.last_ran.as_deref(), Some(T1));
    assert_eq!(
        after.last_spawn_error, None,
        "the scheduler's field is not written"
    );
    // So the same firing cannot happen again.
    assert!(s.fire_schedule(firing(T1, "r2")).await.unwrap().is_none());
}

async fn running_with_followup(s: &SqliteStore, run_id: &str) {
    s.insert_run(new_run(run_id)).await.unwrap();
    let patch = RunPatch {
        new_execution: true,
        execution_id: Some(Some("x1".into())),
        ..Default::default()
    };
    s.transition(run_id, &[RunState::Queued], RunState::Inprogress, patch, T1)
        .await
        .unwrap()
        .unwrap();
    let (f, _) = s
        .add_followup(followup("f-wait", run_id, T1))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(f.execution, None);
}

#[tokio::test]
async fn a_cancelled_run_is_not_queued_again_for_waiting_followups() {
    let (_d, s) = store().await;
    running_with_followup(&s, "r1").await;
    let patch = RunPatch {
        cancel_requested_at: Some(Some(T1.into())),
        ..Default::default()
    };
    s.transition(
        "r1",
        &[RunState::Inprogress],
        RunState::Cancelled,
        patch,
        T2,
    )
    .await
    .unwrap()
    .unwrap();
    assert!(s.requeue_for_followups("r1", T2).await.unwrap().is_none());
    assert!(s.runs_awaiting_followups().await.unwrap().is_empty());
    // A new follow-up restarts it, with the one that waited.
    let (_, run) = s
        .add_followup(followup("f-new", "r1", T2))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(run.state, RunState::Queued);
    assert!(run.current_prompt().contains("message f-wait"));
    assert!(run.current_prompt().contains("message f-new"));
    assert_eq!(run.cancel_requested_at, None);
    assert_eq!(run.execution_id, None, "the old execution is over");
    assert_eq!(run.queued_at, T2, "the queue timeout counts from now");
}

#[tokio::test]
async fn an_ended_run_with_waiting_followups_is_found_by_the_sweep() {
    let (_d, s) = store().await;
    running_with_followup(&s, "r1").await;
    s.transition(
        "r1",
        &[RunState::Inprogress],
        RunState::Succeeded,
        RunPatch::default(),
        T2,
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(s.runs_awaiting_followups().await.unwrap(), ["r1"]);
    s.requeue_for_followups("r1", T2).await.unwrap().unwrap();
    assert!(s.runs_awaiting_followups().await.unwrap().is_empty());
}

/// Follow-ups that came while a worker held the run go with the execution
/// that really starts when it went back to the queue unstarted.
#[tokio::test]
async fn followups_of_a_run_sent_back_to_the_queue_are_folded_in() {
    let (_d, s) = store().await;
    s.insert_run(new_run("r1")).await.unwrap();
    let patch = RunPatch {
        new_execution: true,
        execution_id: Some(Some("x1".into())),
        ..Default::default()
    };
    s.transition("r1", &[RunState::Queued], RunState::Pending, patch, T1)
        .await
        .unwrap()
        .unwrap();
    s.add_followup(followup("first", "r1", T1))
        .await
        .unwrap()
        .unwrap();
    let back = s
        .transition(
            "r1",
            &[RunState::Pending],
            RunState::Queued,
            RunPatch::default(),
            T1,
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(back.pending_followups, 1);
    let folded = s.fold_followups("r1", T1).await.unwrap().unwrap();
    assert_eq!(folded.pending_followups, 0);
    assert!(folded.current_prompt().contains("message first"));
    // A second one while queued keeps both, in order.
    let (_, run) = s
        .add_followup(followup("second", "r1", T2))
        .await
        .unwrap()
        .unwrap();
    let p = run.current_prompt();
    assert!(
        p.find("message first").unwrap() < p.find("message second").unwrap(),
        "{p}"
    );
    assert!(
        s.fold_followups("r1", T2).await.unwrap().is_none(),
        "nothing left"
    );
}
