//! [`Catalog`] on SQLite: schedules, agents, environments, artifacts,
//! handoff attachments, follow-ups.

use async_trait::async_trait;
use serde_json::Value;
use sqlx::sqlite::{SqliteConnection, SqliteRow};
use sqlx::{AssertSqlSafe, Row};

use super::{RUN_COLUMNS, SqliteStore, corrupt, db, insert_run_on, run_from_row, to_json};
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

fn json_col(row: &SqliteRow, col: &'static str) -> Result<Option<Value>> {
    let s: Option<String> = row.try_get(col).map_err(db("decode row"))?;
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

fn schedule_from_row(row: &SqliteRow) -> Result<Schedule> {
    let op = "decode schedule";
    let metadata: String = row.try_get("metadata").map_err(db(op))?;
    let enabled: i64 = row.try_get("enabled").map_err(db(op))?;
    Ok(Schedule {
        id: row.try_get("id").map_err(db(op))?,
        team_id: row.try_get("team_id").map_err(db(op))?,
        name: row.try_get("name").map_err(db(op))?,
        cron_schedule: row.try_get("cron_schedule").map_err(db(op))?,
        enabled: enabled != 0,
        prompt: row.try_get("prompt").map_err(db(op))?,
        agent_config: json_col(row, "agent_config")?,
        agent_uid: row.try_get("agent_uid").map_err(db(op))?,
        metadata: serde_json::from_str(&metadata).map_err(|e| corrupt("schedule metadata", e))?,
        mode: row.try_get("mode").map_err(db(op))?,
        created_by: json_col(row, "created_by")?,
        updated_by: json_col(row, "updated_by")?,
        created_at: row.try_get("created_at").map_err(db(op))?,
        updated_at: row.try_get("updated_at").map_err(db(op))?,
        last_ran: row.try_get("last_ran").map_err(db(op))?,
        next_run: row.try_get("next_run").map_err(db(op))?,
        last_spawn_error: row.try_get("last_spawn_error").map_err(db(op))?,
    })
}

fn agent_from_row(row: &SqliteRow) -> Result<Agent> {
    let op = "decode agent";
    let spec: String = row.try_get("spec").map_err(db(op))?;
    let spec = match serde_json::from_str::<Value>(&spec).map_err(|e| corrupt("agent spec", e))? {
        Value::Object(m) => m,
        _ => return Err(corrupt("agent spec", "not a JSON object")),
    };
    Ok(Agent {
        uid: row.try_get("uid").map_err(db(op))?,
        team_id: row.try_get("team_id").map_err(db(op))?,
        name: row.try_get("name").map_err(db(op))?,
        spec,
        created_at: row.try_get("created_at").map_err(db(op))?,
        updated_at: row.try_get("updated_at").map_err(db(op))?,
    })
}

fn environment_from_row(row: &SqliteRow) -> Result<Environment> {
    let op = "decode environment";
    Ok(Environment {
        uid: row.try_get("uid").map_err(db(op))?,
        team_id: row.try_get("team_id").map_err(db(op))?,
        config: json_col(row, "config")?.unwrap_or(Value::Null),
        creator: json_col(row, "creator")?,
        last_editor: json_col(row, "last_editor")?,
        created_at: row.try_get("created_at").map_err(db(op))?,
        last_updated: row.try_get("last_updated").map_err(db(op))?,
    })
}

fn artifact_from_row(row: &SqliteRow) -> Result<Artifact> {
    let op = "decode artifact";
    Ok(Artifact {
        uid: row.try_get("uid").map_err(db(op))?,
        run_id: row.try_get("run_id").map_err(db(op))?,
        team_id: row.try_get("team_id").map_err(db(op))?,
        artifact_type: row.try_get("artifact_type").map_err(db(op))?,
        filename: row.try_get("filename").map_err(db(op))?,
        filepath: row.try_get("filepath").map_err(db(op))?,
        mime_type: row.try_get("mime_type").map_err(db(op))?,
        description: row.try_get("description").map_err(db(op))?,
        title: row.try_get("title").map_err(db(op))?,
        size_bytes: size_from_db(row.try_get("size_bytes").map_err(db(op))?)?,
        created_at: row.try_get("created_at").map_err(db(op))?,
    })
}

fn handoff_from_row(row: &SqliteRow) -> Result<HandoffAttachment> {
    let op = "decode handoff attachment";
    Ok(HandoffAttachment {
        id: row.try_get("id").map_err(db(op))?,
        run_id: row.try_get("run_id").map_err(db(op))?,
        execution_id: row.try_get("execution_id").map_err(db(op))?,
        filename: row.try_get("filename").map_err(db(op))?,
        mime_type: row.try_get("mime_type").map_err(db(op))?,
        size_bytes: size_from_db(row.try_get("size_bytes").map_err(db(op))?)?,
        created_at: row.try_get("created_at").map_err(db(op))?,
    })
}

fn followup_from_row(row: &SqliteRow) -> Result<Followup> {
    let op = "decode follow-up";
    let delivery: String = row.try_get("delivery").map_err(db(op))?;
    let execution: Option<i64> = row.try_get("execution").map_err(db(op))?;
    Ok(Followup {
        id: row.try_get("id").map_err(db(op))?,
        run_id: row.try_get("run_id").map_err(db(op))?,
        message: row.try_get("message").map_err(db(op))?,
        mode: row.try_get("mode").map_err(db(op))?,
        created_at: row.try_get("created_at").map_err(db(op))?,
        delivery: Delivery::parse(&delivery)
            .ok_or_else(|| corrupt("follow-up delivery", format!("unknown {delivery:?}")))?,
        execution: execution
            .map(|n| u32::try_from(n).map_err(|_| corrupt("follow-up execution", n)))
            .transpose()?,
    })
}

async fn run_on(conn: &mut SqliteConnection, run_id: &str) -> Result<Option<Run>> {
    let sql = format!("SELECT {RUN_COLUMNS} FROM runs WHERE run_id = $1");
    let rows = sqlx::query(AssertSqlSafe(sql))
        .bind(run_id.to_owned())
        .fetch_all(&mut *conn)
        .await
        .map_err(db("get run"))?;
    rows.first().map(run_from_row).transpose()
}

/// The prompt of execution `execution`: the run's prompt followed by every
/// follow-up given to an execution up to it, oldest first. A new execution
/// starts in a fresh workspace, so the agent needs the whole request.
async fn compose_prompt(
    conn: &mut SqliteConnection,
    run: &Run,
    execution: u32,
) -> Result<Option<String>> {
    let rows = sqlx::query(
        "SELECT message FROM followups WHERE run_id = $1 AND execution IS NOT NULL \
         AND execution <= $2 ORDER BY created_at, id",
    )
    .bind(run.run_id.clone())
    .bind(i64::from(execution))
    .fetch_all(&mut *conn)
    .await
    .map_err(db("compose follow-up prompt"))?;
    if rows.is_empty() {
        return Ok(None);
    }
    let mut prompt = run.prompt.clone();
    for (i, row) in rows.iter().enumerate() {
        let message: String = row.try_get("message").map_err(db("decode follow-up"))?;
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
async fn assign_waiting(conn: &mut SqliteConnection, run: &Run) -> Result<Option<String>> {
    let next = run.executions + 1;
    sqlx::query("UPDATE followups SET execution = $1 WHERE run_id = $2 AND execution IS NULL")
        .bind(i64::from(next))
        .bind(run.run_id.clone())
        .execute(&mut *conn)
        .await
        .map_err(db("assign follow-ups"))?;
    compose_prompt(conn, run, next).await
}

/// Give every waiting follow-up of an ended run to a new execution and
/// queue the run again. The caller holds a write transaction.
async fn requeue_on(conn: &mut SqliteConnection, run: &Run, now: &str) -> Result<Option<Run>> {
    let prompt = assign_waiting(conn, run).await?;
    let status = to_json(
        "run status message",
        &StatusMessage::info("queued again for a follow-up"),
    )?;
    // A new execution numbers its log lines from 1 again: continue after the
    // lines stored so far. The old execution is over: its id, holder and
    // token go, so that late frames of it (which carry its execution id) are
    // told apart.
    let sql = format!(
        "UPDATE runs SET state = 'QUEUED', execution_prompt = $1, pending_followups = 0, \
         ended_at = NULL, cancel_requested_at = NULL, holder = NULL, assigned_at = NULL, \
         execution_id = NULL, token_hash = NULL, queued_at = $3, \
         status_message = $2, log_last_seq = NULL, updated_at = $3, \
         log_seq_base = COALESCE((SELECT MAX(seq) FROM run_logs WHERE run_id = $4), 0) \
         WHERE run_id = $4 AND state IN ({}) RETURNING {RUN_COLUMNS}",
        terminal_list()
    );
    let rows = sqlx::query(AssertSqlSafe(sql))
        .bind(prompt)
        .bind(status)
        .bind(now.to_owned())
        .bind(run.run_id.clone())
        .fetch_all(&mut *conn)
        .await
        .map_err(db("queue run for follow-up"))?;
    rows.first().map(run_from_row).transpose()
}

/// Give every waiting follow-up of a QUEUED run to the execution about to
/// start. The caller holds a write transaction.
async fn fold_on(conn: &mut SqliteConnection, run: &Run, now: &str) -> Result<Option<Run>> {
    let prompt = assign_waiting(conn, run).await?;
    let sql = format!(
        "UPDATE runs SET execution_prompt = $1, pending_followups = 0, updated_at = $2 \
         WHERE run_id = $3 AND state = 'QUEUED' RETURNING {RUN_COLUMNS}"
    );
    let rows = sqlx::query(AssertSqlSafe(sql))
        .bind(prompt)
        .bind(now.to_owned())
        .bind(run.run_id.clone())
        .fetch_all(&mut *conn)
        .await
        .map_err(db("fold follow-ups"))?;
    rows.first().map(run_from_row).transpose()
}

fn conflict_or(op: &'static str, what: String) -> impl FnOnce(sqlx::Error) -> StoreError {
    move |e| {
        if super::is_unique_violation(&e) {
            StoreError::Conflict(what)
        } else {
            db(op)(e)
        }
    }
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
    async fn give_followups(&self, run_id: &str, now: &str, how: Give) -> Result<Option<Run>> {
        let op = match how {
            Give::Requeue => "requeue for follow-ups",
            Give::Fold => "fold follow-ups",
        };
        let mut tx = self.write_tx(op).await?;
        let Some(run) = run_on(&mut tx, run_id).await? else {
            return Ok(None);
        };
        let ready = match how {
            Give::Requeue => run.state.is_terminal() && run.cancel_requested_at.is_none(),
            Give::Fold => run.state == RunState::Queued,
        };
        if !ready || run.pending_followups == 0 {
            return Ok(None);
        }
        let run = match how {
            Give::Requeue => requeue_on(&mut tx, &run, now).await?,
            Give::Fold => fold_on(&mut tx, &run, now).await?,
        };
        tx.commit().await.map_err(db(op))?;
        Ok(run)
    }
}

#[async_trait]
impl Catalog for SqliteStore {
    async fn insert_schedule(&self, s: Schedule) -> Result<Schedule> {
        let sql = format!(
            "INSERT INTO schedules ({SCHEDULE_COLUMNS}) VALUES \
             ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17) \
             RETURNING {SCHEDULE_COLUMNS}"
        );
        let rows = sqlx::query(AssertSqlSafe(sql))
            .bind(s.id.clone())
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
            .bind(s.last_spawn_error)
            .fetch_all(&self.pool)
            .await
            .map_err(conflict_or("insert schedule", format!("schedule {}", s.id)))?;
        schedule_from_row(
            rows.first()
                .ok_or_else(|| corrupt("schedule", "insert returned no row"))?,
        )
    }

    async fn get_schedule(&self, team_id: &str, id: &str) -> Result<Option<Schedule>> {
        let sql =
            format!("SELECT {SCHEDULE_COLUMNS} FROM schedules WHERE team_id = $1 AND id = $2");
        let rows = sqlx::query(AssertSqlSafe(sql))
            .bind(team_id.to_owned())
            .bind(id.to_owned())
            .fetch_all(&self.pool)
            .await
            .map_err(db("get schedule"))?;
        rows.first().map(schedule_from_row).transpose()
    }

    async fn list_schedules(&self, team_id: &str) -> Result<Vec<Schedule>> {
        let sql = format!(
            "SELECT {SCHEDULE_COLUMNS} FROM schedules WHERE team_id = $1 ORDER BY name, id"
        );
        let rows = sqlx::query(AssertSqlSafe(sql))
            .bind(team_id.to_owned())
            .fetch_all(&self.readers)
            .await
            .map_err(db("list schedules"))?;
        rows.iter().map(schedule_from_row).collect()
    }

    async fn update_schedule(&self, s: Schedule, keep_next_run: bool) -> Result<Option<Schedule>> {
        let sql = format!(
            "UPDATE schedules SET name = $1, cron_schedule = $2, enabled = $3, prompt = $4, \
             agent_config = $5, agent_uid = $6, metadata = $7, mode = $8, updated_by = $9, \
             updated_at = $10, next_run = CASE WHEN $12 THEN next_run ELSE $11 END \
             WHERE team_id = $13 AND id = $14 RETURNING {SCHEDULE_COLUMNS}"
        );
        let rows = sqlx::query(AssertSqlSafe(sql))
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
            .bind(s.id)
            .fetch_all(&self.pool)
            .await
            .map_err(db("update schedule"))?;
        rows.first().map(schedule_from_row).transpose()
    }

    async fn delete_schedule(&self, team_id: &str, id: &str) -> Result<bool> {
        let done = sqlx::query("DELETE FROM schedules WHERE team_id = $1 AND id = $2")
            .bind(team_id.to_owned())
            .bind(id.to_owned())
            .execute(&self.pool)
            .await
            .map_err(db("delete schedule"))?;
        Ok(done.rows_affected() > 0)
    }

    async fn due_schedules(&self, now: &str, limit: u32) -> Result<Vec<Schedule>> {
        let sql = format!(
            "SELECT {SCHEDULE_COLUMNS} FROM schedules \
             WHERE enabled = 1 AND next_run IS NOT NULL AND next_run <= $1 \
             ORDER BY next_run, id LIMIT $2"
        );
        let rows = sqlx::query(AssertSqlSafe(sql))
            .bind(now.to_owned())
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await
            .map_err(db("due schedules"))?;
        rows.iter().map(schedule_from_row).collect()
    }

    async fn next_due(&self) -> Result<Option<String>> {
        sqlx::query_scalar(
            "SELECT MIN(next_run) FROM schedules WHERE enabled = 1 AND next_run IS NOT NULL",
        )
        .fetch_one(&self.pool)
        .await
        .map_err(db("next due schedule"))
    }

    async fn fire_schedule(&self, f: Firing) -> Result<Option<Option<Run>>> {
        let op = "fire schedule";
        let mut tx = self.write_tx(op).await?;
        // The claim: only the replica that moves next_run from the value it
        // saw gets to create the run.
        let claimed = sqlx::query(
            "UPDATE schedules SET next_run = $1, last_ran = $2, last_spawn_error = $3 \
             WHERE id = $4 AND enabled = 1 AND next_run = $5",
        )
        .bind(f.next_run)
        .bind(f.last_ran)
        .bind(f.spawn_error)
        .bind(f.schedule_id)
        .bind(f.expected_next_run)
        .execute(&mut *tx)
        .await
        .map_err(db(op))?;
        if claimed.rows_affected() == 0 {
            return Ok(None);
        }
        let run = match f.run {
            Some(run) => Some(insert_run_on(&mut tx, run).await?),
            None => None,
        };
        tx.commit().await.map_err(db(op))?;
        Ok(Some(run))
    }

    async fn insert_agent(&self, a: Agent) -> Result<Agent> {
        let sql = format!(
            "INSERT INTO agents ({AGENT_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6) \
             RETURNING {AGENT_COLUMNS}"
        );
        let rows = sqlx::query(AssertSqlSafe(sql))
            .bind(a.uid.clone())
            .bind(a.team_id)
            .bind(a.name)
            .bind(to_json("agent spec", &a.spec)?)
            .bind(a.created_at)
            .bind(a.updated_at)
            .fetch_all(&self.pool)
            .await
            .map_err(conflict_or("insert agent", format!("agent {}", a.uid)))?;
        agent_from_row(
            rows.first()
                .ok_or_else(|| corrupt("agent", "insert returned no row"))?,
        )
    }

    async fn get_agent(&self, team_id: &str, uid: &str) -> Result<Option<Agent>> {
        let sql = format!("SELECT {AGENT_COLUMNS} FROM agents WHERE team_id = $1 AND uid = $2");
        let rows = sqlx::query(AssertSqlSafe(sql))
            .bind(team_id.to_owned())
            .bind(uid.to_owned())
            .fetch_all(&self.pool)
            .await
            .map_err(db("get agent"))?;
        rows.first().map(agent_from_row).transpose()
    }

    async fn list_agents(&self, team_id: &str, factory_uid: Option<&str>) -> Result<Vec<Agent>> {
        let sql = format!(
            "SELECT {AGENT_COLUMNS} FROM agents WHERE team_id = $1 \
             AND ($2 IS NULL OR json_extract(spec, '$.factory_uid') = $2) \
             ORDER BY created_at, uid"
        );
        let rows = sqlx::query(AssertSqlSafe(sql))
            .bind(team_id.to_owned())
            .bind(factory_uid.map(str::to_owned))
            .fetch_all(&self.readers)
            .await
            .map_err(db("list agents"))?;
        rows.iter().map(agent_from_row).collect()
    }

    async fn update_agent(&self, a: Agent) -> Result<Option<Agent>> {
        let sql = format!(
            "UPDATE agents SET name = $1, spec = $2, updated_at = $3 \
             WHERE team_id = $4 AND uid = $5 RETURNING {AGENT_COLUMNS}"
        );
        let rows = sqlx::query(AssertSqlSafe(sql))
            .bind(a.name)
            .bind(to_json("agent spec", &a.spec)?)
            .bind(a.updated_at)
            .bind(a.team_id)
            .bind(a.uid)
            .fetch_all(&self.pool)
            .await
            .map_err(db("update agent"))?;
        rows.first().map(agent_from_row).transpose()
    }

    async fn delete_agent(&self, team_id: &str, uid: &str) -> Result<bool> {
        let done = sqlx::query("DELETE FROM agents WHERE team_id = $1 AND uid = $2")
            .bind(team_id.to_owned())
            .bind(uid.to_owned())
            .execute(&self.pool)
            .await
            .map_err(db("delete agent"))?;
        Ok(done.rows_affected() > 0)
    }

    async fn insert_environment(&self, e: Environment) -> Result<Environment> {
        let sql = format!(
            "INSERT INTO environments ({ENVIRONMENT_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7) \
             RETURNING {ENVIRONMENT_COLUMNS}"
        );
        let rows = sqlx::query(AssertSqlSafe(sql))
            .bind(e.uid.clone())
            .bind(e.team_id)
            .bind(to_json("environment config", &e.config)?)
            .bind(opt_json("environment creator", &e.creator)?)
            .bind(opt_json("environment last_editor", &e.last_editor)?)
            .bind(e.created_at)
            .bind(e.last_updated)
            .fetch_all(&self.pool)
            .await
            .map_err(conflict_or(
                "insert environment",
                format!("environment {}", e.uid),
            ))?;
        environment_from_row(
            rows.first()
                .ok_or_else(|| corrupt("environment", "insert returned no row"))?,
        )
    }

    async fn get_environment(&self, team_id: &str, uid: &str) -> Result<Option<Environment>> {
        let sql = format!(
            "SELECT {ENVIRONMENT_COLUMNS} FROM environments WHERE team_id = $1 AND uid = $2"
        );
        let rows = sqlx::query(AssertSqlSafe(sql))
            .bind(team_id.to_owned())
            .bind(uid.to_owned())
            .fetch_all(&self.pool)
            .await
            .map_err(db("get environment"))?;
        rows.first().map(environment_from_row).transpose()
    }

    async fn list_environments(&self, team_id: &str) -> Result<Vec<Environment>> {
        let sql = format!(
            "SELECT {ENVIRONMENT_COLUMNS} FROM environments WHERE team_id = $1 \
             ORDER BY last_updated DESC, uid"
        );
        let rows = sqlx::query(AssertSqlSafe(sql))
            .bind(team_id.to_owned())
            .fetch_all(&self.readers)
            .await
            .map_err(db("list environments"))?;
        rows.iter().map(environment_from_row).collect()
    }

    async fn delete_environment(&self, team_id: &str, uid: &str) -> Result<bool> {
        let done = sqlx::query("DELETE FROM environments WHERE team_id = $1 AND uid = $2")
            .bind(team_id.to_owned())
            .bind(uid.to_owned())
            .execute(&self.pool)
            .await
            .map_err(db("delete environment"))?;
        Ok(done.rows_affected() > 0)
    }

    async fn last_run_in_environment(&self, team_id: &str, uid: &str) -> Result<Option<Run>> {
        let sql = format!(
            "SELECT {RUN_COLUMNS} FROM runs WHERE environment_id = $1 AND team_id = $2 \
             ORDER BY created_at DESC, run_id DESC LIMIT 1"
        );
        let rows = sqlx::query(AssertSqlSafe(sql))
            .bind(uid.to_owned())
            .bind(team_id.to_owned())
            .fetch_all(&self.readers)
            .await
            .map_err(db("last run in environment"))?;
        rows.first().map(run_from_row).transpose()
    }

    async fn insert_artifact(
        &self,
        a: Artifact,
        content: Vec<u8>,
        entry: Value,
        now: &str,
    ) -> Result<Option<Run>> {
        let op = "insert artifact";
        let mut tx = self.write_tx(op).await?;
        let sql = format!(
            "UPDATE runs SET artifacts = json_insert(artifacts, '$[#]', json($1)), \
             updated_at = $2 WHERE run_id = $3 RETURNING {RUN_COLUMNS}"
        );
        let rows = sqlx::query(AssertSqlSafe(sql))
            .bind(to_json("run artifact", &entry)?)
            .bind(now.to_owned())
            .bind(a.run_id.clone())
            .fetch_all(&mut *tx)
            .await
            .map_err(db(op))?;
        let Some(run) = rows.first().map(run_from_row).transpose()? else {
            return Ok(None);
        };
        let sql = format!(
            "INSERT INTO artifacts ({ARTIFACT_COLUMNS}, content) VALUES \
             ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)"
        );
        sqlx::query(AssertSqlSafe(sql))
            .bind(a.uid.clone())
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
            .bind(content)
            .execute(&mut *tx)
            .await
            .map_err(conflict_or(op, format!("artifact {}", a.uid)))?;
        tx.commit().await.map_err(db(op))?;
        Ok(Some(run))
    }

    async fn get_artifact(&self, uid: &str) -> Result<Option<Artifact>> {
        let sql = format!("SELECT {ARTIFACT_COLUMNS} FROM artifacts WHERE uid = $1");
        let rows = sqlx::query(AssertSqlSafe(sql))
            .bind(uid.to_owned())
            .fetch_all(&self.pool)
            .await
            .map_err(db("get artifact"))?;
        rows.first().map(artifact_from_row).transpose()
    }

    async fn artifact_content(&self, uid: &str) -> Result<Option<Vec<u8>>> {
        sqlx::query_scalar("SELECT content FROM artifacts WHERE uid = $1")
            .bind(uid.to_owned())
            .fetch_optional(&self.readers)
            .await
            .map_err(db("read artifact"))
    }

    async fn insert_handoff(&self, h: HandoffAttachment, content: Vec<u8>) -> Result<()> {
        let sql = format!(
            "INSERT INTO handoff_attachments ({HANDOFF_COLUMNS}, content) VALUES \
             ($1, $2, $3, $4, $5, $6, $7, $8)"
        );
        sqlx::query(AssertSqlSafe(sql))
            .bind(h.id.clone())
            .bind(h.run_id)
            .bind(h.execution_id)
            .bind(h.filename)
            .bind(h.mime_type)
            .bind(size_to_db(h.size_bytes)?)
            .bind(h.created_at)
            .bind(content)
            .execute(&self.pool)
            .await
            .map_err(conflict_or(
                "insert handoff attachment",
                format!("attachment {}", h.id),
            ))?;
        Ok(())
    }

    async fn list_handoff(&self, run_id: &str) -> Result<Vec<HandoffAttachment>> {
        let sql = format!(
            "SELECT {HANDOFF_COLUMNS} FROM handoff_attachments \
             WHERE run_id = $1 ORDER BY created_at, id"
        );
        let rows = sqlx::query(AssertSqlSafe(sql))
            .bind(run_id.to_owned())
            .fetch_all(&self.readers)
            .await
            .map_err(db("list handoff attachments"))?;
        rows.iter().map(handoff_from_row).collect()
    }

    async fn handoff_content(&self, run_id: &str, id: &str) -> Result<Option<Vec<u8>>> {
        sqlx::query_scalar("SELECT content FROM handoff_attachments WHERE run_id = $1 AND id = $2")
            .bind(run_id.to_owned())
            .bind(id.to_owned())
            .fetch_optional(&self.readers)
            .await
            .map_err(db("read handoff attachment"))
    }

    async fn add_followup(&self, f: NewFollowup) -> Result<Option<(Followup, Run)>> {
        let op = "add follow-up";
        let mut tx = self.write_tx(op).await?;
        let Some(run) = run_on(&mut tx, &f.run_id).await? else {
            return Ok(None);
        };
        // Ended: a new execution now. Queued: the execution about to start
        // carries it. Held by a worker: it waits for that execution to end.
        let (delivery, execution) = match run.state {
            s if s.is_terminal() => (Delivery::NewExecution, Some(run.executions + 1)),
            RunState::Queued => (Delivery::NextExecution, Some(run.executions + 1)),
            _ => (Delivery::NextExecution, None),
        };
        let sql = format!(
            "INSERT INTO followups ({FOLLOWUP_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7) \
             RETURNING {FOLLOWUP_COLUMNS}"
        );
        let rows = sqlx::query(AssertSqlSafe(sql))
            .bind(f.id.clone())
            .bind(f.run_id.clone())
            .bind(f.message)
            .bind(f.mode)
            .bind(f.created_at.clone())
            .bind(delivery.as_str())
            .bind(execution.map(i64::from))
            .fetch_all(&mut *tx)
            .await
            .map_err(conflict_or(op, format!("follow-up {}", f.id)))?;
        let followup = followup_from_row(
            rows.first()
                .ok_or_else(|| corrupt("follow-up", "insert returned no row"))?,
        )?;
        let updated = match (run.state, execution) {
            (s, _) if s.is_terminal() => requeue_on(&mut tx, &run, &f.created_at).await?,
            // Also those that came while a worker held the run before it
            // went back to the queue unstarted.
            (_, Some(_)) => fold_on(&mut tx, &run, &f.created_at).await?,
            (_, None) => {
                let sql = format!(
                    "UPDATE runs SET pending_followups = pending_followups + 1, updated_at = $1 \
                     WHERE run_id = $2 RETURNING {RUN_COLUMNS}"
                );
                let rows = sqlx::query(AssertSqlSafe(sql))
                    .bind(f.created_at)
                    .bind(f.run_id)
                    .fetch_all(&mut *tx)
                    .await
                    .map_err(db(op))?;
                rows.first().map(run_from_row).transpose()?
            }
        };
        let run = updated.ok_or_else(|| corrupt("run", "vanished inside a transaction"))?;
        tx.commit().await.map_err(db(op))?;
        Ok(Some((followup, run)))
    }

    async fn requeue_for_followups(&self, run_id: &str, now: &str) -> Result<Option<Run>> {
        self.give_followups(run_id, now, Give::Requeue).await
    }

    async fn fold_followups(&self, run_id: &str, now: &str) -> Result<Option<Run>> {
        self.give_followups(run_id, now, Give::Fold).await
    }

    async fn runs_awaiting_followups(&self) -> Result<Vec<String>> {
        let sql = format!(
            "SELECT run_id FROM runs WHERE pending_followups > 0 \
             AND cancel_requested_at IS NULL AND state IN ({})",
            terminal_list()
        );
        sqlx::query_scalar(AssertSqlSafe(sql))
            .fetch_all(&self.readers)
            .await
            .map_err(db("runs awaiting follow-ups"))
    }

    async fn list_followups(&self, run_id: &str) -> Result<Vec<Followup>> {
        let sql = format!(
            "SELECT {FOLLOWUP_COLUMNS} FROM followups WHERE run_id = $1 ORDER BY created_at, id"
        );
        let rows = sqlx::query(AssertSqlSafe(sql))
            .bind(run_id.to_owned())
            .fetch_all(&self.readers)
            .await
            .map_err(db("list follow-ups"))?;
        rows.iter().map(followup_from_row).collect()
    }

    async fn server_secret(&self, name: &str, candidate: &[u8]) -> Result<Vec<u8>> {
        sqlx::query("INSERT OR IGNORE INTO server_secrets (name, value) VALUES ($1, $2)")
            .bind(name.to_owned())
            .bind(candidate.to_vec())
            .execute(&self.pool)
            .await
            .map_err(db("create server secret"))?;
        sqlx::query_scalar("SELECT value FROM server_secrets WHERE name = $1")
            .bind(name.to_owned())
            .fetch_one(&self.pool)
            .await
            .map_err(db("read server secret"))
    }

    async fn run_by_execution(&self, execution_id: &str) -> Result<Option<Run>> {
        let sql = format!("SELECT {RUN_COLUMNS} FROM runs WHERE execution_id = $1 LIMIT 1");
        let rows = sqlx::query(AssertSqlSafe(sql))
            .bind(execution_id.to_owned())
            .fetch_all(&self.pool)
            .await
            .map_err(db("run by execution"))?;
        rows.first().map(run_from_row).transpose()
    }

    async fn run_by_conversation(&self, conversation_id: &str) -> Result<Option<Run>> {
        let sql = format!(
            "SELECT {RUN_COLUMNS} FROM runs WHERE conversation_id = $1 \
             ORDER BY created_at DESC, run_id DESC LIMIT 1"
        );
        let rows = sqlx::query(AssertSqlSafe(sql))
            .bind(conversation_id.to_owned())
            .fetch_all(&self.pool)
            .await
            .map_err(db("run by conversation"))?;
        rows.first().map(run_from_row).transpose()
    }
}
