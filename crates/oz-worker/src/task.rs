//! What a task is told (stop tokens, why it was stopped) and how it ended.

use std::sync::{Arc, Mutex};

use oz_protocol::{
    FailureReason, MSG_CANCELLED, MSG_COMPLETED, MSG_INTERRUPTED, MSG_TIMED_OUT, TaskCompleted,
    TaskFailed, WorkerMessage,
};

use crate::sys::{Marker, StopTokens};

/// Why a task was asked to stop. The first reason recorded wins.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// The control plane sent `task_cancellation`.
    User,
    /// The worker is shutting down.
    Shutdown,
}

/// Shared between the supervisor and a running task.
#[derive(Debug, Clone)]
pub struct TaskControl {
    pub tokens: StopTokens,
    /// `OZ_RUN_MARKER` of every process of this task.
    pub marker: Arc<Marker>,
    reason: Arc<Mutex<Option<StopReason>>>,
}

impl TaskControl {
    pub fn new(marker: String) -> Self {
        TaskControl {
            tokens: StopTokens::default(),
            marker: Arc::new(Marker::new(marker)),
            reason: Arc::default(),
        }
    }

    /// Ask the task to stop: SIGTERM to its processes, then SIGKILL after
    /// the grace period. Teardown still runs.
    pub fn stop(&self, reason: StopReason) {
        if let Ok(mut r) = self.reason.lock() {
            r.get_or_insert(reason);
        }
        self.tokens.stop.cancel();
    }

    /// Kill the task's processes at once, skipping teardown.
    pub fn kill(&self) {
        if let Ok(mut r) = self.reason.lock() {
            r.get_or_insert(StopReason::Shutdown);
        }
        self.tokens.kill.cancel();
    }

    pub fn reason(&self) -> Option<StopReason> {
        self.reason.lock().ok().and_then(|r| *r)
    }
}

/// How a task ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Succeeded,
    /// Stopped at the user's request.
    Cancelled,
    /// Stopped because the worker shut down.
    Interrupted {
        exit_code: Option<i32>,
    },
    /// The agent ran past `task_timeout`.
    TimedOut {
        exit_code: Option<i32>,
    },
    Failed {
        reason: FailureReason,
        message: String,
        exit_code: Option<i32>,
    },
}

impl Outcome {
    pub fn failed(
        reason: FailureReason,
        message: impl Into<String>,
        exit_code: Option<i32>,
    ) -> Self {
        Outcome::Failed {
            reason,
            message: message.into(),
            exit_code,
        }
    }

    /// `OZ_TASK_RESULT` handed to teardown.
    pub fn task_result(&self) -> &'static str {
        match self {
            Outcome::Succeeded => "succeeded",
            Outcome::Cancelled | Outcome::Interrupted { .. } => "cancelled",
            Outcome::TimedOut { .. } | Outcome::Failed { .. } => "failed",
        }
    }

    /// True when the worker's shutdown cut this task short.
    pub fn cut_short(&self) -> bool {
        matches!(self, Outcome::Interrupted { .. })
    }

    /// The terminal frame, worded as the official worker words it.
    pub fn to_message(&self, task_id: &str) -> WorkerMessage {
        let task_id = task_id.to_owned();
        let failed = |message: String, reason, exit_code| {
            WorkerMessage::TaskFailed(TaskFailed {
                task_id: task_id.clone(),
                message,
                failure_reason: Some(reason),
                exit_code,
            })
        };
        match self {
            Outcome::Succeeded => WorkerMessage::TaskCompleted(TaskCompleted {
                task_id: task_id.clone(),
                message: MSG_COMPLETED.into(),
                task_state: None,
            }),
            Outcome::Cancelled => WorkerMessage::TaskCompleted(TaskCompleted {
                task_id: task_id.clone(),
                message: MSG_CANCELLED.into(),
                task_state: Some("CANCELLED".into()),
            }),
            Outcome::Interrupted { exit_code } => failed(
                MSG_INTERRUPTED.into(),
                FailureReason::GracefulShutdown,
                *exit_code,
            ),
            Outcome::TimedOut { exit_code } => {
                failed(MSG_TIMED_OUT.into(), FailureReason::TaskTimeout, *exit_code)
            }
            Outcome::Failed {
                reason,
                message,
                exit_code,
            } => failed(
                format!("Failed to execute task: {message}"),
                *reason,
                *exit_code,
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_match_the_official_wording() {
        let m = Outcome::failed(
            FailureReason::AgentInvocation,
            "oz agent exited with error: exit status 1",
            Some(1),
        )
        .to_message("r1");
        assert_eq!(
            m.encode(),
            r#"{"type":"task_failed","data":{"task_id":"r1","message":"Failed to execute task: oz agent exited with error: exit status 1","failure_reason":"agent_invocation","exit_code":1}}"#
        );
        let m = Outcome::Cancelled.to_message("r1");
        assert_eq!(
            m.encode(),
            r#"{"type":"task_completed","data":{"task_id":"r1","message":"Task cancelled by user request.","task_state":"CANCELLED"}}"#
        );
        let m = Outcome::Interrupted {
            exit_code: Some(143),
        }
        .to_message("r1");
        assert!(
            m.encode()
                .contains(r#""failure_reason":"graceful_shutdown","exit_code":143"#)
        );
    }

    #[test]
    fn first_stop_reason_wins() {
        let c = TaskControl::new("m".into());
        c.stop(StopReason::User);
        c.stop(StopReason::Shutdown);
        assert_eq!(c.reason(), Some(StopReason::User));
        assert!(c.tokens.stop.is_cancelled());
    }
}
