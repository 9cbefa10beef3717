//! The embedded [`Store`]: one SQLite file in WAL mode.
//!
//! Every mutating call is a single statement in autocommit mode (SQLite
//! serialises writers; `busy_timeout` makes a second writer wait instead of
//! failing). State changes are one `UPDATE … WHERE state IN (…) RETURNING`,
//! so they are compare-and-set without a read-then-write transaction.
//!
//! SQL is built with `$N` placeholders only; values are never interpolated.
//!
//! List semantics worth knowing:
//! - `created_after` / `updated_after` are strict (`>`), `created_before` is
//!   strict (`<`). Values are compared as text, so the caller passes them in
//!   the [`crate::ts`] format.
//! - `q` is a case-insensitive substring match (ASCII case folding: SQLite's
//!   `LIKE`) over title, prompt and skill spec; `%`, `_` and `\` in it are
//!   literal.
//! - Metadata pairs are matched through `json_each(metadata)` (key and value
//!   both bound), so any key works without JSON-path quoting.
//! - Titles sort by their bytes (`BINARY` collation).
//! - With [`SortBy::Agent`], runs without a skill spec sort after every run
//!   with one in ascending order and before them in descending order: the
//!   descending order is exactly the ascending one reversed, so a cursor walk
//!   sees every run once either way.

mod catalog;
mod checkpoint;
mod db;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use async_trait::async_trait;
use rusqlite::{Connection, OpenFlags, Row, TransactionBehavior};
use serde_json::Value;

use self::checkpoint::Checkpointer;
use self::db::{
    BUSY_TIMEOUT, Query, Slot, corrupt, db, describe, get, is_busy, is_unique_violation, query,
};
use crate::{
    ApiKey, KeyKind, LogPhase, LogQuery, LogRecord, LogStream, NewApiKey, NewRun, Result, Run,
    RunPatch, RunQuery, RunState, SortBy, SortOrder, StatusMessage, Store, StoreError, Team,
    agent_cursor_skill,
};

/// Read-only connections of a file database, for the reads that may take
/// long (lists, log pages, artifact and attachment contents, the sweeps'
/// searches) so they never hold up the main one.
const READERS: usize = 3;
/// The dispatcher's next run for a worker id, from the partial index
/// `runs_dispatch` (queued runs only; `runs_team_worker` has the same
/// columns, so the index is named). `'QUEUED'` is written out: with a bound
/// value SQLite can still use the index, but re-prepares the statement at
/// every new binding to check that it may.
const NEXT_QUEUED: &str = "SELECT run_id FROM runs INDEXED BY runs_dispatch \
     WHERE team_id = $1 AND worker_host = $2 \
     AND state = 'QUEUED' ORDER BY created_at, run_id LIMIT 1";

/// Log lines deleted per statement by the retention sweep.
const LOG_DELETE_CHUNK: i64 = 5_000;

/// Columns of `runs`, selected or returned by every run query; rows are
/// read by column name in [`run_from_row`].
const RUN_COLUMNS: &str = "run_id, team_id, state, prompt, title, config, metadata, source, mode, \
     worker_host, name, model_id, environment_id, skill_spec, schedule_id, created_at, \
     updated_at, started_at, ended_at, status_message, execution_id, holder, assigned_at, \
     cancel_requested_at, token_hash, artifacts, log_last_seq, creator_id, creator, agent_uid, \
     executor, parent_run_id, conversation_id, schedule, execution_prompt, pending_followups, \
     executions, log_seq_base, queued_at";

const KEY_COLUMNS: &str = "id, team_id, name, kind, prefix, created_at, last_used_at, revoked_at";

/// SQLite implementation of [`Store`]. Cloning shares the connections.
///
/// A file database has one main connection for every write and point read,
/// used on the calling thread, and [`READERS`] read-only ones for lists, log
/// pages and contents, used on tokio's blocking pool so that a long read
/// never stalls the caller's runtime thread. One main connection because
/// SQLite runs one writer at a time anyway, and because a connection's page
/// cache is dropped whenever another connection has committed since its
/// last statement.
///
/// Every transaction begins and commits inside one synchronous call, so no
/// lock is ever held across an `.await`. A call on the main connection can
/// still block its thread: up to [`BUSY_TIMEOUT`] while another process
/// holds the write lock, and for the few milliseconds of a WAL checkpoint.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    main: Slot,
    /// Empty for an in-memory database: reads then use `main`.
    readers: Vec<Slot>,
    next_reader: AtomicUsize,
    /// A file database's WAL checkpoints (`None` in memory, or once closed).
    checkpointer: Mutex<Option<Checkpointer>>,
}

/// Where a `sqlite:` URL points.
#[derive(Debug, PartialEq)]
enum Location {
    Memory,
    File { path: PathBuf, create: bool },
}

impl SqliteStore {
    /// Opens (creating if needed) the database file at `path`, and its parent
    /// directory, then brings the schema up to date.
    pub async fn open(path: &Path) -> Result<Self> {
        let location = path.display().to_string();
        let path = path.to_owned();
        Self::blocking_open(move || open_file(&path, true, &location)).await
    }

    /// Opens a `sqlite:` URL, e.g. `sqlite:///var/lib/oz/oz.db`,
    /// `sqlite://data/oz.db` or `sqlite::memory:`; `?mode=rw` refuses to
    /// create a missing file (the default, `rwc`, creates it).
    ///
    /// An in-memory database lives as long as the store: it has a single
    /// connection, so every query sees the same data.
    pub async fn open_url(url: &str) -> Result<Self> {
        let location = url.to_owned();
        let url_error = |message: String| StoreError::Open {
            location: url.to_owned(),
            message,
        };
        match parse_url(url).map_err(url_error)? {
            Location::Memory => Self::blocking_open(move || open_memory(&location)).await,
            Location::File { path, create } => {
                Self::blocking_open(move || open_file(&path, create, &location)).await
            }
        }
    }

    /// Opening may wait on another process's lock and runs the migrations:
    /// off the runtime's threads.
    async fn blocking_open(open: impl FnOnce() -> Result<Inner> + Send + 'static) -> Result<Self> {
        let inner = tokio::task::spawn_blocking(open)
            .await
            .map_err(join_error)??;
        Ok(SqliteStore {
            inner: Arc::new(inner),
        })
    }

    /// Runs `f` on the main connection, on this thread.
    fn main<T>(&self, f: impl FnOnce(&Connection) -> Result<T>) -> Result<T> {
        self.inner.main.with(|conn| f(conn))
    }

    /// Runs `f` on a read-only connection, on the blocking pool.
    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        if self.inner.readers.is_empty() {
            return self.main(f);
        }
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            let i = inner.next_reader.fetch_add(1, Ordering::Relaxed) % inner.readers.len();
            inner.readers[i].with(|conn| f(conn))
        })
        .await
        .map_err(join_error)?
    }

    /// Runs `f` in a write transaction on the main connection, on this
    /// thread, and commits when it returns `Ok`. IMMEDIATE: it takes the
    /// write lock up front (waiting on `busy_timeout`) rather than failing
    /// to upgrade a read lock half way.
    fn write<T>(&self, op: &'static str, f: impl FnOnce(&Connection) -> Result<T>) -> Result<T> {
        self.inner.main.with(|conn| {
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(db(op))?;
            let out = f(&tx)?;
            tx.commit().map_err(db(op))?;
            Ok(out)
        })
    }

    /// Runs `f` on the main connection, for maintenance tasks and tests.
    /// `f` holds the connection's lock: calling the store from inside it
    /// would wait forever.
    pub fn with_connection<T>(&self, f: impl FnOnce(&Connection) -> T) -> Result<T> {
        self.main(|conn| Ok(f(conn)))
    }

    /// Closes every connection; further calls fail with
    /// [`StoreError::Closed`].
    pub async fn close(&self) {
        let checkpointer = self
            .inner
            .checkpointer
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        drop(checkpointer);
        for reader in &self.inner.readers {
            reader.close();
        }
        self.inner.main.close();
    }
}

fn join_error(e: tokio::task::JoinError) -> StoreError {
    match e.try_into_panic() {
        // A bug in a decoder: let it surface where it would have without
        // the thread hop.
        Ok(panic) => std::panic::resume_unwind(panic),
        // Cancelled: the runtime is shutting down.
        Err(_) => StoreError::Closed,
    }
}

fn parse_url(url: &str) -> std::result::Result<Location, String> {
    let Some(rest) = url.strip_prefix("sqlite:") else {
        return Err("a SQLite URL starts with sqlite:, e.g. sqlite:///var/lib/oz/oz.db".into());
    };
    let rest = rest.strip_prefix("//").unwrap_or(rest);
    let (path, params) = rest.split_once('?').unwrap_or((rest, ""));
    let mut memory = path == ":memory:";
    let mut create = true;
    for pair in params.split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some(("mode", "rwc")) => create = true,
            Some(("mode", "rw")) => create = false,
            Some(("mode", "memory")) => memory = true,
            Some(("mode", other)) => {
                return Err(format!(
                    "mode={other} is not supported: use rwc (the default), rw or memory"
                ));
            }
            _ => {
                return Err(format!(
                    "the URL parameter {pair:?} is not supported (only mode=rwc|rw|memory)"
                ));
            }
        }
    }
    if memory {
        return Ok(Location::Memory);
    }
    if path.is_empty() {
        return Err("the URL names no file: use sqlite://PATH".into());
    }
    Ok(Location::File {
        path: PathBuf::from(path),
        create,
    })
}

/// Opens a file database: the main connection switches the file to WAL and
/// migrates it, then the readers open.
fn open_file(path: &Path, create: bool, location: &str) -> Result<Inner> {
    let open_error = open_error(location);
    if create {
        create_parent(path, location)?;
    }
    let mut flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    if create {
        flags |= OpenFlags::SQLITE_OPEN_CREATE;
    }
    let mut main = Connection::open_with_flags(path, flags).map_err(open_error)?;
    main.busy_timeout(BUSY_TIMEOUT).map_err(open_error)?;
    // Switching to WAL needs an exclusive lock that `busy_timeout` does not
    // wait for: another process may be switching the same file right now.
    // WAL is persistent, so the readers leave the journal mode alone.
    let deadline = Instant::now() + BUSY_TIMEOUT;
    let mode = loop {
        match main.query_row("PRAGMA journal_mode = WAL", [], |r| r.get::<_, String>(0)) {
            Ok(mode) => break mode,
            Err(e) if is_busy(&e) && Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            Err(e) => return Err(open_error(e)),
        }
    };
    if !mode.eq_ignore_ascii_case("wal") {
        tracing::warn!(%location, %mode, "the database could not switch to WAL mode; readers will wait for writers");
    }
    main.pragma_update(None, "synchronous", "NORMAL")
        .and_then(|()| main.pragma_update(None, "foreign_keys", true))
        .map_err(open_error)?;
    migrate(&mut main, location)?;
    let mut readers = Vec::with_capacity(READERS);
    for _ in 0..READERS {
        let reader = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(open_error)?;
        reader.busy_timeout(BUSY_TIMEOUT).map_err(open_error)?;
        readers.push(Slot::new(reader));
    }
    let checkpointer = start_checkpointer(&main, path, location)?;
    tracing::debug!(%location, "sqlite store open");
    Ok(Inner {
        main: Slot::new(main),
        readers,
        next_reader: AtomicUsize::new(0),
        checkpointer: Mutex::new(checkpointer),
    })
}

/// Moves WAL checkpoints off the main connection (see [`checkpoint`]). If
/// the thread cannot start, the main connection keeps checkpointing itself
/// at SQLite's default threshold.
fn start_checkpointer(
    main: &Connection,
    path: &Path,
    location: &str,
) -> Result<Option<Checkpointer>> {
    let open_error = open_error(location);
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(open_error)?;
    conn.busy_timeout(BUSY_TIMEOUT).map_err(open_error)?;
    match Checkpointer::start(conn, location.to_owned()) {
        Ok(checkpointer) => {
            main.pragma_update(None, "wal_autocheckpoint", checkpoint::BACKSTOP_PAGES)
                .map_err(open_error)?;
            Ok(Some(checkpointer))
        }
        Err(e) => {
            tracing::warn!(%location, error = %e, "cannot start the database checkpoint thread; commits will checkpoint");
            main.pragma_update(None, "wal_autocheckpoint", checkpoint::DEFAULT_PAGES)
                .map_err(open_error)?;
            Ok(None)
        }
    }
}

fn open_memory(location: &str) -> Result<Inner> {
    let open_error = open_error(location);
    let mut conn = Connection::open_in_memory().map_err(open_error)?;
    conn.pragma_update(None, "foreign_keys", true)
        .map_err(open_error)?;
    migrate(&mut conn, location)?;
    Ok(Inner {
        main: Slot::new(conn),
        readers: Vec::new(),
        next_reader: AtomicUsize::new(0),
        checkpointer: Mutex::new(None),
    })
}

/// Runs the migrations in one IMMEDIATE transaction: processes opening a
/// fresh file together would otherwise both try to apply the same one.
fn migrate(conn: &mut Connection, location: &str) -> Result<()> {
    let failed = |message: String| StoreError::Migrate(format!("{location}: {message}"));
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(open_error(location))?;
    db::migrate(&tx).map_err(failed)?;
    tx.commit().map_err(|e| failed(describe(&e)))
}

/// How a SQLite error while opening `location` is reported.
fn open_error(location: &str) -> impl Fn(rusqlite::Error) -> StoreError + Copy + '_ {
    move |e| StoreError::Open {
        location: location.to_owned(),
        message: describe(&e),
    }
}

fn create_parent(path: &Path, location: &str) -> Result<()> {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => {
            std::fs::create_dir_all(dir).map_err(|e| StoreError::Open {
                location: location.to_owned(),
                message: format!("cannot create the directory {}: {e}", dir.display()),
            })
        }
        _ => Ok(()),
    }
}

fn to_json<T: serde::Serialize + ?Sized>(what: &'static str, value: &T) -> Result<String> {
    // Serialising our own types to a string cannot fail in practice; report
    // it as corrupt data rather than panicking if it ever does.
    serde_json::to_string(value).map_err(|e| corrupt(what, e))
}

fn team_from_row(row: &Row<'_>) -> Result<Team> {
    let op = "decode team";
    Ok(Team {
        id: get(row, "id", op)?,
        name: get(row, "name", op)?,
        created_at: get(row, "created_at", op)?,
    })
}

fn key_from_row(row: &Row<'_>) -> Result<ApiKey> {
    let op = "decode api key";
    let kind: String = get(row, "kind", op)?;
    Ok(ApiKey {
        id: get(row, "id", op)?,
        team_id: get(row, "team_id", op)?,
        name: get(row, "name", op)?,
        kind: KeyKind::parse(&kind)
            .ok_or_else(|| corrupt("api key kind", format!("unknown kind {kind:?}")))?,
        prefix: get(row, "prefix", op)?,
        created_at: get(row, "created_at", op)?,
        last_used_at: get(row, "last_used_at", op)?,
        revoked_at: get(row, "revoked_at", op)?,
    })
}

/// The position of `col` in [`RUN_COLUMNS`]: looking a name up here is an
/// order of magnitude cheaper than asking SQLite for every column's name,
/// which was most of the cost of decoding a run.
fn run_column(col: &str) -> usize {
    static COLUMNS: std::sync::LazyLock<Vec<&'static str>> =
        std::sync::LazyLock::new(|| RUN_COLUMNS.split(',').map(str::trim).collect());
    // Past the end for an unknown name: reading it fails with a clear error.
    COLUMNS
        .iter()
        .position(|c| *c == col)
        .unwrap_or(COLUMNS.len())
}

/// Reads column `col` of a row of [`RUN_COLUMNS`].
fn run_get<T: rusqlite::types::FromSql>(row: &Row<'_>, col: &str) -> Result<T> {
    row.get(run_column(col)).map_err(db("decode run"))
}

/// The one place that turns a `runs` row into a [`Run`].
fn run_from_row(row: &Row<'_>) -> Result<Run> {
    let text = |col: &str| -> Result<String> { run_get(row, col) };
    let opt = |col: &str| -> Result<Option<String>> { run_get(row, col) };

    let state = text("state")?;
    let state = RunState::parse(&state)
        .ok_or_else(|| corrupt("run state", format!("unknown state {state:?}")))?;
    let config: Value =
        serde_json::from_str(&text("config")?).map_err(|e| corrupt("run config", e))?;
    let metadata =
        serde_json::from_str(&text("metadata")?).map_err(|e| corrupt("run metadata", e))?;
    let status_message = opt("status_message")?
        .map(|s| serde_json::from_str::<StatusMessage>(&s))
        .transpose()
        .map_err(|e| corrupt("run status message", e))?;
    let artifacts =
        serde_json::from_str(&text("artifacts")?).map_err(|e| corrupt("run artifacts", e))?;
    let log_last_seq: Option<i64> = run_get(row, "log_last_seq")?;
    let log_last_seq = log_last_seq
        .map(|n| u64::try_from(n).map_err(|_| corrupt("run log_last_seq", format!("{n} < 0"))))
        .transpose()?;
    let json_opt = |col: &'static str| -> Result<Option<Value>> {
        opt(col)?
            .map(|s| serde_json::from_str::<Value>(&s))
            .transpose()
            .map_err(|e| corrupt(col, e))
    };
    let count = |col: &'static str| -> Result<u32> {
        let n: i64 = run_get(row, col)?;
        u32::try_from(n).map_err(|_| corrupt(col, format!("{n} is out of range")))
    };
    let log_seq_base: i64 = run_get(row, "log_seq_base")?;

    Ok(Run {
        run_id: text("run_id")?,
        team_id: text("team_id")?,
        state,
        prompt: text("prompt")?,
        title: text("title")?,
        config,
        metadata,
        source: text("source")?,
        mode: opt("mode")?,
        worker_host: text("worker_host")?,
        name: opt("name")?,
        model_id: opt("model_id")?,
        environment_id: opt("environment_id")?,
        skill_spec: opt("skill_spec")?,
        schedule_id: opt("schedule_id")?,
        created_at: text("created_at")?,
        updated_at: text("updated_at")?,
        started_at: opt("started_at")?,
        ended_at: opt("ended_at")?,
        status_message,
        execution_id: opt("execution_id")?,
        holder: opt("holder")?,
        assigned_at: opt("assigned_at")?,
        cancel_requested_at: opt("cancel_requested_at")?,
        token_hash: opt("token_hash")?,
        artifacts,
        log_last_seq,
        creator_id: opt("creator_id")?,
        creator: json_opt("creator")?,
        agent_uid: opt("agent_uid")?,
        executor: json_opt("executor")?,
        parent_run_id: opt("parent_run_id")?,
        conversation_id: opt("conversation_id")?,
        schedule: json_opt("schedule")?,
        execution_prompt: opt("execution_prompt")?,
        pending_followups: count("pending_followups")?,
        executions: count("executions")?,
        log_seq_base: u64_from_db("run log_seq_base", log_seq_base)?,
        queued_at: text("queued_at")?,
    })
}

const LOG_COLUMNS: &str = "seq, ts, stream, phase, data, is_text, newline, gap_bytes";

/// A seq as stored: from 1 to `i64::MAX`.
fn seq_to_db(seq: u64) -> Result<i64> {
    i64::try_from(seq).ok().filter(|n| *n > 0).ok_or_else(|| {
        StoreError::Invalid(format!("log seq {seq} is not between 1 and {}", i64::MAX))
    })
}

/// A bound of a seq range, clamped to what can be stored.
fn seq_bound(seq: u64) -> i64 {
    i64::try_from(seq).unwrap_or(i64::MAX)
}

fn u64_from_db(what: &'static str, n: i64) -> Result<u64> {
    u64::try_from(n).map_err(|_| corrupt(what, format!("negative value {n}")))
}

fn log_from_row(row: &Row<'_>) -> Result<LogRecord> {
    let op = "decode log line";
    let stream: String = get(row, "stream", op)?;
    let phase: String = get(row, "phase", op)?;
    let gap: Option<i64> = get(row, "gap_bytes", op)?;
    Ok(LogRecord {
        seq: u64_from_db("log seq", get(row, "seq", op)?)?,
        ts: get(row, "ts", op)?,
        stream: match stream.as_str() {
            "stdout" => LogStream::Stdout,
            "stderr" => LogStream::Stderr,
            other => return Err(corrupt("log stream", format!("unknown stream {other:?}"))),
        },
        phase: LogPhase::parse(&phase)
            .ok_or_else(|| corrupt("log phase", format!("unknown phase {phase:?}")))?,
        data: get(row, "data", op)?,
        is_text: get(row, "is_text", op)?,
        newline: get(row, "newline", op)?,
        gap_bytes: gap.map(|n| u64_from_db("log gap_bytes", n)).transpose()?,
    })
}

/// Appends `, col = $n` for each field the patch sets.
fn push_patch(sql: &mut Query, patch: RunPatch) -> Result<()> {
    let RunPatch {
        status_message,
        execution_id,
        holder,
        assigned_at,
        started_at,
        ended_at,
        cancel_requested_at,
        token_hash,
        new_execution,
        log_last_seq,
    } = patch;
    if new_execution {
        sql.push(", executions = executions + 1");
    }
    if let Some(last) = log_last_seq {
        let last = i64::try_from(last)
            .map_err(|_| StoreError::Invalid(format!("log last_seq {last} is too large")))?;
        let p = sql.arg(last);
        sql.push(&format!(", log_last_seq = {p}"));
    }
    let status_message = match status_message {
        None => None,
        Some(None) => Some(None),
        Some(Some(m)) => Some(Some(to_json("run status message", &m)?)),
    };
    let fields = [
        ("status_message", status_message),
        ("execution_id", execution_id),
        ("holder", holder),
        ("assigned_at", assigned_at),
        ("started_at", started_at),
        ("ended_at", ended_at),
        ("cancel_requested_at", cancel_requested_at),
        ("token_hash", token_hash),
    ];
    for (column, value) in fields {
        if let Some(value) = value {
            let p = sql.arg(value);
            sql.push(&format!(", {column} = {p}"));
        }
    }
    Ok(())
}

/// `LIKE` pattern matching `needle` anywhere, with `\` as the escape.
fn like_substring(needle: &str) -> String {
    let mut pattern = String::with_capacity(needle.len() + 2);
    pattern.push('%');
    for c in needle.chars() {
        if matches!(c, '%' | '_' | '\\') {
            pattern.push('\\');
        }
        pattern.push(c);
    }
    pattern.push('%');
    pattern
}

fn terminal_states() -> Vec<RunState> {
    RunState::ALL
        .into_iter()
        .filter(|s| s.is_terminal())
        .collect()
}

/// Insert a run on `conn` (the main connection or an open transaction).
fn insert_run_on(conn: &Connection, run: NewRun) -> Result<Run> {
    let config = to_json("run config", &run.config)?;
    let creator = run
        .creator
        .as_ref()
        .map(|v| to_json("run creator", v))
        .transpose()?;
    let executor = run
        .executor
        .as_ref()
        .map(|v| to_json("run executor", v))
        .transpose()?;
    let schedule = run
        .schedule
        .as_ref()
        .map(|v| to_json("run schedule", v))
        .transpose()?;
    let metadata = to_json("run metadata", &run.metadata)?;
    let status_message = run
        .status_message
        .as_ref()
        .map(|m| to_json("run status message", m))
        .transpose()?;
    let run_id = run.run_id.clone();
    query(format!(
        "INSERT INTO runs (run_id, team_id, state, prompt, title, config, metadata, source, \
         mode, worker_host, name, model_id, environment_id, skill_spec, schedule_id, \
         created_at, updated_at, status_message, artifacts, creator_id, creator, \
         agent_uid, executor, parent_run_id, conversation_id, schedule, queued_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, \
         $16, $16, $17, '[]', $18, $19, $20, $21, $22, $23, $24, $16) \
         RETURNING {RUN_COLUMNS}"
    ))
    .bind(run.run_id)
    .bind(run.team_id)
    .bind(RunState::Queued.as_str())
    .bind(run.prompt)
    .bind(run.title)
    .bind(config)
    .bind(metadata)
    .bind(run.source)
    .bind(run.mode)
    .bind(run.worker_host)
    .bind(run.name)
    .bind(run.model_id)
    .bind(run.environment_id)
    .bind(run.skill_spec)
    .bind(run.schedule_id)
    .bind(run.created_at)
    .bind(status_message)
    .bind(run.creator_id)
    .bind(creator)
    .bind(run.agent_uid)
    .bind(executor)
    .bind(run.parent_run_id)
    .bind(run.conversation_id)
    .bind(schedule)
    .inserted(conn, "insert run", format!("run {run_id}"), run_from_row)
}

impl Query {
    /// Runs an `INSERT … RETURNING`: the row it made, or `Conflict(what)`
    /// when the key is taken.
    fn inserted<T>(
        &self,
        conn: &Connection,
        op: &'static str,
        what: String,
        decode: impl Fn(&Row<'_>) -> Result<T>,
    ) -> Result<T> {
        match self.first(conn, op, decode) {
            Ok(Some(v)) => Ok(v),
            Ok(None) => Err(corrupt("insert", format!("{op} returned no row"))),
            Err(e) => Err(conflict_or(e, what)),
        }
    }
}

/// `Conflict(what)` for a unique-key violation; other errors as they are.
fn conflict_or(err: StoreError, what: String) -> StoreError {
    match err {
        StoreError::Db { source, .. } if is_unique_violation(&source) => StoreError::Conflict(what),
        other => other,
    }
}

impl SqliteStore {
    /// The CAS update shared by [`Store::transition`] and [`Store::patch_run`].
    fn update_run(
        &self,
        run_id: &str,
        from: &[RunState],
        to: Option<RunState>,
        patch: RunPatch,
        now: &str,
        op: &'static str,
    ) -> Result<Option<Run>> {
        if from.is_empty() {
            return Ok(None);
        }
        let sql = cas_update(run_id, from, to, patch, now)?;
        self.main(|c| sql.first(c, op, run_from_row))
    }
}

/// `UPDATE runs … WHERE run_id = … AND state IN (from) RETURNING` the run:
/// the compare-and-set every state change is. `from` must not be empty.
fn cas_update(
    run_id: &str,
    from: &[RunState],
    to: Option<RunState>,
    patch: RunPatch,
    now: &str,
) -> Result<Query> {
    let mut sql = query("UPDATE runs SET ");
    let p = sql.arg(now);
    sql.push(&format!("updated_at = {p}"));
    if let Some(to) = to {
        let p = sql.arg(to.as_str());
        sql.push(&format!(", state = {p}"));
    }
    push_patch(&mut sql, patch)?;
    let p = sql.arg(run_id);
    let states = sql.states_in(from);
    sql.push(&format!(
        " WHERE run_id = {p} AND state {states} RETURNING {RUN_COLUMNS}"
    ));
    Ok(sql)
}

#[async_trait]
impl Store for SqliteStore {
    async fn create_team(&self, id: &str, name: &str, now: &str) -> Result<Team> {
        let q = query(
            "INSERT INTO teams (id, name, created_at) VALUES ($1, $2, $3) \
             RETURNING id, name, created_at",
        )
        .bind(id)
        .bind(name)
        .bind(now);
        self.main(|c| q.inserted(c, "create team", format!("team {id}"), team_from_row))
    }

    async fn first_team(&self) -> Result<Option<Team>> {
        let q = query("SELECT id, name, created_at FROM teams ORDER BY created_at, id LIMIT 1");
        self.main(|c| q.first(c, "first team", team_from_row))
    }

    async fn get_team(&self, id: &str) -> Result<Option<Team>> {
        let q = query("SELECT id, name, created_at FROM teams WHERE id = $1").bind(id);
        self.main(|c| q.first(c, "get team", team_from_row))
    }

    async fn insert_api_key(&self, key: NewApiKey) -> Result<ApiKey> {
        let what = format!("api key {}", key.id);
        let q = query(format!(
            "INSERT INTO api_keys (id, team_id, name, kind, prefix, hash, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING {KEY_COLUMNS}"
        ))
        .bind(key.id)
        .bind(key.team_id)
        .bind(key.name)
        .bind(key.kind.as_str())
        .bind(key.prefix)
        .bind(key.hash)
        .bind(key.created_at);
        self.main(|c| q.inserted(c, "insert api key", what, key_from_row))
    }

    async fn find_api_key(&self, hash: &str) -> Result<Option<ApiKey>> {
        let q = query(format!(
            "SELECT {KEY_COLUMNS} FROM api_keys WHERE hash = $1 AND revoked_at IS NULL"
        ))
        .bind(hash);
        self.main(|c| q.first(c, "find api key", key_from_row))
    }

    async fn list_api_keys(&self, team_id: &str) -> Result<Vec<ApiKey>> {
        let q = query(format!(
            "SELECT {KEY_COLUMNS} FROM api_keys WHERE team_id = $1 ORDER BY created_at, id"
        ))
        .bind(team_id);
        self.read(move |c| q.all(c, "list api keys", key_from_row))
            .await
    }

    async fn revoke_api_key(&self, team_id: &str, id: &str, now: &str) -> Result<bool> {
        let q = query(
            "UPDATE api_keys SET revoked_at = $1 \
             WHERE team_id = $2 AND id = $3 AND revoked_at IS NULL",
        )
        .bind(now)
        .bind(team_id)
        .bind(id);
        Ok(self.main(|c| q.execute(c, "revoke api key"))? > 0)
    }

    async fn touch_api_key(&self, id: &str, now: &str) -> Result<()> {
        let q = query("UPDATE api_keys SET last_used_at = $1 WHERE id = $2")
            .bind(now)
            .bind(id);
        self.main(|c| q.execute(c, "touch api key"))?;
        Ok(())
    }

    async fn insert_run(&self, run: NewRun) -> Result<Run> {
        self.main(|c| insert_run_on(c, run))
    }

    async fn get_run(&self, run_id: &str) -> Result<Option<Run>> {
        let q = query(format!("SELECT {RUN_COLUMNS} FROM runs WHERE run_id = $1")).bind(run_id);
        self.main(|c| q.first(c, "get run", run_from_row))
    }

    async fn list_runs(&self, q: &RunQuery) -> Result<Vec<Run>> {
        // Runs held by workers are few however long the history: read them
        // by state. Left alone, SQLite walks the team's runs in sort order
        // and, when fewer match than a page holds, visits every run kept.
        // Other states are dense (or, queued, can be a long backlog), and
        // the walk in sort order stops after a page.
        let few = !q.states.is_empty() && q.states.iter().all(|s| s.is_active());
        let from = if few {
            "runs INDEXED BY runs_queue"
        } else {
            "runs"
        };
        let mut sql = query(format!("SELECT {RUN_COLUMNS} FROM {from} WHERE team_id = "));
        let p = sql.arg(&q.team_id);
        sql.push(&p);

        if !q.states.is_empty() {
            let states = sql.states_in(&q.states);
            sql.push(&format!(" AND state {states}"));
        }
        let exact = [
            ("source", &q.source),
            ("name", &q.name),
            ("model_id", &q.model_id),
            ("schedule_id", &q.schedule_id),
            ("skill_spec", &q.skill_spec),
            ("worker_host", &q.worker_host),
            ("creator_id", &q.creator),
        ];
        for (column, value) in exact {
            if let Some(value) = value {
                let p = sql.arg(value);
                sql.push(&format!(" AND {column} = {p}"));
            }
        }
        let ranges = [
            ("created_at", ">", &q.created_after),
            ("created_at", "<", &q.created_before),
            ("updated_at", ">", &q.updated_after),
        ];
        for (column, op, value) in ranges {
            if let Some(value) = value {
                let p = sql.arg(value);
                sql.push(&format!(" AND {column} {op} {p}"));
            }
        }
        match &q.environment_id {
            None => {}
            Some(None) => {
                sql.push(" AND environment_id IS NULL");
            }
            Some(Some(env)) => {
                let p = sql.arg(env);
                sql.push(&format!(" AND environment_id = {p}"));
            }
        }
        if let Some(needle) = &q.q {
            let p = sql.arg(like_substring(needle));
            sql.push(&format!(
                " AND (title LIKE {p} ESCAPE '\\' OR prompt LIKE {p} ESCAPE '\\' \
                 OR skill_spec LIKE {p} ESCAPE '\\')"
            ));
        }
        if let Some(executor) = &q.executor {
            // The executor is the agent when there is one, else the creator.
            let p = sql.arg(executor);
            sql.push(&format!(
                " AND (agent_uid = {p} OR (agent_uid IS NULL AND creator_id = {p}))"
            ));
        }
        if let Some(kind) = &q.artifact_type {
            let p = sql.arg(kind);
            sql.push(&format!(
                " AND EXISTS (SELECT 1 FROM json_each(runs.artifacts) AS a \
                 WHERE json_extract(a.value, '$.artifact_type') = {p})"
            ));
        }
        if let Some(ancestor) = &q.ancestor_run_id {
            let p = sql.arg(ancestor);
            sql.push(&format!(
                " AND run_id IN (WITH RECURSIVE tree(id) AS ( \
                 SELECT run_id FROM runs WHERE parent_run_id = {p} \
                 UNION SELECT r.run_id FROM runs AS r JOIN tree ON r.parent_run_id = tree.id) \
                 SELECT id FROM tree)"
            ));
        }
        if let Some(factory) = &q.factory_uid {
            let p = sql.arg(factory);
            sql.push(&format!(
                " AND agent_uid IN (SELECT uid FROM agents \
                 WHERE json_extract(spec, '$.factory_uid') = {p})"
            ));
        }
        for (key, value) in &q.metadata {
            // json_each rather than a JSON path: any key works, with no quoting.
            let k = sql.arg(key);
            let v = sql.arg(value);
            sql.push(&format!(
                " AND EXISTS (SELECT 1 FROM json_each(runs.metadata) AS m \
                 WHERE m.key = {k} AND m.type = 'text' AND m.value = {v})"
            ));
        }

        let (cmp, dir) = match q.sort_order {
            SortOrder::Asc => (">", "ASC"),
            SortOrder::Desc => ("<", "DESC"),
        };
        let column = match q.sort_by {
            SortBy::UpdatedAt => "updated_at",
            SortBy::CreatedAt => "created_at",
            SortBy::Title => "title",
            SortBy::Agent => "skill_spec",
        };
        if let Some(cursor) = &q.after {
            let id = sql.arg(&cursor.run_id);
            if q.sort_by == SortBy::Agent {
                // Order key: (skill_spec IS NULL, skill_spec, run_id).
                let has_skill_first = q.sort_order == SortOrder::Asc;
                match agent_cursor_skill(&cursor.value) {
                    Some(skill) => {
                        let v = sql.arg(skill);
                        let rest = format!(
                            "(skill_spec IS NOT NULL AND (skill_spec, run_id) {cmp} ({v}, {id}))"
                        );
                        if has_skill_first {
                            sql.push(&format!(" AND (skill_spec IS NULL OR {rest})"));
                        } else {
                            sql.push(&format!(" AND {rest}"));
                        }
                    }
                    None => {
                        let rest = format!("(skill_spec IS NULL AND run_id {cmp} {id})");
                        if has_skill_first {
                            sql.push(&format!(" AND {rest}"));
                        } else {
                            sql.push(&format!(" AND (skill_spec IS NOT NULL OR {rest})"));
                        }
                    }
                }
            } else {
                let v = sql.arg(&cursor.value);
                sql.push(&format!(" AND ({column}, run_id) {cmp} ({v}, {id})"));
            }
        }

        if q.sort_by == SortBy::Agent {
            sql.push(&format!(
                " ORDER BY (skill_spec IS NULL) {dir}, skill_spec {dir}, run_id {dir}"
            ));
        } else {
            sql.push(&format!(" ORDER BY {column} {dir}, run_id {dir}"));
        }
        let p = sql.arg(i64::from(q.limit));
        sql.push(&format!(" LIMIT {p}"));

        self.read(move |c| sql.all(c, "list runs", run_from_row))
            .await
    }

    async fn queued_runs(&self, queued_before: &str, limit: u32) -> Result<Vec<Run>> {
        // The cutoff is in the query: the hub asks on every dispatch pass,
        // and nothing has usually waited that long.
        let q = query(format!(
            "SELECT {RUN_COLUMNS} FROM runs WHERE state = 'QUEUED' AND queued_at < $1 \
             ORDER BY queued_at, run_id LIMIT $2"
        ))
        .bind(queued_before)
        .bind(i64::from(limit));
        self.read(move |c| q.all(c, "queued runs", run_from_row))
            .await
    }

    async fn queued_hosts(&self) -> Result<Vec<(String, String)>> {
        let op = "queued hosts";
        let q = query("SELECT DISTINCT team_id, worker_host FROM runs WHERE state = 'QUEUED'");
        self.read(move |c| {
            q.all(c, op, |r| {
                Ok((get(r, "team_id", op)?, get(r, "worker_host", op)?))
            })
        })
        .await
    }

    async fn active_runs(&self) -> Result<Vec<Run>> {
        let mut sql = query(format!("SELECT {RUN_COLUMNS} FROM runs WHERE state "));
        let active: Vec<RunState> = RunState::ALL
            .into_iter()
            .filter(|s| s.is_active())
            .collect();
        let states = sql.states_in(&active);
        sql.push(&states).push(" ORDER BY created_at, run_id");
        self.read(move |c| sql.all(c, "active runs", run_from_row))
            .await
    }

    async fn find_run_by_token(&self, token_hash: &str) -> Result<Option<Run>> {
        let mut sql = query(format!(
            "SELECT {RUN_COLUMNS} FROM runs WHERE token_hash = "
        ));
        let p = sql.arg(token_hash);
        let states = sql.states_in(&terminal_states());
        sql.push(&format!("{p} AND state NOT {states} LIMIT 1"));
        self.main(|c| sql.first(c, "find run by token", run_from_row))
    }

    async fn transition(
        &self,
        run_id: &str,
        from: &[RunState],
        to: RunState,
        patch: RunPatch,
        now: &str,
    ) -> Result<Option<Run>> {
        self.update_run(run_id, from, Some(to), patch, now, "transition run")
    }

    async fn assign_next(
        &self,
        team_id: &str,
        worker_host: &str,
        patch: RunPatch,
        now: &str,
    ) -> Result<Option<Run>> {
        // The oldest queued run, then the compare-and-set that takes it, in
        // one transaction (each statement compiled once: see `Slot::new`).
        let op = "assign next run";
        let next = query(NEXT_QUEUED).bind(team_id).bind(worker_host);
        self.write(op, |tx| {
            let Some(run_id) = next.scalar::<String>(tx, op)? else {
                return Ok(None);
            };
            cas_update(
                &run_id,
                &[RunState::Queued],
                Some(RunState::Pending),
                patch,
                now,
            )?
            .first(tx, op, run_from_row)
        })
    }

    async fn patch_run(
        &self,
        run_id: &str,
        in_states: &[RunState],
        patch: RunPatch,
        now: &str,
    ) -> Result<Option<Run>> {
        self.update_run(run_id, in_states, None, patch, now, "patch run")
    }

    async fn add_artifact(&self, run_id: &str, artifact: Value, now: &str) -> Result<Option<Run>> {
        let q = query(format!(
            "UPDATE runs SET artifacts = json_insert(artifacts, '$[#]', json($1)), \
             updated_at = $2 WHERE run_id = $3 RETURNING {RUN_COLUMNS}"
        ))
        .bind(to_json("run artifact", &artifact)?)
        .bind(now)
        .bind(run_id);
        self.main(|c| q.first(c, "add artifact", run_from_row))
    }

    async fn append_logs(&self, run_id: &str, lines: &[LogRecord]) -> Result<u64> {
        if lines.is_empty() {
            return Ok(0);
        }
        // Check everything before writing anything.
        let mut rows = Vec::with_capacity(lines.len());
        for l in lines {
            let gap = l
                .gap_bytes
                .map(|g| {
                    i64::try_from(g)
                        .map_err(|_| StoreError::Invalid(format!("gap_bytes {g} is too large")))
                })
                .transpose()?;
            rows.push((l, seq_to_db(l.seq)?, gap));
        }
        let op = "append logs";
        // One prepared statement, stepped once per line, in one transaction:
        // on the calling thread that costs about what SQLite's own work does.
        self.write(op, |tx| {
            let mut stmt = tx
                .prepare_cached(
                    "INSERT OR IGNORE INTO run_logs \
                     (run_id, seq, ts, stream, phase, data, is_text, newline, gap_bytes) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                )
                .map_err(db(op))?;
            let mut inserted = 0;
            for (l, seq, gap) in rows {
                inserted += stmt
                    .execute(rusqlite::params![
                        run_id,
                        seq,
                        l.ts,
                        l.stream.as_str(),
                        l.phase.as_str(),
                        l.data,
                        l.is_text,
                        l.newline,
                        gap
                    ])
                    .map_err(db(op))? as u64;
            }
            Ok(inserted)
        })
    }

    async fn read_logs(&self, q: &LogQuery) -> Result<Vec<LogRecord>> {
        let Ok(after) = i64::try_from(q.after_seq) else {
            return Ok(Vec::new());
        };
        let mut sql = query(format!(
            "SELECT {LOG_COLUMNS} FROM run_logs WHERE run_id = "
        ));
        let p = sql.arg(&q.run_id);
        let a = sql.arg(after);
        sql.push(&format!("{p} AND seq > {a}"));
        if let Some(phase) = q.phase {
            let p = sql.arg(phase.as_str());
            sql.push(&format!(" AND phase = {p}"));
        }
        let l = sql.arg(i64::from(q.limit));
        sql.push(&format!(" ORDER BY seq LIMIT {l}"));
        self.read(move |c| sql.all(c, "read logs", log_from_row))
            .await
    }

    async fn max_log_seq(&self, run_id: &str) -> Result<Option<u64>> {
        let q = query("SELECT MAX(seq) FROM run_logs WHERE run_id = $1").bind(run_id);
        let max: Option<i64> = self.main(|c| q.scalar(c, "max log seq"))?.flatten();
        max.map(|n| u64_from_db("log seq", n)).transpose()
    }

    async fn count_logs_up_to(&self, run_id: &str, seq: u64) -> Result<u64> {
        let q = query("SELECT COUNT(*) FROM run_logs WHERE run_id = $1 AND seq <= $2")
            .bind(run_id)
            .bind(seq_bound(seq));
        let n: i64 = self
            .read(move |c| q.scalar(c, "count logs"))
            .await?
            .unwrap_or(0);
        u64_from_db("log count", n)
    }

    async fn set_log_end(&self, run_id: &str, last_seq: u64) -> Result<bool> {
        let last = i64::try_from(last_seq)
            .map_err(|_| StoreError::Invalid(format!("log last_seq {last_seq} is too large")))?;
        let q = query("UPDATE runs SET log_last_seq = $1 WHERE run_id = $2")
            .bind(last)
            .bind(run_id);
        Ok(self.main(|c| q.execute(c, "set log end"))? > 0)
    }

    async fn delete_logs_ended_before(&self, ts: &str) -> Result<u64> {
        // By end time: SQLite would otherwise pick `runs_queue` for the
        // state list and visit every finished run, old or new.
        let mut sql = query(
            "SELECT run_id FROM runs INDEXED BY runs_ended_at \
             WHERE ended_at IS NOT NULL AND ended_at < ",
        );
        let p = sql.arg(ts);
        let states = sql.states_in(&terminal_states());
        sql.push(&format!(
            "{p} AND state {states} \
             AND EXISTS (SELECT 1 FROM run_logs AS l WHERE l.run_id = runs.run_id)"
        ));
        let run_ids: Vec<String> = self
            .read(move |c| sql.column(c, "find runs with old logs"))
            .await?;
        let mut deleted = 0;
        // At most LOG_DELETE_CHUNK lines per statement, each on the blocking
        // pool, so that no single write holds the main connection (and the
        // write lock) for long: a run with millions of lines would otherwise
        // stall every request.
        for run_id in run_ids {
            loop {
                // Checked again each time: a follow-up may have queued the
                // run since.
                let mut sql = query("DELETE FROM run_logs WHERE run_id = ");
                let r = sql.arg(&run_id);
                let t = sql.arg(ts);
                let states = sql.states_in(&terminal_states());
                let n = sql.arg(LOG_DELETE_CHUNK);
                sql.push(&format!(
                    "{r} AND seq IN (SELECT seq FROM run_logs WHERE run_id = {r} \
                     ORDER BY seq LIMIT {n}) \
                     AND EXISTS (SELECT 1 FROM runs WHERE run_id = {r} \
                     AND ended_at IS NOT NULL AND ended_at < {t} AND state {states})"
                ));
                let inner = self.inner.clone();
                let done = tokio::task::spawn_blocking(move || {
                    inner.main.with(|c| sql.execute(c, "delete logs"))
                })
                .await
                .map_err(join_error)??;
                deleted += done;
                if done < LOG_DELETE_CHUNK as u64 {
                    break;
                }
            }
        }
        Ok(deleted)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(path: &str, create: bool) -> Location {
        Location::File {
            path: PathBuf::from(path),
            create,
        }
    }

    #[test]
    fn urls() {
        let ok = |url: &str| parse_url(url).unwrap();
        assert_eq!(ok("sqlite::memory:"), Location::Memory);
        assert_eq!(ok("sqlite://:memory:"), Location::Memory);
        assert_eq!(ok("sqlite://x.db?mode=memory"), Location::Memory);
        assert_eq!(
            ok("sqlite:///var/lib/oz/oz.db"),
            file("/var/lib/oz/oz.db", true)
        );
        assert_eq!(ok("sqlite://data/oz.db"), file("data/oz.db", true));
        assert_eq!(ok("sqlite:oz.db"), file("oz.db", true));
        assert_eq!(ok("sqlite://oz.db?mode=rw"), file("oz.db", false));
        assert_eq!(ok("sqlite://oz.db?mode=rwc"), file("oz.db", true));
        let err = |url: &str| parse_url(url).unwrap_err();
        assert!(err("postgres://x").contains("starts with sqlite:"));
        assert!(err("sqlite://x.db?mode=ro").contains("mode=ro"));
        assert!(err("sqlite://x.db?cache=shared").contains("\"cache=shared\""));
        assert!(err("sqlite://").contains("names no file"));
    }

    #[test]
    fn run_columns_are_found_by_name() {
        assert_eq!(run_column("run_id"), 0);
        assert_eq!(run_column("team_id"), 1);
        assert_eq!(run_column("queued_at"), RUN_COLUMNS.split(',').count() - 1);
        assert_eq!(run_column("nope"), RUN_COLUMNS.split(',').count());
    }

    #[tokio::test]
    async fn mode_rw_does_not_create_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("missing.db");
        let url = format!("sqlite://{}?mode=rw", path.display());
        let err = SqliteStore::open_url(&url).await.unwrap_err();
        assert!(matches!(err, StoreError::Open { .. }), "{err:?}");
        assert!(!path.exists());
        let url = format!("sqlite://{}", path.display());
        SqliteStore::open_url(&url).await.unwrap();
        assert!(path.exists());
    }

    /// Checkpoints happen without any commit reaching the main connection's
    /// threshold: the database file grows while the WAL stays far below
    /// the backstop.
    #[tokio::test]
    async fn the_wal_is_checkpointed_in_the_background() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("oz.db");
        let store = SqliteStore::open(&path).await.unwrap();
        store
            .create_team("t", "T", "2026-01-01T00:00:00.000000Z")
            .await
            .unwrap();
        // About 1 MiB of prompts: some 300 pages, far below the backstop.
        let prompt = "x".repeat(4000);
        for i in 0..250 {
            let run = NewRun {
                run_id: format!("r{i}"),
                team_id: "t".into(),
                prompt: prompt.clone(),
                config: serde_json::json!({}),
                source: "API".into(),
                worker_host: "w".into(),
                created_at: "2026-01-01T00:00:00.000000Z".into(),
                ..NewRun::default()
            };
            store.insert_run(run).await.unwrap();
        }
        let deadline = Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let size = std::fs::metadata(&path).unwrap().len();
            if size >= 1 << 20 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the database file stayed at {size} bytes"
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        store.close().await;
        // The last connection to close removes the WAL.
        assert!(!dir.path().join("oz.db-wal").exists());
    }

    #[tokio::test]
    async fn the_dispatcher_reads_only_queued_runs() {
        let store = SqliteStore::open_url("sqlite::memory:").await.unwrap();
        let plan: Vec<String> = store
            .with_connection(|c| {
                let mut st = c.prepare(&format!("EXPLAIN QUERY PLAN {NEXT_QUEUED}"))?;
                let rows = st.query_map(["t", "w"], |r| r.get::<_, String>(3))?;
                rows.collect::<rusqlite::Result<Vec<_>>>()
            })
            .unwrap()
            .unwrap();
        // The partial index, searched by team and worker id, in queue order
        // (no sort step): the work does not grow with the runs kept.
        assert_eq!(plan.len(), 1, "{plan:?}");
        assert!(plan[0].starts_with("SEARCH runs USING"), "{plan:?}");
        assert!(plan[0].contains("INDEX runs_dispatch"), "{plan:?}");
    }

    /// A state bound as a value and compared with a partial index's
    /// condition (`runs_dispatch`: `state = 'QUEUED'`) made SQLite compile
    /// the statement again every time the value was bound, which was most
    /// of the dispatcher's statement cost (bench/REPORT.md). The statements
    /// of a run's life are compiled once and reused.
    #[tokio::test]
    async fn a_runs_state_changes_are_compiled_once() {
        let store = SqliteStore::open_url("sqlite::memory:").await.unwrap();
        let now = "2026-01-01T00:00:00.000000Z";
        store.create_team("t", "T", now).await.unwrap();
        for i in 0..4 {
            let run = NewRun {
                run_id: format!("r{i}"),
                team_id: "t".into(),
                config: serde_json::json!({}),
                source: "API".into(),
                worker_host: "w".into(),
                created_at: now.into(),
                ..NewRun::default()
            };
            store.insert_run(run).await.unwrap();
        }
        let assign = RunPatch {
            holder: Some(Some("conn".into())),
            new_execution: true,
            ..RunPatch::default()
        };
        let (pending, running) = ([RunState::Pending], [RunState::Inprogress]);
        for _ in 0..4 {
            let run = store
                .assign_next("t", "w", assign.clone(), now)
                .await
                .unwrap()
                .unwrap();
            let id = &run.run_id;
            let start = RunPatch::default();
            let started = store.transition(id, &pending, RunState::Inprogress, start, now);
            assert!(started.await.unwrap().is_some());
            store.set_log_end(id, 0).await.unwrap();
            let end = RunPatch::default();
            let ended = store.transition(id, &running, RunState::Succeeded, end, now);
            assert!(ended.await.unwrap().is_some());
        }
        let update = |from: &[RunState], to: RunState, patch: RunPatch| {
            let q = cas_update("x", from, Some(to), patch, now).unwrap();
            q.text().to_owned()
        };
        let texts = [
            NEXT_QUEUED.to_owned(),
            update(&[RunState::Queued], RunState::Pending, assign),
            update(&pending, RunState::Inprogress, RunPatch::default()),
            update(&running, RunState::Succeeded, RunPatch::default()),
        ];
        store
            .with_connection(|c| {
                for text in &texts {
                    let st = c.prepare_cached(text).unwrap();
                    let runs = st.get_status(rusqlite::StatementStatus::Run);
                    assert!(runs >= 4, "{runs} runs of {text}");
                    let again = st.get_status(rusqlite::StatementStatus::RePrepare);
                    assert_eq!(again, 0, "compiled again {again} times: {text}");
                }
            })
            .unwrap();
    }

    #[tokio::test]
    async fn a_closed_store_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("oz.db")).await.unwrap();
        let clone = store.clone();
        store.close().await;
        let err = clone.get_run("r").await.unwrap_err();
        assert!(matches!(err, StoreError::Closed), "{err:?}");
        let err = clone.list_api_keys("t").await.unwrap_err();
        assert!(matches!(err, StoreError::Closed), "{err:?}");
    }
}
