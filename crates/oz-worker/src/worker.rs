//! The supervisor: accepts assignments, holds the slots, routes
//! cancellations, and drains on shutdown.
//!
//! Invariants:
//! - at most one task per `task_id` runs at a time; a repeated assignment of
//!   a running task is answered with `task_claimed` again, never run twice;
//! - an assignment beyond `max_concurrent_tasks` gets `task_rejected` with no
//!   claim, and a slot is held until the task's cleanup is over;
//! - every claimed task produces exactly one terminal frame;
//! - after the first SIGTERM/SIGINT nothing new is accepted.

use std::collections::HashMap;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use oz_protocol::{
    FailureReason, REJECT_AT_CAPACITY, ServerMessage, TaskAssignment, TaskClaimed, TaskRejected,
    WorkerMessage,
};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;

use crate::config::Settings;
use crate::connection::{Connection, Finish};
use crate::direct::{DirectBackend, random_hex};
use crate::spool::Spool;
use crate::task::{Outcome, StopReason, TaskControl};

/// Reason sent with `task_rejected` while the worker drains.
pub const REJECT_SHUTTING_DOWN: &str = "worker is shutting down";
/// How long, after the last task ended, the worker keeps trying to deliver
/// the remaining frames (reconnecting if needed) before it gives up.
pub const FLUSH_TIMEOUT: Duration = Duration::from_secs(30);

/// Process exit statuses (documented in `--help` and the operator guide).
pub mod exit {
    pub const OK: u8 = 0;
    pub const CUT_SHORT: u8 = 3;
    pub const FORCED: u8 = 4;
}

struct Active {
    control: TaskControl,
    execution_id: Option<String>,
}

pub struct Worker {
    settings: Arc<Settings>,
    backend: Arc<DirectBackend>,
    spool: Arc<Spool>,
    outbox: mpsc::UnboundedSender<WorkerMessage>,
    active: HashMap<String, Active>,
    done_tx: mpsc::UnboundedSender<(String, Outcome)>,
    done_rx: mpsc::UnboundedReceiver<(String, Outcome)>,
    draining: bool,
    cut_short: usize,
}

impl Worker {
    /// Run until a signal stops the worker; returns the exit status.
    /// `stop` acts like a first SIGTERM (drain), for embedding the worker
    /// in another program.
    pub async fn run(
        settings: Arc<Settings>,
        backend: Arc<DirectBackend>,
        spool: Arc<Spool>,
        stop: CancellationToken,
    ) -> anyhow::Result<ExitCode> {
        let mut sigterm = signal(SignalKind::terminate())?;
        let mut sigint = signal(SignalKind::interrupt())?;

        let (in_tx, mut in_rx) = mpsc::unbounded_channel();
        let (out_tx, out_rx) = mpsc::unbounded_channel();
        let closing = CancellationToken::new();
        let abort = CancellationToken::new();
        let conn = Connection::new(
            settings.clone(),
            spool.clone(),
            in_tx,
            out_rx,
            closing.clone(),
            abort.clone(),
        );
        let mut conn_task = tokio::spawn(conn.run());
        // Results are synced to the journal off this loop, several at once.
        // Stopped when run returns (the spool holds the state dir's lock).
        let _syncer = AbortOnDropHandle::new(tokio::spawn(spool.clone().sync_results()));

        let (done_tx, done_rx) = mpsc::unbounded_channel();
        let mut worker = Worker {
            settings,
            backend,
            spool,
            outbox: out_tx,
            active: HashMap::new(),
            done_tx,
            done_rx,
            draining: false,
            cut_short: 0,
        };

        // Serve until the first signal, then drain until every task is done.
        let mut forced = false;
        loop {
            if worker.draining && worker.active.is_empty() {
                break;
            }
            tokio::select! {
                Some(msg) = in_rx.recv() => worker.on_message(msg),
                Some((id, outcome)) = worker.done_rx.recv() => worker.on_done(id, outcome),
                _ = sigterm.recv() => if worker.on_signal("SIGTERM") { forced = true; break },
                _ = sigint.recv() => if worker.on_signal("SIGINT") { forced = true; break },
                _ = stop.cancelled(), if !worker.draining => { worker.on_signal("stop request"); },
            }
        }

        if forced {
            // Processes are already SIGKILLed; collect what reports arrive
            // within a moment, send what we can, and go.
            let quick = tokio::time::sleep(Duration::from_secs(2));
            tokio::pin!(quick);
            while !worker.active.is_empty() {
                tokio::select! {
                    Some((id, outcome)) = worker.done_rx.recv() => worker.on_done(id, outcome),
                    _ = &mut quick => break,
                }
            }
            closing.cancel();
            let _ = tokio::time::timeout(Duration::from_secs(1), &mut conn_task).await;
            abort.cancel();
            tracing::warn!(unfinished = worker.active.len(), "forced stop");
            return Ok(ExitCode::from(exit::FORCED));
        }

        // Deliver the terminal frames, then close with 1000.
        tracing::info!("all tasks finished; delivering the remaining results");
        closing.cancel();
        drop(worker.outbox);
        let finish = tokio::select! {
            r = &mut conn_task => r.unwrap_or(Finish::Undelivered { pending: 0 }),
            _ = tokio::time::sleep(FLUSH_TIMEOUT) => {
                abort.cancel();
                conn_task.await.unwrap_or(Finish::Undelivered { pending: 0 })
            }
            _ = sigterm.recv() => { abort.cancel(); return Ok(ExitCode::from(exit::FORCED)) }
            _ = sigint.recv() => { abort.cancel(); return Ok(ExitCode::from(exit::FORCED)) }
        };
        let undelivered = match finish {
            Finish::Delivered => 0,
            Finish::Undelivered { pending } => pending.max(1),
        };
        if undelivered > 0 {
            tracing::error!(
                undelivered,
                "could not deliver every result to the control plane before exiting"
            );
        }
        if worker.cut_short > 0 || undelivered > 0 {
            tracing::warn!(
                tasks_cut_short = worker.cut_short,
                "stopped; some work was cut short"
            );
            Ok(ExitCode::from(exit::CUT_SHORT))
        } else {
            tracing::info!("stopped cleanly");
            Ok(ExitCode::from(exit::OK))
        }
    }

    /// Returns true when the worker must stop at once.
    fn on_signal(&mut self, name: &str) -> bool {
        if self.draining {
            tracing::warn!(signal = name, "second signal: killing every task now");
            for a in self.active.values() {
                a.control.kill();
            }
            return true;
        }
        self.draining = true;
        tracing::info!(
            signal = name,
            running = self.active.len(),
            grace = %humantime::format_duration(self.settings.direct.grace_period),
            "shutting down: refusing new tasks and stopping running ones (send the signal again to stop at once)"
        );
        for a in self.active.values() {
            a.control.stop(StopReason::Shutdown);
        }
        false
    }

    fn send(&self, msg: WorkerMessage) {
        // The receiver lives as long as the connection task; if it is gone
        // the worker is exiting and the loss is counted there.
        let _ = self.outbox.send(msg);
    }

    fn on_message(&mut self, msg: ServerMessage) {
        match msg {
            ServerMessage::TaskAssignment(a) => self.on_assignment(*a),
            ServerMessage::TaskCancellation(c) => match self.active.get(&c.task_id) {
                Some(a) => {
                    tracing::info!(run_id = %c.task_id, "cancellation requested");
                    a.control.stop(StopReason::User);
                }
                None => {
                    tracing::info!(run_id = %c.task_id, "ignoring cancellation of a task that is not running here")
                }
            },
            ServerMessage::ServerHello(hello) => {
                if hello.has(oz_protocol::ext::WORKER_STATUS) {
                    self.send(self.status());
                }
            }
            // Acknowledgements are the connection's business (log spool);
            // it does not pass them on.
            ServerMessage::LogAck(_) | ServerMessage::Unknown { .. } => {}
        }
    }

    fn on_assignment(&mut self, a: TaskAssignment) {
        let task_id = a.task_id.clone();
        if task_id.is_empty() {
            tracing::error!("ignoring an assignment without task_id: it cannot be answered");
            return;
        }
        let fail =
            |reason, message: &str| Outcome::failed(reason, message, None).to_message(&task_id);
        if !oz_protocol::is_safe_path_component(&task_id) {
            tracing::warn!(run_id = %task_id, "refusing an assignment whose task id is not a safe directory name");
            self.send(fail(
                FailureReason::WorkspaceSetup,
                "invalid task ID for workspace path: invalid task ID",
            ));
            return;
        }
        let Some(task) = a.task.clone() else {
            tracing::warn!(run_id = %task_id, "refusing an assignment without a task");
            self.send(fail(
                FailureReason::Unknown,
                "the assignment carries no task (task is null or malformed)",
            ));
            return;
        };
        if self.active.contains_key(&task_id) {
            tracing::warn!(run_id = %task_id, "task is already running here; confirming the claim without starting it again");
            self.send(self.claimed(&task_id));
            return;
        }
        if self.draining {
            self.send(WorkerMessage::TaskRejected(TaskRejected {
                task_id,
                reason: REJECT_SHUTTING_DOWN.into(),
            }));
            return;
        }
        let max = self.settings.max_concurrent_tasks;
        if max > 0 && self.active.len() >= max {
            tracing::info!(run_id = %task_id, running = self.active.len(), max, "at capacity; rejecting");
            self.send(WorkerMessage::TaskRejected(TaskRejected {
                task_id,
                reason: REJECT_AT_CAPACITY.into(),
            }));
            return;
        }

        self.send(self.claimed(&task_id));
        let control = TaskControl::new(format!("{}.{}", task_id, random_hex(8)));
        tracing::info!(
            run_id = %task_id,
            execution_id = a.execution_id.as_deref().unwrap_or("-"),
            title = task.title.as_deref().unwrap_or(""),
            "task claimed"
        );
        self.active.insert(
            task_id.clone(),
            Active {
                control: control.clone(),
                execution_id: a.execution_id.clone(),
            },
        );
        let backend = self.backend.clone();
        let spool = self.spool.clone();
        let done = self.done_tx.clone();
        tokio::spawn(async move {
            let id = task_id.clone();
            let inner =
                tokio::spawn(async move { backend.run_task(&a, &task, &control, &spool).await });
            let outcome = match inner.await {
                Ok(o) => o,
                Err(e) => {
                    tracing::error!(run_id = %id, error = %e, "task supervisor crashed");
                    Outcome::failed(
                        FailureReason::Unknown,
                        format!("internal worker error: {e}"),
                        None,
                    )
                }
            };
            let _ = done.send((id, outcome));
        });
    }

    /// Extension frame: what this worker is and runs, for reconciliation.
    fn status(&self) -> WorkerMessage {
        let mut running: Vec<String> = self.active.keys().cloned().collect();
        running.sort();
        WorkerMessage::WorkerStatus(oz_protocol::WorkerStatus {
            worker_id: self.settings.worker_id.clone(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            backend: "direct".to_owned(),
            max_concurrent_tasks: self.settings.max_concurrent_tasks as u64,
            running,
            draining: self.draining,
        })
    }

    fn claimed(&self, task_id: &str) -> WorkerMessage {
        WorkerMessage::TaskClaimed(TaskClaimed {
            task_id: task_id.to_owned(),
            worker_id: self.settings.worker_id.clone(),
        })
    }

    /// The terminal frame goes to the spool, not the outbox: it is journaled
    /// there (so it survives a restart) and held until the task's log was
    /// sent, so it never overtakes the task's lines.
    fn on_done(&mut self, task_id: String, outcome: Outcome) {
        let execution_id = self.active.remove(&task_id).and_then(|a| a.execution_id);
        if outcome.cut_short() {
            self.cut_short += 1;
        }
        tracing::info!(run_id = %task_id, execution_id = execution_id.as_deref().unwrap_or_default(), result = outcome.task_result(), "task finished");
        self.spool
            .finish(&task_id, execution_id, outcome.to_message(&task_id));
    }
}
