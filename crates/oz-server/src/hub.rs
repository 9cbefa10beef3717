//! The worker hub: connected workers, the dispatcher, and the run life
//! cycle driven by worker frames.
//!
//! Invariants:
//! - only the dispatcher task moves runs QUEUED → PENDING, so two passes can
//!   never hand out the same run;
//! - every state change is a compare-and-set in the store, committed before
//!   anything is sent or answered; a duplicate or late frame finds the run in
//!   another state and changes nothing;
//! - a worker that rejects is not offered anything again until one of its
//!   runs ends (no busy loop); runs wait in QUEUED, and the API shows why
//!   in their `status_message` ([`Hub::queued_status`], computed on read);
//! - runs of a worker that disconnected wait `lease_grace` for a worker with
//!   the same id to come back, then end ERROR naming the lost worker;
//! - log lines (extension `logs`) are acknowledged only after the
//!   transaction that stores them committed, and published to live readers
//!   after that (see [`crate::logs`]).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use oz_protocol::api::{RunState, StatusMessage};
use oz_protocol::logs::{LogAck, LogEnd, LogLines};
use oz_protocol::{
    AgentConfigSnapshot, FailureReason, ServerHello, ServerMessage, Task, TaskAssignment,
    TaskCancellation, TaskDefinition, WorkerMessage, WorkerStatus,
};
use oz_store::{LogRecord, Run, RunPatch, Store};
use serde::Serialize;
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;

use crate::auth;
use crate::logs::{LogBus, LogEvent, LogSubscription};
use crate::now;
use crate::state::ServerSettings;

/// States a worker may still report on.
const LIVE: [RunState; 3] = [RunState::Pending, RunState::Claimed, RunState::Inprogress];
const TICK: Duration = Duration::from_secs(1);
/// How often the set of worker ids with queued runs is rebuilt from the
/// database (it is kept up to date in between; this catches anything else,
/// such as another process sharing the database).
const QUEUED_REFRESH: Duration = Duration::from_secs(30);
/// Runs offered per pass to a worker whose capacity is unknown (plain v1):
/// it rejects what it cannot take.
const UNKNOWN_CAPACITY_BATCH: u32 = 8;

/// One live WebSocket connection of a worker.
struct Conn {
    worker_id: String,
    /// Team of the key the worker connected with: it only gets that team's runs.
    team_id: String,
    tx: mpsc::UnboundedSender<String>,
    /// Runs this connection holds, with the execution it was handed when
    /// this process assigned it (`None` for runs adopted after a
    /// reconnect): log frames of a held run need no read of the run.
    running: HashMap<String, Option<Held>>,
    /// Runs taken over from a lost worker with this id and not yet confirmed
    /// by a `worker_status` listing them; the only runs a status may take
    /// away (a status can be older than the latest assignment).
    adopted: HashSet<String>,
    /// Set by a rejection; cleared when one of its runs ends.
    saturated: bool,
    status: Option<WorkerStatus>,
    connected_at: String,
    remote: String,
}

/// Waiting reasons already worked out, by (team, worker id): see
/// [`Hub::queued_status`].
pub type WaitingReasons = HashMap<(String, String), (String, bool)>;

/// An execution of a run as log frames need it: its id and the seq its
/// lines are stored after. The hub remembers it for the runs it hands out,
/// and reads it from the run otherwise.
#[derive(Debug, Clone)]
struct Held {
    execution_id: Option<String>,
    log_seq_base: u64,
}

impl Held {
    fn of(run: &Run) -> Self {
        Held {
            execution_id: run.execution_id.clone(),
            log_seq_base: run.log_seq_base,
        }
    }
}

/// Where a log frame goes (see [`Hub::log_target`]).
enum LogTarget {
    /// Of an execution that is over: acknowledged, not stored.
    Past,
    /// Of the run's current execution.
    Current(Held),
}

/// A run whose worker went away.
struct Orphan {
    worker_id: String,
    team_id: String,
    since: Instant,
    since_ts: String,
}

#[derive(Default)]
struct Registry {
    conns: HashMap<String, Conn>,
    orphans: HashMap<String, Orphan>,
    /// (team, worker id) pairs that may have QUEUED runs, each with the
    /// generation of its last mark. The dispatcher queries only these, so a
    /// pass costs by the worker ids with work, not by those connected
    /// (bench/REPORT.md: 1,000 idle workers made every pass 1,000 queries).
    /// Every path that queues a run marks its pair; a full refresh from the
    /// database at start and every [`QUEUED_REFRESH`] is the safety net.
    queued: HashMap<(String, String), u64>,
    queued_gen: u64,
}

/// What `GET /api/v1/workers` shows of a connection.
#[derive(Debug, Clone, Serialize)]
pub struct WorkerInfo {
    pub worker_id: String,
    pub connection_id: String,
    pub connected_at: String,
    pub remote_addr: String,
    /// Known only from workers that answer `server_hello`.
    pub version: Option<String>,
    pub backend: Option<String>,
    /// Slots (0 = unlimited); unknown for plain v1 workers.
    pub max_concurrent_tasks: Option<u64>,
    pub running_runs: Vec<String>,
    pub at_capacity: bool,
    pub draining: bool,
}

pub struct Hub {
    store: Arc<dyn Store>,
    settings: Arc<ServerSettings>,
    reg: Mutex<Registry>,
    wake: Notify,
    api_base_url: String,
    logs: Arc<LogBus>,
}

impl Hub {
    pub fn new(store: Arc<dyn Store>, settings: Arc<ServerSettings>) -> Arc<Self> {
        let api_base_url = format!("{}/api/v1", settings.public_url);
        Arc::new(Hub {
            store,
            settings,
            reg: Mutex::default(),
            wake: Notify::new(),
            api_base_url,
            logs: Arc::default(),
        })
    }

    fn reg(&self) -> std::sync::MutexGuard<'_, Registry> {
        // A panic while holding the lock leaves plain data behind; keep going.
        self.reg.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Ask the dispatcher for a pass (new run, free slot, new worker).
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// A run of `worker_host` in `team_id` is QUEUED (new, or back in the
    /// queue): remember the pair for the dispatcher, and wake it.
    pub fn queued(&self, team_id: &str, worker_host: &str) {
        {
            let mut reg = self.reg();
            reg.queued_gen += 1;
            let generation = reg.queued_gen;
            reg.queued
                .insert((team_id.to_owned(), worker_host.to_owned()), generation);
        }
        self.wake();
    }

    /// Rebuild the set of pairs with queued runs from the database.
    async fn refresh_queued(&self) -> Result<(), oz_store::StoreError> {
        let pairs = self.store.queued_hosts().await?;
        let mut reg = self.reg();
        reg.queued_gen += 1;
        let generation = reg.queued_gen;
        for pair in pairs {
            reg.queued.entry(pair).or_insert(generation);
        }
        Ok(())
    }

    /// After a restart: runs that were assigned but never claimed go back to
    /// the queue; claimed and running ones wait for their worker to return.
    pub async fn recover(&self) -> Result<(), oz_store::StoreError> {
        let now_ts = now();
        for run in self.store.active_runs().await? {
            if run.state == RunState::Pending {
                self.requeue(
                    &run.run_id,
                    "requeued after a server restart (the assignment was never claimed)",
                    &now_ts,
                )
                .await?;
            } else {
                self.reg().orphans.insert(
                    run.run_id.clone(),
                    Orphan {
                        worker_id: run.worker_host.clone(),
                        team_id: run.team_id.clone(),
                        since: Instant::now(),
                        since_ts: now_ts.clone(),
                    },
                );
            }
        }
        self.sweep_followups().await?;
        self.refresh_queued().await
    }

    /// Queue again ended runs whose follow-ups wait: ending a run and
    /// queuing it for its follow-ups are two commits, and a crash or a
    /// database error between them must not strand the follow-ups.
    async fn sweep_followups(&self) -> Result<(), oz_store::StoreError> {
        for run_id in self.store.runs_awaiting_followups().await? {
            if let Some(run) = self.store.requeue_for_followups(&run_id, &now()).await? {
                tracing::info!(run_id, "run queued again for its follow-ups");
                self.logs.publish(&run_id, LogEvent::Changed);
                self.queued(&run.team_id, &run.worker_host);
            }
        }
        Ok(())
    }

    /// The dispatcher and timer loop; returns when `stop` fires.
    pub async fn run_dispatcher(self: Arc<Self>, stop: CancellationToken) {
        let mut last_timer_pass: Option<std::time::Instant> = None;
        let mut last_refresh = Instant::now();
        loop {
            if last_refresh.elapsed() >= QUEUED_REFRESH {
                last_refresh = Instant::now();
                if let Err(e) = self.refresh_queued().await {
                    tracing::error!(error = %e, "cannot read which worker ids have queued runs");
                }
            }
            if let Err(e) = self.dispatch_pass().await {
                tracing::error!(error = %e, "dispatch pass failed");
            }
            // Leases and deadlines are checked once per tick, not after
            // every wake: a busy server is woken for every run, and the
            // timer pass reads every active run (bench/REPORT.md, cause 3).
            if last_timer_pass.is_none_or(|t| t.elapsed() >= TICK) {
                last_timer_pass = Some(std::time::Instant::now());
                if let Err(e) = self.timer_pass().await {
                    tracing::error!(error = %e, "timer pass failed");
                }
            }
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(TICK) => {}
                _ = stop.cancelled() => return,
            }
        }
    }

    async fn dispatch_pass(&self) -> Result<(), oz_store::StoreError> {
        self.expire_queued().await?;
        // Only look at runs a connected worker can take now, per worker id,
        // so a long queue for an absent worker never blocks the others.
        let targets: Vec<(String, String, u32)> = {
            let reg = self.reg();
            let mut free: BTreeMap<(String, String), u32> = BTreeMap::new();
            let marked = |c: &&Conn| {
                reg.queued
                    .contains_key(&(c.team_id.clone(), c.worker_id.clone()))
            };
            for c in reg
                .conns
                .values()
                .filter(|c| !c.saturated && has_room(c))
                .filter(marked)
            {
                let room = match &c.status {
                    Some(s) if s.max_concurrent_tasks > 0 => {
                        (s.max_concurrent_tasks as usize).saturating_sub(c.running.len()) as u32
                    }
                    _ => UNKNOWN_CAPACITY_BATCH,
                };
                *free
                    .entry((c.team_id.clone(), c.worker_id.clone()))
                    .or_default() += room;
            }
            free.into_iter().map(|((t, w), n)| (t, w, n)).collect()
        };
        let now_ts = now();
        for (team_id, worker_id, room) in targets {
            let key = (team_id.clone(), worker_id.clone());
            let generation = self.reg().queued.get(&key).copied();
            let mut drained = false;
            for _ in 0..room.clamp(1, 100) {
                let Some(conn_id) = self.pick(&team_id, &worker_id) else {
                    break;
                };
                if !self
                    .assign_next(&team_id, &worker_id, &conn_id, &now_ts)
                    .await?
                {
                    drained = true;
                    break;
                }
            }
            // Nothing left for the pair; unless a run was queued for it
            // meanwhile.
            if drained {
                let mut reg = self.reg();
                if reg.queued.get(&key).copied() == generation {
                    reg.queued.remove(&key);
                }
            }
        }
        Ok(())
    }

    /// Fail runs that waited longer than `queue_timeout` (oldest first).
    async fn expire_queued(&self) -> Result<(), oz_store::StoreError> {
        let Some(limit) = self.settings.queue_timeout else {
            return Ok(());
        };
        let Some(cutoff) = chrono::Duration::from_std(limit)
            .ok()
            .and_then(|d| chrono::Utc::now().checked_sub_signed(d))
        else {
            return Ok(());
        };
        for run in self.store.queued_runs(&oz_store::ts(cutoff), 200).await? {
            let msg = format!(
                "no worker with id {:?} picked up the run within {}",
                run.worker_host,
                humantime::format_duration(limit)
            );
            self.end_run(
                &run.run_id,
                &[RunState::Queued],
                RunState::Error,
                StatusMessage::error(msg, "resource_unavailable", true),
            )
            .await?;
        }
        Ok(())
    }

    /// The oldest QUEUED run of (team, worker id) → PENDING on `conn_id`,
    /// then send the assignment; if the connection vanished meanwhile the
    /// run goes straight back. False when no run was queued, or when the
    /// connection was gone (the requeue marked the pair queued again, so
    /// the caller's pass stops without losing the run).
    async fn assign_next(
        &self,
        team_id: &str,
        worker_id: &str,
        conn_id: &str,
        now_ts: &str,
    ) -> Result<bool, oz_store::StoreError> {
        let token = auth::new_secret(auth::RUN_TOKEN_PREFIX);
        // Time-ordered, so that each new one lands at the end of the
        // execution-id index instead of at a random page of it.
        let execution_id = uuid::Uuid::now_v7().to_string();
        let patch = RunPatch {
            holder: Some(Some(conn_id.to_owned())),
            execution_id: Some(Some(execution_id.clone())),
            assigned_at: Some(Some(now_ts.to_owned())),
            token_hash: Some(Some(auth::hash(&token))),
            status_message: Some(None),
            new_execution: true,
            ..Default::default()
        };
        let Some(run) = self
            .store
            .assign_next(team_id, worker_id, patch, now_ts)
            .await?
        else {
            return Ok(false);
        };
        let frame =
            ServerMessage::TaskAssignment(Box::new(self.assignment(&run, &execution_id, &token)))
                .encode();
        let sent = {
            let mut reg = self.reg();
            match reg.conns.get_mut(conn_id) {
                Some(c) if c.tx.send(frame).is_ok() => {
                    c.running.insert(run.run_id.clone(), Some(Held::of(&run)));
                    true
                }
                _ => false,
            }
        };
        if sent {
            tracing::info!(run_id = %run.run_id, worker_id = %run.worker_host, connection = %conn_id, "run assigned");
        } else {
            self.requeue(
                &run.run_id,
                "requeued: the worker's connection closed before the assignment was sent",
                now_ts,
            )
            .await?;
        }
        Ok(sent)
    }

    /// The least busy connection of `worker_id` with room for another run.
    fn pick(&self, team_id: &str, worker_id: &str) -> Option<String> {
        let reg = self.reg();
        reg.conns
            .iter()
            .filter(|(_, c)| {
                c.team_id == team_id && c.worker_id == worker_id && !c.saturated && has_room(c)
            })
            .min_by(|(a_id, a), (b_id, b)| {
                a.running.len().cmp(&b.running.len()).then(a_id.cmp(b_id))
            })
            .map(|(id, _)| id.clone())
    }

    /// What a QUEUED run of (team, worker id) shows as its status: while it
    /// really waits (no worker with that id, all at capacity or shutting
    /// down), why; while a worker has room, what the store says of how it
    /// got back into the queue (a requeue), or that it is about to be
    /// handed out.
    ///
    /// Computed when a run is read rather than written into every queued
    /// run when a worker fills up or frees a slot: under load that flips
    /// with every run, and rewrote the whole queue each time.
    ///
    /// `seen` keeps the answer per (team, worker id) for the runs of one
    /// page: each answer looks at every connection.
    pub fn queued_status(&self, run: &Run, seen: &mut WaitingReasons) -> Option<StatusMessage> {
        let (reason, waiting) = seen
            .entry((run.team_id.clone(), run.worker_host.clone()))
            .or_insert_with(|| self.waiting(&run.team_id, &run.worker_host));
        match &run.status_message {
            Some(stored) if !*waiting => Some(stored.clone()),
            _ => Some(StatusMessage::info(reason.clone())),
        }
    }

    /// The waiting reason, and whether runs really wait (false while a
    /// worker with that id has room).
    fn waiting(&self, team_id: &str, worker_id: &str) -> (String, bool) {
        let reg = self.reg();
        let conns: Vec<&Conn> = reg
            .conns
            .values()
            .filter(|c| c.team_id == team_id && c.worker_id == worker_id)
            .collect();
        if conns.is_empty() {
            (
                format!("waiting for a worker with id {worker_id:?} to connect"),
                true,
            )
        } else if conns.iter().any(|c| !c.saturated && has_room(c)) {
            (
                format!("waiting to be handed to worker {worker_id:?}"),
                false,
            )
        } else if conns
            .iter()
            .all(|c| c.status.as_ref().is_some_and(|s| s.draining))
        {
            (
                format!(
                    "every worker with id {worker_id:?} is shutting down; waiting for another one"
                ),
                true,
            )
        } else {
            (
                format!(
                    "every worker with id {worker_id:?} is at capacity; waiting for a free slot"
                ),
                true,
            )
        }
    }

    fn assignment(&self, run: &Run, execution_id: &str, token: &str) -> TaskAssignment {
        let snapshot: Option<AgentConfigSnapshot> = match serde_json::from_value(run.config.clone())
        {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(run_id = %run.run_id, error = %e, "run config does not fit the agent snapshot; sending none");
                None
            }
        };
        let mut env_vars = BTreeMap::new();
        env_vars.insert("WARP_API_KEY".to_owned(), token.to_owned());
        env_vars.insert("OZ_API_BASE_URL".to_owned(), self.api_base_url.clone());
        TaskAssignment {
            task_id: run.run_id.clone(),
            execution_id: Some(execution_id.to_owned()),
            task: Some(Task {
                id: run.run_id.clone(),
                title: Some(run.title.clone()),
                task_definition: Some(TaskDefinition {
                    // The run's prompt, plus any follow-ups for this execution.
                    prompt: Some(run.current_prompt().to_owned()),
                }),
                created_at: Some(run.created_at.clone().into()),
                updated_at: Some(run.updated_at.clone().into()),
                owner: None,
                agent_conversation_id: None,
                agent_config_snapshot: snapshot,
            }),
            env_vars,
            // The run token must never show up in the run's log.
            secret_env_vars: vec!["WARP_API_KEY".to_owned()],
            ..Default::default()
        }
    }

    async fn timer_pass(&self) -> Result<(), oz_store::StoreError> {
        self.sweep_followups().await?;
        // Lost workers.
        let expired: Vec<(String, Orphan)> = {
            let mut reg = self.reg();
            let ids: Vec<String> = reg
                .orphans
                .iter()
                .filter(|(_, o)| o.since.elapsed() >= self.settings.lease_grace)
                .map(|(id, _)| id.clone())
                .collect();
            ids.into_iter()
                .filter_map(|id| reg.orphans.remove(&id).map(|o| (id, o)))
                .collect()
        };
        for (run_id, orphan) in expired {
            let Some(run) = self.store.get_run(&run_id).await? else {
                continue;
            };
            if run.state == RunState::Pending {
                let why = format!(
                    "requeued: worker {:?} disconnected before claiming the run",
                    orphan.worker_id
                );
                self.requeue(&run_id, why, &now()).await?;
                continue;
            }
            let msg = format!(
                "worker {:?} was lost: it disconnected at {} and did not come back within {}",
                orphan.worker_id,
                orphan.since_ts,
                humantime::format_duration(self.settings.lease_grace)
            );
            tracing::warn!(run_id, worker_id = %orphan.worker_id, "run lost with its worker");
            self.end_run(
                &run_id,
                &LIVE,
                RunState::Error,
                StatusMessage::error(msg, "resource_unavailable", true),
            )
            .await?;
        }

        // Unconfirmed cancellations and unanswered assignments.
        for run in self.store.active_runs().await? {
            if let Some(asked) = &run.cancel_requested_at
                && age(asked) >= self.settings.cancel_timeout
            {
                let msg = format!(
                    "cancelled; the worker did not confirm the cancellation within {}",
                    humantime::format_duration(self.settings.cancel_timeout)
                );
                self.end_run(
                    &run.run_id,
                    &LIVE,
                    RunState::Cancelled,
                    StatusMessage::info(msg),
                )
                .await?;
                continue;
            }
            if run.state == RunState::Pending
                && run
                    .assigned_at
                    .as_deref()
                    .is_some_and(|t| age(t) >= self.settings.assign_timeout)
                && !self.reg().orphans.contains_key(&run.run_id)
            {
                let why = "requeued: the worker did not answer the assignment";
                // Still held until the requeue is known to have happened (a
                // claim may win the race), but its log frames read the run
                // from here on: the execution is about to be cleared.
                self.unremember(&run.run_id);
                if self.requeue(&run.run_id, why, &now()).await?.is_some() {
                    self.forget(&run.run_id);
                    self.wake();
                }
            }
        }
        Ok(())
    }

    /// PENDING → QUEUED (never claimed): clear holder, token and execution,
    /// and say why in `status_message`.
    async fn requeue(
        &self,
        run_id: &str,
        why: impl Into<String>,
        now_ts: &str,
    ) -> Result<Option<Run>, oz_store::StoreError> {
        let patch = RunPatch {
            holder: Some(None),
            token_hash: Some(None),
            execution_id: Some(None),
            status_message: Some(Some(StatusMessage::info(why))),
            ..Default::default()
        };
        let run = self
            .store
            .transition(
                run_id,
                &[RunState::Pending],
                RunState::Queued,
                patch,
                now_ts,
            )
            .await?;
        if let Some(r) = &run {
            self.queued(&r.team_id, &r.worker_host);
        }
        // Follow-ups that came while it was assigned go with the execution
        // that will really start.
        if run.as_ref().is_some_and(|r| r.pending_followups > 0) {
            return Ok(self.store.fold_followups(run_id, now_ts).await?.or(run));
        }
        Ok(run)
    }

    /// Move a run to a terminal state, clearing its holder and token.
    async fn end_run(
        &self,
        run_id: &str,
        from: &[RunState],
        to: RunState,
        status: StatusMessage,
    ) -> Result<Option<Run>, oz_store::StoreError> {
        self.end_run_logged(run_id, from, to, status, None).await
    }

    /// [`Hub::end_run`], recording where the run's log ends in the same
    /// transition when `log_last_seq` is given.
    async fn end_run_logged(
        &self,
        run_id: &str,
        from: &[RunState],
        to: RunState,
        status: StatusMessage,
        log_last_seq: Option<u64>,
    ) -> Result<Option<Run>, oz_store::StoreError> {
        let now_ts = now();
        let patch = RunPatch {
            status_message: Some(Some(status)),
            holder: Some(None),
            token_hash: Some(None),
            ended_at: Some(Some(now_ts.clone())),
            log_last_seq,
            ..Default::default()
        };
        let run = self
            .store
            .transition(run_id, from, to, patch, &now_ts)
            .await?;
        if let Some(ended) = &run {
            match log_last_seq {
                Some(last) => tracing::info!(run_id, state = %to, log_last_seq = last, "run ended"),
                None => tracing::info!(run_id, state = %to, "run ended"),
            }
            self.forget(run_id);
            self.logs.publish(run_id, LogEvent::Changed);
            // Follow-ups that waited for this execution start the next one.
            // (The count comes back with the transition: no extra query.)
            if ended.pending_followups > 0 {
                match self.store.requeue_for_followups(run_id, &now()).await {
                    Ok(Some(again)) => {
                        tracing::info!(run_id, "run queued again for its follow-ups");
                        self.logs.publish(run_id, LogEvent::Changed);
                        self.queued(&again.team_id, &again.worker_host);
                    }
                    Ok(None) => {}
                    Err(e) => {
                        tracing::warn!(run_id, error = %e, "cannot queue the run for its follow-ups; they stay pending until the next follow-up")
                    }
                }
            }
            self.wake();
        }
        Ok(run)
    }

    /// Keep holding the run, but forget the execution it was handed with:
    /// its log frames read the run from the store again.
    fn unremember(&self, run_id: &str) {
        let mut reg = self.reg();
        for c in reg.conns.values_mut() {
            if let Some(held) = c.running.get_mut(run_id) {
                *held = None;
            }
        }
    }

    /// Drop every in-memory trace of a run; frees the slot it held.
    fn forget(&self, run_id: &str) {
        let mut reg = self.reg();
        reg.orphans.remove(run_id);
        for c in reg.conns.values_mut() {
            c.adopted.remove(run_id);
            if c.running.remove(run_id).is_some() {
                c.saturated = false;
            }
        }
    }

    // ---- connections -------------------------------------------------------

    /// Register a new connection; returns its id and the frames to send it.
    pub fn connect(
        &self,
        worker_id: &str,
        team_id: &str,
        remote: String,
    ) -> (String, mpsc::UnboundedReceiver<String>, Vec<String>) {
        let conn_id = uuid::Uuid::new_v4().to_string();
        let (tx, rx) = mpsc::unbounded_channel();
        let hello = ServerMessage::ServerHello(ServerHello {
            protocol: 1,
            extensions: vec![
                oz_protocol::ext::WORKER_STATUS.to_owned(),
                oz_protocol::ext::LOGS.to_owned(),
            ],
        })
        .encode();
        let mut reg = self.reg();
        // Runs orphaned by a worker with this id are presumed to be running
        // on this one: the official worker keeps tasks across reconnects.
        let adopted: Vec<String> = reg
            .orphans
            .iter()
            .filter(|(_, o)| o.worker_id == worker_id && o.team_id == team_id)
            .map(|(id, _)| id.clone())
            .collect();
        for id in &adopted {
            reg.orphans.remove(id);
        }
        reg.conns.insert(
            conn_id.clone(),
            Conn {
                worker_id: worker_id.to_owned(),
                team_id: team_id.to_owned(),
                tx,
                running: adopted.iter().map(|id| (id.clone(), None)).collect(),
                adopted: adopted.iter().cloned().collect(),
                saturated: false,
                status: None,
                connected_at: now(),
                remote,
            },
        );
        drop(reg);
        if !adopted.is_empty() {
            tracing::info!(worker_id, connection = %conn_id, runs = adopted.len(), "worker came back; its runs are attached again");
        }
        self.wake();
        (conn_id, rx, vec![hello])
    }

    /// Resend pending cancellations for runs held by this connection (after
    /// a reconnect); also records the new holder.
    pub async fn after_connect(&self, conn_id: &str) -> Result<(), oz_store::StoreError> {
        let runs: Vec<String> = self
            .reg()
            .conns
            .get(conn_id)
            .map(|c| c.running.keys().cloned().collect())
            .unwrap_or_default();
        for run_id in runs {
            let patch = RunPatch {
                holder: Some(Some(conn_id.to_owned())),
                ..Default::default()
            };
            if let Some(run) = self.store.patch_run(&run_id, &LIVE, patch, &now()).await?
                && run.cancel_requested_at.is_some()
            {
                self.send_to(
                    conn_id,
                    &ServerMessage::TaskCancellation(TaskCancellation { task_id: run_id }),
                );
            }
        }
        Ok(())
    }

    /// The connection is gone: its runs become orphans.
    pub fn disconnect(&self, conn_id: &str) {
        let mut reg = self.reg();
        let Some(conn) = reg.conns.remove(conn_id) else {
            return;
        };
        let since_ts = now();
        for run_id in conn.running.into_keys() {
            reg.orphans.insert(
                run_id,
                Orphan {
                    worker_id: conn.worker_id.clone(),
                    team_id: conn.team_id.clone(),
                    since: Instant::now(),
                    since_ts: since_ts.clone(),
                },
            );
        }
        drop(reg);
        tracing::info!(worker_id = %conn.worker_id, connection = conn_id, "worker disconnected");
        self.wake();
    }

    fn send_to(&self, conn_id: &str, msg: &ServerMessage) -> bool {
        let reg = self.reg();
        reg.conns
            .get(conn_id)
            .is_some_and(|c| c.tx.send(msg.encode()).is_ok())
    }

    /// Ask the worker holding `run` to cancel it. False if it is not connected
    /// now (the request is repeated when it comes back).
    pub fn request_cancel(&self, run: &Run) -> bool {
        let msg = ServerMessage::TaskCancellation(TaskCancellation {
            task_id: run.run_id.clone(),
        });
        let holder = {
            let reg = self.reg();
            reg.conns
                .iter()
                .find(|(_, c)| c.running.contains_key(&run.run_id))
                .map(|(id, _)| id.clone())
                .or_else(|| run.holder.clone())
        };
        holder.is_some_and(|h| self.send_to(&h, &msg))
    }

    /// Handle one frame from a worker connection.
    pub async fn on_frame(
        &self,
        conn_id: &str,
        worker_id: &str,
        msg: WorkerMessage,
    ) -> Result<(), oz_store::StoreError> {
        let now_ts = now();
        match msg {
            WorkerMessage::TaskClaimed(c) => {
                if !self.holds(conn_id, &c.task_id) {
                    tracing::warn!(run_id = %c.task_id, worker_id, "ignoring a claim for a run this connection was not given");
                    return Ok(());
                }
                let patch = RunPatch {
                    holder: Some(Some(conn_id.to_owned())),
                    status_message: Some(None),
                    ..Default::default()
                };
                let run = self
                    .store
                    .transition(
                        &c.task_id,
                        &[RunState::Pending],
                        RunState::Claimed,
                        patch,
                        &now_ts,
                    )
                    .await?;
                let live = match run {
                    Some(_) => {
                        tracing::info!(run_id = %c.task_id, worker_id, "run claimed");
                        true
                    }
                    // A repeated claim of a run this worker already holds.
                    None => self
                        .store
                        .get_run(&c.task_id)
                        .await?
                        .is_some_and(|r| r.state.is_active()),
                };
                if live {
                    self.attach(conn_id, &c.task_id);
                }
            }
            WorkerMessage::TaskRejected(r) => {
                let Some(run) = self.store.get_run(&r.task_id).await? else {
                    return Ok(());
                };
                if run.state != RunState::Pending || run.holder.as_deref() != Some(conn_id) {
                    return Ok(());
                }
                let why = format!(
                    "worker {worker_id:?} rejected the run ({}); waiting for a free slot",
                    r.reason
                );
                // Released (and the connection marked full) before the run
                // is queued again: the dispatcher, in another task, may hand
                // it out as soon as the requeue commits, even to this
                // connection once it has room.
                {
                    let mut reg = self.reg();
                    if let Some(c) = reg.conns.get_mut(conn_id) {
                        c.running.remove(&r.task_id);
                        c.saturated = true;
                    }
                }
                self.requeue(&r.task_id, why, &now_ts).await?;
                tracing::info!(run_id = %r.task_id, worker_id, reason = %r.reason, "run rejected; back in the queue");
                self.wake();
            }
            msg @ (WorkerMessage::TaskCompleted(_) | WorkerMessage::TaskFailed(_)) => {
                if let Some((run_id, state, status)) = terminal_of(&msg) {
                    self.finish_from_worker(conn_id, &run_id, state, status)
                        .await?;
                }
            }
            WorkerMessage::WorkerStatus(status) => self.on_status(conn_id, status),
            WorkerMessage::LogLines(batch) => {
                let Some(team_id) = self.conn_team(conn_id) else {
                    return Ok(());
                };
                if let Some(seq) = self.store_log_lines(conn_id, &team_id, &batch).await? {
                    self.send_to(
                        conn_id,
                        &ServerMessage::LogAck(LogAck {
                            task_id: batch.task_id,
                            seq,
                        }),
                    );
                }
            }
            WorkerMessage::LogEnd(end) => {
                let Some(team_id) = self.conn_team(conn_id) else {
                    return Ok(());
                };
                self.store_log_end(conn_id, &team_id, &end).await?;
            }
        }
        Ok(())
    }

    /// Does this connection hold the run (assigned to it, claimed by it, or
    /// adopted after a reconnect)? Results and claims from any other
    /// connection (another team's, or a worker whose execution the server
    /// gave up on) are ignored.
    fn holds(&self, conn_id: &str, run_id: &str) -> bool {
        self.reg()
            .conns
            .get(conn_id)
            .is_some_and(|c| c.running.contains_key(run_id))
    }

    /// Does a connection other than `conn_id` hold the run?
    fn held_elsewhere(&self, conn_id: &str, run_id: &str) -> bool {
        self.reg()
            .conns
            .iter()
            .any(|(id, c)| id != conn_id && c.running.contains_key(run_id))
    }

    fn conn_team(&self, conn_id: &str) -> Option<String> {
        self.reg().conns.get(conn_id).map(|c| c.team_id.clone())
    }

    /// Where a log frame of `conn_id` for `run_id` (sent for
    /// `execution_id`) goes: nowhere if the run does not exist in `team_id`;
    /// [`LogTarget::Past`] if it is of an execution that is over (another
    /// execution id or, from older workers that send none, while another
    /// connection holds the run). A run this process handed to the
    /// connection is known without a read: a held run is in the
    /// connection's team, and its execution does not change while the hub
    /// remembers it (a rejection releases the run before requeueing it, an
    /// unanswered assignment is forgotten before it, and a run that ends is
    /// released right after its terminal transition, while any frame in
    /// between is still of that execution). Any other run (adopted after a
    /// reconnect, or already released while late lines arrive) is read from
    /// the store.
    async fn log_target(
        &self,
        conn_id: &str,
        team_id: &str,
        run_id: &str,
        execution_id: Option<&String>,
    ) -> Result<Option<LogTarget>, oz_store::StoreError> {
        let held = self
            .reg()
            .conns
            .get(conn_id)
            .and_then(|c| c.running.get(run_id).cloned().flatten());
        let current = match held {
            Some(h) => h,
            None => {
                let run = self
                    .store
                    .get_run(run_id)
                    .await?
                    .filter(|r| r.team_id == team_id);
                let Some(run) = run else {
                    tracing::debug!(
                        run_id,
                        "dropping log frame: no such run in the worker's team"
                    );
                    return Ok(None);
                };
                Held::of(&run)
            }
        };
        let past = execution_id.is_some_and(|e| current.execution_id.as_ref() != Some(e));
        if past || self.held_elsewhere(conn_id, run_id) {
            return Ok(Some(LogTarget::Past));
        }
        Ok(Some(LogTarget::Current(current)))
    }

    /// Store one `log_lines` frame (in one transaction) and publish the
    /// lines to live readers. Returns the seq to acknowledge: the highest
    /// seq of the frame, once it is committed; `None` when nothing was
    /// stored (unknown run, another team's run, no valid line).
    ///
    /// Seqs start at 1; a line with seq 0 or beyond `i64::MAX` cannot be
    /// stored and is dropped. A line whose `data_b64` does not decode is
    /// stored as a gap marker.
    pub async fn store_log_lines(
        &self,
        conn_id: &str,
        team_id: &str,
        batch: &LogLines,
    ) -> Result<Option<u64>, oz_store::StoreError> {
        if batch.lines.is_empty() {
            return Ok(None);
        }
        let target = self
            .log_target(
                conn_id,
                team_id,
                &batch.task_id,
                batch.execution_id.as_ref(),
            )
            .await?;
        let run = match target {
            None => return Ok(None),
            // Lines of an execution that is over (the run went on to
            // another one after a follow-up): acknowledged, so the worker's
            // spool drains, but not stored among the current execution's.
            Some(LogTarget::Past) => {
                tracing::debug!(run_id = %batch.task_id, "dropping log lines of a past execution");
                return Ok(batch.lines.iter().map(|l| l.seq).max());
            }
            Some(LogTarget::Current(run)) => run,
        };
        // Workers number every execution's lines from 1; a later execution
        // (after a follow-up) is stored after the earlier ones.
        let base = run.log_seq_base;
        let mut records = Vec::with_capacity(batch.lines.len());
        for line in &batch.lines {
            let stored = line
                .seq
                .checked_add(base)
                .filter(|s| i64::try_from(*s).is_ok());
            let Some(stored) = stored.filter(|_| line.seq != 0) else {
                tracing::warn!(run_id = %batch.task_id, seq = line.seq, "dropping a log line with an invalid seq");
                continue;
            };
            let mut record = LogRecord::from_line(line).unwrap_or_else(|e| {
                tracing::warn!(run_id = %batch.task_id, error = %e, "storing an undecodable log line as a gap");
                LogRecord::from_line_lossy(line)
            });
            record.seq = stored;
            records.push(record);
        }
        // Stable: of two lines with one seq in a frame, the first is kept,
        // as the store keeps the first one it got.
        records.sort_by_key(|r| r.seq);
        records.dedup_by_key(|r| r.seq);
        let Some(last) = records.last().map(|r| r.seq) else {
            return Ok(None);
        };
        self.store.append_logs(&batch.task_id, &records).await?;
        let lines = records.iter().map(LogRecord::to_line).collect();
        self.logs
            .publish(&batch.task_id, LogEvent::Lines(Arc::new(lines)));
        // Acknowledge in the worker's own numbering.
        Ok(Some(last - base))
    }

    /// Record a `log_end` and tell live readers. False when dropped.
    pub async fn store_log_end(
        &self,
        conn_id: &str,
        team_id: &str,
        end: &LogEnd,
    ) -> Result<bool, oz_store::StoreError> {
        let target = self
            .log_target(conn_id, team_id, &end.task_id, end.execution_id.as_ref())
            .await?;
        let run = match target {
            None => return Ok(false),
            Some(LogTarget::Past) => {
                tracing::debug!(run_id = %end.task_id, "ignoring a log_end of a past execution");
                return Ok(false);
            }
            Some(LogTarget::Current(run)) => run,
        };
        let Some(last) = end
            .last_seq
            .checked_add(run.log_seq_base)
            .filter(|s| i64::try_from(*s).is_ok())
        else {
            tracing::warn!(run_id = %end.task_id, last_seq = end.last_seq, "dropping a log_end with an invalid seq");
            return Ok(false);
        };
        let stored = self.store.set_log_end(&end.task_id, last).await?;
        self.logs.publish(&end.task_id, LogEvent::Changed);
        Ok(stored)
    }

    /// Listen to a run's new log lines and changes (see [`crate::logs`]).
    pub fn subscribe_logs(&self, run_id: &str) -> LogSubscription {
        self.logs.subscribe(run_id)
    }

    /// Something about a run changed outside the hub (e.g. a queued run was
    /// cancelled): wake its log readers.
    pub fn notify_log_readers(&self, run_id: &str) {
        self.logs.publish(run_id, LogEvent::Changed);
    }

    /// The log channels, for tests and diagnostics.
    pub fn log_bus(&self) -> &Arc<LogBus> {
        &self.logs
    }

    async fn finish_from_worker(
        &self,
        conn_id: &str,
        run_id: &str,
        state: RunState,
        status: StatusMessage,
    ) -> Result<(), oz_store::StoreError> {
        if !self.holds(conn_id, run_id) {
            ignoring_result(conn_id, run_id);
            return Ok(());
        }
        let from = [RunState::Pending, RunState::Claimed, RunState::Inprogress];
        if self.end_run(run_id, &from, state, status).await?.is_none() {
            tracing::debug!(run_id, "late or duplicate result ignored");
            self.forget(run_id);
        }
        Ok(())
    }

    /// A task's `log_end` and its terminal frame, arrived together (a
    /// worker sends them back to back): one transition ends the run and
    /// records where its log ends, one commit instead of two. Anything but
    /// the plain case (the connection holds the run, and the `log_end` is of
    /// the execution it was handed, which is known without a read) takes
    /// the two frames one by one, and so does the `log_end` whenever the
    /// transition does not happen: the end of the log is stored whatever
    /// becomes of the result, as if the frames had come apart.
    pub async fn on_log_end_and_result(
        &self,
        conn_id: &str,
        worker_id: &str,
        end: LogEnd,
        result: WorkerMessage,
    ) -> Result<(), oz_store::StoreError> {
        let held = self
            .reg()
            .conns
            .get(conn_id)
            .and_then(|c| c.running.get(&end.task_id).cloned().flatten());
        let last = held
            .filter(|h| {
                result.is_terminal()
                    && result.task_id() == end.task_id
                    && end
                        .execution_id
                        .as_ref()
                        .is_none_or(|e| h.execution_id.as_ref() == Some(e))
                    && !self.held_elsewhere(conn_id, &end.task_id)
            })
            .and_then(|h| end.last_seq.checked_add(h.log_seq_base))
            .filter(|s| i64::try_from(*s).is_ok());
        let (Some(last), Some((run_id, state, status))) = (last, terminal_of(&result)) else {
            let alone = self
                .on_frame(conn_id, worker_id, WorkerMessage::LogEnd(end))
                .await;
            if let Err(e) = alone {
                tracing::error!(error = %e, "cannot record a worker frame");
            }
            return self.on_frame(conn_id, worker_id, result).await;
        };
        // With a multi-thread runtime a sweep may have let the run go
        // since `held` was read.
        if !self.holds(conn_id, &run_id) {
            ignoring_result(conn_id, &run_id);
            return self.lone_log_end(conn_id, &end).await;
        }
        let from = [RunState::Pending, RunState::Claimed, RunState::Inprogress];
        match self
            .end_run_logged(&run_id, &from, state, status, Some(last))
            .await
        {
            Ok(Some(_)) => Ok(()),
            Ok(None) => {
                tracing::debug!(run_id, "late or duplicate result ignored");
                self.forget(&run_id);
                self.lone_log_end(conn_id, &end).await
            }
            Err(e) => {
                if let Err(e) = self.lone_log_end(conn_id, &end).await {
                    tracing::error!(error = %e, "cannot record a worker frame");
                }
                Err(e)
            }
        }
    }

    /// A `log_end` stored on its own, with every check a lone frame gets.
    async fn lone_log_end(&self, conn_id: &str, end: &LogEnd) -> Result<(), oz_store::StoreError> {
        let Some(team_id) = self.conn_team(conn_id) else {
            return Ok(());
        };
        self.store_log_end(conn_id, &team_id, end).await.map(|_| ())
    }

    fn attach(&self, conn_id: &str, run_id: &str) {
        let mut reg = self.reg();
        reg.orphans.remove(run_id);
        if let Some(c) = reg.conns.get_mut(conn_id) {
            c.running.entry(run_id.to_owned()).or_insert(None);
        }
    }

    /// Extension: the worker told us what it runs. Adopted runs it does not
    /// list go back to waiting for their real worker.
    fn on_status(&self, conn_id: &str, status: WorkerStatus) {
        let mut reg = self.reg();
        let Some(conn) = reg.conns.get(conn_id) else {
            return;
        };
        let (worker_id, team_id) = (conn.worker_id.clone(), conn.team_id.clone());
        // A worker may only take back runs it holds or that a worker with
        // its id and team lost; anything else it names is not its to report.
        let listed: HashSet<String> = status
            .running
            .iter()
            .filter(|id| {
                conn.running.contains_key(*id) || orphans_of(&reg.orphans, id, &worker_id, &team_id)
            })
            .cloned()
            .collect();
        let Some(conn) = reg.conns.get_mut(conn_id) else {
            return;
        };
        // Only adopted runs it does not list go back: a run assigned to this
        // connection may simply be newer than the status.
        let unlisted: Vec<String> = conn.adopted.difference(&listed).cloned().collect();
        for id in &listed {
            conn.running.entry(id.clone()).or_insert(None);
            conn.adopted.remove(id);
        }
        for id in &unlisted {
            conn.running.remove(id);
            conn.adopted.remove(id);
        }
        conn.status = Some(status);
        let since_ts = now();
        for id in unlisted {
            reg.orphans.entry(id).or_insert(Orphan {
                worker_id: worker_id.clone(),
                team_id: team_id.clone(),
                since: Instant::now(),
                since_ts: since_ts.clone(),
            });
        }
        for id in listed {
            reg.orphans.remove(&id);
        }
        drop(reg);
        self.wake();
    }

    /// Connected workers, for `GET /api/v1/workers`.
    pub fn workers(&self, team_id: &str) -> Vec<WorkerInfo> {
        let reg = self.reg();
        let mut out: Vec<WorkerInfo> = reg
            .conns
            .iter()
            .filter(|(_, c)| c.team_id == team_id)
            .map(|(id, c)| {
                let mut running: Vec<String> = c.running.keys().cloned().collect();
                running.sort();
                WorkerInfo {
                    worker_id: c.worker_id.clone(),
                    connection_id: id.clone(),
                    connected_at: c.connected_at.clone(),
                    remote_addr: c.remote.clone(),
                    version: c.status.as_ref().map(|s| s.version.clone()),
                    backend: c.status.as_ref().map(|s| s.backend.clone()),
                    max_concurrent_tasks: c.status.as_ref().map(|s| s.max_concurrent_tasks),
                    at_capacity: c.saturated || !has_room(c),
                    draining: c.status.as_ref().is_some_and(|s| s.draining),
                    running_runs: running,
                }
            })
            .collect();
        out.sort_by(|a, b| {
            a.worker_id
                .cmp(&b.worker_id)
                .then(a.connected_at.cmp(&b.connected_at))
        });
        out
    }

    /// Close every connection (server shutdown); workers will reconnect.
    pub fn close_all(&self) {
        self.reg().conns.clear();
    }
}

/// Is `run_id` an orphan that a worker with this id and team may adopt?
fn orphans_of(
    orphans: &HashMap<String, Orphan>,
    run_id: &str,
    worker_id: &str,
    team_id: &str,
) -> bool {
    orphans
        .get(run_id)
        .is_some_and(|o| o.worker_id == worker_id && o.team_id == team_id)
}

fn has_room(c: &Conn) -> bool {
    match &c.status {
        Some(s) if s.draining => false,
        Some(s) if s.max_concurrent_tasks > 0 => (c.running.len() as u64) < s.max_concurrent_tasks,
        _ => true,
    }
}

/// Seconds since a stored timestamp (0 if unparsable).
fn age(ts: &str) -> Duration {
    oz_store::parse_ts(ts)
        .and_then(|t| (chrono::Utc::now() - t).to_std().ok())
        .unwrap_or_default()
}

/// Map a `task_failed` to the run's final state: what the task itself did
/// wrong is FAILED; what the infrastructure did is ERROR.
/// The run, state and status message a terminal frame ends its run with;
/// `None` for any other frame.
fn terminal_of(msg: &WorkerMessage) -> Option<(String, RunState, StatusMessage)> {
    match msg {
        WorkerMessage::TaskCompleted(c) => {
            let state = if c.task_state.as_deref() == Some("CANCELLED") {
                RunState::Cancelled
            } else {
                RunState::Succeeded
            };
            Some((
                c.task_id.clone(),
                state,
                StatusMessage::info(c.message.clone()),
            ))
        }
        WorkerMessage::TaskFailed(f) => {
            let (state, status) = failure_status(f);
            Some((f.task_id.clone(), state, status))
        }
        _ => None,
    }
}

fn ignoring_result(conn_id: &str, run_id: &str) {
    tracing::info!(
        run_id,
        connection = conn_id,
        "ignoring a result for a run this connection does not hold (late, or not its own)"
    );
}

fn failure_status(f: &oz_protocol::TaskFailed) -> (RunState, StatusMessage) {
    let mut message = f.message.clone();
    if let Some(code) = f.exit_code {
        message.push_str(&format!(" (exit code {code})"));
    }
    let reason = f.failure_reason.unwrap_or(FailureReason::Unknown);
    match reason {
        FailureReason::AgentInvocation | FailureReason::TaskTimeout => (
            RunState::Failed,
            StatusMessage {
                message,
                error_code: None,
                retryable: Some(false),
            },
        ),
        FailureReason::SetupCommand | FailureReason::WorkspaceSetup => (
            RunState::Failed,
            StatusMessage::error(message, "environment_setup_failed", false),
        ),
        FailureReason::GracefulShutdown | FailureReason::TaskCancelled => (
            RunState::Error,
            StatusMessage::error(message, "resource_unavailable", true),
        ),
        _ => (
            RunState::Error,
            StatusMessage::error(message, "internal_error", true),
        ),
    }
}
