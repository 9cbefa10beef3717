//! `GET /api/v1/workers` (ours): the connected workers.

use axum::Json;
use axum::extract::State;
use serde_json::{Value, json};

use crate::auth::Principal;
use crate::error::ApiResult;
use crate::state::AppState;

pub async fn list(State(state): State<AppState>, principal: Principal) -> ApiResult<Json<Value>> {
    let key = principal.require_team()?;
    Ok(Json(json!({ "workers": state.hub.workers(&key.team_id) })))
}
