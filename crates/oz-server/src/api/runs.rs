//! Runs: create, get, list, cancel, and the runner's progress report.

use std::collections::BTreeMap;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::response::IntoResponse;
use oz_protocol::api::{
    AgentRunParams, AgentRunResponse, PageInfo, RunItem, RunList, RunState, Scope, StatusMessage,
};
use oz_store::{Cursor, NewRun, Run, RunPatch, RunQuery, SortBy, SortOrder};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::auth::Principal;
use crate::error::{ApiError, ApiResult};
use crate::hub::{Hub, WaitingReasons};
use crate::state::AppState;

const MAX_METADATA_KEYS: usize = 20;
const ARTIFACT_TYPES: [&str; 5] = [
    "PLAN",
    "PULL_REQUEST",
    "SCREENSHOT",
    "FILE",
    "EXTERNAL_REFERENCE",
];
const DEFAULT_LIMIT: u32 = 20;
const MAX_LIMIT: u32 = 500;

pub async fn create(
    State(state): State<AppState>,
    principal: Principal,
    body: Bytes,
) -> ApiResult<Json<AgentRunResponse>> {
    let key = principal.require_team()?;
    let params: AgentRunParams = super::json_body(&body)?;
    let origin = Origin {
        team_id: key.team_id.clone(),
        creator_id: Some(key.id.clone()),
        creator: Some(key_profile(key)),
        source: "API",
        schedule: None,
    };
    let new = build_run(&state, origin, params).await?;
    let run = state.store.insert_run(new).await?;
    tracing::info!(run_id = %run.run_id, worker_host = %run.worker_host, "run queued");
    state.hub.queued(&run.team_id, &run.worker_host);
    Ok(Json(AgentRunResponse {
        run_id: run.run_id.clone(),
        state: run.state,
        task_id: run.run_id,
        at_capacity: None,
    }))
}

/// Where a new run comes from: the API (a key) or a schedule.
pub(crate) struct Origin {
    pub team_id: String,
    pub creator_id: Option<String>,
    pub creator: Option<Value>,
    pub source: &'static str,
    /// `{cron_schedule, schedule_id, schedule_name}` of a firing.
    pub schedule: Option<(String, Value)>,
}

/// `UserProfile` of an API key (keys stand for service accounts).
pub(crate) fn key_profile(key: &oz_store::ApiKey) -> Value {
    json!({"uid": key.id, "display_name": key.name, "type": "service_account"})
}

/// `UserProfile` of an agent identity.
pub(crate) fn agent_profile(agent: &oz_store::Agent) -> Value {
    json!({"uid": agent.uid, "display_name": agent.name, "type": "service_account"})
}

fn non_empty(v: Option<&Value>) -> Option<String> {
    v.and_then(Value::as_str)
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
}

/// Deepest chain of orchestration parents a run may have.
const MAX_ORCHESTRATION_DEPTH: usize = 10;
const MAX_ATTACHMENTS: usize = 5;

/// Check a run request and resolve its configuration. Precedence, as
/// documented: the run's own `config`, then the agent identity's defaults,
/// then the server's default (worker host) or none.
pub(crate) async fn build_run(
    state: &AppState,
    origin: Origin,
    p: AgentRunParams,
) -> ApiResult<NewRun> {
    let team_id = origin.team_id.clone();
    let mut config = match p.config {
        None | Some(Value::Null) => serde_json::Map::new(),
        Some(Value::Object(m)) => super::config::normalize(m, "config")?,
        Some(_) => return Err(ApiError::bad_request("config must be a JSON object")),
    };
    if p.team == Some(false) {
        return Err(ApiError::bad_request(
            "personal (team: false) runs are not offered by this server: every run belongs to the key's team; omit team or set it to true",
        ));
    }
    if p.on_behalf_of.is_some() {
        return Err(ApiError::bad_request(
            "on_behalf_of needs an agent API key with on_behalf_of enabled, which this server does not issue; omit it",
        ));
    }
    validate_attachments(p.attachments.as_deref())?;

    // The agent identity's defaults fill what the run leaves unset.
    let agent = match p.agent_identity_uid.as_deref().map(str::trim) {
        None | Some("") => None,
        Some(uid) => Some(state.store.get_agent(&team_id, uid).await?.ok_or_else(|| {
            ApiError::bad_request(format!(
                "agent_identity_uid {uid:?} is not an agent of this team (see GET /agent/identities)"
            ))
        })?),
    };
    if let Some(agent) = &agent {
        let spec = &agent.spec;
        let inherit = [
            ("worker_host", "worker_host"),
            ("model_id", "base_model"),
            ("environment_id", "environment_id"),
            ("runner_id", "default_runner_uid"),
            ("credential_strategy", "credential_strategy"),
            ("base_prompt", "prompt"),
        ];
        for (run_key, agent_key) in inherit {
            if non_empty(config.get(run_key)).is_none()
                && let Some(v) = non_empty(spec.get(agent_key))
            {
                config.insert(run_key.into(), json!(v));
            }
        }
        for key in ["harness", "harness_auth_secrets", "inference_providers"] {
            let mut unset = config.get(key).is_none_or(Value::is_null);
            // A runner-only harness the run names is its harness too.
            if key == "harness" && config.get("runner_harness").is_some_and(Value::is_object) {
                unset = false;
            }
            if unset && let Some(v) = spec.get(key).filter(|v| v.is_object()) {
                config.insert(key.into(), v.clone());
            }
        }
        let no_mcp = config.get("mcp_servers").is_none_or(Value::is_null);
        if no_mcp
            && let Some(v) = spec
                .get("mcp_servers")
                .filter(|v| v.as_object().is_some_and(|m| !m.is_empty()))
        {
            config.insert("mcp_servers".into(), v.clone());
        }
        if config.get("skills").is_none_or(Value::is_null)
            && config.get("skill_spec").is_none_or(Value::is_null)
            && let Some(skills) = spec
                .get("skills")
                .filter(|v| v.as_array().is_some_and(|a| !a.is_empty()))
        {
            config.insert("skills".into(), skills.clone());
        }
    }

    // A top-level skill wins over config.skill_spec.
    let skill_spec = p
        .skill
        .as_deref()
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .or_else(|| non_empty(config.get("skill_spec")))
        .or_else(|| {
            config
                .get("skills")
                .and_then(Value::as_array)
                .and_then(|a| non_empty(a.first()))
        });
    if let Some(s) = &skill_spec {
        config.insert("skill_spec".into(), json!(s));
    }
    // Continuing a conversation: it must be one of the team's; without a
    // prompt, the new run does again what its newest run was asked.
    let conversation = match p.conversation_id.as_deref().map(str::trim) {
        None | Some("") => None,
        Some(c) => Some(
            state
                .store
                .run_by_conversation(c)
                .await?
                .filter(|r| r.team_id == team_id)
                .ok_or_else(|| {
                    ApiError::bad_request(format!(
                        "conversation_id {c:?} is not a conversation of this team's runs"
                    ))
                })?,
        ),
    };
    let mut prompt = p.prompt.unwrap_or_default();
    if prompt.trim().is_empty()
        && skill_spec.is_none()
        && let Some(previous) = &conversation
    {
        prompt = previous.current_prompt().to_owned();
    }
    if prompt.trim().is_empty() && skill_spec.is_none() {
        return Err(ApiError::bad_request(
            "prompt is required unless a skill is given (skill, config.skill_spec or config.skills)",
        ));
    }
    let worker_host = match non_empty(config.get("worker_host"))
        .or_else(|| state.settings.default_worker_host.clone())
    {
        Some(h) if h == "warp" => {
            return Err(ApiError::bad_request(
                "worker_host \"warp\" asks for Warp-hosted execution, which this server does not offer; name a self-hosted worker id",
            ));
        }
        Some(h) => h,
        None => {
            return Err(ApiError::bad_request(
                "no worker host: set config.worker_host to a worker id (or the agent identity's worker_host), or start oz-server with --default-worker-host",
            ));
        }
    };
    config.insert("worker_host".into(), json!(worker_host));
    let environment_id = non_empty(config.get("environment_id"));
    if let Some(env) = &environment_id
        && state.store.get_environment(&team_id, env).await?.is_none()
    {
        return Err(ApiError::bad_request(format!(
            "environment {env:?} does not exist in this team (see GET /agent/environments)"
        )));
    }
    let mut metadata = p.metadata.unwrap_or_default();
    validate_metadata(&metadata)?;
    if let Some(mode) = &p.mode
        && !matches!(mode.as_str(), "normal" | "plan" | "orchestrate")
    {
        return Err(ApiError::bad_request(format!(
            "mode {mode:?} is not one of normal, plan, orchestrate"
        )));
    }

    // Orchestration: the parent must be a run of the team, not too deep;
    // its metadata is inherited under the request's own keys.
    let mut source = origin.source;
    let parent_run_id = match p.parent_run_id.as_deref().map(str::trim) {
        None | Some("") => None,
        Some(parent_id) => {
            let parent = state
                .store
                .get_run(parent_id)
                .await?
                .filter(|r| r.team_id == team_id)
                .ok_or_else(|| {
                    ApiError::bad_request(format!(
                        "parent_run_id {parent_id:?} is not a run of this team"
                    ))
                })?;
            let mut depth = 1;
            let mut up = parent.parent_run_id.clone();
            while let Some(id) = up {
                depth += 1;
                if depth > MAX_ORCHESTRATION_DEPTH {
                    return Err(ApiError::bad_request(format!(
                        "orchestration is limited to {MAX_ORCHESTRATION_DEPTH} levels of parent runs"
                    )));
                }
                up = state
                    .store
                    .get_run(&id)
                    .await?
                    .and_then(|r| r.parent_run_id);
            }
            for (k, v) in &parent.metadata {
                metadata.entry(k.clone()).or_insert_with(|| v.clone());
            }
            validate_metadata(&metadata)?;
            source = "ORCHESTRATION";
            Some(parent.run_id)
        }
    };
    let title = p
        .title
        .filter(|t| !t.trim().is_empty())
        .unwrap_or_else(|| derive_title(&prompt, skill_spec.as_deref()));
    let now = crate::now();
    let (schedule_id, schedule) = match origin.schedule {
        Some((id, info)) => (Some(id), Some(info)),
        None => (None, None),
    };
    let (agent_uid, executor) = match &agent {
        Some(a) => (Some(a.uid.clone()), Some(agent_profile(a))),
        None => (None, origin.creator.clone()),
    };
    let new = NewRun {
        run_id: uuid::Uuid::now_v7().to_string(),
        team_id,
        prompt,
        title,
        name: non_empty(config.get("name")),
        model_id: non_empty(config.get("model_id")),
        environment_id,
        skill_spec,
        schedule_id,
        config: Value::Object(config),
        metadata,
        source: source.into(),
        mode: p.mode,
        worker_host,
        status_message: None,
        created_at: now,
        creator_id: origin.creator_id,
        creator: origin.creator,
        agent_uid,
        executor,
        parent_run_id,
        conversation_id: Some(match &conversation {
            Some(previous) => previous
                .conversation_id
                .clone()
                .unwrap_or_else(|| uuid::Uuid::now_v7().to_string()),
            // Time-ordered: appended to the conversation index, not
            // scattered through it.
            None => uuid::Uuid::now_v7().to_string(),
        }),
        schedule,
    };
    Ok(new)
}

fn validate_attachments(attachments: Option<&[Value]>) -> ApiResult<()> {
    let Some(list) = attachments else {
        return Ok(());
    };
    if list.len() > MAX_ATTACHMENTS {
        return Err(ApiError::bad_request(format!(
            "attachments has {} entries; at most {MAX_ATTACHMENTS} are allowed",
            list.len()
        )));
    }
    for (i, a) in list.iter().enumerate() {
        let field = |name: &str| a.get(name).and_then(Value::as_str);
        let (Some(data), Some(_), Some(mime)) =
            (field("data"), field("file_name"), field("mime_type"))
        else {
            return Err(ApiError::bad_request(format!(
                "attachments[{i}] needs data (base64), file_name and mime_type as strings"
            )));
        };
        if !matches!(
            mime,
            "image/jpeg" | "image/png" | "image/gif" | "image/webp"
        ) {
            return Err(ApiError::bad_request(format!(
                "attachments[{i}].mime_type {mime:?} is not one of image/jpeg, image/png, image/gif, image/webp"
            )));
        }
        use base64::Engine as _;
        if base64::engine::general_purpose::STANDARD
            .decode(data)
            .is_err()
        {
            return Err(ApiError::bad_request(format!(
                "attachments[{i}].data is not valid base64"
            )));
        }
    }
    Ok(())
}

fn validate_metadata(m: &BTreeMap<String, String>) -> ApiResult<()> {
    if m.len() > MAX_METADATA_KEYS {
        return Err(ApiError::bad_request(format!(
            "metadata has {} keys; at most {MAX_METADATA_KEYS} are allowed",
            m.len()
        )));
    }
    for (k, v) in m {
        let key_ok = !k.is_empty()
            && k.len() <= 64
            && k.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
        if !key_ok {
            return Err(ApiError::bad_request(format!(
                "metadata key {k:?} must be 1-64 characters of letters, digits, '.', '_' or '-'"
            )));
        }
        if v.len() > 256 || v.contains('\0') {
            return Err(ApiError::bad_request(format!(
                "metadata value of {k:?} must be at most 256 bytes without NUL"
            )));
        }
    }
    Ok(())
}

fn derive_title(prompt: &str, skill: Option<&str>) -> String {
    let first = prompt
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or_default();
    let base = if first.is_empty() {
        skill.unwrap_or("Untitled run")
    } else {
        first
    };
    let mut title: String = base.chars().take(80).collect();
    if base.chars().count() > 80 {
        title.push('…');
    }
    title
}

/// Load a run the caller may see; anything else is 404 (no existence leak).
pub(crate) async fn visible_run(
    state: &AppState,
    principal: &Principal,
    run_id: &str,
) -> ApiResult<Run> {
    if let Principal::Key(k) = principal
        && k.kind == oz_store::KeyKind::Worker
    {
        return Err(ApiError::forbidden(
            "worker keys can only open the worker WebSocket; use a team API key",
        ));
    }
    match state.store.get_run(run_id).await? {
        Some(run) if principal.can_access_run(&run) => Ok(run),
        _ => Err(ApiError::not_found(format!("no run with id {run_id:?}"))),
    }
}

pub async fn get(
    State(state): State<AppState>,
    principal: Principal,
    Path(run_id): Path<String>,
) -> ApiResult<Json<RunItem>> {
    let run = visible_run(&state, &principal, &run_id).await?;
    Ok(Json(run_item(&state.hub, &run, &mut WaitingReasons::new())))
}

pub async fn cancel(
    State(state): State<AppState>,
    principal: Principal,
    Path(run_id): Path<String>,
) -> ApiResult<impl IntoResponse> {
    principal.require_team()?;
    let run = visible_run(&state, &principal, &run_id).await?;
    let now = crate::now();
    match run.state {
        s if s.is_terminal() => Err(ApiError::bad_request(format!(
            "the run already ended ({s}); there is nothing to cancel"
        ))),
        RunState::Queued => {
            let patch = RunPatch {
                status_message: Some(Some(StatusMessage::info(
                    "cancelled before a worker picked it up",
                ))),
                ended_at: Some(Some(now.clone())),
                token_hash: Some(None),
                cancel_requested_at: Some(Some(now.clone())),
                ..Default::default()
            };
            match state
                .store
                .transition(
                    &run_id,
                    &[RunState::Queued],
                    RunState::Cancelled,
                    patch,
                    &now,
                )
                .await?
            {
                Some(_) => {
                    tracing::info!(run_id, "queued run cancelled");
                    state.hub.notify_log_readers(&run_id);
                    Ok(Json(json!(run_id)))
                }
                None => Err(pending_conflict()),
            }
        }
        RunState::Pending => Err(pending_conflict()),
        _ => {
            if run.cancel_requested_at.is_none() {
                let patch = RunPatch {
                    cancel_requested_at: Some(Some(now.clone())),
                    status_message: Some(Some(StatusMessage::info(
                        "cancellation requested; waiting for the worker to stop the run",
                    ))),
                    ..Default::default()
                };
                state
                    .store
                    .patch_run(
                        &run_id,
                        &[RunState::Claimed, RunState::Inprogress],
                        patch,
                        &now,
                    )
                    .await?;
            }
            let delivered = state.hub.request_cancel(&run);
            tracing::info!(run_id, delivered, "cancellation sent to the worker");
            Ok(Json(json!(run_id)))
        }
    }
}

fn pending_conflict() -> ApiError {
    ApiError::conflict(
        "the run is being handed to a worker right now; retry the cancellation in a moment",
    )
}

/// Body of `POST /agent/runs/{id}/report` (ours): what the agent runner
/// tells about its run.
#[derive(Debug, Default, Deserialize, Serialize)]
struct Report {
    #[serde(default)]
    state: Option<String>,
    #[serde(default)]
    status_message: Option<String>,
    #[serde(default)]
    artifact: Option<Value>,
}

pub async fn report(
    State(state): State<AppState>,
    principal: Principal,
    Path(run_id): Path<String>,
    body: Bytes,
) -> ApiResult<Json<RunItem>> {
    let run = visible_run(&state, &principal, &run_id).await?;
    let r: Report = super::json_body(&body)?;
    let now = crate::now();
    let mut current = run;
    if let Some(s) = r.state.as_deref() {
        if s != "INPROGRESS" {
            return Err(ApiError::bad_request(
                "state may only be INPROGRESS; the worker reports the final state",
            ));
        }
        let patch = RunPatch {
            started_at: Some(Some(now.clone())),
            ..Default::default()
        };
        if let Some(run) = state
            .store
            .transition(
                &run_id,
                &[RunState::Pending, RunState::Claimed],
                RunState::Inprogress,
                patch,
                &now,
            )
            .await?
        {
            current = run;
        } else if current.state != RunState::Inprogress {
            return Err(ApiError::conflict(format!(
                "the run is {}; it cannot become INPROGRESS",
                current.state
            )));
        }
    }
    if let Some(msg) = r.status_message.filter(|m| !m.trim().is_empty()) {
        let patch = RunPatch {
            status_message: Some(Some(StatusMessage::info(msg))),
            ..Default::default()
        };
        let live = [RunState::Pending, RunState::Claimed, RunState::Inprogress];
        if let Some(run) = state.store.patch_run(&run_id, &live, patch, &now).await? {
            current = run;
        }
    }
    if let Some(artifact) = r.artifact {
        let artifact = validate_artifact(artifact, &now)?;
        if let Some(run) = state.store.add_artifact(&run_id, artifact, &now).await? {
            current = run;
        }
    }
    Ok(Json(run_item(
        &state.hub,
        &current,
        &mut WaitingReasons::new(),
    )))
}

/// An artifact as `RunItem.artifacts` holds it: a known `artifact_type`, a
/// `data` object with the fields strict SDK clients require, `created_at`
/// filled in when missing.
fn validate_artifact(mut a: Value, now: &str) -> ApiResult<Value> {
    let Some(obj) = a.as_object_mut() else {
        return Err(ApiError::bad_request("artifact must be a JSON object"));
    };
    let kind = obj
        .get("artifact_type")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let required: &[&str] = match kind.as_str() {
        "PULL_REQUEST" => &["url", "branch"],
        "FILE" => &["artifact_uid", "filename", "filepath", "mime_type"],
        "SCREENSHOT" => &["artifact_uid", "mime_type"],
        "PLAN" => &["document_uid"],
        "EXTERNAL_REFERENCE" => &["reference_type", "url"],
        _ => {
            return Err(ApiError::bad_request(
                "artifact_type must be one of PLAN, PULL_REQUEST, SCREENSHOT, FILE, EXTERNAL_REFERENCE",
            ));
        }
    };
    let Some(data) = obj.get("data").and_then(Value::as_object) else {
        return Err(ApiError::bad_request("artifact data must be a JSON object"));
    };
    for field in required {
        if !data.get(*field).is_some_and(Value::is_string) {
            return Err(ApiError::bad_request(format!(
                "a {kind} artifact needs data.{field} as a string"
            )));
        }
    }
    match obj.get("created_at").and_then(Value::as_str) {
        Some(t) if oz_store::parse_ts(t).is_some() => {}
        Some(_) => {
            return Err(ApiError::bad_request(
                "artifact created_at must be an RFC 3339 timestamp",
            ));
        }
        None => {
            obj.insert("created_at".into(), json!(now));
        }
    }
    Ok(a)
}

/// The API's view of a run. A QUEUED run's status says why it waits now
/// (see [`crate::hub::Hub::queued_status`]).
pub fn run_item(hub: &Hub, run: &Run, seen: &mut WaitingReasons) -> RunItem {
    RunItem {
        run_id: run.run_id.clone(),
        task_id: run.run_id.clone(),
        state: run.state,
        prompt: run.prompt.clone(),
        title: run.title.clone(),
        created_at: run.created_at.clone(),
        updated_at: run.updated_at.clone(),
        started_at: run.started_at.clone(),
        agent_config: Some(run.config.clone()),
        artifacts: (!run.artifacts.is_empty()).then(|| run.artifacts.clone()),
        execution_location: Some("REMOTE".into()),
        is_run_type_cancellable: Some(true),
        is_sandbox_running: Some(run.state.is_active()),
        metadata: (!run.metadata.is_empty()).then(|| run.metadata.clone()),
        run_time: run_time(run),
        scope: Some(Scope {
            kind: "Team".into(),
            uid: Some(run.team_id.clone()),
        }),
        source: Some(run.source.clone()),
        status_message: match run.state {
            RunState::Queued => hub.queued_status(run, seen),
            _ => run.status_message.clone(),
        },
        agent_skill: run.skill_spec.as_deref().map(agent_skill),
        conversation_id: run.conversation_id.clone(),
        session_id: run.execution_id.clone().filter(|_| run.state.is_active()),
        creator: run.creator.clone(),
        executor: run.executor.clone(),
        parent_run_id: run.parent_run_id.clone(),
        schedule: run.schedule.clone(),
        execution_prompt: run.execution_prompt.clone(),
    }
}

/// `RunItem.agent_skill` of a skill spec.
fn agent_skill(spec: &str) -> Value {
    json!({"name": super::skills::skill_name(spec), "full_path": spec})
}

/// ISO-8601 duration from start to end (or now while running).
fn run_time(run: &Run) -> Option<String> {
    let start = oz_store::parse_ts(run.started_at.as_deref()?)?;
    let end = match run.ended_at.as_deref() {
        Some(e) => oz_store::parse_ts(e)?,
        None => chrono::Utc::now(),
    };
    Some(iso_duration((end - start).num_seconds().max(0)))
}

/// `PT2M30S`: ISO-8601 with the zero parts left out (`PT0S` for nothing).
fn iso_duration(secs: i64) -> String {
    let (h, m, s) = (secs / 3600, (secs % 3600) / 60, secs % 60);
    let mut out = String::from("PT");
    if h > 0 {
        out.push_str(&format!("{h}H"));
    }
    if m > 0 {
        out.push_str(&format!("{m}M"));
    }
    if s > 0 || (h == 0 && m == 0) {
        out.push_str(&format!("{s}S"));
    }
    out
}

/// Opaque cursor: the keyset position plus the sort it belongs to.
#[derive(Serialize, Deserialize)]
struct CursorToken {
    v: String,
    id: String,
    s: String,
}

fn sort_key(by: SortBy, order: SortOrder) -> String {
    format!("{by:?}/{order:?}")
}

pub async fn list(
    State(state): State<AppState>,
    principal: Principal,
    RawQuery(raw): RawQuery,
) -> ApiResult<Json<RunList>> {
    let key = principal.require_team()?;
    let mut q = RunQuery {
        team_id: key.team_id.clone(),
        limit: DEFAULT_LIMIT,
        ..Default::default()
    };
    let mut cursor: Option<String> = None;
    let mut only_remote = true;
    let raw = raw.unwrap_or_default();
    for (k, v) in url::form_urlencoded::parse(raw.as_bytes()) {
        let v = v.into_owned();
        match k.as_ref() {
            "limit" => {
                q.limit = v
                    .parse::<u32>()
                    .ok()
                    .filter(|n| (1..=MAX_LIMIT).contains(n))
                    .ok_or_else(|| {
                        ApiError::bad_request(format!(
                            "limit must be an integer from 1 to {MAX_LIMIT}"
                        ))
                    })?;
            }
            "cursor" => cursor = Some(v),
            "state" => {
                q.states.push(RunState::parse(&v).ok_or_else(|| {
                    ApiError::bad_request(format!("state {v:?} is not a run state"))
                })?)
            }
            "source" => q.source = Some(v),
            "created_after" => q.created_after = Some(time_param("created_after", &v)?),
            "created_before" => q.created_before = Some(time_param("created_before", &v)?),
            "updated_after" => q.updated_after = Some(time_param("updated_after", &v)?),
            "name" => q.name = Some(v),
            "q" => q.q = Some(v).filter(|s| !s.is_empty()),
            "model_id" => q.model_id = Some(v),
            "schedule_id" => q.schedule_id = Some(v),
            "skill" | "skill_spec" => q.skill_spec = Some(v),
            "environment_id" => {
                q.environment_id = Some(if v == "empty-environment" {
                    None
                } else {
                    Some(v)
                })
            }
            "worker_host" => q.worker_host = Some(v),
            "creator" => q.creator = Some(v),
            "executor" => q.executor = Some(v),
            "factory_uid" => q.factory_uid = Some(v),
            "automation_id" => q.metadata.push(("automation_id".to_owned(), v)),
            "execution_location" => match v.as_str() {
                // Every run of this server runs on a self-hosted worker.
                "REMOTE" => {}
                "LOCAL" => only_remote = false,
                _ => {
                    return Err(ApiError::bad_request(format!(
                        "execution_location {v:?} is not LOCAL or REMOTE"
                    )));
                }
            },
            "artifact_type" => {
                if !ARTIFACT_TYPES.contains(&v.as_str()) {
                    return Err(ApiError::bad_request(format!(
                        "artifact_type {v:?} is not one of {}",
                        ARTIFACT_TYPES.join(", ")
                    )));
                }
                q.artifact_type = Some(v);
            }
            "ancestor_run_id" => {
                // Must exist and be visible, as documented.
                if state
                    .store
                    .get_run(&v)
                    .await?
                    .is_none_or(|r| r.team_id != key.team_id)
                {
                    return Err(ApiError::bad_request(format!(
                        "ancestor_run_id {v:?} is not a run of this team"
                    )));
                }
                q.ancestor_run_id = Some(v);
            }
            "sort_by" => {
                q.sort_by = match v.as_str() {
                    "updated_at" => SortBy::UpdatedAt,
                    "created_at" => SortBy::CreatedAt,
                    "title" => SortBy::Title,
                    "agent" => SortBy::Agent,
                    _ => {
                        return Err(ApiError::bad_request(format!(
                            "sort_by {v:?} is not one of updated_at, created_at, title, agent"
                        )));
                    }
                }
            }
            "sort_order" => {
                q.sort_order = match v.as_str() {
                    "asc" => SortOrder::Asc,
                    "desc" => SortOrder::Desc,
                    _ => {
                        return Err(ApiError::bad_request(format!(
                            "sort_order {v:?} is not asc or desc"
                        )));
                    }
                }
            }
            other => {
                if let Some(mk) = other
                    .strip_prefix("metadata[")
                    .and_then(|r| r.strip_suffix(']'))
                {
                    q.metadata.push((mk.to_owned(), v));
                }
                // Other documented filters have nothing to match here yet.
            }
        }
    }
    if q.metadata.len() > 5 {
        return Err(ApiError::bad_request(
            "at most 5 metadata filters are allowed",
        ));
    }
    let sort = sort_key(q.sort_by, q.sort_order);
    if let Some(c) = cursor {
        let token: CursorToken = hex::decode(&c)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or_else(|| ApiError::bad_request("cursor is not valid; start again without it"))?;
        if token.s != sort {
            return Err(ApiError::bad_request(
                "cursor belongs to another sort order; start again without it",
            ));
        }
        q.after = Some(Cursor {
            value: token.v,
            run_id: token.id,
        });
    }
    let limit = q.limit;
    q.limit = limit + 1;
    let mut runs = if only_remote {
        state.store.list_runs(&q).await?
    } else {
        Vec::new()
    };
    let has_next = runs.len() > limit as usize;
    runs.truncate(limit as usize);
    let next_cursor = if has_next {
        runs.last().map(|last| {
            let token = CursorToken {
                v: oz_store::cursor_value(last, q.sort_by),
                id: last.run_id.clone(),
                s: sort.clone(),
            };
            hex::encode(serde_json::to_vec(&token).unwrap_or_default())
        })
    } else {
        None
    };
    Ok(Json(RunList {
        runs: {
            let mut seen = WaitingReasons::new();
            runs.iter()
                .map(|r| run_item(&state.hub, r, &mut seen))
                .collect()
        },
        page_info: PageInfo {
            has_next_page: has_next,
            next_cursor,
        },
    }))
}

fn time_param(name: &str, v: &str) -> ApiResult<String> {
    oz_store::parse_ts(v)
        .map(oz_store::ts)
        .ok_or_else(|| ApiError::bad_request(format!("{name} {v:?} is not an RFC 3339 timestamp")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn titles_come_from_the_first_prompt_line() {
        assert_eq!(derive_title("\n  fix the bug \nmore", None), "fix the bug");
        assert_eq!(derive_title("", Some("o/r:SKILL.md")), "o/r:SKILL.md");
        let long = "x".repeat(100);
        assert_eq!(derive_title(&long, None).chars().count(), 81);
    }

    #[test]
    fn run_time_is_compact_iso_8601() {
        assert_eq!(iso_duration(0), "PT0S");
        assert_eq!(iso_duration(150), "PT2M30S");
        assert_eq!(iso_duration(3600), "PT1H");
        assert_eq!(iso_duration(3661), "PT1H1M1S");
    }

    #[test]
    fn metadata_rules() {
        let ok: BTreeMap<String, String> = [("ticket_id".to_owned(), "VIS-1".to_owned())].into();
        assert!(validate_metadata(&ok).is_ok());
        let bad: BTreeMap<String, String> = [("bad key".to_owned(), "v".to_owned())].into();
        assert!(validate_metadata(&bad).is_err());
        let many: BTreeMap<String, String> =
            (0..21).map(|i| (format!("k{i}"), "v".to_owned())).collect();
        assert!(validate_metadata(&many).is_err());
    }
}
