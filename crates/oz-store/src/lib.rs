//! Storage of the Oz control plane.
//!
//! The server talks only to the [`Store`] trait; [`SqliteStore`] is the
//! embedded implementation (WAL, one file in the data directory). A
//! PostgreSQL implementation can be added beside it without touching the API
//! code.
//!
//! Every mutating call is one transaction that is committed before it
//! returns, so the caller may acknowledge or announce the change at once.
//! State changes are compare-and-set ([`Store::transition`]): a duplicate or
//! late event finds the run in another state and changes nothing.
#![forbid(unsafe_code)]

use std::collections::BTreeMap;

use async_trait::async_trait;
use chrono::{DateTime, SecondsFormat, Utc};
pub use oz_protocol::api::{RunState, StatusMessage};
use serde::{Deserialize, Serialize};
use serde_json::Value;

mod catalog;
mod logs;
mod sqlite;
pub use catalog::{
    Agent, Artifact, Catalog, Delivery, Environment, Firing, Followup, HandoffAttachment,
    NewFollowup, Schedule,
};
pub use logs::{InvalidLogLine, LogQuery, LogRecord};
pub use oz_protocol::logs::{LogLine, LogPhase, LogStream};
pub use sqlite::SqliteStore;

/// Timestamps are stored as fixed-width RFC 3339 UTC strings with
/// microseconds, so that text order is time order.
pub fn ts(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, true)
}

pub fn parse_ts(s: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error during {op}: {source}")]
    Db {
        op: &'static str,
        #[source]
        source: rusqlite::Error,
    },
    #[error("the database is closed (the server is shutting down)")]
    Closed,
    #[error("cannot open the database at {location}: {message}")]
    Open { location: String, message: String },
    #[error("database migration failed: {0}")]
    Migrate(String),
    #[error("stored data is corrupt ({what}): {message}")]
    Corrupt { what: &'static str, message: String },
    #[error("{0} already exists")]
    Conflict(String),
    #[error("invalid input: {0}")]
    Invalid(String),
}

pub type Result<T> = std::result::Result<T, StoreError>;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Team {
    pub id: String,
    pub name: String,
    pub created_at: String,
}

/// What a key may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyKind {
    /// Everything a team key can do, plus managing keys.
    Admin,
    /// Runs and the rest of the REST API.
    Team,
    /// Only the worker WebSocket.
    Worker,
}

impl KeyKind {
    pub fn as_str(self) -> &'static str {
        match self {
            KeyKind::Admin => "admin",
            KeyKind::Team => "team",
            KeyKind::Worker => "worker",
        }
    }

    pub fn parse(s: &str) -> Option<KeyKind> {
        match s {
            "admin" => Some(KeyKind::Admin),
            "team" => Some(KeyKind::Team),
            "worker" => Some(KeyKind::Worker),
            _ => None,
        }
    }
}

/// A stored API key. The secret itself is never stored, only its SHA-256.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiKey {
    pub id: String,
    pub team_id: String,
    pub name: String,
    pub kind: KeyKind,
    /// The first characters of the key, for people to recognise it.
    pub prefix: String,
    pub created_at: String,
    pub last_used_at: Option<String>,
    pub revoked_at: Option<String>,
}

#[derive(Debug, Clone)]
pub struct NewApiKey {
    pub id: String,
    pub team_id: String,
    pub name: String,
    pub kind: KeyKind,
    pub prefix: String,
    /// Lower-case hex SHA-256 of the full key.
    pub hash: String,
    pub created_at: String,
}

/// A run as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct Run {
    pub run_id: String,
    pub team_id: String,
    pub state: RunState,
    pub prompt: String,
    pub title: String,
    /// The resolved `AmbientAgentConfig` as given (plus defaults applied).
    pub config: Value,
    pub metadata: BTreeMap<String, String>,
    pub source: String,
    pub mode: Option<String>,
    /// Worker id the run is routed to (`config.worker_host` or the default).
    pub worker_host: String,
    /// Denormalised for filters: `config.name`, `config.model_id`,
    /// `config.environment_id`, the skill spec.
    pub name: Option<String>,
    pub model_id: Option<String>,
    pub environment_id: Option<String>,
    pub skill_spec: Option<String>,
    pub schedule_id: Option<String>,
    pub created_at: String,
    pub updated_at: String,
    pub started_at: Option<String>,
    pub ended_at: Option<String>,
    pub status_message: Option<StatusMessage>,
    /// Execution id of the current (or last) assignment.
    pub execution_id: Option<String>,
    /// Connection that holds the run, while it is PENDING/CLAIMED/INPROGRESS.
    pub holder: Option<String>,
    /// When the run was last handed to a worker.
    pub assigned_at: Option<String>,
    pub cancel_requested_at: Option<String>,
    /// SHA-256 (hex) of the run-scoped token: set when a worker is given the
    /// run, cleared when it is queued again or ends.
    pub token_hash: Option<String>,
    pub artifacts: Vec<Value>,
    /// Seq of the last log line, from the worker's `log_end`; `None` until
    /// then (and for workers without the `logs` extension).
    pub log_last_seq: Option<u64>,
    /// Id of the key that created the run and its `UserProfile` snapshot.
    pub creator_id: Option<String>,
    pub creator: Option<Value>,
    /// Agent identity executing the run, and its `UserProfile` snapshot.
    pub agent_uid: Option<String>,
    pub executor: Option<Value>,
    pub parent_run_id: Option<String>,
    pub conversation_id: Option<String>,
    /// `{cron_schedule, schedule_id, schedule_name}` for scheduled runs.
    pub schedule: Option<Value>,
    /// Prompt of the current execution when follow-ups came in.
    pub execution_prompt: Option<String>,
    /// Follow-ups waiting for the current execution to end.
    pub pending_followups: u32,
    /// Executions so far (1 after the first assignment).
    pub executions: u32,
    /// Added to the worker's log seqs of the current execution.
    pub log_seq_base: u64,
    /// When the run last entered the queue for a new execution (creation or
    /// a follow-up); the queue timeout counts from here.
    pub queued_at: String,
}

impl Run {
    /// What the agent of the current execution is asked to do.
    pub fn current_prompt(&self) -> &str {
        self.execution_prompt.as_deref().unwrap_or(&self.prompt)
    }
}

/// Fields of a new run; it starts QUEUED, with no run token (a token exists
/// only while a worker holds the run: a random one per queued run would
/// put an entry at a random place in the token index for every run waiting,
/// and each assignment would rewrite one).
#[derive(Debug, Clone, Default)]
pub struct NewRun {
    pub run_id: String,
    pub team_id: String,
    pub prompt: String,
    pub title: String,
    pub config: Value,
    pub metadata: BTreeMap<String, String>,
    pub source: String,
    pub mode: Option<String>,
    pub worker_host: String,
    pub name: Option<String>,
    pub model_id: Option<String>,
    pub environment_id: Option<String>,
    pub skill_spec: Option<String>,
    pub schedule_id: Option<String>,
    pub status_message: Option<StatusMessage>,
    pub created_at: String,
    pub creator_id: Option<String>,
    pub creator: Option<Value>,
    pub agent_uid: Option<String>,
    pub executor: Option<Value>,
    pub parent_run_id: Option<String>,
    pub conversation_id: Option<String>,
    pub schedule: Option<Value>,
}

/// Changes applied together with a state transition. `None` leaves a field
/// as it is; `Some(None)` clears it.
#[derive(Debug, Clone, Default)]
pub struct RunPatch {
    pub status_message: Option<Option<StatusMessage>>,
    pub execution_id: Option<Option<String>>,
    pub holder: Option<Option<String>>,
    pub assigned_at: Option<Option<String>>,
    pub started_at: Option<Option<String>>,
    pub ended_at: Option<Option<String>>,
    pub cancel_requested_at: Option<Option<String>>,
    pub token_hash: Option<Option<String>>,
    /// Count a new execution (an assignment).
    pub new_execution: bool,
    /// Where the run's log ends (the worker's `log_end`, in the run's
    /// numbering), when it arrives with the change.
    pub log_last_seq: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SortBy {
    #[default]
    UpdatedAt,
    CreatedAt,
    Title,
    /// By skill spec; runs without one come last.
    Agent,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SortOrder {
    Asc,
    #[default]
    Desc,
}

/// Keyset position: the sort value and the run id of the last row seen.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cursor {
    pub value: String,
    pub run_id: String,
}

/// The keyset value of `run` under `sort`: the caller builds the next page's
/// [`Cursor`] from the last row it returns, as
/// `Cursor { value: cursor_value(last, sort), run_id: last.run_id }`.
///
/// For [`SortBy::Agent`] the value encodes whether the run has a skill spec:
/// `"s:" + skill_spec`, or `"-"` for a run without one. Any value that does
/// not start with `s:` is read back as "no skill spec".
pub fn cursor_value(run: &Run, sort: SortBy) -> String {
    match sort {
        SortBy::UpdatedAt => run.updated_at.clone(),
        SortBy::CreatedAt => run.created_at.clone(),
        SortBy::Title => run.title.clone(),
        SortBy::Agent => match &run.skill_spec {
            Some(spec) => format!("{AGENT_CURSOR_PREFIX}{spec}"),
            None => AGENT_CURSOR_NONE.to_owned(),
        },
    }
}

const AGENT_CURSOR_PREFIX: &str = "s:";
const AGENT_CURSOR_NONE: &str = "-";

/// The skill spec encoded in an agent-sort cursor value (see [`cursor_value`]).
pub fn agent_cursor_skill(value: &str) -> Option<&str> {
    value.strip_prefix(AGENT_CURSOR_PREFIX)
}

/// Filters of `GET /agent/runs`. Empty vectors and `None` mean "any".
#[derive(Debug, Clone, Default)]
pub struct RunQuery {
    pub team_id: String,
    /// Rows to return (the caller asks for one more to learn has_next).
    pub limit: u32,
    pub after: Option<Cursor>,
    pub states: Vec<RunState>,
    pub source: Option<String>,
    pub created_after: Option<String>,
    pub created_before: Option<String>,
    pub updated_after: Option<String>,
    pub name: Option<String>,
    /// Case-insensitive substring over title, prompt and skill spec.
    pub q: Option<String>,
    pub model_id: Option<String>,
    /// `Some(None)` matches runs without an environment.
    pub environment_id: Option<Option<String>>,
    pub schedule_id: Option<String>,
    pub skill_spec: Option<String>,
    pub worker_host: Option<String>,
    /// Key id of the creator.
    pub creator: Option<String>,
    /// Agent uid, or key id for runs without an agent.
    pub executor: Option<String>,
    /// Runs with an artifact of this type.
    pub artifact_type: Option<String>,
    /// Runs descending from this run (children, grandchildren, …).
    pub ancestor_run_id: Option<String>,
    /// Runs executed by an agent of this factory.
    pub factory_uid: Option<String>,
    /// Exact matches, all must hold.
    pub metadata: Vec<(String, String)>,
    pub sort_by: SortBy,
    pub sort_order: SortOrder,
}

#[async_trait]
pub trait Store: Catalog + Send + Sync + 'static {
    // Teams and keys.
    async fn create_team(&self, id: &str, name: &str, now: &str) -> Result<Team>;
    async fn first_team(&self) -> Result<Option<Team>>;
    async fn get_team(&self, id: &str) -> Result<Option<Team>>;
    async fn insert_api_key(&self, key: NewApiKey) -> Result<ApiKey>;
    /// A key that is not revoked, by the SHA-256 of its secret.
    async fn find_api_key(&self, hash: &str) -> Result<Option<ApiKey>>;
    async fn list_api_keys(&self, team_id: &str) -> Result<Vec<ApiKey>>;
    /// Returns false when no such live key exists in the team.
    async fn revoke_api_key(&self, team_id: &str, id: &str, now: &str) -> Result<bool>;
    async fn touch_api_key(&self, id: &str, now: &str) -> Result<()>;

    // Runs.
    async fn insert_run(&self, run: NewRun) -> Result<Run>;
    async fn get_run(&self, run_id: &str) -> Result<Option<Run>>;
    async fn list_runs(&self, q: &RunQuery) -> Result<Vec<Run>>;
    /// QUEUED runs queued before `queued_before` (a timestamp), longest
    /// queued first (by `queued_at`).
    async fn queued_runs(&self, queued_before: &str, limit: u32) -> Result<Vec<Run>>;
    /// The (team, worker host) pairs that have QUEUED runs.
    async fn queued_hosts(&self) -> Result<Vec<(String, String)>>;
    /// Runs in PENDING, CLAIMED or INPROGRESS.
    async fn active_runs(&self) -> Result<Vec<Run>>;
    /// The live run whose run-scoped token has this hash.
    async fn find_run_by_token(&self, token_hash: &str) -> Result<Option<Run>>;
    /// The dispatcher's step: move the oldest QUEUED run of (team, worker
    /// host) (by `created_at`, then `run_id`) to PENDING, applying `patch`,
    /// in one transaction. Returns it, or `None` when none is queued.
    /// Equivalent to [`Store::list_runs`] of one run and a
    /// [`Store::transition`] from QUEUED, without the read in between.
    async fn assign_next(
        &self,
        team_id: &str,
        worker_host: &str,
        patch: RunPatch,
        now: &str,
    ) -> Result<Option<Run>>;
    /// Move a run to `to` if its state is one of `from`, applying `patch`
    /// and setting `updated_at = now`, in one transaction. Returns the new
    /// run, or `None` when the run is missing or in another state.
    async fn transition(
        &self,
        run_id: &str,
        from: &[RunState],
        to: RunState,
        patch: RunPatch,
        now: &str,
    ) -> Result<Option<Run>>;
    /// Apply `patch` without changing the state, if the state is one of `in_states`.
    async fn patch_run(
        &self,
        run_id: &str,
        in_states: &[RunState],
        patch: RunPatch,
        now: &str,
    ) -> Result<Option<Run>>;
    /// Append an artifact to a run.
    async fn add_artifact(&self, run_id: &str, artifact: Value, now: &str) -> Result<Option<Run>>;

    // Logs (extension `logs`).
    /// Store lines of a run in one transaction; a `(run_id, seq)` already
    /// stored is left as it is. Returns how many rows were new. Every seq
    /// must be from 1 to `i64::MAX` (else [`StoreError::Invalid`], nothing
    /// stored); the run must exist.
    async fn append_logs(&self, run_id: &str, lines: &[LogRecord]) -> Result<u64>;
    /// Lines after `q.after_seq`, in seq order, at most `q.limit`.
    async fn read_logs(&self, q: &LogQuery) -> Result<Vec<LogRecord>>;
    /// The highest stored seq of a run, `None` without lines.
    async fn max_log_seq(&self, run_id: &str) -> Result<Option<u64>>;
    /// How many lines with a seq up to `seq` (inclusive) are stored.
    async fn count_logs_up_to(&self, run_id: &str, seq: u64) -> Result<u64>;
    /// Record the seq of the run's last line. Returns false when the run
    /// does not exist.
    async fn set_log_end(&self, run_id: &str, last_seq: u64) -> Result<bool>;
    /// Delete the lines of every run that ended before `ts` (a stored
    /// timestamp). Returns how many lines were deleted.
    async fn delete_logs_ended_before(&self, ts: &str) -> Result<u64>;
}
