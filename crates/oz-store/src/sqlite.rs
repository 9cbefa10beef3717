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

use std::path::Path;
use std::str::FromStr;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde_json::Value;
use sqlx::migrate::MigrateError;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteRow, SqliteSynchronous,
};
use sqlx::{AssertSqlSafe, Connection, Row};

use crate::{
    ApiKey, KeyKind, LogPhase, LogQuery, LogRecord, LogStream, NewApiKey, NewRun, Result, Run,
    RunPatch, RunQuery, RunState, SortBy, SortOrder, StatusMessage, Store, StoreError, Team,
    agent_cursor_skill,
};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

/// Read-only connections of a file database, for the reads that may take
/// long (lists, log pages, artifact and attachment contents, the sweeps'
/// searches) so they never hold up the main one.
const READERS: u32 = 3;
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
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

/// SQLite implementation of [`Store`]. Cloning shares the pools.
///
/// A file database has one main connection for every write and point read,
/// and [`READERS`] read-only ones for lists and log pages. One main
/// connection because SQLite runs one writer at a time anyway, and because
/// a connection's page cache is dropped whenever another connection has
/// committed since its last statement: with a pool of four taking turns,
/// nearly every statement began by reading its pages again
/// (bench/REPORT.md: the server's CPU per run fell by a quarter).
#[derive(Debug, Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
    readers: SqlitePool,
}

impl SqliteStore {
    /// Opens (creating if needed) the database file at `path`, and its parent
    /// directory, then brings the schema up to date.
    pub async fn open(path: &Path) -> Result<Self> {
        let location = path.display().to_string();
        create_parent(path, &location)?;
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true);
        Self::connect_file(file_options(options), &location).await
    }

    /// Opens a `sqlite:` URL, e.g. `sqlite:///var/lib/oz/oz.db`,
    /// `sqlite://data/oz.db` or `sqlite::memory:`.
    ///
    /// An in-memory database lives as long as the store: it uses a single
    /// connection that is never recycled, so every query sees the same data.
    pub async fn open_url(url: &str) -> Result<Self> {
        let options = SqliteConnectOptions::from_str(url).map_err(|e| open_error(url, &e))?;
        if is_memory_url(url) {
            let pool = Self::open_pool(options.foreign_keys(true), 1, url).await?;
            MIGRATOR
                .run(&pool)
                .await
                .map_err(|e| migrate_error(url, e))?;
            let readers = pool.clone();
            return Ok(SqliteStore { pool, readers });
        }
        let path = options.get_filename().to_path_buf();
        create_parent(&path, url)?;
        Self::connect_file(file_options(options.create_if_missing(true)), url).await
    }

    /// Opens a file database: first one connection alone switches the file
    /// to WAL and migrates it, then the pool opens.
    ///
    /// Switching to WAL needs an exclusive lock that `busy_timeout` does not
    /// wait for, so pool connections racing to do it on a fresh file could
    /// fail with "database is locked". WAL is persistent, so the pool's
    /// connections leave the journal mode alone.
    async fn connect_file(options: SqliteConnectOptions, location: &str) -> Result<Self> {
        let deadline = Instant::now() + BUSY_TIMEOUT;
        let wal = options.clone().journal_mode(SqliteJournalMode::Wal);
        let mut conn = loop {
            match SqliteConnection::connect_with(&wal).await {
                Ok(conn) => break conn,
                // Another process may be switching the same file right now.
                Err(e) if is_busy(&e) && Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => return Err(open_error(location, &e)),
            }
        };
        // One writer at a time: processes opening a fresh file together
        // would otherwise both try to apply the same migration.
        let mut tx = conn
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(|e| open_error(location, &e))?;
        migrate_conn(&mut tx)
            .await
            .map_err(|e| migrate_error(location, e))?;
        tx.commit()
            .await
            .map_err(|e| StoreError::Migrate(format!("{location}: {e}")))?;
        conn.close().await.map_err(|e| open_error(location, &e))?;
        let pool = Self::open_pool(options.clone(), 1, location).await?;
        let readers = Self::open_pool(options.read_only(true), READERS, location).await?;
        tracing::debug!(%location, "sqlite store open");
        Ok(SqliteStore { pool, readers })
    }

    async fn open_pool(
        options: SqliteConnectOptions,
        connections: u32,
        location: &str,
    ) -> Result<SqlitePool> {
        SqlitePoolOptions::new()
            .max_connections(connections)
            .min_connections(1)
            // Never drop the last connection: an in-memory database would vanish.
            .idle_timeout(None)
            .max_lifetime(None)
            // sqlx pings an idle connection before handing it out, to find
            // dropped network links; a SQLite connection is a thread in this
            // process, so the ping is only a second round trip per query.
            .test_before_acquire(false)
            .connect_with(options)
            .await
            .map_err(|e| open_error(location, &e))
    }

    /// The main connection's pool (a single connection for a file
    /// database: give each connection back before the next store call), for
    /// maintenance tasks and tests.
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    /// A write transaction on the main connection. IMMEDIATE: it takes the
    /// write lock up front (waiting on `busy_timeout`) rather than failing
    /// to upgrade a read lock half way.
    async fn write_tx(&self, op: &'static str) -> Result<sqlx::Transaction<'_, sqlx::Sqlite>> {
        self.pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(db(op))
    }

    /// Closes every connection; further calls fail.
    pub async fn close(&self) {
        self.readers.close().await;
        self.pool.close().await;
    }
}

/// Runs the migrations on one connection (here: inside the caller's
/// transaction).
///
/// `Migrator::run(&mut conn)` would make every caller's future fail to be
/// `Send` ("implementation of `Acquire` is not general enough": `Acquire` is
/// implemented per lifetime), so this uses `run_direct`, which sqlx provides
/// for exactly this case.
async fn migrate_conn(conn: &mut SqliteConnection) -> std::result::Result<(), MigrateError> {
    MIGRATOR.run_direct(None, conn, false).await
}

fn migrate_error(location: &str, err: MigrateError) -> StoreError {
    StoreError::Migrate(format!("{location}: {err}"))
}

fn open_error(location: &str, err: &sqlx::Error) -> StoreError {
    StoreError::Open {
        location: location.to_owned(),
        message: describe(err),
    }
}

/// SQLITE_BUSY or one of its extended codes.
fn is_busy(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::Database(db) => db
            .code()
            .and_then(|c| c.parse::<i32>().ok())
            .is_some_and(|c| c & 0xff == 5),
        _ => false,
    }
}

/// Settings of every file connection (the journal mode is set once, by
/// [`SqliteStore::connect_file`]).
fn file_options(options: SqliteConnectOptions) -> SqliteConnectOptions {
    options
        .synchronous(SqliteSynchronous::Normal)
        .busy_timeout(BUSY_TIMEOUT)
        .foreign_keys(true)
}

fn is_memory_url(url: &str) -> bool {
    url.contains(":memory:") || url.contains("mode=memory")
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

/// A short human-readable account of an sqlx error.
fn describe(err: &sqlx::Error) -> String {
    match err {
        sqlx::Error::Database(db) => match db.code() {
            Some(code) => format!("{} (SQLite code {code})", db.message()),
            None => db.message().to_owned(),
        },
        sqlx::Error::Io(io) => io.to_string(),
        other => other.to_string(),
    }
}

fn db(op: &'static str) -> impl FnOnce(sqlx::Error) -> StoreError {
    move |source| StoreError::Db { op, source }
}

fn is_unique_violation(err: &sqlx::Error) -> bool {
    matches!(err, sqlx::Error::Database(e) if e.is_unique_violation())
}

fn corrupt(what: &'static str, message: impl ToString) -> StoreError {
    StoreError::Corrupt {
        what,
        message: message.to_string(),
    }
}

fn to_json<T: serde::Serialize + ?Sized>(what: &'static str, value: &T) -> Result<String> {
    // Serialising our own types to a string cannot fail in practice; report
    // it as corrupt data rather than panicking if it ever does.
    serde_json::to_string(value).map_err(|e| corrupt(what, e))
}

fn team_from_row(row: &SqliteRow) -> Result<Team> {
    let op = "decode team";
    Ok(Team {
        id: row.try_get("id").map_err(db(op))?,
        name: row.try_get("name").map_err(db(op))?,
        created_at: row.try_get("created_at").map_err(db(op))?,
    })
}

fn key_from_row(row: &SqliteRow) -> Result<ApiKey> {
    let op = "decode api key";
    let kind: String = row.try_get("kind").map_err(db(op))?;
    Ok(ApiKey {
        id: row.try_get("id").map_err(db(op))?,
        team_id: row.try_get("team_id").map_err(db(op))?,
        name: row.try_get("name").map_err(db(op))?,
        kind: KeyKind::parse(&kind)
            .ok_or_else(|| corrupt("api key kind", format!("unknown kind {kind:?}")))?,
        prefix: row.try_get("prefix").map_err(db(op))?,
        created_at: row.try_get("created_at").map_err(db(op))?,
        last_used_at: row.try_get("last_used_at").map_err(db(op))?,
        revoked_at: row.try_get("revoked_at").map_err(db(op))?,
    })
}

/// The one place that turns a `runs` row into a [`Run`].
fn run_from_row(row: &SqliteRow) -> Result<Run> {
    let op = "decode run";
    let get = |col: &str| -> Result<String> { row.try_get(col).map_err(db(op)) };
    let opt = |col: &str| -> Result<Option<String>> { row.try_get(col).map_err(db(op)) };

    let state = get("state")?;
    let state = RunState::parse(&state)
        .ok_or_else(|| corrupt("run state", format!("unknown state {state:?}")))?;
    let config: Value =
        serde_json::from_str(&get("config")?).map_err(|e| corrupt("run config", e))?;
    let metadata =
        serde_json::from_str(&get("metadata")?).map_err(|e| corrupt("run metadata", e))?;
    let status_message = opt("status_message")?
        .map(|s| serde_json::from_str::<StatusMessage>(&s))
        .transpose()
        .map_err(|e| corrupt("run status message", e))?;
    let artifacts =
        serde_json::from_str(&get("artifacts")?).map_err(|e| corrupt("run artifacts", e))?;
    let log_last_seq: Option<i64> = row.try_get("log_last_seq").map_err(db(op))?;
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
        let n: i64 = row.try_get(col).map_err(db(op))?;
        u32::try_from(n).map_err(|_| corrupt(col, format!("{n} is out of range")))
    };
    let log_seq_base: i64 = row.try_get("log_seq_base").map_err(db(op))?;

    Ok(Run {
        run_id: get("run_id")?,
        team_id: get("team_id")?,
        state,
        prompt: get("prompt")?,
        title: get("title")?,
        config,
        metadata,
        source: get("source")?,
        mode: opt("mode")?,
        worker_host: get("worker_host")?,
        name: opt("name")?,
        model_id: opt("model_id")?,
        environment_id: opt("environment_id")?,
        skill_spec: opt("skill_spec")?,
        schedule_id: opt("schedule_id")?,
        created_at: get("created_at")?,
        updated_at: get("updated_at")?,
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
        queued_at: get("queued_at")?,
    })
}

fn runs_from_rows(rows: &[SqliteRow]) -> Result<Vec<Run>> {
    rows.iter().map(run_from_row).collect()
}

/// Rows per multi-row INSERT of log lines (9 parameters each, well under
/// SQLite's parameter limit).
const LOG_ROWS_PER_INSERT: usize = 200;

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

fn log_from_row(row: &SqliteRow) -> Result<LogRecord> {
    let op = "decode log line";
    let stream: String = row.try_get("stream").map_err(db(op))?;
    let phase: String = row.try_get("phase").map_err(db(op))?;
    let gap: Option<i64> = row.try_get("gap_bytes").map_err(db(op))?;
    Ok(LogRecord {
        seq: u64_from_db("log seq", row.try_get("seq").map_err(db(op))?)?,
        ts: row.try_get("ts").map_err(db(op))?,
        stream: match stream.as_str() {
            "stdout" => LogStream::Stdout,
            "stderr" => LogStream::Stderr,
            other => return Err(corrupt("log stream", format!("unknown stream {other:?}"))),
        },
        phase: LogPhase::parse(&phase)
            .ok_or_else(|| corrupt("log phase", format!("unknown phase {phase:?}")))?,
        data: row.try_get("data").map_err(db(op))?,
        is_text: row.try_get("is_text").map_err(db(op))?,
        newline: row.try_get("newline").map_err(db(op))?,
        gap_bytes: gap.map(|n| u64_from_db("log gap_bytes", n)).transpose()?,
    })
}

/// A bound value of a dynamically built statement.
enum Arg {
    Text(Option<String>),
    Int(i64),
}

/// Dynamic SQL with `$N` placeholders and the values to bind to them.
struct Sql {
    text: String,
    args: Vec<Arg>,
}

impl Sql {
    fn new(text: impl Into<String>) -> Self {
        Sql {
            text: text.into(),
            args: Vec::new(),
        }
    }

    fn push(&mut self, sql: &str) -> &mut Self {
        self.text.push_str(sql);
        self
    }

    /// Adds a value and returns its placeholder.
    fn arg(&mut self, value: impl Into<Option<String>>) -> String {
        self.args.push(Arg::Text(value.into()));
        format!("${}", self.args.len())
    }

    fn int_arg(&mut self, value: i64) -> String {
        self.args.push(Arg::Int(value));
        format!("${}", self.args.len())
    }

    /// `IN ($a, $b, …)` over states; `states` must not be empty.
    fn states_in(&mut self, states: &[RunState]) -> String {
        let list: Vec<String> = states
            .iter()
            .map(|s| self.arg(s.as_str().to_owned()))
            .collect();
        format!("IN ({})", list.join(", "))
    }

    /// The statement with every value bound.
    fn query(self) -> sqlx::query::Query<'static, sqlx::Sqlite, sqlx::sqlite::SqliteArguments> {
        let mut query = sqlx::query(AssertSqlSafe(self.text));
        for arg in self.args {
            query = match arg {
                Arg::Text(v) => query.bind(v),
                Arg::Int(v) => query.bind(v),
            };
        }
        query
    }

    /// Runs the statement; returns the number of rows it changed.
    async fn execute(self, pool: &SqlitePool, op: &'static str) -> Result<u64> {
        Ok(self
            .query()
            .execute(pool)
            .await
            .map_err(db(op))?
            .rows_affected())
    }

    async fn fetch_all(self, pool: &SqlitePool, op: &'static str) -> Result<Vec<SqliteRow>> {
        self.query().fetch_all(pool).await.map_err(db(op))
    }
}

/// Appends `, col = $n` for each field the patch sets.
fn push_patch(sql: &mut Sql, patch: RunPatch) -> Result<()> {
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
    } = patch;
    if new_execution {
        sql.push(", executions = executions + 1");
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

/// Insert a run on `conn` (a pool connection or an open transaction).
async fn insert_run_on(conn: &mut SqliteConnection, run: NewRun) -> Result<Run> {
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
    let sql = format!(
        "INSERT INTO runs (run_id, team_id, state, prompt, title, config, metadata, source, \
         mode, worker_host, name, model_id, environment_id, skill_spec, schedule_id, \
         created_at, updated_at, status_message, token_hash, artifacts, creator_id, creator, \
         agent_uid, executor, parent_run_id, conversation_id, schedule, queued_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, \
         $16, $16, $17, $18, '[]', $19, $20, $21, $22, $23, $24, $25, $16) \
         RETURNING {RUN_COLUMNS}"
    );
    let rows = sqlx::query(AssertSqlSafe(sql))
        .bind(run.run_id.clone())
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
        .bind(run.token_hash)
        .bind(run.creator_id)
        .bind(creator)
        .bind(run.agent_uid)
        .bind(executor)
        .bind(run.parent_run_id)
        .bind(run.conversation_id)
        .bind(schedule)
        .fetch_all(&mut *conn)
        .await
        .map_err(|e| {
            if is_unique_violation(&e) {
                StoreError::Conflict(format!("run {}", run.run_id))
            } else {
                db("insert run")(e)
            }
        })?;
    run_from_row(
        rows.first()
            .ok_or_else(|| corrupt("run", "insert returned no row"))?,
    )
}

impl SqliteStore {
    /// The CAS update shared by [`Store::transition`] and [`Store::patch_run`].
    async fn update_run(
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
        let mut sql = Sql::new("UPDATE runs SET ");
        let p = sql.arg(now.to_owned());
        sql.push(&format!("updated_at = {p}"));
        if let Some(to) = to {
            let p = sql.arg(to.as_str().to_owned());
            sql.push(&format!(", state = {p}"));
        }
        push_patch(&mut sql, patch)?;
        let p = sql.arg(run_id.to_owned());
        let states = sql.states_in(from);
        sql.push(&format!(
            " WHERE run_id = {p} AND state {states} RETURNING {RUN_COLUMNS}"
        ));
        let rows = sql.fetch_all(&self.pool, op).await?;
        rows.first().map(run_from_row).transpose()
    }
}

#[async_trait]
impl Store for SqliteStore {
    async fn create_team(&self, id: &str, name: &str, now: &str) -> Result<Team> {
        let row = sqlx::query(
            "INSERT INTO teams (id, name, created_at) VALUES ($1, $2, $3) \
             RETURNING id, name, created_at",
        )
        .bind(id.to_owned())
        .bind(name.to_owned())
        .bind(now.to_owned())
        .fetch_all(&self.pool)
        .await
        .map_err(|e| {
            if is_unique_violation(&e) {
                StoreError::Conflict(format!("team {id}"))
            } else {
                db("create team")(e)
            }
        })?;
        team_from_row(
            row.first()
                .ok_or_else(|| corrupt("team", "insert returned no row"))?,
        )
    }

    async fn first_team(&self) -> Result<Option<Team>> {
        let rows =
            sqlx::query("SELECT id, name, created_at FROM teams ORDER BY created_at, id LIMIT 1")
                .fetch_all(&self.pool)
                .await
                .map_err(db("first team"))?;
        rows.first().map(team_from_row).transpose()
    }

    async fn get_team(&self, id: &str) -> Result<Option<Team>> {
        let rows = sqlx::query("SELECT id, name, created_at FROM teams WHERE id = $1")
            .bind(id.to_owned())
            .fetch_all(&self.pool)
            .await
            .map_err(db("get team"))?;
        rows.first().map(team_from_row).transpose()
    }

    async fn insert_api_key(&self, key: NewApiKey) -> Result<ApiKey> {
        let sql = format!(
            "INSERT INTO api_keys (id, team_id, name, kind, prefix, hash, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING {KEY_COLUMNS}"
        );
        let rows = sqlx::query(AssertSqlSafe(sql))
            .bind(key.id.clone())
            .bind(key.team_id)
            .bind(key.name)
            .bind(key.kind.as_str())
            .bind(key.prefix)
            .bind(key.hash)
            .bind(key.created_at)
            .fetch_all(&self.pool)
            .await
            .map_err(|e| {
                if is_unique_violation(&e) {
                    StoreError::Conflict(format!("api key {}", key.id))
                } else {
                    db("insert api key")(e)
                }
            })?;
        key_from_row(
            rows.first()
                .ok_or_else(|| corrupt("api key", "insert returned no row"))?,
        )
    }

    async fn find_api_key(&self, hash: &str) -> Result<Option<ApiKey>> {
        let sql =
            format!("SELECT {KEY_COLUMNS} FROM api_keys WHERE hash = $1 AND revoked_at IS NULL");
        let rows = sqlx::query(AssertSqlSafe(sql))
            .bind(hash.to_owned())
            .fetch_all(&self.pool)
            .await
            .map_err(db("find api key"))?;
        rows.first().map(key_from_row).transpose()
    }

    async fn list_api_keys(&self, team_id: &str) -> Result<Vec<ApiKey>> {
        let sql = format!(
            "SELECT {KEY_COLUMNS} FROM api_keys WHERE team_id = $1 ORDER BY created_at, id"
        );
        let rows = sqlx::query(AssertSqlSafe(sql))
            .bind(team_id.to_owned())
            .fetch_all(&self.readers)
            .await
            .map_err(db("list api keys"))?;
        rows.iter().map(key_from_row).collect()
    }

    async fn revoke_api_key(&self, team_id: &str, id: &str, now: &str) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE api_keys SET revoked_at = $1 \
             WHERE team_id = $2 AND id = $3 AND revoked_at IS NULL",
        )
        .bind(now.to_owned())
        .bind(team_id.to_owned())
        .bind(id.to_owned())
        .execute(&self.pool)
        .await
        .map_err(db("revoke api key"))?;
        Ok(done.rows_affected() > 0)
    }

    async fn touch_api_key(&self, id: &str, now: &str) -> Result<()> {
        sqlx::query("UPDATE api_keys SET last_used_at = $1 WHERE id = $2")
            .bind(now.to_owned())
            .bind(id.to_owned())
            .execute(&self.pool)
            .await
            .map_err(db("touch api key"))?;
        Ok(())
    }

    async fn insert_run(&self, run: NewRun) -> Result<Run> {
        let mut conn = self.pool.acquire().await.map_err(db("insert run"))?;
        insert_run_on(&mut conn, run).await
    }

    async fn get_run(&self, run_id: &str) -> Result<Option<Run>> {
        let sql = format!("SELECT {RUN_COLUMNS} FROM runs WHERE run_id = $1");
        let rows = sqlx::query(AssertSqlSafe(sql))
            .bind(run_id.to_owned())
            .fetch_all(&self.pool)
            .await
            .map_err(db("get run"))?;
        rows.first().map(run_from_row).transpose()
    }

    async fn list_runs(&self, q: &RunQuery) -> Result<Vec<Run>> {
        let mut sql = Sql::new(format!("SELECT {RUN_COLUMNS} FROM runs WHERE team_id = "));
        let p = sql.arg(q.team_id.clone());
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
                let p = sql.arg(value.clone());
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
                let p = sql.arg(value.clone());
                sql.push(&format!(" AND {column} {op} {p}"));
            }
        }
        match &q.environment_id {
            None => {}
            Some(None) => {
                sql.push(" AND environment_id IS NULL");
            }
            Some(Some(env)) => {
                let p = sql.arg(env.clone());
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
            let p = sql.arg(executor.clone());
            sql.push(&format!(
                " AND (agent_uid = {p} OR (agent_uid IS NULL AND creator_id = {p}))"
            ));
        }
        if let Some(kind) = &q.artifact_type {
            let p = sql.arg(kind.clone());
            sql.push(&format!(
                " AND EXISTS (SELECT 1 FROM json_each(runs.artifacts) AS a \
                 WHERE json_extract(a.value, '$.artifact_type') = {p})"
            ));
        }
        if let Some(ancestor) = &q.ancestor_run_id {
            let p = sql.arg(ancestor.clone());
            sql.push(&format!(
                " AND run_id IN (WITH RECURSIVE tree(id) AS ( \
                 SELECT run_id FROM runs WHERE parent_run_id = {p} \
                 UNION SELECT r.run_id FROM runs AS r JOIN tree ON r.parent_run_id = tree.id) \
                 SELECT id FROM tree)"
            ));
        }
        if let Some(factory) = &q.factory_uid {
            let p = sql.arg(factory.clone());
            sql.push(&format!(
                " AND agent_uid IN (SELECT uid FROM agents \
                 WHERE json_extract(spec, '$.factory_uid') = {p})"
            ));
        }
        for (key, value) in &q.metadata {
            // json_each rather than a JSON path: any key works, with no quoting.
            let k = sql.arg(key.clone());
            let v = sql.arg(value.clone());
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
            let id = sql.arg(cursor.run_id.clone());
            if q.sort_by == SortBy::Agent {
                // Order key: (skill_spec IS NULL, skill_spec, run_id).
                let has_skill_first = q.sort_order == SortOrder::Asc;
                match agent_cursor_skill(&cursor.value) {
                    Some(skill) => {
                        let v = sql.arg(skill.to_owned());
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
                let v = sql.arg(cursor.value.clone());
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
        let p = sql.int_arg(i64::from(q.limit));
        sql.push(&format!(" LIMIT {p}"));

        let rows = sql.fetch_all(&self.readers, "list runs").await?;
        runs_from_rows(&rows)
    }

    async fn queued_runs(&self, limit: u32) -> Result<Vec<Run>> {
        let sql = format!(
            "SELECT {RUN_COLUMNS} FROM runs WHERE state = $1 \
             ORDER BY queued_at, run_id LIMIT $2"
        );
        let rows = sqlx::query(AssertSqlSafe(sql))
            .bind(RunState::Queued.as_str())
            .bind(i64::from(limit))
            .fetch_all(&self.readers)
            .await
            .map_err(db("queued runs"))?;
        runs_from_rows(&rows)
    }

    async fn queued_hosts(&self) -> Result<Vec<(String, String)>> {
        let rows =
            sqlx::query("SELECT DISTINCT team_id, worker_host FROM runs WHERE state = 'QUEUED'")
                .fetch_all(&self.readers)
                .await
                .map_err(db("queued hosts"))?;
        rows.iter()
            .map(|r| {
                Ok((
                    r.try_get("team_id").map_err(db("queued hosts"))?,
                    r.try_get("worker_host").map_err(db("queued hosts"))?,
                ))
            })
            .collect()
    }

    async fn active_runs(&self) -> Result<Vec<Run>> {
        let mut sql = Sql::new(format!("SELECT {RUN_COLUMNS} FROM runs WHERE state "));
        let active: Vec<RunState> = RunState::ALL
            .into_iter()
            .filter(|s| s.is_active())
            .collect();
        let states = sql.states_in(&active);
        sql.push(&states).push(" ORDER BY created_at, run_id");
        let rows = sql.fetch_all(&self.readers, "active runs").await?;
        runs_from_rows(&rows)
    }

    async fn find_run_by_token(&self, token_hash: &str) -> Result<Option<Run>> {
        let mut sql = Sql::new(format!(
            "SELECT {RUN_COLUMNS} FROM runs WHERE token_hash = "
        ));
        let p = sql.arg(token_hash.to_owned());
        let states = sql.states_in(&terminal_states());
        sql.push(&format!("{p} AND state NOT {states} LIMIT 1"));
        let rows = sql.fetch_all(&self.pool, "find run by token").await?;
        rows.first().map(run_from_row).transpose()
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
            .await
    }

    async fn assign_next(
        &self,
        team_id: &str,
        worker_host: &str,
        patch: RunPatch,
        now: &str,
    ) -> Result<Option<Run>> {
        let mut sql = Sql::new("UPDATE runs SET ");
        let p = sql.arg(now.to_owned());
        sql.push(&format!("updated_at = {p}"));
        let p = sql.arg(RunState::Pending.as_str().to_owned());
        sql.push(&format!(", state = {p}"));
        push_patch(&mut sql, patch)?;
        let (t, w) = (sql.arg(team_id.to_owned()), sql.arg(worker_host.to_owned()));
        let queued = sql.arg(RunState::Queued.as_str().to_owned());
        // The subquery walks the dispatch index (team, worker, state,
        // created_at, run_id); the outer state check keeps it a
        // compare-and-set like every other transition.
        sql.push(&format!(
            " WHERE run_id = (SELECT run_id FROM runs WHERE team_id = {t} AND worker_host = {w} \
             AND state = {queued} ORDER BY created_at, run_id LIMIT 1) AND state = {queued} \
             RETURNING {RUN_COLUMNS}"
        ));
        let rows = sql.fetch_all(&self.pool, "assign next run").await?;
        rows.first().map(run_from_row).transpose()
    }

    async fn patch_run(
        &self,
        run_id: &str,
        in_states: &[RunState],
        patch: RunPatch,
        now: &str,
    ) -> Result<Option<Run>> {
        self.update_run(run_id, in_states, None, patch, now, "patch run")
            .await
    }

    async fn add_artifact(&self, run_id: &str, artifact: Value, now: &str) -> Result<Option<Run>> {
        let artifact = to_json("run artifact", &artifact)?;
        let sql = format!(
            "UPDATE runs SET artifacts = json_insert(artifacts, '$[#]', json($1)), \
             updated_at = $2 WHERE run_id = $3 RETURNING {RUN_COLUMNS}"
        );
        let rows = sqlx::query(AssertSqlSafe(sql))
            .bind(artifact)
            .bind(now.to_owned())
            .bind(run_id.to_owned())
            .fetch_all(&self.pool)
            .await
            .map_err(db("add artifact"))?;
        rows.first().map(run_from_row).transpose()
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
        let mut tx = self.write_tx(op).await?;
        // Many rows per statement: per-statement overhead, not SQLite,
        // dominated ingestion with one INSERT per line.
        let mut inserted = 0;
        for chunk in rows.chunks(LOG_ROWS_PER_INSERT) {
            let mut qb = sqlx::QueryBuilder::<sqlx::Sqlite>::new(
                "INSERT OR IGNORE INTO run_logs \
                 (run_id, seq, ts, stream, phase, data, is_text, newline, gap_bytes) ",
            );
            qb.push_values(chunk, |mut b, (l, seq, gap)| {
                b.push_bind(run_id.to_owned())
                    .push_bind(*seq)
                    .push_bind(l.ts.clone())
                    .push_bind(l.stream.as_str())
                    .push_bind(l.phase.as_str())
                    .push_bind(l.data.clone())
                    .push_bind(l.is_text)
                    .push_bind(l.newline)
                    .push_bind(*gap);
            });
            let done = qb.build().execute(&mut *tx).await.map_err(db(op))?;
            inserted += done.rows_affected();
        }
        tx.commit().await.map_err(db(op))?;
        Ok(inserted)
    }

    async fn read_logs(&self, q: &LogQuery) -> Result<Vec<LogRecord>> {
        let Ok(after) = i64::try_from(q.after_seq) else {
            return Ok(Vec::new());
        };
        let mut sql = Sql::new(format!(
            "SELECT {LOG_COLUMNS} FROM run_logs WHERE run_id = "
        ));
        let p = sql.arg(q.run_id.clone());
        let a = sql.int_arg(after);
        sql.push(&format!("{p} AND seq > {a}"));
        if let Some(phase) = q.phase {
            let p = sql.arg(phase.as_str().to_owned());
            sql.push(&format!(" AND phase = {p}"));
        }
        let l = sql.int_arg(i64::from(q.limit));
        sql.push(&format!(" ORDER BY seq LIMIT {l}"));
        let rows = sql.fetch_all(&self.readers, "read logs").await?;
        rows.iter().map(log_from_row).collect()
    }

    async fn max_log_seq(&self, run_id: &str) -> Result<Option<u64>> {
        let max: Option<i64> =
            sqlx::query_scalar("SELECT MAX(seq) FROM run_logs WHERE run_id = $1")
                .bind(run_id.to_owned())
                .fetch_one(&self.pool)
                .await
                .map_err(db("max log seq"))?;
        max.map(|n| u64_from_db("log seq", n)).transpose()
    }

    async fn count_logs_up_to(&self, run_id: &str, seq: u64) -> Result<u64> {
        let n: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM run_logs WHERE run_id = $1 AND seq <= $2")
                .bind(run_id.to_owned())
                .bind(seq_bound(seq))
                .fetch_one(&self.readers)
                .await
                .map_err(db("count logs"))?;
        u64_from_db("log count", n)
    }

    async fn set_log_end(&self, run_id: &str, last_seq: u64) -> Result<bool> {
        let last = i64::try_from(last_seq)
            .map_err(|_| StoreError::Invalid(format!("log last_seq {last_seq} is too large")))?;
        let done = sqlx::query("UPDATE runs SET log_last_seq = $1 WHERE run_id = $2")
            .bind(last)
            .bind(run_id.to_owned())
            .execute(&self.pool)
            .await
            .map_err(db("set log end"))?;
        Ok(done.rows_affected() > 0)
    }

    async fn delete_logs_ended_before(&self, ts: &str) -> Result<u64> {
        let mut sql =
            Sql::new("SELECT run_id FROM runs WHERE ended_at IS NOT NULL AND ended_at < ");
        let p = sql.arg(ts.to_owned());
        let states = sql.states_in(&terminal_states());
        sql.push(&format!(
            "{p} AND state {states} \
             AND EXISTS (SELECT 1 FROM run_logs AS l WHERE l.run_id = runs.run_id)"
        ));
        let rows = sql
            .fetch_all(&self.readers, "find runs with old logs")
            .await?;
        let mut deleted = 0;
        // At most LOG_DELETE_CHUNK lines per statement, so that no single
        // write holds the main connection (and the write lock) for long: a
        // run with millions of lines would otherwise stall every request.
        for row in rows {
            let run_id: String = row
                .try_get("run_id")
                .map_err(db("find runs with old logs"))?;
            loop {
                // Checked again each time: a follow-up may have queued the
                // run since.
                let mut sql = Sql::new("DELETE FROM run_logs WHERE run_id = ");
                let r = sql.arg(run_id.clone());
                let t = sql.arg(ts.to_owned());
                let states = sql.states_in(&terminal_states());
                let n = sql.int_arg(LOG_DELETE_CHUNK);
                sql.push(&format!(
                    "{r} AND seq IN (SELECT seq FROM run_logs WHERE run_id = {r} \
                     ORDER BY seq LIMIT {n}) \
                     AND EXISTS (SELECT 1 FROM runs WHERE run_id = {r} \
                     AND ended_at IS NOT NULL AND ended_at < {t} AND state {states})"
                ));
                let done = sql.execute(&self.pool, "delete logs").await?;
                deleted += done;
                if done < LOG_DELETE_CHUNK as u64 {
                    break;
                }
            }
        }
        Ok(deleted)
    }
}
