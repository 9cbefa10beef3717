//! Follow-ups: `POST /agent/runs/{id}/followups` and (ours) the list.
//!
//! A Direct worker runs the agent as a plain process with no channel to
//! steer it while it works, so a follow-up is never injected into a running
//! agent. It is routed by the run's state, in one transaction:
//! - QUEUED: the execution about to start gets it with its prompt;
//! - held by a worker: it waits, and when that execution ends the run is
//!   queued again for a new execution that carries it;
//! - ended: the run is queued again at once for a new execution.
//!
//! A new execution's prompt is the run's prompt followed by every follow-up
//! so far, since it starts in a fresh workspace.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use oz_store::NewFollowup;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::api::runs::visible_run;
use crate::auth::Principal;
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;

/// Longest follow-up message accepted.
const MAX_MESSAGE_BYTES: usize = 64 * 1024;
/// Follow-ups one run accepts: each starts an execution whose prompt holds
/// all of them, so an agent posting to its own run cannot go on forever.
const MAX_FOLLOWUPS_PER_RUN: usize = 100;

#[derive(Debug, Default, Deserialize)]
struct FollowupParams {
    #[serde(default)]
    message: Option<String>,
    #[serde(default)]
    mode: Option<String>,
}

pub async fn create(
    State(state): State<AppState>,
    principal: Principal,
    Path(run_id): Path<String>,
    body: Bytes,
) -> ApiResult<Json<Value>> {
    let run = visible_run(&state, &principal, &run_id).await?;
    let p: FollowupParams = super::json_body(&body)?;
    let message = p
        .message
        .filter(|m| !m.trim().is_empty())
        .ok_or_else(|| ApiError::bad_request("message is required and must not be empty"))?;
    if message.len() > MAX_MESSAGE_BYTES {
        return Err(ApiError::bad_request(format!(
            "message is {} bytes; at most {MAX_MESSAGE_BYTES} are accepted",
            message.len()
        )));
    }
    if let Some(mode) = &p.mode
        && !matches!(mode.as_str(), "normal" | "plan" | "orchestrate")
    {
        return Err(ApiError::bad_request(format!(
            "mode {mode:?} is not one of normal, plan, orchestrate"
        )));
    }
    if state.store.list_followups(&run.run_id).await?.len() >= MAX_FOLLOWUPS_PER_RUN {
        return Err(ApiError::bad_request(format!(
            "the run already has {MAX_FOLLOWUPS_PER_RUN} follow-ups; start a new run"
        )));
    }
    let new = NewFollowup {
        id: uuid::Uuid::now_v7().to_string(),
        run_id: run.run_id.clone(),
        message,
        mode: p.mode,
        created_at: crate::now(),
    };
    let (followup, run) = state
        .store
        .add_followup(new)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no run with id {run_id:?}")))?;
    tracing::info!(
        run_id,
        delivery = followup.delivery.as_str(),
        "follow-up accepted"
    );
    if run.state == oz_store::RunState::Queued {
        state.hub.queued(&run.team_id, &run.worker_host);
        state.hub.notify_log_readers(&run.run_id);
    }
    Ok(Json(json!({
        "followup_id": followup.id,
        "run_id": run.run_id,
        "delivery": followup.delivery.as_str(),
        "state": run.state,
    })))
}

pub async fn list(
    State(state): State<AppState>,
    principal: Principal,
    Path(run_id): Path<String>,
) -> ApiResult<Json<Value>> {
    let run = visible_run(&state, &principal, &run_id).await?;
    let items: Vec<Value> = state
        .store
        .list_followups(&run.run_id)
        .await?
        .into_iter()
        .map(|f| {
            let mut v = json!({
                "followup_id": f.id,
                "message": f.message,
                "created_at": f.created_at,
                "delivery": f.delivery.as_str(),
            });
            if let Some(mode) = f.mode {
                v["mode"] = json!(mode);
            }
            if let Some(n) = f.execution {
                v["execution"] = json!(n);
            }
            v
        })
        .collect();
    Ok(Json(json!({ "followups": items })))
}
