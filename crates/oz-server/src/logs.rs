//! Live logs (extension `logs`): the per-run broadcast of new lines, the
//! follower behind the SSE endpoint, the completeness rule, and retention.
//!
//! Lines reach the store first (the hub appends a worker's frame in one
//! transaction) and are published after the commit, so anything a reader
//! receives live is already stored. A reader subscribes *before* it reads
//! the backlog and skips every seq it has already passed, so a line stored
//! between the backlog read and the subscription cannot be lost, and none
//! is seen twice. The broadcast is only a shortcut: a reader that lags, or
//! sees a hole in the seqs, reads the store again, and it polls the store
//! every second anyway (lines written by another process, missed
//! notifications, a run that ended without the hub noticing).

use std::collections::hash_map::Entry;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use oz_protocol::api::{RunState, StatusMessage};
use oz_store::{LogLine, LogPhase, LogQuery, Run, Store, StoreError};
use tokio::sync::broadcast;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// A run that ended without `log_end` (a worker without the extension, a
/// lost worker) has a complete log this long after it ended.
pub const LOG_END_GRACE: Duration = Duration::from_secs(10);
/// Followers read the store this often even without a notification.
pub const POLL_EVERY: Duration = Duration::from_secs(1);
/// Lines a follower reads from the store at once.
const READ_BATCH: u32 = 500;
/// Events buffered per run for slow readers; a reader that falls further
/// behind reads the store instead.
const CHANNEL_CAPACITY: usize = 256;
/// How often retention runs (it also runs once at start).
pub const RETENTION_EVERY: Duration = Duration::from_secs(3600);

/// What the hub tells the readers of one run.
#[derive(Debug, Clone)]
pub enum LogEvent {
    /// Lines just stored, in seq order.
    Lines(Arc<Vec<LogLine>>),
    /// `log_end` arrived or the run changed state: check completeness.
    Changed,
}

/// The per-run channels. A channel exists while someone listens: it is
/// created by the first subscriber and removed with the last one.
#[derive(Debug, Default)]
pub struct LogBus {
    channels: Mutex<HashMap<String, broadcast::Sender<LogEvent>>>,
}

impl LogBus {
    fn channels(&self) -> std::sync::MutexGuard<'_, HashMap<String, broadcast::Sender<LogEvent>>> {
        self.channels.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Listen to a run's events from now on.
    pub fn subscribe(self: &Arc<Self>, run_id: &str) -> LogSubscription {
        let rx = match self.channels().entry(run_id.to_owned()) {
            Entry::Occupied(e) => e.get().subscribe(),
            Entry::Vacant(e) => {
                let (tx, rx) = broadcast::channel(CHANNEL_CAPACITY);
                e.insert(tx);
                rx
            }
        };
        LogSubscription {
            bus: self.clone(),
            run_id: run_id.to_owned(),
            rx: Some(rx),
        }
    }

    /// Tell the run's listeners, if there are any.
    pub fn publish(&self, run_id: &str, event: LogEvent) {
        let mut channels = self.channels();
        if let Some(tx) = channels.get(run_id)
            && tx.send(event).is_err()
        {
            // Nobody listens any more.
            channels.remove(run_id);
        }
    }

    /// Runs with at least one listener.
    pub fn listened_runs(&self) -> usize {
        self.channels().len()
    }
}

/// One listener of a run; dropping it removes the run's channel when it was
/// the last.
#[derive(Debug)]
pub struct LogSubscription {
    bus: Arc<LogBus>,
    run_id: String,
    rx: Option<broadcast::Receiver<LogEvent>>,
}

impl LogSubscription {
    pub async fn recv(&mut self) -> Result<LogEvent, broadcast::error::RecvError> {
        match &mut self.rx {
            Some(rx) => rx.recv().await,
            None => Err(broadcast::error::RecvError::Closed),
        }
    }
}

impl Drop for LogSubscription {
    fn drop(&mut self) {
        // Drop the receiver first, then look at the count under the lock that
        // `subscribe` takes: a new subscriber either comes before (and is
        // counted) or finds no channel and makes a fresh one.
        drop(self.rx.take());
        let mut channels = self.bus.channels();
        if channels
            .get(&self.run_id)
            .is_some_and(|tx| tx.receiver_count() == 0)
        {
            channels.remove(&self.run_id);
        }
    }
}

/// Is the run's log complete: the run ended, and either every line up to
/// the seq of its `log_end` is stored, or it never reached a worker, or it
/// ended [`LOG_END_GRACE`] ago (no `log_end` will come, or the missing lines
/// never will).
pub async fn is_complete(store: &dyn Store, run: &Run) -> Result<bool, StoreError> {
    if !run.state.is_terminal() {
        return Ok(false);
    }
    if run.execution_id.is_none() {
        // Never handed to a worker (or only to one that rejected it).
        return Ok(true);
    }
    if let Some(last) = run.log_last_seq
        && (last == 0 || store.count_logs_up_to(&run.run_id, last).await? >= last)
    {
        return Ok(true);
    }
    let ended = run.ended_at.as_deref().unwrap_or(&run.updated_at);
    let since = oz_store::parse_ts(ended)
        .and_then(|t| (chrono::Utc::now() - t).to_std().ok())
        .unwrap_or_default();
    Ok(since >= LOG_END_GRACE)
}

/// What a follower yields.
#[derive(Debug, Clone, PartialEq)]
pub enum FollowItem {
    Line(LogLine),
    /// The run ended and its log is complete; nothing follows.
    End {
        state: RunState,
        status_message: Option<StatusMessage>,
    },
}

/// Follows one run's log: the backlog after a seq, then live lines, then
/// the end. Each seq is yielded at most once, in increasing order.
pub struct Follower {
    store: Arc<dyn Store>,
    run_id: String,
    sub: LogSubscription,
    /// False once the channel closed; the store poll remains.
    live: bool,
    phase: Option<LogPhase>,
    /// Highest seq consumed (yielded or filtered out).
    cursor: u64,
    queue: VecDeque<FollowItem>,
    /// The store may hold lines after `cursor`, or the run may have ended.
    dirty: bool,
    /// The run as it was when its log was found complete; lines stored
    /// before that moment are still to be read, then the end follows.
    complete: Option<Run>,
    done: bool,
    next_poll: Instant,
}

impl Follower {
    /// `sub` must be taken before anything is read, so nothing falls in
    /// between.
    pub fn new(
        store: Arc<dyn Store>,
        sub: LogSubscription,
        run_id: &str,
        after_seq: u64,
        phase: Option<LogPhase>,
    ) -> Self {
        Follower {
            store,
            run_id: run_id.to_owned(),
            sub,
            live: true,
            phase,
            cursor: after_seq,
            queue: VecDeque::new(),
            dirty: true,
            complete: None,
            done: false,
            next_poll: Instant::now() + POLL_EVERY,
        }
    }

    /// The next item; `None` after the end (or if the run disappeared).
    pub async fn next(&mut self) -> Option<FollowItem> {
        loop {
            if let Some(item) = self.queue.pop_front() {
                return Some(item);
            }
            if self.done {
                return None;
            }
            if self.dirty {
                if let Err(e) = self.catch_up().await {
                    tracing::warn!(run_id = %self.run_id, error = %e, "cannot read the run's log; trying again");
                    // Try again at the next poll.
                    self.dirty = false;
                }
                continue;
            }
            self.wait().await;
        }
    }

    /// Read the store after `cursor` (one batch), checking completeness
    /// first so that a complete log is known to be all stored.
    async fn catch_up(&mut self) -> Result<(), StoreError> {
        if self.complete.is_none() {
            let Some(run) = self.store.get_run(&self.run_id).await? else {
                self.done = true;
                return Ok(());
            };
            if is_complete(self.store.as_ref(), &run).await? {
                self.complete = Some(run);
            }
        }
        let batch = self
            .store
            .read_logs(&LogQuery {
                run_id: self.run_id.clone(),
                after_seq: self.cursor,
                limit: READ_BATCH,
                phase: None,
            })
            .await?;
        let full = batch.len() >= READ_BATCH as usize;
        for r in batch {
            self.consume(r.to_line());
        }
        if full {
            return Ok(()); // more to read: stay dirty
        }
        self.dirty = false;
        if let Some(run) = self.complete.take() {
            self.queue.push_back(FollowItem::End {
                state: run.state,
                status_message: run.status_message,
            });
            self.done = true;
        }
        Ok(())
    }

    fn consume(&mut self, line: LogLine) {
        if line.seq <= self.cursor {
            return;
        }
        self.cursor = line.seq;
        if self.phase.is_none_or(|p| p == line.phase) {
            self.queue.push_back(FollowItem::Line(line));
        }
    }

    /// Lines from the broadcast: taken directly while they continue the
    /// seqs seen so far; a hole means the store has to be read.
    fn on_live(&mut self, lines: &[LogLine]) {
        for l in lines {
            if l.seq <= self.cursor {
                continue;
            }
            if l.seq != self.cursor + 1 {
                self.dirty = true;
                return;
            }
            self.consume(l.clone());
        }
    }

    async fn wait(&mut self) {
        let poll = tokio::time::sleep_until(self.next_poll);
        if self.live {
            tokio::select! {
                ev = self.sub.recv() => match ev {
                    Ok(LogEvent::Lines(lines)) => self.on_live(&lines),
                    Ok(LogEvent::Changed) | Err(broadcast::error::RecvError::Lagged(_)) => {
                        self.dirty = true;
                    }
                    Err(broadcast::error::RecvError::Closed) => {
                        self.live = false;
                        self.dirty = true;
                    }
                },
                _ = poll => self.polled(),
            }
        } else {
            poll.await;
            self.polled();
        }
    }

    fn polled(&mut self) {
        self.dirty = true;
        self.next_poll = Instant::now() + POLL_EVERY;
    }
}

/// Delete the logs of runs that ended more than `keep` ago.
pub async fn prune(store: &dyn Store, keep: Duration) -> Result<u64, StoreError> {
    let cutoff = chrono::Duration::from_std(keep)
        .ok()
        .and_then(|d| chrono::Utc::now().checked_sub_signed(d));
    match cutoff {
        Some(t) => store.delete_logs_ended_before(&oz_store::ts(t)).await,
        // Further back than time goes: nothing is that old.
        None => Ok(0),
    }
}

/// Retention: prune at start, then every [`RETENTION_EVERY`], until `stop`.
pub async fn run_retention(store: Arc<dyn Store>, keep: Duration, stop: CancellationToken) {
    loop {
        match prune(store.as_ref(), keep).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(
                lines = n,
                retention = %humantime::format_duration(keep),
                "deleted the logs of runs that ended before the retention period"
            ),
            Err(e) => tracing::error!(error = %e, "log retention failed"),
        }
        tokio::select! {
            _ = tokio::time::sleep(RETENTION_EVERY) => {}
            _ = stop.cancelled() => return,
        }
    }
}
