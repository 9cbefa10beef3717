//! The SQLite plumbing under [`super::SqliteStore`]: connections, statements
//! with their bound values, errors, and the schema migrations.
//!
//! Statements run synchronously (rusqlite) on the caller's thread. A point
//! read or a one-row write on an open WAL database takes microseconds, far
//! less than handing it to another thread and waking up again, which is what
//! an async driver does for every statement (bench/REPORT.md).

use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use rusqlite::config::DbConfig;
use rusqlite::types::{FromSql, Value};
use rusqlite::{CachedStatement, Connection, ErrorCode, Row, Statement};
use sha2::{Digest, Sha384};

use crate::{Result, RunState, StoreError};

pub(super) const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Prepared statements kept per connection. The hot ones are a dozen; list
/// queries are built per filter combination.
const STATEMENT_CACHE: usize = 64;

/// One connection, shared by the store's clones. `None` once closed.
#[derive(Debug)]
pub(super) struct Slot(Mutex<Option<Connection>>);

impl Slot {
    pub(super) fn new(conn: Connection) -> Slot {
        conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
        // Plans that never depend on bound values. Without this guarantee
        // SQLite looks at a statement's values while planning (an ORDER BY
        // under an equality on a bound value, a bound value compared with a
        // partial index's condition) and then compiles the statement again
        // whenever a new value is bound: every dispatch and state change,
        // about a tenth of the server's CPU under load (bench/REPORT.md).
        // Where a plan needs a value (a partial index's state), the SQL
        // names it literally.
        if let Err(e) = conn.set_db_config(DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG, true) {
            tracing::warn!(error = %e, "cannot enable SQLite's query planner stability guarantee; statements will be compiled again on new values");
        }
        Slot(Mutex::new(Some(conn)))
    }

    /// Runs `f` on the connection. A panic elsewhere while it was held
    /// leaves nothing half done (an open transaction rolls back when
    /// dropped), so a poisoned lock is taken over.
    pub(super) fn with<T>(&self, f: impl FnOnce(&mut Connection) -> Result<T>) -> Result<T> {
        let mut guard: MutexGuard<'_, Option<Connection>> =
            self.0.lock().unwrap_or_else(PoisonError::into_inner);
        match guard.as_mut() {
            Some(conn) => f(conn),
            None => Err(StoreError::Closed),
        }
    }

    /// Closes the connection (the last one to close checkpoints the WAL).
    pub(super) fn close(&self) {
        let conn = self.0.lock().unwrap_or_else(PoisonError::into_inner).take();
        if let Some(conn) = conn
            && let Err((_, e)) = conn.close()
        {
            tracing::warn!(error = %e, "closing a database connection failed");
        }
    }
}

/// A statement and the values bound to its `$N` placeholders.
///
/// SQL text is only ever built from constants and placeholders; values are
/// never interpolated.
pub(super) struct Query {
    text: String,
    args: Vec<Value>,
}

/// A value to bind: what `Query::bind` accepts.
pub(super) trait Arg {
    fn value(self) -> Value;
}

impl Arg for &str {
    fn value(self) -> Value {
        Value::Text(self.to_owned())
    }
}

impl Arg for String {
    fn value(self) -> Value {
        Value::Text(self)
    }
}

impl Arg for &String {
    fn value(self) -> Value {
        Value::Text(self.clone())
    }
}

impl Arg for i64 {
    fn value(self) -> Value {
        Value::Integer(self)
    }
}

impl Arg for bool {
    fn value(self) -> Value {
        Value::Integer(i64::from(self))
    }
}

impl Arg for Vec<u8> {
    fn value(self) -> Value {
        Value::Blob(self)
    }
}

impl<T: Arg> Arg for Option<T> {
    fn value(self) -> Value {
        self.map_or(Value::Null, Arg::value)
    }
}

pub(super) fn query(text: impl Into<String>) -> Query {
    Query {
        text: text.into(),
        args: Vec::new(),
    }
}

impl Query {
    /// Binds the next `$N`.
    pub(super) fn bind(mut self, value: impl Arg) -> Self {
        self.args.push(value.value());
        self
    }

    pub(super) fn push(&mut self, sql: &str) -> &mut Self {
        self.text.push_str(sql);
        self
    }

    /// Adds a value and returns its placeholder.
    pub(super) fn arg(&mut self, value: impl Arg) -> String {
        self.args.push(value.value());
        format!("${}", self.args.len())
    }

    /// The SQL text (to find the cached statement in tests).
    #[cfg(test)]
    pub(super) fn text(&self) -> &str {
        &self.text
    }

    /// `IN ($a, $b, …)` over states; `states` must not be empty.
    pub(super) fn states_in(&mut self, states: &[RunState]) -> String {
        let list: Vec<String> = states.iter().map(|s| self.arg(s.as_str())).collect();
        format!("IN ({})", list.join(", "))
    }

    /// The cached statement with every value bound.
    fn prepare<'c>(&self, conn: &'c Connection, op: &'static str) -> Result<CachedStatement<'c>> {
        tracing::debug!(target: "oz_store::sql", op, "statement");
        let mut stmt = conn.prepare_cached(&self.text).map_err(db(op))?;
        bind_all(&mut stmt, &self.args).map_err(db(op))?;
        Ok(stmt)
    }

    /// Runs the statement; returns the number of rows it changed.
    pub(super) fn execute(&self, conn: &Connection, op: &'static str) -> Result<u64> {
        let mut stmt = self.prepare(conn, op)?;
        let n = stmt.raw_execute().map_err(db(op))?;
        Ok(n as u64)
    }

    /// Every row, each turned into a `T` by `decode`.
    pub(super) fn all<T>(
        &self,
        conn: &Connection,
        op: &'static str,
        decode: impl Fn(&Row<'_>) -> Result<T>,
    ) -> Result<Vec<T>> {
        let mut stmt = self.prepare(conn, op)?;
        let mut rows = stmt.raw_query();
        let mut out = Vec::new();
        while let Some(row) = rows.next().map_err(db(op))? {
            out.push(decode(row)?);
        }
        Ok(out)
    }

    /// The first row, if any (the statement still runs to completion, so a
    /// `RETURNING` write is fully applied).
    pub(super) fn first<T>(
        &self,
        conn: &Connection,
        op: &'static str,
        decode: impl Fn(&Row<'_>) -> Result<T>,
    ) -> Result<Option<T>> {
        Ok(self.all(conn, op, decode)?.into_iter().next())
    }

    /// The first column of the first row, if there is a row.
    pub(super) fn scalar<T: FromSql>(
        &self,
        conn: &Connection,
        op: &'static str,
    ) -> Result<Option<T>> {
        self.first(conn, op, |row| row.get(0).map_err(db(op)))
    }

    /// The first column of every row.
    pub(super) fn column<T: FromSql>(&self, conn: &Connection, op: &'static str) -> Result<Vec<T>> {
        self.all(conn, op, |row| row.get(0).map_err(db(op)))
    }
}

/// Binds `args` by placeholder: `$N` (or `?N`) takes the Nth value, so a
/// placeholder may repeat or appear out of order; a bare `?` takes the value
/// at its position.
fn bind_all(stmt: &mut Statement<'_>, args: &[Value]) -> rusqlite::Result<()> {
    for index in 1..=stmt.parameter_count() {
        let n = stmt
            .parameter_name(index)
            .and_then(|name| name.strip_prefix(['$', '?']))
            .map_or(Some(index), |n| n.parse::<usize>().ok());
        let value = n
            .and_then(|n| n.checked_sub(1))
            .and_then(|i| args.get(i))
            .ok_or(rusqlite::Error::InvalidParameterCount(index, args.len()))?;
        stmt.raw_bind_parameter(index, value)?;
    }
    Ok(())
}

/// Reads column `col` of a row for `op`.
pub(super) fn get<T: FromSql>(row: &Row<'_>, col: &str, op: &'static str) -> Result<T> {
    row.get(col).map_err(db(op))
}

pub(super) fn db(op: &'static str) -> impl FnOnce(rusqlite::Error) -> StoreError {
    move |source| StoreError::Db { op, source }
}

pub(super) fn is_unique_violation(err: &rusqlite::Error) -> bool {
    matches!(
        err,
        rusqlite::Error::SqliteFailure(e, _)
            if e.code == ErrorCode::ConstraintViolation
                && matches!(e.extended_code, 1555 | 2067) // PRIMARYKEY, UNIQUE
    )
}

/// SQLITE_BUSY or SQLITE_LOCKED, or one of their extended codes.
pub(super) fn is_busy(err: &rusqlite::Error) -> bool {
    matches!(
        err,
        rusqlite::Error::SqliteFailure(e, _)
            if matches!(e.code, ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked)
    )
}

/// A short human-readable account of a SQLite error.
pub(super) fn describe(err: &rusqlite::Error) -> String {
    match err {
        rusqlite::Error::SqliteFailure(e, Some(message)) => {
            format!("{message} (SQLite code {})", e.extended_code)
        }
        rusqlite::Error::SqliteFailure(e, None) => {
            format!("{e} (SQLite code {})", e.extended_code)
        }
        other => other.to_string(),
    }
}

pub(super) fn corrupt(what: &'static str, message: impl ToString) -> StoreError {
    StoreError::Corrupt {
        what,
        message: message.to_string(),
    }
}

/// One schema migration, embedded in the binary.
struct Migration {
    version: i64,
    description: &'static str,
    sql: &'static str,
}

/// Every file of `migrations/sqlite`, in order (a test checks that none is
/// missing). The version and description follow the file name.
const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        description: "init",
        sql: include_str!("../../migrations/sqlite/0001_init.sql"),
    },
    Migration {
        version: 2,
        description: "logs",
        sql: include_str!("../../migrations/sqlite/0002_logs.sql"),
    },
    Migration {
        version: 3,
        description: "catalog",
        sql: include_str!("../../migrations/sqlite/0003_catalog.sql"),
    },
    Migration {
        version: 4,
        description: "drop unused index",
        sql: include_str!("../../migrations/sqlite/0004_drop_unused_index.sql"),
    },
    Migration {
        version: 5,
        description: "queued dispatch index",
        sql: include_str!("../../migrations/sqlite/0005_queued_dispatch_index.sql"),
    },
];

/// The embedded migrations' file names, for the test that compares them with
/// the directory.
#[cfg(test)]
fn migration_files() -> Vec<String> {
    MIGRATIONS
        .iter()
        .map(|m| format!("{:04}_{}.sql", m.version, m.description.replace(' ', "_")))
        .collect()
}

/// Applied migrations are recorded in `_sqlx_migrations`, with the same
/// columns and checksums (SHA-384 of the file) as sqlx's migrator wrote
/// before this store left sqlx, so databases made by earlier versions open
/// as they are.
const MIGRATIONS_TABLE: &str = "CREATE TABLE IF NOT EXISTS _sqlx_migrations ( \
     version BIGINT PRIMARY KEY, description TEXT NOT NULL, \
     installed_on TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP, \
     success BOOLEAN NOT NULL, checksum BLOB NOT NULL, execution_time BIGINT NOT NULL)";

/// Brings the schema up to date; `conn` is inside the caller's write
/// transaction. Refuses a database migrated by a newer build, one whose
/// applied migration differs from ours, or one where a migration failed
/// half way.
pub(super) fn migrate(conn: &Connection) -> std::result::Result<(), String> {
    conn.execute_batch(MIGRATIONS_TABLE)
        .map_err(|e| format!("cannot create the migrations table: {}", describe(&e)))?;
    let mut stmt = conn
        .prepare("SELECT version, success, checksum FROM _sqlx_migrations ORDER BY version")
        .map_err(|e| describe(&e))?;
    let applied = stmt
        .query_map([], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, bool>(1)?,
                r.get::<_, Vec<u8>>(2)?,
            ))
        })
        .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
        .map_err(|e| format!("cannot read the applied migrations: {}", describe(&e)))?;
    for (version, success, checksum) in &applied {
        let Some(m) = MIGRATIONS.iter().find(|m| m.version == *version) else {
            return Err(format!(
                "the database has migration {version}, which this build does not know: \
                 it was used by a newer oz-server; run that version (or newer)"
            ));
        };
        if !success {
            return Err(format!(
                "migration {version} ({}) failed part way earlier; restore the database \
                 from a backup",
                m.description
            ));
        }
        if checksum.as_slice() != Sha384::digest(m.sql).as_slice() {
            return Err(format!(
                "migration {version} ({}) was applied from different SQL than this build's; \
                 the database belongs to another build of oz-server",
                m.description
            ));
        }
    }
    for m in MIGRATIONS {
        if applied.iter().any(|(v, _, _)| *v == m.version) {
            continue;
        }
        let started = std::time::Instant::now();
        conn.execute_batch(m.sql).map_err(|e| {
            format!(
                "migration {} ({}) failed: {}",
                m.version,
                m.description,
                describe(&e)
            )
        })?;
        let nanos = i64::try_from(started.elapsed().as_nanos()).unwrap_or(i64::MAX);
        conn.execute(
            "INSERT INTO _sqlx_migrations (version, description, success, checksum, \
             execution_time) VALUES (?1, ?2, 1, ?3, ?4)",
            rusqlite::params![
                m.version,
                m.description,
                Sha384::digest(m.sql).to_vec(),
                nanos
            ],
        )
        .map_err(|e| format!("cannot record migration {}: {}", m.version, describe(&e)))?;
        tracing::info!(
            version = m.version,
            description = m.description,
            "migrated the database"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_migration_file_is_embedded() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations/sqlite");
        let mut files: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".sql"))
            .collect();
        files.sort();
        assert_eq!(files, migration_files());
    }

    #[test]
    fn placeholders_bind_by_number() {
        let conn = Connection::open_in_memory().unwrap();
        let q = query("SELECT $2 || $1 || $2").bind("a").bind("b");
        let v: Option<String> = q.scalar(&conn, "test").unwrap();
        assert_eq!(v.as_deref(), Some("bab"));
        let q = query("SELECT $3").bind("a");
        let err = q.scalar::<String>(&conn, "test").unwrap_err();
        assert!(err.to_string().contains("test"), "{err}");
    }

    #[test]
    fn migrating_twice_applies_nothing_new_and_checks_checksums() {
        let conn = Connection::open_in_memory().unwrap();
        migrate(&conn).unwrap();
        migrate(&conn).unwrap();
        let n: i64 = conn
            .query_row("SELECT COUNT(*) FROM _sqlx_migrations", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, MIGRATIONS.len() as i64);
        conn.execute(
            "UPDATE _sqlx_migrations SET checksum = x'00' WHERE version = 2",
            [],
        )
        .unwrap();
        let err = migrate(&conn).unwrap_err();
        assert!(err.contains("migration 2 (logs)"), "{err}");
        conn.execute(
            "UPDATE _sqlx_migrations SET checksum = ?1 WHERE version = 2",
            [Sha384::digest(MIGRATIONS[1].sql).to_vec()],
        )
        .unwrap();
        migrate(&conn).unwrap();
        conn.execute(
            "INSERT INTO _sqlx_migrations (version, description, success, checksum, \
             execution_time) VALUES (99, 'future', 1, x'00', 0)",
            [],
        )
        .unwrap();
        let err = migrate(&conn).unwrap_err();
        assert!(err.contains("newer oz-server"), "{err}");
    }
}
