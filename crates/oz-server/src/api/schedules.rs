//! Schedules: create, get, update, list, delete, pause, resume. The
//! firing itself is in [`crate::scheduler`].

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use oz_cron::CronSchedule;
use oz_protocol::api::{
    AgentRunParams, ScheduleHistory, ScheduleParams, ScheduledAgentItem, Scope,
};
use oz_store::Schedule;
use serde_json::{Value, json};

use crate::api::runs::{Origin, build_run, key_profile};
use crate::auth::Principal;
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;

pub async fn create(
    State(state): State<AppState>,
    principal: Principal,
    body: Bytes,
) -> ApiResult<(StatusCode, Json<ScheduledAgentItem>)> {
    let key = principal.require_team()?;
    let p: ScheduleParams = super::json_body(&body)?;
    if p.team == Some(false) {
        return Err(ApiError::bad_request(
            "personal (team: false) schedules are not offered by this server; omit team or set it to true",
        ));
    }
    let now = crate::now();
    let checked = check(&state, &key.team_id, p, true).await?;
    let schedule = Schedule {
        id: uuid::Uuid::now_v7().to_string(),
        team_id: key.team_id.clone(),
        name: checked.name,
        next_run: next_run(&checked.cron, checked.enabled),
        cron_schedule: checked.cron.as_str().to_owned(),
        enabled: checked.enabled,
        prompt: checked.prompt,
        agent_config: checked.agent_config,
        agent_uid: checked.agent_uid,
        metadata: checked.metadata,
        mode: checked.mode,
        created_by: Some(key_profile(key)),
        updated_by: Some(key_profile(key)),
        created_at: now.clone(),
        updated_at: now,
        last_ran: None,
        last_spawn_error: None,
    };
    let schedule = state.store.insert_schedule(schedule).await?;
    tracing::info!(schedule_id = %schedule.id, cron = %schedule.cron_schedule, next_run = ?schedule.next_run, "schedule created");
    state.scheduler.notify_one();
    Ok((StatusCode::CREATED, Json(item(&state, &schedule).await?)))
}

pub async fn get(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
) -> ApiResult<Json<ScheduledAgentItem>> {
    let key = principal.require_team()?;
    let schedule = load(&state, &key.team_id, &id).await?;
    Ok(Json(item(&state, &schedule).await?))
}

pub async fn list(State(state): State<AppState>, principal: Principal) -> ApiResult<Json<Value>> {
    let key = principal.require_team()?;
    let mut items = Vec::new();
    for s in state.store.list_schedules(&key.team_id).await? {
        items.push(item(&state, &s).await?);
    }
    Ok(Json(json!({ "schedules": items })))
}

/// Full replace: `cron_schedule`, `enabled` and `name` are required, plus a
/// prompt or a skill. Changes apply to future firings only.
pub async fn update(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult<Json<ScheduledAgentItem>> {
    let key = principal.require_team()?;
    let p: ScheduleParams = super::json_body(&body)?;
    let current = load(&state, &key.team_id, &id).await?;
    if p.enabled.is_none() {
        return Err(ApiError::bad_request(
            "enabled is required when replacing a schedule (with name and cron_schedule)",
        ));
    }
    let checked = check(&state, &key.team_id, p, false).await?;
    // An unchanged, enabled schedule keeps its pending firing; anything else
    // starts over from now.
    let keep_next = current.enabled
        && checked.enabled
        && current.cron_schedule == checked.cron.as_str()
        && current.next_run.is_some();
    let schedule = Schedule {
        name: checked.name,
        next_run: if keep_next {
            current.next_run.clone()
        } else {
            next_run(&checked.cron, checked.enabled)
        },
        cron_schedule: checked.cron.as_str().to_owned(),
        enabled: checked.enabled,
        prompt: checked.prompt,
        agent_config: checked.agent_config,
        agent_uid: checked.agent_uid,
        metadata: checked.metadata,
        mode: checked.mode,
        updated_by: Some(key_profile(key)),
        updated_at: crate::now(),
        ..current
    };
    let saved = save(&state, schedule, keep_next).await?;
    tracing::info!(schedule_id = %id, "schedule updated");
    Ok(Json(saved))
}

/// Store an edited schedule and wake the scheduler. With `keep_next`, the
/// stored firing is left as it is: it may have been claimed meanwhile.
async fn save(state: &AppState, s: Schedule, keep_next: bool) -> ApiResult<ScheduledAgentItem> {
    let id = s.id.clone();
    let s = state
        .store
        .update_schedule(s, keep_next)
        .await?
        .ok_or_else(|| not_found(&id))?;
    state.scheduler.notify_one();
    item(state, &s).await
}

pub async fn delete(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let key = principal.require_team()?;
    if !state.store.delete_schedule(&key.team_id, &id).await? {
        return Err(not_found(&id));
    }
    tracing::info!(schedule_id = %id, "schedule deleted; its runs are kept");
    Ok(Json(json!({ "success": true })))
}

pub async fn pause(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
) -> ApiResult<Json<ScheduledAgentItem>> {
    set_enabled(state, principal, id, false).await
}

pub async fn resume(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
) -> ApiResult<Json<ScheduledAgentItem>> {
    set_enabled(state, principal, id, true).await
}

/// Pausing clears the next firing; resuming computes it from now, so
/// firings missed while paused are skipped, not made up.
async fn set_enabled(
    state: AppState,
    principal: Principal,
    id: String,
    enabled: bool,
) -> ApiResult<Json<ScheduledAgentItem>> {
    let key = principal.require_team()?;
    let current = load(&state, &key.team_id, &id).await?;
    if current.enabled == enabled {
        return Ok(Json(item(&state, &current).await?));
    }
    let cron = CronSchedule::parse(&current.cron_schedule).map_err(|e| {
        ApiError::internal(format!(
            "the stored cron expression of schedule {id} does not parse ({e}); replace it with PUT"
        ))
    })?;
    let schedule = Schedule {
        enabled,
        next_run: next_run(&cron, enabled),
        updated_by: Some(key_profile(key)),
        updated_at: crate::now(),
        ..current
    };
    let saved = save(&state, schedule, false).await?;
    tracing::info!(schedule_id = %id, enabled, "schedule {}", if enabled { "resumed" } else { "paused" });
    Ok(Json(saved))
}

fn not_found(id: &str) -> ApiError {
    ApiError::not_found(format!("no schedule with id {id:?}"))
}

async fn load(state: &AppState, team_id: &str, id: &str) -> ApiResult<Schedule> {
    state
        .store
        .get_schedule(team_id, id)
        .await?
        .ok_or_else(|| not_found(id))
}

/// The first firing after now, for an enabled schedule.
pub(crate) fn next_run(cron: &CronSchedule, enabled: bool) -> Option<String> {
    enabled
        .then(|| cron.next_after(chrono::Utc::now()))
        .flatten()
        .map(oz_store::ts)
}

struct Checked {
    name: String,
    cron: CronSchedule,
    enabled: bool,
    prompt: String,
    agent_config: Option<Value>,
    agent_uid: Option<String>,
    metadata: std::collections::BTreeMap<String, String>,
    mode: Option<String>,
}

/// Validate a schedule the way its runs will be validated: a run is built
/// from it now (and thrown away), so a schedule that could never start a run
/// (no worker host, unknown agent or environment, bad metadata) is refused
/// here rather than failing at every firing.
async fn check(
    state: &AppState,
    team_id: &str,
    p: ScheduleParams,
    creating: bool,
) -> ApiResult<Checked> {
    let name = p
        .name
        .map(|n| n.trim().to_owned())
        .filter(|n| !n.is_empty())
        .ok_or_else(|| ApiError::bad_request("name is required and must not be empty"))?;
    let cron_text = p
        .cron_schedule
        .filter(|c| !c.trim().is_empty())
        .ok_or_else(|| {
            ApiError::bad_request(
                "cron_schedule is required: 5 fields in UTC, e.g. \"0 9 * * *\" for 09:00 UTC daily",
            )
        })?;
    let cron = CronSchedule::parse(&cron_text)
        .map_err(|e| ApiError::bad_request(format!("cron_schedule {cron_text:?}: {e}")))?;
    if cron.next_after(chrono::Utc::now()).is_none() {
        return Err(ApiError::bad_request(format!(
            "cron_schedule {cron_text:?} never fires (no such date)"
        )));
    }
    // Stored as its runs will see it (checked, foreign harness types moved).
    let agent_config = match p.agent_config {
        None | Some(Value::Null) => None,
        Some(Value::Object(m)) => Some(Value::Object(super::config::normalize(m, "agent_config")?)),
        Some(_) => return Err(ApiError::bad_request("agent_config must be a JSON object")),
    };
    let prompt = p.prompt.unwrap_or_default();
    let has_skill = agent_config.as_ref().is_some_and(|c| {
        c.get("skill_spec")
            .and_then(Value::as_str)
            .is_some_and(|s| !s.trim().is_empty())
            || c.get("skills")
                .and_then(Value::as_array)
                .is_some_and(|a| !a.is_empty())
    });
    if prompt.trim().is_empty() && !has_skill {
        return Err(ApiError::bad_request(
            "prompt is required unless agent_config.skill_spec or agent_config.skills is set",
        ));
    }
    let agent_uid = p
        .agent_uid
        .map(|a| a.trim().to_owned())
        .filter(|a| !a.is_empty());
    let trial = AgentRunParams {
        prompt: Some(prompt.clone()),
        config: agent_config.clone(),
        metadata: p.metadata.clone(),
        mode: p.mode.clone(),
        agent_identity_uid: agent_uid.clone(),
        ..Default::default()
    };
    let origin = Origin {
        team_id: team_id.to_owned(),
        creator_id: None,
        creator: None,
        source: "SCHEDULED_AGENT",
        schedule: None,
    };
    build_run(state, origin, trial).await?;
    Ok(Checked {
        name,
        cron,
        enabled: p.enabled.unwrap_or(creating),
        prompt,
        agent_config,
        agent_uid,
        metadata: p.metadata.unwrap_or_default(),
        mode: p.mode,
    })
}

/// The API's view of a schedule.
pub(crate) async fn item(state: &AppState, s: &Schedule) -> ApiResult<ScheduledAgentItem> {
    let environment = match s
        .agent_config
        .as_ref()
        .and_then(|c| c.get("environment_id"))
        .and_then(Value::as_str)
    {
        Some(env) => state
            .store
            .get_environment(&s.team_id, env)
            .await?
            .map(|e| e.config),
        None => None,
    };
    Ok(ScheduledAgentItem {
        id: s.id.clone(),
        name: s.name.clone(),
        cron_schedule: s.cron_schedule.clone(),
        enabled: s.enabled,
        prompt: s.prompt.clone(),
        created_at: s.created_at.clone(),
        updated_at: s.updated_at.clone(),
        agent_config: s.agent_config.clone(),
        agent_uid: s.agent_uid.clone(),
        created_by: s.created_by.clone(),
        updated_by: s.updated_by.clone(),
        environment,
        history: Some(ScheduleHistory {
            last_ran: s.last_ran.clone(),
            next_run: s.next_run.clone(),
        }),
        last_spawn_error: s.last_spawn_error.clone(),
        metadata: (!s.metadata.is_empty()).then(|| s.metadata.clone()),
        mode: s.mode.clone(),
        scope: Some(Scope {
            kind: "Team".into(),
            uid: Some(s.team_id.clone()),
        }),
    })
}
