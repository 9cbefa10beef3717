//! The rest of the API on the router over a real SQLite store: schedules
//! (and the scheduler on a clock the test drives), agent identities and
//! precedence, environments, artifacts, handoff attachments, follow-ups,
//! redirects, the extra run filters.

use std::sync::Arc;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, Method, Request, StatusCode, header};
use chrono::{DateTime, Duration, Utc};
use oz_server::state::{AppState, ServerSettings};
use oz_store::{Catalog, RunPatch, RunState, SqliteStore, StatusMessage, Store};
use serde_json::{Value, json};
use tempfile::TempDir;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

const DEFAULT_HOST: &str = "host-default";

struct Env {
    _dir: TempDir,
    store: Arc<SqliteStore>,
    state: AppState,
    app: Router,
    key: String,
}

struct Resp {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Resp {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}): {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    #[track_caller]
    fn expect(&self, status: StatusCode) -> Value {
        assert_eq!(
            self.status,
            status,
            "body: {}",
            String::from_utf8_lossy(&self.body)
        );
        if self.body.is_empty() {
            Value::Null
        } else {
            self.json()
        }
    }

    /// A problem+json error with this status whose detail mentions `words`.
    #[track_caller]
    fn problem(&self, status: StatusCode, words: &str) {
        let v = self.expect(status);
        let ct = self
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        assert!(ct.starts_with("application/problem+json"), "{ct}");
        let detail = v["detail"].as_str().unwrap_or_default();
        assert!(detail.contains(words), "{detail:?} lacks {words:?}");
    }
}

async fn open(dir: &TempDir) -> (Arc<SqliteStore>, AppState) {
    let store = Arc::new(SqliteStore::open(&dir.path().join("oz.db")).await.unwrap());
    let settings = ServerSettings {
        default_worker_host: Some(DEFAULT_HOST.to_owned()),
        public_url: "http://oz.test".to_owned(),
        ..Default::default()
    };
    let dyn_store: Arc<dyn Store> = store.clone();
    let state = oz_server::state(dyn_store, settings, CancellationToken::new())
        .await
        .unwrap();
    (store, state)
}

async fn env() -> Env {
    let dir = tempfile::tempdir().unwrap();
    let (store, state) = open(&dir).await;
    let (key, _) = oz_server::keys::bootstrap(store.as_ref(), dir.path())
        .await
        .unwrap()
        .unwrap();
    Env {
        _dir: dir,
        store,
        app: oz_server::router(state.clone()),
        state,
        key,
    }
}

impl Env {
    async fn send(&self, method: Method, uri: &str, key: Option<&str>, body: Body) -> Resp {
        let mut req = Request::builder()
            .method(method)
            .uri(uri)
            .header(header::CONTENT_TYPE, "application/json");
        if let Some(k) = key {
            req = req.header(header::AUTHORIZATION, format!("Bearer {k}"));
        }
        let resp = self
            .app
            .clone()
            .oneshot(req.body(body).unwrap())
            .await
            .unwrap();
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = axum::body::to_bytes(resp.into_body(), usize::MAX)
            .await
            .unwrap();
        Resp {
            status,
            headers,
            body,
        }
    }

    async fn get(&self, uri: &str) -> Resp {
        self.send(Method::GET, uri, Some(&self.key), Body::empty())
            .await
    }

    async fn post(&self, uri: &str, body: Value) -> Resp {
        self.send(
            Method::POST,
            uri,
            Some(&self.key),
            Body::from(body.to_string()),
        )
        .await
    }

    async fn put(&self, uri: &str, body: Value) -> Resp {
        self.send(
            Method::PUT,
            uri,
            Some(&self.key),
            Body::from(body.to_string()),
        )
        .await
    }

    /// POST/DELETE with the JSON content type and no body, as the SDK does.
    async fn empty(&self, method: Method, uri: &str) -> Resp {
        self.send(method, uri, Some(&self.key), Body::empty()).await
    }

    async fn run(&self, body: Value) -> Value {
        let id = self
            .post("/api/v1/agent/runs", body)
            .await
            .expect(StatusCode::OK)["run_id"]
            .as_str()
            .unwrap()
            .to_owned();
        self.get(&format!("/api/v1/agent/runs/{id}"))
            .await
            .expect(StatusCode::OK)
    }

    async fn schedule(&self, body: Value) -> Value {
        self.post("/api/v1/agent/schedules", body)
            .await
            .expect(StatusCode::CREATED)
    }

    async fn runs_of(&self, schedule_id: &str) -> Vec<Value> {
        self.get(&format!(
            "/api/v1/agent/runs?schedule_id={schedule_id}&limit=100"
        ))
        .await
        .expect(StatusCode::OK)["runs"]
            .as_array()
            .unwrap()
            .clone()
    }

    async fn tick(&self, at: DateTime<Utc>) -> oz_server::scheduler::Tick {
        oz_server::scheduler::tick(&self.state, at).await.unwrap()
    }

    /// A worker took the run: QUEUED → INPROGRESS with an execution id.
    async fn start(&self, run_id: &str, execution_id: &str) {
        let patch = RunPatch {
            execution_id: Some(Some(execution_id.to_owned())),
            new_execution: true,
            ..Default::default()
        };
        self.store
            .transition(
                run_id,
                &[RunState::Queued],
                RunState::Inprogress,
                patch,
                &oz_server::now(),
            )
            .await
            .unwrap()
            .unwrap();
    }

    async fn finish(&self, run_id: &str) {
        let patch = RunPatch {
            ended_at: Some(Some(oz_server::now())),
            status_message: Some(Some(StatusMessage::info("done"))),
            ..Default::default()
        };
        self.store
            .transition(
                run_id,
                &[RunState::Inprogress],
                RunState::Succeeded,
                patch,
                &oz_server::now(),
            )
            .await
            .unwrap()
            .unwrap();
    }
}

fn at(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

fn next_run(item: &Value) -> DateTime<Utc> {
    at(item["history"]["next_run"]
        .as_str()
        .unwrap_or_else(|| panic!("no next_run in {item}")))
}

// ------------------------------------------------------------------------------------------------
// Schedules

#[tokio::test]
async fn schedule_lifecycle_and_errors() {
    let e = env().await;
    let created = e
        .schedule(json!({
            "name": "nightly", "cron_schedule": "0 9 * * *", "prompt": "triage",
            "agent_config": {"worker_host": "w1"}, "metadata": {"team": "infra"}
        }))
        .await;
    let id = created["id"].as_str().unwrap().to_owned();
    assert_eq!(created["enabled"], true);
    assert_eq!(created["scope"]["type"], "Team");
    let first = next_run(&created);
    assert!(first > Utc::now() && first.format("%H:%M").to_string() == "09:00");
    e.schedule(json!({"name": "alpha", "cron_schedule": "@hourly", "prompt": "p"}))
        .await;
    let list = e
        .get("/api/v1/agent/schedules")
        .await
        .expect(StatusCode::OK);
    let names: Vec<&str> = list["schedules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["alpha", "nightly"]);

    // Errors, each with a clear detail.
    let bad = |body: Value| e.post("/api/v1/agent/schedules", body);
    bad(json!({"name": "x", "cron_schedule": "61 * * * *", "prompt": "p"}))
        .await
        .problem(StatusCode::BAD_REQUEST, "minute");
    bad(json!({"name": "x", "cron_schedule": "0 9 * *", "prompt": "p"}))
        .await
        .problem(StatusCode::BAD_REQUEST, "5 fields");
    bad(json!({"name": "x", "cron_schedule": "0 0 30 2 *", "prompt": "p"}))
        .await
        .problem(StatusCode::BAD_REQUEST, "never fires");
    bad(json!({"cron_schedule": "0 9 * * *", "prompt": "p"}))
        .await
        .problem(StatusCode::BAD_REQUEST, "name");
    bad(json!({"name": "x", "cron_schedule": "0 9 * * *"}))
        .await
        .problem(StatusCode::BAD_REQUEST, "prompt is required");
    bad(json!({"name": "x", "cron_schedule": "0 9 * * *", "prompt": "p", "agent_uid": "nope"}))
        .await
        .problem(StatusCode::BAD_REQUEST, "agent_identity_uid");
    bad(
        json!({"name": "x", "cron_schedule": "0 9 * * *", "prompt": "p",
        "agent_config": {"environment_id": "missing"}}),
    )
    .await
    .problem(StatusCode::BAD_REQUEST, "environment");
    e.post("/api/v1/agent/schedules", json!([1]))
        .await
        .problem(StatusCode::BAD_REQUEST, "object");

    // A skill instead of a prompt is enough.
    e.schedule(json!({"name": "skilled", "cron_schedule": "0 9 * * 1-5",
        "agent_config": {"skill_spec": "o/r:skills/triage/SKILL.md"}}))
        .await;

    // PUT is a full replace and needs enabled.
    let uri = format!("/api/v1/agent/schedules/{id}");
    e.put(
        &uri,
        json!({"name": "n", "cron_schedule": "0 9 * * *", "prompt": "p"}),
    )
    .await
    .problem(StatusCode::BAD_REQUEST, "enabled");
    let updated = e
        .put(
            &uri,
            json!({"name": "nightly-2", "cron_schedule": "30 22 * * *", "enabled": true,
            "prompt": "triage again"}),
        )
        .await
        .expect(StatusCode::OK);
    assert_eq!(updated["name"], "nightly-2");
    assert_eq!(
        updated["agent_config"],
        Value::Null,
        "agent_config replaced"
    );
    assert_eq!(next_run(&updated).format("%H:%M").to_string(), "22:30");
    e.put(
        "/api/v1/agent/schedules/nope",
        json!({"name": "n", "cron_schedule": "0 9 * * *", "enabled": true, "prompt": "p"}),
    )
    .await
    .problem(StatusCode::NOT_FOUND, "no schedule");

    // Pause clears the next firing; resume sets it again.
    let paused = e
        .empty(Method::POST, &format!("{uri}/pause"))
        .await
        .expect(StatusCode::OK);
    assert_eq!(paused["enabled"], false);
    assert!(paused["history"].get("next_run").is_none(), "{paused}");
    let resumed = e
        .empty(Method::POST, &format!("{uri}/resume"))
        .await
        .expect(StatusCode::OK);
    assert_eq!(resumed["enabled"], true);
    assert!(next_run(&resumed) > Utc::now());

    let gone = e.empty(Method::DELETE, &uri).await.expect(StatusCode::OK);
    assert_eq!(gone, json!({"success": true}));
    e.get(&uri)
        .await
        .problem(StatusCode::NOT_FOUND, "no schedule");
    e.empty(Method::DELETE, &uri)
        .await
        .problem(StatusCode::NOT_FOUND, "no schedule");
    e.empty(Method::POST, &format!("{uri}/pause"))
        .await
        .problem(StatusCode::NOT_FOUND, "no schedule");
    // Without a key.
    let r = e
        .send(Method::GET, "/api/v1/agent/schedules", None, Body::empty())
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
}

/// "0 0 31 * *" only fires on months with a 31st, on the test's clock.
#[tokio::test]
async fn scheduler_fires_on_month_ends() {
    let e = env().await;
    let s = e
        .schedule(
            json!({"name": "eom", "cron_schedule": "0 0 31 * *", "prompt": "close the month",
            "agent_config": {"worker_host": "w1"}, "metadata": {"k": "v"}}),
        )
        .await;
    let id = s["id"].as_str().unwrap().to_owned();
    let mut due = next_run(&s);
    assert_eq!(due.format("%d %H:%M").to_string(), "31 00:00");

    // Nothing before it is due.
    assert_eq!(e.tick(due - Duration::seconds(1)).await.fired, 0);
    let mut seen = Vec::new();
    for _ in 0..4 {
        let t = e.tick(due + Duration::seconds(5)).await;
        assert_eq!(t.fired, 1, "{t:?}");
        seen.push(due);
        let now = e
            .get(&format!("/api/v1/agent/schedules/{id}"))
            .await
            .expect(StatusCode::OK);
        assert_eq!(
            now["history"]["last_ran"].as_str().map(at),
            Some(due + Duration::seconds(5))
        );
        let next = next_run(&now);
        assert_eq!(next.format("%d %H:%M").to_string(), "31 00:00", "{now}");
        // Never skips a month with a 31st, never lands in one without.
        assert!(next - due <= Duration::days(62), "{due} -> {next}");
        due = next;
    }
    let runs = e.runs_of(&id).await;
    assert_eq!(runs.len(), 4);
    for run in &runs {
        assert_eq!(run["source"], "SCHEDULED_AGENT");
        assert_eq!(run["prompt"], "close the month");
        assert_eq!(run["metadata"]["k"], "v");
        assert_eq!(run["agent_config"]["worker_host"], "w1");
        assert_eq!(
            run["schedule"],
            json!({"schedule_id": id, "schedule_name": "eom", "cron_schedule": "0 0 31 * *"})
        );
    }
}

#[tokio::test]
async fn missed_firings_are_coalesced_into_one_run() {
    let e = env().await;
    let s = e
        .schedule(json!({"name": "hourly", "cron_schedule": "0 * * * *", "prompt": "p"}))
        .await;
    let id = s["id"].as_str().unwrap();
    let due = next_run(&s);
    // The server was "down" for five hours and a bit.
    let late = due + Duration::hours(5) + Duration::minutes(10);
    let t = e.tick(late).await;
    assert_eq!(t.fired, 1);
    assert_eq!(e.runs_of(id).await.len(), 1);
    let now = e
        .get(&format!("/api/v1/agent/schedules/{id}"))
        .await
        .expect(StatusCode::OK);
    assert_eq!(next_run(&now), due + Duration::hours(6));
    // A second pass at the same time makes nothing more.
    assert_eq!(e.tick(late).await.fired, 0);
}

#[tokio::test]
async fn paused_schedules_do_not_fire_and_resume_without_catching_up() {
    let e = env().await;
    let s = e
        .schedule(json!({"name": "m", "cron_schedule": "*/5 * * * *", "prompt": "p"}))
        .await;
    let id = s["id"].as_str().unwrap();
    let uri = format!("/api/v1/agent/schedules/{id}");
    e.empty(Method::POST, &format!("{uri}/pause"))
        .await
        .expect(StatusCode::OK);
    assert_eq!(e.tick(Utc::now() + Duration::days(3)).await.fired, 0);
    let resumed = e
        .empty(Method::POST, &format!("{uri}/resume"))
        .await
        .expect(StatusCode::OK);
    // The next firing is after now: what was missed while paused is skipped.
    assert!(next_run(&resumed) > Utc::now());
    assert!(next_run(&resumed) <= Utc::now() + Duration::minutes(5));
    assert!(e.runs_of(id).await.is_empty());
    // Created paused: no firing at all until resumed.
    let paused = e
        .schedule(
            json!({"name": "p", "cron_schedule": "* * * * *", "prompt": "p", "enabled": false}),
        )
        .await;
    assert_eq!(paused["enabled"], false);
    assert!(paused["history"].get("next_run").is_none());
}

#[tokio::test]
async fn deleting_a_schedule_stops_its_firings_and_keeps_its_runs() {
    let e = env().await;
    let s = e
        .schedule(json!({"name": "d", "cron_schedule": "* * * * *", "prompt": "p"}))
        .await;
    let id = s["id"].as_str().unwrap();
    let due = next_run(&s);
    assert_eq!(e.tick(due).await.fired, 1);
    // Read as due by a pass, deleted before the pass claims it.
    let pending = e
        .store
        .due_schedules(&oz_store::ts(due + Duration::minutes(1)), 10)
        .await
        .unwrap();
    assert_eq!(pending.len(), 1);
    e.empty(Method::DELETE, &format!("/api/v1/agent/schedules/{id}"))
        .await
        .expect(StatusCode::OK);
    let t = e.tick(due + Duration::minutes(1)).await;
    assert_eq!((t.fired, t.lost), (0, 0));
    let f = oz_store::Firing {
        schedule_id: id.to_owned(),
        expected_next_run: pending[0].next_run.clone().unwrap(),
        next_run: None,
        last_ran: oz_server::now(),
        run: None,
        spawn_error: None,
    };
    assert!(e.store.fire_schedule(f).await.unwrap().is_none());
    // History is kept.
    assert_eq!(e.runs_of(id).await.len(), 1);
}

#[tokio::test]
async fn a_firing_that_cannot_make_a_run_is_recorded() {
    let e = env().await;
    let agent = e
        .post(
            "/api/v1/agent/identities",
            json!({"name": "bot", "worker_host": "w7"}),
        )
        .await
        .expect(StatusCode::OK);
    let uid = agent["uid"].as_str().unwrap();
    let s = e
        .schedule(
            json!({"name": "a", "cron_schedule": "* * * * *", "prompt": "p", "agent_uid": uid}),
        )
        .await;
    let id = s["id"].as_str().unwrap();
    e.empty(Method::DELETE, &format!("/api/v1/agent/identities/{uid}"))
        .await
        .expect(StatusCode::NO_CONTENT);
    let due = next_run(&s);
    let t = e.tick(due).await;
    assert_eq!((t.fired, t.failed), (0, 1));
    let now = e
        .get(&format!("/api/v1/agent/schedules/{id}"))
        .await
        .expect(StatusCode::OK);
    assert!(
        now["last_spawn_error"]
            .as_str()
            .unwrap()
            .contains("agent_identity_uid"),
        "{now}"
    );
    assert_eq!(next_run(&now), due + Duration::minutes(1));
}

/// Two servers on one database (replicas) ticking together fire each due
/// schedule once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replicas_sharing_a_database_fire_once() {
    let e = env().await;
    let mut ids = Vec::new();
    for i in 0..10 {
        let s = e
            .schedule(json!({"name": format!("s{i}"), "cron_schedule": "* * * * *", "prompt": "p"}))
            .await;
        ids.push(s["id"].as_str().unwrap().to_owned());
    }
    let (_store_b, state_b) = open(&e._dir).await;
    let when = Utc::now() + Duration::minutes(2);
    for _ in 0..3 {
        let (a, b) = tokio::join!(
            oz_server::scheduler::tick(&e.state, when),
            oz_server::scheduler::tick(&state_b, when)
        );
        let (a, b) = (a.unwrap(), b.unwrap());
        assert_eq!(a.failed + b.failed, 0);
    }
    for id in &ids {
        assert_eq!(e.runs_of(id).await.len(), 1, "schedule {id}");
    }
}

// ------------------------------------------------------------------------------------------------
// Identities and precedence

#[tokio::test]
async fn identities_crud_and_validation() {
    let e = env().await;
    let a = e
        .post(
            "/api/v1/agent/identities",
            json!({"name": "reviewer", "worker_host": "gpu-box", "base_model": "m-1",
                "agent_type": "REVIEW", "factory_uid": "f1", "skills": ["o/r:review/SKILL.md"],
                "secrets": [{"name": "GH"}], "mcp_servers": {"lin": {"warp_id": "linear"}}}),
        )
        .await
        .expect(StatusCode::OK);
    let uid = a["uid"].as_str().unwrap().to_owned();
    assert_eq!(a["available"], true);
    assert_eq!(a["default_runner_uid"], "");
    assert_eq!(
        a["memory"],
        json!({"attached_stores": [], "auto_memory": {"enabled": true}})
    );
    assert_eq!(a["secrets"], json!([{"name": "GH"}]));
    let b = e
        .post("/api/v1/agent/identities", json!({"name": "plain"}))
        .await
        .expect(StatusCode::OK);
    assert_eq!(b["skills"], json!([]));
    let all = e
        .get("/api/v1/agent/identities")
        .await
        .expect(StatusCode::OK);
    assert_eq!(all["agents"].as_array().unwrap().len(), 2);
    let f1 = e
        .get("/api/v1/agent/identities?factory_uid=f1")
        .await
        .expect(StatusCode::OK);
    assert_eq!(f1["agents"].as_array().unwrap().len(), 1);

    let uri = format!("/api/v1/agent/identities/{uid}");
    // Partial update: "" clears, absent keeps, [] clears.
    let u = e
        .put(
            &uri,
            json!({"worker_host": "", "skills": [], "description": "d"}),
        )
        .await
        .expect(StatusCode::OK);
    assert!(u.get("worker_host").is_none(), "{u}");
    assert_eq!(u["skills"], json!([]));
    assert_eq!(u["base_model"], "m-1");
    assert_eq!(u["name"], "reviewer");
    e.put(&uri, json!({"name": ""}))
        .await
        .problem(StatusCode::BAD_REQUEST, "name");

    let bad = |body: Value| e.post("/api/v1/agent/identities", body);
    bad(json!({}))
        .await
        .problem(StatusCode::BAD_REQUEST, "name");
    bad(json!({"name": "x", "agent_type": "BOSS"}))
        .await
        .problem(StatusCode::BAD_REQUEST, "agent_type");
    bad(json!({"name": "x", "harness": {"type": "claude"}, "base_model": "m"}))
        .await
        .problem(StatusCode::BAD_REQUEST, "base_model");
    bad(json!({"name": "x", "harness": {"type": "claude"}, "base_harness": "codex"}))
        .await
        .problem(StatusCode::BAD_REQUEST, "conflicts");
    bad(json!({"name": "x", "environment_id": "nope"}))
        .await
        .problem(StatusCode::BAD_REQUEST, "environment");
    bad(json!({"name": "x", "secrets": [{"name": "A"}, {"name": "A"}]}))
        .await
        .problem(StatusCode::BAD_REQUEST, "twice");
    bad(json!({"name": "x", "mcp_servers": {"m": {"url": "u", "command": "c"}}}))
        .await
        .problem(StatusCode::BAD_REQUEST, "exactly one");
    bad(json!({"name": "x", "skills": ["no-colon"]}))
        .await
        .problem(StatusCode::BAD_REQUEST, "skill");

    let gone = e.empty(Method::DELETE, &uri).await;
    assert_eq!(gone.status, StatusCode::NO_CONTENT);
    assert!(gone.body.is_empty());
    e.get(&uri)
        .await
        .problem(StatusCode::NOT_FOUND, "no agent identity");
    e.empty(Method::DELETE, &uri)
        .await
        .problem(StatusCode::NOT_FOUND, "no agent identity");
}

/// Worker host, model, harness and environment: the run's own value, else
/// the agent's, else the default.
#[tokio::test]
async fn precedence_run_then_agent_then_default() {
    let e = env().await;
    let env_a = e
        .post("/api/v1/agent/environments", json!({"name": "agent-env"}))
        .await
        .expect(StatusCode::CREATED)["uid"]
        .as_str()
        .unwrap()
        .to_owned();
    let env_r = e
        .post("/api/v1/agent/environments", json!({"name": "run-env"}))
        .await
        .expect(StatusCode::CREATED)["uid"]
        .as_str()
        .unwrap()
        .to_owned();
    let agent = e
        .post(
            "/api/v1/agent/identities",
            json!({"name": "bot", "worker_host": "agent-host", "base_model": "agent-model",
                "environment_id": env_a, "harness": {"type": "oz"}}),
        )
        .await
        .expect(StatusCode::OK);
    let uid = agent["uid"].as_str().unwrap().to_owned();

    // Agent defaults fill the gaps.
    let r = e
        .run(json!({"prompt": "p", "agent_identity_uid": uid}))
        .await;
    let c = &r["agent_config"];
    assert_eq!(c["worker_host"], "agent-host");
    assert_eq!(c["model_id"], "agent-model");
    assert_eq!(c["environment_id"], env_a.as_str());
    assert_eq!(c["harness"]["type"], "oz");
    assert_eq!(r["executor"]["uid"], uid.as_str());
    assert_eq!(r["creator"]["type"], "service_account");

    // The run's own values win.
    let r = e
        .run(json!({"prompt": "p", "agent_identity_uid": uid,
            "config": {"worker_host": "run-host", "model_id": "run-model",
                "environment_id": env_r, "harness": {"type": "claude"}}}))
        .await;
    let c = &r["agent_config"];
    assert_eq!(c["worker_host"], "run-host");
    assert_eq!(c["model_id"], "run-model");
    assert_eq!(c["environment_id"], env_r.as_str());
    assert_eq!(c["harness"]["type"], "claude");

    // No agent, no config: the server default; no model or environment.
    let r = e.run(json!({"prompt": "p"})).await;
    assert_eq!(r["agent_config"]["worker_host"], DEFAULT_HOST);
    assert!(r["agent_config"].get("model_id").is_none());
    assert_eq!(r["executor"], r["creator"]);

    // Clearing the agent's worker host lets the default apply again.
    e.put(
        &format!("/api/v1/agent/identities/{uid}"),
        json!({"worker_host": ""}),
    )
    .await
    .expect(StatusCode::OK);
    let r = e
        .run(json!({"prompt": "p", "agent_identity_uid": uid}))
        .await;
    assert_eq!(r["agent_config"]["worker_host"], DEFAULT_HOST);

    e.post(
        "/api/v1/agent/runs",
        json!({"prompt": "p", "agent_identity_uid": "nope"}),
    )
    .await
    .problem(StatusCode::BAD_REQUEST, "agent_identity_uid");
    // Filter by executor.
    let mine = e
        .get(&format!("/api/v1/agent/runs?executor={uid}"))
        .await
        .expect(StatusCode::OK);
    assert_eq!(mine["runs"].as_array().unwrap().len(), 3);
}

// ------------------------------------------------------------------------------------------------
// Environments

#[tokio::test]
async fn environments_create_list_get_delete() {
    let e = env().await;
    let b = e
        .post(
            "/api/v1/agent/environments",
            json!({"name": "beta", "docker_image": "rust:1", "setup_commands": ["make"],
                "github_repos": [{"owner": "o", "repo": "r"}]}),
        )
        .await
        .expect(StatusCode::CREATED);
    let uid = b["uid"].as_str().unwrap().to_owned();
    assert_eq!(uid.len(), 22);
    assert!(uid.chars().all(|c| c.is_ascii_alphanumeric()));
    assert_eq!(b["setup_failed"], false);
    assert_eq!(b["config"]["setup_commands"], json!(["make"]));
    e.post("/api/v1/agent/environments", json!({"name": "Alpha"}))
        .await
        .expect(StatusCode::CREATED);
    let by_name = e
        .get("/api/v1/agent/environments?sort_by=name")
        .await
        .expect(StatusCode::OK);
    let names: Vec<&str> = by_name["environments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["config"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["Alpha", "beta"]);
    let by_time = e
        .get("/api/v1/agent/environments")
        .await
        .expect(StatusCode::OK);
    assert_eq!(by_time["environments"][0]["config"]["name"], "Alpha");
    e.get("/api/v1/agent/environments?sort_by=size")
        .await
        .problem(StatusCode::BAD_REQUEST, "sort_by");

    // A run in it shows up as its last task.
    let run = e
        .run(json!({"prompt": "p", "config": {"environment_id": uid}}))
        .await;
    let got = e
        .get(&format!("/api/v1/agent/environments/{uid}"))
        .await
        .expect(StatusCode::OK);
    assert_eq!(got["last_task_created"]["id"], run["run_id"]);
    assert_eq!(got["last_task_created"]["state"], "QUEUED");
    let filtered = e
        .get(&format!("/api/v1/agent/runs?environment_id={uid}"))
        .await
        .expect(StatusCode::OK);
    assert_eq!(filtered["runs"].as_array().unwrap().len(), 1);

    let bad = |body: Value| e.post("/api/v1/agent/environments", body);
    bad(json!({}))
        .await
        .problem(StatusCode::BAD_REQUEST, "name");
    bad(json!({"name": "x", "setup_commands": "make"}))
        .await
        .problem(StatusCode::BAD_REQUEST, "setup_commands");
    bad(json!({"name": "x", "description": "d".repeat(241)}))
        .await
        .problem(StatusCode::BAD_REQUEST, "240");
    bad(json!({"name": "x", "github_repos": [{"owner": "o"}]}))
        .await
        .problem(StatusCode::BAD_REQUEST, "github_repos");

    let uri = format!("/api/v1/agent/environments/{uid}");
    assert_eq!(
        e.empty(Method::DELETE, &uri).await.expect(StatusCode::OK),
        json!({"success": true})
    );
    e.get(&uri)
        .await
        .problem(StatusCode::NOT_FOUND, "no environment");
}

// ------------------------------------------------------------------------------------------------
// Artifacts and handoff attachments

async fn upload(e: &Env, uri: &str, bytes: &'static [u8]) -> Resp {
    e.send(Method::POST, uri, Some(&e.key), Body::from(bytes))
        .await
}

/// The path and query of an absolute download URL.
fn local(url: &str) -> String {
    url.strip_prefix("http://oz.test")
        .unwrap_or_else(|| panic!("{url} is not on the public URL"))
        .to_owned()
}

#[tokio::test]
async fn file_artifacts_are_stored_and_served_by_signed_urls() {
    let e = env().await;
    let run = e.run(json!({"prompt": "p"})).await;
    let id = run["run_id"].as_str().unwrap();
    let entry = upload(
        &e,
        &format!(
            "/api/v1/agent/runs/{id}/artifacts?artifact_type=FILE&filepath=out/report.txt&mime_type=text/plain&description=the%20report"
        ),
        b"hello report",
    )
    .await
    .expect(StatusCode::CREATED);
    assert_eq!(entry["artifact_type"], "FILE");
    assert_eq!(entry["data"]["filename"], "report.txt");
    assert_eq!(entry["data"]["filepath"], "out/report.txt");
    assert_eq!(entry["data"]["size_bytes"], 12);
    let uid = entry["data"]["artifact_uid"].as_str().unwrap().to_owned();

    let run = e
        .get(&format!("/api/v1/agent/runs/{id}"))
        .await
        .expect(StatusCode::OK);
    assert_eq!(run["artifacts"][0], entry);
    let by_type = e
        .get("/api/v1/agent/runs?artifact_type=FILE")
        .await
        .expect(StatusCode::OK);
    assert_eq!(by_type["runs"].as_array().unwrap().len(), 1);
    let none = e
        .get("/api/v1/agent/runs?artifact_type=PULL_REQUEST")
        .await
        .expect(StatusCode::OK);
    assert!(none["runs"].as_array().unwrap().is_empty());

    let got = e
        .get(&format!("/api/v1/agent/artifacts/{uid}"))
        .await
        .expect(StatusCode::OK);
    assert_eq!(got["artifact_type"], "FILE");
    assert_eq!(got["artifact_uid"], uid.as_str());
    assert_eq!(got["data"]["content_type"], "text/plain");
    assert_eq!(got["data"]["description"], "the report");
    assert!(at(got["data"]["expires_at"].as_str().unwrap()) > Utc::now());
    let url = local(got["data"]["download_url"].as_str().unwrap());

    // Without a key, as a browser would.
    let body = e.send(Method::GET, &url, None, Body::empty()).await;
    assert_eq!(body.status, StatusCode::OK);
    assert_eq!(&body.body[..], b"hello report");
    // A tampered or missing signature is refused.
    let tampered = url.replace("signature=", "signature=00");
    e.send(Method::GET, &tampered, None, Body::empty())
        .await
        .problem(StatusCode::FORBIDDEN, "invalid or has expired");
    let bare = url.split('?').next().unwrap().to_owned();
    e.send(Method::GET, &bare, None, Body::empty())
        .await
        .problem(StatusCode::FORBIDDEN, "invalid or has expired");
    // Expired links are refused too (signature over an old expiry is wrong anyway).
    let expired = format!("{bare}?expires=1&signature=00");
    e.send(Method::GET, &expired, None, Body::empty())
        .await
        .problem(StatusCode::FORBIDDEN, "expired");

    // PLAN: markdown inline.
    let plan = upload(
        &e,
        &format!("/api/v1/agent/runs/{id}/artifacts?artifact_type=PLAN&title=Plan"),
        b"# Steps\n1. fix",
    )
    .await
    .expect(StatusCode::CREATED);
    let plan_uid = plan["data"]["artifact_uid"].as_str().unwrap();
    let got = e
        .get(&format!("/api/v1/agent/artifacts/{plan_uid}"))
        .await
        .expect(StatusCode::OK);
    assert_eq!(got["data"]["content"], "# Steps\n1. fix");
    assert_eq!(got["data"]["title"], "Plan");

    // Errors.
    upload(
        &e,
        &format!("/api/v1/agent/runs/{id}/artifacts?artifact_type=FILE"),
        b"x",
    )
    .await
    .problem(StatusCode::BAD_REQUEST, "filename");
    upload(
        &e,
        &format!("/api/v1/agent/runs/{id}/artifacts?artifact_type=PULL_REQUEST&filename=a"),
        b"x",
    )
    .await
    .problem(StatusCode::BAD_REQUEST, "report endpoint");
    upload(
        &e,
        &format!("/api/v1/agent/runs/{id}/artifacts?artifact_type=SCREENSHOT&filename=a.txt&mime_type=text/plain"),
        b"x",
    )
    .await
    .problem(StatusCode::BAD_REQUEST, "image");
    upload(&e, "/api/v1/agent/runs/nope/artifacts?filename=a", b"x")
        .await
        .problem(StatusCode::NOT_FOUND, "no run");
    e.get("/api/v1/agent/artifacts/nope")
        .await
        .problem(StatusCode::NOT_FOUND, "no artifact");
    let r = e
        .send(
            Method::GET,
            &format!("/api/v1/agent/artifacts/{uid}"),
            None,
            Body::empty(),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn handoff_attachments_come_from_the_latest_ended_execution() {
    let e = env().await;
    let run = e.run(json!({"prompt": "p"})).await;
    let id = run["run_id"].as_str().unwrap().to_owned();
    let uri = format!("/api/v1/agent/runs/{id}/handoff/attachments");
    assert_eq!(
        e.get(&uri).await.expect(StatusCode::OK),
        json!({"attachments": []})
    );
    upload(&e, &format!("{uri}?filename=snap.patch"), b"x")
        .await
        .problem(StatusCode::CONFLICT, "no execution");

    e.start(&id, "exec-1").await;
    upload(
        &e,
        &format!("{uri}?filename=snap.patch&mime_type=text/x-diff"),
        b"diff 1",
    )
    .await
    .expect(StatusCode::CREATED);
    // Still running: no ended execution yet.
    assert_eq!(
        e.get(&uri).await.expect(StatusCode::OK),
        json!({"attachments": []})
    );
    e.finish(&id).await;
    let list = e.get(&uri).await.expect(StatusCode::OK);
    let items = list["attachments"].as_array().unwrap();
    assert_eq!(items.len(), 1);
    assert_eq!(items[0]["filename"], "snap.patch");
    assert_eq!(items[0]["mime_type"], "text/x-diff");
    let url = local(items[0]["download_url"].as_str().unwrap());
    let got = e.send(Method::GET, &url, None, Body::empty()).await;
    assert_eq!(&got.body[..], b"diff 1");

    // A follow-up starts execution 2; while it waits and while it runs,
    // execution 1's files are served.
    e.post(
        &format!("/api/v1/agent/runs/{id}/followups"),
        json!({"message": "more"}),
    )
    .await
    .expect(StatusCode::OK);
    let list = e.get(&uri).await.expect(StatusCode::OK);
    assert_eq!(list["attachments"][0]["filename"], "snap.patch", "{list}");
    e.start(&id, "exec-2").await;
    upload(&e, &format!("{uri}?filename=snap2.patch"), b"diff 2")
        .await
        .expect(StatusCode::CREATED);
    let list = e.get(&uri).await.expect(StatusCode::OK);
    assert_eq!(list["attachments"][0]["filename"], "snap.patch");
    e.finish(&id).await;
    let list = e.get(&uri).await.expect(StatusCode::OK);
    assert_eq!(list["attachments"].as_array().unwrap().len(), 1);
    assert_eq!(list["attachments"][0]["filename"], "snap2.patch");
}

// ------------------------------------------------------------------------------------------------
// Follow-ups

#[tokio::test]
async fn followups_are_routed_by_the_run_state() {
    let e = env().await;
    let run = e.run(json!({"prompt": "fix the bug"})).await;
    let id = run["run_id"].as_str().unwrap().to_owned();
    let uri = format!("/api/v1/agent/runs/{id}/followups");

    let queued = e
        .post(&uri, json!({"message": "also add a test"}))
        .await
        .expect(StatusCode::OK);
    assert_eq!(queued["delivery"], "next_execution");
    assert_eq!(queued["state"], "QUEUED");

    e.start(&id, "exec-1").await;
    let running = e
        .post(
            &uri,
            json!({"message": "and update the docs", "mode": "plan"}),
        )
        .await
        .expect(StatusCode::OK);
    assert_eq!(running["delivery"], "next_execution");
    assert_eq!(running["state"], "INPROGRESS");

    let ended = e
        .post(&uri, json!({"message": "x"}))
        .await
        .expect(StatusCode::OK);
    assert_eq!(ended["state"], "INPROGRESS");

    e.finish(&id).await;
    let late = e
        .post(&uri, json!({"message": "one more thing"}))
        .await
        .expect(StatusCode::OK);
    assert_eq!(late["delivery"], "new_execution");
    assert_eq!(late["state"], "QUEUED");
    let r = e
        .get(&format!("/api/v1/agent/runs/{id}"))
        .await
        .expect(StatusCode::OK);
    assert_eq!(r["state"], "QUEUED");
    assert_eq!(
        r["prompt"], "fix the bug",
        "the run's own prompt is unchanged"
    );

    let list = e.get(&uri).await.expect(StatusCode::OK);
    let items = list["followups"].as_array().unwrap();
    assert_eq!(items.len(), 4);
    assert_eq!(items[1]["mode"], "plan");

    e.post(&uri, json!({"message": "  "}))
        .await
        .problem(StatusCode::BAD_REQUEST, "message");
    e.post(&uri, json!({"message": "m", "mode": "fast"}))
        .await
        .problem(StatusCode::BAD_REQUEST, "mode");
    e.post("/api/v1/agent/runs/nope/followups", json!({"message": "m"}))
        .await
        .problem(StatusCode::NOT_FOUND, "no run");
}

// ------------------------------------------------------------------------------------------------
// Redirects, skills, filters

#[tokio::test]
async fn redirects_need_no_key_and_map_sessions_and_conversations() {
    let e = env().await;
    let none = |uri: String| {
        let e = &e;
        async move {
            let r = e.send(Method::GET, &uri, None, Body::empty()).await;
            r.expect(StatusCode::OK)
        }
    };
    assert_eq!(
        none("/api/v1/agent/sessions/unknown/redirect".into()).await,
        json!({})
    );
    assert_eq!(
        none("/api/v1/agent/conversations/unknown/redirect".into()).await,
        json!({})
    );
    let run = e.run(json!({"prompt": "p"})).await;
    let id = run["run_id"].as_str().unwrap().to_owned();
    let conversation = run["conversation_id"].as_str().unwrap().to_owned();
    e.start(&id, "sess-1").await;
    assert_eq!(
        none(format!(
            "/api/v1/agent/conversations/{conversation}/redirect"
        ))
        .await,
        json!({"session_id": "sess-1"})
    );
    assert_eq!(
        none("/api/v1/agent/sessions/sess-1/redirect".into()).await,
        json!({}),
        "still live"
    );
    let live = e
        .get(&format!("/api/v1/agent/runs/{id}"))
        .await
        .expect(StatusCode::OK);
    assert_eq!(live["session_id"], "sess-1");
    e.finish(&id).await;
    assert_eq!(
        none("/api/v1/agent/sessions/sess-1/redirect".into()).await,
        json!({"conversation_id": conversation})
    );
    assert_eq!(
        none(format!(
            "/api/v1/agent/conversations/{conversation}/redirect"
        ))
        .await,
        json!({})
    );
    // A handoff run continues the conversation; the prompt may be omitted.
    let next = e.run(json!({"conversation_id": conversation})).await;
    assert_eq!(next["conversation_id"], conversation.as_str());
}

#[tokio::test]
async fn skills_are_listed_from_agents_schedules_and_runs() {
    let e = env().await;
    e.post(
        "/api/v1/agent/identities",
        json!({"name": "a", "skills": ["acme/web:skills/review/SKILL.md"]}),
    )
    .await
    .expect(StatusCode::OK);
    e.run(json!({"skill": "acme/api:skills/deploy/SKILL.md"}))
        .await;
    e.run(json!({"skill": "web:lint"})).await;
    let all = e.get("/api/v1/agent").await.expect(StatusCode::OK);
    let names: Vec<&str> = all["agents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["deploy", "review"]);
    let deploy = &all["agents"][0]["variants"][0];
    assert_eq!(
        deploy["source"],
        json!({"owner": "acme", "name": "api", "skill_path": "skills/deploy/SKILL.md"})
    );
    assert!(deploy["last_run_timestamp"].is_string());
    let with_bad = e
        .get("/api/v1/agent?include_malformed_skills=true&sort_by=last_run")
        .await
        .expect(StatusCode::OK);
    assert_eq!(with_bad["agents"].as_array().unwrap().len(), 3);
    let web = e
        .get("/api/v1/agent?repo=acme/web")
        .await
        .expect(StatusCode::OK);
    assert_eq!(web["agents"].as_array().unwrap().len(), 1);
    e.get("/api/v1/agent?sort_by=size")
        .await
        .problem(StatusCode::BAD_REQUEST, "sort_by");
}

#[tokio::test]
async fn run_filters_for_lineage_creator_and_location() {
    let e = env().await;
    let root = e
        .run(json!({"prompt": "root", "metadata": {"automation_id": "auto-1", "team": "x"}}))
        .await;
    let root_id = root["run_id"].as_str().unwrap().to_owned();
    let child = e
        .run(json!({"prompt": "child", "parent_run_id": root_id, "metadata": {"team": "y"}}))
        .await;
    assert_eq!(child["source"], "ORCHESTRATION");
    assert_eq!(child["parent_run_id"], root_id.as_str());
    // Inherited under the request's own keys.
    assert_eq!(child["metadata"]["automation_id"], "auto-1");
    assert_eq!(child["metadata"]["team"], "y");
    let child_id = child["run_id"].as_str().unwrap().to_owned();
    let grandchild = e
        .run(json!({"prompt": "grandchild", "parent_run_id": child_id}))
        .await;
    e.run(json!({"prompt": "unrelated"})).await;

    let ids = |v: Value| -> Vec<String> {
        v["runs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["run_id"].as_str().unwrap().to_owned())
            .collect()
    };
    let desc = ids(e
        .get(&format!(
            "/api/v1/agent/runs?ancestor_run_id={root_id}&sort_order=asc&sort_by=created_at"
        ))
        .await
        .expect(StatusCode::OK));
    assert_eq!(
        desc,
        [
            child_id.clone(),
            grandchild["run_id"].as_str().unwrap().to_owned()
        ]
    );
    e.get("/api/v1/agent/runs?ancestor_run_id=nope")
        .await
        .problem(StatusCode::BAD_REQUEST, "ancestor_run_id");
    let auto = ids(e
        .get("/api/v1/agent/runs?automation_id=auto-1")
        .await
        .expect(StatusCode::OK));
    assert_eq!(auto.len(), 3, "root, child, grandchild inherit it");
    let creator = root["creator"]["uid"].as_str().unwrap();
    let mine = ids(e
        .get(&format!("/api/v1/agent/runs?creator={creator}"))
        .await
        .expect(StatusCode::OK));
    assert_eq!(mine.len(), 4);
    assert!(
        ids(e
            .get("/api/v1/agent/runs?creator=someone-else")
            .await
            .expect(StatusCode::OK))
        .is_empty()
    );
    assert_eq!(
        ids(e
            .get("/api/v1/agent/runs?execution_location=REMOTE")
            .await
            .expect(StatusCode::OK))
        .len(),
        4
    );
    assert!(
        ids(e
            .get("/api/v1/agent/runs?execution_location=LOCAL")
            .await
            .expect(StatusCode::OK))
        .is_empty()
    );
    e.get("/api/v1/agent/runs?execution_location=MOON")
        .await
        .problem(StatusCode::BAD_REQUEST, "execution_location");
    e.get("/api/v1/agent/runs?artifact_type=VIDEO")
        .await
        .problem(StatusCode::BAD_REQUEST, "artifact_type");
    e.post(
        "/api/v1/agent/runs",
        json!({"prompt": "p", "parent_run_id": "nope"}),
    )
    .await
    .problem(StatusCode::BAD_REQUEST, "parent_run_id");
    e.post("/api/v1/agent/runs", json!({"prompt": "p", "team": false}))
        .await
        .problem(StatusCode::BAD_REQUEST, "team");
    e.post(
        "/api/v1/agent/runs",
        json!({"prompt": "p", "attachments": [{"data": "!!", "file_name": "a.png", "mime_type": "image/png"}]}),
    )
    .await
    .problem(StatusCode::BAD_REQUEST, "base64");
    e.post(
        "/api/v1/agent/runs",
        json!({"prompt": "p", "attachments": [{"data": "aGk=", "file_name": "a.pdf", "mime_type": "application/pdf"}]}),
    )
    .await
    .problem(StatusCode::BAD_REQUEST, "mime_type");
    // The alias path creates runs too.
    e.post("/api/v1/agent/run", json!({"prompt": "p"}))
        .await
        .expect(StatusCode::OK);
}

/// Harness types the official SDK does not know are kept apart, so strict
/// SDK clients can still read the run.
#[tokio::test]
async fn runner_only_harness_types_are_kept_under_runner_harness() {
    let e = env().await;
    let r = e
        .run(json!({"prompt": "echo hi", "config": {"harness": {"type": "command"}}}))
        .await;
    assert!(r["agent_config"].get("harness").is_none(), "{r}");
    assert_eq!(
        r["agent_config"]["runner_harness"],
        json!({"type": "command"})
    );
    let r = e
        .run(json!({"prompt": "p", "config": {"harness": {"type": "codex", "model_id": "m"}}}))
        .await;
    assert_eq!(r["agent_config"]["harness"]["type"], "codex");
    assert!(r["agent_config"].get("runner_harness").is_none());
    // The run's own runner-only harness wins over the agent's harness.
    let agent = e
        .post(
            "/api/v1/agent/identities",
            json!({"name": "a", "harness": {"type": "claude"}}),
        )
        .await
        .expect(StatusCode::OK);
    let r = e
        .run(json!({"prompt": "echo", "agent_identity_uid": agent["uid"],
            "config": {"harness": {"type": "command"}}}))
        .await;
    assert!(r["agent_config"].get("harness").is_none(), "{r}");
    assert_eq!(r["agent_config"]["runner_harness"]["type"], "command");
}

/// A run token reads its own run's artifacts, not its team's others.
#[tokio::test]
async fn a_run_token_reads_only_its_own_runs_artifacts() {
    let e = env().await;
    let mine = e.run(json!({"prompt": "a"})).await["run_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let theirs = e.run(json!({"prompt": "b"})).await["run_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let token = oz_server::auth::new_secret(oz_server::auth::RUN_TOKEN_PREFIX);
    let patch = RunPatch {
        token_hash: Some(Some(oz_server::auth::hash(&token))),
        ..Default::default()
    };
    e.store
        .transition(
            &mine,
            &[RunState::Queued],
            RunState::Pending,
            patch,
            &oz_server::now(),
        )
        .await
        .unwrap()
        .unwrap();
    let e = &e;
    let upload_as = |run: &str, key: &str| {
        let uri = format!("/api/v1/agent/runs/{run}/artifacts?filename=a.txt");
        let key = key.to_owned();
        async move {
            e.send(Method::POST, &uri, Some(&key), Body::from("x"))
                .await
        }
    };
    let own = upload_as(&mine, &token).await.expect(StatusCode::CREATED);
    let other = upload_as(&theirs, &e.key).await.expect(StatusCode::CREATED);
    let get = |uid: &Value| {
        let uri = format!(
            "/api/v1/agent/artifacts/{}",
            uid["data"]["artifact_uid"].as_str().unwrap()
        );
        let token = token.clone();
        async move { e.send(Method::GET, &uri, Some(&token), Body::empty()).await }
    };
    get(&own).await.expect(StatusCode::OK);
    get(&other)
        .await
        .problem(StatusCode::NOT_FOUND, "no artifact");
    // Nor may it upload to another run.
    upload_as(&theirs, &token)
        .await
        .problem(StatusCode::NOT_FOUND, "no run");
}

#[tokio::test]
async fn continuing_a_conversation_needs_one_of_the_teams() {
    let e = env().await;
    let first = e.run(json!({"prompt": "echo one"})).await;
    let conversation = first["conversation_id"].as_str().unwrap();
    // Without a prompt it does again what the conversation last did.
    let next = e.run(json!({"conversation_id": conversation})).await;
    assert_eq!(next["prompt"], "echo one");
    assert_eq!(next["conversation_id"], conversation);
    let with_prompt = e
        .run(json!({"conversation_id": conversation, "prompt": "echo two"}))
        .await;
    assert_eq!(with_prompt["prompt"], "echo two");
    e.post(
        "/api/v1/agent/runs",
        json!({"conversation_id": "made-up", "prompt": "p"}),
    )
    .await
    .problem(StatusCode::BAD_REQUEST, "conversation_id");
}

#[tokio::test]
async fn stored_configs_always_validate_in_strict_sdk_clients() {
    let e = env().await;
    // Foreign harness types in a schedule are stored as runner_harness.
    let s = e
        .schedule(
            json!({"name": "c", "cron_schedule": "0 9 * * *", "prompt": "echo",
            "agent_config": {"harness": {"type": "command"}}}),
        )
        .await;
    assert_eq!(
        s["agent_config"],
        json!({"runner_harness": {"type": "command"}})
    );
    // Wrong types are refused where they come in, with their path.
    e.post(
        "/api/v1/agent/runs",
        json!({"prompt": "p", "config": {"harness": "claude"}}),
    )
    .await
    .problem(StatusCode::BAD_REQUEST, "config.harness must be an object");
    e.post(
        "/api/v1/agent/schedules",
        json!({"name": "c", "cron_schedule": "0 9 * * *", "prompt": "p",
            "agent_config": {"idle_timeout_minutes": "ten"}}),
    )
    .await
    .problem(StatusCode::BAD_REQUEST, "agent_config.idle_timeout_minutes");
    e.post(
        "/api/v1/agent/identities",
        json!({"name": "x", "harness": {"type": 5}}),
    )
    .await
    .problem(StatusCode::BAD_REQUEST, "harness.type");
    e.post(
        "/api/v1/agent/identities",
        json!({"name": "x", "inference_providers": {"aws": {"region": 1}}}),
    )
    .await
    .problem(StatusCode::BAD_REQUEST, "region");
    e.post(
        "/api/v1/agent/environments",
        json!({"name": "x", "providers": {"aws": {}}}),
    )
    .await
    .problem(StatusCode::BAD_REQUEST, "role_arn");
    e.post(
        "/api/v1/agent/environments",
        json!({"name": "x", "providers": {"gcp": {"project_number": "1"}}}),
    )
    .await
    .problem(
        StatusCode::BAD_REQUEST,
        "workload_identity_federation_pool_id",
    );
}

#[tokio::test]
async fn names_and_types_that_cannot_be_served_are_refused_at_upload() {
    let e = env().await;
    let id = e.run(json!({"prompt": "p"})).await["run_id"]
        .as_str()
        .unwrap()
        .to_owned();
    for (query, words) in [
        ("filename=a%01b.txt", "control characters"),
        ("filename=a.txt&mime_type=text/pl%0Aain", "mime_type"),
        ("filename=a.txt&mime_type=plain", "mime_type"),
    ] {
        upload(
            &e,
            &format!("/api/v1/agent/runs/{id}/artifacts?{query}"),
            b"x",
        )
        .await
        .problem(StatusCode::BAD_REQUEST, words);
    }
    // Any other name is served, with an exact RFC 5987 filename*.
    let entry = upload(
        &e,
        &format!("/api/v1/agent/runs/{id}/artifacts?filename=r%C3%A9sum%C3%A9%20%22v2%22.txt"),
        b"ok",
    )
    .await
    .expect(StatusCode::CREATED);
    let uid = entry["data"]["artifact_uid"].as_str().unwrap();
    let got = e
        .get(&format!("/api/v1/agent/artifacts/{uid}"))
        .await
        .expect(StatusCode::OK);
    let r = e
        .send(
            Method::GET,
            &local(got["data"]["download_url"].as_str().unwrap()),
            None,
            Body::empty(),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let cd = r.headers[header::CONTENT_DISPOSITION].to_str().unwrap();
    assert!(
        cd.ends_with("filename*=UTF-8''r%C3%A9sum%C3%A9%20%22v2%22.txt"),
        "{cd}"
    );
}
