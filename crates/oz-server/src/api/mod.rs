//! The REST API under `/api/v1`: one module per resource.

pub mod artifacts;
pub mod config;
pub mod environments;
pub mod followups;
pub mod identities;
pub mod keys;
pub mod logs;
pub mod openapi;
pub mod redirects;
pub mod runs;
pub mod schedules;
pub mod skills;
pub mod workers;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{delete, get, post};

use crate::state::AppState;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/agent", get(skills::list))
        .route("/agent/run", post(runs::create))
        .route("/agent/runs", post(runs::create).get(runs::list))
        .route("/agent/runs/{run_id}", get(runs::get))
        .route("/agent/runs/{run_id}/cancel", post(runs::cancel))
        .route("/agent/runs/{run_id}/report", post(runs::report))
        .route(
            "/agent/runs/{run_id}/followups",
            post(followups::create).get(followups::list),
        )
        .route(
            "/agent/runs/{run_id}/artifacts",
            post(artifacts::upload).layer(DefaultBodyLimit::max(artifacts::MAX_UPLOAD_BYTES)),
        )
        .route(
            "/agent/runs/{run_id}/handoff/attachments",
            get(artifacts::list_handoff)
                .post(artifacts::upload_handoff)
                .layer(DefaultBodyLimit::max(artifacts::MAX_UPLOAD_BYTES)),
        )
        .route(
            "/agent/runs/{run_id}/handoff/attachments/{attachment_id}/download",
            get(artifacts::download_handoff),
        )
        .route("/agent/artifacts/{artifact_uid}", get(artifacts::get))
        .route(
            "/agent/artifacts/{artifact_uid}/download",
            get(artifacts::download),
        )
        .route(
            "/agent/environments",
            get(environments::list).post(environments::create),
        )
        .route(
            "/agent/environments/{uid}",
            get(environments::get).delete(environments::delete),
        )
        .route(
            "/agent/schedules",
            post(schedules::create).get(schedules::list),
        )
        .route(
            "/agent/schedules/{schedule_id}",
            get(schedules::get)
                .put(schedules::update)
                .delete(schedules::delete),
        )
        .route(
            "/agent/schedules/{schedule_id}/pause",
            post(schedules::pause),
        )
        .route(
            "/agent/schedules/{schedule_id}/resume",
            post(schedules::resume),
        )
        .route(
            "/agent/identities",
            post(identities::create).get(identities::list),
        )
        .route(
            "/agent/identities/{uid}",
            get(identities::get)
                .put(identities::update)
                .delete(identities::delete),
        )
        .route(
            "/agent/sessions/{session_uuid}/redirect",
            get(redirects::session),
        )
        .route(
            "/agent/conversations/{conversation_id}/redirect",
            get(redirects::conversation),
        )
        .route("/agent/runs/{run_id}/logs", get(logs::page))
        .route("/agent/runs/{run_id}/logs/stream", get(logs::stream))
        .route("/api-keys", post(keys::create).get(keys::list))
        .route("/api-keys/{key_id}", delete(keys::revoke))
        .route("/workers", get(workers::list))
        .route("/openapi.json", get(openapi::document))
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
