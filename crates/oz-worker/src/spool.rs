//! The worker's durable state, under `state_dir`:
//!
//! - `spool/<task_id>.jsonl`: the task's output, one JSON [`LogLine`] per
//!   line, appended as it is read and before anything is sent. Lines leave
//!   the file once the control plane has acknowledged them (`log_ack`); the
//!   file is deleted when the whole log is acknowledged.
//! - `results/journal.jsonl`: the terminal frames of finished tasks,
//!   journaled before they are queued and marked done once written to the
//!   socket, so that a restarted worker still delivers them
//!   ([`crate::journal`]).
//! - `lock`: an exclusive `flock`, so two workers never share a state dir.
//!
//! The connection takes its log frames from here, in the order the `logs`
//! extension requires: a task's lines in seq order, then `log_end`, then the
//! task's terminal frame. On a connection without `logs` the terminal frame
//! goes out at once and the task's lines are discarded.
//!
//! Bound: when the unacknowledged part of a task's spool file reaches
//! `log_spool_limit` while a control plane that acknowledges lines is
//! connected, the task's output is no longer read until acks free room
//! ([`Spool::room`]): the task blocks on its next write and no line is lost.
//! The file can pass the limit by what was read last (one read per pipe).
//! Without such a connection, it grows past the limit, its oldest lines
//! that never went out are replaced by one gap marker carrying the number
//! of bytes dropped, and the file is compacted to half the limit. Lines
//! already written to some connection and not yet acknowledged are kept:
//! the server may have stored them, and a marker with their seq would be
//! dropped as a duplicate. That window is at most a quarter of the limit
//! (plus one batch).
//!
//! Memory: nothing but offsets is kept per task; batches are read from the
//! file when they are sent.

use std::collections::{HashMap, HashSet, VecDeque};
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use oz_protocol::WorkerMessage;
use oz_protocol::logs::{LogEnd, LogLine, LogLines, LogPhase, LogStream};
use tokio::sync::Notify;

use crate::journal::{Pending, ResultJournal};

/// Most line data (spool bytes) in one `log_lines` frame.
pub const BATCH_BYTES: u64 = 256 * 1024;
/// Most spool bytes of one task written to a connection and not yet
/// acknowledged; sending pauses above it until an ack arrives.
pub const IN_FLIGHT_BYTES: u64 = 1024 * 1024;
/// Room kept for the gap marker when compacting.
const MARKER_RESERVE: u64 = 256;

pub const SPOOL_DIR: &str = "spool";
pub const RESULTS_DIR: &str = "results";
pub const LOCK_FILE: &str = "lock";

/// One piece of output ready to be spooled: a line, or a piece of a long one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Piece {
    pub bytes: Vec<u8>,
    /// The original line ended here with `\n`.
    pub newline: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum StateDirError {
    // The OS error is in the message, not a `source`: the top-level report
    // prints the chain and would repeat it.
    #[error(
        "state_dir {path} cannot be used: {error}; create it and give the worker's user write access, or set --state-dir / state_dir"
    )]
    Unusable { path: PathBuf, error: io::Error },
    #[error(
        "state_dir {path} is in use by another oz-agent-worker process (it holds {lock}); give every worker its own --state-dir"
    )]
    Locked { path: PathBuf, lock: PathBuf },
}

/// Create `state_dir` (mode 0700 when we create it) with its `spool/` and
/// `results/` subdirectories (always 0700), and prove we can write there.
pub fn prepare_state_dir(dir: &Path) -> Result<(), StateDirError> {
    let unusable = |error| StateDirError::Unusable {
        path: dir.to_owned(),
        error,
    };
    if !dir.is_dir() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(unusable)?;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(unusable)?;
    }
    for sub in [SPOOL_DIR, RESULTS_DIR] {
        let p = dir.join(sub);
        if !p.is_dir() {
            fs::DirBuilder::new()
                .mode(0o700)
                .create(&p)
                .map_err(unusable)?;
        }
        fs::set_permissions(&p, fs::Permissions::from_mode(0o700)).map_err(unusable)?;
    }
    let probe = dir
        .join(SPOOL_DIR)
        .join(format!(".oz-probe-{}", std::process::id()));
    File::create(&probe).map_err(unusable)?;
    fs::remove_file(&probe).map_err(unusable)
}

/// Output lost to a failed spool write, reported by the next gap marker.
#[derive(Debug, Clone, Copy)]
struct Lost {
    bytes: u64,
    stream: LogStream,
    phase: LogPhase,
}

/// One task's spool. Offsets are byte offsets in its file, with
/// `base <= send <= protect <= len`: `base` is the first unacknowledged
/// byte, `send` the next byte to send on this connection, `protect` the end
/// of what went out on any connection (never dropped by the bound), `len`
/// the file length.
#[derive(Debug)]
struct Entry {
    path: PathBuf,
    execution_id: Option<String>,
    writer: Option<File>,
    len: u64,
    base: u64,
    send: u64,
    protect: u64,
    /// Batches sent on this connection: (last seq, end offset).
    flights: VecDeque<(u64, u64)>,
    last_seq: u64,
    acked: u64,
    /// No more lines will come (the task ended, or it is a leftover).
    finished: bool,
    end_sent: bool,
    /// The terminal frame, held until the log before it was sent.
    result: Option<WorkerMessage>,
    /// The journal ticket of `result`: it may be sent once the journal is
    /// synced up to it (0: already on disk).
    ticket: u64,
    lost: Option<Lost>,
    warned: bool,
    /// Which execution of the task the entry holds now: it changes when
    /// the task is assigned again, so that a result written by the
    /// connection meanwhile is not taken for the new execution's.
    generation: u64,
    /// The spool file may exist (written here, or found at startup): only
    /// then is it removed, which spares a failing unlink for every task
    /// that printed nothing.
    on_disk: bool,
}

impl Entry {
    fn new(path: PathBuf, generation: u64) -> Self {
        Entry {
            generation,
            path,
            execution_id: None,
            writer: None,
            len: 0,
            base: 0,
            send: 0,
            protect: 0,
            flights: VecDeque::new(),
            last_seq: 0,
            acked: 0,
            finished: false,
            end_sent: false,
            result: None,
            ticket: 0,
            lost: None,
            warned: false,
            on_disk: false,
        }
    }

    fn write(&mut self, buf: &[u8]) -> io::Result<()> {
        if self.writer.is_none() {
            let f = OpenOptions::new()
                .create(true)
                .append(true)
                .mode(0o600)
                .open(&self.path)?;
            self.on_disk = true;
            self.writer = Some(f);
        }
        let Some(w) = self.writer.as_mut() else {
            return Err(io::Error::other("spool file not open"));
        };
        match w.write_all(buf) {
            Ok(()) => {
                self.len += buf.len() as u64;
                Ok(())
            }
            Err(e) => {
                // Never leave half a line behind.
                let _ = w.set_len(self.len);
                self.writer = None;
                Err(e)
            }
        }
    }

    fn apply_acks(&mut self) {
        while let Some(&(last, end)) = self.flights.front() {
            if last > self.acked {
                break;
            }
            self.base = self.base.max(end);
            self.flights.pop_front();
        }
        self.protect = self.protect.max(self.base);
        self.send = self.send.max(self.base);
    }

    /// Forget the file's content (v1 connection, or an unreadable file).
    fn discard(&mut self) {
        self.writer = None;
        self.remove_file();
        self.len = 0;
        self.base = 0;
        self.send = 0;
        self.protect = 0;
        self.flights.clear();
    }

    fn done(&self) -> bool {
        self.finished && self.end_sent && self.result.is_none() && self.acked >= self.last_seq
    }

    fn remove_file(&mut self) {
        if self.on_disk {
            remove_quietly(&self.path);
            self.on_disk = false;
        }
    }
}

#[derive(Debug, Default)]
struct Inner {
    tasks: HashMap<String, Entry>,
    /// Round-robin order of the tasks for sending.
    order: VecDeque<String>,
    /// The last [`Entry::generation`] given out.
    generations: u64,
    /// Spool files found at startup but left alone (unreadable): an entry
    /// made later for the same task removes its file when done.
    left_alone: HashSet<String>,
}

impl Inner {
    fn entry(&mut self, task_id: &str, spool_dir: &Path) -> &mut Entry {
        if !self.tasks.contains_key(task_id) {
            self.order.push_back(task_id.to_owned());
            self.generations += 1;
        }
        let generation = self.generations;
        let left_alone = &mut self.left_alone;
        self.tasks.entry(task_id.to_owned()).or_insert_with(|| {
            let mut e = Entry::new(spool_dir.join(format!("{task_id}.jsonl")), generation);
            e.on_disk = left_alone.remove(task_id);
            e
        })
    }

    fn next_generation(&mut self) -> u64 {
        self.generations += 1;
        self.generations
    }

    fn remove(&mut self, task_id: &str) {
        self.tasks.remove(task_id);
        self.order.retain(|t| t != task_id);
    }
}

/// The log spool and result journal; shared by the task readers (which
/// append), the supervisor (which finishes tasks) and the connection (which
/// sends and applies acks).
#[derive(Debug)]
pub struct Spool {
    spool_dir: PathBuf,
    limit: u64,
    batch: u64,
    window: u64,
    inner: Mutex<Inner>,
    /// Taken after `inner`, never before.
    journal: Mutex<ResultJournal>,
    notify: Notify,
    /// The connected control plane takes logs and acknowledges them.
    acking: AtomicBool,
    /// Wakes tasks waiting for [`Spool::room`] (an ack, a disconnect).
    room: Notify,
    /// Journal tickets up to this one are on disk.
    synced: AtomicU64,
    /// Wakes [`Spool::sync_results`]: a result was recorded.
    unsynced: Notify,
    _lock: Flock<File>,
}

impl Spool {
    /// Prepare and lock `state_dir`, and load what an earlier process left
    /// there: its spooled lines and undelivered results are sent again once
    /// connected.
    pub fn open(state_dir: &Path, limit: u64) -> Result<Spool, StateDirError> {
        prepare_state_dir(state_dir)?;
        let unusable = |error| StateDirError::Unusable {
            path: state_dir.to_owned(),
            error,
        };
        let lock_path = state_dir.join(LOCK_FILE);
        let lock_file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .mode(0o600)
            .open(&lock_path)
            .map_err(unusable)?;
        let lock = match Flock::lock(lock_file, FlockArg::LockExclusiveNonblock) {
            Ok(l) => l,
            Err((_, Errno::EWOULDBLOCK)) => {
                return Err(StateDirError::Locked {
                    path: state_dir.to_owned(),
                    lock: lock_path,
                });
            }
            Err((_, e)) => return Err(unusable(io::Error::from(e))),
        };
        let (journal, results) =
            ResultJournal::open(&state_dir.join(RESULTS_DIR)).map_err(unusable)?;
        let spool = Spool {
            spool_dir: state_dir.join(SPOOL_DIR),
            limit,
            batch: BATCH_BYTES.min(limit / 8).max(1),
            window: IN_FLIGHT_BYTES.min(limit / 4).max(1),
            inner: Mutex::new(Inner::default()),
            journal: Mutex::new(journal),
            notify: Notify::new(),
            acking: AtomicBool::new(false),
            room: Notify::new(),
            synced: AtomicU64::new(0),
            unsynced: Notify::new(),
            _lock: lock,
        };
        spool.load(results).map_err(unusable)?;
        Ok(spool)
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn journal(&self) -> MutexGuard<'_, ResultJournal> {
        self.journal.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Completes when something may have become sendable (new lines, a
    /// finished task, an ack).
    pub fn notified(&self) -> tokio::sync::futures::Notified<'_> {
        self.notify.notified()
    }

    /// Tasks whose log or result is left from an earlier process.
    pub fn leftovers(&self) -> (usize, usize) {
        let inner = self.lock();
        let logs = inner.tasks.values().filter(|e| e.len > 0).count();
        let results = inner.tasks.values().filter(|e| e.result.is_some()).count();
        (logs, results)
    }

    fn load(&self, results: Vec<Pending>) -> io::Result<()> {
        let mut inner = self.lock();
        for dirent in fs::read_dir(&self.spool_dir)? {
            let path = dirent?.path();
            let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
                continue;
            };
            if name.ends_with(".tmp") {
                remove_quietly(&path);
                continue;
            }
            let Some(task_id) = name
                .strip_suffix(".jsonl")
                .filter(|t| oz_protocol::is_safe_path_component(t))
            else {
                continue;
            };
            match scan(&path) {
                Ok((0, _)) => remove_quietly(&path),
                Ok((len, last_seq)) => {
                    let e = inner.entry(task_id, &self.spool_dir);
                    e.on_disk = true;
                    e.len = len;
                    e.last_seq = last_seq;
                    e.finished = true;
                }
                Err(err) => {
                    tracing::warn!(path = %path.display(), error = %err, "cannot read a spooled task log; leaving it alone");
                    inner.left_alone.insert(task_id.to_owned());
                }
            }
        }
        for j in results {
            let e = inner.entry(&j.task_id, &self.spool_dir);
            e.last_seq = e.last_seq.max(j.last_seq);
            e.execution_id = j.execution_id;
            e.finished = true;
            e.result = Some(j.frame);
        }
        Ok(())
    }

    /// A task starts: its lines will be appended from now on. A leftover of
    /// an earlier execution of the same task id keeps its lines, and the
    /// numbering continues after them.
    pub fn begin(&self, task_id: &str, execution_id: Option<String>) {
        let mut inner = self.lock();
        let generation = inner.next_generation();
        let e = inner.entry(task_id, &self.spool_dir);
        if e.finished {
            // A new execution: a result of the old one that the connection
            // is writing right now must not touch it (see `written`).
            e.generation = generation;
            e.ticket = 0;
            if e.result.take().is_some() {
                tracing::warn!(
                    run_id = task_id,
                    "the task was assigned again before the result of its earlier execution was delivered; that result is dropped"
                );
                self.journal_done(task_id);
            }
            e.finished = false;
            e.end_sent = false;
        }
        e.execution_id = execution_id;
    }

    /// Append output of a task; seqs are assigned here, in call order.
    pub fn append(
        &self,
        task_id: &str,
        stream: LogStream,
        phase: LogPhase,
        ts: &str,
        pieces: &[Piece],
    ) {
        if pieces.is_empty() {
            return;
        }
        let mut inner = self.lock();
        let e = inner.entry(task_id, &self.spool_dir);
        if e.finished {
            // Lines after the end would follow log_end; they cannot be shown.
            return;
        }
        let mut buf = Vec::new();
        let mut seq = e.last_seq;
        if let Some(lost) = e.lost {
            seq += 1;
            push_json(
                &mut buf,
                &LogLine::gap(seq, ts.to_owned(), lost.stream, lost.phase, lost.bytes),
            );
        }
        for p in pieces {
            seq += 1;
            push_json(
                &mut buf,
                &LogLine::new(seq, ts.to_owned(), stream, phase, &p.bytes, p.newline),
            );
        }
        match e.write(&buf) {
            Ok(()) => {
                e.last_seq = seq;
                e.lost = None;
            }
            Err(err) => {
                let raw: u64 = pieces
                    .iter()
                    .map(|p| p.bytes.len() as u64 + u64::from(p.newline))
                    .sum();
                e.lost
                    .get_or_insert(Lost {
                        bytes: 0,
                        stream,
                        phase,
                    })
                    .bytes += raw;
                if !e.warned {
                    e.warned = true;
                    tracing::warn!(run_id = task_id, error = %err, "cannot write the task's output to the log spool; it is lost and a gap marker will say so");
                }
            }
        }
        // Over the bound with nobody acknowledging: drop the oldest unsent
        // lines (with acks coming, the reader waits in `room` instead). A
        // large acknowledged prefix: rewrite the file without it.
        let compaction = if e.len - e.base > self.limit && !self.acking.load(Ordering::SeqCst) {
            Some(Some(self.limit / 2))
        } else if e.base > 0 && e.base >= self.limit / 2 {
            Some(None)
        } else {
            None
        };
        if let Some(drop_to) = compaction
            && let Err(err) = rewrite(e, drop_to, task_id, self.limit)
        {
            tracing::warn!(run_id = task_id, error = %err, "cannot compact the log spool");
        }
        drop(inner);
        self.notify.notify_one();
    }

    /// The task ended: journal its terminal frame (before anyone can send
    /// it) and hold it until its log was sent.
    pub fn finish(&self, task_id: &str, execution_id: Option<String>, frame: WorkerMessage) {
        let pending = {
            let mut inner = self.lock();
            let e = inner.entry(task_id, &self.spool_dir);
            if let Some(lost) = e.lost {
                let mut buf = Vec::new();
                push_json(
                    &mut buf,
                    &LogLine::gap(e.last_seq + 1, now(), lost.stream, lost.phase, lost.bytes),
                );
                if e.write(&buf).is_ok() {
                    e.last_seq += 1;
                    e.lost = None;
                }
            }
            e.writer = None;
            if execution_id.is_some() {
                e.execution_id = execution_id;
            }
            Pending {
                task_id: task_id.to_owned(),
                last_seq: e.last_seq,
                execution_id: e.execution_id.clone(),
                frame: frame.clone(),
            }
        };
        // Journaled outside `inner`, so output of other tasks is not held
        // up. The task's readers are done and it is not finished yet, so
        // nothing about it changes meanwhile.
        let journaled = {
            let mut journal = self.journal();
            // Decided under the journal's lock: once the syncer has taken
            // over it may be compacting, and only `record` is right then.
            if journal.background() {
                journal.record(&pending)
            } else {
                journal.put(&pending).map(|()| 0)
            }
        };
        let ticket = journaled.unwrap_or_else(|err| {
            tracing::error!(run_id = task_id, error = %err, "cannot journal the task's result; it is kept in memory only");
            0
        });
        let mut inner = self.lock();
        let generation = inner.next_generation();
        let e = inner.entry(task_id, &self.spool_dir);
        if e.finished || e.result.is_some() {
            // Finished again without a `begin` (not a path the worker
            // takes): a result of the earlier end being written now must
            // not clear this one.
            e.generation = generation;
        }
        e.finished = true;
        e.end_sent = false;
        e.result = Some(frame);
        e.ticket = ticket;
        drop(inner);
        if ticket > 0 {
            self.unsynced.notify_one();
        }
        self.notify.notify_one();
    }

    /// Sync the result journal for [`Spool::finish`] from now on, off the
    /// caller's thread: one sync for every result recorded while the last
    /// one ran (a group commit), and a result is sent only once a sync
    /// covering it has returned. Before, each result was synced on the
    /// worker's event loop, which then could do nothing else for the
    /// length of a sync (about 0.5 ms on a journaled ext4, at every task).
    /// The journal's compactions (a new file, two syncs and a rename) are
    /// made here too, for the same reason. Runs until the runtime stops.
    pub async fn sync_results(self: Arc<Self>) {
        self.journal().set_background(true);
        loop {
            let wake = self.unsynced.notified();
            tokio::pin!(wake);
            // Registered before the check, so a result recorded in between
            // is not missed.
            wake.as_mut().enable();
            let compaction = self.journal().begin_compaction();
            let job = match compaction {
                Some(c) => {
                    let built = tokio::task::spawn_blocking(move || c.build())
                        .await
                        .unwrap_or_else(|e| Err(io::Error::other(e)));
                    self.journal().finish_compaction(built)
                }
                None => {
                    let job = self.journal().to_sync();
                    match job {
                        Some(job) => job,
                        None => {
                            wake.await;
                            continue;
                        }
                    }
                }
            };
            let ticket = job.ticket;
            let with_dir = job.dir.is_some();
            let synced = tokio::task::spawn_blocking(move || job.run())
                .await
                .unwrap_or_else(|e| Err(io::Error::other(e)));
            if with_dir && synced.is_ok() {
                self.journal().dir_synced();
            }
            if let Err(err) = synced {
                // As when a result cannot be written: it is sent anyway.
                tracing::error!(error = %err, "cannot sync the result journal; results are sent without it");
            }
            self.synced.fetch_max(ticket, Ordering::SeqCst);
            self.notify.notify_one();
        }
    }

    /// The result of `task_id` was delivered or dropped: record it, and
    /// wake the syncer if that made a compaction due.
    fn journal_done(&self, task_id: &str) {
        let due = {
            let mut journal = self.journal();
            journal.done(task_id);
            journal.compaction_due()
        };
        if due {
            self.unsynced.notify_one();
        }
    }

    /// May the result of `e` be sent (is its journal record on disk)?
    fn durable(&self, e: &Entry) -> bool {
        e.ticket <= self.synced.load(Ordering::SeqCst)
    }

    /// `log_ack`: every line of the task up to `seq` is stored.
    pub fn ack(&self, task_id: &str, seq: u64) {
        let mut inner = self.lock();
        let Some(e) = inner.tasks.get_mut(task_id) else {
            return;
        };
        e.acked = e.acked.max(seq);
        e.apply_acks();
        if e.base == e.len && e.len > 0 {
            // Everything is stored: empty the file (cheap, no rewrite).
            let truncated = match &e.writer {
                Some(w) => w.set_len(0),
                None => OpenOptions::new()
                    .write(true)
                    .open(&e.path)
                    .and_then(|f| f.set_len(0)),
            };
            if truncated.is_ok() {
                e.len = 0;
                e.base = 0;
                e.send = 0;
                e.protect = 0;
                e.flights.clear();
            }
        }
        if e.done() {
            e.remove_file();
            inner.remove(task_id);
        }
        drop(inner);
        self.notify.notify_one();
        self.room.notify_waiters();
    }

    /// Whether the connected control plane takes logs and acknowledges
    /// them: set by the connection when it learns so, cleared when the
    /// connection ends.
    pub fn set_acking(&self, on: bool) {
        if self.acking.swap(on, Ordering::SeqCst) != on && !on {
            self.room.notify_waiters();
        }
    }

    /// Wait until `task_id` has room below the bound, or until nobody is
    /// acknowledging (then the bound drops the oldest lines instead).
    /// Back-pressure: the task's readers wait here, so the task blocks on
    /// its writes while the control plane catches up.
    pub async fn room(&self, task_id: &str) {
        loop {
            let wake = self.room.notified();
            tokio::pin!(wake);
            // Registered before the check, so an ack in between is not missed.
            wake.as_mut().enable();
            if !self.acking.load(Ordering::SeqCst) || !self.full(task_id) {
                return;
            }
            wake.await;
        }
    }

    /// The task's unacknowledged output has reached the bound.
    fn full(&self, task_id: &str) -> bool {
        self.lock()
            .tasks
            .get(task_id)
            .is_some_and(|e| e.len - e.base >= self.limit)
    }

    /// A new connection: everything not acknowledged goes out again.
    pub fn reset_sending(&self) {
        let mut inner = self.lock();
        for e in inner.tasks.values_mut() {
            e.send = e.base;
            e.flights.clear();
            e.end_sent = false;
        }
    }

    /// The next frame to write, tasks taken in turn. With `logs`, a task's
    /// lines, then its `log_end` and terminal frame back to back, once the
    /// result is durable (a task without a result gets its `log_end` as
    /// soon as its lines are out); without, only
    /// terminal frames of finished tasks, whose logs are discarded. After
    /// writing a terminal frame, call [`Spool::written`] with its
    /// generation.
    pub fn next_frame(&self, logs: bool) -> Option<Outgoing> {
        let mut inner = self.lock();
        for _ in 0..inner.order.len() {
            let Some(id) = inner.order.pop_front() else {
                break;
            };
            inner.order.push_back(id.clone());
            let Some(e) = inner.tasks.get_mut(&id) else {
                continue;
            };
            let generation = e.generation;
            let step = if logs {
                self.next_logs(&id, e)
            } else if !self.durable(e) {
                Step::Nothing
            } else {
                next_v1(e)
            };
            let result_next =
                matches!(step, Step::Frame(WorkerMessage::LogEnd(_))) && e.result.is_some();
            match step {
                Step::Frame(msg) => {
                    if result_next {
                        // Its result comes next, before other tasks' frames.
                        inner.order.pop_back();
                        inner.order.push_front(id);
                    }
                    return Some(Outgoing { msg, generation });
                }
                Step::Nothing => {}
                Step::Remove => inner.remove(&id),
            }
        }
        None
    }

    fn next_logs(&self, task_id: &str, e: &mut Entry) -> Step {
        while e.send < e.len && e.send - e.base < self.window {
            match read_batch(e, self.batch) {
                Ok(lines) if lines.is_empty() => continue,
                Ok(lines) => {
                    return Step::Frame(WorkerMessage::LogLines(LogLines {
                        task_id: task_id.to_owned(),
                        execution_id: e.execution_id.clone(),
                        lines,
                    }));
                }
                Err(err) => {
                    tracing::warn!(run_id = task_id, error = %err, "cannot read the log spool; its unsent lines are lost");
                    e.discard();
                    break;
                }
            }
        }
        if !e.finished || e.send < e.len {
            return Step::Nothing;
        }
        if !e.end_sent {
            // A task's log_end waits for its result to be durable and goes
            // out right before it (see `next_frame`): the control plane
            // then stores both with one transition. One without a result
            // (a task cut short by a crash) ends its lines at once.
            if e.result.is_some() && !self.durable(e) {
                return Step::Nothing;
            }
            e.end_sent = true;
            return Step::Frame(WorkerMessage::LogEnd(LogEnd {
                task_id: task_id.to_owned(),
                execution_id: e.execution_id.clone(),
                last_seq: e.last_seq,
            }));
        }
        if let Some(r) = &e.result {
            if !self.durable(e) {
                return Step::Nothing;
            }
            return Step::Frame(r.clone());
        }
        if e.done() {
            e.remove_file();
            return Step::Remove;
        }
        Step::Nothing
    }

    /// The terminal frame of `task_id` that [`Spool::next_frame`] gave out
    /// with `generation` was written to the socket. If the task was
    /// assigned again meanwhile, the new execution is left alone: `begin`
    /// already dropped the old result, and whatever the entry holds now
    /// (lines, even a result) is the new execution's.
    pub fn written(&self, task_id: &str, generation: u64, logs: bool) {
        let mut inner = self.lock();
        let Some(e) = inner.tasks.get_mut(task_id) else {
            self.journal_done(task_id);
            return;
        };
        if e.generation != generation {
            tracing::debug!(
                run_id = task_id,
                "a result was written after its task was assigned again; the new execution keeps its entry"
            );
            return;
        }
        self.journal_done(task_id);
        e.result = None;
        e.ticket = 0;
        if !logs || e.done() {
            e.discard();
            inner.remove(task_id);
        }
    }

    /// Terminal frames not yet written.
    pub fn undelivered(&self) -> usize {
        self.lock()
            .tasks
            .values()
            .filter(|e| e.result.is_some())
            .count()
    }

    /// Lines written to this connection and not yet acknowledged.
    pub fn awaiting_acks(&self) -> bool {
        self.lock().tasks.values().any(|e| e.send > e.base)
    }
}

/// A frame [`Spool::next_frame`] hands out.
#[derive(Debug)]
pub struct Outgoing {
    pub msg: WorkerMessage,
    /// The execution of the task the frame belongs to, for
    /// [`Spool::written`].
    pub generation: u64,
}

enum Step {
    Frame(WorkerMessage),
    Nothing,
    Remove,
}

fn next_v1(e: &mut Entry) -> Step {
    if !e.finished {
        return Step::Nothing;
    }
    e.discard();
    match &e.result {
        Some(r) => Step::Frame(r.clone()),
        None => Step::Remove,
    }
}

/// Read the next batch at `send`; lines already acknowledged are skipped.
fn read_batch(e: &mut Entry, batch: u64) -> io::Result<Vec<LogLine>> {
    let mut f = File::open(&e.path)?;
    f.seek(SeekFrom::Start(e.send))?;
    let mut r = BufReader::new(f.take(e.len - e.send));
    let mut lines = Vec::new();
    let mut raw = Vec::new();
    let mut off = e.send;
    let mut last = 0;
    while off < e.len && off - e.send < batch {
        raw.clear();
        let n = r.read_until(b'\n', &mut raw)?;
        if n == 0 {
            break;
        }
        off += n as u64;
        match serde_json::from_slice::<LogLine>(&raw) {
            Ok(l) => {
                last = last.max(l.seq);
                if l.seq > e.acked {
                    lines.push(l);
                }
            }
            Err(err) => {
                tracing::warn!(error = %err, "skipping an unreadable line of the log spool")
            }
        }
    }
    if off == e.send {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "spool file shorter than expected",
        ));
    }
    e.send = off;
    e.protect = e.protect.max(off);
    e.flights.push_back((last, off));
    e.apply_acks();
    Ok(lines)
}

/// Rewrite the file without its acknowledged prefix and, with `drop_to`,
/// without enough of its oldest never-sent lines to fit in `drop_to` bytes;
/// those become one gap marker with the seq of the first one dropped.
fn rewrite(e: &mut Entry, drop_to: Option<u64>, task_id: &str, limit: u64) -> io::Result<()> {
    let tmp = e.path.with_extension("jsonl.tmp");
    let result = (|| {
        let mut src = BufReader::new(File::open(&e.path)?);
        src.seek(SeekFrom::Start(e.base))?;
        let mut out = BufWriter::new(
            OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)?,
        );
        let head = e.protect.min(e.len) - e.base;
        io::copy(&mut (&mut src).take(head), &mut out)?;
        let mut off = e.base + head;
        let mut marker = Vec::new();
        if let Some(target) = drop_to {
            let budget = target.saturating_sub(head + MARKER_RESERVE);
            let mut first: Option<(u64, LogStream, LogPhase)> = None;
            let mut dropped = 0u64;
            let mut line = Vec::new();
            while e.len - off > budget {
                line.clear();
                let n = src.read_until(b'\n', &mut line)?;
                if n == 0 {
                    break;
                }
                off += n as u64;
                if let Ok(l) = serde_json::from_slice::<LogLine>(&line) {
                    first.get_or_insert((l.seq, l.stream, l.phase));
                    dropped += l.gap_bytes.unwrap_or(0) + l.raw().len() as u64;
                }
            }
            if let Some((seq, stream, phase)) = first {
                push_json(
                    &mut marker,
                    &LogLine::gap(seq, now(), stream, phase, dropped),
                );
                out.write_all(&marker)?;
                tracing::warn!(
                    run_id = task_id,
                    dropped_bytes = dropped,
                    limit,
                    "the task's unacknowledged output exceeds log_spool_limit; its oldest unsent lines were dropped"
                );
            }
        }
        let rest = e.len - off;
        let copied = io::copy(&mut (&mut src).take(rest), &mut out)?;
        if copied != rest {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "spool file shorter than expected",
            ));
        }
        out.flush()?;
        drop(out);
        fs::rename(&tmp, &e.path)?;
        Ok((head + marker.len() as u64 + rest, head))
    })();
    match result {
        Ok((new_len, head)) => {
            let shift = e.base;
            e.len = new_len;
            e.base = 0;
            e.send -= shift;
            e.protect = head;
            for f in &mut e.flights {
                f.1 -= shift;
            }
            e.writer = None;
            Ok(())
        }
        Err(err) => {
            remove_quietly(&tmp);
            Err(err)
        }
    }
}

/// Length of the valid part of a spool file and its last seq; a torn last
/// line (a crash in the middle of a write) is cut off.
fn scan(path: &Path) -> io::Result<(u64, u64)> {
    let f = File::open(path)?;
    let total = f.metadata()?.len();
    let mut r = BufReader::new(f);
    let mut good = 0u64;
    let mut last = 0u64;
    let mut line = Vec::new();
    loop {
        line.clear();
        let n = r.read_until(b'\n', &mut line)?;
        if n == 0 || line.last() != Some(&b'\n') {
            break;
        }
        match serde_json::from_slice::<LogLine>(&line) {
            Ok(l) => {
                good += n as u64;
                last = last.max(l.seq);
            }
            Err(_) => break,
        }
    }
    if good < total {
        tracing::warn!(path = %path.display(), kept = good, size = total, "cutting an incomplete or unreadable tail off a spooled task log");
        OpenOptions::new().write(true).open(path)?.set_len(good)?;
    }
    Ok((good, last))
}

fn push_json(buf: &mut Vec<u8>, line: &LogLine) {
    let start = buf.len();
    if serde_json::to_writer(&mut *buf, line).is_ok() {
        buf.push(b'\n');
    } else {
        buf.truncate(start);
    }
}

fn remove_quietly(path: &Path) {
    if let Err(e) = fs::remove_file(path)
        && e.kind() != io::ErrorKind::NotFound
    {
        tracing::warn!(path = %path.display(), error = %e, "cannot remove file");
    }
}

/// RFC 3339 UTC with microseconds, the store's timestamp format.
pub fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use oz_protocol::{MSG_COMPLETED, TaskCompleted};

    const MIB: u64 = 1024 * 1024;

    fn line(n: usize, fill: u8) -> Piece {
        Piece {
            bytes: vec![fill; n],
            newline: true,
        }
    }

    fn completed(task_id: &str) -> WorkerMessage {
        WorkerMessage::TaskCompleted(TaskCompleted {
            task_id: task_id.into(),
            message: MSG_COMPLETED.into(),
            task_state: None,
        })
    }

    fn append(s: &Spool, task: &str, pieces: &[Piece]) {
        s.append(task, LogStream::Stdout, LogPhase::Agent, "ts", pieces);
    }

    /// Every frame `next_frame` gives now, acking each batch when `ack`.
    fn drain(s: &Spool, logs: bool, ack: bool) -> Vec<WorkerMessage> {
        let mut out = Vec::new();
        while let Some(Outgoing { msg, generation }) = s.next_frame(logs) {
            match &msg {
                WorkerMessage::LogLines(l) if ack => {
                    s.ack(&l.task_id, l.lines.last().map_or(0, |l| l.seq))
                }
                m if m.is_terminal() => s.written(m.task_id(), generation, logs),
                _ => {}
            }
            out.push(msg);
        }
        out
    }

    fn lines_of(frames: &[WorkerMessage]) -> Vec<LogLine> {
        frames
            .iter()
            .filter_map(|f| match f {
                WorkerMessage::LogLines(l) => Some(l.lines.clone()),
                _ => None,
            })
            .flatten()
            .collect()
    }

    fn files(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    /// A task's log_end waits with its result for the sync, then the two go
    /// out back to back, whatever other tasks have to send (the control
    /// plane stores them with one transition).
    #[test]
    fn log_end_comes_right_before_its_durable_result() {
        let dir = tempfile::tempdir().unwrap();
        let s = Spool::open(dir.path(), 64 * MIB).unwrap();
        s.journal().set_background(true);
        for t in ["a", "b", "c"] {
            s.begin(t, None);
            append(&s, t, &[line(10, b'x')]);
        }
        for t in ["a", "b"] {
            s.finish(t, None, completed(t));
        }
        // Not yet durable: lines only, no log_end.
        let f = drain(&s, true, true);
        assert_eq!(lines_of(&f).len(), 3, "{f:?}");
        assert!(
            f.iter().all(|m| matches!(m, WorkerMessage::LogLines(_))),
            "{f:?}"
        );
        // Synced (as the syncer would): each log_end, then its result.
        s.synced.store(u64::MAX, Ordering::SeqCst);
        append(&s, "c", &[line(10, b'y')]);
        let f = drain(&s, true, true);
        let ends: Vec<usize> = (0..f.len())
            .filter(|&i| matches!(f[i], WorkerMessage::LogEnd(_)))
            .collect();
        assert_eq!(ends.len(), 2, "{f:?}");
        for i in ends {
            assert!(f[i + 1].is_terminal(), "{f:?}");
            assert_eq!(f[i + 1].task_id(), f[i].task_id(), "{f:?}");
        }
        assert_eq!(lines_of(&f).len(), 1, "c's new line: {f:?}");
    }

    #[tokio::test]
    async fn with_the_syncer_a_result_waits_for_its_sync() {
        let dir = tempfile::tempdir().unwrap();
        let s = Arc::new(Spool::open(dir.path(), 64 * MIB).unwrap());
        // Deferred as sync_results sets it, before its loop first runs.
        s.journal().set_background(true);
        for t in ["a", "b"] {
            s.begin(t, None);
            s.finish(t, None, completed(t));
        }
        // Recorded in the journal, not yet covered by a sync: held back.
        assert_eq!(s.journal().pending(), 2);
        assert!(drain(&s, false, false).is_empty());
        assert!(drain(&s, true, false).iter().all(|m| !m.is_terminal()));

        let syncer = tokio::spawn(s.clone().sync_results());
        let mut sent = Vec::new();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while sent.len() < 2 {
            assert!(std::time::Instant::now() < deadline, "results never sent");
            let wake = s.notified();
            let frames = drain(&s, true, false);
            sent.extend(frames.into_iter().filter(|m| m.is_terminal()));
            if sent.len() < 2 {
                let _ = tokio::time::timeout(std::time::Duration::from_millis(100), wake).await;
            }
        }
        let mut ids: Vec<&str> = sent.iter().map(|m| m.task_id()).collect();
        ids.sort();
        assert_eq!(ids, ["a", "b"]);
        // One sync covered both.
        assert_eq!(s.synced.load(Ordering::SeqCst), 2);
        assert_eq!(s.journal().pending(), 0);

        // Later results go through the same syncer.
        s.begin("c", None);
        s.finish("c", None, completed("c"));
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let wake = s.notified();
            if drain(&s, true, false).iter().any(|m| m.is_terminal()) {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "result c never sent");
            let _ = tokio::time::timeout(std::time::Duration::from_millis(100), wake).await;
        }
        syncer.abort();
    }

    /// A task that printed nothing never had a spool file, and none is
    /// removed for it; one that printed has its file removed once its
    /// lines are stored.
    #[test]
    fn only_a_spool_file_that_was_written_is_removed() {
        for logs in [true, false] {
            let dir = tempfile::tempdir().unwrap();
            let spool = dir.path().join(SPOOL_DIR);
            let s = Spool::open(dir.path(), 64 * MIB).unwrap();
            s.begin("quiet", None);
            s.begin("loud", None);
            append(&s, "loud", &[line(10, b'a')]);
            assert_eq!(files(&spool), ["loud.jsonl"]);
            assert!(!s.lock().tasks["quiet"].on_disk);
            assert!(s.lock().tasks["loud"].on_disk);
            s.finish("quiet", None, completed("quiet"));
            s.finish("loud", None, completed("loud"));
            drain(&s, logs, true);
            drain(&s, logs, true);
            assert!(files(&spool).is_empty(), "logs: {logs}");
            assert!(s.lock().tasks.is_empty(), "logs: {logs}");
        }
    }

    /// A spool file left alone at startup (unreadable) still counts as
    /// there for a later execution of its task, which removes it when done.
    #[test]
    fn a_spool_file_left_alone_at_startup_is_known_to_a_later_execution() {
        let dir = tempfile::tempdir().unwrap();
        drop(Spool::open(dir.path(), 64 * MIB).unwrap());
        // Unreadable as a log: a directory under the file's name.
        fs::create_dir(dir.path().join(SPOOL_DIR).join("odd.jsonl")).unwrap();
        let s = Spool::open(dir.path(), 64 * MIB).unwrap();
        assert!(s.lock().tasks.is_empty());
        s.begin("odd", None);
        s.begin("new", None);
        assert!(s.lock().tasks["odd"].on_disk);
        assert!(!s.lock().tasks["new"].on_disk);
    }

    /// With results in flight, the journal fills up and must be rewritten:
    /// the syncer does it while results go on ending, and every result
    /// sent has its record in the file a restart would read.
    #[tokio::test]
    async fn the_syncer_compacts_the_journal_while_results_flow() {
        let dir = tempfile::tempdir().unwrap();
        let journal = dir
            .path()
            .join(RESULTS_DIR)
            .join(crate::journal::JOURNAL_FILE);
        let s = Arc::new(Spool::open(dir.path(), 64 * MIB).unwrap());
        let syncer = tokio::spawn(s.clone().sync_results());
        // Let it start (it takes over syncing and compacting).
        tokio::task::yield_now().await;
        assert!(s.journal().background());
        let (n, in_flight) = (1500, 32);
        let sent = Arc::new(AtomicU64::new(0));
        // Tasks end on their own schedule, also while a compaction is
        // being built (the syncer then waits on the blocking pool).
        let producer = {
            let (s, sent) = (s.clone(), sent.clone());
            tokio::spawn(async move {
                for i in 0..n {
                    while i - sent.load(Ordering::SeqCst) >= in_flight {
                        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
                    }
                    let t = format!("t{i}");
                    s.begin(&t, None);
                    s.finish(&t, None, completed(&t));
                    tokio::task::yield_now().await;
                }
            })
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while sent.load(Ordering::SeqCst) < n {
            assert!(std::time::Instant::now() < deadline, "results never sent");
            let wake = s.notified();
            let mut progressed = false;
            while let Some(Outgoing { msg, generation }) = s.next_frame(true) {
                if !msg.is_terminal() {
                    continue;
                }
                // Its record is on disk in the file at the journal's path
                // (the bytes before the first NUL are what a restart reads).
                let bytes = fs::read(&journal).unwrap();
                let end = bytes.iter().position(|b| *b == 0).unwrap_or(bytes.len());
                let needle = format!("{{\"put\":{{\"task_id\":\"{}\"", msg.task_id());
                assert!(
                    String::from_utf8_lossy(&bytes[..end]).contains(&needle),
                    "{} sent before its record is in the journal",
                    msg.task_id()
                );
                s.written(msg.task_id(), generation, true);
                sent.fetch_add(1, Ordering::SeqCst);
                progressed = true;
            }
            if !progressed {
                let _ = tokio::time::timeout(std::time::Duration::from_millis(50), wake).await;
            }
        }
        producer.await.unwrap();
        assert!(s.journal().compactions() >= 1, "never compacted");
        assert_eq!(s.journal().pending(), 0);
        syncer.abort();
        let _ = syncer.await;
        drop(Arc::into_inner(s).expect("the only handle"));
        let (_, list) = ResultJournal::open(&dir.path().join(RESULTS_DIR)).unwrap();
        assert!(list.is_empty(), "{} left", list.len());
    }

    /// The connection writes a result while the run is assigned again and
    /// its new execution ends at once: the new result is still sent, and
    /// its journal record kept until then.
    #[test]
    fn a_result_written_after_a_reassignment_leaves_the_new_execution_alone() {
        for logs in [true, false] {
            let dir = tempfile::tempdir().unwrap();
            let s = Spool::open(dir.path(), 64 * MIB).unwrap();
            s.begin("t", Some("e1".into()));
            append(&s, "t", &[line(10, b'a')]);
            s.finish("t", Some("e1".into()), completed("t"));
            // The connection takes frames up to the terminal one...
            let old = loop {
                let out = s.next_frame(logs).expect("a terminal frame");
                if let WorkerMessage::LogLines(l) = &out.msg {
                    s.ack("t", l.lines.last().map_or(0, |l| l.seq));
                }
                if out.msg.is_terminal() {
                    break out;
                }
            };
            // ...and while it writes it, the run comes back and ends again.
            s.begin("t", Some("e2".into()));
            append(&s, "t", &[line(5, b'x')]);
            s.finish("t", Some("e2".into()), completed("t"));
            assert_eq!(s.journal().pending(), 1);
            s.written("t", old.generation, logs);
            assert_eq!(s.journal().pending(), 1, "logs: {logs}");
            assert_eq!(s.undelivered(), 1, "logs: {logs}");

            let f = drain(&s, logs, true);
            assert_eq!(f.iter().filter(|m| m.is_terminal()).count(), 1, "{f:?}");
            if logs {
                let lines = lines_of(&f);
                assert_eq!(lines.len(), 1, "{lines:?}");
                assert!(
                    matches!(&f[f.len() - 2], WorkerMessage::LogEnd(e) if e.execution_id.as_deref() == Some("e2"))
                );
            }
            assert_eq!(s.journal().pending(), 0);
            assert_eq!(s.undelivered(), 0);
        }
    }

    /// The same when the task is finished again without a new `begin`.
    #[test]
    fn a_result_written_after_a_second_finish_leaves_the_second_alone() {
        let dir = tempfile::tempdir().unwrap();
        let s = Spool::open(dir.path(), 64 * MIB).unwrap();
        s.begin("t", None);
        s.finish("t", None, completed("t"));
        let old = std::iter::from_fn(|| s.next_frame(false))
            .find(|o| o.msg.is_terminal())
            .unwrap();
        s.finish("t", None, completed("t"));
        s.written("t", old.generation, false);
        assert_eq!(s.undelivered(), 1);
        assert_eq!(drain(&s, false, false).len(), 1);
        assert_eq!(s.undelivered(), 0);
        assert_eq!(s.journal().pending(), 0);
    }

    #[test]
    fn lines_then_end_then_terminal_and_acks_clean_up() {
        let dir = tempfile::tempdir().unwrap();
        let s = Spool::open(dir.path(), 64 * MIB).unwrap();
        s.begin("t1", Some("e1".into()));
        append(&s, "t1", &[line(10, b'a'), line(20, b'b')]);
        append(&s, "t1", &[line(30, b'c')]);
        // Not finished: only lines.
        let f = drain(&s, true, false);
        assert_eq!(f.len(), 1);
        s.finish("t1", Some("e1".into()), completed("t1"));
        assert_eq!(s.journal().pending(), 1);
        let f = drain(&s, true, false);
        assert!(matches!(&f[0], WorkerMessage::LogEnd(e) if e.last_seq == 3));
        assert!(f[1].is_terminal());
        assert_eq!(f.len(), 2);
        assert_eq!(s.journal().pending(), 0);
        // Lines wait for their ack; then the spool file goes.
        assert_eq!(files(&dir.path().join(SPOOL_DIR)), ["t1.jsonl"]);
        assert!(s.awaiting_acks());
        s.ack("t1", 3);
        assert!(files(&dir.path().join(SPOOL_DIR)).is_empty());
        assert!(drain(&s, true, false).is_empty());
        assert_eq!(s.undelivered(), 0);
    }

    #[test]
    fn a_reconnect_resends_what_was_not_acknowledged() {
        let dir = tempfile::tempdir().unwrap();
        let s = Spool::open(dir.path(), 64 * MIB).unwrap();
        s.begin("t", None);
        for i in 0..100u8 {
            append(&s, "t", &[line(1000, b'0' + i % 10)]);
        }
        let first = lines_of(&drain(&s, true, false));
        assert_eq!(first.len(), 100);
        s.ack("t", 40);
        s.reset_sending();
        let again = lines_of(&drain(&s, true, true));
        // Whole batches are resent; nothing acknowledged is.
        assert!(again.iter().all(|l| l.seq > 40));
        assert_eq!(again.last().unwrap().seq, 100);
        let seqs: Vec<u64> = again.iter().map(|l| l.seq).collect();
        assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1));
    }

    #[test]
    fn the_in_flight_window_bounds_what_is_sent_before_an_ack() {
        let dir = tempfile::tempdir().unwrap();
        let s = Spool::open(dir.path(), 64 * MIB).unwrap();
        s.begin("t", None);
        for _ in 0..400 {
            append(&s, "t", &[line(10_000, b'x')]);
        }
        let f = drain(&s, true, false);
        let bytes: usize = lines_of(&f).iter().map(|l| l.bytes().len()).sum();
        assert!(bytes <= (IN_FLIGHT_BYTES + BATCH_BYTES) as usize, "{bytes}");
        assert!(f.iter().all(|m| match m {
            WorkerMessage::LogLines(l) =>
                l.lines.iter().map(LogLine::approx_size).sum::<usize>() <= 2 * BATCH_BYTES as usize,
            _ => true,
        }));
        // Nothing more until an ack opens the window.
        assert!(s.next_frame(true).is_none());
        s.ack("t", lines_of(&f).last().unwrap().seq);
        let rest = lines_of(&drain(&s, true, true));
        assert_eq!(rest.last().unwrap().seq, 400);
    }

    #[test]
    fn the_bound_drops_the_oldest_unsent_lines_behind_one_gap_marker() {
        let dir = tempfile::tempdir().unwrap();
        let limit = MIB;
        let s = Spool::open(dir.path(), limit).unwrap();
        s.begin("t", None);
        let total_lines = 3000u64;
        for i in 0..total_lines {
            append(&s, "t", &[line(999, b'a' + (i % 26) as u8)]);
            let size = fs::metadata(dir.path().join(SPOOL_DIR).join("t.jsonl"))
                .unwrap()
                .len();
            assert!(size <= limit + 2000, "spool grew to {size}");
        }
        s.finish("t", None, completed("t"));
        let f = drain(&s, true, true);
        let lines = lines_of(&f);
        let gaps: Vec<&LogLine> = lines.iter().filter(|l| l.gap_bytes.is_some()).collect();
        assert_eq!(gaps.len(), 1, "one marker for one contiguous loss");
        let gap = gaps[0];
        assert_eq!(
            gap.seq, 1,
            "the marker takes the seq of the first line dropped"
        );
        let kept: u64 = lines.iter().map(|l| l.raw().len() as u64).sum();
        assert_eq!(kept + gap.gap_bytes.unwrap(), total_lines * 1000);
        let seqs: Vec<u64> = lines.iter().map(|l| l.seq).collect();
        assert!(seqs.windows(2).all(|w| w[1] > w[0]));
        assert_eq!(*seqs.last().unwrap(), total_lines);
        assert!(matches!(&f[f.len() - 2], WorkerMessage::LogEnd(e) if e.last_seq == total_lines));
    }

    #[tokio::test]
    async fn while_acks_come_a_full_spool_waits_for_room_instead_of_dropping() {
        use futures_util::FutureExt;
        let dir = tempfile::tempdir().unwrap();
        let s = Spool::open(dir.path(), MIB).unwrap();
        s.set_acking(true);
        s.begin("t", None);
        assert!(s.room("t").now_or_never().is_some(), "room while empty");
        for _ in 0..1500 {
            append(&s, "t", &[line(999, b'a')]);
        }
        let size = fs::metadata(dir.path().join(SPOOL_DIR).join("t.jsonl"))
            .unwrap()
            .len();
        assert!(size > MIB, "nothing was dropped: {size}");
        assert!(
            s.room("t").now_or_never().is_none(),
            "full: the reader waits"
        );
        // Acks free room; every line is there, no gap marker.
        let lines = lines_of(&drain(&s, true, true));
        assert_eq!(lines.len(), 1500);
        assert!(lines.iter().all(|l| l.gap_bytes.is_none()));
        assert!(s.room("t").now_or_never().is_some());

        // Full again, then the connection goes: the waiter is released and
        // the bound drops lines as before.
        for _ in 0..1500 {
            append(&s, "t", &[line(999, b'b')]);
        }
        let waiter = s.room("t");
        tokio::pin!(waiter);
        assert!(waiter.as_mut().now_or_never().is_none());
        s.set_acking(false);
        assert!(waiter.now_or_never().is_some());
        append(&s, "t", &[line(999, b'c')]);
        let size = fs::metadata(dir.path().join(SPOOL_DIR).join("t.jsonl"))
            .unwrap()
            .len();
        assert!(size <= MIB, "the bound applies again: {size}");
    }

    #[test]
    fn the_bound_keeps_lines_that_went_out_unacknowledged() {
        let dir = tempfile::tempdir().unwrap();
        let s = Spool::open(dir.path(), MIB).unwrap();
        s.begin("t", None);
        for _ in 0..100 {
            append(&s, "t", &[line(999, b'a')]);
        }
        let sent = lines_of(&drain(&s, true, false));
        let last_sent = sent.last().unwrap().seq;
        // The connection drops; much more output arrives meanwhile.
        s.reset_sending();
        for _ in 0..3000 {
            append(&s, "t", &[line(999, b'b')]);
        }
        let again = lines_of(&drain(&s, true, true));
        let seqs: Vec<u64> = again.iter().map(|l| l.seq).collect();
        assert_eq!(
            seqs[..last_sent as usize],
            (1..=last_sent).collect::<Vec<_>>()[..]
        );
        let gap = &again[last_sent as usize];
        assert_eq!(gap.seq, last_sent + 1);
        assert!(gap.gap_bytes.unwrap() > 0);
    }

    #[test]
    fn a_restart_replays_lines_end_and_result() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = Spool::open(dir.path(), 64 * MIB).unwrap();
            s.begin("t", Some("e".into()));
            append(&s, "t", &[line(5, b'x'), line(6, b'y')]);
            s.finish("t", Some("e".into()), completed("t"));
            // A second worker on the same state dir is refused.
            assert!(matches!(
                Spool::open(dir.path(), 64 * MIB),
                Err(StateDirError::Locked { .. })
            ));
            // Crashed mid-task, no result: lines and log_end only.
            s.begin("u", None);
            append(&s, "u", &[line(7, b'z')]);
        }
        // A torn last line from a crash in the middle of a write.
        let mut f = OpenOptions::new()
            .append(true)
            .open(dir.path().join(SPOOL_DIR).join("u.jsonl"))
            .unwrap();
        f.write_all(b"{\"seq\":2,\"ts\":").unwrap();
        let s = Spool::open(dir.path(), 64 * MIB).unwrap();
        assert_eq!(s.leftovers(), (2, 1));
        let f = drain(&s, true, true);
        let t: Vec<&WorkerMessage> = f.iter().filter(|m| m.task_id() == "t").collect();
        assert!(
            matches!(t[0], WorkerMessage::LogLines(l) if l.lines.len() == 2 && l.execution_id.as_deref() == Some("e"))
        );
        assert!(matches!(t[1], WorkerMessage::LogEnd(e) if e.last_seq == 2));
        assert!(t[2].is_terminal());
        let u: Vec<&WorkerMessage> = f.iter().filter(|m| m.task_id() == "u").collect();
        assert_eq!(u.len(), 2);
        assert!(matches!(u[1], WorkerMessage::LogEnd(e) if e.last_seq == 1));
        assert!(files(&dir.path().join(SPOOL_DIR)).is_empty());
        assert_eq!(s.journal().pending(), 0);
    }

    #[test]
    fn without_logs_only_the_result_goes_and_the_spool_is_discarded() {
        let dir = tempfile::tempdir().unwrap();
        let s = Spool::open(dir.path(), 64 * MIB).unwrap();
        s.begin("t", None);
        append(&s, "t", &[line(5, b'x')]);
        s.begin("running", None);
        append(&s, "running", &[line(5, b'x')]);
        assert!(drain(&s, false, false).is_empty());
        s.finish("t", None, completed("t"));
        let f = drain(&s, false, false);
        assert_eq!(f.len(), 1);
        assert!(f[0].is_terminal());
        assert_eq!(files(&dir.path().join(SPOOL_DIR)), ["running.jsonl"]);
        assert_eq!(s.journal().pending(), 0);
    }

    #[test]
    fn a_task_that_wrote_nothing_still_gets_log_end_zero() {
        let dir = tempfile::tempdir().unwrap();
        let s = Spool::open(dir.path(), 64 * MIB).unwrap();
        s.begin("t", None);
        s.finish("t", None, completed("t"));
        let f = drain(&s, true, false);
        assert!(matches!(&f[0], WorkerMessage::LogEnd(e) if e.last_seq == 0));
        assert!(f[1].is_terminal());
        assert!(drain(&s, true, false).is_empty());
    }

    #[test]
    fn tasks_are_served_in_turn() {
        let dir = tempfile::tempdir().unwrap();
        let s = Spool::open(dir.path(), 64 * MIB).unwrap();
        for t in ["a", "b"] {
            s.begin(t, None);
            for _ in 0..10 {
                append(&s, t, &[line(100_000, b'x')]);
            }
        }
        let order: Vec<String> = std::iter::from_fn(|| s.next_frame(true))
            .take(4)
            .map(|o| o.msg.task_id().to_owned())
            .collect();
        assert_eq!(order, ["a", "b", "a", "b"]);
    }
}
