//! [`Catalog`] on SQLite: schedules, agents, environments, artifacts,
//! handoff attachments, follow-ups.

use async_trait::async_trait;
use rusqlite::{Connection, Row};
use serde_json::Value;

use super::db::{corrupt, get, query};
use super::{RUN_COLUMNS, SqliteStore, conflict_or, insert_run_on, run_from_row, to_json};
use crate::{
    Agent, Artifact, Catalog, Delivery, Environment, Firing, Followup, HandoffAttachment,
    NewFollowup, Result, Run, RunState, Schedule, StatusMessage, StoreError,
};

const SCHEDULE_COLUMNS: &str = "id, team_id, name, cron_schedule, enabled, prompt, agent_config, \
     agent_uid, metadata, mode, created_by, updated_by, created_at, updated_at, last_ran, \
     next_run, last_spawn_error";

const AGENT_COLUMNS: &str = "uid, team_id, name, spec, created_at, updated_at";

const ENVIRONMENT_COLUMNS: &str =
    "uid, team_id, config, creator, last_editor, created_at, last_updated";

const ARTIFACT_COLUMNS: &str = "uid, run_id, team_id, artifact_type, filename, filepath, \
     mime_type, description, title, size_bytes, created_at";

const HANDOFF_COLUMNS: &str =
    "id, run_id, execution_id, filename, mime_type, size_bytes, created_at";

const FOLLOWUP_COLUMNS: &str = "id, run_id, message, mode, created_at, delivery, execution";

fn json_col(row: &Row<'_>, col: &'static str) -> Result<Option<Value>> {
    let s: Option<String> = get(row, col, "decode row")?;
    s.map(|s| serde_json::from_str(&s))
        .transpose()
        .map_err(|e| corrupt(col, e))
}

fn opt_json(what: &'static str, v: &Option<Value>) -> Result<Option<String>> {
    v.as_ref().map(|v| to_json(what, v)).transpose()
}

fn size_from_db(n: i64) -> Result<u64> {
    u64::try_from(n).map_err(|_| corrupt("size_bytes", format!("negative value {n}")))
}

fn size_to_db(n: u64) -> Result<i64> {
    i64::try_from(n).map_err(|_| StoreError::Invalid(format!("size {n} is too large")))
}

fn schedule_from_row(row: &Row<'_>) -> Result<Schedule> {
    let op = "decode schedule";
    let metadata: String = get(row, "metadata", op)?;
    let enabled: i64 = get(row, "enabled", op)?;
    Ok(Schedule {
        id: get(row, "id", op)?,
        team_id: get(row, "team_id", op)?,
        name: get(row, "name", op)?,
        cron_schedule: get(row, "cron_schedule", op)?,
        enabled: enabled != 0,
        prompt: get(row, "prompt", op)?,
        agent_config: json_col(row, "agent_config")?,
        agent_uid: get(row, "agent_uid", op)?,
        metadata: serde_json::from_str(&metadata).map_err(|e| corrupt("schedule metadata", e))?,
        mode: get(row, "mode", op)?,
        created_by: json_col(row, "created_by")?,
        updated_by: json_col(row, "updated_by")?,
        created_at: get(row, "created_at", op)?,
        updated_at: get(row, "updated_at", op)?,
        last_ran: get(row, "last_ran", op)?,
        next_run: get(row, "next_run", op)?,
        last_spawn_error: get(row, "last_spawn_error", op)?,
    })
}

fn agent_from_row(row: &Row<'_>) -> Result<Agent> {
    let op = "decode agent";
    let spec: String = get(row, "spec", op)?;
    let spec = match serde_json::from_str::<Value>(&spec).map_err(|e| corrupt("agent spec", e))? {
        Value::Object(m) => m,
        _ => return Err(corrupt("agent spec", "not a JSON object")),
    };
    Ok(Agent {
        uid: get(row, "uid", op)?,
        team_id: get(row, "team_id", op)?,
        name: get(row, "name", op)?,
        spec,
        created_at: get(row, "created_at", op)?,
        updated_at: get(row, "updated_at", op)?,
    })
}

fn environment_from_row(row: &Row<'_>) -> Result<Environment> {
    let op = "decode environment";
    Ok(Environment {
        uid: get(row, "uid", op)?,
        team_id: get(row, "team_id", op)?,
        config: json_col(row, "config")?.unwrap_or(Value::Null),
        creator: json_col(row, "creator")?,
        last_editor: json_col(row, "last_editor")?,
        created_at: get(row, "created_at", op)?,
        last_updated: get(row, "last_updated", op)?,
    })
}

fn artifact_from_row(row: &Row<'_>) -> Result<Artifact> {
    let op = "decode artifact";
    Ok(Artifact {
        uid: get(row, "uid", op)?,
        run_id: get(row, "run_id", op)?,
        team_id: get(row, "team_id", op)?,
        artifact_type: get(row, "artifact_type", op)?,
        filename: get(row, "filename", op)?,
        filepath: get(row, "filepath", op)?,
        mime_type: get(row, "mime_type", op)?,
        description: get(row, "description", op)?,
        title: get(row, "title", op)?,
        size_bytes: size_from_db(get(row, "size_bytes", op)?)?,
        created_at: get(row, "created_at", op)?,
    })
}

fn handoff_from_row(row: &Row<'_>) -> Result<HandoffAttachment> {
    let op = "decode handoff attachment";
    Ok(HandoffAttachment {
        id: get(row, "id", op)?,
        run_id: get(row, "run_id", op)?,
        execution_id: get(row, "execution_id", op)?,
        filename: get(row, "filename", op)?,
        mime_type: get(row, "mime_type", op)?,
        size_bytes: size_from_db(get(row, "size_bytes", op)?)?,
        created_at: get(row, "created_at", op)?,
    })
}

fn followup_from_row(row: &Row<'_>) -> Result<Followup> {
    let op = "decode follow-up";
    let delivery: String = get(row, "delivery", op)?;
    let execution: Option<i64> = get(row, "execution", op)?;
    Ok(Followup {
        id: get(row, "id", op)?,
        run_id: get(row, "run_id", op)?,
        message: get(row, "message", op)?,
        mode: get(row, "mode", op)?,
        created_at: get(row, "created_at", op)?,
        delivery: Delivery::parse(&delivery)
            .ok_or_else(|| corrupt("follow-up delivery", format!("unknown {delivery:?}")))?,
        execution: execution
            .map(|n| u32::try_from(n).map_err(|_| corrupt("follow-up execution", n)))
            .transpose()?,
    })
}

fn run_on(conn: &Connection, run_id: &str) -> Result<Option<Run>> {
    query(format!("SELECT {RUN_COLUMNS} FROM runs WHERE run_id = $1"))
        .bind(run_id)
        .first(conn, "get run", run_from_row)
}

/// The prompt of execution `execution`: the run's prompt followed by every
/// follow-up given to an execution up to it, oldest first. A new execution
/// starts in a fresh workspace, so the agent needs the whole request.
fn compose_prompt(conn: &Connection, run: &Run, execution: u32) -> Result<Option<String>> {
    let messages: Vec<String> = query(
        "SELECT message FROM followups WHERE run_id = $1 AND execution IS NOT NULL \
         AND execution <= $2 ORDER BY created_at, id",
    )
    .bind(&run.run_id)
    .bind(i64::from(execution))
    .column(conn, "compose follow-up prompt")?;
    if messages.is_empty() {
        return Ok(None);
    }
    let mut prompt = run.prompt.clone();
    for (i, message) in messages.iter().enumerate() {
        // A markdown heading reads well to a model, and is a comment to a
        // shell (the runner's `command` harness runs the prompt as a script).
        prompt.push_str(&format!("\n\n## Follow-up {}\n{message}", i + 1));
    }
    Ok(Some(prompt))
}

/// `'SUCCEEDED', 'FAILED', …`: the terminal states for an `IN (…)`.
fn terminal_list() -> String {
    let terminal: Vec<String> = RunState::ALL
        .into_iter()
        .filter(|s| s.is_terminal())
        .map(|s| format!("'{}'", s.as_str()))
        .collect();
    terminal.join(", ")
}

/// Give every waiting follow-up of `run` to its next execution; returns that
/// execution's prompt.
fn assign_waiting(conn: &Connection, run: &Run) -> Result<Option<String>> {
    let next = run.executions + 1;
    query("UPDATE followups SET execution = $1 WHERE run_id = $2 AND execution IS NULL")
        .bind(i64::from(next))
        .bind(&run.run_id)
        .execute(conn, "assign follow-ups")?;
    compose_prompt(conn, run, next)
}

/// Give every waiting follow-up of an ended run to a new execution and
/// queue the run again. The caller holds a write transaction.
fn requeue_on(conn: &Connection, run: &Run, now: &str) -> Result<Option<Run>> {
    let prompt = assign_waiting(conn, run)?;
    let status = to_json(
        "run status message",
        &StatusMessage::info("queued again for a follow-up"),
    )?;
    // A new execution numbers its log lines from 1 again: continue after the
    // lines stored so far. The old execution is over: its id, holder and
    // token go, so that late frames of it (which carry its execution id) are
    // told apart.
    query(format!(
        "UPDATE runs SET state = 'QUEUED', execution_prompt = $1, pending_followups = 0, \
         ended_at = NULL, cancel_requested_at = NULL, holder = NULL, assigned_at = NULL, \
         execution_id = NULL, token_hash = NULL, queued_at = $3, \
         status_message = $2, log_last_seq = NULL, updated_at = $3, \
         log_seq_base = COALESCE((SELECT MAX(seq) FROM run_logs WHERE run_id = $4), 0) \
         WHERE run_id = $4 AND state IN ({}) RETURNING {RUN_COLUMNS}",
        terminal_list()
    ))
    .bind(prompt)
    .bind(status)
    .bind(now)
    .bind(&run.run_id)
    .first(conn, "queue run for follow-up", run_from_row)
}

/// Give every waiting follow-up of a QUEUED run to the execution about to
/// start. The caller holds a write transaction.
fn fold_on(conn: &Connection, run: &Run, now: &str) -> Result<Option<Run>> {
    let prompt = assign_waiting(conn, run)?;
    query(format!(
        "UPDATE runs SET execution_prompt = $1, pending_followups = 0, updated_at = $2 \
         WHERE run_id = $3 AND state = 'QUEUED' RETURNING {RUN_COLUMNS}"
    ))
    .bind(prompt)
    .bind(now)
    .bind(&run.run_id)
    .first(conn, "fold follow-ups", run_from_row)
}

/// How waiting follow-ups go to a run's next execution.
#[derive(Clone, Copy)]
enum Give {
    /// The run ended: queue it again for a new execution.
    Requeue,
    /// The run is queued: its next execution carries them.
    Fold,
}

impl SqliteStore {
    /// Give the run's waiting follow-ups to its next execution, in one
    /// transaction, if the run still has some and is in the state `how`
    /// needs (ended and not cancelled; or queued).
    fn give_followups(&self, run_id: &str, now: &str, how: Give) -> Result<Option<Run>> {
        let op = match how {
            Give::Requeue => "requeue for follow-ups",
            Give::Fold => "fold follow-ups",
        };
        self.write(op, |tx| {
            let Some(run) = run_on(tx, run_id)? else {
                return Ok(None);
            };
            let ready = match how {
                Give::Requeue => run.state.is_terminal() && run.cancel_requested_at.is_none(),
                Give::Fold => run.state == RunState::Queued,
            };
            if !ready || run.pending_followups == 0 {
                return Ok(None);
            }
            match how {
                Give::Requeue => requeue_on(tx, &run, now),
                Give::Fold => fold_on(tx, &run, now),
            }
        })
    }
}

#[async_trait]
impl Catalog for SqliteStore {
    async fn insert_schedule(&self, s: Schedule) -> Result<Schedule> {
        let what = format!("schedule {}", s.id);
        let q = query(format!(
            "INSERT INTO schedules ({SCHEDULE_COLUMNS}) VALUES \
             ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17) \
             RETURNING {SCHEDULE_COLUMNS}"
        ))
        .bind(s.id)
        .bind(s.team_id)
        .bind(s.name)
        .bind(s.cron_schedule)
        .bind(i64::from(s.enabled))
        .bind(s.prompt)
        .bind(opt_json("schedule agent_config", &s.agent_config)?)
        .bind(s.agent_uid)
        .bind(to_json("schedule metadata", &s.metadata)?)
        .bind(s.mode)
        .bind(opt_json("schedule created_by", &s.created_by)?)
        .bind(opt_json("schedule updated_by", &s.updated_by)?)
        .bind(s.created_at)
        .bind(s.updated_at)
        .bind(s.last_ran)
        .bind(s.next_run)
        .bind(s.last_spawn_error);
        self.main(|c| q.inserted(c, "insert schedule", what, schedule_from_row))
    }

    async fn get_schedule(&self, team_id: &str, id: &str) -> Result<Option<Schedule>> {
        let q = query(format!(
            "SELECT {SCHEDULE_COLUMNS} FROM schedules WHERE team_id = $1 AND id = $2"
        ))
        .bind(team_id)
        .bind(id);
        self.main(|c| q.first(c, "get schedule", schedule_from_row))
    }

    async fn list_schedules(&self, team_id: &str) -> Result<Vec<Schedule>> {
        let q = query(format!(
            "SELECT {SCHEDULE_COLUMNS} FROM schedules WHERE team_id = $1 ORDER BY name, id"
        ))
        .bind(team_id);
        self.read(move |c| q.all(c, "list schedules", schedule_from_row))
            .await
    }

    async fn update_schedule(&self, s: Schedule, keep_next_run: bool) -> Result<Option<Schedule>> {
        let q = query(format!(
            "UPDATE schedules SET name = $1, cron_schedule = $2, enabled = $3, prompt = $4, \
             agent_config = $5, agent_uid = $6, metadata = $7, mode = $8, updated_by = $9, \
             updated_at = $10, next_run = CASE WHEN $12 THEN next_run ELSE $11 END \
             WHERE team_id = $13 AND id = $14 RETURNING {SCHEDULE_COLUMNS}"
        ))
        .bind(s.name)
        .bind(s.cron_schedule)
        .bind(i64::from(s.enabled))
        .bind(s.prompt)
        .bind(opt_json("schedule agent_config", &s.agent_config)?)
        .bind(s.agent_uid)
        .bind(to_json("schedule metadata", &s.metadata)?)
        .bind(s.mode)
        .bind(opt_json("schedule updated_by", &s.updated_by)?)
        .bind(s.updated_at)
        .bind(s.next_run)
        .bind(keep_next_run)
        .bind(s.team_id)
        .bind(s.id);
        self.main(|c| q.first(c, "update schedule", schedule_from_row))
    }

    async fn delete_schedule(&self, team_id: &str, id: &str) -> Result<bool> {
        let q = query("DELETE FROM schedules WHERE team_id = $1 AND id = $2")
            .bind(team_id)
            .bind(id);
        Ok(self.main(|c| q.execute(c, "delete schedule"))? > 0)
    }

    async fn due_schedules(&self, now: &str, limit: u32) -> Result<Vec<Schedule>> {
        let q = query(format!(
            "SELECT {SCHEDULE_COLUMNS} FROM schedules \
             WHERE enabled = 1 AND next_run IS NOT NULL AND next_run <= $1 \
             ORDER BY next_run, id LIMIT $2"
        ))
        .bind(now)
        .bind(i64::from(limit));
        self.main(|c| q.all(c, "due schedules", schedule_from_row))
    }

    async fn next_due(&self) -> Result<Option<String>> {
        let q =
            query("SELECT MIN(next_run) FROM schedules WHERE enabled = 1 AND next_run IS NOT NULL");
        Ok(self.main(|c| q.scalar(c, "next due schedule"))?.flatten())
    }

    async fn fire_schedule(&self, f: Firing) -> Result<Option<Option<Run>>> {
        let op = "fire schedule";
        // The claim: only the replica that moves next_run from the value it
        // saw gets to create the run.
        let claim = query(
            "UPDATE schedules SET next_run = $1, last_ran = $2, last_spawn_error = $3 \
             WHERE id = $4 AND enabled = 1 AND next_run = $5",
        )
        .bind(f.next_run)
        .bind(f.last_ran)
        .bind(f.spawn_error)
        .bind(f.schedule_id)
        .bind(f.expected_next_run);
        let run = f.run;
        self.write(op, |tx| {
            if claim.execute(tx, op)? == 0 {
                return Ok(None);
            }
            Ok(Some(run.map(|run| insert_run_on(tx, run)).transpose()?))
        })
    }

    async fn insert_agent(&self, a: Agent) -> Result<Agent> {
        let what = format!("agent {}", a.uid);
        let q = query(format!(
            "INSERT INTO agents ({AGENT_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6) \
             RETURNING {AGENT_COLUMNS}"
        ))
        .bind(a.uid)
        .bind(a.team_id)
        .bind(a.name)
        .bind(to_json("agent spec", &a.spec)?)
        .bind(a.created_at)
        .bind(a.updated_at);
        self.main(|c| q.inserted(c, "insert agent", what, agent_from_row))
    }

    async fn get_agent(&self, team_id: &str, uid: &str) -> Result<Option<Agent>> {
        let q = query(format!(
            "SELECT {AGENT_COLUMNS} FROM agents WHERE team_id = $1 AND uid = $2"
        ))
        .bind(team_id)
        .bind(uid);
        self.main(|c| q.first(c, "get agent", agent_from_row))
    }

    async fn list_agents(&self, team_id: &str, factory_uid: Option<&str>) -> Result<Vec<Agent>> {
        let q = query(format!(
            "SELECT {AGENT_COLUMNS} FROM agents WHERE team_id = $1 \
             AND ($2 IS NULL OR json_extract(spec, '$.factory_uid') = $2) \
             ORDER BY created_at, uid"
        ))
        .bind(team_id)
        .bind(factory_uid);
        self.read(move |c| q.all(c, "list agents", agent_from_row))
            .await
    }

    async fn update_agent(&self, a: Agent) -> Result<Option<Agent>> {
        let q = query(format!(
            "UPDATE agents SET name = $1, spec = $2, updated_at = $3 \
             WHERE team_id = $4 AND uid = $5 RETURNING {AGENT_COLUMNS}"
        ))
        .bind(a.name)
        .bind(to_json("agent spec", &a.spec)?)
        .bind(a.updated_at)
        .bind(a.team_id)
        .bind(a.uid);
        self.main(|c| q.first(c, "update agent", agent_from_row))
    }

    async fn delete_agent(&self, team_id: &str, uid: &str) -> Result<bool> {
        let q = query("DELETE FROM agents WHERE team_id = $1 AND uid = $2")
            .bind(team_id)
            .bind(uid);
        Ok(self.main(|c| q.execute(c, "delete agent"))? > 0)
    }

    async fn insert_environment(&self, e: Environment) -> Result<Environment> {
        let what = format!("environment {}", e.uid);
        let q = query(format!(
            "INSERT INTO environments ({ENVIRONMENT_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7) \
             RETURNING {ENVIRONMENT_COLUMNS}"
        ))
        .bind(e.uid)
        .bind(e.team_id)
        .bind(to_json("environment config", &e.config)?)
        .bind(opt_json("environment creator", &e.creator)?)
        .bind(opt_json("environment last_editor", &e.last_editor)?)
        .bind(e.created_at)
        .bind(e.last_updated);
        self.main(|c| q.inserted(c, "insert environment", what, environment_from_row))
    }

    async fn get_environment(&self, team_id: &str, uid: &str) -> Result<Option<Environment>> {
        let q = query(format!(
            "SELECT {ENVIRONMENT_COLUMNS} FROM environments WHERE team_id = $1 AND uid = $2"
        ))
        .bind(team_id)
        .bind(uid);
        self.main(|c| q.first(c, "get environment", environment_from_row))
    }

    async fn list_environments(&self, team_id: &str) -> Result<Vec<Environment>> {
        let q = query(format!(
            "SELECT {ENVIRONMENT_COLUMNS} FROM environments WHERE team_id = $1 \
             ORDER BY last_updated DESC, uid"
        ))
        .bind(team_id);
        self.read(move |c| q.all(c, "list environments", environment_from_row))
            .await
    }

    async fn delete_environment(&self, team_id: &str, uid: &str) -> Result<bool> {
        let q = query("DELETE FROM environments WHERE team_id = $1 AND uid = $2")
            .bind(team_id)
            .bind(uid);
        Ok(self.main(|c| q.execute(c, "delete environment"))? > 0)
    }

    async fn last_run_in_environment(&self, team_id: &str, uid: &str) -> Result<Option<Run>> {
        // Read for every environment a list shows. SQLite would otherwise
        // walk the team's runs newest first until one is in the environment:
        // all of them for an environment not used lately.
        let q = query(format!(
            "SELECT {RUN_COLUMNS} FROM runs INDEXED BY runs_environment \
             WHERE environment_id = $1 AND team_id = $2 \
             ORDER BY created_at DESC, run_id DESC LIMIT 1"
        ))
        .bind(uid)
        .bind(team_id);
        self.read(move |c| q.first(c, "last run in environment", run_from_row))
            .await
    }

    async fn insert_artifact(
        &self,
        a: Artifact,
        content: Vec<u8>,
        entry: Value,
        now: &str,
    ) -> Result<Option<Run>> {
        let op = "insert artifact";
        let entry = query(format!(
            "UPDATE runs SET artifacts = json_insert(artifacts, '$[#]', json($1)), \
             updated_at = $2 WHERE run_id = $3 RETURNING {RUN_COLUMNS}"
        ))
        .bind(to_json("run artifact", &entry)?)
        .bind(now)
        .bind(&a.run_id);
        let what = format!("artifact {}", a.uid);
        let row = query(format!(
            "INSERT INTO artifacts ({ARTIFACT_COLUMNS}, content) VALUES \
             ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)"
        ))
        .bind(a.uid)
        .bind(a.run_id)
        .bind(a.team_id)
        .bind(a.artifact_type)
        .bind(a.filename)
        .bind(a.filepath)
        .bind(a.mime_type)
        .bind(a.description)
        .bind(a.title)
        .bind(size_to_db(a.size_bytes)?)
        .bind(a.created_at)
        .bind(content);
        self.write(op, |tx| {
            let Some(run) = entry.first(tx, op, run_from_row)? else {
                return Ok(None);
            };
            row.execute(tx, op).map_err(|e| conflict_or(e, what))?;
            Ok(Some(run))
        })
    }

    async fn get_artifact(&self, uid: &str) -> Result<Option<Artifact>> {
        let q = query(format!(
            "SELECT {ARTIFACT_COLUMNS} FROM artifacts WHERE uid = $1"
        ))
        .bind(uid);
        self.main(|c| q.first(c, "get artifact", artifact_from_row))
    }

    async fn artifact_content(&self, uid: &str) -> Result<Option<Vec<u8>>> {
        let q = query("SELECT content FROM artifacts WHERE uid = $1").bind(uid);
        self.read(move |c| q.scalar(c, "read artifact")).await
    }

    async fn insert_handoff(&self, h: HandoffAttachment, content: Vec<u8>) -> Result<()> {
        let what = format!("attachment {}", h.id);
        let q = query(format!(
            "INSERT INTO handoff_attachments ({HANDOFF_COLUMNS}, content) VALUES \
             ($1, $2, $3, $4, $5, $6, $7, $8)"
        ))
        .bind(h.id)
        .bind(h.run_id)
        .bind(h.execution_id)
        .bind(h.filename)
        .bind(h.mime_type)
        .bind(size_to_db(h.size_bytes)?)
        .bind(h.created_at)
        .bind(content);
        self.main(|c| q.execute(c, "insert handoff attachment"))
            .map_err(|e| conflict_or(e, what))?;
        Ok(())
    }

    async fn list_handoff(&self, run_id: &str) -> Result<Vec<HandoffAttachment>> {
        let q = query(format!(
            "SELECT {HANDOFF_COLUMNS} FROM handoff_attachments \
             WHERE run_id = $1 ORDER BY created_at, id"
        ))
        .bind(run_id);
        self.read(move |c| q.all(c, "list handoff attachments", handoff_from_row))
            .await
    }

    async fn handoff_content(&self, run_id: &str, id: &str) -> Result<Option<Vec<u8>>> {
        let q = query("SELECT content FROM handoff_attachments WHERE run_id = $1 AND id = $2")
            .bind(run_id)
            .bind(id);
        self.read(move |c| q.scalar(c, "read handoff attachment"))
            .await
    }

    async fn add_followup(&self, f: NewFollowup) -> Result<Option<(Followup, Run)>> {
        let op = "add follow-up";
        self.write(op, |tx| {
            let Some(run) = run_on(tx, &f.run_id)? else {
                return Ok(None);
            };
            // Ended: a new execution now. Queued: the execution about to
            // start carries it. Held by a worker: it waits for that
            // execution to end.
            let (delivery, execution) = match run.state {
                s if s.is_terminal() => (Delivery::NewExecution, Some(run.executions + 1)),
                RunState::Queued => (Delivery::NextExecution, Some(run.executions + 1)),
                _ => (Delivery::NextExecution, None),
            };
            let followup = query(format!(
                "INSERT INTO followups ({FOLLOWUP_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7) \
                 RETURNING {FOLLOWUP_COLUMNS}"
            ))
            .bind(&f.id)
            .bind(&f.run_id)
            .bind(&f.message)
            .bind(f.mode.clone())
            .bind(&f.created_at)
            .bind(delivery.as_str())
            .bind(execution.map(i64::from))
            .inserted(tx, op, format!("follow-up {}", f.id), followup_from_row)?;
            let updated = match (run.state, execution) {
                (s, _) if s.is_terminal() => requeue_on(tx, &run, &f.created_at)?,
                // Also those that came while a worker held the run before it
                // went back to the queue unstarted.
                (_, Some(_)) => fold_on(tx, &run, &f.created_at)?,
                (_, None) => query(format!(
                    "UPDATE runs SET pending_followups = pending_followups + 1, updated_at = $1 \
                     WHERE run_id = $2 RETURNING {RUN_COLUMNS}"
                ))
                .bind(&f.created_at)
                .bind(&f.run_id)
                .first(tx, op, run_from_row)?,
            };
            let run = updated.ok_or_else(|| corrupt("run", "vanished inside a transaction"))?;
            Ok(Some((followup, run)))
        })
    }

    async fn requeue_for_followups(&self, run_id: &str, now: &str) -> Result<Option<Run>> {
        self.give_followups(run_id, now, Give::Requeue)
    }

    async fn fold_followups(&self, run_id: &str, now: &str) -> Result<Option<Run>> {
        self.give_followups(run_id, now, Give::Fold)
    }

    async fn runs_awaiting_followups(&self) -> Result<Vec<String>> {
        // The hub runs this every second. Left to itself SQLite picks
        // `runs_queue` for the state list, which visits every finished run
        // ever kept: the partial index holds only runs with follow-ups.
        let q = query(format!(
            "SELECT run_id FROM runs INDEXED BY runs_pending_followups \
             WHERE pending_followups > 0 \
             AND cancel_requested_at IS NULL AND state IN ({})",
            terminal_list()
        ));
        self.read(move |c| q.column(c, "runs awaiting follow-ups"))
            .await
    }

    async fn list_followups(&self, run_id: &str) -> Result<Vec<Followup>> {
        let q = query(format!(
            "SELECT {FOLLOWUP_COLUMNS} FROM followups WHERE run_id = $1 ORDER BY created_at, id"
        ))
        .bind(run_id);
        self.read(move |c| q.all(c, "list follow-ups", followup_from_row))
            .await
    }

    async fn server_secret(&self, name: &str, candidate: &[u8]) -> Result<Vec<u8>> {
        let create = query("INSERT OR IGNORE INTO server_secrets (name, value) VALUES ($1, $2)")
            .bind(name)
            .bind(candidate.to_vec());
        let read = query("SELECT value FROM server_secrets WHERE name = $1").bind(name);
        let op = "create server secret";
        self.write(op, |tx| {
            create.execute(tx, op)?;
            read.scalar(tx, op)?
                .ok_or_else(|| corrupt("server secret", format!("{name} vanished")))
        })
    }

    async fn run_by_execution(&self, execution_id: &str) -> Result<Option<Run>> {
        let q = query(format!(
            "SELECT {RUN_COLUMNS} FROM runs WHERE execution_id = $1 LIMIT 1"
        ))
        .bind(execution_id);
        self.main(|c| q.first(c, "run by execution", run_from_row))
    }

    async fn run_by_conversation(&self, conversation_id: &str) -> Result<Option<Run>> {
        let q = query(format!(
            "SELECT {RUN_COLUMNS} FROM runs WHERE conversation_id = $1 \
             ORDER BY created_at DESC, run_id DESC LIMIT 1"
        ))
        .bind(conversation_id);
        self.main(|c| q.first(c, "run by conversation", run_from_row))
    }
}
