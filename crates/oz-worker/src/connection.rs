//! The one WebSocket connection to the control plane.
//!
//! One task owns the socket: it reads frames, writes queued messages and
//! sends pings, so writes can never race. Messages are taken off the queue
//! only after they were written; a write that fails leaves the message at the
//! front of the queue for the next connection. Tasks keep running while the
//! connection is down, and what they report meanwhile is sent after the
//! reconnect.
//!
//! Task output and terminal frames come from the [`Spool`]. A control plane
//! that lists the `logs` extension in `server_hello` gets each task's lines
//! (`log_lines`), then `log_end`, then the terminal frame; everything not
//! acknowledged is sent again on the next connection. One that does not
//! (the official one never sends `server_hello`) gets only the terminal
//! frames, and the logs are discarded. Until the first frame of a
//! connection, or [`HELLO_WAIT`], it is not known which: terminal frames
//! wait that long at most. While a control plane with `logs` is connected,
//! a task whose spool is full waits for its acks ([`Spool::room`]).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use oz_protocol::{ServerMessage, WorkerMessage};
use rand::RngExt;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::{Instant, sleep, sleep_until, timeout};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tokio_util::sync::CancellationToken;

use crate::config::{Settings, connect_url};
use crate::spool::Spool;

/// A WS ping goes out this often.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(30);
/// With no frame (data, ping or pong) for this long the connection is dead.
pub const PONG_WAIT: Duration = Duration::from_secs(60);
/// Deadline for each write.
pub const WRITE_WAIT: Duration = Duration::from_secs(10);
/// Deadline for the opening handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(45);
/// A connection that lasted this long resets the backoff; a shorter one
/// (for example a server that accepts and closes at once) does not.
pub const STABLE_AFTER: Duration = Duration::from_secs(10);
/// How long a new connection waits for `server_hello` before it is taken
/// for a v1 control plane (no extensions). A control plane that announces
/// extensions sends `server_hello` as its first frame.
pub const HELLO_WAIT: Duration = Duration::from_secs(2);
/// When stopping, how long to wait for the acknowledgement of log lines
/// already sent (what is not acknowledged is sent again after a restart).
pub const ACK_WAIT: Duration = Duration::from_secs(5);
pub const BACKOFF_MIN: Duration = Duration::from_secs(1);
pub const BACKOFF_MAX: Duration = Duration::from_secs(60);

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Exponential backoff from 1 s to 60 s with ±25% jitter, so that many
/// workers cut off together do not reconnect in lockstep.
#[derive(Debug)]
pub struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff { next: BACKOFF_MIN }
    }
}

impl Backoff {
    pub fn next_delay(&mut self) -> Duration {
        let base = self.next;
        self.next = (self.next * 2).min(BACKOFF_MAX);
        let factor = rand::rng().random_range(0.75..=1.25);
        base.mul_f64(factor).clamp(BACKOFF_MIN, BACKOFF_MAX)
    }

    pub fn reset(&mut self) {
        self.next = BACKOFF_MIN;
    }
}

/// How the connection task ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finish {
    /// Every queued message was written and the socket closed cleanly.
    Delivered,
    /// Stopped before everything could be written.
    Undelivered { pending: usize },
}

pub struct Connection {
    settings: Arc<Settings>,
    /// Task logs and terminal frames.
    spool: Arc<Spool>,
    inbound: mpsc::UnboundedSender<ServerMessage>,
    /// Claims, rejections, status and the answers to malformed assignments.
    outbox: mpsc::UnboundedReceiver<WorkerMessage>,
    outbox_closed: bool,
    pending: VecDeque<WorkerMessage>,
    /// Whether the current connection's control plane takes `logs`; `None`
    /// until known.
    logs: Option<bool>,
    /// Set once the worker has nothing more to say: flush, close, return.
    closing: CancellationToken,
    /// Stop now, whatever is still queued.
    abort: CancellationToken,
}

enum SessionEnd {
    Closed,
    Lost(String),
    Aborted,
}

impl Connection {
    pub fn new(
        settings: Arc<Settings>,
        spool: Arc<Spool>,
        inbound: mpsc::UnboundedSender<ServerMessage>,
        outbox: mpsc::UnboundedReceiver<WorkerMessage>,
        closing: CancellationToken,
        abort: CancellationToken,
    ) -> Self {
        Connection {
            settings,
            spool,
            inbound,
            outbox,
            outbox_closed: false,
            pending: VecDeque::new(),
            logs: None,
            closing,
            abort,
        }
    }

    pub async fn run(mut self) -> Finish {
        let mut backoff = Backoff::default();
        loop {
            if self.abort.is_cancelled() {
                return self.undelivered();
            }
            if self.closing.is_cancelled() && self.nothing_queued() {
                return Finish::Delivered;
            }
            let attempt = tokio::select! {
                r = self.connect() => r,
                _ = self.abort.cancelled() => return self.undelivered(),
            };
            match attempt {
                Ok(ws) => {
                    tracing::info!(url = %self.settings.websocket_url, worker_id = %self.settings.worker_id, "Connected to Oz");
                    tracing::info!("Listening for tasks");
                    let started = Instant::now();
                    self.logs = None;
                    self.spool.reset_sending();
                    let end = self.session(ws).await;
                    // Nobody acknowledges now: a full spool drops, not waits.
                    self.spool.set_acking(false);
                    match end {
                        SessionEnd::Closed => return Finish::Delivered,
                        SessionEnd::Aborted => return self.undelivered(),
                        SessionEnd::Lost(why) => {
                            tracing::warn!(reason = %why, queued = self.pending.len() + self.spool.undelivered(), "connection to the control plane lost; tasks keep running and their results are sent after reconnecting");
                        }
                    }
                    if started.elapsed() >= STABLE_AFTER {
                        backoff.reset();
                    }
                }
                Err(e) => {
                    tracing::warn!(url = %self.settings.websocket_url, error = %e, "cannot connect to the control plane")
                }
            }
            let delay = backoff.next_delay();
            tracing::info!(delay = %humantime::format_duration(round_ms(delay)), "reconnecting");
            tokio::select! {
                _ = sleep(delay) => {}
                // Stopping: if nothing is queued there is no need to wait.
                _ = self.closing.cancelled(), if !self.closing.is_cancelled() => {}
                _ = self.abort.cancelled() => return self.undelivered(),
            }
        }
    }

    /// Nothing waits to be written (log lines not yet sent do not count:
    /// they stay in the spool for the next connection or the next start).
    fn nothing_queued(&mut self) -> bool {
        while let Ok(m) = self.outbox.try_recv() {
            self.pending.push_back(m);
        }
        self.pending.is_empty() && self.spool.undelivered() == 0
    }

    fn undelivered(&mut self) -> Finish {
        let _ = self.nothing_queued();
        let pending = self.pending.len() + self.spool.undelivered();
        if pending == 0 {
            Finish::Delivered
        } else {
            Finish::Undelivered { pending }
        }
    }

    /// Write everything ready: the queue, oldest first (taking what the
    /// supervisor queued first, so that a claim always precedes the result
    /// of the same task), then the spool's log frames, `log_end` and
    /// terminal frames, as far as the in-flight window allows. All of it
    /// goes out with one flush: frames that are ready together (a task's
    /// `log_end` and result, results of tasks that ended together) cost
    /// one system call here and one read at the control plane. A message
    /// leaves the queue, and a terminal frame counts as written, only once
    /// the flush returned; after a failed write both are sent again on the
    /// next connection.
    async fn write_ready(&mut self, ws: &mut Ws) -> Result<(), SessionEnd> {
        while let Ok(m) = self.outbox.try_recv() {
            self.pending.push_back(m);
        }
        for msg in &self.pending {
            feed(ws, msg).await?;
        }
        let fed = self.pending.len();
        let mut terminals = Vec::new();
        let mut spooled = false;
        if let Some(logs) = self.logs {
            while let Some(out) = self.spool.next_frame(logs) {
                if out.msg.is_terminal() {
                    // The spool gives a terminal frame out until it is
                    // marked written, which waits for the flush: seeing
                    // one again means this batch is complete.
                    let task_id = out.msg.task_id();
                    if terminals.iter().any(|(id, _)| id == task_id) {
                        break;
                    }
                    terminals.push((task_id.to_owned(), out.generation));
                }
                feed(ws, &out.msg).await?;
                spooled = true;
            }
        }
        if fed == 0 && !spooled {
            return Ok(());
        }
        flush(ws).await?;
        self.pending.drain(..fed);
        if let Some(logs) = self.logs {
            for (task_id, generation) in terminals {
                self.spool.written(&task_id, generation, logs);
            }
        }
        Ok(())
    }

    async fn connect(&self) -> Result<Ws, ConnectError> {
        let url = connect_url(&self.settings.websocket_url, &self.settings.worker_id);
        let mut request = url
            .as_str()
            .into_client_request()
            .map_err(|e| ConnectError::Other(e.to_string()))?;
        let auth =
            HeaderValue::from_str(&format!("Bearer {}", self.settings.api_key)).map_err(|_| {
                ConnectError::Other(
                    "the API key contains characters not allowed in an HTTP header".into(),
                )
            })?;
        request.headers_mut().insert("Authorization", auth);
        // disable_nagle = true: small frames (claims, results) must not wait for
        // delayed ACKs (measured: ~38 ms per run with Nagle on).
        let fut = tokio_tungstenite::connect_async_with_config(request, None, true);
        match timeout(HANDSHAKE_TIMEOUT, fut).await {
            Err(_) => Err(ConnectError::Other(format!(
                "no handshake answer within {}s",
                HANDSHAKE_TIMEOUT.as_secs()
            ))),
            Ok(Ok((ws, _resp))) => Ok(ws),
            Ok(Err(tungstenite::Error::Http(resp))) => Err(ConnectError::Http(resp.status())),
            Ok(Err(e)) => Err(ConnectError::Other(e.to_string())),
        }
    }

    async fn session(&mut self, mut ws: Ws) -> SessionEnd {
        let mut ping =
            tokio::time::interval_at(Instant::now() + HEARTBEAT_INTERVAL, HEARTBEAT_INTERVAL);
        let mut read_deadline = Instant::now() + PONG_WAIT;
        let hello_deadline = Instant::now() + HELLO_WAIT;
        let mut ack_deadline: Option<Instant> = None;
        loop {
            if let Err(end) = self.write_ready(&mut ws).await {
                return end;
            }
            if self.closing.is_cancelled() && self.nothing_queued() {
                let until = *ack_deadline.get_or_insert_with(|| Instant::now() + ACK_WAIT);
                let acks_due = self.logs == Some(true) && self.spool.awaiting_acks();
                if !acks_due || Instant::now() >= until {
                    self.close(ws).await;
                    return SessionEnd::Closed;
                }
            }
            let wake = match self.logs {
                None => Some(hello_deadline),
                Some(_) if self.closing.is_cancelled() => ack_deadline,
                Some(_) => None,
            };
            tokio::select! {
                frame = ws.next() => {
                    read_deadline = Instant::now() + PONG_WAIT;
                    match frame {
                        Some(Ok(Message::Text(text))) => self.on_text(text.as_str()),
                        Some(Ok(Message::Close(frame))) => {
                            let why = frame.map(|f| format!("{} {}", u16::from(f.code), f.reason)).unwrap_or_default();
                            return SessionEnd::Lost(format!("the control plane closed the connection {why}").trim().to_owned());
                        }
                        Some(Ok(_)) => {} // ping (answered by tungstenite), pong, binary
                        Some(Err(e)) => return SessionEnd::Lost(format!("read failed: {e}")),
                        None => return SessionEnd::Lost("connection closed".into()),
                    }
                }
                msg = self.outbox.recv(), if !self.outbox_closed => match msg {
                    Some(m) => self.pending.push_back(m),
                    // Every sender is gone: the worker has finished.
                    None => {
                        self.outbox_closed = true;
                        self.closing.cancel();
                    }
                },
                _ = self.spool.notified() => {}
                _ = ping.tick() => {
                    match timeout(WRITE_WAIT, ws.send(Message::Ping(Default::default()))).await {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => return SessionEnd::Lost(format!("ping failed: {e}")),
                        Err(_) => return SessionEnd::Lost("ping timed out".into()),
                    }
                }
                _ = sleep_until(read_deadline) => {
                    return SessionEnd::Lost(format!("nothing heard from the control plane for {}s", PONG_WAIT.as_secs()));
                }
                _ = sleep_until(wake.unwrap_or(read_deadline)), if wake.is_some() => {
                    if self.logs.is_none() && Instant::now() >= hello_deadline {
                        tracing::debug!("no server_hello: speaking protocol v1 without extensions");
                        self.logs = Some(false);
                    }
                }
                _ = self.closing.cancelled(), if !self.closing.is_cancelled() => {}
                _ = self.abort.cancelled() => return SessionEnd::Aborted,
            }
        }
    }

    /// Close with 1000 and give the server a moment to answer; acks that
    /// arrive meanwhile still count.
    async fn close(&self, mut ws: Ws) {
        let close = CloseFrame {
            code: CloseCode::Normal,
            reason: "".into(),
        };
        let _ = timeout(WRITE_WAIT, ws.close(Some(close))).await;
        let spool = &self.spool;
        let _ = timeout(Duration::from_secs(2), async {
            while let Some(Ok(m)) = ws.next().await {
                if let Message::Text(t) = m
                    && let Ok(ServerMessage::LogAck(a)) = ServerMessage::decode(t.as_str())
                {
                    spool.ack(&a.task_id, a.seq);
                }
            }
        })
        .await;
    }

    fn on_text(&mut self, text: &str) {
        let decoded = ServerMessage::decode(text);
        match &decoded {
            Ok(ServerMessage::ServerHello(h)) => {
                let logs = h.has(oz_protocol::ext::LOGS);
                if self.logs != Some(logs) {
                    tracing::debug!(
                        logs,
                        "server_hello: the control plane {} task logs",
                        if logs { "takes" } else { "does not take" }
                    );
                }
                self.logs = Some(logs);
                self.spool.set_acking(logs);
            }
            // A control plane with extensions says hello first; anything
            // else first means v1.
            _ if self.logs.is_none() => self.logs = Some(false),
            _ => {}
        }
        match decoded {
            Ok(ServerMessage::Unknown { kind }) => {
                tracing::debug!(kind, "ignoring a frame of unknown type");
            }
            Ok(ServerMessage::LogAck(a)) => self.spool.ack(&a.task_id, a.seq),
            Ok(msg) => {
                let _ = self.inbound.send(msg);
            }
            Err(oz_protocol::DecodeError::Assignment { task_id, reason }) => {
                tracing::warn!(task_id = task_id.as_deref().unwrap_or("?"), %reason, "malformed task assignment");
                // Hand it on so the worker can answer it with task_failed.
                let _ = self.inbound.send(ServerMessage::TaskAssignment(Box::new(
                    oz_protocol::TaskAssignment {
                        task_id: task_id.unwrap_or_default(),
                        ..Default::default()
                    },
                )));
            }
            Err(e) => tracing::warn!(error = %e, "ignoring an undecodable frame"),
        }
    }
}

/// Queue one frame on the socket within [`WRITE_WAIT`] (it may write out
/// earlier frames if its buffer is full); [`flush`] sends the rest.
async fn feed(ws: &mut Ws, msg: &WorkerMessage) -> Result<(), SessionEnd> {
    match timeout(WRITE_WAIT, ws.feed(Message::text(msg.encode()))).await {
        Ok(Ok(())) => {
            tracing::debug!(kind = msg.kind(), task_id = msg.task_id(), "sent");
            Ok(())
        }
        Ok(Err(e)) => Err(SessionEnd::Lost(format!("write failed: {e}"))),
        Err(_) => Err(SessionEnd::Lost("write timed out".into())),
    }
}

/// Write out every frame fed so far, within [`WRITE_WAIT`].
async fn flush(ws: &mut Ws) -> Result<(), SessionEnd> {
    match timeout(WRITE_WAIT, ws.flush()).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(SessionEnd::Lost(format!("write failed: {e}"))),
        Err(_) => Err(SessionEnd::Lost("write timed out".into())),
    }
}

#[derive(Debug, thiserror::Error)]
enum ConnectError {
    #[error("the control plane refused the connection: HTTP {status}{hint}", status = .0, hint = http_hint(*.0))]
    Http(tungstenite::http::StatusCode),
    #[error("{0}")]
    Other(String),
}

fn http_hint(status: tungstenite::http::StatusCode) -> &'static str {
    match status.as_u16() {
        401 | 403 => " (check the worker API key: --api-key or WARP_API_KEY)",
        404 => " (check --websocket-url / --server-url)",
        _ => "",
    }
}

fn round_ms(d: Duration) -> Duration {
    Duration::from_millis(d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_with_jitter_and_caps() {
        let mut b = Backoff::default();
        let delays: Vec<Duration> = (0..10).map(|_| b.next_delay()).collect();
        assert!(delays[0] >= BACKOFF_MIN && delays[0] <= Duration::from_millis(1250));
        assert!(delays[3] >= Duration::from_secs(6) && delays[3] <= Duration::from_secs(10));
        for d in &delays {
            assert!(*d >= BACKOFF_MIN && *d <= BACKOFF_MAX);
        }
        assert!(delays[9] >= Duration::from_secs(45));
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(1250));
    }
}
