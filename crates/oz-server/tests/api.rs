//! REST API tests on the router: requests go through `tower::ServiceExt::oneshot`
//! (no socket) to `oz_server::router` over a real SQLite store in a temp dir.
//! The worker WebSocket handshake, which needs a real connection upgrade, is
//! driven over an in-memory duplex stream instead of a TCP socket.

use std::collections::{BTreeSet, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::connect_info::MockConnectInfo;
use axum::http::{HeaderMap, Method, Request, StatusCode, header};
use chrono::{DateTime, FixedOffset, SecondsFormat, Utc};
use oz_store::{KeyKind, RunPatch, RunState, SqliteStore, Store};
use serde_json::{Value, json};
use tempfile::TempDir;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use oz_server::state::ServerSettings;

const DEFAULT_HOST: &str = "host-default";
const PROBLEM_TYPE_PREFIX: &str =
    "https://docs.warp.dev/reference/api-and-sdk/troubleshooting/errors/";

// ------------------------------------------------------------------------------------------------
// Harness

struct Env {
    dir: TempDir,
    store: Arc<SqliteStore>,
    app: Router,
    /// Secret of the admin key made at bootstrap.
    admin: String,
    team_id: String,
}

struct Resp {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Resp {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", self.text()))
    }

    fn content_type(&self) -> &str {
        self.headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    /// Assert the status, and return the JSON body.
    fn expect(&self, status: StatusCode) -> Value {
        assert_eq!(
            self.status,
            status,
            "unexpected status; body: {}",
            self.text()
        );
        self.json()
    }
}

fn settings(default_worker_host: Option<&str>) -> ServerSettings {
    ServerSettings {
        default_worker_host: default_worker_host.map(str::to_owned),
        ..Default::default()
    }
}

async fn env() -> Env {
    env_with(settings(Some(DEFAULT_HOST))).await
}

async fn env_with(settings: ServerSettings) -> Env {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = Arc::new(
        SqliteStore::open(&dir.path().join("oz.db"))
            .await
            .expect("open store"),
    );
    let (admin, key_file) = oz_server::keys::bootstrap(store.as_ref(), dir.path())
        .await
        .expect("bootstrap")
        .expect("a fresh store is bootstrapped");
    assert!(key_file.exists());
    let team_id = store
        .first_team()
        .await
        .unwrap()
        .expect("bootstrap made a team")
        .id;
    let dyn_store: Arc<dyn Store> = store.clone();
    let state = oz_server::state(dyn_store, settings, CancellationToken::new())
        .await
        .expect("state");
    Env {
        dir,
        store,
        app: oz_server::router(state),
        admin,
        team_id,
    }
}

impl Env {
    async fn send(&self, method: Method, uri: &str, key: Option<&str>, body: Option<&str>) -> Resp {
        let mut req = Request::builder().method(method).uri(uri);
        if let Some(k) = key {
            req = req.header(header::AUTHORIZATION, format!("Bearer {k}"));
        }
        let req = match body {
            Some(b) => req
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from(b.to_owned())),
            None => req.body(Body::empty()),
        }
        .expect("request");
        self.request(req).await
    }

    async fn request(&self, req: Request<Body>) -> Resp {
        let resp = self
            .app
            .clone()
            .oneshot(req)
            .await
            .expect("infallible router");
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = axum::body::to_bytes(resp.into_body(), usize::MAX)
            .await
            .expect("body");
        Resp {
            status,
            headers,
            body,
        }
    }

    async fn get(&self, uri: &str, key: &str) -> Resp {
        self.send(Method::GET, uri, Some(key), None).await
    }

    async fn post(&self, uri: &str, key: &str, body: &Value) -> Resp {
        self.send(Method::POST, uri, Some(key), Some(&body.to_string()))
            .await
    }

    /// POST with `Content-Type: application/json` and no body, as the SDK sends cancel.
    async fn post_empty(&self, uri: &str, key: &str) -> Resp {
        self.send(Method::POST, uri, Some(key), Some("")).await
    }

    async fn delete(&self, uri: &str, key: &str) -> Resp {
        self.send(Method::DELETE, uri, Some(key), Some("")).await
    }

    /// Create a run as the admin; returns its id.
    async fn create_run(&self, body: Value) -> String {
        self.create_run_as(&self.admin, body).await
    }

    async fn create_run_as(&self, key: &str, body: Value) -> String {
        let v = self
            .post("/api/v1/agent/runs", key, &body)
            .await
            .expect(StatusCode::OK);
        v["run_id"].as_str().expect("run_id").to_owned()
    }

    async fn run(&self, run_id: &str) -> Value {
        self.get(&format!("/api/v1/agent/runs/{run_id}"), &self.admin)
            .await
            .expect(StatusCode::OK)
    }

    async fn list(&self, query: &str) -> Value {
        self.list_as(&self.admin, query).await
    }

    async fn list_as(&self, key: &str, query: &str) -> Value {
        self.get(&format!("/api/v1/agent/runs?{query}"), key)
            .await
            .expect(StatusCode::OK)
    }

    async fn key(&self, kind: KeyKind) -> String {
        oz_server::keys::create_key(self.store.as_ref(), &self.team_id, "test key", kind)
            .await
            .expect("create key")
            .1
    }

    /// A second team and a team key for it.
    async fn other_team(&self) -> (String, String) {
        let id = uuid::Uuid::now_v7().to_string();
        self.store
            .create_team(&id, "other", &oz_server::now())
            .await
            .expect("team");
        let (_, secret) =
            oz_server::keys::create_key(self.store.as_ref(), &id, "other team key", KeyKind::Team)
                .await
                .expect("key");
        (id, secret)
    }

    async fn move_run(&self, run_id: &str, from: &[RunState], to: RunState, patch: RunPatch) {
        self.store
            .transition(run_id, from, to, patch, &oz_server::now())
            .await
            .expect("transition")
            .unwrap_or_else(|| panic!("run {run_id} was not in {from:?}"));
    }

    /// Simulate an assignment: QUEUED → PENDING with a fresh run token.
    async fn issue_token(&self, run_id: &str) -> String {
        let token = oz_server::auth::new_secret(oz_server::auth::RUN_TOKEN_PREFIX);
        let patch = RunPatch {
            token_hash: Some(Some(oz_server::auth::hash(&token))),
            ..Default::default()
        };
        self.move_run(run_id, &[RunState::Queued], RunState::Pending, patch)
            .await;
        token
    }

    /// A run moved to CLAIMED (through PENDING); returns its run token.
    async fn claimed_run(&self, body: Value) -> (String, String) {
        let id = self.create_run(body).await;
        let token = self.issue_token(&id).await;
        self.move_run(
            &id,
            &[RunState::Pending],
            RunState::Claimed,
            RunPatch::default(),
        )
        .await;
        (id, token)
    }

    /// End a run the way the hub does: terminal state, token cleared.
    async fn finish_run(&self, run_id: &str, to: RunState) {
        let now = oz_server::now();
        let patch = RunPatch {
            token_hash: Some(None),
            ended_at: Some(Some(now)),
            ..Default::default()
        };
        self.move_run(
            run_id,
            &[
                RunState::Queued,
                RunState::Pending,
                RunState::Claimed,
                RunState::Inprogress,
            ],
            to,
            patch,
        )
        .await;
    }
}

/// Check an RFC 7807 body with the fields the official API sends.
fn assert_problem(r: &Resp, status: StatusCode) -> Value {
    assert_eq!(r.status, status, "unexpected status; body: {}", r.text());
    assert_eq!(
        r.content_type(),
        "application/problem+json",
        "content type of {}",
        r.text()
    );
    let v = r.json();
    let kind = v["type"].as_str().expect("type");
    assert!(kind.starts_with(PROBLEM_TYPE_PREFIX), "type {kind}");
    assert!(
        kind.len() > PROBLEM_TYPE_PREFIX.len(),
        "type names an error code: {kind}"
    );
    assert!(!v["title"].as_str().expect("title").is_empty());
    assert_eq!(v["status"].as_u64(), Some(u64::from(status.as_u16())));
    assert!(!v["error"].as_str().expect("error").is_empty());
    assert!(!v["detail"].as_str().expect("detail").is_empty());
    v
}

/// A problem that also names the request path in `instance`.
fn assert_problem_at(r: &Resp, status: StatusCode, path: &str) -> Value {
    let v = assert_problem(r, status);
    assert_eq!(v["instance"].as_str(), Some(path), "instance of {v}");
    v
}

/// A problem with an `instance` (some path; see `problem_instance_is_the_full_request_path`).
fn assert_problem_with_instance(r: &Resp, status: StatusCode) -> Value {
    let v = assert_problem(r, status);
    let instance = v["instance"]
        .as_str()
        .unwrap_or_else(|| panic!("no instance in {v}"));
    assert!(instance.starts_with('/'), "instance of {v}");
    v
}

fn ids(list: &Value) -> Vec<String> {
    list["runs"]
        .as_array()
        .expect("runs array")
        .iter()
        .map(|r| r["run_id"].as_str().expect("run_id").to_owned())
        .collect()
}

fn id_set(list: &Value) -> BTreeSet<String> {
    ids(list).into_iter().collect()
}

fn set(items: &[&String]) -> BTreeSet<String> {
    items.iter().map(|s| (*s).clone()).collect()
}

fn run_body(prompt: &str) -> Value {
    json!({ "prompt": prompt })
}

/// RFC 3339 with a `+00:00` offset, as the Python SDK sends datetimes, percent-encoded.
fn query_ts(t: DateTime<Utc>) -> String {
    let s = t.to_rfc3339_opts(SecondsFormat::Micros, false);
    assert!(s.ends_with("+00:00"));
    s.replace('+', "%2B")
}

async fn tick() {
    tokio::time::sleep(Duration::from_millis(15)).await;
}

// ------------------------------------------------------------------------------------------------
// Authentication and authorisation

#[tokio::test]
async fn auth_no_header_is_401_problem() {
    let env = env().await;
    let r = env
        .send(Method::GET, "/api/v1/agent/runs", None, None)
        .await;
    assert_problem_with_instance(&r, StatusCode::UNAUTHORIZED);
    let r = env
        .send(
            Method::POST,
            "/api/v1/agent/runs",
            None,
            Some(r#"{"prompt":"x"}"#),
        )
        .await;
    assert_problem_with_instance(&r, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn auth_malformed_header_is_401_problem() {
    let env = env().await;
    let malformed = [
        format!("Basic {}", env.admin),
        "Bearer".to_owned(),
        "Bearer    ".to_owned(),
        format!("Bearer{}", env.admin),
        env.admin.clone(),
    ];
    for value in malformed {
        let req = Request::builder()
            .uri("/api/v1/agent/runs")
            .header(header::AUTHORIZATION, value.as_str())
            .body(Body::empty())
            .unwrap();
        let r = env.request(req).await;
        assert_problem_with_instance(&r, StatusCode::UNAUTHORIZED);
    }
}

#[tokio::test]
async fn auth_unknown_key_is_401_problem() {
    let env = env().await;
    for key in [
        oz_server::auth::new_secret(oz_server::auth::TEAM_KEY_PREFIX),
        oz_server::auth::new_secret(oz_server::auth::WORKER_KEY_PREFIX),
        oz_server::auth::new_secret(oz_server::auth::RUN_TOKEN_PREFIX),
        "nonsense".to_owned(),
    ] {
        let r = env.get("/api/v1/agent/runs", &key).await;
        let v = assert_problem_with_instance(&r, StatusCode::UNAUTHORIZED);
        assert!(
            v["type"]
                .as_str()
                .unwrap()
                .ends_with("authentication_required"),
            "{v}"
        );
    }
}

#[tokio::test]
async fn auth_revoked_key_is_401_problem() {
    let env = env().await;
    let (key, secret) = oz_server::keys::create_key(
        env.store.as_ref(),
        &env.team_id,
        "soon revoked",
        KeyKind::Team,
    )
    .await
    .unwrap();
    env.get("/api/v1/agent/runs", &secret)
        .await
        .expect(StatusCode::OK);
    assert!(
        env.store
            .revoke_api_key(&env.team_id, &key.id, &oz_server::now())
            .await
            .unwrap()
    );
    // Revoked behind the server's back (as `oz-server api-key revoke` or a
    // replica does): the key it saw a moment ago is honoured for at most
    // the cache's lifetime.
    tokio::time::sleep(oz_server::auth::KeyCache::TTL + Duration::from_millis(50)).await;
    let r = env.get("/api/v1/agent/runs", &secret).await;
    assert_problem_with_instance(&r, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn problem_instance_is_the_full_request_path() {
    let env = env().await;
    let r = env
        .send(Method::GET, "/api/v1/agent/runs", None, None)
        .await;
    assert_problem_at(&r, StatusCode::UNAUTHORIZED, "/api/v1/agent/runs");
    let r = env.get("/api/v1/agent/runs/abc", "ozk_unknown").await;
    assert_problem_at(&r, StatusCode::UNAUTHORIZED, "/api/v1/agent/runs/abc");
    let r = ws_oneshot(&env, ws_request("?worker_id=w1", None)).await;
    assert_problem_at(&r, StatusCode::UNAUTHORIZED, "/api/v1/selfhosted/worker/ws");
}

#[tokio::test]
async fn worker_key_is_forbidden_on_rest() {
    let env = env().await;
    let worker = env.key(KeyKind::Worker).await;
    let run_id = env.create_run(run_body("hello")).await;

    assert_problem(
        &env.get("/api/v1/agent/runs", &worker).await,
        StatusCode::FORBIDDEN,
    );
    assert_problem(
        &env.post("/api/v1/agent/runs", &worker, &run_body("x"))
            .await,
        StatusCode::FORBIDDEN,
    );
    assert_problem(
        &env.get(&format!("/api/v1/agent/runs/{run_id}"), &worker)
            .await,
        StatusCode::FORBIDDEN,
    );
    assert_problem(
        &env.post_empty(&format!("/api/v1/agent/runs/{run_id}/cancel"), &worker)
            .await,
        StatusCode::FORBIDDEN,
    );
    assert_problem(
        &env.post(
            &format!("/api/v1/agent/runs/{run_id}/report"),
            &worker,
            &json!({"status_message": "x"}),
        )
        .await,
        StatusCode::FORBIDDEN,
    );
    assert_problem(
        &env.get("/api/v1/workers", &worker).await,
        StatusCode::FORBIDDEN,
    );
    assert_problem(
        &env.get("/api/v1/api-keys", &worker).await,
        StatusCode::FORBIDDEN,
    );
    // Nothing changed.
    assert_eq!(env.run(&run_id).await["state"], "QUEUED");
}

#[tokio::test]
async fn only_admin_keys_manage_keys() {
    let env = env().await;
    let team = env.key(KeyKind::Team).await;
    // A team key uses the runs API …
    env.get("/api/v1/agent/runs", &team)
        .await
        .expect(StatusCode::OK);
    // … but cannot list, create or revoke keys.
    assert_problem(
        &env.get("/api/v1/api-keys", &team).await,
        StatusCode::FORBIDDEN,
    );
    assert_problem(
        &env.post(
            "/api/v1/api-keys",
            &team,
            &json!({"name": "sneaky", "kind": "admin"}),
        )
        .await,
        StatusCode::FORBIDDEN,
    );
    let listed = env
        .get("/api/v1/api-keys", &env.admin)
        .await
        .expect(StatusCode::OK);
    let some_id = listed["api_keys"][0]["id"].as_str().unwrap().to_owned();
    assert_problem(
        &env.delete(&format!("/api/v1/api-keys/{some_id}"), &team)
            .await,
        StatusCode::FORBIDDEN,
    );
    // The admin can.
    env.post("/api/v1/api-keys", &env.admin, &json!({"name": "ok"}))
        .await
        .expect(StatusCode::CREATED);
    let listed = env
        .get("/api/v1/api-keys", &env.admin)
        .await
        .expect(StatusCode::OK);
    assert_eq!(listed["api_keys"].as_array().unwrap().len(), 3, "{listed}");
}

#[tokio::test]
async fn run_token_reads_and_reports_its_own_run() {
    let env = env().await;
    let run_id = env.create_run(run_body("token run")).await;
    let token = env.issue_token(&run_id).await;

    let v = env
        .get(&format!("/api/v1/agent/runs/{run_id}"), &token)
        .await
        .expect(StatusCode::OK);
    assert_eq!(v["run_id"], run_id.as_str());
    assert_eq!(v["state"], "PENDING");

    let v = env
        .post(
            &format!("/api/v1/agent/runs/{run_id}/report"),
            &token,
            &json!({"status_message": "cloning the repo"}),
        )
        .await
        .expect(StatusCode::OK);
    assert_eq!(v["run_id"], run_id.as_str());
    assert_eq!(v["status_message"]["message"], "cloning the repo");
    assert_eq!(
        env.run(&run_id).await["status_message"]["message"],
        "cloning the repo"
    );
}

#[tokio::test]
async fn run_token_cannot_see_other_runs() {
    let env = env().await;
    let mine = env.create_run(run_body("mine")).await;
    let other = env.create_run(run_body("other")).await;
    let token = env.issue_token(&mine).await;

    let r = env
        .get(&format!("/api/v1/agent/runs/{other}"), &token)
        .await;
    assert_problem(&r, StatusCode::NOT_FOUND);
    let r = env
        .post(
            &format!("/api/v1/agent/runs/{other}/report"),
            &token,
            &json!({"status_message": "hijack"}),
        )
        .await;
    assert_problem(&r, StatusCode::NOT_FOUND);
    let item = env.run(&other).await;
    assert_ne!(item["status_message"]["message"], "hijack", "{item}");
}

#[tokio::test]
async fn run_token_cannot_list_create_or_cancel() {
    let env = env().await;
    let run_id = env.create_run(run_body("mine")).await;
    let token = env.issue_token(&run_id).await;

    assert_problem(
        &env.get("/api/v1/agent/runs", &token).await,
        StatusCode::FORBIDDEN,
    );
    assert_problem(
        &env.post("/api/v1/agent/runs", &token, &run_body("child"))
            .await,
        StatusCode::FORBIDDEN,
    );
    assert_problem(
        &env.post_empty(&format!("/api/v1/agent/runs/{run_id}/cancel"), &token)
            .await,
        StatusCode::FORBIDDEN,
    );
    assert_problem(
        &env.get("/api/v1/api-keys", &token).await,
        StatusCode::FORBIDDEN,
    );
    assert_problem(
        &env.get("/api/v1/workers", &token).await,
        StatusCode::FORBIDDEN,
    );
    assert_eq!(env.list("").await["runs"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn run_token_stops_working_when_the_run_ends() {
    let env = env().await;
    let run_id = env.create_run(run_body("short lived")).await;
    let token = env.issue_token(&run_id).await;
    let path = format!("/api/v1/agent/runs/{run_id}");
    env.get(&path, &token).await.expect(StatusCode::OK);

    env.finish_run(&run_id, RunState::Succeeded).await;
    assert_problem_with_instance(&env.get(&path, &token).await, StatusCode::UNAUTHORIZED);
    let report = format!("{path}/report");
    assert_problem_with_instance(
        &env.post(&report, &token, &json!({"status_message": "late"}))
            .await,
        StatusCode::UNAUTHORIZED,
    );
    assert_eq!(env.run(&run_id).await["state"], "SUCCEEDED");
}

#[tokio::test]
async fn run_token_of_an_ended_run_is_refused_even_if_the_hash_stays() {
    let env = env().await;
    let run_id = env.create_run(run_body("ended, hash kept")).await;
    let token = env.issue_token(&run_id).await;
    // End the run without clearing the hash: the state check alone must refuse it.
    env.move_run(
        &run_id,
        &[RunState::Pending],
        RunState::Failed,
        RunPatch::default(),
    )
    .await;
    let path = format!("/api/v1/agent/runs/{run_id}");
    assert_problem(&env.get(&path, &token).await, StatusCode::UNAUTHORIZED);
}

// ------------------------------------------------------------------------------------------------
// The worker WebSocket: refusals before the upgrade

fn peer() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 45678))
}

fn ws_request(query: &str, key: Option<&str>) -> Request<Body> {
    let mut req = Request::builder()
        .uri(format!("/api/v1/selfhosted/worker/ws{query}"))
        .header(header::CONNECTION, "upgrade")
        .header(header::UPGRADE, "websocket")
        .header(header::SEC_WEBSOCKET_VERSION, "13")
        .header(header::SEC_WEBSOCKET_KEY, "dGhlIHNhbXBsZSBub25jZQ==");
    if let Some(k) = key {
        req = req.header(header::AUTHORIZATION, format!("Bearer {k}"));
    }
    req.body(Body::empty()).unwrap()
}

async fn ws_oneshot(env: &Env, req: Request<Body>) -> Resp {
    let app = env.app.clone().layer(MockConnectInfo(peer()));
    let resp = app.oneshot(req).await.unwrap();
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

#[tokio::test]
async fn ws_without_a_key_is_401() {
    let env = env().await;
    let r = ws_oneshot(&env, ws_request("?worker_id=w1", None)).await;
    assert_problem_with_instance(&r, StatusCode::UNAUTHORIZED);
    let r = ws_oneshot(&env, ws_request("?worker_id=w1", Some("ozk_nope"))).await;
    assert_problem(&r, StatusCode::UNAUTHORIZED);
    // Over a real (in-memory) connection too.
    let connector = serve_in_memory(&env);
    let (status, body) = ws_refusal(ws_connect(&connector, "?worker_id=w1", None).await);
    assert_eq!(status, 401, "{body}");
}

#[tokio::test]
async fn ws_with_a_run_token_is_403() {
    let env = env().await;
    let run_id = env.create_run(run_body("x")).await;
    let token = env.issue_token(&run_id).await;
    // The refusal comes after the upgrade extractor, so a real upgrade is needed.
    let connector = serve_in_memory(&env);
    let (status, body) = ws_refusal(ws_connect(&connector, "?worker_id=w1", Some(&token)).await);
    assert_eq!(status, 403, "{body}");
    assert!(
        body["type"].as_str().unwrap().ends_with("not_authorized"),
        "{body}"
    );
}

/// An in-memory listener for `axum::serve`: each "connection" is one end of a
/// `tokio::io::duplex` pipe. A real HTTP server is needed for the upgrade
/// (the upgrade extractor wants hyper's upgrade handle), but not a socket.
struct MemListener(tokio::sync::mpsc::UnboundedReceiver<tokio::io::DuplexStream>);

impl axum::serve::Listener for MemListener {
    type Io = tokio::io::DuplexStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.0.recv().await {
            Some(io) => (io, peer()),
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        Ok(peer())
    }
}

type Connector = tokio::sync::mpsc::UnboundedSender<tokio::io::DuplexStream>;
type WsResult = Result<
    tokio_tungstenite::WebSocketStream<tokio::io::DuplexStream>,
    tokio_tungstenite::tungstenite::Error,
>;

fn serve_in_memory(env: &Env) -> Connector {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let app = env.app.clone().layer(MockConnectInfo(peer()));
    tokio::spawn(async move {
        let _ = axum::serve(MemListener(rx), app).await;
    });
    tx
}

async fn ws_connect(connector: &Connector, query: &str, key: Option<&str>) -> WsResult {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let (client, server) = tokio::io::duplex(1 << 16);
    connector.send(server).expect("server task alive");
    let mut req = format!("ws://oz.test/api/v1/selfhosted/worker/ws{query}")
        .into_client_request()
        .unwrap();
    if let Some(key) = key {
        req.headers_mut()
            .insert("authorization", format!("Bearer {key}").parse().unwrap());
    }
    tokio::time::timeout(
        Duration::from_secs(10),
        tokio_tungstenite::client_async(req, client),
    )
    .await
    .expect("handshake finished")
    .map(|(ws, _)| ws)
}

fn ws_refusal(result: WsResult) -> (u16, Value) {
    match result {
        Ok(_) => panic!("the handshake was accepted"),
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            let ct = resp
                .headers()
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_owned();
            assert_eq!(ct, "application/problem+json");
            let body = resp.body().clone().unwrap_or_default();
            (
                resp.status().as_u16(),
                serde_json::from_slice(&body).expect("problem JSON"),
            )
        }
        Err(e) => panic!("unexpected handshake error: {e}"),
    }
}

#[tokio::test]
async fn ws_without_worker_id_is_400() {
    let env = env().await;
    let worker = env.key(KeyKind::Worker).await;
    let connector = serve_in_memory(&env);
    for query in ["", "?worker_id=", "?worker_id=%20%20", "?other=1"] {
        let (status, body) = ws_refusal(ws_connect(&connector, query, Some(&worker)).await);
        assert_eq!(status, 400, "query {query:?}: {body}");
        assert_eq!(body["status"], 400);
        assert!(
            body["detail"].as_str().unwrap().contains("worker_id"),
            "{body}"
        );
    }
    // The same refusals over the in-memory server as over oneshot.
    let (status, _) = ws_refusal(ws_connect(&connector, "?worker_id=w1", Some("ozk_bad")).await);
    assert_eq!(status, 401);
}

async fn wait_for_workers(env: &Env, key: &str, n: usize) -> Value {
    for _ in 0..200 {
        let v = env.get("/api/v1/workers", key).await.expect(StatusCode::OK);
        if v["workers"].as_array().unwrap().len() == n {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("never saw {n} connected workers");
}

#[tokio::test]
async fn ws_worker_key_connects_and_is_listed() {
    let env = env().await;
    let worker = env.key(KeyKind::Worker).await;
    let connector = serve_in_memory(&env);
    let ws = ws_connect(&connector, "?worker_id=host-a", Some(&worker))
        .await
        .expect("handshake accepted");
    let v = wait_for_workers(&env, &env.admin, 1).await;
    assert_eq!(v["workers"][0]["worker_id"], "host-a");
    drop(ws);
    wait_for_workers(&env, &env.admin, 0).await;
}

#[tokio::test]
async fn workers_of_another_team_are_not_listed() {
    let env = env().await;
    let (_other_team, other_key) = env.other_team().await;
    let worker = env.key(KeyKind::Worker).await;
    let connector = serve_in_memory(&env);
    let _ws = ws_connect(&connector, "?worker_id=host-a", Some(&worker))
        .await
        .expect("handshake accepted");
    wait_for_workers(&env, &env.admin, 1).await;
    let v = env
        .get("/api/v1/workers", &other_key)
        .await
        .expect(StatusCode::OK);
    assert_eq!(v, json!({"workers": []}), "another team's worker leaked");
}

// ------------------------------------------------------------------------------------------------
// POST /agent/runs

#[tokio::test]
async fn create_run_returns_queued_run() {
    let env = env().await;
    let v = env
        .post(
            "/api/v1/agent/runs",
            &env.admin,
            &json!({"prompt": "fix the flaky test", "config": {"worker_host": "w1"}}),
        )
        .await
        .expect(StatusCode::OK);
    let run_id = v["run_id"].as_str().expect("run_id");
    assert!(!run_id.is_empty());
    assert_eq!(v["state"], "QUEUED");
    assert_eq!(v["task_id"], run_id);
    let item = env.run(run_id).await;
    assert_eq!(item["prompt"], "fix the flaky test");
    assert_eq!(item["agent_config"]["worker_host"], "w1");
    assert_eq!(item["source"], "API");
}

#[tokio::test]
async fn create_run_with_empty_json_body_is_400() {
    let env = env().await;
    let r = env
        .send(
            Method::POST,
            "/api/v1/agent/runs",
            Some(&env.admin),
            Some(""),
        )
        .await;
    let v = assert_problem(&r, StatusCode::BAD_REQUEST);
    assert!(v["detail"].as_str().unwrap().contains("prompt"), "{v}");
    // `{}` and a blank prompt are the same.
    for body in [
        json!({}),
        json!({"prompt": "   \n"}),
        json!({"prompt": null}),
    ] {
        let r = env.post("/api/v1/agent/runs", &env.admin, &body).await;
        let v = assert_problem(&r, StatusCode::BAD_REQUEST);
        assert!(v["detail"].as_str().unwrap().contains("prompt"), "{v}");
    }
    assert_eq!(env.list("").await["runs"], json!([]));
}

#[tokio::test]
async fn create_run_with_invalid_json_is_400() {
    let env = env().await;
    for body in [
        "{",
        "not json",
        r#"{"prompt": 5}"#,
        r#"{"metadata": {"k": 1}}"#,
        "null",
        "\"x\"",
        "[]",
    ] {
        let r = env
            .send(
                Method::POST,
                "/api/v1/agent/runs",
                Some(&env.admin),
                Some(body),
            )
            .await;
        assert_problem(&r, StatusCode::BAD_REQUEST);
    }
}

#[tokio::test]
async fn create_run_body_must_be_an_object() {
    let env = env().await;
    let r = env
        .send(
            Method::POST,
            "/api/v1/agent/runs",
            Some(&env.admin),
            Some(r#"["fix it", {"worker_host": "w1"}]"#),
        )
        .await;
    assert_problem(&r, StatusCode::BAD_REQUEST);
    assert_eq!(env.list("").await["runs"], json!([]));
}

#[tokio::test]
async fn create_run_with_only_a_skill() {
    let env = env().await;
    let skill = "acme/repo:.claude/skills/deploy/SKILL.md";
    let v = env
        .post("/api/v1/agent/runs", &env.admin, &json!({"skill": skill}))
        .await
        .expect(StatusCode::OK);
    let item = env.run(v["run_id"].as_str().unwrap()).await;
    assert_eq!(item["agent_config"]["skill_spec"], skill);
    assert_eq!(item["prompt"], "");
    assert!(!item["title"].as_str().unwrap().is_empty());

    // config.skill_spec and config.skills count as a skill too; `skill` wins.
    let id = env
        .create_run(json!({"config": {"skill_spec": "a/b:x"}}))
        .await;
    assert_eq!(env.run(&id).await["agent_config"]["skill_spec"], "a/b:x");
    let id = env
        .create_run(json!({"config": {"skills": ["c/d:y"]}}))
        .await;
    assert_eq!(env.run(&id).await["agent_config"]["skill_spec"], "c/d:y");
    let id = env
        .create_run(json!({"skill": "top/level:z", "config": {"skill_spec": "a/b:x"}}))
        .await;
    assert_eq!(
        env.run(&id).await["agent_config"]["skill_spec"],
        "top/level:z"
    );
}

#[tokio::test]
async fn create_run_without_any_worker_host_is_400() {
    let env = env_with(settings(None)).await;
    let r = env
        .post("/api/v1/agent/runs", &env.admin, &run_body("where do I go"))
        .await;
    let v = assert_problem(&r, StatusCode::BAD_REQUEST);
    assert!(
        v["detail"]
            .as_str()
            .unwrap()
            .contains("--default-worker-host"),
        "{v}"
    );
    // A blank worker_host is no worker host.
    let r = env
        .post(
            "/api/v1/agent/runs",
            &env.admin,
            &json!({"prompt": "x", "config": {"worker_host": "  "}}),
        )
        .await;
    assert_problem(&r, StatusCode::BAD_REQUEST);
    // Naming one works.
    env.create_run(json!({"prompt": "x", "config": {"worker_host": "w9"}}))
        .await;
}

#[tokio::test]
async fn default_worker_host_lands_in_agent_config() {
    let env = env().await;
    let id = env.create_run(run_body("use the default")).await;
    assert_eq!(
        env.run(&id).await["agent_config"]["worker_host"],
        DEFAULT_HOST
    );
    // An explicit one wins over the default.
    let id = env
        .create_run(json!({"prompt": "explicit", "config": {"worker_host": "mine"}}))
        .await;
    assert_eq!(env.run(&id).await["agent_config"]["worker_host"], "mine");
    let list = env.list(&format!("worker_host={DEFAULT_HOST}")).await;
    assert_eq!(ids(&list).len(), 1);
}

#[tokio::test]
async fn worker_host_warp_is_400() {
    let env = env().await;
    let r = env
        .post(
            "/api/v1/agent/runs",
            &env.admin,
            &json!({"prompt": "x", "config": {"worker_host": "warp"}}),
        )
        .await;
    let v = assert_problem(&r, StatusCode::BAD_REQUEST);
    assert!(v["detail"].as_str().unwrap().contains("warp"), "{v}");
}

#[tokio::test]
async fn config_must_be_an_object() {
    let env = env().await;
    for config in [json!("w1"), json!([1, 2]), json!(7), json!(true)] {
        let r = env
            .post(
                "/api/v1/agent/runs",
                &env.admin,
                &json!({"prompt": "x", "config": config}),
            )
            .await;
        assert_problem(&r, StatusCode::BAD_REQUEST);
    }
    // null is "no config".
    env.create_run(json!({"prompt": "x", "config": null})).await;
}

#[tokio::test]
async fn metadata_is_validated() {
    let env = env().await;
    let bad_key = json!({"prompt": "x", "metadata": {"bad key": "v"}});
    let empty_key = json!({"prompt": "x", "metadata": {"": "v"}});
    let long_key = json!({"prompt": "x", "metadata": {"k".repeat(65): "v"}});
    let many: serde_json::Map<String, Value> =
        (0..21).map(|i| (format!("k{i}"), json!("v"))).collect();
    let too_many = json!({"prompt": "x", "metadata": many});
    let long_value = json!({"prompt": "x", "metadata": {"k": "v".repeat(257)}});
    let nul_value = json!({"prompt": "x", "metadata": {"k": "a\u{0}b"}});
    // 129 two-byte characters: 258 bytes.
    let long_utf8 = json!({"prompt": "x", "metadata": {"k": "é".repeat(129)}});
    for body in [
        bad_key, empty_key, long_key, too_many, long_value, nul_value, long_utf8,
    ] {
        let r = env.post("/api/v1/agent/runs", &env.admin, &body).await;
        let v = assert_problem(&r, StatusCode::BAD_REQUEST);
        assert!(
            v["type"].as_str().unwrap().ends_with("invalid_request"),
            "{v}"
        );
    }
    assert_eq!(env.list("").await["runs"], json!([]));

    // The limits themselves are fine.
    let twenty: serde_json::Map<String, Value> =
        (0..20).map(|i| (format!("k.{i}_-X"), json!("v"))).collect();
    env.create_run(json!({"prompt": "x", "metadata": twenty}))
        .await;
    let id = env
        .create_run(
            json!({"prompt": "x", "metadata": {"k".repeat(64): "v".repeat(256), "empty": ""}}),
        )
        .await;
    assert_eq!(env.run(&id).await["metadata"]["empty"], "");
}

#[tokio::test]
async fn mode_is_validated() {
    let env = env().await;
    for mode in ["fast", "Plan", ""] {
        let r = env
            .post(
                "/api/v1/agent/runs",
                &env.admin,
                &json!({"prompt": "x", "mode": mode}),
            )
            .await;
        assert_problem(&r, StatusCode::BAD_REQUEST);
    }
    for mode in ["normal", "plan", "orchestrate"] {
        env.create_run(json!({"prompt": "x", "mode": mode})).await;
    }
    // A /plan prefix does not make a plan run, and is not an error.
    env.create_run(run_body("/plan do it")).await;
}

#[tokio::test]
async fn title_comes_from_the_first_prompt_line() {
    let env = env().await;
    let id = env
        .create_run(run_body("\n\n   Fix the login bug  \nDetails follow\nmore"))
        .await;
    let item = env.run(&id).await;
    assert_eq!(item["title"], "Fix the login bug");
    assert_eq!(
        item["prompt"],
        "\n\n   Fix the login bug  \nDetails follow\nmore"
    );
    // An explicit title wins.
    let id = env
        .create_run(json!({"prompt": "a\nb", "title": "My title"}))
        .await;
    assert_eq!(env.run(&id).await["title"], "My title");
    // A long first line is shortened.
    let id = env.create_run(run_body(&"y".repeat(300))).await;
    let title = env.run(&id).await["title"].as_str().unwrap().to_owned();
    assert!(
        title.chars().count() < 300 && title.starts_with("yyyy"),
        "{title}"
    );
}

#[tokio::test]
async fn unknown_fields_are_ignored() {
    let env = env().await;
    let body = json!({
        "prompt": "x",
        "future_field": {"nested": [1, 2, 3]},
        "interactive": false,
        "team": true,
        "attachments": [],
        "config": {"model_id": "m1", "something_new": 42},
    });
    let id = env.create_run(body).await;
    let item = env.run(&id).await;
    assert_eq!(item["state"], "QUEUED");
    assert_eq!(item["agent_config"]["model_id"], "m1");
}

// ------------------------------------------------------------------------------------------------
// GET /agent/runs/{id}

fn assert_run_item(item: &Value) {
    for field in [
        "run_id",
        "task_id",
        "state",
        "prompt",
        "title",
        "created_at",
        "updated_at",
    ] {
        let v = item
            .get(field)
            .unwrap_or_else(|| panic!("{field} missing from {item}"));
        assert!(v.is_string(), "{field} is {v} in {item}");
    }
    assert_eq!(item["task_id"], item["run_id"]);
    for field in ["created_at", "updated_at"] {
        let s = item[field].as_str().unwrap();
        DateTime::parse_from_rfc3339(s).unwrap_or_else(|e| panic!("{field} {s:?}: {e}"));
    }
    if let Some(s) = item.get("started_at").and_then(Value::as_str) {
        DateTime::parse_from_rfc3339(s).unwrap();
    }
    let states = [
        "QUEUED",
        "PENDING",
        "CLAIMED",
        "INPROGRESS",
        "SUCCEEDED",
        "FAILED",
        "BLOCKED",
        "ERROR",
        "CANCELLED",
    ];
    assert!(states.contains(&item["state"].as_str().unwrap()), "{item}");
}

#[tokio::test]
async fn get_run_has_every_required_field() {
    let env = env().await;
    let id = env
        .create_run(json!({"prompt": "do a thing", "metadata": {"ticket_id": "VIS-1"}, "config": {"name": "nightly"}}))
        .await;
    let item = env.run(&id).await;
    assert_run_item(&item);
    assert_eq!(item["run_id"], id.as_str());
    assert_eq!(item["state"], "QUEUED");
    assert_eq!(item["metadata"], json!({"ticket_id": "VIS-1"}));
    assert_eq!(item["agent_config"]["name"], "nightly");
    assert_eq!(item["scope"]["type"], "Team");
    // Every optional field present is non-null-or-a-known-type (strict SDK parsing).
    for (k, v) in item.as_object().unwrap() {
        assert!(!v.is_null(), "{k} is null");
    }
    // A skill-only run has an empty prompt, which is still a string.
    let id = env.create_run(json!({"skill": "o/r:s"})).await;
    assert_run_item(&env.run(&id).await);
}

#[tokio::test]
async fn get_unknown_run_is_404() {
    let env = env().await;
    let path = "/api/v1/agent/runs/00000000-0000-0000-0000-000000000000";
    let v = assert_problem(&env.get(path, &env.admin).await, StatusCode::NOT_FOUND);
    assert!(
        v["type"].as_str().unwrap().ends_with("resource_not_found"),
        "{v}"
    );
    // A percent-encoded odd id is just an unknown id.
    assert_problem(
        &env.get("/api/v1/agent/runs/a%2Fb", &env.admin).await,
        StatusCode::NOT_FOUND,
    );
}

#[tokio::test]
async fn get_run_of_another_team_is_404() {
    let env = env().await;
    let (_team, other_key) = env.other_team().await;
    let theirs = env
        .create_run_as(&other_key, run_body("their secret"))
        .await;
    let mine = env.create_run(run_body("mine")).await;
    assert_problem(
        &env.get(&format!("/api/v1/agent/runs/{theirs}"), &env.admin)
            .await,
        StatusCode::NOT_FOUND,
    );
    assert_problem(
        &env.get(&format!("/api/v1/agent/runs/{mine}"), &other_key)
            .await,
        StatusCode::NOT_FOUND,
    );
    // Nor can they cancel it.
    assert_problem(
        &env.post_empty(&format!("/api/v1/agent/runs/{theirs}/cancel"), &env.admin)
            .await,
        StatusCode::NOT_FOUND,
    );
    assert_problem(
        &env.post(
            &format!("/api/v1/agent/runs/{theirs}/report"),
            &env.admin,
            &json!({"status_message": "x"}),
        )
        .await,
        StatusCode::NOT_FOUND,
    );
    let item = env
        .get(&format!("/api/v1/agent/runs/{theirs}"), &other_key)
        .await
        .expect(StatusCode::OK);
    assert_eq!(item["state"], "QUEUED");
}

// ------------------------------------------------------------------------------------------------
// GET /agent/runs

#[tokio::test]
async fn list_defaults_to_20_and_always_has_page_info() {
    let env = env().await;
    let empty = env.list("").await;
    assert_eq!(empty["runs"], json!([]));
    assert_eq!(empty["page_info"]["has_next_page"], false);
    assert!(
        empty["page_info"]
            .get("next_cursor")
            .is_none_or(Value::is_null)
    );

    for i in 0..25 {
        env.create_run(run_body(&format!("run {i}"))).await;
    }
    let page = env.list("").await;
    assert_eq!(page["runs"].as_array().unwrap().len(), 20);
    assert_eq!(page["page_info"]["has_next_page"], true);
    assert!(
        !page["page_info"]["next_cursor"]
            .as_str()
            .unwrap()
            .is_empty()
    );
    for item in page["runs"].as_array().unwrap() {
        assert_run_item(item);
    }
    let all = env.list("limit=500").await;
    assert_eq!(all["runs"].as_array().unwrap().len(), 25);
    assert_eq!(all["page_info"]["has_next_page"], false);
}

#[tokio::test]
async fn list_rejects_bad_limits() {
    let env = env().await;
    for limit in ["0", "501", "x", "-1", "1.5", ""] {
        let r = env
            .get(&format!("/api/v1/agent/runs?limit={limit}"), &env.admin)
            .await;
        let v = assert_problem(&r, StatusCode::BAD_REQUEST);
        assert!(v["detail"].as_str().unwrap().contains("limit"), "{v}");
    }
    env.list("limit=1").await;
    env.list("limit=500").await;
}

/// Follow `next_cursor` until the end; returns the ids in page order and the page count.
async fn walk(env: &Env, query: &str, page_size: usize) -> (Vec<String>, usize) {
    let mut seen = Vec::new();
    let mut pages = 0;
    let mut cursor: Option<String> = None;
    loop {
        let q = match &cursor {
            Some(c) => format!("{query}&cursor={c}"),
            None => query.to_owned(),
        };
        let page = env.list(&q).await;
        pages += 1;
        assert!(pages < 100, "pagination does not end");
        let runs = ids(&page);
        let info = &page["page_info"];
        seen.extend(runs.iter().cloned());
        if info["has_next_page"] == true {
            assert_eq!(runs.len(), page_size, "a non-final page is full");
            cursor = Some(
                info["next_cursor"]
                    .as_str()
                    .expect("next_cursor on a non-final page")
                    .to_owned(),
            );
        } else {
            assert_eq!(info["has_next_page"], false, "{info}");
            assert!(
                info.get("next_cursor").is_none_or(Value::is_null),
                "final page has a cursor: {info}"
            );
            return (seen, pages);
        }
    }
}

fn assert_each_once(seen: &[String], created: &[String]) {
    let unique: HashSet<&String> = seen.iter().collect();
    assert_eq!(unique.len(), seen.len(), "a run was listed twice");
    let want: HashSet<&String> = created.iter().collect();
    assert_eq!(
        unique, want,
        "the pages do not cover every run exactly once"
    );
}

#[tokio::test]
async fn cursor_pagination_visits_each_run_once() {
    let env = env().await;
    let mut created = Vec::new();
    for i in 0..45 {
        created.push(env.create_run(run_body(&format!("paged run {i}"))).await);
    }
    let (seen, pages) = walk(&env, "limit=10", 10).await;
    assert_eq!(pages, 5);
    assert_each_once(&seen, &created);
    // Default order is updated_at desc: the newest first.
    let mut newest_first = created.clone();
    newest_first.reverse();
    assert_eq!(seen, newest_first);

    let (seen, pages) = walk(&env, "limit=10&sort_by=created_at&sort_order=asc", 10).await;
    assert_eq!(pages, 5);
    assert_eq!(seen, created);
}

#[tokio::test]
async fn cursor_pagination_with_duplicate_sort_values() {
    let env = env().await;
    let mut created = Vec::new();
    for i in 0..45 {
        created.push(
            env.create_run(json!({"prompt": "p", "title": format!("title {}", i % 4)}))
                .await,
        );
    }
    for order in ["asc", "desc"] {
        let (seen, pages) = walk(
            &env,
            &format!("limit=10&sort_by=title&sort_order={order}"),
            10,
        )
        .await;
        assert_eq!(pages, 5, "{order}");
        assert_each_once(&seen, &created);
    }
    // Pagination with a filter, repeated on every page.
    let (seen, _) = walk(&env, "limit=3&q=title%203", 3).await;
    let want: Vec<String> = created
        .iter()
        .enumerate()
        .filter(|(i, _)| i % 4 == 3)
        .map(|(_, id)| id.clone())
        .collect();
    assert_each_once(&seen, &want);
    // Pages of 15 over 45 runs: the third page is full and still the last.
    let (seen, pages) = walk(&env, "limit=15", 15).await;
    assert_eq!((seen.len(), pages), (45, 3));
}

#[tokio::test]
async fn list_filters_by_repeated_state() {
    let env = env().await;
    let queued = env.create_run(run_body("q")).await;
    let succeeded = env.create_run(run_body("s")).await;
    let cancelled = env.create_run(run_body("c")).await;
    let claimed = env.create_run(run_body("cl")).await;
    env.finish_run(&succeeded, RunState::Succeeded).await;
    env.finish_run(&cancelled, RunState::Cancelled).await;
    env.issue_token(&claimed).await;
    env.move_run(
        &claimed,
        &[RunState::Pending],
        RunState::Claimed,
        RunPatch::default(),
    )
    .await;

    assert_eq!(
        id_set(&env.list("state=SUCCEEDED").await),
        set(&[&succeeded])
    );
    assert_eq!(
        id_set(&env.list("state=SUCCEEDED&state=CANCELLED").await),
        set(&[&succeeded, &cancelled])
    );
    assert_eq!(
        id_set(&env.list("state=QUEUED&state=CLAIMED").await),
        set(&[&queued, &claimed])
    );
    assert_eq!(env.list("state=FAILED").await["runs"], json!([]));
    assert_eq!(id_set(&env.list("").await).len(), 4);
}

#[tokio::test]
async fn list_filters_by_name_q_and_model() {
    let env = env().await;
    let nightly = env
        .create_run(json!({"prompt": "Update the DEPENDENCIES", "config": {"name": "nightly", "model_id": "claude-x"}}))
        .await;
    let adhoc = env
        .create_run(json!({"prompt": "look at logs", "title": "Investigate crash", "config": {"name": "adhoc", "model_id": "gpt-y"}}))
        .await;
    let plain = env
        .create_run(run_body(
            "nothing special\nbut dependencies in a later line",
        ))
        .await;

    assert_eq!(id_set(&env.list("name=nightly").await), set(&[&nightly]));
    assert_eq!(env.list("name=night").await["runs"], json!([]));
    assert_eq!(id_set(&env.list("model_id=gpt-y").await), set(&[&adhoc]));
    // q: substring of the title …
    assert_eq!(id_set(&env.list("q=crash").await), set(&[&adhoc]));
    // … or of the prompt, case-insensitively.
    assert_eq!(
        id_set(&env.list("q=dependencies").await),
        set(&[&nightly, &plain])
    );
    assert_eq!(id_set(&env.list("q=LATER%20LINE").await), set(&[&plain]));
    // LIKE wildcards are literal.
    assert_eq!(env.list("q=%25").await["runs"], json!([]));
    assert_eq!(env.list("q=_").await["runs"], json!([]));
    // Filters combine.
    assert_eq!(
        id_set(&env.list("q=dependencies&name=nightly").await),
        set(&[&nightly])
    );
}

#[tokio::test]
async fn list_filters_by_time() {
    let env = env().await;
    let early = env.create_run(run_body("early")).await;
    tick().await;
    let pivot = Utc::now();
    tick().await;
    let late = env.create_run(run_body("late")).await;

    assert_eq!(
        id_set(
            &env.list(&format!("created_after={}", query_ts(pivot)))
                .await
        ),
        set(&[&late])
    );
    assert_eq!(
        id_set(
            &env.list(&format!("created_before={}", query_ts(pivot)))
                .await
        ),
        set(&[&early])
    );
    // A Z suffix and another offset mean the same instant.
    let z = pivot.to_rfc3339_opts(SecondsFormat::Millis, true);
    assert_eq!(
        id_set(&env.list(&format!("created_after={z}")).await),
        set(&[&late])
    );
    let plus2 = pivot
        .with_timezone(&FixedOffset::east_opt(2 * 3600).unwrap())
        .to_rfc3339_opts(SecondsFormat::Micros, false)
        .replace('+', "%2B");
    assert_eq!(
        id_set(&env.list(&format!("created_after={plus2}")).await),
        set(&[&late])
    );
    let minus5 = pivot
        .with_timezone(&FixedOffset::west_opt(5 * 3600).unwrap())
        .to_rfc3339_opts(SecondsFormat::Micros, false);
    assert_eq!(
        id_set(&env.list(&format!("created_before={minus5}")).await),
        set(&[&early])
    );

    // updated_after: touch the early run after a second pivot.
    tick().await;
    let pivot2 = Utc::now();
    tick().await;
    env.finish_run(&early, RunState::Cancelled).await;
    assert_eq!(
        id_set(
            &env.list(&format!("updated_after={}", query_ts(pivot2)))
                .await
        ),
        set(&[&early])
    );
    assert_eq!(
        id_set(
            &env.list(&format!("updated_after={}", query_ts(pivot)))
                .await
        ),
        set(&[&early, &late])
    );
    // A window.
    let window = format!(
        "created_after={}&created_before={}",
        query_ts(pivot),
        query_ts(Utc::now())
    );
    assert_eq!(id_set(&env.list(&window).await), set(&[&late]));
}

#[tokio::test]
async fn list_filters_by_metadata() {
    let env = env().await;
    let both = env
        .create_run(json!({"prompt": "1", "metadata": {"team": "core", "ticket_id": "VIS-238"}}))
        .await;
    let team_only = env
        .create_run(json!({"prompt": "2", "metadata": {"team": "core", "ticket_id": "VIS-1"}}))
        .await;
    let ticket_only = env
        .create_run(json!({"prompt": "3", "metadata": {"team": "web", "ticket_id": "VIS-238"}}))
        .await;
    env.create_run(run_body("4")).await;

    assert_eq!(
        id_set(&env.list("metadata%5Bteam%5D=core").await),
        set(&[&both, &team_only])
    );
    assert_eq!(
        id_set(
            &env.list("metadata%5Bteam%5D=core&metadata%5Bticket_id%5D=VIS-238")
                .await
        ),
        set(&[&both])
    );
    assert_eq!(
        id_set(&env.list("metadata%5Bticket_id%5D=VIS-238").await),
        set(&[&both, &ticket_only])
    );
    assert_eq!(
        env.list("metadata%5Bteam%5D=nobody").await["runs"],
        json!([])
    );
    assert_eq!(
        env.list("metadata%5Bmissing%5D=core").await["runs"],
        json!([])
    );
}

#[tokio::test]
async fn list_sorts_by_title() {
    let env = env().await;
    let banana = env
        .create_run(json!({"prompt": "p", "title": "banana"}))
        .await;
    let apple = env
        .create_run(json!({"prompt": "p", "title": "apple"}))
        .await;
    let cherry = env
        .create_run(json!({"prompt": "p", "title": "cherry"}))
        .await;
    assert_eq!(
        ids(&env.list("sort_by=title&sort_order=asc").await),
        vec![apple.clone(), banana.clone(), cherry.clone()]
    );
    assert_eq!(
        ids(&env.list("sort_by=title&sort_order=desc").await),
        vec![cherry, banana, apple]
    );
}

#[tokio::test]
async fn list_sorts_by_created_at_both_ways() {
    let env = env().await;
    let mut created = Vec::new();
    for i in 0..5 {
        created.push(env.create_run(run_body(&format!("r{i}"))).await);
        tick().await;
    }
    // Touch the oldest run so that updated_at order differs from created_at order.
    env.finish_run(&created[0], RunState::Cancelled).await;

    let asc = ids(&env.list("sort_by=created_at&sort_order=asc").await);
    let desc = ids(&env.list("sort_by=created_at&sort_order=desc").await);
    assert_eq!(asc, created);
    let mut reversed = asc.clone();
    reversed.reverse();
    assert_eq!(desc, reversed);
    // sort_order defaults to desc.
    assert_eq!(ids(&env.list("sort_by=created_at").await), desc);
    // The default sort is updated_at desc: the touched run comes first.
    assert_eq!(ids(&env.list("").await)[0], created[0]);
}

#[tokio::test]
async fn list_rejects_invalid_parameters() {
    let env = env().await;
    env.create_run(run_body("x")).await;
    for query in [
        "state=DONE",
        "state=QUEUED&state=nope",
        "sort_by=name",
        "sort_order=up",
        "created_after=yesterday",
        "created_before=2024-13-01T00:00:00Z",
        "updated_after=2024-01-01",
        // An unencoded `+` decodes to a space.
        "created_after=2024-01-02T03:04:05+00:00",
        "cursor=zzz",
        "cursor=7b7d",
        "cursor=",
    ] {
        let r = env
            .get(&format!("/api/v1/agent/runs?{query}"), &env.admin)
            .await;
        assert_problem(&r, StatusCode::BAD_REQUEST);
    }
}

#[tokio::test]
async fn cursor_of_another_sort_is_400() {
    let env = env().await;
    for i in 0..3 {
        env.create_run(run_body(&format!("r{i}"))).await;
    }
    let page = env.list("limit=1").await;
    let cursor = page["page_info"]["next_cursor"]
        .as_str()
        .unwrap()
        .to_owned();
    env.list(&format!("limit=1&cursor={cursor}")).await;
    for other in [
        "sort_by=title",
        "sort_order=asc",
        "sort_by=created_at",
        "sort_by=updated_at&sort_order=asc",
    ] {
        let r = env
            .get(
                &format!("/api/v1/agent/runs?limit=1&{other}&cursor={cursor}"),
                &env.admin,
            )
            .await;
        let v = assert_problem(&r, StatusCode::BAD_REQUEST);
        assert!(v["detail"].as_str().unwrap().contains("cursor"), "{v}");
    }
}

#[tokio::test]
async fn runs_of_another_team_never_appear() {
    let env = env().await;
    let (_team, other_key) = env.other_team().await;
    let mine = env
        .create_run(json!({"prompt": "shared words", "metadata": {"k": "v"}}))
        .await;
    let theirs = env
        .create_run_as(
            &other_key,
            json!({"prompt": "shared words", "metadata": {"k": "v"}}),
        )
        .await;

    for query in [
        "",
        "q=shared",
        "metadata%5Bk%5D=v",
        "state=QUEUED",
        "limit=500&sort_by=title",
    ] {
        assert_eq!(id_set(&env.list(query).await), set(&[&mine]), "{query}");
        assert_eq!(
            id_set(&env.list_as(&other_key, query).await),
            set(&[&theirs]),
            "{query}"
        );
    }
    // A cursor from one team's listing does not open the other's.
    env.create_run(run_body("second")).await;
    let page = env.list("limit=1").await;
    let cursor = page["page_info"]["next_cursor"]
        .as_str()
        .unwrap()
        .to_owned();
    let theirs_page = env
        .list_as(&other_key, &format!("limit=1&cursor={cursor}"))
        .await;
    assert!(!ids(&theirs_page).contains(&mine));
}

// ------------------------------------------------------------------------------------------------
// POST /agent/runs/{id}/cancel

#[tokio::test]
async fn cancel_a_queued_run() {
    let env = env().await;
    let id = env.create_run(run_body("cancel me")).await;
    let r = env
        .post_empty(&format!("/api/v1/agent/runs/{id}/cancel"), &env.admin)
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.json(), json!(id));
    let item = env.run(&id).await;
    assert_eq!(item["state"], "CANCELLED");
    assert_run_item(&item);
    let stored = env.store.get_run(&id).await.unwrap().unwrap();
    assert!(stored.ended_at.is_some());
    assert!(stored.token_hash.is_none());
}

#[tokio::test]
async fn cancel_a_terminal_run_is_400() {
    let env = env().await;
    let id = env.create_run(run_body("cancel me twice")).await;
    let path = format!("/api/v1/agent/runs/{id}/cancel");
    env.post_empty(&path, &env.admin)
        .await
        .expect(StatusCode::OK);
    assert_problem(
        &env.post_empty(&path, &env.admin).await,
        StatusCode::BAD_REQUEST,
    );

    for end in [
        RunState::Succeeded,
        RunState::Failed,
        RunState::Error,
        RunState::Blocked,
    ] {
        let id = env.create_run(run_body("ended")).await;
        env.finish_run(&id, end).await;
        let r = env
            .post_empty(&format!("/api/v1/agent/runs/{id}/cancel"), &env.admin)
            .await;
        assert_problem(&r, StatusCode::BAD_REQUEST);
        assert_eq!(env.run(&id).await["state"], json!(end));
    }
}

#[tokio::test]
async fn cancel_a_pending_run_is_409() {
    let env = env().await;
    let id = env.create_run(run_body("being assigned")).await;
    env.issue_token(&id).await;
    let r = env
        .post_empty(&format!("/api/v1/agent/runs/{id}/cancel"), &env.admin)
        .await;
    let v = assert_problem(&r, StatusCode::CONFLICT);
    assert!(v["type"].as_str().unwrap().ends_with("conflict"), "{v}");
    assert_eq!(env.run(&id).await["state"], "PENDING");
}

#[tokio::test]
async fn cancel_a_claimed_run_requests_cancellation() {
    let env = env().await;
    let (id, _token) = env.claimed_run(run_body("running")).await;
    let path = format!("/api/v1/agent/runs/{id}/cancel");
    let r = env.post_empty(&path, &env.admin).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.json(), json!(id));

    let item = env.run(&id).await;
    assert_eq!(item["state"], "CLAIMED", "the worker confirms the end");
    let msg = item["status_message"]["message"].as_str().unwrap();
    assert!(msg.contains("cancellation requested"), "{msg}");
    let stored = env.store.get_run(&id).await.unwrap().unwrap();
    let first_request = stored
        .cancel_requested_at
        .clone()
        .expect("cancel_requested_at");

    // Asking again is accepted and keeps the first request time.
    env.post_empty(&path, &env.admin)
        .await
        .expect(StatusCode::OK);
    let stored = env.store.get_run(&id).await.unwrap().unwrap();
    assert_eq!(stored.cancel_requested_at, Some(first_request));
    assert_eq!(stored.state, RunState::Claimed);
}

#[tokio::test]
async fn cancel_an_unknown_run_is_404() {
    let env = env().await;
    let r = env
        .post_empty("/api/v1/agent/runs/no-such-run/cancel", &env.admin)
        .await;
    assert_problem(&r, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn cancel_with_a_worker_key_is_403() {
    let env = env().await;
    let id = env.create_run(run_body("x")).await;
    let worker = env.key(KeyKind::Worker).await;
    let r = env
        .post_empty(&format!("/api/v1/agent/runs/{id}/cancel"), &worker)
        .await;
    assert_problem(&r, StatusCode::FORBIDDEN);
    assert_eq!(env.run(&id).await["state"], "QUEUED");
}

#[tokio::test]
async fn cancel_without_content_type_or_with_a_body() {
    let env = env().await;
    let a = env.create_run(run_body("a")).await;
    let r = env
        .send(
            Method::POST,
            &format!("/api/v1/agent/runs/{a}/cancel"),
            Some(&env.admin),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let b = env.create_run(run_body("b")).await;
    let r = env
        .post(
            &format!("/api/v1/agent/runs/{b}/cancel"),
            &env.admin,
            &json!({}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
}

// ------------------------------------------------------------------------------------------------
// POST /agent/runs/{id}/report

#[tokio::test]
async fn report_inprogress_from_claimed() {
    let env = env().await;
    let (id, token) = env.claimed_run(run_body("work")).await;
    let v = env
        .post(
            &format!("/api/v1/agent/runs/{id}/report"),
            &token,
            &json!({"state": "INPROGRESS"}),
        )
        .await
        .expect(StatusCode::OK);
    assert_eq!(v["state"], "INPROGRESS");
    let started = v["started_at"].as_str().expect("started_at");
    DateTime::parse_from_rfc3339(started).unwrap();
    let item = env.run(&id).await;
    assert_eq!(item["state"], "INPROGRESS");
    assert_eq!(item["started_at"], started);
    assert!(item["run_time"].as_str().unwrap().starts_with("PT"));

    // Repeating it is harmless and keeps the start time.
    let v = env
        .post(
            &format!("/api/v1/agent/runs/{id}/report"),
            &token,
            &json!({"state": "INPROGRESS"}),
        )
        .await
        .expect(StatusCode::OK);
    assert_eq!(v["started_at"], started);
}

#[tokio::test]
async fn report_cannot_set_a_final_state() {
    let env = env().await;
    let (id, token) = env.claimed_run(run_body("work")).await;
    for state in ["SUCCEEDED", "FAILED", "CANCELLED", "QUEUED", "inprogress"] {
        let r = env
            .post(
                &format!("/api/v1/agent/runs/{id}/report"),
                &token,
                &json!({"state": state}),
            )
            .await;
        assert_problem(&r, StatusCode::BAD_REQUEST);
    }
    assert_eq!(env.run(&id).await["state"], "CLAIMED");
}

#[tokio::test]
async fn report_appends_artifacts() {
    let env = env().await;
    let (id, token) = env.claimed_run(run_body("make a PR")).await;
    let path = format!("/api/v1/agent/runs/{id}/report");
    let pr = json!({
        "artifact_type": "PULL_REQUEST",
        "created_at": "2024-01-02T03:04:05Z",
        "data": {"url": "https://github.com/acme/repo/pull/1", "branch": "oz/fix"},
    });
    let v = env
        .post(&path, &token, &json!({"artifact": pr}))
        .await
        .expect(StatusCode::OK);
    assert_eq!(v["artifacts"].as_array().unwrap().len(), 1);
    let file = json!({
        "artifact_type": "FILE",
        "created_at": "2024-01-02T03:05:05Z",
        "data": {"artifact_uid": "a1", "filename": "out.txt", "filepath": "out/out.txt", "mime_type": "text/plain"},
    });
    env.post(&path, &token, &json!({"artifact": file}))
        .await
        .expect(StatusCode::OK);

    let item = env.run(&id).await;
    let artifacts = item["artifacts"].as_array().expect("artifacts");
    assert_eq!(artifacts.len(), 2);
    assert_eq!(artifacts[0]["artifact_type"], "PULL_REQUEST");
    assert_eq!(
        artifacts[0]["data"]["url"],
        "https://github.com/acme/repo/pull/1"
    );
    assert_eq!(artifacts[0]["data"]["branch"], "oz/fix");
    assert_eq!(artifacts[1]["artifact_type"], "FILE");

    // Not an object.
    assert_problem(
        &env.post(&path, &token, &json!({"artifact": "nope"})).await,
        StatusCode::BAD_REQUEST,
    );
    assert_eq!(env.run(&id).await["artifacts"].as_array().unwrap().len(), 2);
}

#[tokio::test]
async fn report_with_invalid_json_is_400() {
    let env = env().await;
    let (id, token) = env.claimed_run(run_body("x")).await;
    let r = env
        .send(
            Method::POST,
            &format!("/api/v1/agent/runs/{id}/report"),
            Some(&token),
            Some("{nope"),
        )
        .await;
    assert_problem(&r, StatusCode::BAD_REQUEST);
    // An empty body is an empty report.
    let r = env
        .post_empty(&format!("/api/v1/agent/runs/{id}/report"), &token)
        .await;
    assert_eq!(r.expect(StatusCode::OK)["state"], "CLAIMED");
}

// ------------------------------------------------------------------------------------------------
// /api/v1/api-keys

#[tokio::test]
async fn create_keys_of_each_kind() {
    let env = env().await;
    let mut secrets = Vec::new();
    for kind in ["team", "worker", "admin"] {
        let r = env
            .post(
                "/api/v1/api-keys",
                &env.admin,
                &json!({"name": format!("{kind} key"), "kind": kind}),
            )
            .await;
        let v = r.expect(StatusCode::CREATED);
        assert_eq!(v["kind"], kind);
        assert_eq!(v["name"], format!("{kind} key"));
        let secret = v["key"]
            .as_str()
            .expect("the secret is returned once")
            .to_owned();
        let prefix = if kind == "worker" { "wk-" } else { "ozk_" };
        assert!(secret.starts_with(prefix), "{secret}");
        assert!(secret.starts_with(v["prefix"].as_str().unwrap()));
        assert!(!v["id"].as_str().unwrap().is_empty());
        secrets.push((kind, secret));
    }
    // Default kind is team.
    let v = env
        .post("/api/v1/api-keys", &env.admin, &json!({"name": "default"}))
        .await
        .expect(StatusCode::CREATED);
    assert_eq!(v["kind"], "team");

    // Each works as its kind.
    for (kind, secret) in &secrets {
        let runs = env.get("/api/v1/agent/runs", secret).await.status;
        let keys = env.get("/api/v1/api-keys", secret).await.status;
        match *kind {
            "team" => assert_eq!((runs, keys), (StatusCode::OK, StatusCode::FORBIDDEN)),
            "worker" => assert_eq!((runs, keys), (StatusCode::FORBIDDEN, StatusCode::FORBIDDEN)),
            _ => assert_eq!((runs, keys), (StatusCode::OK, StatusCode::OK)),
        }
    }
}

#[tokio::test]
async fn create_key_validation() {
    let env = env().await;
    for body in [
        json!({"name": "x", "kind": "root"}),
        json!({"name": "x", "kind": "Team"}),
        json!({"kind": "team"}),
        json!({"name": "  ", "kind": "team"}),
        json!({}),
    ] {
        let r = env.post("/api/v1/api-keys", &env.admin, &body).await;
        assert_problem(&r, StatusCode::BAD_REQUEST);
    }
    let r = env
        .send(Method::POST, "/api/v1/api-keys", Some(&env.admin), Some(""))
        .await;
    assert_problem(&r, StatusCode::BAD_REQUEST);
    let r = env
        .send(
            Method::POST,
            "/api/v1/api-keys",
            Some(&env.admin),
            Some("{"),
        )
        .await;
    assert_problem(&r, StatusCode::BAD_REQUEST);
    let listed = env
        .get("/api/v1/api-keys", &env.admin)
        .await
        .expect(StatusCode::OK);
    assert_eq!(listed["api_keys"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn key_list_never_shows_secrets() {
    let env = env().await;
    let mut secrets = vec![env.admin.clone()];
    for kind in ["team", "worker"] {
        let v = env
            .post(
                "/api/v1/api-keys",
                &env.admin,
                &json!({"name": kind, "kind": kind}),
            )
            .await
            .expect(StatusCode::CREATED);
        secrets.push(v["key"].as_str().unwrap().to_owned());
    }
    let r = env.get("/api/v1/api-keys", &env.admin).await;
    let listed = r.expect(StatusCode::OK);
    let text = r.text();
    for s in &secrets {
        assert!(!text.contains(s.as_str()), "a secret is listed");
        assert!(
            !text.contains(&oz_server::auth::hash(s)),
            "a key hash is listed"
        );
    }
    let keys = listed["api_keys"].as_array().unwrap();
    assert_eq!(keys.len(), 3);
    for k in keys {
        assert!(
            k.get("key").is_none() && k.get("hash").is_none() && k.get("secret").is_none(),
            "{k}"
        );
        for field in ["id", "name", "kind", "prefix", "created_at"] {
            assert!(k[field].is_string(), "{field} in {k}");
        }
    }
    // The admin key was used, so its last use is recorded.
    let admin = keys.iter().find(|k| k["kind"] == "admin").unwrap();
    assert!(admin["last_used_at"].is_string(), "{admin}");
}

#[tokio::test]
async fn revoke_a_key() {
    let env = env().await;
    let v = env
        .post(
            "/api/v1/api-keys",
            &env.admin,
            &json!({"name": "temp", "kind": "team"}),
        )
        .await
        .expect(StatusCode::CREATED);
    let (id, secret) = (
        v["id"].as_str().unwrap().to_owned(),
        v["key"].as_str().unwrap().to_owned(),
    );
    env.get("/api/v1/agent/runs", &secret)
        .await
        .expect(StatusCode::OK);

    let r = env
        .delete(&format!("/api/v1/api-keys/{id}"), &env.admin)
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text());
    assert!(r.body.is_empty());
    assert_problem(
        &env.get("/api/v1/agent/runs", &secret).await,
        StatusCode::UNAUTHORIZED,
    );
    // The list shows it revoked; revoking again is 404.
    let listed = env
        .get("/api/v1/api-keys", &env.admin)
        .await
        .expect(StatusCode::OK);
    let k = listed["api_keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["id"] == id.as_str())
        .unwrap()
        .clone();
    assert!(k["revoked_at"].is_string(), "{k}");
    assert_problem(
        &env.delete(&format!("/api/v1/api-keys/{id}"), &env.admin)
            .await,
        StatusCode::NOT_FOUND,
    );
}

#[tokio::test]
async fn revoke_unknown_key_is_404() {
    let env = env().await;
    assert_problem(
        &env.delete("/api/v1/api-keys/no-such-key", &env.admin).await,
        StatusCode::NOT_FOUND,
    );
    // Another team's key is unknown here, and keeps working.
    let other_id = uuid::Uuid::now_v7().to_string();
    env.store
        .create_team(&other_id, "other", &oz_server::now())
        .await
        .unwrap();
    let (key, secret) =
        oz_server::keys::create_key(env.store.as_ref(), &other_id, "theirs", KeyKind::Admin)
            .await
            .unwrap();
    assert_problem(
        &env.delete(&format!("/api/v1/api-keys/{}", key.id), &env.admin)
            .await,
        StatusCode::NOT_FOUND,
    );
    env.get("/api/v1/agent/runs", &secret)
        .await
        .expect(StatusCode::OK);
    // And its list does not show ours.
    let theirs = env
        .get("/api/v1/api-keys", &secret)
        .await
        .expect(StatusCode::OK);
    assert_eq!(theirs["api_keys"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn admin_cannot_revoke_itself() {
    let env = env().await;
    let listed = env
        .get("/api/v1/api-keys", &env.admin)
        .await
        .expect(StatusCode::OK);
    let own_id = listed["api_keys"][0]["id"].as_str().unwrap().to_owned();
    let r = env
        .delete(&format!("/api/v1/api-keys/{own_id}"), &env.admin)
        .await;
    assert_problem(&r, StatusCode::BAD_REQUEST);
    env.get("/api/v1/api-keys", &env.admin)
        .await
        .expect(StatusCode::OK);

    // Another admin may revoke it.
    let second = env.key(KeyKind::Admin).await;
    let r = env
        .delete(&format!("/api/v1/api-keys/{own_id}"), &second)
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text());
    assert_problem(
        &env.get("/api/v1/api-keys", &env.admin).await,
        StatusCode::UNAUTHORIZED,
    );
}

// ------------------------------------------------------------------------------------------------
// Misc

#[tokio::test]
async fn workers_list_is_empty_without_workers() {
    let env = env().await;
    let v = env
        .get("/api/v1/workers", &env.admin)
        .await
        .expect(StatusCode::OK);
    assert_eq!(v, json!({"workers": []}));
    let team = env.key(KeyKind::Team).await;
    assert_eq!(
        env.get("/api/v1/workers", &team)
            .await
            .expect(StatusCode::OK),
        json!({"workers": []})
    );
}

#[tokio::test]
async fn health_and_readiness() {
    let env = env().await;
    let r = env.send(Method::GET, "/healthz", None, None).await;
    assert_eq!(r.status, StatusCode::OK);
    let r = env.send(Method::GET, "/readyz", None, None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert!(env.dir.path().join("oz.db").exists());
}

#[tokio::test]
async fn unknown_paths_are_404_problems() {
    let env = env().await;
    for path in [
        "/nope",
        "/api/v1/nope",
        "/api/v1/agent/runs/x/y/z",
        "/api/v2/agent/runs",
    ] {
        let r = env.get(path, &env.admin).await;
        assert_problem_at(&r, StatusCode::NOT_FOUND, path);
        // Also without a key: unknown stays unknown.
        let r = env.send(Method::GET, path, None, None).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{path}");
    }
}

#[tokio::test]
async fn wrong_method_is_a_problem() {
    let env = env().await;
    for (method, path) in [
        (Method::PUT, "/api/v1/agent/runs"),
        (Method::DELETE, "/api/v1/agent/runs/x"),
        (Method::GET, "/api/v1/agent/runs/x/cancel"),
    ] {
        let r = env.send(method, path, Some(&env.admin), None).await;
        assert_problem(&r, StatusCode::METHOD_NOT_ALLOWED);
    }
}

#[tokio::test]
async fn oversized_body_is_a_problem() {
    let env = env().await;
    let big = format!(r#"{{"prompt":"{}"}}"#, "x".repeat(3 << 20));
    let r = env
        .send(
            Method::POST,
            "/api/v1/agent/runs",
            Some(&env.admin),
            Some(&big),
        )
        .await;
    assert_problem(&r, StatusCode::PAYLOAD_TOO_LARGE);
}

#[tokio::test]
async fn report_fills_in_a_missing_artifact_created_at() {
    let env = env().await;
    let (id, token) = env.claimed_run(run_body("x")).await;
    let path = format!("/api/v1/agent/runs/{id}/report");
    let artifact = json!({"artifact_type": "PULL_REQUEST", "data": {"url": "https://example.com/pr/1", "branch": "fix"}});
    let r = env
        .post(&path, &token, &json!({"artifact": artifact}))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let run = env.run(&id).await;
    let stored = &run["artifacts"][0];
    assert!(
        stored["created_at"]
            .as_str()
            .and_then(oz_store::parse_ts)
            .is_some(),
        "{stored}"
    );
}

#[tokio::test]
async fn report_rejects_malformed_artifacts() {
    let env = env().await;
    let (id, token) = env.claimed_run(run_body("x")).await;
    let path = format!("/api/v1/agent/runs/{id}/report");
    for artifact in [
        json!({"a": 1}),
        json!({"artifact_type": "VIDEO", "created_at": "2024-01-02T03:04:05Z", "data": {}}),
        json!({"artifact_type": "PULL_REQUEST", "created_at": "yesterday", "data": {"url": "u", "branch": "b"}}),
        json!({"artifact_type": "PULL_REQUEST", "created_at": "2024-01-02T03:04:05Z"}),
        json!({"artifact_type": "PULL_REQUEST", "data": {"url": "u"}}),
    ] {
        let r = env
            .post(&path, &token, &json!({"artifact": artifact}))
            .await;
        assert_problem(&r, StatusCode::BAD_REQUEST);
    }
    assert!(
        env.run(&id)
            .await
            .get("artifacts")
            .is_none_or(|a| a.as_array().is_some_and(Vec::is_empty))
    );
}

// ------------------------------------------------------------------------------------------------
// Logs (extension `logs`): the paged endpoint on the router, the SSE endpoint on a real socket.

mod sse_support;

mod logs_api {
    use super::*;
    use oz_protocol::logs::{LogEnd, LogLines};
    use oz_server::state::AppState;
    use oz_store::{LogLine, LogPhase, LogRecord, LogStream};
    use sse_support::{SseClient, SseEvent};

    const SSE_WAIT: Duration = Duration::from_secs(10);

    fn line(seq: u64, phase: LogPhase, text: &str) -> LogLine {
        LogLine::new(
            seq,
            oz_server::now(),
            LogStream::Stdout,
            phase,
            text.as_bytes(),
            true,
        )
    }

    fn agent_lines(seqs: impl IntoIterator<Item = u64>) -> Vec<LogLine> {
        seqs.into_iter()
            .map(|s| line(s, LogPhase::Agent, &format!("line {s}")))
            .collect()
    }

    /// Store lines directly (as another process would), without telling anyone.
    async fn store_lines(env: &Env, run_id: &str, lines: &[LogLine]) {
        let records: Vec<LogRecord> = lines
            .iter()
            .map(|l| LogRecord::from_line(l).unwrap())
            .collect();
        env.store.append_logs(run_id, &records).await.unwrap();
    }

    /// Lines through the hub, as a worker's frame: stored and published.
    async fn hub_lines(live: &Live, run_id: &str, lines: Vec<LogLine>) -> Option<u64> {
        live.state
            .hub
            .store_log_lines(
                "no-connection",
                &live.env.team_id,
                &LogLines {
                    task_id: run_id.to_owned(),
                    execution_id: None,
                    lines,
                },
            )
            .await
            .unwrap()
    }

    async fn hub_log_end(live: &Live, run_id: &str, last_seq: u64) {
        assert!(
            live.state
                .hub
                .store_log_end(
                    "no-connection",
                    &live.env.team_id,
                    &LogEnd {
                        task_id: run_id.to_owned(),
                        execution_id: None,
                        last_seq,
                    },
                )
                .await
                .unwrap()
        );
    }

    /// A run held by a worker: CLAIMED, with an execution id and a live run token.
    async fn running_run(env: &Env) -> (String, String) {
        let id = env.create_run(run_body("logs")).await;
        let token = oz_server::auth::new_secret(oz_server::auth::RUN_TOKEN_PREFIX);
        let patch = RunPatch {
            token_hash: Some(Some(oz_server::auth::hash(&token))),
            execution_id: Some(Some(uuid::Uuid::new_v4().to_string())),
            ..Default::default()
        };
        env.move_run(&id, &[RunState::Queued], RunState::Pending, patch)
            .await;
        env.move_run(
            &id,
            &[RunState::Pending],
            RunState::Claimed,
            RunPatch::default(),
        )
        .await;
        (id, token)
    }

    /// End a run `ago` in the past.
    async fn end_run_at(env: &Env, run_id: &str, to: RunState, ago: chrono::Duration) {
        let patch = RunPatch {
            token_hash: Some(None),
            ended_at: Some(Some(oz_store::ts(Utc::now() - ago))),
            ..Default::default()
        };
        env.move_run(
            run_id,
            &[RunState::Claimed, RunState::Inprogress],
            to,
            patch,
        )
        .await;
    }

    fn seqs(page: &Value) -> Vec<u64> {
        page["lines"]
            .as_array()
            .expect("lines")
            .iter()
            .map(|l| l["seq"].as_u64().expect("seq"))
            .collect()
    }

    fn event_seqs(events: &[SseEvent]) -> Vec<u64> {
        events.iter().map(SseEvent::seq).collect()
    }

    async fn logs(env: &Env, run_id: &str, query: &str) -> Value {
        env.get(
            &format!("/api/v1/agent/runs/{run_id}/logs{query}"),
            &env.admin,
        )
        .await
        .expect(StatusCode::OK)
    }

    // ---- the paged endpoint ----------------------------------------------------------------------

    #[tokio::test]
    async fn page_through_a_log_with_since_seq_limit_and_phase() {
        let env = env().await;
        let (run_id, _) = running_run(&env).await;
        let empty = logs(&env, &run_id, "").await;
        assert_eq!(
            empty,
            json!({"lines": [], "next_seq": 0, "has_more": false, "complete": false, "state": "CLAIMED"})
        );

        let mut all = Vec::new();
        for seq in 1..=10u64 {
            let phase = match seq {
                1..=3 => LogPhase::Setup,
                4..=8 => LogPhase::Agent,
                _ => LogPhase::Teardown,
            };
            all.push(line(seq, phase, &format!("{phase:?} {seq}")));
        }
        store_lines(&env, &run_id, &all).await;

        let v = logs(&env, &run_id, "").await;
        assert_eq!(seqs(&v), (1..=10).collect::<Vec<_>>());
        assert_eq!(v["next_seq"], 10);
        assert_eq!(v["has_more"], false);
        assert_eq!(v["complete"], false, "the run is still running");
        assert_eq!(v["state"], "CLAIMED");
        // The lines are the wire lines, field for field.
        let first: LogLine = serde_json::from_value(v["lines"][0].clone()).unwrap();
        assert_eq!(first, all[0]);

        // Walk with a small limit: every line once, in order.
        let mut since = 0;
        let mut walked = Vec::new();
        let mut pages = 0;
        loop {
            let v = logs(&env, &run_id, &format!("?since_seq={since}&limit=3")).await;
            pages += 1;
            walked.extend(seqs(&v));
            since = v["next_seq"].as_u64().unwrap();
            if v["has_more"] == false {
                break;
            }
            assert_eq!(seqs(&v).len(), 3);
        }
        assert_eq!(walked, (1..=10).collect::<Vec<_>>());
        assert_eq!(pages, 4);
        assert_eq!(since, 10);

        // Phase filter, alone and with paging.
        let v = logs(&env, &run_id, "?phase=agent").await;
        assert_eq!(seqs(&v), vec![4, 5, 6, 7, 8]);
        let v = logs(&env, &run_id, "?phase=agent&since_seq=5&limit=2").await;
        assert_eq!(seqs(&v), vec![6, 7]);
        assert_eq!(v["next_seq"], 7);
        assert_eq!(v["has_more"], true);
        let v = logs(&env, &run_id, "?phase=setup&since_seq=3").await;
        assert_eq!(seqs(&v), Vec::<u64>::new());
        assert_eq!(v["next_seq"], 3, "without lines, next_seq stays");
        assert_eq!(v["has_more"], false);
        let v = logs(&env, &run_id, "?phase=teardown").await;
        assert_eq!(seqs(&v), vec![9, 10]);
        let v = logs(&env, &run_id, "?since_seq=99").await;
        assert_eq!((seqs(&v), v["next_seq"].clone()), (vec![], json!(99)));
        // Unknown parameters are ignored; the largest limit is accepted.
        let v = logs(&env, &run_id, "?limit=5000&foo=bar").await;
        assert_eq!(seqs(&v).len(), 10);
    }

    #[tokio::test]
    async fn bad_log_parameters_are_400_problems() {
        let env = env().await;
        let (run_id, _) = running_run(&env).await;
        for query in [
            "limit=0",
            "limit=5001",
            "limit=ten",
            "limit=-1",
            "since_seq=-1",
            "since_seq=x",
            "since_seq=",
            "phase=build",
            "phase=",
            "phase=AGENT",
        ] {
            let path = format!("/api/v1/agent/runs/{run_id}/logs?{query}");
            let r = env.get(&path, &env.admin).await;
            let v = assert_problem(&r, StatusCode::BAD_REQUEST);
            assert!(
                v["type"].as_str().unwrap().ends_with("invalid_request"),
                "{query}: {v}"
            );
            // The same checks on the stream endpoint (answered before streaming).
            let path = format!("/api/v1/agent/runs/{run_id}/logs/stream?{query}");
            if !query.starts_with("limit") {
                assert_problem(&env.get(&path, &env.admin).await, StatusCode::BAD_REQUEST);
            }
        }
        let mut req = Request::builder()
            .uri(format!("/api/v1/agent/runs/{run_id}/logs/stream"))
            .header(header::AUTHORIZATION, format!("Bearer {}", env.admin))
            .header("last-event-id", "seven");
        req = req.header(header::ACCEPT, "text/event-stream");
        let r = env.request(req.body(Body::empty()).unwrap()).await;
        assert_problem(&r, StatusCode::BAD_REQUEST);
    }

    #[tokio::test]
    async fn log_endpoints_check_who_asks() {
        let env = env().await;
        let (run_id, token) = running_run(&env).await;
        let (other_id, other_token) = running_run(&env).await;
        store_lines(&env, &run_id, &agent_lines(1..=2)).await;
        let page = format!("/api/v1/agent/runs/{run_id}/logs");
        let stream = format!("/api/v1/agent/runs/{run_id}/logs/stream");

        for path in [&page, &stream] {
            let r = env.send(Method::GET, path, None, None).await;
            assert_problem_at(&r, StatusCode::UNAUTHORIZED, path);
            let r = env.get(path, "ozk_not_a_key").await;
            assert_problem(&r, StatusCode::UNAUTHORIZED);
            let worker = env.key(KeyKind::Worker).await;
            assert_problem(&env.get(path, &worker).await, StatusCode::FORBIDDEN);
            let (_, other_team) = env.other_team().await;
            assert_problem(&env.get(path, &other_team).await, StatusCode::NOT_FOUND);
            // Another run's token sees nothing of this run.
            assert_problem(&env.get(path, &other_token).await, StatusCode::NOT_FOUND);
        }
        for path in [
            "/api/v1/agent/runs/no-such-run/logs",
            "/api/v1/agent/runs/no-such-run/logs/stream",
        ] {
            assert_problem(&env.get(path, &env.admin).await, StatusCode::NOT_FOUND);
        }

        // A team key and the run's own token read the log.
        let team = env.key(KeyKind::Team).await;
        let v = env.get(&page, &team).await.expect(StatusCode::OK);
        assert_eq!(seqs(&v), vec![1, 2]);
        let v = env.get(&page, &token).await.expect(StatusCode::OK);
        assert_eq!(seqs(&v), vec![1, 2]);
        let v = env
            .get(&format!("/api/v1/agent/runs/{other_id}/logs"), &other_token)
            .await
            .expect(StatusCode::OK);
        assert_eq!(seqs(&v), Vec::<u64>::new());

        // The token dies with the run; the team key still reads.
        env.finish_run(&run_id, RunState::Succeeded).await;
        assert_problem(&env.get(&page, &token).await, StatusCode::UNAUTHORIZED);
        let v = env.get(&page, &env.admin).await.expect(StatusCode::OK);
        assert_eq!(seqs(&v), vec![1, 2]);
    }

    #[tokio::test]
    async fn complete_means_ended_with_every_line_stored() {
        let env = env().await;

        // log_end names seq 3; the run ends with only 1 and 2 stored.
        let (run_id, _) = running_run(&env).await;
        store_lines(&env, &run_id, &agent_lines(1..=2)).await;
        env.store.set_log_end(&run_id, 3).await.unwrap();
        assert_eq!(logs(&env, &run_id, "").await["complete"], false);
        env.finish_run(&run_id, RunState::Succeeded).await;
        let v = logs(&env, &run_id, "").await;
        assert_eq!(
            (v["complete"].clone(), v["state"].clone()),
            (json!(false), json!("SUCCEEDED"))
        );
        store_lines(&env, &run_id, &agent_lines(3..=3)).await;
        let v = logs(&env, &run_id, "").await;
        assert_eq!(v["complete"], true, "{v}");
        assert_eq!(seqs(&v), vec![1, 2, 3]);
        // A page of a complete log still says whether more follows.
        let v = logs(&env, &run_id, "?limit=2").await;
        assert_eq!(
            (v["complete"].clone(), v["has_more"].clone()),
            (json!(true), json!(true))
        );

        // log_end with last_seq 0: nothing was written.
        let (silent, _) = running_run(&env).await;
        env.store.set_log_end(&silent, 0).await.unwrap();
        env.finish_run(&silent, RunState::Failed).await;
        assert_eq!(logs(&env, &silent, "").await["complete"], true);

        // Without log_end: complete 10 s after the run ended.
        let (no_end, _) = running_run(&env).await;
        store_lines(&env, &no_end, &agent_lines(1..=2)).await;
        end_run_at(&env, &no_end, RunState::Error, chrono::Duration::seconds(2)).await;
        assert_eq!(logs(&env, &no_end, "").await["complete"], false);
        let (old, _) = running_run(&env).await;
        end_run_at(&env, &old, RunState::Error, chrono::Duration::seconds(11)).await;
        assert_eq!(logs(&env, &old, "").await["complete"], true);

        // A run that never reached a worker is complete as soon as it ends.
        let queued = env.create_run(run_body("never ran")).await;
        assert_eq!(logs(&env, &queued, "").await["complete"], false);
        env.post_empty(&format!("/api/v1/agent/runs/{queued}/cancel"), &env.admin)
            .await
            .expect(StatusCode::OK);
        let v = logs(&env, &queued, "").await;
        assert_eq!(v["complete"], true, "{v}");
        assert_eq!(v["state"], "CANCELLED");
    }

    #[tokio::test]
    async fn binary_lines_come_back_byte_for_byte() {
        let env = env().await;
        let (run_id, _) = running_run(&env).await;
        let bytes = [b'x', 0xff, 0xfe, 0x00, 0xc3, 0x28];
        let lines = vec![
            LogLine::new(
                1,
                oz_server::now(),
                LogStream::Stderr,
                LogPhase::Agent,
                &bytes,
                false,
            ),
            LogLine::gap(2, oz_server::now(), LogStream::Stdout, LogPhase::Agent, 777),
            LogLine::new(
                3,
                oz_server::now(),
                LogStream::Stdout,
                LogPhase::Agent,
                "é\r".as_bytes(),
                true,
            ),
        ];
        store_lines(&env, &run_id, &lines).await;
        let v = logs(&env, &run_id, "").await;
        let back: Vec<LogLine> = serde_json::from_value(v["lines"].clone()).unwrap();
        assert_eq!(back, lines);
        assert_eq!(back[0].bytes(), bytes);
        assert!(v["lines"][0]["text"].is_null() && v["lines"][0]["data_b64"].is_string());
        assert_eq!(v["lines"][1]["gap_bytes"], 777);
        assert_eq!(v["lines"][2]["text"], "é\r");
    }

    // ---- the SSE endpoint on a real socket ------------------------------------------------------

    /// A server on 127.0.0.1:0 (in-process `oz_server::serve`) plus the same
    /// state's router for REST calls.
    struct Live {
        env: Env,
        state: AppState,
        addr: String,
        stop: CancellationToken,
        server: tokio::task::JoinHandle<anyhow::Result<()>>,
    }

    async fn live_with(settings: ServerSettings) -> Live {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = Arc::new(
            SqliteStore::open(&dir.path().join("oz.db"))
                .await
                .expect("open store"),
        );
        let (admin, _) = oz_server::keys::bootstrap(store.as_ref(), dir.path())
            .await
            .expect("bootstrap")
            .expect("fresh store");
        let team_id = store.first_team().await.unwrap().unwrap().id;
        let stop = CancellationToken::new();
        let dyn_store: Arc<dyn Store> = store.clone();
        let state = oz_server::state(dyn_store, settings, stop.clone())
            .await
            .expect("state");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let server = tokio::spawn(oz_server::serve(listener, state.clone()));
        Live {
            env: Env {
                dir,
                store,
                app: oz_server::router(state.clone()),
                admin,
                team_id,
            },
            state,
            addr,
            stop,
            server,
        }
    }

    async fn live() -> Live {
        live_with(settings(Some(DEFAULT_HOST))).await
    }

    impl Live {
        async fn sse(&self, run_id: &str, query: &str, headers: &[(&str, &str)]) -> SseClient {
            self.sse_as(&self.env.admin, run_id, query, headers).await
        }

        async fn sse_as(
            &self,
            key: &str,
            run_id: &str,
            query: &str,
            headers: &[(&str, &str)],
        ) -> SseClient {
            let c = SseClient::connect(
                &self.addr,
                &format!("/api/v1/agent/runs/{run_id}/logs/stream{query}"),
                Some(key),
                headers,
            )
            .await;
            assert_eq!(c.status, 200, "stream refused");
            assert_eq!(c.header("content-type"), Some("text/event-stream"));
            c
        }

        async fn wait_no_listeners(&self) {
            for _ in 0..500 {
                if self.state.hub.log_bus().listened_runs() == 0 {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            panic!(
                "{} log channel(s) left after every reader went away",
                self.state.hub.log_bus().listened_runs()
            );
        }
    }

    async fn next_seqs(c: &mut SseClient, n: usize) -> Vec<u64> {
        let mut out = Vec::new();
        while out.len() < n {
            let ev = c.next(SSE_WAIT).await.expect("stream still open");
            out.push(ev.seq());
        }
        out
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn stream_sends_backlog_then_live_lines_then_end_each_once() {
        let live = live().await;
        let env = &live.env;
        let (run_id, _) = running_run(env).await;
        store_lines(env, &run_id, &agent_lines(1..=3)).await;

        let mut c = live.sse(&run_id, "", &[]).await;
        assert_eq!(next_seqs(&mut c, 3).await, vec![1, 2, 3], "the backlog");

        // Live, through the hub.
        assert_eq!(hub_lines(&live, &run_id, agent_lines(4..=6)).await, Some(6));
        assert_eq!(next_seqs(&mut c, 3).await, vec![4, 5, 6]);
        // A repeated frame adds nothing.
        assert_eq!(hub_lines(&live, &run_id, agent_lines(2..=6)).await, Some(6));
        // Written to the store behind the hub's back: found by the poll.
        store_lines(env, &run_id, &agent_lines(7..=8)).await;
        assert_eq!(next_seqs(&mut c, 2).await, vec![7, 8]);
        // A hole in the live lines: 9 only in the store, 10-11 through the hub.
        store_lines(env, &run_id, &agent_lines(9..=9)).await;
        hub_lines(&live, &run_id, agent_lines(10..=11)).await;
        assert_eq!(next_seqs(&mut c, 3).await, vec![9, 10, 11]);

        // The end: log_end, then the run ends.
        hub_log_end(&live, &run_id, 11).await;
        env.finish_run(&run_id, RunState::Succeeded).await;
        live.state.hub.notify_log_readers(&run_id);
        let (more, end) = c.until_end(SSE_WAIT).await;
        assert_eq!(event_seqs(&more), Vec::<u64>::new(), "no line twice");
        let end = end.expect("an end event");
        assert_eq!(end.json()["state"], "SUCCEEDED");
        assert!(end.json().get("status_message").is_some(), "{end:?}");
        assert_eq!(end.id, None);
        assert!(
            c.next(SSE_WAIT).await.is_none(),
            "the stream closes after end"
        );
        live.wait_no_listeners().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn stream_resumes_after_last_event_id() {
        let live = live().await;
        let env = &live.env;
        let (run_id, _) = running_run(env).await;
        let mut lines = agent_lines(1..=5);
        lines[1].phase = LogPhase::Setup;
        store_lines(env, &run_id, &lines).await;
        env.store.set_log_end(&run_id, 5).await.unwrap();
        env.finish_run(&run_id, RunState::Failed).await;

        let mut c = live.sse(&run_id, "", &[("Last-Event-ID", "3")]).await;
        let (got, end) = c.until_end(SSE_WAIT).await;
        assert_eq!(event_seqs(&got), vec![4, 5]);
        assert_eq!(end.expect("end").json()["state"], "FAILED");

        let mut c = live.sse(&run_id, "?since_seq=1", &[]).await;
        let (got, end) = c.until_end(SSE_WAIT).await;
        assert_eq!(event_seqs(&got), vec![2, 3, 4, 5]);
        assert!(end.is_some());

        // The header wins over the query (a reconnecting EventSource keeps its URL).
        let mut c = live
            .sse(&run_id, "?since_seq=1", &[("Last-Event-ID", "4")])
            .await;
        let (got, _) = c.until_end(SSE_WAIT).await;
        assert_eq!(event_seqs(&got), vec![5]);

        // Phase filter; an empty Last-Event-ID means from the start.
        let mut c = live
            .sse(&run_id, "?phase=agent", &[("Last-Event-ID", "")])
            .await;
        let (got, end) = c.until_end(SSE_WAIT).await;
        assert_eq!(event_seqs(&got), vec![1, 3, 4, 5]);
        assert!(end.is_some());

        // Already at the end: just the end.
        let mut c = live.sse(&run_id, "", &[("Last-Event-ID", "5")]).await;
        let (got, end) = c.until_end(SSE_WAIT).await;
        assert!(got.is_empty() && end.is_some());
        live.wait_no_listeners().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn stream_loses_nothing_while_lines_arrive_during_the_connect() {
        let live = Arc::new(live().await);
        let (run_id, token) = running_run(&live.env).await;
        const TOTAL: u64 = 400;
        let writer = {
            let live = live.clone();
            let run_id = run_id.clone();
            tokio::spawn(async move {
                let mut seq = 1;
                while seq <= TOTAL {
                    let end = (seq + 6).min(TOTAL);
                    // Every third frame is stored behind the hub's back.
                    if seq % 3 == 0 {
                        store_lines(&live.env, &run_id, &agent_lines(seq..=end)).await;
                    } else {
                        hub_lines(&live, &run_id, agent_lines(seq..=end)).await;
                    }
                    seq = end + 1;
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                hub_log_end(&live, &run_id, TOTAL).await;
            })
        };
        // Readers join at different moments, one with the run token.
        let mut readers = Vec::new();
        for i in 0..4u64 {
            tokio::time::sleep(Duration::from_millis(15 * i)).await;
            let key = if i == 1 {
                token.clone()
            } else {
                live.env.admin.clone()
            };
            readers.push(live.sse_as(&key, &run_id, "", &[]).await);
        }
        writer.await.unwrap();
        live.env.finish_run(&run_id, RunState::Succeeded).await;
        for mut c in readers {
            let (got, end) = c.until_end(Duration::from_secs(30)).await;
            assert_eq!(
                event_seqs(&got),
                (1..=TOTAL).collect::<Vec<_>>(),
                "every line exactly once, in order"
            );
            assert_eq!(end.expect("end").json()["state"], "SUCCEEDED");
        }
        live.wait_no_listeners().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn stream_of_a_run_without_log_end_ends_after_the_grace() {
        let live = live().await;
        let env = &live.env;
        let (run_id, _) = running_run(env).await;
        store_lines(env, &run_id, &agent_lines(1..=2)).await;
        let mut c = live.sse(&run_id, "", &[]).await;
        assert_eq!(next_seqs(&mut c, 2).await, vec![1, 2]);
        // Ended 9 s ago without log_end: the end comes about a second later.
        end_run_at(env, &run_id, RunState::Error, chrono::Duration::seconds(9)).await;
        let (got, end) = c.until_end(Duration::from_secs(15)).await;
        assert!(got.is_empty());
        assert_eq!(end.expect("end").json()["state"], "ERROR");

        // A queued run cancelled before it reached a worker ends at once.
        let queued = env.create_run(run_body("never ran")).await;
        let mut c = live.sse(&queued, "", &[]).await;
        env.post_empty(&format!("/api/v1/agent/runs/{queued}/cancel"), &env.admin)
            .await
            .expect(StatusCode::OK);
        let (got, end) = c.until_end(SSE_WAIT).await;
        assert!(got.is_empty());
        let end = end.expect("end").json();
        assert_eq!(end["state"], "CANCELLED");
        assert_eq!(
            end["status_message"]["message"],
            "cancelled before a worker picked it up"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn streams_end_when_the_server_shuts_down() {
        let live = live().await;
        let (run_id, _) = running_run(&live.env).await;
        store_lines(&live.env, &run_id, &agent_lines(1..=1)).await;
        let mut a = live.sse(&run_id, "", &[]).await;
        let mut b = live.sse(&run_id, "?phase=setup", &[]).await;
        assert_eq!(next_seqs(&mut a, 1).await, vec![1]);
        live.stop.cancel();
        assert!(a.next(SSE_WAIT).await.is_none(), "stream a closed");
        assert!(b.next(SSE_WAIT).await.is_none(), "stream b closed");
        let Live { server, .. } = live;
        tokio::time::timeout(SSE_WAIT, server)
            .await
            .expect("serve returned despite open streams")
            .unwrap()
            .unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn stream_answers_with_sse_headers_and_keeps_channels_tidy() {
        let live = live().await;
        let (run_id, _) = running_run(&live.env).await;
        let c = live.sse(&run_id, "", &[]).await;
        assert_eq!(c.header("cache-control"), Some("no-cache"));
        assert_eq!(live.state.hub.log_bus().listened_runs(), 1);
        let c2 = live.sse(&run_id, "", &[]).await;
        assert_eq!(live.state.hub.log_bus().listened_runs(), 1);
        drop(c);
        drop(c2);
        // Nothing is published to the run any more: the channel goes with its readers.
        live.wait_no_listeners().await;
        // Publishing to a run nobody follows creates nothing.
        hub_lines(&live, &run_id, agent_lines(1..=1)).await;
        assert_eq!(live.state.hub.log_bus().listened_runs(), 0);
        // A refusal before the stream starts is a problem, not a stream.
        let c = SseClient::connect(
            &live.addr,
            &format!("/api/v1/agent/runs/{run_id}/logs/stream?phase=nope"),
            Some(&live.env.admin),
            &[],
        )
        .await;
        assert_eq!(c.status, 400);
        assert_eq!(c.header("content-type"), Some("application/problem+json"));
        let body: Value = serde_json::from_str(&c.body().await).unwrap();
        assert!(body["detail"].as_str().unwrap().contains("phase"), "{body}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn hub_drops_log_frames_of_unknown_and_foreign_runs() {
        let live = live().await;
        let (run_id, _) = running_run(&live.env).await;
        let (other_team, _) = live.env.other_team().await;
        let frame = |task_id: &str, lines| LogLines {
            task_id: task_id.to_owned(),
            execution_id: None,
            lines,
        };
        let hub = &live.state.hub;
        // Another team's connection cannot write into this run.
        assert_eq!(
            hub.store_log_lines(
                "no-connection",
                &other_team,
                &frame(&run_id, agent_lines(1..=2))
            )
            .await
            .unwrap(),
            None
        );
        assert_eq!(
            hub.store_log_lines(
                "no-connection",
                &live.env.team_id,
                &frame("nope", agent_lines(1..=2))
            )
            .await
            .unwrap(),
            None
        );
        let end = LogEnd {
            task_id: run_id.clone(),
            execution_id: None,
            last_seq: 2,
        };
        assert!(
            !hub.store_log_end("no-connection", &other_team, &end)
                .await
                .unwrap()
        );
        assert_eq!(live.env.store.max_log_seq(&run_id).await.unwrap(), None);
        assert_eq!(
            live.env
                .store
                .get_run(&run_id)
                .await
                .unwrap()
                .unwrap()
                .log_last_seq,
            None
        );
        // Invalid seqs are dropped, the rest stored; the ack covers what was stored.
        let mut lines = agent_lines([0, 1, 2]);
        lines.push(line(u64::MAX, LogPhase::Agent, "too far"));
        assert_eq!(
            hub.store_log_lines("no-connection", &live.env.team_id, &frame(&run_id, lines))
                .await
                .unwrap(),
            Some(2)
        );
        assert_eq!(
            hub.store_log_lines(
                "no-connection",
                &live.env.team_id,
                &frame(&run_id, agent_lines([0]))
            )
            .await
            .unwrap(),
            None
        );
        // An undecodable data_b64 is kept as a gap, so its seq is accounted for.
        let mut bad = line(3, LogPhase::Agent, "");
        bad.text = None;
        bad.data_b64 = Some("%%%%".into());
        assert_eq!(
            hub.store_log_lines(
                "no-connection",
                &live.env.team_id,
                &frame(&run_id, vec![bad])
            )
            .await
            .unwrap(),
            Some(3)
        );
        let v = logs(&live.env, &run_id, "").await;
        assert_eq!(seqs(&v), vec![1, 2, 3]);
        assert_eq!(v["lines"][2]["gap_bytes"], 3);
    }

    #[tokio::test]
    async fn retention_deletes_old_logs_at_start_and_keeps_recent_ones() {
        // Prepare a database with an old run, a recent one and a live one.
        let env = env().await;
        let (old, _) = running_run(&env).await;
        let (recent, _) = running_run(&env).await;
        let (running, _) = running_run(&env).await;
        for r in [&old, &recent, &running] {
            store_lines(&env, r, &agent_lines(1..=3)).await;
        }
        end_run_at(&env, &old, RunState::Succeeded, chrono::Duration::days(3)).await;
        end_run_at(
            &env,
            &recent,
            RunState::Succeeded,
            chrono::Duration::hours(1),
        )
        .await;

        // A retention longer than time goes deletes nothing.
        let store: Arc<dyn Store> = env.store.clone();
        assert_eq!(
            oz_server::logs::prune(store.as_ref(), Duration::MAX)
                .await
                .unwrap(),
            0
        );

        // A server with a 2-day retention prunes once at start.
        let stop = CancellationToken::new();
        let state = oz_server::state(
            store.clone(),
            ServerSettings {
                log_retention: Some(Duration::from_secs(2 * 24 * 3600)),
                ..settings(Some(DEFAULT_HOST))
            },
            stop.clone(),
        )
        .await
        .unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let server = tokio::spawn(oz_server::serve(listener, state));
        let mut gone = false;
        for _ in 0..500 {
            if env.store.max_log_seq(&old).await.unwrap().is_none() {
                gone = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(gone, "the old run's log was not deleted at start");
        assert_eq!(env.store.max_log_seq(&recent).await.unwrap(), Some(3));
        assert_eq!(env.store.max_log_seq(&running).await.unwrap(), Some(3));
        let v = logs(&env, &old, "").await;
        assert_eq!((seqs(&v), v["complete"].clone()), (vec![], json!(true)));
        stop.cancel();
        server.await.unwrap().unwrap();

        // A shorter retention takes the recent one too, never a live run's.
        assert_eq!(
            oz_server::logs::prune(store.as_ref(), Duration::from_secs(60))
                .await
                .unwrap(),
            3
        );
        assert_eq!(env.store.max_log_seq(&running).await.unwrap(), Some(3));
    }
}
