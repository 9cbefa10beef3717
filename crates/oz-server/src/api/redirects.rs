//! The two public redirect endpoints (no key, as in the official API).
//!
//! Here a "session" is an execution of a run (`RunItem.session_id` is the
//! execution id while a worker holds the run) and every run belongs to a
//! conversation (`RunItem.conversation_id`).
//! - session → conversation once that execution is over;
//! - conversation → session while its newest run is being executed;
//! - otherwise `{}`.

use axum::Json;
use axum::extract::{Path, State};
use serde_json::{Value, json};

use crate::error::ApiResult;
use crate::state::AppState;

pub async fn session(
    State(state): State<AppState>,
    Path(session_uuid): Path<String>,
) -> ApiResult<Json<Value>> {
    let run = state.store.run_by_execution(&session_uuid).await?;
    Ok(Json(match run {
        Some(run) if !run.state.is_active() => match run.conversation_id {
            Some(c) => json!({ "conversation_id": c }),
            None => json!({}),
        },
        _ => json!({}),
    }))
}

pub async fn conversation(
    State(state): State<AppState>,
    Path(conversation_id): Path<String>,
) -> ApiResult<Json<Value>> {
    let run = state.store.run_by_conversation(&conversation_id).await?;
    Ok(Json(match run {
        Some(run) if run.state.is_active() => match run.execution_id {
            Some(s) => json!({ "session_id": s }),
            None => json!({}),
        },
        _ => json!({}),
    }))
}
