//! `oz-server`: the Oz control plane. It queues runs submitted over the REST
//! API, routes them to connected workers over the worker WebSocket, and
//! records their final state.
//!
//! Code map: [`api`] (one module per resource), [`ws`] (the worker
//! WebSocket), [`hub`] (connections, dispatcher, run life cycle),
//! [`auth`] (keys and run tokens), [`keys`] (key creation, bootstrap),
//! [`logs`] (live log readers, retention), [`scheduler`] (schedules → runs),
//! [`error`] (problem+json), [`state`] (shared state and settings).
#![forbid(unsafe_code)]

pub mod api;
pub mod auth;
pub mod error;
pub mod hub;
pub mod keys;
pub mod logs;
pub mod scheduler;
pub mod state;
pub mod ws;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use oz_store::Store;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::error::ApiError;
use crate::hub::Hub;
use crate::state::{AppState, ServerSettings};

/// Now, in the stored timestamp format.
pub fn now() -> String {
    oz_store::ts(chrono::Utc::now())
}

/// Build the shared state: hub over the store, recovery after a restart.
pub async fn state(
    store: Arc<dyn Store>,
    settings: ServerSettings,
    shutdown: CancellationToken,
) -> anyhow::Result<AppState> {
    let settings = Arc::new(settings);
    let hub = Hub::new(store.clone(), settings.clone());
    hub.recover().await?;
    let candidate: [u8; 32] = rand::random();
    let url_key = store.server_secret("download-url-key", &candidate).await?;
    Ok(AppState {
        store,
        hub,
        settings,
        shutdown,
        scheduler: Arc::new(tokio::sync::Notify::new()),
        url_key: Arc::new(url_key),
        keys: Arc::default(),
    })
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .nest(
            "/api/v1",
            api::routes().route("/selfhosted/worker/ws", get(ws::worker_ws)),
        )
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .fallback(|uri: axum::http::Uri| async move {
            ApiError::not_found(format!("no such endpoint: {}", uri.path())).at(uri.path())
        })
        .layer(axum::middleware::map_response(problem_for_plain_errors))
        .layer(tower_http::trace::TraceLayer::new_for_http())
        .with_state(state)
}

/// Errors produced by axum itself (405, 413, 415, 426, …) come as plain
/// text; turn them into problem+json like every other error.
async fn problem_for_plain_errors(
    uri: axum::extract::OriginalUri,
    resp: axum::response::Response,
) -> axum::response::Response {
    let status = resp.status();
    let is_problem = resp
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/problem+json"));
    if !(status.is_client_error() || status.is_server_error()) || is_problem {
        return resp;
    }
    let (code, detail) = match status {
        StatusCode::METHOD_NOT_ALLOWED => (
            "invalid_request",
            format!("{} does not accept this method", uri.0.path()),
        ),
        StatusCode::PAYLOAD_TOO_LARGE => (
            "invalid_request",
            "the request body is too large".to_owned(),
        ),
        StatusCode::UNSUPPORTED_MEDIA_TYPE => (
            "invalid_request",
            "send the body as application/json".to_owned(),
        ),
        StatusCode::UPGRADE_REQUIRED => (
            "invalid_request",
            "this endpoint only accepts a WebSocket upgrade".to_owned(),
        ),
        s if s.is_server_error() => ("internal_error", "internal server error".to_owned()),
        _ => (
            "invalid_request",
            status
                .canonical_reason()
                .unwrap_or("bad request")
                .to_owned(),
        ),
    };
    ApiError::new(status, code, detail)
        .at(uri.0.path())
        .into_response()
}

async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    match state.store.first_team().await {
        Ok(_) => (StatusCode::OK, "ready"),
        Err(e) => {
            tracing::error!(error = %e, "readiness check failed");
            (StatusCode::SERVICE_UNAVAILABLE, "database unavailable")
        }
    }
}

/// Serve until `state.shutdown` fires: HTTP, WebSocket, the dispatcher and
/// log retention. Open log streams end when it fires.
pub async fn serve(listener: TcpListener, state: AppState) -> anyhow::Result<()> {
    let stop = state.shutdown.clone();
    let dispatcher = tokio::spawn(state.hub.clone().run_dispatcher(stop.clone()));
    let scheduler = tokio::spawn(scheduler::run(state.clone(), stop.clone()));
    let retention = state
        .settings
        .log_retention
        .map(|keep| tokio::spawn(logs::run_retention(state.store.clone(), keep, stop.clone())));
    let app = router(state.clone()).into_make_service_with_connect_info::<SocketAddr>();
    let graceful = stop.clone();
    // TCP_NODELAY: small frames must not wait for delayed ACKs (Nagle cost
    // ~38 ms per run in the dispatch benchmark).
    use axum::serve::ListenerExt;
    let listener = listener.tap_io(|tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
    });
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { graceful.cancelled().await })
        .await?;
    stop.cancel();
    state.hub.close_all();
    let _ = dispatcher.await;
    let _ = scheduler.await;
    if let Some(retention) = retention {
        let _ = retention.await;
    }
    Ok(())
}
