//! Artifacts with content (FILE, SCREENSHOT, PLAN) and handoff attachments.
//!
//! The agent runner uploads them with its run token (ours:
//! `POST /agent/runs/{id}/artifacts`, `POST /agent/runs/{id}/handoff/attachments`);
//! the SDK reads them (`GET /agent/artifacts/{uid}`,
//! `GET /agent/runs/{id}/handoff/attachments`), which answer with
//! time-limited signed download URLs served without a key.
//!
//! A URL is signed with HMAC-SHA256 over `kind:id:expires` under a key kept
//! in the database, so every replica (and a restarted server) accepts the
//! URLs of the others until they expire.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use oz_store::{Artifact, HandoffAttachment};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::api::runs::visible_run;
use crate::auth::Principal;
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;

/// Largest artifact or attachment accepted.
pub const MAX_UPLOAD_BYTES: usize = 32 * 1024 * 1024;
/// How long a download URL stays valid.
const URL_LIFETIME: chrono::Duration = chrono::Duration::minutes(15);
const HASH_BLOCK: usize = 64;

/// HMAC-SHA256 (RFC 2104).
fn hmac(key: &[u8], message: &[u8]) -> [u8; 32] {
    let mut block = [0u8; HASH_BLOCK];
    if key.len() > HASH_BLOCK {
        block[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        block[..key.len()].copy_from_slice(key);
    }
    let pad = |byte: u8| block.map(|b| b ^ byte);
    let inner = Sha256::new()
        .chain_update(pad(0x36))
        .chain_update(message)
        .finalize();
    Sha256::new()
        .chain_update(pad(0x5c))
        .chain_update(inner)
        .finalize()
        .into()
}

fn signature(state: &AppState, kind: &str, id: &str, expires: i64) -> String {
    hex::encode(hmac(
        &state.url_key,
        format!("{kind}:{id}:{expires}").as_bytes(),
    ))
}

/// An absolute download URL for `path` (under `/api/v1`) and its expiry.
fn signed_url(state: &AppState, kind: &str, id: &str, path: &str) -> (String, String) {
    let expires_at = chrono::Utc::now() + URL_LIFETIME;
    let expires = expires_at.timestamp();
    let sig = signature(state, kind, id, expires);
    (
        format!(
            "{}{path}?expires={expires}&signature={sig}",
            state.api_base_url()
        ),
        oz_store::ts(expires_at),
    )
}

/// Check `expires` and `signature` of a download request.
fn verify(state: &AppState, kind: &str, id: &str, raw: Option<&str>) -> ApiResult<()> {
    let denied = || {
        ApiError::forbidden(
            "the download link is invalid or has expired; ask the API for a fresh one",
        )
    };
    let mut expires = None;
    let mut sig = None;
    for (k, v) in url::form_urlencoded::parse(raw.unwrap_or_default().as_bytes()) {
        match k.as_ref() {
            "expires" => expires = v.parse::<i64>().ok(),
            "signature" => sig = Some(v.into_owned()),
            _ => {}
        }
    }
    let (Some(expires), Some(sig)) = (expires, sig) else {
        return Err(denied());
    };
    if expires < chrono::Utc::now().timestamp() {
        return Err(denied());
    }
    let expected = signature(state, kind, id, expires);
    if bool::from(expected.as_bytes().ct_eq(sig.as_bytes())) {
        Ok(())
    } else {
        Err(denied())
    }
}

fn query(raw: Option<&str>) -> Vec<(String, String)> {
    url::form_urlencoded::parse(raw.unwrap_or_default().as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

fn param<'a>(q: &'a [(String, String)], name: &str) -> Option<&'a str> {
    q.iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
        .filter(|v| !v.trim().is_empty())
}

/// The last component of a path, refusing names that are not plain files.
fn file_name(path: &str) -> ApiResult<String> {
    if path.chars().any(char::is_control) {
        return Err(ApiError::bad_request(format!(
            "{path:?} contains control characters"
        )));
    }
    let name = path.rsplit(['/', '\\']).next().unwrap_or_default();
    if name.is_empty() || name == "." || name == ".." {
        return Err(ApiError::bad_request(format!(
            "{path:?} does not end in a file name"
        )));
    }
    Ok(name.to_owned())
}

/// A MIME type that can be sent back as a `Content-Type` header.
fn mime_type(value: &str) -> ApiResult<String> {
    let ok = value
        .split_once('/')
        .is_some_and(|(kind, rest)| !kind.is_empty() && !rest.is_empty())
        && axum::http::HeaderValue::from_str(value).is_ok()
        && value.is_ascii()
        && !value.chars().any(char::is_control);
    if ok {
        Ok(value.to_owned())
    } else {
        Err(ApiError::bad_request(format!(
            "mime_type {value:?} is not a MIME type like text/plain"
        )))
    }
}

/// `POST /agent/runs/{id}/artifacts?artifact_type=&filename=&…` with the
/// raw content as the body. Answers 201 with the `RunItem.artifacts` entry.
pub async fn upload(
    State(state): State<AppState>,
    principal: Principal,
    Path(run_id): Path<String>,
    RawQuery(raw): RawQuery,
    body: Bytes,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let run = visible_run(&state, &principal, &run_id).await?;
    let q = query(raw.as_deref());
    let kind = param(&q, "artifact_type").unwrap_or("FILE");
    if !matches!(kind, "FILE" | "SCREENSHOT" | "PLAN") {
        return Err(ApiError::bad_request(format!(
            "artifact_type {kind:?} cannot be uploaded: use FILE, SCREENSHOT or PLAN (PULL_REQUEST and EXTERNAL_REFERENCE go through the report endpoint)"
        )));
    }
    if body.len() > MAX_UPLOAD_BYTES {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid_request",
            format!("artifacts are limited to {MAX_UPLOAD_BYTES} bytes"),
        ));
    }
    let filepath = param(&q, "filepath")
        .or(param(&q, "filename"))
        .map(str::to_owned)
        .or_else(|| (kind == "PLAN").then(|| "plan.md".to_owned()))
        .ok_or_else(|| ApiError::bad_request("filename (or filepath) is required"))?;
    let filename = file_name(param(&q, "filename").unwrap_or(&filepath))?;
    let default_mime = match kind {
        "PLAN" => "text/markdown",
        _ => "application/octet-stream",
    };
    let mime_type = mime_type(param(&q, "mime_type").unwrap_or(default_mime))?;
    if kind == "SCREENSHOT" && !mime_type.starts_with("image/") {
        return Err(ApiError::bad_request(
            "a SCREENSHOT needs an image/* mime_type",
        ));
    }
    if kind == "PLAN" && std::str::from_utf8(&body).is_err() {
        return Err(ApiError::bad_request("a PLAN must be UTF-8 markdown"));
    }
    let description = param(&q, "description").map(str::to_owned);
    let title = param(&q, "title").map(str::to_owned);
    let now = crate::now();
    let uid = uuid::Uuid::now_v7().to_string();
    let mut data = match kind {
        "FILE" => json!({
            "artifact_uid": uid, "filename": filename, "filepath": filepath,
            "mime_type": mime_type, "size_bytes": body.len(),
        }),
        "SCREENSHOT" => json!({ "artifact_uid": uid, "mime_type": mime_type }),
        _ => json!({ "artifact_uid": uid, "document_uid": uid }),
    };
    if let Some(d) = &description
        && kind != "PLAN"
    {
        data["description"] = json!(d);
    }
    if let Some(t) = &title
        && kind != "SCREENSHOT"
    {
        data["title"] = json!(t);
    }
    let entry = json!({ "artifact_type": kind, "created_at": now, "data": data });
    let artifact = Artifact {
        uid: uid.clone(),
        run_id: run.run_id.clone(),
        team_id: run.team_id.clone(),
        artifact_type: kind.to_owned(),
        filename,
        filepath,
        mime_type,
        description,
        title,
        size_bytes: body.len() as u64,
        created_at: now.clone(),
    };
    state
        .store
        .insert_artifact(artifact, body.to_vec(), entry.clone(), &now)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no run with id {run_id:?}")))?;
    tracing::info!(run_id, artifact_uid = %uid, kind, "artifact stored");
    Ok((StatusCode::CREATED, Json(entry)))
}

/// `GET /agent/artifacts/{uid}` (`AgentGetArtifactResponse`).
pub async fn get(
    State(state): State<AppState>,
    principal: Principal,
    Path(uid): Path<String>,
) -> ApiResult<Json<Value>> {
    let missing = || ApiError::not_found(format!("no artifact with uid {uid:?}"));
    let a = state.store.get_artifact(&uid).await?.ok_or_else(missing)?;
    // A run token reads its own run's artifacts only.
    let allowed = match &principal {
        Principal::Key(k) => k.kind != oz_store::KeyKind::Worker && k.team_id == a.team_id,
        Principal::RunToken { run_id, .. } => *run_id == a.run_id,
    };
    if !allowed {
        return Err(missing());
    }
    let data = match a.artifact_type.as_str() {
        "PLAN" => {
            let content = state
                .store
                .artifact_content(&uid)
                .await?
                .ok_or_else(missing)?;
            let mut d = json!({
                "content": String::from_utf8_lossy(&content),
                "content_type": a.mime_type,
                "document_uid": a.uid,
                "notebook_uid": a.uid,
            });
            if let Some(t) = &a.title {
                d["title"] = json!(t);
            }
            d
        }
        kind => {
            let (url, expires_at) = signed_url(
                &state,
                "artifact",
                &a.uid,
                &format!("/agent/artifacts/{}/download", a.uid),
            );
            let mut d = json!({
                "content_type": a.mime_type,
                "download_url": url,
                "expires_at": expires_at,
            });
            if let Some(desc) = &a.description {
                d["description"] = json!(desc);
            }
            if kind == "FILE" {
                d["filename"] = json!(a.filename);
                d["filepath"] = json!(a.filepath);
                d["size_bytes"] = json!(a.size_bytes);
                if let Some(t) = &a.title {
                    d["title"] = json!(t);
                }
            }
            d
        }
    };
    Ok(Json(json!({
        "artifact_type": a.artifact_type,
        "artifact_uid": a.uid,
        "created_at": a.created_at,
        "data": data,
    })))
}

/// `Content-Disposition` for any file name: an ASCII fallback and the exact
/// name as RFC 5987 `filename*`, so no stored name can make a header invalid.
fn disposition(filename: &str) -> String {
    let fallback: String = filename
        .chars()
        .map(|c| {
            if c.is_ascii_graphic() && c != '"' && c != '\\' || c == ' ' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let mut exact = String::new();
    for b in filename.bytes() {
        if b.is_ascii_alphanumeric() || b"!#$&+-.^_`|~".contains(&b) {
            exact.push(char::from(b));
        } else {
            exact.push_str(&format!("%{b:02X}"));
        }
    }
    format!("attachment; filename=\"{fallback}\"; filename*=UTF-8''{exact}")
}

fn download_response(content: Vec<u8>, mime: &str, filename: &str) -> Response {
    let disposition = disposition(filename);
    (
        [
            (header::CONTENT_TYPE, mime.to_owned()),
            (header::CONTENT_DISPOSITION, disposition),
            (header::CACHE_CONTROL, "private, no-store".to_owned()),
        ],
        content,
    )
        .into_response()
}

/// `GET /agent/artifacts/{uid}/download?expires=&signature=` (no key).
pub async fn download(
    State(state): State<AppState>,
    Path(uid): Path<String>,
    RawQuery(raw): RawQuery,
) -> ApiResult<Response> {
    verify(&state, "artifact", &uid, raw.as_deref())?;
    let a = state
        .store
        .get_artifact(&uid)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no artifact with uid {uid:?}")))?;
    let content = state
        .store
        .artifact_content(&uid)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no artifact with uid {uid:?}")))?;
    Ok(download_response(content, &a.mime_type, &a.filename))
}

/// `POST /agent/runs/{id}/handoff/attachments?filename=&mime_type=`: a file
/// of the current execution's handoff snapshot.
pub async fn upload_handoff(
    State(state): State<AppState>,
    principal: Principal,
    Path(run_id): Path<String>,
    RawQuery(raw): RawQuery,
    body: Bytes,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let run = visible_run(&state, &principal, &run_id).await?;
    let q = query(raw.as_deref());
    let filename = file_name(
        param(&q, "filename").ok_or_else(|| ApiError::bad_request("filename is required"))?,
    )?;
    if body.len() > MAX_UPLOAD_BYTES {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid_request",
            format!("attachments are limited to {MAX_UPLOAD_BYTES} bytes"),
        ));
    }
    let execution_id = run.execution_id.clone().ok_or_else(|| {
        ApiError::conflict("the run has no execution yet; upload handoff files while it runs")
    })?;
    let mime_type = param(&q, "mime_type").map(mime_type).transpose()?;
    let h = HandoffAttachment {
        id: uuid::Uuid::now_v7().to_string(),
        run_id: run.run_id.clone(),
        execution_id,
        filename: filename.clone(),
        mime_type: mime_type.clone(),
        size_bytes: body.len() as u64,
        created_at: crate::now(),
    };
    let id = h.id.clone();
    state.store.insert_handoff(h, body.to_vec()).await?;
    let mut out = json!({ "attachment_id": id, "filename": filename });
    if let Some(m) = mime_type {
        out["mime_type"] = json!(m);
    }
    Ok((StatusCode::CREATED, Json(out)))
}

/// `GET /agent/runs/{id}/handoff/attachments`: the files of the latest
/// ended execution (not the one running now), with fresh download URLs.
pub async fn list_handoff(
    State(state): State<AppState>,
    principal: Principal,
    Path(run_id): Path<String>,
) -> ApiResult<Json<Value>> {
    let run = visible_run(&state, &principal, &run_id).await?;
    let running = run
        .execution_id
        .as_deref()
        .filter(|_| run.state.is_active() || run.state == oz_store::RunState::Queued);
    let all = state.store.list_handoff(&run.run_id).await?;
    let latest = all
        .iter()
        .rev()
        .map(|h| h.execution_id.as_str())
        .find(|e| Some(*e) != running);
    let attachments: Vec<Value> = all
        .iter()
        .filter(|h| Some(h.execution_id.as_str()) == latest)
        .map(|h| {
            let (url, _) = signed_url(
                &state,
                "handoff",
                &h.id,
                &format!(
                    "/agent/runs/{}/handoff/attachments/{}/download",
                    run.run_id, h.id
                ),
            );
            let mut v = json!({
                "attachment_id": h.id,
                "download_url": url,
                "filename": h.filename,
            });
            if let Some(m) = &h.mime_type {
                v["mime_type"] = json!(m);
            }
            v
        })
        .collect();
    Ok(Json(json!({ "attachments": attachments })))
}

/// `GET /agent/runs/{id}/handoff/attachments/{aid}/download?expires=&signature=`.
pub async fn download_handoff(
    State(state): State<AppState>,
    Path((run_id, id)): Path<(String, String)>,
    RawQuery(raw): RawQuery,
) -> ApiResult<Response> {
    verify(&state, "handoff", &id, raw.as_deref())?;
    let missing = || ApiError::not_found(format!("no attachment {id:?} on run {run_id:?}"));
    let meta = state
        .store
        .list_handoff(&run_id)
        .await?
        .into_iter()
        .find(|h| h.id == id)
        .ok_or_else(missing)?;
    let content = state
        .store
        .handoff_content(&run_id, &id)
        .await?
        .ok_or_else(missing)?;
    let mime = meta
        .mime_type
        .unwrap_or_else(|| "application/octet-stream".to_owned());
    Ok(download_response(content, &mime, &meta.filename))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hmac_matches_rfc_4231() {
        // Test case 2 of RFC 4231.
        let mac = hmac(b"Jefe", b"what do ya want for nothing?");
        assert_eq!(
            hex::encode(mac),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        // Test case 6: a key longer than the block.
        let mac = hmac(
            &[0xaa; 131],
            b"Test Using Larger Than Block-Size Key - Hash Key First",
        );
        assert_eq!(
            hex::encode(mac),
            "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"
        );
    }

    #[test]
    fn any_file_name_makes_a_valid_header() {
        for name in ["report.txt", "résumé \"v2\".pdf", "a\\b;c.txt"] {
            let d = disposition(name);
            assert!(axum::http::HeaderValue::from_str(&d).is_ok(), "{d}");
        }
        assert_eq!(
            disposition("é.txt"),
            "attachment; filename=\"_.txt\"; filename*=UTF-8''%C3%A9.txt"
        );
        assert!(mime_type("text/plain").is_ok());
        assert!(mime_type("text/pl\nain").is_err());
        assert!(mime_type("plain").is_err());
        assert!(file_name("a\u{1}b.txt").is_err());
    }

    #[test]
    fn file_names_are_plain() {
        assert_eq!(file_name("out/report.txt").unwrap(), "report.txt");
        assert!(file_name("out/").is_err());
        assert!(file_name("..").is_err());
    }
}
