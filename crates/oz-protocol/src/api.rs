//! REST API models (`/api/v1`), with the shapes the official SDK validates.
//!
//! Required fields are always serialised (never null); optional ones are left
//! out when unset, which strict SDK validation accepts.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Life cycle of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "UPPERCASE")]
pub enum RunState {
    Queued,
    Pending,
    Claimed,
    Inprogress,
    Succeeded,
    Failed,
    Blocked,
    Error,
    Cancelled,
}

impl RunState {
    pub const ALL: [RunState; 9] = [
        RunState::Queued,
        RunState::Pending,
        RunState::Claimed,
        RunState::Inprogress,
        RunState::Succeeded,
        RunState::Failed,
        RunState::Blocked,
        RunState::Error,
        RunState::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RunState::Queued => "QUEUED",
            RunState::Pending => "PENDING",
            RunState::Claimed => "CLAIMED",
            RunState::Inprogress => "INPROGRESS",
            RunState::Succeeded => "SUCCEEDED",
            RunState::Failed => "FAILED",
            RunState::Blocked => "BLOCKED",
            RunState::Error => "ERROR",
            RunState::Cancelled => "CANCELLED",
        }
    }

    pub fn parse(s: &str) -> Option<RunState> {
        RunState::ALL.into_iter().find(|r| r.as_str() == s)
    }

    /// Ended for good: nothing changes the state any more.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            RunState::Succeeded
                | RunState::Failed
                | RunState::Blocked
                | RunState::Error
                | RunState::Cancelled
        )
    }

    /// Held by a worker (assigned, claimed or running).
    pub fn is_active(self) -> bool {
        matches!(
            self,
            RunState::Pending | RunState::Claimed | RunState::Inprogress
        )
    }
}

impl std::fmt::Display for RunState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `RunItem.status_message`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusMessage {
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_code: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retryable: Option<bool>,
}

impl StatusMessage {
    pub fn info(message: impl Into<String>) -> Self {
        StatusMessage {
            message: message.into(),
            error_code: None,
            retryable: None,
        }
    }

    pub fn error(message: impl Into<String>, code: &str, retryable: bool) -> Self {
        StatusMessage {
            message: message.into(),
            error_code: Some(code.to_owned()),
            retryable: Some(retryable),
        }
    }
}

/// `POST /agent/runs` body. Every key is optional; unknown keys are ignored.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct AgentRunParams {
    #[serde(default)]
    pub prompt: Option<String>,
    #[serde(default)]
    pub config: Option<Value>,
    #[serde(default)]
    pub title: Option<String>,
    #[serde(default)]
    pub skill: Option<String>,
    #[serde(default)]
    pub metadata: Option<BTreeMap<String, String>>,
    #[serde(default)]
    pub mode: Option<String>,
    #[serde(default)]
    pub interactive: Option<bool>,
    #[serde(default)]
    pub conversation_id: Option<String>,
    #[serde(default)]
    pub parent_run_id: Option<String>,
    #[serde(default)]
    pub agent_identity_uid: Option<String>,
    #[serde(default)]
    pub team: Option<bool>,
    #[serde(default)]
    pub on_behalf_of: Option<String>,
    #[serde(default)]
    pub attachments: Option<Vec<Value>>,
}

/// History of a schedule's firings.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScheduleHistory {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_ran: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_run: Option<String>,
}

/// `ScheduledAgentItem`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ScheduledAgentItem {
    pub id: String,
    pub name: String,
    pub cron_schedule: String,
    pub enabled: bool,
    pub prompt: String,
    pub created_at: String,
    pub updated_at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_config: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_uid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_by: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updated_by: Option<Value>,
    /// The resolved `CloudEnvironmentConfig` of `agent_config.environment_id`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub environment: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub history: Option<ScheduleHistory>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_spawn_error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<Scope>,
}

/// `POST /agent/schedules` body (`ScheduleCreateParams`) and, with `cron_schedule`,
/// `enabled` and `name` required, `PUT /agent/schedules/{id}` (`ScheduleUpdateParams`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ScheduleParams {
    #[serde(default)]
    pub cron_schedule: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub enabled: Option<bool>,
    #[serde(default)]
    pub prompt: Option<String>,
    #[serde(default)]
    pub agent_config: Option<Value>,
    #[serde(default)]
    pub agent_uid: Option<String>,
    #[serde(default)]
    pub metadata: Option<BTreeMap<String, String>>,
    #[serde(default)]
    pub mode: Option<String>,
    #[serde(default)]
    pub team: Option<bool>,
}

/// `POST /agent/runs` answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AgentRunResponse {
    pub run_id: String,
    pub state: RunState,
    pub task_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at_capacity: Option<bool>,
}

/// `Scope` of a run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Scope {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
}

/// One run as the API returns it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunItem {
    pub run_id: String,
    pub task_id: String,
    pub state: RunState,
    pub prompt: String,
    pub title: String,
    pub created_at: String,
    pub updated_at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_config: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifacts: Option<Vec<Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub execution_location: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub is_run_type_cancellable: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub is_sandbox_running: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_time: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<Scope>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_message: Option<StatusMessage>,
    /// `{name?, full_path?, description?, bundled_skill_id?}` of the run's skill.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_skill: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conversation_id: Option<String>,
    /// The current execution's id while the run is held by a worker.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_id: Option<String>,
    /// `UserProfile` of who created the run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub creator: Option<Value>,
    /// `UserProfile` of the execution principal (the agent identity, or the creator).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub executor: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_run_id: Option<String>,
    /// `{cron_schedule, schedule_id, schedule_name}` for scheduled runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<Value>,
    /// Ours: what the current execution is asked to do when follow-ups
    /// came in (the prompt, then each follow-up); absent otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub execution_prompt: Option<String>,
}

/// `page_info` of the runs list.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PageInfo {
    pub has_next_page: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// `GET /agent/runs` answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunList {
    pub runs: Vec<RunItem>,
    pub page_info: PageInfo,
}

/// RFC 7807 error body, with the fields the official API sends.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Problem {
    #[serde(rename = "type")]
    pub kind: String,
    pub title: String,
    pub status: u16,
    pub error: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retryable: Option<bool>,
}

/// Base of the `type` URI of a problem; the error code is appended.
pub const PROBLEM_TYPE_BASE: &str =
    "https://docs.warp.dev/reference/api-and-sdk/troubleshooting/errors/";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_round_trip_upper_case() {
        for s in RunState::ALL {
            let j = serde_json::to_string(&s).unwrap();
            assert_eq!(j, format!("\"{}\"", s.as_str()));
            assert_eq!(RunState::parse(s.as_str()), Some(s));
        }
        assert!(RunState::Cancelled.is_terminal());
        assert!(!RunState::Queued.is_terminal());
        assert!(RunState::Claimed.is_active());
    }
}
