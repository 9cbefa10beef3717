//! Agent identities (`/agent/identities`): named agents whose defaults
//! (worker host, model, harness, environment, …) apply to the runs and
//! schedules that name them.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use oz_store::Agent;
use serde_json::{Map, Value, json};

use super::config;
use crate::auth::Principal;
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;

/// Optional string fields; on update `""` clears one and `null` / absent
/// leaves it as it is.
const STRING_FIELDS: [&str; 10] = [
    "agent_type",
    "base_harness",
    "base_model",
    "credential_strategy",
    "default_runner_uid",
    "description",
    "environment_id",
    "factory_uid",
    "prompt",
    "worker_host",
];
/// Optional object fields; on update `null` / absent leaves one as it is.
const OBJECT_FIELDS: [&str; 3] = ["harness", "harness_auth_secrets", "inference_providers"];
const AGENT_TYPES: [&str; 7] = [
    "FOREMAN",
    "TRIAGE",
    "SPEC",
    "IMPLEMENT",
    "REVIEW",
    "VERIFY",
    "CUSTOM",
];

pub async fn create(
    State(state): State<AppState>,
    principal: Principal,
    body: Bytes,
) -> ApiResult<Json<Value>> {
    let key = principal.require_team()?;
    let body: Map<String, Value> = super::json_body(&body)?;
    let name = match body.get("name") {
        Some(Value::String(n)) if !n.trim().is_empty() => n.trim().to_owned(),
        _ => {
            return Err(ApiError::bad_request(
                "name is required and must not be empty",
            ));
        }
    };
    let mut spec = Map::new();
    apply(&mut spec, &body, false)?;
    check(&state, &key.team_id, &spec).await?;
    let now = crate::now();
    let agent = Agent {
        uid: uuid::Uuid::now_v7().to_string(),
        team_id: key.team_id.clone(),
        name,
        spec,
        created_at: now.clone(),
        updated_at: now,
    };
    let agent = state.store.insert_agent(agent).await?;
    tracing::info!(agent_uid = %agent.uid, "agent identity created");
    Ok(Json(response(&agent)))
}

pub async fn get(
    State(state): State<AppState>,
    principal: Principal,
    Path(uid): Path<String>,
) -> ApiResult<Json<Value>> {
    let key = principal.require_team()?;
    Ok(Json(response(&load(&state, &key.team_id, &uid).await?)))
}

pub async fn list(
    State(state): State<AppState>,
    principal: Principal,
    RawQuery(raw): RawQuery,
) -> ApiResult<Json<Value>> {
    let key = principal.require_team()?;
    let raw = raw.unwrap_or_default();
    let factory = url::form_urlencoded::parse(raw.as_bytes())
        .find(|(k, _)| k == "factory_uid")
        .map(|(_, v)| v.into_owned());
    let agents = state
        .store
        .list_agents(&key.team_id, factory.as_deref())
        .await?;
    let agents: Vec<Value> = agents.iter().map(response).collect();
    Ok(Json(json!({ "agents": agents })))
}

/// Partial update: absent or `null` keeps a field, `""` clears a string
/// field (an empty `worker_host` lets the server default apply again),
/// `[]` clears `skills` / `secrets`, `{}` clears `mcp_servers`.
pub async fn update(
    State(state): State<AppState>,
    principal: Principal,
    Path(uid): Path<String>,
    body: Bytes,
) -> ApiResult<Json<Value>> {
    let key = principal.require_team()?;
    let body: Map<String, Value> = super::json_body(&body)?;
    let mut agent = load(&state, &key.team_id, &uid).await?;
    match body.get("name") {
        None | Some(Value::Null) => {}
        Some(Value::String(n)) if !n.trim().is_empty() => agent.name = n.trim().to_owned(),
        Some(_) => {
            return Err(ApiError::bad_request(
                "name must be a non-empty string (it cannot be cleared)",
            ));
        }
    }
    apply(&mut agent.spec, &body, true)?;
    check(&state, &key.team_id, &agent.spec).await?;
    agent.updated_at = crate::now();
    let agent = state
        .store
        .update_agent(agent)
        .await?
        .ok_or_else(|| not_found(&uid))?;
    tracing::info!(agent_uid = %agent.uid, "agent identity updated");
    Ok(Json(response(&agent)))
}

pub async fn delete(
    State(state): State<AppState>,
    principal: Principal,
    Path(uid): Path<String>,
) -> ApiResult<StatusCode> {
    let key = principal.require_team()?;
    if !state.store.delete_agent(&key.team_id, &uid).await? {
        return Err(not_found(&uid));
    }
    tracing::info!(agent_uid = %uid, "agent identity deleted");
    Ok(StatusCode::NO_CONTENT)
}

fn not_found(uid: &str) -> ApiError {
    ApiError::not_found(format!("no agent identity with uid {uid:?}"))
}

async fn load(state: &AppState, team_id: &str, uid: &str) -> ApiResult<Agent> {
    state
        .store
        .get_agent(team_id, uid)
        .await?
        .ok_or_else(|| not_found(uid))
}

/// Copy the request's fields into `spec`, checking their types.
fn apply(
    spec: &mut Map<String, Value>,
    body: &Map<String, Value>,
    updating: bool,
) -> ApiResult<()> {
    for field in STRING_FIELDS {
        match body.get(field) {
            None | Some(Value::Null) => {}
            Some(Value::String(s)) if s.trim().is_empty() => {
                spec.remove(field);
            }
            Some(Value::String(s)) => {
                spec.insert(field.into(), json!(s.trim()));
            }
            Some(_) => {
                return Err(ApiError::bad_request(format!("{field} must be a string")));
            }
        }
    }
    for field in OBJECT_FIELDS {
        match body.get(field) {
            None | Some(Value::Null) => {}
            Some(Value::Object(m)) if m.is_empty() && updating => {
                spec.remove(field);
            }
            Some(v @ Value::Object(_)) => {
                match field {
                    "harness" => config::check_harness(v, field)?,
                    "harness_auth_secrets" => config::check_harness_auth_secrets(v, field)?,
                    _ => config::check_inference_providers(v, field)?,
                }
                spec.insert(field.into(), v.clone());
            }
            Some(_) => {
                return Err(ApiError::bad_request(format!("{field} must be an object")));
            }
        }
    }
    match body.get("mcp_servers") {
        None | Some(Value::Null) => {}
        Some(v @ Value::Object(m)) => {
            config::check_mcp_servers(v, "mcp_servers")?;
            if m.is_empty() {
                spec.remove("mcp_servers");
            } else {
                spec.insert("mcp_servers".into(), Value::Object(m.clone()));
            }
        }
        Some(_) => return Err(ApiError::bad_request("mcp_servers must be an object")),
    }
    match body.get("on_behalf_of_enabled") {
        None | Some(Value::Null) => {}
        Some(Value::Bool(b)) => {
            spec.insert("on_behalf_of_enabled".into(), json!(b));
        }
        Some(_) => {
            return Err(ApiError::bad_request(
                "on_behalf_of_enabled must be a boolean",
            ));
        }
    }
    match body.get("skills") {
        None | Some(Value::Null) => {}
        Some(Value::Array(list)) => {
            let mut skills = Vec::with_capacity(list.len());
            for s in list {
                match s.as_str().map(str::trim) {
                    Some(s) if is_skill_spec(s) => skills.push(json!(s)),
                    _ => {
                        return Err(ApiError::bad_request(format!(
                            "skill {s} is not a skill spec \"owner/repo:path/to/SKILL.md\""
                        )));
                    }
                }
            }
            spec.insert("skills".into(), Value::Array(skills));
        }
        Some(_) => return Err(ApiError::bad_request("skills must be an array of strings")),
    }
    match body.get("secrets") {
        None | Some(Value::Null) => {}
        Some(Value::Array(list)) => {
            let mut names = std::collections::BTreeSet::new();
            for s in list {
                let Some(name) = s.get("name").and_then(Value::as_str).map(str::trim) else {
                    return Err(ApiError::bad_request(
                        "every secret must be an object with a name",
                    ));
                };
                if name.is_empty() || !names.insert(name.to_owned()) {
                    return Err(ApiError::bad_request(format!(
                        "secret name {name:?} is empty or given twice"
                    )));
                }
            }
            let secrets: Vec<Value> = names.iter().map(|n| json!({ "name": n })).collect();
            spec.insert("secrets".into(), Value::Array(secrets));
        }
        Some(_) => return Err(ApiError::bad_request("secrets must be an array")),
    }
    match body.get("memory") {
        None | Some(Value::Null) => {}
        Some(Value::Object(m)) => {
            let mut memory = spec
                .get("memory")
                .and_then(Value::as_object)
                .cloned()
                .unwrap_or_default();
            match m.get("attached_stores") {
                None | Some(Value::Null) => {}
                Some(list @ Value::Array(stores)) => {
                    config::check_memory_stores(list, "memory.attached_stores")?;
                    memory.insert("attached_stores".into(), Value::Array(stores.clone()));
                }
                Some(_) => {
                    return Err(ApiError::bad_request(
                        "memory.attached_stores must be an array",
                    ));
                }
            }
            match m.get("auto_memory").and_then(|a| a.get("enabled")) {
                None | Some(Value::Null) => {}
                Some(Value::Bool(b)) => {
                    memory.insert("auto_memory".into(), json!({ "enabled": b }));
                }
                Some(_) => {
                    return Err(ApiError::bad_request(
                        "memory.auto_memory.enabled must be a boolean",
                    ));
                }
            }
            spec.insert("memory".into(), Value::Object(memory));
        }
        Some(_) => return Err(ApiError::bad_request("memory must be an object")),
    }
    Ok(())
}

fn is_skill_spec(s: &str) -> bool {
    match s.split_once(':') {
        Some((repo, path)) => !repo.is_empty() && !path.is_empty() && !repo.contains(' '),
        None => false,
    }
}

/// Rules between fields, and references that must exist.
async fn check(state: &AppState, team_id: &str, spec: &Map<String, Value>) -> ApiResult<()> {
    let s = |k: &str| spec.get(k).and_then(Value::as_str);
    if let Some(t) = s("agent_type")
        && !AGENT_TYPES.contains(&t)
    {
        return Err(ApiError::bad_request(format!(
            "agent_type {t:?} is not one of {}",
            AGENT_TYPES.join(", ")
        )));
    }
    if let Some(c) = s("credential_strategy")
        && !matches!(c, "CREATOR" | "EXECUTOR")
    {
        return Err(ApiError::bad_request(format!(
            "credential_strategy {c:?} is not CREATOR or EXECUTOR"
        )));
    }
    let harness = spec
        .get("harness")
        .and_then(|h| h.get("type"))
        .and_then(Value::as_str);
    if let Some(h) = harness.or(s("base_harness"))
        && !config::SDK_HARNESSES.contains(&h)
    {
        return Err(ApiError::bad_request(format!(
            "harness {h:?} is not one of {}",
            config::SDK_HARNESSES.join(", ")
        )));
    }
    if let (Some(h), Some(b)) = (harness, s("base_harness"))
        && h != b
    {
        return Err(ApiError::bad_request(format!(
            "base_harness {b:?} conflicts with harness.type {h:?}; set only harness"
        )));
    }
    if harness.or(s("base_harness")).is_some_and(|h| h != "oz") && s("base_model").is_some() {
        return Err(ApiError::bad_request(
            "base_model is for the built-in oz harness; with another harness set harness.model_id",
        ));
    }
    if s("worker_host") == Some("warp") {
        return Err(ApiError::bad_request(
            "worker_host \"warp\" asks for Warp-hosted execution, which this server does not offer",
        ));
    }
    if let Some(env) = s("environment_id")
        && state.store.get_environment(team_id, env).await?.is_none()
    {
        return Err(ApiError::bad_request(format!(
            "environment {env:?} does not exist in this team"
        )));
    }
    Ok(())
}

/// `AgentResponse`: required fields always present (`default_runner_uid`
/// as `""`, `skills` / `secrets` as `[]`, a full `memory`).
pub(crate) fn response(a: &Agent) -> Value {
    let mut out = a.spec.clone();
    let memory = a
        .spec
        .get("memory")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    let enabled = memory
        .get("auto_memory")
        .and_then(|m| m.get("enabled"))
        .and_then(Value::as_bool)
        .unwrap_or(true);
    out.insert(
        "memory".into(),
        json!({
            "attached_stores": memory.get("attached_stores").cloned().unwrap_or(json!([])),
            "auto_memory": { "enabled": enabled },
        }),
    );
    out.entry("default_runner_uid").or_insert(json!(""));
    out.entry("skills").or_insert(json!([]));
    out.entry("secrets").or_insert(json!([]));
    out.insert("uid".into(), json!(a.uid));
    out.insert("name".into(), json!(a.name));
    out.insert("available".into(), json!(true));
    out.insert("created_at".into(), json!(a.created_at));
    out.insert("updated_at".into(), json!(a.updated_at));
    Value::Object(out)
}
