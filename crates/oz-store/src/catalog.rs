//! Everything the API keeps besides runs, keys and logs: schedules, agent
//! identities, environments, artifacts with their content, handoff
//! attachments and follow-ups.
//!
//! The store checks structure (ids, teams, compare-and-set), not meaning:
//! validation of cron expressions, configs and precedence lives in the
//! server, which is the one place that knows the API's rules.

use std::collections::BTreeMap;

use async_trait::async_trait;
use serde_json::Value;

use crate::{NewRun, Result, Run};

/// A stored schedule (`ScheduledAgentItem` without the derived fields).
#[derive(Debug, Clone, PartialEq)]
pub struct Schedule {
    pub id: String,
    pub team_id: String,
    pub name: String,
    pub cron_schedule: String,
    pub enabled: bool,
    pub prompt: String,
    /// `AmbientAgentConfig` as given, or `None`.
    pub agent_config: Option<Value>,
    pub agent_uid: Option<String>,
    pub metadata: BTreeMap<String, String>,
    pub mode: Option<String>,
    /// `UserProfile` snapshots.
    pub created_by: Option<Value>,
    pub updated_by: Option<Value>,
    pub created_at: String,
    pub updated_at: String,
    pub last_ran: Option<String>,
    /// The next firing; `None` while paused (or when the expression can
    /// never fire).
    pub next_run: Option<String>,
    pub last_spawn_error: Option<String>,
}

/// How a due schedule fired: the firing is claimed by moving `next_run`
/// from `expected_next_run` to `next_run`, and `run` (if any) is inserted in
/// the same transaction. A replica that lost the race finds `next_run`
/// already moved and does nothing.
#[derive(Debug, Clone)]
pub struct Firing {
    pub schedule_id: String,
    pub expected_next_run: String,
    pub next_run: Option<String>,
    pub last_ran: String,
    /// The run to create; `None` when it could not be built (then
    /// `spawn_error` says why and is recorded on the schedule).
    pub run: Option<NewRun>,
    pub spawn_error: Option<String>,
}

/// A stored agent identity. `spec` holds every field but the four columns.
#[derive(Debug, Clone, PartialEq)]
pub struct Agent {
    pub uid: String,
    pub team_id: String,
    pub name: String,
    pub spec: serde_json::Map<String, Value>,
    pub created_at: String,
    pub updated_at: String,
}

/// A stored environment.
#[derive(Debug, Clone, PartialEq)]
pub struct Environment {
    pub uid: String,
    pub team_id: String,
    /// `CloudEnvironmentConfig`.
    pub config: Value,
    pub creator: Option<Value>,
    pub last_editor: Option<Value>,
    pub created_at: String,
    pub last_updated: String,
}

/// Metadata of a file-like artifact (the content is read separately).
#[derive(Debug, Clone, PartialEq)]
pub struct Artifact {
    pub uid: String,
    pub run_id: String,
    pub team_id: String,
    /// `FILE`, `SCREENSHOT` or `PLAN`.
    pub artifact_type: String,
    pub filename: String,
    pub filepath: String,
    pub mime_type: String,
    pub description: Option<String>,
    pub title: Option<String>,
    pub size_bytes: u64,
    pub created_at: String,
}

/// A handoff attachment's metadata.
#[derive(Debug, Clone, PartialEq)]
pub struct HandoffAttachment {
    pub id: String,
    pub run_id: String,
    pub execution_id: String,
    pub filename: String,
    pub mime_type: Option<String>,
    pub size_bytes: u64,
    pub created_at: String,
}

/// Where a follow-up went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// The run was queued or running: the follow-up goes with its next
    /// execution (for a queued run, the one about to start).
    NextExecution,
    /// The run had ended: it was queued again for a new execution.
    NewExecution,
}

impl Delivery {
    pub fn as_str(self) -> &'static str {
        match self {
            Delivery::NextExecution => "next_execution",
            Delivery::NewExecution => "new_execution",
        }
    }

    pub fn parse(s: &str) -> Option<Delivery> {
        match s {
            "next_execution" => Some(Delivery::NextExecution),
            "new_execution" => Some(Delivery::NewExecution),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Followup {
    pub id: String,
    pub run_id: String,
    pub message: String,
    pub mode: Option<String>,
    pub created_at: String,
    pub delivery: Delivery,
    /// The execution (1-based count) that carries it; `None` while waiting.
    pub execution: Option<u32>,
}

/// A new follow-up; the store decides its delivery from the run's state.
#[derive(Debug, Clone)]
pub struct NewFollowup {
    pub id: String,
    pub run_id: String,
    pub message: String,
    pub mode: Option<String>,
    pub created_at: String,
}

#[async_trait]
pub trait Catalog: Send + Sync + 'static {
    // Schedules.
    async fn insert_schedule(&self, s: Schedule) -> Result<Schedule>;
    async fn get_schedule(&self, team_id: &str, id: &str) -> Result<Option<Schedule>>;
    /// Sorted by name, then id.
    async fn list_schedules(&self, team_id: &str) -> Result<Vec<Schedule>>;
    /// Replace the fields a user sets (name, cron, enabled, prompt, config,
    /// agent, metadata, mode, updated_*), and `next_run` unless
    /// `keep_next_run`: the stored one is then left alone, so an edit racing
    /// with a firing cannot put back a firing already claimed. `last_ran`
    /// and `last_spawn_error` belong to the scheduler and are never written
    /// here. `None` when no such schedule.
    async fn update_schedule(&self, s: Schedule, keep_next_run: bool) -> Result<Option<Schedule>>;
    async fn delete_schedule(&self, team_id: &str, id: &str) -> Result<bool>;
    /// Enabled schedules whose next firing is at or before `now`, soonest first.
    async fn due_schedules(&self, now: &str, limit: u32) -> Result<Vec<Schedule>>;
    /// The earliest next firing of any enabled schedule.
    async fn next_due(&self) -> Result<Option<String>>;
    /// Claim and carry out one firing (see [`Firing`]) in one transaction.
    /// Returns `None` when the firing was not ours (moved on, paused or
    /// deleted meanwhile), else the created run, if any.
    async fn fire_schedule(&self, f: Firing) -> Result<Option<Option<Run>>>;

    // Agent identities.
    async fn insert_agent(&self, a: Agent) -> Result<Agent>;
    async fn get_agent(&self, team_id: &str, uid: &str) -> Result<Option<Agent>>;
    /// Oldest first; with `factory_uid`, only agents whose spec has it.
    async fn list_agents(&self, team_id: &str, factory_uid: Option<&str>) -> Result<Vec<Agent>>;
    async fn update_agent(&self, a: Agent) -> Result<Option<Agent>>;
    async fn delete_agent(&self, team_id: &str, uid: &str) -> Result<bool>;

    // Environments.
    async fn insert_environment(&self, e: Environment) -> Result<Environment>;
    async fn get_environment(&self, team_id: &str, uid: &str) -> Result<Option<Environment>>;
    async fn list_environments(&self, team_id: &str) -> Result<Vec<Environment>>;
    async fn delete_environment(&self, team_id: &str, uid: &str) -> Result<bool>;
    /// The newest run of the team that used this environment.
    async fn last_run_in_environment(&self, team_id: &str, uid: &str) -> Result<Option<Run>>;

    // Artifacts.
    /// Store an artifact with its content and append `entry` (the
    /// `RunItem.artifacts` element) to the run, in one transaction. `None`
    /// when the run does not exist.
    async fn insert_artifact(
        &self,
        a: Artifact,
        content: Vec<u8>,
        entry: Value,
        now: &str,
    ) -> Result<Option<Run>>;
    async fn get_artifact(&self, uid: &str) -> Result<Option<Artifact>>;
    async fn artifact_content(&self, uid: &str) -> Result<Option<Vec<u8>>>;

    // Handoff attachments.
    async fn insert_handoff(&self, h: HandoffAttachment, content: Vec<u8>) -> Result<()>;
    /// Every attachment of a run, oldest first.
    async fn list_handoff(&self, run_id: &str) -> Result<Vec<HandoffAttachment>>;
    /// The content of an attachment of `run_id`.
    async fn handoff_content(&self, run_id: &str, id: &str) -> Result<Option<Vec<u8>>>;

    // Follow-ups.
    /// Accept a follow-up and route it by the run's state, in one
    /// transaction (see [`Delivery`]). `None` when the run does not exist.
    async fn add_followup(&self, f: NewFollowup) -> Result<Option<(Followup, Run)>>;
    /// Queue an ended run again for the follow-ups that waited for its last
    /// execution. `None` when the run is not ended, none are waiting, or its
    /// cancellation was asked for (a cancel is not undone; the follow-ups
    /// wait for the next one).
    async fn requeue_for_followups(&self, run_id: &str, now: &str) -> Result<Option<Run>>;
    /// A QUEUED run with waiting follow-ups (they came while a worker held
    /// it, and it went back to the queue unstarted): give them to the
    /// execution about to start. `None` when there is nothing to do.
    async fn fold_followups(&self, run_id: &str, now: &str) -> Result<Option<Run>>;
    /// Ended runs whose follow-ups wait and that were not cancelled: what a
    /// crash between ending a run and queuing it again would leave.
    async fn runs_awaiting_followups(&self) -> Result<Vec<String>>;
    async fn list_followups(&self, run_id: &str) -> Result<Vec<Followup>>;

    /// The server secret `name`, created from `candidate` if there is none
    /// yet (the first replica to ask wins; everyone gets the same value).
    async fn server_secret(&self, name: &str, candidate: &[u8]) -> Result<Vec<u8>>;

    // Redirects.
    /// The run whose current (or last) execution id is `execution_id`.
    async fn run_by_execution(&self, execution_id: &str) -> Result<Option<Run>>;
    /// The newest run of a conversation.
    async fn run_by_conversation(&self, conversation_id: &str) -> Result<Option<Run>>;
}
