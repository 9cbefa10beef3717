//! A run's log (extension `logs`): pages, and a Server-Sent Events stream.
//!
//! - `GET /agent/runs/{id}/logs?since_seq=N&limit=M&phase=P` answers
//!   `{"lines", "next_seq", "has_more", "complete", "state"}`. A reader is
//!   done when `complete` is true and `has_more` false; otherwise it asks
//!   again with `since_seq=next_seq`.
//! - `GET /agent/runs/{id}/logs/stream` sends the lines after
//!   `Last-Event-ID` (or `since_seq`) as `event: line` with `id: <seq>`,
//!   then live lines, then `event: end` once the run ended and its log is
//!   complete ([`crate::logs::is_complete`]), and closes.

use std::convert::Infallible;
use std::time::Duration;

use axum::Json;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use oz_protocol::api::RunState;
use oz_store::{LogLine, LogPhase, LogQuery, LogRecord};
use serde::Serialize;
use serde_json::json;

use crate::auth::Principal;
use crate::error::{ApiError, ApiResult};
use crate::logs::{FollowItem, Follower};
use crate::state::AppState;

const DEFAULT_LIMIT: u32 = 1000;
const MAX_LIMIT: u32 = 5000;
/// A comment line this often keeps proxies from closing a quiet stream.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// `GET /agent/runs/{id}/logs` answer.
#[derive(Debug, Serialize)]
pub struct LogPage {
    /// In seq order.
    pub lines: Vec<LogLine>,
    /// `since_seq` for the next page: the seq of the last line here, or the
    /// `since_seq` asked for when there is none.
    pub next_seq: u64,
    /// More lines are stored after this page.
    pub has_more: bool,
    /// The run ended and every line of it is stored: once `has_more` is
    /// false, nothing will be added.
    pub complete: bool,
    pub state: RunState,
}

struct LogParams {
    since_seq: u64,
    limit: u32,
    phase: Option<LogPhase>,
}

/// `since_seq`, `limit` and `phase`; other parameters are ignored.
fn params(raw: Option<String>) -> ApiResult<LogParams> {
    let mut p = LogParams {
        since_seq: 0,
        limit: DEFAULT_LIMIT,
        phase: None,
    };
    let raw = raw.unwrap_or_default();
    for (k, v) in url::form_urlencoded::parse(raw.as_bytes()) {
        match k.as_ref() {
            "since_seq" => {
                p.since_seq = v.parse::<u64>().map_err(|_| {
                    ApiError::bad_request(format!("since_seq {v:?} is not a non-negative integer"))
                })?;
            }
            "limit" => {
                p.limit = v
                    .parse::<u32>()
                    .ok()
                    .filter(|n| (1..=MAX_LIMIT).contains(n))
                    .ok_or_else(|| {
                        ApiError::bad_request(format!(
                            "limit must be an integer from 1 to {MAX_LIMIT}"
                        ))
                    })?;
            }
            "phase" => {
                p.phase = Some(LogPhase::parse(&v).ok_or_else(|| {
                    ApiError::bad_request(format!(
                        "phase {v:?} is not one of setup, agent, teardown"
                    ))
                })?);
            }
            _ => {}
        }
    }
    Ok(p)
}

pub async fn page(
    State(state): State<AppState>,
    principal: Principal,
    Path(run_id): Path<String>,
    RawQuery(raw): RawQuery,
) -> ApiResult<Json<LogPage>> {
    let run = super::runs::visible_run(&state, &principal, &run_id).await?;
    let p = params(raw)?;
    // Completeness first: when it holds, every line is stored already, so
    // the read below cannot miss one.
    let complete = crate::logs::is_complete(state.store.as_ref(), &run).await?;
    let mut lines = state
        .store
        .read_logs(&LogQuery {
            run_id: run.run_id.clone(),
            after_seq: p.since_seq,
            limit: p.limit + 1,
            phase: p.phase,
        })
        .await?;
    let has_more = lines.len() > p.limit as usize;
    lines.truncate(p.limit as usize);
    Ok(Json(LogPage {
        next_seq: lines.last().map_or(p.since_seq, |l| l.seq),
        lines: lines.iter().map(LogRecord::to_line).collect(),
        has_more,
        complete,
        state: run.state,
    }))
}

pub async fn stream(
    State(state): State<AppState>,
    principal: Principal,
    Path(run_id): Path<String>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let run = super::runs::visible_run(&state, &principal, &run_id).await?;
    let p = params(raw)?;
    // A reconnecting EventSource sends the id of the last event it got.
    let after = match headers
        .get("last-event-id")
        .map(|v| v.to_str().map(str::trim))
    {
        None | Some(Ok("")) => p.since_seq,
        Some(Ok(v)) => v.parse::<u64>().map_err(|_| {
            ApiError::bad_request(format!(
                "Last-Event-ID {v:?} is not a log seq (a non-negative integer)"
            ))
        })?,
        Some(Err(_)) => {
            return Err(ApiError::bad_request(
                "Last-Event-ID is not a log seq (a non-negative integer)",
            ));
        }
    };
    // Subscribe before the follower reads anything.
    let sub = state.hub.subscribe_logs(&run.run_id);
    let follower = Follower::new(state.store.clone(), sub, &run.run_id, after, p.phase);
    let events = futures_util::stream::unfold(follower, |mut f| async move {
        let item = f.next().await?;
        Some((Ok::<Event, Infallible>(event(item)), f))
    })
    .take_until(state.shutdown.clone().cancelled_owned());
    let mut resp = Sse::new(events)
        .keep_alive(KeepAlive::new().interval(KEEP_ALIVE))
        .into_response();
    // Tell nginx and friends not to buffer the stream.
    resp.headers_mut()
        .insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(resp)
}

fn event(item: FollowItem) -> Event {
    match item {
        FollowItem::Line(line) => Event::default()
            .event("line")
            .id(line.seq.to_string())
            .data(serde_json::to_string(&line).unwrap_or_default()),
        FollowItem::End {
            state,
            status_message,
        } => Event::default()
            .event("end")
            .data(json!({ "state": state, "status_message": status_message }).to_string()),
    }
}
