//! `GET /api/v1/openapi.json`: the OpenAPI document of the whole API.

use axum::http::header;
use axum::response::IntoResponse;

/// The document, kept as a JSON file beside the code so that reviewers can
/// read it and tests can check it against the router.
pub const DOCUMENT: &str = include_str!("../../openapi.json");

pub async fn document() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], DOCUMENT)
}
