//! Typed client of the Oz REST API (`/api/v1`).
//!
//! Errors are one clear sentence: the server's problem `detail` when it sent
//! one, else what failed and where.

use std::time::Duration;

use oz_protocol::api::{AgentRunResponse, RunItem, RunList};
use reqwest::StatusCode;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

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

    /// Ours: connected workers.
    pub async fn list_workers(&self) -> Result<Vec<Value>> {
        let v: Value = self.get("/workers").await?;
        Ok(v.get("workers")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default())
    }
}

fn api_error(status: StatusCode, body: &[u8]) -> ClientError {
    let detail = serde_json::from_slice::<Value>(body)
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
        });
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
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
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
    fn missing_key_is_a_clear_error() {
        let e = Client::new("http://h", "").unwrap_err();
        assert!(e.to_string().contains("WARP_API_KEY"));
    }
}
