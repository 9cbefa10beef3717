//! API errors as RFC 7807 `application/problem+json`, with the fields the
//! official API sends (`type`, `title`, `status`, `error`, `detail`,
//! `instance`, `retryable`).

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use oz_protocol::api::{PROBLEM_TYPE_BASE, Problem};

#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    /// One of the documented error codes (`invalid_request`, …).
    pub code: &'static str,
    pub detail: String,
    pub instance: Option<String>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, detail: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            detail: detail.into(),
            instance: None,
        }
    }

    pub fn bad_request(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request", detail)
    }

    pub fn unauthorized(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "authentication_required", detail)
    }

    pub fn forbidden(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "not_authorized", detail)
    }

    pub fn not_found(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "resource_not_found", detail)
    }

    pub fn conflict(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "conflict", detail)
    }

    pub fn internal(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal_error", detail)
    }

    pub fn at(mut self, path: &str) -> Self {
        self.instance = Some(path.to_owned());
        self
    }

    fn title(&self) -> &'static str {
        self.status.canonical_reason().unwrap_or("Error")
    }

    pub fn to_problem(&self) -> Problem {
        let title = self.title().to_owned();
        Problem {
            kind: format!("{PROBLEM_TYPE_BASE}{}", self.code),
            error: format!("{title}: {}", self.detail),
            title,
            status: self.status.as_u16(),
            detail: Some(self.detail.clone()),
            instance: self.instance.clone(),
            retryable: Some(matches!(
                self.code,
                "internal_error" | "resource_unavailable"
            )),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::to_vec(&self.to_problem()).unwrap_or_default();
        let mut resp = (self.status, body).into_response();
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        resp
    }
}

impl From<oz_store::StoreError> for ApiError {
    fn from(e: oz_store::StoreError) -> Self {
        tracing::error!(error = %e, "storage error");
        ApiError::internal("the server could not access its database; try again")
    }
}

pub type ApiResult<T> = Result<T, ApiError>;
