//! `/api/v1/api-keys` (ours): admin keys manage team and worker keys.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use oz_store::{ApiKey, KeyKind};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::auth::Principal;
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;

#[derive(Debug, Default, Deserialize)]
struct CreateKey {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    kind: Option<String>,
}

/// A key as listed: never the secret.
#[derive(Debug, Serialize)]
pub struct KeyView {
    pub id: String,
    pub name: String,
    pub kind: &'static str,
    pub prefix: String,
    pub created_at: String,
    pub last_used_at: Option<String>,
    pub revoked_at: Option<String>,
}

impl From<&ApiKey> for KeyView {
    fn from(k: &ApiKey) -> Self {
        KeyView {
            id: k.id.clone(),
            name: k.name.clone(),
            kind: k.kind.as_str(),
            prefix: k.prefix.clone(),
            created_at: k.created_at.clone(),
            last_used_at: k.last_used_at.clone(),
            revoked_at: k.revoked_at.clone(),
        }
    }
}

pub async fn create(
    State(state): State<AppState>,
    principal: Principal,
    body: Bytes,
) -> ApiResult<impl IntoResponse> {
    let admin = principal.require_admin()?;
    let req: CreateKey = super::json_body(&body)?;
    let name = req
        .name
        .filter(|n| !n.trim().is_empty())
        .ok_or_else(|| ApiError::bad_request("name is required"))?;
    let kind_text = req.kind.unwrap_or_else(|| "team".into());
    let kind = KeyKind::parse(&kind_text).ok_or_else(|| {
        ApiError::bad_request(format!(
            "kind {kind_text:?} is not one of team, worker, admin"
        ))
    })?;
    let (key, secret) =
        crate::keys::create_key(state.store.as_ref(), &admin.team_id, &name, kind).await?;
    let mut view = serde_json::to_value(KeyView::from(&key)).unwrap_or_default();
    view["key"] = json!(secret);
    Ok((StatusCode::CREATED, Json(view)))
}

pub async fn list(
    State(state): State<AppState>,
    principal: Principal,
) -> ApiResult<Json<serde_json::Value>> {
    let admin = principal.require_admin()?;
    let keys = state.store.list_api_keys(&admin.team_id).await?;
    let views: Vec<KeyView> = keys.iter().map(KeyView::from).collect();
    Ok(Json(json!({ "api_keys": views })))
}

pub async fn revoke(
    State(state): State<AppState>,
    principal: Principal,
    Path(key_id): Path<String>,
) -> ApiResult<StatusCode> {
    let admin = principal.require_admin()?;
    if admin.id == key_id {
        return Err(ApiError::bad_request(
            "an admin key cannot revoke itself; use another admin key",
        ));
    }
    if state
        .store
        .revoke_api_key(&admin.team_id, &key_id, &crate::now())
        .await?
    {
        state.keys.clear();
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found(format!(
            "no live API key with id {key_id:?}"
        )))
    }
}
