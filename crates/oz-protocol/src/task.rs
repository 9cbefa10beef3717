//! The `task` object inside a `task_assignment`, and the agent config snapshot.
//!
//! Every field is optional and unknown fields are ignored: the control plane
//! may add fields at any time. Timestamps are kept as raw JSON values, so a
//! malformed `created_at` cannot make the whole assignment undecodable (the
//! official worker drops such an assignment without a word).
//!
//! A JSON `null` is accepted wherever the official worker accepts it, and a
//! nested object must be a JSON object (never an array).

use std::collections::BTreeMap;

use serde::de::{Deserializer, Error as _};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::de;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Task {
    /// Normally equal to the assignment's `task_id`; becomes `TASK_ID` and `--task-id`.
    #[serde(default, deserialize_with = "de::null_as_default")]
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    #[serde(
        default,
        deserialize_with = "de::object",
        skip_serializing_if = "Option::is_none"
    )]
    pub task_definition: Option<TaskDefinition>,
    /// RFC 3339 in practice; kept verbatim and never validated here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_at: Option<Value>,
    /// RFC 3339 in practice; kept verbatim and never validated here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updated_at: Option<Value>,
    #[serde(
        default,
        deserialize_with = "de::object",
        skip_serializing_if = "Option::is_none"
    )]
    pub owner: Option<Owner>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_conversation_id: Option<String>,
    #[serde(
        default,
        deserialize_with = "de::object",
        skip_serializing_if = "Option::is_none"
    )]
    pub agent_config_snapshot: Option<AgentConfigSnapshot>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TaskDefinition {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt: Option<String>,
}

/// Who owns the task. The official control plane sends capitalised keys
/// (`Type`, `Id`) and encodes with those; like Go's decoder, any other case
/// spelling (`type`, `ID`, ...) is accepted too. When several spellings are
/// present the exact capitalised key wins.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Owner {
    /// `"USER"` or `"TEAM"`.
    #[serde(rename = "Type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// An integer on the official control plane; kept verbatim.
    #[serde(rename = "Id", skip_serializing_if = "Option::is_none")]
    pub id: Option<Value>,
}

impl<'de> Deserialize<'de> for Owner {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let map = Map::<String, Value>::deserialize(d)?;
        let kind = match owner_key(&map, "Type") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(other) => {
                return Err(D::Error::invalid_type(
                    de::unexpected(other),
                    &"a string for owner.Type",
                ));
            }
        };
        let id = owner_key(&map, "Id").filter(|v| !v.is_null()).cloned();
        Ok(Owner { kind, id })
    }
}

/// The value under `key`, or else under any ASCII-case-insensitive spelling of it.
fn owner_key<'a>(map: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    map.get(key).or_else(|| {
        map.iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| v)
    })
}

impl Owner {
    pub fn is_team(&self) -> bool {
        self.kind.as_deref() == Some("TEAM")
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AgentConfigSnapshot {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub environment_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_prompt: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skill_spec: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mcp_servers: Option<BTreeMap<String, Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub computer_use_enabled: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout_minutes: Option<i64>,
    #[serde(
        default,
        deserialize_with = "de::object",
        skip_serializing_if = "Option::is_none"
    )]
    pub harness: Option<Harness>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub harness_auth_secrets: Option<Value>,
    #[serde(
        default,
        deserialize_with = "de::object",
        skip_serializing_if = "Option::is_none"
    )]
    pub inference_providers: Option<InferenceProviders>,
    #[serde(
        default,
        deserialize_with = "de::object",
        skip_serializing_if = "Option::is_none"
    )]
    pub session_sharing: Option<SessionSharing>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_disabled: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_upload_timeout_secs: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_script_timeout_secs: Option<i64>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Harness {
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct InferenceProviders {
    #[serde(
        default,
        deserialize_with = "de::object",
        skip_serializing_if = "Option::is_none"
    )]
    pub aws: Option<AwsInferenceProvider>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AwsInferenceProvider {
    #[serde(default, deserialize_with = "de::null_as_default")]
    pub disabled: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role_arn: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SessionSharing {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_access: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Sidecar {
    #[serde(default, deserialize_with = "de::null_as_default")]
    pub image: String,
    #[serde(default, deserialize_with = "de::null_as_default")]
    pub mount_path: String,
    /// Read-only when false.
    #[serde(default, deserialize_with = "de::null_as_default")]
    pub read_write: bool,
}

/// Requested compute; values of 0 or less mean "unset" on that axis.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct InstanceShape {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vcpus: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_gb: Option<i64>,
}
