//! Wire types of the Oz self-hosted worker protocol.
//!
//! Every frame is one WebSocket text message holding a JSON envelope
//! `{"type": "<type>", "data": {...}}`. Field names and shapes follow what the
//! official `oz-agent-worker` sends and reads, so that our worker can serve the
//! official control plane and our server can drive the official worker.
//!
//! Decoding is deliberately tolerant: unknown fields are ignored, an unknown
//! frame type decodes to [`ServerMessage::Unknown`], and a malformed
//! assignment is reported with whatever task id could still be read, so the
//! worker can answer it instead of dropping it.
#![forbid(unsafe_code)]

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

pub mod api;
mod de;
pub mod failure;
pub mod logs;
pub mod task;

pub use failure::FailureReason;
pub use task::{
    AgentConfigSnapshot, AwsInferenceProvider, Harness, InferenceProviders, InstanceShape, Owner,
    SessionSharing, Sidecar, Task, TaskDefinition,
};

/// Path of the worker WebSocket endpoint on a control plane.
pub const WORKER_WS_PATH: &str = "/api/v1/selfhosted/worker/ws";

/// `reason` of a `task_rejected` frame sent because every slot is busy,
/// exactly as the official worker words it.
pub const REJECT_AT_CAPACITY: &str = "worker at maximum concurrency";

/// `message` of the `task_completed` frame for a successful task.
pub const MSG_COMPLETED: &str = "Task completed successfully";

/// `message` of the `task_completed` frame that confirms a user cancellation.
pub const MSG_CANCELLED: &str = "Task cancelled by user request.";

/// `message` of a `task_failed` frame for a task interrupted by the worker itself
/// (shutdown), as the official worker words a cancelled context.
pub const MSG_INTERRUPTED: &str = "The task was interrupted due to an infrastructure issue (context canceled). This is typically transient \u{2014} please try again.";

/// `message` of a `task_failed` frame for a task that ran out of time.
pub const MSG_TIMED_OUT: &str = "The task exceeded its maximum allowed execution time and was terminated. Consider breaking the task into smaller steps or increasing the timeout.";

/// The generic envelope every frame travels in.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<Value>,
}

/// `task_assignment.data`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TaskAssignment {
    /// The run id: the key of everything (workspace, replies, `OZ_RUN_ID`).
    /// Not validated here; check it with [`is_safe_path_component`] before
    /// using it as a directory name.
    #[serde(default, deserialize_with = "de::null_as_default")]
    pub task_id: String,
    /// The concrete execution of the run; never echoed back to the server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub execution_id: Option<String>,
    /// Required in practice; `None` (absent or `null`) must be answered with
    /// `task_failed`. Always encoded, as `null` when absent, like the official
    /// control plane does.
    #[serde(default, deserialize_with = "de::object")]
    pub task: Option<Task>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub docker_image: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sidecar_image: Option<String>,
    #[serde(
        default,
        deserialize_with = "de::object_list",
        skip_serializing_if = "Option::is_none"
    )]
    pub additional_sidecars: Option<Vec<Sidecar>>,
    /// Task environment chosen by the server (the run-scoped `WARP_API_KEY`, …).
    #[serde(
        default,
        deserialize_with = "de::null_as_default",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub env_vars: BTreeMap<String, String>,
    /// Extra `oz` CLI tokens, forwarded verbatim.
    #[serde(
        default,
        deserialize_with = "de::null_as_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub additional_oz_args: Vec<String>,
    #[serde(
        default,
        deserialize_with = "de::object",
        skip_serializing_if = "Option::is_none"
    )]
    pub instance_shape: Option<InstanceShape>,
    /// Extension `logs`: names of `env_vars` whose values are secrets, to be
    /// redacted from the task's output. The official control plane never
    /// sends it; the run token (`WARP_API_KEY`) is always treated as secret.
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "de::null_as_default"
    )]
    pub secret_env_vars: Vec<String>,
}

/// `task_cancellation.data`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TaskCancellation {
    #[serde(default, deserialize_with = "de::null_as_default")]
    pub task_id: String,
}

/// A frame sent by the control plane to a worker.
#[derive(Debug, Clone, PartialEq)]
pub enum ServerMessage {
    TaskAssignment(Box<TaskAssignment>),
    TaskCancellation(TaskCancellation),
    /// Extension: the control plane announces what it understands beyond v1.
    /// The official control plane never sends it; a worker that does not
    /// know it ignores it like any unknown type.
    ServerHello(ServerHello),
    /// Extension `logs`: lines up to a seq are stored.
    LogAck(logs::LogAck),
    /// A type this version does not know (for example an extension, or the
    /// declared-but-unused `heartbeat`). Logged and ignored, never fatal.
    Unknown {
        kind: String,
    },
}

/// Why a server frame could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("frame is not a JSON envelope {{\"type\", \"data\"}}: {0}")]
    Envelope(#[source] serde_json::Error),
    /// An assignment whose `data` does not fit the schema. `task_id` is set
    /// when a non-empty string could still be read from `data.task_id`, so
    /// that the worker can fail the task explicitly instead of leaving the
    /// run claimed by nobody.
    #[error("malformed task_assignment{}: {reason}", task_id.as_deref().map(|t| format!(" for task {t}")).unwrap_or_default())]
    Assignment {
        task_id: Option<String>,
        reason: String,
    },
    #[error("malformed {kind} frame: {source}")]
    Data {
        kind: String,
        #[source]
        source: serde_json::Error,
    },
}

impl ServerMessage {
    /// Decode one text frame from the control plane.
    ///
    /// A `task_assignment` without `data` (or with `"data": null`) decodes to
    /// an assignment with an empty `task_id` and no `task`; the caller decides
    /// how to answer it.
    pub fn decode(text: &str) -> Result<Self, DecodeError> {
        let env: Envelope = serde_json::from_str(text).map_err(DecodeError::Envelope)?;
        let data = env.data.unwrap_or(Value::Null);
        match env.kind.as_str() {
            "task_assignment" => {
                let task_id = data
                    .get("task_id")
                    .and_then(Value::as_str)
                    .filter(|t| !t.is_empty())
                    .map(str::to_owned);
                let data = if data.is_null() {
                    Value::Object(Default::default())
                } else {
                    data
                };
                de::from_object::<TaskAssignment>(data)
                    .map(|a| ServerMessage::TaskAssignment(Box::new(a)))
                    .map_err(|e| DecodeError::Assignment {
                        task_id,
                        reason: e.to_string(),
                    })
            }
            "server_hello" => de::from_object(data)
                .map(ServerMessage::ServerHello)
                .map_err(|source| DecodeError::Data {
                    kind: env.kind.clone(),
                    source,
                }),
            "log_ack" => de::from_object(data)
                .map(ServerMessage::LogAck)
                .map_err(|source| DecodeError::Data {
                    kind: env.kind.clone(),
                    source,
                }),
            "task_cancellation" => de::from_object(data)
                .map(ServerMessage::TaskCancellation)
                .map_err(|source| DecodeError::Data {
                    kind: env.kind.clone(),
                    source,
                }),
            _ => Ok(ServerMessage::Unknown { kind: env.kind }),
        }
    }

    /// Encode as the server would send it (used by control planes and tests).
    pub fn encode(&self) -> String {
        let (kind, data) = match self {
            ServerMessage::TaskAssignment(a) => ("task_assignment", to_value(a.as_ref())),
            ServerMessage::TaskCancellation(c) => ("task_cancellation", to_value(c)),
            ServerMessage::ServerHello(h) => ("server_hello", to_value(h)),
            ServerMessage::LogAck(a) => ("log_ack", to_value(a)),
            ServerMessage::Unknown { kind } => (kind.as_str(), None),
        };
        encode_envelope(kind, data)
    }
}

/// A frame sent by a worker to the control plane.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data", rename_all = "snake_case")]
pub enum WorkerMessage {
    TaskClaimed(TaskClaimed),
    TaskRejected(TaskRejected),
    TaskCompleted(TaskCompleted),
    TaskFailed(TaskFailed),
    /// Extension, sent only in answer to `server_hello`.
    WorkerStatus(WorkerStatus),
    /// Extension `logs`: output lines of a task.
    LogLines(logs::LogLines),
    /// Extension `logs`: the last line of a task was sent.
    LogEnd(logs::LogEnd),
}

/// Extension names a control plane may announce in `server_hello`.
pub mod ext {
    /// The worker answers `server_hello` with `worker_status`, listing the
    /// tasks it runs, so a control plane can reconcile after a reconnect.
    pub const WORKER_STATUS: &str = "worker_status";
    /// The worker streams task output (`log_lines`, `log_end`) and the
    /// server acknowledges it (`log_ack`). See [`crate::logs`].
    pub const LOGS: &str = "logs";
}

/// `server_hello.data`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ServerHello {
    #[serde(default)]
    pub protocol: u32,
    #[serde(default, deserialize_with = "de::null_as_default")]
    pub extensions: Vec<String>,
}

impl ServerHello {
    pub fn has(&self, ext: &str) -> bool {
        self.extensions.iter().any(|e| e == ext)
    }
}

/// `worker_status.data`: who the worker is and what it is running now.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct WorkerStatus {
    #[serde(default)]
    pub worker_id: String,
    #[serde(default)]
    pub version: String,
    #[serde(default)]
    pub backend: String,
    /// 0 = unlimited.
    #[serde(default)]
    pub max_concurrent_tasks: u64,
    /// Task ids running on this worker (claimed and not yet reported).
    #[serde(default)]
    pub running: Vec<String>,
    /// True while the worker drains and accepts nothing new.
    #[serde(default)]
    pub draining: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskClaimed {
    pub task_id: String,
    pub worker_id: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskRejected {
    pub task_id: String,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskCompleted {
    pub task_id: String,
    pub message: String,
    /// `"CANCELLED"` when the completion confirms a user cancellation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_state: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskFailed {
    pub task_id: String,
    pub message: String,
    /// Left out when unknown, as the official worker does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_reason: Option<FailureReason>,
    /// Left out when no status was observed. `Some(0)` is left out too, as
    /// the official worker never sends a zero exit code.
    #[serde(default, skip_serializing_if = "exit_code_absent")]
    pub exit_code: Option<i32>,
}

/// Why a worker frame could not be decoded (server side).
#[derive(Debug, thiserror::Error)]
pub enum WorkerDecodeError {
    #[error("frame is not a JSON envelope {{\"type\", \"data\"}}: {0}")]
    Envelope(#[source] serde_json::Error),
    #[error("unknown worker frame type {0:?}")]
    UnknownType(String),
    #[error("malformed {kind} frame: {source}")]
    Data {
        kind: String,
        #[source]
        source: serde_json::Error,
    },
}

impl WorkerMessage {
    /// The run this frame is about.
    pub fn task_id(&self) -> &str {
        match self {
            WorkerMessage::TaskClaimed(m) => &m.task_id,
            WorkerMessage::TaskRejected(m) => &m.task_id,
            WorkerMessage::TaskCompleted(m) => &m.task_id,
            WorkerMessage::TaskFailed(m) => &m.task_id,
            WorkerMessage::WorkerStatus(_) => "",
            WorkerMessage::LogLines(m) => &m.task_id,
            WorkerMessage::LogEnd(m) => &m.task_id,
        }
    }

    /// The frame's `type` string.
    pub fn kind(&self) -> &'static str {
        match self {
            WorkerMessage::TaskClaimed(_) => "task_claimed",
            WorkerMessage::TaskRejected(_) => "task_rejected",
            WorkerMessage::TaskCompleted(_) => "task_completed",
            WorkerMessage::TaskFailed(_) => "task_failed",
            WorkerMessage::WorkerStatus(_) => "worker_status",
            WorkerMessage::LogLines(_) => "log_lines",
            WorkerMessage::LogEnd(_) => "log_end",
        }
    }

    /// True for the frames that end a task (completed or failed).
    pub fn is_terminal(&self) -> bool {
        matches!(
            self,
            WorkerMessage::TaskCompleted(_) | WorkerMessage::TaskFailed(_)
        )
    }

    pub fn encode(&self) -> String {
        // Serialising these plain structs cannot fail; fall back to an empty
        // object rather than panicking if serde ever disagrees.
        serde_json::to_string(self).unwrap_or_else(|_| "{}".to_owned())
    }

    /// Decode a frame sent by a worker; unknown types are an error the caller
    /// logs and ignores.
    pub fn decode(text: &str) -> Result<Self, WorkerDecodeError> {
        let env: Envelope = serde_json::from_str(text).map_err(WorkerDecodeError::Envelope)?;
        let data = env.data.unwrap_or(Value::Object(Default::default()));
        let kind = env.kind;
        let wrap = |source| WorkerDecodeError::Data {
            kind: kind.clone(),
            source,
        };
        Ok(match kind.as_str() {
            "task_claimed" => WorkerMessage::TaskClaimed(de::from_object(data).map_err(wrap)?),
            "task_rejected" => WorkerMessage::TaskRejected(de::from_object(data).map_err(wrap)?),
            "task_completed" => WorkerMessage::TaskCompleted(de::from_object(data).map_err(wrap)?),
            "worker_status" => WorkerMessage::WorkerStatus(de::from_object(data).map_err(wrap)?),
            "log_lines" => WorkerMessage::LogLines(de::from_object(data).map_err(wrap)?),
            "log_end" => WorkerMessage::LogEnd(de::from_object(data).map_err(wrap)?),
            "task_failed" => WorkerMessage::TaskFailed(de::from_object(data).map_err(wrap)?),
            _ => return Err(WorkerDecodeError::UnknownType(kind)),
        })
    }
}

fn exit_code_absent(code: &Option<i32>) -> bool {
    matches!(code, None | Some(0))
}

fn to_value<T: Serialize>(v: &T) -> Option<Value> {
    serde_json::to_value(v).ok()
}

fn encode_envelope(kind: &str, data: Option<Value>) -> String {
    let env = Envelope {
        kind: kind.to_owned(),
        data: data.filter(|d| !d.as_object().is_some_and(|o| o.is_empty())),
    };
    serde_json::to_string(&env).unwrap_or_else(|_| "{}".to_owned())
}

/// Returns true when `id` can be used as one directory name under a workspace
/// root: not empty, not `.` or `..`, no `/`, `\` or NUL.
pub fn is_safe_path_component(id: &str) -> bool {
    !id.is_empty() && id != "." && id != ".." && !id.contains(['/', '\\', '\0']) && id.len() <= 255
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn safe_component() {
        for bad in [
            "",
            ".",
            "..",
            "../escape",
            "a/../../escape",
            "/abs/path",
            "a\\b",
            "a\0b",
        ] {
            assert!(!is_safe_path_component(bad), "{bad:?} must be rejected");
        }
        for good in ["run-1", "01J0ABC", "a.b", "..a", "a..", "x y"] {
            assert!(is_safe_path_component(good), "{good:?} must be accepted");
        }
        assert!(!is_safe_path_component(&"a".repeat(256)));
    }
}
