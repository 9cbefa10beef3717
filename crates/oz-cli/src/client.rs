//! Typed client of the Oz REST API (`/api/v1`).
//!
//! Errors are one clear sentence: the server's problem `detail` when it sent
//! one, else what failed and where.

use std::time::Duration;

use oz_protocol::api::{AgentRunResponse, RunItem, RunList};
use reqwest::StatusCode;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Environment variable of the API base URL (the official SDK's name).
pub const ENV_BASE_URL: &str = "OZ_API_BASE_URL";
/// Environment variable of the API key (the official SDK's name).
pub const ENV_API_KEY: &str = "WARP_API_KEY";

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{detail} (HTTP {status})")]
    Api { status: u16, detail: String },
    #[error("cannot reach the Oz API at {url}: {reason}")]
    Unreachable { url: String, reason: String },
    #[error("the Oz API at {url} sent an answer this client cannot read: {reason}")]
    Decode { url: String, reason: String },
    #[error("{0}")]
    Config(String),
}

impl ClientError {
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Api { status, .. } => Some(*status),
            _ => None,
        }
    }
}

pub type Result<T> = std::result::Result<T, ClientError>;

#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    /// Like `http` but without the overall timeout, for long-lived streams.
    stream_http: reqwest::Client,
    /// Base URL including `/api/v1`, without a trailing slash.
    base: String,
    key: String,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("base", &self.base)
            .field("key", &"<redacted>")
            .finish()
    }
}

/// Accept `http://host:port`, `http://host:port/` or `…/api/v1`.
pub fn normalise_base(url: &str) -> String {
    let trimmed = url.trim().trim_end_matches('/');
    if trimmed.ends_with("/api/v1") {
        trimmed.to_owned()
    } else {
        format!("{trimmed}/api/v1")
    }
}

impl Client {
    pub fn new(base_url: &str, api_key: &str) -> Result<Self> {
        if api_key.trim().is_empty() {
            return Err(ClientError::Config(format!(
                "no API key: pass --api-key or set {ENV_API_KEY}"
            )));
        }
        let base = normalise_base(base_url);
        url::Url::parse(&base).map_err(|e| {
            ClientError::Config(format!("the API URL {base_url:?} is not a URL: {e}"))
        })?;
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(60))
            .user_agent(concat!("oz-cli/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| ClientError::Config(format!("cannot set up the HTTP client: {e}")))?;
        let stream_http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .user_agent(concat!("oz-cli/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| ClientError::Config(format!("cannot set up the HTTP client: {e}")))?;
        Ok(Client {
            http,
            stream_http,
            base,
            key: api_key.to_owned(),
        })
    }

    /// From `--api-url`/`--api-key`, else `OZ_API_BASE_URL`/`WARP_API_KEY`.
    pub fn from_options(api_url: Option<&str>, api_key: Option<&str>) -> Result<Self> {
        let url = api_url
            .map(str::to_owned)
            .or_else(|| std::env::var(ENV_BASE_URL).ok())
            .filter(|u| !u.trim().is_empty())
            .ok_or_else(|| {
                ClientError::Config(format!(
                    "no API URL: pass --api-url or set {ENV_BASE_URL} (for example http://127.0.0.1:8080/api/v1)"
                ))
            })?;
        let key = api_key
            .map(str::to_owned)
            .or_else(|| std::env::var(ENV_API_KEY).ok())
            .unwrap_or_default();
        Client::new(&url, &key)
    }

    pub fn base_url(&self) -> &str {
        &self.base
    }

    /// The server root (the base URL without `/api/v1`).
    pub fn root_url(&self) -> &str {
        self.base.strip_suffix("/api/v1").unwrap_or(&self.base)
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn send<T: DeserializeOwned>(
        &self,
        req: reqwest::RequestBuilder,
        url: &str,
    ) -> Result<T> {
        let resp = req
            .bearer_auth(&self.key)
            .header("Accept", "application/json")
            .send()
            .await
            .map_err(|e| ClientError::Unreachable {
                url: url.to_owned(),
                reason: error_chain(&e),
            })?;
        let status = resp.status();
        let bytes = resp.bytes().await.map_err(|e| ClientError::Unreachable {
            url: url.to_owned(),
            reason: error_chain(&e),
        })?;
        if !status.is_success() {
            return Err(api_error(status, &bytes));
        }
        let body: &[u8] = if bytes.is_empty() { b"null" } else { &bytes };
        serde_json::from_slice(body).map_err(|e| ClientError::Decode {
            url: url.to_owned(),
            reason: e.to_string(),
        })
    }

    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        let url = self.url(path);
        self.send(self.http.get(&url), &url).await
    }

    pub async fn get_query<T: DeserializeOwned>(
        &self,
        path: &str,
        query: &[(String, String)],
    ) -> Result<T> {
        let url = self.url(path);
        self.send(self.http.get(&url).query(query), &url).await
    }

    pub async fn post<B: Serialize, T: DeserializeOwned>(&self, path: &str, body: &B) -> Result<T> {
        let url = self.url(path);
        self.send(self.http.post(&url).json(body), &url).await
    }

    pub async fn put<B: Serialize, T: DeserializeOwned>(&self, path: &str, body: &B) -> Result<T> {
        let url = self.url(path);
        self.send(self.http.put(&url).json(body), &url).await
    }

    pub async fn delete<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        let url = self.url(path);
        self.send(self.http.delete(&url), &url).await
    }

    pub async fn post_empty<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        let url = self.url(path);
        let req = self
            .http
            .post(&url)
            .header("Content-Type", "application/json");
        self.send(req, &url).await
    }

    /// A GET whose body is read as a stream (Server-Sent Events); no
    /// overall timeout. Non-2xx answers become errors as usual.
    pub async fn get_stream(
        &self,
        path: &str,
        query: &[(String, String)],
        last_event_id: Option<u64>,
    ) -> Result<reqwest::Response> {
        let url = self.url(path);
        let mut req = self
            .stream_http
            .get(&url)
            .query(query)
            .bearer_auth(&self.key)
            .header("Accept", "text/event-stream");
        if let Some(id) = last_event_id {
            req = req.header("Last-Event-ID", id.to_string());
        }
        let resp = req.send().await.map_err(|e| ClientError::Unreachable {
            url: url.clone(),
            reason: error_chain(&e),
        })?;
        let status = resp.status();
        if !status.is_success() {
            let bytes = resp.bytes().await.unwrap_or_default();
            return Err(api_error(status, &bytes));
        }
        Ok(resp)
    }

    // ---- typed calls --------------------------------------------------------

    pub async fn create_run(&self, params: &Value) -> Result<AgentRunResponse> {
        self.post("/agent/runs", params).await
    }

    pub async fn get_run(&self, run_id: &str) -> Result<RunItem> {
        self.get(&format!("/agent/runs/{}", encode_segment(run_id)))
            .await
    }

    pub async fn list_runs(&self, query: &[(String, String)]) -> Result<RunList> {
        self.get_query("/agent/runs", query).await
    }

    /// Returns the cancelled run's id.
    pub async fn cancel_run(&self, run_id: &str) -> Result<String> {
        let v: Value = self
            .post_empty(&format!("/agent/runs/{}/cancel", encode_segment(run_id)))
            .await?;
        Ok(v.as_str().unwrap_or(run_id).to_owned())
    }

    /// Ours: the agent runner reports progress, a message or an artifact.
    pub async fn report(&self, run_id: &str, body: &Value) -> Result<RunItem> {
        self.post(
            &format!("/agent/runs/{}/report", encode_segment(run_id)),
            body,
        )
        .await
    }

    pub async fn create_schedule(&self, params: &Value) -> Result<ScheduledAgentItem> {
        self.post("/agent/schedules", params).await
    }

    /// All schedules, sorted by name.
    pub async fn list_schedules(&self) -> Result<ScheduleList> {
        self.get("/agent/schedules").await
    }

    pub async fn get_schedule(&self, id: &str) -> Result<ScheduledAgentItem> {
        self.get(&schedule_path(id, "")).await
    }

    /// Full replace: `params` must hold name, cron_schedule and enabled.
    pub async fn update_schedule(&self, id: &str, params: &Value) -> Result<ScheduledAgentItem> {
        self.put(&schedule_path(id, ""), params).await
    }

    pub async fn delete_schedule(&self, id: &str) -> Result<ScheduleDeleteResponse> {
        self.delete(&schedule_path(id, "")).await
    }

    pub async fn pause_schedule(&self, id: &str) -> Result<ScheduledAgentItem> {
        self.post_empty(&schedule_path(id, "/pause")).await
    }

    pub async fn resume_schedule(&self, id: &str) -> Result<ScheduledAgentItem> {
        self.post_empty(&schedule_path(id, "/resume")).await
    }

    /// Ours: connected workers.
    pub async fn list_workers(&self) -> Result<Vec<Value>> {
        let v: Value = self.get("/workers").await?;
        Ok(v.get("workers")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default())
    }
}

fn schedule_path(id: &str, verb: &str) -> String {
    format!("/agent/schedules/{}{verb}", encode_segment(id))
}

// ---- schedule models (oz-api.md §5.5) ---------------------------------------
//
// Fields this client does not know are kept (`extra`) and `agent_config`
// stays a JSON map: `oz schedule update` sends the schedule back whole (PUT is
// a full replace), and `--output json` prints the API's answer.

/// `ScheduledAgentItem`: one schedule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScheduledAgentItem {
    pub id: String,
    pub name: String,
    /// Five-field cron, UTC.
    pub cron_schedule: String,
    /// false = paused.
    pub enabled: bool,
    #[serde(default)]
    pub prompt: String,
    pub created_at: String,
    pub updated_at: String,
    /// `AmbientAgentConfig`: model_id, environment_id, worker_host,
    /// skill_spec, mcp_servers, harness, …
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_config: Option<Map<String, Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_uid: Option<String>,
    /// The resolved `CloudEnvironmentConfig` (name, docker_image, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub environment: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub history: Option<ScheduleHistory>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_spawn_error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Map<String, Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<Scope>,
    /// created_by, updated_by and anything newer.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl ScheduledAgentItem {
    /// A string field of `agent_config` (`environment_id`, `worker_host`, …).
    pub fn config_str(&self, key: &str) -> Option<&str> {
        self.agent_config
            .as_ref()?
            .get(key)?
            .as_str()
            .filter(|s| !s.is_empty())
    }

    pub fn last_ran(&self) -> Option<&str> {
        self.history.as_ref()?.last_ran.as_deref()
    }

    pub fn next_run(&self) -> Option<&str> {
        self.history.as_ref()?.next_run.as_deref()
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ScheduleHistory {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_ran: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_run: Option<String>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// Who owns a schedule: `User` or `Team`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Scope {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// `ScheduleListResponse`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScheduleList {
    pub schedules: Vec<ScheduledAgentItem>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// `ScheduleDeleteResponse`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScheduleDeleteResponse {
    pub success: bool,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// What an error answer says: the problem's `detail` (or `error`), else
/// the start of the body, else the status reason.
pub(crate) fn problem_detail(status: StatusCode, body: &[u8]) -> String {
    serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| {
            v.get("detail")
                .or_else(|| v.get("error"))
                .and_then(Value::as_str)
                .map(str::to_owned)
        })
        .unwrap_or_else(|| {
            let text = String::from_utf8_lossy(body).trim().to_owned();
            if text.is_empty() {
                status
                    .canonical_reason()
                    .unwrap_or("request failed")
                    .to_owned()
            } else {
                text.chars().take(300).collect()
            }
        })
}

fn api_error(status: StatusCode, body: &[u8]) -> ClientError {
    let detail = problem_detail(status, body);
    let detail = match status.as_u16() {
        401 => format!("{detail}; check --api-key or {ENV_API_KEY}"),
        _ => detail,
    };
    ClientError::Api {
        status: status.as_u16(),
        detail,
    }
}

/// The innermost cause says the most ("connection refused").
pub(crate) fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut msg = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        msg = s.to_string();
        source = s.source();
    }
    msg
}

/// Percent-encode one path segment.
pub fn encode_segment(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes())
        .collect::<String>()
        .replace('+', "%20")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_urls_are_normalised() {
        assert_eq!(normalise_base("http://h:1"), "http://h:1/api/v1");
        assert_eq!(normalise_base("http://h:1/"), "http://h:1/api/v1");
        assert_eq!(normalise_base("http://h:1/api/v1/"), "http://h:1/api/v1");
    }

    #[test]
    fn problem_detail_becomes_the_message() {
        let e = api_error(StatusCode::BAD_REQUEST, br#"{"type":"x","title":"Bad Request","status":400,"error":"Bad Request: prompt is required","detail":"prompt is required"}"#);
        assert_eq!(e.to_string(), "prompt is required (HTTP 400)");
        let e = api_error(StatusCode::UNAUTHORIZED, b"");
        assert!(e.to_string().contains("--api-key"));
    }

    #[test]
    fn segments_are_encoded() {
        assert_eq!(encode_segment("a/b c"), "a%2Fb%20c");
    }

    #[test]
    fn schedules_keep_fields_this_client_does_not_know() {
        let raw = serde_json::json!({
            "id": "s1", "name": "nightly", "cron_schedule": "0 9 * * *", "enabled": true,
            "prompt": "p", "created_at": "t0", "updated_at": "t1",
            "agent_config": {"worker_host": "w1", "harness": {"type": "claude"}},
            "history": {"next_run": "t2", "streak": 3},
            "scope": {"type": "Team", "uid": "team1"},
            "created_by": {"uid": "u1"}
        });
        let item: ScheduledAgentItem = serde_json::from_value(raw.clone()).unwrap();
        assert_eq!(item.config_str("worker_host"), Some("w1"));
        assert_eq!(item.next_run(), Some("t2"));
        assert_eq!(item.last_ran(), None);
        assert_eq!(serde_json::to_value(&item).unwrap(), raw);
        let minimal: ScheduledAgentItem = serde_json::from_value(serde_json::json!({
            "id": "s1", "name": "n", "cron_schedule": "* * * * *", "enabled": false,
            "created_at": "t0", "updated_at": "t1", "history": null, "scope": null
        }))
        .unwrap();
        assert_eq!(minimal.prompt, "");
        assert_eq!(minimal.next_run(), None);
    }

    #[test]
    fn schedule_ids_are_one_path_segment() {
        assert_eq!(
            schedule_path("a/b", "/pause"),
            "/agent/schedules/a%2Fb/pause"
        );
    }

    #[test]
    fn missing_key_is_a_clear_error() {
        let e = Client::new("http://h", "").unwrap_err();
        assert!(e.to_string().contains("WARP_API_KEY"));
    }
}
