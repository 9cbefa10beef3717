//! Environments: `GET /agent/environments` (the SDK's), and our own create,
//! get and delete (the official API manages them elsewhere).
//!
//! An environment is a named `CloudEnvironmentConfig` that runs refer to by
//! `config.environment_id`. The Direct worker runs tasks on the host, so the
//! Docker image is informational; the rest reaches the agent through the
//! run's configuration.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use oz_store::Environment;
use rand::RngExt;
use serde_json::{Map, Value, json};

use crate::api::runs::key_profile;
use crate::auth::Principal;
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;

/// Documented environment ids are 22 characters of `[A-Za-z0-9]`.
const UID_LEN: usize = 22;
const MAX_DESCRIPTION: usize = 240;

fn new_uid() -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    (0..UID_LEN)
        .map(|_| char::from(ALPHABET[rng.random_range(0..ALPHABET.len())]))
        .collect()
}

pub async fn create(
    State(state): State<AppState>,
    principal: Principal,
    body: Bytes,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let key = principal.require_team()?;
    // An empty body reads as an empty object.
    let config: Map<String, Value> = super::json_body(&body)?;
    let config = validate(config)?;
    let now = crate::now();
    let env = Environment {
        uid: new_uid(),
        team_id: key.team_id.clone(),
        config: Value::Object(config),
        creator: Some(key_profile(key)),
        last_editor: Some(key_profile(key)),
        created_at: now.clone(),
        last_updated: now,
    };
    let env = state.store.insert_environment(env).await?;
    tracing::info!(environment_id = %env.uid, "environment created");
    Ok((StatusCode::CREATED, Json(item(&state, &env).await?)))
}

pub async fn get(
    State(state): State<AppState>,
    principal: Principal,
    Path(uid): Path<String>,
) -> ApiResult<Json<Value>> {
    let key = principal.require_team()?;
    let env = state
        .store
        .get_environment(&key.team_id, &uid)
        .await?
        .ok_or_else(|| not_found(&uid))?;
    Ok(Json(item(&state, &env).await?))
}

pub async fn delete(
    State(state): State<AppState>,
    principal: Principal,
    Path(uid): Path<String>,
) -> ApiResult<Json<Value>> {
    let key = principal.require_team()?;
    if !state.store.delete_environment(&key.team_id, &uid).await? {
        return Err(not_found(&uid));
    }
    tracing::info!(environment_id = %uid, "environment deleted");
    Ok(Json(json!({ "success": true })))
}

/// `sort_by`: `last_updated` (default, newest first) or `name`.
pub async fn list(
    State(state): State<AppState>,
    principal: Principal,
    RawQuery(raw): RawQuery,
) -> ApiResult<Json<Value>> {
    let key = principal.require_team()?;
    let raw = raw.unwrap_or_default();
    let mut by_name = false;
    for (k, v) in url::form_urlencoded::parse(raw.as_bytes()) {
        if k == "sort_by" {
            by_name = match v.as_ref() {
                "name" => true,
                "last_updated" => false,
                other => {
                    return Err(ApiError::bad_request(format!(
                        "sort_by {other:?} is not name or last_updated"
                    )));
                }
            };
        }
    }
    let mut envs = state.store.list_environments(&key.team_id).await?;
    if by_name {
        let name = |e: &Environment| {
            e.config
                .get("name")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_lowercase()
        };
        envs.sort_by_key(|a| (name(a), a.uid.clone()));
    }
    let mut items = Vec::with_capacity(envs.len());
    for e in &envs {
        items.push(item(&state, e).await?);
    }
    Ok(Json(json!({ "environments": items })))
}

fn not_found(uid: &str) -> ApiError {
    ApiError::not_found(format!("no environment with id {uid:?}"))
}

/// Check the documented shape of `CloudEnvironmentConfig`.
fn validate(mut c: Map<String, Value>) -> ApiResult<Map<String, Value>> {
    match c.get("name") {
        Some(Value::String(n)) if !n.trim().is_empty() => {}
        _ => {
            return Err(ApiError::bad_request(
                "name is required and must not be empty",
            ));
        }
    }
    for field in ["name", "description", "docker_image"] {
        if c.get(field).is_some_and(|v| !v.is_string() && !v.is_null()) {
            return Err(ApiError::bad_request(format!("{field} must be a string")));
        }
    }
    if c.get("description")
        .and_then(Value::as_str)
        .is_some_and(|d| d.chars().count() > MAX_DESCRIPTION)
    {
        return Err(ApiError::bad_request(format!(
            "description is longer than {MAX_DESCRIPTION} characters"
        )));
    }
    if let Some(cmds) = c.get("setup_commands").filter(|v| !v.is_null())
        && !cmds
            .as_array()
            .is_some_and(|a| a.iter().all(Value::is_string))
    {
        return Err(ApiError::bad_request(
            "setup_commands must be an array of strings",
        ));
    }
    if let Some(repos) = c.get("github_repos").filter(|v| !v.is_null()) {
        let ok = repos.as_array().is_some_and(|a| {
            a.iter().all(|r| {
                ["owner", "repo"].iter().all(|f| {
                    r.get(*f)
                        .and_then(Value::as_str)
                        .is_some_and(|s| !s.is_empty())
                })
            })
        });
        if !ok {
            return Err(ApiError::bad_request(
                "github_repos must be an array of {owner, repo}",
            ));
        }
    }
    if let Some(m) = c
        .get("failure_session_retention_minutes")
        .filter(|v| !v.is_null())
        && !m.as_u64().is_some_and(|m| (1..=60).contains(&m))
    {
        return Err(ApiError::bad_request(
            "failure_session_retention_minutes must be an integer from 1 to 60",
        ));
    }
    if let Some(p) = c.get("providers").filter(|v| !v.is_null()) {
        check_providers(p)?;
    }
    c.retain(|_, v| !v.is_null());
    Ok(c)
}

/// `providers`: `{aws?: {role_arn!}, gcp?: {project_number!,
/// workload_identity_federation_pool_id!, workload_identity_federation_provider_id!,
/// service_account_email?}}`, as the SDK's strict mode requires them.
fn check_providers(p: &Value) -> ApiResult<()> {
    let Some(p) = p.as_object() else {
        return Err(ApiError::bad_request("providers must be an object"));
    };
    let need = |kind: &str, required: &[&str], optional: &[&str]| -> ApiResult<()> {
        let Some(v) = p.get(kind).filter(|v| !v.is_null()) else {
            return Ok(());
        };
        let ok = v.as_object().is_some_and(|m| {
            required.iter().all(|f| {
                m.get(*f)
                    .and_then(Value::as_str)
                    .is_some_and(|s| !s.is_empty())
            }) && optional
                .iter()
                .all(|f| m.get(*f).is_none_or(|v| v.is_string() || v.is_null()))
        });
        if ok {
            Ok(())
        } else {
            Err(ApiError::bad_request(format!(
                "providers.{kind} needs {} as strings",
                required.join(", ")
            )))
        }
    };
    need("aws", &["role_arn"], &[])?;
    need(
        "gcp",
        &[
            "project_number",
            "workload_identity_federation_pool_id",
            "workload_identity_federation_provider_id",
        ],
        &["service_account_email"],
    )
}

/// `CloudEnvironment`, with the newest run that used it.
async fn item(state: &AppState, e: &Environment) -> ApiResult<Value> {
    let mut v = json!({
        "uid": e.uid,
        "config": e.config,
        "last_updated": e.last_updated,
        "setup_failed": false,
        "scope": { "type": "Team", "uid": e.team_id },
    });
    if let Some(c) = &e.creator {
        v["creator"] = c.clone();
    }
    if let Some(c) = &e.last_editor {
        v["last_editor"] = c.clone();
    }
    if let Some(run) = state
        .store
        .last_run_in_environment(&e.team_id, &e.uid)
        .await?
    {
        v["last_task_run_timestamp"] = json!(run.created_at);
        let mut last = json!({
            "id": run.run_id,
            "created_at": run.created_at,
            "state": run.state,
            "title": run.title,
            "updated_at": run.updated_at,
        });
        if let Some(s) = run.started_at {
            last["started_at"] = json!(s);
        }
        v["last_task_created"] = last;
    }
    Ok(v)
}
