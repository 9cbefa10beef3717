//! The REST API under `/api/v1`: one module per resource.

pub mod keys;
pub mod logs;
pub mod runs;
pub mod workers;

use axum::Router;
use axum::routing::{delete, get, post};

use crate::state::AppState;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/agent/runs", post(runs::create).get(runs::list))
        .route("/agent/runs/{run_id}", get(runs::get))
        .route("/agent/runs/{run_id}/cancel", post(runs::cancel))
        .route("/agent/runs/{run_id}/report", post(runs::report))
        .route("/agent/runs/{run_id}/logs", get(logs::page))
        .route("/agent/runs/{run_id}/logs/stream", get(logs::stream))
        .route("/api-keys", post(keys::create).get(keys::list))
        .route("/api-keys/{key_id}", delete(keys::revoke))
        .route("/workers", get(workers::list))
}

/// Parse a JSON body that may be empty (the SDK sends
/// `Content-Type: application/json` with no body on some POSTs).
pub fn json_body<T: serde::de::DeserializeOwned + Default>(
    body: &[u8],
) -> Result<T, crate::error::ApiError> {
    use crate::error::ApiError;
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    // Parse to a value first: serde would read a struct from a JSON array
    // by position, and request bodies must be objects.
    let value: serde_json::Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))?;
    if !value.is_object() {
        return Err(ApiError::bad_request(
            "the request body must be a JSON object",
        ));
    }
    serde_json::from_value(value)
        .map_err(|e| ApiError::bad_request(format!("invalid request body: {e}")))
}
