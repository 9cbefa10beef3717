//! `GET /api/v1/selfhosted/worker/ws?worker_id=…`: the worker WebSocket.
//!
//! Speaks the official v1 protocol; `server_hello` announces our
//! extensions and is ignored by workers that do not know it.

use std::net::SocketAddr;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, Query, State};
use axum::response::Response;
use futures_util::stream::SplitStream;
use futures_util::{FutureExt, SinkExt, StreamExt};
use oz_protocol::WorkerMessage;
use oz_protocol::logs::LogEnd;
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use crate::auth::Principal;
use crate::error::ApiError;
use crate::hub::Hub;
use crate::state::AppState;

/// A worker pings every 30 s; silence for this long means it is gone.
const READ_TIMEOUT: Duration = Duration::from_secs(90);
const PING_EVERY: Duration = Duration::from_secs(30);
/// Initial read buffer of each connection. tungstenite's default (128 KiB)
/// is allocated up front, and was 93% of the server's memory with 1,000
/// idle workers; a larger frame (a log batch) grows the buffer as needed.
/// The write buffer is left alone: it is allocated only as frames are
/// written, and every batch of queued frames flushes it.
const READ_BUFFER: usize = 8 * 1024;

#[derive(Deserialize)]
pub struct WsQuery {
    worker_id: Option<String>,
}

pub async fn worker_ws(
    State(state): State<AppState>,
    principal: Principal,
    Query(q): Query<WsQuery>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    upgrade: WebSocketUpgrade,
) -> Result<Response, ApiError> {
    if matches!(principal, Principal::RunToken { .. }) {
        return Err(ApiError::forbidden(
            "a run token cannot open the worker WebSocket",
        ));
    }
    let worker_id = q
        .worker_id
        .filter(|w| !w.trim().is_empty())
        .ok_or_else(|| ApiError::bad_request("the worker_id query parameter is required"))?;
    let stop = state.shutdown.clone();
    let team_id = principal.team_id().to_owned();
    Ok(upgrade
        .read_buffer_size(READ_BUFFER)
        .on_upgrade(move |socket| serve(state, socket, worker_id, team_id, addr.to_string(), stop)))
}

async fn serve(
    state: AppState,
    socket: WebSocket,
    worker_id: String,
    team_id: String,
    remote: String,
    stop: CancellationToken,
) {
    let hub = state.hub.clone();
    let (conn_id, mut rx, greetings) = hub.connect(&worker_id, &team_id, remote.clone());
    tracing::info!(worker_id, connection = %conn_id, remote, "worker connected");
    let (mut sink, mut stream) = socket.split();
    for g in greetings {
        if sink.send(Message::text(g)).await.is_err() {
            hub.disconnect(&conn_id);
            return;
        }
    }
    if let Err(e) = hub.after_connect(&conn_id).await {
        tracing::error!(error = %e, "cannot re-attach runs to the connection");
    }
    let mut ping = tokio::time::interval(PING_EVERY);
    ping.tick().await;
    let mut deadline = tokio::time::Instant::now() + READ_TIMEOUT;
    loop {
        tokio::select! {
            frame = stream.next() => {
                deadline = tokio::time::Instant::now() + READ_TIMEOUT;
                if !on_frames(&hub, &conn_id, &worker_id, frame, &mut stream).await {
                    break;
                }
            }
            out = rx.recv() => match out {
                Some(text) => {
                    // What is queued together goes out with one write.
                    let mut sent = sink.feed(Message::text(text)).await.is_ok();
                    while sent && let Ok(text) = rx.try_recv() {
                        sent = sink.feed(Message::text(text)).await.is_ok();
                    }
                    if !sent || sink.flush().await.is_err() {
                        break;
                    }
                }
                None => break,
            },
            _ = ping.tick() => if sink.send(Message::Ping(Default::default())).await.is_err() { break },
            _ = tokio::time::sleep_until(deadline) => {
                tracing::warn!(worker_id, "no frame from the worker for {}s; dropping the connection", READ_TIMEOUT.as_secs());
                break;
            }
            _ = stop.cancelled() => {
                let _ = sink.send(Message::Close(Some(CloseFrame { code: 1001, reason: "server shutting down".into() }))).await;
                break;
            }
        }
    }
    hub.disconnect(&conn_id);
}

/// A frame read from the worker, as far as the hub is concerned.
enum Read {
    Frame(WorkerMessage),
    /// Nothing for the hub (a ping, a pong, a frame that does not decode).
    Skip,
    /// The connection is over.
    End,
}

fn read(worker_id: &str, frame: Option<Result<Message, axum::Error>>) -> Read {
    match frame {
        Some(Ok(Message::Text(text))) => match WorkerMessage::decode(text.as_str()) {
            Ok(msg) => Read::Frame(msg),
            Err(e) => {
                tracing::warn!(worker_id, error = %e, "ignoring a frame from the worker");
                Read::Skip
            }
        },
        Some(Ok(Message::Close(_))) | None | Some(Err(_)) => Read::End,
        Some(Ok(_)) => Read::Skip,
    }
}

/// Hand `frame` to the hub; false when the connection must end. A worker
/// sends a task's `log_end` right before its result: when the result has
/// already arrived too, the hub stores both with one transition. Only
/// frames already read are looked at; nothing waits for the next one.
async fn on_frames(
    hub: &Hub,
    conn_id: &str,
    worker_id: &str,
    frame: Option<Result<Message, axum::Error>>,
    stream: &mut SplitStream<WebSocket>,
) -> bool {
    let mut msg = match read(worker_id, frame) {
        Read::Frame(msg) => msg,
        Read::Skip => return true,
        Read::End => return false,
    };
    loop {
        let WorkerMessage::LogEnd(end) = msg else {
            return record(hub, conn_id, worker_id, msg).await;
        };
        let next = match stream.next().now_or_never() {
            Some(frame) => read(worker_id, frame),
            None => Read::Skip,
        };
        match next {
            Read::Frame(result) if result.is_terminal() && result.task_id() == end.task_id => {
                return together(hub, conn_id, worker_id, end, result).await;
            }
            Read::Frame(other) => {
                if !record(hub, conn_id, worker_id, WorkerMessage::LogEnd(end)).await {
                    return false;
                }
                msg = other;
            }
            Read::Skip => return record(hub, conn_id, worker_id, WorkerMessage::LogEnd(end)).await,
            Read::End => {
                record(hub, conn_id, worker_id, WorkerMessage::LogEnd(end)).await;
                return false;
            }
        }
    }
}

/// One frame to the hub; false when the connection must end.
async fn record(hub: &Hub, conn_id: &str, worker_id: &str, msg: WorkerMessage) -> bool {
    let is_log = matches!(msg, WorkerMessage::LogLines(_));
    if let Err(e) = hub.on_frame(conn_id, worker_id, msg).await {
        tracing::error!(error = %e, "cannot record a worker frame");
        // A later ack would also cover the lines that were not stored
        // (acks are cumulative): drop the connection so the worker sends
        // every unacknowledged line again after reconnecting.
        if is_log {
            return false;
        }
    }
    true
}

/// A `log_end` with its task's terminal frame; see [`Hub::on_log_end_and_result`].
async fn together(
    hub: &Hub,
    conn_id: &str,
    worker_id: &str,
    end: LogEnd,
    result: WorkerMessage,
) -> bool {
    if let Err(e) = hub
        .on_log_end_and_result(conn_id, worker_id, end, result)
        .await
    {
        tracing::error!(error = %e, "cannot record a worker frame");
    }
    true
}
